//! The settings of the L7 listeners (`mode = "offload"` or `"bridging"`): TLS towards the
//! clients, HTTP limits and timeouts, the backend side (and, bridging, TLS towards the
//! backends), balancing, cookie stickiness and the plain-HTTP redirect. Defaults follow what an
//! operator of an AWS application load balancer or HAProxy expects.
//!
//! Files (certificates, keys, CA bundles, the cookie and ticket key files) are named here and read when
//! the listener is started or reloaded (`crate::l7`), so that `lb cert reload` reads them
//! afresh; a file that cannot be used refuses the start or the reload with its path.

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    path::PathBuf,
    time::Duration,
};

use toml::Spanned;

use super::{
    Mode,
    pool::{duration, in_range},
    raw::{RawCertFiles, RawL7Backend, RawL7Http, RawListener, RawSticky, RawTls},
    validate::Checker,
};

/// The settings an L7 listener has beyond its address, port and pool.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct L7Settings {
    pub tls: TlsSettings,
    pub http: HttpLimits,
    pub backend: BackendSide,
    pub balance: Balance,
    pub sticky: Option<StickySettings>,
    /// A plain-HTTP port on the same address that redirects to HTTPS (308).
    pub redirect_http_port: Option<u16>,
    /// Also send an RFC 7239 `Forwarded` header (the `X-Forwarded-*` ones are always sent).
    pub forwarded_header: bool,
    /// Connections from these sources start with a PROXY protocol header (v1 or v2), which
    /// names the client; one from elsewhere that starts with a header is refused.
    pub proxy_protocol_from: Vec<Prefix>,
    /// Routing rules, in order: the first whose conditions hold takes a request; none, the
    /// listener's pool.
    pub rules: Vec<super::rules::Rule>,
}

/// An address prefix: `198.18.0.0/15`, `2001:db8::/32`, or one address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Prefix {
    pub address: IpAddr,
    pub len: u8,
}

impl Prefix {
    /// `ip` with the bits past the prefix's length cleared (`ip` of the prefix's family).
    fn masked(&self, ip: IpAddr) -> IpAddr {
        let keep = |bits: u32| u32::from(self.len).min(bits);
        match ip {
            IpAddr::V4(v4) => {
                let mask = u32::MAX.checked_shl(32 - keep(32)).unwrap_or(0);
                IpAddr::V4(Ipv4Addr::from(u32::from(v4) & mask))
            }
            IpAddr::V6(v6) => {
                let mask = u128::MAX.checked_shl(128 - keep(128)).unwrap_or(0);
                IpAddr::V6(Ipv6Addr::from(u128::from(v6) & mask))
            }
        }
    }

    /// The prefix's first address.
    pub fn network(&self) -> IpAddr {
        self.masked(self.address)
    }

    /// Whether `ip` is in the prefix (an IPv4 address mapped in IPv6 counts as IPv4).
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        ip.is_ipv4() == self.address.is_ipv4() && self.masked(ip) == self.network()
    }
}

impl std::fmt::Display for Prefix {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.address, self.len)
    }
}

impl std::str::FromStr for Prefix {
    type Err = String;

    /// `address/len` (host bits zero) or one address (a prefix of its full length).
    fn from_str(text: &str) -> Result<Self, String> {
        let (address, len) = match text.split_once('/') {
            Some((address, len)) => (address, Some(len)),
            None => (text, None),
        };
        let Ok(address) = address.parse::<IpAddr>() else {
            return Err(format!(
                "{text:?} is not an address or a prefix like \"10.0.0.0/8\""
            ));
        };
        let max = if address.is_ipv4() { 32 } else { 128 };
        let len = match len.map(str::parse::<u8>) {
            None => max,
            Some(Ok(len)) if len <= max => len,
            Some(_) => return Err(format!("{text:?}: the length is not 0 to {max}")),
        };
        let prefix = Self { address, len };
        if prefix.network() != address {
            return Err(format!(
                "{text:?} has host bits set; write the network address"
            ));
        }
        Ok(prefix)
    }
}

impl serde::Serialize for Prefix {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Prefix {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// `[access_log]`: a line per L7 request, and per TLS connection that got to none.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AccessLogSettings {
    pub target: AccessLogTarget,
    pub format: AccessLogFormat,
    /// The lines without an error that are kept, in millionths (1 000 000: every line).
    pub sample_per_million: u32,
}

impl AccessLogSettings {
    /// The sample as a fraction.
    pub fn sample(&self) -> f64 {
        f64::from(self.sample_per_million) / 1_000_000.0
    }
}

/// Where the access log goes: `path = "-"` is the daemon's standard output.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AccessLogTarget {
    Stdout,
    File(PathBuf),
}

impl std::fmt::Display for AccessLogTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Stdout => f.write_str("stdout"),
            Self::File(path) => write!(f, "{}", path.display()),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AccessLogFormat {
    /// One JSON object per line (the default).
    Json,
    /// Space-separated fields (see `l7::access_log`).
    Text,
}

/// `[listeners.NAME.tls]`: the certificates presented to clients.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsSettings {
    /// Chosen by SNI among their names; the first is the default.
    pub certificates: Vec<CertFiles>,
    /// Refuse a handshake without SNI or with a name no certificate has, instead of presenting
    /// the default certificate.
    pub strict_sni: bool,
    /// The oldest TLS version accepted: 1.2 (the default) or 1.3.
    pub min_version: TlsVersion,
    /// The session-ticket keys (one per line, hex; the first seals, all open), shared by the
    /// balancers that resume each other's sessions; none: keys of the process's own.
    pub ticket_key_file: Option<PathBuf>,
}

/// A certificate chain and its private key, as PEM files.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CertFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TlsVersion {
    Tls12,
    Tls13,
}

/// `[listeners.NAME.http]`: what a client may send, and how long it may take.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HttpLimits {
    /// Request line and headers together; over it the answer is 431.
    pub max_header_bytes: usize,
    /// From a connection's first byte (or a kept-alive connection's next one) to a complete
    /// request head, and for the TLS handshake: a slower client is closed.
    pub header_read_timeout: Duration,
    /// A connection with no request in flight is closed after this long.
    pub idle_timeout: Duration,
    /// While a request is in flight: the client sent nothing of a body it is uploading, or
    /// took nothing of a response being written to it, for this long: both sides are closed
    /// (HAProxy's `timeout client`).
    pub client_timeout: Duration,
    /// Bytes a second an upload must average once it has run [`UPLOAD_GRACE`]; 0: no floor.
    pub min_upload_rate: u64,
    /// A request body over this many bytes is refused with 413; none: no limit.
    pub max_body_bytes: Option<u64>,
    /// Connections open at once; past it, new ones wait in the kernel's backlog.
    pub max_connections: u32,
    pub h2_max_concurrent_streams: u32,
    /// HTTP/2 streams a client may cancel per second (a reset flood closes the connection).
    pub h2_max_resets_per_second: u32,
}

/// `[listeners.NAME.backend]`: how the listener reaches its pool's backends.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BackendSide {
    /// The port of backends that name none; 80 for offload, 443 for bridging by default.
    pub port: u16,
    pub protocol: BackendProtocol,
    pub connect_timeout: Duration,
    /// From the request sent to the response head: past it, 504.
    pub response_timeout: Duration,
    /// A backend that sent nothing of a response body for this long: both sides are closed
    /// (HAProxy's `timeout server`, past the head).
    pub server_timeout: Duration,
    /// Passive health: requests failed in a row that eject a backend (0: never), and the
    /// first ejection's length (Envoy's `consecutive_gateway_failure`, `base_ejection_time`).
    pub outlier_failures: u32,
    pub outlier_ejection: Duration,
    /// `protocol = "http2"`: a PING every interval; no answer within the timeout closes the
    /// connection (its requests fail, and count for passive health).
    pub h2_ping_interval: Duration,
    pub h2_ping_timeout: Duration,
    /// Bridging: TLS towards the backends.
    pub tls: Option<BackendTls>,
    /// Each connection to a backend starts with a PROXY protocol v2 header naming the client
    /// (a connection then carries only that client's requests).
    pub send_proxy_protocol: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BackendProtocol {
    /// HTTP/1.1 over a pool of kept-alive connections.
    Http1,
    /// HTTP/2: one multiplexed connection per backend.
    Http2,
}

/// Bridging: how the balancer verifies (and authenticates to) its backends.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BackendTls {
    pub verify: BackendVerify,
    /// The name checked in each backend's certificate (and sent as SNI), unless the backend
    /// names its own (`server_name` in the pool); the backend's address otherwise.
    pub server_name: Option<String>,
    /// A client certificate presented to the backends.
    pub client_cert: Option<CertFiles>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BackendVerify {
    /// Against this CA bundle (PEM).
    Ca(PathBuf),
    /// Not at all (`dangerously_skip_verification = true`); a warning at every start.
    Skip,
}

/// How requests without stickiness are spread over the healthy backends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Balance {
    /// To the backend with the fewest requests in flight for its weight (ties go round).
    LeastOutstanding,
    /// In turn, by weight.
    RoundRobin,
}

/// `[listeners.NAME.sticky]`: cookie stickiness.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StickySettings {
    pub cookie: String,
    pub duration: Duration,
    /// The AEAD keys (one per line, hex); the first seals, all open.
    pub key_file: PathBuf,
    pub path: String,
    pub http_only: bool,
    pub secure: bool,
    pub same_site: Option<SameSite>,
    /// Re-issue a live session's cookie, with a fresh expiry, once half of its duration has
    /// passed (as an ALB re-issues its cookie), so an active user keeps its backend.
    pub sliding: bool,
    /// The name of the CORS twin (`{cookie}CORS`, `SameSite=None; Secure`, as an ALB's
    /// `AWSALBCORS`) set beside the cookie, if on.
    pub cors_cookie: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SameSite {
    Strict,
    Lax,
    None,
}

impl SameSite {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Strict => "Strict",
            Self::Lax => "Lax",
            Self::None => "None",
        }
    }
}

pub mod l7_defaults {
    use std::time::Duration;

    /// ALB allows 64 KiB of request headers; HAProxy 16 KiB by default.
    pub const MAX_HEADER_BYTES: usize = 64 * 1024;
    pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
    /// ALB's idle timeout.
    pub const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
    /// As ALB's idle timeout and our response timeout; HAProxy has none by default (and warns).
    pub const CLIENT_TIMEOUT: Duration = Duration::from_secs(60);
    pub const SERVER_TIMEOUT: Duration = Duration::from_secs(60);
    /// Envoy's outlier detection defaults.
    pub const OUTLIER_FAILURES: u32 = 5;
    pub const OUTLIER_EJECTION: Duration = Duration::from_secs(30);
    /// A black-holed HTTP/2 backend is found within 15 s (gRPC's keepalive defaults are
    /// similar: a ping after idle, 20 s to answer).
    pub const H2_PING_INTERVAL: Duration = Duration::from_secs(10);
    pub const H2_PING_TIMEOUT: Duration = Duration::from_secs(5);
    /// Kestrel's minimum request body data rate.
    pub const MIN_UPLOAD_RATE: u64 = 240;
    pub const MAX_CONNECTIONS: u32 = 10_000;
    /// ALB's and most browsers' expectation.
    pub const H2_MAX_CONCURRENT_STREAMS: u32 = 128;
    pub const H2_MAX_RESETS_PER_SECOND: u32 = 100;
    pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
    pub const RESPONSE_TIMEOUT: Duration = Duration::from_secs(60);
    pub const OFFLOAD_PORT: u16 = 80;
    pub const BRIDGING_PORT: u16 = 443;
    pub const STICKY_COOKIE: &str = "lb_sticky";
    pub const STICKY_DURATION: Duration = Duration::from_secs(24 * 3600);
}
use l7_defaults as d;

const HEADER_BYTES_RANGE: (i64, i64) = (8 * 1024, 1024 * 1024);
const UPLOAD_RATE_RANGE: (i64, i64) = (0, 1 << 30);
const OUTLIER_FAILURES_RANGE: (i64, i64) = (0, 1000);
const EJECTION_RANGE: (Duration, Duration) = (Duration::from_secs(1), Duration::from_secs(3600));
const BODY_BYTES_RANGE: (i64, i64) = (1, 1 << 50);
/// How long an upload runs before [`HttpLimits::min_upload_rate`] applies (Kestrel's grace).
pub const UPLOAD_GRACE: Duration = Duration::from_secs(5);
const MAX_CONNECTIONS_RANGE: (i64, i64) = (1, 10_000_000);
const STREAMS_RANGE: (i64, i64) = (1, 10_000);
const RESETS_RANGE: (i64, i64) = (1, 100_000);
const SHORT_TIMEOUT_RANGE: (Duration, Duration) =
    (Duration::from_millis(100), Duration::from_secs(300));
const LONG_TIMEOUT_RANGE: (Duration, Duration) =
    (Duration::from_millis(100), Duration::from_secs(4000));
/// As an ALB's duration-based stickiness: 1 second to 7 days.
pub const STICKY_DURATION_RANGE: (Duration, Duration) =
    (Duration::from_secs(1), Duration::from_secs(7 * 24 * 3600));

/// The L7 settings of `raw` for `mode`; for passthrough, a problem for each L7 setting given.
pub(super) fn check(
    c: &mut Checker<'_>,
    raw: &RawListener,
    mode: Mode,
    port: Option<u16>,
    field: &str,
) -> Option<Option<L7Settings>> {
    if mode == Mode::Passthrough {
        refuse_for_passthrough(c, raw, field);
        return Some(None);
    }
    if let Some(p) = raw.protocol.as_ref().filter(|p| p.get_ref() != "tcp") {
        c.problem(
            p,
            &format!("{field}.protocol"),
            "offload and bridging listeners serve TLS over TCP",
        );
    }
    let tls = match &raw.tls {
        Some(tls) => check_tls(c, tls, &format!("{field}.tls")),
        None => {
            c.problem(
                &raw.mode,
                &format!("{field}.tls"),
                "offload and bridging listeners need [tls] with at least one certificate",
            );
            None
        }
    };
    let http = check_http(c, raw.http.as_ref(), &format!("{field}.http"));
    let backend = check_backend(c, raw, mode, &format!("{field}.backend"));
    let balance = match raw.balance.as_ref().map(|b| (b, b.get_ref().as_str())) {
        None | Some((_, "least_outstanding")) => Some(Balance::LeastOutstanding),
        Some((_, "round_robin")) => Some(Balance::RoundRobin),
        Some((b, other)) => {
            c.problem(
                b,
                &format!("{field}.balance"),
                format!("{other:?} is not \"least_outstanding\" or \"round_robin\""),
            );
            None
        }
    };
    let sticky = raw
        .sticky
        .as_ref()
        .map(|sticky| check_sticky(c, sticky, &format!("{field}.sticky")));
    refuse_shared_key_file(c, raw, field);
    let redirect_http_port = raw.redirect_http_port.as_ref().map(|p| {
        let redirect: Option<u16> = c.int(p, &format!("{field}.redirect_http_port"), (1, 65_535));
        if let Some(redirect) = redirect.filter(|r| Some(*r) == port) {
            c.problem(
                p,
                &format!("{field}.redirect_http_port"),
                format!("{redirect} is the listener's own port"),
            );
            return None;
        }
        redirect
    });
    let proxy_protocol_from = raw
        .proxy_protocol_from
        .as_ref()
        .map_or(Some(Vec::new()), |list| {
            let field = format!("{field}.proxy_protocol_from");
            let prefixes: Vec<Option<Prefix>> = list
                .get_ref()
                .iter()
                .map(|p| prefix(c, p, &field))
                .collect();
            if list.get_ref().is_empty() {
                c.problem(
                    list,
                    &field,
                    "empty: name the balancers in front (\"10.0.0.0/8\"), or leave it out",
                );
                return None;
            }
            prefixes.into_iter().collect()
        });
    let rules = raw.rules.as_ref().map_or(Some(Vec::new()), |rules| {
        super::rules::check(c, rules, &format!("{field}.rules"))
    });
    Some(Some(L7Settings {
        rules: rules?,
        tls: tls?,
        http: http?,
        backend: backend?,
        balance: balance?,
        sticky: sticky.map_or(Some(None), |s| s.map(Some))?,
        redirect_http_port: redirect_http_port.map_or(Some(None), |p| p.map(Some))?,
        forwarded_header: raw.forwarded_header.as_ref().is_some_and(|f| *f.get_ref()),
        proxy_protocol_from: proxy_protocol_from?,
    }))
}

/// The session-ticket keys and the cookie keys in one file: refused (they rotate on their own
/// schedules, and a key leaked from one would open the other's secrets).
fn refuse_shared_key_file(c: &mut Checker<'_>, raw: &RawListener, field: &str) {
    let tickets = raw
        .tls
        .as_ref()
        .and_then(|tls| tls.get_ref().ticket_key_file.as_ref());
    let cookies = raw
        .sticky
        .as_ref()
        .and_then(|sticky| sticky.get_ref().key_file.as_ref());
    if let (Some(tickets), Some(cookies)) = (tickets, cookies)
        && tickets.get_ref() == cookies.get_ref()
    {
        c.problem(
            tickets,
            &format!("{field}.tls.ticket_key_file"),
            "is also the sticky key_file: give the session-ticket keys a file of their own (the \
             two rotate on their own schedules)",
        );
    }
}

/// `address/len` (host bits zero) or one address.
fn prefix(c: &mut Checker<'_>, raw: &Spanned<String>, field: &str) -> Option<Prefix> {
    match raw.get_ref().parse() {
        Ok(prefix) => Some(prefix),
        Err(problem) => {
            c.problem(raw, field, problem);
            None
        }
    }
}

fn refuse_for_passthrough(c: &mut Checker<'_>, raw: &RawListener, field: &str) {
    let why = "only offload and bridging listeners have it: passthrough never sees HTTP";
    let mut refuse = |present: Option<std::ops::Range<usize>>, name: &str| {
        if let Some(span) = present {
            c.problem(&Spanned::new(span, ()), &format!("{field}.{name}"), why);
        }
    };
    refuse(raw.tls.as_ref().map(Spanned::span), "tls");
    refuse(raw.http.as_ref().map(Spanned::span), "http");
    refuse(raw.backend.as_ref().map(Spanned::span), "backend");
    refuse(raw.sticky.as_ref().map(Spanned::span), "sticky");
    refuse(raw.balance.as_ref().map(Spanned::span), "balance");
    refuse(
        raw.redirect_http_port.as_ref().map(Spanned::span),
        "redirect_http_port",
    );
    refuse(
        raw.forwarded_header.as_ref().map(Spanned::span),
        "forwarded_header",
    );
    refuse(
        raw.proxy_protocol_from.as_ref().map(Spanned::span),
        "proxy_protocol_from",
    );
    refuse(raw.rules.as_ref().map(Spanned::span), "rules");
}

fn check_tls(c: &mut Checker<'_>, raw: &Spanned<RawTls>, field: &str) -> Option<TlsSettings> {
    let tls = raw.get_ref();
    if tls.certificates.is_empty() {
        c.problem(
            raw,
            &format!("{field}.certificates"),
            "at least one certificate: [{ cert = \"server.pem\", key = \"server.key\" }]",
        );
        return None;
    }
    let certificates = tls
        .certificates
        .iter()
        .map(|files| cert_files(files.get_ref()))
        .collect();
    let min_version = match tls.min_version.as_ref().map(|v| (v, v.get_ref().as_str())) {
        None | Some((_, "1.2")) => Some(TlsVersion::Tls12),
        Some((_, "1.3")) => Some(TlsVersion::Tls13),
        Some((v, other)) => {
            c.problem(
                v,
                &format!("{field}.min_version"),
                format!("{other:?} is not \"1.2\" or \"1.3\" (older versions are not offered)"),
            );
            None
        }
    };
    let ticket_key_file = match &tls.ticket_key_file {
        Some(file) if file.get_ref().is_empty() => {
            c.problem(
                file,
                &format!("{field}.ticket_key_file"),
                "names no file: name the session-ticket key file (`lb ticket-key` prints a \
                 line of it), or leave the setting out for keys of the process's own",
            );
            None
        }
        Some(file) => Some(Some(PathBuf::from(file.get_ref()))),
        None => Some(None),
    };
    Some(TlsSettings {
        certificates,
        strict_sni: tls.strict_sni.as_ref().is_some_and(|s| *s.get_ref()),
        min_version: min_version?,
        ticket_key_file: ticket_key_file?,
    })
}

fn cert_files(raw: &RawCertFiles) -> CertFiles {
    CertFiles {
        cert: PathBuf::from(raw.cert.get_ref()),
        key: PathBuf::from(raw.key.get_ref()),
    }
}

fn check_http(
    c: &mut Checker<'_>,
    raw: Option<&Spanned<RawL7Http>>,
    field: &str,
) -> Option<HttpLimits> {
    let Some(raw) = raw.map(Spanned::get_ref) else {
        return Some(HttpLimits {
            max_header_bytes: d::MAX_HEADER_BYTES,
            header_read_timeout: d::HEADER_READ_TIMEOUT,
            idle_timeout: d::IDLE_TIMEOUT,
            client_timeout: d::CLIENT_TIMEOUT,
            min_upload_rate: d::MIN_UPLOAD_RATE,
            max_body_bytes: None,
            max_connections: d::MAX_CONNECTIONS,
            h2_max_concurrent_streams: d::H2_MAX_CONCURRENT_STREAMS,
            h2_max_resets_per_second: d::H2_MAX_RESETS_PER_SECOND,
        });
    };
    let int = |c: &mut Checker<'_>, v: &Option<Spanned<i64>>, name: &str, range, default| match v {
        Some(v) => c.int(v, &format!("{field}.{name}"), range),
        None => Some(default),
    };
    let max_header_bytes = int(
        c,
        &raw.max_header_bytes,
        "max_header_bytes",
        HEADER_BYTES_RANGE,
        d::MAX_HEADER_BYTES as u64,
    );
    let max_connections = int(
        c,
        &raw.max_connections,
        "max_connections",
        MAX_CONNECTIONS_RANGE,
        u64::from(d::MAX_CONNECTIONS),
    );
    let streams = int(
        c,
        &raw.h2_max_concurrent_streams,
        "h2_max_concurrent_streams",
        STREAMS_RANGE,
        u64::from(d::H2_MAX_CONCURRENT_STREAMS),
    );
    let resets = int(
        c,
        &raw.h2_max_resets_per_second,
        "h2_max_resets_per_second",
        RESETS_RANGE,
        u64::from(d::H2_MAX_RESETS_PER_SECOND),
    );
    let header_read_timeout = timeout(
        c,
        raw.header_read_timeout.as_ref(),
        &format!("{field}.header_read_timeout"),
        SHORT_TIMEOUT_RANGE,
        d::HEADER_READ_TIMEOUT,
    );
    let idle_timeout = timeout(
        c,
        raw.idle_timeout.as_ref(),
        &format!("{field}.idle_timeout"),
        LONG_TIMEOUT_RANGE,
        d::IDLE_TIMEOUT,
    );
    let client_timeout = timeout(
        c,
        raw.client_timeout.as_ref(),
        &format!("{field}.client_timeout"),
        LONG_TIMEOUT_RANGE,
        d::CLIENT_TIMEOUT,
    );
    let min_upload_rate = int(
        c,
        &raw.min_upload_rate,
        "min_upload_rate",
        UPLOAD_RATE_RANGE,
        d::MIN_UPLOAD_RATE,
    );
    let max_body_bytes = match &raw.max_body_bytes {
        Some(v) => c
            .int(v, &format!("{field}.max_body_bytes"), BODY_BYTES_RANGE)
            .map(Some),
        None => Some(None),
    };
    // The ranges above fit these types.
    Some(HttpLimits {
        max_header_bytes: usize::try_from(max_header_bytes?).ok()?,
        header_read_timeout: header_read_timeout?,
        idle_timeout: idle_timeout?,
        client_timeout: client_timeout?,
        min_upload_rate: min_upload_rate?,
        max_body_bytes: max_body_bytes?,
        max_connections: u32::try_from(max_connections?).ok()?,
        h2_max_concurrent_streams: u32::try_from(streams?).ok()?,
        h2_max_resets_per_second: u32::try_from(resets?).ok()?,
    })
}

fn timeout(
    c: &mut Checker<'_>,
    raw: Option<&Spanned<String>>,
    field: &str,
    range: (Duration, Duration),
    default: Duration,
) -> Option<Duration> {
    match raw {
        Some(raw) => {
            let value = duration(c, raw, field)?;
            in_range(c, raw, field, value, range)
        }
        None => Some(default),
    }
}

fn check_backend(
    c: &mut Checker<'_>,
    listener: &RawListener,
    mode: Mode,
    field: &str,
) -> Option<BackendSide> {
    let default_port = if mode == Mode::Bridging {
        d::BRIDGING_PORT
    } else {
        d::OFFLOAD_PORT
    };
    let empty = RawL7Backend::default();
    let raw = listener.backend.as_ref().map_or(&empty, Spanned::get_ref);
    let port = match &raw.port {
        Some(p) => c.int(p, &format!("{field}.port"), (1, 65_535)),
        None => Some(default_port),
    };
    let protocol = match raw.protocol.as_ref().map(|p| (p, p.get_ref().as_str())) {
        None | Some((_, "http1")) => Some(BackendProtocol::Http1),
        Some((_, "http2")) => Some(BackendProtocol::Http2),
        Some((p, other)) => {
            c.problem(
                p,
                &format!("{field}.protocol"),
                format!("{other:?} is not \"http1\" or \"http2\""),
            );
            None
        }
    };
    let connect_timeout = timeout(
        c,
        raw.connect_timeout.as_ref(),
        &format!("{field}.connect_timeout"),
        SHORT_TIMEOUT_RANGE,
        d::CONNECT_TIMEOUT,
    );
    let response_timeout = timeout(
        c,
        raw.response_timeout.as_ref(),
        &format!("{field}.response_timeout"),
        LONG_TIMEOUT_RANGE,
        d::RESPONSE_TIMEOUT,
    );
    let server_timeout = timeout(
        c,
        raw.server_timeout.as_ref(),
        &format!("{field}.server_timeout"),
        LONG_TIMEOUT_RANGE,
        d::SERVER_TIMEOUT,
    );
    let outlier_failures = match &raw.outlier_failures {
        Some(v) => c.int(
            v,
            &format!("{field}.outlier_failures"),
            OUTLIER_FAILURES_RANGE,
        ),
        None => Some(d::OUTLIER_FAILURES),
    };
    let outlier_ejection = timeout(
        c,
        raw.outlier_ejection.as_ref(),
        &format!("{field}.outlier_ejection"),
        EJECTION_RANGE,
        d::OUTLIER_EJECTION,
    );
    let h2_ping_interval = timeout(
        c,
        raw.h2_ping_interval.as_ref(),
        &format!("{field}.h2_ping_interval"),
        SHORT_TIMEOUT_RANGE,
        d::H2_PING_INTERVAL,
    );
    let h2_ping_timeout = timeout(
        c,
        raw.h2_ping_timeout.as_ref(),
        &format!("{field}.h2_ping_timeout"),
        SHORT_TIMEOUT_RANGE,
        d::H2_PING_TIMEOUT,
    );
    let send_proxy_protocol = match raw
        .proxy_protocol
        .as_ref()
        .map(|p| (p, p.get_ref().as_str()))
    {
        None | Some((_, "none")) => Some(false),
        Some((p, "v2")) if protocol == Some(BackendProtocol::Http2) => {
            c.problem(
                p,
                &format!("{field}.proxy_protocol"),
                "with protocol = \"http2\": one multiplexed connection carries many clients' \
                 requests, and a PROXY header names one; use protocol = \"http1\"",
            );
            None
        }
        Some((_, "v2")) => Some(true),
        Some((p, other)) => {
            c.problem(
                p,
                &format!("{field}.proxy_protocol"),
                format!("{other:?} is not \"v2\" or \"none\""),
            );
            None
        }
    };
    let tls = if mode == Mode::Bridging {
        Some(backend_tls(c, listener, raw, field)?)
    } else {
        refuse_for_offload(c, raw, field);
        None
    };
    Some(BackendSide {
        send_proxy_protocol: send_proxy_protocol?,
        port: port?,
        protocol: protocol?,
        connect_timeout: connect_timeout?,
        response_timeout: response_timeout?,
        server_timeout: server_timeout?,
        outlier_failures: outlier_failures?,
        outlier_ejection: outlier_ejection?,
        h2_ping_interval: h2_ping_interval?,
        h2_ping_timeout: h2_ping_timeout?,
        tls,
    })
}

fn backend_tls(
    c: &mut Checker<'_>,
    listener: &RawListener,
    raw: &RawL7Backend,
    field: &str,
) -> Option<BackendTls> {
    let skip = raw
        .dangerously_skip_verification
        .as_ref()
        .is_some_and(|s| *s.get_ref());
    let verify = match (&raw.ca_file, skip) {
        (Some(ca), false) => Some(BackendVerify::Ca(PathBuf::from(ca.get_ref()))),
        (None, true) => Some(BackendVerify::Skip),
        (Some(ca), true) => {
            c.problem(
                ca,
                &format!("{field}.ca_file"),
                "set together with dangerously_skip_verification; choose one",
            );
            None
        }
        (None, false) => {
            let at = listener
                .backend
                .as_ref()
                .map_or(listener.mode.span(), Spanned::span);
            c.problem(
                &Spanned::new(at, ()),
                &format!("{field}.ca_file"),
                "bridging verifies the backends' certificates: name the CA bundle (PEM) that \
                 signed them",
            );
            None
        }
    };
    let client_cert = match (&raw.client_cert, &raw.client_key) {
        (Some(cert), Some(key)) => Some(CertFiles {
            cert: PathBuf::from(cert.get_ref()),
            key: PathBuf::from(key.get_ref()),
        }),
        (None, None) => None,
        (Some(at), None) | (None, Some(at)) => {
            c.problem(
                at,
                &format!("{field}.client_cert"),
                "client_cert and client_key go together",
            );
            return None;
        }
    };
    let server_name = match &raw.server_name {
        Some(name) => Some(server_name(c, name, &format!("{field}.server_name"))?),
        None => None,
    };
    Some(BackendTls {
        verify: verify?,
        server_name,
        client_cert,
    })
}

/// A DNS name (or an IP address) a backend certificate must hold.
pub(super) fn server_name(
    c: &mut Checker<'_>,
    raw: &Spanned<String>,
    field: &str,
) -> Option<String> {
    match rustls_pki_types::ServerName::try_from(raw.get_ref().as_str()) {
        Ok(_) => Some(raw.get_ref().clone()),
        Err(_) => {
            c.problem(
                raw,
                field,
                format!("{:?} is not a DNS name or an IP address", raw.get_ref()),
            );
            None
        }
    }
}

fn refuse_for_offload(c: &mut Checker<'_>, raw: &RawL7Backend, field: &str) {
    let why = "only bridging listeners speak TLS to their backends";
    let spans = [
        (raw.ca_file.as_ref().map(Spanned::span), "ca_file"),
        (raw.server_name.as_ref().map(Spanned::span), "server_name"),
        (raw.client_cert.as_ref().map(Spanned::span), "client_cert"),
        (raw.client_key.as_ref().map(Spanned::span), "client_key"),
        (
            raw.dangerously_skip_verification
                .as_ref()
                .map(Spanned::span),
            "dangerously_skip_verification",
        ),
    ];
    for (span, name) in spans {
        if let Some(span) = span {
            c.problem(&Spanned::new(span, ()), &format!("{field}.{name}"), why);
        }
    }
}

fn check_sticky(
    c: &mut Checker<'_>,
    raw: &Spanned<RawSticky>,
    field: &str,
) -> Option<StickySettings> {
    let s = raw.get_ref();
    let cookie = s
        .cookie
        .as_ref()
        .map_or_else(|| d::STICKY_COOKIE.to_owned(), |n| n.get_ref().clone());
    let token = |ch: char| ch.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~".contains(ch);
    let mut valid = true;
    if cookie.is_empty() || cookie.len() > 64 || !cookie.chars().all(token) {
        let at = s.cookie.as_ref().map_or(raw.span(), Spanned::span);
        c.problem(
            &Spanned::new(at, ()),
            &format!("{field}.cookie"),
            format!("{cookie:?} is not a cookie name (1 to 64 letters, digits or !#$%&'*+-.^_`|~)"),
        );
        valid = false;
    }
    let duration = timeout(
        c,
        s.duration.as_ref(),
        &format!("{field}.duration"),
        STICKY_DURATION_RANGE,
        d::STICKY_DURATION,
    );
    if s.key_file.is_none() {
        c.problem(
            raw,
            &format!("{field}.key_file"),
            "stickiness seals its cookies with the keys of a key file (`lb sticky-key` writes one)",
        );
    }
    let path = s.path.as_ref().map_or("/", |p| p.get_ref().as_str());
    if !path.starts_with('/') || !path.chars().all(|ch| ch.is_ascii_graphic() && ch != ';') {
        let at = s.path.as_ref().map_or(raw.span(), Spanned::span);
        c.problem(
            &Spanned::new(at, ()),
            &format!("{field}.path"),
            format!("{path:?} is not a cookie path (starts with '/', no spaces or ';')"),
        );
        valid = false;
    }
    let secure = s.secure.as_ref().is_none_or(|v| *v.get_ref());
    let same_site = match s.same_site.as_ref().map(|v| (v, v.get_ref().as_str())) {
        None => Some(Some(SameSite::Lax)),
        Some((_, "strict")) => Some(Some(SameSite::Strict)),
        Some((_, "lax")) => Some(Some(SameSite::Lax)),
        Some((v, "none")) => {
            if !secure {
                c.problem(
                    v,
                    &format!("{field}.same_site"),
                    "\"none\" needs secure = true (browsers drop such cookies otherwise)",
                );
            }
            Some(Some(SameSite::None))
        }
        Some((_, "unset")) => Some(None),
        Some((v, other)) => {
            c.problem(
                v,
                &format!("{field}.same_site"),
                format!("{other:?} is not \"strict\", \"lax\", \"none\" or \"unset\""),
            );
            None
        }
    };
    let cors_cookie = s.cors_cookie.as_ref().filter(|v| *v.get_ref());
    if let (Some(v), false) = (cors_cookie, secure) {
        c.problem(
            v,
            &format!("{field}.cors_cookie"),
            "the CORS cookie is SameSite=None, which needs secure = true (browsers drop it \
             otherwise)",
        );
        valid = false;
    }
    let duration = duration?;
    let same_site = same_site?;
    let key_file = s.key_file.as_ref()?;
    valid.then(|| StickySettings {
        duration,
        key_file: PathBuf::from(key_file.get_ref()),
        path: path.to_owned(),
        http_only: s.http_only.as_ref().is_none_or(|v| *v.get_ref()),
        secure,
        same_site,
        sliding: s.sliding.as_ref().is_none_or(|v| *v.get_ref()),
        cors_cookie: cors_cookie.map(|_| format!("{cookie}CORS")),
        cookie,
    })
}

#[cfg(test)]
mod prefix_tests {
    use super::*;

    fn prefix(address: &str, len: u8) -> Prefix {
        Prefix {
            address: address.parse().unwrap(),
            len,
        }
    }

    #[test]
    fn a_prefix_holds_its_addresses_and_mapped_ipv4_ones() {
        let ten = prefix("10.0.0.0", 8);
        assert!(ten.contains("10.255.1.2".parse().unwrap()));
        assert!(ten.contains("::ffff:10.1.2.3".parse().unwrap()));
        assert!(!ten.contains("11.0.0.0".parse().unwrap()));
        assert!(!ten.contains("2001:db8::1".parse().unwrap()));
        let one = prefix("198.18.0.5", 32);
        assert!(one.contains("198.18.0.5".parse().unwrap()));
        assert!(!one.contains("198.18.0.4".parse().unwrap()));
        let all = prefix("0.0.0.0", 0);
        assert!(all.contains("203.0.113.9".parse().unwrap()));
        let v6 = prefix("2001:db8::", 32);
        assert!(v6.contains("2001:db8:ffff::1".parse().unwrap()));
        assert!(!v6.contains("2001:db9::".parse().unwrap()));
        assert_eq!(
            prefix("10.1.2.3", 8).network(),
            "10.0.0.0".parse::<IpAddr>().unwrap()
        );
        assert_eq!(prefix("::1", 0).network(), "::".parse::<IpAddr>().unwrap());
    }
}
