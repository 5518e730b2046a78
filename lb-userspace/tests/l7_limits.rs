//! The L7 listeners' limits end to end, in-process on loopback (issue 5), with short timeouts
//! so that each test takes a second or two: request head size (431) and target length (414,
//! issue 10), slow request heads and
//! TLS handshakes, idle keep-alive connections, the connection limit, HTTP/2 concurrent streams
//! and reset floods, and the backend connect and response timeouts (502, 504).
//!
//! Timings are asserted with generous margins: a limit is never enforced early, and is enforced
//! within 2 s of being due.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a test panics with a message; helpers here are part of the tests"
)]

mod common;

use std::time::{Duration, Instant};

use common::{
    http::{
        ACK, CANCEL, DATA, END_STREAM, GOAWAY, HEADERS, HangingBackend, REFUSED_STREAM, RST_STREAM,
        SETTINGS, SETTINGS_MAX_CONCURRENT_STREAMS, assert_body_names_no_backend,
        assert_plain_error, h2_get, h2_request, h2_reset, read_frame,
    },
    l7::{
        HOST, LISTENER, POOL, Settings, Site, TIMEOUT, free_port, http_backends, loopback, until,
    },
};
use lb::{
    config::{
        Config,
        l7::{AccessLogFormat, AccessLogSettings, AccessLogTarget},
    },
    lab::l7::{ListenerToml, get, pool_toml},
};
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::TcpStream,
};

/// The HTTP/2 error code of a peer that is asked to send less.
const ENHANCE_YOUR_CALM: u32 = 0xb;
/// How much later than due a limit may be enforced.
const SLACK: Duration = Duration::from_secs(2);
/// How much earlier than due a close may be seen: the server's clock starts a little after the
/// client's (and counts whole milliseconds).
const EARLY: Duration = Duration::from_millis(50);

/// A GET of `path` on an HTTP/1.1 connection.
fn get_h1(path: &str) -> Vec<u8> {
    format!("GET {path} HTTP/1.1\r\nHost: {HOST}\r\n\r\n").into_bytes()
}

/// Asserts that a close after `elapsed` honours a limit of `limit`: not before, and not much
/// after.
fn assert_closed_at(what: &str, elapsed: Option<Duration>, limit: Duration) {
    let elapsed = elapsed.unwrap_or_else(|| panic!("{what}: still open {SLACK:?} after {limit:?}"));
    assert!(
        elapsed + EARLY >= limit,
        "{what}: closed after {elapsed:?}, before {limit:?}"
    );
    assert!(
        elapsed <= limit + SLACK,
        "{what}: closed after {elapsed:?}, long after {limit:?}"
    );
}

#[test]
fn limits_and_timeouts_have_defaults() {
    let mut listener = ListenerToml::new("offload", POOL);
    listener
        .certificates
        .push(("www.pem".into(), "www.key".into()));
    let text = pool_toml(POOL, &[(loopback(8080), None)]) + &listener.text(LISTENER, 443);
    let config = Config::parse(&text, "defaults.toml").unwrap();
    let l7 = config.listeners["web"].l7.clone().unwrap();
    let http = l7.http;
    assert_eq!(http.max_header_bytes, 64 * 1024);
    assert_eq!(http.header_read_timeout, Duration::from_secs(10));
    assert_eq!(http.idle_timeout, Duration::from_secs(60));
    assert_eq!(http.max_connections, 10_000);
    assert_eq!(http.h2_max_concurrent_streams, 128);
    assert_eq!(http.h2_max_resets_per_second, 100);
    assert_eq!(l7.backend.connect_timeout, Duration::from_secs(5));
    assert_eq!(l7.backend.response_timeout, Duration::from_secs(60));
    assert_eq!(http.client_timeout, Duration::from_secs(60));
    assert_eq!(http.min_upload_rate, 240);
    assert_eq!(http.max_body_bytes, None);
    assert_eq!(l7.backend.server_timeout, Duration::from_secs(60));
}

/// Over HTTP/1.1, a head whose fields are over `max_header_bytes` is 431 and the connection
/// closed, counted (`heads_too_large`, among the 4xx): by the proxy up to the limit and a
/// target more, by the HTTP layer past that.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_head_over_max_header_bytes_is_431() {
    let settings = Settings {
        http: "max_header_bytes = 8192",
        ..Settings::default()
    };
    let site = Site::start("lb-l7-431", http_backends(1).await, &[], settings);
    let header = |n: usize| format!("x-big: {}\r\n", "a".repeat(n));

    let mut conn = site.h1().await;
    let small = format!("GET / HTTP/1.1\r\nHost: {HOST}\r\n{}\r\n", header(6 * 1024));
    conn.write(small.as_bytes()).await.unwrap();
    assert_eq!(conn.response().await.status, 200, "under the limit");
    for (size, counted) in [(10 * 1024, 1), (20 * 1024, 2)] {
        let big = format!("GET / HTTP/1.1\r\nHost: {HOST}\r\n{}\r\n", header(size));
        conn.write(big.as_bytes()).await.unwrap();
        let answer = conn.response().await;
        assert_eq!(answer.status, 431, "HTTP/1.1, {size} B: {answer:?}");
        assert!(
            conn.closed_within(TIMEOUT).await.is_some(),
            "HTTP/1.1, {size} B: the connection closed"
        );
        until("the 431 counted", || {
            site.counter(|c| &c.heads_too_large) == counted
        })
        .await;
        assert_eq!(site.counter(|c| &c.responses[3]), counted, "among the 4xx");
        conn = site.h1().await;
    }
    assert_eq!(
        site.backend(0).requests(),
        1,
        "only the one under the limit"
    );
}

/// Over HTTP/2, a header block over `max_header_bytes` gets a 431 on its stream, whatever its
/// size, and the connection serves on: no reset of the stream after its answer, no GOAWAY
/// (a client would retry a refused stream or a closed connection, in a loop). A block up to
/// twice the limit (and a target) is answered and counted by the proxy; a larger one by the
/// HTTP/2 layer, which closed the connection past four times the limit before (`hyper`'s
/// client splits such a block into CONTINUATION frames).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http2_header_block_over_max_header_bytes_is_431_and_the_connection_serves_on() {
    let settings = Settings {
        http: "max_header_bytes = 8192",
        ..Settings::default()
    };
    let site = Site::start("lb-l7-431-h2", http_backends(1).await, &[], settings);
    let mut conn = site.https(true).await;
    for (size, status) in [
        (6 * 1024, 200),
        (10 * 1024, 431),
        (40 * 1024, 431),
        (64 * 1024, 431),
        (0, 200),
    ] {
        let mut request = get(HOST, "/", None);
        request
            .headers_mut()
            .insert("x-big", "a".repeat(size).parse().unwrap());
        let answer = conn
            .send(request)
            .await
            .unwrap_or_else(|e| panic!("HTTP/2, {size} B: the connection failed: {e}"));
        assert_eq!(answer.status.as_u16(), status, "HTTP/2, {size} B");
    }
    assert_eq!(site.backend(0).requests(), 2, "only those under the limit");
    assert_eq!(
        site.counter(|c| &c.heads_too_large),
        1,
        "the one the proxy answered"
    );

    // Raw frames: a block over the limit on a request with a body, then another request.
    let mut raw = site.h2().await;
    let big = "a".repeat(12 * 1024);
    raw.write(&h2_request(1, "/", &[("x-big", &big)], Some(b"hello")))
        .await
        .unwrap();
    raw.write(&h2_get(3, "/", &[])).await.unwrap();
    let (mut body, mut status, mut ok) = (Vec::new(), None, false);
    while let Some(frame) = raw.frame().await {
        assert_ne!(frame.kind, RST_STREAM, "no reset: {frame:?}");
        assert_ne!(frame.kind, GOAWAY, "no GOAWAY: {frame:?}");
        if frame.stream == 1 && frame.kind == DATA {
            body.extend(&frame.payload);
        }
        if frame.stream == 1 && frame.kind == HEADERS {
            status = frame.status();
        }
        ok |= frame.stream == 3 && frame.is_ok_head();
        if frame.stream == 3 && frame.flags & END_STREAM != 0 {
            break;
        }
    }
    assert_eq!(status, Some(431), "stream 1's answer");
    assert!(
        String::from_utf8_lossy(&body).starts_with("431 "),
        "the proxy's own: {body:?}"
    );
    assert!(ok, "stream 3 answered 200");
    until("the 431 counted", || {
        site.counter(|c| &c.heads_too_large) == 2
    })
    .await;
}

/// A request target over 8 KiB is 414 (counted as `uri_too_long`), over HTTP/1.1 and HTTP/2,
/// up to 64 KiB and beyond it; one of 8 KiB reaches the backend.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_target_over_8_kib_is_414() {
    let site = Site::start(
        "lb-l7-414",
        http_backends(1).await,
        &[],
        Settings::default(),
    );
    let path = |n: usize| format!("/{}", "p".repeat(n - 1));
    let mut refused = 0;
    for (length, status) in [
        (8 * 1024, 200),
        (8 * 1024 + 1, 414),
        (60 * 1024, 414),
        (64 * 1024, 414),
    ] {
        let mut conn = site.h1().await;
        conn.write(&get_h1(&path(length))).await.unwrap();
        let answer = conn.response().await;
        assert_eq!(answer.status, status, "HTTP/1.1, a target of {length} B");
        refused += u64::from(status == 414);
        until("the 414 counted", || {
            site.counter(|c| &c.uri_too_long) == refused
        })
        .await;

        // The `http` crate (hence hyper's client) holds no URI over 65 534 bytes.
        if length < 64 * 1024 {
            let mut conn = site.https(true).await;
            let answer = conn.send(get(HOST, &path(length), None)).await.unwrap();
            assert_eq!(
                answer.status.as_u16(),
                status,
                "HTTP/2, a target of {length} B"
            );
            refused += u64::from(status == 414);
            until("the 414 counted", || {
                site.counter(|c| &c.uri_too_long) == refused
            })
            .await;
        }
    }
    assert_eq!(site.counter(|c| &c.responses[3]), refused, "among the 4xx");
    assert_eq!(site.counter(|c| &c.heads_too_large), 0);
    assert_eq!(site.backend(0).requests(), 2, "the 8 KiB targets");

    // Over HTTP/2, a `:path` over 65 534 bytes cannot be decoded (the `http` crate's limit):
    // the HTTP/2 layer answers 431 for the whole block (not counted: the proxy never sees it),
    // rather than resetting the stream; the connection serves on.
    let mut raw = site.h2().await;
    raw.write(&h2_request(1, &path(64 * 1024), &[], None))
        .await
        .unwrap();
    raw.write(&h2_get(3, "/", &[])).await.unwrap();
    let (mut answered, mut ok) = (None, false);
    while let Some(frame) = raw.frame().await {
        assert_ne!(frame.kind, RST_STREAM, "no reset: {frame:?}");
        assert_ne!(frame.kind, GOAWAY, "no GOAWAY: {frame:?}");
        if frame.stream == 1 && frame.kind == HEADERS {
            answered = frame.status();
        }
        ok |= frame.stream == 3 && frame.is_ok_head();
        if frame.stream == 3 && frame.flags & END_STREAM != 0 {
            break;
        }
    }
    assert_eq!(answered, Some(431), "HTTP/2, a target of 64 KiB");
    assert!(ok, "the next stream answered 200");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_request_head_is_closed_after_header_read_timeout() {
    let timeout = Duration::from_millis(300);
    let settings = Settings {
        http: "header_read_timeout = \"300ms\"\nidle_timeout = \"10s\"",
        ..Settings::default()
    };
    let site = Site::start("lb-l7-slowhead", http_backends(1).await, &[], settings);
    let half = format!("GET /headers HTTP/1.1\r\nHost: {HOST}\r\n");

    // A new connection whose first request head never ends.
    let mut conn = site.h1().await;
    conn.write(half.as_bytes()).await.unwrap();
    assert_closed_at(
        "a half head",
        conn.closed_within(timeout + SLACK).await,
        timeout,
    );

    // A kept-alive connection whose next head is slow: idle for longer than the header
    // timeout first (that is allowed), then half a head.
    let mut conn = site.h1().await;
    conn.write(&get_h1("/")).await.unwrap();
    assert_eq!(conn.response().await.status, 200);
    tokio::time::sleep(timeout * 2).await;
    conn.write(half.as_bytes()).await.unwrap();
    assert_closed_at(
        "a slow second head",
        conn.closed_within(timeout + SLACK).await,
        timeout,
    );

    assert_eq!(site.counter(|c| &c.slow_heads), 2);
    assert_eq!(site.backend(0).requests(), 1, "no half request went on");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_handshake_that_does_not_come_is_closed_after_header_read_timeout() {
    let timeout = Duration::from_millis(300);
    let settings = Settings {
        http: "header_read_timeout = \"300ms\"",
        ..Settings::default()
    };
    let site = Site::start("lb-l7-slowtls", http_backends(1).await, &[], settings);
    let mut tcp = TcpStream::connect(site.address).await.unwrap();
    let start = Instant::now();
    let mut buf = [0u8; 64];
    let read = tokio::time::timeout(timeout + SLACK, tcp.read(&mut buf)).await;
    assert!(
        matches!(read, Ok(Ok(0) | Err(_))),
        "closed without a byte: {read:?}"
    );
    assert_closed_at("no ClientHello", Some(start.elapsed()), timeout);
    assert_eq!(site.counter(|c| &c.handshake_failures), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_connection_is_closed_after_idle_timeout_and_not_before() {
    // The header timeout is shorter: it must not cut idle connections.
    let idle = Duration::from_millis(500);
    let settings = Settings {
        http: "idle_timeout = \"500ms\"\nheader_read_timeout = \"300ms\"",
        ..Settings::default()
    };
    let site = Site::start("lb-l7-idle", http_backends(1).await, &[], settings);

    let mut h1 = site.h1().await;
    h1.write(&get_h1("/")).await.unwrap();
    assert_eq!(h1.response().await.status, 200);
    assert_closed_at("HTTP/1.1", h1.closed_within(idle + SLACK).await, idle);

    let mut h2 = site.h2().await;
    h2.write(&h2_get(1, "/", &[])).await.unwrap();
    assert!(h2.answered_ok(1).await);
    assert_closed_at("HTTP/2", h2.closed_within(idle + SLACK).await, idle);

    // Never a request: idle from the handshake on.
    let mut h1 = site.h1().await;
    assert_closed_at("no request", h1.closed_within(idle + SLACK).await, idle);
    assert_eq!(site.counter(|c| &c.idle_closed), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_request_in_flight_outlives_the_idle_timeout() {
    let settings = Settings {
        http: "idle_timeout = \"500ms\"\nheader_read_timeout = \"300ms\"",
        ..Settings::default()
    };
    let site = Site::start("lb-l7-inflight", http_backends(1).await, &[], settings);

    // At once: a slow response on HTTP/1.1 and on HTTP/2, and a slow upload (a chunk every
    // 300 ms for 1.5 s). Each connection is dropped as soon as it is answered: any idle close
    // counted would be one of these three, cut while its request was in flight.
    let slow_h1 = async {
        let mut h1 = site.h1().await;
        h1.write(&get_h1("/delay?ms=1500")).await.unwrap();
        let answer = h1.response().await;
        assert_eq!(answer.status, 200, "{answer:?}");
        assert_eq!(answer.text(), "backend-0\n");
    };
    let slow_h2 = async {
        let mut h2 = site.h2().await;
        h2.write(&h2_get(1, "/delay?ms=1500", &[])).await.unwrap();
        assert!(h2.answered_ok(1).await, "HTTP/2");
    };
    let slow_upload = async {
        let mut h1 = site.h1().await;
        let head =
            format!("POST /echo HTTP/1.1\r\nHost: {HOST}\r\nTransfer-Encoding: chunked\r\n\r\n");
        h1.write(head.as_bytes()).await.unwrap();
        for i in 0..5 {
            tokio::time::sleep(Duration::from_millis(300)).await;
            h1.write(format!("6\r\npart {i}\r\n").as_bytes())
                .await
                .unwrap();
        }
        h1.write(b"0\r\n\r\n").await.unwrap();
        let answer = h1.response().await;
        assert_eq!(answer.status, 200, "{answer:?}");
        assert_eq!(answer.text(), "part 0part 1part 2part 3part 4");
    };
    tokio::join!(slow_h1, slow_h2, slow_upload);
    assert_eq!(site.counter(|c| &c.idle_closed), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_max_connections_a_new_connection_waits_for_one_to_close() {
    let settings = Settings {
        http: "max_connections = 2\nidle_timeout = \"30s\"",
        ..Settings::default()
    };
    let site = Site::start("lb-l7-maxconn", http_backends(1).await, &[], settings);
    let first = site.tls(b"http/1.1").await;
    let mut second = site.h1().await;

    // The kernel completes the third's TCP handshake; its TLS handshake waits.
    let tcp = TcpStream::connect(site.address).await.unwrap();
    let mut third = std::pin::pin!(site.handshake(tcp, b"http/1.1"));
    let early = tokio::time::timeout(Duration::from_millis(700), &mut third).await;
    assert!(
        early.is_err(),
        "a third handshake ended past max_connections = 2: {early:?}"
    );
    // The two first still work.
    second.write(&get_h1("/")).await.unwrap();
    assert_eq!(second.response().await.status, 200);

    let closed = Instant::now();
    drop(first);
    let third = tokio::time::timeout(SLACK, third)
        .await
        .expect("the third handshake completes once one of the first two closed")
        .expect("the third handshake succeeds");
    assert!(closed.elapsed() < SLACK);
    drop(third);
    assert_eq!(site.counter(|c| &c.connections), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_concurrent_streams_are_advertised_and_no_more_are_served_at_once() {
    let settings = Settings {
        http: "h2_max_concurrent_streams = 3",
        ..Settings::default()
    };
    let site = Site::start("lb-l7-streams", http_backends(1).await, &[], settings);
    let mut h2 = site.h2().await;
    // Five streams at once, ignoring the limit the server is about to announce.
    let mut requests = Vec::new();
    for id in [1, 3, 5, 7, 9] {
        requests.extend(h2_get(id, "/delay?ms=800", &[]));
    }
    h2.write(&requests).await.unwrap();

    let mut advertised = None;
    let mut refused = Vec::new();
    let mut answered = Vec::new();
    while answered.len() + refused.len() < 5 {
        let frame = h2.frame().await.expect("the connection stays open");
        match frame.kind {
            SETTINGS if frame.flags & ACK == 0 => {
                advertised = frame
                    .settings()
                    .iter()
                    .find(|(id, _)| *id == SETTINGS_MAX_CONCURRENT_STREAMS)
                    .map(|(_, value)| *value);
            }
            RST_STREAM => {
                assert_eq!(frame.error_code(), Some(REFUSED_STREAM), "{frame:?}");
                assert!(
                    site.backend(0).requests() <= 3,
                    "no more than 3 at the backend"
                );
                refused.push(frame.stream);
            }
            _ if frame.is_ok_head() => answered.push(frame.stream),
            _ => {}
        }
    }
    assert_eq!(advertised, Some(3), "the SETTINGS value the client sees");
    answered.sort_unstable();
    refused.sort_unstable();
    assert_eq!(answered, [1, 3, 5]);
    assert_eq!(refused, [7, 9]);
    assert_eq!(site.backend(0).requests(), 3);

    // A refused stream may be sent again once one ended.
    h2.write(&h2_get(11, "/", &[])).await.unwrap();
    assert!(h2.answered_ok(11).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelling_streams_faster_than_allowed_closes_the_connection_and_slower_does_not() {
    let settings = Settings {
        http: "h2_max_resets_per_second = 5\nidle_timeout = \"30s\"",
        ..Settings::default()
    };
    let site = Site::start("lb-l7-resets", http_backends(1).await, &[], settings);
    let backend = &site.lab.backends[0];

    // Three cancelled requests, each once the backend has it: under the limit.
    let mut h2 = site.h2().await;
    for id in [1, 3, 5] {
        let before = backend.requests();
        h2.write(&h2_get(id, "/delay?ms=5000", &[])).await.unwrap();
        until("the request at the backend", || backend.requests() > before).await;
        h2.write(&h2_reset(id, CANCEL)).await.unwrap();
    }
    h2.write(&h2_get(7, "/", &[])).await.unwrap();
    assert!(h2.answered_ok(7).await, "the connection still serves");
    assert_eq!(site.counter(|c| &c.reset_floods), 0);

    // Twenty, as fast as the backend sees them: the connection is closed.
    let h2 = site.h2().await;
    let (mut reader, mut writer) = tokio::io::split(h2.stream);
    let closing = tokio::spawn(async move {
        let mut goaway = None;
        while let Some(frame) = read_frame(&mut reader).await {
            if frame.kind == GOAWAY {
                goaway = frame.error_code();
            }
        }
        goaway
    });
    let (mut sent, flood) = (0, Instant::now());
    for id in (1..40).step_by(2) {
        if closing.is_finished() {
            break;
        }
        let before = backend.requests();
        if writer
            .write_all(&h2_get(id, "/delay?ms=5000", &[]))
            .await
            .is_err()
        {
            break;
        }
        let start = Instant::now();
        while backend.requests() == before
            && !closing.is_finished()
            && start.elapsed() < Duration::from_secs(1)
        {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        if writer.write_all(&h2_reset(id, CANCEL)).await.is_err() {
            break;
        }
        sent += 1;
    }
    let goaway = tokio::time::timeout(SLACK, closing)
        .await
        .unwrap_or_else(|_| {
            panic!(
                "still open after {sent} cancellations in {:?}",
                flood.elapsed()
            )
        })
        .unwrap();
    assert_eq!(site.counter(|c| &c.reset_floods), 1, "GOAWAY {goaway:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelling_streams_once_answered_faster_than_allowed_closes_the_connection() {
    let settings = Settings {
        http: "h2_max_resets_per_second = 5\nidle_timeout = \"30s\"",
        ..Settings::default()
    };
    let site = Site::start("lb-l7-resets-late", http_backends(1).await, &[], settings);
    let mut h2 = site.h2().await;
    let (mut cancelled, start) = (0, Instant::now());
    'flood: for id in (1..40).step_by(2) {
        // A large body (flow control holds it back); cancelled once its head arrived.
        if h2
            .write(&h2_get(id, "/bytes?n=10000000", &[]))
            .await
            .is_err()
        {
            break;
        }
        loop {
            let Some(frame) = h2.frame().await else {
                break 'flood;
            };
            if frame.stream == id && frame.is_ok_head() {
                break;
            }
        }
        if h2.write(&h2_reset(id, CANCEL)).await.is_err() {
            break;
        }
        cancelled += 1;
    }
    let closed = h2.closed_within(SLACK).await;
    assert!(
        closed.is_some(),
        "still open after {cancelled} cancellations in {:?}",
        start.elapsed()
    );
    assert_eq!(site.counter(|c| &c.reset_floods), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_streams_reset_at_once_closes_the_connection() {
    let settings = Settings {
        http: "h2_max_resets_per_second = 5\nidle_timeout = \"30s\"",
        ..Settings::default()
    };
    let site = Site::start("lb-l7-burst", http_backends(1).await, &[], settings);
    let mut h2 = site.h2().await;
    let mut burst = Vec::new();
    for id in (1..100).step_by(2) {
        burst.extend(h2_get(id, "/delay?ms=5000", &[]));
        burst.extend(h2_reset(id, CANCEL));
    }
    // The server may close before it has read the whole burst.
    drop(h2.write(&burst).await);
    let mut goaway = None;
    let closed = tokio::time::timeout(SLACK, async {
        while let Some(frame) = read_frame(&mut h2.stream).await {
            if frame.kind == GOAWAY {
                goaway = frame.error_code();
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "the connection was closed");
    // hyper's HTTP/2 server counts streams reset before they were accepted (GOAWAY
    // ENHANCE_YOUR_CALM); those it accepted count in the listener's own limit.
    let floods = site.counter(|c| &c.reset_floods);
    assert!(
        floods == 1 || goaway == Some(ENHANCE_YOUR_CALM),
        "closed for the flood: GOAWAY {goaway:?}, reset floods {floods}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_that_does_not_accept_within_connect_timeout_is_502() {
    let timeout = Duration::from_millis(200);
    let hanging = HangingBackend::start().await;
    let settings = Settings {
        backend: "connect_timeout = \"200ms\"",
        ..Settings::default()
    };
    let site = Site::start("lb-l7-connect", Vec::new(), &[hanging.port()], settings);
    let mut conn = site.h1().await;
    let start = Instant::now();
    conn.write(&get_h1("/")).await.unwrap();
    let answer = conn.response().await;
    let elapsed = start.elapsed();
    assert_plain_error(&site, 502, &answer);
    assert!(
        elapsed >= timeout && elapsed <= timeout + SLACK,
        "502 after {elapsed:?}"
    );
    assert_eq!(site.counter(|c| &c.backend_connect_errors), 1);

    // Beside a backend that answers: tried once there.
    let hanging = HangingBackend::start().await;
    let settings = Settings {
        listener: "balance = \"round_robin\"",
        backend: "connect_timeout = \"200ms\"",
        ..Settings::default()
    };
    let site = Site::start(
        "lb-l7-connect2",
        http_backends(1).await,
        &[hanging.port()],
        settings,
    );
    let mut conn = site.h1().await;
    for _ in 0..4 {
        conn.write(&get_h1("/")).await.unwrap();
        assert_eq!(conn.response().await.status, 200);
    }
    let refused = site.counter(|c| &c.backend_connect_errors);
    assert!(refused >= 1, "round robin tried the hanging backend");
    assert_eq!(
        site.counter(|c| &c.retries),
        refused,
        "each tried again once"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_response_slower_than_response_timeout_is_504_and_not_replayed() {
    let timeout = Duration::from_millis(500);
    let settings = Settings {
        backend: "response_timeout = \"500ms\"",
        ..Settings::default()
    };
    let site = Site::start("lb-l7-504", http_backends(2).await, &[], settings);
    let mut conn = site.h1().await;
    conn.write(&get_h1("/")).await.unwrap();
    assert_eq!(conn.response().await.status, 200, "in time");

    let start = Instant::now();
    conn.write(&get_h1("/delay?ms=3000")).await.unwrap();
    let answer = conn.response().await;
    let elapsed = start.elapsed();
    assert_plain_error(&site, 504, &answer);
    assert!(
        elapsed >= timeout && elapsed <= timeout + SLACK,
        "504 after {elapsed:?}"
    );
    assert_eq!(
        site.requests().iter().sum::<u64>(),
        2,
        "the slow one sent once"
    );

    let mut h2 = site.https(true).await;
    let answer = h2.send(get(HOST, "/delay?ms=3000", None)).await.unwrap();
    assert_eq!(answer.status, 504);
    assert_body_names_no_backend(&site, &answer.body);
    assert_eq!(site.counter(|c| &c.backend_timeouts), 2);
}

/// A reload prepared before the daemon stops and committed after it (the controller's thread
/// mid-reload when the signal comes) starts accepting on nothing: neither the listener's old
/// address nor the new one it moves to takes a connection, and no listening socket is left to
/// hand over. Nor does it change the access log (the daemon flushes the one it had last).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_committed_after_a_stop_accepts_on_nothing() {
    let site = Site::start(
        "lb-l7-stopreload",
        http_backends(1).await,
        &[],
        Settings::default(),
    );
    let moved = free_port();
    let mut config = site.lab.config.clone();
    config.listeners.get_mut(LISTENER).unwrap().port = moved;
    config.access_log = Some(AccessLogSettings {
        target: AccessLogTarget::File(site.lab.dir.path.join("access.log")),
        format: AccessLogFormat::Json,
        sample_per_million: 1_000_000,
    });
    let prepared = site.lab.l7.prepare_reload(&config).unwrap();

    site.lab.l7.stop_accepting();
    site.lab
        .l7
        .commit(prepared, &lb::lab::l7::all_healthy(&config));
    assert!(site.lab.l7.listening().is_empty(), "nothing to hand over");
    assert!(
        site.proxy().access_log.load().is_none(),
        "the access log as it was"
    );
    assert!(
        TcpStream::connect(loopback(moved)).await.is_err(),
        "the new address accepted after the stop"
    );
    // The old address's accept loop was aborted by the stop: its socket closes when the
    // runtime drops the task.
    until("the old address refuses connections", || {
        std::net::TcpStream::connect(site.address).is_err()
    })
    .await;
}

/// `max_connections` holds across reloads: connections accepted before a reload count against
/// the limit after it (a reload that built a new limit would let old and new reach twice it),
/// a raised limit takes effect at once, and the open count is exact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_connections_holds_across_a_reload_and_a_raise_takes_effect() {
    let settings = Settings {
        http: "max_connections = 2\nidle_timeout = \"30s\"",
        ..Settings::default()
    };
    let site = Site::start("lb-l7-maxreload", http_backends(1).await, &[], settings);
    let reload = |max: u32, idle: u64| {
        let mut config = site.lab.config.clone();
        let l7 = config
            .listeners
            .get_mut("web")
            .unwrap()
            .l7
            .as_mut()
            .unwrap();
        l7.http.max_connections = max;
        l7.http.idle_timeout = Duration::from_secs(idle);
        let prepared = site.lab.l7.prepare(&config).unwrap();
        site.lab
            .l7
            .commit(prepared, &lb::lab::l7::all_healthy(&config));
    };
    let first = site.tls(b"http/1.1").await;
    let _second = site.tls(b"http/1.1").await;
    until("two connections open", || {
        site.proxy().open_connections() == 2
    })
    .await;

    reload(2, 31);
    // One connection from before the reload ends: exactly one place is free, for the old and
    // the new settings alike (two limits would let both of these in).
    drop(first);
    let connect = || async {
        let tcp = TcpStream::connect(site.address).await.unwrap();
        site.handshake(tcp, b"http/1.1").await
    };
    let mut third = std::pin::pin!(connect());
    let mut fourth = std::pin::pin!(connect());
    let (mut done3, mut done4) = (None, None);
    let deadline = tokio::time::sleep(Duration::from_millis(1500));
    tokio::pin!(deadline);
    loop {
        tokio::select! {
            r = &mut third, if done3.is_none() => done3 = Some(r),
            r = &mut fourth, if done4.is_none() => done4 = Some(r),
            () = &mut deadline => break,
        }
    }
    assert_eq!(
        usize::from(done3.is_some()) + usize::from(done4.is_some()),
        1,
        "one place freed after a reload that kept max_connections = 2 served one connection"
    );
    assert_eq!(site.proxy().open_connections(), 2);

    reload(3, 31);
    let last = tokio::time::timeout(SLACK, async {
        match done3 {
            None => third.await,
            Some(_) => fourth.await,
        }
    })
    .await
    .expect("served once the limit is raised")
    .expect("a TLS handshake");
    until("three connections open", || {
        site.proxy().open_connections() == 3
    })
    .await;
    drop(last);
}

/// The `:status` of stream `id`'s response head.
async fn h2_status(
    h2: &mut common::http::RawH2<impl tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>,
    id: u32,
) -> Option<u16> {
    while let Some(frame) = h2.frame().await {
        if frame.stream == id && frame.kind == HEADERS {
            return frame.status();
        }
    }
    None
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http2_host_other_than_the_authority_is_refused() {
    // Routed by one and served by the other, a request could pass a rule for one host and reach
    // another: a `Host` beside `:authority` must name the same (RFC 9113, 8.3.1).
    let site = Site::start(
        "lb-l7-h2host",
        http_backends(1).await,
        &[],
        Settings::default(),
    );
    let mut h2 = site.h2().await;
    h2.write(&h2_get(1, "/", &[("host", "admin.example.com")]))
        .await
        .unwrap();
    assert_eq!(h2_status(&mut h2, 1).await, Some(400));
    let mut h2 = site.h2().await;
    h2.write(&h2_get(1, "/", &[("host", &HOST.to_uppercase())]))
        .await
        .unwrap();
    assert!(h2.answered_ok(1).await, "the same name, in another case");
    assert_eq!(site.requests(), [1]);
}
