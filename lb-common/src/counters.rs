//! Per-CPU event counters: one per verdict reason, plus connection-table events.
//!
//! Every packet the balancer sees counts exactly one *verdict* (a `Tx*`, `Pass*` or `Drop*`
//! reason), so the verdicts sum to the packets seen. The connection-table counters (`ConnHit`,
//! `ConnMiss`, `ConnStale`) count lookups, not packets.
//!
//! Two counters are not kept by the datapath, to keep the forwarding path at one counter
//! update per packet ([`Counter::is_derived`]): userspace computes `TxLocal` and `ConnHit` from
//! the per-backend traffic counters. The decapsulation program has its own, smaller set:
//! [`DecapCounter`].

/// What a counter counts, for display and for checking that verdicts add up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CounterKind {
    /// The packet was encapsulated and sent to a backend.
    Forward,
    /// The packet went to the kernel.
    Pass,
    /// The packet was dropped.
    Drop,
    /// A connection-table event (not a verdict).
    Event,
}

macro_rules! counters {
    ($(#[$meta:meta])* $name:ident { $($(#[$vmeta:meta])* $variant:ident = ($kind:ident, $label:literal),)* }) => {
        $(#[$meta])*
        #[repr(u32)]
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum $name {
            $($(#[$vmeta])* $variant,)*
        }

        impl $name {
            /// Every counter, in index order.
            pub const ALL: &'static [Self] = &[$(Self::$variant,)*];
            /// Number of counters: the size of the counter map.
            #[expect(clippy::cast_possible_truncation, reason = "a few dozen counters")]
            pub const COUNT: u32 = Self::ALL.len() as u32;

            /// The index of this counter in the counter map.
            #[inline(always)]
            pub const fn index(self) -> u32 {
                self as u32
            }

            /// A stable snake_case name for output and metrics.
            pub const fn label(self) -> &'static str {
                match self {
                    $(Self::$variant => $label,)*
                }
            }

            /// Whether this is a verdict (and which) or an event.
            pub const fn kind(self) -> CounterKind {
                match self {
                    $(Self::$variant => CounterKind::$kind,)*
                }
            }
        }
    };
}

counters! {
    /// Counters of the balancer program.
    Counter {
        /// Encapsulated and sent back out of the interface it came in on (`XDP_TX`). Derived:
        /// forwarded packets minus `tx_redirect`.
        TxLocal = (Forward, "tx_local"),
        /// Encapsulated and redirected to another interface through the devmap.
        TxRedirect = (Forward, "tx_redirect"),
        /// Not IPv4 or IPv6 (ARP, LLDP, ...).
        PassNotIp = (Pass, "pass_not_ip"),
        /// IP, but not to any VIP (address, port, protocol).
        PassNotVip = (Pass, "pass_not_vip"),
        /// The FIB knows the next hop but not its MAC yet: the encapsulated packet goes to the
        /// kernel, which resolves the neighbour and forwards it (needs IP forwarding on).
        PassNoNeighbour = (Pass, "pass_no_neighbour"),
        /// The FIB names an egress interface that is not in the devmap: the encapsulated
        /// packet goes to the kernel to forward.
        PassNoTxPort = (Pass, "pass_no_tx_port"),
        /// Shorter than an Ethernet header.
        DropTruncatedEth = (Drop, "drop_truncated_eth"),
        /// Shorter than its IPv4 or IPv6 header.
        DropTruncatedIp = (Drop, "drop_truncated_ip"),
        /// IP version field disagrees with the EtherType.
        DropBadIpVersion = (Drop, "drop_bad_ip_version"),
        /// IPv4 header length below 20 bytes, or past the end of the frame.
        DropBadIhl = (Drop, "drop_bad_ihl"),
        /// IP total length (or IPv6 payload length) larger than the frame, or smaller than
        /// the headers it must hold.
        DropBadLength = (Drop, "drop_bad_length"),
        /// A fragment addressed to a VIP address. Policy: dropped, because only the first
        /// fragment carries the ports that choose the backend.
        DropFragment = (Drop, "drop_fragment"),
        /// An IPv6 extension header is truncated, or the chain is longer than the walk allows.
        DropBadExtHeader = (Drop, "drop_bad_ext_header"),
        /// Shorter than its TCP or UDP header.
        DropTruncatedL4 = (Drop, "drop_truncated_l4"),
        /// TCP data offset below 5 words, or past the end of the packet.
        DropBadTcpOffset = (Drop, "drop_bad_tcp_offset"),
        /// The VIP has no backend.
        DropNoBackend = (Drop, "drop_no_backend"),
        /// The encapsulated packet would exceed the egress MTU.
        DropTooBig = (Drop, "drop_too_big"),
        /// The frame could not be grown for the outer header.
        DropEncapFailed = (Drop, "drop_encap_failed"),
        /// The FIB has no route to the backend (or refused the lookup).
        DropNoRoute = (Drop, "drop_no_route"),
        /// IP forwarding is off on the ingress interface, so the FIB refuses to route
        /// (`sysctl net.ipv4.conf.IF.forwarding=1`, `net.ipv6.conf.IF.forwarding=1`).
        DropForwardingDisabled = (Drop, "drop_forwarding_disabled"),
        /// Internal inconsistency: a map entry that should exist did not.
        DropMapMiss = (Drop, "drop_map_miss"),
        /// A forwarded packet of a flow found in the connection table. Derived: forwarded
        /// packets minus new flows.
        ConnHit = (Event, "conn_hit"),
        /// A flow not in the connection table (or a SYN), placed by the Maglev table.
        ConnMiss = (Event, "conn_miss"),
        /// A flow whose connection-table backend was removed: placed afresh.
        ConnStale = (Event, "conn_stale"),
        /// A new flow that could not be written to the connection table (it is still
        /// forwarded; its next packet is placed by the table again).
        ConnInsertFailed = (Event, "conn_insert_failed"),
        /// A new flow not written to the connection table because new flows arrive faster
        /// than `conn_inserts_per_sec` (a SYN flood): forwarded by the table, not remembered.
        ConnInsertSkipped = (Event, "conn_insert_skipped"),
    }
}

impl Counter {
    /// Whether userspace computes this counter instead of the datapath keeping it.
    pub const fn is_derived(self) -> bool {
        matches!(self, Self::TxLocal | Self::ConnHit)
    }
}

counters! {
    /// Counters of the decapsulation program that runs on backends.
    DecapCounter {
        /// IPv4-in-IPv4 packet decapsulated and passed to the kernel.
        DecapV4 = (Forward, "decap_v4"),
        /// IPv6-in-IPv6 packet decapsulated and passed to the kernel.
        DecapV6 = (Forward, "decap_v6"),
        /// Anything that is not IP-in-IP, passed untouched.
        PassOther = (Pass, "pass_other"),
        /// An IP-in-IP packet whose outer or inner header is truncated or inconsistent.
        DropMalformed = (Drop, "drop_malformed"),
    }
}
