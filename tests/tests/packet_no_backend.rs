//! Services without a usable backend through the real TC and XDP programs (BPF_PROG_TEST_RUN):
//! new TCP and UDP flows are rejected as kube-proxy does (ICMP port unreachable from the
//! frontend, sent back out of the arrival interface: `TC_ACT_REDIRECT` / `XDP_TX`), or dropped
//! when the service entry says so (`DROP_IF_NO_BACKEND`) or the source may get no ICMP error
//! (`drop_reject_source`). Every case is one frame on fresh maps: one table, run by
//! [`run_cases`].

mod fixture;

use fixture::{
    cases::{run_cases, Case, Expect, Output, Service, Stat},
    client, deltas, vip, Fixture, Hook, Verdict, HOOKS,
};
use lb_common::{
    net::{tcp_flags, IPPROTO_ICMP, TCP_HLEN, UDP_HLEN},
    service::{scope, service_flags},
    Counter, ServiceValue, IPPROTO_TCP, IPPROTO_UDP,
};
use lb_frames::{Frame, L4};
use lb_tests::require_root;
use lb_userspace::model::Protocol;

const MSS_1460: [u8; 4] = [2, 4, 0x05, 0xb4];
const ROUTER_ALERT: [u8; 4] = [0x94, 0x04, 0x00, 0x00];
/// Ids of the services [`dropping_services`] programs.
const DROPPING_TCP: u32 = 7;
const DROPPING_UDP: u32 = 8;

/// A fixture whose TCP service on port 80 and UDP service on port 53 have no endpoints,
/// programmed by the agent's reconciler.
fn empty_services(hook: Hook) -> Fixture {
    let mut fx = Fixture::new(hook);
    fx.set_services(&[(vip(80), Protocol::Tcp, &[]), (vip(53), Protocol::Udp, &[])]);
    fx
}

/// A fixture whose TCP service on port 80 and UDP service on port 53 have no backends and
/// drop (`DROP_IF_NO_BACKEND`), written as a policy-driven scope entry would be.
fn dropping_services(hook: Hook) -> Fixture {
    let mut fx = Fixture::new(hook);
    let value = ServiceValue {
        group_id: DROPPING_TCP,
        backend_count: 0,
        flags: service_flags::DROP_IF_NO_BACKEND,
        affinity_timeout_s: 0,
    };
    let scopes = [scope::EXTERNAL, scope::INTERNAL];
    fx.program(vip(80), IPPROTO_TCP, &scopes, value, &[]);
    let udp = ServiceValue {
        group_id: DROPPING_UDP,
        ..value
    };
    fx.program(vip(53), IPPROTO_UDP, &scopes, udp, &[]);
    fx
}

/// A row: `input` to an empty service is answered with exactly `reply` (whose checksums
/// verify), moves the reject counters and creates no flow.
fn rejected(name: &'static str, input: Vec<u8>, reply: Vec<u8>, protocol: u8) -> Case {
    let frontend = vip(if protocol == IPPROTO_TCP { 80 } else { 53 });
    let service = Service::At(frontend, protocol);
    Case {
        name,
        hooks: &HOOKS,
        setup: empty_services,
        input,
        expect: Expect::Ran {
            verdict: Verdict::SendBack,
            output: Output::Frame(reply),
            counters: deltas(&[(Counter::Packets, 1), (Counter::RejectNoBackend, 1)]),
            stats: vec![
                (service, Stat::Rejects, 1),
                (service, Stat::Drops, 0),
                (service, Stat::NewFlows, 0),
            ],
            conntrack: 0,
        },
    }
}

/// A row: `input` to `service` is dropped for want of a backend, counted as `reason`.
fn dropped(
    name: &'static str,
    setup: fn(Hook) -> Fixture,
    input: Vec<u8>,
    service: Service,
    reason: Counter,
) -> Case {
    Case {
        name,
        hooks: &HOOKS,
        setup,
        input,
        expect: Expect::Ran {
            verdict: Verdict::Drop,
            output: Output::Unchecked,
            counters: deltas(&[(Counter::Packets, 1), (reason, 1)]),
            stats: vec![(service, Stat::Drops, 1), (service, Stat::Rejects, 0)],
            conntrack: 0,
        },
    }
}

/// A row: `input` to an empty service passes untouched, moving `packets` and `reason`.
fn untouched(name: &'static str, input: Vec<u8>, reason: Counter) -> Case {
    Case {
        name,
        hooks: &HOOKS,
        setup: empty_services,
        input,
        expect: Expect::untouched(deltas(&[(Counter::Packets, 1), (reason, 1)])),
    }
}

#[test]
fn frames_to_services_without_backends() {
    require_root!();
    let syn = |port| Frame::tcp(client(port), vip(80), tcp_flags::SYN);
    let query = |port, payload: &[u8]| Frame::udp(client(port), vip(53), payload);
    let syn_mss = syn(46_000).with_tcp_options(&MSS_1460).to_bytes();
    let syn_router_alert = syn(46_001).with_ip_options(&ROUTER_ALERT).to_bytes();
    let dns = query(50_000, b"query: demo.default.svc?").to_bytes();
    let max_options = query(50_001, b"x").with_ip_options(&[0x01; 40]).to_bytes();
    let no_checksum = query(50_002, b"").with_udp_zero_checksum().to_bytes();
    let short = query(50_003, b"q").to_bytes();
    let mut padded = short.clone();
    padded.resize(60, 0);
    // The fixed TCP header is quoted (more than RFC 792's 8 bytes; see lb-ebpf's reject
    // module), its options are not; Ethernet padding is not quoted.
    let tcp_reply = |bytes: &[u8]| Frame::port_unreachable_reply(bytes, TCP_HLEN);
    let udp_reply = |bytes: &[u8]| Frame::port_unreachable_reply(bytes, UDP_HLEN);
    let echo_request = syn(46_003).with_l4(L4::Raw {
        protocol: IPPROTO_ICMP,
        bytes: vec![8, 0, 0xf7, 0xff, 0, 0, 0, 0],
    });
    let from = |source: &str| Frame::udp(source.parse().unwrap(), vip(53), b"query").to_bytes();
    let syn_from_loopback = Frame::tcp("127.0.0.1:46004".parse().unwrap(), vip(80), tcp_flags::SYN);
    let (dropping, empty) = (dropping_services, empty_services);
    let (empty_tcp, empty_udp) = (
        Service::At(vip(80), IPPROTO_TCP),
        Service::At(vip(53), IPPROTO_UDP),
    );
    use Counter::{DropNoBackend, DropRejectSource, OtherProtocol};

    #[rustfmt::skip]
    let cases = [
        rejected("TCP SYN with MSS", syn_mss.clone(), tcp_reply(&syn_mss), IPPROTO_TCP),
        rejected("TCP SYN with router alert", syn_router_alert.clone(),
                 tcp_reply(&syn_router_alert), IPPROTO_TCP),
        rejected("UDP query", dns.clone(), udp_reply(&dns), IPPROTO_UDP),
        rejected("UDP with 40 option bytes", max_options.clone(), udp_reply(&max_options),
                 IPPROTO_UDP),
        rejected("UDP checksum 0", no_checksum.clone(), udp_reply(&no_checksum), IPPROTO_UDP),
        rejected("UDP with Ethernet padding", padded, udp_reply(&short), IPPROTO_UDP),
        dropped("TCP SYN, dropping service", dropping, syn(46_002).to_bytes(),
                Service::Id(DROPPING_TCP), DropNoBackend),
        dropped("UDP, dropping service", dropping, query(50_004, b"query").to_bytes(),
                Service::Id(DROPPING_UDP), DropNoBackend),
        dropped("UDP from the broadcast address", empty, from("255.255.255.255:68"), empty_udp,
                DropRejectSource),
        dropped("UDP from a multicast address", empty, from("224.0.0.251:5353"), empty_udp,
                DropRejectSource),
        dropped("UDP from 0.0.0.0", empty, from("0.0.0.0:68"), empty_udp, DropRejectSource),
        dropped("TCP SYN from loopback", empty, syn_from_loopback.to_bytes(), empty_tcp,
                DropRejectSource),
        untouched("ICMP echo request", echo_request.to_bytes(), OtherProtocol),
    ];
    run_cases(&cases);
}
