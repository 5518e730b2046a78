//! `lb bench scale`: what the control plane's costs do as the work grows, each figure beside
//! the previous size's.
//!
//! 1. **Maglev build**: the table (M = 65537) of 10, 100, 1 000 and 10 000 backends, built in
//!    this process as the daemon builds it ([`maglev::build`]).
//! 2. **A real daemon**, twice: `lb run` in a namespace of its own, with 64 passthrough
//!    listeners (one with a pool of N backends, 63 sharing a pool of 8), a TCP health check
//!    every second on each of the N, and a connection table of T entries per family; first
//!    N = 100, T = 65 536, then N = 1 000, T = 1 048 576 (the default). The backends are
//!    addresses of a local route in the namespace, where one listening socket answers every
//!    health check. For each:
//!    - **health-check CPU**: the daemon's CPU time (its threads' run time from
//!      `/proc/PID/task/*/schedstat`) over a window of steady checking, per second and per
//!      check (counted by the socket that answers them), beside a bare connect and close;
//!    - **`lb backend add` to live**: the wall time of the CLI command that adds a backend to
//!      the big pool, which returns once the new Maglev table is live (the reconciler has
//!      written the spare ring and flipped the VIP to it); then the backend is removed again.
//!      The CLI's own start is part of it, as it is for an operator;
//!    - **memory**: the daemon's resident memory, and the kernel memory of its BPF maps
//!      (`memlock` of each map, from `/proc/PID/fdinfo`). The connection tables are arrays,
//!      allocated whole when the daemon starts; the bench fills every slot of the IPv4 one
//!      through its pin and reports how many flows it then holds.
//! 3. **L7 requests per second** through an offload listener whose pool has 10, 100 or 1 000
//!    backends (one daemon, three listeners, the lab's HTTP backend answering on every
//!    address): `wrk -t1 -c32 --latency` on CPU 0, the daemon (one tokio worker) on CPU 1, in
//!    rounds that alternate the order, each size's rate beside the 10-backend pool's of the
//!    same round. HAProxy (one thread, on CPU 1 too) serves the same three pools
//!    (`balance leastconn`, the counterpart of lb's default) in the same rounds: what a
//!    larger pool costs a proxy on this machine, beside what it costs lb.

use std::{
    fs,
    net::{Ipv4Addr, SocketAddr, TcpListener},
    path::Path,
    process::{Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use aya::maps::{Array as BpfArray, MapData};
use lb_common::{
    abi::{ConnKeyV4, ConnValue},
    conn,
};

use super::{
    BenchError, Spread,
    l7::{
        process::Child,
        systems::{HAPROXY_FORWARDING, haproxy_head, haproxy_pem},
        wrk::{self, WrkRun},
    },
};
use crate::{
    lab::{
        NetNs, Pki,
        daemon::{DaemonPaths, DaemonProcess, lb_binary},
        l7::{LabDir, ListenerToml, pool_toml, write_issued},
        passthrough::{ENCAP_V4, ENCAP_V6},
        veth,
    },
    maglev,
};

/// The Maglev table size the datapath uses.
const RING_SIZE: u32 = 65_537;
/// Backend counts of the Maglev build.
const MAGLEV_SIZES: [usize; 4] = [10, 100, 1_000, 10_000];
/// Listeners of each daemon.
const LISTENERS: usize = 64;
/// The port every backend's health check connects to.
const HEALTH_PORT: u16 = 8080;
/// How long the daemon checks its backends before its CPU time is counted.
const HEALTH_SETTLE: Duration = Duration::from_secs(3);
/// Pool sizes of the L7 measurement, and their listeners' ports.
const L7_SIZES: [(usize, u16); 3] = [(10, 8410), (100, 8500), (1_000, 9400)];
/// HAProxy's `maxconn`, as `lb bench l7` sets it.
const HAPROXY_MAXCONN: usize = 4096;
/// How long HAProxy may take to listen.
const HAPROXY_START: Duration = Duration::from_secs(30);
/// The port the L7 backend serves on every backend address.
const L7_BACKEND_PORT: u16 = 8081;
/// Load per listener and round, and connections kept alive.
const L7_LOAD: Duration = Duration::from_secs(3);
const L7_CONNECTIONS: usize = 32;
/// Where the load generator runs, and where the daemon and the backend run.
const GENERATOR_CPU: usize = 0;
const SERVER_CPU: usize = 1;

/// How much to measure.
#[derive(Clone, Copy, Debug)]
pub struct Options {
    /// Builds per Maglev size, and `lb backend add`s per daemon.
    pub rounds: usize,
    /// The window over which the daemon's CPU time is counted.
    pub window: Duration,
}

/// One Maglev size: milliseconds per build.
#[derive(Clone, Debug)]
pub struct MaglevRow {
    pub backends: usize,
    pub millis: Spread,
}

/// One daemon's figures.
#[derive(Clone, Debug)]
pub struct DaemonRow {
    /// Backends in the big pool (each health-checked every second).
    pub backends: usize,
    /// Connection-table entries per family.
    pub conn_table: u32,
    /// CPU milliseconds per second of the daemon while it checks.
    pub health_cpu_ms_per_s: f64,
    /// Health checks the daemon made per second, as the answering socket counted them.
    pub checks_per_s: f64,
    /// The baseline of a check: CPU microseconds of this process's thread for one blocking
    /// TCP connect and close to a backend (the same kernel work, without the daemon).
    pub bare_connect_us: f64,
    /// Milliseconds from `lb backend add` to its table live.
    pub add_millis: Spread,
    /// Resident memory of the daemon, MiB.
    pub rss_mib: f64,
    /// Kernel memory of the daemon's BPF maps, MiB.
    pub maps_mib: f64,
    /// Entries the bench put in the IPv4 connection table.
    pub filled: u32,
}

/// One L7 pool size, through lb and through HAProxy.
#[derive(Clone, Debug)]
pub struct L7Row {
    pub backends: usize,
    pub lb: PoolRate,
    pub haproxy: PoolRate,
    /// lb's requests per second over HAProxy's through this pool, paired by round.
    pub lb_over_haproxy: Spread,
}

/// The two systems serving the L7 pools.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum System {
    Lb,
    Haproxy,
}

impl System {
    /// The port of a pool whose lb listener is on `lb_port`: HAProxy's frontend of it is on
    /// the port after.
    fn port(self, lb_port: u16) -> u16 {
        match self {
            Self::Lb => lb_port,
            Self::Haproxy => lb_port + 1,
        }
    }
}

/// One pool size's runs, of each system.
#[derive(Clone, Default)]
struct SizeRuns {
    lb: Vec<WrkRun>,
    haproxy: Vec<WrkRun>,
}

impl SizeRuns {
    fn of(&self, system: System) -> &[WrkRun] {
        match system {
            System::Lb => &self.lb,
            System::Haproxy => &self.haproxy,
        }
    }

    fn of_mut(&mut self, system: System) -> &mut Vec<WrkRun> {
        match system {
            System::Lb => &mut self.lb,
            System::Haproxy => &mut self.haproxy,
        }
    }
}

/// One system's rate through one pool.
#[derive(Clone, Debug)]
pub struct PoolRate {
    pub requests_per_second: Spread,
    pub p99_ms: Spread,
    /// Requests per second over the same system's through the 10-backend pool, paired by
    /// round.
    pub ratio: Spread,
}

/// Everything `lb bench scale` measured.
#[derive(Clone, Debug)]
pub struct Report {
    pub maglev: Vec<MaglevRow>,
    pub daemons: Vec<DaemonRow>,
    pub l7: Vec<L7Row>,
}

/// Runs the benchmark and returns its figures.
pub fn run(options: Options) -> Result<Report, BenchError> {
    let maglev = MAGLEV_SIZES
        .iter()
        .map(|&backends| measure_maglev(backends, options.rounds))
        .collect();
    let binary = lb_binary()?;
    let daemons = [(100, 1 << 16), (1_000, 1 << 20)]
        .into_iter()
        .map(|(backends, table)| measure_daemon(&binary, backends, table, options))
        .collect::<Result<_, _>>()?;
    let l7 = measure_l7(&binary, options)?;
    Ok(Report {
        maglev,
        daemons,
        l7,
    })
}

fn measure_maglev(backends: usize, rounds: usize) -> MaglevRow {
    let identities: Vec<[u8; 6]> = (0..backends)
        .map(|i| {
            let [a, b, c, d] = backend(i).octets();
            [a, b, c, d, 1, 187]
        })
        .collect();
    let entries: Vec<maglev::Entry<'_>> = identities
        .iter()
        .map(|identity| maglev::Entry {
            identity,
            weight: 1,
        })
        .collect();
    let millis: Vec<f64> = (0..rounds)
        .map(|_| {
            let start = Instant::now();
            let table = maglev::build(&entries, RING_SIZE, 1);
            let elapsed = start.elapsed();
            std::hint::black_box(table);
            elapsed.as_secs_f64() * 1e3
        })
        .collect();
    MaglevRow {
        backends,
        millis: Spread::of(&millis),
    }
}

/// Backend `i` of the big pool: 198.19.0.1 upward, skipping the .0 and .255 of each /24.
fn backend(i: usize) -> Ipv4Addr {
    #[expect(clippy::cast_possible_truncation, reason = "i < 10 000 fits")]
    let (hi, lo) = ((i / 250) as u8, (i % 250) as u8);
    Ipv4Addr::new(198, 19, hi, 1 + lo)
}

/// Backend `i` of the small pool (shared by 63 listeners).
fn small_backend(i: usize) -> Ipv4Addr {
    #[expect(clippy::cast_possible_truncation, reason = "i < 8")]
    Ipv4Addr::new(198, 19, 200, 1 + i as u8)
}

/// Listener `i`'s VIP.
fn vip(i: usize) -> Ipv4Addr {
    #[expect(clippy::cast_possible_truncation, reason = "i < 64")]
    Ipv4Addr::new(198, 18, 200, 1 + i as u8)
}

/// The configuration of a daemon with a big pool of `backends` and `table` connections.
fn config(paths: &DaemonPaths, backends: usize, table: u32) -> String {
    let members = |address: &dyn Fn(usize) -> Ipv4Addr, n: usize| {
        (0..n)
            .map(|i| format!("{{ address = \"{}\" }}", address(i)))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let mut text = format!(
        "[datapath]\ninterfaces = [\"s0\"]\nattach_mode = \"driver\"\n\
         conn_table_size = {table}\nmax_listeners = {LISTENERS}\n\
         encap_source_v4 = \"{ENCAP_V4}\"\nencap_source_v6 = \"{ENCAP_V6}\"\n\
         pin_dir = \"{pin}\"\n\n[control]\nsocket = \"{socket}\"\n\n\
         [pools.big]\nbackends = [{big}]\n\
         health_check = {{ protocol = \"tcp\", port = {HEALTH_PORT}, interval = \"1s\" }}\n\n\
         [pools.small]\nbackends = [{small}]\nhealth_check = false\n",
        pin = paths.pin_dir.display(),
        socket = paths.socket.display(),
        big = members(&backend, backends),
        small = members(&small_backend, 8),
    );
    for i in 0..LISTENERS {
        let pool = if i == 0 { "big" } else { "small" };
        text += &format!(
            "\n[listeners.l{i}]\naddress = \"{}\"\nport = 443\nmode = \"passthrough\"\n\
             pool = \"{pool}\"\n",
            vip(i)
        );
    }
    text
}

/// A listening socket in the namespace that takes every health check's connection, counts
/// it and closes it; stops when dropped.
struct Answerer {
    stop: Arc<AtomicBool>,
    accepted: Arc<AtomicU64>,
    thread: Option<thread::JoinHandle<()>>,
}

impl Answerer {
    fn start(ns: &NetNs) -> Result<Self, BenchError> {
        let io = |what: &str| {
            let what = what.to_owned();
            move |source| BenchError::Io { what, source }
        };
        let listener = ns
            .run_here(|| TcpListener::bind(("0.0.0.0", HEALTH_PORT)))?
            .map_err(io("binding the health checks' listener"))?;
        listener
            .set_nonblocking(true)
            .map_err(io("making the health checks' listener non-blocking"))?;
        let stop = Arc::new(AtomicBool::new(false));
        let accepted = Arc::new(AtomicU64::new(0));
        let (stopping, counted) = (Arc::clone(&stop), Arc::clone(&accepted));
        let thread = thread::spawn(move || {
            while !stopping.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((stream, _)) => {
                        counted.fetch_add(1, Ordering::Relaxed);
                        drop(stream);
                    }
                    // Nothing to take (or out of files for a moment): look again soon.
                    Err(_) => thread::sleep(Duration::from_millis(1)),
                }
            }
        });
        Ok(Self {
            stop,
            accepted,
            thread: Some(thread),
        })
    }

    /// Connections taken so far.
    fn accepted(&self) -> u64 {
        self.accepted.load(Ordering::Relaxed)
    }
}

impl Drop for Answerer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take()
            && thread.join().is_err()
        {
            tracing::warn!("the health checks' answering thread panicked");
        }
    }
}

fn measure_daemon(
    binary: &Path,
    backends: usize,
    table: u32,
    options: Options,
) -> Result<DaemonRow, BenchError> {
    let ns = NetNs::new("lbscale")?;
    let peer = NetNs::new("lbscale")?;
    veth(&ns, "s0", &peer, "s1")?;
    ns.ip(&["link", "set", "lo", "up"])?;
    ns.ip(&["addr", "add", "198.18.0.2/24", "dev", "s0"])?;
    // Every backend address is this namespace's own.
    ns.ip(&["route", "add", "local", "198.19.0.0/16", "dev", "lo"])?;
    let answerer = Answerer::start(&ns)?;
    let mut daemon = DaemonProcess::start(binary, &ns, |paths| config(paths, backends, table))?;
    let pid = daemon
        .pid()
        .ok_or_else(|| BenchError::Unexpected("the daemon has no process id".to_owned()))?;

    thread::sleep(HEALTH_SETTLE);
    let (before, checks_before) = (cpu_nanos(pid)?, answerer.accepted());
    let start = Instant::now();
    thread::sleep(options.window);
    let nanos = cpu_nanos(pid)?.saturating_sub(before);
    let checks = answerer.accepted() - checks_before;
    let seconds = start.elapsed().as_secs_f64();
    let health_cpu_ms_per_s = nanos as f64 / 1e6 / seconds;

    let bare_connect_us = ns.run_here(|| bare_connect_micros(backends))??;

    let extra = backend(backends).to_string();
    let mut add = Vec::new();
    for _ in 0..options.rounds {
        let start = Instant::now();
        cli(&daemon, &["backend", "add", "big", &extra])?;
        add.push(start.elapsed().as_secs_f64() * 1e3);
        cli(&daemon, &["backend", "remove", "big", &extra])?;
    }

    let filled = fill_conn_table(daemon.pin_dir(), table)?;
    let rss_mib = super::rss_kib(pid)? as f64 / 1024.0;
    let maps_mib = map_memory(pid)? as f64 / (1024.0 * 1024.0);
    daemon.stop()?;
    drop(answerer);
    Ok(DaemonRow {
        backends,
        conn_table: table,
        health_cpu_ms_per_s,
        checks_per_s: checks as f64 / seconds,
        bare_connect_us,
        add_millis: Spread::of(&add),
        rss_mib,
        maps_mib,
        filled,
    })
}

/// The L7 daemon's configuration: one offload listener on 127.0.0.1 per pool size.
fn l7_config(paths: &DaemonPaths, cert: &Path, key: &Path) -> String {
    let mut text = format!(
        "[datapath]\npin_dir = \"{}\"\n\n[control]\nsocket = \"{}\"\n\n",
        paths.pin_dir.display(),
        paths.socket.display()
    );
    for (backends, port) in L7_SIZES {
        let pool = format!("web{backends}");
        let members: Vec<_> = (0..backends)
            .map(|i| (SocketAddr::from((backend(i), L7_BACKEND_PORT)), None))
            .collect();
        text += &pool_toml(&pool, &members);
        text += "health_check = false\n";
        let mut listener = ListenerToml::new("offload", &pool);
        listener
            .certificates
            .push((cert.to_owned(), key.to_owned()));
        text += &listener.text(&pool, port);
        text += "\n";
    }
    text
}

/// HAProxy's configuration: one thread, a frontend per pool size on the port after lb's,
/// doing what lb's listeners do (TLS offload, the same forwarding headers, least connections).
fn haproxy_config(pem: &Path) -> String {
    let mut text = haproxy_head(HAPROXY_MAXCONN);
    for (backends, port) in L7_SIZES {
        text += &format!(
            "
frontend web{backends}
    bind 127.0.0.1:{port} ssl crt {pem} alpn h2,http/1.1
{HAPROXY_FORWARDING}
    default_backend web{backends}

backend web{backends}
    balance leastconn
",
            port = System::Haproxy.port(port),
            pem = pem.display(),
        );
        for i in 0..backends {
            text += &format!("    server b{i} {}:{L7_BACKEND_PORT}\n", backend(i));
        }
    }
    text
}

/// HAProxy in the benchmark's namespace, and its log.
struct Haproxy {
    child: Child,
    log: std::path::PathBuf,
}

impl Haproxy {
    /// `error`, with HAProxy's log (which goes with the lab's directory).
    fn with_log(&self, error: &dyn std::fmt::Display) -> BenchError {
        let log = fs::read_to_string(&self.log).unwrap_or_default();
        BenchError::Unexpected(format!("{error}\nHAProxy's log:\n{log}"))
    }

    /// `error`, with HAProxy's log if HAProxy has exited.
    fn explain(&mut self, error: BenchError) -> BenchError {
        match self.child.exited() {
            Some(status) => self.with_log(&format!("{error}\nHAProxy exited ({status})")),
            None => error,
        }
    }
}

/// Starts HAProxy in `ns` (on this thread's CPUs) and waits until it listens on every port.
fn start_haproxy(ns: &NetNs, dir: &LabDir, pem: &Path) -> Result<Haproxy, BenchError> {
    let config = dir.write("haproxy.cfg", haproxy_config(pem).as_bytes())?;
    let log_path = dir.path.join("haproxy.log");
    let log = fs::File::create(&log_path).map_err(|source| BenchError::Io {
        what: "creating HAProxy's log".to_owned(),
        source,
    })?;
    // `-db`: in the foreground, one process.
    let mut haproxy = Haproxy {
        child: Child::spawn(
            "haproxy",
            Command::new("ip")
                .args(["netns", "exec", ns.name(), "haproxy", "-db", "-f"])
                .arg(&config)
                .stdout(Stdio::null())
                .stderr(log),
        )?,
        log: log_path,
    };
    let listening = ns.run_here(|| {
        L7_SIZES.iter().try_for_each(|&(_, port)| {
            let address = SocketAddr::from((Ipv4Addr::LOCALHOST, System::Haproxy.port(port)));
            haproxy.child.wait_for_port(address, HAPROXY_START)
        })
    })?;
    listening.map_err(|e| haproxy.with_log(&e))?;
    Ok(haproxy)
}

fn measure_l7(binary: &Path, options: Options) -> Result<Vec<L7Row>, BenchError> {
    let ns = NetNs::new("lbscale")?;
    ns.ip(&["link", "set", "lo", "up"])?;
    ns.ip(&["route", "add", "local", "198.19.0.0/16", "dev", "lo"])?;
    let dir = LabDir::new("lb-bench-scale")?;
    let pki = Pki::new("lb bench scale CA")?;
    let issued = pki.issue(&["lb.test", "127.0.0.1"])?;
    let (cert, key) = write_issued(&dir, "listener", &issued)?;
    // Chain and key in one file, as HAProxy's `crt` wants them.
    let pem = dir.write("haproxy.pem", haproxy_pem(&issued).as_bytes())?;
    // The daemon and the backend start on the servers' CPU (children inherit this thread's).
    super::pin_current_thread(SERVER_CPU).map_err(|source| BenchError::Io {
        what: format!("pinning to CPU {SERVER_CPU}"),
        source,
    })?;
    let listen = format!("0.0.0.0:{L7_BACKEND_PORT}");
    let mut backend_process = Child::spawn(
        "the backend",
        Command::new("ip")
            .args(["netns", "exec", ns.name()])
            .arg(binary)
            .args(["bench", "l7-backend", "--listen", &listen])
            .stdout(Stdio::piped()),
    )?;
    backend_process.first_line()?;
    let mut daemon = DaemonProcess::start(binary, &ns, |paths| l7_config(paths, &cert, &key))?;
    // One tokio worker, as `lb bench l7` runs it.
    daemon.stop()?;
    daemon.set_env(&[("TOKIO_WORKER_THREADS", "1")]);
    daemon.restart()?;
    let mut haproxy = start_haproxy(&ns, &dir, &pem)?;
    super::pin_current_thread(GENERATOR_CPU).map_err(|source| BenchError::Io {
        what: format!("pinning to CPU {GENERATOR_CPU}"),
        source,
    })?;
    let load = |port: u16, duration: Duration| -> Result<WrkRun, BenchError> {
        let url = format!("https://127.0.0.1:{port}/");
        let mut command = Command::new("ip");
        command
            .args(["netns", "exec", ns.name(), "wrk", "-t1"])
            .arg(format!("-c{L7_CONNECTIONS}"))
            .arg(format!("-d{}s", duration.as_secs().max(1)))
            .args(["--latency", &url])
            .stdout(Stdio::piped());
        let mut child = Child::spawn("wrk", &mut command)?;
        let mut stdout = child.take_stdout()?;
        let status = child.wait()?;
        let mut text = String::new();
        std::io::Read::read_to_string(&mut stdout, &mut text).map_err(|source| BenchError::Io {
            what: "reading wrk's report".to_owned(),
            source,
        })?;
        let run = wrk::parse(&text)
            .filter(|_| status.success())
            .ok_or_else(|| BenchError::Unexpected(format!("wrk failed ({status}):\n{text}")))?;
        if run.errors > 0 {
            return Err(BenchError::Unexpected(format!(
                "wrk saw {} errors against port {port}:\n{text}",
                run.errors
            )));
        }
        Ok(run)
    };
    let mut load = |system: System, port: u16, duration: Duration| {
        let run = load(system.port(port), duration);
        match system {
            System::Lb => run,
            System::Haproxy => run.map_err(|e| haproxy.explain(e)),
        }
    };
    for (_, port) in L7_SIZES {
        for system in [System::Lb, System::Haproxy] {
            load(system, port, Duration::from_secs(1))?;
        }
    }
    let mut runs = vec![SizeRuns::default(); L7_SIZES.len()];
    for round in 0..options.rounds {
        let mut sizes: Vec<usize> = (0..L7_SIZES.len()).collect();
        let mut systems = [System::Lb, System::Haproxy];
        if round % 2 == 1 {
            sizes.reverse();
            systems.reverse();
        }
        for size in sizes {
            for system in systems {
                let run = load(system, L7_SIZES[size].1, L7_LOAD)?;
                runs[size].of_mut(system).push(run);
            }
        }
    }
    daemon.stop()?;
    drop(haproxy);
    drop(backend_process);
    Ok(l7_rows(&runs))
}

/// The rows of the L7 step from its runs (per pool size, as in [`L7_SIZES`]): each system's
/// rate, beside its own through the first (smallest) pool, and lb's beside HAProxy's, paired
/// by round.
fn l7_rows(runs: &[SizeRuns]) -> Vec<L7Row> {
    let rates = |runs: &[WrkRun]| {
        runs.iter()
            .map(|r| r.requests_per_second)
            .collect::<Vec<_>>()
    };
    let over = |a: &[f64], b: &[f64]| a.iter().zip(b).map(|(a, b)| a / b).collect::<Vec<_>>();
    let pool_rate = |size: &SizeRuns, system: System| {
        let smallest = rates(runs[0].of(system));
        let system_runs = size.of(system);
        PoolRate {
            requests_per_second: Spread::of(&rates(system_runs)),
            p99_ms: Spread::of(&system_runs.iter().map(|r| r.p99_ms).collect::<Vec<_>>()),
            ratio: Spread::of(&over(&rates(system_runs), &smallest)),
        }
    };
    L7_SIZES
        .iter()
        .zip(runs)
        .map(|(&(backends, _), size)| L7Row {
            backends,
            lb: pool_rate(size, System::Lb),
            haproxy: pool_rate(size, System::Haproxy),
            lb_over_haproxy: Spread::of(&over(&rates(&size.lb), &rates(&size.haproxy))),
        })
        .collect()
}

/// CPU microseconds per blocking connect and close to each of `backends` in turn, on this
/// thread (which must be in the benchmark's namespace). The thread's clock, not its
/// `schedstat`: the scheduler brings a running thread's `schedstat` up to date only at its
/// ticks and switches, so 100 connects that took no tick read as none.
fn bare_connect_micros(backends: usize) -> Result<f64, BenchError> {
    let thread_nanos = || -> Result<u64, BenchError> {
        let mut time = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: `time` is a valid, writable timespec.
        if unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut time) } != 0 {
            return Err(BenchError::Io {
                what: "reading this thread's CPU clock".to_owned(),
                source: std::io::Error::last_os_error(),
            });
        }
        let nanos = i128::from(time.tv_sec) * 1_000_000_000 + i128::from(time.tv_nsec);
        Ok(u64::try_from(nanos).unwrap_or(0))
    };
    let before = thread_nanos()?;
    for i in 0..backends {
        let stream = std::net::TcpStream::connect((backend(i), HEALTH_PORT)).map_err(|source| {
            BenchError::Io {
                what: format!("connecting to {}:{HEALTH_PORT}", backend(i)),
                source,
            }
        })?;
        drop(stream);
    }
    Ok((thread_nanos()? - before) as f64 / 1e3 / backends as f64)
}

/// Runs the CLI against `daemon`; an unsuccessful command is an error with its output.
fn cli(daemon: &DaemonProcess, args: &[&str]) -> Result<(), BenchError> {
    let output = daemon.cli(args)?;
    if output.status.success() {
        return Ok(());
    }
    Err(BenchError::Unexpected(format!(
        "`lb {}` failed: {}{}",
        args.join(" "),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )))
}

/// Puts `entries` flows in the pinned IPv4 connection table (whole buckets, from the first)
/// and returns how many the table then holds.
fn fill_conn_table(pin_dir: &Path, entries: u32) -> Result<u32, BenchError> {
    let name = lb_common::maps::CONNS_V4;
    let map_error = |what: String| BenchError::Unexpected(format!("{name}: {what}"));
    let data = MapData::from_pin(pin_dir.join(name)).map_err(|e| map_error(e.to_string()))?;
    let mut map: BpfArray<MapData, conn::BucketV4> =
        BpfArray::try_from(aya::maps::Map::Array(data)).map_err(|e| map_error(e.to_string()))?;
    let ways = conn::WAYS;
    let buckets = entries.div_ceil(ways).min(map.len());
    for index in 0..buckets {
        let mut bucket = conn::BucketV4::default();
        for (way, slot) in (0..).zip(bucket.slots.iter_mut()) {
            let key = ConnKeyV4 {
                src_be: (0x0a00_0000 + index * ways + way).to_be(),
                src_port_be: 40_000u16.to_be(),
                vip_id: 0,
            };
            let value = ConnValue {
                backend_id: 0,
                generation: 1,
                seen_s: 0,
            };
            *slot = conn::SlotV4 {
                key: key.bits(),
                value: conn::pack(value, 0),
            };
        }
        map.set(index, bucket, 0)
            .map_err(|e| map_error(e.to_string()))?;
    }
    let mut held = 0u32;
    for index in 0..map.len() {
        let bucket = map.get(&index, 0).map_err(|e| map_error(e.to_string()))?;
        for slot in bucket.slots {
            held += u32::from(slot.value != 0);
        }
    }
    Ok(held)
}

/// Nanoseconds `pid`'s threads have run (`/proc/PID/task/*/schedstat`, whose first field
/// the scheduler keeps in nanoseconds, where `/proc/PID/stat` counts 10 ms ticks). Threads
/// that ended took their time with them: the daemon's threads live as long as it does.
fn cpu_nanos(pid: u32) -> Result<u64, BenchError> {
    let dir = format!("/proc/{pid}/task");
    let tasks = fs::read_dir(&dir).map_err(|source| BenchError::Io {
        what: format!("listing {dir}"),
        source,
    })?;
    let mut total = 0;
    for task in tasks.flatten() {
        let path = task.path().join("schedstat");
        // A thread that ended meanwhile is no longer there to read.
        if path.exists() {
            total += schedstat_nanos(&path.display().to_string())?;
        }
    }
    Ok(total)
}

/// The run time, in nanoseconds, that a `schedstat` file gives (its first field).
fn schedstat_nanos(path: &str) -> Result<u64, BenchError> {
    read(path)?
        .split_whitespace()
        .next()
        .and_then(|ns| ns.parse().ok())
        .ok_or_else(|| BenchError::Unexpected(format!("{path} holds no run time")))
}

/// Bytes of kernel memory of the BPF maps `pid` holds open, each counted once.
fn map_memory(pid: u32) -> Result<u64, BenchError> {
    let dir = format!("/proc/{pid}/fdinfo");
    let entries = fs::read_dir(&dir).map_err(|source| BenchError::Io {
        what: format!("listing {dir}"),
        source,
    })?;
    let mut seen = std::collections::BTreeMap::new();
    for entry in entries.flatten() {
        // A descriptor closed meanwhile is no map of the daemon's any more.
        let Ok(info) = fs::read_to_string(entry.path()) else {
            continue;
        };
        let value = |key: &str| {
            info.lines()
                .find_map(|line| line.strip_prefix(key))
                .and_then(|rest| rest.trim().parse::<u64>().ok())
        };
        if let (Some(id), Some(memlock)) = (value("map_id:"), value("memlock:")) {
            seen.insert(id, memlock);
        }
    }
    Ok(seen.values().sum())
}

fn read(path: &str) -> Result<String, BenchError> {
    fs::read_to_string(path).map_err(|source| BenchError::Io {
        what: format!("reading {path}"),
        source,
    })
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "Maglev table build, M = {RING_SIZE} (ms; median [min-max] of rounds)"
        )?;
        writeln!(
            f,
            "  {:10} {:>26} {:>18} {:>18}",
            "backends", "build", "x previous", "size x previous"
        )?;
        let mut previous: Option<&MaglevRow> = None;
        for row in &self.maglev {
            let (growth, size) = previous.map_or((String::new(), String::new()), |p| {
                (
                    format!("{:.2}", row.millis.median / p.millis.median),
                    format!("{:.0}", row.backends as f64 / p.backends as f64),
                )
            });
            writeln!(
                f,
                "  {:<10} {:>26} {growth:>18} {size:>18}",
                row.backends,
                row.millis.to_string()
            )?;
            previous = Some(row);
        }
        writeln!(f)?;
        writeln!(
            f,
            "A daemon with {LISTENERS} passthrough listeners: one with a pool of N backends, \
             each health-checked (TCP) every second; the others share a pool of 8"
        )?;
        for row in &self.daemons {
            writeln!(
                f,
                "  N = {}, connection table {} entries per family ({} held after the fill)",
                row.backends, row.conn_table, row.filled
            )?;
            writeln!(
                f,
                "    health checks: {:.0} a second, daemon CPU {:.1} ms a second ({:.1} us a \
                 check; a bare connect and close {:.1} us)",
                row.checks_per_s,
                row.health_cpu_ms_per_s,
                row.health_cpu_ms_per_s * 1e3 / row.checks_per_s,
                row.bare_connect_us
            )?;
            writeln!(
                f,
                "    lb backend add to live: {} ms (median [min-max])",
                row.add_millis
            )?;
            writeln!(
                f,
                "    memory: daemon resident {:.1} MiB, BPF maps {:.1} MiB",
                row.rss_mib, row.maps_mib
            )?;
        }
        if let [small, large] = self.daemons.as_slice() {
            let entries = f64::from(large.conn_table) - f64::from(small.conn_table);
            writeln!(
                f,
                "  N x{:.0}: health-check CPU x{:.2}, add to live x{:.2}; table x{:.0}: BPF maps \
                 +{:.0} bytes per added entry and family pair",
                large.backends as f64 / small.backends as f64,
                large.health_cpu_ms_per_s / small.health_cpu_ms_per_s,
                large.add_millis.median / small.add_millis.median,
                f64::from(large.conn_table) / f64::from(small.conn_table),
                (large.maps_mib - small.maps_mib) * 1024.0 * 1024.0 / entries
            )?;
        }
        writeln!(f)?;
        writeln!(
            f,
            "L7 keep-alive requests per second through an offload listener, by backends in its \
             pool, lb and HAProxy in the same rounds (wrk -c{L7_CONNECTIONS}; median [min-max] \
             of rounds; \"over 10\": over the same system's 10-backend pool; \"lb / HAProxy\": \
             through the same pool, paired by round)"
        )?;
        writeln!(
            f,
            "  {:10} {:8} {:>26} {:>22} {:>22} {:>22}",
            "backends", "system", "requests/s", "p99 ms", "over 10 backends", "lb / HAProxy"
        )?;
        for row in &self.l7 {
            let paired = &row.lb_over_haproxy;
            let lb_over_haproxy =
                format!("{:.2} [{:.2}-{:.2}]", paired.median, paired.min, paired.max);
            for (system, rate, beside) in [
                ("lb", &row.lb, lb_over_haproxy.as_str()),
                ("HAProxy", &row.haproxy, ""),
            ] {
                writeln!(
                    f,
                    "  {:<10} {system:8} {:>26} {:>22} {:>22} {beside:>22}",
                    row.backends,
                    format!(
                        "{:.0} [{:.0}-{:.0}]",
                        rate.requests_per_second.median,
                        rate.requests_per_second.min,
                        rate.requests_per_second.max
                    ),
                    format!(
                        "{:.2} [{:.2}-{:.2}]",
                        rate.p99_ms.median, rate.p99_ms.min, rate.p99_ms.max
                    ),
                    format!(
                        "{:.2} [{:.2}-{:.2}]",
                        rate.ratio.median, rate.ratio.min, rate.ratio.max
                    ),
                )?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(requests_per_second: f64) -> WrkRun {
        WrkRun {
            requests: 0,
            seconds: 1.0,
            requests_per_second,
            p50_ms: 1.0,
            p99_ms: 2.0,
            errors: 0,
        }
    }

    #[test]
    fn every_pool_of_each_system_has_a_port_of_its_own() {
        let mut ports: Vec<u16> = L7_SIZES
            .iter()
            .flat_map(|&(_, port)| [System::Lb.port(port), System::Haproxy.port(port)])
            .collect();
        ports.sort_unstable();
        ports.dedup();
        assert_eq!(ports.len(), 2 * L7_SIZES.len());
    }

    #[test]
    fn each_system_is_paired_with_itself_by_round_and_lb_with_haproxy() {
        // Two rounds: lb 100 and 80 a second through the smallest pool, HAProxy 200 and 100;
        // through the next, lb 50 and 60, HAProxy 100 and 150.
        let size = |lb: [f64; 2], haproxy: [f64; 2]| SizeRuns {
            lb: lb.map(run).to_vec(),
            haproxy: haproxy.map(run).to_vec(),
        };
        let runs = [
            size([100.0, 80.0], [200.0, 100.0]),
            size([50.0, 60.0], [100.0, 150.0]),
            size([100.0, 80.0], [200.0, 100.0]),
        ];
        let rows = l7_rows(&runs);
        let spread = |s: &Spread| (s.min, s.max);
        assert_eq!(spread(&rows[1].lb.ratio), (0.5, 0.75));
        assert_eq!(spread(&rows[1].haproxy.ratio), (0.5, 1.5));
        assert_eq!(spread(&rows[0].lb_over_haproxy), (0.5, 0.8));
        assert_eq!(spread(&rows[1].lb_over_haproxy), (0.4, 0.5));
        assert_eq!(rows[2].backends, L7_SIZES[2].0);
    }

    #[test]
    fn haproxy_serves_each_pool_on_the_port_after_lbs() {
        let text = haproxy_config(Path::new("/lab/haproxy.pem"));
        for (backends, port) in L7_SIZES {
            let frontend = format!(
                "frontend web{backends}\n    bind 127.0.0.1:{} ssl crt /lab/haproxy.pem alpn \
                 h2,http/1.1\n{HAPROXY_FORWARDING}\n    default_backend web{backends}\n",
                System::Haproxy.port(port)
            );
            assert!(text.contains(&frontend), "{frontend}");
            let pool = text
                .split(&format!("\nbackend web{backends}\n"))
                .nth(1)
                .and_then(|rest| rest.split("\nfrontend").next())
                .expect("the pool's backend section");
            let servers: Vec<_> = pool.lines().filter(|l| l.contains(" server ")).collect();
            assert_eq!(servers.len(), backends);
            assert!(pool.contains("balance leastconn"));
            assert_eq!(
                servers.last().copied(),
                Some(
                    format!(
                        "    server b{} {}:{L7_BACKEND_PORT}",
                        backends - 1,
                        backend(backends - 1)
                    )
                    .as_str()
                )
            );
        }
    }
}
