//! Edits of the lab's configuration text for the tests of health checks, drains, reloads and
//! metrics: a pool's health check ([`HealthCheck`], [`with_health_check`]), a pool-level setting
//! such as `deregistration_delay` ([`with_pool_setting`]), the backends of a pool
//! ([`with_backends`]) and the metrics endpoint ([`with_metrics`]).
//!
//! Each function takes the text [`lab_config`](lb::lab::passthrough::lab_config) wrote (or an
//! earlier edit of it) and returns the edited text; each panics with the text when the table it
//! edits is not where `lab_config` puts it, so a change of `lab_config` shows here first.

use std::{net::IpAddr, time::Duration};

/// A pool's `[pools.NAME.health_check]`, with lab-sized settings.
#[derive(Clone, Debug)]
pub struct HealthCheck {
    /// `tcp`, `http` or `https`.
    pub protocol: &'static str,
    /// The checked port; `None` leaves it to the listener's.
    pub port: Option<u16>,
    /// The path of an HTTP check.
    pub path: Option<&'static str>,
    pub interval: Duration,
    pub timeout: Duration,
    pub healthy_threshold: u32,
    pub unhealthy_threshold: u32,
    /// `None` leaves the default (fail open).
    pub fail_open: Option<bool>,
}

impl HealthCheck {
    /// A TCP check of `port` every 200 ms (timeout 100 ms), thresholds 2 and 2: a backend is
    /// found dead or alive again within a few hundred milliseconds.
    pub fn fast_tcp(port: u16) -> Self {
        Self {
            protocol: "tcp",
            port: Some(port),
            path: None,
            interval: Duration::from_millis(200),
            timeout: Duration::from_millis(100),
            healthy_threshold: 2,
            unhealthy_threshold: 2,
            fail_open: None,
        }
    }

    /// An HTTP check of `GET path` on `port`, with the timing of [`HealthCheck::fast_tcp`].
    pub fn fast_http(port: u16, path: &'static str) -> Self {
        Self {
            protocol: "http",
            path: Some(path),
            ..Self::fast_tcp(port)
        }
    }

    /// The longest a change of the backend takes to show in its state by the settings: one
    /// interval until the next check, then `threshold` checks an interval apart, plus
    /// `allowance` for scheduling (the probe task, the controller thread, the CLI).
    pub fn bound(&self, threshold: u32, allowance: Duration) -> Duration {
        self.interval * threshold + self.interval + allowance
    }

    /// The table, as TOML, for pool `pool`.
    fn to_toml(&self, pool: &str) -> String {
        let mut out = format!(
            "[pools.{pool}.health_check]\nprotocol = \"{}\"\ninterval = \"{}ms\"\n\
             timeout = \"{}ms\"\nhealthy_threshold = {}\nunhealthy_threshold = {}\n",
            self.protocol,
            self.interval.as_millis(),
            self.timeout.as_millis(),
            self.healthy_threshold,
            self.unhealthy_threshold,
        );
        if let Some(port) = self.port {
            out.push_str(&format!("port = {port}\n"));
        }
        if let Some(path) = self.path {
            out.push_str(&format!("path = \"{path}\"\n"));
        }
        if let Some(fail_open) = self.fail_open {
            out.push_str(&format!("fail_open = {fail_open}\n"));
        }
        out
    }
}

/// The header of pool `pool`'s table as `lab_config` writes it.
fn pool_header(pool: &str) -> String {
    format!("[pools.{pool}]\n")
}

fn assert_has_pool(config: &str, pool: &str) {
    assert!(
        config.contains(&pool_header(pool)),
        "no [pools.{pool}] table:\n{config}"
    );
}

/// `config` with `check` as pool `pool`'s health check (a table appended at the end).
pub fn with_health_check(config: &str, pool: &str, check: &HealthCheck) -> String {
    assert_has_pool(config, pool);
    // The table replaces the pool's `health_check = false`, if it has one.
    let header = pool_header(pool);
    let start = config.find(&header).map_or(0, |at| at + header.len());
    let end = config[start..]
        .find("\n[")
        .map_or(config.len(), |at| start + at + 1);
    let table = config[start..end].replacen("health_check = false\n", "", 1);
    format!(
        "{}{table}{}\n{}",
        &config[..start],
        &config[end..],
        check.to_toml(pool)
    )
}

/// `config` with `key = value` (TOML, e.g. `"\"2s\""`) set in pool `pool`'s table.
pub fn with_pool_setting(config: &str, pool: &str, key: &str, value: &str) -> String {
    assert_has_pool(config, pool);
    let header = pool_header(pool);
    config.replacen(&header, &format!("{header}{key} = {value}\n"), 1)
}

/// `config` with pool `pool`'s backends replaced by `backends` (address, weight).
pub fn with_backends(config: &str, pool: &str, backends: &[(IpAddr, u32)]) -> String {
    let header = pool_header(pool);
    let start = config
        .find(&header)
        .map(|at| at + header.len())
        .unwrap_or_else(|| panic!("no [pools.{pool}] table:\n{config}"));
    let line_start = config[start..]
        .find("backends = [")
        .map(|at| start + at)
        .unwrap_or_else(|| panic!("pool {pool} has no `backends = [` line:\n{config}"));
    let line_end = config[line_start..]
        .find('\n')
        .map_or(config.len(), |at| line_start + at);
    let list = backends
        .iter()
        .map(|(address, weight)| format!("{{ address = \"{address}\", weight = {weight} }}"))
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        "{}backends = [{list}]{}",
        &config[..line_start],
        &config[line_end..]
    )
}

/// `config` with the Prometheus endpoint at `listen` (e.g. `127.0.0.1:9464`).
pub fn with_metrics(config: &str, listen: std::net::SocketAddr) -> String {
    assert!(
        !config.contains("[metrics]"),
        "a [metrics] table already:\n{config}"
    );
    format!("{config}\n[metrics]\nlisten = \"{listen}\"\n")
}

/// The line (1-based) of the first line of `config` that contains `text`.
pub fn line_of(config: &str, text: &str) -> usize {
    config
        .lines()
        .position(|line| line.contains(text))
        .map(|i| i + 1)
        .unwrap_or_else(|| panic!("no line contains {text:?}:\n{config}"))
}
