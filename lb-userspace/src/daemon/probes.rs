//! The health-check loops: one tokio task per checked backend, probing it every interval and
//! reporting each outcome to the controller as an [`Event::Health`]. [`Probes::sync`] matches
//! the tasks to the configuration (new backends get a task, removed ones lose theirs, a
//! changed check restarts it).

use std::{collections::BTreeMap, net::SocketAddr, time::Duration};

use tokio::{runtime::Handle, sync::mpsc, task::AbortHandle};

use super::{Event, runtime::BackendKey};
use crate::{config::Config, health::probe::Probe};

/// What a task checks, and how often.
#[derive(Clone, Debug, PartialEq)]
struct Spec {
    target: SocketAddr,
    probe: ProbeEq,
    interval: Duration,
}

/// A probe compared by its settings.
#[derive(Clone, Debug)]
struct ProbeEq(Probe);

impl PartialEq for ProbeEq {
    fn eq(&self, other: &Self) -> bool {
        self.0.kind == other.0.kind && self.0.timeout == other.0.timeout
    }
}

/// The running health-check loops.
#[derive(Debug)]
pub struct Probes {
    handle: Handle,
    events: mpsc::Sender<Event>,
    tasks: BTreeMap<BackendKey, (Spec, AbortHandle)>,
}

impl Probes {
    pub fn new(handle: Handle, events: mpsc::Sender<Event>) -> Self {
        Self {
            handle,
            events,
            tasks: BTreeMap::new(),
        }
    }

    /// Starts, restarts or stops loops so that each checked backend of `config` has one.
    pub fn sync(&mut self, config: &Config) {
        let mut wanted = BTreeMap::new();
        for (name, pool) in &config.pools {
            let Some(check) = &pool.health_check else {
                continue;
            };
            for backend in &pool.backends {
                let Some(target) = config.health_target(name, backend) else {
                    continue;
                };
                let probe = Probe {
                    kind: check.probe.clone(),
                    timeout: check.timeout,
                };
                let spec = Spec {
                    target,
                    probe: ProbeEq(probe),
                    interval: check.interval,
                };
                wanted.insert(BackendKey::of(name, backend), spec);
            }
        }
        let stale: Vec<BackendKey> = self
            .tasks
            .iter()
            .filter(|(key, (spec, _))| wanted.get(*key) != Some(spec))
            .map(|(key, _)| key.clone())
            .collect();
        for key in stale {
            if let Some((_, task)) = self.tasks.remove(&key) {
                task.abort();
            }
        }
        for (key, spec) in wanted {
            if self.tasks.contains_key(&key) {
                continue;
            }
            let task =
                self.handle
                    .spawn(probe_loop(key.clone(), spec.clone(), self.events.clone()));
            self.tasks.insert(key, (spec, task.abort_handle()));
        }
    }
}

impl Drop for Probes {
    fn drop(&mut self) {
        for (_, task) in self.tasks.values() {
            task.abort();
        }
    }
}

/// Probes `spec.target` every interval (the first time at once) until the controller is gone.
async fn probe_loop(key: BackendKey, spec: Spec, events: mpsc::Sender<Event>) {
    let mut ticks = tokio::time::interval(spec.interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        let outcome = spec.probe.0.check(spec.target).await;
        if events
            .send(Event::Health(key.clone(), outcome))
            .await
            .is_err()
        {
            return;
        }
    }
}
