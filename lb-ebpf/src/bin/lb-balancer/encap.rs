//! IP-in-IP encapsulation: IPv4 in IPv4, IPv6 in IPv6.
//!
//! The frame grows at its head by one IP header (and shrinks or grows by the difference
//! between the VLAN tags it arrived with and those it leaves with). The link-layer header is
//! rewritten at the new front: the frame's own MAC addresses (so that a frame handed to the
//! kernel is still addressed to this host; `forward` sets the next hop's), the egress tags and
//! the outer EtherType. The outer header addresses the backend from a per-flow source
//! (`lb_common::hash::flow_spread`). The inner packet is not touched.

use aya_ebpf::{helpers::generated::bpf_xdp_adjust_head, programs::XdpContext};
use lb_common::{
    abi::{AddrBe, Backend, DatapathConfig, FAMILY_V4, FlowKey},
    counters::Counter,
    hash::flow_spread,
};
use lb_ebpf::{
    Exit, csum,
    hdr::{
        ETH_LEN, ETH_P_IPV4, ETH_P_IPV6, IPPROTO_IPIP, IPPROTO_IPV6, IPV4_DF, IPV4_LEN, IPV6_LEN,
        Ipv4Hdr, Ipv6Hdr, MACS_LEN, MacPair, VLAN_LEN, VlanTag,
    },
    parse::Packet,
    ptr::Frame,
};

use crate::Result;

/// Bytes the outer header adds.
pub const IPV4_OVERHEAD: u32 = 20;
pub const IPV6_OVERHEAD: u32 = 40;
const _: () = assert!(IPV4_OVERHEAD as usize == IPV4_LEN && IPV6_OVERHEAD as usize == IPV6_LEN);

/// Hop limit of the outer header.
const OUTER_TTL: u8 = 64;

/// The outer header of a packet about to be encapsulated.
pub struct Outer {
    pub family: u8,
    pub src_be: AddrBe,
    pub dst_be: AddrBe,
    /// Length of the outer IP packet.
    pub ip_len: u32,
    pub tos: u8,
    pub dont_fragment: bool,
    /// Per-flow bits of the source (and of the IPv6 flow label).
    pub spread: u32,
}

impl Outer {
    /// The outer header that carries `packet` of `flow` (whose spread chooses the source) to
    /// `backend`.
    #[inline(always)]
    pub fn new(
        packet: &Packet,
        flow: &FlowKey,
        backend: &Backend,
        config: &DatapathConfig,
    ) -> Self {
        let spread = flow_spread(flow);
        let is_v4 = packet.flow.family == FAMILY_V4;
        let mut src_be = [0; 4];
        if is_v4 {
            src_be[0] = (config.encap_src_v4_base | (spread & config.encap_src_v4_mask)).to_be();
        } else {
            src_be = config.encap_src_v6_base_be;
            src_be[3] = (u32::from_be(src_be[3]) | (spread & config.encap_src_v6_mask)).to_be();
        }
        let overhead = if is_v4 { IPV4_OVERHEAD } else { IPV6_OVERHEAD };
        Self {
            family: packet.flow.family,
            src_be,
            dst_be: backend.addr_be,
            ip_len: packet.ip_len + overhead,
            tos: packet.tos,
            dont_fragment: packet.dont_fragment,
            spread,
        }
    }

    #[inline(always)]
    fn overhead(&self) -> u32 {
        if self.family == FAMILY_V4 {
            IPV4_OVERHEAD
        } else {
            IPV6_OVERHEAD
        }
    }
}

/// The VLAN tags a frame carries or will carry (outermost first).
#[derive(Clone, Copy)]
pub struct Tags {
    pub count: usize,
    pub tags: [VlanTag; 2],
}

impl Tags {
    pub const NONE: Self = Self {
        count: 0,
        tags: [VlanTag {
            tpid_be: 0,
            tci_be: 0,
        }; 2],
    };

    /// The tags of the frame `packet` was parsed from.
    #[inline(always)]
    pub fn of(frame: &Frame, packet: &Packet) -> Self {
        let mut tags = Self::NONE;
        tags.count = (packet.l2_len - ETH_LEN) / VLAN_LEN;
        if tags.count >= 1
            && let Some(tag) = frame.get::<VlanTag>(MACS_LEN)
        {
            // SAFETY: `Frame::get` checked the tag is inside the packet.
            tags.tags[0] = unsafe { *tag };
        }
        if tags.count >= 2
            && let Some(tag) = frame.get::<VlanTag>(MACS_LEN + VLAN_LEN)
        {
            // SAFETY: as above.
            tags.tags[1] = unsafe { *tag };
        }
        tags
    }

    /// One 802.1Q tag with `vlan_id` (priority 0).
    #[inline(always)]
    pub fn single(vlan_id: u16) -> Self {
        let mut tags = Self::NONE;
        tags.count = 1;
        tags.tags[0] = VlanTag {
            tpid_be: lb_ebpf::hdr::ETH_P_8021Q.to_be(),
            tci_be: (vlan_id & 0x0fff).to_be(),
        };
        tags
    }
}

/// Encapsulates the packet: `tags` are the VLAN tags it leaves with.
#[inline(always)]
pub fn encap(ctx: &XdpContext, packet: &Packet, outer: &Outer, tags: &Tags) -> Result<()> {
    let failed = Exit::Drop(Counter::DropEncapFailed);
    let macs: *const MacPair = Frame::new(ctx).get(0).ok_or(failed)?;
    // SAFETY: `Frame::get` checked the addresses are inside the packet; copied before the move.
    let macs = unsafe { *macs };
    let l2_out = ETH_LEN + tags.count * VLAN_LEN;
    #[expect(
        clippy::cast_possible_wrap,
        clippy::cast_possible_truncation,
        reason = "an IP header and at most two VLAN tags"
    )]
    let grow = (outer.overhead() as usize + l2_out) as i32 - packet.l2_len as i32;
    // SAFETY: `ctx.ctx` is the context the kernel passed; the delta is a few headers' length.
    if unsafe { bpf_xdp_adjust_head(ctx.ctx, -grow) } != 0 {
        return Err(failed);
    }
    let frame = Frame::new(ctx);
    write_l2(&frame, &macs, tags, outer.family)?;
    if outer.family == FAMILY_V4 {
        write_ipv4(&frame, l2_out, outer)
    } else {
        write_ipv6(&frame, l2_out, outer)
    }
}

/// Writes the link-layer header at the front: `macs`, `tags`, the outer EtherType.
#[inline(always)]
pub fn write_l2(frame: &Frame, macs: &MacPair, tags: &Tags, family: u8) -> Result<()> {
    let failed = Exit::Drop(Counter::DropEncapFailed);
    let front: *mut MacPair = frame.get_mut(0).ok_or(failed)?;
    // SAFETY: `Frame::get_mut` checked the addresses are inside the packet.
    unsafe { front.write(*macs) };
    let mut offset = MACS_LEN;
    if tags.count >= 1 {
        let tag: *mut VlanTag = frame.get_mut(offset).ok_or(failed)?;
        // SAFETY: as above.
        unsafe { tag.write(tags.tags[0]) };
        offset += VLAN_LEN;
    }
    if tags.count >= 2 {
        let tag: *mut VlanTag = frame.get_mut(offset).ok_or(failed)?;
        // SAFETY: as above.
        unsafe { tag.write(tags.tags[1]) };
        offset += VLAN_LEN;
    }
    let ether_type = if family == FAMILY_V4 {
        ETH_P_IPV4
    } else {
        ETH_P_IPV6
    };
    let at: *mut u16 = frame.get_mut(offset).ok_or(failed)?;
    // SAFETY: as above.
    unsafe { at.write(ether_type.to_be()) };
    Ok(())
}

#[inline(always)]
fn write_ipv4(frame: &Frame, offset: usize, outer: &Outer) -> Result<()> {
    let ip: *mut Ipv4Hdr = frame
        .get_mut(offset)
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
        frag_off_be: if outer.dont_fragment {
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
fn write_ipv6(frame: &Frame, offset: usize, outer: &Outer) -> Result<()> {
    let ip: *mut Ipv6Hdr = frame
        .get_mut(offset)
        .ok_or(Exit::Drop(Counter::DropEncapFailed))?;
    #[expect(
        clippy::cast_possible_truncation,
        reason = "the inner length came from 16 bits"
    )]
    let payload_len = (outer.ip_len - IPV6_OVERHEAD) as u16;
    let vtc_flow = (6 << 28) | (u32::from(outer.tos) << 20) | (outer.spread & 0x000f_ffff);
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
