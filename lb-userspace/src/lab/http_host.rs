//! [`HttpHost`]: a lab host's HTTP servers, as a guard: two [`HttpBackend`]s (plain HTTP on one
//! port, TLS on another) on a tokio runtime in a thread of their own inside the host's
//! namespace, for the L7 listeners to proxy to.
//!
//! [`HttpHost::start`] issues the TLS server's certificate from the given [`Pki`] (for
//! `<name>.lb.test` and the host's address, which is what a bridging listener verifies), spawns
//! the thread with [`NetNs::spawn`] and returns once both servers listen. The thread runs a
//! current-thread runtime until the guard is dropped (or [`HttpHost::stop`]ped): then the
//! runtime goes, and with it the listeners and every open connection, as when a backend's
//! process dies. Request counts are read from the servers' [`Seen`] counters, live.

use std::{
    net::{IpAddr, SocketAddr},
    sync::{Arc, atomic::Ordering, mpsc},
    thread::JoinHandle,
};

use tokio::sync::oneshot;

use super::{
    LabError, NetNs, Pki,
    http::{HttpBackend, Seen},
};

/// The ports of a host's HTTP servers, on its own address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HttpPorts {
    /// Plain HTTP (an offload listener's backends).
    pub plain: u16,
    /// HTTP over TLS (a bridging listener's backends).
    pub tls: u16,
}

/// A host's running HTTP servers; stopped when dropped.
#[derive(Debug)]
pub struct HttpHost {
    name: String,
    plain: SocketAddr,
    tls: SocketAddr,
    plain_seen: Arc<Seen>,
    tls_seen: Arc<Seen>,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

/// What the server thread reports once both servers listen.
type Ready = Result<(Arc<Seen>, Arc<Seen>), LabError>;

impl HttpHost {
    /// Starts `name`'s servers on `address` (`ports.plain`, `ports.tls`) inside `ns`, the TLS
    /// one with a certificate from `pki` for `<name>.lb.test` and `address`, offering HTTP/2
    /// and HTTP/1.1 by ALPN. Returns once both listen.
    pub fn start(
        ns: &NetNs,
        name: &str,
        address: IpAddr,
        ports: HttpPorts,
        pki: &Pki,
    ) -> Result<Self, LabError> {
        let issued = pki.issue(&[&format!("{name}.lb.test"), &address.to_string()])?;
        let tls_config = issued.http_server_config()?;
        let plain = SocketAddr::new(address, ports.plain);
        let tls = SocketAddr::new(address, ports.tls);
        let (ready_tx, ready_rx) = mpsc::sync_channel::<Ready>(1);
        let (stop_tx, stop_rx) = oneshot::channel();
        let server_name = name.to_owned();
        let thread_name = format!("http-{name}");
        let thread = ns.spawn(&thread_name, move || {
            serve(&server_name, plain, tls, tls_config, &ready_tx, stop_rx);
        })?;
        let mut host = Self {
            name: name.to_owned(),
            plain,
            tls,
            plain_seen: Arc::default(),
            tls_seen: Arc::default(),
            stop: Some(stop_tx),
            thread: Some(thread),
        };
        match ready_rx.recv() {
            Ok(Ok((plain_seen, tls_seen))) => {
                host.plain_seen = plain_seen;
                host.tls_seen = tls_seen;
                Ok(host)
            }
            // Dropping `host` joins the thread, which has ended.
            Ok(Err(error)) => Err(error),
            Err(mpsc::RecvError) => Err(LabError::Thread {
                name: thread_name,
                reason: "ended before listening".to_owned(),
            }),
        }
    }

    /// The name the servers answer with (`x-backend`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The plain-HTTP server's address.
    pub fn plain_addr(&self) -> SocketAddr {
        self.plain
    }

    /// The TLS server's address.
    pub fn tls_addr(&self) -> SocketAddr {
        self.tls
    }

    /// Requests the plain-HTTP server received since it started.
    pub fn plain_requests(&self) -> u64 {
        self.plain_seen.requests.load(Ordering::Relaxed)
    }

    /// Requests the TLS server received since it started.
    pub fn tls_requests(&self) -> u64 {
        self.tls_seen.requests.load(Ordering::Relaxed)
    }

    /// Requests both servers received since they started.
    pub fn requests(&self) -> u64 {
        self.plain_requests() + self.tls_requests()
    }

    /// Stops both servers, closes their connections and joins the thread.
    pub fn stop(mut self) -> Result<(), LabError> {
        self.shutdown()
    }

    /// Signals the thread and joins it; does nothing the second time.
    fn shutdown(&mut self) -> Result<(), LabError> {
        if let Some(stop) = self.stop.take()
            && stop.send(()).is_err()
        {
            tracing::debug!("the HTTP servers of {} had already stopped", self.name);
        }
        let Some(thread) = self.thread.take() else {
            return Ok(());
        };
        thread.join().map_err(|_| LabError::Thread {
            name: format!("http-{}", self.name),
            reason: "panicked".to_owned(),
        })
    }
}

impl Drop for HttpHost {
    fn drop(&mut self) {
        if let Err(error) = self.shutdown() {
            tracing::warn!(%error, "the HTTP servers of {} did not stop cleanly", self.name);
        }
    }
}

/// Body of the server thread: both servers on a current-thread runtime until `stop` fires
/// (or its sender goes); dropping the runtime then closes every connection.
fn serve(
    name: &str,
    plain: SocketAddr,
    tls: SocketAddr,
    tls_config: Arc<rustls::ServerConfig>,
    ready: &mpsc::SyncSender<Ready>,
    stop: oneshot::Receiver<()>,
) {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(source) => {
            let what = "start a runtime for";
            return report(
                ready,
                Err(LabError::Io {
                    what,
                    addr: plain,
                    source,
                }),
            );
        }
    };
    runtime.block_on(async move {
        let bind = |addr| {
            move |source| LabError::Io {
                what: "listen on",
                addr,
                source,
            }
        };
        let servers = match HttpBackend::start(plain, name, None).await {
            Ok(plain_server) => match HttpBackend::start(tls, name, Some(tls_config)).await {
                Ok(tls_server) => Ok((plain_server, tls_server)),
                Err(source) => Err(bind(tls)(source)),
            },
            Err(source) => Err(bind(plain)(source)),
        };
        match servers {
            Ok((plain_server, tls_server)) => {
                let seen = (Arc::clone(&plain_server.seen), Arc::clone(&tls_server.seen));
                report(ready, Ok(seen));
                // Until the guard says stop (or is gone).
                drop(stop.await);
                drop((plain_server, tls_server));
            }
            Err(error) => report(ready, Err(error)),
        }
    });
    // Dropping the runtime cancels the connection tasks and closes their sockets.
}

/// Hands the outcome of starting to [`HttpHost::start`].
fn report(ready: &mpsc::SyncSender<Ready>, result: Ready) {
    // `start` blocks in `recv` until this arrives, so the receiver is still there.
    if ready.send(result).is_err() {
        tracing::debug!("nobody waited for a lab host's HTTP servers to listen");
    }
}
