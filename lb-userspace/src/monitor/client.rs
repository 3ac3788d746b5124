//! `lb-agent monitor`: reads the agent's event stream ([`super::server`]), keeps the events
//! the filter matches and prints each as a line of text or JSON.

use std::io::{self, BufRead, BufReader, ErrorKind, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};

use tracing::warn;

use super::filter::EventFilter;
use super::record::Line;

/// What to print, from where.
#[derive(Clone, Debug)]
pub struct Options {
    pub socket: PathBuf,
    pub filter: EventFilter,
    /// The agent's JSON lines instead of text.
    pub json: bool,
    /// Stop after this many matching events.
    pub count: Option<u64>,
}

/// Why the stream ended early.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error(
        "no agent serves {0}: is lb-agent running on this node (and --socket its --monitor-socket)?"
    )]
    NoAgent(PathBuf),
    #[error("cannot connect to {0}: permission denied (run as root)")]
    Denied(PathBuf),
    #[error("cannot connect to {path}")]
    Connect {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("the agent closed the stream (it stopped?)")]
    Closed,
    #[error("reading the stream failed")]
    Read(#[source] io::Error),
    #[error("writing the events failed")]
    Write(#[source] io::Error),
}

/// Prints the matching events to `out` until `options.count` are printed (never without a
/// count, unless the agent stops or `out` is closed, which ends it quietly).
pub fn run(options: &Options, out: &mut impl Write) -> Result<(), ClientError> {
    let stream = connect(&options.socket)?;
    let mut printed = 0;
    if options.count == Some(0) {
        return Ok(());
    }
    for line in BufReader::new(stream).lines() {
        let text = line.map_err(ClientError::Read)?;
        let record = match serde_json::from_str::<Line>(&text) {
            Ok(Line::Event(record)) => record,
            Ok(Line::Lost { lost }) => {
                warn!("monitor: {lost} events skipped: this client read too slowly");
                continue;
            }
            Err(e) => {
                warn!("monitor: skipped a line that is no event ({e}): {text}");
                continue;
            }
        };
        if !options.filter.matches(&record) {
            continue;
        }
        let written = match options.json {
            true => writeln!(out, "{text}"),
            false => writeln!(out, "{record}"),
        };
        match written.and_then(|()| out.flush()) {
            Err(e) if e.kind() == ErrorKind::BrokenPipe => return Ok(()),
            result => result.map_err(ClientError::Write)?,
        }
        printed += 1;
        if options.count == Some(printed) {
            return Ok(());
        }
    }
    Err(ClientError::Closed)
}

fn connect(path: &Path) -> Result<UnixStream, ClientError> {
    UnixStream::connect(path).map_err(|source| match source.kind() {
        ErrorKind::NotFound | ErrorKind::ConnectionRefused => {
            ClientError::NoAgent(path.to_path_buf())
        }
        ErrorKind::PermissionDenied => ClientError::Denied(path.to_path_buf()),
        _ => ClientError::Connect {
            path: path.to_path_buf(),
            source,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixListener;
    use std::thread;

    const NEW_FLOW: &str = r#"{"time":"2026-12-02T15:04:05.123Z","kind":"new-flow","reason":"new_flows","service":"e2e/web:http","service_id":3,"protocol":"tcp","source":"198.18.0.10:40000","destination":"198.19.0.1:80","backend":"198.18.1.1:8080","nat":null,"iface":"veth-a","ifindex":4,"hook":"tc-ingress"}"#;
    const REJECT: &str = r#"{"time":"2026-12-02T15:04:06Z","kind":"reject","reason":"reject_no_backend","service":"e2e/empty:http","service_id":4,"protocol":"udp","source":"198.18.0.10:40001","destination":"198.19.0.2:53","backend":null,"nat":null,"iface":null,"ifindex":4,"hook":"xdp"}"#;

    /// Serves `lines` once on a socket in `dir`; returns its path.
    fn agent(dir: &Path, lines: &'static [&'static str]) -> PathBuf {
        let path = dir.join("monitor.sock");
        let listener = UnixListener::bind(&path).unwrap();
        thread::spawn(move || {
            let (mut stream, _) = listener.accept().unwrap();
            for line in lines {
                writeln!(stream, "{line}").unwrap();
            }
        });
        path
    }

    fn options(socket: PathBuf) -> Options {
        Options {
            socket,
            filter: EventFilter::default(),
            json: false,
            count: None,
        }
    }

    #[test]
    fn matching_events_are_printed_until_the_count() {
        let dir = tempfile::tempdir().unwrap();
        let socket = agent(
            dir.path(),
            &[r#"{"lost":3}"#, "garbage", REJECT, NEW_FLOW, REJECT],
        );
        let mut options = options(socket);
        options.filter.address = Some("198.18.1.1".parse().unwrap());
        options.count = Some(1);
        let mut out = Vec::new();
        run(&options, &mut out).unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "15:04:05.123 new-flow tcp 198.18.0.10:40000 -> 198.19.0.1:80 => 198.18.1.1:8080 \
             svc e2e/web:http iface veth-a tc-ingress\n"
        );
    }

    #[test]
    fn json_lines_are_passed_on_and_the_end_of_the_stream_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let mut options = options(agent(dir.path(), &[NEW_FLOW, REJECT]));
        options.json = true;
        let mut out = Vec::new();
        let result = run(&options, &mut out);
        assert!(matches!(result, Err(ClientError::Closed)), "{result:?}");
        assert_eq!(
            String::from_utf8(out).unwrap(),
            format!("{NEW_FLOW}\n{REJECT}\n")
        );
    }

    #[test]
    fn a_missing_socket_says_no_agent_serves_it() {
        let dir = tempfile::tempdir().unwrap();
        let error = run(&options(dir.path().join("none.sock")), &mut Vec::new()).unwrap_err();
        assert!(matches!(error, ClientError::NoAgent(_)));
        assert!(error.to_string().starts_with("no agent serves "), "{error}");
    }
}
