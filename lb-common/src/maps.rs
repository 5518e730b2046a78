//! Map names and sizes.
//!
//! Names carry a version suffix: a map whose layout changes gets a new name, so a daemon never
//! adopts a pinned map of an older layout by mistake. Kernel map names are at most 15 bytes.

/// IPv4 VIPs: [`crate::abi::VipKeyV4`] -> [`crate::abi::VipValue`].
pub const VIPS_V4: &str = "lb_vips4_v1";
/// IPv6 VIPs: [`crate::abi::VipKeyV6`] -> [`crate::abi::VipValue`].
pub const VIPS_V6: &str = "lb_vips6_v1";
/// Flat array of Maglev rings: `ring_id * ring_size + slot` -> backend id.
pub const RINGS: &str = "lb_rings_v1";
/// Backend id -> [`crate::abi::Backend`].
pub const BACKENDS: &str = "lb_backends_v1";
/// IPv4 connection table: bucket index -> [`crate::conn::BucketV4`].
pub const CONNS_V4: &str = "lb_conns4_v3";
/// IPv6 connection table: bucket index -> [`crate::conn::BucketV6`].
pub const CONNS_V6: &str = "lb_conns6_v3";
/// The connection tables' hash seed (one `u32`): pinned with them and versioned with them
/// (a new table layout takes a new name here too), so the tables are never adopted without
/// the seed they were filled with. The program reads its copy in the configuration.
pub const CONN_SEED: &str = "lb_conn_seed_v3";
/// Per-CPU rate-limit windows ([`crate::abi::RateWindow`]): connection-table inserts and
/// ICMP answers.
pub const RATE_WINDOWS: &str = "lb_windows_v1";
/// Per-CPU cache of VIP lookups ([`crate::abi::VipCacheEntry`]).
pub const VIP_CACHE: &str = "lb_vip_cache_v1";
/// Per-CPU cache of each backend's next hop from the FIB.
pub const NEXT_HOPS: &str = "lb_next_hops_v2";
/// The single [`crate::abi::DatapathConfig`].
pub const CONFIG: &str = "lb_config_v3";
/// Per-CPU [`crate::counters::Counter`] values.
pub const COUNTERS: &str = "lb_counters_v3";
/// Per-CPU traffic counters per backend id.
pub const BACKEND_STATS: &str = "lb_be_stats_v1";
/// Traffic of backends that left, per VIP id, and of removed listeners (the last entry):
/// written by userspace only, pinned so that listener totals survive restarts.
pub const HISTORY: &str = "lb_history_v1";
/// The history entry that holds removed listeners' traffic.
pub const HISTORY_REMOVED: u32 = MAX_VIPS;
/// Devmap of the interfaces the balancer may redirect to, keyed by ifindex.
pub const TX_PORTS: &str = "lb_tx_ports_v1";
/// Egress VLAN per interface: ifindex -> [`crate::abi::EgressVlan`].
pub const EGRESS_VLANS: &str = "lb_egr_vlan_v1";
/// Per-CPU [`crate::counters::DecapCounter`] values of the decapsulation program.
pub const DECAP_COUNTERS: &str = "lb_decap_cnt_v2";
/// The VIPs a backend's decapsulation program accepts: [`crate::abi::DecapVipKey`] -> `u32`.
pub const DECAP_VIPS: &str = "lb_decap_vip_v1";
/// The capture filter: one [`crate::abi::CaptureFilter`]. Not pinned: a capture belongs to
/// the daemon that runs it.
pub const CAPTURE_FILTER: &str = "lb_cap_filt_v1";
/// Per-CPU [`crate::abi::CaptureState`].
pub const CAPTURE_STATE: &str = "lb_cap_state_v1";
/// Per-CPU room to assemble one capture record ([`crate::abi::CaptureMeta`] and the frame).
pub const CAPTURE_SCRATCH: &str = "lb_cap_buf_v1";
/// The ring of capture records the daemon reads.
pub const CAPTURE_RING: &str = "lb_cap_ring_v1";
/// Bytes of the capture ring (a power of two of pages): about 500 full-size records.
pub const CAPTURE_RING_BYTES: u32 = 1 << 20;

/// Most VIP ids (listeners) one balancer serves.
pub const MAX_VIPS: u32 = 512;
/// Most backends one balancer knows. Sizes the backend map and its counters.
pub const MAX_BACKENDS: u32 = 4096;
/// Most interfaces in the devmap (and in the egress VLAN map).
pub const MAX_TX_PORTS: u32 = 64;
/// Most VIP addresses a backend's decapsulation program accepts.
pub const MAX_DECAP_VIPS: u32 = 1024;
/// Default size of each connection table (flows); the daemon may size it from its config.
pub const DEFAULT_CONNS: u32 = 1 << 20;
/// Default Maglev ring size: a prime well above 100 times the largest pool.
pub const DEFAULT_RING_SIZE: u32 = 65_537;
/// Default number of rings. Each listener uses two (live and spare); the daemon sizes the
/// ring map from its config.
pub const DEFAULT_RINGS: u32 = 64;

const _: () = {
    assert!(VIPS_V4.len() <= 15);
    assert!(VIPS_V6.len() <= 15);
    assert!(CONNS_V4.len() <= 15);
    assert!(CONNS_V6.len() <= 15);
    assert!(CONN_SEED.len() <= 15);
    assert!(NEXT_HOPS.len() <= 15);
    assert!(VIP_CACHE.len() <= 15);
    assert!(RATE_WINDOWS.len() <= 15);
    assert!(EGRESS_VLANS.len() <= 15);
    assert!(DECAP_VIPS.len() <= 15);
    assert!(HISTORY.len() <= 15);
    assert!(MAX_VIPS <= 1 << 16);
    assert!(RINGS.len() <= 15);
    assert!(BACKENDS.len() <= 15);
    assert!(CONFIG.len() <= 15);
    assert!(COUNTERS.len() <= 15);
    assert!(BACKEND_STATS.len() <= 15);
    assert!(TX_PORTS.len() <= 15);
    assert!(DECAP_COUNTERS.len() <= 15);
    assert!(CAPTURE_FILTER.len() <= 15);
    assert!(CAPTURE_STATE.len() <= 15);
    assert!(CAPTURE_SCRATCH.len() <= 15);
    assert!(CAPTURE_RING.len() <= 15);
};
