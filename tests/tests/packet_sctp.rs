//! SCTP through the real TC and XDP programs (BPF_PROG_TEST_RUN), IPv4 and IPv6: addresses and
//! ports translated both ways with the CRC32c kept right (an address change leaves it, a port
//! change updates it; a checksum the device will fill in stays 0), conntrack following the
//! association (INIT starts it, ABORT and SHUTDOWN COMPLETE close it, an INIT on a closed one
//! starts over), masquerading, ICMP port unreachable for a Service without endpoints, ICMP
//! errors about an association, and fragments passing untouched. Expected frames are built
//! from scratch by lb-frames, whose CRC32c is computed bit by bit; the SCTP kernel module is
//! not available on the machine this is developed on, so SCTP has no end-to-end test.

mod fixture;

use std::net::{Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};

use fixture::{backend, client, deltas, vip, Fixture, Hook, Verdict, HOOKS};
use lb_common::{
    config::{SNAT_PORT_MAX, SNAT_PORT_MIN},
    conntrack::ct_flags,
    ipv4_mapped,
    net::{icmp, sctp_chunk, ETH_HLEN, SCTP_CHECKSUM, SCTP_HLEN},
    Counter, NodeConfig,
};
use lb_frames::{assert_frames_equal, parse, parse6, Frame, Frame6, Icmp, Sctp, L4};
use lb_tests::require_root;
use lb_userspace::model::Protocol;

/// A DATA chunk: any chunk that neither starts nor ends the association.
const DATA: u8 = 0;

const VIP6: Ipv6Addr = Ipv6Addr::new(0x2001, 2, 0, 0x53, 0, 0, 0, 1);
const CLIENT6: Ipv6Addr = Ipv6Addr::new(0x2001, 2, 0, 0, 0, 0, 0, 0x0a);
const BACKEND6: Ipv6Addr = Ipv6Addr::new(0x2001, 2, 0, 1, 0, 0, 0, 0x0b);
/// The node's address on its external interface, which masqueraded flows leave from.
const NODE: std::net::Ipv4Addr = std::net::Ipv4Addr::new(198, 18, 0, 2);
const NODE6: Ipv6Addr = Ipv6Addr::new(0x2001, 2, 0, 0, 0, 0, 0, 2);

fn end6(addr: Ipv6Addr, port: u16) -> SocketAddrV6 {
    SocketAddrV6::new(addr, port, 0, 0)
}

/// An SCTP packet of either family, built from scratch.
#[derive(Clone, Debug)]
enum Packet {
    V4(Frame),
    V6(Frame6),
}

impl Packet {
    fn new(src: SocketAddr, dst: SocketAddr, chunk: u8) -> Packet {
        match (src, dst) {
            (SocketAddr::V4(src), SocketAddr::V4(dst)) => Packet::V4(Frame::sctp(src, dst, chunk)),
            (SocketAddr::V6(src), SocketAddr::V6(dst)) => Packet::V6(Frame6::sctp(src, dst, chunk)),
            _ => panic!("one family per packet"),
        }
    }

    /// The same packet with a chunk value of `len` bytes (a DATA chunk's payload).
    fn with_value(self, len: usize) -> Packet {
        let value: Vec<u8> = (0..len).map(|i| i as u8).collect();
        match self {
            Packet::V4(f) => Packet::V4(f.with_payload(&value)),
            Packet::V6(f) => Packet::V6(f.with_payload(&value)),
        }
    }

    fn with_src(self, src: SocketAddr) -> Packet {
        match (self, src) {
            (Packet::V4(f), SocketAddr::V4(a)) => Packet::V4(f.with_src(a)),
            (Packet::V6(f), SocketAddr::V6(a)) => Packet::V6(f.with_src(a)),
            _ => panic!("one family per packet"),
        }
    }

    fn with_dst(self, dst: SocketAddr) -> Packet {
        match (self, dst) {
            (Packet::V4(f), SocketAddr::V4(a)) => Packet::V4(f.with_dst(a)),
            (Packet::V6(f), SocketAddr::V6(a)) => Packet::V6(f.with_dst(a)),
            _ => panic!("one family per packet"),
        }
    }

    fn to_bytes(&self) -> Vec<u8> {
        match self {
            Packet::V4(f) => f.to_bytes(),
            Packet::V6(f) => f.to_bytes(),
        }
    }

    /// The bytes with the checksum field 0, as a sender leaves it for the device to fill in.
    fn offloaded(&self) -> Vec<u8> {
        let sctp = match self {
            Packet::V4(f) => &f.l4,
            Packet::V6(f) => &f.l4,
        };
        let L4::Sctp(sctp) = sctp.clone() else {
            unreachable!("SCTP packets only")
        };
        let l4 = L4::Sctp(Sctp {
            offloaded_checksum: true,
            ..sctp
        });
        match self {
            Packet::V4(f) => f.clone().with_l4(l4).to_bytes(),
            Packet::V6(f) => {
                let mut f = f.clone();
                f.l4 = l4;
                f.to_bytes()
            }
        }
    }
}

/// Whether `frame`'s SCTP checksum verifies, and its ports.
fn checked(frame: &[u8]) -> (bool, (u16, u16)) {
    match parse(frame) {
        Ok(p) => (p.l4_checksum_ok == Some(true), p.ports.unwrap()),
        Err(_) => {
            let p = parse6(frame).expect("an IPv4 or IPv6 frame");
            (p.l4_checksum_ok == Some(true), p.ports.unwrap())
        }
    }
}

/// The ends of one family's association: client, VIP (port 80) and backend (port 8080).
struct Ends {
    client: SocketAddr,
    vip: SocketAddr,
    backend: SocketAddr,
}

const FAMILIES: [fn(u16) -> Ends; 2] = [
    |port| Ends {
        client: client(port).into(),
        vip: vip(80).into(),
        backend: backend(1).into(),
    },
    |port| Ends {
        client: end6(CLIENT6, port).into(),
        vip: end6(VIP6, 80).into(),
        backend: end6(BACKEND6, 8080).into(),
    },
];

fn sctp_service(hook: Hook, ends: &Ends) -> Fixture {
    let mut fx = Fixture::new(hook);
    fx.set_services(&[(ends.vip, Protocol::Sctp, &[ends.backend][..])]);
    fx
}

#[test]
fn an_association_is_translated_both_ways_with_its_checksum_kept_right() {
    require_root!();
    for hook in HOOKS {
        for family in FAMILIES {
            let e = family(40_000);
            let mut fx = sctp_service(hook, &e);
            let init = Packet::new(e.client, e.vip, sctp_chunk::INIT);
            let (verdict, out, moved) = fx.run_counted(&init.to_bytes());
            assert_eq!(verdict, Verdict::Pass, "{hook:?}");
            assert_frames_equal(&out, &init.clone().with_dst(e.backend).to_bytes());
            assert_eq!(checked(&out), (true, (40_000, 8080)));
            assert_eq!(
                moved,
                deltas(&[(Counter::Packets, 1), (Counter::NewFlows, 1)])
            );
            assert_eq!(fx.conntrack_len(), 2, "a forward and a reply entry");

            let init_ack = Packet::new(e.backend, e.client, sctp_chunk::INIT_ACK);
            let (_, out, moved) = fx.run_counted(&init_ack.to_bytes());
            assert_frames_equal(&out, &init_ack.with_src(e.vip).to_bytes());
            assert_eq!(
                moved,
                deltas(&[(Counter::Packets, 1), (Counter::ReplyTranslated, 1)])
            );

            // Lengths across both of the checksum update's tables.
            for len in [1, 255, 256, 1001] {
                let data = Packet::new(e.client, e.vip, DATA).with_value(len);
                let (_, out, moved) = fx.run_counted(&data.to_bytes());
                assert_frames_equal(&out, &data.with_dst(e.backend).to_bytes());
                assert_eq!(
                    moved,
                    deltas(&[(Counter::Packets, 1), (Counter::ForwardTranslated, 1)])
                );
            }
        }
    }
}

#[test]
fn a_checksum_the_device_fills_in_stays_zero() {
    require_root!();
    for family in FAMILIES {
        let e = family(40_001);
        let mut fx = sctp_service(Hook::Tc, &e);
        let init = Packet::new(e.client, e.vip, sctp_chunk::INIT);
        let (verdict, out, _) = fx.run_counted(&init.offloaded());
        assert_eq!(verdict, Verdict::Pass);
        assert_eq!(out, init.with_dst(e.backend).offloaded());
    }
}

#[test]
fn abort_and_shutdown_complete_close_the_association_and_an_init_starts_over() {
    require_root!();
    for hook in HOOKS {
        for family in FAMILIES {
            for (i, (ending, from_backend)) in [
                (sctp_chunk::ABORT, false),
                (sctp_chunk::ABORT, true),
                (sctp_chunk::SHUTDOWN_COMPLETE, false),
            ]
            .into_iter()
            .enumerate()
            {
                let e = family(40_010 + i as u16);
                let mut fx = sctp_service(hook, &e);
                fx.run_counted(&Packet::new(e.client, e.vip, sctp_chunk::INIT).to_bytes());
                let end = match from_backend {
                    false => Packet::new(e.client, e.vip, ending),
                    true => Packet::new(e.backend, e.client, ending),
                };
                let (_, out, _) = fx.run_counted(&end.to_bytes());
                assert!(checked(&out).0, "{hook:?} chunk {ending}");
                let entries = fx.conntrack_entries();
                assert_eq!(entries.len(), 2);
                for (_, entry) in &entries {
                    assert_ne!(
                        entry.flags & ct_flags::CLOSING,
                        0,
                        "{hook:?} chunk {ending}"
                    );
                }
                let init = Packet::new(e.client, e.vip, sctp_chunk::INIT);
                let (_, out, moved) = fx.run_counted(&init.to_bytes());
                assert_frames_equal(&out, &init.with_dst(e.backend).to_bytes());
                assert_eq!(
                    moved,
                    deltas(&[(Counter::Packets, 1), (Counter::NewFlows, 1)]),
                    "{hook:?} chunk {ending}: a new association"
                );
            }
        }
    }
}

#[test]
fn an_sctp_service_without_endpoints_answers_port_unreachable() {
    require_root!();
    for hook in HOOKS {
        let mut fx = Fixture::new(hook);
        fx.set_services(&[(vip(80), Protocol::Sctp, &[][..])]);
        let init = Frame::sctp(client(40_020), vip(80), sctp_chunk::INIT).to_bytes();
        let (verdict, out, moved) = fx.run_counted(&init);
        assert_eq!(verdict, Verdict::SendBack, "{hook:?}");
        assert_frames_equal(&out, &Frame::port_unreachable_reply(&init, SCTP_HLEN));
        assert_eq!(
            moved,
            deltas(&[(Counter::Packets, 1), (Counter::RejectNoBackend, 1)])
        );

        let mut fx = Fixture::new(hook);
        fx.set_services(&[(end6(VIP6, 80), Protocol::Sctp, &[][..])]);
        let init = Frame6::sctp(end6(CLIENT6, 40_020), end6(VIP6, 80), sctp_chunk::INIT);
        let (verdict, out, _) = fx.run_counted(&init.to_bytes());
        assert_eq!(verdict, Verdict::SendBack, "{hook:?}");
        let reply = parse6(&out).expect("an IPv6 reply");
        assert_eq!((reply.src, reply.dst), (VIP6, CLIENT6));
        assert_eq!(reply.l4_checksum_ok, Some(true));
        let quoted = &out[ETH_HLEN + 40 + 8..];
        assert_eq!(quoted, &init.to_bytes()[ETH_HLEN..], "the whole INIT");
    }
}

#[test]
fn an_external_association_to_a_remote_backend_is_masqueraded() {
    require_root!();
    let config = NodeConfig::masquerading(ipv4_mapped(NODE.octets()), SNAT_PORT_MIN, SNAT_PORT_MAX)
        .with_snat_addr6(NODE6.octets());
    for (family, node) in FAMILIES.into_iter().zip([NODE.into(), NODE6.into()]) {
        let e = family(40_030);
        let mut fx = sctp_service(Hook::Xdp, &e);
        fx.set_node_config(&config);
        let init = Packet::new(e.client, e.vip, sctp_chunk::INIT);
        let (verdict, out, moved) = fx.run_counted(&init.to_bytes());
        assert_eq!(verdict, Verdict::Pass);
        let (valid, (port, _)) = checked(&out);
        assert!(
            valid,
            "source and destination ports changed, CRC32c updated"
        );
        assert!((SNAT_PORT_MIN..=SNAT_PORT_MAX).contains(&port));
        let node_end = SocketAddr::new(node, port);
        assert_frames_equal(
            &out,
            &init.with_src(node_end).with_dst(e.backend).to_bytes(),
        );
        assert_eq!(
            moved,
            deltas(&[
                (Counter::Packets, 1),
                (Counter::NewFlows, 1),
                (Counter::Masqueraded, 1)
            ])
        );
        let init_ack = Packet::new(e.backend, node_end, sctp_chunk::INIT_ACK);
        let (_, out, _) = fx.run_counted(&init_ack.to_bytes());
        let expected = init_ack.with_src(e.vip).with_dst(e.client);
        assert_frames_equal(&out, &expected.to_bytes());
    }
}

#[test]
fn a_backends_port_unreachable_reaches_the_client_quoting_its_init_to_the_vip() {
    require_root!();
    for hook in HOOKS {
        let mut fx = Fixture::new(hook);
        fx.set_services(&[(vip(80), Protocol::Sctp, &[backend(1)][..])]);
        let init = Frame::sctp(client(40_040), vip(80), sctp_chunk::INIT);
        let (_, sent, _) = fx.run_counted(&init.to_bytes());
        let unreachable = (icmp::DEST_UNREACH, icmp::PORT_UNREACH);
        let error = Frame::icmp_error(
            *backend(1).ip(),
            *client(0).ip(),
            unreachable,
            &sent_frame(&sent),
            None,
        );
        let (verdict, out, moved) = fx.run_counted(&error.to_bytes());
        assert_eq!(verdict, Verdict::Pass, "{hook:?}");
        // The quote is the client's INIT to the VIP again; its checksum, covering the packet
        // the backend got, is left as quoted (SCTP matches errors by verification tag).
        let mut quoted = init.to_bytes().split_off(ETH_HLEN);
        let crc_at = 20 + SCTP_CHECKSUM;
        quoted[crc_at..crc_at + 4].copy_from_slice(&sent[ETH_HLEN + crc_at..ETH_HLEN + crc_at + 4]);
        let expected = Frame::icmp(
            *vip(0).ip(),
            *client(0).ip(),
            Icmp::error(unreachable, quoted),
        );
        assert_frames_equal(&out, &expected.to_bytes());
        assert_eq!(
            moved,
            deltas(&[(Counter::Packets, 1), (Counter::IcmpErrorTranslated, 1)])
        );
    }
}

/// The frame `bytes` as a builder that reproduces them (an SCTP packet lb-frames built).
fn sent_frame(bytes: &[u8]) -> Frame {
    let p = parse(bytes).expect("a valid frame");
    let (src_port, dst_port) = p.ports.expect("ports");
    let frame = Frame::sctp(
        SocketAddrV4::new(p.src, src_port),
        SocketAddrV4::new(p.dst, dst_port),
        sctp_chunk::INIT,
    );
    assert_eq!(frame.to_bytes(), bytes, "the translated INIT is as built");
    frame
}

#[test]
fn sctp_fragments_pass_untouched() {
    require_root!();
    for hook in HOOKS {
        let e = FAMILIES[0](40_050);
        let mut fx = sctp_service(hook, &e);
        let Packet::V4(data) = Packet::new(e.client, e.vip, DATA).with_value(64) else {
            unreachable!()
        };
        for (more, offset) in [(true, 0), (false, 8)] {
            let fragment = data.clone().with_fragment(more, offset).to_bytes();
            let (verdict, out, moved) = fx.run_counted(&fragment);
            assert_eq!(verdict, Verdict::Pass, "{hook:?}");
            assert_eq!(out, fragment, "{hook:?}: untouched");
            assert_eq!(
                moved,
                deltas(&[(Counter::Packets, 1), (Counter::Fragment, 1)])
            );
        }
    }
}
