//! The command line refuses options that would do nothing, and finds the daemon's socket the
//! one documented way: `--socket`, else `LB_SOCKET`, else the `[control] socket` of
//! `--config`, else /run/lb/lb.sock.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a test panics with a message; helpers here are part of the tests"
)]

use std::process::Command;

/// Runs `lb args` with `env`; (success, stderr).
fn lb(args: &[&str], env: &[(&str, &str)]) -> (bool, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_lb"))
        .args(args)
        .env_remove("LB_SOCKET")
        .envs(env.iter().copied())
        .output()
        .unwrap();
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn options_that_do_nothing_are_refused_and_the_socket_comes_from_one_place() {
    let dir = std::env::temp_dir().join(format!("lb-cli-options-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("lb.toml");
    let socket = dir.join("lb.sock");
    std::fs::write(
        &config,
        format!("[control]\nsocket = \"{}\"\n", socket.display()),
    )
    .unwrap();
    let config = config.to_str().unwrap();
    let socket = socket.to_str().unwrap();

    let (ok, err) = lb(
        &["run", "--socket", "/tmp/elsewhere.sock", "--config", config],
        &[],
    );
    assert!(
        !ok && err.contains("does nothing here") && err.contains(socket),
        "{err}"
    );
    let (ok, err) = lb(&["run"], &[]);
    assert!(!ok && err.contains("lb run needs --config FILE"), "{err}");
    let (ok, err) = lb(&["decap", "status", "--iface", "lo", "--socket", "/x"], &[]);
    assert!(!ok && err.contains("do nothing for lb decap"), "{err}");
    let (ok, err) = lb(
        &["--config", config, "--socket", "/tmp/other.sock", "status"],
        &[],
    );
    assert!(!ok && err.contains("differ: give one"), "{err}");

    // The daemon's commands look where the configuration says (no daemon runs: the error
    // names the socket it tried).
    let (ok, err) = lb(&["--config", config, "status"], &[]);
    assert!(!ok && err.contains(socket), "{err}");
    let (ok, err) = lb(&["status"], &[("LB_SOCKET", "/tmp/from-env.sock")]);
    assert!(!ok && err.contains("/tmp/from-env.sock"), "{err}");
    let (ok, err) = lb(&["status"], &[]);
    assert!(!ok && err.contains("/run/lb/lb.sock"), "{err}");
    let (ok, err) = lb(&["check", "-c", config], &[]);
    assert!(ok, "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_configuration_others_may_write_is_refused_with_the_fix() {
    let dir = std::env::temp_dir().join(format!("lb-cli-writable-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("lb.toml");
    std::fs::write(&config, "[control]\nsocket = \"/run/lb/lb.sock\"\n").unwrap();
    let path = config.to_str().unwrap();
    std::fs::set_permissions(&config, std::os::unix::fs::PermissionsExt::from_mode(0o664)).unwrap();
    let (ok, err) = lb(&["check", "-c", path], &[]);
    let refused = !ok && err.contains("0664") && err.contains("chmod go-w");
    std::fs::set_permissions(&config, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
    let (accepted, again) = lb(&["check", "-c", path], &[]);
    std::fs::remove_dir_all(&dir).unwrap();
    assert!(refused, "{err}");
    assert!(accepted, "{again}");
}
