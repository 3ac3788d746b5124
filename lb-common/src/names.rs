//! Service names by slot group id, for `lb-agent inspect`: only the agent writes them and
//! the data path never reads them, but they live in a pinned map so they survive an agent
//! restart and can be read from the pins alone.

/// Bytes of a [`ServiceName`]: Kubernetes' longest `namespace/name:port` (63 + 1 + 63 + 1 +
/// 15 = 143) and a terminating zero.
pub const SERVICE_NAME_LEN: usize = 144;

/// `namespace/name:port` of a slot group, UTF-8, zero-padded.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ServiceName {
    pub bytes: [u8; SERVICE_NAME_LEN],
}

const _: () = assert!(core::mem::size_of::<ServiceName>() == SERVICE_NAME_LEN);

impl ServiceName {
    /// `name`, cut at the last character boundary that fits (Kubernetes' names always fit).
    pub fn new(name: &str) -> Self {
        let mut end = name.len().min(SERVICE_NAME_LEN - 1);
        while !name.is_char_boundary(end) {
            end -= 1;
        }
        let mut bytes = [0; SERVICE_NAME_LEN];
        bytes[..end].copy_from_slice(&name.as_bytes()[..end]);
        Self { bytes }
    }

    /// The name up to the first zero; `None` unless it is UTF-8.
    pub fn as_str(&self) -> Option<&str> {
        let end = self
            .bytes
            .iter()
            .position(|b| *b == 0)
            .unwrap_or(SERVICE_NAME_LEN);
        core::str::from_utf8(&self.bytes[..end]).ok()
    }
}

#[cfg(feature = "user")]
// SAFETY: plain bytes, any value is valid.
unsafe impl aya::Pod for ServiceName {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_name_round_trips_and_a_too_long_one_is_cut_at_a_character() {
        let name = ServiceName::new("default/web:http");
        assert_eq!(name.as_str(), Some("default/web:http"));
        let long = "é".repeat(100);
        let cut = ServiceName::new(&long);
        assert_eq!(cut.as_str().map(str::len), Some(142));
        assert_eq!(cut.bytes[SERVICE_NAME_LEN - 1], 0);
    }
}
