//! Where the encapsulated frame goes next.
//!
//! With a static next hop (`CONFIG_F_STATIC_NEXT_HOP`) the frame goes back out of the interface
//! it came in on, to the configured MAC: the cheapest path, for a balancer on one L2 segment
//! with its router. Otherwise `bpf_fib_lookup` names the next hop for the outer destination:
//! out of the same interface with `XDP_TX`, or out of another through the devmap with
//! `XDP_REDIRECT`. A next hop whose MAC the kernel does not know yet gets the frame through the
//! kernel, which resolves it (and the next frames take the fast path).

use aya_ebpf::{
    bindings::{
        BPF_FIB_LKUP_RET_FRAG_NEEDED, BPF_FIB_LKUP_RET_FWD_DISABLED, BPF_FIB_LKUP_RET_NO_NEIGH,
        BPF_FIB_LKUP_RET_SUCCESS, bpf_fib_lookup as FibParams, xdp_action,
    },
    helpers::generated::bpf_fib_lookup,
    programs::XdpContext,
};
use lb_common::{
    abi::{CONFIG_F_STATIC_NEXT_HOP, DatapathConfig, FAMILY_V4},
    counters::Counter,
};
use lb_ebpf::{Exit, hdr::EthHdr, hdr::IPPROTO_IPIP, hdr::IPPROTO_IPV6, ptr::Frame};

use crate::{Result, encap::Outer, maps::TX_PORTS};

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
pub fn forward(ctx: &XdpContext, outer: &Outer, config: &DatapathConfig) -> Result<Forwarded> {
    if config.flags & CONFIG_F_STATIC_NEXT_HOP != 0 {
        set_macs(ctx, &outer.ingress_mac, &config.next_hop_mac)?;
        return Ok(Forwarded {
            action: xdp_action::XDP_TX,
            counter: Counter::TxLocal,
        });
    }
    // SAFETY: `ctx.ctx` is the context the kernel passed to the program.
    let ingress = unsafe { (*ctx.ctx).ingress_ifindex };
    let mut fib = fib_params(outer, ingress);
    // SAFETY: `fib` is a valid, initialised parameter block of the size passed.
    let ret = unsafe { bpf_fib_lookup(ctx.ctx.cast(), &mut fib, FIB_PARAMS_LEN, 0) };
    match u32::try_from(ret).unwrap_or(u32::MAX) {
        BPF_FIB_LKUP_RET_SUCCESS => {}
        BPF_FIB_LKUP_RET_NO_NEIGH => return Err(Exit::Pass(Counter::PassNoNeighbour)),
        BPF_FIB_LKUP_RET_FRAG_NEEDED => return Err(Exit::Drop(Counter::DropTooBig)),
        BPF_FIB_LKUP_RET_FWD_DISABLED => return Err(Exit::Drop(Counter::DropForwardingDisabled)),
        _ => return Err(Exit::Drop(Counter::DropNoRoute)),
    }
    set_macs(ctx, &fib.smac, &fib.dmac)?;
    if fib.ifindex == ingress {
        return Ok(Forwarded {
            action: xdp_action::XDP_TX,
            counter: Counter::TxLocal,
        });
    }
    match TX_PORTS.redirect(fib.ifindex, u64::from(xdp_action::XDP_PASS)) {
        Ok(action) => Ok(Forwarded {
            action,
            counter: Counter::TxRedirect,
        }),
        Err(_) => Err(Exit::Pass(Counter::PassNoTxPort)),
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
