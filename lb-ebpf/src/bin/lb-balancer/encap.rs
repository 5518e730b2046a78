//! IP-in-IP encapsulation: IPv4 in IPv4, IPv6 in IPv6.
//!
//! The frame grows at its head by one IP header (and shrinks or grows by the difference
//! between the VLAN tags it arrived with and those it leaves with). The link-layer header is
//! written once, at the new front: the MAC addresses and tags the frame leaves with (the next
//! hop's, or the ones it arrived with when the kernel forwards it) and the outer EtherType. The
//! outer header addresses the backend from the configured source, its low bits varied per flow
//! (`lb_common::hash::flow_spread`). The inner packet is not touched.

use core::ptr::copy_nonoverlapping;

use aya_ebpf::{helpers::generated::bpf_xdp_adjust_head, programs::XdpContext};
use lb_common::{
    abi::{AddrBe, Backend, DatapathConfig, FAMILY_V4, FlowKey},
    counters::Counter,
    hash::flow_spread,
};
use lb_ebpf::{
    Exit, csum,
    hdr::{
        ETH_LEN, ETH_P_8021Q, ETH_P_IPV4, ETH_P_IPV6, IPPROTO_IPIP, IPPROTO_IPV6, IPV4_DF,
        IPV4_LEN, IPV6_LEN, Ipv4Hdr, Ipv6Hdr, MACS_LEN, MAX_VLAN_TAGS, Mac, MacPair, VLAN_LEN,
        VlanTag,
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
            dont_fragment: packet.dont_fragment(),
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

/// The VLAN tags a frame leaves with (outermost first).
#[derive(Clone, Copy)]
pub enum Tags {
    None,
    /// The tags it arrived with: this many (1 or 2), copied from where they are.
    AsArrived(usize),
    /// One 802.1Q tag with this VLAN id (priority 0).
    Single(u16),
}

impl Tags {
    /// The tags `packet` arrived with.
    #[inline(always)]
    pub fn as_arrived(packet: &Packet) -> Self {
        match (packet.l2_len - ETH_LEN) / VLAN_LEN {
            0 => Self::None,
            count => Self::AsArrived(count),
        }
    }

    /// How many there are.
    #[inline(always)]
    pub fn count(self) -> usize {
        match self {
            Self::None => 0,
            Self::AsArrived(count) => count,
            Self::Single(_) => 1,
        }
    }
}

/// The MAC addresses a frame leaves with.
#[derive(Clone, Copy)]
pub enum Macs<'a> {
    /// The ones it arrived with: still addressed to this host, for the kernel to forward.
    AsArrived,
    /// From the address it arrived at (this host's) to `dst`: back out of the same interface.
    FromArrival { dst: &'a Mac },
    /// These.
    Set { src: &'a Mac, dst: &'a Mac },
}

/// Encapsulates the packet: `macs` and `tags` are the MAC addresses and VLAN tags it leaves
/// with.
#[inline(always)]
pub fn encap(
    ctx: &XdpContext,
    packet: &Packet,
    outer: &Outer,
    macs: Macs,
    tags: Tags,
) -> Result<()> {
    let failed = Exit::Drop(Counter::DropEncapFailed);
    let l2_out = ETH_LEN + tags.count() * VLAN_LEN;
    // At least 12 (an IPv4 header in place of two tags), so the old MAC addresses, which now
    // start at `grow`, never overlap the new ones.
    let grow = outer.overhead() as usize + l2_out - packet.l2_len;
    #[expect(
        clippy::cast_possible_wrap,
        clippy::cast_possible_truncation,
        reason = "an IP header and at most two VLAN tags"
    )]
    let delta = -(grow as i32);
    // SAFETY: `ctx.ctx` is the context the kernel passed; the delta is a few headers' length.
    if unsafe { bpf_xdp_adjust_head(ctx.ctx, delta) } != 0 {
        return Err(failed);
    }
    let frame = Frame::new(ctx);
    write_macs(&frame, grow, macs)?;
    write_l2(&frame, grow, tags, outer.family)?;
    if outer.family == FAMILY_V4 {
        write_ipv4(&frame, l2_out, outer)
    } else {
        write_ipv6(&frame, l2_out, outer)
    }
}

/// Writes the MAC addresses at the front. The frame's old ones are at `moved` (at least
/// `MACS_LEN`, so old and new do not overlap); each address is copied straight from where it
/// is to where it goes.
#[inline(always)]
fn write_macs(frame: &Frame, moved: usize, macs: Macs) -> Result<()> {
    let failed = Exit::Drop(Counter::DropEncapFailed);
    let front: *mut MacPair = frame.get_mut(0).ok_or(failed)?;
    // SAFETY: `Frame::get`/`get_mut` checked the addresses are inside the packet; old and new
    // do not overlap.
    unsafe {
        match macs {
            Macs::AsArrived => {
                let old: *const MacPair = frame.get(moved).ok_or(failed)?;
                copy_nonoverlapping(old, front, 1);
            }
            Macs::FromArrival { dst } => {
                let old: *const MacPair = frame.get(moved).ok_or(failed)?;
                copy_nonoverlapping(&raw const (*old).dst, &raw mut (*front).src, 1);
                copy_nonoverlapping(dst, &raw mut (*front).dst, 1);
            }
            Macs::Set { src, dst } => {
                copy_nonoverlapping(src, &raw mut (*front).src, 1);
                copy_nonoverlapping(dst, &raw mut (*front).dst, 1);
            }
        }
    }
    Ok(())
}

/// Writes the rest of the link-layer header after the MAC addresses: `tags` (the frame's old
/// link-layer header is at `moved`, at least `MACS_LEN`, so old and new tags do not overlap),
/// the EtherType of `family`.
#[inline(always)]
pub fn write_l2(frame: &Frame, moved: usize, tags: Tags, family: u8) -> Result<()> {
    let failed = Exit::Drop(Counter::DropEncapFailed);
    let mut offset = MACS_LEN;
    match tags {
        Tags::None => {}
        Tags::AsArrived(count) => {
            let old: *const [VlanTag; MAX_VLAN_TAGS] = frame.get(moved + offset).ok_or(failed)?;
            let new: *mut [VlanTag; MAX_VLAN_TAGS] = frame.get_mut(offset).ok_or(failed)?;
            // SAFETY: `Frame::get`/`get_mut` checked both are inside the packet (the frame grew
            // by `moved` and holds an IP header after the tags); they do not overlap.
            unsafe {
                copy_nonoverlapping(&raw const (*old)[0], &raw mut (*new)[0], 1);
                if count >= 2 {
                    copy_nonoverlapping(&raw const (*old)[1], &raw mut (*new)[1], 1);
                }
            }
            offset += count * VLAN_LEN;
        }
        Tags::Single(vlan_id) => {
            let tag: *mut VlanTag = frame.get_mut(offset).ok_or(failed)?;
            // SAFETY: `Frame::get_mut` checked the tag is inside the packet.
            unsafe {
                tag.write(VlanTag {
                    tpid_be: ETH_P_8021Q.to_be(),
                    tci_be: (vlan_id & 0x0fff).to_be(),
                });
            }
            offset += VLAN_LEN;
        }
    }
    let ether_type = if family == FAMILY_V4 {
        ETH_P_IPV4
    } else {
        ETH_P_IPV6
    };
    let at: *mut u16 = frame.get_mut(offset).ok_or(failed)?;
    // SAFETY: `Frame::get_mut` checked the EtherType is inside the packet.
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
    // A packet routers may fragment needs an identification that varies (RFC 6864): the inner
    // packet's, which its sender varies. One that may not be fragmented needs none.
    let id_be = if outer.dont_fragment {
        0
    } else {
        let inner: *const Ipv4Hdr = frame
            .get(offset + IPV4_LEN)
            .ok_or(Exit::Drop(Counter::DropEncapFailed))?;
        // SAFETY: `Frame::get` checked the inner header is inside the packet.
        unsafe { (*inner).id_be }
    };
    let mut hdr = Ipv4Hdr {
        version_ihl: 0x45,
        tos: outer.tos,
        tot_len_be: tot_len.to_be(),
        id_be,
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
