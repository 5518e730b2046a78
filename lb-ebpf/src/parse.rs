//! Ethernet -> IPv4 or IPv6 -> TCP or UDP.
//!
//! [`parse_packet`] reads the headers once and returns a [`Packet`]: the flow's 5-tuple as a
//! connection-table key, what kind of layer 4 follows, and the few IP fields encapsulation
//! copies. Anything that is not IP passes to the kernel; a header that is truncated or
//! inconsistent with the frame drops with a reason (the kernel would drop it too).
//!
//! - IPv4 options are skipped by the header length, never dropped.
//! - IPv6 extension headers (hop-by-hop, routing, destination options, authentication,
//!   fragment) are walked up to [`MAX_IPV6_EXT_HEADERS`] deep; a longer chain drops.
//! - A fragment (IPv4 with MF or an offset, IPv6 with a non-atomic fragment header) yields
//!   [`L4::Fragment`]: its ports are unknown, and the caller applies the fragment policy.

use aya_ebpf::{helpers::generated::bpf_xdp_get_buff_len, programs::XdpContext};
use lb_common::{
    abi::{FAMILY_V4, FAMILY_V6, FlowKey, PROTO_TCP, PROTO_UDP},
    counters::Counter,
};

use crate::{
    Exit,
    hdr::{
        ETH_LEN, ETH_P_IPV4, ETH_P_IPV6, EthHdr, IPV4_DF, IPV4_LEN, IPV4_MF_OFFSET, IPV6_EXT_AUTH,
        IPV6_EXT_DEST_OPTS, IPV6_EXT_FRAGMENT, IPV6_EXT_HOP_BY_HOP, IPV6_EXT_ROUTING, IPV6_LEN,
        Ipv4Hdr, Ipv6ExtHdr, Ipv6FragHdr, Ipv6Hdr, TCP_FLAG_ACK, TCP_FLAG_SYN, TCP_LEN, TcpHdr,
        UdpHdr,
    },
    ptr::Frame,
};

/// How many IPv6 extension headers the parser walks before giving up on a packet.
pub const MAX_IPV6_EXT_HEADERS: usize = 4;

type Result<T> = core::result::Result<T, Exit<Counter>>;

/// What follows the IP header.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum L4 {
    /// TCP or UDP: the flow's ports are in [`Packet::flow`].
    Ports,
    /// A fragment: no ports to read.
    Fragment,
    /// Another protocol (ICMP, ...).
    Other,
}

/// What the balancer needs to know about a packet.
pub struct Packet {
    /// The 5-tuple as sent (ports zero unless `l4` is [`L4::Ports`]).
    pub flow: FlowKey,
    pub l4: L4,
    /// A TCP SYN without ACK: the first packet of a connection.
    pub is_syn: bool,
    /// Length of the IP packet (header included) as its header states it.
    pub ip_len: u32,
    /// IPv4 TOS or IPv6 traffic class, copied to the outer header.
    pub tos: u8,
    /// IPv4 "don't fragment", copied to the outer header.
    pub dont_fragment: bool,
}

/// Parses the headers of the frame in `ctx`.
#[inline(always)]
pub fn parse_packet(ctx: &XdpContext) -> Result<Packet> {
    let frame = Frame::new(ctx);
    let eth: *const EthHdr = frame.get(0).ok_or(Exit::Drop(Counter::DropTruncatedEth))?;
    // SAFETY: `Frame::get` checked that the whole header is inside the packet.
    let ether_type = u16::from_be(unsafe { (*eth).ether_type_be });
    match ether_type {
        ETH_P_IPV4 => parse_ipv4(ctx, &frame),
        ETH_P_IPV6 => parse_ipv6(ctx, &frame),
        _ => Err(Exit::Pass(Counter::PassNotIp)),
    }
}

/// The length of the whole frame, fragments included. Only asked for when the IP header claims
/// more than the linear data holds, since it costs a helper call.
#[inline(always)]
fn frame_len_with_frags(ctx: &XdpContext, frame: &Frame) -> usize {
    // SAFETY: `ctx.ctx` is the context the kernel passed to the program.
    let len = unsafe { bpf_xdp_get_buff_len(ctx.ctx) };
    usize::try_from(len).unwrap_or(frame.len())
}

/// Checks that an IP packet of `ip_len` bytes at `ETH_LEN` fits in the frame.
#[inline(always)]
fn check_ip_len(ctx: &XdpContext, frame: &Frame, ip_len: usize) -> Result<()> {
    let end = ETH_LEN + ip_len;
    if end > frame.len() && end > frame_len_with_frags(ctx, frame) {
        return Err(Exit::Drop(Counter::DropBadLength));
    }
    Ok(())
}

#[inline(always)]
fn parse_ipv4(ctx: &XdpContext, frame: &Frame) -> Result<Packet> {
    let ip: *const Ipv4Hdr = frame
        .get(ETH_LEN)
        .ok_or(Exit::Drop(Counter::DropTruncatedIp))?;
    // SAFETY: `Frame::get` checked that the whole header is inside the packet.
    let ip = unsafe { &*ip };
    if ip.version_ihl >> 4 != 4 {
        return Err(Exit::Drop(Counter::DropBadIpVersion));
    }
    let header_len = usize::from(ip.version_ihl & 0x0f) * 4;
    if header_len < IPV4_LEN || ETH_LEN + header_len > frame.len() {
        return Err(Exit::Drop(Counter::DropBadIhl));
    }
    let ip_len_u16 = u16::from_be(ip.tot_len_be);
    let ip_len = usize::from(ip_len_u16);
    if ip_len < header_len {
        return Err(Exit::Drop(Counter::DropBadLength));
    }
    check_ip_len(ctx, frame, ip_len)?;

    let frag_off = u16::from_be(ip.frag_off_be);
    let mut packet = Packet {
        flow: FlowKey {
            src_be: [ip.src_be, 0, 0, 0],
            dst_be: [ip.dst_be, 0, 0, 0],
            src_port_be: 0,
            dst_port_be: 0,
            proto: ip.proto,
            family: FAMILY_V4,
            _pad: [0; 2],
        },
        l4: L4::Other,
        is_syn: false,
        ip_len: u32::from(ip_len_u16),
        tos: ip.tos,
        dont_fragment: frag_off & IPV4_DF != 0,
    };
    if frag_off & IPV4_MF_OFFSET != 0 {
        packet.l4 = L4::Fragment;
        return Ok(packet);
    }
    parse_l4(frame, ETH_LEN + header_len, ETH_LEN + ip_len, &mut packet)?;
    Ok(packet)
}

#[inline(always)]
fn parse_ipv6(ctx: &XdpContext, frame: &Frame) -> Result<Packet> {
    let ip: *const Ipv6Hdr = frame
        .get(ETH_LEN)
        .ok_or(Exit::Drop(Counter::DropTruncatedIp))?;
    // SAFETY: `Frame::get` checked that the whole header is inside the packet.
    let ip = unsafe { &*ip };
    let vtc_flow = u32::from_be(ip.vtc_flow_be);
    if vtc_flow >> 28 != 6 {
        return Err(Exit::Drop(Counter::DropBadIpVersion));
    }
    let payload_len = u16::from_be(ip.payload_len_be);
    let ip_len = IPV6_LEN + usize::from(payload_len);
    check_ip_len(ctx, frame, ip_len)?;

    #[expect(
        clippy::cast_possible_truncation,
        reason = "the traffic class is 8 bits"
    )]
    let tos = (vtc_flow >> 20) as u8;
    let mut packet = Packet {
        flow: FlowKey {
            src_be: ip.src_be,
            dst_be: ip.dst_be,
            src_port_be: 0,
            dst_port_be: 0,
            proto: ip.next_header,
            family: FAMILY_V6,
            _pad: [0; 2],
        },
        l4: L4::Other,
        is_syn: false,
        ip_len: u32::from(payload_len) + 40,
        tos,
        dont_fragment: false,
    };
    let ip_end = ETH_LEN + ip_len;
    let Some(l4_offset) = walk_ipv6_ext_headers(frame, ip_end, &mut packet)? else {
        packet.l4 = L4::Fragment;
        return Ok(packet);
    };
    parse_l4(frame, l4_offset, ip_end, &mut packet)?;
    Ok(packet)
}

/// Walks the IPv6 extension headers. Leaves the upper-layer protocol in `packet.flow.proto`
/// and returns its offset, or `None` for a fragment.
#[inline(always)]
fn walk_ipv6_ext_headers(
    frame: &Frame,
    ip_end: usize,
    packet: &mut Packet,
) -> Result<Option<usize>> {
    let bad = Exit::Drop(Counter::DropBadExtHeader);
    let mut offset = ETH_LEN + IPV6_LEN;
    for _ in 0..MAX_IPV6_EXT_HEADERS {
        let kind = packet.flow.proto;
        let (next, len) = match kind {
            IPV6_EXT_HOP_BY_HOP | IPV6_EXT_ROUTING | IPV6_EXT_DEST_OPTS | IPV6_EXT_AUTH => {
                let ext: *const Ipv6ExtHdr = frame.get_within(offset, ip_end).ok_or(bad)?;
                // SAFETY: `Frame::get_within` checked that the header is inside the packet.
                let ext = unsafe { *ext };
                let len = if kind == IPV6_EXT_AUTH {
                    (usize::from(ext.len) + 2) * 4
                } else {
                    (usize::from(ext.len) + 1) * 8
                };
                (ext.next_header, len)
            }
            IPV6_EXT_FRAGMENT => {
                let frag: *const Ipv6FragHdr = frame.get_within(offset, ip_end).ok_or(bad)?;
                // SAFETY: `Frame::get_within` checked that the header is inside the packet.
                let frag = unsafe { *frag };
                // Offset 0 without "more fragments" is an atomic fragment (RFC 6946): a whole
                // packet, parsed on.
                if u16::from_be(frag.offset_flags_be) & 0xfff9 != 0 {
                    return Ok(None);
                }
                (frag.next_header, size_of::<Ipv6FragHdr>())
            }
            _ => return Ok(Some(offset)),
        };
        if offset + len > ip_end {
            return Err(bad);
        }
        packet.flow.proto = next;
        offset += len;
    }
    if is_ipv6_ext_header(packet.flow.proto) {
        return Err(bad);
    }
    Ok(Some(offset))
}

#[inline(always)]
fn is_ipv6_ext_header(next_header: u8) -> bool {
    matches!(
        next_header,
        IPV6_EXT_HOP_BY_HOP
            | IPV6_EXT_ROUTING
            | IPV6_EXT_DEST_OPTS
            | IPV6_EXT_AUTH
            | IPV6_EXT_FRAGMENT
    )
}

/// Reads the ports (and the SYN flag) of a TCP or UDP header at `offset`; leaves other
/// protocols as [`L4::Other`].
#[inline(always)]
fn parse_l4(frame: &Frame, offset: usize, ip_end: usize, packet: &mut Packet) -> Result<()> {
    match packet.flow.proto {
        PROTO_TCP => {
            let tcp: *const TcpHdr = frame
                .get_within(offset, ip_end)
                .ok_or(Exit::Drop(Counter::DropTruncatedL4))?;
            // SAFETY: `Frame::get_within` checked that the header is inside the packet.
            let tcp = unsafe { &*tcp };
            let offset_flags = u16::from_be(tcp.offset_flags_be);
            let header_len = usize::from(offset_flags >> 12) * 4;
            if header_len < TCP_LEN || offset + header_len > ip_end {
                return Err(Exit::Drop(Counter::DropBadTcpOffset));
            }
            packet.flow.src_port_be = tcp.src_port_be;
            packet.flow.dst_port_be = tcp.dst_port_be;
            packet.is_syn = offset_flags & (TCP_FLAG_SYN | TCP_FLAG_ACK) == TCP_FLAG_SYN;
            packet.l4 = L4::Ports;
        }
        PROTO_UDP => {
            let udp: *const UdpHdr = frame
                .get_within(offset, ip_end)
                .ok_or(Exit::Drop(Counter::DropTruncatedL4))?;
            // SAFETY: `Frame::get_within` checked that the header is inside the packet.
            let udp = unsafe { &*udp };
            packet.flow.src_port_be = udp.src_port_be;
            packet.flow.dst_port_be = udp.dst_port_be;
            packet.l4 = L4::Ports;
        }
        _ => {}
    }
    Ok(())
}
