//! The L7 request path end to end, in-process on loopback (issue 5): the headers a backend and
//! a client see, how requests are spread over the backends, which failures are tried again on
//! another backend, and the balancer's own error answers (503, 502), whose bodies name no
//! backend.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a test panics with a message; helpers here are part of the tests"
)]

mod common;

use std::collections::BTreeMap;

use common::{
    http::{
        Behaviour, RawBackend, assert_body_names_no_backend, assert_plain_error, echoed, values,
    },
    l7::{HOST, Settings, Site, free_port, http_backends, until},
};
use lb::lab::l7::get;

/// Round robin over the pool, in its order: lab backends, then other ports.
const ROUND_ROBIN: Settings<'static> = Settings {
    listener: "balance = \"round_robin\"",
    http: "",
    backend: "",
};

/// A GET of `path` on an HTTP/1.1 connection.
fn get_h1(path: &str) -> Vec<u8> {
    format!("GET {path} HTTP/1.1\r\nHost: {HOST}\r\n\r\n").into_bytes()
}

/// A POST of `body` to `/echo` on an HTTP/1.1 connection.
fn post_h1(body: &str) -> Vec<u8> {
    format!(
        "POST /echo HTTP/1.1\r\nHost: {HOST}\r\nContent-Type: text/plain\r\n\
         Content-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarding_headers_are_appended_or_set_and_hop_by_hop_headers_do_not_reach_the_backend() {
    let settings = Settings {
        listener: "forwarded_header = true",
        ..Settings::default()
    };
    let site = Site::start("lb-l7-fwd", http_backends(1).await, &[], settings);
    let port = site.address.port();
    let mut conn = site.h1().await;
    let request = format!(
        "GET /headers HTTP/1.1\r\n\
         Host: {HOST}:{port}\r\n\
         X-Forwarded-For: 198.18.7.7\r\n\
         X-Forwarded-For: 2001:db8::7\r\n\
         X-Forwarded-Proto: http\r\n\
         X-Forwarded-Port: 80\r\n\
         Forwarded: for=198.18.7.7\r\n\
         Connection: keep-alive, X-Hop\r\n\
         X-Hop: secret\r\n\
         Keep-Alive: timeout=5\r\n\
         Proxy-Connection: keep-alive\r\n\
         TE: gzip, trailers\r\n\
         Trailer: X-Checksum\r\n\
         Upgrade: h2c\r\n\
         X-Kept: yes\r\n\
         \r\n"
    );
    conn.write(request.as_bytes()).await.unwrap();
    let answer = conn.response().await;
    assert_eq!(answer.status, 200, "{answer:?}");
    let (line, seen) = echoed(&answer.body);
    assert_eq!(line, "GET /headers HTTP/1.1");

    assert_eq!(
        values(&seen, "x-forwarded-for"),
        ["198.18.7.7, 2001:db8::7, 127.0.0.1"],
        "the client's values kept, its address appended"
    );
    assert_eq!(values(&seen, "x-forwarded-proto"), ["https"], "replaced");
    assert_eq!(
        values(&seen, "x-forwarded-port"),
        [port.to_string().as_str()],
        "replaced by the listener's port"
    );
    assert_eq!(
        values(&seen, "forwarded"),
        [format!("for=198.18.7.7, for=127.0.0.1;proto=https;host=\"{HOST}:{port}\"").as_str()],
        "an element appended"
    );
    assert_eq!(
        values(&seen, "host"),
        [format!("{HOST}:{port}").as_str()],
        "Host kept"
    );
    for hop in [
        "connection",
        "x-hop",
        "keep-alive",
        "proxy-connection",
        "upgrade",
    ] {
        assert!(
            values(&seen, hop).is_empty(),
            "{hop} reached the backend: {seen:?}"
        );
    }
    assert_eq!(
        values(&seen, "te"),
        ["trailers"],
        "TE's trailers go on (gRPC needs them), its codings do not"
    );
    assert_eq!(values(&seen, "trailer"), ["X-Checksum"], "not hop-by-hop");
    assert_eq!(values(&seen, "x-kept"), ["yes"]);

    // The connection carries on; a client that claims nothing gets only its own address.
    conn.write(&get_h1("/headers")).await.unwrap();
    let again = conn.response().await;
    let (_, seen) = echoed(&again.body);
    assert_eq!(values(&seen, "x-forwarded-for"), ["127.0.0.1"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http2_clients_authority_becomes_the_host_of_an_http1_backend() {
    let site = Site::start(
        "lb-l7-authority",
        http_backends(1).await,
        &[],
        Settings::default(),
    );
    let mut conn = site.https(true).await;
    let answer = conn.send(get(HOST, "/headers", None)).await.unwrap();
    assert_eq!(answer.status, 200, "{answer:?}");
    let (line, seen) = echoed(&answer.body);
    assert_eq!(line, "GET /headers HTTP/1.1", "HTTP/1.1 to the backend");
    assert_eq!(values(&seen, "host"), [HOST], ":authority as Host");
    assert_eq!(values(&seen, "x-forwarded-for"), ["127.0.0.1"]);
    assert_eq!(values(&seen, "x-forwarded-proto"), ["https"]);
    let port = site.address.port().to_string();
    assert_eq!(values(&seen, "x-forwarded-port"), [port.as_str()]);
    assert!(
        values(&seen, "forwarded").is_empty(),
        "no Forwarded unless the listener asks for it"
    );

    // Nor a client's own: without forwarded_header, nothing vouches for it.
    let mut request = get(HOST, "/headers", None);
    request
        .headers_mut()
        .insert("forwarded", "for=203.0.113.7".parse().unwrap());
    let answer = conn.send(request).await.unwrap();
    let (_, seen) = echoed(&answer.body);
    assert!(
        values(&seen, "forwarded").is_empty(),
        "a client's Forwarded reached the backend: {seen:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarded_header_of_an_http2_client_names_its_host() {
    let settings = Settings {
        listener: "forwarded_header = true",
        ..Settings::default()
    };
    let site = Site::start("lb-l7-fwd-h2", http_backends(1).await, &[], settings);
    let mut conn = site.https(true).await;
    let answer = conn.send(get(HOST, "/headers", None)).await.unwrap();
    let (_, seen) = echoed(&answer.body);
    assert_eq!(
        values(&seen, "forwarded"),
        [format!("for=127.0.0.1;proto=https;host=\"{HOST}\"").as_str()],
        "the same element as for an HTTP/1.1 client"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hop_by_hop_headers_of_a_response_do_not_reach_the_client() {
    let backend = RawBackend::start(Behaviour::Answer(
        "HTTP/1.1 200 OK\r\n\
         Content-Length: 2\r\n\
         Connection: keep-alive, X-Hop\r\n\
         X-Hop: secret\r\n\
         Keep-Alive: timeout=5, max=100\r\n\
         Proxy-Connection: keep-alive\r\n\
         TE: trailers\r\n\
         Trailer: X-Checksum\r\n\
         Upgrade: h2c\r\n\
         X-Kept: yes\r\n\
         \r\n\
         ok",
    ))
    .await;
    let site = Site::start(
        "lb-l7-hop",
        Vec::new(),
        &[backend.port()],
        Settings::default(),
    );
    let mut conn = site.h1().await;
    for _ in 0..2 {
        conn.write(&get_h1("/")).await.unwrap();
        let answer = conn.response().await;
        assert_eq!(answer.status, 200, "{answer:?}");
        assert_eq!(answer.body, b"ok");
        for hop in [
            "connection",
            "x-hop",
            "keep-alive",
            "proxy-connection",
            "te",
            "upgrade",
        ] {
            assert!(!answer.has(hop), "{hop} reached the client: {answer:?}");
        }
        assert_eq!(
            answer.header("trailer"),
            Some("X-Checksum"),
            "not hop-by-hop"
        );
        assert_eq!(answer.header("x-kept"), Some("yes"));
    }
    assert_eq!(backend.requests(), 2);
}

/// Sends `clients` × `each` GETs of `/` over as many concurrent connections (HTTP/1.1 and
/// HTTP/2 alternately); the answers by backend name.
async fn spread(site: &Site, clients: usize, each: usize) -> BTreeMap<String, usize> {
    let mut tasks = Vec::new();
    for c in 0..clients {
        let mut conn = site.https(c % 2 == 0).await;
        tasks.push(tokio::spawn(async move {
            let mut names = Vec::new();
            for _ in 0..each {
                let answer = conn.send(get(HOST, "/", None)).await.unwrap();
                assert_eq!(answer.status, 200, "{answer:?}");
                names.push(answer.backend().unwrap().to_owned());
            }
            names
        }));
    }
    let mut counts = BTreeMap::new();
    for task in tasks {
        for name in task.await.unwrap() {
            *counts.entry(name).or_insert(0) += 1;
        }
    }
    counts
}

/// Asserts that each of `n` backends got within 5 points of an equal share of `counts`.
fn assert_even(counts: &BTreeMap<String, usize>, n: usize) {
    let total: usize = counts.values().sum();
    assert_eq!(counts.len(), n, "every backend answered: {counts:?}");
    for (name, &count) in counts {
        let share = count as f64 * 100.0 / total as f64;
        let equal = 100.0 / n as f64;
        assert!(
            (share - equal).abs() <= 5.0,
            "{name} got {share:.1} % of {total}, not {equal:.1} ± 5: {counts:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn least_outstanding_the_default_spreads_requests_evenly() {
    let site = Site::start(
        "lb-l7-lor",
        http_backends(3).await,
        &[],
        Settings::default(),
    );
    let counts = spread(&site, 10, 300).await;
    assert_even(&counts, 3);
    assert_eq!(site.requests().iter().sum::<u64>(), 3000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn round_robin_spreads_requests_evenly() {
    let site = Site::start("lb-l7-rr", http_backends(3).await, &[], ROUND_ROBIN);
    let counts = spread(&site, 10, 300).await;
    assert_even(&counts, 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_backend_given_weight_0_takes_no_requests_until_it_is_back() {
    for balance in ["least_outstanding", "round_robin"] {
        let listener = format!("balance = \"{balance}\"");
        let settings = Settings {
            listener: &listener,
            ..Settings::default()
        };
        let site = Site::start("lb-l7-weight0", http_backends(3).await, &[], settings);
        let out = site.backend(1).address.port();
        site.set_taking(|port| port != out);
        let counts = spread(&site, 4, 75).await;
        assert!(
            !counts.contains_key("backend-1"),
            "{balance}: weight 0 took requests: {counts:?}"
        );
        assert_eq!(
            counts.len(),
            2,
            "{balance}: the others took them: {counts:?}"
        );

        site.set_taking(|_| true);
        let counts = spread(&site, 4, 75).await;
        assert_eq!(counts.len(), 3, "{balance}: backend-1 is back: {counts:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn least_outstanding_avoids_a_backend_with_slow_requests_in_flight() {
    let site = Site::start(
        "lb-l7-busy",
        http_backends(3).await,
        &[],
        Settings::default(),
    );
    let busy = site.backend(0).address.port();
    // Only backend-0 takes requests while four slow ones start; then all three take them again.
    site.set_taking(|port| port == busy);
    let mut slow = Vec::new();
    for _ in 0..4 {
        let mut conn = site.https(false).await;
        slow.push(tokio::spawn(async move {
            conn.send(get(HOST, "/delay?ms=4000", None)).await.unwrap()
        }));
    }
    until("four slow requests at backend-0", || {
        site.backend(0).requests() == 4
    })
    .await;
    site.set_taking(|_| true);

    // One request at a time: the two others are always equal, the busy one always busier.
    let counts = spread(&site, 1, 300).await;
    assert!(
        slow.iter().all(|task| !task.is_finished()),
        "the slow requests were in flight all along"
    );
    assert!(
        !counts.contains_key("backend-0"),
        "the busy backend took new requests: {counts:?}"
    );
    assert_even(&counts, 2);
    for task in slow {
        let answer = task.await.unwrap();
        assert_eq!(answer.status, 200);
        assert_eq!(answer.backend(), Some("backend-0"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_connection_is_tried_once_on_another_backend_whatever_the_method() {
    let site = Site::start(
        "lb-l7-refused",
        http_backends(1).await,
        &[free_port()],
        ROUND_ROBIN,
    );
    let mut conn = site.h1().await;
    for i in 0..10 {
        conn.write(&get_h1("/")).await.unwrap();
        let answer = conn.response().await;
        assert_eq!(answer.status, 200, "GET {i}: {answer:?}");
        let body = format!("payload {i}");
        conn.write(&post_h1(&body)).await.unwrap();
        let answer = conn.response().await;
        assert_eq!(answer.status, 200, "POST {i}: {answer:?}");
        assert_eq!(answer.text(), body, "the body reached the backend whole");
    }
    let refused = site.counter(|c| &c.backend_connect_errors);
    assert!(
        refused >= 5,
        "round robin tried the dead port first half the time: {refused}"
    );
    assert_eq!(
        site.counter(|c| &c.retries),
        refused,
        "one retry per refusal"
    );
    assert_eq!(site.backend(0).requests(), 20);

    // Two ports that refuse: the second try is the last.
    let site = Site::start(
        "lb-l7-refused2",
        Vec::new(),
        &[free_port(), free_port()],
        ROUND_ROBIN,
    );
    let mut conn = site.h1().await;
    conn.write(&get_h1("/")).await.unwrap();
    let answer = conn.response().await;
    assert_plain_error(&site, 502, &answer);
    assert_eq!(site.counter(|c| &c.backend_connect_errors), 2);
    assert_eq!(site.counter(|c| &c.retries), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_get_that_failed_at_a_backend_is_replayed_once_on_another() {
    let bad = RawBackend::start(Behaviour::Close).await;
    let site = Site::start(
        "lb-l7-replay",
        http_backends(1).await,
        &[bad.port()],
        ROUND_ROBIN,
    );
    let mut conn = site.h1().await;
    for i in 0..10 {
        conn.write(&get_h1("/")).await.unwrap();
        let answer = conn.response().await;
        assert_eq!(answer.status, 200, "GET {i}: {answer:?}");
        assert_eq!(answer.backend(), Some("backend-0"));
    }
    assert!(
        bad.requests() >= 5,
        "half the GETs went to the bad backend first"
    );
    assert_eq!(site.counter(|c| &c.retries), bad.requests());
    assert_eq!(site.backend(0).requests(), 10);

    // Two bad backends: one replay, then 502.
    let (one, two) = (
        RawBackend::start(Behaviour::Close).await,
        RawBackend::start(Behaviour::Close).await,
    );
    let site = Site::start(
        "lb-l7-replay2",
        Vec::new(),
        &[one.port(), two.port()],
        ROUND_ROBIN,
    );
    let mut conn = site.h1().await;
    conn.write(&get_h1("/")).await.unwrap();
    let answer = conn.response().await;
    assert_plain_error(&site, 502, &answer);
    assert_eq!(
        (one.requests(), two.requests()),
        (1, 1),
        "sent once to each"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_post_that_reached_a_backend_is_not_replayed() {
    let bad = RawBackend::start(Behaviour::Close).await;
    let site = Site::start(
        "lb-l7-post",
        http_backends(1).await,
        &[bad.port()],
        ROUND_ROBIN,
    );
    let (mut ok, mut failed) = (0, 0);
    for i in 0..10 {
        // A new connection each time: a 502 may close the client's.
        let mut conn = site.h1().await;
        let body = format!("order {i}");
        conn.write(&post_h1(&body)).await.unwrap();
        let answer = conn.response().await;
        match answer.status {
            200 => {
                assert_eq!(answer.text(), body);
                ok += 1;
            }
            502 => {
                assert_plain_error(&site, 502, &answer);
                failed += 1;
                assert_eq!(
                    bad.requests(),
                    failed,
                    "each failed POST reached the bad backend exactly once"
                );
            }
            other => panic!("POST {i}: {other}: {answer:?}"),
        }
    }
    assert!(failed >= 5, "half the POSTs went to the bad backend first");
    assert_eq!(site.backend(0).requests(), ok, "none was replayed there");
    assert_eq!(site.counter(|c| &c.retries), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_backend_taking_requests_is_503() {
    let site = Site::start(
        "lb-l7-none",
        http_backends(2).await,
        &[],
        Settings::default(),
    );
    site.set_taking(|_| false);
    for h2 in [false, true] {
        let mut conn = site.https(h2).await;
        let answer = conn.send(get(HOST, "/", None)).await.unwrap();
        assert_eq!(answer.status, 503, "h2 {h2}: {answer:?}");
        assert!(answer.backend().is_none());
        assert_body_names_no_backend(&site, &answer.body);
    }
    let mut conn = site.h1().await;
    conn.write(&get_h1("/")).await.unwrap();
    assert_plain_error(&site, 503, &conn.response().await);
    assert_eq!(site.requests(), [0, 0]);
    assert_eq!(site.counter(|c| &c.no_backend), 3);

    site.set_taking(|_| true);
    conn.write(&get_h1("/")).await.unwrap();
    assert_eq!(
        conn.response().await.status,
        200,
        "back once they take requests"
    );

    let empty = Site::start("lb-l7-empty", Vec::new(), &[], Settings::default());
    let mut conn = empty.h1().await;
    conn.write(&get_h1("/")).await.unwrap();
    assert_plain_error(&empty, 503, &conn.response().await);
}

/// `Host` as RFC 9112 wants it: none on HTTP/1.1, or two, is 400 (and nothing reaches a
/// backend); an absolute-form target's authority wins over `Host`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_is_required_single_and_overridden_by_an_absolute_target() {
    let site = Site::start(
        "lb-l7-host",
        http_backends(1).await,
        &[],
        Settings::default(),
    );
    for (name, head) in [
        ("no Host", "GET /headers HTTP/1.1\r\n\r\n".to_owned()),
        (
            "two Hosts",
            format!("GET /headers HTTP/1.1\r\nHost: {HOST}\r\nHost: evil.example\r\n\r\n"),
        ),
    ] {
        let mut conn = site.h1().await;
        conn.write(head.as_bytes()).await.unwrap();
        let answer = conn.response().await;
        assert_plain_error(&site, 400, &answer);
        assert_eq!(site.backend(0).requests(), 0, "{name}: not forwarded");
    }
    assert_eq!(site.counter(|c| &c.bad_requests), 2);

    let mut conn = site.h1().await;
    let head = "GET https://target.example/headers HTTP/1.1\r\nHost: other.example\r\n\r\n";
    conn.write(head.as_bytes()).await.unwrap();
    let answer = conn.response().await;
    assert_eq!(answer.status, 200, "{answer:?}");
    let (line, seen) = echoed(&answer.body);
    assert_eq!(line, "GET /headers HTTP/1.1", "origin form to the backend");
    assert_eq!(
        values(&seen, "host"),
        ["target.example"],
        "the target's authority"
    );
}

/// Only WebSocket is tunnelled: an `Upgrade` to h2c (or anything else) is ignored, and the
/// request goes on as a plain one without it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upgrade_other_than_websocket_is_ignored_not_tunnelled() {
    let site = Site::start(
        "lb-l7-h2c",
        http_backends(1).await,
        &[],
        Settings::default(),
    );
    for protocol in ["h2c", "foo/1, websocket", "bar"] {
        let mut conn = site.h1().await;
        let head = format!(
            "GET /headers HTTP/1.1\r\nHost: {HOST}\r\nConnection: Upgrade, HTTP2-Settings\r\n\
             Upgrade: {protocol}\r\nHTTP2-Settings: AAMAAABkAAQAAP__\r\n\r\n"
        );
        conn.write(head.as_bytes()).await.unwrap();
        let answer = conn.response().await;
        assert_eq!(answer.status, 200, "{protocol}: {answer:?}");
        let (_, seen) = echoed(&answer.body);
        assert!(values(&seen, "upgrade").is_empty(), "{protocol}: {seen:?}");
        assert!(
            values(&seen, "http2-settings").is_empty(),
            "{protocol}: {seen:?}"
        );
    }
    assert_eq!(site.counter(|c| &c.upgrades), 0);
}
