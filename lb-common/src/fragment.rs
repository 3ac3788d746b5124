//! IPv4 fragments: only a datagram's first fragment carries its ports, so the data path
//! records them per datagram (`LB_FRAGMENTS`, an LRU hash) and reads them back for the later
//! fragments, which then follow the first one's flow (as Cilium's
//! `cilium_ipv4_frag_datagrams`).

/// Key of the fragment map: the addresses, protocol and IP identification that name one
/// datagram, as its fragments arrive (before any translation).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FragKey {
    /// Source address, network byte order, IPv4-mapped.
    pub src_addr: [u8; 16],
    /// Destination address, network byte order, IPv4-mapped.
    pub dst_addr: [u8; 16],
    /// IPv4 identification, network byte order.
    pub id: [u8; 2],
    /// `IPPROTO_TCP` or `IPPROTO_UDP`.
    pub proto: u8,
    pub _pad: u8,
}

/// Value of the fragment map: the datagram's ports, from its first fragment.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FragPorts {
    /// Source port, network byte order.
    pub src_port: [u8; 2],
    /// Destination port, network byte order.
    pub dst_port: [u8; 2],
}

const _: () = assert!(core::mem::size_of::<FragKey>() == 36);
const _: () = assert!(core::mem::size_of::<FragPorts>() == 4);

#[cfg(feature = "user")]
mod pod {
    unsafe impl aya::Pod for super::FragKey {}
    unsafe impl aya::Pod for super::FragPorts {}
}
