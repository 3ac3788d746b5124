//! Host test support: frames in the shape these tests describe them (built by lb-frames, the
//! builder every test shares), a byte-vector packet and in-memory maps standing in for the
//! kernel ones.

use std::{collections::HashMap, net::SocketAddrV4};

pub use lb_frames::checksums_valid;
use lb_frames::{Frame, Icmp};

use lb_common::{
    event::{hook, Event},
    net::{sctp_chunk, ETH_HLEN},
    AffinityKey, AffinityValue, Backend, BackendSlotKey, Counter, CtKey, CtValue, FragKey,
    FragPorts, NodeConfig, RejectLimits, ServiceKey, ServiceStats, ServiceValue, SockRevKey,
    SockRevValue, TokenBucket, IPPROTO_SCTP, IPPROTO_TCP, IPPROTO_UDP,
};

use crate::{
    conntrack::{self, NewFlowScratch},
    context::Packet,
    family::Family,
    maps::MapAccess,
    parse::{Flow, FlowEnd},
    rewrite::{self, RewriteFailed, Side},
};

/// Full Internet checksum (RFC 1071) of `bytes`, as stored in a header.
pub fn full_checksum(bytes: &[u8]) -> [u8; 2] {
    lb_frames::internet_checksum(bytes).to_be_bytes()
}

/// The interface index every [`SlicePacket`] is on.
pub const TEST_IFINDEX: u32 = 7;

/// A tiny deterministic generator, so failures reproduce.
pub struct Lcg(pub u64);

impl Lcg {
    pub fn bytes<const N: usize>(&mut self) -> [u8; N] {
        core::array::from_fn(|_| {
            self.0 = self
                .0
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (self.0 >> 56) as u8
        })
    }
}

/// What [`frame`] builds: Ethernet + IPv4 (with options) + TCP or UDP + payload, or SCTP.
#[derive(Clone, Debug)]
pub struct FrameSpec {
    pub src: FlowEnd,
    pub dst: FlowEnd,
    pub proto: u8,
    pub tcp_flags: u8,
    pub ip_options: Vec<u8>,
    pub payload: Vec<u8>,
    /// Send a UDP checksum of 0 (none).
    pub udp_no_checksum: bool,
    /// The chunk type of an SCTP packet.
    pub sctp_chunk: u8,
}

pub const CLIENT: FlowEnd = FlowEnd {
    addr: [198, 18, 0, 10],
    port: 40000u16.to_be_bytes(),
};
pub const VIP: FlowEnd = FlowEnd {
    addr: [198, 19, 0, 1],
    port: 80u16.to_be_bytes(),
};

impl FrameSpec {
    pub fn tcp_syn() -> Self {
        FrameSpec {
            src: CLIENT,
            dst: VIP,
            proto: IPPROTO_TCP,
            tcp_flags: 0x02,
            ip_options: Vec::new(),
            payload: Vec::new(),
            udp_no_checksum: false,
            sctp_chunk: sctp_chunk::INIT,
        }
    }

    /// An SCTP INIT.
    pub fn sctp_init() -> Self {
        FrameSpec {
            proto: IPPROTO_SCTP,
            tcp_flags: 0,
            ..Self::tcp_syn()
        }
    }

    pub fn udp() -> Self {
        FrameSpec {
            proto: IPPROTO_UDP,
            tcp_flags: 0,
            payload: b"hello".to_vec(),
            ..Self::tcp_syn()
        }
    }

    /// The same flow in the other direction.
    pub fn reversed(&self) -> Self {
        FrameSpec {
            src: self.dst,
            dst: self.src,
            ..self.clone()
        }
    }
}

/// Builds a frame with valid IPv4 and L4 checksums.
pub fn frame(spec: &FrameSpec) -> Vec<u8> {
    assert!(spec.ip_options.len().is_multiple_of(4) && spec.ip_options.len() <= 40);
    let (src, dst) = (socket(spec.src), socket(spec.dst));
    let frame = match spec.proto {
        IPPROTO_TCP => Frame::tcp(src, dst, spec.tcp_flags).with_payload(&spec.payload),
        IPPROTO_UDP if spec.udp_no_checksum => {
            Frame::udp(src, dst, &spec.payload).with_udp_zero_checksum()
        }
        IPPROTO_UDP => Frame::udp(src, dst, &spec.payload),
        IPPROTO_SCTP => Frame::sctp(src, dst, spec.sctp_chunk),
        other => panic!("FrameSpec builds TCP, UDP or SCTP, not protocol {other}"),
    };
    frame.with_ip_options(&spec.ip_options).to_bytes()
}

/// Builds an ICMP error frame `src -> dst` of `icmp_type`/`code` quoting `quoted` (an IPv4
/// packet, possibly cut short), with valid checksums.
pub fn icmp_error(src: [u8; 4], dst: [u8; 4], icmp_type: u8, code: u8, quoted: &[u8]) -> Vec<u8> {
    let icmp = Icmp::error((icmp_type, code), quoted.to_vec());
    Frame::icmp(src.into(), dst.into(), icmp).to_bytes()
}

fn socket(end: FlowEnd) -> SocketAddrV4 {
    SocketAddrV4::new(end.addr.into(), u16::from_be_bytes(end.port))
}

/// A frame in memory, rewritten in place like an XDP frame.
pub struct SlicePacket {
    pub bytes: Vec<u8>,
    /// Makes every store fail, to exercise the rewrite failure path.
    pub fail_stores: bool,
    /// Makes `make_reply_room` fail, as a refusing resize helper would.
    pub fail_resize: bool,
}

impl SlicePacket {
    pub fn new(bytes: Vec<u8>) -> Self {
        SlicePacket {
            bytes,
            fail_stores: false,
            fail_resize: false,
        }
    }
}

impl Packet for SlicePacket {
    const INGRESS_HOOK: u8 = hook::XDP;

    fn ifindex(&self) -> u32 {
        TEST_IFINDEX
    }

    fn frame_len(&self) -> u32 {
        self.bytes.len() as u32
    }

    fn load<const N: usize>(&self, offset: usize) -> Option<[u8; N]> {
        const { assert!(N >= 2, "as the kernel contexts require") };
        self.bytes.get(offset..offset + N)?.try_into().ok()
    }

    fn store<const N: usize>(&mut self, offset: usize, bytes: [u8; N]) -> Option<()> {
        if self.fail_stores {
            return None;
        }
        self.bytes
            .get_mut(offset..offset + N)?
            .copy_from_slice(&bytes);
        Some(())
    }

    /// Like the kernel contexts, with the unspecified bytes filled with 0xee so tests notice
    /// any the caller forgets to write.
    fn quote_sum(&mut self, len: usize) -> Option<u32> {
        let data = self.bytes.as_ptr() as usize;
        crate::reject::quoted_sum6(data, data + self.bytes.len(), len)
    }

    fn make_reply_room(&mut self, room: u32, len: u32) -> Result<(), RewriteFailed> {
        let (room, len) = (room as usize, len as usize);
        assert!(
            len - room <= self.bytes.len(),
            "make_reply_room cannot grow the tail"
        );
        if self.fail_resize {
            return Err(RewriteFailed);
        }
        self.bytes.truncate(len - room);
        self.bytes.splice(0..0, vec![0; room]);
        self.bytes[..ETH_HLEN + room].fill(0xee);
        Ok(())
    }

    fn rewrite<F: Family>(
        &mut self,
        flow: &Flow<F>,
        side: Side,
        to: FlowEnd<F::Addr>,
    ) -> Result<(), RewriteFailed> {
        rewrite::in_place(self, flow, side, to)
    }
}

/// In-memory maps with a settable clock.
#[derive(Default)]
pub struct FakeMaps {
    pub services: HashMap<ServiceKey, ServiceValue>,
    pub slots: HashMap<BackendSlotKey, u32>,
    pub backends: HashMap<u32, Backend>,
    pub conntrack: HashMap<CtKey, CtValue>,
    /// Refuse conntrack inserts, as a full or failing map would.
    pub conntrack_full: bool,
    /// Refuse conntrack inserts of this one key.
    pub refused_conntrack_key: Option<CtKey>,
    pub affinity: HashMap<AffinityKey, AffinityValue>,
    pub counters: HashMap<u32, u64>,
    pub service_stats: HashMap<u32, ServiceStats>,
    pub config: NodeConfig,
    /// The room [`MapAccess::new_flow_scratch`] hands out, boxed so that it stays put.
    pub new_flow_scratch: Box<NewFlowScratch>,
    pub sock_revnat: HashMap<SockRevKey, SockRevValue>,
    /// Addresses (IPv4-mapped) that are ClusterIPs.
    pub cluster_ips: Vec<[u8; 16]>,
    /// Allowed source prefixes per group id: (address, IPv4 prefix length).
    pub source_ranges: HashMap<u32, Vec<([u8; 4], u8)>>,
    pub reject_limits: RejectLimits,
    pub reject_buckets: HashMap<[u8; 16], TokenBucket>,
    pub global_reject_bucket: TokenBucket,
    /// The service CIDRs: (address, IPv4 prefix length).
    pub service_cidrs: Vec<([u8; 4], u8)>,
    pub now_ns: u64,
    pub fragments: HashMap<FragKey, FragPorts>,
    /// The drop level the agent's log wants (`LB_EVENT_LEVEL`).
    pub event_level: u8,
    /// Whether a monitor listens (`LB_MONITOR`).
    pub monitored: bool,
    /// The events written, oldest first.
    pub events: Vec<Event>,
    /// Room left in the ring buffer for this many events; `None`: unlimited.
    pub event_room: Option<usize>,
}

impl FakeMaps {
    /// Maps with one service `group_id` at VIP:80/`proto` in both scopes, whose one slot
    /// holds `backend` as `backend_id`, and the clock at 1 s.
    pub fn one_backend(proto: u8, group_id: u32, backend_id: u32, backend: Backend) -> Self {
        let mut maps = FakeMaps {
            now_ns: 1_000_000_000,
            ..FakeMaps::default()
        };
        for scope in [
            lb_common::service::scope::EXTERNAL,
            lb_common::service::scope::INTERNAL,
        ] {
            let key = ServiceKey::new(lb_common::ipv4_mapped(VIP.addr), 80, proto, scope);
            let value = ServiceValue {
                group_id,
                backend_count: 1,
                ..ServiceValue::default()
            };
            maps.services.insert(key, value);
        }
        let slot = BackendSlotKey { group_id, slot: 1 };
        maps.slots.insert(slot, backend_id);
        maps.backends.insert(backend_id, backend);
        maps
    }

    pub fn counter_value(&self, counter: Counter) -> u64 {
        self.counters.get(&(counter as u32)).copied().unwrap_or(0)
    }

    pub fn stats_of(&self, group_id: u32) -> ServiceStats {
        self.service_stats
            .get(&group_id)
            .copied()
            .unwrap_or_default()
    }
}

impl MapAccess for FakeMaps {
    fn service(&mut self, key: &ServiceKey) -> Option<ServiceValue> {
        self.services.get(key).copied()
    }

    fn slot(&mut self, key: &BackendSlotKey) -> Option<u32> {
        self.slots.get(key).copied()
    }

    fn backend(&mut self, id: u32) -> Option<Backend> {
        self.backends.get(&id).copied()
    }

    fn conntrack(&mut self, key: &CtKey) -> Option<conntrack::Found> {
        let entry = self.conntrack.get_mut(key)?;
        let now = self.now_ns;
        let found = conntrack::Found::at(*entry, now);
        if found.refreshed {
            entry.last_seen_ns = now;
        }
        Some(found)
    }

    fn peek_conntrack(&mut self, key: &CtKey) -> Option<&CtValue> {
        self.conntrack.get(key)
    }

    fn mark_conntrack(&mut self, key: &CtKey, flags: u8) {
        if let Some(entry) = self.conntrack.get_mut(key) {
            entry.flags |= flags;
            entry.last_seen_ns = self.now_ns;
        }
    }

    fn insert_conntrack(&mut self, key: &CtKey, value: &CtValue) -> Result<(), ()> {
        if self.conntrack_full || self.refused_conntrack_key == Some(*key) {
            return Err(());
        }
        self.conntrack.insert(*key, *value);
        Ok(())
    }

    fn insert_conntrack_new(&mut self, key: &CtKey, value: &CtValue) -> Result<(), ()> {
        if self.conntrack.contains_key(key) {
            return Err(());
        }
        self.insert_conntrack(key, value)
    }

    fn remove_conntrack(&mut self, key: &CtKey) {
        self.conntrack.remove(key);
    }

    fn affinity(&mut self, key: &AffinityKey) -> Option<AffinityValue> {
        self.affinity.get(key).copied()
    }

    fn set_affinity(&mut self, key: &AffinityKey, value: &AffinityValue) {
        self.affinity.insert(*key, *value);
    }

    fn counter(&mut self, counter: Counter) -> Option<&mut u64> {
        Some(self.counters.entry(counter as u32).or_default())
    }

    fn service_stats(&mut self, group_id: u32) -> Option<&mut ServiceStats> {
        Some(self.service_stats.entry(group_id).or_default())
    }

    fn new_flow_scratch(&mut self) -> *mut NewFlowScratch {
        &mut *self.new_flow_scratch
    }

    fn config(&mut self) -> Option<&NodeConfig> {
        Some(&self.config)
    }

    fn sock_revnat(&mut self, key: &SockRevKey) -> Option<SockRevValue> {
        self.sock_revnat.get(key).copied()
    }

    fn set_sock_revnat(&mut self, key: &SockRevKey, value: &SockRevValue) {
        self.sock_revnat.insert(*key, *value);
    }

    fn is_cluster_ip(&mut self, addr: &[u8; 16]) -> bool {
        self.cluster_ips.contains(addr)
    }

    fn source_allowed(&mut self, group_id: u32, source: &[u8; 16]) -> bool {
        let Some(source) = lb_common::ipv4_unmapped(source).map(u32::from_be_bytes) else {
            return false;
        };
        self.source_ranges
            .get(&group_id)
            .into_iter()
            .flatten()
            .any(|prefix| contains(prefix, source))
    }

    fn now_ns(&self) -> u64 {
        self.now_ns
    }

    fn reject_limits(&mut self) -> RejectLimits {
        self.reject_limits
    }

    fn reject_bucket(&mut self, source: &[u8; 16]) -> Option<&mut TokenBucket> {
        self.reject_buckets.get_mut(source)
    }

    fn set_reject_bucket(&mut self, source: &[u8; 16], bucket: &TokenBucket) {
        self.reject_buckets.insert(*source, *bucket);
    }

    fn global_reject_bucket(&mut self) -> Option<&mut TokenBucket> {
        Some(&mut self.global_reject_bucket)
    }

    fn in_service_cidr(&mut self, addr: &[u8; 16]) -> bool {
        lb_common::ipv4_unmapped(addr).is_some_and(|addr| {
            self.service_cidrs
                .iter()
                .any(|p| contains(p, u32::from_be_bytes(addr)))
        })
    }

    fn fragment(&mut self, key: &FragKey) -> Option<FragPorts> {
        self.fragments.get(key).copied()
    }

    fn set_fragment(&mut self, key: &FragKey, ports: &FragPorts) {
        self.fragments.insert(*key, *ports);
    }

    fn event_level(&self) -> u8 {
        self.event_level
    }

    fn monitored(&mut self) -> bool {
        self.monitored
    }

    fn write_event(&mut self, fill: impl FnOnce(&mut Event)) -> bool {
        if self
            .event_room
            .is_some_and(|room| room <= self.events.len())
        {
            return false;
        }
        let mut event = Event::ZERO;
        fill(&mut event);
        self.events.push(event);
        true
    }
}

/// Whether the IPv4 prefix `(net, bits)` holds `addr` (host byte order).
fn contains((net, bits): &([u8; 4], u8), addr: u32) -> bool {
    let mask = u32::MAX.checked_shl(32 - u32::from(*bits)).unwrap_or(0);
    addr & mask == u32::from_be_bytes(*net) & mask
}
