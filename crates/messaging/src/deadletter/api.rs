//! `opsconductor.deadletters.v1.DeadLetterService`, served by every service beside the queues it
//! consumes: list, inspect, replay and purge that service's dead letters.

use std::collections::BTreeSet;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use opsconductor_api::deadletters::v1::dead_letter_service_server::DeadLetterService;
use opsconductor_api::deadletters::v1::*;
use opsconductor_platform::page::Page;
use opsconductor_platform::principal::Principal;
use opsconductor_platform::time::now_micros;
use opsconductor_platform::validate::Violations;
use opsconductor_platform::{ApiError, ApiResult};
use prost::Message;
use sha2::{Digest, Sha256};
use tonic::{Request, Response, Status};

use super::json::body_json;
use super::store::{DeadLetterRow, DeadLetterStore, Filter};
use crate::broker::Broker;
use crate::message::{headers, OutgoingMessage, TraceContext};

/// At most this many ids per replay or purge call.
const MAX_IDS: usize = 1000;

pub struct DeadLetterApi {
    pub(crate) store: DeadLetterStore,
    pub(crate) broker: Broker,
    /// The dead-letter queues this service keeps.
    pub(crate) queues: Vec<String>,
}

impl DeadLetterApi {
    fn check_queue(&self, v: &mut Violations, field: &str, queue: &str, required: bool) {
        if queue.is_empty() {
            v.check(!required, field, "is required");
        } else if !self.queues.iter().any(|q| q == queue) {
            v.add(
                field,
                format!(
                    "is not a dead-letter queue of this service; it keeps: {}",
                    self.queues.join(", ")
                ),
            );
        }
    }

    fn check_selection(&self, v: &mut Violations, ids: &[String], all: bool) {
        v.check(
            all == ids.is_empty(),
            "ids",
            "give either ids or all, not both and not neither",
        );
        v.check(
            ids.len() <= MAX_IDS,
            "ids",
            format!("at most {MAX_IDS} ids per call"),
        );
        for (i, id) in ids.iter().enumerate().take(MAX_IDS) {
            v.id(&format!("ids[{i}]"), id);
        }
    }

    /// Publishes dead letters back to their queues; deletes each once the broker holds it.
    /// Returns how many went back, or the error that stopped it.
    async fn replay(&self, queue: &str, rows: &[DeadLetterRow]) -> ApiResult<u32> {
        let messages: Vec<OutgoingMessage> = rows.iter().map(replayed).collect();
        let results = self.broker.forwarder().publish_all(&messages).await;
        let mut sent = Vec::new();
        let mut first_error = None;
        for (row, result) in rows.iter().zip(results) {
            match result {
                Ok(()) => sent.push(row.id.clone()),
                Err(error) => {
                    first_error.get_or_insert(error);
                }
            }
        }
        self.store.delete(queue, &sent).await?;
        match first_error {
            None => Ok(sent.len() as u32),
            Some(error) => Err(ApiError::Unavailable {
                message: format!(
                    "{} of {} dead letters were replayed; the rest could not be published: {error}",
                    sent.len(),
                    rows.len()
                ),
                retry_after: std::time::Duration::from_secs(1),
            }),
        }
    }

    async fn replay_request(
        &self,
        caller: &str,
        req: ReplayDeadLettersRequest,
    ) -> ApiResult<ReplayDeadLettersResponse> {
        let mut v = Violations::new();
        self.check_queue(&mut v, "queue", &req.queue, true);
        self.check_selection(&mut v, &req.ids, req.all);
        v.required_max("idempotency_key", &req.idempotency_key, 128);
        v.printable("idempotency_key", &req.idempotency_key);
        v.finish()?;

        let hash = request_hash(&req);
        if let Some(stored) = self.remembered(caller, &req.idempotency_key, &hash).await? {
            return Ok(stored);
        }
        let mut replayed = 0u32;
        let mut missing_ids = Vec::new();
        if req.all {
            let mut after: Option<String> = None;
            loop {
                let rows = self.store.batch(&req.queue, after.as_deref(), 500).await?;
                let Some(last) = rows.last() else { break };
                after = Some(last.id.clone());
                replayed += self.replay(&req.queue, &rows).await?;
            }
        } else {
            let mut ids: Vec<String> = req.ids.clone();
            ids.sort();
            ids.dedup();
            let rows = self.store.by_ids(&req.queue, &ids).await?;
            let found: BTreeSet<&str> = rows.iter().map(|r| r.id.as_str()).collect();
            missing_ids = ids
                .iter()
                .filter(|id| !found.contains(id.as_str()))
                .cloned()
                .collect();
            replayed = self.replay(&req.queue, &rows).await?;
        }
        let response = ReplayDeadLettersResponse {
            replayed_count: replayed,
            missing_ids,
        };
        self.remember(caller, &req.idempotency_key, &hash, &response)
            .await?;
        tracing::info!(queue = %req.queue, replayed, "dead letters replayed");
        Ok(response)
    }

    /// The stored response of an earlier call with this key.
    async fn remembered(
        &self,
        caller: &str,
        key: &str,
        hash: &str,
    ) -> ApiResult<Option<ReplayDeadLettersResponse>> {
        let row: Option<(String, Vec<u8>)> = sqlx::query_as(
            "SELECT request_hash, response FROM messaging_replays WHERE caller = $1 AND idempotency_key = $2",
        )
        .bind(caller)
        .bind(key)
        .fetch_optional(self.store.db().pool())
        .await?;
        match row {
            None => Ok(None),
            Some((stored_hash, _)) if stored_hash != hash => Err(ApiError::FailedPrecondition {
                reason: "IDEMPOTENCY_KEY_REUSED",
                message: "this idempotency_key was used with a different request".into(),
            }),
            Some((_, response)) => ReplayDeadLettersResponse::decode(response.as_slice())
                .map(Some)
                .map_err(ApiError::internal),
        }
    }

    async fn remember(
        &self,
        caller: &str,
        key: &str,
        hash: &str,
        response: &ReplayDeadLettersResponse,
    ) -> ApiResult<()> {
        sqlx::query(
            "INSERT INTO messaging_replays (caller, idempotency_key, request_hash, response, create_time) \
             VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING",
        )
        .bind(caller)
        .bind(key)
        .bind(hash)
        .bind(response.encode_to_vec())
        .bind(now_micros())
        .execute(self.store.db().pool())
        .await?;
        Ok(())
    }
}

fn request_hash(req: &ReplayDeadLettersRequest) -> String {
    let mut ids = req.ids.clone();
    ids.sort();
    let mut hasher = Sha256::new();
    hasher.update(req.queue.as_bytes());
    hasher.update([0, u8::from(req.all)]);
    for id in ids {
        hasher.update(id.as_bytes());
        hasher.update([0]);
    }
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(hasher.finalize())
}

/// A dead letter as it goes back: same id, type, body and trace; attempt count reset and its
/// failure history left behind (the dead letter's id travels along for the record).
fn replayed(row: &DeadLetterRow) -> OutgoingMessage {
    let mut carried = row.headers();
    let trace = carried.get(headers::TRACEPARENT).and_then(|tp| {
        TraceContext::parse(tp, carried.get(headers::TRACESTATE).map(String::as_str))
    });
    for header in [
        headers::ATTEMPT,
        headers::LAST_ERROR,
        headers::FIRST_FAILURE_TIME,
        headers::DEAD_LETTER_ID,
        headers::DEAD_LETTER_TIME,
        headers::ORIGINAL_QUEUE,
        headers::X_DEATH,
        headers::TRACEPARENT,
        headers::TRACESTATE,
        "x-delivery-count",
        "x-first-death-exchange",
        "x-first-death-queue",
        "x-first-death-reason",
        "x-last-death-exchange",
        "x-last-death-queue",
        "x-last-death-reason",
    ] {
        carried.remove(header);
    }
    carried.insert("x-replayed-dead-letter-id".into(), row.id.clone());
    OutgoingMessage {
        exchange: String::new(),
        routing_key: row.original_queue.clone(),
        message_type: row.message_type.clone(),
        message_id: row.message_id.clone(),
        correlation_id: (!row.correlation_id.is_empty()).then(|| row.correlation_id.clone()),
        body: row.body.clone(),
        timestamp: opsconductor_platform::time::now_secs(),
        trace,
        attempt: 1,
        headers: carried,
        mandatory: true,
    }
}

fn caller<T>(request: &Request<T>) -> String {
    Principal::from_request(request)
        .map(|p| p.subject().to_string())
        .unwrap_or_else(|| "anonymous".to_string())
}

#[tonic::async_trait]
impl DeadLetterService for DeadLetterApi {
    async fn list_dead_letters(
        &self,
        request: Request<ListDeadLettersRequest>,
    ) -> Result<Response<ListDeadLettersResponse>, Status> {
        let req = request.into_inner();
        let mut v = Violations::new();
        let page = Page::parse(req.page_size, &req.page_token, &mut v);
        self.check_queue(&mut v, "queue", &req.queue, false);
        v.max_chars("message_type", &req.message_type, 255);
        v.finish()?;
        let filter = Filter {
            queues: if req.queue.is_empty() {
                self.queues.clone()
            } else {
                vec![req.queue]
            },
            message_type: (!req.message_type.is_empty()).then_some(req.message_type),
        };
        let (rows, next_page_token, total_count) = self
            .store
            .list(&filter, &page)
            .await
            .map_err(ApiError::from)?;
        Ok(Response::new(ListDeadLettersResponse {
            dead_letters: rows.iter().map(DeadLetterRow::summary).collect(),
            next_page_token,
            total_count,
        }))
    }

    async fn get_dead_letter(
        &self,
        request: Request<GetDeadLetterRequest>,
    ) -> Result<Response<GetDeadLetterResponse>, Status> {
        let req = request.into_inner();
        let mut v = Violations::new();
        v.id("id", &req.id);
        v.finish()?;
        let row = self
            .store
            .get(&req.id)
            .await
            .map_err(ApiError::from)?
            .filter(|row| self.queues.contains(&row.queue))
            .ok_or_else(|| ApiError::NotFound {
                kind: "dead_letter",
                id: req.id.clone(),
            })?;
        let mut dead_letter = row.summary();
        match body_json(&row.message_type, &row.body) {
            Some(json) => dead_letter.body_json = json,
            None => dead_letter.body_base64 = STANDARD.encode(&row.body),
        }
        dead_letter.headers = row.headers().into_iter().collect();
        Ok(Response::new(GetDeadLetterResponse {
            dead_letter: Some(dead_letter),
        }))
    }

    async fn replay_dead_letters(
        &self,
        request: Request<ReplayDeadLettersRequest>,
    ) -> Result<Response<ReplayDeadLettersResponse>, Status> {
        let caller = caller(&request);
        Ok(Response::new(
            self.replay_request(&caller, request.into_inner()).await?,
        ))
    }

    async fn purge_dead_letters(
        &self,
        request: Request<PurgeDeadLettersRequest>,
    ) -> Result<Response<PurgeDeadLettersResponse>, Status> {
        let req = request.into_inner();
        let mut v = Violations::new();
        self.check_queue(&mut v, "queue", &req.queue, true);
        self.check_selection(&mut v, &req.ids, req.all);
        v.finish()?;
        let purged = if req.all {
            self.store.delete_all(&req.queue).await
        } else {
            self.store.delete(&req.queue, &req.ids).await
        }
        .map_err(ApiError::from)?;
        tracing::info!(queue = %req.queue, purged, "dead letters purged");
        Ok(Response::new(PurgeDeadLettersResponse {
            purged_count: purged.min(u64::from(u32::MAX)) as u32,
        }))
    }
}
