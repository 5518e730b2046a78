//! Connections to the backends: plain TCP (offload) or TLS verified against the listener's CA
//! bundle and the backend's name (bridging), then HTTP/1.1 kept alive in a per-backend pool of
//! idle connections, or one multiplexed HTTP/2 connection per backend.
//!
//! An HTTP/1.1 connection goes back to the pool only once its response has been read to the
//! end (the proxy hands it back then); one that the backend closed while idle is noticed on
//! checkout and dropped, and one idle for longer than [`IDLE_REUSE`] is closed when the pool is
//! next used. Upgrade requests (WebSocket) always get a fresh HTTP/1.1 connection
//! of their own, which the tunnel then takes over.
//!
//! With `proxy_protocol = "v2"` every connection starts with the PROXY header of the client it
//! was made for, and is pooled under that header: only that client's requests reuse it.

use std::{
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use bytes::Bytes;
use http_body_util::{Either, Empty};
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::{
    io::{AsyncRead, AsyncWrite, AsyncWriteExt},
    net::TcpStream,
};
use tokio_rustls::TlsConnector;
use tracing::debug;

use super::balance::Upstream;
use crate::config::l7::BackendProtocol;

/// The body of a request to a backend: the client's, streamed, or none (a replayed request).
pub type UpBody = Either<super::body::Upload, Empty<Bytes>>;

/// Idle HTTP/1.1 connections kept per backend. A connection goes idle only after it carried
/// a request, so the pool grows to the most requests the backend had at once (within
/// [`IDLE_REUSE`]); past this cap, each request over it opens a connection and closes it after
/// one answer. At 256, 200 HTTP/2 clients of 10 streams each together opened 2 000 backend
/// connections a second. Each idle connection is an open file until it is reused, found stale
/// or closed by the backend.
const MAX_IDLE: usize = 4096;
/// How far back from the newest a request with a PROXY header looks for an idle connection
/// of its own client.
const TAGGED_SEARCH: usize = 256;
/// An idle connection older than this is closed rather than reused: backends close idle
/// connections on their own schedule (Apache after 5 s, nginx after 75 s), and a request sent
/// on a connection the backend is closing fails.
const IDLE_REUSE: Duration = Duration::from_secs(4);

/// The PROXY header a connection was opened with: only requests of the same client reuse it.
pub type ProxyTag = Option<Bytes>;

/// A backend's idle connections.
#[derive(Default)]
pub struct ConnPool {
    idle: Mutex<Vec<Idle>>,
    h2: Mutex<Option<http2::SendRequest<UpBody>>>,
}

impl std::fmt::Debug for ConnPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let idle = self.idle.lock().map_or(0, |idle| idle.len());
        f.debug_struct("ConnPool").field("idle", &idle).finish()
    }
}

impl ConnPool {
    /// The most recently used idle connection of `tag` that can still take a request. Closes
    /// the connections idle too long on the way.
    fn take_idle(&self, tag: &ProxyTag) -> Option<http1::SendRequest<UpBody>> {
        let mut idle = self.idle.lock().ok()?;
        drain_stale(&mut idle, Instant::now());
        if tag.is_none() {
            // The untagged are the newest unless a reload turned the header off: then the
            // tagged ones (another client's header) are skipped, never reused.
            while let Some((_, _, None)) = idle.last() {
                let (send, _, _) = idle.pop()?;
                if send.is_ready() {
                    return Some(send);
                }
            }
        }
        // A client's own connections are among the newest (its last request gave one back):
        // the search goes no further back than TAGGED_SEARCH, so a pool of many clients'
        // connections costs a request a bounded search.
        let from = idle.len().saturating_sub(TAGGED_SEARCH);
        let at = idle
            .get(from..)?
            .iter()
            .rposition(|(send, _, of)| of == tag && send.is_ready())?;
        Some(idle.remove(from + at).0)
    }

    /// Keeps `send` for the next request, if it can take one.
    pub fn check_in(&self, send: http1::SendRequest<UpBody>, tag: ProxyTag) {
        if !send.is_ready() {
            return;
        }
        if let Ok(mut idle) = self.idle.lock() {
            let now = Instant::now();
            drain_stale(&mut idle, now);
            if idle.len() < MAX_IDLE {
                idle.push((send, now, tag));
            }
        }
    }

    /// Drops the idle connections and the shared HTTP/2 one (requests in flight keep theirs).
    pub fn clear(&self) {
        if let Ok(mut idle) = self.idle.lock() {
            idle.clear();
        }
        if let Ok(mut h2) = self.h2.lock() {
            *h2 = None;
        }
    }

    fn shared_h2(&self) -> Option<http2::SendRequest<UpBody>> {
        let h2 = self.h2.lock().ok()?;
        h2.as_ref().filter(|s| !s.is_closed()).cloned()
    }

    fn keep_h2(&self, send: &http2::SendRequest<UpBody>) {
        if let Ok(mut h2) = self.h2.lock() {
            *h2 = Some(send.clone());
        }
    }
}

/// An idle connection: its sender, since when it is idle, and its PROXY header.
type Idle = (http1::SendRequest<UpBody>, Instant, ProxyTag);

/// Closes the connections idle for [`IDLE_REUSE`] or longer. The pool is ordered oldest
/// first, so they are a prefix.
fn drain_stale(idle: &mut Vec<Idle>, now: Instant) {
    let stale = idle
        .iter()
        .take_while(|(_, since, _)| now.saturating_duration_since(*since) >= IDLE_REUSE)
        .count();
    idle.drain(..stale);
}

/// A connection to send one request on.
#[derive(Debug)]
pub enum Sender {
    H1(http1::SendRequest<UpBody>),
    H2(http2::SendRequest<UpBody>),
}

/// Why no connection to a backend could be made. Logged with the backend; the client sees
/// only 502.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("timed out after {0:?}")]
    Timeout(Duration),
    #[error("connecting: {0}")]
    Connect(std::io::Error),
    #[error("TLS handshake: {0}")]
    Tls(std::io::Error),
    #[error("HTTP handshake: {0}")]
    Http(hyper::Error),
}

/// How a listener connects to its backends.
#[derive(Clone)]
pub struct Connector {
    protocol: BackendProtocol,
    connect_timeout: Duration,
    /// HTTP/2: a PING this often, and the connection closed if its answer takes longer than
    /// the second (a black-holed backend is found in seconds, not the kernel's minutes).
    ping: (Duration, Duration),
    /// Bridging: TLS offering HTTP/1.1, and (for `protocol = "http2"`) HTTP/2.
    tls_h1: Option<TlsConnector>,
    tls_h2: Option<TlsConnector>,
}

impl std::fmt::Debug for Connector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connector")
            .field("protocol", &self.protocol)
            .field("connect_timeout", &self.connect_timeout)
            .field("tls", &self.tls_h1.is_some())
            .finish()
    }
}

impl Connector {
    pub fn new(
        protocol: BackendProtocol,
        connect_timeout: Duration,
        ping: (Duration, Duration),
        tls: Option<(Arc<rustls::ClientConfig>, Arc<rustls::ClientConfig>)>,
    ) -> Self {
        let (tls_h1, tls_h2) = match tls {
            Some((h1, h2)) => (Some(TlsConnector::from(h1)), Some(TlsConnector::from(h2))),
            None => (None, None),
        };
        Self {
            protocol,
            connect_timeout,
            ping,
            tls_h1,
            tls_h2,
        }
    }

    /// Whether requests to the backends use HTTP/2.
    pub fn http2(&self) -> bool {
        self.protocol == BackendProtocol::Http2
    }

    /// Whether the backends are reached over TLS.
    pub fn tls(&self) -> bool {
        self.tls_h1.is_some()
    }

    /// A connection to `upstream` for one request: a pooled one if there is one (not for
    /// `upgrade`, which needs its own HTTP/1.1 connection, nor if `fresh`), else a new one.
    /// `tag`: the PROXY header a new connection starts with (and a pooled one must have).
    pub async fn checkout(
        &self,
        upstream: &Upstream,
        upgrade: bool,
        fresh: bool,
        tag: &ProxyTag,
    ) -> Result<Sender, ConnectError> {
        let h2 = self.http2() && !upgrade;
        let pooled = if fresh || upgrade {
            None
        } else if h2 {
            upstream.conns.shared_h2().map(Sender::H2)
        } else {
            upstream.conns.take_idle(tag).map(Sender::H1)
        };
        if let Some(sender) = pooled {
            return Ok(sender);
        }
        // Boxed: a new connection's TLS and HTTP handshakes are most of a request's future,
        // and most requests take a pooled connection.
        let connect = Box::pin(self.connect(upstream, h2, tag));
        tokio::time::timeout(self.connect_timeout, connect)
            .await
            .map_err(|_| ConnectError::Timeout(self.connect_timeout))?
    }

    /// A new connection to `upstream`, HTTP/2 if `h2`, starting with `tag` if there is one.
    async fn connect(
        &self,
        upstream: &Upstream,
        h2: bool,
        tag: &ProxyTag,
    ) -> Result<Sender, ConnectError> {
        let mut tcp = TcpStream::connect(upstream.address)
            .await
            .map_err(ConnectError::Connect)?;
        // Requests and responses are written whole; do not hold back their last segment.
        drop(tcp.set_nodelay(true));
        if let Some(header) = tag {
            tcp.write_all(header).await.map_err(ConnectError::Connect)?;
        }
        let tls = if h2 { &self.tls_h2 } else { &self.tls_h1 };
        match (tls, &upstream.server_name) {
            (Some(tls), Some(name)) => {
                let stream = tls
                    .connect(name.clone(), tcp)
                    .await
                    .map_err(ConnectError::Tls)?;
                handshake(stream, upstream, h2, self.ping).await
            }
            _ => handshake(tcp, upstream, h2, self.ping).await,
        }
    }
}

/// The HTTP handshake on a connected stream; the connection is driven by a task of its own.
async fn handshake<S>(
    stream: S,
    upstream: &Upstream,
    h2: bool,
    (ping_interval, ping_timeout): (Duration, Duration),
) -> Result<Sender, ConnectError>
where
    S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let io = TokioIo::new(stream);
    let address = upstream.address;
    if h2 {
        let (send, conn) = http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .keep_alive_interval(ping_interval)
            .keep_alive_timeout(ping_timeout)
            .keep_alive_while_idle(true)
            .handshake(io)
            .await
            .map_err(ConnectError::Http)?;
        tokio::spawn(async move {
            if let Err(error) = conn.await {
                debug!(backend = %address, %error, "HTTP/2 connection to a backend ended");
            }
        });
        upstream.conns.keep_h2(&send);
        Ok(Sender::H2(send))
    } else {
        let (send, conn) = http1::Builder::new()
            .handshake(io)
            .await
            .map_err(ConnectError::Http)?;
        tokio::spawn(async move {
            if let Err(error) = conn.with_upgrades().await {
                debug!(backend = %address, %error, "connection to a backend ended");
            }
        });
        Ok(Sender::H1(send))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A connection to nothing that can take a request: hyper's client over one end of an
    /// in-memory pipe, driven by a task of its own; the other end is returned to keep it open.
    async fn sender() -> (http1::SendRequest<UpBody>, tokio::io::DuplexStream) {
        let (ours, theirs) = tokio::io::duplex(64);
        let (mut send, conn) = http1::handshake(TokioIo::new(ours))
            .await
            .expect("handshake over a pipe");
        tokio::spawn(conn);
        send.ready().await.expect("the connection is up");
        (send, theirs)
    }

    #[tokio::test]
    async fn the_pool_keeps_as_many_idle_connections_as_were_busy_at_once() {
        // 2 000 requests at once (200 HTTP/2 clients of 10 streams) once kept 256 and opened a
        // connection for every other request.
        let pool = ConnPool::default();
        let mut pipes = Vec::new();
        let mut busy = Vec::new();
        for _ in 0..2_000 {
            let (send, pipe) = sender().await;
            busy.push(send);
            pipes.push(pipe);
        }
        for send in busy {
            pool.check_in(send, None);
        }
        let mut reused = 0;
        while pool.take_idle(&None).is_some() {
            reused += 1;
        }
        assert_eq!(reused, 2_000);
    }

    #[tokio::test]
    async fn the_pool_keeps_at_most_max_idle() {
        let pool = ConnPool::default();
        let mut pipes = Vec::new();
        for _ in 0..=MAX_IDLE {
            let (send, pipe) = sender().await;
            pool.check_in(send, None);
            pipes.push(pipe);
        }
        assert_eq!(pool.idle.lock().expect("the pool").len(), MAX_IDLE);
    }

    #[tokio::test]
    async fn connections_idle_too_long_are_closed_when_the_pool_is_next_used() {
        let pool = ConnPool::default();
        let long_ago = Instant::now()
            .checked_sub(IDLE_REUSE)
            .expect("the clock is past IDLE_REUSE");
        let mut pipes = Vec::new();
        for _ in 0..3 {
            let (send, pipe) = sender().await;
            pool.idle
                .lock()
                .expect("the pool")
                .push((send, long_ago, None));
            pipes.push(pipe);
        }
        let (fresh, _pipe) = sender().await;
        pool.check_in(fresh, None);
        assert_eq!(pool.idle.lock().expect("the pool").len(), 1);
        // Checkout closes them too, and takes the fresh one.
        let (stale, _other) = sender().await;
        pool.idle
            .lock()
            .expect("the pool")
            .insert(0, (stale, long_ago, None));
        assert!(pool.take_idle(&None).is_some());
        assert!(pool.idle.lock().expect("the pool").is_empty());
    }

    #[tokio::test]
    async fn a_client_finds_its_connection_only_among_the_newest_tagged_search() {
        let pool = ConnPool::default();
        let ours: ProxyTag = Some(Bytes::from_static(b"client a"));
        let theirs: ProxyTag = Some(Bytes::from_static(b"client b"));
        let mut pipes = Vec::new();
        for found in [true, false] {
            pool.clear();
            let (send, pipe) = sender().await;
            pool.check_in(send, ours.clone());
            pipes.push(pipe);
            // Ours is TAGGED_SEARCH deep with one fewer of another client's after it, one
            // too deep otherwise.
            let after = if found {
                TAGGED_SEARCH - 1
            } else {
                TAGGED_SEARCH
            };
            for _ in 0..after {
                let (send, pipe) = sender().await;
                pool.check_in(send, theirs.clone());
                pipes.push(pipe);
            }
            assert_eq!(pool.take_idle(&ours).is_some(), found);
            // An untagged request takes none of them.
            assert!(pool.take_idle(&None).is_none());
        }
    }

    #[tokio::test]
    async fn a_connection_is_reused_only_by_requests_of_its_proxy_header() {
        let pool = ConnPool::default();
        let (send, _pipe) = sender().await;
        let tag: ProxyTag = Some(Bytes::from_static(b"client a"));
        pool.check_in(send, tag.clone());
        assert!(pool.take_idle(&None).is_none());
        assert!(
            pool.take_idle(&Some(Bytes::from_static(b"client b")))
                .is_none()
        );
        assert!(pool.take_idle(&tag).is_some());
    }
}
