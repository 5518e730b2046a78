//! Per-CPU counters.
//!
//! A forwarded packet costs one counter update: its backend's traffic (packets, bytes, new
//! flows). Everything else a forwarded packet could count is derived from those in userspace
//! (`tx_local` = forwarded packets - `tx_redirect`; `conn_hit` = forwarded packets - new
//! flows; a listener's traffic = the sum of its backends'). Every other verdict bumps its own
//! counter.

use lb_common::{abi::TrafficCounters, counters::Counter};

use crate::maps::{BACKEND_STATS, COUNTERS};

/// Adds one to `counter` on this CPU.
#[inline(always)]
pub fn count(counter: Counter) {
    if let Some(value) = COUNTERS.get_ptr_mut(counter.index()) {
        // SAFETY: the pointer is this CPU's slot of a per-CPU array entry; XDP programs do not
        // preempt each other on one CPU, so nothing else writes it meanwhile.
        unsafe { *value += 1 };
    }
}

/// Records one forwarded packet of `ip_len` bytes for its backend.
#[inline(always)]
pub fn count_forwarded(backend_id: u32, ip_len: u32, is_new_flow: bool) {
    if let Some(counters) = BACKEND_STATS.get_ptr_mut(backend_id) {
        // SAFETY: as in `count`: this CPU's slot, written by this CPU only.
        let counters: &mut TrafficCounters = unsafe { &mut *counters };
        counters.packets += 1;
        counters.bytes += u64::from(ip_len);
        counters.new_flows += u64::from(is_new_flow);
    }
}
