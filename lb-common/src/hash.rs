//! The flow hash: the one function both sides must agree on.
//!
//! The datapath hashes a packet's 5-tuple with [`flow_hash`] and turns the hash into a Maglev
//! slot with [`ring_slot`]; userspace calls the same two functions to predict which backend a
//! flow reaches (`lb simulate`, the agreement tests). The hash is MurmurHash3's 32-bit mixing,
//! applied to whole words so that the eBPF code stays short and branch-free, seeded with the
//! deployment-wide seed so that every balancer of a deployment picks the same backend.
//!
//! [`hash_bytes`] is the same construction over a byte string, used by userspace alone to give
//! each backend its Maglev permutation.

use crate::abi::{FAMILY_V4, FlowKey};

const C1: u32 = 0xcc9e_2d51;
const C2: u32 = 0x1b87_3593;

/// Mixes one 32-bit word into the running hash (MurmurHash3's body step).
#[inline(always)]
const fn mix(hash: u32, word: u32) -> u32 {
    let word = word.wrapping_mul(C1).rotate_left(15).wrapping_mul(C2);
    (hash ^ word)
        .rotate_left(13)
        .wrapping_mul(5)
        .wrapping_add(0xe654_6b64)
}

/// Avalanches the final hash (MurmurHash3's finaliser).
#[inline(always)]
const fn finish(mut hash: u32, len_bytes: u32) -> u32 {
    hash ^= len_bytes;
    hash ^= hash >> 16;
    hash = hash.wrapping_mul(0x85eb_ca6b);
    hash ^= hash >> 13;
    hash = hash.wrapping_mul(0xc2b2_ae35);
    hash ^ (hash >> 16)
}

/// The ports of a flow as one word: the source port in the low half, the destination port in
/// the high half, each in network byte order (on a little-endian machine this is exactly the
/// first four bytes of a TCP or UDP header read as one `u32`).
#[inline(always)]
pub const fn ports_word(src_port_be: u16, dst_port_be: u16) -> u32 {
    (src_port_be as u32) | ((dst_port_be as u32) << 16)
}

/// Hashes a flow's 5-tuple. IPv4 flows hash only the words their addresses use.
#[inline(always)]
pub fn flow_hash(flow: &FlowKey, seed: u32) -> u32 {
    let ports = ports_word(flow.src_port_be, flow.dst_port_be);
    let tail = ((flow.family as u32) << 8) | flow.proto as u32;
    if flow.family == FAMILY_V4 {
        let mut hash = mix(seed, flow.src_be[0]);
        hash = mix(hash, flow.dst_be[0]);
        hash = mix(hash, ports);
        hash = mix(hash, tail);
        finish(hash, 16)
    } else {
        let mut hash = seed;
        let mut i = 0;
        while i < 4 {
            hash = mix(hash, flow.src_be[i]);
            i += 1;
        }
        let mut i = 0;
        while i < 4 {
            hash = mix(hash, flow.dst_be[i]);
            i += 1;
        }
        hash = mix(hash, ports);
        hash = mix(hash, tail);
        finish(hash, 40)
    }
}

/// Maps a 32-bit hash onto `0..ring_size` without a division (Lemire's multiply-shift range
/// reduction): uses the hash's high bits, uniformly.
#[inline(always)]
pub const fn ring_slot(hash: u32, ring_size: u32) -> u32 {
    ((hash as u64 * ring_size as u64) >> 32) as u32
}

/// Per-flow bits that vary the outer source address (and the IPv6 flow label) of encapsulated
/// packets, so that a backend's NIC spreads flows over its receive queues. Cheap (no hash) and
/// constant for a flow, so one flow's packets never change queue.
#[inline(always)]
pub const fn flow_spread(flow: &FlowKey) -> u32 {
    let src_word = if flow.family == FAMILY_V4 {
        flow.src_be[0]
    } else {
        flow.src_be[3]
    };
    (u16::from_be(flow.src_port_be) as u32) ^ u32::from_be(src_word)
}

/// The slot of the per-CPU VIP cache for a VIP key (`slots` a power of two): a multiply-shift
/// hash of the key's words, cheap enough to pay on every packet.
#[inline(always)]
pub const fn vip_cache_slot(key: &crate::abi::VipKey, slots: u32) -> u32 {
    let words = key.addr_be[0] ^ key.addr_be[1] ^ key.addr_be[2] ^ key.addr_be[3];
    let mixed = words ^ ((key.port_be as u32) << 16) ^ key.proto as u32;
    (mixed.wrapping_mul(0x9e37_79b1) >> 16) & (slots - 1)
}

/// MurmurHash3 (x86, 32-bit) of a byte string.
pub fn hash_bytes(bytes: &[u8], seed: u32) -> u32 {
    let mut hash = seed;
    let mut chunks = bytes.chunks_exact(4);
    for chunk in &mut chunks {
        let word = u32::from_le_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
        hash = mix(hash, word);
    }
    let tail = chunks.remainder();
    if !tail.is_empty() {
        let mut word = 0u32;
        for (i, byte) in tail.iter().enumerate() {
            word |= (*byte as u32) << (8 * i);
        }
        hash ^= word.wrapping_mul(C1).rotate_left(15).wrapping_mul(C2);
    }
    #[expect(
        clippy::cast_possible_truncation,
        reason = "MurmurHash3 folds the length in modulo 2^32 by definition"
    )]
    let len = bytes.len() as u32;
    finish(hash, len)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_bytes_matches_murmur3_reference_vectors() {
        // Published MurmurHash3_x86_32 test vectors.
        assert_eq!(hash_bytes(b"", 0), 0);
        assert_eq!(hash_bytes(b"", 1), 0x514e_28b7);
        assert_eq!(hash_bytes(b"test", 0), 0xba6b_d213);
        assert_eq!(hash_bytes(b"Hello, world!", 0), 0xc036_3e43);
        assert_eq!(
            hash_bytes(b"The quick brown fox jumps over the lazy dog", 0),
            0x2e4f_f723
        );
    }

    #[test]
    fn ring_slot_stays_in_range_and_covers_the_ends() {
        for size in [2, 251, 65_537] {
            assert_eq!(ring_slot(0, size), 0);
            assert_eq!(ring_slot(u32::MAX, size), size - 1);
            assert!(ring_slot(0x8000_0000, size) < size);
        }
    }

    #[test]
    fn flow_hash_depends_on_every_field() {
        let base = FlowKey {
            src_be: [0x0100_12c6, 0, 0, 0],
            dst_be: [0x0164_12c6, 0, 0, 0],
            src_port_be: 0x3930,
            dst_port_be: 0xbb01,
            proto: 6,
            family: FAMILY_V4,
            _pad: [0; 2],
        };
        let h = flow_hash(&base, 7);
        assert_ne!(h, flow_hash(&base, 8), "seed");
        assert_ne!(
            h,
            flow_hash(
                &FlowKey {
                    src_port_be: 0x3931,
                    ..base
                },
                7
            )
        );
        assert_ne!(
            h,
            flow_hash(
                &FlowKey {
                    dst_port_be: 0xbc01,
                    ..base
                },
                7
            )
        );
        assert_ne!(h, flow_hash(&FlowKey { proto: 17, ..base }, 7));
        assert_ne!(
            h,
            flow_hash(
                &FlowKey {
                    src_be: [0x0200_12c6, 0, 0, 0],
                    ..base
                },
                7
            )
        );
        let v6 = FlowKey {
            family: 6,
            src_be: [1, 2, 3, 4],
            dst_be: [5, 6, 7, 8],
            ..base
        };
        assert_ne!(
            flow_hash(&v6, 7),
            flow_hash(
                &FlowKey {
                    dst_be: [5, 6, 7, 9],
                    ..v6
                },
                7
            )
        );
    }
}
