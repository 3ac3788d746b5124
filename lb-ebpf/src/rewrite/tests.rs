use super::*;
use crate::{
    parse::ipv4_flow,
    testing::{checksums_valid, frame, FrameSpec, Lcg, SlicePacket},
};
use lb_common::{IPPROTO_TCP, IPPROTO_UDP};

const BACKEND: FlowEnd = FlowEnd {
    addr: [198, 18, 1, 2],
    port: 8080u16.to_be_bytes(),
};

/// Rewrites `side` of the frame built from `spec` and returns the bytes.
fn rewritten(spec: &FrameSpec, side: Side, to: FlowEnd) -> Vec<u8> {
    let mut pkt = SlicePacket::new(frame(spec));
    let flow = ipv4_flow(&pkt).unwrap();
    in_place(&mut pkt, &flow, side, to).unwrap();
    pkt.bytes
}

#[test]
fn destination_rewrite_matches_a_frame_built_for_the_backend() {
    let spec = FrameSpec::tcp_syn();
    let out = rewritten(&spec, Side::Destination, BACKEND);
    assert_eq!(
        out,
        frame(&FrameSpec {
            dst: BACKEND,
            ..spec
        })
    );
}

#[test]
fn source_rewrite_matches_a_frame_built_from_the_vip() {
    let spec = FrameSpec {
        src: BACKEND,
        ..FrameSpec::udp().reversed()
    };
    let vip = FrameSpec::udp().dst;
    let out = rewritten(&spec, Side::Source, vip);
    assert_eq!(out, frame(&FrameSpec { src: vip, ..spec }));
}

#[test]
fn rewrite_after_ipv4_options_keeps_options_and_checksums() {
    let spec = FrameSpec {
        ip_options: (0..40).collect(),
        payload: b"GET / HTTP/1.1\r\n".to_vec(),
        ..FrameSpec::tcp_syn()
    };
    let out = rewritten(&spec, Side::Destination, BACKEND);
    assert_eq!(
        out,
        frame(&FrameSpec {
            dst: BACKEND,
            ..spec
        })
    );
}

#[test]
fn udp_without_checksum_stays_without() {
    let spec = FrameSpec {
        udp_no_checksum: true,
        ..FrameSpec::udp()
    };
    let out = rewritten(&spec, Side::Destination, BACKEND);
    assert_eq!(&out[40..42], &[0, 0]);
    assert_eq!(&out[30..34], &BACKEND.addr);
    assert!(checksums_valid(&out));
}

#[test]
fn udp_checksum_that_computes_to_zero_is_sent_as_ffff() {
    let spec = FrameSpec::udp();
    let original = frame(&spec);
    // Choose the new port so that the updated sum is exactly 0xffff (checksum 0).
    let check = u16::from_be_bytes([original[40], original[41]]);
    let old_port = u16::from_be_bytes(spec.dst.port);
    let sum = u32::from(!check) + u32::from(!old_port);
    let folded = ((sum & 0xffff) + (sum >> 16)) as u16;
    let to = FlowEnd {
        addr: spec.dst.addr,
        port: (!folded).to_be_bytes(),
    };
    let out = rewritten(&spec, Side::Destination, to);
    assert_eq!(&out[40..42], &[0xff, 0xff]);
    assert!(checksums_valid(&out));
}

#[test]
fn random_rewrites_keep_checksums_valid() {
    let mut rng = Lcg(7);
    for i in 0..2_000 {
        let [opt_words, len]: [u8; 2] = rng.bytes();
        let spec = FrameSpec {
            src: FlowEnd {
                addr: rng.bytes(),
                port: rng.bytes(),
            },
            dst: FlowEnd {
                addr: rng.bytes(),
                port: rng.bytes(),
            },
            proto: if i % 2 == 0 { IPPROTO_TCP } else { IPPROTO_UDP },
            ip_options: vec![1; usize::from(opt_words % 11) * 4],
            payload: (0..len % 64).collect(),
            ..FrameSpec::tcp_syn()
        };
        let to = FlowEnd {
            addr: rng.bytes(),
            port: rng.bytes(),
        };
        let side = if i % 3 == 0 {
            Side::Source
        } else {
            Side::Destination
        };
        let out = rewritten(&spec, side, to);
        assert!(checksums_valid(&out), "spec {spec:?} to {to:?} {side:?}");
        let (addr_offset, port_offset, _) =
            side.locate(&ipv4_flow(&SlicePacket::new(out.clone())).unwrap());
        assert_eq!(&out[addr_offset..addr_offset + 4], &to.addr);
        assert_eq!(&out[port_offset..port_offset + 2], &to.port);
    }
}

#[test]
fn rewriting_both_sides_matches_a_frame_built_for_the_new_ends() {
    let mut rng = Lcg(11);
    for i in 0..1_000 {
        let spec = FrameSpec {
            src: FlowEnd {
                addr: rng.bytes(),
                port: rng.bytes(),
            },
            proto: if i % 2 == 0 { IPPROTO_TCP } else { IPPROTO_UDP },
            udp_no_checksum: i % 4 == 1,
            payload: rng.bytes::<6>().to_vec(),
            ..FrameSpec::tcp_syn()
        };
        let (src, dst) = (
            FlowEnd {
                addr: rng.bytes(),
                port: rng.bytes(),
            },
            FlowEnd {
                addr: rng.bytes(),
                port: rng.bytes(),
            },
        );
        let mut pkt = SlicePacket::new(frame(&spec));
        let flow = ipv4_flow(&pkt).unwrap();
        in_place(&mut pkt, &flow, Side::Destination, dst).unwrap();
        in_place(&mut pkt, &flow, Side::Destination.other(), src).unwrap();
        assert_eq!(
            pkt.bytes,
            frame(&FrameSpec { src, dst, ..spec }),
            "case {i}"
        );
        assert!(checksums_valid(&pkt.bytes));
    }
}

#[test]
fn failed_store_is_reported() {
    let mut pkt = SlicePacket::new(frame(&FrameSpec::tcp_syn()));
    let flow = ipv4_flow(&pkt).unwrap();
    pkt.fail_stores = true;
    assert_eq!(
        in_place(&mut pkt, &flow, Side::Destination, BACKEND),
        Err(RewriteFailed)
    );
}
