//! Secrets the channels need — webhook signing keys, the SMTP password — revealed by the
//! credentials service (which lets the notification service reveal only credentials whose
//! `revealable_by` names it, and audits every reveal) and kept in memory briefly, so a rotation
//! takes effect within the cache time and a burst of deliveries costs one reveal.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use opsconductor_api::credentials::v1::secret_material::Material;
use opsconductor_api::credentials::v1::RevealCredentialRequest;
use opsconductor_notify_channels::SigningKey;
use opsconductor_platform::client::Clients;
use opsconductor_platform::ApiError;
use tokio::sync::Mutex;
use zeroize::Zeroizing;

/// Why a secret is not available.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    /// The credential is missing, of the wrong kind, or not revealable by this service: a
    /// retry cannot help until an administrator acts.
    #[error("credential {0}: {1}")]
    Refused(String, String),
    /// The credentials service could not answer; may pass.
    #[error("credential {0} cannot be read now: {1}")]
    Unavailable(String, String),
}

struct Cached {
    secret: Zeroizing<String>,
    fetched: Instant,
}

#[derive(Clone)]
pub struct Secrets {
    clients: Arc<Clients>,
    ttl: Duration,
    cache: Arc<Mutex<HashMap<String, Cached>>>,
}

impl Secrets {
    pub fn new(clients: Arc<Clients>, ttl: Duration) -> Secrets {
        Secrets {
            clients,
            ttl,
            cache: Arc::default(),
        }
    }

    /// The text of a password or API-token credential.
    pub async fn text(&self, credential_id: &str) -> Result<Zeroizing<String>, SecretError> {
        let mut cache = self.cache.lock().await;
        if let Some(hit) = cache.get(credential_id) {
            if hit.fetched.elapsed() < self.ttl {
                return Ok(hit.secret.clone());
            }
        }
        // Held across the reveal: concurrent deliveries wait for one reveal, not one each.
        let secret = self.reveal(credential_id).await?;
        cache.insert(
            credential_id.to_string(),
            Cached {
                secret: secret.clone(),
                fetched: Instant::now(),
            },
        );
        Ok(secret)
    }

    pub async fn signing_key(&self, credential_id: &str) -> Result<SigningKey, SecretError> {
        let text = self.text(credential_id).await?;
        SigningKey::parse(&text)
            .map_err(|e| SecretError::Refused(credential_id.to_string(), e.to_string()))
    }

    async fn reveal(&self, id: &str) -> Result<Zeroizing<String>, SecretError> {
        let request = RevealCredentialRequest {
            id: id.to_string(),
            reason: "notification delivery".into(),
            idempotency_key: uuid::Uuid::now_v7().to_string(),
            ..Default::default()
        };
        let response = match self.clients.credentials().reveal_credential(request).await {
            Ok(r) => r.into_inner(),
            Err(status) => {
                let api = ApiError::from_status(&status);
                let why = status.message().to_string();
                return Err(match status.code() {
                    tonic::Code::Unavailable
                    | tonic::Code::DeadlineExceeded
                    | tonic::Code::ResourceExhausted
                    | tonic::Code::Internal
                    | tonic::Code::Unknown => SecretError::Unavailable(id.to_string(), why),
                    _ => SecretError::Refused(id.to_string(), api.to_string()),
                });
            }
        };
        match response.secret.and_then(|s| s.material) {
            Some(Material::Password(p)) => Ok(Zeroizing::new(p.password)),
            Some(Material::ApiToken(t)) => Ok(Zeroizing::new(t.token)),
            _ => Err(SecretError::Refused(
                id.to_string(),
                "is not a password or an API token".into(),
            )),
        }
    }
}
