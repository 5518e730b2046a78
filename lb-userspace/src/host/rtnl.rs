//! A small, blocking rtnetlink client for what the daemon asks of the kernel, in the calling
//! thread's network namespace:
//!
//! - [`Rtnl::route`]: the route toward an address (`ip route get [fibmatch] ADDR`): its next
//!   hops (interface, gateway) and preferred source;
//! - [`Rtnl::neighbours`] and [`Rtnl::manage_neighbour`]: the neighbour table, and entries the
//!   kernel keeps resolved on its own (`ip neigh replace ADDR dev DEV managed`), so that a next
//!   hop the XDP program forwards to stays fresh although no packet to it crosses the kernel;
//! - [`Rtnl::xdp_attached`]: how an interface runs its XDP program (driver or generic);
//! - [`Rtnl::link`] and [`Rtnl::set_up`]: an interface's index and state, and bringing it up;
//! - [`Rtnl::table_routes`], [`Rtnl::replace_route`] and [`Rtnl::delete_route`]: host routes
//!   of one protocol in one table, the announcements a routing daemon learns.
//!
//! Messages are built and parsed by `netlink-packet-route`; this module only sends a request
//! and collects its answer.

use std::{io, net::IpAddr};

use netlink_packet_core::{
    NLM_F_ACK, NLM_F_CREATE, NLM_F_DUMP, NLM_F_REPLACE, NLM_F_REQUEST, NetlinkHeader,
    NetlinkMessage, NetlinkPayload,
};
use netlink_packet_route::{
    AddressFamily, RouteNetlinkMessage,
    link::{LinkAttribute, LinkFlags, LinkMessage, LinkXdp, XdpAttached},
    neighbour::{
        NeighbourAddress, NeighbourAttribute, NeighbourExtFlags, NeighbourMessage, NeighbourState,
    },
    route::{
        RouteAddress, RouteAttribute, RouteFlags, RouteHeader, RouteMessage, RouteProtocol,
        RouteScope, RouteType, RouteVia,
    },
};
use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_ROUTE};

/// One next hop of a route.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Hop {
    pub ifindex: u32,
    /// The router to send through; `None` on a directly connected route (the destination
    /// itself is the neighbour).
    pub gateway: Option<IpAddr>,
}

/// The route toward an address.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Route {
    /// Its next hops: one, or several on a multipath (ECMP) route.
    pub hops: Vec<Hop>,
    /// The source address the kernel would use toward the destination.
    pub preferred_source: Option<IpAddr>,
    /// The route names a next-hop object (`nhid`) whose members are not listed with it
    /// (`net.ipv4.nexthop_compat_mode=0`): its hops are unknown, and may be several.
    pub opaque_nexthop: bool,
}

/// An entry of the neighbour table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Neighbour {
    pub ifindex: u32,
    pub address: IpAddr,
    pub mac: Option<[u8; 6]>,
    /// Kept resolved by the kernel (`managed`).
    pub managed: bool,
    /// Set by hand (`permanent` or `noarp`): never resolved, never replaced.
    pub is_static: bool,
}

/// How an interface runs its XDP program.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum XdpAttachMode {
    /// In the driver (native): the fast path.
    Driver,
    /// Generic (SKB) mode, after the kernel built a socket buffer: slower. The kernel skips GRO
    /// on such an interface, but a virtual peer's TSO/GSO aggregates reach the program whole.
    Generic,
    /// Offloaded to the NIC.
    Hardware,
    /// Several programs in several modes.
    Multiple,
    /// No XDP program.
    None,
}

impl XdpAttachMode {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Driver => "driver",
            Self::Generic => "generic",
            Self::Hardware => "hardware",
            Self::Multiple => "multiple",
            Self::None => "none",
        }
    }
}

/// An interface's index and state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Link {
    pub index: u32,
    /// Set up by an administrator (`IFF_UP`).
    pub up: bool,
    /// Up and its carrier present (`IFF_RUNNING`): it passes packets.
    pub running: bool,
}

/// A connected rtnetlink socket.
pub struct Rtnl {
    socket: Socket,
    sequence: u32,
}

impl std::fmt::Debug for Rtnl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Rtnl").finish_non_exhaustive()
    }
}

/// The buffer one `recv` fills: more than the kernel puts in one datagram.
const RECV_BUFFER: usize = 64 * 1024;

impl Rtnl {
    pub fn connect() -> io::Result<Self> {
        let mut socket = Socket::new(NETLINK_ROUTE)?;
        socket.bind_auto()?;
        socket.connect(&SocketAddr::new(0, 0))?;
        Ok(Self {
            socket,
            sequence: 0,
        })
    }

    /// A socket whose dumps the kernel filters by the request's fields
    /// (`NETLINK_GET_STRICT_CHK`): [`Rtnl::table_routes`] then reads one table, not every
    /// route of a host that may hold a full BGP table.
    pub fn connect_strict() -> io::Result<Self> {
        let rtnl = Self::connect()?;
        rtnl.socket.set_netlink_get_strict_chk(true)?;
        Ok(rtnl)
    }

    /// Sends `message` and returns the messages of its answer (up to the end of a dump, or the
    /// acknowledgement). A kernel error comes back as an `io::Error` with its errno.
    fn exchange(
        &mut self,
        message: RouteNetlinkMessage,
        flags: u16,
    ) -> io::Result<Vec<RouteNetlinkMessage>> {
        self.sequence = self.sequence.wrapping_add(1);
        let mut header = NetlinkHeader::default();
        header.flags = NLM_F_REQUEST | flags;
        header.sequence_number = self.sequence;
        let mut packet = NetlinkMessage::new(header, NetlinkPayload::from(message));
        packet.finalize();
        let mut buffer = vec![0; packet.buffer_len()];
        packet.serialize(&mut buffer);
        self.socket.send(&buffer, 0)?;

        let is_dump = flags & NLM_F_DUMP != 0;
        let mut answers = Vec::new();
        let mut received = vec![0u8; RECV_BUFFER];
        loop {
            let size = self.socket.recv(&mut &mut received[..], 0)?;
            let mut offset = 0;
            while offset < size {
                let message =
                    NetlinkMessage::<RouteNetlinkMessage>::deserialize(&received[offset..size])
                        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?;
                let length = message.header.length as usize;
                if message.header.sequence_number != self.sequence {
                    offset += length.max(1);
                    continue;
                }
                match message.payload {
                    // A dump that failed part-way ends with its error in the Done message.
                    NetlinkPayload::Done(done) if done.code < 0 => {
                        return Err(io::Error::from_raw_os_error(-done.code));
                    }
                    NetlinkPayload::Done(_) => return Ok(answers),
                    NetlinkPayload::Error(error) => {
                        return match error.code {
                            Some(code) => Err(io::Error::from_raw_os_error(-code.get())),
                            None => Ok(answers),
                        };
                    }
                    NetlinkPayload::InnerMessage(inner) => {
                        answers.push(inner);
                        if !is_dump && flags & NLM_F_ACK == 0 {
                            return Ok(answers);
                        }
                    }
                    NetlinkPayload::Noop | NetlinkPayload::Overrun(_) => {}
                    _ => {}
                }
                if length == 0 {
                    break;
                }
                offset += length;
            }
        }
    }

    /// The route toward `destination`: with `fib_match`, the routing entry that matches (every
    /// next hop of a multipath route); without, the path the kernel would take now (and the
    /// source it would use). `None` when there is no route.
    pub fn route(&mut self, destination: IpAddr, fib_match: bool) -> io::Result<Option<Route>> {
        let mut message = RouteMessage::default();
        message.header.address_family = family(destination);
        message.header.destination_prefix_length = if destination.is_ipv4() { 32 } else { 128 };
        if fib_match {
            message.header.flags = RouteFlags::FibMatch;
        }
        message
            .attributes
            .push(RouteAttribute::Destination(RouteAddress::from(destination)));
        let answers = match self.exchange(RouteNetlinkMessage::GetRoute(message), 0) {
            Ok(answers) => answers,
            Err(error)
                if matches!(
                    error.raw_os_error(),
                    Some(libc::ENETUNREACH | libc::EHOSTUNREACH | libc::ESRCH | libc::EINVAL)
                ) =>
            {
                return Ok(None);
            }
            Err(error) => return Err(error),
        };
        Ok(answers.into_iter().find_map(|answer| match answer {
            RouteNetlinkMessage::NewRoute(route) => Some(route_of(&route)),
            _ => None,
        }))
    }

    /// Every entry of the neighbour tables (IPv4 and IPv6).
    pub fn neighbours(&mut self) -> io::Result<Vec<Neighbour>> {
        let answers = self.exchange(
            RouteNetlinkMessage::GetNeighbour(NeighbourMessage::default()),
            NLM_F_DUMP,
        )?;
        Ok(answers
            .into_iter()
            .filter_map(|answer| match answer {
                RouteNetlinkMessage::NewNeighbour(n) => neighbour_of(&n),
                _ => None,
            })
            .collect())
    }

    /// Makes the kernel keep `address` on `ifindex` resolved on its own (a managed entry). An
    /// existing entry becomes managed; its MAC is resolved afresh.
    pub fn manage_neighbour(&mut self, ifindex: u32, address: IpAddr) -> io::Result<()> {
        let mut message = NeighbourMessage::default();
        message.header.family = family(address);
        message.header.ifindex = ifindex;
        message.header.state = NeighbourState::None;
        message.attributes = vec![
            NeighbourAttribute::Destination(match address {
                IpAddr::V4(a) => NeighbourAddress::Inet(a),
                IpAddr::V6(a) => NeighbourAddress::Inet6(a),
            }),
            NeighbourAttribute::ExtFlags(NeighbourExtFlags::Managed),
        ];
        self.exchange(
            RouteNetlinkMessage::NewNeighbour(message),
            NLM_F_ACK | NLM_F_CREATE | NLM_F_REPLACE,
        )?;
        Ok(())
    }

    /// How interface `ifindex` runs XDP.
    pub fn xdp_attached(&mut self, ifindex: u32) -> io::Result<XdpAttachMode> {
        let mut message = LinkMessage::default();
        message.header.index = ifindex;
        let answers = self.exchange(RouteNetlinkMessage::GetLink(message), 0)?;
        let attached = answers
            .iter()
            .filter_map(|answer| match answer {
                RouteNetlinkMessage::NewLink(link) => Some(link),
                _ => None,
            })
            .flat_map(|link| &link.attributes)
            .filter_map(|attribute| match attribute {
                LinkAttribute::Xdp(xdp) => Some(xdp),
                _ => None,
            })
            .flatten()
            .find_map(|xdp| match xdp {
                LinkXdp::Attached(attached) => Some(*attached),
                _ => None,
            });
        Ok(match attached {
            Some(XdpAttached::Driver) => XdpAttachMode::Driver,
            Some(XdpAttached::SocketBuffer) => XdpAttachMode::Generic,
            Some(XdpAttached::Hardware) => XdpAttachMode::Hardware,
            Some(XdpAttached::Multiple) => XdpAttachMode::Multiple,
            _ => XdpAttachMode::None,
        })
    }

    /// The interface named `name`, or `None` if there is none.
    pub fn link(&mut self, name: &str) -> io::Result<Option<Link>> {
        let mut message = LinkMessage::default();
        message
            .attributes
            .push(LinkAttribute::IfName(name.to_owned()));
        let answers = match self.exchange(RouteNetlinkMessage::GetLink(message), 0) {
            Ok(answers) => answers,
            Err(error) if error.raw_os_error() == Some(libc::ENODEV) => return Ok(None),
            Err(error) => return Err(error),
        };
        Ok(answers.into_iter().find_map(|answer| match answer {
            RouteNetlinkMessage::NewLink(link) => Some(Link {
                index: link.header.index,
                up: link.header.flags.contains(LinkFlags::Up),
                running: link.header.flags.contains(LinkFlags::Running),
            }),
            _ => None,
        }))
    }

    /// Sets interface `index` up (`ip link set DEV up`).
    pub fn set_up(&mut self, index: u32) -> io::Result<()> {
        let mut message = LinkMessage::default();
        message.header.index = index;
        message.header.flags = LinkFlags::Up;
        message.header.change_mask = LinkFlags::Up;
        self.exchange(RouteNetlinkMessage::SetLink(message), NLM_F_ACK)?;
        Ok(())
    }

    /// The host routes (a /32 or /128) of `protocol` in `table` through interface `oif`, both
    /// families. A table that does not exist (yet) holds none.
    pub fn table_routes(&mut self, table: u32, protocol: u8, oif: u32) -> io::Result<Vec<IpAddr>> {
        let mut found = Vec::new();
        for family in [AddressFamily::Inet, AddressFamily::Inet6] {
            let mut message = RouteMessage::default();
            message.header.address_family = family;
            // Filters for a strict socket; others dump every table (and are filtered below).
            message.header.table = u8::try_from(table).unwrap_or(RouteHeader::RT_TABLE_UNSPEC);
            message.header.protocol = RouteProtocol::from(protocol);
            message.attributes.push(RouteAttribute::Table(table));
            let answers = match self.exchange(RouteNetlinkMessage::GetRoute(message), NLM_F_DUMP) {
                Err(error) if error.raw_os_error() == Some(libc::ENOENT) => Vec::new(),
                other => other?,
            };
            for answer in answers {
                let RouteNetlinkMessage::NewRoute(route) = answer else {
                    continue;
                };
                let in_table = route
                    .attributes
                    .iter()
                    .find_map(|a| match a {
                        RouteAttribute::Table(t) => Some(*t),
                        _ => None,
                    })
                    .unwrap_or_else(|| u32::from(route.header.table));
                let through = route.attributes.iter().find_map(|a| match a {
                    RouteAttribute::Oif(index) => Some(*index),
                    _ => None,
                });
                if in_table != table
                    || u8::from(route.header.protocol) != protocol
                    || through != Some(oif)
                {
                    continue;
                }
                let destination = route.attributes.iter().find_map(|a| match a {
                    RouteAttribute::Destination(d) => address_of(d),
                    _ => None,
                });
                if let Some(destination) = destination
                    && route.header.destination_prefix_length == host_prefix(destination)
                {
                    found.push(destination);
                }
            }
        }
        Ok(found)
    }

    /// Adds (or replaces) the host route `destination dev ifindex table T proto P`.
    pub fn replace_route(
        &mut self,
        table: u32,
        protocol: u8,
        destination: IpAddr,
        ifindex: u32,
    ) -> io::Result<()> {
        let mut message = host_route(table, protocol, destination);
        message.attributes.push(RouteAttribute::Oif(ifindex));
        self.exchange(
            RouteNetlinkMessage::NewRoute(message),
            NLM_F_ACK | NLM_F_CREATE | NLM_F_REPLACE,
        )?;
        Ok(())
    }

    /// Deletes the host route to `destination` of `protocol` in `table` through `oif`, whatever
    /// its scope and type (as `ip route del` does); one already gone is not an error.
    pub fn delete_route(
        &mut self,
        table: u32,
        protocol: u8,
        destination: IpAddr,
        oif: u32,
    ) -> io::Result<()> {
        let mut message = host_route(table, protocol, destination);
        message.header.scope = RouteScope::NoWhere;
        message.header.kind = RouteType::Unspec;
        message.attributes.push(RouteAttribute::Oif(oif));
        match self.exchange(RouteNetlinkMessage::DelRoute(message), NLM_F_ACK) {
            Err(error) if error.raw_os_error() == Some(libc::ESRCH) => Ok(()),
            other => other.map(drop),
        }
    }
}

/// The prefix length of a host route to `address`.
fn host_prefix(address: IpAddr) -> u8 {
    if address.is_ipv4() { 32 } else { 128 }
}

/// A unicast, link-scope route to `destination` alone, in `table`, of `protocol`.
fn host_route(table: u32, protocol: u8, destination: IpAddr) -> RouteMessage {
    let mut message = RouteMessage::default();
    message.header.address_family = family(destination);
    message.header.destination_prefix_length = host_prefix(destination);
    message.header.table = u8::try_from(table).unwrap_or(RouteHeader::RT_TABLE_UNSPEC);
    message.header.protocol = RouteProtocol::from(protocol);
    message.header.scope = RouteScope::Link;
    message.header.kind = RouteType::Unicast;
    message.attributes = vec![
        RouteAttribute::Destination(RouteAddress::from(destination)),
        RouteAttribute::Table(table),
    ];
    message
}

fn family(address: IpAddr) -> AddressFamily {
    if address.is_ipv4() {
        AddressFamily::Inet
    } else {
        AddressFamily::Inet6
    }
}

fn address_of(address: &RouteAddress) -> Option<IpAddr> {
    match address {
        RouteAddress::Inet(a) => Some(IpAddr::V4(*a)),
        RouteAddress::Inet6(a) => Some(IpAddr::V6(*a)),
        _ => None,
    }
}

/// A gateway from `RTA_GATEWAY` or `RTA_VIA` (an IPv4 route through an IPv6 router).
fn gateway_of(attributes: &[RouteAttribute]) -> Option<IpAddr> {
    attributes.iter().find_map(|attribute| match attribute {
        RouteAttribute::Gateway(address) => address_of(address),
        RouteAttribute::Via(RouteVia::Inet(a)) => Some(IpAddr::V4(*a)),
        RouteAttribute::Via(RouteVia::Inet6(a)) => Some(IpAddr::V6(*a)),
        _ => None,
    })
}

fn route_of(message: &RouteMessage) -> Route {
    let mut route = Route::default();
    let oif = message.attributes.iter().find_map(|a| match a {
        RouteAttribute::Oif(index) => Some(*index),
        _ => None,
    });
    for attribute in &message.attributes {
        match attribute {
            RouteAttribute::PrefSource(address) => route.preferred_source = address_of(address),
            RouteAttribute::MultiPath(hops) => {
                route.hops.extend(hops.iter().map(|hop| Hop {
                    ifindex: hop.interface_index,
                    gateway: gateway_of(&hop.attributes),
                }));
            }
            _ => {}
        }
    }
    if route.hops.is_empty()
        && let Some(ifindex) = oif
    {
        route.hops.push(Hop {
            ifindex,
            gateway: gateway_of(&message.attributes),
        });
    }
    route.opaque_nexthop = route.hops.is_empty()
        && message
            .attributes
            .iter()
            .any(|a| matches!(a, RouteAttribute::NhId(_)));
    route
}

fn neighbour_of(message: &NeighbourMessage) -> Option<Neighbour> {
    let mut address = None;
    let mut mac = None;
    let mut managed = false;
    for attribute in &message.attributes {
        match attribute {
            NeighbourAttribute::Destination(NeighbourAddress::Inet(a)) => {
                address = Some(IpAddr::V4(*a));
            }
            NeighbourAttribute::Destination(NeighbourAddress::Inet6(a)) => {
                address = Some(IpAddr::V6(*a));
            }
            NeighbourAttribute::LinkLayerAddress(bytes) => {
                mac = <[u8; 6]>::try_from(&bytes[..]).ok()
            }
            NeighbourAttribute::ExtFlags(flags) => {
                managed = flags.contains(NeighbourExtFlags::Managed);
            }
            _ => {}
        }
    }
    Some(Neighbour {
        ifindex: message.header.ifindex,
        address: address?,
        mac,
        managed,
        is_static: matches!(
            message.header.state,
            NeighbourState::Permanent | NeighbourState::Noarp
        ),
    })
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;

    /// Runs in the test's own network namespace (unprivileged reads work).
    #[test]
    fn the_loopback_route_and_link_are_readable() {
        let mut rtnl = Rtnl::connect().unwrap();
        let route = rtnl
            .route(IpAddr::V4(Ipv4Addr::LOCALHOST), false)
            .unwrap()
            .expect("a route to 127.0.0.1");
        assert_eq!(route.hops.len(), 1, "{route:?}");
        assert_eq!(
            route.preferred_source,
            Some(IpAddr::V4(Ipv4Addr::LOCALHOST))
        );
        assert_eq!(rtnl.xdp_attached(1).unwrap(), XdpAttachMode::None);
        rtnl.neighbours().unwrap();
    }
}
