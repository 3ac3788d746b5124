//! Workload 3: cost per packet of the data path's XDP and TC programs, measured by the kernel
//! through BPF_PROG_TEST_RUN next to a two-instruction no-op, at each N and with conntrack
//! empty or 90% full.
//!
//! With `repeat > 1` the kernel reuses one packet buffer, so a rewritten packet comes back as
//! the next iteration's input. Hence:
//! - no-op and non-service packets (never rewritten): one run of `repeat` iterations;
//! - established: two conntrack entries translate the packet to the backend and the
//!   translated packet back to the VIP, so every iteration is a real established translation
//!   (checked: an odd repeat count ends translated, an even one as sent); also repeat = 1;
//! - new flow: repeat = 1 over distinct SYNs (a new source port each), median of the kernel's
//!   times; the no-op is measured the same way, so the fixed per-run overhead shows.
//!
//! New flows to a load-balancer IP with `loadBalancerSourceRanges` (1 and 1000 ranges, the
//! source in one of them) are measured on XDP and TC ingress, the hooks that filter by
//! source: two extra frontends, programmed with the N services, balancing to the target's
//! endpoints.
//!
//! The IPv6 cases (non-service, established, new flow) run against one IPv6 Service programmed
//! next to the N IPv4 ones, through the IPv6 programs the entry programs tail-call, so their
//! numbers include that tail call.
//!
//! The TC egress program (replies the node's own stack sends) creates no flows: its
//! "established" packet is a backend's reply, seeded in both directions the same way, and it
//! has no new-flow case. Its non-service packet is the cost every packet leaving a pod-facing
//! or the external interface pays.

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};

use ipnet::{IpNet, Ipv4Net};

use aya::maps::{HashMap, Map, MapData, RingBuf};
use lb_common::maps as registry;
use lb_common::{conntrack::ct_flags, net::tcp_flags, CtKey, CtValue};
use lb_frames::{describe, parse, parse6, Frame, Frame6};
use lb_userspace::{
    model::{map_addr, Changed, DesiredService, Endpoint, Frontend, Protocol, ServicePortName},
    reconciler::{ClusterIps, ServiceCidrs},
    Datapath, Reconciler,
};
use std::os::fd::{AsFd, BorrowedFd};

use crate::bench::{
    conntrack_fill::{self, ct_key, numbered_source},
    error::{io_context, map_context, BenchError, Result},
    interrupt,
    options::Plan,
    results::{ConntrackFill, Method, PacketCase, PacketCell},
    services::ServiceSet,
    stats::median,
    test_run::{test_run, Hook, NoopProgram, Outcome},
    variants::capacities_for,
};

/// Source of the established flow.
const CLIENT: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(198, 18, 0, 10), 40_000);
/// Source and destination of the non-service packet (pod to pod, no conntrack entry).
const NON_SERVICE: (SocketAddrV4, SocketAddrV4) = (
    SocketAddrV4::new(Ipv4Addr::new(198, 18, 0, 10), 40_001),
    SocketAddrV4::new(Ipv4Addr::new(198, 18, 0, 11), 8080),
);
/// New flows come from 198.18.64.0/19 (conntrack filler entries from
/// [`conntrack_fill::FILLER_SOURCES`]).
const NEW_FLOW_BASE: u32 = u32::from_be_bytes([198, 18, 64, 0]);
/// Load-balancer IPs with 1 and with 1000 source ranges (in 198.19.0.0/16, which the N
/// services' VIPs, counted up from 198.19.0.1, reach only beyond 65,000 services).
const LB_ONE_RANGE: Ipv4Addr = Ipv4Addr::new(198, 19, 255, 1);
const LB_THOUSAND_RANGES: Ipv4Addr = Ipv4Addr::new(198, 19, 255, 2);
/// The service CIDR around every VIP.
const SERVICE_CIDR: Ipv4Net = match Ipv4Net::new(Ipv4Addr::new(198, 19, 0, 0), 16) {
    Ok(net) => net,
    Err(_) => panic!("a valid prefix length"),
};
/// The IPv6 Service's address (port: the N services').
const VIP6: Ipv6Addr = Ipv6Addr::new(0x2001, 2, 0, 0x53, 0, 0, 0, 1);
/// Source of the established IPv6 flow.
const CLIENT6: SocketAddrV6 =
    SocketAddrV6::new(Ipv6Addr::new(0x2001, 2, 0, 0, 0, 0, 0, 0x0a), 40_000, 0, 0);
/// Source and destination of the IPv6 non-service packet.
const NON_SERVICE6: (SocketAddrV6, SocketAddrV6) = (
    SocketAddrV6::new(Ipv6Addr::new(0x2001, 2, 0, 0, 0, 0, 0, 0x0a), 40_001, 0, 0),
    SocketAddrV6::new(Ipv6Addr::new(0x2001, 2, 0, 0, 0, 0, 0, 0x0b), 8080, 0, 0),
);
/// New IPv6 flows come from 2001:2:0:40::/64, one address per flow.
const NEW_FLOW6_BASE: u128 =
    u128::from_be_bytes([0x20, 0x01, 0, 2, 0, 0, 0, 0x40, 0, 0, 0, 0, 0, 0, 0, 0]);
/// The IPv6 Service's endpoints are 2001:2:1::1, 2001:2:1::2, ...
const ENDPOINT6_BASE: u128 =
    u128::from_be_bytes([0x20, 0x01, 0, 2, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
/// Payload of the established data packet.
const PAYLOAD: [u8; 64] = [0x42; 64];

/// Measures every case at every size of the plan.
pub fn run(plan: &Plan) -> Result<Vec<PacketCell>> {
    let mut cells = Vec::new();
    for &services in &plan.sizes {
        crate::bench::progress(&format!("per-packet, {services} services"));
        let mut bench = PacketBench::new(plan, services)?;
        for fill in [ConntrackFill::Empty, ConntrackFill::NinetyPercent] {
            if fill == ConntrackFill::NinetyPercent {
                bench.fill_conntrack(0.9)?;
            }
            for hook in Hook::ALL {
                bench.verify(hook)?;
                cells.extend(bench.measure(plan, hook, fill)?);
            }
        }
    }
    Ok(cells)
}

/// The data path with N services programmed, the no-ops and the frames.
struct PacketBench {
    datapath: Datapath,
    conntrack: HashMap<MapData, CtKey, CtValue>,
    conntrack_capacity: u32,
    /// The XDP and the TC no-op.
    noops: [NoopProgram; 2],
    services: u32,
    /// The packets of the IPv4 cases, and of the IPv6 cases.
    v4: Packets,
    v6: Packets,
    target_endpoints: Vec<SocketAddrV4>,
    /// The IPv6 Service's frontend and endpoints.
    vip6: SocketAddrV6,
    endpoints6: Vec<SocketAddrV6>,
    vip: SocketAddrV4,
    /// New flows used so far (each gets its own source address and port).
    flows: u32,
    /// With [`MONITOR_VAR`] set: the programs' events, drained after each case.
    events: Option<RingBuf<MapData>>,
}

/// One family's packets, serialised.
struct Packets {
    /// The established packet as sent, and translated to the backend.
    sent: Vec<u8>,
    translated: Vec<u8>,
    /// The backend's reply as the node sends it, and translated to come from the VIP.
    reply: Vec<u8>,
    reply_translated: Vec<u8>,
    non_service: Vec<u8>,
}

impl Packets {
    /// The established packet `hook` translates, as sent and as translated: the client's at
    /// ingress, the backend's reply at egress.
    fn established(&self, hook: Hook) -> (&[u8], &[u8]) {
        match hook {
            Hook::Xdp | Hook::Tc => (&self.sent, &self.translated),
            Hook::TcEgress => (&self.reply, &self.reply_translated),
        }
    }
}

/// Set (to anything), the data path runs as with one `lb-agent monitor` client connected:
/// new flows write an event each, which the benchmark drains between cases.
pub const MONITOR_VAR: &str = "LB_BENCH_MONITOR";

impl PacketBench {
    fn new(plan: &Plan, services: u32) -> Result<PacketBench> {
        let set = ServiceSet::new(services, plan.endpoints);
        let capacities = capacities_for(&set, plan.endpoints);
        let mut datapath = Datapath::load(&capacities)?;
        let mut desired = set.desired_state();
        let endpoints = set.endpoints(set.target_index());
        let vip6 = SocketAddrV6::new(VIP6, crate::bench::services::VIP_PORT, 0, 0);
        let endpoints6: Vec<SocketAddrV6> = (1..=u128::from(plan.endpoints))
            .map(|i| SocketAddrV6::new((ENDPOINT6_BASE + i).into(), endpoints[0].port(), 0, 0))
            .collect();
        desired.extend([
            ranged(LB_ONE_RANGE, &endpoints, 1),
            ranged(LB_THOUSAND_RANGES, &endpoints, 1000),
            ipv6_service(vip6, &endpoints6),
        ]);
        let summary = Reconciler::new(&capacities).apply(&desired, datapath.maps())?;
        // Every VIP is a ClusterIP: a non-service packet pays the miss in LB_CLUSTER_IPS at
        // its full size, as on a node.
        ClusterIps::default()
            .sync(&desired, &Changed::Everything, datapath.maps())
            .map_err(|e| BenchError::Check(format!("listing the cluster IPs: {e}")))?;
        // And the VIPs' service CIDR: a non-service packet (to a pod) also pays the miss in
        // LB_SVC_CIDRS.
        ServiceCidrs::default()
            .sync(&BTreeSet::from([IpNet::V4(SERVICE_CIDR)]), datapath.maps())
            .map_err(|e| BenchError::Check(format!("writing the service CIDR: {e}")))?;
        if !summary.rejected.is_empty() {
            return Err(BenchError::Check(format!(
                "{} services did not fit the data path",
                summary.rejected.len()
            )));
        }
        let conntrack = open_conntrack(&datapath)?;
        let events = match std::env::var_os(MONITOR_VAR) {
            Some(_) => {
                datapath
                    .maps()
                    .set_monitor_clients(1)
                    .map_err(|e| BenchError::Check(format!("opening the monitor gate: {e}")))?;
                let events = datapath.events();
                Some(events.map_err(|e| BenchError::Check(format!("the ring buffer: {e}")))?)
            }
            None => None,
        };
        let noops = [NoopProgram::load(Hook::Xdp), NoopProgram::load(Hook::Tc)];
        let [xdp, tc] = noops.map(|n| n.map_err(io_context("loading the no-op program")));
        let vip = set.target_vip();
        let target_endpoints = set.endpoints(set.target_index());
        let backend = target_endpoints[0];
        let sent = Frame::tcp(CLIENT, vip, tcp_flags::ACK).with_payload(&PAYLOAD);
        let reply = Frame::tcp(backend, CLIENT, tcp_flags::ACK).with_payload(&PAYLOAD);
        let v4 = Packets {
            translated: sent.clone().with_dst(backend).to_bytes(),
            sent: sent.to_bytes(),
            reply_translated: reply.clone().with_src(vip).to_bytes(),
            reply: reply.to_bytes(),
            non_service: Frame::tcp(NON_SERVICE.0, NON_SERVICE.1, tcp_flags::ACK)
                .with_payload(&PAYLOAD)
                .to_bytes(),
        };
        let sent6 = Frame6::tcp(CLIENT6, vip6, tcp_flags::ACK).with_payload(&PAYLOAD);
        let reply6 = Frame6::tcp(endpoints6[0], CLIENT6, tcp_flags::ACK).with_payload(&PAYLOAD);
        let v6 = Packets {
            translated: sent6.clone().with_dst(endpoints6[0]).to_bytes(),
            sent: sent6.to_bytes(),
            reply_translated: reply6.clone().with_src(vip6).to_bytes(),
            reply: reply6.to_bytes(),
            non_service: Frame6::tcp(NON_SERVICE6.0, NON_SERVICE6.1, tcp_flags::ACK)
                .with_payload(&PAYLOAD)
                .to_bytes(),
        };
        let mut bench = PacketBench {
            datapath,
            conntrack,
            conntrack_capacity: capacities.conntrack,
            noops: [xdp?, tc?],
            services,
            v4,
            v6,
            target_endpoints,
            vip6,
            endpoints6,
            vip,
            flows: 0,
            events,
        };
        bench.seed_established(CLIENT, vip, backend)?;
        bench.seed_established(CLIENT6, vip6, bench.endpoints6[0])?;
        Ok(bench)
    }

    /// The established flow `client -> vip` (balanced to `backend`): its forward entry, and
    /// one translating the translated packet back, so repeated runs alternate between the two
    /// real translations; likewise its reply entry and one translating the translated reply
    /// back. All are marked answered (`SEEN_REPLY`), as an established flow's entries are
    /// after the backend's first reply.
    fn seed_established<A: Copy + Into<SocketAddr>>(
        &mut self,
        client: A,
        vip: A,
        backend: A,
    ) -> Result<()> {
        let (vip, backend) = (vip.into(), backend.into());
        let (group_id, backend_id) = self.target_ids(vip, backend)?;
        let entry = |nat: SocketAddr, flags| CtValue {
            nat_addr: map_addr(nat.ip()),
            nat_port: nat.port().to_be_bytes(),
            flags,
            group_id,
            backend_id,
            ..CtValue::default()
        };
        for (dst, nat) in [(vip, backend), (backend, vip)] {
            self.conntrack
                .insert(
                    ct_key(client, dst),
                    entry(nat, ct_flags::FORWARD | ct_flags::SEEN_REPLY),
                    0,
                )
                .map_err(map_context("seeding the established flow"))?;
            self.conntrack
                .insert(
                    ct_key(nat, client),
                    entry(dst, ct_flags::REPLY | ct_flags::SEEN_REPLY),
                    0,
                )
                .map_err(map_context("seeding the established flow's replies"))?;
        }
        Ok(())
    }

    /// The id of the service at `vip` and `backend`'s id, as the reconciler assigned them.
    fn target_ids(&mut self, vip: SocketAddr, backend: SocketAddr) -> Result<(u32, u32)> {
        let vip_addr = map_addr(vip.ip());
        let maps = self.datapath.maps();
        let service = maps
            .services()?
            .into_iter()
            .find(|(key, _)| key.addr == vip_addr && key.port() == vip.port())
            .map(|(_, value)| value.group_id);
        let backend_addr = map_addr(backend.ip());
        let backend = maps
            .backends()?
            .into_iter()
            .find(|(_, b)| b.addr == backend_addr && b.port() == backend.port())
            .map(|(id, _)| id);
        service.zip(backend).ok_or_else(|| {
            BenchError::Check("the target service or its backend is not in the maps".into())
        })
    }

    /// Fills conntrack with distinct forward entries up to `share` of its capacity.
    fn fill_conntrack(&mut self, share: f64) -> Result<()> {
        let wanted = (f64::from(self.conntrack_capacity) * share) as u32;
        let value = CtValue {
            nat_addr: map_addr(std::net::IpAddr::V4(*self.target_endpoints[0].ip())),
            nat_port: self.target_endpoints[0].port().to_be_bytes(),
            flags: ct_flags::FORWARD,
            ..CtValue::default()
        };
        let present = self.conntrack.keys().count() as u32;
        conntrack_fill::fill(
            &mut self.conntrack,
            (present, wanted),
            conntrack_fill::FILLER_SOURCES,
            self.vip,
            value,
        )
    }

    /// Checks that each case does what it is measured for, on `hook`.
    fn verify(&mut self, hook: Hook) -> Result<()> {
        let pass = hook.pass_verdict();
        let mut syns = vec![
            (SocketAddr::from(self.vip), self.new_flow_frame()),
            (SocketAddr::from(self.vip6), self.new_flow_frame6()),
        ];
        if hook == Hook::Xdp {
            for lb in [LB_ONE_RANGE, LB_THOUSAND_RANGES] {
                let vip = SocketAddrV4::new(lb, self.vip.port());
                syns.push((vip.into(), self.new_flow_frame_to(vip)));
            }
        }
        let program = self.program(hook)?;
        let expect = |what: &str, outcome: &Outcome, frame: &[u8]| {
            if outcome.verdict != pass || outcome.frame != frame {
                return Err(BenchError::Check(format!(
                    "{hook:?} {what}: verdict {} and frame {} (expected {pass} and {})",
                    outcome.verdict,
                    describe(&outcome.frame),
                    describe(frame)
                )));
            }
            Ok(())
        };
        let run = |frame: &[u8], repeat: u32| {
            test_run(program, frame, repeat).map_err(io_context("BPF_PROG_TEST_RUN"))
        };
        for (family, packets) in [("IPv4", &self.v4), ("IPv6", &self.v6)] {
            let (sent, translated) = packets.established(hook);
            expect(
                &format!("{family} established, once"),
                &run(sent, 1)?,
                translated,
            )?;
            expect(
                &format!("{family} established, twice"),
                &run(sent, 2)?,
                sent,
            )?;
            let outcome = run(sent, 101)?;
            expect(
                &format!("{family} established, 101 times"),
                &outcome,
                translated,
            )?;
            let non_service = &packets.non_service;
            expect(
                &format!("{family} non-service"),
                &run(non_service, 3)?,
                non_service,
            )?;
        }
        for (vip, syn) in syns {
            let outcome = run(&syn, 1)?;
            if hook == Hook::TcEgress {
                // Egress never starts a flow: the SYN leaves untouched.
                expect(&format!("a SYN to {vip}"), &outcome, &syn)?;
                continue;
            }
            let chosen = destination(&outcome.frame)
                .map_err(|e| BenchError::Check(format!("{hook:?} new flow to {vip}: {e}")))?;
            if outcome.verdict != pass || !chosen.is_some_and(|c| self.is_endpoint(c)) {
                return Err(BenchError::Check(format!(
                    "{hook:?} new flow to {vip}: verdict {}, translated to {chosen:?}, not one \
                     of the target's endpoints",
                    outcome.verdict
                )));
            }
        }
        Ok(())
    }

    /// Whether `addr` is an endpoint of the target service or of the IPv6 one.
    fn is_endpoint(&self, addr: SocketAddr) -> bool {
        match addr {
            SocketAddr::V4(addr) => self.target_endpoints.contains(&addr),
            SocketAddr::V6(addr) => self.endpoints6.contains(&addr),
        }
    }

    /// Every case, `plan.runs` times.
    fn measure(&mut self, plan: &Plan, hook: Hook, fill: ConntrackFill) -> Result<Vec<PacketCell>> {
        use Method::{Repeat, Single};
        use PacketCase::{
            Established, Established6, NewFlow, NewFlow6, NewFlowOneRange, NewFlowThousandRanges,
            NoOp, NonService, NonService6,
        };
        // Egress starts no flows: only the first five and the IPv6 non-service and established.
        let cases = [
            (NoOp, Repeat),
            (NonService, Repeat),
            (Established, Repeat),
            (NoOp, Single),
            (Established, Single),
            (NonService6, Repeat),
            (Established6, Repeat),
            (NewFlow, Single),
            (NewFlowOneRange, Single),
            (NewFlowThousandRanges, Single),
            (NewFlow6, Single),
        ];
        let cases = &cases[..match hook {
            Hook::TcEgress => 7,
            Hook::Tc | Hook::Xdp => cases.len(),
        }];
        let mut samples = vec![Vec::new(); cases.len()];
        // The no-op's repeat count is odd like the others', though it changes nothing.
        let repeat = plan.repeat | 1;
        let mut events = self.events.take();
        for _ in 0..plan.runs {
            interrupt::check()?;
            let frames: Vec<Vec<u8>> = (0..plan.single_frames)
                .map(|_| self.new_flow_frame())
                .collect();
            let to_lb = |bench: &mut Self, lb| -> Vec<Vec<u8>> {
                let vip = SocketAddrV4::new(lb, bench.vip.port());
                (0..plan.single_frames)
                    .map(|_| bench.new_flow_frame_to(vip))
                    .collect()
            };
            let one_range = to_lb(self, LB_ONE_RANGE);
            let thousand_ranges = to_lb(self, LB_THOUSAND_RANGES);
            let frames6: Vec<Vec<u8>> = (0..plan.single_frames)
                .map(|_| self.new_flow_frame6())
                .collect();
            let program = self.program(hook)?;
            let noop = self.noop(hook);
            let (sent, _) = self.v4.established(hook);
            let (sent6, _) = self.v6.established(hook);
            let count = plan.single_frames as usize;
            for (sample, &case) in samples.iter_mut().zip(cases) {
                sample.push(match case {
                    (NoOp, Repeat) => repeated_ns(noop, sent, repeat)?,
                    (NonService, _) => repeated_ns(program, &self.v4.non_service, repeat)?,
                    (NonService6, _) => repeated_ns(program, &self.v6.non_service, repeat)?,
                    (Established, Repeat) => repeated_ns(program, sent, repeat)?,
                    (Established6, _) => repeated_ns(program, sent6, repeat)?,
                    (NewFlow6, _) => single_ns(program, frames6.iter().map(Vec::as_slice))?,
                    (NoOp, Single) => single_ns(noop, frames.iter().map(Vec::as_slice))?,
                    (Established, Single) => single_ns(program, std::iter::repeat_n(sent, count))?,
                    (NewFlow, _) => single_ns(program, frames.iter().map(Vec::as_slice))?,
                    (NewFlowOneRange, _) => {
                        single_ns(program, one_range.iter().map(Vec::as_slice))?
                    }
                    (NewFlowThousandRanges, _) => {
                        single_ns(program, thousand_ranges.iter().map(Vec::as_slice))?
                    }
                });
                // A case writes fewer events than the ring buffer holds.
                if let Some(ring) = &mut events {
                    while ring.next().is_some() {}
                }
            }
            if fill == ConntrackFill::Empty {
                self.clear_new_flows()?;
            }
        }
        self.events = events;
        Ok(cases
            .iter()
            .zip(samples)
            .map(|(&(case, method), ns)| PacketCell {
                hook,
                conntrack: fill,
                services: self.services,
                case,
                method,
                ns,
            })
            .collect())
    }

    fn program(&self, hook: Hook) -> Result<BorrowedFd<'_>> {
        let fd = match hook {
            Hook::Xdp => self.datapath.xdp_program().fd(),
            Hook::Tc => self.datapath.tc_program().fd(),
            Hook::TcEgress => self.datapath.tc_egress_program().fd(),
        };
        fd.map(|fd| fd.as_fd())
            .map_err(|source| BenchError::Program {
                context: format!("{hook:?} program descriptor"),
                source,
            })
    }

    /// The no-op of `hook`'s program type.
    fn noop(&self, hook: Hook) -> BorrowedFd<'_> {
        let [xdp, tc] = &self.noops;
        match hook {
            Hook::Xdp => xdp.as_fd(),
            Hook::Tc | Hook::TcEgress => tc.as_fd(),
        }
    }

    /// A SYN of a flow not seen before.
    fn new_flow_frame(&mut self) -> Vec<u8> {
        self.new_flow_frame_to(self.vip)
    }

    /// A SYN of an IPv6 flow not seen before, to the IPv6 Service.
    fn new_flow_frame6(&mut self) -> Vec<u8> {
        let src = SocketAddrV6::new(
            (NEW_FLOW6_BASE + u128::from(self.flows)).into(),
            10_000,
            0,
            0,
        );
        self.flows += 1;
        Frame6::tcp(src, self.vip6, tcp_flags::SYN).to_bytes()
    }

    /// A SYN of a flow not seen before, to `vip`.
    fn new_flow_frame_to(&mut self, vip: SocketAddrV4) -> Vec<u8> {
        let src = numbered_source(NEW_FLOW_BASE, self.flows);
        self.flows += 1;
        Frame::tcp(src, vip, tcp_flags::SYN).to_bytes()
    }

    /// Deletes the entries new flows created, keeping conntrack empty but for the seeds.
    fn clear_new_flows(&mut self) -> Result<()> {
        let clients = [IpAddr::V4(*CLIENT.ip()), IpAddr::V6(*CLIENT6.ip())].map(map_addr);
        let seeded =
            |key: &CtKey| clients.contains(&key.src_addr) || clients.contains(&key.dst_addr);
        let keys = self
            .conntrack
            .keys()
            .collect::<std::result::Result<Vec<CtKey>, _>>()
            .map_err(map_context("listing conntrack"))?;
        for key in keys.iter().filter(|k| !seeded(k)) {
            // An entry the LRU evicted meanwhile is gone either way.
            let _ = self.conntrack.remove(key);
        }
        Ok(())
    }
}

/// A load-balancer IP frontend at `lb` balancing to `endpoints`, admitting new flows from
/// `ranges` source ranges: `ranges - 1` /32s in 203.0.0.0/16, which hold no source, and
/// the new flows' 198.18.64.0/19.
fn ranged(lb: Ipv4Addr, endpoints: &[SocketAddrV4], ranges: u32) -> (Frontend, DesiredService) {
    let frontend = Frontend {
        addr: IpAddr::V4(lb),
        port: crate::bench::services::VIP_PORT,
        protocol: Protocol::Tcp,
    };
    let name = ServicePortName {
        namespace: "bench".into(),
        name: format!("source-ranges-{ranges}"),
        port_name: String::new(),
    };
    let endpoints = endpoints.iter().map(|e| Endpoint {
        addr: IpAddr::V4(*e.ip()),
        port: e.port(),
        local: true,
    });
    let mut service = DesiredService::uniform(name, endpoints.collect());
    let others = (1..ranges).map(|i| {
        let addr = Ipv4Addr::from(u32::from_be_bytes([203, 0, 0, 0]) + i);
        IpNet::from(IpAddr::V4(addr))
    });
    let sources = IpNet::new(Ipv4Addr::from(NEW_FLOW_BASE).into(), 19).expect("a /19");
    service.source_ranges = others.chain([sources]).collect();
    (frontend, service)
}

/// An IPv6 Service at `vip` balancing to `endpoints` (on this node).
fn ipv6_service(vip: SocketAddrV6, endpoints: &[SocketAddrV6]) -> (Frontend, DesiredService) {
    let frontend = Frontend {
        addr: IpAddr::V6(*vip.ip()),
        port: vip.port(),
        protocol: Protocol::Tcp,
    };
    let name = ServicePortName {
        namespace: "bench".into(),
        name: "ipv6".into(),
        port_name: String::new(),
    };
    let endpoints = endpoints.iter().map(|e| Endpoint {
        addr: IpAddr::V6(*e.ip()),
        port: e.port(),
        local: true,
    });
    (frontend, DesiredService::uniform(name, endpoints.collect()))
}

/// The destination of a translated frame of either family (`None` without ports).
fn destination(frame: &[u8]) -> std::result::Result<Option<SocketAddr>, lb_frames::ParseError> {
    if let Ok(parsed) = parse6(frame) {
        let dst = |(_, port)| SocketAddr::from(SocketAddrV6::new(parsed.dst, port, 0, 0));
        return Ok(parsed.ports.map(dst));
    }
    let parsed = parse(frame)?;
    Ok(parsed
        .ports
        .map(|(_, port)| SocketAddrV4::new(parsed.dst, port).into()))
}

/// The kernel's time per iteration of one run of `repeat` iterations.
fn repeated_ns(program: BorrowedFd<'_>, frame: &[u8], repeat: u32) -> Result<f64> {
    let outcome = test_run(program, frame, repeat).map_err(io_context("BPF_PROG_TEST_RUN"))?;
    Ok(f64::from(outcome.duration_ns))
}

/// The median of the kernel's times of one run (repeat = 1) per frame.
fn single_ns<'a>(program: BorrowedFd<'_>, frames: impl Iterator<Item = &'a [u8]>) -> Result<f64> {
    let mut ns = frames
        .map(|frame| {
            test_run(program, frame, 1)
                .map(|outcome| f64::from(outcome.duration_ns))
                .map_err(io_context("BPF_PROG_TEST_RUN"))
        })
        .collect::<Result<Vec<f64>>>()?;
    Ok(median(&mut ns))
}

/// The data path's conntrack map, opened by id from the programs' maps.
fn open_conntrack(datapath: &Datapath) -> Result<HashMap<MapData, CtKey, CtValue>> {
    let program_error = |source| BenchError::Program {
        context: "reading the XDP program's map ids".into(),
        source,
    };
    let ids = datapath
        .xdp_program()
        .info()
        .and_then(|info| info.map_ids())
        .map_err(program_error)?
        .unwrap_or_default();
    for id in ids {
        let data = MapData::from_id(id).map_err(map_context("opening a map by id"))?;
        let info = data.info().map_err(map_context("reading a map's info"))?;
        if info.name_as_str() == Some(registry::CONNTRACK.name) {
            return HashMap::try_from(Map::LruHashMap(data))
                .map_err(map_context("opening the conntrack map"));
        }
    }
    Err(BenchError::Check(format!(
        "the XDP program uses no map named {}",
        registry::CONNTRACK.name
    )))
}
