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
//! base64url without padding (103 characters) of 77 bytes:
//!
//! ```text
//! version (1 byte, = 2) || key id (4) || random (24) || AES-256-GCM(plaintext) || tag (16)
//! plaintext (32 bytes) = backend id (u64 BE) || session id (16 bytes) || expires (u64 BE, Unix ms)
//! cookie key           = HKDF-SHA256(salt "lb-sticky v2", ring key)
//!                          .expand("lb-sticky v2 cookie key" || random[..16], 32 bytes)
//! nonce (12 bytes)     = random[16..] || 0 0 0 0
//! associated data      = "lb-sticky" || version || key id
//!                          || len(listener) (u64 BE) || listener || len(cookie name) (u64 BE) || cookie name
//! key id               = HKDF-SHA256(salt "lb-sticky v2", ring key).expand("lb-sticky v2 key id", 4 bytes)
//! ```
//!
//! # Guarantees
//!
//! - Opaque: the value is ciphertext under a key and nonce of its own; it reveals no backend
//!   address or name, and two cookies for the same ticket differ.
//! - Unforgeable: without a key of the key file no value opens. A value sealed for another
//!   listener or another cookie name does not open either (both are in the associated data).
//! - Safe at any rate: each cookie is sealed under its own key, derived from 128 random bits
//!   (as XChaCha20 derives one from its nonce), with a 64-bit random nonce beside it; a ring
//!   key only keys HKDF-SHA256 for this format (and opens the first format's). A key and nonce repeat only if two cookies draw the same
//!   192 bits: after 2^48 cookies under one ring key (a million a second, fleet-wide, for
//!   nine years) the chance that any two did is below 2^-95, and AES-GCM's per-key limits
//!   never come near (each derived key seals one cookie). A random 96-bit nonce under one key,
//!   the first format, allowed 2^32 cookies per key (NIST SP 800-38D).
//! - One open: the cookie names its ring key by id, so opening is one derivation and one AEAD
//!   open whatever the ring holds; a ring refuses two keys with one id.
//! - Rotation: a key file ([`KeyRing::load`]) holds 1 to 16 keys; the first seals, all open.
//!   To rotate, put the new key first, keep the old one for the cookies' duration, then drop it.
//! - The first format (version 1, 82 characters: a random 96-bit nonce under the ring key
//!   itself, no key id) still opens, by trying each key, for one release; its users keep
//!   their backend and get the cookie back in the current format ([`Opened::is_legacy`]). The
//!   proxy takes one only if it expires within the listener's duration from now, so that the
//!   weaker format's cookies cannot be stretched by their re-issue.
//! - Agreement: balancers with the same key file and configuration make the same decision for
//!   the same cookie: [`backend_id`] hashes the backend's address, not its place in a list, and
//!   [`rendezvous`] is a fixed hash with integer arithmetic (no platform `ln`, no `DefaultHasher`).
//! - Whatever is not a cookie sealed by the ring for this listener and cookie name (tampered,
//!   truncated, extended, sealed under a foreign key, wrong version, not base64, non-ASCII) is no
//!   cookie: [`Sealer::open`] answers `None`, never an error and never a panic. Expiry is the
//!   caller's check ([`Ticket::is_live`]); so is re-issuing a live cookie past half its
//!   duration (`sliding`, the proxy's).
//!
//! # Files
//!
//! - `ticket.rs`: the [`Ticket`] and [`SessionId`].
//! - `seal.rs`: the [`Sealer`] that turns a ticket into a cookie value and back (the format
//!   above, and the first one, read only).
//! - `keys.rs`: the [`KeyRing`] of a key file (each key's HKDF key, id and first-format AES
//!   key), and new key lines for `lb sticky-key`.
//! - `placement.rs`: a backend's stable [`BackendId`] and the weighted [`rendezvous`] that
//!   re-places a session when its backend fails.
//! - `cookie.rs`: the header surgery, [`set_cookie`], [`set_cors_cookie`], [`take_cookie`] and
//!   [`take_cookies`] (every pair a predicate names: the rules' cookies).

mod cookie;
mod keys;
mod placement;
mod seal;
mod ticket;

pub use cookie::{set_cookie, set_cors_cookie, take_cookie, take_cookies};
pub use keys::{KeyRing, MAX_KEYS};
pub use placement::{BackendId, backend_id, rendezvous};
pub use seal::{LastOpened, Opened, Sealer};
pub use ticket::{SessionId, Ticket, now_unix_ms};

/// What stickiness cannot do without: keys, and randomness.
#[derive(Debug, thiserror::Error)]
pub enum StickyError {
    /// A ring without keys.
    #[error("no key: a key ring needs at least one (`lb sticky-key` prints one)")]
    NoKeys,
    /// More than [`MAX_KEYS`] keys.
    #[error("{count} keys: a key ring holds at most {MAX_KEYS}; remove the retired ones")]
    TooManyKeys { count: usize },
    /// Two keys with one id: the same key twice (or, once in 2^32 pairs, a clash).
    #[error(
        "keys {first} and {second} have the same id: the same key twice? remove one (if they \
         differ, replace one with a new key from `lb sticky-key`)"
    )]
    SameKeyId { first: usize, second: usize },
    /// No random bytes for a key or a nonce.
    #[error("the system's random number generator failed")]
    Random,
    /// ring's HKDF or AES-256-GCM refused a key or a plaintext (they do not, for these sizes).
    #[error("HKDF or AES-256-GCM refused the key or the data")]
    Crypto,
}
