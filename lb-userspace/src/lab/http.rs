//! The lab's HTTP backend, for the L7 listeners' tests, `lb demo` and the benchmarks: hyper,
//! HTTP/1.1 and HTTP/2 (by ALPN over TLS, or by the client's preface over plain TCP), on the
//! runtime it is started from. It names itself in every answer and counts what it received
//! and sent.
//!
//! | request | answer |
//! | --- | --- |
//! | `GET /headers` | the request line and headers as it saw them, one per line |
//! | `POST /echo` | the request body, streamed back as it arrives |
//! | `POST /grpc` | once the request has ended: its body back, what it saw as `x-seen-te` and `x-seen-trailers`, then trailers `grpc-status: 0`, `grpc-message: echoed N bytes` |
//! | `GET /bytes?n=N` | N bytes, streamed in 64 KiB chunks |
//! | `GET /delay?ms=N` | its name, after N ms |
//! | `GET /ws` with `Upgrade: websocket` | 101, then every byte echoed until the client closes |
//! | anything else | its name |
//!
//! Every answer carries `x-backend: NAME`.

use std::{
    convert::Infallible,
    net::SocketAddr,
    os::fd::{AsFd as _, AsRawFd as _, OwnedFd},
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    task::{Context, Poll},
    time::Duration,
};

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full, combinators::BoxBody};
use hyper::{
    Request, Response, StatusCode,
    body::{Frame, Incoming},
    header::{self, HeaderValue},
    service::service_fn,
};
use hyper_util::{
    rt::{TokioExecutor, TokioIo},
    server::conn::auto,
};
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::TcpListener,
    task::JoinHandle,
};

/// What a backend saw.
#[derive(Debug, Default)]
pub struct Seen {
    pub connections: AtomicU64,
    pub requests: AtomicU64,
    /// Application bytes read from clients (after TLS).
    pub bytes_in: AtomicU64,
    /// Application bytes written to clients (before TLS): what a slow client held back.
    pub bytes_out: AtomicU64,
}

/// A running lab HTTP backend; stops when dropped.
#[derive(Debug)]
pub struct HttpBackend {
    pub name: String,
    pub address: SocketAddr,
    pub seen: Arc<Seen>,
    task: JoinHandle<()>,
    /// The listening socket, shut down at once when the backend is killed.
    listening: OwnedFd,
    /// Set when the backend is killed: its open connections close too.
    killed: tokio::sync::watch::Sender<bool>,
}

impl Drop for HttpBackend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl HttpBackend {
    /// Serves on `address` (port 0: any) as `name`, over TLS if `tls` is given.
    pub async fn start(
        address: SocketAddr,
        name: &str,
        tls: Option<Arc<rustls::ServerConfig>>,
    ) -> std::io::Result<Self> {
        let listener = TcpListener::bind(address).await?;
        let address = listener.local_addr()?;
        let listening = listener.as_fd().try_clone_to_owned()?;
        let seen = Arc::new(Seen::default());
        let (killed, watch) = tokio::sync::watch::channel(false);
        let task = tokio::spawn(serve(
            listener,
            name.to_owned(),
            tls,
            Arc::clone(&seen),
            watch,
        ));
        Ok(Self {
            name: name.to_owned(),
            address,
            seen,
            task,
            listening,
            killed,
        })
    }

    /// Stops as a killed process would: the listening socket and every HTTP connection close
    /// at once. When it returns, connections to it are refused and no request is answered,
    /// even one on a connection opened before: the tasks that serve them end at their next
    /// turn, and one that still runs answers nothing. (A connection already upgraded to a
    /// WebSocket echo goes on: no test kills a backend under one.)
    pub fn kill(&self) {
        // First, so that the accept loop, woken by the shutdown, finds it set and ends.
        self.killed.send_replace(true);
        // A listening socket shut down takes no more connections (SYNs are refused) and wakes
        // its accept with an error, now rather than when the accepting task next runs.
        // SAFETY: shutdown(2) on a descriptor this value owns; it reads or writes no memory.
        unsafe { libc::shutdown(self.listening.as_raw_fd(), libc::SHUT_RDWR) };
        self.task.abort();
    }

    pub fn requests(&self) -> u64 {
        self.seen.requests.load(Ordering::Relaxed)
    }

    pub fn bytes_in(&self) -> u64 {
        self.seen.bytes_in.load(Ordering::Relaxed)
    }

    pub fn bytes_out(&self) -> u64 {
        self.seen.bytes_out.load(Ordering::Relaxed)
    }
}

async fn serve(
    listener: TcpListener,
    name: String,
    tls: Option<Arc<rustls::ServerConfig>>,
    seen: Arc<Seen>,
    killed: tokio::sync::watch::Receiver<bool>,
) {
    let acceptor = tls.map(tokio_rustls::TlsAcceptor::from);
    loop {
        let tcp = match listener.accept().await {
            Ok((tcp, _)) => tcp,
            Err(_) if *killed.borrow() => return,
            Err(_) => continue,
        };
        drop(tcp.set_nodelay(true));
        seen.connections.fetch_add(1, Ordering::Relaxed);
        let name = name.clone();
        let seen = Arc::clone(&seen);
        let acceptor = acceptor.clone();
        let mut killed = killed.clone();
        tokio::spawn(async move {
            let dead = killed.clone();
            let serve = async move {
                match acceptor {
                    Some(acceptor) => {
                        if let Ok(stream) = acceptor.accept(tcp).await {
                            connection(Counted::new(stream, &seen), name, seen, dead).await;
                        }
                    }
                    None => connection(Counted::new(tcp, &seen), name, seen, dead).await,
                }
            };
            // The kill first: a connection woken both by it and by a request must not answer.
            tokio::select! {
                biased;
                _ = killed.wait_for(|&k| k) => {}
                () = serve => {}
            }
        });
    }
}

async fn connection<S>(
    stream: Counted<S>,
    name: String,
    seen: Arc<Seen>,
    killed: tokio::sync::watch::Receiver<bool>,
) where
    S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let service = service_fn(move |request: Request<Incoming>| {
        let dead = *killed.borrow();
        if !dead {
            seen.requests.fetch_add(1, Ordering::Relaxed);
        }
        let name = name.clone();
        async move {
            if dead {
                // Killed while this connection's task was running: never answer; the task
                // sees the kill at its next turn and closes the connection.
                std::future::pending::<()>().await;
            }
            answer(request, name).await
        }
    });
    let builder = auto::Builder::new(TokioExecutor::new());
    drop(
        builder
            .serve_connection_with_upgrades(TokioIo::new(stream), service)
            .await,
    );
}

type Body = BoxBody<Bytes, hyper::Error>;

fn full(text: impl Into<Bytes>) -> Body {
    Full::new(text.into())
        .map_err(|never: Infallible| match never {})
        .boxed()
}

fn query_number(request: &Request<Incoming>, key: &str) -> u64 {
    request
        .uri()
        .query()
        .unwrap_or("")
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .find(|(k, _)| *k == key)
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0)
}

async fn answer(
    mut request: Request<Incoming>,
    name: String,
) -> Result<Response<Body>, Infallible> {
    let path = request.uri().path().to_owned();
    let mut response = match path.as_str() {
        "/headers" => {
            let mut text = format!(
                "{} {} {:?}\n",
                request.method(),
                request.uri(),
                request.version()
            );
            for (key, value) in request.headers() {
                text.push_str(&format!(
                    "{key}: {}\n",
                    String::from_utf8_lossy(value.as_bytes())
                ));
            }
            Response::new(full(text))
        }
        "/echo" => Response::new(request.into_body().boxed()),
        "/grpc" => echo_with_trailers(request).await,
        "/bytes" => Response::new(
            Generated {
                left: query_number(&request, "n"),
            }
            .boxed(),
        ),
        "/delay" => {
            tokio::time::sleep(Duration::from_millis(query_number(&request, "ms"))).await;
            Response::new(full(format!("{name}\n")))
        }
        "/ws" if request.headers().contains_key(header::UPGRADE) => {
            let upgrade = hyper::upgrade::on(&mut request);
            tokio::spawn(async move {
                if let Ok(upgraded) = upgrade.await {
                    let (mut read, mut write) = tokio::io::split(TokioIo::new(upgraded));
                    drop(tokio::io::copy(&mut read, &mut write).await);
                    // Close as a WebSocket server does once the client has: over TLS, with
                    // close_notify, so that the peer sees a clean end rather than a truncation.
                    drop(tokio::io::AsyncWriteExt::shutdown(&mut write).await);
                }
            });
            let mut response = Response::new(full(Bytes::new()));
            *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
            response
                .headers_mut()
                .insert(header::UPGRADE, HeaderValue::from_static("websocket"));
            response
                .headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
            response
        }
        _ => Response::new(full(format!("{name}\n"))),
    };
    if let Ok(value) = HeaderValue::from_str(&name) {
        response.headers_mut().insert("x-backend", value);
    }
    Ok(response)
}

/// The `/grpc` answer: the request read whole (body and trailers), then its body sent back
/// with trailers, as a gRPC server's unary answer is. What the backend saw of the request's
/// `TE` and trailers comes back in headers (`-` for none).
async fn echo_with_trailers(request: Request<Incoming>) -> Response<Body> {
    let seen_te = request.headers().get(header::TE).map_or_else(
        || "-".to_owned(),
        |v| String::from_utf8_lossy(v.as_bytes()).into_owned(),
    );
    let collected = match request.into_body().collect().await {
        Ok(collected) => collected,
        Err(error) => {
            let mut response = Response::new(full(format!("reading the body: {error}\n")));
            *response.status_mut() = StatusCode::BAD_REQUEST;
            return response;
        }
    };
    let seen_trailers = collected.trailers().map_or_else(
        || "-".to_owned(),
        |trailers| {
            let pairs: Vec<String> = trailers
                .iter()
                .map(|(k, v)| format!("{k}={}", String::from_utf8_lossy(v.as_bytes())))
                .collect();
            pairs.join(",")
        },
    );
    let body = collected.to_bytes();
    let mut trailers = hyper::HeaderMap::new();
    trailers.insert("grpc-status", HeaderValue::from_static("0"));
    if let Ok(message) = HeaderValue::from_str(&format!("echoed {} bytes", body.len())) {
        trailers.insert("grpc-message", message);
    }
    let mut response = Response::new(
        Trailed {
            data: Some(body),
            trailers: Some(trailers),
        }
        .boxed(),
    );
    let headers = response.headers_mut();
    // What an HTTP/1.1 hop needs to carry them (chunked, and announced).
    headers.insert(
        header::TRAILER,
        HeaderValue::from_static("grpc-status, grpc-message"),
    );
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/grpc"),
    );
    for (name, value) in [("x-seen-te", seen_te), ("x-seen-trailers", seen_trailers)] {
        if let Ok(value) = HeaderValue::from_str(&value) {
            headers.insert(name, value);
        }
    }
    response
}

/// A body of one chunk then trailers, of no announced length (so that HTTP/1.1 sends it
/// chunked, the only way it carries trailers).
struct Trailed {
    data: Option<Bytes>,
    trailers: Option<hyper::HeaderMap>,
}

impl hyper::body::Body for Trailed {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        if let Some(data) = self.data.take() {
            return Poll::Ready(Some(Ok(Frame::data(data))));
        }
        Poll::Ready(self.trailers.take().map(|t| Ok(Frame::trailers(t))))
    }
}

/// `left` bytes of 'x', in chunks of 64 KiB.
struct Generated {
    left: u64,
}

impl hyper::body::Body for Generated {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        if self.left == 0 {
            return Poll::Ready(None);
        }
        let n = self.left.min(64 * 1024);
        self.left -= n;
        let chunk = Bytes::from(vec![b'x'; usize::try_from(n).unwrap_or(0)]);
        Poll::Ready(Some(Ok(Frame::data(chunk))))
    }

    fn is_end_stream(&self) -> bool {
        self.left == 0
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        hyper::body::SizeHint::with_exact(self.left)
    }
}

/// A stream that counts the bytes read from it and written to it.
struct Counted<S> {
    inner: S,
    seen: Arc<Seen>,
}

impl<S> Counted<S> {
    fn new(inner: S, seen: &Arc<Seen>) -> Self {
        Self {
            inner,
            seen: Arc::clone(seen),
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Counted<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        let read = buf.filled().len() - before;
        self.seen
            .bytes_in
            .fetch_add(u64::try_from(read).unwrap_or(0), Ordering::Relaxed);
        polled
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Counted<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(written)) = &polled {
            self.seen
                .bytes_out
                .fetch_add(u64::try_from(*written).unwrap_or(0), Ordering::Relaxed);
        }
        polled
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
