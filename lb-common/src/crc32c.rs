//! The SCTP checksum (CRC32c, RFC 9260 appendix A) updated for changed ports without reading
//! the packet.
//!
//! A CRC is linear over GF(2): xoring bytes `d` into a message xors the CRC register that `d`
//! alone (initial value 0) leaves after the whole message into its checksum. For `d` in the
//! first four bytes of an `n`-byte message that register is `d · x^(8n) mod P` (bytes taken
//! little-endian, bit 31 the lowest power, as the reflected CRC32c computes). Two tables of
//! powers give `x^(8n)` for any `n` below 65536 with one multiplication, so an update costs
//! two, whatever the packet's length (zlib's `crc32_combine` uses the same algebra).
//!
//! The checksum field holds the CRC little-endian, as Linux writes it.

/// The CRC32c polynomial, reflected.
const POLY: u32 = 0x82f6_3b78;
/// `x^0` in the reflected representation.
const ONE: u32 = 1 << 31;
/// `x^8`: one byte's shift.
const X8: u32 = ONE >> 8;

/// `a · b mod P`, both reflected. Branch-free, for the verifier's sake.
#[inline(always)]
const fn multiply(a: u32, mut b: u32) -> u32 {
    let mut product = 0;
    let mut i = 0;
    while i < 32 {
        product ^= b & 0u32.wrapping_sub((a >> (31 - i)) & 1);
        b = (b >> 1) ^ (POLY & 0u32.wrapping_sub(b & 1));
        i += 1;
    }
    product
}

/// `x^(8·step·j) mod P` for `j` in 0..256.
const fn powers(step: u32) -> [u32; 256] {
    let mut factor = ONE;
    let mut i = 0;
    while i < step {
        factor = multiply(factor, X8);
        i += 1;
    }
    let mut table = [ONE; 256];
    let mut j = 1;
    while j < 256 {
        table[j] = multiply(table[j - 1], factor);
        j += 1;
    }
    table
}

/// `x^(8j)`: a shift through `j` bytes.
static SHIFT_BYTES: [u32; 256] = powers(1);
/// `x^(8·256·j)`: a shift through `256·j` bytes.
static SHIFT_BYTES_256: [u32; 256] = powers(256);

/// `x^(8·len) mod P`: shifts a CRC register through `len` zero bytes.
#[inline(always)]
fn shift(len: u16) -> u32 {
    let [high, low] = len.to_be_bytes();
    multiply(
        SHIFT_BYTES[usize::from(low)],
        SHIFT_BYTES_256[usize::from(high)],
    )
}

/// What the checksum changes by (xor, little-endian as the field) when the first four bytes
/// of a `len`-byte SCTP packet (its ports) change by `delta` (xor of old and new, read
/// little-endian). The checksum field itself counts as zero, so it is never among them.
#[inline(always)]
pub fn change(delta: u32, len: u16) -> u32 {
    multiply(shift(len), delta)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The checksum field `check` updated as the data path does (`lb-ebpf`'s `rewrite`) for
    /// the ports of the `len`-byte packet changing from `old` to `new`.
    fn replace_ports(check: [u8; 4], old: [u8; 4], new: [u8; 4], len: u16) -> [u8; 4] {
        let delta = u32::from_le_bytes(old) ^ u32::from_le_bytes(new);
        (u32::from_le_bytes(check) ^ change(delta, len)).to_le_bytes()
    }

    /// CRC32c bit by bit, as RFC 9260 defines it: the reference the update is held to.
    fn crc32c(data: &[u8]) -> u32 {
        let mut crc = !0u32;
        for &byte in data {
            crc ^= u32::from(byte);
            for _ in 0..8 {
                crc = (crc >> 1) ^ (POLY & 0u32.wrapping_sub(crc & 1));
            }
        }
        !crc
    }

    /// An SCTP packet of `len` bytes with pseudo-random contents and its checksum in place.
    fn packet(len: usize, seed: u32) -> Vec<u8> {
        let mut state = seed;
        let mut data: Vec<u8> = (0..len)
            .map(|_| {
                state = state.wrapping_mul(1_103_515_245).wrapping_add(12_345);
                (state >> 16) as u8
            })
            .collect();
        data[8..12].fill(0);
        let check = crc32c(&data).to_le_bytes();
        data[8..12].copy_from_slice(&check);
        data
    }

    fn checksum_of(packet: &[u8]) -> u32 {
        let mut zeroed = packet.to_vec();
        zeroed[8..12].fill(0);
        crc32c(&zeroed)
    }

    #[test]
    fn reference_matches_the_standard_check_value() {
        assert_eq!(crc32c(b"123456789"), 0xe306_9283);
    }

    #[test]
    fn shift_is_a_byte_by_byte_shift() {
        let mut register = ONE;
        for len in 0..=u16::MAX {
            assert_eq!(shift(len), register, "len {len}");
            register = multiply(register, X8);
        }
    }

    #[test]
    fn replacing_ports_matches_a_full_recomputation() {
        for (i, len) in [16, 17, 20, 60, 255, 256, 257, 1452, 9000, 65_515]
            .into_iter()
            .enumerate()
        {
            let mut data = packet(len, i as u32);
            let check: [u8; 4] = data[8..12].try_into().unwrap();
            let old: [u8; 4] = data[0..4].try_into().unwrap();
            for new in [
                [0x1f, 0x90, old[2], old[3]],
                [old[0], old[1], 0xc3, 0x50],
                [1, 2, 3, 4],
            ] {
                let updated = replace_ports(check, old, new, len as u16);
                data[0..4].copy_from_slice(&new);
                assert_eq!(
                    u32::from_le_bytes(updated),
                    checksum_of(&data),
                    "len {len}, ports {old:02x?} -> {new:02x?}"
                );
            }
        }
    }
}
