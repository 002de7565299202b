//! RevealCredential latency, one call in flight, against the whole platform in this process
//! (the real broker, SQLite files, loopback gRPC): GetCredential as the baseline (same auth
//! layer, one metadata read); an administrator's reveal (unseal, reveal record and audit event
//! in one transaction); and the executor's reveal with the run check. The jobs service does not
//! exist yet, so the check is made by a stand-in that does what [`FromJobs`] does with two real
//! gRPC calls to the targets service — one in place of `CheckRunCredential`, one as itself — and checks the
//! target refers to the credential. Rounds alternate so every variant sees the same noise.
//!
//! [`FromJobs`]: opsconductor_credentials::FromJobs

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::future::{BoxFuture, FutureExt};
use opsconductor_api::credentials::v1::credentials_service_client::CredentialsServiceClient;
use opsconductor_api::credentials::v1::*;
use opsconductor_api::targets::v1::{CredentialRef, GetTargetRequest, Protocol, Target};
use opsconductor_credentials::{Credentials, Refused, RunChecker, RunUse};
use opsconductor_platform::auth::AuthChannel;
use opsconductor_platform::client::Clients;
use opsconductor_platform::ServiceKind;
use opsconductor_testkit::{channel_as, CredentialsExt, Sandbox, StorageBackend, TargetsExt};

use crate::stats::{ms, percentile};

/// Two GetTarget calls: the network and decoding cost of GetRun + GetTarget.
struct TwoHops(Clients);

impl RunChecker for TwoHops {
    fn check<'a>(&'a self, r: RunUse<'a>) -> BoxFuture<'a, Result<(), Refused>> {
        async move {
            let request = || GetTargetRequest {
                id: r.target_id.to_string(),
            };
            let unavailable = |e: tonic::Status| Refused::Unavailable(e.message().to_string());
            self.0
                .targets()
                .get_target(request())
                .await
                .map_err(unavailable)?;
            let target = self
                .0
                .targets()
                .get_target(request())
                .await
                .map_err(unavailable)?
                .into_inner()
                .target
                .ok_or_else(|| Refused::Unavailable("no target".into()))?;
            if target
                .credential_refs
                .iter()
                .any(|c| c.credential_id == r.credential_id)
            {
                Ok(())
            } else {
                Err(Refused::Denied("not referred to".into()))
            }
        }
        .boxed()
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Variant {
    Get,
    AdminReveal,
    ExecutorReveal,
}

pub async fn run(calls: usize, rounds: usize) -> anyhow::Result<()> {
    let s = Sandbox::start(StorageBackend::Sqlite).await;
    let secret = SecretMaterial {
        material: Some(secret_material::Material::Password(PasswordSecret {
            password: "bench password".into(),
        })),
    };
    let credential = s
        .credentials()
        .create(
            Credential {
                name: "bench".into(),
                kind: CredentialKind::Password as i32,
                ..Default::default()
            },
            secret,
        )
        .await?;
    let target = s
        .targets()
        .create(Target {
            name: "bench-host".into(),
            address: "10.0.0.1".into(),
            port: 22,
            credential_refs: vec![CredentialRef {
                protocol: Protocol::Ssh as i32,
                credential_id: credential.id.clone(),
            }],
            ..Default::default()
        })
        .await?;
    let replica = s
        .start_module(
            &Credentials::with_checker(Arc::new(TwoHops(s.clients_as(&s.admin.access_token)))),
            s.db(ServiceKind::Credentials).clone(),
            &[],
        )
        .await;
    let admin =
        CredentialsServiceClient::new(channel_as(&replica.url, s.admin.access_token.clone()));
    let executor = CredentialsServiceClient::new(channel_as(
        &replica.url,
        s.service_token(ServiceKind::Executor).await,
    ));

    let variants = [Variant::Get, Variant::AdminReveal, Variant::ExecutorReveal];
    let mut samples: Vec<Vec<Duration>> = vec![Vec::new(); variants.len()];
    let mut sequence = 0u64;
    for round in 0..rounds {
        for (i, variant) in variants.iter().enumerate() {
            let mut client = match variant {
                Variant::ExecutorReveal => executor.clone(),
                _ => admin.clone(),
            };
            // Warm the connection and the caches outside the samples.
            for _ in 0..20 {
                sequence += 1;
                call(&mut client, *variant, &credential.id, &target.id, sequence).await?;
            }
            for _ in 0..calls {
                sequence += 1;
                let started = Instant::now();
                call(&mut client, *variant, &credential.id, &target.id, sequence).await?;
                samples[i].push(started.elapsed());
            }
            println!("round {round}: {variant:?} done");
        }
    }
    let baseline = percentile(&mut samples[0].clone(), 0.5);
    println!("\n{calls} calls x {rounds} rounds each, one in flight, SQLite");
    println!(
        "{:<34} {:>9} {:>9} {:>12}",
        "", "p50 ms", "p99 ms", "p50 / Get"
    );
    for (i, variant) in variants.iter().enumerate() {
        let p50 = percentile(&mut samples[i], 0.5);
        let p99 = percentile(&mut samples[i], 0.99);
        println!(
            "{:<34} {:>9.3} {:>9.3} {:>12.2}",
            match variant {
                Variant::Get => "GetCredential (baseline)",
                Variant::AdminReveal => "RevealCredential, administrator",
                Variant::ExecutorReveal => "RevealCredential, executor + check",
            },
            ms(p50),
            ms(p99),
            p50.as_secs_f64() / baseline.as_secs_f64(),
        );
    }
    replica.stop().await?;
    s.stop().await;
    Ok(())
}

async fn call(
    client: &mut CredentialsServiceClient<AuthChannel>,
    variant: Variant,
    id: &str,
    target: &str,
    sequence: u64,
) -> anyhow::Result<()> {
    match variant {
        Variant::Get => {
            client.get(id).await?;
        }
        Variant::AdminReveal => {
            client.reveal(id, &format!("bench-{sequence}")).await?;
        }
        Variant::ExecutorReveal => {
            client
                .reveal_credential(RevealCredentialRequest {
                    id: id.into(),
                    reason: "bench".into(),
                    idempotency_key: format!("bench-{sequence}"),
                    run_id: "01900000-0000-7000-8000-0000000000a1".into(),
                    target_id: target.into(),
                    executor_id: "bench-executor".into(),
                    lease_token: "bench-lease".into(),
                    ..Default::default()
                })
                .await?;
        }
    }
    Ok(())
}
