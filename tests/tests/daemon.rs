//! The daemon and its CLI end to end: `lb run` in the lab's balancer namespace, real TLS
//! clients in the client namespace, the CLI's views of the listeners and the traffic, and a
//! clean stop on SIGTERM. The other `daemon_*` tests cover balancing, live changes,
//! `lb simulate` and the CLI's error paths.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a test panics with a message; helpers here are part of the tests"
)]

use std::net::{IpAddr, SocketAddr};

use lb::{
    control::Body,
    lab::passthrough::{VIP_V4, lab_config},
};
use lb_tests::{
    clients::{assert_consistent, connect_parallel},
    daemon_lab::{DaemonLab, TLS_PORT},
};

#[test]
fn the_daemon_serves_tls_through_the_vip_answers_the_cli_and_stops_cleanly() {
    let mut env = DaemonLab::start("lbtd", 3, |paths| lab_config(paths, 3));
    let vip = SocketAddr::new(IpAddr::V4(VIP_V4), TLS_PORT);
    let served = connect_parallel(&env.lab, vip, 30, 1);
    assert_consistent(&env.lab, &served);

    let text = env.cli_ok(&["listener", "list"]);
    assert!(
        text.contains("tls4") && text.contains("198.18.100.1:443/tcp"),
        "{text}"
    );
    let Body::Stats(stats) = env.cli_json(&["stats"]) else {
        panic!("lb stats answered something else");
    };
    let counter = |name: &str| {
        stats
            .counters
            .iter()
            .find(|c| c.name == name)
            .unwrap_or_else(|| panic!("no counter {name}"))
            .value
    };
    assert!(
        counter("conn_miss") >= 30,
        "every connection's SYN was placed by the table: {:?}",
        stats.counters
    );
    for c in stats.counters.iter().filter(|c| c.kind == "drop") {
        assert_eq!(c.value, 0, "{} moved", c.name);
    }
    let tls4 = stats
        .listeners
        .iter()
        .find(|l| l.name == "tls4")
        .expect("traffic of tls4");
    assert!(tls4.traffic.packets > 0, "{tls4:?}");
    env.stop_cleanly();
}
