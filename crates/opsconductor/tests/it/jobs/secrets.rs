//! SECRET parameters: the executor reveals the credential for the run (through the real check
//! with the jobs service), substitutes the secret, and masks it; the executor's identity cannot
//! reveal a credential the run does not name, nor for a run that is not running.

use opsconductor_api::credentials::v1::credentials_service_client::CredentialsServiceClient;
use opsconductor_api::credentials::v1::secret_material::Material;
use opsconductor_api::credentials::v1::*;
use opsconductor_api::jobs::v1::*;
use opsconductor_platform::ServiceKind;
use opsconductor_testkit::{channel_as, on_both_backends, CredentialsExt, JobsExt, Sandbox};
use sha2::{Digest, Sha256};
use tonic::Code;

use super::{job, shell, LIMIT};

async fn token(s: &Sandbox, name: &str, value: &str) -> Credential {
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

async fn secret_parameters_are_revealed_for_the_run_only(s: &Sandbox) {
    let value = format!("tok-{}", uuid::Uuid::now_v7().simple());
    let mine = token(s, "deploy-token", &value).await;
    let other = token(s, "someone-elses", "not-for-this-run").await;
    let mut j = job(
        "uses-a-secret",
        vec![shell(
            "use",
            "echo got={{ params.token }}; echo env=$OPS_PARAM_TOKEN; \
             printf %s \"$OPS_PARAM_TOKEN\" | sha256sum; echo waiting; sleep 2",
        )],
    );
    j.parameters = vec![ParameterSpec {
        name: "token".into(),
        r#type: ParameterType::Secret as i32,
        required: true,
        // `other` is allowed too, but this run does not name it: allowed is not revealable.
        allowed_credential_ids: vec![mine.id.clone(), other.id.clone()],
        ..Default::default()
    }];
    let j = s.jobs().create(j).await.unwrap();
    let run = s.jobs().start(&j.id, &[("token", &mine.id)]).await.unwrap();
    assert_eq!(run.parameter_credential_ids, std::slice::from_ref(&mine.id));
    super::leases::wait_for_line(s, &run.id, "waiting").await;

    // The executor's own identity, replaying a reveal for a credential this run does not name.
    let running = s.jobs().run(&run.id).await.unwrap();
    let executor_token = s.service_token(ServiceKind::Executor).await;
    let mut as_executor =
        CredentialsServiceClient::new(channel_as(&s.url(ServiceKind::Credentials), executor_token));
    let reveal = |id: &str, key: &str| RevealCredentialRequest {
        id: id.into(),
        reason: "replay".into(),
        idempotency_key: key.into(),
        run_id: run.id.clone(),
        target_id: String::new(),
        executor_id: running.executor_id.clone(),
        secret_version: 0,
        // The executor's identity without the lease: a token it can only guess.
        lease_token: "a-guessed-lease-token".into(),
    };
    let refused = as_executor
        .reveal_credential(reveal(&other.id, "a"))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::PermissionDenied, "{refused:?}");

    let (run, _) = s.jobs().finish(&run.id, LIMIT).await.unwrap();
    assert_eq!(
        RunState::try_from(run.state),
        Ok(RunState::Succeeded),
        "{}",
        run.error
    );
    let lines = s.jobs().log_text(&run.id).await.unwrap();
    assert!(lines.contains(&"got=****".to_string()), "{lines:?}");
    assert!(lines.contains(&"env=****".to_string()), "{lines:?}");
    let digest = hex::encode(Sha256::digest(value.as_bytes()));
    assert!(
        lines.iter().any(|l| l.starts_with(&digest)),
        "the step got the secret itself: {lines:?}"
    );
    assert!(!lines.iter().any(|l| l.contains(&value)));
    // Once the run is over, not even its own credential.
    let refused = as_executor
        .reveal_credential(reveal(&mine.id, "b"))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::PermissionDenied, "{refused:?}");
    assert!(s
        .credentials()
        .get(&other.id)
        .await
        .unwrap()
        .last_reveal_time
        .is_none());
}
on_both_backends!(secret_parameters_are_revealed_for_the_run_only);
