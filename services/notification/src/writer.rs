//! Group commit for the channel workers' writes. Every delivery costs two writes — the claim
//! before the send and the attempt after it — and on SQLite every write transaction takes the
//! one writer's turn. Workers hand their writes to one task that runs whatever is waiting in a
//! single transaction, so a hundred concurrent deliveries cost a couple of commits instead of
//! two hundred, while each send still runs on its own (no head-of-line blocking: a slow
//! receiver holds up only its own delivery).

use opsconductor_api::notification::v1::DeliveryState;
use opsconductor_platform::time::now_micros;
use opsconductor_storage::Database;
use sqlx::AnyConnection;
use tokio::sync::{mpsc, oneshot};

use crate::deliveries::{AttemptRecord, DeliveryRow, COLUMNS};
use crate::NotificationError;

/// Writes waiting beyond this many go into the next transaction.
const MAX_GROUP: usize = 256;

#[derive(Debug)]
pub enum Write {
    /// PENDING, FAILED, DEAD_LETTERED or an expired SENDING → SENDING under `claim_id`.
    Claim {
        id: String,
        claim_id: String,
        until: i64,
        now: i64,
    },
    /// The attempt and the state it leads to, if `claim_id` still holds the delivery.
    Record {
        id: String,
        number: i64,
        claim_id: String,
        attempt: AttemptRecord,
    },
}

#[derive(Debug)]
pub enum Written {
    Claimed(Option<Box<DeliveryRow>>),
    Recorded(bool),
}

type Pending = (Write, oneshot::Sender<Result<Written, String>>);

#[derive(Clone)]
pub struct GroupWriter {
    queue: mpsc::UnboundedSender<Pending>,
}

impl GroupWriter {
    /// Starts the writing task; it ends when the last handle is dropped.
    pub fn start(db: Database) -> GroupWriter {
        let (queue, mut waiting) = mpsc::unbounded_channel::<Pending>();
        tokio::spawn(async move {
            while let Some(first) = waiting.recv().await {
                let mut group = vec![first];
                while group.len() < MAX_GROUP {
                    match waiting.try_recv() {
                        Ok(next) => group.push(next),
                        Err(_) => break,
                    }
                }
                let (writes, replies): (Vec<Write>, Vec<_>) = group.into_iter().unzip();
                match run(&db, &writes).await {
                    Ok(results) => {
                        for (reply, result) in replies.into_iter().zip(results) {
                            let _ = reply.send(Ok(result));
                        }
                    }
                    // One transaction: all of it failed, and every writer retries.
                    Err(e) => {
                        let error = e.to_string();
                        for reply in replies {
                            let _ = reply.send(Err(error.clone()));
                        }
                    }
                }
            }
        });
        GroupWriter { queue }
    }

    pub async fn write(&self, write: Write) -> Result<Written, NotificationError> {
        let (reply, answer) = oneshot::channel();
        self.queue
            .send((write, reply))
            .map_err(|_| NotificationError::Write("the writer has stopped".into()))?;
        answer
            .await
            .map_err(|_| NotificationError::Write("the writer has stopped".into()))?
            .map_err(NotificationError::Write)
    }
}

async fn run(db: &Database, writes: &[Write]) -> Result<Vec<Written>, sqlx::Error> {
    // Rows in id order, so two replicas' groups lock in the same order (no deadlock).
    let mut order: Vec<usize> = (0..writes.len()).collect();
    order.sort_by_key(|&i| match &writes[i] {
        Write::Claim { id, .. } | Write::Record { id, .. } => id.as_str(),
    });
    let mut tx = db.begin().await?;
    let mut results: Vec<Option<Written>> = writes.iter().map(|_| None).collect();
    for i in order {
        results[i] = Some(match &writes[i] {
            Write::Claim {
                id,
                claim_id,
                until,
                now,
            } => Written::Claimed(
                claim(&mut tx, id, claim_id, *until, *now)
                    .await?
                    .map(Box::new),
            ),
            Write::Record {
                id,
                number,
                claim_id,
                attempt,
            } => Written::Recorded(record(&mut tx, id, *number, claim_id, attempt).await?),
        });
    }
    tx.commit().await?;
    Ok(results.into_iter().flatten().collect())
}

async fn claim(
    connection: &mut AnyConnection,
    id: &str,
    claim_id: &str,
    until: i64,
    now: i64,
) -> Result<Option<DeliveryRow>, sqlx::Error> {
    sqlx::query_as::<_, DeliveryRow>(&format!(
        "UPDATE deliveries SET state = $1, claim_id = $2, lease_until = $3, update_time = $4 \
         WHERE id = $5 AND (state IN ($6, $7, $8) OR (state = $9 AND lease_until < $10)) \
         RETURNING {COLUMNS}"
    ))
    .bind(DeliveryState::Sending as i64)
    .bind(claim_id)
    .bind(until)
    .bind(now)
    .bind(id)
    .bind(DeliveryState::Pending as i64)
    .bind(DeliveryState::Failed as i64)
    .bind(DeliveryState::DeadLettered as i64)
    .bind(DeliveryState::Sending as i64)
    .bind(now)
    .fetch_optional(connection)
    .await
}

async fn record(
    connection: &mut AnyConnection,
    id: &str,
    number: i64,
    claim_id: &str,
    a: &AttemptRecord,
) -> Result<bool, sqlx::Error> {
    let now = now_micros();
    let updated = sqlx::query(
        "UPDATE deliveries SET state = $1, attempts = attempts + 1, last_error = $2, \
         next_attempt_time = $3, deliver_time = $4, claim_id = NULL, lease_until = NULL, \
         update_time = $5 WHERE id = $6 AND claim_id = $7",
    )
    .bind(a.state as i64)
    .bind(&a.error)
    .bind(a.next_attempt_time)
    .bind((a.state == DeliveryState::Delivered).then_some(now))
    .bind(now)
    .bind(id)
    .bind(claim_id)
    .execute(&mut *connection)
    .await?;
    if updated.rows_affected() == 0 {
        return Ok(false);
    }
    sqlx::query(
        "INSERT INTO delivery_attempts (delivery_id, number, start_time, outcome, status, \
         error, latency_us, retry_after_ms) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
    )
    .bind(id)
    .bind(number)
    .bind(a.start_time)
    .bind(a.outcome as i64)
    .bind(i64::from(a.status))
    .bind(&a.error)
    .bind(a.latency.as_micros().min(i64::MAX as u128) as i64)
    .bind(
        a.retry_after
            .map(|d| d.as_millis().min(i64::MAX as u128) as i64),
    )
    .execute(&mut *connection)
    .await?;
    Ok(true)
}
