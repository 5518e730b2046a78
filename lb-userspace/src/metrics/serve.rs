//! [`serve`]: the HTTP endpoint Prometheus scrapes.
//!
//! One task accepts connections on the daemon's listener and drives each (HTTP/1.1, hyper) in
//! a [`JoinSet`] it owns, so dropping or aborting the `serve` future ends every connection
//! with it. Each `GET /metrics` asks the daemon for a fresh [`MetricsInput`] through the
//! [`Snapshot`] closure and answers with [`render`]'s exposition:
//!
//! | request | answer |
//! | --- | --- |
//! | `GET` or `HEAD /metrics` | 200, the exposition ([`CONTENT_TYPE`]) |
//! | `GET` or `HEAD /status` (`status_page = true`) | 200, the status page: HTML, CSS and a script, from the binary |
//! | `GET` or `HEAD /status.json` (likewise) | 200, what the page shows ([`StatusSource`]) |
//! | any other method on those | 405, `Allow: GET, HEAD` |
//! | any other path | 404 |
//! | no snapshot (the daemon is gone, or slower than [`SNAPSHOT_TIMEOUT`]) | 503 |
//!
//! Bounded: at most [`MAX_CONNECTIONS`] at once (further clients wait in the kernel's
//! backlog), request headers within [`HEADER_READ_TIMEOUT`] (idle keep-alive connections are
//! closed after it too), headers of at most 16 KiB, and request bodies are never read.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{ALLOW, CONTENT_TYPE as CONTENT_TYPE_HEADER, HeaderValue};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;
use tracing::{debug, error, warn};

use super::input::MetricsInput;
use super::render::{CONTENT_TYPE, render};

/// The path Prometheus scrapes.
pub const METRICS_PATH: &str = "/metrics";
/// The status page, and what it reads.
pub const STATUS_PATH: &str = "/status";
pub const STATUS_JSON_PATH: &str = "/status.json";
/// The status page: one document, its style and script inline.
const STATUS_PAGE: &str = include_str!("status.html");
/// Time a client has to send a request's headers, and that an idle connection stays open.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(5);
/// Time the daemon has to answer a snapshot request before the scrape gets a 503.
pub const SNAPSHOT_TIMEOUT: Duration = Duration::from_secs(5);
/// Connections served at once.
pub const MAX_CONNECTIONS: usize = 64;
/// hyper's read buffer, which bounds a request's headers (hyper's minimum is 8 KiB).
const MAX_BUF_SIZE: usize = 16 * 1024;
/// Pause after a failed `accept` (out of file descriptors, say), so as not to spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// What a snapshot request returns: the daemon's [`MetricsInput`], or `None` when it cannot
/// give one (shutting down, controller gone).
pub type SnapshotFuture = Pin<Box<dyn Future<Output = Option<MetricsInput>> + Send>>;

/// How the endpoint asks the daemon for a snapshot: called once per scrape. The daemon's
/// closure typically sends a request with a reply channel to its controller thread.
pub trait Snapshot: Fn() -> SnapshotFuture + Send + Sync + 'static {}

impl<F: Fn() -> SnapshotFuture + Send + Sync + 'static> Snapshot for F {}

/// What the status page reads: the daemon's listeners, backends, counters and summary as one
/// JSON document, or `None` when it cannot give them.
pub type StatusFuture = Pin<Box<dyn Future<Output = Option<String>> + Send>>;

/// How `/status.json` asks the daemon for its document; none: no status page.
pub type StatusSource = Arc<dyn Fn() -> StatusFuture + Send + Sync>;

/// The timeouts and limits of [`serve`]; tests shorten them.
#[derive(Clone, Copy, Debug)]
struct Limits {
    header_read_timeout: Duration,
    snapshot_timeout: Duration,
    max_connections: usize,
}

impl Limits {
    const DEFAULT: Self = Self {
        header_read_timeout: HEADER_READ_TIMEOUT,
        snapshot_timeout: SNAPSHOT_TIMEOUT,
        max_connections: MAX_CONNECTIONS,
    };
}

/// Serves the metrics endpoint on `listener` until the future is dropped or its task aborted.
/// With `status`, it also serves the status page.
pub async fn serve(listener: TcpListener, snapshot: impl Snapshot, status: Option<StatusSource>) {
    serve_with(listener, Arc::new(snapshot), status, Limits::DEFAULT).await;
}

/// [`serve`] with explicit limits.
async fn serve_with<S: Snapshot>(
    listener: TcpListener,
    snapshot: Arc<S>,
    status: Option<StatusSource>,
    limits: Limits,
) {
    let max_connections = limits.max_connections.max(1);
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept(), if connections.len() < max_connections => {
                match accepted {
                    Ok((stream, _peer)) => {
                        connections.spawn(serve_connection(
                            stream,
                            Arc::clone(&snapshot),
                            status.clone(),
                            limits,
                        ));
                    }
                    Err(error) => {
                        warn!(%error, "metrics endpoint: accepting a connection failed");
                        tokio::time::sleep(ACCEPT_BACKOFF).await;
                    }
                }
            }
            Some(finished) = connections.join_next(), if !connections.is_empty() => {
                if let Err(error) = finished {
                    error!(%error, "metrics endpoint: a connection task failed");
                }
            }
        }
    }
}

/// Drives one HTTP/1.1 connection to its end.
async fn serve_connection<S: Snapshot>(
    stream: TcpStream,
    snapshot: Arc<S>,
    status: Option<StatusSource>,
    limits: Limits,
) {
    let service = service_fn(move |request| {
        let snapshot = Arc::clone(&snapshot);
        let status = status.clone();
        async move {
            Ok::<_, Infallible>(respond(&request, snapshot.as_ref(), status.as_ref(), limits).await)
        }
    });
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_buf_size(MAX_BUF_SIZE);
    if let Err(error) = builder
        .serve_connection(TokioIo::new(stream), service)
        .await
    {
        debug!(%error, "metrics endpoint: connection ended with an error");
    }
}

/// The answer to one request; its body, if any, is left unread.
async fn respond<S: Snapshot>(
    request: &Request<Incoming>,
    snapshot: &S,
    status: Option<&StatusSource>,
    limits: Limits,
) -> Response<Full<Bytes>> {
    let path = request.uri().path();
    let known = path == METRICS_PATH
        || (status.is_some() && (path == STATUS_PATH || path == STATUS_JSON_PATH));
    if !known {
        let where_ = if status.is_some() {
            "not found: the metrics are at /metrics, the status page at /status\n"
        } else {
            "not found: the metrics are at /metrics\n"
        };
        return text_response(StatusCode::NOT_FOUND, where_);
    }
    if request.method() != Method::GET && request.method() != Method::HEAD {
        let mut response = text_response(
            StatusCode::METHOD_NOT_ALLOWED,
            format!("method not allowed: use GET {path}\n"),
        );
        response
            .headers_mut()
            .insert(ALLOW, HeaderValue::from_static("GET, HEAD"));
        return response;
    }
    if let Some(status) = status {
        if path == STATUS_PATH {
            return page_response(STATUS_PAGE, "text/html; charset=utf-8");
        }
        if path == STATUS_JSON_PATH {
            return match tokio::time::timeout(limits.snapshot_timeout, status()).await {
                Ok(Some(json)) => page_response(json, "application/json"),
                Ok(None) => unavailable("the daemon gave no status (shutting down?)"),
                Err(_elapsed) => unavailable("the daemon did not answer in time"),
            };
        }
    }
    match tokio::time::timeout(limits.snapshot_timeout, snapshot()).await {
        Ok(Some(input)) => metrics_response(&input),
        Ok(None) => unavailable("the daemon gave no snapshot (shutting down?)"),
        Err(_elapsed) => unavailable("the daemon did not answer in time"),
    }
}

/// 200 with the exposition, or 500 if it could not be rendered.
fn metrics_response(input: &MetricsInput) -> Response<Full<Bytes>> {
    match render(input) {
        Ok(text) => {
            let mut response = Response::new(Full::new(Bytes::from(text)));
            response
                .headers_mut()
                .insert(CONTENT_TYPE_HEADER, HeaderValue::from_static(CONTENT_TYPE));
            response
        }
        Err(error) => {
            error!(%error, "metrics endpoint: rendering failed");
            text_response(
                StatusCode::INTERNAL_SERVER_ERROR,
                "rendering the metrics failed\n",
            )
        }
    }
}

/// 200 with `body` of `content_type`, never cached (the page and its data are live), and
/// framed by no other site (`frame-ancestors`), its script the page's own.
fn page_response(body: impl Into<Bytes>, content_type: &'static str) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(body.into()));
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE_HEADER, HeaderValue::from_static(content_type));
    headers.insert(
        hyper::header::CACHE_CONTROL,
        HeaderValue::from_static("no-store"),
    );
    headers.insert(
        hyper::header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; \
             connect-src 'self'; img-src 'self'; frame-ancestors 'none'",
        ),
    );
    headers.insert(
        hyper::header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    response
}

/// 503, with the reason in the body and the log.
fn unavailable(reason: &'static str) -> Response<Full<Bytes>> {
    warn!(reason, "metrics endpoint: no snapshot, answering 503");
    let body = format!("metrics unavailable: {reason}; try again\n");
    text_response(StatusCode::SERVICE_UNAVAILABLE, body)
}

/// A short plain-text answer.
fn text_response(status: StatusCode, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(body.into()));
    *response.status_mut() = status;
    response.headers_mut().insert(
        CONTENT_TYPE_HEADER,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

#[cfg(test)]
mod tests;
