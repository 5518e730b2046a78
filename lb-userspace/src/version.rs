//! What `lb --version` says: the version, the git commit the binary was built from, and a
//! digest of each eBPF object it embeds (the programs it loads), so that two binaries can be
//! told apart by what they run, not only by their number.

use std::fmt::Write as _;

use crate::objects;

/// `0.1.0`.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
/// The commit (12 hex digits; `-modified` if the tree differed from it, `unknown` outside git).
pub const COMMIT: &str = env!("LB_GIT_COMMIT");

/// The first 16 hex digits of the SHA-256 of `bytes`.
pub fn digest(bytes: &[u8]) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, bytes);
    digest.as_ref()[..8]
        .iter()
        .fold(String::with_capacity(16), |mut out, byte| {
            let _ = write!(out, "{byte:02x}");
            out
        })
}

/// The long version: version, commit, build profile, and the eBPF objects' digests.
pub fn long() -> String {
    let profile = if cfg!(debug_assertions) {
        "debug"
    } else {
        "release"
    };
    format!(
        "{VERSION}\ncommit {COMMIT} ({profile} build)\neBPF sha256: balancer {}, decap {}, aux {}",
        digest(objects::BALANCER),
        digest(objects::DECAP),
        digest(objects::AUX),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_long_version_names_the_commit_and_each_object() {
        let long = long();
        assert!(long.starts_with(VERSION), "{long}");
        assert!(long.contains(&format!("commit {COMMIT}")), "{long}");
        assert!(!COMMIT.is_empty());
        assert_eq!(digest(b"").len(), 16);
        // SHA-256 of nothing: e3b0c442 98fc1c14 ...
        assert_eq!(digest(b""), "e3b0c44298fc1c14");
        assert!(long.contains(&format!("balancer {}", digest(objects::BALANCER))));
    }
}
