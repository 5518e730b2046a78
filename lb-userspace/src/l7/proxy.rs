//! One L7 listener's request path: choose a backend (a sticky session's, or by the listener's
//! balancing), rewrite the request for it ([`super::headers`]), send it on a pooled connection,
//! and stream the response back; WebSocket upgrades (HTTP/1.1 `Upgrade`, HTTP/2 extended
//! CONNECT) become a tunnel to an HTTP/1.1 backend connection.
//!
//! Failures, as a client sees them (the body names no backend):
//!
//! | what happened | answer |
//! | --- | --- |
//! | no backend takes requests | 503 |
//! | the connection (or its TLS handshake) failed: tried once on another backend, then | 502 |
//! | the request was sent and the connection failed | 502, or tried once on another backend if its method is idempotent and it had no body |
//! | no response head within `response_timeout` | 504 |
//!
//! The retries are decided by [`super::retry::Attempts`]; [`Proxy::forward`] reads top to
//! bottom: check the head, place the request, prepare it for the backend, run its tries,
//! shape the response.
//!
//! A request the proxy refuses before placing it: a target over 8 KiB (414), header fields
//! over `max_header_bytes` (431), no usable `Host` (400), an HTTP/2 extended CONNECT for a
//! protocol other than WebSocket (501).

use std::{
    convert::Infallible,
    future::Future,
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicU64, AtomicUsize, Ordering},
    },
    time::Duration,
};

use arc_swap::{ArcSwap, ArcSwapOption};
use bytes::Bytes;
use http_body_util::Either;
use hyper::{
    Request, Response, StatusCode, Version,
    body::{Body as _, Incoming},
    header::{self, HeaderMap, HeaderValue},
    upgrade::OnUpgrade,
};
use tracing::{debug, warn};

use super::{
    access_log::{AccessLog, Entry, Peer, RequestLine, Source, Sticky},
    balance::{BackendSet, OutlierPolicy, Outstanding, Pools, Upstream},
    body::{Held, ProxyBody, Upload, error_response},
    conn::ConnState,
    headers::{self, Forwarding},
    limit::Limit,
    retry::{Attempts, Failure, Next, ReplayHead},
    route::{Facts, Forward, Route},
    sticky::{self, Opened, SessionId, Ticket},
    tls::CertResolver,
    upstream::{ConnectError, Connector, ProxyTag, Sender, UpBody},
};
use crate::config::{
    ListenerConfig,
    l7::{L7Settings, StickySettings},
};

/// What an L7 listener counts. Read by `lb stats` and the metrics endpoint.
#[derive(Debug, Default)]
pub struct Counters {
    pub connections: AtomicU64,
    pub handshake_failures: AtomicU64,
    pub requests: AtomicU64,
    /// Responses by class: 1xx to 5xx.
    pub responses: [AtomicU64; 5],
    pub backend_connect_errors: AtomicU64,
    pub backend_errors: AtomicU64,
    pub backend_timeouts: AtomicU64,
    pub retries: AtomicU64,
    pub no_backend: AtomicU64,
    pub sticky_hits: AtomicU64,
    pub sticky_new: AtomicU64,
    pub sticky_repinned: AtomicU64,
    /// Live sessions whose cookie was re-issued: sliding expiry, or the first format.
    pub sticky_refreshed: AtomicU64,
    pub slow_heads: AtomicU64,
    pub idle_closed: AtomicU64,
    pub reset_floods: AtomicU64,
    pub upgrades: AtomicU64,
    /// A client that sent nothing of its upload, or took nothing of its response, for
    /// `client_timeout`.
    pub client_timeouts: AtomicU64,
    /// An upload slower than `min_upload_rate`.
    pub slow_uploads: AtomicU64,
    /// A backend that sent nothing of a response body for `server_timeout`.
    pub server_timeouts: AtomicU64,
    /// A request body over `max_body_bytes` (413).
    pub body_too_large: AtomicU64,
    /// Backends ejected by passive health.
    pub outlier_ejections: AtomicU64,
    /// Requests refused as malformed (400): no or several `Host`, a body the client cut
    /// short.
    pub bad_requests: AtomicU64,
    /// Request heads whose fields are over `max_header_bytes` (431; by the HTTP layer for
    /// heads far over it).
    pub heads_too_large: AtomicU64,
    /// Request targets over 8 KiB (414).
    pub uri_too_long: AtomicU64,
    /// Connections from a trusted source whose PROXY header was malformed or too slow.
    pub proxy_header_errors: AtomicU64,
    /// Connections from another source that started with a PROXY header.
    pub proxy_header_untrusted: AtomicU64,
}

impl Counters {
    /// Every counter with its stable label (`lb stats`, the metrics' `event` label); the
    /// responses by class are [`Counters::responses_by_class`].
    pub fn events(&self) -> Vec<(&'static str, u64)> {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        vec![
            ("connections", get(&self.connections)),
            ("handshake_failures", get(&self.handshake_failures)),
            ("requests", get(&self.requests)),
            ("backend_connect_errors", get(&self.backend_connect_errors)),
            ("backend_errors", get(&self.backend_errors)),
            ("backend_timeouts", get(&self.backend_timeouts)),
            ("retries", get(&self.retries)),
            ("no_backend", get(&self.no_backend)),
            ("sticky_hits", get(&self.sticky_hits)),
            ("sticky_new", get(&self.sticky_new)),
            ("sticky_repinned", get(&self.sticky_repinned)),
            ("sticky_refreshed", get(&self.sticky_refreshed)),
            ("upgrades", get(&self.upgrades)),
            ("slow_heads", get(&self.slow_heads)),
            ("idle_closed", get(&self.idle_closed)),
            ("reset_floods", get(&self.reset_floods)),
            ("client_timeouts", get(&self.client_timeouts)),
            ("slow_uploads", get(&self.slow_uploads)),
            ("server_timeouts", get(&self.server_timeouts)),
            ("body_too_large", get(&self.body_too_large)),
            ("outlier_ejections", get(&self.outlier_ejections)),
            ("bad_requests", get(&self.bad_requests)),
            ("heads_too_large", get(&self.heads_too_large)),
            ("uri_too_long", get(&self.uri_too_long)),
            ("proxy_header_errors", get(&self.proxy_header_errors)),
            ("proxy_header_untrusted", get(&self.proxy_header_untrusted)),
        ]
    }

    /// Responses by status class: `1xx` to `5xx`.
    pub fn responses_by_class(&self) -> Vec<(&'static str, u64)> {
        ["1xx", "2xx", "3xx", "4xx", "5xx"]
            .into_iter()
            .zip(&self.responses)
            .map(|(class, c)| (class, c.load(Ordering::Relaxed)))
            .collect()
    }
}

fn count(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

/// A listener's settings as of its last (re)load: what a new request or connection uses.
pub struct Site {
    /// Where requests go: the listener's rules, and its pool.
    pub routes: super::route::Routes,
    pub listener: ListenerConfig,
    pub settings: L7Settings,
    pub tls: Arc<rustls::ServerConfig>,
    pub resolver: Arc<CertResolver>,
    pub sealer: Option<sticky::Sealer>,
    pub connector: Connector,
}

impl std::fmt::Debug for Site {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Site")
            .field("listener", &self.listener)
            .field("connector", &self.connector)
            .finish_non_exhaustive()
    }
}

/// An L7 listener's request path; lives as long as the listener, across reloads.
#[derive(Debug)]
pub struct Proxy {
    pub name: String,
    site: ArcSwap<Site>,
    backends: ArcSwap<Pools>,
    pub counters: Counters,
    /// Open TLS connections against `max_connections`, across reloads.
    pub connections: Arc<Limit>,
    /// Open connections to the plain-HTTP redirect, against a `max_connections` of their own
    /// (a flood there does not take the TLS listener's places).
    pub redirects: Arc<Limit>,
    /// Set once when the daemon stops or hands over: the connections finish what is in
    /// flight and close (see [`super::server`]).
    pub drain: tokio::sync::watch::Sender<bool>,
    /// The daemon's access log, if it has one (`[access_log]`), and this listener's count of
    /// its lines.
    pub access_log: ArcSwapOption<AccessLog>,
    pub log_source: Arc<Source>,
    /// Refused PROXY headers' warnings, at most one a second.
    pub proxy_warnings: super::limit::OncePerSecond,
}

/// A client connection, as its requests see it.
#[derive(Debug)]
pub struct Client {
    pub forwarding: Forwarding,
    /// The client and its TLS session, for the access log.
    pub peer: Arc<Peer>,
    /// Whether a request of it reached the proxy.
    pub served: std::sync::atomic::AtomicBool,
    /// The PROXY v2 header its backend connections start with, made when first needed.
    proxy_header: std::sync::OnceLock<Bytes>,
    /// The sticky cookie its requests last sent, opened.
    last_cookie: sticky::LastOpened,
}

impl Client {
    pub fn new(peer: Peer, listener_port: u16) -> Self {
        Self {
            forwarding: Forwarding::new(peer.client.ip(), listener_port),
            peer: Arc::new(peer),
            served: std::sync::atomic::AtomicBool::new(false),
            proxy_header: std::sync::OnceLock::new(),
            last_cookie: sticky::LastOpened::default(),
        }
    }

    /// The PROXY v2 header naming this client, for its backend connections.
    fn proxy_header(&self) -> Bytes {
        self.proxy_header
            .get_or_init(|| {
                Bytes::from(super::proxy_protocol::encode_v2(
                    self.peer.client,
                    self.peer.destination,
                ))
            })
            .clone()
    }
}

/// A request's way through the proxy, as its access log line tells it: filled in as the request
/// goes (the clock read only if the line will be written).
#[derive(Debug, Default)]
struct Trace {
    timed: bool,
    backend: Option<SocketAddr>,
    /// Tries on another backend, or replays (not a request sent again on a fresh connection
    /// after a pooled one was found closed).
    retries: u32,
    /// When the last try's request went to its backend, and when its response head came.
    sent: Option<std::time::Instant>,
    head: Option<std::time::Instant>,
    sticky: Sticky,
    error: Option<&'static str>,
    upload: Option<Arc<super::body::UploadOutcome>>,
    /// The routing rule that took the request.
    rule: Option<String>,
}

impl Trace {
    fn now(&self) -> Option<std::time::Instant> {
        self.timed.then(std::time::Instant::now)
    }

    /// The balancer failed the request: `error` says why.
    fn failed(&mut self, error: &'static str) {
        self.error = Some(error);
    }
}

/// How a request was placed, for the cookie its response sets.
enum Placement {
    /// No stickiness on this listener.
    Unpinned,
    /// The cookie's backend, which still takes its sessions; `refresh` if the response
    /// re-issues the cookie (past half its duration with `sliding`, or in the first format).
    Pinned { session: SessionId, refresh: bool },
    /// A new session (no valid cookie).
    New(SessionId),
    /// A session whose backend no longer takes it.
    Repinned(SessionId),
}

impl Placement {
    /// The placement as the access log names it.
    fn outcome(&self) -> Sticky {
        match self {
            Self::Unpinned => Sticky::None,
            Self::Pinned { .. } => Sticky::Pinned,
            Self::New(_) => Sticky::New,
            Self::Repinned(_) => Sticky::Repinned,
        }
    }
}

/// The sticky cookie a response sets, and its CORS twin if the listener has one.
struct SetCookies {
    cookie: HeaderValue,
    cors: Option<HeaderValue>,
}

impl SetCookies {
    fn append_to(self, headers: &mut HeaderMap) {
        headers.append(header::SET_COOKIE, self.cookie);
        if let Some(cors) = self.cors {
            headers.append(header::SET_COOKIE, cors);
        }
    }
}

/// A request's switch of protocols, if it asks for one: its `Upgrade` (`websocket` for an
/// HTTP/2 extended CONNECT) and the client's side of the upgraded connection.
struct Switch {
    header: Option<HeaderValue>,
    client: Option<OnUpgrade>,
    h2_websocket: bool,
}

impl Switch {
    fn of(request: &mut Request<Incoming>) -> Self {
        let h2_websocket = headers::is_h2_websocket(request);
        let header = if h2_websocket {
            Some(HeaderValue::from_static("websocket"))
        } else {
            headers::upgrade_of(request.version(), request.headers())
        };
        let client = header.is_some().then(|| hyper::upgrade::on(&mut *request));
        Self {
            header,
            client,
            h2_websocket,
        }
    }
}

/// A request ready for its first try: the request, the head to replay it from, the upload's
/// outcome.
type Prepared = (
    Request<UpBody>,
    Option<ReplayHead>,
    Option<Arc<super::body::UploadOutcome>>,
);

/// What every try of one request shares.
struct Tries<'a> {
    site: &'a Site,
    set: &'a BackendSet,
    upload: Option<&'a super::body::UploadOutcome>,
    replay: Option<&'a ReplayHead>,
    /// A switch of protocols: the backend connection is an HTTP/1.1 one of its own.
    upgrade: bool,
    /// The PROXY header of the client's backend connections, if the listener sends one.
    tag: ProxyTag,
}

/// A request the proxy answers itself, with `status`.
enum Refusal {
    /// The client's doing: the connection closes after the answer ([`client_error`]).
    Close(StatusCode),
    /// The connection stays ([`error_response`]).
    Answer(StatusCode),
}

impl Refusal {
    fn response(self) -> Response<ProxyBody> {
        match self {
            Self::Close(status) => client_error(status),
            Self::Answer(status) => error_response(status),
        }
    }
}

/// How one try of a request ended.
enum Tried {
    /// The backend's response head, and its HTTP/1.1 connection to pool after the body.
    Answered(
        Response<Incoming>,
        Option<hyper::client::conn::http1::SendRequest<UpBody>>,
    ),
    /// A failure [`Attempts`] decides about.
    Failed(Failure),
    /// The proxy answers at once, whatever the tries left.
    Refused(Refusal),
}

/// A backend's response, with what holds the backend while its body streams.
struct Served {
    response: Response<Incoming>,
    connection: Option<hyper::client::conn::http1::SendRequest<UpBody>>,
    outstanding: Outstanding,
    upstream: Arc<Upstream>,
}

/// Why sending a request failed.
enum SendFailure {
    /// Before any of it was written: the request is back.
    NotSent(Box<Request<UpBody>>, hyper::Error),
    /// After: it may have reached the backend.
    Sent(hyper::Error),
}

impl Proxy {
    pub fn new(name: String, site: Site) -> Self {
        let max = site.settings.http.max_connections;
        Self {
            connections: Limit::new(max),
            redirects: Limit::new(max),
            log_source: Arc::new(Source::new(&name)),
            name,
            site: ArcSwap::from_pointee(site),
            backends: ArcSwap::from_pointee(Pools::default()),
            counters: Counters::default(),
            drain: tokio::sync::watch::Sender::new(false),
            access_log: ArcSwapOption::empty(),
            proxy_warnings: super::limit::OncePerSecond::default(),
        }
    }

    /// Every counter with its stable label ([`Counters::events`] and the access log's).
    pub fn events(&self) -> Vec<(&'static str, u64)> {
        let mut events = self.counters.events();
        events.push((
            "access_log_lines",
            self.log_source.lines.load(Ordering::Relaxed),
        ));
        events.push((
            "access_log_dropped",
            self.log_source.dropped.load(Ordering::Relaxed),
        ));
        events
    }

    pub fn site(&self) -> Arc<Site> {
        self.site.load_full()
    }

    /// New settings for new requests. The idle and shared connections to the backends were
    /// made under the old ones (a CA bundle or client certificate that may have changed): they
    /// go, so that the next request connects, and verifies the backend, anew.
    pub fn set_site(&self, site: Site) {
        let max = site.settings.http.max_connections;
        self.connections.set_max(max);
        self.redirects.set_max(max);
        self.site.store(Arc::new(site));
        for upstream in self.backends.load().members() {
            upstream.conns.clear();
        }
    }

    /// Client connections open now (TLS and the redirect's).
    pub fn open_connections(&self) -> u64 {
        let open = self.connections.open() + self.redirects.open();
        u64::try_from(open).unwrap_or(u64::MAX)
    }

    pub fn backends(&self) -> Arc<Pools> {
        self.backends.load_full()
    }

    pub fn set_backends(&self, pools: Pools) {
        self.backends.store(Arc::new(pools));
    }

    /// Answers one request from `client` on connection `conn`.
    pub async fn serve(
        self: Arc<Self>,
        request: Request<Incoming>,
        conn: Arc<ConnState>,
        client: Arc<Client>,
    ) -> Result<Response<ProxyBody>, Infallible> {
        let in_flight = conn.begin();
        count(&self.counters.requests);
        client.served.store(true, Ordering::Relaxed);
        let head = request.method() == hyper::Method::HEAD;
        let log = self.access_log.load_full();
        let entry = log.as_ref().map(|_| {
            let mut entry = Entry::new(Arc::clone(&client.peer), std::time::Instant::now());
            entry.request = Some(RequestLine::of(&request));
            Box::new(entry)
        });
        let mut trace = Trace {
            timed: log.is_some(),
            ..Trace::default()
        };
        let mut response = self.forward(request, &conn, &client, &mut trace).await;
        if conn.is_h1()
            && conn.is_draining()
            && response.status() != StatusCode::SWITCHING_PROTOCOLS
        {
            // The daemon is stopping: this response is the connection's last (HTTP/2 has had
            // its GOAWAY instead).
            response
                .headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        let class = usize::from(response.status().as_u16() / 100).clamp(1, 5) - 1;
        count(&self.counters.responses[class]);
        let server_timeout = self.site().settings.backend.server_timeout;
        if let (Some(log), Some(mut entry)) = (log, entry) {
            entry.status = Some(response.status().as_u16());
            entry.backend = trace.backend;
            entry.retries = trace.retries;
            entry.sticky = trace.sticky;
            entry.error = trace.error.map(std::borrow::Cow::Borrowed);
            entry.rule = trace.rule.take();
            if let Some(sent) = trace.sent {
                entry.request_time = Some(sent.saturating_duration_since(entry.start));
                entry.backend_time = trace.head.map(|head| head.saturating_duration_since(sent));
            }
            let status = response.status();
            let bodyless = head
                || status.is_informational()
                || status == StatusCode::NO_CONTENT
                || status == StatusCode::NOT_MODIFIED;
            let body = response.body_mut();
            body.log_at_end(super::body::LogAtEnd {
                log,
                source: Arc::clone(&self.log_source),
                upload: trace.upload.take(),
                bodyless,
                entry,
            });
        }
        let body = response.body_mut();
        body.hold_in_flight(in_flight);
        body.time_out_after(server_timeout, Arc::clone(&self));
        Ok(response)
    }

    /// One request's way through the listener: refuse what cannot be forwarded, place it on a
    /// backend, rewrite it for the backend, run its tries ([`super::retry`]), and shape the response.
    async fn forward(
        self: &Arc<Self>,
        mut request: Request<Incoming>,
        conn: &Arc<ConnState>,
        client: &Client,
        trace: &mut Trace,
    ) -> Response<ProxyBody> {
        let site = self.site();
        let pools = self.backends();
        if let Err((refused, why)) = self.check(&site, &mut request) {
            trace.failed(why);
            return refused.response();
        }
        // Read only for a listener with rules: most have none, and their requests pay nothing.
        let facts = (!site.settings.rules.is_empty()).then(|| Facts::of(&request));
        let route = match &facts {
            Some(facts) => site
                .routes
                .route(&site.settings.rules, &facts.view(request.headers())),
            None => site.routes.default_route(),
        };
        if trace.timed {
            trace.rule = route.rule().map(|rule| rule.name.clone());
        }
        let forward = match route {
            Route::Forward(forward) => forward,
            Route::Redirect(redirect, rule) => {
                let facts = facts.unwrap_or_else(|| Facts::of(&request));
                return super::route::redirect(redirect, &facts, &rule.response_headers);
            }
            Route::Fixed(fixed, rule) => {
                return super::route::fixed(fixed, &rule.response_headers);
            }
        };
        site.routes
            .strip_cookies(request.headers_mut(), forward.sticky);
        let switch = Switch::of(&mut request);
        let now = sticky::now_unix_ms();
        let (first, mut placement) = self.place(
            &site,
            &pools,
            &forward,
            (request.headers_mut(), client),
            now,
        );
        trace.sticky = placement.outcome();
        let Some((set, first)) = first else {
            count(&self.counters.no_backend);
            trace.failed("no_backend");
            return error_response(StatusCode::SERVICE_UNAVAILABLE);
        };
        let prepared = self.prepare(
            &site,
            request,
            &client.forwarding,
            &first,
            &switch,
            &forward,
        );
        let (request, replay, upload) = match prepared {
            Ok(prepared) => prepared,
            Err((refused, why)) => {
                trace.failed(why);
                return refused.response();
            }
        };
        if trace.timed {
            trace.upload.clone_from(&upload);
        }

        // Let the other connections with a request ready read theirs first: the requests
        // then reach the backends in a burst, which they (and the kernel) serve with fewer
        // wake-ups and context switches than one request at a time. Under load this is a
        // tenth more requests per second (README, benchmark); idle, it costs one task poll.
        tokio::task::yield_now().await;
        let tries = Tries {
            site: &site,
            set: &set,
            upload: upload.as_deref(),
            replay: replay.as_ref(),
            upgrade: switch.header.is_some(),
            tag: site
                .settings
                .backend
                .send_proxy_protocol
                .then(|| client.proxy_header()),
        };
        let served = self
            .run_tries(&tries, first, request, &mut placement, trace)
            .await;
        trace.sticky = placement.outcome();
        let served = match served {
            Ok(served) => served,
            Err(failed) => return failed.response(),
        };
        let cookie = self.cookie(&site, forward.sticky, &placement, &served.upstream, now);
        let mut response = self.respond(&site, served, cookie, switch, conn, tries.tag);
        super::route::edit(response.headers_mut(), forward.response_headers);
        response
    }

    /// A request refused before it is placed: a head too large (414, 431), no usable `Host`
    /// (400), an extended CONNECT for a protocol other than WebSocket (501).
    fn check(
        &self,
        site: &Site,
        request: &mut Request<Incoming>,
    ) -> Result<(), (Refusal, &'static str)> {
        if let Err(refused) = headers::check_head_size(request, site.settings.http.max_header_bytes)
        {
            let (counter, why) = match refused {
                headers::HeadTooLarge::Target => (&self.counters.uri_too_long, "uri_too_long"),
                headers::HeadTooLarge::Fields => (&self.counters.heads_too_large, "head_too_large"),
            };
            count(counter);
            return Err((Refusal::Close(refused.status()), why));
        }
        if headers::check_host(request).is_err() {
            count(&self.counters.bad_requests);
            return Err((Refusal::Close(StatusCode::BAD_REQUEST), "bad_host"));
        }
        if !headers::is_h2_websocket(request)
            && request.extensions().get::<hyper::ext::Protocol>().is_some()
        {
            // An extended CONNECT for a protocol other than WebSocket: none is tunnelled.
            count(&self.counters.bad_requests);
            return Err((
                Refusal::Answer(StatusCode::NOT_IMPLEMENTED),
                "connect_protocol_not_implemented",
            ));
        }
        Ok(())
    }

    /// The request as `first` gets it: a body over `max_body_bytes` refused (413), hop-by-hop
    /// headers gone, forwarding headers added, the target and version the backend's; with the
    /// head to replay it from, and the upload's outcome.
    fn prepare(
        self: &Arc<Self>,
        site: &Site,
        request: Request<Incoming>,
        client: &Forwarding,
        first: &Upstream,
        switch: &Switch,
        forward: &Forward<'_>,
    ) -> Result<Prepared, (Refusal, &'static str)> {
        let (mut parts, body) = request.into_parts();
        if switch.h2_websocket {
            headers::websocket_to_http1(&mut parts);
        }
        let limits = &site.settings.http;
        if let Some(max) = limits.max_body_bytes
            && body.size_hint().exact().is_some_and(|length| length > max)
        {
            count(&self.counters.body_too_large);
            return Err((
                Refusal::Close(StatusCode::PAYLOAD_TOO_LARGE),
                "body_too_large",
            ));
        }
        let body = Upload::new(body, limits, Arc::clone(self));
        let upload = body.outcome();
        let upgrade = switch.header.as_ref();
        headers::strip_hop_by_hop(&mut parts.headers, upgrade);
        if site.settings.forwarded_header {
            let host = parts
                .headers
                .get(header::HOST)
                .and_then(|h| h.to_str().ok())
                .map(str::to_owned)
                .or_else(|| parts.uri.authority().map(ToString::to_string));
            headers::add_forwarded(&mut parts.headers, client, host.as_deref());
        } else {
            // Not vouched for by the balancer, a client's claim would reach the backend as if
            // it were a proxy's.
            parts.headers.remove(header::FORWARDED);
        }
        headers::add_forwarding(&mut parts.headers, client);
        super::route::edit(&mut parts.headers, forward.request_headers);
        let version = if site.connector.http2() && upgrade.is_none() {
            Version::HTTP_2
        } else {
            Version::HTTP_11
        };
        parts.uri = match headers::to_backend_target(
            &parts.uri,
            &mut parts.headers,
            version,
            site.connector.tls(),
            first.address,
        ) {
            Ok(uri) => uri,
            Err(_) => {
                return Err((Refusal::Answer(StatusCode::BAD_REQUEST), "bad_target"));
            }
        };
        parts.version = version;
        if version == Version::HTTP_11 && upgrade.is_none() {
            headers::frame_body_for_http1(&mut parts.headers, !body.is_end_stream());
        }
        let replay = ReplayHead::of(&parts, body.is_end_stream());
        Ok((
            Request::from_parts(parts, Either::Left(body)),
            replay,
            upload,
        ))
    }

    /// Sends the request to `first`, then where [`Attempts`] says after each failure, until a
    /// backend answers (its response) or the tries run out (the client's error response).
    async fn run_tries(
        &self,
        tries: &Tries<'_>,
        first: Arc<Upstream>,
        request: Request<UpBody>,
        placement: &mut Placement,
        trace: &mut Trace,
    ) -> Result<Served, Refusal> {
        let Tries { site, set, .. } = *tries;
        let mut attempts = Attempts::new(tries.replay.is_some());
        let mut upstream = first;
        // None once sent, until a replay rebuilds it.
        let mut request = Some(request);
        loop {
            let outstanding = upstream.begin();
            let fresh = attempts.is_fresh();
            trace.backend = Some(upstream.address);
            let tried = self
                .try_once(tries, &upstream, &mut request, fresh, trace)
                .await;
            let failure = match tried {
                Tried::Answered(response, connection) => {
                    return Ok(Served {
                        response,
                        connection,
                        outstanding,
                        upstream,
                    });
                }
                Tried::Refused(refusal) => return Err(refusal),
                Tried::Failed(failure) => failure,
            };
            let verdict = attempts.after(failure);
            if verdict.backend_failed {
                self.backend_failed(site, &upstream);
            }
            match verdict.next {
                Next::SameBackend => {}
                Next::Another | Next::Replay => {
                    let Some(next) = self.another(site, set, &upstream, placement) else {
                        trace.failed("no_backend_to_retry");
                        return Err(Refusal::Answer(StatusCode::BAD_GATEWAY));
                    };
                    upstream = next;
                    trace.retries += 1;
                    if verdict.next == Next::Replay {
                        request = tries.replay.map(ReplayHead::request);
                    }
                }
                Next::GiveUp(status) => return Err(Refusal::Answer(status)),
            }
        }
    }

    /// One try of `request` on `upstream`, on a new connection if `fresh`, counted and
    /// logged. The request stays in `request` if none of it was sent.
    async fn try_once(
        &self,
        tries: &Tries<'_>,
        upstream: &Arc<Upstream>,
        request: &mut Option<Request<UpBody>>,
        fresh: bool,
        trace: &mut Trace,
    ) -> Tried {
        let backend = &tries.site.settings.backend;
        let sender = match tries
            .site
            .connector
            .checkout(upstream, tries.upgrade, fresh, &tries.tag)
            .await
        {
            Ok(sender) => sender,
            Err(error) => {
                count(&self.counters.backend_connect_errors);
                self.log_connect_failure(upstream, &error);
                trace.failed("backend_connect_failed");
                return Tried::Failed(Failure::Connect);
            }
        };
        let Some(sending) = request.take() else {
            // Not reached: a sent request is tried again only as a replay.
            return Tried::Refused(Refusal::Answer(StatusCode::BAD_GATEWAY));
        };
        trace.sent = trace.now();
        match response_within(send(sender, sending), tries.upload, backend).await {
            Ok(Ok((response, connection))) => {
                upstream.succeeded();
                trace.head = trace.now();
                trace.error = None;
                Tried::Answered(response, connection)
            }
            Err(_) => {
                count(&self.counters.backend_timeouts);
                trace.failed("backend_timeout");
                warn!(listener = %self.name, backend = %upstream.address,
                    timeout = ?backend.response_timeout, "no response in time");
                Tried::Failed(Failure::Timeout)
            }
            Ok(Err(SendFailure::NotSent(back, error))) => {
                // A pooled connection the backend had closed: the request is intact.
                debug!(listener = %self.name, backend = %upstream.address, %error,
                    "a pooled connection was closed; sending on a new one");
                *request = Some(*back);
                if fresh {
                    count(&self.counters.backend_errors);
                    trace.failed("backend_failed");
                }
                Tried::Failed(Failure::NotSent)
            }
            Ok(Err(SendFailure::Sent(error))) => {
                if let Some(status) = failed_upload(tries.upload) {
                    // The client's upload failed (counted there): not the backend's doing.
                    debug!(listener = %self.name, backend = %upstream.address, %error,
                        "a request abandoned: its upload failed");
                    trace.failed(match status {
                        StatusCode::REQUEST_TIMEOUT => "client_upload_timeout",
                        StatusCode::PAYLOAD_TOO_LARGE => "body_too_large",
                        _ => "client_upload_failed",
                    });
                    return Tried::Refused(Refusal::Close(status));
                }
                count(&self.counters.backend_errors);
                trace.failed("backend_failed");
                warn!(listener = %self.name, backend = %upstream.address, %error,
                    "the backend failed the request");
                Tried::Failed(Failure::Sent)
            }
        }
    }

    /// The response to the client: hop-by-hop headers gone, the sticky cookie set; a switch
    /// of protocols becomes a tunnel between the client's and the backend's connections.
    fn respond(
        &self,
        site: &Site,
        served: Served,
        cookie: Option<SetCookies>,
        switch: Switch,
        conn: &Arc<ConnState>,
        tag: ProxyTag,
    ) -> Response<ProxyBody> {
        let Served {
            mut response,
            connection,
            outstanding,
            upstream,
        } = served;
        if let (Some(client_upgrade), StatusCode::SWITCHING_PROTOCOLS) =
            (switch.client, response.status())
        {
            count(&self.counters.upgrades);
            let backend_upgrade = hyper::upgrade::on(&mut response);
            // An HTTP/1.1 connection becomes the tunnel, and its place in `max_connections`
            // goes with it; an HTTP/2 stream does, and its connection stays busy meanwhile.
            let held = if switch.h2_websocket {
                super::tunnel::Held::Stream(conn.begin())
            } else {
                super::tunnel::Held::Connection(conn.take_permit())
            };
            tokio::spawn(super::tunnel::run(
                client_upgrade,
                backend_upgrade,
                outstanding,
                held,
                site.settings.http.idle_timeout,
            ));
            let (mut parts, _) = response.into_parts();
            if switch.h2_websocket {
                strip_response(&mut parts.headers, None);
                headers::detach_values(&mut parts.headers);
                headers::websocket_answer_for_h2(&mut parts);
            } else {
                strip_response(&mut parts.headers, switch.header.as_ref());
            }
            if let Some(cookies) = cookie {
                cookies.append_to(&mut parts.headers);
            }
            return Response::from_parts(parts, ProxyBody::full(Bytes::new()));
        }
        let (mut parts, body) = response.into_parts();
        strip_response(&mut parts.headers, None);
        if !conn.is_h1() {
            headers::detach_values(&mut parts.headers);
        }
        if let Some(cookies) = cookie {
            cookies.append_to(&mut parts.headers);
        }
        parts.version = Version::HTTP_11;
        let held = Held {
            in_flight: None,
            outstanding: Some(outstanding),
            connection: connection.map(|send| (Arc::clone(&upstream), send, tag)),
        };
        Response::from_parts(parts, ProxyBody::streamed(body, held))
    }

    /// The backend for a request, and how it was placed: the session's if its cookie is valid
    /// and its backend takes it; else by rendezvous of the session (re-pin); else by balance.
    /// The balancer's cookie never reaches a backend.
    fn place(
        &self,
        site: &Site,
        pools: &Pools,
        forward: &Forward<'_>,
        (headers, client): (&mut HeaderMap, &Client),
        now: u64,
    ) -> (Option<Chosen>, Placement) {
        let balance = site.settings.balance;
        let sets = pool_sets(pools, forward.pools);
        let pick = |exclude: Option<&Arc<Upstream>>| {
            pick_pool(&sets, balance, exclude, forward.pool_turn)
                .map(|(_, set, upstream)| (set, upstream))
        };
        let (Some(sealer), Some(sticky)) = (&site.sealer, forward.sticky) else {
            return (pick(None), Placement::Unpinned);
        };
        let longest = u64::try_from(sticky.duration.as_millis()).unwrap_or(u64::MAX);
        let opened = Self::take_sticky(sealer, sticky, headers, client).filter(|opened| {
            // A first-format cookie lives no longer than the listener's duration from now:
            // its format is the weaker one, and its re-issue gives it a fresh expiry.
            let too_long = opened.is_legacy && opened.ticket.expires > now.saturating_add(longest);
            opened.ticket.is_live(now) && !too_long
        });
        let Some(Opened { ticket, is_legacy }) = opened else {
            count(&self.counters.sticky_new);
            return (pick(None), Placement::New(SessionId::random()));
        };
        // The pool of the action that has the session's backend (a user stays in its pool).
        let pinned = sets
            .iter()
            .find_map(|&(_, set, ..)| Some((set, set.pinned(ticket.backend)?)));
        match pinned {
            Some((set, pinned)) => {
                count(&self.counters.sticky_hits);
                let half = sticky.duration / 2;
                let left = Duration::from_millis(ticket.expires.saturating_sub(now));
                // A draining or disabled backend keeps its sessions for their time, not for
                // as long as they stay active.
                let slides = sticky.sliding && left < half && set.takes_new_users(ticket.backend);
                let refresh = is_legacy || slides;
                let session = ticket.session;
                (
                    Some((Arc::clone(set), pinned)),
                    Placement::Pinned { session, refresh },
                )
            }
            None => {
                count(&self.counters.sticky_repinned);
                // The same pool and backend on every balancer, by rendezvous of the session: in
                // the pool that has its backend (ejected, draining or unhealthy), so the user
                // keeps its pool; if none has (the backend was removed), first among the pools
                // by weight, then in the pool.
                let session = &ticket.session;
                let known = sets.iter().find(|&&(_, set, ..)| set.knows(ticket.backend));
                let set = match known {
                    Some(&(_, set, ..)) => Some(set),
                    None => {
                        let pool = sticky::rendezvous(
                            session,
                            sets.iter().map(|&(_, set, weight, id)| {
                                (id, if set.is_empty() { 0 } else { weight })
                            }),
                        );
                        sets.iter()
                            .find(|&&(.., id)| Some(id) == pool)
                            .map(|&(_, set, ..)| set)
                    }
                };
                let placed = set.and_then(|set| Some((Arc::clone(set), set.rendezvous(session)?)));
                (placed, Placement::Repinned(ticket.session))
            }
        }
    }

    /// Where a new user's request for `pools` would go now (`lb simulate`): the pool and the
    /// backend, the turns left as they are.
    pub fn peek(&self, forward: &Forward<'_>) -> Option<(String, SocketAddr)> {
        let site = self.site();
        let current = self.backends();
        let sets = pool_sets(&current, forward.pools);
        let pool_turn = AtomicUsize::new(forward.pool_turn.load(Ordering::Relaxed));
        let start = pool_start(&sets, &pool_turn);
        (0..sets.len()).find_map(|k| {
            let (pool, set, ..) = sets[(start + k) % sets.len()];
            Some((pool.to_owned(), set.peek(site.settings.balance)?.address))
        })
    }

    /// The `Set-Cookie`s for a response from `served`: for a new or re-pinned session (also
    /// one whose backend just failed its request: re-pinned where it was served), and for a
    /// pinned one whose cookie is refreshed.
    fn cookie(
        &self,
        site: &Site,
        sticky: Option<&StickySettings>,
        placement: &Placement,
        served: &Arc<Upstream>,
        now: u64,
    ) -> Option<SetCookies> {
        let (Some(sealer), Some(sticky)) = (&site.sealer, sticky) else {
            return None;
        };
        let session = match *placement {
            Placement::New(session) | Placement::Repinned(session) => session,
            Placement::Pinned {
                session,
                refresh: true,
            } => {
                count(&self.counters.sticky_refreshed);
                session
            }
            Placement::Unpinned | Placement::Pinned { refresh: false, .. } => return None,
        };
        let duration = u64::try_from(sticky.duration.as_millis()).unwrap_or(u64::MAX);
        let expires = now.saturating_add(duration);
        let ticket = Ticket {
            backend: served.id,
            session,
            expires,
        };
        let value = match sealer.seal(&ticket) {
            Ok(value) => value,
            Err(error) => {
                warn!(listener = %self.name, %error, "cannot seal a cookie; none set");
                return None;
            }
        };
        Some(SetCookies {
            cookie: sticky::set_cookie(sticky, &value, expires, now),
            cors: sticky::set_cors_cookie(sticky, &value, expires, now),
        })
    }

    /// The balancer's cookie (or else its CORS twin) taken out of `headers`, opened (the
    /// value `client` sent last is not opened again). Both are removed, so the backend sees
    /// neither.
    fn take_sticky(
        sealer: &sticky::Sealer,
        sticky: &StickySettings,
        headers: &mut HeaderMap,
        client: &Client,
    ) -> Option<Opened> {
        let cookie = sticky::take_cookie(headers, &sticky.cookie);
        let cors = sticky
            .cors_cookie
            .as_deref()
            .and_then(|twin| sticky::take_cookie(headers, twin));
        [cookie, cors]
            .into_iter()
            .flatten()
            .find_map(|value| sealer.open_cookie_again(&value, &client.last_cookie))
    }

    /// Another backend than `failed` for the one retry a request gets ([`Attempts`] keeps it to
    /// one). A session pinned to
    /// the failed backend is re-pinned at once (by rendezvous among the others; its response
    /// sets a new cookie), rather than sent back to it on every request.
    fn another(
        &self,
        site: &Site,
        set: &BackendSet,
        failed: &Arc<Upstream>,
        placement: &mut Placement,
    ) -> Option<Arc<Upstream>> {
        let next = match *placement {
            Placement::Pinned { session, .. } => {
                count(&self.counters.sticky_repinned);
                *placement = Placement::Repinned(session);
                set.rendezvous_except(&session, Some(failed))?
            }
            Placement::Repinned(session) => set.rendezvous_except(&session, Some(failed))?,
            Placement::Unpinned | Placement::New(_) => {
                set.next(site.settings.balance, Some(failed))?
            }
        };
        count(&self.counters.retries);
        Some(next)
    }

    /// A request failed on `upstream`: passive health counts it, and may eject the backend.
    fn backend_failed(&self, site: &Site, upstream: &Upstream) {
        let backend = &site.settings.backend;
        let policy = OutlierPolicy {
            failures: backend.outlier_failures,
            ejection: backend.outlier_ejection,
        };
        if let Some(length) = upstream.failed(policy) {
            count(&self.counters.outlier_ejections);
            warn!(listener = %self.name, backend = %upstream.address, failures = policy.failures,
                ejected_for = ?length, "passive health: ejected after failed requests in a row");
        }
    }

    fn log_connect_failure(&self, upstream: &Upstream, error: &ConnectError) {
        warn!(listener = %self.name, backend = %upstream.address, %error,
            "cannot reach the backend");
    }
}

/// A request's pool (the one its tries stay in) and first backend.
type Chosen = (Arc<BackendSet>, Arc<Upstream>);

/// A forward action's pools as the listener has them: name, set, weight and rendezvous id.
type PoolSets<'a> = Vec<(&'a str, &'a Arc<BackendSet>, u32, u64)>;

fn pool_sets<'a>(
    pools: &'a Pools,
    forward: &'a [crate::config::rules::WeightedPool],
) -> PoolSets<'a> {
    forward
        .iter()
        .filter_map(|p| {
            let set = pools.get(&p.pool)?;
            Some((
                p.pool.as_str(),
                set,
                p.weight,
                super::route::pool_id(&p.pool),
            ))
        })
        .collect()
}

/// A backend for a new request among a forward action's pools: a pool by weight (in turn, by
/// `pool_turn`), then a backend of it by `balance` (in the pool's own turn); a pool with none
/// to take the request gives its turn to the next.
fn pick_pool<'a>(
    sets: &PoolSets<'a>,
    balance: crate::config::l7::Balance,
    exclude: Option<&Arc<Upstream>>,
    pool_turn: &AtomicUsize,
) -> Option<(&'a str, Arc<BackendSet>, Arc<Upstream>)> {
    let start = pool_start(sets, pool_turn);
    (0..sets.len()).find_map(|k| {
        let (name, set, ..) = sets[(start + k) % sets.len()];
        Some((name, Arc::clone(set), set.next(balance, exclude)?))
    })
}

/// The position in `sets` of the pool whose turn it is (by weight), moving the turn on.
fn pool_start(sets: &PoolSets<'_>, pool_turn: &AtomicUsize) -> usize {
    if sets.len() < 2 {
        return 0;
    }
    let total: u64 = sets.iter().map(|&(.., weight, _)| u64::from(weight)).sum();
    let at = pool_turn.fetch_add(1, Ordering::Relaxed) as u64 % total.max(1);
    let mut sum = 0;
    sets.iter()
        .position(|&(.., weight, _)| {
            sum += u64::from(weight);
            at < sum
        })
        .unwrap_or(0)
}

/// Sends `request` on `sender`; the HTTP/1.1 connection comes back with the response, to be
/// pooled once its body has been read.
async fn send(
    sender: Sender,
    request: Request<UpBody>,
) -> Result<
    (
        Response<Incoming>,
        Option<hyper::client::conn::http1::SendRequest<UpBody>>,
    ),
    SendFailure,
> {
    let failure = |mut error: hyper::client::conn::TrySendError<Request<UpBody>>| match error
        .take_message()
    {
        Some(request) => SendFailure::NotSent(Box::new(request), error.into_error()),
        None => SendFailure::Sent(error.into_error()),
    };
    match sender {
        Sender::H1(mut send) => {
            let response = send.try_send_request(request).await.map_err(failure)?;
            Ok((response, Some(send)))
        }
        Sender::H2(mut send) => {
            let response = send.try_send_request(request).await.map_err(failure)?;
            Ok((response, None))
        }
    }
}

/// `send`'s outcome, if the response came within `response_timeout` of the request being
/// sent whole. While the client's upload is still going to the backend, only its clocks run
/// (a slow but steady upload is not cut at the response timeout), and a backend that takes
/// nothing of it for `server_timeout` ends the wait.
async fn response_within<F: Future>(
    send: F,
    upload: Option<&super::body::UploadOutcome>,
    backend: &crate::config::l7::BackendSide,
) -> Result<F::Output, ()> {
    let mut send = std::pin::pin!(send);
    if let Some(upload) = upload {
        let start = tokio::time::Instant::now();
        loop {
            let progress = upload.last_progress().unwrap_or(start).max(start);
            let stalled = progress + backend.server_timeout;
            tokio::select! {
                output = &mut send => return Ok(output),
                () = upload.sent() => break,
                () = tokio::time::sleep_until(stalled) => {
                    let moved = upload.last_progress().unwrap_or(start);
                    if moved + backend.server_timeout <= tokio::time::Instant::now() {
                        return Err(());
                    }
                }
            }
        }
    }
    tokio::time::timeout(backend.response_timeout, send)
        .await
        .map_err(|_| ())
}

fn failed_upload(upload: Option<&super::body::UploadOutcome>) -> Option<StatusCode> {
    upload.and_then(super::body::UploadOutcome::status)
}

/// The balancer's answer to a client whose request it will not finish (a body too large or
/// too slow): the connection closes after it, its request body unread.
fn client_error(status: StatusCode) -> Response<ProxyBody> {
    let mut response = error_response(status);
    response
        .headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    response
}

/// The hop-by-hop headers of a backend's response go (`TE` too: it is a request's); a switch
/// of protocols keeps its `Upgrade` and `Connection`.
fn strip_response(headers: &mut HeaderMap, upgrade: Option<&HeaderValue>) {
    let upgrade = upgrade.and(headers.get(header::UPGRADE).cloned());
    headers::strip_hop_by_hop(headers, upgrade.as_ref());
    headers.remove(header::TE);
}
