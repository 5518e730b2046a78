//! What the proxy changes in a request on its way to a backend, and in the response on its
//! way back (RFC 9110 section 7.6, RFC 7239):
//!
//! - hop-by-hop headers (`Connection` and those it names, `Keep-Alive`, `Proxy-Connection`,
//!   `TE`, `Transfer-Encoding`, `Upgrade`) are removed both ways, except the `Upgrade`
//!   handshake of a request being tunnelled and `TE: trailers` (RFC 9110 section 10.1.4: the
//!   client takes trailers, which gRPC needs; the one `TE` HTTP/2 allows). `Trailer` is not
//!   hop-by-hop (RFC 9110 section 6.6.2): it goes on, and an HTTP/1.1 hop needs it to send
//!   the trailers it announces;
//! - a request target over [`MAX_TARGET_BYTES`] is refused (414), and header fields over
//!   `max_header_bytes` (431) ([`check_head_size`]);
//! - an HTTP/2 WebSocket handshake (extended CONNECT) becomes an HTTP/1.1 `Upgrade` for the
//!   backend, and its 101 a 200 for the client ([`websocket_to_http1`]);
//! - a request body of unknown length goes to an HTTP/1.1 backend chunked, whatever the
//!   method ([`frame_body_for_http1`]);
//! - `X-Forwarded-For` gets the client's address appended; `X-Forwarded-Proto` and
//!   `X-Forwarded-Port` are set by the balancer, whatever the client sent; `Forwarded` gets an
//!   element appended if the listener asks for it;
//! - `Host` is kept (an HTTP/2 client's `:authority` becomes `Host` for an HTTP/1.1 backend);
//! - an HTTP/2 client's `Cookie` fields become one `Cookie` for an HTTP/1.1 backend.

use std::net::{IpAddr, SocketAddr};

use hyper::{
    HeaderMap, StatusCode, Uri, Version,
    header::{self, HeaderName, HeaderValue},
    http::uri::{Authority, PathAndQuery, Scheme},
};

static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static X_FORWARDED_PORT: HeaderName = HeaderName::from_static("x-forwarded-port");
static KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
static PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");

/// The longest request target (path and query) forwarded: 8 KiB, as nginx's request-line
/// buffer (`large_client_header_buffers`); a longer one is 414. It is not counted in
/// `max_header_bytes`, which limits the header fields alone.
pub const MAX_TARGET_BYTES: usize = 8 * 1024;

/// What the HTTP layer reads of a request head before the proxy judges it: an HTTP/1.1 head
/// (request line and fields) up to this many bytes, so that a head over `max_header_bytes`
/// with a target up to [`MAX_TARGET_BYTES`] reaches [`check_head_size`] and gets its 414 or
/// 431 counted (hyper answers a longer one 431 itself, counted as the connection ends).
pub fn http1_head_limit(max_header_bytes: usize) -> usize {
    max_header_bytes.saturating_add(MAX_TARGET_BYTES)
}

/// The smallest HTTP/2 header list holding a `:path` the `http` crate cannot represent (over
/// 65 534 bytes): one that large fails to decode, and the stream is reset (PROTOCOL_ERROR)
/// instead of answered, unless the list is over the HTTP/2 layer's limit first (then 431).
const UNREPRESENTABLE_PATH_LIST: usize = 65_534 + ":path".len() + 32;

/// The HTTP/2 header list size (RFC 9113 section 6.5.2: names, values and 32 bytes a field,
/// pseudo-fields included) the HTTP layer decodes before the proxy judges the request: twice
/// `max_header_bytes` and a target, so that a block somewhat over the limit gets a 431 the
/// proxy counts, but under a list that could hold an unrepresentable `:path` (unless
/// `max_header_bytes` itself is larger). hyper's HTTP/2 server answers a larger list 431
/// itself (uncounted), and closes the connection (GOAWAY `ENHANCE_YOUR_CALM`) past four times
/// this: it decodes but no longer keeps the fields of an oversized block, so memory stays
/// bounded by this size per stream.
pub fn http2_header_list_limit(max_header_bytes: usize) -> u32 {
    let limit = max_header_bytes
        .saturating_mul(2)
        .saturating_add(MAX_TARGET_BYTES)
        .min(UNREPRESENTABLE_PATH_LIST - 1)
        .max(max_header_bytes);
    u32::try_from(limit).unwrap_or(u32::MAX)
}

/// A request head the balancer refuses for its size.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum HeadTooLarge {
    #[error("the request target is over {MAX_TARGET_BYTES} bytes")]
    Target,
    #[error("the request's header fields are over max_header_bytes")]
    Fields,
}

impl HeadTooLarge {
    /// 414 or 431.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::Target => StatusCode::URI_TOO_LONG,
            Self::Fields => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
        }
    }
}

/// Checks a request head's size: its target (path and query) against [`MAX_TARGET_BYTES`],
/// its header fields against `max_header_bytes`, counted as sent (HTTP/1.1: `name: value`
/// and CRLF) or as HTTP/2 counts a header list (name, value and 32 bytes a field).
pub fn check_head_size<B>(
    request: &hyper::Request<B>,
    max_header_bytes: usize,
) -> Result<(), HeadTooLarge> {
    let target = request
        .uri()
        .path_and_query()
        .map_or(0, |p| p.as_str().len());
    if target > MAX_TARGET_BYTES {
        return Err(HeadTooLarge::Target);
    }
    let overhead = if request.version() == Version::HTTP_2 {
        32
    } else {
        4
    };
    let fields = request
        .headers()
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len() + overhead)
        .fold(0usize, usize::saturating_add);
    if fields > max_header_bytes {
        return Err(HeadTooLarge::Fields);
    }
    Ok(())
}

/// Who asked, and through which listener port: the same for every request of a client
/// connection, so its header values are made once, when the connection opens.
#[derive(Clone, Debug)]
pub struct Forwarding {
    client: IpAddr,
    /// `client` as text, the element `X-Forwarded-For` gets.
    client_value: HeaderValue,
    port_value: HeaderValue,
}

impl Forwarding {
    pub fn new(client: IpAddr, port: u16) -> Self {
        // An address in text is a valid header value.
        let client_value = HeaderValue::from_str(&client.to_string())
            .unwrap_or_else(|_| HeaderValue::from_static("unknown"));
        Self {
            client,
            client_value,
            port_value: HeaderValue::from(port),
        }
    }
}

/// Gives every header value storage of its own. A value hyper read from a backend shares the
/// buffer the whole response head was read into (8 kB), and HTTP/2's HPACK encoder keeps the
/// values it indexes for the life of the client's connection: one shared value would keep that
/// buffer alive for as long, however idle the connection.
pub fn detach_values(headers: &mut HeaderMap) {
    for value in headers.values_mut() {
        let sensitive = value.is_sensitive();
        // Always a valid value: it is one already.
        if let Ok(mut copy) = HeaderValue::from_bytes(value.as_bytes()) {
            copy.set_sensitive(sensitive);
            *value = copy;
        }
    }
}

/// Removes the hop-by-hop headers of `headers`; keeps `Upgrade` and sets `Connection: upgrade`
/// if `upgrade` is the protocol being switched to, and keeps `TE: trailers` (its other
/// codings go: they were for the previous hop).
pub fn strip_hop_by_hop(headers: &mut HeaderMap, upgrade: Option<&HeaderValue>) {
    let trailers = has_token(headers, &header::TE, "trailers");
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|token| HeaderName::from_bytes(token.trim().as_bytes()).ok())
        .collect();
    for name in named {
        headers.remove(name);
    }
    for name in [
        &header::CONNECTION,
        &KEEP_ALIVE,
        &PROXY_CONNECTION,
        &header::TE,
        &header::TRANSFER_ENCODING,
        &header::UPGRADE,
    ] {
        headers.remove(name);
    }
    if trailers {
        headers.insert(header::TE, HeaderValue::from_static("trailers"));
    }
    if let Some(protocol) = upgrade {
        headers.insert(header::UPGRADE, protocol.clone());
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    }
}

/// Whether a `name` field lists `token` (comma-separated, any case, parameters ignored).
fn has_token(headers: &HeaderMap, name: &HeaderName, token: &str) -> bool {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|t| t.split(';').next())
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

/// Frames a request body for an HTTP/1.1 backend: one of unknown length (a chunked upload, an
/// HTTP/2 client's body without `content-length`) is sent chunked. hyper would otherwise send
/// a GET's, HEAD's or CONNECT's as empty (it assumes they have none), silently cutting the
/// body off. A body that announces trailers (`Trailer`) goes chunked too, its length dropped:
/// only a chunked body carries trailers over HTTP/1.1.
pub fn frame_body_for_http1(headers: &mut HeaderMap, has_body: bool) {
    let trailers = headers.contains_key(header::TRAILER);
    if has_body && (trailers || !headers.contains_key(header::CONTENT_LENGTH)) {
        headers.remove(header::CONTENT_LENGTH);
        headers.insert(
            header::TRANSFER_ENCODING,
            HeaderValue::from_static("chunked"),
        );
    }
}

/// The protocol an HTTP/1.1 request asks to switch to, if it is one the balancer tunnels:
/// `Connection: upgrade` with `Upgrade: websocket`. Any other (`h2c`, unknown tokens) is
/// ignored: the request goes on as a plain one, its `Upgrade` removed with the other
/// hop-by-hop headers (RFC 9110 section 7.8 lets a server ignore an upgrade).
pub fn upgrade_of(version: Version, headers: &HeaderMap) -> Option<HeaderValue> {
    if version != Version::HTTP_11 {
        return None;
    }
    let asks = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|token| token.trim().eq_ignore_ascii_case("upgrade"));
    let protocol = headers.get(header::UPGRADE)?;
    let websocket = protocol.to_str().is_ok_and(|p| {
        let mut tokens = p.split(',').map(str::trim);
        tokens.next().is_some_and(|t| {
            t.split('/')
                .next()
                .is_some_and(|name| name.eq_ignore_ascii_case("websocket"))
        }) && tokens.next().is_none()
    });
    (asks && websocket).then(|| protocol.clone())
}

/// Whether `request` is an HTTP/2 WebSocket handshake (RFC 8441): an extended CONNECT with
/// `:protocol websocket`. The proxy tunnels it to an HTTP/1.1 backend as an `Upgrade`
/// ([`websocket_to_http1`]).
pub fn is_h2_websocket<B>(request: &hyper::Request<B>) -> bool {
    request.version() == Version::HTTP_2
        && request.method() == hyper::Method::CONNECT
        && request
            .extensions()
            .get::<hyper::ext::Protocol>()
            .is_some_and(|p| p.as_str().eq_ignore_ascii_case("websocket"))
}

/// An HTTP/2 WebSocket handshake as an HTTP/1.1 backend wants it (RFC 8441 section 5): a GET
/// with a fresh `Sec-WebSocket-Key` (HTTP/2 has none; the backend's `Sec-WebSocket-Accept`
/// for it is checked by nobody and dropped); `Upgrade` and `Connection` are set with the other
/// hop-by-hop headers.
pub fn websocket_to_http1(parts: &mut hyper::http::request::Parts) {
    use base64::Engine as _;
    use ring::rand::SecureRandom as _;
    parts.method = hyper::Method::GET;
    parts.extensions.remove::<hyper::ext::Protocol>();
    let mut nonce = [0u8; 16];
    if ring::rand::SystemRandom::new().fill(&mut nonce).is_err() {
        // A nonce, not a secret: the clock will do.
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        nonce = nanos.to_le_bytes();
    }
    let key = base64::engine::general_purpose::STANDARD.encode(nonce);
    if let Ok(key) = HeaderValue::from_str(&key) {
        parts.headers.insert("sec-websocket-key", key);
    }
}

/// A backend's 101 to a WebSocket handshake as an HTTP/2 client wants it: 200, without the
/// handshake's `Sec-WebSocket-Accept` (RFC 8441 section 5); the hop-by-hop headers are gone
/// already.
pub fn websocket_answer_for_h2(parts: &mut hyper::http::response::Parts) {
    parts.status = StatusCode::OK;
    parts.headers.remove("sec-websocket-accept");
}

/// Checks an HTTP/1.x request's `Host` (RFC 9112 section 3.2): more than one is 400, none on
/// an HTTP/1.1 request is 400, and an absolute-form target's authority replaces it (the
/// server must use the target's, whatever `Host` says). HTTP/2 requests carry `:authority`.
pub fn check_host<B>(request: &mut hyper::Request<B>) -> Result<(), BadHost> {
    let version = request.version();
    if version != Version::HTTP_11 && version != Version::HTTP_10 {
        // HTTP/2: a `Host` beside `:authority` must name the same (RFC 9113, 8.3.1); one that
        // does not would let a request be routed by one and served by the other.
        let hosts: Vec<&HeaderValue> = request.headers().get_all(header::HOST).iter().collect();
        let authority = request.uri().authority().map(|a| a.as_str());
        return match (authority, hosts.as_slice()) {
            (_, []) => Ok(()),
            (Some(authority), [host])
                if host.as_bytes().eq_ignore_ascii_case(authority.as_bytes()) =>
            {
                Ok(())
            }
            (None, [_]) => Ok(()),
            _ => Err(BadHost),
        };
    }
    let authority = request.uri().authority().cloned();
    let headers = request.headers_mut();
    let hosts = headers.get_all(header::HOST).iter().count();
    if hosts > 1 {
        return Err(BadHost);
    }
    if let Some(authority) = authority {
        let value = HeaderValue::from_str(authority.as_str()).map_err(|_| BadHost)?;
        headers.insert(header::HOST, value);
        return Ok(());
    }
    if hosts == 0 && version == Version::HTTP_11 {
        return Err(BadHost);
    }
    Ok(())
}

/// A request without a usable `Host`: 400.
#[derive(Debug, thiserror::Error)]
#[error("no Host, or more than one")]
pub struct BadHost;

/// Sets the `X-Forwarded-For`, `-Proto` and `-Port` headers of a request to a backend.
pub fn add_forwarding(headers: &mut HeaderMap, forwarding: &Forwarding) {
    let forwarded_for = match joined(headers, &X_FORWARDED_FOR) {
        Some(earlier) => {
            let client = forwarding.client_value.to_str().unwrap_or("unknown");
            HeaderValue::from_str(&format!("{earlier}, {client}")).ok()
        }
        None => Some(forwarding.client_value.clone()),
    };
    if let Some(value) = forwarded_for {
        headers.insert(X_FORWARDED_FOR.clone(), value);
    }
    headers.insert(X_FORWARDED_PROTO.clone(), HeaderValue::from_static("https"));
    headers.insert(X_FORWARDED_PORT.clone(), forwarding.port_value.clone());
}

/// Appends an RFC 7239 `Forwarded` element for the client, naming `host` (the host it asked
/// for), to a request to a backend.
pub fn add_forwarded(headers: &mut HeaderMap, forwarding: &Forwarding, host: Option<&str>) {
    let node = match forwarding.client {
        IpAddr::V4(a) => a.to_string(),
        IpAddr::V6(a) => format!("\"[{a}]\""),
    };
    let mut element = format!("for={node};proto=https");
    if let Some(host) = host {
        element.push_str(&format!(";host=\"{}\"", host.replace(['"', '\\'], "")));
    }
    let forwarded = match joined(headers, &header::FORWARDED) {
        Some(earlier) => format!("{earlier}, {element}"),
        None => element,
    };
    if let Ok(value) = HeaderValue::from_str(&forwarded) {
        headers.insert(header::FORWARDED, value);
    }
}

/// The values of every `name` header joined with ", ", if any (and all are text).
fn joined(headers: &HeaderMap, name: &HeaderName) -> Option<String> {
    let values: Vec<&str> = headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect();
    (!values.is_empty()).then(|| values.join(", "))
}

/// The URI and `Host` of a request as a backend of `version` wants them: origin form and a
/// `Host` header for HTTP/1.1; scheme and authority for HTTP/2. The authority comes from
/// `Host` (HTTP/1.1 clients) or the URI (HTTP/2 clients); `fallback` if neither has one.
/// For HTTP/1.1 the `Cookie` fields are also joined into one ([`join_cookies`]).
pub fn to_backend_target(
    uri: &Uri,
    headers: &mut HeaderMap,
    version: Version,
    tls: bool,
    fallback: SocketAddr,
) -> Result<Uri, hyper::http::Error> {
    let authority = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .and_then(|h| h.parse::<Authority>().ok())
        .or_else(|| uri.authority().cloned())
        .map_or_else(|| fallback.to_string().parse::<Authority>(), Ok)?;
    let path = uri
        .path_and_query()
        .cloned()
        .unwrap_or_else(|| PathAndQuery::from_static("/"));
    if version == Version::HTTP_2 {
        headers.remove(header::HOST);
        let scheme = if tls { Scheme::HTTPS } else { Scheme::HTTP };
        Ok(Uri::builder()
            .scheme(scheme)
            .authority(authority)
            .path_and_query(path)
            .build()?)
    } else {
        if !headers.contains_key(header::HOST)
            && let Ok(host) = HeaderValue::from_str(authority.as_str())
        {
            headers.insert(header::HOST, host);
        }
        join_cookies(headers);
        Ok(Uri::builder().path_and_query(path).build()?)
    }
}

/// Joins several `Cookie` fields (an HTTP/2 client may split its cookies) into one, with
/// "; ", as a backend outside HTTP/2 expects them (RFC 9113 section 8.2.3; RFC 6265 allows
/// one `Cookie` header). Empty fields go; the result is sensitive if any part was.
fn join_cookies(headers: &mut HeaderMap) {
    if headers.get_all(header::COOKIE).iter().nth(1).is_none() {
        return;
    }
    let mut joined = Vec::new();
    let mut sensitive = false;
    for value in headers.get_all(header::COOKIE) {
        if value.is_empty() {
            continue;
        }
        if !joined.is_empty() {
            joined.extend_from_slice(b"; ");
        }
        joined.extend_from_slice(value.as_bytes());
        sensitive |= value.is_sensitive();
    }
    // Every byte comes from a valid header value, so this holds; keep the fields otherwise.
    if let Ok(mut value) = HeaderValue::from_bytes(&joined) {
        value.set_sensitive(sensitive);
        headers.insert(header::COOKIE, value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fallback authority that the tests' requests never need.
    const X: SocketAddr = SocketAddr::new(IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED), 1);

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(
                HeaderName::from_bytes(name.as_bytes()).unwrap(),
                HeaderValue::from_str(value).unwrap(),
            );
        }
        map
    }

    #[test]
    fn detached_values_are_equal_and_share_no_storage() {
        let head = bytes::Bytes::from_static(b"text/plain secret");
        let mut h = HeaderMap::new();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_maybe_shared(head.slice(..10)).unwrap(),
        );
        let mut secret = HeaderValue::from_maybe_shared(head.slice(11..)).unwrap();
        secret.set_sensitive(true);
        h.insert(header::AUTHORIZATION, secret);
        let before: Vec<*const u8> = h.values().map(|v| v.as_bytes().as_ptr()).collect();
        detach_values(&mut h);
        assert_eq!(h[header::CONTENT_TYPE], "text/plain");
        assert_eq!(h[header::AUTHORIZATION], "secret");
        assert!(h[header::AUTHORIZATION].is_sensitive());
        for (value, old) in h.values().zip(before) {
            assert_ne!(
                value.as_bytes().as_ptr(),
                old,
                "a copy, not a view of the head"
            );
        }
    }

    #[test]
    fn hop_by_hop_headers_go_and_those_connection_names_too() {
        let mut h = headers(&[
            ("connection", "keep-alive, x-secret"),
            ("keep-alive", "timeout=5"),
            ("x-secret", "1"),
            ("te", "gzip"),
            ("trailer", "x-checksum"),
            ("transfer-encoding", "chunked"),
            ("upgrade", "h2c"),
            ("proxy-connection", "keep-alive"),
            ("host", "example.com"),
            ("x-kept", "yes"),
        ]);
        strip_hop_by_hop(&mut h, None);
        let mut names: Vec<&str> = h.keys().map(HeaderName::as_str).collect();
        names.sort_unstable();
        assert_eq!(names, ["host", "trailer", "x-kept"]);

        let mut grpc = headers(&[("te", "gzip, Trailers;q=1"), ("connection", "te")]);
        strip_hop_by_hop(&mut grpc, None);
        assert_eq!(grpc["te"], "trailers", "only the trailers token goes on");
        assert_eq!(grpc.len(), 1);

        let mut ws = headers(&[("connection", "Upgrade"), ("upgrade", "websocket")]);
        let upgrade = upgrade_of(Version::HTTP_11, &ws);
        assert_eq!(upgrade.as_ref().unwrap(), "websocket");
        assert!(upgrade_of(Version::HTTP_2, &ws).is_none());
        strip_hop_by_hop(&mut ws, upgrade.as_ref());
        assert_eq!(ws["upgrade"], "websocket");
        assert_eq!(ws["connection"], "upgrade");
    }

    #[test]
    fn heads_are_judged_by_target_then_fields() {
        let request = |version, path: &str, field: usize| {
            hyper::Request::builder()
                .version(version)
                .uri(path)
                .header("x-big", "a".repeat(field))
                .body(())
                .unwrap()
        };
        let at_limit = format!("/{}", "p".repeat(MAX_TARGET_BYTES - 1));
        let over = format!("/{}", "p".repeat(MAX_TARGET_BYTES));
        let h1 = Version::HTTP_11;
        assert_eq!(check_head_size(&request(h1, &at_limit, 10), 8192), Ok(()));
        assert_eq!(
            check_head_size(&request(h1, &over, 10), 1 << 20),
            Err(HeadTooLarge::Target)
        );
        // "x-big: " + value + CRLF.
        assert_eq!(check_head_size(&request(h1, "/", 8192 - 9), 8192), Ok(()));
        assert_eq!(
            check_head_size(&request(h1, "/", 8192 - 8), 8192),
            Err(HeadTooLarge::Fields)
        );
        let h2 = Version::HTTP_2;
        assert_eq!(check_head_size(&request(h2, "/", 8192 - 37), 8192), Ok(()));
        assert_eq!(
            check_head_size(&request(h2, "/", 8192 - 36), 8192),
            Err(HeadTooLarge::Fields)
        );
        assert_eq!(HeadTooLarge::Target.status(), 414);
        assert_eq!(HeadTooLarge::Fields.status(), 431);
    }

    #[test]
    fn forwarding_headers_append_the_client_and_replace_what_it_claimed() {
        let mut h = headers(&[
            ("x-forwarded-for", "203.0.113.7"),
            ("x-forwarded-for", "198.18.9.9"),
            ("x-forwarded-proto", "http"),
            ("x-forwarded-port", "80"),
            ("host", "shop.example"),
        ]);
        let forwarding = Forwarding::new("2001:db8::5".parse().unwrap(), 443);
        add_forwarding(&mut h, &forwarding);
        add_forwarded(&mut h, &forwarding, Some("shop.example"));
        assert_eq!(h["x-forwarded-for"], "203.0.113.7, 198.18.9.9, 2001:db8::5");
        assert_eq!(h.get_all("x-forwarded-proto").iter().count(), 1);
        assert_eq!(h["x-forwarded-proto"], "https");
        assert_eq!(h["x-forwarded-port"], "443");
        assert_eq!(
            h["forwarded"],
            "for=\"[2001:db8::5]\";proto=https;host=\"shop.example\""
        );

        let mut plain = HeaderMap::new();
        add_forwarding(
            &mut plain,
            &Forwarding::new("198.18.0.1".parse().unwrap(), 8443),
        );
        assert_eq!(plain["x-forwarded-for"], "198.18.0.1");
        assert!(!plain.contains_key("forwarded"));
    }

    #[test]
    fn targets_for_each_backend_version() {
        let uri: Uri = "https://api.example/v1/items?q=1".parse().unwrap();
        let mut h = HeaderMap::new();
        let h1 = to_backend_target(
            &uri,
            &mut h,
            Version::HTTP_11,
            false,
            "198.18.1.1:80".parse().unwrap(),
        )
        .unwrap();
        assert_eq!(h1, "/v1/items?q=1");
        assert_eq!(h["host"], "api.example", "an HTTP/2 client's authority");

        let mut h = headers(&[("host", "shop.example:8443")]);
        let origin: Uri = "/cart".parse().unwrap();
        let h2 = to_backend_target(&origin, &mut h, Version::HTTP_2, true, X).unwrap();
        assert_eq!(h2, "https://shop.example:8443/cart");
        assert!(!h.contains_key("host"));

        let mut none = HeaderMap::new();
        let fallback = to_backend_target(
            &origin,
            &mut none,
            Version::HTTP_11,
            false,
            "198.18.1.1:80".parse().unwrap(),
        )
        .unwrap();
        assert_eq!(fallback, "/cart");
        assert_eq!(none["host"], "198.18.1.1:80");
    }

    #[test]
    fn cookie_fields_become_one_for_an_http1_backend() {
        let crumbs = [("cookie", "a=1"), ("cookie", ""), ("cookie", "b=2; c=3")];
        let uri: Uri = "https://shop.example/".parse().unwrap();
        let mut h1 = headers(&crumbs);
        to_backend_target(&uri, &mut h1, Version::HTTP_11, false, X).unwrap();
        let cookies: Vec<&HeaderValue> = h1.get_all("cookie").iter().collect();
        assert_eq!(cookies, ["a=1; b=2; c=3"]);

        let mut h2 = headers(&crumbs);
        to_backend_target(&uri, &mut h2, Version::HTTP_2, true, X).unwrap();
        assert_eq!(
            h2.get_all("cookie").iter().count(),
            3,
            "HTTP/2 keeps the crumbs"
        );
    }
}
