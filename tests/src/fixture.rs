//! Packet fixtures' common ground: the addresses and listeners the fixtures configure, the
//! frames the balancer must send for a case, and [`run_cases`], which feeds each case's frame
//! to the real balancer and checks the XDP action, the output frame byte for byte, and that
//! exactly one verdict counter (the expected one) moved.

use std::net::IpAddr;

use lb::state::{Listener, Protocol, Target, Vip};
use lb_common::counters::{Counter, CounterKind};

use crate::{harness::*, packet::*};

pub const VIP4: &str = "198.18.100.1";
pub const VIP4_EMPTY: &str = "198.18.100.2";
pub const VIP6: &str = "2001:db8:100::1";
pub const BACKEND4_TCP: &str = "198.18.1.10";
pub const BACKEND4_UDP: &str = "198.18.1.20";
pub const BACKEND6_TCP: &str = "2001:db8:1::10";
pub const BACKEND6_UDP: &str = "2001:db8:1::20";
pub const CLIENT4: &str = "198.18.0.1";
pub const CLIENT6: &str = "2001:db8::1";
pub const MTU: u32 = 1500;

pub fn ip(text: &str) -> IpAddr {
    text.parse().expect("an address")
}

pub fn listener(
    name: &str,
    vip: &str,
    port: u16,
    protocol: Protocol,
    backends: &[&str],
) -> Listener {
    Listener {
        name: name.to_owned(),
        vip: Vip {
            address: ip(vip),
            port,
            protocol,
        },
        targets: backends.iter().map(|b| Target::new(ip(b), 1)).collect(),
    }
}

pub fn listeners() -> Vec<Listener> {
    vec![
        listener("web4", VIP4, 443, Protocol::Tcp, &[BACKEND4_TCP]),
        listener("dns4", VIP4, 53, Protocol::Udp, &[BACKEND4_UDP]),
        listener("web6", VIP6, 443, Protocol::Tcp, &[BACKEND6_TCP]),
        listener("dns6", VIP6, 53, Protocol::Udp, &[BACKEND6_UDP]),
        listener("empty", VIP4_EMPTY, 443, Protocol::Tcp, &[]),
    ]
}

pub fn flow(src: &str, dst: &str, src_port: u16, dst_port: u16, proto: u8) -> Flow {
    Flow {
        src: ip(src),
        dst: ip(dst),
        src_port,
        dst_port,
        proto,
    }
}

pub fn tcp4(src_port: u16) -> Flow {
    flow(CLIENT4, VIP4, src_port, 443, TCP)
}

pub fn tcp6(src_port: u16) -> Flow {
    flow(CLIENT6, VIP6, src_port, 443, TCP)
}

/// The outer source the fixtures' configuration gives `frame`'s flow.
pub fn outer_src(frame: &[u8]) -> IpAddr {
    outer_src_of(spread(frame), frame[L3] >> 4 == 4)
}

/// The outer source the fixtures' configuration gives a flow with `spread`.
pub fn outer_src_of(spread: u32, is_v4: bool) -> IpAddr {
    if is_v4 {
        IpAddr::from((ENCAP_V4_BASE | (spread & ENCAP_V4_MASK)).to_be_bytes())
    } else {
        let mut octets = ENCAP_V6_BASE;
        let low = (spread & ENCAP_V6_MASK) as u16;
        octets[14..16].copy_from_slice(&low.to_be_bytes());
        IpAddr::from(octets)
    }
}

/// `frame` encapsulated for `backend` with the fixtures' static next hop.
pub fn to_backend(frame: &[u8], backend: &str) -> Vec<u8> {
    encapsulated(frame, outer_src(frame), ip(backend), LB_MAC, NEXT_HOP_MAC)
}

/// An ICMP error `frame` about `flow` (the client's side of it), encapsulated for `backend`: the
/// outer source comes from the flow, not from the ICMP packet.
pub fn to_backend_for(frame: &[u8], flow: &Flow, backend: &str) -> Vec<u8> {
    let spread = flow_spread(flow);
    let outer = outer_src_of(spread, flow.src.is_ipv4());
    encapsulated_with_spread(frame, spread, outer, ip(backend), LB_MAC, NEXT_HOP_MAC)
}

fn socket(address: &str, port: u16) -> std::net::SocketAddr {
    std::net::SocketAddr::new(ip(address), port)
}

/// A client port from `from` up whose flow (from `client` to `vip`:443, TCP) the live table of
/// `listener` places on `backend`.
pub fn port_placed_on(
    harness: &Harness,
    listener: &str,
    backend: &str,
    (client, vip): (&str, &str),
    from: u16,
) -> u16 {
    let applied = &harness.reconciler.listeners()[listener];
    let id = applied.backends[&ip(backend)].id;
    let table = harness
        .reconciler
        .live_table(listener)
        .expect("a live table");
    (from..u16::MAX)
        .find(|&port| {
            let key = lb::model::flow_key(socket(client, port), socket(vip, 443), Protocol::Tcp);
            lb::model::maglev_pick(&key, harness.reconciler.config(), table) == Some(id)
        })
        .expect("some port maps to the backend")
}

/// One fixture: a frame in, the action and the frame out, and the verdict counter.
pub struct Case {
    pub name: &'static str,
    pub input: Vec<u8>,
    pub action: u32,
    pub counter: Counter,
    pub output: Vec<u8>,
}

pub fn forwarded(name: &'static str, input: Vec<u8>, backend: &str) -> Case {
    let output = to_backend(&input, backend);
    Case {
        name,
        input,
        action: XDP_TX,
        counter: Counter::TxLocal,
        output,
    }
}

pub fn untouched(name: &'static str, input: Vec<u8>, action: u32, counter: Counter) -> Case {
    Case {
        name,
        output: input.clone(),
        input,
        action,
        counter,
    }
}

pub fn passed(name: &'static str, input: Vec<u8>, counter: Counter) -> Case {
    untouched(name, input, XDP_PASS, counter)
}

pub fn dropped(name: &'static str, input: Vec<u8>, counter: Counter) -> Case {
    untouched(name, input, XDP_DROP, counter)
}

pub fn run_cases(harness: &mut Harness, cases: Vec<Case>) {
    for case in cases {
        let before = harness.counters();
        let out = harness.run(&case.input);
        let after = harness.counters();
        assert_eq!(out.action, case.action, "{}: action", case.name);
        assert_eq!(
            out.frame, case.output,
            "{}: output frame (got {:02x?})",
            case.name, out.frame
        );
        let moved: Vec<(Counter, u64)> = Counter::ALL
            .iter()
            .filter(|c| c.kind() != CounterKind::Event)
            .map(|&c| (c, after[c.index() as usize] - before[c.index() as usize]))
            .filter(|&(_, delta)| delta != 0)
            .collect();
        assert_eq!(
            moved,
            vec![(case.counter, 1)],
            "{}: verdict counters",
            case.name
        );
    }
}
