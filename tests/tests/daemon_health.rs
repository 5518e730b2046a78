//! Health checks end to end: the daemon probes each backend of pool `web4` every 200 ms
//! (timeout 100 ms, thresholds 2), and the policy table of `daemon::runtime` decides what a
//! failing backend's flows do:
//!
//! - a backend whose process dies (connection refused) is `unhealthy` within the settings'
//!   bound, leaves the table, and comes back when its process does;
//! - a backend that accepts TCP but fails an HTTP check is `unhealthy` too and takes no new
//!   flows, but its established connections keep working;
//! - when every backend fails, the pool fails open (new connections still spread over all of
//!   them), unless `fail_open = false`, when connections to the VIP fail.
//!
//! The bounds are the correctness property (interval × threshold + interval), plus
//! [`ALLOWANCE`] for scheduling; they are not benchmarks.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a test panics with a message; helpers here are part of the tests"
)]

use std::{
    net::{IpAddr, SocketAddr, TcpStream},
    thread,
    time::{Duration, Instant, SystemTime},
};

use lb::{
    control::Body,
    lab::passthrough::{VIP_V4, backend_v4, lab_config},
};
use lb_tests::{
    backend_state::{assert_changed_since, backend, list_backends, wait_for_state},
    clients::{assert_consistent, connect_parallel, count_per_backend, run_parallel},
    daemon_lab::{DaemonLab, TLS_PORT},
    health_endpoint::{Answer, HealthEndpoint},
    histories::{assert_unharmed, on_backend, per_backend},
    long_lived::LongLived,
    pool_config::{HealthCheck, with_health_check},
};

/// How often each long-lived connection exchanges a line.
const PERIOD: Duration = Duration::from_millis(100);
/// Scheduling allowance on top of the settings' bound: the probe task's timer, the controller
/// thread and its reconcile, and one poll of `lb backend list` (a process started per poll).
const ALLOWANCE: Duration = Duration::from_millis(200);
/// The port of the plain-HTTP health endpoints (the TLS servers hold 443).
const HEALTH_PORT: u16 = 8080;
/// How long a connection attempt to a pool that takes none may take to fail.
const SHORT_CONNECT: Duration = Duration::from_millis(500);

fn vip() -> SocketAddr {
    SocketAddr::new(IpAddr::V4(VIP_V4), TLS_PORT)
}

fn address(i: usize) -> IpAddr {
    IpAddr::V4(backend_v4(i))
}

/// The lab's configuration with `check` on pool `web4` (pool `web6` is not checked: its
/// backends' own IPv6 addresses serve nothing).
fn checked_config(paths: &lb::lab::daemon::DaemonPaths, check: &HealthCheck) -> String {
    with_health_check(&lab_config(paths, 3), "web4", check)
}

/// Waits until every backend of `web4` has passed a few checks since the daemon started (they
/// start healthy; this makes sure none is about to fail).
fn wait_settled(env: &DaemonLab, check: &HealthCheck) {
    thread::sleep(check.interval * (check.unhealthy_threshold + 1));
    for i in 0..3 {
        let view = backend(env, "web4", address(i));
        assert_eq!(view.state, "healthy", "{view:?}\n{}", env.daemon.log());
    }
}

#[test]
fn a_dead_backend_leaves_the_table_and_comes_back() {
    let check = HealthCheck::fast_tcp(TLS_PORT);
    let mut env = DaemonLab::start("lbthdead", 3, |paths| checked_config(paths, &check));
    let dead = address(1);
    wait_settled(&env, &check);
    let long_lived = LongLived::start(&env.lab, vip(), 90, PERIOD);
    thread::sleep(Duration::from_millis(500));

    // Its process dies: checks are refused.
    let (stopped_wall, stopped) = (SystemTime::now(), Instant::now());
    env.lab.stop_backend(1);
    let bound = check.bound(check.unhealthy_threshold, ALLOWANCE);
    let (view, took) = wait_for_state(&env, "web4", dead, "unhealthy", stopped, bound);
    println!(
        "unhealthy after {took:?} (bound {bound:?}): {:?}",
        view.reason
    );
    let reason = view.reason.clone().unwrap_or_default();
    assert!(reason.contains("connection refused"), "{view:?}");
    assert_changed_since(&view, stopped_wall);
    assert_eq!(view.table_slots, 0, "out of the table: {view:?}");
    let listed = env.cli_ok(&["backend", "list", "web4"]);
    let line = listed
        .lines()
        .find(|l| l.contains(&dead.to_string()))
        .unwrap_or_else(|| panic!("{dead} not listed:\n{listed}"));
    assert!(
        line.contains("unhealthy") && line.contains("0.0%"),
        "{listed}"
    );

    let served = connect_parallel(&env.lab, vip(), 60, 3);
    assert_consistent(&env.lab, &served);
    let counts = count_per_backend(&served);
    assert!(
        !counts.contains_key("backend-1") && counts.len() == 2,
        "new connections go to the two live backends only: {counts:?}"
    );
    thread::sleep(Duration::from_millis(300));
    let histories = long_lived.finish();
    let (on_dead, others) = on_backend(&histories, "backend-1");
    println!("long-lived connections: {:?}", per_backend(&histories));
    assert!(!on_dead.is_empty(), "no connection was on backend-1");
    for h in &others {
        assert_unharmed(h);
    }

    // Its process comes back: checks pass again.
    env.lab
        .start_backend(1, TLS_PORT)
        .expect("restarting backend-1");
    let (restarted_wall, restarted) = (SystemTime::now(), Instant::now());
    let bound = check.bound(check.healthy_threshold, ALLOWANCE);
    let (view, took) = wait_for_state(&env, "web4", dead, "healthy", restarted, bound);
    println!(
        "healthy again after {took:?} (bound {bound:?}): {:?}",
        view.reason
    );
    assert!(
        view.reason
            .as_deref()
            .is_some_and(|r| r.contains("consecutive checks passed")),
        "{view:?}"
    );
    assert_changed_since(&view, restarted_wall);
    assert!(view.table_slots > 0, "back in the table: {view:?}");
    let served = connect_parallel(&env.lab, vip(), 60, 3);
    assert_consistent(&env.lab, &served);
    let counts = count_per_backend(&served);
    assert!(
        counts.get("backend-1").copied().unwrap_or(0) > 0 && counts.len() == 3,
        "new connections reach backend-1 again: {counts:?}"
    );
    env.stop_cleanly();
}

/// Starts a plain-HTTP health endpoint on each backend's own address.
fn start_endpoints(lab: &lb::lab::passthrough::PassthroughLab) -> Vec<HealthEndpoint> {
    lab.backends
        .iter()
        .map(|b| HealthEndpoint::start(&b.ns, SocketAddr::new(IpAddr::V4(b.v4), HEALTH_PORT)))
        .collect()
}

#[test]
fn a_backend_failing_its_check_but_reachable_keeps_its_flows() {
    let check = HealthCheck::fast_http(HEALTH_PORT, "/healthz");
    let (mut env, endpoints) = DaemonLab::start_prepared("lbthfail", 3, start_endpoints, |paths| {
        checked_config(paths, &check)
    });
    let failing = address(1);
    wait_settled(&env, &check);
    let long_lived = LongLived::start(&env.lab, vip(), 90, PERIOD);
    thread::sleep(Duration::from_millis(500));

    // It still accepts TCP connections, but answers its check with something that is not HTTP.
    let (broke_wall, broke) = (SystemTime::now(), Instant::now());
    endpoints[1].set_answer(Answer::NotHttp);
    let bound = check.bound(check.unhealthy_threshold, ALLOWANCE);
    let (view, took) = wait_for_state(&env, "web4", failing, "unhealthy", broke, bound);
    println!(
        "unhealthy after {took:?} (bound {bound:?}): {:?}",
        view.reason
    );
    assert!(
        view.reason
            .as_deref()
            .is_some_and(|r| r.contains("not HTTP")),
        "{view:?}"
    );
    assert_changed_since(&view, broke_wall);
    assert_eq!(view.table_slots, 0, "out of the table: {view:?}");

    let served = connect_parallel(&env.lab, vip(), 60, 3);
    assert_consistent(&env.lab, &served);
    let counts = count_per_backend(&served);
    assert!(
        !counts.contains_key("backend-1") && counts.len() == 2,
        "no new connection reaches the failing backend: {counts:?}"
    );
    // Its established connections go on exchanging, none reset.
    thread::sleep(Duration::from_secs(1));
    let histories = long_lived.finish();
    let (on_failing, _) = on_backend(&histories, "backend-1");
    println!("long-lived connections: {:?}", per_backend(&histories));
    assert!(!on_failing.is_empty(), "no connection was on backend-1");
    for h in &histories {
        assert_unharmed(h);
    }
    let Body::Stats(stats) = env.cli_json(&["stats"]) else {
        panic!("lb stats answered something else");
    };
    let stale = stats.counters.iter().find(|c| c.name == "conn_stale");
    assert!(
        stale.is_none_or(|c| c.value == 0),
        "no flow was placed afresh: {stale:?}"
    );

    // Fixed: it passes again and takes new connections.
    endpoints[1].set_answer(Answer::Ok);
    let fixed = Instant::now();
    let bound = check.bound(check.healthy_threshold, ALLOWANCE);
    let (view, took) = wait_for_state(&env, "web4", failing, "healthy", fixed, bound);
    println!("healthy again after {took:?} (bound {bound:?})");
    assert!(view.table_slots > 0, "{view:?}");
    let served = connect_parallel(&env.lab, vip(), 60, 3);
    assert_consistent(&env.lab, &served);
    assert_eq!(
        count_per_backend(&served).len(),
        3,
        "all three take new ones"
    );
    env.stop_cleanly();
}

/// Waits until every backend of `web4` is unhealthy; returns their views.
fn wait_all_unhealthy(env: &DaemonLab, check: &HealthCheck) -> Vec<lb::control::BackendView> {
    let started = Instant::now();
    let bound = check.bound(check.unhealthy_threshold, ALLOWANCE) + Duration::from_secs(1);
    for i in 0..3 {
        wait_for_state(env, "web4", address(i), "unhealthy", started, bound);
    }
    let views = list_backends(env, "web4");
    for view in &views {
        assert_eq!(view.state, "unhealthy", "{views:#?}");
        println!("{}: {:?}", view.address, view.reason);
        let reason = view.reason.as_deref().unwrap_or_default();
        // The lab's TLS servers answer a plain-text request with a TLS alert: connected, but
        // not HTTP.
        assert!(reason.contains("not HTTP"), "{view:?}");
    }
    views
}

/// An HTTP check of the TLS servers' port: every backend connects, none speaks HTTP.
fn failing_everywhere() -> HealthCheck {
    HealthCheck::fast_http(TLS_PORT, "/healthz")
}

#[test]
fn when_every_backend_fails_its_check_the_pool_fails_open() {
    let check = failing_everywhere();
    let mut env = DaemonLab::start("lbthopen", 3, |paths| checked_config(paths, &check));
    let views = wait_all_unhealthy(&env, &check);
    for view in &views {
        assert!(
            view.table_slots > 0,
            "fail open: still in the table: {view:?}"
        );
    }
    let served = connect_parallel(&env.lab, vip(), 90, 3);
    assert_consistent(&env.lab, &served);
    let counts = count_per_backend(&served);
    assert_eq!(counts.len(), 3, "spread over all of them: {counts:?}");
    env.stop_cleanly();
}

#[test]
fn with_fail_open_off_a_pool_whose_backends_all_fail_takes_no_connection() {
    let check = HealthCheck {
        fail_open: Some(false),
        ..failing_everywhere()
    };
    let mut env = DaemonLab::start("lbthclosed", 3, |paths| checked_config(paths, &check));
    let views = wait_all_unhealthy(&env, &check);
    for view in &views {
        assert_eq!(
            view.table_slots, 0,
            "fail closed: out of the table: {view:?}"
        );
    }
    let vip = vip();
    let attempts = run_parallel(&env.lab.client, 5, 5, move |_| {
        TcpStream::connect_timeout(&vip, SHORT_CONNECT).map(|_| ())
    });
    for attempt in &attempts {
        let Err(error) = attempt else {
            panic!("a connection to {vip} succeeded with every backend failing and fail_open off");
        };
        println!("connection attempt: {error}");
    }
    let Body::Stats(stats) = env.cli_json(&["stats"]) else {
        panic!("lb stats answered something else");
    };
    let no_backend = stats
        .counters
        .iter()
        .find(|c| c.name == "drop_no_backend")
        .expect("the drop_no_backend counter");
    assert!(
        no_backend.value >= 5,
        "the SYNs were dropped for want of a backend: {no_backend:?}"
    );
    env.stop_cleanly();
}
