//! Small helper programs for labs and benchmarks, kept apart from the balancer so that loading
//! them creates none of its maps.
//!
//! - [`lb_pass`]: passes everything. A veth delivers `XDP_TX`/`XDP_REDIRECT` frames only if
//!   its peer has an XDP program, so labs attach this to the balancer's peer.
//! - [`lb_tx_baseline`]: swaps the MAC addresses and sends the frame back (`XDP_TX`): the
//!   trivial program the balancer is benchmarked against.
//! - [`lb_sink`]: counts and drops: the receiving end of a forwarding benchmark.

#![no_std]
#![no_main]

use aya_ebpf::{
    bindings::xdp_action,
    macros::{map, xdp},
    maps::PerCpuArray,
    programs::XdpContext,
};
use lb_ebpf::{hdr::EthHdr, ptr::Frame};

/// Packets (index 0) and bytes (index 1) the sink received, per CPU.
#[map(name = "lb_sink_cnt")]
static SINK_COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(2, 0);

#[xdp(frags)]
pub fn lb_pass(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_PASS
}

#[xdp]
pub fn lb_tx_baseline(ctx: XdpContext) -> u32 {
    let Some(eth) = Frame::new(&ctx).get_mut::<EthHdr>(0) else {
        return xdp_action::XDP_DROP;
    };
    // SAFETY: `Frame::get_mut` checked the header is inside the packet.
    unsafe { core::mem::swap(&mut (*eth).src, &mut (*eth).dst) };
    xdp_action::XDP_TX
}

#[xdp(frags)]
pub fn lb_sink(ctx: XdpContext) -> u32 {
    let len = Frame::new(&ctx).len() as u64;
    for (index, add) in [(0, 1), (1, len)] {
        if let Some(value) = SINK_COUNTERS.get_ptr_mut(index) {
            // SAFETY: this CPU's slot of a per-CPU array; XDP programs do not preempt each
            // other.
            unsafe { *value += add };
        }
    }
    xdp_action::XDP_DROP
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // SAFETY: the verifier rejects any program with a reachable panic path.
    unsafe { core::hint::unreachable_unchecked() }
}
