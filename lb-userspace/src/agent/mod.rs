//! `lb-agent run`: load and attach the data path, then keep its maps in line with the
//! source's desired state (manifest files or the Kubernetes API) until shutdown.

mod accept_local;
mod api_address;
mod auto_attach;
mod capabilities;
mod cleanup;
pub mod conntrack_gc;
mod forwarding;
mod health_check_ports;
mod masquerade;
mod programming;
mod reject_limits;
mod service_names;
mod socket_lb;
mod telemetry;

use std::collections::BTreeSet;
use std::future::Future;
use std::net::{SocketAddr, SocketAddrV4};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::time::Duration;

use ipnet::IpNet;
use tokio::task::JoinHandle;
use tokio::time::MissedTickBehavior;
use tracing::{info, warn};

use lb_common::config::reply_path;

use crate::bpffs::{self, BpffsError, DirLock};
use crate::datapath::{
    Capacities, Datapath, DatapathError, DatapathMaps, KernelLog, KernelLogLevel,
};
use crate::error::Chain;
use crate::health::SyncHealth;
use crate::k8s::{NodeDef, NodePortAddresses};
use crate::links::{self, IfacePatterns, LinkEvent, NetlinkError};
use crate::maglev::TableSize;
use crate::manifests::ManifestDir;
use crate::metrics::{ListenError, SyncMetrics};
use crate::model::Algorithm;
use crate::monitor::server::MonitorServer;
use crate::reconciler::{MapWriteError, Reconciler};
use crate::source::api::{access, ApiAccess, ApiSourceError};
use crate::source::{self, DesiredStates};
pub use accept_local::{AcceptLocalError, DEFAULT_PROC_SYS_NET_DIR};
use auto_attach::AutoAttach;
pub use cleanup::cleanup;
pub use masquerade::{Masquerade, MasqueradeAddrs, PortRange, PortRangeError};
use programming::Programmer;
pub use reject_limits::RejectLimitFlags;
pub use socket_lb::{cgroup2_root, netns_cookie, SocketLb};
use telemetry::Telemetry;

/// Default `--bpffs-dir`.
pub const DEFAULT_BPFFS_DIR: &str = "/sys/fs/bpf/lb-agent";
/// How often a starting agent checks whether the previous one has exited.
const LOCK_POLL: Duration = Duration::from_millis(100);
/// How soon a desired state whose writing failed is tried again.
const RETRY_INTERVAL: Duration = Duration::from_millis(500);

/// Settings of `lb-agent run`.
#[derive(Clone, Debug)]
pub struct RunConfig {
    pub source: SourceConfig,
    /// `--service-cidrs` (IPv4): in Kubernetes mode given instead of watching ServiceCIDR
    /// objects (`None`: watch them); in file mode the only ones (`None`: none).
    pub service_cidrs: Option<BTreeSet<IpNet>>,
    /// Interfaces whose TC ingress and egress get the programs; empty: auto-attach to every interface
    /// matching `iface_patterns`, as interfaces come and go.
    pub tc_ifaces: Vec<String>,
    /// Pod-facing interface names for auto-attach.
    pub iface_patterns: IfacePatterns,
    /// Interface that gets the XDP program.
    pub xdp_iface: XdpIface,
    /// Whether and how external flows to backends on other nodes are masqueraded.
    pub masquerade: Masquerade,
    /// Whether and where the node's own sockets (and pods') are translated (cgroup socket
    /// programs).
    pub socket_lb: SocketLb,
    /// How translated replies and masqueraded packets leave the node.
    pub reply_path: ReplyPath,
    /// Rate limits of the data path's rejects.
    pub reject_limits: RejectLimitFlags,
    /// Backend selection of services that do not choose one.
    pub lb_algorithm: Algorithm,
    pub maglev_table_size: TableSize,
    /// Maps are pinned under `<bpffs_dir>/maps/`.
    pub bpffs_dir: PathBuf,
    /// The node's `net.*` sysctls (`/proc/sys/net`, or the node's mounted into a container,
    /// whose own is read-only): `ip_forward` is read there, and with
    /// [`ReplyPath::Kernel`] `accept_local` written.
    pub proc_sys_net_dir: PathBuf,
    pub capacities: Capacities,
    /// How often the maps are read back and repaired ([`crate::Reconciler::resync`]).
    pub resync_interval: Duration,
    /// Idle timeouts of tracked flows, per state.
    pub conntrack_timeouts: conntrack_gc::Timeouts,
    /// How often the conntrack garbage collector walks the map.
    pub conntrack_gc_interval: Duration,
    /// Where `/metrics` is served.
    pub metrics_addr: SocketAddr,
    /// Where `/healthz` and `/readyz` are served.
    pub healthz_addr: SocketAddr,
    /// The most verbose level the eBPF programs write log lines at; the agent forwards them
    /// into its own log.
    pub kernel_log_level: KernelLogLevel,
    /// Where `lb-agent monitor` clients connect.
    pub monitor_socket: PathBuf,
}

/// How translated packets that may carry one of the node's own addresses as their source
/// (node port replies, masqueraded flows; `lb_common::config::reply_path`) leave the node.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum ReplyPath {
    /// The programs send them to the egress device the FIB names (`bpf_redirect`,
    /// `bpf_redirect_neigh`); the XDP interface also gets TC ingress for what XDP hands over.
    /// No sysctl is written.
    Redirect,
    /// Back to the kernel's routing, which needs `accept_local` on the interfaces they arrive
    /// on; the agent writes it under `--proc-sys-net-dir`.
    Kernel,
}

impl ReplyPath {
    /// The `LB_CONFIG` value.
    fn config_value(self) -> u8 {
        match self {
            ReplyPath::Redirect => reply_path::REDIRECT,
            ReplyPath::Kernel => reply_path::KERNEL,
        }
    }
}

/// Which interface gets the XDP program.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum XdpIface {
    /// No XDP.
    Off,
    /// This interface.
    Named(String),
    /// The interface of the IPv4 default route, if there is one.
    DefaultRoute,
}

/// Where the Services and EndpointSlices come from.
#[derive(Clone, Debug)]
pub enum SourceConfig {
    /// A manifests directory, read every `poll_interval`, for `node`.
    Files {
        dir: PathBuf,
        node: NodeDef,
        poll_interval: Duration,
    },
    /// The Kubernetes API server, for the node named `node_name`.
    Kubernetes {
        /// The kubeconfig, or the in-cluster service account, and the address.
        access: ApiAccess,
        node_name: String,
        /// Which of the Node's addresses serve node ports.
        node_port_addresses: NodePortAddresses,
    },
}

/// Why the agent could not start (or had to stop).
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("manifests directory {} does not exist or is not a directory", .0.display())]
    NoManifestsDir(PathBuf),
    #[error(transparent)]
    ApiSource(#[from] ApiSourceError),
    #[error(transparent)]
    Bpffs(#[from] BpffsError),
    #[error(transparent)]
    Datapath(#[from] DatapathError),
    #[error("the {0} source stopped unexpectedly")]
    SourceStopped(&'static str),
    #[error("watching the node's interfaces failed")]
    Links(#[from] NetlinkError),
    #[error(transparent)]
    AcceptLocal(#[from] AcceptLocalError),
    #[error("writing the node settings (masquerading) failed")]
    NodeConfig(#[source] MapWriteError),
    #[error("writing the reject rate limits failed")]
    RejectLimits(#[source] MapWriteError),
    #[error(transparent)]
    Listen(#[from] ListenError),
    #[error(
        "no cgroup v2 hierarchy for socket-level translation ({0}): mount cgroup2, name a cgroup \
         v2 directory with --cgroup-path, or turn it off with --no-socket-lb"
    )]
    Cgroup2Mount(String),
    #[error("reading this network namespace's cookie (SO_NETNS_COOKIE, Linux 5.14) failed")]
    NetnsCookie(#[source] std::io::Error),
    #[error(
        "lb-agent run lacks {0}: loading and attaching its programs takes CAP_BPF, CAP_PERFMON \
         and CAP_NET_ADMIN (CAP_SYS_ADMIN covers the first two); run it as root or grant them \
         (the DaemonSet's securityContext.capabilities.add)"
    )]
    MissingCapabilities(String),
}

/// Where the maps of an agent using `bpffs_dir` are pinned.
pub fn maps_dir(bpffs_dir: &Path) -> PathBuf {
    bpffs_dir.join("maps")
}

/// Where the program attachments of an agent using `bpffs_dir` are pinned.
pub fn links_dir(bpffs_dir: &Path) -> PathBuf {
    bpffs_dir.join("links")
}

/// A started source: its task and what it publishes.
struct RunningSource {
    name: &'static str,
    task: JoinHandle<()>,
    states: DesiredStates,
}

/// Runs until `shutdown` completes. Maps and attachments stay pinned under the bpffs
/// directory, so traffic keeps flowing until the next agent adopts them; `lb-agent cleanup`
/// removes them.
pub async fn run(config: RunConfig, shutdown: impl Future<Output = ()>) -> Result<(), AgentError> {
    // The source is checked first: a bad kubeconfig or directory fails before anything is
    // loaded into the kernel.
    let max_endpoints = config.capacities.backends as usize;
    let source = match &config.source {
        SourceConfig::Files {
            dir,
            node,
            poll_interval,
        } => {
            if !dir.is_dir() {
                return Err(AgentError::NoManifestsDir(dir.clone()));
            }
            let manifests = ManifestDir::new(dir)
                .for_node(node.clone())
                .max_endpoints(max_endpoints);
            CheckedSource::Files(Box::new(manifests), *poll_interval)
        }
        SourceConfig::Kubernetes {
            access: api,
            node_name,
            node_port_addresses,
        } => {
            let config = access::config(api).await.map_err(ApiSourceError::from)?;
            // A client is made once now so a bad CA fails before anything is loaded; the one
            // used is made once the address is chosen.
            drop(source::api::client(config.clone())?);
            let service = access::kubernetes_service(api);
            info!("kubernetes mode: node {node_name}");
            info!("node ports on: --nodeport-addresses {node_port_addresses}");
            let node = (node_name.clone(), node_port_addresses.clone());
            CheckedSource::Api(Box::new(config), service, node, max_endpoints)
        }
    };
    capabilities::check()?;
    let maps = maps_dir(&config.bpffs_dir);
    let links = links_dir(&config.bpffs_dir);
    bpffs::prepare_pin_dir(&maps)?;
    bpffs::prepare_pin_dir(&links)?;
    tokio::pin!(shutdown);
    let Some(_lock) = lock_pins(&config.bpffs_dir, shutdown.as_mut()).await? else {
        return Ok(());
    };
    let datapath =
        Datapath::load_pinned(&config.capacities, &maps, &links, config.kernel_log_level)?;
    info!("maps pinned under {}", maps.display());
    serve(&config, datapath, source, shutdown).await
}

/// Waits until no other agent uses `bpffs_dir` (e.g. the old pod of a rolling update, still
/// stopping), so two agents never fight over the same pins; `None` on shutdown first.
async fn lock_pins(
    bpffs_dir: &Path,
    mut shutdown: Pin<&mut impl Future<Output = ()>>,
) -> Result<Option<DirLock>, AgentError> {
    let mut waiting = false;
    loop {
        if let Some(lock) = bpffs::try_lock_dir(bpffs_dir)? {
            return Ok(Some(lock));
        }
        if !waiting {
            info!(
                "waiting for the agent that uses {} to exit",
                bpffs_dir.display()
            );
            waiting = true;
        }
        tokio::select! {
            () = &mut shutdown => return Ok(None),
            () = tokio::time::sleep(LOCK_POLL) => {}
        }
    }
}

/// A source checked but not started yet (it starts once the maps exist).
enum CheckedSource {
    /// The manifests directory and its poll interval.
    Files(Box<ManifestDir>, Duration),
    /// The API client's configuration (with the explicit address, if one was given), the
    /// `kubernetes` Service's address to prefer once this node translates it, this node's
    /// name and node port addresses, and the slice size limit.
    Api(
        Box<kube::Config>,
        Option<SocketAddrV4>,
        (String, NodePortAddresses),
        usize,
    ),
}

impl CheckedSource {
    /// Starts the source; the API server's address is chosen now, with the programs attached
    /// and the maps adopted ([`api_address::choose`]); `sockets`: socket-level translation is on.
    async fn start(
        self,
        service_cidrs: Option<BTreeSet<IpNet>>,
        maps: &DatapathMaps,
        sockets: bool,
        metrics: SyncMetrics,
        health: SyncHealth,
    ) -> Result<RunningSource, AgentError> {
        let (name, (task, states)) = match self {
            CheckedSource::Files(dir, poll_interval) => (
                "manifests",
                source::files::spawn(
                    *dir,
                    poll_interval,
                    service_cidrs.unwrap_or_default(),
                    metrics,
                ),
            ),
            CheckedSource::Api(mut config, service, (node_name, addresses), max_endpoints) => {
                api_address::choose(&mut config, service, maps, sockets).await;
                let client = source::api::client(*config)?;
                (
                    "kubernetes",
                    source::api::spawn(
                        client,
                        node_name,
                        addresses,
                        service_cidrs,
                        max_endpoints,
                        metrics,
                        health,
                    ),
                )
            }
        };
        Ok(RunningSource { name, task, states })
    }
}

async fn serve(
    config: &RunConfig,
    mut datapath: Datapath,
    source: CheckedSource,
    shutdown: impl Future<Output = ()>,
) -> Result<(), AgentError> {
    let mut kernel_log = datapath
        .kernel_log()
        .inspect_err(|e| warn!("the programs' log lines are not forwarded: {}", Chain(e)))
        .ok();
    let xdp_iface = match &config.xdp_iface {
        XdpIface::Off => None,
        XdpIface::Named(iface) => Some(iface.clone()),
        XdpIface::DefaultRoute => {
            let found = links::default_route_iface()?;
            match &found {
                Some(iface) => info!("external interface (default route): {iface}"),
                None => warn!("no IPv4 default route: no interface gets the XDP program"),
            }
            found
        }
    };
    let sockets = socket_lb::prepare(&config.socket_lb)?;
    // Before the XDP and socket programs run (a restarted agent overwrites what the last one
    // set).
    let node_config = masquerade::node_config(&config.masquerade, xdp_iface.as_deref())
        .with_sock_netns(sockets.as_ref().map_or(0, |s| s.netns_cookie))
        .with_reply_path(config.reply_path.config_value())
        .with_sock_all_netns(sockets.as_ref().is_some_and(|s| s.pods));
    datapath
        .maps()
        .set_node_config(&node_config)
        .map_err(AgentError::NodeConfig)?;
    datapath
        .maps()
        .set_reject_limits(&config.reject_limits.limits())
        .map_err(AgentError::RejectLimits)?;
    info!("{}", config.reject_limits.describe());
    match config.reply_path {
        ReplyPath::Redirect => info!(
            "reply path: redirect (node port replies and masqueraded packets go to their egress \
             device from the programs; no sysctl needed)"
        ),
        ReplyPath::Kernel => info!(
            "reply path: kernel (node port replies and masqueraded packets are routed by the \
             kernel, which needs accept_local)"
        ),
    }
    // Where accept_local is written: only the kernel reply path needs it.
    let accept_local_dir =
        (config.reply_path == ReplyPath::Kernel).then(|| config.proc_sys_net_dir.clone());
    if let (Some(iface), Some(dir), true) =
        (&xdp_iface, &accept_local_dir, node_config.masquerades())
    {
        let ifaces = std::slice::from_ref(iface);
        accept_local::enable(dir, ifaces, accept_local::MASQUERADING)?;
    }
    forwarding::check(&config.proc_sys_net_dir);
    match &sockets {
        Some(sockets) => datapath.attach_sockets(&sockets.cgroup)?,
        None => drop(Datapath::remove_socket_links(&links_dir(&config.bpffs_dir))),
    }
    if let Some(iface) = &xdp_iface {
        datapath.attach_tc_egress(iface)?;
        // The handoff before XDP, so no packet XDP hands over meets a hook without it.
        match config.reply_path {
            ReplyPath::Redirect => datapath.attach_xdp_handoff(iface)?,
            // One an earlier agent left would be harmless (nothing is marked) but confusing.
            ReplyPath::Kernel => datapath.unpin_xdp_handoff(iface),
        }
        datapath.attach_xdp(iface)?;
    }
    for iface in &config.tc_ifaces {
        datapath.attach_tc(iface)?;
    }
    if let Some(dir) = &accept_local_dir {
        accept_local::enable(dir, &config.tc_ifaces, accept_local::POD_FACING)?;
    }
    let mut auto_attach = if config.tc_ifaces.is_empty() {
        let patterns = config.iface_patterns.clone();
        Some(AutoAttach::start(patterns, xdp_iface, accept_local_dir)?)
    } else {
        None
    };

    let telemetry = Telemetry::start(config, &maps_dir(&config.bpffs_dir)).await?;
    // Without the programs' events there is nothing to serve.
    let monitor = kernel_log.as_ref().and_then(|_| start_monitor(config));
    let conntrack_gc = conntrack_gc::spawn(
        DatapathMaps::from_pins(&maps_dir(&config.bpffs_dir))?,
        config.conntrack_timeouts,
        config.conntrack_gc_interval,
        telemetry.conntrack_gc(),
    );
    let mut source = source
        .start(
            config.service_cidrs.clone(),
            datapath.maps(),
            sockets.is_some(),
            telemetry.sync(),
            telemetry.health(),
        )
        .await?;
    let reconciler = Reconciler::new(&config.capacities)
        .with_selection(config.lb_algorithm, config.maglev_table_size);
    let mut programmer = Programmer::new(
        &config.capacities,
        reconciler,
        telemetry.sync(),
        telemetry.health(),
    );
    let mut retry = tokio::time::interval(RETRY_INTERVAL);
    retry.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut resync = tokio::time::interval(config.resync_interval);
    resync.set_missed_tick_behavior(MissedTickBehavior::Delay);
    resync.reset(); // the first tick after one interval, not at once
    tokio::pin!(shutdown);
    let result = loop {
        tokio::select! {
            () = &mut shutdown => break Ok(()),
            update = source.states.next() => {
                let Some(update) = update else {
                    break Err(AgentError::SourceStopped(source.name));
                };
                programmer.want(update);
                programmer.apply(datapath.maps()).await;
            }
            _ = retry.tick(), if programmer.has_pending() => {
                programmer.apply(datapath.maps()).await;
            }
            _ = resync.tick() => programmer.resync(datapath.maps()).await,
            event = next_link_event(&mut auto_attach) => match (event, &mut auto_attach) {
                (Ok(event), Some(auto_attach)) => auto_attach.handle(event, &mut datapath),
                (Err(e), _) => break Err(e.into()),
                (Ok(_), None) => {}
            },
            forwarded = forward_kernel_log(&mut kernel_log, monitor.as_ref()) => if let Err(e) = forwarded {
                warn!("reading the programs' log lines failed, no more are forwarded: {e}");
                kernel_log = None;
            },
        }
    };
    if let Some(kernel_log) = &mut kernel_log {
        kernel_log.flush();
    }
    source.task.abort();
    conntrack_gc.abort();
    info!("shutting down: programs and maps stay pinned; `lb-agent cleanup` removes them");
    result
}

/// Forwards the eBPF programs' next events to the log and the monitor's clients; never
/// completes without a reader.
async fn forward_kernel_log(
    kernel_log: &mut Option<KernelLog>,
    monitor: Option<&MonitorServer>,
) -> std::io::Result<()> {
    match kernel_log {
        Some(kernel_log) => {
            kernel_log
                .forward(|event| {
                    if let Some(monitor) = monitor {
                        monitor.publish(event);
                    }
                })
                .await
        }
        None => std::future::pending().await,
    }
}

/// Serves `lb-agent monitor` on `config.monitor_socket`, if the socket can be made; the agent
/// runs on without it otherwise.
fn start_monitor(config: &RunConfig) -> Option<MonitorServer> {
    let maps = DatapathMaps::from_pins(&maps_dir(&config.bpffs_dir))
        .inspect_err(|e| warn!("monitor: cannot open the pinned maps: {}", Chain(e)))
        .ok()?;
    MonitorServer::start(&config.monitor_socket, maps)
        .inspect_err(|e| warn!("monitor: not served: {}", Chain(e)))
        .ok()
}

/// The next interface change in auto-attach mode; never completes otherwise.
async fn next_link_event(auto_attach: &mut Option<AutoAttach>) -> Result<LinkEvent, NetlinkError> {
    match auto_attach {
        Some(auto_attach) => auto_attach.next().await,
        None => std::future::pending().await,
    }
}
