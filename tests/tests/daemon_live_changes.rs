//! Changes made with the CLI while long-lived TLS connections run through the daemon: a backend
//! added, a weight changed, a backend removed. Connections to backends that stay never notice
//! (no error, no stall); connections to the removed backend are re-placed on their next packet
//! (README, "Policies"), reach a backend that has no such connection, and end with an error.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a test panics with a message; helpers here are part of the tests"
)]

use std::{
    collections::BTreeMap,
    net::{IpAddr, SocketAddr},
    thread,
    time::{Duration, Instant},
};

use lb::lab::passthrough::{VIP_V4, backend_v4, lab_config};
use lb_tests::{
    clients::{assert_consistent, connect_parallel},
    daemon_lab::{DaemonLab, TLS_PORT},
    long_lived::{History, LongLived},
};

const CONNECTIONS: usize = 200;
/// How often each connection exchanges a line.
const PERIOD: Duration = Duration::from_millis(100);
/// The longest a connection to a backend that stays may go without a successful exchange.
const MAX_STALL: Duration = Duration::from_secs(1);
/// Time between the changes, and after the last one: several exchanges each.
const SETTLE: Duration = Duration::from_millis(700);

/// Checks that a connection never failed and never stalled.
fn assert_unharmed(h: &History) {
    let local = h.served.local;
    let backend = &h.served.cert_backend;
    if let Some((_, reason)) = &h.failure {
        panic!(
            "{local} on {backend} failed after {} exchanges: {reason}",
            h.exchanges
        );
    }
    assert!(
        h.max_gap <= MAX_STALL,
        "{local} on {backend} went {:?} without an exchange",
        h.max_gap
    );
}

/// Connections per backend (by certificate).
fn count_histories(histories: &[History]) -> BTreeMap<&str, usize> {
    let mut counts = BTreeMap::new();
    for h in histories {
        *counts.entry(h.served.cert_backend.as_str()).or_insert(0) += 1;
    }
    counts
}

#[test]
fn backends_added_reweighted_and_removed_under_long_lived_connections() {
    // Four backends in the lab, three in the pool: backend-3 is added at run time.
    let mut env = DaemonLab::start("lbtlive", 4, |paths| lab_config(paths, 3));
    let vip = SocketAddr::new(IpAddr::V4(VIP_V4), TLS_PORT);
    let (added, reweighted, removed) = (3, 2, 1);
    let name = |i: usize| format!("backend-{i}");
    let address = |i: usize| backend_v4(i).to_string();

    let long_lived = LongLived::start(&env.lab, vip, CONNECTIONS, PERIOD);
    thread::sleep(SETTLE);
    env.cli_ok(&["backend", "add", "web4", &address(added)]);
    thread::sleep(SETTLE);
    env.cli_ok(&["backend", "set-weight", "web4", &address(reweighted), "3"]);
    thread::sleep(SETTLE);
    let removed_at = Instant::now();
    env.cli_ok(&["backend", "remove", "web4", &address(removed)]);
    thread::sleep(2 * SETTLE);
    let histories = long_lived.finish();

    let per_backend = count_histories(&histories);
    println!("long-lived connections per backend: {per_backend:?}");
    for i in 0..3 {
        assert!(
            per_backend.get(name(i).as_str()).copied().unwrap_or(0) > 0,
            "no long-lived connection reached {}: {per_backend:?}",
            name(i)
        );
    }
    assert_eq!(
        per_backend.len(),
        3,
        "only the pool's backends: {per_backend:?}"
    );

    let (on_removed, stayed): (Vec<&History>, Vec<&History>) = histories
        .iter()
        .partition(|h| h.served.cert_backend == name(removed));
    for h in &stayed {
        assert_unharmed(h);
    }
    let mut reasons: BTreeMap<String, usize> = BTreeMap::new();
    for h in &on_removed {
        let Some((failed_at, reason)) = &h.failure else {
            panic!(
                "{} on the removed {} kept working ({} exchanges)",
                h.served.local, h.served.cert_backend, h.exchanges
            );
        };
        assert!(
            *failed_at > removed_at,
            "{} on {} failed before the removal: {reason}",
            h.served.local,
            h.served.cert_backend
        );
        assert!(
            h.max_gap <= MAX_STALL,
            "{} on {} went {:?} without an exchange before it failed",
            h.served.local,
            h.served.cert_backend,
            h.max_gap
        );
        *reasons.entry(reason.clone()).or_insert(0) += 1;
    }
    println!("connections to the removed backend ended with: {reasons:?}");

    // New connections follow the new table: the added backend takes some, the removed none.
    let served = connect_parallel(&env.lab, vip, 300, 3);
    assert_consistent(&env.lab, &served);
    let new_on = |i: usize| served.iter().filter(|s| s.cert_backend == name(i)).count();
    assert!(
        new_on(added) > 0,
        "no new connection reached the added backend"
    );
    assert_eq!(
        new_on(removed),
        0,
        "new connections reached the removed backend"
    );
    env.stop_cleanly();
}

#[test]
fn a_backend_drained_to_weight_0_keeps_its_connections_and_takes_no_new_ones() {
    let mut env = DaemonLab::start("lbtdrain", 3, |paths| lab_config(paths, 3));
    let vip = SocketAddr::new(IpAddr::V4(VIP_V4), TLS_PORT);
    let drained = "backend-1";

    let long_lived = LongLived::start(&env.lab, vip, 100, PERIOD);
    thread::sleep(SETTLE);
    env.cli_ok(&[
        "backend",
        "set-weight",
        "web4",
        &backend_v4(1).to_string(),
        "0",
    ]);
    let listed = env.cli_ok(&["backend", "list", "web4"]);
    assert!(
        listed
            .lines()
            .any(|l| l.contains(&backend_v4(1).to_string()) && l.contains("disabled")),
        "{listed}"
    );
    let served = connect_parallel(&env.lab, vip, 300, 3);
    thread::sleep(SETTLE);
    let histories = long_lived.finish();

    let per_backend = count_histories(&histories);
    assert!(per_backend.contains_key(drained), "{per_backend:?}");
    for h in &histories {
        assert_unharmed(h);
    }
    assert_consistent(&env.lab, &served);
    assert!(
        served.iter().all(|s| s.cert_backend != drained),
        "a new connection reached the draining {drained}"
    );
    env.stop_cleanly();
}
