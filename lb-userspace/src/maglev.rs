//! Maglev consistent hashing (Eisenbud et al., NSDI 2016), with weights.
//!
//! [`build`] fills a table of prime size `M` with backend positions: each backend walks its own
//! permutation of the slots (an offset and a skip derived from a hash of its identity) and
//! claims the next free slot in turn. Weights are credits: every round each backend earns its
//! weight, and spends the largest weight in the pool per slot it claims, so a backend's share of
//! the table is its share of the total weight (to within a slot or two).
//!
//! The table depends only on the backends' identities, weights and the seed (never on the
//! order they are listed in), so every balancer of a deployment computes the same table, and
//! removing one backend moves few slots that belonged to others. The datapath indexes the table
//! with `lb_common::hash::ring_slot(flow_hash(..), M)`.
//!
//! [`build_stable`] is what the balancer writes: the table of the backends' *configured*
//! weights, in which only the slots of backends that are out (unhealthy, draining) or ramping
//! up (slow start) change hands, to the owners a second table of the backends in service gives
//! them. A backend that fails moves exactly its own slots and no other: flows of the others
//! keep their backend on every balancer, including flows that change balancer (ECMP) while its
//! health changes. Only configuration changes (a backend added, removed or reweighted) rebuild
//! the first table, moving a fraction of a percent of the other backends' slots.

use lb_common::hash::hash_bytes;

/// A backend as Maglev sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Entry<'a> {
    /// Stable identity (e.g. the address and port as bytes): decides the permutation.
    pub identity: &'a [u8],
    /// Relative share; 0 leaves the backend out of the table.
    pub weight: u32,
}

/// A table slot that no backend holds (only when no backend has a weight).
pub const EMPTY: u32 = u32::MAX;

// Distinct seeds for the two permutation parameters.
const OFFSET_SALT: u32 = 0x6f66_6673; // "offs"
const SKIP_SALT: u32 = 0x736b_6970; // "skip"

/// Builds a table of `size` slots (`size` must be a prime > 1). Each slot holds the index in
/// `entries` of its backend, or [`EMPTY`] when no entry has a weight.
pub fn build(entries: &[Entry<'_>], size: u32, seed: u32) -> Vec<u32> {
    debug_assert!(size > 1, "the table size is a prime > 1");
    let mut table = vec![EMPTY; size as usize];
    let mut order: Vec<usize> = (0..entries.len())
        .filter(|&i| entries[i].weight > 0)
        .collect();
    if order.is_empty() {
        return table;
    }
    // Claim order by identity, not by listing order, so the table is the same however the
    // configuration lists the backends.
    order.sort_by(|&a, &b| entries[a].identity.cmp(entries[b].identity));

    let mut walkers: Vec<Walker> = order
        .iter()
        .map(|&i| Walker::new(entries[i], size, seed, i))
        .collect();
    let max_weight = walkers.iter().map(|w| w.weight).max().unwrap_or(1);
    let mut filled = 0usize;
    loop {
        for walker in &mut walkers {
            walker.credit += u64::from(walker.weight);
            while walker.credit >= u64::from(max_weight) {
                walker.credit -= u64::from(max_weight);
                let slot = walker.claim_next_free(&table);
                table[slot] = walker.index;
                filled += 1;
                if filled == table.len() {
                    return table;
                }
            }
        }
    }
}

/// A backend as [`build_stable`] sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Member<'a> {
    pub identity: &'a [u8],
    /// Its configured weight: the first table's (0: not in it).
    pub weight: u32,
    /// Its weight now, at most `weight`: 0 while out of service, between while ramping up.
    pub effective: u32,
}

// Salt of the hash that decides which of its slots a ramping backend keeps.
const KEEP_SALT: u32 = 0x6b65_6570; // "keep"
// Salt of the second table's seed.
const FALLBACK_SALT: u32 = 0x6661_6c6c; // "fall"

/// Builds the table of `members`' configured weights (as [`build`]), then hands each slot
/// whose owner is below its configured weight to the owner of that slot in the table of the
/// members' effective weights: all such slots of a backend out of service; of a ramping one,
/// those outside the `effective / weight` fraction that a hash of the slot and its identity
/// picks (the same slots on every balancer, growing as it ramps).
pub fn build_stable(members: &[Member<'_>], size: u32, seed: u32) -> Vec<u32> {
    let configured: Vec<Entry<'_>> = members
        .iter()
        .map(|m| Entry {
            identity: m.identity,
            weight: m.weight,
        })
        .collect();
    let mut table = build(&configured, size, seed);
    if members.iter().all(|m| m.effective >= m.weight) {
        return table;
    }
    let in_service: Vec<Entry<'_>> = members
        .iter()
        .map(|m| Entry {
            identity: m.identity,
            weight: m.effective.min(m.weight),
        })
        .collect();
    // A seed of its own: with the first table's, a ramping backend would take back in the
    // second table the very slots it gives up in the first (the head of its permutation).
    let fallback = build(&in_service, size, seed ^ FALLBACK_SALT);
    let keep_keys: Vec<u32> = members
        .iter()
        .map(|m| hash_bytes(m.identity, seed ^ KEEP_SALT))
        .collect();
    for (slot, (owner, spare)) in table.iter_mut().zip(fallback).enumerate() {
        let Some(member) = members.get(*owner as usize) else {
            *owner = spare;
            continue;
        };
        if member.effective >= member.weight {
            continue;
        }
        let keep = member.effective > 0 && {
            let slot = u32::try_from(slot).unwrap_or(u32::MAX);
            let draw = u64::from(fmix32(
                keep_keys[*owner as usize].wrapping_add(slot.wrapping_mul(0x9e37_79b9)),
            ));
            // draw / 2^32 < effective / weight
            draw * u64::from(member.weight) < u64::from(member.effective) << 32
        };
        if !keep {
            *owner = spare;
        }
    }
    table
}

/// MurmurHash3's finalizer: every output bit depends on every input bit, so consecutive
/// slots draw independent-looking values.
const fn fmix32(mut h: u32) -> u32 {
    h ^= h >> 16;
    h = h.wrapping_mul(0x85eb_ca6b);
    h ^= h >> 13;
    h = h.wrapping_mul(0xc2b2_ae35);
    h ^ (h >> 16)
}

/// One backend's walk through its permutation of the slots.
struct Walker {
    index: u32,
    weight: u32,
    offset: u64,
    skip: u64,
    size: u64,
    /// How far along the permutation the walk is.
    next: u64,
    credit: u64,
}

impl Walker {
    fn new(entry: Entry<'_>, size: u32, seed: u32, index: usize) -> Self {
        let size = u64::from(size);
        Self {
            index: u32::try_from(index).unwrap_or(EMPTY),
            weight: entry.weight,
            offset: u64::from(hash_bytes(entry.identity, seed ^ OFFSET_SALT)) % size,
            skip: u64::from(hash_bytes(entry.identity, seed ^ SKIP_SALT)) % (size - 1) + 1,
            size,
            next: 0,
            credit: 0,
        }
    }

    /// The next slot of the permutation that nobody holds. Terminates because the size is
    /// prime, so the permutation visits every slot, and the caller stops once all are held.
    fn claim_next_free(&mut self, table: &[u32]) -> usize {
        loop {
            #[expect(
                clippy::cast_possible_truncation,
                reason = "a slot is below the u32 size"
            )]
            let slot = ((self.offset + self.next * self.skip) % self.size) as usize;
            self.next += 1;
            if table[slot] == EMPTY {
                return slot;
            }
        }
    }
}

/// The slots where `new` differs from `old`, as (slot, new value): the only writes needed to
/// turn a ring holding `old` into one holding `new`.
pub fn changed_slots(old: &[u32], new: &[u32]) -> Vec<(u32, u32)> {
    debug_assert_eq!(old.len(), new.len());
    old.iter()
        .zip(new)
        .enumerate()
        .filter(|(_, (a, b))| a != b)
        .map(|(slot, (_, &b))| (u32::try_from(slot).unwrap_or(u32::MAX), b))
        .collect()
}

/// Whether `n` is prime (table sizes must be).
pub fn is_prime(n: u32) -> bool {
    if n < 2 {
        return false;
    }
    if n.is_multiple_of(2) {
        return n == 2;
    }
    let n = u64::from(n);
    let mut d = 3u64;
    while d * d <= n {
        if n % d == 0 {
            return false;
        }
        d += 2;
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    const M: u32 = 65_537;
    const SEED: u32 = 0x5eed;

    fn identities(n: usize) -> Vec<Vec<u8>> {
        (0..n)
            .map(|i| format!("198.18.{}.{}:443", i / 250, i % 250 + 1).into_bytes())
            .collect()
    }

    fn entries<'a>(ids: &'a [Vec<u8>], weights: &[u32]) -> Vec<Entry<'a>> {
        ids.iter()
            .zip(weights)
            .map(|(id, &weight)| Entry {
                identity: id,
                weight,
            })
            .collect()
    }

    fn counts(table: &[u32], n: usize) -> Vec<u64> {
        let mut counts = vec![0u64; n];
        for &b in table {
            counts[b as usize] += 1;
        }
        counts
    }

    /// Asserts every backend's share is within 1% (relative) of its weight share.
    fn assert_shares(ids: &[Vec<u8>], weights: &[u32]) {
        let table = build(&entries(ids, weights), M, SEED);
        assert!(table.iter().all(|&b| b != EMPTY), "every slot filled");
        let total: u64 = weights.iter().map(|&w| u64::from(w)).sum();
        for (i, &count) in counts(&table, ids.len()).iter().enumerate() {
            let expected = f64::from(M) * f64::from(weights[i]) / total as f64;
            let error = (count as f64 - expected).abs() / expected;
            assert!(
                error <= 0.01,
                "N={} backend {i} (weight {}) holds {count} slots, expected {expected:.1} ({:.2}% off)",
                ids.len(),
                weights[i],
                error * 100.0
            );
        }
    }

    #[test]
    fn equal_weights_fill_every_slot_within_one_percent() {
        for n in [1, 2, 3, 5, 16, 100, 500, 1000] {
            let ids = identities(n);
            assert_shares(&ids, &vec![1; n]);
        }
    }

    #[test]
    fn weighted_shares_follow_the_weights_within_one_percent() {
        let ids = identities(100);
        let weights: Vec<u32> = (0..100).map(|i| 1 + i % 4).collect();
        assert_shares(&ids, &weights);
        let ids = identities(3);
        assert_shares(&ids, &[2, 1, 1]);
        assert_shares(&ids, &[100, 10, 1]);
        // With many small shares, a one-slot rounding is already over 1% of a share (at N =
        // 500 a weight-2 share is 105 slots): there the bound is two slots, which is what
        // "within rounding" means for an integer table.
        let ids = identities(500);
        let weights: Vec<u32> = (0..500).map(|i| if i % 2 == 0 { 2 } else { 3 }).collect();
        let table = build(&entries(&ids, &weights), M, SEED);
        let counts = counts(&table, 500);
        for (i, &c) in counts.iter().enumerate() {
            let expected = f64::from(M) * f64::from(weights[i]) / 1250.0;
            assert!(
                (c as f64 - expected).abs() <= 2.0,
                "backend {i}: {c} vs {expected:.1}"
            );
        }
    }

    #[test]
    fn same_configuration_gives_the_same_table_in_any_order() {
        let ids = identities(10);
        let weights = [1, 2, 3, 1, 2, 3, 1, 2, 3, 1];
        let forward = build(&entries(&ids, &weights), M, SEED);
        assert_eq!(forward, build(&entries(&ids, &weights), M, SEED));
        // Listed in reverse, the table names the same identities slot for slot.
        let mut rev_ids = ids.clone();
        rev_ids.reverse();
        let mut rev_weights = weights;
        rev_weights.reverse();
        let reversed = build(&entries(&rev_ids, &rev_weights), M, SEED);
        for (a, b) in forward.iter().zip(&reversed) {
            assert_eq!(ids[*a as usize], rev_ids[*b as usize]);
        }
        // Another seed, another table.
        assert_ne!(forward, build(&entries(&ids, &weights), M, SEED + 1));
    }

    /// Fraction of the table whose backend changed although it survived the removal.
    fn disruption_on_removal(n: usize, removed: usize) -> f64 {
        let ids = identities(n);
        let before = build(&entries(&ids, &vec![1; n]), M, SEED);
        let mut survivors = ids.clone();
        survivors.remove(removed);
        let after = build(&entries(&survivors, &vec![1; n - 1]), M, SEED);
        let moved = before
            .iter()
            .zip(&after)
            .filter(|(b, a)| {
                let before_id = &ids[**b as usize];
                before_id != &ids[removed] && before_id != &survivors[**a as usize]
            })
            .count();
        moved as f64 / f64::from(M)
    }

    #[test]
    fn removing_a_backend_moves_few_slots_of_the_others() {
        for n in [2, 3, 4, 8, 16] {
            for removed in [0, n / 2, n - 1] {
                let d = disruption_on_removal(n, removed);
                assert!(
                    d <= 0.005,
                    "N={n}, removing {removed}: {:.3}% moved",
                    d * 100.0
                );
            }
        }
        for removed in [0, 37, 99] {
            let d = disruption_on_removal(100, removed);
            assert!(
                d <= 0.01,
                "N=100, removing {removed}: {:.3}% moved",
                d * 100.0
            );
        }
    }

    fn members<'a>(ids: &'a [Vec<u8>], weights: &[(u32, u32)]) -> Vec<Member<'a>> {
        ids.iter()
            .zip(weights)
            .map(|(id, &(weight, effective))| Member {
                identity: id,
                weight,
                effective,
            })
            .collect()
    }

    #[test]
    fn a_stable_table_in_full_service_is_the_maglev_table() {
        let ids = identities(5);
        let weights = [1, 2, 3, 1, 1];
        let full: Vec<(u32, u32)> = weights.iter().map(|&w| (w, w)).collect();
        assert_eq!(
            build_stable(&members(&ids, &full), M, SEED),
            build(&entries(&ids, &weights), M, SEED)
        );
    }

    /// A backend out of service gives up exactly its slots, shared by the others by weight;
    /// back in service, the table is the first one again.
    #[test]
    fn a_backend_out_of_service_moves_only_its_own_slots() {
        let ids = identities(4);
        let weights = [(1, 1), (1, 1), (2, 2), (1, 1)];
        let before = build_stable(&members(&ids, &weights), M, SEED);
        let mut out = weights;
        out[1].1 = 0;
        let after = build_stable(&members(&ids, &out), M, SEED);
        let mut gained = [0u64; 4];
        for (b, a) in before.iter().zip(&after) {
            if *b == 1 {
                assert_ne!(*a, 1);
                gained[*a as usize] += 1;
            } else {
                assert_eq!(a, b, "a slot of a backend in service changed hands");
            }
        }
        // Its 1/5 of the table goes 1:2:1 to the others (within 3%).
        let moved: u64 = gained.iter().sum();
        for (i, expected) in [(0, 0.25), (2, 0.5), (3, 0.25)] {
            let share = gained[i] as f64 / moved as f64;
            assert!(
                (share - expected).abs() < 0.03,
                "backend {i}: {share:.3} of {moved}"
            );
        }
        assert_eq!(build_stable(&members(&ids, &weights), M, SEED), before);
        // Two out, then one back: the other's slots stay where they were.
        let mut two = out;
        two[3].1 = 0;
        let both = build_stable(&members(&ids, &two), M, SEED);
        for (i, (b, a)) in before.iter().zip(&both).enumerate() {
            if *b != 1 && *b != 3 {
                assert_eq!(a, b, "slot {i}");
            }
        }
    }

    /// A ramping backend keeps the fraction of its slots its ramp says, the same slots on
    /// every call, more as it ramps; nobody else's slots move.
    #[test]
    fn a_ramping_backend_keeps_a_growing_part_of_its_slots() {
        let ids = identities(4);
        let full = [(100, 100); 4];
        let base = build_stable(&members(&ids, &full), M, SEED);
        let own = base.iter().filter(|&&b| b == 2).count() as f64;
        let mut previous: Option<Vec<u32>> = None;
        for effective in [10, 30, 60, 90, 100] {
            let mut ramping = full;
            ramping[2].1 = effective;
            let table = build_stable(&members(&ids, &ramping), M, SEED);
            assert_eq!(table, build_stable(&members(&ids, &ramping), M, SEED));
            let kept = base
                .iter()
                .zip(&table)
                .filter(|(b, a)| **b == 2 && **a == 2)
                .count() as f64;
            // Kept by the draw, plus what the second table gives back (its share there).
            let f = f64::from(effective) / 100.0;
            let expected =
                own * (f + (1.0 - f) * f64::from(effective) / f64::from(300 + effective));
            assert!(
                (kept - expected).abs() <= own * 0.02,
                "at {effective}%: kept {kept} of {own}"
            );
            for (b, a) in base.iter().zip(&table) {
                if *b != 2 {
                    assert_eq!(a, b, "a slot of a backend in full service changed hands");
                }
            }
            if let Some(previous) = &previous {
                let lost = previous
                    .iter()
                    .zip(&base)
                    .zip(&table)
                    .filter(|((p, b), a)| **p == 2 && **b == 2 && **a != 2)
                    .count();
                assert_eq!(lost, 0, "a slot it kept was taken back as it ramped");
            }
            previous = Some(table);
        }
    }

    #[test]
    fn no_one_in_service_means_an_empty_table() {
        let ids = identities(2);
        let table = build_stable(&members(&ids, &[(1, 0), (1, 0)]), 251, SEED);
        assert!(table.iter().all(|&b| b == EMPTY));
    }

    #[test]
    fn no_weight_means_an_empty_table() {
        assert!(build(&[], 251, SEED).iter().all(|&b| b == EMPTY));
        let ids = identities(2);
        let table = build(&entries(&ids, &[0, 1]), 251, SEED);
        assert!(table.iter().all(|&b| b == 1));
    }

    #[test]
    fn changed_slots_lists_exactly_the_differences() {
        assert_eq!(changed_slots(&[1, 2, 3], &[1, 5, 3]), vec![(1, 5)]);
        assert!(changed_slots(&[1, 2], &[1, 2]).is_empty());
    }

    #[test]
    fn primes() {
        let primes: Vec<u32> = (0..30).filter(|&n| is_prime(n)).collect();
        assert_eq!(primes, [2, 3, 5, 7, 11, 13, 17, 19, 23, 29]);
        assert!(is_prime(65_537));
        assert!(!is_prime(65_536));
        assert!(is_prime(4_294_967_291));
    }
}
