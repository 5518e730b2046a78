//! Ctrl-C for the demo: SIGINT and SIGTERM only set a flag, and every loop of the demo checks
//! it ([`check`], [`sleep`]) and returns [`DemoError::Interrupted`]. The error unwinds through
//! the lab's guards, which stop the daemon and delete the namespaces, within a loop's tick.
//!
//! A thread can be stuck in a socket read when Ctrl-C comes (the terminal also interrupts the
//! daemon, and a connection through a balancer that just left waits for its read timeout):
//! [`join_all`] gives client threads a short grace and then leaves them behind; they hold no
//! guard and end with the process.

use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use super::DemoError;

/// How often an interruptible wait looks at the flag.
const TICK: Duration = Duration::from_millis(50);

/// How long [`join_all`] waits for threads once interrupted.
const GRACE: Duration = Duration::from_millis(500);

/// How often [`join_all`] looks at its threads.
const JOIN_POLL: Duration = Duration::from_millis(10);

/// Installs the handler for SIGINT and SIGTERM ([`crate::interrupt`]).
pub fn install() -> Result<(), DemoError> {
    crate::interrupt::install().map_err(DemoError::Signal)
}

pub use crate::interrupt::is_interrupted;

/// [`DemoError::Interrupted`] once a signal arrived.
pub fn check() -> Result<(), DemoError> {
    if is_interrupted() {
        return Err(DemoError::Interrupted);
    }
    Ok(())
}

/// Sleeps for `duration`, or until a signal arrives (then returns the error).
pub fn sleep(duration: Duration) -> Result<(), DemoError> {
    let deadline = Instant::now() + duration;
    loop {
        check()?;
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Ok(());
        }
        thread::sleep(left.min(TICK));
    }
}

/// Joins every `(name, thread)` and returns their results in order; a thread that panicked is
/// a [`DemoError::Thread`]. Once interrupted, waits at most [`GRACE`] for them, then returns
/// [`DemoError::Interrupted`] and leaves the rest behind.
pub fn join_all<T>(threads: Vec<(String, JoinHandle<T>)>) -> Result<Vec<T>, DemoError> {
    let mut interrupted_at = None;
    while !threads.iter().all(|(_, handle)| handle.is_finished()) {
        if is_interrupted() {
            let since = *interrupted_at.get_or_insert_with(Instant::now);
            if since.elapsed() > GRACE {
                return Err(DemoError::Interrupted);
            }
        }
        thread::sleep(JOIN_POLL);
    }
    threads
        .into_iter()
        .map(|(name, handle)| handle.join().map_err(|_| DemoError::Thread(name)))
        .collect()
}
