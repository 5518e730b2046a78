//! Loading the eBPF objects and attaching their programs.
//!
//! [`Balancer::load`] loads the balancer object with its maps sized from a [`BalancerSpec`],
//! pinned under a bpffs directory when one is given (an existing pinned map of the same name is
//! adopted only if its shape matches: a map of another shape is an error, never silently
//! reused). [`attach`] attaches an XDP program to an interface in driver mode, falling back to
//! generic mode with a warning when asked to. [`Aux`] and [`Decap`] load the small objects.

use std::{
    ffi::CString,
    path::{Path, PathBuf},
};

use aya::{
    Ebpf, EbpfLoader,
    maps::MapInfo,
    programs::{
        ProgramError, Xdp, XdpMode,
        links::{FdLink, PinnedLink},
        xdp::{XdpLink, XdpLinkId},
    },
};
use lb_common::{
    abi::{
        Backend, DatapathConfig, DecapVipKey, EgressVlan, NextHop, RATE_WINDOWS, RateWindow,
        TrafficCounters, VIP_CACHE_SIZE, VipCacheEntry, VipKeyV4, VipKeyV6, VipValue,
    },
    conn,
    counters::Counter,
    maps::{self as names, MAX_BACKENDS, MAX_TX_PORTS, MAX_VIPS},
};
use tracing::warn;

use crate::{
    capture::control::CaptureMaps,
    datapath::{DatapathError, RingGeometry, maps::AyaDatapath},
    objects,
};

/// Why loading or attaching failed.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("interface {0:?} not found; `ip link` lists interfaces")]
    NoSuchInterface(String),
    #[error(
        "pin_dir {0} is not on a bpffs mount; mount one with `mount -t bpf bpf /sys/fs/bpf` (or run `cargo xtask setup`). Under `ip netns exec`, /sys is mounted afresh without it: mount bpffs there too, or enter only the network namespace (`nsenter --net=/run/netns/NAME lb run ...`)"
    )]
    NotBpffs(PathBuf),
    #[error(
        "another lb daemon uses the pin directory {0} (it holds its lock): two daemons would rewrite each other's maps; stop it, or give this one its own pin_dir"
    )]
    PinDirInUse(PathBuf),
    #[error("not removing pin_dir {dir}: {why}; nothing was removed")]
    NotOurPins { dir: PathBuf, why: String },
    #[error(
        "pinned map {path} has {found}, this build needs {expected}; remove the pinned maps (`rm -r {dir}`) to start afresh"
    )]
    PinnedMapMismatch {
        path: PathBuf,
        dir: PathBuf,
        found: String,
        expected: String,
    },
    #[error("creating {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("loading the eBPF object: {0}")]
    Object(#[from] aya::EbpfError),
    #[error("program {program}: {source}")]
    Program {
        program: &'static str,
        #[source]
        source: ProgramError,
    },
    #[error("program {0} is not in the eBPF object (was it built from this version?)")]
    MissingProgram(&'static str),
    #[error("the XDP link pinned at {path}: {reason}")]
    Link { path: PathBuf, reason: String },
    #[error(transparent)]
    Datapath(#[from] DatapathError),
}

/// Sizes and placement of the balancer's maps.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BalancerSpec {
    pub geometry: RingGeometry,
    /// Flows the connection table holds.
    pub conn_table_size: u32,
    /// Where the maps are pinned (a directory on bpffs), or `None` not to pin.
    pub pin_dir: Option<PathBuf>,
}

/// How [`Balancer::attach_pinned`] attached.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Attached {
    /// A new attachment, in this mode.
    New(XdpMode),
    /// An earlier daemon's pinned link now runs this program.
    Replaced,
}

/// How to attach an XDP program.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AttachMode {
    /// Driver (native) mode; if the driver refuses, generic mode with a warning.
    Auto,
    /// Driver mode or fail.
    Driver,
    /// Generic (SKB) mode: works everywhere, slower.
    Generic,
}

/// The balancer's maps, all pinned when the daemon has a pin directory.
pub const BALANCER_MAPS: [&str; 16] = [
    names::HISTORY,
    names::CONN_SEED,
    names::RATE_WINDOWS,
    names::EGRESS_VLANS,
    names::VIP_CACHE,
    names::VIPS_V4,
    names::VIPS_V6,
    names::RINGS,
    names::BACKENDS,
    names::CONNS_V4,
    names::CONNS_V6,
    names::NEXT_HOPS,
    names::CONFIG,
    names::COUNTERS,
    names::BACKEND_STATS,
    names::TX_PORTS,
];

/// The name of the balancer program in its object.
pub const BALANCER_PROGRAM: &str = "lb_balancer";
/// The name of the decapsulation program in its object.
pub const DECAP_PROGRAM: &str = "lb_decap";

/// The loaded balancer: its programs (in `ebpf`) and the maps (taken out into an
/// [`AyaDatapath`] by [`Balancer::load`]).
pub struct Balancer {
    pub ebpf: Ebpf,
    /// The pin directory, locked (`flock`) for as long as this balancer is loaded.
    lock: Option<std::fs::File>,
}

impl std::fmt::Debug for Balancer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Balancer").finish_non_exhaustive()
    }
}

impl Balancer {
    /// Loads (verifies) the balancer and creates, or adopts, its maps.
    pub fn load(spec: &BalancerSpec) -> Result<(Self, AyaDatapath), LoadError> {
        let ring_entries = spec
            .geometry
            .rings
            .checked_mul(spec.geometry.ring_size)
            .ok_or_else(|| DatapathError::Refused {
                map: names::RINGS,
                reason: "rings x ring size overflows 32 bits".to_owned(),
            })?;
        let mut loader = EbpfLoader::new();
        loader
            .map_max_entries(names::RINGS, ring_entries)
            .map_max_entries(names::CONNS_V4, conn::buckets_for(spec.conn_table_size))
            .map_max_entries(names::CONNS_V6, conn::buckets_for(spec.conn_table_size));
        let mut lock = None;
        let pin_paths: Vec<(&str, PathBuf)> = match &spec.pin_dir {
            Some(dir) => {
                prepare_pin_dir(dir)?;
                lock = Some(lock_pin_dir(dir)?);
                check_pinned_maps(dir, ring_entries, conn::buckets_for(spec.conn_table_size))?;
                BALANCER_MAPS
                    .iter()
                    .map(|&name| (name, dir.join(name)))
                    .collect()
            }
            None => Vec::new(),
        };
        for (name, path) in &pin_paths {
            loader.map_pin_path(name, path.as_path());
        }
        let mut ebpf = loader.load(objects::BALANCER)?;
        load_xdp(&mut ebpf, BALANCER_PROGRAM)?;
        let datapath = AyaDatapath::from_ebpf(&mut ebpf, spec.geometry)?;
        Ok((Self { ebpf, lock }, datapath))
    }

    /// Takes the packet capture's maps out of the object: the filter and state (the
    /// controller's) and the ring (the capture session's).
    pub fn take_capture(
        &mut self,
    ) -> Result<(CaptureMaps, aya::maps::RingBuf<aya::maps::MapData>), LoadError> {
        let maps = CaptureMaps::take(&mut self.ebpf)?;
        let ring = self
            .ebpf
            .take_map(names::CAPTURE_RING)
            .ok_or(DatapathError::MissingMap(names::CAPTURE_RING))?
            .try_into()
            .map_err(|source| DatapathError::Map {
                map: names::CAPTURE_RING,
                source,
            })?;
        Ok((maps, ring))
    }

    /// The balancer program (to attach it, or to run it with `BPF_PROG_TEST_RUN`).
    pub fn program(&mut self) -> Result<&mut Xdp, LoadError> {
        program_mut(&mut self.ebpf, BALANCER_PROGRAM)
    }

    /// Attaches the balancer to `interface`; returns the mode it runs in.
    pub fn attach(&mut self, interface: &str, mode: AttachMode) -> Result<XdpMode, LoadError> {
        attach(&mut self.ebpf, BALANCER_PROGRAM, interface, mode).map(|(mode, _)| mode)
    }

    /// Attaches the balancer to `interface` through a link pinned at `link_pin`, so that it
    /// stays attached when this process ends. If a link is pinned there already (an earlier
    /// daemon's), this program replaces the one it runs, atomically: no packet goes
    /// unbalanced.
    pub fn attach_pinned(
        &mut self,
        interface: &str,
        mode: AttachMode,
        link_pin: &Path,
    ) -> Result<Attached, LoadError> {
        let program_error = |source| LoadError::Program {
            program: BALANCER_PROGRAM,
            source,
        };
        if link_pin.exists() {
            let pinned = PinnedLink::from_pin(link_pin).map_err(|e| LoadError::Link {
                path: link_pin.to_owned(),
                reason: e.to_string(),
            })?;
            let link = XdpLink::try_from(FdLink::from(pinned)).map_err(|e| LoadError::Link {
                path: link_pin.to_owned(),
                reason: format!("not an XDP link: {e}"),
            })?;
            self.program()?
                .attach_to_link(link)
                .map_err(program_error)?;
            return Ok(Attached::Replaced);
        }
        let (mode, link_id) = attach(&mut self.ebpf, BALANCER_PROGRAM, interface, mode)?;
        let link = self.program()?.take_link(link_id).map_err(program_error)?;
        let fd_link = FdLink::try_from(link).map_err(|e| LoadError::Link {
            path: link_pin.to_owned(),
            reason: format!("the kernel attached without a BPF link ({e}); it cannot be pinned"),
        })?;
        if let Some(dir) = link_pin.parent() {
            std::fs::create_dir_all(dir).map_err(|source| LoadError::Io {
                path: dir.to_owned(),
                source,
            })?;
        }
        fd_link.pin(link_pin).map_err(|e| LoadError::Link {
            path: link_pin.to_owned(),
            reason: e.to_string(),
        })?;
        Ok(Attached::New(mode))
    }
}

/// The backends' decapsulation program.
pub struct Decap {
    pub ebpf: Ebpf,
}

impl std::fmt::Debug for Decap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Decap").finish_non_exhaustive()
    }
}

/// The decapsulation program's maps.
pub const DECAP_MAPS: [&str; 2] = [names::DECAP_VIPS, names::DECAP_COUNTERS];

impl Decap {
    /// Loads the program with its maps, pinned under `pin_dir` (a bpffs directory) when given,
    /// so that `lb decap` can update the VIPs and read the counters of an attached program.
    pub fn load(pin_dir: Option<&Path>) -> Result<Self, LoadError> {
        let mut loader = EbpfLoader::new();
        if let Some(dir) = pin_dir {
            prepare_pin_dir(dir)?;
            for name in DECAP_MAPS {
                loader.map_pin_path(name, dir.join(name));
            }
        }
        let mut ebpf = loader.load(objects::DECAP)?;
        load_xdp(&mut ebpf, DECAP_PROGRAM)?;
        Ok(Self { ebpf })
    }

    pub fn program(&mut self) -> Result<&mut Xdp, LoadError> {
        program_mut(&mut self.ebpf, DECAP_PROGRAM)
    }

    /// Makes `vips` the inner destinations the program accepts: adds the new ones, then
    /// removes those no longer listed.
    pub fn set_vips(&mut self, vips: &[std::net::IpAddr]) -> Result<(), LoadError> {
        let map = self
            .ebpf
            .map_mut(names::DECAP_VIPS)
            .ok_or(DatapathError::MissingMap(names::DECAP_VIPS))?;
        let mut map: aya::maps::HashMap<_, DecapVipKey, u32> = aya::maps::HashMap::try_from(map)
            .map_err(|source| DatapathError::Map {
                map: names::DECAP_VIPS,
                source,
            })?;
        set_decap_vips(&mut map, vips)
    }
}

/// The decapsulation program's key for `address`.
pub fn decap_vip_key(address: std::net::IpAddr) -> DecapVipKey {
    let (addr_be, family) = crate::state::addr_be(address);
    DecapVipKey {
        addr_be,
        family,
        _pad: [0; 3],
    }
}

/// Writes `vips` into a decapsulation program's VIP map (see [`Decap::set_vips`]).
pub fn set_decap_vips<T: std::borrow::BorrowMut<aya::maps::MapData>>(
    map: &mut aya::maps::HashMap<T, DecapVipKey, u32>,
    vips: &[std::net::IpAddr],
) -> Result<(), LoadError> {
    let error = |source| {
        LoadError::Datapath(DatapathError::Map {
            map: names::DECAP_VIPS,
            source,
        })
    };
    let wanted: Vec<DecapVipKey> = vips.iter().map(|&vip| decap_vip_key(vip)).collect();
    for key in &wanted {
        map.insert(key, 1, 0).map_err(error)?;
    }
    let stale: Vec<DecapVipKey> = map
        .keys()
        .filter_map(Result::ok)
        .filter(|key| !wanted.contains(key))
        .collect();
    for key in &stale {
        map.remove(key).map_err(error)?;
    }
    Ok(())
}

/// The lab and benchmark helpers: `lb_pass`, `lb_tx_baseline`, `lb_sink`.
pub struct Aux {
    pub ebpf: Ebpf,
}

impl std::fmt::Debug for Aux {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Aux").finish_non_exhaustive()
    }
}

impl Aux {
    pub const PASS: &'static str = "lb_pass";
    pub const TX_BASELINE: &'static str = "lb_tx_baseline";
    pub const SINK: &'static str = "lb_sink";

    pub fn load() -> Result<Self, LoadError> {
        let mut ebpf = EbpfLoader::new().load(objects::AUX)?;
        for program in [Self::PASS, Self::TX_BASELINE, Self::SINK] {
            load_xdp(&mut ebpf, program)?;
        }
        Ok(Self { ebpf })
    }

    pub fn program(&mut self, name: &'static str) -> Result<&mut Xdp, LoadError> {
        program_mut(&mut self.ebpf, name)
    }
}

fn program_mut<'a>(ebpf: &'a mut Ebpf, name: &'static str) -> Result<&'a mut Xdp, LoadError> {
    ebpf.program_mut(name)
        .ok_or(LoadError::MissingProgram(name))?
        .try_into()
        .map_err(|source| LoadError::Program {
            program: name,
            source,
        })
}

fn load_xdp(ebpf: &mut Ebpf, name: &'static str) -> Result<(), LoadError> {
    program_mut(ebpf, name)?
        .load()
        .map_err(|source| LoadError::Program {
            program: name,
            source,
        })
}

/// What one `BPF_PROG_TEST_RUN` of an XDP program did with a frame.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FrameRun {
    pub action: u32,
    /// The frame as the program left it.
    pub frame: Vec<u8>,
    /// The kernel's own timing of the run.
    pub duration: std::time::Duration,
}

/// Runs `program` once on `frame` with `BPF_PROG_TEST_RUN`, as if it arrived on interface
/// `ingress` (of the calling thread's network namespace) when given. Used by the fixtures and
/// the benchmark.
pub fn run_frame(
    program: &Xdp,
    frame: &[u8],
    ingress: Option<u32>,
) -> Result<FrameRun, ProgramError> {
    use aya::programs::{TestRun as _, TestRunOptions};
    let mut out = vec![0u8; frame.len() + 256];
    let ctx = ingress.map(|ifindex| xdp_md(ifindex, frame.len()));
    let result = program.test_run(TestRunOptions {
        data_in: Some(frame),
        data_out: Some(&mut out),
        ctx_in: ctx.as_deref(),
        ..TestRunOptions::default()
    })?;
    out.truncate(result.data_size_out as usize);
    Ok(FrameRun {
        action: result.return_value,
        frame: out,
        duration: result.duration,
    })
}

/// A `struct xdp_md` context for `BPF_PROG_TEST_RUN`: a frame of `len` bytes arriving on
/// `ifindex` (fields: data, data_end, data_meta, ingress_ifindex, rx_queue_index,
/// egress_ifindex).
pub fn xdp_md(ifindex: u32, len: usize) -> Vec<u8> {
    let len = u32::try_from(len).unwrap_or(u32::MAX);
    [0, len, 0, ifindex, 0, 0]
        .iter()
        .flat_map(|word: &u32| word.to_ne_bytes())
        .collect()
}

/// The index of `interface`, or a clear error if there is none.
pub fn interface_index(interface: &str) -> Result<u32, LoadError> {
    let missing = || LoadError::NoSuchInterface(interface.to_owned());
    let name = CString::new(interface).map_err(|_| missing())?;
    // SAFETY: `name` is a valid NUL-terminated string that outlives the call.
    let index = unsafe { libc::if_nametoindex(name.as_ptr()) };
    if index == 0 {
        Err(missing())
    } else {
        Ok(index)
    }
}

/// The MTU of `interface`, asked of the kernel (`SIOCGIFMTU`) in the caller's network
/// namespace.
pub fn interface_mtu(interface: &str) -> std::io::Result<u32> {
    // SAFETY: `ifreq` is plain old data; all-zero is a valid value.
    let mut request: libc::ifreq = unsafe { std::mem::zeroed() };
    let name = interface.as_bytes();
    if name.len() >= request.ifr_name.len() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("interface name {interface:?} is too long"),
        ));
    }
    for (slot, byte) in request.ifr_name.iter_mut().zip(name) {
        *slot = *byte as libc::c_char;
    }
    // SAFETY: plain socket creation; the descriptor is owned and closed below.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `fd` is a valid socket and `request` a valid `ifreq` that outlives the call.
    let rc = unsafe { libc::ioctl(fd, libc::SIOCGIFMTU, &mut request) };
    let error = std::io::Error::last_os_error();
    // SAFETY: `fd` is ours and closed once.
    unsafe { libc::close(fd) };
    if rc < 0 {
        return Err(error);
    }
    // SAFETY: after SIOCGIFMTU the kernel has written `ifru_mtu`.
    let mtu = unsafe { request.ifr_ifru.ifru_mtu };
    u32::try_from(mtu).map_err(|_| std::io::Error::other(format!("MTU {mtu} of {interface}")))
}

/// Attaches program `name` of `ebpf` to `interface`. Returns the mode it runs in and the link.
pub fn attach(
    ebpf: &mut Ebpf,
    name: &'static str,
    interface: &str,
    mode: AttachMode,
) -> Result<(XdpMode, XdpLinkId), LoadError> {
    let index = interface_index(interface)?;
    let program = program_mut(ebpf, name)?;
    let failed = |source| LoadError::Program {
        program: name,
        source,
    };
    match mode {
        AttachMode::Driver => program
            .attach_to_if_index(index, XdpMode::Driver)
            .map(|link| (XdpMode::Driver, link))
            .map_err(failed),
        AttachMode::Generic => program
            .attach_to_if_index(index, XdpMode::Skb)
            .map(|link| (XdpMode::Skb, link))
            .map_err(failed),
        AttachMode::Auto => match program.attach_to_if_index(index, XdpMode::Driver) {
            Ok(link) => Ok((XdpMode::Driver, link)),
            Err(error) => {
                warn!(
                    %interface, %error,
                    "the driver refused native XDP; attaching in generic mode, which is slower"
                );
                program
                    .attach_to_if_index(index, XdpMode::Skb)
                    .map(|link| (XdpMode::Skb, link))
                    .map_err(failed)
            }
        },
    }
}

/// The CPUs the kernel may ever run (`/sys/devices/system/cpu/possible`): each has its own
/// copy of the per-CPU maps.
pub fn possible_cpus() -> Result<u32, LoadError> {
    let cpus = aya::util::nr_cpus().map_err(|(path, source)| LoadError::Io {
        path: PathBuf::from(path),
        source,
    })?;
    Ok(u32::try_from(cpus).unwrap_or(u32::MAX).max(1))
}

/// The flows a connection table asked to hold `requested` holds: its buckets are a power of
/// two ([`conn::buckets_for`]) of [`conn::WAYS`] slots each. A pinned table is compared
/// with this, not with the size asked for.
pub const fn conn_table_entries(requested: u32) -> u32 {
    conn::buckets_for(requested).saturating_mul(conn::WAYS)
}

/// Removes pinned maps of an earlier layout (`lb_*` files in `dir` that are not among
/// [`BALANCER_MAPS`], such as `lb_conns4_v1` after an upgrade to `_v2`): once the new program
/// runs in the pinned links, nothing uses them. Returns the names removed.
pub fn remove_stale_pins(dir: &Path) -> Result<Vec<String>, LoadError> {
    let io = |source| LoadError::Io {
        path: dir.to_owned(),
        source,
    };
    let mut removed = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(io)? {
        let entry = entry.map_err(io)?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with("lb_") && !BALANCER_MAPS.contains(&name.as_str()) {
            std::fs::remove_file(entry.path()).map_err(|source| LoadError::Io {
                path: entry.path(),
                source,
            })?;
            removed.push(name);
        }
    }
    removed.sort();
    Ok(removed)
}

/// Creates the pin directory, which must be on bpffs: refused before anything is created
/// when the nearest directory that exists is not.
fn prepare_pin_dir(dir: &Path) -> Result<(), LoadError> {
    // A relative path's last ancestor is "": the working directory.
    let existing = dir
        .ancestors()
        .map(|d| {
            if d.as_os_str().is_empty() {
                Path::new(".")
            } else {
                d
            }
        })
        .find(|d| d.is_dir())
        .unwrap_or(dir);
    if !is_bpffs(existing) {
        return Err(LoadError::NotBpffs(dir.to_owned()));
    }
    std::fs::create_dir_all(dir).map_err(|source| LoadError::Io {
        path: dir.to_owned(),
        source,
    })?;
    if !is_bpffs(dir) {
        return Err(LoadError::NotBpffs(dir.to_owned()));
    }
    Ok(())
}

impl Balancer {
    /// Unlocks the pin directory, for a successor taking over (`daemon::handover`).
    pub fn unlock(&mut self) {
        self.lock = None;
    }

    /// Locks the pin directory `dir` again, after a handover that did not happen.
    pub fn relock(&mut self, dir: &Path) -> Result<(), LoadError> {
        self.lock = Some(lock_pin_dir(dir)?);
        Ok(())
    }
}

/// Locks `dir` for this process (released when the file closes, also when the process dies):
/// a second daemon on the same pins is refused before it reads or writes any of them.
fn lock_pin_dir(dir: &Path) -> Result<std::fs::File, LoadError> {
    use std::os::fd::AsRawFd as _;
    let file = std::fs::File::open(dir).map_err(|source| LoadError::Io {
        path: dir.to_owned(),
        source,
    })?;
    // SAFETY: flock on a descriptor this function owns; no memory is passed.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        let source = std::io::Error::last_os_error();
        if source.kind() == std::io::ErrorKind::WouldBlock {
            return Err(LoadError::PinDirInUse(dir.to_owned()));
        }
        return Err(LoadError::Io {
            path: dir.to_owned(),
            source,
        });
    }
    Ok(file)
}

/// Whether `path` is on a bpffs mount.
pub fn is_bpffs(path: &Path) -> bool {
    let Ok(path) = CString::new(path.as_os_str().as_encoded_bytes()) else {
        return false;
    };
    // SAFETY: `statfs` is plain old data; all-zero is a valid value to be overwritten.
    let mut stat: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: `path` is NUL-terminated and `stat` is a valid out-pointer, both live for the call.
    let rc = unsafe { libc::statfs(path.as_ptr(), &mut stat) };
    const BPF_FS_MAGIC: libc::c_long = 0xcafe_4a11;
    rc == 0 && stat.f_type == BPF_FS_MAGIC
}

/// Refuses to adopt a pinned map whose shape differs from what this build would create.
fn check_pinned_maps(dir: &Path, ring_entries: u32, conn_buckets: u32) -> Result<(), LoadError> {
    // Every map whose layout this build fixes: a pinned one of another shape (an older or
    // newer lb) is refused rather than half used.
    let shapes: [(&'static str, usize, usize, Option<u32>); 16] = [
        (
            names::VIP_CACHE,
            4,
            size_of::<VipCacheEntry>(),
            Some(VIP_CACHE_SIZE),
        ),
        (
            names::VIPS_V4,
            size_of::<VipKeyV4>(),
            size_of::<VipValue>(),
            None,
        ),
        (
            names::VIPS_V6,
            size_of::<VipKeyV6>(),
            size_of::<VipValue>(),
            None,
        ),
        (names::RINGS, 4, 4, Some(ring_entries)),
        (names::BACKENDS, 4, size_of::<Backend>(), Some(MAX_BACKENDS)),
        (
            names::CONNS_V4,
            4,
            size_of::<conn::BucketV4>(),
            Some(conn_buckets),
        ),
        (
            names::CONNS_V6,
            4,
            size_of::<conn::BucketV6>(),
            Some(conn_buckets),
        ),
        (
            names::NEXT_HOPS,
            4,
            size_of::<NextHop>(),
            Some(MAX_BACKENDS),
        ),
        (names::CONFIG, 4, size_of::<DatapathConfig>(), Some(1)),
        (names::COUNTERS, 4, size_of::<u64>(), Some(Counter::COUNT)),
        (
            names::BACKEND_STATS,
            4,
            size_of::<TrafficCounters>(),
            Some(MAX_BACKENDS),
        ),
        (
            names::HISTORY,
            4,
            size_of::<TrafficCounters>(),
            Some(MAX_VIPS + 1),
        ),
        (names::CONN_SEED, 4, 4, Some(1)),
        (
            names::RATE_WINDOWS,
            4,
            size_of::<RateWindow>(),
            Some(RATE_WINDOWS),
        ),
        (
            names::EGRESS_VLANS,
            4,
            size_of::<EgressVlan>(),
            Some(MAX_TX_PORTS),
        ),
        // `bpf_devmap_val`: the interface and a program to run there.
        (names::TX_PORTS, 4, 8, Some(MAX_TX_PORTS)),
    ];
    for (name, key_size, value_size, entries) in shapes {
        let path = dir.join(name);
        if !path.exists() {
            continue;
        }
        let info = MapInfo::from_pin(&path)
            .map_err(|source| LoadError::Datapath(DatapathError::Map { map: name, source }))?;
        let found = (
            info.key_size() as usize,
            info.value_size() as usize,
            info.max_entries(),
        );
        let matches = found.0 == key_size
            && found.1 == value_size
            && entries.is_none_or(|entries| entries == found.2);
        if !matches {
            return Err(LoadError::PinnedMapMismatch {
                path,
                dir: dir.to_owned(),
                found: format!(
                    "key {} B, value {} B, {} entries",
                    found.0, found.1, found.2
                ),
                expected: format!(
                    "key {key_size} B, value {value_size} B{}",
                    entries
                        .map(|e| format!(", {e} entries"))
                        .unwrap_or_default()
                ),
            });
        }
    }
    Ok(())
}
