//! Adoption: taking over maps an earlier daemon left pinned (a restart, an upgrade, a crash),
//! while the XDP program keeps forwarding with them.
//!
//! The maps say which VIPs are live (VIP entries: id and live ring), which backends serve
//! them (backend entries: address, generation, VIP id) and what each live table holds (the
//! rings). The reconciler rebuilds its bookkeeping from that, keeping every id and generation
//! (so the connection table's entries stay valid), and the next `apply` changes only what
//! differs from the configuration. A table that is the same (same backends, weights, seed)
//! is rewritten into the spare ring identically, so no flow moves.

use std::collections::BTreeMap;

use lb_common::abi::{
    BACKEND_F_MULTIPATH, BACKEND_F_SERVING, DatapathConfig, VIP_F_ADDRESS_MARKER, VIP_F_LOCAL,
    VipKey,
};
use tracing::info;

use super::{AppliedBackend, AppliedListener, ReconcileError, Reconciler, ids::IdPool};
use crate::{
    datapath::{Datapath, DatapathError},
    state::{Listener, Protocol, Target, Vip, addr_from_be},
};

impl<D: Datapath> Reconciler<D> {
    /// Takes over a datapath that may already serve (see the module documentation). `desired`
    /// names the adopted VIPs; a VIP it does not list is removed by the next `apply`.
    pub fn adopt(
        datapath: D,
        config: DatapathConfig,
        desired: &[Listener],
    ) -> Result<Self, ReconcileError> {
        let adopting = |source: DatapathError| ReconcileError::Datapath {
            listener: "(adopting the pinned maps)".to_owned(),
            source,
        };
        let vips = datapath.read_vips().map_err(adopting)?;
        let backends = datapath.read_backends().map_err(adopting)?;
        let mut reconciler = Self::new(datapath, config)?;
        for shadow in &mut reconciler.shadows {
            *shadow = None;
        }
        for &(id, backend) in &backends {
            if let Some(generation) = reconciler.generations.get_mut(id as usize) {
                *generation = backend.generation;
            }
        }
        for (key, value) in vips
            .iter()
            .filter(|(_, v)| v.flags & VIP_F_ADDRESS_MARKER == 0)
        {
            let listener =
                reconciler.adopt_vip(key, value.vip_id, value.ring_id, &backends, desired)?;
            reconciler.marker(key).listeners += 1;
            info!(
                listener = %listener.listener.name,
                backends = listener.backends.len(),
                "adopted a live VIP"
            );
            reconciler
                .listeners
                .insert(listener.listener.name.clone(), listener);
        }
        // Backends that left before the restart: their counters are still in the map, and
        // are folded into their listener's history (or the removed entry) when their id is
        // reused.
        for &(id, backend) in &backends {
            if backend.flags & BACKEND_F_SERVING == 0 {
                let owner = reconciler
                    .listeners
                    .values()
                    .find(|l| l.vip_id == u32::from(backend.vip_id))
                    .map(|l| l.listener.name.clone())
                    .unwrap_or_default();
                reconciler.note_retired(id, &owner);
            }
        }
        for (key, value) in vips
            .iter()
            .filter(|(_, v)| v.flags & VIP_F_ADDRESS_MARKER != 0)
        {
            let marker = reconciler.marker(key);
            marker.written = true;
            marker.local = value.flags & VIP_F_LOCAL != 0;
        }
        Ok(reconciler)
    }

    fn adopt_vip(
        &mut self,
        key: &VipKey,
        vip_id: u32,
        live_ring: u32,
        backends: &[(u32, lb_common::abi::Backend)],
        desired: &[Listener],
    ) -> Result<AppliedListener, ReconcileError> {
        let vip = vip_of(key)?;
        let inconsistent = |what: String| {
            ReconcileError::Invalid(format!(
                "the pinned maps are inconsistent ({what}); remove them to start afresh (`lb uninstall`)"
            ))
        };
        if !mark(&mut self.vip_ids, vip_id) {
            return Err(inconsistent(format!(
                "VIP id {vip_id} of {vip} is used twice or out of range"
            )));
        }
        if !mark(&mut self.ring_ids, live_ring) {
            return Err(inconsistent(format!(
                "ring {live_ring} of {vip} is used twice or out of range"
            )));
        }
        let spare = self.ring_ids.alloc().ok_or_else(|| {
            ReconcileError::Capacity("no free ring for an adopted VIP".to_owned())
        })?;
        let table =
            self.datapath
                .read_ring(live_ring)
                .map_err(|source| ReconcileError::Datapath {
                    listener: vip.to_string(),
                    source,
                })?;
        self.shadows[live_ring as usize] = Some(table);

        let mut applied = BTreeMap::new();
        for &(id, backend) in backends {
            if u32::from(backend.vip_id) == vip_id && backend.flags & BACKEND_F_SERVING != 0 {
                if !mark(&mut self.backend_ids, id) {
                    return Err(inconsistent(format!("backend id {id} is used twice")));
                }
                let address = addr_from_be(&backend.addr_be, backend.family);
                if backend.flags & BACKEND_F_MULTIPATH != 0 {
                    self.multipath.insert(address);
                }
                applied.insert(
                    address,
                    AppliedBackend {
                        id,
                        generation: backend.generation,
                        weight: 0,
                        serving: true,
                    },
                );
            }
        }
        let name = desired
            .iter()
            .find(|l| l.vip.key() == *key)
            .map_or_else(|| format!("(adopted {vip})"), |l| l.name.clone());
        Ok(AppliedListener {
            listener: Listener {
                name,
                vip,
                // The weights are not in the maps: the next `apply` recomputes the table,
                // which comes out the same if the configuration is the same.
                targets: applied
                    .keys()
                    .map(|&address| Target::new(address, 0))
                    .collect(),
            },
            vip_id,
            rings: [live_ring, spare],
            live: 0,
            backends: applied,
            // Computed by the next `apply`, which rebuilds the table.
            digest: String::new(),
        })
    }
}

fn mark(pool: &mut IdPool, id: u32) -> bool {
    pool.mark_used(id)
}

/// The VIP a map key stands for.
fn vip_of(key: &VipKey) -> Result<Vip, ReconcileError> {
    let protocol = match key.proto {
        lb_common::abi::PROTO_TCP => Protocol::Tcp,
        lb_common::abi::PROTO_UDP => Protocol::Udp,
        other => {
            return Err(ReconcileError::Invalid(format!(
                "a pinned VIP has protocol {other}; remove the pinned maps to start afresh"
            )));
        }
    };
    Ok(Vip {
        address: addr_from_be(&key.addr_be, key.family),
        port: u16::from_be(key.port_be),
        protocol,
    })
}
