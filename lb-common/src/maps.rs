//! Map names and sizes.
//!
//! Names carry a version suffix: a map whose layout changes gets a new name, so a daemon never
//! adopts a pinned map of an older layout by mistake. Kernel map names are at most 15 bytes.

/// VIP (address, port, protocol) -> [`crate::abi::VipValue`].
pub const VIPS: &str = "lb_vips_v1";
/// Flat array of Maglev rings: `ring_id * ring_size + slot` -> backend id.
pub const RINGS: &str = "lb_rings_v1";
/// Backend id -> [`crate::abi::Backend`].
pub const BACKENDS: &str = "lb_backends_v1";
/// LRU connection table: [`crate::abi::FlowKey`] -> [`crate::abi::ConnValue`].
pub const CONNS: &str = "lb_conns_v1";
/// The single [`crate::abi::DatapathConfig`].
pub const CONFIG: &str = "lb_config_v1";
/// Per-CPU [`crate::counters::Counter`] values.
pub const COUNTERS: &str = "lb_counters_v1";
/// Per-CPU traffic counters per VIP id.
pub const VIP_STATS: &str = "lb_vip_stats_v1";
/// Per-CPU traffic counters per backend id.
pub const BACKEND_STATS: &str = "lb_be_stats_v1";
/// Devmap of the interfaces the balancer may redirect to, keyed by ifindex.
pub const TX_PORTS: &str = "lb_tx_ports_v1";
/// Per-CPU [`crate::counters::DecapCounter`] values of the decapsulation program.
pub const DECAP_COUNTERS: &str = "lb_decap_cnt_v1";

/// Most VIP ids (listeners) one balancer serves. Sizes the per-VIP counters.
pub const MAX_VIPS: u32 = 512;
/// Most backends one balancer knows. Sizes the backend map and its counters.
pub const MAX_BACKENDS: u32 = 4096;
/// Most interfaces in the devmap.
pub const MAX_TX_PORTS: u32 = 64;
/// Default size of the connection table (flows); the daemon may size it from its config.
pub const DEFAULT_CONNS: u32 = 1 << 20;
/// Default Maglev ring size: a prime well above 100 times the largest pool.
pub const DEFAULT_RING_SIZE: u32 = 65_537;
/// Default number of rings. Each listener uses two (live and spare); the daemon sizes the
/// ring map from its config.
pub const DEFAULT_RINGS: u32 = 64;

const _: () = {
    assert!(VIPS.len() <= 15);
    assert!(RINGS.len() <= 15);
    assert!(BACKENDS.len() <= 15);
    assert!(CONNS.len() <= 15);
    assert!(CONFIG.len() <= 15);
    assert!(COUNTERS.len() <= 15);
    assert!(VIP_STATS.len() <= 15);
    assert!(BACKEND_STATS.len() <= 15);
    assert!(TX_PORTS.len() <= 15);
    assert!(DECAP_COUNTERS.len() <= 15);
};
