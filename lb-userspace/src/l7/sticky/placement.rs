//! Where a sticky session goes: a backend's [`BackendId`] (a hash of its address, the same on
//! every instance), and [`rendezvous`], the weighted highest-random-weight choice among
//! (id, weight) candidates that places a new session or re-places one whose backend failed,
//! with integer arithmetic only so that every balancer agrees.

use std::net::SocketAddr;

use ring::digest::{SHA256, digest};

use super::SessionId;

/// A backend's identity in a cookie, stable across instances and versions: the first 8 bytes
/// (big-endian) of SHA-256("lb-sticky-backend-v1" || IP octets (4 or 16) || port big-endian).
pub type BackendId = u64;

/// The [`BackendId`] of the backend at `address`. An IPv4 address and its IPv4-mapped IPv6
/// form are different backends; the IPv6 flow label and scope are not part of the identity.
pub fn backend_id(address: SocketAddr) -> BackendId {
    let mut input = Vec::with_capacity(20 + 16 + 2);
    input.extend_from_slice(b"lb-sticky-backend-v1");
    match address {
        SocketAddr::V4(v4) => input.extend_from_slice(&v4.ip().octets()),
        SocketAddr::V6(v6) => input.extend_from_slice(&v6.ip().octets()),
    }
    input.extend_from_slice(&address.port().to_be_bytes());
    first_u64(digest(&SHA256, &input).as_ref())
}

/// The big-endian u64 in the first 8 bytes of a SHA-256 digest.
fn first_u64(hash: &[u8]) -> u64 {
    let mut first = [0; 8];
    for (to, from) in first.iter_mut().zip(hash) {
        *to = *from;
    }
    u64::from_be_bytes(first)
}

/// Fractional bits of the fixed-point logarithms in [`rendezvous`]: -log2(u) <= 64 = 2^6, so
/// 6 integer bits and 57 fractional ones fit a u64.
const LOG_FRACTION_BITS: u32 = 57;

/// The backend for `session` among `candidates` (id, weight), by weighted rendezvous
/// (highest random weight) hashing: every instance picks the same, removing a backend moves
/// only the sessions that were on it, and a backend's share is its weight over the total.
/// Weight 0 is never picked; `None` if no candidate is left.
///
/// Each candidate draws u in (0, 1) from the first 8 bytes of SHA-256("lb-sticky-hrw-v1" ||
/// session || backend id BE) (u = (h | 1) / 2^64) and scores weight / -log2(u); the highest
/// score wins, a tie (practically never) goes to the smaller id. -log2(u) is computed in
/// fixed point with integers only, so every CPU and libm agrees to the bit; the result does
/// not depend on the candidates' order.
pub fn rendezvous(
    session: &SessionId,
    candidates: impl IntoIterator<Item = (BackendId, u32)>,
) -> Option<BackendId> {
    let mut best: Option<(BackendId, u32, u64)> = None;
    for (id, weight) in candidates {
        if weight == 0 {
            continue;
        }
        let cost = hrw_cost(session, id);
        let wins = best.is_none_or(|(best_id, best_weight, best_cost)| {
            // weight / cost > best_weight / best_cost, without division (costs are > 0).
            let ours = u128::from(weight) * u128::from(best_cost);
            let theirs = u128::from(best_weight) * u128::from(cost);
            ours > theirs || (ours == theirs && id < best_id)
        });
        if wins {
            best = Some((id, weight, cost));
        }
    }
    best.map(|(id, _, _)| id)
}

/// -log2(u) in fixed point (57 fractional bits) for the u of (session, backend): at least 1.
fn hrw_cost(session: &SessionId, backend: BackendId) -> u64 {
    let mut input = [0; 16 + 16 + 8];
    let (domain, rest) = input.split_at_mut(16);
    let (session_bytes, backend_bytes) = rest.split_at_mut(16);
    domain.copy_from_slice(b"lb-sticky-hrw-v1");
    session_bytes.copy_from_slice(&session.0);
    backend_bytes.copy_from_slice(&backend.to_be_bytes());
    let odd = first_u64(digest(&SHA256, &input).as_ref()) | 1;
    // u = odd / 2^64, so -log2(u) = 64 - log2(odd); log2_fixed(odd) < 64 << 57 keeps it >= 1
    // (saturating all the same: a zero cost would divide by zero in spirit).
    (64_u64 << LOG_FRACTION_BITS)
        .saturating_sub(log2_fixed(odd))
        .max(1)
}

/// log2(x) for x >= 1, with 57 fractional bits, truncated (0 for x = 0).
fn log2_fixed(x: u64) -> u64 {
    if x == 0 {
        return 0;
    }
    let integer = 63 - x.leading_zeros();
    let mut result = u64::from(integer) << LOG_FRACTION_BITS;
    // The mantissa in [1, 2) with 63 fractional bits; each squaring yields one bit of the log.
    let mut mantissa = u128::from(x) << (63 - integer);
    for bit in (0..LOG_FRACTION_BITS).rev() {
        mantissa = (mantissa * mantissa) >> 63;
        if mantissa >= 1 << 64 {
            result |= 1 << bit;
            mantissa >>= 1;
        }
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backend_ids_are_stable_and_distinct() {
        // Python: int.from_bytes(hashlib.sha256(b"lb-sticky-backend-v1" + bytes([10, 0, 0, 1])
        //         + (8080).to_bytes(2, "big")).digest()[:8], "big")
        let id = backend_id("10.0.0.1:8080".parse().unwrap());
        assert_eq!(id, 16_603_783_805_717_380_238);
        assert_ne!(id, backend_id("10.0.0.1:8081".parse().unwrap()));
        assert_ne!(id, backend_id("10.0.0.2:8080".parse().unwrap()));
        assert_ne!(id, backend_id("[::ffff:10.0.0.1]:8080".parse().unwrap()));
        assert_ne!(
            backend_id("[2001:db8::1]:80".parse().unwrap()),
            backend_id("[2001:db8::1]:81".parse().unwrap())
        );
    }

    #[test]
    fn the_fixed_point_logarithm_is_close_to_the_real_one() {
        let scale = f64::from(1u32 << 28) * f64::from(1u32 << 29);
        assert_eq!(log2_fixed(1), 0);
        assert_eq!(log2_fixed(2), 1 << 57);
        assert_eq!(log2_fixed(1 << 40), 40 << 57);
        for x in [3u64, 5, 1000, 123_456_789, u64::MAX / 3, u64::MAX] {
            let fixed = log2_fixed(x) as f64 / scale;
            let real = (x as f64).log2();
            assert!((fixed - real).abs() < 1e-9, "{x}: {fixed} vs {real}");
        }
        assert!(hrw_cost(&SessionId([0; 16]), 0) >= 1);
    }

    fn shares(sessions: &[SessionId], backends: &[(BackendId, u32)]) -> Vec<f64> {
        let mut counts = vec![0u32; backends.len()];
        for session in sessions {
            let chosen = rendezvous(session, backends.iter().copied()).unwrap();
            let index = backends.iter().position(|(id, _)| *id == chosen).unwrap();
            counts[index] += 1;
        }
        let total = f64::from(u32::try_from(sessions.len()).unwrap());
        counts.iter().map(|c| f64::from(*c) / total).collect()
    }

    fn random_sessions(count: usize) -> Vec<SessionId> {
        (0..count).map(|_| SessionId::random()).collect()
    }

    #[test]
    fn rendezvous_is_deterministic_and_order_free() {
        let session = SessionId([42; 16]);
        let backends = [(11, 1), (22, 1), (33, 1), (44, 2)];
        let chosen = rendezvous(&session, backends).unwrap();
        for _ in 0..10 {
            assert_eq!(rendezvous(&session, backends), Some(chosen));
        }
        let mut reversed = backends;
        reversed.reverse();
        assert_eq!(rendezvous(&session, reversed), Some(chosen));
        assert_eq!(chosen, 33);
    }

    #[test]
    fn rendezvous_agrees_with_its_golden_values() {
        // A change here re-pins users differently on old and new balancers. Derived with a
        // Python replica (hashlib.sha256, then the same integer log2), and the picks checked
        // against the floating-point formula weight / (64 - math.log2(h | 1)).
        assert_eq!(hrw_cost(&SessionId([42; 16]), 11), 102_331_101_108_872_941);
        let backends = [(11, 1), (22, 1), (33, 1), (44, 2)];
        let picks: Vec<BackendId> = (0..8)
            .map(|i| rendezvous(&SessionId([i; 16]), backends).unwrap())
            .collect();
        assert_eq!(picks, [44, 44, 11, 44, 44, 22, 11, 11]);
    }

    #[test]
    fn rendezvous_spreads_equal_backends_evenly() {
        let backends = [(1, 1), (2, 1), (3, 1)];
        for share in shares(&random_sessions(30_000), &backends) {
            assert!((share - 1.0 / 3.0).abs() < 0.02, "{share}");
        }
    }

    #[test]
    fn rendezvous_follows_the_weights() {
        let backends = [(1, 1), (2, 2), (3, 3)];
        let shares = shares(&random_sessions(30_000), &backends);
        for (share, expected) in shares.iter().zip([1.0 / 6.0, 2.0 / 6.0, 3.0 / 6.0]) {
            assert!((share - expected).abs() < 0.02, "{shares:?}");
        }
    }

    #[test]
    fn removing_a_backend_moves_only_its_sessions() {
        let all = [(1, 1), (2, 1), (3, 1)];
        let without_two = [(1, 1), (3, 1)];
        let mut moved = 0;
        for session in random_sessions(10_000) {
            let before = rendezvous(&session, all).unwrap();
            let after = rendezvous(&session, without_two).unwrap();
            if before == 2 {
                moved += 1;
            } else {
                assert_eq!(
                    before, after,
                    "{session:?} moved from a backend still there"
                );
            }
        }
        assert!(moved > 2_500, "{moved}");
    }

    #[test]
    fn rendezvous_never_picks_weight_zero_nor_from_nothing() {
        for session in random_sessions(1_000) {
            assert_eq!(rendezvous(&session, [(1, 0), (2, 1), (3, 0)]), Some(2));
        }
        assert_eq!(rendezvous(&SessionId([0; 16]), [(1, 0)]), None);
        assert_eq!(rendezvous(&SessionId([0; 16]), []), None);
    }
}
