//! `lb capture`: packets as the XDP balancer handles them, with their verdict, reason, listener
//! and backend, to a pcapng file, as Katran's xdpdump and Cilium's recorder do.
//!
//! ```text
//! lb capture ──(control socket: Request::Capture)──> daemon
//!   controller: filter map, per-CPU state zeroed, CONFIG_F_CAPTURE set
//!   XDP program: outcome matched against the filter, within the per-CPU rate -> capture ring
//!   session (this module): ring -> labelled records (JSON lines) -> the CLI -> pcapng
//! ```
//!
//! - this module: what a capture asks for ([`Spec`], [`Verdict`]), the filter the datapath
//!   reads ([`kernel_filter`]), the records in the ring ([`RingRecord`]) and on the wire
//!   ([`Message`]);
//! - [`control`]: the filter and state maps, which the daemon's controller owns; the session
//!   that reads the ring and streams to the CLI is the daemon's (`daemon::capture`): one
//!   capture at a time, which ends when the count is reached, the CLI goes away or the daemon
//!   stops, and always turns the capture off;
//! - [`pcapng`]: the file (a section, an interface per ingress interface, an enhanced packet
//!   block per record with its outcome as the packet's comment), and a reader for tests.
//!
//! Off, a capture costs the datapath the test of one bit of its configuration (measured by
//! `lb bench xdp` against the code before capture existed: see the README). On, each recorded
//! packet costs a copy of its first `snaplen` bytes into the ring; the per-CPU rate bounds the
//! total.

pub mod control;
pub mod pcapng;

use std::{collections::BTreeMap, net::IpAddr};

use lb_common::{
    abi::{CAPTURE_F_BACKEND, CAPTURE_F_VIP, CAPTURE_SNAPLEN_MAX, CaptureFilter, CaptureMeta},
    counters::Counter,
};
use serde::{Deserialize, Serialize};

use crate::config::l7::Prefix;

/// Why a daemon without a packet path captures nothing.
pub const NO_PACKET_PATH: &str = "this daemon runs no XDP program (no [datapath] interfaces or \
     no passthrough listener): there is nothing to capture; L7 listeners' packets are the \
     kernel's (tcpdump)";

/// XDP actions, as the kernel numbers them.
const XDP_ABORTED: u32 = 0;
const XDP_DROP: u32 = 1;
const XDP_PASS: u32 = 2;
const XDP_TX: u32 = 3;
const XDP_REDIRECT: u32 = 4;

/// Bytes of each frame recorded unless told otherwise: a full 1500-byte frame with its
/// encapsulation and tags.
pub const DEFAULT_SNAPLEN: u32 = CAPTURE_SNAPLEN_MAX;
/// Packets recorded per second on each CPU unless told otherwise.
pub const DEFAULT_PER_CPU_RATE: u32 = 10_000;
/// The highest per-CPU rate a capture may ask for.
pub const MAX_PER_CPU_RATE: u32 = 1_000_000;

/// Which outcomes a capture records.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Encapsulated to a backend, or answered (an ICMP too-big answer): `XDP_TX` or
    /// `XDP_REDIRECT`.
    Forward,
    /// Handed to the kernel.
    Pass,
    /// Dropped.
    Drop,
    /// Counted by this counter only (`drop_no_backend`, `pass_not_vip`, ...).
    Reason(Counter),
}

impl std::str::FromStr for Verdict {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        match text {
            "forward" => Ok(Self::Forward),
            "pass" => Ok(Self::Pass),
            "drop" => Ok(Self::Drop),
            reason => verdict_counters()
                .find(|counter| counter.label() == reason)
                .map(Self::Reason)
                .ok_or_else(|| {
                    let reasons: Vec<&str> = verdict_counters().map(Counter::label).collect();
                    format!(
                        "{text:?} is not a verdict: forward, pass, drop, or a reason: {}",
                        reasons.join(", ")
                    )
                }),
        }
    }
}

impl std::fmt::Display for Verdict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Forward => "forward",
            Self::Pass => "pass",
            Self::Drop => "drop",
            Self::Reason(counter) => counter.label(),
        })
    }
}

impl Serialize for Verdict {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Verdict {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        String::deserialize(deserializer)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

/// The counters a packet's verdict can be (not the connection-table events).
fn verdict_counters() -> impl Iterator<Item = Counter> {
    Counter::ALL
        .iter()
        .copied()
        .filter(|counter| counter.kind() != lb_common::counters::CounterKind::Event)
}

/// What `lb capture` asks for.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Spec {
    /// Only this passthrough listener's packets.
    #[serde(default)]
    pub listener: Option<String>,
    /// Only packets of clients in this prefix.
    #[serde(default)]
    pub client: Option<Prefix>,
    #[serde(default)]
    pub verdict: Option<Verdict>,
    /// Stop after this many packets.
    #[serde(default)]
    pub count: Option<u64>,
    pub snaplen: u32,
    pub per_cpu_rate: u32,
}

impl Spec {
    /// Whether the numbers are in range; the reason if not.
    pub fn check(&self) -> Result<(), String> {
        if !(1..=CAPTURE_SNAPLEN_MAX).contains(&self.snaplen) {
            return Err(format!(
                "snaplen {} is not 1 to {CAPTURE_SNAPLEN_MAX} bytes",
                self.snaplen
            ));
        }
        if !(1..=MAX_PER_CPU_RATE).contains(&self.per_cpu_rate) {
            return Err(format!(
                "rate {} is not 1 to {MAX_PER_CPU_RATE} packets per second per CPU",
                self.per_cpu_rate
            ));
        }
        if self.count == Some(0) {
            return Err("count 0 would record nothing".to_owned());
        }
        Ok(())
    }
}

/// The datapath's filter for `spec`, `vip_id` being its listener's.
pub fn kernel_filter(spec: &Spec, vip_id: Option<u32>) -> CaptureFilter {
    let bit = |action: u32| 1u8 << action;
    let all = bit(XDP_ABORTED) | bit(XDP_DROP) | bit(XDP_PASS) | bit(XDP_TX) | bit(XDP_REDIRECT);
    let (action_mask, counter) = match spec.verdict {
        None => (all, 0),
        Some(Verdict::Forward) => (bit(XDP_TX) | bit(XDP_REDIRECT), 0),
        Some(Verdict::Pass) => (bit(XDP_PASS), 0),
        Some(Verdict::Drop) => (bit(XDP_DROP) | bit(XDP_ABORTED), 0),
        Some(Verdict::Reason(counter)) => (all, counter.index() + 1),
    };
    let mut filter = CaptureFilter {
        action_mask,
        counter,
        snaplen: spec.snaplen,
        per_cpu_rate: spec.per_cpu_rate,
        match_vip: u8::from(vip_id.is_some()),
        vip_id: vip_id.unwrap_or(0),
        ..CaptureFilter::default()
    };
    if let Some(prefix) = spec.client {
        let (family, network, mask) = words(prefix);
        filter.client_family = family;
        filter.client_be = network;
        filter.client_mask_be = mask;
    }
    filter
}

/// A prefix as the datapath compares it: family tag, network and mask, in network byte
/// order, IPv4 in the first word.
fn words(prefix: Prefix) -> (u8, [u32; 4], [u32; 4]) {
    let be = |bytes: &[u8]| -> [u32; 4] {
        let mut words = [0u32; 4];
        for (word, chunk) in words.iter_mut().zip(bytes.chunks(4)) {
            *word = u32::from_ne_bytes(chunk.try_into().unwrap_or([0; 4]));
        }
        words
    };
    match prefix.network() {
        IpAddr::V4(network) => {
            let mask = u32::MAX
                .checked_shl(32 - u32::from(prefix.len))
                .unwrap_or(0);
            (
                lb_common::abi::FAMILY_V4,
                be(&network.octets()),
                be(&mask.to_be_bytes()),
            )
        }
        IpAddr::V6(network) => {
            let mask = u128::MAX
                .checked_shl(128 - u32::from(prefix.len))
                .unwrap_or(0);
            (
                lb_common::abi::FAMILY_V6,
                be(&network.octets()),
                be(&mask.to_be_bytes()),
            )
        }
    }
}

/// One record as the datapath wrote it to the ring.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RingRecord {
    pub meta: CaptureMeta,
    pub data: Vec<u8>,
}

impl RingRecord {
    /// Reads a record; `None` if it is shorter than its head says.
    pub fn parse(bytes: &[u8]) -> Option<Self> {
        let head = bytes.get(..size_of::<CaptureMeta>())?;
        let word = |at: usize| -> Option<u32> {
            Some(u32::from_ne_bytes(head.get(at..at + 4)?.try_into().ok()?))
        };
        let meta = CaptureMeta {
            time_ns: u64::from_ne_bytes(head.get(..8)?.try_into().ok()?),
            len: word(8)?,
            cap_len: word(12)?,
            ifindex: word(16)?,
            rx_queue: word(20)?,
            action: word(24)?,
            counter: word(28)?,
            vip_id: word(32)?,
            backend_id: word(36)?,
            flags: word(40)?,
            _pad: 0,
        };
        let data = bytes
            .get(size_of::<CaptureMeta>()..)?
            .get(..meta.cap_len as usize)?
            .to_vec();
        Some(Self { meta, data })
    }

    /// The listener and backend ids the record names, if the packet got that far.
    pub fn ids(&self) -> (Option<u32>, Option<u32>) {
        let flag = |bit: u32, id: u32| (self.meta.flags & bit != 0).then_some(id);
        (
            flag(CAPTURE_F_VIP, self.meta.vip_id),
            flag(CAPTURE_F_BACKEND, self.meta.backend_id),
        )
    }
}

/// The name of an XDP action.
pub fn action_name(action: u32) -> &'static str {
    match action {
        XDP_ABORTED => "aborted",
        XDP_DROP => "drop",
        XDP_PASS => "pass",
        XDP_TX => "tx",
        XDP_REDIRECT => "redirect",
        _ => "unknown",
    }
}

/// What the controller names the datapath's ids by: listeners by VIP id, backends by backend
/// id (`listener/address`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Labels {
    pub listeners: BTreeMap<u32, String>,
    pub backends: BTreeMap<u32, String>,
}

/// One recorded packet, as the daemon sends it to the CLI.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Packet {
    /// When the datapath recorded it: nanoseconds since the Unix epoch.
    pub time_ns: u64,
    pub ifindex: u32,
    /// The ingress interface's name (empty if it is gone).
    pub interface: String,
    pub rx_queue: u32,
    /// The frame's length, of which `data` holds the first bytes (base64).
    pub len: u32,
    pub action: String,
    /// The XDP action's number (for the file's `epb_verdict`).
    #[serde(default)]
    pub xdp_action: u32,
    /// The verdict's counter (`tx_redirect`, `drop_no_backend`, ...).
    pub reason: String,
    pub listener: Option<String>,
    pub backend: Option<String>,
    pub data: String,
}

impl Packet {
    /// The packet's comment in the pcapng file: its outcome.
    pub fn comment(&self) -> String {
        let mut comment = format!("action={} reason={}", self.action, self.reason);
        if let Some(listener) = &self.listener {
            comment.push_str(&format!(" listener={listener}"));
        }
        if let Some(backend) = &self.backend {
            comment.push_str(&format!(" backend={backend}"));
        }
        comment
    }
}

/// How a capture went, per the datapath's per-CPU accounting.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Summary {
    /// Packets that matched the filter.
    pub matched: u64,
    /// Of them, written to the ring; and those sent to the CLI.
    pub recorded: u64,
    pub sent: u64,
    /// Not recorded: over the per-CPU rate, or the ring was full (the daemon fell behind).
    pub over_rate: u64,
    pub ring_full: u64,
    /// Not recorded: the frame could not be copied.
    #[serde(default)]
    pub copy_failed: u64,
    /// Why the capture ended.
    pub ended: String,
}

/// What follows the daemon's first answer on a capture's connection, one JSON line each.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "kebab-case")]
pub enum Message {
    Packet(Packet),
    End(Summary),
}

/// The daemon's first answer to a capture, once the filter is in place.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Started {
    /// The filter in words, for the CLI to say what it records.
    pub filter: String,
}

/// The filter in words.
pub fn describe(spec: &Spec) -> String {
    let mut parts = Vec::new();
    if let Some(listener) = &spec.listener {
        parts.push(format!("listener {listener}"));
    }
    if let Some(client) = &spec.client {
        parts.push(format!("clients in {client}"));
    }
    if let Some(verdict) = &spec.verdict {
        parts.push(format!("verdict {verdict}"));
    }
    if parts.is_empty() {
        parts.push("every packet".to_owned());
    }
    format!(
        "{}; {} bytes of each, at most {} a second per CPU",
        parts.join(", "),
        spec.snaplen,
        spec.per_cpu_rate
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> Spec {
        Spec {
            listener: None,
            client: None,
            verdict: None,
            count: None,
            snaplen: DEFAULT_SNAPLEN,
            per_cpu_rate: DEFAULT_PER_CPU_RATE,
        }
    }

    #[test]
    fn verdicts_parse_by_kind_or_reason_and_name_the_choices() {
        assert_eq!("forward".parse(), Ok(Verdict::Forward));
        assert_eq!("drop".parse(), Ok(Verdict::Drop));
        assert_eq!(
            "drop_no_backend".parse(),
            Ok(Verdict::Reason(Counter::DropNoBackend))
        );
        let error = "conn_hit".parse::<Verdict>().unwrap_err();
        assert!(error.contains("pass_not_vip"), "{error}");
        assert!(
            !error.contains("conn_hit,"),
            "an event is no verdict: {error}"
        );
    }

    #[test]
    fn the_filter_masks_actions_and_the_client_prefix() {
        let mut spec = spec();
        spec.verdict = Some(Verdict::Forward);
        spec.client = Some("10.1.0.0/16".parse().unwrap());
        let filter = kernel_filter(&spec, Some(7));
        assert_eq!(filter.action_mask, (1 << XDP_TX) | (1 << XDP_REDIRECT));
        assert_eq!((filter.match_vip, filter.vip_id, filter.counter), (1, 7, 0));
        assert_eq!(filter.client_family, lb_common::abi::FAMILY_V4);
        assert_eq!(filter.client_be[0].to_ne_bytes(), [10, 1, 0, 0]);
        assert_eq!(filter.client_mask_be[0].to_ne_bytes(), [255, 255, 0, 0]);
        assert_eq!(&filter.client_mask_be[1..], &[0, 0, 0]);

        spec.client = Some("2001:db8::/33".parse().unwrap());
        spec.verdict = Some(Verdict::Reason(Counter::PassNotVip));
        let filter = kernel_filter(&spec, None);
        assert_eq!(filter.match_vip, 0);
        assert_eq!(filter.counter, Counter::PassNotVip.index() + 1);
        assert_eq!(filter.action_mask, 0x1f);
        assert_eq!(filter.client_mask_be[0], u32::MAX);
        assert_eq!(filter.client_mask_be[1].to_ne_bytes(), [0x80, 0, 0, 0]);
        assert_eq!(filter.client_be[0].to_ne_bytes(), [0x20, 0x01, 0x0d, 0xb8]);

        spec.client = Some("0.0.0.0/0".parse().unwrap());
        let filter = kernel_filter(&spec, None);
        assert_eq!(filter.client_mask_be, [0; 4]);
    }

    #[test]
    fn out_of_range_numbers_are_refused() {
        let mut bad = spec();
        bad.snaplen = 0;
        assert!(bad.check().unwrap_err().contains("snaplen 0"));
        bad.snaplen = CAPTURE_SNAPLEN_MAX + 1;
        assert!(bad.check().is_err());
        let mut bad = spec();
        bad.per_cpu_rate = MAX_PER_CPU_RATE + 1;
        assert!(bad.check().unwrap_err().contains("rate"));
        let mut bad = spec();
        bad.count = Some(0);
        assert!(bad.check().is_err());
        assert_eq!(spec().check(), Ok(()));
    }

    #[test]
    fn ring_records_parse_and_short_ones_are_refused() {
        let meta = CaptureMeta {
            time_ns: 5,
            len: 100,
            cap_len: 3,
            ifindex: 2,
            rx_queue: 0,
            action: XDP_TX,
            counter: 0,
            vip_id: 4,
            backend_id: 9,
            flags: CAPTURE_F_VIP,
            _pad: 0,
        };
        let mut bytes = Vec::new();
        for word in [
            meta.len,
            meta.cap_len,
            meta.ifindex,
            meta.rx_queue,
            meta.action,
            meta.counter,
            meta.vip_id,
            meta.backend_id,
            meta.flags,
            0,
        ] {
            bytes.extend_from_slice(&word.to_ne_bytes());
        }
        bytes.splice(0..0, meta.time_ns.to_ne_bytes());
        bytes.extend_from_slice(&[1, 2, 3]);
        let record = RingRecord::parse(&bytes).unwrap();
        assert_eq!(record.meta, meta);
        assert_eq!(record.data, [1, 2, 3]);
        assert_eq!(record.ids(), (Some(4), None));
        assert_eq!(RingRecord::parse(&bytes[..bytes.len() - 1]), None);
        assert_eq!(RingRecord::parse(&bytes[..20]), None);
    }

    #[test]
    fn specs_travel_as_json() {
        let mut spec = spec();
        spec.listener = Some("web".to_owned());
        spec.client = Some("2001:db8::/32".parse().unwrap());
        spec.verdict = Some(Verdict::Reason(Counter::DropNoBackend));
        let json = serde_json::to_string(&spec).unwrap();
        assert!(json.contains("\"drop_no_backend\""), "{json}");
        assert!(json.contains("\"2001:db8::/32\""), "{json}");
        assert_eq!(serde_json::from_str::<Spec>(&json).unwrap(), spec);
        let bad = json.replace("drop_no_backend", "nonsense");
        assert!(serde_json::from_str::<Spec>(&bad).is_err());
    }
}
