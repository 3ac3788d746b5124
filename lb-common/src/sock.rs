//! Socket-level translation (the cgroup `sock_addr` programs): the reverse map that lets a
//! socket see the Service address its datagrams were sent to, not the backend's.
//!
//! `connect()` and an unconnected UDP `sendmsg()` to a Service are rewritten to a backend in
//! the kernel before any packet exists; the program then records (socket cookie, backend) ->
//! Service here, and `recvmsg()` / `getpeername()` rewrite the backend's address back (as
//! Cilium's `cilium_lb4_reverse_sk`).

/// Key of the socket reverse map (`LB_SOCK_REVNAT`, an LRU hash).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct SockRevKey {
    /// The socket's cookie (`bpf_get_socket_cookie`: unique per socket until reboot).
    pub cookie: u64,
    /// Backend address the socket was translated to, network byte order, IPv4-mapped.
    pub addr: [u8; 16],
    /// Backend port, network byte order.
    pub port: [u8; 2],
    pub _pad: [u8; 6],
}

/// Value of the socket reverse map: the Service address the application asked for.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct SockRevValue {
    /// Service (frontend) address, network byte order, IPv4-mapped.
    pub addr: [u8; 16],
    /// Service port, network byte order.
    pub port: [u8; 2],
    pub _pad: [u8; 2],
}

const _: () = assert!(core::mem::size_of::<SockRevKey>() == 32);
const _: () = assert!(core::mem::size_of::<SockRevValue>() == 20);

#[cfg(feature = "user")]
mod pod {
    unsafe impl aya::Pod for super::SockRevKey {}
    unsafe impl aya::Pod for super::SockRevValue {}
}
