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
    let ip = ip_part(frame);
    let (src_low, l4) = if ip[0] >> 4 == 4 {
        let ihl = usize::from(ip[0] & 0xf) * 4;
        (
            u32::from_be_bytes([ip[12], ip[13], ip[14], ip[15]]),
            &ip[ihl..],
        )
    } else {
        (
            u32::from_be_bytes([ip[20], ip[21], ip[22], ip[23]]),
            &ip[40..],
        )
    };
    u32::from(u16::from_be_bytes([l4[0], l4[1]])) ^ src_low
}
