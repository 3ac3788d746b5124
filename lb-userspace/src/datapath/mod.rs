//! The loaded eBPF data path: programs, their attachments and typed access to the maps.

mod batch;
mod dry_run;
mod error;
mod kernel_log;
pub mod link_pin;
mod map_layouts;
mod maps;
mod pinned_links;
mod sock_links;

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use aya::programs::links::FdLink;
use aya::programs::tc::SchedClassifierLink;
use aya::programs::xdp::XdpLink;
use aya::programs::{tc, CgroupSockAddr, Program, SchedClassifier, TcAttachType, Xdp, XdpMode};
use aya::util::KernelVersion;
use aya::{Ebpf, EbpfLoader};
use lb_common::maps::{self as registry, ipv6_slot};
use lb_common::program_names;
use tracing::{debug, info, warn};

use crate::error::Chain;
pub use dry_run::{DryRun, DryRunResult, TraceHook};
pub use error::DatapathError;
pub use kernel_log::{KernelLog, KernelLogError, KernelLogLevel};
pub use lb_common::capacity::{Capacities, CapacityRangeError, MAX_ENTRIES};
use link_pin::Hook;
pub use maps::DatapathMaps;
pub use sock_links::is_cgroup2;

/// The eBPF object built by `cargo xtask build-ebpf`, embedded by `build.rs`.
static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/lb-ebpf.o"));

/// The loaded programs and maps. Dropping it detaches every attachment it made that is not
/// pinned and removes the pins made by [`Datapath::pin_maps`].
pub struct Datapath {
    ebpf: Ebpf,
    maps: DatapathMaps,
    pinned_in: Option<PathBuf>,
    /// Set by [`Datapath::load_pinned`]: attachments are pinned here and outlive the agent.
    links_dir: Option<PathBuf>,
}

impl Datapath {
    /// Loads the embedded object's maps (sized by `capacities`, which must pass
    /// [`Capacities::check`]) and programs into the kernel, without attaching or pinning
    /// anything, and with the programs' log lines off.
    pub fn load(capacities: &Capacities) -> Result<Datapath, DatapathError> {
        capacities.check()?;
        Self::load_with(
            capacities,
            &mut EbpfLoader::new(),
            None,
            KernelLogLevel::OFF,
        )
    }

    /// Loads the object for an agent that survives restarts: maps pinned in `maps_dir` by an
    /// earlier agent are reused with their entries (conntrack, affinity, services), missing
    /// ones are created and pinned there, and a pinned map whose layout differs from this
    /// build's is replaced (logged). Attachments are pinned in `links_dir` and, where an earlier
    /// agent pinned one, the new program replaces the old one in that link atomically. Nothing
    /// is unpinned on drop: the data path keeps working while no agent runs. The programs
    /// write log lines up to `kernel_log` ([`Datapath::kernel_log`] reads them).
    pub fn load_pinned(
        capacities: &Capacities,
        maps_dir: &Path,
        links_dir: &Path,
        kernel_log: KernelLogLevel,
    ) -> Result<Datapath, DatapathError> {
        // Checked before any pin is replaced to fit sizes that cannot be loaded.
        capacities.check()?;
        pinned_links::remove_vanished(links_dir);
        let mut loader = EbpfLoader::new();
        for (name, layout) in map_layouts::expected(capacities) {
            let path = maps_dir.join(name);
            map_layouts::drop_incompatible_pin(name, &path, &layout);
            loader.map_pin_path(name, path);
        }
        let links_dir = Some(links_dir.to_path_buf());
        Self::load_with(capacities, &mut loader, links_dir, kernel_log)
    }

    fn load_with(
        capacities: &Capacities,
        loader: &mut EbpfLoader<'_>,
        links_dir: Option<PathBuf>,
        kernel_log: KernelLogLevel,
    ) -> Result<Datapath, DatapathError> {
        for spec in registry::ALL {
            if spec.entries.capacity().is_some() {
                loader.map_max_entries(spec.name, spec.entries.with(capacities));
            }
        }
        let mut ebpf = loader
            .override_global(lb_common::event::LEVEL_GLOBAL, kernel_log.global(), true)
            .load(EBPF_OBJECT)
            .map_err(|e| {
                DatapathError::or_permission_denied("loading the eBPF maps", e, DatapathError::Load)
            })?;
        for name in [
            program_names::TC_INGRESS,
            program_names::TC_EGRESS,
            program_names::TC_XDP_HANDOFF,
            program_names::TC_INGRESS6,
            program_names::TC_EGRESS6,
            program_names::TC_ICMP6_INGRESS,
            program_names::TC_ICMP6_EGRESS,
        ] {
            load_program::<SchedClassifier>(&mut ebpf, name, |p| p.load())?;
        }
        for name in [
            program_names::XDP_INGRESS,
            program_names::XDP_INGRESS6,
            program_names::XDP_ICMP6,
        ] {
            load_program::<Xdp>(&mut ebpf, name, |p| p.load())?;
        }
        for (_, name) in sock_links::PROGRAMS {
            load_program::<CgroupSockAddr>(&mut ebpf, name, |p| p.load())?;
        }
        let mut maps = DatapathMaps::take_from(&mut ebpf)?;
        set_ipv6_programs(&ebpf, &mut maps)?;
        Ok(Datapath {
            ebpf,
            maps,
            pinned_in: None,
            links_dir,
        })
    }

    /// Attaches the TC programs to a pod-facing interface: egress (replies the node sends to
    /// the pod), then ingress, each after any programs already there. Uses TCX links on
    /// kernels >= 6.6 and netlink filters (adding the clsact qdisc) before that; either way
    /// other programs' filters are left in place. After [`Datapath::load_pinned`] a TCX link
    /// is pinned, and one pinned earlier gets the new program instead.
    pub fn attach_tc(&mut self, iface: &str) -> Result<(), DatapathError> {
        self.attach_classifier(iface, Classifier::Egress)?;
        self.attach_classifier(iface, Classifier::Ingress)
    }

    /// Attaches only the TC egress program, for the external interface (whose ingress has the
    /// XDP program): replies the node sends to outside clients; as [`Datapath::attach_tc`].
    pub fn attach_tc_egress(&mut self, iface: &str) -> Result<(), DatapathError> {
        self.attach_classifier(iface, Classifier::Egress)
    }

    /// Attaches the handoff program (the redirect reply path's second half for XDP) to the XDP
    /// interface `iface`'s ingress, as [`Datapath::attach_tc`] attaches the ingress program
    /// (and pinned under its name: the XDP interface never has that program).
    pub fn attach_xdp_handoff(&mut self, iface: &str) -> Result<(), DatapathError> {
        self.attach_classifier(iface, Classifier::XdpHandoff)
    }

    fn attach_classifier(
        &mut self,
        iface: &str,
        classifier: Classifier,
    ) -> Result<(), DatapathError> {
        // Ingress keeps the log lines of agents that attached nothing else.
        let (name, hook, direction, side, pinned) = match classifier {
            Classifier::Egress => (
                program_names::TC_EGRESS,
                Hook::TcEgress,
                TcAttachType::Egress,
                "egress",
                "tcx egress link",
            ),
            Classifier::Ingress => (
                program_names::TC_INGRESS,
                Hook::Tc,
                TcAttachType::Ingress,
                "ingress",
                "tcx link",
            ),
            Classifier::XdpHandoff => (
                program_names::TC_XDP_HANDOFF,
                Hook::Tc,
                TcAttachType::Ingress,
                "ingress",
                "tcx link",
            ),
        };
        let tcx = KernelVersion::current().is_ok_and(|v| v >= KernelVersion::new(6, 6, 0));
        let pin = self
            .links_dir
            .as_deref()
            .filter(|_| tcx)
            .map(|dir| pinned_links::pin_path(dir, iface, hook))
            .transpose()?;
        let program: &mut SchedClassifier = program_mut(&mut self.ebpf, name)?;
        let replace = |link: SchedClassifierLink| program.attach_to_link(link);
        if pin
            .as_deref()
            .is_some_and(|pin| pinned_links::reuse(pin, replace))
        {
            info!("replaced the program in the pinned {pinned} of {iface} with {name}");
            return Ok(());
        }
        if !tcx {
            // Fails harmlessly when the qdisc exists; attach reports any real problem.
            if let Err(e) = tc::qdisc_add_clsact(iface) {
                debug!("adding clsact qdisc to {iface}: {}", Chain(&e));
            }
        }
        let id = program
            .attach(iface, direction)
            .map_err(|e| attach_error(name, iface, e))?;
        if let Some(pin) = &pin {
            let link = program
                .take_link(id)
                .map_err(|e| attach_error(name, iface, e))?;
            match FdLink::try_from(link) {
                Ok(link) => pinned_links::pin(link, pin)?,
                Err(e) => warn!("the tc attachment on {iface} is not a bpf_link, not pinned: {e}"),
            }
        }
        let how = if tcx { "tcx link" } else { "netlink filter" };
        info!("attached {name} to {iface} {side} ({how})");
        Ok(())
    }

    /// Removes the pin of the handoff program's link on the XDP interface `iface`, which
    /// detaches it (an agent on the kernel reply path). Does nothing unless loaded by
    /// [`Datapath::load_pinned`].
    pub fn unpin_xdp_handoff(&mut self, iface: &str) {
        if let Some(dir) = &self.links_dir {
            if let Ok(pin) = pinned_links::pin_path(dir, iface, Hook::Tc) {
                pinned_links::remove(&pin);
            }
        }
    }

    /// Removes the pins of `iface`'s TC links, for an interface that vanished (which detached
    /// the links). Does nothing unless loaded by [`Datapath::load_pinned`].
    pub fn unpin_tc(&mut self, iface: &str) {
        let Some(dir) = &self.links_dir else {
            return;
        };
        for hook in [Hook::Tc, Hook::TcEgress] {
            // A name Linux refuses was never attached, so it has no pin.
            if let Ok(pin) = pinned_links::pin_path(dir, iface, hook) {
                pinned_links::remove(&pin);
            }
        }
    }

    /// Attaches the XDP program to `iface` in driver mode, or in generic (SKB) mode when the
    /// driver has no native XDP. After [`Datapath::load_pinned`] the link is pinned, and one
    /// pinned earlier gets the new program instead.
    pub fn attach_xdp(&mut self, iface: &str) -> Result<(), DatapathError> {
        let name = program_names::XDP_INGRESS;
        let pin = self
            .links_dir
            .as_deref()
            .map(|dir| pinned_links::pin_path(dir, iface, Hook::Xdp))
            .transpose()?;
        let program: &mut Xdp = program_mut(&mut self.ebpf, name)?;
        let replace = |link: XdpLink| program.attach_to_link(link);
        if pin
            .as_deref()
            .is_some_and(|pin| pinned_links::reuse(pin, replace))
        {
            info!("replaced the program in the pinned xdp link of {iface} with {name}");
            return Ok(());
        }
        let id = match program.attach(iface, XdpMode::Driver) {
            Ok(id) => {
                info!("attached {name} to {iface} (driver mode)");
                id
            }
            Err(native) => {
                if crate::error::is_permission_denied(&native) {
                    return Err(attach_error(name, iface, native));
                }
                let id = program
                    .attach(iface, XdpMode::Skb)
                    .map_err(|e| attach_error(name, iface, e))?;
                info!(
                    "attached {name} to {iface} in generic (SKB) mode: driver mode failed: {}",
                    Chain(&native)
                );
                id
            }
        };
        if let Some(pin) = &pin {
            let link = program
                .take_link(id)
                .map_err(|e| attach_error(name, iface, e))?;
            match FdLink::try_from(link) {
                Ok(link) => pinned_links::pin(link, pin)?,
                // A netlink attachment (kernel < 5.9) stays attached when the agent exits.
                Err(e) => debug!("xdp on {iface} is not a bpf_link: {e}"),
            }
        }
        Ok(())
    }

    /// Attaches the socket programs (connect4, sendmsg4, recvmsg4, getpeername4) to the cgroup
    /// v2 directory `cgroup`, after any programs already there, so every socket of a process
    /// in that cgroup's subtree is translated. After [`Datapath::load_pinned`] the links are
    /// pinned, and links pinned earlier on the same cgroup get the new programs instead;
    /// otherwise they are detached when the `Datapath` is dropped.
    pub fn attach_sockets(&mut self, cgroup: &Path) -> Result<(), DatapathError> {
        let (dir, cgroup_id) = sock_links::open_cgroup(cgroup)?;
        for (hook, name) in sock_links::PROGRAMS {
            let pin = self
                .links_dir
                .as_deref()
                .map(|dir| sock_links::pin_path(dir, hook));
            let program: &mut CgroupSockAddr = program_mut(&mut self.ebpf, name)?;
            let Some(pin) = pin else {
                sock_links::attach(program, name, (&dir, cgroup), None)?;
                continue;
            };
            if sock_links::reuse(&pin, cgroup_id, program) {
                info!(
                    "replaced the program in the pinned {hook} link of cgroup {} with {name}",
                    cgroup.display()
                );
                continue;
            }
            sock_links::attach(program, name, (&dir, cgroup), Some(&pin))?;
            info!("attached {name} to cgroup {} ({hook})", cgroup.display());
        }
        Ok(())
    }

    /// Removes the pinned links of the socket programs in `links_dir` (an agent started with
    /// socket-level translation off), which detaches them; the removed pins.
    pub fn remove_socket_links(links_dir: &Path) -> Vec<PathBuf> {
        sock_links::remove_all(links_dir)
    }

    /// Pins every map as `<dir>/<map name>` so `lb-agent inspect` (or `bpftool`) can read
    /// them. `dir` must exist on a bpffs. Stale pins of the same names are replaced; the pins
    /// are removed when the `Datapath` is dropped.
    pub fn pin_maps(&mut self, dir: &Path) -> Result<(), DatapathError> {
        let mut stale = Vec::new();
        for (name, _) in self.maps.iter() {
            let path = dir.join(name);
            match fs::remove_file(&path) {
                Ok(()) => stale.push(name),
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => debug!("removing {}: {e}", path.display()),
            }
        }
        if !stale.is_empty() {
            warn!(
                "replaced stale pins in {} left by an earlier run: {}",
                dir.display(),
                stale.join(", ")
            );
        }
        self.pinned_in = Some(dir.to_path_buf());
        self.maps.pin(dir)
    }

    /// The TC program, e.g. for `aya::programs::TestRun`.
    pub fn tc_program(&self) -> &SchedClassifier {
        program_ref(&self.ebpf, program_names::TC_INGRESS)
    }

    /// The TC egress program, e.g. for `aya::programs::TestRun`.
    pub fn tc_egress_program(&self) -> &SchedClassifier {
        program_ref(&self.ebpf, program_names::TC_EGRESS)
    }

    /// The XDP program, e.g. for `aya::programs::TestRun`.
    pub fn xdp_program(&self) -> &Xdp {
        program_ref(&self.ebpf, program_names::XDP_INGRESS)
    }

    /// Typed access to the maps; writes go through [`crate::reconciler::MapWriter`].
    pub fn maps(&mut self) -> &mut DatapathMaps {
        &mut self.maps
    }
}

impl Drop for Datapath {
    fn drop(&mut self) {
        if let Some(dir) = &self.pinned_in {
            for (name, _) in self.maps.iter() {
                let path = dir.join(name);
                if let Err(e) = fs::remove_file(&path) {
                    warn!("removing pin {} failed: {e}", path.display());
                }
            }
        }
    }
}

/// Looks a program up by name and type.
/// The TC programs [`Datapath::attach_classifier`] attaches.
#[derive(Clone, Copy)]
enum Classifier {
    Ingress,
    Egress,
    XdpHandoff,
}

fn program_mut<'a, P>(ebpf: &'a mut Ebpf, name: &'static str) -> Result<&'a mut P, DatapathError>
where
    &'a mut P: TryFrom<&'a mut Program>,
{
    ebpf.program_mut(name)
        .and_then(|p| p.try_into().ok())
        .ok_or(DatapathError::MissingProgram(name))
}

/// A program [`Datapath::load`] has checked to exist with this type.
fn program_ref<'a, P>(ebpf: &'a Ebpf, name: &'static str) -> &'a P
where
    &'a P: TryFrom<&'a Program>,
{
    ebpf.program(name)
        .and_then(|p| p.try_into().ok())
        .unwrap_or_else(|| unreachable!("Datapath::load checked program {name}"))
}

fn load_program<P>(
    ebpf: &mut Ebpf,
    name: &'static str,
    load: impl FnOnce(&mut P) -> Result<(), aya::programs::ProgramError>,
) -> Result<(), DatapathError>
where
    for<'a> &'a mut P: TryFrom<&'a mut Program>,
{
    load(program_mut(ebpf, name)?).map_err(|source| {
        DatapathError::or_permission_denied(format!("loading program {name}"), source, |source| {
            DatapathError::LoadProgram {
                program: name,
                source,
            }
        })
    })
}

/// Puts the IPv6 programs in the program arrays their IPv4 twins tail-call, before any of
/// them is attached (an adopted array gets this build's programs at once).
fn set_ipv6_programs(ebpf: &Ebpf, maps: &mut DatapathMaps) -> Result<(), DatapathError> {
    use program_names::{TC_EGRESS6, TC_ICMP6_EGRESS, TC_ICMP6_INGRESS, TC_INGRESS6};
    use program_names::{XDP_ICMP6, XDP_INGRESS6};
    let tc = [
        (ipv6_slot::TC_INGRESS, TC_INGRESS6),
        (ipv6_slot::TC_EGRESS, TC_EGRESS6),
        (ipv6_slot::TC_INGRESS_ICMP, TC_ICMP6_INGRESS),
        (ipv6_slot::TC_EGRESS_ICMP, TC_ICMP6_EGRESS),
    ];
    for (slot, program) in tc {
        let fd = program_ref::<SchedClassifier>(ebpf, program).fd();
        let fd = fd.map_err(|source| DatapathError::LoadProgram { program, source })?;
        maps.set_program(registry::TC_IPV6, slot, fd)?;
    }
    for (slot, program) in [
        (ipv6_slot::XDP, XDP_INGRESS6),
        (ipv6_slot::XDP_ICMP, XDP_ICMP6),
    ] {
        let fd = program_ref::<Xdp>(ebpf, program).fd();
        let fd = fd.map_err(|source| DatapathError::LoadProgram { program, source })?;
        maps.set_program(registry::XDP_IPV6, slot, fd)?;
    }
    Ok(())
}

fn attach_error(
    program: &'static str,
    iface: &str,
    source: aya::programs::ProgramError,
) -> DatapathError {
    DatapathError::or_permission_denied(
        format!("attaching {program} to {iface}"),
        source,
        |source| DatapathError::Attach {
            program,
            iface: iface.to_string(),
            source,
        },
    )
}
