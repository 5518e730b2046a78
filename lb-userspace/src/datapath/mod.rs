//! The datapath as the rest of userspace sees it: the BPF maps, behind the [`Datapath`] trait.
//!
//! Two implementations: [`maps::AyaDatapath`] writes the kernel's maps; [`memory::MemoryDatapath`]
//! keeps them in memory (and can be told to fail), so that Maglev, reconcile and config logic
//! are tested without root, and so that a daemon with no packet path (only L7 listeners, no
//! interface) runs the same controller without loading or pinning anything. Nothing above this
//! module knows about aya.

pub mod maps;
pub mod memory;

use std::collections::BTreeMap;

use lb_common::{
    abi::{Backend, ConnValue, DatapathConfig, FlowKey, TrafficCounters, VipKey, VipValue},
    counters::Counter,
};

/// A map operation that failed.
#[derive(Debug, thiserror::Error)]
pub enum DatapathError {
    #[error("map {map}: {source}")]
    Map {
        map: &'static str,
        #[source]
        source: aya::maps::MapError,
    },
    #[error("map {0} is not in the eBPF object (was it built from this version?)")]
    MissingMap(&'static str),
    #[error("map {map}: {reason}")]
    Refused { map: &'static str, reason: String },
}

/// The shape of the ring map, fixed when it is created.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RingGeometry {
    /// Slots per ring (a prime).
    pub ring_size: u32,
    /// Number of rings.
    pub rings: u32,
}

/// Reads and writes of the datapath's maps. Every write is one map update: callers order their
/// writes so that the datapath never sees an inconsistent state (see `reconcile`).
pub trait Datapath {
    fn geometry(&self) -> RingGeometry;
    fn set_config(&mut self, config: &DatapathConfig) -> Result<(), DatapathError>;
    fn set_backend(&mut self, id: u32, backend: &Backend) -> Result<(), DatapathError>;
    /// Writes `(slot, backend id)` pairs into ring `ring_id`, in order; stops at the first
    /// failure (the earlier slots stay written).
    fn write_ring(&mut self, ring_id: u32, slots: &[(u32, u32)]) -> Result<(), DatapathError>;
    fn set_vip(&mut self, key: &VipKey, value: &VipValue) -> Result<(), DatapathError>;
    fn remove_vip(&mut self, key: &VipKey) -> Result<(), DatapathError>;
    /// Adds a network interface the balancer may redirect to.
    fn add_tx_port(&mut self, ifindex: u32) -> Result<(), DatapathError>;
    /// Removes one (frames for it then go through the kernel).
    fn remove_tx_port(&mut self, ifindex: u32) -> Result<(), DatapathError>;
    /// The interfaces in the redirect map.
    fn tx_ports(&self) -> Result<Vec<u32>, DatapathError>;
    /// Frames forwarded out of interface `ifindex` leave with this 802.1Q VLAN id (0:
    /// untagged); `None` removes the setting (they keep the tags they arrived with).
    fn set_egress_vlan(&mut self, ifindex: u32, vlan_id: Option<u16>) -> Result<(), DatapathError>;
    /// The egress VLAN settings, by interface index.
    fn egress_vlans(&self) -> Result<BTreeMap<u32, u16>, DatapathError>;

    /// Every [`Counter`] the datapath keeps, summed over CPUs, in index order (the derived ones,
    /// [`Counter::is_derived`], read 0: see `reconcile::Snapshot`).
    fn counters(&self) -> Result<Vec<u64>, DatapathError>;
    /// The traffic a backend id forwarded, summed over CPUs.
    fn backend_traffic(&self, backend_id: u32) -> Result<TrafficCounters, DatapathError>;
    /// Zeroes the traffic counters of a backend id about to be given to a new backend.
    fn reset_traffic(&mut self, backend_id: u32) -> Result<(), DatapathError>;
    /// Entry `slot` of the traffic history (per VIP id, and `maps::HISTORY_REMOVED`).
    fn history(&self, slot: u32) -> Result<TrafficCounters, DatapathError>;
    fn set_history(&mut self, slot: u32, traffic: &TrafficCounters) -> Result<(), DatapathError>;
    /// The configuration entry as the maps hold it (`None` if it was never written).
    fn read_config(&self) -> Result<Option<DatapathConfig>, DatapathError>;
    /// Every entry of the VIP maps (both families).
    fn read_vips(&self) -> Result<Vec<(VipKey, VipValue)>, DatapathError>;
    /// Every backend entry ever written (generation above zero), by id.
    fn read_backends(&self) -> Result<Vec<(u32, Backend)>, DatapathError>;
    /// The whole of ring `ring_id`.
    fn read_ring(&self, ring_id: u32) -> Result<Vec<u32>, DatapathError>;

    /// The connection-table entry of `flow` to the VIP with id `vip_id`.
    fn lookup_conn(&self, flow: &FlowKey, vip_id: u16) -> Result<Option<ConnValue>, DatapathError>;
}

/// The value of one counter in a [`Datapath::counters`] snapshot.
pub fn counter_value(snapshot: &[u64], counter: Counter) -> u64 {
    snapshot
        .get(counter.index() as usize)
        .copied()
        .unwrap_or_default()
}
