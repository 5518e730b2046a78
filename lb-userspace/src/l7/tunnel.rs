//! An upgraded connection (WebSocket and other `Upgrade` requests): once the backend has
//! switched protocols, the client's and the backend's connections are joined and bytes copied
//! both ways until either side closes or nothing moved for the listener's `idle_timeout`. The
//! tunnel keeps its client connection's place among the listener's `max_connections`.

use std::sync::{
    Arc,
    atomic::{AtomicU64, Ordering},
};

use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tracing::debug;

/// Joins the client's and the backend's upgraded connections and copies bytes both ways
/// until either side closes, or nothing moved for `idle_timeout`. The tunnel keeps the client
/// connection's place among the listener's `max_connections`.
pub async fn run(
    client: OnUpgrade,
    backend: OnUpgrade,
    outstanding: super::balance::Outstanding,
    permit: Option<super::limit::Slot>,
    idle_timeout: std::time::Duration,
) {
    let (client, backend) = match tokio::try_join!(client, backend) {
        Ok(both) => both,
        Err(error) => {
            debug!(%error, "an upgrade did not complete");
            return;
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
    drop((outstanding, permit));
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
