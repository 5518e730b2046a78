//! Per-CPU rate limits in fixed one-second windows: connection-table inserts (SYN-flood
//! protection) and ICMP too-big answers. A burst across a window boundary can pass up to twice
//! the limit; that is the price of one counter and no locks.

use aya_ebpf::helpers::generated::bpf_ktime_get_coarse_ns;

use crate::maps::RATE_WINDOW_MAP;

/// Whether this CPU may have one more event of `window` this second, at most `limit` a second
/// (0: no limit).
#[inline(always)]
pub fn allow(window: u32, limit: u32) -> bool {
    let limit = u64::from(limit);
    if limit == 0 {
        return true;
    }
    let Some(window) = RATE_WINDOW_MAP.get_ptr_mut(window) else {
        return true;
    };
    // SAFETY: the helper has no preconditions.
    let now = unsafe { bpf_ktime_get_coarse_ns() };
    // SAFETY: this CPU's slot of a per-CPU array; XDP programs do not preempt each other.
    let window = unsafe { &mut *window };
    if now.wrapping_sub(window.start_ns) >= 1_000_000_000 {
        window.start_ns = now;
        window.events = 0;
    }
    window.events += 1;
    window.events <= limit
}
