//! Deliveries the platform asks for: a run that fails notifies the user who ran it (per their
//! preferences) and a subscription on the job's label, end to end through the jobs service,
//! the executor and RunFinished; quiet hours hold what is not urgent and release it.

use chrono::{Duration as ChronoDuration, Timelike, Utc};
use opsconductor_api::common::v1::{NotificationChannel, Role};
use opsconductor_api::jobs::v1::RunState;
use opsconductor_api::notification::v1::send_notification_request::Recipient;
use opsconductor_api::notification::v1::*;
use opsconductor_api::user::v1::{ChannelDestination, NotificationPreferences, QuietHours};
use opsconductor_platform::ServiceKind;
use opsconductor_testkit::{HttpSink, JobsExt, Sandbox, StorageBackend, UsersExt};

use super::{reaches, send, to};
use crate::jobs::{job, shell, LIMIT};

fn webhook_to(url: &str) -> Vec<ChannelDestination> {
    vec![ChannelDestination {
        channel: NotificationChannel::Webhook as i32,
        destination: url.into(),
        enabled: true,
        signing_credential_id: String::new(),
    }]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_run_notifies_its_user_and_a_label_subscription() {
    let s = Sandbox::start(StorageBackend::Postgres).await;
    let sink = HttpSink::start().await;
    let (dave, session) = s.user_with_role("dave", Role::Operator).await;
    s.user()
        .set_preferences(NotificationPreferences {
            user_id: dave.id.clone(),
            destinations: webhook_to(&sink.url("/dave")),
            notify_on_failure: true,
            ..Default::default()
        })
        .await
        .unwrap();
    let as_dave = s.clients_as(&session.access_token);
    let subscription = as_dave
        .notification()
        .create_subscription(CreateSubscriptionRequest {
            subscription: Some(Subscription {
                selector: Some(subscription::Selector::Label("team=ops".into())),
                channel: NotificationChannel::Slack as i32,
                destination: sink.url("/ops-slack?token=slack-secret"),
                outcomes: Some(OutcomeFilter {
                    failed: true,
                    ..Default::default()
                }),
                ..Default::default()
            }),
        })
        .await
        .unwrap()
        .into_inner()
        .subscription
        .unwrap();
    assert!(!subscription.destination.contains("slack-secret"));
    assert_eq!(subscription.created_by.as_ref().unwrap().user_id, dave.id);

    let mut failing = job(
        "nightly-backup",
        vec![shell("copy", "echo copying; exit 3")],
    );
    failing.labels.insert("team".into(), "ops".into());
    let failing = s.jobs().create(failing).await.unwrap();
    let run = as_dave.jobs().start(&failing.id, &[]).await.unwrap();
    let (run, _) = s.jobs().finish(&run.id, LIMIT).await.unwrap();
    assert_eq!(RunState::try_from(run.state), Ok(RunState::Failed));

    let to_dave = sink.wait_for("/dave", 1, LIMIT).await;
    let body: serde_json::Value = serde_json::from_slice(&to_dave[0].body).unwrap();
    assert_eq!(body["type"], "run.failed", "{body}");
    assert_eq!(body["data"]["run"]["id"], run.id.as_str(), "{body}");
    assert_eq!(body["data"]["job"]["name"], "nightly-backup", "{body}");
    let to_ops = sink.wait_for("/ops-slack", 1, LIMIT).await;
    let slack = String::from_utf8_lossy(&to_ops[0].body).to_string();
    assert!(slack.contains("nightly-backup"), "{slack}");
    assert!(slack.contains(&run.id), "{slack}");

    let by_subscription = s
        .notification()
        .list_deliveries(ListDeliveriesRequest {
            subscription_id: subscription.id.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(by_subscription.deliveries.len(), 1);
    assert_eq!(by_subscription.deliveries[0].event_type, "run.failed");
    // Dave's own delivery is his to read.
    let his = as_dave
        .notification()
        .list_deliveries(ListDeliveriesRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(his.deliveries.len(), 1);
    assert_eq!(his.deliveries[0].user_id, dave.id);

    // A run that succeeds: dave did not ask, the subscription did not either; a subscription
    // on success for the job does.
    let ok = s
        .jobs()
        .create(job("fine", vec![shell("ok", "true")]))
        .await
        .unwrap();
    s.notification()
        .create_subscription(CreateSubscriptionRequest {
            subscription: Some(Subscription {
                selector: Some(subscription::Selector::JobId(ok.id.clone())),
                channel: NotificationChannel::Webhook as i32,
                destination: sink.url("/fine"),
                outcomes: Some(OutcomeFilter {
                    succeeded: true,
                    ..Default::default()
                }),
                ..Default::default()
            }),
        })
        .await
        .unwrap();
    let run = as_dave.jobs().start(&ok.id, &[]).await.unwrap();
    s.jobs().finish(&run.id, LIMIT).await.unwrap();
    let fine = sink.wait_for("/fine", 1, LIMIT).await;
    let body: serde_json::Value = serde_json::from_slice(&fine[0].body).unwrap();
    assert_eq!(body["type"], "run.succeeded", "{body}");
    assert_eq!(sink.received("/dave").len(), 1);
    s.stop().await;
}

/// The credentials service's expiry sweep reaches the administrators, per their preferences.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expiring_credential_notifies_the_administrators() {
    use opsconductor_api::credentials::v1::secret_material::Material;
    use opsconductor_api::credentials::v1::{
        ApiTokenSecret, Credential, CredentialKind, SecretMaterial,
    };
    use opsconductor_testkit::CredentialsExt;

    let s = Sandbox::start_with(
        StorageBackend::Sqlite,
        &[("CREDENTIALS_EXPIRY_SWEEP_MS", "100")],
    )
    .await;
    let sink = HttpSink::start().await;
    s.user()
        .set_preferences(NotificationPreferences {
            user_id: s.admin.user_id.clone(),
            destinations: webhook_to(&sink.url("/admin")),
            ..Default::default()
        })
        .await
        .unwrap();
    let expires = prost_types::Timestamp {
        seconds: opsconductor_testkit::now_secs() as i64 + 3 * 86_400 + 3_600,
        nanos: 0,
    };
    let credential = s
        .credentials()
        .create(
            Credential {
                name: "tls-cert-token".into(),
                kind: CredentialKind::ApiToken as i32,
                expire_time: Some(expires),
                ..Default::default()
            },
            SecretMaterial {
                material: Some(Material::ApiToken(ApiTokenSecret {
                    token: "expiring-secret".into(),
                })),
            },
        )
        .await
        .unwrap();
    let got = sink.wait_for("/admin", 1, LIMIT).await;
    let body: serde_json::Value = serde_json::from_slice(&got[0].body).unwrap();
    assert_eq!(body["type"], "credential.expiring", "{body}");
    assert_eq!(
        body["data"]["credential"]["id"],
        credential.id.as_str(),
        "{body}"
    );
    assert_eq!(body["data"]["credential"]["days_left"], 3, "{body}");
    assert!(!body.to_string().contains("expiring-secret"));
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quiet_hours_hold_what_is_not_urgent_until_they_end() {
    let s = Sandbox::start(StorageBackend::Sqlite).await;
    let sink = HttpSink::start().await;
    let (erin, _) = s.user_with_role("erin", Role::Viewer).await;
    // A window that began an hour ago and ends two minutes from now, in Tokyo time.
    let tokyo = chrono_tz::Asia::Tokyo;
    let now = Utc::now().with_timezone(&tokyo);
    let start = now - ChronoDuration::hours(1);
    let end = (now + ChronoDuration::minutes(2)).with_second(0).unwrap();
    s.user()
        .set_preferences(NotificationPreferences {
            user_id: erin.id.clone(),
            destinations: webhook_to(&sink.url("/erin")),
            quiet_hours: Some(QuietHours {
                enabled: true,
                start: start.format("%H:%M").to_string(),
                end: end.format("%H:%M").to_string(),
                time_zone: "Asia/Tokyo".into(),
            }),
            ..Default::default()
        })
        .await
        .unwrap();
    let to_erin = |body: &str, urgent: bool| {
        let mut r = to(NotificationChannel::Webhook, "", body);
        r.recipient = Some(Recipient::UserId(erin.id.clone()));
        r.urgent = urgent;
        r
    };
    let held = send(&s, to_erin(r#"{"when": "later"}"#, false)).await;
    assert_eq!(held.state, DeliveryState::Deferred as i32);
    assert_eq!(
        held.next_attempt_time.as_ref().map(|t| t.seconds),
        Some(end.with_nanosecond(0).unwrap().timestamp()),
        "held until the window's end"
    );
    let urgent = send(&s, to_erin(r#"{"when": "now"}"#, true)).await;
    reaches(&s, &urgent.id, DeliveryState::Delivered).await;
    let got = sink.wait_for("/erin", 1, LIMIT).await;
    assert_eq!(&got[0].body[..], br#"{"when": "now"}"#);
    assert_eq!(get_state(&s, &held.id).await, DeliveryState::Deferred);

    // The window ends (moved forward in the database rather than waited for): the releaser
    // queues it and it goes out.
    sqlx::query("UPDATE deliveries SET next_attempt_time = 0 WHERE id = $1")
        .bind(&held.id)
        .execute(s.db(ServiceKind::Notification).pool())
        .await
        .unwrap();
    reaches(&s, &held.id, DeliveryState::Delivered).await;
    let got = sink.wait_for("/erin", 2, LIMIT).await;
    assert_eq!(&got[1].body[..], br#"{"when": "later"}"#);
    s.stop().await;
}

async fn get_state(s: &Sandbox, id: &str) -> DeliveryState {
    DeliveryState::try_from(super::get(s, id).await.state).unwrap()
}
