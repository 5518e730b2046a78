//! Ethernet (and up to two VLAN tags) -> IPv4 or IPv6 -> TCP, UDP or ICMP.
//!
//! [`parse_packet`] reads the headers once and returns a [`Packet`]: the flow's 5-tuple as a
//! connection-table key, what kind of layer 4 follows and where, and the few IP fields
//! encapsulation copies. It stops with a [`Stop`]:
//!
//! - [`Stop::Exit`] for what is not IP (ARP, LLDP, more than two tags): the kernel's;
//! - [`Stop::Unreadable`] when the IP header cannot be read;
//! - [`Stop::Malformed`] for a header that is truncated or inconsistent with the frame, with the
//!   reason; [`destination`] then reads the IP header's destination. The caller decides: a frame
//!   not provably addressed to a passthrough VIP goes to the kernel, which judges it as it
//!   would without the balancer.
//!
//! - 802.1Q and 802.1ad tags are skipped (two at most); [`Packet::l2_len`] says where IP starts.
//! - IPv4 options are skipped by the header length, never dropped.
//! - IPv6 extension headers (hop-by-hop, routing, destination options, authentication,
//!   fragment) are walked up to [`MAX_IPV6_EXT_HEADERS`] deep.
//! - A fragment other than the first yields [`L4::Fragment`]: its ports are unknown. A first
//!   fragment is parsed on (its ports choose the VIP) and flagged [`PACKET_FIRST_FRAGMENT`].

use aya_ebpf::{helpers::generated::bpf_xdp_get_buff_len, programs::XdpContext};
use lb_common::{
    abi::{AddrBe, FAMILY_V4, FAMILY_V6, FlowKey, PROTO_TCP, PROTO_UDP},
    counters::Counter,
};

use crate::{
    Exit,
    hdr::{
        ETH_LEN, ETH_P_8021AD, ETH_P_8021Q, ETH_P_IPV4, ETH_P_IPV6, EthHdr, IPPROTO_ICMP,
        IPPROTO_ICMPV6, IPV4_DF, IPV4_LEN, IPV4_MF_OFFSET, IPV6_EXT_AUTH, IPV6_EXT_DEST_OPTS,
        IPV6_EXT_FRAGMENT, IPV6_EXT_HOP_BY_HOP, IPV6_EXT_ROUTING, IPV6_LEN, Ipv4Hdr, Ipv6ExtHdr,
        Ipv6FragHdr, Ipv6Hdr, TCP_FLAG_ACK, TCP_FLAG_RST, TCP_FLAG_SYN, TCP_LEN, TcpHdr, UdpHdr,
        VLAN_LEN, VlanHdr,
    },
    ptr::Frame,
};

/// How many IPv6 extension headers the parser walks before giving up on a packet.
pub const MAX_IPV6_EXT_HEADERS: usize = 4;

/// Why [`parse_packet`] stopped.
#[derive(Clone, Copy)]
pub enum Stop {
    /// A verdict the parser can give on its own (not IP: the kernel's).
    Exit(Exit<Counter>),
    /// Headers before the IP header's addresses that cannot be read.
    Unreadable,
    /// A readable IP header (see [`destination`]) with headers, after it or in it, that are
    /// truncated or inconsistent with the frame: the reason.
    ///
    /// The destination is not carried here but read again by whoever needs it: the parse of
    /// every good packet would otherwise pay for keeping it ready at each check.
    Malformed(Counter),
}

type Result<T> = core::result::Result<T, Stop>;

/// What follows the IP header.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum L4 {
    /// TCP or UDP: the flow's ports are in [`Packet::flow`].
    Ports,
    /// A fragment after the first: no ports to read.
    Fragment,
    /// ICMP (IPv4) or ICMPv6, at [`Packet::l4_offset`].
    Icmp,
    /// Another protocol.
    Other,
}

/// What the balancer needs to know about a packet.
#[derive(Clone, Copy)]
pub struct Packet {
    /// The 5-tuple as sent (ports zero unless `l4` is [`L4::Ports`]).
    pub flow: FlowKey,
    pub l4: L4,
    /// `PACKET_*` bits (one byte rather than four flags: the program carries it in one
    /// register across the whole packet's path).
    pub flags: u8,
    /// Length of the IP packet (header included) as its header states it.
    pub ip_len: u32,
    /// IPv4 TOS or IPv6 traffic class, copied to the outer header.
    pub tos: u8,
    /// Length of the link-layer header: 14, plus 4 per VLAN tag. The IP header starts here.
    pub l2_len: usize,
    /// Offset of the layer-4 header (meaningful for [`L4::Ports`] and [`L4::Icmp`]).
    pub l4_offset: usize,
}

/// A TCP SYN without ACK: the first packet of a connection.
pub const PACKET_SYN: u8 = 1;
/// A TCP reset.
pub const PACKET_RST: u8 = 2;
/// The first fragment of a fragmented packet (its ports were read).
pub const PACKET_FIRST_FRAGMENT: u8 = 4;
/// IPv4 "don't fragment", copied to the outer header.
pub const PACKET_DONT_FRAGMENT: u8 = 8;

impl Packet {
    /// A TCP SYN without ACK: the first packet of a connection.
    #[inline(always)]
    pub fn is_syn(&self) -> bool {
        self.flags & PACKET_SYN != 0
    }

    /// A TCP reset.
    #[inline(always)]
    pub fn is_rst(&self) -> bool {
        self.flags & PACKET_RST != 0
    }

    /// The first fragment of a fragmented packet (its ports were read).
    #[inline(always)]
    pub fn is_fragment(&self) -> bool {
        self.flags & PACKET_FIRST_FRAGMENT != 0
    }

    /// IPv4 "don't fragment".
    #[inline(always)]
    pub fn dont_fragment(&self) -> bool {
        self.flags & PACKET_DONT_FRAGMENT != 0
    }

    /// Whether the frame carries VLAN tags.
    #[inline(always)]
    pub fn is_tagged(&self) -> bool {
        self.l2_len != ETH_LEN
    }
}

/// Parses the headers of the frame in `ctx`.
#[inline(always)]
pub fn parse_packet(ctx: &XdpContext) -> Result<Packet> {
    let frame = Frame::new(ctx);
    let (ether_type, l2_len) = parse_l2(&frame)?;
    match ether_type {
        ETH_P_IPV4 => parse_ipv4(ctx, &frame, l2_len),
        ETH_P_IPV6 => parse_ipv6(ctx, &frame, l2_len),
        _ => Err(Stop::Exit(Exit::Pass(Counter::PassNotIp))),
    }
}

/// The destination address and family of a frame whose IP header is readable (the frames
/// [`Stop::Malformed`] is given for); `None` if it is not.
#[inline(always)]
pub fn destination(ctx: &XdpContext) -> Option<(AddrBe, u8)> {
    let frame = Frame::new(ctx);
    let (ether_type, l2_len) = parse_l2(&frame).ok()?;
    match ether_type {
        ETH_P_IPV4 => {
            let ip: *const Ipv4Hdr = frame.get(l2_len)?;
            // SAFETY: `Frame::get` checked that the whole header is inside the packet.
            let ip = unsafe { &*ip };
            (ip.version_ihl >> 4 == 4).then_some(([ip.dst_be, 0, 0, 0], FAMILY_V4))
        }
        ETH_P_IPV6 => {
            let ip: *const Ipv6Hdr = frame.get(l2_len)?;
            // SAFETY: as above.
            let ip = unsafe { &*ip };
            (u32::from_be(ip.vtc_flow_be) >> 28 == 6).then_some((ip.dst_be, FAMILY_V6))
        }
        _ => None,
    }
}

#[inline(always)]
fn is_vlan(ether_type: u16) -> bool {
    ether_type == ETH_P_8021Q || ether_type == ETH_P_8021AD
}

/// The EtherType after the VLAN tags (two at most), and where the network header starts.
#[inline(always)]
pub fn parse_l2(frame: &Frame) -> Result<(u16, usize)> {
    let eth: *const EthHdr = frame.get(0).ok_or(Stop::Unreadable)?;
    // SAFETY: `Frame::get` checked that the whole header is inside the packet.
    let ether_type = u16::from_be(unsafe { (*eth).ether_type_be });
    if !is_vlan(ether_type) {
        return Ok((ether_type, ETH_LEN));
    }
    let outer: *const VlanHdr = frame.get(ETH_LEN).ok_or(Stop::Unreadable)?;
    // SAFETY: as above.
    let ether_type = u16::from_be(unsafe { (*outer).ether_type_be });
    if !is_vlan(ether_type) {
        return Ok((ether_type, ETH_LEN + VLAN_LEN));
    }
    let inner: *const VlanHdr = frame.get(ETH_LEN + VLAN_LEN).ok_or(Stop::Unreadable)?;
    // SAFETY: as above.
    let ether_type = u16::from_be(unsafe { (*inner).ether_type_be });
    if is_vlan(ether_type) {
        return Err(Stop::Exit(Exit::Pass(Counter::PassNotIp)));
    }
    Ok((ether_type, ETH_LEN + 2 * VLAN_LEN))
}

/// The length of the whole frame, fragments included. Only asked for when the IP header claims
/// more than the linear data holds, since it costs a helper call.
#[inline(always)]
fn frame_len_with_frags(ctx: &XdpContext, frame: &Frame) -> usize {
    // SAFETY: `ctx.ctx` is the context the kernel passed to the program.
    let len = unsafe { bpf_xdp_get_buff_len(ctx.ctx) };
    usize::try_from(len).unwrap_or(frame.len())
}

/// Whether an IP packet of `ip_len` bytes at `ip_offset` fits in the frame.
#[inline(always)]
fn fits(ctx: &XdpContext, frame: &Frame, ip_offset: usize, ip_len: usize) -> bool {
    let end = ip_offset + ip_len;
    end <= frame.len() || end <= frame_len_with_frags(ctx, frame)
}

#[inline(always)]
fn parse_ipv4(ctx: &XdpContext, frame: &Frame, l2_len: usize) -> Result<Packet> {
    let ip: *const Ipv4Hdr = frame.get(l2_len).ok_or(Stop::Unreadable)?;
    // SAFETY: `Frame::get` checked that the whole header is inside the packet.
    let ip = unsafe { &*ip };
    if ip.version_ihl >> 4 != 4 {
        return Err(Stop::Unreadable);
    }
    let header_len = usize::from(ip.version_ihl & 0x0f) * 4;
    if header_len < IPV4_LEN || l2_len + header_len > frame.len() {
        return Err(Stop::Malformed(Counter::DropBadIhl));
    }
    let ip_len_u16 = u16::from_be(ip.tot_len_be);
    let ip_len = usize::from(ip_len_u16);
    if ip_len < header_len || !fits(ctx, frame, l2_len, ip_len) {
        return Err(Stop::Malformed(Counter::DropBadLength));
    }

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
        flags: (if frag_off & IPV4_MF_OFFSET != 0 {
            PACKET_FIRST_FRAGMENT
        } else {
            0
        }) | if frag_off & IPV4_DF != 0 {
            PACKET_DONT_FRAGMENT
        } else {
            0
        },
        ip_len: u32::from(ip_len_u16),
        tos: ip.tos,
        l2_len,
        l4_offset: l2_len + header_len,
    };
    // A fragment with an offset: only the first fragment carries the layer-4 header.
    if frag_off & 0x1fff != 0 {
        packet.l4 = L4::Fragment;
        return Ok(packet);
    }
    parse_l4(frame, l2_len + ip_len, &mut packet, IPPROTO_ICMP)?;
    Ok(packet)
}

#[inline(always)]
fn parse_ipv6(ctx: &XdpContext, frame: &Frame, l2_len: usize) -> Result<Packet> {
    let ip: *const Ipv6Hdr = frame.get(l2_len).ok_or(Stop::Unreadable)?;
    // SAFETY: `Frame::get` checked that the whole header is inside the packet.
    let ip = unsafe { &*ip };
    let vtc_flow = u32::from_be(ip.vtc_flow_be);
    if vtc_flow >> 28 != 6 {
        return Err(Stop::Unreadable);
    }
    let payload_len = u16::from_be(ip.payload_len_be);
    let ip_len = IPV6_LEN + usize::from(payload_len);
    if !fits(ctx, frame, l2_len, ip_len) {
        return Err(Stop::Malformed(Counter::DropBadLength));
    }

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
        flags: 0,
        ip_len: u32::from(payload_len) + 40,
        tos,
        l2_len,
        l4_offset: l2_len + IPV6_LEN,
    };
    let ip_end = l2_len + ip_len;
    walk_ipv6_ext_headers(frame, ip_end, &mut packet)?;
    if packet.l4 == L4::Fragment {
        return Ok(packet);
    }
    parse_l4(frame, ip_end, &mut packet, IPPROTO_ICMPV6)?;
    Ok(packet)
}

/// Walks the IPv6 extension headers from `packet.l4_offset`. Leaves the upper-layer protocol
/// in `packet.flow.proto` and its offset in `packet.l4_offset`; marks fragments.
#[inline(always)]
fn walk_ipv6_ext_headers(frame: &Frame, ip_end: usize, packet: &mut Packet) -> Result<()> {
    let bad = Stop::Malformed(Counter::DropBadExtHeader);
    let mut offset = packet.l4_offset;
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
                let offset_flags = u16::from_be(frag.offset_flags_be);
                if offset_flags & 0xfff8 != 0 {
                    packet.l4 = L4::Fragment;
                    packet.flow.proto = frag.next_header;
                    return Ok(());
                }
                // Offset 0 with "more fragments" is a first fragment; without, an atomic
                // fragment (RFC 6946): a whole packet. Both are parsed on.
                if offset_flags & 1 != 0 {
                    packet.flags |= PACKET_FIRST_FRAGMENT;
                }
                (frag.next_header, size_of::<Ipv6FragHdr>())
            }
            _ => {
                packet.l4_offset = offset;
                return Ok(());
            }
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
    packet.l4_offset = offset;
    Ok(())
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

/// Reads the ports (and the SYN and RST flags) of a TCP or UDP header at `packet.l4_offset`;
/// marks ICMP (`icmp_proto` is the family's ICMP protocol number); leaves other protocols as
/// [`L4::Other`].
#[inline(always)]
fn parse_l4(frame: &Frame, ip_end: usize, packet: &mut Packet, icmp_proto: u8) -> Result<()> {
    let offset = packet.l4_offset;
    let malformed = Stop::Malformed;
    match packet.flow.proto {
        PROTO_TCP => {
            let tcp: *const TcpHdr = frame
                .get_within(offset, ip_end)
                .ok_or_else(|| malformed(Counter::DropTruncatedL4))?;
            // SAFETY: `Frame::get_within` checked that the header is inside the packet.
            let tcp = unsafe { &*tcp };
            let offset_flags = u16::from_be(tcp.offset_flags_be);
            let header_len = usize::from(offset_flags >> 12) * 4;
            if header_len < TCP_LEN || offset + header_len > ip_end {
                return Err(malformed(Counter::DropBadTcpOffset));
            }
            packet.flow.src_port_be = tcp.src_port_be;
            packet.flow.dst_port_be = tcp.dst_port_be;
            if offset_flags & (TCP_FLAG_SYN | TCP_FLAG_ACK) == TCP_FLAG_SYN {
                packet.flags |= PACKET_SYN;
            }
            if offset_flags & TCP_FLAG_RST != 0 {
                packet.flags |= PACKET_RST;
            }
            packet.l4 = L4::Ports;
        }
        PROTO_UDP => {
            let udp: *const UdpHdr = frame
                .get_within(offset, ip_end)
                .ok_or_else(|| malformed(Counter::DropTruncatedL4))?;
            // SAFETY: `Frame::get_within` checked that the header is inside the packet.
            let udp = unsafe { &*udp };
            packet.flow.src_port_be = udp.src_port_be;
            packet.flow.dst_port_be = udp.dst_port_be;
            packet.l4 = L4::Ports;
        }
        proto if proto == icmp_proto && !packet.is_fragment() => packet.l4 = L4::Icmp,
        _ => {}
    }
    Ok(())
}
