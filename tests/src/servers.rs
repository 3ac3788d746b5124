//! Real TCP and UDP servers inside pod namespaces that answer every request with their pod
//! name, and the matching clients.
//!
//! Protocol: TCP, each line received on a connection is answered by `<pod name>\n` (so one
//! connection can ask many times); UDP, each datagram is answered by `<pod name>`.
//! Servers stop and join their threads on drop; every blocking call has a timeout.

use std::{
    collections::{BTreeMap, BTreeSet},
    io::{self, BufRead, BufReader, Write},
    net::{
        IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream, UdpSocket,
    },
    sync::{
        atomic::{AtomicBool, AtomicUsize, Ordering},
        Arc, Mutex,
    },
    thread::{self, JoinHandle},
    time::Duration,
};

use crate::{error::io_context, netns::NetNs, Result};

/// How often blocked server threads wake up to check whether they should stop.
const POLL: Duration = Duration::from_millis(50);
/// The request line clients send.
const REQUEST: &[u8] = b"who are you?\n";

/// State shared by a server and its threads.
#[derive(Debug, Default)]
struct Shared {
    stop: AtomicBool,
    /// TCP connections accepted, or UDP datagrams received.
    served: AtomicUsize,
    /// The client address of each, in order (what the server sees as the source).
    peers: Mutex<Vec<SocketAddr>>,
}

impl Shared {
    fn count(&self, peer: SocketAddr) {
        if let Ok(mut peers) = self.peers.lock() {
            peers.push(peer);
        }
        self.served.fetch_add(1, Ordering::Relaxed);
    }
}

/// A running server; stops on drop.
#[derive(Debug)]
pub struct Server {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

impl Server {
    /// Starts a TCP server on `addr` (IPv4 or IPv6) inside `netns`, answering with `name`.
    pub fn tcp(netns: &NetNs, addr: impl Into<SocketAddr>, name: &str) -> Result<Server> {
        let addr = addr.into();
        let context = format!("cannot listen on tcp {addr} in {}", netns.name());
        let listener = netns
            .run(|| TcpListener::bind(addr))?
            .map_err(io_context(&context))?;
        listener
            .set_nonblocking(true)
            .map_err(io_context(&context))?;
        let shared = Arc::new(Shared::default());
        let (name, state) = (name.to_string(), shared.clone());
        let thread = thread::spawn(move || accept_loop(listener, &name, &state));
        Ok(Server {
            shared,
            thread: Some(thread),
        })
    }

    /// Starts a UDP server on `addr` (IPv4 or IPv6) inside `netns`, answering with `name`.
    pub fn udp(netns: &NetNs, addr: impl Into<SocketAddr>, name: &str) -> Result<Server> {
        let addr = addr.into();
        let context = format!("cannot bind udp {addr} in {}", netns.name());
        let socket = netns
            .run(|| UdpSocket::bind(addr))?
            .map_err(io_context(&context))?;
        socket
            .set_read_timeout(Some(POLL))
            .map_err(io_context(&context))?;
        let shared = Arc::new(Shared::default());
        let (name, state) = (name.to_string(), shared.clone());
        let thread = thread::spawn(move || udp_loop(socket, &name, &state));
        Ok(Server {
            shared,
            thread: Some(thread),
        })
    }

    /// TCP connections accepted, or UDP datagrams received, so far.
    pub fn served(&self) -> usize {
        self.shared.served.load(Ordering::Relaxed)
    }

    /// Client addresses of the connections or datagrams served so far, in order.
    pub fn peers(&self) -> Vec<SocketAddr> {
        self.shared
            .peers
            .lock()
            .map(|p| p.clone())
            .unwrap_or_default()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn accept_loop(listener: TcpListener, name: &str, shared: &Arc<Shared>) {
    let mut connections = Vec::new();
    while !shared.stop.load(Ordering::Relaxed) {
        match listener.accept() {
            Ok((stream, peer)) => {
                shared.count(peer);
                let (name, shared) = (name.to_string(), shared.clone());
                connections.push(thread::spawn(move || {
                    serve_connection(stream, &name, &shared)
                }));
            }
            Err(err) if err.kind() == io::ErrorKind::WouldBlock => thread::sleep(POLL / 5),
            Err(_) => thread::sleep(POLL),
        }
        connections.retain(|c: &JoinHandle<()>| !c.is_finished());
    }
    for connection in connections {
        let _ = connection.join();
    }
}

/// Answers each line with the pod name until EOF, an error, or stop.
fn serve_connection(stream: TcpStream, name: &str, shared: &Shared) {
    let setup = stream
        .set_nonblocking(false)
        .and_then(|()| stream.set_read_timeout(Some(POLL)))
        .and_then(|()| stream.try_clone());
    let Ok(mut writer) = setup else { return };
    let mut reader = BufReader::new(stream);
    let mut line = Vec::new();
    while !shared.stop.load(Ordering::Relaxed) {
        match reader.read_until(b'\n', &mut line) {
            Ok(0) => return,
            Ok(_) if line.ends_with(b"\n") => {
                line.clear();
                if writer.write_all(format!("{name}\n").as_bytes()).is_err() {
                    return;
                }
            }
            // A partial line stays in `line` until the rest arrives.
            Ok(_) => {}
            Err(err) if is_timeout(&err) => {}
            Err(_) => return,
        }
    }
}

fn udp_loop(socket: UdpSocket, name: &str, shared: &Shared) {
    let mut buf = [0u8; 1500];
    while !shared.stop.load(Ordering::Relaxed) {
        if let Ok((_, peer)) = socket.recv_from(&mut buf) {
            // Counted before answering, so a client holding the answer sees the count.
            shared.count(peer);
            let _ = socket.send_to(name.as_bytes(), peer);
        }
    }
}

fn is_timeout(err: &io::Error) -> bool {
    matches!(
        err.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    )
}

/// An answer from a server: who answered, and the address the answer came from as the
/// client's socket sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reply {
    /// The answering pod's name.
    pub from: String,
    /// For TCP the connected socket's peer; for UDP the datagram's source (`recvfrom`).
    pub peer: SocketAddr,
    /// The client socket's port. Requests from one pod to one frontend with the same port are
    /// one flow to the data path, and a fresh socket may get the port an earlier one had.
    pub local_port: u16,
}

/// An open TCP connection that can ask its server repeatedly. Create it inside the client's
/// namespace (with [`NetNs::run`]); use it from anywhere.
#[derive(Debug)]
pub struct TcpClient {
    reader: BufReader<TcpStream>,
    peer: SocketAddr,
    local_port: u16,
}

impl TcpClient {
    /// Connects to `target`, failing after `timeout` (connect and each later read/write).
    pub fn connect(target: impl Into<SocketAddr>, timeout: Duration) -> io::Result<TcpClient> {
        let stream = TcpStream::connect_timeout(&target.into(), timeout)?;
        stream.set_read_timeout(Some(timeout))?;
        stream.set_write_timeout(Some(timeout))?;
        let peer = stream.peer_addr()?;
        let local_port = stream.local_addr()?.port();
        Ok(TcpClient {
            reader: BufReader::new(stream),
            peer,
            local_port,
        })
    }

    /// Sends one request line and reads the answer.
    pub fn ask(&mut self) -> io::Result<Reply> {
        self.reader.get_mut().write_all(REQUEST)?;
        let mut from = String::new();
        if self.reader.read_line(&mut from)? == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "server closed the connection",
            ));
        }
        Ok(Reply {
            from: from.trim_end().to_string(),
            peer: self.peer,
            local_port: self.local_port,
        })
    }
}

/// Opens a TCP connection to `target`, asks once and closes. Run inside the client namespace.
pub fn tcp_request(target: impl Into<SocketAddr>, timeout: Duration) -> io::Result<Reply> {
    TcpClient::connect(target, timeout)?.ask()
}

/// Sends one UDP datagram to `target` from a fresh socket and waits up to `timeout` for the
/// answer. Run inside the client namespace. The socket is unconnected, so an answer from any
/// source is received and its real source is reported in [`Reply::peer`].
pub fn udp_request(target: impl Into<SocketAddr>, timeout: Duration) -> io::Result<Reply> {
    let target = target.into();
    let any: IpAddr = match target {
        SocketAddr::V4(_) => Ipv4Addr::UNSPECIFIED.into(),
        SocketAddr::V6(_) => Ipv6Addr::UNSPECIFIED.into(),
    };
    udp_request_from(any, target, timeout)
}

/// [`udp_request`] from a socket bound to `source` (any port).
pub fn udp_request_from(
    source: impl Into<IpAddr>,
    target: impl Into<SocketAddr>,
    timeout: Duration,
) -> io::Result<Reply> {
    let socket = UdpSocket::bind((source.into(), 0))?;
    socket.set_read_timeout(Some(timeout))?;
    socket.send_to(REQUEST, target.into())?;
    let mut buf = [0u8; 256];
    let (len, peer) = socket.recv_from(&mut buf)?;
    Ok(Reply {
        from: String::from_utf8_lossy(&buf[..len]).into_owned(),
        peer,
        local_port: socket.local_addr()?.port(),
    })
}

/// Like [`udp_request`] from a socket connected to `target` first (`connect()`, then `send`
/// and `recv`), reporting the connected socket's peer (`getpeername`) in [`Reply::peer`].
pub fn udp_connected_request(target: SocketAddrV4, timeout: Duration) -> io::Result<Reply> {
    udp_connected_request_from(Ipv4Addr::UNSPECIFIED, target, timeout)
}

/// [`udp_connected_request`] from a socket bound to `source` (any port).
pub fn udp_connected_request_from(
    source: Ipv4Addr,
    target: SocketAddrV4,
    timeout: Duration,
) -> io::Result<Reply> {
    let socket = UdpSocket::bind((source, 0))?;
    socket.set_read_timeout(Some(timeout))?;
    socket.connect(target)?;
    socket.send(REQUEST)?;
    let mut buf = [0u8; 256];
    let len = socket.recv(&mut buf)?;
    Ok(Reply {
        from: String::from_utf8_lossy(&buf[..len]).into_owned(),
        peer: socket.peer_addr()?,
        local_port: socket.local_addr()?.port(),
    })
}

/// The pods answering `count` new TCP connections from `netns` to `target`, one request
/// each. Panics, naming the request, when one fails or is answered from elsewhere than
/// `target`.
pub fn tcp_answerers(
    netns: &NetNs,
    target: SocketAddrV4,
    count: usize,
    timeout: Duration,
) -> BTreeSet<String> {
    let replies = netns
        .run(|| {
            (0..count)
                .map(|_| tcp_request(target, timeout))
                .collect::<Vec<_>>()
        })
        .expect("running in the namespace");
    let from = netns.name();
    replies
        .into_iter()
        .enumerate()
        .map(|(i, reply)| {
            let reply =
                reply.unwrap_or_else(|e| panic!("{from}: request {i} to {target} failed: {e}"));
            assert_eq!(reply.peer, SocketAddr::V4(target), "{from}: request {i}");
            reply.from
        })
        .collect()
}

/// Counts replies per answering pod.
pub fn tally<'a>(replies: impl IntoIterator<Item = &'a Reply>) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for reply in replies {
        *counts.entry(reply.from.clone()).or_insert(0) += 1;
    }
    counts
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::netns::{unique_prefix, NetNs};

    #[test]
    fn servers_answer_with_their_name_inside_their_namespace() {
        crate::require_root!();
        let netns = NetNs::create(&format!("{}-srv", unique_prefix())).unwrap();
        let addr: SocketAddrV4 = "127.0.0.1:47913".parse().unwrap();
        let tcp = Server::tcp(&netns, addr, "pod-a").unwrap();
        let udp = Server::udp(&netns, addr, "pod-a").unwrap();
        let timeout = Duration::from_secs(2);
        let (mut conn, udp_reply) = netns
            .run(|| {
                (
                    TcpClient::connect(addr, timeout),
                    udp_request(addr, timeout),
                )
            })
            .unwrap();
        let conn = conn.as_mut().unwrap();
        for _ in 0..3 {
            assert_eq!(conn.ask().unwrap().from, "pod-a");
        }
        let udp_reply = udp_reply.unwrap();
        assert_eq!(
            (udp_reply.from.as_str(), udp_reply.peer),
            ("pod-a", addr.into())
        );
        assert_eq!(udp.peers()[0].port(), udp_reply.local_port);
        assert_eq!((tcp.served(), udp.served()), (1, 1));
        assert_eq!(tcp.peers()[0].ip(), std::net::IpAddr::V4(*addr.ip()));
        assert_eq!(udp.peers()[0].ip(), std::net::IpAddr::V4(*addr.ip()));
        // The host namespace has no such server.
        assert!(tcp_request(addr, timeout).is_err());
    }
}
