//! The redirect reply path (`lb_common::config::reply_path::REDIRECT`) through the real TC and
//! XDP programs (BPF_PROG_TEST_RUN), run inside a namespace whose FIB the test sets up: the
//! node's LAN interface 198.18.0.2/24 with a permanent neighbour entry for the client. A
//! translated reply at TC goes to the FIB's egress device (`TC_ACT_REDIRECT`) with the
//! neighbour's and the interface's MAC addresses and the TTL decremented, or through
//! `bpf_redirect_neigh` when the neighbour is unresolved; what the FIB does not forward, a
//! TTL about to expire and the kernel reply path pass to the kernel. XDP hands its masqueraded
//! packets to TC with a mark in the metadata. IPv6 the same, with the hop limit.

mod fixture;

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddrV4, SocketAddrV6};

use fixture::{backend, client, vip, Fixture, Hook, Verdict};
use lb_common::{
    config::{reply_path, SNAT_PORT_MAX, SNAT_PORT_MIN},
    ipv4_mapped,
    net::tcp_flags,
    service::backend_flags,
    NodeConfig, IPPROTO_TCP,
};
use lb_frames::{assert_frames_equal, parse, parse6, Frame, Frame6};
use lb_tests::{netns::unique_prefix, netns::NetNs, require_root};
use lb_userspace::model::Protocol;

/// The node's address on its LAN interface (and masquerading address).
const NODE: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);
/// The node's LAN interface in the test's namespace.
const LAN: &str = "lan0";
/// The client's MAC address in the node's neighbour table.
const CLIENT_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x0a];
/// A client on the LAN whose neighbour entry the node does not have.
const UNRESOLVED: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 20);
/// A client the node has no route to.
const UNROUTED: Ipv4Addr = Ipv4Addr::new(198, 19, 200, 1);
/// The mark XDP puts into the metadata of what it hands to TC (`lb-ebpf/src/reply_path.rs`).
const HANDOFF_MARK: &[u8; 4] = b"LBrp";

/// A namespace with the node's LAN (a veth pair, both ends inside), the client's neighbour
/// entry and forwarding on, for IPv4 and IPv6; and the LAN interface's MAC address.
fn node_fib() -> (NetNs, [u8; 6]) {
    let netns = NetNs::create(&format!("{}-fib", unique_prefix())).unwrap();
    netns
        .ip(&["link", "add", LAN, "type", "veth", "peer", "name", "lan1"])
        .unwrap();
    for iface in [LAN, "lan1"] {
        netns.ip(&["link", "set", iface, "up"]).unwrap();
    }
    let mac = CLIENT_MAC.map(|b| format!("{b:02x}")).join(":");
    let families = [
        (
            format!("{NODE}/24"),
            fixture::CLIENT.to_string(),
            "net.ipv4.ip_forward",
        ),
        (
            format!("{NODE6}/64"),
            CLIENT6.to_string(),
            "net.ipv6.conf.all.forwarding",
        ),
    ];
    for (node, client, forwarding) in families {
        netns
            .ip(&["addr", "add", &node, "dev", LAN, "nodad"])
            .unwrap();
        netns
            .ip(&[
                "neigh",
                "add",
                &client,
                "lladdr",
                &mac,
                "dev",
                LAN,
                "nud",
                "permanent",
            ])
            .unwrap();
        netns.set_sysctl(forwarding, "1").unwrap();
    }
    let link = netns.ip(&["-br", "link", "show", LAN]).unwrap();
    let lan_mac = link
        .split_whitespace()
        .nth(2)
        .and_then(|mac| {
            let bytes: Vec<u8> = mac
                .split(':')
                .filter_map(|b| u8::from_str_radix(b, 16).ok())
                .collect();
            bytes.try_into().ok()
        })
        .unwrap_or_else(|| panic!("no MAC address in {link:?}"));
    (netns, lan_mac)
}

/// A node that masquerades to [`NODE`] with `path` as its reply path; its one service
/// vip(80)/TCP balances to backend(1) with `backend_flags`.
fn node(hook: Hook, flags: u8, path: u8) -> Fixture {
    let config = NodeConfig::masquerading(ipv4_mapped(NODE.octets()), SNAT_PORT_MIN, SNAT_PORT_MAX)
        .with_reply_path(path);
    Fixture::one_backend(hook, IPPROTO_TCP, (1, 11), flags, &config)
}

/// The backend's SYN-ACK to `to`, after `to`'s SYN through TC created the flow.
fn reply_after_syn(fx: &mut Fixture, to: SocketAddrV4) -> Frame {
    fx.hook = Hook::Tc;
    let syn = Frame::tcp(to, vip(80), tcp_flags::SYN);
    assert_eq!(
        fx.run(&syn.to_bytes()).0,
        Verdict::Pass,
        "a request is DNATed only"
    );
    Frame::tcp(backend(1), to, tcp_flags::SYN | tcp_flags::ACK)
}

/// `frame` as forwarded: TTL one less, and with `macs` (destination, source) when given.
fn forwarded(mut frame: Frame, macs: Option<([u8; 6], [u8; 6])>) -> Vec<u8> {
    frame.ip.ttl -= 1;
    if let Some((dst, src)) = macs {
        (frame.dst_mac, frame.src_mac) = (dst, src);
    }
    frame.to_bytes()
}

#[test]
fn a_translated_reply_goes_to_the_clients_neighbour_at_tc() {
    require_root!();
    let (netns, lan_mac) = node_fib();
    let mut fx = node(Hook::Tc, backend_flags::LOCAL, reply_path::REDIRECT);
    let reply = reply_after_syn(&mut fx, client(40_000));
    let (verdict, out) = netns.run(|| fx.run(&reply.to_bytes())).unwrap();
    assert_eq!(verdict, Verdict::SendBack, "TC_ACT_REDIRECT");
    let translated = reply.with_src(vip(80));
    assert_frames_equal(&out, &forwarded(translated, Some((CLIENT_MAC, lan_mac))));
    assert!(parse(&out).unwrap().ip_checksum_ok);
}

#[test]
fn an_unresolved_neighbour_is_left_to_redirect_neigh() {
    require_root!();
    let (netns, _) = node_fib();
    let mut fx = node(Hook::Tc, backend_flags::LOCAL, reply_path::REDIRECT);
    let to = SocketAddrV4::new(UNRESOLVED, 40_000);
    let reply = reply_after_syn(&mut fx, to);
    let (verdict, out) = netns.run(|| fx.run(&reply.to_bytes())).unwrap();
    assert_eq!(verdict, Verdict::SendBack, "TC_ACT_REDIRECT");
    // The kernel writes the MAC addresses once it has resolved the neighbour.
    assert_frames_equal(&out, &forwarded(reply.with_src(vip(80)), None));
}

#[test]
fn what_the_fib_does_not_forward_goes_to_the_kernel() {
    require_root!();
    let (netns, _) = node_fib();
    // No route to the client; a TTL about to expire; the kernel reply path; a request
    // (DNAT only, its source unchanged).
    let mut fx = node(Hook::Tc, backend_flags::LOCAL, reply_path::REDIRECT);
    let unrouted = reply_after_syn(&mut fx, SocketAddrV4::new(UNROUTED, 40_000));
    let mut expiring = reply_after_syn(&mut fx, client(40_001));
    expiring.ip.ttl = 1;
    let mut kernel = node(Hook::Tc, backend_flags::LOCAL, reply_path::KERNEL);
    let kernel_reply = reply_after_syn(&mut kernel, client(40_002));
    let request = Frame::tcp(client(40_003), vip(80), tcp_flags::SYN);
    let cases = [
        (&fx, unrouted.clone(), unrouted.with_src(vip(80))),
        (&fx, expiring.clone(), expiring.with_src(vip(80))),
        (
            &kernel,
            kernel_reply.clone(),
            kernel_reply.with_src(vip(80)),
        ),
        (&fx, request.clone(), request.with_dst(backend(1))),
    ];
    for (fx, frame, translated) in cases {
        let (verdict, out) = netns.run(|| fx.run(&frame.to_bytes())).unwrap();
        assert_eq!(verdict, Verdict::Pass, "{frame:?}");
        assert_frames_equal(&out, &translated.to_bytes());
    }
}

#[test]
fn xdp_hands_masqueraded_packets_to_tc_with_a_mark() {
    require_root!();
    let (netns, _) = node_fib();
    for (path, mark) in [
        (reply_path::REDIRECT, &HANDOFF_MARK[..]),
        (reply_path::KERNEL, &[]),
    ] {
        let fx = node(Hook::Xdp, 0, path);
        let request = Frame::tcp(client(40_000), vip(80), tcp_flags::SYN);
        let (verdict, out) = netns.run(|| fx.run(&request.to_bytes())).unwrap();
        assert_eq!(verdict, Verdict::Pass, "XDP_PASS");
        let (meta, frame) = out.split_at(mark.len());
        assert_eq!(meta, mark, "reply path {path}");
        let port = parse(frame).unwrap().ports.unwrap().0;
        let masqueraded = request
            .with_src(SocketAddrV4::new(NODE, port))
            .with_dst(backend(1));
        assert_frames_equal(frame, &masqueraded.to_bytes());
    }
}

/// The node's IPv6 address on its LAN interface (and IPv6 masquerading address).
const NODE6: Ipv6Addr = Ipv6Addr::new(0x2001, 2, 0, 0, 0, 0, 0, 2);
/// An IPv6 client on the LAN, in the node's neighbour table.
const CLIENT6: Ipv6Addr = Ipv6Addr::new(0x2001, 2, 0, 0, 0, 0, 0, 0x0a);
/// An IPv6 client on the LAN the node has no neighbour entry for.
const UNRESOLVED6: Ipv6Addr = Ipv6Addr::new(0x2001, 2, 0, 0, 0, 0, 0, 0x14);
const VIP6: Ipv6Addr = Ipv6Addr::new(0x2001, 2, 0, 0x53, 0, 0, 0, 1);
const BACKEND6: Ipv6Addr = Ipv6Addr::new(0x2001, 2, 0, 1, 0, 0, 0, 0x0b);

fn end6(addr: Ipv6Addr, port: u16) -> SocketAddrV6 {
    SocketAddrV6::new(addr, port, 0, 0)
}

/// A node with `config` whose one IPv6 Service `[VIP6]:80`/TCP balances to `[BACKEND6]:8080`.
fn node6(hook: Hook, config: NodeConfig) -> Fixture {
    let mut fx = Fixture::new(hook);
    fx.set_services(&[(end6(VIP6, 80), Protocol::Tcp, &[end6(BACKEND6, 8080)][..])]);
    fx.set_node_config(&config);
    fx
}

/// The backend's SYN-ACK to `to`, after `to`'s SYN through TC created the flow.
fn reply6_after_syn(fx: &mut Fixture, to: SocketAddrV6) -> Frame6 {
    let syn = Frame6::tcp(to, end6(VIP6, 80), tcp_flags::SYN);
    assert_eq!(fx.run(&syn.to_bytes()).0, Verdict::Pass, "DNATed only");
    Frame6::tcp(end6(BACKEND6, 8080), to, tcp_flags::SYN | tcp_flags::ACK)
}

#[test]
fn an_ipv6_reply_goes_to_the_clients_neighbour_or_to_redirect_neigh_at_tc() {
    require_root!();
    let (netns, lan_mac) = node_fib();
    let mut fx = node6(
        Hook::Tc,
        NodeConfig::default().with_reply_path(reply_path::REDIRECT),
    );
    for (client, macs) in [
        (CLIENT6, Some((CLIENT_MAC, lan_mac))),
        // The kernel writes the MAC addresses once it has resolved the neighbour.
        (UNRESOLVED6, None),
    ] {
        let reply = reply6_after_syn(&mut fx, end6(client, 40_000));
        let (verdict, out) = netns.run(|| fx.run(&reply.to_bytes())).unwrap();
        assert_eq!(verdict, Verdict::SendBack, "TC_ACT_REDIRECT");
        let mut expected = reply.with_src(end6(VIP6, 80));
        expected.ip.hop_limit -= 1;
        if let Some((dst, src)) = macs {
            (expected.dst_mac, expected.src_mac) = (dst, src);
        }
        assert_frames_equal(&out, &expected.to_bytes());
        assert_eq!(parse6(&out).unwrap().l4_checksum_ok, Some(true));
    }
    // A hop limit about to expire, and the kernel reply path, go to the kernel.
    let mut expiring = reply6_after_syn(&mut fx, end6(CLIENT6, 40_001));
    expiring.ip.hop_limit = 1;
    let mut kernel = node6(Hook::Tc, NodeConfig::default());
    let kernel_reply = reply6_after_syn(&mut kernel, end6(CLIENT6, 40_002));
    for (fx, frame) in [(&fx, expiring), (&kernel, kernel_reply)] {
        let (verdict, out) = netns.run(|| fx.run(&frame.to_bytes())).unwrap();
        assert_eq!(verdict, Verdict::Pass);
        assert_frames_equal(&out, &frame.with_src(end6(VIP6, 80)).to_bytes());
    }
}

#[test]
fn xdp_hands_masqueraded_ipv6_packets_to_tc_with_a_mark() {
    require_root!();
    let (netns, _) = node_fib();
    let masquerading =
        NodeConfig::masquerading(ipv4_mapped(NODE.octets()), SNAT_PORT_MIN, SNAT_PORT_MAX)
            .with_snat_addr6(NODE6.octets())
            .with_reply_path(reply_path::REDIRECT);
    let fx = node6(Hook::Xdp, masquerading);
    let request = Frame6::tcp(end6(CLIENT6, 40_000), end6(VIP6, 80), tcp_flags::SYN);
    let (verdict, out) = netns.run(|| fx.run(&request.to_bytes())).unwrap();
    assert_eq!(verdict, Verdict::Pass, "XDP_PASS");
    let (meta, frame) = out.split_at(HANDOFF_MARK.len());
    assert_eq!(meta, HANDOFF_MARK);
    let port = parse6(frame).unwrap().ports.unwrap().0;
    let masqueraded = request
        .with_src(end6(NODE6, port))
        .with_dst(end6(BACKEND6, 8080));
    assert_frames_equal(frame, &masqueraded.to_bytes());
}
