//! Draining under load: 200 long-lived TLS connections run through the daemon while backend-1
//! is drained, by `lb backend drain --timeout 3s` or by `lb backend remove` in a pool with
//! `deregistration_delay = "2s"`. At once it is `draining` and takes no new connection; its
//! established connections keep working, without a failure or a stall, until the timeout;
//! then it leaves the pool and its remaining connections end (the README's policy: a removed
//! backend's flows are placed afresh, on a backend that has no such connection and resets it).
//! Connections to the other backends never notice.

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

use lb::{
    control::Body,
    lab::{
        daemon::DaemonPaths,
        passthrough::{VIP_V4, backend_v4, lab_config},
    },
};
use lb_tests::{
    backend_state::{backend, list_backends, wait_until_gone},
    clients::{assert_consistent, connect_parallel, count_per_backend},
    daemon_lab::{DaemonLab, TLS_PORT},
    histories::{assert_ended_after, assert_unharmed, on_backend, per_backend},
    long_lived::LongLived,
    pool_config::with_pool_setting,
};

const CONNECTIONS: usize = 200;
/// How often each connection exchanges a line.
const PERIOD: Duration = Duration::from_millis(100);
/// How long after the drain's end the backend may still be listed: the controller ends drains
/// on its 100 ms tick, and each poll of the list runs the CLI.
const REMOVAL_ALLOWANCE: Duration = Duration::from_millis(500);
/// The drained backend.
const DRAINED: usize = 1;

fn vip() -> SocketAddr {
    SocketAddr::new(IpAddr::V4(VIP_V4), TLS_PORT)
}

/// How a test starts the drain, and what the backend's state then says.
struct Drain<'a> {
    /// The CLI's arguments.
    args: &'a [&'a str],
    /// How long established connections may last.
    timeout: Duration,
    /// Part of the reason `lb backend list` gives for the state.
    reason: &'a str,
}

/// Runs the scenario of the module documentation with `drain`.
fn drain_under_load(prefix: &str, config: impl FnOnce(&DaemonPaths) -> String, drain: &Drain<'_>) {
    let mut env = DaemonLab::start(prefix, 3, config);
    let drained = IpAddr::V4(backend_v4(DRAINED));
    let name = format!("backend-{DRAINED}");
    let long_lived = LongLived::start(&env.lab, vip(), CONNECTIONS, PERIOD);
    thread::sleep(Duration::from_millis(500));

    let drained_at = Instant::now();
    let answer = env.cli_ok(drain.args);
    println!("lb {}: {answer}", drain.args.join(" "));
    let view = backend(&env, "web4", drained);
    assert_eq!(view.state, "draining", "at once: {view:?}");
    assert!(
        view.reason
            .as_deref()
            .is_some_and(|r| r.contains(drain.reason)),
        "{view:?}"
    );
    assert_eq!(view.table_slots, 0, "no new flows: {view:?}");

    let served = connect_parallel(&env.lab, vip(), 150, 3);
    assert_consistent(&env.lab, &served);
    let counts = count_per_backend(&served);
    assert!(
        !counts.contains_key(&name) && counts.len() == 2,
        "new connections during the drain: {counts:?}"
    );

    let gone_after = wait_until_gone(
        &env,
        "web4",
        drained,
        drained_at,
        drain.timeout + REMOVAL_ALLOWANCE,
        |view| assert_eq!(view.state, "draining", "until it goes: {view:?}"),
    );
    println!(
        "removed {gone_after:?} after the drain began (timeout {:?})",
        drain.timeout
    );
    assert!(
        gone_after >= drain.timeout,
        "removed after {gone_after:?}, before the timeout {:?}",
        drain.timeout
    );
    let remaining: Vec<IpAddr> = list_backends(&env, "web4")
        .iter()
        .map(|b| b.address)
        .collect();
    assert_eq!(remaining.len(), 2, "{remaining:?}");

    // Ten periods: every remaining connection of the drained backend tries again, and fails.
    thread::sleep(Duration::from_secs(1));
    let histories = long_lived.finish();
    println!("long-lived connections: {:?}", per_backend(&histories));
    let (on_drained, others) = on_backend(&histories, &name);
    assert!(!on_drained.is_empty(), "no connection was on {name}");
    let mut reasons: BTreeMap<String, usize> = BTreeMap::new();
    for h in &on_drained {
        let reason = assert_ended_after(h, drained_at + drain.timeout);
        *reasons.entry(reason).or_insert(0) += 1;
    }
    println!("the drained backend's connections ended with: {reasons:?}");
    // A reset arrives in answer to the next line (the read fails: reset by peer), or, if the
    // client's TCP sent something first (a delayed ACK), before it (the write fails: broken
    // pipe).
    for reason in reasons.keys() {
        assert!(
            reason.contains("reset by peer") || reason.contains("Broken pipe"),
            "a drained backend's connection ended otherwise than by a reset: {reasons:?}"
        );
    }
    for h in &others {
        assert_unharmed(h);
    }
    let Body::Stats(stats) = env.cli_json(&["stats"]) else {
        panic!("lb stats answered something else");
    };
    let stale = stats
        .counters
        .iter()
        .find(|c| c.name == "conn_stale")
        .expect("the conn_stale counter");
    assert!(
        stale.value >= on_drained.len() as u64,
        "each of the {} connections was placed afresh once: {stale:?}",
        on_drained.len()
    );

    let served = connect_parallel(&env.lab, vip(), 60, 3);
    assert_consistent(&env.lab, &served);
    assert!(
        !count_per_backend(&served).contains_key(&name),
        "a new connection reached the removed {name}"
    );
    env.stop_cleanly();
}

#[test]
fn a_drained_backend_keeps_its_connections_until_the_timeout_then_leaves() {
    let address = backend_v4(DRAINED).to_string();
    drain_under_load(
        "lbtdrn",
        |paths| lab_config(paths, 3),
        &Drain {
            args: &["backend", "drain", "web4", &address, "--timeout", "3s"],
            timeout: Duration::from_secs(3),
            reason: "lb backend drain",
        },
    );
}

#[test]
fn a_removal_with_a_deregistration_delay_drains_first() {
    let address = backend_v4(DRAINED).to_string();
    drain_under_load(
        "lbtdereg",
        |paths| {
            with_pool_setting(
                &lab_config(paths, 3),
                "web4",
                "deregistration_delay",
                "\"2s\"",
            )
        },
        &Drain {
            args: &["backend", "remove", "web4", &address],
            timeout: Duration::from_secs(2),
            reason: "deregistration delay",
        },
    );
}
