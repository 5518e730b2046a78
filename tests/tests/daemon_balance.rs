//! How the daemon balances real TLS connections: thousands of connections from the lab's client
//! through `lb run`, counted by the certificate each client verified (and checked against the
//! reply and the backend that accepted the client), share the backends as the weights say, over
//! IPv4 and IPv6.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a test panics with a message; helpers here are part of the tests"
)]

use std::net::{IpAddr, SocketAddr};

use lb::lab::passthrough::{CLIENT_V4, CLIENT_V6, VIP_V4, VIP_V6, lab_config};
use lb_tests::{
    clients::{assert_consistent, assert_shares, connect_parallel, count_per_backend},
    daemon_lab::{DaemonLab, TLS_PORT, weighted_config},
};

const CONNECTIONS: usize = 3000;
const THREADS: usize = 6;
/// How far (in percentage points) a backend's share may be from its weight's share.
const TOLERANCE: f64 = 5.0;

fn vip4() -> SocketAddr {
    SocketAddr::new(IpAddr::V4(VIP_V4), TLS_PORT)
}

#[test]
fn equal_backends_each_serve_a_third_of_the_connections() {
    let mut env = DaemonLab::start("lbtbal", 3, |paths| lab_config(paths, 3));
    let served = connect_parallel(&env.lab, vip4(), CONNECTIONS, THREADS);
    assert!(served.iter().all(|s| s.local.ip() == IpAddr::V4(CLIENT_V4)));
    assert_consistent(&env.lab, &served);
    let counts = count_per_backend(&served);
    println!("per backend: {counts:?}");
    let third = 100.0 / 3.0;
    assert_shares(
        &counts,
        &[
            ("backend-0", third),
            ("backend-1", third),
            ("backend-2", third),
        ],
        TOLERANCE,
    );
    env.stop_cleanly();
}

#[test]
fn weights_2_1_1_share_the_connections_50_25_25() {
    let mut env = DaemonLab::start("lbtwgt", 3, |paths| weighted_config(paths, &[2, 1, 1]));
    println!("{}", env.cli_ok(&["backend", "list"]));
    let served = connect_parallel(&env.lab, vip4(), CONNECTIONS, THREADS);
    assert_consistent(&env.lab, &served);
    let counts = count_per_backend(&served);
    println!("per backend: {counts:?}");
    assert_shares(
        &counts,
        &[
            ("backend-0", 50.0),
            ("backend-1", 25.0),
            ("backend-2", 25.0),
        ],
        TOLERANCE,
    );
    env.stop_cleanly();
}

#[test]
fn the_ipv6_listener_reaches_every_backend() {
    let mut env = DaemonLab::start("lbtv6", 3, |paths| lab_config(paths, 3));
    let vip6 = SocketAddr::new(IpAddr::V6(VIP_V6), TLS_PORT);
    let served = connect_parallel(&env.lab, vip6, 300, 3);
    assert!(
        served.iter().all(|s| s.local.ip() == IpAddr::V6(CLIENT_V6)),
        "every connection came from the client's IPv6 address"
    );
    assert_consistent(&env.lab, &served);
    let counts = count_per_backend(&served);
    println!("per backend: {counts:?}");
    for backend in &env.lab.backends {
        assert!(
            counts.get(&backend.name).copied().unwrap_or(0) > 0,
            "{} served no IPv6 connection: {counts:?}",
            backend.name
        );
    }
    assert_eq!(counts.len(), env.lab.backends.len(), "{counts:?}");
    env.stop_cleanly();
}
