//! The typed map access against the real kernel: what the reconciler writes through
//! `Datapath::maps()` is what `DatapathMaps::from_pins` (and so `lb-agent inspect`) reads back, and the
//! UDP conntrack flush deletes exactly the removed backend's UDP entries, and the conntrack
//! garbage collector deletes exactly the expired flows of a full table (printing its speed).
//! Needs root (loads BPF, pins on bpffs); skipped with a message otherwise.

use std::path::PathBuf;
use std::time::Duration;

use aya::maps::{HashMap, Map, MapData, PerCpuArray, PerCpuValues};
use lb_common::conntrack::ct_flags;
use lb_common::maps as registry;
use lb_common::{service::scope, IPPROTO_UDP};
use lb_common::{BackendSlotKey, Counter, CtKey, CtValue, ServiceStats, IPPROTO_TCP};
use lb_userspace::agent::conntrack_gc::{self, Timeouts};
use lb_userspace::inspect::{Query, Snapshot};
use lb_userspace::model::{
    map_addr, DesiredService, DesiredState, Endpoint, Frontend, Protocol, ServicePortName,
};
use lb_userspace::{bpffs, Capacities, Datapath, DatapathMaps, MapWriter, Reconciler};

const CAPACITIES: Capacities = Capacities {
    services: 8,
    backends: 8,
    backend_slots: 16,
    conntrack: 64,
    affinity: 16,
};

/// A bpffs directory removed on drop, also when the test fails.
struct PinDir(PathBuf);

impl Drop for PinDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    if !root {
        eprintln!("SKIPPED: loading BPF programs needs root");
    }
    root
}

fn frontend(port: u16, protocol: Protocol) -> Frontend {
    Frontend {
        addr: "198.19.0.53".parse().unwrap(),
        port,
        protocol,
    }
}

fn endpoint(addr: &str, port: u16) -> Endpoint {
    Endpoint {
        addr: addr.parse().unwrap(),
        port,
        local: false,
    }
}

fn desired(services: &[(Frontend, &[Endpoint])]) -> DesiredState {
    services
        .iter()
        .map(|(fe, endpoints)| {
            let name = ServicePortName {
                namespace: "default".into(),
                name: "dp-test".into(),
                port_name: fe.to_string(),
            };
            let endpoints = endpoints.iter().copied().collect();
            (*fe, DesiredService::uniform(name, endpoints))
        })
        .collect()
}

/// A conntrack entry of the flow `198.18.0.10:<client_port> -> 198.19.0.53:53` translated to
/// `backend`: keyed client -> VIP for `FORWARD`, backend -> client for `REPLY`.
fn ct_entry(
    client_port: u16,
    backend: Endpoint,
    flags: u8,
    ids: (u32, u32),
    proto: u8,
) -> (CtKey, CtValue) {
    let client = endpoint("198.18.0.10", client_port);
    let vip = endpoint("198.19.0.53", 53);
    let (from, to, nat) = match flags {
        ct_flags::FORWARD => (client, vip, backend),
        _ => (backend, client, vip),
    };
    let key = CtKey {
        src_addr: map_addr(from.addr),
        dst_addr: map_addr(to.addr),
        src_port: from.port.to_be_bytes(),
        dst_port: to.port.to_be_bytes(),
        proto,
        _pad: [0; 3],
    };
    let value = CtValue {
        nat_addr: map_addr(nat.addr),
        nat_port: nat.port.to_be_bytes(),
        flags,
        group_id: ids.0,
        backend_id: ids.1,
        ..CtValue::default()
    };
    (key, value)
}

fn open_pin(dir: &std::path::Path, name: &str) -> Map {
    Map::from_map_data(MapData::from_pin(dir.join(name)).unwrap()).unwrap()
}

#[test]
fn written_maps_read_back_from_pins_and_udp_flush_is_precise() {
    if !is_root() {
        return;
    }
    let dir = PinDir(PathBuf::from(format!(
        "/sys/fs/bpf/lbu-dp-test-{}",
        std::process::id()
    )));
    bpffs::prepare_pin_dir(&dir.0).unwrap();
    let mut datapath = Datapath::load(&CAPACITIES).unwrap();
    datapath.pin_maps(&dir.0).unwrap();
    let pinned = DatapathMaps::from_pins(&dir.0).unwrap();

    let (dns, web) = (frontend(53, Protocol::Udp), frontend(80, Protocol::Tcp));
    let (a, b) = (endpoint("198.18.1.1", 5353), endpoint("198.18.1.2", 5353));
    let a_web = endpoint("198.18.1.1", 8080);
    let mut reconciler = Reconciler::new(&CAPACITIES);
    reconciler
        .apply(
            &desired(&[(dns, &[a, b]), (web, &[a_web])]),
            datapath.maps(),
        )
        .unwrap();

    let services = pinned.services().unwrap();
    assert_eq!(
        services.len(),
        4,
        "two frontends, each in both lookup scopes"
    );
    let dns_id = services
        .iter()
        .find(|(k, _)| *k == dns.key(scope::INTERNAL))
        .unwrap()
        .1
        .group_id;
    let web_id = services
        .iter()
        .find(|(k, _)| *k == web.key(scope::INTERNAL))
        .unwrap()
        .1
        .group_id;
    let backends = pinned.backends().unwrap();
    assert_eq!(backends.len(), 3);
    let id_of = |e: Endpoint| backends.iter().find(|(_, b)| *b == e.backend()).unwrap().0;
    assert_eq!(pinned.slots().unwrap().len(), 3);
    assert_eq!(pinned.counters().unwrap().len(), Counter::COUNT as usize);
    assert_eq!(
        pinned.service_stats(dns_id).unwrap(),
        ServiceStats::default()
    );

    // Flows as the data path records them: a forward and a reply entry each.
    let mut conntrack: HashMap<_, CtKey, CtValue> =
        HashMap::try_from(open_pin(&dir.0, registry::CONNTRACK.name)).unwrap();
    let entries = [
        ct_entry(
            40_001,
            a,
            ct_flags::FORWARD,
            (dns_id, id_of(a)),
            IPPROTO_UDP,
        ),
        ct_entry(40_001, a, ct_flags::REPLY, (dns_id, id_of(a)), IPPROTO_UDP),
        ct_entry(
            40_002,
            b,
            ct_flags::FORWARD,
            (dns_id, id_of(b)),
            IPPROTO_UDP,
        ),
        ct_entry(
            40_003,
            a_web,
            ct_flags::FORWARD,
            (web_id, id_of(a_web)),
            IPPROTO_TCP,
        ),
    ];
    for (key, value) in &entries {
        conntrack.insert(key, value, 0).unwrap();
    }

    reconciler
        .apply(&desired(&[(dns, &[b]), (web, &[])]), datapath.maps())
        .unwrap();
    let flushed = reconciler.flush_udp_conntrack(datapath.maps()).unwrap();
    assert_eq!(flushed, 2, "only backend a's UDP entries");
    let mut left: Vec<(u16, u8)> = pinned
        .conntrack()
        .unwrap()
        .iter()
        .map(|(k, _)| (u16::from_be_bytes(k.src_port), k.proto))
        .collect();
    left.sort();
    assert_eq!(left, [(40_002, IPPROTO_UDP), (40_003, IPPROTO_TCP)]);

    // A reused group id starts with zeroed counters.
    let mut stats: PerCpuArray<_, ServiceStats> =
        PerCpuArray::try_from(open_pin(&dir.0, registry::SERVICE_STATS.name)).unwrap();
    let cpus = aya::util::nr_cpus().unwrap();
    let busy = ServiceStats {
        packets: 7,
        ..ServiceStats::default()
    };
    stats
        .set(web_id, PerCpuValues::try_from(vec![busy; cpus]).unwrap(), 0)
        .unwrap();
    assert_eq!(
        pinned.service_stats(web_id).unwrap().packets,
        7 * cpus as u64
    );
    reconciler
        .apply(&desired(&[(dns, &[b])]), datapath.maps())
        .unwrap();
    let udp_80 = frontend(80, Protocol::Udp);
    reconciler
        .apply(&desired(&[(dns, &[b]), (udp_80, &[a])]), datapath.maps())
        .unwrap();
    assert_eq!(
        pinned
            .services()
            .unwrap()
            .iter()
            .find(|(k, _)| *k == udp_80.key(scope::INTERNAL))
            .unwrap()
            .1
            .group_id,
        web_id
    );
    assert_eq!(
        pinned.service_stats(web_id).unwrap(),
        ServiceStats::default()
    );

    // Deleting what is already gone succeeds.
    let missing = BackendSlotKey {
        group_id: 7,
        slot: 9,
    };
    datapath.maps().remove_slot(missing).unwrap();
    datapath.maps().remove_backend(99).unwrap();

    let table = Snapshot::read(&pinned, &Query::default())
        .unwrap()
        .to_string();
    assert!(table.contains("198.19.0.53:53/UDP"), "{table}");
    assert!(table.contains("198.18.1.2:5353"), "{table}");

    drop(datapath);
    assert!(
        !dir.0.join(registry::SERVICES.name).exists(),
        "pins are removed with the Datapath"
    );
}

#[test]
fn a_conntrack_table_larger_than_one_batch_reads_back_whole() {
    if !is_root() {
        return;
    }
    let dir = PinDir(PathBuf::from(format!(
        "/sys/fs/bpf/lbu-dp-batch-{}",
        std::process::id()
    )));
    bpffs::prepare_pin_dir(&dir.0).unwrap();
    // Room for every entry, so the LRU evicts none.
    let capacities = Capacities {
        conntrack: 65_536,
        ..CAPACITIES
    };
    let mut datapath = Datapath::load(&capacities).unwrap();
    datapath.pin_maps(&dir.0).unwrap();
    let mut conntrack: HashMap<_, CtKey, CtValue> =
        HashMap::try_from(open_pin(&dir.0, registry::CONNTRACK.name)).unwrap();
    let backend = endpoint("198.18.1.1", 5353);
    // Ten thousand flows: more than one batch (4,096), both directions.
    let mut written = Vec::new();
    for port in 0..5_000u16 {
        for flags in [ct_flags::FORWARD, ct_flags::REPLY] {
            let entry = ct_entry(20_000 + port, backend, flags, (1, 1), IPPROTO_UDP);
            conntrack.insert(entry.0, entry.1, 0).unwrap();
            written.push(entry);
        }
    }

    let mut read = datapath.maps().conntrack().unwrap();
    let mut walked: Vec<(CtKey, CtValue)> = conntrack.iter().map(Result::unwrap).collect();
    let order = |(key, _): &(CtKey, CtValue)| (key.src_port, key.dst_port, key.src_addr);
    for entries in [&mut read, &mut walked, &mut written] {
        entries.sort_by_key(order);
    }
    assert_eq!(read.len(), 10_000);
    assert!(
        read == walked && read == written,
        "the batched read differs"
    );
}

/// The `n`th of many UDP flows to 198.19.0.53:53 on backend 198.18.1.1:5353, each from its
/// own client address and port: its forward and reply entries, last seen at `last_seen_ns`.
fn udp_flow(n: u32, last_seen_ns: u64) -> [(CtKey, CtValue); 2] {
    let client = (
        [198, 18, 100 + (n / 50_000) as u8, 10],
        10_000 + (n % 50_000) as u16,
    );
    let (vip, backend) = (([198, 19, 0, 53], 53), ([198, 18, 1, 1], 5353));
    let key = |src: ([u8; 4], u16), dst: ([u8; 4], u16)| CtKey {
        src_addr: lb_common::ipv4_mapped(src.0),
        dst_addr: lb_common::ipv4_mapped(dst.0),
        src_port: src.1.to_be_bytes(),
        dst_port: dst.1.to_be_bytes(),
        proto: IPPROTO_UDP,
        _pad: [0; 3],
    };
    let value = |nat: ([u8; 4], u16), flags| CtValue {
        nat_addr: lb_common::ipv4_mapped(nat.0),
        nat_port: nat.1.to_be_bytes(),
        flags,
        group_id: 1,
        backend_id: 1,
        last_seen_ns,
        ..CtValue::default()
    };
    [
        (key(client, vip), value(backend, ct_flags::FORWARD)),
        (key(backend, client), value(vip, ct_flags::REPLY)),
    ]
}

fn monotonic_ns() -> u64 {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `now` is a valid timespec to write.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut now) };
    now.tv_sec as u64 * 1_000_000_000 + now.tv_nsec as u64
}

#[test]
fn the_garbage_collector_deletes_the_expired_flows_of_a_full_table_and_keeps_live_ones() {
    if !is_root() {
        return;
    }
    let dir = PinDir(PathBuf::from(format!(
        "/sys/fs/bpf/lbu-dp-gc-{}",
        std::process::id()
    )));
    bpffs::prepare_pin_dir(&dir.0).unwrap();
    // The default --conntrack-size, 90% full (a full LRU map evicts before its last entry):
    // half the flows idle for an hour, half just seen.
    let capacities = Capacities {
        conntrack: 262_144,
        ..CAPACITIES
    };
    let mut datapath = Datapath::load(&capacities).unwrap();
    datapath.pin_maps(&dir.0).unwrap();
    let mut conntrack: HashMap<_, CtKey, CtValue> =
        HashMap::try_from(open_pin(&dir.0, registry::CONNTRACK.name)).unwrap();
    let now = monotonic_ns();
    let flows = 117_964; // entries: 90% of 262,144

    for n in 0..flows {
        let last_seen = if n % 2 == 0 {
            now - 3_600_000_000_000
        } else {
            now
        };
        for (key, value) in udp_flow(n, last_seen) {
            conntrack.insert(key, value, 0).unwrap();
        }
    }
    let timeouts = Timeouts {
        tcp_syn: Duration::from_secs(60),
        tcp_established: Duration::from_secs(21_600),
        tcp_closing: Duration::from_secs(10),
        udp: Duration::from_secs(30),
        udp_stream: Duration::from_secs(120),
    };
    let mut pinned = DatapathMaps::from_pins(&dir.0).unwrap();
    let gc = conntrack_gc::collect(&mut pinned, &timeouts).unwrap();
    assert_eq!((gc.walked, gc.collected), (2 * flows as usize, flows));
    let left = pinned.conntrack().unwrap();
    assert_eq!(left.len(), flows as usize);
    assert!(left.iter().all(|(_, v)| v.last_seen_ns == now));
    eprintln!(
        "conntrack gc: walked {} entries and deleted {} in {:?} ({:.0} entries/s walked)",
        gc.walked,
        gc.collected,
        gc.duration,
        gc.walked as f64 / gc.duration.as_secs_f64()
    );
    let again = conntrack_gc::collect(&mut pinned, &timeouts).unwrap();
    eprintln!(
        "conntrack gc: walked {} live entries, deleted none, in {:?} ({:.0} entries/s)",
        again.walked,
        again.duration,
        again.walked as f64 / again.duration.as_secs_f64()
    );
    assert_eq!(again.collected, 0);
}
