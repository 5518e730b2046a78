//! The backends' decapsulator through `BPF_PROG_TEST_RUN`: IP-in-IP to one of its VIPs in, the
//! client's packet out with the link-layer header (tags included) in front of it; ECN marks
//! carried over (RFC 6040); everything else untouched or dropped, each verdict counted.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a test panics with a message; helpers here are part of the tests"
)]

use std::net::IpAddr;

use lb_common::counters::{CounterKind, DecapCounter};
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

/// The VIPs the fixtures' decapsulator accepts.
fn vips() -> Vec<IpAddr> {
    vec![ip("198.18.100.1"), ip("2001:db8:100::1")]
}

/// One fixture: a frame in, the action, the frame out, and the one counter that moves.
struct Case {
    name: &'static str,
    input: Vec<u8>,
    action: u32,
    output: Vec<u8>,
    counter: DecapCounter,
}

fn case(
    name: &'static str,
    input: Vec<u8>,
    action: u32,
    output: Vec<u8>,
    counter: DecapCounter,
) -> Case {
    Case {
        name,
        input,
        action,
        output,
        counter,
    }
}

/// `frame` unchanged, with its verdict.
fn untouched(name: &'static str, frame: Vec<u8>, action: u32, counter: DecapCounter) -> Case {
    case(name, frame.clone(), action, frame, counter)
}

fn run_cases(decap: &mut DecapHarness, cases: Vec<Case>) {
    for case in cases {
        let before = decap.counters();
        let out = decap.run(&case.input);
        let after = decap.counters();
        assert_eq!(out.action, case.action, "{}: action", case.name);
        assert_eq!(out.frame, case.output, "{}: frame", case.name);
        let moved: Vec<(DecapCounter, u64)> = DecapCounter::ALL
            .iter()
            .filter(|c| c.kind() != CounterKind::Event)
            .map(|&c| (c, after[c.index() as usize] - before[c.index() as usize]))
            .filter(|&(_, d)| d != 0)
            .collect();
        assert_eq!(moved, vec![(case.counter, 1)], "{}: counters", case.name);
    }
}

#[test]
fn decapsulates_ip_in_ip_and_passes_everything_else() {
    let mut decap = DecapHarness::new(&vips());
    let syn4 = frame(&flow4(), Tcp::Syn, b"");
    let data6 = frame(&flow6(), Tcp::Ack, b"some data");
    let outer4 = ipip4(&syn4);
    let outer6 = ipip6(&data6);

    let mut outer4_options = with_ipv4_options(&outer4, &[1, 1, 1, 1]);
    fix_ipv4_checksum(&mut outer4_options);
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
    let tagged = with_vlan_tags(&outer4, &[(0x8100, 100)]);
    let double_tagged = with_vlan_tags(&outer6, &[(0x88a8, 7), (0x8100, 200)]);

    use DecapCounter::*;
    run_cases(
        &mut decap,
        vec![
            case(
                "ipv4 in ipv4",
                outer4.clone(),
                XDP_PASS,
                delivered(&outer4, &syn4),
                DecapV4,
            ),
            case(
                "ipv6 in ipv6",
                outer6.clone(),
                XDP_PASS,
                delivered(&outer6, &data6),
                DecapV6,
            ),
            case(
                "outer ipv4 options",
                outer4_options.clone(),
                XDP_PASS,
                delivered(&outer4_options, &syn4),
                DecapV4,
            ),
            case(
                "802.1Q tag kept",
                tagged.clone(),
                XDP_PASS,
                with_vlan_tags(&delivered(&outer4, &syn4), &[(0x8100, 100)]),
                DecapV4,
            ),
            case(
                "802.1ad and 802.1Q tags kept",
                double_tagged,
                XDP_PASS,
                with_vlan_tags(&delivered(&outer6, &data6), &[(0x88a8, 7), (0x8100, 200)]),
                DecapV6,
            ),
            untouched("plain tcp", syn4.clone(), XDP_PASS, PassOther),
            untouched("plain ipv6", data6.clone(), XDP_PASS, PassOther),
            untouched("arp", arp(), XDP_PASS, PassOther),
            untouched(
                "truncated inner ipv4",
                outer4[..L3 + 20 + 10].to_vec(),
                XDP_DROP,
                DropMalformed,
            ),
            untouched(
                "truncated inner ipv6",
                outer6[..L3 + 40 + 30].to_vec(),
                XDP_DROP,
                DropMalformed,
            ),
            untouched(
                "inner of the wrong version (v4)",
                inner_not_v4,
                XDP_DROP,
                DropMalformed,
            ),
            untouched(
                "inner of the wrong version (v6)",
                inner_not_v6,
                XDP_DROP,
                DropMalformed,
            ),
            untouched("outer IHL below 5", outer4_bad_ihl, XDP_DROP, DropMalformed),
            untouched(
                "outer total length too short",
                outer4_short_total,
                XDP_DROP,
                DropMalformed,
            ),
            untouched(
                "outer payload length too short",
                outer6_short_payload,
                XDP_DROP,
                DropMalformed,
            ),
        ],
    );
}

#[test]
fn only_the_backends_vips_are_decapsulated() {
    let mut decap = DecapHarness::new(&vips());
    let other4 = Flow {
        dst: ip("198.18.100.99"),
        ..flow4()
    };
    let other6 = Flow {
        dst: ip("2001:db8:100::99"),
        ..flow6()
    };
    use DecapCounter::*;
    run_cases(
        &mut decap,
        vec![
            untouched(
                "ipv4 to another address",
                ipip4(&frame(&other4, Tcp::Syn, b"")),
                XDP_DROP,
                DropNotVip,
            ),
            untouched(
                "ipv6 to another address",
                ipip6(&frame(&other6, Tcp::Syn, b"")),
                XDP_DROP,
                DropNotVip,
            ),
        ],
    );
    // A VIP added later is accepted at once; one removed is refused.
    decap
        .decap
        .set_vips(&[ip("198.18.100.99")])
        .expect("updating the VIPs");
    let outer = ipip4(&frame(&other4, Tcp::Syn, b""));
    assert_eq!(decap.run(&outer).action, XDP_PASS);
    let before = ipip4(&frame(&flow4(), Tcp::Syn, b""));
    assert_eq!(decap.run(&before).action, XDP_DROP);
}

#[test]
fn outer_fragments_are_dropped_and_counted() {
    let mut decap = DecapHarness::new(&vips());
    let outer4 = ipip4(&frame(&flow4(), Tcp::Ack, &[1; 100]));
    let more_fragments = with_ipv4_fragment(&outer4, 0x2000);
    let later_fragment = with_ipv4_fragment(&outer4, 0x0010);
    let outer6 = ipip6(&frame(&flow6(), Tcp::Ack, &[1; 100]));
    let fragment6 = with_outer_ipv6_fragment(&outer6, 0x0001);
    use DecapCounter::*;
    run_cases(
        &mut decap,
        vec![
            untouched(
                "first outer fragment",
                more_fragments,
                XDP_DROP,
                DropOuterFragment,
            ),
            untouched(
                "later outer fragment",
                later_fragment,
                XDP_DROP,
                DropOuterFragment,
            ),
            untouched(
                "ipv6 outer fragment",
                fragment6,
                XDP_DROP,
                DropOuterFragment,
            ),
        ],
    );
}

/// RFC 6040's decapsulation table: outer CE reaches the inner header, outer ECT(1) over inner
/// ECT(0) too, CE over a packet that is not ECN-capable drops, the rest stays.
#[test]
fn ecn_congestion_marks_reach_the_inner_header() {
    let mut decap = DecapHarness::new(&vips());
    const NOT_ECT: u8 = 0;
    const ECT1: u8 = 1;
    const ECT0: u8 = 2;
    const CE: u8 = 3;
    let table = [
        (NOT_ECT, NOT_ECT, Some(NOT_ECT)),
        (NOT_ECT, ECT0, Some(NOT_ECT)),
        (NOT_ECT, ECT1, Some(NOT_ECT)),
        (NOT_ECT, CE, None),
        (ECT0, NOT_ECT, Some(ECT0)),
        (ECT0, ECT0, Some(ECT0)),
        (ECT0, ECT1, Some(ECT1)),
        (ECT0, CE, Some(CE)),
        (ECT1, ECT0, Some(ECT1)),
        (ECT1, CE, Some(CE)),
        (CE, NOT_ECT, Some(CE)),
        (CE, ECT0, Some(CE)),
    ];
    for (inner_ecn, outer_ecn, expected) in table {
        for v6 in [false, true] {
            let name = format!("inner {inner_ecn} outer {outer_ecn} ipv6 {v6}");
            let dscp = 0x28 << 2;
            let inner = if v6 {
                with_ipv6_traffic_class(&frame(&flow6(), Tcp::Ack, b"x"), dscp | inner_ecn)
            } else {
                with_ipv4_tos(&frame(&flow4(), Tcp::Ack, b"x"), dscp | inner_ecn)
            };
            let mut outer = if v6 { ipip6(&inner) } else { ipip4(&inner) };
            if v6 {
                set_ipv6_traffic_class(&mut outer, dscp | outer_ecn);
            } else {
                set_ipv4_tos(&mut outer, dscp | outer_ecn);
            }
            let before = decap.counters();
            let out = decap.run(&outer);
            let after = decap.counters();
            let delta = |c: DecapCounter| after[c.index() as usize] - before[c.index() as usize];
            match expected {
                None => {
                    assert_eq!(out.action, XDP_DROP, "{name}");
                    assert_eq!(delta(DecapCounter::DropEcnNotEct), 1, "{name}");
                }
                Some(ecn) => {
                    assert_eq!(out.action, XDP_PASS, "{name}");
                    let expected_inner = if v6 {
                        with_ipv6_traffic_class(&inner, dscp | ecn)
                    } else {
                        with_ipv4_tos(&inner, dscp | ecn)
                    };
                    assert_eq!(out.frame, delivered(&outer, &expected_inner), "{name}");
                    let marked = u64::from(ecn == CE && inner_ecn != CE);
                    assert_eq!(delta(DecapCounter::EcnCe), marked, "{name}: ecn_ce");
                }
            }
        }
    }
}

/// What the balancer sends, the decapsulator turns back into the client's packet.
#[test]
fn balancer_output_round_trips_through_the_decapsulator() {
    use lb::state::{Listener, Protocol, Target, Vip};
    let mut balancer = Harness::new(static_config(65_537, 1, 1500));
    let mut decap = DecapHarness::new(&vips());
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
