//! Dead letters in the service's own database: a queue cannot be browsed, paged or edited by
//! id, so each service drains its dead-letter queues into this table, where operators list,
//! inspect, replay and purge them.

use std::collections::BTreeMap;

use opsconductor_api::deadletters::v1::DeadLetter;
use opsconductor_platform::page::Page;
use opsconductor_platform::time::to_timestamp;
use opsconductor_storage::Database;

use crate::error::MessagingError;

/// One stored dead letter.
#[derive(Debug, Clone, sqlx::FromRow)]
pub(crate) struct DeadLetterRow {
    pub id: String,
    pub queue: String,
    pub original_queue: String,
    pub exchange: String,
    pub routing_key: String,
    pub message_type: String,
    pub message_id: String,
    pub correlation_id: String,
    pub attempts: i64,
    pub last_error: String,
    pub first_death_time: i64,
    pub last_death_time: i64,
    pub headers: String,
    pub body: Vec<u8>,
}

const COLUMNS: &str = "id, queue, original_queue, exchange, routing_key, message_type, \
    message_id, correlation_id, attempts, last_error, first_death_time, last_death_time, \
    headers, body";

impl DeadLetterRow {
    pub fn headers(&self) -> BTreeMap<String, String> {
        serde_json::from_str(&self.headers).unwrap_or_default()
    }

    /// The listing form: no body, no headers.
    pub fn summary(&self) -> DeadLetter {
        DeadLetter {
            id: self.id.clone(),
            queue: self.queue.clone(),
            original_queue: self.original_queue.clone(),
            exchange: self.exchange.clone(),
            routing_key: self.routing_key.clone(),
            message_type: self.message_type.clone(),
            message_id: self.message_id.clone(),
            correlation_id: self.correlation_id.clone(),
            attempts: self.attempts.clamp(0, i64::from(u32::MAX)) as u32,
            last_error: self.last_error.clone(),
            first_death_time: Some(to_timestamp(self.first_death_time)),
            last_death_time: Some(to_timestamp(self.last_death_time)),
            ..Default::default()
        }
    }
}

/// Filters of a listing.
#[derive(Debug, Default)]
pub(crate) struct Filter {
    /// Restrict to these queues (the service's own, or the one asked for).
    pub queues: Vec<String>,
    pub message_type: Option<String>,
}

#[derive(Clone)]
pub(crate) struct DeadLetterStore {
    db: Database,
}

impl DeadLetterStore {
    pub fn new(db: Database) -> DeadLetterStore {
        DeadLetterStore { db }
    }

    pub fn db(&self) -> &Database {
        &self.db
    }

    /// Stores a dead letter; a second copy of the same message in the same queue is ignored.
    pub async fn insert(&self, row: &DeadLetterRow) -> Result<(), MessagingError> {
        sqlx::query(&format!(
            "INSERT INTO messaging_dead_letters ({COLUMNS}) VALUES \
             ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14) ON CONFLICT DO NOTHING"
        ))
        .bind(&row.id)
        .bind(&row.queue)
        .bind(&row.original_queue)
        .bind(&row.exchange)
        .bind(&row.routing_key)
        .bind(&row.message_type)
        .bind(&row.message_id)
        .bind(&row.correlation_id)
        .bind(row.attempts)
        .bind(&row.last_error)
        .bind(row.first_death_time)
        .bind(row.last_death_time)
        .bind(&row.headers)
        .bind(row.body.clone())
        .execute(self.db.pool())
        .await?;
        Ok(())
    }

    fn where_clause(filter: &Filter, first: usize) -> (String, usize) {
        let mut n = first;
        let mut sql = String::from(" WHERE 1 = 1");
        if !filter.queues.is_empty() {
            let list: Vec<String> = filter
                .queues
                .iter()
                .map(|_| {
                    n += 1;
                    format!("${n}")
                })
                .collect();
            sql += &format!(" AND queue IN ({})", list.join(", "));
        }
        if filter.message_type.is_some() {
            n += 1;
            sql += &format!(" AND message_type = ${n}");
        }
        (sql, n)
    }

    /// A page, oldest first, and how many match in all.
    pub async fn list(
        &self,
        filter: &Filter,
        page: &Page,
    ) -> Result<(Vec<DeadLetterRow>, String, u64), MessagingError> {
        let (clause, used) = Self::where_clause(filter, 0);
        let count_sql = format!("SELECT COUNT(*) FROM messaging_dead_letters{clause}");
        let mut count = sqlx::query_as::<_, (i64,)>(&count_sql);
        for queue in &filter.queues {
            count = count.bind(queue.clone());
        }
        if let Some(kind) = &filter.message_type {
            count = count.bind(kind.clone());
        }
        let (total,) = count.fetch_one(self.db.pool()).await?;

        let mut sql = format!("SELECT {COLUMNS} FROM messaging_dead_letters{clause}");
        let mut n = used;
        if page.after.is_some() {
            n += 1;
            sql += &format!(" AND id > ${n}");
        }
        sql += &format!(" ORDER BY id LIMIT ${}", n + 1);
        let mut query = sqlx::query_as::<_, DeadLetterRow>(&sql);
        for queue in &filter.queues {
            query = query.bind(queue.clone());
        }
        if let Some(kind) = &filter.message_type {
            query = query.bind(kind.clone());
        }
        if let Some(after) = &page.after {
            query = query.bind(after.clone());
        }
        let mut rows = query
            .bind(page.fetch_limit())
            .fetch_all(self.db.pool())
            .await?;
        let token = page.finish(&mut rows, |r| &r.id);
        Ok((rows, token, total.max(0) as u64))
    }

    pub async fn get(&self, id: &str) -> Result<Option<DeadLetterRow>, MessagingError> {
        Ok(sqlx::query_as::<_, DeadLetterRow>(&format!(
            "SELECT {COLUMNS} FROM messaging_dead_letters WHERE id = $1"
        ))
        .bind(id)
        .fetch_optional(self.db.pool())
        .await?)
    }

    /// The given ids that are in `queue`.
    pub async fn by_ids(
        &self,
        queue: &str,
        ids: &[String],
    ) -> Result<Vec<DeadLetterRow>, MessagingError> {
        let mut rows = Vec::new();
        for chunk in ids.chunks(500) {
            let list: Vec<String> = (2..chunk.len() + 2).map(|i| format!("${i}")).collect();
            let sql = format!(
                "SELECT {COLUMNS} FROM messaging_dead_letters WHERE queue = $1 AND id IN ({}) ORDER BY id",
                list.join(", ")
            );
            let mut query = sqlx::query_as::<_, DeadLetterRow>(&sql).bind(queue.to_string());
            for id in chunk {
                query = query.bind(id.clone());
            }
            rows.extend(query.fetch_all(self.db.pool()).await?);
        }
        Ok(rows)
    }

    /// Up to `limit` dead letters of `queue` after `after`, oldest first.
    pub async fn batch(
        &self,
        queue: &str,
        after: Option<&str>,
        limit: i64,
    ) -> Result<Vec<DeadLetterRow>, MessagingError> {
        Ok(sqlx::query_as::<_, DeadLetterRow>(&format!(
            "SELECT {COLUMNS} FROM messaging_dead_letters WHERE queue = $1 AND id > $2 \
             ORDER BY id LIMIT $3"
        ))
        .bind(queue)
        .bind(after.unwrap_or(""))
        .bind(limit)
        .fetch_all(self.db.pool())
        .await?)
    }

    /// Deletes the given ids of `queue`; returns how many were there.
    pub async fn delete(&self, queue: &str, ids: &[String]) -> Result<u64, MessagingError> {
        let mut deleted = 0;
        for chunk in ids.chunks(500) {
            let list: Vec<String> = (2..chunk.len() + 2).map(|i| format!("${i}")).collect();
            let sql = format!(
                "DELETE FROM messaging_dead_letters WHERE queue = $1 AND id IN ({})",
                list.join(", ")
            );
            let mut query = sqlx::query(&sql).bind(queue.to_string());
            for id in chunk {
                query = query.bind(id.clone());
            }
            deleted += query.execute(self.db.pool()).await?.rows_affected();
        }
        Ok(deleted)
    }

    pub async fn delete_all(&self, queue: &str) -> Result<u64, MessagingError> {
        Ok(
            sqlx::query("DELETE FROM messaging_dead_letters WHERE queue = $1")
                .bind(queue)
                .execute(self.db.pool())
                .await?
                .rows_affected(),
        )
    }
}
