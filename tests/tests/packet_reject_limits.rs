//! Rejects through the real TC and XDP programs (BPF_PROG_TEST_RUN) under the rate limits the
//! agent writes to `LB_REJECT_CFG`: a client gets its burst of exact ICMP port unreachable
//! answers, then its further packets are dropped and counted (`drop_reject_suppressed`, the
//! service's drops) while another client is still answered; once the node's burst is spent,
//! every client's rejects are dropped; a client's bucket refills with time (the programs read
//! the real clock, so that case waits a bounded second); the node's bucket, shared by every
//! CPU without a lock, still holds its rate while two CPUs reject at once.

mod fixture;

use std::{
    net::{Ipv4Addr, SocketAddrV4},
    thread,
    time::{Duration, Instant},
};

use fixture::{deltas, vip, Fixture, Hook, Verdict, HOOKS};
use lb_common::{net::UDP_HLEN, reject_limit::Limit, Counter, RejectLimits, IPPROTO_UDP};
use lb_frames::Frame;
use lb_tests::require_root;
use lb_userspace::model::Protocol;

/// The Service without endpoints the clients send to.
const DNS_PORT: u16 = 53;

/// A fixture whose UDP service at vip(53) has no endpoints, with `limits`.
fn limited(hook: Hook, limits: RejectLimits) -> Fixture {
    let mut fx = Fixture::new(hook);
    fx.set_services(&[(vip(DNS_PORT), Protocol::Udp, &[])]);
    fx.set_reject_limits(&limits);
    fx
}

/// Client `n`: 198.18.0.n.
fn client(n: u8, port: u16) -> SocketAddrV4 {
    SocketAddrV4::new(Ipv4Addr::new(198, 18, 0, n), port)
}

/// A query from `from` to the service.
fn query(from: SocketAddrV4) -> Vec<u8> {
    Frame::udp(from, vip(DNS_PORT), b"query").to_bytes()
}

/// Runs `frame` and asserts it is answered with exactly its port unreachable.
fn assert_answered(fx: &mut Fixture, frame: &[u8], what: &str) {
    let (verdict, out, moved) = fx.run_counted(frame);
    assert_eq!(verdict, Verdict::SendBack, "{:?} {what}", fx.hook);
    assert_eq!(
        out,
        Frame::port_unreachable_reply(frame, UDP_HLEN),
        "{what}"
    );
    let expected = deltas(&[(Counter::Packets, 1), (Counter::RejectNoBackend, 1)]);
    assert_eq!(moved, expected, "{what}");
}

/// Runs `frame` and asserts it is dropped as a suppressed reject.
fn assert_suppressed(fx: &mut Fixture, frame: &[u8], what: &str) {
    let (verdict, _, moved) = fx.run_counted(frame);
    assert_eq!(verdict, Verdict::Drop, "{:?} {what}", fx.hook);
    let expected = deltas(&[(Counter::Packets, 1), (Counter::DropRejectSuppressed, 1)]);
    assert_eq!(moved, expected, "{what}");
}

#[test]
fn a_client_gets_its_burst_then_is_dropped_while_others_are_answered() {
    require_root!();
    let limits = RejectLimits {
        per_source: Limit::new(1, 6),
        global: Limit::default(),
    };
    for hook in HOOKS {
        let mut fx = limited(hook, limits);
        for port in 0..6 {
            assert_answered(
                &mut fx,
                &query(client(10, 40_000 + port)),
                "within the burst",
            );
        }
        assert_suppressed(&mut fx, &query(client(10, 40_006)), "the 7th");
        assert_answered(&mut fx, &query(client(11, 40_000)), "another client");
        let stats = fx.service_stats(vip(DNS_PORT), IPPROTO_UDP);
        assert_eq!((stats.rejects, stats.drops), (7, 1), "{hook:?}");
    }
}

#[test]
fn once_the_node_burst_is_spent_every_client_is_dropped() {
    require_root!();
    let limits = RejectLimits {
        per_source: Limit::default(),
        global: Limit::new(1, 3),
    };
    for hook in HOOKS {
        let mut fx = limited(hook, limits);
        for n in 10..13 {
            assert_answered(&mut fx, &query(client(n, 40_000)), "within the node burst");
        }
        for n in [10, 13, 14] {
            assert_suppressed(&mut fx, &query(client(n, 40_001)), "over the node burst");
        }
    }
}

#[test]
fn a_clients_bucket_refills_with_time() {
    require_root!();
    let limits = RejectLimits {
        per_source: Limit::new(1, 1),
        global: Limit::new(1, 1),
    };
    for hook in HOOKS {
        let mut fx = limited(hook, limits);
        assert_answered(&mut fx, &query(client(10, 40_000)), "the first");
        assert_suppressed(&mut fx, &query(client(10, 40_001)), "at once after");
        // Both buckets gain one answer per second.
        thread::sleep(Duration::from_millis(1100));
        assert_answered(&mut fx, &query(client(10, 40_002)), "a second later");
    }
}

#[test]
fn without_limits_every_reject_is_answered() {
    require_root!();
    let unlimited = RejectLimits::default();
    for hook in HOOKS {
        let mut fx = limited(hook, unlimited);
        for port in 0..20 {
            assert_answered(&mut fx, &query(client(10, 40_000 + port)), "no limit");
        }
    }
}

/// Moves the calling thread to CPU `cpu`.
fn pin_to_cpu(cpu: usize) {
    // SAFETY: a zeroed cpu_set_t is an empty set; the calls only read it.
    let pinned = unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &set)
    };
    assert_eq!(
        pinned,
        0,
        "pinning to CPU {cpu}: {}",
        std::io::Error::last_os_error()
    );
}

#[test]
fn the_node_limit_holds_while_two_cpus_reject_at_once() {
    require_root!();
    const PER_CPU: u16 = 20_000;
    let (rate, burst) = (1000, 50);
    let fx = limited(
        Hook::Xdp,
        RejectLimits {
            per_source: Limit::default(),
            global: Limit::new(rate, burst),
        },
    );
    let cpus = thread::available_parallelism().map_or(1, |n| n.get().min(2));
    let fx = &fx;
    let started = Instant::now();
    let answered: usize = thread::scope(|scope| {
        let workers: Vec<_> = (0..cpus)
            .map(|cpu| {
                scope.spawn(move || {
                    pin_to_cpu(cpu);
                    let client = |i: u16| {
                        let [hi, lo] = i.to_be_bytes();
                        SocketAddrV4::new(Ipv4Addr::new(198, 18, hi, lo), 40_000 + cpu as u16)
                    };
                    (0..PER_CPU)
                        .filter(|&i| fx.run(&query(client(i))).0 == Verdict::SendBack)
                        .count()
                })
            })
            .collect();
        workers.into_iter().map(|w| w.join().unwrap()).sum()
    });
    let elapsed = started.elapsed().as_secs_f64();
    let limit = f64::from(burst) + f64::from(rate) * elapsed;
    eprintln!(
        "{cpus} CPUs, {} rejects in {elapsed:.3} s: {answered} answered, the limit {limit:.1}",
        usize::from(PER_CPU) * cpus
    );
    // Racing CPUs may each spend the same credit now and then; a tenth more cannot flake.
    assert!(
        (answered as f64) <= limit * 1.1 + 2.0,
        "{answered} > {limit:.1}"
    );
    assert!((answered as f64) >= f64::from(burst), "{answered}");
}
