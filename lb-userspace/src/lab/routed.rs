//! A routed lab: the client behind a router, the balancer with a client-facing and a
//! backend-facing interface, each on its own switched segment.
//!
//! ```text
//!   client (198.18.2.1) ── c0 router (198.18.2.254)
//!                              f0 (198.18.0.254) ──┐ front: the balancer's l0 (198.18.0.2)
//!                              b0 (198.18.1.254) ──┐ back:  the balancer's l1 (198.18.1.2),
//!                                                     backend i (198.18.1.10+i, VIP on lo)
//! ```
//!
//! The router sends the VIPs to the balancer's `l0`; the balancer's XDP program runs on `l0`
//! alone (as an operator would configure it: the client-facing interface) and must redirect
//! encapsulated packets out of `l1` toward the backends; the backends answer the client
//! through the router (direct server return). The link between the client and the router can
//! have a smaller MTU on the router's side than on the client's, so that the client advertises
//! a larger MSS than the path carries and path MTU discovery must work through the balancer.
//!
//! Like real wires, the router's links segment what they forward (no TSO or GSO on them), and
//! the client computes its own checksums. The switch ports facing the balancer run `lb_pass`,
//! since a veth delivers `XDP_TX` and `XDP_REDIRECT` frames only to a peer with an XDP program
//! (or GRO); `back_port_xdp = false` leaves the back one without, as a host whose egress
//! interface takes no redirected frames.
//!
//! Two options model a balancer that also serves the VIPs itself (L7 listeners next to the
//! passthrough ones) on a network whose return path crosses it: `vip_on_balancer_lo` puts the
//! VIPs on the balancer's `lo`, and `replies_via_balancer` routes the backends' replies to
//! the client through the balancer's [`BACK`] address (it forwards them out of [`FRONT`] to
//! the router) instead of through the router. Together, every reply reaches the balancer
//! from one of its own addresses.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use super::{
    LabError, NetNs, Pki,
    netns::veth,
    passthrough::{
        IFACE, LabBackend, VIP_V4, VIP_V6, address_host, assign_vip_to_lo, passthrough_tables,
        plug, start_tls_servers,
    },
    sweep_stale,
};
use crate::loader::{AttachMode, Aux, attach};

pub const CLIENT_V4: Ipv4Addr = Ipv4Addr::new(198, 18, 2, 1);
pub const CLIENT_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 2, 0, 0, 0, 0, 1);
const ROUTER_CLIENT_V4: Ipv4Addr = Ipv4Addr::new(198, 18, 2, 254);
const ROUTER_CLIENT_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 2, 0, 0, 0, 0, 0xfe);
const ROUTER_FRONT_V4: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 254);
const ROUTER_FRONT_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0xfe);
const ROUTER_BACK_V4: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 254);
const ROUTER_BACK_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, 0, 0xfe);
pub const LB_FRONT_V4: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);
pub const LB_FRONT_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 2);
pub const LB_BACK_V4: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 2);
pub const LB_BACK_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, 0, 2);
/// The balancer's client-facing and backend-facing interfaces.
pub const FRONT: &str = "l0";
pub const BACK: &str = "l1";
/// MTU of every link unless told otherwise.
pub const MTU: u32 = 1500;

/// The address of backend `i` (0-based) on the back segment.
pub fn backend_v4(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(198, 18, 1, 10 + u8::try_from(i).unwrap_or(u8::MAX - 10))
}

/// The IPv6 address of backend `i` on the back segment.
pub fn backend_v6(i: usize) -> Ipv6Addr {
    Ipv6Addr::new(
        0x2001,
        0xdb8,
        1,
        0,
        0,
        0,
        0,
        0x10 + u16::try_from(i).unwrap_or(0xff),
    )
}

/// How to build a [`RoutedLab`].
#[derive(Clone, Copy, Debug)]
pub struct RoutedOptions {
    pub backends: usize,
    /// MTU of the router's end of its link to the client (the client's end has [`MTU`]).
    pub router_client_mtu: u32,
    /// Whether the back switch's port facing the balancer runs an XDP program, without which
    /// the balancer's [`BACK`] veth takes no redirected frames.
    pub back_port_xdp: bool,
    /// Whether the VIPs are on the balancer's `lo` too (as for L7 listeners on the VIPs).
    pub vip_on_balancer_lo: bool,
    /// Whether the backends' default routes go via the balancer's [`BACK`] address rather
    /// than the router's: their direct replies then cross the balancer's kernel.
    pub replies_via_balancer: bool,
}

impl Default for RoutedOptions {
    fn default() -> Self {
        Self {
            backends: 2,
            router_client_mtu: MTU,
            back_port_xdp: true,
            vip_on_balancer_lo: false,
            replies_via_balancer: false,
        }
    }
}

/// The whole lab; dropping it stops the servers and deletes every namespace.
pub struct RoutedLab {
    pub backends: Vec<LabBackend>,
    _aux: Aux,
    pub pki: Pki,
    pub client: NetNs,
    pub router: NetNs,
    pub lb: NetNs,
    pub front: NetNs,
    pub back: NetNs,
}

impl std::fmt::Debug for RoutedLab {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RoutedLab")
            .field("backends", &self.backends)
            .finish_non_exhaustive()
    }
}

/// A switch namespace with a bridge `br0`.
fn switch(prefix: &str) -> Result<NetNs, LabError> {
    let ns = NetNs::new(prefix)?;
    ns.ip(&["link", "add", "br0", "type", "bridge"])?;
    ns.ip(&["link", "set", "br0", "up"])?;
    Ok(ns)
}

/// Connects `iface` of `host` to `switch`'s bridge as port `port`.
fn plug_into(switch: &NetNs, host: &NetNs, iface: &str, port: &str) -> Result<(), LabError> {
    veth(host, iface, switch, port)?;
    host.up(iface, MTU)?;
    switch.up(port, MTU)?;
    switch.ip(&["link", "set", port, "master", "br0"])?;
    Ok(())
}

impl RoutedLab {
    /// Builds the namespaces, links, addresses and routes; attaches the backends' programs.
    /// `prefix` (letters, digits, `_`) names the namespaces; stale ones are removed first.
    pub fn build(prefix: &str, options: RoutedOptions) -> Result<Self, LabError> {
        sweep_stale(prefix)?;
        let front = switch(prefix)?;
        let back = switch(prefix)?;

        let client = NetNs::new(prefix)?;
        let router = NetNs::new(prefix)?;
        veth(&client, IFACE, &router, "c0")?;
        client.up(IFACE, MTU)?;
        router.up("c0", options.router_client_mtu)?;
        client.ip(&["link", "set", "lo", "up"])?;
        client.run(&["ethtool", "-K", IFACE, "tx", "off"])?;
        client.address(IFACE, (CLIENT_V4, 24), (CLIENT_V6, 64))?;
        client.default_via(ROUTER_CLIENT_V4, ROUTER_CLIENT_V6)?;

        router.address("c0", (ROUTER_CLIENT_V4, 24), (ROUTER_CLIENT_V6, 64))?;
        plug_into(&front, &router, "f0", "r")?;
        router.address("f0", (ROUTER_FRONT_V4, 24), (ROUTER_FRONT_V6, 64))?;
        plug_into(&back, &router, "b0", "r")?;
        router.address("b0", (ROUTER_BACK_V4, 24), (ROUTER_BACK_V6, 64))?;
        for iface in ["f0", "b0", "c0"] {
            // As a wire: what the router forwards leaves in segments of the MTU.
            router.run(&["ethtool", "-K", iface, "tso", "off", "gso", "off"])?;
        }
        for (key, value) in [
            ("net.ipv4.ip_forward", "1"),
            ("net.ipv6.conf.all.forwarding", "1"),
            ("net.ipv4.conf.all.rp_filter", "0"),
        ] {
            router.sysctl(key, value)?;
        }
        router.ip(&[
            "route",
            "add",
            &format!("{VIP_V4}/32"),
            "via",
            &LB_FRONT_V4.to_string(),
        ])?;
        router.ip(&[
            "-6",
            "route",
            "add",
            &format!("{VIP_V6}/128"),
            "via",
            &LB_FRONT_V6.to_string(),
        ])?;

        let lb = NetNs::new(prefix)?;
        lb.ip(&["link", "set", "lo", "up"])?;
        plug_into(&front, &lb, FRONT, "lb")?;
        lb.address(FRONT, (LB_FRONT_V4, 24), (LB_FRONT_V6, 64))?;
        plug_into(&back, &lb, BACK, "lb")?;
        lb.address(BACK, (LB_BACK_V4, 24), (LB_BACK_V6, 64))?;
        lb.default_via(ROUTER_FRONT_V4, ROUTER_FRONT_V6)?;
        for (key, value) in [
            ("net.ipv4.ip_forward", "1"),
            ("net.ipv6.conf.all.forwarding", "1"),
            ("net.ipv4.conf.all.rp_filter", "0"),
            ("net.ipv4.conf.all.send_redirects", "0"),
        ] {
            lb.sysctl(key, value)?;
        }
        if options.vip_on_balancer_lo {
            assign_vip_to_lo(&lb)?;
        }

        let mut aux = Aux::load()?;
        front.run_here(|| attach(&mut aux.ebpf, Aux::PASS, "lb", AttachMode::Driver))??;
        if options.back_port_xdp {
            back.run_here(|| attach(&mut aux.ebpf, Aux::PASS, "lb", AttachMode::Driver))??;
        }

        let mut backends = Vec::with_capacity(options.backends);
        for i in 0..options.backends {
            let ns = NetNs::new(prefix)?;
            plug(&back, &ns, &format!("b{i}"), MTU)?;
            let (v4, v6) = (backend_v4(i), backend_v6(i));
            address_host(&ns, v4, v6)?;
            if options.replies_via_balancer {
                ns.default_via(LB_BACK_V4, LB_BACK_V6)?;
            } else {
                ns.default_via(ROUTER_BACK_V4, ROUTER_BACK_V6)?;
            }
            backends.push(LabBackend::serve_vips(ns, i, v4, v6)?);
        }
        Ok(Self {
            backends,
            _aux: aux,
            pki: Pki::new("routed lab")?,
            client,
            router,
            lb,
            front,
            back,
        })
    }

    /// Starts a TLS server at `port` on the VIPs and on its own address in every backend.
    pub fn start_tls(&mut self, port: u16) -> Result<(), LabError> {
        for backend in &mut self.backends {
            start_tls_servers(backend, &self.pki, port)?;
        }
        Ok(())
    }

    /// The backends' addresses of one family, for a pool.
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

/// The balancer configuration of a routed lab with `backends` backends: TLS listeners on port
/// 443 of each VIP, the XDP program on the client-facing interface only, no outer source
/// prefix (the host's address is the default), and `extra` lines added to `[datapath]`.
pub fn routed_config(paths: &super::daemon::DaemonPaths, backends: usize, extra: &str) -> String {
    format!(
        r#"# The routed lab's balancer: XDP on the client-facing interface; the backends behind the other.
[datapath]
interfaces = ["{FRONT}"]
conn_table_size = 65536
max_listeners = 8
pin_dir = "{pin_dir}"
{extra}

[control]
socket = "{socket}"

{tables}"#,
        pin_dir = paths.pin_dir.display(),
        socket = paths.socket.display(),
        tables = passthrough_tables(backends, backend_v4, backend_v6, ""),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        config::Config,
        lab::{daemon::DaemonPaths, passthrough},
    };

    #[test]
    fn both_labs_serve_a_passthrough_listener_on_each_vip() {
        let paths = DaemonPaths {
            socket: "/lab/lb.sock".into(),
            pin_dir: "/sys/fs/bpf/lab".into(),
        };
        let labs = [
            (routed_config(&paths, 2, ""), backend_v4(1), true),
            (
                passthrough::lab_config(&paths, 2),
                passthrough::backend_v4(1),
                false,
            ),
        ];
        for (text, second, checked) in labs {
            let config = Config::parse(&text, "lab.toml").unwrap_or_else(|e| panic!("{e}\n{text}"));
            assert_eq!(config.listeners["tls4"].address, IpAddr::V4(VIP_V4));
            assert_eq!(config.listeners["tls6"].address, IpAddr::V6(VIP_V6));
            assert_eq!(config.listeners["tls6"].pool, "web6");
            assert_eq!(config.pools["web4"].backends[1].address, IpAddr::V4(second));
            assert_eq!(config.pools["web6"].backends.len(), 2);
            assert_eq!(config.pools["web4"].health_check.is_some(), checked);
        }
    }
}
