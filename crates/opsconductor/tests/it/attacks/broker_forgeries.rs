//! The broker is not a trust boundary: `guest` (what `opsconductor up` runs on) can publish to
//! every exchange, so a message is acted on only when it proves its producer — a service whose
//! message key the auth service certified, among the services its queue accepts. Forgeries of
//! every effectful message are dead-lettered with the reason and counted on `/metrics`; the
//! same cancel, signed by the jobs service's identity, cancels (so the refusals are not
//! vacuous).

use std::sync::Arc;
use std::time::{Duration, Instant};

use lapin::options::{BasicGetOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable};
use opsconductor_api::audit::v1::AuditEvent;
use opsconductor_api::credentials::v1::CredentialExpiring;
use opsconductor_api::jobs::v1::*;
use opsconductor_api::scheduler::v1::ScheduleFireFailed;
use opsconductor_messaging::topology::platform;
use opsconductor_messaging::{headers, Broker, OutgoingMessage, Topology};
use opsconductor_platform::ServiceKind;
use opsconductor_testkit::{amqp_url, JobsExt, Sandbox, StorageBackend};
use opsconductor_tokens::SigningKey;

use super::publish_raw;
use crate::jobs::{job, shell, LIMIT};
use crate::metrics::{http, sample};

/// `kind`'s count of refused forgeries.
async fn forgeries(s: &Sandbox, kind: ServiceKind) -> f64 {
    let (_, text) = http("GET", &s.metrics_url(kind)).await;
    sample(&text, "opsconductor_messaging_forgeries_refused_total", &[]).unwrap_or(0.0)
}

/// Waits until `kind` has refused `at_least` forgeries.
async fn refused(s: &Sandbox, kind: ServiceKind, at_least: f64) {
    let deadline = Instant::now() + LIMIT;
    loop {
        let n = forgeries(s, kind).await;
        if n >= at_least {
            assert_eq!(n, at_least, "{kind} refused more than was forged");
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{kind} refused {n} of {at_least}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A broker connection publishing as `kind` would (its producer signature).
fn signing_as(s: &Sandbox, kind: ServiceKind) -> Broker {
    Broker::start_trusted(
        s.broker.config("test-forger"),
        Topology::new(),
        s.producer_trust(kind),
    )
}

/// `message` as the jobs service really signs it, read back off a queue of the test's own:
/// its headers are what an eavesdropper on the broker captures.
async fn captured(s: &Sandbox, message: &OutgoingMessage) -> OutgoingMessage {
    let connection = lapin::Connection::connect(&amqp_url(), Default::default())
        .await
        .unwrap();
    let channel = connection.create_channel().await.unwrap();
    let queue = channel
        .queue_declare(
            "".into(),
            QueueDeclareOptions {
                exclusive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
    let jobs = signing_as(s, ServiceKind::Jobs);
    let mut direct = message.clone();
    direct.exchange = String::new();
    direct.routing_key = queue.name().to_string();
    jobs.publisher().publish(&direct).await.unwrap();
    jobs.close().await;
    let got = channel
        .basic_get(queue.name().clone(), BasicGetOptions { no_ack: true })
        .await
        .unwrap()
        .expect("the signed message");
    let mut captured = message.clone();
    for (key, value) in got.delivery.properties.headers().clone().unwrap().inner() {
        if let AMQPValue::LongString(text) = value {
            captured.headers.insert(
                key.to_string(),
                String::from_utf8_lossy(text.as_bytes()).into_owned(),
            );
        }
    }
    assert!(captured.headers.contains_key(headers::PRODUCER_SIGNATURE));
    let _ = connection.close(200, "done".into()).await;
    captured
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_broker_messages_are_dead_lettered_and_change_nothing() {
    let s = Sandbox::start(StorageBackend::Sqlite).await;
    let j = s
        .jobs()
        .create(job("long", vec![shell("nap", "echo started; sleep 60")]))
        .await
        .unwrap();
    let run = s.jobs().start(&j.id, &[]).await.unwrap();
    let deadline = Instant::now() + LIMIT;
    while s.jobs().log_text(&run.id).await.unwrap().is_empty() {
        assert!(Instant::now() < deadline, "the step never started");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // 1. Cancels of the running run, five ways.
    let jobs_exchange = s.broker.names().exchange(&platform::jobs_exchange());
    let cancel = |run_id: &str| {
        OutgoingMessage::new(
            &jobs_exchange,
            platform::RUN_CANCEL_REQUESTED,
            &RunCancelRequested {
                run_id: run_id.into(),
                reason: "forged".into(),
                ..Default::default()
            },
        )
    };
    // Unsigned, as `guest`.
    publish_raw(&jobs_exchange, &cancel(&run.id)).await;
    // Signed by a real service identity that does not send cancels.
    let targets = signing_as(&s, ServiceKind::Targets);
    targets.publisher().publish(&cancel(&run.id)).await.unwrap();
    targets.close().await;
    // Certified by the attacker's own key, in the jobs service's name.
    let attacker = opsconductor_testkit::producer_trust(Arc::new(SigningKey::generate()), "jobs");
    let self_certified =
        Broker::start_trusted(s.broker.config("test-forger"), Topology::new(), attacker);
    self_certified
        .publisher()
        .publish(&cancel(&run.id))
        .await
        .unwrap();
    self_certified.close().await;
    // A real jobs signature (of a cancel for another run) on this run's cancel, and the same
    // message replayed under a new id.
    let genuine = captured(&s, &cancel("01900000-0000-7000-8000-000000000000")).await;
    let mut tampered = genuine.clone();
    tampered.body = cancel(&run.id).body;
    publish_raw(&jobs_exchange, &tampered).await;
    let mut renamed = tampered.clone();
    renamed.message_id = uuid::Uuid::now_v7().to_string();
    publish_raw(&jobs_exchange, &renamed).await;

    refused(&s, ServiceKind::Executor, 5.0).await;
    let dlq = s
        .broker
        .names()
        .broadcast_dead_letter_queue(&platform::run_cancellations());
    let connection = lapin::Connection::connect(&amqp_url(), Default::default())
        .await
        .unwrap();
    let channel = connection.create_channel().await.unwrap();
    let mut reasons = Vec::new();
    while let Some(dead) = channel
        .basic_get(dlq.as_str().into(), BasicGetOptions { no_ack: true })
        .await
        .unwrap()
    {
        let table = dead.delivery.properties.headers().clone().unwrap();
        match table.inner().get(headers::LAST_ERROR) {
            Some(AMQPValue::LongString(s)) => {
                reasons.push(String::from_utf8_lossy(s.as_bytes()).into_owned())
            }
            other => panic!("no reason: {other:?}"),
        }
    }
    let _ = connection.close(200, "done".into()).await;
    reasons.sort();
    assert_eq!(reasons.len(), 5, "{reasons:?}");
    for fragment in [
        "not signed by its producer",
        "\"targets\" may not publish",
        "certificate is refused",
    ] {
        assert_eq!(
            reasons.iter().filter(|r| r.contains(fragment)).count(),
            1,
            "{fragment}: {reasons:?}"
        );
    }
    assert_eq!(
        reasons
            .iter()
            .filter(|r| r.contains("signature is refused"))
            .count(),
        2,
        "{reasons:?}"
    );
    let still = s.jobs().run(&run.id).await.unwrap();
    assert_eq!(still.state, RunState::Running as i32, "{still:?}");

    // 2. Every other effectful message, unsigned, to the service that would act on it.
    let events = s.broker.names().exchange(&platform::events_exchange());
    let finished = RunFinished {
        run_id: run.id.clone(),
        job_id: j.id.clone(),
        job_name: "long".into(),
        state: RunState::Failed as i32,
        ..Default::default()
    };
    let started = RunStarted {
        run_id: run.id.clone(),
        job_id: j.id.clone(),
        ..Default::default()
    };
    let sweep = [
        OutgoingMessage::new(
            &jobs_exchange,
            platform::RUN_REQUESTED,
            &RunRequested {
                run_id: run.id.clone(),
                job_id: j.id.clone(),
                attempt: 2,
                requested_time: None,
            },
        ),
        OutgoingMessage::new(
            &jobs_exchange,
            platform::RUN_PROGRESS,
            &RunProgress {
                origin: "elsewhere".into(),
                run_id: run.id.clone(),
                events: Vec::new(),
            },
        ),
        OutgoingMessage::new(&events, platform::RUN_FINISHED, &finished),
        OutgoingMessage::new(&events, platform::RUN_STARTED, &started),
        OutgoingMessage::new(
            &events,
            platform::CREDENTIAL_EXPIRING,
            &CredentialExpiring::default(),
        ),
        OutgoingMessage::new(
            &events,
            platform::SCHEDULE_FIRE_FAILED,
            &ScheduleFireFailed::default(),
        ),
        OutgoingMessage::new(
            s.broker
                .names()
                .exchange(&platform::notification_exchange()),
            "webhook",
            &AuditEvent::default(),
        ),
        OutgoingMessage::new(
            s.broker.names().exchange(&platform::audit_exchange()),
            "run.start",
            &AuditEvent {
                id: uuid::Uuid::now_v7().to_string(),
                action: "run.start".into(),
                source: "jobs".into(),
                ..Default::default()
            },
        ),
    ];
    for message in &sweep {
        publish_raw(&message.exchange, message).await;
    }
    // The executor (a second claim), the jobs service (progress for watchers), the notification
    // service (run finished and started, expiring credential, failed fire, a channel message),
    // the scheduler (finished and started release overlap holds), the audit service.
    refused(&s, ServiceKind::Executor, 6.0).await;
    refused(&s, ServiceKind::Jobs, 1.0).await;
    refused(&s, ServiceKind::Notification, 5.0).await;
    refused(&s, ServiceKind::Scheduler, 2.0).await;
    refused(&s, ServiceKind::Audit, 1.0).await;

    // 3. A service may audit only as itself: an event signed by the targets service that
    // names the credentials service as its source is refused.
    let spoofed = AuditEvent {
        id: uuid::Uuid::now_v7().to_string(),
        action: "credential.reveal".into(),
        source: "credentials".into(),
        ..Default::default()
    };
    let spoof = OutgoingMessage::new(
        s.broker.names().exchange(&platform::audit_exchange()),
        "credential.reveal",
        &spoofed,
    );
    let targets = signing_as(&s, ServiceKind::Targets);
    targets.publisher().publish(&spoof).await.unwrap();
    targets.close().await;
    let letters = crate::support::dead_letters(
        &s,
        ServiceKind::Audit,
        &s.broker
            .names()
            .dead_letter_queue(&platform::audit_events()),
        2,
    )
    .await;
    let letter = letters
        .iter()
        .find(|l| l.message_id == spoof.message_id)
        .unwrap_or_else(|| panic!("{letters:?}"));
    assert!(
        letter.last_error.contains("names source \"credentials\""),
        "{}",
        letter.last_error
    );
    assert!(crate::support::drain_audit(&s)
        .await
        .iter()
        .all(|e| e.id != spoofed.id));

    // 4. The run is still running; the jobs service's own signature cancels it.
    let still = s.jobs().run(&run.id).await.unwrap();
    assert_eq!(still.state, RunState::Running as i32, "{still:?}");
    let jobs = signing_as(&s, ServiceKind::Jobs);
    jobs.publisher().publish(&cancel(&run.id)).await.unwrap();
    jobs.close().await;
    let (ended, _) = s.jobs().finish(&run.id, LIMIT).await.unwrap();
    assert_ne!(ended.state, RunState::Succeeded as i32, "{ended:?}");
    assert_eq!(ended.steps[0].state, StepState::Cancelled as i32);
    s.stop().await;
}
