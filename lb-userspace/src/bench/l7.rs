//! `lb bench l7`: lb's L7 listeners against HAProxy doing the same work on the same machine,
//! in the same run, with direct HTTP to the backend as the floor.
//!
//! The systems ([`systems`]), each a child process pinned to the servers' CPU (1) beside the
//! backend it proxies to (the lab's HTTP backend, [`backend`]):
//!
//! - `lb run` (one tokio worker) with an offload listener, the same with cookie stickiness
//!   (the clients send a valid cookie, obtained once), and a bridging listener;
//! - a second `lb run` alike but with an access log (`[access_log]`, JSON lines to a file in
//!   the benchmark's directory, emptied after each of its runs): its offload listener is the
//!   cost of logging every request;
//! - HAProxy (`nbthread 1`, `mode http`) with the same certificate, ALPN, forwarding headers and
//!   keep-alive, offload and bridging (the backend verified against the same CA and name).
//!
//! The measurements, the load generated on CPU 0 (this process is pinned there):
//!
//! 1. keep-alive HTTPS: `wrk -t1 -cN -dD --latency` ([`wrk`]), requests per second and the
//!    50th and 99th latency percentiles; direct plain HTTP to the backend is the floor;
//! 2. full TLS 1.3 handshakes per second, N concurrent, no resumption ([`handshake`]), against
//!    lb's and HAProxy's offload listeners;
//! 3. memory per idle TLS connection ([`idle`]): the server's resident memory growth over
//!    10 000 connections left open after one request each, HTTP/1.1 and HTTP/2, lb's and
//!    HAProxy's offload listeners, a fresh process of each per protocol;
//! 4. HTTP/2 clients: `h2load` ([`h2load`]) with 32 connections of 10 streams, 32 of 1, 200 of
//!    10 and 1 000 of 1, against lb's and HAProxy's offload listeners: requests per second,
//!    latency percentiles, and the slowest and fastest connection's rate.
//!
//! With `--base PATH` (another build of lb: `cargo xtask bench compare --l7 --base REV` builds
//! one), a second daemon of that binary runs beside, alike, and its offload and bridging
//! listeners are measured in every round too: the ratios of this build over it, paired by
//! round, show what a change costs.
//!
//! Each also reports the CPU time the server process used per request or handshake (user plus
//! system, from `/proc/PID/stat`, over the measured interval), which does not depend on which
//! side was the bottleneck. Every round measures every system, the order reversed every other
//! round; the report ([`report`]) gives medians with the minimum and maximum over the rounds,
//! and ratios paired by round. Nothing here asserts a timing.

pub mod backend;
mod h2load;
mod handshake;
mod idle;
pub(super) mod process;
mod report;
pub(super) mod systems;
pub(super) mod wrk;

use std::{net::SocketAddr, path::Path, time::Duration};

pub use self::report::Report;
use self::{
    h2load::{SHAPES, Shape},
    handshake::HandshakeRun,
    process::{check_interrupt, children_cpu_seconds, cpu_seconds},
    report::{Conditions, H2Sample, HandshakeSample, KeepaliveSample},
    systems::{SERVER_NAME, Systems},
    wrk::Load,
};
use super::BenchError;
use crate::lab::l7::{HttpsConn, get};

/// Where the load generators run.
const GENERATOR_CPU: usize = 0;
/// Where the systems under test and their backends run.
const SERVER_CPU: usize = 1;
/// The nice value of every process of the benchmark: on a machine shared with other work (a
/// build), the measured processes get most of their CPUs, all of them alike.
const NICE: i32 = -10;

/// How much to measure.
#[derive(Clone, Copy, Debug, serde::Serialize)]
pub struct Options {
    /// Rounds; each measures every system once.
    pub rounds: usize,
    /// Load per system and round.
    pub duration: Duration,
    /// Load per system before the first round, not reported (zero: none).
    pub warmup: Duration,
    /// Connections wrk keeps alive, and concurrent handshakes.
    pub connections: usize,
    /// Idle connections per server and protocol for the memory measurement (zero: none).
    pub idle: usize,
    /// Measure the HTTP/2 clients (h2load).
    pub http2: bool,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            rounds: 5,
            duration: Duration::from_secs(5),
            warmup: Duration::from_secs(1),
            connections: 32,
            idle: 10_000,
            http2: true,
        }
    }
}

/// The systems measured with keep-alive requests, in the order of a forward round.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub enum Keepalive {
    LbOffload,
    LbSticky,
    LbLogged,
    LbBridging,
    BaseOffload,
    BaseBridging,
    HaproxyOffload,
    HaproxyBridging,
    Direct,
}

impl Keepalive {
    pub const ALL: [Self; 9] = [
        Self::LbOffload,
        Self::LbSticky,
        Self::LbLogged,
        Self::LbBridging,
        Self::BaseOffload,
        Self::BaseBridging,
        Self::HaproxyOffload,
        Self::HaproxyBridging,
        Self::Direct,
    ];

    /// The systems a run measures: all but the base build's when there is none.
    pub fn measured(base: bool) -> Vec<Self> {
        Self::ALL
            .into_iter()
            .filter(|s| base || !matches!(s, Self::BaseOffload | Self::BaseBridging))
            .collect()
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::LbOffload => "lb offload",
            Self::LbSticky => "lb offload + sticky cookie",
            Self::LbLogged => "lb offload + access log",
            Self::LbBridging => "lb bridging",
            Self::BaseOffload => "lb offload, base build",
            Self::BaseBridging => "lb bridging, base build",
            Self::HaproxyOffload => "HAProxy offload",
            Self::HaproxyBridging => "HAProxy bridging",
            Self::Direct => "direct HTTP to the backend",
        }
    }
}

/// The offload listener of lb or of HAProxy: the systems measured with full handshakes and
/// with HTTP/2 clients.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub enum Offload {
    Lb,
    Haproxy,
}

impl Offload {
    pub const ALL: [Self; 2] = [Self::Lb, Self::Haproxy];

    pub fn name(self) -> &'static str {
        match self {
            Self::Lb => "lb offload",
            Self::Haproxy => "HAProxy offload",
        }
    }

    /// The listener's port, and the process whose CPU time it costs.
    fn target(self, systems: &Systems) -> (u16, u32) {
        match self {
            Self::Lb => (systems.ports.lb.offload, systems.lb.child.pid()),
            Self::Haproxy => (systems.ports.haproxy_offload, systems.haproxy.pid()),
        }
    }
}

/// Where one keep-alive load goes and whose CPU time it costs.
struct Target {
    url: String,
    header: Option<String>,
    /// The proxy's process, none for direct requests.
    proxy: Option<u32>,
    backend: u32,
}

/// Runs the benchmark (root: the daemon may load its XDP programs) and returns its figures;
/// `base`: another build of lb to measure beside this one.
pub fn run(options: Options, base: Option<&Path>) -> Result<Report, BenchError> {
    process::install_interrupt()?;
    let cpus = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
    if cpus <= SERVER_CPU {
        return Err(BenchError::Unexpected(format!(
            "the L7 benchmark needs two CPUs (generators on CPU {GENERATOR_CPU}, servers on CPU \
             {SERVER_CPU}); this machine has {cpus}"
        )));
    }
    // Before anything is measured: a limit too low ends the run now, not after the rounds.
    let idle_connections = if options.idle == 0 {
        0
    } else {
        let connections = process::raise_open_files(options.idle)?;
        if connections < options.idle {
            eprintln!(
                "lb bench l7: {connections} idle connections instead of {}: the limit on open \
                 files allows no more for HAProxy",
                options.idle
            );
        }
        connections
    };
    process::pin_self(GENERATOR_CPU)?;
    process::set_nice(NICE);
    let lb = std::env::current_exe().map_err(|source| BenchError::Io {
        what: "finding the lb binary".to_owned(),
        source,
    })?;
    let systems = Systems::start(&lb, base, SERVER_CPU)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|source| BenchError::Io {
            what: "starting the generator's runtime".to_owned(),
            source,
        })?;
    let cookie = runtime.block_on(sticky_cookie(&systems))?;
    let measured = Keepalive::measured(base.is_some());
    let targets: Vec<Target> = measured
        .iter()
        .map(|&system| target(&systems, system, &cookie))
        .collect();

    if !options.warmup.is_zero() {
        for target in &targets {
            keepalive(target, options.connections, options.warmup)?;
        }
        for system in Offload::ALL {
            handshakes(
                &runtime,
                &systems,
                system,
                options.connections,
                options.warmup,
            )?;
        }
    }
    let mut keepalive_samples = vec![Vec::new(); measured.len()];
    let mut handshake_samples = vec![Vec::new(); Offload::ALL.len()];
    let shapes: &[Shape] = if options.http2 { &SHAPES } else { &[] };
    // By shape, then system.
    let mut h2_samples = vec![vec![Vec::new(); Offload::ALL.len()]; shapes.len()];
    for round in 0..options.rounds {
        for i in alternating(measured.len(), round) {
            let sample = keepalive(&targets[i], options.connections, options.duration)?;
            keepalive_samples[i].push(sample);
            if measured[i] == Keepalive::LbLogged {
                systems.empty_access_log()?;
            }
        }
        for i in alternating(Offload::ALL.len(), round) {
            let system = Offload::ALL[i];
            let sample = handshakes(
                &runtime,
                &systems,
                system,
                options.connections,
                options.duration,
            )?;
            handshake_samples[i].push(sample);
        }
        for (s, &shape) in shapes.iter().enumerate() {
            for i in alternating(Offload::ALL.len(), round) {
                let sample = http2(&systems, Offload::ALL[i], shape, options)?;
                h2_samples[s][i].push(sample);
            }
        }
        eprintln!(
            "lb bench l7: round {} of {} done",
            round + 1,
            options.rounds
        );
    }
    let idle = if idle_connections == 0 {
        Vec::new()
    } else {
        idle::measure(&runtime, &systems, &lb, SERVER_CPU, idle_connections)?
    };
    let conditions = Conditions::read(options, GENERATOR_CPU, SERVER_CPU);
    drop(systems);
    Ok(Report::new(
        conditions,
        &measured,
        &keepalive_samples,
        &handshake_samples,
        shapes,
        &h2_samples,
        idle,
    ))
}

/// `0..n`, reversed in odd rounds.
fn alternating(n: usize, round: usize) -> Vec<usize> {
    let mut order: Vec<usize> = (0..n).collect();
    if round % 2 == 1 {
        order.reverse();
    }
    order
}

fn target(systems: &Systems, system: Keepalive, cookie: &str) -> Target {
    let https = |port: u16| format!("https://127.0.0.1:{port}/");
    let ports = &systems.ports;
    let lb = Some(systems.lb.child.pid());
    let base = systems.base.as_ref().map(|d| d.child.pid());
    let haproxy = Some(systems.haproxy.pid());
    let (plain, tls) = (systems.backend.child.pid(), systems.tls_backend.child.pid());
    let (url, proxy, backend) = match system {
        Keepalive::LbOffload => (https(ports.lb.offload), lb, plain),
        Keepalive::LbSticky => (https(ports.lb.sticky), lb, plain),
        Keepalive::LbLogged => (
            https(ports.logged.offload),
            Some(systems.logged.child.pid()),
            plain,
        ),
        Keepalive::LbBridging => (https(ports.lb.bridging), lb, tls),
        Keepalive::BaseOffload => (https(ports.base.offload), base, plain),
        Keepalive::BaseBridging => (https(ports.base.bridging), base, tls),
        Keepalive::HaproxyOffload => (https(ports.haproxy_offload), haproxy, plain),
        Keepalive::HaproxyBridging => (https(ports.haproxy_bridging), haproxy, tls),
        Keepalive::Direct => (format!("http://{}/", systems.backend.address), None, plain),
    };
    Target {
        url,
        header: (system == Keepalive::LbSticky).then(|| format!("Cookie: {cookie}")),
        proxy,
        backend,
    }
}

/// One keep-alive run of wrk against `target`, with the CPU time its processes used.
fn keepalive(
    target: &Target,
    connections: usize,
    duration: Duration,
) -> Result<KeepaliveSample, BenchError> {
    check_interrupt()?;
    let cpu = |pid: Option<u32>| pid.map(cpu_seconds).transpose();
    let (proxy_before, backend_before) = (cpu(target.proxy)?, cpu_seconds(target.backend)?);
    let wrk_before = children_cpu_seconds()?;
    let run = wrk::run(&Load {
        url: &target.url,
        connections,
        duration,
        header: target.header.as_deref(),
        cpu: GENERATOR_CPU,
    })?;
    let (proxy_after, backend_after) = (cpu(target.proxy)?, cpu_seconds(target.backend)?);
    let wrk_used = children_cpu_seconds()? - wrk_before;
    let per_request = |seconds: f64| seconds * 1e6 / run.requests.max(1) as f64;
    Ok(KeepaliveSample {
        generator_busy: wrk_used / run.seconds,
        proxy_cpu_us: proxy_after
            .zip(proxy_before)
            .map(|(after, before)| per_request(after - before)),
        backend_cpu_us: per_request(backend_after - backend_before),
        run,
    })
}

/// One h2load run of `shape` against `system`'s offload listener, with the CPU time the
/// server used.
fn http2(
    systems: &Systems,
    system: Offload,
    shape: Shape,
    options: Options,
) -> Result<H2Sample, BenchError> {
    check_interrupt()?;
    let (port, pid) = system.target(systems);
    let url = format!("https://127.0.0.1:{port}/");
    let log = systems.files.dir.path.join("h2load.log");
    let generator_before = children_cpu_seconds()?;
    let mut before = 0.0;
    let run = h2load::run(
        &url,
        shape,
        (options.warmup, options.duration),
        GENERATOR_CPU,
        &log,
        || {
            before = cpu_seconds(pid)?;
            Ok(())
        },
    )?;
    let used = cpu_seconds(pid)? - before;
    // h2load's whole life, warm-up included: a child's time is known once it has ended.
    let generator_used = children_cpu_seconds()? - generator_before;
    let warmup = options.warmup.as_secs().max(1) as f64;
    Ok(H2Sample {
        proxy_cpu_us: used * 1e6 / run.requests.max(1) as f64,
        generator_busy: generator_used / (warmup + run.seconds),
        run,
    })
}

/// One run of the handshake generator against `system`'s offload listener.
fn handshakes(
    runtime: &tokio::runtime::Runtime,
    systems: &Systems,
    system: Offload,
    concurrency: usize,
    duration: Duration,
) -> Result<HandshakeSample, BenchError> {
    check_interrupt()?;
    let (port, pid) = system.target(systems);
    let address = SocketAddr::from(([127, 0, 0, 1], port));
    let (before, generator_before) = (cpu_seconds(pid)?, cpu_seconds(std::process::id())?);
    let run: HandshakeRun =
        runtime.block_on(handshake::run(address, SERVER_NAME, concurrency, duration))?;
    let used = cpu_seconds(pid)? - before;
    let generator_used = cpu_seconds(std::process::id())? - generator_before;
    check_interrupt()?;
    Ok(HandshakeSample {
        generator_busy: generator_used / run.seconds,
        cpu_us: used * 1e6 / run.handshakes.max(1) as f64,
        busy: used / run.seconds,
        run,
    })
}

/// A valid cookie of the sticky listener: the one its first answer sets. A request that sends
/// it back must get no new one (else every request of the run would be a new session).
async fn sticky_cookie(systems: &Systems) -> Result<String, BenchError> {
    let address = SocketAddr::from(([127, 0, 0, 1], systems.ports.lb.sticky));
    let roots = systems.files.pki.roots()?;
    let mut conn = HttpsConn::connect(address, Some(SERVER_NAME), &roots, false).await?;
    let first = conn.send(get(SERVER_NAME, "/", None)).await?;
    let cookie = first.set_cookie().ok_or_else(|| {
        BenchError::Unexpected(format!(
            "the sticky listener set no cookie (status {})",
            first.status
        ))
    })?;
    let again = conn.send(get(SERVER_NAME, "/", Some(&cookie))).await?;
    if let Some(renewed) = again.set_cookie() {
        return Err(BenchError::Unexpected(format!(
            "the sticky listener did not take its own cookie back: {cookie:?} -> {renewed:?}"
        )));
    }
    Ok(cookie)
}
