//! Traces: `opsconductor up` exporting to an OTLP collector (a real tonic server implementing
//! the collector's protocol) shows one run as one trace — the caller's StartRun, the request
//! message, the executor's run and step, CompleteRun, RunFinished, the delivery's message and
//! its send — every span under one trace id, each linked to the span that caused it.

use std::collections::HashMap;
use std::time::Duration;

use opsconductor_api::common::v1::NotificationChannel;
use opsconductor_api::jobs::v1::jobs_service_client::JobsServiceClient;
use opsconductor_api::jobs::v1::{CreateJobRequest, StartRunRequest};
use opsconductor_api::notification::v1::notification_service_client::NotificationServiceClient;
use opsconductor_api::notification::v1::{
    subscription, CreateSubscriptionRequest, OutcomeFilter, Subscription,
};
use opsconductor_testkit::{channel_as, free_port_base, CollectedSpan, Collector, HttpSink};

use crate::binary::{admin_password, login, up, wait_serving};
use crate::jobs::{job, shell, LIMIT};

const CALLER_TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CALLER_SPAN: &str = "00f067aa0ba902b7";

/// The chain of span names from `span` up to the root of its trace.
fn ancestry(span: &CollectedSpan, by_id: &HashMap<&str, &CollectedSpan>) -> Vec<String> {
    let mut names = vec![span.name.clone()];
    let mut parent = span.parent_span_id.as_str();
    while let Some(next) = by_id.get(parent) {
        names.push(next.name.clone());
        parent = next.parent_span_id.as_str();
    }
    // The last parent is the caller's own span, which the test made up and never exported.
    names.push(format!("<{parent}>"));
    names
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_run_is_one_trace_from_start_run_to_the_notification_it_sends() {
    let collector = Collector::start().await;
    let sink = HttpSink::start().await;
    let dir = tempfile::tempdir().unwrap();
    let base = free_port_base();
    let url = |offset: u16| format!("http://127.0.0.1:{}", base + offset);
    let _up = up(
        dir.path(),
        base,
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", collector.endpoint()),
            // Export within 100 ms instead of 5 s: the test waits on what arrives.
            ("OTEL_BSP_SCHEDULE_DELAY", "100".into()),
            ("NOTIFICATION_ALLOW_PLAIN_HTTP", "true".into()),
            ("NOTIFICATION_ALLOW_PRIVATE_ADDRESSES", "true".into()),
        ],
    );
    for offset in [1, 6, 7, 9] {
        wait_serving(&url(offset)).await;
    }
    let session = login(&url(1), "admin", &admin_password(&dir.path().join("state"))).await;
    let token = session.access_token;
    let mut jobs = JobsServiceClient::new(channel_as(&url(6), token.clone()));
    let mut notification = NotificationServiceClient::new(channel_as(&url(7), token));

    let created = jobs
        .create_job(CreateJobRequest {
            job: Some(job("traced", vec![shell("greet", "echo hello")])),
        })
        .await
        .unwrap()
        .into_inner()
        .job
        .unwrap();
    notification
        .create_subscription(CreateSubscriptionRequest {
            subscription: Some(Subscription {
                selector: Some(subscription::Selector::JobId(created.id.clone())),
                channel: NotificationChannel::Webhook as i32,
                destination: sink.url("/done"),
                outcomes: Some(OutcomeFilter {
                    succeeded: true,
                    ..Default::default()
                }),
                ..Default::default()
            }),
        })
        .await
        .unwrap();

    // The caller's own trace context: the platform continues it.
    let mut start = tonic::Request::new(StartRunRequest {
        job_id: created.id.clone(),
        idempotency_key: "traced-1".into(),
        ..Default::default()
    });
    start.metadata_mut().insert(
        "traceparent",
        format!("00-{CALLER_TRACE}-{CALLER_SPAN}-01")
            .parse()
            .unwrap(),
    );
    jobs.start_run(start).await.unwrap();
    let delivered = sink.wait_for("/done", 1, LIMIT).await;
    let traceparent = delivered[0]
        .headers
        .get("traceparent")
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default();
    // A parent span ends (and is exported) after its children, maybe in a later batch: wait
    // until the send's ancestry reaches the StartRun span, not just for the send.
    let spans = collector
        .wait_until(Duration::from_secs(30), |spans| {
            let trace: Vec<&CollectedSpan> = spans
                .iter()
                .filter(|s| s.trace_id == CALLER_TRACE)
                .collect();
            let by_id: HashMap<&str, &CollectedSpan> =
                trace.iter().map(|s| (s.span_id.as_str(), *s)).collect();
            trace.iter().any(|s| {
                s.name == "send webhook"
                    && ancestry(s, &by_id)
                        .iter()
                        .any(|name| name.ends_with("JobsService/StartRun"))
            })
        })
        .await;
    let trace: Vec<&CollectedSpan> = spans
        .iter()
        .filter(|s| s.trace_id == CALLER_TRACE)
        .collect();
    let by_id: HashMap<&str, &CollectedSpan> =
        trace.iter().map(|s| (s.span_id.as_str(), *s)).collect();
    let named = |name: &str| {
        trace
            .iter()
            .find(|s| s.name == name)
            .unwrap_or_else(|| panic!("no span {name:?} in the trace"))
    };
    assert!(trace.iter().all(|s| s.service == "opsconductor"));

    // The send's ancestry, read from the parent links alone, is the whole story.
    let send = named("send webhook");
    let chain = ancestry(send, &by_id);
    let expected_order = [
        "send webhook",
        ".notification.webhook process",
        ".notification.run-finished process",
        "opsconductor.jobs.v1.JobsService/CompleteRun",
        "opsconductor.jobs.v1.JobsService/CompleteRun",
        "run",
        ".executor.run-requested process",
        "opsconductor.jobs.v1.JobsService/StartRun",
    ];
    let mut at = 0;
    for want in expected_order {
        let found = chain[at..]
            .iter()
            .position(|name| name.ends_with(want))
            .unwrap_or_else(|| panic!("{want:?} missing, in order, from {chain:#?}"));
        at += found + 1;
    }
    assert_eq!(
        chain.last().map(String::as_str),
        Some(format!("<{CALLER_SPAN}>").as_str()),
        "{chain:#?}"
    );

    // Kinds and attributes by the semantic conventions.
    let start_run = named("opsconductor.jobs.v1.JobsService/StartRun");
    assert_eq!(start_run.kind, 2, "server");
    assert_eq!(start_run.parent_span_id, CALLER_SPAN);
    assert_eq!(start_run.attributes["rpc.system"], "grpc");
    assert_eq!(start_run.attributes["rpc.method"], "StartRun");
    assert_eq!(start_run.attributes["rpc.grpc.status_code"], "0");
    let run = named("run");
    let request = by_id[run.parent_span_id.as_str()];
    assert_eq!(request.kind, 5, "consumer: {request:?}");
    assert_eq!(request.attributes["messaging.system"], "rabbitmq");
    assert_eq!(
        by_id[request.parent_span_id.as_str()].span_id,
        start_run.span_id
    );
    let step = named("step greet");
    assert_eq!(step.parent_span_id, run.span_id);
    let complete_client = trace
        .iter()
        .find(|s| s.name.ends_with("CompleteRun") && s.kind == 3)
        .expect("the executor's CompleteRun call");
    assert_eq!(complete_client.parent_span_id, run.span_id);
    // The webhook carries the trace on to whoever receives it, from the send's span.
    assert_eq!(
        traceparent,
        format!("00-{CALLER_TRACE}-{}-01", send.span_id),
        "the webhook's traceparent"
    );
    // Health probes, background polls and library spans are not traced.
    for span in &spans {
        assert!(
            !span.name.starts_with("grpc.health")
                && !span.name.ends_with("/ListRevocations")
                && span.name != "io_loop",
            "{span:?}"
        );
    }

    // A malformed traceparent is ignored: the call works and starts a trace of its own.
    let mut bad = tonic::Request::new(StartRunRequest {
        job_id: created.id.clone(),
        idempotency_key: "traced-2".into(),
        ..Default::default()
    });
    bad.metadata_mut()
        .insert("traceparent", "00-zz-not-a-trace".parse().unwrap());
    jobs.start_run(bad).await.unwrap();
}
