//! The backends' decapsulator through `BPF_PROG_TEST_RUN`: IP-in-IP in, the client's packet out
//! with the Ethernet header in front of it; everything else untouched.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a test panics with a message; helpers here are part of the tests"
)]

use std::net::IpAddr;

use lb_tests::{harness::*, packet::*};

fn ip(text: &str) -> IpAddr {
    text.parse().expect("an address")
}

fn flow4() -> Flow {
    Flow {
        src: ip("198.18.0.1"),
        dst: ip("198.18.100.1"),
        src_port: 40_000,
        dst_port: 443,
        proto: TCP,
    }
}

fn flow6() -> Flow {
    Flow {
        src: ip("2001:db8::1"),
        dst: ip("2001:db8:100::1"),
        src_port: 40_000,
        dst_port: 443,
        proto: TCP,
    }
}

fn ipip4(inner: &[u8]) -> Vec<u8> {
    encapsulated(
        inner,
        ip("198.18.255.7"),
        ip("198.18.1.10"),
        LB_MAC,
        CLIENT_MAC,
    )
}

fn ipip6(inner: &[u8]) -> Vec<u8> {
    encapsulated(
        inner,
        ip("2001:db8:ff::7"),
        ip("2001:db8:1::10"),
        LB_MAC,
        CLIENT_MAC,
    )
}

/// `inner` as the backend's kernel must see it: the outer frame's MACs, the inner packet.
fn delivered(outer: &[u8], inner: &[u8]) -> Vec<u8> {
    let mut out = outer[..12].to_vec();
    out.extend_from_slice(&inner[12..]);
    out
}

#[test]
fn decapsulates_ip_in_ip_and_passes_everything_else() {
    let mut decap = DecapHarness::new();
    let syn4 = frame(&flow4(), Tcp::Syn, b"");
    let data6 = frame(&flow6(), Tcp::Ack, b"some data");
    let outer4 = ipip4(&syn4);
    let outer6 = ipip6(&data6);

    let mut outer4_options = with_ipv4_options(&outer4, &[1, 1, 1, 1]);
    fix_ipv4_checksum(&mut outer4_options);
    let mut outer4_fragment = outer4.clone();
    outer4_fragment[L3 + 6] = 0x20;
    let mut inner_not_v4 = outer4.clone();
    inner_not_v4[L3 + 20] = 0x65;
    let mut inner_not_v6 = outer6.clone();
    inner_not_v6[L3 + 40] = 0x45;
    let mut outer4_bad_ihl = outer4.clone();
    outer4_bad_ihl[L3] = 0x44;
    let mut outer4_short_total = outer4.clone();
    outer4_short_total[L3 + 2..L3 + 4].copy_from_slice(&30u16.to_be_bytes());
    let mut outer6_short_payload = outer6.clone();
    outer6_short_payload[L3 + 4..L3 + 6].copy_from_slice(&20u16.to_be_bytes());

    let cases: Vec<(&str, Vec<u8>, u32, Vec<u8>)> = vec![
        (
            "ipv4 in ipv4",
            outer4.clone(),
            XDP_PASS,
            delivered(&outer4, &syn4),
        ),
        (
            "ipv6 in ipv6",
            outer6.clone(),
            XDP_PASS,
            delivered(&outer6, &data6),
        ),
        (
            "outer ipv4 options",
            outer4_options.clone(),
            XDP_PASS,
            delivered(&outer4_options, &syn4),
        ),
        ("plain tcp", syn4.clone(), XDP_PASS, syn4.clone()),
        ("plain ipv6", data6.clone(), XDP_PASS, data6.clone()),
        ("arp", arp(), XDP_PASS, arp()),
        (
            "truncated inner ipv4",
            outer4[..L3 + 20 + 10].to_vec(),
            XDP_DROP,
            outer4[..L3 + 30].to_vec(),
        ),
        (
            "truncated inner ipv6",
            outer6[..L3 + 40 + 30].to_vec(),
            XDP_DROP,
            outer6[..L3 + 70].to_vec(),
        ),
        (
            "outer fragment",
            outer4_fragment.clone(),
            XDP_DROP,
            outer4_fragment,
        ),
        (
            "inner of the wrong version (v4)",
            inner_not_v4.clone(),
            XDP_DROP,
            inner_not_v4,
        ),
        (
            "inner of the wrong version (v6)",
            inner_not_v6.clone(),
            XDP_DROP,
            inner_not_v6,
        ),
        (
            "outer IHL below 5",
            outer4_bad_ihl.clone(),
            XDP_DROP,
            outer4_bad_ihl,
        ),
        (
            "outer total length too short",
            outer4_short_total.clone(),
            XDP_DROP,
            outer4_short_total,
        ),
        (
            "outer payload length too short",
            outer6_short_payload.clone(),
            XDP_DROP,
            outer6_short_payload,
        ),
    ];
    for (name, input, action, output) in cases {
        let out = decap.run(&input);
        assert_eq!(out.action, action, "{name}: action");
        assert_eq!(out.frame, output, "{name}: frame");
    }
}

/// What the balancer sends, the decapsulator turns back into the client's packet.
#[test]
fn balancer_output_round_trips_through_the_decapsulator() {
    use lb::state::{Listener, Protocol, Target, Vip};
    let mut balancer = Harness::new(static_config(65_537, 1, 1500));
    let mut decap = DecapHarness::new();
    balancer.apply(&[
        Listener {
            name: "v4".into(),
            vip: Vip {
                address: ip("198.18.100.1"),
                port: 443,
                protocol: Protocol::Tcp,
            },
            targets: vec![Target::new(ip("198.18.1.10"), 1)],
        },
        Listener {
            name: "v6".into(),
            vip: Vip {
                address: ip("2001:db8:100::1"),
                port: 443,
                protocol: Protocol::Tcp,
            },
            targets: vec![Target::new(ip("2001:db8:1::10"), 1)],
        },
    ]);
    for input in [
        frame(&flow4(), Tcp::Syn, b""),
        frame(&flow4(), Tcp::Ack, &[7; 1000]),
        frame(&flow6(), Tcp::Syn, b""),
        frame(&flow6(), Tcp::Ack, &[8; 1000]),
    ] {
        let encapsulated = balancer.run(&input);
        assert_eq!(encapsulated.action, XDP_TX);
        let out = decap.run(&encapsulated.frame);
        assert_eq!(out.action, XDP_PASS);
        assert_eq!(out.frame, delivered(&encapsulated.frame, &input));
    }
}
