//! Timeouts for every state of an exchange, end to end on loopback with raw sockets: a client
//! that stops reading a response (its TCP window then closes) or starts with a tiny receive
//! window, a client whose upload stops or trickles at a byte a second, a backend that stalls in
//! the middle of a body, and bodies over `max_body_bytes`. Each is closed within its timeout
//! plus a second, counted by reason, and a client making requests at the same time sees no
//! failure. Also the redirect listener's own limits.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a test panics with a message; helpers here are part of the tests"
)]

mod common;

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use common::{
    http::{Behaviour, RawBackend},
    l7::{HOST, Settings, Site, http_backends, until},
};
use lb::{config::l7::UPLOAD_GRACE, lab::l7::get};
use tokio::net::TcpSocket;

/// How much later than due a timeout may close: the bound.
const SLACK: Duration = Duration::from_secs(1);
/// The test's timeouts.
const TIMEOUT: Duration = Duration::from_secs(1);

/// A client making a request every 20 ms until stopped: (answered 200, failed).
struct Legitimate {
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<(u64, u64)>,
}

impl Legitimate {
    async fn start(site: &Site) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let mut conn = site.https(false).await;
        let stopped = Arc::clone(&stop);
        let task = tokio::spawn(async move {
            let (mut ok, mut failed) = (0, 0);
            while !stopped.load(Ordering::Relaxed) {
                match conn.send(get(HOST, "/", None)).await {
                    Ok(answer) if answer.status.as_u16() == 200 => ok += 1,
                    _ => failed += 1,
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            (ok, failed)
        });
        Self { stop, task }
    }

    async fn stop(self) {
        self.stop.store(true, Ordering::Relaxed);
        let (ok, failed) = self.task.await.unwrap();
        assert_eq!(failed, 0, "the legitimate client's requests failed");
        assert!(ok > 10, "the legitimate client made {ok} requests");
    }
}

/// Waits until `counter` reaches `n`; how long that took from `since`. Panics past `limit`.
async fn counted(
    site: &Site,
    counter: impl Fn(&lb::l7::proxy::Counters) -> &AtomicU64,
    n: u64,
    since: Instant,
    limit: Duration,
) -> Duration {
    loop {
        if site.counter(&counter) >= n {
            return since.elapsed();
        }
        assert!(
            since.elapsed() <= limit,
            "not counted within {limit:?} (counter at {}; counters {:?})",
            site.counter(&counter),
            site.proxy().counters.events()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_takes_nothing_of_its_response_is_closed_after_client_timeout() {
    let settings = Settings {
        http: "client_timeout = \"1s\"\nidle_timeout = \"30s\"",
        ..Settings::default()
    };
    let site = Site::start("lb-l7-slowread", http_backends(1).await, &[], settings);
    let legitimate = Legitimate::start(&site).await;

    // One client stops reading: 64 MiB fill the socket buffers both ways, then writes stall.
    let mut reader = site.h1().await;
    let request = format!("GET /bytes?n={} HTTP/1.1\r\nHost: {HOST}\r\n\r\n", 64 << 20);
    reader.write(request.as_bytes()).await.unwrap();
    // Another opens with a receive window of a few kilobytes and never reads.
    let socket = TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(2048).unwrap();
    let tcp = socket.connect(site.address).await.unwrap();
    let mut zero_window = site.h1_over(tcp).await;
    zero_window.write(request.as_bytes()).await.unwrap();
    let start = Instant::now();

    tokio::time::sleep(TIMEOUT - Duration::from_millis(100)).await;
    assert_eq!(
        site.counter(|c| &c.client_timeouts),
        0,
        "closed before client_timeout"
    );
    let took = counted(&site, |c| &c.client_timeouts, 2, start, TIMEOUT + SLACK).await;
    println!("both stalled readers closed {took:?} after their requests");
    for (name, conn) in [
        ("slow reader", &mut reader),
        ("zero window", &mut zero_window),
    ] {
        assert!(
            conn.closed_within(Duration::from_secs(5)).await.is_some(),
            "{name}: the connection ends once what was sent is read"
        );
    }
    until("only the legitimate client's connection open", || {
        site.proxy().open_connections() == 1
    })
    .await;
    legitimate.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_that_stops_or_trickles_is_answered_408_and_closed() {
    let settings = Settings {
        http: "client_timeout = \"1s\"\nidle_timeout = \"30s\"",
        ..Settings::default()
    };
    // A backend that reads a request whole before it answers.
    let backend = RawBackend::start(Behaviour::Answer(
        "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
    ))
    .await;
    let site = Site::start("lb-l7-slowupload", Vec::new(), &[backend.port()], settings);
    let legitimate = Legitimate::start(&site).await;
    let head = format!("POST / HTTP/1.1\r\nHost: {HOST}\r\nContent-Length: 1000\r\n\r\n");

    // Stops after 10 bytes: nothing more for client_timeout.
    let stops = async {
        let mut conn = site.h1().await;
        conn.write(head.as_bytes()).await.unwrap();
        conn.write(&[b'x'; 10]).await.unwrap();
        let start = Instant::now();
        let answer = conn.response().await;
        let took = start.elapsed();
        assert_eq!(answer.status, 408, "{answer:?}");
        assert!(
            took + Duration::from_millis(50) >= TIMEOUT,
            "after {took:?}"
        );
        assert!(took <= TIMEOUT + SLACK, "after {took:?}");
        assert!(conn.closed_within(SLACK).await.is_some(), "and closed");
    };
    // Two bytes a second (a byte every 500 ms, never quiet for client_timeout): under the
    // default 240 bytes a second once the grace has run.
    let trickles = async {
        let mut conn = site.h1().await;
        conn.write(head.as_bytes()).await.unwrap();
        let start = Instant::now();
        let write = async {
            for _ in 0..2 * (UPLOAD_GRACE + SLACK).as_secs() {
                // Once answered and closed, a write fails: that is the point.
                if conn.write(b"x").await.is_err() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        };
        let watch = counted(&site, |c| &c.slow_uploads, 1, start, UPLOAD_GRACE + SLACK);
        let ((), took) = tokio::join!(write, watch);
        assert!(
            took + Duration::from_millis(50) >= UPLOAD_GRACE,
            "after {took:?}"
        );
        let answer = conn.response().await;
        assert_eq!(answer.status, 408, "{answer:?}");
    };
    tokio::join!(stops, trickles);
    assert_eq!(site.counter(|c| &c.client_timeouts), 1);
    assert_eq!(site.counter(|c| &c.slow_uploads), 1);
    assert_eq!(
        site.counter(|c| &c.backend_errors),
        0,
        "not the backend's failure"
    );
    legitimate.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_that_stalls_mid_body_is_closed_after_server_timeout() {
    let stalling = RawBackend::start(Behaviour::Stall(
        "HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\nthe first part",
    ))
    .await;
    let settings = Settings {
        backend: "server_timeout = \"1s\"",
        http: "idle_timeout = \"30s\"\nh2_max_resets_per_second = 5",
        ..Settings::default()
    };
    let site = Site::start("lb-l7-stall", Vec::new(), &[stalling.port()], settings);

    let mut conn = site.h1().await;
    conn.write(format!("GET / HTTP/1.1\r\nHost: {HOST}\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let start = Instant::now();
    let closed = conn
        .closed_within(TIMEOUT + SLACK)
        .await
        .expect("closed within server_timeout and a second");
    assert!(
        closed + Duration::from_millis(50) >= TIMEOUT,
        "after {closed:?}"
    );
    assert_eq!(site.counter(|c| &c.server_timeouts), 1);
    // HTTP/2: each stream is reset, the connection goes on; ten backend failures are not
    // the client's cancellations (past 5 a second, a reset flood would close it).
    let mut h2 = site.h2().await;
    let streams: Vec<u32> = (0..10).map(|i| 2 * i + 1).collect();
    for &id in &streams {
        h2.write(&common::http::h2_get(id, "/", &[])).await.unwrap();
    }
    let mut reset = std::collections::BTreeSet::new();
    let all = tokio::time::timeout(TIMEOUT + SLACK, async {
        while reset.len() < streams.len() {
            let frame = h2.frame().await.expect("a frame");
            if frame.kind == common::http::RST_STREAM {
                reset.insert(frame.stream);
            }
        }
    })
    .await;
    assert!(all.is_ok(), "HTTP/2: streams reset in time: {reset:?}");
    assert_eq!(site.counter(|c| &c.server_timeouts), 11);
    assert_eq!(
        site.counter(|c| &c.reset_floods),
        0,
        "not blamed on the client"
    );
    println!("stalled backend: closed after {:?}", start.elapsed());
    until("the balancer closed its connections to the backend", || {
        site.proxy().open_connections() == 1
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_over_max_body_bytes_is_413() {
    let backend = RawBackend::start(Behaviour::Answer(
        "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
    ))
    .await;
    let settings = Settings {
        http: "max_body_bytes = 1000",
        ..Settings::default()
    };
    let site = Site::start("lb-l7-413", Vec::new(), &[backend.port()], settings);
    let post = |headers: &str| format!("POST / HTTP/1.1\r\nHost: {HOST}\r\n{headers}\r\n");

    let mut conn = site.h1().await;
    conn.write(post("Content-Length: 1000\r\n").as_bytes())
        .await
        .unwrap();
    conn.write(&[b'x'; 1000]).await.unwrap();
    assert_eq!(conn.response().await.status, 200, "at the limit");

    let mut conn = site.h1().await;
    conn.write(post("Content-Length: 1001\r\n").as_bytes())
        .await
        .unwrap();
    let answer = conn.response().await;
    assert_eq!(answer.status, 413, "declared over the limit: {answer:?}");
    assert_eq!(answer.header("connection"), Some("close"));
    assert_eq!(backend.requests(), 1, "never sent to the backend");

    let mut conn = site.h1().await;
    conn.write(post("Transfer-Encoding: chunked\r\n").as_bytes())
        .await
        .unwrap();
    for _ in 0..3 {
        conn.write(format!("190\r\n{}\r\n", "y".repeat(400)).as_bytes())
            .await
            .unwrap();
    }
    conn.write(b"0\r\n\r\n").await.unwrap();
    let answer = conn.response().await;
    assert_eq!(answer.status, 413, "chunked over the limit: {answer:?}");
    assert_eq!(site.counter(|c| &c.body_too_large), 2);
    assert_eq!(site.counter(|c| &c.backend_errors), 0);
}

/// Sends `bytes` on `tcp` and reads what comes back until the server closes or `limit`
/// passes: the text, and whether it closed.
async fn plain_exchange(
    tcp: &mut tokio::net::TcpStream,
    bytes: &[u8],
    limit: Duration,
) -> (String, bool) {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    tcp.write_all(bytes).await.unwrap();
    let mut answer = Vec::new();
    let closed = tokio::time::timeout(limit, async {
        let mut chunk = [0u8; 4096];
        loop {
            match tcp.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => answer.extend_from_slice(&chunk[..n]),
            }
        }
    })
    .await
    .is_ok();
    (String::from_utf8_lossy(&answer).into_owned(), closed)
}

/// The redirect listener has the TLS listener's connection cap (a cap of its own) and clock:
/// past `max_connections` a connection waits; a slow head is closed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_redirect_listener_has_its_own_connection_cap_and_the_same_timeouts() {
    let redirect = common::l7::free_port();
    let listener = format!("redirect_http_port = {redirect}");
    let settings = Settings {
        listener: &listener,
        http: "max_connections = 1\nheader_read_timeout = \"500ms\"\nidle_timeout = \"30s\"",
        ..Settings::default()
    };
    let site = Site::start("lb-l7-redirect", http_backends(1).await, &[], settings);
    let address = std::net::SocketAddr::from(([127, 0, 0, 1], redirect));
    let get = format!("GET /x HTTP/1.1\r\nHost: {HOST}\r\n\r\n");

    // The one place: a kept-alive connection.
    let mut first = tokio::net::TcpStream::connect(address).await.unwrap();
    let (answer, closed) =
        plain_exchange(&mut first, get.as_bytes(), Duration::from_millis(300)).await;
    assert!(answer.starts_with("HTTP/1.1 308"), "{answer}");
    assert!(!closed, "kept alive");
    // A second waits in the backlog, unanswered.
    let mut second = tokio::net::TcpStream::connect(address).await.unwrap();
    let (answer, _) = plain_exchange(&mut second, get.as_bytes(), Duration::from_millis(700)).await;
    assert!(
        answer.is_empty(),
        "answered past max_connections = 1: {answer}"
    );
    // The TLS listener's place is its own.
    let mut tls = site.h1().await;
    tls.write(get.as_bytes()).await.unwrap();
    assert_eq!(tls.response().await.status, 200);
    drop(tls);

    // The first sends half a head: closed at header_read_timeout, and the second is served.
    let start = Instant::now();
    let (_, closed) =
        plain_exchange(&mut first, b"GET / HTTP/1.1\r\n", Duration::from_secs(2)).await;
    assert!(closed, "a slow head on the redirect port is closed");
    let took = start.elapsed();
    assert!(
        took + Duration::from_millis(50) >= Duration::from_millis(500),
        "after {took:?}"
    );
    let (answer, _) = plain_exchange(&mut second, b"", Duration::from_millis(500)).await;
    assert!(
        answer.starts_with("HTTP/1.1 308"),
        "once the first closed: {answer}"
    );
    assert_eq!(site.counter(|c| &c.slow_heads), 1);
}

/// The response timeout starts once the request has been sent whole: a steady upload longer
/// than it is answered. A client that cuts its upload short is the client's error, not the
/// backend's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_response_timeout_starts_after_the_upload_and_a_cut_upload_is_the_clients_error() {
    let backend = RawBackend::start(Behaviour::Answer(
        "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
    ))
    .await;
    let settings = Settings {
        backend: "response_timeout = \"500ms\"",
        http: "idle_timeout = \"30s\"",
        ..Settings::default()
    };
    let site = Site::start("lb-l7-uploadtime", Vec::new(), &[backend.port()], settings);

    // 1.5 s of upload, a chunk every 300 ms, to a backend that answers once it has it all.
    let mut conn = site.h1().await;
    let head = format!("POST / HTTP/1.1\r\nHost: {HOST}\r\nTransfer-Encoding: chunked\r\n\r\n");
    conn.write(head.as_bytes()).await.unwrap();
    for i in 0..5 {
        tokio::time::sleep(Duration::from_millis(300)).await;
        conn.write(format!("6\r\npart {i}\r\n").as_bytes())
            .await
            .unwrap();
    }
    conn.write(b"0\r\n\r\n").await.unwrap();
    let answer = conn.response().await;
    assert_eq!(answer.status, 200, "a slow, steady upload: {answer:?}");
    assert_eq!(site.counter(|c| &c.backend_timeouts), 0);

    // A client that closes its connection halfway through its body.
    let mut conn = site.h1().await;
    let head = format!("POST / HTTP/1.1\r\nHost: {HOST}\r\nContent-Length: 1000\r\n\r\n");
    conn.write(head.as_bytes()).await.unwrap();
    conn.write(&[b'x'; 100]).await.unwrap();
    drop(conn);
    until("the cut upload counted as the client's", || {
        site.counter(|c| &c.bad_requests) == 1
    })
    .await;
    assert_eq!(site.counter(|c| &c.backend_errors), 0, "not the backend's");
    assert_eq!(site.counter(|c| &c.responses[4]), 0, "no 5xx");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http2_client_that_keeps_its_window_shut_is_closed_after_client_timeout() {
    let settings = Settings {
        http: "client_timeout = \"1s\"\nidle_timeout = \"30s\"",
        ..Settings::default()
    };
    let site = Site::start("lb-l7-h2window", http_backends(1).await, &[], settings);
    let legitimate = Legitimate::start(&site).await;

    // An HTTP/2 client that reads the head of a large response and never takes its body:
    // the stream's and the connection's windows fill, and the proxy has nothing it may send,
    // while its socket never blocks.
    let tls = site.tls(b"h2").await;
    let (mut send, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(tls),
    )
    .await
    .unwrap();
    let connection = tokio::spawn(conn);
    let path = format!("/bytes?n={}", 64 << 20);
    let response = send.send_request(get(HOST, &path, None)).await.unwrap();
    assert_eq!(response.status(), 200);
    let start = Instant::now();
    tokio::time::sleep(TIMEOUT - Duration::from_millis(100)).await;
    assert_eq!(
        site.counter(|c| &c.client_timeouts),
        0,
        "closed before client_timeout"
    );
    let took = counted(&site, |c| &c.client_timeouts, 1, start, TIMEOUT + SLACK).await;
    println!("the HTTP/2 client with a shut window closed {took:?} after its response head");
    tokio::time::timeout(Duration::from_secs(5), connection)
        .await
        .expect("the client's connection ends")
        .unwrap()
        .ok();
    drop(response);
    until("only the legitimate client's connection open", || {
        site.proxy().open_connections() == 1
    })
    .await;
    legitimate.stop().await;
}
