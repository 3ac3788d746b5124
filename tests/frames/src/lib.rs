//! Ethernet/IPv4/TCP/UDP/ICMP frames for every test: lb-ebpf's host tests and the packet
//! tests that run the real programs.
//!
//! - [`Frame`]: a builder that computes lengths and checksums from scratch, so expected output
//!   frames are built independently of the data path's incremental updates.
//! - [`internet_checksum`] and [`l4_checksum`]: the RFC 1071 checksum, plain and with the IPv4
//!   pseudo-header.
//! - [`Frame::to_fragments`] and [`reassemble`]: a datagram as a sender fragments it and as a
//!   receiver puts it back together.
//! - [`parse`]: reads a frame back and verifies its checksums; [`describe`], [`hex`],
//!   [`frame_difference`] and [`assert_frames_equal`] for assertion messages.
//!
//! Malformed frames (truncated, bad IHL, ...) are made by building a valid frame and then
//! cutting or patching its bytes at the offsets in [`lb_common::net`].

mod checksum;
mod diff;
mod fragment;
mod frame;
mod parse;

pub use checksum::{internet_checksum, l4_checksum};
pub use diff::{assert_frames_equal, describe, frame_difference, hex};
pub use fragment::reassemble;
pub use frame::{Frame, Icmp, Ipv4, Tcp, Udp, DST_MAC, L4, SRC_MAC};
pub use parse::{checksums_valid, parse, ParseError, Parsed};

#[cfg(test)]
mod tests;
