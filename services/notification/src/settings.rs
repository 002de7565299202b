//! The service's configuration (every variable is in docs/configuration.md).

use std::path::PathBuf;
use std::time::Duration;

use opsconductor_messaging::topology::RetryPolicy;
use opsconductor_notify_channels::{HttpSender, HttpSettings, SigningKey, SmtpSettings, SmtpTls};
use opsconductor_notify_render::sandbox::Limits;
use opsconductor_platform::config::{ConfigError, Env};

use crate::worker::EmailSettings;

#[derive(Clone)]
pub struct Settings {
    pub http: HttpSettings,
    pub email: Option<EmailSettings>,
    pub default_signing_credential_id: Option<String>,
    /// `NOTIFICATION_WEBHOOK_SIGNING_SECRET`: signs webhooks no credential is named for.
    pub default_signing_key: Option<SigningKey>,
    pub retry: RetryPolicy,
    pub lease: Duration,
    pub concurrency: usize,
    pub rate_per_minute: u32,
    pub rate_burst: u32,
    pub max_limit_wait: Duration,
    pub dedupe_window: Duration,
    pub secret_cache: Duration,
    pub release_poll: Duration,
    pub render: RenderSettings,
}

/// Where and how templates people wrote are rendered (see `opsconductor_notify_render::sandbox`).
#[derive(Debug, Clone)]
pub struct RenderSettings {
    /// The program run as `PROGRAM render-sandbox --memory-bytes N`: this binary by default.
    pub program: PathBuf,
    pub limits: Limits,
}

/// The generated `whsec_…` secret (`up`, `secrets init` and the test sandbox make one): webhooks
/// are signed unless an operator says, in so many words, that unsigned is what they want.
fn default_signing_key(env: &Env) -> Result<Option<SigningKey>, ConfigError> {
    const VAR: &str = "NOTIFICATION_WEBHOOK_SIGNING_SECRET";
    match env.secret(VAR)? {
        Some(secret) => SigningKey::parse(&secret)
            .map(Some)
            .map_err(|e| ConfigError::invalid(VAR, "", e)),
        None if flag(env, "NOTIFICATION_ALLOW_UNSIGNED_WEBHOOKS")? => Ok(None),
        None => Err(ConfigError::invalid(
            VAR,
            "",
            "is required (or its _FILE): webhooks are signed; \
             NOTIFICATION_ALLOW_UNSIGNED_WEBHOOKS=true sends them unsigned instead",
        )),
    }
}

fn render(env: &Env) -> Result<RenderSettings, ConfigError> {
    const MIB: u64 = 1024 * 1024;
    let program = match env.get("NOTIFICATION_RENDER_PROGRAM") {
        Some(path) if !path.trim().is_empty() => PathBuf::from(path.trim()),
        _ => std::env::current_exe()
            .map_err(|e| ConfigError::invalid("NOTIFICATION_RENDER_PROGRAM", "", e))?,
    };
    Ok(RenderSettings {
        program,
        limits: Limits {
            memory_bytes: env.bounded(
                "NOTIFICATION_RENDER_MEMORY_BYTES",
                256 * MIB,
                32 * MIB..=16 * 1024 * MIB,
            )?,
            timeout: env.positive_millis("NOTIFICATION_RENDER_TIMEOUT_MS", 5_000)?,
            processes: env.bounded("NOTIFICATION_RENDER_PROCESSES", 2, 1..=64)? as usize,
        },
    })
}

fn flag(env: &Env, var: &str) -> Result<bool, ConfigError> {
    match env.get(var).as_deref().map(str::trim) {
        None | Some("") | Some("false") | Some("0") => Ok(false),
        Some("true") | Some("1") => Ok(true),
        Some(other) => Err(ConfigError::invalid(var, other, "must be true or false")),
    }
}

fn credential_id(env: &Env, var: &str) -> Result<Option<String>, ConfigError> {
    match env.get(var).map(|v| v.trim().to_string()) {
        None => Ok(None),
        Some(v) if v.is_empty() => Ok(None),
        Some(v) if uuid::Uuid::parse_str(&v).is_ok() => Ok(Some(v)),
        Some(v) => Err(ConfigError::invalid(var, &v, "must be a credential id")),
    }
}

/// 1 s, 10 s, 1 min, 10 min, 1 h: six attempts over about 71 minutes, so a destination that
/// is down for an hour still gets its notification. The broker definitions are generated from
/// this policy; other delays need a broker account that may declare its queues.
pub fn default_retry() -> RetryPolicy {
    RetryPolicy {
        delays: [1, 10, 60, 600, 3600].map(Duration::from_secs).to_vec(),
        max_attempts: 6,
    }
}

fn retry_policy(env: &Env) -> Result<RetryPolicy, ConfigError> {
    const VAR: &str = "NOTIFICATION_RETRY_DELAYS_MS";
    let max_attempts = env.bounded("NOTIFICATION_MAX_ATTEMPTS", 6, 1..=50)? as u32;
    let Some(raw) = env.get(VAR) else {
        return Ok(RetryPolicy {
            max_attempts,
            ..default_retry()
        });
    };
    let mut delays = Vec::new();
    for part in raw.split(',').map(str::trim) {
        let ms: u64 = part
            .parse()
            .map_err(|e| ConfigError::invalid(VAR, &raw, format!("{part:?}: {e}")))?;
        if !(10..=86_400_000).contains(&ms) {
            return Err(ConfigError::invalid(
                VAR,
                &raw,
                "each delay must be 10 ms to 1 day",
            ));
        }
        delays.push(Duration::from_millis(ms));
    }
    Ok(RetryPolicy {
        delays,
        max_attempts,
    })
}

fn email(env: &Env) -> Result<Option<EmailSettings>, ConfigError> {
    let Some(host) = env
        .get("NOTIFICATION_SMTP_HOST")
        .filter(|h| !h.trim().is_empty())
    else {
        return Ok(None);
    };
    let tls = match env
        .get("NOTIFICATION_SMTP_TLS")
        .as_deref()
        .unwrap_or("starttls")
    {
        "starttls" => SmtpTls::StartTls,
        "tls" => SmtpTls::Tls,
        "none" => SmtpTls::None,
        other => {
            return Err(ConfigError::invalid(
                "NOTIFICATION_SMTP_TLS",
                other,
                "must be starttls, tls or none",
            ))
        }
    };
    let default_port = match tls {
        SmtpTls::StartTls => 587,
        SmtpTls::Tls => 465,
        SmtpTls::None => 25,
    };
    let ca_pem = match env.get("NOTIFICATION_SMTP_CA_FILE") {
        None => None,
        Some(path) => Some(
            std::fs::read(&path)
                .map_err(|e| ConfigError::invalid("NOTIFICATION_SMTP_CA_FILE", &path, e))?,
        ),
    };
    Ok(Some(EmailSettings {
        smtp: SmtpSettings {
            host: host.trim().to_string(),
            port: env.bounded("NOTIFICATION_SMTP_PORT", default_port, 1..=65_535)? as u16,
            tls,
            username: env.get("NOTIFICATION_SMTP_USERNAME").unwrap_or_default(),
            from: env
                .get("NOTIFICATION_SMTP_FROM")
                .unwrap_or_else(|| "OpsConductor <opsconductor@localhost>".into()),
            timeout: env.positive_millis("NOTIFICATION_SMTP_TIMEOUT_MS", 10_000)?,
            pool_max: env.bounded("NOTIFICATION_SMTP_POOL", 8, 1..=256)? as u32,
            ca_pem,
        },
        password_credential_id: credential_id(env, "NOTIFICATION_SMTP_PASSWORD_CREDENTIAL_ID")?,
    }))
}

impl Settings {
    pub fn from_env(env: &Env) -> Result<Settings, ConfigError> {
        Ok(Settings {
            http: HttpSettings {
                timeout: env.positive_millis("NOTIFICATION_HTTP_TIMEOUT_MS", 10_000)?,
                connect_timeout: env
                    .positive_millis("NOTIFICATION_HTTP_CONNECT_TIMEOUT_MS", 3_000)?,
                max_response_bytes: env.bounded(
                    "NOTIFICATION_HTTP_MAX_RESPONSE_BYTES",
                    64 * 1024,
                    0..=16 * 1024 * 1024,
                )? as usize,
                allow_plain_http: flag(env, "NOTIFICATION_ALLOW_PLAIN_HTTP")?,
                allow_private_addresses: flag(env, "NOTIFICATION_ALLOW_PRIVATE_ADDRESSES")?,
            },
            email: email(env)?,
            default_signing_credential_id: credential_id(
                env,
                "NOTIFICATION_WEBHOOK_SIGNING_CREDENTIAL_ID",
            )?,
            default_signing_key: default_signing_key(env)?,
            retry: retry_policy(env)?,
            lease: env.positive_millis("NOTIFICATION_SEND_LEASE_MS", 60_000)?,
            concurrency: env.bounded("NOTIFICATION_CONCURRENCY", 64, 1..=4_096)? as usize,
            rate_per_minute: env.bounded("NOTIFICATION_RATE_PER_MINUTE", 120, 0..=1_000_000)?
                as u32,
            rate_burst: env.bounded("NOTIFICATION_RATE_BURST", 20, 1..=1_000_000)? as u32,
            max_limit_wait: env.millis("NOTIFICATION_RATE_MAX_WAIT_MS", Duration::from_secs(10))?,
            dedupe_window: env.millis("NOTIFICATION_DEDUPE_WINDOW_MS", Duration::from_secs(60))?,
            secret_cache: env.millis("NOTIFICATION_SECRET_CACHE_MS", Duration::from_secs(60))?,
            release_poll: env.positive_millis("NOTIFICATION_RELEASE_POLL_MS", 1_000)?,
            render: render(env)?,
        })
    }

    pub fn http_sender(&self) -> Result<HttpSender, ConfigError> {
        HttpSender::new(self.http.clone())
            .map_err(|e| ConfigError::invalid("NOTIFICATION_HTTP_TIMEOUT_MS", "", e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: (&str, &str) = (
        "NOTIFICATION_WEBHOOK_SIGNING_SECRET",
        "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
    );

    #[test]
    fn webhooks_are_signed_unless_unsigned_is_asked_for_in_so_many_words() {
        let err = Settings::from_env(&Env::isolated::<&str, &str>([]))
            .err()
            .map(|e| e.to_string());
        assert!(
            err.as_deref()
                .is_some_and(|e| e.contains("NOTIFICATION_WEBHOOK_SIGNING_SECRET")),
            "{err:?}"
        );
        let unsigned = Env::isolated([("NOTIFICATION_ALLOW_UNSIGNED_WEBHOOKS", "true")]);
        assert!(Settings::from_env(&unsigned)
            .unwrap()
            .default_signing_key
            .is_none());
        let signed = Settings::from_env(&Env::isolated([SECRET])).unwrap();
        assert!(signed.default_signing_key.is_some());
        // A bad secret is refused, and never echoed.
        let bad = Env::isolated([("NOTIFICATION_WEBHOOK_SIGNING_SECRET", "whsec_%%%not-base64")]);
        let err = Settings::from_env(&bad).err().map(|e| e.to_string());
        assert!(
            err.as_deref()
                .is_some_and(|e| e.contains("NOTIFICATION_WEBHOOK_SIGNING_SECRET")
                    && !e.contains("not-base64")),
            "{err:?}"
        );
    }

    #[test]
    fn bad_values_name_their_variable_and_email_is_off_without_a_relay() {
        let defaults = Settings::from_env(&Env::isolated([SECRET])).unwrap();
        assert!(defaults.email.is_none());
        assert!(!defaults.http.allow_plain_http && !defaults.http.allow_private_addresses);
        assert_eq!(defaults.retry.max_attempts, 6);
        for (var, value) in [
            ("NOTIFICATION_SMTP_TLS", "ssl3"),
            ("NOTIFICATION_RETRY_DELAYS_MS", "100,soon"),
            ("NOTIFICATION_RETRY_DELAYS_MS", "1"),
            ("NOTIFICATION_ALLOW_PLAIN_HTTP", "yes please"),
            ("NOTIFICATION_WEBHOOK_SIGNING_CREDENTIAL_ID", "my-key"),
            ("NOTIFICATION_MAX_ATTEMPTS", "0"),
        ] {
            let env = Env::isolated([SECRET, ("NOTIFICATION_SMTP_HOST", "relay"), (var, value)]);
            let err = Settings::from_env(&env).err().map(|e| e.to_string());
            assert!(
                err.as_deref().is_some_and(|e| e.contains(var)),
                "{var}={value}: {err:?}"
            );
        }
        let env = Env::isolated([
            SECRET,
            ("NOTIFICATION_SMTP_HOST", "relay.example.com"),
            ("NOTIFICATION_SMTP_TLS", "tls"),
        ]);
        let email = Settings::from_env(&env).unwrap().email.unwrap();
        assert_eq!(email.smtp.port, 465);
    }
}
