//! The listener's rustls server configuration ([`server_config`]): protocol versions, ALPN,
//! session resumption (the listener's [`SessionTickets`]), and certificates from a
//! [`CertResolver`].

use std::sync::Arc;

use rustls::{ServerConfig, server::ServerSessionMemoryCache};

use super::{ALPN_H2, ALPN_HTTP1, CertResolver, SessionTickets, TLS12_AND_13, TLS13_ONLY};
use crate::config::l7::TlsVersion;

/// TLS 1.2 sessions a listener remembers for clients that resume by session ID rather than by
/// ticket (tickets, the usual way, need no server memory). A few hundred bytes each, so a couple
/// of MiB at most; rustls's default of 256 is too small for a listener with thousands of clients.
pub const SESSION_CACHE_ENTRIES: usize = 8192;

/// The listener's rustls server configuration: TLS 1.2 and 1.3 (1.3 only for `min_version =
/// 1.3`), the ring provider's suites, ALPN `h2` then `http/1.1`, certificates from `resolver`,
/// resumption by the tickets of `tickets` (the listener's, kept across reloads) and by a session
/// cache of [`SESSION_CACHE_ENTRIES`]; the server's suite order is not forced on clients. No
/// 0-RTT.
pub fn server_config(
    resolver: Arc<CertResolver>,
    min_version: TlsVersion,
    tickets: Arc<SessionTickets>,
) -> Result<Arc<ServerConfig>, rustls::Error> {
    let versions = match min_version {
        TlsVersion::Tls12 => TLS12_AND_13,
        TlsVersion::Tls13 => TLS13_ONLY,
    };
    let mut config = ServerConfig::builder_with_provider(super::provider())
        .with_protocol_versions(versions)?
        .with_no_client_auth()
        .with_cert_resolver(resolver);
    config.alpn_protocols = vec![ALPN_H2.to_vec(), ALPN_HTTP1.to_vec()];
    config.ticketer = tickets;
    config.session_storage = ServerSessionMemoryCache::new(SESSION_CACHE_ENTRIES);
    config.ignore_client_order = false;
    Ok(Arc::new(config))
}

#[cfg(test)]
mod tests {
    use super::super::{
        Certificates,
        test_support::{
            assert_refused, handshake, handshake_kind, inspecting_client, own_tickets, settings,
            three,
        },
    };
    use rustls::HandshakeKind;

    use super::*;
    use crate::l7::tls::{TicketKeys, TicketSource};

    #[tokio::test]
    async fn alpn_gives_h2_or_http1_as_offered() {
        let t = three("alpn");
        let certs = Certificates::load(&settings(t.files.clone(), false)).expect("load");
        let server = server_config(
            CertResolver::new(certs, false),
            TlsVersion::Tls12,
            own_tickets(),
        )
        .expect("config");
        for (offered, expected) in [
            (vec![ALPN_H2, ALPN_HTTP1], Some(ALPN_H2)),
            (vec![ALPN_H2], Some(ALPN_H2)),
            (vec![ALPN_HTTP1], Some(ALPN_HTTP1)),
            (vec![], None),
        ] {
            let client = inspecting_client(TLS12_AND_13, &offered, true);
            let streams = handshake(Arc::clone(&server), client, "a.example")
                .await
                .expect("handshake");
            assert_eq!(
                streams.0.get_ref().1.alpn_protocol(),
                expected,
                "offered {offered:?}"
            );
        }
    }

    #[tokio::test]
    async fn min_version_13_refuses_tls12_clients_and_12_accepts_them() {
        let t = three("versions");
        let load = || Certificates::load(&settings(t.files.clone(), false)).expect("load");
        let strict = server_config(
            CertResolver::new(load(), false),
            TlsVersion::Tls13,
            own_tickets(),
        )
        .expect("1.3");
        let default = server_config(
            CertResolver::new(load(), false),
            TlsVersion::Tls12,
            own_tickets(),
        )
        .expect("1.2");
        let tls12 = || inspecting_client(&[&rustls::version::TLS12], &[], true);
        let tls13 = || inspecting_client(&[&rustls::version::TLS13], &[], true);
        let refused = handshake(Arc::clone(&strict), tls12(), "a.example").await;
        assert_refused(&refused, "Tls12NotOfferedOrEnabled");
        let streams = handshake(Arc::clone(&strict), tls13(), "a.example")
            .await
            .expect("1.3 client");
        assert_eq!(
            streams.0.get_ref().1.protocol_version(),
            Some(rustls::ProtocolVersion::TLSv1_3)
        );
        let streams = handshake(default, tls12(), "a.example")
            .await
            .expect("1.2 client");
        assert_eq!(
            streams.0.get_ref().1.protocol_version(),
            Some(rustls::ProtocolVersion::TLSv1_2)
        );
    }

    /// A listener's tickets from a key file of `keys`.
    fn file_tickets(keys: &[[u8; 32]]) -> Arc<SessionTickets> {
        SessionTickets::new(TicketSource::File(
            TicketKeys::from_keys(keys).expect("keys"),
        ))
    }

    #[tokio::test]
    async fn a_session_resumes_on_any_configuration_with_the_same_ticket_keys() {
        let t = three("resume");
        let config = |tickets| {
            let certs = Certificates::load(&settings(t.files.clone(), false)).expect("load");
            server_config(CertResolver::new(certs, false), TlsVersion::Tls12, tickets)
                .expect("config")
        };
        let (a, b) = ([1; 32], [2; 32]);
        for versions in [TLS13_ONLY, &[&rustls::version::TLS12]] {
            // One client: its session store carries the tickets from one handshake to the next.
            let client = inspecting_client(versions, &[], true);
            let kind = |server| handshake_kind(server, Arc::clone(&client), "a.example");
            assert_eq!(kind(config(file_tickets(&[a]))).await, HandshakeKind::Full);
            // Another process, or another balancer, reading the same file.
            let other = config(file_tickets(&[a]));
            assert_eq!(kind(Arc::clone(&other)).await, HandshakeKind::Resumed);
            // After a rotation: a new key seals, the old one still opens.
            assert_eq!(
                kind(config(file_tickets(&[b, a]))).await,
                HandshakeKind::Resumed
            );
            assert_eq!(
                kind(config(file_tickets(&[b]))).await,
                HandshakeKind::Resumed
            );
            // A process's own keys open nothing another process sealed.
            assert_eq!(kind(config(own_tickets())).await, HandshakeKind::Full);
            assert_eq!(kind(config(own_tickets())).await, HandshakeKind::Full);
            assert_eq!(kind(config(file_tickets(&[a]))).await, HandshakeKind::Full);
        }
    }
}
