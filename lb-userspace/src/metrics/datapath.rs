//! Metrics read at scrape time: per-service and node-wide counters from the maps, and the
//! conntrack fill level the garbage collector's last walk counted (a scrape reads no conntrack
//! entry).

use std::fmt;
use std::path::Path;
use std::time::UNIX_EPOCH;

use lb_common::service::scope;
use lb_common::{Counter, ServiceStats};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use tracing::warn;

use super::conntrack_gc::LastWalk;
use super::sync::CountedServices;
use crate::datapath::{DatapathError, DatapathMaps};
use crate::error::Chain;
use crate::model::SocketDisplay;
use crate::reconciler::CountedService;

/// Reads the counter maps on every scrape (call the encoder from a blocking thread: one
/// lookup per counted service).
pub(super) struct DatapathCollector {
    maps: DatapathMaps,
    conntrack_capacity: u32,
    services: CountedServices,
    last_walk: LastWalk,
}

impl fmt::Debug for DatapathCollector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DatapathCollector")
            .field("conntrack_capacity", &self.conntrack_capacity)
            .finish_non_exhaustive()
    }
}

/// A per-service counter: metric name (before `_total`), help, and its field.
type ServiceCounter = (&'static str, &'static str, fn(&ServiceStats) -> u64);

const SERVICE_COUNTERS: [ServiceCounter; 5] = [
    (
        "lbagent_service_packets",
        "Packets translated for the service, both directions",
        |s| s.packets,
    ),
    (
        "lbagent_service_bytes",
        "Bytes (whole frames) translated for the service, both directions",
        |s| s.bytes,
    ),
    (
        "lbagent_service_new_flows",
        "New flows assigned a backend",
        |s| s.new_flows,
    ),
    (
        "lbagent_service_rejects",
        "New flows rejected with ICMP port unreachable for want of a backend",
        |s| s.rejects,
    ),
    (
        "lbagent_service_drops",
        "Packets dropped for the service (lbagent_drop_count_total says why)",
        |s| s.drops,
    ),
];

/// The node-wide counters that count dropped (or rejected) packets.
const DROP_REASONS: [Counter; 12] = [
    Counter::RejectNoBackend,
    Counter::DropNoBackend,
    Counter::DropBackendMissing,
    Counter::DropConntrackFull,
    Counter::DropRewriteFailed,
    Counter::DropSnatPortsExhausted,
    Counter::RejectUnexposedPort,
    Counter::DropUnexposedPort,
    Counter::DropSourceRange,
    Counter::DropRejectSuppressed,
    Counter::DropUnallocatedServiceIp,
    Counter::DropRejectSource,
];

impl DatapathCollector {
    /// A collector over the maps pinned in `pins`.
    pub(super) fn open(
        pins: &Path,
        conntrack_capacity: u32,
        services: CountedServices,
        last_walk: LastWalk,
    ) -> Result<Self, DatapathError> {
        let maps = DatapathMaps::from_pins(pins)?;
        Ok(Self {
            maps,
            conntrack_capacity,
            services,
            last_walk,
        })
    }

    fn encode_services(&self, encoder: &mut DescriptorEncoder) -> fmt::Result {
        let mut rows = Vec::new();
        for service in self.services.get() {
            match self.maps.service_stats(service.group_id) {
                Ok(stats) => rows.push((labels(&service), stats)),
                Err(e) => warn!("metrics: reading {}: {}", service.name, Chain(&e)),
            }
        }
        for (name, help, field) in SERVICE_COUNTERS {
            let mut family = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
            for (labels, stats) in &rows {
                ConstCounter::new(field(stats)).encode(family.encode_family(labels)?)?;
            }
        }
        Ok(())
    }

    fn encode_node_counters(&self, encoder: &mut DescriptorEncoder) -> fmt::Result {
        let counters = match self.maps.counters() {
            Ok(counters) => counters,
            Err(e) => {
                warn!("metrics: reading the node-wide counters: {}", Chain(&e));
                return Ok(());
            }
        };
        let mut family = encoder.encode_descriptor(
            "lbagent_datapath_packets",
            "Packets by what the data path did with them (counter names as in lb-agent inspect; \
             packets = every packet seen)",
            None,
            MetricType::Counter,
        )?;
        for (counter, value) in &counters {
            ConstCounter::new(*value)
                .encode(family.encode_family(&[("counter", counter.name())])?)?;
        }
        let mut family = encoder.encode_descriptor(
            "lbagent_drop_count",
            "Packets dropped or rejected by the data path, by reason",
            None,
            MetricType::Counter,
        )?;
        for (counter, value) in counters.iter().filter(|(c, _)| DROP_REASONS.contains(c)) {
            ConstCounter::new(*value)
                .encode(family.encode_family(&[("reason", counter.name())])?)?;
        }
        Ok(())
    }

    /// The entries the garbage collector's last walk kept (at most the capacity: a batched
    /// read of a changing map may see an entry twice) and when it started; neither before the
    /// first walk.
    fn encode_conntrack(&self, encoder: &mut DescriptorEncoder) -> fmt::Result {
        if let Some(kept) = self.last_walk.get() {
            let entries = kept.entries.min(self.conntrack_capacity as usize);
            ConstGauge::new(entries as i64).encode(encoder.encode_descriptor(
                "lbagent_conntrack_entries",
                "Conntrack entries (a flow has two: forward and reply) the garbage collector's \
                 last walk kept",
                None,
                MetricType::Gauge,
            )?)?;
            let at = kept.at.duration_since(UNIX_EPOCH).unwrap_or_default();
            ConstGauge::new(at.as_secs_f64()).encode(encoder.encode_descriptor(
                "lbagent_conntrack_entries_timestamp_seconds",
                "When the garbage collector walk that counted lbagent_conntrack_entries started (Unix \
                 time)",
                None,
                MetricType::Gauge,
            )?)?;
        }
        let capacity = ConstGauge::new(i64::from(self.conntrack_capacity));
        capacity.encode(encoder.encode_descriptor(
            "lbagent_conntrack_capacity",
            "Size of the conntrack map (least recently used entries are evicted when full)",
            None,
            MetricType::Gauge,
        )?)
    }
}

impl Collector for DatapathCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> fmt::Result {
        self.encode_services(&mut encoder)?;
        self.encode_node_counters(&mut encoder)?;
        self.encode_conntrack(&mut encoder)
    }
}

/// `service`, `frontend`, `protocol` and `scope` labels of a group id.
fn labels(service: &CountedService) -> [(&'static str, String); 4] {
    let scope = match service.scopes.as_slice() {
        [scope::EXTERNAL] => "external",
        [scope::INTERNAL] => "internal",
        _ => "all",
    };
    [
        ("service", service.name.to_string()),
        (
            "frontend",
            SocketDisplay(service.frontend.addr, service.frontend.port).to_string(),
        ),
        (
            "protocol",
            service.frontend.protocol.to_string().to_lowercase(),
        ),
        ("scope", scope.to_string()),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_drop_and_reject_counter_is_a_drop_reason() {
        for counter in Counter::ALL {
            let name = counter.name();
            assert_eq!(
                DROP_REASONS.contains(&counter),
                name.starts_with("drop_") || name.starts_with("reject_"),
                "{name}"
            );
        }
    }
}
