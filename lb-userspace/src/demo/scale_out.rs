//! Step 5: three balancers behind a router, one drained and one killed under load.
//!
//! The lab ([`ScaleOutLab`]): a client behind a router that spreads flows over three balancer
//! nodes by ECMP; each node runs `lb run` with `[announce]` and its own BIRD, which learns the
//! daemon's announcement table (the shipped `packaging/bird/lb-node.conf`) and announces the
//! VIPs to the router over BGP; three backends behind the router. Every node has the same
//! configuration, so every node sends a flow to the same backend.
//!
//! One thread in the client namespace ([`Worker`]) holds [`CONNECTIONS`] long-lived TLS
//! connections and exchanges a line on each every [`PERIOD`], checking each reply comes from
//! the backend that answered first. Then `lb node drain` on node 1 (the router moves its flows
//! to the others), then node 2's daemon and BIRD are killed (the router drops it when its BGP
//! session closes): every flow goes on through node 0, to the same backend, without a break.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use rustls::RootCertStore;

use super::{DemoError, PORT, interrupt, reply_backend, run_cli};
use crate::cli::render::Table;
use crate::lab::passthrough::{VIP_NAME, VIP_V4};
use crate::lab::scale_out::{CLIENT_V4, ScaleOutLab};
use crate::lab::{LabError, TlsClientConn, client_config};

/// Balancer nodes and backends in the lab.
const NODES: usize = 3;
const BACKENDS: usize = 3;
/// The node drained, and the one killed.
const DRAINED: usize = 1;
const KILLED: usize = 2;

/// Long-lived connections, and how often each exchanges a line.
const CONNECTIONS: usize = 90;
const PERIOD: Duration = Duration::from_millis(100);
/// How long exchanges go on after each change.
const AFTER_CHANGE: Duration = Duration::from_millis(1500);

/// The client thread's name.
const THREAD: &str = "demo-scale-out";

/// How long the routers may take to learn the nodes, and the connections to open.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(30);

/// What step 5 established.
#[derive(Debug)]
pub struct ScaledOut {
    pub connections: usize,
    /// Flows the drain moved to other nodes, and those the kill moved.
    pub moved_by_drain: usize,
    pub moved_by_kill: usize,
    /// How long the router took to drop the killed node.
    pub kill_detected: Duration,
}

/// Runs step 5: builds the lab (removed when this returns), shows the drain and the kill.
pub fn run() -> Result<ScaledOut, DemoError> {
    println!(
        "\n[5/6] Scaling out: {NODES} balancer nodes behind a router (BGP with BIRD, ECMP), {BACKENDS} backends"
    );
    let exe = std::env::current_exe().map_err(DemoError::Exe)?;
    let mut lab = ScaleOutLab::build(super::PREFIX, NODES, BACKENDS)?;
    interrupt::check()?;
    lab.start_tls(PORT)?;
    for i in 0..NODES {
        lab.start_announcing_daemon(i, &exe)?;
        interrupt::check()?;
    }
    let vip = IpAddr::V4(VIP_V4);
    lab.wait_next_hops(vip, NODES, SETTLE_TIMEOUT)?;
    println!(
        "client {CLIENT_V4} -> router (ECMP over the nodes that announce the VIP) -> node 0..{} (lb run + BIRD each, the same configuration) -> backend-0..{}",
        NODES - 1,
        BACKENDS - 1
    );
    println!(
        "the router routes {VIP_V4} over all {NODES} nodes: each daemon announces it (a route in kernel table 200), each node's BIRD exports it by BGP"
    );
    print_announcements(&lab, 0)?;

    let mut worker = Worker::start(&lab, SocketAddr::new(vip, PORT))?;
    worker.wait_for_rounds(3)?;
    let ports = worker.ports();
    let at_start = placements(&lab, &ports)?;
    println!(
        "{CONNECTIONS} long-lived TLS connections, a line each every {} ms; the router spreads them: {}",
        PERIOD.as_millis(),
        shares(&at_start)
    );

    println!("\n$ lb node drain --timeout 1s   (on node {DRAINED})");
    let out = run_cli(lab.daemon(DRAINED)?, &["node", "drain", "--timeout", "1s"])?;
    print!("{}", first_lines(&out, 2));
    interrupt::sleep(AFTER_CHANGE)?;
    let after_drain = placements(&lab, &ports)?;
    let moved_by_drain = moved(&at_start, &after_drain);
    println!(
        "the router now sends them: {} ({moved_by_drain} moved, to nodes whose tables send them to the same backends)",
        shares(&after_drain)
    );

    println!("\nkill -9 node {KILLED}'s daemon and BIRD");
    let killed_at = Instant::now();
    lab.daemon_mut(KILLED)?.kill()?;
    lab.kill_bird(KILLED)?;
    lab.wait_next_hops(vip, 1, SETTLE_TIMEOUT)?;
    let kill_detected = killed_at.elapsed();
    interrupt::sleep(AFTER_CHANGE)?;
    let after_kill = placements(&lab, &ports)?;
    let moved_by_kill = moved(&after_drain, &after_kill);
    println!(
        "the router dropped node {KILLED} {} ms later (its BGP session closed); now: {} ({moved_by_kill} moved)",
        kill_detected.as_millis(),
        shares(&after_kill)
    );

    let held = worker.finish()?;
    print!("{}", table(&held));
    check(&held)?;
    println!(
        "every connection kept its backend through the drain and the kill: 0 of {CONNECTIONS} broken"
    );
    drop(lab);
    Ok(ScaledOut {
        connections: held.len(),
        moved_by_drain,
        moved_by_kill,
        kill_detected,
    })
}

/// Node `node`'s `lb status`, the announcement lines only, once it shows its BGP session up
/// (the daemon asks BIRD every 2 s).
fn print_announcements(lab: &ScaleOutLab, node: usize) -> Result<(), DemoError> {
    let deadline = Instant::now() + SETTLE_TIMEOUT;
    let status = loop {
        let status = run_cli(lab.daemon(node)?, &["status"])?;
        if status.contains("established") || Instant::now() > deadline {
            break status;
        }
        interrupt::sleep(Duration::from_millis(200))?;
    };
    println!("$ lb status   (on node {node}; its announcement lines)");
    for line in status
        .lines()
        .filter(|l| l.starts_with("announce:") || l.starts_with("routing:") || l.starts_with("  "))
    {
        println!("{line}");
    }
    Ok(())
}

/// The node the router sends each connection to now (by its kernel), by local port.
fn placements(lab: &ScaleOutLab, ports: &[u16]) -> Result<Vec<Option<usize>>, DemoError> {
    ports
        .iter()
        .map(|&port| {
            lab.predicted_node(CLIENT_V4, port, VIP_V4, PORT)
                .map_err(DemoError::from)
        })
        .collect()
}

/// `node 0: 31, node 1: 29, ...`.
fn shares(placed: &[Option<usize>]) -> String {
    let mut counts: BTreeMap<usize, usize> = BTreeMap::new();
    for node in placed.iter().flatten() {
        *counts.entry(*node).or_default() += 1;
    }
    counts
        .iter()
        .map(|(node, n)| format!("node {node}: {n}"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn moved(before: &[Option<usize>], after: &[Option<usize>]) -> usize {
    before.iter().zip(after).filter(|(b, a)| b != a).count()
}

/// The first `n` lines of `text`, with their line ends.
fn first_lines(text: &str, n: usize) -> String {
    text.lines().take(n).map(|l| format!("{l}\n")).collect()
}

/// One connection's story.
#[derive(Debug)]
struct Held {
    port: u16,
    /// The backend named by the first reply.
    backend: String,
    exchanges: u64,
    /// Why it broke, if it did.
    broken: Option<String>,
}

/// What the main thread and the client thread share.
#[derive(Debug, Default)]
struct Control {
    stop: AtomicBool,
    rounds: AtomicU64,
    /// The connections' local ports, once open.
    ports: std::sync::Mutex<Vec<u16>>,
}

/// The client thread, stopped and joined when dropped.
struct Worker {
    control: Arc<Control>,
    handle: Option<JoinHandle<Result<Vec<Held>, LabError>>>,
}

impl Worker {
    fn start(lab: &ScaleOutLab, vip: SocketAddr) -> Result<Self, DemoError> {
        let roots = lab.pki.roots()?;
        let control = Arc::new(Control::default());
        let shared = Arc::clone(&control);
        let handle = lab
            .client
            .spawn(THREAD, move || hold(&roots, vip, &shared))?;
        Ok(Self {
            control,
            handle: Some(handle),
        })
    }

    fn wait_for_rounds(&mut self, rounds: u64) -> Result<(), DemoError> {
        let deadline = Instant::now() + SETTLE_TIMEOUT;
        while self.control.rounds.load(Ordering::SeqCst) < rounds {
            if self.handle.as_ref().is_none_or(JoinHandle::is_finished) {
                self.finish()?;
                interrupt::check()?;
                return Err(DemoError::Claim(
                    "the long-lived connections stopped before the drain".to_owned(),
                ));
            }
            if Instant::now() > deadline {
                return Err(DemoError::Claim(format!(
                    "{CONNECTIONS} connections did not open through the nodes within {SETTLE_TIMEOUT:?}"
                )));
            }
            interrupt::sleep(PERIOD / 2)?;
        }
        Ok(())
    }

    fn ports(&self) -> Vec<u16> {
        self.control
            .ports
            .lock()
            .map(|p| p.clone())
            .unwrap_or_default()
    }

    fn finish(&mut self) -> Result<Vec<Held>, DemoError> {
        self.control.stop.store(true, Ordering::SeqCst);
        let Some(handle) = self.handle.take() else {
            return Ok(Vec::new());
        };
        let joined = interrupt::join_all(vec![(THREAD.to_owned(), handle)])?;
        Ok(joined.into_iter().next().transpose()?.unwrap_or_default())
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        if let Err(error) = self.finish() {
            tracing::debug!(%error, "the scale-out connections' thread");
        }
    }
}

/// The client thread: opens the connections, then exchanges a line on each every [`PERIOD`]
/// until told to stop (or interrupted).
fn hold(roots: &RootCertStore, vip: SocketAddr, control: &Control) -> Result<Vec<Held>, LabError> {
    let config = client_config(roots)?;
    let mut conns = Vec::with_capacity(CONNECTIONS);
    let mut held = Vec::with_capacity(CONNECTIONS);
    for i in 0..CONNECTIONS {
        if interrupt::is_interrupted() {
            break;
        }
        let mut conn = TlsClientConn::connect_with(Arc::clone(&config), VIP_NAME, vip)?;
        let reply = conn.exchange(&format!("hello {i}"))?;
        held.push(Held {
            port: conn.local_addr().port(),
            backend: reply_backend(&reply).to_owned(),
            exchanges: 1,
            broken: None,
        });
        conns.push(Some(conn));
    }
    if let Ok(mut ports) = control.ports.lock() {
        *ports = held.iter().map(|h| h.port).collect();
    }
    let started = Instant::now();
    let mut round: u32 = 0;
    while !control.stop.load(Ordering::SeqCst) && !interrupt::is_interrupted() {
        for (i, (slot, story)) in conns.iter_mut().zip(&mut held).enumerate() {
            let Some(conn) = slot else { continue };
            let line = format!("{i} {round}");
            let expected = format!("{} {line}", story.backend);
            match conn.exchange(&line) {
                Ok(reply) if reply == expected => story.exchanges += 1,
                Ok(reply) => {
                    story.broken = Some(format!("a reply from another backend: {reply:?}"));
                    *slot = None;
                }
                Err(error) => {
                    story.broken = Some(error.to_string());
                    *slot = None;
                }
            }
        }
        control.rounds.fetch_add(1, Ordering::SeqCst);
        round += 1;
        let next = started + PERIOD * round;
        thread::sleep(next.saturating_duration_since(Instant::now()));
    }
    Ok(held)
}

/// Connections per backend: how many, lines exchanged, broken.
fn table(held: &[Held]) -> String {
    let mut per_backend: BTreeMap<&str, (usize, u64, usize)> = BTreeMap::new();
    for story in held {
        let row = per_backend.entry(story.backend.as_str()).or_default();
        row.0 += 1;
        row.1 += story.exchanges;
        row.2 += usize::from(story.broken.is_some());
    }
    let mut table = Table::new(&["BACKEND", "CONNECTIONS", "LINES EXCHANGED", "BROKEN"]);
    for (backend, (count, lines, broken)) in per_backend {
        table.row(vec![
            backend.to_owned(),
            count.to_string(),
            lines.to_string(),
            broken.to_string(),
        ]);
    }
    table.render()
}

/// Every connection opened and none broke.
fn check(held: &[Held]) -> Result<(), DemoError> {
    if held.len() != CONNECTIONS {
        return Err(DemoError::Claim(format!(
            "{} of {CONNECTIONS} connections opened",
            held.len()
        )));
    }
    let broken: Vec<String> = held
        .iter()
        .filter_map(|h| {
            h.broken
                .as_ref()
                .map(|why| format!("port {}: {why}", h.port))
        })
        .collect();
    if !broken.is_empty() {
        return Err(DemoError::Claim(format!(
            "{} of {CONNECTIONS} connections broke while nodes left (a flow that changes node must keep its backend): {}",
            broken.len(),
            broken.join("; ")
        )));
    }
    Ok(())
}
