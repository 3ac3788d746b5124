//! New flows to addresses inside the service CIDRs that no Service holds, through the real TC
//! and XDP programs (BPF_PROG_TEST_RUN): dropped (kube-proxy nftables' `cluster-ips-check`),
//! while the ClusterIP inside them is still served and rejects what it does not expose, and
//! addresses just outside them pass untouched. The ranges are written to `LB_SVC_CIDRS` by
//! the agent's own sync, which also removes a range that goes.

mod fixture;

use fixture::{
    backend,
    cases::{run_cases, Case, Expect, Output},
    client, deltas, vip, Fixture, Hook, Verdict, HOOKS,
};
use lb_common::{net::tcp_flags, net::TCP_HLEN, Counter};
use lb_frames::Frame;
use lb_tests::require_root;
use lb_userspace::model::Protocol;

/// The service CIDR around the fixture's VIP (198.19.0.1).
const SERVICE_CIDR: &str = "198.19.0.0/28";

/// A ClusterIP Service at the VIP exposing TCP port 80, inside [`SERVICE_CIDR`].
fn in_service_cidr(hook: Hook) -> Fixture {
    let mut fx = Fixture::new(hook);
    fx.set_cluster_ip_services(&[(vip(80), Protocol::Tcp, &[backend(1)])]);
    fx.set_service_cidrs(&[SERVICE_CIDR]);
    fx
}

fn dropped(name: &'static str, input: Vec<u8>) -> Case {
    Case {
        name,
        hooks: &HOOKS,
        setup: in_service_cidr,
        input,
        expect: Expect::Ran {
            verdict: Verdict::Drop,
            output: Output::Unchecked,
            counters: deltas(&[
                (Counter::Packets, 1),
                (Counter::DropUnallocatedServiceIp, 1),
            ]),
            stats: Vec::new(),
            conntrack: 0,
        },
    }
}

fn syn_to(addr: &str) -> Vec<u8> {
    Frame::tcp(client(46_000), addr.parse().unwrap(), tcp_flags::SYN).to_bytes()
}

#[test]
fn frames_to_addresses_in_and_around_the_service_cidrs() {
    require_root!();
    let udp_unallocated =
        Frame::udp(client(50_000), "198.19.0.15:53".parse().unwrap(), b"query").to_bytes();
    let syn_vip = Frame::tcp(client(46_000), vip(80), tcp_flags::SYN);
    let syn_vip_443 = Frame::tcp(client(46_000), vip(443), tcp_flags::SYN).to_bytes();

    #[rustfmt::skip]
    let cases = [
        dropped("TCP SYN to the CIDR's first address, no Service", syn_to("198.19.0.0:80")),
        dropped("TCP SYN to an unallocated address", syn_to("198.19.0.2:80")),
        dropped("UDP to the CIDR's last address, no Service", udp_unallocated),
        Case {
            name: "TCP SYN just outside the CIDR",
            hooks: &HOOKS,
            setup: in_service_cidr,
            input: syn_to("198.19.0.16:80"),
            expect: Expect::untouched(deltas(&[(Counter::Packets, 1), (Counter::NotService, 1)])),
        },
        Case {
            name: "TCP SYN to the ClusterIP's exposed port",
            hooks: &HOOKS,
            setup: in_service_cidr,
            input: syn_vip.to_bytes(),
            expect: Expect::Ran {
                verdict: Verdict::Pass,
                output: Output::Frame(syn_vip.with_dst(backend(1)).to_bytes()),
                counters: deltas(&[(Counter::Packets, 1), (Counter::NewFlows, 1)]),
                stats: Vec::new(),
                conntrack: 2,
            },
        },
        Case {
            name: "TCP SYN to a port the ClusterIP does not expose",
            hooks: &HOOKS,
            setup: in_service_cidr,
            input: syn_vip_443.clone(),
            expect: Expect::Ran {
                verdict: Verdict::SendBack,
                output: Output::Frame(Frame::port_unreachable_reply(&syn_vip_443, TCP_HLEN)),
                counters: deltas(&[(Counter::Packets, 1), (Counter::RejectUnexposedPort, 1)]),
                stats: Vec::new(),
                conntrack: 0,
            },
        },
    ];
    run_cases(&cases);
}

#[test]
fn a_removed_service_cidr_no_longer_drops() {
    require_root!();
    for hook in HOOKS {
        let mut fx = in_service_cidr(hook);
        let syn = syn_to("198.19.0.2:80");
        assert_eq!(fx.run(&syn).0, Verdict::Drop, "{hook:?}");
        fx.set_service_cidrs(&["198.19.1.0/24"]);
        let (verdict, out, moved) = fx.run_counted(&syn);
        assert_eq!((verdict, out), (Verdict::Pass, syn.clone()), "{hook:?}");
        assert_eq!(
            moved,
            deltas(&[(Counter::Packets, 1), (Counter::NotService, 1)])
        );
        assert_eq!(fx.run(&syn_to("198.19.1.200:80")).0, Verdict::Drop);
    }
}
