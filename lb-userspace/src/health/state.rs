//! The health state of one backend: consecutive passes and failures of its checks, against the
//! pool's thresholds, decide whether it is healthy. Pure: the caller passes the time, so the
//! logic is tested with a clock the test controls.
//!
//! A backend starts healthy (so that a daemon restart or a new backend does not take traffic
//! away until a check says so). `unhealthy_threshold` consecutive failures make it unhealthy;
//! `healthy_threshold` consecutive passes make it healthy again. An unhealthy backend is either
//! *unreachable* (its last check could not connect: it is dead, so its established flows are
//! placed afresh) or *failing* (it answers, but wrongly: its established flows stay).

use std::time::Instant;

/// What one check found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    Pass,
    /// Connected, but the answer was wrong (status, TLS, timeout after connecting).
    Failing(String),
    /// Could not connect (refused, unreachable, timed out).
    Unreachable(String),
}

/// Whether a backend takes new flows, and what happens to its established ones.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Health {
    Healthy,
    /// Out of the table; `reachable` says whether its established flows stay.
    Unhealthy {
        reachable: bool,
    },
}

/// A change of [`Health`], with why and when.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Transition {
    pub health: Health,
    pub reason: String,
    pub at: Instant,
}

/// Thresholds of a pool's health check.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Thresholds {
    pub healthy: u32,
    pub unhealthy: u32,
}

/// One backend's health.
#[derive(Clone, Debug)]
pub struct BackendHealth {
    thresholds: Thresholds,
    health: Health,
    passes: u32,
    failures: u32,
    last_change: Option<Transition>,
}

impl BackendHealth {
    pub fn new(thresholds: Thresholds) -> Self {
        Self {
            thresholds,
            health: Health::Healthy,
            passes: 0,
            failures: 0,
            last_change: None,
        }
    }

    pub fn health(&self) -> &Health {
        &self.health
    }

    /// The last change of health, if there was one.
    pub fn last_change(&self) -> Option<&Transition> {
        self.last_change.as_ref()
    }

    /// Counts one check's outcome; returns the transition it caused, if any.
    pub fn observe(&mut self, outcome: &Outcome, now: Instant) -> Option<Transition> {
        match outcome {
            Outcome::Pass => {
                self.failures = 0;
                self.passes = self.passes.saturating_add(1);
                if self.health != Health::Healthy && self.passes >= self.thresholds.healthy {
                    let reason = format!("{} consecutive checks passed", self.passes);
                    return Some(self.change(Health::Healthy, reason, now));
                }
            }
            Outcome::Failing(why) | Outcome::Unreachable(why) => {
                self.passes = 0;
                self.failures = self.failures.saturating_add(1);
                let reachable = matches!(outcome, Outcome::Failing(_));
                let next = Health::Unhealthy { reachable };
                let crossed = self.failures >= self.thresholds.unhealthy;
                // Once unhealthy, a dead backend that comes back failing (or the reverse)
                // changes kind at once: the policy for its established flows follows.
                if crossed && self.health != next {
                    let reason = format!("{} consecutive checks failed: {why}", self.failures);
                    return Some(self.change(next, reason, now));
                }
            }
        }
        None
    }

    fn change(&mut self, health: Health, reason: String, at: Instant) -> Transition {
        self.health = health.clone();
        let transition = Transition { health, reason, at };
        self.last_change = Some(transition.clone());
        transition
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    const THRESHOLDS: Thresholds = Thresholds {
        healthy: 3,
        unhealthy: 2,
    };

    fn fail() -> Outcome {
        Outcome::Unreachable("connection refused".to_owned())
    }

    #[test]
    fn it_takes_the_threshold_of_failures_to_become_unhealthy() {
        let t0 = Instant::now();
        let mut b = BackendHealth::new(THRESHOLDS);
        assert_eq!(b.observe(&fail(), t0), None, "one failure is not enough");
        let change = b
            .observe(&fail(), t0 + Duration::from_secs(5))
            .expect("the second is");
        assert_eq!(change.health, Health::Unhealthy { reachable: false });
        assert!(
            change
                .reason
                .contains("2 consecutive checks failed: connection refused")
        );
        assert_eq!(b.observe(&fail(), t0), None, "no repeated transition");
    }

    #[test]
    fn a_pass_in_between_resets_the_count() {
        let t0 = Instant::now();
        let mut b = BackendHealth::new(THRESHOLDS);
        assert_eq!(b.observe(&fail(), t0), None);
        assert_eq!(b.observe(&Outcome::Pass, t0), None);
        assert_eq!(b.observe(&fail(), t0), None);
        assert_eq!(*b.health(), Health::Healthy);
    }

    #[test]
    fn it_takes_the_healthy_threshold_to_return() {
        let t0 = Instant::now();
        let mut b = BackendHealth::new(THRESHOLDS);
        b.observe(&fail(), t0);
        b.observe(&fail(), t0);
        assert_eq!(b.observe(&Outcome::Pass, t0), None);
        assert_eq!(b.observe(&Outcome::Pass, t0), None);
        let back = b
            .observe(&Outcome::Pass, t0 + Duration::from_secs(9))
            .expect("healthy");
        assert_eq!(back.health, Health::Healthy);
        assert_eq!(
            b.last_change().map(|c| c.at),
            Some(t0 + Duration::from_secs(9))
        );
    }

    #[test]
    fn failing_and_unreachable_are_told_apart() {
        let t0 = Instant::now();
        let mut b = BackendHealth::new(THRESHOLDS);
        let failing = Outcome::Failing("status 503".to_owned());
        b.observe(&failing, t0);
        let change = b.observe(&failing, t0).expect("unhealthy");
        assert_eq!(change.health, Health::Unhealthy { reachable: true });
        let change = b.observe(&fail(), t0).expect("now dead");
        assert_eq!(change.health, Health::Unhealthy { reachable: false });
    }
}
