//! [`AyaDatapath`]: the [`Datapath`] over the kernel's maps, through aya.

use std::collections::BTreeMap;

use aya::{
    Ebpf,
    maps::{
        Array, DevMapHash, HashMap, IterableMap as _, Map, MapData, MapError, PerCpuArray,
        PerCpuValues,
    },
    util::nr_cpus,
};
use lb_common::{
    abi::{
        Backend, ConnValue, DatapathConfig, EgressVlan, FAMILY_V4, FlowKey, TrafficCounters,
        VIP_CACHE_SIZE, VipCacheEntry, VipKey, VipKeyV4, VipKeyV6, VipValue,
    },
    conn::{self, BucketV4, BucketV6, WAYS},
    counters::Counter,
    maps as names,
};

use super::{Datapath, DatapathError, RingGeometry};

/// The balancer's maps, taken out of a loaded [`Ebpf`] object.
pub struct AyaDatapath {
    geometry: RingGeometry,
    /// The configuration last written, and the VIP epoch it carries (owned here: every write
    /// of the configuration or of a VIP moves it forward).
    config: Option<DatapathConfig>,
    vip_epoch: u32,
    /// The connection tables' hash seed and bucket mask, which every configuration written
    /// carries (see [`DatapathConfig::conn_seed`]).
    conn_seed: u32,
    conn_bucket_mask: u32,
    vips_v4: HashMap<MapData, VipKeyV4, VipValue>,
    vips_v6: HashMap<MapData, VipKeyV6, VipValue>,
    rings: Array<MapData, u32>,
    backends: Array<MapData, Backend>,
    conns_v4: Array<MapData, BucketV4>,
    conns_v6: Array<MapData, BucketV6>,
    config_map: Array<MapData, DatapathConfig>,
    counters: PerCpuArray<MapData, u64>,
    backend_stats: PerCpuArray<MapData, TrafficCounters>,
    history: Array<MapData, TrafficCounters>,
    tx_ports: DevMapHash<MapData>,
    egress_vlans: HashMap<MapData, u32, EgressVlan>,
    vip_cache: PerCpuArray<MapData, VipCacheEntry>,
}

impl std::fmt::Debug for AyaDatapath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AyaDatapath")
            .field("geometry", &self.geometry)
            .finish_non_exhaustive()
    }
}

/// A random seed for new connection tables, never zero.
fn random_seed() -> Result<u32, DatapathError> {
    use ring::rand::SecureRandom as _;
    let random = ring::rand::SystemRandom::new();
    let mut bytes = [0; 4];
    loop {
        random
            .fill(&mut bytes)
            .map_err(|_| DatapathError::Refused {
                map: names::CONN_SEED,
                reason: "the system gave no random seed for the connection tables".to_owned(),
            })?;
        let seed = u32::from_ne_bytes(bytes);
        if seed != 0 {
            return Ok(seed);
        }
    }
}

fn take(ebpf: &mut Ebpf, name: &'static str) -> Result<Map, DatapathError> {
    ebpf.take_map(name).ok_or(DatapathError::MissingMap(name))
}

fn err(map: &'static str) -> impl FnOnce(MapError) -> DatapathError {
    move |source| DatapathError::Map { map, source }
}

macro_rules! typed {
    ($ebpf:expr, $name:expr) => {
        take($ebpf, $name)?.try_into().map_err(err($name))?
    };
}

impl AyaDatapath {
    /// Takes the balancer's maps out of `ebpf` (the programs stay in it).
    pub fn from_ebpf(ebpf: &mut Ebpf, geometry: RingGeometry) -> Result<Self, DatapathError> {
        let config_map: Array<MapData, DatapathConfig> = typed!(ebpf, names::CONFIG);
        let vip_cache: PerCpuArray<MapData, VipCacheEntry> = typed!(ebpf, names::VIP_CACHE);
        // The VIP epoch goes on from the adopted datapath's, and past every epoch a CPU's VIP
        // cache holds (after an upgrade the configuration map is new but the cache may be
        // adopted): counting up from below one of them would, one day, make its old answer
        // look current again.
        let adopted = config_map.get(&0, 0).map_err(err(names::CONFIG))?;
        let mut vip_epoch = adopted.vip_epoch;
        for slot in 0..VIP_CACHE_SIZE {
            let entries = vip_cache.get(&slot, 0).map_err(err(names::VIP_CACHE))?;
            for entry in entries.iter() {
                vip_epoch = vip_epoch.max(entry.epoch);
            }
        }
        let conns_v4: Array<MapData, BucketV4> = typed!(ebpf, names::CONNS_V4);
        let conns_v6: Array<MapData, BucketV6> = typed!(ebpf, names::CONNS_V6);
        let buckets = conns_v4.len();
        if !buckets.is_power_of_two() || conns_v6.len() != buckets {
            return Err(DatapathError::Refused {
                map: names::CONNS_V4,
                reason: format!(
                    "the connection tables have {buckets} and {} buckets, not one power of two",
                    conns_v6.len()
                ),
            });
        }
        // The seed stays with the tables, in a map pinned and versioned with them: zero (never
        // chosen) means the tables are new too.
        let mut seed_map: Array<MapData, u32> = typed!(ebpf, names::CONN_SEED);
        let conn_seed = match seed_map.get(&0, 0).map_err(err(names::CONN_SEED))? {
            // Tables pinned before the seed had a map of its own: the configuration has it.
            0 if adopted.conn_seed != 0 => {
                seed_map
                    .set(0, adopted.conn_seed, 0)
                    .map_err(err(names::CONN_SEED))?;
                adopted.conn_seed
            }
            0 => {
                let seed = random_seed()?;
                seed_map.set(0, seed, 0).map_err(err(names::CONN_SEED))?;
                seed
            }
            seed => seed,
        };
        Ok(Self {
            geometry,
            config: None,
            vip_epoch,
            conn_seed,
            conn_bucket_mask: buckets - 1,
            config_map,
            vips_v4: typed!(ebpf, names::VIPS_V4),
            vips_v6: typed!(ebpf, names::VIPS_V6),
            rings: typed!(ebpf, names::RINGS),
            backends: typed!(ebpf, names::BACKENDS),
            conns_v4,
            conns_v6,
            counters: typed!(ebpf, names::COUNTERS),
            backend_stats: typed!(ebpf, names::BACKEND_STATS),
            history: typed!(ebpf, names::HISTORY),
            tx_ports: typed!(ebpf, names::TX_PORTS),
            egress_vlans: typed!(ebpf, names::EGRESS_VLANS),
            vip_cache,
        })
    }

    /// Every CPU's VIP cache (see `select::lookup_vip` in the balancer): entries by slot, one
    /// list per possible CPU.
    pub fn vip_cache(&self) -> Result<Vec<Vec<VipCacheEntry>>, DatapathError> {
        let mut cpus: Vec<Vec<VipCacheEntry>> = Vec::new();
        for slot in 0..VIP_CACHE_SIZE {
            let values = self
                .vip_cache
                .get(&slot, 0)
                .map_err(err(names::VIP_CACHE))?;
            for (cpu, entry) in values.iter().enumerate() {
                if cpus.len() <= cpu {
                    cpus.resize(cpu + 1, Vec::new());
                }
                cpus[cpu].push(*entry);
            }
        }
        Ok(cpus)
    }

    /// Empties every CPU's VIP cache. A program that ran on these maps before (an earlier
    /// daemon's, until this one's replaced it) cached answers under the epochs of its own
    /// configuration map, which this daemon may not have read (after an upgrade it has a new
    /// one): none of them can match a later epoch once they are gone.
    pub fn clear_vip_cache(&mut self) -> Result<(), DatapathError> {
        for slot in 0..VIP_CACHE_SIZE {
            let empty = zeroed_per_cpu::<VipCacheEntry>(names::VIP_CACHE)?;
            self.vip_cache
                .set(slot, empty, 0)
                .map_err(err(names::VIP_CACHE))?;
        }
        Ok(())
    }

    /// The VIP epoch last written.
    pub fn vip_epoch(&self) -> u32 {
        self.vip_epoch
    }

    /// The flows each connection table holds: its slots (see `loader::conn_table_entries`).
    pub fn conn_table_entries(&self) -> u32 {
        (self.conn_bucket_mask + 1).saturating_mul(WAYS)
    }

    /// Moves the VIP epoch forward, so that no CPU answers from its VIP cache what it cached
    /// before the change. (The maps are written first: a CPU that misses its cache finds the
    /// new entry.)
    fn invalidate_vip_cache(&mut self) -> Result<(), DatapathError> {
        match self.config {
            Some(config) => self.set_config(&config),
            None => Ok(()),
        }
    }
}

/// Ring slots written per `BPF_MAP_UPDATE_BATCH` call.
const BATCH: usize = 16_384;

/// `union bpf_attr` as `BPF_MAP_*_BATCH` reads it.
#[repr(C)]
struct BatchAttr {
    in_batch: u64,
    out_batch: u64,
    keys: u64,
    values: u64,
    count: u32,
    map_fd: u32,
    elem_flags: u64,
    flags: u64,
}

const BPF_MAP_LOOKUP_BATCH: libc::c_long = 24;
const BPF_MAP_UPDATE_BATCH: libc::c_long = 26;

/// Reads `values.len()` consecutive elements of an array map from index `start`, in as few
/// `BPF_MAP_LOOKUP_BATCH` calls as the kernel allows.
fn lookup_batch(map: &MapData, start: u32, values: &mut [u32]) -> std::io::Result<()> {
    use std::os::fd::{AsFd as _, AsRawFd as _};
    let map_fd = u32::try_from(map.fd().as_fd().as_raw_fd())
        .map_err(|_| std::io::Error::other("bad map descriptor"))?;
    let mut done = 0usize;
    while done < values.len() {
        let wanted = &mut values[done..];
        let mut keys = vec![0u32; wanted.len()];
        // The batch cursor is the key before the first one wanted (none for index 0).
        let cursor = start + u32::try_from(done).unwrap_or(u32::MAX);
        let in_batch = cursor.wrapping_sub(1);
        let mut out_batch = 0u32;
        let mut attr = BatchAttr {
            in_batch: if cursor == 0 {
                0
            } else {
                &in_batch as *const u32 as u64
            },
            out_batch: &mut out_batch as *mut u32 as u64,
            keys: keys.as_mut_ptr() as u64,
            values: wanted.as_mut_ptr() as u64,
            count: u32::try_from(wanted.len()).unwrap_or(u32::MAX),
            map_fd,
            elem_flags: 0,
            flags: 0,
        };
        // SAFETY: `attr` is a valid `bpf_attr` prefix for BPF_MAP_LOOKUP_BATCH; `keys` and
        // `wanted` have room for `count` u32s, and every buffer outlives the call.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                BPF_MAP_LOOKUP_BATCH,
                &mut attr as *mut BatchAttr,
                size_of::<BatchAttr>(),
            )
        };
        let read = attr.count as usize;
        if rc < 0 && std::io::Error::last_os_error().raw_os_error() != Some(libc::ENOENT) {
            return Err(std::io::Error::last_os_error());
        }
        if read == 0 {
            return Err(std::io::Error::other(
                "the ring map ended before the ring did",
            ));
        }
        done += read;
    }
    Ok(())
}

/// Writes `values[i]` at index `keys[i]` of an array map in one system call, which a ring of
/// 65537 slots needs instead of 65537 calls.
fn update_batch(map: &MapData, keys: &[u32], values: &[u32]) -> std::io::Result<()> {
    use std::os::fd::{AsFd as _, AsRawFd as _};
    let count = u32::try_from(keys.len().min(values.len()))
        .map_err(|_| std::io::Error::other("batch too large"))?;
    let attr = BatchAttr {
        in_batch: 0,
        out_batch: 0,
        keys: keys.as_ptr() as u64,
        values: values.as_ptr() as u64,
        count,
        map_fd: u32::try_from(map.fd().as_fd().as_raw_fd())
            .map_err(|_| std::io::Error::other("bad map descriptor"))?,
        elem_flags: 0,
        flags: 0,
    };
    // SAFETY: `attr` is a valid `bpf_attr` prefix for BPF_MAP_UPDATE_BATCH (the kernel treats
    // the rest as zero); `keys` and `values` hold `count` u32s each and outlive the call.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_MAP_UPDATE_BATCH,
            &attr as *const BatchAttr,
            size_of::<BatchAttr>(),
        )
    };
    if rc < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

fn sum_traffic(values: &PerCpuValues<TrafficCounters>) -> TrafficCounters {
    values
        .iter()
        .fold(TrafficCounters::default(), |sum, v| sum.add(*v))
}

pub(crate) fn zeroed_per_cpu<T: aya::Pod + Default>(
    map: &'static str,
) -> Result<PerCpuValues<T>, DatapathError> {
    let refused = |reason: String| DatapathError::Refused { map, reason };
    let cpus = nr_cpus().map_err(|(what, error)| refused(format!("{what}: {error}")))?;
    PerCpuValues::try_from(vec![T::default(); cpus]).map_err(|error| refused(error.to_string()))
}

impl Datapath for AyaDatapath {
    fn read_config(&self) -> Result<Option<DatapathConfig>, DatapathError> {
        let config = self.config_map.get(&0, 0).map_err(err(names::CONFIG))?;
        Ok((config.ring_size != 0).then_some(config))
    }

    fn read_vips(&self) -> Result<Vec<(VipKey, VipValue)>, DatapathError> {
        let mut vips = Vec::new();
        for entry in self.vips_v4.iter() {
            let (key, value) = entry.map_err(err(names::VIPS_V4))?;
            let vip = VipKey {
                addr_be: [key.addr_be, 0, 0, 0],
                port_be: key.port_be,
                proto: key.proto,
                family: FAMILY_V4,
            };
            vips.push((vip, value));
        }
        for entry in self.vips_v6.iter() {
            let (key, value) = entry.map_err(err(names::VIPS_V6))?;
            let vip = VipKey {
                addr_be: key.addr_be,
                port_be: key.port_be,
                proto: key.proto,
                family: lb_common::abi::FAMILY_V6,
            };
            vips.push((vip, value));
        }
        Ok(vips)
    }

    fn read_backends(&self) -> Result<Vec<(u32, Backend)>, DatapathError> {
        let mut backends = Vec::new();
        for (id, entry) in (0u32..).zip(self.backends.iter()) {
            let backend = entry.map_err(err(names::BACKENDS))?;
            if backend.generation != 0 {
                backends.push((id, backend));
            }
        }
        Ok(backends)
    }

    fn read_ring(&self, ring_id: u32) -> Result<Vec<u32>, DatapathError> {
        let size = self.geometry.ring_size;
        let start = ring_id * size;
        let mut values = vec![0u32; size as usize];
        lookup_batch(self.rings.map(), start, &mut values).map_err(|io_error| {
            DatapathError::Map {
                map: names::RINGS,
                source: MapError::SyscallError(aya::sys::SyscallError {
                    call: "bpf_map_lookup_batch",
                    io_error,
                }),
            }
        })?;
        Ok(values)
    }

    fn geometry(&self) -> RingGeometry {
        self.geometry
    }

    fn set_config(&mut self, config: &DatapathConfig) -> Result<(), DatapathError> {
        self.vip_epoch = self.vip_epoch.wrapping_add(1);
        let config = DatapathConfig {
            vip_epoch: self.vip_epoch,
            conn_seed: self.conn_seed,
            conn_bucket_mask: self.conn_bucket_mask,
            ..*config
        };
        self.config_map
            .set(0, config, 0)
            .map_err(err(names::CONFIG))?;
        self.config = Some(config);
        Ok(())
    }

    fn set_backend(&mut self, id: u32, backend: &Backend) -> Result<(), DatapathError> {
        self.backends
            .set(id, backend, 0)
            .map_err(err(names::BACKENDS))
    }

    fn write_ring(&mut self, ring_id: u32, slots: &[(u32, u32)]) -> Result<(), DatapathError> {
        let base = ring_id * self.geometry.ring_size;
        let keys: Vec<u32> = slots.iter().map(|&(slot, _)| base + slot).collect();
        let values: Vec<u32> = slots.iter().map(|&(_, backend)| backend).collect();
        for (keys, values) in keys.chunks(BATCH).zip(values.chunks(BATCH)) {
            update_batch(self.rings.map(), keys, values).map_err(|io_error| {
                DatapathError::Map {
                    map: names::RINGS,
                    source: MapError::SyscallError(aya::sys::SyscallError {
                        call: "bpf_map_update_batch",
                        io_error,
                    }),
                }
            })?;
        }
        Ok(())
    }

    fn set_vip(&mut self, key: &VipKey, value: &VipValue) -> Result<(), DatapathError> {
        if key.family == FAMILY_V4 {
            self.vips_v4
                .insert(key.v4(), value, 0)
                .map_err(err(names::VIPS_V4))?;
        } else {
            self.vips_v6
                .insert(key.v6(), value, 0)
                .map_err(err(names::VIPS_V6))?;
        }
        self.invalidate_vip_cache()
    }

    fn remove_vip(&mut self, key: &VipKey) -> Result<(), DatapathError> {
        if key.family == FAMILY_V4 {
            self.vips_v4
                .remove(&key.v4())
                .map_err(err(names::VIPS_V4))?;
        } else {
            self.vips_v6
                .remove(&key.v6())
                .map_err(err(names::VIPS_V6))?;
        }
        self.invalidate_vip_cache()
    }

    fn add_tx_port(&mut self, ifindex: u32) -> Result<(), DatapathError> {
        self.tx_ports
            .insert(ifindex, ifindex, None, 0)
            .map_err(|error| DatapathError::Refused {
                map: names::TX_PORTS,
                reason: error.to_string(),
            })
    }

    fn remove_tx_port(&mut self, ifindex: u32) -> Result<(), DatapathError> {
        self.tx_ports.remove(ifindex).map_err(err(names::TX_PORTS))
    }

    fn history(&self, slot: u32) -> Result<TrafficCounters, DatapathError> {
        self.history.get(&slot, 0).map_err(err(names::HISTORY))
    }

    fn set_history(&mut self, slot: u32, traffic: &TrafficCounters) -> Result<(), DatapathError> {
        self.history
            .set(slot, *traffic, 0)
            .map_err(err(names::HISTORY))
    }

    fn tx_ports(&self) -> Result<Vec<u32>, DatapathError> {
        self.tx_ports
            .keys()
            .collect::<Result<Vec<u32>, _>>()
            .map_err(err(names::TX_PORTS))
    }

    fn set_egress_vlan(&mut self, ifindex: u32, vlan_id: Option<u16>) -> Result<(), DatapathError> {
        match vlan_id {
            Some(vlan_id) => self
                .egress_vlans
                .insert(ifindex, EgressVlan { vlan_id, _pad: 0 }, 0),
            None => match self.egress_vlans.remove(&ifindex) {
                Err(MapError::KeyNotFound) => Ok(()),
                other => other,
            },
        }
        .map_err(err(names::EGRESS_VLANS))
    }

    fn egress_vlans(&self) -> Result<BTreeMap<u32, u16>, DatapathError> {
        self.egress_vlans
            .iter()
            .map(|entry| entry.map(|(ifindex, vlan)| (ifindex, vlan.vlan_id)))
            .collect::<Result<_, _>>()
            .map_err(err(names::EGRESS_VLANS))
    }

    fn counters(&self) -> Result<Vec<u64>, DatapathError> {
        Counter::ALL
            .iter()
            .map(|counter| {
                let values = self
                    .counters
                    .get(&counter.index(), 0)
                    .map_err(err(names::COUNTERS))?;
                Ok(values.iter().copied().fold(0u64, u64::wrapping_add))
            })
            .collect()
    }

    fn backend_traffic(&self, backend_id: u32) -> Result<TrafficCounters, DatapathError> {
        let values = self
            .backend_stats
            .get(&backend_id, 0)
            .map_err(err(names::BACKEND_STATS))?;
        Ok(sum_traffic(&values))
    }

    fn reset_traffic(&mut self, backend_id: u32) -> Result<(), DatapathError> {
        let zero = zeroed_per_cpu(names::BACKEND_STATS)?;
        self.backend_stats
            .set(backend_id, zero, 0)
            .map_err(err(names::BACKEND_STATS))
    }

    fn lookup_conn(&self, flow: &FlowKey, vip_id: u16) -> Result<Option<ConnValue>, DatapathError> {
        let (seed, mask) = (self.conn_seed, self.conn_bucket_mask);
        let found = if flow.family == FAMILY_V4 {
            let key = flow.conn_v4(vip_id).bits();
            let hash = conn::hash_v4(key, seed);
            let bucket = self
                .conns_v4
                .get(&conn::bucket_of(hash, mask), 0)
                .map_err(err(names::CONNS_V4))?;
            conn::find(&bucket, &key, conn::tag_of(hash))
        } else {
            let key = flow.conn_v6(vip_id);
            let hash = conn::hash_v6(&key, seed);
            let bucket = self
                .conns_v6
                .get(&conn::bucket_of(hash, mask), 0)
                .map_err(err(names::CONNS_V6))?;
            conn::find(&bucket, &key, conn::tag_of(hash))
        };
        Ok(found.map(|(_, bits)| conn::unpack(bits).0))
    }
}
