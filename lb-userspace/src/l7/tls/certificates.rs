//! A listener's certificates: [`Certificates::load`] loads and checks every cert/key pair of
//! its settings (see `pair.rs`) and indexes the DNS names of the leaves, exact names and
//! one-label wildcards apart; [`Certificates::choose`] is the SNI lookup the resolver makes on
//! every handshake (exact name, then wildcard, then the first certificate unless strict).

use std::{
    collections::HashMap,
    fmt,
    path::{Path, PathBuf},
    sync::Arc,
};

use rustls::{crypto::CryptoProvider, sign::CertifiedKey};

use super::{
    super::files::FileError,
    pair::{load_pair, normalize_name},
};
use crate::config::l7::{CertFiles, TlsSettings};

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
        let provider = super::provider();
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
    pub(super) fn choose(&self, sni: Option<&str>, strict: bool) -> Option<Arc<CertifiedKey>> {
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

#[cfg(test)]
mod tests {
    use super::super::test_support::{Ca, TempDir, load_error, settings, three};
    use super::*;

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
}
