//! The generated `AuthService` trait: sign-in, rotating refresh tokens, logout and revoke-all,
//! service tokens, the JWKS, key rotation, sessions and revocations. Each trait method only
//! unwraps the request and wraps the answer; the inherent method of the same name does the work.

use std::net::IpAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use opsconductor_api::audit::v1::AuditOutcome;
use opsconductor_api::auth::v1::auth_service_server::AuthService;
use opsconductor_api::auth::v1::*;
use opsconductor_api::common::v1::Role;
use opsconductor_api::user::v1::{CheckPasswordRequest, GetUserRequest, User};
use opsconductor_messaging::topology::platform::TOKEN_REVOKED;
use opsconductor_messaging::{AuditLog, Cause, Outbox, OutgoingMessage};
use opsconductor_platform::auth::Verifier;
use opsconductor_platform::client::Clients;
use opsconductor_platform::page::Page;
use opsconductor_platform::principal::{role_name, Principal};
use opsconductor_platform::rate_limit::{peer, CredentialThrottle};
use opsconductor_platform::time::{now_micros, now_secs, to_timestamp};
use opsconductor_platform::validate::Violations;
use opsconductor_platform::ApiError;
use opsconductor_tokens::{Claims, SigningKey, VerifyingKey};
use sqlx::AnyConnection;
use tonic::{Code, Request, Response, Status};

use crate::keys::KeyRing;
use crate::settings::AuthSettings;
use crate::store::{same, secret_digest, token_digest, AuthStore, SessionRow};
use crate::{AuthCounters, AuthServiceError};

pub struct AuthApi {
    pub(crate) store: AuthStore,
    pub(crate) keys: Arc<KeyRing>,
    pub(crate) settings: Arc<AuthSettings>,
    pub(crate) clients: Arc<Clients>,
    pub(crate) verifier: Arc<Verifier>,
    pub(crate) audit: AuditLog,
    pub(crate) outbox: Outbox,
    /// The broker name of the exchange TokenRevoked is broadcast on.
    pub(crate) revocations_exchange: String,
    /// Failed sign-ins and service-token exchanges, per account and per peer.
    pub(crate) throttle: CredentialThrottle,
    pub(crate) counters: Arc<AuthCounters>,
}

type Result<T> = std::result::Result<T, AuthServiceError>;

fn expiry(secs: u64) -> prost_types::Timestamp {
    prost_types::Timestamp::from(SystemTime::UNIX_EPOCH + Duration::from_secs(secs))
}

fn new_refresh_token() -> String {
    let bytes: [u8; 32] = rand::random();
    URL_SAFE_NO_PAD.encode(bytes)
}

fn truncate(text: &str, max: usize) -> String {
    text.chars().take(max).collect()
}

fn invalid(violations: Violations) -> Result<()> {
    violations.finish().map_err(AuthServiceError::Api)
}

/// Tokens of a session, as Login and RefreshToken answer them.
struct Issued {
    access_token: String,
    access_expire: prost_types::Timestamp,
    refresh_token: String,
    refresh_expire: prost_types::Timestamp,
}

impl AuthApi {
    fn user_claims(&self, user: &User, version: u64, session_id: &str) -> Claims {
        let role = Role::try_from(user.role).unwrap_or(Role::Unspecified);
        Claims::user(
            &self.settings.tokens.issuer,
            &self.settings.tokens.audience,
            &user.id,
            role_name(role),
            version,
            now_secs(),
            self.settings.access_ttl.as_secs(),
        )
        .with_session(session_id)
    }

    fn issue(
        &self,
        user: &User,
        version: u64,
        session_id: &str,
        refresh: String,
        refresh_expire: i64,
    ) -> Result<Issued> {
        let claims = self.user_claims(user, version, session_id);
        Ok(Issued {
            access_token: self.keys.sign(&claims)?,
            access_expire: expiry(claims.exp),
            refresh_token: refresh,
            refresh_expire: to_timestamp(refresh_expire),
        })
    }

    /// Records a revocation and stages its broadcast, signed by the active key, inside `tx`.
    /// Apply it locally with `self.verifier.revoke` once committed.
    async fn stage_revocation(
        &self,
        tx: &mut AnyConnection,
        cause: &Cause,
        event: TokenRevoked,
    ) -> Result<TokenRevoked> {
        self.stage_revocation_signed(tx, cause, event, &self.keys.active())
            .await
    }

    /// [`AuthApi::stage_revocation`], signed by `signer` (a rotation signs the revocation
    /// of the previous key with the new one).
    async fn stage_revocation_signed(
        &self,
        tx: &mut AnyConnection,
        cause: &Cause,
        mut event: TokenRevoked,
        signer: &SigningKey,
    ) -> Result<TokenRevoked> {
        event.revoke_time = Some(prost_types::Timestamp::from(SystemTime::now()));
        event.actor = Some(cause.actor.clone());
        self.store.record_revocation(tx, &event).await?;
        let message =
            OutgoingMessage::new(self.revocations_exchange.clone(), TOKEN_REVOKED, &event)
                .with_correlation_id(cause.request_id.clone())
                // Servers not connected right now catch up with ListRevocations.
                .broadcast()
                // Anyone who can publish to the broker could send one: servers apply only
                // what the auth service signed.
                .signed(signer);
        self.outbox.stage(tx, &message).await?;
        Ok(event)
    }

    /// Refuses a credential check while `account` or `peer` is over its failure limit.
    fn throttled(&self, account: &str, peer: Option<IpAddr>) -> Result<()> {
        self.throttle.check(account, peer).map_err(|refused| {
            self.counters.throttled.fetch_add(1, Ordering::Relaxed);
            tracing::info!(account = %truncate(account, 64), "credential check throttled");
            AuthServiceError::Api(refused)
        })
    }

    async fn login(
        &self,
        req: LoginRequest,
        mut cause: Cause,
        client: (String, String),
        peer: Option<IpAddr>,
    ) -> Result<LoginResponse> {
        let mut v = Violations::new();
        v.required_max("username", &req.username, 64);
        v.required_max("password", &req.password, 1024);
        invalid(v)?;
        self.throttled(&req.username, peer)?;
        let checked = self
            .clients
            .user()
            .check_password(CheckPasswordRequest {
                username: req.username.clone(),
                password: req.password,
            })
            .await;
        let user = match checked {
            Ok(response) => {
                let response = response.into_inner();
                response.user.filter(|_| response.valid)
            }
            // A username the user service finds malformed cannot match anyone.
            Err(status) if status.code() == Code::InvalidArgument => None,
            Err(status) => {
                return Err(AuthServiceError::UserService(ApiError::from_status(
                    &status,
                )))
            }
        };
        let Some(user) = user else {
            self.throttle.failed(&req.username, peer);
            let mut tx = self.store.db().begin().await?;
            let details = [("username", truncate(&req.username, 64))];
            self.audit
                .record_outcome(
                    &mut tx,
                    &cause,
                    "auth.login",
                    ("user", ""),
                    AuditOutcome::Failure,
                    &details,
                )
                .await?;
            self.audit.commit(tx).await?;
            tracing::info!("login refused");
            return Err(AuthServiceError::InvalidCredentials);
        };
        cause.actor.user_id = user.id.clone();
        let now = now_micros();
        let refresh = new_refresh_token();
        let mut tx = self.store.db().begin().await?;
        let version = self.store.token_version(&mut tx, &user.id).await?;
        let session = SessionRow {
            id: uuid::Uuid::now_v7().to_string(),
            user_id: user.id.clone(),
            token_version: version.min(i64::MAX as u64) as i64,
            client_address: client.0,
            user_agent: client.1,
            create_time: now,
            refresh_time: now,
            expire_time: now + self.settings.refresh_ttl.as_micros() as i64,
            end_time: None,
        };
        self.store
            .create_session(&mut tx, &session, &token_digest(&refresh))
            .await?;
        let details = [("session_id", session.id.clone())];
        self.audit
            .record(&mut tx, &cause, "auth.login", ("user", &user.id), &details)
            .await?;
        let issued = self.issue(&user, version, &session.id, refresh, session.expire_time)?;
        self.audit.commit(tx).await?;
        tracing::info!(user_id = %user.id, session_id = %session.id, "signed in");
        Ok(LoginResponse {
            access_token: issued.access_token,
            token_type: "Bearer".into(),
            access_token_expire_time: Some(issued.access_expire),
            refresh_token: issued.refresh_token,
            refresh_token_expire_time: Some(issued.refresh_expire),
            session_id: session.id,
            user_id: user.id,
            role: user.role,
        })
    }

    /// Ends a session because its refresh token came back a second time: whoever holds the
    /// family now, it is not only its owner. The family ends once: replaying the token again
    /// (or any token of the ended family) is refused with no effect but a counter, so replays
    /// cannot multiply revocations, broadcasts or audit events.
    async fn reuse_detected(&self, session: &SessionRow, cause: &Cause) -> Result<()> {
        let mut tx = self.store.db().begin().await?;
        let ended = self
            .store
            .end_session(
                &mut tx,
                &session.id,
                RevocationReason::RefreshTokenReuse as i32,
            )
            .await?;
        if !ended {
            drop(tx);
            self.counters
                .refresh_token_replays
                .fetch_add(1, Ordering::Relaxed);
            tracing::debug!(session_id = %session.id, "refresh token of an ended session replayed");
            return Ok(());
        }
        let event = self
            .stage_revocation(
                &mut tx,
                cause,
                TokenRevoked {
                    user_id: session.user_id.clone(),
                    session_id: session.id.clone(),
                    reason: RevocationReason::RefreshTokenReuse as i32,
                    ..Default::default()
                },
            )
            .await?;
        let details = [("session_id", session.id.clone())];
        self.audit
            .record_outcome(
                &mut tx,
                cause,
                "auth.refresh_token_reuse",
                ("user", &session.user_id),
                AuditOutcome::Denied,
                &details,
            )
            .await?;
        self.audit.commit(tx).await?;
        self.verifier.revoke(&event);
        tracing::warn!(user_id = %session.user_id, session_id = %session.id, "refresh token reused; session ended");
        Ok(())
    }

    async fn refresh(
        &self,
        req: RefreshTokenRequest,
        cause: Cause,
    ) -> Result<RefreshTokenResponse> {
        let mut v = Violations::new();
        v.required_max("refresh_token", &req.refresh_token, 512);
        invalid(v)?;
        let digest = token_digest(&req.refresh_token);
        let Some((session, used)) = self.store.by_refresh_token(&digest).await? else {
            return Err(AuthServiceError::InvalidRefreshToken);
        };
        if used {
            self.reuse_detected(&session, &cause).await?;
            return Err(AuthServiceError::InvalidRefreshToken);
        }
        let now = now_micros();
        if !session.is_live(now) {
            return Err(AuthServiceError::InvalidRefreshToken);
        }
        // The user's current state decides: disabled users cannot refresh, and a role change
        // shows in the next access token.
        let user = match self
            .clients
            .user()
            .get_user(GetUserRequest {
                id: session.user_id.clone(),
            })
            .await
        {
            Ok(response) => response.into_inner().user.filter(|u| !u.disabled),
            Err(status) if status.code() == Code::NotFound => None,
            Err(status) => {
                return Err(AuthServiceError::UserService(ApiError::from_status(
                    &status,
                )))
            }
        };
        let mut tx = self.store.db().begin().await?;
        let version = self.store.token_version(&mut tx, &session.user_id).await?;
        let Some(user) = user.filter(|_| version <= session.token_version.max(0) as u64) else {
            self.store
                .end_session(&mut tx, &session.id, RevocationReason::UserDisabled as i32)
                .await?;
            tx.commit().await?;
            return Err(AuthServiceError::InvalidRefreshToken);
        };
        if !self.store.use_refresh_token(&mut tx, &digest).await? {
            // Another exchange of the same token won the race: a reuse.
            drop(tx);
            self.reuse_detected(&session, &cause).await?;
            return Err(AuthServiceError::InvalidRefreshToken);
        }
        let refresh = new_refresh_token();
        let expire = now + self.settings.refresh_ttl.as_micros() as i64;
        self.store
            .add_refresh_token(&mut tx, &token_digest(&refresh), &session.id)
            .await?;
        self.store
            .touch_session(&mut tx, &session.id, expire)
            .await?;
        let issued = self.issue(&user, version, &session.id, refresh, expire)?;
        tx.commit().await?;
        Ok(RefreshTokenResponse {
            access_token: issued.access_token,
            token_type: "Bearer".into(),
            access_token_expire_time: Some(issued.access_expire),
            refresh_token: issued.refresh_token,
            refresh_token_expire_time: Some(issued.refresh_expire),
            session_id: session.id,
            user_id: user.id,
            role: user.role,
        })
    }

    async fn logout(&self, req: LogoutRequest, principal: &Principal, cause: Cause) -> Result<()> {
        let mut v = Violations::new();
        v.required_max("refresh_token", &req.refresh_token, 512);
        invalid(v)?;
        let Some((session, _)) = self
            .store
            .by_refresh_token(&token_digest(&req.refresh_token))
            .await?
        else {
            return Err(AuthServiceError::SessionNotFound(
                "(by refresh token)".into(),
            ));
        };
        if !principal.may_act_for(&session.user_id) {
            return Err(
                ApiError::PermissionDenied("the session belongs to another user".into()).into(),
            );
        }
        let mut tx = self.store.db().begin().await?;
        if !self
            .store
            .end_session(&mut tx, &session.id, RevocationReason::Logout as i32)
            .await?
        {
            return Ok(());
        }
        let event = self
            .stage_revocation(
                &mut tx,
                &cause,
                TokenRevoked {
                    user_id: session.user_id.clone(),
                    session_id: session.id.clone(),
                    reason: RevocationReason::Logout as i32,
                    ..Default::default()
                },
            )
            .await?;
        let details = [("session_id", session.id.clone())];
        self.audit
            .record(
                &mut tx,
                &cause,
                "auth.logout",
                ("user", &session.user_id),
                &details,
            )
            .await?;
        self.audit.commit(tx).await?;
        self.verifier.revoke(&event);
        Ok(())
    }

    async fn revoke_all(
        &self,
        req: RevokeAllTokensRequest,
        principal: &Principal,
        cause: Cause,
    ) -> Result<RevokeAllTokensResponse> {
        let mut v = Violations::new();
        v.id("user_id", &req.user_id);
        let reason = match RevocationReason::try_from(req.reason) {
            Ok(RevocationReason::Unspecified) => RevocationReason::RevokeAll,
            Ok(reason) => reason,
            Err(_) => {
                v.add(
                    "reason",
                    format!("{} is not a revocation reason", req.reason),
                );
                RevocationReason::RevokeAll
            }
        };
        invalid(v)?;
        let by_user_service =
            principal.service.as_deref() == Some("user") && principal.user.is_none();
        if !by_user_service && !principal.may_act_for(&req.user_id) {
            return Err(ApiError::PermissionDenied(
                "only administrators revoke other users' tokens".into(),
            )
            .into());
        }
        let mut tx = self.store.db().begin().await?;
        let version = self.store.raise_version(&mut tx, &req.user_id).await?;
        let ended = self
            .store
            .end_user_sessions(&mut tx, &req.user_id, reason as i32)
            .await?;
        let event = self
            .stage_revocation(
                &mut tx,
                &cause,
                TokenRevoked {
                    user_id: req.user_id.clone(),
                    token_version: version,
                    reason: reason as i32,
                    ..Default::default()
                },
            )
            .await?;
        let details = [
            ("reason", reason.as_str_name().to_string()),
            ("token_version", version.to_string()),
        ];
        self.audit
            .record(
                &mut tx,
                &cause,
                "auth.revoke_all",
                ("user", &req.user_id),
                &details,
            )
            .await?;
        self.audit.commit(tx).await?;
        self.verifier.revoke(&event);
        tracing::info!(user_id = %req.user_id, version, ended, "all tokens of a user revoked");
        Ok(RevokeAllTokensResponse {
            token_version: version,
            ended_session_count: ended.min(u64::from(u32::MAX)) as u32,
            revoke_time: event.revoke_time,
        })
    }

    async fn exchange(
        &self,
        req: ExchangeServiceTokenRequest,
        cause: Cause,
        peer: Option<IpAddr>,
    ) -> Result<ExchangeServiceTokenResponse> {
        let mut v = Violations::new();
        v.required_max("service_id", &req.service_id, 64);
        v.required_max("service_secret", &req.service_secret, 512);
        let message_key = match req.message_key.len() {
            0 => None,
            _ => {
                let key = <[u8; 32]>::try_from(req.message_key.as_slice())
                    .ok()
                    .and_then(|bytes| VerifyingKey::from_bytes(&bytes).ok());
                v.check(
                    key.is_some(),
                    "message_key",
                    "must be an Ed25519 public key (32 bytes) when set",
                );
                key
            }
        };
        invalid(v)?;
        // Service secrets are 256 bits; the limit keeps a broken client from filling the
        // audit trail, and is per service id so one cannot lock another out.
        let account = format!("service:{}", req.service_id);
        self.throttled(&account, peer)?;
        let presented = secret_digest(&req.service_secret);
        let known = self.store.identity_digest(&req.service_id).await?;
        if !known.is_some_and(|stored| same(&stored, &presented)) {
            self.throttle.failed(&account, peer);
            let mut tx = self.store.db().begin().await?;
            let details = [("service_id", truncate(&req.service_id, 64))];
            self.audit
                .record_outcome(
                    &mut tx,
                    &cause,
                    "auth.service_token",
                    ("service", ""),
                    AuditOutcome::Failure,
                    &details,
                )
                .await?;
            self.audit.commit(tx).await?;
            tracing::warn!(service_id = %truncate(&req.service_id, 64), "service credentials refused");
            return Err(AuthServiceError::InvalidServiceCredentials);
        }
        let claims = Claims::service(
            &self.settings.tokens.issuer,
            &self.settings.tokens.audience,
            &req.service_id,
            now_secs(),
            self.settings.service_ttl.as_secs(),
        );
        let message_key_certificate = message_key
            .map(|key| {
                self.keys
                    .certify_producer(&req.service_id, &key, claims.iat, claims.exp)
            })
            .unwrap_or_default();
        Ok(ExchangeServiceTokenResponse {
            access_token: self.keys.sign(&claims)?,
            token_type: "Bearer".into(),
            expire_time: Some(expiry(claims.exp)),
            message_key_certificate,
        })
    }

    async fn rotate(
        &self,
        req: RotateSigningKeyRequest,
        cause: Cause,
    ) -> Result<RotateSigningKeyResponse> {
        let mut tx = self.store.db().begin().await?;
        let rotation = self.keys.rotate(&mut tx, req.revoke_previous).await?;
        let revoked = if req.revoke_previous {
            // Signed by the new key: the revoked one leaves the JWKS at once, and servers
            // that refetch it could no longer check a signature made with it.
            Some(
                self.stage_revocation_signed(
                    &mut tx,
                    &cause,
                    TokenRevoked {
                        kid: rotation.previous_kid.clone(),
                        reason: RevocationReason::KeyRetired as i32,
                        ..Default::default()
                    },
                    &rotation.signer,
                )
                .await?,
            )
        } else {
            None
        };
        let details = [
            ("kid", rotation.key.kid.clone()),
            ("previous_kid", rotation.previous_kid.clone()),
            ("revoke_previous", req.revoke_previous.to_string()),
        ];
        self.audit
            .record(
                &mut tx,
                &cause,
                "auth.key_rotate",
                ("signing_key", &rotation.key.kid),
                &details,
            )
            .await?;
        self.audit.commit(tx).await?;
        self.keys.reload().await?;
        if let Some(event) = revoked {
            self.verifier.revoke(&event);
        }
        tracing::info!(kid = %rotation.key.kid, previous = %rotation.previous_kid, "signing key rotated");
        Ok(RotateSigningKeyResponse {
            key: Some(rotation.key),
            previous_kid: rotation.previous_kid,
            previous_retire_time: Some(to_timestamp(rotation.previous_expire_time)),
        })
    }
}

impl AuthApi {
    async fn list_sessions(
        &self,
        req: ListSessionsRequest,
        principal: &Principal,
    ) -> Result<ListSessionsResponse> {
        let mut v = Violations::new();
        let page = Page::parse(req.page_size, &req.page_token, &mut v);
        if req.user_id.is_empty() {
            v.check(
                principal.is_admin(),
                "user_id",
                "is required unless you are an administrator",
            );
        } else {
            v.id("user_id", &req.user_id);
        }
        invalid(v)?;
        if !req.user_id.is_empty() && !principal.may_act_for(&req.user_id) {
            return Err(ApiError::PermissionDenied(
                "only administrators list other users' sessions".into(),
            )
            .into());
        }
        let user = (!req.user_id.is_empty()).then_some(req.user_id.as_str());
        let (sessions, next_page_token) = self.store.live_sessions(user, &page).await?;
        Ok(ListSessionsResponse {
            sessions,
            next_page_token,
        })
    }

    /// Revocations within the longest token lifetime (plus skew), a bounded page at a time.
    async fn list_revocations(
        &self,
        req: ListRevocationsRequest,
    ) -> Result<ListRevocationsResponse> {
        let mut v = Violations::new();
        let page = Page::parse(req.page_size, &req.page_token, &mut v);
        invalid(v)?;
        let page = Page {
            // The default page is the largest: a catch-up takes as few calls as it can.
            size: if req.page_size == 0 {
                opsconductor_platform::page::MAX_PAGE_SIZE
            } else {
                page.size
            },
            ..page
        };
        let keep = self.settings.max_token_lifetime() + opsconductor_platform::auth::CLOCK_SKEW;
        let since = now_micros() - keep.as_micros() as i64;
        let (events, next_page_token) = self.store.revocations_page(since, &page).await?;
        Ok(ListRevocationsResponse {
            revocations: events.into_iter().map(|(_, event)| event).collect(),
            next_page_token,
        })
    }
}

fn client_of<T>(request: &Request<T>) -> (String, String) {
    let address = request
        .remote_addr()
        .map(|a| a.ip().to_string())
        .unwrap_or_default();
    let agent = request
        .metadata()
        .get("user-agent")
        .and_then(|v| v.to_str().ok())
        .map(|s| truncate(s, 256))
        .unwrap_or_default();
    (address, agent)
}

#[tonic::async_trait]
impl AuthService for AuthApi {
    async fn login(
        &self,
        request: Request<LoginRequest>,
    ) -> std::result::Result<Response<LoginResponse>, Status> {
        let cause = Cause::from_request(&request);
        let client = client_of(&request);
        let peer = peer(&request);
        Ok(Response::new(
            self.login(request.into_inner(), cause, client, peer)
                .await?,
        ))
    }

    async fn refresh_token(
        &self,
        request: Request<RefreshTokenRequest>,
    ) -> std::result::Result<Response<RefreshTokenResponse>, Status> {
        let cause = Cause::from_request(&request);
        Ok(Response::new(
            self.refresh(request.into_inner(), cause).await?,
        ))
    }

    async fn logout(
        &self,
        request: Request<LogoutRequest>,
    ) -> std::result::Result<Response<LogoutResponse>, Status> {
        let cause = Cause::from_request(&request);
        let principal = Principal::require(&request)?.clone();
        self.logout(request.into_inner(), &principal, cause).await?;
        Ok(Response::new(LogoutResponse {}))
    }

    async fn revoke_all_tokens(
        &self,
        request: Request<RevokeAllTokensRequest>,
    ) -> std::result::Result<Response<RevokeAllTokensResponse>, Status> {
        let cause = Cause::from_request(&request);
        let principal = Principal::require(&request)?.clone();
        Ok(Response::new(
            self.revoke_all(request.into_inner(), &principal, cause)
                .await?,
        ))
    }

    async fn exchange_service_token(
        &self,
        request: Request<ExchangeServiceTokenRequest>,
    ) -> std::result::Result<Response<ExchangeServiceTokenResponse>, Status> {
        let cause = Cause::from_request(&request);
        let peer = peer(&request);
        Ok(Response::new(
            self.exchange(request.into_inner(), cause, peer).await?,
        ))
    }

    async fn get_jwks(
        &self,
        _request: Request<GetJwksRequest>,
    ) -> std::result::Result<Response<GetJwksResponse>, Status> {
        Ok(Response::new(GetJwksResponse {
            keys: self.keys.jwks(),
        }))
    }

    async fn rotate_signing_key(
        &self,
        request: Request<RotateSigningKeyRequest>,
    ) -> std::result::Result<Response<RotateSigningKeyResponse>, Status> {
        let cause = Cause::from_request(&request);
        Ok(Response::new(
            self.rotate(request.into_inner(), cause).await?,
        ))
    }

    async fn list_sessions(
        &self,
        request: Request<ListSessionsRequest>,
    ) -> std::result::Result<Response<ListSessionsResponse>, Status> {
        let principal = Principal::require(&request)?.clone();
        Ok(Response::new(
            self.list_sessions(request.into_inner(), &principal).await?,
        ))
    }

    async fn list_revocations(
        &self,
        request: Request<ListRevocationsRequest>,
    ) -> std::result::Result<Response<ListRevocationsResponse>, Status> {
        Ok(Response::new(
            self.list_revocations(request.into_inner()).await?,
        ))
    }
}
