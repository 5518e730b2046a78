//! A VIP that is also an address of the balancer (on its `lo`, as for L7 listeners next to the
//! passthrough ones) on a network that routes the backends' direct replies back through the
//! balancer (see `lb::lab::routed`, `vip_on_balancer_lo` and `replies_via_balancer`).
//!
//! The replies reach the balancer's kernel with one of its own addresses as their source; it
//! drops such IPv4 packets as martians unless the interface they come in by has `accept_local`
//! on, and every passthrough connection hangs. The daemon sets it on the interfaces the
//! balancer runs on and those its routes to the backends leave through, and says so; the
//! balancer's interfaces filter reverse paths loosely (`rp_filter` 2), as systemd's defaults
//! have it, which lets the replies through once `accept_local` is on. Strict filtering drops
//! them all the same: the daemon warns. Turned off while the daemon runs, `accept_local` is set
//! again within one look of the host (2 s), and strict filtering set then is warned about.

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

use lb::lab::{
    passthrough::{VIP_NAME, VIP_V4, VIP_V6},
    routed::{BACK, FRONT, RoutedLab, RoutedOptions, routed_config},
    tls_exchange,
};
use lb_tests::routed::RoutedDaemon;

/// How long the daemon may take to see to the interfaces (its host watch runs every 2 s).
const DEADLINE: Duration = Duration::from_secs(10);
/// Connections per address family.
const CONNECTIONS: usize = 4;

fn options() -> RoutedOptions {
    RoutedOptions {
        vip_on_balancer_lo: true,
        replies_via_balancer: true,
        ..RoutedOptions::default()
    }
}

/// Starts the daemon on the lab with `rp_filter` set to `mode` on the balancer's interfaces
/// (`all` stays 0, as systemd leaves it).
fn start(prefix: &str, mode: &'static str) -> RoutedDaemon {
    let options = options();
    RoutedDaemon::start(
        prefix,
        options,
        move |lab: &RoutedLab| {
            for interface in ["default", FRONT, BACK] {
                lab.lb
                    .sysctl(&format!("net.ipv4.conf.{interface}.rp_filter"), mode)
                    .expect("setting rp_filter on the balancer");
            }
        },
        move |paths| routed_config(paths, options.backends, ""),
    )
}

/// Waits until the daemon's log has a line containing every one of `texts`.
fn wait_for_log_line(env: &RoutedDaemon, texts: &[&str]) {
    let deadline = Instant::now() + DEADLINE;
    loop {
        let log = env.daemon.log();
        if log.lines().any(|l| texts.iter().all(|t| l.contains(t))) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the daemon did not log a line with {texts:?} within {DEADLINE:?}:\n{log}"
        );
        thread::sleep(Duration::from_millis(50));
    }
}

/// One TLS exchange from the client with `vip`:443.
fn exchange(env: &RoutedDaemon, vip: IpAddr, line: String) -> Result<String, String> {
    let roots = env.lab.pki.roots().unwrap();
    env.lab
        .client
        .spawn("exchange", move || {
            tls_exchange(VIP_NAME, SocketAddr::new(vip, 443), &roots, &line)
        })
        .expect("a client thread")
        .join()
        .expect("the client thread panicked")
        .map(|e| e.reply)
        .map_err(|e| e.to_string())
}

fn sysctl(env: &RoutedDaemon, key: &str) -> String {
    env.lab
        .lb
        .run(&["sysctl", "-n", key])
        .expect("reading a sysctl on the balancer")
        .trim()
        .to_owned()
}

#[test]
fn replies_from_a_local_vip_routed_back_through_the_balancer_arrive() {
    let env = start("lbtlv", "2");
    wait_for_log_line(&env, &["accept_local set", BACK, "martians"]);
    for vip in [IpAddr::V4(VIP_V4), IpAddr::V6(VIP_V6)] {
        for i in 0..CONNECTIONS {
            let line = format!("hello {i} via {vip}");
            let reply = exchange(&env, vip, line.clone()).unwrap_or_else(|error| {
                panic!(
                    "TLS with {vip} through the balancer, replies back through it: {error}\n\
                     {BACK} accept_local={} rp_filter={}\ndaemon log:\n{}",
                    sysctl(&env, &format!("net.ipv4.conf.{BACK}.accept_local")),
                    sysctl(&env, &format!("net.ipv4.conf.{BACK}.rp_filter")),
                    env.daemon.log()
                )
            });
            assert!(reply.ends_with(&line), "echoed {line:?}: {reply:?}");
        }
    }
    assert_eq!(
        sysctl(&env, &format!("net.ipv4.conf.{BACK}.accept_local")),
        "1",
        "accept_local on {BACK}, where the backends' replies come in"
    );
    // Turned off behind the daemon's back, it is set again at the next look (every 2 s), and
    // said; strict reverse-path filtering set while it runs is warned about.
    env.lab
        .lb
        .sysctl(&format!("net.ipv4.conf.{BACK}.accept_local"), "0")
        .expect("turning accept_local off");
    wait_for_log_line(&env, &["accept_local was turned off", BACK]);
    assert_eq!(
        sysctl(&env, &format!("net.ipv4.conf.{BACK}.accept_local")),
        "1",
        "accept_local on {BACK} again"
    );
    let line = "hello again".to_owned();
    let reply = exchange(&env, IpAddr::V4(VIP_V4), line.clone()).expect("TLS after the fix-up");
    assert!(reply.ends_with(&line), "echoed {line:?}: {reply:?}");
    env.lab
        .lb
        .sysctl(&format!("net.ipv4.conf.{BACK}.rp_filter"), "1")
        .expect("making rp_filter strict");
    wait_for_log_line(&env, &["strict reverse-path filtering", BACK]);
}

#[test]
fn strict_reverse_path_filtering_on_the_reply_interface_is_warned_about() {
    let env = start("lbtlvs", "1");
    wait_for_log_line(&env, &["strict reverse-path filtering", BACK]);
}
