//! Users and preferences in SQLite or PostgreSQL, with portable SQL.

use opsconductor_api::audit::v1::AuditOutcome;
use opsconductor_api::common::v1::Role;
use opsconductor_api::user::v1::{NotificationPreferences, User};
use opsconductor_messaging::{AuditLog, Cause};
use opsconductor_platform::page::Page;
use opsconductor_platform::time::{now_micros, to_timestamp};
use opsconductor_storage::{is_unique_violation, Database, Select};
use prost::Message;

use crate::UserError;

/// No Debug: the row carries the password hash.
#[derive(Clone, sqlx::FromRow)]
struct UserRow {
    id: String,
    username: String,
    email: String,
    display_name: String,
    role: i64,
    disabled: i64,
    password_hash: Option<String>,
    create_time: i64,
    update_time: i64,
}

const COLUMNS: &str =
    "id, username, email, display_name, role, disabled, password_hash, create_time, update_time";

impl UserRow {
    fn into_user(self) -> User {
        User {
            id: self.id,
            username: self.username,
            email: self.email,
            display_name: self.display_name,
            role: self.role as i32,
            disabled: self.disabled != 0,
            password_set: self.password_hash.is_some(),
            create_time: Some(to_timestamp(self.create_time)),
            update_time: Some(to_timestamp(self.update_time)),
        }
    }
}

/// A user with its password hash, for the password check.
pub struct Credentials {
    pub user: User,
    pub password_hash: Option<String>,
}

/// Filters of a user listing.
#[derive(Debug, Default)]
pub struct UserFilter {
    pub role: Option<i32>,
    pub username: Option<String>,
    pub show_disabled: bool,
}

/// Every change is written with its audit event, in one transaction.
#[derive(Clone)]
pub struct UserStore {
    db: Database,
    audit: AuditLog,
}

fn role_name(role: i32) -> String {
    Role::try_from(role)
        .map(|r| r.as_str_name().to_string())
        .unwrap_or_else(|_| role.to_string())
}

impl UserStore {
    pub fn new(db: Database, audit: AuditLog) -> Self {
        UserStore { db, audit }
    }

    pub fn db(&self) -> &Database {
        &self.db
    }

    /// Inserts a validated user; the username must be free.
    pub async fn create(
        &self,
        user: &User,
        password_hash: Option<String>,
        cause: &Cause,
    ) -> Result<User, UserError> {
        let id = uuid::Uuid::now_v7().to_string();
        let now = now_micros();
        let mut tx = self.db.begin().await?;
        let result = sqlx::query(&format!(
            "INSERT INTO users ({COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $8)"
        ))
        .bind(&id)
        .bind(&user.username)
        .bind(&user.email)
        .bind(&user.display_name)
        .bind(i64::from(user.role))
        .bind(i64::from(user.disabled))
        .bind(password_hash.clone())
        .bind(now)
        .execute(&mut *tx)
        .await;
        match result {
            Ok(_) => {}
            Err(e) if is_unique_violation(&e) => {
                return Err(UserError::UsernameTaken(user.username.clone()))
            }
            Err(e) => return Err(e.into()),
        }
        let details = [
            ("username", user.username.clone()),
            ("role", role_name(user.role)),
            ("password_set", password_hash.is_some().to_string()),
        ];
        self.audit
            .record(&mut tx, cause, "user.create", ("user", &id), &details)
            .await?;
        self.audit.commit(tx).await?;
        self.get(&id).await
    }

    async fn row(&self, id: &str) -> Result<UserRow, UserError> {
        sqlx::query_as::<_, UserRow>(&format!("SELECT {COLUMNS} FROM users WHERE id = $1"))
            .bind(id)
            .fetch_optional(self.db.pool())
            .await?
            .ok_or_else(|| UserError::NotFound(id.to_string()))
    }

    pub async fn get(&self, id: &str) -> Result<User, UserError> {
        Ok(self.row(id).await?.into_user())
    }

    pub async fn credentials_by_username(
        &self,
        username: &str,
    ) -> Result<Option<Credentials>, UserError> {
        let row = sqlx::query_as::<_, UserRow>(&format!(
            "SELECT {COLUMNS} FROM users WHERE username = $1"
        ))
        .bind(username)
        .fetch_optional(self.db.pool())
        .await?;
        Ok(row.map(|row| {
            let password_hash = row.password_hash.clone();
            Credentials {
                user: row.into_user(),
                password_hash,
            }
        }))
    }

    pub async fn password_hash(&self, id: &str) -> Result<Option<String>, UserError> {
        Ok(self.row(id).await?.password_hash)
    }

    pub async fn list(
        &self,
        filter: &UserFilter,
        page: &Page,
    ) -> Result<(Vec<User>, String), UserError> {
        let mut select = Select::new(format!("SELECT {COLUMNS} FROM users WHERE 1 = 1"));
        if let Some(role) = filter.role {
            select.and("role = {}", role);
        }
        if let Some(username) = &filter.username {
            select.and("username = {}", username);
        }
        if !filter.show_disabled {
            select.push(" AND disabled = 0");
        }
        page.apply(&mut select, "id");
        let rows: Vec<UserRow> = select.fetch_all(self.db.pool()).await?;
        let mut users: Vec<User> = rows.into_iter().map(UserRow::into_user).collect();
        let token = page.finish(&mut users, |u| &u.id);
        Ok((users, token))
    }

    /// Writes the mutable fields of `user` if the row is still at `expected_update_time`
    /// (optimistic concurrency: a concurrent writer is never silently overwritten). `fields`
    /// are the ones the caller changed, for the audit trail.
    pub async fn update(
        &self,
        user: &User,
        expected_update_time: i64,
        fields: &[String],
        cause: &Cause,
    ) -> Result<User, UserError> {
        let now = now_micros().max(expected_update_time + 1);
        let mut tx = self.db.begin().await?;
        let done = sqlx::query(
            "UPDATE users SET email = $1, display_name = $2, role = $3, disabled = $4, \
             update_time = $5 WHERE id = $6 AND update_time = $7",
        )
        .bind(&user.email)
        .bind(&user.display_name)
        .bind(i64::from(user.role))
        .bind(i64::from(user.disabled))
        .bind(now)
        .bind(&user.id)
        .bind(expected_update_time)
        .execute(&mut *tx)
        .await?;
        if done.rows_affected() == 0 {
            drop(tx);
            // Gone, or changed since it was read.
            self.row(&user.id).await?;
            return Err(UserError::Conflict(user.id.clone()));
        }
        let details = [
            ("fields", fields.join(",")),
            ("role", role_name(user.role)),
            ("disabled", user.disabled.to_string()),
        ];
        self.audit
            .record(&mut tx, cause, "user.update", ("user", &user.id), &details)
            .await?;
        self.audit.commit(tx).await?;
        self.get(&user.id).await
    }

    /// The update time of the stored row, as written (for optimistic updates).
    pub async fn version(&self, id: &str) -> Result<(User, i64), UserError> {
        let row = self.row(id).await?;
        let version = row.update_time;
        Ok((row.into_user(), version))
    }

    /// Stores a new password hash; `action` says whose doing it was ("user.password_set" by
    /// an administrator, "user.password_change" by the user).
    pub async fn set_password_hash(
        &self,
        id: &str,
        hash: String,
        action: &str,
        cause: &Cause,
    ) -> Result<(), UserError> {
        let mut tx = self.db.begin().await?;
        // update_time only moves forward, even if the clock steps back: it is the row's version.
        let done = sqlx::query(
            "UPDATE users SET password_hash = $1, \
             update_time = CASE WHEN update_time >= $2 THEN update_time + 1 ELSE $2 END \
             WHERE id = $3",
        )
        .bind(hash)
        .bind(now_micros())
        .bind(id)
        .execute(&mut *tx)
        .await?;
        if done.rows_affected() == 0 {
            return Err(UserError::NotFound(id.to_string()));
        }
        self.audit
            .record(&mut tx, cause, action, ("user", id), &[])
            .await?;
        self.audit.commit(tx).await?;
        Ok(())
    }

    /// Records a refused credential check (`action` on `user_id`, which may be empty for an
    /// unknown username) in the audit trail, on its own.
    pub async fn audit_failure(
        &self,
        cause: &Cause,
        action: &str,
        user_id: &str,
        details: &[(&str, String)],
    ) -> Result<(), UserError> {
        let mut tx = self.db.begin().await?;
        self.audit
            .record_outcome(
                &mut tx,
                cause,
                action,
                ("user", user_id),
                AuditOutcome::Failure,
                details,
            )
            .await?;
        self.audit.commit(tx).await?;
        Ok(())
    }

    pub async fn delete(&self, id: &str, cause: &Cause) -> Result<User, UserError> {
        let mut tx = self.db.begin().await?;
        let row =
            sqlx::query_as::<_, UserRow>(&format!("SELECT {COLUMNS} FROM users WHERE id = $1"))
                .bind(id)
                .fetch_optional(&mut *tx)
                .await?
                .ok_or_else(|| UserError::NotFound(id.to_string()))?;
        sqlx::query("DELETE FROM notification_preferences WHERE user_id = $1")
            .bind(id)
            .execute(&mut *tx)
            .await?;
        let done = sqlx::query("DELETE FROM users WHERE id = $1")
            .bind(id)
            .execute(&mut *tx)
            .await?;
        if done.rows_affected() == 0 {
            return Err(UserError::NotFound(id.to_string()));
        }
        let details = [("username", row.username.clone())];
        self.audit
            .record(&mut tx, cause, "user.delete", ("user", id), &details)
            .await?;
        self.audit.commit(tx).await?;
        Ok(row.into_user())
    }

    pub async fn preferences(
        &self,
        id: &str,
    ) -> Result<Option<NotificationPreferences>, UserError> {
        let row: Option<(Vec<u8>, i64)> = sqlx::query_as(
            "SELECT body, update_time FROM notification_preferences WHERE user_id = $1",
        )
        .bind(id)
        .fetch_optional(self.db.pool())
        .await?;
        match row {
            None => Ok(None),
            Some((body, update_time)) => {
                let mut prefs = NotificationPreferences::decode(body.as_slice())
                    .map_err(|e| UserError::Corrupt(id.to_string(), e))?;
                prefs.update_time = Some(to_timestamp(update_time));
                Ok(Some(prefs))
            }
        }
    }

    /// Replaces a user's preferences (the user must exist).
    pub async fn put_preferences(
        &self,
        prefs: &NotificationPreferences,
        cause: &Cause,
    ) -> Result<NotificationPreferences, UserError> {
        let mut stored = prefs.clone();
        stored.update_time = None;
        let now = now_micros();
        let mut tx = self.db.begin().await?;
        let exists: Option<(String,)> = sqlx::query_as("SELECT id FROM users WHERE id = $1")
            .bind(&prefs.user_id)
            .fetch_optional(&mut *tx)
            .await?;
        if exists.is_none() {
            return Err(UserError::NotFound(prefs.user_id.clone()));
        }
        sqlx::query(
            "INSERT INTO notification_preferences (user_id, body, update_time) VALUES ($1, $2, $3) \
             ON CONFLICT (user_id) DO UPDATE SET body = excluded.body, update_time = excluded.update_time",
        )
        .bind(&prefs.user_id)
        .bind(stored.encode_to_vec())
        .bind(now)
        .execute(&mut *tx)
        .await?;
        // Which channels, not where to: destinations can embed tokens.
        let channels: Vec<String> = prefs
            .destinations
            .iter()
            .map(|d| d.channel.to_string())
            .collect();
        let details = [("channels", channels.join(","))];
        self.audit
            .record(
                &mut tx,
                cause,
                "user.preferences_update",
                ("user", &prefs.user_id),
                &details,
            )
            .await?;
        self.audit.commit(tx).await?;
        stored.update_time = Some(to_timestamp(now));
        Ok(stored)
    }
}
