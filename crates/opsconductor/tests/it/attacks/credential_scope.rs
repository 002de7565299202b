//! Which credentials a run may use is the job author's choice, not the caller's: a SECRET
//! parameter accepts only the credentials its `allowed_credential_ids` lists (none when it lists
//! none). An operator aiming a run at the administrator's `prod-root` — by StartRun, by re-running
//! an older run, through a schedule's fires or a backfill — is refused with PERMISSION_DENIED
//! naming the parameter, no run is stored, and the secret never reaches a run's log. The
//! executor's own identity, holding a real lease, cannot reveal anything else for its run, and
//! replaying a reveal's idempotency key is checked and audited again — after the run ended it
//! reveals nothing.

use std::collections::HashSet;

use opsconductor_api::audit::v1::AuditOutcome;
use opsconductor_api::common::v1::Role;
use opsconductor_api::credentials::v1::credentials_service_client::CredentialsServiceClient;
use opsconductor_api::credentials::v1::secret_material::Material;
use opsconductor_api::credentials::v1::*;
use opsconductor_api::jobs::v1::*;
use opsconductor_api::scheduler::v1::{
    BackfillScheduleRequest, CreateScheduleRequest, FireOutcome, Schedule, TriggerScheduleRequest,
    UpdateScheduleRequest,
};
use opsconductor_api::targets::v1::{CredentialRef, Protocol, Target};
use opsconductor_platform::auth::AuthChannel;
use opsconductor_platform::ServiceKind;
use opsconductor_testkit::{
    assert_violations, on_both_backends, CredentialsExt, JobsExt, Sandbox, StorageBackend,
    TargetsExt,
};
use prost_types::FieldMask;
use tonic::{Code, Status};

use crate::jobs::{job, shell, LIMIT};
use crate::scheduler::{cron, now_secs, once, schedule_of, ts, wait_fires};
use crate::support::{count, drain_audit};

/// An API-token credential holding `value`.
pub async fn api_token(s: &Sandbox, name: &str, value: &str) -> Credential {
    s.credentials()
        .create(
            Credential {
                name: name.into(),
                kind: CredentialKind::ApiToken as i32,
                ..Default::default()
            },
            SecretMaterial {
                material: Some(Material::ApiToken(ApiTokenSecret {
                    token: value.into(),
                })),
            },
        )
        .await
        .unwrap()
}

/// A SECRET parameter `name` accepting `allowed`.
pub fn secret_param(name: &str, allowed: &[&str]) -> ParameterSpec {
    ParameterSpec {
        name: name.into(),
        r#type: ParameterType::Secret as i32,
        required: true,
        allowed_credential_ids: allowed.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    }
}

/// The job of the report: its step prints the secret reversed, which the log mask (it knows
/// only the literal) would not hide.
fn reverser(name: &str, allowed: &[&str]) -> Job {
    let mut j = job(name, vec![shell("rev", "echo {{ params.token }} | rev")]);
    j.parameters = vec![secret_param("token", allowed)];
    j
}

/// Every spelling of a credential id that parses as a UUID, and some that do not.
fn spellings(id: &str) -> Vec<String> {
    let simple = id.replace('-', "");
    vec![
        id.to_string(),
        id.to_uppercase(),
        format!("{{{id}}}"),
        format!("urn:uuid:{id}"),
        simple.clone(),
        simple.to_uppercase(),
        format!(" {id}"),
        format!("{id}\n"),
        format!("{id},{id}"),
    ]
}

#[track_caller]
fn assert_denied_naming(status: &Status, parameter: &str) {
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    assert!(
        status.message().contains(&format!("{parameter:?}")),
        "the refusal names the parameter: {status:?}"
    );
}

async fn set_allowed(s: &Sandbox, job: &Job, allowed: &[&str]) -> Job {
    let mut patch = job.clone();
    patch.parameters = vec![secret_param("token", allowed)];
    s.jobs()
        .update_job(UpdateJobRequest {
            job: Some(patch),
            update_mask: Some(FieldMask {
                paths: vec!["parameters".into()],
            }),
            expected_revision: 0,
        })
        .await
        .unwrap()
        .into_inner()
        .job
        .unwrap()
}

async fn runs_of_job(s: &Sandbox, job_id: &str) -> Vec<Run> {
    s.jobs()
        .list_runs(ListRunsRequest {
            job_id: job_id.into(),
            page_size: 500,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .runs
}

on_both_backends!(an_operator_cannot_aim_a_run_at_a_credential_the_job_does_not_allow);
async fn an_operator_cannot_aim_a_run_at_a_credential_the_job_does_not_allow(s: &Sandbox) {
    let root_secret = format!("root-{}", uuid::Uuid::now_v7().simple());
    let reversed: String = root_secret.chars().rev().collect();
    let prod_root = api_token(s, "prod-root", &root_secret).await;
    let deploy = api_token(s, "deploy-token", "deploy-value-0123456789").await;
    let (_, operator) = s.user_with_role("olga", Role::Operator).await;
    let as_operator = s.clients_as(&operator.access_token);

    // Revision 1 lets the administrator use prod-root; they run it once themselves.
    let j = s
        .jobs()
        .create(reverser("reverse-token", &[&deploy.id, &prod_root.id]))
        .await
        .unwrap();
    let admins = s
        .jobs()
        .start(&j.id, &[("token", &prod_root.id)])
        .await
        .unwrap();
    s.jobs().finish(&admins.id, LIMIT).await.unwrap();
    // A schedule made while prod-root was allowed, firing daily at midnight (past due times to
    // backfill, none during the test), and one firing once, tomorrow.
    let daily = crate::scheduler::create(s, {
        let mut sc = schedule_of("root-daily", &j.id, cron("0 0 * * *", "UTC"));
        sc.parameters = [("token".to_string(), prod_root.id.clone())].into();
        sc
    })
    .await;
    let soon = crate::scheduler::create(s, {
        let mut sc = schedule_of("root-later", &j.id, once(now_secs() + 86_400));
        sc.parameters = [("token".to_string(), prod_root.id.clone())].into();
        sc
    })
    .await;
    // Then the author narrows the parameter to the deploy token.
    let j = set_allowed(s, &j, &[&deploy.id]).await;
    assert_eq!(j.revision, 2);

    // StartRun, with every spelling of prod-root's id: refused, nothing stored. (Spellings
    // that are not a UUID are not even a credential id.)
    for value in spellings(&prod_root.id) {
        let status = as_operator
            .jobs()
            .start(&j.id, &[("token", &value)])
            .await
            .unwrap_err();
        match status.code() {
            Code::PermissionDenied => assert_denied_naming(&status, "token"),
            Code::InvalidArgument => assert_violations(&status, &["parameters[token]"]),
            _ => panic!("{value:?} was not refused: {status:?}"),
        }
    }
    // Other spellings of the allowed id are other strings: refused too.
    for value in spellings(&deploy.id).into_iter().skip(1) {
        let status = as_operator
            .jobs()
            .start(&j.id, &[("token", &value)])
            .await
            .unwrap_err();
        assert!(
            matches!(
                status.code(),
                Code::PermissionDenied | Code::InvalidArgument
            ),
            "{value:?}: {status:?}"
        );
    }

    // RerunRun of the administrator's run: its revision allowed prod-root, the job no longer
    // does.
    let status = as_operator
        .jobs()
        .rerun_run(RerunRunRequest {
            id: admins.id.clone(),
            failed_targets_only: false,
            idempotency_key: uuid::Uuid::now_v7().to_string(),
        })
        .await
        .unwrap_err();
    assert_denied_naming(&status, "token");

    // The schedule: an operator's TriggerSchedule and BackfillSchedule are refused at once.
    let status = as_operator
        .scheduler()
        .trigger_schedule(TriggerScheduleRequest {
            id: daily.id.clone(),
        })
        .await
        .unwrap_err();
    assert_denied_naming(&status, "token");
    let now = now_secs();
    let status = as_operator
        .scheduler()
        .backfill_schedule(BackfillScheduleRequest {
            id: daily.id.clone(),
            start_time: Some(ts(now - 3 * 86_400)),
            end_time: Some(ts(now - 60)),
        })
        .await
        .unwrap_err();
    assert_denied_naming(&status, "token");
    // Nor can a schedule (an administrator's act) be made or changed to name it.
    let status = s
        .scheduler()
        .create_schedule(CreateScheduleRequest {
            schedule: Some({
                let mut sc = schedule_of("root-again", &j.id, cron("0 * * * *", "UTC"));
                sc.parameters = [("token".to_string(), prod_root.id.clone())].into();
                sc
            }),
        })
        .await
        .unwrap_err();
    assert_denied_naming(&status, "token");
    let status = s
        .scheduler()
        .update_schedule(UpdateScheduleRequest {
            schedule: Some({
                let mut sc = daily.clone();
                sc.parameters = [("token".to_string(), prod_root.id.to_uppercase())].into();
                sc
            }),
            update_mask: Some(FieldMask {
                paths: vec!["parameters".into()],
            }),
            expected_revision: 0,
        })
        .await
        .unwrap_err();
    assert_denied_naming(&status, "token");
    // A fire that comes due (its time moved to now; its values untouched) fails for good, and
    // says why.
    s.scheduler()
        .update_schedule(UpdateScheduleRequest {
            schedule: Some(Schedule {
                id: soon.id.clone(),
                spec: Some(once(now_secs() + 1)),
                ..Default::default()
            }),
            update_mask: Some(FieldMask {
                paths: vec!["once".into()],
            }),
            expected_revision: 0,
        })
        .await
        .unwrap();
    let fired = wait_fires(s, &soon.id, "the once fire", |f| {
        f.iter()
            .any(|f| crate::scheduler::outcome(f) == FireOutcome::Failed)
    })
    .await;
    assert_eq!(fired[0].error_reason, "CREDENTIAL_NOT_ALLOWED", "{fired:?}");
    assert!(fired[0].run_id.is_empty());

    // The allowed credential still works, for the operator.
    let allowed = as_operator
        .jobs()
        .start(&j.id, &[("token", &deploy.id)])
        .await
        .unwrap();
    let (allowed, _) = s.jobs().finish(&allowed.id, LIMIT).await.unwrap();
    assert_eq!(
        RunState::try_from(allowed.state),
        Ok(RunState::Succeeded),
        "{}",
        allowed.error
    );

    // Only the administrator's run and the allowed one exist; no run but the administrator's
    // ever held prod-root's secret, forwards or reversed.
    let runs = runs_of_job(s, &j.id).await;
    let ids: HashSet<&str> = runs.iter().map(|r| r.id.as_str()).collect();
    assert_eq!(
        ids,
        HashSet::from([admins.id.as_str(), allowed.id.as_str()]),
        "{runs:#?}"
    );
    for run in runs.iter().filter(|r| r.id != admins.id) {
        assert!(!run.parameter_credential_ids.contains(&prod_root.id));
        for line in s.jobs().log_text(&run.id).await.unwrap() {
            assert!(
                !line.contains(&root_secret) && !line.contains(&reversed),
                "{line}"
            );
        }
    }
}

on_both_backends!(a_secret_parameter_without_an_allowlist_accepts_no_credential);
/// A SECRET parameter with no allowlist — every job saved before allowlists existed — accepts
/// no credential at all, not even one an administrator names.
async fn a_secret_parameter_without_an_allowlist_accepts_no_credential(s: &Sandbox) {
    let deploy = api_token(s, "deploy-token", "deploy-value-0123456789").await;
    let mut j = reverser("no-allowlist", &[]);
    j.parameters[0].required = false;
    let j = s.jobs().create(j).await.unwrap();
    let status = s
        .jobs()
        .start(&j.id, &[("token", &deploy.id)])
        .await
        .unwrap_err();
    assert_denied_naming(&status, "token");
    assert!(
        status.message().contains("allows no credential"),
        "{status:?}"
    );
    assert!(runs_of_job(s, &j.id).await.is_empty());
}

on_both_backends!(allowed_credential_ids_are_validated_when_a_job_is_saved);
/// `allowed_credential_ids` is validated at CreateJob and UpdateJob: only on SECRET
/// parameters, canonical ids, no duplicates, at most 64, and a default must be one of them.
/// Nothing is stored when it is refused.
async fn allowed_credential_ids_are_validated_when_a_job_is_saved(s: &Sandbox) {
    let id = uuid::Uuid::now_v7().to_string();
    let other = uuid::Uuid::now_v7().to_string();
    let field = "job.parameters[0].allowed_credential_ids";
    let with = |spec: ParameterSpec| {
        let mut j = job("validated", vec![shell("s", "true")]);
        j.parameters = vec![spec];
        j
    };
    let string_param = ParameterSpec {
        name: "p".into(),
        r#type: ParameterType::String as i32,
        allowed_credential_ids: vec![id.clone()],
        ..Default::default()
    };
    let too_many: Vec<String> = (0..65).map(|_| uuid::Uuid::now_v7().to_string()).collect();
    let cases: Vec<(ParameterSpec, Vec<String>)> = vec![
        (string_param, vec![field.to_string()]),
        (
            ParameterSpec {
                r#type: ParameterType::Choice as i32,
                choices: vec!["a".into()],
                ..secret_param("p", &[&id])
            },
            vec![field.to_string()],
        ),
        (
            secret_param(
                "p",
                &["not-a-uuid", &id.to_uppercase(), &format!("{{{id}}}"), ""],
            ),
            (0..4).map(|i| format!("{field}[{i}]")).collect(),
        ),
        (
            secret_param("p", &[&id, &other, &id]),
            vec![format!("{field}[2]")],
        ),
        (
            ParameterSpec {
                allowed_credential_ids: too_many,
                ..secret_param("p", &[])
            },
            vec![field.to_string()],
        ),
        (
            ParameterSpec {
                default_value: other.clone(),
                ..secret_param("p", &[&id])
            },
            vec!["job.parameters[0].default_value".to_string()],
        ),
    ];
    for (spec, fields) in cases {
        let status = s.jobs().create(with(spec.clone())).await.unwrap_err();
        let fields: Vec<&str> = fields.iter().map(String::as_str).collect();
        assert_violations(&status, &fields);
    }
    // UpdateJob checks the same, and leaves the job as it was.
    let saved = s
        .jobs()
        .create(with(ParameterSpec {
            default_value: id.clone(),
            ..secret_param("p", &[&id])
        }))
        .await
        .unwrap();
    let mut patch = saved.clone();
    patch.parameters = vec![secret_param("p", &["nope"])];
    let status = s
        .jobs()
        .update_job(UpdateJobRequest {
            job: Some(patch),
            update_mask: Some(FieldMask {
                paths: vec!["parameters".into()],
            }),
            expected_revision: 0,
        })
        .await
        .unwrap_err();
    assert_violations(&status, &[&format!("{field}[0]")]);
    let now = s
        .jobs()
        .get_job(GetJobRequest {
            id: saved.id.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .job
        .unwrap();
    assert_eq!(now.revision, 1);
    assert_eq!(now.parameters[0].allowed_credential_ids, vec![id]);
}

/// A run this test holds as the executor would: the sandbox's executor is stopped, and the test
/// claims the run with the executor's identity, keeping the lease token ClaimRun gives.
struct Held {
    run: Run,
    lease_token: String,
    executor_id: String,
}

async fn hold(s: &Sandbox, job_id: &str, parameters: &[(&str, &str)]) -> Held {
    let run = s.jobs().start(job_id, parameters).await.unwrap();
    let executor = s.service_token(ServiceKind::Executor).await;
    let executor_id = format!("test-executor-{}", uuid::Uuid::now_v7().simple());
    let claim = s
        .clients_as(&executor)
        .jobs()
        .claim_run(ClaimRunRequest {
            executor_id: executor_id.clone(),
            run_id: run.id.clone(),
            claim_key: CLAIM_KEY.into(),
        })
        .await
        .unwrap()
        .into_inner();
    Held {
        run: claim.run.unwrap(),
        lease_token: claim.lease_token,
        executor_id,
    }
}

impl Held {
    /// The executor's reveal of `credential_id` for this run under `key`.
    fn reveal(&self, credential_id: &str, key: &str) -> RevealCredentialRequest {
        RevealCredentialRequest {
            id: credential_id.into(),
            reason: "secret parameter of a held run".into(),
            idempotency_key: key.into(),
            run_id: self.run.id.clone(),
            target_id: String::new(),
            executor_id: self.executor_id.clone(),
            secret_version: 0,
            lease_token: self.lease_token.clone(),
        }
    }
}

/// The key the test's claims are made with.
const CLAIM_KEY: &str = "claim-key-of-the-test-0001";

/// Knowing a running run's executor id (which `GetRun` shows) is not enough to be handed a
/// new lease on it, with which its credentials could be revealed: only the claim repeated with
/// the executor's own claim key is (an answer lost on the way), and then the old token is void.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_claim_cannot_be_taken_over_by_its_executor_id() {
    let s = without_executor(StorageBackend::Sqlite).await;
    let token = api_token(&s, "deploy-token", "deploy-secret-0123456789").await;
    let j = s
        .jobs()
        .create(reverser("takeover", &[&token.id]))
        .await
        .unwrap();
    let held = hold(&s, &j.id, &[("token", &token.id)]).await;
    let executor = s.service_token(ServiceKind::Executor).await;
    let claim = |key: &str| ClaimRunRequest {
        executor_id: held.executor_id.clone(),
        run_id: held.run.id.clone(),
        claim_key: key.into(),
    };
    for key in ["another-key-0000000001", &CLAIM_KEY.to_uppercase()] {
        let err = s
            .clients_as(&executor)
            .jobs()
            .claim_run(claim(key))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::FailedPrecondition, "{key}: {err:?}");
    }
    for key in ["", "short"] {
        let err = s
            .clients_as(&executor)
            .jobs()
            .claim_run(claim(key))
            .await
            .unwrap_err();
        assert_violations(&err, &["claim_key"]);
    }
    // The holder's lease still works.
    as_executor(&s)
        .await
        .reveal_credential(held.reveal(&token.id, "takeover-1"))
        .await
        .unwrap();
    // The claim repeated with its own key: a new token, and the old one is void.
    let again = s
        .clients_as(&executor)
        .jobs()
        .claim_run(claim(CLAIM_KEY))
        .await
        .unwrap()
        .into_inner();
    assert_ne!(again.lease_token, held.lease_token);
    let err = as_executor(&s)
        .await
        .reveal_credential(held.reveal(&token.id, "takeover-2"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    s.stop().await;
}

async fn as_executor(s: &Sandbox) -> CredentialsServiceClient<AuthChannel> {
    let executor = s.service_token(ServiceKind::Executor).await;
    s.clients_as(&executor).credentials()
}

async fn without_executor(backend: StorageBackend) -> Sandbox {
    let mut s = Sandbox::start(backend).await;
    s.stop_service(ServiceKind::Executor).await;
    s
}

fn token_of(revealed: &RevealCredentialResponse) -> String {
    match revealed.secret.as_ref().and_then(|s| s.material.as_ref()) {
        Some(Material::ApiToken(t)) => t.token.clone(),
        other => panic!("not an API token: {other:?}"),
    }
}

/// The executor's own identity, holding a real lease, asks for credentials its run may not use:
/// one the job does not allow, one it allows but the run does not name, one a target refers to
/// when that target is not the run's, one the run's target does not refer to; and for the run's
/// own credential without the lease. The run's own SECRET and target credentials are revealed.
async fn a_reveal_for_a_credential_outside_the_allowlist_is_refused(backend: StorageBackend) {
    let s = without_executor(backend).await;
    let prod_root = api_token(&s, "prod-root", "root-secret-0123456789").await;
    let deploy = api_token(&s, "deploy-token", "deploy-secret-0123456789").await;
    let spare = api_token(&s, "spare-token", "spare-secret-0123456789").await;
    let elsewhere = s
        .targets()
        .create(Target {
            name: "db-1".into(),
            address: "10.0.0.9".into(),
            port: 22,
            credential_refs: vec![CredentialRef {
                protocol: Protocol::Ssh as i32,
                credential_id: prod_root.id.clone(),
            }],
            ..Default::default()
        })
        .await
        .unwrap();
    // The run's own target, whose SSH credential the run may use for it.
    let web_key = api_token(&s, "web-key", "web-secret-0123456789").await;
    let web = s
        .targets()
        .create(Target {
            name: "web-1".into(),
            address: "10.0.0.8".into(),
            port: 22,
            credential_refs: vec![CredentialRef {
                protocol: Protocol::Ssh as i32,
                credential_id: web_key.id.clone(),
            }],
            ..Default::default()
        })
        .await
        .unwrap();
    let mut j = reverser("held-reverser", &[&deploy.id, &spare.id]);
    j.targets = Some(TargetSelector {
        names: vec!["web-1".into()],
        ..Default::default()
    });
    let j = s.jobs().create(j).await.unwrap();
    let held = hold(&s, &j.id, &[("token", &deploy.id)]).await;
    assert_eq!(held.run.targets.len(), 1);
    let mut executor = as_executor(&s).await;

    let refusals = [
        ("not allowed", held.reveal(&prod_root.id, "k1")),
        ("allowed, not named", held.reveal(&spare.id, "k2")),
        (
            "a target that is not the run's",
            RevealCredentialRequest {
                target_id: elsewhere.id.clone(),
                ..held.reveal(&prod_root.id, "k3")
            },
        ),
        (
            "a guessed lease token",
            RevealCredentialRequest {
                lease_token: "0".repeat(64),
                ..held.reveal(&deploy.id, "k4")
            },
        ),
        (
            "the run's target, which does not refer to it",
            RevealCredentialRequest {
                target_id: web.id.clone(),
                ..held.reveal(&prod_root.id, "k9")
            },
        ),
        (
            "another executor's id",
            RevealCredentialRequest {
                executor_id: "another-executor".into(),
                ..held.reveal(&deploy.id, "k5")
            },
        ),
        (
            "another run",
            RevealCredentialRequest {
                run_id: uuid::Uuid::now_v7().to_string(),
                ..held.reveal(&deploy.id, "k6")
            },
        ),
    ];
    for (what, request) in refusals {
        let status = executor.reveal_credential(request).await.unwrap_err();
        assert_eq!(status.code(), Code::PermissionDenied, "{what}: {status:?}");
        assert!(!status.message().contains("secret-0123"), "{what}");
    }
    let status = executor
        .reveal_credential(RevealCredentialRequest {
            lease_token: String::new(),
            ..held.reveal(&deploy.id, "k7")
        })
        .await
        .unwrap_err();
    assert_violations(&status, &["lease_token"]);

    // The run's own credential, with the lease: revealed.
    let revealed = executor
        .reveal_credential(held.reveal(&deploy.id, "k8"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(token_of(&revealed), "deploy-secret-0123456789");
    // And the run's target's own credential, for that target.
    let revealed = executor
        .reveal_credential(RevealCredentialRequest {
            target_id: web.id.clone(),
            ..held.reveal(&web_key.id, "k10")
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(token_of(&revealed), "web-secret-0123456789");
    for refused in [&prod_root, &spare] {
        let now = s.credentials().get(&refused.id).await.unwrap();
        assert!(now.last_reveal_time.is_none(), "{} was revealed", now.name);
    }
    let events = drain_audit(&s).await;
    assert_eq!(
        count(&events, "credential.reveal", AuditOutcome::Success),
        2
    );
    assert_eq!(count(&events, "credential.reveal", AuditOutcome::Denied), 7);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reveal_for_a_credential_outside_the_allowlist_is_refused_sqlite() {
    a_reveal_for_a_credential_outside_the_allowlist_is_refused(StorageBackend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reveal_for_a_credential_outside_the_allowlist_is_refused_postgres() {
    a_reveal_for_a_credential_outside_the_allowlist_is_refused(StorageBackend::Postgres).await;
}

/// An idempotency key is not a grant: each retry is checked again in full and audited as a
/// reveal of its own, and once the run has ended the same key reveals nothing.
async fn a_replayed_reveal_rechecks_and_is_audited(backend: StorageBackend) {
    let s = without_executor(backend).await;
    let deploy = api_token(&s, "deploy-token", "deploy-secret-0123456789").await;
    let j = s
        .jobs()
        .create(reverser("replayed", &[&deploy.id]))
        .await
        .unwrap();
    let held = hold(&s, &j.id, &[("token", &deploy.id)]).await;
    let mut executor = as_executor(&s).await;
    let first = executor
        .reveal_credential(held.reveal(&deploy.id, "same-key"))
        .await
        .unwrap()
        .into_inner();
    let again = executor
        .reveal_credential(held.reveal(&deploy.id, "same-key"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(token_of(&again), token_of(&first));
    assert_ne!(again.audit_event_id, first.audit_event_id);

    // The run ends (its executor completes it): the same key, and a new one, reveal nothing.
    let executor_token = s.service_token(ServiceKind::Executor).await;
    s.clients_as(&executor_token)
        .jobs()
        .complete_run(CompleteRunRequest {
            run_id: held.run.id.clone(),
            lease_token: held.lease_token.clone(),
            state: RunState::Succeeded as i32,
            error: String::new(),
        })
        .await
        .unwrap();
    for key in ["same-key", "fresh-key"] {
        let status = executor
            .reveal_credential(held.reveal(&deploy.id, key))
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::PermissionDenied, "{key}: {status:?}");
        assert!(status.message().contains("not running"), "{status:?}");
    }

    let events = drain_audit(&s).await;
    let reveals: Vec<_> = events
        .iter()
        .filter(|e| {
            e.action == "credential.reveal" && e.details.get("run_id") == Some(&held.run.id)
        })
        .collect();
    let accepted: Vec<_> = reveals
        .iter()
        .filter(|e| e.outcome == AuditOutcome::Success as i32)
        .collect();
    assert_eq!(accepted.len(), 2, "{reveals:#?}");
    let replay = accepted
        .iter()
        .find(|e| e.id == again.audit_event_id)
        .expect("the replay's own event");
    assert_eq!(replay.details["replay_of"], first.audit_event_id);
    assert_eq!(
        reveals
            .iter()
            .filter(|e| e.outcome == AuditOutcome::Denied as i32)
            .count(),
        2
    );
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replayed_reveal_rechecks_and_is_audited_sqlite() {
    a_replayed_reveal_rechecks_and_is_audited(StorageBackend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replayed_reveal_rechecks_and_is_audited_postgres() {
    a_replayed_reveal_rechecks_and_is_audited(StorageBackend::Postgres).await;
}
