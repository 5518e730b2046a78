//! How the encapsulated frame leaves: back out of the interface it came in on (`XDP_TX`), out
//! of another through the devmap (`XDP_REDIRECT`), or, when the egress interface is not in the
//! devmap, through the kernel.
//!
//! The way out is decided before the frame is rewritten, so that `encap` writes the link-layer
//! header once, with the right addresses: the next hop's for `XDP_TX` and `XDP_REDIRECT`; the
//! ones it arrived with for the kernel, which then forwards the encapsulated packet (slowly,
//! but nothing is lost: `pass_no_tx_port`, and the daemon says which interface is missing).

use aya_ebpf::bindings::xdp_action;
use lb_common::{abi::NextHop, counters::Counter};

use crate::maps::TX_PORTS;

/// The XDP action for a forwarded frame and the counter that records it.
#[derive(Clone, Copy)]
pub struct Forwarded {
    pub action: u32,
    pub counter: Counter,
}

/// How a frame for `hop` leaves.
#[derive(Clone, Copy)]
pub enum WayOut {
    /// `XDP_TX` or `XDP_REDIRECT` (the redirect target already set).
    Forward(Forwarded),
    /// The egress interface is not in the devmap: the kernel forwards the frame.
    Kernel,
}

impl Forwarded {
    /// Back out of the interface the frame came in on.
    pub const TX: Self = Self {
        action: xdp_action::XDP_TX,
        counter: Counter::TxLocal,
    };
}

/// The way out toward `hop` for a frame that arrived on `ingress`.
#[inline(always)]
pub fn way_out(hop: &NextHop, ingress: u32) -> WayOut {
    if hop.ifindex == ingress {
        return WayOut::Forward(Forwarded::TX);
    }
    match TX_PORTS.redirect(hop.ifindex, u64::from(xdp_action::XDP_PASS)) {
        Ok(action) => WayOut::Forward(Forwarded {
            action,
            counter: Counter::TxRedirect,
        }),
        Err(_) => WayOut::Kernel,
    }
}
