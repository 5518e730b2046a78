//! What an HTTP message carries through an L7 listener besides its head, end to end with real
//! TLS clients and lab backends on loopback (issue 10): trailers and `TE: trailers`, so that
//! gRPC works over HTTP/2 (and trailers announced in `Trailer` over HTTP/1.1 chunked bodies),
//! and bodies on methods that rarely have one (GET, DELETE), which reach the backend whole.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a test panics with a message; helpers here are part of the tests"
)]

mod common;

use bytes::Bytes;
use common::l7::{
    HOST, Mode, Settings, Setup, Site,
    client::{Body, streamed},
    http_backends, within,
};
use http_body_util::{BodyExt as _, Full};
use hyper::{HeaderMap, Request, StatusCode, header::HeaderValue};

/// A gRPC message as it goes on the wire: not compressed, then its length (4 bytes, big
/// endian), then the message.
fn grpc_frame(message: &[u8]) -> Bytes {
    let mut frame = vec![0u8];
    frame.extend(u32::try_from(message.len()).unwrap().to_be_bytes());
    frame.extend(message);
    frame.into()
}

/// `data` then `trailers`, as a request body.
fn with_trailers(data: Bytes, trailers: HeaderMap) -> Body {
    Full::new(data)
        .with_trailers(std::future::ready(Some(Ok(trailers))))
        .boxed()
}

/// A unary gRPC call to the lab backend's `/grpc` (which echoes the message and answers with
/// `grpc-status`/`grpc-message` trailers): the client sends `TE: trailers` and a request
/// trailer of its own (announced in `Trailer` when `announce`, as an HTTP/1.1 hop needs).
/// Returns what came back: the response, its body, its trailers.
async fn grpc_call(
    run: &Site,
    h2: bool,
    announce: bool,
) -> (hyper::http::response::Parts, Bytes, Option<HeaderMap>) {
    let message = grpc_frame(b"\x0a\x05hello");
    let mut trailers = HeaderMap::new();
    trailers.insert("x-request-check", HeaderValue::from_static("1"));
    let mut builder = Request::post(format!("https://{HOST}/grpc"))
        .header("content-type", "application/grpc")
        .header("te", "trailers");
    if announce {
        builder = builder.header("trailer", "x-request-check");
    }
    if !h2 {
        // HTTP/1.1 carries trailers only in a chunked body.
        builder = builder.header("transfer-encoding", "chunked");
    }
    let request = builder
        .body(with_trailers(message.clone(), trailers))
        .unwrap();
    let mut client = run.client(h2).await;
    within("a gRPC call", async {
        let response = client.send(request).await.expect("a response");
        let (parts, body) = response.into_parts();
        let collected = body.collect().await.expect("the whole body");
        let trailers = collected.trailers().cloned();
        let body = collected.to_bytes();
        assert_eq!(body, message, "the message echoed");
        (parts, body, trailers)
    })
    .await
}

/// gRPC end to end over HTTP/2 on both sides, offload and bridging: `TE: trailers` reaches the
/// backend (it is the one `TE` value HTTP/2 allows), and the client gets the body and the
/// `grpc-status` and `grpc-message` trailers; a request trailer reaches the backend too.
#[tokio::test(flavor = "multi_thread")]
async fn grpc_over_http2_gets_its_trailers_offload_and_bridging() {
    for mode in [Mode::Offload, Mode::Bridging] {
        let run = Setup::one_backend("lb-l7m-grpc", mode, "http2").await;
        let (parts, body, trailers) = grpc_call(&run, true, false).await;
        assert_eq!(parts.status, StatusCode::OK, "{mode:?}");
        assert_eq!(parts.headers["content-type"], "application/grpc");
        assert_eq!(
            parts.headers["x-seen-te"], "trailers",
            "{mode:?}: TE reached the backend"
        );
        assert_eq!(
            parts.headers["x-seen-trailers"], "x-request-check=1",
            "{mode:?}: the request's trailer reached the backend"
        );
        let trailers = trailers.unwrap_or_else(|| panic!("{mode:?}: no trailers"));
        assert_eq!(trailers["grpc-status"], "0", "{mode:?}");
        assert_eq!(
            trailers["grpc-message"],
            format!("echoed {} bytes", body.len()).as_str()
        );
    }
}

/// Every client and backend version pairing (offload): trailers come back to the client over
/// HTTP/2 always, and over HTTP/1.1 when the response announced them (`Trailer`) and the
/// client asked for them (`TE: trailers`), as RFC 9112 section 7.1.2 wants. A request's
/// trailers reach an HTTP/1.1 backend only when announced: an HTTP/2 client's unannounced
/// trailers cannot be sent in an HTTP/1.1 chunked body whose head has already gone.
#[tokio::test(flavor = "multi_thread")]
async fn trailers_cross_http1_and_http2_both_ways() {
    for protocol in ["http1", "http2"] {
        let run = Setup::one_backend("lb-l7m-trailers", Mode::Offload, protocol).await;
        for (h2, announce) in [(true, false), (true, true), (false, true)] {
            let what = format!("client h2 {h2}, announced {announce}, backend {protocol}");
            let (parts, _, trailers) = grpc_call(&run, h2, announce).await;
            assert_eq!(parts.status, StatusCode::OK, "{what}");
            assert_eq!(parts.headers["x-seen-te"], "trailers", "{what}");
            let reaches = protocol == "http2" || announce;
            let expected = if reaches { "x-request-check=1" } else { "-" };
            assert_eq!(parts.headers["x-seen-trailers"], expected, "{what}");
            let trailers = trailers.unwrap_or_else(|| panic!("{what}: no trailers"));
            assert_eq!(trailers["grpc-status"], "0", "{what}");
        }
    }
}

/// A GET and a DELETE with bodies (HTTP/1.1 `Content-Length` and chunked) reach the backend
/// with their bodies exactly (`/echo` sends back what it read), over HTTP/1.1 and HTTP/2
/// backends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_and_delete_bodies_reach_the_backend_over_http1() {
    for protocol in ["http1", "http2"] {
        let backend = format!("protocol = \"{protocol}\"");
        let settings = Settings {
            backend: &backend,
            ..Settings::default()
        };
        let site = Site::start("lb-l7m-get-body", http_backends(1).await, &[], settings);
        let mut conn = site.h1().await;
        for method in ["GET", "DELETE"] {
            let what = format!("{method} with Content-Length, backend {protocol}");
            let request = format!(
                "{method} /echo HTTP/1.1\r\nHost: {HOST}\r\nContent-Length: 11\r\n\r\n\
                 hello world"
            );
            conn.write(request.as_bytes()).await.unwrap();
            let answer = conn.response().await;
            assert_eq!(answer.status, 200, "{what}: {answer:?}");
            assert_eq!(answer.text(), "hello world", "{what}");

            let what = format!("{method} chunked, backend {protocol}");
            let request = format!(
                "{method} /echo HTTP/1.1\r\nHost: {HOST}\r\nTransfer-Encoding: chunked\r\n\r\n\
                 5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"
            );
            conn.write(request.as_bytes()).await.unwrap();
            let answer = conn.response().await;
            assert_eq!(answer.status, 200, "{what}: {answer:?}");
            assert_eq!(answer.text(), "hello world", "{what}");
        }
        assert_eq!(site.backend(0).requests(), 4, "backend {protocol}");
    }
}

/// The same from an HTTP/2 client: a body with `content-length` and one streamed without it.
#[tokio::test(flavor = "multi_thread")]
async fn get_and_delete_bodies_reach_the_backend_over_http2() {
    for protocol in ["http1", "http2"] {
        let run = Setup::one_backend("lb-l7m-get-body-h2", Mode::Offload, protocol).await;
        let mut client = run.client(true).await;
        for method in ["GET", "DELETE"] {
            let what = format!("{method} with content-length, backend {protocol}");
            let request = common::l7::client::request(method, "/echo", "hello world");
            let answer = client.fetch(request).await.expect(&what);
            assert_eq!(answer.status, StatusCode::OK, "{what}");
            assert_eq!(answer.text(), "hello world", "{what}");

            let what = format!("{method} streamed, backend {protocol}");
            let (chunks, body) = streamed();
            let request = Request::builder()
                .method(method)
                .uri(format!("https://{HOST}/echo"))
                .body(body)
                .unwrap();
            let sending = tokio::spawn(async move {
                for chunk in ["hello", " ", "world"] {
                    chunks.send(Bytes::from(chunk)).await.unwrap();
                }
            });
            let answer = client.fetch(request).await.expect(&what);
            sending.await.unwrap();
            assert_eq!(answer.status, StatusCode::OK, "{what}");
            assert_eq!(answer.text(), "hello world", "{what}");
        }
        assert_eq!(run.backend(0).requests(), 4, "backend {protocol}");
    }
}
