//! The BPF maps, declared from lb-common's registry (`lb_common::maps`), and the narrow
//! interface the pipeline uses to reach them.

use crate::conntrack::{self, NewFlowScratch};
use aya_ebpf::{
    bindings::{bpf_fib_lookup, BPF_F_NO_PREALLOC, BPF_NOEXIST},
    helpers::bpf_ktime_get_coarse_ns,
    macros::map,
    maps::{
        lpm_trie::Key, Array, HashMap, LpmTrie, LruHashMap, PerCpuArray, ProgramArray, RingBuf,
    },
    EbpfContext, Global,
};
use lb_common::{
    event::{level, Event, EVENTS_BYTES},
    maps::{self as registry, MapDef, MapKind},
    AffinityKey, AffinityValue, Backend, BackendSlotKey, Counter, CtKey, CtValue, FragKey,
    FragPorts, NodeConfig, RejectLimits, ServiceKey, ServiceName, ServiceStats, ServiceValue,
    SockRevKey, SockRevValue, SourceRange, TokenBucket, TraceRecord,
};

/// A map type of aya-ebpf, with the key and value types and the kind it has in the registry.
trait KernelMap {
    type Key;
    type Value;
    const KIND: MapKind;
}

impl<K, V> KernelMap for HashMap<K, V> {
    type Key = K;
    type Value = V;
    const KIND: MapKind = MapKind::HashMap;
}

impl<K, V> KernelMap for LruHashMap<K, V> {
    type Key = K;
    type Value = V;
    const KIND: MapKind = MapKind::LruHashMap;
}

impl<T> KernelMap for Array<T> {
    type Key = u32;
    type Value = T;
    const KIND: MapKind = MapKind::Array;
}

impl<K, V> KernelMap for LpmTrie<K, V> {
    type Key = K;
    type Value = V;
    const KIND: MapKind = MapKind::LpmTrie;
}

impl KernelMap for ProgramArray {
    type Key = u32;
    type Value = u32;
    const KIND: MapKind = MapKind::ProgramArray;
}

impl<T> KernelMap for PerCpuArray<T> {
    type Key = u32;
    type Value = T;
    const KIND: MapKind = MapKind::PerCpuArray;
}

/// The entries a map static declares; the build fails unless the static `name` of type `M`
/// has the registry entry `def`'s name, kind, key and value types.
const fn declared<M: KernelMap>(def: MapDef<M::Key, M::Value>, name: &str) -> u32 {
    def.declared_as(name, M::KIND)
}

/// Declares the map static `$name` of registry entry `$def`.
macro_rules! registered_map {
    ($name:ident: $kind:ident<$($types:ty),+> = $def:expr) => {
        #[map]
        static $name: $kind<$($types),+> =
            $kind::with_max_entries(declared::<$kind<$($types),+>>($def, stringify!($name)), 0);
    };
}

registered_map!(LB_SERVICES: HashMap<ServiceKey, ServiceValue> = registry::SERVICES);
registered_map!(LB_SLOTS: HashMap<BackendSlotKey, u32> = registry::BACKEND_SLOTS);
registered_map!(LB_BACKENDS: HashMap<u32, Backend> = registry::BACKENDS);
registered_map!(LB_CONNTRACK: LruHashMap<CtKey, CtValue> = registry::CONNTRACK);
registered_map!(LB_AFFINITY: LruHashMap<AffinityKey, AffinityValue> = registry::AFFINITY);
registered_map!(LB_STATS: PerCpuArray<u64> = registry::STATS);
registered_map!(LB_SVC_STATS: PerCpuArray<ServiceStats> = registry::SERVICE_STATS);
registered_map!(LB_CONFIG: Array<NodeConfig> = registry::CONFIG);
registered_map!(LB_SOCK_REVNAT: LruHashMap<SockRevKey, SockRevValue> = registry::SOCK_REVNAT);
registered_map!(LB_CLUSTER_IPS: HashMap<[u8; 16], u32> = registry::CLUSTER_IPS);
registered_map!(LB_SRC_RANGES: LpmTrie<SourceRange, u8> = registry::SOURCE_RANGES);
registered_map!(LB_REJECT_CFG: Array<RejectLimits> = registry::REJECT_LIMITS);
registered_map!(LB_REJECT_SRC: LruHashMap<[u8; 16], TokenBucket> = registry::REJECT_SOURCES);
registered_map!(LB_REJECT_ALL: Array<TokenBucket> = registry::REJECT_GLOBAL);
registered_map!(LB_SVC_CIDRS: LpmTrie<[u8; 16], u8> = registry::SERVICE_CIDRS);
registered_map!(LB_FRAGMENTS: LruHashMap<FragKey, FragPorts> = registry::FRAGMENTS);
registered_map!(LB_MONITOR: Array<u32> = registry::MONITOR);

#[map]
static LB_TC_V6: ProgramArray =
    ProgramArray::with_max_entries(declared::<ProgramArray>(registry::TC_IPV6, "LB_TC_V6"), 0);
#[map]
static LB_XDP_V6: ProgramArray =
    ProgramArray::with_max_entries(declared::<ProgramArray>(registry::XDP_IPV6, "LB_XDP_V6"), 0);

/// Hands an IPv6 packet to the hook's IPv6 program (`lb_common::maps::ipv6_slot`: `slot` of
/// `LB_XDP_V6` for XDP, of `LB_TC_V6` otherwise). Returns only when that program is missing.
#[inline(always)]
pub fn ipv6_tail_call<C: EbpfContext>(ctx: &C, xdp: bool, slot: u32) {
    let programs = if xdp { &LB_XDP_V6 } else { &LB_TC_V6 };
    // SAFETY: a tail call leaves this program for another of its type with the same context;
    // nothing is held across it.
    unsafe { programs.tail_call(ctx, slot) };
}

/// The events the agent reads (`lb_common::event`): each loaded object has its own, not
/// pinned, so a restarted agent reads the events of the programs it swapped in.
#[map]
static LB_EVENTS: RingBuf = RingBuf::with_byte_size(EVENTS_BYTES, 0);

/// The most verbose drop level written (`lb_common::event::LEVEL_GLOBAL`), set by the agent
/// at load.
#[unsafe(no_mangle)]
static LB_EVENT_LEVEL: Global<u8> = Global::new(level::OFF);

/// Names for `lb-agent inspect`, written by the agent only: declared so the agent creates and
/// pins it with the others; not preallocated, since a name is 144 bytes per service.
#[map]
static LB_SVC_NAMES: HashMap<u32, ServiceName> = HashMap::with_max_entries(
    declared::<HashMap<u32, ServiceName>>(registry::SERVICE_NAMES, "LB_SVC_NAMES"),
    BPF_F_NO_PREALLOC,
);

/// Per-CPU room for a new flow's reply key and entry ([`NewFlowScratch`]): not shared, not
/// pinned, rewritten by every new flow.
#[map]
static LB_NEW_FLOW: PerCpuArray<NewFlowScratch> = PerCpuArray::with_max_entries(1, 0);

/// The redirect reply path's IPv6 FIB lookup (`reply_path`), 64 bytes the IPv6 programs'
/// stack has no room for. Per CPU, not pinned, rewritten by every lookup.
#[map]
static LB_FIB: PerCpuArray<bpf_fib_lookup> = PerCpuArray::with_max_entries(1, 0);

/// [`LB_FIB`]'s one entry.
#[inline(always)]
pub fn fib_scratch() -> Option<*mut bpf_fib_lookup> {
    LB_FIB.get_ptr_mut(0)
}

/// 1 in the copy `lb-agent trace` loads beside the live maps: no shared map is written, and
/// what would have been is recorded in the `LB_TRACE*` maps, the copy's own. 0 in the agent's
/// load, where the verifier prunes every dry-run branch.
#[no_mangle]
static DRY_RUN: u8 = 0;

/// What a dry run would have changed (`lb_common::trace`).
#[map]
static LB_TRACE: PerCpuArray<TraceRecord> = PerCpuArray::with_max_entries(1, 0);
/// The counters a dry run would have moved, indexed as `LB_STATS`.
#[map]
static LB_TRACE_STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(Counter::COUNT, 0);
/// Scratch for a dry run's per-Service counters (index 0) and reject buckets (0: the
/// client's, 1: the node's), so the pipeline's updates land outside the shared maps.
#[map]
static LB_TRACE_SVC_STATS: PerCpuArray<ServiceStats> = PerCpuArray::with_max_entries(1, 0);
#[map]
static LB_TRACE_BUCKETS: PerCpuArray<TokenBucket> = PerCpuArray::with_max_entries(2, 0);

#[inline(always)]
pub fn dry_run() -> bool {
    // SAFETY: a constant set at load; volatile so the compiler keeps the branch for the
    // verifier to prune.
    unsafe { core::ptr::read_volatile(&DRY_RUN) != 0 }
}

/// The dry run's record, if this is a dry run.
#[inline(always)]
fn trace() -> Option<&'static mut TraceRecord> {
    if !dry_run() {
        return None;
    }
    // SAFETY: per-CPU slot: no other program run writes it concurrently.
    LB_TRACE.get_ptr_mut(0).map(|p| unsafe { &mut *p })
}

/// A dry run's copy of `value` in scratch slot `index` of `LB_TRACE_BUCKETS`.
#[inline(always)]
fn scratch_bucket(index: u32, value: Option<&TokenBucket>) -> Option<&'static mut TokenBucket> {
    let value = *value?;
    // SAFETY: per-CPU slot, as above.
    let slot = unsafe { &mut *LB_TRACE_BUCKETS.get_ptr_mut(index)? };
    *slot = value;
    Some(slot)
}

/// What the pipeline reads and writes besides the packet: the maps, and the clock.
///
/// Lookups return copies of the (small) values; counters hand out this CPU's slot.
pub trait MapAccess {
    fn service(&mut self, key: &ServiceKey) -> Option<ServiceValue>;
    fn slot(&mut self, key: &BackendSlotKey) -> Option<u32>;
    fn backend(&mut self, id: u32) -> Option<Backend>;
    /// Looks up a flow and marks it used now, at most once per refresh interval (see
    /// [`conntrack::Found`]).
    fn conntrack(&mut self, key: &CtKey) -> Option<conntrack::Found>;
    /// Looks up a flow without marking it used.
    fn peek_conntrack(&mut self, key: &CtKey) -> Option<&CtValue>;
    /// Adds `flags` to an entry, if there is one, and marks it used now.
    fn mark_conntrack(&mut self, key: &CtKey, flags: u8);
    /// Inserts or replaces an entry; `Err` when the map refuses it.
    fn insert_conntrack(&mut self, key: &CtKey, value: &CtValue) -> Result<(), ()>;
    /// Inserts an entry only if the key is free; `Err` when it is taken or the map refuses.
    fn insert_conntrack_new(&mut self, key: &CtKey, value: &CtValue) -> Result<(), ()>;
    fn remove_conntrack(&mut self, key: &CtKey);
    /// A client's remembered backend for a service.
    fn affinity(&mut self, key: &AffinityKey) -> Option<AffinityValue>;
    /// Records a client's backend; a refused insert only costs the affinity.
    fn set_affinity(&mut self, key: &AffinityKey, value: &AffinityValue);
    /// This CPU's slot of a node-wide counter.
    fn counter(&mut self, counter: Counter) -> Option<&mut u64>;
    /// This CPU's counters of a service (`None` for ids beyond the map).
    fn service_stats(&mut self, group_id: u32) -> Option<&mut ServiceStats>;
    /// This CPU's room for a new flow's reply key and entry (null if it cannot be had). A
    /// raw pointer: the pipeline fills it between other map calls, and nothing else touches it
    /// while a packet is processed.
    fn new_flow_scratch(&mut self) -> *mut NewFlowScratch;
    /// The node-wide settings (all zero until the agent writes them), read in place: a copy
    /// would cost the stack its size.
    fn config(&mut self) -> Option<&NodeConfig>;
    /// The Service address a translated socket's backend stands for.
    fn sock_revnat(&mut self, key: &SockRevKey) -> Option<SockRevValue>;
    /// Records the Service address of a translated socket's backend; a refused insert only
    /// costs the translation back (the socket then sees the backend's address).
    fn set_sock_revnat(&mut self, key: &SockRevKey, value: &SockRevValue);
    /// Whether an address (IPv4-mapped) is a ClusterIP.
    fn is_cluster_ip(&mut self, addr: &[u8; 16]) -> bool;
    /// Whether `source` lies in one of the source ranges of group `group_id`.
    fn source_allowed(&mut self, group_id: u32, source: &[u8; 16]) -> bool;
    /// `CLOCK_MONOTONIC` in nanoseconds, as of the last timer tick (`bpf_ktime_get_coarse_ns`:
    /// every stamp and timeout here is a second or more, and the coarse read is the cheaper
    /// one on the per-packet path).
    fn now_ns(&self) -> u64;
    /// The rate limits of rejects (all zero, no limit, until the agent writes them).
    fn reject_limits(&mut self) -> RejectLimits;
    /// The reject bucket of a client address (IPv4-mapped), if it has one.
    fn reject_bucket(&mut self, source: &[u8; 16]) -> Option<&mut TokenBucket>;
    /// Gives a client address a reject bucket; a refused insert only costs the limit.
    fn set_reject_bucket(&mut self, source: &[u8; 16], bucket: &TokenBucket);
    /// The node's reject bucket, shared by every CPU.
    fn global_reject_bucket(&mut self) -> Option<&mut TokenBucket>;
    /// Whether an address (IPv4-mapped) lies inside one of the service CIDRs.
    fn in_service_cidr(&mut self, addr: &[u8; 16]) -> bool;
    /// The ports of a fragmented datagram, recorded from its first fragment.
    fn fragment(&mut self, key: &FragKey) -> Option<FragPorts>;
    /// Records a fragmented datagram's ports; a refused insert only leaves its later fragments
    /// untranslated.
    fn set_fragment(&mut self, key: &FragKey, ports: &FragPorts);
    /// The most verbose drop level the agent's log wants (`lb_common::event::level`).
    fn event_level(&self) -> u8;
    /// Whether an `lb-agent monitor` client listens (`LB_MONITOR`).
    fn monitored(&mut self) -> bool;
    /// Writes an event, all zero until `fill` fills it in; `false` when there was no room.
    fn write_event(&mut self, fill: impl FnOnce(&mut Event)) -> bool;
}

/// The maps of the loaded object.
pub struct KernelMaps;

impl MapAccess for KernelMaps {
    #[inline(always)]
    fn service(&mut self, key: &ServiceKey) -> Option<ServiceValue> {
        // SAFETY: plain-old-data value, copied out at once.
        unsafe { LB_SERVICES.get(key).copied() }
    }

    #[inline(always)]
    fn slot(&mut self, key: &BackendSlotKey) -> Option<u32> {
        // SAFETY: as above.
        unsafe { LB_SLOTS.get(key).copied() }
    }

    #[inline(always)]
    fn backend(&mut self, id: u32) -> Option<Backend> {
        // SAFETY: as above.
        unsafe { LB_BACKENDS.get(id).copied() }
    }

    #[inline(always)]
    fn conntrack(&mut self, key: &CtKey) -> Option<conntrack::Found> {
        let entry = LB_CONNTRACK.get_ptr_mut(key)?;
        // SAFETY: the element stays valid for the program run (RCU); a concurrent update can at
        // worst tear it, and the next packet of the flow overwrites it.
        let entry = unsafe { &mut *entry };
        let now = self.now_ns();
        let found = conntrack::Found::at(*entry, now);
        if let Some(trace) = trace() {
            if trace.conntrack_backend_id == 0 {
                trace.conntrack_backend_id = found.entry.backend_id;
            }
        } else if found.refreshed {
            entry.last_seen_ns = now;
        }
        Some(found)
    }

    #[inline(always)]
    fn peek_conntrack(&mut self, key: &CtKey) -> Option<&CtValue> {
        // SAFETY: as above; the caller reads a few fields at once.
        unsafe { LB_CONNTRACK.get(key) }
    }

    #[inline(always)]
    fn mark_conntrack(&mut self, key: &CtKey, flags: u8) {
        if dry_run() {
            return;
        }
        if let Some(entry) = LB_CONNTRACK.get_ptr_mut(key) {
            // SAFETY: as above.
            let entry = unsafe { &mut *entry };
            entry.flags |= flags;
            entry.last_seen_ns = self.now_ns();
        }
    }

    #[inline(always)]
    fn insert_conntrack(&mut self, key: &CtKey, value: &CtValue) -> Result<(), ()> {
        if let Some(trace) = trace() {
            trace.created(value);
            return Ok(());
        }
        LB_CONNTRACK.insert(key, value, 0).map_err(|_| ())
    }

    #[inline(always)]
    fn insert_conntrack_new(&mut self, key: &CtKey, value: &CtValue) -> Result<(), ()> {
        if let Some(trace) = trace() {
            // SAFETY: only the presence of the entry is read.
            if unsafe { LB_CONNTRACK.get(key).is_some() } {
                return Err(());
            }
            trace.created(value);
            return Ok(());
        }
        LB_CONNTRACK
            .insert(key, value, u64::from(BPF_NOEXIST))
            .map_err(|_| ())
    }

    #[inline(always)]
    fn remove_conntrack(&mut self, key: &CtKey) {
        if let Some(trace) = trace() {
            trace.removed_entries += 1;
            return;
        }
        // A missing entry is already the wanted state.
        let _ = LB_CONNTRACK.remove(key);
    }

    #[inline(always)]
    fn affinity(&mut self, key: &AffinityKey) -> Option<AffinityValue> {
        // SAFETY: plain-old-data value, copied out at once.
        unsafe { LB_AFFINITY.get(key).copied() }
    }

    #[inline(always)]
    fn set_affinity(&mut self, key: &AffinityKey, value: &AffinityValue) {
        if dry_run() {
            return;
        }
        // The LRU map evicts rather than refuses; an error only means no affinity next time.
        let _ = LB_AFFINITY.insert(key, value, 0);
    }

    #[inline(always)]
    fn counter(&mut self, counter: Counter) -> Option<&mut u64> {
        let stats = if dry_run() {
            &LB_TRACE_STATS
        } else {
            &LB_STATS
        };
        // SAFETY: per-CPU slot: no other program run writes it concurrently.
        stats
            .get_ptr_mut(counter as u32)
            .map(|p| unsafe { &mut *p })
    }

    #[inline(always)]
    fn service_stats(&mut self, group_id: u32) -> Option<&mut ServiceStats> {
        if let Some(trace) = trace() {
            trace.group_id = group_id;
            // SAFETY: as above.
            return LB_TRACE_SVC_STATS
                .get_ptr_mut(0)
                .map(|p| unsafe { &mut *p });
        }
        // SAFETY: as above.
        LB_SVC_STATS
            .get_ptr_mut(group_id)
            .map(|p| unsafe { &mut *p })
    }

    #[inline(always)]
    fn new_flow_scratch(&mut self) -> *mut NewFlowScratch {
        LB_NEW_FLOW.get_ptr_mut(0).unwrap_or_default()
    }

    #[inline(always)]
    fn config(&mut self) -> Option<&NodeConfig> {
        LB_CONFIG.get(0)
    }

    #[inline(always)]
    fn sock_revnat(&mut self, key: &SockRevKey) -> Option<SockRevValue> {
        // SAFETY: plain-old-data value, copied out at once.
        unsafe { LB_SOCK_REVNAT.get(key).copied() }
    }

    #[inline(always)]
    fn set_sock_revnat(&mut self, key: &SockRevKey, value: &SockRevValue) {
        if dry_run() {
            return;
        }
        // The LRU map evicts rather than refuses; see the trait.
        let _ = LB_SOCK_REVNAT.insert(key, value, 0);
    }

    #[inline(always)]
    fn is_cluster_ip(&mut self, addr: &[u8; 16]) -> bool {
        // SAFETY: only the presence of the value is read.
        unsafe { LB_CLUSTER_IPS.get(addr).is_some() }
    }

    #[inline(always)]
    fn source_allowed(&mut self, group_id: u32, source: &[u8; 16]) -> bool {
        let key = Key::new(
            SourceRange::LOOKUP_PREFIX_LEN,
            SourceRange::new(group_id, *source),
        );
        LB_SRC_RANGES.get(key).is_some()
    }

    #[inline(always)]
    fn now_ns(&self) -> u64 {
        // SAFETY: no arguments, no side effects.
        unsafe { bpf_ktime_get_coarse_ns() }
    }

    #[inline(always)]
    fn event_level(&self) -> u8 {
        LB_EVENT_LEVEL.load()
    }

    /// Never in a dry run: `lb-agent trace` reports what it saw itself.
    #[inline(always)]
    fn monitored(&mut self) -> bool {
        !dry_run() && LB_MONITOR.get(0).is_some_and(|clients| *clients != 0)
    }

    #[inline(always)]
    fn write_event(&mut self, fill: impl FnOnce(&mut Event)) -> bool {
        if dry_run() {
            return true;
        }
        let Some(mut entry) = LB_EVENTS.reserve::<Event>(0) else {
            return false;
        };
        let event = entry.as_mut_ptr();
        // SAFETY: `event` points to the reserved entry, which holds one Event; it is
        // initialised (all zero) before the reference is made, and submitted after.
        unsafe {
            event.write(Event::ZERO);
            fill(&mut *event);
        }
        entry.submit(0);
        true
    }

    #[inline(always)]
    fn reject_limits(&mut self) -> RejectLimits {
        LB_REJECT_CFG.get(0).copied().unwrap_or_default()
    }

    #[inline(always)]
    fn reject_bucket(&mut self, source: &[u8; 16]) -> Option<&mut TokenBucket> {
        // SAFETY: the element stays valid for the program run (RCU); concurrent CPUs updating
        // the same client's bucket can lose one another's update (see `reject_limit`).
        if dry_run() {
            return scratch_bucket(0, unsafe { LB_REJECT_SRC.get(source) });
        }
        LB_REJECT_SRC
            .get_ptr_mut(source)
            .map(|p| unsafe { &mut *p })
    }

    #[inline(always)]
    fn set_reject_bucket(&mut self, source: &[u8; 16], bucket: &TokenBucket) {
        if dry_run() {
            return;
        }
        // The LRU map evicts rather than refuses; see the trait.
        let _ = LB_REJECT_SRC.insert(source, bucket, 0);
    }

    #[inline(always)]
    fn global_reject_bucket(&mut self) -> Option<&mut TokenBucket> {
        if dry_run() {
            return scratch_bucket(1, LB_REJECT_ALL.get(0));
        }
        // SAFETY: as `reject_bucket`: one element every CPU updates without a lock.
        LB_REJECT_ALL.get_ptr_mut(0).map(|p| unsafe { &mut *p })
    }

    #[inline(always)]
    fn in_service_cidr(&mut self, addr: &[u8; 16]) -> bool {
        LB_SVC_CIDRS.get(Key::new(128, *addr)).is_some()
    }

    #[inline(always)]
    fn fragment(&mut self, key: &FragKey) -> Option<FragPorts> {
        // SAFETY: plain-old-data value, copied out at once.
        unsafe { LB_FRAGMENTS.get(key).copied() }
    }

    #[inline(always)]
    fn set_fragment(&mut self, key: &FragKey, ports: &FragPorts) {
        if dry_run() {
            return;
        }
        // The LRU map evicts rather than refuses; see the trait.
        let _ = LB_FRAGMENTS.insert(key, ports, 0);
    }
}
