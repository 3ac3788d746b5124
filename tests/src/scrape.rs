//! The agent's metrics and health ports: a minimal HTTP GET (run it inside the node namespace
//! with [`crate::netns::NetNs::run`]) and lookups in Prometheus' text format.

use std::{
    io::{self, Read, Write},
    net::{SocketAddr, TcpStream},
    time::Duration,
};

/// The agent's default metrics address, as kube-proxy's (`--metrics-addr`), from inside the
/// node namespace.
pub const METRICS_ADDR: &str = "127.0.0.1:10249";
/// The agent's default health address, as kube-proxy's (`--healthz-addr`).
pub const HEALTHZ_ADDR: &str = "127.0.0.1:10256";
/// How long a request may take.
const TIMEOUT: Duration = Duration::from_secs(5);

/// Status code, headers and body of an HTTP response.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    /// Names in lower case, in the order received.
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Response {
    /// The value of header `name` (lower case), if present.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// `GET path` on `addr` (HTTP/1.1, one request per connection).
pub fn get(addr: &str, path: &str) -> io::Result<Response> {
    let addr: SocketAddr = addr
        .parse()
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, format!("{addr}: {e}")))?;
    let mut stream = TcpStream::connect_timeout(&addr, TIMEOUT)?;
    stream.set_read_timeout(Some(TIMEOUT))?;
    stream.set_write_timeout(Some(TIMEOUT))?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )?;
    let mut raw = String::new();
    stream.read_to_string(&mut raw)?;
    let invalid =
        |what: &str| io::Error::new(io::ErrorKind::InvalidData, format!("{what}: {raw:?}"));
    let (head, body) = raw
        .split_once("\r\n\r\n")
        .ok_or_else(|| invalid("no end of headers"))?;
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|line| line.split(' ').nth(1))
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| invalid("no status code"))?;
    let headers = lines
        .map(|line| {
            let (name, value) = line.split_once(':').ok_or_else(|| invalid("bad header"))?;
            Ok((name.to_ascii_lowercase(), value.trim().to_string()))
        })
        .collect::<io::Result<_>>()?;
    Ok(Response {
        status,
        headers,
        body: body.to_string(),
    })
}

/// A scraped `/metrics` text.
#[derive(Clone, Debug)]
pub struct Metrics(pub String);

impl Metrics {
    /// The value of the sample `name` whose labels include all of `labels`; `None` if there is
    /// none. Panics if several samples match (the labels do not pick one series).
    pub fn value(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let matching: Vec<f64> = self
            .0
            .lines()
            .filter(|line| !line.starts_with('#'))
            .filter_map(|line| sample(line, name))
            .filter(|(line_labels, _)| {
                labels
                    .iter()
                    .all(|(k, v)| line_labels.contains(&format!("{k}=\"{v}\"")))
            })
            .map(|(_, value)| value)
            .collect();
        assert!(
            matching.len() <= 1,
            "{name} {labels:?} matches {} series in:\n{}",
            matching.len(),
            self.0
        );
        matching.first().copied()
    }
}

/// Splits `name{labels} value` (or `name value`) into its labels and value if it is `name`.
fn sample<'a>(line: &'a str, name: &str) -> Option<(&'a str, f64)> {
    let rest = line.strip_prefix(name)?;
    let (labels, value) = match rest.strip_prefix('{') {
        Some(rest) => rest.split_once("} ")?,
        None => ("", rest.strip_prefix(' ')?),
    };
    let value = value.split(' ').next()?.parse().ok()?;
    Some((labels, value))
}

#[cfg(test)]
mod tests {
    use super::Metrics;

    #[test]
    fn values_are_found_by_name_and_labels() {
        let text = "# TYPE a counter\na_total{x=\"1\",y=\"b\"} 3\na_total{x=\"2\",y=\"b\"} 4\n\
                    a_total_other 9\nplain 2.5\n# EOF\n";
        let metrics = Metrics(text.to_string());
        assert_eq!(metrics.value("a_total", &[("x", "2")]), Some(4.0));
        assert_eq!(metrics.value("plain", &[]), Some(2.5));
        assert_eq!(metrics.value("a_total", &[("x", "3")]), None);
        assert_eq!(metrics.value("a_total_other", &[]), Some(9.0));
    }
}
