//! Credentials in SQLite or PostgreSQL: metadata in `credentials`, every secret version sealed
//! in `credential_secrets`, key-encryption key versions in `encryption_keys`. No plaintext secret
//! is ever written; every change is written with its audit event, in one transaction.

use std::sync::Arc;

use opsconductor_api::credentials::v1::{Credential, CredentialExpiring, CredentialKind};
use opsconductor_messaging::{AuditLog, Cause, Outbox, OutgoingMessage};
use opsconductor_platform::page::Page;
use opsconductor_platform::time::{now_micros, to_timestamp};
use opsconductor_seal::Key;
use opsconductor_storage::{is_unique_violation, Backend, Database, Select};
use sqlx::AnyConnection;
use zeroize::Zeroizing;

use crate::material::Metadata;
use crate::vault::{Sealed, Vault, VaultError};
use crate::CredentialsError;

const COLUMNS: &str = "c.id, c.name, c.description, c.kind, c.username, c.secret_version, \
    c.algorithm, c.fingerprint, c.subject, c.issuer, c.expire_time, c.rotate_time, \
    c.last_reveal_time, c.create_time, c.update_time, s.key_version, c.revealable_by";

/// The credential with its current secret's key version.
const FROM: &str = "FROM credentials c JOIN credential_secrets s \
    ON s.credential_id = c.id AND s.version = c.secret_version";

#[derive(sqlx::FromRow)]
struct CredentialRow {
    id: String,
    name: String,
    description: String,
    kind: i64,
    username: String,
    secret_version: i64,
    algorithm: String,
    fingerprint: String,
    subject: String,
    issuer: String,
    expire_time: Option<i64>,
    rotate_time: i64,
    last_reveal_time: Option<i64>,
    create_time: i64,
    update_time: i64,
    key_version: i64,
    revealable_by: String,
}

impl CredentialRow {
    fn into_credential(self) -> Credential {
        Credential {
            id: self.id,
            name: self.name,
            description: self.description,
            kind: self.kind as i32,
            username: self.username,
            secret_version: self.secret_version.clamp(0, u32::MAX as i64) as u32,
            key_version: self.key_version.clamp(0, u32::MAX as i64) as u32,
            fingerprint: self.fingerprint,
            expire_time: self.expire_time.map(to_timestamp),
            rotate_time: Some(to_timestamp(self.rotate_time)),
            create_time: Some(to_timestamp(self.create_time)),
            update_time: Some(to_timestamp(self.update_time)),
            algorithm: self.algorithm,
            subject: self.subject,
            issuer: self.issuer,
            last_reveal_time: self.last_reveal_time.map(to_timestamp),
            revealable_by: self
                .revealable_by
                .split(',')
                .filter(|s| !s.is_empty())
                .map(str::to_string)
                .collect(),
        }
    }
}

#[derive(sqlx::FromRow)]
struct SecretRow {
    sealed_secret: Vec<u8>,
    wrapped_key: Vec<u8>,
    key_version: i64,
    revealable_until: Option<i64>,
}

/// Filters of a listing; every one given must match.
#[derive(Debug, Default)]
pub struct CredentialFilter {
    pub kind: Option<i32>,
    pub names: Vec<String>,
    pub expire_before: Option<i64>,
}

/// A remembered reveal, for its idempotency key.
pub struct RevealRecord {
    pub request_hash: String,
    pub credential_id: String,
    pub secret_version: u64,
    pub audit_event_id: String,
}

/// What a rotation step found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyVersions {
    pub previous: u64,
    pub active: u64,
}

#[derive(Clone)]
pub struct CredentialStore {
    db: Database,
    vault: Arc<Vault>,
    audit: AuditLog,
    outbox: Outbox,
    /// The broker name of the events exchange (credential.expiring).
    events_exchange: String,
}

impl CredentialStore {
    pub fn new(
        db: Database,
        vault: Arc<Vault>,
        audit: AuditLog,
        outbox: Outbox,
        events_exchange: String,
    ) -> CredentialStore {
        CredentialStore {
            db,
            vault,
            audit,
            outbox,
            events_exchange,
        }
    }

    pub fn db(&self) -> &Database {
        &self.db
    }

    /// Creates the first key-encryption key if there is none (once, across replicas), and
    /// checks the active one opens with the master key.
    pub async fn open_keys(&self) -> Result<(), CredentialsError> {
        let mut tx = self.db.begin().await?;
        let state: Option<(i64,)> =
            sqlx::query_as("SELECT active_version FROM encryption_state WHERE name = 'kek'")
                .fetch_optional(&mut *tx)
                .await?;
        if state.is_none() {
            sqlx::query(
                "INSERT INTO encryption_keys (version, sealed_key, create_time) VALUES (1, $1, $2)",
            )
            .bind(self.vault.new_kek(1))
            .bind(now_micros())
            .execute(&mut *tx)
            .await?;
            sqlx::query("INSERT INTO encryption_state (name, active_version) VALUES ('kek', 1)")
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        let mut conn = self.db.pool().acquire().await?;
        self.active(&mut conn).await?;
        Ok(())
    }

    /// The active key version and its key. On PostgreSQL the state row is share-locked for
    /// the transaction: a rotation (which locks it for update) waits for this secret to commit,
    /// so its re-wrap sees it and never retires the key it was sealed under.
    async fn active(&self, conn: &mut AnyConnection) -> Result<(u64, Key), CredentialsError> {
        let lock = match self.db.backend() {
            Backend::Postgres => " FOR SHARE",
            Backend::Sqlite => "",
        };
        let (version,): (i64,) = sqlx::query_as(&format!(
            "SELECT active_version FROM encryption_state WHERE name = 'kek'{lock}"
        ))
        .fetch_one(&mut *conn)
        .await?;
        let version = version.max(0) as u64;
        Ok((version, self.kek(conn, version).await?))
    }

    async fn kek(&self, conn: &mut AnyConnection, version: u64) -> Result<Key, CredentialsError> {
        let sealed: Option<(Option<Vec<u8>>,)> =
            sqlx::query_as("SELECT sealed_key FROM encryption_keys WHERE version = $1")
                .bind(version as i64)
                .fetch_optional(&mut *conn)
                .await?;
        Ok(self
            .vault
            .kek(version, sealed.and_then(|(s,)| s).as_deref())?)
    }

    async fn insert_secret(
        &self,
        conn: &mut AnyConnection,
        id: &str,
        version: u64,
        plaintext: &[u8],
    ) -> Result<(), CredentialsError> {
        let (key_version, kek) = self.active(conn).await?;
        let sealed = self.vault.seal(&kek, key_version, id, version, plaintext);
        sqlx::query(
            "INSERT INTO credential_secrets (credential_id, version, sealed_secret, wrapped_key, \
             key_version, create_time) VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(id)
        .bind(version as i64)
        .bind(sealed.sealed_secret)
        .bind(sealed.wrapped_key)
        .bind(sealed.key_version as i64)
        .bind(now_micros())
        .execute(&mut *conn)
        .await?;
        Ok(())
    }

    pub async fn create(
        &self,
        credential: &Credential,
        secret: &[u8],
        meta: &Metadata,
        cause: &Cause,
    ) -> Result<Credential, CredentialsError> {
        let id = uuid::Uuid::now_v7().to_string();
        let now = now_micros();
        let expire = meta.not_after.or(credential
            .expire_time
            .as_ref()
            .map(opsconductor_platform::time::to_micros));
        let mut tx = self.db.begin().await?;
        let inserted = sqlx::query(
            "INSERT INTO credentials (id, name, description, kind, username, secret_version, \
             algorithm, fingerprint, subject, issuer, expire_time, rotate_time, create_time, \
             update_time, revealable_by) \
             VALUES ($1, $2, $3, $4, $5, 1, $6, $7, $8, $9, $10, $11, $11, $11, $12)",
        )
        .bind(&id)
        .bind(&credential.name)
        .bind(&credential.description)
        .bind(i64::from(credential.kind))
        .bind(&credential.username)
        .bind(&meta.algorithm)
        .bind(&meta.fingerprint)
        .bind(&meta.subject)
        .bind(&meta.issuer)
        .bind(expire)
        .bind(now)
        .bind(credential.revealable_by.join(","))
        .execute(&mut *tx)
        .await;
        match inserted {
            Ok(_) => {}
            Err(e) if is_unique_violation(&e) => {
                return Err(CredentialsError::NameTaken(credential.name.clone()))
            }
            Err(e) => return Err(e.into()),
        }
        self.insert_secret(&mut tx, &id, 1, secret).await?;
        let details = [
            ("name", credential.name.clone()),
            ("kind", kind_name(credential.kind)),
        ];
        self.audit
            .record(
                &mut tx,
                cause,
                "credential.create",
                ("credential", &id),
                &details,
            )
            .await?;
        self.audit.commit(tx).await?;
        self.get(&id).await
    }

    pub async fn get(&self, id: &str) -> Result<Credential, CredentialsError> {
        Ok(self.versioned(id).await?.0)
    }

    /// The credential and the update time it was read at (for optimistic updates).
    pub async fn versioned(&self, id: &str) -> Result<(Credential, i64), CredentialsError> {
        let row =
            sqlx::query_as::<_, CredentialRow>(&format!("SELECT {COLUMNS} {FROM} WHERE c.id = $1"))
                .bind(id)
                .fetch_optional(self.db.pool())
                .await?
                .ok_or_else(|| CredentialsError::NotFound(id.to_string()))?;
        let version = row.update_time;
        Ok((row.into_credential(), version))
    }

    pub async fn list(
        &self,
        filter: &CredentialFilter,
        page: &Page,
    ) -> Result<(Vec<Credential>, String), CredentialsError> {
        let mut select = Select::new(format!("SELECT {COLUMNS} {FROM} WHERE 1 = 1"));
        if let Some(kind) = filter.kind {
            select.and("c.kind = {}", kind);
        }
        if !filter.names.is_empty() {
            select.and_in("c.name IN ({})", &filter.names);
        }
        if let Some(before) = filter.expire_before {
            select.and("c.expire_time < {}", before);
        }
        page.apply(&mut select, "c.id");
        let rows: Vec<CredentialRow> = select.fetch_all(self.db.pool()).await?;
        let mut credentials: Vec<Credential> = rows
            .into_iter()
            .map(CredentialRow::into_credential)
            .collect();
        let token = page.finish(&mut credentials, |c| &c.id);
        Ok((credentials, token))
    }

    /// Writes the metadata fields of `credential` if unchanged since `expected_update_time`.
    pub async fn update(
        &self,
        credential: &Credential,
        expected_update_time: i64,
        fields: &[String],
        cause: &Cause,
    ) -> Result<Credential, CredentialsError> {
        let now = now_micros().max(expected_update_time + 1);
        let mut tx = self.db.begin().await?;
        let updated = sqlx::query(
            "UPDATE credentials SET name = $1, description = $2, username = $3, \
             expire_time = $4, update_time = $5, revealable_by = $6 \
             WHERE id = $7 AND update_time = $8",
        )
        .bind(&credential.name)
        .bind(&credential.description)
        .bind(&credential.username)
        .bind(
            credential
                .expire_time
                .as_ref()
                .map(opsconductor_platform::time::to_micros),
        )
        .bind(now)
        .bind(credential.revealable_by.join(","))
        .bind(&credential.id)
        .bind(expected_update_time)
        .execute(&mut *tx)
        .await;
        let done = match updated {
            Ok(done) => done,
            Err(e) if is_unique_violation(&e) => {
                return Err(CredentialsError::NameTaken(credential.name.clone()))
            }
            Err(e) => return Err(e.into()),
        };
        if done.rows_affected() == 0 {
            drop(tx);
            self.get(&credential.id).await?;
            return Err(CredentialsError::Conflict(credential.id.clone()));
        }
        let details = [("fields", fields.join(","))];
        self.audit
            .record(
                &mut tx,
                cause,
                "credential.update",
                ("credential", &credential.id),
                &details,
            )
            .await?;
        self.audit.commit(tx).await?;
        self.get(&credential.id).await
    }

    /// Deletes a credential and every sealed version of its secret; `referenced_by` are the
    /// targets still naming it when an administrator forced it.
    pub async fn delete(
        &self,
        id: &str,
        referenced_by: &[String],
        cause: &Cause,
    ) -> Result<(), CredentialsError> {
        let mut tx = self.db.begin().await?;
        sqlx::query("DELETE FROM credential_secrets WHERE credential_id = $1")
            .bind(id)
            .execute(&mut *tx)
            .await?;
        let done = sqlx::query("DELETE FROM credentials WHERE id = $1")
            .bind(id)
            .execute(&mut *tx)
            .await?;
        if done.rows_affected() == 0 {
            return Err(CredentialsError::NotFound(id.to_string()));
        }
        let details = [("forced_past_targets", referenced_by.join(","))];
        self.audit
            .record(
                &mut tx,
                cause,
                "credential.delete",
                ("credential", id),
                &details,
            )
            .await?;
        self.audit.commit(tx).await?;
        Ok(())
    }

    /// A new version of the secret; the previous one stays revealable until `grace_until`.
    pub async fn rotate(
        &self,
        id: &str,
        secret: &[u8],
        meta: &Metadata,
        expire_time: Option<i64>,
        grace_until: i64,
        cause: &Cause,
    ) -> Result<Credential, CredentialsError> {
        let mut tx = self.db.begin().await?;
        let current: Option<(i64,)> =
            sqlx::query_as("SELECT secret_version FROM credentials WHERE id = $1")
                .bind(id)
                .fetch_optional(&mut *tx)
                .await?;
        let Some((current,)) = current else {
            return Err(CredentialsError::NotFound(id.to_string()));
        };
        let next = current.max(0) as u64 + 1;
        sqlx::query(
            "UPDATE credential_secrets SET revealable_until = $1 \
             WHERE credential_id = $2 AND version = $3",
        )
        .bind(grace_until)
        .bind(id)
        .bind(current)
        .execute(&mut *tx)
        .await?;
        self.insert_secret(&mut tx, id, next, secret).await?;
        let now = now_micros();
        sqlx::query(
            "UPDATE credentials SET secret_version = $1, algorithm = $2, fingerprint = $3, \
             subject = $4, issuer = $5, expire_time = $6, rotate_time = $7, \
             update_time = CASE WHEN update_time >= $7 THEN update_time + 1 ELSE $7 END \
             WHERE id = $8",
        )
        .bind(next as i64)
        .bind(&meta.algorithm)
        .bind(&meta.fingerprint)
        .bind(&meta.subject)
        .bind(&meta.issuer)
        .bind(meta.not_after.or(expire_time))
        .bind(now)
        .bind(id)
        .execute(&mut *tx)
        .await?;
        // Versions whose grace is over are destroyed, not kept.
        sqlx::query(
            "DELETE FROM credential_secrets WHERE credential_id = $1 \
             AND revealable_until IS NOT NULL AND revealable_until <= $2",
        )
        .bind(id)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        let details = [("secret_version", next.to_string())];
        self.audit
            .record(
                &mut tx,
                cause,
                "credential.rotate",
                ("credential", id),
                &details,
            )
            .await?;
        self.audit.commit(tx).await?;
        self.get(id).await
    }

    /// The plaintext of a secret version (`None`: the current one), while it may be revealed.
    pub async fn secret(
        &self,
        id: &str,
        version: Option<u64>,
    ) -> Result<(Credential, u64, Zeroizing<Vec<u8>>), CredentialsError> {
        let credential = self.get(id).await?;
        let version = version.unwrap_or(u64::from(credential.secret_version));
        // A rotation may re-wrap the row and retire its key between the two reads: read again.
        let (kek, sealed) = match self.sealed(id, version).await {
            Err(CredentialsError::Vault(VaultError::KeyGone(_))) => {
                self.sealed(id, version).await?
            }
            other => other?,
        };
        let plaintext = self.vault.open(&kek, id, version, &sealed)?;
        Ok((credential, version, plaintext))
    }

    /// A secret version's sealed row with the key-encryption key it is wrapped under.
    async fn sealed(&self, id: &str, version: u64) -> Result<(Key, Sealed), CredentialsError> {
        let row: Option<SecretRow> = sqlx::query_as(
            "SELECT sealed_secret, wrapped_key, key_version, revealable_until \
             FROM credential_secrets WHERE credential_id = $1 AND version = $2",
        )
        .bind(id)
        .bind(version as i64)
        .fetch_optional(self.db.pool())
        .await?;
        let row = row
            .filter(|r| r.revealable_until.is_none_or(|until| until > now_micros()))
            .ok_or(CredentialsError::VersionGone(version))?;
        let mut conn = self.db.pool().acquire().await?;
        let key_version = row.key_version.max(0) as u64;
        let kek = self.kek(&mut conn, key_version).await?;
        Ok((
            kek,
            Sealed {
                sealed_secret: row.sealed_secret,
                wrapped_key: row.wrapped_key,
                key_version,
            },
        ))
    }

    pub async fn reveal_record(
        &self,
        caller: &str,
        key: &str,
    ) -> Result<Option<RevealRecord>, CredentialsError> {
        let row: Option<(String, String, i64, String)> = sqlx::query_as(
            "SELECT request_hash, credential_id, secret_version, audit_event_id FROM reveals \
             WHERE caller = $1 AND idempotency_key = $2",
        )
        .bind(caller)
        .bind(key)
        .fetch_optional(self.db.pool())
        .await?;
        Ok(row.map(
            |(request_hash, credential_id, version, audit_event_id)| RevealRecord {
                request_hash,
                credential_id,
                secret_version: version.max(0) as u64,
                audit_event_id,
            },
        ))
    }

    /// Records a reveal: its idempotency key (`(caller, key)`, kept from the first call), its
    /// own audit event (every accepted reveal has one, a retry too), the credential's last
    /// reveal time. Returns the audit event's id.
    pub async fn record_reveal(
        &self,
        (caller, key): (&str, &str),
        request_hash: &str,
        id: &str,
        version: u64,
        cause: &Cause,
        details: &[(&str, String)],
    ) -> Result<String, CredentialsError> {
        let mut tx = self.db.begin().await?;
        let event = self
            .audit
            .record(
                &mut tx,
                cause,
                "credential.reveal",
                ("credential", id),
                details,
            )
            .await?;
        let now = now_micros();
        let inserted = sqlx::query(
            "INSERT INTO reveals (caller, idempotency_key, request_hash, credential_id, \
             secret_version, audit_event_id, create_time) VALUES ($1, $2, $3, $4, $5, $6, $7) \
             ON CONFLICT (caller, idempotency_key) DO NOTHING",
        )
        .bind(caller)
        .bind(key)
        .bind(request_hash)
        .bind(id)
        .bind(version as i64)
        .bind(&event)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        if inserted.rows_affected() == 0 {
            // A retry (or the same key revealed concurrently): the key is remembered already;
            // this reveal still gets its own event, unless the key was taken by another request.
            let first = sqlx::query_as::<_, (String,)>(
                "SELECT request_hash FROM reveals WHERE caller = $1 AND idempotency_key = $2",
            )
            .bind(caller)
            .bind(key)
            .fetch_optional(&mut *tx)
            .await?;
            if first.is_some_and(|(hash,)| hash != request_hash) {
                return Err(CredentialsError::KeyReused);
            }
        }
        sqlx::query("UPDATE credentials SET last_reveal_time = $1 WHERE id = $2")
            .bind(now)
            .bind(id)
            .execute(&mut *tx)
            .await?;
        self.audit.commit(tx).await?;
        Ok(event)
    }

    /// Audits a refused reveal (or another refused action on a credential); returns the
    /// event's id.
    pub async fn audit_refused(
        &self,
        cause: &Cause,
        action: &str,
        id: &str,
        details: &[(&str, String)],
    ) -> Result<String, CredentialsError> {
        let mut tx = self.db.begin().await?;
        let event = self
            .audit
            .record_outcome(
                &mut tx,
                cause,
                action,
                ("credential", id),
                opsconductor_api::audit::v1::AuditOutcome::Denied,
                details,
            )
            .await?;
        self.audit.commit(tx).await?;
        Ok(event)
    }

    /// Starts (or finds the interrupted) rotation away from `expected` (0: the active version).
    pub async fn begin_rotation(
        &self,
        expected: u64,
        cause: &Cause,
    ) -> Result<KeyVersions, CredentialsError> {
        let mut tx = self.db.begin().await?;
        let lock = match self.db.backend() {
            Backend::Postgres => " FOR UPDATE",
            Backend::Sqlite => "",
        };
        let (active,): (i64,) = sqlx::query_as(&format!(
            "SELECT active_version FROM encryption_state WHERE name = 'kek'{lock}"
        ))
        .fetch_one(&mut *tx)
        .await?;
        let active = active.max(0) as u64;
        let expected = if expected == 0 { active } else { expected };
        if active == expected + 1 {
            // Already rotated from it (a retry, or another replica): finish that rotation.
            return Ok(KeyVersions {
                previous: expected,
                active,
            });
        }
        if active != expected {
            return Err(CredentialsError::KeyVersionMismatch { expected, active });
        }
        let next = active + 1;
        sqlx::query(
            "INSERT INTO encryption_keys (version, sealed_key, create_time) VALUES ($1, $2, $3)",
        )
        .bind(next as i64)
        .bind(self.vault.new_kek(next))
        .bind(now_micros())
        .execute(&mut *tx)
        .await?;
        sqlx::query("UPDATE encryption_state SET active_version = $1 WHERE name = 'kek'")
            .bind(next as i64)
            .execute(&mut *tx)
            .await?;
        let details = [("key_version", next.to_string())];
        self.audit
            .record(
                &mut tx,
                cause,
                "credential.key_rotate",
                ("encryption_key", ""),
                &details,
            )
            .await?;
        self.audit.commit(tx).await?;
        Ok(KeyVersions {
            previous: active,
            active: next,
        })
    }

    /// Re-wraps up to `limit` data keys still under an older version, in one transaction;
    /// rows another replica is re-wrapping are skipped. Returns how many it re-wrapped.
    pub async fn rewrap_batch(&self, active: u64, limit: i64) -> Result<usize, CredentialsError> {
        let mut tx = self.db.begin().await?;
        let skip_locked = match self.db.backend() {
            Backend::Postgres => " FOR UPDATE SKIP LOCKED",
            Backend::Sqlite => "",
        };
        let rows: Vec<(String, i64, Vec<u8>, i64)> = sqlx::query_as(&format!(
            "SELECT credential_id, version, wrapped_key, key_version FROM credential_secrets \
             WHERE key_version < $1 ORDER BY credential_id, version LIMIT $2{skip_locked}"
        ))
        .bind(active as i64)
        .bind(limit)
        .fetch_all(&mut *tx)
        .await?;
        let new = self.kek(&mut tx, active).await?;
        let mut done = 0;
        for (id, version, wrapped, from) in rows {
            let from = from.max(0) as u64;
            let old = self.kek(&mut tx, from).await?;
            let rewrapped = self.vault.rewrap(
                &old,
                from,
                &new,
                active,
                &id,
                version.max(0) as u64,
                &wrapped,
            )?;
            let updated = sqlx::query(
                "UPDATE credential_secrets SET wrapped_key = $1, key_version = $2 \
                 WHERE credential_id = $3 AND version = $4 AND key_version = $5",
            )
            .bind(rewrapped)
            .bind(active as i64)
            .bind(&id)
            .bind(version)
            .bind(from as i64)
            .execute(&mut *tx)
            .await?;
            done += updated.rows_affected() as usize;
        }
        tx.commit().await?;
        Ok(done)
    }

    /// Retires (erases) every older key version nothing is wrapped under any more.
    pub async fn retire_unused(&self, active: u64) -> Result<Vec<u64>, CredentialsError> {
        let mut tx = self.db.begin().await?;
        let unused: Vec<(i64,)> = sqlx::query_as(
            "SELECT k.version FROM encryption_keys k WHERE k.version < $1 \
             AND k.retire_time IS NULL AND NOT EXISTS \
             (SELECT 1 FROM credential_secrets s WHERE s.key_version = k.version)",
        )
        .bind(active as i64)
        .fetch_all(&mut *tx)
        .await?;
        for (version,) in &unused {
            sqlx::query(
                "UPDATE encryption_keys SET sealed_key = NULL, retire_time = $1 WHERE version = $2",
            )
            .bind(now_micros())
            .bind(version)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        let retired: Vec<u64> = unused.into_iter().map(|(v,)| v.max(0) as u64).collect();
        for version in &retired {
            self.vault.forget(*version);
        }
        Ok(retired)
    }

    /// Data keys still wrapped under a version older than the active one (an unfinished
    /// rotation), with the active version.
    pub async fn unfinished_rotation(&self) -> Result<Option<u64>, CredentialsError> {
        let (active,): (i64,) =
            sqlx::query_as("SELECT active_version FROM encryption_state WHERE name = 'kek'")
                .fetch_one(self.db.pool())
                .await?;
        let (behind,): (i64,) =
            sqlx::query_as("SELECT COUNT(*) FROM credential_secrets WHERE key_version < $1")
                .bind(active)
                .fetch_one(self.db.pool())
                .await?;
        Ok((behind > 0).then_some(active.max(0) as u64))
    }

    /// Publishes `credential.expiring` for every credential expiring before `horizon` (and not
    /// yet expired long ago) that has not had one for this expiry; returns how many.
    pub async fn notify_expiring(&self, now: i64, horizon: i64) -> Result<usize, CredentialsError> {
        let due: Vec<(String, String, i64, i64)> = sqlx::query_as(
            "SELECT c.id, c.name, c.kind, c.expire_time FROM credentials c \
             WHERE c.expire_time IS NOT NULL AND c.expire_time < $1 AND c.expire_time > $2 \
             AND NOT EXISTS (SELECT 1 FROM expiry_notices n \
             WHERE n.credential_id = c.id AND n.expire_time = c.expire_time)",
        )
        .bind(horizon)
        .bind(now)
        .fetch_all(self.db.pool())
        .await?;
        let mut sent = 0;
        for (id, name, kind, expire) in due {
            let mut tx = self.db.begin().await?;
            let claimed = sqlx::query(
                "INSERT INTO expiry_notices (credential_id, expire_time, notify_time) \
                 VALUES ($1, $2, $3) ON CONFLICT (credential_id, expire_time) DO NOTHING",
            )
            .bind(&id)
            .bind(expire)
            .bind(now)
            .execute(&mut *tx)
            .await?;
            if claimed.rows_affected() == 0 {
                continue; // another replica sent it
            }
            let event = CredentialExpiring {
                credential_id: id.clone(),
                name,
                kind: kind as i32,
                expire_time: Some(to_timestamp(expire)),
                days_left: ((expire - now).max(0) / 86_400_000_000).min(u32::MAX as i64) as u32,
            };
            let message = OutgoingMessage::new(
                self.events_exchange.clone(),
                crate::CREDENTIAL_EXPIRING,
                &event,
            );
            self.outbox.stage(&mut tx, &message).await?;
            self.outbox.commit(tx).await?;
            sent += 1;
        }
        Ok(sent)
    }
}

fn kind_name(kind: i32) -> String {
    CredentialKind::try_from(kind)
        .map(|k| k.as_str_name().to_string())
        .unwrap_or_else(|_| kind.to_string())
}
