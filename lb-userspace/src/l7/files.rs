//! Reading the files an L7 listener names: certificates, private keys, CA bundles and the
//! cookie key file. A private file (a key) that its group or others may read is refused, with
//! the command that fixes it; its content never reaches an error message or a log.

use std::{
    fmt,
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
};

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

/// The content of a public file (a certificate, a CA bundle).
pub fn read_public(path: &Path) -> Result<Vec<u8>, FileError> {
    std::fs::read(path).map_err(|e| FileError::new(path, format!("cannot read it: {e}")))
}

/// The content of a private file (a key): refused unless only its owner may read it.
pub fn read_private(path: &Path) -> Result<Vec<u8>, FileError> {
    check_private_mode(path)?;
    read_public(path)
}

/// Refuses a file that its group or others may read or write.
pub fn check_private_mode(path: &Path) -> Result<(), FileError> {
    let metadata = std::fs::metadata(path)
        .map_err(|e| FileError::new(path, format!("cannot read it: {e}")))?;
    let mode = metadata.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(FileError::new(
            path,
            format!(
                "holds a private key but its mode is {mode:04o}: its group or others may read it; \
                 run `chmod 600 {}`",
                path.display()
            ),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_others_may_read_is_refused_with_the_fix() {
        let dir = std::env::temp_dir().join(format!("lb-files-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let key = dir.join("k.pem");
        std::fs::write(&key, b"SECRET").unwrap();
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
        let error = read_private(&key).unwrap_err().to_string();
        assert!(
            error.contains("0644") && error.contains("chmod 600"),
            "{error}"
        );
        assert!(!error.contains("SECRET"));
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(read_private(&key).unwrap(), b"SECRET");
        let missing = read_public(&dir.join("missing.pem"))
            .unwrap_err()
            .to_string();
        assert!(missing.contains("missing.pem: cannot read it"), "{missing}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
