//! `bpftool` on the agent's pinned maps, as an operator would use it: dump, update and delete
//! entries by their raw bytes (the maps carry no BTF, so bpftool shows bytes).

use std::{net::Ipv4Addr, path::Path};

use crate::{cmd, Error, Result};

/// One map entry: key and value bytes exactly as the kernel stores them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    pub key: Vec<u8>,
    pub value: Vec<u8>,
}

/// Every entry of the (non per-CPU) map pinned at `pin`: `bpftool -j map dump pinned`.
pub fn dump(pin: &Path) -> Result<Vec<Entry>> {
    let json = cmd::run("bpftool", &["-j", "map", "dump", "pinned", &path_arg(pin)])?;
    parse_dump(&json).ok_or_else(|| Error::Invalid {
        what: format!("bpftool dump of {}", pin.display()),
        reason: format!("not a list of key/value byte arrays: {json}"),
    })
}

/// The value stored under `key` in the map pinned at `pin`, if any.
pub fn lookup(pin: &Path, key: &[u8]) -> Result<Option<Vec<u8>>> {
    Ok(dump(pin)?
        .into_iter()
        .find(|e| e.key == key)
        .map(|e| e.value))
}

/// `bpftool map delete pinned <pin> key hex ...`.
pub fn delete(pin: &Path, key: &[u8]) -> Result<()> {
    let mut args = vec![
        "map".into(),
        "delete".into(),
        "pinned".into(),
        path_arg(pin),
    ];
    args.extend(hex_arg("key", key));
    run(&args)
}

/// `bpftool map update pinned <pin> key hex ... value hex ...` (creates or overwrites).
pub fn update(pin: &Path, key: &[u8], value: &[u8]) -> Result<()> {
    let mut args = vec![
        "map".into(),
        "update".into(),
        "pinned".into(),
        path_arg(pin),
    ];
    args.extend(hex_arg("key", key));
    args.extend(hex_arg("value", value));
    run(&args)
}

/// Raw key of the services map for an IPv4 frontend, as `lb_common::ServiceKey` lays it out:
/// IPv4-mapped address, port in network order, IP protocol, lookup scope.
pub fn service_key(addr: Ipv4Addr, port: u16, proto: u8, scope: u8) -> Vec<u8> {
    let mut key = addr.to_ipv6_mapped().octets().to_vec();
    key.extend(port.to_be_bytes());
    key.extend([proto, scope]);
    key
}

/// Raw key of the backend slots map (`lb_common::BackendSlotKey`: two native-endian u32).
pub fn slot_key(group_id: u32, slot: u32) -> Vec<u8> {
    [group_id.to_ne_bytes(), slot.to_ne_bytes()].concat()
}

/// The native-endian u32 at `offset` of a raw key or value (ids, counts).
pub fn u32_at(bytes: &[u8], offset: usize) -> u32 {
    let mut word = [0; 4];
    word.copy_from_slice(&bytes[offset..offset + 4]);
    u32::from_ne_bytes(word)
}

fn run(args: &[String]) -> Result<()> {
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    cmd::run("bpftool", &args).map(drop)
}

fn path_arg(pin: &Path) -> String {
    pin.to_string_lossy().into_owned()
}

/// `<what> hex 0a 00 ...`: bpftool reads bare bytes as decimal, `hex` makes them hex.
fn hex_arg(what: &str, bytes: &[u8]) -> Vec<String> {
    [what.to_string(), "hex".to_string()]
        .into_iter()
        .chain(bytes.iter().map(|b| format!("{b:02x}")))
        .collect()
}

/// Parses `[{"key":["0x01",...],"value":["0x02",...]},...]`.
fn parse_dump(json: &str) -> Option<Vec<Entry>> {
    let mut entries = Vec::new();
    let mut rest = json;
    while let Some(start) = rest.find("\"key\":") {
        let (key, after_key) = byte_array(&rest[start + "\"key\":".len()..])?;
        let value_at = after_key.find("\"value\":")?;
        let (value, after_value) = byte_array(&after_key[value_at + "\"value\":".len()..])?;
        entries.push(Entry { key, value });
        rest = after_value;
    }
    json.trim_start().starts_with('[').then_some(entries)
}

/// Parses a leading `["0x01","0x02"]` and returns the bytes and what follows it.
fn byte_array(text: &str) -> Option<(Vec<u8>, &str)> {
    let text = text.trim_start().strip_prefix('[')?;
    let end = text.find(']')?;
    let bytes = text[..end]
        .split(',')
        .filter(|item| !item.trim().is_empty())
        .map(|item| {
            let hex = item.trim().trim_matches('"').strip_prefix("0x")?;
            u8::from_str_radix(hex, 16).ok()
        })
        .collect::<Option<Vec<u8>>>()?;
    Some((bytes, &text[end + 1..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dumps_parse_into_raw_entries() {
        let json =
            r#"[{"key":["0x01","0x00"],"value":["0xff"]},{"key":["0x02","0x00"],"value":[]}]"#;
        assert_eq!(
            parse_dump(json).unwrap(),
            vec![
                Entry {
                    key: vec![1, 0],
                    value: vec![0xff]
                },
                Entry {
                    key: vec![2, 0],
                    value: vec![]
                },
            ]
        );
        assert_eq!(parse_dump("[]").unwrap(), vec![]);
        assert!(parse_dump(r#"[{"key":["zz"],"value":[]}]"#).is_none());
        assert!(parse_dump("Error: bad").is_none());
    }

    #[test]
    fn keys_follow_lb_commons_layout() {
        let key = service_key(Ipv4Addr::new(198, 19, 0, 10), 80, 6, 1);
        assert_eq!(key.len(), 20);
        assert_eq!(&key[10..20], [0xff, 0xff, 198, 19, 0, 10, 0, 80, 6, 1]);
        assert_eq!(u32_at(&slot_key(7, 2), 0), 7);
        assert_eq!(u32_at(&slot_key(7, 2), 4), 2);
    }

    #[test]
    fn bytes_are_passed_as_hex() {
        assert_eq!(hex_arg("key", &[0xc6, 0x0a]), ["key", "hex", "c6", "0a"]);
    }
}
