//! Which backend an L7 request goes to. The controller publishes each pool's members with
//! their health as [`Member`]s; a listener turns them into a [`BackendSet`] (swapped whole,
//! read without locks) whose [`Upstream`]s outlive the swap, so that requests in flight and
//! pooled connections carry over.
//!
//! - **Round robin**: a smooth weighted order of the backends that take new requests
//!   (nginx's algorithm, computed once per set), walked by one shared counter.
//! - **Least outstanding requests**: the backend with the fewest requests in flight for its
//!   weight; among equals, the one round robin would pick, so that idle backends (all at zero)
//!   are taken in weighted turn rather than always the first; if that one is busier, the
//!   equals take turns (a busy backend's turns do not all go to the one after it).
//! - **Sticky sessions**: a cookie's backend is honoured while it is a member that honours
//!   sessions (healthy, draining or disabled; not unhealthy, unless the pool fails open);
//!   otherwise the session is placed by rendezvous hashing over the backends that take new
//!   requests, weighted by their configured weights, so every balancer re-pins it alike.
//! - **Passive health** (outlier detection, as Envoy's): a backend that failed
//!   `outlier_failures` requests in a row (refused or timed-out connections, failed TLS,
//!   resets mid-request, no response in time) is left out of new requests and sessions for
//!   `outlier_ejection`, twice that after a second ejection in a row, up to ten times; its
//!   first success ends the count. If every backend that takes requests is ejected, the
//!   ejections are ignored (failing open, rather than answering 503 to everyone).

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use rustls_pki_types::ServerName;

use super::{
    sticky::{self, BackendId, SessionId},
    upstream::ConnPool,
};
use crate::config::{BackendConfig, ListenerConfig, l7::Balance};

/// A pool member as the controller sees it now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Member {
    pub backend: BackendConfig,
    /// Its share of new requests now: 0 when it takes none (unhealthy, draining, disabled),
    /// ramping up during slow start.
    pub weight: u32,
    /// Whether requests of sessions pinned to it still go to it.
    pub sticky: bool,
}

/// A backend of one listener: where it is, what it must prove (bridging), and its requests in
/// flight and idle connections.
#[derive(Debug)]
pub struct Upstream {
    pub address: SocketAddr,
    pub id: BackendId,
    /// Bridging: the name its certificate must hold.
    pub server_name: Option<ServerName<'static>>,
    outstanding: AtomicU32,
    pub conns: ConnPool,
    /// Requests failed in a row (passive health).
    failures: AtomicU32,
    /// Ejections in a row: each doubles the next (up to [`MAX_EJECTION_FACTOR`]).
    ejections: AtomicU32,
    /// Milliseconds since [`Upstream::epoch`] until which it is ejected; 0: not ejected.
    ejected_until: AtomicU64,
    epoch: Instant,
}

/// An ejection lasts at most this many times `outlier_ejection`.
const MAX_EJECTION_FACTOR: u32 = 10;

/// How a listener judges its backends by their requests.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OutlierPolicy {
    /// Failures in a row that eject; 0: never.
    pub failures: u32,
    /// The first ejection's length.
    pub ejection: Duration,
}

impl Upstream {
    pub fn new(address: SocketAddr, server_name: Option<ServerName<'static>>) -> Self {
        Self {
            address,
            id: sticky::backend_id(address),
            server_name,
            outstanding: AtomicU32::new(0),
            conns: ConnPool::default(),
            failures: AtomicU32::new(0),
            ejections: AtomicU32::new(0),
            ejected_until: AtomicU64::new(0),
            epoch: Instant::now(),
        }
    }

    fn millis(&self, at: Instant) -> u64 {
        u64::try_from(at.saturating_duration_since(self.epoch).as_millis()).unwrap_or(u64::MAX)
    }

    /// Whether passive health leaves it out of new requests now.
    pub fn is_ejected(&self) -> bool {
        let until = self.ejected_until.load(Ordering::Relaxed);
        until != 0 && self.millis(Instant::now()) < until
    }

    /// How long it stays ejected, if it is.
    pub fn ejected_for(&self) -> Option<Duration> {
        let until = self.ejected_until.load(Ordering::Relaxed);
        let now = self.millis(Instant::now());
        (until != 0 && now < until).then(|| Duration::from_millis(until - now))
    }

    /// A request got its response head: the run of failures ends.
    pub fn succeeded(&self) {
        if self.failures.load(Ordering::Relaxed) != 0 {
            self.failures.store(0, Ordering::Relaxed);
        }
        if self.ejections.load(Ordering::Relaxed) != 0 && !self.is_ejected() {
            self.ejections.store(0, Ordering::Relaxed);
        }
    }

    /// A request failed on it; returns how long it is now ejected for, if this failure
    /// ejected it.
    pub fn failed(&self, policy: OutlierPolicy) -> Option<Duration> {
        if policy.failures == 0 {
            return None;
        }
        let failures = self.failures.fetch_add(1, Ordering::Relaxed) + 1;
        if failures < policy.failures || self.is_ejected() {
            return None;
        }
        self.failures.store(0, Ordering::Relaxed);
        let ejections = self.ejections.fetch_add(1, Ordering::Relaxed);
        let factor = 1u32 << ejections.min(4);
        let length = policy.ejection * factor.min(MAX_EJECTION_FACTOR);
        let until = self.millis(Instant::now() + length).max(1);
        self.ejected_until.store(until, Ordering::Relaxed);
        Some(length)
    }

    /// Counts a request in flight until the guard drops.
    pub fn begin(self: &Arc<Self>) -> Outstanding {
        self.outstanding.fetch_add(1, Ordering::Relaxed);
        Outstanding(Arc::clone(self))
    }

    pub fn outstanding(&self) -> u32 {
        self.outstanding.load(Ordering::Relaxed)
    }
}

/// A request in flight on an [`Upstream`].
#[derive(Debug)]
pub struct Outstanding(Arc<Upstream>);

impl Outstanding {
    pub fn upstream(&self) -> &Arc<Upstream> {
        &self.0
    }
}

impl Drop for Outstanding {
    fn drop(&mut self) {
        self.0.outstanding.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A listener's backends as of the last update.
#[derive(Debug, Default)]
pub struct BackendSet {
    members: Vec<Arc<Upstream>>,
    /// Members whose sessions stay with them, by id: their index, and whether they take new
    /// users too (a weight above 0; not draining or disabled).
    sticky: HashMap<BackendId, (usize, bool)>,
    /// Members that take new requests: (index, weight now, configured weight).
    eligible: Vec<(usize, u32, u32)>,
    /// Positions in `eligible`, in smooth weighted round-robin order.
    schedule: Vec<u32>,
    /// This pool's round-robin position (carried over from the set it replaces): each pool
    /// of a listener keeps its own, so that one pool's requests never skew another's turns.
    turn: AtomicUsize,
}

/// A listener's pools (its own and its rules'), by name, each as of the last update.
#[derive(Debug, Default)]
pub struct Pools(std::collections::BTreeMap<String, Arc<BackendSet>>);

impl Pools {
    pub fn new(sets: std::collections::BTreeMap<String, Arc<BackendSet>>) -> Self {
        Self(sets)
    }

    pub fn get(&self, name: &str) -> Option<&Arc<BackendSet>> {
        self.0.get(name)
    }

    /// Every member of every pool.
    pub fn members(&self) -> impl Iterator<Item = &Arc<Upstream>> {
        self.0.values().flat_map(|set| set.members())
    }
}

/// Round-robin schedules are at most this long; larger weight sums are scaled down.
const MAX_SCHEDULE: u64 = 4096;

impl BackendSet {
    /// The set for `listener` from its pool's `members`, reusing the upstreams of `previous`
    /// that are still members (same address and name).
    pub fn build(
        listener: &ListenerConfig,
        listener_server_name: Option<&str>,
        members: &[Member],
        previous: &BackendSet,
    ) -> Self {
        let bridging = listener
            .l7
            .as_ref()
            .is_some_and(|l7| l7.backend.tls.is_some());
        let old: HashMap<SocketAddr, &Arc<Upstream>> =
            previous.members.iter().map(|u| (u.address, u)).collect();
        let mut set = BackendSet {
            turn: AtomicUsize::new(previous.turn.load(Ordering::Relaxed)),
            ..BackendSet::default()
        };
        for member in members {
            let address = SocketAddr::new(
                member.backend.address,
                listener.backend_port(&member.backend),
            );
            let server_name = bridging.then(|| {
                super::tls::backend_server_name(
                    member.backend.server_name.as_deref(),
                    listener_server_name,
                    member.backend.address,
                )
            });
            let upstream = match old.get(&address) {
                Some(u) if u.server_name == server_name => Arc::clone(u),
                _ => Arc::new(Upstream::new(address, server_name)),
            };
            let index = set.members.len();
            if member.sticky || member.weight > 0 {
                set.sticky.insert(upstream.id, (index, member.weight > 0));
            }
            if member.weight > 0 {
                set.eligible
                    .push((index, member.weight, member.backend.weight.max(1)));
            }
            set.members.push(upstream);
        }
        set.schedule = schedule(&set.eligible.iter().map(|e| e.1).collect::<Vec<_>>());
        set
    }

    /// Whether no member takes new requests.
    pub fn is_empty(&self) -> bool {
        self.eligible.is_empty()
    }

    /// A backend for a new request, by `balance`, other than `exclude`, in this pool's turn.
    pub fn next(&self, balance: Balance, exclude: Option<&Arc<Upstream>>) -> Option<Arc<Upstream>> {
        self.pick(balance, &self.turn, exclude)
    }

    /// The backend [`BackendSet::next`] would give now, the turn left as it is.
    pub fn peek(&self, balance: Balance) -> Option<Arc<Upstream>> {
        self.pick(
            balance,
            &AtomicUsize::new(self.turn.load(Ordering::Relaxed)),
            None,
        )
    }

    /// Whether a session pinned to `id` belongs to this pool (its backend is a member that
    /// keeps sessions, whether or not passive health has ejected it now).
    pub fn knows(&self, id: BackendId) -> bool {
        self.sticky.contains_key(&id)
    }

    /// Every member.
    pub fn members(&self) -> &[Arc<Upstream>] {
        &self.members
    }

    /// A backend for a new request, by `balance`, other than `exclude`; `turn` is the
    /// listener's round-robin counter.
    pub fn pick(
        &self,
        balance: Balance,
        turn: &AtomicUsize,
        exclude: Option<&Arc<Upstream>>,
    ) -> Option<Arc<Upstream>> {
        if self.schedule.is_empty() {
            return None;
        }
        let ejected = self.ejected();
        let excluded =
            |i: usize| exclude.is_some_and(|e| Arc::ptr_eq(e, &self.members[i])) || ejected(i);
        let n = self.schedule.len();
        let turn = turn.fetch_add(1, Ordering::Relaxed);
        let start = turn % n;
        let first = self.schedule[start] as usize;
        match balance {
            Balance::RoundRobin => (0..n)
                .map(|k| self.eligible[self.schedule[(start + k) % n] as usize].0)
                .find(|&i| !excluded(i)),
            Balance::LeastOutstanding => {
                let in_turn = self.eligible[first].0;
                if !excluded(in_turn) && self.members[in_turn].outstanding() == 0 {
                    // None has less than nothing in flight: the backend in turn is among the
                    // least loaded, found without looking at the others (in a large pool
                    // under light load, nearly every pick).
                    Some(in_turn)
                } else {
                    self.least_loaded(in_turn, turn / n, &excluded)
                }
            }
        }
        .map(|i| Arc::clone(&self.members[i]))
    }

    /// Among the members with the least load for their weight (not `excluded`): `in_turn` if
    /// it is one, else the `lap`-th of them in turn (modulo their number), so that a busy
    /// backend's turns are shared by the others. Two passes over the members and no
    /// allocation: the first finds the least load and how many have it, the second the one to
    /// take (loads that change meanwhile give another of the least loaded, or the first).
    fn least_loaded(
        &self,
        in_turn: usize,
        lap: usize,
        excluded: &impl Fn(usize) -> bool,
    ) -> Option<usize> {
        // (load, weight, member) of the first of the least loaded, and how many there are.
        let mut best: Option<(u64, u64, usize)> = None;
        let mut ties = 0usize;
        let mut in_turn_is_least = false;
        for &(i, weight, _) in &self.eligible {
            if excluded(i) {
                continue;
            }
            let load = u64::from(self.members[i].outstanding());
            let weight = u64::from(weight);
            // load / weight against the best's, without dividing.
            match best.map(|(l, w, _)| (load * w).cmp(&(l * weight))) {
                Some(std::cmp::Ordering::Greater) => continue,
                Some(std::cmp::Ordering::Equal) => ties += 1,
                None | Some(std::cmp::Ordering::Less) => {
                    best = Some((load, weight, i));
                    ties = 1;
                    in_turn_is_least = false;
                }
            }
            in_turn_is_least |= i == in_turn;
        }
        let (least, least_weight, first) = best?;
        if in_turn_is_least {
            return Some(in_turn);
        }
        let wanted = lap % ties;
        self.eligible
            .iter()
            .filter(|&&(i, weight, _)| {
                !excluded(i)
                    && u64::from(self.members[i].outstanding()) * least_weight
                        <= least * u64::from(weight)
            })
            .map(|&(i, ..)| i)
            .nth(wanted)
            .or(Some(first))
    }

    /// Whether passive health leaves member `i` out now: ejected, and not every member that
    /// takes requests is (then none is left out).
    fn ejected(&self) -> impl Fn(usize) -> bool + '_ {
        // Whether every member that takes requests is ejected: looked at (once) only when a
        // member asked about is, so a pool with none ejected pays one load per member asked.
        let all = std::cell::OnceCell::new();
        move |i| {
            self.members[i].is_ejected()
                && !*all.get_or_init(|| {
                    !self.eligible.is_empty()
                        && self
                            .eligible
                            .iter()
                            .all(|&(i, ..)| self.members[i].is_ejected())
                })
        }
    }

    /// The backend of a session pinned to `id`, if its sessions still go to it (not while
    /// passive health has ejected it).
    pub fn pinned(&self, id: BackendId) -> Option<Arc<Upstream>> {
        let &(i, _) = self.sticky.get(&id)?;
        (!self.ejected()(i)).then(|| Arc::clone(&self.members[i]))
    }

    /// Whether the member `id` takes new users as well as its sessions: not a draining or
    /// disabled one (weight 0), whose sessions stay but should end in their time.
    pub fn takes_new_users(&self, id: BackendId) -> bool {
        self.sticky.get(&id).is_some_and(|&(_, open)| open)
    }

    /// Where `session` goes when its backend cannot take it: the same backend on every
    /// balancer with this configuration and health.
    pub fn rendezvous(&self, session: &SessionId) -> Option<Arc<Upstream>> {
        self.rendezvous_except(session, None)
    }

    /// [`BackendSet::rendezvous`] among the backends other than `exclude` (one that just
    /// failed the session's request).
    pub fn rendezvous_except(
        &self,
        session: &SessionId,
        exclude: Option<&Arc<Upstream>>,
    ) -> Option<Arc<Upstream>> {
        let ejected = self.ejected();
        let id = sticky::rendezvous(
            session,
            self.eligible
                .iter()
                .filter(|&&(i, ..)| {
                    !ejected(i) && !exclude.is_some_and(|e| Arc::ptr_eq(e, &self.members[i]))
                })
                .map(|&(i, _, configured)| (self.members[i].id, configured)),
        )?;
        self.eligible
            .iter()
            .map(|&(i, ..)| &self.members[i])
            .find(|u| u.id == id)
            .cloned()
    }
}

/// Smooth weighted round robin over `weights` (indexes into them), scaled down to at most
/// [`MAX_SCHEDULE`] entries; each weight keeps at least one.
fn schedule(weights: &[u32]) -> Vec<u32> {
    let total: u64 = weights.iter().map(|&w| u64::from(w)).sum();
    if total == 0 {
        return Vec::new();
    }
    let divisor = weights.iter().fold(0u64, |g, &w| gcd(g, u64::from(w)));
    let scaled: Vec<u64> = weights
        .iter()
        .map(|&w| {
            let w = u64::from(w) / divisor;
            let total = total / divisor;
            if total <= MAX_SCHEDULE {
                w
            } else {
                (w * MAX_SCHEDULE / total).max(1)
            }
        })
        .collect();
    let length: u64 = scaled.iter().sum();
    let sum = i64::try_from(length).unwrap_or(i64::MAX);
    let mut current = vec![0i64; scaled.len()];
    let mut order = Vec::with_capacity(usize::try_from(length).unwrap_or(0));
    for _ in 0..length {
        let mut best = 0;
        for (i, &w) in scaled.iter().enumerate() {
            current[i] += i64::try_from(w).unwrap_or(i64::MAX);
            if current[i] > current[best] {
                best = i;
            }
        }
        current[best] -= sum;
        order.push(u32::try_from(best).unwrap_or(0));
    }
    order
}

fn gcd(a: u64, b: u64) -> u64 {
    if b == 0 { a } else { gcd(b, a % b) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    const CONFIG: &str = r#"
[pools.app]
backends = [
  { address = "198.18.1.1", port = 8080 },
  { address = "198.18.1.2", port = 8080 },
  { address = "198.18.1.3", port = 8080 },
]

[listeners.web]
address = "198.18.100.1"
port = 443
mode = "offload"
pool = "app"

[listeners.web.tls]
certificates = [{ cert = "c.pem", key = "k.pem" }]
"#;

    fn listener() -> ListenerConfig {
        Config::parse(CONFIG, "test.toml").unwrap().listeners["web"].clone()
    }

    fn members(weights: &[(u32, bool)]) -> Vec<Member> {
        weights
            .iter()
            .enumerate()
            .map(|(i, &(weight, sticky))| Member {
                backend: BackendConfig {
                    address: format!("198.18.1.{}", i + 1).parse().unwrap(),
                    port: Some(8080),
                    weight: 1,
                    server_name: None,
                },
                weight,
                sticky,
            })
            .collect()
    }

    fn counts(set: &BackendSet, balance: Balance, picks: usize) -> Vec<usize> {
        let turn = AtomicUsize::new(0);
        let mut counts = vec![0; set.members().len()];
        for _ in 0..picks {
            let u = set.pick(balance, &turn, None).unwrap();
            counts[set
                .members()
                .iter()
                .position(|m| Arc::ptr_eq(m, &u))
                .unwrap()] += 1;
        }
        counts
    }

    #[test]
    fn round_robin_follows_the_weights_smoothly() {
        let set = BackendSet::build(
            &listener(),
            None,
            &members(&[(100, true), (200, true), (300, true)]),
            &BackendSet::default(),
        );
        assert_eq!(set.schedule, [2, 1, 0, 2, 1, 2]);
        assert_eq!(counts(&set, Balance::RoundRobin, 600), [100, 200, 300]);
    }

    #[test]
    fn idle_least_outstanding_takes_turns_by_weight_and_busy_backends_are_avoided() {
        let set = BackendSet::build(
            &listener(),
            None,
            &members(&[(100, true), (100, true), (200, true)]),
            &BackendSet::default(),
        );
        assert_eq!(
            counts(&set, Balance::LeastOutstanding, 400),
            [100, 100, 200]
        );
        let busy: Vec<Outstanding> = (0..5).map(|_| set.members()[2].begin()).collect();
        let one = set.members()[0].begin();
        let turn = AtomicUsize::new(0);
        for _ in 0..10 {
            let u = set.pick(Balance::LeastOutstanding, &turn, None).unwrap();
            assert!(Arc::ptr_eq(&u, &set.members()[1]), "the idle one");
        }
        drop((busy, one));
        assert_eq!(set.members()[2].outstanding(), 0);
    }

    /// The least-outstanding pick as one scan that collects every least loaded member (what
    /// `pick` computed before its shortcut and two passes), for the comparison below.
    fn least_outstanding_by_one_scan(
        set: &BackendSet,
        turn: usize,
        exclude: Option<usize>,
    ) -> Option<usize> {
        let n = set.schedule.len();
        let first = set.schedule[turn % n] as usize;
        let mut best: Option<(u64, u64)> = None;
        let mut least = Vec::new();
        for &(i, weight, _) in &set.eligible {
            if exclude == Some(i) {
                continue;
            }
            let load = u64::from(set.members[i].outstanding());
            let weight = u64::from(weight);
            match best.map(|(l, w)| (load * w).cmp(&(l * weight))) {
                Some(std::cmp::Ordering::Greater) => continue,
                Some(std::cmp::Ordering::Equal) => {}
                None | Some(std::cmp::Ordering::Less) => {
                    best = Some((load, weight));
                    least.clear();
                }
            }
            least.push(i);
        }
        let in_turn = set.eligible[first].0;
        if least.contains(&in_turn) {
            Some(in_turn)
        } else if least.is_empty() {
            None
        } else {
            Some(least[(turn / n) % least.len()])
        }
    }

    #[test]
    fn least_outstanding_picks_as_one_scan_of_every_member_would() {
        let weights = [
            (100, true),
            (200, true),
            (100, true),
            (300, true),
            (100, true),
        ];
        let set = BackendSet::build(
            &listener(),
            None,
            &members(&weights),
            &BackendSet::default(),
        );
        // Loads from a fixed pseudo-random sequence: many ties, busy and idle members.
        let mut state = 0x9e37_79b9_u32;
        let mut held = Vec::new();
        for step in 0..2_000 {
            state ^= state << 13;
            state ^= state >> 17;
            state ^= state << 5;
            if state.is_multiple_of(3) && !held.is_empty() {
                held.swap_remove(state as usize % held.len());
            } else {
                let member = &set.members()[state as usize % weights.len()];
                held.push(member.begin());
            }
            // Every third pick leaves one member out, as a retry leaves out the one it tried.
            let exclude = (step % 3 == 0).then_some(state as usize % weights.len());
            let turn = AtomicUsize::new(step);
            let excluded = exclude.map(|i| &set.members()[i]);
            let picked = set.pick(Balance::LeastOutstanding, &turn, excluded);
            let expected = least_outstanding_by_one_scan(&set, step, exclude);
            assert_eq!(
                picked.map(|u| set.members().iter().position(|m| Arc::ptr_eq(m, &u))),
                expected.map(Some),
                "step {step}"
            );
        }
    }

    #[test]
    fn a_busy_backends_turns_are_shared_by_the_others() {
        let set = BackendSet::build(
            &listener(),
            None,
            &members(&[(100, true); 3]),
            &BackendSet::default(),
        );
        let busy = set.members()[0].begin();
        assert_eq!(counts(&set, Balance::LeastOutstanding, 600), [0, 300, 300]);
        drop(busy);
    }

    #[test]
    fn excluded_and_weightless_backends_are_not_picked() {
        let set = BackendSet::build(
            &listener(),
            None,
            &members(&[(0, true), (100, true), (0, false)]),
            &BackendSet::default(),
        );
        let turn = AtomicUsize::new(0);
        let only = set.pick(Balance::RoundRobin, &turn, None).unwrap();
        assert_eq!(only.address.to_string(), "198.18.1.2:8080");
        assert!(set.pick(Balance::RoundRobin, &turn, Some(&only)).is_none());
        assert!(
            set.pick(Balance::LeastOutstanding, &turn, Some(&only))
                .is_none()
        );
        assert!(
            set.pinned(set.members()[0].id).is_some(),
            "draining: sessions stay"
        );
        assert!(
            set.pinned(set.members()[2].id).is_none(),
            "unhealthy: they move"
        );
        let empty = BackendSet::build(&listener(), None, &[], &BackendSet::default());
        assert!(empty.pick(Balance::LeastOutstanding, &turn, None).is_none());
    }

    #[test]
    fn upstreams_outlive_an_update_and_sessions_re_pin_alike() {
        let l = listener();
        let first = BackendSet::build(
            &l,
            None,
            &members(&[(100, true); 3]),
            &BackendSet::default(),
        );
        let held = first.members()[1].begin();
        let second = BackendSet::build(&l, None, &members(&[(100, true); 3]), &first);
        assert_eq!(second.members()[1].outstanding(), 1, "the same upstream");
        drop(held);

        let session = SessionId([7; 16]);
        let a = second.rendezvous(&session).unwrap();
        let again = BackendSet::build(
            &l,
            None,
            &members(&[(100, true); 3]),
            &BackendSet::default(),
        );
        assert_eq!(
            again.rendezvous(&session).unwrap().id,
            a.id,
            "any instance agrees"
        );
    }
}
