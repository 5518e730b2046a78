//! Backends as the daemon shows them (`lb backend list --json`), and waiting for one to reach a
//! state within a deadline.
//!
//! [`list_backends`] returns the control API's [`BackendView`]s of a pool; [`find`] picks one
//! by address. [`wait_for_state`] polls until a backend is in a state (or [`wait_until_gone`]
//! until it is no longer listed) and returns how long that took from a given start, or panics
//! at the deadline with the last listing and the daemon's log. The wait is an observation, not
//! a measurement of the daemon: each poll runs the CLI (a few milliseconds), so the time
//! returned is an upper bound of when the change happened, by one poll.

use std::{
    net::IpAddr,
    thread,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use lb::control::{BackendView, Body};

use crate::daemon_lab::DaemonLab;

/// Time between two polls of the backend list.
const POLL: Duration = Duration::from_millis(20);

/// The backends of `pool`, as `lb backend list POOL --json` shows them.
pub fn list_backends(env: &DaemonLab, pool: &str) -> Vec<BackendView> {
    match env.cli_json(&["backend", "list", pool]) {
        Body::Backends(backends) => backends,
        other => panic!("lb backend list {pool} answered {other:?}"),
    }
}

/// The backend at `address` in `backends`, if listed.
pub fn find(backends: &[BackendView], address: IpAddr) -> Option<&BackendView> {
    backends.iter().find(|b| b.address == address)
}

/// The backend at `address` in `pool`; panics if it is not listed.
pub fn backend(env: &DaemonLab, pool: &str, address: IpAddr) -> BackendView {
    let backends = list_backends(env, pool);
    find(&backends, address)
        .cloned()
        .unwrap_or_else(|| panic!("{address} is not listed in pool {pool}: {backends:#?}"))
}

/// Polls until `pool`'s backend at `address` is in `state`, at most until `since + bound`;
/// returns its view and the time from `since` to the poll that saw it.
pub fn wait_for_state(
    env: &DaemonLab,
    pool: &str,
    address: IpAddr,
    state: &str,
    since: Instant,
    bound: Duration,
) -> (BackendView, Duration) {
    poll_until(env, pool, since, bound, |backends| {
        find(backends, address)
            .filter(|b| b.state == state)
            .cloned()
    })
}

/// Polls until `pool` no longer lists `address`, at most until `since + bound`; returns the
/// time from `since` to the poll that saw it gone. While it is listed, `while_listed` checks
/// each view of it (e.g. that it stays draining).
pub fn wait_until_gone(
    env: &DaemonLab,
    pool: &str,
    address: IpAddr,
    since: Instant,
    bound: Duration,
    while_listed: impl Fn(&BackendView),
) -> Duration {
    poll_until(env, pool, since, bound, |backends| {
        match find(backends, address) {
            Some(view) => {
                while_listed(view);
                None
            }
            None => Some(()),
        }
    })
    .1
}

/// Polls `pool`'s backend list until `check` returns something; panics at `since + bound`.
fn poll_until<T>(
    env: &DaemonLab,
    pool: &str,
    since: Instant,
    bound: Duration,
    check: impl Fn(&[BackendView]) -> Option<T>,
) -> (T, Duration) {
    let deadline = since + bound;
    loop {
        let backends = list_backends(env, pool);
        let seen = since.elapsed();
        if let Some(found) = check(&backends) {
            return (found, seen);
        }
        if Instant::now() > deadline {
            panic!(
                "pool {pool} did not reach the expected state within {bound:?}; last listing:\n\
                 {backends:#?}\ndaemon log:\n{}",
                env.daemon.log()
            );
        }
        thread::sleep(POLL);
    }
}

/// Checks that `view`'s last change (`since`, whole seconds since the Unix epoch) happened
/// between `after` and now.
pub fn assert_changed_since(view: &BackendView, after: SystemTime) {
    let since = view
        .since
        .unwrap_or_else(|| panic!("{} has no time of its last change: {view:?}", view.address));
    let secs = |t: SystemTime| t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let (low, high) = (secs(after), secs(SystemTime::now()));
    assert!(
        (low..=high).contains(&since),
        "{}: changed at {since} s, expected between {low} and {high} s: {view:?}",
        view.address
    );
}
