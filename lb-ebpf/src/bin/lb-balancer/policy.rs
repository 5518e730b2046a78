//! Verdicts for packets the balancer cannot place by their ports: fragments after the first,
//! and frames whose headers cannot be read in full.
//!
//! Such a packet is dropped only when it is provably for the passthrough datapath: addressed to
//! a VIP address that this host does not also serve (its address marker lacks `VIP_F_LOCAL`).
//! Everything else goes to the kernel, which reassembles fragments for its own services (L7
//! listeners on the same address) and judges malformed frames as it would without the
//! balancer: a frame the parser cannot read never takes the host's own traffic with it.

use aya_ebpf::programs::XdpContext;
use lb_common::{
    abi::{AddrBe, VIP_F_LOCAL, VipKey},
    counters::Counter,
};
use lb_ebpf::{
    Exit,
    parse::{Stop, destination},
};

use crate::select::find_vip;

/// What an address's marker says about packets to it that cannot be placed.
enum Address {
    /// Not a VIP address.
    Other,
    /// A VIP address this host also serves.
    Local,
    /// A VIP address only the passthrough datapath serves.
    Passthrough,
}

#[inline(always)]
fn classify(dst_be: AddrBe, family: u8) -> Address {
    match find_vip(&VipKey::address_marker(dst_be, family)) {
        None => Address::Other,
        Some(marker) if marker.flags & VIP_F_LOCAL != 0 => Address::Local,
        Some(_) => Address::Passthrough,
    }
}

/// The verdict for a parse that stopped.
#[inline(always)]
pub fn stopped(ctx: &XdpContext, stop: Stop) -> Exit<Counter> {
    match stop {
        Stop::Exit(exit) => exit,
        Stop::Unreadable => Exit::Pass(Counter::PassMalformed),
        Stop::Malformed(reason) => match destination(ctx) {
            Some((dst_be, family)) if matches!(classify(dst_be, family), Address::Passthrough) => {
                Exit::Drop(reason)
            }
            _ => Exit::Pass(Counter::PassMalformed),
        },
    }
}

/// The verdict for a fragment whose ports are unknown (the fragment policy).
#[inline(always)]
pub fn fragment(dst_be: AddrBe, family: u8) -> Exit<Counter> {
    match classify(dst_be, family) {
        Address::Other => Exit::Pass(Counter::PassNotVip),
        Address::Local => Exit::Pass(Counter::PassFragment),
        Address::Passthrough => Exit::Drop(Counter::DropFragment),
    }
}
