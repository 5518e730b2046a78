//! The connection tables: set-associative hash tables in BPF arrays, one per address family.
//!
//! A flow's key hashes (seeded, [`hash_v4`], [`hash_v6`]) to one bucket of [`CONN_WAYS`]
//! slots. A lookup compares the bucket's keys; an insert takes the flow's own slot if the
//! bucket holds it, else an empty one, else the slot of the flow seen least recently (the
//! bucket's LRU; the datapath counts it as `conn_evicted`). Nothing is locked and nothing is
//! allocated: an IPv4 entry is 16 bytes, against the kernel LRU hash map's 88, and an insert
//! is a few stores where the LRU map's took 270 to 420 ns here.
//!
//! A slot's key and value are two 64-bit words, written value first. Two CPUs that replace the
//! same slot at once may leave one's key beside the other's value: each value carries 16 bits
//! of its key's hash (the tag), and a lookup whose key matches but whose tag does not is a
//! miss, so a torn slot gives its backend once in 65 536 tears. One narrower window remains: a
//! packet of a flow that one CPU marks seen (a store of the value's high half) while another
//! gives its slot away, read between the other's two stores, sees 4 bits of tag to check, not
//! 16.
//!
//! The hash is keyed by a per-table random seed ([`crate::abi::DatapathConfig::conn_seed`]),
//! so that a client cannot choose source ports that land in one bucket to push out the flows
//! already there.
//!
//! These functions are the table's one implementation: the datapath runs them on the map's
//! memory, and userspace on a bucket read from the map (`lb conn`, the tests).

use crate::abi::{ConnKeyV4, ConnKeyV6, ConnValue};

/// Slots per bucket.
pub const WAYS: u32 = 8;
/// [`WAYS`], to index with.
pub const CONN_WAYS: usize = WAYS as usize;

/// Bits of [`ConnValue::seen_s`] a slot keeps: it wraps after 12 days, over the longest UDP
/// idle timeout (one day) and any age worth telling apart when choosing a slot to evict.
pub const SEEN_BITS: u32 = 20;
const SEEN_MASK: u32 = (1 << SEEN_BITS) - 1;

/// One IPv4 slot: the key ([`ConnKeyV4::bits`]) and the packed value ([`pack`]). An empty slot
/// is all zeros (no live value packs to zero: generations start at 1).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SlotV4 {
    pub key: u64,
    pub value: u64,
}

/// One IPv6 slot; see [`SlotV4`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SlotV6 {
    pub key: ConnKeyV6,
    pub _pad: u32,
    pub value: u64,
}

/// A bucket of the IPv4 table: 128 bytes, two cache lines.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BucketV4 {
    pub slots: [SlotV4; CONN_WAYS],
}

/// A bucket of the IPv6 table: 256 bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BucketV6 {
    pub slots: [SlotV6; CONN_WAYS],
}

const _: () = {
    assert!(size_of::<SlotV4>() == 16);
    assert!(size_of::<SlotV6>() == 32);
    assert!(size_of::<BucketV4>() == 128);
    assert!(size_of::<BucketV6>() == 256);
    // Backend ids fit the 12 bits a packed value gives them.
    assert!(crate::maps::MAX_BACKENDS <= 1 << 12);
};

/// The buckets of a table asked to hold `flows` (per family): a power of two, so that a hash
/// picks one with a mask, holding at least `flows` slots.
pub const fn buckets_for(flows: u32) -> u32 {
    let buckets = flows.div_ceil(WAYS);
    if buckets <= 1 {
        1
    } else {
        buckets.next_power_of_two()
    }
}

/// MurmurHash3's 64-bit finaliser: every input bit moves every output bit.
#[inline(always)]
const fn fmix64(mut h: u64) -> u64 {
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^ (h >> 33)
}

#[inline(always)]
const fn seed64(seed: u32) -> u64 {
    ((seed as u64) << 32 | seed as u64) ^ 0x9e37_79b9_7f4a_7c15
}

/// The hash of an IPv4 key: its low 32 bits pick the bucket ([`bucket_of`]), its high 16 are
/// the tag ([`tag_of`]).
#[inline(always)]
pub const fn hash_v4(key: u64, seed: u32) -> u64 {
    fmix64(key ^ seed64(seed))
}

/// The hash of an IPv6 key; see [`hash_v4`].
#[inline(always)]
pub const fn hash_v6(key: &ConnKeyV6, seed: u32) -> u64 {
    let a = key.src_be[0] as u64 | (key.src_be[1] as u64) << 32;
    let b = key.src_be[2] as u64 | (key.src_be[3] as u64) << 32;
    let c = key.src_port_be as u64 | (key.vip_id as u64) << 16;
    let h = fmix64(a ^ seed64(seed));
    let h = fmix64(h ^ b);
    fmix64(h ^ c)
}

/// The bucket of a hash, in a table of `mask + 1` buckets (a power of two).
#[inline(always)]
pub const fn bucket_of(hash: u64, mask: u32) -> u32 {
    #[expect(
        clippy::cast_possible_truncation,
        reason = "the low half picks the bucket"
    )]
    let low = hash as u32;
    low & mask
}

/// The tag of a hash.
#[inline(always)]
pub const fn tag_of(hash: u64) -> u16 {
    (hash >> 48) as u16
}

/// Packs a value and its key's tag. The low 32 bits: backend id (12), generation (16), the
/// tag's low 4 bits; the high 32: the low 20 bits of the time seen, the tag's high 12. Marking
/// a flow seen rewrites the high half alone ([`seen_word`]), so it never puts back a backend
/// that another CPU has just placed the same flow on.
#[inline(always)]
pub const fn pack(value: ConnValue, tag: u16) -> u64 {
    (value.backend_id as u64 & 0xfff)
        | (value.generation as u64) << 12
        | (tag as u64 & 0xf) << 28
        | ((value.seen_s & SEEN_MASK) as u64) << 32
        | (tag as u64 >> 4) << 52
}

/// The value and tag of a packed slot value.
#[inline(always)]
pub const fn unpack(bits: u64) -> (ConnValue, u16) {
    #[expect(
        clippy::cast_possible_truncation,
        reason = "each field is masked to its width"
    )]
    let value = ConnValue {
        backend_id: (bits & 0xfff) as u16,
        generation: (bits >> 12) as u16,
        seen_s: (bits >> 32) as u32 & SEEN_MASK,
    };
    #[expect(
        clippy::cast_possible_truncation,
        reason = "4 bits and 12: the tag's 16"
    )]
    let tag = ((bits >> 28) & 0xf | (bits >> 52) << 4) as u16;
    (value, tag)
}

/// With the time stored in [`SEEN_BITS`]: the seconds from `seen` to `now`. A time up to
/// [`AHEAD`] seconds ahead of `now` (another CPU's clock read a moment later) is no age at all,
/// not an age of 12 days.
#[inline(always)]
pub const fn age(now_s: u32, seen_s: u32) -> u32 {
    let age = now_s.wrapping_sub(seen_s) & SEEN_MASK;
    if age > SEEN_MASK - AHEAD { 0 } else { age }
}

/// How far ahead of a CPU's clock another CPU's may be read, in seconds.
pub const AHEAD: u32 = 4;

/// Whether the packed value `bits` is `now_s` already, to the second.
#[inline(always)]
pub const fn seen_now(bits: u64, now_s: u32) -> bool {
    unpack(bits).0.seen_s == now_s & SEEN_MASK
}

/// The high half of `bits` seen at `now_s`: what marking the flow seen stores at
/// [`HIGH_HALF`].
#[inline(always)]
pub const fn seen_word(bits: u64, now_s: u32) -> u32 {
    let high = (bits >> 32) as u32;
    high & !SEEN_MASK | now_s & SEEN_MASK
}

/// Where the high half of a slot's value word sits, in 32-bit words from its start.
pub const HIGH_HALF: usize = if cfg!(target_endian = "little") { 1 } else { 0 };

/// Where an insert goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Place {
    /// The slot that holds the same key.
    Same(usize),
    /// An empty slot.
    Empty(usize),
    /// The slot of the flow seen least recently: it is forgotten.
    Evict(usize),
}

/// One bucket's slots, whatever the family: what finding, placing and storing need.
pub trait Slots {
    type Key: Copy;
    /// The key's hash under `seed` ([`hash_v4`], [`hash_v6`]).
    fn hash(key: &Self::Key, seed: u32) -> u64;
    /// Whether slot `i` holds `key`, and its packed value.
    fn read(&self, i: usize, key: &Self::Key) -> (bool, u64);
    /// Slot `i`'s key and value words in the bucket at `bucket`.
    ///
    /// # Safety
    ///
    /// `bucket` is aligned and valid for reads and writes for the call, and no reference to
    /// the bucket is live across it. (`i` below [`CONN_WAYS`] is bounds-checked; the datapath
    /// masks it for the verifier.)
    unsafe fn slot(bucket: *mut Self, i: usize) -> (*mut Self::Key, *mut u64);

    /// Slot `i`'s value word in the bucket at `bucket`.
    ///
    /// # Safety
    ///
    /// As [`Slots::slot`].
    #[inline(always)]
    unsafe fn value_of(bucket: *mut Self, i: usize) -> *mut u64 {
        // SAFETY: the caller's.
        unsafe { Self::slot(bucket, i).1 }
    }

    /// Writes `value`, then `key`, to slot `i` of the bucket at `bucket`, as volatile stores:
    /// neither is left out or reordered by the compiler. Whether another CPU sees a word whole
    /// and the two in that order is the machine's (x86 does both for the 64-bit words; an IPv6
    /// key is 20 bytes, written in parts; elsewhere the slot may look torn to a reader), and a
    /// torn slot fails its tag (see the module's note).
    ///
    /// # Safety
    ///
    /// As [`Slots::slot`]; other CPUs may read and write the bucket meanwhile.
    #[inline(always)]
    unsafe fn store(bucket: *mut Self, i: usize, key: Self::Key, value: u64) {
        // SAFETY: the caller's.
        unsafe {
            let (key_at, value_at) = Self::slot(bucket, i);
            core::ptr::write_volatile(value_at, value);
            core::ptr::write_volatile(key_at, key);
        }
    }
}

impl Slots for BucketV4 {
    type Key = u64;
    #[inline(always)]
    fn hash(key: &u64, seed: u32) -> u64 {
        hash_v4(*key, seed)
    }
    #[inline(always)]
    fn read(&self, i: usize, key: &u64) -> (bool, u64) {
        let slot = &self.slots[i];
        (slot.key == *key, slot.value)
    }
    #[inline(always)]
    unsafe fn slot(bucket: *mut Self, i: usize) -> (*mut u64, *mut u64) {
        // SAFETY: the caller's: a bucket, and a slot of it.
        unsafe {
            let slot = &raw mut (*bucket).slots[i];
            (&raw mut (*slot).key, &raw mut (*slot).value)
        }
    }
}

impl Slots for BucketV6 {
    type Key = ConnKeyV6;
    #[inline(always)]
    fn hash(key: &ConnKeyV6, seed: u32) -> u64 {
        hash_v6(key, seed)
    }
    #[inline(always)]
    fn read(&self, i: usize, key: &ConnKeyV6) -> (bool, u64) {
        let slot = &self.slots[i];
        (slot.key == *key, slot.value)
    }
    #[inline(always)]
    unsafe fn slot(bucket: *mut Self, i: usize) -> (*mut ConnKeyV6, *mut u64) {
        // SAFETY: the caller's: a bucket, and a slot of it.
        unsafe {
            let slot = &raw mut (*bucket).slots[i];
            (&raw mut (*slot).key, &raw mut (*slot).value)
        }
    }
}

/// The slot that holds `key` with tag `tag`, and its packed value.
#[inline(always)]
pub fn find<B: Slots>(bucket: &B, key: &B::Key, tag: u16) -> Option<(usize, u64)> {
    let mut i = 0;
    while i < CONN_WAYS {
        let (same, bits) = bucket.read(i, key);
        if same && bits != 0 && unpack(bits).1 == tag {
            return Some((i, bits));
        }
        i += 1;
    }
    None
}

/// Where `key` goes in `bucket` at `now_s`: its own slot, else the first empty one, else the
/// one seen longest ago (the first of equals: the time is kept to the second, so when every
/// slot was seen this second the first goes, and the flows seen since keep theirs).
#[inline(always)]
pub fn place<B: Slots>(bucket: &B, key: &B::Key, now_s: u32) -> Place {
    let mut empty = None;
    let mut oldest = 0;
    let mut oldest_age = 0;
    let mut i = 0;
    while i < CONN_WAYS {
        let (same, bits) = bucket.read(i, key);
        if same {
            return Place::Same(i);
        }
        if bits == 0 {
            if empty.is_none() {
                empty = Some(i);
            }
        } else {
            let age = age(now_s, unpack(bits).0.seen_s);
            if age > oldest_age {
                oldest = i;
                oldest_age = age;
            }
        }
        i += 1;
    }
    match empty {
        Some(i) => Place::Empty(i),
        None => Place::Evict(oldest),
    }
}

impl ConnKeyV4 {
    /// The key as the one word a slot stores.
    #[inline(always)]
    pub const fn bits(&self) -> u64 {
        self.src_be as u64 | (self.src_port_be as u64) << 32 | (self.vip_id as u64) << 48
    }
}

#[cfg(feature = "user")]
mod pod {
    //! Userspace only: lets aya copy buckets in and out of the tables.
    use super::{BucketV4, BucketV6};

    // SAFETY: `#[repr(C)]`, `Copy`, made only of integers with explicit padding (the size
    // asserts above equal the sum of the fields), so every bit pattern is a valid value.
    unsafe impl aya::Pod for BucketV4 {}
    // SAFETY: as above.
    unsafe impl aya::Pod for BucketV6 {}
}

#[cfg(test)]
mod tests {
    use super::*;

    fn value(backend_id: u16, seen_s: u32) -> ConnValue {
        ConnValue {
            backend_id,
            generation: 7,
            seen_s,
        }
    }

    #[test]
    fn a_value_packs_and_unpacks_whole() {
        let v = ConnValue {
            backend_id: 4095,
            generation: u16::MAX,
            seen_s: 1_234_567,
        };
        let (back, tag) = unpack(pack(v, 0xbeef));
        assert_eq!(tag, 0xbeef);
        assert_eq!(back.backend_id, 4095);
        assert_eq!(back.generation, u16::MAX);
        assert_eq!(back.seen_s, 1_234_567 & SEEN_MASK);
        assert_ne!(
            pack(value(0, 0), 0),
            0,
            "a live value is never an empty slot"
        );
        let bits = pack(v, 0xbeef);
        let high = seen_word(bits, 99);
        let later = bits & 0xffff_ffff | u64::from(high) << 32;
        assert!(seen_now(later, 99));
        assert_eq!(unpack(later), (ConnValue { seen_s: 99, ..v }, 0xbeef));
        // The high half carries no backend: stored over a value another CPU wrote for the
        // same flow (same tag), it leaves that value's backend.
        let other = pack(
            ConnValue {
                backend_id: 7,
                generation: 3,
                ..v
            },
            0xbeef,
        );
        let mixed = other & 0xffff_ffff | u64::from(high) << 32;
        assert_eq!(unpack(mixed).0.backend_id, 7);
        assert_eq!(unpack(mixed).0.generation, 3);
        assert_eq!(unpack(mixed).1, 0xbeef);
    }

    #[test]
    fn the_high_half_is_where_the_seen_word_goes() {
        let v = value(9, 40);
        let mut word = pack(v, 0x1234);
        let high = seen_word(word, 41);
        // SAFETY: `word` is a live, aligned u64; its two u32 halves are in bounds.
        unsafe {
            (&raw mut word).cast::<u32>().add(HIGH_HALF).write(high);
        }
        assert_eq!(word >> 32, u64::from(high));
        assert_eq!(unpack(word), (ConnValue { seen_s: 41, ..v }, 0x1234));
    }

    #[test]
    fn ages_wrap_with_the_stored_bits() {
        assert_eq!(age(5, 3), 2);
        assert_eq!(age(SEEN_MASK + 3, SEEN_MASK), 3, "across the wrap");
        assert_eq!(age(1 << SEEN_BITS, 0), 0, "a whole wrap looks fresh");
        assert_eq!(age(5, 6), 0, "a second ahead is no age");
        assert_eq!(age(5, 9), 0, "nor four");
        assert_eq!(age(0, 1 << 19), 1 << 19, "six days behind is six days");
        assert_eq!(age(5, SEEN_MASK), 6, "across the wrap, behind");
    }

    #[test]
    fn buckets_are_a_power_of_two_holding_what_was_asked() {
        assert_eq!(buckets_for(1 << 20), 1 << 17);
        assert_eq!(buckets_for(1_000_000), 1 << 17);
        assert_eq!(buckets_for(1_024), 128);
        assert_eq!(buckets_for(1_025), 256);
        assert_eq!(buckets_for(1), 1);
        assert_eq!(buckets_for(1 << 27), 1 << 24);
    }

    #[test]
    fn the_hash_depends_on_every_part_of_the_key_and_on_the_seed() {
        let key = ConnKeyV4 {
            src_be: 0x0100_00c6,
            src_port_be: 0x3930,
            vip_id: 3,
        };
        let h = hash_v4(key.bits(), 1);
        assert_ne!(h, hash_v4(key.bits(), 2));
        for other in [
            ConnKeyV4 {
                src_be: 0x0200_00c6,
                ..key
            },
            ConnKeyV4 {
                src_port_be: 0x3931,
                ..key
            },
            ConnKeyV4 { vip_id: 4, ..key },
        ] {
            assert_ne!(h, hash_v4(other.bits(), 1));
        }
        let v6 = ConnKeyV6 {
            src_be: [1, 2, 3, 4],
            src_port_be: 80,
            vip_id: 1,
        };
        let h6 = hash_v6(&v6, 1);
        assert_ne!(h6, hash_v6(&v6, 2));
        for other in [
            ConnKeyV6 {
                src_be: [1, 2, 3, 5],
                ..v6
            },
            ConnKeyV6 {
                src_be: [0, 2, 3, 4],
                ..v6
            },
            ConnKeyV6 {
                src_port_be: 81,
                ..v6
            },
            ConnKeyV6 { vip_id: 2, ..v6 },
        ] {
            assert_ne!(h6, hash_v6(&other, 1));
        }
    }

    #[test]
    fn the_buckets_and_tags_of_many_flows_are_even() {
        // 2^20 clients from one /16 and every port pattern a scan would use, into 2^14
        // buckets: each bucket should get about 64.
        let mask = (1 << 14) - 1;
        let mut counts = [0u32; 1 << 14];
        let mut tags = [0u32; 256];
        for i in 0..1u32 << 20 {
            let key = ConnKeyV4 {
                src_be: u32::from_be(0xc633_0000 | (i >> 4)),
                src_port_be: ((i & 15) as u16 + 1024).to_be(),
                vip_id: 1,
            };
            let h = hash_v4(key.bits(), 42);
            counts[bucket_of(h, mask) as usize] += 1;
            tags[usize::from(tag_of(h) >> 8)] += 1;
        }
        let (min, max) = (counts.iter().min().unwrap(), counts.iter().max().unwrap());
        assert!(
            *min > 30 && *max < 110,
            "bucket loads {min}..{max} around 64"
        );
        let (min, max) = (tags.iter().min().unwrap(), tags.iter().max().unwrap());
        assert!(
            *min > 3700 && *max < 4500,
            "tag bytes {min}..{max} around 4096"
        );
    }

    fn bucket(slots: &[(u64, Option<ConnValue>)]) -> BucketV4 {
        let mut b = BucketV4::default();
        for (i, (key, v)) in slots.iter().enumerate() {
            b.slots[i] = SlotV4 {
                key: *key,
                value: v.map_or(0, |v| pack(v, tag_of(hash_v4(*key, 1)))),
            };
        }
        b
    }

    #[test]
    fn a_key_is_found_only_with_its_tag() {
        let b = bucket(&[(10, Some(value(1, 5))), (11, Some(value(2, 5)))]);
        let tag = tag_of(hash_v4(11, 1));
        assert_eq!(find(&b, &11, tag).map(|(i, _)| i), Some(1));
        assert_eq!(find(&b, &11, tag ^ 1), None, "a torn slot is a miss");
        assert_eq!(find(&b, &12, tag_of(hash_v4(12, 1))), None);
        assert_eq!(
            find(&BucketV4::default(), &0, 0),
            None,
            "an empty slot is no key-0 flow"
        );
    }

    #[test]
    fn an_insert_takes_its_own_slot_then_an_empty_one_then_the_oldest() {
        let mut slots: [(u64, Option<ConnValue>); CONN_WAYS] =
            core::array::from_fn(|k| (k as u64 + 100, Some(value(1, 50))));
        slots[3] = (0, None);
        slots[6] = (106, Some(value(1, 10)));
        let b = bucket(&slots);
        assert_eq!(place(&b, &105, 60), Place::Same(5));
        assert_eq!(place(&b, &200, 60), Place::Empty(3));
        slots[3] = (103, Some(value(1, 40)));
        let b = bucket(&slots);
        assert_eq!(place(&b, &200, 60), Place::Evict(6), "seen 50 s ago");
        let same: [_; CONN_WAYS] = core::array::from_fn(|k| (k as u64 + 100, Some(value(1, 50))));
        assert_eq!(
            place(&bucket(&same), &200, 50),
            Place::Evict(0),
            "equals: the first"
        );
        assert_eq!(place(&bucket(&same), &105, 50), Place::Same(5));
    }
}
