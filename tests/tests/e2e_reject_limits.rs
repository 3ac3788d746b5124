//! End to end: a client pod that sends a tight burst of UDP datagrams to a Service without
//! endpoints gets only about the kernel's per-source ICMP budget of port unreachable errors
//! back (the agent's default limits: bursts of 6, then 1/s), not one per datagram; the
//! agent's counters account for every datagram as answered or suppressed.

use std::{
    io,
    net::{Ipv4Addr, SocketAddrV4, UdpSocket},
    os::fd::{FromRawFd, OwnedFd},
    time::{Duration, Instant},
};

use lb_common::reject_limit::{PER_SOURCE_BURST, PER_SOURCE_RATE};
use lb_tests::{
    cluster::Cluster,
    example::{self, ENDPOINTSLICE_FILE},
    inspect_output, require_root,
};

/// Datagrams the client sends, after the first that shows the path works.
const DATAGRAMS: usize = 200;
/// How long the client waits for errors after its last datagram.
const QUIET: Duration = Duration::from_millis(500);

/// A raw ICMP socket in the client pod, which gets a copy of every ICMP packet the pod
/// receives; held as a `UdpSocket` only for std's `recv` and read timeout, which are the
/// same calls for a raw socket.
fn icmp_listener() -> io::Result<UdpSocket> {
    // SAFETY: plain socket(2) call; the descriptor is owned at once.
    let fd = unsafe {
        libc::socket(
            libc::AF_INET,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            libc::IPPROTO_ICMP,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a fresh descriptor nothing else owns.
    let socket = UdpSocket::from(unsafe { OwnedFd::from_raw_fd(fd) });
    socket.set_read_timeout(Some(QUIET))?;
    Ok(socket)
}

/// Whether `packet` (IPv4 + ICMP, as a raw socket reads it) is a port unreachable from
/// `frontend`'s address quoting a UDP datagram from port `client_port` to `frontend`.
fn is_port_unreachable(packet: &[u8], frontend: SocketAddrV4, client_port: u16) -> bool {
    let Some(ihl) = packet.first().map(|b| usize::from(b & 0x0f) * 4) else {
        return false;
    };
    let (Some(src), Some(icmp)) = (packet.get(12..16), packet.get(ihl..)) else {
        return false;
    };
    let Some(quoted) = icmp.get(8..) else {
        return false;
    };
    let quoted_ihl = quoted.first().map_or(0, |b| usize::from(b & 0x0f) * 4);
    let Some(ports) = quoted.get(quoted_ihl..quoted_ihl + 4) else {
        return false;
    };
    src == frontend.ip().octets()
        && icmp[..2] == [3, 3]
        && quoted.get(9) == Some(&17)
        && ports[..2] == client_port.to_be_bytes()
        && ports[2..] == frontend.port().to_be_bytes()
}

/// Port unreachable errors the listener gets for `client_port` until none arrives for
/// [`QUIET`].
fn count_errors(
    listener: &UdpSocket,
    frontend: SocketAddrV4,
    client_port: u16,
) -> io::Result<usize> {
    let mut buf = [0; 1500];
    let mut count = 0;
    loop {
        match listener.recv(&mut buf) {
            Ok(n) => count += usize::from(is_port_unreachable(&buf[..n], frontend, client_port)),
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                return Ok(count)
            }
            Err(e) => return Err(e),
        }
    }
}

/// What the client saw: port unreachable errors, and how long its datagrams took to send.
struct Seen {
    errors: usize,
    sending: Duration,
}

/// From the client pod: one datagram to `frontend` whose error shows the reject path works,
/// then [`DATAGRAMS`] more as fast as the socket takes them, from one unconnected socket
/// (which reports no error, so every send goes out).
fn flood(frontend: SocketAddrV4) -> io::Result<Seen> {
    let listener = icmp_listener()?;
    let socket = UdpSocket::bind(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0))?;
    let port = socket.local_addr()?.port();
    let started = Instant::now();
    socket.send_to(b"first", frontend)?;
    let first = count_errors(&listener, frontend, port)?;
    assert_eq!(first, 1, "the first datagram is rejected");
    for i in 0..DATAGRAMS {
        socket.send_to(format!("query {i}").as_bytes(), frontend)?;
    }
    let sending = started.elapsed();
    let errors = first + count_errors(&listener, frontend, port)?;
    Ok(Seen { errors, sending })
}

#[test]
fn a_burst_to_a_service_without_endpoints_gets_the_per_source_budget_of_errors() {
    require_root!();
    let dir = tempfile::tempdir().unwrap();
    example::copy_manifests(dir.path()).unwrap();
    example::replace_manifest(
        dir.path(),
        ENDPOINTSLICE_FILE,
        &example::endpointslice_yaml(&[]),
    )
    .unwrap();
    let cluster = Cluster::start(dir.path(), "info").unwrap();
    let counter = |name| {
        let inspect = cluster.agent().inspect().unwrap();
        inspect_output::counter(&inspect, name).unwrap_or(0)
    };
    let (rejected, suppressed) = (
        counter("reject_no_backend"),
        counter("drop_reject_suppressed"),
    );

    let seen = cluster
        .client()
        .netns
        .run(|| flood(example::udp_vip()))
        .unwrap()
        .unwrap();

    let sent = DATAGRAMS as u64 + 1;
    let rejected = counter("reject_no_backend") - rejected;
    let suppressed = counter("drop_reject_suppressed") - suppressed;
    assert_eq!(
        rejected + suppressed,
        sent,
        "every datagram answered or suppressed"
    );
    assert_eq!(
        seen.errors as u64, rejected,
        "each answer reached the client"
    );
    // Bursts of 6, then 1/s while sending; 2 more for clock granularity.
    let budget =
        f64::from(PER_SOURCE_BURST) + f64::from(PER_SOURCE_RATE) * seen.sending.as_secs_f64() + 2.0;
    assert!(
        (seen.errors as f64) <= budget,
        "{} errors for {sent} datagrams sent in {:?}",
        seen.errors,
        seen.sending
    );
    assert!(suppressed > 0, "{rejected} answered, none suppressed");
    assert!(
        cluster
            .agent()
            .log()
            .contains("reject rate limits: per client 1/s, bursts of 6; node 1000/s, bursts of 50"),
        "the agent says which limits it applies"
    );
}
