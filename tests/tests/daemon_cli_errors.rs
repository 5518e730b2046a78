//! The CLI's error paths end to end: every change the daemon refuses, an address clap rejects,
//! and any command once the daemon is gone. Each exits non-zero, says why on stderr, and leaves
//! the datapath's tables byte for byte as they were. No traffic is sent: the tables compared
//! are the ones only userspace writes.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a test panics with a message; helpers here are part of the tests"
)]

use lb::lab::passthrough::lab_config;
use lb_tests::{
    daemon_lab::{CliRun, DaemonLab},
    pinned::Tables,
};

/// Checks that a CLI run failed, printed nothing on stdout and said `why` on stderr.
fn assert_refused(run: &CliRun, why: &str) {
    assert!(!run.success, "lb {:?} succeeded: {}", run.args, run.stdout);
    assert!(
        run.stderr.contains(why),
        "lb {:?}: stderr does not say {why:?}: {}",
        run.args,
        run.stderr
    );
    assert!(
        run.stdout.is_empty(),
        "lb {:?} printed on stdout: {}",
        run.args,
        run.stdout
    );
}

/// Bad addresses, which clap refuses before the daemon is asked.
const REFUSED_BY_CLAP: &[(&[&str], &str)] = &[
    (
        &["backend", "add", "web4", "198.18.0.300"],
        "invalid value '198.18.0.300'",
    ),
    (
        &["backend", "remove", "web4", "backend-1"],
        "invalid value 'backend-1'",
    ),
    (
        &["simulate", "198.18.0.1", "198.18.100.1:443"],
        "invalid value '198.18.0.1'",
    ),
];

/// Checks that the daemon's tables are still `before`, after `lb args...` was refused.
fn assert_tables_unchanged(env: &DaemonLab, before: &Tables, args: &[&str]) {
    let after = Tables::read(env.daemon.pin_dir());
    let differences = before.differences(&after);
    assert!(
        differences.is_empty(),
        "lb {args:?} was refused but changed the maps:\n{}",
        differences.join("\n")
    );
}

#[test]
fn refused_changes_exit_non_zero_say_why_and_change_no_map() {
    let mut env = DaemonLab::start("lbtcli", 3, |paths| lab_config(paths, 3));
    let before = Tables::read(env.daemon.pin_dir());
    assert_eq!(
        before.vips_v4.len(),
        2,
        "the listener and its address marker"
    );
    assert_eq!(
        before.vips_v6.len(),
        2,
        "the listener and its address marker"
    );

    let refused_by_daemon: &[(&[&str], &str)] = &[
        (
            &["backend", "add", "nope", "198.18.0.13"],
            "no pool is named \"nope\"",
        ),
        (
            &["backend", "add", "web4", "198.18.0.10"],
            "198.18.0.10 is already in pool \"web4\"",
        ),
        (
            &["backend", "remove", "web4", "198.18.0.99"],
            "198.18.0.99 is not in pool \"web4\"",
        ),
        (
            &["backend", "set-weight", "web4", "198.18.0.99", "2"],
            "198.18.0.99 is not in pool \"web4\"",
        ),
        (
            &["backend", "add", "web4", "198.18.0.13", "--weight", "0"],
            "weight 0 is out of range",
        ),
        (
            &["backend", "add", "web4", "198.18.0.13", "--weight", "10001"],
            "weight 10001 is out of range",
        ),
        (
            &["backend", "set-weight", "web4", "198.18.0.10", "10001"],
            "weight 10001 is out of range",
        ),
        (
            &["backend", "add", "web4", "2001:db8::13"],
            "not of the listener's address family",
        ),
        (
            &["backend", "add", "web6", "198.18.0.13"],
            "not of the listener's address family",
        ),
        (
            &[
                "backend",
                "remove",
                "web4",
                "198.18.0.10:443",
                "--port",
                "80",
            ],
            "the backend's port is given twice, 443 and 80",
        ),
    ];
    for (args, why) in refused_by_daemon {
        let run = env.cli(args);
        assert_refused(&run, why);
        assert_eq!(run.code, Some(1), "lb {args:?}: {}", run.stderr);
        assert_tables_unchanged(&env, &before, args);
    }
    for (args, why) in REFUSED_BY_CLAP {
        let run = env.cli(args);
        assert_refused(&run, why);
        assert_eq!(
            run.code,
            Some(2),
            "lb {args:?}: a usage error: {}",
            run.stderr
        );
        assert_tables_unchanged(&env, &before, args);
    }
    // A second daemon on the same pins (another socket) is refused before it touches them.
    let first_config = std::fs::read_to_string(env.daemon.config_path()).unwrap();
    let first_socket = env.daemon.socket().display().to_string();
    let binary = lb::lab::daemon::lb_binary().unwrap();
    let second = lb::lab::daemon::DaemonProcess::start(&binary, &env.lab.lb, |paths| {
        first_config.replace(&first_socket, &paths.socket.display().to_string())
    });
    let Err(error) = second else {
        panic!("a second daemon started on the first one's pin directory");
    };
    let pins = env.daemon.pin_dir().display().to_string();
    assert!(
        error
            .to_string()
            .contains("another lb daemon uses the pin directory")
            && error.to_string().contains(&pins),
        "{error}"
    );
    assert_tables_unchanged(&env, &before, &["run", "(a second daemon)"]);

    // The daemon still answers, with the pool unchanged.
    let listed = env.cli_ok(&["backend", "list", "web4"]);
    assert_eq!(
        listed.lines().count(),
        4,
        "a header and 3 backends:\n{listed}"
    );

    env.stop_cleanly();
    for args in [
        &["listener", "list"][..],
        &["backend", "list"],
        &["backend", "add", "web4", "198.18.0.13"],
        &["stats"],
        &["simulate", "198.18.0.1:40000", "198.18.100.1:443"],
    ] {
        let run = env.cli(args);
        assert_refused(&run, "the lb daemon is not running");
        assert_refused(&run, "start it with `lb run --config FILE`");
    }
    // Clap refuses a bad address before it would find out that no daemon runs.
    for (args, why) in REFUSED_BY_CLAP {
        let run = env.cli(args);
        assert_refused(&run, why);
        assert!(!run.stderr.contains("daemon"), "{}", run.stderr);
    }
}
