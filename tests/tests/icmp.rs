//! ICMP through the balancer (`BPF_PROG_TEST_RUN`), byte for byte:
//!
//! - an ICMP error about a passthrough flow (IPv4 "fragmentation needed" and other destination
//!   unreachables, ICMPv6 "packet too big") goes to the flow's backend, found as the flow's own
//!   packets find it (connection table, else Maglev), and never creates a table entry;
//! - anything else ICMP (echo, errors about other traffic, truncated or malformed quotes, and
//!   every error while `icmp_to_backends` is off) goes to the kernel untouched;
//! - a client packet too big to encapsulate is answered with ICMP carrying the MTU to use, at
//!   most `icmp_too_big_per_sec` a second per CPU; IPv4 without "don't fragment" is dropped.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a test panics with a message; helpers here are part of the tests"
)]

use lb::{datapath::Datapath as _, state::Protocol};
use lb_common::{
    abi::{CONFIG_F_ICMP_TO_BACKENDS, DatapathConfig},
    counters::Counter,
};
use lb_tests::{fixture::*, harness::*, packet::*};

const A: &str = "198.18.1.10";
const B: &str = "198.18.1.11";
const A6: &str = "2001:db8:1::10";
const B6: &str = "2001:db8:1::11";
const ROUTER4: &str = "198.18.0.254";
const ROUTER6: &str = "2001:db8::fe";
/// What Linux quotes of the offending packet in its ICMP errors: up to 576 bytes in all.
const QUOTE4: usize = 576 - 28;
const QUOTE6: usize = 1280 - 48;

fn icmp_config(mtu: u32) -> DatapathConfig {
    let mut config = static_config(65_537, 0x5eed, mtu);
    config.flags |= CONFIG_F_ICMP_TO_BACKENDS;
    config.icmp_too_big_per_sec = 1000;
    config
}

/// A backend's reply to the client of `flow`, of `len` bytes of payload.
fn reply(flow: &Flow, len: usize) -> Vec<u8> {
    let reversed = Flow {
        src: flow.dst,
        dst: flow.src,
        src_port: flow.dst_port,
        dst_port: flow.src_port,
        proto: flow.proto,
    };
    frame(&reversed, Tcp::Ack, &vec![0x72; len])
}

fn forwarded_icmp(name: &'static str, input: Vec<u8>, flow: &Flow, backend: &str) -> Case {
    let output = to_backend_for(&input, flow, backend);
    Case {
        name,
        input,
        action: XDP_TX,
        counter: Counter::TxLocal,
        output,
    }
}

/// Two listeners (v4, v6) whose pools grow from {A} to {A, B}: a flow that began on A stays
/// there (connection table) while the table now places it on B.
#[test]
fn an_icmp_error_about_a_flow_reaches_the_flows_backend() {
    let mut harness = Harness::new(icmp_config(1500));
    let before = [
        listener("web4", VIP4, 443, Protocol::Tcp, &[A]),
        listener("web6", VIP6, 443, Protocol::Tcp, &[A6]),
    ];
    let after = [
        listener("web4", VIP4, 443, Protocol::Tcp, &[A, B]),
        listener("web6", VIP6, 443, Protocol::Tcp, &[A6, B6]),
    ];
    harness.apply(&after);
    let port4 = port_placed_on(&harness, "web4", B, (CLIENT4, VIP4), 20_000);
    let port6 = port_placed_on(&harness, "web6", B6, (CLIENT6, VIP6), 20_000);
    let (established4, established6) = (tcp4(port4), tcp6(port6));
    let (unknown4, unknown6) = (
        tcp4(port_placed_on(
            &harness,
            "web4",
            B,
            (CLIENT4, VIP4),
            port4 + 1,
        )),
        tcp6(port_placed_on(
            &harness,
            "web6",
            B6,
            (CLIENT6, VIP6),
            port6 + 1,
        )),
    );
    harness.apply(&before);
    run_cases(
        &mut harness,
        vec![
            forwarded("v4 flow opens on A", frame(&established4, Tcp::Syn, b""), A),
            forwarded(
                "v6 flow opens on A",
                frame(&established6, Tcp::Syn, b""),
                A6,
            ),
        ],
    );
    harness.apply(&after);

    let too_big4 = icmp_error(
        &reply(&established4, 1400),
        ip(ROUTER4),
        IcmpError::TooBig(1400),
        QUOTE4,
    );
    let too_big6 = icmp_error(
        &reply(&established6, 1400),
        ip(ROUTER6),
        IcmpError::TooBig(1400),
        QUOTE6,
    );
    let unreachable4 = icmp_error(
        &reply(&established4, 100),
        ip(ROUTER4),
        IcmpError::PortUnreachable,
        48,
    );
    let unreachable6 = icmp_error(
        &reply(&established6, 100),
        ip(ROUTER6),
        IcmpError::PortUnreachable,
        68,
    );
    let unknown_too_big4 = icmp_error(
        &reply(&unknown4, 1400),
        ip(ROUTER4),
        IcmpError::TooBig(1400),
        QUOTE4,
    );
    let unknown_too_big6 = icmp_error(
        &reply(&unknown6, 1400),
        ip(ROUTER6),
        IcmpError::TooBig(1400),
        QUOTE6,
    );
    let to_backends = harness.counter(Counter::IcmpToBackend);
    run_cases(
        &mut harness,
        vec![
            forwarded_icmp("v4 fragmentation needed", too_big4, &established4, A),
            forwarded_icmp("v6 packet too big", too_big6, &established6, A6),
            forwarded_icmp("v4 port unreachable", unreachable4, &established4, A),
            forwarded_icmp(
                "v6 destination unreachable",
                unreachable6,
                &established6,
                A6,
            ),
            forwarded_icmp(
                "v4, flow unknown to the table: Maglev",
                unknown_too_big4,
                &unknown4,
                B,
            ),
            forwarded_icmp(
                "v6, flow unknown to the table: Maglev",
                unknown_too_big6,
                &unknown6,
                B6,
            ),
        ],
    );
    assert_eq!(harness.counter(Counter::IcmpToBackend), to_backends + 6);
    let datapath = harness.reconciler.datapath();
    for (flow, listener) in [(&unknown4, "web4"), (&unknown6, "web6")] {
        let vip_id = u16::try_from(harness.reconciler.listeners()[listener].vip_id).unwrap();
        let key = lb::model::flow_key(
            std::net::SocketAddr::new(flow.src, flow.src_port),
            std::net::SocketAddr::new(flow.dst, flow.dst_port),
            Protocol::Tcp,
        );
        assert_eq!(
            datapath.lookup_conn(&key, vip_id).unwrap(),
            None,
            "an ICMP error never creates a connection-table entry"
        );
    }
}

#[test]
fn other_icmp_goes_to_the_kernel_untouched() {
    let mut harness = Harness::new(icmp_config(1500));
    harness.apply(&listeners());
    let flow4 = tcp4(40_000);
    let flow6 = tcp6(40_000);
    let too_big4 = icmp_error(
        &reply(&flow4, 1400),
        ip(ROUTER4),
        IcmpError::TooBig(1400),
        QUOTE4,
    );
    let too_big6 = icmp_error(
        &reply(&flow6, 1400),
        ip(ROUTER6),
        IcmpError::TooBig(1400),
        QUOTE6,
    );
    let not_a_vip = icmp_error(
        &reply(&flow(CLIENT4, "198.18.100.9", 40_000, 443, TCP), 1400),
        ip(ROUTER4),
        IcmpError::TooBig(1400),
        QUOTE4,
    );
    let not_passthrough = icmp_error(
        &reply(&flow(CLIENT4, VIP4, 40_000, 8443, TCP), 1400),
        ip(ROUTER4),
        IcmpError::TooBig(1400),
        QUOTE4,
    );
    let mut quoted_fragment_reply = with_ipv4_fragment(&reply(&flow4, 1400), 0x0020);
    fix_ipv4_checksum(&mut quoted_fragment_reply);
    let quoted_fragment = icmp_error(
        &quoted_fragment_reply,
        ip(ROUTER4),
        IcmpError::TooBig(1400),
        QUOTE4,
    );
    // Quotes too short to hold the ports.
    let no_ports4 = icmp_error(
        &reply(&flow4, 100),
        ip(ROUTER4),
        IcmpError::TooBig(1400),
        24,
    );
    let no_ports6 = icmp_error(
        &reply(&flow6, 100),
        ip(ROUTER6),
        IcmpError::TooBig(1400),
        44,
    );
    let mut wrong_version = too_big4.clone();
    wrong_version[L3 + 28] = 0x65;
    let mut misaddressed = too_big4.clone();
    misaddressed[L3 + 16..L3 + 20].copy_from_slice(&[198, 18, 100, 9]);
    fix_ipv4_checksum(&mut misaddressed);
    let icmp_header_cut = with_ipv4_total_len(&too_big4[..L3 + 24], 24);
    run_cases(
        &mut harness,
        vec![
            passed("v4 echo", ping(ip(CLIENT4), ip(VIP4)), Counter::PassIcmp),
            passed("v6 echo", ping(ip(CLIENT6), ip(VIP6)), Counter::PassIcmp),
            passed("about another address", not_a_vip, Counter::PassIcmp),
            passed(
                "about a port that is not passthrough",
                not_passthrough,
                Counter::PassIcmp,
            ),
            passed(
                "quoting a later fragment",
                quoted_fragment,
                Counter::PassIcmp,
            ),
            passed("v4 quote without ports", no_ports4, Counter::PassIcmp),
            passed("v6 quote without ports", no_ports6, Counter::PassIcmp),
            passed(
                "quoted header of the wrong version",
                wrong_version,
                Counter::PassIcmp,
            ),
            passed(
                "addressed elsewhere than the quote's source",
                misaddressed,
                Counter::PassIcmp,
            ),
            passed("icmp header cut", icmp_header_cut, Counter::PassIcmp),
            passed(
                "v4 icmp tagged 802.1Q, to the kernel",
                with_vlan_tags(&ping(ip(CLIENT4), ip(VIP4)), &[(0x8100, 7)]),
                Counter::PassIcmp,
            ),
        ],
    );
    // Off: every error goes to the kernel.
    let mut off = *harness.reconciler.config();
    off.flags &= !CONFIG_F_ICMP_TO_BACKENDS;
    harness.reconciler.set_config(off).unwrap();
    run_cases(
        &mut harness,
        vec![
            passed("v4 with icmp_to_backends off", too_big4, Counter::PassIcmp),
            passed("v6 with icmp_to_backends off", too_big6, Counter::PassIcmp),
        ],
    );
}

/// An ICMP error that would not fit once encapsulated is dropped, never answered.
#[test]
fn an_icmp_error_too_big_to_encapsulate_is_dropped() {
    let mut harness = Harness::new(icmp_config(590));
    harness.apply(&listeners());
    let too_big = icmp_error(
        &reply(&tcp4(40_000), 1400),
        ip(ROUTER4),
        IcmpError::TooBig(1400),
        QUOTE4,
    );
    run_cases(
        &mut harness,
        vec![dropped("576 + 20 over 590", too_big, Counter::DropTooBig)],
    );
}

#[test]
fn a_client_packet_too_big_to_encapsulate_is_answered_with_the_mtu_to_use() {
    let mut harness = Harness::new(icmp_config(1500));
    harness.apply(&listeners());
    let over4 = frame(&tcp4(40_101), Tcp::Ack, &vec![0x61; 1481 - 40]);
    let over6 = frame(&tcp6(40_101), Tcp::Ack, &vec![0x61; 1461 - 60]);
    let jumbo4 = frame(&tcp4(40_102), Tcp::Ack, &vec![0x62; 8000]);
    let mut no_df = over4.clone();
    no_df[L3 + 6] &= !0x40;
    fix_ipv4_checksum(&mut no_df);
    let tagged = with_vlan_tags(&over4, &[(0x88a8, 5), (0x8100, 6)]);
    let answer = |name: &'static str, input: Vec<u8>, mtu: u32| Case {
        name,
        output: too_big_answer(&input, mtu),
        input,
        action: XDP_TX,
        counter: Counter::TxIcmpTooBig,
    };
    run_cases(
        &mut harness,
        vec![
            answer("v4, one byte over", over4, 1480),
            answer("v6, one byte over", over6, 1460),
            answer("v4 jumbo frame (fragments)", jumbo4, 1480),
            answer("v4 tagged QinQ: the answer keeps the tags", tagged, 1480),
            dropped("v4 without don't fragment", no_df, Counter::DropTooBig),
        ],
    );
}

/// An IPv6 answer never advertises less than the IPv6 minimum MTU.
#[test]
fn an_ipv6_answer_advertises_at_least_1280() {
    let mut harness = Harness::new(icmp_config(1300));
    harness.apply(&listeners());
    let over = frame(&tcp6(40_200), Tcp::Ack, &vec![0x61; 1400]);
    // 1280 bytes of IPv6 (40 + 20 + 1220): no smaller packet can be asked for.
    let minimal = frame(&tcp6(40_201), Tcp::Ack, &vec![0x61; 1220]);
    run_cases(
        &mut harness,
        vec![
            Case {
                name: "v6 over 1300 - 40",
                output: too_big_answer(&over, 1280),
                input: over,
                action: XDP_TX,
                counter: Counter::TxIcmpTooBig,
            },
            dropped(
                "a minimal v6 packet over 1300 - 40 is not answered",
                minimal,
                Counter::DropTooBig,
            ),
        ],
    );
}

/// Answers are limited per CPU and second; past the limit, too-big packets are dropped.
#[test]
fn too_big_answers_are_rate_limited() {
    lb::bench::pin_current_thread(0).unwrap();
    let mut config = icmp_config(1500);
    config.icmp_too_big_per_sec = 3;
    let mut harness = Harness::new(config);
    harness.apply(&listeners());
    let over = frame(&tcp4(40_300), Tcp::Ack, &vec![0x61; 1500]);
    let mut cases = Vec::new();
    for name in ["first", "second", "third"] {
        cases.push(Case {
            name,
            output: too_big_answer(&over, 1480),
            input: over.clone(),
            action: XDP_TX,
            counter: Counter::TxIcmpTooBig,
        });
    }
    cases.push(dropped(
        "fourth",
        over.clone(),
        Counter::DropIcmpRateLimited,
    ));
    cases.push(dropped("fifth", over.clone(), Counter::DropIcmpRateLimited));
    run_cases(&mut harness, cases);
    // Off: no answers at all.
    let mut off = *harness.reconciler.config();
    off.icmp_too_big_per_sec = 0;
    harness.reconciler.set_config(off).unwrap();
    run_cases(
        &mut harness,
        vec![dropped("answers off", over, Counter::DropTooBig)],
    );
}

/// A packet over the MTU but shorter than the quote (a link MTU far below the minimum) cannot
/// be answered: dropped.
#[test]
fn a_packet_shorter_than_the_quote_is_dropped() {
    let mut harness = Harness::new(icmp_config(100));
    harness.apply(&listeners());
    let small = frame(&tcp4(40_400), Tcp::Ack, &[0x61; 70]);
    run_cases(
        &mut harness,
        vec![dropped(
            "110 bytes over 100 - 20",
            small,
            Counter::DropTooBig,
        )],
    );
}

/// A packet longer than the interfaces' MTU cannot have come off a wire: it is an aggregate a
/// virtual peer handed over whole (generic mode). It is dropped and counted, never answered
/// with an MTU the client could not do anything with.
#[test]
fn aggregates_longer_than_the_interfaces_mtu_are_dropped_not_answered() {
    let mut config = icmp_config(1500);
    config.ingress_mtu = 1500;
    let mut harness = Harness::new(config);
    harness.apply(&listeners());
    let aggregate4 = frame(&tcp4(40_500), Tcp::Ack, &vec![0x61; 1500 * 3]);
    let aggregate6 = frame(&tcp6(40_500), Tcp::Ack, &vec![0x61; 1500 * 3]);
    let at_mtu = frame(&tcp4(40_501), Tcp::Ack, &vec![0x61; 1500 - 40]);
    run_cases(
        &mut harness,
        vec![
            dropped("v4 aggregate", aggregate4, Counter::DropOversized),
            dropped("v6 aggregate", aggregate6, Counter::DropOversized),
            Case {
                name: "v4 at the interfaces' MTU: answered",
                output: too_big_answer(&at_mtu, 1480),
                input: at_mtu,
                action: XDP_TX,
                counter: Counter::TxIcmpTooBig,
            },
        ],
    );
}
