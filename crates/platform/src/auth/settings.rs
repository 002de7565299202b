use std::time::Duration;

use crate::config::{ConfigError, Env};

/// What every server accepts in a token, and how it keeps verified ones.
#[derive(Debug, Clone)]
pub struct TokenSettings {
    /// `iss` of every token (`OPSCONDUCTOR_TOKEN_ISSUER`, default "opsconductor").
    pub issuer: String,
    /// `aud` of every token (`OPSCONDUCTOR_TOKEN_AUDIENCE`, default "opsconductor").
    pub audience: String,
    /// Clock skew allowed on `exp` and `nbf`.
    pub leeway: Duration,
    /// Verified tokens kept (`OPSCONDUCTOR_TOKEN_CACHE_SIZE`, default 100,000).
    pub cache_capacity: usize,
    /// Shortest time between two JWKS fetches caused by unknown key ids
    /// (`OPSCONDUCTOR_JWKS_REFETCH_MS`, default 1000): a flood of forged key ids cannot turn
    /// into a flood of fetches, and a token signed by a new key waits at most this long.
    pub jwks_refetch_interval: Duration,
    /// The longest any token lives (user 15 min, service 10 min): how long a revocation must
    /// be remembered.
    pub max_token_lifetime: Duration,
}

impl TokenSettings {
    pub fn from_env(env: &Env) -> Result<Self, ConfigError> {
        let issuer = env
            .get("OPSCONDUCTOR_TOKEN_ISSUER")
            .unwrap_or_else(|| "opsconductor".to_string());
        let audience = env
            .get("OPSCONDUCTOR_TOKEN_AUDIENCE")
            .unwrap_or_else(|| "opsconductor".to_string());
        Ok(TokenSettings {
            issuer,
            audience,
            leeway: Duration::from_secs(30),
            cache_capacity: env.bounded(
                "OPSCONDUCTOR_TOKEN_CACHE_SIZE",
                100_000,
                16..=10_000_000,
            )? as usize,
            jwks_refetch_interval: env.positive_millis("OPSCONDUCTOR_JWKS_REFETCH_MS", 1000)?,
            max_token_lifetime: Duration::from_secs(900),
        })
    }

    pub fn validation(&self) -> opsconductor_tokens::Validation {
        let mut validation = opsconductor_tokens::Validation::new(&self.issuer, &self.audience);
        validation.leeway_secs = self.leeway.as_secs();
        validation
    }
}

impl Default for TokenSettings {
    fn default() -> Self {
        TokenSettings::from_env(&Env::default())
            .unwrap_or_else(|_| unreachable!("defaults are valid"))
    }
}
