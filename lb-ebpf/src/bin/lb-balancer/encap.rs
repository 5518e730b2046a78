//! IP-in-IP encapsulation: IPv4 in IPv4, IPv6 in IPv6.
//!
//! The frame grows at its head by one IP header; the Ethernet header moves to the new front
//! (its MAC addresses are rewritten by `forward`), and the outer header addresses the backend
//! from a per-flow source (`lb_common::hash::flow_spread`). The inner packet is not touched.

use aya_ebpf::{helpers::generated::bpf_xdp_adjust_head, programs::XdpContext};
use lb_common::{
    abi::{AddrBe, Backend, DatapathConfig, FAMILY_V4},
    counters::Counter,
    hash::flow_spread,
};
use lb_ebpf::{
    Exit, csum,
    hdr::{
        ETH_LEN, ETH_P_IPV4, ETH_P_IPV6, EthHdr, IPPROTO_IPIP, IPPROTO_IPV6, IPV4_DF, IPV4_LEN,
        IPV6_LEN, Ipv4Hdr, Ipv6Hdr,
    },
    parse::Packet,
    ptr::Frame,
};

use crate::Result;

/// Bytes the outer header adds.
const IPV4_OVERHEAD: u32 = 20;
const IPV6_OVERHEAD: u32 = 40;
const _: () = assert!(IPV4_OVERHEAD as usize == IPV4_LEN && IPV6_OVERHEAD as usize == IPV6_LEN);

/// Hop limit of the outer header.
const OUTER_TTL: u8 = 64;

/// What `forward` needs to know about the encapsulated packet.
pub struct Outer {
    pub family: u8,
    pub src_be: AddrBe,
    pub dst_be: AddrBe,
    /// Length of the outer IP packet.
    pub ip_len: u32,
    pub tos: u8,
    /// The destination MAC the frame arrived with: this host's, the source of the new frame.
    pub ingress_mac: [u8; 6],
}

/// Encapsulates the packet for `backend`.
#[inline(always)]
pub fn encap(
    ctx: &XdpContext,
    packet: &Packet,
    backend: &Backend,
    config: &DatapathConfig,
) -> Result<Outer> {
    let is_v4 = packet.flow.family == FAMILY_V4;
    let overhead = if is_v4 { IPV4_OVERHEAD } else { IPV6_OVERHEAD };
    let outer_len = packet.ip_len + overhead;
    if config.mtu != 0 && outer_len > config.mtu {
        return Err(Exit::Drop(Counter::DropTooBig));
    }
    let eth: *const EthHdr = Frame::new(ctx)
        .get(0)
        .ok_or(Exit::Drop(Counter::DropTruncatedEth))?;
    // SAFETY: `Frame::get` checked the header is inside the packet; copied before the move.
    let eth = unsafe { *eth };
    let ingress_mac = eth.dst;

    let spread = flow_spread(&packet.flow);
    let mut outer = Outer {
        family: packet.flow.family,
        src_be: [0; 4],
        dst_be: backend.addr_be,
        ip_len: outer_len,
        tos: packet.tos,
        ingress_mac,
    };
    // SAFETY: `ctx.ctx` is the context the kernel passed; the delta is a header's length.
    if unsafe { bpf_xdp_adjust_head(ctx.ctx, -(overhead.cast_signed())) } != 0 {
        return Err(Exit::Drop(Counter::DropEncapFailed));
    }
    let frame = Frame::new(ctx);
    if is_v4 {
        outer.src_be[0] = (config.encap_src_v4_base | (spread & config.encap_src_v4_mask)).to_be();
        write_ipv4(&frame, &eth, packet, &outer)?;
    } else {
        outer.src_be = config.encap_src_v6_base_be;
        outer.src_be[3] =
            (u32::from_be(outer.src_be[3]) | (spread & config.encap_src_v6_mask)).to_be();
        write_ipv6(&frame, &eth, packet, &outer, spread)?;
    }
    Ok(outer)
}

/// Writes the Ethernet header at the new front: the frame's own MACs (so that a frame handed
/// to the kernel is still addressed to this host; `forward` sets the next hop's) and the outer
/// EtherType.
#[inline(always)]
fn write_eth(frame: &Frame, original: &EthHdr, ether_type: u16) -> Result<()> {
    let eth: *mut EthHdr = frame
        .get_mut(0)
        .ok_or(Exit::Drop(Counter::DropEncapFailed))?;
    // SAFETY: `Frame::get_mut` checked the header is inside the packet.
    unsafe {
        eth.write(EthHdr {
            dst: original.dst,
            src: original.src,
            ether_type_be: ether_type.to_be(),
        });
    }
    Ok(())
}

#[inline(always)]
fn write_ipv4(frame: &Frame, eth: &EthHdr, packet: &Packet, outer: &Outer) -> Result<()> {
    write_eth(frame, eth, ETH_P_IPV4)?;
    let ip: *mut Ipv4Hdr = frame
        .get_mut(ETH_LEN)
        .ok_or(Exit::Drop(Counter::DropEncapFailed))?;
    #[expect(
        clippy::cast_possible_truncation,
        reason = "checked against the MTU, <= 65535 + 20"
    )]
    let tot_len = outer.ip_len as u16;
    let mut hdr = Ipv4Hdr {
        version_ihl: 0x45,
        tos: outer.tos,
        tot_len_be: tot_len.to_be(),
        id_be: 0,
        frag_off_be: if packet.dont_fragment {
            IPV4_DF.to_be()
        } else {
            0
        },
        ttl: OUTER_TTL,
        proto: IPPROTO_IPIP,
        check: 0,
        src_be: outer.src_be[0],
        dst_be: outer.dst_be[0],
    };
    hdr.check = csum::ipv4_header(&hdr);
    // SAFETY: `Frame::get_mut` checked the header is inside the packet.
    unsafe { ip.write(hdr) };
    Ok(())
}

#[inline(always)]
fn write_ipv6(
    frame: &Frame,
    eth: &EthHdr,
    packet: &Packet,
    outer: &Outer,
    spread: u32,
) -> Result<()> {
    write_eth(frame, eth, ETH_P_IPV6)?;
    let ip: *mut Ipv6Hdr = frame
        .get_mut(ETH_LEN)
        .ok_or(Exit::Drop(Counter::DropEncapFailed))?;
    #[expect(
        clippy::cast_possible_truncation,
        reason = "the inner length came from 16 bits"
    )]
    let payload_len = packet.ip_len as u16;
    let vtc_flow = (6 << 28) | (u32::from(outer.tos) << 20) | (spread & 0x000f_ffff);
    let hdr = Ipv6Hdr {
        vtc_flow_be: vtc_flow.to_be(),
        payload_len_be: payload_len.to_be(),
        next_header: IPPROTO_IPV6,
        hop_limit: OUTER_TTL,
        src_be: outer.src_be,
        dst_be: outer.dst_be,
    };
    // SAFETY: `Frame::get_mut` checked the header is inside the packet.
    unsafe { ip.write(hdr) };
    Ok(())
}
