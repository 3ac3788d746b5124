//! The cost of scraping the real agent's `/metrics` with its conntrack map full: the map is
//! filled to capacity through its pin (answered TCP flows to one Service), then `GET /metrics`
//! is timed from the node namespace, and the agent's CPU time over the scrapes is read from
//! `/proc/<pid>/stat`. The agent reports `lbagent_conntrack_entries` from its garbage
//! collector's last walk, so the scrape's cost should not depend on the fill; agents that count
//! the entries at scrape time (before issue 13) find a full map their most expensive case.

use std::{
    fs,
    net::{Ipv4Addr, SocketAddrV4},
    path::Path,
    time::Instant,
};

use aya::maps::{HashMap, Map, MapData};
use lb_common::{conntrack::ct_flags, maps as registry, CtKey, CtValue};
use lb_userspace::model::map_addr;
use serde::Serialize;

use crate::{
    bench::{
        conntrack_fill::{self, FILLER_SOURCES},
        error::{io_context, map_context, BenchError, Result},
        interrupt,
    },
    netns::NetNs,
    scrape::{self, Metrics, METRICS_ADDR},
};

/// `GET /metrics` timed with conntrack full.
#[derive(Clone, Debug, Default, Serialize)]
pub struct ScrapeCost {
    /// Entries in the map while it was scraped, counted through its pin: the map's capacity,
    /// or a few less when the LRU map evicted some while being filled.
    pub conntrack_entries: u32,
    /// What the scrape reported (`lbagent_conntrack_entries`): the last garbage collector
    /// walk's count (with the walks an hour apart, the walk at start: before the fill), or
    /// the entries counted at scrape time by agents before issue 13.
    pub reported_entries: f64,
    /// The map's capacity.
    pub conntrack_capacity: u32,
    /// Size of the metrics text, in bytes.
    pub bytes: usize,
    /// Each scrape's time from connect to the end of the response, in milliseconds.
    pub ms: Vec<f64>,
    /// The agent's user and system CPU time over all scrapes, divided by their number, in
    /// milliseconds (the kernel counts it in clock ticks: 10 ms at 100 Hz).
    pub cpu_ms_per_scrape: f64,
}

/// Fills the conntrack map pinned in `maps_dir` to capacity with flows to `dst`, then times
/// `scrapes` scrapes of the agent `pid` serving metrics in `node`.
pub fn measure(
    node: &NetNs,
    maps_dir: &Path,
    pid: u32,
    dst: SocketAddrV4,
    scrapes: u32,
) -> Result<ScrapeCost> {
    let path = maps_dir.join(registry::CONNTRACK.name);
    let data = MapData::from_pin(&path).map_err(map_context("opening the pinned conntrack"))?;
    let capacity = data
        .info()
        .map_err(map_context("reading the conntrack map's info"))?
        .max_entries();
    let mut conntrack: HashMap<MapData, CtKey, CtValue> =
        HashMap::try_from(Map::LruHashMap(data)).map_err(map_context("opening conntrack"))?;
    let present = conntrack.keys().count() as u32;
    let value = CtValue {
        nat_addr: map_addr(std::net::IpAddr::V4(Ipv4Addr::new(198, 18, 0, 2))),
        nat_port: 8080u16.to_be_bytes(),
        flags: ct_flags::FORWARD | ct_flags::SEEN_REPLY,
        ..CtValue::default()
    };
    let fill = (present, capacity);
    conntrack_fill::fill(&mut conntrack, fill, FILLER_SOURCES, dst, value)?;
    let filled = conntrack.keys().count() as u32;

    let mut cost = ScrapeCost {
        conntrack_entries: filled,
        conntrack_capacity: capacity,
        ..ScrapeCost::default()
    };
    let cpu_before = cpu_ticks(pid)?;
    for _ in 0..scrapes {
        interrupt::check()?;
        let started = Instant::now();
        let response = node
            .run(|| scrape::get(METRICS_ADDR, "/metrics"))?
            .map_err(io_context("scraping the agent's metrics"))?;
        cost.ms.push(started.elapsed().as_secs_f64() * 1e3);
        if response.status != 200 {
            return Err(BenchError::Check(format!(
                "GET /metrics: status {}",
                response.status
            )));
        }
        cost.bytes = response.body.len();
        let metrics = Metrics(response.body);
        cost.reported_entries = metrics
            .value("lbagent_conntrack_entries", &[])
            .ok_or_else(|| BenchError::Check("no lbagent_conntrack_entries".into()))?;
    }
    let ticks = cpu_ticks(pid)?.saturating_sub(cpu_before);
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    cost.cpu_ms_per_scrape = ticks as f64 * 1e3 / hz / f64::from(scrapes.max(1));
    Ok(cost)
}

/// User plus system CPU time of `pid`, in clock ticks (`/proc/<pid>/stat` fields 14 and 15).
fn cpu_ticks(pid: u32) -> Result<u64> {
    let path = format!("/proc/{pid}/stat");
    let stat = fs::read_to_string(&path).map_err(io_context(format!("reading {path}")))?;
    // "pid (comm) state ppid ...": fields after the comm's ')' start with field 3.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    let field = |i: usize| fields.get(i).and_then(|f| f.parse::<u64>().ok());
    field(11)
        .zip(field(12))
        .map(|(user, system)| user + system)
        .ok_or_else(|| BenchError::Check(format!("no CPU times in {path}")))
}
