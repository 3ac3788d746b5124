//! `lb-agent`: the node agent of the eBPF service load balancer.

use std::io::{ErrorKind, IsTerminal, Write};
use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroUsize;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use clap::{ArgMatches, Args, FromArgMatches, Parser, Subcommand};
use ipnet::IpNet;
use lb_common::{Capacity, Counter};
use lb_userspace::agent::conntrack_gc::Timeouts;
use lb_userspace::agent::{
    self, Masquerade, MasqueradeAddrs, PortRange, RejectLimitFlags, ReplyPath, RunConfig, SocketLb,
    SourceConfig, XdpIface, DEFAULT_BPFFS_DIR, DEFAULT_PROC_SYS_NET_DIR,
};
use lb_userspace::datapath::{KernelLogLevel, TraceHook, MAX_ENTRIES};
use lb_userspace::inspect::{
    AddrFilter, Filters, Query, ServiceFilter, Snapshot, DEFAULT_CONNTRACK_LIMIT,
};
use lb_userspace::k8s::{service_cidr, NodeDef, NodePortAddress, NodePortAddresses};
use lb_userspace::links::{IfacePattern, IfacePatterns};
use lb_userspace::maglev::TableSize;
use lb_userspace::model::Algorithm;
use lb_userspace::monitor::{
    self,
    filter::{EventFilter, Hook, Kind},
    DEFAULT_SOCKET,
};
use lb_userspace::source::api::access::DEFAULT_SERVICE_ACCOUNT_DIR;
use lb_userspace::source::api::{ApiAccess, ApiServerUrl};
use lb_userspace::trace::{self, Arrival, Packet, TraceProtocol};
use lb_userspace::{Capacities, DatapathMaps};
use tokio::signal::unix::{signal, SignalKind};
use tracing::info;
use tracing::level_filters::LevelFilter;
use tracing_subscriber::EnvFilter;

/// Log directive silencing the rtnetlink parser's warnings.
const QUIET_NETLINK_PARSER: &str = "netlink_packet_route=error";

#[derive(Parser)]
#[command(
    name = "lb-agent",
    version,
    about = "eBPF Kubernetes service load balancer agent"
)]
struct Cli {
    /// Log filter: a level (error, warn, info, debug, trace) or tracing directives. The eBPF
    /// programs' lines (`kernel: ...`) are written up to the most verbose level it enables.
    #[arg(long, global = true, default_value = "info")]
    log_level: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Load the data path and program the services of a manifests directory or the cluster.
    Run(Box<RunArgs>),
    /// Print the pinned maps of an agent (running or not) as tables or JSON.
    Inspect(InspectArgs),
    /// Detach the programs and remove the maps a stopped agent left pinned.
    Cleanup(CleanupArgs),
    /// Show what the running agent's programs would do with a packet, without changing its maps.
    Trace(TraceArgs),
    /// Stream the running agent's data-path events: drops, rejects, new flows, masquerading.
    Monitor(MonitorArgs),
}

/// `lb-agent run`. Without `--manifests` the objects come from the Kubernetes API.
#[derive(Args)]
struct RunArgs {
    /// File mode: a directory of Service and EndpointSlice YAML files, re-read every 200 ms.
    /// Without it, Kubernetes mode: the objects come from the API server.
    #[arg(long, conflicts_with = "kubeconfig")]
    manifests: Option<PathBuf>,
    /// Kubernetes mode: kubeconfig file [default: $KUBECONFIG, else the in-cluster service
    /// account]. http:// servers work too.
    #[arg(long)]
    kubeconfig: Option<PathBuf>,
    /// Kubernetes mode: the API server's real address, https://HOST:PORT. Overrides the
    /// kubeconfig's server and the in-cluster KUBERNETES_SERVICE_HOST/_PORT (the `kubernetes`
    /// Service's ClusterIP, which only works once this agent programs it: in-cluster, a
    /// restarted agent whose pinned maps translate it tries it first) [default: from the
    /// kubeconfig, else KUBERNETES_SERVICE_HOST and KUBERNETES_SERVICE_PORT].
    #[arg(
        long,
        env = "LB_K8S_API_SERVER",
        value_name = "URL",
        conflicts_with = "manifests"
    )]
    k8s_api_server: Option<ApiServerUrl>,
    /// Kubernetes mode without a kubeconfig: the directory of the service account's `token`
    /// and `ca.crt` (re-read every minute, so rotation needs no restart).
    #[arg(
        long,
        env = "LB_K8S_SERVICE_ACCOUNT_DIR",
        value_name = "DIR",
        default_value = DEFAULT_SERVICE_ACCOUNT_DIR
    )]
    k8s_service_account_dir: PathBuf,
    /// This node's name: endpoints with this nodeName are local, and in Kubernetes mode the
    /// Node object whose addresses serve node ports [default: the hostname].
    #[arg(long, env = "NODE_NAME")]
    node_name: Option<String>,
    /// File mode: an address of this node that serves NodePort services (repeatable).
    #[arg(long = "node-address", value_name = "IP", requires = "manifests")]
    node_addresses: Vec<IpAddr>,
    /// kube-proxy's flag: which node addresses serve node ports, `primary` (every address
    /// of the Node, or every --node-address) or CIDRs (comma-separated or repeated; the
    /// addresses inside them) [default: primary].
    #[arg(
        long = "nodeport-addresses",
        value_name = "CIDR|primary",
        value_delimiter = ','
    )]
    nodeport_addresses: Vec<NodePortAddress>,
    /// The service CIDRs (comma-separated or repeated): new flows to their addresses that no
    /// Service holds are dropped, as kube-proxy nftables does. Kubernetes mode watches
    /// ServiceCIDR objects (networking.k8s.io/v1, Kubernetes 1.33) unless this is given;
    /// file mode has only these. Both families.
    #[arg(long = "service-cidrs", value_name = "CIDR", value_delimiter = ',')]
    service_cidrs: Option<Vec<IpNet>>,
    /// Pod-facing interface to attach the TC ingress and egress programs to (repeatable). Without it,
    /// auto-attach: every interface matching --iface-pattern, as interfaces come and go.
    #[arg(long = "iface", value_name = "NAME")]
    ifaces: Vec<String>,
    /// Auto-attach: a glob (`*`, `?`) naming pod-facing interfaces (repeatable) [default:
    /// veth* cali* lxc* cni* eni* gke* azv* flannel* vxlan* cilium_vxlan cilium_geneve: pod
    /// veths and overlay devices]. Bridges, lo, the XDP interface and devices without
    /// Ethernet frames never match.
    #[arg(long = "iface-pattern", value_name = "GLOB", conflicts_with = "ifaces")]
    iface_patterns: Vec<IfacePattern>,
    /// Interface to attach the XDP program (and the TC egress program) to [default: with
    /// --iface none, in auto-attach mode the interface of the IPv4 default route].
    #[arg(long, value_name = "NAME")]
    xdp_iface: Option<String>,
    /// No XDP program at all.
    #[arg(long, conflicts_with = "xdp_iface")]
    no_xdp: bool,
    /// Addresses that external flows to backends on other nodes (externalTrafficPolicy:
    /// Cluster) are masqueraded to: at most one IPv4 and one IPv6 address, comma-separated or
    /// repeated; a family not given takes the XDP interface's [default: the XDP interface's
    /// first IPv4 address and first IPv6 address that is not link-local].
    #[arg(long, value_name = "IP[,IP]", value_delimiter = ',')]
    masquerade_address: Vec<IpAddr>,
    /// Source ports masqueraded flows get; keep them outside net.ipv4.ip_local_port_range
    /// [default: 61000-65535].
    #[arg(long, value_name = "MIN-MAX")]
    masquerade_ports: Option<PortRange>,
    /// Never masquerade: external flows to backends on other nodes keep the client's address
    /// (those nodes must then route replies back through this one).
    #[arg(long, conflicts_with_all = ["masquerade_address", "masquerade_ports"])]
    no_masquerade: bool,
    /// cgroup v2 directory whose processes' sockets reach Services (socket-level translation
    /// at connect/sendmsg), or a hybrid host's /sys/fs/cgroup, whose unified/ is used (the
    /// DaemonSet passes the node's, mounted) [default: the root of the cgroup v2 hierarchy,
    /// from /proc/self/mountinfo: every process of the node].
    #[arg(long, value_name = "PATH")]
    cgroup_path: Option<PathBuf>,
    /// No socket-level translation: processes on the node (host network) do not reach
    /// Services; pins an earlier agent left are removed.
    #[arg(long, conflicts_with = "cgroup_path")]
    no_socket_lb: bool,
    /// Socket-level translation for pods too: sockets of every network namespace, not only
    /// the node's, are connected to a backend at connect/sendmsg, so their packets need no
    /// per-packet translation (the TC program still serves what sockets cannot cover).
    #[arg(long, conflicts_with = "no_socket_lb")]
    socket_lb_pods: bool,
    /// bpffs directory; maps are pinned under <DIR>/maps/, program links under <DIR>/links/.
    /// They stay pinned when the agent exits; `lb-agent cleanup` removes them.
    #[arg(long, default_value = DEFAULT_BPFFS_DIR)]
    bpffs_dir: PathBuf,
    /// How node port replies and masqueraded packets (which carry the node's own address as
    /// their source) and other translated replies leave the node: `redirect` sends them to
    /// the egress device the FIB names, from the programs; `kernel` hands them to the kernel's
    /// routing, which drops them as martians unless accept_local is 1 on the interfaces they
    /// arrive on (the agent writes it under --proc-sys-net-dir).
    #[arg(long, value_enum, default_value_t = ReplyPath::Redirect)]
    reply_path: ReplyPath,
    /// How new flows pick a backend where a Service's `lb-agent/lb-algorithm` annotation does
    /// not say: `random` (flow hash modulo the backend count) or `maglev` (a consistent-hash
    /// table: the same backend on every node, few flows move when endpoints change).
    #[arg(long, value_enum, default_value_t = Algorithm::Random)]
    lb_algorithm: Algorithm,
    /// Entries of each Maglev Service port's table (a prime): one backend slot each, so each
    /// Maglev Service port with endpoints takes this many of --max-backend-slots.
    #[arg(long, value_name = "PRIME", default_value_t = TableSize::DEFAULT)]
    maglev_table_size: TableSize,
    /// The node's `net.*` sysctls: ip_forward is read there, and with --reply-path kernel
    /// accept_local written (in a container, whose own /proc/sys is read-only, the node's
    /// /proc/sys/net mounted writable).
    #[arg(long, value_name = "DIR", default_value = DEFAULT_PROC_SYS_NET_DIR)]
    proc_sys_net_dir: PathBuf,
    /// How often the maps are read back and repaired if they drifted (e.g. 30s, 500ms, 2m).
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    resync_interval: Duration,
    /// Address of the Prometheus metrics endpoint (`/metrics`): kube-proxy's metrics port, on
    /// loopback by default as kube-proxy's; 0.0.0.0:10249 lets Prometheus scrape it.
    #[arg(long, default_value = "127.0.0.1:10249")]
    metrics_addr: SocketAddr,
    /// Address of the health endpoints (`/healthz`, `/readyz`), as kube-proxy's health port.
    #[arg(long, default_value = "0.0.0.0:10256")]
    healthz_addr: SocketAddr,
    /// Unix socket where `lb-agent monitor` clients connect (its directory is created, a stale
    /// socket replaced; root only).
    #[arg(long, value_name = "PATH", default_value = DEFAULT_SOCKET)]
    monitor_socket: PathBuf,
    #[command(flatten)]
    reject_limits: RejectLimitFlags,
    #[command(flatten)]
    conntrack: ConntrackFlags,
    #[command(flatten)]
    map_sizes: MapSizes,
}

/// Idle timeouts of tracked flows per state, and the garbage collector that applies them
/// (README "Conntrack timeouts": the defaults are Cilium's for TCP and the kernel's for UDP).
#[derive(Args, Debug)]
#[command(next_help_heading = "Conntrack timeouts (idle, per flow state)")]
struct ConntrackFlags {
    /// TCP connections the backend has not answered yet (SYN sent): Cilium's SYN timeout.
    #[arg(long, value_name = "DURATION", default_value = "60s", value_parser = parse_duration)]
    conntrack_tcp_timeout_syn: Duration,
    /// Established TCP connections: Cilium's TCP lifetime (kube-proxy sets the kernel's
    /// nf_conntrack_tcp_timeout_established to 24h).
    #[arg(long, value_name = "DURATION", default_value = "6h", value_parser = parse_duration)]
    conntrack_tcp_timeout_established: Duration,
    /// TCP connections after a FIN or RST either way: Cilium's close timeout (kube-proxy sets
    /// the kernel's nf_conntrack_tcp_timeout_close_wait to 1h).
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = parse_duration)]
    conntrack_tcp_timeout_close_wait: Duration,
    /// UDP flows the backend has not answered: the kernel's nf_conntrack_udp_timeout.
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = parse_duration)]
    conntrack_udp_timeout: Duration,
    /// Answered UDP flows: the kernel's nf_conntrack_udp_timeout_stream.
    #[arg(long, value_name = "DURATION", default_value = "120s", value_parser = parse_duration)]
    conntrack_udp_timeout_stream: Duration,
    /// How often the garbage collector walks the conntrack map and deletes expired flows (a
    /// walk of a 90%-full default-sized map takes seconds of CPU, see the README); each walk
    /// also sets `lbagent_conntrack_entries`, which a scrape reports without reading the map.
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = parse_duration)]
    conntrack_gc_interval: Duration,
}

impl ConntrackFlags {
    fn timeouts(&self) -> Timeouts {
        Timeouts {
            tcp_syn: self.conntrack_tcp_timeout_syn,
            tcp_established: self.conntrack_tcp_timeout_established,
            tcp_closing: self.conntrack_tcp_timeout_close_wait,
            udp: self.conntrack_udp_timeout,
            udp_stream: self.conntrack_udp_timeout_stream,
        }
    }
}

/// How many entries each map holds (1 to 2^24 each): one flag per [`Capacity`], named and
/// described there. A pinned map of another size is replaced by an empty one at start-up: a
/// changed --conntrack-size drops every tracked flow.
struct MapSizes(Capacities);

impl Args for MapSizes {
    fn augment_args(cmd: clap::Command) -> clap::Command {
        let cmd = cmd.next_help_heading("Map sizes (entries; a change replaces the pinned map)");
        Capacity::ALL.into_iter().fold(cmd, |cmd, capacity| {
            let help = format!(
                "{} [default: {}]",
                capacity.help(),
                capacity.default_entries()
            );
            cmd.arg(
                clap::Arg::new(capacity.flag())
                    .long(capacity.flag())
                    .value_name("ENTRIES")
                    .value_parser(parse_entries)
                    .help(help),
            )
        })
    }

    fn augment_args_for_update(cmd: clap::Command) -> clap::Command {
        Self::augment_args(cmd)
    }
}

impl FromArgMatches for MapSizes {
    fn from_arg_matches(matches: &ArgMatches) -> Result<Self, clap::Error> {
        let mut capacities = Capacities::default();
        for capacity in Capacity::ALL {
            if let Some(entries) = matches.get_one::<u32>(capacity.flag()) {
                *capacities.get_mut(capacity) = *entries;
            }
        }
        Ok(Self(capacities))
    }

    fn update_from_arg_matches(&mut self, matches: &ArgMatches) -> Result<(), clap::Error> {
        *self = Self::from_arg_matches(matches)?;
        Ok(())
    }
}

#[derive(Args)]
struct InspectArgs {
    /// bpffs directory of the agent to inspect.
    #[arg(long, default_value = DEFAULT_BPFFS_DIR)]
    bpffs_dir: PathBuf,
    /// Only this Service's frontends, their backends and flows; PORT is the port's name.
    #[arg(long, value_name = "NS/NAME[:PORT]")]
    service: Option<ServiceFilter>,
    /// Only the frontends at this address (and port), their backends and flows.
    #[arg(long, value_name = "IP[:PORT]")]
    frontend: Option<AddrFilter>,
    /// Only the backends at this address (and port), the frontends using them and their flows.
    #[arg(long, value_name = "IP[:PORT]")]
    backend: Option<AddrFilter>,
    /// One JSON document instead of tables.
    #[arg(long)]
    json: bool,
    /// Conntrack rows shown at most (a line says how many more match).
    #[arg(long, value_name = "N", default_value_t = DEFAULT_CONNTRACK_LIMIT)]
    conntrack_limit: usize,
    /// Matching conntrack rows skipped before the first one shown.
    #[arg(long, value_name = "N", default_value_t = 0)]
    conntrack_offset: usize,
    /// Every matching conntrack row (overrides --conntrack-limit).
    #[arg(long)]
    all: bool,
}

/// `lb-agent trace`: the packet (or each packet of a capture) runs through a dry-run copy of
/// the programs that shares the agent's pinned maps and writes none of them.
#[derive(Args)]
struct TraceArgs {
    /// bpffs directory of the agent whose maps the packet meets.
    #[arg(long, default_value = DEFAULT_BPFFS_DIR)]
    bpffs_dir: PathBuf,
    /// Source address and port.
    #[arg(
        long,
        value_name = "IP:PORT",
        required_unless_present = "pcap",
        conflicts_with = "pcap"
    )]
    from: Option<SocketAddr>,
    /// Destination address and port.
    #[arg(
        long,
        value_name = "IP:PORT",
        required_unless_present = "pcap",
        conflicts_with = "pcap"
    )]
    to: Option<SocketAddr>,
    #[arg(long, value_enum, default_value = "tcp", conflicts_with = "pcap")]
    proto: TraceProtocol,
    /// TCP flags, comma-separated: syn, ack, fin, rst, psh.
    #[arg(
        long,
        value_name = "FLAGS",
        default_value = "syn",
        value_parser = trace::parse_tcp_flags,
        conflicts_with = "pcap"
    )]
    tcp_flags: u8,
    /// Trace each packet of this capture instead (pcap or pcapng; Ethernet or Linux cooked).
    #[arg(long, value_name = "FILE")]
    pcap: Option<PathBuf>,
    /// Only this packet of the capture (from 1).
    #[arg(long, value_name = "N", requires = "pcap")]
    packet: Option<NonZeroUsize>,
    /// The interface the packet arrives on, in this network namespace: its hook is the one the
    /// agent attached there, and the program runs as on that interface.
    #[arg(long, value_name = "NAME")]
    iface: Option<String>,
    /// The entry point: tc (pod-facing interfaces) or xdp (the external interface). Default:
    /// the one the agent attached to --iface (which this must agree with), else tc.
    #[arg(long, value_enum)]
    hook: Option<TraceHookArg>,
    /// JSON instead of lines: one document per packet, one per line.
    #[arg(long)]
    json: bool,
}

/// `lb-agent monitor`: events as the agent's programs see them, filtered here. Every filter
/// given must match.
#[derive(Args)]
struct MonitorArgs {
    /// The agent's --monitor-socket.
    #[arg(long, value_name = "PATH", default_value = DEFAULT_SOCKET)]
    socket: PathBuf,
    /// Only this Service's events; PORT is the port's name.
    #[arg(long, value_name = "NS/NAME[:PORT]")]
    service: Option<ServiceFilter>,
    /// Only events counted as this counter, e.g. drop_no_backend, reject_no_backend, new_flows,
    /// masqueraded (repeatable: any of them).
    #[arg(long = "reason", value_name = "NAME", value_parser = monitor::record::reason)]
    reasons: Vec<Counter>,
    /// Only events with this address as source, destination, backend or masquerade address.
    #[arg(long, value_name = "IP")]
    address: Option<IpAddr>,
    /// Only events of this kind (repeatable: any of them).
    #[arg(long = "kind", value_enum)]
    kinds: Vec<Kind>,
    /// Only events seen at this hook; socket: the cgroup socket programs' translations and
    /// refusals (repeatable: any of them).
    #[arg(long = "hook", value_enum)]
    hooks: Vec<Hook>,
    /// The agent's JSON lines instead of text.
    #[arg(long)]
    json: bool,
    /// Exit after this many matching events.
    #[arg(long, value_name = "N")]
    count: Option<u64>,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum TraceHookArg {
    Tc,
    Xdp,
}

#[derive(Args)]
struct CleanupArgs {
    /// bpffs directory of the agent to clean up after.
    #[arg(long, default_value = DEFAULT_BPFFS_DIR)]
    bpffs_dir: PathBuf,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let filter = EnvFilter::try_new(&cli.log_level)
        .with_context(|| format!("invalid --log-level {:?}", cli.log_level))?
        // The rtnetlink parser warns about every attribute newer than itself, on every link
        // event; its real failures reach the agent as errors.
        .add_directive(QUIET_NETLINK_PARSER.parse().context("log directive")?);
    // The eBPF programs write only lines the filter may show (no hint: any level).
    let kernel_log_level =
        KernelLogLevel::new(filter.max_level_hint().unwrap_or(LevelFilter::TRACE));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    match cli.command {
        Command::Run(args) => run(*args, kernel_log_level),
        Command::Inspect(args) => inspect(args),
        Command::Cleanup(args) => cleanup(args),
        Command::Trace(args) => trace(args),
        Command::Monitor(args) => monitor(args),
    }
}

fn run(args: RunArgs, kernel_log_level: KernelLogLevel) -> anyhow::Result<()> {
    let node_name = match args.node_name {
        Some(name) => name,
        None => hostname().context("--node-name not given and NODE_NAME not set")?,
    };
    let node_port_addresses = NodePortAddresses::new(&args.nodeport_addresses)
        .map_err(|e| anyhow::anyhow!("invalid --nodeport-addresses: {e}"))?;
    let source = match args.manifests {
        Some(dir) => SourceConfig::Files {
            dir,
            node: {
                let addresses =
                    node_port_addresses.serving(&node_name, &args.node_addresses, &mut false);
                NodeDef {
                    health_check_addrs: node_port_addresses
                        .health_check_addresses(&addresses)
                        .into(),
                    addresses,
                    name: node_name,
                    zone: None,
                }
            },
            poll_interval: Duration::from_millis(200),
        },
        None => SourceConfig::Kubernetes {
            access: ApiAccess {
                kubeconfig: args.kubeconfig,
                api_server: args.k8s_api_server,
                service_account_dir: args.k8s_service_account_dir,
            },
            node_name,
            node_port_addresses,
        },
    };
    let config = RunConfig {
        source,
        service_cidrs: args.service_cidrs.as_deref().map(service_cidr::flag_cidrs),
        xdp_iface: match (args.xdp_iface, args.no_xdp) {
            (_, true) => XdpIface::Off,
            (Some(iface), false) => XdpIface::Named(iface),
            (None, false) if args.ifaces.is_empty() => XdpIface::DefaultRoute,
            (None, false) => XdpIface::Off,
        },
        masquerade: match args.no_masquerade {
            true => Masquerade::Off,
            false => Masquerade::On {
                addrs: MasqueradeAddrs::new(&args.masquerade_address)
                    .map_err(|e| anyhow::anyhow!("invalid --masquerade-address: {e}"))?,
                ports: args.masquerade_ports.unwrap_or_default(),
            },
        },
        socket_lb: match args.no_socket_lb {
            true => SocketLb::Off,
            false => SocketLb::Cgroup {
                path: args.cgroup_path,
                pods: args.socket_lb_pods,
            },
        },
        tc_ifaces: args.ifaces,
        iface_patterns: IfacePatterns::new(args.iface_patterns),
        bpffs_dir: args.bpffs_dir,
        reply_path: args.reply_path,
        reject_limits: args.reject_limits,
        lb_algorithm: args.lb_algorithm,
        maglev_table_size: args.maglev_table_size,
        proc_sys_net_dir: args.proc_sys_net_dir,
        capacities: args.map_sizes.0,
        resync_interval: args.resync_interval,
        conntrack_timeouts: args.conntrack.timeouts(),
        conntrack_gc_interval: args.conntrack.conntrack_gc_interval,
        metrics_addr: args.metrics_addr,
        healthz_addr: args.healthz_addr,
        monitor_socket: args.monitor_socket,
        kernel_log_level,
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(async {
        // Registered before anything is loaded, so an early signal still exits cleanly.
        let mut interrupt = signal(SignalKind::interrupt()).context("handling SIGINT")?;
        let mut terminate = signal(SignalKind::terminate()).context("handling SIGTERM")?;
        let shutdown = async move {
            tokio::select! {
                _ = interrupt.recv() => info!("received SIGINT"),
                _ = terminate.recv() => info!("received SIGTERM"),
            }
        };
        agent::run(config, shutdown)
            .await
            .context("lb-agent run failed")
    })
}

fn inspect(args: InspectArgs) -> anyhow::Result<()> {
    let maps = DatapathMaps::from_pins(&agent::maps_dir(&args.bpffs_dir))?;
    let query = Query {
        filters: Filters {
            service: args.service,
            frontend: args.frontend,
            backend: args.backend,
        },
        conntrack_offset: args.conntrack_offset,
        conntrack_limit: (!args.all).then_some(args.conntrack_limit),
    };
    let snapshot = Snapshot::read(&maps, &query)?;
    let text = match args.json {
        true => snapshot.to_json(),
        false => snapshot.to_string(),
    };
    match std::io::stdout().write_all(text.as_bytes()) {
        // Piped into `head` and friends: the reader has all it wanted.
        Err(e) if e.kind() == ErrorKind::BrokenPipe => Ok(()),
        result => result.context("writing to stdout"),
    }
}

fn trace(args: TraceArgs) -> anyhow::Result<()> {
    let hook = args.hook.map(|hook| match hook {
        TraceHookArg::Tc => TraceHook::Tc,
        TraceHookArg::Xdp => TraceHook::Xdp,
    });
    let arrival = match &args.iface {
        Some(iface) => trace::resolve_iface(&agent::links_dir(&args.bpffs_dir), iface, hook)?,
        None => Arrival {
            hook: hook.unwrap_or(TraceHook::Tc),
            iface: None,
        },
    };
    let frames = match &args.pcap {
        Some(path) => capture_frames(path, args.packet)?,
        None => {
            let (Some(from), Some(to)) = (args.from, args.to) else {
                anyhow::bail!("--from and --to describe the packet (or --pcap names a capture)");
            };
            let packet = Packet {
                from,
                to,
                protocol: args.proto,
                tcp_flags: args.tcp_flags,
            };
            vec![(None, packet.frame()?)]
        }
    };
    let mut tracer = trace::Tracer::load(&agent::maps_dir(&args.bpffs_dir), arrival)?;
    let mut stdout = std::io::stdout().lock();
    for (i, (number, frame)) in frames.iter().enumerate() {
        let report = tracer.trace(frame);
        let mut report = match number {
            Some(n) => report.with_context(|| format!("packet {n}"))?,
            None => report?,
        };
        report.packet = *number;
        let text = match args.json {
            true => report.to_json(),
            false if i == 0 => report.to_string(),
            false => format!("\n{report}"),
        };
        match stdout.write_all(text.as_bytes()) {
            // Piped into `head` and friends: the reader has all it wanted.
            Err(e) if e.kind() == ErrorKind::BrokenPipe => return Ok(()),
            result => result.context("writing to stdout")?,
        }
    }
    Ok(())
}

/// The frames of the capture at `path`, numbered from 1: all of them, or packet `only`.
fn capture_frames(
    path: &Path,
    only: Option<NonZeroUsize>,
) -> anyhow::Result<Vec<(Option<usize>, Vec<u8>)>> {
    let frames = trace::read_capture(path)?;
    let count = frames.len();
    let numbered = frames
        .into_iter()
        .enumerate()
        .map(|(i, f)| (Some(i + 1), f));
    match only {
        None => Ok(numbered.collect()),
        Some(n) => numbered
            .into_iter()
            .nth(n.get() - 1)
            .map(|frame| vec![frame])
            .ok_or_else(|| anyhow::anyhow!("{}: no packet {n}: it holds {count}", path.display())),
    }
}

fn monitor(args: MonitorArgs) -> anyhow::Result<()> {
    let options = monitor::client::Options {
        socket: args.socket,
        filter: EventFilter {
            service: args.service,
            reasons: args.reasons,
            address: args.address,
            kinds: args.kinds,
            hooks: args.hooks,
        },
        json: args.json,
        count: args.count,
    };
    Ok(monitor::client::run(
        &options,
        &mut std::io::stdout().lock(),
    )?)
}

fn cleanup(args: CleanupArgs) -> anyhow::Result<()> {
    let removed = agent::cleanup(&args.bpffs_dir)
        .with_context(|| format!("cleaning up {}", args.bpffs_dir.display()))?;
    info!(
        "removed {} pins under {}",
        removed.len(),
        args.bpffs_dir.display()
    );
    Ok(())
}

/// The hostname in lower case, as kube-proxy names its node by default.
fn hostname() -> anyhow::Result<String> {
    let mut buf = [0u8; 256];
    // SAFETY: `buf` is writable for its whole length.
    if unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) } != 0 {
        return Err(std::io::Error::last_os_error()).context("reading the hostname");
    }
    let end = buf.iter().position(|b| *b == 0).unwrap_or(buf.len());
    Ok(String::from_utf8_lossy(&buf[..end]).trim().to_lowercase())
}

/// A map size: a number of entries from 1 to [`MAX_ENTRIES`].
fn parse_entries(text: &str) -> Result<u32, String> {
    let entries: u64 = text
        .parse()
        .map_err(|_| format!("{text:?} is not a number of entries"))?;
    match u32::try_from(entries) {
        Ok(0) => Err("a map needs at least 1 entry".to_string()),
        Ok(entries @ 1..=MAX_ENTRIES) => Ok(entries),
        _ => Err(format!(
            "{entries} entries is more than the limit of {MAX_ENTRIES} (2^24) per map"
        )),
    }
}

/// A duration like `30s`, `500ms`, `2m` or `1h` (a bare number is seconds).
fn parse_duration(text: &str) -> Result<Duration, String> {
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: u64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a duration like 30s, 500ms or 2m"))?;
    let duration = match unit {
        "ms" => Duration::from_millis(number),
        "" | "s" => Duration::from_secs(number),
        "m" => Duration::from_secs(number * 60),
        "h" => Duration::from_secs(number * 3600),
        other => {
            return Err(format!(
                "unknown unit {other:?} in {text:?} (use ms, s, m or h)"
            ))
        }
    };
    if duration.is_zero() {
        return Err("the interval must be longer than zero".to_string());
    }
    Ok(duration)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_take_common_units() {
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("45"), Ok(Duration::from_secs(45)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert!(parse_duration("0s").is_err());
        assert!(parse_duration("5d").unwrap_err().contains("unknown unit"));
        assert!(parse_duration("soon").is_err());
    }

    #[test]
    fn node_addresses_need_file_mode_and_the_modes_exclude_each_other() {
        let parse = |args: &[&str]| Cli::try_parse_from([&["lb-agent", "run"], args].concat());
        assert!(parse(&["--manifests", "/m", "--node-address", "198.18.0.1"]).is_ok());
        assert!(parse(&["--node-address", "198.18.0.1"]).is_err());
        assert!(parse(&["--manifests", "/m", "--kubeconfig", "/k"]).is_err());
        assert!(parse(&["--manifests", "/m", "--node-address", "nope"]).is_err());
        assert!(parse(&["--kubeconfig", "/k", "--node-name", "n1"]).is_ok());
    }

    #[test]
    fn service_cidrs_take_a_list_and_name_an_invalid_one() {
        let parse = |args: &[&str]| Cli::try_parse_from([&["lb-agent", "run"], args].concat());
        let cidrs = |cli: Cli| match cli.command {
            Command::Run(args) => args.service_cidrs,
            _ => unreachable!("a run command"),
        };
        assert_eq!(
            cidrs(parse(&[]).unwrap()),
            None,
            "watch ServiceCIDR objects"
        );
        let given = cidrs(parse(&["--service-cidrs", "198.19.0.0/16,2001:2::/112"]).unwrap());
        let given: Vec<String> = given.unwrap().iter().map(ToString::to_string).collect();
        assert_eq!(given, ["198.19.0.0/16", "2001:2::/112"]);
        let Err(error) = parse(&["--service-cidrs", "198.19.0.0/16,198.19.0.0/33"]) else {
            panic!("an invalid CIDR was accepted");
        };
        let error = error.to_string();
        let first = error.lines().next().unwrap();
        assert!(
            first.contains("invalid value '198.19.0.0/33' for '--service-cidrs <CIDR>'"),
            "{error}"
        );
    }

    #[test]
    fn nodeport_addresses_take_cidrs_or_primary() {
        let parse = |args: &[&str]| Cli::try_parse_from([&["lb-agent", "run"], args].concat());
        let cidrs = |cli: Cli| match cli.command {
            Command::Run(args) => NodePortAddresses::new(&args.nodeport_addresses),
            _ => unreachable!("a run command"),
        };
        let both = ["--nodeport-addresses", "198.18.1.0/24,198.18.2.0/24"];
        assert_eq!(
            cidrs(parse(&both).unwrap()).unwrap().to_string(),
            "198.18.1.0/24,198.18.2.0/24"
        );
        assert_eq!(
            cidrs(parse(&[]).unwrap()).unwrap(),
            NodePortAddresses::Primary
        );
        let Err(error) = parse(&["--nodeport-addresses", "198.18.1.0/33"]) else {
            panic!("an invalid CIDR was accepted");
        };
        let error = error.to_string();
        assert!(
            error.lines().next().unwrap().contains(
                "'198.18.1.0/33' for '--nodeport-addresses <CIDR|primary>': \"198.18.1.0/33\" is \
                 neither a CIDR"
            ),
            "{error}"
        );
        let mixed = parse(&[
            "--nodeport-addresses",
            "primary",
            "--nodeport-addresses",
            "10.0.0.0/8",
        ]);
        assert!(cidrs(mixed.unwrap()).is_err());
    }

    #[test]
    fn socket_lb_pods_needs_socket_level_translation() {
        let parse = |args: &[&str]| Cli::try_parse_from([&["lb-agent", "run"], args].concat());
        assert!(parse(&["--socket-lb-pods", "--cgroup-path", "/sys/fs/cgroup/x"]).is_ok());
        assert!(parse(&["--socket-lb-pods", "--no-socket-lb"]).is_err());
    }

    #[test]
    fn the_api_server_address_is_an_https_url_and_needs_kubernetes_mode() {
        let parse = |args: &[&str]| Cli::try_parse_from([&["lb-agent", "run"], args].concat());
        let access = |args: &[&str]| match parse(args).map(|cli| cli.command) {
            Ok(Command::Run(run)) => (run.k8s_api_server, run.k8s_service_account_dir),
            _ => panic!("{args:?} do not parse"),
        };
        let (server, dir) = access(&["--k8s-api-server", "https://198.18.0.1:6443"]);
        assert_eq!(server.unwrap().to_string(), "https://198.18.0.1:6443");
        assert_eq!(dir, PathBuf::from(DEFAULT_SERVICE_ACCOUNT_DIR));
        let (server, dir) = access(&["--k8s-service-account-dir", "/sa"]);
        assert_eq!((server, dir), (None, PathBuf::from("/sa")));
        assert!(parse(&["--k8s-api-server", "http://198.18.0.1:8080"]).is_err());
        assert!(parse(&["--manifests", "/m", "--k8s-api-server", "https://h:6443"]).is_err());
    }

    #[test]
    fn auto_attach_patterns_exclude_named_interfaces_and_must_be_able_to_match() {
        let parse = |args: &[&str]| Cli::try_parse_from([&["lb-agent", "run"], args].concat());
        assert!(parse(&["--iface-pattern", "veth*", "--iface-pattern", "cali?"]).is_ok());
        assert!(parse(&["--iface-pattern", "veth*", "--iface", "eth1"]).is_err());
        assert!(parse(&["--iface-pattern", "a/b"]).is_err());
        assert!(parse(&["--iface-pattern", ""]).is_err());
        assert!(parse(&["--no-xdp"]).is_ok());
        assert!(parse(&["--no-xdp", "--xdp-iface", "eth0"]).is_err());
    }

    #[test]
    fn map_sizes_default_to_lb_commons_capacities_and_are_checked() {
        let parse = |args: &[&str]| Cli::try_parse_from([&["lb-agent", "run"], args].concat());
        let error = |args: &[&str]| parse(args).err().map(|e| e.to_string()).unwrap_or_default();
        let capacities = |args: &[&str]| match parse(args).map(|cli| cli.command) {
            Ok(Command::Run(run)) => run.map_sizes.0,
            _ => panic!("{args:?} do not parse"),
        };
        assert_eq!(capacities(&[]), Capacities::default());
        let sizes = [
            "--max-service-entries",
            "8",
            "--max-backends",
            "4",
            "--max-backend-slots",
            "16",
            "--conntrack-size",
            "1024",
            "--affinity-size",
            "16777216",
        ];
        let expected = Capacities {
            services: 8,
            backends: 4,
            backend_slots: 16,
            conntrack: 1024,
            affinity: MAX_ENTRIES,
        };
        assert_eq!(capacities(&sizes), expected);
        assert!(error(&["--max-backends", "0"]).contains("at least 1 entry"));
        assert!(error(&["--conntrack-size", "16777217"]).contains("limit of 16777216"));
        assert!(error(&["--max-service-entries", "4294967296"]).contains("limit of 16777216"));
        assert!(error(&["--affinity-size=-1"]).contains("not a number of entries"));
        assert!(error(&["--max-backend-slots", "64k"]).contains("not a number of entries"));
    }

    #[test]
    fn the_lb_algorithm_and_maglev_table_size_are_checked() {
        let parse = |args: &[&str]| Cli::try_parse_from([&["lb-agent", "run"], args].concat());
        let error = |args: &[&str]| parse(args).err().map(|e| e.to_string()).unwrap_or_default();
        let selection = |args: &[&str]| match parse(args).map(|cli| cli.command) {
            Ok(Command::Run(run)) => (run.lb_algorithm, run.maglev_table_size.get()),
            _ => panic!("{args:?} do not parse"),
        };
        assert_eq!(selection(&[]), (Algorithm::Random, 1021));
        let maglev = ["--lb-algorithm", "maglev", "--maglev-table-size", "16381"];
        assert_eq!(selection(&maglev), (Algorithm::Maglev, 16381));
        assert!(error(&["--lb-algorithm", "ring"]).contains("invalid value 'ring'"));
        let not_prime = error(&["--maglev-table-size", "1000"]);
        assert!(not_prime.contains("1000 is not a prime"), "{not_prime}");
        assert!(error(&["--maglev-table-size", "131101"]).contains("between 3 and 131071"));
        assert!(error(&["--maglev-table-size", "big"]).contains("not a table size"));
    }

    #[test]
    fn masquerading_flags_are_checked() {
        let parse = |args: &[&str]| Cli::try_parse_from([&["lb-agent", "run"], args].concat());
        let error = |args: &[&str]| parse(args).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(parse(&["--masquerade-address", "198.18.1.1"]).is_ok());
        let both = parse(&["--masquerade-address", "198.18.1.1,2001:2::1"]).unwrap();
        let Command::Run(run) = both.command else {
            unreachable!("a run command")
        };
        let addrs = MasqueradeAddrs::new(&run.masquerade_address).unwrap();
        assert_eq!(addrs.v6, Some("2001:2::1".parse().unwrap()));
        assert!(parse(&["--masquerade-ports", "62000-62999"]).is_ok());
        assert!(parse(&["--no-masquerade"]).is_ok());
        assert!(error(&["--masquerade-address", "node-a"]).contains("invalid IP address"));
        assert!(error(&["--masquerade-ports", "65535-61000"]).contains("is empty"));
        assert!(error(&["--masquerade-ports", "61000"]).contains("MIN-MAX"));
        assert!(parse(&["--no-masquerade", "--masquerade-ports", "62000-62999"]).is_err());
        assert!(parse(&["--no-masquerade", "--masquerade-address", "198.18.1.1"]).is_err());
    }
}
