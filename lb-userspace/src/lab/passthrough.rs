//! The lab of a passthrough deployment: one switched L2 segment with a client, the balancer
//! and N backends, each in its own network namespace.
//!
//! ```text
//!   client (198.18.0.1) ──┐
//!   lb     (198.18.0.2) ──┤ br0 in the switch namespace
//!   backend i (198.18.0.10+i, VIP on lo) ──┘
//! ```
//!
//! The client routes the VIPs via the balancer. The balancer's XDP program (attached by the
//! caller to `lb`'s `eth0`) encapsulates and sends each packet back out to a backend; the
//! backend's decapsulation program strips the outer header and its kernel delivers the packet
//! to the VIP on its loopback; the backend answers the client directly (direct server return).
//!
//! The switch side of the balancer's veth runs `lb_pass`, because a veth delivers `XDP_TX`
//! frames only to a peer with an XDP program. The client computes its own checksums (veth
//! checksum offload off), as a client behind a real network does. The segment behind the balancer carries 1600-byte
//! frames, so that a full-sized client packet still fits once encapsulated.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use aya::programs::XdpMode;

use super::{LabError, NetNs, Pki, TlsServer, http_host::HttpHost, netns::veth, sweep_stale};
use crate::loader::{AttachMode, Aux, DECAP_PROGRAM, Decap, attach};

pub const CLIENT_V4: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
pub const CLIENT_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1);
pub const LB_V4: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);
pub const LB_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 2);
pub const VIP_V4: Ipv4Addr = Ipv4Addr::new(198, 18, 100, 1);
pub const VIP_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0x100, 0, 0, 0, 0, 1);
/// Outer source prefixes for the balancer's configuration.
pub const ENCAP_V4: &str = "198.18.255.0/24";
pub const ENCAP_V6: &str = "2001:db8:ff::/112";
/// The name every backend certificate carries (clients use it as SNI).
pub const VIP_NAME: &str = "vip.lb.test";
/// Every host's interface on the segment.
pub const IFACE: &str = "eth0";
/// MTU of the client's link, and of the links behind the balancer.
pub const CLIENT_MTU: u32 = 1500;
pub const INNER_MTU: u32 = 1600;

/// A backend host.
pub struct LabBackend {
    /// TLS servers on the VIP; dropped (stopped) first.
    pub servers: Vec<TlsServer>,
    /// HTTP servers on its own address, for L7 listeners (see `side_by_side`), if started.
    pub http: Option<HttpHost>,
    /// Keeps the decapsulation program attached.
    _decap: Decap,
    pub name: String,
    pub v4: Ipv4Addr,
    pub v6: Ipv6Addr,
    pub ns: NetNs,
}

impl std::fmt::Debug for LabBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LabBackend")
            .field("name", &self.name)
            .field("v4", &self.v4)
            .finish_non_exhaustive()
    }
}

/// The whole lab. Dropping it stops the servers, detaches the programs and deletes every
/// namespace (and with them every link).
pub struct PassthroughLab {
    pub backends: Vec<LabBackend>,
    _aux: Aux,
    pub pki: Pki,
    pub client: NetNs,
    pub lb: NetNs,
    pub switch: NetNs,
}

impl std::fmt::Debug for PassthroughLab {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PassthroughLab")
            .field("backends", &self.backends)
            .finish_non_exhaustive()
    }
}

/// The address of backend `i` (0-based).
pub fn backend_v4(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(198, 18, 0, 10 + u8::try_from(i).unwrap_or(u8::MAX - 10))
}

/// The IPv6 address of backend `i` (0-based).
pub fn backend_v6(i: usize) -> Ipv6Addr {
    Ipv6Addr::new(
        0x2001,
        0xdb8,
        0,
        0,
        0,
        0,
        0,
        0x10 + u16::try_from(i).unwrap_or(0xff),
    )
}

impl PassthroughLab {
    /// Builds the namespaces, links and addresses, and attaches the backends' programs.
    /// `prefix` (letters, digits, `_`) names the namespaces; namespaces a killed earlier run
    /// left with the same prefix are removed first.
    pub fn build(prefix: &str, backends: usize) -> Result<Self, LabError> {
        sweep_stale(prefix)?;
        let switch = NetNs::new(prefix)?;
        switch.ip(&["link", "add", "br0", "type", "bridge"])?;
        switch.ip(&["link", "set", "br0", "up"])?;

        let client = NetNs::new(prefix)?;
        plug(&switch, &client, "client", CLIENT_MTU)?;
        // A veth leaves TCP checksums to "hardware" that does not exist; the kernel passes
        // that promise along with the packet, but a frame sent by XDP loses it and would
        // arrive at the backend with a partial checksum. A real NIC fills checksums in.
        client.run(&["ethtool", "-K", IFACE, "tx", "off"])?;
        address_host(&client, CLIENT_V4, CLIENT_V6)?;
        client.ip(&[
            "route",
            "add",
            &format!("{VIP_V4}/32"),
            "via",
            &LB_V4.to_string(),
        ])?;
        client.ip(&[
            "-6",
            "route",
            "add",
            &format!("{VIP_V6}/128"),
            "via",
            &LB_V6.to_string(),
        ])?;

        let lb = NetNs::new(prefix)?;
        plug(&switch, &lb, "lb", INNER_MTU)?;
        address_host(&lb, LB_V4, LB_V6)?;
        for (key, value) in [
            // The FIB lookup needs forwarding on, and the kernel forwards the first packets
            // to a next hop whose MAC the balancer does not know yet.
            ("net.ipv4.ip_forward", "1"),
            ("net.ipv6.conf.all.forwarding", "1"),
            ("net.ipv4.conf.all.rp_filter", "0"),
            ("net.ipv4.conf.eth0.rp_filter", "0"),
            ("net.ipv4.conf.all.send_redirects", "0"),
            ("net.ipv4.conf.eth0.send_redirects", "0"),
        ] {
            lb.sysctl(key, value)?;
        }

        let mut aux = Aux::load()?;
        switch.run_here(|| attach(&mut aux.ebpf, Aux::PASS, "lb", AttachMode::Driver))??;

        let mut lab_backends = Vec::with_capacity(backends);
        for i in 0..backends {
            lab_backends.push(build_backend(prefix, &switch, i)?);
        }
        Ok(Self {
            backends: lab_backends,
            _aux: aux,
            pki: Pki::new("lab")?,
            client,
            lb,
            switch,
        })
    }

    /// Starts a TLS server at `port` on the VIP (IPv4 and IPv6) and on its own IPv4 address
    /// (for health checks) in every backend, each with its own certificate for [`VIP_NAME`],
    /// `<backend name>.lb.test` and its address.
    pub fn start_tls(&mut self, port: u16) -> Result<(), LabError> {
        for i in 0..self.backends.len() {
            self.start_backend(i, port)?;
        }
        Ok(())
    }

    /// Starts backend `i`'s TLS servers (see [`PassthroughLab::start_tls`]).
    pub fn start_backend(&mut self, i: usize, port: u16) -> Result<(), LabError> {
        start_tls_servers(backend_mut(&mut self.backends, i)?, &self.pki, port)
    }

    /// Stops backend `i`'s servers, as if its process died: health checks are refused and its
    /// connections end.
    pub fn stop_backend(&mut self, i: usize) {
        if let Some(backend) = self.backends.get_mut(i) {
            backend.servers.clear();
        }
    }

    /// The backend whose certificate names `name` (`<backend>.lb.test`).
    pub fn backend_by_cert_name(&self, names: &[String]) -> Option<&LabBackend> {
        self.backends
            .iter()
            .find(|b| names.iter().any(|n| *n == format!("{}.lb.test", b.name)))
    }
}

/// Starts `backend`'s TLS servers at `port` on the VIPs and on its own IPv4 address, with a
/// certificate for [`VIP_NAME`], `<backend name>.lb.test` and its address.
pub(super) fn start_tls_servers(
    backend: &mut LabBackend,
    pki: &Pki,
    port: u16,
) -> Result<(), LabError> {
    let own_name = format!("{}.lb.test", backend.name);
    let own_address = backend.v4.to_string();
    let issued = pki.issue(&[VIP_NAME, &own_name, &own_address])?;
    for address in [
        IpAddr::V4(VIP_V4),
        IpAddr::V6(VIP_V6),
        IpAddr::V4(backend.v4),
    ] {
        let bind = SocketAddr::new(address, port);
        let server = TlsServer::start(Some(&backend.ns), bind, &backend.name, &issued)?;
        backend.servers.push(server);
    }
    Ok(())
}

/// Connects `host` to the switch: `eth0` in the host, `port` on the bridge.
pub(super) fn plug(switch: &NetNs, host: &NetNs, port: &str, mtu: u32) -> Result<(), LabError> {
    veth(host, IFACE, switch, port)?;
    let mtu = mtu.to_string();
    host.ip(&["link", "set", IFACE, "mtu", &mtu])?;
    switch.ip(&["link", "set", port, "mtu", &mtu])?;
    switch.ip(&["link", "set", port, "master", "br0"])?;
    host.ip(&["link", "set", "lo", "up"])?;
    Ok(())
}

/// Gives `host`'s `eth0` its addresses (IPv6 without duplicate address detection, so they are
/// usable at once).
pub(super) fn address_host(host: &NetNs, v4: Ipv4Addr, v6: Ipv6Addr) -> Result<(), LabError> {
    host.ip(&["addr", "add", &format!("{v4}/24"), "dev", IFACE])?;
    host.ip(&[
        "-6",
        "addr",
        "add",
        &format!("{v6}/64"),
        "dev",
        IFACE,
        "nodad",
    ])?;
    Ok(())
}

/// Backend `i` of `backends`, or an error saying the lab has none.
pub(super) fn backend_mut(
    backends: &mut [LabBackend],
    i: usize,
) -> Result<&mut LabBackend, LabError> {
    backends
        .get_mut(i)
        .ok_or_else(|| LabError::Daemon(format!("the lab has no backend {i}")))
}

/// Assigns the VIPs (IPv4 and IPv6, without duplicate address detection) to `host`'s `lo`,
/// so that its kernel accepts packets for them.
pub(super) fn assign_vip_to_lo(host: &NetNs) -> Result<(), LabError> {
    host.ip(&["addr", "add", &format!("{VIP_V4}/32"), "dev", "lo"])?;
    host.ip(&[
        "-6",
        "addr",
        "add",
        &format!("{VIP_V6}/128"),
        "dev",
        "lo",
        "nodad",
    ])?;
    Ok(())
}

fn build_backend(prefix: &str, switch: &NetNs, i: usize) -> Result<LabBackend, LabError> {
    let ns = NetNs::new(prefix)?;
    let port = format!("b{i}");
    plug(switch, &ns, &port, INNER_MTU)?;
    let (v4, v6) = (backend_v4(i), backend_v6(i));
    address_host(&ns, v4, v6)?;
    LabBackend::serve_vips(ns, i, v4, v6)
}

impl LabBackend {
    /// Makes `ns` (whose `eth0` is plugged and addressed) backend `i`: the VIPs on `lo`, the
    /// sysctls a backend needs, the decapsulation program on `eth0` accepting the VIPs.
    pub(super) fn serve_vips(
        ns: NetNs,
        i: usize,
        v4: Ipv4Addr,
        v6: Ipv6Addr,
    ) -> Result<Self, LabError> {
        assign_vip_to_lo(&ns)?;
        for (key, value) in [
            // The client's packets arrive on eth0 for an address on lo, from a source that is
            // not behind lo: reverse-path filtering must not drop them.
            ("net.ipv4.conf.all.rp_filter", "0"),
            ("net.ipv4.conf.eth0.rp_filter", "0"),
            // Never answer ARP for the VIP: only the balancer may attract its traffic.
            ("net.ipv4.conf.all.arp_ignore", "1"),
            ("net.ipv4.conf.all.arp_announce", "2"),
        ] {
            ns.sysctl(key, value)?;
        }
        let mut decap = Decap::load(None)?;
        decap.set_vips(&[IpAddr::V4(VIP_V4), IpAddr::V6(VIP_V6)])?;
        let mode =
            ns.run_here(|| attach(&mut decap.ebpf, DECAP_PROGRAM, IFACE, AttachMode::Driver))??;
        debug_assert_eq!(mode.0, XdpMode::Driver);
        Ok(Self {
            servers: Vec::new(),
            http: None,
            _decap: decap,
            name: format!("backend-{i}"),
            v4,
            v6,
            ns,
        })
    }
}

/// The balancer configuration of a lab with `backends` backends: a TLS listener on port 443 of
/// each VIP (pools `web4` and `web6`), the daemon's socket and pins where `paths` says.
pub fn lab_config(paths: &super::daemon::DaemonPaths, backends: usize) -> String {
    format!(
        r#"# The lab's balancer: two passthrough listeners (IPv4 and IPv6) on TLS port 443.
[datapath]
interfaces = ["{IFACE}"]
attach_mode = "driver"
conn_table_size = 65536
max_listeners = 8
encap_source_v4 = "{ENCAP_V4}"
encap_source_v6 = "{ENCAP_V6}"
pin_dir = "{pin_dir}"

[control]
socket = "{socket}"

# The backends serve TLS on the VIPs only (direct server return), not on their own addresses:
# no health check by default (tests that check health add their own table).
{tables}"#,
        pin_dir = paths.pin_dir.display(),
        socket = paths.socket.display(),
        tables = passthrough_tables(backends, backend_v4, backend_v6, "health_check = false\n"),
    )
}

/// What the passthrough labs' balancers serve: pools `web4` and `web6` of `backends` backends
/// (addresses `v4(i)` and `v6(i)`, each pool followed by `pool_lines`), and a TLS listener on
/// port 443 of each VIP.
pub(super) fn passthrough_tables(
    backends: usize,
    v4: fn(usize) -> Ipv4Addr,
    v6: fn(usize) -> Ipv6Addr,
    pool_lines: &str,
) -> String {
    let pool = |name: &str, address: &dyn Fn(usize) -> IpAddr| {
        let members: Vec<String> = (0..backends)
            .map(|i| format!("{{ address = \"{}\" }}", address(i)))
            .collect();
        format!(
            "[pools.{name}]\nbackends = [{}]\n{pool_lines}\n",
            members.join(", ")
        )
    };
    let listener = |name: &str, vip: IpAddr, pool: &str| {
        format!(
            "[listeners.{name}]\naddress = \"{vip}\"\nport = 443\nmode = \"passthrough\"\n\
             pool = \"{pool}\"\n"
        )
    };
    [
        pool("web4", &|i| IpAddr::V4(v4(i))),
        pool("web6", &|i| IpAddr::V6(v6(i))),
        listener("tls4", IpAddr::V4(VIP_V4), "web4"),
        "\n".to_owned(),
        listener("tls6", IpAddr::V6(VIP_V6), "web6"),
    ]
    .concat()
}
