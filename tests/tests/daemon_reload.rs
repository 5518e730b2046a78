//! Reloading the configuration file while 100 long-lived TLS connections run through the
//! daemon: a backend added and weights changed, applied by `lb reload` and by SIGHUP, without
//! harming an established connection; a file with an unknown key, and one that changes a
//! setting only a restart can change (`ring_size`), refused with the reason, changing nothing:
//! not the backend list, not a byte of the pinned tables.
//!
//! The daemon's file is found the way an operator would: `lb status --json` names it.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a test panics with a message; helpers here are part of the tests"
)]

use std::{
    net::{IpAddr, SocketAddr},
    path::{Path, PathBuf},
    process::Command,
    thread,
    time::{Duration, Instant},
};

use lb::{
    control::Body,
    lab::passthrough::{VIP_V4, backend_v4, lab_config},
};
use lb_tests::{
    backend_state::{find, list_backends},
    clients::{assert_consistent, connect_parallel, count_per_backend},
    daemon_lab::{DaemonLab, TLS_PORT, with_datapath_setting},
    histories::{assert_unharmed, per_backend},
    long_lived::LongLived,
    pinned::Tables,
    pool_config::{line_of, with_backends, with_pool_setting},
};

/// How long SIGHUP may take to show (the signal, the controller, a poll of the CLI).
const SIGHUP_DEADLINE: Duration = Duration::from_secs(5);

fn vip() -> SocketAddr {
    SocketAddr::new(IpAddr::V4(VIP_V4), TLS_PORT)
}

fn address(i: usize) -> IpAddr {
    IpAddr::V4(backend_v4(i))
}

/// The configuration file the daemon runs with, from `lb status --json`.
fn config_path(env: &DaemonLab) -> PathBuf {
    let Body::Status(status) = env.cli_json(&["status"]) else {
        panic!("lb status answered something else");
    };
    let Some(config) = status.config.clone() else {
        panic!("lb status names no configuration file: {status:?}");
    };
    PathBuf::from(config)
}

fn write(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
}

/// The weight of each backend of `web4`, by address.
fn weights(env: &DaemonLab) -> Vec<(IpAddr, u32)> {
    list_backends(env, "web4")
        .iter()
        .map(|b| (b.address, b.weight))
        .collect()
}

/// Sends SIGHUP to the daemon running with `path` (found by `pgrep -f`).
fn sighup(path: &Path) {
    let pattern = format!("run --config {}", path.display());
    let out = Command::new("pgrep")
        .args(["-f", &pattern])
        .output()
        .expect("running pgrep");
    let pids = String::from_utf8_lossy(&out.stdout);
    let pids: Vec<&str> = pids.split_whitespace().collect();
    assert_eq!(
        pids.len(),
        1,
        "one daemon runs with {}: {pids:?}",
        path.display()
    );
    let status = Command::new("kill")
        .args(["-HUP", pids[0]])
        .status()
        .expect("running kill");
    assert!(status.success(), "kill -HUP {}: {status}", pids[0]);
}

/// Waits until the daemon's log contains `text`.
fn wait_for_log(env: &DaemonLab, text: &str) {
    let deadline = Instant::now() + SIGHUP_DEADLINE;
    while !env.daemon.log().contains(text) {
        assert!(
            Instant::now() < deadline,
            "the daemon did not log {text:?} within {SIGHUP_DEADLINE:?}:\n{}",
            env.daemon.log()
        );
        thread::sleep(Duration::from_millis(20));
    }
}

/// What a refused reload must leave as it was.
struct Snapshot {
    backends: Body,
    tables: Tables,
}

impl Snapshot {
    fn take(env: &DaemonLab) -> Self {
        Self {
            backends: env.cli_json(&["backend", "list"]),
            tables: Tables::read(env.daemon.pin_dir()),
        }
    }

    fn assert_unchanged(&self, env: &DaemonLab, after: &str) {
        let now = Self::take(env);
        assert_eq!(
            self.backends, now.backends,
            "{after} changed the backend list"
        );
        let differences = self.tables.differences(&now.tables);
        assert!(
            differences.is_empty(),
            "{after} changed the maps:\n{}",
            differences.join("\n")
        );
    }
}

#[test]
fn reloads_apply_valid_files_and_refuse_invalid_ones_without_harming_connections() {
    // Four backends in the lab, three in the pool: backend-3 is added by a reload.
    let mut env = DaemonLab::start("lbtreload", 4, |paths| lab_config(paths, 3));
    let path = config_path(&env);
    assert_eq!(path.file_name().and_then(|n| n.to_str()), Some("lb.toml"));
    let original = std::fs::read_to_string(&path).expect("reading the daemon's configuration");
    let long_lived = LongLived::start(&env.lab, vip(), 100, Duration::from_millis(100));
    thread::sleep(Duration::from_millis(500));

    // `lb reload`: backend-3 added, backend-0's weight doubled.
    let added = with_backends(
        &original,
        "web4",
        &[
            (address(0), 2),
            (address(1), 1),
            (address(2), 1),
            (address(3), 1),
        ],
    );
    write(&path, &added);
    let answer = env.cli_ok(&["reload"]);
    assert!(answer.contains("reloaded"), "{answer}");
    assert_eq!(
        weights(&env),
        [
            (address(0), 2),
            (address(1), 1),
            (address(2), 1),
            (address(3), 1)
        ]
    );
    let listed = list_backends(&env, "web4");
    let new = find(&listed, address(3)).expect("backend-3 listed");
    assert!(new.state == "healthy" && new.table_slots > 0, "{new:?}");

    // SIGHUP: backend-2's weight tripled.
    let reweighted = with_backends(
        &original,
        "web4",
        &[
            (address(0), 2),
            (address(1), 1),
            (address(2), 3),
            (address(3), 1),
        ],
    );
    write(&path, &reweighted);
    sighup(&path);
    wait_for_log(&env, "SIGHUP: configuration reloaded");
    assert_eq!(
        weights(&env),
        [
            (address(0), 2),
            (address(1), 1),
            (address(2), 3),
            (address(3), 1)
        ]
    );

    let served = connect_parallel(&env.lab, vip(), 200, 4);
    assert_consistent(&env.lab, &served);
    let counts = count_per_backend(&served);
    println!("new connections after the reloads: {counts:?}");
    assert!(
        counts.get("backend-3").copied().unwrap_or(0) > 0,
        "{counts:?}"
    );

    // An unknown key: refused with the file and line, nothing changed.
    let before = Snapshot::take(&env);
    let invalid = with_pool_setting(&reweighted, "web4", "bogus_key", "1");
    let line = line_of(&invalid, "bogus_key");
    write(&path, &invalid);
    let run = env.cli(&["reload"]);
    println!("lb reload (unknown key): {}", run.stderr.trim());
    assert!(!run.success && run.code == Some(1), "{run:?}");
    let at = format!("{}:{line}", path.display());
    for part in [at.as_str(), "bogus_key", "nothing changed"] {
        assert!(
            run.stderr.contains(part),
            "stderr does not say {part:?}: {run:?}"
        );
    }
    before.assert_unchanged(&env, "a refused reload");
    sighup(&path);
    wait_for_log(&env, "SIGHUP: the configuration was not reloaded");
    before.assert_unchanged(&env, "a refused SIGHUP");

    // A setting only a restart can change: refused, saying so.
    write(
        &path,
        &with_datapath_setting(&reweighted, "ring_size", "1009"),
    );
    let run = env.cli(&["reload"]);
    println!("lb reload (ring_size): {}", run.stderr.trim());
    assert!(!run.success && run.code == Some(1), "{run:?}");
    for part in ["datapath.ring_size", "restart"] {
        assert!(
            run.stderr.contains(part),
            "stderr does not say {part:?}: {run:?}"
        );
    }
    before.assert_unchanged(&env, "a reload changing ring_size");

    thread::sleep(Duration::from_millis(500));
    let histories = long_lived.finish();
    println!("long-lived connections: {:?}", per_backend(&histories));
    for h in &histories {
        assert_unharmed(h);
    }
    env.stop_cleanly();
}
