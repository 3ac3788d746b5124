//! Workload 5: Kubernetes-mode sync latency: the time from an EndpointSlice change in the API
//! server to the agent's services map showing it.
//!
//! The real `lb-agent` watches the in-memory API server from the node namespace (the same
//! [`KubeCluster`] the end-to-end tests use). Each change alternates the slice of one Service
//! between two and three ready endpoints; the clock starts right before the API server
//! accepts the change and stops when the pinned services map shows the new backend count,
//! read in a tight loop (a map lookup is a few microseconds, far below what is measured).

use std::{
    net::Ipv4Addr,
    thread,
    time::{Duration, Instant},
};

use lb_common::{ipv4_mapped, service::scope, ServiceKey, IPPROTO_TCP};
use lb_userspace::DatapathMaps;

use crate::{
    apiserver::objects::service,
    bench::{
        error::{BenchError, Result},
        interrupt,
    },
    cluster::kube::{web_ports, KubeCluster, NAMESPACE},
};

/// The Service whose slice changes.
const VIP: Ipv4Addr = Ipv4Addr::new(198, 19, 0, 10);
/// How long one change may take to show before the run is declared failed.
const CHANGE_TIMEOUT: Duration = Duration::from_secs(10);
/// Pause between changes, so each one is measured on its own rather than batched.
pub const SETTLE: Duration = Duration::from_millis(20);

/// Latencies of `changes` EndpointSlice changes, in milliseconds.
pub fn run(changes: usize) -> Result<Vec<f64>> {
    crate::bench::progress(&format!("sync latency, {changes} EndpointSlice changes"));
    let cluster = KubeCluster::start(3)?;
    let api = cluster.api();
    api.create(&service(NAMESPACE, "web", VIP, web_ports()))?;
    api.create(&cluster.web_slice("web", &[0, 1, 2]))?;
    let maps = DatapathMaps::from_pins(&cluster.agent().options().bpffs_dir.join("maps"))?;
    let key = ServiceKey::new(ipv4_mapped(VIP.octets()), 80, IPPROTO_TCP, scope::INTERNAL);
    wait_for_count(&maps, &key, 3, Instant::now())?;

    let mut samples = Vec::with_capacity(changes);
    for i in 0..changes {
        interrupt::check()?;
        let backends: &[usize] = if i % 2 == 0 { &[0, 1] } else { &[0, 1, 2] };
        let slice = cluster.web_slice("web", backends);
        let started = Instant::now();
        api.replace(&slice)?;
        wait_for_count(&maps, &key, backends.len() as u32, started)?;
        samples.push(started.elapsed().as_secs_f64() * 1e3);
        thread::sleep(SETTLE);
    }
    Ok(samples)
}

/// Spins until the services map entry of `key` has `count` backends.
fn wait_for_count(
    maps: &DatapathMaps,
    key: &ServiceKey,
    count: u32,
    started: Instant,
) -> Result<()> {
    loop {
        if maps
            .services()?
            .iter()
            .any(|(k, v)| k == key && v.backend_count == count)
        {
            return Ok(());
        }
        if started.elapsed() > CHANGE_TIMEOUT {
            return Err(BenchError::Check(format!(
                "the agent did not program {count} backends within {CHANGE_TIMEOUT:?}"
            )));
        }
        thread::yield_now();
    }
}
