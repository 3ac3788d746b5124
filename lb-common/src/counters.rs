//! Per-CPU counters: node-wide by reason, and per service.

/// Index into the node-wide per-CPU counters map (`LB_STATS`, a `PerCpuArray<u64>`).
///
/// A Rust enum never crosses into a map; its `u32` value is the array index.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Counter {
    /// Packets the program saw.
    Packets = 0,
    /// Neither IPv4 nor IPv6 (ARP, ...), or an IP header whose version disagrees with its
    /// EtherType: passed untouched.
    NotIp,
    /// Neither TCP nor UDP: passed untouched.
    OtherProtocol,
    /// IPv4 or IPv6 with no matching service or flow: passed untouched.
    NotService,
    /// New flows translated to a backend.
    NewFlows,
    /// Established client -> VIP packets translated to their backend.
    ForwardTranslated,
    /// Backend -> client replies translated back to the VIP.
    ReplyTranslated,
    /// Frame shorter than an Ethernet header: passed untouched.
    TruncatedEthernet,
    /// Frame shorter than its IPv4 header or than the IPv4 total length: passed untouched.
    TruncatedIpv4,
    /// IPv4 header length below 20 bytes or beyond the total length: passed untouched.
    BadIpv4HeaderLength,
    /// IPv4 fragments of TCP or UDP datagrams that entered (the first one's ports recorded in
    /// `LB_FRAGMENTS`, the later ones' read there): counted besides their outcome.
    Fragment,
    /// TCP or UDP header (TCP: with the options its data offset counts) beyond the frame or
    /// the IPv4 total length: passed untouched.
    TruncatedL4,
    /// New flow for a service with no usable backend: answered with ICMP port unreachable
    /// (kube-proxy's REJECT).
    RejectNoBackend,
    /// New flow for a service path with no usable backend that drops rather than rejects
    /// (externalTrafficPolicy or internalTrafficPolicy Local without a local endpoint): dropped.
    DropNoBackend,
    /// A slot or backend entry was missing (mid-update race): dropped.
    DropBackendMissing,
    /// The conntrack map refused the new flow: dropped rather than translated statelessly.
    DropConntrackFull,
    /// The packet could not be rewritten (helper failure): dropped.
    DropRewriteFailed,
    /// New external flows to a backend on another node, masqueraded to the node's address.
    Masqueraded,
    /// New external flow to a remote backend (or hairpin flow) for which no masquerading port
    /// was free after the allotted retries: dropped (the client retransmits).
    DropSnatPortsExhausted,
    /// New internal flows from a pod balanced to itself, source-NATed to
    /// `config::HAIRPIN_ADDR` (counted here, not in `Masqueraded`).
    Hairpinned,
    /// ICMP errors (destination unreachable, time exceeded) quoting a packet of a tracked
    /// flow, translated like that flow's packets so the sender's socket gets them.
    IcmpErrorTranslated,
    /// New flow to a ClusterIP on a port or protocol no Service exposes: answered with ICMP
    /// port unreachable (kube-proxy nftables' reject).
    RejectUnexposedPort,
    /// As `RejectUnexposedPort`, from a source no ICMP error may be sent to: dropped.
    DropUnexposedPort,
    /// New flow to a load-balancer IP from a source outside its Service's
    /// `loadBalancerSourceRanges`: dropped.
    DropSourceRange,
    /// A reject (of `RejectNoBackend` or `RejectUnexposedPort`) over its client's or the
    /// node's rate limit (`reject_limit`): dropped instead of answered.
    DropRejectSuppressed,
    /// New flow to an address inside the service CIDRs that is no ClusterIP (no Service holds
    /// it): dropped, as kube-proxy nftables' `cluster-ips-check` does.
    DropUnallocatedServiceIp,
    /// TCP data offset below 5 words, or a UDP length other than the IPv4 payload's: passed
    /// untouched.
    BadL4Length,
    /// New flow (or reject) whose IPv4 header checksum is wrong: passed untouched, nothing
    /// tracked or answered (the kernel drops it after XDP and TC).
    BadIpv4Checksum,
    /// New flow to a Service without a usable backend, from a source no ICMP error may be
    /// sent to (zero, loopback, multicast, broadcast): dropped instead of rejected.
    DropRejectSource,
    /// A later IPv4 fragment whose datagram's first fragment was not seen (or was evicted):
    /// its ports are unknown, so it passes untouched.
    FragmentUnknown,
    /// A conntrack entry re-created from the other entry of its flow, after eviction or
    /// deletion removed it alone (`pairs`): the flow keeps its backend and translation.
    ConntrackRepaired,
    /// An event (`crate::event`) the full ring buffer had no room for: the agent (or its
    /// monitor clients) did not read fast enough. The packet was handled as without it.
    EventsLost,
    /// Frame shorter than its IPv6 header or payload length, or ending inside an extension
    /// header: passed untouched.
    TruncatedIpv6,
    /// IPv6 with more extension headers before TCP or UDP than the data path walks
    /// (`parse::MAX_IPV6_EXTENSIONS`), or a hop-by-hop header not first: passed untouched.
    Ipv6ExtensionLimit,
    /// IPv6 with a routing header whose segments left is not 0: this node is not the final
    /// destination, so the packet passes untouched.
    Ipv6RoutingPending,
    /// UDP over IPv6 with checksum 0, which RFC 8200 forbids: passed untouched.
    UdpZeroChecksum,
    /// IPv6 packet arriving while the hook's IPv6 program is missing from its program array
    /// (`lb_common::maps::TC_IPV6` / `XDP_IPV6`): passed untouched.
    Ipv6Unavailable,
}

impl Counter {
    /// Every counter, in index order.
    pub const ALL: [Counter; 37] = [
        Counter::Packets,
        Counter::NotIp,
        Counter::OtherProtocol,
        Counter::NotService,
        Counter::NewFlows,
        Counter::ForwardTranslated,
        Counter::ReplyTranslated,
        Counter::TruncatedEthernet,
        Counter::TruncatedIpv4,
        Counter::BadIpv4HeaderLength,
        Counter::Fragment,
        Counter::TruncatedL4,
        Counter::RejectNoBackend,
        Counter::DropNoBackend,
        Counter::DropBackendMissing,
        Counter::DropConntrackFull,
        Counter::DropRewriteFailed,
        Counter::Masqueraded,
        Counter::DropSnatPortsExhausted,
        Counter::Hairpinned,
        Counter::IcmpErrorTranslated,
        Counter::RejectUnexposedPort,
        Counter::DropUnexposedPort,
        Counter::DropSourceRange,
        Counter::DropRejectSuppressed,
        Counter::DropUnallocatedServiceIp,
        Counter::BadL4Length,
        Counter::BadIpv4Checksum,
        Counter::DropRejectSource,
        Counter::FragmentUnknown,
        Counter::ConntrackRepaired,
        Counter::EventsLost,
        Counter::TruncatedIpv6,
        Counter::Ipv6ExtensionLimit,
        Counter::Ipv6RoutingPending,
        Counter::UdpZeroChecksum,
        Counter::Ipv6Unavailable,
    ];
    /// Size of the counters array.
    pub const COUNT: u32 = Self::ALL.len() as u32;

    /// Stable snake_case name, for tables and metrics.
    pub const fn name(self) -> &'static str {
        match self {
            Counter::Packets => "packets",
            Counter::NotIp => "not_ip",
            Counter::OtherProtocol => "other_protocol",
            Counter::NotService => "not_service",
            Counter::NewFlows => "new_flows",
            Counter::ForwardTranslated => "forward_translated",
            Counter::ReplyTranslated => "reply_translated",
            Counter::TruncatedEthernet => "truncated_ethernet",
            Counter::TruncatedIpv4 => "truncated_ipv4",
            Counter::BadIpv4HeaderLength => "bad_ipv4_header_length",
            Counter::Fragment => "fragment",
            Counter::TruncatedL4 => "truncated_l4",
            Counter::RejectNoBackend => "reject_no_backend",
            Counter::DropNoBackend => "drop_no_backend",
            Counter::DropBackendMissing => "drop_backend_missing",
            Counter::DropConntrackFull => "drop_conntrack_full",
            Counter::DropRewriteFailed => "drop_rewrite_failed",
            Counter::Masqueraded => "masqueraded",
            Counter::DropSnatPortsExhausted => "drop_snat_ports_exhausted",
            Counter::Hairpinned => "hairpinned",
            Counter::IcmpErrorTranslated => "icmp_error_translated",
            Counter::RejectUnexposedPort => "reject_unexposed_port",
            Counter::DropUnexposedPort => "drop_unexposed_port",
            Counter::DropSourceRange => "drop_source_range",
            Counter::DropRejectSuppressed => "drop_reject_suppressed",
            Counter::DropUnallocatedServiceIp => "drop_unallocated_service_ip",
            Counter::BadL4Length => "bad_l4_length",
            Counter::BadIpv4Checksum => "bad_ipv4_checksum",
            Counter::DropRejectSource => "drop_reject_source",
            Counter::FragmentUnknown => "fragment_unknown",
            Counter::ConntrackRepaired => "conntrack_repaired",
            Counter::EventsLost => "events_lost",
            Counter::TruncatedIpv6 => "truncated_ipv6",
            Counter::Ipv6ExtensionLimit => "ipv6_extension_limit",
            Counter::Ipv6RoutingPending => "ipv6_routing_pending",
            Counter::UdpZeroChecksum => "udp_zero_checksum",
            Counter::Ipv6Unavailable => "ipv6_unavailable",
        }
    }
}

/// Per-service counters (`LB_SVC_STATS`, a `PerCpuArray` indexed by group id).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ServiceStats {
    /// Translated packets, both directions.
    pub packets: u64,
    /// Translated bytes (whole frames), both directions.
    pub bytes: u64,
    /// New flows assigned a backend.
    pub new_flows: u64,
    /// New flows rejected for want of a usable backend (ICMP port unreachable sent).
    pub rejects: u64,
    /// Packets dropped for this service: no usable backend on a drop path, a backend entry missing mid-update,
    /// conntrack full, a failed rewrite, a source outside its ranges or one no reject may
    /// answer (the node-wide counters say which).
    pub drops: u64,
}

const _: () = assert!(core::mem::size_of::<ServiceStats>() == 40);

#[cfg(feature = "user")]
unsafe impl aya::Pod for ServiceStats {}

#[cfg(test)]
mod tests {
    use super::Counter;

    #[test]
    fn counter_indexes_are_dense_and_names_unique() {
        for (i, c) in Counter::ALL.iter().enumerate() {
            assert_eq!(*c as usize, i);
            assert_eq!(
                Counter::ALL.iter().filter(|o| o.name() == c.name()).count(),
                1
            );
        }
    }
}
