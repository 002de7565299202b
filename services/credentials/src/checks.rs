//! Whether the executor may reveal a credential for a run: the run is RUNNING under the lease of
//! the executor that asks, and either the run's SECRET parameters name the credential, or the
//! target is one of the run's and refers to the credential. Behind a trait, so the service is tested with a double until the jobs service
//! exists; [`FromJobs`] asks the jobs and targets services.

use std::sync::Arc;

use futures::future::{BoxFuture, FutureExt};
use opsconductor_api::jobs::v1::{GetRunRequest, RunState};
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
            let run = self
                .0
                .jobs()
                .get_run(GetRunRequest {
                    id: request.run_id.to_string(),
                })
                .await
                .map_err(|s| upstream("the run", &s))?
                .into_inner()
                .run
                .ok_or_else(|| Refused::Unavailable("the jobs service sent no run".into()))?;
            if run.state != RunState::Running as i32 {
                return Err(Refused::Denied("the run is not running".into()));
            }
            if run.executor_id != request.executor_id {
                return Err(Refused::Denied(
                    "the run's lease is held by another executor".into(),
                ));
            }
            // A credential the run's SECRET parameters name is the run's to reveal.
            if run
                .parameter_credential_ids
                .iter()
                .any(|id| id == request.credential_id)
            {
                return Ok(());
            }
            if request.target_id.is_empty() {
                return Err(Refused::Denied(
                    "no target named, and the run's parameters do not name this credential".into(),
                ));
            }
            if !run.targets.iter().any(|t| t.id == request.target_id) {
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
