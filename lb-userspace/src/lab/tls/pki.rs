//! The lab's certificate authority and the rustls configurations built from it.
//!
//! [`Pki`] is a throw-away CA made with rcgen; [`Pki::issue`] and [`Pki::issue_expired`] sign
//! server-and-client-auth leaves for DNS names and IP addresses, returned as [`Issued`] (leaf,
//! chain and key, DER and PEM). [`Issued::server_config`] turns a leaf into what a server
//! presents ([`Issued::http_server_config`] with ALPN for HTTP), on the ring provider with TLS
//! 1.3 and 1.2; [`Pki::roots`] is what a client trusts (see `client_config.rs`).

use std::fmt;
use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose, date_time_ymd,
};
use rustls::{RootCertStore, ServerConfig};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

use super::{LabError, Versions};

/// A throw-away certificate authority.
pub struct Pki {
    name: String,
    issuer: CertifiedIssuer<'static, KeyPair>,
}

/// Whether a leaf is valid now or expired long ago.
#[derive(Clone, Copy)]
enum Validity {
    /// rcgen's default window, 1975 to 4096.
    Current,
    /// The year 2000 only.
    Expired,
}

impl Pki {
    /// A new CA whose certificate has common name `name`.
    pub fn new(name: &str) -> Result<Self, LabError> {
        let key = generate_key(name)?;
        let mut params = CertificateParams::default();
        params.distinguished_name = common_name(name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let issuer = CertifiedIssuer::self_signed(params, key)
            .map_err(|source| cert_error(&format!("CA certificate {name}"), source))?;
        Ok(Self {
            name: name.to_owned(),
            issuer,
        })
    }

    /// The CA's common name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The CA certificate, DER.
    pub fn ca_der(&self) -> CertificateDer<'static> {
        self.issuer.der().clone()
    }

    /// The CA certificate, PEM.
    pub fn ca_pem(&self) -> String {
        self.issuer.pem()
    }

    /// A trust store holding only this CA.
    pub fn roots(&self) -> Result<RootCertStore, LabError> {
        let mut roots = RootCertStore::empty();
        roots.add(self.ca_der()).map_err(LabError::TlsConfig)?;
        Ok(roots)
    }

    /// Issues a leaf for `names` (DNS names or IP addresses, detected), valid now.
    pub fn issue(&self, names: &[&str]) -> Result<Issued, LabError> {
        self.issue_for(names, Validity::Current)
    }

    /// Issues a leaf for `names` that expired in 2001.
    pub fn issue_expired(&self, names: &[&str]) -> Result<Issued, LabError> {
        self.issue_for(names, Validity::Expired)
    }

    /// Issues a server-and-client-auth leaf with the given validity.
    fn issue_for(&self, names: &[&str], validity: Validity) -> Result<Issued, LabError> {
        let Some(first) = names.first() else {
            return Err(LabError::InvalidName {
                name: String::new(),
                reason: "a certificate needs at least one DNS name or IP address",
            });
        };
        let what = format!("certificate for {names:?}");
        let owned: Vec<String> = names.iter().map(|name| (*name).to_owned()).collect();
        let mut params =
            CertificateParams::new(owned.clone()).map_err(|source| cert_error(&what, source))?;
        params.distinguished_name = common_name(first);
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.use_authority_key_identifier_extension = true;
        if let Validity::Expired = validity {
            params.not_before = date_time_ymd(2000, 1, 1);
            params.not_after = date_time_ymd(2001, 1, 1);
        }
        let key = generate_key(&what)?;
        let leaf = params
            .signed_by(&key, &self.issuer)
            .map_err(|source| cert_error(&what, source))?;
        Ok(Issued {
            names: owned,
            leaf_pem: leaf.pem(),
            leaf: leaf.der().clone(),
            ca_pem: self.ca_pem(),
            ca: self.ca_der(),
            key_pem: key.serialize_pem(),
            key_pkcs8: key.serialize_der(),
        })
    }
}

impl fmt::Debug for Pki {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pki")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

/// A leaf certificate signed by a [`Pki`], with its chain and private key.
#[derive(Clone)]
pub struct Issued {
    names: Vec<String>,
    leaf: CertificateDer<'static>,
    leaf_pem: String,
    ca: CertificateDer<'static>,
    ca_pem: String,
    key_pkcs8: Vec<u8>,
    key_pem: String,
}

impl Issued {
    /// The subject alternative names, as given to [`Pki::issue`].
    pub fn names(&self) -> &[String] {
        &self.names
    }

    /// The leaf certificate, DER.
    pub fn leaf_der(&self) -> &CertificateDer<'static> {
        &self.leaf
    }

    /// The chain a server presents: leaf, then CA.
    pub fn chain_der(&self) -> Vec<CertificateDer<'static>> {
        vec![self.leaf.clone(), self.ca.clone()]
    }

    /// The chain as PEM: leaf, then CA.
    pub fn chain_pem(&self) -> String {
        format!("{}{}", self.leaf_pem, self.ca_pem)
    }

    /// The private key, PKCS#8 DER.
    pub fn key_der(&self) -> PrivateKeyDer<'static> {
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.key_pkcs8.clone()))
    }

    /// The private key, PKCS#8 PEM.
    pub fn key_pem(&self) -> &str {
        &self.key_pem
    }

    /// A rustls server configuration presenting this certificate, no client auth.
    pub fn server_config(&self) -> Result<Arc<ServerConfig>, LabError> {
        Ok(Arc::new(self.rustls_server_config()?))
    }

    /// [`Issued::server_config`] offering `h2` then `http/1.1` by ALPN, as an HTTPS backend
    /// does.
    pub fn http_server_config(&self) -> Result<Arc<ServerConfig>, LabError> {
        let mut config = self.rustls_server_config()?;
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(Arc::new(config))
    }

    fn rustls_server_config(&self) -> Result<ServerConfig, LabError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(Versions::Both.list())
            .map_err(LabError::TlsConfig)?
            .with_no_client_auth()
            .with_single_cert(self.chain_der(), self.key_der())
            .map_err(LabError::TlsConfig)
    }
}

impl fmt::Debug for Issued {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Issued")
            .field("names", &self.names)
            .finish_non_exhaustive()
    }
}

/// A fresh ECDSA P-256 key.
fn generate_key(what: &str) -> Result<KeyPair, LabError> {
    KeyPair::generate().map_err(|source| cert_error(&format!("key for {what}"), source))
}

/// A distinguished name with only a common name.
fn common_name(name: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, name);
    dn
}

/// A [`LabError::Certificate`].
fn cert_error(what: &str, source: rcgen::Error) -> LabError {
    LabError::Certificate {
        what: what.to_owned(),
        source,
    }
}

#[cfg(test)]
mod tests {
    use super::super::client::san_names;
    use super::super::test_support::test_pki;

    #[test]
    fn issued_certificate_carries_its_names() {
        let pki = test_pki();
        let names = ["backend.lab", "198.18.0.10", "2001:db8::10"];
        let issued = pki.issue(&names).expect("issue");
        assert_eq!(san_names(issued.leaf_der()), names);
        assert_eq!(issued.names(), names);
        assert!(issued.chain_pem().matches("BEGIN CERTIFICATE").count() == 2);
        assert!(issued.key_pem().contains("BEGIN PRIVATE KEY"));
        assert!(pki.ca_pem().contains("BEGIN CERTIFICATE"));
        assert!(
            pki.issue(&[]).is_err(),
            "a certificate without names was issued"
        );
    }
}
