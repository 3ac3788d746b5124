//! New flows to a ClusterIP on a port or protocol no Service exposes, through the real TC and
//! XDP programs (BPF_PROG_TEST_RUN): rejected with ICMP port unreachable from the ClusterIP
//! (kube-proxy nftables' `cluster-ips` reject), or dropped when the source may not get an
//! ICMP error; other addresses pass untouched. The ClusterIP is listed in `LB_CLUSTER_IPS`
//! by the agent's own sync.

mod fixture;

use fixture::{
    backend,
    cases::{run_cases, Case, Expect, Output},
    client, deltas, vip, Fixture, Hook, Verdict, HOOKS,
};
use lb_common::{
    net::{tcp_flags, TCP_HLEN, UDP_HLEN},
    Counter,
};
use lb_frames::Frame;
use lb_tests::require_root;
use lb_userspace::model::Protocol;

/// A ClusterIP Service exposing TCP port 80 only.
fn cluster_ip_tcp_80(hook: Hook) -> Fixture {
    let mut fx = Fixture::new(hook);
    fx.set_cluster_ip_services(&[(vip(80), Protocol::Tcp, &[backend(1)])]);
    fx
}

/// The same Service not listed as a ClusterIP (a node port or external IP frontend).
fn external_tcp_80(hook: Hook) -> Fixture {
    Fixture::with_service(hook, vip(80), Protocol::Tcp, &[backend(1)])
}

fn rejected(name: &'static str, input: Vec<u8>, quoted_l4: usize) -> Case {
    let reply = Frame::port_unreachable_reply(&input, quoted_l4);
    Case {
        name,
        hooks: &HOOKS,
        setup: cluster_ip_tcp_80,
        input,
        expect: Expect::Ran {
            verdict: Verdict::SendBack,
            output: Output::Frame(reply),
            counters: deltas(&[(Counter::Packets, 1), (Counter::RejectUnexposedPort, 1)]),
            stats: Vec::new(),
            conntrack: 0,
        },
    }
}

fn untouched(name: &'static str, setup: fn(Hook) -> Fixture, input: Vec<u8>) -> Case {
    Case {
        name,
        hooks: &HOOKS,
        setup,
        input,
        expect: Expect::untouched(deltas(&[(Counter::Packets, 1), (Counter::NotService, 1)])),
    }
}

#[test]
fn frames_to_unexposed_ports_of_a_cluster_ip() {
    require_root!();
    let syn_443 = Frame::tcp(client(46_000), vip(443), tcp_flags::SYN).to_bytes();
    let udp_80 = Frame::udp(client(50_000), vip(80), b"query").to_bytes();
    let from_broadcast =
        Frame::udp("255.255.255.255:68".parse().unwrap(), vip(67), b"query").to_bytes();
    let other_addr = "198.19.0.2:443".parse().unwrap();
    let syn_other_addr = Frame::tcp(client(46_001), other_addr, tcp_flags::SYN).to_bytes();

    #[rustfmt::skip]
    let cases = [
        rejected("TCP SYN to a port the Service does not expose", syn_443.clone(), TCP_HLEN),
        rejected("UDP to a port exposed only for TCP", udp_80.clone(), UDP_HLEN),
        Case {
            name: "UDP from the broadcast address",
            hooks: &HOOKS,
            setup: cluster_ip_tcp_80,
            input: from_broadcast,
            expect: Expect::Ran {
                verdict: Verdict::Drop,
                output: Output::Unchecked,
                counters: deltas(&[(Counter::Packets, 1), (Counter::DropUnexposedPort, 1)]),
                stats: Vec::new(),
                conntrack: 0,
            },
        },
        untouched("TCP SYN to an address that is no ClusterIP", cluster_ip_tcp_80, syn_other_addr),
        untouched("TCP SYN to another port of a frontend that is no ClusterIP", external_tcp_80,
                  syn_443),
    ];
    run_cases(&cases);
}
