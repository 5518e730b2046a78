//! Announcing the listener addresses to the routers, through the node's routing daemon.
//!
//! While this node can serve an address, the daemon keeps a host route to it in a kernel
//! table of its own (`VIP/32 dev lbvip0 table 200 proto 200`); the node's BIRD learns that
//! table (`kernel table 200; learn;`, filtered on `krt_source = 200`) and announces what it
//! holds over BGP (`packaging/bird/lb-node.conf`). No rule points at the table: the routes
//! never steer a packet on the node.
//!
//! The routes go through a tun device that the daemon alone holds open ([`Tun`]): if the
//! daemon dies, the kernel deletes the device and its routes, and BIRD withdraws them at once,
//! so a node whose daemon is gone stops attracting traffic no health check watches. A
//! successor (`lb run --take-over`) is handed the device with the listening sockets: the
//! announcements stay through an upgrade.
//!
//! An address is announced when at least one listener on it can serve ([`verdicts`]):
//!
//! - its pool has a backend that takes new flows because it is healthy (not one that only
//!   fails open, not draining, not disabled);
//! - a checked pool's backends each have a known health, a check passed or failed enough to
//!   be unhealthy (a starting node does not attract flows before it knows which backends are
//!   alive; a successor that inherits the device keeps announcing);
//! - a passthrough listener also needs one of the XDP interfaces running (up, with a carrier);
//! - and the node is not drained (`lb node drain`, until `lb node undrain`).
//!
//! The table is written when the verdicts change and checked every [`VERIFY`] (the device up,
//! the routes present): routes someone removed, or a device set down, are put back.

pub mod bird;

use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
    os::fd::OwnedFd,
    time::{Duration, Instant},
};

use tracing::{info, warn};

use super::runtime::Runtime;
use crate::{
    config::{AnnounceSettings, Config},
    control::{AddressView, AnnounceView, NodeChange},
    host::{rtnl::Rtnl, tun::Tun},
};

/// How often the table and the device are checked against what should be there.
pub const VERIFY: Duration = Duration::from_secs(1);

/// Why an address is or is not announced.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verdict {
    pub announce: bool,
    /// What decided it: the listener that can serve, or why none can.
    pub reason: String,
}

/// Whether each listener address should be announced, and why (the node's drain aside).
/// `interfaces_running` is whether an XDP interface is up with a carrier.
pub fn verdicts(
    config: &Config,
    runtime: &Runtime,
    interfaces_running: bool,
    wait_for_probes: bool,
) -> BTreeMap<IpAddr, Verdict> {
    let mut verdicts: BTreeMap<IpAddr, Verdict> = BTreeMap::new();
    for (name, listener) in &config.listeners {
        let why_not = match config.pools.get(&listener.pool) {
            None => Some(format!("listener {name:?}: its pool does not exist")),
            Some(pool) => {
                let unprobed = runtime.unprobed(&listener.pool, pool);
                if wait_for_probes && unprobed > 0 {
                    Some(format!(
                        "listener {name:?}: waiting for the health checks of {unprobed} \
                         backend(s) of pool {:?}",
                        listener.pool
                    ))
                } else if runtime.healthy(&listener.pool, pool) == 0 {
                    Some(format!(
                        "listener {name:?}: no healthy backend in pool {:?}",
                        listener.pool
                    ))
                } else if listener.l7.is_none() && !interfaces_running {
                    Some(format!(
                        "listener {name:?}: no XDP interface is running ({})",
                        config.datapath.interfaces.join(", ")
                    ))
                } else {
                    None
                }
            }
        };
        let verdict = match why_not {
            None => Verdict {
                announce: true,
                reason: format!("listener {name:?} can serve"),
            },
            Some(reason) => Verdict {
                announce: false,
                reason,
            },
        };
        match verdicts.get_mut(&listener.address) {
            // One listener that can serve is enough; otherwise the first reason stays.
            Some(existing) if !existing.announce && verdict.announce => *existing = verdict,
            Some(_) => {}
            None => {
                verdicts.insert(listener.address, verdict);
            }
        }
    }
    verdicts
}

/// Whether a listener's pool has a checked backend without a health-check outcome yet.
pub fn probes_pending(config: &Config, runtime: &Runtime) -> bool {
    config.listeners.values().any(|listener| {
        config
            .pools
            .get(&listener.pool)
            .is_some_and(|pool| runtime.unprobed(&listener.pool, pool) > 0)
    })
}

/// The routes this node offers its routing daemon.
#[derive(Debug)]
pub struct Announcer {
    settings: AnnounceSettings,
    tun: Tun,
    rtnl: Rtnl,
    drained: bool,
    /// Wait for the first health checks before announcing (not when the device was inherited:
    /// the predecessor announced with its own checks).
    wait_for_probes: bool,
    /// What the table holds, as last written or read.
    held: BTreeSet<IpAddr>,
    verdicts: BTreeMap<IpAddr, Verdict>,
    interfaces_running: bool,
    next_verify: Option<Instant>,
    errors: u64,
    last_error: Option<String>,
    bird: Option<bird::Watch>,
}

/// Why the announcer could not start.
#[derive(Debug, thiserror::Error)]
#[error("[announce]: {what}: {source}")]
pub struct AnnounceError {
    what: String,
    #[source]
    source: std::io::Error,
}

impl Announcer {
    /// Creates the device (or takes the one a predecessor handed over) and brings it up; reads
    /// what the table holds. Nothing is announced before the first [`Announcer::tick`].
    pub fn start(
        settings: &AnnounceSettings,
        inherited: Option<OwnedFd>,
    ) -> Result<Self, AnnounceError> {
        let failed = |what: String| move |source| AnnounceError { what, source };
        let inherited_device = inherited.is_some();
        let tun = match inherited {
            Some(fd) => Tun::adopt(fd, &settings.device),
            None => Tun::create(&settings.device).map_err(|error| {
                let hint = match error.raw_os_error() {
                    Some(libc::EBUSY) => {
                        " (a device of that name is held by another process: another lb \
                         daemon? give each its own `device`)"
                    }
                    Some(libc::EPERM) => " (it takes CAP_NET_ADMIN)",
                    Some(libc::EACCES) => {
                        " (/dev/net/tun is not open to the daemon's user: udev makes it 0666 on \
                         most systems; or give the daemon cap_dac_override at start)"
                    }
                    _ => "",
                };
                AnnounceError {
                    what: format!("creating the tun device {:?}{hint}", settings.device),
                    source: error,
                }
            })?,
        };
        let mut rtnl = Rtnl::connect_strict().map_err(failed("opening rtnetlink".to_owned()))?;
        let held = rtnl
            .table_routes(settings.table, settings.protocol)
            .map_err(failed(format!("reading table {}", settings.table)))?
            .into_iter()
            .collect();
        let bird = match &settings.bird_socket {
            Some(socket) => Some(
                bird::Watch::start(socket.clone())
                    .map_err(failed("starting the routing daemon's watch".to_owned()))?,
            ),
            None => None,
        };
        let mut announcer = Self {
            settings: settings.clone(),
            tun,
            rtnl,
            drained: false,
            wait_for_probes: !inherited_device,
            held,
            verdicts: BTreeMap::new(),
            interfaces_running: false,
            next_verify: None,
            errors: 0,
            last_error: None,
            bird,
        };
        announcer.bring_up()?;
        info!(
            device = %settings.device, table = settings.table, protocol = settings.protocol,
            inherited = inherited_device, "announcing listener addresses through a kernel table"
        );
        Ok(announcer)
    }

    fn bring_up(&mut self) -> Result<u32, AnnounceError> {
        let device = self.tun.name().to_owned();
        let link = self
            .rtnl
            .link(&device)
            .and_then(|link| link.ok_or_else(|| std::io::Error::from_raw_os_error(libc::ENODEV)))
            .map_err(|source| AnnounceError {
                what: format!("finding the device {device:?}"),
                source,
            })?;
        if !link.up {
            self.rtnl
                .set_up(link.index)
                .map_err(|source| AnnounceError {
                    what: format!("setting the device {device:?} up"),
                    source,
                })?;
        }
        Ok(link.index)
    }

    pub fn device_name(&self) -> &str {
        self.tun.name()
    }

    /// A descriptor of the device, for a successor.
    pub fn device_fd(&self) -> std::io::Result<OwnedFd> {
        self.tun.try_clone_fd()
    }

    /// Recomputes the verdicts and writes the table if they changed; every [`VERIFY`] also
    /// checks the interfaces, the device and the table.
    pub fn tick(&mut self, config: &Config, runtime: &Runtime, now: Instant) {
        let verify = self.next_verify.is_none_or(|at| now >= at);
        if verify {
            self.next_verify = Some(now + VERIFY);
            self.interfaces_running = self.any_interface_running(config);
            match self
                .rtnl
                .table_routes(self.settings.table, self.settings.protocol)
            {
                Ok(routes) => self.held = routes.into_iter().collect(),
                Err(error) => {
                    self.failed(format!("reading table {}: {error}", self.settings.table))
                }
            }
        }
        if self.wait_for_probes && !probes_pending(config, runtime) {
            self.wait_for_probes = false;
        }
        let verdicts = verdicts(
            config,
            runtime,
            self.interfaces_running,
            self.wait_for_probes,
        );
        for (address, verdict) in &verdicts {
            if self.verdicts.get(address) != Some(verdict) {
                let level_announce = verdict.announce && !self.drained;
                if level_announce {
                    info!(%address, reason = %verdict.reason, "servable");
                } else {
                    warn!(%address, reason = %verdict.reason, "not servable");
                }
            }
        }
        self.verdicts = verdicts;
        if verify || self.wanted() != self.held {
            self.write();
        }
    }

    /// The addresses that should be in the table now.
    fn wanted(&self) -> BTreeSet<IpAddr> {
        if self.drained {
            return BTreeSet::new();
        }
        self.verdicts
            .iter()
            .filter(|(_, v)| v.announce)
            .map(|(a, _)| *a)
            .collect()
    }

    /// Makes the table hold [`Self::wanted`]: withdrawals first.
    fn write(&mut self) {
        let wanted = self.wanted();
        let (table, protocol) = (self.settings.table, self.settings.protocol);
        for address in self.held.difference(&wanted).copied().collect::<Vec<_>>() {
            match self.rtnl.delete_route(table, protocol, address) {
                Ok(()) => {
                    self.held.remove(&address);
                    info!(%address, "withdrawn");
                }
                Err(error) => self.failed(format!("withdrawing {address}: {error}")),
            }
        }
        let missing: Vec<IpAddr> = wanted.difference(&self.held).copied().collect();
        if missing.is_empty() {
            return;
        }
        let index = match self.bring_up() {
            Ok(index) => index,
            Err(error) => {
                self.failed(error.to_string());
                return;
            }
        };
        for address in missing {
            match self.rtnl.replace_route(table, protocol, address, index) {
                Ok(()) => {
                    self.held.insert(address);
                    info!(%address, "announced");
                }
                Err(error) => self.failed(format!("announcing {address}: {error}")),
            }
        }
    }

    fn failed(&mut self, reason: String) {
        self.errors += 1;
        // Logged when it changes: a write retried every second would flood the log.
        if self.last_error.as_ref() != Some(&reason) {
            warn!(%reason, "the announcement table could not be written; retried every second");
        }
        self.last_error = Some(reason);
    }

    fn any_interface_running(&mut self, config: &Config) -> bool {
        config
            .datapath
            .interfaces
            .iter()
            .any(|name| matches!(self.rtnl.link(name), Ok(Some(link)) if link.running))
    }

    /// `lb node drain` (`drain`) or `lb node undrain`: withdraws or announces at once.
    pub fn set_drained(
        &mut self,
        drain: bool,
        wait: Option<Duration>,
        config: &Config,
        runtime: &Runtime,
        now: Instant,
    ) -> NodeChange {
        let before = self.held.clone();
        self.drained = drain;
        self.next_verify = None;
        self.tick(config, runtime, now);
        let changed = if drain {
            before.difference(&self.held).copied().collect()
        } else {
            self.held.difference(&before).copied().collect()
        };
        if drain {
            info!(withdrawn = ?changed, "node drained: nothing is announced until `lb node undrain`");
        } else {
            info!(announced = ?changed, "node undrained");
        }
        NodeChange {
            changed,
            wait_ms: u64::try_from(wait.unwrap_or(self.settings.drain_wait).as_millis())
                .unwrap_or(u64::MAX),
            view: self.view(),
        }
    }

    pub fn view(&self) -> AnnounceView {
        AnnounceView {
            device: self.tun.name().to_owned(),
            table: self.settings.table,
            protocol: self.settings.protocol,
            drained: self.drained,
            addresses: self
                .verdicts
                .iter()
                .map(|(address, verdict)| AddressView {
                    address: *address,
                    announced: self.held.contains(address),
                    reason: if self.drained {
                        "the node is drained (lb node undrain announces again)".to_owned()
                    } else {
                        verdict.reason.clone()
                    },
                })
                .collect(),
            errors: self.errors,
            last_error: self.last_error.clone(),
            bird: self.bird.as_ref().and_then(bird::Watch::view),
        }
    }
}

#[cfg(test)]
mod tests;
