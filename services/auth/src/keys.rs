//! Signing keys: the newest unretired key signs; a retired key stays published until the last
//! token it signed has expired (or leaves at once when retired for a leak). Keys are stored
//! sealed under the key-encryption key; each replica holds them in memory and reloads them
//! periodically, since another replica may have rotated.

use std::sync::{Arc, PoisonError, RwLock};
use std::time::{Duration, Instant, SystemTime};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use futures::future::{BoxFuture, FutureExt};
use opsconductor_api::auth::v1::Jwk;
use opsconductor_platform::auth::{IssuedToken, KeySource, TokenFetcher};
use opsconductor_platform::time::now_micros;
use opsconductor_storage::Database;
use opsconductor_tokens::{Claims, KeySet, PublicKey, SigningKey, VerifyingKey};
use sqlx::AnyConnection;

use crate::AuthServiceError;
use opsconductor_seal::{open, seal, Key};

#[derive(sqlx::FromRow)]
struct KeyRow {
    kid: String,
    sealed_secret: Vec<u8>,
    retire_time: Option<i64>,
}

/// The keys in use at one moment.
struct Ring {
    active: Arc<SigningKey>,
    published: Arc<KeySet>,
    /// Active first, then retired keys still published, newest first.
    jwks: Vec<Jwk>,
}

pub struct KeyRing {
    db: Database,
    kek: Key,
    /// How long a retired key stays published: the longest token lifetime plus clock skew.
    overlap: Duration,
    ring: RwLock<Arc<Ring>>,
    last_reload: tokio::sync::Mutex<Instant>,
}

/// What a rotation did.
pub struct Rotation {
    pub key: Jwk,
    /// The new key itself: it signs the revocation of the previous one.
    pub signer: Arc<SigningKey>,
    pub previous_kid: String,
    /// Micros; when the previous key leaves the JWKS.
    pub previous_expire_time: i64,
}

fn jwk(key: &SigningKey) -> Jwk {
    let public = key.public().to_jwk();
    Jwk {
        kty: public.kty,
        crv: public.crv,
        x: public.x,
        kid: public.kid,
        alg: public.alg,
        r#use: public.use_,
    }
}

impl KeyRing {
    /// Loads the keys, creating the first one if there is none.
    pub async fn open(
        db: Database,
        kek: Key,
        overlap: Duration,
    ) -> Result<Arc<KeyRing>, AuthServiceError> {
        let ring = match read(&db, &kek).await? {
            Some(ring) => ring,
            None => {
                let mut tx = db.begin().await?;
                insert_new(&mut tx, &kek).await?;
                tx.commit().await?;
                read(&db, &kek).await?.ok_or_else(|| {
                    AuthServiceError::Keys("no signing key after creating one".into())
                })?
            }
        };
        Ok(Arc::new(KeyRing {
            db,
            kek,
            overlap,
            ring: RwLock::new(Arc::new(ring)),
            last_reload: tokio::sync::Mutex::new(Instant::now()),
        }))
    }

    fn ring(&self) -> Arc<Ring> {
        self.ring
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// The key that signs now.
    pub fn active(&self) -> Arc<SigningKey> {
        self.ring().active.clone()
    }

    pub fn active_kid(&self) -> String {
        self.ring().active.kid().to_string()
    }

    pub fn sign(&self, claims: &Claims) -> Result<String, AuthServiceError> {
        self.ring()
            .active
            .sign(claims)
            .map_err(|e| AuthServiceError::Signing(e.to_string()))
    }

    /// Certifies `key` as `service`'s message-signing key until `not_after`.
    pub fn certify_producer(
        &self,
        service: &str,
        key: &VerifyingKey,
        now: u64,
        not_after: u64,
    ) -> String {
        self.ring()
            .active
            .certify_producer(service, key, now, not_after)
    }

    pub fn jwks(&self) -> Vec<Jwk> {
        self.ring().jwks.clone()
    }

    /// Reads the keys again from the database.
    pub async fn reload(&self) -> Result<(), AuthServiceError> {
        if let Some(ring) = read(&self.db, &self.kek).await? {
            *self.ring.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(ring);
        }
        *self.last_reload.lock().await = Instant::now();
        Ok(())
    }

    /// Reloads every `every` until the ring is dropped (other replicas' rotations).
    pub fn spawn_reloader(self: &Arc<Self>, every: Duration) {
        let weak = Arc::downgrade(self);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                let Some(ring) = weak.upgrade() else { return };
                if let Err(error) = ring.reload().await {
                    tracing::warn!(%error, "reloading signing keys failed");
                }
            }
        });
    }

    /// Makes a new key active inside `tx`; the previous one stays published for the overlap,
    /// or leaves at once with `revoke_previous`. Call [`KeyRing::reload`] after the commit.
    pub async fn rotate(
        &self,
        tx: &mut AnyConnection,
        revoke_previous: bool,
    ) -> Result<Rotation, AuthServiceError> {
        let previous_kid = self.active_kid();
        let now = now_micros();
        let expire = if revoke_previous {
            now
        } else {
            now + self.overlap.as_micros() as i64
        };
        sqlx::query(
            "UPDATE signing_keys SET retire_time = $1, expire_time = $2 WHERE retire_time IS NULL",
        )
        .bind(now)
        .bind(expire)
        .execute(&mut *tx)
        .await?;
        let key = insert_new(tx, &self.kek).await?;
        Ok(Rotation {
            key: jwk(&key),
            signer: Arc::new(key),
            previous_kid,
            previous_expire_time: expire,
        })
    }
}

async fn insert_new(tx: &mut AnyConnection, kek: &Key) -> Result<SigningKey, AuthServiceError> {
    let key = SigningKey::generate();
    let sealed = seal(kek, key.kid().as_bytes(), &key.secret_bytes());
    let public = URL_SAFE_NO_PAD
        .decode(jwk(&key).x)
        .map_err(|e| AuthServiceError::Keys(e.to_string()))?;
    sqlx::query(
        "INSERT INTO signing_keys (kid, public_key, sealed_secret, create_time) VALUES ($1, $2, $3, $4)",
    )
    .bind(key.kid())
    .bind(public)
    .bind(sealed)
    .bind(now_micros())
    .execute(&mut *tx)
    .await?;
    tracing::info!(kid = %key.kid(), "new signing key");
    Ok(key)
}

/// The published keys, the newest unretired one active; None when there is no usable key.
async fn read(db: &Database, kek: &Key) -> Result<Option<Ring>, AuthServiceError> {
    let rows: Vec<KeyRow> = sqlx::query_as(
        "SELECT kid, sealed_secret, retire_time FROM signing_keys \
         WHERE expire_time IS NULL OR expire_time > $1 ORDER BY create_time DESC, kid",
    )
    .bind(now_micros())
    .fetch_all(db.pool())
    .await?;
    let mut keys = Vec::new();
    for row in &rows {
        let secret = open(kek, row.kid.as_bytes(), &row.sealed_secret).map_err(|_| {
            AuthServiceError::Keys(
                "AUTH_KEY_ENCRYPTION_KEY is not the key the signing keys were sealed with".into(),
            )
        })?;
        let key = SigningKey::from_secret_bytes(&secret)
            .map_err(|e| AuthServiceError::Keys(e.to_string()))?;
        if key.kid() != row.kid {
            return Err(AuthServiceError::Keys(format!(
                "key {} does not match its id",
                row.kid
            )));
        }
        keys.push((key, row.retire_time.is_none()));
    }
    let Some(active_index) = keys.iter().position(|(_, unretired)| *unretired) else {
        return Ok(None);
    };
    let active_jwk = jwk(&keys[active_index].0);
    let mut jwks = vec![active_jwk];
    jwks.extend(
        keys.iter()
            .enumerate()
            .filter(|(i, _)| *i != active_index)
            .map(|(_, (k, _))| jwk(k)),
    );
    let published = Arc::new(KeySet::from_keys(keys.iter().map(|(k, _)| k.public())));
    let (active, _) = keys.swap_remove(active_index);
    Ok(Some(Ring {
        active: Arc::new(active),
        published,
        jwks,
    }))
}

impl KeySource for KeyRing {
    fn keys(&self) -> Arc<KeySet> {
        self.ring().published.clone()
    }

    fn refresh<'a>(&'a self, _kid: &'a str, _issued_at: u64) -> BoxFuture<'a, Result<(), String>> {
        async move {
            // Another replica may have rotated; at most one reload a second.
            if self.last_reload.lock().await.elapsed() < Duration::from_secs(1) {
                return Ok(());
            }
            self.reload().await.map_err(|e| e.to_string())
        }
        .boxed()
    }
}

/// The auth service's own service tokens, signed locally: it cannot exchange a secret with
/// itself.
pub struct LocalMint {
    pub keys: Arc<KeyRing>,
    pub issuer: String,
    pub audience: String,
    pub ttl: Duration,
}

impl TokenFetcher for LocalMint {
    fn fetch<'a>(
        &'a self,
        message_key: &'a PublicKey,
    ) -> BoxFuture<'a, Result<IssuedToken, opsconductor_platform::auth::AuthError>> {
        async move {
            let now = opsconductor_platform::time::now_secs();
            let claims = Claims::service(
                &self.issuer,
                &self.audience,
                "auth",
                now,
                self.ttl.as_secs(),
            );
            let token = self
                .keys
                .sign(&claims)
                .map_err(|e| opsconductor_platform::auth::AuthError::Fetch(e.to_string()))?;
            let certificate = self
                .keys
                .certify_producer("auth", &message_key.key, now, claims.exp);
            Ok(IssuedToken {
                token,
                expire_time: SystemTime::UNIX_EPOCH + Duration::from_secs(claims.exp),
                message_certificate: Some(certificate),
            })
        }
        .boxed()
    }
}
