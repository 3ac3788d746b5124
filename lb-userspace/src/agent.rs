//! `lb-agent run`: load and attach the data path, then keep its maps in line with the
//! manifests directory until shutdown.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::time::MissedTickBehavior;
use tracing::{error, info};

use crate::bpffs;
use crate::datapath::{Capacities, Datapath, Maps};
use crate::error::{BpffsError, Chain, DatapathError};
use crate::manifests::ManifestDir;
use crate::model::DesiredState;
use crate::reconciler::Reconciler;

/// Default `--bpffs-dir`.
pub const DEFAULT_BPFFS_DIR: &str = "/sys/fs/bpf/lb-agent";

/// Settings of `lb-agent run`.
#[derive(Clone, Debug)]
pub struct RunConfig {
    pub manifests: PathBuf,
    /// Interfaces whose TC ingress gets the program.
    pub tc_ifaces: Vec<String>,
    /// Interface that gets the XDP program.
    pub xdp_iface: Option<String>,
    /// Maps are pinned under `<bpffs_dir>/maps/`.
    pub bpffs_dir: PathBuf,
    pub capacities: Capacities,
    /// How often the manifests directory is read.
    pub poll_interval: Duration,
}

/// Why the agent could not start.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("manifests directory {} does not exist or is not a directory", .0.display())]
    NoManifestsDir(PathBuf),
    #[error(transparent)]
    Bpffs(#[from] BpffsError),
    #[error(transparent)]
    Datapath(#[from] DatapathError),
}

/// Where the maps of an agent using `bpffs_dir` are pinned.
pub fn maps_dir(bpffs_dir: &Path) -> PathBuf {
    bpffs_dir.join("maps")
}

/// Runs until `shutdown` completes, then detaches the programs and removes the pins.
pub async fn run(config: RunConfig, shutdown: impl Future<Output = ()>) -> Result<(), AgentError> {
    if !config.manifests.is_dir() {
        return Err(AgentError::NoManifestsDir(config.manifests));
    }
    let pins = maps_dir(&config.bpffs_dir);
    bpffs::prepare_pin_dir(&pins)?;
    let result = serve(&config, &pins, shutdown).await;
    bpffs::remove_empty_dirs(&pins, &config.bpffs_dir);
    result
}

async fn serve(
    config: &RunConfig,
    pins: &Path,
    shutdown: impl Future<Output = ()>,
) -> Result<(), AgentError> {
    let mut datapath = Datapath::load(&config.capacities)?;
    for iface in &config.tc_ifaces {
        datapath.attach_tc(iface)?;
    }
    if let Some(iface) = &config.xdp_iface {
        datapath.attach_xdp(iface)?;
    }
    datapath.pin_maps(pins)?;
    info!("maps pinned under {}", pins.display());

    let mut sync = Sync::new(&config.manifests, &config.capacities);
    let mut ticker = tokio::time::interval(config.poll_interval);
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            _ = ticker.tick() => sync.step(datapath.maps()),
        }
    }
    info!("shutting down: detaching programs and removing pins");
    drop(datapath);
    Ok(())
}

/// Manifests -> maps, one poll at a time.
struct Sync {
    source: ManifestDir,
    reconciler: Reconciler,
    /// A desired state not yet fully written (retried on every poll).
    pending: Option<DesiredState>,
    /// The last directory read error, to log it once rather than on every poll.
    dir_error: Option<String>,
}

impl Sync {
    fn new(dir: &Path, capacities: &Capacities) -> Self {
        Self {
            source: ManifestDir::new(dir),
            reconciler: Reconciler::new(capacities),
            pending: None,
            dir_error: None,
        }
    }

    fn step(&mut self, maps: &mut Maps) {
        match self.source.poll() {
            Ok(Some(update)) => {
                self.dir_error = None;
                for e in &update.errors {
                    error!("{e}");
                }
                info!(
                    "manifests changed: {} services, {} endpoint slices",
                    update.services, update.endpoint_slices
                );
                self.pending = Some(update.state);
            }
            Ok(None) => {}
            Err(e) => {
                let message = Chain(&e).to_string();
                if self.dir_error.as_ref() != Some(&message) {
                    error!("{message}; keeping what is programmed");
                    self.dir_error = Some(message);
                }
            }
        }
        let Some(desired) = &self.pending else { return };
        match self.reconciler.apply(desired, maps) {
            Ok(summary) => {
                for rejected in &summary.rejected {
                    error!("{rejected}");
                }
                if summary.wrote_anything() {
                    info!(
                        "reconcile applied: services {} written {} removed, slots {} written {} \
                         removed, backends {} written {} removed, {} UDP conntrack entries flushed",
                        summary.services_written,
                        summary.services_removed,
                        summary.slots_written,
                        summary.slots_removed,
                        summary.backends_written,
                        summary.backends_removed,
                        summary.conntrack_flushed,
                    );
                }
                info!(
                    "ready: programmed {} services, {} backends",
                    self.reconciler.programmed_services(),
                    self.reconciler.programmed_backends()
                );
                self.pending = None;
            }
            Err(e) => error!("reconcile failed, retrying: {}", Chain(&e)),
        }
    }
}
