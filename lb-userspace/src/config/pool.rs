//! A pool's settings besides its backends: the health check, slow start and deregistration
//! delay. Durations are written as "30s", "500ms", "2m"; ranges follow an AWS target group's
//! (interval 5-300 s, timeout 2-120 s, thresholds 2-10), widened downwards for labs and tests.

use std::{collections::BTreeMap, path::Path, sync::Arc, time::Duration};

use toml::Spanned;

use super::{
    HealthCheck, ListenerConfig, Pool,
    raw::{RawHealthCheck, RawHealthSetting, RawPool},
    validate::Checker,
};
use crate::health::{
    probe::{ProbeKind, parse_status_range},
    state::Thresholds,
};

pub(super) const INTERVAL_RANGE: (Duration, Duration) =
    (Duration::from_millis(100), Duration::from_secs(300));
pub(super) const TIMEOUT_RANGE: (Duration, Duration) =
    (Duration::from_millis(50), Duration::from_secs(120));
const THRESHOLD_RANGE: (i64, i64) = (2, 10);
const SLOW_START_RANGE: (Duration, Duration) = (Duration::from_secs(1), Duration::from_secs(900));
const DEREGISTRATION_RANGE: (Duration, Duration) = (Duration::ZERO, Duration::from_secs(3600));

/// AWS target-group defaults.
const DEFAULT_INTERVAL: Duration = Duration::from_secs(30);
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);
const DEFAULT_HEALTHY: u32 = 5;
const DEFAULT_UNHEALTHY: u32 = 2;
const DEFAULT_STATUS: &str = "200-399";

/// What [`check_extras`] found.
pub(super) struct Extras {
    pub(super) health_check: Option<HealthCheck>,
    pub(super) slow_start: Duration,
    pub(super) deregistration_delay: Duration,
}

pub(super) fn check_extras(c: &mut Checker<'_>, raw: &RawPool, field: &str) -> Extras {
    let slow_start = raw
        .slow_start
        .as_ref()
        .and_then(|d| {
            let value = duration(c, d, &format!("{field}.slow_start"))?;
            if value.is_zero() {
                return Some(value);
            }
            in_range(
                c,
                d,
                &format!("{field}.slow_start"),
                value,
                SLOW_START_RANGE,
            )
        })
        .unwrap_or_default();
    let deregistration_delay = raw
        .deregistration_delay
        .as_ref()
        .and_then(|d| {
            let f = format!("{field}.deregistration_delay");
            let value = duration(c, d, &f)?;
            in_range(c, d, &f, value, DEREGISTRATION_RANGE)
        })
        .unwrap_or_default();
    let health_check = health_setting(c, raw, &format!("{field}.health_check"));
    Extras {
        health_check,
        slow_start,
        deregistration_delay,
    }
}

/// A pool's health check: the table's, none with `health_check = false`, else a TCP check on
/// the traffic port with the AWS target-group defaults (a target group always has one).
fn health_setting(c: &mut Checker<'_>, raw: &RawPool, field: &str) -> Option<HealthCheck> {
    let defaults = RawHealthCheck::default();
    let (span, table) = match raw.health_check.as_ref() {
        None => (0..0, &defaults),
        Some(setting) => match setting.get_ref() {
            RawHealthSetting::Enabled(false) => return None,
            RawHealthSetting::Enabled(true) => (setting.span(), &defaults),
            RawHealthSetting::Check(table) => (setting.span(), &**table),
        },
    };
    check_health(c, &Spanned::new(span, table), field)
}

fn check_health(
    c: &mut Checker<'_>,
    raw: &Spanned<&RawHealthCheck>,
    field: &str,
) -> Option<HealthCheck> {
    let hc = raw.get_ref();
    let probe = probe_kind(c, raw, field);
    let port = match &hc.port {
        Some(port) => Some(c.int(port, &format!("{field}.port"), (1, 65_535))?),
        None => None,
    };
    let interval = match &hc.interval {
        Some(d) => {
            let f = format!("{field}.interval");
            let value = duration(c, d, &f)?;
            in_range(c, d, &f, value, INTERVAL_RANGE)?
        }
        None => DEFAULT_INTERVAL,
    };
    let timeout = match &hc.timeout {
        Some(d) => {
            let f = format!("{field}.timeout");
            let value = duration(c, d, &f)?;
            in_range(c, d, &f, value, TIMEOUT_RANGE)?
        }
        None => DEFAULT_TIMEOUT.min(interval),
    };
    let too_long = timeout > interval;
    if too_long {
        let at = hc.timeout.as_ref().map_or(raw.span(), |t| t.span());
        c.problem(
            &Spanned::new(at, ()),
            &format!("{field}.timeout"),
            format!("{timeout:?} is longer than the interval {interval:?}"),
        );
    }
    let threshold =
        |c: &mut Checker<'_>, value: &Option<Spanned<i64>>, name: &str, default: u32| match value {
            Some(v) => c.int(v, &format!("{field}.{name}"), THRESHOLD_RANGE),
            None => Some(default),
        };
    let healthy = threshold(
        c,
        &hc.healthy_threshold,
        "healthy_threshold",
        DEFAULT_HEALTHY,
    );
    let unhealthy = threshold(
        c,
        &hc.unhealthy_threshold,
        "unhealthy_threshold",
        DEFAULT_UNHEALTHY,
    );
    if too_long {
        return None;
    }
    Some(HealthCheck {
        probe: probe?,
        port,
        interval,
        timeout,
        thresholds: Thresholds {
            healthy: healthy?,
            unhealthy: unhealthy?,
        },
        fail_open: hc.fail_open.as_ref().is_none_or(|f| *f.get_ref()),
    })
}

fn probe_kind(
    c: &mut Checker<'_>,
    raw: &Spanned<&RawHealthCheck>,
    field: &str,
) -> Option<ProbeKind> {
    let hc = raw.get_ref();
    let protocol = hc.protocol.as_ref().map_or("tcp", |p| p.get_ref().as_str());
    let status = || {
        let text = hc
            .expected_status
            .as_ref()
            .map_or(DEFAULT_STATUS, |s| s.get_ref().as_str());
        parse_status_range(text)
    };
    let path = hc
        .path
        .as_ref()
        .map_or("/", |p| p.get_ref().as_str())
        .to_owned();
    let host = hc.host.as_ref().map(|h| h.get_ref().clone());
    let mut valid = true;
    if !path.starts_with('/') || path.chars().any(|ch| ch.is_whitespace() || ch.is_control()) {
        let at = hc.path.as_ref().map_or(raw.span(), |p| p.span());
        c.problem(
            &Spanned::new(at, ()),
            &format!("{field}.path"),
            format!("{path:?} is not an absolute path without spaces"),
        );
        valid = false;
    }
    let status = match status() {
        Ok(range) => Some(range),
        Err(reason) => {
            let at = hc.expected_status.as_ref().map_or(raw.span(), |s| s.span());
            c.problem(
                &Spanned::new(at, ()),
                &format!("{field}.expected_status"),
                reason,
            );
            None
        }
    };
    match protocol {
        "tcp" => Some(ProbeKind::Tcp),
        "http" => valid
            .then_some(())
            .and(status)
            .map(|status| ProbeKind::Http { path, host, status }),
        "https" => {
            let roots = ca_roots(c, raw, field)?;
            valid
                .then_some(())
                .and(status)
                .map(|status| ProbeKind::Https {
                    path,
                    host,
                    status,
                    server_name: hc.server_name.as_ref().map(|s| s.get_ref().clone()),
                    roots,
                })
        }
        other => {
            let at = hc.protocol.as_ref().map_or(raw.span(), |p| p.span());
            c.problem(
                &Spanned::new(at, ()),
                &format!("{field}.protocol"),
                format!("{other:?} is not \"tcp\", \"http\" or \"https\""),
            );
            None
        }
    }
}

/// The CA bundle an HTTPS health check verifies backends against.
fn ca_roots(
    c: &mut Checker<'_>,
    raw: &Spanned<&RawHealthCheck>,
    field: &str,
) -> Option<Arc<rustls::RootCertStore>> {
    let Some(ca) = raw.get_ref().ca_file.as_ref() else {
        c.problem(
            raw,
            &format!("{field}.ca_file"),
            "an https health check needs the CA bundle (PEM) to verify the backends with",
        );
        return None;
    };
    match load_roots(Path::new(ca.get_ref())) {
        Ok(roots) => Some(Arc::new(roots)),
        Err(reason) => {
            c.problem(ca, &format!("{field}.ca_file"), reason);
            None
        }
    }
}

fn load_roots(path: &Path) -> Result<rustls::RootCertStore, String> {
    crate::l7::tls::load_roots(path).map_err(|e| e.to_string())
}

/// An HTTP or HTTPS check of backends without a port, whose listeners send to different
/// ports, must say which port: asking on whichever listener comes first could ask HTTPS of a
/// plain port. A TCP check (the default's kind) takes the first listener's port (by name),
/// written out or not.
pub(super) fn check_health_ports(
    c: &mut Checker<'_>,
    raw: &BTreeMap<Spanned<String>, RawPool>,
    pools: &BTreeMap<String, Pool>,
    listeners: &BTreeMap<String, ListenerConfig>,
) {
    for (name, pool) in pools {
        let Some(check) = &pool.health_check else {
            continue;
        };
        if matches!(check.probe, ProbeKind::Tcp)
            || check.port.is_some()
            || pool.backends.iter().all(|b| b.port.is_some())
        {
            continue;
        }
        // The backends without a port of their own are checked on their listeners' port.
        let mut ports: Vec<u16> = listeners
            .values()
            .filter(|l| l.uses_pool(name))
            .flat_map(|l| {
                pool.backends
                    .iter()
                    .filter(|b| b.port.is_none())
                    .map(|b| l.backend_port(b))
            })
            .collect();
        ports.sort_unstable();
        ports.dedup();
        if ports.len() != 1
            && let Some((_, raw)) = raw.iter().find(|(n, _)| n.get_ref() == name)
            && let Some(hc) = &raw.health_check
        {
            c.problem(
                hc,
                &format!("pools.{name}.health_check.port"),
                "needed for an HTTP(S) check: the pool's backends have no port and its listeners send to different ones",
            );
        }
    }
}

pub(super) fn duration(
    c: &mut Checker<'_>,
    raw: &Spanned<String>,
    field: &str,
) -> Option<Duration> {
    match humantime::parse_duration(raw.get_ref()) {
        Ok(d) => Some(d),
        Err(e) => {
            c.problem(
                raw,
                field,
                format!(
                    "{:?} is not a duration like \"30s\" or \"500ms\" ({e})",
                    raw.get_ref()
                ),
            );
            None
        }
    }
}

pub(super) fn in_range(
    c: &mut Checker<'_>,
    raw: &Spanned<String>,
    field: &str,
    value: Duration,
    (min, max): (Duration, Duration),
) -> Option<Duration> {
    if value < min || value > max {
        c.problem(
            raw,
            field,
            format!(
                "{} is out of range ({} to {})",
                humantime::format_duration(value),
                humantime::format_duration(min),
                humantime::format_duration(max)
            ),
        );
        return None;
    }
    Some(value)
}

/// An HTTP(S) health check of a pool whose backends an L7 listener sends the PROXY protocol:
/// refused. The checks carry no PROXY header, and a backend that wants one (HAProxy's
/// `accept-proxy`, nginx's `proxy_protocol`) refuses them, so every backend would be marked
/// down. A TCP check only connects, and passes.
pub(super) fn check_proxy_protocol_checks(
    c: &mut Checker<'_>,
    raw: &BTreeMap<Spanned<String>, RawPool>,
    pools: &BTreeMap<String, Pool>,
    listeners: &BTreeMap<String, ListenerConfig>,
) {
    for (name, pool) in pools {
        let Some(check) = &pool.health_check else {
            continue;
        };
        if matches!(check.probe, ProbeKind::Tcp) {
            continue;
        }
        let sender = listeners.iter().find(|(_, l)| {
            l.uses_pool(name) && l.l7.as_ref().is_some_and(|s| s.backend.send_proxy_protocol)
        });
        if let Some((listener, _)) = sender
            && let Some((_, raw)) = raw.iter().find(|(n, _)| n.get_ref() == name)
            && let Some(hc) = &raw.health_check
        {
            c.problem(
                hc,
                &format!("pools.{name}.health_check.protocol"),
                format!(
                    "listener {listener:?} sends its backends the PROXY protocol, which an HTTP(S) \
                     check does not: a backend that wants it would refuse every check; use \
                     protocol = \"tcp\""
                ),
            );
        }
    }
}
