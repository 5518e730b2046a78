//! Bridging's TLS towards the backends: [`backend_client_config`] verifies them against the CA
//! bundle (or, with `dangerously_skip_verification`, only checks the handshake signatures:
//! [`AcceptAnyCertificate`]) and may present a client certificate; [`backend_server_name`] is
//! the name verified and sent as SNI.

use std::{fmt, net::IpAddr, path::Path, sync::Arc};

use rustls::{
    ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
    client::{
        ResolvesClientCert,
        danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier},
    },
    crypto::{CryptoProvider, WebPkiSupportedAlgorithms},
    sign::CertifiedKey,
};
use rustls_pki_types::{CertificateDer, ServerName, UnixTime, pem::PemObject as _};

use super::{
    super::files::{self, FileError},
    ALPN_H2, ALPN_HTTP1, TLS12_AND_13,
    pair::load_pair,
};
use crate::config::l7::{BackendProtocol, BackendTls, BackendVerify};

/// Bridging: the client configuration towards the backends. TLS 1.2 and 1.3; the backends'
/// certificates verified against the CA bundle, or (`Skip`) not verified, the handshake
/// signatures still checked; the client certificate presented if configured; ALPN `h2` or
/// `http/1.1` as `protocol` says; session resumption with rustls's default in-memory store.
pub fn backend_client_config(
    tls: &BackendTls,
    protocol: BackendProtocol,
) -> Result<Arc<ClientConfig>, FileError> {
    let provider = super::provider();
    let builder = ClientConfig::builder_with_provider(Arc::clone(&provider))
        .with_protocol_versions(TLS12_AND_13)
        // Only if the provider lacked suites for both versions, which ring does not.
        .map_err(|e| FileError::new(Path::new("backend.tls"), format!("rustls refused: {e}")))?;
    let builder = match &tls.verify {
        BackendVerify::Ca(path) => builder.with_root_certificates(load_roots(path)?),
        BackendVerify::Skip => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AcceptAnyCertificate::new(&provider))),
    };
    let mut config = match &tls.client_cert {
        Some(files) => {
            let pair = load_pair(files, &provider)?;
            builder.with_client_cert_resolver(Arc::new(ClientCertificate(pair.key)))
        }
        None => builder.with_no_client_auth(),
    };
    let alpn = match protocol {
        BackendProtocol::Http2 => ALPN_H2,
        BackendProtocol::Http1 => ALPN_HTTP1,
    };
    config.alpn_protocols = vec![alpn.to_vec()];
    Ok(Arc::new(config))
}

/// The name to verify for a backend (and send as SNI): its own `server_name`, else the
/// listener's, else its IP address (which its certificate must then hold).
pub fn backend_server_name(
    backend: Option<&str>,
    listener: Option<&str>,
    address: IpAddr,
) -> ServerName<'static> {
    // The configuration has checked both names; one that did not parse would fall through.
    backend
        .into_iter()
        .chain(listener)
        .find_map(|name| ServerName::try_from(name.to_owned()).ok())
        .unwrap_or_else(|| ServerName::from(address))
}

/// A CA bundle as a trust store: at least one certificate, each usable as a CA. (The HTTPS
/// health checks' `ca_file` is read by this too.)
pub fn load_roots(path: &Path) -> Result<RootCertStore, FileError> {
    let pem = files::read_public(path)?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| FileError::new(path, format!("is not a PEM CA bundle: {e}")))?;
    if certs.is_empty() {
        return Err(FileError::new(
            path,
            "holds no PEM certificate (`-----BEGIN CERTIFICATE-----`); a CA bundle lists the \
             certificates of the CAs that signed the backends'",
        ));
    }
    let mut roots = RootCertStore::empty();
    for cert in certs {
        roots.add(cert).map_err(|e| {
            FileError::new(path, format!("a certificate is not usable as a CA: {e}"))
        })?;
    }
    Ok(roots)
}

/// `dangerously_skip_verification`: any certificate is accepted, but the handshake signatures
/// are still checked (the peer holds the key of the certificate it sent).
#[derive(Debug)]
pub(super) struct AcceptAnyCertificate {
    algorithms: WebPkiSupportedAlgorithms,
}

impl AcceptAnyCertificate {
    /// Checks signatures with `provider`'s algorithms.
    pub(super) fn new(provider: &CryptoProvider) -> Self {
        Self {
            algorithms: provider.signature_verification_algorithms,
        }
    }
}

impl ServerCertVerifier for AcceptAnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// The client certificate presented to every backend that asks for one.
struct ClientCertificate(Arc<CertifiedKey>);

impl ResolvesClientCert for ClientCertificate {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        Some(Arc::clone(&self.0))
    }

    fn has_certs(&self) -> bool {
        true
    }
}

impl fmt::Debug for ClientCertificate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientCertificate").finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt as _;

    use rustls::ServerConfig;

    use super::super::test_support::{
        Ca, ClientStream, ServerStream, TempDir, assert_refused, handshake,
    };
    use super::*;

    /// A bridging client towards `server` for `name`, with `tls`.
    async fn to_backend(
        tls: &BackendTls,
        server: Arc<ServerConfig>,
        name: &str,
    ) -> Result<(ClientStream, ServerStream), String> {
        let client = backend_client_config(tls, BackendProtocol::Http1).expect("client config");
        handshake(server, client, name).await
    }

    fn verify_with(ca: &Path) -> BackendTls {
        BackendTls {
            verify: BackendVerify::Ca(ca.to_owned()),
            server_name: None,
            client_cert: None,
        }
    }

    #[tokio::test]
    async fn backends_are_verified_against_the_ca_and_name() {
        let dir = TempDir::new("backend-verify");
        let (ca1, ca2) = (Ca::new("CA 1"), Ca::new("CA 2"));
        let ca1_file = dir.write("ca1.pem", ca1.pem().as_bytes());
        let ca2_file = dir.write("ca2.pem", ca2.pem().as_bytes());
        let backend = ca1.issue(&["backend.example"]).server();
        let ok = to_backend(
            &verify_with(&ca1_file),
            Arc::clone(&backend),
            "backend.example",
        )
        .await;
        assert!(ok.is_ok(), "{ok:?}");
        let wrong_ca = to_backend(
            &verify_with(&ca2_file),
            Arc::clone(&backend),
            "backend.example",
        )
        .await;
        assert_refused(&wrong_ca, "InvalidCertificate(UnknownIssuer)");
        let wrong_name = to_backend(
            &verify_with(&ca1_file),
            Arc::clone(&backend),
            "other.example",
        )
        .await;
        assert_refused(&wrong_name, "NotValidForName");
        let expired = ca1
            .issue_between(&["backend.example"], Some((2000, 2001)))
            .server();
        let expired = to_backend(&verify_with(&ca1_file), expired, "backend.example").await;
        assert_refused(&expired, "InvalidCertificate(Expired");
        let skip = BackendTls {
            verify: BackendVerify::Skip,
            server_name: None,
            client_cert: None,
        };
        let other = ca2.issue(&["elsewhere.example"]).server();
        let skipped = to_backend(&skip, other, "backend.example").await;
        assert!(skipped.is_ok(), "{skipped:?}");
    }

    #[tokio::test]
    async fn backend_alpn_follows_the_protocol() {
        let dir = TempDir::new("backend-alpn");
        let ca = Ca::new("CA");
        let tls = verify_with(&dir.write("ca.pem", ca.pem().as_bytes()));
        let backend = ca.issue(&["backend.example"]).server();
        for (protocol, expected) in [
            (BackendProtocol::Http2, ALPN_H2),
            (BackendProtocol::Http1, ALPN_HTTP1),
        ] {
            let client = backend_client_config(&tls, protocol).expect("client config");
            let streams = handshake(Arc::clone(&backend), client, "backend.example")
                .await
                .expect("handshake");
            assert_eq!(
                streams.1.get_ref().1.alpn_protocol(),
                Some(expected),
                "{protocol:?}"
            );
        }
    }

    #[tokio::test]
    async fn backend_sees_the_client_certificate() {
        let dir = TempDir::new("backend-client-cert");
        let ca = Ca::new("CA");
        let ca_file = dir.write("ca.pem", ca.pem().as_bytes());
        let backend = ca.issue(&["backend.example"]).server_with(Some(&ca));
        let without = to_backend(
            &verify_with(&ca_file),
            Arc::clone(&backend),
            "backend.example",
        )
        .await;
        assert_refused(&without, "NoCertificatesPresented");
        let client = ca.issue(&["balancer.example"]);
        let tls = BackendTls {
            client_cert: Some(client.write(&dir, "client")),
            ..verify_with(&ca_file)
        };
        let streams = to_backend(&tls, backend, "backend.example")
            .await
            .expect("handshake");
        let seen = streams
            .1
            .get_ref()
            .1
            .peer_certificates()
            .expect("a client certificate");
        assert_eq!(seen.first().map(AsRef::as_ref), Some(client.der.as_ref()));
    }

    #[test]
    fn backend_files_are_checked_naming_them() {
        let dir = TempDir::new("backend-files");
        let ca = Ca::new("CA");
        let leaf = ca.issue(&["balancer.example"]);
        let missing = dir.0.join("missing-ca.pem");
        let error = backend_client_config(&verify_with(&missing), BackendProtocol::Http1)
            .expect_err("missing CA")
            .to_string();
        assert!(
            error.starts_with(&format!("{}: cannot read it", missing.display())),
            "{error}"
        );
        let empty = dir.write("empty-ca.pem", b"");
        let error = backend_client_config(&verify_with(&empty), BackendProtocol::Http1)
            .expect_err("empty CA")
            .to_string();
        assert!(error.contains("holds no PEM certificate"), "{error}");
        let files = leaf.write(&dir, "client");
        std::fs::set_permissions(&files.key, std::fs::Permissions::from_mode(0o640))
            .expect("chmod");
        let tls = BackendTls {
            client_cert: Some(files.clone()),
            ..verify_with(&dir.write("ca.pem", ca.pem().as_bytes()))
        };
        let error = backend_client_config(&tls, BackendProtocol::Http1)
            .expect_err("open key")
            .to_string();
        assert!(
            error.starts_with(&format!("{}: ", files.key.display())) && error.contains("chmod 600"),
            "{error}"
        );
        assert!(!error.contains(&leaf.key_body()), "{error}");
    }

    #[test]
    fn backend_server_name_prefers_the_backend_then_the_listener_then_the_address() {
        let address: IpAddr = "192.0.2.10".parse().expect("address");
        let dns = |name: &str| ServerName::try_from(name.to_owned()).expect("name");
        assert_eq!(
            backend_server_name(Some("b.example"), Some("l.example"), address),
            dns("b.example")
        );
        assert_eq!(
            backend_server_name(None, Some("l.example"), address),
            dns("l.example")
        );
        assert_eq!(
            backend_server_name(None, None, address),
            ServerName::from(address)
        );
        assert_eq!(
            backend_server_name(Some("198.51.100.1"), None, address),
            dns("198.51.100.1")
        );
    }
}
