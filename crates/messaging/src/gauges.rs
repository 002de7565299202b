//! What the database holds for messaging, sampled for `/metrics`: the outbox's depth and the
//! age of its oldest row (a relay that cannot publish shows here first), and the dead letters
//! kept per queue.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use opsconductor_metrics::{CounterSet, Registry};
use opsconductor_platform::server::Tasks;
use opsconductor_platform::time::now_micros;
use opsconductor_storage::Database;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;

/// Often enough for an alert that waits minutes; one cheap query pair per service.
const SAMPLE_EVERY: Duration = Duration::from_secs(5);

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct QueueLabel {
    queue: String,
}

#[derive(Default)]
struct Outbox {
    pending: AtomicI64,
    /// Unix microseconds of the oldest row, 0 when empty.
    oldest: AtomicI64,
}

/// The outbox's depth and the age of its oldest row, sampled from `db`.
pub(crate) fn outbox(db: Database, registry: &Registry) -> Tasks {
    let outbox = Arc::new(Outbox::default());
    let (pending, oldest) = (outbox.clone(), outbox.clone());
    registry.register_collector(
        CounterSet::new()
            .gauge(
                "opsconductor_outbox_pending",
                "Messages committed and not yet confirmed by the broker.",
                move || pending.pending.load(Ordering::Relaxed).max(0) as u64,
            )
            .gauge(
                "opsconductor_outbox_oldest_age_seconds",
                "Age of the oldest message waiting in the outbox (0 when it is empty).",
                move || match oldest.oldest.load(Ordering::Relaxed) {
                    0 => 0,
                    at => ((now_micros() - at).max(0) / 1_000_000) as u64,
                },
            ),
    );
    sampled(move || {
        let (db, outbox) = (db.clone(), outbox.clone());
        async move {
            let (count, oldest): (i64, Option<i64>) =
                sqlx::query_as("SELECT COUNT(*), MIN(create_time) FROM messaging_outbox")
                    .fetch_one(db.pool())
                    .await?;
            outbox.pending.store(count, Ordering::Relaxed);
            outbox.oldest.store(oldest.unwrap_or(0), Ordering::Relaxed);
            Ok(())
        }
    })
}

/// The dead letters kept in `db` for each of `queues` (broker names), 0 included: a series
/// per queue from the start, so an alert on it has something to watch.
pub(crate) fn dead_letters(db: Database, queues: Vec<String>, registry: &Registry) -> Tasks {
    let family = Family::<QueueLabel, Gauge>::default();
    registry.register(
        "opsconductor_dead_letters",
        "Dead letters kept in the service's database, by dead-letter queue.",
        family.clone(),
    );
    for queue in &queues {
        family
            .get_or_create(&QueueLabel {
                queue: queue.clone(),
            })
            .set(0);
    }
    sampled(move || {
        let (db, family, queues) = (db.clone(), family.clone(), queues.clone());
        async move {
            let rows: Vec<(String, i64)> =
                sqlx::query_as("SELECT queue, COUNT(*) FROM messaging_dead_letters GROUP BY queue")
                    .fetch_all(db.pool())
                    .await?;
            for queue in queues {
                let count = rows
                    .iter()
                    .find(|(q, _)| *q == queue)
                    .map_or(0, |(_, n)| *n);
                family.get_or_create(&QueueLabel { queue }).set(count);
            }
            Ok(())
        }
    })
}

fn sampled<F, Fut>(sample: F) -> Tasks
where
    F: Fn() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = Result<(), sqlx::Error>> + Send,
{
    Tasks(vec![tokio::spawn(async move {
        loop {
            if let Err(e) = sample().await {
                tracing::debug!(error = %e, "messaging gauges not sampled");
            }
            tokio::time::sleep(SAMPLE_EVERY).await;
        }
    })])
}
