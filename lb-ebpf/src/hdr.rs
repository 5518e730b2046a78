//! Wire layouts of the headers the programs read and write.
//!
//! Multi-byte fields are kept in network byte order and named `_be`. The structs are
//! `packed(2)`: packet data always starts 2-byte aligned and every header the programs touch
//! starts at an even offset, so each access is aligned for its declared type.

pub use lb_common::abi::Mac;

/// Ethernet II header.
#[repr(C, packed(2))]
#[derive(Clone, Copy)]
pub struct EthHdr {
    pub dst: [u8; 6],
    pub src: [u8; 6],
    pub ether_type_be: u16,
}

pub const ETH_LEN: usize = size_of::<EthHdr>();
pub const ETH_P_IPV4: u16 = 0x0800;
pub const ETH_P_IPV6: u16 = 0x86dd;
/// 802.1Q VLAN tag protocol identifier.
pub const ETH_P_8021Q: u16 = 0x8100;
/// 802.1ad (QinQ) service tag protocol identifier.
pub const ETH_P_8021AD: u16 = 0x88a8;
/// Length of the MAC addresses at the start of every frame.
pub const MACS_LEN: usize = 12;

/// The destination and source MAC addresses that start every frame (2-byte aligned like the
/// packed headers, through [`Mac`]).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct MacPair {
    pub dst: Mac,
    pub src: Mac,
}

/// A VLAN tag as it sits in the frame: its protocol identifier (TPID) and control
/// information (priority, drop eligibility, VLAN id).
#[repr(C, packed(2))]
#[derive(Clone, Copy, Default)]
pub struct VlanTag {
    pub tpid_be: u16,
    pub tci_be: u16,
}

/// The four bytes a VLAN tag adds after the MAC addresses and its TPID: the tag control
/// information and the EtherType (or next TPID) that follows it.
#[repr(C, packed(2))]
#[derive(Clone, Copy)]
pub struct VlanHdr {
    pub tci_be: u16,
    pub ether_type_be: u16,
}

pub const VLAN_LEN: usize = size_of::<VlanHdr>();
/// The most VLAN tags the programs read (802.1ad outer, 802.1Q inner).
pub const MAX_VLAN_TAGS: usize = 2;
/// The longest link-layer header: MACs, two tags, EtherType.
pub const MAX_L2_LEN: usize = ETH_LEN + MAX_VLAN_TAGS * VLAN_LEN;

/// IPv4 header without options.
#[repr(C, packed(2))]
#[derive(Clone, Copy)]
pub struct Ipv4Hdr {
    pub version_ihl: u8,
    pub tos: u8,
    pub tot_len_be: u16,
    pub id_be: u16,
    pub frag_off_be: u16,
    pub ttl: u8,
    pub proto: u8,
    pub check: u16,
    pub src_be: u32,
    pub dst_be: u32,
}

pub const IPV4_LEN: usize = size_of::<Ipv4Hdr>();
/// "Don't fragment", in the host-order `frag_off` field.
pub const IPV4_DF: u16 = 0x4000;
/// "More fragments" and the fragment offset, in the host-order `frag_off` field.
pub const IPV4_MF_OFFSET: u16 = 0x3fff;
/// IP protocol number of IP-in-IP (IPv4 payload).
pub const IPPROTO_IPIP: u8 = 4;
/// IP protocol number of an IPv6 payload (IPv6-in-IPv6).
pub const IPPROTO_IPV6: u8 = 41;

/// IPv6 fixed header.
#[repr(C, packed(2))]
#[derive(Clone, Copy)]
pub struct Ipv6Hdr {
    /// Version (4 bits), traffic class (8), flow label (20).
    pub vtc_flow_be: u32,
    pub payload_len_be: u16,
    pub next_header: u8,
    pub hop_limit: u8,
    pub src_be: [u32; 4],
    pub dst_be: [u32; 4],
}

pub const IPV6_LEN: usize = size_of::<Ipv6Hdr>();

/// The first two bytes shared by the IPv6 extension headers the parser walks.
#[repr(C, packed(2))]
#[derive(Clone, Copy)]
pub struct Ipv6ExtHdr {
    pub next_header: u8,
    pub len: u8,
}

/// IPv6 fragment header.
#[repr(C, packed(2))]
#[derive(Clone, Copy)]
pub struct Ipv6FragHdr {
    pub next_header: u8,
    pub reserved: u8,
    /// Fragment offset (13 bits), reserved (2), more fragments (1).
    pub offset_flags_be: u16,
    pub id_be: u32,
}

pub const IPV6_EXT_HOP_BY_HOP: u8 = 0;
pub const IPV6_EXT_ROUTING: u8 = 43;
pub const IPV6_EXT_FRAGMENT: u8 = 44;
pub const IPV6_EXT_AUTH: u8 = 51;
pub const IPV6_EXT_DEST_OPTS: u8 = 60;

/// TCP header without options.
#[repr(C, packed(2))]
#[derive(Clone, Copy)]
pub struct TcpHdr {
    pub src_port_be: u16,
    pub dst_port_be: u16,
    pub seq_be: u32,
    pub ack_be: u32,
    /// Data offset (4 bits), reserved (4), flags (8).
    pub offset_flags_be: u16,
    pub window_be: u16,
    pub check: u16,
    pub urgent_be: u16,
}

pub const TCP_LEN: usize = size_of::<TcpHdr>();
pub const TCP_FLAG_RST: u16 = 0x04;
pub const TCP_FLAG_SYN: u16 = 0x02;
pub const TCP_FLAG_ACK: u16 = 0x10;

/// UDP header.
#[repr(C, packed(2))]
#[derive(Clone, Copy)]
pub struct UdpHdr {
    pub src_port_be: u16,
    pub dst_port_be: u16,
    pub len_be: u16,
    pub check: u16,
}

pub const UDP_LEN: usize = size_of::<UdpHdr>();

/// ICMP or ICMPv6 header: type, code, checksum and the four type-specific bytes (the next-hop
/// MTU of "fragmentation needed" in the last two, of "packet too big" in all four).
#[repr(C, packed(2))]
#[derive(Clone, Copy)]
pub struct IcmpHdr {
    pub kind: u8,
    pub code: u8,
    pub check: u16,
    pub rest_be: u32,
}

pub const ICMP_LEN: usize = size_of::<IcmpHdr>();
/// IP protocol numbers of ICMP and ICMPv6.
pub const IPPROTO_ICMP: u8 = 1;
pub const IPPROTO_ICMPV6: u8 = 58;
/// ICMP destination unreachable, and its "fragmentation needed" code.
pub const ICMP_DEST_UNREACH: u8 = 3;
pub const ICMP_FRAG_NEEDED: u8 = 4;
/// ICMPv6 destination unreachable and packet too big.
pub const ICMPV6_DEST_UNREACH: u8 = 1;
pub const ICMPV6_PACKET_TOO_BIG: u8 = 2;

const _: () = {
    assert!(ETH_LEN == 14);
    assert!(VLAN_LEN == 4);
    assert!(size_of::<MacPair>() == MACS_LEN);
    assert!(size_of::<VlanTag>() == VLAN_LEN);
    assert!(MAX_L2_LEN == 22);
    assert!(ICMP_LEN == 8);
    assert!(IPV4_LEN == 20);
    assert!(IPV6_LEN == 40);
    assert!(size_of::<Ipv6FragHdr>() == 8);
    assert!(TCP_LEN == 20);
    assert!(UDP_LEN == 8);
};
