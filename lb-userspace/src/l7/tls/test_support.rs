//! What the TLS unit tests (and the health probes' HTTPS tests) share: a temporary directory, a test CA issuing leaves (and rustls
//! servers presenting them), three certificates for SNI tests, an inspecting client that
//! accepts any certificate, and an in-memory handshake.

use std::{
    io::Write as _,
    os::unix::fs::OpenOptionsExt as _,
    path::{Path, PathBuf},
    sync::Arc,
};

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose, date_time_ymd,
};
use rustls::{
    ClientConfig, RootCertStore, ServerConfig, SupportedProtocolVersion,
    server::WebPkiClientVerifier,
};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName, pem::PemObject as _};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _, DuplexStream};
use tokio_rustls::{TlsAcceptor, TlsConnector};

use super::{
    ALPN_H2, ALPN_HTTP1, Certificates, SessionTickets, TLS12_AND_13, TicketSource,
    backend::AcceptAnyCertificate,
};
use crate::config::l7::{CertFiles, TlsSettings, TlsVersion};

pub(super) type ClientStream = tokio_rustls::client::TlsStream<DuplexStream>;
pub(super) type ServerStream = tokio_rustls::server::TlsStream<DuplexStream>;

/// A directory for one test's files, removed when the test ends (even by a panic).
pub(super) struct TempDir(pub(super) PathBuf);

impl TempDir {
    pub(super) fn new(test: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("lb-l7-tls-{}-{test}", std::process::id()));
        if dir.exists() {
            std::fs::remove_dir_all(&dir).expect("remove a stale temp dir");
        }
        std::fs::create_dir_all(&dir).expect("create the temp dir");
        Self(dir)
    }

    /// Writes `content` to `name`, mode 0600.
    pub(super) fn write(&self, name: &str, content: &[u8]) -> PathBuf {
        let path = self.0.join(name);
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&path)
            .expect("create a test file");
        file.write_all(content).expect("write a test file");
        path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if let Err(e) = std::fs::remove_dir_all(&self.0) {
            eprintln!("cannot remove {}: {e}", self.0.display());
        }
    }
}

/// A test certificate authority.
pub(crate) struct Ca(CertifiedIssuer<'static, KeyPair>);

/// A leaf certificate and its key, PEM and DER.
pub(crate) struct Leaf {
    pub(super) der: CertificateDer<'static>,
    pub(super) chain_pem: String,
    pub(super) key_pem: String,
}

impl Ca {
    pub(crate) fn new(name: &str) -> Self {
        let mut params = CertificateParams::default();
        params.distinguished_name = common_name(name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let key = KeyPair::generate().expect("CA key");
        Self(CertifiedIssuer::self_signed(params, key).expect("CA certificate"))
    }

    pub(super) fn pem(&self) -> String {
        self.0.pem()
    }

    /// A trust store holding only this CA.
    pub(crate) fn roots(&self) -> RootCertStore {
        let mut roots = RootCertStore::empty();
        roots.add(self.0.der().clone()).expect("the CA as a root");
        roots
    }

    /// A leaf for `names`, valid now.
    pub(crate) fn issue(&self, names: &[&str]) -> Leaf {
        self.issue_between(names, None)
    }

    /// A leaf for `names`, valid between the given (year, month, day)s or now.
    pub(crate) fn issue_between(&self, names: &[&str], years: Option<(i32, i32)>) -> Leaf {
        let owned: Vec<String> = names.iter().map(|n| (*n).to_owned()).collect();
        let mut params = CertificateParams::new(owned).expect("leaf parameters");
        params.distinguished_name = common_name(names.first().copied().unwrap_or("leaf"));
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        if let Some((from, until)) = years {
            params.not_before = date_time_ymd(from, 1, 1);
            params.not_after = date_time_ymd(until, 1, 1);
        }
        let key = KeyPair::generate().expect("leaf key");
        let cert = params.signed_by(&key, &self.0).expect("leaf certificate");
        Leaf {
            der: cert.der().clone(),
            chain_pem: format!("{}{}", cert.pem(), self.pem()),
            key_pem: key.serialize_pem(),
        }
    }
}

impl Leaf {
    /// Writes the chain and key as `{stem}.pem` and `{stem}.key`.
    pub(super) fn write(&self, dir: &TempDir, stem: &str) -> CertFiles {
        CertFiles {
            cert: dir.write(&format!("{stem}.pem"), self.chain_pem.as_bytes()),
            key: dir.write(&format!("{stem}.key"), self.key_pem.as_bytes()),
        }
    }

    /// The base64 body of the key's PEM, which no message may contain.
    pub(super) fn key_body(&self) -> String {
        self.key_pem
            .lines()
            .filter(|l| !l.starts_with("-----"))
            .collect()
    }

    /// A rustls server presenting this leaf, no client authentication.
    pub(crate) fn server(&self) -> Arc<ServerConfig> {
        self.server_with(None)
    }

    /// A rustls server presenting this leaf, requiring a client certificate from `client_ca`.
    pub(super) fn server_with(&self, client_ca: Option<&Ca>) -> Arc<ServerConfig> {
        let chain = CertificateDer::pem_slice_iter(self.chain_pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .expect("chain");
        let key = PrivateKeyDer::from_pem_slice(self.key_pem.as_bytes()).expect("key");
        let builder = ServerConfig::builder_with_provider(super::provider())
            .with_protocol_versions(TLS12_AND_13)
            .expect("versions");
        let builder = match client_ca {
            Some(ca) => {
                let verifier = WebPkiClientVerifier::builder_with_provider(
                    Arc::new(ca.roots()),
                    super::provider(),
                )
                .build()
                .expect("client verifier");
                builder.with_client_cert_verifier(verifier)
            }
            None => builder.with_no_client_auth(),
        };
        let mut config = builder.with_single_cert(chain, key).expect("server config");
        config.alpn_protocols = vec![ALPN_H2.to_vec(), ALPN_HTTP1.to_vec()];
        Arc::new(config)
    }
}

fn common_name(name: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, name);
    dn
}

pub(super) fn settings(certificates: Vec<CertFiles>, strict_sni: bool) -> TlsSettings {
    TlsSettings {
        certificates,
        strict_sni,
        min_version: TlsVersion::Tls12,
        ticket_key_file: None,
    }
}

/// Loads `files` and returns the error, checking it names `file` and shows no key.
pub(super) fn load_error(files: Vec<CertFiles>, file: &Path, leaves: &[&Leaf]) -> String {
    let error = Certificates::load(&settings(files, false))
        .expect_err("loaded")
        .to_string();
    assert!(
        error.starts_with(&format!("{}: ", file.display())),
        "{error}"
    );
    for leaf in leaves {
        assert!(!error.contains(&leaf.key_body()), "key material in {error}");
    }
    error
}

/// A client that accepts any certificate, so tests see which one the server chose. A fresh
/// one per handshake: no session is resumed.
pub(super) fn inspecting_client(
    versions: &[&'static SupportedProtocolVersion],
    alpn: &[&[u8]],
    send_sni: bool,
) -> Arc<ClientConfig> {
    let provider = super::provider();
    let mut config = ClientConfig::builder_with_provider(Arc::clone(&provider))
        .with_protocol_versions(versions)
        .expect("versions")
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AcceptAnyCertificate::new(&provider)))
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    config.enable_sni = send_sni;
    Arc::new(config)
}

/// A handshake between `client` and `server` over an in-memory pipe.
pub(super) async fn handshake(
    server: Arc<ServerConfig>,
    client: Arc<ClientConfig>,
    name: &str,
) -> Result<(ClientStream, ServerStream), String> {
    let (client_io, server_io) = tokio::io::duplex(64 * 1024);
    let name = ServerName::try_from(name.to_owned()).expect("server name");
    let (client, server) = tokio::join!(
        TlsConnector::from(client).connect(name, client_io),
        TlsAcceptor::from(server).accept(server_io),
    );
    match (client, server) {
        (Ok(client), Ok(server)) => Ok((client, server)),
        (client, server) => Err(format!(
            "client: {:?}; server: {:?}",
            client.err(),
            server.err()
        )),
    }
}

/// A handshake as [`handshake`] makes it, then a byte from the server to the client (which so
/// reads the TLS 1.3 tickets sent after the handshake, as a client reading a response does):
/// whether the client resumed a session.
pub(super) async fn handshake_kind(
    server: Arc<ServerConfig>,
    client: Arc<ClientConfig>,
    name: &str,
) -> rustls::HandshakeKind {
    let (mut client, mut server) = handshake(server, client, name).await.expect("handshake");
    server.write_all(b"x").await.expect("server write");
    server.flush().await.expect("server flush");
    let mut byte = [0];
    client.read_exact(&mut byte).await.expect("client read");
    client
        .get_ref()
        .1
        .handshake_kind()
        .expect("a handshake kind once the handshake is done")
}

/// Session tickets under keys of this process's own, as a listener without a key file has.
pub(super) fn own_tickets() -> Arc<SessionTickets> {
    SessionTickets::new(TicketSource::process().expect("rustls's ticketer"))
}

/// The leaf the server presented to the client of `streams`.
pub(super) fn presented(streams: &(ClientStream, ServerStream)) -> CertificateDer<'static> {
    let certs = streams
        .0
        .get_ref()
        .1
        .peer_certificates()
        .expect("peer certificates");
    certs.first().expect("a leaf").clone().into_owned()
}

/// Asserts that a handshake failed with an error mentioning `reason`.
pub(super) fn assert_refused<T>(result: &Result<T, String>, reason: &str) {
    match result {
        Ok(_) => panic!("the handshake succeeded; expected {reason}"),
        Err(error) => assert!(error.contains(reason), "expected {reason}: {error}"),
    }
}

/// Three certificates: a.example (the default), b.example and *.w.example.
pub(super) struct Three {
    _dir: TempDir,
    pub(super) a: Leaf,
    pub(super) b: Leaf,
    pub(super) w: Leaf,
    pub(super) files: Vec<CertFiles>,
}

pub(super) fn three(test: &str) -> Three {
    let dir = TempDir::new(test);
    let ca = Ca::new("test CA");
    let a = ca.issue(&["a.example"]);
    let b = ca.issue(&["b.example"]);
    let w = ca.issue(&["*.w.example"]);
    let files = vec![a.write(&dir, "a"), b.write(&dir, "b"), w.write(&dir, "w")];
    Three {
        _dir: dir,
        a,
        b,
        w,
        files,
    }
}
