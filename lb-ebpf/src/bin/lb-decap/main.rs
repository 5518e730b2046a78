//! The backends' decapsulator: strips the outer header of the balancer's IP-in-IP packets so
//! that the kernel delivers the client's packet to the VIP on the backend's loopback.
//!
//! This kernel has no IPIP tunnel driver, so the backend's own XDP program does the work:
//! IPv4 carrying IPv4 (protocol 4) and IPv6 carrying IPv6 (next header 41, no extension
//! headers) are decapsulated; anything else passes untouched. An IP-in-IP packet whose headers
//! are truncated or disagree with each other is dropped. The outer header is not otherwise
//! checked: a backend accepts IP-in-IP from anyone who can reach it, as the kernel's tunnel
//! driver would; filter at the network edge.

#![no_std]
#![no_main]

use aya_ebpf::{
    bindings::xdp_action,
    helpers::generated::bpf_xdp_adjust_head,
    macros::{map, xdp},
    maps::PerCpuArray,
    programs::XdpContext,
};
use lb_common::counters::DecapCounter;
use lb_ebpf::{
    Exit,
    hdr::{
        ETH_LEN, ETH_P_IPV4, ETH_P_IPV6, EthHdr, IPPROTO_IPIP, IPPROTO_IPV6, IPV4_LEN,
        IPV4_MF_OFFSET, IPV6_LEN, Ipv4Hdr, Ipv6Hdr,
    },
    ptr::Frame,
};

type Result<T> = core::result::Result<T, Exit<DecapCounter>>;

#[map(name = "lb_decap_cnt_v1")]
static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(DecapCounter::COUNT, 0);

#[xdp(frags)]
pub fn lb_decap(ctx: XdpContext) -> u32 {
    let (action, counter) = match decap(&ctx) {
        Ok(counter) | Err(Exit::Pass(counter)) => (xdp_action::XDP_PASS, counter),
        Err(Exit::Drop(counter)) => (xdp_action::XDP_DROP, counter),
    };
    if let Some(value) = COUNTERS.get_ptr_mut(counter.index()) {
        // SAFETY: this CPU's slot of a per-CPU array; XDP programs do not preempt each other.
        unsafe { *value += 1 };
    }
    action
}

const PASS: Exit<DecapCounter> = Exit::Pass(DecapCounter::PassOther);
const MALFORMED: Exit<DecapCounter> = Exit::Drop(DecapCounter::DropMalformed);

#[inline(always)]
fn decap(ctx: &XdpContext) -> Result<DecapCounter> {
    let frame = Frame::new(ctx);
    let eth: *const EthHdr = frame.get(0).ok_or(PASS)?;
    // SAFETY: `Frame::get` checked the header is inside the packet.
    let eth = unsafe { *eth };
    let (outer_len, ether_type, counter) = match u16::from_be(eth.ether_type_be) {
        ETH_P_IPV4 => (outer_ipv4_len(&frame)?, ETH_P_IPV4, DecapCounter::DecapV4),
        ETH_P_IPV6 => (outer_ipv6_len(&frame)?, ETH_P_IPV6, DecapCounter::DecapV6),
        _ => return Err(PASS),
    };
    // Move the Ethernet header to just before the inner packet, then drop what precedes it.
    let moved: *mut EthHdr = frame.get_mut(outer_len).ok_or(MALFORMED)?;
    // SAFETY: `Frame::get_mut` checked the header is inside the packet.
    unsafe {
        moved.write(EthHdr {
            dst: eth.dst,
            src: eth.src,
            ether_type_be: ether_type.to_be(),
        });
    }
    #[expect(
        clippy::cast_possible_truncation,
        reason = "an IPv4 header length or 40"
    )]
    let delta = outer_len as i32;
    // SAFETY: `ctx.ctx` is the context the kernel passed; the delta is inside the packet.
    if unsafe { bpf_xdp_adjust_head(ctx.ctx, delta) } != 0 {
        return Err(MALFORMED);
    }
    Ok(counter)
}

/// The outer IPv4 header's length if the packet is IPv4-in-IPv4 with sound headers.
#[inline(always)]
fn outer_ipv4_len(frame: &Frame) -> Result<usize> {
    let outer: *const Ipv4Hdr = frame.get(ETH_LEN).ok_or(PASS)?;
    // SAFETY: `Frame::get` checked the header is inside the packet.
    let outer = unsafe { &*outer };
    if outer.proto != IPPROTO_IPIP {
        return Err(PASS);
    }
    let header_len = usize::from(outer.version_ihl & 0x0f) * 4;
    if outer.version_ihl >> 4 != 4
        || header_len < IPV4_LEN
        || u16::from_be(outer.frag_off_be) & IPV4_MF_OFFSET != 0
        || usize::from(u16::from_be(outer.tot_len_be)) < header_len + IPV4_LEN
    {
        return Err(MALFORMED);
    }
    let inner: *const Ipv4Hdr = frame.get(ETH_LEN + header_len).ok_or(MALFORMED)?;
    // SAFETY: `Frame::get` checked the header is inside the packet.
    if unsafe { (*inner).version_ihl } >> 4 != 4 {
        return Err(MALFORMED);
    }
    Ok(header_len)
}

/// The outer IPv6 header's length if the packet is IPv6-in-IPv6 with sound headers.
#[inline(always)]
fn outer_ipv6_len(frame: &Frame) -> Result<usize> {
    let outer: *const Ipv6Hdr = frame.get(ETH_LEN).ok_or(PASS)?;
    // SAFETY: `Frame::get` checked the header is inside the packet.
    let outer = unsafe { &*outer };
    if outer.next_header != IPPROTO_IPV6 {
        return Err(PASS);
    }
    if u32::from_be(outer.vtc_flow_be) >> 28 != 6
        || usize::from(u16::from_be(outer.payload_len_be)) < IPV6_LEN
    {
        return Err(MALFORMED);
    }
    let inner: *const Ipv6Hdr = frame.get(ETH_LEN + IPV6_LEN).ok_or(MALFORMED)?;
    // SAFETY: `Frame::get` checked the header is inside the packet.
    if u32::from_be(unsafe { (*inner).vtc_flow_be }) >> 28 != 6 {
        return Err(MALFORMED);
    }
    Ok(IPV6_LEN)
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // SAFETY: the verifier rejects any program with a reachable panic path.
    unsafe { core::hint::unreachable_unchecked() }
}
