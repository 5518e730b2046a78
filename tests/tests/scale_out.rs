//! Several balancer nodes behind one router that spreads flows over them by ECMP, each node
//! announcing the VIPs by BGP with its own BIRD (see `lb::lab::scale_out`): real TLS from the
//! client through the router, a node's XDP program, the router again and a backend, answered
//! directly to the client.
//!
//! - spread: every node carries a share of the connections; for IPv4 the router's kernel
//!   predicts each connection's node; every node's `lb simulate` names the backend that served
//!   each connection;
//! - drain at L3: withdrawing one node's announcement (an end node, then the middle one)
//!   moves its flows to the others without one failed exchange, and so does announcing again;
//! - node lost: a node whose BIRD is killed and daemon stopped, or whose link goes down, is
//!   dropped by the router within milliseconds, a silent one (BIRD paused) when the hold
//!   timer expires; its flows carry on through the others;
//! - join: a node that starts announcing takes flows from the others without a failure.
//!
//! - the daemons' own announcements (`[announce]`): `lb node drain --timeout 1s` of an end node
//!   under 300 long-lived flows has withdrawn it when it returns, `undrain` announces again, a
//!   node whose daemon and BIRD are both killed is dropped; no flow fails or changes backend;
//! - a backend fails while a node drains (health checks on): the flows that move between
//!   nodes while the nodes' views change keep their backends, only the failed backend's flows
//!   fail; prints how many surviving flows a plain Maglev rebuild would have moved;
//! - bad input on one node (an unreachable BIRD socket, a BGP session disabled, another hash
//!   seed) is reported by `lb status`, the metrics, the log or the digests, and takes no
//!   traffic down on the others.
//!
//! The first four tests announce by hand (`ScaleOutLab::announce`: a route in table 200 with
//! protocol 200, what the daemon writes), so that they show the BIRD plumbing and the
//! agreement between nodes whatever the daemon decides to announce. The tests run one at a
//! time: each holds hundreds of connections and three daemons on a small machine.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a test panics with a message; helpers here are part of the tests"
)]

use rustls::{ClientConfig, HandshakeKind};
use std::{
    collections::BTreeMap,
    net::SocketAddr,
    sync::Arc,
    sync::{Mutex, MutexGuard},
    thread,
    time::{Duration, Instant},
};

use lb::lab::{
    ClientTls, Versions,
    passthrough::VIP_V4,
    scale_out::{CLIENT_V4, NODE_HASH_SEED},
    side_by_side::OFFLOAD_PORT,
};
use lb_tests::{
    daemon_lab::TLS_PORT,
    histories::{assert_unharmed, on_backend},
    l7_visit::visit_from,
    long_lived::{History, LongLived},
    metrics_scrape::{Scrape, scrape},
    pool_config::{HealthCheck, with_health_check, with_metrics},
    scale_out::{ROUTE_WAIT, ScaleOut, plain_rebuild_moves, vips},
};

const NODES: usize = 3;
const BACKENDS: usize = 3;
/// Connections of the spread test, per VIP.
const CONNECTIONS: usize = 300;
/// Long-lived flows of the other tests: IPv4 and IPv6.
const FLOWS_V4: usize = 200;
const FLOWS_V6: usize = 100;
const PERIOD: Duration = Duration::from_millis(100);
/// How long the flows run through a changed set of nodes before the next change.
const SETTLE: Duration = Duration::from_secs(1);
/// The longest a flow may stall while its node is lost: the router drops the node within
/// milliseconds, so a flow waits for one retransmission, not for the routing.
const LOST_NODE_STALL: Duration = Duration::from_secs(3);

/// The lab's BGP hold time: a lost node detected later than this was found by the hold timer,
/// not by its session closing or its link going down.
const HOLD_TIME: Duration = Duration::from_secs(3);

/// One test at a time (see the module documentation).
static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> MutexGuard<'static, ()> {
    SERIAL
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[test]
fn flows_spread_over_every_node_and_every_node_agrees_on_their_backends() {
    let _serial = serial();
    let started = Instant::now();
    let env = ScaleOut::start("lbtsos", NODES, BACKENDS, &[0, 1, 2]);
    let digests = env.table_digests(0);
    assert_eq!(digests.len(), 2, "two listeners: {digests:?}");
    for node in 1..NODES {
        assert_eq!(env.table_digests(node), digests, "node {node}'s tables");
    }
    println!("every node's tables: {digests:?}");
    for vip in vips() {
        let held = env.open(vip, CONNECTIONS);
        let clients: Vec<SocketAddr> = held.iter().map(|h| h.served.local).collect();
        let placements = env.simulations(&clients, vip);
        let mut shares = vec![0_usize; NODES];
        for (h, placement) in held.iter().zip(&placements) {
            let client = h.served.local;
            let node = placement.carrier().unwrap_or_else(|| {
                panic!("{client}: not in exactly one node's table: {placement:?}")
            });
            shares[node] += 1;
            for (i, view) in placement.per_node.iter().enumerate() {
                assert_eq!(
                    env.backend_name(view.backend),
                    h.served.cert_backend,
                    "{client}: node {i} simulates {view:?}, served by {}",
                    h.served.cert_backend
                );
                assert_eq!(
                    view.new_connection_backend, view.backend,
                    "{client}: node {i}"
                );
            }
        }
        println!("{}: connections per node {shares:?}", vip.ip());
        for (i, share) in shares.iter().enumerate() {
            assert!(
                *share >= CONNECTIONS / 5,
                "node {i} carried {share} of {CONNECTIONS} connections to {vip}: {shares:?}"
            );
        }
        if vip.is_ipv4() {
            let predicted = env.predicted_nodes(&clients, vip);
            for ((client, placement), predicted) in clients.iter().zip(&placements).zip(predicted) {
                assert_eq!(
                    placement.carrier(),
                    predicted,
                    "{client}: the router's kernel predicts node {predicted:?}"
                );
            }
            println!("{}: every connection's node as predicted", vip.ip());
        }
        drop(held);
    }
    println!("spread test: {:?}", started.elapsed());
}

/// Long-lived flows to both VIPs (IPv4 first).
fn start_flows(env: &ScaleOut) -> (LongLived, LongLived) {
    let [v4, v6] = vips();
    (
        LongLived::start_from(&env.lab.client, &env.config, v4, FLOWS_V4, PERIOD),
        LongLived::start_from(&env.lab.client, &env.config, v6, FLOWS_V6, PERIOD),
    )
}

/// Stops the flows and returns their histories, IPv4 first.
fn finish(flows: (LongLived, LongLived)) -> Vec<History> {
    let mut histories = flows.0.finish();
    histories.extend(flows.1.finish());
    histories
}

/// Waits until the router routes both VIPs over `count` nodes; the slower of the two.
fn wait_both(env: &ScaleOut, count: usize, timeout: Duration) -> Duration {
    vips()
        .iter()
        .map(|vip| {
            env.lab
                .wait_next_hops(vip.ip(), count, timeout)
                .unwrap_or_else(|e| panic!("{e}"))
        })
        .max()
        .unwrap_or_default()
}

/// How many of the flows changed node between two predictions, and how many of those were
/// not on `node` before.
fn moved(before: &[Option<usize>], after: &[Option<usize>], node: usize) -> (usize, usize) {
    let changed: Vec<_> = before.iter().zip(after).filter(|(b, a)| b != a).collect();
    let others = changed.iter().filter(|(b, _)| **b != Some(node)).count();
    (changed.len(), others)
}

/// Nodes per predicted node, for printing.
fn per_node(predicted: &[Option<usize>]) -> BTreeMap<Option<usize>, usize> {
    let mut counts = BTreeMap::new();
    for p in predicted {
        *counts.entry(*p).or_insert(0) += 1;
    }
    counts
}

/// Prints how many exchanges the flows made, their longest stall and how many went more than
/// two periods without an exchange (a lost packet costs a retransmission, 200 ms at least).
fn print_stalls(histories: &[History]) {
    let longest = histories
        .iter()
        .map(|h| h.max_gap)
        .max()
        .unwrap_or_default();
    let stalled = histories.iter().filter(|h| h.max_gap > 2 * PERIOD).count();
    println!(
        "{} flows, {} exchanges, longest stall {longest:?}, {stalled} flows over {:?}",
        histories.len(),
        histories.iter().map(|h| h.exchanges).sum::<usize>(),
        2 * PERIOD
    );
}

/// Checks that no flow failed or stalled; prints the longest stall.
fn assert_all_unharmed(histories: &[History]) {
    print_stalls(histories);
    histories.iter().for_each(assert_unharmed);
}

#[test]
fn withdrawing_a_node_moves_its_flows_without_a_failure() {
    let _serial = serial();
    let started = Instant::now();
    let env = ScaleOut::start("lbtsod", NODES, BACKENDS, &[0, 1, 2]);
    let flows = start_flows(&env);
    let v4 = vips()[0];
    let flow_clients = flows.0.locals().to_vec();
    let before = env.predicted_nodes(&flow_clients, v4);
    println!("IPv4 flows per node: {:?}", per_node(&before));
    // Node 0 is first in the router's next-hop list (an end: hash-threshold moves other flows
    // too), node 1 in the middle (only its own move).
    for node in [0, 1] {
        env.lab.withdraw(node).unwrap();
        let took = wait_both(&env, NODES - 1, ROUTE_WAIT);
        let after = env.predicted_nodes(&flow_clients, v4);
        assert!(
            after.iter().all(|n| *n != Some(node)),
            "no IPv4 flow goes to withdrawn node {node}"
        );
        let (changed, others) = moved(&before, &after, node);
        println!(
            "withdrew node {node}: routed around after {took:?}; {changed} IPv4 flows moved, \
             {others} of them from other nodes"
        );
        thread::sleep(SETTLE);
        env.lab.announce(node).unwrap();
        let took = wait_both(&env, NODES, ROUTE_WAIT);
        let back = env.predicted_nodes(&flow_clients, v4);
        let (changed, _) = moved(&before, &back, node);
        println!(
            "announced node {node} again: back after {took:?}; {changed} IPv4 flows elsewhere than before"
        );
        thread::sleep(SETTLE);
    }
    assert_all_unharmed(&finish(flows));
    println!("drain test: {:?}", started.elapsed());
}

/// How long after `t0` the router's routes to both VIPs had `count` next hops.
fn detected_after(env: &ScaleOut, t0: Instant, count: usize) -> Duration {
    wait_both(env, count, ROUTE_WAIT);
    t0.elapsed()
}

#[test]
fn a_lost_node_is_routed_around_and_its_flows_carry_on() {
    let _serial = serial();
    let started = Instant::now();
    let mut env = ScaleOut::start("lbtsok", NODES, BACKENDS, &[0, 1, 2]);
    let flows = start_flows(&env);

    // A crash: the node's BIRD is killed (the router sees its session close) and its daemon
    // stopped.
    let t0 = Instant::now();
    env.lab.kill_bird(2).unwrap();
    let detect = detected_after(&env, t0, NODES - 1);
    env.lab.daemon_mut(2).unwrap().stop().unwrap();
    println!("node 2's BIRD killed: the router dropped it after {detect:?}");
    assert!(detect < HOLD_TIME, "the closed session, not the hold timer");
    thread::sleep(SETTLE);
    env.lab.daemon_mut(2).unwrap().restart().unwrap();
    let t0 = Instant::now();
    env.lab.start_bird(2).unwrap();
    let session = env.lab.nodes[2]
        .bird
        .wait_established("tor", ROUTE_WAIT)
        .unwrap();
    println!("node 2's BIRD started again: its session is established after {session:?}");
    println!(
        "node 2 back: the router routes to it again after {:?}",
        detected_after(&env, t0, NODES)
    );
    thread::sleep(SETTLE);

    // The node's link goes down: the router's end loses its carrier, BIRD drops the session.
    let t0 = Instant::now();
    env.lab.link_down(1).unwrap();
    let detect = detected_after(&env, t0, NODES - 1);
    println!("node 1's link down: the router dropped it after {detect:?}");
    assert!(detect < HOLD_TIME, "the lost carrier, not the hold timer");
    thread::sleep(SETTLE);
    let t0 = Instant::now();
    env.lab.link_up(1).unwrap();
    println!(
        "node 1's link up: the router routes to it again after {:?}",
        detected_after(&env, t0, NODES)
    );
    thread::sleep(SETTLE);

    // A silent node: its BIRD stops answering (its daemon and datapath go on). Only the
    // router's hold timer finds it.
    let t0 = Instant::now();
    env.lab.pause_bird(0).unwrap();
    let detect = detected_after(&env, t0, NODES - 1);
    println!("node 0's BIRD paused: the router dropped it after {detect:?} (hold timer)");
    env.lab.resume_bird(0).unwrap();
    let t0 = Instant::now();
    println!(
        "node 0's BIRD resumed: the router routes to it again after {:?}",
        detected_after(&env, t0, NODES)
    );
    thread::sleep(SETTLE);

    let histories = finish(flows);
    print_stalls(&histories);
    for h in &histories {
        if let Some((_, reason)) = &h.failure {
            panic!(
                "{} on {} failed after {} exchanges: {reason}",
                h.served.local, h.served.cert_backend, h.exchanges
            );
        }
        assert!(
            h.max_gap <= LOST_NODE_STALL,
            "{} on {} stalled {:?}",
            h.served.local,
            h.served.cert_backend,
            h.max_gap
        );
    }
    println!("lost-node test: {:?}", started.elapsed());
}

#[test]
fn a_node_that_starts_announcing_takes_flows_without_a_failure() {
    let _serial = serial();
    let started = Instant::now();
    let env = ScaleOut::start("lbtsoj", NODES, BACKENDS, &[0, 1]);
    let flows = start_flows(&env);
    let v4 = vips()[0];
    let flow_clients = flows.0.locals().to_vec();
    let before = env.predicted_nodes(&flow_clients, v4);
    env.lab.announce(2).unwrap();
    let took = wait_both(&env, NODES, ROUTE_WAIT);
    let after = env.predicted_nodes(&flow_clients, v4);
    let (changed, _) = moved(&before, &after, 2);
    let joined: Vec<SocketAddr> = flow_clients
        .iter()
        .zip(&after)
        .filter(|(_, n)| **n == Some(2))
        .map(|(c, _)| *c)
        .collect();
    println!(
        "node 2 announced: routed to after {took:?}; {changed} IPv4 flows moved, {} to node 2, \
         {} between the others",
        joined.len(),
        changed - joined.len().min(changed)
    );
    assert!(!joined.is_empty(), "the joining node takes some flows");
    thread::sleep(SETTLE);
    // The flows the router now sends to node 2 cross its XDP program: its connection table
    // has them, with the backend every node agrees on.
    // (The node that carried a flow before keeps its entry too, until it expires.)
    for (client, placement) in joined.iter().zip(env.simulations(&joined, v4)) {
        assert_eq!(
            placement.per_node[2].reason, "connection table",
            "{client}: {placement:?}"
        );
        let backend = placement.per_node[2].backend;
        assert!(
            placement
                .per_node
                .iter()
                .all(|view| view.backend == backend),
            "{client}: the nodes disagree: {placement:?}"
        );
    }
    assert_all_unharmed(&finish(flows));
    println!("join test: {:?}", started.elapsed());
}

/// Node `node`'s daemon's CLI; panics unless it succeeds. Returns what it printed.
fn node_cli(env: &ScaleOut, node: usize, args: &[&str]) -> String {
    let daemon = env.lab.daemon(node).unwrap();
    let output = daemon.cli(args).unwrap();
    assert!(
        output.status.success(),
        "node {node}: lb {args:?}: {}\n{}",
        String::from_utf8_lossy(&output.stderr),
        daemon.log()
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// The daemons announce the VIPs themselves (`[announce]`, the defaults the shipped BIRD
/// fragment learns): `lb node drain` withdraws an end node (whose withdrawal moves other
/// nodes' flows too) before it returns, `undrain` brings it back; a node whose daemon and BIRD
/// are both killed is dropped by the router; 300 long-lived flows keep their backends
/// throughout, without one failure.
#[test]
fn the_daemons_announce_drain_and_withdraw_by_themselves() {
    let _serial = serial();
    let started = Instant::now();
    let mut env = ScaleOut::start_announcing("lbtsoa", NODES, BACKENDS);
    let table = env.lab.nodes[0]
        .ns
        .ip(&["route", "show", "table", "200"])
        .unwrap();
    assert!(
        table.contains("dev lbvip0 proto 200"),
        "node 0's table 200: {table}"
    );
    wait_status(&env, 0, "BGP tor established", ROUTE_WAIT);
    let flows = start_flows(&env);
    let v4 = vips()[0];
    let flow_clients = flows.0.locals().to_vec();
    let before = env.predicted_nodes(&flow_clients, v4);
    println!("IPv4 flows per node: {:?}", per_node(&before));

    // Node 0 is first in the router's next-hop list: an end.
    let drained = drain(&env, 0);
    let after = env.predicted_nodes(&flow_clients, v4);
    let (changed, others) = moved(&before, &after, 0);
    println!(
        "node 0 drained: lb node drain --timeout 1s returned after {drained:?}; {changed} IPv4 \
         flows moved, {others} of them from other nodes"
    );
    assert!(
        after.iter().all(|n| *n != Some(0)),
        "no flow goes to node 0"
    );
    thread::sleep(SETTLE);
    undrain(&env, 0);

    // The node crashes: its daemon (its device, and with it its routes, go) and its BIRD (the
    // router sees the session close) are killed. (Its pinned XDP program forwards on, as after
    // any crash; the flows move away anyway.)
    let t0 = Instant::now();
    env.lab.daemon_mut(2).unwrap().kill().unwrap();
    env.lab.kill_bird(2).unwrap();
    let detect = detected_after(&env, t0, NODES - 1);
    println!("node 2's daemon and BIRD killed: the router dropped it after {detect:?}");
    assert!(detect < HOLD_TIME, "the closed session, not the hold timer");
    thread::sleep(SETTLE);
    let t0 = Instant::now();
    env.lab.daemon_mut(2).unwrap().restart().unwrap();
    env.lab.start_bird(2).unwrap();
    println!(
        "node 2's daemon and BIRD restarted: the router routes to it again after {:?}",
        detected_after(&env, t0, NODES)
    );
    thread::sleep(SETTLE);

    assert_all_unharmed(&finish(flows));
    println!("daemon announcements test: {:?}", started.elapsed());
}

/// Waits until node `node`'s `lb status` contains `text` (the daemon asks BIRD every few
/// seconds); returns how long that took.
fn wait_status(env: &ScaleOut, node: usize, text: &str, timeout: Duration) -> Duration {
    let what = format!("node {node}'s lb status shows {text:?}");
    let ((), took) = poll(&what, timeout, || {
        let status = node_cli(env, node, &["status"]);
        status.contains(text).then_some(()).ok_or(status)
    });
    took
}

/// `lb node drain --timeout 1s` on node `node`; checks that the router no longer routes to it
/// when it returns. Returns how long the command took.
fn drain(env: &ScaleOut, node: usize) -> Duration {
    let t0 = Instant::now();
    node_cli(env, node, &["node", "drain", "--timeout", "1s"]);
    let took = t0.elapsed();
    for vip in vips() {
        let hops = env.lab.next_hops(vip.ip()).unwrap();
        assert!(
            hops.len() == NODES - 1 && hops.iter().all(|h| env.lab.node_of(*h) != Some(node)),
            "{}: {hops:?} once node {node}'s drain returned",
            vip.ip()
        );
    }
    took
}

/// `lb node undrain` on node `node`; prints when the router routes to it again, and lets the
/// flows run through the nodes for [`SETTLE`].
fn undrain(env: &ScaleOut, node: usize) {
    let t0 = Instant::now();
    node_cli(env, node, &["node", "undrain"]);
    println!(
        "node {node} undrained: the router routes to it again after {:?}",
        detected_after(env, t0, NODES)
    );
    thread::sleep(SETTLE);
}

/// Waits until every node's tables differ from `before` and agree with each other; returns
/// how long after `t0` that was, and the digests.
fn wait_tables_agree(
    env: &ScaleOut,
    before: &[(String, String)],
    t0: Instant,
    timeout: Duration,
) -> (Duration, Vec<(String, String)>) {
    loop {
        let all: Vec<_> = (0..NODES).map(|node| env.table_digests(node)).collect();
        if all[0] != before && all.iter().all(|d| *d == all[0]) {
            return (t0.elapsed(), all[0].clone());
        }
        assert!(
            t0.elapsed() < timeout,
            "the nodes' tables after {timeout:?}: {all:?} (before {before:?})"
        );
        thread::sleep(Duration::from_millis(100));
    }
}

/// The nodes check pool `web4`'s backends (a TCP check of the TLS port every 200 ms,
/// thresholds 2). One backend's servers stop while an end node drains, so that the drained
/// node's flows arrive at the other nodes while their views of the backend change: every flow
/// of a surviving backend keeps working on its backend (the stable table moves only the failed
/// backend's slots); the failed backend's flows fail. Prints how many surviving flows a plain
/// Maglev rebuild would have moved.
#[test]
fn a_backend_failing_while_a_node_drains_breaks_only_its_own_flows() {
    let _serial = serial();
    let started = Instant::now();
    let check = HealthCheck::fast_tcp(TLS_PORT);
    let mut env = ScaleOut::start_announcing_with("lbtsof", NODES, BACKENDS, &|_, config| {
        with_health_check(&config, "web4", &check)
    });
    let healthy = env.table_digests(0);
    let flows = start_flows(&env);
    let v4 = vips()[0];
    let flow_clients = flows.0.locals().to_vec();
    let before = env.predicted_nodes(&flow_clients, v4);
    println!("IPv4 flows per node: {:?}", per_node(&before));

    let failed = 1;
    let t0 = Instant::now();
    env.lab.stop_backend(failed);
    let drained = drain(&env, 0);
    let (moved_all, moved_others) = moved(&before, &env.predicted_nodes(&flow_clients, v4), 0);
    println!(
        "backend {failed} stopped and node 0 drained: drain returned after {drained:?}; \
         {moved_all} IPv4 flows moved node, {moved_others} of them from other nodes"
    );
    let (settled, digests) = wait_tables_agree(&env, &healthy, t0, Duration::from_secs(10));
    println!("every node's tables agree again {settled:?} after the backend stopped: {digests:?}");
    thread::sleep(SETTLE);
    undrain(&env, 0);

    let histories = finish(flows);
    let failed_name = env.lab.backends[failed].name.clone();
    let (dead, surviving) = on_backend(&histories, &failed_name);
    let broken = surviving.iter().filter(|h| h.failure.is_some()).count();
    println!(
        "{} flows on {failed_name} (all expected to fail): {} failed; {broken} of {} \
         surviving flows broke",
        dead.len(),
        dead.iter().filter(|h| h.failure.is_some()).count(),
        surviving.len()
    );
    assert!(!dead.is_empty(), "some flows were on {failed_name}");
    for h in &dead {
        assert!(h.failure.is_some(), "{h:?} outlived its backend");
    }
    let surviving: Vec<History> = surviving.into_iter().cloned().collect();
    assert_all_unharmed(&surviving);

    for vip in vips() {
        let of_family: Vec<_> = surviving
            .iter()
            .filter(|h| h.served.local.is_ipv4() == vip.is_ipv4())
            .map(|h| {
                let backend = env.backend_address(&h.served.cert_backend, vip.is_ipv4());
                (h.served.local, backend)
            })
            .collect();
        let pool = if vip.is_ipv4() { "web4" } else { "web6" };
        let failed_address = env.backend_address(&failed_name, vip.is_ipv4());
        let plain = plain_rebuild_moves(BACKENDS, pool, vip, &of_family, failed_address);
        println!(
            "{}: with a plain Maglev rebuild, {} of {} surviving flows would have changed \
             backend (with the stable table: 0); it moves {} of the other backends' {} slots",
            vip.ip(),
            plain.moved,
            plain.flows,
            plain.other_slots_moved,
            plain.other_slots
        );
    }
    println!(
        "backend failure under a drain test: {:?}",
        started.elapsed()
    );
}

/// Where every node's daemon serves its metrics, inside its own namespace.
const METRICS: &str = "127.0.0.1:9100";

/// Node `node`'s metrics.
fn node_metrics(env: &ScaleOut, node: usize) -> Scrape {
    scrape(&env.lab.nodes[node].ns, METRICS.parse().unwrap())
}

/// The `lb_table_info` samples of a scrape, sorted.
fn table_info(scrape: &Scrape) -> Vec<String> {
    let mut lines: Vec<String> = scrape
        .body
        .lines()
        .filter(|l| l.starts_with("lb_table_info{"))
        .map(str::to_owned)
        .collect();
    lines.sort();
    lines
}

/// Polls `probe` every 200 ms until it returns `Ok`; after `timeout`, panics with `what` and
/// the last `Err` (what was seen instead). Returns the value and how long it took.
fn poll<T>(
    what: &str,
    timeout: Duration,
    mut probe: impl FnMut() -> Result<T, String>,
) -> (T, Duration) {
    let t0 = Instant::now();
    loop {
        match probe() {
            Ok(value) => return (value, t0.elapsed()),
            Err(last) => assert!(t0.elapsed() < timeout, "{what} within {timeout:?}: {last}"),
        }
        thread::sleep(Duration::from_millis(200));
    }
}

/// Bad input on one node at a time never takes traffic down on the others, and each is
/// reported: node 0's daemon asks a BIRD socket that does not exist (`lb status`, metrics and
/// log say so; its announcements stand), node 1's BGP session is disabled (status and metrics
/// show it down, the router drops the node, the flows carry on through node 0), node 2 runs
/// another hash seed (its table digests differ from the others', in `lb listener list` and
/// in the metrics; it is drained, so that it takes no flow).
#[test]
fn bad_input_on_one_node_is_reported_and_never_takes_traffic_down() {
    let _serial = serial();
    let started = Instant::now();
    let env = ScaleOut::start_announcing_with("lbtsob", NODES, BACKENDS, &|node, config| {
        let config = with_metrics(&config, METRICS.parse().unwrap());
        match node {
            0 => with_line(
                &config,
                "bird_socket = ",
                "bird_socket = \"/nonexistent/bird.ctl\"",
            ),
            2 => with_line(
                &config,
                "hash_seed = ",
                &format!("hash_seed = {}", NODE_HASH_SEED + 1),
            ),
            _ => config,
        }
    });

    // A node that differs: its digests, and only its, differ.
    let digests: Vec<_> = (0..NODES).map(|node| env.table_digests(node)).collect();
    let infos: Vec<_> = (0..NODES)
        .map(|node| table_info(&node_metrics(&env, node)))
        .collect();
    println!("table digests per node: {digests:?}; lb_table_info per node: {infos:?}");
    assert_eq!(digests[0], digests[1], "nodes 0 and 1 run the same tables");
    assert_eq!(infos[0], infos[1], "nodes 0 and 1's lb_table_info");
    assert_eq!(
        infos[0].len(),
        2,
        "one lb_table_info per listener: {infos:?}"
    );
    for (listener, (mine, odd)) in digests[0].iter().zip(&digests[2]).enumerate() {
        assert_ne!(mine.1, odd.1, "listener {listener}: node 2's seed differs");
    }
    assert!(
        infos[2].iter().all(|l| !infos[0].contains(l)),
        "node 2's lb_table_info: {infos:?}"
    );
    drain(&env, 2);

    // A routing daemon that cannot be reached: reported; the node announces on.
    let took = wait_status(&env, 0, "unreachable", ROUTE_WAIT);
    println!("node 0 reports its routing daemon unreachable (after {took:?} of polling)");
    // The others report theirs up: at once, or at their next ask (every 2 s) if their first
    // came before their BIRD's socket was there.
    let (up, took) = poll(
        "nodes 1 and 2 report their routing daemon up",
        ROUTE_WAIT,
        || {
            let up: Vec<f64> = (0..NODES)
                .map(|node| node_metrics(&env, node).expect_value("lb_routing_daemon_up"))
                .collect();
            if up[1..].iter().all(|&u| u == 1.0) {
                Ok(up)
            } else {
                Err(format!("lb_routing_daemon_up per node: {up:?}"))
            }
        },
    );
    println!("lb_routing_daemon_up per node: {up:?} (after {took:?} of polling)");
    assert_eq!(up, [0.0, 1.0, 1.0]);
    let log = env.lab.daemon(0).unwrap().log();
    assert!(
        log.contains("the routing daemon cannot be asked"),
        "node 0's log:\n{log}"
    );
    let table = env.lab.nodes[0]
        .ns
        .ip(&["route", "show", "table", "200"])
        .unwrap();
    assert!(
        table.contains("dev lbvip0 proto 200"),
        "node 0's table 200: {table}"
    );

    // A BGP session that drops: the node says so, the router drops it, the flows carry on.
    let flows = start_flows(&env);
    let t0 = Instant::now();
    env.lab.nodes[1].bird.birdc(&["disable", "tor"]).unwrap();
    let dropped = detected_after(&env, t0, NODES - 2);
    let shown = wait_status(&env, 1, "BGP tor down\n", ROUTE_WAIT);
    let session = "lb_bgp_session_up{protocol=\"tor\"}";
    assert_eq!(node_metrics(&env, 1).expect_value(session), 0.0);
    println!(
        "node 1's session disabled: the router dropped it after {dropped:?}; lb status shows \
         `BGP tor down` after {shown:?}"
    );
    thread::sleep(SETTLE);
    let t0 = Instant::now();
    env.lab.nodes[1].bird.birdc(&["enable", "tor"]).unwrap();
    println!(
        "node 1's session enabled: the router routes to it again after {:?}",
        detected_after(&env, t0, NODES - 1)
    );
    poll("node 1's session up in its metrics", ROUTE_WAIT, || {
        let up = node_metrics(&env, 1).value(session);
        (up == Some(1.0))
            .then_some(())
            .ok_or(format!("{session} = {up:?}"))
    });
    thread::sleep(SETTLE);
    assert_all_unharmed(&finish(flows));
    println!("bad input test: {:?}", started.elapsed());
}

/// `config` with its line that starts with `prefix` replaced by `line`.
fn with_line(config: &str, prefix: &str, line: &str) -> String {
    assert!(
        config.lines().any(|l| l.starts_with(prefix)),
        "no line starts with {prefix:?}:\n{config}"
    );
    config
        .lines()
        .map(|l| if l.starts_with(prefix) { line } else { l })
        .collect::<Vec<_>>()
        .join("\n")
}

/// The nodes' L7 listener (offload, sticky, one cookie key file and one ticket key file for
/// every node): one user's requests, each from a source port the router sends to another
/// node, stay on one backend (the cookie) and resume their TLS session (the ticket, sealed on
/// one node, opened on the next). Before each of them, another client's request without a
/// cookie goes to the same node and moves its round robin on: those spread over the backends,
/// and the other client's first handshake is a full one (the checks can fail).
#[test]
fn one_users_requests_alternate_between_nodes_and_stay_sticky_and_resumed() {
    let _serial = serial();
    let started = Instant::now();
    let env = ScaleOut::start_l7("lbtsol", NODES, BACKENDS);
    let vip = SocketAddr::new(VIP_V4.into(), OFFLOAD_PORT);
    let roots = env.lab.pki.roots().unwrap();
    let client = || {
        ClientTls::trusting(&roots)
            .alpn(&[b"http/1.1"])
            .versions(Versions::Tls13Only)
            .config()
            .unwrap()
    };
    let (user, other) = (client(), client());
    let mut ports = Vec::new();
    let mut visit = |node: usize, config: &Arc<ClientConfig>, cookie: Option<&str>| {
        let port = env.port_to_node(node, vip, 41000, &ports);
        ports.push(port);
        let local = SocketAddr::new(CLIENT_V4.into(), port);
        let visit = visit_from(&env.lab.client, config, local, vip, cookie);
        assert!(visit.status.starts_with("HTTP/1.1 200"), "{visit:?}");
        visit
    };
    let mut cookie: Option<String> = None;
    let mut sticky: Option<String> = None;
    let mut unpinned = BTreeMap::new();
    let rounds = 2 * NODES + 1;
    for (k, node) in (0..NODES).cycle().take(rounds).enumerate() {
        let without = visit(node, &other, None);
        let expected = if k == 0 {
            HandshakeKind::Full
        } else {
            HandshakeKind::Resumed
        };
        assert_eq!(
            without.kind,
            Some(expected),
            "the other client's request {k}"
        );
        *unpinned.entry(without.backend.clone()).or_insert(0) += 1;

        let with = visit(node, &user, cookie.as_deref());
        println!(
            "request {k} on node {node}: {:?}, {:?}",
            with.kind, with.backend
        );
        assert_eq!(
            with.kind,
            Some(expected),
            "the user's request {k} on node {node}"
        );
        match &sticky {
            None => {
                sticky.clone_from(&with.backend);
                cookie = Some(
                    with.set_cookie
                        .expect("a sticky cookie on the first answer"),
                );
            }
            Some(first) => assert_eq!(with.backend.as_ref(), Some(first), "request {k} sticks"),
        }
    }
    println!(
        "the user's {rounds} requests over {NODES} nodes all on {sticky:?}, resumed after the \
         first; requests without a cookie per backend: {unpinned:?}"
    );
    assert!(
        unpinned.len() > 1,
        "requests without a cookie spread: {unpinned:?}"
    );
    println!("L7 test: {:?}", started.elapsed());
}
