//! Webhook deliveries through the notification service (one replica, in this process, with the
//! real broker and SQLite or PostgreSQL) to a local HTTP receiver:
//!
//! - Throughput: N SendNotification calls, `concurrency` in flight, timed from the first call
//!   until the receiver has all N. The ceiling, measured in the same run against the same
//!   receiver: a plain `reqwest` loop posting the same bodies at the same concurrency.
//! - Queued deliveries: the same N deliveries queued again while the service is stopped (rows
//!   back to PENDING and their NotificationRequested staged in its outbox, as SendNotification
//!   leaves them), then the service started and timed until the receiver has all N: the relay,
//!   the broker, the channel worker (claim, send, record) without the API in front.
//! - Latency: at a moderate steady rate, from the moment SendNotification is called to the
//!   moment the receiver records the request (one clock: same process), p50/p99.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::stream::{self, StreamExt};
use opsconductor_api::common::v1::NotificationChannel;
use opsconductor_api::notification::v1::send_notification_request::{Content, Recipient};
use opsconductor_api::notification::v1::{LiteralContent, SendNotificationRequest};
use opsconductor_testkit::{HttpSink, Sandbox, StorageBackend};
use tokio::sync::Mutex;

use crate::stats::{ms, percentile};

pub struct Options {
    pub deliveries: usize,
    pub concurrency: usize,
    pub rate: u32,
    pub seconds: u64,
    pub postgres: bool,
}

fn request(url: &str, i: usize) -> SendNotificationRequest {
    SendNotificationRequest {
        idempotency_key: uuid::Uuid::now_v7().to_string(),
        channel: NotificationChannel::Webhook as i32,
        recipient: Some(Recipient::Destination(url.to_string())),
        event_type: "bench".into(),
        content: Some(Content::Literal(LiteralContent {
            subject: String::new(),
            body: format!(r#"{{"type": "bench", "data": {{"i": {i}}}}}"#),
        })),
        ..Default::default()
    }
}

async fn ceiling(sink: &HttpSink, n: usize, concurrency: usize) -> anyhow::Result<f64> {
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()?;
    let url = sink.url("/ceiling");
    let started = Instant::now();
    let results: Vec<bool> = stream::iter(0..n)
        .map(|i| {
            let client = client.clone();
            let url = url.clone();
            async move {
                let body = format!(r#"{{"type": "bench", "data": {{"i": {i}}}}}"#);
                client
                    .post(&url)
                    .header("content-type", "application/json")
                    .body(body)
                    .send()
                    .await
                    .is_ok_and(|r| r.status().is_success())
            }
        })
        .buffer_unordered(concurrency)
        .collect()
        .await;
    anyhow::ensure!(results.iter().all(|ok| *ok), "the receiver refused posts");
    Ok(n as f64 / started.elapsed().as_secs_f64())
}

async fn throughput(
    s: &Sandbox,
    sink: &HttpSink,
    path: &str,
    n: usize,
    concurrency: usize,
) -> anyhow::Result<(f64, f64)> {
    let url = sink.url(path);
    let started = Instant::now();
    let results: Vec<anyhow::Result<()>> = stream::iter(0..n)
        .map(|i| {
            let mut client = s.notification();
            let request = request(&url, i);
            async move {
                client.send_notification(request).await?;
                Ok(())
            }
        })
        .buffer_unordered(concurrency)
        .collect()
        .await;
    for r in results {
        r?;
    }
    let sent = n as f64 / started.elapsed().as_secs_f64();
    sink.wait_for(path, n, Duration::from_secs(600)).await;
    let delivered = n as f64 / started.elapsed().as_secs_f64();
    Ok((sent, delivered))
}

async fn drain(s: &mut Sandbox, sink: &HttpSink, n: usize) -> anyhow::Result<f64> {
    use opsconductor_api::notification::v1::NotificationRequested;
    use opsconductor_messaging::topology::platform;
    use opsconductor_messaging::{Outbox, OutgoingMessage};
    use opsconductor_platform::ServiceKind;

    s.stop_service(ServiceKind::Notification).await;
    let db = s.db(ServiceKind::Notification).clone();
    let exchange = s
        .broker
        .names()
        .exchange(&platform::notification_exchange());
    let from = sink.url("/throughput");
    let to = sink.url("/drain");
    let ids: Vec<(String,)> = sqlx::query_as("SELECT id FROM deliveries WHERE destination = $1")
        .bind(&from)
        .fetch_all(db.pool())
        .await?;
    anyhow::ensure!(ids.len() == n, "found {} deliveries of {n}", ids.len());
    let outbox = Outbox::new(db.clone());
    let mut tx = db.begin().await?;
    sqlx::query("UPDATE deliveries SET state = 1, destination = $1 WHERE destination = $2")
        .bind(&to)
        .bind(&from)
        .execute(&mut *tx)
        .await?;
    for (id,) in &ids {
        let message = OutgoingMessage::new(
            &exchange,
            "webhook",
            &NotificationRequested {
                delivery_id: id.clone(),
                channel: NotificationChannel::Webhook as i32,
                event_type: "bench".into(),
            },
        );
        outbox.stage(&mut tx, &message).await?;
    }
    tx.commit().await?;
    let started = Instant::now();
    s.start_service(ServiceKind::Notification).await;
    sink.wait_for("/drain", n, Duration::from_secs(600)).await;
    Ok(n as f64 / started.elapsed().as_secs_f64())
}

async fn latency(
    s: &Sandbox,
    sink: &HttpSink,
    rate: u32,
    seconds: u64,
) -> anyhow::Result<Vec<Duration>> {
    let url = sink.url("/latency");
    let n = (u64::from(rate) * seconds) as usize;
    let sent: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let mut ticker = tokio::time::interval(Duration::from_secs_f64(1.0 / f64::from(rate)));
    let mut tasks = Vec::with_capacity(n);
    for i in 0..n {
        ticker.tick().await;
        let mut client = s.notification();
        let request = request(&url, i);
        let sent = sent.clone();
        tasks.push(tokio::spawn(async move {
            let at = Instant::now();
            let delivery = client
                .send_notification(request)
                .await?
                .into_inner()
                .delivery;
            let id = delivery.map(|d| d.id).unwrap_or_default();
            sent.lock().await.insert(id, at);
            anyhow::Ok(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    let received = sink.wait_for("/latency", n, Duration::from_secs(120)).await;
    let sent = sent.lock().await;
    let mut samples = Vec::with_capacity(n);
    for r in received {
        let id = r
            .headers
            .get("webhook-id")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default();
        if let Some(at) = sent.get(id) {
            samples.push(r.at.saturating_duration_since(*at));
        }
    }
    anyhow::ensure!(samples.len() == n, "matched {} of {n}", samples.len());
    Ok(samples)
}

pub async fn run(o: Options) -> anyhow::Result<()> {
    let backend = if o.postgres {
        StorageBackend::Postgres
    } else {
        StorageBackend::Sqlite
    };
    let concurrency = o.concurrency.to_string();
    let mut s = Sandbox::start_with(
        backend,
        &[
            ("NOTIFICATION_RATE_PER_MINUTE", "0"),
            ("NOTIFICATION_DEDUPE_WINDOW_MS", "0"),
            ("NOTIFICATION_CONCURRENCY", &concurrency),
        ],
    )
    .await;
    let sink = HttpSink::start().await;
    eprintln!("warming up");
    throughput(&s, &sink, "/warm-up", 200, o.concurrency).await?;
    ceiling(&sink, 1_000, o.concurrency).await?;

    eprintln!("measuring: plain reqwest ceiling");
    let ceiling = ceiling(&sink, o.deliveries, o.concurrency).await?;
    eprintln!("measuring: SendNotification -> delivered");
    let (sent, delivered) =
        throughput(&s, &sink, "/throughput", o.deliveries, o.concurrency).await?;
    eprintln!("measuring: queued deliveries -> delivered");
    let drained = drain(&mut s, &sink, o.deliveries).await?;
    eprintln!("measuring: latency at {}/s", o.rate);
    let mut samples = latency(&s, &sink, o.rate, o.seconds).await?;
    let p50 = percentile(&mut samples, 0.5);
    let p99 = percentile(&mut samples, 0.99);

    println!(
        "notifications ({backend:?}, 1 replica, {} in flight)",
        o.concurrency
    );
    println!("  plain reqwest posts to the receiver:    {ceiling:>9.0}/s");
    println!("  SendNotification calls accepted:       {sent:>9.0}/s");
    println!(
        "  webhook deliveries (send -> received):  {delivered:>9.0}/s  ({:.2} of the ceiling)",
        delivered / ceiling
    );
    println!(
        "  queued deliveries (restart -> received): {drained:>9.0}/s  ({:.2} of the ceiling)",
        drained / ceiling
    );
    println!(
        "  enqueue -> delivered at {}/s:          p50 {:.1} ms, p99 {:.1} ms ({} deliveries)",
        o.rate,
        ms(p50),
        ms(p99),
        samples.len()
    );
    s.stop().await;
    Ok(())
}
