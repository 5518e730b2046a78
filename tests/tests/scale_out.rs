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
//! - the daemons' own announcements (`[announce]`): `lb node drain` has withdrawn the node when
//!   it returns, `undrain` announces again, a killed daemon's routes vanish with its device.
//!
//! Except in the last, the announcements are made by hand (`ScaleOutLab::announce`: a route in
//! table 200 with protocol 200, what the daemon writes), so that those tests show the BIRD
//! plumbing and the agreement between nodes whatever the daemon decides to announce. The tests run one at a time: each holds hundreds of connections
//! and three daemons on a small machine.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a test panics with a message; helpers here are part of the tests"
)]

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    sync::{Mutex, MutexGuard},
    thread,
    time::{Duration, Instant},
};

use lb_tests::{
    histories::assert_unharmed,
    long_lived::{History, LongLived},
    scale_out::{ROUTE_WAIT, ScaleOut, vips},
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
/// fragment learns): `lb node drain` withdraws a node before it returns, `undrain` brings it
/// back, a killed daemon's routes vanish with its device; no flow fails.
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
    // The daemon asks BIRD every few seconds.
    let deadline = Instant::now() + ROUTE_WAIT;
    loop {
        let status = node_cli(&env, 0, &["status"]);
        if status.contains("BGP tor established") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "lb status shows the established BGP session:\n{status}"
        );
        thread::sleep(Duration::from_millis(200));
    }
    let flows = start_flows(&env);

    let t0 = Instant::now();
    node_cli(&env, 1, &["node", "drain", "--timeout", "1s"]);
    let drained = t0.elapsed();
    for vip in vips() {
        let hops = env.lab.next_hops(vip.ip()).unwrap();
        assert_eq!(
            hops.len(),
            NODES - 1,
            "{}: {hops:?} once drain returned",
            vip.ip()
        );
    }
    println!("node 1 drained: lb node drain returned after {drained:?}");
    thread::sleep(SETTLE);
    let t0 = Instant::now();
    node_cli(&env, 1, &["node", "undrain"]);
    println!(
        "node 1 undrained: the router routes to it again after {:?}",
        detected_after(&env, t0, NODES)
    );
    thread::sleep(SETTLE);

    // The daemon dies: its device, and with it its routes, go; BIRD withdraws them at once.
    // (Its pinned XDP program forwards on, as after any crash; the flows move away anyway.)
    let t0 = Instant::now();
    env.lab.daemon_mut(2).unwrap().kill().unwrap();
    let detect = detected_after(&env, t0, NODES - 1);
    println!("node 2's daemon killed: the router dropped it after {detect:?}");
    assert!(
        detect < HOLD_TIME,
        "the vanished routes, not the hold timer"
    );
    thread::sleep(SETTLE);
    let t0 = Instant::now();
    env.lab.daemon_mut(2).unwrap().restart().unwrap();
    println!(
        "node 2's daemon restarted: the router routes to it again after {:?}",
        detected_after(&env, t0, NODES)
    );
    thread::sleep(SETTLE);

    assert_all_unharmed(&finish(flows));
    println!("daemon announcements test: {:?}", started.elapsed());
}
