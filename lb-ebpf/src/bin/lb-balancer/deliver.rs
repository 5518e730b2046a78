//! The tail every forwarded packet shares: route it, check it fits, encapsulate it with the
//! link-layer header it leaves with, and send it.
//!
//! ```text
//! route (next hop, MTU) -> too big? answer (ICMP) or drop -> egress tags -> encap -> transmit
//! ```
//!
//! VLAN tags: a frame leaves with the tags it arrived with when it goes back out of the same
//! interface, untagged when it is redirected to another one (the FIB names a physical
//! interface, an untagged port), unless the egress interface has a configured VLAN (the egress
//! VLAN map: exactly that one 802.1Q tag, or none).

use aya_ebpf::programs::XdpContext;
use lb_common::{
    abi::{CONFIG_F_EGRESS_VLAN, DatapathConfig, FlowKey},
    counters::Counter,
};
use lb_ebpf::{Exit, hdr::MacPair, parse::Packet, ptr::Frame};

use crate::{
    Result,
    encap::{Outer, Tags, encap},
    forward::{Forwarded, transmit},
    maps::EGRESS_VLANS,
    route::{Ingress, Route, route},
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
    let ingress = ingress(ctx)?;
    let outer = Outer::new(packet, flow, &selected.backend, config);
    let hop = match route(ctx, &outer, selected, config, &ingress)? {
        Route::Via(hop) => hop,
        Route::TooBig(mtu) => {
            if config.ingress_mtu != 0 && packet.ip_len > config.ingress_mtu {
                return Err(Exit::Drop(Counter::DropOversized));
            }
            return match on_too_big {
                OnTooBig::Answer => too_big::answer(ctx, packet, mtu, config),
                OnTooBig::Drop => Err(Exit::Drop(Counter::DropTooBig)),
            };
        }
        Route::NoNeighbour => {
            // The kernel forwards it (and resolves the neighbour): encapsulated, still
            // addressed to this host, as it arrived.
            let tags = Tags::of(&Frame::new(ctx), packet);
            encap(ctx, packet, &outer, &tags)?;
            return Err(Exit::Pass(Counter::PassNoNeighbour));
        }
    };
    let tags = egress_tags(ctx, packet, hop.ifindex, ingress.ifindex, config);
    encap(ctx, packet, &outer, &tags)?;
    let forwarded = transmit(ctx, &hop, &ingress)?;
    count_forwarded(selected.backend_id, packet.ip_len, selected.is_new_flow);
    Ok(forwarded)
}

/// The interface and MAC addresses the frame arrived with.
#[inline(always)]
fn ingress(ctx: &XdpContext) -> Result<Ingress> {
    let macs: *const MacPair = Frame::new(ctx)
        .get(0)
        .ok_or(Exit::Drop(Counter::DropEncapFailed))?;
    Ok(Ingress {
        // SAFETY: `ctx.ctx` is the context the kernel passed to the program.
        ifindex: unsafe { (*ctx.ctx).ingress_ifindex },
        // SAFETY: `Frame::get` checked the addresses are inside the packet.
        macs: unsafe { *macs },
    })
}

/// The VLAN tags the frame leaves `egress` with (see the module documentation).
#[inline(always)]
fn egress_tags(
    ctx: &XdpContext,
    packet: &Packet,
    egress: u32,
    ingress: u32,
    config: &DatapathConfig,
) -> Tags {
    if config.flags & CONFIG_F_EGRESS_VLAN != 0 {
        // SAFETY: the value is copied out at once.
        if let Some(vlan) = unsafe { EGRESS_VLANS.get(egress) } {
            return if vlan.vlan_id == 0 {
                Tags::NONE
            } else {
                Tags::single(vlan.vlan_id)
            };
        }
    }
    if egress == ingress && packet.is_tagged() {
        Tags::of(&Frame::new(ctx), packet)
    } else {
        Tags::NONE
    }
}
