//! The next hop toward a backend, and the largest packet the way there carries.
//!
//! With a static next hop (`CONFIG_F_STATIC_NEXT_HOP`) the frame goes back out of the interface
//! it came in on, to the configured MAC: the cheapest path, for a balancer on one L2 segment
//! with its router. Otherwise `bpf_fib_lookup` names the next hop for the outer packet: its
//! interface, MAC addresses and MTU. The answer is cached per CPU and backend for
//! `NEXT_HOP_TTL_NS` (a FIB lookup costs more than the rest of the packet's path), except for
//! a backend whose route has several next hops (`BACKEND_F_MULTIPATH`): there every packet asks
//! the FIB, whose multipath hash of the outer header keeps each flow on one next hop.
//!
//! The MTU is the FIB's for the route (the configured `mtu` caps it; with a static next hop it
//! is the configured one). A packet that would not fit once encapsulated is [`Route::TooBig`].

use aya_ebpf::{
    bindings::{
        BPF_FIB_LKUP_RET_FRAG_NEEDED, BPF_FIB_LKUP_RET_FWD_DISABLED, BPF_FIB_LKUP_RET_NO_NEIGH,
        BPF_FIB_LKUP_RET_SUCCESS, bpf_fib_lookup as FibParams,
    },
    helpers::generated::{bpf_fib_lookup, bpf_ktime_get_coarse_ns},
    programs::XdpContext,
};
use lb_common::{
    abi::{
        BACKEND_F_MULTIPATH, CONFIG_F_STATIC_NEXT_HOP, DatapathConfig, FAMILY_V4, NEXT_HOP_TTL_NS,
        NextHop,
    },
    counters::Counter,
};
use lb_ebpf::{
    Exit,
    hdr::{IPPROTO_IPIP, IPPROTO_IPV6, MacPair},
};

use crate::{Result, encap::Outer, maps::NEXT_HOPS, select::Selected};

#[expect(clippy::cast_possible_truncation, reason = "a 64-byte struct")]
const FIB_PARAMS_LEN: i32 = size_of::<FibParams>() as i32;

const AF_INET: u8 = 2;
const AF_INET6: u8 = 10;

/// Where a frame arrived: its interface, and the MAC addresses it carried.
#[derive(Clone, Copy)]
pub struct Ingress {
    pub ifindex: u32,
    pub macs: MacPair,
}

/// How the encapsulated packet can leave.
pub enum Route {
    /// Through this next hop.
    Via(NextHop),
    /// It would be larger than this MTU.
    TooBig(u32),
    /// The FIB knows the next hop but not its MAC yet: the kernel must resolve it.
    NoNeighbour,
}

/// The route of `outer`, the encapsulated packet of `selected`'s flow.
#[inline(always)]
pub fn route(
    ctx: &XdpContext,
    outer: &Outer,
    selected: &Selected,
    config: &DatapathConfig,
    ingress: &Ingress,
) -> Result<Route> {
    let hop = if config.flags & CONFIG_F_STATIC_NEXT_HOP != 0 {
        NextHop {
            expires_ns: 0,
            ifindex: ingress.ifindex,
            generation: 0,
            smac: ingress.macs.dst,
            dmac: config.next_hop_mac,
            mtu: 0,
            _pad: 0,
        }
    } else {
        match next_hop(ctx, outer, selected, ingress.ifindex)? {
            Route::Via(hop) => hop,
            other => return Ok(capped(other, config.mtu)),
        }
    };
    let mtu = effective_mtu(u32::from(hop.mtu), config.mtu);
    if mtu != 0 && outer.ip_len > mtu {
        return Ok(Route::TooBig(mtu));
    }
    Ok(Route::Via(hop))
}

/// The smaller of two MTUs, 0 standing for "none".
#[inline(always)]
fn effective_mtu(route: u32, configured: u32) -> u32 {
    match (route, configured) {
        (0, c) => c,
        (r, 0) => r,
        (r, c) => r.min(c),
    }
}

#[inline(always)]
fn capped(route: Route, configured: u32) -> Route {
    match route {
        Route::TooBig(mtu) => Route::TooBig(effective_mtu(mtu, configured)),
        other => other,
    }
}

/// The backend's next hop: from this CPU's cache while fresh (single-path routes), else from
/// the FIB.
#[inline(always)]
fn next_hop(ctx: &XdpContext, outer: &Outer, selected: &Selected, ingress: u32) -> Result<Route> {
    // SAFETY: the helper has no preconditions.
    let now = unsafe { bpf_ktime_get_coarse_ns() };
    let generation = selected.backend.generation;
    let cacheable = selected.backend.flags & BACKEND_F_MULTIPATH == 0;
    let cached = if cacheable {
        NEXT_HOPS.get_ptr_mut(selected.backend_id)
    } else {
        None
    };
    if let Some(slot) = cached {
        // SAFETY: this CPU's slot of a per-CPU array; XDP programs do not preempt each other.
        let hop = unsafe { *slot };
        if hop.expires_ns > now && hop.generation == generation {
            return Ok(Route::Via(hop));
        }
    }
    let route = lookup_fib(ctx, outer, ingress, generation, now)?;
    if let (Some(slot), Route::Via(hop)) = (cached, &route) {
        // SAFETY: as above.
        unsafe { *slot = *hop };
    }
    Ok(route)
}

/// Asks the FIB for the next hop of the outer packet, arriving on `ingress`.
#[inline(always)]
fn lookup_fib(
    ctx: &XdpContext,
    outer: &Outer,
    ingress: u32,
    generation: u32,
    now: u64,
) -> Result<Route> {
    let mut fib = fib_params(outer, ingress);
    // SAFETY: `fib` is a valid, initialised parameter block of the size passed.
    let ret = unsafe { bpf_fib_lookup(ctx.ctx.cast(), &mut fib, FIB_PARAMS_LEN, 0) };
    // SAFETY: the kernel writes the MTU into the union on success and on "fragmentation
    // needed"; both variants are plain integers.
    let mtu = unsafe { fib.__bindgen_anon_1.mtu_result };
    match u32::try_from(ret).unwrap_or(u32::MAX) {
        BPF_FIB_LKUP_RET_SUCCESS => Ok(Route::Via(NextHop {
            expires_ns: now + NEXT_HOP_TTL_NS,
            ifindex: fib.ifindex,
            generation,
            smac: fib.smac,
            dmac: fib.dmac,
            mtu,
            _pad: 0,
        })),
        BPF_FIB_LKUP_RET_FRAG_NEEDED => Ok(Route::TooBig(u32::from(mtu))),
        BPF_FIB_LKUP_RET_NO_NEIGH => Ok(Route::NoNeighbour),
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
        reason = "an IP length; a larger one fails the MTU check either way"
    )]
    let tot_len = outer.ip_len.min(u32::from(u16::MAX)) as u16;
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
        // The outer header's traffic class and flow label: the multipath hash reads the label.
        fib.__bindgen_anon_2.flowinfo =
            ((u32::from(outer.tos) << 20) | (outer.spread & 0x000f_ffff)).to_be();
        fib.__bindgen_anon_3.ipv6_src = outer.src_be;
        fib.__bindgen_anon_4.ipv6_dst = outer.dst_be;
    }
    fib
}
