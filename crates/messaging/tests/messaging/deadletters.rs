//! Dead letters: a poison message lands in the dead-letter queue after its last attempt with its
//! error, operators see it through `DeadLetterService` (the generated client and grpcurl), and a
//! replay brings it back to be processed once. Undecodable messages skip the ladder.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use opsconductor_api::audit::v1::AuditEvent;
use opsconductor_api::deadletters::v1::dead_letter_service_client::DeadLetterServiceClient;
use opsconductor_api::deadletters::v1::*;
use opsconductor_messaging::{
    Broker, Consumer, DeadLetters, HandleError, Handlers, Inbox, Received, RunningConsumer,
    Topology, WorkQueue,
};
use opsconductor_platform::auth::AuthChannel;
use opsconductor_platform::config::ServerConfig;
use opsconductor_platform::server::ServiceServer;
use opsconductor_storage::Backend;
use opsconductor_testkit::{
    assert_code, assert_violations, channel_as, grpcurl, Running, TestAuth, TestBroker,
};
use tonic::Code;

use crate::support::{eventually, item, work_queue, Effects, WAIT};

/// A worker service: a consumer of the work queue whose handler fails while `broken`, its
/// dead-letter keeper, and `DeadLetterService` on a real port.
struct Worker {
    tb: TestBroker,
    queue: WorkQueue,
    broker: Broker,
    effects: Effects,
    broken: Arc<AtomicBool>,
    consumers: Vec<RunningConsumer>,
    server: Running,
    auth: TestAuth,
}

impl Worker {
    async fn start(backend: Backend) -> Worker {
        let tb = TestBroker::new();
        let queue = work_queue(&tb);
        let effects = Effects::new(backend).await;
        let broker = Broker::start(tb.config("worker"), Topology::new().queue(queue.clone()));
        let broken = Arc::new(AtomicBool::new(true));
        let inbox = Inbox::new("worker");
        let handlers = {
            let (db, broken) = (effects.db().clone(), broken.clone());
            Handlers::new().on(move |received: Received<AuditEvent>| {
                let (db, inbox, broken) = (db.clone(), inbox.clone(), broken.clone());
                async move {
                    if broken.load(Ordering::SeqCst) {
                        return Err(HandleError::retry(format!(
                            "boom: cannot handle {}",
                            received.message.resource_id
                        )));
                    }
                    Effects::apply(&db, &inbox, &received).await
                }
            })
        };
        let dead_letters =
            DeadLetters::new(effects.db().clone(), &broker, std::slice::from_ref(&queue));
        let mut consumers = dead_letters.start_keepers();
        consumers.push(Consumer::work(&broker, &queue, handlers).start());
        for consumer in &consumers {
            assert!(consumer.wait_subscribed(WAIT).await);
        }
        let auth = TestAuth::new();
        let server = ServiceServer::new(
            "worker",
            ServerConfig::local("127.0.0.1:0".parse().unwrap()),
            tonic::service::Routes::new(dead_letters.service()),
            ["opsconductor.deadletters.v1.DeadLetterService"],
        )
        .authenticate(auth.authenticator())
        .depends_on(broker.health_check())
        .bind()
        .await
        .expect("bind");
        Worker {
            tb,
            queue,
            broker,
            effects,
            broken,
            consumers,
            server: Running::start(server),
            auth,
        }
    }

    /// A client acting as an administrator (dead letters are theirs to handle).
    async fn client(&self) -> DeadLetterServiceClient<AuthChannel> {
        DeadLetterServiceClient::new(channel_as(&self.server.url, self.auth.admin_token()))
    }

    fn dlq(&self) -> String {
        self.tb.names().dead_letter_queue(&self.queue)
    }

    async fn list(&self) -> ListDeadLettersResponse {
        self.client()
            .await
            .list_dead_letters(ListDeadLettersRequest::default())
            .await
            .expect("list")
            .into_inner()
    }

    async fn stop(self) {
        for consumer in self.consumers {
            consumer.shutdown(Duration::from_secs(5)).await;
        }
        self.server.stop().await.expect("server stops");
        self.broker.close().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poison_message_is_dead_lettered_with_its_error_and_a_replay_processes_it() {
    let w = Worker::start(Backend::Sqlite).await;
    let message = item(&w.tb, "poison");
    w.broker.publisher().publish(&message).await.unwrap();

    eventually(
        "the poison message is kept as a dead letter",
        WAIT,
        || async { w.list().await.total_count == 1 },
    )
    .await;
    let listed = w.list().await.dead_letters.remove(0);
    assert_eq!(listed.attempts, 3, "{listed:?}");
    assert!(
        listed.last_error.contains("boom: cannot handle poison"),
        "{listed:?}"
    );
    assert_eq!(listed.queue, w.dlq());
    assert_eq!(listed.original_queue, w.tb.names().queue(&w.queue));
    assert_eq!(listed.message_type, "opsconductor.audit.v1.AuditEvent");
    assert_eq!(listed.message_id, message.message_id);
    assert_eq!(listed.routing_key, "item.test");
    assert!(
        listed.body_json.is_empty() && listed.headers.is_empty(),
        "no bodies in lists"
    );
    assert_eq!(w.broker.metrics().retried, 2);
    assert_eq!(w.broker.metrics().dead_lettered, 1);
    assert_eq!(w.effects.total().await, 0);

    let mut client = w.client().await;
    let got = client
        .get_dead_letter(GetDeadLetterRequest {
            id: listed.id.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .dead_letter
        .unwrap();
    assert!(
        got.body_json.contains("\"resourceId\":\"poison\""),
        "{}",
        got.body_json
    );
    assert!(got.body_base64.is_empty());
    assert!(got.headers["x-last-error"].contains("boom"));
    let (first, last) = (got.first_death_time.unwrap(), got.last_death_time.unwrap());
    assert!((first.seconds, first.nanos) <= (last.seconds, last.nanos));

    // Fixed: replay it, and it is processed once.
    w.broken.store(false, Ordering::SeqCst);
    let replay = ReplayDeadLettersRequest {
        queue: w.dlq(),
        ids: vec![listed.id.clone()],
        all: false,
        idempotency_key: "replay-1".into(),
    };
    let first = client
        .replay_dead_letters(replay.clone())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(first.replayed_count, 1);
    assert!(first.missing_ids.is_empty());
    eventually("the replayed message is processed", WAIT, || async {
        w.effects.of("poison").await == 1
    })
    .await;
    assert_eq!(w.list().await.total_count, 0);

    // The same key again: the first answer, and nothing is replayed twice.
    let consumed = w.broker.metrics().consumed;
    let again = client
        .replay_dead_letters(replay.clone())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(again, first);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(w.broker.metrics().consumed, consumed);
    assert_eq!(w.effects.total().await, 1);
    // The same key for another request is refused.
    let reused = client
        .replay_dead_letters(ReplayDeadLettersRequest {
            ids: vec![],
            all: true,
            ..replay.clone()
        })
        .await
        .unwrap_err();
    assert_code(&reused, Code::FailedPrecondition, "IDEMPOTENCY_KEY_REUSED");
    // A new key for an id that is gone reports it missing.
    let gone = client
        .replay_dead_letters(ReplayDeadLettersRequest {
            idempotency_key: "replay-2".into(),
            ..replay
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(gone.replayed_count, 0);
    assert_eq!(gone.missing_ids, [listed.id]);
    w.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn undecodable_and_unhandled_messages_skip_the_retries() {
    let w = Worker::start(Backend::Postgres).await;
    let mut garbage = item(&w.tb, "garbage");
    garbage.body = vec![0xff, 0xff, 0xff];
    let mut unknown = item(&w.tb, "unknown");
    unknown.message_type = "opsconductor.nope.v1.Unknown".into();
    let results = w
        .broker
        .publisher()
        .publish_all(&[garbage.clone(), unknown])
        .await;
    assert!(results.iter().all(Result::is_ok));

    eventually("both are dead letters", WAIT, || async {
        w.list().await.total_count == 2
    })
    .await;
    assert_eq!(w.broker.metrics().retried, 0, "no attempt can fix them");
    let listed = w.list().await.dead_letters;
    let by_type = |t: &str| listed.iter().find(|d| d.message_type == t).unwrap().clone();
    let undecodable = by_type("opsconductor.audit.v1.AuditEvent");
    assert!(
        undecodable.last_error.contains("does not decode"),
        "{undecodable:?}"
    );
    assert_eq!(undecodable.attempts, 1);
    let unhandled = by_type("opsconductor.nope.v1.Unknown");
    assert!(unhandled.last_error.contains("no handler"), "{unhandled:?}");

    let mut client = w.client().await;
    let got = client
        .get_dead_letter(GetDeadLetterRequest {
            id: undecodable.id.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .dead_letter
        .unwrap();
    assert!(got.body_json.is_empty());
    assert_eq!(got.body_base64, "////");

    // Filters, paging and totals.
    let page = client
        .list_dead_letters(ListDeadLettersRequest {
            queue: w.dlq(),
            page_size: 1,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((page.dead_letters.len(), page.total_count), (1, 2));
    let rest = client
        .list_dead_letters(ListDeadLettersRequest {
            queue: w.dlq(),
            page_size: 1,
            page_token: page.next_page_token,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(rest.dead_letters.len(), 1);
    assert_ne!(rest.dead_letters[0].id, page.dead_letters[0].id);
    assert!(rest.next_page_token.is_empty());
    let typed = client
        .list_dead_letters(ListDeadLettersRequest {
            message_type: "opsconductor.nope.v1.Unknown".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(typed.total_count, 1);

    // Purging is idempotent.
    let purge = PurgeDeadLettersRequest {
        queue: w.dlq(),
        ids: vec![undecodable.id.clone()],
        all: false,
    };
    let purged = client
        .purge_dead_letters(purge.clone())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(purged.purged_count, 1);
    let purged = client.purge_dead_letters(purge).await.unwrap().into_inner();
    assert_eq!(purged.purged_count, 0);
    let purged = client
        .purge_dead_letters(PurgeDeadLettersRequest {
            queue: w.dlq(),
            ids: vec![],
            all: true,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(purged.purged_count, 1);
    assert_eq!(w.list().await.total_count, 0);
    let missing = client
        .get_dead_letter(GetDeadLetterRequest { id: undecodable.id })
        .await
        .unwrap_err();
    assert_code(&missing, Code::NotFound, "RESOURCE_NOT_FOUND");
    w.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_name_every_bad_field_and_change_nothing() {
    let w = Worker::start(Backend::Sqlite).await;
    w.broker
        .publisher()
        .publish(&item(&w.tb, "poison"))
        .await
        .unwrap();
    eventually("one dead letter", WAIT, || async {
        w.list().await.total_count == 1
    })
    .await;
    let mut client = w.client().await;

    let err = client
        .list_dead_letters(ListDeadLettersRequest {
            queue: "opsconductor.elsewhere.dlq".into(),
            page_size: -1,
            page_token: "garbage".into(),
            message_type: "x".repeat(300),
        })
        .await
        .unwrap_err();
    assert_violations(&err, &["queue", "page_size", "page_token", "message_type"]);
    let err = client
        .get_dead_letter(GetDeadLetterRequest { id: "nope".into() })
        .await
        .unwrap_err();
    assert_violations(&err, &["id"]);
    let err = client
        .replay_dead_letters(ReplayDeadLettersRequest::default())
        .await
        .unwrap_err();
    assert_violations(&err, &["queue", "ids", "idempotency_key"]);
    let err = client
        .replay_dead_letters(ReplayDeadLettersRequest {
            queue: w.dlq(),
            ids: vec!["not-a-uuid".into()],
            all: true,
            idempotency_key: "k".repeat(129),
        })
        .await
        .unwrap_err();
    assert_violations(&err, &["ids", "ids[0]", "idempotency_key"]);
    let err = client
        .purge_dead_letters(PurgeDeadLettersRequest {
            queue: String::new(),
            ids: vec![],
            all: false,
        })
        .await
        .unwrap_err();
    assert_violations(&err, &["queue", "ids"]);
    let err = client
        .purge_dead_letters(PurgeDeadLettersRequest {
            queue: w.dlq(),
            ids: (0..1001)
                .map(|_| uuid::Uuid::now_v7().to_string())
                .collect(),
            all: false,
        })
        .await
        .unwrap_err();
    assert_violations(&err, &["ids"]);
    assert_eq!(
        w.list().await.total_count,
        1,
        "nothing was purged or replayed"
    );
    w.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operators_inspect_dead_letters_with_grpcurl() {
    let w = Worker::start(Backend::Sqlite).await;
    w.broker
        .publisher()
        .publish(&item(&w.tb, "poison"))
        .await
        .unwrap();
    eventually("one dead letter", WAIT, || async {
        w.list().await.total_count == 1
    })
    .await;
    let addr = w.server.url.trim_start_matches("http://").to_string();
    // Without a token an operator's call is refused...
    let anonymous = std::process::Command::new(grpcurl())
        .args([
            "-plaintext",
            "-d",
            "{}",
            &addr,
            "opsconductor.deadletters.v1.DeadLetterService/ListDeadLetters",
        ])
        .output()
        .expect("run grpcurl");
    assert!(!anonymous.status.success());
    assert!(String::from_utf8_lossy(&anonymous.stderr).contains("Unauthenticated"));
    // ...and with an administrator's, served.
    let header = format!("authorization: Bearer {}", w.auth.admin_token());
    let out = std::process::Command::new(grpcurl())
        .args([
            "-plaintext",
            "-H",
            &header,
            "-d",
            "{}",
            &addr,
            "opsconductor.deadletters.v1.DeadLetterService/ListDeadLetters",
        ])
        .output()
        .expect("run grpcurl");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let listed: serde_json::Value = serde_json::from_str(&text).expect("JSON");
    assert_eq!(listed["totalCount"], "1");
    assert!(listed["deadLetters"][0]["lastError"]
        .as_str()
        .unwrap()
        .contains("boom"));
    w.stop().await;
}
