//! Probes against real sockets on 127.0.0.1: tiny TCP, HTTP and TLS servers in tokio tasks,
//! certificates from the TLS unit tests' [`Ca`] (not the lab's, which the package lacks).

use std::net::{Ipv4Addr, SocketAddr};
use std::ops::RangeInclusive;
use std::sync::Arc;
use std::time::Duration;

use rustls::ServerConfig;
use rustls_pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;

use super::{Outcome, Probe, ProbeKind, parse_status_range, tls};
use crate::l7::tls::test_support::Ca;

/// Long enough for any loopback exchange on a loaded machine.
const GENEROUS: Duration = Duration::from_secs(5);
/// Short, for the checks that must time out.
const SHORT: Duration = Duration::from_millis(300);
const OK: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n";

fn loopback(port: u16) -> SocketAddr {
    SocketAddr::from((Ipv4Addr::LOCALHOST, port))
}

async fn bind_loopback() -> TcpListener {
    TcpListener::bind(loopback(0))
        .await
        .expect("bind 127.0.0.1:0")
}

/// A port nothing listens on: bound, then released.
fn closed_port() -> SocketAddr {
    let listener = std::net::TcpListener::bind(loopback(0)).expect("bind 127.0.0.1:0");
    listener.local_addr().expect("local address")
}

fn http(status: RangeInclusive<u16>, host: Option<&str>) -> ProbeKind {
    ProbeKind::Http {
        path: "/healthz".to_owned(),
        host: host.map(str::to_owned),
        status,
    }
}

fn https(ca: &Ca, host: Option<&str>, server_name: Option<&str>) -> ProbeKind {
    ProbeKind::Https {
        path: "/healthz".to_owned(),
        host: host.map(str::to_owned),
        status: 200..=399,
        server_name: server_name.map(str::to_owned),
        roots: Arc::new(ca.roots()),
    }
}

async fn check(kind: ProbeKind, timeout: Duration, target: SocketAddr) -> Outcome {
    Probe { kind, timeout }.check(target).await
}

fn failing_reason(outcome: Outcome) -> String {
    match outcome {
        Outcome::Failing(reason) => reason,
        other => panic!("expected Failing, got {other:?}"),
    }
}

/// Reads a request head, then writes `answer` (if any) and closes, or holds the connection
/// open without a word (`hold`). Returns the request head.
async fn answer_request<S>(mut stream: S, answer: &[u8], hold: bool) -> String
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut head = Vec::new();
    let mut buf = [0_u8; 1024];
    while !head.windows(4).any(|window| window == b"\r\n\r\n") {
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
    }
    stream.write_all(answer).await.expect("write the answer");
    stream.flush().await.expect("flush the answer");
    if hold {
        tokio::time::sleep(Duration::from_secs(60)).await;
    }
    String::from_utf8_lossy(&head).into_owned()
}

/// A plain TCP server answering one request with `answer`; returns what it received.
async fn serve_once(answer: &'static [u8], hold: bool) -> (SocketAddr, JoinHandle<String>) {
    let listener = bind_loopback().await;
    let addr = listener.local_addr().expect("local address");
    let task = tokio::spawn(async move {
        let (stream, _) = listener.accept().await.expect("accept");
        answer_request(stream, answer, hold).await
    });
    (addr, task)
}

/// A server that speaks first: writes `banner` as soon as it accepts, then holds on.
async fn serve_banner(banner: &'static [u8]) -> SocketAddr {
    let listener = bind_loopback().await;
    let addr = listener.local_addr().expect("local address");
    tokio::spawn(async move {
        let (mut stream, _) = listener.accept().await.expect("accept");
        stream.write_all(banner).await.expect("write the banner");
        tokio::time::sleep(Duration::from_secs(60)).await;
    });
    addr
}

/// A TLS server presenting `config`'s certificate, answering one request with 200.
async fn serve_tls_once(config: Arc<ServerConfig>) -> SocketAddr {
    let listener = bind_loopback().await;
    let addr = listener.local_addr().expect("local address");
    tokio::spawn(async move {
        let (stream, _) = listener.accept().await.expect("accept");
        // A refused certificate ends the handshake on the client's side: nothing to answer.
        if let Ok(stream) = TlsAcceptor::from(config).accept(stream).await {
            answer_request(stream, OK, false).await;
        }
    });
    addr
}

fn test_ca() -> Ca {
    Ca::new("lb probe test CA")
}

#[tokio::test]
async fn tcp_passes_when_something_listens() {
    let listener = bind_loopback().await;
    let addr = listener.local_addr().expect("local address");
    assert_eq!(check(ProbeKind::Tcp, GENEROUS, addr).await, Outcome::Pass);
}

#[tokio::test]
async fn tcp_to_a_closed_port_is_unreachable() {
    let outcome = check(ProbeKind::Tcp, GENEROUS, closed_port()).await;
    assert_eq!(
        outcome,
        Outcome::Unreachable("connection refused".to_owned())
    );
}

/// A listener with a backlog of 0 that never accepts: once its accept queue is full, the
/// kernel drops further SYNs, so a connection attempt gets no answer at all.
#[tokio::test]
async fn no_answer_to_the_connection_is_unreachable() {
    let socket = TcpSocket::new_v4().expect("socket");
    socket.bind(loopback(0)).expect("bind 127.0.0.1:0");
    let addr = socket.local_addr().expect("local address");
    let _listener = socket.listen(0).expect("listen");
    let mut queued = Vec::new();
    let full = loop {
        assert!(queued.len() < 16, "the accept queue of {addr} never filled");
        match tokio::time::timeout(SHORT, TcpStream::connect(addr)).await {
            Ok(stream) => queued.push(stream.expect("connect while the queue has room")),
            Err(_) => break true,
        }
    };
    assert!(full);
    let outcome = check(ProbeKind::Tcp, SHORT, addr).await;
    assert_eq!(
        outcome,
        Outcome::Unreachable("no answer within 300ms".to_owned())
    );
}

#[tokio::test]
async fn http_passes_on_an_expected_status_and_sends_a_plain_get() {
    let (addr, request) = serve_once(OK, false).await;
    assert_eq!(
        check(http(200..=399, None), GENEROUS, addr).await,
        Outcome::Pass
    );
    let request = request.await.expect("server task").to_ascii_lowercase();
    assert!(
        request.starts_with("get /healthz http/1.1\r\n"),
        "{request}"
    );
    for header in [
        format!("host: {addr}\r\n"),
        "user-agent: lb-health-check\r\n".to_owned(),
        "connection: close\r\n".to_owned(),
    ] {
        assert!(request.contains(&header), "no {header:?} in {request:?}");
    }
}

#[tokio::test]
async fn http_sends_the_configured_host() {
    let (addr, request) = serve_once(OK, false).await;
    let kind = http(200..=200, Some("backend.lab"));
    assert_eq!(check(kind, GENEROUS, addr).await, Outcome::Pass);
    let request = request.await.expect("server task").to_ascii_lowercase();
    assert!(request.contains("host: backend.lab\r\n"), "{request}");
}

#[tokio::test]
async fn http_status_outside_the_range_is_failing() {
    let answer = b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n";
    let (addr, _request) = serve_once(answer, false).await;
    let reason = failing_reason(check(http(200..=399, None), GENEROUS, addr).await);
    assert_eq!(reason, "status 503, expected 200-399");
    let (addr, _request) = serve_once(OK, false).await;
    let reason = failing_reason(check(http(204..=204, None), GENEROUS, addr).await);
    assert_eq!(reason, "status 200, expected 204");
}

#[tokio::test]
async fn a_non_http_answer_is_failing() {
    let addr = serve_banner(b"SSH-2.0-OpenSSH_9.2\r\n").await;
    let reason = failing_reason(check(http(200..=399, None), GENEROUS, addr).await);
    assert!(reason.contains("not HTTP"), "{reason}");
}

#[tokio::test]
async fn a_connection_closed_without_an_answer_is_failing() {
    let (addr, _request) = serve_once(b"", false).await;
    let reason = failing_reason(check(http(200..=399, None), GENEROUS, addr).await);
    assert_eq!(reason, "the connection closed before an HTTP answer");
}

#[tokio::test]
async fn a_silent_server_times_out_as_failing() {
    let (addr, _request) = serve_once(b"", true).await;
    let reason = failing_reason(check(http(200..=399, None), SHORT, addr).await);
    assert_eq!(reason, "no HTTP answer within 300ms");
}

#[tokio::test]
async fn the_body_is_not_waited_for() {
    let answer = b"HTTP/1.1 200 OK\r\nContent-Length: 1000000000\r\n\r\nthe start of a long body";
    let (addr, _request) = serve_once(answer, true).await;
    assert_eq!(
        check(http(200..=399, None), GENEROUS, addr).await,
        Outcome::Pass
    );
}

#[tokio::test]
async fn https_passes_for_the_target_ip() {
    let ca = test_ca();
    let addr = serve_tls_once(ca.issue(&["127.0.0.1"]).server()).await;
    assert_eq!(
        check(https(&ca, None, None), GENEROUS, addr).await,
        Outcome::Pass
    );
}

#[tokio::test]
async fn https_verifies_the_host_without_its_port() {
    let ca = test_ca();
    let addr = serve_tls_once(ca.issue(&["backend.lab"]).server()).await;
    let kind = https(&ca, Some("backend.lab:8443"), None);
    assert_eq!(check(kind, GENEROUS, addr).await, Outcome::Pass);
}

#[tokio::test]
async fn https_with_a_certificate_from_another_ca_is_failing() {
    let (ca, other) = (test_ca(), Ca::new("another CA"));
    let addr = serve_tls_once(other.issue(&["127.0.0.1"]).server()).await;
    let reason = failing_reason(check(https(&ca, None, None), GENEROUS, addr).await);
    assert!(
        reason.starts_with("TLS: certificate not trusted"),
        "{reason}"
    );
}

#[tokio::test]
async fn https_with_a_certificate_for_another_name_is_failing() {
    let ca = test_ca();
    let addr = serve_tls_once(ca.issue(&["backend.lab"]).server()).await;
    let kind = https(&ca, None, Some("other.lab"));
    let reason = failing_reason(check(kind, GENEROUS, addr).await);
    assert!(
        reason.starts_with("TLS: certificate not valid for name"),
        "{reason}"
    );
    assert!(reason.contains("other.lab"), "{reason}");
}

#[tokio::test]
async fn https_with_an_expired_certificate_is_failing() {
    let ca = test_ca();
    // Valid from 2000 to 2001.
    let expired = ca.issue_between(&["127.0.0.1"], Some((2000, 2001)));
    let addr = serve_tls_once(expired.server()).await;
    let reason = failing_reason(check(https(&ca, None, None), GENEROUS, addr).await);
    assert!(reason.starts_with("TLS: certificate expired"), "{reason}");
    assert!(reason.ends_with("days ago"), "{reason}");
}

#[tokio::test]
async fn https_to_a_plain_http_server_is_failing() {
    let addr = serve_banner(OK).await;
    let reason = failing_reason(check(https(&test_ca(), None, None), GENEROUS, addr).await);
    assert!(reason.starts_with("TLS: "), "{reason}");
}

#[test]
fn the_server_name_comes_from_server_name_then_host_then_target() {
    let target: SocketAddr = "127.0.0.1:443".parse().expect("address");
    let name = |server_name, host| tls::choose_server_name(server_name, host, target);
    let dns = |text: &str| ServerName::try_from(text.to_owned()).expect("name");
    assert_eq!(name(Some("a.lab"), Some("b.lab")), Ok(dns("a.lab")));
    assert_eq!(name(None, Some("b.lab:8443")), Ok(dns("b.lab")));
    assert_eq!(name(None, Some("b.lab")), Ok(dns("b.lab")));
    assert_eq!(
        name(None, Some("[2001:db8::1]:443")),
        Ok(dns("2001:db8::1"))
    );
    assert_eq!(name(None, Some("2001:db8::1")), Ok(dns("2001:db8::1")));
    assert_eq!(name(None, None), Ok(ServerName::from(target.ip())));
    assert!(name(Some("not a name"), None).is_err());
}

#[test]
fn status_ranges_parse() {
    for (text, range) in [
        ("200", 200..=200),
        ("200-399", 200..=399),
        ("200-299", 200..=299),
        (" 200 - 204 ", 200..=204),
        ("100-599", 100..=599),
    ] {
        assert_eq!(parse_status_range(text), Ok(range), "{text:?}");
    }
}

#[test]
fn bad_status_ranges_are_refused() {
    for text in [
        "",
        "-",
        "abc",
        "200-",
        "-200",
        "399-200",
        "99",
        "600",
        "200-600",
        "+200",
        "200-300-400",
        "2OO",
        "200,201",
    ] {
        assert!(parse_status_range(text).is_err(), "{text:?} was accepted");
    }
    let reason = parse_status_range("399-200").expect_err("out of order");
    assert!(reason.contains("out of order"), "{reason}");
}

#[test]
fn kinds_compare_their_trust_anchors() {
    let (ca, other) = (test_ca(), Ca::new("another CA"));
    assert_eq!(https(&ca, None, None), https(&ca, None, None));
    assert_ne!(https(&ca, None, None), https(&other, None, None));
    assert_ne!(
        https(&ca, None, None),
        https(&ca, Some("backend.lab"), None)
    );
    assert_ne!(http(200..=399, None), http(200..=299, None));
    assert_ne!(http(200..=399, None), ProbeKind::Tcp);
}
