//! Maglev selection through the real TC and XDP programs (BPF_PROG_TEST_RUN): a new flow goes
//! to the backend the Maglev table names at its 5-tuple's hash, whatever the node-local
//! backend ids and the order endpoints arrived in, and removing one of five backends moves
//! only about a fifth of the flows.

mod fixture;

use std::net::SocketAddrV4;

use fixture::{backend, client, vip, Fixture, Verdict, HOOKS};
use lb_common::{flow_hash, ipv4_mapped, net::tcp_flags, IPPROTO_TCP};
use lb_frames::Frame;
use lb_tests::require_root;
use lb_userspace::maglev::{self, TableSize};
use lb_userspace::model::Protocol;

const TABLE_SIZE: u32 = 251;
/// The fixed set of flows: client source ports.
const PORTS: std::ops::Range<u16> = 40_000..40_200;

/// Where each flow's SYN goes.
fn destinations(fx: &mut Fixture) -> Vec<SocketAddrV4> {
    PORTS
        .map(|port| {
            let syn = Frame::tcp(client(port), vip(80), tcp_flags::SYN).to_bytes();
            let (verdict, out) = fx.run(&syn);
            assert_eq!(verdict, Verdict::Pass, "{:?}", fx.hook);
            let out = lb_frames::parse(&out).expect("a translated frame");
            let (_, dport) = out.ports.expect("ports");
            SocketAddrV4::new(out.dst, dport)
        })
        .collect()
}

/// A fresh node with the Maglev service at vip(80)/TCP over `backends`; with `history`, the
/// service first balanced to other backends, which shifts the backend ids, as on a node
/// whose past differs.
fn node(hook: fixture::Hook, backends: &[SocketAddrV4], history: bool) -> Fixture {
    let mut fx = Fixture::new(hook);
    fx.use_maglev(TABLE_SIZE);
    if history {
        let earlier: Vec<SocketAddrV4> = (6..=8).map(backend).collect();
        fx.set_services(&[(vip(80), Protocol::Tcp, &earlier)]);
    }
    fx.set_services(&[(vip(80), Protocol::Tcp, backends)]);
    fx
}

#[test]
fn new_flows_go_to_the_table_entry_at_their_hash() {
    require_root!();
    let five: Vec<SocketAddrV4> = (1..=5).map(backend).collect();
    let addrs: Vec<_> = five.iter().map(|b| ((*b.ip()).into(), b.port())).collect();
    let table = maglev::table(&addrs, TableSize::new(TABLE_SIZE).unwrap());
    for hook in HOOKS {
        let mut fx = node(hook, &five, false);
        let expected: Vec<SocketAddrV4> = PORTS
            .map(|port| {
                let hash = flow_hash(
                    &ipv4_mapped(client(port).ip().octets()),
                    &ipv4_mapped(vip(80).ip().octets()),
                    port.to_be_bytes(),
                    80u16.to_be_bytes(),
                    IPPROTO_TCP,
                );
                five[table[(hash % TABLE_SIZE) as usize]]
            })
            .collect();
        assert_eq!(destinations(&mut fx), expected, "{hook:?}");
    }
}

#[test]
fn two_nodes_agree_and_removing_one_of_five_moves_about_a_fifth() {
    require_root!();
    let five: Vec<SocketAddrV4> = (1..=5).map(backend).collect();
    let mut reversed = five.clone();
    reversed.reverse();
    let four: Vec<SocketAddrV4> = five.iter().copied().filter(|b| *b != five[2]).collect();
    for hook in HOOKS {
        let node_a = destinations(&mut node(hook, &five, false));
        let node_b = destinations(&mut node(hook, &reversed, true));
        assert_eq!(node_a, node_b, "{hook:?}: the nodes disagree");
        let used: std::collections::BTreeSet<_> = node_a.iter().collect();
        assert_eq!(used.len(), 5, "{hook:?}: every backend gets flows");

        let after = destinations(&mut node(hook, &four, false));
        let moved = node_a.iter().zip(&after).filter(|(a, b)| a != b).count();
        let on_removed = node_a.iter().filter(|b| **b == five[2]).count();
        let flows = PORTS.len();
        eprintln!(
            "{hook:?}: removing 1 of 5 backends moved {moved} of {flows} flows ({:.1}%); \
             {on_removed} were on the removed one",
            100.0 * moved as f64 / flows as f64
        );
        assert!(after.iter().all(|b| *b != five[2]));
        // Flows on the removed backend must move; of the rest, few do.
        assert!(
            moved - on_removed <= flows / 20,
            "{hook:?}: {moved} of {flows} moved"
        );
        assert!(
            moved <= flows * 3 / 10,
            "{hook:?}: {moved} of {flows} moved"
        );
    }
}
