//! Incremental Internet checksum updates (RFC 1624, eqn. 3: `HC' = ~(~HC + ~m + m')`).
//!
//! Used where the program rewrites packets itself (XDP). Checksums and data are taken as
//! big-endian 16-bit words, exactly as they sit in the packet.

/// Returns `check` updated for the 4 bytes `old` (at an even offset) becoming `new`.
#[inline(always)]
pub fn replace4(check: [u8; 2], old: [u8; 4], new: [u8; 4]) -> [u8; 2] {
    let sum = u32::from(!u16::from_be_bytes(check))
        + u32::from(!u16::from_be_bytes([old[0], old[1]]))
        + u32::from(!u16::from_be_bytes([old[2], old[3]]))
        + u32::from(u16::from_be_bytes([new[0], new[1]]))
        + u32::from(u16::from_be_bytes([new[2], new[3]]));
    (!fold(sum)).to_be_bytes()
}

/// Returns `check` updated for the `N` bytes `old` (an even count at an even offset) becoming
/// `new`: [`replace4`] for any address size.
#[inline(always)]
pub fn replace<const N: usize>(check: [u8; 2], old: &[u8; N], new: &[u8; N]) -> [u8; 2] {
    const { assert!(N.is_multiple_of(2), "whole 16-bit words only") };
    let mut sum = u32::from(!u16::from_be_bytes(check));
    let mut i = 0;
    while i < N {
        sum += u32::from(!u16::from_be_bytes([old[i], old[i + 1]]));
        sum += u32::from(u16::from_be_bytes([new[i], new[i + 1]]));
        i += 2;
    }
    (!fold(sum)).to_be_bytes()
}

/// Returns `check` updated for the 2 bytes `old` (at an even offset) becoming `new`.
#[inline(always)]
pub fn replace2(check: [u8; 2], old: [u8; 2], new: [u8; 2]) -> [u8; 2] {
    let sum = u32::from(!u16::from_be_bytes(check))
        + u32::from(!u16::from_be_bytes(old))
        + u32::from(u16::from_be_bytes(new));
    (!fold(sum)).to_be_bytes()
}

/// Adds `bytes` (an even count, starting at an even offset of the checksummed data) to a
/// one's complement sum, as big-endian 16-bit words.
#[inline(always)]
pub fn add<const N: usize>(mut sum: u32, bytes: [u8; N]) -> u32 {
    const { assert!(N.is_multiple_of(2), "whole 16-bit words only") };
    let mut i = 0;
    while i < N {
        sum += u32::from(u16::from_be_bytes([bytes[i], bytes[i + 1]]));
        i += 2;
    }
    sum
}

/// The checksum field for data whose words add up to `sum` (the field itself counted as 0).
#[inline(always)]
pub fn finish(sum: u32) -> [u8; 2] {
    (!fold(sum)).to_be_bytes()
}

/// Folds a 32-bit one's complement sum into 16 bits (two folds carry any `u32`).
#[inline(always)]
pub fn fold(sum: u32) -> u16 {
    let sum = (sum & 0xffff) + (sum >> 16);
    ((sum & 0xffff) + (sum >> 16)) as u16
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{full_checksum as full, Lcg};

    #[test]
    fn replace4_matches_full_recomputation() {
        let mut rng = Lcg(1);
        for _ in 0..10_000 {
            let mut data: [u8; 20] = rng.bytes();
            data[10..12].copy_from_slice(&[0, 0]);
            let check = full(&data);
            let new: [u8; 4] = rng.bytes();
            let updated = replace4(check, [data[12], data[13], data[14], data[15]], new);
            data[12..16].copy_from_slice(&new);
            assert_eq!(updated, full(&data), "data {data:02x?}");
        }
    }

    #[test]
    fn replace2_matches_full_recomputation() {
        let mut rng = Lcg(2);
        for _ in 0..10_000 {
            let mut data: [u8; 8] = rng.bytes();
            data[6..8].copy_from_slice(&[0, 0]);
            let check = full(&data);
            let new: [u8; 2] = rng.bytes();
            let updated = replace2(check, [data[2], data[3]], new);
            data[2..4].copy_from_slice(&new);
            assert_eq!(updated, full(&data), "data {data:02x?}");
        }
    }

    #[test]
    fn add_and_finish_match_full_computation() {
        let mut rng = Lcg(3);
        for _ in 0..1_000 {
            let (a, b): ([u8; 20], [u8; 12]) = (rng.bytes(), rng.bytes());
            let whole = [&a[..], &b[..]].concat();
            assert_eq!(finish(add(add(0, a), b)), full(&whole));
        }
        assert_eq!(finish(add(0, [0xff; 64])), [0, 0]);
    }

    #[test]
    fn fold_carries_twice() {
        assert_eq!(fold(0xffff + 0xffff), 0xffff);
        assert_eq!(fold(0x0007_fff8 + 0x0000_0008), 0x0008);
    }
}
