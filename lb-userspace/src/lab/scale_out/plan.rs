//! The scale-out lab's plan: its addresses, the router's BIRD configuration and the nodes'
//! daemon configurations (every node the same but for its paths).
//!
//! Addresses, all from the benchmarking ranges: the client's link 198.18.20.0/24 and
//! 2001:db8:20::/64; node `i`'s link to the router the /30 at 198.18.21.(4i) (router `.4i+1`,
//! node `.4i+2`) and 2001:db8:21:i::/64 (router `::1`, node `::2`); the backends' segment
//! 198.18.22.0/24 and 2001:db8:22::/64 (router `.254`/`::fe`, backend `j` `.10+j`/`::10+j`);
//! the VIPs are the passthrough lab's.

use std::{
    net::{Ipv4Addr, Ipv6Addr},
    path::Path,
};

use crate::lab::{
    daemon::DaemonPaths,
    passthrough::{IFACE, VIP_V4, VIP_V6, passthrough_tables},
};

pub const CLIENT_V4: Ipv4Addr = Ipv4Addr::new(198, 18, 20, 1);
pub const CLIENT_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0x20, 0, 0, 0, 0, 1);
pub(super) const ROUTER_CLIENT_V4: Ipv4Addr = Ipv4Addr::new(198, 18, 20, 254);
pub(super) const ROUTER_CLIENT_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0x20, 0, 0, 0, 0, 0xfe);
pub(super) const ROUTER_BACK_V4: Ipv4Addr = Ipv4Addr::new(198, 18, 22, 254);
pub(super) const ROUTER_BACK_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0x22, 0, 0, 0, 0, 0xfe);
/// The prefix of the router–node links (one /30 each), from which the router takes sessions.
pub const NODE_LINKS_V4: &str = "198.18.21.0/24";
/// The router's interface toward the client.
pub const ROUTER_CLIENT_IFACE: &str = "c0";
/// The kernel table and route protocol of the VIPs a node announces.
pub const ANNOUNCE_TABLE: &str = "200";
pub const ANNOUNCE_PROTO: &str = "200";
/// The hash seed of the router's multipath choice, where the kernel has one: the same flows
/// go to the same nodes on every machine.
pub(super) const MULTIPATH_SEED: &str = "12345";
/// The Maglev seed every node runs with.
pub const NODE_HASH_SEED: u32 = 4242;
/// MTU of the client's link (the links behind the router carry encapsulated packets).
pub(super) const CLIENT_MTU: u32 = 1500;

/// Node `i`'s address on its link to the router.
pub fn node_v4(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(198, 18, 21, link_base(i) + 2)
}

/// Node `i`'s IPv6 address on its link to the router.
pub fn node_v6(i: usize) -> Ipv6Addr {
    Ipv6Addr::new(0x2001, 0xdb8, 0x21, link_index(i), 0, 0, 0, 2)
}

/// The router's address on its link to node `i`.
pub fn router_v4(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(198, 18, 21, link_base(i) + 1)
}

/// The router's IPv6 address on its link to node `i`.
pub fn router_v6(i: usize) -> Ipv6Addr {
    Ipv6Addr::new(0x2001, 0xdb8, 0x21, link_index(i), 0, 0, 0, 1)
}

/// Backend `j`'s address behind the router.
pub fn backend_v4(j: usize) -> Ipv4Addr {
    Ipv4Addr::new(198, 18, 22, 10 + u8::try_from(j).unwrap_or(u8::MAX - 10))
}

/// Backend `j`'s IPv6 address behind the router.
pub fn backend_v6(j: usize) -> Ipv6Addr {
    Ipv6Addr::new(0x2001, 0xdb8, 0x22, 0, 0, 0, 0, 0x10 + link_index(j))
}

/// The first address of node `i`'s /30 (at most 63 nodes).
fn link_base(i: usize) -> u8 {
    u8::try_from(i.min(62) * 4).unwrap_or(248)
}

fn link_index(i: usize) -> u16 {
    u16::try_from(i).unwrap_or(u16::MAX)
}

/// The router's interface toward node `i`.
pub fn router_iface(i: usize) -> String {
    format!("n{i}")
}

/// The router's bird.conf: multipath kernel export, the VIP filters, one dynamic session per
/// node that connects from [`NODE_LINKS_V4`].
pub(super) fn router_bird_config(dir: &Path) -> String {
    format!(
        r#"log "{log}" all;
router id {ROUTER_CLIENT_V4};
protocol device {{}}
protocol kernel {{ merge paths on; ipv4 {{ import none; export where source = RTS_BGP; }}; }}
protocol kernel {{ merge paths on; ipv6 {{ import none; export where source = RTS_BGP; }}; }}
filter lb_vips4_in {{ if net ~ [ {VIP_V4}/32 ] then accept; reject; }}
filter lb_vips6_in {{ if net ~ [ {VIP_V6}/128 ] then accept; reject; }}
template bgp lb_node {{
  local as 65000;
  hold time 3; keepalive time 1;
  connect delay time 1; connect retry time 2;
  error wait time 1, 5; error forget time 10;
  ipv4 {{ import filter lb_vips4_in; export none; }};
  ipv6 {{ import filter lb_vips6_in; export none; }};
}}
protocol bgp lbnode from lb_node {{
  neighbor range {NODE_LINKS_V4} external;
  dynamic name "lbnode";
}}
"#,
        log = dir.join("bird.log").display(),
    )
}

/// A node's balancer configuration: XDP on its uplink, a passthrough TLS listener on port 443
/// of each VIP over the lab's `backends` backends (no health checks), the same ring and seed
/// on every node, the host's address as the outer source.
pub fn node_daemon_config(paths: &DaemonPaths, backends: usize) -> String {
    format!(
        r#"# A scale-out node: the same listeners, pools, ring and seed as every other node.
[datapath]
interfaces = ["{IFACE}"]
attach_mode = "driver"
hash_seed = {NODE_HASH_SEED}
conn_table_size = 65536
max_listeners = 8
pin_dir = "{pin_dir}"

[control]
socket = "{socket}"

{tables}"#,
        pin_dir = paths.pin_dir.display(),
        socket = paths.socket.display(),
        tables = passthrough_tables(backends, backend_v4, backend_v6, "health_check = false\n"),
    )
}

/// [`node_daemon_config`] with `[announce]`: the daemon announces the VIPs it can serve in
/// table 200 with protocol 200 (the defaults, which the shipped BIRD fragment learns), shows
/// the sessions of the BIRD at `bird_socket`, and `lb node drain` waits 1 s.
pub fn announcing_daemon_config(
    paths: &DaemonPaths,
    backends: usize,
    bird_socket: &Path,
) -> String {
    format!(
        "{}\n[announce]\ntable = {ANNOUNCE_TABLE}\nprotocol = {ANNOUNCE_PROTO}\n\
         drain_wait = \"1s\"\nbird_socket = \"{}\"\n",
        node_daemon_config(paths, backends),
        bird_socket.display()
    )
}

#[cfg(test)]
mod tests {
    use std::{net::IpAddr, time::Duration};

    use super::*;
    use crate::config::Config;

    #[test]
    fn the_addresses_do_not_overlap() {
        assert_eq!(router_v4(0), Ipv4Addr::new(198, 18, 21, 1));
        assert_eq!(node_v4(0), Ipv4Addr::new(198, 18, 21, 2));
        assert_eq!(node_v4(2), Ipv4Addr::new(198, 18, 21, 10));
        assert_eq!(
            node_v6(3),
            Ipv6Addr::new(0x2001, 0xdb8, 0x21, 3, 0, 0, 0, 2)
        );
    }

    #[test]
    fn every_node_runs_the_same_valid_configuration() {
        let paths = DaemonPaths {
            socket: "/lab/lb.sock".into(),
            pin_dir: "/sys/fs/bpf/lab".into(),
        };
        let text = node_daemon_config(&paths, 3);
        let config = Config::parse(&text, "node.toml").unwrap_or_else(|e| panic!("{e}\n{text}"));
        assert_eq!(config.datapath.hash_seed, NODE_HASH_SEED);
        assert_eq!(config.datapath.interfaces, vec![IFACE.to_owned()]);
        assert_eq!(
            config.pools["web4"].backends[2].address,
            IpAddr::V4(backend_v4(2))
        );
        assert_eq!(config.listeners["tls6"].address, IpAddr::V6(VIP_V6));
        assert_eq!(config.announce, None);

        let text = announcing_daemon_config(&paths, 3, Path::new("/tmp/b/bird.ctl"));
        let config = Config::parse(&text, "node.toml").unwrap_or_else(|e| panic!("{e}\n{text}"));
        let announce = config
            .announce
            .unwrap_or_else(|| panic!("[announce]\n{text}"));
        assert_eq!(announce.table.to_string(), ANNOUNCE_TABLE);
        assert_eq!(announce.protocol.to_string(), ANNOUNCE_PROTO);
        assert_eq!(announce.drain_wait, Duration::from_secs(1));
    }
}
