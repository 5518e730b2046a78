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
        /// A client packet too big to encapsulate toward its backend, answered with an ICMP
        /// "fragmentation needed" (IPv4) or "packet too big" (IPv6) carrying the MTU to use.
        TxIcmpTooBig = (Forward, "tx_icmp_too_big"),
        /// Not IPv4 or IPv6 (ARP, LLDP, ..., or more than two VLAN tags).
        PassNotIp = (Pass, "pass_not_ip"),
        /// IP, but not to any VIP (address, port, protocol).
        PassNotVip = (Pass, "pass_not_vip"),
        /// A frame whose headers cannot be read in full (truncated, inconsistent, an IPv6
        /// extension chain longer than the parser walks) and that is not provably addressed to
        /// a passthrough VIP: the kernel judges it, as it would without the balancer.
        PassMalformed = (Pass, "pass_malformed"),
        /// A fragment addressed to a VIP address that this host also serves (L7 listeners or
        /// other services) and not provably to a passthrough port: the kernel reassembles it.
        PassFragment = (Pass, "pass_fragment"),
        /// ICMP to a VIP address that is not an error about a passthrough flow (echo, ...), or
        /// any ICMP while `icmp_to_backends` is off: the kernel's.
        PassIcmp = (Pass, "pass_icmp"),
        /// The FIB knows the next hop but not its MAC yet: the encapsulated packet goes to the
        /// kernel, which resolves the neighbour and forwards it (needs IP forwarding on).
        PassNoNeighbour = (Pass, "pass_no_neighbour"),
        /// The FIB names an egress interface that is not in the devmap: the encapsulated
        /// packet, still addressed to this host, goes to the kernel to forward (slowly).
        PassNoTxPort = (Pass, "pass_no_tx_port"),
        /// An IPv4 header length below 20 bytes or past the end of the frame, to a
        /// passthrough VIP address.
        DropBadIhl = (Drop, "drop_bad_ihl"),
        /// IP total length (or IPv6 payload length) larger than the frame, or smaller than
        /// the headers it must hold, to a passthrough VIP address.
        DropBadLength = (Drop, "drop_bad_length"),
        /// A fragment of a passthrough flow (or to a passthrough-only VIP address). Policy:
        /// dropped, because only the first fragment carries the ports that choose the backend.
        DropFragment = (Drop, "drop_fragment"),
        /// An IPv6 extension header is truncated, or the chain is longer than the walk allows,
        /// to a passthrough VIP address.
        DropBadExtHeader = (Drop, "drop_bad_ext_header"),
        /// Shorter than its TCP or UDP header, to a passthrough VIP address.
        DropTruncatedL4 = (Drop, "drop_truncated_l4"),
        /// TCP data offset below 5 words, or past the end of the packet, to a passthrough VIP
        /// address.
        DropBadTcpOffset = (Drop, "drop_bad_tcp_offset"),
        /// The VIP has no backend.
        DropNoBackend = (Drop, "drop_no_backend"),
        /// The encapsulated packet would exceed the egress MTU, and no ICMP answer applies
        /// (IPv4 without "don't fragment", answers off, or a packet too short to quote).
        DropTooBig = (Drop, "drop_too_big"),
        /// A client packet too big to encapsulate, not answered because this CPU already sent
        /// `icmp_too_big_per_sec` answers this second.
        DropIcmpRateLimited = (Drop, "drop_icmp_rate_limited"),
        /// A packet longer than the interfaces' MTU: a TSO/GSO aggregate a virtual peer handed
        /// over whole (seen in generic mode). XDP cannot split it, and an ICMP answer would not
        /// help: turn segmentation offloads off on the peer, or attach in driver mode.
        DropOversized = (Drop, "drop_oversized"),
        /// The frame could not be grown or shrunk for the headers it needs.
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
        /// A UDP flow idle for longer than `udp_idle_timeout`: placed afresh.
        ConnExpired = (Event, "conn_expired"),
        /// A new flow that could not be written to the connection table (it is still
        /// forwarded; its next packet is placed by the table again).
        ConnInsertFailed = (Event, "conn_insert_failed"),
        /// A new flow not written to the connection table because new flows arrive faster
        /// than `conn_inserts_per_sec` (a SYN flood): forwarded by the table, not remembered.
        ConnInsertSkipped = (Event, "conn_insert_skipped"),
        /// A new flow took the slot of the flow seen longest ago in its bucket of the
        /// connection table (all the bucket's slots were taken): that flow is forgotten, and
        /// its next packet is placed by the Maglev table. Steady under load once the table is
        /// full; make `conn_table_size` larger if it climbs while the table is not.
        ConnEvicted = (Event, "conn_evicted"),
        /// A TCP RST of a flow the connection table does not hold: forwarded by the table,
        /// never remembered (a reset ends a connection; it must not start an entry).
        ConnRstNotRemembered = (Event, "conn_rst_not_remembered"),
        /// An ICMP error about a passthrough flow, sent to the flow's backend (it also counts
        /// as a forwarded packet of that backend).
        IcmpToBackend = (Event, "icmp_to_backend"),
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
        /// An IP-in-IP packet whose inner destination is not a VIP this backend accepts.
        DropNotVip = (Drop, "drop_not_vip"),
        /// A fragment of an IP-in-IP packet: XDP cannot reassemble, and this kernel has no
        /// tunnel driver that could (keep the path MTU behind the balancer large enough).
        DropOuterFragment = (Drop, "drop_outer_fragment"),
        /// The outer header says congestion experienced (CE) but the inner packet is not
        /// ECN-capable: RFC 6040 says drop (the sender cannot be told otherwise).
        DropEcnNotEct = (Drop, "drop_ecn_not_ect"),
        /// Congestion experienced (CE) on the outer header, copied to the inner one (RFC 6040).
        EcnCe = (Event, "ecn_ce"),
    }
}
