//! What a connection holds in hyper and h2 while it waits between requests, counted by this
//! binary's allocator. The vendored copies (`vendor/README.md`) give their buffers back when a
//! read finds nothing, where upstream keeps them for the connection's life: hyper's HTTP/1 read
//! buffer and head buffer (8 kB each; the head buffer is now sized to the heads written), h2's
//! read (8 kB) and write (16 kB) buffers. The daemon's HTTP/1.1 ends are both hyper's: a
//! client's keep-alive connection (hyper's server side) and a pooled backend connection (its
//! client side); an HTTP/2 client's connection is h2's, under hyper's server. Each test serves a
//! request, lets the connection wait, counts what it holds, then serves a second request on it.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a test panics with a message; helpers here are part of the tests"
)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::convert::Infallible;

use bytes::Bytes;
use http_body_util::{BodyExt as _, Empty, Full};
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _, DuplexStream};

/// More than this held by a waiting client connection means one of hyper's 8 kB buffers is
/// kept (1.5 kB without them).
const SERVER_CEILING: isize = 8 * 1024;

/// The same for a backend connection, whose request channel takes a block of its own at the
/// handshake (tokio's unbounded channel allocates room for 32 requests, 8.3 kB here), so that
/// one kept buffer takes it over 16 kB (9.5 kB without them).
const BACKEND_CEILING: isize = 16 * 1024;

/// The same for an HTTP/2 client connection: its connection state (streams, HPACK tables) is
/// larger, and one of h2's buffers (16 kB write, 8 kB read) takes it over this.
const HTTP2_SERVER_CEILING: isize = 16 * 1024;

const REQUEST: &[u8] = b"GET / HTTP/1.1\r\nhost: example\r\n\r\n";
const RESPONSE: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhello";

/// The system allocator, counting the bytes live on each thread (a current-thread runtime keeps
/// a test's connection on its thread; tests running beside it count on theirs).
struct Counting;

thread_local! {
    static LIVE: Cell<isize> = const { Cell::new(0) };
}

fn count(delta: isize) {
    // `try_with`: a thread's allocations after its locals are gone are not counted.
    LIVE.try_with(|live| live.set(live.get() + delta))
        .unwrap_or(());
}

fn size(layout: Layout) -> isize {
    isize::try_from(layout.size()).expect("an allocation fits in isize")
}

// SAFETY: every call goes to the system allocator with the caller's arguments; counting touches
// only a thread-local integer, which allocates nothing.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller's contract for `alloc` is passed on unchanged.
        let ptr = unsafe { System.alloc(layout) };
        if !ptr.is_null() {
            count(size(layout));
        }
        ptr
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        count(-size(layout));
        // SAFETY: the caller's contract for `dealloc` is passed on unchanged.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: the caller's contract for `realloc` is passed on unchanged.
        let new = unsafe { System.realloc(ptr, layout, new_size) };
        if !new.is_null() {
            count(isize::try_from(new_size).expect("an allocation fits in isize") - size(layout));
        }
        new
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

fn live() -> isize {
    LIVE.with(Cell::get)
}

/// Lets every task on this thread's runtime run until it waits.
async fn settle() {
    for _ in 0..16 {
        tokio::task::yield_now().await;
    }
}

/// Reads from `stream` until a response ending in the body `hello` has come (the daemon's
/// responses carry a date, so their length varies).
async fn read_response(stream: &mut DuplexStream) -> String {
    let mut response = Vec::new();
    while !response.ends_with(b"\r\n\r\nhello") {
        let mut chunk = [0; 256];
        let n = stream.read(&mut chunk).await.unwrap();
        assert_ne!(
            n,
            0,
            "closed after {:?}",
            String::from_utf8_lossy(&response)
        );
        response.extend_from_slice(&chunk[..n]);
    }
    String::from_utf8(response).unwrap()
}

#[tokio::test(flavor = "current_thread")]
async fn a_waiting_client_connection_keeps_neither_of_hypers_buffers() {
    let (mut client, server) = tokio::io::duplex(64 * 1024);
    let before = live();
    let connection = tokio::spawn(hyper::server::conn::http1::Builder::new().serve_connection(
        TokioIo::new(server),
        hyper::service::service_fn(|_request: Request<hyper::body::Incoming>| async {
            Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"hello"))))
        }),
    ));
    for round in 0..2 {
        client.write_all(REQUEST).await.unwrap();
        let response = read_response(&mut client).await;
        assert!(response.starts_with("HTTP/1.1 200 OK\r\n"), "{response}");
        drop(response);
        settle().await;
        let held = live() - before;
        println!("round {round}: a waiting server connection holds {held} bytes");
        assert!(
            held < SERVER_CEILING,
            "round {round}: a waiting server connection holds {held} bytes, at least one of \
             hyper's 8 kB buffers (vendor/README.md)"
        );
    }
    drop(client);
    connection.await.unwrap().unwrap();
}

#[tokio::test(flavor = "current_thread")]
async fn a_waiting_backend_connection_keeps_neither_of_hypers_buffers() {
    let (mut backend, to_backend) = tokio::io::duplex(64 * 1024);
    let before = live();
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake::<_, Empty<Bytes>>(TokioIo::new(to_backend))
            .await
            .unwrap();
    let connection = tokio::spawn(connection);
    for round in 0..2 {
        let request = Request::get("/")
            .header("host", "example")
            .body(Empty::new())
            .unwrap();
        let (response, ()) = tokio::join!(sender.send_request(request), async {
            let mut head = vec![0; REQUEST.len()];
            backend.read_exact(&mut head).await.unwrap();
            assert_eq!(
                String::from_utf8_lossy(&head),
                String::from_utf8_lossy(REQUEST)
            );
            backend.write_all(RESPONSE).await.unwrap();
        });
        let body = response.unwrap().into_body().collect().await.unwrap();
        assert_eq!(body.to_bytes(), "hello");
        settle().await;
        let held = live() - before;
        println!("round {round}: a waiting backend connection holds {held} bytes");
        assert!(
            held < BACKEND_CEILING,
            "round {round}: a waiting backend connection holds {held} bytes, at least one of \
             hyper's 8 kB buffers (vendor/README.md)"
        );
    }
    drop(sender);
    connection.await.unwrap().unwrap();
}

#[test]
fn a_waiting_http2_client_connection_keeps_no_buffer_of_its_own() {
    // The client on a thread of its own, so that this thread counts the server's side alone.
    let (client_io, server_io) = tokio::io::duplex(64 * 1024);
    let (answered, mut was_answered) = tokio::sync::mpsc::channel(1);
    let (measured, was_measured) = tokio::sync::mpsc::channel(1);
    let client = std::thread::spawn(move || http2_client(client_io, &answered, was_measured));
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let before = live();
        let connection = tokio::spawn(
            hyper::server::conn::http2::Builder::new(TokioExecutor::new()).serve_connection(
                TokioIo::new(server_io),
                hyper::service::service_fn(|_request: Request<hyper::body::Incoming>| async {
                    Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"hello"))))
                }),
            ),
        );
        for round in 0..2 {
            was_answered.recv().await.expect("the client's answer");
            // What the client sends after its answer (window updates) is read too.
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            settle().await;
            let held = live() - before;
            println!("round {round}: a waiting HTTP/2 server connection holds {held} bytes");
            assert!(
                held < HTTP2_SERVER_CEILING,
                "round {round}: a waiting HTTP/2 server connection holds {held} bytes, at \
                 least one of h2's buffers (vendor/README.md)"
            );
            measured.send(()).await.unwrap();
        }
        connection.await.unwrap().unwrap();
    });
    client.join().unwrap();
}

/// Two requests over one HTTP/2 connection, each answered, then waiting for `was_measured`.
fn http2_client(
    io: DuplexStream,
    answered: &tokio::sync::mpsc::Sender<()>,
    mut was_measured: tokio::sync::mpsc::Receiver<()>,
) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let (mut sender, connection) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(io))
                .await
                .unwrap();
        let connection = tokio::spawn(connection);
        for _ in 0..2 {
            let request = Request::get("http://example/")
                .body(Empty::<Bytes>::new())
                .unwrap();
            let response = sender.send_request(request).await.unwrap();
            let body = response.into_body().collect().await.unwrap();
            assert_eq!(body.to_bytes(), "hello");
            answered.send(()).await.unwrap();
            was_measured.recv().await.expect("the server's measurement");
        }
        drop(sender);
        connection.await.unwrap().unwrap();
    });
}
