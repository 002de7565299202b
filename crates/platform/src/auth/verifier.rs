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
    /// Runs between the revocation check and the cache insert (tests replay that race).
    #[cfg(test)]
    before_cache_insert: Option<Box<dyn Fn() + Send + Sync>>,
}

impl Verifier {
    pub fn new(settings: TokenSettings, keys: Arc<dyn KeySource>) -> Verifier {
        Verifier {
            keys,
            cache: VerifiedCache::new(settings.cache_capacity),
            revocations: Revocations::new(settings.max_token_lifetime),
            validation: settings.validation(),
            settings,
            #[cfg(test)]
            before_cache_insert: None,
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
            let issued_at = opsconductor_tokens::unverified_issued_at(token)
                .ok_or(TokenError::Malformed("no iat in the claims"))?;
            // A token from the future cannot be valid: it must not cost a fetch either.
            if issued_at > now.saturating_add(self.settings.leeway.as_secs()) {
                return Err(TokenError::NotYetValid.into());
            }
            let refreshed = self.keys.refresh(&kid, issued_at).await;
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
        #[cfg(test)]
        if let Some(hook) = &self.before_cache_insert {
            hook();
        }
        self.cache.insert(token, verified.clone(), now);
        // A revocation applied since the check above may have purged the cache before this
        // insert: look again now that the token is in, and take it out if it is revoked.
        if self.revocations.epoch() != epoch && self.revocations.is_revoked(&verified) {
            self.cache.remove(token);
            return Err(AuthError::Revoked);
        }
        Ok(verified)
    }

    /// Applies a revocation: later checks refuse the tokens, and cached ones are dropped now.
    /// Returns how many cached tokens were dropped; nothing happens to a revocation that
    /// [`Revocations::validate`] refuses.
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::StaticKeys;
    use opsconductor_tokens::{KeySet, SigningKey};

    /// A revocation that lands between a token's revocation check and its cache insert must
    /// still win: the token is refused and never served from the cache.
    #[tokio::test]
    async fn a_revocation_racing_a_verification_keeps_the_token_out_of_the_cache() {
        let key = SigningKey::generate();
        let settings = TokenSettings::default();
        let keys = Arc::new(StaticKeys::new(KeySet::from_keys([key.public()])));
        let now = crate::time::now_secs();
        let claims = opsconductor_tokens::Claims::user(
            &settings.issuer,
            &settings.audience,
            "u1",
            "admin",
            0,
            now,
            900,
        );
        let token = key.sign(&claims).unwrap();
        let verifier = Arc::new(std::sync::OnceLock::<Arc<Verifier>>::new());
        let racing = verifier.clone();
        let mut built = Verifier::new(settings, keys);
        built.before_cache_insert = Some(Box::new(move || {
            if let Some(v) = racing.get() {
                v.revoke(&TokenRevoked {
                    user_id: "u1".into(),
                    token_version: 1,
                    revoke_time: Some(prost_types::Timestamp::from(std::time::SystemTime::now())),
                    ..Default::default()
                });
            }
        }));
        let verifier = verifier.get_or_init(|| Arc::new(built)).clone();
        assert_eq!(
            verifier.verify(&token).await.unwrap_err(),
            AuthError::Revoked
        );
        assert_eq!(verifier.cached(), 0, "the revoked token is not cached");
        assert_eq!(
            verifier.verify(&token).await.unwrap_err(),
            AuthError::Revoked
        );
    }
}
