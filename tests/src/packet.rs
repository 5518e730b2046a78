//! Frames for the fixtures, and the frames the balancer must turn them into.
//!
//! Inputs are built with `etherparse`; expected outputs are built here from the RFCs (the outer
//! header by etherparse, checksum included), independently of the eBPF code under test.

use std::net::IpAddr;

use etherparse::{IpNumber, Ipv4Header, Ipv6FlowLabel, Ipv6Header, PacketBuilder};

pub const CLIENT_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];
pub const LB_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x02];
pub const NEXT_HOP_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0xfe];

pub const TCP: u8 = 6;
pub const UDP: u8 = 17;

/// A 5-tuple as the client sends it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Flow {
    pub src: IpAddr,
    pub dst: IpAddr,
    pub src_port: u16,
    pub dst_port: u16,
    pub proto: u8,
}

/// TCP flags of a test segment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tcp {
    Syn,
    Ack,
}

/// A client frame of `flow` with `payload`: a TCP segment with `flags`, or a UDP datagram.
pub fn frame(flow: &Flow, flags: Tcp, payload: &[u8]) -> Vec<u8> {
    let eth = PacketBuilder::ethernet2(CLIENT_MAC, LB_MAC);
    let ip = match (flow.src, flow.dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => eth.ipv4(s.octets(), d.octets(), 64),
        (IpAddr::V6(s), IpAddr::V6(d)) => eth.ipv6(s.octets(), d.octets(), 64),
        _ => panic!("mixed families in {flow:?}"),
    };
    let mut out = Vec::new();
    match (flow.proto, flags) {
        (TCP, Tcp::Syn) => ip
            .tcp(flow.src_port, flow.dst_port, 1000, 64_000)
            .syn()
            .write(&mut out, payload),
        (TCP, Tcp::Ack) => ip
            .tcp(flow.src_port, flow.dst_port, 1001, 64_000)
            .ack(5000)
            .write(&mut out, payload),
        (UDP, _) => ip
            .udp(flow.src_port, flow.dst_port)
            .write(&mut out, payload),
        (proto, _) => panic!("no builder for protocol {proto}"),
    }
    .expect("building a frame");
    out
}

/// The IP packet inside an Ethernet frame, with whatever trails it.
pub fn ip_part(frame: &[u8]) -> &[u8] {
    &frame[14..]
}

/// What the balancer must send for `frame`: the same bytes behind a new Ethernet header
/// (`src_mac` -> `dst_mac`) and an outer IP header from `outer_src` to `backend`.
pub fn encapsulated(
    frame: &[u8],
    outer_src: IpAddr,
    backend: IpAddr,
    src_mac: [u8; 6],
    dst_mac: [u8; 6],
) -> Vec<u8> {
    encapsulated_with_spread(frame, spread(frame), outer_src, backend, src_mac, dst_mac)
}

/// [`encapsulated`] for a frame whose flow's spread is given (an ICMP error carries its
/// flow inside the quote).
pub fn encapsulated_with_spread(
    frame: &[u8],
    spread: u32,
    outer_src: IpAddr,
    backend: IpAddr,
    src_mac: [u8; 6],
    dst_mac: [u8; 6],
) -> Vec<u8> {
    let inner = ip_part(frame);
    let mut out = Vec::new();
    out.extend_from_slice(&dst_mac);
    out.extend_from_slice(&src_mac);
    match (outer_src, backend) {
        (IpAddr::V4(src), IpAddr::V4(dst)) => {
            out.extend_from_slice(&0x0800u16.to_be_bytes());
            let inner_len = u16::from_be_bytes([inner[2], inner[3]]);
            let tos = inner[1];
            let df = inner[6] & 0x40 != 0;
            let mut outer =
                Ipv4Header::new(inner_len, 64, IpNumber::IPV4, src.octets(), dst.octets())
                    .expect("outer header");
            outer.dscp = etherparse::IpDscp::try_new(tos >> 2).expect("dscp");
            outer.ecn = etherparse::IpEcn::try_new(tos & 3).expect("ecn");
            outer.dont_fragment = df;
            // A packet routers may fragment carries the inner identification (RFC 6864).
            outer.identification = if df {
                0
            } else {
                u16::from_be_bytes([inner[4], inner[5]])
            };
            outer.header_checksum = outer.calc_header_checksum();
            out.extend_from_slice(&outer.to_bytes());
        }
        (IpAddr::V6(src), IpAddr::V6(dst)) => {
            out.extend_from_slice(&0x86ddu16.to_be_bytes());
            let inner_len = 40 + u16::from_be_bytes([inner[4], inner[5]]);
            let traffic_class = (inner[0] << 4) | (inner[1] >> 4);
            let outer = Ipv6Header {
                traffic_class,
                flow_label: Ipv6FlowLabel::try_new(spread & 0xf_ffff).expect("flow label"),
                payload_length: inner_len,
                next_header: IpNumber::IPV6,
                hop_limit: 64,
                source: src.octets(),
                destination: dst.octets(),
            };
            out.extend_from_slice(&outer.to_bytes());
        }
        _ => panic!("mixed families"),
    }
    out.extend_from_slice(inner);
    out
}

/// The per-flow bits of a flow's outer source: the client's port XOR the last 32 bits of its
/// address.
pub fn flow_spread(flow: &Flow) -> u32 {
    let low = match flow.src {
        IpAddr::V4(a) => u32::from(a),
        IpAddr::V6(a) => {
            let o = a.octets();
            u32::from_be_bytes([o[12], o[13], o[14], o[15]])
        }
    };
    u32::from(flow.src_port) ^ low
}

/// Which ICMP error a router sends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IcmpError {
    /// IPv4 destination unreachable, fragmentation needed, with the next hop's MTU; or ICMPv6
    /// packet too big with the MTU.
    TooBig(u16),
    /// IPv4 or ICMPv6 destination unreachable, port unreachable.
    PortUnreachable,
}

/// The MAC of the router that sends the fixtures' ICMP errors.
pub const ROUTER_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x33];

/// The ICMP error `router` sends about `quoted` (a frame; its IP packet, cut to `quote_len`
/// bytes, is quoted) to that packet's source, through the balancer.
pub fn icmp_error(quoted: &[u8], router: IpAddr, error: IcmpError, quote_len: usize) -> Vec<u8> {
    let packet = &ip_part(quoted)[..quote_len];
    let eth = PacketBuilder::ethernet2(ROUTER_MAC, LB_MAC);
    let mut out = Vec::new();
    match router {
        IpAddr::V4(router) => {
            let source: [u8; 4] = packet[12..16].try_into().expect("an address");
            let icmp = match error {
                IcmpError::TooBig(mtu) => etherparse::Icmpv4Type::DestinationUnreachable(
                    etherparse::icmpv4::DestUnreachableHeader::FragmentationNeeded {
                        next_hop_mtu: mtu,
                    },
                ),
                IcmpError::PortUnreachable => etherparse::Icmpv4Type::DestinationUnreachable(
                    etherparse::icmpv4::DestUnreachableHeader::Port,
                ),
            };
            eth.ipv4(router.octets(), source, 60)
                .icmpv4(icmp)
                .write(&mut out, packet)
                .expect("an icmp frame");
        }
        IpAddr::V6(router) => {
            let source: [u8; 16] = packet[8..24].try_into().expect("an address");
            let icmp = match error {
                IcmpError::TooBig(mtu) => etherparse::Icmpv6Type::PacketTooBig {
                    mtu: u32::from(mtu),
                },
                IcmpError::PortUnreachable => etherparse::Icmpv6Type::DestinationUnreachable(
                    etherparse::icmpv6::DestUnreachableCode::Port,
                ),
            };
            eth.ipv6(router.octets(), source, 60)
                .icmpv6(icmp)
                .write(&mut out, packet)
                .expect("an icmp frame");
        }
    }
    out
}

/// Bytes of the offending packet the balancer's too-big answers quote (IPv4, IPv6).
pub const TOO_BIG_QUOTE_V4: usize = 128;
pub const TOO_BIG_QUOTE_V6: usize = 256;

/// The balancer's answer to a client `frame` (tagged or not) too big for `mtu` once
/// encapsulated: MACs swapped, the same tags, an ICMP "fragmentation needed" (IPv4, TOS 0xc0)
/// or "packet too big" (IPv6) from the VIP to the client with `next_mtu`, quoting the start of
/// the client's packet.
pub fn too_big_answer(frame: &[u8], next_mtu: u32) -> Vec<u8> {
    let mut l2 = 12;
    while matches!(get_u16(frame, l2), 0x8100 | 0x88a8) {
        l2 += 4;
    }
    let packet = &frame[l2 + 2..];
    let mut out = Vec::new();
    out.extend_from_slice(&frame[6..12]);
    out.extend_from_slice(&frame[0..6]);
    out.extend_from_slice(&frame[12..l2 + 2]);
    if packet[0] >> 4 == 4 {
        let quote = &packet[..TOO_BIG_QUOTE_V4];
        let icmp = etherparse::Icmpv4Header::with_checksum(
            etherparse::Icmpv4Type::DestinationUnreachable(
                etherparse::icmpv4::DestUnreachableHeader::FragmentationNeeded {
                    next_hop_mtu: u16::try_from(next_mtu).expect("a 16-bit MTU"),
                },
            ),
            quote,
        );
        let source: [u8; 4] = packet[16..20].try_into().expect("an address");
        let destination: [u8; 4] = packet[12..16].try_into().expect("an address");
        let mut ip = Ipv4Header::new(
            (8 + quote.len()) as u16,
            64,
            IpNumber::ICMP,
            source,
            destination,
        )
        .expect("an IPv4 header");
        ip.dscp = etherparse::IpDscp::try_new(0xc0 >> 2).expect("dscp");
        ip.dont_fragment = false;
        ip.identification = 0;
        ip.header_checksum = ip.calc_header_checksum();
        out.extend_from_slice(&ip.to_bytes());
        out.extend_from_slice(&icmp.to_bytes());
        out.extend_from_slice(quote);
    } else {
        let quote = &packet[..TOO_BIG_QUOTE_V6];
        let source: [u8; 16] = packet[24..40].try_into().expect("an address");
        let destination: [u8; 16] = packet[8..24].try_into().expect("an address");
        let icmp = etherparse::Icmpv6Header::with_checksum(
            etherparse::Icmpv6Type::PacketTooBig { mtu: next_mtu },
            source,
            destination,
            quote,
        )
        .expect("an ICMPv6 header");
        let ip = Ipv6Header {
            traffic_class: 0,
            flow_label: Ipv6FlowLabel::ZERO,
            payload_length: (8 + quote.len()) as u16,
            next_header: IpNumber::IPV6_ICMP,
            hop_limit: 64,
            source,
            destination,
        };
        out.extend_from_slice(&ip.to_bytes());
        out.extend_from_slice(&icmp.to_bytes());
        out.extend_from_slice(quote);
    }
    out
}

/// The per-flow bits of the outer source, computed from the frame as the README specifies:
/// the client's source port XOR the last 32 bits of its address.
pub fn spread(frame: &[u8]) -> u32 {
    let packet = etherparse::SlicedPacket::from_ethernet(frame).expect("a parsable frame");
    let src_low = match &packet.net {
        Some(etherparse::NetSlice::Ipv4(ip)) => u32::from(ip.header().source_addr()),
        Some(etherparse::NetSlice::Ipv6(ip)) => {
            let octets = ip.header().source();
            u32::from_be_bytes([octets[12], octets[13], octets[14], octets[15]])
        }
        other => panic!("not IP: {other:?}"),
    };
    let src_port = match &packet.transport {
        Some(etherparse::TransportSlice::Tcp(tcp)) => tcp.source_port(),
        Some(etherparse::TransportSlice::Udp(udp)) => udp.source_port(),
        other => panic!("not TCP or UDP: {other:?}"),
    };
    u32::from(src_port) ^ src_low
}

/// Offset of the IP header in a frame.
pub const L3: usize = 14;

/// Recomputes the IPv4 header checksum of `frame` (after a test edits the header).
pub fn fix_ipv4_checksum(frame: &mut [u8]) {
    let ihl = usize::from(frame[L3] & 0xf) * 4;
    let end = (L3 + ihl).min(frame.len());
    frame[L3 + 10] = 0;
    frame[L3 + 11] = 0;
    let mut sum = 0u32;
    for pair in frame[L3..end].chunks(2) {
        let word = u16::from_be_bytes([pair[0], *pair.get(1).unwrap_or(&0)]);
        sum += u32::from(word);
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    let check = !(sum as u16);
    frame[L3 + 10..L3 + 12].copy_from_slice(&check.to_be_bytes());
}

fn set_u16(frame: &mut [u8], at: usize, value: u16) {
    frame[at..at + 2].copy_from_slice(&value.to_be_bytes());
}

fn get_u16(frame: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([frame[at], frame[at + 1]])
}

/// Inserts IPv4 options (a multiple of 4 bytes) after the header of an IPv4 frame, fixing the
/// header length, total length and checksum.
pub fn with_ipv4_options(frame: &[u8], options: &[u8]) -> Vec<u8> {
    assert_eq!(options.len() % 4, 0, "IPv4 options come in words");
    let mut out = frame[..L3 + 20].to_vec();
    out.extend_from_slice(options);
    out.extend_from_slice(&frame[L3 + 20..]);
    out[L3] = 0x40 | (5 + options.len() / 4) as u8;
    let total = get_u16(&out, L3 + 2) + options.len() as u16;
    set_u16(&mut out, L3 + 2, total);
    fix_ipv4_checksum(&mut out);
    out
}

/// An IPv4 frame with "don't fragment" clear and identification `id`.
pub fn without_dont_fragment(frame: &[u8], id: u16) -> Vec<u8> {
    let mut out = frame.to_vec();
    set_u16(&mut out, L3 + 4, id);
    out[L3 + 6] &= !0x40;
    fix_ipv4_checksum(&mut out);
    out
}

/// Inserts VLAN tags (TPID, VLAN id; outermost first) after the MAC addresses of a frame.
pub fn with_vlan_tags(frame: &[u8], tags: &[(u16, u16)]) -> Vec<u8> {
    let mut out = frame[..12].to_vec();
    for &(tpid, vid) in tags {
        out.extend_from_slice(&tpid.to_be_bytes());
        out.extend_from_slice(&vid.to_be_bytes());
    }
    out.extend_from_slice(&frame[12..]);
    out
}

/// Removes `count` VLAN tags after the MAC addresses of a frame.
pub fn without_vlan_tags(frame: &[u8], count: usize) -> Vec<u8> {
    let mut out = frame[..12].to_vec();
    out.extend_from_slice(&frame[12 + 4 * count..]);
    out
}

/// An untagged IPv4 frame with its TOS set (checksum fixed).
pub fn with_ipv4_tos(frame: &[u8], tos: u8) -> Vec<u8> {
    let mut out = frame.to_vec();
    set_ipv4_tos(&mut out, tos);
    out
}

/// Sets the TOS of an untagged IPv4 frame's (outer) header, fixing its checksum.
pub fn set_ipv4_tos(frame: &mut [u8], tos: u8) {
    frame[L3 + 1] = tos;
    fix_ipv4_checksum(frame);
}

/// An untagged IPv6 frame with its traffic class set.
pub fn with_ipv6_traffic_class(frame: &[u8], class: u8) -> Vec<u8> {
    let mut out = frame.to_vec();
    set_ipv6_traffic_class(&mut out, class);
    out
}

/// Sets the traffic class of an untagged IPv6 frame's (outer) header.
pub fn set_ipv6_traffic_class(frame: &mut [u8], class: u8) {
    frame[L3] = 0x60 | (class >> 4);
    frame[L3 + 1] = (frame[L3 + 1] & 0x0f) | (class << 4);
}

/// Puts a fragment header (`offset_flags`: offset << 3 | M) between the outer IPv6 header of an
/// IPv6-in-IPv6 frame and its inner packet.
pub fn with_outer_ipv6_fragment(frame: &[u8], offset_flags: u16) -> Vec<u8> {
    let mut out = frame[..L3 + 40].to_vec();
    let next = out[L3 + 6];
    out[L3 + 6] = FRAGMENT;
    out.extend_from_slice(&[next, 0]);
    out.extend_from_slice(&offset_flags.to_be_bytes());
    out.extend_from_slice(&0x0bad_cafeu32.to_be_bytes());
    out.extend_from_slice(&frame[L3 + 40..]);
    let payload = get_u16(&out, L3 + 4) + 8;
    set_u16(&mut out, L3 + 4, payload);
    out
}

/// Sets an IPv4 frame's fragment field (flags and offset, host order) and fixes the checksum.
pub fn with_ipv4_fragment(frame: &[u8], flags_offset: u16) -> Vec<u8> {
    let mut out = frame.to_vec();
    set_u16(&mut out, L3 + 6, flags_offset);
    fix_ipv4_checksum(&mut out);
    out
}

/// An IPv6 extension header: its type and its bytes (the first byte, the next header, is
/// filled in by [`with_ipv6_ext`]).
pub struct Ext {
    pub kind: u8,
    pub bytes: Vec<u8>,
}

pub const HOP_BY_HOP: u8 = 0;
pub const ROUTING: u8 = 43;
pub const FRAGMENT: u8 = 44;
pub const AUTH: u8 = 51;
pub const DEST_OPTS: u8 = 60;

impl Ext {
    /// A hop-by-hop, routing or destination-options header of `8 * (1 + len)` bytes.
    pub fn options(kind: u8, len: u8) -> Self {
        let mut bytes = vec![0u8; 8 * (usize::from(len) + 1)];
        bytes[1] = len;
        if kind == ROUTING {
            bytes[2] = 4; // segment routing type, segments left 0: ignored by receivers
        } else {
            bytes[2] = 1; // PadN covering the rest
            bytes[3] = (bytes.len() - 4) as u8;
        }
        Self { kind, bytes }
    }

    /// An authentication header of `4 * (len + 2)` bytes.
    pub fn auth(len: u8) -> Self {
        let mut bytes = vec![0u8; 4 * (usize::from(len) + 2)];
        bytes[1] = len;
        Self { kind: AUTH, bytes }
    }

    /// A fragment header with `offset_flags` (offset << 3 | M).
    pub fn fragment(offset_flags: u16) -> Self {
        let mut bytes = vec![0u8; 8];
        bytes[2..4].copy_from_slice(&offset_flags.to_be_bytes());
        bytes[4..8].copy_from_slice(&0x1234_5678u32.to_be_bytes());
        Self {
            kind: FRAGMENT,
            bytes,
        }
    }
}

/// Inserts extension headers after the fixed header of an IPv6 frame, chaining the next-header
/// fields and fixing the payload length.
pub fn with_ipv6_ext(frame: &[u8], exts: &[Ext]) -> Vec<u8> {
    let upper = frame[L3 + 6];
    let mut out = frame[..L3 + 40].to_vec();
    let mut added = 0u16;
    for (i, ext) in exts.iter().enumerate() {
        let mut bytes = ext.bytes.clone();
        bytes[0] = exts.get(i + 1).map_or(upper, |next| next.kind);
        out.extend_from_slice(&bytes);
        added += bytes.len() as u16;
    }
    if let Some(first) = exts.first() {
        out[L3 + 6] = first.kind;
    }
    out.extend_from_slice(&frame[L3 + 40..]);
    let payload = get_u16(&out, L3 + 4) + added;
    set_u16(&mut out, L3 + 4, payload);
    out
}

/// Sets the TCP flags of an untagged IPv4 frame's segment (checksum not fixed: the balancer
/// does not read it).
pub fn with_tcp_flags(frame: &[u8], flags: u8) -> Vec<u8> {
    let mut out = frame.to_vec();
    let l4 = L3 + usize::from(out[L3] & 0xf) * 4;
    out[l4 + 13] = flags;
    out
}

/// Sets the TCP data offset (in words) of a frame whose TCP header starts at `l4`.
pub fn with_tcp_offset(frame: &[u8], l4: usize, words: u8) -> Vec<u8> {
    let mut out = frame.to_vec();
    out[l4 + 12] = (words << 4) | (out[l4 + 12] & 0x0f);
    out
}

/// Sets an IPv4 frame's total length (and fixes the checksum).
pub fn with_ipv4_total_len(frame: &[u8], total: u16) -> Vec<u8> {
    let mut out = frame.to_vec();
    set_u16(&mut out, L3 + 2, total);
    fix_ipv4_checksum(&mut out);
    out
}

/// Sets an IPv6 frame's payload length.
pub fn with_ipv6_payload_len(frame: &[u8], len: u16) -> Vec<u8> {
    let mut out = frame.to_vec();
    set_u16(&mut out, L3 + 4, len);
    out
}

/// An ARP request frame.
pub fn arp() -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(&[0xff; 6]);
    out.extend_from_slice(&CLIENT_MAC);
    out.extend_from_slice(&0x0806u16.to_be_bytes());
    out.extend_from_slice(&[0, 1, 8, 0, 6, 4, 0, 1]);
    out.extend_from_slice(&CLIENT_MAC);
    out.extend_from_slice(&[198, 18, 0, 1]);
    out.extend_from_slice(&[0; 6]);
    out.extend_from_slice(&[198, 18, 100, 1]);
    out.resize(60, 0);
    out
}

/// An ICMP echo request (v4) or ICMPv6 echo request (v6) from `src` to `dst`.
pub fn ping(src: IpAddr, dst: IpAddr) -> Vec<u8> {
    let eth = PacketBuilder::ethernet2(CLIENT_MAC, LB_MAC);
    let mut out = Vec::new();
    match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => eth
            .ipv4(s.octets(), d.octets(), 64)
            .icmpv4_echo_request(1, 1)
            .write(&mut out, b"ping"),
        (IpAddr::V6(s), IpAddr::V6(d)) => eth
            .ipv6(s.octets(), d.octets(), 64)
            .icmpv6_echo_request(1, 1)
            .write(&mut out, b"ping"),
        _ => panic!("mixed families"),
    }
    .expect("building a ping");
    out
}
