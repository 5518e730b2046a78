//! The control API between the `lb` CLI and the daemon: one JSON request per connection to a
//! Unix socket (mode 0600, or 0660 for a read-only group), one JSON response back.
//!
//! - this module: the [`Request`] and [`Response`] types and the views they carry;
//! - [`client`]: the CLI's side (blocking);
//! - [`server`]: the daemon's side (tokio), which hands each request to a handler;
//! - [`peer`]: who is connected, and what they may ask.

pub mod client;
pub mod peer;
pub mod server;

use std::net::{IpAddr, SocketAddr};

use serde::{Deserialize, Serialize};

use crate::state::Protocol;

/// Where the CLI finds the daemon unless told otherwise.
pub const DEFAULT_SOCKET: &str = crate::config::defaults::SOCKET;

/// What the CLI asks of the daemon.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "request", rename_all = "kebab-case")]
pub enum Request {
    ListListeners,
    ListBackends {
        pool: Option<String>,
    },
    AddBackend {
        pool: String,
        address: IpAddr,
        port: Option<u16>,
        weight: u32,
        /// Bridging: the name its certificate holds.
        #[serde(default)]
        server_name: Option<String>,
    },
    RemoveBackend {
        pool: String,
        address: IpAddr,
        port: Option<u16>,
    },
    SetWeight {
        pool: String,
        address: IpAddr,
        port: Option<u16>,
        weight: u32,
    },
    /// Stop sending new flows to a backend at once; keep its established flows for at most
    /// `timeout_ms`; then remove it from its pool.
    DrainBackend {
        pool: String,
        address: IpAddr,
        port: Option<u16>,
        timeout_ms: u64,
    },
    Stats,
    /// A one-screen summary.
    Status,
    /// Re-read the configuration file and apply what changed.
    Reload,
    /// Re-read every file the L7 listeners name (certificates, keys, CA bundles, cookie keys)
    /// and swap them in, all or nothing.
    ReloadFiles,
    Simulate {
        protocol: Protocol,
        client: SocketAddr,
        vip: SocketAddr,
    },
    /// `lb run --take-over`: a starting daemon asks for the listening sockets
    /// (`daemon::handover`).
    Handover,
    /// `lb node drain`: withdraw every announcement; `wait_ms` overrides the configured wait
    /// the answer names.
    NodeDrain {
        #[serde(default)]
        wait_ms: Option<u64>,
    },
    /// `lb node undrain`: announce again what can be served.
    NodeUndrain,
    /// `lb listener rules NAME`: an L7 listener's routing rules.
    ListRules {
        listener: String,
    },
    /// `lb simulate --listener NAME --url URL`: which rule, pool and backend a request would
    /// get.
    SimulateHttp {
        listener: String,
        method: String,
        url: String,
        #[serde(default)]
        headers: Vec<(String, String)>,
    },
    /// `lb capture`: the connection then carries the captured packets
    /// ([`crate::capture::Message`]) after the first answer.
    Capture(crate::capture::Spec),
}

impl Request {
    /// Whether the request only looks (the read-only group may ask it).
    pub fn is_read_only(&self) -> bool {
        match self {
            Self::ListListeners
            | Self::ListBackends { .. }
            | Self::Stats
            | Self::Status
            | Self::Simulate { .. }
            | Self::ListRules { .. }
            | Self::SimulateHttp { .. } => true,
            Self::AddBackend { .. }
            | Self::RemoveBackend { .. }
            | Self::SetWeight { .. }
            | Self::DrainBackend { .. }
            | Self::Reload
            | Self::ReloadFiles
            | Self::Handover
            | Self::NodeDrain { .. }
            | Self::NodeUndrain
            // Packets carry clients' addresses and data.
            | Self::Capture(_) => false,
        }
    }
}

/// The daemon's answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "outcome", content = "body", rename_all = "kebab-case")]
pub enum Response {
    Ok(Body),
    /// The request was refused or failed; nothing changed.
    Error(String),
}

/// The payload of a successful response.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", content = "data", rename_all = "kebab-case")]
pub enum Body {
    Listeners(Vec<ListenerView>),
    Backends(Vec<BackendView>),
    Changed(ChangeView),
    Stats(StatsView),
    Simulation(SimulationView),
    Status(Box<StatusView>),
    /// `lb node drain` and `lb node undrain`.
    Node(Box<NodeChange>),
    /// `lb capture`: the capture runs.
    Capture(crate::capture::Started),
    Rules(RulesView),
    HttpSimulation(HttpSimulationView),
}

/// An L7 listener's routing rules, in order, and its default pool.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RulesView {
    pub listener: String,
    pub rules: Vec<RuleView>,
    /// Where a request no rule takes goes.
    pub default_pool: String,
}

/// One rule, in words.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RuleView {
    /// From 1, in the order the rules are tried.
    pub position: usize,
    pub name: String,
    pub conditions: String,
    pub action: String,
    /// Its header changes, in words (empty: none).
    pub headers: String,
}

/// Where a request would go.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HttpSimulationView {
    pub listener: String,
    /// The rule that takes it; none: the listener's own pool.
    pub rule: Option<String>,
    pub action: String,
    /// A forward: the pool and the backend the next such request would go to now, if any
    /// takes requests (a new user's: a sticky one's is its cookie's).
    pub pool: Option<String>,
    pub backend: Option<SocketAddr>,
}

/// The node's announcements, for `lb status`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AnnounceView {
    pub device: String,
    pub table: u32,
    pub protocol: u8,
    /// Drained by `lb node drain`: nothing is announced.
    pub drained: bool,
    /// Each listener address: announced (in the table now) and why.
    pub addresses: Vec<AddressView>,
    /// Failed writes of the table (each logged), and the last one's reason.
    pub errors: u64,
    pub last_error: Option<String>,
    /// The routing daemon's sessions, when `bird_socket` is set.
    pub bird: Option<BirdView>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AddressView {
    pub address: IpAddr,
    pub announced: bool,
    pub reason: String,
}

/// The answer to `lb node drain` and `lb node undrain`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeChange {
    /// The addresses withdrawn (drain) or announced (undrain) by this request.
    pub changed: Vec<IpAddr>,
    /// How long the drain should wait for the routers, in milliseconds (the configured
    /// `drain_wait` unless the request set one).
    pub wait_ms: u64,
    pub view: AnnounceView,
}

/// One protocol of `show protocols`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoutingProtocol {
    pub name: String,
    /// `BGP`, `Kernel`, `Device`, ...
    pub kind: String,
    /// `up`, `start`, `down`, ...: a BGP session is up only when established.
    pub state: String,
    /// BIRD's detail: `Established`, `Active  Socket: Connection refused`, ...
    pub info: String,
}

impl RoutingProtocol {
    pub fn is_bgp(&self) -> bool {
        self.kind == "BGP"
    }

    pub fn is_up(&self) -> bool {
        self.state == "up"
    }
}

/// The last answer, or why there was none.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BirdView {
    pub socket: String,
    /// Seconds since the Unix epoch when BIRD was last asked.
    pub checked_at: u64,
    /// Why BIRD could not be asked (unreachable, an error answer); `None` when it answered.
    pub error: Option<String>,
    pub protocols: Vec<RoutingProtocol>,
}

impl BirdView {
    /// The BGP sessions and whether each is established.
    pub fn sessions(&self) -> impl Iterator<Item = &RoutingProtocol> {
        self.protocols.iter().filter(|p| p.is_bgp())
    }
}

/// `lb status`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusView {
    pub version: String,
    pub uptime_secs: u64,
    pub config: Option<String>,
    pub interfaces: Vec<String>,
    pub listeners: usize,
    /// Backends per state (healthy, unhealthy, draining, disabled, ejected).
    pub backends: Vec<(String, usize)>,
    /// Forwarded, passed and dropped packets, connection-table hits, misses and skipped
    /// inserts.
    pub packets: Vec<(String, u64)>,
    /// Control operations so far: ok, refused, failed.
    pub operations: Vec<(String, u64)>,
    /// The L7 listeners together: open connections, requests, 5xx responses.
    #[serde(default)]
    pub l7: Vec<(String, u64)>,
    pub metrics: Option<String>,
    /// The XDP datapath's set-up on this host (absent when the daemon runs without one).
    #[serde(default)]
    pub datapath: Option<DatapathView>,
    /// What this node announces to its routers (absent without `[announce]`).
    #[serde(default)]
    pub announce: Option<AnnounceView>,
}

/// The XDP datapath's set-up, as `lb status` shows it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DatapathView {
    /// The interfaces the balancer runs on, and how.
    pub interfaces: Vec<InterfaceView>,
    /// The interfaces encapsulated packets may be redirected to (the attached ones, and those
    /// the routes toward the backends leave through).
    pub redirect_interfaces: Vec<String>,
    /// CPUs the kernel may run (each has its own copy of the per-CPU maps and counters).
    pub possible_cpus: u32,
    /// Flows each connection table (IPv4, IPv6) holds, as allocated: the configured size
    /// rounded up to a power of two.
    pub conn_table_entries: u32,
    /// New connection-table entries a second per CPU before a flood stops being remembered
    /// (0: no limit).
    pub conn_inserts_per_sec: u32,
    /// UDP flows idle this long are placed afresh (0: never).
    pub udp_idle_timeout_secs: u64,
    pub icmp_to_backends: bool,
    pub icmp_too_big_per_sec: u32,
    /// The outer source prefixes in use.
    pub encap_sources: Vec<String>,
    /// Backends behind multipath routes (each of their packets asks the FIB).
    pub multipath_backends: Vec<IpAddr>,
}

/// An interface the balancer runs on.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct InterfaceView {
    pub name: String,
    /// `driver`, `generic`, ... as the kernel reports it.
    pub attach_mode: String,
}

/// A listener as `lb listener list` shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListenerView {
    pub name: String,
    pub address: IpAddr,
    pub port: u16,
    pub protocol: Protocol,
    pub mode: String,
    pub pool: String,
    /// Backends in the pool that take new flows (weight above 0).
    pub active_backends: usize,
    /// The slots of its Maglev table; 0 for an L7 listener (it has none).
    pub ring_size: u32,
    /// How it picks backends: "Maglev, 65537 slots", "least outstanding requests, sticky".
    #[serde(default)]
    pub balancing: String,
    /// Passthrough: the interfaces the XDP program runs on and how (`driver`, `generic`).
    #[serde(default)]
    pub attach_modes: Vec<(String, String)>,
    /// Passthrough: a digest of the live Maglev table by backend address, the same on every
    /// node with the same configuration and backend states (empty for an L7 listener).
    #[serde(default)]
    pub table_digest: String,
}

/// A backend as `lb backend list` shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackendView {
    pub pool: String,
    pub address: IpAddr,
    pub port: Option<u16>,
    pub weight: u32,
    /// `healthy`, `unhealthy` (failing its health check), `draining` (until a drain ends),
    /// `disabled` (weight 0) or `ejected` (healthy, but left out of an L7 listener's new
    /// requests by passive health for a while).
    pub state: String,
    /// Why the state last changed, and when (seconds since the Unix epoch).
    pub reason: Option<String>,
    pub since: Option<u64>,
    /// Slots of the pool's Maglev table this backend holds (the same for every passthrough
    /// listener of the pool), out of `ring_size`; both 0 for a pool with no passthrough
    /// listener (the L7 listeners balance by request, with no table).
    pub table_slots: u32,
    pub ring_size: u32,
    pub listeners: Vec<String>,
    /// While `ejected`: the seconds until it takes new requests again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ejected_for_s: Option<u64>,
}

/// What a change did.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChangeView {
    /// What changed, in words.
    pub summary: String,
    /// Listeners whose tables were rewritten.
    pub listeners: Vec<String>,
    /// Time from receiving the request to the last map write, in microseconds.
    pub applied_us: u64,
}

/// `lb stats`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatsView {
    pub counters: Vec<CounterView>,
    /// Each listener's traffic: its total (backends that left included) and its current
    /// backends' (each counted since it last joined).
    pub listeners: Vec<ListenerStatsView>,
    /// Traffic of listeners that were removed: with the listeners' totals, everything the
    /// balancer forwarded to backends.
    #[serde(default)]
    pub removed_listeners: Traffic,
    /// The L7 listeners' counters.
    #[serde(default)]
    pub l7: Vec<L7StatsView>,
}

/// An L7 listener's connections, requests and responses.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct L7StatsView {
    pub name: String,
    pub mode: String,
    pub open_connections: u64,
    /// Events by label (`requests`, `retries`, `sticky_hits`, ...).
    pub events: Vec<(String, u64)>,
    /// Responses by status class (`1xx` to `5xx`).
    pub responses: Vec<(String, u64)>,
}

/// One datapath counter.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CounterView {
    pub name: String,
    /// `forward`, `pass`, `drop` or `event`.
    pub kind: String,
    pub value: u64,
}

/// Traffic of a listener and of each of its backends.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListenerStatsView {
    pub name: String,
    pub traffic: Traffic,
    pub backends: Vec<(IpAddr, Traffic)>,
}

/// Packets, bytes and new flows.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Traffic {
    pub packets: u64,
    pub bytes: u64,
    pub new_flows: u64,
}

impl From<lb_common::abi::TrafficCounters> for Traffic {
    fn from(t: lb_common::abi::TrafficCounters) -> Self {
        Self {
            packets: t.packets,
            bytes: t.bytes,
            new_flows: t.new_flows,
        }
    }
}

/// Where a packet of a flow would go, and why.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SimulationView {
    pub listener: String,
    /// Where the flow's next packet goes.
    pub backend: IpAddr,
    /// `connection table` (an established flow) or `Maglev slot N` (a new flow).
    pub reason: String,
    /// Where a new connection (a SYN) with this 5-tuple would go: the Maglev pick.
    pub new_connection_backend: IpAddr,
    pub maglev_slot: u32,
}
