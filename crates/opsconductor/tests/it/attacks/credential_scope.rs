//! Which credentials a run may use is the job author's choice, not the caller's: a SECRET
//! parameter accepts only the credentials its `allowed_credential_ids` lists (none when it lists
//! none). An operator aiming a run at the administrator's `prod-root` — by StartRun, by re-running
//! an older run, through a schedule's fires or a backfill — is refused with PERMISSION_DENIED
//! naming the parameter, no run is stored, and the secret never reaches a run's log.

use std::collections::HashSet;

use opsconductor_api::common::v1::Role;
use opsconductor_api::credentials::v1::secret_material::Material;
use opsconductor_api::credentials::v1::*;
use opsconductor_api::jobs::v1::*;
use opsconductor_api::scheduler::v1::{
    BackfillScheduleRequest, CreateScheduleRequest, FireOutcome, TriggerScheduleRequest,
    UpdateScheduleRequest,
};
use opsconductor_testkit::{assert_violations, on_both_backends, CredentialsExt, JobsExt, Sandbox};
use prost_types::FieldMask;
use tonic::{Code, Status};

use crate::jobs::{job, shell, LIMIT};
use crate::scheduler::{cron, now_secs, once, schedule_of, ts, wait_fires};

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
    // A schedule made while prod-root was allowed, firing every minute (for a backfill), and
    // one firing once a few seconds from now.
    let every_minute = crate::scheduler::create(s, {
        let mut sc = schedule_of("root-every-minute", &j.id, cron("* * * * *", "UTC"));
        sc.parameters = [("token".to_string(), prod_root.id.clone())].into();
        sc
    })
    .await;
    let soon = crate::scheduler::create(s, {
        let mut sc = schedule_of("root-soon", &j.id, once(now_secs() + 6));
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
            id: every_minute.id.clone(),
        })
        .await
        .unwrap_err();
    assert_denied_naming(&status, "token");
    let now = now_secs();
    let status = as_operator
        .scheduler()
        .backfill_schedule(BackfillScheduleRequest {
            id: every_minute.id.clone(),
            start_time: Some(ts(now - 600)),
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
                let mut sc = every_minute.clone();
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
    // The fire that comes due fails for good, and says why.
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
