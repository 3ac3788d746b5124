//! Auto-attach mode (no `--iface`): the TC program goes onto every pod-facing interface as it
//! appears, found by name pattern, and the state of interfaces that vanish is dropped.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use tracing::{info, warn};

use super::accept_local;
use crate::datapath::Datapath;
use crate::error::Chain;
use crate::links::{IfacePatterns, Link, LinkEvent, LinkWatcher, NetlinkError};

/// The watch and the interfaces attached through it.
pub(super) struct AutoAttach {
    patterns: IfacePatterns,
    /// The external interface (XDP's), never treated as pod-facing.
    external: Option<String>,
    /// Where `accept_local` is written (`--proc-sys-net-dir`), with the kernel reply path.
    accept_local_dir: Option<PathBuf>,
    watcher: LinkWatcher,
    /// Interfaces with the TC program, by index.
    attached: BTreeMap<u32, String>,
    /// Interfaces whose attachment failed, or that match but carry no Ethernet frames, by
    /// index: not tried (nor logged) again until they are re-created.
    failed: BTreeSet<u32>,
}

impl AutoAttach {
    /// Starts watching; the existing interfaces arrive as the first events.
    pub(super) fn start(
        patterns: IfacePatterns,
        external: Option<String>,
        accept_local_dir: Option<PathBuf>,
    ) -> Result<Self, NetlinkError> {
        info!("auto-attach: TC on every interface matching {patterns}");
        Ok(Self {
            patterns,
            external,
            accept_local_dir,
            watcher: LinkWatcher::start()?,
            attached: BTreeMap::new(),
            failed: BTreeSet::new(),
        })
    }

    /// The next change of the node's interfaces.
    pub(super) async fn next(&mut self) -> Result<LinkEvent, NetlinkError> {
        self.watcher.next().await
    }

    /// Attaches to a new pod-facing interface, or forgets a vanished one.
    pub(super) fn handle(&mut self, event: LinkEvent, datapath: &mut Datapath) {
        match event {
            LinkEvent::Present(link) => self.present(link, datapath),
            LinkEvent::Gone(link) => {
                self.failed.remove(&link.index);
                if let Some(name) = self.attached.remove(&link.index) {
                    datapath.unpin_tc(&name);
                    info!("interface {name} is gone: dropped its attachment");
                }
            }
            LinkEvent::DumpDone => {}
        }
    }

    fn present(&mut self, link: Link, datapath: &mut Datapath) {
        match self.attached.get(&link.index) {
            Some(name) if *name == link.name => return,
            // Renamed: its pin carries the old name.
            Some(old) => {
                datapath.unpin_tc(old);
                self.attached.remove(&link.index);
            }
            None => {}
        }
        if !self.is_pod_facing(&link) || self.failed.contains(&link.index) {
            return;
        }
        if !link.is_ethernet {
            info!(
                "auto-attach: skipping {}: it carries no Ethernet frames (a layer-3 device such \
                 as an IPIP or WireGuard tunnel), and the TC program reads Ethernet frames",
                link.name
            );
            self.failed.insert(link.index);
            return;
        }
        match datapath.attach_tc(&link.name) {
            Ok(()) => {
                let ifaces = std::slice::from_ref(&link.name);
                let why = accept_local::POD_FACING;
                if let Some(dir) = &self.accept_local_dir {
                    if let Err(e) = accept_local::enable(dir, ifaces, why) {
                        warn!("{e}");
                    }
                }
                self.attached.insert(link.index, link.name);
            }
            // Typically the interface vanished right after it appeared.
            Err(e) => {
                warn!("auto-attach to {} failed: {}", link.name, Chain(&e));
                self.failed.insert(link.index);
            }
        }
    }

    fn is_pod_facing(&self, link: &Link) -> bool {
        !link.is_bridge
            && link.name != "lo"
            && self.external.as_deref() != Some(link.name.as_str())
            && self.patterns.matches(&link.name)
    }
}
