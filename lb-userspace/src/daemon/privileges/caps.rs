//! Linux capabilities as the daemon handles them: [`Cap`] (one, by its kernel number and
//! name), [`CapSet`] (a set, as the kernel's 64-bit masks), the calling thread's sets through
//! `capget`/`capset`, and a thread's sets as `/proc/self/task/TID/status` shows them
//! ([`TaskState`]).
//!
//! Capabilities are per thread: `capset` and `PR_CAPBSET_DROP` change the calling thread only;
//! [`super::threads`] applies them to every thread of the process.

use std::fmt;

/// A capability, by its number in `linux/capability.h`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Cap(pub u8);

impl Cap {
    pub const CHOWN: Self = Self(0);
    pub const DAC_OVERRIDE: Self = Self(1);
    pub const SETPCAP: Self = Self(8);
    pub const NET_BIND_SERVICE: Self = Self(10);
    pub const NET_ADMIN: Self = Self(12);
    pub const SYS_ADMIN: Self = Self(21);
    pub const PERFMON: Self = Self(38);
    pub const BPF: Self = Self(39);

    /// The name systemd and setpriv use, without the `CAP_` prefix (lower case).
    pub fn name(self) -> String {
        NAMES
            .get(usize::from(self.0))
            .map_or_else(|| format!("cap_{}", self.0), |n| format!("cap_{n}"))
    }

    /// The capability named `name` (`CAP_NET_ADMIN`, `cap_net_admin` or `net_admin`).
    pub fn from_name(name: &str) -> Option<Self> {
        let lower = name.to_ascii_lowercase();
        let bare = lower.strip_prefix("cap_").unwrap_or(&lower);
        NAMES
            .iter()
            .position(|n| *n == bare)
            .and_then(|i| u8::try_from(i).ok())
            .map(Self)
    }
}

impl fmt::Display for Cap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name())
    }
}

/// The names of capabilities 0 to 40 (Linux 5.9 and later), in order.
const NAMES: [&str; 41] = [
    "chown",
    "dac_override",
    "dac_read_search",
    "fowner",
    "fsetid",
    "kill",
    "setgid",
    "setuid",
    "setpcap",
    "linux_immutable",
    "net_bind_service",
    "net_broadcast",
    "net_admin",
    "net_raw",
    "ipc_lock",
    "ipc_owner",
    "sys_module",
    "sys_rawio",
    "sys_chroot",
    "sys_ptrace",
    "sys_pacct",
    "sys_admin",
    "sys_boot",
    "sys_nice",
    "sys_resource",
    "sys_time",
    "sys_tty_config",
    "mknod",
    "lease",
    "audit_write",
    "audit_control",
    "setfcap",
    "mac_override",
    "mac_admin",
    "syslog",
    "wake_alarm",
    "block_suspend",
    "audit_read",
    "perfmon",
    "bpf",
    "checkpoint_restore",
];

/// A set of capabilities: bit N is capability N.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct CapSet(pub u64);

impl CapSet {
    pub const EMPTY: Self = Self(0);

    pub fn of(caps: impl IntoIterator<Item = Cap>) -> Self {
        caps.into_iter().fold(Self::EMPTY, |set, cap| set.with(cap))
    }

    #[must_use]
    pub fn with(self, cap: Cap) -> Self {
        Self(self.0 | bit(cap))
    }

    pub fn has(self, cap: Cap) -> bool {
        self.0 & bit(cap) != 0
    }

    #[must_use]
    pub fn without(self, other: Self) -> Self {
        Self(self.0 & !other.0)
    }

    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// The capabilities in the set, lowest first.
    pub fn iter(self) -> impl Iterator<Item = Cap> {
        (0..64_u8).map(Cap).filter(move |cap| self.has(*cap))
    }
}

impl fmt::Display for CapSet {
    /// `cap_a, cap_b`, or `none`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_empty() {
            return f.write_str("none");
        }
        let names: Vec<String> = self.iter().map(Cap::name).collect();
        f.write_str(&names.join(", "))
    }
}

fn bit(cap: Cap) -> u64 {
    1_u64.checked_shl(u32::from(cap.0)).unwrap_or(0)
}

/// `_LINUX_CAPABILITY_VERSION_3`: two 32-bit words per set.
const VERSION_3: u32 = 0x2008_0522;

#[repr(C)]
struct Header {
    version: u32,
    pid: libc::c_int,
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct Data {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

/// The calling thread's effective, permitted and inheritable sets.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ThreadSets {
    pub effective: CapSet,
    pub permitted: CapSet,
    pub inheritable: CapSet,
}

fn halves(set: CapSet) -> (u32, u32) {
    // Truncation is the point: the low and the high word.
    #[expect(
        clippy::cast_possible_truncation,
        reason = "splitting into 32-bit words"
    )]
    (set.0 as u32, (set.0 >> 32) as u32)
}

fn join(low: u32, high: u32) -> CapSet {
    CapSet(u64::from(low) | (u64::from(high) << 32))
}

/// The calling thread's sets (`capget`).
pub fn get() -> std::io::Result<ThreadSets> {
    let mut header = Header {
        version: VERSION_3,
        pid: 0,
    };
    let mut data = [Data::default(); 2];
    // SAFETY: capget reads one header and writes two `Data` (version 3), both valid here.
    let rc = unsafe { libc::syscall(libc::SYS_capget, &raw mut header, data.as_mut_ptr()) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let [low, high] = data;
    Ok(ThreadSets {
        effective: join(low.effective, high.effective),
        permitted: join(low.permitted, high.permitted),
        inheritable: join(low.inheritable, high.inheritable),
    })
}

/// Sets the calling thread's sets (`capset`). Async-signal-safe: one system call, no
/// allocation. Returns the system call's result (0, or -1 with `errno` set).
pub fn set_raw(sets: ThreadSets) -> libc::c_long {
    let (e0, e1) = halves(sets.effective);
    let (p0, p1) = halves(sets.permitted);
    let (i0, i1) = halves(sets.inheritable);
    let mut header = Header {
        version: VERSION_3,
        pid: 0,
    };
    let data = [
        Data {
            effective: e0,
            permitted: p0,
            inheritable: i0,
        },
        Data {
            effective: e1,
            permitted: p1,
            inheritable: i1,
        },
    ];
    // SAFETY: capset reads one header and two `Data` (version 3), valid for the call.
    unsafe { libc::syscall(libc::SYS_capset, &raw mut header, data.as_ptr()) }
}

/// The calling thread's sets changed to `sets`.
pub fn set(sets: ThreadSets) -> std::io::Result<()> {
    if set_raw(sets) != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// The highest capability this kernel knows (`/proc/sys/kernel/cap_last_cap`).
pub fn last_cap() -> u8 {
    std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
        .ok()
        .and_then(|text| text.trim().parse().ok())
        .unwrap_or(40)
}

/// A thread's credentials as `/proc/self/task/TID/status` shows them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TaskState {
    pub inheritable: CapSet,
    pub permitted: CapSet,
    pub effective: CapSet,
    pub bounding: CapSet,
    pub ambient: CapSet,
    pub no_new_privs: bool,
}

impl TaskState {
    /// Parses the `Cap*:` and `NoNewPrivs:` lines of a `status` file.
    pub fn parse(status: &str) -> Self {
        let mut state = Self::default();
        for line in status.lines() {
            let Some((key, value)) = line.split_once(':') else {
                continue;
            };
            let value = value.trim();
            let mask = || CapSet(u64::from_str_radix(value, 16).unwrap_or(u64::MAX));
            match key {
                "CapInh" => state.inheritable = mask(),
                "CapPrm" => state.permitted = mask(),
                "CapEff" => state.effective = mask(),
                "CapBnd" => state.bounding = mask(),
                "CapAmb" => state.ambient = mask(),
                "NoNewPrivs" => state.no_new_privs = value == "1",
                _ => {}
            }
        }
        state
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_sets_print_by_name() {
        assert_eq!(Cap::from_name("CAP_NET_ADMIN"), Some(Cap::NET_ADMIN));
        assert_eq!(Cap::from_name("bpf"), Some(Cap::BPF));
        assert_eq!(Cap::from_name("cap_perfmon"), Some(Cap::PERFMON));
        assert_eq!(Cap::from_name("cap_nonsense"), None);
        assert_eq!(Cap::SETPCAP.name(), "cap_setpcap");
        assert_eq!(Cap::SYS_ADMIN.name(), "cap_sys_admin");
        let set = CapSet::of([Cap::BPF, Cap::NET_ADMIN]);
        assert_eq!(set.to_string(), "cap_net_admin, cap_bpf");
        assert_eq!(CapSet::EMPTY.to_string(), "none");
        assert_eq!(set.0, (1 << 12) | (1 << 39));
        assert!(set.without(CapSet::of([Cap::BPF])).has(Cap::NET_ADMIN));
        assert!(!set.without(CapSet::of([Cap::BPF])).has(Cap::BPF));
    }

    #[test]
    fn a_status_file_reads_as_its_sets() {
        let status = "Name:\tlb\nCapInh:\t0000000000000000\nCapPrm:\t0000008000001000\n\
                      CapEff:\t0000008000001000\nCapBnd:\t000001fffeffffff\n\
                      CapAmb:\t0000000000000000\nNoNewPrivs:\t1\n";
        let state = TaskState::parse(status);
        assert_eq!(state.effective, CapSet::of([Cap::NET_ADMIN, Cap::BPF]));
        assert_eq!(state.permitted, state.effective);
        assert_eq!(state.bounding.0, 0x1ff_feff_ffff);
        assert!(state.no_new_privs);
        assert!(!TaskState::parse("NoNewPrivs:\t0\n").no_new_privs);
    }

    #[test]
    fn the_calling_threads_sets_are_read() {
        let sets = get().expect("capget");
        // Whoever runs the tests, the effective set is within the permitted one.
        assert_eq!(sets.effective.without(sets.permitted), CapSet::EMPTY);
    }
}
