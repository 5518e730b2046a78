//! `lb demo`: the balancer at work in all three modes, in network namespaces on this host, in
//! a few seconds. Needs root; leaves nothing behind, also when interrupted with Ctrl-C.
//!
//! What it shows, one step each:
//!
//! 1. the lab ([`PassthroughLab`]): a client, the balancer and three backends, each backend
//!    serving TLS on the VIP with its own certificate, and HTTP and HTTPS on its own address;
//!    the daemon (`lb run`, a child process in the balancer's namespace, [`DaemonProcess`])
//!    with one configuration for passthrough, offload and bridging listeners on one VIP
//!    ([`L7Listeners`]);
//! 2. `spread.rs`: a thousand real TLS connections to the IPv4 VIP, spread by the XDP program
//!    over the backends (the client tells which backend answered from the certificate it
//!    verified, and checks the reply line names the same one), a few over IPv6, and the XDP
//!    counters that account for them (`lb stats`);
//! 3. `failover.rs`: long-lived connections while one backend is removed with the real CLI:
//!    connections to the other backends keep working; the removed backend's flows are placed
//!    afresh on their next packet and end, reset by their new backend (the README's policy);
//! 4. `l7.rs`: HTTPS requests through the offload and bridging listeners on the same VIP,
//!    spread over the backends; a sticky user pinned to one backend, re-pinned with a new
//!    cookie when that backend's server stops and its health check fails;
//! 5. `scale_out.rs`: three balancer nodes behind a router that spreads flows over them by
//!    ECMP, each announcing the VIPs over BGP with its own BIRD (a lab of its own,
//!    [`ScaleOutLab`](crate::lab::scale_out::ScaleOutLab)); long-lived connections while one
//!    node is drained (`lb node drain`) and another killed: every connection keeps its backend;
//! 6. cleanup: the daemons stopped, the namespaces deleted, by the guards' `Drop`.
//!
//! Data flow: `run` builds the lab and starts the daemon, hands both to each step, and each
//! step returns what it established (a `Spread`, a `Failover`) or a
//! [`DemoError::Claim`] naming what did not hold. The CLI is the real `lb` binary
//! ([`DaemonProcess::cli`]); counters come from `lb stats --json`. Every wait checks
//! the flag in `interrupt.rs`, so Ctrl-C unwinds through the guards within a tick.

mod failover;
mod interrupt;
mod l7;
mod scale_out;
mod spread;
mod stats;

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Instant;

use crate::lab::LabError;
use crate::lab::daemon::DaemonProcess;
use crate::lab::passthrough::{CLIENT_V4, LB_V4, PassthroughLab, VIP_NAME};
use crate::lab::side_by_side::{BACKEND_PORTS, L7Files, L7Listeners};

/// Namespace prefix of the demo's lab (`ip netns list` shows `lbdemo-PID-N`).
const PREFIX: &str = "lbdemo";

/// Backends in the lab.
const BACKENDS: usize = 3;

/// The TLS port of the VIPs.
const PORT: u16 = 443;

/// The IPv4 listener and its pool in the lab's configuration ([`lab_config`]).
const LISTENER_V4: &str = "tls4";
const POOL_V4: &str = "web4";

/// Everything that can stop the demo.
#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    /// Not running as root.
    #[error(
        "the demo needs root: it creates network namespaces and attaches XDP programs; run it as root (`sudo lb demo`, or `cargo xtask demo` as root)"
    )]
    NotRoot,
    /// SIGINT or SIGTERM arrived; the lab was removed on the way out.
    #[error("interrupted; the daemon was stopped and the lab's namespaces deleted")]
    Interrupted,
    /// The signal handler could not be installed.
    #[error("could not install the Ctrl-C handler: {0}")]
    Signal(#[source] io::Error),
    /// The path of the running `lb` binary (which runs the daemon) is unknown.
    #[error("could not find the running `lb` binary to start the daemon with: {0}")]
    Exe(#[source] io::Error),
    /// Building the lab, starting the daemon or a TLS client failed.
    #[error(transparent)]
    Lab(#[from] LabError),
    /// The CLI failed.
    #[error("`lb {command}` failed ({status}): {stderr}")]
    Cli {
        command: String,
        status: String,
        stderr: String,
    },
    /// The CLI's JSON did not parse, or was not the expected answer.
    #[error("`lb {command}` printed an unexpected answer: {reason}")]
    CliAnswer { command: String, reason: String },
    /// A client thread panicked.
    #[error("client thread {0} panicked; rerun with RUST_BACKTRACE=1 to see where")]
    Thread(String),
    /// Something the demo shows did not hold.
    #[error("{0}")]
    Claim(String),
    /// Cleanup left something behind.
    #[error("cleanup left these behind: {}; remove them by hand (`ip netns del`, `rm -r`)", .0.join(", "))]
    LeftBehind(Vec<String>),
}

/// Runs the demo; prints as it goes and ends with a one-line summary.
///
/// # Errors
///
/// [`DemoError::NotRoot`] before anything is touched; [`DemoError::Interrupted`] after
/// Ctrl-C; [`DemoError::Claim`] when something the demo shows did not hold; the others when
/// the lab, the daemon or the CLI failed. The lab is removed in every case.
pub fn run() -> Result<(), DemoError> {
    require_root()?;
    interrupt::install()?;
    let started = Instant::now();
    println!(
        "lb demo: the load balancer in passthrough, offload and bridging modes, in network namespaces on this host (Ctrl-C stops it cleanly)"
    );
    let result = run_lab().and_then(|shown| Ok((shown, scale_out::run()?)));
    let left = leftovers();
    let ((spread, failover, l7), scaled) = match result {
        Ok(done) => done,
        Err(error) => {
            if !left.is_empty() {
                tracing::warn!("cleanup left these behind: {}", left.join(", "));
            }
            if interrupt::is_interrupted() {
                return Err(DemoError::Interrupted);
            }
            return Err(error);
        }
    };
    if !left.is_empty() {
        return Err(DemoError::LeftBehind(left));
    }
    println!("\n[6/6] Cleanup: daemon stopped, namespaces deleted, nothing left behind.");
    println!(
        "demo ok in {:.1} s: {} TLS connections spread over {BACKENDS} backends (IPv4 and IPv6); removing {} broke 0 of {} connections to the others and ended its {} as documented; {} HTTPS requests through offload and bridging; a sticky user re-pinned {} ms after its backend stopped; behind a router, draining a node moved {} flows and killing one {} more (dropped by the router in {} ms), 0 of {} broken.",
        started.elapsed().as_secs_f64(),
        spread.connections,
        failover.removed,
        failover.surviving,
        failover.ended,
        l7.requests,
        l7.repinned_after.as_millis(),
        scaled.moved_by_drain,
        scaled.moved_by_kill,
        scaled.kill_detected.as_millis(),
        scaled.connections,
    );
    Ok(())
}

/// Steps 1 to 4; the guards (daemon, files, then lab) clean up when this returns, however it
/// returns.
fn run_lab() -> Result<(spread::Spread, failover::Failover, l7::L7Shown), DemoError> {
    let mut lab = build_lab()?;
    let files = L7Files::write(&lab.pki)?;
    let daemon = start_daemon(&lab, &files)?;
    let spread = spread::run(&lab, &daemon)?;
    let failover = failover::run(&lab, &daemon)?;
    let l7 = l7::run(&mut lab, &daemon)?;
    drop(daemon);
    drop(files);
    drop(lab);
    Ok((spread, failover, l7))
}

/// Refuses to go on without root, before touching anything.
fn require_root() -> Result<(), DemoError> {
    // SAFETY: `geteuid` has no preconditions and cannot fail.
    let euid = unsafe { libc::geteuid() };
    if euid != 0 {
        return Err(DemoError::NotRoot);
    }
    Ok(())
}

/// Step 1: the namespaces, links, decapsulation programs and TLS servers.
fn build_lab() -> Result<PassthroughLab, DemoError> {
    println!("\n[1/6] The lab");
    let mut lab = PassthroughLab::build(PREFIX, BACKENDS)?;
    interrupt::check()?;
    lab.start_tls(PORT)?;
    lab.start_http(BACKEND_PORTS)?;
    lab.serve_vip_locally()?;
    interrupt::check()?;
    let (Some(first), Some(last)) = (lab.backends.first(), lab.backends.last()) else {
        return Err(DemoError::Claim("the lab has no backends".to_owned()));
    };
    println!(
        "client {CLIENT_V4} -> balancer {LB_V4} (XDP) -> {}..{} {}..{}, one namespace each",
        first.name, last.name, first.v4, last.v4
    );
    println!(
        "each backend: the VIP on lo, a TLS server with its own certificate ({VIP_NAME} + <name>.lb.test), answers the client directly"
    );
    println!(
        "each backend also serves HTTP on :{} and HTTPS on :{} (its own address) for the L7 listeners; the balancer has the VIP on lo for them",
        BACKEND_PORTS.plain, BACKEND_PORTS.tls
    );
    Ok(lab)
}

/// Starts `lb run` in the balancer's namespace and shows its listeners.
fn start_daemon(lab: &PassthroughLab, files: &L7Files) -> Result<DaemonProcess, DemoError> {
    let exe = std::env::current_exe().map_err(DemoError::Exe)?;
    let listeners = L7Listeners::new(files);
    let daemon = DaemonProcess::start(&exe, &lab.lb, |paths| listeners.config(paths, BACKENDS))?;
    interrupt::check()?;
    println!(
        "daemon: `lb run` in the balancer's namespace; one configuration for all three modes, {} (written by L7Listeners in lb-userspace/src/lab/side_by_side.rs)",
        config_path(daemon.socket()).display()
    );
    print_cli(&daemon, &["listener", "list"])?;
    Ok(daemon)
}

/// Where [`DaemonProcess`] writes the configuration: next to the socket.
fn config_path(socket: &Path) -> PathBuf {
    socket.with_file_name("lb.toml")
}

/// Runs `lb ARGS` against the daemon; its stdout, or the error with its stderr.
fn run_cli(daemon: &DaemonProcess, args: &[&str]) -> Result<String, DemoError> {
    let Output {
        status,
        stdout,
        stderr,
    } = daemon.cli(args)?;
    if !status.success() {
        return Err(DemoError::Cli {
            command: args.join(" "),
            status: status.to_string(),
            stderr: String::from_utf8_lossy(&stderr).trim().to_owned(),
        });
    }
    Ok(String::from_utf8_lossy(&stdout).into_owned())
}

/// Prints `$ lb ARGS` and what it printed.
fn print_cli(daemon: &DaemonProcess, args: &[&str]) -> Result<(), DemoError> {
    let out = run_cli(daemon, args)?;
    println!("$ lb {}", args.join(" "));
    print!("{out}");
    Ok(())
}

/// The demo's namespaces, pin directories and daemon directories that still exist.
fn leftovers() -> Vec<String> {
    let pid = std::process::id();
    let netns = format!("{PREFIX}-{pid}-");
    let daemon = format!("lb-lab-{pid}-");
    let bird = format!("lbbird-{pid}-");
    let mut left = Vec::new();
    for (dir, prefix) in [
        (PathBuf::from("/run/netns"), &netns),
        (PathBuf::from("/sys/fs/bpf"), &daemon),
        (std::env::temp_dir(), &daemon),
        (PathBuf::from("/tmp"), &bird),
    ] {
        let Ok(entries) = fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            if entry
                .file_name()
                .to_string_lossy()
                .starts_with(prefix.as_str())
            {
                left.push(entry.path().display().to_string());
            }
        }
    }
    left
}

/// The backend named by a certificate's names (`<name>.lb.test`), if any lab backend is.
fn backend_of(lab: &PassthroughLab, peer_names: &[String]) -> Option<String> {
    lab.backend_by_cert_name(peer_names)
        .map(|backend| backend.name.clone())
}

/// The backend named by a reply line (`"<name> <line>"`).
fn reply_backend(reply: &str) -> &str {
    reply.split_whitespace().next().unwrap_or_default()
}
