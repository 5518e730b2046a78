//! Answers a client packet that is too big to encapsulate toward its backend with an ICMP
//! "fragmentation needed" (IPv4, RFC 1191) or "packet too big" (ICMPv6, RFC 8201) carrying the
//! MTU the client must use (the route's MTU minus the outer header), so that path MTU
//! discovery works through the balancer instead of the packet vanishing.
//!
//! The answer is built in place: the frame is cut to its link-layer header and the first
//! [`QUOTE_V4`] / [`QUOTE_V6`] bytes of the IP packet (the quote the client matches to its
//! socket), the new IP and ICMP headers go in front of the quote, the MAC addresses are swapped
//! and the frame goes back out of the interface it came in on (`XDP_TX`) with the same VLAN
//! tags. Answers are limited per CPU (`icmp_too_big_per_sec`). An IPv4 packet without "don't
//! fragment" is dropped instead (`drop_too_big`): its sender does not do path MTU discovery,
//! and the balancer does not fragment.

use aya_ebpf::{
    bindings::xdp_action,
    helpers::generated::{
        bpf_csum_diff, bpf_xdp_adjust_head, bpf_xdp_adjust_tail, bpf_xdp_get_buff_len,
    },
    programs::XdpContext,
};
use lb_common::{
    abi::{AddrBe, DatapathConfig, FAMILY_V4, RATE_WINDOW_ICMP},
    counters::Counter,
};
use lb_ebpf::{
    Exit, csum,
    hdr::{
        ICMP_DEST_UNREACH, ICMP_FRAG_NEEDED, ICMP_LEN, ICMPV6_PACKET_TOO_BIG, IPPROTO_ICMP,
        IPPROTO_ICMPV6, IPV4_LEN, IPV6_LEN, IcmpHdr, Ipv4Hdr, Ipv6Hdr, MacPair,
    },
    parse::Packet,
    ptr::Frame,
};

use crate::{
    Result,
    encap::{IPV4_OVERHEAD, IPV6_OVERHEAD, Tags, write_l2},
    forward::Forwarded,
    rate,
};

/// Bytes of the offending IPv4 packet the answer quotes: its header (options included) and
/// the start of its payload, more than the 8 bytes RFC 792 asks for.
pub const QUOTE_V4: usize = 128;
/// Bytes of the offending IPv6 packet the answer quotes: room for extension headers.
pub const QUOTE_V6: usize = 256;
/// The smallest MTU an IPv6 link may have (RFC 8200); never advertise less.
const IPV6_MIN_MTU: u32 = 1280;
/// Hop limit of the answer.
const TTL: u8 = 64;
/// IPv4 TOS of the answer: internetwork control, as the kernel's own ICMP errors.
const TOS_INTERNETWORK_CONTROL: u8 = 0xc0;

const V4_ICMP_BYTES: usize = ICMP_LEN + QUOTE_V4;
const V6_ICMP_BYTES: usize = ICMP_LEN + QUOTE_V6;
// bpf_csum_diff takes whole words.
const _: () = assert!(V4_ICMP_BYTES.is_multiple_of(4) && V6_ICMP_BYTES.is_multiple_of(4));

/// Answers `packet`, which would exceed `mtu` once encapsulated.
#[inline(always)]
pub fn answer(
    ctx: &XdpContext,
    packet: &Packet,
    mtu: u32,
    config: &DatapathConfig,
) -> Result<Forwarded> {
    let is_v4 = packet.flow.family == FAMILY_V4;
    let quote = if is_v4 { QUOTE_V4 } else { QUOTE_V6 };
    let too_big = Exit::Drop(Counter::DropTooBig);
    // Not answered: an IPv4 packet the client lets routers fragment (fragments could not be
    // placed), answers turned off, and an IPv6 packet already no longer than the minimum MTU
    // (a route under 1320 bytes cannot carry it encapsulated, and an answer with 1280 would
    // only come back for every packet).
    if (is_v4 && !packet.dont_fragment())
        || (!is_v4 && packet.ip_len <= IPV6_MIN_MTU)
        || config.icmp_too_big_per_sec == 0
        || (packet.ip_len as usize) < quote
    {
        return Err(too_big);
    }
    if !rate::allow(RATE_WINDOW_ICMP, config.icmp_too_big_per_sec) {
        return Err(Exit::Drop(Counter::DropIcmpRateLimited));
    }
    let frame = Frame::new(ctx);
    let macs: *const MacPair = frame.get(0).ok_or(too_big)?;
    // SAFETY: `Frame::get` checked the addresses are inside the packet; copied before moving.
    let macs = unsafe { *macs };
    let headers = if is_v4 {
        IPV4_LEN + ICMP_LEN
    } else {
        IPV6_LEN + ICMP_LEN
    };
    cut_to_quote(ctx, packet.l2_len + quote, headers)?;
    let frame = Frame::new(ctx);
    let front: *mut MacPair = frame.get_mut(0).ok_or(too_big)?;
    // SAFETY: `Frame::get_mut` checked the addresses are inside the packet. Back to the sender.
    unsafe {
        front.write(MacPair {
            dst: macs.src,
            src: macs.dst,
        });
    }
    write_l2(
        &frame,
        headers,
        Tags::as_arrived(packet),
        packet.flow.family,
    )?;
    if is_v4 {
        let next_mtu = mtu.saturating_sub(IPV4_OVERHEAD);
        write_v4(&frame, packet, next_mtu)?;
    } else {
        let next_mtu = mtu.saturating_sub(IPV6_OVERHEAD).max(IPV6_MIN_MTU);
        write_v6(&frame, packet, next_mtu)?;
    }
    Ok(Forwarded {
        action: xdp_action::XDP_TX,
        counter: Counter::TxIcmpTooBig,
    })
}

/// Cuts the frame to its first `keep` bytes, then makes room for `headers` bytes in front of
/// them.
#[inline(always)]
fn cut_to_quote(ctx: &XdpContext, keep: usize, headers: usize) -> Result<()> {
    let failed = Exit::Drop(Counter::DropEncapFailed);
    // SAFETY: `ctx.ctx` is the context the kernel passed to the program.
    let len = unsafe { bpf_xdp_get_buff_len(ctx.ctx) };
    let len = usize::try_from(len).map_err(|_| failed)?;
    let cut = i32::try_from(len.checked_sub(keep).ok_or(failed)?).map_err(|_| failed)?;
    // SAFETY: as above; the frame is longer than `keep` (checked), so this only shrinks it.
    if unsafe { bpf_xdp_adjust_tail(ctx.ctx, -cut) } != 0 {
        return Err(failed);
    }
    let grow = i32::try_from(headers).map_err(|_| failed)?;
    // SAFETY: as above; the delta is two headers' length.
    if unsafe { bpf_xdp_adjust_head(ctx.ctx, -grow) } != 0 {
        return Err(failed);
    }
    Ok(())
}

/// The one's-complement sum (not folded) of `len` bytes of packet at `at`, starting from `seed`.
#[inline(always)]
fn sum_words<const N: usize>(frame: &Frame, at: usize, seed: u32) -> Result<u32> {
    let bytes: *const [u8; N] = frame.get(at).ok_or(Exit::Drop(Counter::DropEncapFailed))?;
    #[expect(clippy::cast_possible_truncation, reason = "a few hundred bytes")]
    let len = N as u32;
    // SAFETY: `Frame::get` checked that the `N` bytes are inside the packet; the helper only
    // reads them (no `from` buffer).
    let sum =
        unsafe { bpf_csum_diff(core::ptr::null_mut(), 0, bytes.cast_mut().cast(), len, seed) };
    #[expect(
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        reason = "the helper returns a 32-bit sum (or a negative error, checked)"
    )]
    if sum < 0 {
        Err(Exit::Drop(Counter::DropEncapFailed))
    } else {
        Ok(sum as u32)
    }
}

#[inline(always)]
fn write_v4(frame: &Frame, packet: &Packet, next_mtu: u32) -> Result<()> {
    let failed = Exit::Drop(Counter::DropEncapFailed);
    let at = packet.l2_len;
    let icmp: *mut IcmpHdr = frame.get_mut(at + IPV4_LEN).ok_or(failed)?;
    // SAFETY: `Frame::get_mut` checked the header is inside the packet.
    unsafe {
        icmp.write(IcmpHdr {
            kind: ICMP_DEST_UNREACH,
            code: ICMP_FRAG_NEEDED,
            check: 0,
            rest_be: (next_mtu & 0xffff).to_be(),
        });
    }
    let sum = sum_words::<V4_ICMP_BYTES>(frame, at + IPV4_LEN, 0)?;
    // SAFETY: as above.
    unsafe { (*icmp).check = csum::fold(sum) };

    let ip: *mut Ipv4Hdr = frame.get_mut(at).ok_or(failed)?;
    #[expect(clippy::cast_possible_truncation, reason = "20 + 8 + 128")]
    let tot_len = (IPV4_LEN + V4_ICMP_BYTES) as u16;
    let mut hdr = Ipv4Hdr {
        version_ihl: 0x45,
        tos: TOS_INTERNETWORK_CONTROL,
        tot_len_be: tot_len.to_be(),
        id_be: 0,
        frag_off_be: 0,
        ttl: TTL,
        proto: IPPROTO_ICMP,
        check: 0,
        src_be: packet.flow.dst_be[0],
        dst_be: packet.flow.src_be[0],
    };
    hdr.check = csum::ipv4_header(&hdr);
    // SAFETY: as above.
    unsafe { ip.write(hdr) };
    Ok(())
}

/// The IPv6 pseudo-header (RFC 8200, 8.1) of an ICMPv6 message.
#[repr(C)]
struct PseudoHeader {
    src_be: AddrBe,
    dst_be: AddrBe,
    len_be: u32,
    next_header_be: u32,
}

#[inline(always)]
fn write_v6(frame: &Frame, packet: &Packet, next_mtu: u32) -> Result<()> {
    let failed = Exit::Drop(Counter::DropEncapFailed);
    let at = packet.l2_len;
    let icmp: *mut IcmpHdr = frame.get_mut(at + IPV6_LEN).ok_or(failed)?;
    // SAFETY: `Frame::get_mut` checked the header is inside the packet.
    unsafe {
        icmp.write(IcmpHdr {
            kind: ICMPV6_PACKET_TOO_BIG,
            code: 0,
            check: 0,
            rest_be: next_mtu.to_be(),
        });
    }
    #[expect(clippy::cast_possible_truncation, reason = "8 + 256")]
    let payload_len = V6_ICMP_BYTES as u32;
    let mut pseudo = PseudoHeader {
        src_be: packet.flow.dst_be,
        dst_be: packet.flow.src_be,
        len_be: payload_len.to_be(),
        next_header_be: u32::from(IPPROTO_ICMPV6).to_be(),
    };
    #[expect(clippy::cast_possible_truncation, reason = "a 40-byte struct")]
    let pseudo_len = size_of::<PseudoHeader>() as u32;
    // SAFETY: `pseudo` is a stack buffer of `pseudo_len` bytes, read by the helper only.
    let seed = unsafe {
        bpf_csum_diff(
            core::ptr::null_mut(),
            0,
            (&raw mut pseudo).cast(),
            pseudo_len,
            0,
        )
    };
    #[expect(
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        reason = "a 32-bit sum (or a negative error, checked)"
    )]
    let seed = if seed < 0 {
        return Err(failed);
    } else {
        seed as u32
    };
    let sum = sum_words::<V6_ICMP_BYTES>(frame, at + IPV6_LEN, seed)?;
    // SAFETY: as above.
    unsafe { (*icmp).check = csum::fold(sum) };

    let ip: *mut Ipv6Hdr = frame.get_mut(at).ok_or(failed)?;
    #[expect(clippy::cast_possible_truncation, reason = "8 + 256")]
    let payload_len_u16 = payload_len as u16;
    // SAFETY: as above.
    unsafe {
        ip.write(Ipv6Hdr {
            vtc_flow_be: (6u32 << 28).to_be(),
            payload_len_be: payload_len_u16.to_be(),
            next_header: IPPROTO_ICMPV6,
            hop_limit: TTL,
            src_be: packet.flow.dst_be,
            dst_be: packet.flow.src_be,
        });
    }
    Ok(())
}
