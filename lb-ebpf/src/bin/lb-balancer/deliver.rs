//! The tail every forwarded packet shares: route it, check it fits, encapsulate it with the
//! link-layer header it leaves with, and send it.
//!
//! ```text
//! route (next hop, MTU) -> too big? answer (ICMP) or drop -> way out -> egress tags -> encap
//! ```
//!
//! VLAN tags: a frame leaves with the tags it arrived with when it goes back out of the same
//! interface, untagged when it is redirected to another one, unless the egress interface has a
//! configured VLAN (the egress VLAN map: exactly that one 802.1Q tag, or none). A route through
//! a VLAN device (`eth0.100`) names that device, which takes no redirected frames in driver
//! mode: the daemon leaves it out of the redirect map and the kernel forwards (and tags) those
//! frames; in generic mode the redirect reaches it and it adds its own tag.

use core::mem::MaybeUninit;

use aya_ebpf::programs::XdpContext;
use lb_common::{
    abi::{CONFIG_F_EGRESS_VLAN, DatapathConfig, FlowKey, NextHop},
    counters::Counter,
};
use lb_ebpf::{Exit, parse::Packet};

use crate::{
    Result,
    encap::{Macs, Outer, Tags, encap},
    forward::{Forwarded, WayOut, way_out},
    maps::EGRESS_VLANS,
    route::{Route, route},
    select::Selected,
    stats::count_forwarded,
    too_big,
};

/// What to do with a packet too big to encapsulate.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum OnTooBig {
    /// Answer the client with ICMP (its own packet).
    Answer,
    /// Drop it (an ICMP error is never answered with another).
    Drop,
}

/// Sends `packet` (of `flow`) to `selected`'s backend.
#[inline(always)]
pub fn deliver(
    ctx: &XdpContext,
    packet: &Packet,
    flow: &FlowKey,
    selected: &Selected,
    config: &DatapathConfig,
    on_too_big: OnTooBig,
) -> Result<Forwarded> {
    // SAFETY: `ctx.ctx` is the context the kernel passed to the program.
    let ingress = unsafe { (*ctx.ctx).ingress_ifindex };
    let outer = Outer::new(packet, flow, &selected.backend, config);
    let mut scratch = MaybeUninit::<NextHop>::uninit();
    let forwarded = match route(ctx, &outer, selected, config, ingress, &mut scratch)? {
        Route::Static => {
            let tags = egress_tags(packet, ingress, ingress, config);
            let macs = Macs::FromArrival {
                dst: &config.next_hop_mac,
            };
            encap(ctx, packet, &outer, macs, tags)?;
            Forwarded::TX
        }
        Route::Via(hop) => {
            let WayOut::Forward(forwarded) = way_out(hop, ingress) else {
                return Err(to_kernel(ctx, packet, &outer, Counter::PassNoTxPort));
            };
            let tags = egress_tags(packet, hop.ifindex, ingress, config);
            let macs = Macs::Set {
                src: &hop.smac,
                dst: &hop.dmac,
            };
            encap(ctx, packet, &outer, macs, tags)?;
            forwarded
        }
        Route::TooBig(mtu) => {
            if config.ingress_mtu != 0 && packet.ip_len > config.ingress_mtu {
                return Err(Exit::Drop(Counter::DropOversized));
            }
            return match on_too_big {
                OnTooBig::Answer => too_big::answer(ctx, packet, mtu, config),
                OnTooBig::Drop => Err(Exit::Drop(Counter::DropTooBig)),
            };
        }
        // The kernel resolves the neighbour and forwards the frame.
        Route::NoNeighbour => {
            return Err(to_kernel(ctx, packet, &outer, Counter::PassNoNeighbour));
        }
    };
    count_forwarded(selected.backend_id, packet.ip_len, selected.is_new_flow);
    Ok(forwarded)
}

/// Encapsulates the frame for the kernel to forward: still addressed to this host, with the
/// tags it arrived with, as if the outer header had come with it. Returns the verdict.
#[inline(always)]
fn to_kernel(ctx: &XdpContext, packet: &Packet, outer: &Outer, counter: Counter) -> Exit<Counter> {
    match encap(
        ctx,
        packet,
        outer,
        Macs::AsArrived,
        Tags::as_arrived(packet),
    ) {
        Ok(()) => Exit::Pass(counter),
        Err(exit) => exit,
    }
}

/// The VLAN tags the frame leaves `egress` with (see the module documentation).
#[inline(always)]
fn egress_tags(packet: &Packet, egress: u32, ingress: u32, config: &DatapathConfig) -> Tags {
    if config.flags & CONFIG_F_EGRESS_VLAN != 0 {
        // SAFETY: the value is copied out at once.
        if let Some(vlan) = unsafe { EGRESS_VLANS.get(egress) } {
            return if vlan.vlan_id == 0 {
                Tags::None
            } else {
                Tags::Single(vlan.vlan_id)
            };
        }
    }
    if egress == ingress {
        Tags::as_arrived(packet)
    } else {
        Tags::None
    }
}
