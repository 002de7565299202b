//! The generated `CredentialsService` trait, implemented over [`CredentialStore`]. Each trait
//! method only unwraps the request and wraps the answer; the inherent method of the same name
//! does the work.

use std::sync::Arc;
use std::time::Duration;

use opsconductor_api::credentials::v1::credentials_service_server::CredentialsService;
use opsconductor_api::credentials::v1::*;
use opsconductor_api::targets::v1::ListTargetsRequest;
use opsconductor_messaging::Cause;
use opsconductor_platform::client::Clients;
use opsconductor_platform::page::Page;
use opsconductor_platform::principal::Principal;
use opsconductor_platform::time::{now_micros, to_micros, to_std_duration};
use opsconductor_platform::validate::{is_slug, require_id, required, Violations};
use opsconductor_platform::ApiError;
use prost::Message;
use sha2::{Digest, Sha256};
use tonic::{Request, Response, Status};
use zeroize::Zeroizing;

use crate::checks::{Refused, RunChecker, RunUse};
use crate::material;
use crate::store::{CredentialFilter, CredentialStore};
use crate::CredentialsError;

type Result<T> = std::result::Result<T, CredentialsError>;

const MUTABLE_FIELDS: [&str; 5] = [
    "name",
    "description",
    "username",
    "expire_time",
    "revealable_by",
];

/// The services that may be named in `revealable_by`: the executor's reveals are checked
/// against its runs instead, and no other service reveals secrets.
const REVEALERS: [&str; 1] = ["notification"];
const DEFAULT_GRACE: Duration = Duration::from_secs(3600);
const MAX_GRACE: Duration = Duration::from_secs(7 * 86_400);

/// How re-wrapping goes during a key rotation.
#[derive(Debug, Clone, Copy)]
pub struct Rewrap {
    pub batch: i64,
    pub pause: Duration,
}

pub struct CredentialsApi {
    pub(crate) store: CredentialStore,
    pub(crate) clients: Arc<Clients>,
    pub(crate) checker: Arc<dyn RunChecker>,
    pub(crate) rewrap: Rewrap,
}

fn validate_fields(v: &mut Violations, credential: &Credential) {
    v.check(
        is_slug(&credential.name, 1, 63, &['-']),
        "credential.name",
        "must be 1-63 characters of a-z, 0-9 and '-', starting with a letter or digit",
    );
    v.max_chars("credential.description", &credential.description, 1024);
    v.printable("credential.description", &credential.description);
    v.max_chars("credential.username", &credential.username, 256);
    v.printable("credential.username", &credential.username);
    if let Some(t) = &credential.expire_time {
        v.check(
            (0..1_000_000_000).contains(&t.nanos) && t.seconds > 0,
            "credential.expire_time",
            "is not a valid time",
        );
    }
    for (i, service) in credential.revealable_by.iter().enumerate() {
        v.check(
            REVEALERS.contains(&service.as_str()),
            format!("credential.revealable_by[{i}]"),
            format!("must be one of: {}", REVEALERS.join(", ")),
        );
    }
}

fn encoded(secret: &SecretMaterial) -> Zeroizing<Vec<u8>> {
    Zeroizing::new(secret.encode_to_vec())
}

impl CredentialsApi {
    async fn create(&self, req: CreateCredentialRequest, cause: &Cause) -> Result<Credential> {
        let credential = required("credential", req.credential)?;
        let mut v = Violations::new();
        validate_fields(&mut v, &credential);
        let kind = match CredentialKind::try_from(credential.kind) {
            Ok(CredentialKind::Unspecified) | Err(_) => {
                v.add("credential.kind", "must be a credential kind");
                None
            }
            Ok(kind) => Some(kind),
        };
        let (v, meta, secret) = match kind {
            Some(kind) => material::check_blocking(v, kind, req.secret).await,
            None => (v, material::Metadata::default(), req.secret),
        };
        v.finish()?;
        let secret = required("secret", secret)?;
        let created = self
            .store
            .create(&credential, &encoded(&secret), &meta, cause)
            .await?;
        tracing::info!(credential_id = %created.id, name = %created.name, "credential created");
        Ok(created)
    }

    async fn get(&self, req: GetCredentialRequest) -> Result<Credential> {
        require_id("id", &req.id)?;
        self.store.get(&req.id).await
    }

    async fn list(&self, req: ListCredentialsRequest) -> Result<ListCredentialsResponse> {
        let mut v = Violations::new();
        let page = Page::parse(req.page_size, &req.page_token, &mut v);
        let kind = match CredentialKind::try_from(req.kind) {
            Ok(CredentialKind::Unspecified) => None,
            Ok(kind) => Some(kind as i32),
            Err(_) => {
                v.add("kind", format!("{} is not a credential kind", req.kind));
                None
            }
        };
        v.check(req.names.len() <= 100, "names", "at most 100 names");
        for (i, name) in req.names.iter().enumerate() {
            v.check(
                is_slug(name, 1, 63, &['-']),
                format!("names[{i}]"),
                "is not a credential name",
            );
        }
        v.finish()?;
        let filter = CredentialFilter {
            kind,
            names: req.names,
            expire_before: req.expire_before.as_ref().map(to_micros),
        };
        let (credentials, next_page_token) = self.store.list(&filter, &page).await?;
        Ok(ListCredentialsResponse {
            credentials,
            next_page_token,
        })
    }

    async fn update(&self, req: UpdateCredentialRequest, cause: &Cause) -> Result<Credential> {
        let patch = required("credential", req.credential)?;
        let mut v = Violations::new();
        v.id("credential.id", &patch.id);
        let paths = v.update_mask(req.update_mask, &MUTABLE_FIELDS);
        v.finish()?;
        let (mut credential, version) = self.store.versioned(&patch.id).await?;
        for path in &paths {
            match path.as_str() {
                "name" => credential.name = patch.name.clone(),
                "description" => credential.description = patch.description.clone(),
                "username" => credential.username = patch.username.clone(),
                "expire_time" => credential.expire_time = patch.expire_time,
                "revealable_by" => credential.revealable_by = patch.revealable_by.clone(),
                _ => {}
            }
        }
        let mut v = Violations::new();
        validate_fields(&mut v, &credential);
        v.finish()?;
        self.store.update(&credential, version, &paths, cause).await
    }

    async fn delete(&self, req: DeleteCredentialRequest, cause: &Cause) -> Result<()> {
        require_id("id", &req.id)?;
        self.store.get(&req.id).await?;
        let users = match self
            .clients
            .targets()
            .list_targets(ListTargetsRequest {
                credential_id: req.id.clone(),
                page_size: 100,
                ..Default::default()
            })
            .await
        {
            Ok(listed) => listed.into_inner().targets,
            // Unsure whether a target uses it: an administrator may still force it.
            Err(_) if req.force => Vec::new(),
            Err(status) => return Err(ApiError::from_status(&status).into()),
        };
        let names: Vec<String> = users
            .iter()
            .map(|t| format!("{} ({})", t.name, t.id))
            .collect();
        if !names.is_empty() && !req.force {
            return Err(CredentialsError::InUse(names));
        }
        self.store.delete(&req.id, &names, cause).await?;
        tracing::info!(credential_id = %req.id, forced = req.force, "credential deleted");
        Ok(())
    }

    async fn rotate(&self, req: RotateCredentialRequest, cause: &Cause) -> Result<Credential> {
        let mut v = Violations::new();
        v.id("id", &req.id);
        let grace = match &req.previous_grace {
            None => DEFAULT_GRACE,
            Some(d) => match to_std_duration(d) {
                Some(g) if g <= MAX_GRACE => g,
                _ => {
                    v.add("previous_grace", "must be between 0s and 7 days");
                    DEFAULT_GRACE
                }
            },
        };
        v.finish()?;
        let current = self.store.get(&req.id).await?;
        let kind = CredentialKind::try_from(current.kind).unwrap_or(CredentialKind::Unspecified);
        let (v, meta, secret) = material::check_blocking(Violations::new(), kind, req.secret).await;
        v.finish()?;
        let secret = required("secret", secret)?;
        let grace_until = now_micros() + grace.as_micros().min(i64::MAX as u128) as i64;
        let rotated = self
            .store
            .rotate(
                &req.id,
                &encoded(&secret),
                &meta,
                req.expire_time.as_ref().map(to_micros),
                grace_until,
                cause,
            )
            .await?;
        tracing::info!(credential_id = %req.id, version = rotated.secret_version, "credential rotated");
        Ok(rotated)
    }

    async fn reveal(
        &self,
        req: RevealCredentialRequest,
        principal: &Principal,
        cause: &Cause,
    ) -> Result<RevealCredentialResponse> {
        let mut v = Violations::new();
        v.id("id", &req.id);
        v.required_max("reason", &req.reason, 512);
        v.printable("reason", &req.reason);
        v.required_max("idempotency_key", &req.idempotency_key, 128);
        // The notification service reveals for itself, and only what names it; any other
        // service is the executor, revealing for a run.
        let for_itself = principal.service.as_deref() == Some("notification");
        let for_a_run = principal.service.is_some() && !for_itself;
        if for_a_run || !req.run_id.is_empty() {
            v.id("run_id", &req.run_id);
        }
        // The executor names the target it reveals for, except for a run's secret parameter.
        if !req.target_id.is_empty() {
            v.id("target_id", &req.target_id);
        }
        if for_a_run {
            v.required_max("executor_id", &req.executor_id, 128);
            v.required_max("lease_token", &req.lease_token, 256);
        }
        v.finish()?;
        let version = (req.secret_version > 0).then_some(u64::from(req.secret_version));
        let hash = request_hash(&req);
        let caller = principal.subject().to_string();
        let mut details = vec![
            ("reason", req.reason.clone()),
            ("run_id", req.run_id.clone()),
            ("target_id", req.target_id.clone()),
            ("executor_id", req.executor_id.clone()),
            (
                "on_behalf_of",
                principal
                    .user_id()
                    .filter(|_| principal.service.is_some())
                    .unwrap_or_default()
                    .to_string(),
            ),
        ];
        // A retry of a reveal that happened reveals the same version again, but only after
        // every check below is made again, and under an audit event of its own: a key is not
        // a grant (a replay after the run ended must reveal nothing).
        let mut version = version;
        if let Some(done) = self
            .store
            .reveal_record(&caller, &req.idempotency_key)
            .await?
        {
            if done.request_hash != hash {
                return Err(CredentialsError::KeyReused);
            }
            version = Some(done.secret_version);
            details.push(("replay_of", done.audit_event_id));
        }
        if for_a_run {
            let checked = self
                .checker
                .check(RunUse {
                    run_id: &req.run_id,
                    target_id: &req.target_id,
                    executor_id: &req.executor_id,
                    credential_id: &req.id,
                    lease_token: &req.lease_token,
                })
                .await;
            if let Err(refused) = checked {
                let (why, error) = match refused {
                    Refused::Denied(why) => (why.clone(), CredentialsError::Refused(why)),
                    Refused::Unavailable(why) => {
                        (why.clone(), CredentialsError::CheckUnavailable(why))
                    }
                };
                details.push(("refused", why));
                self.store
                    .audit_refused(cause, "credential.reveal", &req.id, &details)
                    .await?;
                tracing::warn!(credential_id = %req.id, run_id = %req.run_id, "reveal refused");
                return Err(error);
            }
        }
        let (credential, version, plaintext) = match self.store.secret(&req.id, version).await {
            Ok(found)
                if for_itself && !found.0.revealable_by.iter().any(|s| s == "notification") =>
            {
                let why = "the credential's revealable_by does not name the notification service";
                details.push(("refused", why.to_string()));
                self.store
                    .audit_refused(cause, "credential.reveal", &req.id, &details)
                    .await?;
                tracing::warn!(credential_id = %req.id, "reveal refused");
                return Err(CredentialsError::Refused(why.to_string()));
            }
            Ok(found) => found,
            Err(e @ (CredentialsError::NotFound(_) | CredentialsError::VersionGone(_))) => {
                details.push(("refused", e.to_string()));
                self.store
                    .audit_refused(cause, "credential.reveal", &req.id, &details)
                    .await?;
                return Err(e);
            }
            Err(e) => return Err(e),
        };
        details.push(("secret_version", version.to_string()));
        let event = self
            .store
            .record_reveal(
                (&caller, &req.idempotency_key),
                &hash,
                &req.id,
                version,
                cause,
                &details,
            )
            .await?;
        tracing::info!(credential_id = %req.id, run_id = %req.run_id, "credential revealed");
        answer(credential, version, &plaintext, event)
    }

    async fn rotate_key(
        &self,
        req: RotateEncryptionKeyRequest,
        cause: &Cause,
    ) -> Result<RotateEncryptionKeyResponse> {
        let versions = self
            .store
            .begin_rotation(u64::from(req.expected_key_version), cause)
            .await?;
        let rewrapped = rewrap_all(&self.store, versions.active, self.rewrap).await?;
        let retired = self.store.retire_unused(versions.active).await?;
        tracing::info!(
            key_version = versions.active,
            rewrapped,
            ?retired,
            "key-encryption key rotated"
        );
        Ok(RotateEncryptionKeyResponse {
            key_version: versions.active.min(u64::from(u32::MAX)) as u32,
            previous_key_version: versions.previous.min(u64::from(u32::MAX)) as u32,
            rewrapped_count: rewrapped.min(u32::MAX as usize) as u32,
        })
    }
}

/// Re-wraps every data key under `active`, a batch per transaction; returns how many.
pub async fn rewrap_all(store: &CredentialStore, active: u64, rewrap: Rewrap) -> Result<usize> {
    let mut total = 0;
    loop {
        let done = store.rewrap_batch(active, rewrap.batch).await?;
        total += done;
        if (done as i64) < rewrap.batch {
            // A short batch: nothing left but what another replica holds; look once more.
            if done == 0 || store.unfinished_rotation().await?.is_none() {
                return Ok(total);
            }
        }
        if !rewrap.pause.is_zero() {
            tokio::time::sleep(rewrap.pause).await;
        }
    }
}

fn answer(
    credential: Credential,
    version: u64,
    plaintext: &[u8],
    audit_event_id: String,
) -> Result<RevealCredentialResponse> {
    let secret = SecretMaterial::decode(plaintext)
        .map_err(|e| ApiError::internal(format!("a stored secret does not decode: {e}")))?;
    Ok(RevealCredentialResponse {
        credential: Some(credential),
        secret: Some(secret),
        audit_event_id,
        secret_version: version.min(u64::from(u32::MAX)) as u32,
    })
}

/// What makes two reveal requests the same request.
fn request_hash(req: &RevealCredentialRequest) -> String {
    let mut hasher = Sha256::new();
    for part in [
        req.id.as_str(),
        req.reason.as_str(),
        req.run_id.as_str(),
        req.target_id.as_str(),
        req.executor_id.as_str(),
        &req.secret_version.to_string(),
    ] {
        hasher.update(part.as_bytes());
        hasher.update([0]);
    }
    hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[tonic::async_trait]
impl CredentialsService for CredentialsApi {
    async fn create_credential(
        &self,
        request: Request<CreateCredentialRequest>,
    ) -> std::result::Result<Response<CreateCredentialResponse>, Status> {
        let cause = Cause::from_request(&request);
        let credential = self.create(request.into_inner(), &cause).await?;
        Ok(Response::new(CreateCredentialResponse {
            credential: Some(credential),
        }))
    }

    async fn get_credential(
        &self,
        request: Request<GetCredentialRequest>,
    ) -> std::result::Result<Response<GetCredentialResponse>, Status> {
        let credential = self.get(request.into_inner()).await?;
        Ok(Response::new(GetCredentialResponse {
            credential: Some(credential),
        }))
    }

    async fn list_credentials(
        &self,
        request: Request<ListCredentialsRequest>,
    ) -> std::result::Result<Response<ListCredentialsResponse>, Status> {
        Ok(Response::new(self.list(request.into_inner()).await?))
    }

    async fn update_credential(
        &self,
        request: Request<UpdateCredentialRequest>,
    ) -> std::result::Result<Response<UpdateCredentialResponse>, Status> {
        let cause = Cause::from_request(&request);
        let credential = self.update(request.into_inner(), &cause).await?;
        Ok(Response::new(UpdateCredentialResponse {
            credential: Some(credential),
        }))
    }

    async fn delete_credential(
        &self,
        request: Request<DeleteCredentialRequest>,
    ) -> std::result::Result<Response<DeleteCredentialResponse>, Status> {
        let cause = Cause::from_request(&request);
        self.delete(request.into_inner(), &cause).await?;
        Ok(Response::new(DeleteCredentialResponse {}))
    }

    async fn rotate_credential(
        &self,
        request: Request<RotateCredentialRequest>,
    ) -> std::result::Result<Response<RotateCredentialResponse>, Status> {
        let cause = Cause::from_request(&request);
        let credential = self.rotate(request.into_inner(), &cause).await?;
        Ok(Response::new(RotateCredentialResponse {
            credential: Some(credential),
        }))
    }

    async fn reveal_credential(
        &self,
        request: Request<RevealCredentialRequest>,
    ) -> std::result::Result<Response<RevealCredentialResponse>, Status> {
        let cause = Cause::from_request(&request);
        let principal = Principal::require(&request)?.clone();
        Ok(Response::new(
            self.reveal(request.into_inner(), &principal, &cause)
                .await?,
        ))
    }

    async fn rotate_encryption_key(
        &self,
        request: Request<RotateEncryptionKeyRequest>,
    ) -> std::result::Result<Response<RotateEncryptionKeyResponse>, Status> {
        let cause = Cause::from_request(&request);
        Ok(Response::new(
            self.rotate_key(request.into_inner(), &cause).await?,
        ))
    }
}
