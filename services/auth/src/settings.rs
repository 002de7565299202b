//! The auth service's configuration: token lifetimes, the key-encryption key and the service
//! identities it accepts. Every variable is in docs/configuration.md.

use opsconductor_seal::Key;
use std::fmt;
use std::time::Duration;

use opsconductor_platform::auth::TokenSettings;
use opsconductor_platform::config::{ConfigError, Env};
use opsconductor_platform::validate::is_slug;

pub struct AuthSettings {
    pub tokens: TokenSettings,
    /// User access tokens (`AUTH_ACCESS_TOKEN_TTL_SECS`, default and at most 900).
    pub access_ttl: Duration,
    /// Service tokens (`AUTH_SERVICE_TOKEN_TTL_SECS`, default and at most 600).
    pub service_ttl: Duration,
    /// Refresh tokens, i.e. how long a session lasts unused (`AUTH_REFRESH_TOKEN_TTL_SECS`,
    /// default 7 days, at most 30).
    pub refresh_ttl: Duration,
    /// Seals signing keys at rest (`AUTH_KEY_ENCRYPTION_KEY[_FILE]`, 32 bytes, base64).
    pub key_encryption_key: Key,
    /// `service_id` → SHA-256 (hex) of its secret (`AUTH_SERVICE_IDENTITIES[_FILE]`).
    pub identities: Vec<(String, String)>,
}

impl fmt::Debug for AuthSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuthSettings")
            .field("access_ttl", &self.access_ttl)
            .field("service_ttl", &self.service_ttl)
            .field("refresh_ttl", &self.refresh_ttl)
            .field(
                "identities",
                &self.identities.iter().map(|(id, _)| id).collect::<Vec<_>>(),
            )
            .finish_non_exhaustive()
    }
}

impl AuthSettings {
    pub fn from_env(env: &Env) -> Result<AuthSettings, ConfigError> {
        let kek_text =
            env.secret("AUTH_KEY_ENCRYPTION_KEY")?
                .ok_or_else(|| ConfigError::Missing {
                    var: "AUTH_KEY_ENCRYPTION_KEY".into(),
                    hint: "32 random bytes, base64 (or AUTH_KEY_ENCRYPTION_KEY_FILE); \
                       `opsconductor secrets init` generates one"
                        .into(),
                })?;
        let key_encryption_key = Key::from_base64(&kek_text).ok_or_else(|| {
            ConfigError::invalid(
                "AUTH_KEY_ENCRYPTION_KEY",
                "",
                "must be 32 bytes, base64-encoded",
            )
        })?;
        let identities = match env.secret("AUTH_SERVICE_IDENTITIES")? {
            Some(text) => parse_identities(&text)
                .map_err(|reason| ConfigError::invalid("AUTH_SERVICE_IDENTITIES", "", reason))?,
            None => Vec::new(),
        };
        Ok(AuthSettings {
            tokens: TokenSettings::from_env(env)?,
            access_ttl: Duration::from_secs(env.bounded(
                "AUTH_ACCESS_TOKEN_TTL_SECS",
                900,
                1..=900,
            )?),
            service_ttl: Duration::from_secs(env.bounded(
                "AUTH_SERVICE_TOKEN_TTL_SECS",
                600,
                1..=600,
            )?),
            refresh_ttl: Duration::from_secs(env.bounded(
                "AUTH_REFRESH_TOKEN_TTL_SECS",
                7 * 86_400,
                1..=30 * 86_400,
            )?),
            key_encryption_key,
            identities,
        })
    }

    /// The longest a token this service issues lives: how long a retired key stays published.
    pub fn max_token_lifetime(&self) -> Duration {
        self.access_ttl.max(self.service_ttl)
    }
}

/// `id=sha256hex` entries, one per line or comma-separated; `#` starts a comment.
pub fn parse_identities(text: &str) -> Result<Vec<(String, String)>, String> {
    let mut out: Vec<(String, String)> = Vec::new();
    for entry in text
        .lines()
        .map(|l| l.split('#').next().unwrap_or_default())
        .flat_map(|l| l.split(','))
        .map(str::trim)
        .filter(|e| !e.is_empty())
    {
        let Some((id, hash)) = entry.split_once('=') else {
            return Err(format!("{entry:?} is not service_id=sha256hex"));
        };
        let (id, hash) = (id.trim(), hash.trim().to_ascii_lowercase());
        if !is_slug(id, 1, 64, &['-', '_']) {
            return Err(format!("{id:?} is not a service id"));
        }
        if hash.len() != 64 || !hash.chars().all(|c| c.is_ascii_hexdigit()) {
            return Err(format!("the hash of {id} is not 64 hex digits"));
        }
        if out.iter().any(|(known, _)| known == id) {
            return Err(format!("{id} is listed twice"));
        }
        out.push((id.to_string(), hash));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identities_parse_and_errors_hide_values() {
        let hash = "a".repeat(64);
        let parsed =
            parse_identities(&format!("# services\njobs={hash}\nuser = {hash}, x={hash}")).unwrap();
        assert_eq!(parsed.len(), 3);
        assert!(parse_identities("jobs").is_err());
        assert!(parse_identities(&format!("Jobs={hash}")).is_err());
        assert!(parse_identities("jobs=abc").is_err());
        assert!(parse_identities(&format!("jobs={hash},jobs={hash}")).is_err());
        let env = Env::isolated([("AUTH_KEY_ENCRYPTION_KEY", "not base64 at all!")]);
        let err = AuthSettings::from_env(&env).unwrap_err();
        assert_eq!(err.var(), "AUTH_KEY_ENCRYPTION_KEY");
        assert!(!err.to_string().contains("not base64"));
    }
}
