//! An upgraded connection (WebSocket: an HTTP/1.1 `Upgrade`, or an HTTP/2 extended CONNECT
//! stream): once the backend has switched protocols, the client's side and the backend's
//! connection are joined and bytes copied both ways until either side closes or nothing moved
//! for the listener's `idle_timeout`. A tunnel keeps its HTTP/1.1 client connection's place
//! among the listener's `max_connections`, or its HTTP/2 stream counted in flight.

use std::sync::{
    Arc,
    atomic::{AtomicU64, Ordering},
};

use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tracing::debug;

/// What a tunnel holds of its client connection while it runs.
#[derive(Debug)]
pub enum Held {
    /// An HTTP/1.1 connection that became the tunnel: its place among `max_connections`.
    Connection(Option<super::limit::Slot>),
    /// An HTTP/2 stream (RFC 8441): a request in flight on its connection, which is then not
    /// idle; ended as answered (not a cancelled stream) with the tunnel.
    Stream(super::conn::InFlight),
}

/// Joins the client's and the backend's upgraded connections and copies bytes both ways
/// until either side closes, or nothing moved for `idle_timeout`. The tunnel keeps what it
/// `held` of the client connection until then.
pub async fn run(
    client: OnUpgrade,
    backend: OnUpgrade,
    outstanding: super::balance::Outstanding,
    mut held: Held,
    idle_timeout: std::time::Duration,
) {
    let copied = join(client, backend, &outstanding, idle_timeout).await;
    if let Held::Stream(in_flight) = &mut held
        && copied
    {
        in_flight.answered();
    }
    drop((outstanding, held));
}

/// Copies until either side closes or the tunnel idles out; whether the upgrades completed
/// (else the client's stream went unanswered).
async fn join(
    client: OnUpgrade,
    backend: OnUpgrade,
    outstanding: &super::balance::Outstanding,
    idle_timeout: std::time::Duration,
) -> bool {
    let (client, backend) = match tokio::try_join!(client, backend) {
        Ok(both) => both,
        Err(error) => {
            debug!(%error, "an upgrade did not complete");
            return false;
        }
    };
    let activity = Arc::new(AtomicU64::new(0));
    let start = tokio::time::Instant::now();
    let mut client = Active::new(TokioIo::new(client), &activity, start);
    let mut backend = Active::new(TokioIo::new(backend), &activity, start);
    let copy = tokio::io::copy_bidirectional(&mut client, &mut backend);
    tokio::pin!(copy);
    loop {
        let last = start + std::time::Duration::from_millis(activity.load(Ordering::Relaxed));
        tokio::select! {
            ended = &mut copy => {
                if let Err(error) = ended {
                    debug!(backend = %outstanding.upstream().address, %error, "a tunnel ended");
                }
                break;
            }
            () = tokio::time::sleep_until(last + idle_timeout) => {
                let moved = start + std::time::Duration::from_millis(activity.load(Ordering::Relaxed));
                if moved + idle_timeout <= tokio::time::Instant::now() {
                    debug!(backend = %outstanding.upstream().address, "an idle tunnel was closed");
                    break;
                }
            }
        }
    }
    true
}

/// A stream that notes when bytes last moved through it (milliseconds since `start`).
struct Active<S> {
    inner: S,
    activity: Arc<AtomicU64>,
    start: tokio::time::Instant,
}

impl<S> Active<S> {
    fn new(inner: S, activity: &Arc<AtomicU64>, start: tokio::time::Instant) -> Self {
        Self {
            inner,
            activity: Arc::clone(activity),
            start,
        }
    }

    fn touch(&self) {
        let now = u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.activity.store(now, Ordering::Relaxed);
    }
}

impl<S: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for Active<S> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = std::pin::Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.touch();
        }
        polled
    }
}

impl<S: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for Active<S> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        let polled = std::pin::Pin::new(&mut self.inner).poll_write(cx, buf);
        if matches!(polled, std::task::Poll::Ready(Ok(n)) if n > 0) {
            self.touch();
        }
        polled
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
