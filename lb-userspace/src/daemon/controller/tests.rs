//! The controller against the in-memory datapath, with a clock of its own.

use std::{
    net::{IpAddr, SocketAddr},
    time::Instant,
};

use lb_common::abi::ConnValue;

use super::*;
use std::time::Duration;

use crate::{
    daemon::runtime::BackendKey, datapath::memory::MemoryDatapath, health::state::Outcome, model,
    state::Protocol,
};

const CONFIG: &str = r#"
[datapath]
interfaces = ["eth0"]
ring_size = 1009
max_listeners = 4
encap_source_v4 = "198.18.255.0/24"

[pools.web]
backends = [{ address = "198.18.1.1" }, { address = "198.18.1.2" }]

[listeners.https]
address = "198.18.100.1"
port = 443
mode = "passthrough"
pool = "web"
"#;

fn controller() -> Controller<MemoryDatapath> {
    let config = Config::parse(CONFIG, "test.toml").unwrap();
    let fake = MemoryDatapath::new(config.ring_geometry());
    let reconciler = Reconciler::new(
        fake,
        config.datapath_config(&HostDefaults {
            mtu: 1500,
            ..Default::default()
        }),
    )
    .unwrap();
    Controller::new(config, None, reconciler, Instant::now()).unwrap()
}

fn add(address: &str, weight: u32) -> Request {
    Request::AddBackend {
        pool: "web".to_owned(),
        address: address.parse().unwrap(),
        port: None,
        weight,
        server_name: None,
    }
}

impl Controller<MemoryDatapath> {
    /// Answers `request` now.
    fn ask(&mut self, request: Request) -> Response {
        self.handle(request, Instant::now())
    }
}

/// The backends the live table of `https` names, sorted.
fn in_table(c: &Controller<MemoryDatapath>) -> Vec<IpAddr> {
    let applied = &c.reconciler().listeners()["https"];
    let table = c.reconciler().live_table("https").unwrap();
    let mut addresses: Vec<IpAddr> = applied
        .backends
        .iter()
        .filter(|(_, b)| table.contains(&b.id))
        .map(|(a, _)| *a)
        .collect();
    addresses.sort();
    addresses
}

#[test]
fn a_change_updates_the_configuration_and_the_table() {
    let mut c = controller();
    let Response::Ok(Body::Changed(change)) = c.ask(add("198.18.1.3", 2)) else {
        panic!("the change was refused");
    };
    assert_eq!(change.listeners, ["https"]);
    assert_eq!(c.config().pools["web"].backends.len(), 3);
    assert_eq!(in_table(&c).len(), 3);
    let Response::Ok(Body::Backends(backends)) = c.ask(Request::ListBackends {
        pool: Some("web".to_owned()),
    }) else {
        panic!("no backend list");
    };
    let slots: u32 = backends.iter().map(|b| b.table_slots).sum();
    assert_eq!(slots, 1009, "the shares cover the table");
    let heavy = backends.iter().find(|b| b.weight == 2).unwrap();
    assert!(
        heavy.table_slots > 450,
        "weight 2 of 4 holds about half: {}",
        heavy.table_slots
    );
}

#[test]
fn a_refused_change_writes_nothing() {
    let mut c = controller();
    let writes = c.reconciler().datapath().writes;
    for request in [
        add("198.18.1.1", 1),
        add("198.18.1.9", 0),
        add("2001:db8::9", 1),
        Request::RemoveBackend {
            pool: "nope".to_owned(),
            address: "198.18.1.1".parse().unwrap(),
            port: None,
        },
    ] {
        let response = c.ask(request.clone());
        assert!(
            matches!(response, Response::Error(_)),
            "{request:?} was accepted"
        );
    }
    assert_eq!(c.reconciler().datapath().writes, writes);
    assert_eq!(c.config().pools["web"].backends.len(), 2);
}

#[test]
fn a_change_the_datapath_fails_is_rolled_back() {
    let mut c = controller();
    let before = in_table(&c);
    let config_before = c.config().clone();
    c.reconciler.datapath_mut().fail_writes_after(Some(3));
    let response = c.ask(add("198.18.1.3", 1));
    let Response::Error(message) = response else {
        panic!("a failing datapath accepted the change");
    };
    assert!(message.contains("could not be applied"), "{message}");
    assert_eq!(c.config(), &config_before);
    c.reconciler.datapath_mut().fail_writes_after(None);
    assert_eq!(
        in_table(&c),
        before,
        "the live table still names the old backends"
    );
    assert!(
        matches!(c.ask(add("198.18.1.3", 1)), Response::Ok(_)),
        "a retry works"
    );
}

#[test]
fn simulate_names_the_table_or_the_connection_table() {
    let mut c = controller();
    let client: SocketAddr = "198.18.0.1:40000".parse().unwrap();
    let vip: SocketAddr = "198.18.100.1:443".parse().unwrap();
    let simulate = |c: &mut Controller<MemoryDatapath>| match c.ask(Request::Simulate {
        protocol: Protocol::Tcp,
        client,
        vip,
    }) {
        Response::Ok(Body::Simulation(s)) => s,
        other => panic!("{other:?}"),
    };
    let fresh = simulate(&mut c);
    assert!(fresh.reason.starts_with("Maglev slot"), "{}", fresh.reason);
    assert_eq!(fresh.backend, fresh.new_connection_backend);

    // The flow is established on the other backend: the connection table wins.
    let other: IpAddr = if fresh.backend.to_string() == "198.18.1.1" {
        "198.18.1.2".parse().unwrap()
    } else {
        "198.18.1.1".parse().unwrap()
    };
    let applied = c.reconciler().listeners()["https"].clone();
    let backend = applied.backends[&other];
    let flow = model::flow_key(client, vip, Protocol::Tcp);
    let vip_id = u16::try_from(applied.vip_id).unwrap();
    c.reconciler.datapath_mut().conns.insert(
        (flow, vip_id),
        ConnValue {
            backend_id: u16::try_from(backend.id).unwrap(),
            generation: u16::try_from(backend.generation).unwrap(),
            seen_s: 0,
        },
    );
    let established = simulate(&mut c);
    assert_eq!(established.reason, "connection table");
    assert_eq!(established.backend, other);
    assert_eq!(established.new_connection_backend, fresh.backend);

    let unknown = c.ask(Request::Simulate {
        protocol: Protocol::Udp,
        client,
        vip,
    });
    assert!(matches!(unknown, Response::Error(m) if m.contains("no listener serves")));
}

const CHECKED: &str = r#"
[datapath]
interfaces = ["eth0"]
ring_size = 1009
max_listeners = 4
encap_source_v4 = "198.18.255.0/24"

[pools.web]
backends = [{ address = "198.18.1.1" }, { address = "198.18.1.2" }]
deregistration_delay = "30s"

[pools.web.health_check]
interval = "1s"
timeout = "500ms"
healthy_threshold = 2
unhealthy_threshold = 2

[listeners.https]
address = "198.18.100.1"
port = 443
mode = "passthrough"
pool = "web"
"#;

fn checked(now: Instant) -> Controller<MemoryDatapath> {
    let config = Config::parse(CHECKED, "checked.toml").unwrap();
    let fake = MemoryDatapath::new(config.ring_geometry());
    let reconciler = Reconciler::new(
        fake,
        config.datapath_config(&HostDefaults {
            mtu: 1500,
            ..Default::default()
        }),
    )
    .unwrap();
    Controller::new(config, None, reconciler, now).unwrap()
}

fn key(address: &str) -> BackendKey {
    BackendKey {
        pool: "web".to_owned(),
        address: address.parse().unwrap(),
        port: None,
    }
}

fn state(c: &mut Controller<MemoryDatapath>, address: &str) -> String {
    let Response::Ok(Body::Backends(backends)) = c.ask(Request::ListBackends { pool: None }) else {
        panic!("no backend list");
    };
    backends
        .into_iter()
        .find(|b| b.address.to_string() == address)
        .map(|b| b.state)
        .unwrap()
}

#[test]
fn a_backend_that_fails_its_checks_leaves_the_table_and_returns() {
    let t0 = Instant::now();
    let mut c = checked(t0);
    let dead = Outcome::Unreachable("connection refused".to_owned());
    c.on_health(&key("198.18.1.1"), &dead, t0);
    assert_eq!(in_table(&c).len(), 2, "one failure is not enough");
    c.on_health(&key("198.18.1.1"), &dead, t0 + Duration::from_secs(1));
    assert_eq!(in_table(&c), ["198.18.1.2".parse::<IpAddr>().unwrap()]);
    assert_eq!(state(&mut c, "198.18.1.1"), "unhealthy");
    let applied =
        &c.reconciler().listeners()["https"].backends[&"198.18.1.1".parse::<IpAddr>().unwrap()];
    assert!(!applied.serving, "a dead backend's flows are placed afresh");

    c.on_health(
        &key("198.18.1.1"),
        &Outcome::Pass,
        t0 + Duration::from_secs(2),
    );
    c.on_health(
        &key("198.18.1.1"),
        &Outcome::Pass,
        t0 + Duration::from_secs(3),
    );
    assert_eq!(in_table(&c).len(), 2, "back after the healthy threshold");
    assert_eq!(state(&mut c, "198.18.1.1"), "healthy");
}

#[test]
fn a_removal_drains_for_the_deregistration_delay_then_goes() {
    let t0 = Instant::now();
    let mut c = checked(t0);
    let removal = Request::RemoveBackend {
        pool: "web".to_owned(),
        address: "198.18.1.1".parse().unwrap(),
        port: None,
    };
    assert!(matches!(c.handle(removal, t0), Response::Ok(_)));
    assert_eq!(state(&mut c, "198.18.1.1"), "draining");
    assert_eq!(
        in_table(&c),
        ["198.18.1.2".parse::<IpAddr>().unwrap()],
        "no new flows"
    );
    c.on_tick(t0 + Duration::from_secs(29));
    assert_eq!(c.config().pools["web"].backends.len(), 2, "still draining");
    c.on_tick(t0 + Duration::from_secs(30));
    assert_eq!(
        c.config().pools["web"].backends.len(),
        1,
        "removed when the drain ended"
    );
}

#[test]
fn an_explicit_drain_takes_its_own_timeout_and_is_refused_twice() {
    let t0 = Instant::now();
    let mut c = checked(t0);
    let drain = Request::DrainBackend {
        pool: "web".to_owned(),
        address: "198.18.1.2".parse().unwrap(),
        port: None,
        timeout_ms: 5_000,
    };
    let active = |c: &mut Controller<MemoryDatapath>| {
        let Response::Ok(Body::Listeners(views)) = c.ask(Request::ListListeners) else {
            panic!("no listeners");
        };
        views[0].active_backends
    };
    assert_eq!(active(&mut c), 2);
    assert!(matches!(c.handle(drain.clone(), t0), Response::Ok(_)));
    assert_eq!(active(&mut c), 1, "a draining backend takes no new flows");
    assert!(matches!(c.handle(drain, t0), Response::Error(m) if m.contains("already draining")));
    c.on_tick(t0 + Duration::from_secs(5));
    assert_eq!(c.config().pools["web"].backends.len(), 1);
    let Response::Ok(Body::Status(status)) = c.ask(Request::Status) else {
        panic!("no status");
    };
    assert_eq!(status.operations[0], ("ok".to_owned(), 1));
    assert_eq!(status.operations[1], ("refused".to_owned(), 1));
}
