//! Traffic accounting. The datapath counts each forwarded packet once, on its backend id;
//! listeners' traffic and the derived counters (`tx_local`, `conn_hit`) are sums computed here.
//!
//! Backend ids are reused: before an id is given to a new backend, the traffic it carried is
//! folded into its old listener's total (and the balancer's), then the id's counters are
//! zeroed. So every total only ever grows.

use std::collections::BTreeMap;
use std::net::IpAddr;

use lb_common::{abi::TrafficCounters, counters::Counter};

use super::Reconciler;
use crate::datapath::{Datapath, DatapathError, counter_value};

/// Every counter of the balancer and the traffic of each listener, at one moment.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Snapshot {
    /// Every [`Counter`] by index, derived ones included.
    pub counters: Vec<u64>,
    pub listeners: BTreeMap<String, ListenerTraffic>,
}

impl Snapshot {
    pub fn counter(&self, counter: Counter) -> u64 {
        counter_value(&self.counters, counter)
    }
}

/// A listener's traffic: the total, and its current backends'.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ListenerTraffic {
    /// Everything the listener forwarded, also through backends that have left it.
    pub total: TrafficCounters,
    pub backends: BTreeMap<IpAddr, TrafficCounters>,
}

/// Traffic of ids no longer in use, until they are reused.
#[derive(Clone, Debug, Default)]
pub(super) struct Retired {
    /// Retired backend ids whose counters are still in the map, and their listener.
    pub(super) ids: BTreeMap<u32, String>,
    /// Traffic of reused ids, per listener that still exists.
    pub(super) folded: BTreeMap<String, TrafficCounters>,
    /// Traffic of reused ids and of removed listeners' folds: counted by no listener.
    pub(super) orphaned: TrafficCounters,
}

impl<D: Datapath> Reconciler<D> {
    /// Records that backend `id` of `listener` was retired; its counters stay until reuse.
    pub(super) fn note_retired(&mut self, id: u32, listener: &str) {
        self.retired.ids.insert(id, listener.to_owned());
    }

    /// Folds the traffic of a retired id into its listener's and the balancer's totals, then
    /// zeroes its counters: the id is about to serve a new backend.
    pub(super) fn recycle_traffic(&mut self, id: u32) -> Result<(), DatapathError> {
        if let Some(owner) = self.retired.ids.get(&id).cloned() {
            let traffic = self.datapath.backend_traffic(id)?;
            if self.listeners.contains_key(&owner) {
                let folded = self.retired.folded.entry(owner).or_default();
                *folded = folded.add(traffic);
            } else {
                self.retired.orphaned = self.retired.orphaned.add(traffic);
            }
            self.retired.ids.remove(&id);
        }
        self.datapath.reset_traffic(id)
    }

    /// Moves a removed listener's folded traffic to the balancer's orphaned total.
    pub(super) fn orphan_listener_traffic(&mut self, name: &str) {
        if let Some(folded) = self.retired.folded.remove(name) {
            self.retired.orphaned = self.retired.orphaned.add(folded);
        }
    }

    /// Reads every counter and each listener's traffic.
    pub fn snapshot(&self) -> Result<Snapshot, DatapathError> {
        let mut counters = self.datapath.counters()?;
        let mut forwarded = self.retired.orphaned;
        let mut listeners = BTreeMap::new();
        for (name, listener) in &self.listeners {
            let mut traffic = ListenerTraffic {
                total: self.retired.folded.get(name).copied().unwrap_or_default(),
                backends: BTreeMap::new(),
            };
            for (address, backend) in &listener.backends {
                let t = self.datapath.backend_traffic(backend.id)?;
                traffic.total = traffic.total.add(t);
                traffic.backends.insert(*address, t);
            }
            for (&id, _) in self.retired.ids.iter().filter(|(_, owner)| *owner == name) {
                traffic.total = traffic.total.add(self.datapath.backend_traffic(id)?);
            }
            forwarded = forwarded.add(traffic.total);
            listeners.insert(name.clone(), traffic);
        }
        for (&id, owner) in &self.retired.ids {
            if !self.listeners.contains_key(owner) {
                forwarded = forwarded.add(self.datapath.backend_traffic(id)?);
            }
        }
        let redirected = counter_value(&counters, Counter::TxRedirect);
        set(
            &mut counters,
            Counter::TxLocal,
            forwarded.packets.saturating_sub(redirected),
        );
        set(
            &mut counters,
            Counter::ConnHit,
            forwarded.packets.saturating_sub(forwarded.new_flows),
        );
        Ok(Snapshot {
            counters,
            listeners,
        })
    }
}

fn set(counters: &mut [u64], counter: Counter, value: u64) {
    if let Some(slot) = counters.get_mut(counter.index() as usize) {
        *slot = value;
    }
}
