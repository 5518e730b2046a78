//! [`MemoryDatapath`]: the maps in memory, for tests without root and for a daemon without a
//! packet path (only L7 listeners: it loads no program and pins no map).
//!
//! It behaves like the kernel's maps where it matters to callers (arrays start zeroed, a
//! missing hash key is `None`) and can be told to refuse a write ([`MemoryDatapath::fail_writes_after`]),
//! which is how the tests show that a failed update leaves no half-written table live.

use std::collections::{BTreeMap, HashMap};

use lb_common::{
    abi::{Backend, ConnValue, DatapathConfig, FlowKey, TrafficCounters, VipKey, VipValue},
    counters::Counter,
};

use super::{Datapath, DatapathError, RingGeometry};

/// In-memory maps.
#[derive(Clone, Debug)]
pub struct MemoryDatapath {
    geometry: RingGeometry,
    pub config: Option<DatapathConfig>,
    pub backends: BTreeMap<u32, Backend>,
    /// All rings back to back, zeroed like a new BPF array.
    pub rings: Vec<u32>,
    pub vips: BTreeMap<VipKey, VipValue>,
    pub tx_ports: Vec<u32>,
    pub egress_vlans: BTreeMap<u32, u16>,
    pub conns: HashMap<(FlowKey, u16), ConnValue>,
    /// Per backend id, what a test says it forwarded.
    pub traffic: BTreeMap<u32, TrafficCounters>,
    pub history: BTreeMap<u32, TrafficCounters>,
    /// Successful single-entry writes so far (a ring write counts each slot).
    pub writes: usize,
    fail_after: Option<usize>,
}

impl MemoryDatapath {
    pub fn new(geometry: RingGeometry) -> Self {
        Self {
            geometry,
            config: None,
            backends: BTreeMap::new(),
            rings: vec![0; geometry.rings as usize * geometry.ring_size as usize],
            vips: BTreeMap::new(),
            tx_ports: Vec::new(),
            egress_vlans: BTreeMap::new(),
            conns: HashMap::new(),
            traffic: BTreeMap::new(),
            history: BTreeMap::new(),
            writes: 0,
            fail_after: None,
        }
    }

    /// Refuse every write after `n` more succeed (`None`: never refuse).
    pub fn fail_writes_after(&mut self, n: Option<usize>) {
        self.fail_after = n.map(|n| self.writes + n);
    }

    /// One ring's slots.
    pub fn ring(&self, ring_id: u32) -> &[u32] {
        let size = self.geometry.ring_size as usize;
        let start = ring_id as usize * size;
        &self.rings[start..start + size]
    }

    /// The table the datapath would use for `key` now, if the VIP is published.
    pub fn live_table(&self, key: &VipKey) -> Option<&[u32]> {
        self.vips.get(key).map(|vip| self.ring(vip.ring_id))
    }

    fn write(&mut self, map: &'static str) -> Result<(), DatapathError> {
        if self.fail_after.is_some_and(|limit| self.writes >= limit) {
            return Err(DatapathError::Refused {
                map,
                reason: "injected failure".to_owned(),
            });
        }
        self.writes += 1;
        Ok(())
    }
}

impl Datapath for MemoryDatapath {
    fn read_config(&self) -> Result<Option<DatapathConfig>, DatapathError> {
        Ok(self.config)
    }

    fn read_vips(&self) -> Result<Vec<(VipKey, VipValue)>, DatapathError> {
        Ok(self.vips.iter().map(|(k, v)| (*k, *v)).collect())
    }

    fn read_backends(&self) -> Result<Vec<(u32, Backend)>, DatapathError> {
        Ok(self
            .backends
            .iter()
            .filter(|(_, b)| b.generation != 0)
            .map(|(id, b)| (*id, *b))
            .collect())
    }

    fn read_ring(&self, ring_id: u32) -> Result<Vec<u32>, DatapathError> {
        Ok(self.ring(ring_id).to_vec())
    }

    fn geometry(&self) -> RingGeometry {
        self.geometry
    }

    fn set_config(&mut self, config: &DatapathConfig) -> Result<(), DatapathError> {
        self.write("config")?;
        self.config = Some(*config);
        Ok(())
    }

    fn set_backend(&mut self, id: u32, backend: &Backend) -> Result<(), DatapathError> {
        self.write("backends")?;
        self.backends.insert(id, *backend);
        Ok(())
    }

    fn write_ring(&mut self, ring_id: u32, slots: &[(u32, u32)]) -> Result<(), DatapathError> {
        let size = self.geometry.ring_size as usize;
        for &(slot, backend) in slots {
            self.write("rings")?;
            self.rings[ring_id as usize * size + slot as usize] = backend;
        }
        Ok(())
    }

    fn set_vip(&mut self, key: &VipKey, value: &VipValue) -> Result<(), DatapathError> {
        self.write("vips")?;
        self.vips.insert(*key, *value);
        Ok(())
    }

    fn remove_vip(&mut self, key: &VipKey) -> Result<(), DatapathError> {
        self.write("vips")?;
        self.vips.remove(key);
        Ok(())
    }

    fn add_tx_port(&mut self, ifindex: u32) -> Result<(), DatapathError> {
        self.write("tx_ports")?;
        if !self.tx_ports.contains(&ifindex) {
            self.tx_ports.push(ifindex);
        }
        Ok(())
    }

    fn remove_tx_port(&mut self, ifindex: u32) -> Result<(), DatapathError> {
        self.write("tx_ports")?;
        self.tx_ports.retain(|&i| i != ifindex);
        Ok(())
    }

    fn tx_ports(&self) -> Result<Vec<u32>, DatapathError> {
        Ok(self.tx_ports.clone())
    }

    fn set_egress_vlan(&mut self, ifindex: u32, vlan_id: Option<u16>) -> Result<(), DatapathError> {
        self.write("egress_vlans")?;
        match vlan_id {
            Some(id) => self.egress_vlans.insert(ifindex, id),
            None => self.egress_vlans.remove(&ifindex),
        };
        Ok(())
    }

    fn egress_vlans(&self) -> Result<BTreeMap<u32, u16>, DatapathError> {
        Ok(self.egress_vlans.clone())
    }

    fn counters(&self) -> Result<Vec<u64>, DatapathError> {
        Ok(vec![0; Counter::COUNT as usize])
    }

    fn history(&self, slot: u32) -> Result<TrafficCounters, DatapathError> {
        Ok(self.history.get(&slot).copied().unwrap_or_default())
    }

    fn set_history(&mut self, slot: u32, traffic: &TrafficCounters) -> Result<(), DatapathError> {
        self.write("history")?;
        self.history.insert(slot, *traffic);
        Ok(())
    }

    fn backend_traffic(&self, backend_id: u32) -> Result<TrafficCounters, DatapathError> {
        Ok(self.traffic.get(&backend_id).copied().unwrap_or_default())
    }

    fn reset_traffic(&mut self, backend_id: u32) -> Result<(), DatapathError> {
        self.write("stats")?;
        self.traffic.remove(&backend_id);
        Ok(())
    }

    fn lookup_conn(&self, flow: &FlowKey, vip_id: u16) -> Result<Option<ConnValue>, DatapathError> {
        Ok(self.conns.get(&(*flow, vip_id)).copied())
    }
}
