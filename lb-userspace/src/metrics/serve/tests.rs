//! Tests of [`serve`](super::serve()) over loopback TCP, with a raw HTTP/1.1 client: status
//! codes, the exposition, keep-alive, and the limits (timeouts, connection cap, shutdown).

use std::collections::BTreeMap;
use std::net::SocketAddr;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::task::JoinHandle;

use super::*;
use crate::metrics::fixtures::sample_input;

/// Long enough for any step of a test on a loaded machine; reached only on failure.
const PATIENCE: Duration = Duration::from_secs(10);

/// Limits short enough for tests to see them act.
const SHORT: Limits = Limits {
    header_read_timeout: Duration::from_millis(300),
    snapshot_timeout: Duration::from_millis(200),
    max_connections: 4,
};

fn sample_snapshot() -> SnapshotFuture {
    Box::pin(async { Some(sample_input()) })
}

/// Serves on a loopback port; the handle aborts the server.
async fn start(snapshot: impl Snapshot, limits: Limits) -> (SocketAddr, JoinHandle<()>) {
    start_with_status(snapshot, None, limits).await
}

/// [`start`], with a status page reading `status`.
async fn start_with_status(
    snapshot: impl Snapshot,
    status: Option<StatusSource>,
    limits: Limits,
) -> (SocketAddr, JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind loopback");
    let address = listener.local_addr().expect("local address");
    let server = tokio::spawn(serve_with(listener, Arc::new(snapshot), status, limits));
    (address, server)
}

/// An HTTP/1.1 response as the tests see it.
#[derive(Debug)]
struct Answer {
    status: u16,
    headers: BTreeMap<String, String>,
    body: String,
}

/// Reads one response, whose length `Content-Length` gives.
async fn read_answer(stream: &mut TcpStream) -> Answer {
    let mut received = Vec::new();
    let head_end = loop {
        if let Some(end) = received.windows(4).position(|w| w == b"\r\n\r\n") {
            break end;
        }
        let mut chunk = [0u8; 4096];
        let read = tokio::time::timeout(PATIENCE, stream.read(&mut chunk))
            .await
            .expect("the server answers in time")
            .expect("read the answer");
        assert!(read > 0, "connection closed before the headers ended");
        received.extend_from_slice(&chunk[..read]);
    };
    let head = String::from_utf8(received[..head_end].to_vec()).expect("UTF-8 headers");
    let mut lines = head.split("\r\n");
    let status_line = lines.next().expect("a status line");
    let status = status_line.split(' ').nth(1).expect("a status code");
    let headers: BTreeMap<String, String> = lines
        .map(|line| line.split_once(": ").expect("a header line"))
        .map(|(name, value)| (name.to_ascii_lowercase(), value.to_owned()))
        .collect();
    let length: usize = headers["content-length"].parse().expect("a content length");
    let mut body = received[head_end + 4..].to_vec();
    body.resize(length, 0);
    let already = received.len() - head_end - 4;
    tokio::time::timeout(PATIENCE, stream.read_exact(&mut body[already..]))
        .await
        .expect("the body arrives in time")
        .expect("read the body");
    Answer {
        status: status.parse().expect("a numeric status"),
        headers,
        body: String::from_utf8(body).expect("UTF-8 body"),
    }
}

/// Sends one request on a new connection and reads the answer; returns the connection too.
async fn request(address: SocketAddr, request: &str) -> (Answer, TcpStream) {
    let mut stream = TcpStream::connect(address).await.expect("connect");
    stream
        .write_all(request.as_bytes())
        .await
        .expect("send the request");
    let answer = read_answer(&mut stream).await;
    (answer, stream)
}

async fn get(address: SocketAddr, path: &str) -> Answer {
    let text = format!("GET {path} HTTP/1.1\r\nHost: lb\r\n\r\n");
    request(address, &text).await.0
}

/// Waits for the server to close `stream`.
async fn assert_closed(stream: &mut TcpStream, why: &str) {
    let mut byte = [0u8; 1];
    let read = tokio::time::timeout(PATIENCE, stream.read(&mut byte))
        .await
        .unwrap_or_else(|_| panic!("the server did not close the connection: {why}"));
    assert!(
        matches!(read, Ok(0) | Err(_)),
        "expected the end of the connection: {why}"
    );
}

#[tokio::test]
async fn get_metrics_answers_the_exposition() {
    let (address, server) = start(sample_snapshot, Limits::DEFAULT).await;
    let answer = get(address, METRICS_PATH).await;
    assert_eq!(answer.status, 200, "{answer:?}");
    assert_eq!(answer.headers["content-type"], CONTENT_TYPE);
    let expected = render(&sample_input()).expect("the sample renders");
    assert_eq!(answer.body, expected);
    assert!(answer.body.ends_with("# EOF\n"));
    server.abort();
}

#[tokio::test]
async fn a_kept_alive_connection_serves_another_scrape() {
    let (address, server) = start(sample_snapshot, Limits::DEFAULT).await;
    let text = "GET /metrics HTTP/1.1\r\nHost: lb\r\n\r\n";
    let (first, mut stream) = request(address, text).await;
    stream.write_all(text.as_bytes()).await.expect("send again");
    let second = read_answer(&mut stream).await;
    assert_eq!((first.status, second.status), (200, 200));
    assert_eq!(first.body, second.body);
    server.abort();
}

#[tokio::test]
async fn other_paths_are_not_found() {
    let (address, server) = start(sample_snapshot, Limits::DEFAULT).await;
    for path in ["/other", "/", "/metrics/x"] {
        let answer = get(address, path).await;
        assert_eq!(answer.status, 404, "{path}: {answer:?}");
    }
    server.abort();
}

#[tokio::test]
async fn other_methods_are_not_allowed() {
    let (address, server) = start(sample_snapshot, Limits::DEFAULT).await;
    let post = "POST /metrics HTTP/1.1\r\nHost: lb\r\nContent-Length: 5\r\n\r\nhello";
    let (answer, _stream) = request(address, post).await;
    assert_eq!(answer.status, 405, "{answer:?}");
    assert_eq!(answer.headers["allow"], "GET, HEAD");
    server.abort();
}

#[tokio::test]
async fn no_snapshot_is_unavailable() {
    let none = || -> SnapshotFuture { Box::pin(async { None }) };
    let (address, server) = start(none, Limits::DEFAULT).await;
    let answer = get(address, METRICS_PATH).await;
    assert_eq!(answer.status, 503, "{answer:?}");
    assert!(answer.body.contains("no snapshot"), "{answer:?}");
    server.abort();
}

#[tokio::test]
async fn a_snapshot_that_never_comes_is_unavailable() {
    let never = || -> SnapshotFuture { Box::pin(std::future::pending()) };
    let (address, server) = start(never, SHORT).await;
    let answer = get(address, METRICS_PATH).await;
    assert_eq!(answer.status, 503, "{answer:?}");
    assert!(answer.body.contains("in time"), "{answer:?}");
    server.abort();
}

#[tokio::test]
async fn silent_and_idle_clients_are_disconnected() {
    let (address, server) = start(sample_snapshot, SHORT).await;
    let mut silent = TcpStream::connect(address).await.expect("connect");
    assert_closed(&mut silent, "a client that sends no headers").await;
    let mut partial = TcpStream::connect(address).await.expect("connect");
    partial
        .write_all(b"GET /metrics HTTP/1.1\r\n")
        .await
        .expect("send a partial request");
    assert_closed(&mut partial, "a client that never ends its headers").await;
    let text = "GET /metrics HTTP/1.1\r\nHost: lb\r\n\r\n";
    let (answer, mut idle) = request(address, text).await;
    assert_eq!(answer.status, 200);
    assert_closed(&mut idle, "an idle kept-alive connection").await;
    server.abort();
}

#[tokio::test]
async fn connections_beyond_the_limit_wait_their_turn() {
    let (address, server) = start(sample_snapshot, SHORT).await;
    let started = tokio::time::Instant::now();
    let mut held = Vec::new();
    for _ in 0..SHORT.max_connections {
        held.push(TcpStream::connect(address).await.expect("connect"));
    }
    // Accepted by the kernel, served once a held (silent) connection times out: not
    // before the header timeout, which timers never undercut.
    let answer = get(address, METRICS_PATH).await;
    assert_eq!(answer.status, 200, "{answer:?}");
    let waited = started.elapsed();
    assert!(
        waited >= SHORT.header_read_timeout,
        "served after {waited:?}: no limit?"
    );
    server.abort();
}

#[tokio::test]
async fn stopping_the_server_closes_its_connections() {
    let (address, server) = start(sample_snapshot, Limits::DEFAULT).await;
    let text = "GET /metrics HTTP/1.1\r\nHost: lb\r\n\r\n";
    let (answer, mut stream) = request(address, text).await;
    assert_eq!(answer.status, 200);
    server.abort();
    assert_closed(&mut stream, "the server task was aborted").await;
    assert!(
        TcpStream::connect(address).await.is_err(),
        "the listener is closed"
    );
}

#[tokio::test]
async fn the_status_page_is_served_only_when_configured() {
    let (address, server) = start(sample_snapshot, SHORT).await;
    for path in [STATUS_PATH, STATUS_JSON_PATH] {
        assert_eq!(
            get(address, path).await.status,
            404,
            "{path} without a status page"
        );
    }
    server.abort();

    let status: StatusSource =
        Arc::new(|| -> StatusFuture { Box::pin(async { Some("{\"status\":{}}".to_owned()) }) });
    let (address, server) = start_with_status(sample_snapshot, Some(status), SHORT).await;
    let page = get(address, STATUS_PATH).await;
    assert_eq!(page.status, 200);
    assert_eq!(page.headers["content-type"], "text/html; charset=utf-8");
    assert_eq!(page.headers["cache-control"], "no-store");
    assert!(page.headers["content-security-policy"].contains("default-src 'none'"));
    assert!(
        page.body.contains("<table id=\"backends\">"),
        "{}",
        page.body
    );
    // Nothing is fetched from elsewhere: no address but its own in the page.
    assert!(!page.body.contains("http://") && !page.body.contains("https://"));
    let json = get(address, STATUS_JSON_PATH).await;
    assert_eq!((json.status, json.body.as_str()), (200, "{\"status\":{}}"));
    assert_eq!(json.headers["content-type"], "application/json");
    let (answer, _) = request(
        address,
        "POST /status HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n",
    )
    .await;
    assert_eq!(answer.status, 405);
    assert_eq!(get(address, METRICS_PATH).await.status, 200);
    server.abort();

    let silent: StatusSource = Arc::new(|| -> StatusFuture { Box::pin(async { None }) });
    let (address, server) = start_with_status(sample_snapshot, Some(silent), SHORT).await;
    assert_eq!(get(address, STATUS_JSON_PATH).await.status, 503);
    server.abort();
}
