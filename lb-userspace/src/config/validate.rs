//! From [`raw`](super::raw) to [`Config`]: every rule a file must follow, each broken rule
//! reported with the file, line and field (all problems at once, not just the first).

use std::{
    collections::BTreeMap,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    path::PathBuf,
    time::Duration,
};

use toml::Spanned;

use super::{
    AnnounceSettings, BackendConfig, Config, ConfigError, ControlSettings, DatapathSettings,
    ListenerConfig, Mode, Pool, Problem, defaults,
    l7::{AccessLogFormat, AccessLogSettings, AccessLogTarget},
    raw::{RawAccessLog, RawAnnounce, RawBackend, RawConfig, RawDatapath, RawListener, RawPool},
};
use crate::{loader::AttachMode, maglev::is_prime, state::Protocol};

/// Smallest and largest Maglev table: large enough to spread a pool, small enough that the
/// ring map (two rings per listener) stays within memory.
const RING_SIZE_RANGE: (i64, i64) = (251, 16_777_259);
const CONN_TABLE_RANGE: (i64, i64) = (1_024, 1 << 27);
const MAX_LISTENERS_RANGE: (i64, i64) = (1, 256);
const MTU_RANGE: (i64, i64) = (576, 65_535);
/// UDP idle timeouts: from a second (labs) to a day.
const UDP_IDLE_RANGE: (Duration, Duration) =
    (Duration::from_secs(1), Duration::from_secs(24 * 3600));
pub(super) const WEIGHT_RANGE: (i64, i64) = (1, 10_000);

/// Collects problems with their positions in the text.
pub(super) struct Checker<'a> {
    text: &'a str,
    origin: &'a str,
    problems: Vec<Problem>,
}

impl Checker<'_> {
    fn line_of(&self, offset: usize) -> usize {
        self.text[..offset.min(self.text.len())]
            .matches('\n')
            .count()
            + 1
    }

    pub(super) fn problem<T>(&mut self, at: &Spanned<T>, field: &str, reason: impl Into<String>) {
        let location = format!("{}:{}", self.origin, self.line_of(at.span().start));
        self.problems.push(Problem {
            location,
            field: field.to_owned(),
            reason: reason.into(),
        });
    }

    /// An integer in `range`, or a problem.
    pub(super) fn int<T: TryFrom<i64>>(
        &mut self,
        value: &Spanned<i64>,
        field: &str,
        (min, max): (i64, i64),
    ) -> Option<T> {
        let v = *value.get_ref();
        if v < min || v > max {
            self.problem(
                value,
                field,
                format!("{v} is out of range ({min} to {max})"),
            );
            return None;
        }
        T::try_from(v).ok()
    }

    fn address(&mut self, value: &Spanned<String>, field: &str) -> Option<IpAddr> {
        match value.get_ref().parse() {
            Ok(address) => Some(address),
            Err(_) => {
                let text = value.get_ref();
                self.problem(
                    value,
                    field,
                    format!("{text:?} is not an IPv4 or IPv6 address"),
                );
                None
            }
        }
    }

    fn name(&mut self, value: &Spanned<String>, field: &str) {
        let name = value.get_ref();
        let valid = !name.is_empty()
            && name.len() <= 63
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
        if !valid {
            self.problem(
                value,
                field,
                format!("{name:?} is not a valid name (1 to 63 letters, digits, '-' or '_')"),
            );
        }
    }
}

pub(super) fn parse(text: &str, origin: &str) -> Result<Config, ConfigError> {
    let raw: RawConfig = toml::from_str(text).map_err(|error| {
        let line = error
            .span()
            .map(|span| text[..span.start.min(text.len())].matches('\n').count() + 1);
        let location = match line {
            Some(line) => format!("{origin}:{line}"),
            None => origin.to_owned(),
        };
        ConfigError {
            problems: vec![Problem {
                location,
                field: String::new(),
                reason: error.message().to_owned(),
            }],
        }
    })?;
    let mut checker = Checker {
        text,
        origin,
        problems: Vec::new(),
    };
    let pools = check_pools(&mut checker, &raw.pools);
    let listeners = check_listeners(&mut checker, &raw.listeners, &pools);
    super::pool::check_health_ports(&mut checker, &raw.pools, &pools, &listeners);
    super::pool::check_proxy_protocol_checks(&mut checker, &raw.pools, &pools, &listeners);
    let datapath = check_datapath(&mut checker, &raw.datapath, &listeners);
    let metrics = raw.metrics.listen.as_ref().and_then(|listen| {
        let parsed = listen.get_ref().parse::<std::net::SocketAddr>();
        if parsed.is_err() {
            checker.problem(
                listen,
                "metrics.listen",
                format!(
                    "{:?} is not an address and port like \"127.0.0.1:9100\"",
                    listen.get_ref()
                ),
            );
        }
        parsed.ok()
    });
    let status_page = match &raw.metrics.status_page {
        Some(page) if *page.get_ref() && raw.metrics.listen.is_none() => {
            checker.problem(
                page,
                "metrics.status_page",
                "the status page is served by the metrics listener: set metrics.listen too",
            );
            false
        }
        Some(page) => *page.get_ref(),
        None => false,
    };
    let shutdown_timeout = match &raw.control.shutdown_timeout {
        Some(raw) => {
            super::pool::duration(&mut checker, raw, "control.shutdown_timeout").and_then(|d| {
                let range = (Duration::ZERO, defaults::MAX_SHUTDOWN_TIMEOUT);
                super::pool::in_range(&mut checker, raw, "control.shutdown_timeout", d, range)
            })
        }
        None => Some(defaults::SHUTDOWN_TIMEOUT),
    };
    let read_only_group = raw.control.read_only_group.as_ref().and_then(|group| {
        let name = group.get_ref();
        let is_name = name.len() <= 32
            && name.chars().enumerate().all(|(i, ch)| {
                ch.is_ascii_alphanumeric() || ch == '_' || (i > 0 && (ch == '-' || ch == '.'))
            });
        if name.is_empty() || !is_name {
            checker.problem(
                group,
                "control.read_only_group",
                format!(
                    "{name:?} is not a group name or number (up to 32 letters, digits, '_', \
                     and '-' or '.' after the first)"
                ),
            );
            return None;
        }
        Some(name.clone())
    });
    let announce = raw
        .announce
        .as_ref()
        .and_then(|announce| check_announce(&mut checker, announce));
    let access_log = raw
        .access_log
        .as_ref()
        .and_then(|raw| check_access_log(&mut checker, raw));
    let control = ControlSettings {
        socket: raw.control.socket.map_or_else(
            || PathBuf::from(defaults::SOCKET),
            |s| s.into_inner().into(),
        ),
        shutdown_timeout: shutdown_timeout.unwrap_or(defaults::SHUTDOWN_TIMEOUT),
        read_only_group,
    };
    if !checker.problems.is_empty() {
        return Err(ConfigError {
            problems: checker.problems,
        });
    }
    match datapath {
        Some(datapath) => Ok(Config {
            datapath,
            control,
            metrics,
            status_page,
            announce,
            access_log,
            pools,
            listeners,
        }),
        None => Err(ConfigError {
            problems: vec![Problem {
                location: origin.to_owned(),
                field: "datapath".to_owned(),
                reason: "invalid".to_owned(),
            }],
        }),
    }
}

fn check_pools(
    c: &mut Checker<'_>,
    raw: &BTreeMap<Spanned<String>, RawPool>,
) -> BTreeMap<String, Pool> {
    let mut pools = BTreeMap::new();
    for (name, pool) in raw {
        let field = format!("pools.{}", name.get_ref());
        c.name(name, &field);
        let mut backends: Vec<BackendConfig> = Vec::new();
        for (i, backend) in pool.backends.iter().enumerate() {
            let field = format!("{field}.backends[{i}]");
            if let Some(parsed) = check_backend(c, backend.get_ref(), &field) {
                if let Some(j) = duplicate_of(&backends, &parsed) {
                    c.problem(
                        backend,
                        &field,
                        format!("duplicate of backends[{j}] ({})", parsed.address),
                    );
                }
                backends.push(parsed);
            }
        }
        let extras = super::pool::check_extras(c, pool, &field);
        pools.insert(
            name.get_ref().clone(),
            Pool {
                backends,
                health_check: extras.health_check,
                slow_start: extras.slow_start,
                deregistration_delay: extras.deregistration_delay,
            },
        );
    }
    pools
}

fn check_backend(c: &mut Checker<'_>, raw: &RawBackend, field: &str) -> Option<BackendConfig> {
    let address = c.address(&raw.address, &format!("{field}.address"));
    let port = match &raw.port {
        Some(port) => Some(c.int(port, &format!("{field}.port"), (1, 65_535))?),
        None => None,
    };
    let weight = match &raw.weight {
        Some(weight) => c.int(weight, &format!("{field}.weight"), WEIGHT_RANGE)?,
        None => 1,
    };
    let server_name = match &raw.server_name {
        Some(name) => Some(super::l7::server_name(
            c,
            name,
            &format!("{field}.server_name"),
        )?),
        None => None,
    };
    Some(BackendConfig {
        address: address?,
        port,
        weight,
        server_name,
    })
}

fn check_listeners(
    c: &mut Checker<'_>,
    raw: &BTreeMap<Spanned<String>, RawListener>,
    pools: &BTreeMap<String, Pool>,
) -> BTreeMap<String, ListenerConfig> {
    let mut listeners: BTreeMap<String, ListenerConfig> = BTreeMap::new();
    for (name, listener) in raw {
        let field = format!("listeners.{}", name.get_ref());
        c.name(name, &field);
        let Some(parsed) = check_listener(c, listener, &field, pools) else {
            continue;
        };
        for vip in parsed.bound_vips() {
            if let Some((other, _)) = listeners
                .iter()
                .find(|(_, l)| l.bound_vips().contains(&vip))
            {
                c.problem(
                    &listener.port,
                    &field,
                    format!("listener {other:?} already uses {vip}"),
                );
            }
        }
        listeners.insert(name.get_ref().clone(), parsed);
    }
    listeners
}

fn check_listener(
    c: &mut Checker<'_>,
    raw: &RawListener,
    field: &str,
    pools: &BTreeMap<String, Pool>,
) -> Option<ListenerConfig> {
    let address = c.address(&raw.address, &format!("{field}.address"));
    let port: Option<u16> = c.int(&raw.port, &format!("{field}.port"), (1, 65_535));
    let protocol = match raw.protocol.as_ref().map(|p| (p, p.get_ref().as_str())) {
        None | Some((_, "tcp")) => Some(Protocol::Tcp),
        Some((_, "udp")) => Some(Protocol::Udp),
        Some((p, other)) => {
            c.problem(
                p,
                &format!("{field}.protocol"),
                format!("{other:?} is not \"tcp\" or \"udp\""),
            );
            None
        }
    };
    let mode = match raw.mode.get_ref().as_str() {
        "passthrough" => Some(Mode::Passthrough),
        "offload" => Some(Mode::Offload),
        "bridging" => Some(Mode::Bridging),
        other => {
            c.problem(
                &raw.mode,
                &format!("{field}.mode"),
                format!("{other:?} is not \"passthrough\", \"offload\" or \"bridging\""),
            );
            None
        }
    };
    let l7 = match mode {
        Some(mode) => super::l7::check(c, raw, mode, port, field),
        None => None,
    };
    let pool_name = raw.pool.get_ref();
    let Some(pool) = pools.get(pool_name) else {
        c.problem(
            &raw.pool,
            &format!("{field}.pool"),
            format!("no pool is named {pool_name:?}"),
        );
        return None;
    };
    let mut missing = false;
    if let (Some(Some(settings)), Some(rules)) = (&l7, &raw.rules) {
        for (i, rule) in settings.rules.iter().enumerate() {
            for pool in rule.pools().filter(|p| !pools.contains_key(*p)) {
                c.problem(
                    rules,
                    &format!("{field}.rules[{i}]"),
                    format!("rule {:?}: no pool is named {pool:?}", rule.name),
                );
                missing = true;
            }
        }
    }
    if missing {
        return None;
    }
    let listener = ListenerConfig {
        address: address?,
        port: port?,
        protocol: protocol?,
        mode: mode?,
        pool: pool_name.clone(),
        l7: l7?,
    };
    for reason in pool_conflicts(&listener, pool) {
        c.problem(&raw.pool, &format!("{field}.pool"), reason);
    }
    Some(listener)
}

/// Why `pool` cannot serve `listener`, if it cannot: for passthrough, each backend must be of
/// the listener's address family and on the listener's port (the packets are forwarded
/// unchanged). An L7 listener connects to any backend.
pub(super) fn pool_conflicts(listener: &ListenerConfig, pool: &Pool) -> Vec<String> {
    let pool_name = &listener.pool;
    let mut reasons = Vec::new();
    if listener.mode != Mode::Passthrough {
        return reasons;
    }
    for (i, backend) in pool.backends.iter().enumerate() {
        if backend.address.is_ipv4() != listener.address.is_ipv4() {
            reasons.push(format!(
                "backend {i} of pool {pool_name:?} ({}) is not of the listener's address family; passthrough keeps the family",
                backend.address
            ));
        }
        if let Some(port) = backend.port.filter(|&p| p != listener.port) {
            reasons.push(format!(
                "backend {i} of pool {pool_name:?} has port {port}, but passthrough forwards packets unchanged to the listener's port {}; omit the port",
                listener.port
            ));
        }
    }
    reasons
}

/// The index of a backend of `backends` with the same address and port as `candidate`.
pub(super) fn duplicate_of(backends: &[BackendConfig], candidate: &BackendConfig) -> Option<usize> {
    backends
        .iter()
        .position(|b| b.address == candidate.address && b.port == candidate.port)
}

fn check_datapath(
    c: &mut Checker<'_>,
    raw: &RawDatapath,
    listeners: &BTreeMap<String, ListenerConfig>,
) -> Option<DatapathSettings> {
    for interface in &raw.interfaces {
        let name = interface.get_ref();
        if !is_interface_name(name) {
            c.problem(
                interface,
                "datapath.interfaces",
                format!("{name:?} is not a valid interface name"),
            );
        }
    }
    let attach_mode = match raw.attach_mode.as_ref().map(|m| (m, m.get_ref().as_str())) {
        None | Some((_, "auto")) => Some(AttachMode::Auto),
        Some((_, "driver")) => Some(AttachMode::Driver),
        Some((_, "generic")) => Some(AttachMode::Generic),
        Some((m, other)) => {
            c.problem(
                m,
                "datapath.attach_mode",
                format!("{other:?} is not \"auto\", \"driver\" or \"generic\""),
            );
            None
        }
    };
    let ring_size = match &raw.ring_size {
        Some(size) => c
            .int(size, "datapath.ring_size", RING_SIZE_RANGE)
            .and_then(|n: u32| {
                if is_prime(n) {
                    Some(n)
                } else {
                    c.problem(
                        size,
                        "datapath.ring_size",
                        format!("{n} is not prime (Maglev needs a prime table size, e.g. 65537)"),
                    );
                    None
                }
            }),
        None => Some(defaults::RING_SIZE),
    };
    let hash_seed = optional_int(
        c,
        &raw.hash_seed,
        "datapath.hash_seed",
        (0, i64::from(u32::MAX)),
        defaults::HASH_SEED,
    );
    let conn_table_size = optional_int(
        c,
        &raw.conn_table_size,
        "datapath.conn_table_size",
        CONN_TABLE_RANGE,
        defaults::CONN_TABLE_SIZE,
    );
    let max_listeners = optional_int(
        c,
        &raw.max_listeners,
        "datapath.max_listeners",
        MAX_LISTENERS_RANGE,
        defaults::MAX_LISTENERS,
    );
    let conn_inserts_per_sec = optional_int(
        c,
        &raw.conn_inserts_per_sec,
        "datapath.conn_inserts_per_sec",
        (0, 100_000_000),
        defaults::CONN_INSERTS_PER_SEC,
    );
    let icmp_too_big_per_sec = optional_int(
        c,
        &raw.icmp_too_big_per_sec,
        "datapath.icmp_too_big_per_sec",
        (0, 1_000_000),
        defaults::ICMP_TOO_BIG_PER_SEC,
    );
    let udp_idle_timeout = match &raw.udp_idle_timeout {
        Some(d) => {
            let field = "datapath.udp_idle_timeout";
            super::pool::duration(c, d, field).and_then(|value| {
                if value.is_zero() {
                    return Some(value);
                }
                let value = super::pool::in_range(c, d, field, value, UDP_IDLE_RANGE)?;
                if value.subsec_nanos() != 0 {
                    c.problem(d, field, "the datapath counts whole seconds; write \"30s\"");
                    return None;
                }
                Some(value)
            })
        }
        None => Some(defaults::UDP_IDLE_TIMEOUT),
    };
    let egress_vlan = check_egress_vlans(c, &raw.egress_vlan);
    let mtu = match &raw.mtu {
        Some(mtu) => c.int(mtu, "datapath.mtu", MTU_RANGE).map(Some),
        None => Some(None),
    };
    let encap_source_v4 = raw.encap_source_v4.as_ref().and_then(|p| prefix_v4(c, p));
    let encap_source_v6 = raw.encap_source_v6.as_ref().and_then(|p| prefix_v6(c, p));
    let next_hop_mac = raw.next_hop_mac.as_ref().and_then(|m| mac(c, m));

    let needs = |v4: bool| {
        listeners
            .values()
            .any(|l| l.mode == Mode::Passthrough && l.address.is_ipv4() == v4)
    };
    if (needs(true) || needs(false)) && raw.interfaces.is_empty() {
        c.problems.push(Problem {
            location: c.origin.to_owned(),
            field: "datapath.interfaces".to_owned(),
            reason: "passthrough listeners need at least one interface to attach to".to_owned(),
        });
    }
    let passthrough = listeners
        .values()
        .filter(|l| l.mode == Mode::Passthrough)
        .count();
    if let Some(max) = max_listeners
        && passthrough > max as usize
    {
        c.problems.push(Problem {
            location: c.origin.to_owned(),
            field: "datapath.max_listeners".to_owned(),
            reason: format!("{passthrough} passthrough listeners, but max_listeners is {max}"),
        });
    }
    Some(DatapathSettings {
        interfaces: raw.interfaces.iter().map(|i| i.get_ref().clone()).collect(),
        attach_mode: attach_mode?,
        ring_size: ring_size?,
        hash_seed: hash_seed?,
        conn_table_size: conn_table_size?,
        max_listeners: max_listeners?,
        encap_source_v4,
        encap_source_v6,
        mtu: mtu?,
        conn_inserts_per_sec: conn_inserts_per_sec?,
        next_hop_mac,
        pin_dir: raw.pin_dir.as_ref().map_or_else(
            || PathBuf::from(defaults::PIN_DIR),
            |p| PathBuf::from(p.get_ref()),
        ),
        udp_idle_timeout: udp_idle_timeout?,
        icmp_to_backends: raw.icmp_to_backends.as_ref().is_none_or(|on| *on.get_ref()),
        icmp_too_big_per_sec: icmp_too_big_per_sec?,
        egress_vlan: egress_vlan?,
    })
}

/// BIRD's own route protocol number (`RTPROT_BIRD`).
const BIRD_PROTOCOL: i64 = 12;

/// `[announce]`: a table the kernel does not route with, a protocol number it does not use
/// itself, a device name, the drain's wait, and BIRD's socket.
fn check_announce(c: &mut Checker<'_>, raw: &RawAnnounce) -> Option<AnnounceSettings> {
    let problems = c.problems.len();
    let table = raw.table.as_ref().and_then(|table| {
        let value: u32 = c.int(table, "announce.table", (1, i64::from(u32::MAX)))?;
        if (253..=255).contains(&value) {
            c.problem(
                table,
                "announce.table",
                format!(
                    "{value} is one of the kernel's own tables (253 default, 254 main, 255 \
                     local): routes there would steer packets; pick an unused one, as the \
                     default {}",
                    defaults::ANNOUNCE_TABLE
                ),
            );
            return None;
        }
        Some(value)
    });
    let protocol = raw.protocol.as_ref().and_then(|protocol| {
        let value = *protocol.get_ref();
        if (0..=4).contains(&value) {
            c.problem(
                protocol,
                "announce.protocol",
                format!(
                    "{value} is one of the kernel's own protocol numbers (unspec, redirect, \
                     kernel, boot, static): pick one that only this daemon uses, as the \
                     default {}",
                    defaults::ANNOUNCE_PROTOCOL
                ),
            );
            return None;
        }
        if value == BIRD_PROTOCOL {
            c.problem(
                protocol,
                "announce.protocol",
                "12 is BIRD's own: BIRD would take the routes for its own and remove them; pick \
                 one that only this daemon uses, as the default 200",
            );
            return None;
        }
        c.int::<u8>(protocol, "announce.protocol", (5, 255))
    });
    let device = raw.device.as_ref().and_then(|device| {
        let name = device.get_ref();
        // The kernel numbers a name with `%` (`lb%d`: lb0, ...); `.` and `..` are not names.
        if is_interface_name(name) && !name.contains('%') && name != "." && name != ".." {
            Some(device.get_ref().clone())
        } else {
            c.problem(
                device,
                "announce.device",
                format!(
                    "{name:?} is not an interface name (1 to 15 characters, no '/', ':', '%' \
                     or space, not '.' or '..')"
                ),
            );
            None
        }
    });
    let drain_wait = raw.drain_wait.as_ref().and_then(|wait| {
        let value = super::pool::duration(c, wait, "announce.drain_wait")?;
        let range = (Duration::ZERO, defaults::MAX_DRAIN_WAIT);
        super::pool::in_range(c, wait, "announce.drain_wait", value, range)
    });
    let bird_socket = raw.bird_socket.as_ref().and_then(|socket| {
        let path = PathBuf::from(socket.get_ref());
        if path.is_absolute() {
            Some(path)
        } else {
            c.problem(
                socket,
                "announce.bird_socket",
                format!("{:?} is not an absolute path", socket.get_ref()),
            );
            None
        }
    });
    (c.problems.len() == problems).then(|| AnnounceSettings {
        table: table.unwrap_or(defaults::ANNOUNCE_TABLE),
        protocol: protocol.unwrap_or(defaults::ANNOUNCE_PROTOCOL),
        device: device.unwrap_or_else(|| defaults::ANNOUNCE_DEVICE.to_owned()),
        drain_wait: drain_wait.unwrap_or(defaults::DRAIN_WAIT),
        bird_socket,
    })
}

/// `[access_log]`: an absolute path or "-", a format, a sample in (0, 1].
fn check_access_log(c: &mut Checker<'_>, raw: &RawAccessLog) -> Option<AccessLogSettings> {
    let problems = c.problems.len();
    let target = match &raw.path {
        None => {
            c.problems.push(Problem {
                location: c.origin.to_owned(),
                field: "access_log.path".to_owned(),
                reason: "missing: an absolute path, or \"-\" for the daemon's standard output"
                    .to_owned(),
            });
            None
        }
        Some(path) if path.get_ref() == "-" => Some(AccessLogTarget::Stdout),
        Some(path) => {
            let file = PathBuf::from(path.get_ref());
            if file.is_absolute() && file.file_name().is_some() {
                Some(AccessLogTarget::File(file))
            } else {
                c.problem(
                    path,
                    "access_log.path",
                    format!(
                        "{:?} is not an absolute path to a file, or \"-\" for the daemon's \
                         standard output",
                        path.get_ref()
                    ),
                );
                None
            }
        }
    };
    let format = match raw.format.as_ref().map(|f| (f, f.get_ref().as_str())) {
        None | Some((_, "json")) => Some(AccessLogFormat::Json),
        Some((_, "text")) => Some(AccessLogFormat::Text),
        Some((format, other)) => {
            c.problem(
                format,
                "access_log.format",
                format!("{other:?} is not a format: \"json\" or \"text\""),
            );
            None
        }
    };
    let sample = match &raw.sample {
        None => Some(1_000_000),
        Some(sample) => {
            let value = *sample.get_ref();
            if value > 0.0 && value <= 1.0 {
                #[allow(
                    clippy::cast_possible_truncation,
                    clippy::cast_sign_loss,
                    reason = "within (0, 1] times a million"
                )]
                Some(((value * 1_000_000.0).round() as u32).max(1))
            } else {
                c.problem(
                    sample,
                    "access_log.sample",
                    format!(
                        "{value} is not a fraction above 0 and at most 1 (0.01: one line in a \
                         hundred; lines with an error are always written)"
                    ),
                );
                None
            }
        }
    };
    (c.problems.len() == problems).then(|| AccessLogSettings {
        target: target.unwrap_or(AccessLogTarget::Stdout),
        format: format.unwrap_or(AccessLogFormat::Json),
        sample_per_million: sample.unwrap_or(1_000_000),
    })
}

/// An interface name the kernel would accept.
fn is_interface_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 15
        && !name.contains(['/', ':'])
        && !name.chars().any(char::is_whitespace)
}

/// `[datapath.egress_vlan]`: interface names and VLAN ids (1 to 4094, or 0 for untagged).
fn check_egress_vlans(
    c: &mut Checker<'_>,
    raw: &BTreeMap<Spanned<String>, Spanned<i64>>,
) -> Option<BTreeMap<String, u16>> {
    let mut vlans = BTreeMap::new();
    let mut valid = true;
    for (interface, id) in raw {
        let field = format!("datapath.egress_vlan.{}", interface.get_ref());
        if !is_interface_name(interface.get_ref()) {
            c.problem(
                interface,
                &field,
                format!("{:?} is not a valid interface name", interface.get_ref()),
            );
            valid = false;
            continue;
        }
        match c.int::<u16>(id, &field, (0, 4094)) {
            Some(id) => {
                vlans.insert(interface.get_ref().clone(), id);
            }
            None => valid = false,
        }
    }
    valid.then_some(vlans)
}

fn optional_int<T: TryFrom<i64>>(
    c: &mut Checker<'_>,
    raw: &Option<Spanned<i64>>,
    field: &str,
    range: (i64, i64),
    default: T,
) -> Option<T> {
    match raw {
        Some(value) => c.int(value, field, range),
        None => Some(default),
    }
}

/// `a.b.c.d/len` with len >= 8, host bits zero.
fn prefix_v4(c: &mut Checker<'_>, raw: &Spanned<String>) -> Option<(Ipv4Addr, u8)> {
    let field = "datapath.encap_source_v4";
    let (address, len) = split_prefix(c, raw, field)?;
    let Ok(address) = address.parse::<Ipv4Addr>() else {
        c.problem(raw, field, format!("{address:?} is not an IPv4 address"));
        return None;
    };
    if !(8..=32).contains(&len) {
        c.problem(raw, field, format!("/{len} is out of range (/8 to /32)"));
        return None;
    }
    let host = if len == 32 { 0 } else { u32::MAX >> len };
    if u32::from(address) & host != 0 {
        c.problem(
            raw,
            field,
            format!("{address}/{len} has host bits set; write the network address"),
        );
        return None;
    }
    Some((address, len))
}

/// `x::/len` with len >= 64, host bits zero (the datapath varies at most the last 32 bits).
fn prefix_v6(c: &mut Checker<'_>, raw: &Spanned<String>) -> Option<(Ipv6Addr, u8)> {
    let field = "datapath.encap_source_v6";
    let (address, len) = split_prefix(c, raw, field)?;
    let Ok(address) = address.parse::<Ipv6Addr>() else {
        c.problem(raw, field, format!("{address:?} is not an IPv6 address"));
        return None;
    };
    if !(64..=128).contains(&len) {
        c.problem(raw, field, format!("/{len} is out of range (/64 to /128)"));
        return None;
    }
    let host = if len == 128 { 0 } else { u128::MAX >> len };
    if u128::from(address) & host != 0 {
        c.problem(
            raw,
            field,
            format!("{address}/{len} has host bits set; write the network address"),
        );
        return None;
    }
    Some((address, len))
}

fn split_prefix<'t>(
    c: &mut Checker<'_>,
    raw: &'t Spanned<String>,
    field: &str,
) -> Option<(&'t str, u8)> {
    let text = raw.get_ref();
    let parsed = text
        .split_once('/')
        .and_then(|(address, len)| len.parse::<u8>().ok().map(|len| (address, len)));
    if parsed.is_none() {
        c.problem(
            raw,
            field,
            format!("{text:?} is not a prefix like \"198.18.255.0/24\""),
        );
    }
    parsed
}

fn mac(c: &mut Checker<'_>, raw: &Spanned<String>) -> Option<[u8; 6]> {
    let text = raw.get_ref();
    let bytes: Vec<u8> = text
        .split(':')
        .filter_map(|part| {
            (part.len() == 2)
                .then(|| u8::from_str_radix(part, 16).ok())
                .flatten()
        })
        .collect();
    match <[u8; 6]>::try_from(bytes) {
        Ok(mac) if text.len() == 17 => Some(mac),
        _ => {
            c.problem(
                raw,
                "datapath.next_hop_mac",
                format!("{text:?} is not a MAC address like \"02:00:00:00:00:01\""),
            );
            None
        }
    }
}
