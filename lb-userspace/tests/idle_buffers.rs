//! What a connection holds in hyper and h2 while it waits between requests, counted by this
//! binary's allocator. The vendored copies (`vendor/README.md`) give their buffers back while a
//! connection waits, where upstream keeps them for the connection's life: hyper's HTTP/1 read
//! buffer (while no message is in progress) and head buffer (8 kB each; the head buffer is now
//! sized to the heads written), h2's read (8 kB) and write (16 kB) buffers, and h2's HPACK
//! Huffman decoding buffer (4 kB, taken at the handshake and kept by the decoder and by the
//! values of the dynamic table that shared it; now taken per header block). The daemon's
//! HTTP/1.1 ends are both hyper's: a client's keep-alive connection (hyper's server side) and a
//! pooled backend connection (its client side); an HTTP/2 client's connection is h2's, under
//! hyper's server. Each waiting test serves a request, lets the connection wait, counts what it
//! holds, then serves a second request on it; one more counts the read buffers a streamed
//! response takes (one, not one per chunk).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a test panics with a message; helpers here are part of the tests"
)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::convert::Infallible;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt as _, Empty, Full};
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _, DuplexStream};

/// More than this held by a waiting client connection means one of hyper's 8 kB buffers is
/// kept (1.8 kB without them).
const SERVER_CEILING: isize = 8 * 1024;

/// The same for a backend connection, whose request channel takes a block of its own at the
/// handshake (tokio's unbounded channel allocates room for 32 requests, 8.3 kB here), so that
/// one kept buffer takes it over 16 kB (9.5 kB without them).
const BACKEND_CEILING: isize = 16 * 1024;

/// The same for an HTTP/2 client connection: its connection state (streams, HPACK tables) is
/// larger (7.1 kB), and one of h2's buffers (16 kB write, 8 kB read, 4 kB Huffman) takes it
/// over this.
const HTTP2_SERVER_CEILING: isize = 9 * 1024;

const REQUEST: &[u8] = b"GET / HTTP/1.1\r\nhost: example\r\n\r\n";
const RESPONSE: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhello";

/// The system allocator, counting the bytes live on each thread (a current-thread runtime keeps
/// a test's connection on its thread; tests running beside it count on theirs).
struct Counting;

thread_local! {
    static LIVE: Cell<isize> = const { Cell::new(0) };
    /// Allocations of exactly hyper's read-buffer size, [`READ_BUFFER`].
    static READ_BUFFERS: Cell<usize> = const { Cell::new(0) };
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
            count_read_buffer(layout.size());
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
            count_read_buffer(new_size);
        }
        new
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// hyper's read buffer: what it reserves for a read.
const READ_BUFFER: usize = 8 * 1024;

fn count_read_buffer(size: usize) {
    if size == READ_BUFFER {
        READ_BUFFERS.try_with(|n| n.set(n.get() + 1)).unwrap_or(());
    }
}

fn read_buffers() -> usize {
    READ_BUFFERS.with(Cell::get)
}

fn live() -> isize {
    LIVE.with(Cell::get)
}

/// A lost change can hang a connection rather than grow it (h2 waiting for room in a buffer it
/// gave back): each side fails after this long.
const HANG: Duration = Duration::from_secs(20);

/// `work`, or a panic naming `what` if it takes longer than [`HANG`].
async fn within<T>(what: &str, work: impl Future<Output = T>) -> T {
    tokio::time::timeout(HANG, work)
        .await
        .unwrap_or_else(|_| panic!("{what} hung for {HANG:?}"))
}

/// Lets every task on this thread's runtime run until it waits.
async fn settle() {
    for _ in 0..16 {
        tokio::task::yield_now().await;
    }
}

/// Lets this thread's tasks run until they wait, then checks that what its allocations since
/// `before` hold (printed) is under `ceiling`: over it, a buffer is kept.
async fn check_held(what: &str, round: usize, before: isize, ceiling: isize) {
    settle().await;
    let held = live() - before;
    println!("round {round}: a waiting {what} holds {held} bytes");
    assert!(
        held < ceiling,
        "round {round}: a waiting {what} holds {held} bytes, {ceiling} or more: it keeps a \
         buffer that the vendored hyper or h2 gives back (vendor/README.md)"
    );
}

/// Every server's answer: `hello`.
async fn hello(
    _request: Request<hyper::body::Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    Ok(Response::new(Full::new(Bytes::from_static(b"hello"))))
}

/// A runtime on this thread alone, so that its connections count on this thread.
fn current_thread_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
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
    within("the HTTP/1.1 server connection", http1_server()).await;
}

async fn http1_server() {
    let (mut client, server) = tokio::io::duplex(64 * 1024);
    let before = live();
    let connection = tokio::spawn(
        hyper::server::conn::http1::Builder::new()
            .serve_connection(TokioIo::new(server), hyper::service::service_fn(hello)),
    );
    for round in 0..2 {
        client.write_all(REQUEST).await.unwrap();
        let response = read_response(&mut client).await;
        assert!(response.starts_with("HTTP/1.1 200 OK\r\n"), "{response}");
        drop(response);
        check_held("server connection", round, before, SERVER_CEILING).await;
    }
    drop(client);
    connection.await.unwrap().unwrap();
}

#[tokio::test(flavor = "current_thread")]
async fn a_waiting_backend_connection_keeps_neither_of_hypers_buffers() {
    within("the HTTP/1.1 backend connection", http1_client()).await;
}

async fn http1_client() {
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
        check_held("backend connection", round, before, BACKEND_CEILING).await;
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
    current_thread_runtime().block_on(within("the HTTP/2 server connection", async {
        let before = live();
        let connection = tokio::spawn(
            hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(server_io), hyper::service::service_fn(hello)),
        );
        for round in 0..2 {
            was_answered.recv().await.expect("the client's answer");
            // What the client sends after its answer (window updates) is read too.
            tokio::time::sleep(Duration::from_millis(20)).await;
            check_held(
                "HTTP/2 server connection",
                round,
                before,
                HTTP2_SERVER_CEILING,
            )
            .await;
            measured.send(()).await.unwrap();
        }
        connection.await.unwrap().unwrap();
    }));
    client.join().unwrap();
}

/// Two requests over one HTTP/2 connection, each answered, then waiting for `was_measured`.
fn http2_client(
    io: DuplexStream,
    answered: &tokio::sync::mpsc::Sender<()>,
    mut was_measured: tokio::sync::mpsc::Receiver<()>,
) {
    current_thread_runtime().block_on(within("the HTTP/2 client", async {
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
    }));
}

/// A response body fed by a channel, one chunk at a time.
struct Chunks(tokio::sync::mpsc::Receiver<Bytes>);

impl hyper::body::Body for Chunks {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, Infallible>>> {
        self.0
            .poll_recv(cx)
            .map(|chunk| chunk.map(|data| Ok(hyper::body::Frame::data(data))))
    }
}

#[tokio::test(flavor = "current_thread")]
async fn a_response_in_progress_keeps_its_read_buffer() {
    within("the streamed response", streamed_response()).await;
}

/// While a response's body is streamed, hyper's server reads the client's side at every wake
/// (to see it close): the read buffer is kept meanwhile, not taken again for each chunk.
async fn streamed_response() {
    const CHUNKS: usize = 32;
    let (mut client, server) = tokio::io::duplex(64 * 1024);
    let (chunks, body) = tokio::sync::mpsc::channel(1);
    let body = std::sync::Mutex::new(Some(body));
    let connection = tokio::spawn(hyper::server::conn::http1::Builder::new().serve_connection(
        TokioIo::new(server),
        hyper::service::service_fn(move |_request: Request<hyper::body::Incoming>| {
            let body = body.lock().unwrap().take().expect("one request");
            async move { Ok::<_, Infallible>(Response::new(Chunks(body))) }
        }),
    ));
    client.write_all(REQUEST).await.unwrap();
    let mut answer = [0; 512];
    let mut read_buffers_taken = 0;
    for chunk in 0..CHUNKS {
        let before = read_buffers();
        chunks
            .send(Bytes::from_static(b"0123456789"))
            .await
            .unwrap();
        // The chunk (and, the first time, the head) reaches the client.
        let n = client.read(&mut answer).await.unwrap();
        assert_ne!(n, 0, "closed at chunk {chunk}");
        settle().await;
        if chunk > 0 {
            read_buffers_taken += read_buffers() - before;
        }
    }
    println!("{read_buffers_taken} read buffers taken while {CHUNKS} chunks were sent");
    assert!(
        read_buffers_taken < CHUNKS / 4,
        "{read_buffers_taken} read buffers taken while {CHUNKS} chunks of one response were \
         sent: hyper gives its read buffer back while a message is in progress"
    );
    // The body's end, then the client's.
    drop(chunks);
    let mut rest = Vec::new();
    while !rest.ends_with(b"0\r\n\r\n") {
        let n = client.read(&mut answer).await.unwrap();
        assert_ne!(n, 0, "closed before the body's end");
        rest.extend_from_slice(&answer[..n]);
    }
    drop(client);
    connection.await.unwrap().unwrap();
}
