//! The first administrator. `OPSCONDUCTOR_ADMIN_PASSWORD` (or `_FILE`) names the password of
//! the user `OPSCONDUCTOR_ADMIN_USERNAME` (default "admin"), created at start-up if no user has
//! that name. An existing user is never touched: changing the variable later does not reset a
//! password. There is no built-in default password.

use opsconductor_api::common::v1::Role;
use opsconductor_api::user::v1::User;
use opsconductor_messaging::Cause;
use opsconductor_platform::config::{ConfigError, Env};
use opsconductor_platform::validate::Violations;

use crate::store::UserStore;
use crate::{password, validate, UserError};

/// Who to create when no such user exists. Debug never shows the password.
pub struct AdminBootstrap {
    pub username: String,
    password: String,
}

impl std::fmt::Debug for AdminBootstrap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdminBootstrap")
            .field("username", &self.username)
            .finish_non_exhaustive()
    }
}

impl AdminBootstrap {
    /// None when no admin password is configured.
    pub fn from_env(env: &Env) -> Result<Option<AdminBootstrap>, ConfigError> {
        let Some(password) = env.secret("OPSCONDUCTOR_ADMIN_PASSWORD")? else {
            return Ok(None);
        };
        let username = env
            .get("OPSCONDUCTOR_ADMIN_USERNAME")
            .unwrap_or_else(|| "admin".to_string());
        let mut v = Violations::new();
        validate::username(&mut v, "OPSCONDUCTOR_ADMIN_USERNAME", &username);
        if !v.is_empty() {
            return Err(ConfigError::invalid(
                "OPSCONDUCTOR_ADMIN_USERNAME",
                &username,
                "3-64 characters of a-z, 0-9, '.', '_' and '-', starting with a letter",
            ));
        }
        let mut v = Violations::new();
        validate::new_password(&mut v, "password", &password);
        if !v.is_empty() {
            return Err(ConfigError::invalid(
                "OPSCONDUCTOR_ADMIN_PASSWORD",
                "",
                format!(
                    "must be {}-{} characters",
                    password::MIN_LEN,
                    password::MAX_LEN
                ),
            ));
        }
        Ok(Some(AdminBootstrap { username, password }))
    }

    /// Creates the administrator unless a user of that name exists; returns whether it did.
    pub async fn apply(&self, store: &UserStore) -> Result<bool, UserError> {
        if store
            .credentials_by_username(&self.username)
            .await?
            .is_some()
        {
            return Ok(false);
        }
        let user = User {
            username: self.username.clone(),
            email: format!("{}@localhost", self.username),
            display_name: "Administrator".into(),
            role: Role::Admin as i32,
            ..Default::default()
        };
        let hash = password::hash(self.password.clone()).await?;
        match store
            .create(&user, Some(hash), &Cause::service("user"))
            .await
        {
            Ok(created) => {
                tracing::info!(user_id = %created.id, username = %created.username, "administrator created");
                Ok(true)
            }
            // Another replica created it first.
            Err(UserError::UsernameTaken(_)) => Ok(false),
            Err(e) => Err(e),
        }
    }
}
