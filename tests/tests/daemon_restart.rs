//! Hitless restarts: the daemon is killed (SIGKILL, as a crash) or stopped (SIGTERM, as an
//! upgrade) and started again while 500 long-lived connections exchange data. The XDP program
//! keeps forwarding from the pinned maps meanwhile, new connections are still balanced, and
//! the restarted daemon adopts the pinned state: no connection is reset.
//!
//! The connection table is sized so that it is not a power of two of buckets: the daemon
//! rounds such a table up, and the restarted daemon must compare the pinned table with what
//! was allocated, not with what the file asks for.
//!
//! A daemon whose controller thread panics (an injected fault) exits with an error and a clear
//! log line, and the connections live through that too.

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

use lb::{
    control::Body,
    lab::passthrough::{VIP_V4, lab_config},
};
use lb_tests::{
    clients::{assert_consistent, connect_parallel, count_per_backend},
    daemon_lab::DaemonLab,
    long_lived::LongLived,
};

fn vip() -> SocketAddr {
    SocketAddr::new(IpAddr::V4(VIP_V4), 443)
}

/// A connection-table size that is not a whole number of buckets in a power of two: the
/// table holds more, and a restart must compare the pinned table with what was allocated.
const ODD_SIZE: u32 = 100_000;

#[test]
fn a_killed_and_restarted_daemon_resets_no_connection() {
    let cpus = lb::loader::possible_cpus().unwrap();
    let size = ODD_SIZE;
    let allocated = lb::loader::conn_table_entries(size);
    assert_eq!(allocated, 131_072, "16 384 buckets of 8");
    let mut env = DaemonLab::start("lbtrs", 3, move |paths| {
        lab_config(paths, 3).replace(
            "conn_table_size = 65536",
            &format!("conn_table_size = {size}"),
        )
    });
    let Body::Status(status) = env.cli_json(&["status"]) else {
        panic!("lb status answered something else");
    };
    let datapath = status.datapath.expect("the datapath's set-up in lb status");
    assert_eq!(datapath.possible_cpus, cpus);
    assert_eq!(datapath.conn_table_entries, allocated);
    let table_digest = |env: &DaemonLab| {
        let Body::Listeners(listeners) = env.cli_json(&["listener", "list"]) else {
            panic!("lb listener list answered something else");
        };
        listeners
            .iter()
            .map(|l| (l.name.clone(), l.table_digest.clone()))
            .collect::<Vec<_>>()
    };
    let digests = table_digest(&env);
    assert!(
        digests
            .iter()
            .all(|(_, d)| d.len() == 16 && d.bytes().all(|b| b.is_ascii_hexdigit())),
        "{digests:?}"
    );
    let long_lived = LongLived::start(&env.lab, vip(), 500, Duration::from_millis(100));
    let seed = conn_seed(&env);
    assert_ne!(seed, 0, "the connection tables' hash has a seed");

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
    // Another process, the same configuration and states: the same tables, by digest.
    assert_eq!(table_digest(&env), digests);
    // And the same connection-table hash: a new seed would lose every flow an idle
    // connection's next packet does not put back before the table changes. (These
    // connections send every 100 ms, so `lb simulate` finding them checks only that this
    // daemon and the program agree on the hash; the seed's check is what catches a new one.)
    assert_eq!(conn_seed(&env), seed, "the seed changed across the restart");
    assert_in_connection_table(&env, long_lived.locals());
    thread::sleep(Duration::from_secs(1));

    // An orderly stop (an upgrade) and a start, too.
    let status = env.daemon.stop().expect("SIGTERM");
    assert!(status.success(), "SIGTERM: {status}");
    let while_stopped = connect_parallel(&env.lab, vip(), 60, 6);
    assert_consistent(&env.lab, &while_stopped);
    env.daemon.restart().expect("restarting after SIGTERM");
    thread::sleep(Duration::from_secs(1));

    // A daemon whose controller thread panics (an injected fault) stops with an error rather
    // than run on with frozen health state; a supervisor's restart adopts the maps.
    env.daemon.stop().expect("SIGTERM");
    env.daemon
        .set_env(&[(lb::daemon::INJECT_FAULT_ENV, "controller-panic-on-reload")]);
    env.daemon
        .restart()
        .expect("starting with the injected fault");
    let reload = env.cli(&["reload"]);
    assert!(
        !reload.success,
        "a reload the controller never answered: {reload:?}"
    );
    let status = env
        .daemon
        .exited_within(Duration::from_secs(5))
        .expect("the daemon stopped after its controller thread panicked");
    assert!(!status.success(), "it stopped with an error: {status}");
    let log = env.daemon.log();
    assert!(
        log.contains("the controller thread panicked") && log.contains("the injected fault"),
        "the log says why:\n{log}"
    );
    env.daemon.set_env(&[]);
    env.daemon.restart().expect("restarting after the panic");
    thread::sleep(Duration::from_secs(1));
    assert_eq!(
        conn_seed(&env),
        seed,
        "the seed changed across the restarts"
    );

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

/// `lb simulate` finds the first 20 of `locals`' flows to the VIP in the connection table.
fn assert_in_connection_table(env: &DaemonLab, locals: &[SocketAddr]) {
    let vip = vip().to_string();
    for local in locals.iter().take(20) {
        let client = local.to_string();
        let Body::Simulation(simulation) = env.cli_json(&["simulate", &client, &vip]) else {
            panic!("lb simulate {client} {vip} answered something else");
        };
        assert_eq!(
            simulation.reason, "connection table",
            "{client} after the restart: {simulation:?}"
        );
    }
}

/// The connection tables' hash seed, from the pinned configuration map.
fn conn_seed(env: &DaemonLab) -> u32 {
    let path = env.daemon.pin_dir().join(lb_common::maps::CONFIG);
    let data =
        aya::maps::MapData::from_pin(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let map: aya::maps::Array<_, lb_common::abi::DatapathConfig> =
        aya::maps::Array::try_from(aya::maps::Map::Array(data)).expect("an array map");
    map.get(&0, 0).expect("the configuration").conn_seed
}
