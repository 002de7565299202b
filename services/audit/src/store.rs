//! The audit log in SQLite or PostgreSQL. Appends take the chain's head row (PostgreSQL:
//! `FOR UPDATE`; SQLite: the write lock of `BEGIN IMMEDIATE`), so every replica extends one
//! chain; a whole batch is one transaction.

use std::collections::HashMap;

use opsconductor_api::audit::v1::{AuditCheckpoint, AuditEvent};
use opsconductor_api::common::v1::Actor;
use opsconductor_messaging::{AuditLog, Cause};
use opsconductor_platform::time::{now_micros, to_micros, to_timestamp};
use opsconductor_storage::{Backend, Database, Select};
use opsconductor_tokens::SigningKey;
use sqlx::AnyConnection;

use crate::chain::{self, CHECKPOINT_CONTEXT, GENESIS};
use crate::AuditError;

/// Events per INSERT statement: 16 parameters each, well within every backend's limit.
const INSERT_ROWS: usize = 100;

const COLUMNS: &str = "sequence, id, actor_user_id, actor_service_id, action, resource_type, \
    resource_id, occur_time, outcome, details, request_id, prev_hash, hash, source, record_time, \
    publisher";

#[derive(sqlx::FromRow)]
struct EventRow {
    sequence: i64,
    id: String,
    actor_user_id: String,
    actor_service_id: String,
    action: String,
    resource_type: String,
    resource_id: String,
    occur_time: i64,
    outcome: i64,
    details: String,
    request_id: String,
    prev_hash: Vec<u8>,
    hash: Vec<u8>,
    source: String,
    record_time: i64,
    publisher: String,
}

impl EventRow {
    /// The event as the API returns it and the chain hashes it. Details that do not parse
    /// become an entry that cannot match the hash, so the edit shows in verification.
    fn into_event(self) -> AuditEvent {
        let details: HashMap<String, String> = serde_json::from_str(&self.details)
            .unwrap_or_else(|_| HashMap::from([("<unreadable>".into(), self.details.clone())]));
        AuditEvent {
            id: self.id,
            sequence: self.sequence.max(0) as u64,
            actor: Some(Actor {
                user_id: self.actor_user_id,
                service_id: self.actor_service_id,
            }),
            action: self.action,
            resource_type: self.resource_type,
            resource_id: self.resource_id,
            occur_time: Some(to_timestamp(self.occur_time)),
            outcome: self.outcome as i32,
            details,
            request_id: self.request_id,
            prev_hash: self.prev_hash,
            hash: self.hash,
            source: self.source,
            record_time: Some(to_timestamp(self.record_time)),
            publisher: self.publisher,
        }
    }
}

#[derive(sqlx::FromRow)]
struct CheckpointRow {
    sequence: i64,
    hash: Vec<u8>,
    kid: String,
    signature: String,
    sign_time: i64,
}

impl CheckpointRow {
    fn into_checkpoint(self) -> AuditCheckpoint {
        AuditCheckpoint {
            sequence: self.sequence.max(0) as u64,
            hash: self.hash,
            kid: self.kid,
            signature: self.signature,
            sign_time: Some(to_timestamp(self.sign_time)),
        }
    }
}

/// The chain's head and where pruning left its start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Head {
    pub sequence: u64,
    pub hash: Vec<u8>,
    /// The signed checkpoint events up to which were pruned; 0 and [`GENESIS`] when none were.
    pub pruned_sequence: u64,
    pub pruned_hash: Vec<u8>,
}

/// An event to append and the broker account that published it.
pub struct Incoming {
    pub event: AuditEvent,
    pub publisher: String,
}

/// Filters of a listing; every one given must match.
#[derive(Debug, Default)]
pub struct EventFilter {
    pub actor_user_id: Option<String>,
    pub actor_service_id: Option<String>,
    pub action: Option<String>,
    pub action_prefix: Option<String>,
    pub resource_type: Option<String>,
    pub resource_id: Option<String>,
    pub request_id: Option<String>,
    pub outcome: Option<i32>,
    pub start_micros: Option<i64>,
    pub end_micros: Option<i64>,
}

/// When appends sign the head: every `every` events (and the writer's timer every so many
/// seconds).
#[derive(Clone)]
pub struct Signer {
    pub key: std::sync::Arc<SigningKey>,
    pub every: u64,
}

#[derive(Clone)]
pub struct AuditStore {
    db: Database,
    signer: Signer,
    /// The service's own audit trail (pruning is audited too).
    audit: AuditLog,
}

/// `%` and `_` are wildcards in LIKE; a prefix matches them literally.
fn like_prefix(prefix: &str) -> String {
    let mut pattern = String::with_capacity(prefix.len() + 1);
    for c in prefix.chars() {
        if matches!(c, '%' | '_' | '\\') {
            pattern.push('\\');
        }
        pattern.push(c);
    }
    pattern.push('%');
    pattern
}

impl AuditStore {
    pub fn new(db: Database, signer: Signer, audit: AuditLog) -> AuditStore {
        AuditStore { db, signer, audit }
    }

    pub fn db(&self) -> &Database {
        &self.db
    }

    /// The head row, locked for this transaction (created on first use).
    async fn lock_head(&self, conn: &mut AnyConnection) -> Result<Head, AuditError> {
        sqlx::query(
            "INSERT INTO audit_head (name, sequence, hash, pruned_sequence, pruned_hash) \
             VALUES ('main', 0, $1, 0, $1) ON CONFLICT (name) DO NOTHING",
        )
        .bind(GENESIS.to_vec())
        .execute(&mut *conn)
        .await?;
        let lock = match self.db.backend() {
            Backend::Postgres => " FOR UPDATE",
            Backend::Sqlite => "",
        };
        let (sequence, hash, pruned_sequence, pruned_hash): (i64, Vec<u8>, i64, Vec<u8>) =
            sqlx::query_as(&format!(
                "SELECT sequence, hash, pruned_sequence, pruned_hash FROM audit_head \
                 WHERE name = 'main'{lock}"
            ))
            .fetch_one(&mut *conn)
            .await?;
        Ok(Head {
            sequence: sequence.max(0) as u64,
            hash,
            pruned_sequence: pruned_sequence.max(0) as u64,
            pruned_hash,
        })
    }

    /// The head as it is now.
    pub async fn head(&self) -> Result<Head, AuditError> {
        let mut tx = self.db.begin().await?;
        let head = self.lock_head(&mut tx).await?;
        tx.commit().await?;
        Ok(head)
    }

    /// Appends `batch` in order, in one transaction: each event not in the log yet gets the
    /// next sequence and its hash; a checkpoint is signed when one is due. The log is its own
    /// inbox: an event id is unique in it, and a redelivered event is found there. Returns how
    /// many were appended (the rest were duplicates).
    pub async fn append(&self, batch: Vec<Incoming>) -> Result<usize, AuditError> {
        let mut tx = self.db.begin().await?;
        let mut head = self.lock_head(&mut tx).await?;
        let record_time = now_micros();
        let known = self.known_ids(&mut tx, &batch).await?;
        let mut seen = std::collections::HashSet::new();
        let mut rows = Vec::with_capacity(batch.len());
        for Incoming { event, publisher } in batch {
            if known.contains(&event.id) || !seen.insert(event.id.clone()) {
                continue;
            }
            let mut event = normalized(event, publisher);
            event.sequence = head.sequence + 1;
            event.prev_hash = head.hash.clone();
            event.hash = chain::hash(&event).to_vec();
            head.sequence = event.sequence;
            head.hash = event.hash.clone();
            rows.push(event);
        }
        for chunk in rows.chunks(INSERT_ROWS) {
            self.insert(&mut tx, chunk, record_time).await?;
        }
        if !rows.is_empty() {
            sqlx::query("UPDATE audit_head SET sequence = $1, hash = $2 WHERE name = 'main'")
                .bind(head.sequence as i64)
                .bind(head.hash.clone())
                .execute(&mut *tx)
                .await?;
            let last = self.last_checkpoint(&mut tx).await?;
            if head.sequence >= last + self.signer.every {
                self.sign(&mut tx, &head).await?;
            }
        }
        tx.commit().await?;
        Ok(rows.len())
    }

    /// The ids of `batch` already in the log.
    async fn known_ids(
        &self,
        conn: &mut AnyConnection,
        batch: &[Incoming],
    ) -> Result<std::collections::HashSet<String>, AuditError> {
        let mut known = std::collections::HashSet::new();
        let ids: Vec<&String> = batch.iter().map(|i| &i.event.id).collect();
        for chunk in ids.chunks(500) {
            let mut q = Select::new("SELECT id FROM audit_events WHERE 1 = 1");
            q.and_in("id IN ({})", chunk.iter().copied());
            let found: Vec<(String,)> = q.fetch_all_on(&mut *conn).await?;
            known.extend(found.into_iter().map(|(id,)| id));
        }
        Ok(known)
    }
    /// Signs the head now if events were appended since the last checkpoint (the writer's
    /// timer: no event waits long for a signature).
    pub async fn checkpoint_if_due(&self) -> Result<Option<u64>, AuditError> {
        let mut tx = self.db.begin().await?;
        let head = self.lock_head(&mut tx).await?;
        let last = self.last_checkpoint(&mut tx).await?;
        let signed = if head.sequence > last {
            self.sign(&mut tx, &head).await?;
            Some(head.sequence)
        } else {
            None
        };
        tx.commit().await?;
        Ok(signed)
    }

    async fn last_checkpoint(&self, conn: &mut AnyConnection) -> Result<u64, AuditError> {
        let (last,): (Option<i64>,) = sqlx::query_as("SELECT MAX(sequence) FROM audit_checkpoints")
            .fetch_one(&mut *conn)
            .await?;
        Ok(last.unwrap_or(0).max(0) as u64)
    }

    async fn sign(&self, conn: &mut AnyConnection, head: &Head) -> Result<(), AuditError> {
        let key = &self.signer.key;
        let signature = key.sign_detached(
            CHECKPOINT_CONTEXT,
            &chain::checkpoint_payload(head.sequence, &head.hash),
        );
        sqlx::query(
            "INSERT INTO audit_checkpoints (sequence, hash, kid, signature, sign_time) \
             VALUES ($1, $2, $3, $4, $5) ON CONFLICT (sequence) DO NOTHING",
        )
        .bind(head.sequence as i64)
        .bind(head.hash.clone())
        .bind(key.kid())
        .bind(signature)
        .bind(now_micros())
        .execute(&mut *conn)
        .await?;
        Ok(())
    }

    /// Inserts `events` in one statement.
    async fn insert(
        &self,
        conn: &mut AnyConnection,
        events: &[AuditEvent],
        record_time: i64,
    ) -> Result<(), AuditError> {
        const COLUMN_COUNT: usize = 16;
        let rows: Vec<String> = (0..events.len())
            .map(|r| {
                let params: Vec<String> = (1..=COLUMN_COUNT)
                    .map(|c| format!("${}", r * COLUMN_COUNT + c))
                    .collect();
                format!("({})", params.join(", "))
            })
            .collect();
        let sql = format!(
            "INSERT INTO audit_events ({COLUMNS}) VALUES {}",
            rows.join(", ")
        );
        let mut query = sqlx::query(&sql);
        for event in events {
            let actor = event.actor.clone().unwrap_or_default();
            let details = serde_json::to_string(&sorted(&event.details))
                .map_err(|e| AuditError::Encode(e.to_string()))?;
            query = query
                .bind(event.sequence as i64)
                .bind(event.id.clone())
                .bind(actor.user_id)
                .bind(actor.service_id)
                .bind(event.action.clone())
                .bind(event.resource_type.clone())
                .bind(event.resource_id.clone())
                .bind(event.occur_time.as_ref().map(to_micros).unwrap_or(0))
                .bind(i64::from(event.outcome))
                .bind(details)
                .bind(event.request_id.clone())
                .bind(event.prev_hash.clone())
                .bind(event.hash.clone())
                .bind(event.source.clone())
                .bind(record_time)
                .bind(event.publisher.clone());
        }
        query.execute(&mut *conn).await?;
        Ok(())
    }

    pub async fn get(&self, id: &str) -> Result<AuditEvent, AuditError> {
        sqlx::query_as::<_, EventRow>(&format!("SELECT {COLUMNS} FROM audit_events WHERE id = $1"))
            .bind(id)
            .fetch_optional(self.db.pool())
            .await?
            .map(EventRow::into_event)
            .ok_or_else(|| AuditError::NotFound(id.to_string()))
    }

    /// Events matching `filter`, newest first, with a sequence below `before`.
    pub async fn list(
        &self,
        filter: &EventFilter,
        before: Option<u64>,
        limit: i64,
    ) -> Result<Vec<AuditEvent>, AuditError> {
        let mut q = Select::new(format!("SELECT {COLUMNS} FROM audit_events WHERE 1 = 1"));
        let exact = [
            ("actor_user_id", &filter.actor_user_id),
            ("actor_service_id", &filter.actor_service_id),
            ("action", &filter.action),
            ("resource_type", &filter.resource_type),
            ("resource_id", &filter.resource_id),
            ("request_id", &filter.request_id),
        ];
        for (column, value) in exact {
            if let Some(value) = value {
                q.and(&format!("{column} = {{}}"), value);
            }
        }
        if let Some(prefix) = &filter.action_prefix {
            q.and("action LIKE {} ESCAPE '\\'", like_prefix(prefix));
        }
        if let Some(outcome) = filter.outcome {
            q.and("outcome = {}", outcome);
        }
        if let Some(start) = filter.start_micros {
            q.and("occur_time >= {}", start);
        }
        if let Some(end) = filter.end_micros {
            q.and("occur_time < {}", end);
        }
        if let Some(before) = before {
            q.and("sequence < {}", before.min(i64::MAX as u64) as i64);
        }
        q.push(" ORDER BY sequence DESC").limit(limit);
        let rows: Vec<EventRow> = q.fetch_all(self.db.pool()).await?;
        Ok(rows.into_iter().map(EventRow::into_event).collect())
    }

    /// Up to `limit` events from `start` on, in sequence order (at most up to `end`).
    pub async fn range(
        &self,
        start: u64,
        end: u64,
        limit: i64,
    ) -> Result<Vec<AuditEvent>, AuditError> {
        let rows: Vec<EventRow> = sqlx::query_as(&format!(
            "SELECT {COLUMNS} FROM audit_events WHERE sequence >= $1 AND sequence <= $2 \
             ORDER BY sequence LIMIT $3"
        ))
        .bind(start.min(i64::MAX as u64) as i64)
        .bind(end.min(i64::MAX as u64) as i64)
        .bind(limit)
        .fetch_all(self.db.pool())
        .await?;
        Ok(rows.into_iter().map(EventRow::into_event).collect())
    }

    /// Checkpoints with a sequence in `start..=end`, oldest first, at most `limit`.
    pub async fn checkpoints(
        &self,
        start: u64,
        end: u64,
        limit: i64,
    ) -> Result<Vec<AuditCheckpoint>, AuditError> {
        let rows: Vec<CheckpointRow> = sqlx::query_as(
            "SELECT sequence, hash, kid, signature, sign_time FROM audit_checkpoints \
             WHERE sequence >= $1 AND sequence <= $2 ORDER BY sequence LIMIT $3",
        )
        .bind(start.min(i64::MAX as u64) as i64)
        .bind(end.min(i64::MAX as u64) as i64)
        .bind(limit)
        .fetch_all(self.db.pool())
        .await?;
        Ok(rows
            .into_iter()
            .map(CheckpointRow::into_checkpoint)
            .collect())
    }

    /// Deletes the events recorded before `cutoff` (micros) up to the newest signed checkpoint
    /// among them, which becomes where the chain now starts. Returns that checkpoint's sequence
    /// and how many events went, or None when nothing could go.
    pub async fn prune(&self, cutoff: i64) -> Result<Option<(u64, u64)>, AuditError> {
        let mut tx = self.db.begin().await?;
        let head = self.lock_head(&mut tx).await?;
        let anchor: Option<CheckpointRow> = sqlx::query_as(
            "SELECT c.sequence, c.hash, c.kid, c.signature, c.sign_time FROM audit_checkpoints c \
             JOIN audit_events e ON e.sequence = c.sequence \
             WHERE e.record_time < $1 AND c.sequence > $2 ORDER BY c.sequence DESC LIMIT 1",
        )
        .bind(cutoff)
        .bind(head.pruned_sequence as i64)
        .fetch_optional(&mut *tx)
        .await?;
        let Some(anchor) = anchor else {
            return Ok(None);
        };
        let deleted = sqlx::query("DELETE FROM audit_events WHERE sequence <= $1")
            .bind(anchor.sequence)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        sqlx::query("DELETE FROM audit_checkpoints WHERE sequence < $1")
            .bind(anchor.sequence)
            .execute(&mut *tx)
            .await?;
        sqlx::query(
            "UPDATE audit_head SET pruned_sequence = $1, pruned_hash = $2 WHERE name = 'main'",
        )
        .bind(anchor.sequence)
        .bind(anchor.hash.clone())
        .execute(&mut *tx)
        .await?;
        let details = [
            ("through_sequence", anchor.sequence.to_string()),
            ("deleted", deleted.to_string()),
        ];
        self.audit
            .record(
                &mut tx,
                &Cause::service("audit"),
                "audit.prune",
                ("audit_log", ""),
                &details,
            )
            .await?;
        self.audit.commit(tx).await?;
        Ok(Some((anchor.sequence.max(0) as u64, deleted)))
    }
}

/// The event as it is stored and hashed: every time in microseconds, actor and occur time
/// present, the publisher the broker vouched for.
fn normalized(mut event: AuditEvent, publisher: String) -> AuditEvent {
    event.actor = Some(event.actor.unwrap_or_default());
    let occur = event.occur_time.as_ref().map(to_micros).unwrap_or(0);
    event.occur_time = Some(to_timestamp(occur));
    event.publisher = publisher;
    event.hash.clear();
    event.record_time = None;
    event
}

fn sorted(details: &HashMap<String, String>) -> std::collections::BTreeMap<&String, &String> {
    details.iter().collect()
}
