//! A circuit breaker per upstream replica: after `failures` calls in a row fail as
//! unavailable, the replica is skipped for a while (open), then one probe call is let through
//! (half-open): its success closes the breaker, its failure opens it again for longer.
//!
//! A small state machine rather than a crate: the states are three, the clock is injected so
//! every transition is tested without sleeping, and the state is read by the balancer (skip an
//! open replica) and the metrics.

use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

/// When a breaker opens and for how long.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BreakerSettings {
    /// Consecutive failures that open it.
    pub failures: u32,
    /// How long it stays open the first time; doubled on each failed probe.
    pub open_for: Duration,
    /// The longest it stays open.
    pub max_open_for: Duration,
}

impl Default for BreakerSettings {
    fn default() -> Self {
        BreakerSettings {
            failures: 5,
            open_for: Duration::from_secs(1),
            max_open_for: Duration::from_secs(30),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerState {
    Closed,
    Open,
    HalfOpen,
}

#[derive(Debug)]
enum State {
    Closed {
        failures: u32,
    },
    Open {
        until: Instant,
        open_for: Duration,
    },
    /// One probe is out; the others wait for its outcome (they are refused).
    HalfOpen {
        open_for: Duration,
    },
}

/// What the breaker says about a call about to be made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    Admit,
    /// Refused: the replica is open for this much longer.
    Refuse(Duration),
}

#[derive(Debug)]
pub struct Breaker {
    settings: BreakerSettings,
    state: Mutex<State>,
}

impl Breaker {
    pub fn new(settings: BreakerSettings) -> Breaker {
        Breaker {
            settings,
            state: Mutex::new(State::Closed { failures: 0 }),
        }
    }

    pub fn state(&self) -> BreakerState {
        match *self.lock() {
            State::Closed { .. } => BreakerState::Closed,
            State::Open { .. } => BreakerState::Open,
            State::HalfOpen { .. } => BreakerState::HalfOpen,
        }
    }

    /// Whether a call may go to this replica now; an open breaker whose time is up lets this
    /// call through as its probe.
    pub fn admit(&self, now: Instant) -> Admission {
        let mut state = self.lock();
        match *state {
            State::Closed { .. } => Admission::Admit,
            State::HalfOpen { open_for } => {
                Admission::Refuse(open_for.min(Duration::from_millis(100)))
            }
            State::Open { until, open_for } => {
                if now >= until {
                    tracing::info!("circuit breaker half-open: probing the replica");
                    *state = State::HalfOpen { open_for };
                    Admission::Admit
                } else {
                    Admission::Refuse(until - now)
                }
            }
        }
    }

    /// The outcome of an admitted call: `failed` when the replica was unavailable.
    pub fn record(&self, failed: bool, now: Instant) {
        let mut state = self.lock();
        let next = match (&*state, failed) {
            (State::Closed { .. }, false) => State::Closed { failures: 0 },
            (State::Closed { failures }, true) if failures + 1 >= self.settings.failures => {
                tracing::warn!(
                    failures = failures + 1,
                    "circuit breaker open: replica skipped"
                );
                self.open(now, self.settings.open_for)
            }
            (State::Closed { failures }, true) => State::Closed {
                failures: failures + 1,
            },
            (State::HalfOpen { .. }, false) => {
                tracing::info!("circuit breaker closed: the probe succeeded");
                State::Closed { failures: 0 }
            }
            (State::HalfOpen { open_for }, true) => {
                let longer = (*open_for * 2).min(self.settings.max_open_for);
                tracing::warn!(
                    open_ms = longer.as_millis() as u64,
                    "circuit breaker open again: the probe failed"
                );
                self.open(now, longer)
            }
            // A call admitted before the breaker opened: its outcome changes nothing.
            (State::Open { until, open_for }, _) => State::Open {
                until: *until,
                open_for: *open_for,
            },
        };
        *state = next;
    }

    fn open(&self, now: Instant, open_for: Duration) -> State {
        State::Open {
            until: now + open_for,
            open_for,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn breaker() -> Breaker {
        Breaker::new(BreakerSettings {
            failures: 3,
            open_for: Duration::from_secs(1),
            max_open_for: Duration::from_secs(3),
        })
    }

    #[test]
    fn opens_after_consecutive_failures_only() {
        let b = breaker();
        let t = Instant::now();
        b.record(true, t);
        b.record(true, t);
        b.record(false, t);
        b.record(true, t);
        b.record(true, t);
        assert_eq!(b.state(), BreakerState::Closed);
        b.record(true, t);
        assert_eq!(b.state(), BreakerState::Open);
        assert_eq!(
            b.admit(t + Duration::from_millis(400)),
            Admission::Refuse(Duration::from_millis(600))
        );
    }

    #[test]
    fn half_opens_with_one_probe_and_closes_on_its_success() {
        let b = breaker();
        let t = Instant::now();
        for _ in 0..3 {
            b.record(true, t);
        }
        let later = t + Duration::from_secs(1);
        assert_eq!(b.admit(later), Admission::Admit);
        assert_eq!(b.state(), BreakerState::HalfOpen);
        // Others wait while the probe is out.
        assert!(matches!(b.admit(later), Admission::Refuse(_)));
        b.record(false, later);
        assert_eq!(b.state(), BreakerState::Closed);
        assert_eq!(b.admit(later), Admission::Admit);
    }

    #[test]
    fn a_failed_probe_opens_it_for_longer_up_to_the_bound() {
        let b = breaker();
        let mut t = Instant::now();
        for _ in 0..3 {
            b.record(true, t);
        }
        for expected in [2, 3, 3] {
            t += Duration::from_secs(5);
            assert_eq!(b.admit(t), Admission::Admit);
            b.record(true, t);
            assert_eq!(b.admit(t), Admission::Refuse(Duration::from_secs(expected)));
        }
    }
}
