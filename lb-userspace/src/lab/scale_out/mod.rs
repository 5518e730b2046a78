//! The scale-out lab: several balancer nodes behind one router that spreads flows over them by
//! ECMP, each node announcing the VIPs to the router by BGP with its own BIRD.
//!
//! ```text
//!   client (198.18.20.1) ── c0 router (198.18.20.254, BIRD AS 65000)
//!                              n<i> 198.18.21.<4i+1>/30 ── eth0 node i (198.18.21.<4i+2>,
//!                                                          BIRD AS 65001, lb run)
//!                              b0 (198.18.22.254) ── switch ── backend j (198.18.22.<10+j>,
//!                                                               VIP on lo, decapsulation)
//!   IPv6: 2001:db8:20::1 / ::fe, 2001:db8:21:<i>::1 / ::2, 2001:db8:22::fe / ::<10+j>
//! ```
//!
//! A node announces a VIP by putting a route for it into kernel table 200 with protocol 200
//! (its daemon does, with `[announce]`: [`ScaleOutLab::start_announcing_daemon`]; or
//! [`ScaleOutLab::announce`] by hand, `VIP dev lo table 200 proto 200`); its BIRD
//! (configured by the shipped `packaging/bird/lb-node.conf`, included verbatim) learns the
//! route and exports it to the router, whose BIRD installs one multipath route per VIP over
//! the nodes that announce it (`merge paths on`), accepting sessions from any node of the
//! nodes' prefix (`neighbor range`).
//!
//! Traffic: the router hashes each flow's 5-tuple (`fib_multipath_hash_policy = 3`, fields
//! `0x37`, a fixed seed where the kernel has one) to a node; the node's XDP program
//! encapsulates it to a backend and sends it back out of its uplink to the router, which
//! forwards it to the backend; the backend decapsulates it and answers the client through
//! the router (direct server return; the router's `rp_filter` is off). The router's ports
//! facing the nodes run `lb_pass`, since a veth delivers `XDP_TX` frames only to a peer with an
//! XDP program. Every node runs the same configuration ([`node_daemon_config`]: same pools,
//! same ring and seed), so every node sends a flow to the same backend.
//!
//! For L7 listeners on the nodes, [`ScaleOutLab::serve_vip_locally`] puts the VIPs on every
//! node's `lo` and [`ScaleOutLab::start_http`] starts HTTP servers on the backends.
//!
//! The address plan, the router's BIRD configuration and the nodes' daemon configurations are
//! in `plan.rs`.
//!
//! [`ScaleOutLab::predicted_node`] asks the router's kernel where a flow goes (`ip route get`
//! with the flow's ports): exact for IPv4. For IPv6 the kernel hashes forwarded packets
//! differently from `ip route get`, so placement is stable but not predictable that way.

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    path::Path,
    thread,
    time::{Duration, Instant},
};

mod plan;

pub use plan::{
    ANNOUNCE_PROTO, ANNOUNCE_TABLE, CLIENT_V4, CLIENT_V6, NODE_HASH_SEED, NODE_LINKS_V4,
    ROUTER_CLIENT_IFACE, announcing_daemon_config, backend_v4, backend_v6, node_daemon_config,
    node_v4, node_v6, router_iface, router_v4, router_v6,
};
use plan::{
    CLIENT_MTU, MULTIPATH_SEED, ROUTER_BACK_V4, ROUTER_BACK_V6, ROUTER_CLIENT_V4, ROUTER_CLIENT_V6,
    router_bird_config,
};

use super::{
    LabError, NetNs, Pki,
    bird::{Bird, LB_NODE_CONF, node_config},
    daemon::DaemonProcess,
    http_host::HttpPorts,
    netns::veth,
    passthrough::{
        IFACE, INNER_MTU, LabBackend, VIP_V4, VIP_V6, address_host, assign_vip_to_lo, plug,
        start_tls_servers,
    },
    side_by_side::start_http_servers,
    sweep_stale,
};
use crate::loader::{AttachMode, Aux, attach};

/// A balancer node: its BIRD, its daemon (when started), its namespace.
pub struct ScaleNode {
    /// Declared first: stopped before BIRD and the namespace go.
    pub daemon: Option<DaemonProcess>,
    pub bird: Bird,
    pub index: usize,
    pub v4: Ipv4Addr,
    pub v6: Ipv6Addr,
    pub ns: NetNs,
}

impl std::fmt::Debug for ScaleNode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ScaleNode")
            .field("index", &self.index)
            .field("v4", &self.v4)
            .finish_non_exhaustive()
    }
}

/// The whole lab; dropping it stops the daemons, the BIRDs and the servers, and deletes every
/// namespace.
pub struct ScaleOutLab {
    pub nodes: Vec<ScaleNode>,
    pub router_bird: Bird,
    pub backends: Vec<LabBackend>,
    _aux: Aux,
    pub pki: Pki,
    pub client: NetNs,
    pub router: NetNs,
    pub switch: NetNs,
}

impl std::fmt::Debug for ScaleOutLab {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ScaleOutLab")
            .field("nodes", &self.nodes)
            .field("backends", &self.backends)
            .finish_non_exhaustive()
    }
}

impl ScaleOutLab {
    /// Builds the namespaces, links, addresses and routes; starts the router's BIRD and every
    /// node's; attaches the backends' programs. No daemon runs and nothing is announced yet
    /// ([`ScaleOutLab::start_daemon`], [`ScaleOutLab::announce`]). `prefix` (letters, digits,
    /// `_`) names the namespaces; stale ones are removed first.
    pub fn build(prefix: &str, nodes: usize, backends: usize) -> Result<Self, LabError> {
        sweep_stale(prefix)?;
        let switch = NetNs::new(prefix)?;
        switch.ip(&["link", "add", "br0", "type", "bridge"])?;
        switch.ip(&["link", "set", "br0", "up"])?;
        let client = NetNs::new(prefix)?;
        let router = NetNs::new(prefix)?;
        configure_router(&router)?;

        veth(&client, IFACE, &router, ROUTER_CLIENT_IFACE)?;
        client.up(IFACE, CLIENT_MTU)?;
        router.up(ROUTER_CLIENT_IFACE, CLIENT_MTU)?;
        client.ip(&["link", "set", "lo", "up"])?;
        // The client computes its own checksums: a frame sent on by XDP keeps no promise of a
        // checksum to fill in.
        client.run(&["ethtool", "-K", IFACE, "tx", "off"])?;
        client.address(IFACE, (CLIENT_V4, 24), (CLIENT_V6, 64))?;
        client.default_via(ROUTER_CLIENT_V4, ROUTER_CLIENT_V6)?;
        router.address(
            ROUTER_CLIENT_IFACE,
            (ROUTER_CLIENT_V4, 24),
            (ROUTER_CLIENT_V6, 64),
        )?;

        plug(&switch, &router, "r", INNER_MTU)?;
        router.ip(&["link", "set", IFACE, "name", "b0"])?;
        router.ip(&["link", "set", "b0", "up"])?;
        router.address("b0", (ROUTER_BACK_V4, 24), (ROUTER_BACK_V6, 64))?;

        let mut aux = Aux::load()?;
        let mut node_namespaces = Vec::with_capacity(nodes);
        for i in 0..nodes {
            let ns = NetNs::new(prefix)?;
            connect_node(&router, &ns, i)?;
            router.run_here(|| {
                attach(
                    &mut aux.ebpf,
                    Aux::PASS,
                    &router_iface(i),
                    AttachMode::Driver,
                )
            })??;
            node_namespaces.push(ns);
        }
        for iface in ["b0", ROUTER_CLIENT_IFACE]
            .into_iter()
            .map(str::to_owned)
            .chain((0..nodes).map(router_iface))
        {
            // As a wire: what the router forwards leaves in segments of the MTU.
            router.run(&["ethtool", "-K", &iface, "tso", "off", "gso", "off"])?;
        }

        let mut lab_backends = Vec::with_capacity(backends);
        for j in 0..backends {
            let ns = NetNs::new(prefix)?;
            plug(&switch, &ns, &format!("b{j}"), INNER_MTU)?;
            let (v4, v6) = (backend_v4(j), backend_v6(j));
            address_host(&ns, v4, v6)?;
            ns.default_via(ROUTER_BACK_V4, ROUTER_BACK_V6)?;
            lab_backends.push(LabBackend::serve_vips(ns, j, v4, v6)?);
        }

        let router_bird = Bird::start(&router, &[], router_bird_config)?;
        let mut lab_nodes = Vec::with_capacity(nodes);
        for (i, ns) in node_namespaces.into_iter().enumerate() {
            let bird = Bird::start(&ns, &[("lb-node.conf", LB_NODE_CONF)], |dir| {
                node_config(dir, node_v4(i), router_v4(i))
            })?;
            lab_nodes.push(ScaleNode {
                daemon: None,
                bird,
                index: i,
                v4: node_v4(i),
                v6: node_v6(i),
                ns,
            });
        }
        Ok(Self {
            nodes: lab_nodes,
            router_bird,
            backends: lab_backends,
            _aux: aux,
            pki: Pki::new("scale-out lab")?,
            client,
            router,
            switch,
        })
    }

    /// Starts a TLS server at `port` on the VIPs and on its own address in every backend.
    pub fn start_tls(&mut self, port: u16) -> Result<(), LabError> {
        for backend in &mut self.backends {
            start_tls_servers(backend, &self.pki, port)?;
        }
        Ok(())
    }

    /// Starts HTTP servers at `ports` on every backend's own IPv4 address, for L7 listeners.
    pub fn start_http(&mut self, ports: HttpPorts) -> Result<(), LabError> {
        for backend in &mut self.backends {
            start_http_servers(backend, &self.pki, ports)?;
        }
        Ok(())
    }

    /// Assigns the VIPs to every node's `lo`, so that the nodes' L7 listeners can bind them
    /// and their kernels accept what the XDP programs pass. Call it before starting daemons
    /// with L7 listeners.
    pub fn serve_vip_locally(&self) -> Result<(), LabError> {
        self.nodes
            .iter()
            .try_for_each(|node| assign_vip_to_lo(&node.ns))
    }

    /// Stops backend `j`'s TLS servers, as if its process died: health checks are refused and
    /// its connections end.
    pub fn stop_backend(&mut self, j: usize) {
        if let Some(backend) = self.backends.get_mut(j) {
            backend.servers.clear();
        }
    }

    /// Node `i`, or an error saying the lab has none.
    pub fn node(&self, i: usize) -> Result<&ScaleNode, LabError> {
        self.nodes
            .get(i)
            .ok_or_else(|| LabError::Daemon(format!("the lab has no node {i}")))
    }

    fn node_mut(&mut self, i: usize) -> Result<&mut ScaleNode, LabError> {
        self.nodes
            .get_mut(i)
            .ok_or_else(|| LabError::Daemon(format!("the lab has no node {i}")))
    }

    /// Starts `lb run` (the binary `binary`) on node `i` with [`node_daemon_config`]: it
    /// announces nothing ([`ScaleOutLab::announce`] does, by hand).
    pub fn start_daemon(&mut self, i: usize, binary: &Path) -> Result<(), LabError> {
        self.start_daemon_with(i, binary, false, &|config| config)
    }

    /// Starts `lb run` on node `i` with [`announcing_daemon_config`]: the daemon announces the
    /// VIPs itself (table 200, protocol 200, through its own device) and reads the node's BIRD.
    pub fn start_announcing_daemon(&mut self, i: usize, binary: &Path) -> Result<(), LabError> {
        self.start_daemon_with(i, binary, true, &|config| config)
    }

    /// [`ScaleOutLab::start_announcing_daemon`] with the configuration text passed through
    /// `edit` first: a node with health checks, a metrics endpoint, or a configuration that
    /// differs from the others'.
    pub fn start_announcing_daemon_edited(
        &mut self,
        i: usize,
        binary: &Path,
        edit: &dyn Fn(String) -> String,
    ) -> Result<(), LabError> {
        self.start_daemon_with(i, binary, true, edit)
    }

    fn start_daemon_with(
        &mut self,
        i: usize,
        binary: &Path,
        announcing: bool,
        edit: &dyn Fn(String) -> String,
    ) -> Result<(), LabError> {
        let backends = self.backends.len();
        let node = self.node_mut(i)?;
        if node.daemon.is_some() {
            return Err(LabError::Daemon(format!("node {i}'s daemon runs already")));
        }
        let bird_socket = node.bird.socket();
        let daemon = DaemonProcess::start(binary, &node.ns, |paths| {
            edit(if announcing {
                announcing_daemon_config(paths, backends, &bird_socket)
            } else {
                node_daemon_config(paths, backends)
            })
        })?;
        node.daemon = Some(daemon);
        Ok(())
    }

    /// Node `i`'s daemon, or an error if none was started.
    pub fn daemon(&self, i: usize) -> Result<&DaemonProcess, LabError> {
        self.node(i)?
            .daemon
            .as_ref()
            .ok_or_else(|| LabError::Daemon(format!("node {i} runs no daemon")))
    }

    /// Node `i`'s daemon, mutably (to stop, kill or restart it).
    pub fn daemon_mut(&mut self, i: usize) -> Result<&mut DaemonProcess, LabError> {
        self.node_mut(i)?
            .daemon
            .as_mut()
            .ok_or_else(|| LabError::Daemon(format!("node {i} runs no daemon")))
    }

    /// Announces both VIPs from node `i`, as its daemon would: a route for each in table 200
    /// with protocol 200 (here through `lo`; the daemon's go through its own device).
    pub fn announce(&self, i: usize) -> Result<(), LabError> {
        let ns = &self.node(i)?.ns;
        for (family, vip) in vip_routes() {
            ns.ip(&[
                family,
                "route",
                "replace",
                &vip,
                "dev",
                "lo",
                "table",
                ANNOUNCE_TABLE,
                "proto",
                ANNOUNCE_PROTO,
            ])?;
        }
        Ok(())
    }

    /// Withdraws both VIPs from node `i` (deletes the routes [`ScaleOutLab::announce`] added).
    pub fn withdraw(&self, i: usize) -> Result<(), LabError> {
        let ns = &self.node(i)?.ns;
        for (family, vip) in vip_routes() {
            ns.ip(&[family, "route", "del", &vip, "table", ANNOUNCE_TABLE])?;
        }
        Ok(())
    }

    /// Starts node `i`'s BIRD again after a stop or a kill.
    pub fn start_bird(&mut self, i: usize) -> Result<(), LabError> {
        self.node_mut(i)?.bird.start_again()
    }

    /// Stops node `i`'s BIRD cleanly (SIGTERM: it tells the router).
    pub fn stop_bird(&mut self, i: usize) -> Result<(), LabError> {
        self.node_mut(i)?.bird.stop()
    }

    /// Kills node `i`'s BIRD (SIGKILL: the router sees its session close).
    pub fn kill_bird(&mut self, i: usize) -> Result<(), LabError> {
        self.node_mut(i)?.bird.kill()
    }

    /// Pauses node `i`'s BIRD (SIGSTOP: a silent node; the router's hold timer finds it).
    pub fn pause_bird(&mut self, i: usize) -> Result<(), LabError> {
        self.node_mut(i)?.bird.pause()
    }

    /// Lets node `i`'s paused BIRD run again.
    pub fn resume_bird(&mut self, i: usize) -> Result<(), LabError> {
        self.node_mut(i)?.bird.resume()
    }

    /// Takes node `i`'s uplink down (the router's end loses its carrier).
    pub fn link_down(&self, i: usize) -> Result<(), LabError> {
        self.node(i)?.ns.ip(&["link", "set", IFACE, "down"])?;
        Ok(())
    }

    /// Brings node `i`'s uplink up again and restores its default routes, which the kernel
    /// deleted with the link (its IPv6 address stays: `keep_addr_on_down`).
    pub fn link_up(&self, i: usize) -> Result<(), LabError> {
        let ns = &self.node(i)?.ns;
        ns.ip(&["link", "set", IFACE, "up"])?;
        ns.default_via(router_v4(i), router_v6(i))
    }

    /// The next hops of the router's route to `vip` (empty if it has none).
    pub fn next_hops(&self, vip: IpAddr) -> Result<Vec<IpAddr>, LabError> {
        let family = if vip.is_ipv4() { "-4" } else { "-6" };
        let out = self
            .router
            .ip(&[family, "route", "show", &vip.to_string()])?;
        Ok(parse_next_hops(&out))
    }

    /// Waits until the router's route to `vip` has `count` next hops, polling every 2 ms;
    /// returns how long that took.
    pub fn wait_next_hops(
        &self,
        vip: IpAddr,
        count: usize,
        timeout: Duration,
    ) -> Result<Duration, LabError> {
        let start = Instant::now();
        loop {
            let hops = self.next_hops(vip)?;
            if hops.len() == count {
                return Ok(start.elapsed());
            }
            if start.elapsed() > timeout {
                return Err(LabError::Daemon(format!(
                    "the router's route to {vip} has next hops {hops:?}, not {count}, after \
                     {timeout:?}; router BIRD:\n{}",
                    self.router_bird
                        .birdc(&["show", "protocols"])
                        .unwrap_or_else(|e| e.to_string())
                )));
            }
            thread::sleep(Duration::from_millis(2));
        }
    }

    /// The node the router sends a TCP flow to, by its kernel (`ip route get ... iif c0
    /// ipproto tcp sport dport`); `None` if it sends it elsewhere. IPv4 only: for IPv6 the
    /// kernel hashes forwarded packets differently from `ip route get`.
    pub fn predicted_node(
        &self,
        client: Ipv4Addr,
        sport: u16,
        vip: Ipv4Addr,
        dport: u16,
    ) -> Result<Option<usize>, LabError> {
        let out = self.router.ip(&[
            "route",
            "get",
            &vip.to_string(),
            "from",
            &client.to_string(),
            "iif",
            ROUTER_CLIENT_IFACE,
            "ipproto",
            "tcp",
            "sport",
            &sport.to_string(),
            "dport",
            &dport.to_string(),
        ])?;
        Ok(parse_next_hops(&out)
            .first()
            .and_then(|hop| self.node_of(*hop)))
    }

    /// The node whose link address is `hop`.
    pub fn node_of(&self, hop: IpAddr) -> Option<usize> {
        self.nodes
            .iter()
            .position(|n| hop == IpAddr::V4(n.v4) || hop == IpAddr::V6(n.v6))
    }

    /// The backends' addresses of one family.
    pub fn backend_addresses(&self, v4: bool) -> Vec<IpAddr> {
        self.backends
            .iter()
            .map(|b| {
                if v4 {
                    IpAddr::V4(b.v4)
                } else {
                    IpAddr::V6(b.v6)
                }
            })
            .collect()
    }
}

/// The announced routes: (`ip` family flag, prefix).
fn vip_routes() -> [(&'static str, String); 2] {
    [
        ("-4", format!("{VIP_V4}/32")),
        ("-6", format!("{VIP_V6}/128")),
    ]
}

/// The router's settings: forwarding, the multipath hash over the 5-tuple with a fixed seed,
/// no reverse-path filter (the backends' replies come from the VIPs, routed toward the nodes),
/// addresses kept on a link down.
fn configure_router(router: &NetNs) -> Result<(), LabError> {
    router.ip(&["link", "set", "lo", "up"])?;
    for (key, value) in [
        ("net.ipv4.ip_forward", "1"),
        ("net.ipv6.conf.all.forwarding", "1"),
        ("net.ipv4.conf.all.rp_filter", "0"),
        ("net.ipv4.conf.default.rp_filter", "0"),
        // Hash the fields themselves (policy 3): with policy 1 the kernel takes a local
        // sender's random socket hash, which a veth keeps, and placement is random.
        ("net.ipv4.fib_multipath_hash_policy", "3"),
        ("net.ipv4.fib_multipath_hash_fields", "0x37"),
        ("net.ipv6.fib_multipath_hash_policy", "3"),
        ("net.ipv6.fib_multipath_hash_fields", "0x37"),
        ("net.ipv6.conf.all.keep_addr_on_down", "1"),
        ("net.ipv6.conf.default.keep_addr_on_down", "1"),
    ] {
        router.sysctl(key, value)?;
    }
    if Path::new("/proc/sys/net/ipv4/fib_multipath_hash_seed").exists() {
        router.sysctl("net.ipv4.fib_multipath_hash_seed", MULTIPATH_SEED)?;
    }
    Ok(())
}

/// Links node `i` (namespace `ns`) to the router: the veth, addresses, the node's default
/// routes and settings.
fn connect_node(router: &NetNs, ns: &NetNs, i: usize) -> Result<(), LabError> {
    for (key, value) in [
        // Before the link exists, so that it inherits them.
        ("net.ipv6.conf.all.keep_addr_on_down", "1"),
        ("net.ipv6.conf.default.keep_addr_on_down", "1"),
        ("net.ipv4.ip_forward", "1"),
        ("net.ipv6.conf.all.forwarding", "1"),
        ("net.ipv4.conf.all.rp_filter", "0"),
        ("net.ipv4.conf.default.rp_filter", "0"),
        ("net.ipv4.conf.all.send_redirects", "0"),
        ("net.ipv4.conf.default.send_redirects", "0"),
    ] {
        ns.sysctl(key, value)?;
    }
    let port = router_iface(i);
    veth(router, &port, ns, IFACE)?;
    router.up(&port, INNER_MTU)?;
    ns.up(IFACE, INNER_MTU)?;
    ns.ip(&["link", "set", "lo", "up"])?;
    router.address(&port, (router_v4(i), 30), (router_v6(i), 64))?;
    ns.address(IFACE, (node_v4(i), 30), (node_v6(i), 64))?;
    ns.default_via(router_v4(i), router_v6(i))
}

/// The next hops in `ip route show` or `ip route get` output: every address after `via`
/// (`via inet6 ADDR` for an IPv6 next hop of an IPv4 route).
fn parse_next_hops(out: &str) -> Vec<IpAddr> {
    let words: Vec<&str> = out.split_whitespace().collect();
    words
        .iter()
        .enumerate()
        .filter(|(_, w)| **w == "via")
        .filter_map(|(k, _)| {
            let next = words.get(k + 1)?;
            let address = if matches!(*next, "inet" | "inet6") {
                words.get(k + 2)?
            } else {
                next
            };
            address.parse().ok()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn next_hops_are_read_from_single_and_multipath_routes() {
        let multipath = "198.18.100.1 proto bird metric 32 \n\tnexthop via 198.18.21.2 dev n0 \
                         weight 1 \n\tnexthop via 198.18.21.6 dev n1 weight 1 \n";
        assert_eq!(
            parse_next_hops(multipath),
            vec![IpAddr::V4(node_v4(0)), IpAddr::V4(node_v4(1))]
        );
        let single = "198.18.100.1 via 198.18.21.10 dev n2 proto bird metric 32 \n";
        assert_eq!(parse_next_hops(single), vec![IpAddr::V4(node_v4(2))]);
        let six = "2001:db8:100::1 proto bird metric 32 pref medium\n\tnexthop via \
                   2001:db8:21:1::2 dev n1 weight 1 \n";
        assert_eq!(parse_next_hops(six), vec![IpAddr::V6(node_v6(1))]);
        assert!(parse_next_hops("").is_empty());
        let get = "198.18.100.1 from 198.18.20.1 via 198.18.21.6 dev n1 table main uid 0 \n    \
                   cache iif c0 \n";
        assert_eq!(parse_next_hops(get), vec![IpAddr::V4(node_v4(1))]);
    }
}
