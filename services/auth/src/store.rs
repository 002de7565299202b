//! Sessions, refresh tokens, token versions, service identities and revocations, in SQLite or
//! PostgreSQL. Refresh tokens and service secrets are stored as SHA-256 digests only.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use opsconductor_api::auth::v1::{Session, TokenRevoked};
use opsconductor_api::common::v1::Actor;
use opsconductor_platform::page::{Page, MAX_PAGE_SIZE};
use opsconductor_platform::time::{now_micros, to_micros, to_timestamp};
use opsconductor_storage::{Database, Select};
use sha2::{Digest, Sha256};
use sqlx::AnyConnection;

use crate::AuthServiceError;

/// A refresh token's digest, as stored.
pub fn token_digest(token: &str) -> String {
    URL_SAFE_NO_PAD.encode(Sha256::digest(token.as_bytes()))
}

/// A service secret's digest: hex, so an operator can compute it with `sha256sum`.
pub fn secret_digest(secret: &str) -> String {
    Sha256::digest(secret.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Equality that takes the same time wherever the first difference is.
pub fn same(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct SessionRow {
    pub id: String,
    pub user_id: String,
    pub token_version: i64,
    pub client_address: String,
    pub user_agent: String,
    pub create_time: i64,
    pub refresh_time: i64,
    pub expire_time: i64,
    pub end_time: Option<i64>,
}

const SESSION_COLUMNS: &str = "id, user_id, token_version, client_address, user_agent, \
    create_time, refresh_time, expire_time, end_time";

impl SessionRow {
    pub fn into_session(self) -> Session {
        Session {
            id: self.id,
            user_id: self.user_id,
            token_version: self.token_version.max(0) as u64,
            client_address: self.client_address,
            user_agent: self.user_agent,
            create_time: Some(to_timestamp(self.create_time)),
            refresh_time: Some(to_timestamp(self.refresh_time)),
            expire_time: Some(to_timestamp(self.expire_time)),
        }
    }

    /// Still usable at `now`: not ended, not expired.
    pub fn is_live(&self, now: i64) -> bool {
        self.end_time.is_none() && self.expire_time > now
    }
}

#[derive(sqlx::FromRow)]
struct RevocationRow {
    id: String,
    user_id: String,
    token_version: i64,
    session_id: String,
    kid: String,
    reason: i64,
    revoke_time: i64,
    actor_user_id: String,
    actor_service_id: String,
}

#[derive(Clone)]
pub struct AuthStore {
    db: Database,
}

impl AuthStore {
    pub fn new(db: Database) -> AuthStore {
        AuthStore { db }
    }

    pub fn db(&self) -> &Database {
        &self.db
    }

    pub async fn token_version(
        &self,
        conn: &mut AnyConnection,
        user_id: &str,
    ) -> Result<u64, AuthServiceError> {
        let row: Option<(i64,)> =
            sqlx::query_as("SELECT version FROM token_versions WHERE user_id = $1")
                .bind(user_id)
                .fetch_optional(&mut *conn)
                .await?;
        Ok(row.map(|(v,)| v.max(0) as u64).unwrap_or(0))
    }

    /// Raises a user's token version; returns the new one.
    pub async fn raise_version(
        &self,
        conn: &mut AnyConnection,
        user_id: &str,
    ) -> Result<u64, AuthServiceError> {
        sqlx::query(
            "INSERT INTO token_versions (user_id, version) VALUES ($1, 1) \
             ON CONFLICT (user_id) DO UPDATE SET version = token_versions.version + 1",
        )
        .bind(user_id)
        .execute(&mut *conn)
        .await?;
        self.token_version(conn, user_id).await
    }

    pub async fn create_session(
        &self,
        conn: &mut AnyConnection,
        session: &SessionRow,
        refresh_digest: &str,
    ) -> Result<(), AuthServiceError> {
        sqlx::query(&format!(
            "INSERT INTO sessions ({SESSION_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, NULL)"
        ))
        .bind(&session.id)
        .bind(&session.user_id)
        .bind(session.token_version)
        .bind(&session.client_address)
        .bind(&session.user_agent)
        .bind(session.create_time)
        .bind(session.refresh_time)
        .bind(session.expire_time)
        .execute(&mut *conn)
        .await?;
        self.add_refresh_token(conn, refresh_digest, &session.id)
            .await
    }

    pub async fn add_refresh_token(
        &self,
        conn: &mut AnyConnection,
        digest: &str,
        session_id: &str,
    ) -> Result<(), AuthServiceError> {
        sqlx::query(
            "INSERT INTO refresh_tokens (token_hash, session_id, create_time) VALUES ($1, $2, $3)",
        )
        .bind(digest)
        .bind(session_id)
        .bind(now_micros())
        .execute(&mut *conn)
        .await?;
        Ok(())
    }

    /// The session a refresh token belongs to, and whether the token was used already.
    pub async fn by_refresh_token(
        &self,
        digest: &str,
    ) -> Result<Option<(SessionRow, bool)>, AuthServiceError> {
        let row: Option<(String, Option<i64>)> = sqlx::query_as(
            "SELECT session_id, used_time FROM refresh_tokens WHERE token_hash = $1",
        )
        .bind(digest)
        .fetch_optional(self.db.pool())
        .await?;
        let Some((session_id, used)) = row else {
            return Ok(None);
        };
        Ok(self
            .session(&session_id)
            .await?
            .map(|session| (session, used.is_some())))
    }

    pub async fn session(&self, id: &str) -> Result<Option<SessionRow>, AuthServiceError> {
        Ok(sqlx::query_as::<_, SessionRow>(&format!(
            "SELECT {SESSION_COLUMNS} FROM sessions WHERE id = $1"
        ))
        .bind(id)
        .fetch_optional(self.db.pool())
        .await?)
    }

    /// Marks a refresh token used; false when it already was (a concurrent reuse).
    pub async fn use_refresh_token(
        &self,
        conn: &mut AnyConnection,
        digest: &str,
    ) -> Result<bool, AuthServiceError> {
        let done = sqlx::query(
            "UPDATE refresh_tokens SET used_time = $1 WHERE token_hash = $2 AND used_time IS NULL",
        )
        .bind(now_micros())
        .bind(digest)
        .execute(&mut *conn)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    pub async fn touch_session(
        &self,
        conn: &mut AnyConnection,
        id: &str,
        expire_time: i64,
    ) -> Result<(), AuthServiceError> {
        sqlx::query("UPDATE sessions SET refresh_time = $1, expire_time = $2 WHERE id = $3")
            .bind(now_micros())
            .bind(expire_time)
            .bind(id)
            .execute(&mut *conn)
            .await?;
        Ok(())
    }

    /// Ends a session unless it already ended; returns whether this call ended it.
    pub async fn end_session(
        &self,
        conn: &mut AnyConnection,
        id: &str,
        reason: i32,
    ) -> Result<bool, AuthServiceError> {
        let done = sqlx::query(
            "UPDATE sessions SET end_time = $1, end_reason = $2 WHERE id = $3 AND end_time IS NULL",
        )
        .bind(now_micros())
        .bind(i64::from(reason))
        .bind(id)
        .execute(&mut *conn)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Ends every live session of a user; returns how many.
    pub async fn end_user_sessions(
        &self,
        conn: &mut AnyConnection,
        user_id: &str,
        reason: i32,
    ) -> Result<u64, AuthServiceError> {
        let now = now_micros();
        let done = sqlx::query(
            "UPDATE sessions SET end_time = $1, end_reason = $2 \
             WHERE user_id = $3 AND end_time IS NULL AND expire_time > $1",
        )
        .bind(now)
        .bind(i64::from(reason))
        .bind(user_id)
        .execute(&mut *conn)
        .await?;
        Ok(done.rows_affected())
    }

    /// Live sessions, oldest first, of one user or of everyone.
    pub async fn live_sessions(
        &self,
        user_id: Option<&str>,
        page: &Page,
    ) -> Result<(Vec<Session>, String), AuthServiceError> {
        let mut select = Select::new(format!(
            "SELECT {SESSION_COLUMNS} FROM sessions WHERE end_time IS NULL"
        ));
        select.and("expire_time > {}", now_micros());
        if let Some(user_id) = user_id {
            select.and("user_id = {}", user_id);
        }
        page.apply(&mut select, "id");
        let rows: Vec<SessionRow> = select.fetch_all(self.db.pool()).await?;
        let mut sessions: Vec<Session> = rows.into_iter().map(SessionRow::into_session).collect();
        let token = page.finish(&mut sessions, |s| &s.id);
        Ok((sessions, token))
    }

    /// Makes the stored identities exactly `identities` (id, hex digest of the secret).
    pub async fn sync_identities(
        &self,
        identities: &[(String, String)],
    ) -> Result<(), AuthServiceError> {
        let mut tx = self.db.begin().await?;
        sqlx::query("DELETE FROM service_identities")
            .execute(&mut *tx)
            .await?;
        for (id, digest) in identities {
            sqlx::query(
                "INSERT INTO service_identities (service_id, secret_hash, update_time) VALUES ($1, $2, $3)",
            )
            .bind(id)
            .bind(digest)
            .bind(now_micros())
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    pub async fn identity_digest(
        &self,
        service_id: &str,
    ) -> Result<Option<String>, AuthServiceError> {
        let row: Option<(String,)> =
            sqlx::query_as("SELECT secret_hash FROM service_identities WHERE service_id = $1")
                .bind(service_id)
                .fetch_optional(self.db.pool())
                .await?;
        Ok(row.map(|(d,)| d))
    }

    pub async fn record_revocation(
        &self,
        conn: &mut AnyConnection,
        event: &TokenRevoked,
    ) -> Result<(), AuthServiceError> {
        let actor = event.actor.clone().unwrap_or_default();
        let at = event
            .revoke_time
            .as_ref()
            .map(to_micros)
            .unwrap_or_else(now_micros);
        sqlx::query(
            "INSERT INTO revocations (id, user_id, token_version, session_id, kid, reason, \
             revoke_time, actor_user_id, actor_service_id) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
        )
        .bind(uuid::Uuid::now_v7().to_string())
        .bind(&event.user_id)
        .bind(event.token_version.min(i64::MAX as u64) as i64)
        .bind(&event.session_id)
        .bind(&event.kid)
        .bind(i64::from(event.reason))
        .bind(at)
        .bind(actor.user_id)
        .bind(actor.service_id)
        .execute(&mut *conn)
        .await?;
        Ok(())
    }

    /// Revocations since `since` (micros), oldest first.
    pub async fn revocations_since(
        &self,
        since: i64,
    ) -> Result<Vec<TokenRevoked>, AuthServiceError> {
        let mut all = Vec::new();
        let mut page = Page {
            size: MAX_PAGE_SIZE,
            after: None,
        };
        loop {
            let (mut rows, next) = self.revocations_page(since, &page).await?;
            page.after = rows.last().map(|(id, _)| id.clone());
            all.extend(rows.drain(..).map(|(_, event)| event));
            if next.is_empty() {
                return Ok(all);
            }
        }
    }

    /// One page of the revocations since `since` (micros), oldest first, with their ids; and
    /// the next page's token.
    pub async fn revocations_page(
        &self,
        since: i64,
        page: &Page,
    ) -> Result<(Vec<(String, TokenRevoked)>, String), AuthServiceError> {
        let mut select = Select::new(
            "SELECT id, user_id, token_version, session_id, kid, reason, revoke_time, \
             actor_user_id, actor_service_id FROM revocations WHERE 1 = 1",
        );
        select.and("revoke_time > {}", since);
        page.apply(&mut select, "id");
        let rows: Vec<RevocationRow> = select.fetch_all(self.db.pool()).await?;
        let mut events: Vec<(String, TokenRevoked)> = rows
            .into_iter()
            .map(|r| {
                let event = TokenRevoked {
                    user_id: r.user_id,
                    token_version: r.token_version.max(0) as u64,
                    session_id: r.session_id,
                    kid: r.kid,
                    reason: r.reason as i32,
                    revoke_time: Some(to_timestamp(r.revoke_time)),
                    actor: Some(Actor {
                        user_id: r.actor_user_id,
                        service_id: r.actor_service_id,
                    }),
                };
                (r.id, event)
            })
            .collect();
        let next = page.finish(&mut events, |(id, _)| id);
        Ok((events, next))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digests_and_comparison() {
        assert_eq!(
            secret_digest("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert!(same("abc", "abc"));
        assert!(!same("abc", "abd"));
        assert!(!same("abc", "ab"));
        assert_ne!(token_digest("a"), token_digest("b"));
    }
}
