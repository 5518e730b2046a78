//! What the fuzzer requires of every frame's outcome:
//!
//! - the balancer's forwarded frames (`XDP_TX`, `XDP_REDIRECT`) are well-formed: either an
//!   encapsulation of the input (link-layer header, an outer header with a valid checksum, the
//!   right length, a backend's address, an outer source from the configured prefix, then the
//!   input's IP packet byte for byte), or an ICMP too-big answer to it (addresses swapped,
//!   checksums valid, the input quoted);
//! - what it passes to the kernel is the input untouched, or its encapsulation still
//!   addressed to this host (when the kernel must forward it);
//! - the decapsulator passes the input untouched or its inner packet (the outer header gone,
//!   at most the ECN bits changed, the IPv4 checksum still valid), and never transmits.

use std::net::IpAddr;

/// XDP actions.
pub const XDP_DROP: u32 = 1;
pub const XDP_PASS: u32 = 2;
pub const XDP_TX: u32 = 3;
pub const XDP_REDIRECT: u32 = 4;

/// What an encapsulation must look like for one balancer.
pub struct Expect<'a> {
    pub backends: &'a [IpAddr],
    /// Outer IPv4 sources: `base` with the last byte varied.
    pub encap_v4_prefix: [u8; 3],
    /// Outer IPv6 sources: the first 14 bytes.
    pub encap_v6_prefix: [u8; 14],
}

/// The length of the Ethernet header and VLAN tags (at most two read), and the EtherType.
fn l2(frame: &[u8]) -> Option<(usize, u16)> {
    let mut at = 12;
    for _ in 0..3 {
        let ether_type = u16::from_be_bytes([*frame.get(at)?, *frame.get(at + 1)?]);
        if !matches!(ether_type, 0x8100 | 0x88a8) {
            return Some((at + 2, ether_type));
        }
        at += 4;
    }
    None
}

/// The one's-complement sum of `bytes` as 16-bit words, folded, complemented.
fn checksum(bytes: &[u8], mut sum: u32) -> u16 {
    for pair in bytes.chunks(2) {
        sum += u32::from(u16::from_be_bytes([pair[0], *pair.get(1).unwrap_or(&0)]));
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// The length of the IP packet at the start of `ip`, as its header says.
fn ip_len(ip: &[u8]) -> Option<usize> {
    match ip.first()? >> 4 {
        4 => Some(usize::from(u16::from_be_bytes([*ip.get(2)?, *ip.get(3)?]))),
        6 => Some(40 + usize::from(u16::from_be_bytes([*ip.get(4)?, *ip.get(5)?]))),
        _ => None,
    }
}

/// Checks a frame the balancer sent (`XDP_TX`, `XDP_REDIRECT`) or passed encapsulated.
pub fn forwarded(input: &[u8], output: &[u8], expect: &Expect<'_>) -> Result<(), String> {
    let (in_l2, _) = l2(input).ok_or("the input has no readable link-layer header")?;
    let (out_l2, out_type) = l2(output).ok_or("the output has no readable link-layer header")?;
    let outer = &output[out_l2..];
    let is_answer = match out_type {
        0x0800 => outer.get(9) == Some(&1),
        0x86dd => outer.get(6) == Some(&58),
        _ => return Err(format!("output EtherType {out_type:#06x}")),
    };
    if is_answer {
        answer(input, output, in_l2, out_l2)
    } else {
        encapsulation(input, output, in_l2, out_l2, expect)
    }
}

fn encapsulation(
    input: &[u8],
    output: &[u8],
    in_l2: usize,
    out_l2: usize,
    expect: &Expect<'_>,
) -> Result<(), String> {
    let inner = &input[in_l2..];
    let inner_len = ip_len(inner).ok_or("the inner packet is not IP")?;
    let outer = &output[out_l2..];
    let (header, destination, source_ok) = match outer.first().map(|b| b >> 4) {
        Some(4) => {
            let header = outer.get(..20).ok_or("outer IPv4 header cut")?;
            if header[0] != 0x45 || header[9] != 4 {
                return Err("outer IPv4 header: not IHL 5 / IP-in-IP".to_owned());
            }
            if checksum(header, 0) != 0 {
                return Err("outer IPv4 checksum".to_owned());
            }
            let total = usize::from(u16::from_be_bytes([header[2], header[3]]));
            if total != inner_len + 20 {
                return Err(format!("outer total length {total} for {inner_len}"));
            }
            let dst: [u8; 4] = header[16..20].try_into().map_err(|_| "dst")?;
            (
                20,
                IpAddr::from(dst),
                header[12..15] == expect.encap_v4_prefix,
            )
        }
        Some(6) => {
            let header = outer.get(..40).ok_or("outer IPv6 header cut")?;
            if header[6] != 41 {
                return Err("outer IPv6 next header is not IPv6".to_owned());
            }
            let payload = usize::from(u16::from_be_bytes([header[4], header[5]]));
            if payload != inner_len {
                return Err(format!("outer payload length {payload} for {inner_len}"));
            }
            let dst: [u8; 16] = header[24..40].try_into().map_err(|_| "dst")?;
            (
                40,
                IpAddr::from(dst),
                header[8..22] == expect.encap_v6_prefix,
            )
        }
        _ => return Err("outer header is not IP".to_owned()),
    };
    if !expect.backends.contains(&destination) {
        return Err(format!("outer destination {destination} is no backend"));
    }
    if !source_ok {
        return Err("outer source outside the configured prefix".to_owned());
    }
    if &outer[header..] != inner {
        return Err("the inner packet differs from the input".to_owned());
    }
    Ok(())
}

fn answer(input: &[u8], output: &[u8], in_l2: usize, out_l2: usize) -> Result<(), String> {
    if output[..6] != input[6..12] || output[6..12] != input[..6] {
        return Err("answer: MAC addresses not swapped".to_owned());
    }
    if output[12..out_l2] != input[12..in_l2] {
        return Err("answer: VLAN tags differ from the input's".to_owned());
    }
    let inner = &input[in_l2..];
    let ip = &output[out_l2..];
    match ip[0] >> 4 {
        4 => {
            let header = ip.get(..20).ok_or("answer header cut")?;
            if checksum(header, 0) != 0 {
                return Err("answer IPv4 checksum".to_owned());
            }
            if header[12..16] != inner[16..20] || header[16..20] != inner[12..16] {
                return Err("answer addresses not the input's, swapped".to_owned());
            }
            let icmp = &ip[20..];
            if icmp[0] != 3 || icmp[1] != 4 || checksum(icmp, 0) != 0 {
                return Err("answer: not a valid fragmentation-needed message".to_owned());
            }
            if icmp[8..] != inner[..icmp.len() - 8] {
                return Err("answer: the quote differs from the input".to_owned());
            }
        }
        6 => {
            let header = ip.get(..40).ok_or("answer header cut")?;
            if header[8..24] != inner[24..40] || header[24..40] != inner[8..24] {
                return Err("answer addresses not the input's, swapped".to_owned());
            }
            let icmp = &ip[40..];
            let mut pseudo = header[8..40].to_vec();
            pseudo.extend_from_slice(&u32::try_from(icmp.len()).unwrap_or(0).to_be_bytes());
            pseudo.extend_from_slice(&[0, 0, 0, 58]);
            let sum: u32 = pseudo
                .chunks(2)
                .map(|p| u32::from(u16::from_be_bytes([p[0], p[1]])))
                .sum();
            if icmp[0] != 2 || checksum(icmp, sum) != 0 {
                return Err("answer: not a valid packet-too-big message".to_owned());
            }
            if icmp[8..] != inner[..icmp.len() - 8] {
                return Err("answer: the quote differs from the input".to_owned());
            }
        }
        _ => return Err("answer is not IP".to_owned()),
    }
    Ok(())
}

/// Checks a frame the balancer passed to the kernel: untouched, or encapsulated with the
/// input's own MAC addresses (the kernel forwards it).
pub fn passed(input: &[u8], output: &[u8], expect: &Expect<'_>) -> Result<(), String> {
    if output == input {
        return Ok(());
    }
    if output.get(..12) != input.get(..12) {
        return Err("passed to the kernel changed, not addressed as it arrived".to_owned());
    }
    encapsulation(
        input,
        output,
        l2(input).ok_or("input link-layer header")?.0,
        l2(output).ok_or("output link-layer header")?.0,
        expect,
    )
    .map_err(|e| format!("passed to the kernel changed, and not an encapsulation: {e}"))
}

/// Checks the capture record of a frame the balancer handled while a capture recorded every
/// packet: exactly one, with the frame as it left (its first bytes), its action, a verdict of
/// that action's kind, and the listener and backend when the frame was forwarded.
pub fn captured(
    action: u32,
    output: &[u8],
    record: Option<Option<lb::capture::RingRecord>>,
) -> Result<(), String> {
    use lb_common::{
        abi::{CAPTURE_F_BACKEND, CAPTURE_F_VIP},
        counters::{Counter, CounterKind},
    };
    let record = record
        .ok_or("no capture record")?
        .ok_or("a capture record shorter than its head")?;
    let meta = &record.meta;
    if meta.action != action {
        return Err(format!("captured action {} for {action}", meta.action));
    }
    let kind = Counter::ALL
        .get(meta.counter as usize)
        .map(|c| c.kind())
        .ok_or_else(|| format!("captured counter {}", meta.counter))?;
    let expected = match action {
        XDP_TX | XDP_REDIRECT => CounterKind::Forward,
        XDP_PASS => CounterKind::Pass,
        _ => CounterKind::Drop,
    };
    if kind != expected {
        return Err(format!("captured a {kind:?} verdict for action {action}"));
    }
    if meta.len as usize != output.len()
        || output.get(..record.data.len()) != Some(&record.data[..])
    {
        return Err(format!(
            "captured {} of {} bytes that are not the {}-byte frame that left",
            record.data.len(),
            meta.len,
            output.len()
        ));
    }
    // A verdict reached before any VIP was known carries no note: none leaks from the frame
    // before.
    let before_vip = [
        Counter::PassNotIp,
        Counter::PassNotVip,
        Counter::PassMalformed,
    ];
    if meta.flags != 0 && before_vip.iter().any(|c| c.index() == meta.counter) {
        return Err(format!(
            "a {} record carries notes ({:#x}) of another frame",
            Counter::ALL[meta.counter as usize].label(),
            meta.flags
        ));
    }
    let both = CAPTURE_F_VIP | CAPTURE_F_BACKEND;
    if matches!(action, XDP_TX | XDP_REDIRECT)
        && meta.counter != Counter::TxIcmpTooBig.index()
        && meta.flags & both != both
    {
        return Err(format!(
            "a forwarded frame's record names no backend ({:#x})",
            meta.flags
        ));
    }
    Ok(())
}

/// Checks a frame the decapsulator passed: untouched, or its inner packet behind the same
/// link-layer header.
pub fn decapsulated(input: &[u8], output: &[u8]) -> Result<(), String> {
    if output == input {
        return Ok(());
    }
    let (in_l2, _) = l2(input).ok_or("input link-layer header")?;
    let (out_l2, _) = l2(output).ok_or("output link-layer header")?;
    if in_l2 != out_l2 || output[..in_l2] != input[..in_l2] {
        return Err("decapsulated: the link-layer header changed".to_owned());
    }
    let outer_len = match input[in_l2] >> 4 {
        4 => usize::from(input[in_l2] & 0xf) * 4,
        6 => 40,
        _ => return Err("decapsulated a non-IP packet".to_owned()),
    };
    let inner = &input[in_l2 + outer_len..];
    let out = &output[out_l2..];
    if out.len() != inner.len() {
        return Err("decapsulated: lengths differ".to_owned());
    }
    // Only the ECN bits (and the IPv4 checksum) may differ.
    let (tos_at, check) = match inner[0] >> 4 {
        4 => (1, Some(10..12)),
        6 => (1, None),
        _ => return Err("decapsulated inner is not IP".to_owned()),
    };
    for (i, (a, b)) in inner.iter().zip(out).enumerate() {
        let allowed = (inner[0] >> 4 == 4 && i == tos_at && (a ^ b) & !3 == 0)
            || (inner[0] >> 4 == 6 && i == tos_at && (a ^ b) & !0x30 == 0)
            || check.as_ref().is_some_and(|c| c.contains(&i));
        if a != b && !allowed {
            return Err(format!(
                "decapsulated: byte {i} of the inner packet changed"
            ));
        }
    }
    // A valid inner checksum stays valid (the update is incremental: a wrong one stays wrong).
    if inner[0] >> 4 == 4 && out[10..12] != inner[10..12] {
        let header_len = (usize::from(out[0] & 0xf) * 4).min(out.len());
        if checksum(&inner[..header_len], 0) == 0 && checksum(&out[..header_len], 0) != 0 {
            return Err("decapsulated: the inner IPv4 checksum went wrong".to_owned());
        }
    }
    Ok(())
}
