//! The XDP program and the userspace model agree: for random flows, the backend the program
//! sends a new flow to (read from the encapsulated frame) is the one `lb::model` predicts from
//! the table the reconciler wrote.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a test panics with a message; helpers here are part of the tests"
)]

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use lb::state::{Listener, Protocol, Target, Vip};
use lb_tests::{harness::*, packet::*};
use rand::{Rng, SeedableRng, rngs::StdRng};

const FLOWS_PER_FAMILY: usize = 6_000;

fn listener(name: &str, vip: IpAddr, protocol: Protocol, backends: &[(IpAddr, u32)]) -> Listener {
    Listener {
        name: name.to_owned(),
        vip: Vip {
            address: vip,
            port: 443,
            protocol,
        },
        targets: backends
            .iter()
            .map(|&(address, weight)| Target::new(address, weight))
            .collect(),
    }
}

/// The outer destination of an encapsulated frame.
fn outer_destination(frame: &[u8]) -> IpAddr {
    let ip = &frame[L3..];
    if ip[0] >> 4 == 4 {
        IpAddr::from([ip[16], ip[17], ip[18], ip[19]])
    } else {
        let mut octets = [0u8; 16];
        octets.copy_from_slice(&ip[24..40]);
        IpAddr::from(octets)
    }
}

#[test]
fn xdp_and_model_pick_the_same_backend_for_random_flows() {
    let vip4 = IpAddr::V4(Ipv4Addr::new(198, 18, 100, 1));
    let vip6: IpAddr = "2001:db8:100::1".parse().unwrap();
    let backends4: Vec<(IpAddr, u32)> = (1..=7)
        .map(|i| {
            (
                IpAddr::V4(Ipv4Addr::new(198, 18, 1, i)),
                u32::from(i % 3) + 1,
            )
        })
        .collect();
    let backends6: Vec<(IpAddr, u32)> = (1..=5)
        .map(|i| {
            (
                IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, 0, i)),
                1,
            )
        })
        .collect();
    let listeners = vec![
        listener("tcp4", vip4, Protocol::Tcp, &backends4),
        listener("udp4", vip4, Protocol::Udp, &backends4[..3]),
        listener("tcp6", vip6, Protocol::Tcp, &backends6),
        listener("udp6", vip6, Protocol::Udp, &backends6[1..]),
    ];
    let mut harness = Harness::new(static_config(65_537, 0xdecaf, 1500));
    harness.apply(&listeners);

    let mut rng = StdRng::seed_from_u64(7);
    let mut checked = [0usize; 2];
    for i in 0..2 * FLOWS_PER_FAMILY {
        let v6 = i % 2 == 1;
        let protocol = if rng.random_bool(0.5) {
            Protocol::Tcp
        } else {
            Protocol::Udp
        };
        let client: IpAddr = if v6 {
            let low: u64 = rng.random();
            IpAddr::V6(Ipv6Addr::from(
                (0x2001_0db8_0000_0000u128 << 64) | u128::from(low),
            ))
        } else {
            IpAddr::V4(Ipv4Addr::new(198, 18, rng.random(), rng.random()))
        };
        let vip = if v6 { vip6 } else { vip4 };
        let client = SocketAddr::new(client, rng.random_range(1024..=65535));
        let name = match (v6, protocol) {
            (false, Protocol::Tcp) => "tcp4",
            (false, Protocol::Udp) => "udp4",
            (true, Protocol::Tcp) => "tcp6",
            (true, Protocol::Udp) => "udp6",
        };
        let flow = Flow {
            src: client.ip(),
            dst: vip,
            src_port: client.port(),
            dst_port: 443,
            proto: protocol.number(),
        };
        let out = harness.run(&frame(&flow, Tcp::Syn, b"agreement"));
        assert_eq!(out.action, XDP_TX, "flow {flow:?} was not forwarded");

        let key = lb::model::flow_key(client, SocketAddr::new(vip, 443), protocol);
        let table = harness.reconciler.live_table(name).expect("a live table");
        let id = lb::model::maglev_pick(&key, harness.reconciler.config(), table).expect("a slot");
        let applied = &harness.reconciler.listeners()[name];
        let predicted = applied
            .backends
            .iter()
            .find(|(_, b)| b.id == id)
            .map(|(address, _)| *address)
            .expect("the predicted backend is in the pool");
        assert_eq!(outer_destination(&out.frame), predicted, "flow {flow:?}");
        checked[usize::from(v6)] += 1;
    }
    assert_eq!(checked, [FLOWS_PER_FAMILY, FLOWS_PER_FAMILY]);
}
