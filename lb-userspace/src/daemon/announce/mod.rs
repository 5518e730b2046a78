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
//! successor (`lb run --take-over`) is handed the device with the listening sockets, and
//! whether the node is drained: the announcements stay through an upgrade.
//!
//! An address is announced when at least one listener on it can serve ([`verdicts`]):
//!
//! - its pool has a backend that takes new flows because it is healthy (not one that only
//!   fails open, not draining, not disabled);
//! - an address not announced yet waits until its pool's checked backends each have a known
//!   health, a check passed or failed enough to be unhealthy (a starting node, or a listener a
//!   reload added, does not attract flows before it knows which backends are alive; one already
//!   announced, by this daemon or the predecessor that handed it over, stays meanwhile);
//! - a passthrough listener also needs one of the XDP interfaces running (up, with a carrier);
//! - and the node is not drained (`lb node drain`, until `lb node undrain`).
//!
//! The table is written when what should be announced changes, and checked every [`VERIFY`]
//! (the device there and up, the routes present): routes someone removed, or a device set down
//! or deleted, are put back; a write that failed is retried then.

pub mod bird;

use std::{
    collections::{BTreeMap, BTreeSet},
    io,
    net::IpAddr,
    os::fd::OwnedFd,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
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
/// `interfaces_running` is whether an XDP interface is up with a carrier; `held` what is
/// announced now (those addresses do not wait for health checks).
pub fn verdicts(
    config: &Config,
    runtime: &Runtime,
    interfaces_running: bool,
    held: &BTreeSet<IpAddr>,
) -> BTreeMap<IpAddr, Verdict> {
    // (healthy, unknown health) per pool, counted once.
    let pools: BTreeMap<&str, (usize, usize)> = config
        .pools
        .iter()
        .map(|(name, pool)| {
            let counts = (runtime.healthy(name, pool), runtime.unprobed(name, pool));
            (name.as_str(), counts)
        })
        .collect();
    let mut verdicts: BTreeMap<IpAddr, Verdict> = BTreeMap::new();
    for (name, listener) in &config.listeners {
        let pool = listener.pool.as_str();
        let why_not = match pools.get(pool) {
            None => Some(format!("listener {name:?}: its pool does not exist")),
            Some(&(_, unprobed)) if unprobed > 0 && !held.contains(&listener.address) => {
                Some(format!(
                    "listener {name:?}: waiting for the health checks of {unprobed} \
                     backend(s) of pool {pool:?}"
                ))
            }
            Some(&(0, _)) => Some(format!(
                "listener {name:?}: no healthy backend in pool {pool:?}"
            )),
            Some(_) if listener.l7.is_none() && !interfaces_running => Some(format!(
                "listener {name:?}: no XDP interface is running ({})",
                config.datapath.interfaces.join(", ")
            )),
            Some(_) => None,
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

/// The device a predecessor handed over, and how it announced through it.
#[derive(Debug)]
pub struct InheritedDevice {
    pub fd: OwnedFd,
    pub name: String,
    pub table: u32,
    pub protocol: u8,
    pub drained: bool,
}

/// What the daemon hands a successor, kept current by the announcer: whether the node is
/// drained, and a descriptor of the device (of the one made again, if someone deleted it).
#[derive(Debug, Default)]
pub struct Handoff {
    drained: AtomicBool,
    device: Mutex<Option<OwnedFd>>,
}

impl Handoff {
    pub fn drained(&self) -> bool {
        self.drained.load(Ordering::SeqCst)
    }

    /// A descriptor of the current device, of the caller's own; `None` if there is none to
    /// hand over (the announcer could not copy it: logged then).
    pub fn device(&self) -> io::Result<Option<OwnedFd>> {
        let device = self
            .device
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        device.as_ref().map(OwnedFd::try_clone).transpose()
    }

    /// Keeps a descriptor of `tun`; a copy that fails leaves nothing to hand over rather
    /// than the descriptor of a device that is gone.
    fn keep(&self, tun: &Tun) -> io::Result<()> {
        let copy = tun.try_clone_fd();
        let mut device = self
            .device
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match copy {
            Ok(fd) => {
                *device = Some(fd);
                Ok(())
            }
            Err(error) => {
                *device = None;
                Err(error)
            }
        }
    }
}

/// The routes this node offers its routing daemon.
#[derive(Debug)]
pub struct Announcer {
    settings: AnnounceSettings,
    tun: Tun,
    /// The device's interface index (it changes if the device is made again).
    ifindex: u32,
    rtnl: Rtnl,
    /// Shared with the daemon, which hands it to a successor.
    handoff: Arc<Handoff>,
    /// What the table holds through the device, as last written or read.
    held: BTreeSet<IpAddr>,
    /// What should be announced, as last written.
    written: Option<BTreeSet<IpAddr>>,
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
    source: io::Error,
}

impl AnnounceError {
    fn new(what: impl Into<String>) -> impl FnOnce(io::Error) -> Self {
        let what = what.into();
        move |source| Self { what, source }
    }
}

impl Announcer {
    /// Creates the device (or takes the one a predecessor handed over, with its drain) and
    /// brings it up; reads what the table holds through it. Nothing changes in the table
    /// before the first [`Announcer::tick`], except that a predecessor's routes in a table or
    /// under a protocol number this configuration no longer uses are withdrawn.
    pub fn start(
        settings: &AnnounceSettings,
        inherited: Option<InheritedDevice>,
        handoff: Arc<Handoff>,
    ) -> Result<Self, AnnounceError> {
        let inherited = inherited.filter(|device| device.name == settings.device);
        let (tun, previous) = match inherited {
            Some(device) => {
                handoff.drained.store(device.drained, Ordering::SeqCst);
                let previous = (device.table, device.protocol);
                (Tun::adopt(device.fd, &settings.device), Some(previous))
            }
            None => (create_device(&settings.device)?, None),
        };
        handoff
            .keep(&tun)
            .map_err(AnnounceError::new("copying the device's descriptor"))?;
        let mut rtnl = Rtnl::connect_strict().map_err(AnnounceError::new("opening rtnetlink"))?;
        let ifindex = bring_up(&mut rtnl, tun.name())?;
        if let Some((table, protocol)) =
            previous.filter(|p| *p != (settings.table, settings.protocol))
        {
            for address in rtnl
                .table_routes(table, protocol, ifindex)
                .map_err(AnnounceError::new(format!("reading table {table}")))?
            {
                rtnl.delete_route(table, protocol, address, ifindex)
                    .map_err(AnnounceError::new(format!(
                        "withdrawing {address} from the previous daemon's table {table}"
                    )))?;
                info!(%address, table, protocol, "withdrawn from the previous daemon's table");
            }
        }
        let held = rtnl
            .table_routes(settings.table, settings.protocol, ifindex)
            .map_err(AnnounceError::new(format!(
                "reading table {}",
                settings.table
            )))?
            .into_iter()
            .collect();
        let bird = match &settings.bird_socket {
            Some(socket) => Some(
                bird::Watch::start(socket.clone())
                    .map_err(AnnounceError::new("starting the routing daemon's watch"))?,
            ),
            None => None,
        };
        info!(
            device = %settings.device, table = settings.table, protocol = settings.protocol,
            inherited = previous.is_some(), drained = handoff.drained(),
            "announcing listener addresses through a kernel table"
        );
        Ok(Self {
            settings: settings.clone(),
            tun,
            ifindex,
            rtnl,
            handoff,
            held,
            written: None,
            verdicts: BTreeMap::new(),
            interfaces_running: true,
            next_verify: None,
            errors: 0,
            last_error: None,
            bird,
        })
    }

    pub fn device_name(&self) -> &str {
        self.tun.name()
    }

    fn is_drained(&self) -> bool {
        self.handoff.drained()
    }

    /// Recomputes the verdicts and writes the table if what should be announced changed;
    /// every [`VERIFY`] also checks the interfaces, the device and the table (and retries).
    pub fn tick(&mut self, config: &Config, runtime: &Runtime, now: Instant) {
        let errors = self.errors;
        let verify = self.next_verify.is_none_or(|at| now >= at);
        if verify {
            self.next_verify = Some(now + VERIFY);
            self.verify(config);
        }
        let verdicts = verdicts(config, runtime, self.interfaces_running, &self.held);
        let drained = self.is_drained();
        for (address, verdict) in &verdicts {
            let was = self.verdicts.get(address).map(|v| v.announce && !drained);
            let is = verdict.announce && !drained;
            if was == Some(is) {
                continue;
            }
            if is {
                info!(%address, reason = %verdict.reason, "servable");
            } else if !drained {
                warn!(%address, reason = %verdict.reason, "not servable");
            }
        }
        self.verdicts = verdicts;
        let wanted = self.wanted();
        if verify || self.written.as_ref() != Some(&wanted) {
            self.write(wanted);
        }
        // A check and a write without a failure: the last error is over.
        if verify && self.errors == errors {
            self.last_error = None;
        }
    }

    /// Reads the interfaces' state, the device and the table; a read that fails keeps what
    /// was known.
    fn verify(&mut self, config: &Config) {
        match self.any_interface_running(config) {
            Ok(running) => self.interfaces_running = running,
            Err(error) => self.failed(format!("reading the XDP interfaces' state: {error}")),
        }
        match bring_up(&mut self.rtnl, self.tun.name()) {
            Ok(index) => self.ifindex = index,
            Err(error) if error.source.raw_os_error() != Some(libc::ENODEV) => {
                self.failed(error.to_string());
            }
            Err(error) => {
                // Deleted (`ip link del`): the kernel took its routes; make it again.
                match create_device(&self.settings.device)
                    .and_then(|tun| Ok((bring_up(&mut self.rtnl, tun.name())?, tun)))
                {
                    Ok((index, tun)) => {
                        warn!(device = %self.settings.device, %error, "the announcement device was gone: made it again");
                        if let Err(error) = self.handoff.keep(&tun) {
                            self.failed(format!(
                                "copying the new device's descriptor: {error} (a take-over \
                                 now makes a device of its own)"
                            ));
                        }
                        self.tun = tun;
                        self.ifindex = index;
                    }
                    Err(again) => self.failed(format!("{error}; making it again: {again}")),
                }
            }
        }
        match self
            .rtnl
            .table_routes(self.settings.table, self.settings.protocol, self.ifindex)
        {
            Ok(routes) => self.held = routes.into_iter().collect(),
            Err(error) => self.failed(format!("reading table {}: {error}", self.settings.table)),
        }
    }

    /// The addresses that should be in the table now.
    fn wanted(&self) -> BTreeSet<IpAddr> {
        if self.is_drained() {
            return BTreeSet::new();
        }
        self.verdicts
            .iter()
            .filter(|(_, v)| v.announce)
            .map(|(a, _)| *a)
            .collect()
    }

    /// Makes the table hold `wanted`: withdrawals first.
    fn write(&mut self, wanted: BTreeSet<IpAddr>) {
        let (table, protocol, oif) = (self.settings.table, self.settings.protocol, self.ifindex);
        for address in self.held.difference(&wanted).copied().collect::<Vec<_>>() {
            match self.rtnl.delete_route(table, protocol, address, oif) {
                Ok(()) => {
                    self.held.remove(&address);
                    info!(%address, "withdrawn");
                }
                Err(error) => self.failed(format!("withdrawing {address}: {error}")),
            }
        }
        for address in wanted.difference(&self.held).copied().collect::<Vec<_>>() {
            match self.rtnl.replace_route(table, protocol, address, oif) {
                Ok(()) => {
                    self.held.insert(address);
                    info!(%address, "announced");
                }
                Err(error) => self.failed(format!("announcing {address}: {error}")),
            }
        }
        self.written = Some(wanted);
    }

    fn failed(&mut self, reason: String) {
        self.errors += 1;
        // Logged when it changes: a failure retried every second would flood the log.
        if self.last_error.as_ref() != Some(&reason) {
            warn!(%reason, "announcing: retried every second");
        }
        self.last_error = Some(reason);
    }

    /// Whether one of the XDP interfaces is up with a carrier.
    fn any_interface_running(&mut self, config: &Config) -> io::Result<bool> {
        for name in &config.datapath.interfaces {
            if self.rtnl.link(name)?.is_some_and(|link| link.running) {
                return Ok(true);
            }
        }
        Ok(config.datapath.interfaces.is_empty())
    }

    /// `lb node drain` (`drain`) or `lb node undrain`: withdraws or announces at once. A drain
    /// that could not withdraw everything says what is still announced.
    pub fn set_drained(
        &mut self,
        drain: bool,
        wait: Option<Duration>,
        config: &Config,
        runtime: &Runtime,
        now: Instant,
    ) -> Result<NodeChange, String> {
        let before = self.held.clone();
        self.handoff.drained.store(drain, Ordering::SeqCst);
        self.next_verify = None;
        self.tick(config, runtime, now);
        if drain && !self.held.is_empty() {
            let left: Vec<String> = self.held.iter().map(ToString::to_string).collect();
            return Err(format!(
                "drained, but {} still announced: {} (retried every second; lb status shows \
                 when they are gone)",
                left.join(", "),
                self.last_error
                    .as_deref()
                    .unwrap_or("the withdrawal failed")
            ));
        }
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
        Ok(NodeChange {
            changed,
            wait_ms: u64::try_from(wait.unwrap_or(self.settings.drain_wait).as_millis())
                .unwrap_or(u64::MAX),
            view: self.view(),
        })
    }

    pub fn view(&self) -> AnnounceView {
        let drained = self.is_drained();
        AnnounceView {
            device: self.tun.name().to_owned(),
            table: self.settings.table,
            protocol: self.settings.protocol,
            drained,
            addresses: self
                .verdicts
                .iter()
                .map(|(address, verdict)| AddressView {
                    address: *address,
                    announced: self.held.contains(address),
                    reason: if drained {
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

/// Creates the tun device `name`, saying what to do when that fails.
fn create_device(name: &str) -> Result<Tun, AnnounceError> {
    Tun::create(name).map_err(|error| {
        let hint = match error.raw_os_error() {
            Some(libc::EBUSY) => {
                " (a device of that name exists: held by another lb daemon, which needs a \
                 `device`, `table` or `protocol` of its own, or made by hand: `ip link del` it)"
            }
            Some(libc::EPERM) => " (it takes CAP_NET_ADMIN)",
            Some(libc::EACCES) => {
                " (/dev/net/tun is not open to the daemon's user: udev makes it 0666 on most \
                 systems; or give the daemon cap_dac_override at start)"
            }
            _ => "",
        };
        AnnounceError {
            what: format!("creating the tun device {name:?}{hint}"),
            source: error,
        }
    })
}

/// Finds the device `name` and sets it up; its index.
fn bring_up(rtnl: &mut Rtnl, name: &str) -> Result<u32, AnnounceError> {
    let link = rtnl
        .link(name)
        .and_then(|link| link.ok_or_else(|| io::Error::from_raw_os_error(libc::ENODEV)))
        .map_err(AnnounceError::new(format!("finding the device {name:?}")))?;
    if !link.up {
        rtnl.set_up(link.index).map_err(AnnounceError::new(format!(
            "setting the device {name:?} up"
        )))?;
    }
    Ok(link.index)
}

#[cfg(test)]
mod tests;
