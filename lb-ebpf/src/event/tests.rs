//! Which packets write which events, with what in them.

use lb_common::{
    config::{SNAT_PORT_MAX, SNAT_PORT_MIN},
    event::{hook, kind, level, Event},
    ipv4_mapped, Backend, Counter, NodeConfig, IPPROTO_TCP,
};

use crate::{
    error::Verdict,
    family::Ipv4,
    lb::{process, Hook},
    parse::FlowEnd,
    testing::{frame, FakeMaps, FrameSpec, SlicePacket, CLIENT, TEST_IFINDEX, VIP},
};

const GROUP_ID: u32 = 5;
const BACKEND: FlowEnd = FlowEnd {
    addr: [198, 18, 2, 7],
    port: 8080u16.to_be_bytes(),
};
const NODE: [u8; 4] = [198, 18, 0, 1];

/// A TCP service at VIP:80 with one backend on another node, masquerading external flows,
/// with a monitor listening or not.
fn maps(monitored: bool) -> FakeMaps {
    let backend = Backend::new(ipv4_mapped(BACKEND.addr), 8080);
    let mut maps = FakeMaps::one_backend(IPPROTO_TCP, GROUP_ID, 1, backend);
    maps.config = NodeConfig::masquerading(ipv4_mapped(NODE), SNAT_PORT_MIN, SNAT_PORT_MAX);
    maps.monitored = monitored;
    maps
}

fn run(maps: &mut FakeMaps, spec: &FrameSpec, hook: Hook) -> Verdict {
    process::<Ipv4, _, _>(&mut SlicePacket::new(frame(spec)), maps, hook)
}

/// The event a new flow from [`CLIENT`] to [`VIP`] writes, before its kind-specific fields.
fn flow_event(kind: u8, reason: Counter, group_id: u32) -> Event {
    Event {
        timestamp_ns: 1_000_000_000,
        group_id,
        reason: reason as u32,
        ifindex: TEST_IFINDEX,
        kind,
        hook: hook::XDP,
        proto: IPPROTO_TCP,
        src_addr: ipv4_mapped(CLIENT.addr),
        dst_addr: ipv4_mapped(VIP.addr),
        src_port: CLIENT.port,
        dst_port: VIP.port,
        ..Event::ZERO
    }
}

#[test]
fn without_a_monitor_new_flows_and_rejects_write_nothing() {
    let mut maps = maps(false);
    assert_eq!(
        run(&mut maps, &FrameSpec::tcp_syn(), Hook::POD_FACING),
        Verdict::Pass
    );
    assert_eq!(
        run(&mut maps, &FrameSpec::tcp_syn(), Hook::EXTERNAL),
        Verdict::Pass
    );
    maps.services.values_mut().for_each(|s| s.backend_count = 0);
    let other_client = FrameSpec {
        src: FlowEnd {
            port: 40001u16.to_be_bytes(),
            ..CLIENT
        },
        ..FrameSpec::tcp_syn()
    };
    assert_eq!(
        run(&mut maps, &other_client, Hook::POD_FACING),
        Verdict::SendBack
    );
    assert_eq!(maps.events, []);
}

#[test]
fn a_new_flow_reports_its_tuple_and_backend_once() {
    let mut maps = maps(true);
    run(&mut maps, &FrameSpec::tcp_syn(), Hook::POD_FACING);
    let ack = FrameSpec {
        tcp_flags: 0x10,
        ..FrameSpec::tcp_syn()
    };
    run(&mut maps, &ack, Hook::POD_FACING);
    let expected = Event {
        backend_addr: ipv4_mapped(BACKEND.addr),
        backend_port: BACKEND.port,
        ..flow_event(kind::NEW_FLOW, Counter::NewFlows, GROUP_ID)
    };
    assert_eq!(
        maps.events,
        [expected],
        "the established packet writes none"
    );
}

#[test]
fn a_masqueraded_flow_reports_the_address_and_port_it_got() {
    let mut maps = maps(true);
    assert_eq!(
        run(&mut maps, &FrameSpec::tcp_syn(), Hook::EXTERNAL),
        Verdict::Pass
    );
    let [event] = maps.events[..] else {
        panic!("{:?}", maps.events)
    };
    let port = u16::from_be_bytes(event.nat_port);
    assert!((SNAT_PORT_MIN..=SNAT_PORT_MAX).contains(&port), "{port}");
    let expected = Event {
        backend_addr: ipv4_mapped(BACKEND.addr),
        backend_port: BACKEND.port,
        nat_addr: ipv4_mapped(NODE),
        nat_port: event.nat_port,
        ..flow_event(kind::MASQUERADE, Counter::Masqueraded, GROUP_ID)
    };
    assert_eq!(event, expected);
}

#[test]
fn rejects_report_their_reason_and_service() {
    let mut maps = maps(true);
    maps.services.values_mut().for_each(|s| s.backend_count = 0);
    maps.cluster_ips.push(ipv4_mapped(VIP.addr));
    let unexposed = FrameSpec {
        dst: FlowEnd {
            port: 81u16.to_be_bytes(),
            ..VIP
        },
        ..FrameSpec::tcp_syn()
    };
    for spec in [FrameSpec::tcp_syn(), unexposed] {
        assert_eq!(run(&mut maps, &spec, Hook::POD_FACING), Verdict::SendBack);
    }
    let expected = [
        flow_event(kind::REJECT, Counter::RejectNoBackend, GROUP_ID),
        Event {
            dst_port: 81u16.to_be_bytes(),
            ..flow_event(kind::REJECT, Counter::RejectUnexposedPort, 0)
        },
    ];
    assert_eq!(maps.events, expected);
}

#[test]
fn a_drop_is_written_at_its_level_or_for_a_monitor() {
    let drop_source_range = |maps: &mut FakeMaps| {
        maps.services
            .values_mut()
            .for_each(|s| s.flags |= lb_common::service::service_flags::SOURCE_RANGES);
        assert_eq!(
            run(maps, &FrameSpec::tcp_syn(), Hook::POD_FACING),
            Verdict::Drop
        );
    };
    let mut quiet = maps(false);
    quiet.event_level = level::WARN;
    drop_source_range(&mut quiet);
    assert_eq!(quiet.events, [], "a debug-level drop at warn");

    let expected = Event {
        level: level::DEBUG,
        ..flow_event(kind::DROP, Counter::DropSourceRange, GROUP_ID)
    };
    let mut logged = maps(false);
    logged.event_level = level::DEBUG;
    drop_source_range(&mut logged);
    assert_eq!(logged.events, [expected]);

    let mut monitored = maps(true);
    drop_source_range(&mut monitored);
    assert_eq!(monitored.events, [expected]);
}

#[test]
fn an_event_without_room_is_counted_lost_and_the_packet_still_handled() {
    let mut maps = maps(true);
    maps.event_room = Some(0);
    assert_eq!(
        run(&mut maps, &FrameSpec::tcp_syn(), Hook::POD_FACING),
        Verdict::Pass
    );
    assert_eq!(maps.events, []);
    assert_eq!(maps.counter_value(Counter::EventsLost), 1);
    assert_eq!(maps.counter_value(Counter::NewFlows), 1);
}
