//! The producer side of the audit trail: every change a service makes is described by an
//! `AuditEvent` staged in its outbox, in the transaction of the change.

use std::collections::HashMap;

use opsconductor_api::audit::v1::{AuditEvent, AuditOutcome};
use opsconductor_api::common::v1::Actor;
use opsconductor_platform::layers::REQUEST_ID_HEADER;
use opsconductor_platform::principal::Principal;
use sqlx::AnyConnection;

use crate::error::MessagingError;
use crate::message::{headers, OutgoingMessage, TraceContext};
use crate::outbox::Outbox;
use crate::topology::{platform, Names};

/// What caused a change: who asked, in which request, in which trace.
#[derive(Debug, Clone, Default)]
pub struct Cause {
    pub actor: Actor,
    pub request_id: String,
    pub trace: Option<TraceContext>,
}

impl Cause {
    /// From a gRPC request: its principal, `x-request-id` and W3C trace context.
    pub fn from_request<T>(request: &tonic::Request<T>) -> Cause {
        let metadata = request.metadata();
        let text = |key: &str| metadata.get(key).and_then(|v| v.to_str().ok());
        Cause {
            actor: Principal::from_request(request)
                .map(Principal::actor)
                .unwrap_or_default(),
            request_id: text(REQUEST_ID_HEADER).unwrap_or_default().to_string(),
            trace: text(headers::TRACEPARENT)
                .and_then(|tp| TraceContext::parse(tp, text(headers::TRACESTATE))),
        }
    }

    /// Done by the service itself (a consumer, a reaper), not on a request.
    pub fn service(service_id: &str) -> Cause {
        Cause {
            actor: Actor {
                user_id: String::new(),
                service_id: service_id.to_string(),
            },
            ..Cause::default()
        }
    }
}

/// Stages audit events of one service.
#[derive(Clone)]
pub struct AuditLog {
    outbox: Outbox,
    exchange: String,
    source: String,
}

impl AuditLog {
    pub fn new(outbox: &Outbox, names: &Names, source: &str) -> AuditLog {
        AuditLog {
            outbox: outbox.clone(),
            exchange: names.exchange(&platform::audit_exchange()),
            source: source.to_string(),
        }
    }

    /// Commits `tx` (which staged events) and wakes the relay.
    pub async fn commit(&self, tx: sqlx::Transaction<'_, sqlx::Any>) -> Result<(), sqlx::Error> {
        self.outbox.commit(tx).await
    }

    /// Stages `action` ("user.create") on a resource, successful, with `details` (never
    /// secrets). Returns the event's id.
    pub async fn record(
        &self,
        connection: &mut AnyConnection,
        cause: &Cause,
        action: &str,
        resource: (&str, &str),
        details: &[(&str, String)],
    ) -> Result<String, MessagingError> {
        self.record_outcome(
            connection,
            cause,
            action,
            resource,
            AuditOutcome::Success,
            details,
        )
        .await
    }

    pub async fn record_outcome(
        &self,
        connection: &mut AnyConnection,
        cause: &Cause,
        action: &str,
        (resource_type, resource_id): (&str, &str),
        outcome: AuditOutcome,
        details: &[(&str, String)],
    ) -> Result<String, MessagingError> {
        let event = AuditEvent {
            id: uuid::Uuid::now_v7().to_string(),
            actor: Some(cause.actor.clone()),
            action: action.to_string(),
            resource_type: resource_type.to_string(),
            resource_id: resource_id.to_string(),
            occur_time: Some(prost_types::Timestamp::from(std::time::SystemTime::now())),
            outcome: outcome as i32,
            details: details
                .iter()
                .map(|(k, v)| (k.to_string(), v.clone()))
                .collect::<HashMap<_, _>>(),
            request_id: cause.request_id.clone(),
            source: self.source.clone(),
            ..AuditEvent::default()
        };
        let mut message = OutgoingMessage::new(self.exchange.clone(), action, &event)
            .with_correlation_id(cause.request_id.clone());
        // The exported span when there is one; otherwise the caller's trace (or a new one), so
        // an audit event always names a trace to search logs by.
        if message.trace.is_none() {
            message.trace = Some(
                cause
                    .trace
                    .as_ref()
                    .map(TraceContext::child)
                    .unwrap_or_else(TraceContext::new_root),
            );
        }
        // The event's own id is the message id: a consumer deduplicates on either.
        message.message_id = event.id.clone();
        self.outbox.stage(connection, &message).await?;
        Ok(event.id)
    }
}
