//! Reading the files an L7 listener names: certificates, private keys, CA bundles and the
//! cookie key file. Each is opened once and checked on the open descriptor (what is read is
//! what was checked: no window for a swap between the check and the read):
//!
//! - every file: a regular file, of at most [`MAX_FILE`] bytes, that its group and others may
//!   not write (whoever may write a certificate or a CA bundle decides whom lb trusts);
//! - a private key: also owned by root or the daemon's user, and unreadable by its group and
//!   others;
//! - a key file of lb's own (the cookie keys): also not a symbolic link (`O_NOFOLLOW`: where a
//!   link points is decided by whoever may write the link's directory). TLS keys may be links,
//!   as certbot's `live/` directory makes them: their target is what is checked.
//!
//! Each refusal names the file and the command that fixes it; a file's content never reaches an
//! error message or a log.

use std::{
    fmt,
    io::Read as _,
    os::unix::fs::{MetadataExt as _, OpenOptionsExt as _},
    path::{Path, PathBuf},
};

/// The largest file read (a certificate chain or a CA bundle is a few hundred KiB at most).
pub const MAX_FILE: u64 = 16 << 20;

/// A file that cannot be used, and why.
#[derive(Debug, thiserror::Error)]
#[error("{}: {reason}", .path.display())]
pub struct FileError {
    pub path: PathBuf,
    pub reason: String,
}

impl FileError {
    pub fn new(path: &Path, reason: impl fmt::Display) -> Self {
        Self {
            path: path.to_owned(),
            reason: reason.to_string(),
        }
    }
}

/// What a file holds, for its checks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Holds {
    /// A certificate or a CA bundle.
    Public,
    /// A TLS private key (a symbolic link is followed).
    PrivateKey,
    /// A key file of lb's own (not followed if a symbolic link).
    OwnKeys,
}

/// The content of a public file (a certificate, a CA bundle).
pub fn read_public(path: &Path) -> Result<Vec<u8>, FileError> {
    read(path, Holds::Public)
}

/// The content of a TLS private key: refused unless only its owner (root or the daemon's user)
/// may read it.
pub fn read_private(path: &Path) -> Result<Vec<u8>, FileError> {
    read(path, Holds::PrivateKey)
}

/// The content of a key file of lb's own (the cookie keys): as [`read_private`], and never
/// through a symbolic link.
pub fn read_own_keys(path: &Path) -> Result<Vec<u8>, FileError> {
    read(path, Holds::OwnKeys)
}

fn read(path: &Path, holds: Holds) -> Result<Vec<u8>, FileError> {
    let mut options = std::fs::OpenOptions::new();
    // Non-blocking: a FIFO named by mistake is refused (not a regular file) instead of
    // blocking the open for ever; a regular file reads the same.
    let mut flags = libc::O_NONBLOCK | libc::O_NOCTTY;
    if holds == Holds::OwnKeys {
        flags |= libc::O_NOFOLLOW;
    }
    options.read(true).custom_flags(flags);
    let file = options.open(path).map_err(|e| {
        if e.raw_os_error() == Some(libc::ELOOP) {
            FileError::new(
                path,
                "is a symbolic link, which a key file may not be (whoever may write its \
                 directory decides where it points): name the file itself",
            )
        } else if e.kind() == std::io::ErrorKind::PermissionDenied {
            // SAFETY: geteuid has no preconditions and cannot fail.
            let me = unsafe { libc::geteuid() };
            FileError::new(
                path,
                format!(
                    "cannot read it: {e}: the daemon runs as uid {me}, without the capability \
                     to read others' files once started; make the file (and its directories) \
                     readable by that user (a key: `chown` it to that user, mode 0600)"
                ),
            )
        } else {
            FileError::new(path, format!("cannot read it: {e}"))
        }
    })?;
    let metadata = file
        .metadata()
        .map_err(|e| FileError::new(path, format!("cannot read it: {e}")))?;
    check(path, holds, &metadata)?;
    let mut content = Vec::new();
    file.take(MAX_FILE + 1)
        .read_to_end(&mut content)
        .map_err(|e| FileError::new(path, format!("cannot read it: {e}")))?;
    if content.len() as u64 > MAX_FILE {
        return Err(FileError::new(
            path,
            format!("is larger than {} MiB", MAX_FILE >> 20),
        ));
    }
    Ok(content)
}

/// The checks of the module documentation, on an open file's metadata.
fn check(path: &Path, holds: Holds, metadata: &std::fs::Metadata) -> Result<(), FileError> {
    if !metadata.is_file() {
        return Err(FileError::new(path, "is not a regular file"));
    }
    let mode = metadata.mode() & 0o7777;
    // A key's one fix covers both reading and writing: told first.
    if holds != Holds::Public && mode & 0o077 != 0 {
        return Err(FileError::new(
            path,
            format!(
                "holds a private key but its mode is {mode:04o}: its group or others may read \
                 it; run `chmod 600 {}`",
                path.display()
            ),
        ));
    }
    if mode & 0o022 != 0 {
        return Err(FileError::new(
            path,
            format!(
                "its mode is {mode:04o}: its group or others may write it (and so choose what \
                 lb trusts or serves); run `chmod go-w {}`",
                path.display()
            ),
        ));
    }
    if holds == Holds::Public {
        return Ok(());
    }
    // SAFETY: geteuid has no preconditions and cannot fail.
    let me = unsafe { libc::geteuid() };
    if metadata.uid() != 0 && metadata.uid() != me {
        return Err(FileError::new(
            path,
            format!(
                "holds a private key but is owned by uid {}: only root or the daemon's user \
                 (uid {me}) may own it; run `chown root {}`",
                metadata.uid(),
                path.display()
            ),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt as _;

    use super::*;

    /// A fresh directory for one test, removed on every exit path.
    struct Dir(PathBuf);

    impl Dir {
        fn new(name: &str) -> Self {
            let dir = std::env::temp_dir().join(format!("lb-files-{name}-{}", std::process::id()));
            std::fs::create_dir_all(&dir).unwrap();
            Self(dir)
        }

        fn file(&self, name: &str, content: &[u8], mode: u32) -> PathBuf {
            let path = self.0.join(name);
            std::fs::write(&path, content).unwrap();
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
            path
        }
    }

    impl Drop for Dir {
        fn drop(&mut self) {
            drop(std::fs::remove_dir_all(&self.0));
        }
    }

    #[test]
    fn a_key_others_may_read_is_refused_with_the_fix() {
        let dir = Dir::new("mode");
        let key = dir.file("k.pem", b"SECRET", 0o644);
        let error = read_private(&key).unwrap_err().to_string();
        assert!(
            error.contains("0644") && error.contains("chmod 600"),
            "{error}"
        );
        assert!(!error.contains("SECRET"));
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(read_private(&key).unwrap(), b"SECRET");
        let missing = read_public(&dir.0.join("missing.pem"))
            .unwrap_err()
            .to_string();
        assert!(missing.contains("missing.pem: cannot read it"), "{missing}");
    }

    #[test]
    fn a_certificate_others_may_write_is_refused_with_the_fix() {
        let dir = Dir::new("writable");
        let cert = dir.file("c.pem", b"CERT", 0o664);
        let error = read_public(&cert).unwrap_err().to_string();
        assert!(
            error.contains("0664") && error.contains("chmod go-w"),
            "{error}"
        );
        std::fs::set_permissions(&cert, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert_eq!(read_public(&cert).unwrap(), b"CERT");
        let error = read_public(&dir.0).unwrap_err().to_string();
        assert!(error.contains("not a regular file"), "{error}");
        // A key so open is told the one fix for both.
        let key = dir.file("k.pem", b"SECRET", 0o664);
        let error = read_private(&key).unwrap_err().to_string();
        assert!(
            error.contains("0664") && error.contains("chmod 600") && !error.contains("go-w"),
            "{error}"
        );
    }

    #[test]
    fn lbs_own_key_file_is_never_read_through_a_link_but_a_tls_key_may_be() {
        let dir = Dir::new("link");
        let keys = dir.file("keys", b"KEYS", 0o600);
        let link = dir.0.join("keys.link");
        std::os::unix::fs::symlink(&keys, &link).unwrap();
        let error = read_own_keys(&link).unwrap_err().to_string();
        assert!(error.contains("symbolic link"), "{error}");
        assert_eq!(read_own_keys(&keys).unwrap(), b"KEYS");
        // As certbot's live/ directory has them: the link's target is checked.
        assert_eq!(read_private(&link).unwrap(), b"KEYS");
    }
}
