//! The frames of a capture file for `lb-agent trace --pcap`: pcap or pcapng (told by the
//! file's first bytes), read with `pcap-file`. Ethernet frames are taken as captured; Linux
//! cooked captures (`tcpdump -i any`: SLL, SLL2) get an Ethernet header in place of theirs.

use std::path::{Path, PathBuf};

use pcap_file::pcap::PcapParser;
use pcap_file::pcapng::{Block, PcapNgParser};
use pcap_file::{DataLink, PcapError};

/// The first bytes of a pcapng file (its Section Header Block's type).
const PCAPNG_MAGIC: [u8; 4] = [0x0a, 0x0d, 0x0d, 0x0a];
/// `ETH_P_*` of an Ethernet header, after the two MAC addresses.
const ETHERTYPE_OFFSET: usize = 12;

/// A capture that cannot be traced.
#[derive(Debug, thiserror::Error)]
pub enum CaptureError {
    // The causes are part of the one line, not sources, which anyhow would print apart.
    #[error("cannot read {}: {error}", path.display())]
    Read {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("{}: not a readable pcap or pcapng capture ({error})", path.display())]
    Format { path: PathBuf, error: PcapError },
    #[error("{}: link type {link:?} is not traced (Ethernet, LINUX_SLL and LINUX_SLL2 are)", path.display())]
    LinkType { path: PathBuf, link: DataLink },
    #[error("{}: packet {number} ({link:?}) has {len} bytes, fewer than its link-layer header", path.display())]
    Truncated {
        path: PathBuf,
        number: usize,
        link: DataLink,
        len: usize,
    },
    #[error("{} holds no packets", path.display())]
    Empty { path: PathBuf },
}

/// The packets of the capture at `path`, as Ethernet frames, in file order.
pub fn read(path: &Path) -> Result<Vec<Vec<u8>>, CaptureError> {
    let bytes = std::fs::read(path).map_err(|error| CaptureError::Read {
        path: path.to_path_buf(),
        error,
    })?;
    let format = |error| CaptureError::Format {
        path: path.to_path_buf(),
        error,
    };
    let captured = match bytes.starts_with(&PCAPNG_MAGIC) {
        true => pcapng_packets(&bytes).map_err(format)?,
        false => pcap_packets(&bytes).map_err(format)?,
    };
    if captured.is_empty() {
        return Err(CaptureError::Empty {
            path: path.to_path_buf(),
        });
    }
    captured
        .into_iter()
        .enumerate()
        .map(|(i, (link, data))| {
            if !matches!(
                link,
                DataLink::ETHERNET | DataLink::LINUX_SLL | DataLink::LINUX_SLL2
            ) {
                return Err(CaptureError::LinkType {
                    path: path.to_path_buf(),
                    link,
                });
            }
            let len = data.len();
            to_ethernet(link, data).ok_or_else(|| CaptureError::Truncated {
                path: path.to_path_buf(),
                number: i + 1,
                link,
                len,
            })
        })
        .collect()
}

/// Each packet of a pcap file with the file's link type.
fn pcap_packets(mut rest: &[u8]) -> Result<Vec<(DataLink, Vec<u8>)>, PcapError> {
    let (after_header, parser) = PcapParser::new(rest)?;
    rest = after_header;
    let link = parser.header().datalink;
    let mut packets = Vec::new();
    while !rest.is_empty() {
        let (after, packet) = parser.next_packet(rest)?;
        packets.push((link, packet.data.into_owned()));
        rest = after;
    }
    Ok(packets)
}

/// Each packet of a pcapng file with the link type of the interface it was captured on.
fn pcapng_packets(mut rest: &[u8]) -> Result<Vec<(DataLink, Vec<u8>)>, PcapError> {
    let (after_header, mut parser) = PcapNgParser::new(rest)?;
    rest = after_header;
    let mut packets = Vec::new();
    while !rest.is_empty() {
        let (after, block) = parser.next_block(rest)?;
        rest = after;
        let (interface, data) = match block {
            Block::EnhancedPacket(p) => (p.interface_id, p.data),
            // A Simple Packet Block belongs to the section's first interface.
            Block::SimplePacket(p) => (0, p.data),
            _ => continue,
        };
        let link = parser
            .interfaces()
            .get(interface as usize)
            .map(|i| i.linktype)
            .ok_or(PcapError::InvalidInterfaceId(interface))?;
        packets.push((link, data.into_owned()));
    }
    Ok(packets)
}

/// The frame as Ethernet: as captured for `ETHERNET`; for a Linux cooked capture, its
/// protocol and payload under an Ethernet header whose source is the captured link-layer
/// address when that is a MAC. `None` for a frame shorter than its link-layer header.
fn to_ethernet(link: DataLink, data: Vec<u8>) -> Option<Vec<u8>> {
    // Offsets of the cooked header's end, protocol and link-layer address
    // (pcap-linktype(7): LINUX_SLL and LINUX_SLL2).
    let (header_len, protocol, addr) = match link {
        DataLink::LINUX_SLL => (16, 14, 6),
        DataLink::LINUX_SLL2 => (20, 0, 12),
        _ => return (data.len() >= ETHERTYPE_OFFSET + 2).then_some(data),
    };
    if data.len() < header_len {
        return None;
    }
    let addr_len = match link {
        DataLink::LINUX_SLL => u16::from_be_bytes([data[4], data[5]]),
        _ => u16::from(data[11]),
    };
    let mut frame = vec![0u8; ETHERTYPE_OFFSET];
    if addr_len == 6 {
        frame[6..12].copy_from_slice(&data[addr..addr + 6]);
    }
    frame.extend_from_slice(&data[protocol..protocol + 2]);
    frame.extend_from_slice(&data[header_len..]);
    Some(frame)
}

#[cfg(test)]
mod tests {
    use std::borrow::Cow;
    use std::time::Duration;

    use pcap_file::pcap::{PcapHeader, PcapPacket, PcapWriter};
    use pcap_file::pcapng::blocks::enhanced_packet::EnhancedPacketBlock;
    use pcap_file::pcapng::blocks::interface_description::InterfaceDescriptionBlock;
    use pcap_file::pcapng::PcapNgWriter;

    use super::*;

    fn frames() -> Vec<Vec<u8>> {
        let from = "198.18.1.2:40000".parse().unwrap();
        let to = "198.19.0.10:80".parse().unwrap();
        vec![
            lb_frames::Frame::tcp(from, to, 2).to_bytes(),
            lb_frames::Frame::udp(from, to, b"x").to_bytes(),
        ]
    }

    fn pcap(link: DataLink, packets: &[Vec<u8>]) -> Vec<u8> {
        let header = PcapHeader {
            datalink: link,
            ..PcapHeader::default()
        };
        let mut writer = PcapWriter::with_header(Vec::new(), header).unwrap();
        for data in packets {
            let packet = PcapPacket::new(Duration::ZERO, data.len() as u32, data);
            writer.write_packet(&packet).unwrap();
        }
        writer.into_writer()
    }

    fn read_bytes(bytes: &[u8]) -> Result<Vec<Vec<u8>>, CaptureError> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("capture");
        std::fs::write(&path, bytes).unwrap();
        read(&path)
    }

    #[test]
    fn pcap_frames_are_read_as_captured() {
        assert_eq!(
            read_bytes(&pcap(DataLink::ETHERNET, &frames())).unwrap(),
            frames()
        );
    }

    #[test]
    fn pcapng_frames_are_read_as_captured() {
        let mut writer = PcapNgWriter::new(Vec::new()).unwrap();
        writer
            .write_pcapng_block(InterfaceDescriptionBlock::new(DataLink::ETHERNET, 0))
            .unwrap();
        for data in frames() {
            writer
                .write_pcapng_block(EnhancedPacketBlock {
                    interface_id: 0,
                    timestamp: Duration::ZERO,
                    original_len: data.len() as u32,
                    data: Cow::Owned(data),
                    options: vec![],
                })
                .unwrap();
        }
        assert_eq!(read_bytes(&writer.into_inner()).unwrap(), frames());
    }

    #[test]
    fn cooked_captures_get_an_ethernet_header() {
        let frame = &frames()[0];
        let (mac, rest) = (&frame[6..12], &frame[12..]);
        // Packet type, ARPHRD_ETHER, address length, address (padded to 8), protocol.
        let mut sll = [&[0, 0, 0, 1, 0, 6][..], mac, &[0, 0]].concat();
        sll.extend_from_slice(rest);
        let expected = [&[0; 6][..], mac, rest].concat();
        assert_eq!(
            read_bytes(&pcap(DataLink::LINUX_SLL, &[sll])).unwrap(),
            std::slice::from_ref(&expected)
        );
        // Protocol, reserved, ifindex, ARPHRD_ETHER, packet type, address length, address.
        let mut sll2 = [&rest[..2], &[0, 0, 0, 0, 0, 2, 0, 1, 0, 6], mac, &[0, 0]].concat();
        sll2.extend_from_slice(&rest[2..]);
        assert_eq!(
            read_bytes(&pcap(DataLink::LINUX_SLL2, &[sll2])).unwrap(),
            [expected]
        );
    }

    #[test]
    fn what_cannot_be_traced_is_a_clear_error() {
        let raw = read_bytes(&pcap(DataLink::RAW, &frames())).unwrap_err();
        assert!(
            raw.to_string().ends_with(
                ": link type RAW is not traced (Ethernet, LINUX_SLL and LINUX_SLL2 are)"
            ),
            "{raw}"
        );
        let short = read_bytes(&pcap(DataLink::ETHERNET, &[vec![0; 10]])).unwrap_err();
        assert!(
            short
                .to_string()
                .ends_with(": packet 1 (ETHERNET) has 10 bytes, fewer than its link-layer header"),
            "{short}"
        );
        let empty = read_bytes(&pcap(DataLink::ETHERNET, &[])).unwrap_err();
        assert!(empty.to_string().ends_with(" holds no packets"), "{empty}");
        let text = read_bytes(b"not a capture at all").unwrap_err();
        assert!(
            text.to_string()
                .contains(": not a readable pcap or pcapng capture ("),
            "{text}"
        );
        let mut cut = pcap(DataLink::ETHERNET, &frames());
        cut.truncate(cut.len() - 1);
        let cut = read_bytes(&cut).unwrap_err();
        assert!(
            cut.to_string()
                .contains(": not a readable pcap or pcapng capture ("),
            "{cut}"
        );
        let missing = read(Path::new("/nonexistent/tracepcap.pcap")).unwrap_err();
        assert!(
            missing
                .to_string()
                .starts_with("cannot read /nonexistent/tracepcap.pcap: "),
            "{missing}"
        );
    }
}
