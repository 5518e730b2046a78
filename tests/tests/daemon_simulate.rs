//! `lb simulate` against reality: for hundreds of real TLS connections held open through the
//! daemon, the simulation of each connection's 5-tuple names the backend that actually served
//! it (the one whose certificate the client verified and whose server accepted the client's
//! address), from the connection table.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a test panics with a message; helpers here are part of the tests"
)]

use std::net::{IpAddr, SocketAddr};

use lb::{
    control::Body,
    lab::passthrough::{VIP_V4, lab_config},
};
use lb_tests::{
    clients::{Served, assert_consistent, count_per_backend, open_parallel},
    daemon_lab::{DaemonLab, TLS_PORT},
};

const CONNECTIONS: usize = 500;

#[test]
fn simulate_names_the_backend_that_served_each_established_connection() {
    let mut env = DaemonLab::start("lbtsim", 3, |paths| lab_config(paths, 3));
    let vip = SocketAddr::new(IpAddr::V4(VIP_V4), TLS_PORT);
    let held = open_parallel(&env.lab, vip, CONNECTIONS, 4);
    let served: Vec<Served> = held.iter().map(|h| h.served.clone()).collect();
    assert_consistent(&env.lab, &served);
    let counts = count_per_backend(&served);
    assert_eq!(counts.len(), 3, "every backend served some: {counts:?}");

    let vip_arg = vip.to_string();
    for s in &served {
        let address = env
            .lab
            .backends
            .iter()
            .find(|b| b.name == s.cert_backend)
            .map(|b| IpAddr::V4(b.v4))
            .unwrap_or_else(|| panic!("{}: served by an unknown backend", s.local));
        let client = s.local.to_string();
        let Body::Simulation(simulation) = env.cli_json(&["simulate", &client, &vip_arg]) else {
            panic!("lb simulate {client} {vip_arg} answered something else");
        };
        assert_eq!(simulation.listener, "tls4", "{client}");
        assert_eq!(
            simulation.backend, address,
            "{client} was served by {} ({address}); simulate says {simulation:?}",
            s.cert_backend
        );
        assert_eq!(
            simulation.reason, "connection table",
            "{client} is established: {simulation:?}"
        );
        // Nothing changed since the connection was placed: a SYN would go the same way.
        assert_eq!(simulation.new_connection_backend, address, "{client}");
    }
    drop(held);
    env.stop_cleanly();
}
