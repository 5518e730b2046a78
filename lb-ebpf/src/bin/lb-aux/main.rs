//! Small helper programs for labs and benchmarks, kept apart from the balancer so that loading
//! them creates none of its maps.
//!
//! - [`lb_pass`]: passes everything. A veth delivers `XDP_TX`/`XDP_REDIRECT` frames only if
//!   its peer has an XDP program, so labs attach this to the balancer's peer.
//! - [`lb_tx_baseline`]: swaps the MAC addresses and sends the frame back (`XDP_TX`): the
//!   trivial program the balancer is benchmarked against.
//! - [`lb_sink`]: the receiving end of a forwarding benchmark: counts and drops. Before it
//!   drops a frame it puts the packet back as the generator made it (strips an IP-in-IP outer
//!   header) and gives it a new TCP/UDP source port. `BPF_PROG_TEST_RUN` live frames recycle
//!   pages without copying the packet in again, so this is what makes every frame the
//!   generator sends a well-formed packet of a new flow.

#![no_std]
#![no_main]

use aya_ebpf::{
    bindings::xdp_action,
    helpers::generated::bpf_xdp_adjust_head,
    macros::{map, xdp},
    maps::PerCpuArray,
    programs::XdpContext,
};
use lb_ebpf::{
    hdr::{
        ETH_LEN, ETH_P_IPV4, ETH_P_IPV6, EthHdr, IPPROTO_IPIP, IPPROTO_IPV6, IPV4_LEN, IPV6_LEN,
        Ipv4Hdr, Ipv6Hdr, UdpHdr,
    },
    ptr::Frame,
};

/// Per CPU: packets (index 0) and bytes (1) the sink received, the next source port (2), and
/// the mask of the source ports it hands out (3; set by the benchmark: flows - 1).
#[map(name = "lb_sink_cnt")]
static SINK_COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(4, 0);

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
    add(0, 1);
    add(1, len);
    strip_outer_header(&ctx);
    renew_source_port(&ctx);
    xdp_action::XDP_DROP
}

#[inline(always)]
fn add(index: u32, value: u64) -> u64 {
    match SINK_COUNTERS.get_ptr_mut(index) {
        // SAFETY: this CPU's slot of a per-CPU array; XDP programs do not preempt each other.
        Some(slot) => unsafe {
            *slot += value;
            *slot
        },
        None => 0,
    }
}

/// Removes an IPv4-in-IPv4 or IPv6-in-IPv6 outer header (option-less, as the balancer writes
/// it), leaving the Ethernet header in front of the inner packet.
#[inline(always)]
fn strip_outer_header(ctx: &XdpContext) {
    let frame = Frame::new(ctx);
    let Some(eth) = frame.get::<EthHdr>(0) else {
        return;
    };
    // SAFETY: `Frame::get` checked the header is inside the packet.
    let eth = unsafe { *eth };
    let (outer_len, delta): (usize, i32) = match u16::from_be(eth.ether_type_be) {
        ETH_P_IPV4 => match frame.get::<Ipv4Hdr>(ETH_LEN) {
            // SAFETY: as above.
            Some(ip) if unsafe { (*ip).proto } == IPPROTO_IPIP => (IPV4_LEN, 20),
            _ => return,
        },
        ETH_P_IPV6 => match frame.get::<Ipv6Hdr>(ETH_LEN) {
            // SAFETY: as above.
            Some(ip) if unsafe { (*ip).next_header } == IPPROTO_IPV6 => (IPV6_LEN, 40),
            _ => return,
        },
        _ => return,
    };
    let Some(moved) = frame.get_mut::<EthHdr>(outer_len) else {
        return;
    };
    // SAFETY: `Frame::get_mut` checked the header is inside the packet.
    unsafe { moved.write(eth) };
    // SAFETY: `ctx.ctx` is the context the kernel passed; the delta is inside the packet.
    unsafe { bpf_xdp_adjust_head(ctx.ctx, delta) };
}

/// Gives the (option-less IPv4 or plain IPv6) TCP or UDP packet the next source port.
#[inline(always)]
fn renew_source_port(ctx: &XdpContext) {
    let frame = Frame::new(ctx);
    let Some(eth) = frame.get::<EthHdr>(0) else {
        return;
    };
    // SAFETY: `Frame::get` checked the header is inside the packet.
    let l4 = match u16::from_be(unsafe { (*eth).ether_type_be }) {
        ETH_P_IPV4 => ETH_LEN + 20,
        ETH_P_IPV6 => ETH_LEN + IPV6_LEN,
        _ => return,
    };
    // TCP and UDP both start with the source port.
    let Some(ports) = frame.get_mut::<UdpHdr>(l4) else {
        return;
    };
    let mask = add(3, 0);
    #[expect(clippy::cast_possible_truncation, reason = "ports wrap around")]
    let port = (add(2, 1) & mask) as u16;
    // SAFETY: `Frame::get_mut` checked the header is inside the packet.
    unsafe { (*ports).src_port_be = port.to_be() };
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // SAFETY: the verifier rejects any program with a reachable panic path.
    unsafe { core::hint::unreachable_unchecked() }
}
