//! The generated `AuditService` trait, implemented over [`AuditStore`]. Each trait method only
//! unwraps the request and wraps the answer; the inherent method of the same name does the work.

use std::pin::Pin;
use std::sync::Arc;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use futures::Stream;
use opsconductor_api::audit::v1::audit_service_server::AuditService;
use opsconductor_api::audit::v1::*;
use opsconductor_platform::page::{DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE};
use opsconductor_platform::time::to_micros;
use opsconductor_platform::validate::Violations;
use opsconductor_tokens::{KeySet, SigningKey};
use tonic::{Request, Response, Status};

use crate::chain::Verifier;
use crate::store::{AuditStore, EventFilter};
use crate::AuditError;

type Result<T> = std::result::Result<T, AuditError>;

/// Events read from the database at a time, when verifying or exporting.
const CHUNK: i64 = 1000;

pub struct AuditApi {
    pub(crate) store: AuditStore,
    pub(crate) key: Arc<SigningKey>,
}

/// A page token: the sequence the next page starts below (listing) or after (checkpoints).
fn encode_token(sequence: u64) -> String {
    URL_SAFE_NO_PAD.encode(format!("s1:{sequence}"))
}

fn decode_token(token: &str) -> Option<u64> {
    let bytes = URL_SAFE_NO_PAD.decode(token).ok()?;
    String::from_utf8(bytes)
        .ok()?
        .strip_prefix("s1:")?
        .parse()
        .ok()
}

fn page(v: &mut Violations, size: i32, token: &str) -> (i64, Option<u64>) {
    let size = match size {
        0 => DEFAULT_PAGE_SIZE,
        n if n < 0 => {
            v.add("page_size", "must not be negative");
            DEFAULT_PAGE_SIZE
        }
        n => i64::from(n).min(MAX_PAGE_SIZE),
    };
    let after = if token.is_empty() {
        None
    } else {
        let decoded = decode_token(token);
        if decoded.is_none() {
            v.add("page_token", "is not a token returned by this method");
        }
        decoded
    };
    (size, after)
}

fn text_filter(v: &mut Violations, field: &str, value: String) -> Option<String> {
    v.max_chars(field, &value, 256);
    v.printable(field, &value);
    (!value.is_empty()).then_some(value)
}

fn time(v: &mut Violations, field: &str, value: Option<prost_types::Timestamp>) -> Option<i64> {
    let t = value?;
    if !(0..1_000_000_000).contains(&t.nanos) {
        v.add(field, "is not a valid timestamp");
        return None;
    }
    Some(to_micros(&t))
}

impl AuditApi {
    fn keys(&self) -> KeySet {
        KeySet::from_keys([self.key.public()])
    }

    async fn list(&self, req: ListAuditEventsRequest) -> Result<ListAuditEventsResponse> {
        let mut v = Violations::new();
        let (size, before) = page(&mut v, req.page_size, &req.page_token);
        let outcome = match AuditOutcome::try_from(req.outcome) {
            Ok(AuditOutcome::Unspecified) => None,
            Ok(outcome) => Some(outcome as i32),
            Err(_) => {
                v.add("outcome", format!("{} is not an outcome", req.outcome));
                None
            }
        };
        let filter = EventFilter {
            actor_user_id: text_filter(&mut v, "actor_user_id", req.actor_user_id),
            actor_service_id: text_filter(&mut v, "actor_service_id", req.actor_service_id),
            action: text_filter(&mut v, "action", req.action),
            action_prefix: text_filter(&mut v, "action_prefix", req.action_prefix),
            resource_type: text_filter(&mut v, "resource_type", req.resource_type),
            resource_id: text_filter(&mut v, "resource_id", req.resource_id),
            request_id: text_filter(&mut v, "request_id", req.request_id),
            outcome,
            start_micros: time(&mut v, "start_time", req.start_time),
            end_micros: time(&mut v, "end_time", req.end_time),
        };
        if let (Some(start), Some(end)) = (filter.start_micros, filter.end_micros) {
            v.check(end > start, "end_time", "must be after start_time");
        }
        v.finish()?;
        let mut events = self.store.list(&filter, before, size + 1).await?;
        let next_page_token = if events.len() as i64 > size {
            events.truncate(size as usize);
            events
                .last()
                .map(|e| encode_token(e.sequence))
                .unwrap_or_default()
        } else {
            String::new()
        };
        Ok(ListAuditEventsResponse {
            audit_events: events,
            next_page_token,
        })
    }

    async fn get(&self, req: GetAuditEventRequest) -> Result<AuditEvent> {
        let mut v = Violations::new();
        v.required_max("id", &req.id, 128);
        v.finish()?;
        self.store.get(&req.id).await
    }

    async fn verify(&self, req: VerifyAuditChainRequest) -> Result<VerifyAuditChainResponse> {
        let head = self.store.head().await?;
        let mut v = Violations::new();
        let first = head.pruned_sequence + 1;
        let start = req.start_sequence.max(first);
        let end = if req.end_sequence == 0 {
            head.sequence
        } else {
            req.end_sequence
        };
        v.check(
            req.end_sequence == 0 || req.end_sequence <= head.sequence,
            "end_sequence",
            format!("must be at most the latest sequence, {}", head.sequence),
        );
        v.check(
            req.end_sequence == 0 || req.end_sequence >= start,
            "end_sequence",
            "must not be before start_sequence",
        );
        v.finish()?;
        let keys = self.keys();
        let mut report = VerifyAuditChainResponse {
            ok: true,
            ..Default::default()
        };
        // Where the range hangs: the pruned start (a signed checkpoint), the beginning, or the
        // event before it.
        let (anchor_sequence, anchor_hash) = if start == first {
            (head.pruned_sequence, head.pruned_hash.clone())
        } else {
            let before = self.store.range(start - 1, start - 1, 1).await?;
            match before.into_iter().next() {
                Some(event) => (event.sequence, event.hash),
                None => {
                    report.ok = false;
                    report.first_broken_sequence = start - 1;
                    report.error = format!("event {} is missing", start - 1);
                    return Ok(report);
                }
            }
        };
        report.anchor_sequence = if start == first {
            head.pruned_sequence
        } else {
            0
        };
        let mut verifier = Verifier::new(&keys, anchor_sequence, &anchor_hash);
        if start == first && head.pruned_sequence > 0 {
            let anchor = self
                .store
                .checkpoints(head.pruned_sequence, head.pruned_sequence, 1)
                .await?;
            let checked = match anchor.first() {
                Some(checkpoint) => verifier.checkpoint(checkpoint),
                None => Err(crate::chain::Broken {
                    sequence: head.pruned_sequence,
                    error: "the checkpoint the chain starts from is missing".into(),
                }),
            };
            if let Err(broken) = checked {
                report.ok = false;
                report.first_broken_sequence = broken.sequence;
                report.error = broken.error;
                return Ok(report);
            }
        }
        let mut next = start;
        while next <= end {
            let events = self.store.range(next, end, CHUNK).await?;
            let last = events.last().map(|e| e.sequence).unwrap_or(end);
            let checkpoints = self.store.checkpoints(next, last, CHUNK).await?;
            let mut signed = checkpoints.iter().peekable();
            if events.is_empty() {
                let (sequence, _) = verifier.head();
                report.ok = false;
                report.first_broken_sequence = sequence + 1;
                report.error = format!("event {} is missing", sequence + 1);
                break;
            }
            let mut broken = None;
            for event in &events {
                if let Err(b) = verifier.event(event) {
                    broken = Some(b);
                    break;
                }
                while let Some(checkpoint) = signed.next_if(|c| c.sequence <= event.sequence) {
                    if let Err(b) = verifier.checkpoint(checkpoint) {
                        broken = Some(b);
                        break;
                    }
                }
                if broken.is_some() {
                    break;
                }
            }
            if let Some(b) = broken {
                report.ok = false;
                report.first_broken_sequence = b.sequence;
                report.error = b.error;
                break;
            }
            next = last + 1;
        }
        let (sequence, hash) = verifier.head();
        report.checked_count = verifier.checked;
        report.checkpoints_checked = verifier.checkpoints;
        report.head_sequence = sequence;
        report.head_hash = hash.to_vec();
        if report.ok && sequence < end {
            report.ok = false;
            report.first_broken_sequence = sequence + 1;
            report.error = format!("event {} is missing", sequence + 1);
        }
        Ok(report)
    }

    async fn export(
        &self,
        req: ExportAuditEventsRequest,
    ) -> Result<tokio::sync::mpsc::Receiver<std::result::Result<ExportAuditEventsResponse, Status>>>
    {
        let head = self.store.head().await?;
        let start = req.start_sequence.max(head.pruned_sequence + 1);
        let end = if req.end_sequence == 0 {
            head.sequence
        } else {
            req.end_sequence.min(head.sequence)
        };
        let (tx, rx) = tokio::sync::mpsc::channel(CHUNK as usize);
        let store = self.store.clone();
        tokio::spawn(async move {
            let mut next = start;
            while next <= end {
                let events = match store.range(next, end, CHUNK).await {
                    Ok(events) => events,
                    Err(error) => {
                        let _ = tx.send(Err(Status::from(error))).await;
                        return;
                    }
                };
                let Some(last) = events.last().map(|e| e.sequence) else {
                    return;
                };
                for event in events {
                    let message = ExportAuditEventsResponse {
                        audit_event: Some(event),
                    };
                    if tx.send(Ok(message)).await.is_err() {
                        return; // the client went away
                    }
                }
                next = last + 1;
            }
        });
        Ok(rx)
    }

    async fn checkpoints(
        &self,
        req: ListAuditCheckpointsRequest,
    ) -> Result<ListAuditCheckpointsResponse> {
        let mut v = Violations::new();
        let (size, after) = page(&mut v, req.page_size, &req.page_token);
        v.finish()?;
        let start = after.map(|s| s + 1).unwrap_or(0);
        let mut checkpoints = self.store.checkpoints(start, u64::MAX, size + 1).await?;
        let next_page_token = if checkpoints.len() as i64 > size {
            checkpoints.truncate(size as usize);
            checkpoints
                .last()
                .map(|c| encode_token(c.sequence))
                .unwrap_or_default()
        } else {
            String::new()
        };
        Ok(ListAuditCheckpointsResponse {
            checkpoints,
            next_page_token,
        })
    }

    fn jwks(&self) -> GetAuditKeysResponse {
        let jwk = self.key.public().to_jwk();
        GetAuditKeysResponse {
            keys: vec![AuditKey {
                kty: jwk.kty,
                crv: jwk.crv,
                x: jwk.x,
                kid: jwk.kid,
                alg: jwk.alg,
                r#use: jwk.use_,
            }],
        }
    }
}

type ExportStream =
    Pin<Box<dyn Stream<Item = std::result::Result<ExportAuditEventsResponse, Status>> + Send>>;

#[tonic::async_trait]
impl AuditService for AuditApi {
    async fn list_audit_events(
        &self,
        request: Request<ListAuditEventsRequest>,
    ) -> std::result::Result<Response<ListAuditEventsResponse>, Status> {
        Ok(Response::new(self.list(request.into_inner()).await?))
    }

    async fn get_audit_event(
        &self,
        request: Request<GetAuditEventRequest>,
    ) -> std::result::Result<Response<GetAuditEventResponse>, Status> {
        let event = self.get(request.into_inner()).await?;
        Ok(Response::new(GetAuditEventResponse {
            audit_event: Some(event),
        }))
    }

    async fn verify_audit_chain(
        &self,
        request: Request<VerifyAuditChainRequest>,
    ) -> std::result::Result<Response<VerifyAuditChainResponse>, Status> {
        Ok(Response::new(self.verify(request.into_inner()).await?))
    }

    type ExportAuditEventsStream = ExportStream;

    async fn export_audit_events(
        &self,
        request: Request<ExportAuditEventsRequest>,
    ) -> std::result::Result<Response<ExportStream>, Status> {
        let events = self.export(request.into_inner()).await?;
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(events),
        )))
    }

    async fn list_audit_checkpoints(
        &self,
        request: Request<ListAuditCheckpointsRequest>,
    ) -> std::result::Result<Response<ListAuditCheckpointsResponse>, Status> {
        Ok(Response::new(self.checkpoints(request.into_inner()).await?))
    }

    async fn get_audit_keys(
        &self,
        _request: Request<GetAuditKeysRequest>,
    ) -> std::result::Result<Response<GetAuditKeysResponse>, Status> {
        Ok(Response::new(self.jwks()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_tokens_round_trip_and_garbage_is_refused() {
        assert_eq!(decode_token(&encode_token(42)), Some(42));
        assert_eq!(decode_token("garbage"), None);
        let mut v = Violations::new();
        page(&mut v, -1, "nope");
        assert!(v.finish().is_err());
    }
}
