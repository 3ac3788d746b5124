use super::*;
use crate::{
    error::Verdict,
    family::Ipv4,
    lb::{process, Hook},
    parse::{ipv4_flow, FlowEnd},
    testing::{frame, FakeMaps, FrameSpec, SlicePacket, CLIENT, VIP},
};
use lb_common::{
    conntrack::{CLOSING_REUSE_NS, TCP_REUSE_NS, UDP_REUSE_NS},
    ipv4_mapped,
    net::tcp_flags::{ACK, FIN, RST, SYN},
    service::scope,
    Backend, Counter, NodeConfig, IPPROTO_TCP, IPPROTO_UDP,
};

const GROUP_ID: u32 = 5;
const BACKEND_ID: u32 = 30;
const BACKEND: FlowEnd = FlowEnd {
    addr: [198, 18, 2, 7],
    port: 8080u16.to_be_bytes(),
};
/// The node's one masquerading port.
const NODE: FlowEnd = FlowEnd {
    addr: [198, 18, 0, 1],
    port: 62_000u16.to_be_bytes(),
};
const OTHER_CLIENT: FlowEnd = FlowEnd {
    addr: [198, 18, 0, 11],
    port: 40_000u16.to_be_bytes(),
};
const FIN_ACK: u8 = FIN | ACK;

/// An external service at VIP with one backend on another node, on a node that
/// masquerades to the one port `NODE`.
fn one_port(proto: u8) -> FakeMaps {
    let backend = Backend::new(ipv4_mapped(BACKEND.addr), 8080);
    let mut maps = FakeMaps::one_backend(proto, GROUP_ID, BACKEND_ID, backend);
    let port = u16::from_be_bytes(NODE.port);
    maps.config = NodeConfig::masquerading(ipv4_mapped(NODE.addr), port, port);
    maps
}

fn run(maps: &mut FakeMaps, spec: &FrameSpec) -> (Verdict, Vec<u8>) {
    let mut pkt = SlicePacket::new(frame(spec));
    let verdict = process::<Ipv4, _, _>(
        &mut pkt,
        maps,
        Hook::Ingress {
            scope: scope::EXTERNAL,
        },
    );
    (verdict, pkt.bytes)
}

/// A new flow's first packet from `from`.
fn request(proto: u8, from: FlowEnd) -> FrameSpec {
    let spec = match proto {
        IPPROTO_TCP => FrameSpec::tcp_syn(),
        _ => FrameSpec::udp(),
    };
    FrameSpec { src: from, ..spec }
}

/// A later packet from `from` with TCP `flags`.
fn from_client(from: FlowEnd, flags: u8) -> FrameSpec {
    FrameSpec {
        tcp_flags: flags,
        ..request(IPPROTO_TCP, from)
    }
}

/// The backend's packet to the node's port, with TCP `flags`.
fn from_backend(proto: u8, flags: u8) -> FrameSpec {
    FrameSpec {
        src: BACKEND,
        dst: NODE,
        tcp_flags: flags,
        ..request(proto, CLIENT)
    }
}

fn key_of(spec: &FrameSpec) -> CtKey {
    conntrack::key_of(&ipv4_flow(&SlicePacket::new(frame(spec))).unwrap())
}

/// Runs `spec`, a new flow's first packet, and checks it took the node's one port.
fn takes_the_port(maps: &mut FakeMaps, spec: &FrameSpec) {
    let (verdict, out) = run(maps, spec);
    assert_eq!(verdict, Verdict::Pass);
    let expected = FrameSpec {
        src: NODE,
        dst: BACKEND,
        ..spec.clone()
    };
    assert_eq!(out, frame(&expected));
}

/// Runs `spec`, a new flow's first packet, and checks it found the port taken.
fn finds_the_port_taken(maps: &mut FakeMaps, spec: &FrameSpec) {
    let before = maps.counter_value(Counter::DropSnatPortsExhausted);
    assert_eq!(run(maps, spec).0, Verdict::Drop);
    assert_eq!(
        maps.counter_value(Counter::DropSnatPortsExhausted),
        before + 1
    );
}

fn closing(maps: &FakeMaps, key: &CtKey) -> bool {
    maps.conntrack[key].flags & ct_flags::CLOSING != 0
}

#[test]
fn a_fin_or_rst_either_way_marks_both_entries_closing() {
    let ends = [
        from_client(CLIENT, FIN_ACK),
        from_client(CLIENT, RST),
        from_backend(IPPROTO_TCP, FIN_ACK),
        from_backend(IPPROTO_TCP, RST),
    ];
    for end in ends {
        let mut maps = one_port(IPPROTO_TCP);
        let syn = request(IPPROTO_TCP, CLIENT);
        takes_the_port(&mut maps, &syn);
        let (forward, reply) = (key_of(&syn), key_of(&from_backend(IPPROTO_TCP, ACK)));
        run(&mut maps, &from_client(CLIENT, ACK));
        assert!(!closing(&maps, &forward) && !closing(&maps, &reply));
        maps.now_ns += 5;
        assert_eq!(run(&mut maps, &end).0, Verdict::Pass);
        assert!(closing(&maps, &forward), "{end:?}");
        assert!(closing(&maps, &reply), "{end:?}");
        assert_eq!(maps.conntrack[&reply].last_seen_ns, maps.now_ns);
    }
}

#[test]
fn a_closed_flows_port_goes_to_a_new_flow_once_idle() {
    let mut maps = one_port(IPPROTO_TCP);
    let syn = request(IPPROTO_TCP, CLIENT);
    takes_the_port(&mut maps, &syn);
    run(&mut maps, &from_client(CLIENT, FIN_ACK));
    run(&mut maps, &from_backend(IPPROTO_TCP, FIN_ACK));

    let other = request(IPPROTO_TCP, OTHER_CLIENT);
    maps.now_ns += CLOSING_REUSE_NS;
    finds_the_port_taken(&mut maps, &other);
    maps.now_ns += 1;
    takes_the_port(&mut maps, &other);
    assert!(!maps.conntrack.contains_key(&key_of(&syn)), "old forward");
    assert_eq!(maps.conntrack.len(), 2);
    // The backend's answers to the port now go to the new client.
    let answer = from_backend(IPPROTO_TCP, SYN | ACK);
    let (_, out) = run(&mut maps, &answer);
    let expected = FrameSpec {
        src: VIP,
        dst: OTHER_CLIENT,
        ..answer
    };
    assert_eq!(out, frame(&expected));
}

#[test]
fn an_open_tcp_flow_keeps_its_port_until_idle_for_the_tcp_lifetime() {
    let mut maps = one_port(IPPROTO_TCP);
    takes_the_port(&mut maps, &request(IPPROTO_TCP, CLIENT));
    run(&mut maps, &from_backend(IPPROTO_TCP, SYN | ACK));
    let other = request(IPPROTO_TCP, OTHER_CLIENT);
    maps.now_ns += UDP_REUSE_NS + CLOSING_REUSE_NS + 1;
    finds_the_port_taken(&mut maps, &other);
    maps.now_ns += TCP_REUSE_NS - UDP_REUSE_NS - CLOSING_REUSE_NS;
    takes_the_port(&mut maps, &other);
}

#[test]
fn a_udp_flows_port_goes_after_a_minute_without_answers() {
    let mut maps = one_port(IPPROTO_UDP);
    takes_the_port(&mut maps, &request(IPPROTO_UDP, CLIENT));
    let other = request(IPPROTO_UDP, OTHER_CLIENT);
    maps.now_ns += UDP_REUSE_NS;
    finds_the_port_taken(&mut maps, &other);
    // An answer keeps it.
    run(&mut maps, &from_backend(IPPROTO_UDP, 0));
    maps.now_ns += 1;
    finds_the_port_taken(&mut maps, &other);
    maps.now_ns += UDP_REUSE_NS;
    takes_the_port(&mut maps, &other);
    assert!(!maps
        .conntrack
        .contains_key(&key_of(&request(IPPROTO_UDP, CLIENT))));
}

#[test]
fn a_client_tuple_that_moved_to_another_port_keeps_its_flow() {
    let mut maps = one_port(IPPROTO_TCP);
    let syn = request(IPPROTO_TCP, CLIENT);
    takes_the_port(&mut maps, &syn);
    run(&mut maps, &from_client(CLIENT, RST));
    // As if the client's tuple had since started a flow on another port.
    let moved = 62_001u16.to_be_bytes();
    maps.conntrack.get_mut(&key_of(&syn)).unwrap().snat_port = moved;
    maps.now_ns += CLOSING_REUSE_NS + 1;
    takes_the_port(&mut maps, &request(IPPROTO_TCP, OTHER_CLIENT));
    assert_eq!(maps.conntrack[&key_of(&syn)].snat_port, moved);
}

#[test]
fn a_syn_on_a_closing_flow_starts_a_new_one() {
    let mut maps = one_port(IPPROTO_TCP);
    let syn = request(IPPROTO_TCP, CLIENT);
    takes_the_port(&mut maps, &syn);
    run(&mut maps, &from_client(CLIENT, FIN_ACK));
    assert!(closing(&maps, &key_of(&syn)));
    takes_the_port(&mut maps, &syn);
    assert_eq!(maps.counter_value(Counter::NewFlows), 2);
    assert!(!closing(&maps, &key_of(&syn)));
    assert_eq!(maps.conntrack.len(), 2);
}

#[test]
fn unmasqueraded_flows_close_too_and_a_syn_starts_them_anew() {
    let mut maps = one_port(IPPROTO_TCP);
    maps.config = NodeConfig::default();
    let syn = request(IPPROTO_TCP, CLIENT);
    run(&mut maps, &syn);
    assert!(!closing(&maps, &key_of(&syn)));
    run(&mut maps, &from_client(CLIENT, FIN_ACK));
    assert!(maps
        .conntrack
        .values()
        .all(|e| e.flags & ct_flags::CLOSING != 0));
    assert_eq!(maps.conntrack.len(), 2);
    run(&mut maps, &syn);
    assert_eq!(maps.counter_value(Counter::NewFlows), 2);
    assert!(!closing(&maps, &key_of(&syn)));
}
