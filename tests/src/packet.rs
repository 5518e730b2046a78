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
            outer.identification = 0;
            outer.header_checksum = outer.calc_header_checksum();
            out.extend_from_slice(&outer.to_bytes());
        }
        (IpAddr::V6(src), IpAddr::V6(dst)) => {
            out.extend_from_slice(&0x86ddu16.to_be_bytes());
            let inner_len = 40 + u16::from_be_bytes([inner[4], inner[5]]);
            let traffic_class = (inner[0] << 4) | (inner[1] >> 4);
            let spread = spread(frame);
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
