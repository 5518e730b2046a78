//! `lb run`: the daemon. It loads the balancer, attaches it to the configured interfaces,
//! programs the maps from the configuration, and serves the control API until SIGTERM or
//! SIGINT, on which it detaches, removes its pins and its socket, and exits.
//!
//! Data flow: control socket (tokio task) -> channel -> the [`controller::Controller`] thread,
//! which alone owns the configuration and the reconciler.

pub mod controller;

use std::{path::Path, thread};

use aya_log::EbpfLogger;
use tokio::{
    io::unix::AsyncFd,
    signal::unix::{SignalKind, signal},
    sync::mpsc,
};
use tracing::{info, warn};

use self::controller::Controller;
use crate::{
    config::Config,
    control::server::{self, Call, ServerError},
    datapath::{Datapath, DatapathError},
    loader::{BALANCER_MAPS, Balancer, BalancerSpec, LoadError, interface_index},
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
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
}

/// Runs the daemon for `config` until a signal stops it. The control socket opens last, so a
/// daemon that answers on it is ready.
pub async fn run(config: Config) -> Result<(), DaemonError> {
    let socket = config.control.socket.clone();
    server::ensure_free(&socket)?;
    let pin_dir = config.datapath.pin_dir.clone();
    let result = serve(config).await;
    cleanup(&socket, &pin_dir);
    result
}

async fn serve(config: Config) -> Result<(), DaemonError> {
    let interfaces: Vec<(String, u32)> = config
        .datapath
        .interfaces
        .iter()
        .map(|name| Ok((name.clone(), interface_index(name)?)))
        .collect::<Result<_, LoadError>>()?;
    let mtu = smallest_mtu(&interfaces)?;
    remove_pins(&config.datapath.pin_dir);
    let spec = BalancerSpec {
        geometry: config.ring_geometry(),
        conn_table_size: config.datapath.conn_table_size,
        pin_dir: Some(config.datapath.pin_dir.clone()),
    };
    let (mut balancer, mut datapath) = Balancer::load(&spec)?;
    for (name, index) in &interfaces {
        let mode = balancer.attach(name, config.datapath.attach_mode)?;
        datapath.add_tx_port(*index)?;
        info!(interface = %name, ?mode, "balancer attached");
    }
    let mut reconciler = Reconciler::new(datapath, config.datapath_config(mtu))?;
    reconciler.apply(&config.passthrough_listeners())?;
    info!(
        listeners = config.listeners.len(),
        mtu = config.datapath.mtu.unwrap_or(mtu),
        "configuration applied"
    );
    let logs = ebpf_logs(&mut balancer);

    let listener = server::bind(&config.control.socket)?;
    let (calls, requests) = mpsc::channel::<Call>(64);
    let controller = spawn_controller(Controller::new(config, reconciler), requests)?;
    let control = tokio::spawn(server::serve(listener, calls));
    info!("ready");

    let stop = wait_for_signal().await;
    info!(signal = stop, "stopping");
    control.abort();
    if let Some(logs) = logs {
        logs.abort();
    }
    // The controller thread ends once every sender of the channel is gone.
    drop(control.await);
    if controller.join().is_err() {
        warn!("the controller thread panicked");
    }
    drop(balancer);
    info!("stopped: the balancer is detached");
    Ok(())
}

/// Runs the controller on its own thread: reconciling takes system calls that should not run
/// on the async runtime.
fn spawn_controller<D: Datapath + Send + 'static>(
    mut controller: Controller<D>,
    mut requests: mpsc::Receiver<Call>,
) -> Result<thread::JoinHandle<()>, DaemonError> {
    thread::Builder::new()
        .name("lb-controller".to_owned())
        .spawn(move || {
            while let Some((request, reply)) = requests.blocking_recv() {
                // The caller may have gone away; the change (if any) stands either way.
                drop(reply.send(controller.handle(request)));
            }
        })
        .map_err(|source| DaemonError::Io {
            what: "starting the controller thread".to_owned(),
            source,
        })
}

/// Waits for SIGTERM or SIGINT; returns its name.
async fn wait_for_signal() -> &'static str {
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        warn!("cannot listen for signals; stopping");
        return "none";
    };
    tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
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

/// Removes the balancer's pins under `dir` (and `dir` if that empties it).
fn remove_pins(dir: &Path) {
    for name in BALANCER_MAPS {
        let path = dir.join(name);
        if path.exists()
            && let Err(error) = std::fs::remove_file(&path)
        {
            warn!(path = %path.display(), %error, "could not remove a pinned map");
        }
    }
    if dir.exists() && std::fs::read_dir(dir).is_ok_and(|mut d| d.next().is_none()) {
        drop(std::fs::remove_dir(dir));
    }
}

fn cleanup(socket: &Path, pin_dir: &Path) {
    if let Err(error) = std::fs::remove_file(socket)
        && error.kind() != std::io::ErrorKind::NotFound
    {
        warn!(socket = %socket.display(), %error, "could not remove the control socket");
    }
    remove_pins(pin_dir);
}
