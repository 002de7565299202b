//! Short calls on the generated clients, so a test reads `s.targets().get(&id).await?` instead
//! of building a request and unwrapping a response. Each returns the call's `Status` on error,
//! for assertions on codes and field violations.

use std::future::Future;

use opsconductor_api::auth::v1::auth_service_client::AuthServiceClient;
use opsconductor_api::auth::v1::{
    ListSessionsRequest, LoginRequest, LoginResponse, RefreshTokenRequest, RefreshTokenResponse,
    Session,
};
use opsconductor_api::credentials::v1::credentials_service_client::CredentialsServiceClient;
use opsconductor_api::credentials::v1::{
    CreateCredentialRequest, Credential, DeleteCredentialRequest, GetCredentialRequest,
    RevealCredentialRequest, RevealCredentialResponse, SecretMaterial,
};
use opsconductor_api::jobs::v1::jobs_service_client::JobsServiceClient;
use opsconductor_api::jobs::v1::{
    watch_run_response, CreateJobRequest, GetRunRequest, Job, ListRunLogsRequest, Run, RunState,
    StartRunRequest, WatchRunRequest, WatchRunResponse,
};
use opsconductor_api::targets::v1::targets_service_client::TargetsServiceClient;
use opsconductor_api::targets::v1::*;
use opsconductor_api::user::v1::user_service_client::UserServiceClient;
use opsconductor_api::user::v1::*;
use opsconductor_platform::auth::AuthChannel;
use prost_types::FieldMask;
use tonic::Status;

fn present<T>(value: Option<T>, what: &str) -> Result<T, Status> {
    value.ok_or_else(|| Status::internal(format!("no {what} in the response")))
}

fn mask(paths: &[&str]) -> Option<FieldMask> {
    Some(FieldMask {
        paths: paths.iter().map(|p| p.to_string()).collect(),
    })
}

pub trait TargetsExt {
    fn create(&mut self, target: Target) -> impl Future<Output = Result<Target, Status>> + Send;
    fn get(&mut self, id: &str) -> impl Future<Output = Result<Target, Status>> + Send;
    fn list(
        &mut self,
        request: ListTargetsRequest,
    ) -> impl Future<Output = Result<ListTargetsResponse, Status>> + Send;
    /// Updates the fields named in `paths` to those of `target`.
    fn update(
        &mut self,
        target: Target,
        paths: &[&str],
    ) -> impl Future<Output = Result<Target, Status>> + Send;
    fn delete(&mut self, id: &str) -> impl Future<Output = Result<(), Status>> + Send;
}

impl TargetsExt for TargetsServiceClient<AuthChannel> {
    async fn create(&mut self, target: Target) -> Result<Target, Status> {
        let request = CreateTargetRequest {
            target: Some(target),
        };
        present(
            self.create_target(request).await?.into_inner().target,
            "target",
        )
    }

    async fn get(&mut self, id: &str) -> Result<Target, Status> {
        let request = GetTargetRequest { id: id.into() };
        present(
            self.get_target(request).await?.into_inner().target,
            "target",
        )
    }

    async fn list(&mut self, request: ListTargetsRequest) -> Result<ListTargetsResponse, Status> {
        Ok(self.list_targets(request).await?.into_inner())
    }

    async fn update(&mut self, target: Target, paths: &[&str]) -> Result<Target, Status> {
        let request = UpdateTargetRequest {
            target: Some(target),
            update_mask: mask(paths),
        };
        present(
            self.update_target(request).await?.into_inner().target,
            "target",
        )
    }

    async fn delete(&mut self, id: &str) -> Result<(), Status> {
        let request = DeleteTargetRequest { id: id.into() };
        self.delete_target(request).await.map(|_| ())
    }
}

pub trait UsersExt {
    fn create(
        &mut self,
        user: User,
        password: &str,
    ) -> impl Future<Output = Result<User, Status>> + Send;
    fn get(&mut self, id: &str) -> impl Future<Output = Result<User, Status>> + Send;
    fn list(
        &mut self,
        request: ListUsersRequest,
    ) -> impl Future<Output = Result<ListUsersResponse, Status>> + Send;
    /// Updates the fields named in `paths` to those of `user`.
    fn update(
        &mut self,
        user: User,
        paths: &[&str],
    ) -> impl Future<Output = Result<User, Status>> + Send;
    fn delete(&mut self, id: &str) -> impl Future<Output = Result<(), Status>> + Send;
    /// CheckPassword: whether `password` is `username`'s.
    fn check(
        &mut self,
        username: &str,
        password: &str,
    ) -> impl Future<Output = Result<CheckPasswordResponse, Status>> + Send;
    /// The notification preferences of the user `user_id`.
    fn preferences(
        &mut self,
        user_id: &str,
    ) -> impl Future<Output = Result<NotificationPreferences, Status>> + Send;
    /// Replaces the notification preferences of the user `preferences.user_id`.
    fn set_preferences(
        &mut self,
        preferences: NotificationPreferences,
    ) -> impl Future<Output = Result<NotificationPreferences, Status>> + Send;
}

impl UsersExt for UserServiceClient<AuthChannel> {
    async fn create(&mut self, user: User, password: &str) -> Result<User, Status> {
        let request = CreateUserRequest {
            user: Some(user),
            password: password.into(),
        };
        present(self.create_user(request).await?.into_inner().user, "user")
    }

    async fn get(&mut self, id: &str) -> Result<User, Status> {
        let request = GetUserRequest { id: id.into() };
        present(self.get_user(request).await?.into_inner().user, "user")
    }

    async fn list(&mut self, request: ListUsersRequest) -> Result<ListUsersResponse, Status> {
        Ok(self.list_users(request).await?.into_inner())
    }

    async fn update(&mut self, user: User, paths: &[&str]) -> Result<User, Status> {
        let request = UpdateUserRequest {
            user: Some(user),
            update_mask: mask(paths),
        };
        present(self.update_user(request).await?.into_inner().user, "user")
    }

    async fn delete(&mut self, id: &str) -> Result<(), Status> {
        let request = DeleteUserRequest { id: id.into() };
        self.delete_user(request).await.map(|_| ())
    }

    async fn check(
        &mut self,
        username: &str,
        password: &str,
    ) -> Result<CheckPasswordResponse, Status> {
        let request = CheckPasswordRequest {
            username: username.into(),
            password: password.into(),
        };
        Ok(self.check_password(request).await?.into_inner())
    }

    async fn preferences(&mut self, user_id: &str) -> Result<NotificationPreferences, Status> {
        let request = GetNotificationPreferencesRequest {
            user_id: user_id.into(),
        };
        present(
            self.get_notification_preferences(request)
                .await?
                .into_inner()
                .preferences,
            "preferences",
        )
    }

    async fn set_preferences(
        &mut self,
        preferences: NotificationPreferences,
    ) -> Result<NotificationPreferences, Status> {
        let request = UpdateNotificationPreferencesRequest {
            preferences: Some(preferences),
        };
        present(
            self.update_notification_preferences(request)
                .await?
                .into_inner()
                .preferences,
            "preferences",
        )
    }
}

pub trait AuthExt {
    fn sign_in(
        &mut self,
        username: &str,
        password: &str,
    ) -> impl Future<Output = Result<LoginResponse, Status>> + Send;
    fn refresh(
        &mut self,
        refresh_token: &str,
    ) -> impl Future<Output = Result<RefreshTokenResponse, Status>> + Send;
    /// The first page of `user_id`'s sessions; everyone's for an empty `user_id`.
    fn sessions(
        &mut self,
        user_id: &str,
    ) -> impl Future<Output = Result<Vec<Session>, Status>> + Send;
}

impl AuthExt for AuthServiceClient<AuthChannel> {
    async fn sign_in(&mut self, username: &str, password: &str) -> Result<LoginResponse, Status> {
        let request = LoginRequest {
            username: username.into(),
            password: password.into(),
        };
        Ok(self.login(request).await?.into_inner())
    }

    async fn refresh(&mut self, refresh_token: &str) -> Result<RefreshTokenResponse, Status> {
        let request = RefreshTokenRequest {
            refresh_token: refresh_token.into(),
        };
        Ok(self.refresh_token(request).await?.into_inner())
    }

    async fn sessions(&mut self, user_id: &str) -> Result<Vec<Session>, Status> {
        let request = ListSessionsRequest {
            user_id: user_id.into(),
            ..Default::default()
        };
        Ok(self.list_sessions(request).await?.into_inner().sessions)
    }
}

pub trait CredentialsExt {
    fn create(
        &mut self,
        credential: Credential,
        secret: SecretMaterial,
    ) -> impl Future<Output = Result<Credential, Status>> + Send;
    fn get(&mut self, id: &str) -> impl Future<Output = Result<Credential, Status>> + Send;
    /// An administrator's reveal of the current version, under `key`.
    fn reveal(
        &mut self,
        id: &str,
        key: &str,
    ) -> impl Future<Output = Result<RevealCredentialResponse, Status>> + Send;
    fn delete(&mut self, id: &str, force: bool) -> impl Future<Output = Result<(), Status>> + Send;
}

impl CredentialsExt for CredentialsServiceClient<AuthChannel> {
    async fn create(
        &mut self,
        credential: Credential,
        secret: SecretMaterial,
    ) -> Result<Credential, Status> {
        let request = CreateCredentialRequest {
            credential: Some(credential),
            secret: Some(secret),
        };
        present(
            self.create_credential(request)
                .await?
                .into_inner()
                .credential,
            "credential",
        )
    }

    async fn get(&mut self, id: &str) -> Result<Credential, Status> {
        let request = GetCredentialRequest { id: id.into() };
        present(
            self.get_credential(request).await?.into_inner().credential,
            "credential",
        )
    }

    async fn reveal(&mut self, id: &str, key: &str) -> Result<RevealCredentialResponse, Status> {
        let request = RevealCredentialRequest {
            id: id.into(),
            reason: "a test".into(),
            idempotency_key: key.into(),
            ..Default::default()
        };
        Ok(self.reveal_credential(request).await?.into_inner())
    }

    async fn delete(&mut self, id: &str, force: bool) -> Result<(), Status> {
        let request = DeleteCredentialRequest {
            id: id.into(),
            force,
        };
        self.delete_credential(request).await.map(|_| ())
    }
}

pub trait JobsExt {
    fn create(&mut self, job: Job) -> impl Future<Output = Result<Job, Status>> + Send;
    /// Starts a run of `job_id` with `parameters` under a fresh idempotency key.
    fn start(
        &mut self,
        job_id: &str,
        parameters: &[(&str, &str)],
    ) -> impl Future<Output = Result<Run, Status>> + Send;
    fn run(&mut self, id: &str) -> impl Future<Output = Result<Run, Status>> + Send;
    /// Watches the run until it ends (within `limit`): every event in order.
    fn finish(
        &mut self,
        id: &str,
        limit: std::time::Duration,
    ) -> impl Future<Output = Result<(Run, Vec<WatchRunResponse>), Status>> + Send;
    /// Every stored log line's text, in seq order.
    fn log_text(
        &mut self,
        run_id: &str,
    ) -> impl Future<Output = Result<Vec<String>, Status>> + Send;
}

impl JobsExt for JobsServiceClient<AuthChannel> {
    async fn create(&mut self, job: Job) -> Result<Job, Status> {
        let request = CreateJobRequest { job: Some(job) };
        present(self.create_job(request).await?.into_inner().job, "job")
    }

    async fn start(&mut self, job_id: &str, parameters: &[(&str, &str)]) -> Result<Run, Status> {
        let request = StartRunRequest {
            job_id: job_id.into(),
            parameters: parameters
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            idempotency_key: uuid::Uuid::now_v7().to_string(),
            trigger: None,
        };
        present(self.start_run(request).await?.into_inner().run, "run")
    }

    async fn run(&mut self, id: &str) -> Result<Run, Status> {
        present(
            self.get_run(GetRunRequest { id: id.into() })
                .await?
                .into_inner()
                .run,
            "run",
        )
    }

    async fn finish(
        &mut self,
        id: &str,
        limit: std::time::Duration,
    ) -> Result<(Run, Vec<WatchRunResponse>), Status> {
        let request = WatchRunRequest {
            id: id.into(),
            include_logs: true,
            after_log_seq: 0,
        };
        let mut stream = self.watch_run(request).await?.into_inner();
        let mut events = Vec::new();
        // The server ends the stream once the run ended and everything was sent.
        let watching = async {
            while let Some(event) = stream.message().await? {
                events.push(event);
            }
            let ended = events.iter().any(|e| {
                matches!(
                    &e.event,
                    Some(watch_run_response::Event::Run(run))
                        if !matches!(RunState::try_from(run.state), Ok(RunState::Queued | RunState::Running))
                )
            });
            if ended {
                Ok(())
            } else {
                Err(Status::internal("the watch ended before the run did"))
            }
        };
        match tokio::time::timeout(limit, watching).await {
            Ok(watched) => watched?,
            Err(_) => {
                let now = self.run(id).await?;
                return Err(Status::deadline_exceeded(format!(
                    "run {id} did not finish in {limit:?}: {now:?}"
                )));
            }
        }
        let run = self.run(id).await?;
        Ok((run, events))
    }

    async fn log_text(&mut self, run_id: &str) -> Result<Vec<String>, Status> {
        let mut lines = Vec::new();
        let mut page_token = String::new();
        loop {
            let page = self
                .list_run_logs(ListRunLogsRequest {
                    run_id: run_id.into(),
                    page_size: 5000,
                    page_token: page_token.clone(),
                    ..Default::default()
                })
                .await?
                .into_inner();
            let empty = page.lines.is_empty();
            lines.extend(page.lines.into_iter().map(|l| l.text));
            if page.next_page_token.is_empty() || empty {
                return Ok(lines);
            }
            page_token = page.next_page_token;
        }
    }
}
