//! A second load of the programs for `lb-agent trace`: the same object with its `DRY_RUN`
//! global set, sharing an agent's pinned maps, so a packet run through it with
//! BPF_PROG_TEST_RUN sees the live state and changes none of it. What the run would have
//! written lands in the copy's own `LB_TRACE` maps.

use std::path::Path;

use aya::maps::PerCpuArray;
use aya::programs::{SchedClassifier, TestRunOptions, Xdp};
use aya::{Ebpf, EbpfLoader, TestRun};
use lb_common::maps as registry;
use lb_common::trace::{DRY_RUN_GLOBAL, TRACE_MAP, TRACE_STATS_MAP};
use lb_common::{program_names, Counter, TraceRecord};

use super::{load_program, program_ref, DatapathError, DatapathMaps, EBPF_OBJECT};

/// Which entry point a traced packet goes through.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TraceHook {
    /// TC ingress, as on a pod-facing interface.
    Tc,
    /// XDP, as on the external interface.
    Xdp,
}

/// What one dry run returned.
#[derive(Clone, Debug)]
pub struct DryRunResult {
    /// The program's return code.
    pub return_value: u32,
    /// The frame as the program left it.
    pub frame: Vec<u8>,
    /// What it would have written.
    pub record: TraceRecord,
    /// The node-wide counters it would have moved, and by how much.
    pub counters: Vec<(Counter, u64)>,
}

/// The dry-run copy of the programs.
pub struct DryRun {
    ebpf: Ebpf,
}

impl DryRun {
    /// Loads the object with `DRY_RUN` set, its shared maps taken from the pins in
    /// `maps_dir` (all must exist: nothing is created or pinned there).
    pub fn load(maps_dir: &Path) -> Result<Self, DatapathError> {
        // Checks that every pin exists with this build's layout.
        DatapathMaps::from_pins(maps_dir)?;
        let mut loader = EbpfLoader::new();
        for spec in registry::ALL {
            loader.map_pin_path(spec.name, maps_dir.join(spec.name));
        }
        let mut ebpf = loader
            .override_global(DRY_RUN_GLOBAL, &1u8, true)
            .load(EBPF_OBJECT)
            .map_err(|e| {
                DatapathError::or_permission_denied("loading the eBPF maps", e, DatapathError::Load)
            })?;
        load_program::<SchedClassifier>(&mut ebpf, program_names::TC_INGRESS, |p| p.load())?;
        load_program::<Xdp>(&mut ebpf, program_names::XDP_INGRESS, |p| p.load())?;
        Ok(Self { ebpf })
    }

    /// Runs `frame` through `hook`'s program once.
    pub fn run(&mut self, hook: TraceHook, frame: &[u8]) -> Result<DryRunResult, DatapathError> {
        let mut out = vec![0u8; frame.len() + 256];
        let options = TestRunOptions {
            data_in: Some(frame),
            data_out: Some(&mut out),
            ..TestRunOptions::default()
        };
        let (program, result) = match hook {
            TraceHook::Tc => (
                program_names::TC_INGRESS,
                program_ref::<SchedClassifier>(&self.ebpf, program_names::TC_INGRESS)
                    .test_run(options),
            ),
            TraceHook::Xdp => (
                program_names::XDP_INGRESS,
                program_ref::<Xdp>(&self.ebpf, program_names::XDP_INGRESS).test_run(options),
            ),
        };
        let result = result.map_err(|source| {
            DatapathError::or_permission_denied(
                format!("running program {program}"),
                source,
                |source| DatapathError::LoadProgram { program, source },
            )
        })?;
        out.truncate(result.data_size_out as usize);
        Ok(DryRunResult {
            return_value: result.return_value,
            frame: out,
            record: self.record()?,
            counters: self.counters()?,
        })
    }

    fn record(&self) -> Result<TraceRecord, DatapathError> {
        let read = |source| DatapathError::Read {
            map: TRACE_MAP,
            source,
        };
        let map = self
            .ebpf
            .map(TRACE_MAP)
            .ok_or(DatapathError::MissingMap(TRACE_MAP))?;
        let values = PerCpuArray::<_, TraceRecord>::try_from(map)
            .map_err(read)?
            .get(&0, 0)
            .map_err(read)?;
        // Only the CPU the run used wrote a record.
        Ok(values
            .iter()
            .copied()
            .find(|r| *r != TraceRecord::default())
            .unwrap_or_default())
    }

    fn counters(&self) -> Result<Vec<(Counter, u64)>, DatapathError> {
        let read = |source| DatapathError::Read {
            map: TRACE_STATS_MAP,
            source,
        };
        let map = self
            .ebpf
            .map(TRACE_STATS_MAP)
            .ok_or(DatapathError::MissingMap(TRACE_STATS_MAP))?;
        let array = PerCpuArray::<_, u64>::try_from(map).map_err(read)?;
        let mut moved = Vec::new();
        for counter in Counter::ALL {
            let sum: u64 = array.get(&(counter as u32), 0).map_err(read)?.iter().sum();
            if sum != 0 {
                moved.push((counter, sum));
            }
        }
        Ok(moved)
    }
}
