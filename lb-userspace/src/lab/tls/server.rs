//! [`TlsServer`]: a line-echo TLS backend for the lab, one thread per server.
//!
//! [`TlsServer::start`] spawns a thread (inside a [`NetNs`] if given) that builds a tokio
//! current-thread runtime, binds a listener and reports the bound address back before `start`
//! returns. The thread's [`Backend`] accepts connections, one task each; every task handshakes,
//! then answers each line with `"{identity} {line}\n"` until the client closes. Accepted peer
//! addresses and handshake and open-connection counts go to [`ServerStats`], which the handle
//! reads. Dropping or [`TlsServer::stop`]ping the handle fires a oneshot, the accept loop ends,
//! and dropping the runtime closes every connection.

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, mpsc};
use std::thread::{self, JoinHandle};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket};
use tokio::sync::oneshot;
use tokio_rustls::TlsAcceptor;

use super::{Issued, LabError, io_error};
use crate::lab::NetNs;

/// How long the server waits for a client to finish its handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Pause after a failed `accept` (out of descriptors), so the loop does not spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(10);

/// Listen backlog: room for hundreds of clients connecting at once.
const LISTEN_BACKLOG: u32 = 1024;

/// Longest line the server reads before answering what it has.
const MAX_LINE: u64 = 64 * 1024;

/// A line-echo TLS backend running in its own thread; stops when dropped.
#[derive(Debug)]
pub struct TlsServer {
    identity: String,
    addr: SocketAddr,
    stats: Arc<ServerStats>,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

/// What the server thread shares with its [`TlsServer`] handle.
#[derive(Debug, Default)]
struct ServerStats {
    accepted: Mutex<Vec<SocketAddr>>,
    handshakes_completed: AtomicU64,
    handshakes_failed: AtomicU64,
    open_connections: AtomicU64,
}

/// Tells [`TlsServer::start`] the bound address, or why binding failed.
type ReadySender = mpsc::SyncSender<Result<SocketAddr, LabError>>;

impl TlsServer {
    /// Starts a server on `bind` (port 0 picks one; see [`TlsServer::local_addr`]) presenting
    /// `issued`, inside `ns` if given. Returns once it listens.
    pub fn start(
        ns: Option<&NetNs>,
        bind: SocketAddr,
        identity: &str,
        issued: &Issued,
    ) -> Result<Self, LabError> {
        let acceptor = TlsAcceptor::from(issued.server_config()?);
        let stats = Arc::new(ServerStats::default());
        let (ready_tx, ready_rx) = mpsc::sync_channel(1);
        let (stop_tx, stop_rx) = oneshot::channel();
        let backend = Backend {
            identity: Arc::from(identity),
            acceptor,
            stats: Arc::clone(&stats),
        };
        let body = move || backend.run(bind, stop_rx, &ready_tx);
        let thread_name = thread_name(identity);
        let thread = match ns {
            Some(ns) => ns.spawn(&thread_name, body)?,
            None => thread::Builder::new()
                .name(thread_name.clone())
                .spawn(body)
                .map_err(|source| LabError::Thread {
                    name: thread_name.clone(),
                    reason: source.to_string(),
                })?,
        };
        let mut server = Self {
            identity: identity.to_owned(),
            addr: bind,
            stats,
            stop: Some(stop_tx),
            thread: Some(thread),
        };
        server.addr = match ready_rx.recv() {
            Ok(ready) => ready?,
            Err(mpsc::RecvError) => {
                return Err(LabError::Thread {
                    name: thread_name,
                    reason: "ended before listening".to_owned(),
                });
            }
        };
        Ok(server)
    }

    /// The address the server listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// The name the server puts before every reply.
    pub fn identity(&self) -> &str {
        &self.identity
    }

    /// The peer address of every connection accepted so far, in order.
    pub fn accepted(&self) -> Vec<SocketAddr> {
        self.stats.lock_accepted().clone()
    }

    /// How many TLS handshakes completed.
    pub fn handshakes_completed(&self) -> u64 {
        self.stats.handshakes_completed.load(Ordering::Relaxed)
    }

    /// How many TLS handshakes failed or timed out.
    pub fn handshakes_failed(&self) -> u64 {
        self.stats.handshakes_failed.load(Ordering::Relaxed)
    }

    /// How many accepted connections are still open.
    pub fn open_connections(&self) -> u64 {
        self.stats.open_connections.load(Ordering::Relaxed)
    }

    /// Stops the server, closes its connections and joins its thread.
    pub fn stop(mut self) -> Result<(), LabError> {
        self.shutdown()
    }

    /// Signals the thread to stop and joins it; does nothing the second time.
    fn shutdown(&mut self) -> Result<(), LabError> {
        if let Some(stop) = self.stop.take()
            && stop.send(()).is_err()
        {
            tracing::debug!("lab TLS server {} had already stopped", self.identity);
        }
        let Some(thread) = self.thread.take() else {
            return Ok(());
        };
        thread.join().map_err(|_| LabError::Thread {
            name: thread_name(&self.identity),
            reason: "panicked".to_owned(),
        })
    }
}

impl Drop for TlsServer {
    fn drop(&mut self) {
        if let Err(error) = self.shutdown() {
            tracing::warn!(%error, "lab TLS server {} did not stop cleanly", self.identity);
        }
    }
}

/// The name of the thread serving `identity`.
fn thread_name(identity: &str) -> String {
    format!("tls-{identity}")
}

/// The server thread's state.
struct Backend {
    identity: Arc<str>,
    acceptor: TlsAcceptor,
    stats: Arc<ServerStats>,
}

impl Backend {
    /// Body of the server thread: runtime, listener, then the accept loop until `stop`.
    fn run(self, bind: SocketAddr, stop: oneshot::Receiver<()>, ready: &ReadySender) {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build();
        let runtime = match runtime {
            Ok(runtime) => runtime,
            Err(source) => {
                return report_ready(ready, Err(io_error("start a runtime for", bind)(source)));
            }
        };
        runtime.block_on(async move {
            let listener = match listen(bind) {
                Ok((listener, addr)) => {
                    report_ready(ready, Ok(addr));
                    listener
                }
                Err(error) => return report_ready(ready, Err(error)),
            };
            self.accept_loop(listener, stop).await;
        });
        // Dropping the runtime here cancels the connection tasks and closes their sockets.
    }

    /// Accepts connections, one task each, until `stop` fires or its sender is dropped.
    async fn accept_loop(&self, listener: TcpListener, mut stop: oneshot::Receiver<()>) {
        loop {
            tokio::select! {
                _ = &mut stop => return,
                accepted = listener.accept() => match accepted {
                    Ok((stream, peer)) => {
                        let open = self.stats.record_accept(peer);
                        let identity = Arc::clone(&self.identity);
                        let acceptor = self.acceptor.clone();
                        let stats = Arc::clone(&self.stats);
                        tokio::spawn(async move {
                            serve_connection(stream, acceptor, &identity, &stats).await;
                            drop(open);
                        });
                    }
                    Err(error) => {
                        tracing::warn!(%error, "lab TLS server {}: accept failed", self.identity);
                        tokio::time::sleep(ACCEPT_BACKOFF).await;
                    }
                },
            }
        }
    }
}

/// Hands the listening address (or the failure) to [`TlsServer::start`].
fn report_ready(ready: &ReadySender, result: Result<SocketAddr, LabError>) {
    // `start` blocks in `recv` until this arrives, so the receiver is still there.
    if ready.send(result).is_err() {
        tracing::debug!("lab TLS server: nobody waited for the listening address");
    }
}

impl ServerStats {
    /// Records a new connection; the returned guard counts it as open until dropped.
    fn record_accept(self: &Arc<Self>, peer: SocketAddr) -> OpenConnection {
        self.lock_accepted().push(peer);
        self.open_connections.fetch_add(1, Ordering::Relaxed);
        OpenConnection(Arc::clone(self))
    }

    /// The accepted peer list; a panic while it was held leaves it usable.
    fn lock_accepted(&self) -> MutexGuard<'_, Vec<SocketAddr>> {
        self.accepted.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Counts one connection as open while alive.
struct OpenConnection(Arc<ServerStats>);

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.0.open_connections.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A listener with SO_REUSEADDR, and the address it got.
fn listen(bind: SocketAddr) -> Result<(TcpListener, SocketAddr), LabError> {
    let io_error = io_error("listen on", bind);
    let socket = match bind {
        SocketAddr::V4(_) => TcpSocket::new_v4(),
        SocketAddr::V6(_) => TcpSocket::new_v6(),
    }
    .map_err(io_error)?;
    socket.set_reuseaddr(true).map_err(io_error)?;
    socket.bind(bind).map_err(io_error)?;
    let listener = socket.listen(LISTEN_BACKLOG).map_err(io_error)?;
    let addr = listener.local_addr().map_err(io_error)?;
    Ok((listener, addr))
}

/// Handshakes, then echoes lines until the client closes.
async fn serve_connection(
    stream: tokio::net::TcpStream,
    acceptor: TlsAcceptor,
    identity: &str,
    stats: &ServerStats,
) {
    if let Err(error) = stream.set_nodelay(true) {
        tracing::debug!(%error, "lab TLS server {identity}: TCP_NODELAY");
    }
    let handshake = tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream))
        .await
        .unwrap_or_else(|_elapsed| {
            let reason = format!("no handshake within {HANDSHAKE_TIMEOUT:?}");
            Err(io::Error::new(io::ErrorKind::TimedOut, reason))
        });
    let tls = match handshake {
        Ok(tls) => tls,
        Err(error) => {
            stats.handshakes_failed.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(%error, "lab TLS server {identity}: handshake failed");
            return;
        }
    };
    stats.handshakes_completed.fetch_add(1, Ordering::Relaxed);
    if let Err(error) = echo_lines(tls, identity).await {
        tracing::debug!(%error, "lab TLS server {identity}: connection ended");
    }
}

/// The most a `download N` or `upload N` line may move.
pub const MAX_TRANSFER: u64 = 256 << 20;

/// Answers every line with `"{identity} {line}\n"` until end of stream. Two lines do more:
/// `download N` is followed, after the reply line, by N bytes from the server; `upload N` is
/// followed by N bytes from the client, which the server reads before it replies.
async fn echo_lines<S>(stream: S, identity: &str) -> io::Result<()>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut stream = tokio::io::BufReader::new(stream);
    let mut line = Vec::new();
    loop {
        line.clear();
        let read = (&mut stream)
            .take(MAX_LINE)
            .read_until(b'\n', &mut line)
            .await?;
        if read == 0 {
            return Ok(());
        }
        let text = String::from_utf8_lossy(trim_newline(&line)).into_owned();
        let transfer = |prefix: &str| {
            text.strip_prefix(prefix)
                .and_then(|n| n.parse::<u64>().ok())
                .filter(|&n| n <= MAX_TRANSFER)
        };
        if let Some(size) = transfer("upload ") {
            let copied =
                tokio::io::copy(&mut (&mut stream).take(size), &mut tokio::io::sink()).await?;
            if copied < size {
                return Ok(());
            }
        }
        let reply = format!("{identity} {text}\n");
        let writer = stream.get_mut();
        writer.write_all(reply.as_bytes()).await?;
        if let Some(size) = transfer("download ") {
            send_pattern(writer, size).await?;
        }
        writer.flush().await?;
    }
}

/// Writes `size` bytes of a repeating pattern.
async fn send_pattern<W: AsyncWrite + Unpin>(writer: &mut W, size: u64) -> io::Result<()> {
    let chunk: Vec<u8> = (0..64 * 1024u32).map(|i| (i % 251) as u8).collect();
    let mut left = size;
    while left > 0 {
        let n = usize::try_from(left.min(chunk.len() as u64)).unwrap_or(chunk.len());
        writer.write_all(&chunk[..n]).await?;
        left -= n as u64;
    }
    Ok(())
}

/// `line` without its trailing `\n` or `\r\n`.
fn trim_newline(line: &[u8]) -> &[u8] {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    line.strip_suffix(b"\r").unwrap_or(line)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::super::test_support::{start, test_pki, wait_for};
    use super::super::{TlsClientConn, client_config};

    #[test]
    fn hundreds_of_long_lived_connections() {
        let pki = test_pki();
        let issued = pki.issue(&["backend.lab"]).expect("issue");
        let server = start("b2", &issued);
        let config = client_config(&pki.roots().expect("roots")).expect("client config");
        let mut clients: Vec<TlsClientConn> = (0..200)
            .map(|_| {
                TlsClientConn::connect_with(Arc::clone(&config), "backend.lab", server.local_addr())
                    .expect("connect")
            })
            .collect();
        for round in 0..3 {
            for (i, client) in clients.iter_mut().enumerate() {
                let reply = client.exchange(&format!("{i} {round}")).expect("exchange");
                assert_eq!(reply, format!("b2 {i} {round}"));
            }
        }
        assert_eq!(server.open_connections(), 200);
        assert_eq!(server.accepted().len(), 200);
        clients.clear();
        wait_for("connections to close", || server.open_connections() == 0);
    }
}
