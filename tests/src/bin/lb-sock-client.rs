//! A client process for the socket-level tests (`lb_tests::cgroup::SockClient` runs it inside
//! a node namespace and a test cgroup): reads one command per line on stdin and answers each
//! with one line on stdout, until stdin closes.
//!
//! Commands (`ADDR` is `ip:port`): `tcp ADDR` (a new connection, one request), `udp ADDR`
//! (a connected UDP socket, one request), `udpu ADDR` (an unconnected UDP socket: `sendto`,
//! `recvfrom`), `hold ADDR` (opens a TCP connection kept for `ask`), `ask` (one request on
//! the held connection); `udp` and `udpu` take a source address to bind to as a third word. Answers: `ok <answering pod> <peer as the socket sees it> <the socket's local port>`,
//! or `err <io::ErrorKind> <message>`.

use std::io::{self, BufRead, Write};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::Duration;

use lb_tests::servers::{
    tcp_request, udp_connected_request_from, udp_request_from, Reply, TcpClient,
};

/// Every connect, send and receive gives up after this long.
const TIMEOUT: Duration = Duration::from_secs(3);

fn main() {
    let mut held: Option<TcpClient> = None;
    let mut out = io::stdout().lock();
    for line in io::stdin().lock().lines() {
        let Ok(line) = line else { break };
        let answer = match run(&line, &mut held) {
            Ok(reply) => format!("ok {} {} {}", reply.from, reply.peer, reply.local_port),
            Err(e) => format!("err {:?} {e}", e.kind()),
        };
        if writeln!(out, "{answer}")
            .and_then(|()| out.flush())
            .is_err()
        {
            break;
        }
    }
}

fn run(line: &str, held: &mut Option<TcpClient>) -> io::Result<Reply> {
    let mut words = line.split_whitespace();
    let command = words.next().unwrap_or_default();
    let addr = words.next();
    let target = || -> io::Result<SocketAddrV4> {
        addr.and_then(|addr| addr.parse().ok())
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "no ip:port"))
    };
    let from = words.next();
    let source = || -> io::Result<Ipv4Addr> {
        from.map_or(Ok(Ipv4Addr::UNSPECIFIED), |ip| {
            ip.parse()
                .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "bad source"))
        })
    };
    match command {
        "tcp" => tcp_request(target()?, TIMEOUT),
        "udp" => udp_connected_request_from(source()?, target()?, TIMEOUT),
        "udpu" => udp_request_from(source()?, target()?, TIMEOUT),
        "hold" => {
            let mut client = TcpClient::connect(target()?, TIMEOUT)?;
            let reply = client.ask()?;
            *held = Some(client);
            Ok(reply)
        }
        "ask" => held
            .as_mut()
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotConnected, "nothing held"))?
            .ask(),
        other => Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("unknown command {other:?}"),
        )),
    }
}
