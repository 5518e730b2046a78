//! A sample [`MetricsInput`] for the tests of [`render`](super::render) and
//! [`serve`](super::serve): two listeners, counters of every kind, a backend in each health
//! state, and label values that need escaping.

use super::input::{
    BackendHealthSample, BackendTraffic, CounterSample, HealthState, ListenerTraffic, MetricsInput,
    OperationSample, Traffic,
};

fn counter(name: &str, kind: &str, value: u64) -> CounterSample {
    CounterSample {
        name: name.to_owned(),
        kind: kind.to_owned(),
        value,
    }
}

fn traffic(packets: u64, bytes: u64, new_flows: u64) -> Traffic {
    Traffic {
        packets,
        bytes,
        new_flows,
    }
}

fn backend(address: &str, traffic: Traffic) -> BackendTraffic {
    BackendTraffic {
        backend: address.to_owned(),
        traffic,
    }
}

fn health(
    backend: &str,
    state: HealthState,
    transitions: &[(HealthState, u64)],
) -> BackendHealthSample {
    BackendHealthSample {
        pool: "web".to_owned(),
        backend: backend.to_owned(),
        state,
        transitions: transitions.to_vec(),
    }
}

fn operation(operation: &str, result: &str, count: u64) -> OperationSample {
    OperationSample {
        operation: operation.to_owned(),
        result: result.to_owned(),
        count,
    }
}

/// The sample snapshot.
pub(super) fn sample_input() -> MetricsInput {
    MetricsInput {
        datapath: Some(super::DatapathSample {
            interfaces: vec![
                ("eth0".to_owned(), "driver".to_owned()),
                ("eth1".to_owned(), "generic".to_owned()),
            ],
            possible_cpus: 6,
            conn_table_entries: 1_048_576,
        }),
        counters: vec![
            counter("tx_local", "forward", 1000),
            counter("pass_not_vip", "pass", 42),
            counter("drop_too_big", "drop", 3),
            counter("conn_miss", "event", 17),
            counter("conn_hit", "event", 983),
        ],
        listeners: vec![
            ListenerTraffic {
                listener: "https".to_owned(),
                total: traffic(1000, 64_000, 17),
                backends: vec![
                    backend("198.18.1.10", traffic(600, 38_400, 10)),
                    backend("198.18.1.11:8443", traffic(400, 25_600, 7)),
                ],
            },
            ListenerTraffic {
                listener: "dns".to_owned(),
                total: Traffic::default(),
                backends: vec![backend("2001:db8::10", Traffic::default())],
            },
        ],
        backends: vec![
            health("198.18.1.10", HealthState::Healthy, &[]),
            health(
                "198.18.1.11:8443",
                HealthState::Unhealthy,
                &[(HealthState::Unhealthy, 2), (HealthState::Healthy, 1)],
            ),
            health(
                "198.18.1.12",
                HealthState::Draining,
                &[(HealthState::Draining, 1)],
            ),
        ],
        operations: vec![
            operation("backend-add", "ok", 2),
            operation("backend-add", "refused", 1),
            operation("backend-set-weight", "failed", 1),
        ],
        l7: vec![super::input::L7Sample {
            listener: "web".to_owned(),
            open_connections: 7,
            events: vec![("requests".to_owned(), 120), ("retries".to_owned(), 2)],
            responses: vec![("2xx".to_owned(), 118), ("5xx".to_owned(), 2)],
        }],
        announce: Some(super::input::AnnounceSample {
            addresses: vec![
                ("198.18.100.1".to_owned(), true),
                ("2001:db8:100::1".to_owned(), false),
            ],
            drained: false,
            errors: 1,
            routing_daemon_up: Some(true),
            sessions: vec![("tor1".to_owned(), true), ("tor2".to_owned(), false)],
        }),
        table_digests: vec![("https".to_owned(), "0123456789abcdef".to_owned())],
        uptime_seconds: 12.5,
    }
}
