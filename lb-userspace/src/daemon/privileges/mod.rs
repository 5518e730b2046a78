//! Least privilege for `lb run`: what capabilities the daemon needs to start, which of them it
//! keeps once started, and the drop itself.
//!
//! [`Plan::for_config`] reads the configuration: a packet path needs `CAP_BPF` (maps, the
//! program), `CAP_NET_ADMIN` (the redirect map, attaching, VLAN offload) and `CAP_PERFMON`
//! (the verifier refuses the program's packet-pointer arithmetic without it) to start; L7
//! addresses below `net.ipv4.ip_unprivileged_port_start` need `CAP_NET_BIND_SERVICE`. Once
//! started, the daemon keeps only `CAP_NET_ADMIN` (managed neighbours and `accept_local` as
//! routes change), `CAP_BPF` only on a kernel that checks it on every `bpf()` call
//! ([`bpf_checks_every_call`]), and `CAP_NET_BIND_SERVICE` only if an L7 listener is below
//! that port (a reload may bind a changed address there).
//!
//! [`check_start`] refuses a start without what the plan needs, naming each capability and
//! why, before anything changes. [`drop_after_start`] runs once the programs are attached and
//! the listening sockets are open, before any listener accepts: every thread's effective and
//! permitted sets become the kept set, the inheritable and ambient sets empty, the bounding set
//! the kept set (when the daemon may change it: `CAP_SETPCAP`), and `no_new_privs` is set
//! ([`threads`]). The daemon runs the same as root or as a user of its own with ambient
//! capabilities (`packaging/lb.service`).

pub mod caps;
mod threads;

use tracing::{info, warn};

use self::caps::{Cap, CapSet};
use crate::config::Config;

/// Why the daemon may not start, or could not drop what it should.
#[derive(Debug, thiserror::Error)]
pub enum PrivilegeError {
    #[error(
        "the daemon lacks {missing}: run it as root, or give its user these capabilities \
         (systemd: AmbientCapabilities= as in packaging/lb.service; by hand: `setpriv \
         --inh-caps=+NAME --ambient-caps=+NAME ... lb run`)"
    )]
    Missing { missing: String },
    #[error("reading the daemon's capabilities: {0}")]
    Read(#[source] std::io::Error),
    #[error("dropping the capabilities the daemon no longer needs: {0}")]
    Threads(#[from] threads::ThreadsError),
}

/// A capability and why the daemon needs it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Need {
    pub cap: Cap,
    pub why: String,
}

/// The capabilities a configuration needs to start, and those the daemon keeps after.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Plan {
    pub start: Vec<Need>,
    pub keep: Vec<Need>,
}

fn need(cap: Cap, why: impl Into<String>) -> Need {
    Need {
        cap,
        why: why.into(),
    }
}

/// The lowest port a process without `CAP_NET_BIND_SERVICE` may bind, in this network
/// namespace (`net.ipv4.ip_unprivileged_port_start`, which IPv6 honours too).
pub fn unprivileged_port_start() -> u16 {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_unprivileged_port_start")
        .ok()
        .and_then(|text| text.trim().parse().ok())
        .unwrap_or(1024)
}

impl Plan {
    /// The plan for `config`, with `bpf_every_call` saying whether this kernel checks
    /// `CAP_BPF` on every `bpf()` call and `port_start` the lowest unprivileged port.
    pub fn new(config: &Config, bpf_every_call: bool, port_start: u16) -> Self {
        let mut plan = Self::default();
        if config.has_packet_path() {
            plan.start.extend([
                need(Cap::BPF, "creating the maps and loading the XDP program"),
                need(
                    Cap::NET_ADMIN,
                    "attaching XDP, the redirect map (a devmap) and turning VLAN offload off",
                ),
                need(
                    Cap::PERFMON,
                    "the verifier refuses the XDP program's packet-pointer arithmetic without it",
                ),
            ]);
            plan.keep.push(need(
                Cap::NET_ADMIN,
                "next hops made managed neighbours and accept_local set as routes and \
                 addresses change",
            ));
            if bpf_every_call {
                plan.keep.push(need(
                    Cap::BPF,
                    "this kernel checks it on every bpf() call (before Linux 6.5, with \
                     kernel.unprivileged_bpf_disabled set): the map updates",
                ));
            }
        }
        if config.announce.is_some() {
            plan.start.push(need(
                Cap::NET_ADMIN,
                "creating the announcement device ([announce])",
            ));
            plan.keep.push(need(
                Cap::NET_ADMIN,
                "adding and withdrawing the announced routes ([announce]) as listeners become \
                 servable or not",
            ));
        }
        let low: Vec<u16> = config
            .listeners
            .values()
            .filter(|listener| listener.l7.is_some())
            .flat_map(|listener| listener.bound_vips())
            .map(|vip| vip.port)
            .filter(|port| *port < port_start)
            .collect();
        if let Some(port) = low.iter().min() {
            plan.start.push(need(
                Cap::NET_BIND_SERVICE,
                format!("binding L7 port {port} (below {port_start})"),
            ));
            plan.keep.push(need(
                Cap::NET_BIND_SERVICE,
                format!(
                    "L7 listeners bind ports below {port_start}: a reload binds a changed \
                     address"
                ),
            ));
        }
        if let Some(address) = config.metrics.filter(|a| a.port() < port_start)
            && low.is_empty()
        {
            plan.start.push(need(
                Cap::NET_BIND_SERVICE,
                format!("binding the metrics address {address} (below {port_start})"),
            ));
        }
        plan
    }

    /// [`Plan::new`] with what this kernel, network namespace and `/dev` say.
    pub fn for_config(config: &Config) -> Self {
        let bpf_every_call = config.has_packet_path() && bpf_checks_every_call();
        Self::new(config, bpf_every_call, unprivileged_port_start())
            .with_tun_access(config, tun_accessible())
    }

    /// With a read-only group of the control socket (`gid`) the daemon is not in, giving the
    /// socket to it takes `cap_chown`, at start only.
    #[must_use]
    pub fn with_socket_group(mut self, gid: Option<u32>) -> Self {
        if let Some(gid) = gid.filter(|gid| !is_in_group(*gid)) {
            self.start.push(need(
                Cap::CHOWN,
                format!(
                    "giving the control socket to the read-only group (gid {gid}), which the \
                     daemon's user is not in (or make it a member: SupplementaryGroups=)"
                ),
            ));
        }
        self
    }

    /// With `[announce]` and a `/dev/net/tun` this process may not open for reading and
    /// writing (mode 0600, where no udev made it 0666), opening it takes
    /// `cap_dac_override`, at start only.
    #[must_use]
    pub fn with_tun_access(mut self, config: &Config, accessible: bool) -> Self {
        if config.announce.is_some() && !accessible {
            self.start.push(need(
                Cap::DAC_OVERRIDE,
                format!(
                    "opening {TUN_PATH} for [announce], which the daemon's user may not open \
                     (udev makes it 0666 on most systems: `chmod 0666 {TUN_PATH}`, or a udev \
                     rule, where none did)"
                ),
            ));
        }
        self
    }

    pub fn start_set(&self) -> CapSet {
        CapSet::of(self.start.iter().map(|n| n.cap))
    }

    pub fn keep_set(&self) -> CapSet {
        CapSet::of(self.keep.iter().map(|n| n.cap))
    }
}

/// The tun devices' clone node.
const TUN_PATH: &str = "/dev/net/tun";

/// Whether this process may open [`TUN_PATH`] for reading and writing (`faccessat` with the
/// effective ids: its mode, or a capability that overrides it).
fn tun_accessible() -> bool {
    // SAFETY: a NUL-terminated path; faccessat only reads it.
    unsafe {
        libc::faccessat(
            libc::AT_FDCWD,
            c"/dev/net/tun".as_ptr(),
            libc::R_OK | libc::W_OK,
            libc::AT_EACCESS,
        ) == 0
    }
}

/// Whether this process's effective group or one of its supplementary groups is `gid`.
fn is_in_group(gid: u32) -> bool {
    // SAFETY: getegid has no preconditions.
    if unsafe { libc::getegid() } == gid {
        return true;
    }
    let mut groups = vec![0 as libc::gid_t; 256];
    let size = libc::c_int::try_from(groups.len()).unwrap_or(0);
    // SAFETY: getgroups writes at most `size` ids into a buffer that long.
    let count = unsafe { libc::getgroups(size, groups.as_mut_ptr()) };
    usize::try_from(count).is_ok_and(|count| groups.iter().take(count).any(|g| *g == gid))
}

/// Whether `held` satisfies `cap`: `CAP_SYS_ADMIN` stands in for `CAP_BPF` and `CAP_PERFMON`,
/// as the kernel lets it.
fn satisfies(held: CapSet, cap: Cap) -> bool {
    held.has(cap) || ((cap == Cap::BPF || cap == Cap::PERFMON) && held.has(Cap::SYS_ADMIN))
}

/// Refuses to start without a capability `plan` needs, naming each and why.
pub fn check_start(plan: &Plan) -> Result<(), PrivilegeError> {
    let held = caps::get().map_err(PrivilegeError::Read)?.effective;
    let mut missing: Vec<String> = Vec::new();
    for need in &plan.start {
        let line = format!("{} ({})", need.cap, need.why);
        if !satisfies(held, need.cap) && !missing.contains(&line) {
            missing.push(line);
        }
    }
    if missing.is_empty() {
        return Ok(());
    }
    Err(PrivilegeError::Missing {
        missing: missing.join("; "),
    })
}

/// Drops every capability `plan` does not keep, in every thread, sets `no_new_privs`, and logs
/// what was kept (and why) and what was dropped.
pub fn drop_after_start(plan: &Plan) -> Result<(), PrivilegeError> {
    let before = caps::get().map_err(PrivilegeError::Read)?;
    let mut keep = CapSet::EMPTY;
    let mut reasons = Vec::new();
    for need in &plan.keep {
        let cap = if before.permitted.has(need.cap) {
            need.cap
        } else if need.cap == Cap::BPF && before.permitted.has(Cap::SYS_ADMIN) {
            warn!(
                "keeping cap_sys_admin in place of cap_bpf, which the daemon was not given: give it cap_bpf and not cap_sys_admin"
            );
            Cap::SYS_ADMIN
        } else {
            continue;
        };
        if !keep.has(cap) {
            keep = keep.with(cap);
            reasons.push(format!("{cap} ({})", need.why));
        }
    }
    let shrink_bounding = before.effective.has(Cap::SETPCAP);
    let threads = threads::apply_everywhere(threads::Target {
        keep,
        shrink_bounding,
    })?;
    let dropped = before.permitted.without(keep);
    info!(
        kept = %if reasons.is_empty() { "none".to_owned() } else { reasons.join("; ") },
        dropped = %dropped,
        threads,
        bounding_set = if shrink_bounding { "the kept set" } else { "as started (no cap_setpcap)" },
        no_new_privs = true,
        "dropped the capabilities the daemon no longer needs"
    );
    Ok(())
}

/// Whether this kernel refuses every `bpf()` call without `CAP_BPF` (or `CAP_SYS_ADMIN`), as
/// kernels before 6.5 do when `kernel.unprivileged_bpf_disabled` is set: asked on a thread of
/// its own that gives both up (capabilities are per thread) and looks up a key in no map. An
/// `EPERM` says the check comes first; `EBADF` that only creating maps and loading programs
/// need it. If the question cannot be asked, the answer is yes (keep it).
pub fn bpf_checks_every_call() -> bool {
    let asked = std::thread::Builder::new()
        .name("lb-cap-probe".to_owned())
        .spawn(|| {
            let mut sets = caps::get().ok()?;
            sets.effective = sets
                .effective
                .without(CapSet::of([Cap::BPF, Cap::SYS_ADMIN]));
            caps::set(sets).ok()?;
            // BPF_MAP_LOOKUP_ELEM on map_fd -1 (the rest of the attributes zero).
            let mut attr = [0_u8; 32];
            attr[..4].copy_from_slice(&u32::MAX.to_ne_bytes());
            // SAFETY: bpf reads `attr.len()` bytes of a valid buffer; with no map, it writes
            // nothing.
            let rc = unsafe {
                libc::syscall(
                    libc::SYS_bpf,
                    1_i64,
                    attr.as_mut_ptr(),
                    attr.len() as libc::c_ulong,
                )
            };
            let errno = std::io::Error::last_os_error().raw_os_error();
            Some(rc != 0 && errno == Some(libc::EPERM))
        });
    asked
        .ok()
        .and_then(|thread| thread.join().ok())
        .flatten()
        .unwrap_or(true)
}

#[cfg(test)]
mod tests;
