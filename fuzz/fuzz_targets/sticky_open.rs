//! Opening a sticky cookie's value (`Sealer::open`): whatever a client sends as the cookie is
//! base64-decoded, its version checked, its key found by id and its AEAD opened; a value in
//! the first format (still read for one release) is opened under each key of the ring.
//!
//! Passes when no value panics and no value opens but the ones the ring sealed: the seeds
//! (`fuzz/corpus/sticky_open`, made with the module doc's formats; `first-format-*` in the
//! first one) hold a value sealed under each key of the ring (backends 0x0123456789abcdef and
//! 42), and values sealed under a foreign key, for another listener or cookie name, with
//! another version or key id, a flipped bit, cut, extended or padded. A mutated value that
//! opened to another ticket would be a forgery.

#![no_main]

use std::sync::{Arc, LazyLock};

use lb::l7::sticky::{KeyRing, Sealer};
use libfuzzer_sys::fuzz_target;

/// The ring's keys: 0xa1 and 0xb2 repeated (the unit tests' keys).
const KEYS: [[u8; 32]; 2] = [[0xa1; 32], [0xb2; 32]];

static SEALER: LazyLock<Sealer> = LazyLock::new(|| {
    let ring = KeyRing::from_keys(&KEYS).unwrap_or_else(|e| panic!("the fuzz key ring: {e}"));
    Sealer::new(Arc::new(ring), "web", "lb")
});

/// The backends of the seeds sealed by this ring, the only tickets that may open.
const SEEDED_BACKENDS: [u64; 2] = [0x0123_4567_89ab_cdef, 42];

fuzz_target!(|data: &[u8]| {
    let Ok(value) = std::str::from_utf8(data) else {
        return;
    };
    if let Some(ticket) = SEALER.open(value) {
        assert!(
            SEEDED_BACKENDS.contains(&ticket.backend),
            "a value the ring did not seal opened: {value:?} -> {ticket:?}"
        );
    }
});
