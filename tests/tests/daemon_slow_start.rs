//! Slow start end to end: a pool with `slow_start = "3s"`. A backend added with the CLI, and
//! one that recovers after its health check found it dead, enter the live Maglev table with a
//! tenth of their weight and ramp up to their full share over the slow start, as `lb backend
//! list` shows the table; new connections follow the table.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a test panics with a message; helpers here are part of the tests"
)]

use std::{
    net::{IpAddr, SocketAddr},
    thread,
    time::{Duration, Instant},
};

use lb::lab::passthrough::{VIP_V4, backend_v4, lab_config};
use lb_tests::{
    backend_state::{list_backends, wait_for_state},
    clients::{assert_consistent, connect_parallel, count_per_backend},
    daemon_lab::{DaemonLab, TLS_PORT},
    pool_config::{HealthCheck, with_health_check, with_pool_setting},
};

const POOL: &str = "web4";
const SLOW_START: Duration = Duration::from_secs(3);
/// Four backends of equal weight: each one's full share of the table.
const FULL_SHARE: f64 = 0.25;
/// A share within this of another counts as the same (a Maglev table of equal weights is
/// within a fraction of a percent of equal shares; a tenth of the weight less is 2.5 points).
const SHARE_TOLERANCE: f64 = 0.01;

fn vip() -> SocketAddr {
    SocketAddr::new(IpAddr::V4(VIP_V4), TLS_PORT)
}

/// The shares of the table of `address` and of the largest other backend.
fn shares(env: &DaemonLab, address: IpAddr) -> (f64, f64) {
    let backends = list_backends(env, POOL);
    let share = |b: &lb::control::BackendView| f64::from(b.table_slots) / f64::from(b.ring_size);
    let mine = backends
        .iter()
        .find(|b| b.address == address)
        .map_or(0.0, share);
    let others = backends
        .iter()
        .filter(|b| b.address != address)
        .map(share)
        .fold(0.0, f64::max);
    (mine, others)
}

/// Watches `address` ramp up from `since` (when it joined the table): it starts small, never
/// shrinks by more than the tolerance, takes several steps, and holds its full share only
/// once (about) 80% of the slow start has passed, and by one second after it at the latest.
fn assert_ramps(env: &DaemonLab, address: IpAddr, since: Instant, what: &str) {
    let (first, _) = shares(env, address);
    assert!(
        first < 0.1,
        "{what}: {address} starts at {first:.3} of the table, not a small part of it"
    );
    let mut samples = vec![(since.elapsed(), first)];
    loop {
        thread::sleep(Duration::from_millis(100));
        let (mine, others) = shares(env, address);
        let at = since.elapsed();
        let (_, previous) = *samples.last().unwrap();
        assert!(
            mine >= previous - SHARE_TOLERANCE,
            "{what}: {address} shrank from {previous:.3} to {mine:.3} at {at:?}: {samples:?}"
        );
        samples.push((at, mine));
        if (mine - others).abs() < SHARE_TOLERANCE && (mine - FULL_SHARE).abs() < SHARE_TOLERANCE {
            // The last step begins at 90% of the slow start, counted from the wall-clock
            // multiple of a step before the backend joined (up to a step, 10%, earlier);
            // `since` is when a poll saw it join, a poll and a controller tick after it did.
            assert!(
                at >= SLOW_START.mul_f64(0.75),
                "{what}: {address} had its full share {mine:.3} after only {at:?}: {samples:?}"
            );
            break;
        }
        assert!(
            at < SLOW_START + Duration::from_secs(1),
            "{what}: {address} still at {mine:.3} (others {others:.3}) after {at:?}: {samples:?}"
        );
    }
    let mut steps: Vec<f64> = samples.iter().map(|&(_, share)| share).collect();
    steps.dedup_by(|a, b| (*a - *b).abs() < 0.005);
    assert!(
        steps.len() >= 5,
        "{what}: {address} ramped in too few steps: {samples:?}"
    );
}

#[test]
fn joining_and_recovering_backends_ramp_up_over_the_slow_start() {
    let check = HealthCheck::fast_tcp(TLS_PORT);
    let mut env = DaemonLab::start("lbtslow", 4, |paths| {
        let config = with_health_check(&lab_config(paths, 3), POOL, &check);
        with_pool_setting(&config, POOL, "slow_start", "\"3s\"")
    });

    // A backend added with the CLI joins at a tenth of its weight; new connections follow.
    let added = IpAddr::V4(backend_v4(3));
    let joined = Instant::now();
    env.cli_ok(&["backend", "add", POOL, &added.to_string()]);
    let (early, _) = shares(&env, added);
    let served = connect_parallel(&env.lab, vip(), 200, 4);
    assert_consistent(&env.lab, &served);
    let on_added = count_per_backend(&served)
        .get(&env.lab.backends[3].name)
        .copied()
        .unwrap_or(0);
    assert!(
        on_added <= 30,
        "{on_added} of 200 new connections reached the joining backend (share {early:.3})"
    );
    assert_ramps(&env, added, joined, "joining");

    // A backend that dies and comes back ramps up again from the moment it is healthy.
    let recovering = IpAddr::V4(backend_v4(1));
    let stopped = Instant::now();
    env.lab.stop_backend(1);
    wait_for_state(
        &env,
        POOL,
        recovering,
        "unhealthy",
        stopped,
        check.bound(check.unhealthy_threshold, Duration::from_millis(300)),
    );
    let restarted = Instant::now();
    env.lab
        .start_backend(1, TLS_PORT)
        .expect("restarting backend-1");
    let (_, after) = wait_for_state(
        &env,
        POOL,
        recovering,
        "healthy",
        restarted,
        check.bound(check.healthy_threshold, Duration::from_millis(300)),
    );
    assert_ramps(&env, recovering, restarted + after, "recovering");

    env.stop_cleanly();
}
