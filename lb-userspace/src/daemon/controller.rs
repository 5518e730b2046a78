//! The daemon's controller: the one owner of the configuration and of the reconciler. It
//! answers the control API's requests one at a time: views of the listeners, backends and
//! counters, simulations, and changes (validated as a new configuration, then reconciled; a
//! refused change writes nothing, a failed one is rolled back).

use std::{
    net::{IpAddr, SocketAddr},
    path::PathBuf,
    time::Instant,
};

use lb_common::{
    abi::DatapathConfig,
    counters::{Counter, CounterKind},
};
use tracing::{error, info};

use crate::{
    config::{BackendConfig, Config, PoolEdit, describe},
    control::{
        BackendView, Body, ChangeView, CounterView, ListenerStatsView, ListenerView, Request,
        Response, SimulationView, StatsView,
    },
    datapath::Datapath,
    model,
    reconcile::Reconciler,
    state::Protocol,
};

/// The configuration in force and the maps that implement it.
#[derive(Debug)]
pub struct Controller<D> {
    config: Config,
    /// The file the configuration came from, re-read by a reload.
    path: Option<PathBuf>,
    reconciler: Reconciler<D>,
}

impl<D: Datapath> Controller<D> {
    /// Takes a reconciler that already applied `config` (read from `path`, if from a file).
    pub fn new(config: Config, path: Option<PathBuf>, reconciler: Reconciler<D>) -> Self {
        Self {
            config,
            path,
            reconciler,
        }
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    pub fn reconciler(&self) -> &Reconciler<D> {
        &self.reconciler
    }

    /// Answers one request.
    pub fn handle(&mut self, request: Request) -> Response {
        let started = Instant::now();
        let result = match request {
            Request::ListListeners => Ok(Body::Listeners(self.listeners())),
            Request::ListBackends { pool } => self.backends(pool.as_deref()).map(Body::Backends),
            Request::AddBackend {
                pool,
                address,
                port,
                weight,
            } => self.edit(
                &pool,
                &PoolEdit::Add(BackendConfig {
                    address,
                    port,
                    weight,
                }),
                format!(
                    "added {} to pool {pool:?} with weight {weight}",
                    describe(address, port)
                ),
                started,
            ),
            Request::RemoveBackend {
                pool,
                address,
                port,
            } => self.edit(
                &pool,
                &PoolEdit::Remove { address, port },
                format!("removed {} from pool {pool:?}", describe(address, port)),
                started,
            ),
            Request::SetWeight {
                pool,
                address,
                port,
                weight,
            } => self.edit(
                &pool,
                &PoolEdit::SetWeight {
                    address,
                    port,
                    weight,
                },
                format!(
                    "set the weight of {} in pool {pool:?} to {weight}",
                    describe(address, port)
                ),
                started,
            ),
            Request::Stats => self.stats().map(Body::Stats),
            Request::Reload => self.reload(started),
            Request::Simulate {
                protocol,
                client,
                vip,
            } => self.simulate(protocol, client, vip).map(Body::Simulation),
        };
        match result {
            Ok(body) => Response::Ok(body),
            Err(message) => Response::Error(message),
        }
    }

    fn listeners(&self) -> Vec<ListenerView> {
        self.config
            .listeners
            .iter()
            .map(|(name, l)| ListenerView {
                name: name.clone(),
                address: l.address,
                port: l.port,
                protocol: l.protocol,
                mode: "passthrough".to_owned(),
                pool: l.pool.clone(),
                active_backends: self.config.pools[&l.pool]
                    .backends
                    .iter()
                    .filter(|b| b.weight > 0)
                    .count(),
                ring_size: self.config.datapath.ring_size,
            })
            .collect()
    }

    fn backends(&self, pool: Option<&str>) -> Result<Vec<BackendView>, String> {
        if let Some(pool) = pool
            && !self.config.pools.contains_key(pool)
        {
            return Err(format!(
                "no pool is named {pool:?}; `lb listener list` shows the pools"
            ));
        }
        let mut views = Vec::new();
        for (name, p) in &self.config.pools {
            if pool.is_some_and(|wanted| wanted != name) {
                continue;
            }
            let listeners: Vec<String> = self
                .config
                .listeners
                .iter()
                .filter(|(_, l)| &l.pool == name)
                .map(|(n, _)| n.clone())
                .collect();
            for backend in &p.backends {
                views.push(BackendView {
                    pool: name.clone(),
                    address: backend.address,
                    port: backend.port,
                    weight: backend.weight,
                    state: if backend.weight > 0 {
                        "serving"
                    } else {
                        "draining"
                    }
                    .to_owned(),
                    table_slots: listeners
                        .first()
                        .map_or(0, |l| self.table_slots(l, backend.address)),
                    ring_size: self.config.datapath.ring_size,
                    listeners: listeners.clone(),
                });
            }
        }
        Ok(views)
    }

    /// Slots of `listener`'s live table that name `address`.
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

    /// Applies `edit` to `pool`: a new configuration if valid, reconciled into the maps.
    fn edit(
        &mut self,
        pool: &str,
        edit: &PoolEdit,
        summary: String,
        started: Instant,
    ) -> Result<Body, String> {
        let next = self
            .config
            .edit_pool(pool, edit)
            .map_err(|e| e.to_string())?;
        if let Err(failure) = self.reconciler.apply(&next.passthrough_listeners()) {
            error!(%failure, "applying a change failed; restoring the previous tables");
            if let Err(rollback) = self.reconciler.apply(&self.config.passthrough_listeners()) {
                error!(%rollback, "restoring the previous tables failed too");
            }
            return Err(format!("the change could not be applied: {failure}"));
        }
        let applied_us = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
        let listeners = next
            .listeners
            .iter()
            .filter(|(_, l)| l.pool == pool)
            .map(|(name, _)| name.clone())
            .collect();
        self.config = next;
        info!(%summary, applied_us, "change applied");
        Ok(Body::Changed(ChangeView {
            summary,
            listeners,
            applied_us,
        }))
    }

    /// Re-reads the configuration file; applies it if it is valid and changes nothing that
    /// only a restart can change.
    fn reload(&mut self, started: Instant) -> Result<Body, String> {
        let path = self
            .path
            .clone()
            .ok_or_else(|| "this daemon was not started from a file".to_owned())?;
        let next = Config::from_file(&path)
            .map_err(|e| format!("{} was not reloaded; nothing changed:\n{e}", path.display()))?;
        if let Some(field) = fixed_setting_changed(&self.config, &next) {
            return Err(format!(
                "{} was not reloaded: {field} cannot change while the daemon runs; restart it \
                 (restarts are hitless)",
                path.display()
            ));
        }
        let mtu = self
            .config
            .datapath
            .mtu
            .unwrap_or(self.reconciler.config().mtu);
        let datapath_config = DatapathConfig {
            vip_epoch: 0,
            ..next.datapath_config(mtu)
        };
        let current = DatapathConfig {
            vip_epoch: 0,
            ..*self.reconciler.config()
        };
        if datapath_config != current {
            self.reconciler
                .set_config(datapath_config)
                .map_err(|e| format!("the reload could not be applied: {e}"))?;
        }
        self.replace(next, format!("reloaded {}", path.display()), started)
    }

    /// Makes `next` the configuration in force: reconciles the maps to it, or restores the
    /// previous tables if that fails.
    fn replace(&mut self, next: Config, summary: String, started: Instant) -> Result<Body, String> {
        if let Err(failure) = self.reconciler.apply(&next.passthrough_listeners()) {
            error!(%failure, "applying a change failed; restoring the previous tables");
            if let Err(rollback) = self.reconciler.apply(&self.config.passthrough_listeners()) {
                error!(%rollback, "restoring the previous tables failed too");
            }
            return Err(format!("the change could not be applied: {failure}"));
        }
        let applied_us = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
        let listeners = next
            .listeners
            .iter()
            .filter(|(name, l)| {
                self.config.listeners.get(*name) != Some(*l) || {
                    self.config.pools.get(&l.pool) != next.pools.get(&l.pool)
                }
            })
            .map(|(name, _)| name.clone())
            .collect();
        self.config = next;
        info!(%summary, applied_us, "change applied");
        Ok(Body::Changed(ChangeView {
            summary,
            listeners,
            applied_us,
        }))
    }

    fn stats(&self) -> Result<StatsView, String> {
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
        })
    }

    /// Where the datapath sends the flow `client` -> `vip`, and why.
    fn simulate(
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
            .ok_or_else(|| format!("listener {name:?} is not in the datapath"))?;
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
            address_of(c.backend_id)
                .filter(|(_, generation)| *generation == c.generation)
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

/// The first setting that differs between `old` and `new` and that only a restart can change.
fn fixed_setting_changed(old: &Config, new: &Config) -> Option<&'static str> {
    let (a, b) = (&old.datapath, &new.datapath);
    [
        ("datapath.interfaces", a.interfaces != b.interfaces),
        ("datapath.attach_mode", a.attach_mode != b.attach_mode),
        ("datapath.ring_size", a.ring_size != b.ring_size),
        ("datapath.hash_seed", a.hash_seed != b.hash_seed),
        (
            "datapath.conn_table_size",
            a.conn_table_size != b.conn_table_size,
        ),
        ("datapath.max_listeners", a.max_listeners != b.max_listeners),
        ("datapath.pin_dir", a.pin_dir != b.pin_dir),
        ("control.socket", old.control.socket != new.control.socket),
    ]
    .into_iter()
    .find_map(|(field, changed)| changed.then_some(field))
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use lb_common::abi::ConnValue;

    use super::*;
    use crate::datapath::fake::FakeDatapath;

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

    fn controller() -> Controller<FakeDatapath> {
        let config = Config::parse(CONFIG, "test.toml").unwrap();
        let fake = FakeDatapath::new(config.ring_geometry());
        let mut reconciler = Reconciler::new(fake, config.datapath_config(1500)).unwrap();
        reconciler.apply(&config.passthrough_listeners()).unwrap();
        Controller::new(config, None, reconciler)
    }

    fn add(address: &str, weight: u32) -> Request {
        Request::AddBackend {
            pool: "web".to_owned(),
            address: address.parse().unwrap(),
            port: None,
            weight,
        }
    }

    /// The backends the live table of `https` names, sorted.
    fn in_table(c: &Controller<FakeDatapath>) -> Vec<IpAddr> {
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
        let Response::Ok(Body::Changed(change)) = c.handle(add("198.18.1.3", 2)) else {
            panic!("the change was refused");
        };
        assert_eq!(change.listeners, ["https"]);
        assert_eq!(c.config().pools["web"].backends.len(), 3);
        assert_eq!(in_table(&c).len(), 3);
        let Response::Ok(Body::Backends(backends)) = c.handle(Request::ListBackends {
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
            let response = c.handle(request.clone());
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
        let response = c.handle(add("198.18.1.3", 1));
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
            matches!(c.handle(add("198.18.1.3", 1)), Response::Ok(_)),
            "a retry works"
        );
    }

    #[test]
    fn simulate_names_the_table_or_the_connection_table() {
        let mut c = controller();
        let client: SocketAddr = "198.18.0.1:40000".parse().unwrap();
        let vip: SocketAddr = "198.18.100.1:443".parse().unwrap();
        let simulate = |c: &mut Controller<FakeDatapath>| match c.handle(Request::Simulate {
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
                backend_id: backend.id,
                generation: backend.generation,
            },
        );
        let established = simulate(&mut c);
        assert_eq!(established.reason, "connection table");
        assert_eq!(established.backend, other);
        assert_eq!(established.new_connection_backend, fresh.backend);

        let unknown = c.handle(Request::Simulate {
            protocol: Protocol::Udp,
            client,
            vip,
        });
        assert!(matches!(unknown, Response::Error(m) if m.contains("no listener serves")));
    }
}
