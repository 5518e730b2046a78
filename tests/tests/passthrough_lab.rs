//! Real traffic through the XDP balancer: namespaces for a client, the balancer and three
//! backends (decapsulation program attached, VIP on loopback, a TLS server with its own
//! certificate). Real TLS clients connect to the VIP hundreds of times.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a test panics with a message; helpers here are part of the tests"
)]

use std::{
    collections::BTreeMap,
    net::{IpAddr, SocketAddr},
};

use lb::{
    config::{Config, HostDefaults},
    lab::{
        daemon::DaemonPaths,
        passthrough::{
            CLIENT_V4, CLIENT_V6, IFACE, INNER_MTU, PassthroughLab, VIP_NAME, VIP_V4, VIP_V6,
            lab_config,
        },
        tls_exchange,
    },
    loader::{AttachMode, Balancer, BalancerSpec},
    reconcile::Reconciler,
};
use lb_common::counters::{Counter, CounterKind};

const BACKENDS: usize = 3;

/// One client connection as the client saw it.
struct Seen {
    client: SocketAddr,
    /// The backend named by the certificate the client verified.
    cert_backend: String,
    /// The backend named in the reply.
    reply_backend: String,
}

fn connect_many(lab: &PassthroughLab, vip: IpAddr, count: usize) -> Vec<Seen> {
    let roots = lab.pki.roots().unwrap();
    let names: Vec<(String, String)> = lab
        .backends
        .iter()
        .map(|b| (b.name.clone(), format!("{}.lb.test", b.name)))
        .collect();
    let handle = lab
        .client
        .spawn("tls-clients", move || {
            (0..count)
                .map(|i| {
                    let exchange =
                        tls_exchange(VIP_NAME, SocketAddr::new(vip, 443), &roots, "hello")
                            .unwrap_or_else(|e| panic!("connection {i} to {vip}: {e}"));
                    let cert_backend = names
                        .iter()
                        .find(|(_, cert)| exchange.peer_names.contains(cert))
                        .map(|(name, _)| name.clone())
                        .unwrap_or_else(|| panic!("unknown certificate {:?}", exchange.peer_names));
                    let reply_backend = exchange
                        .reply
                        .split_whitespace()
                        .next()
                        .unwrap_or_default()
                        .to_owned();
                    Seen {
                        client: exchange.local_addr,
                        cert_backend,
                        reply_backend,
                    }
                })
                .collect::<Vec<_>>()
        })
        .unwrap();
    handle.join().expect("the client thread panicked")
}

/// Every connection was accepted by exactly one backend: the one whose certificate the client
/// saw and whose name the reply carries. Returns connections per backend.
fn check_one_backend_each(lab: &PassthroughLab, seen: &[Seen]) -> BTreeMap<String, usize> {
    let accepted: Vec<(String, Vec<SocketAddr>)> = lab
        .backends
        .iter()
        .map(|b| {
            (
                b.name.clone(),
                b.servers.iter().flat_map(|s| s.accepted()).collect(),
            )
        })
        .collect();
    let mut per_backend = BTreeMap::new();
    for s in seen {
        let holders: Vec<&String> = accepted
            .iter()
            .filter(|(_, peers)| peers.contains(&s.client))
            .map(|(name, _)| name)
            .collect();
        assert_eq!(holders.len(), 1, "{} was accepted by {holders:?}", s.client);
        assert_eq!(
            holders[0], &s.cert_backend,
            "{}: certificate of another backend",
            s.client
        );
        assert_eq!(
            holders[0], &s.reply_backend,
            "{}: reply from another backend",
            s.client
        );
        *per_backend.entry(s.cert_backend.clone()).or_insert(0) += 1;
    }
    per_backend
}

#[test]
fn tls_through_the_xdp_balancer_completes_with_the_backends_certificates() {
    lb_tests::require_root();
    let mut lab = PassthroughLab::build("lbtpt", BACKENDS).expect("building the lab");
    lab.start_tls(443).expect("starting the TLS backends");

    // The daemon's lab configuration; this test loads the balancer itself, unpinned, so the
    // configured paths are never used.
    let paths = DaemonPaths {
        socket: "/nonexistent/lb.sock".into(),
        pin_dir: "/nonexistent/pins".into(),
    };
    let config =
        Config::parse(&lab_config(&paths, BACKENDS), "lab.toml").expect("the lab configuration");
    let spec = BalancerSpec {
        geometry: config.ring_geometry(),
        conn_table_size: config.datapath.conn_table_size,
        pin_dir: None,
    };
    let (mut balancer, datapath) = Balancer::load(&spec).expect("loading the balancer");
    let mut reconciler = Reconciler::new(
        datapath,
        config.datapath_config(&HostDefaults {
            mtu: INNER_MTU,
            ..HostDefaults::default()
        }),
    )
    .expect("configuring");
    reconciler
        .apply(&config.passthrough_listeners())
        .expect("applying the listeners");
    lab.lb
        .run_here(|| balancer.attach(IFACE, AttachMode::Driver))
        .unwrap()
        .expect("attaching the balancer");

    let seen4 = connect_many(&lab, IpAddr::V4(VIP_V4), 300);
    assert!(seen4.iter().all(|s| s.client.ip() == IpAddr::V4(CLIENT_V4)));
    let per_backend = check_one_backend_each(&lab, &seen4);
    assert_eq!(
        per_backend.len(),
        BACKENDS,
        "every backend served: {per_backend:?}"
    );

    let seen6 = connect_many(&lab, IpAddr::V6(VIP_V6), 150);
    assert!(seen6.iter().all(|s| s.client.ip() == IpAddr::V6(CLIENT_V6)));
    let per_backend = check_one_backend_each(&lab, &seen6);
    assert_eq!(
        per_backend.len(),
        BACKENDS,
        "every backend served over IPv6: {per_backend:?}"
    );

    for backend in &lab.backends {
        for server in &backend.servers {
            assert_eq!(
                server.handshakes_failed(),
                0,
                "{}: failed handshakes",
                backend.name
            );
        }
    }
    let counters = reconciler.snapshot().unwrap().counters;
    let count = |c: Counter| counters[c.index() as usize];
    assert!(count(Counter::TxLocal) > 0);
    assert!(count(Counter::ConnHit) > 0);
    for counter in Counter::ALL
        .iter()
        .filter(|c| c.kind() == CounterKind::Drop)
    {
        assert_eq!(count(*counter), 0, "{} moved", counter.label());
    }
}
