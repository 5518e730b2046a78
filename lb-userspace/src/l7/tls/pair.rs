//! One certificate chain and its private key, read from PEM files and checked: [`load_pair`]
//! reads the chain (leaf first) and the key (PKCS#8, SEC1 or PKCS#1, only readable by its
//! owner), refuses a leaf that is not valid now and a key that does not match it, and gives a
//! rustls [`CertifiedKey`] with the leaf's DNS names ([`normalize_name`]d).
//!
//! The leaf's dates and names are read by the crate's small DER reader (`der.rs`). Every error
//! names the file at fault; none shows anything of a key.

use std::{path::Path, sync::Arc, time::SystemTime};

use rustls::{InconsistentKeys, crypto::CryptoProvider, sign::CertifiedKey};
use rustls_pki_types::{
    CertificateDer, PrivateKeyDer,
    pem::{self, PemObject as _},
};

use super::{
    super::files::{self, FileError},
    der::{self, SanName},
};
use crate::config::l7::CertFiles;

/// A checked certificate/key pair.
pub(super) struct Pair {
    pub(super) key: Arc<CertifiedKey>,
    /// The leaf's DNS names, normalized.
    pub(super) names: Vec<String>,
}

/// Reads and checks a certificate chain and its key.
pub(super) fn load_pair(files: &CertFiles, provider: &CryptoProvider) -> Result<Pair, FileError> {
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

/// A DNS name as indexed and looked up: lower case, without a trailing dot.
pub(super) fn normalize_name(name: &str) -> String {
    name.trim_end_matches('.').to_ascii_lowercase()
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

/// What the loader checks in a leaf: its validity (RFC 3339, UTC) and DNS names.
#[derive(Debug)]
struct LeafFacts {
    not_before: String,
    not_after: String,
    dns_names: Vec<String>,
}

/// The validity and normalized subjectAltName DNS names of a DER leaf; `None` if either
/// cannot be read.
fn read_leaf(cert: &[u8]) -> Option<LeafFacts> {
    let validity = der::read_validity(cert)?;
    let dns_names = der::read_san(cert)?
        .into_iter()
        .filter_map(|name| match name {
            SanName::Dns(name) => Some(normalize_name(name)),
            SanName::Ip(_) => None,
        })
        .collect();
    Some(LeafFacts {
        not_before: validity.not_before,
        not_after: validity.not_after,
        dns_names,
    })
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

/// Now as `2001-02-03T04:05:06Z`, the form the DER reader gives certificate dates.
fn now_rfc3339() -> String {
    humantime::format_rfc3339_seconds(SystemTime::now()).to_string()
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt as _;

    use super::super::{
        Certificates,
        der::{TAG_OCTET_STRING, TAG_SEQUENCE, der_elements, der_expect},
        test_support::{Ca, TempDir, load_error, settings},
    };
    use super::*;

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
    }
}
