//! A listener's session tickets: [`SessionTickets`] is the rustls ticketer of its
//! configuration, and seals and opens with what [`TicketSource`] says: the keys of the
//! listener's `ticket_key_file` ([`TicketKeys`], shared by every process and balancer that
//! reads the file), or keys of this process's own (rustls's ticketer: random keys rotated every
//! 6 hours, gone when the process stops).
//!
//! The listener keeps one [`SessionTickets`] for as long as it runs: a reload that rebuilds its
//! TLS configuration hands the new configuration the same one, and [`SessionTickets::replace`]
//! swaps the source in when the reload commits (a key file read again, or the file added or
//! removed). Handshakes in progress finish with the source they started with.

use std::{
    sync::Arc,
    time::{SystemTime, UNIX_EPOCH},
};

use arc_swap::ArcSwap;
use rustls::server::ProducesTickets;

use super::ticket_keys::{TICKET_LIFETIME, TicketKeys};

/// Where a listener's ticket keys come from.
#[derive(Debug)]
pub enum TicketSource {
    /// The listener's key file.
    File(TicketKeys),
    /// This process's own keys (no key file).
    Process(Arc<dyn ProducesTickets>),
}

impl TicketSource {
    /// New keys of this process's own: rustls's ticketer.
    pub fn process() -> Result<Self, rustls::Error> {
        Ok(Self::Process(rustls::crypto::ring::Ticketer::new()?))
    }

    pub fn is_file(&self) -> bool {
        matches!(self, Self::File(_))
    }
}

/// A listener's rustls ticketer, its source swapped in place on reload.
#[derive(Debug)]
pub struct SessionTickets {
    source: ArcSwap<TicketSource>,
}

impl SessionTickets {
    pub fn new(source: TicketSource) -> Arc<Self> {
        Arc::new(Self {
            source: ArcSwap::from_pointee(source),
        })
    }

    /// New tickets are sealed, and tickets opened, with `source` from now on.
    pub fn replace(&self, source: TicketSource) {
        self.source.store(Arc::new(source));
    }

    /// Whether the keys come from a key file.
    pub fn is_from_file(&self) -> bool {
        self.source.load().is_file()
    }
}

/// Now, in Unix seconds (0 for a clock set before 1970: every ticket then looks issued in the
/// future and does not open).
fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl ProducesTickets for SessionTickets {
    fn enabled(&self) -> bool {
        true
    }

    fn lifetime(&self) -> u32 {
        match &**self.source.load() {
            TicketSource::File(_) => TICKET_LIFETIME,
            TicketSource::Process(ticketer) => ticketer.lifetime(),
        }
    }

    fn encrypt(&self, plain: &[u8]) -> Option<Vec<u8>> {
        match &**self.source.load() {
            TicketSource::File(keys) => keys.seal(plain, unix_now()),
            TicketSource::Process(ticketer) => ticketer.encrypt(plain),
        }
    }

    fn decrypt(&self, cipher: &[u8]) -> Option<Vec<u8>> {
        match &**self.source.load() {
            TicketSource::File(keys) => keys.open(cipher, unix_now()),
            TicketSource::Process(ticketer) => ticketer.decrypt(cipher),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(key: u8) -> TicketSource {
        TicketSource::File(TicketKeys::from_keys(&[[key; 32]]).unwrap())
    }

    #[test]
    fn a_replaced_source_seals_and_opens_from_then_on() {
        let tickets = SessionTickets::new(TicketSource::process().unwrap());
        assert!(tickets.enabled() && !tickets.is_from_file());
        assert_eq!(tickets.lifetime(), TICKET_LIFETIME, "rustls's: 2 x 6 h");
        let own = tickets.encrypt(b"session").unwrap();
        assert_eq!(tickets.decrypt(&own).as_deref(), Some(&b"session"[..]));

        tickets.replace(file(1));
        assert!(tickets.is_from_file());
        assert_eq!(tickets.decrypt(&own), None, "the process's keys are gone");
        let sealed = tickets.encrypt(b"session").unwrap();
        assert_eq!(tickets.decrypt(&sealed).as_deref(), Some(&b"session"[..]));
        // Another process (or balancer) reading the same file opens it.
        let elsewhere = SessionTickets::new(file(1));
        assert_eq!(elsewhere.decrypt(&sealed).as_deref(), Some(&b"session"[..]));
        tickets.replace(file(2));
        assert_eq!(tickets.decrypt(&sealed), None);
    }
}
