//! TLS for the L7 listeners, on rustls with the ring provider only (TLS 1.3 and 1.2).
//!
//! Towards the clients: [`Certificates::load`] reads a listener's certificate and key PEM
//! files, checks each pair (the key matches the certificate, the certificate is valid now) and
//! indexes the DNS names of the leaves; [`CertResolver`] picks one per handshake by SNI (exact
//! name, then a one-label wildcard, then the first certificate unless `strict_sni`) and takes new
//! certificates while it serves (`lb cert reload`); [`server_config`] is the listener's rustls
//! configuration around it. Session tickets are sealed by the listener's [`SessionTickets`]:
//! with the keys of its `ticket_key_file` ([`TicketKeys`]: a client resumes its session after a
//! reload, a restart, or on another balancer reading the same file), or with keys of the
//! process's own.
//!
//! Towards the backends (bridging): [`backend_client_config`] verifies them against the CA
//! bundle (or, with `dangerously_skip_verification`, only checks the handshake signatures) and
//! may present a client certificate; [`backend_server_name`] is the name verified and sent.
//!
//! Data flow: `TlsSettings` -> [`Certificates::load`] -> [`CertResolver::new`] ->
//! [`server_config`] -> the listener's acceptor. On reload, [`Certificates::load`] ->
//! [`CertResolver::replace`]; a load that fails leaves the old certificates serving. Likewise
//! [`TicketKeys::load`] -> [`SessionTickets::replace`].
//!
//! The modules:
//!
//! - `pair.rs`: one certificate chain and its key, read from PEM files and checked;
//! - `certificates.rs`: [`Certificates`], a listener's pairs indexed by DNS name;
//! - `resolver.rs`: [`CertResolver`], SNI resolution and `replace`;
//! - `server.rs`: [`server_config`] and [`SESSION_CACHE_ENTRIES`];
//! - `ticket_keys.rs`: [`TicketKeys`], the tickets' format and sealing under a key file's keys;
//! - `tickets.rs`: [`SessionTickets`], a listener's rustls ticketer, and its [`TicketSource`];
//! - `backend.rs`: [`backend_client_config`], its skip-verification verifier and
//!   [`backend_server_name`];
//! - `der.rs`: the small DER reader that gives a leaf's validity dates and subjectAltName (the
//!   crate has no X.509 parser; rustls parses the whole certificate with webpki when it checks
//!   that the key matches). The lab's TLS clients use it too.
//!
//! Private keys (and ticket keys) go from their file to a rustls signing key (or an HKDF key)
//! and appear in no `Debug` output, error or log.

mod backend;
mod certificates;
/// Public for the certificate fuzz target (`fuzz/fuzz_targets/certificate.rs`).
pub mod der;
mod pair;
mod resolver;
mod server;
/// Also the health probes' tests' certificates (without the lab, which the package lacks).
#[cfg(test)]
pub(crate) mod test_support;
mod ticket_keys;
mod tickets;

use std::sync::Arc;

use rustls::{SupportedProtocolVersion, crypto::CryptoProvider};

pub use backend::{backend_client_config, backend_server_name, load_roots};
pub use certificates::Certificates;
pub use resolver::CertResolver;
pub use server::{SESSION_CACHE_ENTRIES, server_config};
pub use ticket_keys::{CLOCK_SKEW, TICKET_LIFETIME, TicketKeys};
pub use tickets::{SessionTickets, TicketSource};

const ALPN_H2: &[u8] = b"h2";
const ALPN_HTTP1: &[u8] = b"http/1.1";
const TLS12_AND_13: &[&SupportedProtocolVersion] =
    &[&rustls::version::TLS13, &rustls::version::TLS12];
const TLS13_ONLY: &[&SupportedProtocolVersion] = &[&rustls::version::TLS13];

/// The ring provider with its default suites: TLS 1.3 AES-GCM and ChaCha20-Poly1305, TLS 1.2
/// ECDHE with the same AEADs; X25519, P-256 and P-384. Never the process default.
fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}
