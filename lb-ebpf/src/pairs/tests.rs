use super::*;
use crate::{
    error::Verdict,
    family::Ipv4,
    lb::{process, Hook},
    testing::{frame, FakeMaps, FrameSpec, SlicePacket, VIP},
};
use lb_common::{ipv4_mapped, net::tcp_flags, Backend, IPPROTO_TCP, IPPROTO_UDP};

const GROUP_ID: u32 = 4;
const BACKEND_ID: u32 = 9;
const BACKEND: crate::parse::FlowEnd = crate::parse::FlowEnd {
    addr: [198, 18, 1, 1],
    port: 8080u16.to_be_bytes(),
};

fn maps(proto: u8) -> FakeMaps {
    let backend = Backend::new(ipv4_mapped(BACKEND.addr), 8080);
    FakeMaps::one_backend(proto, GROUP_ID, BACKEND_ID, backend)
}

fn run(maps: &mut FakeMaps, spec: &FrameSpec) -> (Verdict, Vec<u8>) {
    let mut pkt = SlicePacket::new(frame(spec));
    let verdict = process::<Ipv4, _, _>(&mut pkt, maps, Hook::POD_FACING);
    (verdict, pkt.bytes)
}

fn keys(spec: &FrameSpec) -> (CtKey, CtKey) {
    let flow = crate::parse::ipv4_flow(&SlicePacket::new(frame(spec))).unwrap();
    let key = conntrack::key_of(&flow);
    let reply_key = conntrack::reply_key(&key, ipv4_mapped(BACKEND.addr), BACKEND.port);
    (key, reply_key)
}

/// The client's packet goes to the backend and the backend's answer comes back from the VIP.
fn assert_translated(maps: &mut FakeMaps, client: &FrameSpec) {
    let (_, out) = run(maps, client);
    assert_eq!(
        out,
        frame(&FrameSpec {
            dst: BACKEND,
            ..client.clone()
        })
    );
    let answer = FrameSpec {
        src: BACKEND,
        ..client.reversed()
    };
    let (_, out) = run(maps, &answer);
    assert_eq!(out, frame(&FrameSpec { src: VIP, ..answer }));
}

#[test]
fn an_unanswered_flow_whose_reply_entry_went_gets_it_back_on_its_next_packet() {
    for mut client in [FrameSpec::tcp_syn(), FrameSpec::udp()] {
        let mut maps = maps(client.proto);
        run(&mut maps, &client);
        let (key, reply_key) = keys(&client);
        let reply = maps.conntrack.remove(&reply_key).unwrap();
        // Within the refresh interval: the unanswered flow checks on every packet.
        maps.now_ns += 1;
        if client.proto == IPPROTO_TCP {
            client.tcp_flags = tcp_flags::ACK;
        }
        assert_translated(&mut maps, &client);
        assert_eq!(maps.counter_value(Counter::ConntrackRepaired), 1);
        assert_eq!(maps.counter_value(Counter::NewFlows), 1);
        let seen = ct_flags::SEEN_REPLY;
        assert_eq!(maps.conntrack[&reply_key].flags, reply.flags | seen);
        assert_eq!(maps.conntrack[&reply_key].nat_addr, reply.nat_addr);
        assert_eq!(maps.conntrack[&key].flags, ct_flags::FORWARD | seen);
    }
}

#[test]
fn an_answered_flow_checks_its_reply_entry_once_a_second() {
    let mut maps = maps(IPPROTO_UDP);
    let client = FrameSpec::udp();
    assert_translated(&mut maps, &client);
    let (_, reply_key) = keys(&client);
    maps.conntrack.remove(&reply_key);
    maps.now_ns += 1;
    run(&mut maps, &client);
    assert!(!maps.conntrack.contains_key(&reply_key), "checked too soon");
    maps.now_ns += REFRESH;
    assert_translated(&mut maps, &client);
    assert_eq!(maps.counter_value(Counter::ConntrackRepaired), 1);
}

const REFRESH: u64 = conntrack::REFRESH_INTERVAL_NS;

#[test]
fn a_reply_whose_forward_entry_went_restores_it() {
    for client in [FrameSpec::tcp_syn(), FrameSpec::udp()] {
        let mut maps = maps(client.proto);
        run(&mut maps, &client);
        let (key, _) = keys(&client);
        let forward = maps.conntrack.remove(&key).unwrap();
        let answer = FrameSpec {
            src: BACKEND,
            ..client.reversed()
        };
        let (_, out) = run(&mut maps, &answer);
        assert_eq!(out, frame(&FrameSpec { src: VIP, ..answer }));
        let restored = maps.conntrack[&key];
        assert_eq!(restored.flags, forward.flags | ct_flags::SEEN_REPLY);
        assert_eq!(
            (restored.nat_addr, restored.backend_id),
            (forward.nat_addr, BACKEND_ID)
        );
        assert_eq!(maps.counter_value(Counter::ConntrackRepaired), 1);
        let next = FrameSpec {
            tcp_flags: if client.proto == IPPROTO_TCP {
                tcp_flags::ACK
            } else {
                0
            },
            ..client
        };
        assert_translated(&mut maps, &next);
        assert_eq!(maps.counter_value(Counter::NewFlows), 1);
    }
}

#[test]
fn the_first_reply_marks_both_entries_and_later_ones_do_not_look_again() {
    let mut maps = maps(IPPROTO_TCP);
    let client = FrameSpec::tcp_syn();
    assert_translated(&mut maps, &client);
    let (key, reply_key) = keys(&client);
    for k in [key, reply_key] {
        assert_ne!(maps.conntrack[&k].flags & ct_flags::SEEN_REPLY, 0);
    }
    maps.conntrack.remove(&key);
    maps.now_ns += 1;
    let answer = FrameSpec {
        src: BACKEND,
        tcp_flags: tcp_flags::ACK,
        ..client.reversed()
    };
    run(&mut maps, &answer);
    assert!(!maps.conntrack.contains_key(&key), "checked too soon");
    maps.now_ns += REFRESH;
    run(&mut maps, &answer);
    assert!(maps.conntrack.contains_key(&key));
}

#[test]
fn a_flow_whose_reply_key_another_flow_holds_starts_over() {
    let mut maps = maps(IPPROTO_UDP);
    let client = FrameSpec::udp();
    run(&mut maps, &client);
    let (key, reply_key) = keys(&client);
    // Another flow's reply entry under the same key: translating back to another frontend.
    let other = FrameSpec {
        dst: crate::parse::FlowEnd {
            addr: [198, 19, 0, 2],
            port: VIP.port,
        },
        ..FrameSpec::udp()
    };
    let (other_key, _) = keys(&other);
    let foreign = conntrack::reply_of(&other_key, &maps.conntrack[&key], maps.now_ns);
    maps.conntrack.insert(reply_key, foreign);
    maps.now_ns += 1;
    assert_translated(&mut maps, &client);
    assert_eq!(maps.counter_value(Counter::NewFlows), 2);
    assert_eq!(maps.counter_value(Counter::ConntrackRepaired), 0);
    assert_eq!(maps.conntrack[&reply_key].nat_addr, ipv4_mapped(VIP.addr));
}
