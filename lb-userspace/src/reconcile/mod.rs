//! Makes the datapath's maps match a desired [`state`](crate::state): the only writer of the
//! VIP, ring and backend maps.
//!
//! A listener owns a VIP id, two rings (live and spare) and one backend id per backend of its
//! pool (whose counters are its traffic: see [`Snapshot`]). Changing a listener's pool, in this order:
//!
//! 1. new backends get an id, a fresh generation and a map entry marked serving;
//! 2. the new Maglev table is written into the *spare* ring, only the slots that differ from
//!    what that ring holds (its shadow copy is kept here);
//! 3. one write of the VIP entry flips the live ring to the spare one: packets see the old
//!    table or the new one, never a mix;
//! 4. removed backends are marked not serving: their established flows are placed afresh by
//!    the new table on their next packet (`conn_stale`), instead of going to a backend that
//!    left the pool.
//!
//! If step 2 or 3 fails, the live table is untouched, the ids taken in step 1 are given back and
//! the spare ring is marked unknown (rewritten whole next time): a failed update leaves nothing
//! half-written live. Each listener is applied on its own; an error names the listener that
//! failed, and the listeners before it in the same call stay applied.

mod adopt;
mod ids;
mod markers;
mod multipath;
mod stats;
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::net::IpAddr;

use lb_common::{
    abi::{
        AddrBe, BACKEND_F_MULTIPATH, BACKEND_F_SERVING, Backend, CONFIG_F_CAPTURE, DatapathConfig,
        MAX_GENERATION, RING_EMPTY, VipValue,
    },
    maps::{MAX_BACKENDS, MAX_VIPS},
};
use tracing::{debug, info, warn};

pub use self::stats::{ListenerTraffic, Snapshot};
use self::{
    ids::{IdPool, Pool},
    markers::Marker,
    stats::Retired,
};
use crate::{
    datapath::{Datapath, DatapathError},
    maglev,
    state::{Listener, addr_be},
};

/// Why a change was not applied.
#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    #[error("listener {listener}: {source}")]
    Datapath {
        listener: String,
        #[source]
        source: DatapathError,
    },
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    Capacity(String),
}

/// A backend as applied: its id and generation in the maps.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AppliedBackend {
    pub id: u32,
    pub generation: u32,
    pub weight: u32,
    /// Whether its map entry says it serves (its established flows stay on it).
    pub serving: bool,
}

/// A listener as applied.
#[derive(Clone, Debug)]
pub struct AppliedListener {
    pub listener: Listener,
    pub vip_id: u32,
    rings: [u32; 2],
    /// Which of `rings` is live.
    live: usize,
    pub backends: BTreeMap<IpAddr, AppliedBackend>,
    /// A digest of the live table by backend address ([`table_digest`]): the same on every
    /// node with the same configuration and backend states, whatever ids each node gave.
    pub digest: String,
}

impl AppliedListener {
    /// The ring the datapath reads now.
    pub fn live_ring(&self) -> u32 {
        self.rings[self.live]
    }
}

/// The owner of the maps' contents.
#[derive(Debug)]
pub struct Reconciler<D> {
    datapath: D,
    config: DatapathConfig,
    /// A packet capture is on (`lb capture`).
    capture: bool,
    listeners: BTreeMap<String, AppliedListener>,
    vip_ids: IdPool,
    ring_ids: IdPool,
    backend_ids: IdPool,
    /// Last generation handed out, per backend id.
    generations: Vec<u32>,
    /// What each ring holds, if known.
    shadows: Vec<Option<Vec<u32>>>,
    /// The address markers: listeners per VIP address, and whether the marker is written.
    markers: BTreeMap<(AddrBe, u8), Marker>,
    /// Addresses assigned to this host (see `markers`).
    local_addresses: std::collections::BTreeSet<(AddrBe, u8)>,
    /// Backends whose route has several next hops (see `multipath`).
    multipath: std::collections::BTreeSet<IpAddr>,
    /// Traffic of retired backend ids.
    retired: Retired,
}

impl<D: Datapath> Reconciler<D> {
    /// Takes over `datapath`, writing `config` first. The maps are assumed new (zeroed).
    pub fn new(mut datapath: D, config: DatapathConfig) -> Result<Self, ReconcileError> {
        let geometry = datapath.geometry();
        if config.ring_size != geometry.ring_size {
            return Err(ReconcileError::Invalid(format!(
                "ring size {} does not match the ring map's {}",
                config.ring_size, geometry.ring_size
            )));
        }
        datapath
            .set_config(&config)
            .map_err(|source| ReconcileError::Datapath {
                listener: "(datapath configuration)".to_owned(),
                source,
            })?;
        let zeroed = vec![0; geometry.ring_size as usize];
        Ok(Self {
            datapath,
            config,
            capture: false,
            listeners: BTreeMap::new(),
            vip_ids: IdPool::new(MAX_VIPS),
            ring_ids: IdPool::new(geometry.rings),
            backend_ids: IdPool::new(MAX_BACKENDS),
            generations: vec![0; MAX_BACKENDS as usize],
            shadows: vec![Some(zeroed); geometry.rings as usize],
            markers: BTreeMap::new(),
            local_addresses: std::collections::BTreeSet::new(),
            multipath: std::collections::BTreeSet::new(),
            retired: Retired::default(),
        })
    }

    pub fn datapath(&self) -> &D {
        &self.datapath
    }

    pub fn datapath_mut(&mut self) -> &mut D {
        &mut self.datapath
    }

    /// Gives the datapath back (a restart in tests: another reconciler adopts it).
    pub fn into_datapath(self) -> D {
        self.datapath
    }

    pub fn config(&self) -> &DatapathConfig {
        &self.config
    }

    /// Writes a new datapath configuration (outer sources, MTU, next hop). The ring size and
    /// the hash seed shape the tables and cannot change here.
    pub fn set_config(&mut self, config: DatapathConfig) -> Result<(), ReconcileError> {
        if config.ring_size != self.config.ring_size || config.hash_seed != self.config.hash_seed {
            return Err(ReconcileError::Invalid(
                "the ring size and the hash seed cannot change while the daemon runs".to_owned(),
            ));
        }
        self.write_config(&config)?;
        self.config = config;
        Ok(())
    }

    /// Turns the datapath's packet capture on or off (`CONFIG_F_CAPTURE`, kept across later
    /// configuration changes). Off is recorded even if the write fails: the next write of the
    /// configuration clears the bit.
    pub fn set_capture(&mut self, on: bool) -> Result<(), ReconcileError> {
        self.capture = on;
        let config = self.config;
        self.write_config(&config)
            .inspect_err(|_| self.capture = false)
    }

    /// Whether a capture is on.
    pub fn capture(&self) -> bool {
        self.capture
    }

    /// Writes `config` to the datapath, with the capture bit as it stands.
    fn write_config(&mut self, config: &DatapathConfig) -> Result<(), ReconcileError> {
        let mut config = *config;
        config.flags &= !CONFIG_F_CAPTURE;
        if self.capture {
            config.flags |= CONFIG_F_CAPTURE;
        }
        self.datapath
            .set_config(&config)
            .map_err(|source| ReconcileError::Datapath {
                listener: "(datapath configuration)".to_owned(),
                source,
            })
    }

    /// The applied listeners, by name.
    pub fn listeners(&self) -> &BTreeMap<String, AppliedListener> {
        &self.listeners
    }

    /// The live Maglev table of a listener (backend ids), as last written.
    pub fn live_table(&self, name: &str) -> Option<&[u32]> {
        let listener = self.listeners.get(name)?;
        self.shadows[listener.live_ring() as usize].as_deref()
    }

    /// Makes the maps match `desired`: listeners not in it are removed, the others added or
    /// updated. Checks the whole of `desired` before writing anything.
    pub fn apply(&mut self, desired: &[Listener]) -> Result<(), ReconcileError> {
        self.check(desired)?;
        let stale: Vec<String> = self
            .listeners
            .iter()
            .filter(|(name, applied)| {
                !desired
                    .iter()
                    .any(|l| &l.name == *name && l.vip == applied.listener.vip)
            })
            .map(|(name, _)| name.clone())
            .collect();
        for name in stale {
            self.remove_listener(&name)?;
        }
        for listener in desired {
            let unchanged = self
                .listeners
                .get(&listener.name)
                .is_some_and(|applied| applied.listener == *listener);
            if !unchanged {
                self.publish(listener)?;
            }
        }
        self.remove_unused_markers();
        Ok(())
    }

    /// Rejects a desired state that breaks an invariant or does not fit the maps.
    fn check(&self, desired: &[Listener]) -> Result<(), ReconcileError> {
        let mut names = BTreeMap::new();
        let mut vips = BTreeMap::new();
        for listener in desired {
            if names.insert(listener.name.as_str(), ()).is_some() {
                return Err(ReconcileError::Invalid(format!(
                    "two listeners are named {:?}",
                    listener.name
                )));
            }
            if let Some(other) = vips.insert(listener.vip, listener.name.as_str()) {
                return Err(ReconcileError::Invalid(format!(
                    "listeners {other:?} and {:?} both use {}",
                    listener.name, listener.vip
                )));
            }
            let mut addresses = BTreeMap::new();
            for target in &listener.targets {
                if addresses.insert(target.address, ()).is_some() {
                    return Err(ReconcileError::Invalid(format!(
                        "listener {:?} lists backend {} twice",
                        listener.name, target.address
                    )));
                }
                if target.address.is_ipv4() != listener.vip.address.is_ipv4() {
                    return Err(ReconcileError::Invalid(format!(
                        "listener {:?} is {} but backend {} is not: IP-in-IP keeps the family",
                        listener.name,
                        if listener.vip.address.is_ipv4() {
                            "IPv4"
                        } else {
                            "IPv6"
                        },
                        target.address
                    )));
                }
            }
        }
        let capacity = |what: &str, needed: usize, room: usize| {
            if needed > room {
                Err(ReconcileError::Capacity(format!(
                    "{needed} {what} needed, the maps have room for {room}"
                )))
            } else {
                Ok(())
            }
        };
        capacity("listeners", desired.len(), self.ring_ids.capacity() / 2)?;
        capacity("listeners", desired.len(), self.vip_ids.capacity())?;
        // A listener's old backends keep their ids while its new ones are added, so the ids
        // in use now plus the backends that are new must fit.
        let in_use: usize = self.listeners.values().map(|l| l.backends.len()).sum();
        let new: usize = desired
            .iter()
            .map(|l| {
                let applied = self.listeners.get(&l.name);
                l.targets
                    .iter()
                    .filter(|t| !applied.is_some_and(|a| a.backends.contains_key(&t.address)))
                    .count()
            })
            .sum();
        capacity("backend ids", in_use + new, self.backend_ids.capacity())
    }

    /// Adds or updates one listener (see the module documentation for the order).
    fn publish(&mut self, listener: &Listener) -> Result<(), ReconcileError> {
        let previous = self.listeners.get(&listener.name).cloned();
        let mut taken = Vec::new();
        let result = self.write_listener(listener, previous.as_ref(), &mut taken);
        match result {
            Ok(applied) => {
                if let Some(previous) = previous {
                    self.retire_backends(&previous, Some(&applied));
                }
                self.listeners.insert(listener.name.clone(), applied);
                Ok(())
            }
            Err(error) => {
                for (pool, id) in taken {
                    self.pool(pool).free(id);
                }
                Err(error)
            }
        }
    }

    fn pool(&mut self, pool: Pool) -> &mut IdPool {
        match pool {
            Pool::Vip => &mut self.vip_ids,
            Pool::Ring => &mut self.ring_ids,
            Pool::Backend => &mut self.backend_ids,
        }
    }

    /// Takes an id from `pool`, recording it in `taken`.
    fn take(&mut self, pool: Pool, taken: &mut Vec<(Pool, u32)>) -> Result<u32, ReconcileError> {
        let id = self
            .pool(pool)
            .alloc()
            .ok_or_else(|| ReconcileError::Capacity(format!("no free {}", pool.name())))?;
        taken.push((pool, id));
        Ok(id)
    }

    fn write_listener(
        &mut self,
        listener: &Listener,
        previous: Option<&AppliedListener>,
        taken: &mut Vec<(Pool, u32)>,
    ) -> Result<AppliedListener, ReconcileError> {
        let name = listener.name.clone();
        let failed = move |source| ReconcileError::Datapath {
            listener: name,
            source,
        };
        let (vip_id, rings, live) = match previous {
            Some(p) => (p.vip_id, p.rings, Some(p.live)),
            None => {
                let vip_id = self.take(Pool::Vip, taken)?;
                let rings = [self.take(Pool::Ring, taken)?, self.take(Pool::Ring, taken)?];
                (vip_id, rings, None)
            }
        };
        let mut backends = BTreeMap::new();
        // Backends that stop serving are marked only after the flip: until then the live
        // table may still name them.
        let mut stopping = Vec::new();
        for target in &listener.targets {
            let flags = if target.serving { BACKEND_F_SERVING } else { 0 };
            let applied = match previous.and_then(|p| p.backends.get(&target.address)) {
                Some(existing) => {
                    if target.serving && !existing.serving {
                        self.write_backend(
                            existing.id,
                            target.address,
                            existing.generation,
                            flags,
                            vip_id,
                        )
                        .map_err(failed.clone())?;
                    }
                    if !target.serving && existing.serving {
                        stopping.push((target.address, *existing));
                    }
                    AppliedBackend {
                        weight: target.weight,
                        serving: target.serving || existing.serving,
                        ..*existing
                    }
                }
                None => {
                    let id = self.take(Pool::Backend, taken)?;
                    let generation = self.next_generation(id);
                    self.write_backend(id, target.address, generation, flags, vip_id)
                        .map_err(failed.clone())?;
                    self.recycle_traffic(id).map_err(failed.clone())?;
                    AppliedBackend {
                        id,
                        generation,
                        weight: target.weight,
                        serving: target.serving,
                    }
                }
            };
            backends.insert(target.address, applied);
        }

        let (table, digest) = self.build_table(listener, &backends);
        if previous.is_none_or(|p| p.digest != digest) {
            // Nodes of one deployment log (and show) the same digest for the same view.
            info!(listener = %listener.name, %digest, "live table");
        }
        let spare = live.map_or(0, |live| 1 - live);
        let ring = rings[spare];
        let writes = match &self.shadows[ring as usize] {
            Some(old) => maglev::changed_slots(old, &table),
            None => maglev::changed_slots(&vec![!0; table.len()], &table),
        };
        debug!(listener = %listener.name, ring, slots = writes.len(), "writing ring");
        self.shadows[ring as usize] = None;
        self.datapath
            .write_ring(ring, &writes)
            .map_err(failed.clone())?;
        self.shadows[ring as usize] = Some(table);

        let key = listener.vip.key();
        self.write_marker(&key).map_err(failed.clone())?;
        let value = VipValue {
            vip_id,
            ring_id: ring,
            flags: 0,
            _pad: 0,
        };
        self.datapath.set_vip(&key, &value).map_err(failed)?;
        if previous.is_none() {
            self.marker(&key).listeners += 1;
        }
        for (address, backend) in stopping {
            match self.write_backend(backend.id, address, backend.generation, 0, vip_id) {
                Ok(()) => {
                    if let Some(applied) = backends.get_mut(&address) {
                        applied.serving = false;
                    }
                }
                Err(error) => warn!(
                    listener = %listener.name, backend = %address, %error,
                    "could not mark a backend as not serving; will retry"
                ),
            }
        }
        Ok(AppliedListener {
            listener: listener.clone(),
            vip_id,
            rings,
            live: spare,
            backends,
            digest,
        })
    }

    /// The Maglev table of `listener` in backend ids, and its digest ([`table_digest`]).
    fn build_table(
        &self,
        listener: &Listener,
        backends: &BTreeMap<IpAddr, AppliedBackend>,
    ) -> (Vec<u32>, String) {
        let identities: Vec<Vec<u8>> = listener.targets.iter().map(|t| t.identity()).collect();
        let members: Vec<maglev::Member<'_>> = listener
            .targets
            .iter()
            .zip(&identities)
            .map(|(target, identity)| maglev::Member {
                identity,
                weight: target.full_weight,
                effective: target.weight.min(target.full_weight),
            })
            .collect();
        let ids: Vec<u32> = listener
            .targets
            .iter()
            .map(|t| backends.get(&t.address).map_or(RING_EMPTY, |b| b.id))
            .collect();
        let slots = maglev::build_stable(&members, self.config.ring_size, self.config.hash_seed);
        let digest = table_digest(&identities, &slots);
        let table = slots
            .into_iter()
            .map(|index| {
                if index == maglev::EMPTY {
                    RING_EMPTY
                } else {
                    ids[index as usize]
                }
            })
            .collect();
        (table, digest)
    }

    /// Writes backend `id` of the VIP with id `vip_id`.
    fn write_backend(
        &mut self,
        id: u32,
        address: IpAddr,
        generation: u32,
        flags: u8,
        vip_id: u32,
    ) -> Result<(), DatapathError> {
        let (addr_be, family) = addr_be(address);
        let multipath = if self.multipath.contains(&address) {
            BACKEND_F_MULTIPATH
        } else {
            0
        };
        self.datapath.set_backend(
            id,
            &Backend {
                addr_be,
                generation,
                family,
                flags: flags | multipath,
                vip_id: u16::try_from(vip_id).unwrap_or(u16::MAX),
            },
        )
    }

    /// The next generation of backend id `id`: 1 to `MAX_GENERATION`, then around again (the
    /// connection table keeps 16 bits of it).
    fn next_generation(&mut self, id: u32) -> u32 {
        let generation = &mut self.generations[id as usize];
        *generation = if *generation >= MAX_GENERATION {
            1
        } else {
            *generation + 1
        };
        *generation
    }

    /// Marks the backends of `previous` that are not in `current` as not serving and frees
    /// their ids. An id whose entry could not be updated is never reused (it may still say
    /// "serving").
    fn retire_backends(&mut self, previous: &AppliedListener, current: Option<&AppliedListener>) {
        for (address, backend) in &previous.backends {
            if current.is_some_and(|c| c.backends.contains_key(address)) {
                continue;
            }
            match self.write_backend(backend.id, *address, backend.generation, 0, previous.vip_id) {
                Ok(()) => {
                    self.note_retired(backend.id, &previous.listener.name);
                    self.backend_ids.free(backend.id);
                }
                Err(error) => warn!(
                    listener = %previous.listener.name,
                    backend = %address,
                    %error,
                    "could not retire the backend; its established flows keep going to it"
                ),
            }
        }
    }

    /// Removes a listener: unpublishes its VIP, then retires its backends.
    fn remove_listener(&mut self, name: &str) -> Result<(), ReconcileError> {
        let Some(applied) = self.listeners.get(name).cloned() else {
            return Ok(());
        };
        let key = applied.listener.vip.key();
        self.datapath
            .remove_vip(&key)
            .map_err(|source| ReconcileError::Datapath {
                listener: name.to_owned(),
                source,
            })?;
        self.listeners.remove(name);
        if let Err(error) = self.orphan_listener_traffic(applied.vip_id) {
            warn!(listener = %name, %error, "could not move the removed listener's traffic history");
        }
        self.marker(&key).listeners -= 1;
        self.retire_backends(&applied, None);
        self.ring_ids.free(applied.rings[0]);
        self.ring_ids.free(applied.rings[1]);
        self.vip_ids.free(applied.vip_id);
        Ok(())
    }
}

/// A digest of a Maglev table as the backends' identities (their addresses), slot by slot:
/// the first 8 bytes of SHA-256, in hex. Two nodes with the same configuration (addresses,
/// weights, seed, ring size) and the same backend states have the same tables, so the same
/// digest (`lb listener list`, column TABLE); the backend ids each node gave do not enter it.
pub fn table_digest(identities: &[Vec<u8>], slots: &[u32]) -> String {
    // Each slot as the rank of its backend's identity among the sorted identities: the order
    // the targets came in does not matter, only which address each slot holds.
    let mut sorted: Vec<&Vec<u8>> = identities.iter().collect();
    sorted.sort();
    sorted.dedup();
    let rank: Vec<u32> = identities
        .iter()
        .map(|identity| {
            let at = sorted.binary_search(&identity).unwrap_or(usize::MAX);
            u32::try_from(at).unwrap_or(u32::MAX)
        })
        .collect();
    let mut context = ring::digest::Context::new(&ring::digest::SHA256);
    context.update(b"lb-table-v1");
    let slot_count = u64::try_from(slots.len()).unwrap_or(u64::MAX);
    context.update(&slot_count.to_be_bytes());
    for identity in &sorted {
        let len = u8::try_from(identity.len()).unwrap_or(u8::MAX);
        context.update(&[len]);
        context.update(identity);
    }
    let mut bytes = Vec::with_capacity(slots.len() * 4);
    for &slot in slots {
        let ranked = rank.get(slot as usize).copied().unwrap_or(u32::MAX);
        bytes.extend_from_slice(&ranked.to_be_bytes());
    }
    context.update(&bytes);
    context
        .finish()
        .as_ref()
        .iter()
        .take(8)
        .map(|b| format!("{b:02x}"))
        .collect()
}
