//! The datapath's tables read back from a daemon's pin directory, to check that a refused
//! change wrote nothing.
//!
//! [`Tables::read`] opens the pinned maps by name (`lb_common::maps`) with aya and copies out
//! everything userspace programs: the configuration entry, both VIP hash maps, the backend
//! array and the whole ring array. Maps the datapath itself writes (the VIP-lookup and
//! next-hop caches, the connection tables, the counters) are left out: traffic changes them.
//! [`Tables::differences`] lists what differs between two reads, briefly enough for a panic
//! message.

use std::{collections::HashMap, path::Path};

use aya::maps::{Array, Map, MapData};
use lb_common::{
    abi::{Backend, DatapathConfig, VipKeyV4, VipKeyV6, VipValue},
    maps::{BACKENDS, CONFIG, RINGS, VIPS_V4, VIPS_V6},
};

/// Everything userspace writes into the datapath's maps.
#[derive(Debug, PartialEq, Eq)]
pub struct Tables {
    pub config: DatapathConfig,
    pub vips_v4: HashMap<VipKeyV4, VipValue>,
    pub vips_v6: HashMap<VipKeyV6, VipValue>,
    pub backends: Vec<Backend>,
    pub rings: Vec<u32>,
}

/// How many differing entries [`Tables::differences`] names per map.
const SHOWN: usize = 5;

impl Tables {
    /// Reads the tables pinned under `pin_dir`.
    pub fn read(pin_dir: &Path) -> Self {
        let config: Vec<DatapathConfig> = read_array(pin_dir, CONFIG);
        Self {
            config: config[0],
            vips_v4: read_hash(pin_dir, VIPS_V4),
            vips_v6: read_hash(pin_dir, VIPS_V6),
            backends: read_array(pin_dir, BACKENDS),
            rings: read_array(pin_dir, RINGS),
        }
    }

    /// What differs from `other`, one line per map (empty if nothing does).
    pub fn differences(&self, other: &Self) -> Vec<String> {
        let mut out = Vec::new();
        if self.config != other.config {
            out.push(format!(
                "{CONFIG}: {:?} became {:?}",
                self.config, other.config
            ));
        }
        if self.vips_v4 != other.vips_v4 {
            out.push(format!(
                "{VIPS_V4}: {:?} became {:?}",
                self.vips_v4, other.vips_v4
            ));
        }
        if self.vips_v6 != other.vips_v6 {
            out.push(format!(
                "{VIPS_V6}: {:?} became {:?}",
                self.vips_v6, other.vips_v6
            ));
        }
        out.extend(array_difference(BACKENDS, &self.backends, &other.backends));
        out.extend(array_difference(RINGS, &self.rings, &other.rings));
        out
    }
}

/// Opens the map pinned as `name` under `pin_dir`.
fn open_pinned(pin_dir: &Path, name: &str) -> Map {
    let path = pin_dir.join(name);
    let data = MapData::from_pin(&path)
        .unwrap_or_else(|e| panic!("opening the pinned map {}: {e}", path.display()));
    Map::from_map_data(data).unwrap_or_else(|e| panic!("the map {}: {e}", path.display()))
}

/// Every element of the pinned array `name`.
fn read_array<T: aya::Pod>(pin_dir: &Path, name: &str) -> Vec<T> {
    let array: Array<MapData, T> = Array::try_from(open_pinned(pin_dir, name))
        .unwrap_or_else(|e| panic!("{name} is not an array of the expected type: {e}"));
    array
        .iter()
        .collect::<Result<Vec<T>, _>>()
        .unwrap_or_else(|e| panic!("reading {name}: {e}"))
}

/// Every entry of the pinned hash map `name`.
fn read_hash<K, V>(pin_dir: &Path, name: &str) -> HashMap<K, V>
where
    K: aya::Pod + Eq + std::hash::Hash,
    V: aya::Pod,
{
    let map: aya::maps::HashMap<MapData, K, V> =
        aya::maps::HashMap::try_from(open_pinned(pin_dir, name))
            .unwrap_or_else(|e| panic!("{name} is not a hash map of the expected types: {e}"));
    map.iter()
        .collect::<Result<HashMap<K, V>, _>>()
        .unwrap_or_else(|e| panic!("reading {name}: {e}"))
}

/// The first few indices where two reads of an array differ, if any.
fn array_difference<T: PartialEq + std::fmt::Debug>(
    name: &str,
    before: &[T],
    after: &[T],
) -> Option<String> {
    if before.len() != after.len() {
        return Some(format!(
            "{name}: {} entries became {}",
            before.len(),
            after.len()
        ));
    }
    let differing: Vec<usize> = (0..before.len())
        .filter(|&i| before[i] != after[i])
        .collect();
    if differing.is_empty() {
        return None;
    }
    let shown: Vec<String> = differing
        .iter()
        .take(SHOWN)
        .map(|&i| format!("[{i}] {:?} -> {:?}", before[i], after[i]))
        .collect();
    Some(format!(
        "{name}: {} entries differ, e.g. {}",
        differing.len(),
        shown.join(", ")
    ))
}
