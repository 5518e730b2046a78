//! Real TLS for the lab: a throw-away certificate authority, a line-echo TLS server and
//! blocking TLS clients, all on rustls with the ring provider (TLS 1.2 and 1.3).
//!
//! - [`Pki`]: a CA made with rcgen. [`Pki::issue`] signs a leaf for DNS names and IP
//!   addresses, [`Pki::issue_expired`] one whose validity ended long ago; a second [`Pki`] is
//!   the "wrong CA". [`Pki::roots`] is the trust store a client needs.
//! - [`Issued`]: a leaf certificate, its chain and key, as DER and PEM.
//! - [`TlsServer`]: a backend in its own thread (inside a [`NetNs`] if given) running a tokio
//!   current-thread runtime. For every line a client sends it answers `"{identity} {line}\n"`,
//!   until the client closes. It records the peer address of every accepted connection and
//!   counts handshakes, so tests see which backend each client reached.
//! - [`tls_exchange`]: connect, handshake, one line out, one line back. [`TlsClientConn`]:
//!   the same for long-lived connections that exchange a line now and then.

use std::fmt;
use std::io::{self, BufRead, BufReader, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, mpsc};
use std::thread::{self, JoinHandle};
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose, date_time_ymd,
};
use rustls::crypto::CryptoProvider;
use rustls::{
    ClientConfig, ClientConnection, ProtocolVersion, RootCertStore, ServerConfig, StreamOwned,
    SupportedProtocolVersion,
};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket};
use tokio::sync::oneshot;
use tokio_rustls::TlsAcceptor;

use super::{LabError, NetNs};

/// Connect, read and write timeout of the blocking clients.
const IO_TIMEOUT: Duration = Duration::from_secs(5);

/// How long the server waits for a client to finish its handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Pause after a failed `accept` (out of descriptors), so the loop does not spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(10);

/// Listen backlog: room for hundreds of clients connecting at once.
const LISTEN_BACKLOG: u32 = 1024;

/// Longest line the server reads before answering what it has.
const MAX_LINE: u64 = 64 * 1024;

/// Both TLS versions the lab speaks.
const VERSIONS: &[&SupportedProtocolVersion] = &[&rustls::version::TLS13, &rustls::version::TLS12];

/// DER encoding of the subjectAltName extension's OID, 2.5.29.17.
const SAN_OID: &[u8] = &[0x55, 0x1d, 0x11];

/// A throw-away certificate authority.
pub struct Pki {
    name: String,
    issuer: CertifiedIssuer<'static, KeyPair>,
}

/// Whether a leaf is valid now or expired long ago.
#[derive(Clone, Copy)]
enum Validity {
    /// rcgen's default window, 1975 to 4096.
    Current,
    /// The year 2000 only.
    Expired,
}

impl Pki {
    /// A new CA whose certificate has common name `name`.
    pub fn new(name: &str) -> Result<Self, LabError> {
        let key = generate_key(name)?;
        let mut params = CertificateParams::default();
        params.distinguished_name = common_name(name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let issuer = CertifiedIssuer::self_signed(params, key)
            .map_err(|source| cert_error(&format!("CA certificate {name}"), source))?;
        Ok(Self {
            name: name.to_owned(),
            issuer,
        })
    }

    /// The CA's common name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The CA certificate, DER.
    pub fn ca_der(&self) -> CertificateDer<'static> {
        self.issuer.der().clone()
    }

    /// The CA certificate, PEM.
    pub fn ca_pem(&self) -> String {
        self.issuer.pem()
    }

    /// A trust store holding only this CA.
    pub fn roots(&self) -> Result<RootCertStore, LabError> {
        let mut roots = RootCertStore::empty();
        roots.add(self.ca_der()).map_err(LabError::TlsConfig)?;
        Ok(roots)
    }

    /// Issues a leaf for `names` (DNS names or IP addresses, detected), valid now.
    pub fn issue(&self, names: &[&str]) -> Result<Issued, LabError> {
        self.issue_for(names, Validity::Current)
    }

    /// Issues a leaf for `names` that expired in 2001.
    pub fn issue_expired(&self, names: &[&str]) -> Result<Issued, LabError> {
        self.issue_for(names, Validity::Expired)
    }

    /// Issues a server-and-client-auth leaf with the given validity.
    fn issue_for(&self, names: &[&str], validity: Validity) -> Result<Issued, LabError> {
        let Some(first) = names.first() else {
            return Err(LabError::InvalidName {
                name: String::new(),
                reason: "a certificate needs at least one DNS name or IP address",
            });
        };
        let what = format!("certificate for {names:?}");
        let owned: Vec<String> = names.iter().map(|name| (*name).to_owned()).collect();
        let mut params =
            CertificateParams::new(owned.clone()).map_err(|source| cert_error(&what, source))?;
        params.distinguished_name = common_name(first);
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.use_authority_key_identifier_extension = true;
        if let Validity::Expired = validity {
            params.not_before = date_time_ymd(2000, 1, 1);
            params.not_after = date_time_ymd(2001, 1, 1);
        }
        let key = generate_key(&what)?;
        let leaf = params
            .signed_by(&key, &self.issuer)
            .map_err(|source| cert_error(&what, source))?;
        Ok(Issued {
            names: owned,
            leaf_pem: leaf.pem(),
            leaf: leaf.der().clone(),
            ca_pem: self.ca_pem(),
            ca: self.ca_der(),
            key_pem: key.serialize_pem(),
            key_pkcs8: key.serialize_der(),
        })
    }
}

impl fmt::Debug for Pki {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pki")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

/// A leaf certificate signed by a [`Pki`], with its chain and private key.
#[derive(Clone)]
pub struct Issued {
    names: Vec<String>,
    leaf: CertificateDer<'static>,
    leaf_pem: String,
    ca: CertificateDer<'static>,
    ca_pem: String,
    key_pkcs8: Vec<u8>,
    key_pem: String,
}

impl Issued {
    /// The subject alternative names, as given to [`Pki::issue`].
    pub fn names(&self) -> &[String] {
        &self.names
    }

    /// The leaf certificate, DER.
    pub fn leaf_der(&self) -> &CertificateDer<'static> {
        &self.leaf
    }

    /// The chain a server presents: leaf, then CA.
    pub fn chain_der(&self) -> Vec<CertificateDer<'static>> {
        vec![self.leaf.clone(), self.ca.clone()]
    }

    /// The chain as PEM: leaf, then CA.
    pub fn chain_pem(&self) -> String {
        format!("{}{}", self.leaf_pem, self.ca_pem)
    }

    /// The private key, PKCS#8 DER.
    pub fn key_der(&self) -> PrivateKeyDer<'static> {
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.key_pkcs8.clone()))
    }

    /// The private key, PKCS#8 PEM.
    pub fn key_pem(&self) -> &str {
        &self.key_pem
    }

    /// A rustls server configuration presenting this certificate, no client auth.
    pub fn server_config(&self) -> Result<Arc<ServerConfig>, LabError> {
        let config = ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(VERSIONS)
            .map_err(LabError::TlsConfig)?
            .with_no_client_auth()
            .with_single_cert(self.chain_der(), self.key_der())
            .map_err(LabError::TlsConfig)?;
        Ok(Arc::new(config))
    }
}

impl fmt::Debug for Issued {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Issued")
            .field("names", &self.names)
            .finish_non_exhaustive()
    }
}

/// A rustls client configuration trusting `roots`, without client auth.
pub fn client_config(roots: &RootCertStore) -> Result<Arc<ClientConfig>, LabError> {
    let config = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(VERSIONS)
        .map_err(LabError::TlsConfig)?
        .with_root_certificates(roots.clone())
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// The ring crypto provider.
fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A fresh ECDSA P-256 key.
fn generate_key(what: &str) -> Result<KeyPair, LabError> {
    KeyPair::generate().map_err(|source| cert_error(&format!("key for {what}"), source))
}

/// A distinguished name with only a common name.
fn common_name(name: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, name);
    dn
}

/// A [`LabError::Certificate`].
fn cert_error(what: &str, source: rcgen::Error) -> LabError {
    LabError::Certificate {
        what: what.to_owned(),
        source,
    }
}

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
        let thread_name = format!("tls-{identity}");
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
        self.stats
            .accepted
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
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
            name: format!("tls-{}", self.identity),
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
        self.accepted
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(peer);
        self.open_connections.fetch_add(1, Ordering::Relaxed);
        OpenConnection(Arc::clone(self))
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
    let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
        Ok(Ok(tls)) => tls,
        Ok(Err(error)) => {
            stats.handshakes_failed.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(%error, "lab TLS server {identity}: handshake failed");
            return;
        }
        Err(_elapsed) => {
            stats.handshakes_failed.fetch_add(1, Ordering::Relaxed);
            tracing::debug!("lab TLS server {identity}: handshake timed out");
            return;
        }
    };
    stats.handshakes_completed.fetch_add(1, Ordering::Relaxed);
    if let Err(error) = echo_lines(tls, identity).await {
        tracing::debug!(%error, "lab TLS server {identity}: connection ended");
    }
}

/// Answers every line with `"{identity} {line}\n"` until end of stream.
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
        let text = String::from_utf8_lossy(trim_newline(&line));
        let reply = format!("{identity} {text}\n");
        let writer = stream.get_mut();
        writer.write_all(reply.as_bytes()).await?;
        writer.flush().await?;
    }
}

/// `line` without its trailing `\n` or `\r\n`.
fn trim_newline(line: &[u8]) -> &[u8] {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    line.strip_suffix(b"\r").unwrap_or(line)
}

/// What one [`tls_exchange`] saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exchange {
    /// The reply line, without its newline: `"{identity} {line}"`.
    pub reply: String,
    /// The client's own address (its source port).
    pub local_addr: SocketAddr,
    /// DNS names and IP addresses in the server certificate's subjectAltName.
    pub peer_names: Vec<String>,
}

/// Connects to `addr` with SNI `server_name`, sends `line`, returns the reply and what the
/// handshake showed.
pub fn tls_exchange(
    server_name: &str,
    addr: SocketAddr,
    roots: &RootCertStore,
    line: &str,
) -> Result<Exchange, LabError> {
    let mut conn = TlsClientConn::connect(server_name, addr, roots)?;
    let reply = conn.exchange(line)?;
    Ok(Exchange {
        reply,
        local_addr: conn.local_addr(),
        peer_names: conn.peer_names(),
    })
}

/// A blocking TLS client connection that exchanges lines with a [`TlsServer`].
#[derive(Debug)]
pub struct TlsClientConn {
    stream: BufReader<StreamOwned<ClientConnection, TcpStream>>,
    local_addr: SocketAddr,
    peer_addr: SocketAddr,
}

impl TlsClientConn {
    /// Connects and completes the handshake, verifying `server_name` against `roots`.
    pub fn connect(
        server_name: &str,
        addr: SocketAddr,
        roots: &RootCertStore,
    ) -> Result<Self, LabError> {
        Self::connect_with(client_config(roots)?, server_name, addr)
    }

    /// Like [`TlsClientConn::connect`], with a prepared configuration (see [`client_config`]).
    pub fn connect_with(
        config: Arc<ClientConfig>,
        server_name: &str,
        addr: SocketAddr,
    ) -> Result<Self, LabError> {
        let name = ServerName::try_from(server_name.to_owned())
            .map_err(|_| LabError::ServerName(server_name.to_owned()))?;
        let mut socket = connect_tcp(addr)?;
        let local_addr = socket
            .local_addr()
            .map_err(io_error("read the local address to", addr))?;
        let mut conn = ClientConnection::new(config, name).map_err(LabError::TlsConfig)?;
        while conn.is_handshaking() {
            let moved = conn
                .complete_io(&mut socket)
                .map_err(|error| handshake_error(server_name, addr, error))?;
            if moved == (0, 0) {
                return Err(LabError::Closed { addr });
            }
        }
        Ok(Self {
            stream: BufReader::new(StreamOwned::new(conn, socket)),
            local_addr,
            peer_addr: addr,
        })
    }

    /// Sends `line` and returns the reply line, without its newline.
    pub fn exchange(&mut self, line: &str) -> Result<String, LabError> {
        if line.contains('\n') {
            return Err(LabError::Line(line.to_owned()));
        }
        let addr = self.peer_addr;
        let io_error = io_error("exchange a line with", addr);
        let writer = self.stream.get_mut();
        writer
            .write_all(format!("{line}\n").as_bytes())
            .map_err(io_error)?;
        writer.flush().map_err(io_error)?;
        let mut reply = String::new();
        if self.stream.read_line(&mut reply).map_err(io_error)? == 0 {
            return Err(LabError::Closed { addr });
        }
        let trimmed = reply.trim_end_matches(['\n', '\r']).len();
        reply.truncate(trimmed);
        Ok(reply)
    }

    /// The client's own address (its source port).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The server address.
    pub fn peer_addr(&self) -> SocketAddr {
        self.peer_addr
    }

    /// DNS names and IP addresses in the server certificate's subjectAltName.
    pub fn peer_names(&self) -> Vec<String> {
        let conn = &self.stream.get_ref().conn;
        conn.peer_certificates()
            .and_then(|chain| chain.first())
            .map(|leaf| san_names(leaf))
            .unwrap_or_default()
    }

    /// The negotiated TLS version.
    pub fn protocol_version(&self) -> Option<ProtocolVersion> {
        self.stream.get_ref().conn.protocol_version()
    }
}

/// A TCP connection with timeouts and Nagle off.
fn connect_tcp(addr: SocketAddr) -> Result<TcpStream, LabError> {
    let socket =
        TcpStream::connect_timeout(&addr, IO_TIMEOUT).map_err(io_error("connect to", addr))?;
    socket
        .set_read_timeout(Some(IO_TIMEOUT))
        .and_then(|()| socket.set_write_timeout(Some(IO_TIMEOUT)))
        .and_then(|()| socket.set_nodelay(true))
        .map_err(io_error("set socket options for", addr))?;
    Ok(socket)
}

/// Wraps a socket error as a [`LabError::Io`] about `what` and `addr`.
fn io_error(what: &'static str, addr: SocketAddr) -> impl Fn(io::Error) -> LabError + Copy {
    move |source| LabError::Io { what, addr, source }
}

/// The rustls reason inside a failed handshake's I/O error, if there is one.
fn handshake_error(server_name: &str, addr: SocketAddr, error: io::Error) -> LabError {
    let tls = error
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>());
    match tls {
        Some(source) => LabError::Handshake {
            server_name: server_name.to_owned(),
            addr,
            source: source.clone(),
        },
        None => io_error("TLS handshake with", addr)(error),
    }
}

/// DNS names and IP addresses in a DER certificate's subjectAltName; empty if it has none
/// or cannot be read.
fn san_names(cert: &[u8]) -> Vec<String> {
    parse_san(cert).unwrap_or_default()
}

/// Walks Certificate -> tbsCertificate -> [3] extensions -> subjectAltName -> GeneralNames.
fn parse_san(cert: &[u8]) -> Option<Vec<String>> {
    let (_, certificate, _) = der_next(cert)?;
    let (_, tbs, _) = der_next(certificate)?;
    let (_, extensions) = der_elements(tbs).find(|(tag, _)| *tag == 0xa3)?;
    let (_, extensions, _) = der_next(extensions)?;
    for (_, extension) in der_elements(extensions) {
        let mut fields = der_elements(extension);
        if fields.next()?.1 != SAN_OID {
            continue;
        }
        // Skips the optional `critical` BOOLEAN to the OCTET STRING holding GeneralNames.
        let (_, value) = fields.find(|(tag, _)| *tag == 0x04)?;
        let (_, names, _) = der_next(value)?;
        let names = der_elements(names).filter_map(|(tag, body)| general_name(tag, body));
        return Some(names.collect());
    }
    Some(Vec::new())
}

/// A dNSName ([2]) or iPAddress ([7]) GeneralName as text; `None` for other kinds.
fn general_name(tag: u8, body: &[u8]) -> Option<String> {
    match tag {
        0x82 => std::str::from_utf8(body).ok().map(str::to_owned),
        0x87 => {
            let ip = match body.len() {
                4 => IpAddr::from(<[u8; 4]>::try_from(body).ok()?),
                16 => IpAddr::from(<[u8; 16]>::try_from(body).ok()?),
                _ => return None,
            };
            Some(ip.to_string())
        }
        _ => None,
    }
}

/// Splits the first DER element off `input`: tag, contents, rest.
fn der_next(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let count = usize::from(first & 0x7f);
        if count == 0 || count > 4 {
            return None;
        }
        let (bytes, rest) = rest.split_at_checked(count)?;
        let len = bytes
            .iter()
            .fold(0usize, |len, &byte| (len << 8) | usize::from(byte));
        (len, rest)
    };
    let (contents, rest) = rest.split_at_checked(len)?;
    Some((tag, contents, rest))
}

/// The (tag, contents) of consecutive DER elements, stopping at the first malformed one.
fn der_elements(mut input: &[u8]) -> impl Iterator<Item = (u8, &[u8])> {
    std::iter::from_fn(move || {
        let (tag, contents, rest) = der_next(input)?;
        input = rest;
        Some((tag, contents))
    })
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use rustls::{CertificateError, Error as TlsError};

    use super::*;

    const LOOPBACK: &str = "127.0.0.1:0";

    fn loopback() -> SocketAddr {
        LOOPBACK.parse().expect("loopback address")
    }

    fn start(identity: &str, issued: &Issued) -> TlsServer {
        TlsServer::start(None, loopback(), identity, issued).expect("start TLS server")
    }

    /// The certificate error a handshake failed with.
    fn cert_failure(result: Result<Exchange, LabError>) -> CertificateError {
        match result {
            Err(LabError::Handshake {
                source: TlsError::InvalidCertificate(error),
                ..
            }) => error,
            other => panic!("expected a certificate error, got {other:?}"),
        }
    }

    fn wait_for(what: &str, condition: impl Fn() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while !condition() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            thread::sleep(Duration::from_millis(10));
        }
    }

    #[test]
    fn issued_certificate_carries_its_names() {
        let pki = Pki::new("lab test CA").expect("CA");
        let names = ["backend.lab", "198.18.0.10", "2001:db8::10"];
        let issued = pki.issue(&names).expect("issue");
        assert_eq!(san_names(issued.leaf_der()), names);
        assert_eq!(issued.names(), names);
        assert!(issued.chain_pem().matches("BEGIN CERTIFICATE").count() == 2);
        assert!(issued.key_pem().contains("BEGIN PRIVATE KEY"));
        assert!(pki.ca_pem().contains("BEGIN CERTIFICATE"));
        assert!(
            pki.issue(&[]).is_err(),
            "a certificate without names was issued"
        );
    }

    #[test]
    fn handshake_and_exchange() {
        let pki = Pki::new("lab test CA").expect("CA");
        let issued = pki.issue(&["backend.lab", "127.0.0.1"]).expect("issue");
        let server = start("b1", &issued);
        let roots = pki.roots().expect("roots");

        let exchange = tls_exchange("backend.lab", server.local_addr(), &roots, "hello")
            .expect("exchange by DNS name");
        assert_eq!(exchange.reply, "b1 hello");
        assert_eq!(exchange.peer_names, ["backend.lab", "127.0.0.1"]);
        assert!(server.accepted().contains(&exchange.local_addr));

        let by_ip = tls_exchange("127.0.0.1", server.local_addr(), &roots, "again")
            .expect("exchange by IP address");
        assert_eq!(by_ip.reply, "b1 again");
        assert_eq!(server.handshakes_completed(), 2);
        assert_eq!(server.handshakes_failed(), 0);
        server.stop().expect("stop");
    }

    #[test]
    fn hundreds_of_long_lived_connections() {
        let pki = Pki::new("lab test CA").expect("CA");
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

    #[test]
    fn client_trusting_another_ca_fails() {
        let pki = Pki::new("lab test CA").expect("CA");
        let other = Pki::new("other CA").expect("other CA");
        let server = start("b3", &pki.issue(&["backend.lab"]).expect("issue"));
        let roots = other.roots().expect("roots");
        let result = tls_exchange("backend.lab", server.local_addr(), &roots, "hi");
        assert_eq!(cert_failure(result), CertificateError::UnknownIssuer);
        wait_for("the failed handshake", || server.handshakes_failed() == 1);
    }

    #[test]
    fn name_mismatch_fails() {
        let pki = Pki::new("lab test CA").expect("CA");
        let server = start("b4", &pki.issue(&["backend.lab"]).expect("issue"));
        let roots = pki.roots().expect("roots");
        let result = tls_exchange("other.lab", server.local_addr(), &roots, "hi");
        let error = cert_failure(result);
        assert!(
            matches!(
                error,
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. }
            ),
            "expected a name mismatch, got {error:?}"
        );
    }

    #[test]
    fn expired_certificate_fails() {
        let pki = Pki::new("lab test CA").expect("CA");
        let server = start("b5", &pki.issue_expired(&["backend.lab"]).expect("issue"));
        let roots = pki.roots().expect("roots");
        let result = tls_exchange("backend.lab", server.local_addr(), &roots, "hi");
        let error = cert_failure(result);
        assert!(
            matches!(
                error,
                CertificateError::Expired | CertificateError::ExpiredContext { .. }
            ),
            "expected an expired certificate, got {error:?}"
        );
    }

    #[test]
    fn server_and_client_inside_a_namespace() {
        let ns = NetNs::new("lbtls").expect("namespace");
        let name = ns.name().to_owned();
        ns.ip(&["link", "set", "lo", "up"]).expect("lo up");
        let pki = Pki::new("lab test CA").expect("CA");
        let issued = pki.issue(&["backend.lab"]).expect("issue");
        let server = TlsServer::start(Some(&ns), loopback(), "ns1", &issued).expect("start");
        let addr = server.local_addr();
        let roots = pki.roots().expect("roots");
        let exchange = ns
            .spawn("lbtls-client", move || {
                tls_exchange("backend.lab", addr, &roots, "inside")
            })
            .expect("spawn client")
            .join()
            .expect("client thread")
            .expect("exchange inside the namespace");
        assert_eq!(exchange.reply, "ns1 inside");
        server.stop().expect("stop");
        drop(ns);
        let list = std::process::Command::new("ip")
            .args(["netns", "list"])
            .output()
            .expect("ip netns list");
        let list = String::from_utf8_lossy(&list.stdout);
        assert!(
            !list
                .lines()
                .any(|line| line.split_whitespace().next() == Some(name.as_str())),
            "{name} still listed after drop: {list}"
        );
    }

    #[test]
    fn server_across_a_veth() {
        let server_ns = NetNs::new("lbtls").expect("server namespace");
        let client_ns = NetNs::new("lbtls").expect("client namespace");
        super::super::veth(&server_ns, "lbs0", &client_ns, "lbc0").expect("veth");
        server_ns
            .ip(&["addr", "add", "198.18.1.1/24", "dev", "lbs0"])
            .expect("server address");
        client_ns
            .ip(&["addr", "add", "198.18.1.2/24", "dev", "lbc0"])
            .expect("client address");
        let pki = Pki::new("lab test CA").expect("CA");
        let issued = pki.issue(&["198.18.1.1"]).expect("issue");
        let bind = "198.18.1.1:8443".parse().expect("server address");
        let server = TlsServer::start(Some(&server_ns), bind, "far", &issued).expect("start");
        let roots = pki.roots().expect("roots");
        let exchange = client_ns
            .spawn("lbtls-client", move || {
                tls_exchange("198.18.1.1", bind, &roots, "across")
            })
            .expect("spawn client")
            .join()
            .expect("client thread")
            .expect("exchange across the veth");
        assert_eq!(exchange.reply, "far across");
        assert_eq!(exchange.local_addr.ip().to_string(), "198.18.1.2");
        assert_eq!(server.accepted(), [exchange.local_addr]);
    }
}
