//! What the metrics endpoint reports: [`MetricsInput`], a plain snapshot the daemon gathers from
//! its controller at scrape time, and the sample types it holds.
//!
//! Nothing here depends on the rest of the crate: the daemon converts its own views (the
//! datapath counters, `lb stats`' traffic, the health of each backend, the control operations
//! it has answered) into these values, and [`render`](super::render()) turns them into the
//! exposition. Counters are cumulative values as read at scrape time, not deltas.

/// Everything the metrics endpoint reports, gathered by the daemon at scrape time.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct MetricsInput {
    /// The balancer's datapath counters, one per counter label (`lb_common::counters::Counter`).
    pub counters: Vec<CounterSample>,
    /// Traffic of each listener, and of each of its backends.
    pub listeners: Vec<ListenerTraffic>,
    /// Health of each backend of each pool.
    pub backends: Vec<BackendHealthSample>,
    /// Control-plane operations answered so far, per operation and result.
    pub operations: Vec<OperationSample>,
    /// The L7 listeners' connections, events and responses.
    pub l7: Vec<L7Sample>,
    /// Seconds since the daemon started.
    pub uptime_seconds: f64,
    /// The XDP datapath's set-up, when the daemon runs one.
    pub datapath: Option<DatapathSample>,
    /// What the node announces to its routers, with `[announce]`.
    pub announce: Option<AnnounceSample>,
    /// (passthrough listener, digest of its live table): nodes that should agree and do not
    /// show different digests.
    pub table_digests: Vec<(String, String)>,
}

/// The node's announcements and its routing daemon's sessions.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AnnounceSample {
    /// (address, announced now).
    pub addresses: Vec<(String, bool)>,
    pub drained: bool,
    /// Failed writes of the announcement table.
    pub errors: u64,
    /// Whether BIRD answered when last asked (`None` without `bird_socket`).
    pub routing_daemon_up: Option<bool>,
    /// (BGP protocol, established).
    pub sessions: Vec<(String, bool)>,
}

/// The XDP datapath's set-up: how it runs on each interface, and its connection table's size.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DatapathSample {
    /// (interface, attach mode: `driver`, `generic`, ...).
    pub interfaces: Vec<(String, String)>,
    pub possible_cpus: u32,
    /// Flows each connection table holds, as allocated.
    pub conn_table_entries: u32,
}

/// One datapath counter, as `lb stats` shows it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CounterSample {
    /// The counter's stable label, e.g. `drop_too_big` or `conn_miss`.
    pub name: String,
    /// `forward`, `pass` or `drop` for a verdict (one per packet); `event` for a
    /// connection-table event, which is reported in its own metric family.
    pub kind: String,
    pub value: u64,
}

/// Packets, bytes and new flows, cumulative.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Traffic {
    pub packets: u64,
    pub bytes: u64,
    pub new_flows: u64,
}

/// A listener's traffic in total and per backend.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ListenerTraffic {
    /// The listener's name in the configuration.
    pub listener: String,
    /// The listener's total, over all its backends (past and present).
    pub total: Traffic,
    pub backends: Vec<BackendTraffic>,
}

/// One backend's share of a listener's traffic.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BackendTraffic {
    /// The backend's address as text: `198.18.0.10`, `2001:db8::10` or `198.18.0.10:8443`.
    pub backend: String,
    pub traffic: Traffic,
}

/// Where a backend stands, as far as new flows are concerned.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum HealthState {
    /// Passes its checks and takes new flows.
    Healthy,
    /// Fails its checks: out of the table.
    Unhealthy,
    /// Weight 0: no new flows, its established flows stay.
    Draining,
    /// Taken out by the operator.
    Disabled,
    /// Healthy, but left out of the L7 listeners' new requests by passive health for a while.
    Ejected,
}

impl HealthState {
    /// Every state, in the order the exposition lists them.
    pub const ALL: [Self; 5] = [
        Self::Healthy,
        Self::Unhealthy,
        Self::Draining,
        Self::Disabled,
        Self::Ejected,
    ];

    /// The state as a label value.
    pub const fn label(self) -> &'static str {
        match self {
            Self::Healthy => "healthy",
            Self::Unhealthy => "unhealthy",
            Self::Draining => "draining",
            Self::Disabled => "disabled",
            Self::Ejected => "ejected",
        }
    }
}

/// One backend's health and how often it changed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BackendHealthSample {
    pub pool: String,
    /// The backend's address as text, as in [`BackendTraffic::backend`].
    pub backend: String,
    pub state: HealthState,
    /// Transitions so far, per target state. A state left out counts 0; a state given twice
    /// is summed.
    pub transitions: Vec<(HealthState, u64)>,
}

/// How often a control operation ended one way.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct OperationSample {
    /// The operation, e.g. `backend-add`, `backend-remove`, `backend-set-weight`.
    pub operation: String,
    /// `ok`, `refused` (the change broke a rule: nothing written) or `failed` (writing failed).
    pub result: String,
    pub count: u64,
}

/// An L7 listener's counters.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct L7Sample {
    pub listener: String,
    pub open_connections: u64,
    /// Events by label: `requests`, `retries`, `sticky_hits`, ...
    pub events: Vec<(String, u64)>,
    /// Responses by status class: `2xx`, `5xx`, ...
    pub responses: Vec<(String, u64)>,
}
