use super::*;
use crate::{
    error::Verdict,
    family::Ipv4,
    lb::{process, Hook},
    testing::{frame, icmp_error, FakeMaps, FrameSpec, SlicePacket, CLIENT, VIP},
};
use lb_common::{service::scope, Backend, NodeConfig};

const GROUP_ID: u32 = 6;
const BACKEND: FlowEnd = FlowEnd {
    addr: [198, 18, 2, 9],
    port: 8053u16.to_be_bytes(),
};
const NODE: [u8; 4] = [198, 18, 0, 1];
const ROUTER: [u8; 4] = [198, 18, 9, 1];
const PORT_UNREACH: (u8, u8) = (icmp::DEST_UNREACH, icmp::PORT_UNREACH);
const FRAG_NEEDED: (u8, u8) = (icmp::DEST_UNREACH, icmp::FRAG_NEEDED);

/// A service at VIP (both scopes) with one backend on another node; the node
/// masquerades when `masquerading`.
fn maps(proto: u8, masquerading: bool) -> FakeMaps {
    let backend = Backend::new(ipv4_mapped(BACKEND.addr), 8053);
    let mut maps = FakeMaps::one_backend(proto, GROUP_ID, 40, backend);
    if masquerading {
        maps.config = NodeConfig::masquerading(ipv4_mapped(NODE), 61_000, 61_000);
    }
    maps
}

fn run(maps: &mut FakeMaps, bytes: Vec<u8>, hook_scope: u8) -> (Verdict, Vec<u8>) {
    let mut pkt = SlicePacket::new(bytes);
    let verdict = process::<Ipv4, _, _>(&mut pkt, maps, Hook::Ingress { scope: hook_scope });
    (verdict, pkt.bytes)
}

/// The client's first packet, and what it became on the way to the backend.
fn request(maps: &mut FakeMaps, proto: u8, hook_scope: u8) -> (Vec<u8>, Vec<u8>) {
    let spec = match proto {
        IPPROTO_TCP => FrameSpec::tcp_syn(),
        _ => FrameSpec::udp(),
    };
    let sent = frame(&spec);
    let (verdict, translated) = run(maps, sent.clone(), hook_scope);
    assert_eq!(verdict, Verdict::Pass);
    (sent, translated)
}

/// The IPv4 packet inside a frame, cut to `len` bytes when given.
fn ip_packet(frame: &[u8], len: Option<usize>) -> Vec<u8> {
    let packet = &frame[ETH_HLEN..];
    packet[..len.unwrap_or(packet.len())].to_vec()
}

fn translated(maps: &mut FakeMaps, error: Vec<u8>, hook_scope: u8) -> Vec<u8> {
    let (verdict, out) = run(maps, error, hook_scope);
    assert_eq!(verdict, Verdict::Pass);
    assert_eq!(maps.counter_value(Counter::IcmpErrorTranslated), 1);
    out
}

#[test]
fn a_backends_port_unreachable_reaches_the_client_from_the_vip_quoting_its_request() {
    for proto in [IPPROTO_UDP, IPPROTO_TCP] {
        let mut maps = maps(proto, false);
        let (sent, at_backend) = request(&mut maps, proto, scope::INTERNAL);
        let (t, c) = PORT_UNREACH;
        let error = icmp_error(
            BACKEND.addr,
            CLIENT.addr,
            t,
            c,
            &ip_packet(&at_backend, None),
        );
        let out = translated(&mut maps, error, scope::INTERNAL);
        let expected = icmp_error(VIP.addr, CLIENT.addr, t, c, &ip_packet(&sent, None));
        assert_eq!(out, expected, "proto {proto}");
    }
}

#[test]
fn a_routers_fragmentation_needed_for_a_masqueraded_request_reaches_the_client() {
    let mut maps = maps(IPPROTO_TCP, true);
    let (sent, at_backend) = request(&mut maps, IPPROTO_TCP, scope::EXTERNAL);
    assert_eq!(at_backend[26..30], NODE, "masqueraded");
    let (t, c) = FRAG_NEEDED;
    // Quoting the IPv4 header and the first 8 bytes only: no TCP checksum to fix.
    let quoted = ip_packet(&at_backend, Some(28));
    let out = translated(
        &mut maps,
        icmp_error(ROUTER, NODE, t, c, &quoted),
        scope::EXTERNAL,
    );
    let expected = icmp_error(ROUTER, CLIENT.addr, t, c, &ip_packet(&sent, Some(28)));
    assert_eq!(out, expected);
}

#[test]
fn an_error_about_a_masqueraded_reply_reaches_the_backend_quoting_its_answer() {
    let mut maps = maps(IPPROTO_UDP, true);
    let (_, at_backend) = request(&mut maps, IPPROTO_UDP, scope::EXTERNAL);
    let node_port: [u8; 2] = at_backend[34..36].try_into().unwrap();
    let answer = frame(&FrameSpec {
        src: BACKEND,
        dst: FlowEnd {
            addr: NODE,
            port: node_port,
        },
        ..FrameSpec::udp()
    });
    let (_, at_client) = run(&mut maps, answer.clone(), scope::EXTERNAL);
    // The client's host has closed the port meanwhile.
    let (t, c) = PORT_UNREACH;
    let error = icmp_error(CLIENT.addr, VIP.addr, t, c, &ip_packet(&at_client, None));
    let out = translated(&mut maps, error, scope::EXTERNAL);
    let expected = icmp_error(NODE, BACKEND.addr, t, c, &ip_packet(&answer, None));
    assert_eq!(out, expected);
}

#[test]
fn errors_about_untracked_packets_and_other_icmp_pass_untouched() {
    let mut maps = maps(IPPROTO_UDP, false);
    let (_, at_backend) = request(&mut maps, IPPROTO_UDP, scope::INTERNAL);
    let (t, c) = PORT_UNREACH;
    let other = frame(&FrameSpec {
        src: FlowEnd {
            addr: [198, 18, 0, 99],
            port: 5000u16.to_be_bytes(),
        },
        ..FrameSpec::udp()
    });
    let untracked = icmp_error(
        BACKEND.addr,
        [198, 18, 0, 99],
        t,
        c,
        &ip_packet(&other, None),
    );
    let quoted = ip_packet(&at_backend, None);
    let echo = icmp_error(BACKEND.addr, CLIENT.addr, 8, 0, &quoted);
    let mut cut = icmp_error(BACKEND.addr, CLIENT.addr, t, c, &quoted);
    cut.truncate(ETH_HLEN + 20 + 8 + 20 + 2);
    for bytes in [untracked, echo, cut] {
        let (verdict, out) = run(&mut maps, bytes.clone(), scope::INTERNAL);
        assert_eq!((verdict, out), (Verdict::Pass, bytes));
    }
    assert_eq!(maps.counter_value(Counter::IcmpErrorTranslated), 0);
    assert_eq!(maps.counter_value(Counter::OtherProtocol), 3);
}

#[test]
fn a_trailer_after_a_short_quote_is_neither_rewritten_nor_checksummed() {
    let mut maps = maps(IPPROTO_TCP, false);
    let (sent, at_backend) = request(&mut maps, IPPROTO_TCP, scope::INTERNAL);
    let (t, c) = FRAG_NEEDED;
    // Where the quoted TCP checksum would be, were the quote longer than its 8 bytes.
    let trailer: Vec<u8> = (0xa0..0xb4).collect();
    let error = icmp_error(ROUTER, CLIENT.addr, t, c, &ip_packet(&at_backend, Some(28)));
    let out = translated(
        &mut maps,
        [error, trailer.clone()].concat(),
        scope::EXTERNAL,
    );
    let expected = icmp_error(ROUTER, CLIENT.addr, t, c, &ip_packet(&sent, Some(28)));
    assert_eq!(out, [expected, trailer].concat());
}
