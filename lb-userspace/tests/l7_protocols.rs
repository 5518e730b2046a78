//! The L7 listeners' protocols, with real TLS clients and real HTTP, in-process on loopback:
//! offload and bridging, HTTP/1.1 and HTTP/2 from the clients and to the backends, bodies from
//! 0 B to several MiB streamed both ways, WebSocket upgrades as tunnels (HTTP/1.1 `Upgrade` and
//! HTTP/2 extended CONNECT), and the plain-HTTP
//! listener's redirect to HTTPS.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a test panics with a message; helpers here are part of the tests"
)]

mod common;

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use bytes::Bytes;
use common::l7::{
    HOST, Mode, Setup, Site,
    client::{Client, Tls, pattern, request, streamed},
    free_port, within,
};
use http_body_util::BodyExt as _;
use hyper::{StatusCode, Version, header};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

/// Whether the text of a `/headers` answer has the line `line` (`name: value`, any case).
fn has_header(text: &str, line: &str) -> bool {
    text.lines().any(|l| l.eq_ignore_ascii_case(line))
}

/// GET /headers from an HTTP/1.1 and an HTTP/2 client: answered by the backend, over the
/// backend protocol `backend_version`, with the forwarding headers set.
async fn check_both_client_versions(run: &Site, backend_version: &str) {
    for h2 in [false, true] {
        let mut client = run.client(h2).await;
        let answer = client.get("/headers?q=1").await;
        let text = answer.text();
        assert_eq!(answer.status, StatusCode::OK, "h2 {h2}: {text}");
        assert_eq!(answer.backend(), Some("backend-0"), "h2 {h2}");
        let expected = if h2 {
            Version::HTTP_2
        } else {
            Version::HTTP_11
        };
        assert_eq!(answer.version, expected, "the client's own version");
        let request_line = text.lines().next().unwrap_or_default();
        assert!(
            request_line.starts_with("GET ")
                && request_line.contains("/headers?q=1")
                && request_line.ends_with(backend_version),
            "h2 {h2}: the backend saw {request_line:?}, not {backend_version}"
        );
        assert!(has_header(&text, "x-forwarded-proto: https"), "{text}");
        assert!(
            has_header(&text, &format!("x-forwarded-port: {}", run.address.port())),
            "{text}"
        );
        assert!(has_header(&text, "x-forwarded-for: 127.0.0.1"), "{text}");
        if backend_version == "HTTP/1.1" {
            assert!(has_header(&text, &format!("host: {HOST}")), "{text}");
        } else {
            assert!(
                request_line.contains(HOST),
                "the :authority: {request_line}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn offload_serves_http1_and_http2_clients() {
    let run = Setup::one_backend("lb-l7p-offload", Mode::Offload, "http1").await;
    check_both_client_versions(&run, "HTTP/1.1").await;
    assert_eq!(run.backend(0).requests(), 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn bridging_serves_http1_and_http2_clients_over_verified_tls() {
    let run = Setup::one_backend("lb-l7p-bridging", Mode::Bridging, "http1").await;
    check_both_client_versions(&run, "HTTP/1.1").await;
    assert_eq!(run.backend(0).requests(), 2);
}

/// HTTP/1.1 to the backends: one request after another, of every kind (empty, small and large
/// answers, uploads), reuse a kept-alive connection rather than opening one each.
#[tokio::test(flavor = "multi_thread")]
async fn http1_backend_connections_are_kept_alive_and_reused() {
    const REQUESTS: u64 = 20;
    for mode in [Mode::Offload, Mode::Bridging] {
        for h2 in [false, true] {
            let run = Setup::one_backend("lb-l7p-keepalive", mode, "http1").await;
            let mut client = run.client(h2).await;
            for i in 0..REQUESTS {
                let answer = match i % 4 {
                    0 => client.get("/").await,
                    1 => client.get("/headers").await,
                    2 => client.get("/bytes?n=100000").await,
                    _ => client
                        .fetch(request("POST", "/echo", pattern(70_000)))
                        .await
                        .expect("an upload"),
                };
                assert_eq!(
                    answer.status,
                    StatusCode::OK,
                    "{mode:?}, h2 {h2}, request {i}"
                );
            }
            let connections = run.backend(0).seen.connections.load(Ordering::Relaxed);
            // One, but a connection goes back to the pool on a task of its own, which the
            // next request may (rarely) overtake.
            assert!(
                connections < 5,
                "{mode:?}, h2 {h2}: {connections} backend connections for {REQUESTS} requests"
            );
        }
    }
}

/// `[backend] protocol = "http2"`: requests reach the backend as HTTP/2 (cleartext with prior
/// knowledge for offload, ALPN h2 for bridging), multiplexed on one connection.
#[tokio::test(flavor = "multi_thread")]
async fn http2_to_the_backends_offload_and_bridging() {
    for mode in [Mode::Offload, Mode::Bridging] {
        let run = Setup::one_backend("lb-l7p-h2-backend", mode, "http2").await;
        check_both_client_versions(&run, "HTTP/2.0").await;
        let mut clients = Vec::new();
        for i in 0..16 {
            clients.push(run.client(i % 2 == 0).await);
        }
        let mut requests = tokio::task::JoinSet::new();
        for mut client in clients {
            requests.spawn(async move { client.get("/delay?ms=50").await.status });
        }
        while let Some(status) = requests.join_next().await {
            assert_eq!(status.expect("a request task"), StatusCode::OK, "{mode:?}");
        }
        let seen = &run.backend(0).seen;
        assert_eq!(
            seen.connections.load(Ordering::Relaxed),
            1,
            "{mode:?}: 18 requests, 16 of them at once, on one HTTP/2 connection"
        );
        assert_eq!(run.backend(0).requests(), 18, "{mode:?}");
    }
}

/// A client that offers no ALPN protocol is served HTTP/1.1.
#[tokio::test(flavor = "multi_thread")]
async fn a_client_without_alpn_is_served_http1() {
    let run = Setup::one_backend("lb-l7p-no-alpn", Mode::Offload, "http1").await;
    let tls = Tls::to(HOST, &run.roots).no_alpn();
    let mut client = Client::connect(run.address, &tls)
        .await
        .expect("a handshake");
    let answer = client.get("/headers").await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.text());
    assert_eq!(answer.version, Version::HTTP_11);
    assert_eq!(answer.backend(), Some("backend-0"));
}

const SIZES: [usize; 5] = [0, 1, 16 * 1024 + 3, 1024 * 1024, 4 * 1024 * 1024 + 5];

/// Uploads (POST /echo) and downloads (GET /bytes) of every size in [`SIZES`], from an
/// HTTP/1.1 and an HTTP/2 client, arrive whole and unchanged.
async fn check_bodies(run: &Site, what: &str) {
    for h2 in [false, true] {
        let mut client = run.client(h2).await;
        for size in SIZES {
            let sent = pattern(size);
            let echo = client
                .fetch(request("POST", "/echo", sent.clone()))
                .await
                .unwrap_or_else(|e| panic!("{what}, h2 {h2}: POST of {size} B: {e}"));
            assert_eq!(echo.status, StatusCode::OK, "{what}, h2 {h2}, {size} B");
            assert_eq!(echo.body.len(), size, "{what}, h2 {h2}: echo length");
            assert!(
                echo.body == sent,
                "{what}, h2 {h2}: {size} B echoed changed"
            );

            let download = client.get(&format!("/bytes?n={size}")).await;
            assert_eq!(download.status, StatusCode::OK, "{what}, h2 {h2}, {size} B");
            assert_eq!(
                download.body.len(),
                size,
                "{what}, h2 {h2}: download length"
            );
            assert!(
                download.body.iter().all(|b| *b == b'x'),
                "{what}, h2 {h2}: download content"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn bodies_of_0_b_to_4_mib_go_both_ways_offload() {
    for protocol in ["http1", "http2"] {
        let run = Setup::one_backend("lb-l7p-bodies-off", Mode::Offload, protocol).await;
        check_bodies(&run, &format!("offload, backend {protocol}")).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn bodies_of_0_b_to_4_mib_go_both_ways_bridging() {
    for protocol in ["http1", "http2"] {
        let run = Setup::one_backend("lb-l7p-bodies-br", Mode::Bridging, protocol).await;
        check_bodies(&run, &format!("bridging, backend {protocol}")).await;
    }
}

/// A request body sent in chunks, each echoed back before the next is sent: the response
/// starts while the request is still being sent, so neither is buffered whole by the proxy
/// (either would deadlock and time out).
#[tokio::test(flavor = "multi_thread")]
async fn request_and_response_bodies_stream_through_chunk_by_chunk() {
    const CHUNK: usize = 64 * 1024;
    const CHUNKS: usize = 8;
    for mode in [Mode::Offload, Mode::Bridging] {
        for protocol in ["http1", "http2"] {
            let run = Setup::one_backend("lb-l7p-duplex", mode, protocol).await;
            for h2 in [false, true] {
                let what = format!("{mode:?}, backend {protocol}, client h2 {h2}");
                let mut client = run.client(h2).await;
                let (chunks, body) = streamed();
                let mut post = request("POST", "/echo", Bytes::new());
                *post.body_mut() = body;
                let first = pattern(CHUNK);
                chunks.send(first.clone()).await.expect("first chunk");
                let response = within(&format!("{what}: the response head"), client.send(post))
                    .await
                    .unwrap_or_else(|e| panic!("{what}: {e}"));
                assert_eq!(response.status(), StatusCode::OK, "{what}");
                let mut body = response.into_body();
                let mut received = Vec::new();
                for n in 1..=CHUNKS {
                    while received.len() < n * CHUNK {
                        let frame = within(&format!("{what}: echo of chunk {n}"), body.frame())
                            .await
                            .unwrap_or_else(|| panic!("{what}: the echo ended early"))
                            .unwrap_or_else(|e| panic!("{what}: {e}"));
                        if let Ok(data) = frame.into_data() {
                            received.extend_from_slice(&data);
                        }
                    }
                    if n < CHUNKS {
                        chunks.send(first.clone()).await.expect("next chunk");
                    }
                }
                drop(chunks);
                let rest = within(&what, body.collect()).await.expect("the end");
                assert!(rest.to_bytes().is_empty(), "{what}: nothing after the echo");
                assert_eq!(received.len(), CHUNK * CHUNKS, "{what}");
                assert!(
                    received.chunks(CHUNK).all(|c| c == first),
                    "{what}: content changed"
                );
            }
        }
    }
}

/// The value of `value` once it has not changed for 250 ms; panics if it passes `bound` first
/// (or never settles).
async fn settled(what: &str, bound: u64, value: impl Fn() -> u64) -> u64 {
    within(what, async {
        let (mut last, mut still) = (value(), 0);
        loop {
            tokio::time::sleep(Duration::from_millis(50)).await;
            let now = value();
            assert!(now <= bound, "{what}: {now} B went out, over {bound} B");
            if now == last {
                still += 1;
                if still == 5 {
                    return now;
                }
            } else {
                (last, still) = (now, 0);
            }
        }
    })
    .await
}

/// What may sit in buffers between a stalled end and the other: kernel socket buffers (up to
/// 32 MiB to receive, 4 MiB to send here, for each of two connections), HTTP/2 windows and
/// hyper's buffers. Far below the 1 GiB a proxy that buffers would take in.
const HELD_BACK: u64 = 64 << 20;
const HUGE: u64 = 1 << 30;

/// A client that reads nothing of a 1 GiB response, and a backend that reads nothing of a
/// 1 GiB upload: the proxy passes the stall on (flow control) rather than taking in the rest.
async fn check_backpressure(mode: Mode, protocol: &str) {
    let run = Setup::one_backend("lb-l7p-backpressure", mode, protocol).await;
    let backend = run.backend(0);
    for h2 in [false, true] {
        let what = format!("{mode:?}, backend {protocol}, client h2 {h2}");
        let before = settled(&what, u64::MAX, || backend.bytes_out()).await;
        let mut client = run.client(h2).await;
        let response = within(
            &what,
            client.send(request("GET", &format!("/bytes?n={HUGE}"), "")),
        )
        .await
        .unwrap_or_else(|e| panic!("{what}: {e}"));
        assert_eq!(response.status(), StatusCode::OK, "{what}");
        let download = format!("{what}: a download nobody reads");
        let out = settled(&download, before + HELD_BACK, || backend.bytes_out()).await;
        assert!(out > before, "{download}: nothing sent");
        drop((response, client));

        let mut client = run.client(h2).await;
        let (chunks, body) = streamed();
        let mut post = request("POST", "/delay?ms=10000", "");
        *post.body_mut() = body;
        let sent = Arc::new(AtomicU64::new(0));
        let producer = {
            let sent = Arc::clone(&sent);
            let chunk = pattern(64 * 1024);
            tokio::spawn(async move {
                while chunks.send(chunk.clone()).await.is_ok() {
                    sent.fetch_add(64 * 1024, Ordering::Relaxed);
                }
            })
        };
        let upload = tokio::spawn(async move { client.send(post).await.map(|r| r.status()) });
        let what = format!("{what}: an upload nobody reads");
        let taken = settled(&what, HELD_BACK, || sent.load(Ordering::Relaxed)).await;
        assert!(taken > 0, "{what}: nothing sent");
        producer.abort();
        upload.abort();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn stalled_ends_hold_back_the_other_offload_http1_backend() {
    check_backpressure(Mode::Offload, "http1").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn stalled_ends_hold_back_the_other_offload_http2_backend() {
    check_backpressure(Mode::Offload, "http2").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn stalled_ends_hold_back_the_other_bridging_http1_backend() {
    check_backpressure(Mode::Bridging, "http1").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn stalled_ends_hold_back_the_other_bridging_http2_backend() {
    check_backpressure(Mode::Bridging, "http2").await;
}

/// Sends the WebSocket handshake for `/ws` on a new HTTP/1.1 connection and returns the
/// tunnel once the answer is 101.
async fn open_websocket(run: &Site) -> TokioIo<hyper::upgrade::Upgraded> {
    let mut client = run.client(false).await;
    let mut ws = request("GET", "/ws", Bytes::new());
    let headers = ws.headers_mut();
    headers.insert(header::CONNECTION, "Upgrade".parse().unwrap());
    headers.insert(header::UPGRADE, "websocket".parse().unwrap());
    headers.insert("sec-websocket-version", "13".parse().unwrap());
    headers.insert(
        "sec-websocket-key",
        "dGhlIHNhbXBsZSBub25jZQ==".parse().unwrap(),
    );
    let response = within("the upgrade", client.send(ws))
        .await
        .expect("upgrade");
    assert_eq!(response.status(), StatusCode::SWITCHING_PROTOCOLS);
    assert_eq!(response.headers()[header::UPGRADE], "websocket");
    assert_eq!(response.headers()["x-backend"], "backend-0");
    let upgraded = within("the tunnel", hyper::upgrade::on(response))
        .await
        .expect("upgraded");
    TokioIo::new(upgraded)
}

/// Writes `data` and reads it back from the echoing tunnel, concurrently.
async fn round_trip(tunnel: &mut TokioIo<hyper::upgrade::Upgraded>, data: &[u8]) {
    let (mut read, mut write) = tokio::io::split(tunnel);
    let mut back = vec![0; data.len()];
    let (written, read) = within("a tunnel round trip", async {
        tokio::join!(write.write_all(data), read.read_exact(&mut back))
    })
    .await;
    written.expect("writing into the tunnel");
    read.expect("reading from the tunnel");
    assert!(back == data, "the tunnel changed {} bytes", data.len());
}

/// An HTTP/1.1 `Upgrade: websocket` request gets the backend's 101 and then a tunnel: bytes
/// go both ways, many times, until the client closes; for offload, bridging, and bridging whose
/// other requests go to the backends over HTTP/2.
#[tokio::test(flavor = "multi_thread")]
async fn websocket_upgrades_become_a_two_way_tunnel() {
    for (mode, protocol) in [
        (Mode::Offload, "http1"),
        (Mode::Offload, "http2"),
        (Mode::Bridging, "http1"),
        (Mode::Bridging, "http2"),
    ] {
        let run = Setup::one_backend("lb-l7p-ws", mode, protocol).await;
        let mut tunnel = open_websocket(&run).await;
        round_trip(&mut tunnel, b"hello").await;
        round_trip(&mut tunnel, &pattern(300 * 1024)).await;
        round_trip(&mut tunnel, b"bye").await;
        let mut second = open_websocket(&run).await;
        round_trip(&mut second, b"another tunnel").await;
        round_trip(&mut tunnel, b"the first still works").await;
        assert_eq!(run.proxy().counters.upgrades.load(Ordering::Relaxed), 2);
        tunnel.shutdown().await.expect("closing the tunnel");
        let mut rest = Vec::new();
        let read = within("the tunnel's end", tunnel.read_to_end(&mut rest)).await;
        assert!(
            read.is_ok() && rest.is_empty(),
            "{mode:?}: the tunnel did not end cleanly: {read:?}"
        );
        // The listener still serves ordinary requests, also on the backend's HTTP/2.
        let mut client = run.client(true).await;
        assert_eq!(client.get("/").await.status, StatusCode::OK);
    }
}

/// Opens a WebSocket over the HTTP/2 connection `client` (RFC 8441: an extended CONNECT with
/// `:protocol websocket`), returning the tunnel once the answer is 200.
async fn open_h2_websocket(client: &mut Client) -> TokioIo<hyper::upgrade::Upgraded> {
    let mut ws = request("CONNECT", "/ws", Bytes::new());
    ws.extensions_mut()
        .insert(hyper::ext::Protocol::from_static("websocket"));
    ws.headers_mut()
        .insert("sec-websocket-version", "13".parse().unwrap());
    let response = within("the extended CONNECT", client.send(ws))
        .await
        .expect("an answer to the extended CONNECT");
    assert_eq!(response.status(), StatusCode::OK, "{response:?}");
    assert_eq!(response.headers()["x-backend"], "backend-0");
    assert!(
        !response.headers().contains_key("sec-websocket-accept"),
        "HTTP/2 has no accept key"
    );
    let upgraded = within("the tunnel", hyper::upgrade::on(response))
        .await
        .expect("upgraded");
    TokioIo::new(upgraded)
}

/// An HTTP/2 client's WebSocket (extended CONNECT, RFC 8441) is tunnelled to the backend as an
/// HTTP/1.1 `Upgrade` (whatever protocol the listener's other requests use): bytes go both
/// ways on the stream while the connection serves other requests beside it, and the tunnel
/// ends cleanly. An extended CONNECT for another protocol is 501.
#[tokio::test(flavor = "multi_thread")]
async fn websocket_over_http2_is_tunnelled_to_an_http1_upgrade() {
    for (mode, protocol) in [
        (Mode::Offload, "http1"),
        (Mode::Offload, "http2"),
        (Mode::Bridging, "http1"),
    ] {
        let run = Setup::one_backend("lb-l7p-ws-h2", mode, protocol).await;
        let mut client = run.client(true).await;
        let mut tunnel = open_h2_websocket(&mut client).await;
        round_trip(&mut tunnel, b"hello").await;
        round_trip(&mut tunnel, &pattern(300 * 1024)).await;
        let mut second = open_h2_websocket(&mut client).await;
        round_trip(&mut second, b"another stream").await;
        assert_eq!(
            client.get("/").await.status,
            StatusCode::OK,
            "{mode:?}: the connection serves beside its tunnels"
        );
        round_trip(&mut tunnel, b"the first still works").await;
        assert_eq!(run.proxy().counters.upgrades.load(Ordering::Relaxed), 2);
        tunnel.shutdown().await.expect("closing the tunnel");
        let mut rest = Vec::new();
        let read = within("the tunnel's end", tunnel.read_to_end(&mut rest)).await;
        assert!(
            read.is_ok() && rest.is_empty(),
            "{mode:?}: the tunnel did not end cleanly: {read:?}"
        );
        round_trip(&mut second, b"the second still works").await;

        let mut other = request("CONNECT", "/ws", Bytes::new());
        other
            .extensions_mut()
            .insert(hyper::ext::Protocol::from_static("not-websocket"));
        let answer = client.fetch(other).await.expect("an answer");
        assert_eq!(answer.status, StatusCode::NOT_IMPLEMENTED, "{mode:?}");
        assert_eq!(
            run.backend(0).requests(),
            3,
            "{mode:?}: two tunnels and a GET"
        );
    }
}

/// A tunnel keeps its client connection's place among `max_connections` (a second client
/// waits while it is open), and is closed once nothing moved through it for `idle_timeout`.
#[tokio::test(flavor = "multi_thread")]
async fn a_tunnel_holds_its_connection_slot_until_it_idles_out() {
    let mut setup = Setup::new("lb-l7p-ws-idle", Mode::Offload);
    setup.plain_backend("backend-0").await;
    setup.listener("http.idle_timeout = \"600ms\"");
    setup.listener("http.max_connections = 1");
    let run = setup.start();
    let mut tunnel = open_websocket(&run).await;
    for _ in 0..4 {
        // Traffic every 300 ms keeps it open past the idle timeout.
        round_trip(&mut tunnel, b"still here").await;
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    round_trip(&mut tunnel, b"and now").await;
    let idle = std::time::Instant::now();
    assert_eq!(run.proxy().open_connections(), 1, "the tunnel's");
    let tls = Tls::to(HOST, &run.roots);
    let waiting = tokio::time::timeout(
        Duration::from_millis(250),
        Client::connect(run.address, &tls),
    )
    .await;
    assert!(
        waiting.is_err(),
        "a second connection was served while the tunnel held the only slot: {:?}",
        waiting.map(|c| c.map(|_| ()))
    );
    let mut rest = Vec::new();
    let ended = within("the idle tunnel's end", tunnel.read_to_end(&mut rest)).await;
    let after = idle.elapsed();
    assert!(rest.is_empty(), "{ended:?}");
    assert!(
        after >= Duration::from_millis(500) && after < Duration::from_secs(3),
        "the idle tunnel ended after {after:?}"
    );
    let mut client = within("a connection once the tunnel is gone", async {
        Client::connect(run.address, &tls)
            .await
            .expect("connecting")
    })
    .await;
    assert_eq!(client.get("/").await.status, StatusCode::OK);
}

/// Sends `head` on a plain TCP connection to `port` and reads the whole answer.
async fn plain_http(port: u16, head: &str) -> String {
    let mut tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connecting to the redirect port");
    tcp.write_all(head.as_bytes()).await.expect("writing");
    let mut answer = Vec::new();
    within("the redirect", tcp.read_to_end(&mut answer))
        .await
        .expect("reading");
    String::from_utf8(answer).expect("a text answer")
}

/// The value of header `name` in a raw HTTP/1.1 answer.
fn raw_header<'a>(answer: &'a str, name: &str) -> Option<&'a str> {
    answer
        .lines()
        .filter_map(|l| l.split_once(':'))
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.trim())
}

/// `redirect_http_port`: plain HTTP gets 308 to `https://host:port/path?query` (the host
/// without the plain port, the listener's port), never reaching a backend.
#[tokio::test(flavor = "multi_thread")]
async fn plain_http_is_redirected_to_https_with_308() {
    let redirect = free_port();
    let mut setup = Setup::new("lb-l7p-redirect", Mode::Offload);
    setup.plain_backend("backend-0").await;
    setup.listener(&format!("redirect_http_port = {redirect}"));
    let run = setup.start();
    let port = run.address.port();
    let with_port = format!("{HOST}:{redirect}");
    for (target, host, location) in [
        (
            "/a/b?x=1&y=%20z",
            with_port.as_str(),
            format!("{HOST}:{port}/a/b?x=1&y=%20z"),
        ),
        ("/", HOST, format!("{HOST}:{port}/")),
        (
            "/only/path",
            "127.0.0.1",
            format!("127.0.0.1:{port}/only/path"),
        ),
        ("/?q", with_port.as_str(), format!("{HOST}:{port}/?q")),
        (
            "/v6",
            "[2001:db8::1]:80",
            format!("[2001:db8::1]:{port}/v6"),
        ),
        ("*", HOST, format!("{HOST}:{port}/")),
    ] {
        let method = if target == "*" { "OPTIONS" } else { "GET" };
        let head =
            format!("{method} {target} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
        let answer = plain_http(redirect, &head).await;
        assert!(answer.starts_with("HTTP/1.1 308 "), "{head}: {answer}");
        assert_eq!(
            raw_header(&answer, "location"),
            Some(format!("https://{location}").as_str()),
            "{head}: {answer}"
        );
    }
    // POST keeps its method and body through a 308; the redirect answers it all the same.
    let post = format!(
        "POST /form HTTP/1.1\r\nHost: {HOST}\r\nContent-Length: 3\r\nConnection: close\r\n\r\nabc"
    );
    let answer = plain_http(redirect, &post).await;
    assert!(answer.starts_with("HTTP/1.1 308 "), "{answer}");
    // Without a Host there is nowhere to redirect to.
    let answer = plain_http(redirect, "GET / HTTP/1.0\r\n\r\n").await;
    assert!(
        answer.starts_with("HTTP/1.0 400 ") || answer.starts_with("HTTP/1.1 400 "),
        "{answer}"
    );
    assert_eq!(
        run.backend(0).requests(),
        0,
        "a redirect reaches no backend"
    );
    // The HTTPS listener itself is unaffected.
    let mut client = run.client(false).await;
    assert_eq!(client.get("/").await.status, StatusCode::OK);
}
