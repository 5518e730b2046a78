//! The configuration file: TOML -> `raw` serde structs (unknown keys rejected) -> a validated
//! [`Config`] (`validate`): parse, don't validate. Every error names the file, the line, the
//! field and the reason; a file with errors yields no `Config` at all, so nothing is applied.
//!
//! One file describes every listener of a balancer: each has an address, a port, a protocol and
//! a `mode` (`passthrough`: the XDP program forwards its packets; `offload` and `bridging`:
//! the daemon terminates TLS and proxies HTTP, see [`l7`]) and forwards to a named pool of
//! backends.

mod edit;
pub mod l7;
mod pool;
mod raw;
pub mod rules;
mod validate;

pub use edit::{PoolEdit, describe};

use std::{
    collections::BTreeMap,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    path::{Path, PathBuf},
};

use std::time::Duration;

use lb_common::abi::{
    CONFIG_F_EGRESS_VLAN, CONFIG_F_ICMP_TO_BACKENDS, CONFIG_F_STATIC_NEXT_HOP, DatapathConfig, Mac,
};

use crate::{
    datapath::RingGeometry,
    health::{probe::ProbeKind, state::Thresholds},
    loader::AttachMode,
    state::{self, Protocol, Vip, addr_be},
};

/// A validated configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    pub datapath: DatapathSettings,
    pub control: ControlSettings,
    /// Where the Prometheus endpoint listens (`[metrics] listen`); off when absent.
    pub metrics: Option<std::net::SocketAddr>,
    /// `[metrics] status_page`: the metrics listener also serves the HTML status page.
    pub status_page: bool,
    /// `[announce]`: the routes this node offers its routing daemon; none when absent.
    pub announce: Option<AnnounceSettings>,
    /// `[access_log]`: the L7 listeners' access log; none when absent.
    pub access_log: Option<l7::AccessLogSettings>,
    pub pools: BTreeMap<String, Pool>,
    pub listeners: BTreeMap<String, ListenerConfig>,
}

/// `[datapath]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DatapathSettings {
    pub interfaces: Vec<String>,
    pub attach_mode: AttachMode,
    pub ring_size: u32,
    pub hash_seed: u32,
    pub conn_table_size: u32,
    pub max_listeners: u32,
    pub encap_source_v4: Option<(Ipv4Addr, u8)>,
    pub encap_source_v6: Option<(Ipv6Addr, u8)>,
    pub mtu: Option<u32>,
    /// New connection-table entries per second per CPU (0: no limit).
    pub conn_inserts_per_sec: u32,
    pub next_hop_mac: Option<[u8; 6]>,
    pub pin_dir: PathBuf,
    /// UDP flows idle this long are placed afresh (zero: never).
    pub udp_idle_timeout: Duration,
    /// ICMP errors about passthrough flows go to the flows' backends.
    pub icmp_to_backends: bool,
    /// Too-big answers per second per CPU (0: none, too-big packets are dropped).
    pub icmp_too_big_per_sec: u32,
    /// Interfaces whose forwarded frames leave with this VLAN id (0: untagged).
    pub egress_vlan: BTreeMap<String, u16>,
}

/// `[control]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ControlSettings {
    pub socket: PathBuf,
    /// How long a stopping daemon (SIGTERM, or a successor taking over) lets the L7
    /// connections finish what is in flight before it exits.
    pub shutdown_timeout: Duration,
    /// A group (name or number) whose members may use the read-only requests (list, stats,
    /// status, simulate) on the control socket.
    pub read_only_group: Option<String>,
}

/// `[announce]`: while this node can serve a listener address, the daemon keeps a route to it
/// in a kernel table of its own (`VIP/32 dev DEVICE table TABLE proto PROTOCOL`), through a
/// device that lives as long as the daemon; the node's routing daemon learns that table and
/// announces what it holds (see `daemon::announce`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AnnounceSettings {
    /// The kernel routing table (no rule points at it: it never routes a packet).
    pub table: u32,
    /// The routes' protocol number, which the routing daemon filters on.
    pub protocol: u8,
    /// The name of the daemon's tun device, which the routes go through.
    pub device: String,
    /// How long `lb node drain` waits, after withdrawing, for routers to move new flows away.
    pub drain_wait: Duration,
    /// BIRD's control socket, read for `lb status` and the metrics (the sessions' states).
    pub bird_socket: Option<PathBuf>,
}

/// `[pools.NAME]`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Pool {
    pub backends: Vec<BackendConfig>,
    pub health_check: Option<HealthCheck>,
    /// New and recovered backends ramp up to their weight over this time (zero: at once).
    pub slow_start: Duration,
    /// A removed backend drains this long first (zero: it goes at once).
    pub deregistration_delay: Duration,
}

/// `[pools.NAME.health_check]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HealthCheck {
    pub probe: ProbeKind,
    /// The port checked; when absent, the backend's port, or else its listeners' port.
    pub port: Option<u16>,
    pub interval: Duration,
    pub timeout: Duration,
    pub thresholds: Thresholds,
    /// When every backend is unhealthy, send to all of them anyway (as an AWS target group
    /// does); otherwise drop.
    pub fail_open: bool,
}

/// A backend of a pool.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BackendConfig {
    pub address: IpAddr,
    /// The port L7 listeners connect to; passthrough forwards to the listener's own port.
    pub port: Option<u16>,
    pub weight: u32,
    /// Bridging: the name its certificate must hold (and the SNI sent to it).
    pub server_name: Option<String>,
}

/// How a listener handles its clients' connections.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// The XDP program forwards the packets; TLS is never decrypted.
    Passthrough,
    /// The daemon terminates TLS and sends plain HTTP to the backends.
    Offload,
    /// The daemon terminates TLS and sends HTTP over TLS to the backends, verifying them.
    Bridging,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Passthrough => "passthrough",
            Self::Offload => "offload",
            Self::Bridging => "bridging",
        }
    }
}

/// `[listeners.NAME]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ListenerConfig {
    pub address: IpAddr,
    pub port: u16,
    pub protocol: Protocol,
    pub mode: Mode,
    pub pool: String,
    /// Offload and bridging: TLS, HTTP, backend side, stickiness.
    pub l7: Option<l7::L7Settings>,
}

impl ListenerConfig {
    /// The port this listener reaches `backend` on: passthrough forwards to its own port; an
    /// L7 listener to the backend's port, or else its `[backend] port`.
    pub fn backend_port(&self, backend: &BackendConfig) -> u16 {
        match &self.l7 {
            None => self.port,
            Some(l7) => backend.port.unwrap_or(l7.backend.port),
        }
    }

    /// The pools it forwards to: its own, then its rules' (each once).
    pub fn pools(&self) -> Vec<&str> {
        let mut pools = vec![self.pool.as_str()];
        for rule in self.l7.iter().flat_map(|l7| &l7.rules) {
            for pool in rule.pools() {
                if !pools.contains(&pool) {
                    pools.push(pool);
                }
            }
        }
        pools
    }

    /// Whether it forwards to pool `name` (its own, or a rule's).
    pub fn uses_pool(&self, name: &str) -> bool {
        self.pool == name
            || self
                .l7
                .iter()
                .flat_map(|l7| &l7.rules)
                .any(|rule| rule.pools().any(|p| p == name))
    }

    pub fn vip(&self) -> Vip {
        Vip {
            address: self.address,
            port: self.port,
            protocol: self.protocol,
        }
    }

    /// The addresses and ports the listener takes: its own, and its redirect port if any.
    pub fn bound_vips(&self) -> Vec<Vip> {
        let redirect = self.l7.as_ref().and_then(|l7| l7.redirect_http_port);
        std::iter::once(self.port)
            .chain(redirect)
            .map(|port| Vip { port, ..self.vip() })
            .collect()
    }
}

/// Defaults of `[datapath]` and `[control]`.
pub mod defaults {
    pub const RING_SIZE: u32 = lb_common::maps::DEFAULT_RING_SIZE;
    pub const HASH_SEED: u32 = 0x6c62_5eed;
    pub const CONN_TABLE_SIZE: u32 = lb_common::maps::DEFAULT_CONNS;
    pub const MAX_LISTENERS: u32 = 16;
    pub const PIN_DIR: &str = "/sys/fs/bpf/lb";
    pub const SOCKET: &str = "/run/lb/lb.sock";
    /// As Kubernetes' termination grace period: long enough for most requests and downloads
    /// to finish, short enough for an upgrade to end.
    pub const SHUTDOWN_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);
    /// The longest `shutdown_timeout`.
    pub const MAX_SHUTDOWN_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(3600);
    /// SYN-flood protection, per CPU: far above the new-flow rate one CPU serves in normal
    /// traffic, and far below what a flood brings (millions a second), so that a flood cannot
    /// churn a CPU's share of the connection table faster than once every few seconds.
    pub const CONN_INSERTS_PER_SEC: u32 = 20_000;
    /// As Katran: long-lived UDP flows rebalance after a scale-out within half a minute of
    /// silence.
    pub const UDP_IDLE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);
    /// Per CPU; Linux's own default for ICMP messages a second (`icmp_msgs_per_sec`).
    pub const ICMP_TOO_BIG_PER_SEC: u32 = 1000;
    /// `[announce]`: a table and protocol number that no Linux distribution or routing daemon
    /// uses by default (iproute2's `rt_tables` names 253-255; `rt_protos` names up to 192).
    pub const ANNOUNCE_TABLE: u32 = 200;
    pub const ANNOUNCE_PROTOCOL: u8 = 200;
    pub const ANNOUNCE_DEVICE: &str = "lbvip0";
    /// A few BGP update rounds of a hardware router, which take longer than the lab's
    /// sub-millisecond ones.
    pub const DRAIN_WAIT: std::time::Duration = std::time::Duration::from_secs(5);
    pub const MAX_DRAIN_WAIT: std::time::Duration = std::time::Duration::from_secs(600);
}

/// What the daemon finds on the host for the datapath settings the file leaves to it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HostDefaults {
    /// The MTU of a static next hop's link (the smallest of the interfaces').
    pub mtu: u32,
    /// The largest MTU of the interfaces: no packet off a wire is longer.
    pub ingress_mtu: u32,
    /// The outer source addresses when the file sets none: the kernel's preferred source
    /// toward the backends.
    pub encap_source_v4: Option<Ipv4Addr>,
    pub encap_source_v6: Option<Ipv6Addr>,
}

/// Everything wrong with a configuration file, one problem per line.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{}", .problems.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n"))]
pub struct ConfigError {
    pub problems: Vec<Problem>,
}

/// One problem: where, which field, and why.
#[derive(Debug, PartialEq, Eq)]
pub struct Problem {
    /// `file:line`, or the file alone when the position is unknown.
    pub location: String,
    /// The field's path, e.g. `listeners.web.port`.
    pub field: String,
    pub reason: String,
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.field.is_empty() {
            write!(f, "{}: {}", self.location, self.reason)
        } else {
            write!(f, "{}: {}: {}", self.location, self.field, self.reason)
        }
    }
}

impl Config {
    /// Reads and validates a file: a regular file that its group and others may not write
    /// (whoever may write it commands the balancer), checked on the open file.
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let origin = path.display().to_string();
        let refused = |reason: String| ConfigError {
            problems: vec![Problem {
                location: origin.clone(),
                field: String::new(),
                reason,
            }],
        };
        let bytes = crate::l7::files::read_public(path).map_err(|error| {
            refused(match error.reason.strip_prefix("cannot read it: ") {
                Some(io) => format!("cannot read the file: {io}"),
                None => error.reason,
            })
        })?;
        let text = String::from_utf8(bytes)
            .map_err(|_| refused("the file is not UTF-8 text".to_owned()))?;
        Self::parse(&text, &origin)
    }

    /// Validates `text`; `origin` names it in errors.
    pub fn parse(text: &str, origin: &str) -> Result<Self, ConfigError> {
        validate::parse(text, origin)
    }

    /// The passthrough listeners as the reconciler wants them.
    pub fn passthrough_listeners(&self) -> Vec<state::Listener> {
        self.listeners
            .iter()
            .filter(|(_, l)| l.mode == Mode::Passthrough)
            .map(|(name, listener)| state::Listener {
                name: name.clone(),
                vip: listener.vip(),
                targets: self.pools[&listener.pool]
                    .backends
                    .iter()
                    .map(|b| state::Target::new(b.address, b.weight))
                    .collect(),
            })
            .collect()
    }

    /// The shape of the ring map: two rings per listener.
    pub fn ring_geometry(&self) -> RingGeometry {
        RingGeometry {
            ring_size: self.datapath.ring_size,
            rings: 2 * self.datapath.max_listeners,
        }
    }

    /// The datapath's configuration entry: the file's settings, and `host`'s where it is
    /// silent (the MTU with a static next hop; the outer sources).
    pub fn datapath_config(&self, host: &HostDefaults) -> DatapathConfig {
        let d = &self.datapath;
        let (v4_base, v4_mask) = d
            .encap_source_v4
            .or(host.encap_source_v4.map(|a| (a, 32)))
            .map_or((0, 0), |(base, len)| (u32::from(base), host_mask(len, 32)));
        let (v6_base, v6_mask) = d
            .encap_source_v6
            .or(host.encap_source_v6.map(|a| (a, 128)))
            .map_or(([0; 4], 0), |(base, len)| {
                (addr_be(IpAddr::V6(base)).0, host_mask(len, 128))
            });
        let static_next_hop = d.next_hop_mac.is_some();
        // With the FIB, each route's MTU applies; the file's caps it.
        let default_mtu = if static_next_hop { host.mtu } else { 0 };
        let flags = [
            (static_next_hop, CONFIG_F_STATIC_NEXT_HOP),
            (d.icmp_to_backends, CONFIG_F_ICMP_TO_BACKENDS),
            (!d.egress_vlan.is_empty(), CONFIG_F_EGRESS_VLAN),
        ]
        .into_iter()
        .filter(|(on, _)| *on)
        .fold(0, |flags, (_, flag)| flags | flag);
        DatapathConfig {
            ring_size: d.ring_size,
            hash_seed: d.hash_seed,
            encap_src_v4_base: v4_base,
            encap_src_v4_mask: v4_mask,
            encap_src_v6_base_be: v6_base,
            encap_src_v6_mask: v6_mask,
            mtu: d.mtu.unwrap_or(default_mtu),
            next_hop_mac: Mac(d.next_hop_mac.unwrap_or_default()),
            flags,
            conn_inserts_per_sec: d.conn_inserts_per_sec,
            udp_idle_timeout_s: u32::try_from(d.udp_idle_timeout.as_secs()).unwrap_or(u32::MAX),
            icmp_too_big_per_sec: d.icmp_too_big_per_sec,
            ingress_mtu: host.ingress_mtu,
            ..DatapathConfig::default()
        }
    }

    /// Whether the daemon runs the packet path (the XDP program and its maps): it does for any
    /// interface or passthrough listener; a configuration of L7 listeners only loads nothing.
    pub fn has_packet_path(&self) -> bool {
        !self.datapath.interfaces.is_empty() || !self.passthrough_listeners().is_empty()
    }

    /// Where the health check of `backend` (in `pool`) connects, if the pool has one: the
    /// check's port, else the backend's, else its first listener's (by name).
    pub fn health_target(
        &self,
        pool: &str,
        backend: &BackendConfig,
    ) -> Option<std::net::SocketAddr> {
        let check = self.pools.get(pool)?.health_check.as_ref()?;
        let port = check.port.or(backend.port).or_else(|| {
            self.listeners
                .values()
                .find(|l| l.uses_pool(pool))
                .map(|l| l.backend_port(backend))
        })?;
        Some(std::net::SocketAddr::new(backend.address, port))
    }
}

/// The mask of the host bits of a `/len` prefix of an address `bits` long, limited to the last
/// 32 bits (the datapath varies at most the last word).
fn host_mask(len: u8, bits: u8) -> u32 {
    let host_bits = u32::from(bits - len).min(32);
    if host_bits == 32 {
        u32::MAX
    } else {
        (1u32 << host_bits) - 1
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FULL: &str = include_str!("../../tests/configs/good/full.toml");

    #[test]
    fn an_https_checks_ca_bundle_others_may_write_is_refused_with_the_fix() {
        use std::os::unix::fs::PermissionsExt as _;
        let health = include_str!("../../tests/configs/good/health.toml");
        let dir = std::env::temp_dir().join(format!("lb-health-ca-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let ca = dir.join("ca.pem");
        std::fs::write(&ca, include_str!("../../tests/configs/good/ca.pem")).unwrap();
        std::fs::set_permissions(&ca, std::fs::Permissions::from_mode(0o666)).unwrap();
        let text = health.replace("tests/configs/good/ca.pem", ca.to_str().unwrap());
        let error = Config::parse(&text, "health.toml").unwrap_err().to_string();
        std::fs::set_permissions(&ca, std::fs::Permissions::from_mode(0o644)).unwrap();
        let accepted = Config::parse(&text, "health.toml");
        drop(std::fs::remove_dir_all(&dir));
        assert!(error.contains("chmod go-w"), "{error}");
        accepted.unwrap();
    }

    #[test]
    fn a_full_file_becomes_listeners_and_a_datapath_configuration() {
        let config = Config::parse(FULL, "full.toml").unwrap();
        let listeners = config.passthrough_listeners();
        assert_eq!(listeners.len(), 3);
        let https = listeners.iter().find(|l| l.name == "https").unwrap();
        assert_eq!(https.vip.to_string(), "198.18.100.1:443/tcp");
        let weights: Vec<u32> = https.targets.iter().map(|t| t.weight).collect();
        assert_eq!(weights, [1, 2, 3]);

        let dp = config.datapath_config(&HostDefaults {
            mtu: 1500,
            ..HostDefaults::default()
        });
        assert_eq!(dp.ring_size, 65_537);
        assert_eq!(dp.hash_seed, 12_345);
        assert_eq!(dp.encap_src_v4_base, 0xc612_ff00);
        assert_eq!(dp.encap_src_v4_mask, 0xff);
        assert_eq!(dp.encap_src_v6_mask, 0xffff);
        assert_eq!(dp.mtu, 9000, "the file's MTU wins");
        assert_eq!(dp.next_hop_mac, Mac([2, 0, 0, 0, 0, 0xfe]));
        assert_eq!(
            dp.flags,
            CONFIG_F_STATIC_NEXT_HOP | CONFIG_F_EGRESS_VLAN,
            "ICMP to backends off, an egress VLAN"
        );
        assert_eq!(dp.udp_idle_timeout_s, 120);
        assert_eq!(dp.icmp_too_big_per_sec, 50);
        assert_eq!(config.datapath.egress_vlan["eth1"], 200);
        assert_eq!(config.ring_geometry().rings, 16);
    }

    #[test]
    fn defaults_apply_when_the_file_is_silent() {
        let text = include_str!("../../tests/configs/good/minimal.toml");
        let config = Config::parse(text, "minimal.toml").unwrap();
        assert_eq!(config.datapath.ring_size, defaults::RING_SIZE);
        assert_eq!(config.datapath.attach_mode, AttachMode::Auto);
        assert_eq!(config.control.socket, PathBuf::from(defaults::SOCKET));
        let host = HostDefaults {
            mtu: 1500,
            ingress_mtu: 1500,
            encap_source_v4: Some(Ipv4Addr::new(198, 18, 0, 2)),
            encap_source_v6: None,
        };
        let dp = config.datapath_config(&host);
        assert_eq!(dp.mtu, 0, "with the FIB, each route's MTU");
        assert_eq!(
            dp.flags, CONFIG_F_ICMP_TO_BACKENDS,
            "the FIB picks the next hop; ICMP errors go to the backends"
        );
        assert_eq!(
            (dp.encap_src_v4_base, dp.encap_src_v4_mask),
            (0xc612_0002, 0),
            "the host's address, not varied"
        );
        assert_eq!(dp.conn_inserts_per_sec, defaults::CONN_INSERTS_PER_SEC);
        assert_eq!(dp.udp_idle_timeout_s, 30);
        assert_eq!(dp.icmp_too_big_per_sec, defaults::ICMP_TOO_BIG_PER_SEC);
        assert_eq!(config.control.shutdown_timeout, defaults::SHUTDOWN_TIMEOUT);
        // A target group always has a health check: TCP on the traffic port, AWS's timings.
        let check = config.pools["p"]
            .health_check
            .as_ref()
            .expect("a default check");
        assert_eq!(check.probe, ProbeKind::Tcp);
        assert_eq!(
            (check.port, check.interval),
            (None, Duration::from_secs(30))
        );
        assert_eq!(check.timeout, Duration::from_secs(5));
        assert_eq!(
            (check.thresholds.healthy, check.thresholds.unhealthy),
            (5, 2)
        );
        assert!(check.fail_open);
        let target = config.health_target("p", &config.pools["p"].backends[0]);
        assert_eq!(target.unwrap().to_string(), "198.18.1.10:443");
    }

    #[test]
    fn a_pool_can_turn_its_health_check_off_or_ask_for_the_defaults() {
        let minimal = include_str!("../../tests/configs/good/minimal.toml");
        let with = |setting: &str| {
            let text = minimal.replace(
                "backends = [{ address = \"198.18.1.10\" }]",
                &format!("backends = [{{ address = \"198.18.1.10\" }}]\nhealth_check = {setting}"),
            );
            Config::parse(&text, "minimal.toml")
        };
        assert!(with("false").unwrap().pools["p"].health_check.is_none());
        let defaults = Config::parse(minimal, "minimal.toml").unwrap();
        assert_eq!(
            with("true").unwrap().pools["p"].health_check,
            defaults.pools["p"].health_check
        );
        let error = with("\"no\"").unwrap_err().to_string();
        assert!(
            error.contains("minimal.toml:7") && error.contains("false for none"),
            "{error}"
        );
    }

    #[test]
    fn a_check_written_out_checks_where_the_default_does() {
        // Two listeners of one pool on different ports, the backend without a port of its own:
        // the default check and a written-out one both take the first listener's port.
        let minimal = include_str!("../../tests/configs/good/minimal.toml");
        let two = format!(
            "{minimal}\n[listeners.k]\naddress = \"198.18.100.1\"\nport = 8443\nmode = \"passthrough\"\npool = \"p\"\n"
        );
        let written = two.replace(
            "backends = [{ address = \"198.18.1.10\" }]",
            "backends = [{ address = \"198.18.1.10\" }]\n[pools.p.health_check]\nprotocol = \"tcp\"",
        );
        for text in [&two, &written] {
            let config = Config::parse(text, "two.toml").unwrap_or_else(|e| panic!("{e}\n{text}"));
            let target = config.health_target("p", &config.pools["p"].backends[0]);
            assert_eq!(target.unwrap().to_string(), "198.18.1.10:8443", "{text}");
        }
    }

    #[test]
    fn l7_listeners_take_their_settings_and_defaults() {
        use l7::{BackendProtocol, BackendVerify, Balance, SameSite, TlsVersion};
        let text = include_str!("../../tests/configs/good/l7.toml");
        let config = Config::parse(text, "l7.toml").unwrap();
        assert_eq!(
            config.passthrough_listeners().len(),
            1,
            "only passthrough in the maps"
        );

        let web = &config.listeners["web"];
        assert_eq!(web.mode, Mode::Offload);
        let l7 = web.l7.as_ref().unwrap();
        assert_eq!(l7.tls.certificates.len(), 2);
        assert!(l7.tls.strict_sni);
        assert_eq!(l7.tls.min_version, TlsVersion::Tls13);
        assert_eq!(
            l7.tls.ticket_key_file.as_deref(),
            Some(Path::new("/etc/lb/tickets.keys"))
        );
        assert_eq!(l7.http.max_header_bytes, 32_768);
        assert_eq!(l7.http.idle_timeout, Duration::from_secs(120));
        assert_eq!(l7.backend.protocol, BackendProtocol::Http2);
        assert_eq!(l7.balance, Balance::RoundRobin);
        assert_eq!(l7.redirect_http_port, Some(80));
        assert!(l7.forwarded_header);
        let sticky = l7.sticky.as_ref().unwrap();
        assert_eq!(sticky.cookie, "srv");
        assert_eq!(sticky.duration, Duration::from_secs(7 * 24 * 3600));
        assert_eq!(sticky.same_site, Some(SameSite::Strict));
        assert!(!sticky.http_only);
        assert_eq!(
            web.bound_vips()
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>(),
            ["198.18.100.1:8443/tcp", "198.18.100.1:80/tcp"]
        );

        let bridge = &config.listeners["bridge"];
        let l7 = bridge.l7.as_ref().unwrap();
        assert_eq!(l7.balance, Balance::LeastOutstanding, "the default");
        assert_eq!(l7.tls.ticket_key_file, None, "keys of the process's own");
        assert_eq!(l7.http.max_connections, l7::l7_defaults::MAX_CONNECTIONS);
        assert_eq!(l7.backend.port, 443, "bridging's default backend port");
        let tls = l7.backend.tls.as_ref().unwrap();
        assert_eq!(
            tls.verify,
            BackendVerify::Ca("/etc/lb/backend-ca.pem".into())
        );
        assert!(tls.client_cert.is_some());
        let sticky = l7.sticky.as_ref().unwrap();
        assert_eq!(sticky.cookie, "lb_sticky");
        assert_eq!(sticky.duration, Duration::from_secs(1));
        assert!(sticky.secure && sticky.http_only);
        assert_eq!(sticky.same_site, Some(SameSite::Lax));
        let secure = &config.pools["secure"];
        assert_eq!(bridge.backend_port(&secure.backends[0]), 443);
        assert_eq!(bridge.backend_port(&secure.backends[1]), 8443);
        assert_eq!(
            secure.backends[0].server_name.as_deref(),
            Some("app-0.internal")
        );
        assert_eq!(
            config.listeners["web"].backend_port(&config.pools["app"].backends[0]),
            8080
        );
    }

    #[test]
    fn host_masks() {
        assert_eq!(host_mask(24, 32), 0xff);
        assert_eq!(host_mask(32, 32), 0);
        assert_eq!(host_mask(8, 32), 0x00ff_ffff);
        assert_eq!(host_mask(112, 128), 0xffff);
        assert_eq!(host_mask(64, 128), u32::MAX);
    }
}
