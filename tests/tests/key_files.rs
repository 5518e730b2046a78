//! A TLS private key owned by another user than root or the daemon's is refused, naming the
//! owner and the fix (runs as root: only root may give a file away).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a test panics with a message; helpers here are part of the tests"
)]

use std::os::unix::fs::PermissionsExt as _;

#[test]
fn a_key_owned_by_another_user_is_refused() {
    lb_tests::require_root();
    let dir = std::env::temp_dir().join(format!("lb-key-owner-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let key = dir.join("k.pem");
    std::fs::write(&key, b"SECRET").unwrap();
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    std::os::unix::fs::chown(&key, Some(65_534), None).unwrap();
    let error = lb::l7::files::read_private(&key)
        .map(|_| ())
        .unwrap_err()
        .to_string();
    drop(std::fs::remove_dir_all(&dir));
    assert!(
        error.contains("owned by uid 65534") && error.contains("chown root"),
        "{error}"
    );
}
