//! Tokens revoked before they expire: a user's tokens below a token version (revoke-all), a
//! session's tokens (logout, refresh-token reuse), a key's tokens (a retired key). Each entry
//! is kept as long as a token issued before it could still be alive, then forgotten.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{PoisonError, RwLock};
use std::time::Duration;

use opsconductor_api::auth::v1::TokenRevoked;
use opsconductor_tokens::Kind;

use super::verifier::Verified;

#[derive(Default)]
struct State {
    /// user → (lowest accepted token version, forget at)
    versions: HashMap<String, (u64, u64)>,
    /// session → forget at
    sessions: HashMap<String, u64>,
    /// key id → forget at
    kids: HashMap<String, u64>,
}

/// How far a revocation's time may be ahead of this server's clock.
pub const CLOCK_SKEW: Duration = Duration::from_secs(60);

pub struct Revocations {
    state: RwLock<State>,
    /// Bumped by every change: a verification that started before a revocation must not put
    /// its (now revoked) token into the cache after the cache was purged.
    epoch: AtomicU64,
    keep: Duration,
}

impl Revocations {
    /// Remembers each revocation for `max_token_lifetime` plus a margin for clock skew.
    pub fn new(max_token_lifetime: Duration) -> Revocations {
        Revocations {
            state: RwLock::new(State::default()),
            epoch: AtomicU64::new(0),
            keep: max_token_lifetime + CLOCK_SKEW,
        }
    }

    pub fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::SeqCst)
    }

    /// Why a revocation cannot be applied: it names nothing, or it is dated later than
    /// `now` plus the clock skew allowed (it would outlive every token it could concern).
    pub fn validate(event: &TokenRevoked, now: u64) -> Result<(), &'static str> {
        let names_something = !event.kid.is_empty()
            || (!event.user_id.is_empty()
                && (!event.session_id.is_empty() || event.token_version > 0));
        if !names_something {
            return Err("names no key, session or token version");
        }
        let at = event.revoke_time.as_ref().map(|t| t.seconds).unwrap_or(0);
        if at > now.saturating_add(CLOCK_SKEW.as_secs()) as i64 {
            return Err("dated in the future");
        }
        Ok(())
    }

    /// Records a revocation; returns false for one that is invalid or no longer matters. Its
    /// effect ends at most the longest token lifetime (plus skew) after its `revoke_time`,
    /// and never later than that after `now`: no message revokes forever.
    pub fn apply(&self, event: &TokenRevoked, now: u64) -> bool {
        if Self::validate(event, now).is_err() {
            return false;
        }
        let at = event
            .revoke_time
            .as_ref()
            .map(|t| (t.seconds.max(0) as u64).min(now))
            .unwrap_or(now);
        let forget = at.saturating_add(self.keep.as_secs());
        if forget <= now {
            return false;
        }
        let mut state = self.state.write().unwrap_or_else(PoisonError::into_inner);
        let applied = if !event.kid.is_empty() {
            state.kids.insert(event.kid.clone(), forget);
            true
        } else if !event.user_id.is_empty() && !event.session_id.is_empty() {
            state.sessions.insert(event.session_id.clone(), forget);
            true
        } else if !event.user_id.is_empty() && event.token_version > 0 {
            let entry = state
                .versions
                .entry(event.user_id.clone())
                .or_insert((0, forget));
            entry.0 = entry.0.max(event.token_version);
            entry.1 = entry.1.max(forget);
            true
        } else {
            false
        };
        if applied {
            state.versions.retain(|_, (_, f)| *f > now);
            state.sessions.retain(|_, f| *f > now);
            state.kids.retain(|_, f| *f > now);
            self.epoch.fetch_add(1, Ordering::SeqCst);
        }
        applied
    }

    /// Whether a verified token has been revoked.
    pub fn is_revoked(&self, token: &Verified) -> bool {
        let state = self.state.read().unwrap_or_else(PoisonError::into_inner);
        if state.kids.contains_key(&token.kid) {
            return true;
        }
        let claims = &token.claims;
        if claims.kind != Kind::User {
            return false;
        }
        if let Some(sid) = &claims.sid {
            if state.sessions.contains_key(sid) {
                return true;
            }
        }
        match state.versions.get(&claims.sub) {
            Some((lowest, _)) => claims.ver.unwrap_or(0) < *lowest,
            None => false,
        }
    }

    /// Revocations held right now.
    pub fn len(&self) -> usize {
        let state = self.state.read().unwrap_or_else(PoisonError::into_inner);
        state.versions.len() + state.sessions.len() + state.kids.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use opsconductor_tokens::Claims;

    fn token(version: u64, sid: &str, kid: &str) -> Verified {
        Verified {
            claims: Claims::user("i", "a", "u1", "admin", version, 1000, 900).with_session(sid),
            kid: kid.into(),
        }
    }

    #[test]
    fn versions_sessions_and_keys() {
        let r = Revocations::new(Duration::from_secs(900));
        let at = |s| {
            Some(prost_types::Timestamp {
                seconds: s,
                nanos: 0,
            })
        };
        assert!(!r.is_revoked(&token(1, "s1", "k1")));
        assert!(r.apply(
            &TokenRevoked {
                user_id: "u1".into(),
                token_version: 2,
                revoke_time: at(1000),
                ..Default::default()
            },
            1000
        ));
        assert!(r.is_revoked(&token(1, "s1", "k1")));
        assert!(!r.is_revoked(&token(2, "s1", "k1")), "newer tokens pass");
        r.apply(
            &TokenRevoked {
                user_id: "u1".into(),
                session_id: "s2".into(),
                revoke_time: at(1000),
                ..Default::default()
            },
            1000,
        );
        assert!(r.is_revoked(&token(5, "s2", "k1")));
        r.apply(
            &TokenRevoked {
                kid: "k9".into(),
                revoke_time: at(1000),
                ..Default::default()
            },
            1000,
        );
        assert!(r.is_revoked(&token(5, "s3", "k9")));
        assert_eq!(r.len(), 3);
        // Older than any live token: ignored.
        assert!(!r.apply(
            &TokenRevoked {
                kid: "k8".into(),
                revoke_time: at(1),
                ..Default::default()
            },
            100_000
        ));
        assert!(!r.apply(&TokenRevoked::default(), 1000), "says nothing");
    }

    #[test]
    fn no_revocation_outlives_the_longest_token() {
        let r = Revocations::new(Duration::from_secs(900));
        let dated = |s| TokenRevoked {
            kid: "k1".into(),
            revoke_time: Some(prost_types::Timestamp {
                seconds: s,
                nanos: 0,
            }),
            ..Default::default()
        };
        // Year 9999: refused, the key keeps working.
        assert_eq!(
            Revocations::validate(&dated(253_402_300_799), 1000),
            Err("dated in the future")
        );
        assert!(!r.apply(&dated(253_402_300_799), 1000));
        assert!(!r.is_revoked(&token(1, "s1", "k1")));
        // Within the skew: applied, and forgotten after the lifetime plus skew.
        assert!(r.apply(&dated(1030), 1000));
        assert!(r.is_revoked(&token(1, "s1", "k1")));
        let later = Revocations::new(Duration::from_secs(900));
        later.apply(&dated(1030), 1000);
        later.apply(
            &TokenRevoked {
                kid: "k2".into(),
                revoke_time: Some(prost_types::Timestamp {
                    seconds: 1000 + 960,
                    nanos: 0,
                }),
                ..Default::default()
            },
            1000 + 960,
        );
        assert!(
            !later.is_revoked(&token(1, "s1", "k1")),
            "k1 was forgotten by then"
        );
    }
}
