//! The routed lab ([`RoutedLab`]) with a running daemon, and what its tests ask of it: the
//! daemon's status and counters, and TLS transfers from the client through the balancer.

use std::{
    net::{IpAddr, SocketAddr},
    time::Duration,
};

use lb::{
    control::{Body, StatsView, StatusView},
    lab::{
        LabError, TlsClientConn,
        daemon::{DaemonPaths, DaemonProcess, lb_binary},
        passthrough::VIP_NAME,
        routed::{RoutedLab, RoutedOptions},
    },
};

use crate::daemon_lab::CliRun;

/// A routed lab and the daemon that balances it.
pub struct RoutedDaemon {
    /// Declared first so that it is dropped first: the daemon stops before its namespace goes.
    pub daemon: DaemonProcess,
    pub lab: RoutedLab,
}

impl RoutedDaemon {
    /// Builds the lab (TLS on port 443 of every backend), runs `prepare` on it, then starts the
    /// daemon in the balancer's namespace with the configuration `config` writes.
    pub fn start(
        prefix: &str,
        options: RoutedOptions,
        prepare: impl FnOnce(&RoutedLab),
        config: impl FnOnce(&DaemonPaths) -> String,
    ) -> Self {
        crate::require_root();
        let mut lab = RoutedLab::build(prefix, options).expect("building the routed lab");
        lab.start_tls(443).expect("starting the TLS backends");
        prepare(&lab);
        let binary = lb_binary().expect("the lb binary");
        let daemon = DaemonProcess::start(&binary, &lab.lb, config).expect("starting the daemon");
        Self { daemon, lab }
    }

    pub fn cli(&self, args: &[&str]) -> CliRun {
        CliRun::from((args, self.daemon.cli(args).expect("running the lb CLI")))
    }

    /// Runs the CLI with `--json` and parses its answer.
    pub fn json(&self, args: &[&str]) -> Body {
        let mut with_json = vec!["--json"];
        with_json.extend_from_slice(args);
        let run = self.cli(&with_json);
        assert!(
            run.success,
            "lb {args:?}: {}\ndaemon log:\n{}",
            run.stderr,
            self.daemon.log()
        );
        serde_json::from_str(&run.stdout).expect("a JSON answer")
    }

    pub fn status(&self) -> StatusView {
        match self.json(&["status"]) {
            Body::Status(status) => *status,
            other => panic!("lb status answered {other:?}"),
        }
    }

    pub fn stats(&self) -> StatsView {
        match self.json(&["stats"]) {
            Body::Stats(stats) => stats,
            other => panic!("lb stats answered {other:?}"),
        }
    }

    /// A datapath counter, by label.
    pub fn counter(&self, name: &str) -> u64 {
        self.stats()
            .counters
            .iter()
            .find(|c| c.name == name)
            .unwrap_or_else(|| panic!("no counter {name}"))
            .value
    }

    /// Connects from the client to `vip`:443 and runs `transfer` on the connection, with reads
    /// and writes that give up after `timeout`; returns what it returned.
    pub fn transfer<T: Send + 'static>(
        &self,
        vip: IpAddr,
        timeout: Duration,
        transfer: impl FnOnce(&mut TlsClientConn) -> Result<T, LabError> + Send + 'static,
    ) -> Result<T, LabError> {
        let roots = self.lab.pki.roots().expect("the lab's roots");
        self.lab
            .client
            .spawn("transfer", move || {
                let mut conn = TlsClientConn::connect(VIP_NAME, SocketAddr::new(vip, 443), &roots)?;
                conn.set_timeout(timeout)?;
                transfer(&mut conn)
            })
            .expect("a client thread")
            .join()
            .expect("the client thread panicked")
    }
}
