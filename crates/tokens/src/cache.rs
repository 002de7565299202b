//! Verified tokens, keyed by the SHA-256 of the token, kept until they expire. Bounded: when a
//! shard is full, its expired entries go first, then the ones expiring soonest.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use sha2::{Digest, Sha256};

use crate::Claims;

const SHARDS: usize = 16;

/// What a cache entry holds: something that knows when it expires (the claims, or the claims
/// with whatever the verifier learned about the token, such as its key id).
pub trait Expiring: Send + Sync {
    /// Unix seconds.
    fn exp(&self) -> u64;
}

impl Expiring for Claims {
    fn exp(&self) -> u64 {
        self.exp
    }
}

type Shard<V> = Mutex<HashMap<[u8; 32], Arc<V>>>;

pub struct VerifiedCache<V: Expiring = Claims> {
    shards: Vec<Shard<V>>,
    per_shard: usize,
}

impl<V: Expiring> VerifiedCache<V> {
    /// A cache holding about `capacity` tokens.
    pub fn new(capacity: usize) -> VerifiedCache<V> {
        VerifiedCache {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            per_shard: capacity.div_ceil(SHARDS).max(1),
        }
    }

    fn shard(&self, digest: &[u8; 32]) -> &Shard<V> {
        &self.shards[digest[0] as usize % SHARDS]
    }

    /// The claims of `token` if it was verified before and has not expired at `now`.
    pub fn get(&self, token: &str, now: u64) -> Option<Arc<V>> {
        let digest = digest(token);
        let mut shard = self
            .shard(&digest)
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        match shard.get(&digest) {
            Some(entry) if entry.exp() > now => Some(entry.clone()),
            Some(_) => {
                shard.remove(&digest);
                None
            }
            None => None,
        }
    }

    /// Remembers a verified token until its `exp`.
    pub fn insert(&self, token: &str, entry: Arc<V>, now: u64) {
        let digest = digest(token);
        let mut shard = self
            .shard(&digest)
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if shard.len() >= self.per_shard {
            shard.retain(|_, c| c.exp() > now);
        }
        if shard.len() >= self.per_shard {
            // Still full of live tokens: drop the one that would expire first.
            if let Some(oldest) = shard.iter().min_by_key(|(_, c)| c.exp()).map(|(k, _)| *k) {
                shard.remove(&oldest);
            }
        }
        shard.insert(digest, entry);
    }

    /// Forgets one token.
    pub fn remove(&self, token: &str) {
        let digest = digest(token);
        self.shard(&digest)
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&digest);
    }

    /// Drops every cached token whose entry matches (a revocation).
    pub fn revoke(&self, matches: impl Fn(&V) -> bool) -> usize {
        let mut dropped = 0;
        for shard in &self.shards {
            let mut shard = shard.lock().unwrap_or_else(PoisonError::into_inner);
            let before = shard.len();
            shard.retain(|_, c| !matches(c));
            dropped += before - shard.len();
        }
        dropped
    }

    pub fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().unwrap_or_else(PoisonError::into_inner).len())
            .sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Forgets everything (tokens are then verified afresh).
    pub fn clear(&self) {
        for shard in &self.shards {
            shard.lock().unwrap_or_else(PoisonError::into_inner).clear();
        }
    }
}

fn digest(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}
