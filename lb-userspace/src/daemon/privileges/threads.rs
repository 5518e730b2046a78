//! Putting every thread of the process into one capability state ([`Target`]): capabilities
//! belong to threads, and `capset`, `PR_CAPBSET_DROP` and `PR_SET_NO_NEW_PRIVS` change only
//! the calling one. By the time the daemon drops, the async runtime's workers, its blocking
//! pool and the daemon's own threads are running, each with the capabilities it started with.
//!
//! [`apply_everywhere`] applies the target to the calling thread, then asks every other thread
//! to apply it to itself by a real-time signal whose handler does only that (system calls and
//! atomic loads: async-signal-safe), as glibc does for `setuid` across threads. It then reads
//! each thread's `/proc/self/task/TID/status` until every thread, including any started
//! meanwhile, shows the target; the kernel's word is the proof, not the handler's.

use std::{
    sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering},
    time::{Duration, Instant},
};

use super::caps::{self, Cap, CapSet, TaskState, ThreadSets};

/// The state every thread ends in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Target {
    /// The effective and permitted sets (the inheritable and ambient sets end empty: the
    /// daemon runs no other program).
    pub keep: CapSet,
    /// Whether the bounding set shrinks to `keep` too (it takes `CAP_SETPCAP`).
    pub shrink_bounding: bool,
}

/// A thread that did not take the target state.
#[derive(Debug, thiserror::Error)]
pub enum ThreadsError {
    #[error("installing the signal handler that drops capabilities in every thread: {0}")]
    Handler(#[source] std::io::Error),
    #[error("listing the daemon's threads in /proc/self/task: {0}")]
    List(#[source] std::io::Error),
    #[error(
        "thread {tid} still has capabilities {effective} (wanted {wanted}) after {waited:?}: \
         the daemon stops rather than serve with them"
    )]
    Stuck {
        tid: u32,
        effective: CapSet,
        wanted: CapSet,
        waited: Duration,
    },
}

static KEEP: AtomicU64 = AtomicU64::new(0);
static SHRINK_BOUNDING: AtomicBool = AtomicBool::new(false);
static LAST_CAP: AtomicU8 = AtomicU8::new(40);

/// How long every thread has to take the target state.
const DEADLINE: Duration = Duration::from_secs(5);

/// The signal that asks a thread to apply the target: a real-time one of glibc's free range,
/// used by nothing else in the daemon.
fn signal() -> libc::c_int {
    libc::SIGRTMIN() + 4
}

/// Applies the target to the calling thread. Async-signal-safe: system calls only.
fn apply_here() {
    let keep = CapSet(KEEP.load(Ordering::SeqCst));
    if SHRINK_BOUNDING.load(Ordering::SeqCst) {
        for number in 0..=LAST_CAP.load(Ordering::SeqCst) {
            let cap = libc::c_ulong::from(number);
            // SAFETY: prctl with integer arguments only; reading and dropping a bounding-set
            // entry of the calling thread.
            unsafe {
                if !keep.has(Cap(number)) && libc::prctl(libc::PR_CAPBSET_READ, cap) == 1 {
                    libc::prctl(libc::PR_CAPBSET_DROP, cap);
                }
            }
        }
    }
    // SAFETY: prctl with integer arguments only (clearing the calling thread's ambient set).
    unsafe {
        libc::prctl(
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_CLEAR_ALL as libc::c_ulong,
            0_u64,
            0_u64,
            0_u64,
        );
    }
    caps::set_raw(ThreadSets {
        effective: keep,
        permitted: keep,
        inheritable: CapSet::EMPTY,
    });
    // SAFETY: prctl with integer arguments only; no_new_privs can only be set, never unset.
    unsafe {
        libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1_u64, 0_u64, 0_u64, 0_u64);
    }
}

extern "C" fn on_signal(_signal: libc::c_int) {
    // SAFETY: errno is the calling thread's; saved and restored around the handler so that
    // the interrupted code sees its own.
    let errno = unsafe { *libc::__errno_location() };
    apply_here();
    // SAFETY: as above.
    unsafe { *libc::__errno_location() = errno };
}

fn install_handler() -> std::io::Result<()> {
    // SAFETY: a zeroed sigaction is a valid "no flags, empty mask" value.
    let mut action: libc::sigaction = unsafe { std::mem::zeroed() };
    action.sa_sigaction = on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t;
    // Interrupted system calls restart: the threads carry on as if nothing happened.
    action.sa_flags = libc::SA_RESTART;
    // SAFETY: `action` is a valid sigaction whose handler is async-signal-safe; the mask
    // pointer is its own field.
    let rc = unsafe {
        libc::sigemptyset(&raw mut action.sa_mask);
        libc::sigaction(signal(), &raw const action, std::ptr::null_mut())
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Whether a thread shows the target.
fn has_target(state: &TaskState, target: Target) -> bool {
    state.effective == target.keep
        && state.permitted == target.keep
        && state.inheritable.is_empty()
        && state.ambient.is_empty()
        && state.no_new_privs
        && (!target.shrink_bounding || state.bounding == target.keep)
}

/// The threads of this process and their states (a thread that ended meanwhile is left out).
fn threads() -> Result<Vec<(u32, TaskState)>, ThreadsError> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc/self/task").map_err(ThreadsError::List)? {
        let entry = entry.map_err(ThreadsError::List)?;
        let Some(tid) = entry.file_name().to_str().and_then(|n| n.parse().ok()) else {
            continue;
        };
        if let Ok(status) = std::fs::read_to_string(entry.path().join("status")) {
            found.push((tid, TaskState::parse(&status)));
        }
    }
    Ok(found)
}

/// Puts every thread of the process into `target`; returns how many threads there are.
pub fn apply_everywhere(target: Target) -> Result<usize, ThreadsError> {
    KEEP.store(target.keep.0, Ordering::SeqCst);
    SHRINK_BOUNDING.store(target.shrink_bounding, Ordering::SeqCst);
    LAST_CAP.store(caps::last_cap(), Ordering::SeqCst);
    install_handler().map_err(ThreadsError::Handler)?;
    apply_here();
    let started = Instant::now();
    // SAFETY: getpid has no preconditions.
    let pid = unsafe { libc::getpid() };
    // The thread ids of the last listing in which every thread was in the target state: a
    // thread signalled inside clone() may have made a child the listing missed, so it takes
    // two listings in a row with the same threads, all done.
    let mut done: Option<Vec<u32>> = None;
    loop {
        let all = threads()?;
        let behind: Vec<&(u32, TaskState)> = all
            .iter()
            .filter(|(_, state)| !has_target(state, target))
            .collect();
        let Some((tid, state)) = behind.first() else {
            let mut tids: Vec<u32> = all.iter().map(|(tid, _)| *tid).collect();
            tids.sort_unstable();
            if done.as_ref() == Some(&tids) {
                return Ok(all.len());
            }
            done = Some(tids);
            std::thread::sleep(Duration::from_millis(2));
            continue;
        };
        done = None;
        if started.elapsed() > DEADLINE {
            return Err(ThreadsError::Stuck {
                tid: *tid,
                effective: state.effective,
                wanted: target.keep,
                waited: DEADLINE,
            });
        }
        for (tid, _) in behind {
            let Ok(tid) = libc::pid_t::try_from(*tid) else {
                continue;
            };
            // SAFETY: tgkill with a thread of this process and a signal whose handler is
            // installed above; a thread that ended meanwhile makes it fail harmlessly.
            unsafe { libc::tgkill(pid, tid, signal()) };
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}
