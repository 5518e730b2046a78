//! The L7 listeners' access log (`[access_log]`): one line per request, and one per TLS
//! connection that never got to a request (a failed or timed-out handshake, a connection closed
//! before its first request), as JSON lines or a documented text format.
//!
//! The request path only fills an [`Entry`] and offers it to a bounded queue
//! ([`AccessLog::record`]); a thread of its own formats and writes the lines, buffered, in
//! batches: it writes what is queued, flushes, and rests 20 ms before it looks again (a line
//! reaches the file within about that). When the queue is full the line is dropped and counted
//! (`access_log_dropped` on the listener, with a warning at most once a second): a slow disk
//! never holds a request. `SIGUSR1` reopens the file (after logrotate moved it). Sampling keeps
//! an even fraction of the lines without an error; a line with an error is always kept.
//!
//! Text format, one line per entry, fields separated by a space, `-` for a field without a
//! value, the request and the error quoted (`"` and `\` escaped, control characters as `\xNN`):
//!
//! ```text
//! TIME LISTENER CLIENT "METHOD AUTHORITY PATH PROTOCOL" STATUS BACKEND BYTES_IN BYTES_OUT
//!     REQUEST_MS BACKEND_MS TOTAL_MS RETRIES STICKY SNI TLS_VERSION TLS_CIPHER "ERROR"
//! ```
//!
//! (on one line). The JSON lines have the same fields, named as [`Line`]'s.

use std::{
    borrow::Cow,
    fs::{File, OpenOptions},
    io::{self, BufWriter, Write},
    net::SocketAddr,
    os::unix::fs::OpenOptionsExt,
    path::PathBuf,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
        mpsc::{self, Receiver, SyncSender, TrySendError},
    },
    thread::JoinHandle,
    time::{Duration, Instant, SystemTime},
};

use serde::Serialize;
use tracing::{info, warn};

use crate::config::l7::{AccessLogFormat, AccessLogSettings, AccessLogTarget};

/// How a sticky listener placed a request.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Sticky {
    /// Not a sticky listener, or no request.
    #[default]
    None,
    /// A new session: no valid cookie.
    New,
    /// The cookie's backend served it.
    Pinned,
    /// The cookie's backend no longer takes it (or failed it): a new backend.
    Repinned,
}

impl Sticky {
    fn as_str(self) -> &'static str {
        match self {
            Self::None => "-",
            Self::New => "new",
            Self::Pinned => "pinned",
            Self::Repinned => "repinned",
        }
    }
}

/// What a connection tells every line of its requests: the client and its TLS session.
#[derive(Debug, Clone)]
pub struct Peer {
    /// The client's address (as a trusted PROXY header gives it, or the TCP peer's).
    pub client: SocketAddr,
    /// The address it connected to (likewise).
    pub destination: SocketAddr,
    pub sni: Option<Box<str>>,
    pub tls_version: Option<&'static str>,
    pub tls_cipher: Option<&'static str>,
}

impl Peer {
    /// A client before (or without) its TLS handshake.
    pub fn tcp(client: SocketAddr, destination: SocketAddr) -> Self {
        Self {
            client,
            destination,
            sni: None,
            tls_version: None,
            tls_cipher: None,
        }
    }

    /// The client of an established TLS connection.
    pub fn of_tls(
        client: SocketAddr,
        destination: SocketAddr,
        tls: &rustls::ServerConnection,
    ) -> Self {
        Self {
            client,
            destination,
            sni: tls.server_name().map(Box::from),
            tls_version: tls.protocol_version().map(|v| match v {
                rustls::ProtocolVersion::TLSv1_3 => "TLSv1.3",
                rustls::ProtocolVersion::TLSv1_2 => "TLSv1.2",
                _ => "other",
            }),
            tls_cipher: tls
                .negotiated_cipher_suite()
                .and_then(|suite| suite.suite().as_str()),
        }
    }
}

/// A request as its line names it.
#[derive(Debug, Clone)]
pub struct RequestLine {
    pub method: hyper::Method,
    pub authority: Option<Box<str>>,
    /// The path and query.
    pub path: Box<str>,
    pub protocol: &'static str,
}

impl RequestLine {
    pub fn of<B>(request: &hyper::Request<B>) -> Self {
        let authority = request
            .uri()
            .authority()
            .map(|a| Box::from(a.as_str()))
            .or_else(|| {
                request
                    .headers()
                    .get(hyper::header::HOST)
                    .and_then(|h| h.to_str().ok())
                    .map(Box::from)
            });
        let path = request
            .uri()
            .path_and_query()
            .map_or("/", |p| p.as_str())
            .into();
        Self {
            method: request.method().clone(),
            authority,
            path,
            protocol: match request.version() {
                hyper::Version::HTTP_2 => "HTTP/2",
                hyper::Version::HTTP_10 => "HTTP/1.0",
                _ => "HTTP/1.1",
            },
        }
    }
}

/// One line, as the request path fills it.
#[derive(Debug)]
pub struct Entry {
    /// When the request head (or the connection) arrived.
    pub time: SystemTime,
    pub start: Instant,
    pub peer: Arc<Peer>,
    pub request: Option<RequestLine>,
    pub status: Option<u16>,
    pub backend: Option<SocketAddr>,
    /// Body bytes: the request's, and the response's as sent to the client.
    pub bytes_in: u64,
    pub bytes_out: u64,
    /// From the request's head to its sending to the backend (the connection made or taken).
    pub request_time: Option<Duration>,
    /// From the sending to the backend's response head.
    pub backend_time: Option<Duration>,
    /// From the request's head to the end of its response (set when the line is written).
    pub total: Duration,
    pub retries: u32,
    pub sticky: Sticky,
    /// Why the balancer failed the request or the connection, if it did.
    pub error: Option<Cow<'static, str>>,
    /// The routing rule that took the request (none: the listener's pool, or no request).
    pub rule: Option<String>,
}

impl Entry {
    /// A request's entry, its head arriving now.
    pub fn new(peer: Arc<Peer>, start: Instant) -> Self {
        Self::since(peer, start, SystemTime::now())
    }

    /// An entry of something that began at `start`, at wall-clock `time` (a connection's).
    pub fn since(peer: Arc<Peer>, start: Instant, time: SystemTime) -> Self {
        Self {
            time,
            start,
            peer,
            request: None,
            status: None,
            backend: None,
            bytes_in: 0,
            bytes_out: 0,
            request_time: None,
            backend_time: None,
            total: Duration::ZERO,
            retries: 0,
            sticky: Sticky::None,
            rule: None,
            error: None,
        }
    }
}

/// A line as written (JSON field names).
#[derive(Serialize)]
struct Line<'a> {
    time: String,
    listener: &'a str,
    client: std::net::IpAddr,
    client_port: u16,
    sni: Option<&'a str>,
    tls_version: Option<&'a str>,
    tls_cipher: Option<&'a str>,
    method: Option<&'a str>,
    authority: Option<&'a str>,
    path: Option<&'a str>,
    protocol: Option<&'a str>,
    status: Option<u16>,
    backend: Option<SocketAddr>,
    bytes_in: u64,
    bytes_out: u64,
    request_ms: Option<f64>,
    backend_ms: Option<f64>,
    total_ms: f64,
    retries: u32,
    sticky: Option<&'a str>,
    error: Option<&'a str>,
    rule: Option<&'a str>,
}

/// Milliseconds with microseconds.
fn ms(duration: Duration) -> f64 {
    (duration.as_secs_f64() * 1_000_000.0).round() / 1000.0
}

impl<'a> Line<'a> {
    fn of(listener: &'a str, entry: &'a Entry) -> Self {
        let request = entry.request.as_ref();
        Self {
            time: humantime::format_rfc3339_millis(entry.time).to_string(),
            listener,
            client: entry.peer.client.ip(),
            client_port: entry.peer.client.port(),
            sni: entry.peer.sni.as_deref(),
            tls_version: entry.peer.tls_version,
            tls_cipher: entry.peer.tls_cipher,
            method: request.map(|r| r.method.as_str()),
            authority: request.and_then(|r| r.authority.as_deref()),
            path: request.map(|r| &*r.path),
            protocol: request.map(|r| r.protocol),
            status: entry.status,
            backend: entry.backend,
            bytes_in: entry.bytes_in,
            bytes_out: entry.bytes_out,
            request_ms: entry.request_time.map(ms),
            backend_ms: entry.backend_time.map(ms),
            total_ms: ms(entry.total),
            retries: entry.retries,
            sticky: (entry.sticky != Sticky::None).then(|| entry.sticky.as_str()),
            error: entry.error.as_deref(),
            rule: entry.rule.as_deref(),
        }
    }

    fn write_json(&self, out: &mut dyn Write) -> io::Result<()> {
        serde_json::to_writer(&mut *out, self)?;
        out.write_all(b"\n")
    }

    fn write_text(&self, out: &mut dyn Write) -> io::Result<()> {
        fn or_dash<T: std::fmt::Display>(value: Option<T>) -> String {
            value.map_or_else(|| "-".to_owned(), |v| v.to_string())
        }
        // Each part escaped on its own, spaces too: the quoted request splits into four.
        let request = match (self.method, self.path, self.protocol) {
            (Some(method), Some(path), Some(protocol)) => format!(
                "{} {} {} {protocol}",
                escape_word(method),
                escape_word(self.authority.unwrap_or("-")),
                escape_word(path),
            ),
            _ => "-".to_owned(),
        };
        writeln!(
            out,
            "{} {} {} \"{}\" {} {} {} {} {} {} {:.3} {} {} {} {} {} \"{}\" {}",
            self.time,
            escape(self.listener),
            SocketAddr::new(self.client, self.client_port),
            request,
            or_dash(self.status),
            or_dash(self.backend),
            self.bytes_in,
            self.bytes_out,
            or_dash(self.request_ms.map(|v| format!("{v:.3}"))),
            or_dash(self.backend_ms.map(|v| format!("{v:.3}"))),
            self.total_ms,
            self.retries,
            self.sticky.unwrap_or("-"),
            escape(self.sni.unwrap_or("-")),
            self.tls_version.unwrap_or("-"),
            self.tls_cipher.unwrap_or("-"),
            escape(self.error.unwrap_or("-")),
            self.rule.unwrap_or("-"),
        )
    }
}

/// `value` with `"` and `\` escaped and control characters as `\xNN`.
fn escape(value: &str) -> Cow<'_, str> {
    escape_with(value, false)
}

/// [`escape`], spaces too (`\x20`): a part of a space-separated field.
fn escape_word(value: &str) -> Cow<'_, str> {
    escape_with(value, true)
}

fn escape_with(value: &str, spaces: bool) -> Cow<'_, str> {
    let special = |b: u8| b == b'"' || b == b'\\' || b.is_ascii_control() || (spaces && b == b' ');
    if !value.bytes().any(special) {
        return Cow::Borrowed(value);
    }
    let mut out = String::with_capacity(value.len() + 8);
    for ch in value.chars() {
        match ch {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_ascii_control() || (spaces && c == ' ') => {
                let _ =
                    std::fmt::Write::write_fmt(&mut out, format_args!("\\x{:02x}", u32::from(c)));
            }
            c => out.push(c),
        }
    }
    Cow::Owned(out)
}

/// Where lines come from: a listener, which counts its lines.
#[derive(Debug)]
pub struct Source {
    pub listener: Box<str>,
    /// Lines written.
    pub lines: AtomicU64,
    /// Lines lost: the writer was behind, or writing failed.
    pub dropped: AtomicU64,
    /// Lines offered so far, for an even sample of this listener's.
    offered: AtomicU64,
}

impl Source {
    pub fn new(listener: &str) -> Self {
        Self {
            listener: listener.into(),
            lines: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            offered: AtomicU64::new(0),
        }
    }
}

/// What the writer thread is sent.
enum Message {
    Line(Arc<Source>, Box<Entry>),
    /// Look at the reopen request now (it is a flag: a full queue does not lose it).
    Wake,
    /// Flush, then answer.
    Flush(mpsc::Sender<()>),
}

const MILLION: u64 = 1_000_000;

/// The lines queued for the writer at most: past it, lines are dropped (counted).
const QUEUE: usize = 16 * 1024;

/// The access log: a queue and the thread that writes it. Dropped, the thread writes what is
/// queued and ends.
#[derive(Debug)]
pub struct AccessLog {
    settings: AccessLogSettings,
    sender: SyncSender<Message>,
    /// Set by SIGUSR1, taken by the writer.
    reopen: Arc<AtomicBool>,
    /// The sample, in millionths.
    per_million: u64,
    /// "Queue full" warnings, at most one a second.
    warned_full: super::limit::OncePerSecond,
    thread: Option<JoinHandle<()>>,
}

impl AccessLog {
    /// Opens the file (appending, made 0640 if new) or takes stdout, and starts the writer.
    pub fn open(settings: &AccessLogSettings) -> io::Result<Self> {
        let sink = Sink::open(&settings.target)?;
        let (sender, receiver) = mpsc::sync_channel(QUEUE);
        let reopen = Arc::new(AtomicBool::new(false));
        let writer = Writer {
            sink,
            format: settings.format,
            reopen: Arc::clone(&reopen),
            failing: false,
            unflushed: Vec::new(),
            line: Vec::new(),
        };
        let thread = std::thread::Builder::new()
            .name("lb-access-log".to_owned())
            .spawn(move || writer.run(&receiver))?;
        info!(target = %settings.target, format = ?settings.format, sample = settings.sample(),
            "access log open");
        Ok(Self {
            settings: settings.clone(),
            sender,
            reopen,
            per_million: u64::from(settings.sample_per_million),
            warned_full: super::limit::OncePerSecond::default(),
            thread: Some(thread),
        })
    }

    pub fn settings(&self) -> &AccessLogSettings {
        &self.settings
    }

    /// Queues `entry`'s line (a sampled-out line without an error is not); a full queue drops
    /// it, counted on `source`.
    pub fn record(&self, source: &Arc<Source>, mut entry: Box<Entry>) {
        if entry.error.is_none() && !self.sampled(source) {
            return;
        }
        entry.total = entry.start.elapsed();
        match self
            .sender
            .try_send(Message::Line(Arc::clone(source), entry))
        {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => {
                source.dropped.fetch_add(1, Ordering::Relaxed);
                if self.warned_full.allow() {
                    warn!(listener = %source.listener, queued = QUEUE,
                        "access log: the writer is behind, lines dropped (counted in access_log_dropped)");
                }
            }
            Err(TrySendError::Disconnected(_)) => {
                source.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Whether `source`'s next line is kept: `sample` of them, evenly spread.
    fn sampled(&self, source: &Source) -> bool {
        if self.per_million >= MILLION {
            return true;
        }
        // Kept each time n × sample passes a whole number (the pattern repeats every million).
        let n = source.offered.fetch_add(1, Ordering::Relaxed) % MILLION;
        (n + 1) * self.per_million / MILLION != n * self.per_million / MILLION
    }

    /// `SIGUSR1`: the file is opened again by name (logrotate moved it).
    pub fn reopen(&self) {
        self.reopen.store(true, Ordering::SeqCst);
        // A wake-up only: with the queue full the writer is busy, and sees the flag anyway.
        let _ = self.sender.try_send(Message::Wake);
    }

    /// Waits (up to `timeout`) until every line queued so far is written.
    pub fn flush(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let (done, flushed) = mpsc::channel();
        let mut message = Message::Flush(done);
        loop {
            match self.sender.try_send(message) {
                Ok(()) => break,
                Err(TrySendError::Full(again)) if Instant::now() < deadline => {
                    message = again;
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err(_) => return false,
            }
        }
        flushed
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .is_ok()
    }
}

impl Drop for AccessLog {
    fn drop(&mut self) {
        // The thread ends once every sender is gone; it holds none itself. Not joined: a file
        // system that hangs must not hang a reload.
        drop(self.thread.take());
    }
}

/// Where lines go.
enum Sink {
    File { path: PathBuf, out: BufWriter<File> },
    Stdout(BufWriter<io::Stdout>),
}

/// The writer's buffer. Each line is formatted apart and handed over whole, so the file only
/// ever gets whole lines, appended: a predecessor and its successor can share the file during
/// a take-over.
const BUFFER: usize = 64 * 1024;

/// How long the writer rests after writing what was queued: lines then reach it in batches,
/// and a busy listener does not wake it (a context switch and a write) for every request.
const REST: Duration = Duration::from_millis(20);

/// Lines written between two flushes at most: a writer that is behind still flushes, and
/// counts, as it goes.
const BATCH: usize = 1024;

impl Sink {
    fn open(target: &AccessLogTarget) -> io::Result<Self> {
        match target {
            AccessLogTarget::Stdout => {
                Ok(Self::Stdout(BufWriter::with_capacity(BUFFER, io::stdout())))
            }
            AccessLogTarget::File(path) => Ok(Self::File {
                out: BufWriter::with_capacity(BUFFER, open_file(path)?),
                path: path.clone(),
            }),
        }
    }

    /// Drops what the buffer holds, unwritten.
    fn discard(&mut self) {
        fn renew<W: Write>(out: &mut BufWriter<W>, fresh: W) {
            let old = std::mem::replace(out, BufWriter::with_capacity(BUFFER, fresh));
            drop(old.into_parts());
        }
        match self {
            Self::File { out, .. } => {
                if let Ok(file) = out.get_ref().try_clone() {
                    renew(out, file);
                }
            }
            Self::Stdout(out) => renew(out, io::stdout()),
        }
    }

    fn out(&mut self) -> &mut dyn Write {
        match self {
            Self::File { out, .. } => out,
            Self::Stdout(out) => out,
        }
    }
}

/// Opens `path` for appending; a new file is made 0640 whatever the umask (the unit's is
/// 0077), as logrotate's `create 0640` makes the next one.
fn open_file(path: &std::path::Path) -> io::Result<File> {
    use std::os::unix::fs::PermissionsExt as _;
    let context =
        |error: io::Error| io::Error::new(error.kind(), format!("{}: {error}", path.display()));
    match OpenOptions::new()
        .append(true)
        .create_new(true)
        .mode(0o640)
        .open(path)
    {
        Ok(file) => {
            file.set_permissions(std::fs::Permissions::from_mode(0o640))
                .map_err(context)?;
            Ok(file)
        }
        Err(error) if error.kind() == io::ErrorKind::AlreadyExists => {
            OpenOptions::new().append(true).open(path).map_err(context)
        }
        Err(error) => Err(context(error)),
    }
}

/// The writer thread's state.
struct Writer {
    sink: Sink,
    format: AccessLogFormat,
    reopen: Arc<AtomicBool>,
    /// Writing failed last time (logged once, until it works again).
    failing: bool,
    /// The sources of the lines in the buffer, counted once it is flushed.
    unflushed: Vec<Arc<Source>>,
    /// One line, formatted before it goes to the buffer whole.
    line: Vec<u8>,
}

impl Writer {
    /// Writes what is queued, [`BATCH`] lines at most between flushes, then rests ([`REST`])
    /// before waiting for more, until every sender is gone.
    fn run(mut self, receiver: &Receiver<Message>) {
        while let Ok(first) = receiver.recv() {
            let mut next = Some(first);
            while let Some(message) = next {
                self.reopen_if_asked();
                match message {
                    Message::Line(source, entry) => {
                        self.write(source, &entry);
                        if self.unflushed.len() >= BATCH {
                            self.flush();
                        }
                    }
                    Message::Wake => {}
                    Message::Flush(done) => {
                        self.flush();
                        let _ = done.send(());
                    }
                }
                next = receiver.try_recv().ok();
            }
            self.reopen_if_asked();
            self.flush();
            std::thread::sleep(REST);
        }
        self.flush();
    }

    fn write(&mut self, source: Arc<Source>, entry: &Entry) {
        self.line.clear();
        let line = Line::of(&source.listener, entry);
        let formatted = match self.format {
            AccessLogFormat::Json => line.write_json(&mut self.line),
            AccessLogFormat::Text => line.write_text(&mut self.line),
        };
        match formatted.and_then(|()| self.sink.out().write_all(&self.line)) {
            Ok(()) => self.unflushed.push(source),
            Err(error) => self.failed(&error, &source),
        }
    }

    /// Flushes the buffer; the lines in it are counted as written, or as dropped if it fails
    /// (and the buffer is dropped: a half-written buffer is not retried, it could repeat lines).
    fn flush(&mut self) {
        match self.sink.out().flush() {
            Ok(()) => {
                if std::mem::take(&mut self.failing) {
                    info!("access log: writing again");
                }
                for source in self.unflushed.drain(..) {
                    source.lines.fetch_add(1, Ordering::Relaxed);
                }
            }
            Err(error) => {
                self.sink.discard();
                for source in std::mem::take(&mut self.unflushed) {
                    self.failed(&error, &source);
                }
            }
        }
    }

    fn failed(&mut self, error: &io::Error, source: &Source) {
        source.dropped.fetch_add(1, Ordering::Relaxed);
        if !std::mem::replace(&mut self.failing, true) {
            warn!(%error, "access log: writing failed, lines dropped (counted in access_log_dropped) until it works again");
        }
    }

    /// SIGUSR1: opens the file again by its name, the lines written so far flushed to the old
    /// one (or counted as lost); if it cannot be opened, writes on to the one open.
    fn reopen_if_asked(&mut self) {
        if !self.reopen.swap(false, Ordering::SeqCst) {
            return;
        }
        let Sink::File { path, .. } = &self.sink else {
            return;
        };
        match open_file(path) {
            Ok(file) => {
                self.flush();
                if let Sink::File { path, out } = &mut self.sink {
                    *out = BufWriter::with_capacity(BUFFER, file);
                    info!(path = %path.display(), "access log reopened");
                }
            }
            Err(error) => warn!(%error, "access log: cannot reopen; writing on to the file open"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry() -> Entry {
        let peer = Peer {
            client: "198.18.0.1:40000".parse().unwrap(),
            destination: "198.18.100.1:443".parse().unwrap(),
            sni: Some("vip.lb.test".into()),
            tls_version: Some("TLSv1.3"),
            tls_cipher: Some("TLS13_AES_128_GCM_SHA256"),
        };
        let mut entry = Entry::new(Arc::new(peer), Instant::now());
        entry.time = SystemTime::UNIX_EPOCH + Duration::from_millis(1_796_000_000_123);
        entry
    }

    fn text(line: &Line<'_>) -> String {
        let mut out = Vec::new();
        line.write_text(&mut out).unwrap();
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn a_request_line_in_text_has_its_fields_in_the_documented_order() {
        let mut entry = entry();
        entry.request = Some(RequestLine {
            method: hyper::Method::GET,
            authority: Some("vip.lb.test".into()),
            path: "/a?b=\"c\"".into(),
            protocol: "HTTP/2",
        });
        entry.status = Some(200);
        entry.backend = Some("198.18.1.10:8080".parse().unwrap());
        entry.bytes_in = 5;
        entry.bytes_out = 1234;
        entry.request_time = Some(Duration::from_micros(150));
        entry.backend_time = Some(Duration::from_micros(1_250));
        entry.total = Duration::from_micros(1_500);
        entry.sticky = Sticky::Pinned;
        entry.rule = Some("api".to_owned());
        let mut spaced = entry.request.clone().unwrap();
        spaced.authority = Some("a b".into());
        let mut other = Entry::new(Arc::clone(&entry.peer), Instant::now());
        other.request = Some(spaced);
        assert!(
            text(&Line::of("web", &other)).contains("\"GET a\\x20b /a?b=\\\"c\\\" HTTP/2\""),
            "{}",
            text(&Line::of("web", &other))
        );
        assert_eq!(
            text(&Line::of("web", &entry)),
            "2026-11-30T00:53:20.123Z web 198.18.0.1:40000 \"GET vip.lb.test /a?b=\\\"c\\\" \
             HTTP/2\" 200 198.18.1.10:8080 5 1234 0.150 1.250 1.500 0 pinned vip.lb.test \
             TLSv1.3 TLS13_AES_128_GCM_SHA256 \"-\" api\n"
        );
    }

    #[test]
    fn a_connection_without_a_request_has_dashes_and_its_error() {
        let mut entry = Entry::new(
            Arc::new(Peer::tcp(
                "[2001:db8::1]:443".parse().unwrap(),
                "[2001:db8::2]:443".parse().unwrap(),
            )),
            Instant::now(),
        );
        entry.time = SystemTime::UNIX_EPOCH;
        entry.error = Some("tls_handshake_failed: bad\nthing".into());
        assert_eq!(
            text(&Line::of("web", &entry)),
            "1970-01-01T00:00:00.000Z web [2001:db8::1]:443 \"-\" - - 0 0 - - 0.000 0 - - - - \
             \"tls_handshake_failed: bad\\x0athing\" -\n"
        );
        let mut json = Vec::new();
        Line::of("web", &entry).write_json(&mut json).unwrap();
        let value: serde_json::Value = serde_json::from_slice(&json).unwrap();
        assert_eq!(value["client"], "2001:db8::1");
        assert_eq!(value["client_port"], 443);
        assert!(value["status"].is_null() && value["method"].is_null());
        assert_eq!(value["error"], "tls_handshake_failed: bad\nthing");
        assert!(value["rule"].is_null());
    }

    #[test]
    fn a_sample_keeps_its_fraction_evenly() {
        for (per_million, kept_of_1000) in [(250_000, 250), (10_000, 10), (1_000_000, 1000)] {
            let log = AccessLog::open(&AccessLogSettings {
                target: AccessLogTarget::Stdout,
                format: AccessLogFormat::Json,
                sample_per_million: per_million,
            })
            .unwrap();
            let source = Source::new("web");
            let kept: Vec<bool> = (0..1000).map(|_| log.sampled(&source)).collect();
            assert_eq!(kept.iter().filter(|k| **k).count(), kept_of_1000);
            // Evenly: no run of dropped lines longer than the sample's period.
            let longest = kept.split(|k| *k).map(<[bool]>::len).max().unwrap();
            assert!(longest < 1000 / kept_of_1000, "{per_million}: {longest}");
        }
    }

    #[test]
    fn lines_reach_the_file_and_a_reopen_follows_a_moved_one() {
        let dir = std::env::temp_dir().join(format!("lb-access-log-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("access.log");
        let log = AccessLog::open(&AccessLogSettings {
            target: AccessLogTarget::File(path.clone()),
            format: AccessLogFormat::Json,
            sample_per_million: 1_000_000,
        })
        .unwrap();
        let source = Arc::new(Source::new("web"));
        log.record(&source, Box::new(entry()));
        assert!(log.flush(Duration::from_secs(5)));
        std::fs::rename(&path, dir.join("access.log.1")).unwrap();
        log.reopen();
        log.record(&source, Box::new(entry()));
        assert!(log.flush(Duration::from_secs(5)));
        let count = |name: &str| {
            std::fs::read_to_string(dir.join(name))
                .unwrap()
                .lines()
                .count()
        };
        assert_eq!((count("access.log.1"), count("access.log")), (1, 1));
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(&path).unwrap().permissions(),
        );
        assert_eq!(mode & 0o777, 0o640);
        assert_eq!(source.lines.load(Ordering::Relaxed), 2);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
