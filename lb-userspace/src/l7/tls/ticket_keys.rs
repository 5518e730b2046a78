//! Session-ticket keys shared through a key file: [`TicketKeys`] seals a rustls session into a
//! ticket under the file's first key and opens a ticket sealed under any of its keys, so that a
//! client resumes its session on any balancer, and any process, that reads the same file.
//!
//! # The ticket
//!
//! ```text
//! key name (16 bytes) || salt (16 random bytes) || AES-256-GCM(issued || session) || tag (16)
//! issued     = the time the ticket was sealed, Unix seconds (u64 BE)
//! session    = what rustls gives to seal (the session's secrets, suite, SNI, ALPN)
//! AAD        = key name || salt
//! ```
//!
//! Each file key `k` gives, by HKDF-SHA256 ([`KEY_SALT`] as the salt, `k` as the secret), a
//! PRK from which come its public name (`expand("name")`, 16 bytes) and, for every ticket, a
//! key of its own: `expand("ticket" || salt)`, 32 bytes, used for that one ticket with a zero
//! nonce. Nonces never repeat under a key because no key seals twice; two tickets share a key
//! only if their random salts collide (after 2^48 tickets, a chance of 2^-33): a fleet can seal
//! under one file key for as long as it likes, unlike a random 96-bit nonce under a fixed key
//! (2^32 messages, NIST SP 800-38D), which a busy fleet reaches in hours.
//!
//! # Opening
//!
//! A ticket opens only under the key its name says (one attempt: the name is looked up among
//! the ring's by comparing every name, whatever matches). Anything else opens as `None`, never
//! an error, never a panic: too short or too long, an unknown name, a changed byte, a foreign
//! key, a ticket issued more than [`TICKET_LIFETIME`] ago (or later than now) beyond
//! [`CLOCK_SKEW`]. GCM's tag check is constant-time (ring). The lifetime bounds how long a
//! stolen ticket resumes a session; forward secrecy across tickets comes from rotating the
//! file's keys (README, "Session resumption").

use std::{fmt, path::Path};

use ring::{
    aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey},
    hkdf::{HKDF_SHA256, KeyType, Prk, Salt},
    rand::{SecureRandom as _, SystemRandom},
};

use crate::l7::{
    files::FileError,
    key_file::{self, KEY_LEN},
};

/// How long a ticket resumes its session: 12 hours, as rustls's own ticketer (which rotates
/// keys every 6 hours and keeps the previous one). The lifetime hint sent to clients.
pub const TICKET_LIFETIME: u32 = 12 * 60 * 60;
/// How far balancers' clocks may disagree: a ticket issued up to this far in the future, or
/// this much past its lifetime, still opens.
pub const CLOCK_SKEW: u64 = 5 * 60;
/// The HKDF salt of the key derivation: the format's version (a new format derives other keys
/// and names, so that no ticket of one is read as the other).
const KEY_SALT: &[u8] = b"lb session tickets v1";
const NAME_LEN: usize = 16;
const SALT_LEN: usize = 16;
const ISSUED_LEN: usize = 8;
const TAG_LEN: usize = 16;
const HEADER_LEN: usize = NAME_LEN + SALT_LEN;
/// The largest session sealed. rustls's are a few hundred bytes (secrets, suite, SNI, ALPN; no
/// client certificates, which the listeners do not ask for); a larger one gets no ticket.
const MAX_SESSION: usize = 4096;
/// The longest ticket opened: anything longer was not sealed here.
const MAX_TICKET: usize = HEADER_LEN + ISSUED_LEN + MAX_SESSION + TAG_LEN;

/// One key of the file: its public name and its PRK.
struct TicketKey {
    name: [u8; NAME_LEN],
    prk: Prk,
}

/// The keys of a ticket key file: the first seals, all open. Never empty.
pub struct TicketKeys {
    keys: Vec<TicketKey>,
}

impl fmt::Debug for TicketKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TicketKeys")
            .field("keys", &self.keys.len())
            .finish()
    }
}

/// An HKDF output length.
struct Len(usize);

impl KeyType for Len {
    fn len(&self) -> usize {
        self.0
    }
}

impl TicketKeys {
    /// Reads the key file at `path` ([`key_file::read_keys`]: 1 to 16 keys of 64 hex digits,
    /// private to its owner, not a symbolic link).
    pub fn load(path: &Path) -> Result<Self, FileError> {
        let keys = key_file::read_keys(path, "lb ticket-key")?;
        Self::from_keys(&keys).ok_or_else(|| FileError::new(path, "no key"))
    }

    /// The ring of `keys`, the first sealing; `None` if there is none.
    pub fn from_keys(keys: &[[u8; KEY_LEN]]) -> Option<Self> {
        let salt = Salt::new(HKDF_SHA256, KEY_SALT);
        let keys: Vec<TicketKey> = keys
            .iter()
            .filter_map(|key| {
                let prk = salt.extract(key);
                let mut name = [0; NAME_LEN];
                prk.expand(&[b"name"], Len(NAME_LEN))
                    .ok()?
                    .fill(&mut name)
                    .ok()?;
                Some(TicketKey { name, prk })
            })
            .collect();
        (!keys.is_empty()).then_some(Self { keys })
    }

    /// How many keys the ring holds.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Always false: a ring holds at least one key.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// `session` sealed under the first key, issued at `now` (Unix seconds); `None` if it is
    /// larger than a session can be or no random salt could be had (the client then gets no
    /// ticket and makes a full handshake next time).
    pub fn seal(&self, session: &[u8], now: u64) -> Option<Vec<u8>> {
        let key = self.keys.first()?;
        if session.len() > MAX_SESSION {
            return None;
        }
        let mut salt = [0; SALT_LEN];
        SystemRandom::new().fill(&mut salt).ok()?;
        let mut ticket = Vec::with_capacity(HEADER_LEN + ISSUED_LEN + session.len() + TAG_LEN);
        ticket.extend_from_slice(&key.name);
        ticket.extend_from_slice(&salt);
        ticket.extend_from_slice(&now.to_be_bytes());
        ticket.extend_from_slice(session);
        let (header, body) = ticket.split_at_mut(HEADER_LEN);
        let tag = ticket_key(&key.prk, &salt)?
            .seal_in_place_separate_tag(zero_nonce(), Aad::from(&*header), body)
            .ok()?;
        ticket.extend_from_slice(tag.as_ref());
        Some(ticket)
    }

    /// The session `ticket` holds if a key of the ring sealed it and it is live at `now` (Unix
    /// seconds); `None` for anything else.
    pub fn open(&self, ticket: &[u8], now: u64) -> Option<Vec<u8>> {
        if ticket.len() < HEADER_LEN + ISSUED_LEN + TAG_LEN || ticket.len() > MAX_TICKET {
            return None;
        }
        let (header, sealed) = ticket.split_at(HEADER_LEN);
        let (name, salt) = header.split_at(NAME_LEN);
        let key = self.find(name)?;
        let mut plain = sealed.to_vec();
        let opened = ticket_key(&key.prk, salt)?
            .open_in_place(zero_nonce(), Aad::from(header), &mut plain)
            .ok()?
            .len();
        plain.truncate(opened);
        let issued = plain.get(..ISSUED_LEN)?;
        let issued = u64::from_be_bytes(issued.try_into().ok()?);
        let live = issued <= now.saturating_add(CLOCK_SKEW)
            && now <= issued.saturating_add(u64::from(TICKET_LIFETIME) + CLOCK_SKEW);
        if !live {
            return None;
        }
        plain.drain(..ISSUED_LEN);
        Some(plain)
    }

    /// The key named `name`, looked for by comparing every key's name in full (names are
    /// public, but the time taken says nothing about which key, if any, matched).
    fn find(&self, name: &[u8]) -> Option<&TicketKey> {
        let mut found = None;
        for key in &self.keys {
            let difference = key
                .name
                .iter()
                .zip(name)
                .fold(0, |acc, (a, b)| acc | (a ^ b));
            if difference == 0 && found.is_none() {
                found = Some(key);
            }
        }
        found
    }
}

/// The key of the one ticket whose salt is `salt`.
fn ticket_key(prk: &Prk, salt: &[u8]) -> Option<LessSafeKey> {
    let info: [&[u8]; 2] = [b"ticket", salt];
    let okm = prk.expand(&info, &AES_256_GCM).ok()?;
    Some(LessSafeKey::new(UnboundKey::from(okm)))
}

/// The nonce of a key that seals one ticket.
fn zero_nonce() -> Nonce {
    Nonce::assume_unique_for_key([0; NONCE_LEN])
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) const KEY_A: [u8; KEY_LEN] = [0xa1; KEY_LEN];
    pub(crate) const KEY_B: [u8; KEY_LEN] = [0xb2; KEY_LEN];
    const NOW: u64 = 1_800_000_000;
    const SESSION: &[u8] = b"a rustls session: secret, suite, SNI, ALPN";

    fn ring(keys: &[[u8; KEY_LEN]]) -> TicketKeys {
        TicketKeys::from_keys(keys).unwrap()
    }

    #[test]
    fn a_sealed_session_opens_and_two_tickets_differ() {
        let keys = ring(&[KEY_A]);
        let first = keys.seal(SESSION, NOW).unwrap();
        let second = keys.seal(SESSION, NOW).unwrap();
        assert_ne!(first, second, "random salts");
        assert_eq!(
            first.len(),
            HEADER_LEN + ISSUED_LEN + SESSION.len() + TAG_LEN
        );
        assert!(!first.windows(SESSION.len()).any(|w| w == SESSION));
        assert_eq!(keys.open(&first, NOW).as_deref(), Some(SESSION));
        assert_eq!(keys.open(&second, NOW + 60).as_deref(), Some(SESSION));
        assert_eq!(
            keys.seal(b"", NOW).and_then(|t| keys.open(&t, NOW)),
            Some(vec![])
        );
        assert_eq!(format!("{keys:?}"), "TicketKeys { keys: 1 }");
    }

    #[test]
    fn a_ticket_of_an_old_key_opens_after_rotation_and_a_foreign_one_does_not() {
        let old = ring(&[KEY_A]).seal(SESSION, NOW).unwrap();
        let rotated = ring(&[KEY_B, KEY_A]);
        assert_eq!(rotated.open(&old, NOW).as_deref(), Some(SESSION));
        let new = rotated.seal(SESSION, NOW).unwrap();
        assert_eq!(ring(&[KEY_B]).open(&new, NOW).as_deref(), Some(SESSION));
        assert_eq!(ring(&[KEY_A]).open(&new, NOW), None, "sealed under B");
        assert_eq!(ring(&[KEY_B]).open(&old, NOW), None, "A retired");
        // Same name, other key: a forged name gets no further than the tag.
        let mut forged = ring(&[[0xcc; KEY_LEN]]).seal(SESSION, NOW).unwrap();
        forged[..NAME_LEN].copy_from_slice(&new[..NAME_LEN]);
        assert_eq!(rotated.open(&forged, NOW), None);
    }

    #[test]
    fn a_ticket_opens_for_its_lifetime_give_or_take_the_clock_skew() {
        let keys = ring(&[KEY_A]);
        let ticket = keys.seal(SESSION, NOW).unwrap();
        let end = NOW + u64::from(TICKET_LIFETIME) + CLOCK_SKEW;
        assert!(keys.open(&ticket, end).is_some());
        assert_eq!(keys.open(&ticket, end + 1), None, "expired");
        assert!(keys.open(&ticket, NOW - CLOCK_SKEW).is_some());
        assert_eq!(
            keys.open(&ticket, NOW - CLOCK_SKEW - 1),
            None,
            "from the future"
        );
        assert_eq!(keys.open(&ticket, 0), None);
        assert_eq!(keys.open(&ticket, u64::MAX), None);
        assert!(ring(&[KEY_A]).seal(SESSION, u64::MAX).is_some());
    }

    #[test]
    fn hostile_tickets_open_as_none_and_never_panic() {
        let keys = ring(&[KEY_B, KEY_A]);
        let ticket = keys.seal(SESSION, NOW).unwrap();
        for i in 0..ticket.len() {
            for bit in 0..8 {
                let mut flipped = ticket.clone();
                flipped[i] ^= 1 << bit;
                assert_eq!(keys.open(&flipped, NOW), None, "byte {i} bit {bit}");
            }
        }
        for len in 0..ticket.len() {
            assert_eq!(keys.open(&ticket[..len], NOW), None, "truncated to {len}");
        }
        let mut extended = ticket.clone();
        extended.push(0);
        assert_eq!(keys.open(&extended, NOW), None);
        // Garbage of every length up to past the longest ticket, from a fixed generator.
        let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
        for len in (0..MAX_TICKET + 64).step_by(7) {
            let garbage: Vec<u8> = (0..len)
                .map(|_| {
                    state ^= state << 13;
                    state ^= state >> 7;
                    state ^= state << 17;
                    state.to_be_bytes()[0]
                })
                .collect();
            assert_eq!(keys.open(&garbage, NOW), None, "{len} bytes");
            // Garbage behind a real name reaches the tag check and fails there.
            let mut named = ticket[..NAME_LEN].to_vec();
            named.extend_from_slice(&garbage);
            assert_eq!(keys.open(&named, NOW), None, "named, {len} bytes");
        }
        assert_eq!(keys.open(&vec![0; MAX_TICKET + 1], NOW), None);
    }

    #[test]
    fn a_session_too_large_gets_no_ticket_and_an_empty_ring_none() {
        let keys = ring(&[KEY_A]);
        assert!(keys.seal(&[7; MAX_SESSION], NOW).is_some());
        assert_eq!(keys.seal(&[7; MAX_SESSION + 1], NOW), None);
        assert!(TicketKeys::from_keys(&[]).is_none());
        assert_eq!(ring(&[KEY_A, KEY_B]).len(), 2);
    }
}
