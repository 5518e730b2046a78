//! The HTTP part of a probe: one `GET` over an established stream (plain TCP or TLS) with
//! hyper's HTTP/1.1 client connection, and the verdict on the status of the answer.
//!
//! [`build_request`] makes the request (`Host`, `User-Agent: lb-health-check`,
//! `Connection: close`, no body); [`fetch_status`] sends it and returns the status as soon as
//! the response head arrives, without reading the body; [`judge_status`] compares it with the
//! expected range. Errors are short reasons for [`Outcome::Failing`](super::Outcome::Failing).

use std::error::Error as _;
use std::net::SocketAddr;
use std::ops::RangeInclusive;

use http_body_util::Empty;
use hyper::body::Bytes;
use hyper::client::conn::http1;
use hyper::header::{CONNECTION, HOST, USER_AGENT};
use hyper::{Request, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};

/// What the probe calls itself.
const USER_AGENT_VALUE: &str = "lb-health-check";

/// `GET path HTTP/1.1` with `Host: host` (by default the target address), no body.
pub(super) fn build_request(
    path: &str,
    host: Option<&str>,
    target: SocketAddr,
) -> Result<Request<Empty<Bytes>>, String> {
    let host = host.map_or_else(|| target.to_string(), str::to_owned);
    Request::get(path)
        .header(HOST, &host)
        .header(USER_AGENT, USER_AGENT_VALUE)
        .header(CONNECTION, "close")
        .body(Empty::new())
        .map_err(|error| format!("cannot send GET {path:?} with Host {host:?}: {error}"))
}

/// Sends `request` over `io` and returns the status of the answer, reading only its head.
pub(super) async fn fetch_status<S>(
    io: S,
    request: Request<Empty<Bytes>>,
) -> Result<StatusCode, String>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let (mut sender, connection) = http1::handshake(TokioIo::new(io))
        .await
        .map_err(|error| describe_http_error(&error))?;
    let response = sender.send_request(request);
    tokio::pin!(connection, response);
    // The connection does the reading and writing; the response resolves once the head is
    // in. If the connection ends first, it has handed its error (if any) to the pending
    // response, which then resolves at once.
    let response = tokio::select! {
        biased;
        response = &mut response => response,
        _ended = &mut connection => response.await,
    };
    response
        .map(|response| response.status())
        .map_err(|error| describe_http_error(&error))
}

/// Passes a status within `expected`; otherwise says which status came and which were wanted.
pub(super) fn judge_status(
    status: StatusCode,
    expected: &RangeInclusive<u16>,
) -> Result<(), String> {
    if expected.contains(&status.as_u16()) {
        return Ok(());
    }
    let (first, last) = (expected.start(), expected.end());
    let wanted = if first == last {
        first.to_string()
    } else {
        format!("{first}-{last}")
    };
    Err(format!("status {}, expected {wanted}", status.as_u16()))
}

/// A short reason for a failed exchange: not HTTP, closed early, or the I/O error beneath.
fn describe_http_error(error: &hyper::Error) -> String {
    if error.is_parse() || error.is_parse_status() {
        return format!("the answer is not HTTP/1.x ({error})");
    }
    if error.is_incomplete_message() {
        return "the connection closed before an HTTP answer".to_owned();
    }
    match error.source() {
        Some(source) => format!("HTTP: {error}: {source}"),
        None => format!("HTTP: {error}"),
    }
}
