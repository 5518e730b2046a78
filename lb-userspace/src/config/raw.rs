//! The configuration file as written: serde structs that mirror the TOML, with every unknown
//! key rejected and the position of each value kept for error messages. `validate` turns them
//! into the typed [`super::Config`].

use std::collections::BTreeMap;

use serde::Deserialize;
use toml::Spanned;

/// The whole file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    #[serde(default)]
    pub datapath: RawDatapath,
    #[serde(default)]
    pub control: RawControl,
    #[serde(default)]
    pub metrics: RawMetrics,
    /// `[announce]`: absent, the node announces nothing.
    pub announce: Option<RawAnnounce>,
    /// `[access_log]`: absent, no access log.
    pub access_log: Option<RawAccessLog>,
    #[serde(default)]
    pub pools: BTreeMap<Spanned<String>, RawPool>,
    #[serde(default)]
    pub listeners: BTreeMap<Spanned<String>, RawListener>,
}

/// `[datapath]`: the XDP balancer.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDatapath {
    #[serde(default)]
    pub interfaces: Vec<Spanned<String>>,
    pub attach_mode: Option<Spanned<String>>,
    pub ring_size: Option<Spanned<i64>>,
    pub hash_seed: Option<Spanned<i64>>,
    pub conn_table_size: Option<Spanned<i64>>,
    pub max_listeners: Option<Spanned<i64>>,
    pub encap_source_v4: Option<Spanned<String>>,
    pub encap_source_v6: Option<Spanned<String>>,
    pub mtu: Option<Spanned<i64>>,
    pub next_hop_mac: Option<Spanned<String>>,
    pub pin_dir: Option<Spanned<String>>,
    pub conn_inserts_per_sec: Option<Spanned<i64>>,
    /// A duration: UDP flows idle this long are placed afresh ("0s": never).
    pub udp_idle_timeout: Option<Spanned<String>>,
    pub icmp_to_backends: Option<Spanned<bool>>,
    pub icmp_too_big_per_sec: Option<Spanned<i64>>,
    /// `[datapath.egress_vlan]`: interface name -> VLAN id (0: untagged).
    #[serde(default)]
    pub egress_vlan: BTreeMap<Spanned<String>, Spanned<i64>>,
}

/// `[control]`: the daemon's control socket.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawControl {
    pub socket: Option<Spanned<String>>,
    pub shutdown_timeout: Option<Spanned<String>>,
    pub read_only_group: Option<Spanned<String>>,
}

/// `[announce]`: routes for a routing daemon (BIRD) to announce, one per listener address this
/// node can serve.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAnnounce {
    pub table: Option<Spanned<i64>>,
    pub protocol: Option<Spanned<i64>>,
    pub device: Option<Spanned<String>>,
    pub drain_wait: Option<Spanned<String>>,
    pub bird_socket: Option<Spanned<String>>,
}

/// `[access_log]`: the L7 listeners' access log.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAccessLog {
    /// An absolute path, or "-" for the daemon's standard output.
    pub path: Option<Spanned<String>>,
    /// "json" (the default) or "text".
    pub format: Option<Spanned<String>>,
    /// The fraction of lines without an error that are written (0 < sample <= 1).
    pub sample: Option<Spanned<f64>>,
}

/// `[metrics]`: the Prometheus endpoint.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawMetrics {
    pub listen: Option<Spanned<String>>,
    /// Also serve the status page (`/status`) there.
    pub status_page: Option<Spanned<bool>>,
}

/// `[pools.NAME]`: a set of backends that listeners forward to.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPool {
    #[serde(default)]
    pub backends: Vec<Spanned<RawBackend>>,
    /// A table (`[pools.NAME.health_check]`), or `false` for none (`true`: the defaults).
    pub health_check: Option<Spanned<RawHealthSetting>>,
    /// A duration ("30s"): new and recovered backends ramp up to their weight over it.
    pub slow_start: Option<Spanned<String>>,
    /// A duration: a removed backend drains this long before it goes.
    pub deregistration_delay: Option<Spanned<String>>,
}

/// `health_check`: a table of settings, or a bool (`false`: no check; `true`: the defaults).
#[derive(Debug)]
pub enum RawHealthSetting {
    Enabled(bool),
    Check(Box<RawHealthCheck>),
}

impl<'de> Deserialize<'de> for RawHealthSetting {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Setting;
        impl<'de> serde::de::Visitor<'de> for Setting {
            type Value = RawHealthSetting;

            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a table of health check settings, or false for none")
            }

            fn visit_bool<E: serde::de::Error>(self, on: bool) -> Result<Self::Value, E> {
                Ok(RawHealthSetting::Enabled(on))
            }

            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                map: A,
            ) -> Result<Self::Value, A::Error> {
                // The table's own deserializer, so that its fields keep their spans.
                RawHealthCheck::deserialize(serde::de::value::MapAccessDeserializer::new(map))
                    .map(|check| RawHealthSetting::Check(Box::new(check)))
            }
        }
        deserializer.deserialize_any(Setting)
    }
}

/// `[pools.NAME.health_check]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHealthCheck {
    pub protocol: Option<Spanned<String>>,
    pub port: Option<Spanned<i64>>,
    pub path: Option<Spanned<String>>,
    pub host: Option<Spanned<String>>,
    pub expected_status: Option<Spanned<String>>,
    pub server_name: Option<Spanned<String>>,
    pub ca_file: Option<Spanned<String>>,
    pub interval: Option<Spanned<String>>,
    pub timeout: Option<Spanned<String>>,
    pub healthy_threshold: Option<Spanned<i64>>,
    pub unhealthy_threshold: Option<Spanned<i64>>,
    pub fail_open: Option<Spanned<bool>>,
}

/// One entry of `backends = [...]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawBackend {
    pub address: Spanned<String>,
    pub port: Option<Spanned<i64>>,
    pub weight: Option<Spanned<i64>>,
    /// Bridging: the name this backend's certificate holds.
    pub server_name: Option<Spanned<String>>,
}

/// `[listeners.NAME]`: an address and port clients connect to, and how to handle them.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawListener {
    pub address: Spanned<String>,
    pub port: Spanned<i64>,
    pub protocol: Option<Spanned<String>>,
    pub mode: Spanned<String>,
    pub pool: Spanned<String>,
    // The L7 listeners' settings (`super::l7`).
    pub tls: Option<Spanned<RawTls>>,
    pub http: Option<Spanned<RawL7Http>>,
    pub backend: Option<Spanned<RawL7Backend>>,
    pub sticky: Option<Spanned<RawSticky>>,
    pub balance: Option<Spanned<String>>,
    pub redirect_http_port: Option<Spanned<i64>>,
    pub forwarded_header: Option<Spanned<bool>>,
    /// Sources (prefixes) whose connections start with a PROXY protocol header.
    pub proxy_protocol_from: Option<Spanned<Vec<Spanned<String>>>>,
    /// Routing rules, in order (`super::rules`).
    pub rules: Option<Spanned<Vec<Spanned<super::rules::RawRule>>>>,
}

/// `[listeners.NAME.tls]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTls {
    #[serde(default)]
    pub certificates: Vec<Spanned<RawCertFiles>>,
    pub strict_sni: Option<Spanned<bool>>,
    pub min_version: Option<Spanned<String>>,
    pub ticket_key_file: Option<Spanned<String>>,
}

/// `{ cert = "...", key = "..." }`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCertFiles {
    pub cert: Spanned<String>,
    pub key: Spanned<String>,
}

/// `[listeners.NAME.http]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawL7Http {
    pub max_header_bytes: Option<Spanned<i64>>,
    pub header_read_timeout: Option<Spanned<String>>,
    pub idle_timeout: Option<Spanned<String>>,
    pub client_timeout: Option<Spanned<String>>,
    pub min_upload_rate: Option<Spanned<i64>>,
    pub max_body_bytes: Option<Spanned<i64>>,
    pub max_connections: Option<Spanned<i64>>,
    pub h2_max_concurrent_streams: Option<Spanned<i64>>,
    pub h2_max_resets_per_second: Option<Spanned<i64>>,
}

/// `[listeners.NAME.backend]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawL7Backend {
    pub port: Option<Spanned<i64>>,
    pub protocol: Option<Spanned<String>>,
    pub connect_timeout: Option<Spanned<String>>,
    pub response_timeout: Option<Spanned<String>>,
    pub server_timeout: Option<Spanned<String>>,
    pub outlier_failures: Option<Spanned<i64>>,
    pub h2_ping_interval: Option<Spanned<String>>,
    pub h2_ping_timeout: Option<Spanned<String>>,
    pub outlier_ejection: Option<Spanned<String>>,
    pub ca_file: Option<Spanned<String>>,
    pub server_name: Option<Spanned<String>>,
    pub client_cert: Option<Spanned<String>>,
    pub client_key: Option<Spanned<String>>,
    pub dangerously_skip_verification: Option<Spanned<bool>>,
    /// "v2": each connection to a backend starts with a PROXY protocol header.
    pub proxy_protocol: Option<Spanned<String>>,
}

/// `[listeners.NAME.sticky]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSticky {
    pub cookie: Option<Spanned<String>>,
    pub duration: Option<Spanned<String>>,
    pub key_file: Option<Spanned<String>>,
    pub path: Option<Spanned<String>>,
    pub http_only: Option<Spanned<bool>>,
    pub secure: Option<Spanned<bool>>,
    pub same_site: Option<Spanned<String>>,
    pub sliding: Option<Spanned<bool>>,
    pub cors_cookie: Option<Spanned<bool>>,
}
