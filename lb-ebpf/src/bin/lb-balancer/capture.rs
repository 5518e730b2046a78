//! Packet capture (`lb capture`): while [`CONFIG_F_CAPTURE`] is set, each packet's outcome (the
//! XDP action, the verdict's counter, the listener and the backend) is matched against the
//! capture filter and, if it matches and this CPU is within the capture's rate, the frame as it
//! leaves the program (encapsulated when forwarded) goes to the capture ring with its outcome.
//!
//! Off, a capture costs one test of a configuration bit in three places: where the VIP is known
//! and where the backend is known ([`note_vip`], [`note_backend`]: what the outcome cannot say
//! is noted in this CPU's capture state), and at the end ([`record`]).

use core::hint::cold_path;

use aya_ebpf::{
    helpers::generated::{bpf_ktime_get_ns, bpf_xdp_get_buff_len, bpf_xdp_load_bytes},
    programs::XdpContext,
};
use lb_common::{
    abi::{
        AddrBe, CAPTURE_F_BACKEND, CAPTURE_F_VIP, CAPTURE_SNAPLEN_MAX, CONFIG_F_CAPTURE,
        CaptureFilter, CaptureMeta, CaptureState, DatapathConfig, FAMILY_V4, FAMILY_V6, FlowKey,
    },
    counters::Counter,
};

use crate::maps::{CAPTURE_FILTER, CAPTURE_RING, CAPTURE_SCRATCH, CAPTURE_STATE};

/// One capture record as the ring receives it: the outcome, then the frame's first bytes.
#[repr(C)]
pub struct Record {
    pub meta: CaptureMeta,
    pub data: [u8; CAPTURE_SNAPLEN_MAX as usize],
}

/// Whether a capture runs.
#[inline(always)]
fn on(config: &DatapathConfig) -> bool {
    config.flags & CONFIG_F_CAPTURE != 0
}

/// This CPU's capture state.
#[inline(always)]
fn state() -> Option<&'static mut CaptureState> {
    // SAFETY: this CPU's slot of a per-CPU array; XDP programs do not preempt each other.
    CAPTURE_STATE
        .get_ptr_mut(0)
        .map(|state| unsafe { &mut *state })
}

/// Notes the VIP the packet under way is for, and its client.
#[inline(always)]
pub fn note_vip(config: &DatapathConfig, flow: &FlowKey, vip_id: u32) {
    if !on(config) {
        return;
    }
    cold_path();
    if let Some(state) = state() {
        state.vip_id = vip_id;
        state.family = u32::from(flow.family);
        state.client_be = flow.src_be;
        state.flags |= CAPTURE_F_VIP;
    }
}

/// Notes the backend chosen for the packet under way.
#[inline(always)]
pub fn note_backend(config: &DatapathConfig, backend_id: u32) {
    if !on(config) {
        return;
    }
    cold_path();
    if let Some(state) = state() {
        state.backend_id = backend_id;
        state.flags |= CAPTURE_F_BACKEND;
    }
}

/// Records the packet's outcome if a capture runs and its filter matches.
#[inline(always)]
pub fn record(ctx: &XdpContext, config: &DatapathConfig, action: u32, counter: Counter) {
    if !on(config) {
        return;
    }
    cold_path();
    let (Some(state), Some(filter)) = (state(), CAPTURE_FILTER.get(0)) else {
        return;
    };
    // What was noted belongs to this packet only.
    let noted = state.flags;
    state.flags = 0;
    if !matches(ctx, filter, state, noted, action, counter) {
        return;
    }
    state.matched += 1;
    if !within_rate(state, filter.per_cpu_rate) {
        state.over_rate += 1;
        return;
    }
    let Some(record) = CAPTURE_SCRATCH.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: this CPU's slot of a per-CPU array, as above.
    let record = unsafe { &mut *record };
    // SAFETY: `ctx.ctx` is the program's context.
    let len = unsafe { bpf_xdp_get_buff_len(ctx.ctx) };
    #[expect(
        clippy::cast_possible_truncation,
        reason = "frames are far below 4 GiB"
    )]
    let len = len as u32;
    let mut cap_len = len;
    if cap_len > filter.snaplen {
        cap_len = filter.snaplen;
    }
    if cap_len > CAPTURE_SNAPLEN_MAX {
        cap_len = CAPTURE_SNAPLEN_MAX;
    }
    if cap_len == 0 {
        return;
    }
    // The same bounds, in a form the verifier follows whatever registers the compiler picks:
    // 1 to CAPTURE_SNAPLEN_MAX (a power of two). The volatile read keeps the compiler from
    // folding the mask away as redundant.
    // SAFETY: a read of a local.
    let cap_len = unsafe { core::ptr::read_volatile(&raw const cap_len) };
    let cap_len = (cap_len.wrapping_sub(1) & (CAPTURE_SNAPLEN_MAX - 1)) + 1;
    // SAFETY: `cap_len` bytes fit `data` (checked just above); the helper checks the frame.
    let loaded =
        unsafe { bpf_xdp_load_bytes(ctx.ctx, 0, record.data.as_mut_ptr().cast(), cap_len) };
    if loaded != 0 {
        state.copy_failed += 1;
        return;
    }
    // SAFETY: `ctx.ctx` is the program's context, valid for its run.
    let (ifindex, rx_queue) = unsafe { ((*ctx.ctx).ingress_ifindex, (*ctx.ctx).rx_queue_index) };
    record.meta = CaptureMeta {
        // SAFETY: the helper has no preconditions.
        time_ns: unsafe { bpf_ktime_get_ns() },
        len,
        cap_len,
        ifindex,
        rx_queue,
        action,
        counter: counter.index(),
        vip_id: state.vip_id,
        backend_id: state.backend_id,
        flags: noted,
        _pad: 0,
    };
    let size = size_of::<CaptureMeta>() + cap_len as usize;
    // SAFETY: `size` is at most the record's size (`cap_len` is at most `data`'s length).
    let bytes = unsafe { core::slice::from_raw_parts((&raw const *record).cast::<u8>(), size) };
    if CAPTURE_RING.output::<[u8]>(bytes, 0).is_ok() {
        state.recorded += 1;
    } else {
        state.ring_full += 1;
    }
}

/// Whether the filter takes this packet.
#[inline(always)]
fn matches(
    ctx: &XdpContext,
    filter: &CaptureFilter,
    state: &CaptureState,
    noted: u32,
    action: u32,
    counter: Counter,
) -> bool {
    if (u32::from(filter.action_mask) >> action) & 1 == 0 {
        return false;
    }
    if filter.counter != 0 && filter.counter != counter.index() + 1 {
        return false;
    }
    let has_vip = noted & CAPTURE_F_VIP != 0;
    if filter.match_vip != 0 && !(has_vip && state.vip_id == filter.vip_id) {
        return false;
    }
    if filter.client_family == 0 {
        return true;
    }
    let (family, client) = if has_vip {
        #[expect(clippy::cast_possible_truncation, reason = "a family tag")]
        let family = state.family as u8;
        (family, state.client_be)
    } else {
        match frame_source(ctx) {
            Some(source) => source,
            None => return false,
        }
    };
    family == filter.client_family
        && (client[0] & filter.client_mask_be[0]) == filter.client_be[0]
        && (client[1] & filter.client_mask_be[1]) == filter.client_be[1]
        && (client[2] & filter.client_mask_be[2]) == filter.client_be[2]
        && (client[3] & filter.client_mask_be[3]) == filter.client_be[3]
}

/// The IP source of a frame that reached no VIP (it is as it arrived), after at most two
/// VLAN tags.
#[inline(always)]
fn frame_source(ctx: &XdpContext) -> Option<(u8, AddrBe)> {
    /// An Ethernet header, two tags and an IPv6 header up to the end of its source.
    const HEAD: u32 = 46;
    let mut head = [0u8; HEAD as usize];
    // SAFETY: `ctx.ctx` is the program's context.
    let len = unsafe { bpf_xdp_get_buff_len(ctx.ctx) };
    #[expect(clippy::cast_possible_truncation, reason = "at most HEAD")]
    let n = len.min(u64::from(HEAD)) as u32;
    if n < 34 {
        return None;
    }
    // SAFETY: `head` holds `n` bytes; the helper checks the frame.
    if unsafe { bpf_xdp_load_bytes(ctx.ctx, 0, head.as_mut_ptr().cast(), n) } != 0 {
        return None;
    }
    let head = head.get(..n as usize)?;
    let half = |at: usize| Some(u16::from_be_bytes(head.get(at..at + 2)?.try_into().ok()?));
    let word = |at: usize| Some(u32::from_ne_bytes(head.get(at..at + 4)?.try_into().ok()?));
    let (ether_type, ip) = match half(12)? {
        0x8100 | 0x88a8 => match half(16)? {
            0x8100 => (half(20)?, 22),
            inner => (inner, 18),
        },
        outer => (outer, 14),
    };
    match ether_type {
        0x0800 => Some((FAMILY_V4, [word(ip + 12)?, 0, 0, 0])),
        0x86dd => Some((
            FAMILY_V6,
            [
                word(ip + 8)?,
                word(ip + 12)?,
                word(ip + 16)?,
                word(ip + 20)?,
            ],
        )),
        _ => None,
    }
}

/// Whether this CPU may record one more packet this second, at most `limit` (0: no limit).
#[inline(always)]
fn within_rate(state: &mut CaptureState, limit: u32) -> bool {
    if limit == 0 {
        return true;
    }
    // SAFETY: the helper has no preconditions.
    let now = unsafe { bpf_ktime_get_ns() };
    if now.wrapping_sub(state.window_start_ns) >= 1_000_000_000 {
        state.window_start_ns = now;
        state.window_events = 0;
    }
    state.window_events += 1;
    state.window_events <= u64::from(limit)
}
