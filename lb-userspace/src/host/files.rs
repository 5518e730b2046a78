//! The daemon's own limit on open files (`RLIMIT_NOFILE`). Every L7 client connection holds a
//! descriptor and, while a request is in flight, one to its backend: the usual soft limit of
//! 1024 (or a container's few thousand) would refuse connections long before the listeners'
//! `max_connections`. The daemon raises its own limit to its hard limit, if that is what its
//! configuration needs at least (else the hard limit too, where it may), and says so when it
//! cannot.

use std::sync::atomic::{AtomicU64, Ordering};

use tracing::{info, warn};

/// Descriptors besides the L7 connections: maps, programs, netlink, the control socket, logs.
pub const BASE: u64 = 1024;

/// The daemon's open-file limit now: (soft, hard).
pub fn limit() -> std::io::Result<(u64, u64)> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes one `rlimit` to a valid pointer.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &raw mut limit) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok((limit.rlim_cur, limit.rlim_max))
}

fn set_limit(soft: u64, hard: u64) -> std::io::Result<()> {
    let limit = libc::rlimit {
        rlim_cur: soft,
        rlim_max: hard,
    };
    // SAFETY: setrlimit reads one `rlimit` from a valid pointer.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raw const limit) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// The most a process may open, whatever its hard limit (`fs.nr_open`).
fn ceiling() -> u64 {
    std::fs::read_to_string("/proc/sys/fs/nr_open")
        .ok()
        .and_then(|text| text.trim().parse().ok())
        .unwrap_or(1 << 20)
}

/// The `needed` of the last warning that the limit is too low: a reload that needs the same
/// does not warn again.
static LOW_WARNED: AtomicU64 = AtomicU64::new(0);

/// Raises the soft limit to the hard one if that is at least `needed` descriptors (an HTTP/2
/// client's streams each hold a backend connection, which `needed` does not count), else both
/// to `needed` if the daemon may. Never lowers the soft limit; lowers the hard one only to
/// `fs.nr_open`, the most the kernel lets a process set. Returns the soft limit in force.
/// Warns when it cannot (once per `needed`).
pub fn ensure(needed: u64) -> u64 {
    let (soft, hard) = match limit() {
        Ok(limit) => limit,
        Err(error) => {
            warn!(%error, "cannot read the open-file limit");
            return 0;
        }
    };
    let ceiling = ceiling();
    let wanted = needed.min(ceiling);
    // A hard limit over `fs.nr_open` (or unlimited) cannot be set again as it is.
    let all = hard.min(ceiling);
    if soft >= all.max(wanted) {
        return soft;
    }
    let raised = if all >= wanted {
        set_limit(all, all).map(|()| all)
    } else {
        set_limit(wanted, wanted)
            .map(|()| wanted)
            .or_else(|_| set_limit(all, all).map(|()| all))
    };
    match raised {
        Ok(now) if now >= needed => {
            info!(
                from = soft,
                to = now,
                "raised the open-file limit for the L7 listeners' max_connections"
            );
            now
        }
        Ok(now) if LOW_WARNED.swap(needed, Ordering::Relaxed) == needed => now,
        Ok(now) => {
            warn!(
                limit = now,
                needed,
                "the open-file limit is below what the L7 listeners' max_connections need (a client connection and its backend's each): past it, connections are refused; raise the hard limit (LimitNOFILE= in a systemd unit, `ulimit -Hn` in a shell, fs.nr_open) or lower max_connections"
            );
            now
        }
        Err(error) => {
            warn!(%error, soft, needed, "cannot raise the open-file limit");
            soft
        }
    }
}
