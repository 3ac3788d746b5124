//! The agent's side of `lb-agent monitor`: a unix socket that streams every event the
//! programs write as one JSON line ([`super::record`]) to each connected client, and keeps
//! `LB_MONITOR` (the kernel's gate for rejects, new flows and masquerade allocations) at the
//! number of clients.
//!
//! A slow client never holds up the agent or the other clients: each reads from its own
//! position in a bounded broadcast queue, and one that falls more than [`CLIENT_QUEUE`] lines
//! behind skips the oldest and is told how many with a `{"lost":N}` line.

use std::ffi::CStr;
use std::fs::{self, DirBuilder, Permissions};
use std::io::{self, ErrorKind};
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use jiff::Timestamp;
use lb_common::event::Event;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::broadcast::{self, error::RecvError};
use tokio::task::JoinHandle;
use tracing::{info, warn};

use super::record::{Line, Names, Record};
use crate::datapath::DatapathMaps;
use crate::error::Chain;
use crate::reconciler::MapWriteError;

/// Lines a client may fall behind before it loses the oldest.
pub const CLIENT_QUEUE: usize = 4096;
/// How long the accept loop pauses after a failed accept (e.g. out of descriptors).
const ACCEPT_RETRY: Duration = Duration::from_millis(100);

/// Why the monitor socket cannot be served.
#[derive(Debug, thiserror::Error)]
pub enum MonitorError {
    #[error("cannot create the monitor socket {path}")]
    Socket {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot reset the monitor gate")]
    Gate(#[from] MapWriteError),
}

/// The connected clients' count and the map it is written to.
struct Gate {
    maps: DatapathMaps,
    clients: u32,
}

impl Gate {
    fn lock(gate: &Mutex<Gate>) -> MutexGuard<'_, Gate> {
        gate.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn add(&mut self, clients: i32) -> Result<(), MapWriteError> {
        self.clients = self.clients.saturating_add_signed(clients);
        self.maps.set_monitor_clients(self.clients)
    }
}

/// Counts a client in the gate while it is connected.
struct Client(Arc<Mutex<Gate>>);

impl Client {
    fn connect(gate: &Arc<Mutex<Gate>>) -> Client {
        if let Err(e) = Gate::lock(gate).add(1) {
            warn!("monitor: opening the kernel's gate failed: {}", Chain(&e));
        }
        Client(gate.clone())
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        if let Err(e) = Gate::lock(&self.0).add(-1) {
            warn!("monitor: closing the kernel's gate failed: {}", Chain(&e));
        }
    }
}

/// The served socket; removed (and every client disconnected) on drop.
pub struct MonitorServer {
    path: PathBuf,
    lines: broadcast::Sender<Arc<str>>,
    gate: Arc<Mutex<Gate>>,
    accept: JoinHandle<()>,
}

impl MonitorServer {
    /// Serves `path` (its directory created 0700 if missing, a stale socket replaced, the
    /// socket itself 0600), with the pinned `maps` for the gate and the services' names.
    /// Must run inside a Tokio runtime.
    pub fn start(path: &Path, maps: DatapathMaps) -> Result<MonitorServer, MonitorError> {
        let mut gate = Gate { maps, clients: 0 };
        // Closes a gate an agent that died with clients connected left open, also when no
        // socket can be served.
        gate.add(0)?;
        let socket_error = |source| MonitorError::Socket {
            path: path.to_path_buf(),
            source,
        };
        if let Some(dir) = path.parent().filter(|dir| !dir.exists()) {
            DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(socket_error)?;
        }
        match fs::remove_file(path) {
            Err(e) if e.kind() != ErrorKind::NotFound => return Err(socket_error(e)),
            _ => {}
        }
        let listener = UnixListener::bind(path).map_err(socket_error)?;
        fs::set_permissions(path, Permissions::from_mode(0o600)).map_err(socket_error)?;
        let gate = Arc::new(Mutex::new(gate));
        let (lines, _) = broadcast::channel(CLIENT_QUEUE);
        let accept = tokio::spawn(accept_clients(listener, lines.clone(), gate.clone()));
        info!("monitor: serving events on {}", path.display());
        Ok(MonitorServer {
            path: path.to_path_buf(),
            lines,
            gate,
            accept,
        })
    }

    /// Sends `event` to every connected client; costs nothing without one.
    pub fn publish(&self, event: &Event) {
        if self.lines.receiver_count() == 0 {
            return;
        }
        let service = match event.group_id {
            0 => None,
            id => Gate::lock(&self.gate).maps.service_name(id).ok().flatten(),
        };
        let names = Names {
            time: wall_clock(event.timestamp_ns),
            service,
            iface: iface_name(event.ifindex),
        };
        let Some(record) = Record::new(event, names) else {
            return;
        };
        let mut line = match serde_json::to_string(&Line::Event(Box::new(record))) {
            Ok(line) => line,
            Err(e) => {
                warn!("monitor: encoding an event failed: {e}");
                return;
            }
        };
        line.push('\n');
        // Fails only when every client left since the check above.
        let _ = self.lines.send(line.into());
    }
}

impl Drop for MonitorServer {
    fn drop(&mut self) {
        self.accept.abort();
        let _ = fs::remove_file(&self.path);
    }
}

/// Accepts clients until the server is dropped.
async fn accept_clients(
    listener: UnixListener,
    lines: broadcast::Sender<Arc<str>>,
    gate: Arc<Mutex<Gate>>,
) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                // Subscribed before the gate opens: the client misses none of the events.
                let receiver = lines.subscribe();
                let client = Client::connect(&gate);
                tokio::spawn(serve_client(stream, receiver, client));
            }
            Err(e) => {
                warn!("monitor: accepting a client failed: {e}");
                tokio::time::sleep(ACCEPT_RETRY).await;
            }
        }
    }
}

/// Streams lines to one client until it hangs up, a write fails or the server goes.
async fn serve_client(
    stream: UnixStream,
    mut lines: broadcast::Receiver<Arc<str>>,
    _client: Client,
) {
    let (mut reader, mut writer) = stream.into_split();
    let mut ignored = [0u8; 64];
    loop {
        let line = tokio::select! {
            // Clients send nothing: a read ends only when the client hangs up.
            read = reader.read(&mut ignored) => match read {
                Ok(0) | Err(_) => return,
                Ok(_) => continue,
            },
            line = lines.recv() => match line {
                Ok(line) => line,
                Err(RecvError::Lagged(lost)) => {
                    let mut line = serde_json::to_string(&Line::Lost { lost }).unwrap_or_default();
                    line.push('\n');
                    line.into()
                }
                Err(RecvError::Closed) => return,
            },
        };
        if writer.write_all(line.as_bytes()).await.is_err() {
            return;
        }
    }
}

/// The wall-clock time of a `CLOCK_MONOTONIC` timestamp (`bpf_ktime_get_ns`).
fn wall_clock(monotonic_ns: u64) -> Timestamp {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `now` is a valid timespec to write.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut now) };
    let now_ns = (now.tv_sec as u64)
        .saturating_mul(1_000_000_000)
        .saturating_add(now.tv_nsec as u64);
    let at = SystemTime::now() - Duration::from_nanos(now_ns.saturating_sub(monotonic_ns));
    Timestamp::try_from(at).unwrap_or(Timestamp::UNIX_EPOCH)
}

/// The name of interface `ifindex` in the agent's network namespace, if it exists.
fn iface_name(ifindex: u32) -> Option<String> {
    let mut name = [0 as libc::c_char; libc::IF_NAMESIZE];
    // SAFETY: `name` has the IF_NAMESIZE bytes the call may write.
    let found = unsafe { libc::if_indextoname(ifindex, name.as_mut_ptr()) };
    if found.is_null() {
        return None;
    }
    // SAFETY: on success the buffer holds a NUL-terminated name.
    let name = unsafe { CStr::from_ptr(name.as_ptr()) };
    Some(name.to_string_lossy().into_owned())
}
