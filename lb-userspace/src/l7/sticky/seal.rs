//! The [`Sealer`] of one listener's cookie: a [`Ticket`] in, the base64url cookie value out, and
//! back ([`Sealer::open`]). The format, its bound and its reasons are in the parent module's
//! doc; in short, every cookie is sealed under a key of its own, derived from the ring's first
//! key and 16 of the cookie's 24 random bytes (HKDF-SHA256), with AES-256-GCM and the other 8
//! bytes as its nonce, and names the ring key by its [`KeyId`](super::keys::KeyId), so that
//! opening is one derivation and one AEAD open whatever the ring holds.
//!
//! Cookies in the first format (version 1: AES-256-GCM under the ring key itself, a random
//! 96-bit nonce, no key id) still open, by trying each key, so that users keep their backend
//! across the upgrade; [`Opened::is_legacy`] tells the proxy to re-issue them in the new
//! format. Version 1 goes in the release after the one that stopped writing it.

use std::{
    fmt,
    sync::{Arc, Mutex, MutexGuard, PoisonError},
};

use base64::{Engine as _, engine::general_purpose::URL_SAFE_NO_PAD};
use ring::{
    aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey},
    rand::{SecureRandom as _, SystemRandom},
};

use super::{
    KeyRing, StickyError, Ticket,
    keys::{KEY_ID_LEN, RingKey},
    ticket::PLAINTEXT_LEN,
};

/// The format written, first byte of every cookie value and part of the associated data.
const VERSION: u8 = 2;
/// The first format: read for one release, never written.
const LEGACY_VERSION: u8 = 1;
const TAG_LEN: usize = 16;
/// The random bytes of a cookie: 16 derive its key, 8 (then 4 zero bytes) are its nonce.
const RANDOM_LEN: usize = 24;
const DERIVE_LEN: usize = 16;
/// version || key id || random || ciphertext || tag.
const SEALED_LEN: usize = 1 + KEY_ID_LEN + RANDOM_LEN + PLAINTEXT_LEN + TAG_LEN;
/// version || nonce || ciphertext || tag, in the first format.
const LEGACY_LEN: usize = 1 + NONCE_LEN + PLAINTEXT_LEN + TAG_LEN;
/// The length of a cookie value: base64 without padding.
const SEALED_TEXT_LEN: usize = (SEALED_LEN * 4).div_ceil(3);
const LEGACY_TEXT_LEN: usize = (LEGACY_LEN * 4).div_ceil(3);

/// A cookie value that opened.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Opened {
    /// What it says.
    pub ticket: Ticket,
    /// Sealed in the first format: the response should carry it re-sealed in the current one.
    pub is_legacy: bool,
}

/// The cookie value a client connection's requests last opened ([`Sealer::open_cookie_again`]),
/// with the sealer that opened it (its keys and names, held so that they cannot be mistaken
/// for a later sealer's: a reload that changes them makes a new sealer).
#[derive(Default)]
pub struct LastOpened(Mutex<Option<Box<Remembered>>>);

impl fmt::Debug for LastOpened {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LastOpened").finish_non_exhaustive()
    }
}

impl LastOpened {
    /// Poisoned only by a panic while it was held, which leaves nothing half-written.
    fn lock(&self) -> MutexGuard<'_, Option<Box<Remembered>>> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    #[cfg(test)]
    fn holds(&self, value: &str) -> bool {
        self.lock()
            .as_ref()
            .is_some_and(|known| *known.value == *value)
    }
}

struct Remembered {
    keys: Arc<KeyRing>,
    names: Arc<[u8]>,
    value: Box<str>,
    opened: Opened,
}

/// Seals and opens the tickets of one listener's cookie. Cheap to clone.
#[derive(Clone)]
pub struct Sealer {
    keys: Arc<KeyRing>,
    listener: Arc<str>,
    cookie: Arc<str>,
    /// The associated data after the version and key id: the listener and cookie names,
    /// length-prefixed.
    names: Arc<[u8]>,
}

impl fmt::Debug for Sealer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Sealer")
            .field("listener", &self.listener)
            .field("cookie", &self.cookie)
            .field("keys", &self.keys.len())
            .finish()
    }
}

impl Sealer {
    /// A sealer for the cookie named `cookie` of the listener named `listener`: both names are
    /// bound into the associated data, so that a cookie from another listener or under another
    /// name does not open.
    pub fn new(keys: Arc<KeyRing>, listener: &str, cookie: &str) -> Self {
        let mut names = Vec::with_capacity(16 + listener.len() + cookie.len());
        for name in [listener, cookie] {
            let len = u64::try_from(name.len()).unwrap_or(u64::MAX);
            names.extend_from_slice(&len.to_be_bytes());
            names.extend_from_slice(name.as_bytes());
        }
        Self {
            keys,
            listener: listener.into(),
            cookie: cookie.into(),
            names: names.into(),
        }
    }

    /// The cookie value for `ticket`, sealed under the ring's first key (the format is in the
    /// module's doc). [`StickyError::Random`] if no random bytes could be drawn: the caller
    /// then sets no cookie (the user is placed afresh next time), it does not fail the request.
    pub fn seal(&self, ticket: &Ticket) -> Result<String, StickyError> {
        let key = self.keys.sealing()?;
        let mut random = [0; RANDOM_LEN];
        SystemRandom::new()
            .fill(&mut random)
            .map_err(|_| StickyError::Random)?;
        let (derive, nonce) = split_random(&random);
        let mut body = ticket.to_bytes();
        let tag = cookie_key(key, derive)?
            .seal_in_place_separate_tag(nonce, Aad::from(self.aad(VERSION, &key.id)), &mut body)
            .map_err(|_| StickyError::Crypto)?;
        let mut sealed = [0; SEALED_LEN];
        let parts = [&[VERSION][..], &key.id, &random, &body, tag.as_ref()];
        let mut at = 0;
        for part in parts {
            if let Some(to) = sealed.get_mut(at..at + part.len()) {
                to.copy_from_slice(part);
            }
            at += part.len();
        }
        Ok(URL_SAFE_NO_PAD.encode(sealed))
    }

    /// The ticket in `value`, if a key of the ring sealed it for this listener and cookie name
    /// (expiry is not checked here). `None` for anything else, whatever the input.
    pub fn open(&self, value: &str) -> Option<Ticket> {
        self.open_cookie(value).map(|opened| opened.ticket)
    }

    /// As [`Sealer::open`], and whether the value is in the first format.
    pub fn open_cookie(&self, value: &str) -> Option<Opened> {
        // Rejects empty and huge values before decoding anything.
        let is_legacy = match value.len() {
            SEALED_TEXT_LEN => false,
            LEGACY_TEXT_LEN => true,
            _ => return None,
        };
        // Room for the decoder's estimate (3 bytes per 4 characters, rounded up).
        let mut buffer = [0; SEALED_LEN.div_ceil(3) * 3];
        let decoded = URL_SAFE_NO_PAD.decode_slice(value, &mut buffer).ok()?;
        let sealed = buffer.get(..decoded)?;
        let ticket = if is_legacy {
            self.open_legacy(sealed.try_into().ok()?)
        } else {
            self.open_current(sealed.try_into().ok()?)
        }?;
        Some(Opened { ticket, is_legacy })
    }

    /// As [`Sealer::open_cookie`], remembering the value in `last` (a client connection's):
    /// a value this sealer opened last time is not opened again. A client sends the same
    /// cookie on every request of a connection, and opening it (a key derivation and an AEAD
    /// open) would give the same ticket; its expiry is the caller's to check, every time.
    pub fn open_cookie_again(&self, value: &str, last: &LastOpened) -> Option<Opened> {
        {
            let mut known = last.lock();
            if let Some(remembered) = known.as_deref() {
                if !self.opened(remembered) {
                    // Opened by a sealer since replaced: let its keys go (a reload may have
                    // removed one), whatever this value is.
                    *known = None;
                } else if *remembered.value == *value {
                    return Some(remembered.opened);
                }
            }
        }
        // Not under the lock: another stream of the connection does not wait for the open.
        let opened = self.open_cookie(value)?;
        *last.lock() = Some(Box::new(Remembered {
            keys: Arc::clone(&self.keys),
            names: Arc::clone(&self.names),
            value: value.into(),
            opened,
        }));
        Some(opened)
    }

    /// Whether this sealer is the one that opened `known`.
    fn opened(&self, known: &Remembered) -> bool {
        Arc::ptr_eq(&known.keys, &self.keys) && Arc::ptr_eq(&known.names, &self.names)
    }

    fn open_current(&self, sealed: &[u8; SEALED_LEN]) -> Option<Ticket> {
        let (&version, rest) = sealed.split_first()?;
        let (id, rest) = rest.split_first_chunk::<KEY_ID_LEN>()?;
        let (random, ciphertext) = rest.split_first_chunk::<RANDOM_LEN>()?;
        if version != VERSION {
            return None;
        }
        let key = self.keys.by_id(id)?;
        let (derive, nonce) = split_random(random);
        let mut body: [u8; PLAINTEXT_LEN + TAG_LEN] = ciphertext.try_into().ok()?;
        let plain = cookie_key(key, derive)
            .ok()?
            .open_in_place(nonce, Aad::from(self.aad(VERSION, id)), &mut body)
            .ok()?;
        Ticket::from_bytes(plain)
    }

    /// A first-format value: each key of the ring is tried.
    fn open_legacy(&self, sealed: &[u8; LEGACY_LEN]) -> Option<Ticket> {
        let (&version, rest) = sealed.split_first()?;
        let (nonce, ciphertext) = rest.split_first_chunk::<NONCE_LEN>()?;
        if version != LEGACY_VERSION {
            return None;
        }
        let mut aad = Vec::with_capacity(10 + self.names.len());
        aad.extend_from_slice(b"lb-sticky");
        aad.push(LEGACY_VERSION);
        aad.extend_from_slice(&self.names);
        self.keys.all().find_map(|key| {
            let mut body: [u8; PLAINTEXT_LEN + TAG_LEN] = ciphertext.try_into().ok()?;
            let plain = key
                .legacy
                .open_in_place(
                    Nonce::assume_unique_for_key(*nonce),
                    Aad::from(&aad),
                    &mut body,
                )
                .ok()?;
            Ticket::from_bytes(plain)
        })
    }

    /// "lb-sticky" || version || key id || the listener and cookie names, length-prefixed.
    fn aad(&self, version: u8, id: &[u8; KEY_ID_LEN]) -> Vec<u8> {
        let mut aad = Vec::with_capacity(10 + KEY_ID_LEN + self.names.len());
        aad.extend_from_slice(b"lb-sticky");
        aad.push(version);
        aad.extend_from_slice(id);
        aad.extend_from_slice(&self.names);
        aad
    }
}

/// A cookie's random bytes as the input of its key's derivation and its AES-GCM nonce.
fn split_random(random: &[u8; RANDOM_LEN]) -> (&[u8], Nonce) {
    let (derive, rest) = random.split_at(DERIVE_LEN);
    let mut nonce = [0; NONCE_LEN];
    for (to, from) in nonce.iter_mut().zip(rest) {
        *to = *from;
    }
    (derive, Nonce::assume_unique_for_key(nonce))
}

/// The AES-256-GCM key of one cookie: HKDF-SHA256-Expand of the ring key's pseudo-random key
/// with the info "lb-sticky v2 cookie key" || `derive`.
fn cookie_key(key: &RingKey, derive: &[u8]) -> Result<LessSafeKey, StickyError> {
    let info = [&b"lb-sticky v2 cookie key"[..], derive];
    let okm = key
        .prk
        .expand(&info, &AES_256_GCM)
        .map_err(|_| StickyError::Crypto)?;
    Ok(LessSafeKey::new(UnboundKey::from(okm)))
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use crate::l7::sticky::{SessionId, backend_id};

    pub(in crate::l7::sticky) const KEY_A: [u8; 32] = [0xa1; 32];
    pub(in crate::l7::sticky) const KEY_B: [u8; 32] = [0xb2; 32];

    pub(in crate::l7::sticky) fn sealer(keys: &[[u8; 32]], listener: &str, cookie: &str) -> Sealer {
        Sealer::new(
            Arc::new(KeyRing::from_keys(keys).expect("keys")),
            listener,
            cookie,
        )
    }

    pub(in crate::l7::sticky) fn ticket() -> Ticket {
        Ticket {
            backend: backend_id("10.0.0.1:8080".parse().unwrap()),
            session: SessionId([7; 16]),
            expires: 1_700_000_000,
        }
    }

    #[test]
    fn a_sealed_ticket_opens_under_the_same_listener_and_cookie() {
        let sealer = sealer(&[KEY_A], "web", "lb_sticky");
        let value = sealer.seal(&ticket()).unwrap();
        assert_eq!(value.len(), SEALED_TEXT_LEN);
        assert_eq!(sealer.open(&value), Some(ticket()));
        let clone = sealer.clone();
        assert_eq!(clone.open(&value), Some(ticket()));
    }

    #[test]
    fn any_key_of_the_ring_opens_the_first_seals() {
        let old = sealer(&[KEY_A], "web", "lb_sticky");
        let rotated = sealer(&[KEY_B, KEY_A], "web", "lb_sticky");
        let sealed_by_old = old.seal(&ticket()).unwrap();
        assert_eq!(rotated.open(&sealed_by_old), Some(ticket()));
        // The rotated ring seals with its first key, which the old ring does not know.
        let sealed_by_rotated = rotated.seal(&ticket()).unwrap();
        assert_eq!(old.open(&sealed_by_rotated), None);
        assert_eq!(
            sealer(&[KEY_B], "web", "lb_sticky").open(&sealed_by_rotated),
            Some(ticket())
        );
    }

    #[test]
    fn a_cookie_opens_only_with_its_key_listener_and_name() {
        let value = sealer(&[KEY_A], "web", "lb_sticky")
            .seal(&ticket())
            .unwrap();
        assert_eq!(sealer(&[KEY_B], "web", "lb_sticky").open(&value), None);
        assert_eq!(sealer(&[KEY_A], "api", "lb_sticky").open(&value), None);
        assert_eq!(sealer(&[KEY_A], "web", "lb_sticky2").open(&value), None);
        // The names are length-prefixed: moving a byte between them changes the data.
        let split = sealer(&[KEY_A], "ab", "c").seal(&ticket()).unwrap();
        assert_eq!(sealer(&[KEY_A], "a", "bc").open(&split), None);
    }

    #[test]
    fn a_connections_last_cookie_is_opened_once_and_only_for_its_sealer() {
        let web = sealer(&[KEY_A], "web", "lb_sticky");
        let value = web.seal(&ticket()).unwrap();
        let last = LastOpened::default();
        let opened = web.open_cookie(&value);
        assert_eq!(web.open_cookie_again(&value, &last), opened);
        assert!(last.holds(&value));
        // Remembered: the same answer again, from the clone of the listener's sealer.
        assert_eq!(web.clone().open_cookie_again(&value, &last), opened);
        // Another sealer (a reload's new keys, another listener) opens for itself, and does
        // not take the remembered ticket for its own.
        for other in [
            sealer(&[KEY_B], "web", "lb_sticky"),
            sealer(&[KEY_A], "api", "lb_sticky"),
            sealer(&[KEY_A], "web", "lb_sticky"),
        ] {
            assert_eq!(
                other.open_cookie_again(&value, &last),
                other.open_cookie(&value)
            );
        }
        // A sealer since replaced lets its remembered value go, even for a value it cannot open.
        assert_eq!(web.open_cookie_again(&value, &last), opened);
        assert_eq!(
            sealer(&[KEY_B], "web", "lb_sticky").open_cookie_again("x", &last),
            None
        );
        assert!(!last.holds(&value));
        // A value that does not open changes nothing remembered; another that does, replaces it.
        assert_eq!(web.open_cookie_again(&value, &last), opened);
        let mut tampered = value.clone().into_bytes();
        tampered[20] ^= 1;
        let tampered = String::from_utf8(tampered).unwrap();
        assert_eq!(web.open_cookie_again(&tampered, &last), None);
        assert!(last.holds(&value));
        let newer = web.seal(&ticket()).unwrap();
        assert_eq!(web.open_cookie_again(&newer, &last), opened);
        assert!(last.holds(&newer) && !last.holds(&value));
    }

    #[test]
    fn tampered_truncated_extended_or_garbage_values_are_no_cookie() {
        let sealer = sealer(&[KEY_A, KEY_B], "web", "lb_sticky");
        let value = sealer.seal(&ticket()).unwrap();
        let bytes = URL_SAFE_NO_PAD.decode(&value).unwrap();
        assert_eq!(bytes.len(), SEALED_LEN);
        let mut variants = Vec::new();
        for bit in 0..bytes.len() * 8 {
            let mut flipped = bytes.clone();
            flipped[bit / 8] ^= 1 << (bit % 8);
            variants.push(URL_SAFE_NO_PAD.encode(&flipped));
        }
        for len in 0..bytes.len() {
            variants.push(URL_SAFE_NO_PAD.encode(&bytes[..len]));
        }
        for len in 0..value.len() {
            variants.push(value[..len].to_owned());
        }
        for extra in [&b"\0"[..], b"A", b"\xff\xff", &[0; 100]] {
            let mut longer = bytes.clone();
            longer.extend_from_slice(extra);
            variants.push(URL_SAFE_NO_PAD.encode(&longer));
        }
        for suffix in ["A", "=", "==", " ", "; x=y", "\u{e9}"] {
            variants.push(format!("{value}{suffix}"));
        }
        // Standard base64, padding, another version byte.
        variants.push(base64::engine::general_purpose::STANDARD.encode(&bytes));
        for version in [0, LEGACY_VERSION, 3, 0xff] {
            let mut other = bytes.clone();
            other[0] = version;
            variants.push(URL_SAFE_NO_PAD.encode(&other));
        }
        // Same length, not base64; non-ASCII; huge; random garbage of every length near 82.
        variants.push("!".repeat(SEALED_TEXT_LEN));
        variants.push("\u{e9}".repeat(SEALED_TEXT_LEN / 2));
        variants.push("A".repeat(1 << 20));
        variants.push(String::new());
        let alphabet: Vec<char> = "AZaz09-_+/=.;é€🦀\0 \u{7f}".chars().collect();
        for i in 0..600 {
            let mut noise = [0; 128];
            SystemRandom::new().fill(&mut noise).unwrap();
            let len = 60 + i % 40;
            let garbage: String = noise[..len]
                .iter()
                .map(|b| alphabet[usize::from(*b) % alphabet.len()])
                .collect();
            variants.push(garbage);
            variants.push(URL_SAFE_NO_PAD.encode(&noise[..SEALED_LEN]));
        }
        assert!(variants.len() > 1000, "{}", variants.len());
        for variant in &variants {
            assert_eq!(sealer.open(variant), None, "{variant:?} opened");
        }
        assert_eq!(sealer.open(&value), Some(ticket()));
    }

    #[test]
    fn a_cookie_reveals_nothing_and_never_repeats() {
        let sealer = sealer(&[KEY_A], "web", "lb_sticky");
        let ticket = ticket();
        let first = sealer.seal(&ticket).unwrap();
        let second = sealer.seal(&ticket).unwrap();
        assert_ne!(first, second, "the nonce is random");
        for value in [&first, &second] {
            assert!(!value.contains("10.0.0.1"), "{value}");
            let bytes = URL_SAFE_NO_PAD.decode(value).unwrap();
            let contains = |needle: &[u8]| bytes.windows(needle.len()).any(|w| w == needle);
            assert!(!contains(&ticket.backend.to_be_bytes()));
            assert!(!contains(&ticket.session.0));
            assert!(!contains(&ticket.expires.to_be_bytes()));
        }
    }

    /// A value sealed by the first format's code (the release before this one) with [`KEY_A`]
    /// for listener "web", cookie "lb_sticky": backend 198.18.0.10:8080, session 0x5a...,
    /// expiring at Unix ms 1 900 000 000 000.
    const LEGACY_VALUE: &str =
        "Ab92TUXGZwKk9s2fq7D7hmXj9mw26UdEalenJ4t-3GnQbGNxkzg-z2TiHFlz4R3aVqgH70BTnBvQNnysfA";

    fn legacy_ticket() -> Ticket {
        Ticket {
            backend: backend_id("198.18.0.10:8080".parse().unwrap()),
            session: SessionId([0x5a; 16]),
            expires: 1_900_000_000_000,
        }
    }

    #[test]
    fn a_first_format_cookie_opens_with_any_key_of_the_ring_and_says_so() {
        let opened = Opened {
            ticket: legacy_ticket(),
            is_legacy: true,
        };
        for keys in [&[KEY_A][..], &[KEY_B, KEY_A], &[KEY_A, KEY_B]] {
            let sealer = sealer(keys, "web", "lb_sticky");
            assert_eq!(sealer.open_cookie(LEGACY_VALUE), Some(opened));
        }
        assert_eq!(
            sealer(&[KEY_B], "web", "lb_sticky").open(LEGACY_VALUE),
            None
        );
        assert_eq!(
            sealer(&[KEY_A], "api", "lb_sticky").open(LEGACY_VALUE),
            None
        );
        assert_eq!(sealer(&[KEY_A], "web", "other").open(LEGACY_VALUE), None);
        let bytes = URL_SAFE_NO_PAD.decode(LEGACY_VALUE).unwrap();
        assert_eq!(bytes.len(), LEGACY_LEN);
        let sealer = sealer(&[KEY_A], "web", "lb_sticky");
        for bit in 0..bytes.len() * 8 {
            let mut flipped = bytes.clone();
            flipped[bit / 8] ^= 1 << (bit % 8);
            assert_eq!(
                sealer.open(&URL_SAFE_NO_PAD.encode(&flipped)),
                None,
                "bit {bit}"
            );
        }
        // What the ring seals now is the current format.
        let fresh = sealer.open_cookie(&sealer.seal(&legacy_ticket()).unwrap());
        assert_eq!(fresh.map(|o| o.is_legacy), Some(false));
    }

    #[test]
    fn a_cookie_names_its_sealing_key_and_opens_only_under_it() {
        let ring = sealer(&[KEY_A, KEY_B], "web", "lb_sticky");
        let value = URL_SAFE_NO_PAD
            .decode(ring.seal(&ticket()).unwrap())
            .unwrap();
        assert_eq!(value[0], VERSION);
        let id_a = ring.keys.by_id(value[1..5].try_into().unwrap()).unwrap().id;
        assert_eq!(id_a, ring.keys.sealing().unwrap().id);
        // The ids are the keys', not their places: the same in any ring that holds the key.
        let other = sealer(&[KEY_B, KEY_A], "web", "lb_sticky");
        let id_b = other.keys.sealing().unwrap().id;
        assert_ne!(id_a, id_b);
        assert_eq!(other.keys.by_id(&id_a).unwrap().id, id_a);
        // Under the other key's id, the value does not open (even though the ring holds both).
        let mut renamed = value.clone();
        renamed[1..5].copy_from_slice(&id_b);
        assert_eq!(ring.open(&URL_SAFE_NO_PAD.encode(&renamed)), None);
        assert_eq!(ring.open(&URL_SAFE_NO_PAD.encode(&value)), Some(ticket()));
    }

    #[test]
    fn a_ring_refuses_the_same_key_twice() {
        let error = KeyRing::from_keys(&[KEY_A, KEY_B, KEY_A]).unwrap_err();
        assert!(
            matches!(
                error,
                StickyError::SameKeyId {
                    first: 1,
                    second: 3
                }
            ),
            "{error:?}"
        );
        assert!(error.to_string().contains("keys 1 and 3"), "{error}");
    }
}
