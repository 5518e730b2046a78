//! The daemon's controller: the one owner of the configuration and of the reconciler. It
//! answers the control API's requests one at a time: views of the listeners, backends and
//! counters, simulations, and changes (validated as a new configuration, then reconciled; a
//! refused change writes nothing, a failed one is rolled back).

use std::{
    net::{IpAddr, SocketAddr},
    time::Instant,
};

use lb_common::counters::{Counter, CounterKind};
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
    reconciler: Reconciler<D>,
}

impl<D: Datapath> Controller<D> {
    /// Takes a reconciler that already applied `config`.
    pub fn new(config: Config, reconciler: Reconciler<D>) -> Self {
        Self { config, reconciler }
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
