//! Where the encapsulated frame goes next.
//!
//! With a static next hop (`CONFIG_F_STATIC_NEXT_HOP`) the frame goes back out of the interface
//! it came in on, to the configured MAC: the cheapest path, for a balancer on one L2 segment
//! with its router. Otherwise `bpf_fib_lookup` names the next hop for the backend: out of the
//! same interface with `XDP_TX`, or out of another through the devmap with `XDP_REDIRECT`. Its
//! answer is cached per CPU and backend for `NEXT_HOP_TTL_NS` (a FIB lookup costs more than the
//! rest of the packet's path). A next hop whose MAC the kernel does not know yet gets the frame
//! through the kernel, which resolves it (and the next frames take the fast path).

use aya_ebpf::{
    bindings::{
        BPF_FIB_LKUP_RET_FRAG_NEEDED, BPF_FIB_LKUP_RET_FWD_DISABLED, BPF_FIB_LKUP_RET_NO_NEIGH,
        BPF_FIB_LKUP_RET_SUCCESS, bpf_fib_lookup as FibParams, xdp_action,
    },
    helpers::generated::{bpf_fib_lookup, bpf_ktime_get_coarse_ns},
    programs::XdpContext,
};
use lb_common::{
    abi::{CONFIG_F_STATIC_NEXT_HOP, DatapathConfig, FAMILY_V4, NEXT_HOP_TTL_NS, NextHop},
    counters::Counter,
};
use lb_ebpf::{Exit, hdr::EthHdr, hdr::IPPROTO_IPIP, hdr::IPPROTO_IPV6, ptr::Frame};

use crate::{
    Result,
    encap::Outer,
    maps::{NEXT_HOPS, TX_PORTS},
    select::Selected,
};

#[expect(clippy::cast_possible_truncation, reason = "a 64-byte struct")]
const FIB_PARAMS_LEN: i32 = size_of::<FibParams>() as i32;

const AF_INET: u8 = 2;
const AF_INET6: u8 = 10;

/// The XDP action for a forwarded frame and the counter that records it.
pub struct Forwarded {
    pub action: u32,
    pub counter: Counter,
}

#[inline(always)]
pub fn forward(
    ctx: &XdpContext,
    outer: &Outer,
    selected: &Selected,
    config: &DatapathConfig,
) -> Result<Forwarded> {
    if config.flags & CONFIG_F_STATIC_NEXT_HOP != 0 {
        set_macs(ctx, &outer.ingress_mac, &config.next_hop_mac)?;
        return Ok(Forwarded {
            action: xdp_action::XDP_TX,
            counter: Counter::TxLocal,
        });
    }
    // SAFETY: `ctx.ctx` is the context the kernel passed to the program.
    let ingress = unsafe { (*ctx.ctx).ingress_ifindex };
    let hop = next_hop(ctx, outer, selected, ingress)?;
    set_macs(ctx, &hop.smac, &hop.dmac)?;
    if hop.ifindex == ingress {
        return Ok(Forwarded {
            action: xdp_action::XDP_TX,
            counter: Counter::TxLocal,
        });
    }
    match TX_PORTS.redirect(hop.ifindex, u64::from(xdp_action::XDP_PASS)) {
        Ok(action) => Ok(Forwarded {
            action,
            counter: Counter::TxRedirect,
        }),
        Err(_) => Err(Exit::Pass(Counter::PassNoTxPort)),
    }
}

/// The backend's next hop: from this CPU's cache while fresh, else from the FIB.
#[inline(always)]
fn next_hop(ctx: &XdpContext, outer: &Outer, selected: &Selected, ingress: u32) -> Result<NextHop> {
    // SAFETY: the helper has no preconditions.
    let now = unsafe { bpf_ktime_get_coarse_ns() };
    let cached = NEXT_HOPS.get_ptr_mut(selected.backend_id);
    if let Some(slot) = cached {
        // SAFETY: this CPU's slot of a per-CPU array; XDP programs do not preempt each other.
        let hop = unsafe { *slot };
        if hop.expires_ns > now && hop.generation == selected.backend.generation {
            return Ok(hop);
        }
    }
    let hop = lookup_fib(ctx, outer, ingress, selected.backend.generation, now)?;
    if let Some(slot) = cached {
        // SAFETY: as above.
        unsafe { *slot = hop };
    }
    Ok(hop)
}

/// Asks the FIB for the next hop of the outer packet, arriving on `ingress`.
#[inline(always)]
fn lookup_fib(
    ctx: &XdpContext,
    outer: &Outer,
    ingress: u32,
    generation: u32,
    now: u64,
) -> Result<NextHop> {
    let mut fib = fib_params(outer, ingress);
    // SAFETY: `fib` is a valid, initialised parameter block of the size passed.
    let ret = unsafe { bpf_fib_lookup(ctx.ctx.cast(), &mut fib, FIB_PARAMS_LEN, 0) };
    match u32::try_from(ret).unwrap_or(u32::MAX) {
        BPF_FIB_LKUP_RET_SUCCESS => Ok(NextHop {
            expires_ns: now + NEXT_HOP_TTL_NS,
            ifindex: fib.ifindex,
            generation,
            smac: fib.smac,
            dmac: fib.dmac,
            _pad: [0; 4],
        }),
        BPF_FIB_LKUP_RET_NO_NEIGH => Err(Exit::Pass(Counter::PassNoNeighbour)),
        BPF_FIB_LKUP_RET_FRAG_NEEDED => Err(Exit::Drop(Counter::DropTooBig)),
        BPF_FIB_LKUP_RET_FWD_DISABLED => Err(Exit::Drop(Counter::DropForwardingDisabled)),
        _ => Err(Exit::Drop(Counter::DropNoRoute)),
    }
}

/// The FIB query for the outer packet, arriving on `ingress`.
#[inline(always)]
fn fib_params(outer: &Outer, ingress: u32) -> FibParams {
    // SAFETY: `bpf_fib_lookup` is plain old data: integers, arrays and unions of integers, for
    // which all-zero is a valid value (and what the kernel expects in unused fields).
    let mut fib: FibParams = unsafe { core::mem::zeroed() };
    #[expect(
        clippy::cast_possible_truncation,
        reason = "an IP length, checked to fit 16 bits"
    )]
    let tot_len = outer.ip_len as u16;
    fib.__bindgen_anon_1.tot_len = tot_len;
    fib.ifindex = ingress;
    if outer.family == FAMILY_V4 {
        fib.family = AF_INET;
        fib.l4_protocol = IPPROTO_IPIP;
        fib.__bindgen_anon_2.tos = outer.tos;
        fib.__bindgen_anon_3.ipv4_src = outer.src_be[0];
        fib.__bindgen_anon_4.ipv4_dst = outer.dst_be[0];
    } else {
        fib.family = AF_INET6;
        fib.l4_protocol = IPPROTO_IPV6;
        fib.__bindgen_anon_3.ipv6_src = outer.src_be;
        fib.__bindgen_anon_4.ipv6_dst = outer.dst_be;
    }
    fib
}

#[inline(always)]
fn set_macs(ctx: &XdpContext, src: &[u8; 6], dst: &[u8; 6]) -> Result<()> {
    let eth: *mut EthHdr = Frame::new(ctx)
        .get_mut(0)
        .ok_or(Exit::Drop(Counter::DropEncapFailed))?;
    // SAFETY: `Frame::get_mut` checked the header is inside the packet.
    unsafe {
        (*eth).src = *src;
        (*eth).dst = *dst;
    }
    Ok(())
}
