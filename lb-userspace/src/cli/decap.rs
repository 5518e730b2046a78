//! `lb decap attach|detach|status --iface IF`: the backends' decapsulation program.
//!
//! `attach` loads the program with its maps pinned under `PIN_DIR/IF/` (a bpffs directory:
//! `/sys/fs/bpf/lb-decap` by default), fills its VIP map (the `--vip` addresses, or else the
//! addresses on the backend's `lo`), attaches it and pins its link there, so that it stays
//! attached after the command exits. Run again, it updates the VIPs of the attached program.
//! `detach` removes the pins, which detaches it; `status` prints its VIPs and counters.
//!
//! Inside `ip netns exec`, `/sys` is a fresh sysfs without bpffs, and a bpffs mounted there
//! would end with the command (and detach the program): give each namespace its own
//! directory on a bpffs that outlives it (`--pin-dir`).

use std::{
    net::IpAddr,
    path::{Path, PathBuf},
};

use aya::{
    maps::{HashMap, MapData, PerCpuArray},
    programs::{links::FdLink, xdp::XdpLink},
};
use lb_common::{abi::DecapVipKey, counters::DecapCounter, maps as names};

use crate::{
    host::addresses::loopback_vips,
    loader::{
        AttachMode, DECAP_PROGRAM, Decap, LoadError, attach, interface_index, is_bpffs,
        set_decap_vips,
    },
    state::addr_from_be,
};

/// Where `lb decap` pins unless told otherwise.
pub const DEFAULT_PIN_DIR: &str = "/sys/fs/bpf/lb-decap";

/// The pins of the program on one interface.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DecapPins {
    /// `PIN_DIR/IF`: the link and the maps.
    pub dir: PathBuf,
}

impl DecapPins {
    pub fn new(pin_dir: &Path, interface: &str) -> Self {
        Self {
            dir: pin_dir.join(interface),
        }
    }

    pub fn link(&self) -> PathBuf {
        self.dir.join("link")
    }

    /// Whether an earlier version of lb pinned its link at `PIN_DIR/IF` itself (a file where
    /// this version keeps a directory): that program accepts every inner destination.
    pub fn is_legacy(&self) -> bool {
        self.dir.is_file()
    }

    /// Removes an earlier version's pinned link, which detaches its program.
    fn remove_legacy(&self) -> Result<(), DecapError> {
        std::fs::remove_file(&self.dir).map_err(|source| DecapError::Io {
            what: format!(
                "removing {} (an earlier version's pinned link)",
                self.dir.display()
            ),
            source,
        })
    }
}

/// Why `lb decap` failed.
#[derive(Debug, thiserror::Error)]
pub enum DecapError {
    #[error(transparent)]
    Load(#[from] LoadError),
    #[error(
        "{0} is not on a bpffs. On a host: `mount -t bpf bpf /sys/fs/bpf`. Inside `ip netns exec`, /sys is a fresh sysfs without one, and pins there would vanish with the command: mount a bpffs that outlives it (`mkdir -p /run/lb-decap && mount -t bpf bpf /run/lb-decap` on the host) and pass `--pin-dir /run/lb-decap/NAMESPACE`, one directory per namespace"
    )]
    NoBpffs(String),
    #[error(
        "no VIP to accept: `lo` holds no address besides the loopback ones; add the VIPs to lo first (`ip addr add VIP/32 dev lo`) or name them with --vip"
    )]
    NoVips,
    #[error("lb's decapsulation program is not attached to {0} (no pin at {1})")]
    NotAttached(String, String),
    #[error(
        "an earlier version of lb_decap is attached to {0} (its link pinned at {1}): it accepts every inner destination; run `lb decap attach --iface {0}` to replace it, or `lb decap detach --iface {0}` to remove it"
    )]
    Legacy(String, String),
    #[error(
        "the earlier version of lb_decap on {0} was removed, and attaching this one failed: {1}; {0} decapsulates nothing until `lb decap attach` succeeds"
    )]
    ReplacementFailed(String, Box<DecapError>),
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("pinning the link at {path}: {reason}")]
    Pin { path: String, reason: String },
    #[error("the pinned map {path}: {reason}")]
    Map { path: String, reason: String },
}

/// The VIPs to accept: `given`, or else those on `lo`.
fn vips_to_accept(given: &[IpAddr]) -> Result<Vec<IpAddr>, DecapError> {
    let mut vips = if given.is_empty() {
        loopback_vips().map_err(|source| DecapError::Io {
            what: "listing the addresses of lo".to_owned(),
            source,
        })?
    } else {
        given.to_vec()
    };
    vips.sort();
    vips.dedup();
    if vips.is_empty() {
        return Err(DecapError::NoVips);
    }
    Ok(vips)
}

/// The bpffs directory `pin_dir` (created if missing), or a clear error.
fn check_pin_dir(pin_dir: &Path) -> Result<(), DecapError> {
    let mut existing = pin_dir;
    while !existing.exists() {
        match existing.parent() {
            Some(parent) => existing = parent,
            None => break,
        }
    }
    if !is_bpffs(existing) {
        return Err(DecapError::NoBpffs(pin_dir.display().to_string()));
    }
    Ok(())
}

/// Attaches the decapsulation program to `interface` (or updates the VIPs of the one
/// attached) and pins it under `pin_dir`. Returns what the backend needs besides, for the
/// operator.
pub fn attach_decap(
    interface: &str,
    mode: AttachMode,
    vips: &[IpAddr],
    pin_dir: &Path,
) -> Result<String, DecapError> {
    interface_index(interface)?;
    check_pin_dir(pin_dir)?;
    let vips = vips_to_accept(vips)?;
    let pins = DecapPins::new(pin_dir, interface);
    let listed = vips
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ");
    if pins.is_legacy() {
        // Its link holds the interface, so it goes first, leaving the interface without
        // decapsulation until the attach below; this program is verified before that.
        Decap::load(None)?;
        pins.remove_legacy()?;
        return attach_new(interface, mode, &vips, &pins)
            .map(|text| {
                format!(
                    "replaced an earlier version's lb_decap on {interface}, which accepted every destination\n{text}"
                )
            })
            .map_err(|error| DecapError::ReplacementFailed(interface.to_owned(), Box::new(error)));
    }
    if pins.link().exists() {
        let mut map = pinned_vips(&pins)?;
        set_decap_vips(&mut map, &vips)?;
        return Ok(format!(
            "lb_decap is already attached to {interface}; it now accepts {listed}\n"
        ));
    }
    attach_new(interface, mode, &vips, &pins)
}

/// Loads the program pinned under `pins`, with `vips`, and attaches it to `interface`.
fn attach_new(
    interface: &str,
    mode: AttachMode,
    vips: &[IpAddr],
    pins: &DecapPins,
) -> Result<String, DecapError> {
    let listed = vips
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ");
    let mut decap = Decap::load(Some(&pins.dir))?;
    decap.set_vips(vips)?;
    let (mode, link_id) = attach(&mut decap.ebpf, DECAP_PROGRAM, interface, mode)?;
    let link: XdpLink =
        decap
            .program()?
            .take_link(link_id)
            .map_err(|source| LoadError::Program {
                program: DECAP_PROGRAM,
                source,
            })?;
    let path = pins.link();
    let pin_error = |reason: String| DecapError::Pin {
        path: path.display().to_string(),
        reason,
    };
    let fd_link = FdLink::try_from(link).map_err(|e| {
        pin_error(format!(
            "the kernel attached the program without a BPF link ({e}), so it cannot outlive this command"
        ))
    })?;
    fd_link.pin(&path).map_err(|e| pin_error(e.to_string()))?;
    Ok(format!(
        "lb_decap attached to {interface} ({mode:?} mode), accepting {listed}; it stays attached until `lb decap detach --iface {interface}`.\n\
         This backend also needs:\n\
         - every VIP it serves on its loopback:  ip addr add VIP/32 dev lo   (IPv6: VIP/128)\n\
         - reverse-path filtering off:           sysctl -w net.ipv4.conf.all.rp_filter=0 net.ipv4.conf.{interface}.rp_filter=0\n\
         - no ARP answers for the VIP:           sysctl -w net.ipv4.conf.all.arp_ignore=1 net.ipv4.conf.all.arp_announce=2\n"
    ))
}

/// Detaches the decapsulation program from `interface` (removes its pins).
pub fn detach_decap(interface: &str, pin_dir: &Path) -> Result<String, DecapError> {
    let pins = DecapPins::new(pin_dir, interface);
    if pins.is_legacy() {
        pins.remove_legacy()?;
        return Ok(format!(
            "lb_decap (an earlier version's) detached from {interface}\n"
        ));
    }
    if !pins.link().exists() {
        return Err(DecapError::NotAttached(
            interface.to_owned(),
            pins.link().display().to_string(),
        ));
    }
    std::fs::remove_dir_all(&pins.dir).map_err(|source| DecapError::Io {
        what: format!("removing {}", pins.dir.display()),
        source,
    })?;
    // The pin directory too, once no interface is left in it (a mount point stays: busy).
    drop(std::fs::remove_dir(pin_dir));
    Ok(format!("lb_decap detached from {interface}\n"))
}

/// What `lb decap status` shows.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct DecapStatus {
    pub interface: String,
    pub vips: Vec<IpAddr>,
    /// Every [`DecapCounter`] summed over CPUs.
    pub counters: Vec<(String, u64)>,
}

/// The VIPs and counters of the program attached to `interface`.
pub fn decap_status(interface: &str, pin_dir: &Path) -> Result<DecapStatus, DecapError> {
    let pins = DecapPins::new(pin_dir, interface);
    if pins.is_legacy() {
        return Err(DecapError::Legacy(
            interface.to_owned(),
            pins.dir.display().to_string(),
        ));
    }
    if !pins.link().exists() {
        return Err(DecapError::NotAttached(
            interface.to_owned(),
            pins.link().display().to_string(),
        ));
    }
    let map = pinned_vips(&pins)?;
    let mut vips: Vec<IpAddr> = map
        .keys()
        .filter_map(Result::ok)
        .map(|key| addr_from_be(&key.addr_be, key.family))
        .collect();
    vips.sort();
    let path = pins.dir.join(names::DECAP_COUNTERS);
    let map_error = |reason: String| DecapError::Map {
        path: path.display().to_string(),
        reason,
    };
    let data = MapData::from_pin(&path).map_err(|e| map_error(e.to_string()))?;
    let counters: PerCpuArray<MapData, u64> =
        PerCpuArray::try_from(aya::maps::Map::PerCpuArray(data))
            .map_err(|e| map_error(e.to_string()))?;
    let counters = DecapCounter::ALL
        .iter()
        .map(|counter| {
            let value = counters
                .get(&counter.index(), 0)
                .map(|values| values.iter().sum())
                .map_err(|e| map_error(e.to_string()))?;
            Ok((counter.label().to_owned(), value))
        })
        .collect::<Result<_, DecapError>>()?;
    Ok(DecapStatus {
        interface: interface.to_owned(),
        vips,
        counters,
    })
}

/// The pinned VIP map of an attached program.
fn pinned_vips(pins: &DecapPins) -> Result<HashMap<MapData, DecapVipKey, u32>, DecapError> {
    let path = pins.dir.join(names::DECAP_VIPS);
    let map_error = |reason: String| DecapError::Map {
        path: path.display().to_string(),
        reason,
    };
    let data = MapData::from_pin(&path).map_err(|e| map_error(e.to_string()))?;
    HashMap::try_from(aya::maps::Map::HashMap(data)).map_err(|e| map_error(e.to_string()))
}
