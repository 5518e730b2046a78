//! The daemon's controller: the one owner of the configuration, the backends' run-time state
//! (health, drains, slow start) and the reconciler. It handles, one at a time:
//!
//! - the control API's requests: views (`views`), simulations, and changes, each validated as
//!   a new configuration and reconciled (a refused change writes nothing; a failed one is
//!   rolled back);
//! - health-check outcomes, which take backends out of the tables and bring them back;
//! - ticks, which end drains and step slow starts.
//!
//! Time is passed in, so tests drive it with a clock of their own.

mod capture;
mod routing;
mod views;

use std::{
    collections::BTreeMap,
    path::PathBuf,
    sync::Arc,
    time::{Duration, Instant},
};

use lb_common::abi::DatapathConfig;
use tracing::{error, info, warn};

use super::{
    announce::Announcer,
    host::HostWatch,
    probes::Probes,
    runtime::{BackendKey, Runtime},
};
use crate::{
    config::{BackendConfig, Config, HostDefaults, PoolEdit, describe},
    control::{Body, ChangeView, Request, Response},
    datapath::Datapath,
    health::state::{Health, Outcome},
    l7::{L7, PoolMembers, Prepared},
    reconcile::Reconciler,
};

/// Why a request did not change anything.
#[derive(Debug)]
enum Refusal {
    /// The request was invalid: nothing was written.
    Refused(String),
    /// Writing the maps failed: the previous tables were restored.
    Failed(String),
}

impl Refusal {
    fn text(&self) -> &str {
        match self {
            Self::Refused(m) | Self::Failed(m) => m,
        }
    }

    fn message(self) -> String {
        match self {
            Self::Refused(m) | Self::Failed(m) => m,
        }
    }

    const fn result(&self) -> &'static str {
        match self {
            Self::Refused(_) => "refused",
            Self::Failed(_) => "failed",
        }
    }
}

/// The configuration in force and the maps that implement it.
#[derive(Debug)]
pub struct Controller<D> {
    config: Config,
    /// The file the configuration came from, re-read by a reload.
    path: Option<PathBuf>,
    reconciler: Reconciler<D>,
    runtime: Runtime,
    probes: Option<Probes>,
    /// The L7 listeners, and the pool members they were last given.
    l7: Option<Arc<L7>>,
    published: PoolMembers,
    /// Control operations by (operation, result).
    operations: BTreeMap<(String, &'static str), u64>,
    started: Instant,
    /// The host's side of the datapath (routes, neighbours, interfaces), when on a real one.
    host: Option<HostWatch>,
    /// What the host gives the settings the file leaves to it.
    host_defaults: HostDefaults,
    /// The routes announcing the listener addresses (`[announce]`).
    announcer: Option<Announcer>,
    /// The packet capture's filter and state maps, when there is a packet path.
    capture: Option<crate::capture::control::CaptureMaps>,
}

impl<D: Datapath> Controller<D> {
    /// Takes a reconciler (new or adopting) and applies `config` (read from `path`, if from a
    /// file) to it.
    pub fn new(
        config: Config,
        path: Option<PathBuf>,
        reconciler: Reconciler<D>,
        now: Instant,
    ) -> Result<Self, crate::reconcile::ReconcileError> {
        let mut runtime = Runtime::default();
        runtime.sync(&config, now, false);
        let mut controller = Self {
            config,
            path,
            reconciler,
            runtime,
            probes: None,
            l7: None,
            published: PoolMembers::new(),
            operations: BTreeMap::new(),
            started: now,
            host: None,
            host_defaults: HostDefaults::default(),
            announcer: None,
            capture: None,
        };
        let desired = controller.runtime.listeners(&controller.config, now);
        controller.reconciler.apply(&desired)?;
        Ok(controller)
    }

    /// Keeps the host's side of the datapath in step with `watch` (see `daemon::host`), with
    /// the defaults `host_defaults` gave the configuration. Fails if the configuration's egress
    /// VLANs name an interface that does not exist.
    pub fn with_host(
        mut self,
        mut watch: HostWatch,
        host_defaults: HostDefaults,
        now: Instant,
    ) -> Result<Self, String> {
        watch.apply_egress_vlans(&self.config, self.reconciler.datapath_mut())?;
        watch.refresh_if_due(&mut self.reconciler, now, true);
        self.host = Some(watch);
        self.host_defaults = host_defaults;
        Ok(self)
    }

    /// Looks at the routes toward the backends again (at once with `force`, else when due).
    fn refresh_host(&mut self, now: Instant, force: bool) {
        if let Some(host) = &mut self.host {
            host.refresh_if_due(&mut self.reconciler, now, force);
        }
    }

    /// Serves the configuration's L7 listeners with `l7` (and those of every later one),
    /// from what [`L7::prepare`] made of the configuration.
    pub fn with_l7(mut self, l7: Arc<L7>, prepared: Prepared, now: Instant) -> Self {
        self.published = self.runtime.members(&self.config, now);
        l7.commit(prepared, &self.published);
        self.l7 = Some(l7);
        self
    }

    /// Gives the L7 listeners the pools' members, if they changed.
    fn publish(&mut self, now: Instant) {
        let Some(l7) = &self.l7 else {
            return;
        };
        let members = self.runtime.members(&self.config, now);
        if members != self.published {
            l7.update_pools(&members);
            self.published = members;
        }
    }

    /// Announces the listener addresses this node can serve with `announcer`, from now on.
    pub fn with_announcer(mut self, announcer: Option<Announcer>, now: Instant) -> Self {
        self.announcer = announcer;
        self.announce(now);
        self
    }

    /// Brings the announcements in step with the listeners' state.
    fn announce(&mut self, now: Instant) {
        if let Some(announcer) = &mut self.announcer {
            announcer.tick(&self.config, &self.runtime, now);
        }
    }

    fn announce_view(&self) -> Option<crate::control::AnnounceView> {
        self.announcer.as_ref().map(Announcer::view)
    }

    /// `lb node drain` and `lb node undrain`.
    fn set_drained(
        &mut self,
        drain: bool,
        wait: Option<Duration>,
        now: Instant,
    ) -> Result<Body, Refusal> {
        let Some(announcer) = &mut self.announcer else {
            return Err(Refusal::Refused(
                "this daemon announces nothing: the configuration has no [announce] section"
                    .to_owned(),
            ));
        };
        announcer
            .set_drained(drain, wait, &self.config, &self.runtime, now)
            .map(|change| Body::Node(Box::new(change)))
            .map_err(Refusal::Failed)
    }

    /// Runs the health checks of the configuration with `probes` (and of every later one).
    pub fn with_probes(mut self, mut probes: Probes) -> Self {
        probes.sync(&self.config);
        self.probes = Some(probes);
        self
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    pub fn reconciler(&self) -> &Reconciler<D> {
        &self.reconciler
    }

    /// Answers one request.
    pub fn handle(&mut self, request: Request, now: Instant) -> Response {
        let operation = operation_name(&request);
        let result = match request {
            Request::ListListeners => Ok(Body::Listeners(self.listener_views())),
            Request::ListBackends { pool } => self
                .backend_views(pool.as_deref())
                .map(Body::Backends)
                .map_err(Refusal::Refused),
            Request::AddBackend {
                pool,
                address,
                port,
                weight,
                server_name,
            } => {
                let summary = format!(
                    "added {} to pool {pool:?} with weight {weight}",
                    describe(address, port)
                );
                let backend = BackendConfig {
                    address,
                    port,
                    weight,
                    server_name,
                };
                self.edit(&pool, &PoolEdit::Add(backend), summary, now)
            }
            Request::RemoveBackend {
                pool,
                address,
                port,
            } => self.remove(&pool, address, port, now),
            Request::SetWeight {
                pool,
                address,
                port,
                weight,
            } => {
                let summary = format!(
                    "set the weight of {} in pool {pool:?} to {weight}",
                    describe(address, port)
                );
                let edit = PoolEdit::SetWeight {
                    address,
                    port,
                    weight,
                };
                self.edit(&pool, &edit, summary, now)
            }
            Request::DrainBackend {
                pool,
                address,
                port,
                timeout_ms,
            } => {
                let key = BackendKey {
                    pool,
                    address,
                    port,
                };
                self.drain(
                    &key,
                    Duration::from_millis(timeout_ms),
                    "lb backend drain",
                    now,
                )
            }
            Request::Stats => self.stats_view().map(Body::Stats).map_err(Refusal::Failed),
            Request::Status => Ok(Body::Status(Box::new(self.status_view(now)))),
            Request::Reload => self.reload(now),
            Request::ReloadFiles => self.reload_files(),
            Request::Simulate {
                protocol,
                client,
                vip,
            } => self
                .simulate(protocol, client, vip)
                .map(Body::Simulation)
                .map_err(Refusal::Refused),
            Request::ListRules { listener } => self
                .rules_view(&listener)
                .map(Body::Rules)
                .map_err(Refusal::Refused),
            Request::SimulateHttp {
                listener,
                method,
                url,
                headers,
            } => self
                .simulate_http(&listener, &method, &url, &headers)
                .map(Body::HttpSimulation)
                .map_err(Refusal::Refused),
            Request::NodeDrain { wait_ms } => {
                self.set_drained(true, wait_ms.map(Duration::from_millis), now)
            }
            Request::NodeUndrain => self.set_drained(false, None, now),
            // The control socket's server hands these to the daemon, never to the controller.
            Request::Handover => Err(Refusal::Refused(
                "a handover is asked for on the control socket by `lb run --take-over`".to_owned(),
            )),
            Request::Capture(_) => Err(Refusal::Refused(
                "a capture is asked for on the control socket by `lb capture`".to_owned(),
            )),
        };
        if let Some(operation) = operation {
            let outcome = result.as_ref().map_or_else(Refusal::result, |_| "ok");
            // The operator who asked sees why; the log keeps it for everyone else.
            if let Err(refusal) = &result {
                warn!(operation, outcome, reason = %refusal.text(), "a change was not applied");
            }
            *self
                .operations
                .entry((operation.to_owned(), outcome))
                .or_default() += 1;
        }
        match result {
            Ok(body) => Response::Ok(body),
            Err(refusal) => Response::Error(refusal.message()),
        }
    }

    /// Counts a health check's outcome; reconciles if the backend's health changed.
    pub fn on_health(&mut self, key: &BackendKey, outcome: &Outcome, now: Instant) {
        let Some(pool) = self.config.pools.get(&key.pool) else {
            return;
        };
        let Some(transition) = self.runtime.observe(key, outcome, now, pool) else {
            return;
        };
        match transition.health {
            Health::Healthy => info!(backend = %key, reason = %transition.reason, "healthy"),
            Health::Unhealthy { reachable } => {
                // Passthrough flows, if the pool has any: a dead backend's are placed afresh.
                let flows = match (self.config.has_packet_path(), reachable) {
                    (false, _) => "none (no packet path)",
                    (true, true) => "stay",
                    (true, false) => "placed afresh",
                };
                warn!(
                    backend = %key, reason = %transition.reason, established_flows = flows,
                    "unhealthy"
                );
            }
        }
        if let Err(error) = self.reconcile(now) {
            error!(%error, "applying a health change failed");
        }
    }

    /// Ends the drains that are due (removing their backends) and steps slow starts.
    pub fn on_tick(&mut self, now: Instant) {
        if let Some(step) = self
            .runtime
            .follow_wall_clock(now, std::time::SystemTime::now())
        {
            info!(?step, "the wall clock stepped: slow start follows it");
        }
        for key in self.runtime.drains_ended(now) {
            let edit = PoolEdit::Remove {
                address: key.address,
                port: key.port,
            };
            let summary = format!("the drain of {key} ended: removed");
            match self.config.edit_pool(&key.pool, &edit) {
                Ok(next) => {
                    if let Err(refusal) = self.replace(next, summary, now) {
                        error!(error = %refusal.message(), "removing a drained backend failed");
                    }
                }
                Err(error) => error!(%error, "removing a drained backend was refused"),
            }
        }
        if let Err(error) = self.reconcile(now) {
            error!(%error, "applying a slow-start step failed");
        }
        self.refresh_host(now, false);
        // Whatever the reconcile did: a node whose maps cannot be written still withdraws.
        self.announce(now);
    }

    /// Writes the tables the configuration and the run-time state call for now (nothing if
    /// they are what the maps hold).
    fn reconcile(&mut self, now: Instant) -> Result<(), crate::reconcile::ReconcileError> {
        let desired = self.runtime.listeners(&self.config, now);
        self.reconciler.apply(&desired)?;
        self.publish(now);
        Ok(())
    }

    /// Applies `edit` to `pool`: a new configuration if valid, reconciled into the maps.
    fn edit(
        &mut self,
        pool: &str,
        edit: &PoolEdit,
        summary: String,
        now: Instant,
    ) -> Result<Body, Refusal> {
        let next = self
            .config
            .edit_pool(pool, edit)
            .map_err(|e| Refusal::Refused(e.to_string()))?;
        self.replace(next, summary, now)
    }

    /// Removes a backend: at once, or after its pool's deregistration delay (a drain).
    fn remove(
        &mut self,
        pool: &str,
        address: std::net::IpAddr,
        port: Option<u16>,
        now: Instant,
    ) -> Result<Body, Refusal> {
        let delay = self
            .config
            .pools
            .get(pool)
            .map_or(Duration::ZERO, |p| p.deregistration_delay);
        if delay.is_zero() {
            let summary = format!("removed {} from pool {pool:?}", describe(address, port));
            return self.edit(pool, &PoolEdit::Remove { address, port }, summary, now);
        }
        let key = BackendKey {
            pool: pool.to_owned(),
            address,
            port,
        };
        self.drain(&key, delay, "removed (deregistration delay)", now)
    }

    /// Starts draining `key` for at most `timeout`; it is removed when the drain ends.
    fn drain(
        &mut self,
        key: &BackendKey,
        timeout: Duration,
        why: &str,
        now: Instant,
    ) -> Result<Body, Refusal> {
        // The same checks as a removal: the backend must be in the pool.
        let removal = PoolEdit::Remove {
            address: key.address,
            port: key.port,
        };
        self.config
            .edit_pool(&key.pool, &removal)
            .map_err(|e| Refusal::Refused(e.to_string()))?;
        if self.runtime.is_draining(key) {
            return Err(Refusal::Refused(format!("{key} is already draining")));
        }
        let started = Instant::now();
        self.runtime.drain(key, now + timeout, why.to_owned());
        if let Err(failure) = self.reconcile(now) {
            return Err(Refusal::Failed(format!(
                "the drain could not be applied: {failure}"
            )));
        }
        Ok(Body::Changed(ChangeView {
            summary: format!(
                "draining {key}: no new flows; established ones end or are cut after {timeout:?}, \
                 then it is removed"
            ),
            listeners: self.listeners_of(&key.pool),
            applied_us: u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX),
        }))
    }

    /// Re-reads the configuration file; applies it if it is valid and changes nothing that
    /// only a restart can change.
    fn reload(&mut self, now: Instant) -> Result<Body, Refusal> {
        let path = self.path.clone().ok_or_else(|| {
            Refusal::Refused("this daemon was not started from a file".to_owned())
        })?;
        let next = Config::from_file(&path).map_err(|e| {
            Refusal::Refused(format!(
                "{} was not reloaded; nothing changed:\n{e}",
                path.display()
            ))
        })?;
        if let Some(field) = fixed_setting_changed(&self.config, &next) {
            return Err(Refusal::Refused(format!(
                "{} was not reloaded: {field} cannot change while the daemon runs; restart it \
                 (restarts are hitless)",
                path.display()
            )));
        }
        let host_defaults = match &mut self.host {
            Some(host) => host.defaults_for(&next).map_err(|e| {
                Refusal::Refused(format!(
                    "{} was not reloaded; nothing changed: {e}",
                    path.display()
                ))
            })?,
            None => self.host_defaults,
        };
        let datapath_config = next.datapath_config(&host_defaults);
        let body = self.replace_with(
            next,
            format!("reloaded {}", path.display()),
            now,
            Some(datapath_config),
            true,
        )?;
        self.host_defaults = host_defaults;
        Ok(body)
    }

    /// `lb cert reload`: every file of the L7 listeners, read again and swapped in.
    fn reload_files(&mut self) -> Result<Body, Refusal> {
        let Some(l7) = &self.l7 else {
            return Err(Refusal::Refused(
                "this daemon serves no L7 listener".to_owned(),
            ));
        };
        let started = Instant::now();
        let reloaded = l7.reload_files().map_err(|e| {
            Refusal::Refused(format!("the files were not reloaded; nothing changed: {e}"))
        })?;
        if reloaded.is_empty() {
            return Err(Refusal::Refused(
                "the configuration has no offload or bridging listener".to_owned(),
            ));
        }
        let summary = format!("reloaded the files of {}", reloaded.join("; "));
        info!(%summary, "certificates and keys reloaded");
        Ok(Body::Changed(ChangeView {
            summary,
            listeners: Vec::new(),
            applied_us: u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX),
        }))
    }

    /// Makes `next` the configuration in force: reconciles the maps to it, or restores the
    /// previous tables if that fails.
    fn replace(&mut self, next: Config, summary: String, now: Instant) -> Result<Body, Refusal> {
        self.replace_with(next, summary, now, None, false)
    }

    /// [`Controller::replace`], also writing a new datapath configuration entry (and egress
    /// VLANs) if given: all of it, or none of it. With `reread_ticket_keys` (`lb reload`), the
    /// L7 listeners read their ticket key files again, changed or not.
    fn replace_with(
        &mut self,
        next: Config,
        summary: String,
        now: Instant,
        datapath_config: Option<DatapathConfig>,
        reread_ticket_keys: bool,
    ) -> Result<Body, Refusal> {
        let started = Instant::now();
        let mut runtime = self.runtime.clone();
        runtime.sync(&next, now, true);
        let prepared = match &self.l7 {
            Some(l7) => {
                let prepared = if reread_ticket_keys {
                    l7.prepare_reload(&next)
                } else {
                    l7.prepare(&next)
                };
                Some(prepared.map_err(|e| {
                    Refusal::Refused(format!("the change was not applied; nothing changed: {e}"))
                })?)
            }
            None => None,
        };
        let previous_config = *self.reconciler.config();
        if let Some(wanted) = datapath_config {
            self.write_datapath_settings(&next, wanted)?;
        }
        if let Err(failure) = self.reconciler.apply(&runtime.listeners(&next, now)) {
            error!(%failure, "applying a change failed; restoring the previous tables");
            if datapath_config.is_some()
                && let Err(rollback) =
                    self.write_datapath_settings(&self.config.clone(), previous_config)
            {
                error!(error = %rollback.message(), "restoring the previous datapath settings failed too");
            }
            if let Err(rollback) = self.reconcile(now) {
                error!(%rollback, "restoring the previous tables failed too");
            }
            return Err(Refusal::Failed(format!(
                "the change could not be applied: {failure}"
            )));
        }
        let applied_us = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
        let listeners = next
            .listeners
            .iter()
            .filter(|(name, l)| {
                self.config.listeners.get(*name) != Some(*l)
                    || l.pools()
                        .into_iter()
                        .any(|pool| self.config.pools.get(pool) != next.pools.get(pool))
            })
            .map(|(name, _)| name.clone())
            .collect();
        if let (Some(l7), Some(prepared)) = (&self.l7, prepared) {
            self.published = runtime.members(&next, now);
            l7.commit(prepared, &self.published);
        }
        self.config = next;
        self.runtime = runtime;
        if let Some(probes) = &mut self.probes {
            probes.sync(&self.config);
        }
        self.refresh_host(now, true);
        info!(%summary, applied_us, "change applied");
        Ok(Body::Changed(ChangeView {
            summary,
            listeners,
            applied_us,
        }))
    }

    /// Writes `config`'s egress VLANs (every interface name resolved before anything is
    /// written) and the datapath configuration entry, if it differs.
    fn write_datapath_settings(
        &mut self,
        config: &Config,
        wanted: DatapathConfig,
    ) -> Result<(), Refusal> {
        if let Some(host) = &mut self.host {
            host.apply_egress_vlans(config, self.reconciler.datapath_mut())
                .map_err(|e| Refusal::Refused(format!("the change was not applied: {e}")))?;
        }
        let current = DatapathConfig {
            vip_epoch: 0,
            ..*self.reconciler.config()
        };
        if (DatapathConfig {
            vip_epoch: 0,
            ..wanted
        }) != current
        {
            self.reconciler
                .set_config(wanted)
                .map_err(|e| Refusal::Failed(format!("the change could not be applied: {e}")))?;
        }
        Ok(())
    }

    /// The listeners that forward to `pool`.
    fn listeners_of(&self, pool: &str) -> Vec<String> {
        self.config
            .listeners
            .iter()
            .filter(|(_, l)| l.uses_pool(pool))
            .map(|(name, _)| name.clone())
            .collect()
    }
}

/// The operation a request counts as in the metrics, if it changes something.
fn operation_name(request: &Request) -> Option<&'static str> {
    Some(match request {
        Request::AddBackend { .. } => "backend-add",
        Request::RemoveBackend { .. } => "backend-remove",
        Request::SetWeight { .. } => "backend-set-weight",
        Request::DrainBackend { .. } => "backend-drain",
        Request::Reload => "reload",
        Request::ReloadFiles => "cert-reload",
        Request::NodeDrain { .. } => "node-drain",
        Request::NodeUndrain => "node-undrain",
        _ => return None,
    })
}

/// The first setting that differs between `old` and `new` and that only a restart can change.
fn fixed_setting_changed(old: &Config, new: &Config) -> Option<&'static str> {
    let (a, b) = (&old.datapath, &new.datapath);
    [
        (
            "the packet path (an interface or a passthrough listener where there was none, or \
             none left)",
            old.has_packet_path() != new.has_packet_path(),
        ),
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
        (
            "control.read_only_group",
            old.control.read_only_group != new.control.read_only_group,
        ),
        ("announce", old.announce != new.announce),
    ]
    .into_iter()
    .find_map(|(field, changed)| changed.then_some(field))
}

#[cfg(test)]
mod tests;
