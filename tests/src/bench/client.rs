//! The client side of the traffic workloads: a process of the client pod ([`Client`] runs
//! `lb-bench-client` inside the pod's namespace, and in a cgroup when one is given). Every loop
//! is bounded by a time window and an operation count, and every socket call by a timeout.

use std::{
    fs::File,
    io::{self, Read, Write},
    net::{Shutdown, SocketAddr, SocketAddrV4, TcpStream},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use serde::{de::DeserializeOwned, Deserialize, Serialize};

use super::{
    error::{io_context, BenchError, Result},
    server::{MODE_ECHO, MODE_SINK},
    stats::percentile,
};
use crate::{agent::built_binary, cgroup, netns::NetNs};

/// The client binary, built next to `lb-bench`.
const CLIENT_BINARY: &str = "lb-bench-client";

/// What one client process measures (`lb-bench-client <workload> ...`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Workload {
    /// [`connection_loop`].
    Connections,
    /// [`stream`].
    Stream,
    /// [`request_response`].
    RequestResponse,
}

/// The client pod's processes: each measurement runs `lb-bench-client` in the pod's namespace
/// (and cgroup, for socket-level translation), which prints its result as one JSON line.
pub struct Client<'a> {
    binary: PathBuf,
    netns: &'a NetNs,
    cgroup: Option<&'a Path>,
}

impl<'a> Client<'a> {
    /// Clients in `netns`, and in the cgroup v2 directory `cgroup` if given.
    pub fn new(netns: &'a NetNs, cgroup: Option<&'a Path>) -> Result<Client<'a>> {
        let binary = built_binary(CLIENT_BINARY)?.map_err(|looked_at| {
            BenchError::Check(format!(
                "{CLIENT_BINARY} not built (looked at {looked_at:?}): `cargo xtask bench` builds it"
            ))
        })?;
        Ok(Client {
            binary,
            netns,
            cgroup,
        })
    }

    /// Runs `workload` against `target` for `window` (at most `max` operations) in a new
    /// process; its result, or the error the client met.
    pub fn run<T: DeserializeOwned>(
        &self,
        workload: Workload,
        target: SocketAddrV4,
        window: Duration,
        max: u32,
    ) -> Result<io::Result<T>> {
        let name = clap::ValueEnum::to_possible_value(&workload)
            .map(|v| v.get_name().to_string())
            .unwrap_or_default();
        let line = format!("{CLIENT_BINARY} {name} {target}");
        let mut command = Command::new(&self.binary);
        command
            .args([
                name,
                target.to_string(),
                window.as_millis().to_string(),
                max.to_string(),
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        let procs: Option<File> = self.cgroup.map(cgroup::open_procs).transpose()?;
        cgroup::enter_before_exec(&mut command, self.netns.open()?, procs);
        let output = command
            .output()
            .map_err(io_context(format!("running {line}")))?;
        if !output.status.success() {
            return Err(BenchError::Check(format!("{line}: {}", output.status)));
        }
        let result: std::result::Result<T, String> = serde_json::from_slice(&output.stdout)
            .map_err(|e| BenchError::Check(format!("{line} printed no result: {e}")))?;
        Ok(result.map_err(io::Error::other))
    }
}

/// Timeout of every connect, read and write.
const IO_TIMEOUT: Duration = Duration::from_secs(1);
/// Bytes per request and per response in the request workloads.
const MESSAGE: usize = 32;
/// Bytes per write in the stream workload.
const STREAM_CHUNK: usize = 128 * 1024;
/// A loop gives up after this many failures in a row (the path is broken, not slow).
const MAX_FAILURES_IN_A_ROW: u32 = 20;

/// One window of the new-connection loop.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ConnectionRun {
    /// Connections that connected, got their answer and closed.
    pub completed: u64,
    pub failed: u64,
    pub seconds: f64,
    /// Completed connections per second.
    pub rate: f64,
    /// Median time of `connect()` (SYN to established), in microseconds.
    pub connect_p50_us: f64,
    pub connect_p99_us: f64,
    /// The server address the client's sockets saw (the VIP when translated).
    pub peer: Option<SocketAddr>,
    /// The first failure, if any.
    pub error: Option<String>,
}

/// Connect, one 32-byte request and its answer, close; repeated for `window` or `max` times.
pub fn connection_loop(target: SocketAddrV4, window: Duration, max: u32) -> ConnectionRun {
    let mut connect_us = Vec::new();
    let (mut failed, mut in_a_row) = (0u64, 0u32);
    let (mut peer, mut error) = (None, None);
    let started = Instant::now();
    while started.elapsed() < window && connect_us.len() as u64 + failed < u64::from(max) {
        match one_request(target) {
            Ok((connect, seen)) => {
                connect_us.push(connect.as_secs_f64() * 1e6);
                peer.get_or_insert(seen);
                in_a_row = 0;
            }
            Err(e) => {
                failed += 1;
                in_a_row += 1;
                error.get_or_insert_with(|| e.to_string());
                if in_a_row >= MAX_FAILURES_IN_A_ROW {
                    break;
                }
            }
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    ConnectionRun {
        completed: connect_us.len() as u64,
        failed,
        seconds,
        rate: connect_us.len() as f64 / seconds,
        connect_p50_us: percentile(&mut connect_us, 0.50),
        connect_p99_us: percentile(&mut connect_us, 0.99),
        peer,
        error,
    }
}

/// One connection with one request; returns the connect time and the peer address.
fn one_request(target: SocketAddrV4) -> io::Result<(Duration, SocketAddr)> {
    let started = Instant::now();
    let mut stream = TcpStream::connect_timeout(&target.into(), IO_TIMEOUT)?;
    let connect = started.elapsed();
    configure(&stream)?;
    let mut request = [b'r'; MESSAGE];
    request[0] = MODE_ECHO;
    stream.write_all(&request)?;
    let mut answer = [0u8; MESSAGE - 1];
    stream.read_exact(&mut answer)?;
    Ok((connect, stream.peer_addr()?))
}

/// One window of the stream workload.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct StreamRun {
    /// Bytes the server confirmed receiving.
    pub bytes: u64,
    pub seconds: f64,
    /// Throughput in Gbit/s.
    pub gbit_per_s: f64,
}

/// Sends as fast as possible on one connection for `window`, then waits for the server's
/// count of received bytes (which must match).
pub fn stream(target: SocketAddrV4, window: Duration) -> io::Result<StreamRun> {
    let mut stream = TcpStream::connect_timeout(&target.into(), IO_TIMEOUT)?;
    configure(&stream)?;
    stream.write_all(&[MODE_SINK])?;
    let chunk = vec![b's'; STREAM_CHUNK];
    let started = Instant::now();
    let mut sent = 0u64;
    while started.elapsed() < window {
        stream.write_all(&chunk)?;
        sent += chunk.len() as u64;
    }
    stream.shutdown(Shutdown::Write)?;
    let mut count = [0u8; 8];
    stream.read_exact(&mut count)?;
    let seconds = started.elapsed().as_secs_f64();
    let received = u64::from_be_bytes(count);
    if received != sent {
        return Err(io::Error::other(format!(
            "server received {received} bytes, client sent {sent}"
        )));
    }
    Ok(StreamRun {
        bytes: sent,
        seconds,
        gbit_per_s: sent as f64 * 8.0 / seconds / 1e9,
    })
}

/// One window of the request/response workload.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RequestResponseRun {
    pub transactions: u64,
    pub seconds: f64,
    /// Transactions per second.
    pub rate: f64,
}

/// 32-byte request, 32-byte answer, repeated on one kept-open connection for `window` or
/// `max` transactions.
pub fn request_response(
    target: SocketAddrV4,
    window: Duration,
    max: u32,
) -> io::Result<RequestResponseRun> {
    let mut stream = TcpStream::connect_timeout(&target.into(), IO_TIMEOUT)?;
    configure(&stream)?;
    stream.write_all(&[MODE_ECHO])?;
    let request = [b'q'; MESSAGE];
    let mut answer = [0u8; MESSAGE];
    let started = Instant::now();
    let mut transactions = 0u64;
    while started.elapsed() < window && transactions < u64::from(max) {
        stream.write_all(&request)?;
        stream.read_exact(&mut answer)?;
        transactions += 1;
    }
    let seconds = started.elapsed().as_secs_f64();
    Ok(RequestResponseRun {
        transactions,
        seconds,
        rate: transactions as f64 / seconds,
    })
}

fn configure(stream: &TcpStream) -> io::Result<()> {
    stream.set_nodelay(true)?;
    stream.set_read_timeout(Some(IO_TIMEOUT))?;
    stream.set_write_timeout(Some(IO_TIMEOUT))
}
