//! [`render`]: a [`MetricsInput`] snapshot as an OpenMetrics text exposition.
//!
//! Each scrape builds a fresh `prometheus_client` [`Registry`] from the snapshot: every family
//! is a `SortedFamily` of constant counters or gauges set to the snapshot's values, so the
//! output is deterministic (sorted by labels) and a label set given twice is one sample
//! (counters summed, gauges last-wins), as the exposition format requires.
//!
//! The families, all prefixed `lb_`:
//!
//! | family | labels | from |
//! | --- | --- | --- |
//! | `lb_datapath_packets_total` | `reason`, `kind` | verdict counters |
//! | `lb_conn_table_events_total` | `event` | `event` counters |
//! | `lb_listener_{packets,bytes,new_flows}_total` | `listener` | listener totals |
//! | `lb_backend_{packets,bytes,new_flows}_total` | `listener`, `backend` | backend traffic |
//! | `lb_backend_health` | `pool`, `backend`, `state` | 1 for the current state, 0 for the others |
//! | `lb_backend_health_transitions_total` | `pool`, `backend`, `to` | health transitions |
//! | `lb_control_operations_total` | `operation`, `result` | control operations |
//! | `lb_l7_open_connections` | `listener` | an L7 listener's client connections |
//! | `lb_l7_events_total` | `listener`, `event` | an L7 listener's events (requests, retries, ...) |
//! | `lb_l7_responses_total` | `listener`, `class` | an L7 listener's responses by status class |
//! | `lb_xdp_attached` | `interface`, `mode` | 1 for each interface the balancer runs on, and how |
//! | `lb_possible_cpus` | | CPUs the kernel may run |
//! | `lb_conn_table_capacity` | | flows each connection table holds, as allocated |
//! | `lb_table_info` | `listener`, `digest` | 1 per passthrough listener: its live table's digest |
//! | `lb_announced` | `address` | 1 while the node announces a listener address, 0 while not |
//! | `lb_node_drained` | | 1 while `lb node drain` holds |
//! | `lb_announce_errors_total` | | failed writes of the announcement table |
//! | `lb_routing_daemon_up` | | 1 if BIRD answered when last asked (every 2 s) |
//! | `lb_bgp_session_up` | `protocol` | 1 for each established BGP session of BIRD |
//! | `lb_uptime_seconds` | | uptime |

use std::collections::BTreeMap;

use prometheus_client::encoding::{EncodeLabelSet, text};
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::{Metric, Registry, Unit};

use super::family::SortedFamily;
use super::input::{HealthState, ListenerTraffic, MetricsInput, Traffic};

/// The content type of [`render`]'s output.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// The `kind` of the counters reported as connection-table events rather than verdicts.
const EVENT_KIND: &str = "event";

/// Why the exposition could not be rendered.
#[derive(Debug, thiserror::Error)]
pub enum RenderError {
    #[error("encoding the metrics failed (a bug in lb's metrics module; please report it): {0}")]
    Encode(#[from] std::fmt::Error),
}

/// The OpenMetrics text exposition of a snapshot, ending with `# EOF`.
pub fn render(input: &MetricsInput) -> Result<String, RenderError> {
    let registry = build_registry(input);
    let mut text = String::new();
    text::encode(&mut text, &registry)?;
    Ok(text)
}

/// A registry holding every family of the snapshot.
fn build_registry(input: &MetricsInput) -> Registry {
    let mut registry = Registry::with_prefix("lb");
    register_counters(&mut registry, input);
    register_traffic(&mut registry, &input.listeners);
    register_health(&mut registry, input);
    register_operations(&mut registry, input);
    register_l7(&mut registry, input);
    if let Some(datapath) = &input.datapath {
        register_datapath(&mut registry, datapath);
    }
    if let Some(announce) = &input.announce {
        register_announce(&mut registry, announce);
    }
    register_digests(&mut registry, &input.table_digests);
    registry.register_with_unit(
        "uptime",
        "Seconds since the daemon started",
        Unit::Seconds,
        ConstGauge::new(input.uptime_seconds),
    );
    registry
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, EncodeLabelSet)]
struct AttachLabels {
    interface: String,
    mode: String,
}

/// How the balancer runs on each interface, and the connection table's real capacity.
fn register_datapath(registry: &mut Registry, datapath: &super::input::DatapathSample) {
    let attached = datapath
        .interfaces
        .iter()
        .map(|(interface, mode)| {
            let labels = AttachLabels {
                interface: interface.clone(),
                mode: mode.clone(),
            };
            (labels, 1)
        })
        .collect();
    registry.register(
        "xdp_attached",
        "The interfaces the XDP balancer runs on, by attach mode (driver: native, generic: \
         after the kernel built a socket buffer, slower)",
        SortedFamily::gauges(attached),
    );
    registry.register(
        "possible_cpus",
        "CPUs the kernel may run: each has its own copy of the per-CPU maps and counters",
        ConstGauge::new(i64::from(datapath.possible_cpus)),
    );
    registry.register(
        "conn_table_capacity",
        "Flows each connection table (IPv4, IPv6) holds, as allocated: the configured size \
         rounded up to a power of two",
        ConstGauge::new(i64::from(datapath.conn_table_entries)),
    );
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, EncodeLabelSet)]
struct DigestLabels {
    listener: String,
    digest: String,
}

/// The live tables' digests, as an info family: nodes of one deployment should show one digest
/// per listener (`count by (listener) (count by (listener, digest) (lb_table_info)) > 1` finds
/// those that do not).
fn register_digests(registry: &mut Registry, digests: &[(String, String)]) {
    let samples = digests
        .iter()
        .map(|(listener, digest)| {
            let labels = DigestLabels {
                listener: listener.clone(),
                digest: digest.clone(),
            };
            (labels, 1)
        })
        .collect();
    registry.register(
        "table_info",
        "The digest of each passthrough listener's live Maglev table (as lb listener list's \
         TABLE): nodes with the same configuration and backend states show the same",
        SortedFamily::gauges(samples),
    );
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, EncodeLabelSet)]
struct AddressLabels {
    address: String,
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, EncodeLabelSet)]
struct ProtocolLabels {
    protocol: String,
}

/// The node's announcements and its routing daemon's sessions.
fn register_announce(registry: &mut Registry, announce: &super::input::AnnounceSample) {
    let addresses = announce
        .addresses
        .iter()
        .map(|(address, on)| {
            let labels = AddressLabels {
                address: address.clone(),
            };
            (labels, i64::from(*on))
        })
        .collect();
    registry.register(
        "announced",
        "1 while this node announces a listener address to its routers (a route in the \
         announcement table), 0 while it does not (drained, no healthy backend, no interface)",
        SortedFamily::gauges(addresses),
    );
    registry.register(
        "node_drained",
        "1 while the node is drained (lb node drain) and announces nothing",
        ConstGauge::new(i64::from(announce.drained)),
    );
    registry.register(
        "announce_errors",
        "Failed writes of the announcement table (each retried every second and logged)",
        prometheus_client::metrics::counter::ConstCounter::new(announce.errors),
    );
    if let Some(up) = announce.routing_daemon_up {
        registry.register(
            "routing_daemon_up",
            "1 if the routing daemon (BIRD) answered on its control socket when last asked",
            ConstGauge::new(i64::from(up)),
        );
        let sessions = announce
            .sessions
            .iter()
            .map(|(protocol, up)| {
                let labels = ProtocolLabels {
                    protocol: protocol.clone(),
                };
                (labels, i64::from(*up))
            })
            .collect();
        registry.register(
            "bgp_session_up",
            "1 for each of the routing daemon's BGP sessions that is established, 0 for the \
             others",
            SortedFamily::gauges(sessions),
        );
    }
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, EncodeLabelSet)]
struct VerdictLabels {
    reason: String,
    kind: String,
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, EncodeLabelSet)]
struct EventLabels {
    event: String,
}

/// The datapath counters: verdicts in one family, connection-table events in another.
fn register_counters(registry: &mut Registry, input: &MetricsInput) {
    let (events, verdicts): (Vec<_>, Vec<_>) = input
        .counters
        .iter()
        .partition(|counter| counter.kind == EVENT_KIND);
    let verdicts = verdicts.into_iter().map(|counter| {
        let labels = VerdictLabels {
            reason: counter.name.clone(),
            kind: counter.kind.clone(),
        };
        (labels, counter.value)
    });
    let events = events.into_iter().map(|counter| {
        let labels = EventLabels {
            event: counter.name.clone(),
        };
        (labels, counter.value)
    });
    registry.register(
        "datapath_packets",
        "Packets the XDP balancer handled, by verdict: forwarded to a backend, passed to the \
         kernel or dropped, and why",
        SortedFamily::counters(verdicts),
    );
    registry.register(
        "conn_table_events",
        "Connection-table lookups and updates of the XDP balancer, by event (counts lookups, \
         not packets)",
        SortedFamily::counters(events),
    );
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, EncodeLabelSet)]
struct ListenerLabels {
    listener: String,
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, EncodeLabelSet)]
struct BackendLabels {
    listener: String,
    backend: String,
}

/// One of the three traffic counters, to register the same families for listeners and
/// backends.
#[derive(Debug)]
struct TrafficField {
    name: FieldName,
    get: fn(&Traffic) -> u64,
    listener_help: &'static str,
    backend_help: &'static str,
}

/// How a traffic family is named after its subject (`listener` or `backend`).
#[derive(Debug)]
enum FieldName {
    /// `lb_{subject}_{suffix}_total`.
    Suffix(&'static str),
    /// `lb_{subject}_{unit}_total`, with the OpenMetrics `# UNIT` line.
    Unit(Unit),
}

const TRAFFIC_FIELDS: [TrafficField; 3] = [
    TrafficField {
        name: FieldName::Suffix("packets"),
        get: |traffic| traffic.packets,
        listener_help: "Packets the XDP balancer forwarded for the listener, to all its backends",
        backend_help: "Packets the XDP balancer forwarded to the backend, per listener",
    },
    TrafficField {
        name: FieldName::Unit(Unit::Bytes),
        get: |traffic| traffic.bytes,
        listener_help: "Bytes of the packets forwarded for the listener (before encapsulation)",
        backend_help: "Bytes of the packets forwarded to the backend, per listener (before \
                       encapsulation)",
    },
    TrafficField {
        name: FieldName::Suffix("new_flows"),
        get: |traffic| traffic.new_flows,
        listener_help: "New flows of the listener, placed by its Maglev table and forwarded by \
                        the XDP balancer",
        backend_help: "New flows placed on the backend by the Maglev table and forwarded by the \
                       XDP balancer, per listener",
    },
];

/// Per-listener totals, then per-backend traffic: three counters each.
fn register_traffic(registry: &mut Registry, listeners: &[ListenerTraffic]) {
    for field in &TRAFFIC_FIELDS {
        let totals = listeners.iter().map(|listener| {
            let labels = ListenerLabels {
                listener: listener.listener.clone(),
            };
            (labels, (field.get)(&listener.total))
        });
        let family = SortedFamily::counters(totals);
        register_named(
            registry,
            "listener",
            &field.name,
            field.listener_help,
            family,
        );
    }
    for field in &TRAFFIC_FIELDS {
        let per_backend = listeners.iter().flat_map(|listener| {
            listener.backends.iter().map(move |backend| {
                let labels = BackendLabels {
                    listener: listener.listener.clone(),
                    backend: backend.backend.clone(),
                };
                (labels, (field.get)(&backend.traffic))
            })
        });
        let family = SortedFamily::counters(per_backend);
        register_named(registry, "backend", &field.name, field.backend_help, family);
    }
}

/// Registers `lb_{subject}_{name}`, with its unit if it has one.
fn register_named(
    registry: &mut Registry,
    subject: &str,
    name: &FieldName,
    help: &str,
    family: impl Metric,
) {
    match name {
        FieldName::Suffix(suffix) => registry.register(format!("{subject}_{suffix}"), help, family),
        FieldName::Unit(unit) => registry.register_with_unit(subject, help, unit.clone(), family),
    }
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, EncodeLabelSet)]
struct HealthLabels {
    pool: String,
    backend: String,
    state: String,
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, EncodeLabelSet)]
struct TransitionLabels {
    pool: String,
    backend: String,
    to: String,
}

/// The current health of each backend (one gauge per state), and its transitions.
fn register_health(registry: &mut Registry, input: &MetricsInput) {
    let mut current = BTreeMap::new();
    let mut transitions = Vec::new();
    for sample in &input.backends {
        for state in HealthState::ALL {
            let labels = HealthLabels {
                pool: sample.pool.clone(),
                backend: sample.backend.clone(),
                state: state.label().to_owned(),
            };
            current.insert(labels, i64::from(sample.state == state));
            let count = sample
                .transitions
                .iter()
                .filter(|(to, _)| *to == state)
                .fold(0u64, |sum, (_, count)| sum.saturating_add(*count));
            let labels = TransitionLabels {
                pool: sample.pool.clone(),
                backend: sample.backend.clone(),
                to: state.label().to_owned(),
            };
            transitions.push((labels, count));
        }
    }
    registry.register(
        "backend_health",
        "Health of the backend: 1 for its current state, 0 for the others",
        SortedFamily::gauges(current),
    );
    registry.register(
        "backend_health_transitions",
        "Changes of the backend's health, by the state it changed to",
        SortedFamily::counters(transitions),
    );
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, EncodeLabelSet)]
struct OperationLabels {
    operation: String,
    result: String,
}

/// Control-plane operations by result.
fn register_operations(registry: &mut Registry, input: &MetricsInput) {
    let operations = input.operations.iter().map(|sample| {
        let labels = OperationLabels {
            operation: sample.operation.clone(),
            result: sample.result.clone(),
        };
        (labels, sample.count)
    });
    registry.register(
        "control_operations",
        "Control-plane operations the daemon answered, by operation and result (ok; refused: \
         the change broke a rule, nothing was written; failed: writing it failed)",
        SortedFamily::counters(operations),
    );
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, EncodeLabelSet)]
struct L7EventLabels {
    listener: String,
    event: String,
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, EncodeLabelSet)]
struct L7ResponseLabels {
    listener: String,
    class: String,
}

/// The L7 listeners: open connections, events, responses by class.
fn register_l7(registry: &mut Registry, input: &MetricsInput) {
    let open = input
        .l7
        .iter()
        .map(|sample| {
            let labels = ListenerLabels {
                listener: sample.listener.clone(),
            };
            (
                labels,
                i64::try_from(sample.open_connections).unwrap_or(i64::MAX),
            )
        })
        .collect();
    registry.register(
        "l7_open_connections",
        "Client connections an L7 listener has open",
        SortedFamily::gauges(open),
    );
    let events = input.l7.iter().flat_map(|sample| {
        sample.events.iter().map(|(event, value)| {
            let labels = L7EventLabels {
                listener: sample.listener.clone(),
                event: event.clone(),
            };
            (labels, *value)
        })
    });
    registry.register(
        "l7_events",
        "What an L7 listener did: connections, failed handshakes, requests, backend errors \
         and timeouts, retries, sticky hits, new and re-pinned sessions, closed connections",
        SortedFamily::counters(events),
    );
    let responses = input.l7.iter().flat_map(|sample| {
        sample.responses.iter().map(|(class, value)| {
            let labels = L7ResponseLabels {
                listener: sample.listener.clone(),
                class: class.clone(),
            };
            (labels, *value)
        })
    });
    registry.register(
        "l7_responses",
        "Responses an L7 listener sent, by status class (the balancer's own 502, 503 and 504 \
         included)",
        SortedFamily::counters(responses),
    );
}

#[cfg(test)]
mod tests;
