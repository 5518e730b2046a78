//! Ctrl-C for the commands that run for a while and own processes, namespaces or pins (the
//! demo, the benchmarks): SIGINT and SIGTERM only set a flag, which their loops check, so that
//! an interrupted run unwinds through its guards and leaves nothing behind.
//!
//! The handler stays installed: a second signal (`timeout` sends SIGINT to the process and to
//! its group, so a run may get two) changes nothing. A run stuck past its loops ends with
//! SIGKILL; the next run removes what it left behind.

use std::{
    io,
    sync::atomic::{AtomicBool, Ordering},
};

/// Set by the signal handler; never cleared.
static INTERRUPTED: AtomicBool = AtomicBool::new(false);

/// The signal handler: an atomic store is async-signal-safe.
extern "C" fn on_signal(_signal: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

/// Installs the handler for SIGINT and SIGTERM.
pub fn install() -> io::Result<()> {
    let handler: extern "C" fn(libc::c_int) = on_signal;
    for signal in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: `sigaction` is plain old data; all-zero is a valid value (no flags, empty
        // mask) that the fields below complete.
        let mut action: libc::sigaction = unsafe { std::mem::zeroed() };
        action.sa_sigaction = handler as libc::sighandler_t;
        // Restart interrupted system calls: the loops notice the flag at their next tick.
        action.sa_flags = libc::SA_RESTART;
        // SAFETY: `action.sa_mask` is a valid, writable signal set.
        unsafe { libc::sigemptyset(&mut action.sa_mask) };
        // SAFETY: `action` is fully initialised and its handler only stores to an atomic;
        // the old action is not asked for (null).
        let rc = unsafe { libc::sigaction(signal, &action, std::ptr::null_mut()) };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Whether SIGINT or SIGTERM arrived.
pub fn is_interrupted() -> bool {
    INTERRUPTED.load(Ordering::SeqCst)
}
