//! A second load of the programs for `lb-agent trace`: the same object with its `DRY_RUN`
//! global set, sharing an agent's pinned maps, so a packet run through it with
//! BPF_PROG_TEST_RUN sees the live state and changes none of it. What the run would have
//! written lands in the copy's own `LB_TRACE` maps.
//! Each run starts from cleared records, so one copy traces packet after packet.

use std::path::Path;

use aya::maps::ProgramArray;
use aya::maps::{MapError, PerCpuArray, PerCpuValues};
use aya::programs::{ProgramError, SchedClassifier, TestRunOptions, Xdp};
use aya::Pod;
use aya::{Ebpf, EbpfLoader, TestRun};
use lb_common::maps::{self as registry, ipv6_slot, MapKind};
use lb_common::trace::{DRY_RUN_GLOBAL, TRACE_MAP, TRACE_STATS_MAP};
use lb_common::{program_names, Counter, TraceRecord};

use super::link_pin::{Hook, InvalidIfaceName};
use super::{load_program, pinned_links, program_ref, DatapathError, DatapathMaps, EBPF_OBJECT};
use crate::reconciler::MapWriteError;

/// Which entry point a traced packet goes through.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TraceHook {
    /// TC ingress, as on a pod-facing interface.
    Tc,
    /// XDP, as on the external interface.
    Xdp,
}

impl TraceHook {
    /// The ingress hook the agent attached to `iface`, told by the link it pinned in
    /// `links_dir`: XDP (the external interface, whose TC link is the XDP hand-off) or else
    /// TC; `None` without a pin (none there, or a TC attachment through netlink, before
    /// kernel 6.6).
    pub fn attached(links_dir: &Path, iface: &str) -> Result<Option<Self>, InvalidIfaceName> {
        for (pinned, hook) in [(Hook::Xdp, TraceHook::Xdp), (Hook::Tc, TraceHook::Tc)] {
            let pin = pinned_links::pin_path(links_dir, iface, pinned)?;
            if std::fs::symlink_metadata(pin).is_ok() {
                return Ok(Some(hook));
            }
        }
        Ok(None)
    }
}

/// The context a run starts with, as bytes, when the packet arrives on the interface
/// `ifindex` (else on the run's loopback device): for TC, with an interface, a prefix of
/// `struct __sk_buff` up to `ifindex` (the kernel zeroes the rest; of these fields
/// BPF_PROG_TEST_RUN takes only `ingress_ifindex` and `ifindex`, and runs the program on that
/// device); for XDP always all of `struct xdp_md` (`data_end` must be the frame's length;
/// `ingress_ifindex`, if not 0, picks the device's first receive queue), so that the context
/// the run hands back tells where the frame starts after the metadata the program added.
fn run_ctx(hook: TraceHook, ifindex: Option<u32>, frame_len: usize) -> Option<Vec<u8>> {
    let words = match (hook, ifindex) {
        (TraceHook::Tc, None) => return None,
        // len, pkt_type, mark, queue_mapping, protocol, vlan_present, vlan_tci, vlan_proto,
        // priority, ingress_ifindex, ifindex.
        (TraceHook::Tc, Some(ifindex)) => vec![0, 0, 0, 0, 0, 0, 0, 0, 0, ifindex, ifindex],
        // data, data_end, data_meta, ingress_ifindex, rx_queue_index, egress_ifindex.
        (TraceHook::Xdp, ifindex) => vec![0, frame_len as u32, 0, ifindex.unwrap_or(0), 0, 0],
    };
    Some(words.iter().flat_map(|w| w.to_ne_bytes()).collect())
}

/// `sizeof(struct xdp_md)`.
const XDP_MD_LEN: usize = 24;

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
        // The program arrays stay the copy's own: the pinned ones hold the agent's IPv6
        // programs, which are no dry run. The copy's hold its own.
        let shared = registry::ALL
            .iter()
            .filter(|spec| spec.kind != MapKind::ProgramArray);
        for spec in shared {
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
        let (tc, xdp) = (registry::TC_IPV6.name, registry::XDP_IPV6.name);
        for (array, slot, program) in [
            (tc, ipv6_slot::TC_INGRESS, program_names::TC_INGRESS6),
            (
                tc,
                ipv6_slot::TC_INGRESS_ICMP,
                program_names::TC_ICMP6_INGRESS,
            ),
            (xdp, ipv6_slot::XDP, program_names::XDP_INGRESS6),
            (xdp, ipv6_slot::XDP_ICMP, program_names::XDP_ICMP6),
        ] {
            set_ipv6_program(&mut ebpf, array, slot, program)?;
        }
        Ok(Self { ebpf })
    }

    /// Runs `frame` through `hook`'s program once, as arrived on the interface `ifindex` (in
    /// the caller's network namespace) if given, else on its loopback device.
    pub fn run(
        &mut self,
        hook: TraceHook,
        ifindex: Option<u32>,
        frame: &[u8],
    ) -> Result<DryRunResult, DatapathError> {
        // What an earlier run of this copy recorded.
        self.clear::<TraceRecord>(TRACE_MAP, 1)?;
        self.clear::<u64>(TRACE_STATS_MAP, Counter::COUNT)?;
        let mut out = vec![0u8; frame.len() + 256];
        let ctx = run_ctx(hook, ifindex, frame.len());
        let mut xdp_md = [0u8; XDP_MD_LEN];
        let options = TestRunOptions {
            data_in: Some(frame),
            data_out: Some(&mut out),
            ctx_in: ctx.as_deref(),
            ctx_out: (hook == TraceHook::Xdp).then_some(&mut xdp_md[..]),
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
        // XDP's output starts with the metadata (the reply path's hand-off mark); `data` of
        // the `xdp_md` handed back is its length.
        let metadata = u32::from_ne_bytes([xdp_md[0], xdp_md[1], xdp_md[2], xdp_md[3]]);
        out.drain(..(metadata as usize).min(out.len()));
        Ok(DryRunResult {
            return_value: result.return_value,
            frame: out,
            record: self.record()?,
            counters: self.counters()?,
        })
    }

    /// Zeroes the first `len` elements of the per-CPU array `name`.
    fn clear<T: Pod + Default>(
        &mut self,
        name: &'static str,
        len: u32,
    ) -> Result<(), DatapathError> {
        let failed = |source| DatapathError::Clear { map: name, source };
        let cpus = aya::util::nr_cpus().map_err(|(_, e)| failed(MapError::IoError(e)))?;
        let map = self
            .ebpf
            .map_mut(name)
            .ok_or(DatapathError::MissingMap(name))?;
        let mut array = PerCpuArray::<_, T>::try_from(map).map_err(failed)?;
        for index in 0..len {
            let zeros = PerCpuValues::try_from(vec![T::default(); cpus])
                .map_err(|e| failed(MapError::IoError(e)))?;
            array.set(index, zeros, 0).map_err(failed)?;
        }
        Ok(())
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

/// Loads the copy's IPv6 program `program` and puts it in slot `slot` of the copy's own
/// program array `array`, where its IPv4 entry program tail-calls it.
fn set_ipv6_program(
    ebpf: &mut Ebpf,
    array: &'static str,
    slot: u32,
    program: &'static str,
) -> Result<(), DatapathError> {
    let fd = match program {
        program_names::XDP_INGRESS6 | program_names::XDP_ICMP6 => {
            load_program::<Xdp>(ebpf, program, |p| p.load())?;
            program_ref::<Xdp>(ebpf, program).fd()
        }
        _ => {
            load_program::<SchedClassifier>(ebpf, program, |p| p.load())?;
            program_ref::<SchedClassifier>(ebpf, program).fd()
        }
    }
    .map_err(|source: ProgramError| DatapathError::LoadProgram { program, source })?
    .try_clone()
    .map_err(|e| DatapathError::LoadProgram {
        program,
        source: ProgramError::IOError(e),
    })?;
    let map = ebpf
        .map_mut(array)
        .ok_or(DatapathError::MissingMap(array))?;
    ProgramArray::try_from(map)
        .and_then(|mut programs| programs.set(slot, &fd, 0))
        .map_err(|source| {
            DatapathError::MapWrite(MapWriteError {
                map: array,
                op: "update",
                source,
            })
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn word(ctx: &[u8], offset: usize) -> u32 {
        u32::from_ne_bytes(ctx[offset..offset + 4].try_into().unwrap())
    }

    #[test]
    fn the_arrival_interface_is_where_the_kernel_reads_it() {
        // `struct __sk_buff`: ingress_ifindex at 36, ifindex at 40; nothing else set.
        let tc = run_ctx(TraceHook::Tc, Some(7), 60).unwrap();
        assert_eq!(tc.len(), 44);
        assert_eq!((word(&tc, 36), word(&tc, 40)), (7, 7));
        assert!(tc[..36].iter().all(|b| *b == 0));
        assert_eq!(run_ctx(TraceHook::Tc, None, 60), None);
        // `struct xdp_md`: data_end at 4 (the frame's length), ingress_ifindex at 12.
        let xdp = run_ctx(TraceHook::Xdp, Some(7), 60).unwrap();
        assert_eq!(xdp.len(), XDP_MD_LEN);
        assert_eq!((word(&xdp, 0), word(&xdp, 4), word(&xdp, 12)), (0, 60, 7));
        let xdp = run_ctx(TraceHook::Xdp, None, 60).unwrap();
        assert_eq!((word(&xdp, 4), word(&xdp, 12)), (60, 0));
    }
}
