//! The balancer: an XDP program that sends every packet of a TCP or UDP flow addressed to a VIP
//! to one backend, encapsulated in IP-in-IP, and hands everything else to the kernel.
//!
//! One pass over a packet, each step its own module:
//!
//! ```text
//! parse (lb_ebpf::parse) -> the flow -> lookup_vip -> select_backend -> deliver: route, encap
//!   | unreadable,             (its own, or         (conn table,       | too big: too_big
//!   | fragments: policy        the one an ICMP      Maglev)           |   (ICMP answer)
//!                              error quotes: icmp)
//! ```
//!
//! ICMP errors take the same selection and delivery as the flow they are about, through the one
//! copy of that code in the program (a second copy would share the registers of every packet's
//! path and slow it down).
//!
//! While a capture runs (`lb capture`), [`capture`] records outcomes; otherwise it costs the
//! test of one configuration bit.
//!
//! Steps return `Result<_, Exit>`; [`lb_balancer`] alone turns the outcome into an XDP action
//! and counts its reason ([`stats`]): every packet counts exactly one verdict (a packet sent
//! to a backend counts through its backend's traffic, see [`stats`]).

#![no_std]
#![no_main]

mod capture;
mod deliver;
mod encap;
mod forward;
mod icmp;
mod maps;
mod policy;
mod rate;
mod route;
mod select;
mod stats;
mod too_big;

use core::hint::cold_path;

use aya_ebpf::{bindings::xdp_action, macros::xdp, programs::XdpContext};
use lb_common::{abi::DatapathConfig, counters::Counter};
use lb_ebpf::{
    Exit,
    parse::{L4, parse_packet},
};

use crate::{
    deliver::{OnTooBig, deliver},
    forward::Forwarded,
    select::Intent,
};

type Result<T> = core::result::Result<T, Exit<Counter>>;

/// The balancer's entry point. Supports multi-buffer frames, so it can be attached to
/// interfaces with a jumbo MTU; it only ever reads the headers in the first buffer.
#[xdp(frags)]
pub fn lb_balancer(ctx: XdpContext) -> u32 {
    // Before the parse: nothing the parse found has to outlive the lookup.
    let Ok(config) = maps::config() else {
        cold_path();
        stats::count(Counter::DropMapMiss);
        return xdp_action::XDP_DROP;
    };
    let (action, counter) = match balance(&ctx, config) {
        Ok(Forwarded { action, counter }) => (action, counter),
        // Laid out after the forwarding path, which then runs without a taken branch.
        Err(Exit::Pass(counter)) => {
            cold_path();
            (xdp_action::XDP_PASS, counter)
        }
        Err(Exit::Drop(counter)) => {
            cold_path();
            (xdp_action::XDP_DROP, counter)
        }
    };
    if counter != Counter::TxLocal {
        stats::count(counter);
    }
    capture::record(&ctx, config, action, counter);
    action
}

#[inline(always)]
fn balance(ctx: &XdpContext, config: &DatapathConfig) -> Result<Forwarded> {
    let packet = parse_packet(ctx).map_err(|stop| policy::stopped(ctx, stop))?;
    // The flow whose backend gets the packet: its own, or the one an ICMP error is about.
    let (flow, intent) = match packet.l4 {
        L4::Ports => {
            let intent = if packet.is_rst() {
                Intent::Reset
            } else if packet.is_syn() {
                Intent::Open
            } else {
                Intent::Continue
            };
            (packet.flow, intent)
        }
        L4::Icmp => (icmp::quoted_flow(ctx, &packet, config)?, Intent::Icmp),
        L4::Fragment => return Err(policy::fragment(packet.flow.dst_be, packet.flow.family)),
        L4::Other if packet.is_fragment() => {
            return Err(policy::fragment(packet.flow.dst_be, packet.flow.family));
        }
        L4::Other => return Err(Exit::Pass(Counter::PassNotVip)),
    };
    let is_icmp = intent == Intent::Icmp;
    let vip = select::lookup_vip(&flow, config)
        .map_err(|exit| if is_icmp { icmp::NOT_FORWARDED } else { exit })?;
    capture::note_vip(config, &flow, vip.vip_id);
    // The first fragment of a passthrough flow (an ICMP error is only parsed when whole).
    if packet.is_fragment() {
        return Err(Exit::Drop(Counter::DropFragment));
    }
    let selected = select::select_backend(&flow, &vip, config, intent)?;
    capture::note_backend(config, selected.backend_id);
    let on_too_big = if is_icmp {
        OnTooBig::Drop
    } else {
        OnTooBig::Answer
    };
    let forwarded = deliver(ctx, &packet, &flow, &selected, config, on_too_big)?;
    if is_icmp {
        stats::count(Counter::IcmpToBackend);
    }
    Ok(forwarded)
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // SAFETY: the verifier rejects any program with a reachable panic path, so no loaded
    // program can get here.
    unsafe { core::hint::unreachable_unchecked() }
}
