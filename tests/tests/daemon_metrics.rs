//! The Prometheus endpoint and `lb status` end to end: the daemon serves `GET /metrics` on the
//! `[metrics] listen` address in its own namespace (scraped from a thread inside it, with a
//! plain HTTP/1.1 client), and after TLS traffic, one `lb backend add` and a backend's death
//! the exposition shows each: per-backend packets, verdict counters, health states and their
//! transitions (of the added backend, which is checked like the others), control operations. `lb status` summarises the same.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a test panics with a message; helpers here are part of the tests"
)]

use std::{
    net::{IpAddr, Ipv4Addr, SocketAddr},
    time::{Duration, Instant},
};

use lb::lab::passthrough::{VIP_V4, backend_v4, lab_config};
use lb_tests::{
    backend_state::wait_for_state,
    clients::{assert_consistent, connect_parallel},
    daemon_lab::{DaemonLab, TLS_PORT},
    metrics_scrape::scrape,
    pool_config::{HealthCheck, with_health_check, with_metrics},
};

/// Where the daemon serves metrics: loopback of the balancer's namespace, which this test's
/// lab creates, so the port is free.
const METRICS: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 9464);

fn vip() -> SocketAddr {
    SocketAddr::new(IpAddr::V4(VIP_V4), TLS_PORT)
}

#[test]
fn metrics_and_status_show_traffic_health_and_changes() {
    let check = HealthCheck::fast_tcp(TLS_PORT);
    let mut env = DaemonLab::start("lbtmetrics", 4, |paths| {
        let config = with_health_check(&lab_config(paths, 3), "web4", &check);
        with_metrics(&config, METRICS)
    });
    let served = connect_parallel(&env.lab, vip(), 30, 3);
    assert_consistent(&env.lab, &served);
    let added = backend_v4(3).to_string();
    env.cli_ok(&["backend", "add", "web4", &added]);

    let metrics = scrape(&env.lab.lb, METRICS);
    assert!(
        metrics.status_line.starts_with("HTTP/1.1 200"),
        "{metrics:?}"
    );
    assert_eq!(
        metrics.header("content-type"),
        Some(lb::metrics::CONTENT_TYPE),
        "{:?}",
        metrics.headers
    );
    let packets =
        metrics.expect_value(r#"lb_backend_packets_total{listener="tls4",backend="198.18.0.10"}"#);
    assert!(packets > 0.0, "backend-0 served connections: {packets}");
    assert_eq!(
        metrics.expect_value(r#"lb_datapath_packets_total{reason="drop_too_big",kind="drop"}"#),
        0.0
    );
    assert_eq!(
        metrics.expect_value(
            r#"lb_backend_health{pool="web4",backend="198.18.0.10",state="healthy"}"#
        ),
        1.0
    );
    assert_eq!(
        metrics.expect_value(
            r#"lb_backend_health{pool="web4",backend="198.18.0.10",state="unhealthy"}"#
        ),
        0.0
    );
    assert_eq!(
        metrics.expect_value(
            r#"lb_backend_health{pool="web4",backend="198.18.0.13",state="healthy"}"#
        ),
        1.0,
        "the added backend"
    );
    assert_eq!(
        metrics.expect_value(r#"lb_control_operations_total{operation="backend-add",result="ok"}"#),
        1.0
    );
    assert!(
        metrics.body.trim_end().ends_with("# EOF"),
        "{}",
        metrics.body
    );

    // The added backend dies (so it is checked too): the scrape shows its new state and the
    // transition.
    env.lab.stop_backend(3);
    let stopped = Instant::now();
    wait_for_state(
        &env,
        "web4",
        IpAddr::V4(backend_v4(3)),
        "unhealthy",
        stopped,
        check.bound(check.unhealthy_threshold, Duration::from_millis(200)),
    );
    let metrics = scrape(&env.lab.lb, METRICS);
    for (series, value) in [
        (
            r#"lb_backend_health{pool="web4",backend="198.18.0.13",state="unhealthy"}"#,
            1.0,
        ),
        (
            r#"lb_backend_health{pool="web4",backend="198.18.0.13",state="healthy"}"#,
            0.0,
        ),
        (
            r#"lb_backend_health_transitions_total{pool="web4",backend="198.18.0.13",to="unhealthy"}"#,
            1.0,
        ),
    ] {
        assert_eq!(metrics.expect_value(series), value, "{series}");
    }

    let status = env.cli_ok(&["status"]);
    println!("lb status:\n{status}");
    let line = |label: &str| {
        status
            .lines()
            .find(|l| l.starts_with(label))
            .unwrap_or_else(|| panic!("no {label:?} line:\n{status}"))
            .to_owned()
    };
    assert!(line("listeners:").ends_with(" 2"), "{status}");
    // web4: 4 (one dead), web6: 3.
    assert!(
        line("backends:").contains("healthy 6, unhealthy 1, draining 0, disabled 0"),
        "{status}"
    );
    let forwarded: u64 = line("packets:")
        .split(", ")
        .find_map(|part| {
            part.trim_start_matches("packets:")
                .trim()
                .strip_prefix("forwarded ")
        })
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no forwarded count:\n{status}"));
    assert!(forwarded > 0, "{status}");
    assert!(line("changes:").contains("ok 1"), "{status}");
    assert!(
        line("metrics:").ends_with(&format!("http://{METRICS}/metrics")),
        "{status}"
    );
    env.stop_cleanly();
}
