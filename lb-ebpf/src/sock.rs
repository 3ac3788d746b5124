//! Socket-level translation for the node's own sockets, and optionally pods' (cgroup
//! `sock_addr` hooks): a
//! `connect()` (TCP, connected UDP) or an unconnected UDP `sendmsg()` to a Service is pointed
//! at a backend before any packet exists, so nothing is translated per packet and no
//! conntrack entry is needed; `recvmsg()` and `getpeername()` show the Service address again
//! (Cilium's `bpf_sock.c`).
//!
//! Services are looked up in the internal scope, the one the TC program uses for pods: a
//! process on the node reaches a Service as a pod does (all usable backends of a NodePort,
//! LoadBalancer or external IP; internalTrafficPolicy: Local keeps ClusterIPs on this node's
//! endpoints; a pod is on this node, so the same holds for it). Backends are chosen by the
//! packet path's selection ([`select`]), with a socket's cookie as its hash. The client of
//! session affinity is the socket's network namespace (all its processes share one client
//! address when the packet path would see them: the node's, or a pod's).
//!
//! Sockets in the namespace `NodeConfig::sock_netns_cookie` names are translated, and those
//! of every other namespace (pods) when `NodeConfig::sock_all_netns` is set; otherwise pods'
//! sockets are left to the TC program. Nothing is translated while the agent has not written
//! the cookie. A pod's translated socket sends straight to the backend: the TC program on its
//! veth sees packets to a pod address, which it passes untouched without a conntrack entry.
//!
//! `loadBalancerSourceRanges` ([`service_flags::SOURCE_RANGES`]) apply to the node's sockets
//! as kube-proxy's firewall chain in `filter-output` applies them to the node's packets: a
//! socket bound to a source (or a datagram naming one) is checked with it; one that leaves
//! the source to the kernel leaves with the node's address, so it is served when a range
//! holds the node ([`service_flags::NODE_IN_SOURCE_RANGES`]). A refused call fails with
//! `EHOSTUNREACH`, counted as `drop_source_range`. A pod's source address is not known at
//! `connect()` (its route picks it, in the pod's namespace), so a pod's socket to such a
//! Service proceeds untranslated and the TC program on its veth filters its packets with
//! their real source.

use lb_common::{
    ipv4_mapped, service::scope, service::service_flags, Counter, ServiceKey, ServiceValue,
    SockRevKey, SockRevValue, IPPROTO_TCP, IPPROTO_UDP,
};

use crate::{
    conntrack, error::Error, event, family::Ipv4, maps::MapAccess, parse::FlowEnd, select, stats,
};

/// `errno` of a `connect()` or `sendmsg()` to a Service without endpoints, or to a ClusterIP
/// on a port or protocol it does not expose (kube-proxy's REJECT: the client sees a refused
/// connection at once). Not rate-limited as the packet path's rejects are (`reject_limit`):
/// the error goes to the caller, no packet is sent.
pub const ECONNREFUSED: i32 = 111;
/// `errno` of a `connect()` or `sendmsg()` to a Service whose packets the packet path would
/// drop: without endpoints under `DROP_IF_NO_BACKEND`, a backend entry missing, or an address
/// inside the service CIDRs that no Service holds. No packet leaves, as none would have
/// reached a backend (Cilium fails such sockets the same way).
pub const EHOSTUNREACH: i32 = 113;

/// What a `sock_addr` hook reads and changes of the socket call (IPv4).
pub trait SockAddr {
    /// The address the call carries: the destination of `connect` and `sendmsg`, the peer of
    /// `recvmsg` and `getpeername`.
    fn addr(&self) -> FlowEnd;
    fn set_addr(&mut self, to: FlowEnd);
    /// `IPPROTO_TCP`, `IPPROTO_UDP` or another protocol.
    fn proto(&self) -> u8;
    /// The socket's cookie, unique per socket.
    fn cookie(&mut self) -> u64;
    /// The cookie of the socket's network namespace.
    fn netns_cookie(&mut self) -> u64;
    /// The source address the call's packets carry when the socket is bound to one or
    /// (`sendmsg`) the datagram names one (`IP_PKTINFO`); all zero while the kernel is left
    /// to pick it.
    fn source(&mut self, sendmsg: bool) -> [u8; 4];
    /// The socket's bound port (network byte order); zero while the kernel has not picked
    /// it.
    fn source_port(&mut self) -> [u8; 2];
}

/// A translated socket call: the service's group id, the Service address the call asked for
/// and the backend it now goes to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SockFlow {
    pub group_id: u32,
    pub service: FlowEnd,
    pub backend: FlowEnd,
}

/// What the hook tells the kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SockVerdict {
    /// Carry on, translated or untouched.
    Proceed,
    /// Fail the call with this `errno`.
    Refuse(i32),
}

/// `connect()` of a TCP or UDP socket, or (`udp_only`) `sendmsg()` of an unconnected UDP
/// socket: a Service destination becomes a backend, and the socket remembers the Service
/// ([`reverse`]). A Service without a backend refuses the call, as do a ClusterIP's
/// unexposed ports and unallocated addresses of the service CIDRs. Counted as the packet
/// path counts new flows, rejects and drops, and reported to a listening monitor
/// ([`event::sock_flow`], [`event::sock_refused`]): each translation the program does is one
/// new flow (an unconnected UDP socket's every translated `sendmsg()`).
#[inline(always)]
pub fn forward<S: SockAddr, M: MapAccess>(
    sock: &mut S,
    maps: &mut M,
    udp_only: bool,
) -> SockVerdict {
    match try_forward(sock, maps, udp_only) {
        Ok(None) => SockVerdict::Proceed,
        Ok(Some(flow)) => {
            stats::count(maps, Counter::NewFlows);
            stats::new_flow(maps, flow.group_id);
            event::sock_flow(sock, maps, udp_only, &flow);
            SockVerdict::Proceed
        }
        Err(e) => {
            stats::count(maps, e.reason);
            event::sock_refused(sock, maps, udp_only, e.reason, e.group_id);
            match e.reason {
                Counter::RejectNoBackend => stats::rejected(maps, e.group_id),
                Counter::RejectUnexposedPort => {}
                _ => {
                    stats::dropped(maps, e.group_id);
                    return SockVerdict::Refuse(EHOSTUNREACH);
                }
            }
            SockVerdict::Refuse(ECONNREFUSED)
        }
    }
}

/// Translates the call, if it was to a Service.
#[inline(always)]
fn try_forward<S: SockAddr, M: MapAccess>(
    sock: &mut S,
    maps: &mut M,
    udp_only: bool,
) -> Result<Option<SockFlow>, Error> {
    let proto = sock.proto();
    let served = proto == IPPROTO_UDP || proto == IPPROTO_TCP && !udp_only;
    if !served {
        return Ok(None);
    }
    let Some((wanted, all_netns)) = maps
        .config()
        .map(|config| (config.sock_netns_cookie, config.sock_all_netns))
    else {
        return Ok(None);
    };
    let netns = sock.netns_cookie();
    if wanted == 0 || (netns != wanted && all_netns == 0) {
        return Ok(None);
    }
    let service_addr = sock.addr();
    let key = ServiceKey {
        addr: ipv4_mapped(service_addr.addr),
        port: service_addr.port,
        proto,
        scope: scope::INTERNAL,
    };
    let Some(service) = maps.service(&key) else {
        return not_service(maps, &key.addr);
    };
    if service.flags & service_flags::SOURCE_RANGES != 0 {
        if netns != wanted {
            return Ok(None);
        }
        node_source_allowed(sock, maps, &service, udp_only)?;
    }
    if service.backend_count == 0 {
        return Err(no_backend(&service));
    }
    let client = client(netns);
    let cookie = sock.cookie();
    let now = maps.now_ns();
    let group_id = service.group_id;
    let choice = select::choose(maps, &client, || select::socket(cookie), &service, now)
        .ok_or(Error::dropped(Counter::DropBackendMissing, group_id))?;
    let backend = select::backend::<Ipv4, M>(maps, choice.1, group_id)?;
    let backend = FlowEnd {
        addr: conntrack::v4(&backend.addr),
        port: backend.port,
    };
    maps.set_sock_revnat(
        &rev_key(cookie, backend),
        &SockRevValue {
            addr: key.addr,
            port: key.port,
            _pad: [0; 2],
        },
    );
    sock.set_addr(backend);
    select::remember(maps, &client, &service, choice, now);
    Ok(Some(SockFlow {
        group_id,
        service: service_addr,
        backend,
    }))
}

/// `recvmsg()` of a UDP socket and `getpeername()`: a peer that is the backend a Service
/// address was translated to for this socket shows as that Service address.
#[inline(always)]
pub fn reverse<S: SockAddr, M: MapAccess>(sock: &mut S, maps: &mut M) {
    let proto = sock.proto();
    if proto != IPPROTO_UDP && proto != IPPROTO_TCP {
        return;
    }
    let key = rev_key(sock.cookie(), sock.addr());
    if let Some(service) = maps.sock_revnat(&key) {
        sock.set_addr(FlowEnd {
            addr: conntrack::v4(&service.addr),
            port: service.port,
        });
    }
}

/// A call to no Service: left alone, unless it goes to a ClusterIP on a port or protocol no
/// Service exposes (refused, as the packet path rejects it) or to an address inside the
/// service CIDRs that no Service holds (failed, as the packet path drops it).
#[inline(always)]
fn not_service<M: MapAccess>(maps: &mut M, addr: &[u8; 16]) -> Result<Option<SockFlow>, Error> {
    if maps.is_cluster_ip(addr) {
        return Err(Error::dropped(Counter::RejectUnexposedPort, 0));
    }
    if maps.in_service_cidr(addr) {
        return Err(Error::dropped(Counter::DropUnallocatedServiceIp, 0));
    }
    Ok(None)
}

/// Lets the node's socket reach a Service with source ranges if its own source, when it names
/// one, lies in them, else if they hold the node's address (the flag the agent sets); else
/// the drop that refuses the call.
#[inline(always)]
fn node_source_allowed<S: SockAddr, M: MapAccess>(
    sock: &mut S,
    maps: &mut M,
    service: &ServiceValue,
    sendmsg: bool,
) -> Result<(), Error> {
    let allowed = match sock.source(sendmsg) {
        [0, 0, 0, 0] => service.flags & service_flags::NODE_IN_SOURCE_RANGES != 0,
        source => maps.source_allowed(service.group_id, &ipv4_mapped(source)),
    };
    match allowed {
        true => Ok(()),
        false => Err(Error::dropped(Counter::DropSourceRange, service.group_id)),
    }
}

/// Why a new socket to a service without backends fails.
#[inline(always)]
fn no_backend(service: &ServiceValue) -> Error {
    let reason = if service.flags & service_flags::DROP_IF_NO_BACKEND != 0 {
        Counter::DropNoBackend
    } else {
        Counter::RejectNoBackend
    };
    Error::dropped(reason, service.group_id)
}

/// The session-affinity client of a socket in the network namespace `netns_cookie` (never 0
/// here): the cookie in the first 8 bytes, so it never equals an IPv4-mapped address, whose
/// first 10 bytes are 0.
#[inline(always)]
fn client(netns_cookie: u64) -> [u8; 16] {
    let mut addr = [0u8; 16];
    addr[..8].copy_from_slice(&netns_cookie.to_be_bytes());
    addr
}

#[inline(always)]
fn rev_key(cookie: u64, backend: FlowEnd) -> SockRevKey {
    SockRevKey {
        cookie,
        addr: ipv4_mapped(backend.addr),
        port: backend.port,
        _pad: [0; 6],
    }
}

#[cfg(test)]
mod tests;
