//! The backends' decapsulator: strips the outer header of the balancer's IP-in-IP packets so
//! that the kernel delivers the client's packet to the VIP on the backend's loopback.
//!
//! This kernel has no IPIP tunnel driver, so the backend's own XDP program does the work:
//! IPv4 carrying IPv4 (protocol 4) and IPv6 carrying IPv6 (next header 41, no extension
//! headers) are decapsulated, keeping the frame's VLAN tags; anything else passes untouched.
//!
//! Hygiene, each refusal counted:
//!
//! - only packets whose inner destination is one of the VIPs in the VIP map (filled by
//!   `lb decap attach`) are decapsulated (`drop_not_vip`): the backend does not become an open
//!   relay for IP-in-IP from anyone who can reach it;
//! - ECN: congestion experienced (CE) on the outer header is copied to the inner one, and the
//!   rest of RFC 6040's decapsulation table applied (outer ECT(1) over inner ECT(0) becomes
//!   ECT(1); outer CE over a not-ECN-capable inner packet drops, `drop_ecn_not_ect`);
//! - an outer fragment cannot be reassembled here (`drop_outer_fragment`);
//! - headers that are truncated or disagree with each other drop (`drop_malformed`).

#![no_std]
#![no_main]

use aya_ebpf::{
    bindings::xdp_action,
    helpers::generated::bpf_xdp_adjust_head,
    macros::{map, xdp},
    maps::{HashMap, PerCpuArray},
    programs::XdpContext,
};
use lb_common::{
    abi::{DecapVipKey, FAMILY_V4, FAMILY_V6},
    counters::DecapCounter,
    maps::MAX_DECAP_VIPS,
};
use lb_ebpf::{
    Exit, csum,
    hdr::{
        ETH_LEN, ETH_P_IPV4, ETH_P_IPV6, IPPROTO_IPIP, IPPROTO_IPV6, IPV4_LEN, IPV4_MF_OFFSET,
        IPV6_EXT_FRAGMENT, IPV6_LEN, Ipv4Hdr, Ipv6FragHdr, Ipv6Hdr, MACS_LEN, MacPair, VLAN_LEN,
        VlanTag,
    },
    parse::parse_l2,
    ptr::Frame,
};

type Result<T> = core::result::Result<T, Exit<DecapCounter>>;

#[map(name = "lb_decap_cnt_v2")]
static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(DecapCounter::COUNT, 0);

/// The inner destinations this backend accepts (its VIPs); the value is unused.
#[map(name = "lb_decap_vip_v1")]
static VIPS: HashMap<DecapVipKey, u32> = HashMap::with_max_entries(MAX_DECAP_VIPS, 0);

#[xdp(frags)]
pub fn lb_decap(ctx: XdpContext) -> u32 {
    let (action, counter) = match decap(&ctx) {
        Ok(counter) | Err(Exit::Pass(counter)) => (xdp_action::XDP_PASS, counter),
        Err(Exit::Drop(counter)) => (xdp_action::XDP_DROP, counter),
    };
    count(counter);
    action
}

#[inline(always)]
fn count(counter: DecapCounter) {
    if let Some(value) = COUNTERS.get_ptr_mut(counter.index()) {
        // SAFETY: this CPU's slot of a per-CPU array; XDP programs do not preempt each other.
        unsafe { *value += 1 };
    }
}

const PASS: Exit<DecapCounter> = Exit::Pass(DecapCounter::PassOther);
const MALFORMED: Exit<DecapCounter> = Exit::Drop(DecapCounter::DropMalformed);
const FRAGMENT: Exit<DecapCounter> = Exit::Drop(DecapCounter::DropOuterFragment);

/// ECN codepoints (the low two bits of the TOS / traffic class).
const NOT_ECT: u8 = 0;
const ECT_1: u8 = 1;
const ECT_0: u8 = 2;
const CE: u8 = 3;

#[inline(always)]
fn decap(ctx: &XdpContext) -> Result<DecapCounter> {
    let frame = Frame::new(ctx);
    let (ether_type, l2_len) = parse_l2(&frame).map_err(|_| PASS)?;
    let (outer_len, counter) = match ether_type {
        ETH_P_IPV4 => (decap_ipv4(&frame, l2_len)?, DecapCounter::DecapV4),
        ETH_P_IPV6 => (decap_ipv6(&frame, l2_len)?, DecapCounter::DecapV6),
        _ => return Err(PASS),
    };
    move_l2(&frame, l2_len, outer_len, ether_type)?;
    #[expect(
        clippy::cast_possible_truncation,
        reason = "an IPv4 header length or 40"
    )]
    let delta = outer_len as i32;
    // SAFETY: `ctx.ctx` is the context the kernel passed; the delta is inside the packet.
    if unsafe { bpf_xdp_adjust_head(ctx.ctx, delta) } != 0 {
        return Err(MALFORMED);
    }
    Ok(counter)
}

/// Copies the link-layer header (MACs, tags, EtherType) to just before the inner packet, which
/// starts `outer_len` bytes after the outer header's start.
#[inline(always)]
fn move_l2(frame: &Frame, l2_len: usize, outer_len: usize, ether_type: u16) -> Result<()> {
    let macs: *const MacPair = frame.get(0).ok_or(MALFORMED)?;
    let to: *mut MacPair = frame.get_mut(outer_len).ok_or(MALFORMED)?;
    // SAFETY: `Frame::get`/`get_mut` checked both ranges; the source is copied before the
    // write, and the two do not overlap (the outer header is at least 20 bytes).
    unsafe { to.write(*macs) };
    let tags = (l2_len - ETH_LEN) / VLAN_LEN;
    if tags >= 1 {
        move_tag(frame, MACS_LEN, outer_len)?;
    }
    if tags >= 2 {
        move_tag(frame, MACS_LEN + VLAN_LEN, outer_len)?;
    }
    let at: *mut u16 = frame
        .get_mut(outer_len + MACS_LEN + tags * VLAN_LEN)
        .ok_or(MALFORMED)?;
    // SAFETY: `Frame::get_mut` checked the field is inside the packet.
    unsafe { at.write(ether_type.to_be()) };
    Ok(())
}

#[inline(always)]
fn move_tag(frame: &Frame, at: usize, by: usize) -> Result<()> {
    let tag: *const VlanTag = frame.get(at).ok_or(MALFORMED)?;
    let to: *mut VlanTag = frame.get_mut(at + by).ok_or(MALFORMED)?;
    // SAFETY: both checked by `Frame`; disjoint as above.
    unsafe { to.write(*tag) };
    Ok(())
}

/// Whether `dst_be` is a VIP this backend accepts.
#[inline(always)]
fn is_vip(dst_be: [u32; 4], family: u8) -> bool {
    let key = DecapVipKey {
        addr_be: dst_be,
        family,
        _pad: [0; 3],
    };
    // SAFETY: only the presence of the entry is read.
    unsafe { VIPS.get(key).is_some() }
}

/// The ECN codepoint the inner packet leaves with (RFC 6040, section 4.2), or `None` to drop.
#[inline(always)]
fn decapsulated_ecn(inner: u8, outer: u8) -> Option<u8> {
    match (inner, outer) {
        (NOT_ECT, CE) => None,
        (NOT_ECT, _) => Some(NOT_ECT),
        (_, CE) => Some(CE),
        (ECT_0, ECT_1) => Some(ECT_1),
        (inner, _) => Some(inner),
    }
}

/// Applies the outer ECN codepoint to the inner one: returns the new inner TOS, or the drop.
#[inline(always)]
fn inner_tos(inner_tos: u8, outer_tos: u8) -> Result<u8> {
    let ecn = decapsulated_ecn(inner_tos & 3, outer_tos & 3)
        .ok_or(Exit::Drop(DecapCounter::DropEcnNotEct))?;
    if ecn == CE && inner_tos & 3 != CE {
        count(DecapCounter::EcnCe);
    }
    Ok((inner_tos & !3) | ecn)
}

/// Checks an IPv4-in-IPv4 packet, applies ECN to the inner header; returns the outer header's
/// length.
#[inline(always)]
fn decap_ipv4(frame: &Frame, l2_len: usize) -> Result<usize> {
    let outer: *const Ipv4Hdr = frame.get(l2_len).ok_or(PASS)?;
    // SAFETY: `Frame::get` checked the header is inside the packet.
    let outer = unsafe { &*outer };
    if outer.proto != IPPROTO_IPIP || outer.version_ihl >> 4 != 4 {
        return Err(PASS);
    }
    let header_len = usize::from(outer.version_ihl & 0x0f) * 4;
    if header_len < IPV4_LEN || usize::from(u16::from_be(outer.tot_len_be)) < header_len + IPV4_LEN
    {
        return Err(MALFORMED);
    }
    if u16::from_be(outer.frag_off_be) & IPV4_MF_OFFSET != 0 {
        return Err(FRAGMENT);
    }
    let inner: *mut Ipv4Hdr = frame.get_mut(l2_len + header_len).ok_or(MALFORMED)?;
    // SAFETY: `Frame::get_mut` checked the header is inside the packet.
    let inner = unsafe { &mut *inner };
    if inner.version_ihl >> 4 != 4 {
        return Err(MALFORMED);
    }
    if !is_vip([inner.dst_be, 0, 0, 0], FAMILY_V4) {
        return Err(Exit::Drop(DecapCounter::DropNotVip));
    }
    let tos = inner_tos(inner.tos, outer.tos)?;
    if tos != inner.tos {
        // RFC 1624: HC' = ~(~HC + ~m + m'), over the 16-bit word that holds the TOS.
        let old = u16::from_be_bytes([inner.version_ihl, inner.tos]);
        let new = u16::from_be_bytes([inner.version_ihl, tos]);
        let sum = u32::from(!u16::from_be(inner.check)) + u32::from(!old) + u32::from(new);
        inner.check = csum::fold(sum).to_be();
        inner.tos = tos;
    }
    Ok(header_len)
}

/// Checks an IPv6-in-IPv6 packet, applies ECN to the inner header; returns the outer header's
/// length.
#[inline(always)]
fn decap_ipv6(frame: &Frame, l2_len: usize) -> Result<usize> {
    let outer: *const Ipv6Hdr = frame.get(l2_len).ok_or(PASS)?;
    // SAFETY: `Frame::get` checked the header is inside the packet.
    let outer = unsafe { &*outer };
    if outer.next_header == IPV6_EXT_FRAGMENT {
        let frag: *const Ipv6FragHdr = frame.get(l2_len + IPV6_LEN).ok_or(PASS)?;
        // SAFETY: as above.
        return if unsafe { (*frag).next_header } == IPPROTO_IPV6 {
            Err(FRAGMENT)
        } else {
            Err(PASS)
        };
    }
    if outer.next_header != IPPROTO_IPV6 {
        return Err(PASS);
    }
    let outer_vtc = u32::from_be(outer.vtc_flow_be);
    if outer_vtc >> 28 != 6 || usize::from(u16::from_be(outer.payload_len_be)) < IPV6_LEN {
        return Err(MALFORMED);
    }
    let inner: *mut Ipv6Hdr = frame.get_mut(l2_len + IPV6_LEN).ok_or(MALFORMED)?;
    // SAFETY: `Frame::get_mut` checked the header is inside the packet.
    let inner = unsafe { &mut *inner };
    let inner_vtc = u32::from_be(inner.vtc_flow_be);
    if inner_vtc >> 28 != 6 {
        return Err(MALFORMED);
    }
    if !is_vip(inner.dst_be, FAMILY_V6) {
        return Err(Exit::Drop(DecapCounter::DropNotVip));
    }
    #[expect(clippy::cast_possible_truncation, reason = "8-bit traffic classes")]
    let (inner_class, outer_class) = ((inner_vtc >> 20) as u8, (outer_vtc >> 20) as u8);
    let class = inner_tos(inner_class, outer_class)?;
    if class != inner_class {
        let vtc = (inner_vtc & !(0xff << 20)) | (u32::from(class) << 20);
        inner.vtc_flow_be = vtc.to_be();
    }
    Ok(IPV6_LEN)
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // SAFETY: the verifier rejects any program with a reachable panic path.
    unsafe { core::hint::unreachable_unchecked() }
}
