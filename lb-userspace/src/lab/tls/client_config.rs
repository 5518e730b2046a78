//! The one place the lab, its tests and the benchmarks build a rustls client configuration.
//!
//! [`ClientTls`] says what a client trusts and offers: the lab's roots for the name it connects
//! to ([`ClientTls::trusting`]), the same roots for a fixed name whatever SNI it sends
//! ([`ClientTls::verify_as`]), or nothing ([`ClientTls::unverified`], for a load generator that
//! measures the server); the ALPN protocols, the TLS versions ([`Versions`]), SNI and session
//! resumption. [`ClientTls::config`] builds it on the ring provider; [`client_config`] is the
//! common case (the roots, TLS 1.3 and 1.2, no ALPN).
//!
//! Data flow: [`Pki::roots`](super::Pki::roots) -> [`ClientTls`] -> options ->
//! [`ClientTls::config`] -> a `TlsConnector`.

use std::sync::Arc;

use rustls::{
    ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme, SupportedProtocolVersion,
    client::{
        Resumption, WebPkiServerVerifier,
        danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier},
    },
    crypto::CryptoProvider,
};
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};

use super::LabError;

/// The TLS versions a client offers.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Versions {
    /// TLS 1.3 and 1.2, as the lab's servers speak them.
    #[default]
    Both,
    Tls12Only,
    Tls13Only,
}

impl Versions {
    /// The versions, for a rustls builder.
    pub(super) fn list(self) -> &'static [&'static SupportedProtocolVersion] {
        const BOTH: &[&SupportedProtocolVersion] =
            &[&rustls::version::TLS13, &rustls::version::TLS12];
        const TLS12: &[&SupportedProtocolVersion] = &[&rustls::version::TLS12];
        const TLS13: &[&SupportedProtocolVersion] = &[&rustls::version::TLS13];
        match self {
            Self::Both => BOTH,
            Self::Tls12Only => TLS12,
            Self::Tls13Only => TLS13,
        }
    }
}

/// How a client checks the server's certificate.
#[derive(Clone, Debug)]
enum Verify {
    /// Chains to the roots and holds the name the client connects to.
    Roots(RootCertStore),
    /// Chains to the roots and holds this name, whatever the client connects to.
    RootsAs(RootCertStore, ServerName<'static>),
    /// Not at all.
    Nothing,
}

/// What a client trusts and offers; [`ClientTls::config`] builds the rustls configuration.
#[derive(Clone, Debug)]
pub struct ClientTls {
    verify: Verify,
    alpn: Vec<Vec<u8>>,
    versions: Versions,
    resumption: bool,
    sni: bool,
}

impl ClientTls {
    /// Verifies the server against `roots` for the name connected to; TLS 1.3 and 1.2, no
    /// ALPN, SNI sent, sessions resumed.
    pub fn trusting(roots: &RootCertStore) -> Self {
        Self::with(Verify::Roots(roots.clone()))
    }

    /// Accepts any certificate and handshake signature: for a load generator, whose own
    /// verification would cost more than the server's work it measures. Never for a test of
    /// what a server presents.
    pub fn unverified() -> Self {
        Self::with(Verify::Nothing)
    }

    fn with(verify: Verify) -> Self {
        Self {
            verify,
            alpn: Vec::new(),
            versions: Versions::Both,
            resumption: true,
            sni: true,
        }
    }

    /// Verifies the certificate for `name` whatever name the client connects to (and sends as
    /// SNI); the roots stay those given to [`ClientTls::trusting`].
    pub fn verify_as(mut self, name: &str) -> Result<Self, LabError> {
        let name = ServerName::try_from(name.to_owned()).map_err(|_| LabError::InvalidName {
            name: name.to_owned(),
            reason: "not a DNS name or an IP address",
        })?;
        self.verify = match self.verify {
            Verify::Roots(roots) | Verify::RootsAs(roots, _) => Verify::RootsAs(roots, name),
            Verify::Nothing => Verify::Nothing,
        };
        Ok(self)
    }

    /// Offers `protocols` by ALPN, in this order (none: no ALPN extension).
    pub fn alpn(mut self, protocols: &[&[u8]]) -> Self {
        self.alpn = protocols.iter().map(|p| p.to_vec()).collect();
        self
    }

    pub fn versions(mut self, versions: Versions) -> Self {
        self.versions = versions;
        self
    }

    /// Never resumes a session: every handshake is a full one and sees the certificate the
    /// server presents now.
    pub fn no_resumption(mut self) -> Self {
        self.resumption = false;
        self
    }

    /// Sends the server name as SNI (the default) or not.
    pub fn sni(mut self, sni: bool) -> Self {
        self.sni = sni;
        self
    }

    /// The rustls configuration, on the ring provider, without a client certificate.
    pub fn config(&self) -> Result<Arc<ClientConfig>, LabError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = ClientConfig::builder_with_provider(Arc::clone(&provider))
            .with_protocol_versions(self.versions.list())
            .map_err(LabError::TlsConfig)?;
        let mut config = match &self.verify {
            Verify::Roots(roots) => builder
                .with_root_certificates(roots.clone())
                .with_no_client_auth(),
            Verify::RootsAs(roots, name) => {
                let inner =
                    WebPkiServerVerifier::builder_with_provider(Arc::new(roots.clone()), provider)
                        .build()
                        .map_err(LabError::Verifier)?;
                let name = name.clone();
                builder
                    .dangerous()
                    .with_custom_certificate_verifier(Arc::new(VerifyAs { inner, name }))
                    .with_no_client_auth()
            }
            Verify::Nothing => builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(Unverified(provider)))
                .with_no_client_auth(),
        };
        config.alpn_protocols.clone_from(&self.alpn);
        config.enable_sni = self.sni;
        if !self.resumption {
            config.resumption = Resumption::disabled();
        }
        Ok(Arc::new(config))
    }
}

/// A configuration trusting `roots`, without client auth: [`ClientTls::trusting`] as it is.
pub fn client_config(roots: &RootCertStore) -> Result<Arc<ClientConfig>, LabError> {
    ClientTls::trusting(roots).config()
}

/// Verifies a server's certificate against the roots for a fixed name, whatever SNI was sent.
#[derive(Debug)]
struct VerifyAs {
    inner: Arc<WebPkiServerVerifier>,
    name: ServerName<'static>,
}

impl ServerCertVerifier for VerifyAs {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.inner
            .verify_server_cert(end_entity, intermediates, &self.name, ocsp_response, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// Accepts any certificate and handshake signature (see [`ClientTls::unverified`]).
#[derive(Debug)]
struct Unverified(Arc<CryptoProvider>);

impl ServerCertVerifier for Unverified {
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
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }

    fn verify_tls13_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
