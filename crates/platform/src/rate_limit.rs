//! Throttling of everything that checks a password or a secret (DESIGN §9): a token bucket per
//! key — an account, a peer address — that failed checks drain and time refills. A caller
//! whose bucket is empty is refused with `RESOURCE_EXHAUSTED` and a `RetryInfo` before anything
//! is checked, so guessing runs at the refill rate whatever the attacker's bandwidth.
//!
//! Only failures cost: a user who types the password right is never slowed down, and one who
//! gets it wrong a few times is not locked out.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use crate::config::{ConfigError, Env};
use crate::ApiError;

/// `burst` failures at once, refilled evenly over `window`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimit {
    pub burst: u32,
    pub window: Duration,
}

impl RateLimit {
    /// `"<burst>/<seconds>s"`, e.g. `10/300s`: ten failures, then one more every 30 s.
    pub fn parse(text: &str) -> Result<RateLimit, String> {
        let bad = || format!("{text:?} is not <failures>/<seconds>s, e.g. 10/300s");
        let (burst, window) = text.trim().split_once('/').ok_or_else(bad)?;
        let burst: u32 = burst.trim().parse().map_err(|_| bad())?;
        let secs: u64 = window
            .trim()
            .strip_suffix('s')
            .ok_or_else(bad)?
            .parse()
            .map_err(|_| bad())?;
        if burst == 0 || secs == 0 {
            return Err(format!("{text:?}: both numbers must be positive"));
        }
        Ok(RateLimit {
            burst,
            window: Duration::from_secs(secs),
        })
    }

    pub fn from_env(env: &Env, var: &str, default: &str) -> Result<RateLimit, ConfigError> {
        let text = env.get(var).unwrap_or_else(|| default.to_string());
        RateLimit::parse(&text).map_err(|reason| ConfigError::invalid(var, &text, reason))
    }

    /// Seconds one token takes to come back.
    fn refill_secs(&self) -> f64 {
        self.window.as_secs_f64() / f64::from(self.burst)
    }
}

struct Bucket {
    tokens: f64,
    updated: Instant,
}

/// Buckets by key, bounded in number: beyond `max_keys`, buckets that have refilled (which
/// hold no information) are dropped first.
pub struct Limiter {
    limit: RateLimit,
    max_keys: usize,
    buckets: Mutex<HashMap<String, Bucket>>,
}

impl Limiter {
    pub fn new(limit: RateLimit, max_keys: usize) -> Limiter {
        Limiter {
            limit,
            max_keys: max_keys.max(1),
            buckets: Mutex::new(HashMap::new()),
        }
    }

    fn refilled(&self, bucket: &Bucket, now: Instant) -> f64 {
        let gained = now.duration_since(bucket.updated).as_secs_f64() / self.limit.refill_secs();
        (bucket.tokens + gained).min(f64::from(self.limit.burst))
    }

    /// `Err(wait)` while `key` has no failure left to spend.
    pub fn check(&self, key: &str) -> Result<(), Duration> {
        let buckets = self.buckets.lock().unwrap_or_else(PoisonError::into_inner);
        let Some(bucket) = buckets.get(key) else {
            return Ok(());
        };
        let tokens = self.refilled(bucket, Instant::now());
        if tokens >= 1.0 {
            Ok(())
        } else {
            Err(Duration::from_secs_f64(
                ((1.0 - tokens) * self.limit.refill_secs()).max(0.001),
            ))
        }
    }

    /// Spends one failure of `key`.
    pub fn charge(&self, key: &str) {
        let now = Instant::now();
        let mut buckets = self.buckets.lock().unwrap_or_else(PoisonError::into_inner);
        if !buckets.contains_key(key) && buckets.len() >= self.max_keys {
            let full = f64::from(self.limit.burst);
            buckets.retain(|_, b| self.refilled(b, now) < full);
            if buckets.len() >= self.max_keys {
                // Still full of live buckets: forget the fullest half rather than grow.
                let mut by_tokens: Vec<(String, f64)> = buckets
                    .iter()
                    .map(|(k, b)| (k.clone(), self.refilled(b, now)))
                    .collect();
                by_tokens.sort_by(|a, b| b.1.total_cmp(&a.1));
                for (k, _) in by_tokens.into_iter().take(self.max_keys / 2 + 1) {
                    buckets.remove(&k);
                }
                tracing::warn!(
                    max_keys = self.max_keys,
                    "rate limiter at capacity; forgot the least throttled keys"
                );
            }
        }
        let tokens = match buckets.get(key) {
            Some(bucket) => self.refilled(bucket, now),
            None => f64::from(self.limit.burst),
        };
        buckets.insert(
            key.to_string(),
            Bucket {
                tokens: (tokens - 1.0).max(0.0),
                updated: now,
            },
        );
    }

    /// Spends `cost` of `key`'s tokens if it has them all, or says how long until it will. A cost
    /// over the burst can never be paid: `Err(Duration::MAX)`.
    pub fn spend(&self, key: &str, cost: u32) -> Result<(), Duration> {
        if cost > self.limit.burst {
            return Err(Duration::MAX);
        }
        let now = Instant::now();
        let mut buckets = self.buckets.lock().unwrap_or_else(PoisonError::into_inner);
        let tokens = match buckets.get(key) {
            Some(bucket) => self.refilled(bucket, now),
            None => f64::from(self.limit.burst),
        };
        let cost = f64::from(cost);
        if tokens < cost {
            return Err(Duration::from_secs_f64(
                ((cost - tokens) * self.limit.refill_secs()).max(0.001),
            ));
        }
        if !buckets.contains_key(key) && buckets.len() >= self.max_keys {
            // Full buckets hold no information: forget them before growing.
            let full = f64::from(self.limit.burst);
            buckets.retain(|_, b| self.refilled(b, now) < full);
        }
        buckets.insert(
            key.to_string(),
            Bucket {
                tokens: tokens - cost,
                updated: now,
            },
        );
        Ok(())
    }

    pub fn len(&self) -> usize {
        self.buckets
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The two limits every credential check goes through: per account and per peer address.
pub struct CredentialThrottle {
    account: Limiter,
    peer: Limiter,
}

/// Keys kept per limiter: a few megabytes at most.
const MAX_KEYS: usize = 100_000;

impl CredentialThrottle {
    pub fn new(per_account: RateLimit, per_peer: RateLimit) -> CredentialThrottle {
        CredentialThrottle {
            account: Limiter::new(per_account, MAX_KEYS),
            peer: Limiter::new(per_peer, MAX_KEYS),
        }
    }

    /// `OPSCONDUCTOR_CREDENTIAL_FAILURES_PER_ACCOUNT` (default `10/300s`) and
    /// `OPSCONDUCTOR_CREDENTIAL_FAILURES_PER_PEER` (default `100/300s`).
    pub fn from_env(env: &Env) -> Result<CredentialThrottle, ConfigError> {
        Ok(CredentialThrottle::new(
            RateLimit::from_env(
                env,
                "OPSCONDUCTOR_CREDENTIAL_FAILURES_PER_ACCOUNT",
                "10/300s",
            )?,
            RateLimit::from_env(env, "OPSCONDUCTOR_CREDENTIAL_FAILURES_PER_PEER", "100/300s")?,
        ))
    }

    /// Refuses a check of `account`'s credentials from `peer` while either has no failure
    /// left to spend.
    pub fn check(&self, account: &str, peer: Option<IpAddr>) -> Result<(), ApiError> {
        let account_wait = self.account.check(&account_key(account)).err();
        let peer_wait = peer.and_then(|p| self.peer.check(&p.to_string()).err());
        match account_wait.into_iter().chain(peer_wait).max() {
            None => Ok(()),
            Some(wait) => Err(ApiError::ResourceExhausted {
                message: "too many failed attempts; try again later".into(),
                retry_after: Duration::from_secs(wait.as_secs() + 1),
            }),
        }
    }

    /// Records a failed check.
    pub fn failed(&self, account: &str, peer: Option<IpAddr>) {
        self.account.charge(&account_key(account));
        if let Some(peer) = peer {
            self.peer.charge(&peer.to_string());
        }
    }
}

/// The address a call came from (the proxy's, behind one).
pub fn peer<T>(request: &tonic::Request<T>) -> Option<IpAddr> {
    request.remote_addr().map(|a| a.ip())
}

/// Accounts are keyed by at most 128 characters: a megabyte of username costs no more memory.
fn account_key(account: &str) -> String {
    account.chars().take(128).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spending_takes_all_of_a_cost_or_nothing_and_refills_over_the_window() {
        let limiter = Limiter::new(RateLimit::parse("10/1000s").unwrap(), 10);
        assert_eq!(limiter.spend("a", 11), Err(Duration::MAX));
        assert_eq!(limiter.spend("a", 6), Ok(()));
        let wait = limiter.spend("a", 6).unwrap_err();
        // Two tokens short, one per 100 s.
        assert!(
            wait > Duration::from_secs(190) && wait <= Duration::from_secs(200),
            "{wait:?}"
        );
        assert_eq!(limiter.spend("a", 4), Ok(()));
        assert!(limiter.spend("a", 1).is_err());
        assert_eq!(limiter.spend("b", 10), Ok(()), "keys are separate");
    }

    #[test]
    fn parses_limits_and_names_the_variable() {
        assert_eq!(
            RateLimit::parse("10/300s").unwrap(),
            RateLimit {
                burst: 10,
                window: Duration::from_secs(300)
            }
        );
        for bad in ["", "10", "10/300", "0/10s", "10/0s", "x/10s"] {
            assert!(RateLimit::parse(bad).is_err(), "{bad}");
        }
        let env = Env::isolated([("OPSCONDUCTOR_CREDENTIAL_FAILURES_PER_PEER", "lots")]);
        let err = CredentialThrottle::from_env(&env).err().unwrap();
        assert_eq!(err.var(), "OPSCONDUCTOR_CREDENTIAL_FAILURES_PER_PEER");
    }

    #[test]
    fn failures_drain_a_bucket_and_time_refills_it() {
        let limiter = Limiter::new(
            RateLimit {
                burst: 3,
                window: Duration::from_millis(300),
            },
            10,
        );
        for _ in 0..3 {
            assert!(limiter.check("a").is_ok());
            limiter.charge("a");
        }
        let wait = limiter.check("a").unwrap_err();
        assert!(wait <= Duration::from_millis(100), "{wait:?}");
        assert!(limiter.check("b").is_ok(), "keys are independent");
        std::thread::sleep(Duration::from_millis(120));
        assert!(limiter.check("a").is_ok(), "one came back");
    }

    #[test]
    fn the_key_count_is_bounded() {
        let limiter = Limiter::new(
            RateLimit {
                burst: 1,
                window: Duration::from_secs(3600),
            },
            100,
        );
        for i in 0..1000 {
            limiter.charge(&format!("k{i}"));
        }
        assert!(limiter.len() <= 100, "{}", limiter.len());
    }

    #[test]
    fn either_limit_refuses_with_retry_advice() {
        let throttle = CredentialThrottle::new(
            RateLimit::parse("2/60s").unwrap(),
            RateLimit::parse("3/60s").unwrap(),
        );
        let peer: IpAddr = [10, 0, 0, 1].into();
        throttle.failed("ada", Some(peer));
        throttle.failed("ada", Some(peer));
        let err = throttle.check("ada", None).unwrap_err();
        assert_eq!(err.code(), tonic::Code::ResourceExhausted);
        assert!(err.retry_after().unwrap() >= Duration::from_secs(1));
        // Another account from the same peer: one failure left there.
        assert!(throttle.check("bob", Some(peer)).is_ok());
        throttle.failed("bob", Some(peer));
        assert!(
            throttle.check("carol", Some(peer)).is_err(),
            "the peer is spent"
        );
        assert!(throttle.check("carol", None).is_ok());
    }
}
