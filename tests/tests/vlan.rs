//! VLAN-tagged frames through the balancer (`BPF_PROG_TEST_RUN`): 802.1Q and 802.1ad (QinQ)
//! tags are read; tagged VIP traffic is balanced and leaves with the tags it arrived with
//! (or with an interface's configured egress VLAN); tagged traffic for anything else reaches
//! the kernel untouched.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a test panics with a message; helpers here are part of the tests"
)]

use lb::datapath::Datapath as _;
use lb_common::{abi::CONFIG_F_EGRESS_VLAN, counters::Counter};
use lb_tests::{fixture::*, harness::*, packet::*};

const Q100: [(u16, u16); 1] = [(0x8100, 100)];
const QINQ: [(u16, u16); 2] = [(0x88a8, 10), (0x8100, 100)];

/// A forwarded tagged frame: `untagged`'s encapsulation, with `tags` back in.
fn forwarded_tagged(
    name: &'static str,
    untagged: &[u8],
    tags: &[(u16, u16)],
    out_tags: &[(u16, u16)],
    backend: &str,
) -> Case {
    Case {
        name,
        input: with_vlan_tags(untagged, tags),
        action: XDP_TX,
        counter: Counter::TxLocal,
        output: with_vlan_tags(&to_backend(untagged, backend), out_tags),
    }
}

#[test]
fn tagged_vip_traffic_is_balanced_and_keeps_its_tags() {
    let mut harness = Harness::new(static_config(65_537, 0x5eed, MTU));
    harness.apply(&listeners());
    let syn4 = frame(&tcp4(40_000), Tcp::Syn, b"");
    let ack4 = frame(&tcp4(40_000), Tcp::Ack, b"hello");
    let ack6 = frame(&tcp6(40_000), Tcp::Ack, b"hello");
    let udp6 = frame(&flow(CLIENT6, VIP6, 5353, 53, UDP), Tcp::Ack, b"query");
    let other = frame(
        &flow(CLIENT4, "198.18.100.9", 40_000, 443, TCP),
        Tcp::Syn,
        b"",
    );
    let l4 = L3 + 4 + 20;
    run_cases(
        &mut harness,
        vec![
            forwarded_tagged("802.1Q v4 syn", &syn4, &Q100, &Q100, BACKEND4_TCP),
            forwarded_tagged("802.1Q v4 established", &ack4, &Q100, &Q100, BACKEND4_TCP),
            forwarded_tagged("QinQ v4", &ack4, &QINQ, &QINQ, BACKEND4_TCP),
            forwarded_tagged("802.1Q v6", &ack6, &Q100, &Q100, BACKEND6_TCP),
            forwarded_tagged("QinQ v6 udp", &udp6, &QINQ, &QINQ, BACKEND6_UDP),
            forwarded_tagged(
                "802.1ad alone",
                &ack4,
                &[(0x88a8, 4094)],
                &[(0x88a8, 4094)],
                BACKEND4_TCP,
            ),
            passed(
                "802.1Q to another address",
                with_vlan_tags(&other, &Q100),
                Counter::PassNotVip,
            ),
            passed(
                "QinQ arp",
                with_vlan_tags(&arp(), &QINQ),
                Counter::PassNotIp,
            ),
            passed(
                "three tags",
                with_vlan_tags(&syn4, &[(0x88a8, 1), (0x8100, 2), (0x8100, 3)]),
                Counter::PassNotIp,
            ),
            passed(
                "802.1Q tag cut short",
                with_vlan_tags(&syn4, &Q100)[..16].to_vec(),
                Counter::PassMalformed,
            ),
            passed(
                "802.1Q v4 header cut",
                with_vlan_tags(&syn4, &Q100)[..L3 + 4 + 19].to_vec(),
                Counter::PassMalformed,
            ),
            dropped(
                "802.1Q v4 tcp header cut, to the VIP",
                with_vlan_tags(&with_ipv4_total_len(&syn4[..l4 - 4 + 10], 30), &Q100),
                Counter::DropTruncatedL4,
            ),
        ],
    );
}

/// An interface's egress VLAN replaces whatever tags a frame arrived with: a VLAN id gives
/// exactly one 802.1Q tag, 0 none.
#[test]
fn an_egress_vlan_retags_forwarded_frames() {
    let mut config = static_config(65_537, 0x5eed, MTU);
    config.flags |= CONFIG_F_EGRESS_VLAN;
    let mut harness = Harness::new(config);
    harness.apply(&listeners());
    // Frames run without a context arrive on (and, with a static next hop, leave by) the
    // namespace's loopback interface.
    const LO: u32 = 1;
    let ack4 = frame(&tcp4(40_000), Tcp::Ack, b"hello");
    let ack6 = frame(&tcp6(40_000), Tcp::Ack, b"hello");
    let q200 = [(0x8100, 200)];
    harness
        .reconciler
        .datapath_mut()
        .set_egress_vlan(LO, Some(200))
        .unwrap();
    run_cases(
        &mut harness,
        vec![
            forwarded_tagged("802.1Q 100 -> 200", &ack4, &Q100, &q200, BACKEND4_TCP),
            forwarded_tagged("QinQ -> 200", &ack6, &QINQ, &q200, BACKEND6_TCP),
            forwarded_tagged("untagged -> 200", &ack4, &[], &q200, BACKEND4_TCP),
        ],
    );
    harness
        .reconciler
        .datapath_mut()
        .set_egress_vlan(LO, Some(0))
        .unwrap();
    run_cases(
        &mut harness,
        vec![
            forwarded_tagged("802.1Q 100 -> untagged", &ack4, &Q100, &[], BACKEND4_TCP),
            forwarded_tagged("QinQ -> untagged", &ack6, &QINQ, &[], BACKEND6_TCP),
        ],
    );
    harness
        .reconciler
        .datapath_mut()
        .set_egress_vlan(LO, None)
        .unwrap();
    run_cases(
        &mut harness,
        vec![forwarded_tagged(
            "no setting: tags kept",
            &ack4,
            &Q100,
            &Q100,
            BACKEND4_TCP,
        )],
    );
}
