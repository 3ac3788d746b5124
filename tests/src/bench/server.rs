//! The benchmark's TCP server, one per backend pod: it serves one connection at a time (the
//! clients are sequential) and counts what it served, so a run can check that its requests
//! really reached the backends.
//!
//! Protocol: the first byte of a connection picks the mode. [`MODE_ECHO`]: every byte read is
//! written back (requests, request/response). [`MODE_SINK`]: bytes are read until the client
//! shuts its side down, then their count is sent as 8 big-endian bytes.

use std::{
    io::{self, Read, Write},
    net::{SocketAddrV4, TcpListener, TcpStream},
    os::fd::AsRawFd,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
    thread::{self, JoinHandle},
    time::Duration,
};

use super::error::{io_context, Result};
use crate::netns::NetNs;

/// First byte of an echo connection.
pub const MODE_ECHO: u8 = b'E';
/// First byte of a sink connection.
pub const MODE_SINK: u8 = b'S';
/// How often a blocked server wakes up to check whether it should stop.
const POLL: Duration = Duration::from_millis(100);

#[derive(Debug, Default)]
struct Shared {
    stop: AtomicBool,
    connections: AtomicU64,
}

/// A running server; stops on drop.
#[derive(Debug)]
pub struct BenchServer {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

impl BenchServer {
    /// Listens on `addr` inside `netns`.
    pub fn start(netns: &NetNs, addr: SocketAddrV4) -> Result<BenchServer> {
        let context = format!("cannot listen on {addr} in {}", netns.name());
        let listener = netns
            .run(|| TcpListener::bind(addr))?
            .map_err(io_context(&context))?;
        set_timeout(&listener, libc::SO_RCVTIMEO, POLL).map_err(io_context(&context))?;
        let shared = Arc::new(Shared::default());
        let state = shared.clone();
        let thread = thread::spawn(move || serve(listener, &state));
        Ok(BenchServer {
            shared,
            thread: Some(thread),
        })
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> u64 {
        self.shared.connections.load(Ordering::Relaxed)
    }
}

impl Drop for BenchServer {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn serve(listener: TcpListener, shared: &Shared) {
    while !shared.stop.load(Ordering::Relaxed) {
        // accept() honours SO_RCVTIMEO, so this wakes up every POLL to check `stop`.
        let Ok((stream, _)) = listener.accept() else {
            continue;
        };
        shared.connections.fetch_add(1, Ordering::Relaxed);
        let _ = serve_connection(stream, shared);
    }
}

fn serve_connection(mut stream: TcpStream, shared: &Shared) -> io::Result<()> {
    stream.set_nodelay(true)?;
    stream.set_read_timeout(Some(POLL))?;
    let mut buf = vec![0u8; 256 * 1024];
    let mut mode = None;
    let mut received = 0u64;
    loop {
        if shared.stop.load(Ordering::Relaxed) {
            return Ok(());
        }
        let n = match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                continue
            }
            Err(e) => return Err(e),
        };
        let mut data = &buf[..n];
        if mode.is_none() {
            mode = Some(data[0]);
            data = &data[1..];
        }
        match mode {
            Some(MODE_ECHO) => stream.write_all(data)?,
            _ => received += data.len() as u64,
        }
    }
    if mode == Some(MODE_SINK) {
        stream.write_all(&received.to_be_bytes())?;
    }
    Ok(())
}

/// Sets a socket timeout option (SO_RCVTIMEO / SO_SNDTIMEO) on any socket.
pub(crate) fn set_timeout(socket: &impl AsRawFd, option: i32, timeout: Duration) -> io::Result<()> {
    let value = libc::timeval {
        tv_sec: timeout.as_secs() as libc::time_t,
        tv_usec: timeout.subsec_micros() as libc::suseconds_t,
    };
    // SAFETY: `value` is a valid timeval for the duration of the call and its size is passed.
    let result = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            option,
            (&value as *const libc::timeval).cast(),
            std::mem::size_of::<libc::timeval>() as libc::socklen_t,
        )
    };
    if result != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}
