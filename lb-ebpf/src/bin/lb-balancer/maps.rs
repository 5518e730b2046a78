//! The balancer's maps. Userspace sizes the large ones at load time (ring count and size,
//! connection-table size) and, when it has a bpffs directory, pins them all there by name
//! (`EbpfLoader::map_pin_path`); nothing is pinned by default.
//!
//! VIPs and connections are kept per address family, with compact keys: an IPv4 connection
//! slot is 16 bytes, and hashing its key costs one word, not ten.

use aya_ebpf::{
    macros::map,
    maps::{Array, DevMapHash, HashMap, PerCpuArray, RingBuf},
};
use lb_common::{
    abi::{
        Backend, CaptureFilter, CaptureState, DatapathConfig, EgressVlan, NextHop, RATE_WINDOWS,
        RateWindow, TrafficCounters, VIP_CACHE_SIZE, VipCacheEntry, VipKeyV4, VipKeyV6, VipValue,
    },
    conn::{BucketV4, BucketV6},
    counters::Counter,
    maps::{
        CAPTURE_RING_BYTES, DEFAULT_CONNS, DEFAULT_RING_SIZE, DEFAULT_RINGS, MAX_BACKENDS,
        MAX_TX_PORTS, MAX_VIPS,
    },
};
use lb_ebpf::Exit;

use crate::capture::Record;

/// IPv4 listeners (and address markers).
#[map(name = "lb_vips4_v1")]
pub static VIPS_V4: HashMap<VipKeyV4, VipValue> = HashMap::with_max_entries(2 * MAX_VIPS, 0);

/// IPv6 listeners (and address markers).
#[map(name = "lb_vips6_v1")]
pub static VIPS_V6: HashMap<VipKeyV6, VipValue> = HashMap::with_max_entries(2 * MAX_VIPS, 0);

/// Recent VIP lookups, per CPU (see `select::lookup_vip`).
#[map(name = "lb_vip_cache_v1")]
pub static VIP_CACHE: PerCpuArray<VipCacheEntry> = PerCpuArray::with_max_entries(VIP_CACHE_SIZE, 0);

/// All Maglev rings back to back: `ring_id * ring_size + slot` -> backend id.
#[map(name = "lb_rings_v1")]
pub static RINGS: Array<u32> = Array::with_max_entries(DEFAULT_RINGS * DEFAULT_RING_SIZE, 0);

/// Backend id -> where to send.
#[map(name = "lb_backends_v1")]
pub static BACKENDS: Array<Backend> = Array::with_max_entries(MAX_BACKENDS, 0);

/// The IPv4 connection table: buckets of `lb_common::conn` (userspace sizes it).
#[map(name = "lb_conns4_v3")]
pub static CONNS_V4: Array<BucketV4> = Array::with_max_entries(DEFAULT_CONNS / 8, 0);

/// The IPv6 connection table.
#[map(name = "lb_conns6_v3")]
pub static CONNS_V6: Array<BucketV6> = Array::with_max_entries(DEFAULT_CONNS / 8, 0);

/// The connection tables' hash seed. The program never reads it (it reads the configuration's
/// copy): it is here so that the loader creates and pins it beside the tables.
#[map(name = "lb_conn_seed_v3")]
pub static CONN_SEED: Array<u32> = Array::with_max_entries(1, 0);

/// Deployment-wide settings: one entry.
#[map(name = "lb_config_v3")]
pub static CONFIG: Array<DatapathConfig> = Array::with_max_entries(1, 0);

/// One counter per [`Counter`].
#[map(name = "lb_counters_v3")]
pub static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(Counter::COUNT, 0);

/// Traffic per backend id (backend ids are per listener, so listeners' traffic is their sum).
#[map(name = "lb_be_stats_v1")]
pub static BACKEND_STATS: PerCpuArray<TrafficCounters> =
    PerCpuArray::with_max_entries(MAX_BACKENDS, 0);

/// Traffic of backends that left, per VIP id, and of removed listeners. The program never reads
/// it: it is here so that the loader creates (and pins) it with the balancer's other maps;
/// userspace folds retired backends' counters into it.
#[map(name = "lb_history_v1")]
pub static HISTORY: Array<TrafficCounters> = Array::with_max_entries(MAX_VIPS + 1, 0);

/// This CPU's rate-limit windows: connection-table inserts and ICMP answers (see `rate`).
#[map(name = "lb_windows_v1")]
pub static RATE_WINDOW_MAP: PerCpuArray<RateWindow> =
    PerCpuArray::with_max_entries(RATE_WINDOWS, 0);

/// Each backend's next hop, as the FIB last gave it (per CPU).
#[map(name = "lb_next_hops_v2")]
pub static NEXT_HOPS: PerCpuArray<NextHop> = PerCpuArray::with_max_entries(MAX_BACKENDS, 0);

/// Interfaces the balancer may redirect encapsulated packets to, keyed by ifindex.
#[map(name = "lb_tx_ports_v1")]
pub static TX_PORTS: DevMapHash = DevMapHash::with_max_entries(MAX_TX_PORTS, 0);

/// Interfaces whose forwarded frames leave with a configured VLAN tag (or none), by ifindex.
#[map(name = "lb_egr_vlan_v1")]
pub static EGRESS_VLANS: HashMap<u32, EgressVlan> = HashMap::with_max_entries(MAX_TX_PORTS, 0);

/// What a running capture records (one entry; see `capture`).
#[map(name = "lb_cap_filt_v1")]
pub static CAPTURE_FILTER: Array<CaptureFilter> = Array::with_max_entries(1, 0);

/// Per CPU: what the capture noted about the packet under way, and the capture's accounting.
#[map(name = "lb_cap_state_v1")]
pub static CAPTURE_STATE: PerCpuArray<CaptureState> = PerCpuArray::with_max_entries(1, 0);

/// Per CPU: where a capture record is put together before it goes to the ring.
#[map(name = "lb_cap_buf_v1")]
pub static CAPTURE_SCRATCH: PerCpuArray<Record> = PerCpuArray::with_max_entries(1, 0);

/// Capture records, read by the daemon.
#[map(name = "lb_cap_ring_v1")]
pub static CAPTURE_RING: RingBuf = RingBuf::with_byte_size(CAPTURE_RING_BYTES, 0);

/// The datapath configuration.
#[inline(always)]
pub fn config() -> Result<&'static DatapathConfig, Exit<Counter>> {
    CONFIG.get(0).ok_or(Exit::Drop(Counter::DropMapMiss))
}
