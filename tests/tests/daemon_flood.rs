//! Connection-table protection against a SYN flood (`datapath.conn_inserts_per_sec`).
//!
//! A daemon balances 100 established TLS connections, idle while the lab's client sends
//! 60 000 SYNs of distinct flows to the same VIP ([`SynFlood`]).
//!
//! Both daemons have a table of 32 768 flows (4 096 buckets of 8), which the flood alone
//! overfills.
//!
//! - With `conn_inserts_per_sec = 500`, the balancer forwards the flood but stops remembering
//!   new flows past 500 per second on a CPU (`conn_insert_skipped`): the flood, under a second
//!   long, leaves the table a few percent full, and cannot evict the established flows. `lb
//!   simulate` still finds every one of them in the connection table, every connection keeps
//!   working, and still does after a backend is added, although the new table places about a
//!   quarter of them on the new backend, which never saw them.
//! - The control, with no limit: the flood overfills the table almost twice, and a full
//!   bucket gives up the flow it saw longest ago, so the idle established flows go (`lb
//!   simulate` places them by a Maglev slot; `conn_evicted` counts). Once the backend is
//!   added, exactly the evicted flows that the new table places elsewhere fail, as the
//!   simulation predicts.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a test panics with a message; helpers here are part of the tests"
)]

use std::{
    collections::BTreeSet,
    net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4},
    thread,
    time::{Duration, Instant},
};

use lb::{
    control::{Body, SimulationView},
    lab::{
        daemon::DaemonPaths,
        passthrough::{VIP_V4, backend_v4, lab_config},
    },
};
use lb_tests::{
    clients::{Held, Served, assert_consistent, open_parallel},
    daemon_lab::{DaemonLab, TLS_PORT, with_datapath_setting},
    flood::{FloodReport, SynFlood},
};

/// Backends in the lab, and in the configured pool: the last one is added after the flood.
const LAB_BACKENDS: usize = 4;
const POOL_BACKENDS: usize = 3;
/// Established connections held through the flood.
const ESTABLISHED: usize = 100;
/// SYNs in the flood, the CPUs it is sent from, and the most time it may take (it takes about
/// half a second).
const FLOOD: usize = 60_000;
const FLOOD_CPUS: usize = 2;
const FLOOD_DEADLINE: Duration = Duration::from_secs(3);
/// The protected daemon's limit, per CPU: above what opening the established connections
/// inserts in a second.
const INSERTS_PER_SEC: u32 = 500;
const _: () = assert!(INSERTS_PER_SEC as usize > ESTABLISHED);
/// Both daemons' connection table: the flood alone overfills it.
const TABLE: u32 = 32_768;
const _: () = assert!(FLOOD > TABLE as usize);
/// Exchanges per connection after the flood, and after the change.
const EXCHANGES: usize = 3;
/// `lb simulate`'s reason for a flow found in the connection table.
const IN_TABLE: &str = "connection table";

/// An established connection and the backend that served it.
struct Established {
    held: Held,
    backend: IpAddr,
}

/// The scenario up to the end of the flood.
struct Flooded {
    env: DaemonLab,
    vip: SocketAddr,
    conns: Vec<Established>,
    report: FloodReport,
    /// `conn_miss`, `conn_insert_skipped` and `conn_evicted` over the flood.
    misses: u64,
    skipped: u64,
    evicted: u64,
    /// `lb simulate` of every established connection after the flood.
    after: Vec<SimulationView>,
}

#[test]
fn a_syn_flood_past_the_insert_limit_evicts_no_established_flow() {
    let mut f = flood_established("lbtflood", INSERTS_PER_SEC);

    // At most the limit per CPU per one-second window was remembered; the rest was skipped.
    let windows = f.report.elapsed.as_secs() + 2;
    let allowed = u64::from(INSERTS_PER_SEC) * u64::from(possible_cpus()) * windows;
    assert!(
        f.misses >= (FLOOD / 2) as u64,
        "only {} of the {} SYNs sent reached the balancer's table",
        f.misses,
        f.report.sent
    );
    assert!(
        f.skipped <= f.misses && f.skipped >= f.misses.saturating_sub(allowed),
        "{} SYNs placed by the table, {} inserts skipped: expected all but at most {allowed}",
        f.misses,
        f.skipped
    );
    // The premise: what the limit let in leaves the table a few percent full. (On a host
    // whose flood lands on many CPUs the limit lets in more; this says so rather than let an
    // eviction look like a failure of the limit.)
    let remembered = f.misses - f.skipped;
    assert!(
        remembered <= u64::from(TABLE / 8),
        "the limit let {remembered} flows in, over an eighth of the {TABLE}-flow table: the \
         flood reached more CPUs than this test is sized for"
    );
    for (c, s) in f.conns.iter().zip(&f.after) {
        assert_in_table(c, s, "after the flood");
    }
    let failures = exchange_all(&mut f.conns, "after the flood");
    assert!(
        failures.is_empty(),
        "established connections failed after the flood: {failures:?}"
    );

    let started = Instant::now();
    let added = add_backend(&f.env);
    let simulations = simulate_all(&f.env, f.vip, &f.conns);
    let mut moved = 0;
    for (c, s) in f.conns.iter().zip(&simulations) {
        assert_in_table(c, s, "after the backend was added");
        moved += usize::from(s.new_connection_backend == added);
    }
    println!("the new table places {moved} of the {ESTABLISHED} established flows on {added}");
    assert!(
        moved > 0,
        "the added backend takes none of the established flows' slots: the change tests nothing"
    );
    let failures = exchange_all(&mut f.conns, "after the backend was added");
    assert!(
        failures.is_empty(),
        "established connections failed after the backend was added: {failures:?}"
    );
    println!("backend added and checked in {:?}", started.elapsed());
    drop(f.conns);
    f.env.stop_cleanly();
}

#[test]
fn control_without_a_limit_the_flood_evicts_established_flows() {
    let mut f = flood_established("lbtfloodc", 0);
    assert_eq!(f.skipped, 0, "no limit, no skipped insert");
    let evicted: BTreeSet<usize> = (0..ESTABLISHED)
        .filter(|&i| f.after[i].reason != IN_TABLE)
        .collect();
    println!(
        "without a limit the flood evicted {} of {ESTABLISHED} established flows",
        evicted.len()
    );
    assert!(
        !evicted.is_empty(),
        "{} SYNs through a table of {TABLE} flows evicted no established flow: the protected \
         test would pass without the protection",
        f.misses
    );
    assert!(
        f.evicted >= evicted.len() as u64,
        "{} established flows gone, {} evictions counted",
        evicted.len(),
        f.evicted
    );

    // The evicted flows whose new Maglev pick is another backend reach a backend that never
    // saw them, and fail; every other connection works.
    let added = add_backend(&f.env);
    let simulations = simulate_all(&f.env, f.vip, &f.conns);
    let predicted: BTreeSet<usize> = (0..ESTABLISHED)
        .filter(|&i| {
            let (c, s) = (&f.conns[i], &simulations[i]);
            s.reason != IN_TABLE && s.backend != c.backend
        })
        .collect();
    assert!(
        predicted.is_subset(&evicted),
        "only evicted flows may move: {predicted:?} vs evicted {evicted:?}"
    );
    let failures = exchange_all(&mut f.conns, "after the backend was added");
    let failed: BTreeSet<usize> = failures.iter().map(|(i, _)| *i).collect();
    println!(
        "after adding {added}: {} evicted flows moved, {} connections failed",
        predicted.len(),
        failed.len()
    );
    assert_eq!(
        failed, predicted,
        "the connections that failed are not the evicted ones the new table moved: {failures:?}"
    );
    drop(f.conns);
    f.env.stop_cleanly();
}

/// Builds the lab and daemon (limit `inserts_per_sec`, 0 for none), establishes the
/// connections, checks they are in the connection table, and floods.
fn flood_established(prefix: &str, inserts_per_sec: u32) -> Flooded {
    let started = Instant::now();
    let env = DaemonLab::start(prefix, LAB_BACKENDS, |paths| {
        flood_config(paths, inserts_per_sec)
    });
    let vip = SocketAddr::new(IpAddr::V4(VIP_V4), TLS_PORT);
    let held = open_parallel(&env.lab, vip, ESTABLISHED, 4);
    let served: Vec<Served> = held.iter().map(|h| h.served.clone()).collect();
    assert_consistent(&env.lab, &served);
    let conns: Vec<Established> = held
        .into_iter()
        .map(|held| {
            let backend = backend_address(&env, &held.served);
            Established { held, backend }
        })
        .collect();
    for (c, s) in conns.iter().zip(simulate_all(&env, vip, &conns)) {
        assert_in_table(c, &s, "before the flood");
    }
    let (misses_before, skipped_before, evicted_before) = (
        counter(&env, "conn_miss"),
        counter(&env, "conn_insert_skipped"),
        counter(&env, "conn_evicted"),
    );
    println!(
        "lab, daemon and {ESTABLISHED} connections ready in {:?}",
        started.elapsed()
    );

    let report = flood().send(&env.lab.client);
    // Let the last SYNs through the softirq before the counters are read.
    thread::sleep(Duration::from_millis(100));
    let misses = counter(&env, "conn_miss") - misses_before;
    let skipped = counter(&env, "conn_insert_skipped") - skipped_before;
    let evicted = counter(&env, "conn_evicted") - evicted_before;
    println!(
        "limit {inserts_per_sec}/s per CPU: {} SYNs sent in {:?} ({} retries); {misses} placed \
         by the table, {skipped} inserts skipped, {evicted} flows evicted",
        report.sent, report.elapsed, report.retries
    );
    assert_eq!(
        report.sent, FLOOD,
        "the flood did not finish within {FLOOD_DEADLINE:?}: {report:?}"
    );
    let after = simulate_all(&env, vip, &conns);
    Flooded {
        env,
        vip,
        conns,
        report,
        misses,
        skipped,
        evicted,
        after,
    }
}

/// The lab's configuration with 3 of its 4 backends in the pool, a connection table of
/// [`TABLE`] flows, and the given insert limit.
fn flood_config(paths: &DaemonPaths, inserts_per_sec: u32) -> String {
    let config = lab_config(paths, POOL_BACKENDS);
    let default = "conn_table_size = 65536\n";
    assert!(
        config.contains(default),
        "lab_config no longer writes {default:?}:\n{config}"
    );
    let config = config.replace(default, &format!("conn_table_size = {TABLE}\n"));
    with_datapath_setting(
        &config,
        "conn_inserts_per_sec",
        &inserts_per_sec.to_string(),
    )
}

/// 60 000 SYNs to the VIP from 150 addresses of the client's segment that no host holds, sent
/// from two CPUs.
fn flood() -> SynFlood {
    SynFlood {
        count: FLOOD,
        target: SocketAddrV4::new(VIP_V4, TLS_PORT),
        sources: (100..=249).map(|h| Ipv4Addr::new(198, 18, 0, h)).collect(),
        first_port: 10_000,
        deadline: FLOOD_DEADLINE,
        cpus: FLOOD_CPUS,
    }
}

/// Adds the lab's fourth backend to the pool; returns its address.
fn add_backend(env: &DaemonLab) -> IpAddr {
    let address = backend_v4(POOL_BACKENDS);
    env.cli_ok(&["backend", "add", "web4", &address.to_string()]);
    IpAddr::V4(address)
}

/// The address of the backend that served a connection (by its certificate).
fn backend_address(env: &DaemonLab, served: &Served) -> IpAddr {
    env.lab
        .backends
        .iter()
        .find(|b| b.name == served.cert_backend)
        .map(|b| IpAddr::V4(b.v4))
        .unwrap_or_else(|| panic!("{}: served by an unknown backend", served.local))
}

/// `lb simulate` of every connection's 5-tuple.
fn simulate_all(env: &DaemonLab, vip: SocketAddr, conns: &[Established]) -> Vec<SimulationView> {
    let vip = vip.to_string();
    conns
        .iter()
        .map(|c| {
            let client = c.held.served.local.to_string();
            let Body::Simulation(simulation) = env.cli_json(&["simulate", &client, &vip]) else {
                panic!("lb simulate {client} {vip} answered something else");
            };
            simulation
        })
        .collect()
}

/// Checks that `simulation` finds the connection in the connection table, on its backend.
fn assert_in_table(c: &Established, simulation: &SimulationView, when: &str) {
    let local = c.held.served.local;
    assert_eq!(
        simulation.reason, IN_TABLE,
        "{local} is established ({when}): {simulation:?}"
    );
    assert_eq!(
        simulation.backend, c.backend,
        "{local} was served by {} ({when}): {simulation:?}",
        c.held.served.cert_backend
    );
}

/// Exchanges [`EXCHANGES`] lines on every connection (until its first failure); returns the
/// failures: index and reason.
fn exchange_all(conns: &mut [Established], when: &str) -> Vec<(usize, String)> {
    let mut failures = Vec::new();
    for (i, c) in conns.iter_mut().enumerate() {
        for round in 0..EXCHANGES {
            let line = format!("conn {i} {when} {round}");
            let expected = format!("{} {line}", c.held.served.reply_backend);
            match c.held.conn.exchange(&line) {
                Ok(reply) if reply == expected => {}
                Ok(reply) => {
                    failures.push((i, format!("{}: wrong reply {reply:?}", c.held.served.local)));
                    break;
                }
                Err(e) => {
                    failures.push((i, format!("{}: {e}", c.held.served.local)));
                    break;
                }
            }
        }
    }
    failures
}

/// The value of the datapath counter `name` (`lb stats --json`).
fn counter(env: &DaemonLab, name: &str) -> u64 {
    let Body::Stats(stats) = env.cli_json(&["stats"]) else {
        panic!("lb stats answered something else");
    };
    stats
        .counters
        .iter()
        .find(|c| c.name == name)
        .unwrap_or_else(|| panic!("no counter {name}: {:?}", stats.counters))
        .value
}

/// The kernel's possible CPUs: the insert limit counts on each.
fn possible_cpus() -> u32 {
    let list = std::fs::read_to_string("/sys/devices/system/cpu/possible")
        .expect("reading /sys/devices/system/cpu/possible");
    list.trim()
        .split(',')
        .map(|range| {
            let bound = |s: &str| -> u32 {
                s.parse()
                    .unwrap_or_else(|e| panic!("CPU list {list:?}: {s:?}: {e}"))
            };
            match range.split_once('-') {
                Some((first, last)) => bound(last) - bound(first) + 1,
                None => 1,
            }
        })
        .sum()
}
