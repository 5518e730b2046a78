//! The balancer: an XDP program that sends every packet of a TCP or UDP flow addressed to a VIP
//! to one backend, encapsulated in IP-in-IP, and hands everything else to the kernel.
//!
//! One pass over a packet, each step its own module:
//!
//! ```text
//! parse (lb_ebpf::parse) -> lookup_vip -> select_backend -> encap -> forward
//!                            (select)     (select: conn table, Maglev)   (forward: FIB or static MAC)
//! ```
//!
//! Steps return `Result<_, Exit>`; [`lb_balancer`] alone turns the outcome into an XDP action
//! and counts its reason ([`stats`]): every packet counts exactly one verdict (a packet sent
//! back out with `XDP_TX` counts through its backend's traffic, see [`stats`]).

#![no_std]
#![no_main]

mod encap;
mod forward;
mod maps;
mod select;
mod stats;

use aya_ebpf::{bindings::xdp_action, macros::xdp, programs::XdpContext};
use lb_common::counters::Counter;
use lb_ebpf::{
    Exit,
    parse::{L4, parse_packet},
};

use crate::forward::Forwarded;

type Result<T> = core::result::Result<T, Exit<Counter>>;

/// The balancer's entry point. Supports multi-buffer frames, so it can be attached to
/// interfaces with a jumbo MTU; it only ever reads the headers in the first buffer.
#[xdp(frags)]
pub fn lb_balancer(ctx: XdpContext) -> u32 {
    let (action, counter) = match balance(&ctx) {
        Ok(Forwarded { action, counter }) => (action, counter),
        Err(Exit::Pass(counter)) => (xdp_action::XDP_PASS, counter),
        Err(Exit::Drop(counter)) => (xdp_action::XDP_DROP, counter),
    };
    if counter != Counter::TxLocal {
        stats::count(counter);
    }
    action
}

#[inline(always)]
fn balance(ctx: &XdpContext) -> Result<Forwarded> {
    let packet = parse_packet(ctx)?;
    match packet.l4 {
        L4::Ports => {}
        L4::Fragment => return Err(select::fragment_verdict(&packet.flow)),
        L4::Other => return Err(Exit::Pass(Counter::PassNotVip)),
    }
    let config = maps::config()?;
    let vip = select::lookup_vip(&packet.flow, config)?;
    let selected = select::select_backend(ctx, &packet, &vip, config)?;
    let outer = encap::encap(ctx, &packet, &selected.backend, config)?;
    let forwarded = forward::forward(ctx, &outer, &selected, config)?;
    stats::count_forwarded(selected.backend_id, packet.ip_len, selected.is_new_flow);
    Ok(forwarded)
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // SAFETY: the verifier rejects any program with a reachable panic path, so no loaded
    // program can get here.
    unsafe { core::hint::unreachable_unchecked() }
}
