//! argon2id hashing, off the async runtime (a hash costs tens of milliseconds on purpose).

use argon2::password_hash::rand_core::OsRng;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;

use std::sync::OnceLock;
use std::time::Duration;

use tokio::sync::{Semaphore, SemaphorePermit};

use crate::UserError;

pub const MIN_LEN: usize = 12;
pub const MAX_LEN: usize = 1024;

/// Each hash takes ~19 MiB and a core for tens of milliseconds: run a few at a time, and turn
/// callers away (retryable) rather than let a burst exhaust memory or the blocking pool.
async fn permit() -> Result<SemaphorePermit<'static>, UserError> {
    static HASHING: OnceLock<Semaphore> = OnceLock::new();
    let slots = std::thread::available_parallelism().map_or(2, |n| n.get() * 2);
    let semaphore = HASHING.get_or_init(|| Semaphore::new(slots));
    match tokio::time::timeout(Duration::from_secs(5), semaphore.acquire()).await {
        Ok(Ok(permit)) => Ok(permit),
        _ => Err(UserError::Busy),
    }
}

pub async fn hash(password: String) -> Result<String, UserError> {
    let _permit = permit().await?;
    tokio::task::spawn_blocking(move || {
        let salt = SaltString::generate(&mut OsRng);
        Argon2::default()
            .hash_password(password.as_bytes(), &salt)
            .map(|h| h.to_string())
            .map_err(|e| UserError::Hash(e.to_string()))
    })
    .await
    .map_err(|e| UserError::Hash(e.to_string()))?
}

/// Whether `password` matches `hash`. With no hash (unknown user, or no password set) a dummy
/// hash is still verified, so response time does not tell which usernames exist.
pub async fn verify(password: String, hash: Option<String>) -> Result<bool, UserError> {
    let _permit = permit().await?;
    tokio::task::spawn_blocking(move || {
        let (stored, real) = match hash {
            Some(h) => (h, true),
            None => (dummy_hash().to_string(), false),
        };
        let parsed = PasswordHash::new(&stored).map_err(|e| UserError::Hash(e.to_string()))?;
        let matches = Argon2::default()
            .verify_password(password.as_bytes(), &parsed)
            .is_ok();
        Ok(real && matches)
    })
    .await
    .map_err(|e| UserError::Hash(e.to_string()))?
}

fn dummy_hash() -> &'static str {
    static DUMMY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    DUMMY.get_or_init(|| {
        let salt = SaltString::generate(&mut OsRng);
        Argon2::default()
            .hash_password(b"opsconductor-timing-equalizer", &salt)
            .map(|h| h.to_string())
            .unwrap_or_default()
    })
}
