//! The ticket a cookie carries and its sealing: [`Ticket`] (backend, [`SessionId`], expiry)
//! to and from its 32 plaintext bytes, and the [`Sealer`] of one listener's cookie, which
//! seals a ticket under the key ring's first key with a random nonce (AES-256-GCM, the
//! listener and cookie names bound in the associated data) into the base64url cookie value,
//! and opens a value with any key of the ring. The format is in the parent module's doc.

use std::{
    fmt,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use base64::{Engine as _, engine::general_purpose::URL_SAFE_NO_PAD};
use ring::{
    aead::{Aad, NONCE_LEN, Nonce},
    digest::{SHA256, digest},
    rand::{SecureRandom as _, SystemRandom},
};

use super::{BackendId, KeyRing, StickyError};

/// The format version, first byte of every cookie value and part of the associated data.
const VERSION: u8 = 1;
const TAG_LEN: usize = 16;
const PLAINTEXT_LEN: usize = 8 + 16 + 8;
/// version || nonce || ciphertext || tag.
const SEALED_LEN: usize = 1 + NONCE_LEN + PLAINTEXT_LEN + TAG_LEN;
/// The length of a cookie value: base64 without padding of `SEALED_LEN` bytes.
const SEALED_TEXT_LEN: usize = (SEALED_LEN * 4).div_ceil(3);

/// A user's session: random, carried in the cookie, hashed to re-place the user when its
/// backend fails (so every instance re-pins the user to the same new backend).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SessionId(pub [u8; 16]);

impl SessionId {
    /// A new session id from the system's random number generator. Should that fail, an id
    /// derived through SHA-256 from the time, the process and a counter: unique, if guessable
    /// (it only spreads users over backends; it protects nothing).
    pub fn random() -> Self {
        let mut id = [0; 16];
        if SystemRandom::new().fill(&mut id).is_ok() {
            return Self(id);
        }
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        tracing::warn!("the system's random number generator failed; session id from the clock");
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let mut input = Vec::with_capacity(64);
        input.extend_from_slice(b"lb-sticky-session-fallback-v1");
        input.extend_from_slice(&nanos.to_be_bytes());
        input.extend_from_slice(&std::process::id().to_be_bytes());
        input.extend_from_slice(&COUNTER.fetch_add(1, Ordering::Relaxed).to_be_bytes());
        for (to, from) in id.iter_mut().zip(digest(&SHA256, &input).as_ref()) {
            *to = *from;
        }
        Self(id)
    }
}

/// What a cookie says: which backend, which session, until when.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ticket {
    /// The backend the user is pinned to.
    pub backend: BackendId,
    /// The user's session, hashed to re-place it when its backend fails.
    pub session: SessionId,
    /// Unix milliseconds: a duration of one second is one second, not up to two.
    pub expires: u64,
}

impl Ticket {
    /// A ticket for `backend` that expires `duration` after `now_ms` (Unix milliseconds).
    pub fn new(backend: BackendId, session: SessionId, now_ms: u64, duration: Duration) -> Self {
        let duration = u64::try_from(duration.as_millis()).unwrap_or(u64::MAX);
        Self {
            backend,
            session,
            expires: now_ms.saturating_add(duration),
        }
    }

    /// Whether the ticket still holds at `now_ms` (it expires at `expires`).
    pub fn is_live(&self, now_ms: u64) -> bool {
        self.expires > now_ms
    }

    fn to_bytes(self) -> [u8; PLAINTEXT_LEN] {
        let mut bytes = [0; PLAINTEXT_LEN];
        let (backend, rest) = bytes.split_at_mut(8);
        let (session, expires) = rest.split_at_mut(16);
        backend.copy_from_slice(&self.backend.to_be_bytes());
        session.copy_from_slice(&self.session.0);
        expires.copy_from_slice(&self.expires.to_be_bytes());
        bytes
    }

    fn from_bytes(bytes: &[u8]) -> Option<Self> {
        let bytes: &[u8; PLAINTEXT_LEN] = bytes.try_into().ok()?;
        let (backend, rest) = bytes.split_first_chunk::<8>()?;
        let (session, expires) = rest.split_first_chunk::<16>()?;
        Some(Self {
            backend: u64::from_be_bytes(*backend),
            session: SessionId(*session),
            expires: u64::from_be_bytes(expires.try_into().ok()?),
        })
    }
}

/// The current time in Unix milliseconds (0 if the clock is before 1970).
pub fn now_unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Seals and opens the tickets of one listener's cookie. Cheap to clone.
#[derive(Clone)]
pub struct Sealer {
    keys: Arc<KeyRing>,
    listener: Arc<str>,
    cookie: Arc<str>,
    /// "lb-sticky" || version || the listener and cookie names, length-prefixed.
    aad: Arc<[u8]>,
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
        let mut aad = Vec::with_capacity(9 + 1 + 16 + listener.len() + cookie.len());
        aad.extend_from_slice(b"lb-sticky");
        aad.push(VERSION);
        for name in [listener, cookie] {
            let len = u64::try_from(name.len()).unwrap_or(u64::MAX);
            aad.extend_from_slice(&len.to_be_bytes());
            aad.extend_from_slice(name.as_bytes());
        }
        Self {
            keys,
            listener: listener.into(),
            cookie: cookie.into(),
            aad: aad.into(),
        }
    }

    /// The cookie value for `ticket`, sealed with the ring's first key under a random nonce
    /// (the format is in the module's doc). [`StickyError::Random`] if no nonce could be drawn:
    /// the caller then sets no cookie (the user is placed afresh next time), it does not fail
    /// the request.
    pub fn seal(&self, ticket: &Ticket) -> Result<String, StickyError> {
        let key = self.keys.keys.first().ok_or(StickyError::NoKeys)?;
        let mut nonce = [0; NONCE_LEN];
        SystemRandom::new()
            .fill(&mut nonce)
            .map_err(|_| StickyError::Random)?;
        let mut body = ticket.to_bytes();
        let tag = key
            .seal_in_place_separate_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(&*self.aad),
                &mut body,
            )
            .map_err(|_| StickyError::Crypto)?;
        let mut sealed = Vec::with_capacity(SEALED_LEN);
        sealed.push(VERSION);
        sealed.extend_from_slice(&nonce);
        sealed.extend_from_slice(&body);
        sealed.extend_from_slice(tag.as_ref());
        Ok(URL_SAFE_NO_PAD.encode(sealed))
    }

    /// The ticket in `value`, if any key of the ring sealed it for this listener and cookie
    /// name (expiry is not checked here). `None` for anything else, whatever the input.
    pub fn open(&self, value: &str) -> Option<Ticket> {
        // Rejects empty and huge values before decoding anything.
        if value.len() != SEALED_TEXT_LEN {
            return None;
        }
        // Room for the decoder's estimate (3 bytes per 4 characters, rounded up).
        let mut buffer = [0; SEALED_LEN.div_ceil(3) * 3];
        let decoded = URL_SAFE_NO_PAD.decode_slice(value, &mut buffer).ok()?;
        let sealed: &[u8; SEALED_LEN] = buffer.get(..decoded)?.try_into().ok()?;
        let (&version, rest) = sealed.split_first()?;
        if version != VERSION {
            return None;
        }
        let (nonce, ciphertext) = rest.split_first_chunk::<NONCE_LEN>()?;
        self.keys.keys.iter().find_map(|key| {
            let mut body: [u8; PLAINTEXT_LEN + TAG_LEN] = ciphertext.try_into().ok()?;
            let plain = key
                .open_in_place(
                    Nonce::assume_unique_for_key(*nonce),
                    Aad::from(&*self.aad),
                    &mut body,
                )
                .ok()?;
            Ticket::from_bytes(plain)
        })
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use crate::l7::sticky::backend_id;

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
        let mut v2 = bytes.clone();
        v2[0] = 2;
        variants.push(URL_SAFE_NO_PAD.encode(&v2));
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

    #[test]
    fn tickets_expire_at_their_time() {
        let ticket = Ticket::new(1, SessionId([0; 16]), 100_000, Duration::from_secs(60));
        assert_eq!(ticket.expires, 160_000);
        assert!(ticket.is_live(159_999));
        assert!(!ticket.is_live(160_000));
        let short = Ticket::new(1, SessionId([0; 16]), 100_999, Duration::from_secs(1));
        assert!(
            short.is_live(101_998),
            "a whole second, wherever in a second it began"
        );
        assert_eq!(
            Ticket::new(1, SessionId([0; 16]), u64::MAX, Duration::from_secs(1)).expires,
            u64::MAX
        );
    }

    #[test]
    fn session_ids_are_random() {
        assert_ne!(SessionId::random(), SessionId::random());
    }
}
