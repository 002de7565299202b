//! Failures: a receiver that fails twice then accepts gets one delivery after two retries,
//! every attempt recorded; 410 is permanent and dead-letters at once (the dead letter names the
//! delivery and nothing else), and ResendDelivery sends it again; Retry-After is honoured; a
//! lost broker connection in the middle of 200 deliveries loses none and sends none twice.

use std::collections::HashSet;
use std::time::Duration;

use opsconductor_api::common::v1::NotificationChannel;
use opsconductor_api::deadletters::v1::dead_letter_service_client::DeadLetterServiceClient;
use opsconductor_api::deadletters::v1::{GetDeadLetterRequest, ListDeadLettersRequest};
use opsconductor_api::notification::v1::*;
use opsconductor_platform::ServiceKind;
use opsconductor_testkit::{channel_as, HttpSink, Reply, Sandbox, StorageBackend};

use super::{get, reaches, send, to};
use crate::jobs::LIMIT;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_are_retried_recorded_and_dead_lettered() {
    let s = Sandbox::start_with(
        StorageBackend::Postgres,
        &[("NOTIFICATION_MAX_ATTEMPTS", "4")],
    )
    .await;
    let sink = HttpSink::start().await;

    // 500, 500, then 200: exactly one successful delivery, three attempts on record.
    sink.script("/flaky", vec![Reply::status(500), Reply::status(500)]);
    let d = send(
        &s,
        to(
            NotificationChannel::Webhook,
            &sink.url("/flaky"),
            r#"{"a": 1}"#,
        ),
    )
    .await;
    let delivered = reaches(&s, &d.id, DeliveryState::Delivered).await;
    let got = sink.wait_for("/flaky", 3, LIMIT).await;
    assert_eq!(
        got.iter().map(|r| r.status_sent).collect::<Vec<_>>(),
        [500, 500, 200]
    );
    assert!(got.iter().all(|r| r.headers["webhook-id"] == d.id.as_str()));
    assert_eq!(delivered.attempts, 3);
    let log: Vec<(i32, u32)> = delivered
        .attempt_log
        .iter()
        .map(|a| (a.outcome, a.status))
        .collect();
    assert_eq!(
        log,
        [
            (AttemptOutcome::Retry as i32, 500),
            (AttemptOutcome::Retry as i32, 500),
            (AttemptOutcome::Delivered as i32, 200),
        ]
    );
    assert!(delivered.attempt_log.iter().all(|a| a.latency.is_some()));

    // 410 Gone: permanent; FAILED after one attempt and in the dead-letter queue at once.
    sink.script("/gone", vec![Reply::status(410)]);
    let gone = send(
        &s,
        to(
            NotificationChannel::Webhook,
            &sink.url("/gone?token=hook-secret"),
            "{}",
        ),
    )
    .await;
    let failed = reaches(&s, &gone.id, DeliveryState::Failed).await;
    assert_eq!(failed.attempts, 1);
    assert!(failed.last_error.contains("410"), "{}", failed.last_error);
    let mut dlq = DeadLetterServiceClient::new(channel_as(
        &s.url(ServiceKind::Notification),
        s.admin.access_token.clone(),
    ));
    let queue = s.broker.names().dead_letter_queue(
        &opsconductor_messaging::topology::platform::notification_queue("webhook"),
    );
    let until = std::time::Instant::now() + LIMIT;
    let listed = loop {
        assert!(
            std::time::Instant::now() < until,
            "nothing was dead-lettered in time"
        );
        let listed = dlq
            .list_dead_letters(ListDeadLettersRequest {
                queue: queue.clone(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        if !listed.dead_letters.is_empty() {
            break listed;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    };
    assert_eq!(listed.dead_letters.len(), 1);
    let letter = dlq
        .get_dead_letter(GetDeadLetterRequest {
            id: listed.dead_letters[0].id.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .dead_letter
        .unwrap();
    assert!(letter.body_json.contains(&gone.id), "{}", letter.body_json);
    // No destination, no body, no token in the broker or its dead letters.
    let whole = format!("{letter:?} {}", letter.body_json);
    assert!(
        !whole.contains("hook-secret") && !whole.contains("/gone"),
        "{whole}"
    );

    // The receiver is fixed; an administrator resends: the same delivery, delivered.
    let resent = s
        .notification()
        .resend_delivery(ResendDeliveryRequest {
            id: gone.id.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .delivery
        .unwrap();
    assert_eq!(resent.state, DeliveryState::Pending as i32);
    let delivered = reaches(&s, &gone.id, DeliveryState::Delivered).await;
    assert_eq!(delivered.attempts, 2);
    let err = s
        .notification()
        .resend_delivery(ResendDeliveryRequest {
            id: gone.id.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::FailedPrecondition);

    // Failing every time: dead-lettered after the last attempt (four here), each one recorded.
    sink.script("/down", vec![Reply::status(503); 10]);
    let down = send(
        &s,
        to(NotificationChannel::Webhook, &sink.url("/down"), "{}"),
    )
    .await;
    let dead = reaches(&s, &down.id, DeliveryState::DeadLettered).await;
    assert_eq!(dead.attempts, 4);
    assert_eq!(dead.attempt_log.len(), 4);
    assert_eq!(sink.received("/down").len(), 4);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_after_is_honoured() {
    let s = Sandbox::start(StorageBackend::Sqlite).await;
    let sink = HttpSink::start().await;
    sink.script("/busy", vec![Reply::status(429).retry_after("2")]);
    let d = send(
        &s,
        to(NotificationChannel::Webhook, &sink.url("/busy"), "{}"),
    )
    .await;
    let got = sink.wait_for("/busy", 2, LIMIT).await;
    let waited = got[1].at.duration_since(got[0].at);
    assert!(waited >= Duration::from_secs(2), "retried after {waited:?}");
    let delivered = reaches(&s, &d.id, DeliveryState::Delivered).await;
    let first = &delivered.attempt_log[0];
    assert_eq!(first.status, 429);
    assert_eq!(first.retry_after.as_ref().map(|d| d.seconds), Some(2));
    s.stop().await;
}

/// Past its rate limit a destination's deliveries wait, DEFERRED, without using attempts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_destination_over_its_rate_limit_waits_without_losing_attempts() {
    let s = Sandbox::start_with(
        StorageBackend::Sqlite,
        &[
            // One token every 15 s: the second send waits about that long, long enough to be
            // seen DEFERRED even when a loaded machine takes seconds between the two sends.
            ("NOTIFICATION_RATE_PER_MINUTE", "4"),
            ("NOTIFICATION_RATE_BURST", "1"),
            ("NOTIFICATION_RATE_MAX_WAIT_MS", "0"),
        ],
    )
    .await;
    let sink = HttpSink::start().await;
    let first = send(
        &s,
        to(
            NotificationChannel::Webhook,
            &sink.url("/slow"),
            r#"{"n": 1}"#,
        ),
    )
    .await;
    let second = send(
        &s,
        to(
            NotificationChannel::Webhook,
            &sink.url("/slow"),
            r#"{"n": 2}"#,
        ),
    )
    .await;
    // The two are handled concurrently: whichever reaches the limiter second waits.
    let deadline = std::time::Instant::now() + LIMIT;
    let (held, prompt) = loop {
        let (a, b) = (get(&s, &first.id).await, get(&s, &second.id).await);
        if a.state == DeliveryState::Deferred as i32 {
            break (a, b);
        }
        if b.state == DeliveryState::Deferred as i32 {
            break (b, a);
        }
        assert!(
            std::time::Instant::now() < deadline,
            "neither delivery was held: {a:?} {b:?}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    };
    reaches(&s, &prompt.id, DeliveryState::Delivered).await;
    assert!(
        held.last_error.contains("rate limit"),
        "{}",
        held.last_error
    );
    assert_eq!(held.attempts, 0);
    let delivered = reaches(&s, &held.id, DeliveryState::Delivered).await;
    assert_eq!(delivered.attempts, 1);
    let got = sink.wait_for("/slow", 2, LIMIT).await;
    let gap = got[1].at.duration_since(got[0].at);
    assert!(gap >= Duration::from_secs(4), "sent {gap:?} apart");
    s.stop().await;
}

/// The broker drops the notification service's connection while 200 deliveries are under
/// way: every delivery arrives, and no webhook-id arrives twice (a redelivered message finds
/// its delivery delivered, or held by the worker still sending it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_broker_connection_loses_nothing_and_sends_nothing_twice() {
    const N: usize = 200;
    let s = Sandbox::start_with(
        StorageBackend::Postgres,
        &[("NOTIFICATION_RATE_PER_MINUTE", "0")],
    )
    .await;
    let sink = HttpSink::start().await;
    // Slow enough that many deliveries are in flight when the connection drops.
    sink.script(
        "/flow",
        vec![Reply::status(200).delay(Duration::from_millis(20)); N],
    );
    let mut ids = Vec::new();
    for i in 0..N {
        let body = format!(r#"{{"i": {i}}}"#);
        ids.push(
            send(
                &s,
                to(NotificationChannel::Webhook, &sink.url("/flow"), &body),
            )
            .await
            .id,
        );
        if i == N / 4 {
            sink.wait_for("/flow", 1, LIMIT).await;
            let closed = opsconductor_testkit::close_broker_connections(
                s.broker.names().prefix(),
                "notification",
            );
            assert!(closed >= 1, "no notification connection to close");
        }
    }
    let got = sink.wait_for("/flow", N, LIMIT * 2).await;
    let seen: Vec<String> = got
        .iter()
        .map(|r| r.headers["webhook-id"].to_str().unwrap().to_string())
        .collect();
    let unique: HashSet<&String> = seen.iter().collect();
    assert_eq!(unique.len(), N, "every delivery arrived");
    assert_eq!(seen.len(), N, "none twice");
    for id in &ids {
        assert_eq!(get(&s, id).await.state, DeliveryState::Delivered as i32);
    }
    // Nothing more arrives once the redelivered copies have been settled.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(sink.received("/flow").len(), N);
    s.stop().await;
}
