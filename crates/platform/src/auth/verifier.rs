//! Offline token verification: a cache hit costs a SHA-256 and a map lookup; a miss costs an
//! Ed25519 check against the JWKS, then the revocation check, then the cache insert.

use std::sync::Arc;

use opsconductor_api::auth::v1::TokenRevoked;
use opsconductor_tokens::{decode_header, verify, Claims, Expiring, TokenError, VerifiedCache};

use super::{AuthError, KeySource, Revocations, TokenSettings};

/// A token that passed verification: its claims and the key that signed it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    pub claims: Claims,
    pub kid: String,
}

impl Expiring for Verified {
    fn exp(&self) -> u64 {
        self.claims.exp
    }
}

pub struct Verifier {
    keys: Arc<dyn KeySource>,
    cache: VerifiedCache<Verified>,
    revocations: Revocations,
    settings: TokenSettings,
    validation: opsconductor_tokens::Validation,
}

impl Verifier {
    pub fn new(settings: TokenSettings, keys: Arc<dyn KeySource>) -> Verifier {
        Verifier {
            keys,
            cache: VerifiedCache::new(settings.cache_capacity),
            revocations: Revocations::new(settings.max_token_lifetime),
            validation: settings.validation(),
            settings,
        }
    }

    pub fn settings(&self) -> &TokenSettings {
        &self.settings
    }

    pub fn keys(&self) -> &Arc<dyn KeySource> {
        &self.keys
    }

    /// Checks `token` and returns what it says.
    pub async fn verify(&self, token: &str) -> Result<Arc<Verified>, AuthError> {
        let now = crate::time::now_secs();
        if let Some(hit) = self.cache.get(token, now) {
            return Ok(hit);
        }
        let epoch = self.revocations.epoch();
        let kid = decode_header(token)?
            .kid
            .ok_or(TokenError::Malformed("no kid in header"))?;
        let mut keys = self.keys.keys();
        if !keys.contains(&kid) {
            let refreshed = self.keys.refresh().await;
            keys = self.keys.keys();
            if let Err(error) = refreshed {
                if keys.is_empty() {
                    return Err(AuthError::KeysUnavailable(error));
                }
            }
        }
        let claims = verify(token, &keys, &self.validation, now)?;
        let verified = Arc::new(Verified { claims, kid });
        if self.revocations.is_revoked(&verified) {
            return Err(AuthError::Revoked);
        }
        // A revocation that arrived meanwhile purged the cache already; do not undo it.
        if self.revocations.epoch() == epoch {
            self.cache.insert(token, verified.clone(), now);
        }
        Ok(verified)
    }

    /// Applies a revocation: later checks refuse the tokens, and cached ones are dropped now.
    pub fn revoke(&self, event: &TokenRevoked) -> usize {
        if !self.revocations.apply(event, crate::time::now_secs()) {
            return 0;
        }
        self.cache
            .revoke(|token| self.revocations.is_revoked(token))
    }

    /// Forgets every verified token (after reconnecting, when revocations may have been
    /// missed, every token is checked afresh).
    pub fn forget_verified(&self) {
        self.cache.clear();
    }

    pub fn revocations(&self) -> &Revocations {
        &self.revocations
    }

    pub fn cached(&self) -> usize {
        self.cache.len()
    }
}
