//! Checks on what long-lived connections ([`LongLived`](crate::long_lived::LongLived)) lived
//! through: [`assert_unharmed`] (no failure, no stall), [`assert_ended_after`] (worked until a
//! moment, then failed), [`per_backend`] counts, and [`on_backend`] to split them.

use std::{
    collections::BTreeMap,
    time::{Duration, Instant},
};

use crate::long_lived::History;

/// The longest a connection that should not notice anything may go without an exchange (ten
/// periods of the tests' 100 ms).
pub const MAX_STALL: Duration = Duration::from_secs(1);

/// Checks that a connection never failed and never went [`MAX_STALL`] without an exchange.
pub fn assert_unharmed(h: &History) {
    let (local, backend) = (h.served.local, &h.served.cert_backend);
    if let Some((_, reason)) = &h.failure {
        panic!(
            "{local} on {backend} failed after {} exchanges: {reason}",
            h.exchanges
        );
    }
    assert!(
        h.max_gap <= MAX_STALL,
        "{local} on {backend} went {:?} without an exchange",
        h.max_gap
    );
}

/// Checks that a connection kept working (no stall) until `not_before`, then failed; returns
/// why it failed.
pub fn assert_ended_after(h: &History, not_before: Instant) -> String {
    let (local, backend) = (h.served.local, &h.served.cert_backend);
    let Some((failed_at, reason)) = &h.failure else {
        panic!(
            "{local} on {backend} kept working ({} exchanges); it should have ended",
            h.exchanges
        );
    };
    assert!(
        *failed_at >= not_before,
        "{local} on {backend} failed {:?} too early: {reason}",
        not_before.saturating_duration_since(*failed_at)
    );
    assert!(
        h.max_gap <= MAX_STALL,
        "{local} on {backend} went {:?} without an exchange before it failed",
        h.max_gap
    );
    reason.clone()
}

/// Connections per backend (by certificate).
pub fn per_backend(histories: &[History]) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for h in histories {
        *counts.entry(h.served.cert_backend.clone()).or_insert(0) += 1;
    }
    counts
}

/// The connections served by `backend`, and the others.
pub fn on_backend<'a>(
    histories: &'a [History],
    backend: &str,
) -> (Vec<&'a History>, Vec<&'a History>) {
    histories
        .iter()
        .partition(|h| h.served.cert_backend == backend)
}
