//! Client load that notices every lost request and broken connection, for tests that disturb
//! the agent (kill it, restart it) while traffic flows: a few long-lived TCP connections that
//! must keep their backend, plus a new TCP connection and a UDP request every round.

use std::{
    fs::File,
    net::SocketAddrV4,
    sync::atomic::{AtomicBool, Ordering},
    thread,
    time::{Duration, Instant},
};

use crate::{
    netns,
    servers::{tcp_request, udp_request, TcpClient},
};

/// Long-lived connections the client keeps asking on.
pub const KEPT_CONNECTIONS: usize = 4;
/// Pause between two rounds of client traffic.
const ROUND_PAUSE: Duration = Duration::from_millis(20);
/// The client stops on its own after this long, whatever happens to the test.
const MAX_TRAFFIC: Duration = Duration::from_secs(120);
/// Per-request timeout.
const TIMEOUT: Duration = Duration::from_secs(2);

/// What the client saw.
#[derive(Debug, Default)]
pub struct Traffic {
    /// Requests on new connections (TCP) or fresh sockets (UDP), and asks on kept connections.
    pub requests: usize,
    /// New-connection and UDP requests that got no answer.
    pub failed: usize,
    /// Asks on kept connections that failed or were answered by another backend.
    pub broken: usize,
}

impl Traffic {
    /// Prints the tally as `<what>restarts: N, requests: N, failed: N, broken: N` and asserts
    /// that at least `min_requests` were made and none failed or broke.
    pub fn assert_nothing_lost(&self, what: &str, restarts: usize, min_requests: usize) {
        println!(
            "{what}restarts: {restarts}, requests: {}, failed: {}, broken: {}",
            self.requests, self.failed, self.broken
        );
        assert!(
            self.requests >= min_requests,
            "{what}too little traffic to mean anything: {self:?}"
        );
        assert_eq!((self.failed, self.broken), (0, 0), "{what}{self:?}");
    }
}

/// Runs client traffic inside the namespace `client` until `stop` is set (or two minutes
/// pass): each round asks once on every kept connection to `tcp`, and makes one new TCP
/// connection to `tcp` and one UDP request to `udp`. Panics if the kept connections cannot be
/// opened in the first place.
pub fn client_traffic(
    client: File,
    tcp: SocketAddrV4,
    udp: SocketAddrV4,
    stop: &AtomicBool,
) -> Traffic {
    netns::enter(&client).expect("entering the client namespace");
    let mut kept: Vec<(TcpClient, String)> = (0..KEPT_CONNECTIONS)
        .map(|i| {
            let mut conn = TcpClient::connect(tcp, TIMEOUT)
                .unwrap_or_else(|e| panic!("kept connection {i} to {tcp}: {e}"));
            let first = conn
                .ask()
                .unwrap_or_else(|e| panic!("kept connection {i} to {tcp}: {e}"));
            (conn, first.from)
        })
        .collect();
    let mut traffic = Traffic::default();
    let deadline = Instant::now() + MAX_TRAFFIC;
    while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
        for (i, (conn, backend)) in kept.iter_mut().enumerate() {
            traffic.requests += 1;
            match conn.ask() {
                Ok(reply) if reply.from == *backend => {}
                Ok(reply) => {
                    eprintln!(
                        "kept connection {i} to {tcp} moved from {backend} to {}",
                        reply.from
                    );
                    traffic.broken += 1;
                }
                Err(e) => {
                    eprintln!("kept connection {i} to {tcp} broke: {e}");
                    traffic.broken += 1;
                    if let Ok(new) = TcpClient::connect(tcp, TIMEOUT) {
                        *conn = new;
                    }
                }
            }
        }
        for result in [tcp_request(tcp, TIMEOUT), udp_request(udp, TIMEOUT)] {
            traffic.requests += 1;
            if let Err(e) = result {
                eprintln!("request failed: {e}");
                traffic.failed += 1;
            }
        }
        thread::sleep(ROUND_PAUSE);
    }
    traffic
}
