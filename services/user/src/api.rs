//! The generated `UserService` trait, implemented over [`UserStore`]. Each trait method only
//! unwraps the request and wraps the answer; the inherent method of the same name does the work.

use std::sync::Arc;

use opsconductor_api::auth::v1::{RevocationReason, RevokeAllTokensRequest};
use opsconductor_api::common::v1::Role;
use opsconductor_api::user::v1::user_service_server::UserService;
use opsconductor_api::user::v1::*;
use opsconductor_messaging::Cause;
use opsconductor_platform::client::Clients;
use opsconductor_platform::page::Page;
use opsconductor_platform::principal::Principal;
use opsconductor_platform::rate_limit::{peer, CredentialThrottle};
use opsconductor_platform::validate::{require_id, required, Violations};
use opsconductor_platform::ApiError;
use tonic::{Request, Response, Status};

use crate::store::{UserFilter, UserStore};
use crate::{password, preferences, validate, UserError};

const MUTABLE_FIELDS: [&str; 4] = ["email", "display_name", "role", "disabled"];
/// What users may change about themselves; the rest is for administrators.
const SELF_FIELDS: [&str; 2] = ["email", "display_name"];

type Result<T> = std::result::Result<T, UserError>;

pub struct UserApi {
    store: UserStore,
    clients: Arc<Clients>,
    /// Failed current-password checks, per user and per peer.
    throttle: CredentialThrottle,
}

fn denied(message: &str) -> UserError {
    UserError::Forbidden(message.to_string())
}

impl UserApi {
    pub fn new(store: UserStore, clients: Arc<Clients>, throttle: CredentialThrottle) -> Self {
        UserApi {
            store,
            clients,
            throttle,
        }
    }

    /// Ends every session and access token of a user whose standing changed (disabled,
    /// deleted, new password, new role), through the auth service. One attempt now; if the
    /// auth service cannot be reached, retries continue in the background (refreshes are
    /// refused meanwhile anyway: the auth service checks the user on each).
    async fn revoke_tokens(&self, user_id: &str, reason: RevocationReason) {
        let request = RevokeAllTokensRequest {
            user_id: user_id.to_string(),
            reason: reason as i32,
        };
        let first = tokio::time::timeout(
            std::time::Duration::from_secs(2),
            self.clients.auth().revoke_all_tokens(request.clone()),
        )
        .await;
        if matches!(first, Ok(Ok(_))) {
            return;
        }
        let clients = self.clients.clone();
        let user_id = user_id.to_string();
        tokio::spawn(async move {
            let mut delay = std::time::Duration::from_millis(500);
            for _ in 0..8 {
                tokio::time::sleep(delay).await;
                match clients.auth().revoke_all_tokens(request.clone()).await {
                    Ok(_) => return,
                    Err(status) => {
                        let error = ApiError::from_status(&status);
                        tracing::warn!(%user_id, code = ?error.code(), reason = error.reason(),
                            %error, "revoking tokens failed; retrying");
                    }
                }
                delay = (delay * 2).min(std::time::Duration::from_secs(30));
            }
            tracing::error!(%user_id, "could not revoke the user's tokens; they expire within 15 minutes");
        });
    }

    async fn create(&self, req: CreateUserRequest, cause: &Cause) -> Result<User> {
        let user = required("user", req.user)?;
        let mut v = Violations::new();
        validate::username(&mut v, "user.username", &user.username);
        validate::user_fields(&mut v, "user", &user);
        if !req.password.is_empty() {
            validate::new_password(&mut v, "password", &req.password);
        }
        v.finish()?;
        let hash = if req.password.is_empty() {
            None
        } else {
            Some(password::hash(req.password).await?)
        };
        let user = self.store.create(&user, hash, cause).await?;
        tracing::info!(user_id = %user.id, username = %user.username, "user created");
        Ok(user)
    }

    async fn get(&self, req: GetUserRequest) -> Result<User> {
        require_id("id", &req.id)?;
        self.store.get(&req.id).await
    }

    async fn list(&self, req: ListUsersRequest) -> Result<ListUsersResponse> {
        let mut v = Violations::new();
        let page = Page::parse(req.page_size, &req.page_token, &mut v);
        let role = match Role::try_from(req.role) {
            Ok(Role::Unspecified) => None,
            Ok(role) => Some(role as i32),
            Err(_) => {
                v.add("role", format!("{} is not a role", req.role));
                None
            }
        };
        if !req.username.is_empty() {
            validate::username(&mut v, "username", &req.username);
        }
        v.finish()?;
        let filter = UserFilter {
            role,
            username: (!req.username.is_empty()).then_some(req.username),
            show_disabled: req.show_disabled,
        };
        let (users, next_page_token) = self.store.list(&filter, &page).await?;
        Ok(ListUsersResponse {
            users,
            next_page_token,
        })
    }

    async fn update(
        &self,
        req: UpdateUserRequest,
        principal: &Principal,
        cause: &Cause,
    ) -> Result<User> {
        let mut v = Violations::new();
        let patch = required("user", req.user)?;
        v.id("user.id", &patch.id);
        // A user's own update may only name the fields they may change.
        let allowed: &[&str] = if principal.is_admin() {
            &MUTABLE_FIELDS
        } else {
            &SELF_FIELDS
        };
        let paths = v.update_mask(req.update_mask.clone(), &MUTABLE_FIELDS);
        v.finish()?;
        if !principal.may_act_for(&patch.id) {
            return Err(denied("users may update only themselves"));
        }
        if let Some(path) = paths.iter().find(|p| !allowed.contains(&p.as_str())) {
            return Err(denied(&format!("only administrators change {path}")));
        }
        // Read, merge the masked fields, validate the result, write if unchanged meanwhile.
        let (mut user, version) = self.store.version(&patch.id).await?;
        for path in &paths {
            match path.as_str() {
                "email" => user.email = patch.email.clone(),
                "display_name" => user.display_name = patch.display_name.clone(),
                "role" => user.role = patch.role,
                "disabled" => user.disabled = patch.disabled,
                _ => {}
            }
        }
        let mut v = Violations::new();
        validate::user_fields(&mut v, "user", &user);
        v.finish()?;
        let user = self.store.update(&user, version, &paths, cause).await?;
        tracing::info!(user_id = %user.id, "user updated");
        if paths.iter().any(|p| p == "disabled") && user.disabled {
            self.revoke_tokens(&user.id, RevocationReason::UserDisabled)
                .await;
        } else if paths.iter().any(|p| p == "role") {
            self.revoke_tokens(&user.id, RevocationReason::RevokeAll)
                .await;
        }
        Ok(user)
    }

    async fn delete(&self, req: DeleteUserRequest, cause: &Cause) -> Result<()> {
        require_id("id", &req.id)?;
        self.store.delete(&req.id, cause).await?;
        tracing::info!(user_id = %req.id, "user deleted");
        self.revoke_tokens(&req.id, RevocationReason::UserDisabled)
            .await;
        Ok(())
    }

    async fn set_password(&self, req: SetPasswordRequest, cause: &Cause) -> Result<()> {
        let mut v = Violations::new();
        v.id("user_id", &req.user_id);
        validate::new_password(&mut v, "new_password", &req.new_password);
        v.finish()?;
        // Existence first: hashing costs tens of milliseconds.
        self.store.get(&req.user_id).await?;
        let hash = password::hash(req.new_password).await?;
        self.store
            .set_password_hash(&req.user_id, hash, "user.password_set", cause)
            .await?;
        tracing::info!(user_id = %req.user_id, "password set");
        self.revoke_tokens(&req.user_id, RevocationReason::PasswordChanged)
            .await;
        Ok(())
    }

    async fn change_password(
        &self,
        req: ChangePasswordRequest,
        principal: &Principal,
        cause: &Cause,
        peer: Option<std::net::IpAddr>,
    ) -> Result<()> {
        let mut v = Violations::new();
        v.id("user_id", &req.user_id);
        v.required("current_password", &req.current_password);
        validate::new_password(&mut v, "new_password", &req.new_password);
        v.check(
            req.new_password != req.current_password,
            "new_password",
            "must differ from the current password",
        );
        v.finish()?;
        if principal.user_id() != Some(req.user_id.as_str()) {
            return Err(denied(
                "users change only their own password; administrators use SetPassword",
            ));
        }
        // Someone holding a user's session could otherwise guess the password behind it.
        self.throttle.check(&req.user_id, peer)?;
        let Some(hash) = self.store.password_hash(&req.user_id).await? else {
            return Err(UserError::PasswordNotSet(req.user_id));
        };
        if !password::verify(req.current_password, Some(hash)).await? {
            self.throttle.failed(&req.user_id, peer);
            self.store
                .audit_failure(cause, "user.password_change", &req.user_id, &[])
                .await?;
            return Err(UserError::WrongPassword);
        }
        let new_hash = password::hash(req.new_password).await?;
        self.store
            .set_password_hash(&req.user_id, new_hash, "user.password_change", cause)
            .await?;
        tracing::info!(user_id = %req.user_id, "password changed");
        self.revoke_tokens(&req.user_id, RevocationReason::PasswordChanged)
            .await;
        Ok(())
    }

    /// The check behind login (the auth service throttles sign-in attempts); a failed check
    /// is audited here too.
    async fn check_password(
        &self,
        req: CheckPasswordRequest,
        cause: &Cause,
    ) -> Result<CheckPasswordResponse> {
        let mut v = Violations::new();
        v.required("username", &req.username);
        v.required("password", &req.password);
        v.max_chars("username", &req.username, 64);
        v.max_chars("password", &req.password, password::MAX_LEN);
        v.finish()?;
        let found = self.store.credentials_by_username(&req.username).await?;
        let (user, hash) = match found {
            Some(c) => (Some(c.user), c.password_hash),
            None => (None, None),
        };
        let matches = password::verify(req.password, hash).await?;
        let valid = matches && user.as_ref().is_some_and(|u| !u.disabled);
        if !valid {
            let user_id = user.as_ref().map(|u| u.id.as_str()).unwrap_or("");
            let details = [("username", req.username.clone())];
            self.store
                .audit_failure(cause, "user.password_check", user_id, &details)
                .await?;
        }
        Ok(CheckPasswordResponse {
            valid,
            user: if valid { user } else { None },
        })
    }

    async fn get_preferences(
        &self,
        req: GetNotificationPreferencesRequest,
        principal: &Principal,
    ) -> Result<NotificationPreferences> {
        require_id("user_id", &req.user_id)?;
        // A service (notification) reads anyone's; a user, their own unless administrator.
        if principal.user.is_some() && !principal.may_act_for(&req.user_id) {
            return Err(denied("users read only their own preferences"));
        }
        let user = self.store.get(&req.user_id).await?;
        Ok(match self.store.preferences(&req.user_id).await? {
            Some(p) => p,
            None => preferences::defaults(&user),
        })
    }

    async fn update_preferences(
        &self,
        req: UpdateNotificationPreferencesRequest,
        principal: &Principal,
        cause: &Cause,
    ) -> Result<NotificationPreferences> {
        let prefs = required("preferences", req.preferences)?;
        let mut v = Violations::new();
        preferences::validate(&mut v, &prefs);
        v.finish()?;
        if !principal.may_act_for(&prefs.user_id) {
            return Err(denied("users manage only their own preferences"));
        }
        self.store.put_preferences(&prefs, cause).await
    }
}

#[tonic::async_trait]
impl UserService for UserApi {
    async fn create_user(
        &self,
        request: Request<CreateUserRequest>,
    ) -> std::result::Result<Response<CreateUserResponse>, Status> {
        let cause = Cause::from_request(&request);
        let user = self.create(request.into_inner(), &cause).await?;
        Ok(Response::new(CreateUserResponse { user: Some(user) }))
    }

    async fn get_user(
        &self,
        request: Request<GetUserRequest>,
    ) -> std::result::Result<Response<GetUserResponse>, Status> {
        let user = self.get(request.into_inner()).await?;
        Ok(Response::new(GetUserResponse { user: Some(user) }))
    }

    async fn list_users(
        &self,
        request: Request<ListUsersRequest>,
    ) -> std::result::Result<Response<ListUsersResponse>, Status> {
        Ok(Response::new(self.list(request.into_inner()).await?))
    }

    async fn update_user(
        &self,
        request: Request<UpdateUserRequest>,
    ) -> std::result::Result<Response<UpdateUserResponse>, Status> {
        let cause = Cause::from_request(&request);
        let principal = Principal::require(&request)?.clone();
        let user = self
            .update(request.into_inner(), &principal, &cause)
            .await?;
        Ok(Response::new(UpdateUserResponse { user: Some(user) }))
    }

    async fn delete_user(
        &self,
        request: Request<DeleteUserRequest>,
    ) -> std::result::Result<Response<DeleteUserResponse>, Status> {
        let cause = Cause::from_request(&request);
        self.delete(request.into_inner(), &cause).await?;
        Ok(Response::new(DeleteUserResponse {}))
    }

    async fn set_password(
        &self,
        request: Request<SetPasswordRequest>,
    ) -> std::result::Result<Response<SetPasswordResponse>, Status> {
        let cause = Cause::from_request(&request);
        self.set_password(request.into_inner(), &cause).await?;
        Ok(Response::new(SetPasswordResponse {}))
    }

    async fn change_password(
        &self,
        request: Request<ChangePasswordRequest>,
    ) -> std::result::Result<Response<ChangePasswordResponse>, Status> {
        let cause = Cause::from_request(&request);
        let principal = Principal::require(&request)?.clone();
        let peer = peer(&request);
        self.change_password(request.into_inner(), &principal, &cause, peer)
            .await?;
        Ok(Response::new(ChangePasswordResponse {}))
    }

    async fn check_password(
        &self,
        request: Request<CheckPasswordRequest>,
    ) -> std::result::Result<Response<CheckPasswordResponse>, Status> {
        let cause = Cause::from_request(&request);
        Ok(Response::new(
            self.check_password(request.into_inner(), &cause).await?,
        ))
    }

    async fn get_notification_preferences(
        &self,
        request: Request<GetNotificationPreferencesRequest>,
    ) -> std::result::Result<Response<GetNotificationPreferencesResponse>, Status> {
        let principal = Principal::require(&request)?.clone();
        let preferences = self
            .get_preferences(request.into_inner(), &principal)
            .await?;
        Ok(Response::new(GetNotificationPreferencesResponse {
            preferences: Some(preferences),
        }))
    }

    async fn update_notification_preferences(
        &self,
        request: Request<UpdateNotificationPreferencesRequest>,
    ) -> std::result::Result<Response<UpdateNotificationPreferencesResponse>, Status> {
        let cause = Cause::from_request(&request);
        let principal = Principal::require(&request)?.clone();
        let prefs = self
            .update_preferences(request.into_inner(), &principal, &cause)
            .await?;
        Ok(Response::new(UpdateNotificationPreferencesResponse {
            preferences: Some(prefs),
        }))
    }
}
