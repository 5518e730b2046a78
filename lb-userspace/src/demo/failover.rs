//! Step 3: a backend removed under load, with the real CLI.
//!
//! One thread in the client namespace ([`hold`]) opens [`CONNECTIONS`] long-lived TLS
//! connections to the IPv4 VIP and sends a line on each every [`PERIOD`], checking every reply
//! comes from the backend that answered first. Once a few rounds went by, `run` removes the
//! last backend from pool `web4` (`lb backend remove`), lets the exchanges go on for
//! [`AFTER_REMOVAL`], stops the thread and gets each connection's story back ([`Held`]).
//!
//! The policy shown (README, Policies): established flows stay on their backend while it
//! serves, so the other backends' connections never notice; a removed backend's flows are
//! placed afresh by the new table on their next packet, and the backend they land on has no
//! such connection and resets it.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use lb_common::counters::Counter;
use rustls::RootCertStore;

use super::{DemoError, POOL_V4, PORT, backend_of, interrupt, print_cli, reply_backend, stats};
use crate::cli::render::Table;
use crate::lab::daemon::DaemonProcess;
use crate::lab::passthrough::{LabBackend, PassthroughLab, VIP_NAME, VIP_V4};
use crate::lab::{LabError, TlsClientConn, client_config};

/// Long-lived connections, and how often each exchanges a line.
const CONNECTIONS: usize = 60;
const PERIOD: Duration = Duration::from_millis(100);

/// Rounds of exchanges before the removal, and how long exchanges go on after it.
const ROUNDS_BEFORE: u64 = 3;
const AFTER_REMOVAL: Duration = Duration::from_secs(2);

/// The client thread's name.
const THREAD: &str = "demo-long-lived";

/// How long opening the connections and the first rounds may take.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(30);

/// What step 3 established.
#[derive(Debug)]
pub struct Failover {
    /// The removed backend's name.
    pub removed: String,
    /// Connections to the other backends (all still working).
    pub surviving: usize,
    /// Connections to the removed backend (all ended).
    pub ended: usize,
}

/// What the main thread and the client thread share.
#[derive(Debug, Default)]
struct Control {
    /// Set just before the CLI removes the backend.
    removing: AtomicBool,
    /// Set when the client thread should stop.
    stop: AtomicBool,
    /// Rounds completed.
    rounds: AtomicU64,
}

/// One long-lived connection's story.
#[derive(Debug)]
struct Held {
    /// subjectAltNames of the certificate the client verified.
    peer_names: Vec<String>,
    /// The backend named by the first reply.
    identity: String,
    /// Lines exchanged after the removal began.
    after_removal: u64,
    /// How the connection ended, if it did.
    ended: Option<Ended>,
}

/// How and when a connection ended.
#[derive(Debug)]
struct Ended {
    /// Whether the removal had begun.
    during_removal: bool,
    at: Instant,
    /// `reset`, `closed`, `timed out`, or the error.
    how: String,
}

/// Runs step 3 and prints what happened to each group of connections.
pub fn run(lab: &PassthroughLab, daemon: &DaemonProcess) -> Result<Failover, DemoError> {
    let Some(removed) = lab.backends.last() else {
        return Err(DemoError::Claim("the lab has no backends".to_owned()));
    };
    let vip = SocketAddr::new(IpAddr::V4(VIP_V4), PORT);
    println!(
        "\n[3/6] {CONNECTIONS} long-lived TLS connections to {vip}, a line each every {} ms; then {} leaves the pool",
        PERIOD.as_millis(),
        removed.name
    );
    let mut worker = Worker::start(lab, vip)?;
    worker.wait_for_rounds(ROUNDS_BEFORE)?;

    worker.control.removing.store(true, Ordering::SeqCst);
    let removed_at = Instant::now();
    print_cli(
        daemon,
        &["backend", "remove", POOL_V4, &removed.v4.to_string()],
    )?;
    interrupt::sleep(AFTER_REMOVAL)?;
    let held = worker.finish()?;

    let groups = Groups::of(lab, removed, &held)?;
    println!(
        "policy (README): established flows stay on their backend; a removed backend's flows are re-placed on their next packet and reset by their new backend"
    );
    println!("{:.1} s of exchanges later:", AFTER_REMOVAL.as_secs_f64());
    print!("{}", groups.table(lab, removed, removed_at));
    groups.check(removed)?;
    let stale = stats::counter(&stats::fetch(daemon)?, Counter::ConnStale);
    println!(
        "XDP conn_stale: {stale} (packets of flows whose backend left, placed afresh by the table)"
    );
    print_cli(daemon, &["backend", "list", POOL_V4])?;
    Ok(Failover {
        removed: removed.name.clone(),
        surviving: groups.surviving.len(),
        ended: groups.removed.len(),
    })
}

/// The client thread, stopped and joined when dropped.
struct Worker {
    control: Arc<Control>,
    handle: Option<JoinHandle<Result<Vec<Held>, LabError>>>,
}

impl Worker {
    fn start(lab: &PassthroughLab, vip: SocketAddr) -> Result<Self, DemoError> {
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

    /// Waits until `rounds` rounds of exchanges completed (all connections open).
    fn wait_for_rounds(&mut self, rounds: u64) -> Result<(), DemoError> {
        let deadline = Instant::now() + SETTLE_TIMEOUT;
        while self.control.rounds.load(Ordering::SeqCst) < rounds {
            let finished = self.handle.as_ref().is_none_or(JoinHandle::is_finished);
            if finished {
                // It ended early: interrupted, or it could not connect.
                self.finish()?;
                interrupt::check()?;
                return Err(DemoError::Claim(
                    "the long-lived connections stopped before the removal".to_owned(),
                ));
            }
            if Instant::now() > deadline {
                return Err(DemoError::Claim(format!(
                    "{CONNECTIONS} connections did not open and exchange {rounds} rounds within {SETTLE_TIMEOUT:?}"
                )));
            }
            interrupt::sleep(PERIOD / 2)?;
        }
        Ok(())
    }

    /// Stops the thread and returns its connections.
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
            tracing::debug!(%error, "the long-lived connections' thread");
        }
    }
}

/// The client thread: opens the connections, then exchanges a line on each every [`PERIOD`]
/// until told to stop (or interrupted).
fn hold(roots: &RootCertStore, vip: SocketAddr, control: &Control) -> Result<Vec<Held>, LabError> {
    let (mut conns, mut held) = open_all(roots, vip)?;
    let started = Instant::now();
    let mut round: u32 = 0;
    while !control.stop.load(Ordering::SeqCst) && !interrupt::is_interrupted() {
        exchange_round(&mut conns, &mut held, round, control);
        control.rounds.fetch_add(1, Ordering::SeqCst);
        round += 1;
        let next = started + PERIOD * round;
        thread::sleep(next.saturating_duration_since(Instant::now()));
    }
    Ok(held)
}

/// Opens [`CONNECTIONS`] connections and exchanges a first line on each, which tells the
/// backend's name. Stops early when interrupted.
fn open_all(
    roots: &RootCertStore,
    vip: SocketAddr,
) -> Result<(Vec<Option<TlsClientConn>>, Vec<Held>), LabError> {
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
            peer_names: conn.peer_names(),
            identity: reply_backend(&reply).to_owned(),
            after_removal: 0,
            ended: None,
        });
        conns.push(Some(conn));
    }
    Ok((conns, held))
}

/// One line on every open connection; a connection whose exchange fails, or whose reply is
/// not from its backend, ends (and is closed).
fn exchange_round(
    conns: &mut [Option<TlsClientConn>],
    held: &mut [Held],
    round: u32,
    control: &Control,
) {
    for (i, (slot, story)) in conns.iter_mut().zip(held).enumerate() {
        let Some(conn) = slot else { continue };
        let line = format!("{i} {round}");
        let expected = format!("{} {line}", story.identity);
        let how = match conn.exchange(&line) {
            Ok(reply) if reply == expected => None,
            Ok(reply) => Some(format!("wrong reply {reply:?}")),
            Err(error) => Some(describe_end(&error)),
        };
        let during_removal = control.removing.load(Ordering::SeqCst);
        match how {
            None if during_removal => story.after_removal += 1,
            None => {}
            Some(how) => {
                story.ended = Some(Ended {
                    during_removal,
                    at: Instant::now(),
                    how,
                });
                *slot = None;
            }
        }
    }
}

/// A short word for how a connection ended.
fn describe_end(error: &LabError) -> String {
    match error {
        LabError::Io { source, .. } => match source.kind() {
            std::io::ErrorKind::ConnectionReset => "reset".to_owned(),
            std::io::ErrorKind::TimedOut | std::io::ErrorKind::WouldBlock => "timed out".to_owned(),
            _ => error.to_string(),
        },
        LabError::Closed { .. } => "closed".to_owned(),
        other => other.to_string(),
    }
}

/// The connections, by where they were: on a surviving backend or on the removed one.
#[derive(Debug)]
struct Groups<'a> {
    surviving: Vec<&'a Held>,
    removed: Vec<&'a Held>,
}

impl<'a> Groups<'a> {
    /// Sorts the connections by the backend the certificate named (which must be the one
    /// that replied).
    fn of(lab: &PassthroughLab, removed: &LabBackend, held: &'a [Held]) -> Result<Self, DemoError> {
        let mut groups = Self {
            surviving: Vec::new(),
            removed: Vec::new(),
        };
        for story in held {
            let cert = backend_of(lab, &story.peer_names);
            if cert.as_deref() != Some(story.identity.as_str()) {
                return Err(DemoError::Claim(format!(
                    "a long-lived connection saw the certificate {:?} but a reply from {:?}",
                    story.peer_names, story.identity
                )));
            }
            if story.identity == removed.name {
                groups.removed.push(story);
            } else {
                groups.surviving.push(story);
            }
        }
        Ok(groups)
    }

    /// Surviving connections all still work and kept exchanging; the removed backend's all
    /// ended after the removal; both groups are non-empty.
    fn check(&self, removed: &LabBackend) -> Result<(), DemoError> {
        let claim = |text: String| Err(DemoError::Claim(text));
        if self.surviving.is_empty() || self.removed.is_empty() {
            return claim(format!(
                "{CONNECTIONS} connections gave {} to {} and {} to the others: both groups should have some",
                self.removed.len(),
                removed.name,
                self.surviving.len()
            ));
        }
        if let Some(end) = self
            .surviving
            .iter()
            .chain(&self.removed)
            .filter_map(|h| h.ended.as_ref())
            .find(|end| !end.during_removal)
        {
            return claim(format!(
                "a long-lived connection ended before any backend was removed: {}",
                end.how
            ));
        }
        let broken = self.surviving.iter().filter(|h| h.ended.is_some()).count();
        if broken > 0 {
            return claim(format!(
                "{broken} of {} connections to the surviving backends broke when {} was removed: established flows should stay",
                self.surviving.len(),
                removed.name
            ));
        }
        if let Some(idle) = self.surviving.iter().find(|h| h.after_removal == 0) {
            return claim(format!(
                "a connection to {} exchanged nothing after the removal",
                idle.identity
            ));
        }
        let open = self.removed.iter().filter(|h| h.ended.is_none()).count();
        if open > 0 {
            return claim(format!(
                "{open} of {} connections to the removed {} still work: its flows should have been placed afresh",
                self.removed.len(),
                removed.name
            ));
        }
        Ok(())
    }

    /// Both groups, one row each, as measured.
    fn table(&self, lab: &PassthroughLab, removed: &LabBackend, removed_at: Instant) -> String {
        let others: Vec<&str> = lab
            .backends
            .iter()
            .filter(|b| b.name != removed.name)
            .map(|b| b.name.as_str())
            .collect();
        let mut table = Table::new(&["CONNECTIONS TO", "COUNT", "STILL WORKING", "ENDED"]);
        table.row(group_row(others.join(", "), &self.surviving, removed_at));
        table.row(group_row(
            format!("{} (removed)", removed.name),
            &self.removed,
            removed_at,
        ));
        table.render()
    }
}

/// `label, count, working (lines exchanged since the removal), ended (how, how soon)`.
fn group_row(label: String, group: &[&Held], removed_at: Instant) -> Vec<String> {
    let working = group.iter().filter(|h| h.ended.is_none()).count();
    let lines: u64 = group.iter().map(|h| h.after_removal).sum();
    let mut hows: BTreeMap<&str, usize> = BTreeMap::new();
    let mut latest = Duration::ZERO;
    for end in group.iter().filter_map(|h| h.ended.as_ref()) {
        *hows.entry(end.how.as_str()).or_insert(0) += 1;
        latest = latest.max(end.at.saturating_duration_since(removed_at));
    }
    let ended = group.len() - working;
    let ended = if ended == 0 {
        "0".to_owned()
    } else {
        let hows: Vec<String> = hows.iter().map(|(how, n)| format!("{how} {n}")).collect();
        format!(
            "{ended} ({}), within {} ms of the removal",
            hows.join(", "),
            latest.as_millis()
        )
    };
    let working = if working == 0 {
        "0".to_owned()
    } else {
        format!("{working} ({lines} lines since)")
    };
    vec![label, group.len().to_string(), working, ended]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn held(after_removal: u64, ended: Option<(&str, u64)>, removed_at: Instant) -> Held {
        Held {
            peer_names: Vec::new(),
            identity: "backend-0".to_owned(),
            after_removal,
            ended: ended.map(|(how, ms)| Ended {
                during_removal: true,
                at: removed_at + Duration::from_millis(ms),
                how: how.to_owned(),
            }),
        }
    }

    #[test]
    fn a_group_row_counts_working_and_ended_connections() {
        let at = Instant::now();
        let working = [held(20, None, at), held(19, None, at)];
        let row = group_row("b".to_owned(), &working.iter().collect::<Vec<_>>(), at);
        assert_eq!(row, ["b", "2", "2 (39 lines since)", "0"]);

        let ended = [
            held(0, Some(("reset", 40)), at),
            held(1, Some(("reset", 90)), at),
            held(0, Some(("timed out", 10)), at),
        ];
        let row = group_row("r".to_owned(), &ended.iter().collect::<Vec<_>>(), at);
        assert_eq!(
            row,
            [
                "r",
                "3",
                "0",
                "3 (reset 2, timed out 1), within 90 ms of the removal"
            ]
        );
    }
}
