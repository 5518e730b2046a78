//! The desired state of the passthrough datapath: listeners and their backends, as plain
//! values. `config` produces it from a file and the control API edits it; `reconcile` makes
//! the maps match it. Nothing here knows about TOML or aya.

use std::net::IpAddr;

use lb_common::abi::{AddrBe, FAMILY_V4, FAMILY_V6, PROTO_TCP, PROTO_UDP, VipKey};

/// A transport protocol a listener serves.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    Tcp,
    Udp,
}

impl Protocol {
    pub const fn number(self) -> u8 {
        match self {
            Self::Tcp => PROTO_TCP,
            Self::Udp => PROTO_UDP,
        }
    }

    pub const fn name(self) -> &'static str {
        match self {
            Self::Tcp => "tcp",
            Self::Udp => "udp",
        }
    }
}

/// A virtual IP: the (address, port, protocol) clients connect to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Vip {
    pub address: IpAddr,
    pub port: u16,
    pub protocol: Protocol,
}

impl Vip {
    /// The VIP map key of this VIP.
    pub fn key(&self) -> VipKey {
        let (addr_be, family) = addr_be(self.address);
        VipKey {
            addr_be,
            port_be: self.port.to_be(),
            proto: self.protocol.number(),
            family,
        }
    }
}

impl std::fmt::Display for Vip {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let address = std::net::SocketAddr::new(self.address, self.port);
        write!(f, "{}/{}", address, self.protocol.name())
    }
}

/// One backend of a listener's pool.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    pub address: IpAddr,
    /// Share of new flows, relative to the pool's other backends. 0 takes the backend out of
    /// the table while its established flows keep going to it (draining).
    pub weight: u32,
    /// Its weight in full service (healthy, not draining, ramped up): the table is built for
    /// these, and only the slots of backends below it change hands
    /// ([`maglev::build_stable`](crate::maglev::build_stable)).
    pub full_weight: u32,
    /// Whether its established flows keep going to it. False for a dead backend: its flows
    /// are placed afresh by the table (its weight is then 0).
    pub serving: bool,
}

impl Target {
    /// A serving backend with `weight`.
    pub const fn new(address: IpAddr, weight: u32) -> Self {
        Self {
            address,
            weight,
            full_weight: weight,
            serving: true,
        }
    }

    /// The bytes that identify the backend to Maglev: its address.
    pub fn identity(&self) -> Vec<u8> {
        match self.address {
            IpAddr::V4(a) => a.octets().to_vec(),
            IpAddr::V6(a) => a.octets().to_vec(),
        }
    }
}

/// A passthrough listener: a VIP and the pool it forwards to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Listener {
    pub name: String,
    pub vip: Vip,
    pub targets: Vec<Target>,
}

/// An address as the maps store it: network byte order, widened to 16 bytes, and its family.
pub fn addr_be(address: IpAddr) -> (AddrBe, u8) {
    match address {
        IpAddr::V4(a) => ([u32::from_ne_bytes(a.octets()), 0, 0, 0], FAMILY_V4),
        IpAddr::V6(a) => {
            let o = a.octets();
            let word = |i: usize| u32::from_ne_bytes([o[i], o[i + 1], o[i + 2], o[i + 3]]);
            ([word(0), word(4), word(8), word(12)], FAMILY_V6)
        }
    }
}

/// The inverse of [`addr_be`].
pub fn addr_from_be(addr_be: &AddrBe, family: u8) -> IpAddr {
    if family == FAMILY_V4 {
        IpAddr::from(addr_be[0].to_ne_bytes())
    } else {
        let mut octets = [0u8; 16];
        for (chunk, word) in octets.chunks_exact_mut(4).zip(addr_be) {
            chunk.copy_from_slice(&word.to_ne_bytes());
        }
        IpAddr::from(octets)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_round_trip_in_network_order() {
        for text in ["198.18.0.1", "2001:db8::1", "2001:db8:ffff:1:2:3:4:5"] {
            let address: IpAddr = text.parse().unwrap();
            let (be, family) = addr_be(address);
            assert_eq!(addr_from_be(&be, family), address);
        }
        let (be, _) = addr_be("198.18.0.1".parse().unwrap());
        assert_eq!(be[0].to_ne_bytes(), [198, 18, 0, 1]);
    }
}
