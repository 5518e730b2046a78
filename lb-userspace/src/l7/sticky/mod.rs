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
//!
//! # Files
//!
//! - `ticket.rs`: the [`Ticket`] and [`SessionId`], and the [`Sealer`] that turns a ticket into
//!   a cookie value and back (AES-256-GCM, the format above).
//! - `keys.rs`: the [`KeyRing`] of a key file, and new key lines for `lb sticky-key`.
//! - `placement.rs`: a backend's stable [`BackendId`] and the weighted [`rendezvous`] that
//!   re-places a session when its backend fails.
//! - `cookie.rs`: the header surgery, [`set_cookie`] and [`take_cookie`].

mod cookie;
mod keys;
mod placement;
mod ticket;

pub use cookie::{set_cookie, take_cookie};
pub use keys::{KeyRing, MAX_KEYS};
pub use placement::{BackendId, backend_id, rendezvous};
pub use ticket::{Sealer, SessionId, Ticket, now_unix_ms};

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
