//! Sealing and opening session tickets (`TicketKeys`) with fuzzed keys, sessions and times,
//! and opening whatever a client sends as a ticket.
//!
//! For any ring (1 to 16 keys), session and time:
//! - what the ring seals, it opens to the same session for the ticket's lifetime, and so does a
//!   ring that holds the sealing key later in its list (rotation);
//! - it does not open under a ring without the sealing key, nor with any one byte changed, nor
//!   cut short, nor past its lifetime;
//! - bytes the ring did not seal open to nothing.

#![no_main]

use arbitrary::Arbitrary;
use lb::l7::tls::{CLOCK_SKEW, TICKET_LIFETIME, TicketKeys};
use libfuzzer_sys::fuzz_target;

#[derive(Debug, Arbitrary)]
struct Input {
    keys: Vec<[u8; 32]>,
    new_key: [u8; 32],
    session: Vec<u8>,
    now: u64,
    age: u32,
    flip_at: usize,
    flip: u8,
    cut: usize,
    raw: Vec<u8>,
}

fuzz_target!(|input: Input| {
    let keys: Vec<[u8; 32]> = input.keys.iter().take(16).copied().collect();
    let Some(ring) = TicketKeys::from_keys(&keys) else {
        assert!(keys.is_empty());
        return;
    };
    assert_eq!(ring.open(&input.raw, input.now), None, "raw bytes opened");
    let Some(ticket) = ring.seal(&input.session, input.now) else {
        return;
    };
    let lifetime = u64::from(TICKET_LIFETIME) + CLOCK_SKEW;
    let later = input
        .now
        .saturating_add(u64::from(input.age) % (lifetime + 1));
    let session = Some(input.session.clone());
    assert_eq!(ring.open(&ticket, later), session);
    let mut rotated = vec![input.new_key];
    rotated.extend_from_slice(&keys);
    rotated.truncate(16);
    if let Some(rotated) = TicketKeys::from_keys(&rotated) {
        assert_eq!(rotated.open(&ticket, later), session, "after rotation");
    }
    if !keys.contains(&input.new_key)
        && let Some(foreign) = TicketKeys::from_keys(&[input.new_key])
    {
        assert_eq!(foreign.open(&ticket, later), None, "under a foreign key");
    }
    if let Some(expired) = input.now.checked_add(lifetime + 1) {
        assert_eq!(ring.open(&ticket, expired), None, "past its lifetime");
    }
    let mut flipped = ticket.clone();
    if let Some(byte) = flipped.get_mut(input.flip_at % ticket.len()) {
        *byte ^= input.flip.max(1);
    }
    assert_eq!(ring.open(&flipped, later), None, "a changed byte");
    assert_eq!(
        ring.open(&ticket[..input.cut % ticket.len()], later),
        None,
        "cut short"
    );
});
