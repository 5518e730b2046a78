//! TLS for the L7 listeners, on rustls with the ring provider only (TLS 1.3 and 1.2).
//!
//! Towards the clients: [`Certificates::load`] reads a listener's certificate and key PEM
//! files, checks each pair (the key matches the certificate, the certificate is valid now) and
//! indexes the DNS names of the leaves; [`CertResolver`] picks one per handshake by SNI (exact
//! name, then a one-label wildcard, then the first certificate unless `strict_sni`) and takes new
//! certificates while it serves (`lb cert reload`); [`server_config`] is the listener's rustls
//! configuration around it.
//!
//! Towards the backends (bridging): [`backend_client_config`] verifies them against the CA
//! bundle (or, with `dangerously_skip_verification`, only checks the handshake signatures) and
//! may present a client certificate; [`backend_server_name`] is the name verified and sent.
//!
//! Data flow: `TlsSettings` -> [`Certificates::load`] -> [`CertResolver::new`] ->
//! [`server_config`] -> the listener's acceptor. On reload, [`Certificates::load`] ->
//! [`CertResolver::replace`]; a load that fails leaves the old certificates serving.
//!
//! A leaf's validity dates and subjectAltName dNSNames are read by the small DER reader at the
//! end of this file (the crate has no X.509 parser; rustls parses the whole certificate with
//! webpki when it checks that the key matches). Private keys go from their file to a rustls
//! signing key and appear in no `Debug` output, error or log.

use std::{
    collections::HashMap,
    fmt,
    net::IpAddr,
    path::{Path, PathBuf},
    sync::Arc,
    time::SystemTime,
};

use arc_swap::ArcSwap;
use rustls::{
    ClientConfig, DigitallySignedStruct, InconsistentKeys, RootCertStore, ServerConfig,
    SignatureScheme, SupportedProtocolVersion,
    client::{
        ResolvesClientCert,
        danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier},
    },
    crypto::{CryptoProvider, WebPkiSupportedAlgorithms},
    server::{ClientHello, ResolvesServerCert, ServerSessionMemoryCache},
    sign::CertifiedKey,
};
use rustls_pki_types::{
    CertificateDer, PrivateKeyDer, ServerName, UnixTime,
    pem::{self, PemObject as _},
};

use super::files::{self, FileError};
use crate::config::l7::{
    BackendProtocol, BackendTls, BackendVerify, CertFiles, TlsSettings, TlsVersion,
};

/// TLS 1.2 sessions a listener remembers for clients that resume by session ID rather than by
/// ticket (tickets, the usual way, need no server memory). A few hundred bytes each, so a couple
/// of MiB at most; rustls's default of 256 is too small for a listener with thousands of clients.
pub const SESSION_CACHE_ENTRIES: usize = 8192;

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

/// One listener's certificates, loaded and checked.
pub struct Certificates {
    /// In the order of the settings; the first is the default.
    entries: Vec<Entry>,
    /// Exact DNS names (lower case, no trailing dot) -> index in `entries`; first listed wins.
    exact: HashMap<String, usize>,
    /// `*.example.com` as `example.com` -> index in `entries`; first listed wins.
    wildcard: HashMap<String, usize>,
}

/// A certificate chain with its key, and the names its leaf is indexed under.
struct Entry {
    cert: PathBuf,
    names: Vec<String>,
    key: Arc<CertifiedKey>,
}

impl Certificates {
    /// Loads every cert/key pair of `settings`: the chain (PEM, leaf first), the key (PEM:
    /// PKCS#8, SEC1 or PKCS#1, only readable by its owner), which must match the leaf; the leaf
    /// must be valid now, and its subjectAltName DNS names (wildcards included) choose it by
    /// SNI. Any problem is an error naming the file; nothing is partially loaded.
    pub fn load(settings: &TlsSettings) -> Result<Self, FileError> {
        if settings.certificates.is_empty() {
            return Err(FileError::new(
                Path::new("tls.certificates"),
                "no certificate: a listener needs at least one",
            ));
        }
        let provider = provider();
        let entries = settings
            .certificates
            .iter()
            .enumerate()
            .map(|(index, files)| load_entry(files, index == 0, &provider))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self::index(entries))
    }

    /// The names served (for logs and `lb` output), default first.
    pub fn names(&self) -> Vec<String> {
        let mut names: Vec<String> = Vec::new();
        for name in self.entries.iter().flat_map(|entry| &entry.names) {
            if !names.contains(name) {
                names.push(name.clone());
            }
        }
        names
    }

    fn index(entries: Vec<Entry>) -> Self {
        let mut exact = HashMap::new();
        let mut wildcard = HashMap::new();
        for (index, entry) in entries.iter().enumerate() {
            for name in &entry.names {
                match name.strip_prefix("*.") {
                    Some(parent) if !parent.contains('*') => {
                        wildcard.entry(parent.to_owned()).or_insert(index);
                    }
                    // Partial wildcards (`a*.example.com`) are not honoured by clients either.
                    _ if name.contains('*') => {}
                    _ => {
                        exact.entry(name.clone()).or_insert(index);
                    }
                }
            }
        }
        Self {
            entries,
            exact,
            wildcard,
        }
    }

    /// The certificate for `sni`: exact name, else wildcard (one label), else the default
    /// unless `strict`.
    fn choose(&self, sni: Option<&str>, strict: bool) -> Option<Arc<CertifiedKey>> {
        let found = sni.and_then(|name| self.lookup(&normalize_name(name)));
        let index = match found {
            Some(index) => index,
            None if strict => return None,
            None => 0,
        };
        self.entries.get(index).map(|entry| Arc::clone(&entry.key))
    }

    fn lookup(&self, name: &str) -> Option<usize> {
        if let Some(index) = self.exact.get(name) {
            return Some(*index);
        }
        let (label, parent) = name.split_once('.')?;
        if label.is_empty() {
            return None;
        }
        self.wildcard.get(parent).copied()
    }
}

impl fmt::Debug for Certificates {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut list = f.debug_list();
        for entry in &self.entries {
            list.entry(&format_args!("{}: {:?}", entry.cert.display(), entry.names));
        }
        list.finish()
    }
}

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

/// The listener's rustls server configuration: TLS 1.2 and 1.3 (1.3 only for `min_version =
/// 1.3`), the ring provider's suites, ALPN `h2` then `http/1.1`, certificates from `resolver`,
/// resumption by tickets (keys rotated every 6 hours) and by a session cache of
/// [`SESSION_CACHE_ENTRIES`]; the server's suite order is not forced on clients. No 0-RTT.
pub fn server_config(
    resolver: Arc<CertResolver>,
    min_version: TlsVersion,
) -> Result<Arc<ServerConfig>, rustls::Error> {
    let versions = match min_version {
        TlsVersion::Tls12 => TLS12_AND_13,
        TlsVersion::Tls13 => TLS13_ONLY,
    };
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(versions)?
        .with_no_client_auth()
        .with_cert_resolver(resolver);
    config.alpn_protocols = vec![ALPN_H2.to_vec(), ALPN_HTTP1.to_vec()];
    config.ticketer = rustls::crypto::ring::Ticketer::new()?;
    config.session_storage = ServerSessionMemoryCache::new(SESSION_CACHE_ENTRIES);
    config.ignore_client_order = false;
    Ok(Arc::new(config))
}

/// Bridging: the client configuration towards the backends. TLS 1.2 and 1.3; the backends'
/// certificates verified against the CA bundle, or (`Skip`) not verified, the handshake
/// signatures still checked; the client certificate presented if configured; ALPN `h2` or
/// `http/1.1` as `protocol` says; session resumption with rustls's default in-memory store.
pub fn backend_client_config(
    tls: &BackendTls,
    protocol: BackendProtocol,
) -> Result<Arc<ClientConfig>, FileError> {
    let provider = provider();
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

/// A checked certificate/key pair.
struct Pair {
    key: Arc<CertifiedKey>,
    /// The leaf's DNS names, normalized.
    names: Vec<String>,
}

/// A listener's certificate: a pair, and a name unless it is the default.
fn load_entry(
    files: &CertFiles,
    is_default: bool,
    provider: &CryptoProvider,
) -> Result<Entry, FileError> {
    let pair = load_pair(files, provider)?;
    if !is_default && pair.names.is_empty() {
        return Err(FileError::new(
            &files.cert,
            "has no DNS name in its subjectAltName, so no SNI name can choose it; only the \
             first certificate (the default) may have none",
        ));
    }
    Ok(Entry {
        cert: files.cert.clone(),
        names: pair.names,
        key: pair.key,
    })
}

/// Reads and checks a certificate chain and its key.
fn load_pair(files: &CertFiles, provider: &CryptoProvider) -> Result<Pair, FileError> {
    let chain = read_chain(&files.cert)?;
    let not_x509 = || FileError::new(&files.cert, "its first certificate is not valid X.509 DER");
    let leaf = read_leaf(chain.first().ok_or_else(not_x509)?).ok_or_else(not_x509)?;
    check_validity(&leaf, &now_rfc3339()).map_err(|reason| FileError::new(&files.cert, reason))?;
    let key = provider
        .key_provider
        .load_private_key(read_key(&files.key)?)
        // rustls's reason is generic; left out all the same, as it concerns the key.
        .map_err(|_| {
            FileError::new(
                &files.key,
                "is not a usable private key: rustls takes RSA, ECDSA (P-256, P-384) and \
                 Ed25519 keys",
            )
        })?;
    let certified = CertifiedKey::new(chain, key);
    match certified.keys_match() {
        Ok(()) => {}
        Err(rustls::Error::InconsistentKeys(InconsistentKeys::KeyMismatch)) => {
            return Err(FileError::new(
                &files.key,
                format!(
                    "does not match the certificate in {}; give each certificate its own key",
                    files.cert.display()
                ),
            ));
        }
        Err(rustls::Error::InconsistentKeys(InconsistentKeys::Unknown)) => {
            return Err(FileError::new(
                &files.key,
                "cannot be checked against its certificate (its public key is unknown)",
            ));
        }
        Err(e) => {
            return Err(FileError::new(
                &files.cert,
                format!("its first certificate is not valid X.509: {e}"),
            ));
        }
    }
    Ok(Pair {
        key: Arc::new(certified),
        names: leaf.dns_names,
    })
}

/// The certificates of a PEM file, at least one.
fn read_chain(path: &Path) -> Result<Vec<CertificateDer<'static>>, FileError> {
    let pem = files::read_public(path)?;
    if pem.iter().all(u8::is_ascii_whitespace) {
        return Err(FileError::new(
            path,
            "is empty; it should hold the certificate chain as PEM, leaf first",
        ));
    }
    let chain = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| FileError::new(path, format!("is not a valid PEM file: {e}")))?;
    if chain.is_empty() {
        return Err(FileError::new(
            path,
            "holds no PEM certificate (`-----BEGIN CERTIFICATE-----`); it should hold the \
             certificate chain, leaf first",
        ));
    }
    Ok(chain)
}

/// The first private key of a PEM file only its owner may read. No error says anything of
/// its content.
fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, FileError> {
    let pem = files::read_private(path)?;
    PrivateKeyDer::from_pem_slice(&pem).map_err(|e| {
        let reason = match e {
            pem::Error::NoItemsFound => {
                "holds no PEM private key (`BEGIN PRIVATE KEY`, `BEGIN EC PRIVATE KEY` or \
                 `BEGIN RSA PRIVATE KEY`)"
            }
            _ => "holds a damaged PEM private key (a truncated or altered block)",
        };
        FileError::new(path, reason)
    })
}

/// A CA bundle as a trust store: at least one certificate, each usable as a CA.
fn load_roots(path: &Path) -> Result<RootCertStore, FileError> {
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

/// Refuses a leaf that is not valid at `now` (RFC 3339, as the leaf's dates), naming its dates.
fn check_validity(leaf: &LeafFacts, now: &str) -> Result<(), String> {
    let (from, until) = (&leaf.not_before, &leaf.not_after);
    if now < from.as_str() {
        return Err(format!(
            "is not valid yet: valid from {from} until {until}, and it is {now}; check the \
             clock, or use a certificate valid now"
        ));
    }
    if now > until.as_str() {
        return Err(format!(
            "has expired: valid from {from} until {until}, and it is {now}; renew it"
        ));
    }
    Ok(())
}

/// Now as `2001-02-03T04:05:06Z`, the form [`der_time`] gives certificate dates.
fn now_rfc3339() -> String {
    humantime::format_rfc3339_seconds(SystemTime::now()).to_string()
}

/// A DNS name as indexed and looked up: lower case, without a trailing dot.
fn normalize_name(name: &str) -> String {
    name.trim_end_matches('.').to_ascii_lowercase()
}

/// `dangerously_skip_verification`: any certificate is accepted, but the handshake signatures
/// are still checked (the peer holds the key of the certificate it sent).
#[derive(Debug)]
struct AcceptAnyCertificate {
    algorithms: WebPkiSupportedAlgorithms,
}

impl AcceptAnyCertificate {
    fn new(provider: &CryptoProvider) -> Self {
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

// A small DER reader: Certificate -> tbsCertificate -> validity and, through the extensions,
// subjectAltName -> dNSNames. Anything malformed gives `None`, never a panic.

const TAG_SEQUENCE: u8 = 0x30;
const TAG_OCTET_STRING: u8 = 0x04;
const TAG_UTC_TIME: u8 = 0x17;
const TAG_GENERALIZED_TIME: u8 = 0x18;
/// `[0]` version, `[3]` extensions of a tbsCertificate.
const TAG_VERSION: u8 = 0xa0;
const TAG_EXTENSIONS: u8 = 0xa3;
/// `[2]` dNSName of a GeneralName.
const TAG_DNS_NAME: u8 = 0x82;
/// The subjectAltName extension's OID, 2.5.29.17.
const SAN_OID: &[u8] = &[0x55, 0x1d, 0x11];

/// What the loader checks in a leaf: its validity (RFC 3339, UTC) and DNS names.
#[derive(Debug)]
struct LeafFacts {
    not_before: String,
    not_after: String,
    dns_names: Vec<String>,
}

fn read_leaf(cert: &[u8]) -> Option<LeafFacts> {
    let certificate = der_expect(cert, TAG_SEQUENCE)?;
    let tbs = der_expect(certificate, TAG_SEQUENCE)?;
    let mut fields = der_elements(tbs).skip_while(|(tag, _)| *tag == TAG_VERSION);
    // serialNumber, signature, issuer, then validity.
    let (tag, validity) = fields.nth(3)?;
    if tag != TAG_SEQUENCE {
        return None;
    }
    let mut times = der_elements(validity);
    let not_before = der_time(times.next()?)?;
    let not_after = der_time(times.next()?)?;
    let dns_names = match fields.find(|(tag, _)| *tag == TAG_EXTENSIONS) {
        Some((_, extensions)) => san_dns_names(extensions)?,
        None => Vec::new(),
    };
    Some(LeafFacts {
        not_before,
        not_after,
        dns_names,
    })
}

/// The dNSNames of the subjectAltName among `extensions` (the contents of `[3]`), normalized.
fn san_dns_names(extensions: &[u8]) -> Option<Vec<String>> {
    for (_, extension) in der_elements(der_expect(extensions, TAG_SEQUENCE)?) {
        let mut parts = der_elements(extension);
        if parts.next()?.1 != SAN_OID {
            continue;
        }
        // Past the optional `critical` BOOLEAN, the OCTET STRING holding GeneralNames.
        let (_, value) = parts.find(|(tag, _)| *tag == TAG_OCTET_STRING)?;
        let names = der_elements(der_expect(value, TAG_SEQUENCE)?)
            .filter(|(tag, _)| *tag == TAG_DNS_NAME)
            .filter_map(|(_, name)| std::str::from_utf8(name).ok())
            .map(normalize_name)
            .collect();
        return Some(names);
    }
    Some(Vec::new())
}

/// A UTCTime or GeneralizedTime (DER: seconds, `Z`) as `2001-02-03T04:05:06Z`.
fn der_time((tag, body): (u8, &[u8])) -> Option<String> {
    let digits = std::str::from_utf8(body).ok()?.strip_suffix('Z')?;
    if !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let full = match (tag, digits.len()) {
        // RFC 5280: two-digit years 50 to 99 are 19xx, 00 to 49 are 20xx.
        (TAG_UTC_TIME, 12) => {
            let century = if digits.get(..2)? >= "50" { "19" } else { "20" };
            format!("{century}{digits}")
        }
        (TAG_GENERALIZED_TIME, 14) => digits.to_owned(),
        _ => return None,
    };
    let part = |range: std::ops::Range<usize>| full.get(range);
    Some(format!(
        "{}-{}-{}T{}:{}:{}Z",
        part(0..4)?,
        part(4..6)?,
        part(6..8)?,
        part(8..10)?,
        part(10..12)?,
        part(12..14)?
    ))
}

/// The contents of the DER element at the start of `input` if it has `tag`.
fn der_expect(input: &[u8], tag: u8) -> Option<&[u8]> {
    let (found, contents, _) = der_next(input)?;
    (found == tag).then_some(contents)
}

/// Splits the first DER element off `input`: tag, contents, rest.
fn der_next(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let count = usize::from(first & 0x7f);
        if count == 0 || count > 4 {
            return None;
        }
        let (bytes, rest) = rest.split_at_checked(count)?;
        let len = bytes
            .iter()
            .fold(0usize, |len, &byte| (len << 8) | usize::from(byte));
        (len, rest)
    };
    let (contents, rest) = rest.split_at_checked(len)?;
    Some((tag, contents, rest))
}

/// The (tag, contents) of consecutive DER elements, stopping at the first malformed one.
fn der_elements(mut input: &[u8]) -> impl Iterator<Item = (u8, &[u8])> {
    std::iter::from_fn(move || {
        let (tag, contents, rest) = der_next(input)?;
        input = rest;
        Some((tag, contents))
    })
}

#[cfg(test)]
mod tests {
    use std::{
        io::Write as _, os::unix::fs::OpenOptionsExt as _, os::unix::fs::PermissionsExt as _,
    };

    use rcgen::{
        BasicConstraints, CertificateParams, CertifiedIssuer, DistinguishedName, DnType,
        ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose, date_time_ymd,
    };
    use rustls::server::WebPkiClientVerifier;
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _, DuplexStream};
    use tokio_rustls::{TlsAcceptor, TlsConnector};

    use super::*;

    type ClientStream = tokio_rustls::client::TlsStream<DuplexStream>;
    type ServerStream = tokio_rustls::server::TlsStream<DuplexStream>;

    /// A directory for one test's files, removed when the test ends (even by a panic).
    struct TempDir(PathBuf);

    impl TempDir {
        fn new(test: &str) -> Self {
            let dir = std::env::temp_dir().join(format!("lb-l7-tls-{}-{test}", std::process::id()));
            if dir.exists() {
                std::fs::remove_dir_all(&dir).expect("remove a stale temp dir");
            }
            std::fs::create_dir_all(&dir).expect("create the temp dir");
            Self(dir)
        }

        /// Writes `content` to `name`, mode 0600.
        fn write(&self, name: &str, content: &[u8]) -> PathBuf {
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
    struct Ca(CertifiedIssuer<'static, KeyPair>);

    /// A leaf certificate and its key, PEM and DER.
    struct Leaf {
        der: CertificateDer<'static>,
        chain_pem: String,
        key_pem: String,
    }

    impl Ca {
        fn new(name: &str) -> Self {
            let mut params = CertificateParams::default();
            params.distinguished_name = common_name(name);
            params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
            let key = KeyPair::generate().expect("CA key");
            Self(CertifiedIssuer::self_signed(params, key).expect("CA certificate"))
        }

        fn pem(&self) -> String {
            self.0.pem()
        }

        /// A leaf for `names`, valid now.
        fn issue(&self, names: &[&str]) -> Leaf {
            self.issue_between(names, None)
        }

        /// A leaf for `names`, valid between the given (year, month, day)s or now.
        fn issue_between(&self, names: &[&str], years: Option<(i32, i32)>) -> Leaf {
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
        fn write(&self, dir: &TempDir, stem: &str) -> CertFiles {
            CertFiles {
                cert: dir.write(&format!("{stem}.pem"), self.chain_pem.as_bytes()),
                key: dir.write(&format!("{stem}.key"), self.key_pem.as_bytes()),
            }
        }

        /// The base64 body of the key's PEM, which no message may contain.
        fn key_body(&self) -> String {
            self.key_pem
                .lines()
                .filter(|l| !l.starts_with("-----"))
                .collect()
        }

        /// A rustls server presenting this leaf, no client authentication.
        fn server(&self) -> Arc<ServerConfig> {
            self.server_with(None)
        }

        /// A rustls server presenting this leaf, requiring a client certificate from `client_ca`.
        fn server_with(&self, client_ca: Option<&Ca>) -> Arc<ServerConfig> {
            let chain = CertificateDer::pem_slice_iter(self.chain_pem.as_bytes())
                .collect::<Result<Vec<_>, _>>()
                .expect("chain");
            let key = PrivateKeyDer::from_pem_slice(self.key_pem.as_bytes()).expect("key");
            let builder = ServerConfig::builder_with_provider(provider())
                .with_protocol_versions(TLS12_AND_13)
                .expect("versions");
            let builder = match client_ca {
                Some(ca) => {
                    let mut roots = RootCertStore::empty();
                    roots.add(ca.0.der().clone()).expect("client CA");
                    let verifier =
                        WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
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

    fn settings(certificates: Vec<CertFiles>, strict_sni: bool) -> TlsSettings {
        TlsSettings {
            certificates,
            strict_sni,
            min_version: TlsVersion::Tls12,
        }
    }

    /// A client that accepts any certificate, so tests see which one the server chose. A fresh
    /// one per handshake: no session is resumed.
    fn inspecting_client(
        versions: &[&'static SupportedProtocolVersion],
        alpn: &[&[u8]],
        send_sni: bool,
    ) -> Arc<ClientConfig> {
        let provider = provider();
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
    async fn handshake(
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

    /// The leaf the server presented to the client of `streams`.
    fn presented(streams: &(ClientStream, ServerStream)) -> CertificateDer<'static> {
        let certs = streams
            .0
            .get_ref()
            .1
            .peer_certificates()
            .expect("peer certificates");
        certs.first().expect("a leaf").clone().into_owned()
    }

    /// Asserts that a handshake failed with an error mentioning `reason`.
    fn assert_refused<T>(result: &Result<T, String>, reason: &str) {
        match result {
            Ok(_) => panic!("the handshake succeeded; expected {reason}"),
            Err(error) => assert!(error.contains(reason), "expected {reason}: {error}"),
        }
    }

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

    /// Three certificates: a.example (the default), b.example and *.w.example.
    struct Three {
        _dir: TempDir,
        a: Leaf,
        b: Leaf,
        w: Leaf,
        files: Vec<CertFiles>,
    }

    fn three(test: &str) -> Three {
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

    #[tokio::test]
    async fn sni_chooses_each_certificate_and_falls_back_to_the_default() {
        let t = three("sni");
        let certs = Certificates::load(&settings(t.files.clone(), false)).expect("load");
        assert_eq!(certs.names(), ["a.example", "b.example", "*.w.example"]);
        let server =
            server_config(CertResolver::new(certs, false), TlsVersion::Tls12).expect("config");
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
        let server =
            server_config(CertResolver::new(certs, true), TlsVersion::Tls12).expect("config");
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

    #[test]
    fn names_match_without_case_or_trailing_dot() {
        let t = three("case");
        let certs = Certificates::load(&settings(t.files.clone(), false)).expect("load");
        let chosen = |sni: &str| {
            let key = certs.choose(Some(sni), true).expect("a certificate");
            key.end_entity_cert().expect("leaf").clone().into_owned()
        };
        assert_eq!(chosen("A.Example."), t.a.der);
        assert_eq!(chosen("B.EXAMPLE"), t.b.der);
        assert_eq!(chosen("Q.W.Example."), t.w.der);
        assert!(certs.choose(Some(".w.example"), true).is_none());
        assert!(certs.choose(None, true).is_none());
        let default = certs.choose(None, false).expect("the default");
        assert_eq!(
            default.end_entity_cert().expect("leaf").as_ref(),
            t.a.der.as_ref()
        );
    }

    #[tokio::test]
    async fn alpn_gives_h2_or_http1_as_offered() {
        let t = three("alpn");
        let certs = Certificates::load(&settings(t.files.clone(), false)).expect("load");
        let server =
            server_config(CertResolver::new(certs, false), TlsVersion::Tls12).expect("config");
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
        let strict =
            server_config(CertResolver::new(load(), false), TlsVersion::Tls13).expect("1.3");
        let default =
            server_config(CertResolver::new(load(), false), TlsVersion::Tls12).expect("1.2");
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

    #[tokio::test]
    async fn replace_serves_new_handshakes_and_keeps_established_connections() {
        let dir = TempDir::new("replace");
        let ca = Ca::new("test CA");
        let (old, new) = (ca.issue(&["site.example"]), ca.issue(&["site.example"]));
        let load = |leaf: &Leaf, stem| {
            Certificates::load(&settings(vec![leaf.write(&dir, stem)], false)).expect("load")
        };
        let resolver = CertResolver::new(load(&old, "old"), false);
        let server = server_config(Arc::clone(&resolver), TlsVersion::Tls12).expect("config");
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

    /// Loads `files` and returns the error, checking it names `file` and shows no key.
    fn load_error(files: Vec<CertFiles>, file: &Path, leaves: &[&Leaf]) -> String {
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

    #[test]
    fn a_key_others_may_read_is_refused_with_the_fix() {
        let dir = TempDir::new("key-mode");
        let leaf = Ca::new("test CA").issue(&["a.example"]);
        let files = leaf.write(&dir, "a");
        std::fs::set_permissions(&files.key, std::fs::Permissions::from_mode(0o644))
            .expect("chmod");
        let error = load_error(vec![files.clone()], &files.key, &[&leaf]);
        assert!(error.contains("chmod 600"), "{error}");
    }

    #[test]
    fn a_key_of_another_certificate_is_refused() {
        let dir = TempDir::new("key-mismatch");
        let ca = Ca::new("test CA");
        let (a, b) = (ca.issue(&["a.example"]), ca.issue(&["b.example"]));
        let files = CertFiles {
            cert: a.write(&dir, "a").cert,
            key: b.write(&dir, "b").key,
        };
        let error = load_error(vec![files.clone()], &files.key, &[&a, &b]);
        assert!(
            error.contains("does not match the certificate in"),
            "{error}"
        );
        assert!(error.contains(&files.cert.display().to_string()), "{error}");
    }

    #[test]
    fn a_bad_certificate_file_is_refused_naming_it() {
        let dir = TempDir::new("bad-cert");
        let leaf = Ca::new("test CA").issue(&["a.example"]);
        let good = leaf.write(&dir, "a");
        let with_cert = |name: &str, content: &[u8]| CertFiles {
            cert: dir.write(name, content),
            key: good.key.clone(),
        };
        let not_pem = with_cert("not-pem.pem", b"this is not a certificate\n");
        let error = load_error(vec![not_pem.clone()], &not_pem.cert, &[&leaf]);
        assert!(error.contains("holds no PEM certificate"), "{error}");
        let der = with_cert("der.pem", leaf.der.as_ref());
        let error = load_error(vec![der.clone()], &der.cert, &[&leaf]);
        assert!(error.contains("holds no PEM certificate"), "{error}");
        let empty = with_cert("empty.pem", b"");
        let error = load_error(vec![empty.clone()], &empty.cert, &[&leaf]);
        assert!(error.contains("is empty"), "{error}");
        let garbage = "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n";
        let garbage = with_cert("garbage.pem", garbage.as_bytes());
        let error = load_error(vec![garbage.clone()], &garbage.cert, &[&leaf]);
        assert!(error.contains("not valid X.509"), "{error}");
        let missing = CertFiles {
            cert: dir.0.join("missing.pem"),
            key: good.key.clone(),
        };
        let error = load_error(vec![missing.clone()], &missing.cert, &[&leaf]);
        assert!(error.contains("cannot read it"), "{error}");
        // One bad certificate among good ones: nothing is loaded.
        let error = load_error(vec![good, empty.clone()], &empty.cert, &[&leaf]);
        assert!(error.contains("is empty"), "{error}");
    }

    #[test]
    fn a_bad_key_file_is_refused_naming_it() {
        let dir = TempDir::new("bad-key");
        let leaf = Ca::new("test CA").issue(&["a.example"]);
        let good = leaf.write(&dir, "a");
        let with_key = |name: &str, content: &[u8]| CertFiles {
            cert: good.cert.clone(),
            key: dir.write(name, content),
        };
        let no_key = with_key("cert-as-key.key", leaf.chain_pem.as_bytes());
        let error = load_error(vec![no_key.clone()], &no_key.key, &[&leaf]);
        assert!(error.contains("holds no PEM private key"), "{error}");
        let truncated = &leaf.key_pem[..leaf.key_pem.len() - 30];
        let truncated = with_key("truncated.key", truncated.as_bytes());
        let error = load_error(vec![truncated.clone()], &truncated.key, &[&leaf]);
        assert!(error.contains("damaged PEM private key"), "{error}");
        let missing = CertFiles {
            cert: good.cert.clone(),
            key: dir.0.join("missing.key"),
        };
        let error = load_error(vec![missing.clone()], &missing.key, &[&leaf]);
        assert!(error.contains("cannot read it"), "{error}");
    }

    #[test]
    fn a_sec1_key_loads_like_a_pkcs8_one() {
        use base64::Engine as _;
        let dir = TempDir::new("sec1");
        let leaf = Ca::new("test CA").issue(&["a.example"]);
        let pkcs8 = PrivateKeyDer::from_pem_slice(leaf.key_pem.as_bytes()).expect("PKCS#8");
        // PrivateKeyInfo { version, algorithm, privateKey OCTET STRING { ECPrivateKey } }
        let info = der_expect(pkcs8.secret_der(), TAG_SEQUENCE).expect("PrivateKeyInfo");
        let (_, sec1) = der_elements(info)
            .find(|(tag, _)| *tag == TAG_OCTET_STRING)
            .expect("ECPrivateKey");
        let base64 = base64::engine::general_purpose::STANDARD.encode(sec1);
        let lines: Vec<&str> = base64
            .as_bytes()
            .chunks(64)
            .map(|line| std::str::from_utf8(line).expect("base64 is ASCII"))
            .collect();
        let pem = format!(
            "-----BEGIN EC PRIVATE KEY-----\n{}\n-----END EC PRIVATE KEY-----\n",
            lines.join("\n")
        );
        let files = CertFiles {
            cert: leaf.write(&dir, "a").cert,
            key: dir.write("sec1.key", pem.as_bytes()),
        };
        let certs = Certificates::load(&settings(vec![files], false)).expect("a SEC1 key");
        assert_eq!(certs.names(), ["a.example"]);
    }

    #[test]
    fn a_certificate_outside_its_validity_is_refused_with_its_dates() {
        let dir = TempDir::new("validity");
        let ca = Ca::new("test CA");
        let expired = ca.issue_between(&["old.example"], Some((2000, 2001)));
        let files = expired.write(&dir, "old");
        let error = load_error(vec![files.clone()], &files.cert, &[&expired]);
        assert!(error.contains("has expired"), "{error}");
        assert!(
            error.contains("2000-01-01T00:00:00Z") && error.contains("2001-01-01T00:00:00Z"),
            "{error}"
        );
        let future = ca.issue_between(&["new.example"], Some((2090, 2091)));
        let files = future.write(&dir, "new");
        let error = load_error(vec![files.clone()], &files.cert, &[&future]);
        assert!(error.contains("is not valid yet"), "{error}");
        assert!(error.contains("2090-01-01T00:00:00Z"), "{error}");
    }

    #[test]
    fn only_the_default_certificate_may_lack_a_dns_name() {
        let dir = TempDir::new("no-name");
        let ca = Ca::new("test CA");
        let (ip, a) = (ca.issue(&["192.0.2.1"]), ca.issue(&["a.example"]));
        let (ip_files, a_files) = (ip.write(&dir, "ip"), a.write(&dir, "a"));
        let certs = Certificates::load(&settings(vec![ip_files.clone(), a_files.clone()], false))
            .expect("an IP-only default");
        assert_eq!(certs.names(), ["a.example"]);
        let error = load_error(vec![a_files, ip_files.clone()], &ip_files.cert, &[&ip, &a]);
        assert!(error.contains("no DNS name"), "{error}");
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

    #[test]
    fn reads_validity_and_names_from_der() {
        let leaf = Ca::new("test CA").issue_between(
            &["Mixed.Example", "*.w.example", "192.0.2.7"],
            Some((1999, 2060)),
        );
        let facts = read_leaf(leaf.der.as_ref()).expect("facts");
        assert_eq!(facts.not_before, "1999-01-01T00:00:00Z");
        assert_eq!(facts.not_after, "2060-01-01T00:00:00Z");
        assert_eq!(facts.dns_names, ["mixed.example", "*.w.example"]);
        assert!(read_leaf(&leaf.der.as_ref()[..40]).is_none());
        assert!(read_leaf(b"").is_none());
        assert_eq!(
            der_time((TAG_UTC_TIME, b"491231235959Z")).as_deref(),
            Some("2049-12-31T23:59:59Z")
        );
        assert_eq!(
            der_time((TAG_UTC_TIME, b"500101000000Z")).as_deref(),
            Some("1950-01-01T00:00:00Z")
        );
        assert_eq!(der_time((TAG_UTC_TIME, b"5001010000Z")), None);
        assert_eq!(der_time((TAG_GENERALIZED_TIME, b"2049123123595Z")), None);
    }

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
