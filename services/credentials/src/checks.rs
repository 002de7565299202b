//! Whether the executor may reveal a credential for a run: the run is RUNNING under the lease
//! whose token the executor presents (the executor id is only recorded), and either one of the
//! run's SECRET parameters names the credential and its job revision's allowlist lists it, or
//! the target is one of the run's and refers to the credential. Made at every reveal, a retry
//! included. Behind a trait, so the service can be tested with a double; [`FromJobs`] asks the
//! jobs service (`CheckRunCredential`) and the targets service.

use std::sync::Arc;

use futures::future::{BoxFuture, FutureExt};
use opsconductor_api::jobs::v1::CheckRunCredentialRequest;
use opsconductor_api::targets::v1::GetTargetRequest;
use opsconductor_platform::client::Clients;
use opsconductor_platform::ApiError;
use tonic::Code;

/// What the executor asks to use.
#[derive(Debug, Clone, Copy)]
pub struct RunUse<'a> {
    pub run_id: &'a str,
    pub target_id: &'a str,
    pub executor_id: &'a str,
    pub credential_id: &'a str,
    /// The lease token ClaimRun gave the executor: the proof that it holds the run.
    pub lease_token: &'a str,
}

/// Why not.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refused {
    /// The run, the lease or the target does not allow it.
    Denied(String),
    /// The check could not be made now (the jobs or targets service is unreachable).
    Unavailable(String),
}

pub trait RunChecker: Send + Sync + 'static {
    fn check<'a>(&'a self, request: RunUse<'a>) -> BoxFuture<'a, Result<(), Refused>>;
}

/// The check made with the jobs service (`GetRun`) and the targets service (`GetTarget`).
pub struct FromJobs(pub Arc<Clients>);

fn upstream(what: &str, status: &tonic::Status) -> Refused {
    if status.code() == Code::NotFound {
        return Refused::Denied(format!("{what} does not exist"));
    }
    let error = ApiError::from_status(status);
    Refused::Unavailable(format!(
        "{what} could not be checked: {} ({error})",
        error.reason()
    ))
}

impl RunChecker for FromJobs {
    fn check<'a>(&'a self, request: RunUse<'a>) -> BoxFuture<'a, Result<(), Refused>> {
        async move {
            let checked = self
                .0
                .jobs()
                .check_run_credential(CheckRunCredentialRequest {
                    run_id: request.run_id.to_string(),
                    lease_token: request.lease_token.to_string(),
                    credential_id: request.credential_id.to_string(),
                    target_id: request.target_id.to_string(),
                })
                .await;
            let checked = match checked {
                Ok(answer) => answer.into_inner(),
                // LEASE_LOST: the run ended, or the token is not its live lease.
                Err(status) if status.code() == Code::FailedPrecondition => {
                    return Err(Refused::Denied(
                        "the run is not running under this executor's lease".into(),
                    ));
                }
                Err(status) => return Err(upstream("the run", &status)),
            };
            if checked.executor_id != request.executor_id {
                return Err(Refused::Denied(
                    "the run's lease is held by another executor".into(),
                ));
            }
            // A SECRET parameter of the run names it, and its author allowed it.
            if !checked.parameter.is_empty() {
                return Ok(());
            }
            if request.target_id.is_empty() {
                return Err(Refused::Denied(
                    "no target named, and no SECRET parameter of the run names and allows this \
                     credential"
                        .into(),
                ));
            }
            if !checked.run_target {
                return Err(Refused::Denied("the target is not one of the run's".into()));
            }
            let target = self
                .0
                .targets()
                .get_target(GetTargetRequest {
                    id: request.target_id.to_string(),
                })
                .await
                .map_err(|s| upstream("the target", &s))?
                .into_inner()
                .target
                .ok_or_else(|| Refused::Unavailable("the targets service sent no target".into()))?;
            if !target
                .credential_refs
                .iter()
                .any(|r| r.credential_id == request.credential_id)
            {
                return Err(Refused::Denied(
                    "the target does not refer to this credential".into(),
                ));
            }
            Ok(())
        }
        .boxed()
    }
}
