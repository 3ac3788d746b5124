//! The RFC 1071 internet checksum, plain (IPv4 header, ICMP) and over the IPv4 or IPv6
//! pseudo-header (TCP, UDP; ICMPv6); SCTP's CRC32c, bit by bit.

use std::net::{Ipv4Addr, Ipv6Addr};

/// The RFC 1071 internet checksum of `data` (odd length padded with a zero byte), as stored in
/// a header; data that includes its correct checksum sums to 0.
pub fn internet_checksum(data: &[u8]) -> u16 {
    let mut sum: u64 = data
        .chunks(2)
        .map(|c| u64::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// TCP/UDP checksum of `segment` (its checksum field zeroed or, to verify, as received) with
/// the IPv4 pseudo-header; a received segment is valid when this returns 0.
pub fn l4_checksum(src: Ipv4Addr, dst: Ipv4Addr, protocol: u8, segment: &[u8]) -> u16 {
    let mut data = Vec::with_capacity(12 + segment.len());
    data.extend_from_slice(&src.octets());
    data.extend_from_slice(&dst.octets());
    data.extend_from_slice(&[0, protocol]);
    data.extend_from_slice(&(segment.len() as u16).to_be_bytes());
    data.extend_from_slice(segment);
    internet_checksum(&data)
}

/// TCP/UDP/ICMPv6 checksum of `segment` with the IPv6 pseudo-header (RFC 8200 section 8.1:
/// addresses, 32-bit upper-layer length, three zero bytes, next header).
pub fn l4_checksum6(src: Ipv6Addr, dst: Ipv6Addr, next_header: u8, segment: &[u8]) -> u16 {
    let mut data = Vec::with_capacity(40 + segment.len());
    data.extend_from_slice(&src.octets());
    data.extend_from_slice(&dst.octets());
    data.extend_from_slice(&(segment.len() as u32).to_be_bytes());
    data.extend_from_slice(&[0, 0, 0, next_header]);
    data.extend_from_slice(segment);
    internet_checksum(&data)
}

/// CRC32c (RFC 9260 appendix A) of `data`, computed bit by bit: the SCTP checksum of a packet
/// whose checksum field is zeroed, stored little-endian in that field.
pub fn crc32c(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &byte in data {
        crc ^= u32::from(byte);
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0x82f6_3b78
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32c_matches_the_standard_check_value() {
        assert_eq!(crc32c(b"123456789"), 0xe306_9283);
    }

    #[test]
    fn checksum_matches_rfc1071_and_a_known_ipv4_header() {
        // RFC 1071 section 3 example: the one's complement sum is 0xddf2.
        assert_eq!(
            internet_checksum(&[0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7]),
            !0xddf2
        );
        let header = [
            0x45, 0x00, 0x00, 0x73, 0x00, 0x00, 0x40, 0x00, 0x40, 0x11, 0x00, 0x00, 0xc0, 0xa8,
            0x00, 0x01, 0xc0, 0xa8, 0x00, 0xc7,
        ];
        assert_eq!(internet_checksum(&header), 0xb861);
        assert_eq!(internet_checksum(&[0xff]), !0xff00);
    }

    #[test]
    fn long_inputs_do_not_overflow_the_sum() {
        // 2^17 words of 0xffff: a 32-bit accumulator would wrap.
        assert_eq!(internet_checksum(&vec![0xff; 1 << 18]), 0);
    }
}
