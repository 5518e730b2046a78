//! The lab's own machinery, which needs root: namespaces that run commands and threads and
//! disappear on drop, veths that never touch the root namespace, stale namespaces swept, and
//! TLS servers inside namespaces.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a test panics with a message; helpers here are part of the tests"
)]

use std::{fs, process::Command};

use lb::lab::{NetNs, Pki, TlsServer, sweep_stale, tls_exchange, veth};

fn ip(args: &[&str]) -> String {
    let out = Command::new("ip").args(args).output().expect("running ip");
    assert!(
        out.status.success(),
        "ip {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn is_listed(name: &str) -> bool {
    ip(&["netns", "list"])
        .lines()
        .any(|line| line.split_whitespace().next() == Some(name))
}

fn current_netns() -> String {
    let link = fs::read_link("/proc/thread-self/ns/net").expect("read /proc/thread-self/ns/net");
    link.to_string_lossy().into_owned()
}

#[test]
fn a_namespace_runs_commands_and_threads_and_is_deleted_on_drop() {
    lb_tests::require_root();
    let ns = NetNs::new("lbtest").expect("create namespace");
    let name = ns.name().to_owned();
    assert!(is_listed(&name), "{name} missing from `ip netns list`");
    ns.ip(&["link", "set", "lo", "up"]).expect("lo up");
    ns.sysctl("net.ipv4.ip_forward", "1").expect("sysctl");
    let forward = ns
        .run(&["cat", "/proc/sys/net/ipv4/ip_forward"])
        .expect("read ip_forward");
    assert_eq!(forward.trim(), "1");

    let outside = current_netns();
    let inside = ns
        .spawn("lbtest-thread", current_netns)
        .expect("spawn in namespace")
        .join()
        .expect("thread ran");
    assert_ne!(inside, outside, "spawned thread did not change namespace");
    assert_eq!(current_netns(), outside, "spawn moved the caller");
    let here = ns.run_here(current_netns).expect("run here");
    assert_eq!(here, inside, "run_here runs inside");
    assert_eq!(current_netns(), outside, "run_here came back");

    drop(ns);
    assert!(!is_listed(&name), "{name} still listed after drop");
}

#[test]
fn a_veth_links_two_namespaces_and_never_the_root_one() {
    lb_tests::require_root();
    let a = NetNs::new("lbtest").expect("namespace a");
    let b = NetNs::new("lbtest").expect("namespace b");
    veth(&a, "lbt-a", &b, "lbt-b").expect("veth");
    a.ip(&["addr", "add", "198.18.0.1/30", "dev", "lbt-a"])
        .expect("address a");
    let links = b.ip(&["-o", "link", "show", "lbt-b"]).expect("show b");
    assert!(links.contains("lbt-b@"), "peer not in namespace b: {links}");
    assert!(
        !ip(&["-o", "link", "show"]).contains("lbt-a"),
        "veth leaked into the root namespace"
    );
}

#[test]
fn a_sweep_removes_only_namespaces_of_dead_owners() {
    lb_tests::require_root();
    let mut child = Command::new("true").spawn().expect("spawn `true`");
    let dead_pid = child.id();
    child.wait().expect("wait for `true`");
    let dead = format!("lbsweep-{dead_pid}-0");
    let odd = format!("lbsweep-{dead_pid}");
    ip(&["netns", "add", &dead]);
    ip(&["netns", "add", &odd]);
    let alive = NetNs::new("lbsweep").expect("live namespace");

    let deleted = sweep_stale("lbsweep").expect("sweep");
    let odd_listed = is_listed(&odd);
    ip(&["netns", "del", &odd]);

    assert!(deleted.contains(&dead), "{dead} not swept: {deleted:?}");
    assert!(!is_listed(&dead), "stale namespace still listed");
    assert!(odd_listed, "sweep deleted a name outside the pattern");
    assert!(is_listed(alive.name()), "sweep deleted a live namespace");
}

#[test]
fn a_tls_server_serves_inside_a_namespace() {
    lb_tests::require_root();
    let ns = NetNs::new("lbtls").expect("namespace");
    let name = ns.name().to_owned();
    ns.ip(&["link", "set", "lo", "up"]).expect("lo up");
    let pki = Pki::new("lab test CA").expect("CA");
    let issued = pki.issue(&["backend.lab"]).expect("issue");
    let bind = "127.0.0.1:0".parse().expect("loopback");
    let server = TlsServer::start(Some(&ns), bind, "ns1", &issued).expect("start");
    let addr = server.local_addr();
    let roots = pki.roots().expect("roots");
    let exchange = ns
        .spawn("lbtls-client", move || {
            tls_exchange("backend.lab", addr, &roots, "inside")
        })
        .expect("spawn client")
        .join()
        .expect("client thread")
        .expect("exchange inside the namespace");
    assert_eq!(exchange.reply, "ns1 inside");
    server.stop().expect("stop");
    drop(ns);
    assert!(!is_listed(&name), "{name} still listed after drop");
}

#[test]
fn a_tls_server_serves_across_a_veth() {
    lb_tests::require_root();
    let server_ns = NetNs::new("lbtls").expect("server namespace");
    let client_ns = NetNs::new("lbtls").expect("client namespace");
    veth(&server_ns, "lbs0", &client_ns, "lbc0").expect("veth");
    server_ns
        .ip(&["addr", "add", "198.18.1.1/24", "dev", "lbs0"])
        .expect("server address");
    client_ns
        .ip(&["addr", "add", "198.18.1.2/24", "dev", "lbc0"])
        .expect("client address");
    let pki = Pki::new("lab test CA").expect("CA");
    let issued = pki.issue(&["198.18.1.1"]).expect("issue");
    let bind = "198.18.1.1:8443".parse().expect("server address");
    let server = TlsServer::start(Some(&server_ns), bind, "far", &issued).expect("start");
    let roots = pki.roots().expect("roots");
    let exchange = client_ns
        .spawn("lbtls-client", move || {
            tls_exchange("198.18.1.1", bind, &roots, "across")
        })
        .expect("spawn client")
        .join()
        .expect("client thread")
        .expect("exchange across the veth");
    assert_eq!(exchange.reply, "far across");
    assert_eq!(exchange.local_addr.ip().to_string(), "198.18.1.2");
    assert_eq!(server.accepted(), [exchange.local_addr]);
}
