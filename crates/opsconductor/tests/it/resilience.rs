//! The platform's clients against replicas with injected faults: safe calls succeed through
//! retries, unsafe ones are never repeated, the retry budget caps amplification, deadlines
//! travel and bound every call, and breakers skip a hanging or dead replica and recover.

use std::time::{Duration, Instant};

use opsconductor_api::jobs::v1::StartRunRequest;
use opsconductor_api::user::v1::{CreateUserRequest, GetUserRequest};
use opsconductor_metrics::Registry;
use opsconductor_platform::client::{deadline, Clients};
use opsconductor_platform::config::Env;
use opsconductor_testkit::{Fault, FaultyReplica};
use tonic::Code;

fn clients(vars: &[(&str, String)]) -> Clients {
    Clients::from_env(&Env::isolated(vars.iter().cloned())).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn safe_calls_succeed_through_retries_and_unsafe_ones_are_never_repeated() {
    let replica = FaultyReplica::start(Fault::EveryOtherUnavailable).await;
    let c = clients(&[
        ("USER_SERVICE_URL", replica.url()),
        ("JOBS_SERVICE_URL", replica.url()),
    ]);
    // GetUser is NO_SIDE_EFFECTS: each call fails once, then succeeds on its retry.
    for _ in 0..40 {
        c.user().get_user(GetUserRequest::default()).await.unwrap();
    }
    assert_eq!(replica.received_of("GetUser"), 80);
    assert_eq!(c.policy().retries(), 40);

    // CreateUser declares nothing and has no key: half fail, none is tried twice.
    let mut failed = 0;
    for _ in 0..10 {
        if let Err(status) = c.user().create_user(CreateUserRequest::default()).await {
            assert_eq!(status.code(), Code::Unavailable);
            failed += 1;
        }
    }
    assert_eq!((replica.received_of("CreateUser"), failed), (10, 5));

    // StartRun is IDEMPOTENT by its key: without one, a retry would start a second run.
    for i in 0..10 {
        let keyed = StartRunRequest {
            idempotency_key: format!("key-{i}"),
            ..Default::default()
        };
        c.jobs().start_run(keyed).await.unwrap();
    }
    assert_eq!(replica.received_of("StartRun"), 20);
    let mut failed = 0;
    for _ in 0..10 {
        failed += c
            .jobs()
            .start_run(StartRunRequest::default())
            .await
            .is_err() as u32;
    }
    assert_eq!((replica.received_of("StartRun"), failed), (30, 5));
}

/// Half the calls fail; retries would double the load without a budget.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_retry_budget_caps_amplification_under_a_half_failing_replica() {
    let replica = FaultyReplica::start(Fault::EveryOtherUnavailable).await;
    // The breaker would open on runs of failures and fail calls fast; the budget is measured.
    let c = std::sync::Arc::new(clients(&[
        ("USER_SERVICE_URL", replica.url()),
        ("OPSCONDUCTOR_CLIENT_BREAKER_FAILURES", "1000".into()),
    ]));
    let calls = 2_000u64;
    let mut workers = tokio::task::JoinSet::new();
    for w in 0..32 {
        let c = c.clone();
        workers.spawn(async move {
            let mut ok = 0u64;
            for _ in (w..calls).step_by(32) {
                ok += c.user().get_user(GetUserRequest::default()).await.is_ok() as u64;
            }
            ok
        });
    }
    let mut ok = 0;
    while let Some(n) = workers.join_next().await {
        ok += n.unwrap();
    }
    let ratio = replica.received() as f64 / calls as f64;
    println!(
        "upstream calls / client calls = {ratio:.3} ({} / {calls}); {ok} succeeded, {} retries",
        replica.received(),
        c.policy().retries()
    );
    assert!(ratio <= 1.2, "amplification {ratio}");
    assert!(c.policy().retries() > 0 && ok > calls / 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deadlines_travel_and_a_hanging_replica_is_cut_off_then_skipped() {
    let hanging = FaultyReplica::start(Fault::Hang).await;
    let healthy = FaultyReplica::start(Fault::None).await;
    let c = clients(&[
        (
            "USER_SERVICE_URL",
            format!("{},{}", hanging.url(), healthy.url()),
        ),
        ("OPSCONDUCTOR_READ_TIMEOUT_MS", "300".into()),
        ("OPSCONDUCTOR_CLIENT_BREAKER_FAILURES", "3".into()),
        ("OPSCONDUCTOR_CLIENT_BREAKER_OPEN_MS", "60000".into()),
    ]);
    let registry = Registry::new();
    let c = c.with_metrics(&registry);
    let mut timed_out = 0;
    for _ in 0..20 {
        let started = Instant::now();
        match c.user().get_user(GetUserRequest::default()).await {
            Ok(_) => {}
            Err(status) => {
                assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
                let took = started.elapsed();
                assert!(
                    took >= Duration::from_millis(250) && took < Duration::from_secs(2),
                    "{took:?}"
                );
                timed_out += 1;
            }
        }
    }
    // Three calls waited for the hanging replica, then its breaker opened for good.
    assert_eq!(timed_out, 3);
    assert_eq!(hanging.received(), 3);
    assert_eq!(healthy.received(), 17);
    let text = registry.render();
    let open = format!(
        "opsconductor_client_breaker_open{{upstream=\"user\",replica=\"{}/\"}} 1",
        hanging.url()
    );
    assert!(text.contains(&open), "{text}");

    // A call made while serving one inherits what is left of its deadline, minus a margin.
    let left = Duration::from_millis(150);
    deadline::scope(Instant::now() + left, async {
        c.user().get_user(GetUserRequest::default()).await.unwrap();
    })
    .await;
    let sent = healthy.last_timeout().unwrap();
    let sent = deadline::parse_timeout(&sent).unwrap();
    assert!(
        sent <= left - deadline::MARGIN && sent > Duration::ZERO,
        "{sent:?}"
    );
    // With no time left, the call is not made at all.
    let before = healthy.received();
    let status = deadline::scope(Instant::now() + Duration::from_millis(5), async {
        c.user()
            .get_user(GetUserRequest::default())
            .await
            .unwrap_err()
    })
    .await;
    assert_eq!(status.code(), Code::DeadlineExceeded);
    assert_eq!(healthy.received(), before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_replica_is_skipped_and_taken_back_when_it_returns() {
    let doomed = FaultyReplica::start(Fault::None).await;
    let healthy = FaultyReplica::start(Fault::None).await;
    let c = clients(&[
        (
            "USER_SERVICE_URL",
            format!("{},{}", doomed.url(), healthy.url()),
        ),
        ("OPSCONDUCTOR_CLIENT_BREAKER_FAILURES", "2".into()),
        ("OPSCONDUCTOR_CLIENT_BREAKER_OPEN_MS", "200".into()),
    ]);
    for _ in 0..4 {
        c.user().get_user(GetUserRequest::default()).await.unwrap();
    }
    assert_eq!((doomed.received(), healthy.received()), (2, 2));
    let addr = doomed.kill().await;
    // Every call still succeeds: a refused connection is retried on the other replica.
    for _ in 0..20 {
        c.user().get_user(GetUserRequest::default()).await.unwrap();
    }
    assert_eq!(healthy.received(), 22);
    // Back on its address: the breaker's probe finds it and calls return to it.
    let back = FaultyReplica::start_at(addr, Fault::None).await;
    let until = Instant::now() + Duration::from_secs(10);
    while back.received() < 3 {
        assert!(Instant::now() < until, "the returned replica got no calls");
        c.user().get_user(GetUserRequest::default()).await.unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// One of two user replicas drains on SIGTERM while 16 callers keep reading: none of their
/// calls fails (in-flight calls finish; new ones find the other replica through retries).
/// A refused connection means nothing was sent: even a call that may not be repeated goes to
/// the other replica, and reaches a server exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_connection_is_retried_even_for_a_call_that_may_not_be_repeated() {
    let gone = FaultyReplica::start(Fault::None).await;
    let addr = gone.kill().await;
    let healthy = FaultyReplica::start(Fault::None).await;
    let c = clients(&[
        (
            "USER_SERVICE_URL",
            format!("http://{addr},{}", healthy.url()),
        ),
        // Keep the dead replica in the turn: every other call finds it first.
        ("OPSCONDUCTOR_CLIENT_BREAKER_FAILURES", "1000".into()),
    ]);
    for _ in 0..10 {
        c.user()
            .create_user(CreateUserRequest::default())
            .await
            .unwrap();
    }
    assert_eq!(healthy.received_of("CreateUser"), 10);
    assert!(c.policy().retries() >= 4, "{}", c.policy().retries());
    // A replica that answered UNAVAILABLE may have done the work: that one is not repeated
    // (safe_calls_succeed_through_retries_and_unsafe_ones_are_never_repeated).
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_draining_under_load_fails_no_call() {
    use opsconductor_api::user::v1::ListUsersRequest;
    use opsconductor_platform::ServiceKind;
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    use std::sync::Arc;

    let s =
        opsconductor_testkit::Sandbox::start(opsconductor_testkit::StorageBackend::Sqlite).await;
    let (replica, _db) = s.start_replica(ServiceKind::User).await;
    let urls = format!("{},{}", s.url(ServiceKind::User), replica.url);
    let c = Arc::new(
        Clients::from_env(&s.env().clone().with("USER_SERVICE_URL", urls))
            .unwrap()
            .with_tokens(opsconductor_testkit::session_source(&s.admin)),
    );
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let mut callers = tokio::task::JoinSet::new();
    for _ in 0..16 {
        let (c, stop, ok, failed) = (c.clone(), stop.clone(), ok.clone(), failed.clone());
        callers.spawn(async move {
            while !stop.load(Ordering::SeqCst) {
                match c.user().list_users(ListUsersRequest::default()).await {
                    Ok(_) => ok.fetch_add(1, Ordering::SeqCst),
                    Err(status) => {
                        eprintln!("failed: {status:?}");
                        failed.fetch_add(1, Ordering::SeqCst)
                    }
                };
            }
        });
    }
    // Under way on both replicas, then one drains and is gone.
    let until = Instant::now() + Duration::from_secs(60);
    while ok.load(Ordering::SeqCst) < 200 {
        assert!(
            Instant::now() < until,
            "200 calls did not succeed in a minute"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    replica.stop().await.unwrap();
    let after = ok.load(Ordering::SeqCst);
    let until = Instant::now() + Duration::from_secs(60);
    while ok.load(Ordering::SeqCst) < after + 200 {
        assert!(
            Instant::now() < until,
            "calls stopped succeeding after the replica drained"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    stop.store(true, Ordering::SeqCst);
    while callers.join_next().await.is_some() {}
    println!(
        "{} calls, {} failed, {} retries",
        ok.load(Ordering::SeqCst),
        failed.load(Ordering::SeqCst),
        c.policy().retries()
    );
    assert_eq!(failed.load(Ordering::SeqCst), 0);
    s.stop().await;
}
