//! Resolving a job's target selectors against the targets service when a run starts: each
//! selector once, every target with the steps that run on it.

use std::collections::{BTreeMap, HashMap};

use opsconductor_api::jobs::v1::{Job, RunTarget, StepKind, TargetSelector};
use opsconductor_api::targets::v1::{ListTargetsRequest, Target};
use opsconductor_platform::client::Clients;
use opsconductor_platform::ApiError;
use prost::Message;

use crate::JobsError;

/// Targets one run may fan out to, at most.
pub const MAX_RUN_TARGETS: usize = 1000;

fn selects(selector: &TargetSelector) -> bool {
    !selector.names.is_empty() || !selector.tags.is_empty()
}

/// Every target of `job`'s steps, each with the indexes of its steps.
pub async fn resolve(clients: &Clients, job: &Job) -> Result<Vec<RunTarget>, JobsError> {
    let mut by_selector: HashMap<Vec<u8>, Vec<Target>> = HashMap::new();
    let mut targets: BTreeMap<String, RunTarget> = BTreeMap::new();
    for (index, step) in job.steps.iter().enumerate() {
        let selector = match (&step.targets, &job.targets) {
            (Some(s), _) if selects(s) => s,
            (_, Some(j)) if selects(j) => j,
            _ => continue,
        };
        let key = selector.encode_to_vec();
        if !by_selector.contains_key(&key) {
            let found = select(clients, selector).await?;
            by_selector.insert(key.clone(), found);
        }
        let selected = &by_selector[&key];
        if selected.is_empty() && step.kind == StepKind::Ssh as i32 {
            return Err(JobsError::Api(ApiError::FailedPrecondition {
                reason: "NO_TARGETS",
                message: format!("step {:?} selects no target", step.name),
            }));
        }
        for target in selected {
            let entry = targets
                .entry(target.id.clone())
                .or_insert_with(|| RunTarget {
                    id: target.id.clone(),
                    name: target.name.clone(),
                    address: target.address.clone(),
                    port: target.port,
                    steps: Vec::new(),
                });
            entry.steps.push(index as u32);
        }
        if targets.len() > MAX_RUN_TARGETS {
            return Err(JobsError::Api(ApiError::FailedPrecondition {
                reason: "TOO_MANY_TARGETS",
                message: format!("a run may have at most {MAX_RUN_TARGETS} targets"),
            }));
        }
    }
    Ok(targets.into_values().collect())
}

async fn select(clients: &Clients, selector: &TargetSelector) -> Result<Vec<Target>, JobsError> {
    let mut found: BTreeMap<String, Target> = BTreeMap::new();
    if !selector.names.is_empty() {
        for target in list(
            clients,
            ListTargetsRequest {
                names: selector.names.clone(),
                ..Default::default()
            },
        )
        .await?
        {
            found.insert(target.id.clone(), target);
        }
    }
    if !selector.tags.is_empty() {
        for target in list(
            clients,
            ListTargetsRequest {
                tags: selector.tags.clone(),
                ..Default::default()
            },
        )
        .await?
        {
            found.insert(target.id.clone(), target);
        }
    }
    Ok(found
        .into_values()
        .filter(|t| {
            !selector.exclude_names.contains(&t.name)
                && !t.tags.iter().any(|tag| selector.exclude_tags.contains(tag))
        })
        .collect())
}

async fn list(
    clients: &Clients,
    mut request: ListTargetsRequest,
) -> Result<Vec<Target>, JobsError> {
    let mut out = Vec::new();
    request.page_size = 500;
    loop {
        let page = clients
            .targets()
            .list_targets(request.clone())
            .await
            .map_err(|s| JobsError::Targets(ApiError::from_status(&s)))?
            .into_inner();
        out.extend(page.targets);
        if page.next_page_token.is_empty() || out.len() > MAX_RUN_TARGETS {
            return Ok(out);
        }
        request.page_token = page.next_page_token;
    }
}
