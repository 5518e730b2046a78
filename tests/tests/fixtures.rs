//! Packet fixtures through `BPF_PROG_TEST_RUN`: every case feeds one frame to the real balancer
//! (maps written by the real reconciler) and checks the XDP action, the output frame byte for
//! byte, and that exactly one verdict counter (the expected one) moved.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a test panics with a message; helpers here are part of the tests"
)]

use lb::state::Protocol;
use lb_common::counters::Counter;
use lb_tests::{fixture::*, harness::*, packet::*};

#[test]
fn packet_fixtures() {
    let mut harness = Harness::new(static_config(65_537, 0x5eed, MTU));
    harness.apply(&listeners());

    let syn4 = frame(&tcp4(40_000), Tcp::Syn, b"");
    let ack4 = frame(&tcp4(40_000), Tcp::Ack, b"GET / HTTP/1.1\r\n\r\n");
    let syn6 = frame(&tcp6(40_000), Tcp::Syn, b"");
    let ack6 = frame(&tcp6(40_000), Tcp::Ack, b"hello");
    let udp4 = frame(&flow(CLIENT4, VIP4, 5353, 53, UDP), Tcp::Ack, b"query");
    let udp6 = frame(&flow(CLIENT6, VIP6, 5353, 53, UDP), Tcp::Ack, b"query");
    let l4_4 = L3 + 20;
    let l4_6 = L3 + 40;

    let mut padded = syn4.clone();
    padded.resize(60, 0xee);
    let mut version_mismatch = syn4.clone();
    version_mismatch[L3] = 0x65;
    let mut empty_eth = syn4[..14].to_vec();
    empty_eth[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
    let mut lldp = arp();
    lldp[12..14].copy_from_slice(&0x88ccu16.to_be_bytes());
    let nops = [1u8; 4];
    let max_options = [1u8; 40];
    let at_mtu = frame(&tcp4(40_100), Tcp::Ack, &vec![0x61; 1480 - 40]);
    let over_mtu = frame(&tcp4(40_101), Tcp::Ack, &vec![0x61; 1481 - 40]);
    let at_mtu6 = frame(&tcp6(40_100), Tcp::Ack, &vec![0x61; 1460 - 60]);
    let over_mtu6 = frame(&tcp6(40_101), Tcp::Ack, &vec![0x61; 1461 - 60]);
    let jumbo = frame(&tcp4(40_102), Tcp::Ack, &vec![0x62; 3000]);

    let cases = vec![
        // Forwarded: TCP and UDP, IPv4 and IPv6, first packet and established flow.
        forwarded("v4 tcp syn", syn4.clone(), BACKEND4_TCP),
        forwarded("v4 tcp established", ack4.clone(), BACKEND4_TCP),
        forwarded(
            "v4 tcp mid-flow, unknown to the table",
            frame(&tcp4(40_001), Tcp::Ack, b"x"),
            BACKEND4_TCP,
        ),
        forwarded("v4 udp first", udp4.clone(), BACKEND4_UDP),
        forwarded("v4 udp established", udp4.clone(), BACKEND4_UDP),
        forwarded("v6 tcp syn", syn6.clone(), BACKEND6_TCP),
        forwarded("v6 tcp established", ack6.clone(), BACKEND6_TCP),
        forwarded("v6 udp", udp6.clone(), BACKEND6_UDP),
        forwarded(
            "v4 ethernet padding kept behind the packet",
            padded,
            BACKEND4_TCP,
        ),
        forwarded(
            "v4 options (one word of NOPs)",
            with_ipv4_options(&syn4, &nops),
            BACKEND4_TCP,
        ),
        forwarded(
            "v4 options (40 bytes, IHL 15)",
            with_ipv4_options(&ack4, &max_options),
            BACKEND4_TCP,
        ),
        forwarded(
            "v4 with DF clear: the outer header carries its identification",
            without_dont_fragment(&ack4, 0x4242),
            BACKEND4_TCP,
        ),
        forwarded("v4 packet exactly at the MTU", at_mtu, BACKEND4_TCP),
        forwarded("v6 packet exactly at the MTU", at_mtu6, BACKEND6_TCP),
        forwarded(
            "v6 hop-by-hop",
            with_ipv6_ext(&syn6, &[Ext::options(HOP_BY_HOP, 0)]),
            BACKEND6_TCP,
        ),
        forwarded(
            "v6 hop-by-hop, destination options, routing",
            with_ipv6_ext(
                &ack6,
                &[
                    Ext::options(HOP_BY_HOP, 1),
                    Ext::options(DEST_OPTS, 0),
                    Ext::options(ROUTING, 2),
                ],
            ),
            BACKEND6_TCP,
        ),
        forwarded(
            "v6 authentication header",
            with_ipv6_ext(&ack6, &[Ext::auth(4)]),
            BACKEND6_TCP,
        ),
        forwarded(
            "v6 atomic fragment",
            with_ipv6_ext(&ack6, &[Ext::fragment(0)]),
            BACKEND6_TCP,
        ),
        forwarded(
            "v6 four extension headers (the walk's limit)",
            with_ipv6_ext(
                &ack6,
                &[
                    Ext::options(HOP_BY_HOP, 0),
                    Ext::options(DEST_OPTS, 0),
                    Ext::options(ROUTING, 0),
                    Ext::options(DEST_OPTS, 0),
                ],
            ),
            BACKEND6_TCP,
        ),
        // To the kernel: not for a VIP.
        passed("arp", arp(), Counter::PassNotIp),
        passed("lldp", lldp, Counter::PassNotIp),
        passed(
            "v4 other address",
            frame(
                &flow(CLIENT4, "198.18.100.9", 40_000, 443, TCP),
                Tcp::Syn,
                b"",
            ),
            Counter::PassNotVip,
        ),
        passed(
            "v4 VIP address, other port",
            frame(&flow(CLIENT4, VIP4, 40_000, 8443, TCP), Tcp::Syn, b""),
            Counter::PassNotVip,
        ),
        passed(
            "v4 VIP port, other protocol",
            frame(&flow(CLIENT4, VIP4, 40_000, 443, UDP), Tcp::Ack, b"x"),
            Counter::PassNotVip,
        ),
        passed(
            "v6 other address",
            frame(
                &flow(CLIENT6, "2001:db8:100::9", 40_000, 443, TCP),
                Tcp::Syn,
                b"",
            ),
            Counter::PassNotVip,
        ),
        passed(
            "v4 icmp echo to the VIP",
            ping(ip(CLIENT4), ip(VIP4)),
            Counter::PassIcmp,
        ),
        passed(
            "v6 icmp echo to the VIP",
            ping(ip(CLIENT6), ip(VIP6)),
            Counter::PassIcmp,
        ),
        passed(
            "v4 fragment to another address",
            with_ipv4_fragment(
                &frame(&flow(CLIENT4, "198.18.100.9", 1, 443, TCP), Tcp::Ack, b"x"),
                0x2000,
            ),
            Counter::PassNotVip,
        ),
        // Fragments of passthrough flows, and any later fragment to a passthrough-only VIP
        // address: dropped by policy.
        dropped(
            "v4 first fragment to a VIP",
            with_ipv4_fragment(&ack4, 0x2000),
            Counter::DropFragment,
        ),
        dropped(
            "v4 later fragment to a VIP",
            with_ipv4_fragment(&ack4, 0x0010),
            Counter::DropFragment,
        ),
        passed(
            "v4 first fragment to a VIP address, not a passthrough port",
            with_ipv4_fragment(
                &frame(&flow(CLIENT4, VIP4, 1, 9, UDP), Tcp::Ack, b"x"),
                0x2000,
            ),
            Counter::PassNotVip,
        ),
        dropped(
            "v6 fragment to a VIP",
            with_ipv6_ext(&ack6, &[Ext::fragment(1)]),
            Counter::DropFragment,
        ),
        dropped(
            "v6 later fragment to a VIP",
            with_ipv6_ext(&ack6, &[Ext::options(HOP_BY_HOP, 0), Ext::fragment(8 << 3)]),
            Counter::DropFragment,
        ),
        // Malformed, to a passthrough VIP address: truncated at every header boundary,
        // inconsistent lengths. Those whose destination cannot be read go to the kernel.
        // (A frame shorter than an Ethernet header cannot be fed in: BPF_PROG_TEST_RUN refuses
        // it with EINVAL, as no NIC delivers one. The program would count pass_malformed.)
        passed("ethernet only", empty_eth, Counter::PassMalformed),
        passed(
            "v4 header cut",
            syn4[..L3 + 19].to_vec(),
            Counter::PassMalformed,
        ),
        passed(
            "v6 header cut",
            syn6[..L3 + 39].to_vec(),
            Counter::PassMalformed,
        ),
        dropped(
            "v4 tcp header cut",
            with_ipv4_total_len(&syn4[..l4_4 + 19], 39),
            Counter::DropTruncatedL4,
        ),
        dropped(
            "v4 udp header cut",
            with_ipv4_total_len(&udp4[..l4_4 + 7], 27),
            Counter::DropTruncatedL4,
        ),
        dropped(
            "v6 tcp header cut",
            with_ipv6_payload_len(&syn6[..l4_6 + 19], 19),
            Counter::DropTruncatedL4,
        ),
        dropped(
            "v6 udp header cut",
            with_ipv6_payload_len(&udp6[..l4_6 + 4], 4),
            Counter::DropTruncatedL4,
        ),
        dropped(
            "v4 tcp header past the IP length",
            with_ipv4_total_len(&syn4, 30),
            Counter::DropTruncatedL4,
        ),
        dropped(
            "v6 extension header cut",
            with_ipv6_payload_len(
                &with_ipv6_ext(&ack6, &[Ext::options(HOP_BY_HOP, 0)])[..l4_6 + 4],
                4,
            ),
            Counter::DropBadExtHeader,
        ),
        dropped(
            "v6 five extension headers",
            with_ipv6_ext(
                &ack6,
                &[
                    Ext::options(HOP_BY_HOP, 0),
                    Ext::options(DEST_OPTS, 0),
                    Ext::options(ROUTING, 0),
                    Ext::options(DEST_OPTS, 0),
                    Ext::options(DEST_OPTS, 0),
                ],
            ),
            Counter::DropBadExtHeader,
        ),
        dropped(
            "tcp data offset 4",
            with_tcp_offset(&syn4, l4_4, 4),
            Counter::DropBadTcpOffset,
        ),
        dropped(
            "tcp data offset 0",
            with_tcp_offset(&ack6, l4_6, 0),
            Counter::DropBadTcpOffset,
        ),
        dropped(
            "tcp data offset past the packet",
            with_tcp_offset(&syn4, l4_4, 15),
            Counter::DropBadTcpOffset,
        ),
        dropped(
            "v4 IHL 4",
            {
                let mut f = syn4.clone();
                f[L3] = 0x44;
                f
            },
            Counter::DropBadIhl,
        ),
        dropped(
            "v4 IHL past the frame",
            {
                let mut f = syn4[..L3 + 24].to_vec();
                f[L3] = 0x4f;
                f
            },
            Counter::DropBadIhl,
        ),
        dropped(
            "v4 total length beyond the frame",
            with_ipv4_total_len(&syn4, 41),
            Counter::DropBadLength,
        ),
        dropped(
            "v4 total length below the header",
            with_ipv4_total_len(&syn4, 19),
            Counter::DropBadLength,
        ),
        dropped(
            "v6 payload length beyond the frame",
            with_ipv6_payload_len(&syn6, 21),
            Counter::DropBadLength,
        ),
        passed(
            "ethertype v4, version 6",
            version_mismatch,
            Counter::PassMalformed,
        ),
        passed(
            "ethertype v6, version 4",
            {
                let mut f = syn6.clone();
                f[L3] = 0x40;
                f
            },
            Counter::PassMalformed,
        ),
        // Policy drops.
        dropped("v4 one byte over the MTU", over_mtu, Counter::DropTooBig),
        dropped("v6 one byte over the MTU", over_mtu6, Counter::DropTooBig),
        dropped("v4 jumbo frame over the MTU", jumbo, Counter::DropTooBig),
        dropped(
            "VIP without backends",
            frame(&flow(CLIENT4, VIP4_EMPTY, 40_000, 443, TCP), Tcp::Syn, b""),
            Counter::DropNoBackend,
        ),
    ];
    assert!(cases.len() >= 40, "the issue asks for at least 40 cases");
    run_cases(&mut harness, cases);
}

/// The documented policies: established flows stay; a SYN follows the current table; a removed
/// backend's flows are placed afresh; a draining backend (weight 0) keeps its flows.
#[test]
fn connection_table_policies() {
    const A: &str = "198.18.1.10";
    const B: &str = "198.18.1.11";
    let mut harness = Harness::new(static_config(65_537, 0x5eed, MTU));
    let both = vec![listener("web", VIP4, 443, Protocol::Tcp, &[A, B])];
    harness.apply(&both);

    let port = port_placed_on(&harness, "web", A, (CLIENT4, VIP4), 30_000);
    let syn = frame(&tcp4(port), Tcp::Syn, b"");
    let ack = frame(&tcp4(port), Tcp::Ack, b"data");
    let misses = harness.counter(Counter::ConnMiss);
    run_cases(
        &mut harness,
        vec![forwarded("syn placed on A", syn.clone(), A)],
    );
    assert_eq!(
        harness.counter(Counter::ConnMiss),
        misses + 1,
        "a SYN is placed by the table"
    );
    let hits = harness.counter(Counter::ConnHit);
    run_cases(
        &mut harness,
        vec![forwarded("established on A", ack.clone(), A)],
    );
    assert_eq!(
        harness.counter(Counter::ConnHit),
        hits + 1,
        "then found in the table"
    );

    // A leaves the pool: its flow is placed afresh, on B.
    harness.apply(&[listener("web", VIP4, 443, Protocol::Tcp, &[B])]);
    let stale = harness.counter(Counter::ConnStale);
    run_cases(
        &mut harness,
        vec![forwarded("A removed: re-placed on B", ack.clone(), B)],
    );
    assert_eq!(harness.counter(Counter::ConnStale), stale + 1);

    // A returns: the established flow stays on B (the table remembers B) ...
    harness.apply(&both);
    run_cases(
        &mut harness,
        vec![forwarded("A back: flow stays on B", ack.clone(), B)],
    );
    // ... but a SYN with the same 5-tuple is a new connection and follows the table to A.
    run_cases(
        &mut harness,
        vec![forwarded("new SYN, same tuple: A", syn.clone(), A)],
    );
    run_cases(
        &mut harness,
        vec![forwarded("and stays on A", ack.clone(), A)],
    );

    // A drains (weight 0): its established flow stays; new flows go to B.
    let mut draining = both.clone();
    draining[0].targets[0].weight = 0;
    harness.apply(&draining);
    run_cases(
        &mut harness,
        vec![forwarded(
            "A draining: established stays on A",
            ack.clone(),
            A,
        )],
    );
    let fresh = frame(&tcp4(port + 1), Tcp::Syn, b"");
    run_cases(
        &mut harness,
        vec![forwarded("A draining: new flow on B", fresh, B)],
    );
    let resyn = frame(&tcp4(port), Tcp::Syn, b"");
    run_cases(
        &mut harness,
        vec![forwarded("A draining: even a new SYN goes to B", resyn, B)],
    );
}

/// A jumbo frame (larger than a page, so it arrives in fragments) is forwarded whole when the
/// MTU allows it, and dropped when it does not.
#[test]
fn jumbo_frames() {
    let mut harness = Harness::new(static_config(65_537, 0x5eed, 9000));
    harness.apply(&listeners());
    let jumbo = frame(&tcp4(41_000), Tcp::Ack, &vec![0x6a; 8000]);
    let too_big = frame(&tcp4(41_001), Tcp::Ack, &vec![0x6b; 8981 - 40]);
    run_cases(
        &mut harness,
        vec![
            forwarded("8 KB frame under a 9000 MTU", jumbo, BACKEND4_TCP),
            dropped("one byte over a 9000 MTU", too_big, Counter::DropTooBig),
        ],
    );
}

/// Fragments and frames the parser cannot read go to the kernel unless they are provably for
/// the passthrough datapath: to a VIP address that this host does not also serve.
#[test]
fn unreadable_frames_and_fragments_reach_the_kernel_unless_provably_passthrough() {
    let mut harness = Harness::new(static_config(65_537, 0x5eed, MTU));
    harness.apply(&listeners());
    let ack4 = frame(&tcp4(40_000), Tcp::Ack, b"x");
    let ack6 = frame(&tcp6(40_000), Tcp::Ack, b"x");
    let five_ext = |f: &[u8]| {
        with_ipv6_ext(
            f,
            &[
                Ext::options(HOP_BY_HOP, 0),
                Ext::options(DEST_OPTS, 0),
                Ext::options(ROUTING, 0),
                Ext::options(DEST_OPTS, 0),
                Ext::options(DEST_OPTS, 0),
            ],
        )
    };
    let other6 = frame(
        &flow(CLIENT6, "2001:db8:100::9", 40_000, 443, TCP),
        Tcp::Ack,
        b"x",
    );
    let other4 = frame(
        &flow(CLIENT4, "198.18.100.9", 40_000, 443, TCP),
        Tcp::Ack,
        b"x",
    );
    let l4 = L3 + 20;
    let cut4 = |f: &[u8]| with_ipv4_total_len(&f[..l4 + 10], 30);
    run_cases(
        &mut harness,
        vec![
            passed(
                "v6 five extension headers, another address",
                five_ext(&other6),
                Counter::PassMalformed,
            ),
            passed(
                "v4 tcp header cut, another address",
                cut4(&other4),
                Counter::PassMalformed,
            ),
            dropped(
                "v6 five extension headers, passthrough VIP address",
                five_ext(&ack6),
                Counter::DropBadExtHeader,
            ),
        ],
    );
    // The VIP addresses are also this host's (L7 listeners on them).
    harness
        .reconciler
        .set_local_addresses([ip(VIP4), ip(VIP6)])
        .unwrap();
    run_cases(
        &mut harness,
        vec![
            passed(
                "v6 five extension headers, local VIP address",
                five_ext(&ack6),
                Counter::PassMalformed,
            ),
            passed(
                "v4 tcp header cut, local VIP address",
                cut4(&ack4),
                Counter::PassMalformed,
            ),
            passed(
                "v4 later fragment, local VIP address",
                with_ipv4_fragment(&ack4, 0x0010),
                Counter::PassFragment,
            ),
            passed(
                "v6 later fragment, local VIP address",
                with_ipv6_ext(&ack6, &[Ext::fragment(8 << 3)]),
                Counter::PassFragment,
            ),
            dropped(
                "v4 first fragment of a passthrough flow, local VIP address",
                with_ipv4_fragment(&ack4, 0x2000),
                Counter::DropFragment,
            ),
            dropped(
                "v6 first fragment of a passthrough flow, local VIP address",
                with_ipv6_ext(&ack6, &[Ext::fragment(1)]),
                Counter::DropFragment,
            ),
            passed(
                "v4 first fragment to another port, local VIP address",
                with_ipv4_fragment(
                    &frame(&flow(CLIENT4, VIP4, 1, 8443, TCP), Tcp::Ack, b"x"),
                    0x2000,
                ),
                Counter::PassNotVip,
            ),
        ],
    );
    // No longer local: the policy drops again.
    harness.reconciler.set_local_addresses([]).unwrap();
    run_cases(
        &mut harness,
        vec![dropped(
            "v4 later fragment, passthrough-only again",
            with_ipv4_fragment(&ack4, 0x0010),
            Counter::DropFragment,
        )],
    );
}

/// A TCP reset of a flow the table does not hold is forwarded by the table but never
/// remembered; one of a flow it holds goes where the flow goes.
#[test]
fn a_reset_never_creates_an_entry() {
    const A: &str = "198.18.1.10";
    const B: &str = "198.18.1.11";
    let mut harness = Harness::new(static_config(65_537, 0x5eed, MTU));
    // A port the two-backend table places on B.
    harness.apply(&[listener("web", VIP4, 443, Protocol::Tcp, &[A, B])]);
    let port = port_placed_on(&harness, "web", B, (CLIENT4, VIP4), 31_000);
    harness.apply(&[listener("web", VIP4, 443, Protocol::Tcp, &[A])]);
    let rst = with_tcp_flags(&frame(&tcp4(port), Tcp::Ack, b""), 0x14);
    let ack = frame(&tcp4(port), Tcp::Ack, b"x");
    let not_remembered = harness.counter(Counter::ConnRstNotRemembered);
    run_cases(
        &mut harness,
        vec![forwarded("reset, unknown flow", rst.clone(), A)],
    );
    assert_eq!(
        harness.counter(Counter::ConnRstNotRemembered),
        not_remembered + 1
    );
    let vip_id = u16::try_from(harness.reconciler.listeners()["web"].vip_id).unwrap();
    let key = lb::model::flow_key(
        std::net::SocketAddr::new(ip(CLIENT4), port),
        std::net::SocketAddr::new(ip(VIP4), 443),
        Protocol::Tcp,
    );
    use lb::datapath::Datapath as _;
    assert_eq!(
        harness
            .reconciler
            .datapath()
            .lookup_conn(&key, vip_id)
            .unwrap(),
        None,
        "the reset left no entry"
    );
    // The flow's data packet is remembered; then a reset follows it there even when the table
    // would now place it elsewhere.
    run_cases(&mut harness, vec![forwarded("data, remembered", ack, A)]);
    harness.apply(&[listener("web", VIP4, 443, Protocol::Tcp, &[A, B])]);
    run_cases(&mut harness, vec![forwarded("reset, known flow", rst, A)]);
}

/// UDP entries expire after the idle timeout, so a long-lived UDP flow follows the table after
/// a scale-out; TCP entries do not (they leave only when their bucket needs the slot).
#[test]
fn udp_entries_expire_after_the_idle_timeout_tcp_entries_do_not() {
    const A: &str = "198.18.1.10";
    const B: &str = "198.18.1.11";
    let mut config = static_config(65_537, 0x5eed, MTU);
    config.udp_idle_timeout_s = 1;
    let mut harness = Harness::new(config);
    let one = |protocol| listener("l", VIP4, 443, protocol, &[A]);
    let two = |protocol| listener("l", VIP4, 443, protocol, &[A, B]);
    harness.apply(&[one(Protocol::Udp)]);
    // A port the two-backend table places on B.
    harness.apply(&[two(Protocol::Udp)]);
    let port = port_placed_on(&harness, "l", B, (CLIENT4, VIP4), 32_000);
    harness.apply(&[one(Protocol::Udp)]);
    let udp = frame(&flow(CLIENT4, VIP4, port, 443, UDP), Tcp::Ack, b"q");
    run_cases(
        &mut harness,
        vec![forwarded("udp flow on A", udp.clone(), A)],
    );
    harness.apply(&[two(Protocol::Udp)]);
    run_cases(
        &mut harness,
        vec![forwarded("active: stays on A", udp.clone(), A)],
    );
    // Idle past the timeout (1 s; whole seconds of the kernel's clock, so up to 2 s).
    std::thread::sleep(std::time::Duration::from_millis(2_200));
    let expired = harness.counter(Counter::ConnExpired);
    run_cases(
        &mut harness,
        vec![forwarded("idle: placed afresh, on B", udp.clone(), B)],
    );
    assert_eq!(harness.counter(Counter::ConnExpired), expired + 1);
    run_cases(&mut harness, vec![forwarded("and stays on B", udp, B)]);

    // The same with TCP: the entry does not expire.
    harness.apply(&[one(Protocol::Tcp)]);
    let ack = frame(&tcp4(port), Tcp::Ack, b"x");
    run_cases(
        &mut harness,
        vec![forwarded("tcp flow on A", ack.clone(), A)],
    );
    harness.apply(&[two(Protocol::Tcp)]);
    std::thread::sleep(std::time::Duration::from_millis(2_200));
    run_cases(
        &mut harness,
        vec![forwarded("tcp, idle as long: stays on A", ack, A)],
    );
}
