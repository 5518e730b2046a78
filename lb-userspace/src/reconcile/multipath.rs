//! Backends behind multipath routes: their entries carry `BACKEND_F_MULTIPATH`, so that the
//! datapath asks the FIB for every packet to them instead of caching one next hop per backend
//! (which would move all of a backend's flows from one ECMP next hop to another whenever the
//! cache is refreshed). Which routes are multipath is the daemon's to find out (`host`).

use std::{collections::BTreeSet, net::IpAddr};

use super::Reconciler;
use crate::datapath::{Datapath, DatapathError};

impl<D: Datapath> Reconciler<D> {
    /// Makes `backends` the ones whose route is multipath, rewriting the entries of those that
    /// change. Returns the backends whose entries changed.
    pub fn set_multipath(
        &mut self,
        backends: BTreeSet<IpAddr>,
    ) -> Result<Vec<IpAddr>, DatapathError> {
        let changed: BTreeSet<IpAddr> = self
            .multipath
            .symmetric_difference(&backends)
            .copied()
            .collect();
        self.multipath = backends;
        let entries: Vec<(u32, IpAddr, u32, bool, u32)> = self
            .listeners
            .values()
            .flat_map(|listener| {
                listener
                    .backends
                    .iter()
                    .filter(|(address, _)| changed.contains(address))
                    .map(|(address, b)| (b.id, *address, b.generation, b.serving, listener.vip_id))
            })
            .collect();
        for (id, address, generation, serving, vip_id) in entries {
            let flags = if serving {
                lb_common::abi::BACKEND_F_SERVING
            } else {
                0
            };
            self.write_backend(id, address, generation, flags, vip_id)?;
        }
        Ok(changed.into_iter().collect())
    }

    /// Whether the entry of `address` is marked multipath.
    pub fn is_multipath(&self, address: IpAddr) -> bool {
        self.multipath.contains(&address)
    }
}
