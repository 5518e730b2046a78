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
/// VLAN tags as (TPID, VLAN id), outermost first.
type Tags = Vec<(u16, u16)>;
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

/// The MAC address of `iface` in `ns`.
fn mac_of(ns: &lb::lab::NetNs, iface: &str) -> [u8; 6] {
    let out = ns.ip(&["-br", "link", "show", iface]).unwrap();
    let mac = out.split_whitespace().nth(2).expect("a MAC");
    let bytes: Vec<u8> = mac
        .split(':')
        .map(|b| u8::from_str_radix(b, 16).unwrap())
        .collect();
    bytes.try_into().unwrap()
}

/// A client sends tagged frames (802.1Q, and QinQ) to the VIP from a raw socket (this kernel
/// has no VLAN devices); the daemon's balancer encapsulates them and sends them on with the
/// same tags, and they reach a backend's switch port tagged and encapsulated.
#[test]
fn tagged_frames_reach_the_backends_tagged_and_encapsulated() {
    use lb::lab::passthrough::{CLIENT_V4, IFACE, VIP_V4, backend_v4, lab_config};
    use lb_tests::{daemon_lab::DaemonLab, raw::RawSocket};
    const BACKENDS: usize = 3;
    let env = DaemonLab::start("lbtvln", BACKENDS, |paths| lab_config(paths, BACKENDS));
    let features = env.lab.lb.run(&["ethtool", "-k", IFACE]).unwrap();
    assert!(
        features.contains("rx-vlan-offload: off")
            && features.contains("rx-vlan-stag-hw-parse: off"),
        "the daemon turned receive VLAN offload off: {features}"
    );
    let lb_mac = mac_of(&env.lab.lb, IFACE);
    let client_mac = mac_of(&env.lab.client, IFACE);
    let frames: Vec<(Vec<u8>, Tags)> = (0..8u16)
        .map(|i| {
            let mut f = frame(
                &Flow {
                    src: std::net::IpAddr::V4(CLIENT_V4),
                    dst: std::net::IpAddr::V4(VIP_V4),
                    src_port: 47_000 + i,
                    dst_port: 443,
                    proto: TCP,
                },
                Tcp::Syn,
                b"",
            );
            f[..6].copy_from_slice(&lb_mac);
            f[6..12].copy_from_slice(&client_mac);
            let tags = if i % 2 == 0 {
                vec![(0x8100, 100)]
            } else {
                vec![(0x88a8, 10), (0x8100, 100)]
            };
            (f, tags)
        })
        .collect();

    let ports: Vec<String> = (0..BACKENDS).map(|i| format!("b{i}")).collect();
    // A bridge moves a frame's outer tag beside the data while it switches it; as on a wire,
    // its ports put the tags back into the frames they send.
    for port in ports.iter().map(String::as_str).chain(["client", "lb"]) {
        env.lab
            .switch
            .run(&[
                "ethtool",
                "-K",
                port,
                "txvlan",
                "off",
                "tx-vlan-stag-hw-insert",
                "off",
            ])
            .unwrap();
    }
    let captures: Vec<RawSocket> = ports
        .iter()
        .map(|port| {
            env.lab
                .switch
                .run_here(|| RawSocket::bind(lb::loader::interface_index(port).unwrap()).unwrap())
                .unwrap()
        })
        .collect();
    let sender = env
        .lab
        .client
        .run_here(|| RawSocket::bind(lb::loader::interface_index(IFACE).unwrap()).unwrap())
        .unwrap();
    for (untagged, tags) in &frames {
        sender.send(&with_vlan_tags(untagged, tags)).unwrap();
    }
    let is_tagged = |f: &[u8]| matches!(u16::from_be_bytes([f[12], f[13]]), 0x8100 | 0x88a8);
    let mut seen = Vec::new();
    for capture in &captures {
        seen.extend(
            capture
                .capture(std::time::Duration::from_secs(2), frames.len(), is_tagged)
                .unwrap(),
        );
    }
    for (untagged, tags) in &frames {
        let tagged_inner = with_vlan_tags(untagged, tags);
        let arrived = seen.iter().find(|f| {
            f.len() >= tagged_inner.len() && f.ends_with(&tagged_inner[14 + 4 * tags.len()..])
        });
        let arrived = arrived.unwrap_or_else(|| {
            panic!(
                "the frame of port {} never reached a backend; {} tagged frames seen\nlb stats:\n{}",
                u16::from_be_bytes([untagged[34], untagged[35]]),
                seen.len(),
                env.cli_ok(&["stats"])
            )
        });
        let untagged_out = without_vlan_tags(arrived, tags.len());
        assert_eq!(
            &arrived[12..12 + 4 * tags.len()],
            &with_vlan_tags(&[0; 12], tags)[12..],
            "the tags it arrived with"
        );
        assert_eq!(&arrived[6..12], &lb_mac, "from the balancer");
        let ip = &untagged_out[14..];
        assert_eq!(ip[9], 4, "IP-in-IP");
        let backend: [u8; 4] = ip[16..20].try_into().unwrap();
        assert!(
            (0..BACKENDS).any(|i| backend_v4(i).octets() == backend),
            "to a backend"
        );
        assert_eq!(&ip[20..], &untagged[14..], "the client's packet, whole");
    }
}
