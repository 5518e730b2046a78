//! Traffic accounting. The datapath counts each forwarded packet once, on its backend id;
//! listeners' traffic and the derived counters (`tx_local`, `conn_hit`) are sums computed here.
//!
//! Backend ids are reused: before an id is given to a new backend, the traffic it carried is
//! folded into the history entry of its old listener's VIP id (or into the "removed" entry if
//! that listener is gone), then the id's counters are zeroed. A removed listener's history
//! moves to the "removed" entry. The history is a pinned map, so all of this survives
//! restarts: every listener's total only ever grows, and the listeners' totals plus the
//! removed entry add up to every packet the balancer forwarded. A backend's own counters start
//! afresh when it joins a listener again.

use std::collections::BTreeMap;
use std::net::IpAddr;

use lb_common::{abi::TrafficCounters, counters::Counter, maps::HISTORY_REMOVED};

use super::Reconciler;
use crate::datapath::{Datapath, DatapathError, counter_value};

/// Every counter of the balancer and the traffic of each listener, at one moment.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Snapshot {
    /// Every [`Counter`] by index, derived ones included.
    pub counters: Vec<u64>,
    pub listeners: BTreeMap<String, ListenerTraffic>,
    /// Traffic of listeners that were removed.
    pub removed: TrafficCounters,
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

/// Backend ids no longer in use whose counters are still in the map, until they are reused.
#[derive(Clone, Debug, Default)]
pub(super) struct Retired {
    /// Retired id -> the listener it served (empty if unknown).
    pub(super) ids: BTreeMap<u32, String>,
}

impl<D: Datapath> Reconciler<D> {
    /// Records that backend `id` of `listener` was retired; its counters stay until reuse.
    pub(super) fn note_retired(&mut self, id: u32, listener: &str) {
        self.retired.ids.insert(id, listener.to_owned());
    }

    /// The history entry of the listener named `owner`, or the removed entry.
    fn history_slot(&self, owner: &str) -> u32 {
        self.listeners
            .get(owner)
            .map_or(HISTORY_REMOVED, |listener| listener.vip_id)
    }

    fn add_history(&mut self, slot: u32, traffic: TrafficCounters) -> Result<(), DatapathError> {
        if traffic == TrafficCounters::default() {
            return Ok(());
        }
        let sum = self.datapath.history(slot)?.add(traffic);
        self.datapath.set_history(slot, &sum)
    }

    /// Folds the traffic of a retired id into its listener's history (or the removed entry),
    /// then zeroes its counters: the id is about to serve a new backend.
    pub(super) fn recycle_traffic(&mut self, id: u32) -> Result<(), DatapathError> {
        if let Some(owner) = self.retired.ids.get(&id).cloned() {
            let traffic = self.datapath.backend_traffic(id)?;
            self.add_history(self.history_slot(&owner), traffic)?;
            self.retired.ids.remove(&id);
        }
        self.datapath.reset_traffic(id)
    }

    /// Moves a removed listener's history (entry `vip_id`) to the removed entry.
    pub(super) fn orphan_listener_traffic(&mut self, vip_id: u32) -> Result<(), DatapathError> {
        let history = self.datapath.history(vip_id)?;
        if history == TrafficCounters::default() {
            return Ok(());
        }
        self.add_history(HISTORY_REMOVED, history)?;
        self.datapath
            .set_history(vip_id, &TrafficCounters::default())
    }

    /// Reads every counter and each listener's traffic.
    pub fn snapshot(&self) -> Result<Snapshot, DatapathError> {
        let mut counters = self.datapath.counters()?;
        let mut removed = self.datapath.history(HISTORY_REMOVED)?;
        let mut forwarded = TrafficCounters::default();
        let mut listeners = BTreeMap::new();
        for (name, listener) in &self.listeners {
            let mut traffic = ListenerTraffic {
                total: self.datapath.history(listener.vip_id)?,
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
                removed = removed.add(self.datapath.backend_traffic(id)?);
            }
        }
        forwarded = forwarded.add(removed);
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
            removed,
        })
    }
}

fn set(counters: &mut [u64], counter: Counter, value: u64) {
    if let Some(slot) = counters.get_mut(counter.index() as usize) {
        *slot = value;
    }
}
