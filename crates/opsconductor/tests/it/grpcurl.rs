//! The real grpcurl (1.8.6, reflection v1alpha) against served services, and reflection v1
//! through its own client.

use opsconductor_platform::ServiceKind;
use std::process::Command;

use opsconductor_testkit::{grpcurl, Sandbox, StorageBackend};
use tokio_stream::StreamExt;

fn run(args: &[&str]) -> (bool, String) {
    let out = Command::new(grpcurl())
        .args(args)
        .output()
        .expect("run grpcurl");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpcurl_lists_describes_and_calls_every_service() {
    let s = Sandbox::start(StorageBackend::Sqlite).await;
    let auth = s.addr(ServiceKind::Auth).to_string();
    let user = s.addr(ServiceKind::User).to_string();
    let targets = s.addr(ServiceKind::Targets).to_string();

    for (addr, service) in [
        (&auth, "opsconductor.auth.v1.AuthService"),
        (&user, "opsconductor.user.v1.UserService"),
        (&targets, "opsconductor.targets.v1.TargetsService"),
    ] {
        let (ok, out) = run(&["-plaintext", addr, "list"]);
        assert!(ok, "{out}");
        for name in [
            service,
            "grpc.health.v1.Health",
            "grpc.reflection.v1alpha.ServerReflection",
        ] {
            assert!(out.lines().any(|l| l == name), "{name} not listed: {out}");
        }
        let (ok, out) = run(&["-plaintext", addr, "grpc.health.v1.Health/Check"]);
        assert!(ok && out.contains("\"SERVING\""), "{out}");
        let check = format!(r#"{{"service":"{service}"}}"#);
        let (ok, out) = run(&[
            "-plaintext",
            "-d",
            &check,
            addr,
            "grpc.health.v1.Health/Check",
        ]);
        assert!(ok && out.contains("\"SERVING\""), "{out}");
    }

    let (ok, out) = run(&[
        "-plaintext",
        &user,
        "describe",
        "opsconductor.user.v1.UserService",
    ]);
    assert!(ok, "{out}");
    assert!(
        out.contains("rpc CreateUser") && out.contains("rpc CheckPassword"),
        "{out}"
    );
    let (ok, out) = run(&["-plaintext", &user, "describe", "opsconductor.user.v1.User"]);
    assert!(ok && out.contains("password_set"), "{out}");
    // Reflection needs no token, so it describes only what this server serves (and what
    // that imports): not the other services' contracts, not even their messages.
    for symbol in [
        "opsconductor.jobs.v1.JobsService",
        "opsconductor.credentials.v1.RevealCredentialRequest",
        "opsconductor.targets.v1.TargetsService",
    ] {
        let (ok, out) = run(&["-plaintext", &user, "describe", symbol]);
        assert!(!ok, "{symbol} described by the user service: {out}");
    }
    let (ok, out) = run(&["-plaintext", &user, "list"]);
    assert!(ok && !out.contains("opsconductor.auth.v1"), "{out}");
    // The types its errors carry are described, so grpcurl can print them.
    let (ok, out) = run(&["-plaintext", &user, "describe", "google.rpc.BadRequest"]);
    assert!(ok, "{out}");

    // Signing in, as the README shows it: the access token goes into every later call.
    let credentials = format!(
        r#"{{"username":"admin","password":"{}"}}"#,
        s.admin_password
    );
    let (ok, out) = run(&[
        "-plaintext",
        "-d",
        &credentials,
        &auth,
        "opsconductor.auth.v1.AuthService/Login",
    ]);
    assert!(ok, "{out}");
    let session: serde_json::Value = serde_json::from_str(&out).expect("a JSON session");
    assert_eq!(session["tokenType"], "Bearer");
    assert_eq!(session["role"], "ROLE_ADMIN");
    let header = format!(
        "authorization: Bearer {}",
        session["accessToken"].as_str().unwrap()
    );
    let (ok, out) = run(&[
        "-plaintext",
        &auth,
        "opsconductor.auth.v1.AuthService/GetJwks",
    ]);
    assert!(
        ok && out.contains("\"kty\": \"OKP\"") && out.contains("\"alg\": \"EdDSA\""),
        "{out}"
    );

    // Without the token: UNAUTHENTICATED, and grpcurl shows why.
    let (ok, out) = run(&[
        "-plaintext",
        "-d",
        "{}",
        &user,
        "opsconductor.user.v1.UserService/ListUsers",
    ]);
    assert!(
        !ok && out.contains("Unauthenticated") && out.contains("TOKEN_MISSING"),
        "{out}"
    );

    let (ok, out) = run(&[
        "-plaintext",
        "-H",
        &header,
        "-d",
        r#"{"user":{"username":"grace","email":"grace@example.com","role":"ROLE_ADMIN"},"password":"a long enough password"}"#,
        &user,
        "opsconductor.user.v1.UserService/CreateUser",
    ]);
    assert!(ok, "{out}");
    assert!(
        out.contains("\"username\": \"grace\"") && out.contains("\"passwordSet\": true"),
        "{out}"
    );
    assert!(
        !out.contains("a long enough password"),
        "the password came back: {out}"
    );

    let (ok, out) = run(&[
        "-plaintext",
        "-H",
        &header,
        "-d",
        r#"{"target":{"name":"db-1","address":"10.1.2.3","port":5432,"os":"OPERATING_SYSTEM_LINUX","tags":["db"]}}"#,
        &targets,
        "opsconductor.targets.v1.TargetsService/CreateTarget",
    ]);
    assert!(ok && out.contains("\"name\": \"db-1\""), "{out}");
    let (ok, out) = run(&[
        "-plaintext",
        "-H",
        &header,
        "-d",
        r#"{"tags":["db"]}"#,
        &targets,
        "opsconductor.targets.v1.TargetsService/ListTargets",
    ]);
    assert!(ok && out.contains("db-1"), "{out}");

    // Bad input through grpcurl: INVALID_ARGUMENT with the field named.
    let (ok, out) = run(&[
        "-plaintext",
        "-H",
        &header,
        "-d",
        r#"{"target":{"name":"Bad Name"}}"#,
        &targets,
        "opsconductor.targets.v1.TargetsService/CreateTarget",
    ]);
    assert!(!ok, "{out}");
    assert!(
        out.contains("InvalidArgument") && out.contains("target.name"),
        "{out}"
    );
    // The details decode: reflection serves google.rpc's error details too.
    assert!(
        out.contains("google.rpc.BadRequest") && out.contains("\"field\": \"target.name\"")
            || out.contains("\"field\":\"target.name\""),
        "{out}"
    );

    // A credential, as the tour creates and reveals it: the secret only in the reveal.
    let vault = s.addr(ServiceKind::Credentials).to_string();
    let (ok, out) = run(&[
        "-plaintext",
        "-H",
        &header,
        "-d",
        r#"{"credential": {"name": "web-deploy", "kind": "CREDENTIAL_KIND_PASSWORD", "username": "deploy"}, "secret": {"password": {"password": "s3cret-tour"}}}"#,
        &vault,
        "opsconductor.credentials.v1.CredentialsService/CreateCredential",
    ]);
    assert!(ok && !out.contains("s3cret-tour"), "{out}");
    let created: serde_json::Value = serde_json::from_str(&out).expect("a JSON credential");
    let id = created["credential"]["id"].as_str().unwrap().to_string();
    let (ok, out) = run(&[
        "-plaintext",
        "-H",
        &header,
        &vault,
        "opsconductor.credentials.v1.CredentialsService/ListCredentials",
    ]);
    assert!(
        ok && out.contains("web-deploy") && !out.contains("s3cret-tour"),
        "{out}"
    );
    let reveal =
        format!(r#"{{"id": "{id}", "reason": "break-glass", "idempotency_key": "reveal-1"}}"#);
    let (ok, out) = run(&[
        "-plaintext",
        "-H",
        &header,
        "-d",
        &reveal,
        &vault,
        "opsconductor.credentials.v1.CredentialsService/RevealCredential",
    ]);
    assert!(
        ok && out.contains("s3cret-tour") && out.contains("auditEventId"),
        "{out}"
    );
    let (ok, out) = run(&[
        "-plaintext",
        "-H",
        &header,
        &vault,
        "opsconductor.credentials.v1.CredentialsService/RotateEncryptionKey",
    ]);
    assert!(ok && out.contains("\"keyVersion\": 2"), "{out}");

    // A job, a run, and its log followed live, as the tour does.
    let jobs = s.addr(ServiceKind::Jobs).to_string();
    let (ok, out) = run(&[
        "-plaintext",
        "-H",
        &header,
        "-d",
        r#"{"job": {"name": "hello", "parameters": [{"name": "who", "type": "PARAMETER_TYPE_STRING", "required": true}], "steps": [{"name": "greet", "shell": {"command": "echo hello {{ params.who }}"}}]}}"#,
        &jobs,
        "opsconductor.jobs.v1.JobsService/CreateJob",
    ]);
    assert!(ok, "{out}");
    let created: serde_json::Value = serde_json::from_str(&out).expect("a JSON job");
    let job = created["job"]["id"].as_str().unwrap().to_string();
    let start = format!(
        r#"{{"job_id": "{job}", "parameters": {{"who": "world"}}, "idempotency_key": "hello-1"}}"#
    );
    let (ok, out) = run(&[
        "-plaintext",
        "-H",
        &header,
        "-d",
        &start,
        &jobs,
        "opsconductor.jobs.v1.JobsService/StartRun",
    ]);
    assert!(ok && out.contains("RUN_STATE_QUEUED"), "{out}");
    let started: serde_json::Value = serde_json::from_str(&out).expect("a JSON run");
    let run_id = started["run"]["id"].as_str().unwrap().to_string();
    let watch = format!(r#"{{"id": "{run_id}", "include_logs": true}}"#);
    let (ok, out) = run(&[
        "-plaintext",
        "-H",
        &header,
        "-d",
        &watch,
        &jobs,
        "opsconductor.jobs.v1.JobsService/WatchRun",
    ]);
    assert!(
        ok && out.contains("\"text\": \"hello world\"") && out.contains("RUN_STATE_SUCCEEDED"),
        "{out}"
    );
    let (ok, out) = run(&[
        "-plaintext",
        "-H",
        &header,
        "-d",
        &format!(r#"{{"run_id": "{run_id}"}}"#),
        &jobs,
        "opsconductor.jobs.v1.JobsService/ListRunLogs",
    ]);
    assert!(ok && out.contains("hello world"), "{out}");
    let (ok, out) = run(&[
        "-plaintext",
        "-H",
        &header,
        &s.addr(ServiceKind::Executor).to_string(),
        "opsconductor.executor.v1.ExecutorService/GetExecutorStatus",
    ]);
    assert!(
        ok && out.contains("executorId") && out.contains("\"capacity\": 8"),
        "{out}"
    );

    // A schedule of that job, as the tour makes one: a preview across daylight saving, the
    // schedule, a fire now, its record; each change is in the audit trail below.
    let scheduler = s.addr(ServiceKind::Scheduler).to_string();
    let (ok, out) = run(&[
        "-plaintext",
        "-H",
        &header,
        "-d",
        r#"{"cron": {"expression": "30 2 * * *", "time_zone": "Europe/Berlin"}, "count": 2, "after_time": "2026-03-28T12:00:00Z"}"#,
        &scheduler,
        "opsconductor.scheduler.v1.SchedulerService/PreviewSchedule",
    ]);
    assert!(
        ok && out.contains("2026-03-29T01:00:00Z") && out.contains("2026-03-30T00:30:00Z"),
        "{out}"
    );
    let create = format!(
        r#"{{"schedule": {{"name": "hello-nightly", "job_id": "{job}", "parameters": {{"who": "schedule"}}, "cron": {{"expression": "0 3 * * *", "time_zone": "Europe/Berlin"}}, "overlap_policy": "OVERLAP_POLICY_BUFFER_ONE"}}}}"#
    );
    let (ok, out) = run(&[
        "-plaintext",
        "-H",
        &header,
        "-d",
        &create,
        &scheduler,
        "opsconductor.scheduler.v1.SchedulerService/CreateSchedule",
    ]);
    assert!(ok && out.contains("nextFireTime"), "{out}");
    let created: serde_json::Value = serde_json::from_str(&out).expect("a JSON schedule");
    let schedule = created["schedule"]["id"].as_str().unwrap().to_string();
    let id = format!(r#"{{"id": "{schedule}"}}"#);
    let (ok, out) = run(&[
        "-plaintext",
        "-H",
        &header,
        "-d",
        &id,
        &scheduler,
        "opsconductor.scheduler.v1.SchedulerService/TriggerSchedule",
    ]);
    assert!(ok && out.contains("FIRE_KIND_MANUAL"), "{out}");
    let fires = format!(r#"{{"schedule_id": "{schedule}"}}"#);
    let started = std::time::Instant::now();
    loop {
        let (ok, out) = run(&[
            "-plaintext",
            "-H",
            &header,
            "-d",
            &fires,
            &scheduler,
            "opsconductor.scheduler.v1.SchedulerService/ListFireRecords",
        ]);
        assert!(ok, "{out}");
        if out.contains("FIRE_OUTCOME_RUN_STARTED") {
            break;
        }
        assert!(started.elapsed().as_secs() < 30, "no run started: {out}");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }

    // Notifications, as the tour shows them: a template previewed with the event's sample, the
    // job's failures sent to a Slack channel (its URL comes back masked), what was sent.
    let notification = s.addr(ServiceKind::Notification).to_string();
    let (ok, out) = run(&[
        "-plaintext",
        "-H",
        &header,
        "-d",
        r#"{"template": {"channel": "NOTIFICATION_CHANNEL_SLACK", "event_type": "run.failed", "body": "*{{ job.name }}* failed: {{ run.error }}"}}"#,
        &notification,
        "opsconductor.notification.v1.NotificationService/PreviewTemplate",
    ]);
    assert!(
        ok && out.contains("\"body\": \"*") && out.contains("failed: "),
        "{out}"
    );
    let subscribe = format!(
        r#"{{"subscription": {{"job_id": "{job}", "channel": "NOTIFICATION_CHANNEL_SLACK", "destination": "https://hooks.slack.com/services/T000/B000/XXXX", "outcomes": {{"failed": true}}}}}}"#
    );
    let (ok, out) = run(&[
        "-plaintext",
        "-H",
        &header,
        "-d",
        &subscribe,
        &notification,
        "opsconductor.notification.v1.NotificationService/CreateSubscription",
    ]);
    assert!(
        ok && out.contains("https://hooks.slack.com/…") && !out.contains("XXXX"),
        "{out}"
    );
    let (ok, out) = run(&[
        "-plaintext",
        "-H",
        &header,
        &notification,
        "opsconductor.notification.v1.NotificationService/ListDeliveries",
    ]);
    assert!(ok, "{out}");

    // The audit trail of all that, as the README's tour reads it.
    crate::support::drain_audit(&s).await;
    let audit = s.addr(ServiceKind::Audit).to_string();
    let (ok, out) = run(&[
        "-plaintext",
        "-H",
        &header,
        "-d",
        r#"{"action_prefix": "target."}"#,
        &audit,
        "opsconductor.audit.v1.AuditService/ListAuditEvents",
    ]);
    assert!(ok && out.contains("\"action\": \"target.create\""), "{out}");
    let (ok, out) = run(&[
        "-plaintext",
        "-H",
        &header,
        "-d",
        r#"{"action_prefix": "schedule."}"#,
        &audit,
        "opsconductor.audit.v1.AuditService/ListAuditEvents",
    ]);
    assert!(
        ok && out.contains("\"action\": \"schedule.create\"")
            && out.contains("\"action\": \"schedule.trigger\""),
        "{out}"
    );
    assert!(!out.contains("user.create"), "{out}");
    let (ok, out) = run(&[
        "-plaintext",
        "-H",
        &header,
        &audit,
        "opsconductor.audit.v1.AuditService/VerifyAuditChain",
    ]);
    assert!(ok && out.contains("\"ok\": true"), "{out}");
    let (ok, out) = run(&[
        "-plaintext",
        "-H",
        &header,
        "-d",
        r#"{"start_sequence": 2}"#,
        &audit,
        "opsconductor.audit.v1.AuditService/ExportAuditEvents",
    ]);
    assert!(ok && out.contains("\"sequence\": \"2\""), "{out}");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reflection_v1_lists_the_same_services() {
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
    use tonic_reflection::pb::v1::ServerReflectionRequest;

    let s = Sandbox::start(StorageBackend::Sqlite).await;
    let channel =
        tonic::transport::Endpoint::from_shared(format!("http://{}", s.addr(ServiceKind::User)))
            .unwrap()
            .connect()
            .await
            .unwrap();
    let mut client = ServerReflectionClient::new(channel);
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut responses = client
        .server_reflection_info(tokio_stream::iter([request]))
        .await
        .unwrap()
        .into_inner();
    let response = responses.next().await.unwrap().unwrap();
    let Some(MessageResponse::ListServicesResponse(list)) = response.message_response else {
        panic!("unexpected {response:?}");
    };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    for name in [
        "opsconductor.user.v1.UserService",
        "grpc.health.v1.Health",
        "grpc.reflection.v1.ServerReflection",
        "grpc.reflection.v1alpha.ServerReflection",
    ] {
        assert!(
            names.iter().any(|n| n == name),
            "{name} missing from {names:?}"
        );
    }
    assert_eq!(
        names.len(),
        4,
        "only what this server serves is advertised: {names:?}"
    );
    s.stop().await;
}
