//! Frames in assertion messages: one-line descriptions, hex dumps, the first difference.

use std::fmt::Write as _;

use lb_common::net::{IPPROTO_ICMP, IPPROTO_TCP, IPPROTO_UDP};

use crate::parse;

/// One line describing a frame, for assertion messages.
pub fn describe(frame: &[u8]) -> String {
    match parse(frame) {
        Ok(p) => {
            let proto = match p.protocol {
                IPPROTO_TCP => "TCP",
                IPPROTO_UDP => "UDP",
                IPPROTO_ICMP => "ICMP",
                _ => "proto",
            };
            let (sport, dport) = p.ports.unwrap_or_default();
            format!(
                "{}:{sport} -> {}:{dport} {proto}({}) flags={:?} frag={:#06x} ip_csum_ok={} \
                 l4_csum_ok={:?} len={}",
                p.src,
                p.dst,
                p.protocol,
                p.tcp_flags,
                p.flags_fragment,
                p.ip_checksum_ok,
                p.l4_checksum_ok,
                frame.len()
            )
        }
        Err(err) => format!("unparsed ({err}), len={}", frame.len()),
    }
}

/// Hex dump with offsets, 16 bytes per line.
pub fn hex(frame: &[u8]) -> String {
    let mut out = String::new();
    for (i, line) in frame.chunks(16).enumerate() {
        let _ = write!(out, "{:04x}:", i * 16);
        for b in line {
            let _ = write!(out, " {b:02x}");
        }
        out.push('\n');
    }
    out
}

/// `None` when the frames are byte-for-byte equal, else both described and dumped with the
/// offset of their first difference.
pub fn frame_difference(actual: &[u8], expected: &[u8]) -> Option<String> {
    if actual == expected {
        return None;
    }
    let first_difference = actual
        .iter()
        .zip(expected)
        .position(|(a, e)| a != e)
        .unwrap_or(actual.len().min(expected.len()));
    Some(format!(
        "frames differ (first at byte {first_difference})\n  actual:   {}\n  expected: {}\nactual:\n\
         {}expected:\n{}",
        describe(actual),
        describe(expected),
        hex(actual),
        hex(expected)
    ))
}

/// Panics with both frames described and dumped unless they are byte-for-byte equal.
#[track_caller]
pub fn assert_frames_equal(actual: &[u8], expected: &[u8]) {
    if let Some(difference) = frame_difference(actual, expected) {
        panic!("{difference}");
    }
}
