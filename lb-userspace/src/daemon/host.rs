//! The datapath's side of the host: what the daemon finds out from the kernel at start and
//! keeps in step with it while it runs.
//!
//! - [`host_defaults`]: the outer source addresses when the file names none (the kernel's
//!   preferred source toward the backends), and a static next hop's MTU;
//! - [`HostWatch::refresh`], at start, after every change and every [`REFRESH`]: for every
//!   backend, the route the FIB takes toward it. Its egress interfaces go into the redirect map
//!   when they can take redirected frames (so that no forwarded frame has nowhere to go; one
//!   that cannot is left out, and the kernel forwards the frames for it), backends behind
//!   multipath routes are
//!   marked (their packets ask the FIB each time, so each flow keeps its ECMP next hop), and the
//!   next hops become managed neighbours (the kernel keeps them resolved, although the packets
//!   the XDP program forwards never cross it). It also tells the reconciler which VIP addresses
//!   are local, and warns when encapsulated packets still had to go through the kernel. When a
//!   VIP is local, `accept_local` goes on where backends' replies from it may come in (see
//!   [`accept_local`](super::accept_local)).
//!
//! Everything it changes, it logs once.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
    time::{Duration, Instant},
};

use lb_common::counters::Counter;
use tracing::{info, warn};

use super::{
    DaemonError,
    accept_local::{self, ReplyInterfaces},
};
use crate::{
    config::{Config, HostDefaults, Mode},
    datapath::{Datapath, counter_value},
    host::{
        addresses::{InterfaceAddress, interface_addresses},
        netdev::Netdev,
        rtnl::{Rtnl, XdpAttachMode},
    },
    reconcile::Reconciler,
};

/// How often the routes toward the backends are looked at again.
pub const REFRESH: Duration = Duration::from_secs(2);

/// An interface the balancer runs on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Interface {
    pub name: String,
    pub ifindex: u32,
    pub mode: XdpAttachMode,
}

/// What `lb status` and the metrics show of the datapath's set-up.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Facts {
    pub interfaces: Vec<Interface>,
    /// CPUs the kernel may run (each has its own copy of the per-CPU maps).
    pub possible_cpus: u32,
    /// Entries of each connection table (per address family), as the kernel allocated them.
    pub conn_table_entries: u32,
    /// The outer sources in use: the file's, or the host's defaults.
    pub encap_sources: Vec<String>,
}

/// The defaults `config` leaves to the host: see the module documentation. Fails, naming the
/// setting, when a family has passthrough listeners but the host offers no source address.
pub fn host_defaults(
    config: &Config,
    interfaces: &[(String, u32)],
    rtnl: &mut Rtnl,
) -> Result<HostDefaults, DaemonError> {
    let (mtu, ingress_mtu) = mtu_range(interfaces)?;
    let listeners = config.passthrough_listeners();
    let mut backends: Vec<IpAddr> = listeners
        .iter()
        .flat_map(|l| l.targets.iter().map(|t| t.address))
        .collect();
    backends.sort();
    let needs = |v4: bool| {
        config
            .listeners
            .values()
            .any(|l| l.mode == Mode::Passthrough && l.address.is_ipv4() == v4)
    };
    let addresses = interface_addresses().map_err(|source| DaemonError::Io {
        what: "listing the interfaces' addresses".to_owned(),
        source,
    })?;
    let mut pick = |v4: bool, field: &str| -> Result<Option<IpAddr>, DaemonError> {
        let from_route = backends
            .iter()
            .filter(|b| b.is_ipv4() == v4)
            .find_map(|&b| rtnl.route(b, false).ok().flatten()?.preferred_source);
        let from_interface = || {
            interfaces.iter().find_map(|(name, _)| {
                addresses
                    .iter()
                    .filter(|a| &a.interface == name && a.address.is_ipv4() == v4)
                    .map(|a| a.address)
                    .find(|a| !is_link_local(*a))
            })
        };
        match from_route.or_else(from_interface) {
            Some(address) => {
                info!(%address, "{field} not set: encapsulated packets leave from this host address");
                Ok(Some(address))
            }
            None => Err(DaemonError::Config(format!(
                "{field} is not set and the host has no {} address to default to (no route to a \
                 backend gives one, and the interfaces {} have none): set {field}",
                if v4 { "IPv4" } else { "IPv6" },
                interfaces
                    .iter()
                    .map(|(name, _)| name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ))),
        }
    };
    let d = &config.datapath;
    let encap_source_v4 = if d.encap_source_v4.is_none() && needs(true) {
        match pick(true, "datapath.encap_source_v4")? {
            Some(IpAddr::V4(a)) => Some(a),
            _ => None,
        }
    } else {
        None
    };
    let encap_source_v6 = if d.encap_source_v6.is_none() && needs(false) {
        match pick(false, "datapath.encap_source_v6")? {
            Some(IpAddr::V6(a)) => Some(a),
            _ => None,
        }
    } else {
        None
    };
    Ok(HostDefaults {
        mtu,
        ingress_mtu,
        encap_source_v4,
        encap_source_v6,
    })
}

fn is_link_local(address: IpAddr) -> bool {
    match address {
        IpAddr::V4(a) => a.is_link_local(),
        IpAddr::V6(a) => a.segments()[0] & 0xffc0 == 0xfe80,
    }
}

/// The smallest MTU of the interfaces (the largest encapsulated packet a static next hop
/// takes) and the largest (no packet off a wire is longer).
fn mtu_range(interfaces: &[(String, u32)]) -> Result<(u32, u32), DaemonError> {
    let mut smallest = u32::MAX;
    let mut largest = 0;
    for (name, _) in interfaces {
        let mtu = crate::loader::interface_mtu(name).map_err(|source| DaemonError::Io {
            what: format!("reading the MTU of {name}"),
            source,
        })?;
        smallest = smallest.min(mtu);
        largest = largest.max(mtu);
    }
    Ok((if smallest == u32::MAX { 0 } else { smallest }, largest))
}

/// The encapsulation sources `config` and `host` give, for display.
pub fn encap_sources(config: &Config, host: &HostDefaults) -> Vec<String> {
    let d = &config.datapath;
    let v4 = d
        .encap_source_v4
        .map(|(a, len)| format!("{a}/{len}"))
        .or(host
            .encap_source_v4
            .map(|a| format!("{a}/32 (host default)")));
    let v6 = d
        .encap_source_v6
        .map(|(a, len)| format!("{a}/{len}"))
        .or(host
            .encap_source_v6
            .map(|a| format!("{a}/128 (host default)")));
    v4.into_iter().chain(v6).collect()
}

/// Writes the egress VLAN map from `config` (interfaces by name), removing entries it no
/// longer names; `current` is what the map holds, kept up to date write by write. Fails,
/// naming the interface, if one does not exist (before writing anything).
pub fn apply_egress_vlans<D: Datapath>(
    config: &Config,
    datapath: &mut D,
    current: &mut BTreeMap<u32, u16>,
) -> Result<(), String> {
    let mut wanted = BTreeMap::new();
    for (name, &vlan) in &config.datapath.egress_vlan {
        let ifindex = crate::loader::interface_index(name)
            .map_err(|e| format!("datapath.egress_vlan.{name}: {e}"))?;
        wanted.insert(ifindex, vlan);
    }
    for (&ifindex, &vlan) in &wanted {
        if current.get(&ifindex) != Some(&vlan) {
            datapath
                .set_egress_vlan(ifindex, Some(vlan))
                .map_err(|e| e.to_string())?;
            current.insert(ifindex, vlan);
        }
    }
    let stale: Vec<u32> = current
        .keys()
        .filter(|i| !wanted.contains_key(*i))
        .copied()
        .collect();
    for ifindex in stale {
        datapath
            .set_egress_vlan(ifindex, None)
            .map_err(|e| e.to_string())?;
        current.remove(&ifindex);
    }
    Ok(())
}

/// The routes, neighbours and local addresses the datapath depends on, kept in step.
#[derive(Debug)]
pub struct HostWatch {
    rtnl: Rtnl,
    facts: Facts,
    /// With a static next hop there is no FIB to follow: only local addresses are watched.
    static_next_hop: bool,
    /// Asks which interfaces take redirected frames; `None` on a kernel that cannot tell.
    netdev: Option<Netdev>,
    redirect: BTreeSet<u32>,
    /// Egress interfaces left out of the redirect map because they take no redirected frames.
    refused: BTreeSet<u32>,
    /// Whether the interfaces the balancer runs on were checked for `XDP_TX`, and the redirect
    /// map (an earlier daemon's, pinned) read.
    started: bool,
    /// Which interfaces take redirected frames, asked once per refresh.
    answers: BTreeMap<u32, bool>,
    managed: BTreeSet<(u32, IpAddr)>,
    unroutable: BTreeSet<IpAddr>,
    /// What the egress VLAN map holds; read from it (an earlier daemon's) on first use.
    egress_vlans: Option<BTreeMap<u32, u16>>,
    last_refresh: Option<Instant>,
    /// `pass_no_tx_port` and `drop_oversized` when last looked at.
    passed_no_tx_port: u64,
    oversized: u64,
    /// Where `accept_local` was seen to for replies from a local VIP.
    replies: ReplyInterfaces,
}

impl HostWatch {
    pub fn new(rtnl: Rtnl, facts: Facts, static_next_hop: bool) -> Self {
        let redirect = facts.interfaces.iter().map(|i| i.ifindex).collect();
        let netdev = match Netdev::connect() {
            Ok(netdev) => Some(netdev),
            Err(error) => {
                warn!(
                    %error,
                    "this kernel does not say which interfaces take redirected XDP frames (netdev netlink family, Linux 6.3): every egress interface goes into the redirect map, and a redirect to one that cannot take it is dropped unseen"
                );
                None
            }
        };
        Self {
            rtnl,
            facts,
            static_next_hop,
            netdev,
            redirect,
            refused: BTreeSet::new(),
            started: false,
            answers: BTreeMap::new(),
            managed: BTreeSet::new(),
            unroutable: BTreeSet::new(),
            egress_vlans: None,
            last_refresh: None,
            passed_no_tx_port: 0,
            oversized: 0,
            replies: ReplyInterfaces::default(),
        }
    }

    pub fn facts(&self) -> &Facts {
        &self.facts
    }

    /// The host defaults for `config` (see [`host_defaults`]).
    pub fn defaults_for(&mut self, config: &Config) -> Result<HostDefaults, DaemonError> {
        let interfaces: Vec<(String, u32)> = self
            .facts
            .interfaces
            .iter()
            .map(|i| (i.name.clone(), i.ifindex))
            .collect();
        let defaults = host_defaults(config, &interfaces, &mut self.rtnl)?;
        self.facts.encap_sources = encap_sources(config, &defaults);
        Ok(defaults)
    }

    /// The interfaces in the redirect map.
    pub fn redirect_interfaces(&self) -> Vec<String> {
        self.redirect.iter().map(|&i| interface_name(i)).collect()
    }

    /// Applies `config`'s egress VLANs (see [`apply_egress_vlans`]).
    pub fn apply_egress_vlans<D: Datapath>(
        &mut self,
        config: &Config,
        datapath: &mut D,
    ) -> Result<(), String> {
        let current = match &mut self.egress_vlans {
            Some(current) => current,
            None => self
                .egress_vlans
                .insert(datapath.egress_vlans().map_err(|e| e.to_string())?),
        };
        apply_egress_vlans(config, datapath, current)
    }

    /// Refreshes if [`REFRESH`] passed since the last time (or `force`).
    pub fn refresh_if_due<D: Datapath>(
        &mut self,
        reconciler: &mut Reconciler<D>,
        now: Instant,
        force: bool,
    ) {
        let due = self
            .last_refresh
            .is_none_or(|last| now.saturating_duration_since(last) >= REFRESH);
        if force || due {
            self.last_refresh = Some(now);
            self.refresh(reconciler);
        }
    }

    fn refresh<D: Datapath>(&mut self, reconciler: &mut Reconciler<D>) {
        let addresses = match interface_addresses() {
            Ok(addresses) => {
                if let Err(error) =
                    reconciler.set_local_addresses(addresses.iter().map(|a| a.address))
                {
                    warn!(%error, "could not mark the local VIP addresses");
                }
                addresses
            }
            Err(error) => {
                warn!(%error, "could not list the host's addresses");
                Vec::new()
            }
        };
        self.answers.clear();
        if !self.started {
            self.started = true;
            self.check_attached();
            // An earlier daemon's entries: kept only while they take redirected frames.
            match reconciler.datapath().tx_ports() {
                Ok(ports) => self.redirect.extend(ports),
                Err(error) => warn!(%error, "could not read the redirect map"),
            }
        }
        if self.static_next_hop {
            self.accept_replies(reconciler, &addresses, &BTreeSet::new());
            return;
        }
        let backends: BTreeSet<IpAddr> = reconciler
            .listeners()
            .values()
            .flat_map(|l| l.backends.keys().copied())
            .collect();
        let mut multipath = BTreeSet::new();
        let mut hops = BTreeSet::new();
        for backend in backends {
            match self.rtnl.route(backend, true) {
                Ok(Some(route)) => {
                    self.unroutable.remove(&backend);
                    if route.hops.len() > 1 || route.opaque_nexthop {
                        multipath.insert(backend);
                    }
                    for hop in route.hops {
                        self.sync_redirect(reconciler, hop.ifindex, backend);
                        hops.insert((hop.ifindex, hop.gateway.unwrap_or(backend)));
                    }
                }
                Ok(None) => {
                    if self.unroutable.insert(backend) {
                        warn!(%backend, "no route to the backend: its packets are dropped (drop_no_route) until there is one");
                    }
                }
                Err(error) => warn!(%backend, %error, "could not look up the route to the backend"),
            }
        }
        match reconciler.set_multipath(multipath) {
            Ok(changed) => {
                for backend in changed {
                    info!(
                        %backend,
                        multipath = reconciler.is_multipath(backend),
                        "the route to the backend changed: with several next hops, every packet asks the FIB, so that each flow keeps its next hop"
                    );
                }
            }
            Err(error) => warn!(%error, "could not mark multipath backends"),
        }
        let stale: Vec<u32> = self
            .redirect
            .iter()
            .copied()
            .filter(|i| !self.facts.interfaces.iter().any(|a| a.ifindex == *i))
            .filter(|i| !hops.iter().any(|(hop, _)| hop == i))
            .collect();
        for ifindex in stale {
            if !self.takes_redirects(ifindex) {
                self.leave_out(reconciler, ifindex);
            }
        }
        self.manage_neighbours(&hops);
        self.check_kernel_forwarding(reconciler);
        self.accept_replies(reconciler, &addresses, &hops);
    }

    /// When a passthrough VIP is an address of this host, lets backends' replies from it in
    /// by the interfaces the balancer runs on and those toward the backends (`hops`).
    fn accept_replies<D: Datapath>(
        &mut self,
        reconciler: &Reconciler<D>,
        addresses: &[InterfaceAddress],
        hops: &BTreeSet<(u32, IpAddr)>,
    ) {
        let vips = reconciler
            .listeners()
            .values()
            .map(|l| l.listener.vip.address);
        let local_vips = accept_local::local_vips(vips, addresses);
        if local_vips.is_empty() {
            return;
        }
        let interfaces: BTreeSet<u32> = self
            .facts
            .interfaces
            .iter()
            .map(|i| i.ifindex)
            .chain(hops.iter().map(|(ifindex, _)| *ifindex))
            .collect();
        self.replies.accept(&local_vips, &interfaces);
    }

    /// Removes `ifindex` from the redirect map.
    fn leave_out<D: Datapath>(&mut self, reconciler: &mut Reconciler<D>, ifindex: u32) {
        if !self.redirect.contains(&ifindex) {
            return;
        }
        match reconciler.datapath_mut().remove_tx_port(ifindex) {
            Ok(()) => {
                self.redirect.remove(&ifindex);
                info!(
                    interface = %interface_name(ifindex),
                    "removed from the redirect map: it takes no redirected XDP frames"
                );
            }
            Err(error) => warn!(
                interface = %interface_name(ifindex), %error,
                "could not remove the interface from the redirect map"
            ),
        }
    }

    /// Keeps egress interface `ifindex` (toward `backend`) in the redirect map while it takes
    /// redirected frames, and out of it while it does not.
    fn sync_redirect<D: Datapath>(
        &mut self,
        reconciler: &mut Reconciler<D>,
        ifindex: u32,
        backend: IpAddr,
    ) {
        let interface = interface_name(ifindex);
        if !self.takes_redirects(ifindex) {
            self.leave_out(reconciler, ifindex);
            if self.refused.insert(ifindex) {
                warn!(
                    %interface, %backend,
                    "the route to a backend leaves through an interface that takes no redirected XDP frames (a NIC driver needs an XDP program on it: list it in `interfaces`; a veth needs an XDP program or GRO on its peer): left out of the redirect map, the kernel forwards the packets to the backend (pass_no_tx_port), slowly"
                );
            }
            return;
        }
        if self.refused.remove(&ifindex) {
            info!(%interface, "the interface takes redirected XDP frames now");
        }
        if self.redirect.contains(&ifindex) {
            return;
        }
        match reconciler.datapath_mut().add_tx_port(ifindex) {
            Ok(()) => {
                self.redirect.insert(ifindex);
                info!(
                    %interface, %backend,
                    "the route to a backend leaves through this interface: added to the redirect map"
                );
            }
            Err(error) => warn!(
                %interface, %backend, %error,
                "could not add the interface to the redirect map: packets to the backend go through the kernel (pass_no_tx_port)"
            ),
        }
    }

    /// Whether frames can be redirected to `ifindex`: when the interfaces the balancer runs on
    /// are all in generic mode, always (the kernel then sends a redirected frame as a socket
    /// buffer, which any interface takes); otherwise when the interface says so (see
    /// `host::netdev`). A kernel that cannot tell, or a failed question, counts as yes.
    fn takes_redirects(&mut self, ifindex: u32) -> bool {
        if let Some(&takes) = self.answers.get(&ifindex) {
            return takes;
        }
        let takes = self.ask_takes_redirects(ifindex);
        self.answers.insert(ifindex, takes);
        takes
    }

    fn ask_takes_redirects(&mut self, ifindex: u32) -> bool {
        let all_generic = !self.facts.interfaces.is_empty()
            && self
                .facts
                .interfaces
                .iter()
                .all(|i| i.mode == XdpAttachMode::Generic);
        if all_generic {
            return true;
        }
        match self.netdev.as_mut().map(|n| n.takes_redirects(ifindex)) {
            Some(Ok(takes)) => takes,
            Some(Err(error)) => {
                tracing::debug!(ifindex, %error, "could not read the interface's XDP features");
                true
            }
            None => true,
        }
    }

    /// Warns once about an interface the balancer runs on in driver mode that cannot send
    /// frames back out (`XDP_TX` takes the same path as a redirect to it).
    fn check_attached(&mut self) {
        let Some(netdev) = self.netdev.as_mut() else {
            return;
        };
        for interface in &self.facts.interfaces {
            if interface.mode != XdpAttachMode::Driver {
                continue;
            }
            if let Ok(false) = netdev.takes_redirects(interface.ifindex) {
                warn!(
                    interface = %interface.name,
                    "the balancer runs in driver mode on an interface that cannot send XDP frames (for a veth: its peer needs an XDP program or GRO on): frames sent back out of it (tx_local) are dropped by the kernel; fix the peer or attach in generic mode"
                );
            }
        }
    }

    /// Makes every next hop a managed neighbour (once each).
    fn manage_neighbours(&mut self, hops: &BTreeSet<(u32, IpAddr)>) {
        let missing: Vec<(u32, IpAddr)> = hops
            .iter()
            .filter(|hop| !self.managed.contains(hop))
            .copied()
            .collect();
        if missing.is_empty() {
            return;
        }
        let table = match self.rtnl.neighbours() {
            Ok(table) => table,
            Err(error) => {
                warn!(%error, "could not read the neighbour table");
                return;
            }
        };
        for (ifindex, address) in missing {
            let existing = table
                .iter()
                .find(|n| n.ifindex == ifindex && n.address == address);
            if existing.is_some_and(|n| n.is_static) {
                // Set by hand: its MAC is what the operator says, nothing to resolve.
                self.managed.insert((ifindex, address));
                continue;
            }
            let already = existing.is_some_and(|n| n.managed);
            if !already && let Err(error) = self.rtnl.manage_neighbour(ifindex, address) {
                warn!(
                    next_hop = %address, interface = %interface_name(ifindex), %error,
                    "could not make the next hop a managed neighbour: its MAC is learned from traffic through the kernel only"
                );
                continue;
            }
            info!(
                next_hop = %address, interface = %interface_name(ifindex),
                "next hop kept resolved by the kernel (managed neighbour)"
            );
            self.managed.insert((ifindex, address));
        }
    }

    /// Warns when encapsulated packets had to go through the kernel for want of a redirect
    /// map entry since the last look.
    fn check_kernel_forwarding<D: Datapath>(&mut self, reconciler: &Reconciler<D>) {
        let Ok(counters) = reconciler.datapath().counters() else {
            return;
        };
        let now = counter_value(&counters, Counter::PassNoTxPort);
        let new = now.saturating_sub(self.passed_no_tx_port);
        // Expected, and said once, while an egress interface is left out on purpose.
        if new > 0 && self.refused.is_empty() {
            warn!(
                packets = new,
                redirect_map = %self.redirect_interfaces().join(", "),
                "encapsulated packets went through the kernel because the FIB named an egress interface outside the redirect map (pass_no_tx_port); they are forwarded, slowly"
            );
        }
        self.passed_no_tx_port = now;
        let now = counter_value(&counters, Counter::DropOversized);
        let new = now.saturating_sub(self.oversized);
        if new > 0 {
            warn!(
                packets = new,
                "packets longer than the interfaces' MTU were dropped (drop_oversized): a virtual peer (veth, tap) hands over TSO/GSO aggregates, which XDP cannot split; turn segmentation offloads off on the peer (`ethtool -K PEER tso off gso off`) or attach in driver mode"
            );
        }
        self.oversized = now;
    }
}

/// An interface's name, or its index when it has none (any more).
pub fn interface_name(ifindex: u32) -> String {
    let mut buffer = [0 as libc::c_char; libc::IF_NAMESIZE];
    // SAFETY: `buffer` has the IF_NAMESIZE bytes the call may write.
    let name = unsafe { libc::if_indextoname(ifindex, buffer.as_mut_ptr()) };
    if name.is_null() {
        return format!("ifindex {ifindex}");
    }
    // SAFETY: on success `buffer` holds a NUL-terminated name.
    unsafe { std::ffi::CStr::from_ptr(buffer.as_ptr()) }
        .to_string_lossy()
        .into_owned()
}
