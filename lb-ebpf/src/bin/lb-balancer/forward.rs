//! Sending the encapsulated frame to its next hop: back out of the interface it came in on
//! (`XDP_TX`), or out of another through the devmap (`XDP_REDIRECT`).
//!
//! The next hop's MAC addresses are written only once the way out is certain. A frame whose
//! egress interface is not in the devmap goes to the kernel as `encap` left it, still addressed
//! to this host, and the kernel forwards the encapsulated packet (slowly, but nothing is lost:
//! `pass_no_tx_port`, and the daemon says which interface is missing).

use aya_ebpf::{bindings::xdp_action, programs::XdpContext};
use lb_common::{abi::NextHop, counters::Counter};
use lb_ebpf::{Exit, hdr::MacPair, ptr::Frame};

use crate::{Result, maps::TX_PORTS, route::Ingress};

/// The XDP action for a forwarded frame and the counter that records it.
pub struct Forwarded {
    pub action: u32,
    pub counter: Counter,
}

/// Sends the frame to `hop`.
#[inline(always)]
pub fn transmit(ctx: &XdpContext, hop: &NextHop, ingress: &Ingress) -> Result<Forwarded> {
    if hop.ifindex == ingress.ifindex {
        set_macs(ctx, &hop.smac, &hop.dmac)?;
        return Ok(Forwarded {
            action: xdp_action::XDP_TX,
            counter: Counter::TxLocal,
        });
    }
    match TX_PORTS.redirect(hop.ifindex, u64::from(xdp_action::XDP_PASS)) {
        Ok(action) => {
            set_macs(ctx, &hop.smac, &hop.dmac)?;
            Ok(Forwarded {
                action,
                counter: Counter::TxRedirect,
            })
        }
        Err(_) => Err(Exit::Pass(Counter::PassNoTxPort)),
    }
}

/// Writes the frame's MAC addresses.
#[inline(always)]
pub fn set_macs(ctx: &XdpContext, src: &[u8; 6], dst: &[u8; 6]) -> Result<()> {
    let macs: *mut MacPair = Frame::new(ctx)
        .get_mut(0)
        .ok_or(Exit::Drop(Counter::DropEncapFailed))?;
    // SAFETY: `Frame::get_mut` checked the addresses are inside the packet.
    unsafe {
        macs.write(MacPair {
            dst: *dst,
            src: *src,
        });
    }
    Ok(())
}
