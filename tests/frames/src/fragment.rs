//! IPv4 fragmentation as a sender does it, and reassembly as a receiver does, so tests can put
//! a whole datagram's fragments through the data path and verify the datagram they make.

use lb_common::net::{
    ETH_HLEN, IPV4_CHECKSUM, IPV4_FRAG_OFF, IPV4_MF, IPV4_OFFSET_MASK, IPV4_TOTAL_LEN,
};

use crate::{internet_checksum, Frame};

impl Frame {
    /// Serialises the frame as the fragments a sender with this `mtu` sends: the IPv4 payload
    /// cut into pieces of the most multiples of 8 bytes that fit, each behind a copy of the
    /// IPv4 header with its own length, offset, more-fragments flag (all but the last; no
    /// don't-fragment flag) and header checksum. The TCP or UDP checksum, computed over the
    /// whole datagram, stays in the first fragment.
    pub fn to_fragments(&self, mtu: usize) -> Vec<Vec<u8>> {
        let whole = self.to_bytes();
        let l3 = ETH_HLEN + usize::from(whole[ETH_HLEN] & 0x0f) * 4;
        let piece_len = (mtu - (l3 - ETH_HLEN)) / 8 * 8;
        let pieces: Vec<&[u8]> = whole[l3..].chunks(piece_len).collect();
        pieces
            .iter()
            .enumerate()
            .map(|(i, piece)| {
                let mut frame = whole[..l3].to_vec();
                let more = if i + 1 < pieces.len() { IPV4_MF } else { 0 };
                let offset = u16::try_from(i * piece_len / 8).expect("offset fits");
                set_header(&mut frame, l3 - ETH_HLEN + piece.len(), offset | more);
                frame.extend_from_slice(piece);
                frame
            })
            .collect()
    }
}

/// Reassembles fragments (in any order) into the whole frame, as a receiver does: the first
/// fragment's Ethernet and IPv4 header, every fragment's payload at its offset.
pub fn reassemble(fragments: &[Vec<u8>]) -> Vec<u8> {
    let l3 = |f: &[u8]| ETH_HLEN + usize::from(f[ETH_HLEN] & 0x0f) * 4;
    let offset = |f: &[u8]| {
        let word =
            u16::from_be_bytes([f[ETH_HLEN + IPV4_FRAG_OFF], f[ETH_HLEN + IPV4_FRAG_OFF + 1]]);
        usize::from(word & IPV4_OFFSET_MASK) * 8
    };
    let first = fragments
        .iter()
        .find(|f| offset(f) == 0)
        .expect("a first fragment");
    let mut payload = Vec::new();
    for f in fragments {
        let at = offset(f);
        let piece = &f[l3(f)..];
        payload.resize(payload.len().max(at + piece.len()), 0);
        payload[at..at + piece.len()].copy_from_slice(piece);
    }
    let mut frame = first[..l3(first)].to_vec();
    set_header(&mut frame, l3(first) - ETH_HLEN + payload.len(), 0);
    frame.extend_from_slice(&payload);
    frame
}

/// Sets the IPv4 header's total length and fragment word, and recomputes its checksum.
fn set_header(frame: &mut [u8], total_len: usize, fragment_word: u16) {
    let total_len = u16::try_from(total_len).expect("IPv4 packet over 64 KiB");
    let ip = &mut frame[ETH_HLEN..];
    ip[IPV4_TOTAL_LEN..IPV4_TOTAL_LEN + 2].copy_from_slice(&total_len.to_be_bytes());
    ip[IPV4_FRAG_OFF..IPV4_FRAG_OFF + 2].copy_from_slice(&fragment_word.to_be_bytes());
    ip[IPV4_CHECKSUM..IPV4_CHECKSUM + 2].fill(0);
    let sum = internet_checksum(ip);
    ip[IPV4_CHECKSUM..IPV4_CHECKSUM + 2].copy_from_slice(&sum.to_be_bytes());
}
