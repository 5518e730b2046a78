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
    loader::interface_index,
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
