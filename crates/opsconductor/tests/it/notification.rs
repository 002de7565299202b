//! The notification service against real sinks: an HTTP receiver on loopback for Slack, Teams
//! and webhooks (signatures checked by the `standardwebhooks` Python package), aiosmtpd for
//! email. Validation, idempotency, dedupe and who reads what are here; the channels in
//! [`channels`]; retries, dead letters and a lost broker connection in [`retries`]; run events,
//! preferences, subscriptions and quiet hours in [`events`].

mod channels;
mod events;
mod retries;

use std::time::{Duration, Instant};

use opsconductor_api::common::v1::{NotificationChannel, Role};
use opsconductor_api::credentials::v1::secret_material::Material;
use opsconductor_api::credentials::v1::{
    ApiTokenSecret, Credential, CredentialKind, SecretMaterial,
};
use opsconductor_api::notification::v1::send_notification_request::{Content, Recipient};
use opsconductor_api::notification::v1::*;
use opsconductor_platform::client::Clients;
use opsconductor_testkit::{assert_code, assert_violations, CredentialsExt, HttpSink, Sandbox};
use tonic::Code;

use crate::jobs::LIMIT;

pub fn literal(subject: &str, body: &str) -> Option<Content> {
    Some(Content::Literal(LiteralContent {
        subject: subject.into(),
        body: body.into(),
    }))
}

/// A SendNotification to a destination with literal content.
pub fn to(channel: NotificationChannel, destination: &str, body: &str) -> SendNotificationRequest {
    SendNotificationRequest {
        idempotency_key: uuid::Uuid::now_v7().to_string(),
        channel: channel as i32,
        recipient: Some(Recipient::Destination(destination.into())),
        event_type: "test".into(),
        content: literal("Subject", body),
        ..Default::default()
    }
}

pub async fn send(clients: &Clients, request: SendNotificationRequest) -> Delivery {
    clients
        .notification()
        .send_notification(request)
        .await
        .unwrap()
        .into_inner()
        .delivery
        .unwrap()
}

pub async fn get(clients: &Clients, id: &str) -> Delivery {
    clients
        .notification()
        .get_delivery(GetDeliveryRequest { id: id.into() })
        .await
        .unwrap()
        .into_inner()
        .delivery
        .unwrap()
}

/// The delivery once it reached `state` (the database has no event to await; a short poll).
pub async fn reaches(clients: &Clients, id: &str, state: DeliveryState) -> Delivery {
    let deadline = Instant::now() + LIMIT;
    loop {
        let d = get(clients, id).await;
        if d.state == state as i32 {
            return d;
        }
        assert!(
            Instant::now() < deadline,
            "delivery {id} is {:?} ({}), not {state:?}",
            DeliveryState::try_from(d.state),
            d.last_error
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// An API-token credential holding `secret`, revealable by the notification service or not.
pub async fn signing_credential(s: &Sandbox, name: &str, secret: &str, revealable: bool) -> String {
    let credential = Credential {
        name: name.into(),
        kind: CredentialKind::ApiToken as i32,
        revealable_by: if revealable {
            vec!["notification".into()]
        } else {
            Vec::new()
        },
        ..Default::default()
    };
    let material = SecretMaterial {
        material: Some(Material::ApiToken(ApiTokenSecret {
            token: secret.into(),
        })),
    };
    s.credentials()
        .create(credential, material)
        .await
        .unwrap()
        .id
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_are_refused_field_by_field_and_nothing_is_written() {
    let s = Sandbox::start(opsconductor_testkit::StorageBackend::Sqlite).await;
    let mut n = s.notification();
    let err = n
        .send_notification(SendNotificationRequest {
            channel: 9,
            event_type: "Run Failed!".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_violations(
        &err,
        &[
            "idempotency_key",
            "channel",
            "event_type",
            "recipient",
            "content",
        ],
    );
    // A destination of the wrong shape, per channel; a webhook body that is not JSON; a
    // signing credential on a channel that is not signed.
    for (channel, destination, field) in [
        (NotificationChannel::Email, "not an address", "destination"),
        (
            NotificationChannel::Email,
            "a@b.example\r\nBcc: x@y.example",
            "destination",
        ),
        (
            NotificationChannel::Slack,
            "ftp://hooks.example.com/x",
            "destination",
        ),
        (
            NotificationChannel::Webhook,
            "https://user:pw@hooks.example.com/x",
            "destination",
        ),
    ] {
        let err = n
            .send_notification(to(channel, destination, "{}"))
            .await
            .unwrap_err();
        assert_violations(&err, &[field]);
        assert!(!err.message().contains("pw@"), "{}", err.message());
    }
    let mut not_json = to(
        NotificationChannel::Webhook,
        "https://hooks.example.com/x",
        "hi",
    );
    not_json.signing_credential_id = "not-an-id".into();
    let err = n.send_notification(not_json).await.unwrap_err();
    assert_violations(&err, &["literal.body", "signing_credential_id"]);

    // Templates: a syntax error names the field and its line; html_body is for email only.
    let err = n
        .create_template(CreateTemplateRequest {
            template: Some(Template {
                channel: NotificationChannel::Slack as i32,
                event_type: "run.failed".into(),
                body: "Run {{ run.id }}\nfailed: {{ run.error | nosuchfilter }}\n".into(),
                html_body: "<b>x</b>".into(),
                ..Default::default()
            }),
        })
        .await
        .unwrap_err();
    assert_violations(&err, &["template.html_body"]);
    let err = n
        .create_template(CreateTemplateRequest {
            template: Some(Template {
                channel: NotificationChannel::Slack as i32,
                event_type: "run.failed".into(),
                body: "Run {{ run.id }}\n{% if %}\n".into(),
                ..Default::default()
            }),
        })
        .await
        .unwrap_err();
    assert_violations(&err, &["template.body"]);
    assert!(err.message().contains("line 2"), "{}", err.message());
    // Subscriptions: a selector, a destination and at least one outcome.
    let err = n
        .create_subscription(CreateSubscriptionRequest {
            subscription: Some(Subscription {
                selector: Some(subscription::Selector::Label("no equals sign".into())),
                channel: NotificationChannel::Teams as i32,
                destination: String::new(),
                ..Default::default()
            }),
        })
        .await
        .unwrap_err();
    assert_violations(
        &err,
        &[
            "subscription.label",
            "subscription.destination",
            "subscription.outcomes",
        ],
    );

    let listed = n
        .list_deliveries(ListDeliveriesRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert!(listed.deliveries.is_empty());
    let templates = n
        .list_templates(ListTemplatesRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert!(templates.templates.is_empty());
    s.stop().await;
}

/// The same key returns the same delivery; another request under it is refused; the same
/// content to the same destination within the window is suppressed, not sent twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_are_idempotent_and_repeats_within_the_window_are_suppressed() {
    let s = Sandbox::start(opsconductor_testkit::StorageBackend::Postgres).await;
    let sink = HttpSink::start().await;
    let request = to(NotificationChannel::Webhook, &sink.url("/k"), r#"{"n": 1}"#);
    let first = send(&s, request.clone()).await;
    let again = send(&s, request.clone()).await;
    assert_eq!(first.id, again.id);
    let mut other = request.clone();
    other.content = literal("Subject", r#"{"n": 2}"#);
    let err = s.notification().send_notification(other).await.unwrap_err();
    assert_code(&err, Code::FailedPrecondition, "IDEMPOTENCY_KEY_REUSED");
    assert!(err.message().contains("idempotency"), "{}", err.message());

    let mut repeat = request.clone();
    repeat.idempotency_key = uuid::Uuid::now_v7().to_string();
    let suppressed = send(&s, repeat).await;
    assert_eq!(suppressed.state, DeliveryState::Suppressed as i32);
    assert!(
        suppressed.last_error.contains(&first.id),
        "{}",
        suppressed.last_error
    );
    reaches(&s, &first.id, DeliveryState::Delivered).await;
    let received = sink.wait_for("/k", 1, LIMIT).await;
    assert_eq!(received.len(), 1);
    s.stop().await;
}

/// Deliveries are read by administrators and their recipients; destinations are masked.
/// TestChannel is for administrators.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deliveries_are_read_by_their_recipient_and_destinations_are_masked() {
    use opsconductor_api::user::v1::{ChannelDestination, NotificationPreferences};
    use opsconductor_testkit::UsersExt;

    let s = Sandbox::start(opsconductor_testkit::StorageBackend::Sqlite).await;
    let sink = HttpSink::start().await;
    let (alice, alice_session) = s.user_with_role("alice", Role::Operator).await;
    let (_, bob_session) = s.user_with_role("bob", Role::Operator).await;
    let hook = sink.url("/alice?token=alice-secret-token");
    s.user()
        .set_preferences(NotificationPreferences {
            user_id: alice.id.clone(),
            destinations: vec![ChannelDestination {
                channel: NotificationChannel::Webhook as i32,
                destination: hook.clone(),
                enabled: true,
                signing_credential_id: String::new(),
            }],
            notify_on_failure: true,
            ..Default::default()
        })
        .await
        .unwrap();
    let mut request = to(NotificationChannel::Webhook, "", r#"{"for": "alice"}"#);
    request.recipient = Some(Recipient::UserId(alice.id.clone()));
    let d = send(&s, request).await;
    assert_eq!(d.user_id, alice.id);
    assert!(
        !d.destination.contains("alice-secret-token"),
        "{}",
        d.destination
    );
    reaches(&s, &d.id, DeliveryState::Delivered).await;
    let got = sink.wait_for("/alice", 1, LIMIT).await;
    assert_eq!(&got[0].body[..], br#"{"for": "alice"}"#);

    let as_alice = s.clients_as(&alice_session.access_token);
    let as_bob = s.clients_as(&bob_session.access_token);
    let mine = get(&as_alice, &d.id).await;
    assert_eq!(mine.attempt_log.len(), 1);
    assert_eq!(mine.destination, format!("http://{}/…", sink.addr()));
    let err = as_bob
        .notification()
        .get_delivery(GetDeliveryRequest { id: d.id.clone() })
        .await
        .unwrap_err();
    assert_code(&err, Code::NotFound, "RESOURCE_NOT_FOUND");
    let bobs = as_bob
        .notification()
        .list_deliveries(ListDeliveriesRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert!(bobs.deliveries.is_empty());
    let err = as_bob
        .notification()
        .list_deliveries(ListDeliveriesRequest {
            user_id: alice.id.clone(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_code(&err, Code::PermissionDenied, "PERMISSION_DENIED");
    let all = s
        .notification()
        .list_deliveries(ListDeliveriesRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(all.deliveries.len(), 1);
    assert!(all.deliveries[0].body.is_empty(), "lists carry no bodies");
    assert!(!all.deliveries[0].destination.contains("secret"));

    let err = as_alice
        .notification()
        .test_channel(TestChannelRequest {
            channel: NotificationChannel::Webhook as i32,
            destination: sink.url("/probe"),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_code(&err, Code::PermissionDenied, "PERMISSION_DENIED");
    let probe = s
        .notification()
        .test_channel(TestChannelRequest {
            channel: NotificationChannel::Webhook as i32,
            destination: sink.url("/probe"),
            message: "hello from the test".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(probe.delivered, "{}", probe.error);
    assert_eq!(probe.status, 200);
    let got = sink.wait_for("/probe", 1, LIMIT).await;
    let body: serde_json::Value = serde_json::from_slice(&got[0].body).unwrap();
    assert!(body.to_string().contains("hello from the test"), "{body}");
    s.stop().await;
}

/// A server-side request forgery: with private addresses refused (the default), a webhook to
/// loopback or the cloud metadata address is refused before anything is sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn destinations_on_private_addresses_are_refused_by_default() {
    let s = Sandbox::start_with(
        opsconductor_testkit::StorageBackend::Sqlite,
        &[("NOTIFICATION_ALLOW_PRIVATE_ADDRESSES", "false")],
    )
    .await;
    let sink = HttpSink::start().await;
    let probe = s
        .notification()
        .test_channel(TestChannelRequest {
            channel: NotificationChannel::Webhook as i32,
            destination: sink.url("/internal"),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(!probe.delivered);
    assert!(probe.error.contains("private"), "{}", probe.error);
    let d = send(
        &s,
        to(
            NotificationChannel::Webhook,
            "http://169.254.169.254/latest/meta-data",
            "{}",
        ),
    )
    .await;
    let failed = reaches(&s, &d.id, DeliveryState::Failed).await;
    assert!(
        failed.last_error.contains("private"),
        "{}",
        failed.last_error
    );
    assert_eq!(failed.attempts, 1);
    assert!(sink.received("/internal").is_empty());
    s.stop().await;
}
