//! Keys and values of the BPF maps.
//!
//! Every type is `#[repr(C)]`, has its padding spelled out as named fields (so that a key hashes
//! the same whoever builds it: padding bytes are always zero), and has its size checked at
//! compile time. Addresses and ports are stored exactly as the packet carries them, in network
//! byte order, and the field names say so (`_be`). An IPv4 address sits in the first word of a
//! 16-byte address; the other three words are zero.

/// Address family tags used in keys (not the kernel's `AF_*` numbers, which differ by family).
pub const FAMILY_V4: u8 = 4;
/// See [`FAMILY_V4`].
pub const FAMILY_V6: u8 = 6;

/// IP protocol numbers the balancer forwards.
pub const PROTO_TCP: u8 = 6;
/// See [`PROTO_TCP`].
pub const PROTO_UDP: u8 = 17;

/// A 16-byte address in network byte order, IPv4 in the first word.
pub type AddrBe = [u32; 4];

/// A listener's (address, port, protocol), as userspace names it. The datapath keeps IPv4 and
/// IPv6 VIPs in two maps with compact keys ([`VipKeyV4`], [`VipKeyV6`]); this is their common
/// form.
///
/// An entry with port 0 and protocol 0 is the *address marker* of a VIP address: it exists
/// whenever any listener uses the address, and lets the datapath apply the fragment policy to
/// packets whose ports it cannot read.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct VipKey {
    pub addr_be: AddrBe,
    pub port_be: u16,
    pub proto: u8,
    pub family: u8,
}

impl VipKey {
    /// The address marker entry for `addr_be` (see the type's documentation).
    #[inline(always)]
    pub const fn address_marker(addr_be: AddrBe, family: u8) -> Self {
        Self {
            addr_be,
            port_be: 0,
            proto: 0,
            family,
        }
    }
}

/// Key of the IPv4 VIP map.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct VipKeyV4 {
    pub addr_be: u32,
    pub port_be: u16,
    pub proto: u8,
    pub _pad: u8,
}

/// Key of the IPv6 VIP map.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct VipKeyV6 {
    pub addr_be: AddrBe,
    pub port_be: u16,
    pub proto: u8,
    pub _pad: u8,
}

impl VipKey {
    /// The IPv4 map's key for this VIP (meaningful when `family` is [`FAMILY_V4`]).
    #[inline(always)]
    pub const fn v4(&self) -> VipKeyV4 {
        VipKeyV4 {
            addr_be: self.addr_be[0],
            port_be: self.port_be,
            proto: self.proto,
            _pad: 0,
        }
    }

    /// The IPv6 map's key for this VIP.
    #[inline(always)]
    pub const fn v6(&self) -> VipKeyV6 {
        VipKeyV6 {
            addr_be: self.addr_be,
            port_be: self.port_be,
            proto: self.proto,
            _pad: 0,
        }
    }
}

/// Value of the VIP maps.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VipValue {
    /// Index of this VIP's counters, and part of its flows' connection-table keys. Below
    /// `maps::MAX_VIPS`, which fits 16 bits.
    pub vip_id: u32,
    /// Which Maglev ring is live: the table starts at `ring_id * ring_size` in the ring map.
    /// Userspace writes a new table into a spare ring and then flips this field, so that no
    /// packet ever sees a half-written table.
    pub ring_id: u32,
    /// `VIP_F_*` bits.
    pub flags: u32,
    pub _pad: u32,
}

/// The entry is an address marker, not a listener: see [`VipKey`].
pub const VIP_F_ADDRESS_MARKER: u32 = 1;
/// On an address marker: the address is assigned to this host, which serves more than the
/// passthrough listeners on it (L7 listeners, other services). Fragments and frames the
/// datapath cannot read that are addressed to it go to the kernel instead of being dropped.
pub const VIP_F_LOCAL: u32 = 2;

/// A flow's 5-tuple as the client sent it: what the flow hash hashes. (The connection tables
/// key flows more compactly: [`ConnKeyV4`], [`ConnKeyV6`].)
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FlowKey {
    pub src_be: AddrBe,
    pub dst_be: AddrBe,
    pub src_port_be: u16,
    pub dst_port_be: u16,
    pub proto: u8,
    pub family: u8,
    pub _pad: [u8; 2],
}

/// Key of the IPv4 connection table. A flow is its client's address and port within one VIP
/// (the VIP id stands for the destination address, port and protocol): 8 bytes, so that a
/// table entry fits one cache line.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct ConnKeyV4 {
    pub src_be: u32,
    pub src_port_be: u16,
    pub vip_id: u16,
}

/// Key of the IPv6 connection table; see [`ConnKeyV4`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct ConnKeyV6 {
    pub src_be: AddrBe,
    pub src_port_be: u16,
    pub vip_id: u16,
}

impl FlowKey {
    /// The IPv4 connection-table key of this flow to VIP `vip_id`.
    #[inline(always)]
    pub const fn conn_v4(&self, vip_id: u16) -> ConnKeyV4 {
        ConnKeyV4 {
            src_be: self.src_be[0],
            src_port_be: self.src_port_be,
            vip_id,
        }
    }

    /// The IPv6 connection-table key of this flow to VIP `vip_id`.
    #[inline(always)]
    pub const fn conn_v6(&self, vip_id: u16) -> ConnKeyV6 {
        ConnKeyV6 {
            src_be: self.src_be,
            src_port_be: self.src_port_be,
            vip_id,
        }
    }
}

/// Value of the connection tables: the backend a flow was placed on. Eight bytes, so that an
/// IPv4 entry (kernel header, key and value) stays within one cache line.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ConnValue {
    /// Below `maps::MAX_BACKENDS`, which fits 16 bits.
    pub backend_id: u16,
    /// The backend's generation when the flow was placed (generations stay below 2^16: see
    /// [`Backend::generation`]). A backend id that was freed and given to a new backend gets a
    /// new generation, so old flows never follow the id to a stranger.
    pub generation: u16,
    /// When the flow was last seen, in whole seconds of the kernel's monotonic clock
    /// ([`coarse_seconds`]), of which a slot keeps the low [`crate::conn::SEEN_BITS`]. UDP
    /// entries idle for longer than [`DatapathConfig::udp_idle_timeout_s`] are placed afresh;
    /// an insert into a full bucket takes the slot seen longest ago.
    pub seen_s: u32,
}

/// Seconds of `bpf_ktime_get_coarse_ns()`, as [`ConnValue::seen_s`] records them (wraps
/// after 136 years of uptime).
#[inline(always)]
pub const fn coarse_seconds(ns: u64) -> u32 {
    #[expect(clippy::cast_possible_truncation, reason = "136 years of uptime")]
    let seconds = (ns / 1_000_000_000) as u32;
    seconds
}

/// Value of the backend map, indexed by backend id.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Backend {
    /// Where encapsulated packets go.
    pub addr_be: AddrBe,
    /// See [`ConnValue::generation`]. Zero is never a live generation, and userspace keeps
    /// generations below 2^16 ([`MAX_GENERATION`]) so that the connection table's 16-bit copy
    /// is exact.
    pub generation: u32,
    pub family: u8,
    /// `BACKEND_F_*` bits.
    pub flags: u8,
    /// The VIP this backend serves (backend ids are per listener): lets a restarted daemon
    /// tell from the maps alone which backends belong to which VIP.
    pub vip_id: u16,
}

/// Established flows on this backend keep going to it. Cleared when a backend is removed (its
/// flows are then placed afresh by the current table); kept while it drains.
pub const BACKEND_F_SERVING: u8 = 1;
/// The route to this backend has several next hops (ECMP): the datapath asks the FIB for every
/// packet instead of caching one next hop per backend, so that each flow keeps the next hop
/// the kernel's multipath hash gives it.
pub const BACKEND_F_MULTIPATH: u8 = 2;

/// The largest backend generation: generations run from 1 to this and wrap around.
pub const MAX_GENERATION: u32 = u16::MAX as u32;

/// The ring value of a slot that has no backend (a VIP whose pool is empty).
pub const RING_EMPTY: u32 = u32::MAX;

/// A MAC address. Aligned to 2 bytes, as it is in every frame and map value that holds one, so
/// that the datapath copies it as three 16-bit words rather than six bytes.
#[repr(C, align(2))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Mac(pub [u8; 6]);

/// The single entry of the configuration map: deployment-wide datapath settings.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DatapathConfig {
    /// Size of every Maglev ring (a prime). Fixed for the lifetime of the ring map.
    pub ring_size: u32,
    /// Seed of the flow hash, shared by every balancer of a deployment.
    pub hash_seed: u32,
    /// Outer IPv4 source: `base | (flow_hash & mask)`, both in host byte order.
    pub encap_src_v4_base: u32,
    pub encap_src_v4_mask: u32,
    /// Outer IPv6 source: `base`, with its last word varied as `base[3] | (flow_hash & mask)`.
    pub encap_src_v6_base_be: AddrBe,
    pub encap_src_v6_mask: u32,
    /// Largest outer IP packet (bytes) the egress link carries; 0 disables the check.
    pub mtu: u32,
    /// With `CONFIG_F_STATIC_NEXT_HOP`, every encapsulated frame goes back out of the interface
    /// it came in on, to this MAC address, instead of the next hop `bpf_fib_lookup` names.
    pub next_hop_mac: Mac,
    /// `CONFIG_F_*` bits.
    pub flags: u16,
    /// Bumped by userspace after every change to the VIP maps: the datapath's per-CPU VIP cache
    /// ([`VipCacheEntry`]) trusts only entries of the current epoch.
    pub vip_epoch: u32,
    /// Connection-table protection: at most this many new entries per second on each CPU
    /// (0: no limit). Past it (a SYN flood) new flows are still placed by the table but not
    /// remembered, so that they cannot evict established flows.
    pub conn_inserts_per_sec: u32,
    /// UDP connection-table entries idle for longer than this many seconds are placed afresh
    /// (0: never), so that long-lived UDP flows rebalance after a scale-out.
    pub udp_idle_timeout_s: u32,
    /// At most this many ICMP "fragmentation needed" / "packet too big" answers per second on
    /// each CPU (0: none; too-big packets are dropped and counted).
    pub icmp_too_big_per_sec: u32,
    /// The largest MTU of the interfaces the balancer runs on (0: unknown). A packet longer
    /// cannot have come off a wire: it is a TSO/GSO aggregate that a virtual peer handed over
    /// whole (generic mode), which no ICMP answer would help.
    pub ingress_mtu: u32,
    /// Seed of the connection tables' hash ([`crate::conn`]): random, chosen when the tables
    /// are created and kept with them (in [`crate::maps::CONN_SEED`]); this is the program's
    /// copy.
    pub conn_seed: u32,
    /// The connection tables' bucket count minus one (a power of two minus one).
    pub conn_bucket_mask: u32,
    pub _pad: u32,
}

/// Per CPU: the events of the current one-second window of a rate limit
/// ([`RATE_WINDOW_INSERTS`], [`RATE_WINDOW_ICMP`]).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RateWindow {
    /// `bpf_ktime_get_coarse_ns()` when the window began.
    pub start_ns: u64,
    pub events: u64,
}

/// The rate window of connection-table inserts ([`DatapathConfig::conn_inserts_per_sec`]).
pub const RATE_WINDOW_INSERTS: u32 = 0;
/// The rate window of ICMP too-big answers ([`DatapathConfig::icmp_too_big_per_sec`]).
pub const RATE_WINDOW_ICMP: u32 = 1;
/// Number of rate windows.
pub const RATE_WINDOWS: u32 = 2;

/// One entry of the datapath's per-CPU VIP cache, which spares most packets a hash-map lookup.
/// It remembers the answer for one (address, port, protocol), found or not found, as of one VIP
/// epoch. Owned by the datapath; userspace only invalidates it (by bumping the epoch).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VipCacheEntry {
    pub key: VipKey,
    /// The [`DatapathConfig::vip_epoch`] the answer is valid for.
    pub epoch: u32,
    pub value: VipValue,
    /// 1 if the key is a VIP (`value` is its entry), 0 if it is not.
    pub found: u32,
    pub _pad: u32,
}

/// Entries of the per-CPU VIP cache (a power of two).
pub const VIP_CACHE_SIZE: u32 = 256;

/// A backend's next hop as the FIB last gave it, cached per CPU for [`NEXT_HOP_TTL_NS`] so that
/// most packets skip the FIB lookup.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NextHop {
    /// `bpf_ktime_get_coarse_ns()` after which the entry is stale (0: never filled).
    pub expires_ns: u64,
    pub ifindex: u32,
    /// The generation of the backend it was looked up for: an id given to a new backend
    /// never inherits the old one's next hop.
    pub generation: u32,
    pub smac: Mac,
    pub dmac: Mac,
    /// The largest IP packet the route carries (the FIB's MTU for it).
    pub mtu: u16,
    pub _pad: u16,
}

/// How long a cached next hop is used before the FIB is asked again: a neighbour change
/// (a router failing over) reaches the datapath within this time.
pub const NEXT_HOP_TTL_NS: u64 = 50_000_000;

/// Send to [`DatapathConfig::next_hop_mac`] instead of asking the FIB.
pub const CONFIG_F_STATIC_NEXT_HOP: u16 = 1;
/// ICMP errors about a passthrough flow (IPv4 destination unreachable, which carries
/// "fragmentation needed"; ICMPv6 destination unreachable and packet too big) go to the flow's
/// backend, so that path MTU discovery works through the balancer. Off: they go to the kernel.
pub const CONFIG_F_ICMP_TO_BACKENDS: u16 = 2;
/// Some interface has an egress VLAN setting (the egress VLAN map): look it up for every
/// forwarded frame. Off: frames leave with the tags they arrived with.
pub const CONFIG_F_EGRESS_VLAN: u16 = 4;

/// A packet capture (`lb capture`) is running: every packet's outcome goes through the
/// capture filter ([`CaptureFilter`]) and, if it matches, into the capture ring. Off, the
/// capture costs the test of this bit.
pub const CONFIG_F_CAPTURE: u16 = 8;

/// What a running capture records (the capture filter map's one entry), written by userspace
/// before it sets [`CONFIG_F_CAPTURE`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CaptureFilter {
    /// The client's address, already masked by `client_mask`, and the mask (both network byte
    /// order, IPv4 in the first word). The client is the flow's source, or for packets that
    /// reached no VIP the frame's IP source.
    pub client_be: AddrBe,
    pub client_mask_be: AddrBe,
    /// [`FAMILY_V4`], [`FAMILY_V6`], or 0 for any (and for a frame that is not IP).
    pub client_family: u8,
    /// 1: only packets of the VIP id `vip_id` (a passthrough listener).
    pub match_vip: u8,
    /// Bit `1 << action` for each XDP action recorded.
    pub action_mask: u8,
    pub _pad: u8,
    pub vip_id: u32,
    /// One more than the counter index of the only reason recorded; 0 for any.
    pub counter: u32,
    /// Bytes of each frame recorded, at most [`CAPTURE_SNAPLEN_MAX`].
    pub snaplen: u32,
    /// Packets recorded per second on each CPU, at most (0: no limit).
    pub per_cpu_rate: u32,
    pub _pad2: u32,
}

/// The most bytes of a frame one capture record holds.
pub const CAPTURE_SNAPLEN_MAX: u32 = 2048;

/// The head of a capture record in the capture ring; `cap_len` bytes of the frame follow.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CaptureMeta {
    /// `bpf_ktime_get_ns()` when the outcome was known.
    pub time_ns: u64,
    /// The frame's whole length (every buffer of a multi-buffer frame) and the bytes recorded.
    pub len: u32,
    pub cap_len: u32,
    pub ifindex: u32,
    pub rx_queue: u32,
    /// The XDP action and the verdict's counter index ([`crate::counters::Counter`]).
    pub action: u32,
    pub counter: u32,
    /// The VIP id and backend id, valid with [`CAPTURE_F_VIP`] and [`CAPTURE_F_BACKEND`].
    pub vip_id: u32,
    pub backend_id: u32,
    /// `CAPTURE_F_*` bits.
    pub flags: u32,
    pub _pad: u32,
}

/// The packet reached a VIP: [`CaptureMeta::vip_id`] is its listener's.
pub const CAPTURE_F_VIP: u32 = 1;
/// A backend was chosen: [`CaptureMeta::backend_id`].
pub const CAPTURE_F_BACKEND: u32 = 2;

/// Per CPU: what the balancer learnt about the packet under way (read when its outcome is
/// recorded), and this CPU's capture accounting. Userspace zeroes it before a capture starts.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CaptureState {
    pub vip_id: u32,
    pub backend_id: u32,
    /// `CAPTURE_F_*` bits of the packet under way.
    pub flags: u32,
    /// The client of the packet under way (with [`CAPTURE_F_VIP`]) and its family.
    pub family: u32,
    pub client_be: AddrBe,
    /// The current one-second window of [`CaptureFilter::per_cpu_rate`].
    pub window_start_ns: u64,
    pub window_events: u64,
    /// Packets that matched, and of them those recorded, over the rate, lost (ring full), or
    /// not copied (the frame could not be read).
    pub matched: u64,
    pub recorded: u64,
    pub over_rate: u64,
    pub ring_full: u64,
    pub copy_failed: u64,
}

/// Value of the egress VLAN map (keyed by ifindex): frames forwarded out of that interface
/// leave with exactly this 802.1Q tag, or untagged.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EgressVlan {
    /// VLAN id (1 to 4094), or 0 for untagged.
    pub vlan_id: u16,
    pub _pad: u16,
}

/// Key of the decapsulation program's VIP map: an inner destination address it accepts.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DecapVipKey {
    pub addr_be: AddrBe,
    pub family: u8,
    pub _pad: [u8; 3],
}

/// Value of the per-VIP and per-backend traffic counters (per CPU).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TrafficCounters {
    pub packets: u64,
    pub bytes: u64,
    /// Flows placed by the Maglev table (connection-table misses and SYNs).
    pub new_flows: u64,
}

impl TrafficCounters {
    /// Adds `other` field by field (summing the per-CPU values).
    #[must_use]
    pub const fn add(self, other: Self) -> Self {
        Self {
            packets: self.packets.wrapping_add(other.packets),
            bytes: self.bytes.wrapping_add(other.bytes),
            new_flows: self.new_flows.wrapping_add(other.new_flows),
        }
    }
}

const _: () = {
    assert!(size_of::<VipKey>() == 20);
    assert!(size_of::<VipKeyV4>() == 8);
    assert!(size_of::<VipKeyV6>() == 20);
    assert!(size_of::<ConnKeyV4>() == 8);
    assert!(size_of::<ConnKeyV6>() == 20);
    assert!(size_of::<VipValue>() == 16);
    assert!(size_of::<FlowKey>() == 40);
    assert!(size_of::<ConnValue>() == 8);
    assert!(size_of::<Backend>() == 24);
    assert!(size_of::<DatapathConfig>() == 80);
    assert!(size_of::<VipCacheEntry>() == 48);
    assert!(VIP_CACHE_SIZE.is_power_of_two());
    assert!(size_of::<TrafficCounters>() == 24);
    assert!(size_of::<NextHop>() == 32);
    assert!(size_of::<RateWindow>() == 16);
    assert!(size_of::<EgressVlan>() == 4);
    assert!(size_of::<DecapVipKey>() == 20);
    assert!(size_of::<CaptureFilter>() == 56);
    assert!(CAPTURE_SNAPLEN_MAX.is_power_of_two());
    assert!(size_of::<CaptureMeta>() == 48);
    assert!(size_of::<CaptureState>() == 88);
};

#[cfg(feature = "user")]
mod pod {
    //! Userspace only: lets aya copy these types in and out of maps.
    use super::{
        Backend, CaptureFilter, CaptureState, ConnKeyV4, ConnKeyV6, ConnValue, DatapathConfig,
        DecapVipKey, EgressVlan, FlowKey, TrafficCounters, VipCacheEntry, VipKey, VipKeyV4,
        VipKeyV6, VipValue,
    };

    // SAFETY: each type is `#[repr(C)]`, `Copy`, made only of integers and integer arrays, and
    // has no implicit padding (the size asserts above equal the sum of the fields), so every
    // bit pattern is a valid value.
    unsafe impl aya::Pod for VipKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for VipValue {}
    // SAFETY: as above.
    unsafe impl aya::Pod for FlowKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for VipKeyV4 {}
    // SAFETY: as above.
    unsafe impl aya::Pod for VipKeyV6 {}
    // SAFETY: as above.
    unsafe impl aya::Pod for ConnKeyV4 {}
    // SAFETY: as above.
    unsafe impl aya::Pod for ConnKeyV6 {}
    // SAFETY: as above.
    unsafe impl aya::Pod for ConnValue {}
    // SAFETY: as above.
    unsafe impl aya::Pod for Backend {}
    // SAFETY: as above.
    unsafe impl aya::Pod for DatapathConfig {}
    // SAFETY: as above.
    unsafe impl aya::Pod for TrafficCounters {}
    // SAFETY: as above.
    unsafe impl aya::Pod for EgressVlan {}
    // SAFETY: as above.
    unsafe impl aya::Pod for DecapVipKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for VipCacheEntry {}
    // SAFETY: as above.
    unsafe impl aya::Pod for CaptureFilter {}
    // SAFETY: as above.
    unsafe impl aya::Pod for CaptureState {}
}
