//! ICMP errors about passthrough flows go to the flow's backend.
//!
//! A router that cannot forward a backend's reply (VIP:port -> client:port), for example
//! because it is larger than the next link's MTU, sends its ICMP error to the reply's source:
//! the VIP, which routes to the balancer. The error quotes the reply's headers; reversed, they
//! are the client's flow, so the balancer finds the flow's backend the way it finds it for the
//! client's own packets (connection table, else Maglev; an error never creates an entry) and
//! forwards the whole ICMP packet to it, encapsulated. The backend's kernel then learns the
//! path MTU (or the unreachable destination) for its connection.
//!
//! Forwarded: IPv4 destination unreachable (which carries "fragmentation needed"), ICMPv6
//! destination unreachable and packet too big, whose quote holds an IP header of the same
//! family and the ports of a TCP or UDP packet from a passthrough VIP. Everything else (echo,
//! errors about other traffic, quotes too short to read) goes to the kernel (`pass_icmp`), as
//! does all ICMP while `icmp_to_backends` is off.

use aya_ebpf::programs::XdpContext;
use lb_common::{
    abi::{
        CONFIG_F_ICMP_TO_BACKENDS, DatapathConfig, FAMILY_V4, FAMILY_V6, FlowKey, PROTO_TCP,
        PROTO_UDP,
    },
    counters::Counter,
};
use lb_ebpf::{
    Exit,
    hdr::{
        ICMP_DEST_UNREACH, ICMP_LEN, ICMPV6_DEST_UNREACH, ICMPV6_PACKET_TOO_BIG, IPV4_LEN,
        IPV6_LEN, IcmpHdr, Ipv4Hdr, Ipv6Hdr, UdpHdr,
    },
    parse::Packet,
    ptr::Frame,
};

use crate::Result;

/// The verdict for ICMP that is not forwarded: the kernel's.
pub const NOT_FORWARDED: Exit<Counter> = Exit::Pass(Counter::PassIcmp);

/// The client's flow an ICMP error is about (its quoted packet's 5-tuple, reversed), if it is
/// one to forward.
#[inline(always)]
pub fn quoted_flow(ctx: &XdpContext, packet: &Packet, config: &DatapathConfig) -> Result<FlowKey> {
    if config.flags & CONFIG_F_ICMP_TO_BACKENDS == 0 {
        return Err(NOT_FORWARDED);
    }
    let frame = Frame::new(ctx);
    let ip_end = packet.l2_len + packet.ip_len as usize;
    quote(&frame, packet, ip_end).ok_or(NOT_FORWARDED)
}

/// The quoted packet's 5-tuple, reversed.
#[inline(always)]
fn quote(frame: &Frame, packet: &Packet, ip_end: usize) -> Option<FlowKey> {
    let icmp: *const IcmpHdr = frame.get_within(packet.l4_offset, ip_end)?;
    // SAFETY: `Frame::get_within` checked the header is inside the packet.
    let kind = unsafe { (*icmp).kind };
    let quoted = packet.l4_offset + ICMP_LEN;
    let (mut flow, header_len) = if packet.flow.family == FAMILY_V4 {
        if kind != ICMP_DEST_UNREACH {
            return None;
        }
        quoted_v4(frame, quoted, ip_end)?
    } else {
        if kind != ICMPV6_DEST_UNREACH && kind != ICMPV6_PACKET_TOO_BIG {
            return None;
        }
        quoted_v6(frame, quoted, ip_end)?
    };
    // An error about a packet from a VIP is addressed to that VIP.
    if (flow.proto != PROTO_TCP && flow.proto != PROTO_UDP) || flow.dst_be != packet.flow.dst_be {
        return None;
    }
    let ports_at = quoted + header_len;
    // TCP and UDP both start with the ports.
    let ports: *const UdpHdr = frame.get_within(ports_at, ip_end)?;
    // SAFETY: `Frame::get` checked the ports are inside the packet.
    let ports = unsafe { *ports };
    // Reversed: the quoted packet went from the VIP to the client.
    flow.src_port_be = ports.dst_port_be;
    flow.dst_port_be = ports.src_port_be;
    Some(flow)
}

/// The quoted IPv4 header's addresses (reversed) and protocol, and its length.
#[inline(always)]
fn quoted_v4(frame: &Frame, at: usize, ip_end: usize) -> Option<(FlowKey, usize)> {
    let ip: *const Ipv4Hdr = frame.get_within(at, ip_end)?;
    // SAFETY: `Frame::get_within` checked the header is inside the packet.
    let ip = unsafe { &*ip };
    let header_len = usize::from(ip.version_ihl & 0x0f) * 4;
    // A quoted fragment other than the first has no ports.
    if ip.version_ihl >> 4 != 4
        || header_len < IPV4_LEN
        || u16::from_be(ip.frag_off_be) & 0x1fff != 0
    {
        return None;
    }
    let flow = FlowKey {
        src_be: [ip.dst_be, 0, 0, 0],
        dst_be: [ip.src_be, 0, 0, 0],
        src_port_be: 0,
        dst_port_be: 0,
        proto: ip.proto,
        family: FAMILY_V4,
        _pad: [0; 2],
    };
    Some((flow, header_len))
}

/// As [`quoted_v4`] for a quoted IPv6 header (without extension headers).
#[inline(always)]
fn quoted_v6(frame: &Frame, at: usize, ip_end: usize) -> Option<(FlowKey, usize)> {
    let ip: *const Ipv6Hdr = frame.get_within(at, ip_end)?;
    // SAFETY: `Frame::get_within` checked the header is inside the packet.
    let ip = unsafe { &*ip };
    if u32::from_be(ip.vtc_flow_be) >> 28 != 6 {
        return None;
    }
    let flow = FlowKey {
        src_be: ip.dst_be,
        dst_be: ip.src_be,
        src_port_be: 0,
        dst_port_be: 0,
        proto: ip.next_header,
        family: FAMILY_V6,
        _pad: [0; 2],
    };
    Some((flow, IPV6_LEN))
}
