//! Ethernet/IPv4/IPv6/TCP/UDP/SCTP/ICMP frames for every test: lb-ebpf's host tests and the packet
//! tests that run the real programs.
//!
//! - [`Frame`] (IPv4) and [`Frame6`] (IPv6, with extension headers): builders that compute
//!   lengths and checksums from scratch, so expected output frames are built independently of
//!   the data path's incremental updates.
//! - [`internet_checksum`], [`l4_checksum`] and [`l4_checksum6`]: the RFC 1071 checksum, plain
//!   and with the IPv4 or IPv6 pseudo-header; [`crc32c`], SCTP's checksum.
//! - [`Frame::to_fragments`] and [`reassemble`]: a datagram as a sender fragments it and as a
//!   receiver puts it back together.
//! - [`parse`] and [`parse6`]: read a frame back and verifies its checksums; [`describe`], [`hex`],
//!   [`frame_difference`] and [`assert_frames_equal`] for assertion messages.
//!
//! Malformed frames (truncated, bad IHL, ...) are made by building a valid frame and then
//! cutting or patching its bytes at the offsets in [`lb_common::net`].

mod checksum;
mod diff;
mod fragment;
mod frame;
mod frame6;
mod parse;

pub use checksum::{crc32c, internet_checksum, l4_checksum, l4_checksum6};
pub use diff::{assert_frames_equal, describe, frame_difference, hex};
pub use fragment::reassemble;
pub use frame::{Frame, Icmp, Ipv4, Sctp, Tcp, Udp, DST_MAC, L4, SRC_MAC};
pub use frame6::{Ext, Frame6, Ipv6};
pub use parse::{checksums_valid, parse, parse6, ParseError, Parsed, Parsed6};

#[cfg(test)]
mod tests;
