//! `lb-agent trace`: what a dry run of the programs (global `DRY_RUN` set) would have written
//! to the shared maps, recorded in its own per-CPU maps instead (`LB_TRACE`, and
//! `LB_TRACE_STATS` for the counters, indexed as `LB_STATS`).

/// Name of the global constant that turns the programs' map writes into records.
pub const DRY_RUN_GLOBAL: &str = "DRY_RUN";
/// The dry run's record, one element.
pub const TRACE_MAP: &str = "LB_TRACE";
/// The counters a dry run would have moved, indexed by `Counter`.
pub const TRACE_STATS_MAP: &str = "LB_TRACE_STATS";

/// What one dry run would have changed; ids are 0 for "none".
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TraceRecord {
    /// Slot group whose per-Service counters would have moved.
    pub group_id: u32,
    /// Backend of the conntrack entry the packet matched.
    pub conntrack_backend_id: u32,
    /// Backend of the first conntrack entry it would have created.
    pub new_backend_id: u32,
    /// Conntrack entries it would have created.
    pub new_entries: u32,
    /// Conntrack entries it would have removed.
    pub removed_entries: u32,
    pub _pad: u32,
}

const _: () = assert!(core::mem::size_of::<TraceRecord>() == 24);

#[cfg(feature = "user")]
// SAFETY: plain integers, any value is valid.
unsafe impl aya::Pod for TraceRecord {}

impl TraceRecord {
    /// Records a conntrack entry the run would have created.
    pub fn created(&mut self, value: &crate::CtValue) {
        if self.new_entries == 0 {
            self.new_backend_id = value.backend_id;
        }
        self.new_entries += 1;
    }
}
