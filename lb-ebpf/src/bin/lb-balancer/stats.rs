//! Per-CPU counters: one bump per packet for its verdict, plus per-VIP and per-backend traffic.

use lb_common::{abi::TrafficCounters, counters::Counter};

use crate::maps::{BACKEND_STATS, COUNTERS, VIP_STATS};

/// Adds one to `counter` on this CPU.
#[inline(always)]
pub fn count(counter: Counter) {
    if let Some(value) = COUNTERS.get_ptr_mut(counter.index()) {
        // SAFETY: the pointer is this CPU's slot of a per-CPU array entry; XDP programs do not
        // preempt each other on one CPU, so nothing else writes it meanwhile.
        unsafe { *value += 1 };
    }
}

/// Records one forwarded packet of `ip_len` bytes for its VIP and its backend.
#[inline(always)]
pub fn count_traffic(vip_id: u32, backend_id: u32, ip_len: u32, is_new_flow: bool) {
    let new_flows = u64::from(is_new_flow);
    for (map, id) in [(&VIP_STATS, vip_id), (&BACKEND_STATS, backend_id)] {
        if let Some(counters) = map.get_ptr_mut(id) {
            // SAFETY: as in `count`: this CPU's slot, written by this CPU only.
            let counters: &mut TrafficCounters = unsafe { &mut *counters };
            counters.packets += 1;
            counters.bytes += u64::from(ip_len);
            counters.new_flows += new_flows;
        }
    }
}
