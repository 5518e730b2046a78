//! The eBPF objects, built by `build.rs` and embedded in the binary.

use aya::include_bytes_aligned;

/// The balancer (`lb_balancer`) and its maps.
pub static BALANCER: &[u8] = include_bytes_aligned!(concat!(env!("OUT_DIR"), "/lb-balancer"));
/// The backends' decapsulator (`lb_decap`).
pub static DECAP: &[u8] = include_bytes_aligned!(concat!(env!("OUT_DIR"), "/lb-decap"));
/// Lab and benchmark helpers (`lb_pass`, `lb_tx_baseline`, `lb_sink`).
pub static AUX: &[u8] = include_bytes_aligned!(concat!(env!("OUT_DIR"), "/lb-aux"));
