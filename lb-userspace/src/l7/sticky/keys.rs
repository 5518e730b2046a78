//! The key file: [`KeyRing::load`] reads 1 to [`MAX_KEYS`] 256-bit keys (64 hex digits a line,
//! comments and blank lines skipped, the file private to its owner) into a ring whose first key
//! seals and all of which open; [`KeyRing::generate_line`] makes a new line for `lb sticky-key`.
//!
//! Each key is kept as what sealing needs of it ([`RingKey`]): its HKDF-SHA256 pseudo-random
//! key (cookies' keys are derived from it), its id (the first 4 bytes of an HKDF expansion,
//! which every balancer computes alike from the key), and the AES-256-GCM key of the first
//! cookie format, which still opens for one release. The [`Sealer`](super::Sealer) borrows the
//! ring.

use std::{fmt, path::Path};

use ring::{
    aead::{AES_256_GCM, LessSafeKey, UnboundKey},
    hkdf::{HKDF_SHA256, KeyType, Prk, Salt},
};

use super::StickyError;
pub use crate::l7::key_file::MAX_KEYS;
use crate::l7::{
    files::FileError,
    key_file::{self, KEY_LEN},
};

/// The length of a key's id in a cookie.
pub(super) const KEY_ID_LEN: usize = 4;
/// The HKDF-Extract salt of the ring's keys: the cookie format's name.
const SALT: &[u8] = b"lb-sticky v2";

/// One key of the ring, as sealing and opening use it.
pub(super) struct RingKey {
    /// The key's id in the cookies it seals.
    pub(super) id: [u8; KEY_ID_LEN],
    /// HKDF-Extract(salt "lb-sticky v2", key): each cookie's key is expanded from it.
    pub(super) prk: Prk,
    /// The key itself as AES-256-GCM, for cookies in the first format.
    pub(super) legacy: LessSafeKey,
}

/// The keys of a key file: the first seals, all open.
pub struct KeyRing {
    /// Never empty, at most [`MAX_KEYS`], ids distinct.
    keys: Vec<RingKey>,
}

impl fmt::Debug for KeyRing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyRing")
            .field("keys", &self.keys.len())
            .finish()
    }
}

impl KeyRing {
    /// Reads the key file ([`key_file::read_keys`]: 1 to [`MAX_KEYS`] keys of 64 hex digits, one
    /// a line, comments and blank lines skipped, no key twice; private to its owner, not a
    /// symbolic link). Errors name the file and the line number, never the line's content.
    pub fn load(path: &Path) -> Result<Self, FileError> {
        let keys = key_file::read_keys(path, "lb sticky-key")?;
        Self::from_keys(&keys).map_err(|e| FileError::new(path, e))
    }

    /// A ring of raw keys, the first sealing (tests, benches). [`StickyError::NoKeys`] if there
    /// is none, [`StickyError::TooManyKeys`] past [`MAX_KEYS`].
    pub fn from_keys(keys: &[[u8; KEY_LEN]]) -> Result<Self, StickyError> {
        if keys.is_empty() {
            return Err(StickyError::NoKeys);
        }
        if keys.len() > MAX_KEYS {
            return Err(StickyError::TooManyKeys { count: keys.len() });
        }
        let mut ring: Vec<RingKey> = Vec::with_capacity(keys.len());
        for (index, key) in keys.iter().enumerate() {
            let key = RingKey::new(key)?;
            if let Some(first) = ring.iter().position(|other| other.id == key.id) {
                return Err(StickyError::SameKeyId {
                    first: first + 1,
                    second: index + 1,
                });
            }
            ring.push(key);
        }
        Ok(Self { keys: ring })
    }

    /// The key that seals: the first (a ring is never empty).
    pub(super) fn sealing(&self) -> Result<&RingKey, StickyError> {
        self.keys.first().ok_or(StickyError::NoKeys)
    }

    /// The key with the id `id`, if the ring holds it.
    pub(super) fn by_id(&self, id: &[u8; KEY_ID_LEN]) -> Option<&RingKey> {
        self.keys.iter().find(|key| &key.id == id)
    }

    /// Every key, the sealing one first.
    pub(super) fn all(&self) -> impl Iterator<Item = &RingKey> {
        self.keys.iter()
    }

    /// A new random key as a key-file line (64 lowercase hex digits), for `lb sticky-key`.
    pub fn generate_line() -> Result<String, StickyError> {
        key_file::generate_line().ok_or(StickyError::Random)
    }

    /// How many keys the ring holds (at least 1).
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Always false: a ring holds at least one key.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }
}

impl RingKey {
    fn new(key: &[u8; KEY_LEN]) -> Result<Self, StickyError> {
        let prk = Salt::new(HKDF_SHA256, SALT).extract(key);
        let mut id = [0; KEY_ID_LEN];
        prk.expand(&[b"lb-sticky v2 key id"], IdLen)
            .and_then(|okm| okm.fill(&mut id))
            .map_err(|_| StickyError::Crypto)?;
        let legacy = UnboundKey::new(&AES_256_GCM, key)
            .map(LessSafeKey::new)
            .map_err(|_| StickyError::Crypto)?;
        Ok(Self { id, prk, legacy })
    }
}

/// The output length of a key id's HKDF expansion.
struct IdLen;

impl KeyType for IdLen {
    fn len(&self) -> usize {
        KEY_ID_LEN
    }
}

#[cfg(test)]
mod tests {
    use std::{os::unix::fs::PermissionsExt as _, path::PathBuf, sync::Arc};

    use super::*;
    use crate::l7::sticky::{
        Sealer,
        seal::tests::{KEY_A, KEY_B, sealer, ticket},
    };

    /// A directory of its own under the system's temporary one, removed when dropped.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new(test: &str) -> Self {
            let dir = std::env::temp_dir().join(format!("lb-sticky-{}-{test}", std::process::id()));
            std::fs::create_dir_all(&dir).unwrap();
            Self(dir)
        }

        fn write(&self, name: &str, content: &str, mode: u32) -> PathBuf {
            let path = self.0.join(name);
            std::fs::write(&path, content).unwrap();
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
            path
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            if let Err(error) = std::fs::remove_dir_all(&self.0) {
                eprintln!("cannot remove {}: {error}", self.0.display());
            }
        }
    }

    #[test]
    fn a_key_file_with_comments_loads_in_order() {
        let dir = TempDir::new("good");
        let a = "a1".repeat(32);
        let b = "B2".repeat(32);
        let path = dir.write(
            "keys",
            &format!("# sticky keys\n\n   {a}  \r\n# retired next week:\n{b}\n"),
            0o600,
        );
        let ring = KeyRing::load(&path).unwrap();
        assert_eq!(ring.len(), 2);
        assert!(!ring.is_empty());
        assert_eq!(format!("{ring:?}"), "KeyRing { keys: 2 }");
        let loaded = Sealer::new(Arc::new(ring), "web", "lb_sticky");
        let value = loaded.seal(&ticket()).unwrap();
        assert_eq!(
            sealer(&[KEY_A], "web", "lb_sticky").open(&value),
            Some(ticket())
        );
        let from_b = sealer(&[KEY_B], "web", "lb_sticky")
            .seal(&ticket())
            .unwrap();
        assert_eq!(loaded.open(&from_b), Some(ticket()));
        assert!(!format!("{loaded:?}").contains("a1a1"));
    }

    #[test]
    fn a_bad_key_line_is_named_but_not_shown() {
        let dir = TempDir::new("bad");
        let secret = format!("{}SECRETzz", "a".repeat(56));
        let path = dir.write(
            "keys",
            &format!("# one\n{}\n{secret}\n", "a".repeat(64)),
            0o600,
        );
        let error = KeyRing::load(&path).unwrap_err().to_string();
        assert!(error.contains("keys: line 3: not a key"), "{error}");
        assert!(
            !error.contains("SECRET") && !error.contains("aaaa"),
            "{error}"
        );
        let short = dir.write("short", &"a".repeat(62), 0o600);
        let error = KeyRing::load(&short).unwrap_err().to_string();
        assert!(error.contains("line 1: not a key"), "{error}");
    }

    #[test]
    fn an_empty_or_overfull_key_file_is_refused() {
        let dir = TempDir::new("empty");
        let empty = dir.write("empty", "# nothing yet\n\n", 0o600);
        let error = KeyRing::load(&empty).unwrap_err().to_string();
        assert!(error.contains("empty: no key"), "{error}");
        let full = dir.write("full", &format!("{}\n", "c".repeat(64)).repeat(17), 0o600);
        let error = KeyRing::load(&full).unwrap_err().to_string();
        assert!(
            error.contains("17 keys") && error.contains("at most 16"),
            "{error}"
        );
        assert!(matches!(KeyRing::from_keys(&[]), Err(StickyError::NoKeys)));
    }

    #[test]
    fn a_key_file_others_may_read_is_refused() {
        let dir = TempDir::new("mode");
        let path = dir.write("keys", &"a".repeat(64), 0o644);
        let error = KeyRing::load(&path).unwrap_err().to_string();
        assert!(
            error.contains("0644") && error.contains("chmod 600"),
            "{error}"
        );
    }

    #[test]
    fn generated_lines_load_and_differ() {
        let first = KeyRing::generate_line().unwrap();
        let second = KeyRing::generate_line().unwrap();
        assert_ne!(first, second);
        assert_eq!(first.len(), 64);
        let dir = TempDir::new("generated");
        let path = dir.write("keys", &format!("{first}\n{second}\n"), 0o600);
        assert_eq!(KeyRing::load(&path).unwrap().len(), 2);
    }
}
