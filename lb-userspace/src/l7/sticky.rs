//! Cookie stickiness: pinning a user to one backend with a sealed cookie.
//!
//! On a request without a valid cookie the proxy places the request as usual, then
//! [`Sealer::seal`]s a [`Ticket`] (the chosen backend's [`BackendId`], a random [`SessionId`],
//! an absolute expiry) into the cookie's value and sends it with [`set_cookie`]. On later
//! requests [`take_cookie`] removes the balancer's cookie from the `Cookie` headers (the backend
//! never sees it) and [`Sealer::open`] gives the ticket back. While the ticket is live and its
//! backend healthy, the request goes there; otherwise the proxy asks [`rendezvous`] for a new
//! backend for the same session and sets a new cookie.
//!
//! # The cookie value
//!
//! base64url without padding (82 characters) of 61 bytes:
//!
//! ```text
//! version (1 byte, = 1) || nonce (12 random bytes) || AES-256-GCM(plaintext) || tag (16 bytes)
//! plaintext (32 bytes) = backend id (u64 BE) || session id (16 bytes) || expires (u64 BE, Unix ms)
//! associated data      = "lb-sticky" || version || len(listener) (u64 BE) || listener
//!                                    || len(cookie name) (u64 BE) || cookie name
//! ```
//!
//! # Guarantees
//!
//! - Opaque: the value is ciphertext under a random nonce; it reveals no backend address or
//!   name, and two cookies for the same ticket differ.
//! - Unforgeable: without a key of the key file no value opens. A value sealed for another
//!   listener or another cookie name does not open either (both are in the associated data).
//! - Rotation: a key file ([`KeyRing::load`]) holds 1 to 16 keys; the first seals, all open.
//!   To rotate, put the new key first, keep the old one for the cookies' duration, then drop it.
//!   Nonces are random, so a key should seal fewer than 2^32 cookies (NIST SP 800-38D).
//! - Agreement: balancers with the same key file and configuration make the same decision for
//!   the same cookie: [`backend_id`] hashes the backend's address, not its place in a list, and
//!   [`rendezvous`] is a fixed hash with integer arithmetic (no platform `ln`, no `DefaultHasher`).
//! - Whatever is not a cookie sealed by the ring for this listener and cookie name (tampered,
//!   truncated, extended, sealed under a foreign key, wrong version, not base64, non-ASCII) is no
//!   cookie: [`Sealer::open`] answers `None`, never an error and never a panic. Expiry is the
//!   caller's check ([`Ticket::is_live`]).

use std::{
    fmt,
    net::SocketAddr,
    path::Path,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use base64::{Engine as _, engine::general_purpose::URL_SAFE_NO_PAD};
use hyper::header::{COOKIE, HeaderMap, HeaderValue};
use ring::{
    aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey},
    digest::{SHA256, digest},
    rand::{SecureRandom as _, SystemRandom},
};

use super::files::{self, FileError};
use crate::config::l7::StickySettings;

/// The format version, first byte of every cookie value and part of the associated data.
const VERSION: u8 = 1;
const KEY_LEN: usize = 32;
const TAG_LEN: usize = 16;
const PLAINTEXT_LEN: usize = 8 + 16 + 8;
/// version || nonce || ciphertext || tag.
const SEALED_LEN: usize = 1 + NONCE_LEN + PLAINTEXT_LEN + TAG_LEN;
/// The length of a cookie value: base64 without padding of `SEALED_LEN` bytes.
const SEALED_TEXT_LEN: usize = (SEALED_LEN * 4).div_ceil(3);
/// The most keys a key file may hold.
pub const MAX_KEYS: usize = 16;
/// 9999-12-31T23:59:59Z, the last instant an IMF-fixdate (and `httpdate`) can write.
const LAST_HTTP_DATE: u64 = 253_402_300_799;

/// What stickiness cannot do without: keys, and randomness.
#[derive(Debug, thiserror::Error)]
pub enum StickyError {
    /// A ring without keys.
    #[error("no key: a key ring needs at least one (`lb sticky-key` prints one)")]
    NoKeys,
    /// More than [`MAX_KEYS`] keys.
    #[error("{count} keys: a key ring holds at most {MAX_KEYS}; remove the retired ones")]
    TooManyKeys { count: usize },
    /// No random bytes for a key or a nonce.
    #[error("the system's random number generator failed")]
    Random,
    /// ring's AES-256-GCM refused a key or a plaintext (it does not, for 32-byte ones).
    #[error("AES-256-GCM refused the key or the data")]
    Crypto,
}

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

/// The AEAD keys of a key file (AES-256-GCM, built once): the first seals, all open.
pub struct KeyRing {
    /// Never empty, at most [`MAX_KEYS`].
    keys: Vec<LessSafeKey>,
}

impl fmt::Debug for KeyRing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyRing")
            .field("keys", &self.keys.len())
            .finish()
    }
}

impl KeyRing {
    /// Reads the key file: one key per line, 64 hex digits (32 bytes, AES-256-GCM); blank lines
    /// and lines starting with '#' are ignored, surrounding whitespace trimmed. At least one
    /// key, at most [`MAX_KEYS`]. Errors name the file and the line number, never the line's
    /// content. A file its group or others may read is refused.
    pub fn load(path: &Path) -> Result<Self, FileError> {
        let content = files::read_private(path)?;
        let mut keys = Vec::new();
        for (index, line) in content.split(|b| *b == b'\n').enumerate() {
            let line = line.trim_ascii();
            if line.is_empty() || line.starts_with(b"#") {
                continue;
            }
            let Some(key) = parse_key(line) else {
                return Err(FileError::new(
                    path,
                    format!(
                        "line {}: not a key: a key is 64 hex digits on a line of its own \
                         (`lb sticky-key` prints one)",
                        index + 1
                    ),
                ));
            };
            keys.push(key);
        }
        Self::from_keys(&keys).map_err(|e| FileError::new(path, e))
    }

    /// A ring of raw keys, the first sealing (tests, benches). [`StickyError::NoKeys`] if there
    /// is none, [`StickyError::TooManyKeys`] past [`MAX_KEYS`].
    pub fn from_keys(keys: &[[u8; KEY_LEN]]) -> Result<Self, StickyError> {
        if keys.is_empty() {
            return Err(StickyError::NoKeys);
        }
        if keys.len() > MAX_KEYS {
            return Err(StickyError::TooManyKeys { count: keys.len() });
        }
        let keys = keys
            .iter()
            .map(|key| {
                UnboundKey::new(&AES_256_GCM, key)
                    .map(LessSafeKey::new)
                    .map_err(|_| StickyError::Crypto)
            })
            .collect::<Result<_, _>>()?;
        Ok(Self { keys })
    }

    /// A new random key as a key-file line (64 lowercase hex digits), for `lb sticky-key`.
    pub fn generate_line() -> Result<String, StickyError> {
        let mut key = [0; KEY_LEN];
        SystemRandom::new()
            .fill(&mut key)
            .map_err(|_| StickyError::Random)?;
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let mut line = String::with_capacity(2 * KEY_LEN);
        for byte in key {
            line.push(char::from(HEX[usize::from(byte >> 4)]));
            line.push(char::from(HEX[usize::from(byte & 0xf)]));
        }
        Ok(line)
    }

    /// How many keys the ring holds (at least 1).
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Always false: a ring holds at least one key.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }
}

/// 64 hex digits (either case) as a key.
fn parse_key(text: &[u8]) -> Option<[u8; KEY_LEN]> {
    if text.len() != 2 * KEY_LEN {
        return None;
    }
    let mut key = [0; KEY_LEN];
    for (byte, pair) in key.iter_mut().zip(text.chunks_exact(2)) {
        let &[high, low] = pair else {
            return None;
        };
        *byte = (hex_digit(high)? << 4) | hex_digit(low)?;
    }
    Some(key)
}

fn hex_digit(digit: u8) -> Option<u8> {
    match digit {
        b'0'..=b'9' => Some(digit - b'0'),
        b'a'..=b'f' => Some(digit - b'a' + 10),
        b'A'..=b'F' => Some(digit - b'A' + 10),
        _ => None,
    }
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

/// The `Set-Cookie` value for `value` (a [`Sealer::seal`] output): `Path`, `Max-Age` (the
/// seconds from `now_ms` to `expires_ms`, rounded up, at least 1), `Expires` (IMF-fixdate,
/// at the latest in year 9999), then `HttpOnly`, `Secure` and `SameSite` as `settings` say.
/// Bytes a header cannot hold are dropped (validated settings and sealed values have none).
pub fn set_cookie(
    settings: &StickySettings,
    value: &str,
    expires_ms: u64,
    now_ms: u64,
) -> HeaderValue {
    let max_age = expires_ms.saturating_sub(now_ms).div_ceil(1000).max(1);
    let expires_unix = expires_ms.div_ceil(1000);
    let expires = UNIX_EPOCH
        .checked_add(Duration::from_secs(expires_unix.min(LAST_HTTP_DATE)))
        .unwrap_or(UNIX_EPOCH);
    let mut text = format!(
        "{}={value}; Path={}; Max-Age={max_age}; Expires={}",
        settings.cookie,
        settings.path,
        httpdate::fmt_http_date(expires)
    );
    if settings.http_only {
        text.push_str("; HttpOnly");
    }
    if settings.secure {
        text.push_str("; Secure");
    }
    if let Some(same_site) = settings.same_site {
        text.push_str("; SameSite=");
        text.push_str(same_site.as_str());
    }
    text.retain(|ch| ch == '\t' || (' '..='~').contains(&ch));
    HeaderValue::from_str(&text).unwrap_or_else(|_| HeaderValue::from_static(""))
}

/// Removes every `name=...` pair from the `Cookie` headers of `headers` (HTTP/2 clients may
/// send several) and returns the value of the first one (surrounding double quotes removed).
///
/// Headers are read as bytes, so one with non-UTF-8 bytes is handled like any other: pieces
/// are separated by ';' and trimmed of whitespace, and a piece is the balancer's when the text
/// before its first '=' is `name` (case-sensitive; `name2=` is another cookie). A header
/// without such a piece is kept untouched; in one with such a piece, the other pieces are kept
/// byte-for-byte and in order, joined by "; " (empty pieces go), and a header left with none
/// is removed. A piece without '=' is never the balancer's. Rebuilt headers keep their
/// sensitive flag.
pub fn take_cookie(headers: &mut HeaderMap, name: &str) -> Option<String> {
    let name = name.as_bytes();
    if name.is_empty() {
        return None;
    }
    let mut all = headers.get_all(COOKIE).iter();
    if let (Some(only), None) = (all.next(), all.next()) {
        // One header, as every HTTP/1.1 client sends: changed in place, nothing else copied.
        let (ours, kept) = split_cookie(only, name)?;
        match kept {
            Some(kept) => headers.insert(COOKIE, kept),
            None => headers.remove(COOKIE),
        };
        return Some(ours);
    }
    let values: Vec<HeaderValue> = headers.get_all(COOKIE).iter().cloned().collect();
    let mut found = None;
    let mut rebuilt = Vec::with_capacity(values.len());
    for value in values {
        match split_cookie(&value, name) {
            Some((ours, kept)) => {
                found.get_or_insert(ours);
                rebuilt.extend(kept);
            }
            None => rebuilt.push(value),
        }
    }
    if found.is_some() {
        headers.remove(COOKIE);
        for value in rebuilt {
            headers.append(COOKIE, value);
        }
    }
    found
}

/// The value of the first `name` pair in one `Cookie` header, and the header without its
/// `name` pairs (none if nothing is left); `None` if it holds no such pair.
fn split_cookie(header: &HeaderValue, name: &[u8]) -> Option<(String, Option<HeaderValue>)> {
    let mut found = None;
    let mut kept = Vec::new();
    for piece in pieces(header.as_bytes()) {
        match pair_value(piece, name) {
            Some(ours) => {
                found.get_or_insert(ours);
            }
            None => {
                if !kept.is_empty() {
                    kept.extend_from_slice(b"; ");
                }
                kept.extend_from_slice(piece);
            }
        }
    }
    let found = found?;
    let ours = std::str::from_utf8(found).map_or_else(
        |_| String::from_utf8_lossy(found).into_owned(),
        str::to_owned,
    );
    if kept.is_empty() {
        return Some((ours, None));
    }
    // Every byte comes from a valid header value, so this holds; keep the header otherwise.
    let rebuilt = HeaderValue::from_bytes(&kept).map_or_else(
        |_| header.clone(),
        |mut rebuilt| {
            rebuilt.set_sensitive(header.is_sensitive());
            rebuilt
        },
    );
    Some((ours, Some(rebuilt)))
}

/// The non-empty pieces of a `Cookie` header, trimmed.
fn pieces(header: &[u8]) -> impl Iterator<Item = &[u8]> {
    header
        .split(|b| *b == b';')
        .map(<[u8]>::trim_ascii)
        .filter(|piece| !piece.is_empty())
}

/// The value of `piece` if it is a `name=value` pair.
fn pair_value<'a>(piece: &'a [u8], name: &[u8]) -> Option<&'a [u8]> {
    let equals = piece.iter().position(|b| *b == b'=')?;
    let (piece_name, rest) = piece.split_at(equals);
    if piece_name.trim_ascii() != name {
        return None;
    }
    let value = rest.get(1..)?.trim_ascii();
    Some(
        value
            .strip_prefix(b"\"")
            .and_then(|v| v.strip_suffix(b"\""))
            .unwrap_or(value),
    )
}

#[cfg(test)]
mod tests {
    use std::{os::unix::fs::PermissionsExt as _, path::PathBuf};

    use super::*;
    use crate::config::l7::SameSite;

    const KEY_A: [u8; 32] = [0xa1; 32];
    const KEY_B: [u8; 32] = [0xb2; 32];

    fn sealer(keys: &[[u8; 32]], listener: &str, cookie: &str) -> Sealer {
        Sealer::new(
            Arc::new(KeyRing::from_keys(keys).expect("keys")),
            listener,
            cookie,
        )
    }

    fn ticket() -> Ticket {
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

    fn settings() -> StickySettings {
        StickySettings {
            cookie: "lb_sticky".to_owned(),
            duration: Duration::from_secs(3600),
            key_file: PathBuf::from("/etc/lb/sticky.keys"),
            path: "/".to_owned(),
            http_only: true,
            secure: true,
            same_site: Some(SameSite::Lax),
        }
    }

    #[test]
    fn set_cookie_renders_the_attributes_the_settings_ask_for() {
        // 1_700_003_600 is Tue, 14 Nov 2023 23:13:20 GMT.
        let header = set_cookie(&settings(), "VALUE", 1_700_003_600_000, 1_700_000_000_000);
        assert_eq!(
            header.to_str().unwrap(),
            "lb_sticky=VALUE; Path=/; Max-Age=3600; Expires=Tue, 14 Nov 2023 23:13:20 GMT; \
             HttpOnly; Secure; SameSite=Lax"
        );
        let strict = StickySettings {
            cookie: "srv".to_owned(),
            path: "/app".to_owned(),
            http_only: false,
            same_site: Some(SameSite::Strict),
            ..settings()
        };
        assert_eq!(
            set_cookie(&strict, "V", 1_700_003_600_000, 1_700_002_999_500)
                .to_str()
                .unwrap(),
            "srv=V; Path=/app; Max-Age=601; Expires=Tue, 14 Nov 2023 23:13:20 GMT; Secure; \
             SameSite=Strict"
        );
        let none = StickySettings {
            same_site: Some(SameSite::None),
            ..settings()
        };
        assert!(
            set_cookie(&none, "V", 10_000, 0)
                .to_str()
                .unwrap()
                .ends_with("; HttpOnly; Secure; SameSite=None")
        );
        let unset = StickySettings {
            same_site: None,
            secure: false,
            ..settings()
        };
        let text = set_cookie(&unset, "V", 10_000, 0);
        assert!(
            text.to_str().unwrap().ends_with("GMT; HttpOnly"),
            "{text:?}"
        );
    }

    #[test]
    fn set_cookie_max_age_is_at_least_one_and_expires_stays_writable() {
        let past = set_cookie(&settings(), "V", 100_000, 200_000);
        assert!(past.to_str().unwrap().contains("; Max-Age=1; "), "{past:?}");
        let far = set_cookie(&settings(), "V", u64::MAX, 0);
        let far = far.to_str().unwrap();
        let max_age = u64::MAX.div_ceil(1000);
        assert!(far.contains(&format!("; Max-Age={max_age}; ")), "{far}");
        assert!(
            far.contains("Expires=Fri, 31 Dec 9999 23:59:59 GMT"),
            "{far}"
        );
        let dirty = set_cookie(&settings(), "V\r\nX: y", 10_000, 0);
        assert!(dirty.to_str().unwrap().starts_with("lb_sticky=VX: y; "));
    }

    fn cookies(headers: &HeaderMap) -> Vec<&str> {
        headers
            .get_all(COOKIE)
            .iter()
            .map(|v| v.to_str().unwrap())
            .collect()
    }

    #[test]
    fn take_cookie_removes_the_pair_and_keeps_the_rest() {
        let mut headers = HeaderMap::new();
        headers.append(COOKIE, HeaderValue::from_static("a=1; lb_sticky=XYZ; b=2"));
        assert_eq!(
            take_cookie(&mut headers, "lb_sticky").as_deref(),
            Some("XYZ")
        );
        assert_eq!(cookies(&headers), ["a=1; b=2"]);
        assert_eq!(take_cookie(&mut headers, "lb_sticky"), None);
        assert_eq!(cookies(&headers), ["a=1; b=2"]);
    }

    #[test]
    fn take_cookie_leaves_longer_names_alone() {
        let mut headers = HeaderMap::new();
        headers.append(
            COOKIE,
            HeaderValue::from_static("lb_sticky2=keep;x_lb_sticky=k"),
        );
        assert_eq!(take_cookie(&mut headers, "lb_sticky"), None);
        assert_eq!(cookies(&headers), ["lb_sticky2=keep;x_lb_sticky=k"]);
        headers.append(
            COOKIE,
            HeaderValue::from_static("lb_sticky2=keep; lb_sticky=V"),
        );
        assert_eq!(take_cookie(&mut headers, "lb_sticky").as_deref(), Some("V"));
        assert_eq!(
            cookies(&headers),
            ["lb_sticky2=keep;x_lb_sticky=k", "lb_sticky2=keep"]
        );
    }

    #[test]
    fn take_cookie_handles_several_headers_duplicates_and_empties() {
        let mut headers = HeaderMap::new();
        headers.append(COOKIE, HeaderValue::from_static("a=1"));
        headers.append(COOKIE, HeaderValue::from_static("lb_sticky=FIRST"));
        headers.append(
            COOKIE,
            HeaderValue::from_static("b=2;  lb_sticky=\"SECOND\" ;c=3"),
        );
        headers.append(
            COOKIE,
            HeaderValue::from_static("lb_sticky=THIRD; lb_sticky=X"),
        );
        headers.append(COOKIE, HeaderValue::from_static("d=4"));
        let mut sensitive = HeaderValue::from_static("lb_sticky=Y; e=5");
        sensitive.set_sensitive(true);
        headers.append(COOKIE, sensitive);
        headers.append("x-other", HeaderValue::from_static("lb_sticky=untouched"));
        assert_eq!(
            take_cookie(&mut headers, "lb_sticky").as_deref(),
            Some("FIRST")
        );
        assert_eq!(cookies(&headers), ["a=1", "b=2; c=3", "d=4", "e=5"]);
        assert!(
            headers
                .get_all(COOKIE)
                .iter()
                .next_back()
                .unwrap()
                .is_sensitive()
        );
        assert_eq!(headers["x-other"], "lb_sticky=untouched");

        let mut quoted = HeaderMap::new();
        quoted.append(
            COOKIE,
            HeaderValue::from_static("b=2;  lb_sticky=\"Q\" ;c=3"),
        );
        assert_eq!(take_cookie(&mut quoted, "lb_sticky").as_deref(), Some("Q"));
        assert_eq!(cookies(&quoted), ["b=2; c=3"]);
    }

    #[test]
    fn take_cookie_survives_odd_headers() {
        let mut headers = HeaderMap::new();
        headers.append(
            COOKIE,
            HeaderValue::from_bytes(b"\xff\xfe=\x80; lb_sticky=V").unwrap(),
        );
        headers.append(
            COOKIE,
            HeaderValue::from_static(";;; =; lb_sticky; ==; lb_sticky="),
        );
        headers.append(COOKIE, HeaderValue::from_static(""));
        assert_eq!(take_cookie(&mut headers, "lb_sticky").as_deref(), Some("V"));
        let left: Vec<&[u8]> = headers
            .get_all(COOKIE)
            .iter()
            .map(|v| v.as_bytes())
            .collect();
        assert_eq!(left, [&b"\xff\xfe=\x80"[..], b"=; lb_sticky; ==", b""]);
        assert_eq!(take_cookie(&mut headers, ""), None);
        assert_eq!(take_cookie(&mut HeaderMap::new(), "lb_sticky"), None);
    }

    /// A directory of its own under the system's temporary one, removed when dropped.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new(test: &str) -> Self {
            let dir = std::env::temp_dir().join(format!("lb-sticky-{}-{test}", std::process::id()));
            std::fs::create_dir_all(&dir).unwrap();
            Self(dir)
        }

        fn write(&self, name: &str, content: &str, mode: u32) -> PathBuf {
            let path = self.0.join(name);
            std::fs::write(&path, content).unwrap();
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
            path
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            if let Err(error) = std::fs::remove_dir_all(&self.0) {
                eprintln!("cannot remove {}: {error}", self.0.display());
            }
        }
    }

    #[test]
    fn a_key_file_with_comments_loads_in_order() {
        let dir = TempDir::new("good");
        let a = "a1".repeat(32);
        let b = "B2".repeat(32);
        let path = dir.write(
            "keys",
            &format!("# sticky keys\n\n   {a}  \r\n# retired next week:\n{b}\n"),
            0o600,
        );
        let ring = KeyRing::load(&path).unwrap();
        assert_eq!(ring.len(), 2);
        assert!(!ring.is_empty());
        assert_eq!(format!("{ring:?}"), "KeyRing { keys: 2 }");
        let loaded = Sealer::new(Arc::new(ring), "web", "lb_sticky");
        let value = loaded.seal(&ticket()).unwrap();
        assert_eq!(
            sealer(&[KEY_A], "web", "lb_sticky").open(&value),
            Some(ticket())
        );
        let from_b = sealer(&[KEY_B], "web", "lb_sticky")
            .seal(&ticket())
            .unwrap();
        assert_eq!(loaded.open(&from_b), Some(ticket()));
        assert!(!format!("{loaded:?}").contains("a1a1"));
    }

    #[test]
    fn a_bad_key_line_is_named_but_not_shown() {
        let dir = TempDir::new("bad");
        let secret = format!("{}SECRETzz", "a".repeat(56));
        let path = dir.write(
            "keys",
            &format!("# one\n{}\n{secret}\n", "a".repeat(64)),
            0o600,
        );
        let error = KeyRing::load(&path).unwrap_err().to_string();
        assert!(error.contains("keys: line 3: not a key"), "{error}");
        assert!(
            !error.contains("SECRET") && !error.contains("aaaa"),
            "{error}"
        );
        let short = dir.write("short", &"a".repeat(62), 0o600);
        let error = KeyRing::load(&short).unwrap_err().to_string();
        assert!(error.contains("line 1: not a key"), "{error}");
    }

    #[test]
    fn an_empty_or_overfull_key_file_is_refused() {
        let dir = TempDir::new("empty");
        let empty = dir.write("empty", "# nothing yet\n\n", 0o600);
        let error = KeyRing::load(&empty).unwrap_err().to_string();
        assert!(error.contains("empty: no key"), "{error}");
        let full = dir.write("full", &format!("{}\n", "c".repeat(64)).repeat(17), 0o600);
        let error = KeyRing::load(&full).unwrap_err().to_string();
        assert!(
            error.contains("17 keys") && error.contains("at most 16"),
            "{error}"
        );
        assert!(matches!(KeyRing::from_keys(&[]), Err(StickyError::NoKeys)));
    }

    #[test]
    fn a_key_file_others_may_read_is_refused() {
        let dir = TempDir::new("mode");
        let path = dir.write("keys", &"a".repeat(64), 0o644);
        let error = KeyRing::load(&path).unwrap_err().to_string();
        assert!(
            error.contains("0644") && error.contains("chmod 600"),
            "{error}"
        );
    }

    #[test]
    fn generated_lines_load_and_differ() {
        let first = KeyRing::generate_line().unwrap();
        let second = KeyRing::generate_line().unwrap();
        assert_ne!(first, second);
        assert_eq!(first.len(), 64);
        assert!(parse_key(first.as_bytes()).is_some());
        let dir = TempDir::new("generated");
        let path = dir.write("keys", &format!("{first}\n{second}\n"), 0o600);
        assert_eq!(KeyRing::load(&path).unwrap().len(), 2);
    }
}
