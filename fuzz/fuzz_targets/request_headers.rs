//! The request head's header handling on its way to a backend (`l7::headers`), in the order
//! the proxy applies it: `upgrade_of`, `check_host`, `strip_hop_by_hop`, `add_forwarding`,
//! `add_forwarded`, `to_backend_target`.
//!
//! Input: lines (`\n`, a trailing `\r` dropped), like a request head after one line for the
//! connection. Line 1: `CLIENT PORT BACKEND` (`198.18.0.9 443 h1`; BACKEND is `h1`, `h2`,
//! `h1-tls` or `h2-tls`; anything unreadable takes that default). Line 2: `METHOD TARGET
//! VERSION` (`HTTP/1.0`, `HTTP/1.1` or `HTTP/2`). Then `name: value` headers as bytes (those
//! `http` refuses are skipped).
//!
//! Passes when nothing panics and:
//! - a request `check_host` accepts over HTTP/1.x has exactly one `Host`;
//! - after `strip_hop_by_hop`, no hop-by-hop header is left but a tunnelled `Upgrade` and its
//!   `Connection: upgrade`;
//! - `X-Forwarded-Proto` and `-Port` are the balancer's, and the client is the last element of
//!   `X-Forwarded-For` when that fits in a header;
//! - an HTTP/1.1 backend gets an origin-form target with at most one `Cookie` and a `Host`;
//!   an HTTP/2 backend an absolute target and no `Host`.

#![no_main]

use std::net::{IpAddr, SocketAddr};

use http::{HeaderName, HeaderValue, Request, Version, header};
use lb::l7::headers::{
    Forwarding, add_forwarded, add_forwarding, check_host, strip_hop_by_hop, to_backend_target,
    upgrade_of,
};
use libfuzzer_sys::fuzz_target;

/// The connection and request of one input.
struct Input {
    client: IpAddr,
    port: u16,
    backend: Version,
    backend_tls: bool,
    request: Request<()>,
}

/// The default client, and the backend a request without an authority goes to.
const CLIENT: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(198, 18, 0, 9));
const FALLBACK: SocketAddr =
    SocketAddr::new(IpAddr::V4(std::net::Ipv4Addr::new(198, 18, 0, 2)), 8080);

fuzz_target!(|data: &[u8]| {
    let Some(Input {
        client,
        port,
        backend,
        backend_tls,
        mut request,
    }) = parse(data)
    else {
        return;
    };
    let version = request.version();
    let upgrade = upgrade_of(version, request.headers());
    if check_host(&mut request).is_err() {
        return;
    }
    if matches!(version, Version::HTTP_10 | Version::HTTP_11) {
        let hosts = request.headers().get_all(header::HOST).iter().count();
        assert!(
            hosts == 1 || (hosts == 0 && version == Version::HTTP_10),
            "{hosts} Host headers"
        );
    }
    let (parts, ()) = request.into_parts();
    let mut headers = parts.headers;
    strip_hop_by_hop(&mut headers, upgrade.as_ref());
    check_stripped(&headers, upgrade.as_ref());

    let forwarding = Forwarding::new(client, port);
    add_forwarding(&mut headers, &forwarding);
    check_forwarding(&headers, client, port);
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .map(str::to_owned);
    add_forwarded(&mut headers, &forwarding, host.as_deref());

    if let Ok(uri) = to_backend_target(&parts.uri, &mut headers, backend, backend_tls, FALLBACK) {
        if backend == Version::HTTP_2 {
            assert!(uri.scheme().is_some() && uri.authority().is_some(), "{uri}");
            assert!(!headers.contains_key(header::HOST), "Host left for HTTP/2");
        } else {
            assert!(uri.scheme().is_none() && uri.authority().is_none(), "{uri}");
            assert!(
                headers.get_all(header::COOKIE).iter().count() <= 1,
                "Cookie not joined"
            );
        }
    }
});

/// The input's connection and request, or `None` if `http` refuses the request line.
fn parse(data: &[u8]) -> Option<Input> {
    let mut lines = data
        .split(|b| *b == b'\n')
        .map(|line| line.strip_suffix(b"\r").unwrap_or(line));
    let connection = String::from_utf8_lossy(lines.next()?).into_owned();
    let mut fields = connection.split(' ');
    let client = fields.next().and_then(|a| a.parse().ok()).unwrap_or(CLIENT);
    let port = fields.next().and_then(|p| p.parse().ok()).unwrap_or(443);
    let (backend, backend_tls) = match fields.next().unwrap_or("h1") {
        "h2" => (Version::HTTP_2, false),
        "h2-tls" => (Version::HTTP_2, true),
        "h1-tls" => (Version::HTTP_11, true),
        _ => (Version::HTTP_11, false),
    };
    let request_line = String::from_utf8_lossy(lines.next()?).into_owned();
    let mut parts = request_line.split(' ');
    let method = parts.next()?;
    let target = parts.next()?;
    let version = match parts.next()? {
        "HTTP/1.0" => Version::HTTP_10,
        "HTTP/1.1" => Version::HTTP_11,
        "HTTP/2" => Version::HTTP_2,
        _ => return None,
    };
    let mut request = Request::builder()
        .method(method)
        .uri(target)
        .version(version)
        .body(())
        .ok()?;
    for line in lines {
        let Some(colon) = line.iter().position(|b| *b == b':') else {
            continue;
        };
        let (name, value) = line.split_at(colon);
        let value = value.get(1..).unwrap_or_default().trim_ascii();
        if let (Ok(name), Ok(value)) =
            (HeaderName::from_bytes(name), HeaderValue::from_bytes(value))
        {
            request.headers_mut().append(name, value);
        }
    }
    Some(Input {
        client,
        port,
        backend,
        backend_tls,
        request,
    })
}

/// No hop-by-hop header is left, but the tunnelled upgrade's pair and `TE: trailers` (the one
/// `TE` that goes on: RFC 9110 section 10.1.4; `Trailer` is end to end).
fn check_stripped(headers: &http::HeaderMap, upgrade: Option<&HeaderValue>) {
    for name in ["keep-alive", "proxy-connection", "transfer-encoding"] {
        assert!(!headers.contains_key(name), "{name} left");
    }
    let te: Vec<&[u8]> = headers
        .get_all("te")
        .iter()
        .map(HeaderValue::as_bytes)
        .collect();
    assert!(
        te.is_empty() || te == [b"trailers".as_slice()],
        "a TE other than `trailers` left: {te:?}"
    );
    match upgrade {
        Some(protocol) => {
            assert_eq!(headers.get(header::UPGRADE), Some(protocol));
            assert_eq!(headers.get_all(header::CONNECTION).iter().count(), 1);
        }
        None => {
            assert!(!headers.contains_key(header::UPGRADE), "Upgrade left");
            assert!(!headers.contains_key(header::CONNECTION), "Connection left");
        }
    }
}

/// The balancer's `X-Forwarded-*` values are set.
fn check_forwarding(headers: &http::HeaderMap, client: IpAddr, port: u16) {
    assert_eq!(headers.get_all("x-forwarded-proto").iter().count(), 1);
    assert_eq!(
        headers.get("x-forwarded-proto").map(HeaderValue::as_bytes),
        Some(&b"https"[..])
    );
    assert_eq!(headers.get_all("x-forwarded-port").iter().count(), 1);
    assert_eq!(
        headers.get("x-forwarded-port").map(HeaderValue::as_bytes),
        Some(port.to_string().as_bytes())
    );
    let forwarded_for: Vec<_> = headers.get_all("x-forwarded-for").iter().collect();
    assert_eq!(forwarded_for.len(), 1, "{forwarded_for:?}");
    let last = forwarded_for[0]
        .to_str()
        .ok()
        .and_then(|v| v.rsplit(", ").next())
        .map(str::to_owned);
    assert_eq!(last, Some(client.to_string()), "{forwarded_for:?}");
}
