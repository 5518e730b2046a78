//! The reconciler against the in-memory datapath, failures injected.

use std::net::IpAddr;

use lb_common::abi::{BACKEND_F_SERVING, DatapathConfig, VIP_F_ADDRESS_MARKER, VipKey};

use super::*;
use crate::{
    datapath::{RingGeometry, memory::MemoryDatapath},
    state::{Protocol, Target, Vip},
};

const RING: u32 = 1009;

fn reconciler(rings: u32) -> Reconciler<MemoryDatapath> {
    let geometry = RingGeometry {
        ring_size: RING,
        rings,
    };
    let config = DatapathConfig {
        ring_size: RING,
        hash_seed: 42,
        ..DatapathConfig::default()
    };
    Reconciler::new(MemoryDatapath::new(geometry), config).unwrap()
}

fn ip(text: &str) -> IpAddr {
    text.parse().unwrap()
}

fn listener(name: &str, vip: &str, port: u16, backends: &[&str]) -> Listener {
    Listener {
        name: name.to_owned(),
        vip: Vip {
            address: ip(vip),
            port,
            protocol: Protocol::Tcp,
        },
        targets: backends.iter().map(|b| Target::new(ip(b), 1)).collect(),
    }
}

/// The table the datapath serves for `listener`, read from the fake's maps (VIP entry ->
/// ring), as backend addresses.
fn served(r: &Reconciler<MemoryDatapath>, listener: &Listener) -> Vec<IpAddr> {
    let fake = r.datapath();
    let table = fake.live_table(&listener.vip.key()).expect("published");
    table
        .iter()
        .map(|&id| {
            let backend = fake.backends[&id];
            assert_ne!(
                backend.flags & BACKEND_F_SERVING,
                0,
                "a ring names a retired backend"
            );
            crate::state::addr_from_be(&backend.addr_be, backend.family)
        })
        .collect()
}

/// The table Maglev gives `listener`, computed directly, as backend addresses.
fn expected(listener: &Listener) -> Vec<IpAddr> {
    let ids: Vec<Vec<u8>> = listener.targets.iter().map(Target::identity).collect();
    let members: Vec<maglev::Member<'_>> = listener
        .targets
        .iter()
        .zip(&ids)
        .map(|(t, identity)| maglev::Member {
            identity,
            weight: t.full_weight,
            effective: t.weight,
        })
        .collect();
    maglev::build_stable(&members, RING, 42)
        .iter()
        .map(|&i| listener.targets[i as usize].address)
        .collect()
}

#[test]
fn publishes_a_listener_and_its_address_marker() {
    let mut r = reconciler(8);
    let web = listener("web", "198.18.100.1", 443, &["198.18.1.1", "198.18.1.2"]);
    r.apply(std::slice::from_ref(&web)).unwrap();
    assert_eq!(served(&r, &web), expected(&web));
    let marker = VipKey::address_marker(web.vip.key().addr_be, web.vip.key().family);
    assert_eq!(r.datapath().vips[&marker].flags, VIP_F_ADDRESS_MARKER);
}

#[test]
fn an_update_writes_only_changed_slots_into_the_spare_ring_then_flips() {
    let mut r = reconciler(8);
    let v1 = listener(
        "web",
        "198.18.100.1",
        443,
        &["198.18.1.1", "198.18.1.2", "198.18.1.3"],
    );
    let v2 = listener(
        "web",
        "198.18.100.1",
        443,
        &["198.18.1.1", "198.18.1.2", "198.18.1.3", "198.18.1.4"],
    );
    let v3 = listener(
        "web",
        "198.18.100.1",
        443,
        &["198.18.1.1", "198.18.1.3", "198.18.1.4"],
    );
    r.apply(std::slice::from_ref(&v1)).unwrap();
    let ring_v1 = r.listeners()["web"].live_ring();
    let table_v1 = r.live_table("web").unwrap().to_vec();
    r.apply(std::slice::from_ref(&v2)).unwrap();
    assert_ne!(
        r.listeners()["web"].live_ring(),
        ring_v1,
        "v2 went to the spare ring"
    );
    assert_eq!(served(&r, &v2), expected(&v2));

    let writes_before = r.datapath().writes;
    r.apply(std::slice::from_ref(&v3)).unwrap();
    assert_eq!(
        r.listeners()["web"].live_ring(),
        ring_v1,
        "v3 reuses v1's ring"
    );
    let table_v3 = r.live_table("web").unwrap().to_vec();
    let ring_writes = maglev::changed_slots(&table_v1, &table_v3).len();
    // Ring slots that changed since v1, one VIP flip, one backend retired.
    assert_eq!(r.datapath().writes - writes_before, ring_writes + 2);
    assert!(
        ring_writes < RING as usize,
        "only a part of the ring was rewritten"
    );
    assert_eq!(served(&r, &v3), expected(&v3));
    let retired = r
        .datapath()
        .backends
        .values()
        .filter(|b| b.flags == 0)
        .count();
    assert_eq!(retired, 1, "198.18.1.2 no longer serves");
}

#[test]
fn a_failed_update_leaves_the_live_table_untouched_and_a_retry_succeeds() {
    let v1 = listener("web", "198.18.100.1", 443, &["198.18.1.1", "198.18.1.2"]);
    let v2 = listener(
        "web",
        "198.18.100.1",
        443,
        &["198.18.1.1", "198.18.1.2", "198.18.1.3"],
    );
    let v3 = listener("web", "198.18.100.1", 443, &["198.18.1.3", "198.18.1.4"]);
    for fail_after in [0, 1, 2, 3, 50, 300, 600] {
        let mut r = reconciler(8);
        r.apply(std::slice::from_ref(&v1)).unwrap();
        r.apply(std::slice::from_ref(&v2)).unwrap();
        let vips_before = r.datapath().vips.clone();
        r.datapath_mut().fail_writes_after(Some(fail_after));
        let error = r.apply(std::slice::from_ref(&v3)).unwrap_err();
        assert!(matches!(error, ReconcileError::Datapath { .. }), "{error}");
        assert_eq!(
            r.datapath().vips,
            vips_before,
            "failing after {fail_after}: VIPs changed"
        );
        assert_eq!(
            served(&r, &v2),
            expected(&v2),
            "failing after {fail_after}: table changed"
        );

        r.datapath_mut().fail_writes_after(None);
        r.apply(std::slice::from_ref(&v3)).unwrap();
        assert_eq!(
            served(&r, &v3),
            expected(&v3),
            "retry after failing at {fail_after}"
        );
    }
}

#[test]
fn a_failed_new_listener_is_not_published_and_gives_its_ids_back() {
    // Writes of a new listener: backend, its counters, ring slots (none here: a single
    // backend with id 0 fills the zeroed ring already), marker, VIP.
    let web = listener("web", "198.18.100.1", 443, &["198.18.1.1"]);
    for fail_after in 0..4 {
        let mut r = reconciler(2);
        r.datapath_mut().fail_writes_after(Some(fail_after));
        assert!(
            r.apply(std::slice::from_ref(&web)).is_err(),
            "failing after {fail_after}"
        );
        assert!(
            !r.datapath().vips.contains_key(&web.vip.key()),
            "not published"
        );
        assert!(r.listeners().is_empty());
        r.datapath_mut().fail_writes_after(None);
        // With room for one listener only, this works only if the rings were given back.
        r.apply(std::slice::from_ref(&web)).unwrap();
        assert_eq!(served(&r, &web), expected(&web));
        r.apply(&[]).unwrap();
        assert!(
            r.datapath().vips.is_empty(),
            "a marker left behind is cleaned up"
        );
    }
}

#[test]
fn removing_listeners_unpublishes_them_and_the_last_one_takes_the_marker() {
    let mut r = reconciler(8);
    let web = listener("web", "198.18.100.1", 443, &["198.18.1.1"]);
    let alt = listener("alt", "198.18.100.1", 8443, &["198.18.1.1"]);
    r.apply(&[web.clone(), alt.clone()]).unwrap();
    assert_eq!(r.datapath().vips.len(), 3, "two listeners and one marker");
    r.apply(std::slice::from_ref(&alt)).unwrap();
    assert_eq!(r.datapath().vips.len(), 2, "the marker stays for alt");
    assert!(!r.datapath().vips.contains_key(&web.vip.key()));
    r.apply(&[]).unwrap();
    assert!(r.datapath().vips.is_empty());
    assert!(
        r.datapath().backends.values().all(|b| b.flags == 0),
        "all retired"
    );
}

#[test]
fn an_invalid_or_oversized_state_is_rejected_before_any_write() {
    let mut r = reconciler(4);
    let cases = [
        vec![
            listener("web", "198.18.100.1", 443, &["198.18.1.1"]),
            listener("web", "198.18.100.2", 443, &["198.18.1.1"]),
        ],
        vec![
            listener("a", "198.18.100.1", 443, &["198.18.1.1"]),
            listener("b", "198.18.100.1", 443, &["198.18.1.1"]),
        ],
        vec![listener(
            "web",
            "198.18.100.1",
            443,
            &["198.18.1.1", "198.18.1.1"],
        )],
        vec![listener("web", "198.18.100.1", 443, &["2001:db8::1"])],
        vec![
            listener("a", "198.18.100.1", 1, &[]),
            listener("b", "198.18.100.1", 2, &[]),
            listener("c", "198.18.100.1", 3, &[]),
        ],
    ];
    for desired in cases {
        let writes = r.datapath().writes;
        assert!(r.apply(&desired).is_err(), "{desired:?} was accepted");
        assert_eq!(r.datapath().writes, writes, "{desired:?} wrote something");
    }
}

#[test]
fn an_empty_pool_publishes_an_empty_table() {
    let mut r = reconciler(2);
    let empty = listener("web", "198.18.100.1", 443, &[]);
    r.apply(std::slice::from_ref(&empty)).unwrap();
    let table = r.datapath().live_table(&empty.vip.key()).unwrap();
    assert!(table.iter().all(|&slot| slot == RING_EMPTY));
}

#[test]
fn a_reused_backend_id_gets_a_new_generation() {
    let mut r = reconciler(2);
    r.backend_ids = IdPool::new(1);
    r.apply(&[listener("web", "198.18.100.1", 443, &["198.18.1.1"])])
        .unwrap();
    let first = r.datapath().backends[&0];
    r.apply(&[listener("web", "198.18.100.1", 443, &[])])
        .unwrap();
    r.apply(&[listener("web", "198.18.100.1", 443, &["198.18.1.2"])])
        .unwrap();
    let second = r.datapath().backends[&0];
    assert_ne!(first.generation, second.generation);
    assert_ne!(second.generation, 0);
}

#[test]
fn listener_traffic_is_the_sum_of_its_backends_and_survives_id_reuse() {
    use lb_common::{abi::TrafficCounters, counters::Counter};
    let traffic = |packets, new_flows| TrafficCounters {
        packets,
        bytes: packets * 100,
        new_flows,
    };
    let mut r = reconciler(4);
    r.backend_ids = IdPool::new(2);
    let web = listener("web", "198.18.100.1", 443, &["198.18.1.1", "198.18.1.2"]);
    r.apply(std::slice::from_ref(&web)).unwrap();
    let ids: Vec<u32> = r.listeners()["web"]
        .backends
        .values()
        .map(|b| b.id)
        .collect();
    r.datapath_mut().traffic.insert(ids[0], traffic(10, 2));
    r.datapath_mut().traffic.insert(ids[1], traffic(5, 1));
    let snapshot = r.snapshot().unwrap();
    assert_eq!(snapshot.listeners["web"].total, traffic(15, 3));
    assert_eq!(snapshot.counter(Counter::TxLocal), 15);
    assert_eq!(snapshot.counter(Counter::ConnHit), 12);

    // 198.18.1.2 leaves, and its id goes to a new backend: its traffic stays counted.
    r.apply(&[listener("web", "198.18.100.1", 443, &["198.18.1.1"])])
        .unwrap();
    r.apply(&[listener(
        "web",
        "198.18.100.1",
        443,
        &["198.18.1.1", "198.18.1.3"],
    )])
    .unwrap();
    let reused = r.listeners()["web"].backends[&ip("198.18.1.3")].id;
    assert_eq!(reused, ids[1], "the only free id was reused");
    assert!(
        !r.datapath().traffic.contains_key(&reused),
        "its counters were zeroed"
    );
    let snapshot = r.snapshot().unwrap();
    assert_eq!(snapshot.listeners["web"].total, traffic(15, 3));
    assert_eq!(
        snapshot.listeners["web"].backends[&ip("198.18.1.3")],
        traffic(0, 0)
    );
    assert_eq!(snapshot.counter(Counter::TxLocal), 15);

    // The listener goes: the balancer's counters keep what it forwarded, as removed
    // listeners' traffic.
    r.apply(&[]).unwrap();
    let snapshot = r.snapshot().unwrap();
    assert!(snapshot.listeners.is_empty());
    assert_eq!(snapshot.removed, traffic(15, 3));
    assert_eq!(snapshot.counter(Counter::TxLocal), 15);
}

/// Listener totals and removed listeners' traffic live in the pinned history: a restarted
/// daemon (an adopting reconciler) sees the same totals, and the listeners' totals plus the
/// removed ones always add up to what the balancer forwarded.
#[test]
fn traffic_totals_survive_a_restart_and_add_up() {
    use lb_common::abi::TrafficCounters;
    let traffic = |packets| TrafficCounters {
        packets,
        bytes: packets * 100,
        new_flows: 1,
    };
    let web = listener("web", "198.18.100.1", 443, &["198.18.1.1", "198.18.1.2"]);
    let alt = listener("alt", "198.18.100.1", 8443, &["198.18.1.3"]);
    let mut first = reconciler(8);
    first.apply(&[web.clone(), alt.clone()]).unwrap();
    let id =
        |r: &Reconciler<MemoryDatapath>, l: &str, a: &str| r.listeners()[l].backends[&ip(a)].id;
    let (a, b, c) = (
        id(&first, "web", "198.18.1.1"),
        id(&first, "web", "198.18.1.2"),
        id(&first, "alt", "198.18.1.3"),
    );
    first.datapath_mut().traffic.insert(a, traffic(10));
    first.datapath_mut().traffic.insert(b, traffic(20));
    first.datapath_mut().traffic.insert(c, traffic(40));
    // 198.18.1.2 leaves `web`, then a new backend takes its id (its traffic is folded into the
    // history); `alt` is removed (its traffic becomes removed listeners').
    first
        .apply(&[listener("web", "198.18.100.1", 443, &["198.18.1.1"]), alt])
        .unwrap();
    first
        .apply(&[listener(
            "web",
            "198.18.100.1",
            443,
            &["198.18.1.1", "198.18.1.9"],
        )])
        .unwrap();
    let before = first.snapshot().unwrap();
    assert_eq!(before.listeners["web"].total.packets, 30);
    assert_eq!(before.removed.packets, 40);
    let config = *first.config();
    let datapath = first.into_datapath();
    let grown = listener("web", "198.18.100.1", 443, &["198.18.1.1", "198.18.1.9"]);
    let mut second = Reconciler::adopt(datapath, config, std::slice::from_ref(&grown)).unwrap();
    second.apply(std::slice::from_ref(&grown)).unwrap();
    let after = second.snapshot().unwrap();
    assert_eq!(after.listeners["web"].total, before.listeners["web"].total);
    assert_eq!(after.removed, before.removed);
    let forwarded: u64 = second
        .datapath()
        .traffic
        .values()
        .map(|t| t.packets)
        .sum::<u64>()
        + second
            .datapath()
            .history
            .values()
            .map(|t| t.packets)
            .sum::<u64>();
    let totals = after
        .listeners
        .values()
        .map(|l| l.total.packets)
        .sum::<u64>()
        + after.removed.packets;
    assert_eq!(totals, forwarded, "totals add up to every forwarded packet");
}

#[test]
fn an_adopting_reconciler_keeps_ids_generations_and_tables() {
    let web = listener(
        "web",
        "198.18.100.1",
        443,
        &["198.18.1.1", "198.18.1.2", "198.18.1.3"],
    );
    let alt = listener("alt", "198.18.100.1", 8443, &["198.18.1.1"]);
    let mut first = reconciler(8);
    first.apply(&[web.clone(), alt.clone()]).unwrap();
    let before = first.listeners()["web"].backends.clone();
    let table_before = served(&first, &web);
    let config = *first.config();
    let datapath = first.into_datapath();

    // A restart: same configuration, minus the `alt` listener.
    let mut second = Reconciler::adopt(datapath, config, std::slice::from_ref(&web)).unwrap();
    assert_eq!(second.listeners().len(), 2, "both live VIPs adopted");
    assert!(
        second
            .listeners()
            .contains_key("(adopted 198.18.100.1:8443/tcp)")
    );
    let adopted = &second.listeners()["web"].backends;
    for (address, backend) in &before {
        assert_eq!(adopted[address].id, backend.id, "{address} keeps its id");
        assert_eq!(adopted[address].generation, backend.generation);
    }
    second.apply(std::slice::from_ref(&web)).unwrap();
    assert_eq!(
        served(&second, &web),
        table_before,
        "the same table: no flow moves"
    );
    assert!(
        !second.datapath().vips.contains_key(&alt.vip.key()),
        "the stale VIP is gone"
    );
    assert_eq!(
        second.datapath().vips.len(),
        2,
        "the listener and its address marker"
    );

    // And it goes on: a change writes only what differs, with new generations for new ids.
    let grown = listener(
        "web",
        "198.18.100.1",
        443,
        &["198.18.1.1", "198.18.1.2", "198.18.1.3", "198.18.1.4"],
    );
    second.apply(std::slice::from_ref(&grown)).unwrap();
    assert_eq!(served(&second, &grown), expected(&grown));
}

/// The digest of a listener's live table, as `lb listener list` shows it.
fn digest(r: &Reconciler<MemoryDatapath>, name: &str) -> String {
    r.listeners()[name].digest.clone()
}

#[test]
fn nodes_with_the_same_configuration_and_states_show_the_same_table_digest() {
    let web = listener(
        "web",
        "198.18.100.1",
        443,
        &["198.18.1.1", "198.18.1.2", "198.18.1.3"],
    );
    // One node applied another listener first: its backend ids differ.
    let mut first = reconciler(4);
    first.apply(std::slice::from_ref(&web)).unwrap();
    let mut second = reconciler(4);
    let other = listener("api", "198.18.100.2", 443, &["198.18.2.1", "198.18.2.2"]);
    second.apply(std::slice::from_ref(&other)).unwrap();
    second.apply(&[other, web.clone()]).unwrap();
    let ids = |r: &Reconciler<MemoryDatapath>| r.live_table("web").unwrap().to_vec();
    assert_ne!(ids(&first), ids(&second), "the nodes' backend ids differ");
    assert_eq!(digest(&first, "web").len(), 16);
    assert_eq!(digest(&first, "web"), digest(&second, "web"));
    // The targets in another order: the same table, the same digest.
    let mut reversed = web.clone();
    reversed.targets.reverse();
    let mut third = reconciler(4);
    third.apply(&[reversed]).unwrap();
    assert_eq!(served(&third, &web), served(&first, &web));
    assert_eq!(digest(&third, "web"), digest(&first, "web"));
    // A weight that differs shows, configured or ramping (one node ramping a backend up).
    let mut weighted = web.clone();
    weighted.targets[0].weight = 3;
    weighted.targets[0].full_weight = 3;
    let mut ramping = weighted.clone();
    ramping.targets[0].weight = 2;
    let mut fifth = reconciler(4);
    fifth.apply(&[ramping]).unwrap();
    let mut fourth = reconciler(4);
    fourth.apply(&[weighted]).unwrap();
    assert_ne!(digest(&fourth, "web"), digest(&first, "web"));
    assert_ne!(digest(&fifth, "web"), digest(&fourth, "web"));
    // A backend gone shows.
    let fewer = listener("web", "198.18.100.1", 443, &["198.18.1.1", "198.18.1.2"]);
    first.apply(&[fewer]).unwrap();
    assert_ne!(digest(&first, "web"), digest(&second, "web"));
}
