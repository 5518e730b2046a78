//! The client side of an L7 listener: the listening socket, the accept loop (at most
//! `max_connections` connections at once; past it, new ones wait in the kernel's backlog), the
//! TLS handshake (within `header_read_timeout`), and HTTP/1.1 or HTTP/2 by ALPN, driven under
//! the connection's clock ([`super::conn`]). Also the plain-HTTP listener that redirects to
//! HTTPS.

use std::{
    future::Future,
    net::SocketAddr,
    pin::{Pin, pin},
    sync::Arc,
    time::Duration,
};

use hyper::{
    Request, Response, StatusCode,
    body::Incoming,
    header::{self, HeaderValue},
    server::conn::{http1, http2},
    service::service_fn,
};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::{
    net::{TcpListener, TcpSocket, TcpStream},
    time::Instant,
};
use tokio_rustls::{TlsAcceptor, server::TlsStream};
use tracing::{debug, warn};

use super::{
    access_log::{Entry, Peer},
    body::{ProxyBody, error_response},
    conn::{ConnState, Verdict, Watched},
    headers,
    limit::Slot,
    proxy::{Client, Proxy, Site},
    proxy_protocol,
};
use crate::config::l7::HttpLimits;

/// Connections the kernel queues for a listener the accept loop has not taken yet.
const BACKLOG: u32 = 4096;
/// How long a connection closed for idleness may take to finish what it was writing.
const GRACE: Duration = Duration::from_secs(5);

/// Binds `address` for a listener. The address must be one of the host's (a VIP on `lo`, for
/// one shared with passthrough listeners: the XDP program hands the L7 ports to the kernel).
pub fn bind(address: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if address.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.set_nodelay(true)?;
    socket.bind(address).map_err(|error| {
        let hint = if error.kind() == std::io::ErrorKind::AddrNotAvailable {
            format!(
                "; the address must be assigned to this host, e.g. `ip addr add {}/{} dev lo`",
                address.ip(),
                if address.is_ipv4() { 32 } else { 128 }
            )
        } else if error.kind() == std::io::ErrorKind::PermissionDenied {
            "; a port below net.ipv4.ip_unprivileged_port_start takes CAP_NET_BIND_SERVICE, \
             which the daemon keeps only if an L7 listener was below it when it started: \
             start it again (`lb run --take-over`) to bind this one"
                .to_owned()
        } else {
            String::new()
        };
        std::io::Error::new(error.kind(), format!("binding {address}: {error}{hint}"))
    })?;
    socket.listen(BACKLOG)
}

/// A listening socket handed over by a predecessor, checked to be listening on `address`.
pub fn adopt(socket: std::os::fd::OwnedFd, address: SocketAddr) -> std::io::Result<TcpListener> {
    let listener = std::net::TcpListener::from(socket);
    let bound = listener.local_addr()?;
    if bound != address {
        return Err(std::io::Error::other(format!(
            "the socket handed over for {address} listens on {bound}"
        )));
    }
    listener.set_nonblocking(true)?;
    TcpListener::from_std(listener)
}

/// Accepts connections for `proxy` until the task is aborted (connections already accepted
/// carry on).
pub async fn accept_loop(listener: TcpListener, proxy: Arc<Proxy>) {
    loop {
        proxy.connections.room().await;
        let (tcp, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(error) => {
                // Out of file descriptors and the like: wait rather than spin.
                warn!(listener = %proxy.name, %error, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        drop(tcp.set_nodelay(true));
        let slot = proxy.connections.take();
        tokio::spawn(serve_connection(Arc::clone(&proxy), tcp, peer, slot));
    }
}

/// One client connection, from its PROXY header (from a trusted source) and TLS handshake,
/// within `header_read_timeout`, to its close.
///
/// Its task lives as long as the connection, idle or not, so the future is laid out for size:
/// the handshake is a future of its own ([`handshake`]), which takes no room once the
/// connection is served; the TLS stream is looked at ([`serving`]) without being borrowed
/// here (a local borrowed in an `async fn` keeps its room across every later `.await`); and
/// hyper's connection is pinned where it lies and driven by reference, so it is held once.
async fn serve_connection(proxy: Arc<Proxy>, tcp: TcpStream, peer: SocketAddr, permit: Slot) {
    proxy
        .counters
        .connections
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let site = proxy.site();
    let since = (std::time::Instant::now(), std::time::SystemTime::now());
    let Some((stream, addresses)) = handshake(&proxy, &site, tcp, peer, since).await else {
        return;
    };
    let limits = &site.settings.http;
    let Serving {
        io,
        h2,
        client,
        state,
    } = serving(stream, addresses, site.listener.port, limits, permit);
    let service = {
        let state = Arc::clone(&state);
        let proxy = Arc::clone(&proxy);
        let client = Arc::clone(&client);
        // Boxed: hyper keeps the place of an HTTP/1.1 connection's request future for as long
        // as the connection lives, so an idle connection holds a pointer, not the future.
        service_fn(move |request: Request<Incoming>| {
            Box::pin(Arc::clone(&proxy).serve(request, Arc::clone(&state), Arc::clone(&client)))
        })
    };
    let ended = if h2 {
        let header_list = headers::http2_header_list_limit(limits.max_header_bytes);
        let resets = usize::try_from(limits.h2_max_resets_per_second).unwrap_or(usize::MAX);
        let conn = pin!(
            http2::Builder::new(TokioExecutor::new())
                .timer(TokioTimer::new())
                .max_concurrent_streams(limits.h2_max_concurrent_streams)
                .max_header_list_size(header_list)
                .max_pending_accept_reset_streams(resets)
                .enable_connect_protocol()
                .serve_connection(io, service)
        );
        drive(conn, &state, limits, &proxy).await
    } else {
        let conn = pin!(
            http1_builder(limits)
                .serve_connection(io, service)
                .with_upgrades()
        );
        drive(conn, &state, limits, &proxy).await
    };
    // The line first: a stopping daemon waits for the permits, then flushes the log.
    log_connection_end(&proxy, &client, ended, since);
    drop(state.take_permit());
}

/// The client and the address it connected to.
type Addresses = (SocketAddr, SocketAddr);

/// A connection's PROXY header (from a trusted source) and TLS handshake, within
/// `header_read_timeout`: the TLS stream and the addresses, or none (counted and logged).
async fn handshake(
    proxy: &Arc<Proxy>,
    site: &Site,
    mut tcp: TcpStream,
    peer: SocketAddr,
    since: (std::time::Instant, std::time::SystemTime),
) -> Option<(TlsStream<TcpStream>, Addresses)> {
    let deadline = Instant::now() + site.settings.http.header_read_timeout;
    let local = tcp.local_addr().unwrap_or(peer);
    let (client, destination) = match client_of(
        &site.settings.proxy_protocol_from,
        &mut tcp,
        (peer, local),
        deadline,
    )
    .await
    {
        Ok(addresses) => addresses,
        Err(None) => {
            // The front balancer's TCP health check: connected, closed, sent nothing.
            debug!(listener = %proxy.name, client = %peer, "a trusted source closed before a PROXY header");
            return None;
        }
        Err(Some(refused)) => {
            let counter = if refused.untrusted {
                &proxy.counters.proxy_header_untrusted
            } else {
                &proxy.counters.proxy_header_errors
            };
            counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            // Per connection at debug; at most one warning a second (a flood is not a log flood).
            debug!(listener = %proxy.name, client = %peer, reason = %refused.why,
                "a connection's PROXY header was refused: closed");
            if proxy.proxy_warnings.allow() {
                warn!(listener = %proxy.name, client = %peer, reason = %refused.why,
                    "a connection's PROXY header was refused: closed (counted in proxy_header_errors and proxy_header_untrusted; one warning a second)");
            }
            log_refused(proxy, Peer::tcp(peer, local), since, refused.why);
            return None;
        }
    };
    let acceptor = TlsAcceptor::from(Arc::clone(&site.tls));
    let why: std::borrow::Cow<'static, str> =
        match tokio::time::timeout_at(deadline, acceptor.accept(tcp)).await {
            Ok(Ok(stream)) => return Some((stream, (client, destination))),
            Ok(Err(error)) => {
                debug!(listener = %proxy.name, %client, %error, "TLS handshake failed");
                format!("tls_handshake_failed: {error}").into()
            }
            Err(_) => {
                debug!(listener = %proxy.name, %client, "TLS handshake timed out");
                "tls_handshake_timeout".into()
            }
        };
    proxy
        .counters
        .handshake_failures
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    log_refused(proxy, Peer::tcp(client, destination), since, why);
    None
}

/// What serving a connection takes.
struct Serving {
    /// Its TLS stream, as hyper reads and writes it.
    io: TokioIo<Watched<TlsStream<TcpStream>>>,
    /// ALPN chose HTTP/2.
    h2: bool,
    /// The client, with its TLS session's details.
    client: Arc<Client>,
    /// The connection's clock, holding its permit.
    state: Arc<ConnState>,
}

/// What serving a connection over `stream` takes, `permit` held by its clock.
fn serving(
    stream: TlsStream<TcpStream>,
    (client, destination): Addresses,
    port: u16,
    limits: &HttpLimits,
    permit: Slot,
) -> Serving {
    let session = stream.get_ref().1;
    let h2 = session.alpn_protocol() == Some(b"h2".as_slice());
    let client = Arc::new(Client::new(
        Peer::of_tls(client, destination, session),
        port,
    ));
    let state = ConnState::new(!h2, limits);
    state.hold_permit(permit);
    let io = TokioIo::new(Watched::new(stream, Arc::clone(&state)));
    Serving {
        io,
        h2,
        client,
        state,
    }
}

/// The access log line of a connection refused before its TLS session.
fn log_refused(
    proxy: &Arc<Proxy>,
    peer: Peer,
    since: (std::time::Instant, std::time::SystemTime),
    why: std::borrow::Cow<'static, str>,
) {
    log_connection(proxy, Arc::new(peer), since, None, why);
}

/// A connection's line: `since` is when it arrived (monotonic, wall clock).
fn log_connection(
    proxy: &Arc<Proxy>,
    peer: Arc<Peer>,
    (start, arrived): (std::time::Instant, std::time::SystemTime),
    status: Option<u16>,
    why: std::borrow::Cow<'static, str>,
) {
    if let Some(log) = proxy.access_log.load_full() {
        let mut entry = Entry::since(peer, start, arrived);
        entry.status = status;
        entry.error = Some(why);
        log.record(&proxy.log_source, Box::new(entry));
    }
}

/// A PROXY header refused, and why.
struct Refused {
    /// From a source the listener does not trust (else: malformed, or too slow).
    untrusted: bool,
    why: std::borrow::Cow<'static, str>,
}

/// The client and the address it connected to: a trusted source's PROXY header's (a trusted
/// source must send one, as HAProxy's `accept-proxy` wants), else the connection's own. A
/// connection from any other source that starts with a PROXY header is refused: its header
/// would otherwise be taken for a TLS record, and it says someone tried to pass for another.
/// `Err(None)`: a trusted source closed without a byte (a TCP health check), not an error.
async fn client_of(
    trusted: &[crate::config::l7::Prefix],
    tcp: &mut TcpStream,
    (peer, local): (SocketAddr, SocketAddr),
    deadline: Instant,
) -> Result<(SocketAddr, SocketAddr), Option<Refused>> {
    if trusted.is_empty() {
        return Ok((peer, local));
    }
    let refused = |untrusted, why: std::borrow::Cow<'static, str>| Some(Refused { untrusted, why });
    if trusted.iter().any(|prefix| prefix.contains(peer.ip())) {
        return match tokio::time::timeout_at(deadline, proxy_protocol::read(tcp)).await {
            Ok(Ok(header)) => Ok(header.addresses.unwrap_or((peer, local))),
            Ok(Err(proxy_protocol::HeaderError::Closed)) => Err(None),
            Ok(Err(error)) => Err(refused(
                false,
                format!("proxy_header_invalid: {error}").into(),
            )),
            Err(_) => Err(refused(false, "proxy_header_timeout".into())),
        };
    }
    let mut start = [0_u8; 12];
    match tokio::time::timeout_at(deadline, tcp.peek(&mut start)).await {
        Ok(Ok(n)) if proxy_protocol::looks_like_header(&start[..n]) => {
            Err(refused(true, "proxy_header_untrusted".into()))
        }
        // Anything else goes on to the TLS handshake, which says what is wrong with it.
        _ => Ok((peer, local)),
    }
}

/// How the balancer ended a connection, if it did: a status it answered (hyper's refusal of
/// a request it could not read) and why.
type Ended = Option<(Option<u16>, &'static str)>;

/// The access log line of a connection that got to no request, or whose last request hyper
/// refused before the proxy saw it.
fn log_connection_end(
    proxy: &Arc<Proxy>,
    client: &Client,
    ended: Ended,
    (start, arrived): (std::time::Instant, std::time::SystemTime),
) {
    let served = client.served.load(std::sync::atomic::Ordering::Relaxed);
    let peer = Arc::clone(&client.peer);
    match ended {
        // A request hyper refused: its line is of now, the time of that request.
        Some((Some(status), why)) => {
            let now = (std::time::Instant::now(), std::time::SystemTime::now());
            log_connection(proxy, peer, now, Some(status), why.into());
        }
        Some((None, why)) if !served => {
            log_connection(proxy, peer, (start, arrived), None, why.into())
        }
        None if !served => log_connection(
            proxy,
            peer,
            (start, arrived),
            None,
            "closed_before_request".into(),
        ),
        _ => {}
    }
}

/// HTTP/1.1 as both listeners serve it: heads read up to `max_header_bytes` and a target
/// ([`headers::http1_head_limit`]; the proxy judges them), and timed by the connection's own
/// clock ([`super::conn`]), not hyper's (which would also cut idle kept-alive connections at
/// the head timeout).
fn http1_builder(limits: &HttpLimits) -> http1::Builder {
    let head = headers::http1_head_limit(limits.max_header_bytes);
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(None)
        .max_buf_size(head.max(8192))
        .max_header_size(head);
    builder
}

/// A hyper server connection that can be asked to finish gracefully.
trait Shutdown: Future<Output = Result<(), hyper::Error>> {
    fn shutdown(self: Pin<&mut Self>);
}

impl<I, S> Shutdown for http1::UpgradeableConnection<I, S>
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    S: hyper::service::HttpService<Incoming>,
    S::ResBody: hyper::body::Body + 'static,
    <S::ResBody as hyper::body::Body>::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    fn shutdown(self: Pin<&mut Self>) {
        self.graceful_shutdown();
    }
}

impl<I, S> Shutdown for http1::Connection<I, S>
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin,
    S: hyper::service::HttpService<Incoming>,
    S::ResBody: hyper::body::Body + 'static,
    <S::ResBody as hyper::body::Body>::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    fn shutdown(self: Pin<&mut Self>) {
        self.graceful_shutdown();
    }
}

impl<I, S, E> Shutdown for http2::Connection<I, S, E>
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin,
    S: hyper::service::HttpService<Incoming>,
    S::ResBody: hyper::body::Body + Send + 'static,
    <S::ResBody as hyper::body::Body>::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    E: hyper::rt::bounds::Http2ServerConnExec<S::Future, S::ResBody>,
{
    fn shutdown(self: Pin<&mut Self>) {
        self.graceful_shutdown();
    }
}

/// Drives `conn` until it ends or its clock closes it; says why if the balancer ended it.
async fn drive<C: Shutdown>(
    mut conn: Pin<&mut C>,
    state: &ConnState,
    limits: &HttpLimits,
    proxy: &Proxy,
) -> Ended {
    let counters = &proxy.counters;
    let check = state.next_check(limits, std::time::Instant::now());
    let mut sleep = pin!(tokio::time::sleep_until(Instant::from_std(check)));
    let mut drain = proxy.drain.subscribe();
    let mut draining = false;
    loop {
        if !draining && *drain.borrow_and_update() {
            // The daemon stops or hands over. HTTP/2: GOAWAY, the streams in flight finish.
            // HTTP/1.1: the next response says `Connection: close` and ends the connection; an
            // idle one stays until its next request, its idle timeout or the daemon's exit
            // (closing it now would race a request its client may be sending).
            draining = true;
            if state.is_h1() {
                state.set_draining();
            } else {
                conn.as_mut().shutdown();
            }
        }
        tokio::select! {
            changed = drain.changed(), if !draining => {
                if changed.is_err() {
                    // The listener is gone; its connections finish on their own clocks.
                    draining = true;
                }
                continue;
            }
            ended = conn.as_mut() => {
                if let Err(error) = ended {
                    debug!(listener = %proxy.name, %error, "client connection ended");
                    return count_rejected(proxy, &error).map(|(status, why)| (Some(status), why));
                }
                return None;
            }
            () = sleep.as_mut() => {}
            () = state.wake.notified() => {}
        }
        let now = std::time::Instant::now();
        match state.verdict(limits, now) {
            Verdict::Continue => {
                let check = state.next_check(limits, now);
                sleep.as_mut().reset(Instant::from_std(check));
            }
            Verdict::Idle => {
                counters
                    .idle_closed
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                conn.as_mut().shutdown();
                drop(tokio::time::timeout(GRACE, conn.as_mut()).await);
                return Some((None, "idle_timeout"));
            }
            Verdict::SlowHead => {
                counters
                    .slow_heads
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                debug!(listener = %proxy.name, "closed a connection whose request head was too slow");
                return Some((None, "slow_request_head"));
            }
            Verdict::WriteStalled => {
                counters
                    .client_timeouts
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                debug!(listener = %proxy.name, timeout = ?limits.client_timeout,
                    "closed a connection whose client took nothing of its response");
                return Some((None, "client_write_timeout"));
            }
            Verdict::ResetFlood => {
                counters
                    .reset_floods
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                warn!(listener = %proxy.name, "closed a connection that cancelled too many streams");
                return Some((None, "reset_flood"));
            }
        }
    }
}

/// Counts a request hyper refused before it reached the proxy: a head over the limit (hyper
/// answered 431), a target over hyper's own 64 KiB cap (414: only its message tells), or one
/// it could not parse (400). Returns the status and the reason, for the access log.
fn count_rejected(proxy: &Proxy, error: &hyper::Error) -> Option<(u16, &'static str)> {
    let counters = &proxy.counters;
    let (counter, status, why) = if error.is_parse_too_large() && error.to_string().contains("URI")
    {
        (&counters.uri_too_long, 414, "uri_too_long")
    } else if error.is_parse_too_large() {
        (&counters.heads_too_large, 431, "head_too_large")
    } else if error.is_parse() {
        (&counters.bad_requests, 400, "bad_request")
    } else {
        return None;
    };
    counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    counters.responses[3].fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    Some((status, why))
}

/// The plain-HTTP listener of `proxy`: every request is redirected (308) to the same host and
/// path over HTTPS on the listener's port. Its connections have their own `max_connections`
/// and the same clock as the TLS listener's (head, idle, a client that takes nothing).
pub async fn redirect_loop(listener: TcpListener, proxy: Arc<Proxy>) {
    loop {
        proxy.redirects.room().await;
        let (tcp, _) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(error) => {
                warn!(listener = %proxy.name, %error, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let slot = proxy.redirects.take();
        tokio::spawn(serve_redirect(Arc::clone(&proxy), tcp, slot));
    }
}

async fn serve_redirect(proxy: Arc<Proxy>, tcp: TcpStream, slot: Slot) {
    let site = proxy.site();
    let port = site.listener.port;
    let limits = site.settings.http.clone();
    let state = ConnState::new(true, &limits);
    state.hold_permit(slot);
    let service = {
        let state = Arc::clone(&state);
        service_fn(move |request: Request<Incoming>| {
            let mut response = redirect(&request, port);
            if state.is_draining() {
                response
                    .headers_mut()
                    .insert(header::CONNECTION, HeaderValue::from_static("close"));
            }
            response.body_mut().hold_in_flight(state.begin());
            std::future::ready(Ok::<_, std::convert::Infallible>(response))
        })
    };
    {
        // In a block of its own: the connection closes before its permit goes.
        let conn = pin!(
            http1_builder(&limits)
                .serve_connection(TokioIo::new(Watched::new(tcp, Arc::clone(&state))), service)
        );
        drive(conn, &state, &limits, &proxy).await;
    }
    drop(state.take_permit());
}

/// `https://host[:port]/path?query` for `request`, or 400 without a usable `Host`.
fn redirect(request: &Request<Incoming>, port: u16) -> Response<ProxyBody> {
    let host = request
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .and_then(|h| h.parse::<hyper::http::uri::Authority>().ok());
    let Some(host) = host else {
        return error_response(StatusCode::BAD_REQUEST);
    };
    // The asterisk form (`OPTIONS *`) names no resource: redirect it to the root.
    let path = request
        .uri()
        .path_and_query()
        .map(|p| p.as_str())
        .filter(|p| p.starts_with('/'))
        .unwrap_or("/");
    let location = if port == 443 {
        format!("https://{}{path}", host.host())
    } else {
        format!("https://{}:{port}{path}", host.host())
    };
    let Ok(location) = HeaderValue::from_str(&location) else {
        return error_response(StatusCode::BAD_REQUEST);
    };
    let mut response = error_response(StatusCode::PERMANENT_REDIRECT);
    response.headers_mut().insert(header::LOCATION, location);
    response
}
