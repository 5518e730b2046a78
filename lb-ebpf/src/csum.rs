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
/// same (memory) byte order as the header's fields, ready to store.
#[inline(always)]
pub fn ipv4_header(hdr: &Ipv4Hdr) -> u16 {
    let words: &[u16; 10] =
        // SAFETY: `Ipv4Hdr` is 20 bytes, 2-byte aligned (`packed(2)`), and every bit pattern is
        // a valid `u16`; the reference does not outlive `hdr`.
        unsafe { &*core::ptr::from_ref(hdr).cast::<[u16; 10]>() };
    let mut sum = 0u32;
    let mut i = 0;
    while i < 10 {
        sum += u32::from(words[i]);
        i += 1;
    }
    fold(sum)
}
