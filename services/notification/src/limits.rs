//! A rate limit per destination: a token bucket per (channel, destination), so one noisy job
//! cannot flood a Slack channel (Slack allows about one message per second per webhook) or a
//! mailbox. Each replica keeps its own buckets; with N replicas a destination may get up to N
//! times the rate.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

struct Bucket {
    tokens: f64,
    updated: Instant,
}

pub struct RateLimiter {
    /// Tokens per second; 0 turns the limit off.
    rate: f64,
    burst: f64,
    buckets: Mutex<HashMap<String, Bucket>>,
}

/// Buckets kept before full ones are dropped.
const MAX_BUCKETS: usize = 10_000;

impl RateLimiter {
    /// `per_minute` sends per destination and minute (0: no limit), up to `burst` at once.
    pub fn new(per_minute: u32, burst: u32) -> RateLimiter {
        RateLimiter {
            rate: f64::from(per_minute) / 60.0,
            burst: f64::from(burst.max(1)),
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Takes a token for `key`; how long the caller must wait before sending (zero when one
    /// was there). The token is taken either way, so waiters queue up in order.
    pub fn reserve(&self, key: &str) -> Duration {
        if self.rate <= 0.0 {
            return Duration::ZERO;
        }
        let now = Instant::now();
        let Ok(mut buckets) = self.buckets.lock() else {
            return Duration::ZERO;
        };
        if buckets.len() >= MAX_BUCKETS {
            let (rate, burst) = (self.rate, self.burst);
            buckets.retain(|_, b| {
                b.tokens + now.duration_since(b.updated).as_secs_f64() * rate < burst
            });
        }
        let bucket = buckets.entry(key.to_string()).or_insert(Bucket {
            tokens: self.burst,
            updated: now,
        });
        let refill = now.duration_since(bucket.updated).as_secs_f64() * self.rate;
        bucket.tokens = (bucket.tokens + refill).min(self.burst) - 1.0;
        bucket.updated = now;
        if bucket.tokens >= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-bucket.tokens / self.rate)
        }
    }

    /// Gives back a token reserved by a caller that then did not send.
    pub fn refund(&self, key: &str) {
        if let Ok(mut buckets) = self.buckets.lock() {
            if let Some(b) = buckets.get_mut(key) {
                b.tokens = (b.tokens + 1.0).min(self.burst);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_goes_at_once_then_sends_are_spaced_at_the_rate() {
        let limiter = RateLimiter::new(60, 3);
        for _ in 0..3 {
            assert_eq!(limiter.reserve("a"), Duration::ZERO);
        }
        let fourth = limiter.reserve("a");
        let fifth = limiter.reserve("a");
        assert!(fourth > Duration::from_millis(900) && fourth <= Duration::from_secs(1));
        assert!(fifth > Duration::from_millis(1900) && fifth <= Duration::from_secs(2));
        // Another destination has its own bucket.
        assert_eq!(limiter.reserve("b"), Duration::ZERO);
        limiter.refund("a");
        assert!(limiter.reserve("a") <= Duration::from_secs(2));
    }

    #[test]
    fn zero_turns_the_limit_off() {
        let limiter = RateLimiter::new(0, 1);
        for _ in 0..1000 {
            assert_eq!(limiter.reserve("a"), Duration::ZERO);
        }
    }
}
