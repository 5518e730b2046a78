//! Code shared by the XDP programs: packet access and header parsing.
//!
//! - [`ptr`]: the one place that does bounds arithmetic on packet memory;
//! - [`hdr`]: the wire layouts of the headers the programs read and write;
//! - [`parse`]: Ethernet -> IPv4/IPv6 (options, extension headers) -> TCP/UDP, into a
//!   [`parse::Packet`] that says what the balancer needs to know;
//! - [`csum`]: the Internet checksum of an IPv4 header.
//!
//! Each program is a binary under `src/bin/` with its own maps, so that loading the small
//! decapsulation program on a backend never creates the balancer's large maps.

#![no_std]
#![expect(
    missing_debug_implementations,
    reason = "the eBPF target has no formatter; Debug code would never run"
)]

pub mod csum;
pub mod hdr;
pub mod parse;
pub mod ptr;

/// Why a program stops handling a packet: hand it to the kernel or drop it, with the counter
/// that records the reason. Steps return `Result<_, Exit<C>>`; only a program's entry point
/// turns an `Exit` into an XDP action.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Exit<C> {
    /// `XDP_PASS`.
    Pass(C),
    /// `XDP_DROP`.
    Drop(C),
}
