//! `lb run`: the daemon. It loads the balancer, attaches it to the configured interfaces,
//! programs the maps from the configuration, and serves the control API until SIGTERM or
//! SIGINT. SIGHUP (or `lb reload`) re-reads the configuration file.
//!
//! Restarts are hitless: the maps and the XDP links are pinned under the configured bpffs
//! directory, so when the daemon stops (or dies) the balancer keeps forwarding with the last
//! tables and the connection table. A starting daemon adopts what is pinned: the new program
//! replaces the old one in the pinned links atomically, and the reconciler learns the live
//! state from the maps and changes only what differs (`reconcile::adopt`). `lb uninstall`
//! removes the pins, which detaches the balancer.
//!
//! Data flow: control socket (tokio task) -> channel -> the [`controller::Controller`] thread,
//! which alone owns the configuration and the reconciler.

pub mod controller;
pub mod probes;
pub mod runtime;

use std::{
    path::{Path, PathBuf},
    sync::Arc,
    thread,
    time::{Duration, Instant},
};

use aya_log::EbpfLogger;
use tokio::{
    io::unix::AsyncFd,
    signal::unix::{SignalKind, signal},
    sync::{mpsc, oneshot},
};
use tracing::{info, warn};

use self::{controller::Controller, probes::Probes, runtime::BackendKey};
use crate::{
    config::Config,
    control::{
        Request, Response,
        server::{self, Call, ServerError},
    },
    datapath::{Datapath, DatapathError},
    health::state::Outcome,
    l7::L7,
    loader::{Attached, Balancer, BalancerSpec, LoadError, interface_index},
    metrics::{self, MetricsInput},
    reconcile::{ReconcileError, Reconciler},
};

/// Why the daemon stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error(transparent)]
    Load(#[from] LoadError),
    #[error(transparent)]
    Datapath(#[from] DatapathError),
    #[error("applying the configuration: {0}")]
    Reconcile(#[from] ReconcileError),
    #[error(transparent)]
    Control(#[from] ServerError),
    #[error(transparent)]
    L7(#[from] crate::l7::L7Error),
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
}

/// Runs the daemon for `config` (read from `path`) until a signal stops it. The control socket
/// opens last, so a daemon that answers on it is ready.
pub async fn run(config: Config, path: PathBuf) -> Result<(), DaemonError> {
    let socket = config.control.socket.clone();
    server::ensure_free(&socket)?;
    let result = serve(config, path).await;
    remove_socket(&socket);
    result
}

async fn serve(config: Config, path: PathBuf) -> Result<(), DaemonError> {
    // The L7 listeners' files and addresses first: a bad certificate stops the start before
    // anything is changed.
    let l7 = Arc::new(L7::new(tokio::runtime::Handle::current()));
    let l7_prepared = l7.prepare(&config)?;
    let interfaces: Vec<(String, u32)> = config
        .datapath
        .interfaces
        .iter()
        .map(|name| Ok((name.clone(), interface_index(name)?)))
        .collect::<Result<_, LoadError>>()?;
    let mtu = smallest_mtu(&interfaces)?;
    let spec = BalancerSpec {
        geometry: config.ring_geometry(),
        conn_table_size: config.datapath.conn_table_size,
        pin_dir: Some(config.datapath.pin_dir.clone()),
    };
    let (mut balancer, mut datapath) = Balancer::load(&spec)?;
    for (name, index) in &interfaces {
        let link = links_dir(&config.datapath.pin_dir).join(name);
        match balancer.attach_pinned(name, config.datapath.attach_mode, &link)? {
            Attached::New(mode) => info!(interface = %name, ?mode, "balancer attached"),
            Attached::Replaced => {
                info!(interface = %name, "took over the pinned attachment: no packet went unbalanced");
            }
        }
        datapath.add_tx_port(*index)?;
    }
    let listeners = config.passthrough_listeners();
    let reconciler = Reconciler::adopt(datapath, config.datapath_config(mtu), &listeners)?;
    let (events, receiver) = mpsc::channel::<Event>(256);
    let probes = Probes::new(tokio::runtime::Handle::current(), events.clone());
    let socket = config.control.socket.clone();
    let metrics_address = config.metrics;
    let controller = Controller::new(config, Some(path), reconciler, Instant::now())?
        .with_l7(l7, l7_prepared, Instant::now())
        .with_probes(probes);
    info!(mtu, "configuration applied");
    let logs = ebpf_logs(&mut balancer);
    let controller = spawn_controller(controller, receiver)?;

    let mut tasks = vec![tokio::spawn(tick(events.clone()))];
    if let Some(address) = metrics_address {
        let listener = tokio::net::TcpListener::bind(address)
            .await
            .map_err(|source| DaemonError::Io {
                what: format!("listening for metrics on {address}"),
                source,
            })?;
        tasks.push(tokio::spawn(metrics::serve(
            listener,
            snapshot(events.clone()),
        )));
        info!(%address, "metrics at /metrics");
    }
    let listener = server::bind(&socket)?;
    tasks.push(tokio::spawn(server::serve(listener, events.clone())));
    tasks.extend(logs);
    info!("ready");

    let stop = wait_for_stop(&events).await;
    info!(
        signal = stop,
        "stopping; the balancer keeps forwarding with the pinned maps"
    );
    for task in &tasks {
        task.abort();
    }
    drop(events.send(Event::Stop).await);
    if controller.join().is_err() {
        warn!("the controller thread panicked");
    }
    drop(balancer);
    info!("stopped");
    Ok(())
}

/// What the controller thread handles, one at a time.
#[derive(Debug)]
pub enum Event {
    /// A control request and where to answer.
    Call(Call),
    /// A health check's outcome.
    Health(BackendKey, Outcome),
    /// Time passed: end drains, step slow starts.
    Tick,
    /// A metrics scrape.
    Metrics(oneshot::Sender<Option<MetricsInput>>),
    /// The daemon is stopping.
    Stop,
}

impl From<Call> for Event {
    fn from(call: Call) -> Self {
        Self::Call(call)
    }
}

/// How often the controller looks at drains and slow starts.
const TICK: Duration = Duration::from_millis(100);

async fn tick(events: mpsc::Sender<Event>) {
    let mut ticks = tokio::time::interval(TICK);
    loop {
        ticks.tick().await;
        if events.send(Event::Tick).await.is_err() {
            return;
        }
    }
}

/// Asks the controller for a metrics snapshot on each scrape.
fn snapshot(events: mpsc::Sender<Event>) -> impl metrics::Snapshot {
    move || -> metrics::SnapshotFuture {
        let events = events.clone();
        Box::pin(async move {
            let (reply, answer) = oneshot::channel();
            events.send(Event::Metrics(reply)).await.ok()?;
            answer.await.ok()?
        })
    }
}

/// `lb uninstall`: removes what a stopped daemon left running: the pinned links (which
/// detaches the balancer) and the pinned maps. Refuses while a daemon answers on the socket.
pub fn uninstall(config: &Config) -> Result<String, DaemonError> {
    server::ensure_free(&config.control.socket)?;
    let dir = &config.datapath.pin_dir;
    if !dir.exists() {
        return Ok(format!(
            "nothing to remove: {} does not exist\n",
            dir.display()
        ));
    }
    std::fs::remove_dir_all(dir).map_err(|source| DaemonError::Io {
        what: format!("removing {}", dir.display()),
        source,
    })?;
    Ok(format!(
        "removed {}: the balancer is detached from {} and its maps are gone\n",
        dir.display(),
        config.datapath.interfaces.join(", ")
    ))
}

/// Where the XDP links are pinned, one per interface.
pub fn links_dir(pin_dir: &Path) -> PathBuf {
    pin_dir.join("links")
}

/// Runs the controller on its own thread: reconciling takes system calls that should not run
/// on the async runtime.
fn spawn_controller<D: Datapath + Send + 'static>(
    mut controller: Controller<D>,
    mut events: mpsc::Receiver<Event>,
) -> Result<thread::JoinHandle<()>, DaemonError> {
    thread::Builder::new()
        .name("lb-controller".to_owned())
        .spawn(move || {
            while let Some(event) = events.blocking_recv() {
                let now = Instant::now();
                // A caller may have gone away; what it asked for stands either way.
                match event {
                    Event::Call((request, reply)) => {
                        drop(reply.send(controller.handle(request, now)))
                    }
                    Event::Health(key, outcome) => controller.on_health(&key, &outcome, now),
                    Event::Tick => controller.on_tick(now),
                    Event::Metrics(reply) => drop(reply.send(controller.metrics_input(now))),
                    Event::Stop => break,
                }
            }
        })
        .map_err(|source| DaemonError::Io {
            what: "starting the controller thread".to_owned(),
            source,
        })
}

/// Waits for SIGTERM or SIGINT (returns its name), reloading the configuration on SIGHUP.
async fn wait_for_stop(calls: &mpsc::Sender<Event>) -> &'static str {
    let (Ok(mut term), Ok(mut int), Ok(mut hup)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
        signal(SignalKind::hangup()),
    ) else {
        warn!("cannot listen for signals; stopping");
        return "none";
    };
    loop {
        tokio::select! {
            _ = term.recv() => return "SIGTERM",
            _ = int.recv() => return "SIGINT",
            _ = hup.recv() => reload(calls).await,
        }
    }
}

/// Asks the controller to re-read the configuration file, and logs the outcome (the
/// controller logs the details).
async fn reload(calls: &mpsc::Sender<Event>) {
    let (reply, answer) = oneshot::channel();
    if calls
        .send(Event::Call((Request::Reload, reply)))
        .await
        .is_err()
    {
        return;
    }
    match answer.await {
        Ok(Response::Ok(_)) => info!("SIGHUP: configuration reloaded"),
        Ok(Response::Error(error)) => warn!(%error, "SIGHUP: the configuration was not reloaded"),
        Err(_) => warn!("SIGHUP: the controller is gone"),
    }
}

/// Forwards the eBPF programs' rare log records (aya-log) to the daemon's log.
fn ebpf_logs(balancer: &mut Balancer) -> Option<tokio::task::JoinHandle<()>> {
    let logger = match EbpfLogger::init(&mut balancer.ebpf) {
        Ok(logger) => logger,
        Err(error) => {
            warn!(%error, "the balancer's eBPF log is not available");
            return None;
        }
    };
    // SAFETY: the logger owns its ring buffer's file descriptor for its whole life, and the
    // `AsyncFd` owns the logger, so the descriptor stays open and the same until it is dropped.
    let registered =
        unsafe { AsyncFd::register_with_interest(logger, tokio::io::Interest::READABLE) };
    let mut fd = match registered {
        Ok(fd) => fd,
        Err(error) => {
            warn!(%error, "cannot poll the balancer's eBPF log");
            return None;
        }
    };
    Some(tokio::spawn(async move {
        while let Ok(mut guard) = fd.readable_mut().await {
            guard.get_inner_mut().flush();
            guard.clear_ready();
        }
    }))
}

/// The smallest MTU of the interfaces: the largest encapsulated packet they all carry.
fn smallest_mtu(interfaces: &[(String, u32)]) -> Result<u32, DaemonError> {
    let mut smallest = u32::MAX;
    for (name, _) in interfaces {
        let mtu = crate::loader::interface_mtu(name).map_err(|source| DaemonError::Io {
            what: format!("reading the MTU of {name}"),
            source,
        })?;
        smallest = smallest.min(mtu);
    }
    Ok(if smallest == u32::MAX { 0 } else { smallest })
}

fn remove_socket(socket: &Path) {
    if let Err(error) = std::fs::remove_file(socket)
        && error.kind() != std::io::ErrorKind::NotFound
    {
        warn!(socket = %socket.display(), %error, "could not remove the control socket");
    }
}
