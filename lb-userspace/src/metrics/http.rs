//! A minimal HTTP/1.1 server (hyper) for the metrics and health ports.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{HeaderValue, CONTENT_TYPE, X_CONTENT_TYPE_OPTIONS};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tracing::debug;

/// Response body of every endpoint: a complete buffer.
pub(crate) type Body = Full<Bytes>;

/// How long one connection may stay open (a stuck client cannot hold a task forever).
const CONNECTION_TIMEOUT: Duration = Duration::from_secs(30);

/// A port could not be opened.
#[derive(Debug, thiserror::Error)]
#[error("cannot listen on {addr} for {what} ({flag})")]
pub struct ListenError {
    /// What the port serves, e.g. "metrics".
    pub what: &'static str,
    /// The flag that sets the address.
    pub flag: &'static str,
    pub addr: SocketAddr,
    #[source]
    pub source: io::Error,
}

/// Binds `addr` for `what` (set by `flag`), with an error that names both.
pub async fn listen(
    addr: SocketAddr,
    what: &'static str,
    flag: &'static str,
) -> Result<TcpListener, ListenError> {
    TcpListener::bind(addr).await.map_err(|source| ListenError {
        what,
        flag,
        addr,
        source,
    })
}

/// Serves every connection on `listener` with `handler`, each in its own task, until the
/// returned task is aborted.
pub(crate) fn serve<H, F>(listener: TcpListener, handler: H) -> JoinHandle<()>
where
    H: Fn(Request<Incoming>) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Response<Body>> + Send + 'static,
{
    tokio::spawn(async move {
        loop {
            let (stream, peer) = match listener.accept().await {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors and the like: try again shortly.
                    debug!("accepting a connection failed: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let handler = handler.clone();
            tokio::spawn(async move {
                let service = service_fn(move |request| {
                    let response = handler(request);
                    async move { Ok::<_, hyper::Error>(response.await) }
                });
                let connection = http1::Builder::new()
                    .keep_alive(false)
                    .serve_connection(TokioIo::new(stream), service);
                match tokio::time::timeout(CONNECTION_TIMEOUT, connection).await {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => debug!("HTTP connection from {peer} failed: {e}"),
                    Err(_) => debug!("HTTP connection from {peer} timed out"),
                }
            });
        }
    })
}

/// A plain-text response.
pub(crate) fn text(status: StatusCode, body: String) -> Response<Body> {
    response(status, "text/plain; charset=utf-8", body)
}

/// A JSON response, with kube-proxy's `X-Content-Type-Options: nosniff`.
pub(crate) fn json(status: StatusCode, body: String) -> Response<Body> {
    let mut response = response(status, "application/json", body);
    response
        .headers_mut()
        .insert(X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    response
}

/// A response with a content type.
pub(crate) fn response(
    status: StatusCode,
    content_type: &'static str,
    body: String,
) -> Response<Body> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

#[cfg(test)]
mod tests {
    use super::listen;

    #[tokio::test]
    async fn a_port_in_use_is_an_error_naming_the_flag() {
        let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = taken.local_addr().unwrap();
        let error = listen(addr, "metrics", "--metrics-addr").await.unwrap_err();
        assert_eq!(
            error.to_string(),
            format!("cannot listen on {addr} for metrics (--metrics-addr)")
        );
        assert_eq!(error.source.kind(), std::io::ErrorKind::AddrInUse);
    }
}
