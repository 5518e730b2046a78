//! What the controller knows of each backend besides the configuration: its health (from the
//! probes), a drain in progress, and when it (re)joined, for slow start. From that and the
//! configuration, [`Runtime::listeners`] computes what the reconciler writes:
//!
//! | backend | weight in the table | established flows | L7 sticky sessions |
//! | --- | --- | --- | --- |
//! | healthy | its weight (ramping up during slow start) | stay | stay |
//! | unhealthy, unreachable (dead) | 0 | placed afresh | re-pinned |
//! | unhealthy, reachable (failing its check) | 0 | stay | re-pinned |
//! | draining | 0 | stay, until the drain ends and it is removed | stay, until then |
//! | disabled (weight 0) | 0 | stay | stay |
//!
//! The L7 listeners balance requests by the same weights ([`Runtime::members`]).
//!
//! When a pool's health check fails every backend that is neither draining nor disabled, the
//! pool *fails open* (unless configured not to): all of them take flows as if healthy.
//!
//! Slow start ramps on the wall clock, in steps that begin at multiples of the step's length
//! since the Unix epoch: balancers whose clocks agree (NTP) and that see a backend recover
//! within the same step give it the same weight at every moment, so their Maglev tables stay
//! identical through the ramp (a flow that changes balancer keeps its backend). Two that see it
//! in neighbouring steps differ by one step (a tenth of its weight) until both ramps end.
//!
//! Pure: callers pass the time, so tests control the clock (the wall clock is read through a
//! fixed pairing of an `Instant` with the `SystemTime` of the same moment).

use std::{
    collections::BTreeMap,
    net::IpAddr,
    time::{Duration, Instant, SystemTime},
};

use crate::{
    config::{BackendConfig, Config, Pool, describe},
    health::state::{BackendHealth, Health, Outcome, Transition},
    l7::{PoolMembers, balance::Member},
    state::{Listener, Target},
};

/// A backend of a pool.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct BackendKey {
    pub pool: String,
    pub address: IpAddr,
    pub port: Option<u16>,
}

impl BackendKey {
    pub fn of(pool: &str, backend: &BackendConfig) -> Self {
        Self {
            pool: pool.to_owned(),
            address: backend.address,
            port: backend.port,
        }
    }
}

impl std::fmt::Display for BackendKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} in pool {:?}",
            describe(self.address, self.port),
            self.pool
        )
    }
}

/// Maglev weights are scaled by this so that slow start can ramp a weight of 1 in steps.
const WEIGHT_SCALE: u32 = 100;
/// Slow start ramps in this many steps.
const RAMP_STEPS: u32 = 10;
/// How far the wall clock may drift from its pairing with the monotonic clock before it is
/// paired afresh.
const CLOCK_SLACK: Duration = Duration::from_millis(10);

/// The states `lb backend list` shows, and the metrics count transitions into.
pub const STATES: [&str; 4] = ["healthy", "unhealthy", "draining", "disabled"];

/// A change a backend went through, with why and when.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Change {
    pub state: &'static str,
    pub reason: String,
    pub at: SystemTime,
}

#[derive(Clone, Debug)]
struct Entry {
    health: Option<BackendHealth>,
    /// When a drain ends (the backend is then removed).
    drain_until: Option<Instant>,
    /// When slow start began (joined, or became healthy again), in wall-clock time since the
    /// Unix epoch.
    ramp_from: Option<Duration>,
    last: Option<Change>,
    /// Transitions into each of [`STATES`].
    transitions: BTreeMap<&'static str, u64>,
    /// Its weight in the configuration last synced.
    weight: Option<u32>,
    /// Its health is known since it was added (or the daemon started): a check passed, or it
    /// became unhealthy.
    probed: bool,
}

/// Every backend's run-time state.
#[derive(Clone, Debug, Default)]
pub struct Runtime {
    entries: BTreeMap<BackendKey, Entry>,
    clock: WallClock,
}

/// An `Instant` and the wall-clock time of the same moment: wall-clock time of other instants
/// without reading the clock again (so that callers' instants decide, as in tests).
#[derive(Clone, Copy, Debug)]
struct WallClock {
    instant: Instant,
    since_epoch: Duration,
}

impl Default for WallClock {
    fn default() -> Self {
        Self::at(Instant::now(), SystemTime::now())
    }
}

impl WallClock {
    fn at(instant: Instant, wall: SystemTime) -> Self {
        Self {
            instant,
            since_epoch: wall
                .duration_since(SystemTime::UNIX_EPOCH)
                .unwrap_or_default(),
        }
    }

    /// Wall-clock time at `at`, since the Unix epoch.
    fn wall(&self, at: Instant) -> Duration {
        match at.checked_duration_since(self.instant) {
            Some(after) => self.since_epoch + after,
            None => self
                .since_epoch
                .saturating_sub(self.instant.saturating_duration_since(at)),
        }
    }
}

impl Runtime {
    /// Follows the wall clock: if `wall` (read at `now`) is more than [`CLOCK_SLACK`] from
    /// what the pairing gives, pair them afresh (NTP stepped the clock, say; nodes must step
    /// slow start at the same wall-clock moments). Returns the step, if there was one.
    pub fn follow_wall_clock(&mut self, now: Instant, wall: SystemTime) -> Option<Duration> {
        let fresh = WallClock::at(now, wall);
        let step = self.clock.wall(now).abs_diff(fresh.since_epoch);
        (step > CLOCK_SLACK).then(|| {
            self.clock = fresh;
            step
        })
    }

    /// A runtime whose wall clock read `wall` at `instant` (tests; [`Runtime::default`] reads
    /// both clocks).
    pub fn with_wall_clock(instant: Instant, wall: SystemTime) -> Self {
        Self {
            entries: BTreeMap::new(),
            clock: WallClock::at(instant, wall),
        }
    }

    /// Matches the entries to `config`'s backends: new ones start healthy (ramping if their
    /// pool has slow start and `ramp` is set: false at daemon start, so a restart does not
    /// take traffic away), removed ones are forgotten.
    pub fn sync(&mut self, config: &Config, now: Instant, ramp: bool) {
        let mut keep = BTreeMap::new();
        for (name, pool) in &config.pools {
            for backend in &pool.backends {
                let key = BackendKey::of(name, backend);
                let mut entry = self.entries.remove(&key).unwrap_or_else(|| Entry {
                    health: None,
                    drain_until: None,
                    ramp_from: (ramp && !pool.slow_start.is_zero()).then(|| self.clock.wall(now)),
                    last: None,
                    transitions: BTreeMap::new(),
                    weight: None,
                    probed: false,
                });
                // A weight changed across 0 (by `lb backend set-weight` or a reload): the
                // operator's doing, recorded as such.
                if entry
                    .weight
                    .is_some_and(|w| (w == 0) != (backend.weight == 0))
                {
                    let (state, reason) = if backend.weight == 0 {
                        ("disabled", "weight set to 0")
                    } else {
                        ("healthy", "weight set above 0")
                    };
                    entry.record(state, reason.to_owned());
                }
                entry.weight = Some(backend.weight);
                keep.insert(key, entry);
            }
        }
        for (key, entry) in &mut keep {
            let thresholds = config
                .pools
                .get(&key.pool)
                .and_then(|p| p.health_check.as_ref())
                .map(|hc| hc.thresholds);
            entry.health = match (entry.health.take(), thresholds) {
                (Some(health), Some(_)) => Some(health),
                (None, Some(thresholds)) => Some(BackendHealth::new(thresholds)),
                (_, None) => None,
            };
        }
        self.entries = keep;
    }

    /// Counts a probe's outcome for `key`; returns the health transition it caused.
    pub fn observe(
        &mut self,
        key: &BackendKey,
        outcome: &Outcome,
        now: Instant,
        pool: &Pool,
    ) -> Option<Transition> {
        let entry = self.entries.get_mut(key)?;
        entry.probed |= matches!(outcome, Outcome::Pass);
        let transition = entry.health.as_mut()?.observe(outcome, now)?;
        entry.probed = true;
        let state = match transition.health {
            Health::Healthy => {
                if !pool.slow_start.is_zero() {
                    entry.ramp_from = Some(self.clock.wall(now));
                }
                "healthy"
            }
            Health::Unhealthy { .. } => "unhealthy",
        };
        entry.record(state, transition.reason.clone());
        Some(transition)
    }

    /// Starts draining `key` until `until`; then [`Runtime::drains_ended`] names it.
    pub fn drain(&mut self, key: &BackendKey, until: Instant, reason: String) -> bool {
        let Some(entry) = self.entries.get_mut(key) else {
            return false;
        };
        entry.drain_until = Some(until);
        entry.record("draining", reason);
        true
    }

    /// Whether `key` is draining.
    pub fn is_draining(&self, key: &BackendKey) -> bool {
        self.entries
            .get(key)
            .is_some_and(|e| e.drain_until.is_some())
    }

    /// Backends whose drain has ended by `now`.
    pub fn drains_ended(&self, now: Instant) -> Vec<BackendKey> {
        self.entries
            .iter()
            .filter(|(_, e)| e.drain_until.is_some_and(|until| until <= now))
            .map(|(k, _)| k.clone())
            .collect()
    }

    /// The state `lb backend list` shows for `key` (of weight `weight`), and its last change.
    pub fn state_of(&self, key: &BackendKey, weight: u32) -> (&'static str, Option<&Change>) {
        let Some(entry) = self.entries.get(key) else {
            return ("healthy", None);
        };
        let state = if entry.drain_until.is_some() {
            "draining"
        } else if weight == 0 {
            "disabled"
        } else if matches!(
            entry.health.as_ref().map(BackendHealth::health),
            Some(Health::Unhealthy { .. })
        ) {
            "unhealthy"
        } else {
            "healthy"
        };
        (state, entry.last.as_ref())
    }

    /// Transitions into each state, for `key`.
    pub fn transitions(&self, key: &BackendKey) -> Vec<(&'static str, u64)> {
        let entry = self.entries.get(key);
        STATES
            .iter()
            .map(|&s| {
                (
                    s,
                    entry
                        .and_then(|e| e.transitions.get(s))
                        .copied()
                        .unwrap_or(0),
                )
            })
            .collect()
    }

    /// The passthrough listeners as the reconciler should write them now.
    pub fn listeners(&self, config: &Config, now: Instant) -> Vec<Listener> {
        let mut listeners = config.passthrough_listeners();
        for listener in &mut listeners {
            let Some(pool_name) = config.listeners.get(&listener.name).map(|l| l.pool.clone())
            else {
                continue;
            };
            let Some(pool) = config.pools.get(&pool_name) else {
                continue;
            };
            listener.targets = self.targets(&pool_name, pool, now);
        }
        listeners
    }

    /// The members of every pool used by an L7 listener, as its requests see them now: the
    /// same weights as the Maglev table's; sessions stay with a backend unless it is
    /// unhealthy (and the pool does not fail open) or gone.
    pub fn members(&self, config: &Config, now: Instant) -> PoolMembers {
        let mut members = PoolMembers::new();
        let used = config
            .listeners
            .values()
            .filter(|l| l.l7.is_some())
            .flat_map(|l| l.pools());
        for name in used {
            if members.contains_key(name) {
                continue;
            }
            let Some(pool) = config.pools.get(name) else {
                continue;
            };
            let targets = self.targets(name, pool, now);
            let list = pool
                .backends
                .iter()
                .zip(targets)
                .map(|(backend, target)| {
                    let key = BackendKey::of(name, backend);
                    let parked = matches!(self.kind(&key, backend.weight), Kind::Parked);
                    Member {
                        backend: backend.clone(),
                        weight: target.weight,
                        sticky: target.weight > 0 || parked,
                    }
                })
                .collect();
            members.insert(name.to_owned(), list);
        }
        members
    }

    /// How many of pool `name`'s backends take new flows because they are healthy (or not
    /// checked) and active: not draining, not disabled, not failing open.
    pub fn healthy(&self, name: &str, pool: &Pool) -> usize {
        pool.backends
            .iter()
            .filter(|b| matches!(self.kind(&BackendKey::of(name, b), b.weight), Kind::Up))
            .count()
    }

    /// How many of pool `name`'s checked backends have no known health yet (no check passed,
    /// and not failed enough to be unhealthy).
    pub fn unprobed(&self, name: &str, pool: &Pool) -> usize {
        if pool.health_check.is_none() {
            return 0;
        }
        pool.backends
            .iter()
            .filter(|b| {
                self.entries
                    .get(&BackendKey::of(name, b))
                    .is_some_and(|e| !e.probed)
            })
            .count()
    }

    /// The targets of one pool (see the module documentation).
    fn targets(&self, name: &str, pool: &Pool, now: Instant) -> Vec<Target> {
        let kinds: Vec<(&BackendConfig, Kind)> = pool
            .backends
            .iter()
            .map(|b| (b, self.kind(&BackendKey::of(name, b), b.weight)))
            .collect();
        let candidates = kinds
            .iter()
            .filter(|(_, k)| !matches!(k, Kind::Parked))
            .count();
        let eligible = kinds.iter().filter(|(_, k)| matches!(k, Kind::Up)).count();
        let fail_open = candidates > 0
            && eligible == 0
            && pool.health_check.as_ref().is_some_and(|hc| hc.fail_open);
        kinds
            .into_iter()
            .map(|(backend, kind)| {
                let key = BackendKey::of(name, backend);
                let (weight, serving) = match kind {
                    Kind::Parked => (0, true),
                    Kind::Up => (
                        self.ramped(&key, backend.weight, pool.slow_start, now),
                        true,
                    ),
                    Kind::Down { .. } if fail_open => (backend.weight * WEIGHT_SCALE, true),
                    Kind::Down { reachable } => (0, reachable),
                };
                Target {
                    address: backend.address,
                    weight,
                    full_weight: backend.weight * WEIGHT_SCALE,
                    serving,
                }
            })
            .collect()
    }

    fn kind(&self, key: &BackendKey, weight: u32) -> Kind {
        let entry = self.entries.get(key);
        if weight == 0 || entry.is_some_and(|e| e.drain_until.is_some()) {
            return Kind::Parked;
        }
        match entry
            .and_then(|e| e.health.as_ref())
            .map(BackendHealth::health)
        {
            Some(Health::Unhealthy { reachable }) => Kind::Down {
                reachable: *reachable,
            },
            _ => Kind::Up,
        }
    }

    /// `weight`, scaled, and ramped if slow start is under way: step `k` (of [`RAMP_STEPS`])
    /// gives `k/RAMP_STEPS` of it, steps beginning at multiples of their length on the wall
    /// clock (the first one at the latest such multiple before the ramp began).
    fn ramped(&self, key: &BackendKey, weight: u32, slow_start: Duration, now: Instant) -> u32 {
        let full = weight * WEIGHT_SCALE;
        let Some(from) = self.entries.get(key).and_then(|e| e.ramp_from) else {
            return full;
        };
        let steps = u128::from(RAMP_STEPS);
        let step_ms = (slow_start.as_millis() / steps).max(1);
        let aligned = from.as_millis() / step_ms * step_ms;
        let elapsed = self.clock.wall(now).as_millis().saturating_sub(aligned);
        if slow_start.is_zero() || elapsed >= step_ms * steps {
            return full;
        }
        // Steps 1..=RAMP_STEPS: a joining backend starts at a tenth of its weight.
        let step = elapsed / step_ms;
        let ramped = (u128::from(full) * (step + 1)).div_ceil(steps);
        u32::try_from(ramped).unwrap_or(full).clamp(1, full)
    }
}

impl Entry {
    fn record(&mut self, state: &'static str, reason: String) {
        *self.transitions.entry(state).or_default() += 1;
        self.last = Some(Change {
            state,
            reason,
            at: SystemTime::now(),
        });
    }
}

/// How a backend takes part in its pool's table.
#[derive(Clone, Copy, Debug)]
enum Kind {
    /// Healthy (or not checked) and active.
    Up,
    /// Failing its health check.
    Down { reachable: bool },
    /// Draining or disabled by the operator.
    Parked,
}

#[cfg(test)]
mod tests {
    use super::*;

    const CONFIG: &str = r#"
[datapath]
interfaces = ["eth0"]
ring_size = 1009
encap_source_v4 = "198.18.255.0/24"

[pools.web]
backends = [{ address = "198.18.1.1" }, { address = "198.18.1.2", weight = 3 }]
slow_start = "10s"

[pools.web.health_check]
interval = "1s"
timeout = "500ms"
healthy_threshold = 2
unhealthy_threshold = 2

[listeners.https]
address = "198.18.100.1"
port = 443
mode = "passthrough"
pool = "web"
"#;

    fn config(text: &str) -> Config {
        Config::parse(text, "test.toml").unwrap()
    }

    /// The configuration `text`, and a runtime that has just taken it up (no slow start).
    fn started(text: &str) -> (Config, Runtime, Instant) {
        let c = config(text);
        let t0 = Instant::now();
        let mut r = aligned_runtime(t0);
        r.sync(&c, t0, false);
        (c, r, t0)
    }

    /// A runtime whose wall clock reads a whole second at `t0` (slow-start steps of the test
    /// configuration begin at whole seconds).
    fn aligned_runtime(t0: Instant) -> Runtime {
        Runtime::with_wall_clock(
            t0,
            SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000),
        )
    }

    fn key(address: &str) -> BackendKey {
        BackendKey {
            pool: "web".to_owned(),
            address: address.parse().unwrap(),
            port: None,
        }
    }

    /// (weight, serving) of each backend of the `https` listener.
    fn targets(runtime: &Runtime, config: &Config, now: Instant) -> Vec<(u32, bool)> {
        runtime.listeners(config, now)[0]
            .targets
            .iter()
            .map(|t| (t.weight, t.serving))
            .collect()
    }

    fn fail(
        runtime: &mut Runtime,
        config: &Config,
        address: &str,
        outcome: &Outcome,
        now: Instant,
    ) {
        for _ in 0..2 {
            runtime.observe(&key(address), outcome, now, &config.pools["web"]);
        }
    }

    #[test]
    fn a_dead_backend_leaves_the_table_and_its_flows_are_placed_afresh() {
        let (c, mut r, t0) = started(CONFIG);
        assert_eq!(targets(&r, &c, t0), [(100, true), (300, true)]);
        let dead = Outcome::Unreachable("connection refused".to_owned());
        r.observe(&key("198.18.1.1"), &dead, t0, &c.pools["web"]);
        assert_eq!(
            targets(&r, &c, t0),
            [(100, true), (300, true)],
            "below the threshold"
        );
        r.observe(&key("198.18.1.1"), &dead, t0, &c.pools["web"]);
        assert_eq!(targets(&r, &c, t0), [(0, false), (300, true)]);
        let (state, change) = r.state_of(&key("198.18.1.1"), 1);
        assert_eq!(state, "unhealthy");
        assert!(change.unwrap().reason.contains("connection refused"));
    }

    #[test]
    fn a_failing_but_reachable_backend_keeps_its_flows() {
        let (c, mut r, t0) = started(CONFIG);
        fail(
            &mut r,
            &c,
            "198.18.1.2",
            &Outcome::Failing("status 503".to_owned()),
            t0,
        );
        assert_eq!(targets(&r, &c, t0), [(100, true), (0, true)]);
    }

    #[test]
    fn when_every_backend_fails_the_pool_fails_open_unless_told_not_to() {
        let (c, mut r, t0) = started(CONFIG);
        let dead = Outcome::Unreachable("refused".to_owned());
        fail(&mut r, &c, "198.18.1.1", &dead, t0);
        fail(&mut r, &c, "198.18.1.2", &dead, t0);
        assert_eq!(targets(&r, &c, t0), [(100, true), (300, true)], "fail open");

        let (closed, mut r, t0) = started(&CONFIG.replace(
            "unhealthy_threshold = 2",
            "unhealthy_threshold = 2\nfail_open = false",
        ));
        fail(&mut r, &closed, "198.18.1.1", &dead, t0);
        fail(&mut r, &closed, "198.18.1.2", &dead, t0);
        assert_eq!(
            targets(&r, &closed, t0),
            [(0, false), (0, false)],
            "fail closed"
        );
    }

    #[test]
    fn a_recovered_backend_ramps_up_over_the_slow_start() {
        let (c, mut r, t0) = started(CONFIG);
        fail(
            &mut r,
            &c,
            "198.18.1.2",
            &Outcome::Unreachable("refused".to_owned()),
            t0,
        );
        let t1 = t0 + Duration::from_secs(5);
        r.observe(&key("198.18.1.2"), &Outcome::Pass, t1, &c.pools["web"]);
        assert_eq!(targets(&r, &c, t1)[1], (0, false), "one pass is not enough");
        r.observe(&key("198.18.1.2"), &Outcome::Pass, t1, &c.pools["web"]);
        assert_eq!(
            targets(&r, &c, t1)[1],
            (30, true),
            "a tenth of 300 at first"
        );
        assert_eq!(
            targets(&r, &c, t1 + Duration::from_millis(5_500))[1],
            (180, true)
        );
        assert_eq!(
            targets(&r, &c, t1 + Duration::from_secs(10))[1],
            (300, true)
        );
    }

    #[test]
    fn a_drain_parks_the_backend_until_it_ends() {
        let (c, mut r, t0) = started(CONFIG);
        assert!(r.drain(
            &key("198.18.1.1"),
            t0 + Duration::from_secs(30),
            "lb backend drain".to_owned()
        ));
        assert_eq!(targets(&r, &c, t0), [(0, true), (300, true)]);
        assert_eq!(r.state_of(&key("198.18.1.1"), 1).0, "draining");
        assert!(r.drains_ended(t0 + Duration::from_secs(29)).is_empty());
        assert_eq!(
            r.drains_ended(t0 + Duration::from_secs(30)),
            [key("198.18.1.1")]
        );
    }

    #[test]
    fn new_backends_ramp_only_when_asked() {
        let c = config(CONFIG);
        let t0 = Instant::now();
        let mut r = aligned_runtime(t0);
        r.sync(&c, t0, true);
        assert_eq!(targets(&r, &c, t0), [(10, true), (30, true)]);
        let mut started = Runtime::default();
        started.sync(&c, t0, false);
        assert_eq!(targets(&started, &c, t0), [(100, true), (300, true)]);
    }

    /// Two balancers (their `Instant`s unrelated, their wall clocks agreeing) see a backend
    /// recover 0.6 s apart within one step of the ramp (1 s): their tables weigh it the same at
    /// every moment. Seen in neighbouring steps, they differ by at most one step.
    #[test]
    fn a_stepped_wall_clock_is_followed() {
        let t0 = Instant::now();
        let mut r = aligned_runtime(t0);
        let wall = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let later = t0 + Duration::from_secs(5);
        assert_eq!(
            r.follow_wall_clock(later, wall + Duration::from_millis(5_004)),
            None,
            "a few milliseconds of drift"
        );
        assert_eq!(
            r.follow_wall_clock(later, wall + Duration::from_secs(65)),
            Some(Duration::from_secs(60))
        );
        assert_eq!(r.clock.wall(later), Duration::from_secs(1_800_000_065));
    }

    #[test]
    fn balancers_that_see_a_recovery_within_one_step_ramp_alike() {
        let c = config(CONFIG);
        let wall = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let (ta, tb) = (Instant::now(), Instant::now() + Duration::from_secs(3600));
        let node = |t0: Instant, recovered_after: Duration| {
            let mut r = Runtime::with_wall_clock(t0, wall);
            r.sync(&c, t0, false);
            let dead = Outcome::Unreachable("refused".to_owned());
            fail(&mut r, &c, "198.18.1.2", &dead, t0);
            fail(
                &mut r,
                &c,
                "198.18.1.2",
                &Outcome::Pass,
                t0 + recovered_after,
            );
            r
        };
        let a = node(ta, Duration::from_millis(5_100));
        let b = node(tb, Duration::from_millis(5_700));
        let late = node(ta, Duration::from_millis(6_050));
        let mut ramping = 0;
        for tenth in 57..170 {
            let at = Duration::from_millis(tenth * 100);
            let (wa, wb) = (targets(&a, &c, ta + at)[1], targets(&b, &c, tb + at)[1]);
            assert_eq!(wa, wb, "{at:?} after the wall clock's reference");
            let wl = targets(&late, &c, ta + at)[1];
            assert!(wa.0.abs_diff(wl.0) <= 30, "{at:?}: {wa:?} and {wl:?}");
            ramping += usize::from(wa.0 < 300);
        }
        assert!(
            ramping >= 40,
            "the ramp was seen: {ramping} samples below full weight"
        );
    }
}
