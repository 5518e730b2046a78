//! A lab with a running daemon, for the end-to-end tests of `lb run` and its CLI.
//!
//! [`DaemonLab::start`] builds a [`PassthroughLab`] (TLS backends on port 443 of both VIPs) and
//! starts the real `lb` binary as a daemon ([`DaemonProcess`]) in its balancer namespace, with
//! the configuration the caller writes from the daemon's paths ([`lab_config`], or
//! [`weighted_config`] for weights). [`DaemonLab::cli`] runs the `lb` CLI against that daemon
//! and returns a [`CliRun`]; [`DaemonLab::cli_json`] parses a `--json` answer into the control
//! API's [`Body`]. [`DaemonLab::stop_cleanly`] stops the daemon with SIGTERM and checks that it
//! exited successfully and removed its pins and socket.
//!
//! Cleanup is by drop on every path: the daemon first (SIGTERM, then its files), then the lab's
//! servers and namespaces.

use std::{net::IpAddr, path::PathBuf, process::Output};

use lb::{
    control::Body,
    lab::{
        daemon::{DaemonPaths, DaemonProcess, Launch, lb_binary},
        passthrough::{PassthroughLab, backend_v4, backend_v6, lab_config},
    },
};

/// The TLS port of the lab's listeners.
pub const TLS_PORT: u16 = 443;

/// A lab and the daemon that balances it.
pub struct DaemonLab {
    /// Declared first so that it is dropped first: the daemon stops before its namespace goes.
    pub daemon: DaemonProcess,
    pub lab: PassthroughLab,
}

/// What one run of the CLI did.
#[derive(Debug)]
pub struct CliRun {
    pub args: Vec<String>,
    pub success: bool,
    /// The exit code: 1 for the CLI's own errors, 2 for clap's usage errors.
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl From<(&[&str], Output)> for CliRun {
    fn from((args, output): (&[&str], Output)) -> Self {
        Self {
            args: args.iter().map(|a| (*a).to_owned()).collect(),
            success: output.status.success(),
            code: output.status.code(),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        }
    }
}

impl DaemonLab {
    /// Builds a lab of `backends` backends named after `prefix` (letters, digits, `_`), starts
    /// TLS on every backend, and starts the daemon with the configuration `config` writes.
    pub fn start(
        prefix: &str,
        backends: usize,
        config: impl FnOnce(&DaemonPaths) -> String,
    ) -> Self {
        Self::start_prepared(prefix, backends, |_| (), config).0
    }

    /// Like [`DaemonLab::start`], with `prepare` run on the lab after TLS starts and before the
    /// daemon does (e.g. to start what health checks connect to); returns what it returned.
    pub fn start_prepared<P>(
        prefix: &str,
        backends: usize,
        prepare: impl FnOnce(&PassthroughLab) -> P,
        config: impl FnOnce(&DaemonPaths) -> String,
    ) -> (Self, P) {
        Self::start_with(
            prefix,
            backends,
            |lab| prepare(lab),
            |paths, _| config(paths),
        )
    }

    /// Like [`DaemonLab::start_prepared`], with `prepare` free to change the lab (start servers
    /// in it, add addresses) and `config` given what `prepare` returned (e.g. the paths of
    /// files it wrote).
    pub fn start_with<P>(
        prefix: &str,
        backends: usize,
        prepare: impl FnOnce(&mut PassthroughLab) -> P,
        config: impl FnOnce(&DaemonPaths, &P) -> String,
    ) -> (Self, P) {
        Self::start_launched(prefix, backends, Launch::default(), prepare, config)
    }

    /// [`DaemonLab::start_with`], the daemon started as `launch` says (e.g. as a user of its
    /// own with the capabilities of a systemd unit).
    pub fn start_launched<P>(
        prefix: &str,
        backends: usize,
        launch: Launch,
        prepare: impl FnOnce(&mut PassthroughLab) -> P,
        config: impl FnOnce(&DaemonPaths, &P) -> String,
    ) -> (Self, P) {
        crate::require_root();
        raise_fd_limit();
        let mut lab = PassthroughLab::build(prefix, backends).expect("building the lab");
        lab.start_tls(TLS_PORT).expect("starting the TLS backends");
        let prepared = prepare(&mut lab);
        let binary = match &launch.binary {
            Some(binary) => binary.clone(),
            None => lb_binary().expect("the lb binary"),
        };
        let daemon = DaemonProcess::start_launched(&binary, &lab.lb, launch, |paths| {
            config(paths, &prepared)
        })
        .expect("starting the daemon");
        (Self { daemon, lab }, prepared)
    }

    /// Runs `lb --socket SOCKET args...`.
    pub fn cli(&self, args: &[&str]) -> CliRun {
        let output = self.daemon.cli(args).expect("running the lb CLI");
        CliRun::from((args, output))
    }

    /// Runs the CLI and panics unless it succeeds; returns its stdout.
    pub fn cli_ok(&self, args: &[&str]) -> String {
        let run = self.cli(args);
        assert!(
            run.success,
            "lb {:?} failed: {}\ndaemon log:\n{}",
            run.args,
            run.stderr,
            self.daemon.log()
        );
        run.stdout
    }

    /// Runs the CLI with `--json` and parses its answer.
    pub fn cli_json(&self, args: &[&str]) -> Body {
        let mut with_json = vec!["--json"];
        with_json.extend_from_slice(args);
        let stdout = self.cli_ok(&with_json);
        serde_json::from_str(&stdout)
            .unwrap_or_else(|e| panic!("lb {args:?} --json printed something else ({e}): {stdout}"))
    }

    /// Stops the daemon with SIGTERM and checks that it exited successfully and removed its
    /// pinned maps and its control socket.
    pub fn stop_cleanly(&mut self) {
        let pin_dir: PathBuf = self.daemon.pin_dir().to_owned();
        let socket: PathBuf = self.daemon.socket().to_owned();
        assert!(
            pin_dir.exists(),
            "{} exists while running",
            pin_dir.display()
        );
        assert!(socket.exists(), "{} exists while running", socket.display());
        let status = self.daemon.stop().expect("stopping the daemon");
        assert!(
            status.success(),
            "the daemon exited with {status} on SIGTERM; its log:\n{}",
            self.daemon.log()
        );
        // Restarts are hitless: the pinned maps and links stay (the lab's guard removes them).
        for link in self.daemon_links(&pin_dir) {
            assert!(
                link.exists(),
                "the daemon's pinned link {} is gone",
                link.display()
            );
        }
        assert!(
            !socket.exists(),
            "the daemon left its socket {}",
            socket.display()
        );
    }

    /// The pinned XDP links of the daemon (one per interface).
    fn daemon_links(&self, pin_dir: &std::path::Path) -> Vec<PathBuf> {
        vec![lb::daemon::links_dir(pin_dir).join(lb::lab::passthrough::IFACE)]
    }
}

/// Raises this process's open-file limit to its hard limit: a test holds both ends of hundreds
/// of connections (clients and TLS servers run in the test process), more than a common soft
/// limit of 1024 descriptors allows.
pub fn raise_fd_limit() {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `getrlimit` writes into the `rlimit` it is given, which lives on this stack.
    let read = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &raw mut limit) };
    assert_eq!(
        read,
        0,
        "getrlimit(RLIMIT_NOFILE): {}",
        std::io::Error::last_os_error()
    );
    if limit.rlim_cur < limit.rlim_max {
        limit.rlim_cur = limit.rlim_max;
        // SAFETY: `setrlimit` only reads the `rlimit` it is given.
        let set = unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raw const limit) };
        assert_eq!(
            set,
            0,
            "setrlimit(RLIMIT_NOFILE): {}",
            std::io::Error::last_os_error()
        );
    }
}

/// The lab's configuration ([`lab_config`]) for `weights.len()` backends, backend `i` with
/// weight `weights[i]` in both pools.
pub fn weighted_config(paths: &DaemonPaths, weights: &[u32]) -> String {
    let mut config = lab_config(paths, weights.len());
    for (i, weight) in weights.iter().enumerate() {
        for address in [IpAddr::V4(backend_v4(i)), IpAddr::V6(backend_v6(i))] {
            let plain = format!("{{ address = \"{address}\" }}");
            let weighted = format!("{{ address = \"{address}\", weight = {weight} }}");
            assert!(
                config.contains(&plain),
                "lab_config no longer writes backends as {plain}:\n{config}"
            );
            config = config.replace(&plain, &weighted);
        }
    }
    config
}

/// The lab's configuration with `key = value` set in its `[datapath]` table.
pub fn with_datapath_setting(config: &str, key: &str, value: &str) -> String {
    assert!(
        config.contains("[datapath]\n"),
        "no [datapath] table:\n{config}"
    );
    config.replacen("[datapath]\n", &format!("[datapath]\n{key} = {value}\n"), 1)
}
