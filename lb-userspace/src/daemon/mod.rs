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

pub mod accept_local;
pub mod announce;
pub mod capture;
pub mod controller;
pub mod handover;
pub mod host;
pub mod privileges;
pub mod probes;
pub mod runtime;
pub mod scheduler;

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
use tracing::{debug, error, info, warn};

use self::{
    announce::{Announcer, Handoff},
    capture::CaptureCall,
    controller::Controller,
    probes::Probes,
    runtime::BackendKey,
};
use crate::{
    config::Config,
    control::{
        Body, Request, Response,
        server::{self, Call, ServerError},
    },
    datapath::memory::MemoryDatapath,
    datapath::{Datapath, DatapathError},
    health::state::Outcome,
    host::rtnl::Rtnl,
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
    #[error("{0}")]
    Config(String),
    #[error(transparent)]
    Handover(#[from] handover::HandoverError),
    #[error(transparent)]
    Privileges(#[from] privileges::PrivilegeError),
    #[error(transparent)]
    Announce(#[from] announce::AnnounceError),
    #[error(
        "the controller thread panicked (its message is just above): stopped with an error so that a supervisor restarts the daemon; the balancer forwards with the pinned maps meanwhile, and the new daemon adopts them"
    )]
    ControllerPanicked,
}

/// Set to `controller-panic-on-reload` in the daemon's environment, the controller thread
/// panics when it handles `lb reload`: the test of what a daemon does when its controller
/// fails. Nothing else reads it.
pub const INJECT_FAULT_ENV: &str = "LB_INJECT_FAULT";

/// Runs the daemon for `config` (read from `path`) until a signal stops it. The control socket
/// opens last, so a daemon that answers on it is ready.
///
/// With `take_over`, a daemon already running on the same control socket hands its listening
/// sockets over and drains once this one serves ([`handover`]); with none running, this one
/// starts as usual.
pub async fn run(config: Config, path: PathBuf, take_over: bool) -> Result<(), DaemonError> {
    info!(
        version = crate::version::VERSION,
        commit = crate::version::COMMIT,
        build = if cfg!(debug_assertions) {
            "debug"
        } else {
            "release"
        },
        pid = std::process::id(),
        "starting"
    );
    let socket = config.control.socket.clone();
    // A socket directory others may write, a read-only group that does not exist, or a
    // capability missing, is refused before anything changes.
    server::check_directory(&socket)?;
    let read_only_gid = config
        .control
        .read_only_group
        .as_deref()
        .map(crate::control::peer::resolve_group)
        .transpose()
        .map_err(ServerError::from)?;
    let privileges = privileges::Plan::for_config(&config).with_socket_group(read_only_gid);
    privileges::check_start(&privileges)?;
    let predecessor = if take_over {
        // Every file first: a bad certificate or key stops this daemon before the running one
        // is disturbed.
        crate::l7::check_files(&config)?;
        let asked = socket.clone();
        let answer = tokio::task::spawn_blocking(move || handover::request(&asked))
            .await
            .map_err(|error| DaemonError::Config(format!("asking for the handover: {error}")))??;
        match &answer {
            Some((predecessor, sockets)) => info!(
                pid = predecessor.pid,
                sockets = sockets.len(),
                "taking over from the running daemon: it handed over its listening sockets"
            ),
            None => info!(socket = %socket.display(), "no daemon to take over: starting afresh"),
        }
        answer
    } else {
        server::ensure_free(&socket)?;
        None
    };
    serve(config, path, predecessor, read_only_gid, &privileges).await
}

async fn serve(
    config: Config,
    path: PathBuf,
    predecessor: Option<(handover::Predecessor, crate::l7::Inherited)>,
    read_only_gid: Option<u32>,
    privileges: &privileges::Plan,
) -> Result<(), DaemonError> {
    let (mut predecessor, mut inherited) = match predecessor {
        Some((predecessor, sockets)) => (Some(predecessor), sockets),
        None => (None, crate::l7::Inherited::new()),
    };
    let mut signals = Signals::new().map_err(|source| DaemonError::Io {
        what: "listening for signals".to_owned(),
        source,
    })?;
    // The L7 listeners' files and addresses first: a bad certificate stops the start before
    // anything is changed.
    let l7 = Arc::new(L7::new(tokio::runtime::Handle::current()));
    let l7_prepared = l7.prepare_inheriting(&config, &mut inherited)?;
    let (events, receiver) = mpsc::channel::<Event>(256);
    let probes = Probes::new(tokio::runtime::Handle::current(), events.clone());
    let socket = config.control.socket.clone();
    let metrics_address = config.metrics;
    let status_page = config.status_page;
    let shutdown_timeout = config.control.shutdown_timeout;
    let pin_dir = config.datapath.pin_dir.clone();
    // Everything that takes a capability first (the packet path, the listening sockets), then
    // the capabilities no longer needed are dropped, before any listener accepts.
    let packet_path = if config.has_packet_path() {
        Some(start_packet_path(&config)?)
    } else {
        info!(
            "no interface and no passthrough listener: the packet path is not loaded (no XDP \
             program, no pinned map); adding one takes a restart"
        );
        None
    };
    let metrics_listener = match metrics_address {
        Some(address) => Some((
            address,
            match inherited.remove(&address) {
                Some(socket) => crate::l7::server::adopt(socket, address),
                None => tokio::net::TcpListener::bind(address).await,
            }
            .map_err(|source| DaemonError::Io {
                what: format!("listening for metrics on {address}"),
                source,
            })?,
        )),
        None => None,
    };
    // The announcement device (a successor's is handed over), before CAP_NET_ADMIN may go.
    // What a successor is handed (the drain, a descriptor of the device), kept current by
    // the announcer; dropped on any other stop so that the routes go with the controller's.
    let (announcer, mut announce_device) = match &config.announce {
        Some(settings) => {
            let inherited = predecessor.as_mut().and_then(|p| p.device.take());
            let handoff = Arc::new(Handoff::default());
            let announcer = Announcer::start(settings, inherited, Arc::clone(&handoff))?;
            let handle = AnnounceHandle {
                handoff,
                name: announcer.device_name().to_owned(),
                table: settings.table,
                protocol: settings.protocol,
            };
            (Some(announcer), Some(handle))
        }
        None => (None, None),
    };
    // The control socket is made now (it may be given to the read-only group), and put in
    // place last, once the daemon is ready.
    let control_socket = server::prepare(&socket, predecessor.is_some(), read_only_gid)?;
    privileges::drop_after_start(privileges)?;
    let now = Instant::now();
    let mut capture_ring = None;
    let (controller, mut panicked, mut balancer, logs) = if let Some(PacketPath {
        mut balancer,
        reconciler,
        watch,
        host_defaults,
        capture_maps,
        ring,
    }) = packet_path
    {
        capture_ring = Some(Arc::new(std::sync::Mutex::new(Some(ring))));
        let controller = Controller::new(config, Some(path), reconciler, now)?
            .with_host(watch, host_defaults, now)
            .map_err(DaemonError::Config)?
            .with_capture(Some(capture_maps))
            .with_l7(Arc::clone(&l7), l7_prepared, now)
            .with_probes(probes)
            .with_announcer(announcer, now);
        info!("configuration applied");
        let logs = ebpf_logs(&mut balancer);
        let (controller, panicked) = spawn_controller(controller, receiver)?;
        (controller, panicked, Some(balancer), logs)
    } else {
        let datapath = MemoryDatapath::new(config.ring_geometry());
        let datapath_config = config.datapath_config(&crate::config::HostDefaults::default());
        let reconciler = Reconciler::new(datapath, datapath_config)?;
        let controller = Controller::new(config, Some(path), reconciler, now)?
            .with_l7(Arc::clone(&l7), l7_prepared, now)
            .with_probes(probes)
            .with_announcer(announcer, now);
        info!("configuration applied");
        let (controller, panicked) = spawn_controller(controller, receiver)?;
        (controller, panicked, None, None)
    };

    let mut tasks = vec![tokio::spawn(tick(events.clone()))];
    // Sockets handed over besides the L7 listeners' (the metrics endpoint's), to hand on.
    let mut also_listening = Vec::new();
    if let Some((address, listener)) = metrics_listener {
        if let Ok(copy) = std::os::fd::AsFd::as_fd(&listener).try_clone_to_owned() {
            also_listening.push((address, copy));
        }
        let status = status_page.then(|| status_source(events.clone()));
        tasks.push(tokio::spawn(metrics::serve(
            listener,
            snapshot(events.clone()),
            status,
        )));
        if status_page {
            info!(%address, "metrics at /metrics, the status page at /status");
        } else {
            info!(%address, "metrics at /metrics");
        }
    }
    for address in inherited.keys() {
        info!(%address, "closing a handed-over socket the configuration no longer listens on");
    }
    drop(inherited);
    let (listener, socket_file) = control_socket.place()?;
    let (handovers, mut handover_requests) = mpsc::channel(1);
    let (captures, mut capture_requests) = mpsc::channel(1);
    tasks.push(tokio::spawn(server::serve(
        listener,
        events.clone(),
        server::Streams {
            handovers,
            captures,
        },
        read_only_gid,
    )));
    tasks.extend(logs);
    if let Some(predecessor) = predecessor {
        let pid = predecessor.pid;
        tokio::task::spawn_blocking(move || predecessor.finish())
            .await
            .map_err(|error| DaemonError::Config(format!("ending the handover: {error}")))??;
        info!(
            pid,
            "took over: the previous daemon stops accepting and drains"
        );
    }
    info!("ready");

    let stop = {
        let mut stop_signal = std::pin::pin!(signals.next(Some(&events), &l7));
        loop {
            tokio::select! {
                signal = &mut stop_signal => break Stop::Signal(signal),
                Ok(()) = &mut panicked => break Stop::Panicked,
                Some((spec, stream)) = capture_requests.recv() => {
                    let ring = capture_ring.clone();
                    tasks.retain(|task| !task.is_finished());
                    tasks.push(tokio::spawn(capture::serve(spec, stream, events.clone(), ring)));
                }
                Some(stream) = handover_requests.recv() => {
                    let sockets = listening_sockets(&l7, &also_listening).await;
                    let device = announce_device.as_ref();
                    match hand_over(stream, &events, balancer.as_mut(), sockets, device, &pin_dir)
                        .await?
                    {
                        Some(paused) => break Stop::HandedOver(paused),
                        None => continue,
                    }
                }
            }
        }
    };
    // Everything but the L7 connections stops now: the listeners (the successor's, after a
    // handover, stay open), the controller (health checks, reloads), the control socket, the
    // metrics and the pin-directory lock. A new daemon can start at once, beside this one
    // finishing its requests.
    on_blocking_thread(&l7, L7::stop_accepting).await;
    drop(handover_requests);
    drop(capture_requests);
    // Not announced while stopping: new connections would be refused. (After a handover the
    // successor holds the device: the announcements stay.)
    drop(announce_device.take());
    let reason = match stop {
        Stop::Signal(signal) => {
            drop(events.send(Event::Stop).await);
            signal
        }
        Stop::HandedOver(paused) => {
            let _ = paused.send(false);
            "handover"
        }
        Stop::Panicked => "the controller panicked",
    };
    // The controller may be busy with a reload: its thread is joined off the runtime.
    let joined = tokio::task::spawn_blocking(move || controller.join().is_ok())
        .await
        .unwrap_or(false);
    for task in &tasks {
        task.abort();
    }
    drop(also_listening);
    drop(socket_file);
    let packet_path = if balancer.is_some() {
        "the balancer keeps forwarding with the pinned maps"
    } else {
        "none loaded"
    };
    drop(balancer);
    if !joined {
        // Health checks, drains and reloads have stopped: running on would serve with a
        // frozen view. Stop, and let the supervisor start a daemon that adopts the maps.
        error!(
            packet_path,
            "the controller thread panicked: stopping with an error"
        );
        return Err(DaemonError::ControllerPanicked);
    }
    info!(
        reason, timeout = ?shutdown_timeout, packet_path,
        "stopping: no new connection, the control socket, the metrics and the pin directory are \
         free for a new daemon; the L7 connections finish what is in flight (a second SIGTERM \
         or SIGINT closes them)"
    );
    tokio::select! {
        open = l7.drained(shutdown_timeout) => {
            if open == 0 {
                info!("every L7 connection has ended");
            } else {
                warn!(open, timeout = ?shutdown_timeout, "shutdown_timeout passed: closing the L7 connections still open");
            }
        }
        again = signals.next(None, &l7) => {
            warn!(signal = again, open = l7.open_connections(), "a second stop signal: closing the L7 connections still open");
        }
    }
    on_blocking_thread(&l7, |l7| l7.flush_access_log(ACCESS_LOG_FLUSH)).await;
    info!("stopped");
    Ok(())
}

/// How long a stopping daemon waits for its access log's last lines to be written.
const ACCESS_LOG_FLUSH: Duration = Duration::from_secs(2);

/// Why the daemon stops.
enum Stop {
    /// SIGTERM or SIGINT.
    Signal(&'static str),
    /// A successor took over; the paused controller's switch.
    HandedOver(oneshot::Sender<bool>),
    /// The controller thread panicked.
    Panicked,
}

/// Runs `work` on a blocking thread, for what takes the L7 listeners' lock (which a reload
/// holds while it reads certificates and binds addresses) or writes files: on the daemon's
/// future it would hold the runtime's thread meanwhile, and with one worker (the current-thread
/// scheduler) every connection with it. A panic in `work` goes on here, as if it ran inline;
/// if the blocking thread is cancelled (only a runtime shutting down does that), `work` runs
/// here.
async fn on_blocking_thread<T: Send + 'static>(l7: &Arc<L7>, work: fn(&L7) -> T) -> T {
    let shared = Arc::clone(l7);
    match tokio::task::spawn_blocking(move || work(&shared)).await {
        Ok(value) => value,
        Err(error) => match error.try_into_panic() {
            Ok(panic) => std::panic::resume_unwind(panic),
            Err(_cancelled) => work(l7),
        },
    }
}

/// Every listening socket: the L7 listeners' and `others`.
async fn listening_sockets(
    l7: &Arc<L7>,
    others: &[(std::net::SocketAddr, std::os::fd::OwnedFd)],
) -> Vec<(std::net::SocketAddr, std::os::fd::OwnedFd)> {
    let mut sockets = on_blocking_thread(l7, L7::listening).await;
    for (address, socket) in others {
        if let Ok(copy) = socket.try_clone() {
            sockets.push((*address, copy));
        }
    }
    sockets
}

/// The old daemon's side of a handover ([`handover`]): pauses the controller, unlocks the pin
/// directory and offers `sockets` on `stream`. `Some` (the paused controller's resume switch)
/// if the successor serves and this daemon must drain; `None` if the handover did not happen
/// (this daemon carries on, locked and resumed).
async fn hand_over(
    stream: tokio::net::UnixStream,
    events: &mpsc::Sender<Event>,
    mut balancer: Option<&mut Balancer>,
    sockets: Vec<(std::net::SocketAddr, std::os::fd::OwnedFd)>,
    device: Option<&AnnounceHandle>,
    pin_dir: &Path,
) -> Result<Option<oneshot::Sender<bool>>, DaemonError> {
    let stream = match stream
        .into_std()
        .and_then(|s| s.set_nonblocking(false).map(|()| s))
    {
        Ok(stream) => stream,
        Err(error) => {
            warn!(%error, "a handover request's connection failed");
            return Ok(None);
        }
    };
    let (paused, is_paused) = oneshot::channel();
    let (resume, resumed) = oneshot::channel();
    if events.send(Event::Pause(paused, resumed)).await.is_err() || is_paused.await.is_err() {
        drop(handover::refuse(
            &stream,
            "the daemon is stopping".to_owned(),
        ));
        return Ok(None);
    }
    if let Some(balancer) = balancer.as_mut() {
        balancer.unlock();
    }
    // Read once the controller is paused: no drain or undrain changes it now.
    let device = device.and_then(AnnounceHandle::offer);
    info!(
        sockets = sockets.len(),
        "handing over to a new daemon: controller paused, pin directory unlocked"
    );
    let pid = std::process::id();
    let offered =
        tokio::task::spawn_blocking(move || handover::offer(&stream, pid, sockets, device))
            .await
            .unwrap_or_else(|error| Err(std::io::Error::other(error.to_string())));
    match offered {
        Ok(()) => Ok(Some(resume)),
        Err(error) => {
            warn!(%error, "the new daemon did not take over: this daemon carries on");
            if let Some(balancer) = balancer {
                balancer.relock(pin_dir)?;
            }
            let _ = resume.send(true);
            Ok(None)
        }
    }
}

/// The announcement device, as the daemon offers it to a successor.
struct AnnounceHandle {
    /// Shared with the announcer.
    handoff: Arc<Handoff>,
    name: String,
    table: u32,
    protocol: u8,
}

impl AnnounceHandle {
    /// The offer and a descriptor of its own; `None` (logged: the successor then makes a device
    /// of its own once this one is gone) if the descriptor cannot be copied.
    fn offer(&self) -> Option<(handover::DeviceOffer, std::os::fd::OwnedFd)> {
        let fd = match self.handoff.device() {
            Ok(Some(fd)) => fd,
            Ok(None) => {
                warn!(
                    "no descriptor of the announcement device to hand over: the successor makes a device of its own"
                );
                return None;
            }
            Err(error) => {
                warn!(%error, "copying the announcement device's descriptor failed: it is not handed over");
                return None;
            }
        };
        let offer = handover::DeviceOffer {
            name: self.name.clone(),
            table: self.table,
            protocol: self.protocol,
            drained: self.handoff.drained(),
        };
        Some((offer, fd))
    }
}

/// What [`start_packet_path`] put in place: the balancer loaded (its pin directory locked) and
/// attached, its maps adopted or created behind the reconciler, and the host's side watched.
struct PacketPath {
    balancer: Balancer,
    reconciler: Reconciler<crate::datapath::maps::AyaDatapath>,
    watch: host::HostWatch,
    host_defaults: crate::config::HostDefaults,
    /// The packet capture's maps: the controller's, and the ring a capture session reads.
    capture_maps: crate::capture::control::CaptureMaps,
    ring: aya::maps::RingBuf<aya::maps::MapData>,
}

/// Loads (or adopts) the balancer and attaches it to the configured interfaces.
fn start_packet_path(config: &Config) -> Result<PacketPath, DaemonError> {
    let interfaces: Vec<(String, u32)> = config
        .datapath
        .interfaces
        .iter()
        .map(|name| Ok((name.clone(), interface_index(name)?)))
        .collect::<Result<_, LoadError>>()?;
    let mut rtnl = Rtnl::connect().map_err(|source| DaemonError::Io {
        what: "opening an rtnetlink socket".to_owned(),
        source,
    })?;
    let host_defaults = host::host_defaults(config, &interfaces, &mut rtnl)?;
    let spec = BalancerSpec {
        geometry: config.ring_geometry(),
        conn_table_size: config.datapath.conn_table_size,
        pin_dir: Some(config.datapath.pin_dir.clone()),
    };
    let (mut balancer, datapath) = Balancer::load(&spec)?;
    let (capture_maps, ring) = balancer.take_capture()?;
    // The settings before the program: after an upgrade whose configuration map is new, a
    // program attached first would run for a moment on zeros (no ring size, no outer source).
    // (The VIPs and tables are adopted with the maps, and brought up to date just below.)
    let listeners = config.passthrough_listeners();
    let datapath_config = config.datapath_config(&host_defaults);
    let mut reconciler = Reconciler::adopt(datapath, datapath_config, &listeners)?;
    let mut attached = Vec::new();
    for (name, index) in &interfaces {
        let link = links_dir(&config.datapath.pin_dir).join(name);
        let how = balancer.attach_pinned(name, config.datapath.attach_mode, &link)?;
        let mode = rtnl
            .xdp_attached(*index)
            .map_err(|source| DaemonError::Io {
                what: format!("reading how {name} runs XDP"),
                source,
            })?;
        match how {
            Attached::New(_) => info!(interface = %name, mode = mode.as_str(), "balancer attached"),
            Attached::Replaced => info!(
                interface = %name, mode = mode.as_str(),
                "took over the pinned attachment: no packet went unbalanced"
            ),
        }
        see_vlan_tags(name);
        reconciler.datapath_mut().add_tx_port(*index)?;
        attached.push(host::Interface {
            name: name.clone(),
            ifindex: *index,
            mode,
        });
    }
    // Only this daemon's program runs now: nothing its predecessor cached may be taken for
    // current later.
    reconciler.datapath_mut().clear_vip_cache()?;
    accept_local::accept_encap_sources(config, &host_defaults, &interfaces);
    let possible_cpus = crate::loader::possible_cpus()?;
    let conn_table_entries = reconciler.datapath().conn_table_entries();
    info!(
        flows = conn_table_entries,
        buckets = conn_table_entries / lb_common::conn::WAYS,
        "connection table (per address family)"
    );
    let facts = host::Facts {
        interfaces: attached,
        possible_cpus,
        conn_table_entries,
        encap_sources: host::encap_sources(config, &host_defaults),
    };
    for name in crate::loader::remove_stale_pins(&config.datapath.pin_dir)? {
        info!(map = %name, "removed a pinned map of an earlier layout");
    }
    let watch = host::HostWatch::new(rtnl, facts, config.datapath.next_hop_mac.is_some());
    info!(mtu = datapath_config.mtu, "the packet path is in place");
    Ok(PacketPath {
        balancer,
        reconciler,
        watch,
        host_defaults,
        capture_maps,
        ring,
    })
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
    /// A handover: the controller says it is paused (nothing it does runs any more), then
    /// waits for `true` (resume: the handover did not happen) or `false` (stop).
    Pause(oneshot::Sender<()>, oneshot::Receiver<bool>),
    /// A packet capture session's request.
    Capture(CaptureCall),
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

/// What the status page reads (`/status.json`): the answers to `lb status`, `lb listener list`,
/// `lb backend list` and `lb stats`, asked of the controller as the control socket asks, as
/// one JSON object.
fn status_source(events: mpsc::Sender<Event>) -> metrics::StatusSource {
    Arc::new(move || -> metrics::StatusFuture {
        let events = events.clone();
        Box::pin(async move {
            let mut document = serde_json::Map::new();
            for (name, request) in [
                ("status", Request::Status),
                ("listeners", Request::ListListeners),
                ("backends", Request::ListBackends { pool: None }),
                ("stats", Request::Stats),
            ] {
                let (reply, answer) = oneshot::channel();
                events.send(Event::Call((request, reply))).await.ok()?;
                let body = match answer.await.ok()? {
                    Response::Ok(body) => body,
                    Response::Error(error) => {
                        warn!(%error, request = name, "the status page's request was refused");
                        return None;
                    }
                };
                let value = match body {
                    Body::Status(view) => serde_json::to_value(view),
                    Body::Listeners(view) => serde_json::to_value(view),
                    Body::Backends(view) => serde_json::to_value(view),
                    Body::Stats(view) => serde_json::to_value(view),
                    other => serde_json::to_value(other),
                }
                .ok()?;
                document.insert(name.to_owned(), value);
            }
            serde_json::to_string(&document).ok()
        })
    })
}

/// `lb uninstall`: removes what a stopped daemon left running: the pinned links (which
/// detaches the balancer) and the pinned maps. Refuses while a daemon answers on the socket
/// or holds the pin directory, and for a directory that is not lb's ([`crate::pin_dir::remove`]).
pub fn uninstall(config: &Config) -> Result<String, DaemonError> {
    let socket = &config.control.socket;
    if std::os::unix::net::UnixStream::connect(socket).is_ok() {
        return Err(ServerError::AlreadyRunning(socket.clone()).into());
    }
    let dir = &config.datapath.pin_dir;
    if std::fs::symlink_metadata(dir).is_err() {
        return Ok(format!(
            "nothing to remove: {} does not exist\n",
            dir.display()
        ));
    }
    crate::pin_dir::remove(dir)?;
    let detached = if config.datapath.interfaces.is_empty() {
        "no interface is configured".to_owned()
    } else {
        format!(
            "the balancer is detached from {}",
            config.datapath.interfaces.join(", ")
        )
    };
    Ok(format!(
        "removed {}: {detached}, and its maps are gone\n",
        dir.display()
    ))
}

/// Where the XDP links are pinned, one per interface.
pub fn links_dir(pin_dir: &Path) -> PathBuf {
    pin_dir.join("links")
}

/// Tells the daemon when the controller thread unwinds from a panic.
struct PanicSignal(Option<oneshot::Sender<()>>);

impl Drop for PanicSignal {
    fn drop(&mut self) {
        if thread::panicking()
            && let Some(signal) = self.0.take()
        {
            let _ = signal.send(());
        }
    }
}

/// Runs the controller on its own thread: reconciling takes system calls that should not run
/// on the async runtime. The receiver resolves if the thread panics.
fn spawn_controller<D: Datapath + Send + 'static>(
    mut controller: Controller<D>,
    mut events: mpsc::Receiver<Event>,
) -> Result<(thread::JoinHandle<()>, oneshot::Receiver<()>), DaemonError> {
    let (signal, panicked) = oneshot::channel();
    let panic_on_reload =
        std::env::var(INJECT_FAULT_ENV).is_ok_and(|fault| fault == "controller-panic-on-reload");
    if panic_on_reload {
        warn!("{INJECT_FAULT_ENV}: the controller thread will panic on `lb reload` (a test)");
    }
    let thread = thread::Builder::new()
        .name("lb-controller".to_owned())
        .spawn(move || {
            let _signal = PanicSignal(Some(signal));
            while let Some(event) = events.blocking_recv() {
                let now = Instant::now();
                // A caller may have gone away; what it asked for stands either way.
                match event {
                    Event::Call((Request::Reload, _)) if panic_on_reload => {
                        panic!("{INJECT_FAULT_ENV}: the injected fault");
                    }
                    Event::Call((request, reply)) => {
                        drop(reply.send(controller.handle(request, now)))
                    }
                    Event::Health(key, outcome) => controller.on_health(&key, &outcome, now),
                    Event::Tick => controller.on_tick(now),
                    Event::Metrics(reply) => drop(reply.send(controller.metrics_input(now))),
                    Event::Capture(call) => match call {
                        CaptureCall::Start(spec, reply) => {
                            drop(reply.send(controller.start_capture(&spec)));
                        }
                        CaptureCall::Labels(reply) => drop(reply.send(controller.capture_labels())),
                        CaptureCall::Stop(reply) => {
                            let summary = controller.stop_capture();
                            if let Some(reply) = reply {
                                drop(reply.send(summary));
                            }
                        }
                    },
                    Event::Stop => {
                        // The XDP program outlives the daemon: it must not go on capturing.
                        controller.stop_capture();
                        break;
                    }
                    Event::Pause(paused, resume) => {
                        let capturing = controller.pause_capture();
                        let _ = paused.send(());
                        if resume.blocking_recv() != Ok(true) {
                            break;
                        }
                        controller.resume_capture(capturing);
                        info!("the handover did not happen: the controller resumes");
                    }
                }
            }
        })
        .map_err(|source| DaemonError::Io {
            what: "starting the controller thread".to_owned(),
            source,
        })?;
    Ok((thread, panicked))
}

/// The signals the daemon answers, listened for from its start to its end (none is missed
/// between the first stop signal and the second): SIGTERM and SIGINT stop it, SIGHUP reloads,
/// SIGUSR1 reopens the access log.
struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
    hup: tokio::signal::unix::Signal,
    usr1: tokio::signal::unix::Signal,
}

impl Signals {
    fn new() -> std::io::Result<Self> {
        Ok(Self {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
            hup: signal(SignalKind::hangup())?,
            usr1: signal(SignalKind::user_defined1())?,
        })
    }

    /// Waits for SIGTERM or SIGINT (returns its name); on SIGHUP, has the controller reload
    /// the configuration (with no controller left, says so).
    async fn next(&mut self, calls: Option<&mpsc::Sender<Event>>, l7: &L7) -> &'static str {
        loop {
            tokio::select! {
                _ = self.term.recv() => return "SIGTERM",
                _ = self.int.recv() => return "SIGINT",
                _ = self.usr1.recv() => {
                    if !l7.reopen_access_log() {
                        info!("SIGUSR1: there is no access log to reopen");
                    }
                }
                _ = self.hup.recv() => match calls {
                    Some(calls) => reload(calls).await,
                    None => info!("SIGHUP while stopping: nothing to reload"),
                },
            }
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
        Err(aya_log::Error::MapNotFound) => {
            // Programs that log nothing (these, today) come without the log map.
            debug!("the balancer's programs have no log records");
            return None;
        }
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

/// Turns receive VLAN offload off on `interface`, so that the XDP program sees VLAN tags (a NIC
/// that strips them hands it untagged frames, and tagged flows would leave untagged). Says so.
fn see_vlan_tags(interface: &str) {
    match crate::host::ethtool::turn_off(interface, &crate::host::ethtool::RX_VLAN_OFFLOADS) {
        Ok(changed) if !changed.is_empty() => info!(
            %interface, features = %changed.join(", "),
            "turned receive VLAN offload off: the XDP program must see VLAN tags to keep them"
        ),
        Ok(_) => {}
        Err(error) => warn!(
            %interface, %error,
            "could not turn receive VLAN offload off: if the NIC strips VLAN tags, tagged VIP traffic leaves untagged (`ethtool -K {interface} rxvlan off`)"
        ),
    }
}
