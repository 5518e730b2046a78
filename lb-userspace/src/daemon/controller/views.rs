//! What the controller shows: listeners, backends (with their state), counters, the status
//! summary, simulations, and the metrics snapshot.

use std::{
    net::{IpAddr, SocketAddr},
    time::{Instant, UNIX_EPOCH},
};

use lb_common::{
    abi::MAX_GENERATION,
    counters::{Counter, CounterKind},
};

use super::Controller;
use crate::{
    config::l7::Balance,
    control::{
        BackendView, CounterView, DatapathView, InterfaceView, L7StatsView, ListenerStatsView,
        ListenerView, SimulationView, StatsView, StatusView,
    },
    daemon::runtime::{BackendKey, STATES},
    datapath::Datapath,
    metrics::{self, MetricsInput},
    model,
    state::Protocol,
};

impl<D: Datapath> Controller<D> {
    pub(super) fn listener_views(&self) -> Vec<ListenerView> {
        self.config
            .listeners
            .iter()
            .map(|(name, l)| ListenerView {
                name: name.clone(),
                address: l.address,
                port: l.port,
                protocol: l.protocol,
                mode: l.mode.as_str().to_owned(),
                pool: l.pool.clone(),
                active_backends: self.active_backends(name, l),
                ring_size: if l.l7.is_none() {
                    self.config.datapath.ring_size
                } else {
                    0
                },
                balancing: match &l.l7 {
                    None => format!("Maglev, {} slots", self.config.datapath.ring_size),
                    Some(l7) => format!(
                        "{}{}",
                        match l7.balance {
                            Balance::LeastOutstanding => "least outstanding requests",
                            Balance::RoundRobin => "round robin",
                        },
                        if l7.sticky.is_some() { ", sticky" } else { "" }
                    ),
                },
                attach_modes: if l.l7.is_none() {
                    self.attach_modes()
                } else {
                    Vec::new()
                },
                table_digest: self
                    .reconciler
                    .listeners()
                    .get(name)
                    .map(|applied| applied.digest.clone())
                    .unwrap_or_default(),
            })
            .collect()
    }

    /// The interfaces the XDP program runs on, and how.
    fn attach_modes(&self) -> Vec<(String, String)> {
        self.host.as_ref().map_or_else(Vec::new, |host| {
            host.facts()
                .interfaces
                .iter()
                .map(|i| (i.name.clone(), i.mode.as_str().to_owned()))
                .collect()
        })
    }

    /// The datapath's set-up, for `lb status`.
    fn datapath_view(&self) -> Option<DatapathView> {
        let host = self.host.as_ref()?;
        let facts = host.facts();
        let d = &self.config.datapath;
        let multipath_backends = self
            .reconciler
            .listeners()
            .values()
            .flat_map(|l| l.backends.keys().copied())
            .filter(|&address| self.reconciler.is_multipath(address))
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect();
        Some(DatapathView {
            interfaces: facts
                .interfaces
                .iter()
                .map(|i| InterfaceView {
                    name: i.name.clone(),
                    attach_mode: i.mode.as_str().to_owned(),
                })
                .collect(),
            redirect_interfaces: host.redirect_interfaces(),
            possible_cpus: facts.possible_cpus,
            conn_table_entries: facts.conn_table_entries,
            conn_inserts_per_sec: d.conn_inserts_per_sec,
            udp_idle_timeout_secs: d.udp_idle_timeout.as_secs(),
            icmp_to_backends: d.icmp_to_backends,
            icmp_too_big_per_sec: d.icmp_too_big_per_sec,
            encap_sources: facts.encap_sources.clone(),
            multipath_backends,
        })
    }

    /// Backends of a listener that take new flows or requests now: in the live Maglev table
    /// (passthrough), or with a weight in the published pool (L7).
    fn active_backends(&self, name: &str, listener: &crate::config::ListenerConfig) -> usize {
        if listener.l7.is_some() {
            return listener
                .pools()
                .into_iter()
                .filter_map(|pool| self.published.get(pool))
                .map(|members| members.iter().filter(|m| m.weight > 0).count())
                .sum();
        }
        self.reconciler.listeners().get(name).map_or(0, |applied| {
            applied.backends.values().filter(|b| b.weight > 0).count()
        })
    }

    pub(super) fn backend_views(&self, pool: Option<&str>) -> Result<Vec<BackendView>, String> {
        if let Some(pool) = pool
            && !self.config.pools.contains_key(pool)
        {
            return Err(format!(
                "no pool is named {pool:?}; `lb listener list` shows the pools"
            ));
        }
        let ejected = self.ejected_backends();
        let mut views = Vec::new();
        for (name, p) in &self.config.pools {
            if pool.is_some_and(|wanted| wanted != name) {
                continue;
            }
            let listeners = self.listeners_of(name);
            // Only passthrough listeners have a Maglev table.
            let tabled = listeners
                .iter()
                .find(|l| self.reconciler.listeners().contains_key(l.as_str()));
            for backend in &p.backends {
                let key = BackendKey::of(name, backend);
                let (state, change) = self.runtime.state_of(&key, backend.weight);
                // Passive health, on the L7 listeners: shown over "healthy" while it lasts.
                let ejection = (state == "healthy")
                    .then(|| {
                        listeners.iter().find_map(|l| {
                            let port = self.config.listeners.get(l)?.backend_port(backend);
                            ejected.get(&(l.clone(), SocketAddr::new(backend.address, port)))
                        })
                    })
                    .flatten();
                let ejected_for_s = ejection.map(|left| left.as_secs() + 1);
                let (state, reason) = match ejected_for_s {
                    Some(left) => (
                        "ejected".to_owned(),
                        Some(format!(
                            "passive health: its requests failed in a row; back in {left} s"
                        )),
                    ),
                    None => (state.to_owned(), change.map(|c| c.reason.clone())),
                };
                views.push(BackendView {
                    pool: name.clone(),
                    address: backend.address,
                    port: backend.port,
                    weight: backend.weight,
                    state,
                    reason,
                    since: change
                        .and_then(|c| c.at.duration_since(UNIX_EPOCH).ok())
                        .map(|d| d.as_secs()),
                    table_slots: tabled.map_or(0, |l| self.table_slots(l, backend.address)),
                    ring_size: if tabled.is_some() {
                        self.config.datapath.ring_size
                    } else {
                        0
                    },
                    listeners: listeners.clone(),
                    ejected_for_s,
                });
            }
        }
        Ok(views)
    }

    /// The L7 listeners' backends that passive health has ejected, by (listener, address),
    /// with how long they stay out.
    fn ejected_backends(
        &self,
    ) -> std::collections::BTreeMap<(String, SocketAddr), std::time::Duration> {
        let Some(l7) = &self.l7 else {
            return std::collections::BTreeMap::new();
        };
        l7.proxies()
            .iter()
            .flat_map(|proxy| {
                proxy
                    .backends()
                    .members()
                    .filter_map(|u| Some(((proxy.name.clone(), u.address), u.ejected_for()?)))
                    .collect::<Vec<_>>()
            })
            .collect()
    }

    fn table_slots(&self, listener: &str, address: IpAddr) -> u32 {
        let Some(applied) = self.reconciler.listeners().get(listener) else {
            return 0;
        };
        let Some(id) = applied.backends.get(&address).map(|b| b.id) else {
            return 0;
        };
        let slots = self
            .reconciler
            .live_table(listener)
            .map_or(0, |table| table.iter().filter(|&&slot| slot == id).count());
        u32::try_from(slots).unwrap_or(u32::MAX)
    }

    pub(super) fn stats_view(&self) -> Result<StatsView, String> {
        let snapshot = self.reconciler.snapshot().map_err(|e| e.to_string())?;
        let counters = Counter::ALL
            .iter()
            .map(|&c| CounterView {
                name: c.label().to_owned(),
                kind: match c.kind() {
                    CounterKind::Forward => "forward",
                    CounterKind::Pass => "pass",
                    CounterKind::Drop => "drop",
                    CounterKind::Event => "event",
                }
                .to_owned(),
                value: snapshot.counter(c),
            })
            .collect();
        let listeners = snapshot
            .listeners
            .iter()
            .map(|(name, t)| ListenerStatsView {
                name: name.clone(),
                traffic: t.total.into(),
                backends: t.backends.iter().map(|(a, b)| (*a, (*b).into())).collect(),
            })
            .collect();
        Ok(StatsView {
            counters,
            listeners,
            removed_listeners: snapshot.removed.into(),
            l7: self.l7_stats(),
        })
    }

    /// Each L7 listener's counters.
    pub(super) fn l7_stats(&self) -> Vec<L7StatsView> {
        let Some(l7) = &self.l7 else {
            return Vec::new();
        };
        let owned = |pairs: Vec<(&str, u64)>| {
            pairs
                .into_iter()
                .map(|(k, v)| (k.to_owned(), v))
                .collect::<Vec<_>>()
        };
        l7.proxies()
            .iter()
            .map(|proxy| L7StatsView {
                name: proxy.name.clone(),
                mode: self
                    .config
                    .listeners
                    .get(&proxy.name)
                    .map_or("", |l| l.mode.as_str())
                    .to_owned(),
                open_connections: proxy.open_connections(),
                events: owned(proxy.events()),
                responses: owned(proxy.counters.responses_by_class()),
            })
            .collect()
    }

    pub(super) fn status_view(&self, now: Instant) -> StatusView {
        let mut backends: Vec<(String, usize)> = STATES
            .iter()
            .chain(&["ejected"])
            .map(|s| ((*s).to_owned(), 0))
            .collect();
        for view in self.backend_views(None).unwrap_or_default() {
            if let Some(slot) = backends.iter_mut().find(|(s, _)| *s == view.state) {
                slot.1 += 1;
            }
        }
        let snapshot = self.reconciler.snapshot().ok();
        let sum = |kind: CounterKind| {
            Counter::ALL
                .iter()
                .filter(|c| c.kind() == kind)
                .map(|&c| snapshot.as_ref().map_or(0, |s| s.counter(c)))
                .sum::<u64>()
        };
        let one = |c: Counter| snapshot.as_ref().map_or(0, |s| s.counter(c));
        let packets = vec![
            ("forwarded".to_owned(), sum(CounterKind::Forward)),
            ("passed to the kernel".to_owned(), sum(CounterKind::Pass)),
            ("dropped".to_owned(), sum(CounterKind::Drop)),
            ("connection-table hits".to_owned(), one(Counter::ConnHit)),
            ("connection-table misses".to_owned(), one(Counter::ConnMiss)),
            (
                "inserts skipped (flood)".to_owned(),
                one(Counter::ConnInsertSkipped),
            ),
            ("ICMP answers".to_owned(), one(Counter::TxIcmpTooBig)),
            ("ICMP to backends".to_owned(), one(Counter::IcmpToBackend)),
        ];
        let mut operations: Vec<(String, u64)> = ["ok", "refused", "failed"]
            .iter()
            .map(|r| ((*r).to_owned(), 0))
            .collect();
        for ((_, result), count) in &self.operations {
            if let Some(slot) = operations.iter_mut().find(|(r, _)| r == result) {
                slot.1 += count;
            }
        }
        StatusView {
            version: format!(
                "{} (commit {})",
                crate::version::VERSION,
                crate::version::COMMIT
            ),
            uptime_secs: now.saturating_duration_since(self.started).as_secs(),
            config: self.path.as_ref().map(|p| p.display().to_string()),
            interfaces: self.config.datapath.interfaces.clone(),
            listeners: self.config.listeners.len(),
            backends,
            packets,
            operations,
            l7: self.l7_summary(),
            metrics: self.config.metrics.map(|a| format!("http://{a}/metrics")),
            datapath: self.datapath_view(),
            announce: self.announce_view(),
        }
    }

    /// The L7 listeners together, for `lb status`.
    fn l7_summary(&self) -> Vec<(String, u64)> {
        let stats = self.l7_stats();
        if stats.is_empty() {
            return Vec::new();
        }
        let total = |pick: &dyn Fn(&L7StatsView) -> u64| stats.iter().map(pick).sum::<u64>();
        let event = |name: &'static str| {
            move |l: &L7StatsView| {
                l.events
                    .iter()
                    .find(|(k, _)| k == name)
                    .map_or(0, |(_, v)| *v)
            }
        };
        let errors = |l: &L7StatsView| {
            l.responses
                .iter()
                .find(|(k, _)| k == "5xx")
                .map_or(0, |(_, v)| *v)
        };
        vec![
            (
                "open connections".to_owned(),
                total(&|l| l.open_connections),
            ),
            ("requests".to_owned(), total(&event("requests"))),
            ("5xx".to_owned(), total(&errors)),
            (
                "failed handshakes".to_owned(),
                total(&event("handshake_failures")),
            ),
        ]
    }

    /// Everything the metrics endpoint reports, as of `now`.
    pub fn metrics_input(&self, now: Instant) -> Option<MetricsInput> {
        let stats = self.stats_view().ok()?;
        let counters = stats
            .counters
            .iter()
            .map(|c| metrics::CounterSample {
                name: c.name.clone(),
                kind: c.kind.clone(),
                value: c.value,
            })
            .collect();
        let to_traffic = |t: &crate::control::Traffic| metrics::Traffic {
            packets: t.packets,
            bytes: t.bytes,
            new_flows: t.new_flows,
        };
        let removed = (stats.removed_listeners != crate::control::Traffic::default()).then(|| {
            metrics::ListenerTraffic {
                listener: "(removed)".to_owned(),
                total: to_traffic(&stats.removed_listeners),
                backends: Vec::new(),
            }
        });
        let listeners = stats
            .listeners
            .iter()
            .map(|l| metrics::ListenerTraffic {
                listener: l.name.clone(),
                total: to_traffic(&l.traffic),
                backends: l
                    .backends
                    .iter()
                    .map(|(address, t)| metrics::BackendTraffic {
                        backend: address.to_string(),
                        traffic: to_traffic(t),
                    })
                    .collect(),
            })
            .chain(removed)
            .collect();
        let mut backends = Vec::new();
        // The states as `lb backend list` shows them (with passive health's `ejected`).
        let states: std::collections::BTreeMap<(String, IpAddr, Option<u16>), String> = self
            .backend_views(None)
            .unwrap_or_default()
            .into_iter()
            .map(|v| ((v.pool, v.address, v.port), v.state))
            .collect();
        for (name, pool) in &self.config.pools {
            for backend in &pool.backends {
                let key = BackendKey::of(name, backend);
                let state = states
                    .get(&(name.clone(), backend.address, backend.port))
                    .map_or_else(
                        || health_state(self.runtime.state_of(&key, backend.weight).0),
                        |state| health_state(state),
                    );
                backends.push(metrics::BackendHealthSample {
                    pool: name.clone(),
                    backend: crate::config::describe(backend.address, backend.port),
                    state,
                    transitions: self
                        .runtime
                        .transitions(&key)
                        .into_iter()
                        .map(|(s, n)| (health_state(s), n))
                        .collect(),
                });
            }
        }
        let operations = self
            .operations
            .iter()
            .map(|((operation, result), count)| metrics::OperationSample {
                operation: operation.clone(),
                result: (*result).to_owned(),
                count: *count,
            })
            .collect();
        let l7 = stats
            .l7
            .iter()
            .map(|l| metrics::L7Sample {
                listener: l.name.clone(),
                open_connections: l.open_connections,
                events: l.events.clone(),
                responses: l.responses.clone(),
            })
            .collect();
        let datapath = self.datapath_view().map(|d| metrics::DatapathSample {
            interfaces: d
                .interfaces
                .iter()
                .map(|i| (i.name.clone(), i.attach_mode.clone()))
                .collect(),
            possible_cpus: d.possible_cpus,
            conn_table_entries: d.conn_table_entries,
        });
        let announce = self.announce_view().map(|a| metrics::AnnounceSample {
            addresses: a
                .addresses
                .iter()
                .map(|v| (v.address.to_string(), v.announced))
                .collect(),
            drained: a.drained,
            errors: a.errors,
            routing_daemon_up: a.bird.as_ref().map(|b| b.error.is_none()),
            sessions: a
                .bird
                .iter()
                .flat_map(|b| b.sessions())
                .map(|s| (s.name.clone(), s.is_up()))
                .collect(),
        });
        let table_digests = self
            .listener_views()
            .into_iter()
            .filter(|l| !l.table_digest.is_empty())
            .map(|l| (l.name, l.table_digest))
            .collect();
        Some(MetricsInput {
            datapath,
            announce,
            table_digests,
            counters,
            listeners,
            backends,
            operations,
            l7,
            uptime_seconds: now.saturating_duration_since(self.started).as_secs_f64(),
        })
    }

    pub(super) fn simulate(
        &self,
        protocol: Protocol,
        client: SocketAddr,
        vip: SocketAddr,
    ) -> Result<SimulationView, String> {
        let (name, _) = self
            .config
            .listeners
            .iter()
            .find(|(_, l)| l.address == vip.ip() && l.port == vip.port() && l.protocol == protocol)
            .ok_or_else(|| {
                format!(
                    "no listener serves {vip}/{}; `lb listener list` shows them",
                    protocol.name()
                )
            })?;
        if client.is_ipv4() != vip.is_ipv4() {
            return Err(format!(
                "{client} and {vip} are of different address families"
            ));
        }
        let applied = self
            .reconciler
            .listeners()
            .get(name)
            .ok_or_else(|| {
                format!(
                    "listener {name:?} is an L7 listener: it balances each request (least outstanding requests or round \
                     robin, and sticky cookies), not packets by a table, so there is \
                     no placement to simulate"
                )
            })?;
        let address_of = |id: u32| {
            applied
                .backends
                .iter()
                .find(|(_, b)| b.id == id)
                .map(|(address, b)| (*address, b.generation))
        };
        let flow = model::flow_key(client, vip, protocol);
        let config = self.reconciler.config();
        let slot = model::maglev_slot(&flow, config);
        let table = self.reconciler.live_table(name).unwrap_or_default();
        let picked = table
            .get(slot as usize)
            .and_then(|&id| address_of(id))
            .map(|(address, _)| address)
            .ok_or_else(|| format!("listener {name:?} has no backend"))?;
        let conn = self
            .reconciler
            .datapath()
            .lookup_conn(&flow, u16::try_from(applied.vip_id).unwrap_or(u16::MAX))
            .map_err(|e| e.to_string())?;
        let established = conn.and_then(|c| {
            address_of(u32::from(c.backend_id))
                .filter(|(_, generation)| generation & MAX_GENERATION == u32::from(c.generation))
                .map(|(address, _)| address)
        });
        Ok(SimulationView {
            listener: name.clone(),
            backend: established.unwrap_or(picked),
            reason: if established.is_some() {
                "connection table".to_owned()
            } else {
                format!("Maglev slot {slot}")
            },
            new_connection_backend: picked,
            maglev_slot: slot,
        })
    }
}

fn health_state(state: &str) -> metrics::HealthState {
    match state {
        "unhealthy" => metrics::HealthState::Unhealthy,
        "draining" => metrics::HealthState::Draining,
        "disabled" => metrics::HealthState::Disabled,
        "ejected" => metrics::HealthState::Ejected,
        _ => metrics::HealthState::Healthy,
    }
}
