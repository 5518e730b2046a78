//! The next hop toward a backend, and the largest packet the way there carries.
//!
//! With a static next hop (`CONFIG_F_STATIC_NEXT_HOP`) the frame goes back out of the interface
//! it came in on, to the configured MAC ([`Route::Static`]): the cheapest path, for a balancer
//! on one L2 segment with its router. Otherwise `bpf_fib_lookup` names the next hop for the
//! outer packet: its interface, MAC addresses and MTU. The answer is cached per CPU and backend
//! for `NEXT_HOP_TTL_NS` (a FIB lookup costs more than the rest of the packet's path), except
//! for a backend whose route has several next hops (`BACKEND_F_MULTIPATH`): there every packet
//! asks the FIB, whose multipath hash of the outer header keeps each flow on one next hop.
//!
//! The MTU is the FIB's for the route (the configured `mtu` caps it; with a static next hop it
//! is the configured one). A packet that would not fit once encapsulated is [`Route::TooBig`].

use core::{mem::MaybeUninit, ptr::copy_nonoverlapping};

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
    hdr::{IPPROTO_IPIP, IPPROTO_IPV6, Mac},
};

use crate::{Result, encap::Outer, maps::NEXT_HOPS, select::Selected};

#[expect(clippy::cast_possible_truncation, reason = "a 64-byte struct")]
const FIB_PARAMS_LEN: i32 = size_of::<FibParams>() as i32;

// The FIB's MAC addresses can be read as `Mac`s (2-byte aligned).
const _: () = assert!(
    align_of::<FibParams>() >= 2
        && core::mem::offset_of!(FibParams, smac) % 2 == 0
        && core::mem::offset_of!(FibParams, dmac) % 2 == 0
);

const AF_INET: u8 = 2;
const AF_INET6: u8 = 10;

/// How the encapsulated packet can leave.
pub enum Route<'a> {
    /// Back out of the interface it came in on, to the configured next hop
    /// (`CONFIG_F_STATIC_NEXT_HOP`).
    Static,
    /// Through this next hop (this CPU's cache entry, or the caller's scratch space when the
    /// route is not cached): referred to, never copied.
    Via(&'a NextHop),
    /// It would be larger than this MTU.
    TooBig(u32),
    /// The FIB knows the next hop but not its MAC yet: the kernel must resolve it.
    NoNeighbour,
}

/// The route of `outer`, the encapsulated packet of `selected`'s flow, for a frame that
/// arrived on `ingress`. An uncached next hop is written to `scratch`.
#[inline(always)]
pub fn route<'a>(
    ctx: &XdpContext,
    outer: &Outer,
    selected: &Selected,
    config: &DatapathConfig,
    ingress: u32,
    scratch: &'a mut MaybeUninit<NextHop>,
) -> Result<Route<'a>> {
    if config.flags & CONFIG_F_STATIC_NEXT_HOP != 0 {
        return Ok(if config.mtu != 0 && outer.ip_len > config.mtu {
            Route::TooBig(config.mtu)
        } else {
            Route::Static
        });
    }
    let hop = match next_hop(ctx, outer, selected, ingress, scratch)? {
        Route::Via(hop) => hop,
        other => return Ok(capped(other, config.mtu)),
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
fn capped(route: Route<'_>, configured: u32) -> Route<'_> {
    match route {
        Route::TooBig(mtu) => Route::TooBig(effective_mtu(mtu, configured)),
        other => other,
    }
}

/// The backend's next hop: from this CPU's cache while fresh (single-path routes), else from
/// the FIB (into the cache, or into `scratch` for a multipath route).
#[inline(always)]
fn next_hop<'a>(
    ctx: &XdpContext,
    outer: &Outer,
    selected: &Selected,
    ingress: u32,
    scratch: &'a mut MaybeUninit<NextHop>,
) -> Result<Route<'a>> {
    // SAFETY: the helper has no preconditions.
    let now = unsafe { bpf_ktime_get_coarse_ns() };
    let generation = selected.backend.generation;
    let cacheable = selected.backend.flags & BACKEND_F_MULTIPATH == 0;
    let cached = if cacheable {
        NEXT_HOPS.get_ptr_mut(selected.backend_id)
    } else {
        None
    };
    let into = match cached {
        // SAFETY: this CPU's slot of a per-CPU array, valid for the program's run; XDP programs
        // do not preempt each other, so nothing else writes it meanwhile.
        Some(slot) => unsafe {
            if (*slot).expires_ns > now && (*slot).generation == generation {
                return Ok(Route::Via(&*slot));
            }
            &mut *slot.cast::<MaybeUninit<NextHop>>()
        },
        None => scratch,
    };
    lookup_fib(ctx, outer, ingress, generation, now, into)
}

/// Asks the FIB for the next hop of the outer packet, arriving on `ingress`; writes it `into`.
#[inline(always)]
fn lookup_fib<'a>(
    ctx: &XdpContext,
    outer: &Outer,
    ingress: u32,
    generation: u32,
    now: u64,
    into: &'a mut MaybeUninit<NextHop>,
) -> Result<Route<'a>> {
    let mut fib = fib_params(outer, ingress);
    // SAFETY: `fib` is a valid, initialised parameter block of the size passed.
    let ret = unsafe { bpf_fib_lookup(ctx.ctx.cast(), &mut fib, FIB_PARAMS_LEN, 0) };
    // SAFETY: the kernel writes the MTU into the union on success and on "fragmentation
    // needed"; both variants are plain integers.
    let mtu = unsafe { fib.__bindgen_anon_1.mtu_result };
    match u32::try_from(ret).unwrap_or(u32::MAX) {
        BPF_FIB_LKUP_RET_SUCCESS => {
            let hop = into.as_mut_ptr();
            // SAFETY: `hop` is valid for writes; every field is written, the MAC addresses
            // straight from the FIB's answer (2-byte aligned there, asserted at the top), so that
            // no out-of-line `memmove` copies them.
            unsafe {
                (*hop).expires_ns = now + NEXT_HOP_TTL_NS;
                (*hop).ifindex = fib.ifindex;
                (*hop).generation = generation;
                copy_nonoverlapping((&raw const fib.smac).cast::<Mac>(), &raw mut (*hop).smac, 1);
                copy_nonoverlapping((&raw const fib.dmac).cast::<Mac>(), &raw mut (*hop).dmac, 1);
                (*hop).mtu = mtu;
                (*hop)._pad = 0;
                Ok(Route::Via(into.assume_init_ref()))
            }
        }
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
