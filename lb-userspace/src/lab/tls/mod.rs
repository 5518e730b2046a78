//! Real TLS for the lab: a throw-away certificate authority, a line-echo TLS server and
//! blocking TLS clients, all on rustls with the ring provider (TLS 1.2 and 1.3).
//!
//! - `pki.rs`: [`Pki`], a CA made with rcgen. [`Pki::issue`] signs a leaf for DNS names and IP
//!   addresses, [`Pki::issue_expired`] one whose validity ended long ago; a second [`Pki`] is
//!   the "wrong CA". [`Pki::roots`] is the trust store a client needs. [`Issued`] is a leaf
//!   certificate, its chain and key, as DER and PEM; [`Issued::server_config`] builds what a
//!   server presents.
//! - `client_config.rs`: [`ClientTls`], the one builder of client configurations (what the
//!   client trusts, ALPN, versions, SNI, resumption); [`client_config`] is its common case.
//! - `server.rs`: [`TlsServer`], a backend in its own thread (inside a [`NetNs`] if given)
//!   running a tokio current-thread runtime. For every line a client sends it answers
//!   `"{identity} {line}\n"`, until the client closes. It records the peer address of every
//!   accepted connection and counts handshakes, so tests see which backend each client reached.
//! - `client.rs`: [`tls_exchange`] connects, handshakes, sends one line and reads one back;
//!   [`TlsClientConn`] does the same for long-lived connections that exchange a line now and
//!   then. The [`Exchange`] it returns names the server certificate's subjectAltNames, read by
//!   the crate's small DER reader (`l7::tls::der`).
//!
//! Data flow: [`Pki`] -> [`Issued`] -> [`TlsServer::start`] serves it; [`Pki::roots`] ->
//! [`client_config`] -> [`TlsClientConn`] verifies it.
//!
//! [`NetNs`]: super::NetNs

mod client;
mod client_config;
mod pki;
mod server;
#[cfg(test)]
mod test_support;

use std::io;
use std::net::SocketAddr;

pub use client::{Exchange, TlsClientConn, tls_exchange};
pub use client_config::{ClientTls, Versions, client_config};
pub use pki::{Issued, Pki};
pub use server::TlsServer;

use super::LabError;

/// Wraps a socket error as a [`LabError::Io`] about `what` and `addr`.
fn io_error(what: &'static str, addr: SocketAddr) -> impl Fn(io::Error) -> LabError + Copy {
    move |source| LabError::Io { what, addr, source }
}
