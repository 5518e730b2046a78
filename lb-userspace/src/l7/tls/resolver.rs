//! [`CertResolver`], the SNI resolver of a listener's rustls configuration: every handshake
//! reads the current [`Certificates`] (lock-free) and gets the one its SNI chooses;
//! [`CertResolver::replace`] swaps in new certificates while the listener serves
//! (`lb cert reload`), for new handshakes only.

use std::{fmt, sync::Arc};

use arc_swap::ArcSwap;
use rustls::{
    server::{ClientHello, ResolvesServerCert},
    sign::CertifiedKey,
};

use super::Certificates;

/// The SNI resolver a listener's rustls `ServerConfig` uses; its certificates can be replaced
/// while it serves (new handshakes get the new ones, established connections are untouched).
/// Reads are lock-free.
pub struct CertResolver {
    certificates: ArcSwap<Certificates>,
    strict_sni: bool,
}

impl CertResolver {
    /// A resolver serving `certs`; with `strict_sni`, a handshake without SNI or with a name no
    /// certificate has is refused instead of getting the first certificate.
    pub fn new(certs: Certificates, strict_sni: bool) -> Arc<Self> {
        Arc::new(Self {
            certificates: ArcSwap::from_pointee(certs),
            strict_sni,
        })
    }

    /// Serves `certs` from the next handshake on. Sessions resumed afterwards keep the identity
    /// they were established with, as TLS resumption does.
    pub fn replace(&self, certs: Certificates) {
        self.certificates.store(Arc::new(certs));
    }
}

impl ResolvesServerCert for CertResolver {
    fn resolve(&self, client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let sni = client_hello.server_name();
        let chosen = self.certificates.load().choose(sni, self.strict_sni);
        if chosen.is_none() {
            tracing::debug!(
                ?sni,
                "strict_sni: no certificate for this name, handshake refused"
            );
        }
        chosen
    }
}

impl fmt::Debug for CertResolver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CertResolver")
            .field("certificates", &*self.certificates.load())
            .field("strict_sni", &self.strict_sni)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use rustls::ServerConfig;
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    use super::super::{
        TLS12_AND_13, server_config,
        test_support::{
            Ca, Leaf, TempDir, assert_refused, handshake, inspecting_client, own_tickets,
            presented, settings, three,
        },
    };
    use super::*;
    use crate::config::l7::TlsVersion;

    /// Which of `leaves` a client with `sni` (None: no SNI sent) gets, or the handshake error.
    async fn served(
        server: &Arc<ServerConfig>,
        sni: Option<&str>,
        leaves: &[(&str, &Leaf)],
    ) -> Result<String, String> {
        let client = inspecting_client(TLS12_AND_13, &[], sni.is_some());
        let streams = handshake(Arc::clone(server), client, sni.unwrap_or("no-sni.test")).await?;
        let der = presented(&streams);
        Ok(leaves
            .iter()
            .find(|(_, leaf)| leaf.der == der)
            .map_or("an unknown certificate", |(name, _)| name)
            .to_owned())
    }

    #[tokio::test]
    async fn sni_chooses_each_certificate_and_falls_back_to_the_default() {
        let t = three("sni");
        let certs = Certificates::load(&settings(t.files.clone(), false)).expect("load");
        assert_eq!(certs.names(), ["a.example", "b.example", "*.w.example"]);
        let server = server_config(
            CertResolver::new(certs, false),
            TlsVersion::Tls12,
            own_tickets(),
        )
        .expect("config");
        let leaves = [("a", &t.a), ("b", &t.b), ("w", &t.w)];
        let cases = [
            (Some("a.example"), "a"),
            (Some("b.example"), "b"),
            (Some("x.w.example"), "w"),
            (Some("y.x.w.example"), "a"),
            (Some("w.example"), "a"),
            (Some("unknown.example"), "a"),
            (None, "a"),
        ];
        for (sni, expected) in cases {
            let got = served(&server, sni, &leaves).await;
            assert_eq!(got.as_deref(), Ok(expected), "SNI {sni:?}");
        }
    }

    #[tokio::test]
    async fn strict_sni_refuses_missing_and_unknown_names() {
        let t = three("strict");
        let certs = Certificates::load(&settings(t.files.clone(), true)).expect("load");
        let server = server_config(
            CertResolver::new(certs, true),
            TlsVersion::Tls12,
            own_tickets(),
        )
        .expect("config");
        let leaves = [("a", &t.a), ("b", &t.b), ("w", &t.w)];
        assert_eq!(
            served(&server, Some("b.example"), &leaves).await.as_deref(),
            Ok("b")
        );
        assert_eq!(
            served(&server, Some("z.w.example"), &leaves)
                .await
                .as_deref(),
            Ok("w")
        );
        for sni in [None, Some("unknown.example"), Some("y.x.w.example")] {
            let got = served(&server, sni, &leaves).await;
            assert_refused(&got, "no server certificate chain resolved");
        }
    }

    #[tokio::test]
    async fn replace_serves_new_handshakes_and_keeps_established_connections() {
        let dir = TempDir::new("replace");
        let ca = Ca::new("test CA");
        let (old, new) = (ca.issue(&["site.example"]), ca.issue(&["site.example"]));
        let load = |leaf: &Leaf, stem| {
            Certificates::load(&settings(vec![leaf.write(&dir, stem)], false)).expect("load")
        };
        let resolver = CertResolver::new(load(&old, "old"), false);
        let server =
            server_config(Arc::clone(&resolver), TlsVersion::Tls12, own_tickets()).expect("config");
        let client = || inspecting_client(TLS12_AND_13, &[], true);
        let mut established = handshake(Arc::clone(&server), client(), "site.example")
            .await
            .expect("before");
        assert_eq!(presented(&established), old.der);

        resolver.replace(load(&new, "new"));
        let after = handshake(Arc::clone(&server), client(), "site.example")
            .await
            .expect("after");
        assert_eq!(presented(&after), new.der);

        let (client_side, server_side) = &mut established;
        client_side.write_all(b"ping").await.expect("client writes");
        let mut buf = [0u8; 4];
        server_side
            .read_exact(&mut buf)
            .await
            .expect("server reads");
        assert_eq!(&buf, b"ping");
        server_side.write_all(b"pong").await.expect("server writes");
        client_side
            .read_exact(&mut buf)
            .await
            .expect("client reads");
        assert_eq!(&buf, b"pong");
    }

    #[test]
    fn debug_output_shows_names_not_keys() {
        let t = three("debug");
        let certs = Certificates::load(&settings(t.files.clone(), false)).expect("load");
        let resolver = CertResolver::new(certs, true);
        let debug = format!("{resolver:?}");
        assert!(
            debug.contains("a.example") && debug.contains("strict_sni: true"),
            "{debug}"
        );
        for leaf in [&t.a, &t.b, &t.w] {
            assert!(!debug.contains(&leaf.key_body()), "{debug}");
        }
    }
}
