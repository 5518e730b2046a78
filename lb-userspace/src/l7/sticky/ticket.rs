//! The ticket a cookie carries: [`Ticket`] (backend, [`SessionId`], expiry) to and from its 32
//! plaintext bytes, which the [`Sealer`](super::Sealer) seals into the cookie's value.

use std::{
    sync::atomic::{AtomicU64, Ordering},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use ring::{
    digest::{SHA256, digest},
    rand::{SecureRandom as _, SystemRandom},
};

use super::BackendId;

/// backend id || session id || expiry.
pub(super) const PLAINTEXT_LEN: usize = 8 + 16 + 8;

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

    pub(super) fn to_bytes(self) -> [u8; PLAINTEXT_LEN] {
        let mut bytes = [0; PLAINTEXT_LEN];
        let (backend, rest) = bytes.split_at_mut(8);
        let (session, expires) = rest.split_at_mut(16);
        backend.copy_from_slice(&self.backend.to_be_bytes());
        session.copy_from_slice(&self.session.0);
        expires.copy_from_slice(&self.expires.to_be_bytes());
        bytes
    }

    pub(super) fn from_bytes(bytes: &[u8]) -> Option<Self> {
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

#[cfg(test)]
mod tests {
    use super::*;

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
