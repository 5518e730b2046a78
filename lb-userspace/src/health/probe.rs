//! Health probes: one check of one backend, over TCP, HTTP or HTTPS, found as an [`Outcome`].
//!
//! A [`Probe`] is a [`ProbeKind`] and a timeout. [`Probe::check`] connects to the backend; a
//! failure there is [`Outcome::Unreachable`]: the backend is dead. For HTTP(S) it then completes
//! the TLS handshake (`tls.rs`: rustls with the ring provider, TLS 1.3 and 1.2, verified against
//! the probe's roots) and sends one `GET` (`http_get.rs`: hyper's HTTP/1.1 client connection),
//! reading the response head only. Any failure after connecting is [`Outcome::Failing`]: the
//! backend answers, but wrongly. The timeout bounds the whole check: its stages share one
//! deadline, and a timeout says which stage did not finish.
//!
//! [`parse_status_range`] reads the statuses a probe expects ("200", "200-399"), for the
//! configuration parser.
//!
//! Data flow: configuration -> [`Probe`] -> [`Probe::check`] -> [`Outcome`] ->
//! [`BackendHealth::observe`](super::state::BackendHealth::observe).

mod http_get;
mod tls;

#[cfg(test)]
mod tests;

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::ops::RangeInclusive;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::Empty;
use hyper::body::Bytes;
use hyper::{Request, StatusCode};
use rustls::RootCertStore;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::time::{Instant, timeout_at};

use super::state::Outcome;

/// The statuses an HTTP answer may have: 100 to 599.
const STATUS_LIMITS: RangeInclusive<u16> = 100..=599;

/// How to check a backend. Two kinds are equal when they check the same way; trust stores
/// compare by their anchors.
#[derive(Clone, Debug)]
pub enum ProbeKind {
    /// Passes when a TCP connection is established.
    Tcp,
    /// Passes when `GET path` answers with a status in `status`. `host` is the `Host` header
    /// (by default the target address).
    Http {
        path: String,
        host: Option<String>,
        status: RangeInclusive<u16>,
    },
    /// As [`ProbeKind::Http`], over TLS verified against `roots`, for the name `server_name`
    /// (by default `host` without its port, else the target IP address).
    Https {
        path: String,
        host: Option<String>,
        status: RangeInclusive<u16>,
        server_name: Option<String>,
        roots: Arc<RootCertStore>,
    },
}

impl PartialEq for ProbeKind {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (Self::Tcp, Self::Tcp) => true,
            (
                Self::Http { path, host, status },
                Self::Http {
                    path: other_path,
                    host: other_host,
                    status: other_status,
                },
            ) => (path, host, status) == (other_path, other_host, other_status),
            (
                Self::Https {
                    path,
                    host,
                    status,
                    server_name,
                    roots,
                },
                Self::Https {
                    path: other_path,
                    host: other_host,
                    status: other_status,
                    server_name: other_name,
                    roots: other_roots,
                },
            ) => {
                (path, host, status, server_name)
                    == (other_path, other_host, other_status, other_name)
                    && roots.roots == other_roots.roots
            }
            _ => false,
        }
    }
}

impl Eq for ProbeKind {}

/// A check of a backend, bounded in time.
#[derive(Clone, Debug)]
pub struct Probe {
    pub kind: ProbeKind,
    /// Bounds the whole check: connection, TLS handshake, request and response head.
    pub timeout: Duration,
}

impl Probe {
    /// Checks the backend at `target` once. Never panics and never fails: every failure is an
    /// [`Outcome`] with a short reason for a human.
    pub async fn check(&self, target: SocketAddr) -> Outcome {
        let deadline = Instant::now() + self.timeout;
        let stream = match self.connect(target, deadline).await {
            Ok(stream) => stream,
            Err(reason) => return Outcome::Unreachable(reason),
        };
        match self.check_connected(stream, target, deadline).await {
            Ok(()) => Outcome::Pass,
            Err(reason) => Outcome::Failing(reason),
        }
    }

    /// Opens the TCP connection, or says why it could not.
    async fn connect(&self, target: SocketAddr, deadline: Instant) -> Result<TcpStream, String> {
        let connect = async {
            TcpStream::connect(target)
                .await
                .map_err(|error| describe_connect_error(&error))
        };
        let late = || format!("no answer within {:?}", self.timeout);
        before(deadline, late, connect).await
    }

    /// Everything after the connection: TLS, then the request and the status of the answer.
    async fn check_connected(
        &self,
        stream: TcpStream,
        target: SocketAddr,
        deadline: Instant,
    ) -> Result<(), String> {
        let (path, host, status) = match &self.kind {
            ProbeKind::Tcp => return Ok(()),
            ProbeKind::Http { path, host, status } => (path, host.as_deref(), status),
            ProbeKind::Https {
                path, host, status, ..
            } => (path, host.as_deref(), status),
        };
        let request = http_get::build_request(path, host, target)?;
        let answer = match &self.kind {
            ProbeKind::Https {
                server_name, roots, ..
            } => {
                let name = tls::choose_server_name(server_name.as_deref(), host, target)?;
                let late = || format!("TLS handshake not done within {:?}", self.timeout);
                let stream = before(deadline, late, tls::handshake(stream, name, roots)).await?;
                self.fetch_status(stream, request, deadline).await?
            }
            _ => self.fetch_status(stream, request, deadline).await?,
        };
        http_get::judge_status(answer, status)
    }

    /// Sends `request` over `stream` and waits for the status of the answer until `deadline`.
    async fn fetch_status<S>(
        &self,
        stream: S,
        request: Request<Empty<Bytes>>,
        deadline: Instant,
    ) -> Result<StatusCode, String>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let late = || format!("no HTTP answer within {:?}", self.timeout);
        before(deadline, late, http_get::fetch_status(stream, request)).await
    }
}

/// Runs `step` until `deadline`; past it, fails with the reason `late` gives.
async fn before<T>(
    deadline: Instant,
    late: impl FnOnce() -> String,
    step: impl Future<Output = Result<T, String>>,
) -> Result<T, String> {
    timeout_at(deadline, step)
        .await
        .unwrap_or_else(|_| Err(late()))
}

/// A short reason for a failed connection: "connection refused", "host unreachable", ...
fn describe_connect_error(error: &io::Error) -> String {
    match error.kind() {
        io::ErrorKind::ConnectionRefused => "connection refused".to_owned(),
        io::ErrorKind::HostUnreachable => "host unreachable".to_owned(),
        io::ErrorKind::NetworkUnreachable => "network unreachable".to_owned(),
        io::ErrorKind::AddrNotAvailable => "no local address can reach it".to_owned(),
        _ => format!("cannot connect: {error}"),
    }
}

/// Parses the statuses a probe expects: one status ("200") or an inclusive range ("200-399"),
/// within 100..=599.
pub fn parse_status_range(text: &str) -> Result<RangeInclusive<u16>, String> {
    let (first, last) = match text.split_once('-') {
        Some((first, last)) => (first, last),
        None => (text, text),
    };
    let range = parse_status(first, text)?..=parse_status(last, text)?;
    if range.start() > range.end() {
        return Err(format!(
            "status range {text:?} is out of order; write the lower status first, as in 200-399"
        ));
    }
    Ok(range)
}

/// Parses one status of the range `whole`.
fn parse_status(part: &str, whole: &str) -> Result<u16, String> {
    let part = part.trim();
    let is_number = !part.is_empty() && part.bytes().all(|byte| byte.is_ascii_digit());
    let status = part.parse::<u16>().ok().filter(|_| is_number);
    match status {
        Some(status) if STATUS_LIMITS.contains(&status) => Ok(status),
        _ => Err(format!(
            "status range {whole:?}: {part:?} is not an HTTP status (100 to 599); \
             write one status, as in 200, or a range, as in 200-399"
        )),
    }
}
