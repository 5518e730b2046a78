//! The raw side of the L7 tests (`l7_http.rs`, `l7_limits.rs`, `l7_timeouts.rs`, ...), beside the
//! harness of `l7.rs`:
//!
//! - raw clients of a [`Site`] that control every byte and see every close: [`RawH1`]
//!   (HTTP/1.1 over TLS) and [`RawH2`] (HTTP/2 frames over TLS, requests encoded with literal
//!   HPACK);
//! - backends that misbehave: [`RawBackend`] (closes each connection once it has read a request,
//!   or answers every request with the same bytes) and [`HangingBackend`] (its accept queue is
//!   full, so a connection to it never completes);
//! - checks of the balancer's own answers ([`assert_plain_error`]) and of what a backend echoed
//!   ([`echoed`]).
//!
//! Data flow: [`Site::start`] -> [`Site::h1`]/[`Site::h2`] -> bytes -> [`RawResponse`]s and
//! [`Frame`]s, and the proxy's counters ([`Site::counter`]). Traffic stays on 127.0.0.1.

#![allow(
    dead_code,
    reason = "each test binary uses a part of the shared helpers"
)]

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use tokio::{
    io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _},
    net::{TcpListener, TcpSocket, TcpStream},
    task::JoinHandle,
};
use tokio_rustls::client::TlsStream;

use super::l7::{HOST, Site, TIMEOUT};

/// Raw clients of a [`Site`].
impl Site {
    /// A raw HTTP/1.1 connection over `tcp` (connected to the listener).
    pub async fn h1_over(&self, tcp: TcpStream) -> RawH1 {
        RawH1 {
            stream: self
                .handshake(tcp, b"http/1.1")
                .await
                .expect("TLS handshake with the listener"),
            buf: Vec::new(),
        }
    }

    /// A raw HTTP/1.1 connection.
    pub async fn h1(&self) -> RawH1 {
        RawH1 {
            stream: self.tls(b"http/1.1").await,
            buf: Vec::new(),
        }
    }

    /// A raw HTTP/2 connection whose preface and (empty) SETTINGS are sent.
    pub async fn h2(&self) -> RawH2<TlsStream<TcpStream>> {
        let mut stream = self.tls(b"h2").await;
        stream
            .write_all(&h2_preface())
            .await
            .expect("sending the HTTP/2 preface");
        RawH2 { stream }
    }
}

/// Asserts that `answer` is the balancer's own short plain-text answer with `status`, naming
/// none of `site`'s backends (name, address or port).
pub fn assert_plain_error(site: &Site, status: u16, answer: &RawResponse) {
    assert_eq!(answer.status, status, "the status: {answer:?}");
    let content_type = answer.header("content-type").unwrap_or_default();
    assert!(
        content_type.starts_with("text/plain"),
        "a plain body: {answer:?}"
    );
    assert_body_names_no_backend(site, &answer.body);
}

/// Asserts that an error body is short and names no backend of `site`.
pub fn assert_body_names_no_backend(site: &Site, body: &[u8]) {
    let text = String::from_utf8_lossy(body);
    assert!(text.len() < 100, "a short body: {text:?}");
    assert!(
        !text.contains("backend") && !text.contains("127.0.0.1"),
        "no backend in {text:?}"
    );
    for port in &site.ports {
        assert!(
            !text.contains(&port.to_string()),
            "no backend port in {text:?}"
        );
    }
}

/// A response read by a raw client.
#[derive(Debug)]
pub struct RawResponse {
    pub status: u16,
    /// Names in lower case, in the order received.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl RawResponse {
    /// The first value of header `name` (lower case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// Whether header `name` (lower case) is present.
    pub fn has(&self, name: &str) -> bool {
        self.header(name).is_some()
    }

    /// The lab backend that answered (`x-backend`), if one did.
    pub fn backend(&self) -> Option<&str> {
        self.header("x-backend")
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// The request line and headers a lab backend echoed for `/headers`: the first line, and the
/// headers as (name, value).
pub fn echoed(body: &[u8]) -> (String, Vec<(String, String)>) {
    let text = String::from_utf8_lossy(body);
    let mut lines = text.lines();
    let first = lines.next().unwrap_or_default().to_owned();
    let headers = lines
        .filter_map(|line| line.split_once(": "))
        .map(|(n, v)| (n.to_owned(), v.to_owned()))
        .collect();
    (first, headers)
}

/// The values of `name` among `headers`.
pub fn values<'a>(headers: &'a [(String, String)], name: &str) -> Vec<&'a str> {
    headers
        .iter()
        .filter(|(n, _)| n == name)
        .map(|(_, v)| v.as_str())
        .collect()
}

/// An HTTP/1.1 connection over TLS that writes the bytes it is given and parses what comes
/// back (bodies by `Content-Length` or chunked).
#[derive(Debug)]
pub struct RawH1 {
    stream: TlsStream<TcpStream>,
    buf: Vec<u8>,
}

impl RawH1 {
    pub async fn write(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.stream.write_all(bytes).await?;
        self.stream.flush().await
    }

    /// Reads more bytes into the buffer; false at the end of the stream (or an error).
    async fn fill(&mut self) -> bool {
        let mut chunk = [0u8; 16 * 1024];
        match self.stream.read(&mut chunk).await {
            Ok(0) | Err(_) => false,
            Ok(n) => {
                self.buf.extend_from_slice(&chunk[..n]);
                true
            }
        }
    }

    /// Takes `n` bytes from the buffer, reading as needed.
    async fn take(&mut self, n: usize) -> Vec<u8> {
        while self.buf.len() < n {
            assert!(self.fill().await, "the connection closed mid-response");
        }
        self.buf.drain(..n).collect()
    }

    /// Takes a line (without its CRLF), reading as needed.
    async fn line(&mut self) -> String {
        loop {
            if let Some(at) = self.buf.windows(2).position(|w| w == b"\r\n") {
                let line = self.take(at + 2).await;
                return String::from_utf8_lossy(&line[..at]).into_owned();
            }
            assert!(self.fill().await, "the connection closed mid-response");
        }
    }

    /// The next response, read whole.
    pub async fn response(&mut self) -> RawResponse {
        tokio::time::timeout(TIMEOUT, self.read_response())
            .await
            .expect("a response in time")
    }

    async fn read_response(&mut self) -> RawResponse {
        let status_line = self.line().await;
        let status = status_line
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("a status line: {status_line:?}"));
        let mut headers = Vec::new();
        loop {
            let line = self.line().await;
            if line.is_empty() {
                break;
            }
            let (name, value) = line.split_once(':').expect("a header line");
            headers.push((name.to_ascii_lowercase(), value.trim().to_owned()));
        }
        let mut response = RawResponse {
            status,
            headers,
            body: Vec::new(),
        };
        if response
            .header("transfer-encoding")
            .is_some_and(|te| te.contains("chunked"))
        {
            loop {
                let size = self.line().await;
                let size = usize::from_str_radix(size.split(';').next().unwrap_or("").trim(), 16)
                    .expect("a chunk size");
                let chunk = self.take(size).await;
                let _crlf = self.take(2).await;
                if size == 0 {
                    break;
                }
                response.body.extend_from_slice(&chunk);
            }
        } else if let Some(length) = response.header("content-length") {
            let length = length.parse().expect("a content length");
            response.body = self.take(length).await;
        }
        response
    }

    /// Waits up to `limit` for the server to close the connection (reading and dropping
    /// whatever it sends); how long that took, or `None` if it is still open.
    pub async fn closed_within(&mut self, limit: Duration) -> Option<Duration> {
        let start = Instant::now();
        let closed = tokio::time::timeout(limit, async {
            while self.fill().await {
                self.buf.clear();
            }
        })
        .await;
        closed.ok().map(|()| start.elapsed())
    }
}

/// An HTTP/2 frame.
#[derive(Debug)]
pub struct Frame {
    pub kind: u8,
    pub flags: u8,
    pub stream: u32,
    pub payload: Vec<u8>,
}

pub const DATA: u8 = 0x0;
pub const HEADERS: u8 = 0x1;
pub const RST_STREAM: u8 = 0x3;
pub const SETTINGS: u8 = 0x4;
pub const PING: u8 = 0x6;
pub const GOAWAY: u8 = 0x7;
pub const END_STREAM: u8 = 0x1;
pub const ACK: u8 = 0x1;
pub const SETTINGS_MAX_CONCURRENT_STREAMS: u16 = 0x3;
pub const REFUSED_STREAM: u32 = 0x7;
pub const CANCEL: u32 = 0x8;

impl Frame {
    /// A SETTINGS frame's parameters (id, value).
    pub fn settings(&self) -> Vec<(u16, u32)> {
        self.payload
            .chunks_exact(6)
            .map(|p| {
                (
                    u16::from_be_bytes([p[0], p[1]]),
                    u32::from_be_bytes([p[2], p[3], p[4], p[5]]),
                )
            })
            .collect()
    }

    /// The error code of a RST_STREAM or GOAWAY frame.
    pub fn error_code(&self) -> Option<u32> {
        let at = match self.kind {
            RST_STREAM => 0,
            GOAWAY => 4,
            _ => return None,
        };
        let code = self.payload.get(at..at + 4)?;
        Some(u32::from_be_bytes([code[0], code[1], code[2], code[3]]))
    }

    /// The `:status` of a response head, if it comes first in the block as an HPACK encoder
    /// sends it: a static-table entry (0x88 to 0x8e), or a literal of the `:status` name
    /// (entry 8) with three digits, plain or Huffman-coded. Neither padded nor prioritised.
    pub fn status(&self) -> Option<u16> {
        const STATIC: [u16; 7] = [200, 204, 206, 304, 400, 404, 500];
        if self.kind != HEADERS || self.flags & 0x28 != 0 {
            return None;
        }
        let (&first, rest) = self.payload.split_first()?;
        if (0x88..=0x8e).contains(&first) {
            return Some(STATIC[usize::from(first - 0x88)]);
        }
        // Literal with incremental indexing (0x48), without (0x08) or never indexed (0x18).
        if ![0x48, 0x08, 0x18].contains(&first) {
            return None;
        }
        let (&length, value) = rest.split_first()?;
        let value = value.get(..usize::from(length & 0x7f))?;
        let digits = if length & 0x80 == 0 {
            String::from_utf8(value.to_vec()).ok()?
        } else {
            huffman_digits(value)?
        };
        digits.parse().ok()
    }

    /// Whether this is a response head with `:status: 200`: an HPACK encoder sends it as the
    /// static table's entry 8 (byte 0x88); a padded or prioritised HEADERS frame is not
    /// recognised (the server sends neither).
    pub fn is_ok_head(&self) -> bool {
        self.kind == HEADERS && self.flags & 0x28 == 0 && self.payload.first() == Some(&0x88)
    }
}

/// Decodes HPACK Huffman code made only of digits (RFC 7541 appendix B: '0' to '2' are five
/// bits, 0 to 2; '3' to '9' six, 0x19 to 0x1f); the padding is ones.
fn huffman_digits(bytes: &[u8]) -> Option<String> {
    let bits: Vec<u8> = bytes
        .iter()
        .flat_map(|b| (0..8).rev().map(move |i| (b >> i) & 1))
        .collect();
    let mut digits = String::new();
    let mut at = 0;
    while at < bits.len() {
        let rest = &bits[at..];
        if rest.len() < 5 || rest.iter().all(|&b| b == 1) {
            break;
        }
        let five = rest[..5].iter().fold(0u8, |v, &b| v << 1 | b);
        if five < 3 {
            digits.push(char::from(b'0' + five));
            at += 5;
            continue;
        }
        let six = (five << 1) | *rest.get(5)?;
        if !(0x19..=0x1f).contains(&six) {
            return None;
        }
        digits.push(char::from(b'3' + six - 0x19));
        at += 6;
    }
    Some(digits)
}

/// An HTTP/2 frame of `kind`.
pub fn h2_frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let length = u32::try_from(payload.len()).expect("a frame's length");
    let mut frame = length.to_be_bytes()[1..].to_vec();
    frame.extend([kind, flags]);
    frame.extend(stream.to_be_bytes());
    frame.extend(payload);
    frame
}

/// The client preface and an empty SETTINGS frame.
pub fn h2_preface() -> Vec<u8> {
    let mut bytes = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    bytes.extend(h2_frame(SETTINGS, 0, 0, &[]));
    bytes
}

/// An HPACK integer with an `n`-bit prefix after `flags` (RFC 7541 section 5.1).
fn hpack_int(out: &mut Vec<u8>, flags: u8, n: u32, mut value: usize) {
    let max = (1usize << n) - 1;
    if value < max {
        out.push(flags | u8::try_from(value).expect("under the prefix"));
        return;
    }
    out.push(flags | u8::try_from(max).expect("a prefix"));
    value -= max;
    while value >= 128 {
        out.push(u8::try_from(value % 128).expect("seven bits") | 0x80);
        value /= 128;
    }
    out.push(u8::try_from(value).expect("seven bits"));
}

/// An HPACK string literal, not Huffman-coded.
fn hpack_str(out: &mut Vec<u8>, text: &str) {
    hpack_int(out, 0, 7, text.len());
    out.extend(text.as_bytes());
}

/// A HEADERS frame ending the stream: `GET https://HOST{path}` with `extra` headers (lower
/// case names), every field a literal "without indexing".
pub fn h2_get(stream: u32, path: &str, extra: &[(&str, &str)]) -> Vec<u8> {
    // Static table: 2 = `:method: GET`, 7 = `:scheme: https`; names 1 = `:authority`,
    // 4 = `:path`.
    let mut block = vec![0x82, 0x87];
    hpack_int(&mut block, 0x00, 4, 1);
    hpack_str(&mut block, HOST);
    hpack_int(&mut block, 0x00, 4, 4);
    hpack_str(&mut block, path);
    for (name, value) in extra {
        block.push(0x00);
        hpack_str(&mut block, name);
        hpack_str(&mut block, value);
    }
    // END_STREAM | END_HEADERS
    h2_frame(HEADERS, 0x1 | 0x4, stream, &block)
}

pub const CONTINUATION: u8 = 0x9;
pub const END_HEADERS: u8 = 0x4;

/// `h2_get`'s request as a HEADERS frame and as many CONTINUATION frames as a header block
/// of its size needs at the default 16 KiB frame size; the stream ends with the head unless
/// `body` is given, which follows in one DATA frame.
pub fn h2_request(stream: u32, path: &str, extra: &[(&str, &str)], body: Option<&[u8]>) -> Vec<u8> {
    let whole = h2_get(stream, path, extra);
    let block = &whole[9..];
    let mut frames = Vec::new();
    let chunks: Vec<&[u8]> = block.chunks(16 * 1024).collect();
    for (i, chunk) in chunks.iter().enumerate() {
        let last = i + 1 == chunks.len();
        let end_headers = if last { END_HEADERS } else { 0 };
        if i == 0 {
            let end_stream = if body.is_none() { END_STREAM } else { 0 };
            frames.extend(h2_frame(HEADERS, end_stream | end_headers, stream, chunk));
        } else {
            frames.extend(h2_frame(CONTINUATION, end_headers, stream, chunk));
        }
    }
    if let Some(body) = body {
        frames.extend(h2_frame(DATA, END_STREAM, stream, body));
    }
    frames
}

/// A RST_STREAM frame.
pub fn h2_reset(stream: u32, code: u32) -> Vec<u8> {
    h2_frame(RST_STREAM, 0, stream, &code.to_be_bytes())
}

/// Reads one frame; `None` once the connection is closed (or fails).
pub async fn read_frame<R: AsyncRead + Unpin>(reader: &mut R) -> Option<Frame> {
    let mut head = [0u8; 9];
    reader.read_exact(&mut head).await.ok()?;
    let length = u32::from_be_bytes([0, head[0], head[1], head[2]]);
    let mut payload = vec![0u8; usize::try_from(length).ok()?];
    reader.read_exact(&mut payload).await.ok()?;
    Some(Frame {
        kind: head[3],
        flags: head[4],
        stream: u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff,
        payload,
    })
}

/// An HTTP/2 connection that sends the frames it is given and returns those it receives.
#[derive(Debug)]
pub struct RawH2<S> {
    pub stream: S,
}

impl<S: AsyncRead + AsyncWrite + Unpin> RawH2<S> {
    pub async fn write(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.stream.write_all(bytes).await?;
        self.stream.flush().await
    }

    /// The next frame (a server's SETTINGS acknowledged on the way); `None` once closed.
    pub async fn frame(&mut self) -> Option<Frame> {
        let frame = tokio::time::timeout(TIMEOUT, read_frame(&mut self.stream))
            .await
            .expect("a frame or the close in time")?;
        if frame.kind == SETTINGS && frame.flags & ACK == 0 {
            // A write to a closed connection fails; the next read tells.
            drop(self.write(&h2_frame(SETTINGS, ACK, 0, &[])).await);
        }
        Some(frame)
    }

    /// Reads frames until stream `id` ends (END_STREAM or RST_STREAM); whether its response
    /// head was `:status: 200`.
    pub async fn answered_ok(&mut self, id: u32) -> bool {
        let mut ok = false;
        while let Some(frame) = self.frame().await {
            if frame.stream != id {
                continue;
            }
            ok |= frame.is_ok_head();
            if frame.kind == RST_STREAM || frame.flags & END_STREAM != 0 {
                return ok;
            }
        }
        panic!("the connection closed before stream {id} ended");
    }

    /// Waits up to `limit` for the server to close the connection, answering its PINGs as
    /// any client does (a graceful close waits for one) and dropping its other frames; how
    /// long that took, or `None` if it is still open.
    pub async fn closed_within(&mut self, limit: Duration) -> Option<Duration> {
        let start = Instant::now();
        let closed = tokio::time::timeout(limit, async {
            while let Some(frame) = read_frame(&mut self.stream).await {
                if frame.kind == PING && frame.flags & ACK == 0 {
                    drop(self.write(&h2_frame(PING, ACK, 0, &frame.payload)).await);
                }
            }
        })
        .await;
        closed.ok().map(|()| start.elapsed())
    }
}

/// What a [`RawBackend`] does with each request it reads.
#[derive(Clone, Copy, Debug)]
pub enum Behaviour {
    /// Closes the connection without answering.
    Close,
    /// Writes these bytes (a whole response) and reads the next request.
    Answer(&'static str),
    /// Writes these bytes (the start of a response), then sends nothing more and keeps the
    /// connection open.
    Stall(&'static str),
}

/// A plain-TCP HTTP/1.1 "backend" that reads requests (head, then a `Content-Length` or
/// chunked body) and does what its [`Behaviour`] says; counts the requests it read whole.
/// Stops when dropped.
#[derive(Debug)]
pub struct RawBackend {
    pub address: SocketAddr,
    requests: Arc<AtomicU64>,
    task: JoinHandle<()>,
}

impl Drop for RawBackend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl RawBackend {
    pub async fn start(behaviour: Behaviour) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("binding a raw backend");
        let address = listener.local_addr().expect("local address");
        let requests = Arc::new(AtomicU64::new(0));
        let counted = Arc::clone(&requests);
        let task = tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                tokio::spawn(raw_connection(tcp, behaviour, Arc::clone(&counted)));
            }
        });
        Self {
            address,
            requests,
            task,
        }
    }

    pub fn port(&self) -> u16 {
        self.address.port()
    }

    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }
}

async fn raw_connection(mut tcp: TcpStream, behaviour: Behaviour, requests: Arc<AtomicU64>) {
    let mut buf = Vec::new();
    loop {
        let Some(used) = read_request(&mut tcp, &mut buf).await else {
            return;
        };
        buf.drain(..used);
        requests.fetch_add(1, Ordering::Relaxed);
        match behaviour {
            Behaviour::Close => return,
            Behaviour::Answer(bytes) => {
                if tcp.write_all(bytes.as_bytes()).await.is_err() {
                    return;
                }
            }
            Behaviour::Stall(bytes) => {
                if tcp.write_all(bytes.as_bytes()).await.is_err() {
                    return;
                }
                // Held open until the balancer closes it.
                let mut rest = [0u8; 1024];
                while matches!(tcp.read(&mut rest).await, Ok(n) if n > 0) {}
                return;
            }
        }
    }
}

/// Reads into `buf` until it holds a whole request; its length, or `None` if the connection
/// ended first.
async fn read_request(tcp: &mut TcpStream, buf: &mut Vec<u8>) -> Option<usize> {
    loop {
        if let Some(length) = request_length(buf) {
            return Some(length);
        }
        let mut chunk = [0u8; 16 * 1024];
        match tcp.read(&mut chunk).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

/// The length of the whole request at the start of `buf`, if it is all there.
fn request_length(buf: &[u8]) -> Option<usize> {
    let head = buf.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
    let text = String::from_utf8_lossy(&buf[..head]).to_ascii_lowercase();
    let field = |name: &str| {
        text.lines()
            .find_map(|line| line.strip_prefix(name))
            .map(|v| v.trim().to_owned())
    };
    if field("transfer-encoding:").is_some_and(|te| te.contains("chunked")) {
        let end = buf[head..].windows(5).position(|w| w == b"0\r\n\r\n")?;
        return Some(head + end + 5);
    }
    let body: usize = field("content-length:").map_or(Some(0), |v| v.parse().ok())?;
    (buf.len() >= head + body).then_some(head + body)
}

/// A backend whose accept queue is full: a connection to it never completes (the kernel drops
/// its SYNs), as with a host that does not answer.
#[derive(Debug)]
pub struct HangingBackend {
    pub address: SocketAddr,
    _listener: TcpListener,
    _filler: TcpStream,
}

impl HangingBackend {
    pub async fn start() -> Self {
        let socket = TcpSocket::new_v4().expect("a socket");
        socket
            .bind("127.0.0.1:0".parse().expect("an address"))
            .expect("binding a hanging backend");
        // A backlog of 0 queues one connection; it is never accepted.
        let listener = socket.listen(0).expect("listening");
        let address = listener.local_addr().expect("local address");
        let filler = TcpStream::connect(address)
            .await
            .expect("the connection that fills the queue");
        let probe = tokio::time::timeout(Duration::from_millis(200), TcpStream::connect(address));
        assert!(
            probe.await.is_err(),
            "a connection to a full accept queue should hang"
        );
        Self {
            address,
            _listener: listener,
            _filler: filler,
        }
    }

    pub fn port(&self) -> u16 {
        self.address.port()
    }
}
