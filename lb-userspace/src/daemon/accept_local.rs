//! `accept_local` on the interfaces where the balancer's kernel receives IPv4 packets whose
//! source is one of this host's own addresses. Without it the kernel drops them as martians
//! (IPv6 has no such check):
//!
//! - the encapsulated packets the XDP program hands the kernel to forward (`pass_no_neighbour`,
//!   `pass_no_tx_port`), when their outer source is the host's address: on the interfaces the
//!   balancer runs on, at start ([`accept_encap_sources`]);
//! - the backends' direct replies, whose source is the VIP, when the VIP is also an address of
//!   this host (on `lo`, for L7 listeners on the same address) and the network routes the
//!   replies back through the balancer: on the interfaces the balancer runs on and those its
//!   routes to the backends leave through, where such replies arrive
//!   ([`ReplyInterfaces::accept`], from every refresh of the host watch, which also sets it
//!   again where it was turned off since).
//!
//! Strict reverse-path filtering (`rp_filter` 1) drops those replies all the same (the route
//! back to the VIP is `lo`, not the interface they came in by): that is said (whenever it
//! becomes strict), not changed. Nothing here turns a setting back off; `lb uninstall` leaves
//! them as they are.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::{IpAddr, Ipv4Addr},
};

use tracing::{debug, info, warn};

use super::host::interface_name;
use crate::{
    config::{Config, HostDefaults},
    host::addresses::{InterfaceAddress, interface_addresses, is_local},
};

/// When the IPv4 outer source is this host's own address (the default), sets `accept_local` on
/// the interfaces the balancer runs on: the encapsulated packets it hands the kernel to forward
/// arrive there with that source. Says so.
pub fn accept_encap_sources(
    config: &Config,
    host_defaults: &HostDefaults,
    interfaces: &[(String, u32)],
) {
    let source = config
        .datapath
        .encap_source_v4
        .map(|(base, _)| base)
        .or(host_defaults.encap_source_v4);
    let Some(source) = source else {
        return;
    };
    let local = interface_addresses()
        .map(|all| is_local(IpAddr::V4(source), &all))
        .unwrap_or(false);
    if !local {
        return;
    }
    for (name, _) in interfaces {
        match set_accept_local(name) {
            Ok(_) => info!(
                interface = %name, %source,
                "accept_local set: the kernel forwards the encapsulated packets the balancer hands it, whose outer source is this host's address"
            ),
            Err(error) => warn!(
                interface = %name, %error,
                "could not set accept_local: encapsulated packets handed to the kernel (pass_no_neighbour, pass_no_tx_port) are dropped as martians"
            ),
        }
    }
}

/// The IPv4 addresses among `vips` (the passthrough listeners' addresses) that are assigned to
/// this host, sorted, once each.
pub fn local_vips(
    vips: impl IntoIterator<Item = IpAddr>,
    addresses: &[InterfaceAddress],
) -> Vec<Ipv4Addr> {
    let local: BTreeSet<Ipv4Addr> = vips
        .into_iter()
        .filter(|vip| is_local(*vip, addresses))
        .filter_map(|vip| match vip {
            IpAddr::V4(v4) => Some(v4),
            IpAddr::V6(_) => None,
        })
        .collect();
    local.into_iter().collect()
}

/// The interfaces where replies from a local VIP may arrive, and what was said of each.
#[derive(Debug, Default)]
pub struct ReplyInterfaces {
    /// By interface index: whether `accept_local` was found on or set (`true`) or could not
    /// be (`false`), at the last look.
    accepting: BTreeMap<u32, bool>,
    /// Interfaces warned about for strict reverse-path filtering, while it stays strict.
    strict: BTreeSet<u32>,
}

impl ReplyInterfaces {
    /// When `local_vips` is not empty, makes sure `accept_local` is on for each of
    /// `interfaces` (again, if it was turned off since the last look: every refresh of the
    /// host watch looks), and warns where strict reverse-path filtering would drop the
    /// replies. Each change is said once.
    pub fn accept(&mut self, local_vips: &[Ipv4Addr], interfaces: &BTreeSet<u32>) {
        let Some(vip) = local_vips.first() else {
            return;
        };
        for &ifindex in interfaces {
            let interface = interface_name(ifindex);
            let before = self.accepting.get(&ifindex).copied();
            let set = set_accept_local(&interface);
            self.accepting.insert(ifindex, set.is_ok());
            match (set, before) {
                (Ok(true), None | Some(false)) => info!(
                    %interface, %vip,
                    "accept_local set: the VIP is an address of this host too, and backends' direct replies (source: the VIP) that are routed back through this interface would be dropped as martians"
                ),
                (Ok(true), Some(true)) => warn!(
                    %interface, %vip,
                    "accept_local was turned off on this interface while the daemon runs: set it again (backends' direct replies routed back through it would be dropped as martians); keep it in /etc/sysctl.d/"
                ),
                (Ok(false), None) => debug!(%interface, "accept_local already on"),
                (Ok(false), Some(_)) => {}
                (Err(error), None | Some(true)) => warn!(
                    %interface, %vip, %error,
                    "could not set accept_local: the VIP is an address of this host, so backends' direct replies routed back through this interface are dropped as martians (`sysctl net.ipv4.conf.{interface}.accept_local=1`)"
                ),
                (Err(_), Some(false)) => {}
            }
            if !is_strict_rp_filter(&interface) {
                self.strict.remove(&ifindex);
            } else if self.strict.insert(ifindex) {
                warn!(
                    %interface, %vip,
                    "strict reverse-path filtering (rp_filter 1) on this interface drops backends' direct replies routed back through it, whose source (the VIP) is on lo: set net.ipv4.conf.{interface}.rp_filter and net.ipv4.conf.all.rp_filter to 2 (loose) or 0"
                );
            }
        }
    }
}

/// Turns `accept_local` on for `interface`; whether it was off.
fn set_accept_local(interface: &str) -> std::io::Result<bool> {
    let path = format!("/proc/sys/net/ipv4/conf/{interface}/accept_local");
    if std::fs::read_to_string(&path)?.trim() == "1" {
        return Ok(false);
    }
    std::fs::write(&path, "1")?;
    Ok(true)
}

/// Whether the kernel filters `interface`'s packets by strict reverse path: the larger of its
/// `rp_filter` and `all`'s is 1.
fn is_strict_rp_filter(interface: &str) -> bool {
    let read = |name: &str| {
        std::fs::read_to_string(format!("/proc/sys/net/ipv4/conf/{name}/rp_filter"))
            .ok()
            .and_then(|v| v.trim().parse::<u8>().ok())
            .unwrap_or(0)
    };
    read("all").max(read(interface)) == 1
}

#[cfg(test)]
mod tests {
    use super::*;

    fn on(interface: &str, address: &str) -> InterfaceAddress {
        InterfaceAddress {
            interface: interface.to_owned(),
            address: address.parse().unwrap(),
        }
    }

    #[test]
    fn only_ipv4_vips_assigned_to_the_host_count() {
        let addresses = [
            on("lo", "127.0.0.1"),
            on("lo", "198.18.100.1"),
            on("lo", "2001:db8:100::1"),
            on("eth0", "198.18.0.2"),
        ];
        let vips = [
            "198.18.100.1",
            "198.18.100.2",
            "2001:db8:100::1",
            "198.18.100.1",
        ]
        .map(|v| v.parse::<IpAddr>().unwrap());
        assert_eq!(
            local_vips(vips, &addresses),
            vec![Ipv4Addr::new(198, 18, 100, 1)]
        );
        assert!(local_vips(vips, &addresses[3..]).is_empty());
    }
}
