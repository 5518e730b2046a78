//! The FIB path through `BPF_PROG_TEST_RUN`, in a namespace whose routes and neighbours the
//! test sets: the next hop's MAC from the neighbour table, `XDP_TX` out of the ingress
//! interface, `XDP_REDIRECT` through the devmap to another, and the kernel's answers when it
//! cannot forward (no neighbour yet, no route, forwarding off, MTU).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a test panics with a message; helpers here are part of the tests"
)]

use std::net::IpAddr;

use lb::{
    datapath::Datapath,
    lab::{NetNs, veth},
    loader::{AttachMode, Aux, attach, interface_index},
    state::{Listener, Protocol, Target, Vip},
};
use lb_common::counters::{Counter, CounterKind};
use lb_tests::{harness::*, packet::*};

const VIP: &str = "198.18.100.1";
const VIP6: &str = "2001:db8:100::1";
const NEIGHBOUR_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x10];

fn ip(text: &str) -> IpAddr {
    text.parse().unwrap()
}

fn listener(port: u16, vip: &str, backend: &str) -> Listener {
    Listener {
        name: format!("l{port}"),
        vip: Vip {
            address: ip(vip),
            port,
            protocol: Protocol::Tcp,
        },
        targets: vec![Target::new(ip(backend), 1)],
    }
}

fn mac_of(ns: &NetNs, iface: &str) -> [u8; 6] {
    let out = ns.ip(&["-br", "link", "show", iface]).unwrap();
    let mac = out
        .split_whitespace()
        .nth(2)
        .expect("a MAC in `ip -br link`");
    let bytes: Vec<u8> = mac
        .split(':')
        .map(|b| u8::from_str_radix(b, 16).unwrap())
        .collect();
    bytes.try_into().unwrap()
}

/// Runs `input` arriving on `in0` and checks action, frame and the one verdict counter.
fn check(
    harness: &mut Harness,
    ns: &NetNs,
    name: &str,
    input: &[u8],
    action: u32,
    counter: Counter,
    output: &[u8],
) {
    let ingress = ns.run_here(|| interface_index("in0")).unwrap().unwrap();
    let before = harness.counters();
    let out = ns
        .run_here(|| harness.run_on(input, Some(ingress)))
        .unwrap();
    let after = harness.counters();
    assert_eq!(out.action, action, "{name}: action");
    assert_eq!(out.frame, output, "{name}: frame");
    let moved: Vec<(Counter, u64)> = Counter::ALL
        .iter()
        .filter(|c| c.kind() != CounterKind::Event)
        .map(|&c| (c, after[c.index() as usize] - before[c.index() as usize]))
        .filter(|&(_, d)| d != 0)
        .collect();
    assert_eq!(moved, vec![(counter, 1)], "{name}: verdict counters");
}

#[test]
fn next_hops_come_from_the_fib() {
    lb_tests::require_root();
    let ns = NetNs::new("lbtfib").unwrap();
    let peer = NetNs::new("lbtfib").unwrap();
    veth(&ns, "in0", &peer, "in0p").unwrap();
    veth(&ns, "out0", &peer, "out0p").unwrap();
    for (args, what) in [
        (vec!["addr", "add", "198.18.0.2/24", "dev", "in0"], "in0 v4"),
        (
            vec!["-6", "addr", "add", "2001:db8::2/64", "dev", "in0", "nodad"],
            "in0 v6",
        ),
        (
            vec!["addr", "add", "198.18.9.2/24", "dev", "out0"],
            "out0 v4",
        ),
        (vec!["link", "set", "out0", "mtu", "1300"], "out0 mtu"),
        (
            vec![
                "neigh",
                "add",
                "198.18.0.10",
                "lladdr",
                "02:00:00:00:00:10",
                "dev",
                "in0",
                "nud",
                "permanent",
            ],
            "neighbour",
        ),
        (
            vec![
                "neigh",
                "add",
                "2001:db8::10",
                "lladdr",
                "02:00:00:00:00:10",
                "dev",
                "in0",
                "nud",
                "permanent",
            ],
            "neighbour v6",
        ),
        (
            vec![
                "neigh",
                "add",
                "198.18.9.10",
                "lladdr",
                "02:00:00:00:00:10",
                "dev",
                "out0",
                "nud",
                "permanent",
            ],
            "neighbour out0",
        ),
        (
            vec![
                "neigh",
                "add",
                "198.18.9.11",
                "lladdr",
                "02:00:00:00:00:10",
                "dev",
                "out0",
                "nud",
                "permanent",
            ],
            "neighbour out0 b",
        ),
    ] {
        ns.ip(&args).unwrap_or_else(|e| panic!("{what}: {e}"));
    }
    ns.sysctl("net.ipv4.ip_forward", "1").unwrap();
    ns.sysctl("net.ipv6.conf.all.forwarding", "1").unwrap();
    let in0_mac = mac_of(&ns, "in0");
    let out0_mac = mac_of(&ns, "out0");
    let out0 = ns.run_here(|| interface_index("out0")).unwrap().unwrap();

    let mut harness = Harness::new(fib_config(65_537, 1, 0));
    harness.apply(&[
        listener(1, VIP, "198.18.0.10"), // neighbour known, on the ingress link
        listener(2, VIP, "198.18.0.11"), // on the ingress link, neighbour unknown
        listener(3, VIP, "198.18.50.1"), // no route
        listener(4, VIP, "198.18.9.10"), // behind out0
        listener(5, VIP, "198.18.9.11"), // behind out0, MTU 1300
        listener(6, VIP6, "2001:db8::10"), // IPv6, neighbour known
    ]);

    let flow = |port: u16, vip: &str, client: &str| Flow {
        src: ip(client),
        dst: ip(vip),
        src_port: 40_000,
        dst_port: port,
        proto: TCP,
    };
    let syn = |port: u16| frame(&flow(port, VIP, "198.18.0.1"), Tcp::Syn, b"");
    // The frame encapsulated for `backend`, from MAC `src` to MAC `dst`. A frame handed to
    // the kernel keeps the client's MACs (CLIENT_MAC -> LB_MAC).
    let outer = |f: &[u8], backend: &str, src: [u8; 6], dst: [u8; 6]| {
        let spread = spread(f);
        let src_ip = if f[L3] >> 4 == 4 {
            IpAddr::from((ENCAP_V4_BASE | (spread & ENCAP_V4_MASK)).to_be_bytes())
        } else {
            let mut o = ENCAP_V6_BASE;
            o[14..16].copy_from_slice(&((spread & ENCAP_V6_MASK) as u16).to_be_bytes());
            IpAddr::from(o)
        };
        encapsulated(f, src_ip, ip(backend), src, dst)
    };

    let f = syn(1);
    check(
        &mut harness,
        &ns,
        "neighbour known: XDP_TX",
        &f,
        XDP_TX,
        Counter::TxLocal,
        &outer(&f, "198.18.0.10", in0_mac, NEIGHBOUR_MAC),
    );
    let f6 = frame(&flow(6, VIP6, "2001:db8::1"), Tcp::Syn, b"");
    check(
        &mut harness,
        &ns,
        "ipv6 neighbour known: XDP_TX",
        &f6,
        XDP_TX,
        Counter::TxLocal,
        &outer(&f6, "2001:db8::10", in0_mac, NEIGHBOUR_MAC),
    );
    let f = syn(2);
    check(
        &mut harness,
        &ns,
        "no neighbour yet: the kernel forwards",
        &f,
        XDP_PASS,
        Counter::PassNoNeighbour,
        &outer(&f, "198.18.0.11", CLIENT_MAC, LB_MAC),
    );
    let f = syn(3);
    check(
        &mut harness,
        &ns,
        "no route: dropped before encapsulation",
        &f,
        XDP_DROP,
        Counter::DropNoRoute,
        &f,
    );
    let f = syn(4);
    check(
        &mut harness,
        &ns,
        "other interface, not in the devmap: to the kernel, still addressed to this host",
        &f,
        XDP_PASS,
        Counter::PassNoTxPort,
        &outer(&f, "198.18.9.10", CLIENT_MAC, LB_MAC),
    );
    harness.reconciler.datapath_mut().add_tx_port(out0).unwrap();
    check(
        &mut harness,
        &ns,
        "other interface, in the devmap",
        &f,
        XDP_REDIRECT,
        Counter::TxRedirect,
        &outer(&f, "198.18.9.10", out0_mac, NEIGHBOUR_MAC),
    );
    let big = frame(
        &flow(5, VIP, "198.18.0.1"),
        Tcp::Ack,
        &vec![0; 1300 - 40 - 20 + 1],
    );
    check(
        &mut harness,
        &ns,
        "over the egress MTU (ICMP answers off)",
        &big,
        XDP_DROP,
        Counter::DropTooBig,
        &big,
    );
    // The next hop is cached per backend for NEXT_HOP_TTL_NS: a neighbour that goes away keeps
    // being used until the entry expires, then the FIB is asked again.
    ns.ip(&["neigh", "del", "198.18.0.10", "dev", "in0"])
        .unwrap();
    let f = syn(1);
    check(
        &mut harness,
        &ns,
        "cached next hop",
        &f,
        XDP_TX,
        Counter::TxLocal,
        &outer(&f, "198.18.0.10", in0_mac, NEIGHBOUR_MAC),
    );
    std::thread::sleep(ttl());
    check(
        &mut harness,
        &ns,
        "expired: the FIB has no neighbour",
        &f,
        XDP_PASS,
        Counter::PassNoNeighbour,
        &outer(&f, "198.18.0.10", CLIENT_MAC, LB_MAC),
    );
    ns.sysctl("net.ipv4.conf.in0.forwarding", "0").unwrap();
    check(
        &mut harness,
        &ns,
        "forwarding off",
        &f,
        XDP_DROP,
        Counter::DropForwardingDisabled,
        &f,
    );
}

/// A little longer than the next-hop cache keeps an entry.
fn ttl() -> std::time::Duration {
    std::time::Duration::from_nanos(lb_common::abi::NEXT_HOP_TTL_NS)
        + std::time::Duration::from_millis(20)
}

/// The MAC the balancer sent a frame of client port `port` to (its destination MAC), through
/// the FIB in `ns`, arriving on `in0`.
fn next_hop_mac(harness: &mut Harness, ns: &NetNs, port: u16) -> [u8; 6] {
    let ingress = ns.run_here(|| interface_index("in0")).unwrap().unwrap();
    let input = frame(
        &Flow {
            src: ip("198.18.0.1"),
            dst: ip(VIP),
            src_port: port,
            dst_port: 443,
            proto: TCP,
        },
        Tcp::Ack,
        b"x",
    );
    let out = ns
        .run_here(|| harness.run_on(&input, Some(ingress)))
        .unwrap();
    assert_eq!(
        out.action, XDP_REDIRECT,
        "port {port}: redirected out of out0"
    );
    out.frame[..6].try_into().unwrap()
}

/// A balancer's namespace whose route to the backend 198.18.50.10 leaves `out0`, its peer, and
/// a balancer whose listener forwards to it, with `out0` in its redirect map. `out0p` runs an
/// XDP program (returned, to keep it attached) so that `out0` takes redirected frames: without
/// one the daemon's refresh would rightly take `out0` out of the map.
fn routed_balancer(prefix: &str, route: &[&str]) -> (NetNs, NetNs, Harness, Aux) {
    let ns = NetNs::new(prefix).unwrap();
    let peer = NetNs::new(prefix).unwrap();
    veth(&ns, "in0", &peer, "in0p").unwrap();
    veth(&ns, "out0", &peer, "out0p").unwrap();
    let mut aux = Aux::load().unwrap();
    peer.run_here(|| attach(&mut aux.ebpf, Aux::PASS, "out0p", AttachMode::Driver))
        .unwrap()
        .unwrap();
    ns.ip(&["addr", "add", "198.18.0.2/24", "dev", "in0"])
        .unwrap();
    ns.ip(&["addr", "add", "198.18.9.2/24", "dev", "out0"])
        .unwrap();
    let mut args = vec!["route", "add", "198.18.50.10/32"];
    args.extend_from_slice(route);
    ns.ip(&args).unwrap();
    ns.sysctl("net.ipv4.ip_forward", "1").unwrap();
    let out0 = ns.run_here(|| interface_index("out0")).unwrap().unwrap();
    let mut harness = Harness::new(fib_config(65_537, 1, 0));
    harness.apply(&[listener(443, VIP, "198.18.50.10")]);
    harness.reconciler.datapath_mut().add_tx_port(out0).unwrap();
    (ns, peer, harness, aux)
}

/// What the daemon does every few seconds: look at the routes toward the backends (marking
/// multipath ones, making next hops managed neighbours), run in `ns`.
fn refresh_host(ns: &NetNs, harness: &mut Harness) {
    ns.run_here(|| {
        let rtnl = lb::host::rtnl::Rtnl::connect().unwrap();
        let mut watch = lb::daemon::host::HostWatch::new(rtnl, Default::default(), false);
        watch.refresh_if_due(&mut harness.reconciler, std::time::Instant::now(), true);
    })
    .unwrap();
}

/// With two next hops toward a backend, the FIB's multipath hash spreads flows (their outer
/// sources differ) over both. Cached per backend, one answer would carry every flow to one
/// next hop and move them all when it is refreshed; the daemon marks the backend multipath
/// and every flow keeps its own next hop.
#[test]
fn each_flow_keeps_its_next_hop_on_a_multipath_route() {
    lb_tests::require_root();
    let (ns, _peer, mut harness, _aux) = routed_balancer(
        "lbtecmp",
        &[
            "nexthop",
            "via",
            "198.18.9.1",
            "dev",
            "out0",
            "nexthop",
            "via",
            "198.18.9.3",
            "dev",
            "out0",
        ],
    );
    for (gateway, mac) in [
        ("198.18.9.1", "02:00:00:00:09:01"),
        ("198.18.9.3", "02:00:00:00:09:03"),
    ] {
        ns.ip(&[
            "neigh",
            "add",
            gateway,
            "lladdr",
            mac,
            "dev",
            "out0",
            "nud",
            "permanent",
        ])
        .unwrap();
    }
    let ports: Vec<u16> = (41_000..41_064).collect();

    // Without the mark, the per-backend cache hands every flow one next hop.
    let cached: std::collections::BTreeSet<[u8; 6]> = ports
        .iter()
        .map(|&p| next_hop_mac(&mut harness, &ns, p))
        .collect();
    assert_eq!(cached.len(), 1, "one cached next hop for all flows");

    refresh_host(&ns, &mut harness);
    assert!(harness.reconciler.is_multipath(ip("198.18.50.10")));
    std::thread::sleep(ttl());
    let first: Vec<[u8; 6]> = ports
        .iter()
        .map(|&p| next_hop_mac(&mut harness, &ns, p))
        .collect();
    let used: std::collections::BTreeSet<[u8; 6]> = first.iter().copied().collect();
    assert_eq!(used.len(), 2, "flows spread over both next hops");
    for round in 0..3 {
        std::thread::sleep(ttl());
        for (&port, &mac) in ports.iter().zip(&first) {
            assert_eq!(
                next_hop_mac(&mut harness, &ns, port),
                mac,
                "round {round}: the flow of port {port} moved to another next hop"
            );
        }
    }
}

/// The next hop is a managed neighbour (the kernel keeps it resolved although the XDP program's
/// packets never cross it). When its MAC changes and it says so (a gratuitous ARP, as a router
/// failing over sends), the balancer follows within a second.
#[test]
fn a_next_hops_new_mac_is_followed_within_a_second() {
    lb_tests::require_root();
    let (ns, peer, mut harness, _aux) =
        routed_balancer("lbtmac", &["via", "198.18.9.1", "dev", "out0"]);
    peer.ip(&["addr", "add", "198.18.9.1/24", "dev", "out0p"])
        .unwrap();
    peer.sysctl("net.ipv4.conf.out0p.arp_notify", "1").unwrap();
    refresh_host(&ns, &mut harness);
    let managed = |ns: &NetNs| {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(3);
        loop {
            let table = ns.ip(&["-d", "neigh", "show", "198.18.9.1"]).unwrap();
            if table.contains("managed") && table.contains("REACHABLE") {
                return table;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the next hop was not resolved on its own: {table}"
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    };
    managed(&ns);
    assert_eq!(
        next_hop_mac(&mut harness, &ns, 42_000),
        mac_of(&peer, "out0p")
    );

    let new_mac = [0x02, 0, 0, 0, 0x09, 0x99];
    peer.ip(&["link", "set", "out0p", "address", "02:00:00:00:09:99"])
        .unwrap();
    let changed = std::time::Instant::now();
    while next_hop_mac(&mut harness, &ns, 42_000) != new_mac {
        assert!(
            changed.elapsed() < std::time::Duration::from_secs(1),
            "the new MAC was not followed within a second"
        );
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    let table = ns.ip(&["-d", "neigh", "show", "198.18.9.1"]).unwrap();
    assert!(
        table.contains("managed") && table.contains("02:00:00:00:09:99"),
        "{table}"
    );
}
