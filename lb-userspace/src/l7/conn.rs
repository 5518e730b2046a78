//! One client connection's clock: which requests are in flight, since when it has been idle,
//! when the head of its next HTTP/1.1 request began to arrive, and how many HTTP/2 streams
//! its client cancelled lately. The connection's driver ([`super::server`]) sleeps until the
//! nearest deadline it knows of ([`ConnState::next_check`]):
//!
//! - idle (no request in flight) for `idle_timeout`: closed gracefully;
//! - a request head (HTTP/1.1) still incomplete `header_read_timeout` after its first byte:
//!   closed (a slow client; HTTP/2 framing has its own limits);
//! - more HTTP/2 requests cancelled (before their response ended) than
//!   `h2_max_resets_per_second` allows (a reset flood): closed;
//! - a write to the client that made no progress for `client_timeout` (a client that stopped
//!   reading, or whose TCP window stays closed): closed, with every request in flight on it
//!   and their backend connections;
//! - HTTP/2: a response body that hyper stopped taking frames of (the client keeps its stream
//!   or connection flow-control window at zero, so the socket never blocks) while no other
//!   response on the connection moved, for `client_timeout`: closed the same way.
//!
//! hyper's own header timeout also runs while a kept-alive connection is idle, so it would
//! cut idle connections at the header timeout; hence this clock.
//!
//! A request's start and end only record the time: they do not wake the driver, which would
//! cost a wake-up and a timer per request. Instead the driver never sleeps longer than the
//! shortest of the timeouts, so a head, an idle spell or a stalled write that begins while it
//! sleeps is seen, and its deadline armed, before that deadline. Only a reset flood wakes it
//! at once.

use std::{
    pin::Pin,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering},
    },
    task::{Context, Poll},
    time::{Duration, Instant},
};

use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    sync::Notify,
};

use super::limit::Slot;
use crate::config::l7::HttpLimits;

/// What a connection's driver should do when it wakes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    Continue,
    /// Idle too long: close gracefully.
    Idle,
    /// A request head took too long: close.
    SlowHead,
    /// The client took nothing of what was written to it for `client_timeout`: close.
    WriteStalled,
    /// Too many cancelled streams: close.
    ResetFlood,
}

/// The shared state of one client connection.
#[derive(Debug)]
pub struct ConnState {
    start: Instant,
    /// HTTP/1.1: request heads are timed.
    h1: bool,
    in_flight: AtomicU32,
    /// Milliseconds since `start` when the last request ended (or the connection began).
    idle_since: AtomicU64,
    /// Milliseconds since `start`, plus one, when bytes of a request head arrived on an idle
    /// connection; 0 if none did.
    head_since: AtomicU64,
    /// Milliseconds since `start`, plus one, when a write to the client could not go on (the
    /// socket's buffer full); 0 while writes progress.
    blocked_since: AtomicU64,
    /// HTTP/2: response bodies that handed hyper a frame and have not been asked for the
    /// next one yet (hyper waits for flow-control window first).
    unpolled: AtomicU32,
    /// Milliseconds since `start`, plus one, when a response body last handed hyper a frame.
    yielded_at: AtomicU64,
    resets: Mutex<Bucket>,
    flooded: AtomicBool,
    /// The daemon is stopping (or handing over): HTTP/1.1 responses close the connection.
    draining: AtomicBool,
    /// The connection's place among the listener's `max_connections`: held while it is
    /// open, handed to the tunnel if it is upgraded.
    permit: Mutex<Option<Slot>>,
    /// Wakes the driver at once (a reset flood).
    pub wake: Notify,
}

/// A token bucket: `rate` tokens a second, at most `rate` saved.
#[derive(Debug)]
struct Bucket {
    tokens: f64,
    rate: f64,
    at: Instant,
}

impl ConnState {
    pub fn new(h1: bool, limits: &HttpLimits) -> Arc<Self> {
        let now = Instant::now();
        let rate = f64::from(limits.h2_max_resets_per_second);
        Arc::new(Self {
            start: now,
            h1,
            in_flight: AtomicU32::new(0),
            idle_since: AtomicU64::new(0),
            head_since: AtomicU64::new(0),
            blocked_since: AtomicU64::new(0),
            unpolled: AtomicU32::new(0),
            yielded_at: AtomicU64::new(0),
            resets: Mutex::new(Bucket {
                tokens: rate,
                rate,
                at: now,
            }),
            flooded: AtomicBool::new(false),
            draining: AtomicBool::new(false),
            permit: Mutex::new(None),
            wake: Notify::new(),
        })
    }

    fn millis(&self, at: Instant) -> u64 {
        u64::try_from(at.saturating_duration_since(self.start).as_millis()).unwrap_or(u64::MAX)
    }

    /// HTTP/1.1 (else HTTP/2).
    pub fn is_h1(&self) -> bool {
        self.h1
    }

    /// From now on, each HTTP/1.1 response says `Connection: close` and ends its connection.
    pub fn set_draining(&self) {
        self.draining.store(true, Ordering::Release);
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Acquire)
    }

    /// Holds the connection's place among the listener's connections.
    pub fn hold_permit(&self, permit: Slot) {
        if let Ok(mut slot) = self.permit.lock() {
            *slot = Some(permit);
        }
    }

    /// Takes the connection's place (a tunnel that outlives the HTTP connection keeps it).
    pub fn take_permit(&self) -> Option<Slot> {
        self.permit.lock().ok()?.take()
    }

    /// A request began; the guard ends it (pass it on to the response body).
    pub fn begin(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        self.head_since.store(0, Ordering::Release);
        InFlight {
            state: Arc::clone(self),
            answered: false,
            unpolled: false,
        }
    }

    /// Bytes arrived from the client.
    fn on_read(&self) {
        if self.h1
            && self.in_flight.load(Ordering::Acquire) == 0
            && self.head_since.load(Ordering::Acquire) == 0
        {
            // HTTP/1.1 reads and request starts all happen in the connection's own task (hyper
            // polls the service there), so nothing races this store.
            let now = self.millis(Instant::now()) + 1;
            self.head_since.store(now, Ordering::Release);
        }
    }

    /// A write to the client could not go on.
    fn on_blocked(&self) {
        if self.blocked_since.load(Ordering::Relaxed) == 0 {
            let now = self.millis(Instant::now()) + 1;
            self.blocked_since.store(now, Ordering::Release);
        }
    }

    /// A write to the client went on.
    fn on_written(&self) {
        if self.blocked_since.load(Ordering::Relaxed) != 0 {
            self.blocked_since.store(0, Ordering::Release);
        }
    }

    fn on_cancel(&self) {
        let Ok(mut bucket) = self.resets.lock() else {
            return;
        };
        let now = Instant::now();
        let refill = now.saturating_duration_since(bucket.at).as_secs_f64() * bucket.rate;
        bucket.tokens = (bucket.tokens + refill).min(bucket.rate);
        bucket.at = now;
        bucket.tokens -= 1.0;
        if bucket.tokens < 0.0 {
            self.flooded.store(true, Ordering::Release);
            self.wake.notify_one();
        }
    }

    /// When the driver should look again, from `now`: the nearest deadline known, and no
    /// later than the shorter timeout from now, for a head or an idle spell that begins
    /// before then (its deadline is later than that).
    pub fn next_check(&self, limits: &HttpLimits, now: Instant) -> Instant {
        let soon = now
            + limits
                .idle_timeout
                .min(limits.header_read_timeout)
                .min(limits.client_timeout);
        self.deadline(limits).map_or(soon, |at| at.min(soon))
    }

    /// The next moment something known may be due, if any.
    pub fn deadline(&self, limits: &HttpLimits) -> Option<Instant> {
        if self.flooded.load(Ordering::Acquire) {
            return Some(Instant::now());
        }
        let at = |millis: u64| self.start + Duration::from_millis(millis);
        let blocked = match self.blocked_since.load(Ordering::Acquire) {
            0 => None,
            since => Some(at(since - 1) + limits.client_timeout),
        };
        // HTTP/2: a response body hyper has not asked for its next frame since it yielded one.
        let unpolled = match self.yielded_at.load(Ordering::Acquire) {
            since if since != 0 && self.unpolled.load(Ordering::Acquire) > 0 => {
                Some(at(since - 1) + limits.client_timeout)
            }
            _ => None,
        };
        let blocked = blocked.into_iter().chain(unpolled).min();
        if self.in_flight.load(Ordering::Acquire) > 0 {
            return blocked;
        }
        let idle = at(self.idle_since.load(Ordering::Acquire)) + limits.idle_timeout;
        let head = match self.head_since.load(Ordering::Acquire) {
            0 => None,
            since => Some(at(since - 1) + limits.header_read_timeout),
        };
        let earliest = head.map_or(idle, |head| head.min(idle));
        Some(blocked.map_or(earliest, |blocked| blocked.min(earliest)))
    }

    /// What is due at `now`.
    pub fn verdict(&self, limits: &HttpLimits, now: Instant) -> Verdict {
        if self.flooded.load(Ordering::Acquire) {
            return Verdict::ResetFlood;
        }
        let at = |millis: u64| self.start + Duration::from_millis(millis);
        let blocked = self.blocked_since.load(Ordering::Acquire);
        if blocked != 0 && now >= at(blocked - 1) + limits.client_timeout {
            return Verdict::WriteStalled;
        }
        if self.unpolled.load(Ordering::Acquire) > 0 {
            let yielded = self.yielded_at.load(Ordering::Acquire);
            if yielded != 0 && now >= at(yielded - 1) + limits.client_timeout {
                return Verdict::WriteStalled;
            }
        }
        if self.in_flight.load(Ordering::Acquire) > 0 {
            return Verdict::Continue;
        }
        let head = self.head_since.load(Ordering::Acquire);
        if head != 0 && now >= at(head - 1) + limits.header_read_timeout {
            return Verdict::SlowHead;
        }
        if now >= at(self.idle_since.load(Ordering::Acquire)) + limits.idle_timeout {
            return Verdict::Idle;
        }
        Verdict::Continue
    }
}

/// A request in flight on a client connection.
#[derive(Debug)]
pub struct InFlight {
    state: Arc<ConnState>,
    answered: bool,
    /// HTTP/2: its response body handed hyper a frame and waits to be asked for the next.
    unpolled: bool,
}

impl InFlight {
    /// HTTP/2: the response body handed hyper a frame (hyper asks for the next once the
    /// client's flow-control window has room for it).
    pub fn yielded(&mut self) {
        let state = &self.state;
        if state.h1 {
            return;
        }
        state
            .yielded_at
            .store(state.millis(Instant::now()) + 1, Ordering::Release);
        if !self.unpolled {
            self.unpolled = true;
            state.unpolled.fetch_add(1, Ordering::AcqRel);
        }
    }

    /// hyper asks the response body for its next frame.
    pub fn polled(&mut self) {
        if self.unpolled {
            self.unpolled = false;
            self.state.unpolled.fetch_sub(1, Ordering::AcqRel);
        }
    }

    /// The response ended (its body was sent whole); dropping the guard now ends the request
    /// normally rather than counting a cancellation.
    pub fn answered(&mut self) {
        self.answered = true;
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.polled();
        let state = &self.state;
        // An HTTP/1.1 client cancels only by closing its connection (or hyper drops the body
        // of an answer to HEAD): only HTTP/2 streams make a reset flood.
        if !self.answered && !state.h1 {
            state.on_cancel();
        }
        state
            .idle_since
            .store(state.millis(Instant::now()), Ordering::Release);
        state.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A client stream that tells the connection's clock when bytes arrive.
#[derive(Debug)]
pub struct Watched<S> {
    inner: S,
    state: Arc<ConnState>,
}

impl<S> Watched<S> {
    pub fn new(inner: S, state: Arc<ConnState>) -> Self {
        Self { inner, state }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Watched<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.state.on_read();
        }
        polled
    }
}

impl<S> Watched<S> {
    /// A write that went on clears the stall clock; one that could not starts it.
    fn note_write(&self, polled: &Poll<std::io::Result<usize>>) {
        match polled {
            Poll::Pending => self.state.on_blocked(),
            Poll::Ready(Ok(n)) if *n > 0 => self.state.on_written(),
            Poll::Ready(_) => {}
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Watched<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.note_write(&polled);
        polled
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.note_write(&polled);
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let polled = Pin::new(&mut self.inner).poll_flush(cx);
        match polled {
            Poll::Pending => self.state.on_blocked(),
            Poll::Ready(_) => self.state.on_written(),
        }
        polled
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::l7::l7_defaults as d;

    fn limits() -> HttpLimits {
        HttpLimits {
            max_header_bytes: d::MAX_HEADER_BYTES,
            header_read_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            client_timeout: Duration::from_secs(30),
            min_upload_rate: 0,
            max_body_bytes: None,
            max_connections: 10,
            h2_max_concurrent_streams: 10,
            h2_max_resets_per_second: 5,
        }
    }

    #[test]
    fn an_idle_connection_is_due_at_the_idle_timeout_and_a_started_head_sooner() {
        let limits = limits();
        let state = ConnState::new(true, &limits);
        let start = state.start;
        assert_eq!(state.deadline(&limits), Some(start + limits.idle_timeout));
        assert_eq!(
            state.verdict(&limits, start + Duration::from_secs(59)),
            Verdict::Continue
        );
        assert_eq!(
            state.verdict(&limits, start + Duration::from_secs(60)),
            Verdict::Idle
        );

        state.on_read();
        let head = state.deadline(&limits).unwrap();
        assert!(head <= Instant::now() + limits.header_read_timeout);
        assert_eq!(state.verdict(&limits, head), Verdict::SlowHead);

        let mut request = state.begin();
        assert_eq!(state.deadline(&limits), None, "a request in flight");
        assert_eq!(
            state.verdict(&limits, head + Duration::from_secs(3600)),
            Verdict::Continue
        );
        request.answered();
        drop(request);
        let idle = state.deadline(&limits).unwrap();
        assert!(
            idle > Instant::now() + Duration::from_secs(59),
            "idle again, the head done"
        );
    }

    #[test]
    fn the_driver_looks_again_before_any_deadline_that_may_begin_meanwhile() {
        let limits = HttpLimits {
            idle_timeout: Duration::from_secs(2),
            ..limits()
        };
        let state = ConnState::new(true, &limits);
        let start = state.start;
        assert_eq!(
            state.next_check(&limits, start),
            start + limits.idle_timeout,
            "idle: the idle deadline"
        );
        let _request = state.begin();
        let later = start + Duration::from_secs(100);
        assert_eq!(
            state.next_check(&limits, later),
            later + limits.idle_timeout,
            "in flight: the shorter timeout from now, in case the request ends"
        );
        let limits = HttpLimits {
            header_read_timeout: Duration::from_secs(1),
            ..limits
        };
        assert_eq!(
            state.next_check(&limits, later),
            later + limits.header_read_timeout
        );
    }

    #[test]
    fn cancelled_requests_beyond_the_rate_are_a_flood() {
        let limits = limits();
        let state = ConnState::new(false, &limits);
        for _ in 0..5 {
            drop(state.begin());
        }
        assert_eq!(state.verdict(&limits, Instant::now()), Verdict::Continue);
        let mut answered = state.begin();
        answered.answered();
        drop(answered);
        assert_eq!(state.verdict(&limits, Instant::now()), Verdict::Continue);
        drop(state.begin());
        assert_eq!(state.verdict(&limits, Instant::now()), Verdict::ResetFlood);
    }

    #[test]
    fn an_http2_body_hyper_stopped_asking_for_is_due_at_the_client_timeout() {
        let limits = limits();
        let state = ConnState::new(false, &limits);
        let mut request = state.begin();
        assert_eq!(state.deadline(&limits), None, "nothing yielded yet");
        request.yielded();
        let due = state.deadline(&limits).expect("a body waiting to be asked");
        assert!(due <= Instant::now() + limits.client_timeout);
        assert!(
            state.next_check(&limits, Instant::now()) <= due,
            "the driver looks no later than the deadline"
        );
        assert_eq!(state.verdict(&limits, due), Verdict::WriteStalled);
        request.polled();
        assert_eq!(state.deadline(&limits), None, "asked again");
        assert_eq!(state.verdict(&limits, due), Verdict::Continue);
    }

    #[test]
    fn http2_reads_do_not_start_a_head_clock() {
        let limits = limits();
        let state = ConnState::new(false, &limits);
        state.on_read();
        assert_eq!(
            state.deadline(&limits),
            Some(state.start + limits.idle_timeout)
        );
    }
}
