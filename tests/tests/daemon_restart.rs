//! Hitless restarts: the daemon is killed (SIGKILL, as a crash) or stopped (SIGTERM, as an
//! upgrade) and started again while 500 long-lived connections exchange data. The XDP program
//! keeps forwarding from the pinned maps meanwhile, new connections are still balanced, and
//! the restarted daemon adopts the pinned state: no connection is reset.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a test panics with a message; helpers here are part of the tests"
)]

use std::{
    net::{IpAddr, SocketAddr},
    thread,
    time::Duration,
};

use lb::lab::passthrough::{VIP_V4, lab_config};
use lb_tests::{
    clients::{assert_consistent, connect_parallel, count_per_backend},
    daemon_lab::DaemonLab,
    long_lived::LongLived,
};

fn vip() -> SocketAddr {
    SocketAddr::new(IpAddr::V4(VIP_V4), 443)
}

#[test]
fn a_killed_and_restarted_daemon_resets_no_connection() {
    let mut env = DaemonLab::start("lbtrs", 3, |paths| lab_config(paths, 3));
    let long_lived = LongLived::start(&env.lab, vip(), 500, Duration::from_millis(100));

    env.daemon.kill().expect("SIGKILL");
    // With no daemon, the XDP program balances new connections from the pinned maps.
    let while_down = connect_parallel(&env.lab, vip(), 150, 6);
    assert_consistent(&env.lab, &while_down);
    let per_backend = count_per_backend(&while_down);
    assert_eq!(
        per_backend.len(),
        3,
        "all backends served while down: {per_backend:?}"
    );

    env.daemon.restart().expect("restarting after SIGKILL");
    assert!(
        env.daemon.log().contains("took over the pinned attachment"),
        "the new daemon did not adopt the pinned link:\n{}",
        env.daemon.log()
    );
    thread::sleep(Duration::from_secs(1));

    // An orderly stop (an upgrade) and a start, too.
    let status = env.daemon.stop().expect("SIGTERM");
    assert!(status.success(), "SIGTERM: {status}");
    let while_stopped = connect_parallel(&env.lab, vip(), 60, 6);
    assert_consistent(&env.lab, &while_stopped);
    env.daemon.restart().expect("restarting after SIGTERM");
    thread::sleep(Duration::from_secs(1));

    let histories = long_lived.finish();
    let broken: Vec<_> = histories.iter().filter(|h| h.failure.is_some()).collect();
    assert!(
        broken.is_empty(),
        "{} of {} connections broke across the restarts, e.g. {:?}\ndaemon log:\n{}",
        broken.len(),
        histories.len(),
        broken.first().and_then(|h| h.failure.as_ref()),
        env.daemon.log()
    );
    let stalled: Vec<_> = histories
        .iter()
        .filter(|h| h.max_gap > Duration::from_secs(1))
        .collect();
    assert!(
        stalled.is_empty(),
        "{} connections stalled over 1 s, the longest {:?}",
        stalled.len(),
        stalled.iter().map(|h| h.max_gap).max()
    );
    // The restarted daemon still takes changes.
    env.cli_ok(&["backend", "set-weight", "web4", "198.18.0.10", "2"]);
    env.stop_cleanly();
}
