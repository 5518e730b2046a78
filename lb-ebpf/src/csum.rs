//! The Internet checksum (RFC 1071) of an IPv4 header.

use crate::hdr::Ipv4Hdr;

/// Folds a 32-bit one's-complement sum to 16 bits and complements it.
#[inline(always)]
pub fn fold(mut sum: u32) -> u16 {
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    #[expect(clippy::cast_possible_truncation, reason = "folded to 16 bits above")]
    let folded = sum as u16;
    !folded
}

/// Checksum of an option-less IPv4 header whose `check` field is zero. The result is in the
/// same (memory) byte order as the header's fields, ready to store. Summed from the fields'
/// values, so that a header built in registers need not be stored first to be read back.
#[inline(always)]
pub fn ipv4_header(hdr: &Ipv4Hdr) -> u16 {
    // Each 16-bit word as it sits in memory; the one's-complement sum does not depend on the
    // order of the words, so a 32-bit field's two halves may be taken either way round.
    let (src, dst) = (hdr.src_be, hdr.dst_be);
    let sum = u32::from(u16::from_ne_bytes([hdr.version_ihl, hdr.tos]))
        + u32::from(hdr.tot_len_be)
        + u32::from(hdr.id_be)
        + u32::from(hdr.frag_off_be)
        + u32::from(u16::from_ne_bytes([hdr.ttl, hdr.proto]))
        + u32::from(hdr.check)
        + (src & 0xffff)
        + (src >> 16)
        + (dst & 0xffff)
        + (dst >> 16);
    fold(sum)
}
