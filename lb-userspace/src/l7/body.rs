//! The body of a response to a client: the backend's, streamed, or a short one of the
//! balancer's own (an error, a redirect). It carries what must last as long as the response
//! does: the request's place in its client connection's clock, its count on the backend (least
//! outstanding requests), and the HTTP/1.1 connection it came on, which goes back to the pool
//! once the body has been read to its end (and is closed otherwise).
//!
//! Both directions of a body run a clock while they wait for the other side, armed only when
//! a poll finds nothing to give (a body that flows costs no timer):
//!
//! - a backend's response body that sent nothing for `server_timeout` fails ([`ProxyBody`]):
//!   hyper then closes the client's HTTP/1.1 connection or resets its HTTP/2 stream, and the
//!   backend connection, its body unread, is closed;
//! - a client's upload ([`Upload`]) that sent nothing for `client_timeout`, or averages less
//!   than `min_upload_rate` once it has run [`UPLOAD_GRACE`], or grows past
//!   `max_body_bytes`, fails: the request to the backend is abandoned and the client answered
//!   408 or 413 (its connection closed).

use std::{
    future::Future as _,
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicU8, AtomicU64, Ordering},
    },
    task::{Context, Poll},
    time::Duration,
};

use bytes::Bytes;
use http_body_util::{Either, Full};
use hyper::{
    Response, StatusCode,
    body::{Body, Frame, Incoming, SizeHint},
    client::conn::http1,
    header::{self, HeaderValue},
};
use tokio::time::{Instant, Sleep};
use tracing::{debug, warn};

use super::{
    access_log::{AccessLog, Entry, Source},
    balance::{Outstanding, Upstream},
    conn::InFlight,
    proxy::Proxy,
    upstream::{ProxyTag, UpBody},
};
use crate::config::l7::{HttpLimits, UPLOAD_GRACE};

/// Why a body the balancer relays failed.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    #[error(transparent)]
    Http(#[from] hyper::Error),
    #[error("the backend sent nothing of the response body for {0:?}")]
    ServerTimeout(Duration),
    #[error("the client sent nothing of its upload for {0:?}")]
    ClientTimeout(Duration),
    #[error("the upload is slower than {0} bytes a second")]
    SlowUpload(u64),
    #[error("the request body is over {0} bytes")]
    TooLarge(u64),
}

/// A clock armed while a body waits for its sender: a timer allocated the first time it waits.
#[derive(Debug, Default)]
struct Stall {
    sleep: Option<Pin<Box<Sleep>>>,
    armed: bool,
}

impl Stall {
    /// The body has nothing to give: runs the clock to `deadline` (unless it runs already)
    /// and says whether it has passed.
    fn wait(&mut self, cx: &mut Context<'_>, deadline: impl FnOnce() -> Instant) -> bool {
        if !self.armed {
            let at = deadline();
            match &mut self.sleep {
                Some(sleep) => sleep.as_mut().reset(at),
                None => self.sleep = Some(Box::pin(tokio::time::sleep_until(at))),
            }
            self.armed = true;
        }
        self.sleep
            .as_mut()
            .is_some_and(|sleep| sleep.as_mut().poll(cx).is_ready())
    }

    /// The body moved: the clock stops.
    fn moved(&mut self) {
        self.armed = false;
    }
}

/// What a response holds on to until its body ends.
#[derive(Debug, Default)]
pub struct Held {
    pub in_flight: Option<InFlight>,
    pub outstanding: Option<Outstanding>,
    /// The HTTP/1.1 connection to give back once the body ended, and its PROXY header.
    pub connection: Option<(Arc<Upstream>, http1::SendRequest<UpBody>, ProxyTag)>,
}

impl Held {
    /// The body ended: the request was answered whole, and the connection can take the next
    /// request.
    fn release(&mut self) {
        if let Some(in_flight) = &mut self.in_flight {
            in_flight.answered();
        }
        if let Some((upstream, mut send, tag)) = self.connection.take() {
            if send.is_ready() {
                upstream.conns.check_in(send, tag);
            } else {
                // The connection's task may not have seen the end of the response yet.
                tokio::spawn(async move {
                    if send.ready().await.is_ok() {
                        upstream.conns.check_in(send, tag);
                    }
                });
            }
        }
    }
}

/// A request's access log line, written when its response body ends (or is dropped before
/// its end: the client went away).
#[derive(Debug)]
pub struct LogAtEnd {
    pub log: Arc<AccessLog>,
    pub source: Arc<Source>,
    pub upload: Option<Arc<UploadOutcome>>,
    pub entry: Box<Entry>,
    /// A response that has no body on the wire (to HEAD; 1xx, 204, 304): hyper drops it
    /// unread, which is its end, not the client's leaving.
    pub bodyless: bool,
}

/// How a response body ended, for its line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BodyEnd {
    Streaming,
    Ended,
    Failed(&'static str),
}

/// A response body to a client.
#[derive(Debug)]
pub struct ProxyBody {
    inner: Either<Incoming, Full<Bytes>>,
    held: Held,
    /// A streamed body: `server_timeout`, and the listener to count a timeout on.
    server: Option<(Duration, Arc<Proxy>)>,
    stall: Stall,
    log: Option<Box<LogAtEnd>>,
    end: BodyEnd,
    sent: u64,
}

impl Drop for ProxyBody {
    fn drop(&mut self) {
        let Some(log) = self.log.take() else {
            return;
        };
        let LogAtEnd {
            log,
            source,
            upload,
            mut entry,
            bodyless,
        } = *log;
        entry.bytes_out = self.sent;
        entry.bytes_in = upload.map_or(0, |u| u.received.load(Ordering::Relaxed));
        match self.end {
            BodyEnd::Ended => {}
            BodyEnd::Failed(why) => entry.error = Some(why.into()),
            // Dropped before its end: the client went away (or hyper gave up on it). The
            // balancer's own failure, if the answer was one, stays the reason.
            BodyEnd::Streaming
                if !bodyless && !self.inner.is_end_stream() && entry.error.is_none() =>
            {
                entry.error = Some("client_closed".into());
            }
            BodyEnd::Streaming => {}
        }
        log.record(&source, entry);
    }
}

impl ProxyBody {
    pub fn streamed(body: Incoming, held: Held) -> Self {
        Self::new(Either::Left(body), held)
    }

    pub fn full(bytes: impl Into<Bytes>) -> Self {
        Self::new(Either::Right(Full::new(bytes.into())), Held::default())
    }

    /// The backend failed the body: the request ends as answered (badly), not cancelled.
    fn answered_by_failure(&mut self) {
        if let Some(in_flight) = &mut self.held.in_flight {
            in_flight.answered();
        }
    }

    /// Fails the body if the backend sends nothing of it for `timeout` (counted on `proxy`).
    pub fn time_out_after(&mut self, timeout: Duration, proxy: Arc<Proxy>) {
        if matches!(self.inner, Either::Left(_)) {
            self.server = Some((timeout, proxy));
        }
    }

    /// Keeps the request counted on its client connection until this body ends; dropped
    /// before its end, it counts as cancelled.
    pub fn hold_in_flight(&mut self, mut in_flight: InFlight) {
        if self.inner.is_end_stream() {
            in_flight.answered();
        }
        self.held.in_flight = Some(in_flight);
    }

    fn new(inner: Either<Incoming, Full<Bytes>>, mut held: Held) -> Self {
        if inner.is_end_stream() {
            held.release();
        }
        Self {
            inner,
            held,
            server: None,
            stall: Stall::default(),
            log: None,
            end: BodyEnd::Streaming,
            sent: 0,
        }
    }

    /// Writes the request's access log line when this body ends.
    pub fn log_at_end(&mut self, log: LogAtEnd) {
        self.log = Some(Box::new(log));
    }
}

impl Body for ProxyBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = &mut *self;
        if let Some(in_flight) = &mut this.held.in_flight {
            in_flight.polled();
        }
        let polled = match &mut this.inner {
            Either::Left(body) => Pin::new(body).poll_frame(cx).map_err(BodyError::from),
            Either::Right(full) => Pin::new(full)
                .poll_frame(cx)
                .map_err(|never| match never {}),
        };
        if let Some((timeout, proxy)) = &this.server {
            if polled.is_pending() {
                let timeout = *timeout;
                if this.stall.wait(cx, || Instant::now() + timeout) {
                    proxy
                        .counters
                        .server_timeouts
                        .fetch_add(1, Ordering::Relaxed);
                    let backend = this.held.outstanding.as_ref().map(|o| o.upstream().address);
                    warn!(listener = %proxy.name, backend = ?backend, ?timeout,
                        "the backend sent nothing of a response body in time: closed");
                    this.server = None;
                    this.end = BodyEnd::Failed("server_timeout");
                    // The backend's failure: not a stream the client cancelled (which would
                    // count toward a reset flood and close the client's connection).
                    this.answered_by_failure();
                    return Poll::Ready(Some(Err(BodyError::ServerTimeout(timeout))));
                }
            } else {
                this.stall.moved();
            }
        }
        // hyper stops polling a body that says it has ended (its Content-Length is met, or
        // HTTP/2's END_STREAM came) rather than waiting for `None`: release on either.
        let ended = match &polled {
            Poll::Ready(None) => true,
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    this.sent += data.len() as u64;
                }
                this.inner.is_end_stream()
            }
            Poll::Ready(Some(Err(_))) => {
                this.end = BodyEnd::Failed("backend_body_failed");
                this.answered_by_failure();
                false
            }
            Poll::Pending => false,
        };
        if ended && this.end == BodyEnd::Streaming {
            this.end = BodyEnd::Ended;
        }
        if ended {
            this.held.release();
        } else if let (Poll::Ready(Some(Ok(_))), Some(in_flight)) =
            (&polled, &mut this.held.in_flight)
        {
            in_flight.yielded();
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// The balancer's own short answer: the status and its reason as plain text. It names no
/// backend.
pub fn error_response(status: StatusCode) -> Response<ProxyBody> {
    let text = format!(
        "{} {}\n",
        status.as_u16(),
        status.canonical_reason().unwrap_or("")
    );
    let mut response = Response::new(ProxyBody::full(text));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

/// How an upload went: why it failed, for the answer to its client (set once, by the
/// upload), and whether it has been sent whole (the response timeout starts then).
#[derive(Debug, Default)]
pub struct UploadOutcome {
    failure: AtomicU8,
    /// The bytes of it received so far.
    pub received: AtomicU64,
    /// When a frame of it last went to the backend.
    progress: std::sync::Mutex<Option<Instant>>,
    sent: std::sync::atomic::AtomicBool,
    sent_notify: tokio::sync::Notify,
}

impl UploadOutcome {
    const TIMED_OUT: u8 = 1;
    const TOO_LARGE: u8 = 2;
    const ABORTED: u8 = 3;

    /// The answer the client gets, if its upload failed: 408, 413, or 400 for a body the
    /// client cut short or garbled.
    pub fn status(&self) -> Option<StatusCode> {
        match self.failure.load(Ordering::Acquire) {
            Self::TIMED_OUT => Some(StatusCode::REQUEST_TIMEOUT),
            Self::TOO_LARGE => Some(StatusCode::PAYLOAD_TOO_LARGE),
            Self::ABORTED => Some(StatusCode::BAD_REQUEST),
            _ => None,
        }
    }

    /// When the backend last took a frame of the upload, if ever.
    pub fn last_progress(&self) -> Option<Instant> {
        self.progress.lock().ok().and_then(|p| *p)
    }

    fn set_sent(&self) {
        if !self.sent.swap(true, Ordering::AcqRel) {
            self.sent_notify.notify_waiters();
        }
    }

    /// Returns once the upload has been sent whole; never, if it fails (its own clocks end
    /// the request then).
    pub async fn sent(&self) {
        loop {
            let notified = self.sent_notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.sent.load(Ordering::Acquire) {
                return;
            }
            notified.await;
        }
    }
}

/// A client's request body on its way to a backend, under the listener's upload limits.
#[derive(Debug)]
pub struct Upload {
    inner: Incoming,
    client_timeout: Duration,
    min_rate: u64,
    max_bytes: Option<u64>,
    received: u64,
    /// Since when the backend side has been waiting for the client's next bytes (none while
    /// bytes flow, or while the backend side is not asking for them).
    waiting_since: Option<Instant>,
    /// The time spent waiting for the client so far, over the whole upload: the minimum
    /// rate is judged against this, not wall time (a backend that reads slowly is not the
    /// client's fault).
    waited: Duration,
    stall: Stall,
    /// None for a request without a body (nothing to fail, nothing allocated).
    outcome: Option<Arc<UploadOutcome>>,
    proxy: Arc<Proxy>,
}

impl Upload {
    pub fn new(inner: Incoming, limits: &HttpLimits, proxy: Arc<Proxy>) -> Self {
        Self {
            client_timeout: limits.client_timeout,
            min_rate: limits.min_upload_rate,
            max_bytes: limits.max_body_bytes,
            received: 0,
            waiting_since: None,
            waited: Duration::ZERO,
            stall: Stall::default(),
            outcome: (!inner.is_end_stream()).then(Arc::default),
            inner,
            proxy,
        }
    }

    /// Why it failed, once it has (none for a request without a body).
    pub fn outcome(&self) -> Option<Arc<UploadOutcome>> {
        self.outcome.clone()
    }

    /// When the upload waiting since `since` is late: nothing from the client for
    /// `client_timeout`, or its time waited for the client beyond what the minimum rate allows
    /// for what has arrived (never less than [`UPLOAD_GRACE`]).
    fn deadline(&self, since: Instant) -> Instant {
        let quiet = since + self.client_timeout;
        if self.min_rate == 0 {
            return quiet;
        }
        #[allow(
            clippy::cast_precision_loss,
            reason = "a schedule in seconds; precision to the millisecond is plenty"
        )]
        let allowed =
            Duration::from_secs_f64(self.received as f64 / self.min_rate as f64).max(UPLOAD_GRACE);
        quiet.min(since + allowed.saturating_sub(self.waited))
    }

    fn mark_sent(&self) {
        if let Some(outcome) = &self.outcome {
            outcome.set_sent();
        }
    }

    fn fail(
        &mut self,
        code: u8,
        error: BodyError,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let counters = &self.proxy.counters;
        let counter = match &error {
            BodyError::ClientTimeout(_) => &counters.client_timeouts,
            BodyError::SlowUpload(_) => &counters.slow_uploads,
            BodyError::Http(_) => &counters.bad_requests,
            BodyError::TooLarge(_) | BodyError::ServerTimeout(_) => &counters.body_too_large,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        debug!(listener = %self.proxy.name, %error, received = self.received, "an upload failed");
        if let Some(outcome) = &self.outcome {
            outcome.failure.store(code, Ordering::Release);
        }
        Poll::Ready(Some(Err(error)))
    }
}

impl Body for Upload {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                this.stall.moved();
                if let Some(since) = this.waiting_since.take() {
                    this.waited += since.elapsed();
                }
                if let Some(data) = frame.data_ref() {
                    this.received += data.len() as u64;
                    if let Some(outcome) = &this.outcome {
                        outcome.received.store(this.received, Ordering::Relaxed);
                        if let Ok(mut progress) = outcome.progress.lock() {
                            *progress = Some(Instant::now());
                        }
                    }
                    if let Some(max) = this.max_bytes.filter(|&max| this.received > max) {
                        return this.fail(UploadOutcome::TOO_LARGE, BodyError::TooLarge(max));
                    }
                }
                if this.inner.is_end_stream() {
                    this.mark_sent();
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(None) => {
                this.mark_sent();
                Poll::Ready(None)
            }
            // The client's connection broke or its body was malformed: the client's doing.
            Poll::Ready(Some(Err(error))) => {
                this.fail(UploadOutcome::ABORTED, BodyError::Http(error))
            }
            Poll::Pending => {
                let since = *this.waiting_since.get_or_insert_with(Instant::now);
                let deadline = this.deadline(since);
                if !this.stall.wait(cx, || deadline) {
                    return Poll::Pending;
                }
                if Instant::now() >= since + this.client_timeout {
                    let error = BodyError::ClientTimeout(this.client_timeout);
                    this.fail(UploadOutcome::TIMED_OUT, error)
                } else {
                    let error = BodyError::SlowUpload(this.min_rate);
                    this.fail(UploadOutcome::TIMED_OUT, error)
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
