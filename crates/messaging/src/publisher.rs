//! Persistent, `mandatory`, confirmed publishing — pipelined: a batch is written to the channel
//! back to back, up to a window of unconfirmed messages, and the confirms are collected as they
//! arrive. One blocking wait per message would cap a publisher at the broker's round trip
//! (about 1.7k msg/s here, against about 18k pipelined).

use std::borrow::Borrow;

use futures::stream::FuturesUnordered;
use futures::StreamExt;
use lapin::options::BasicPublishOptions;
use lapin::{Confirmation, ErrorKind, PublisherConfirm};

use crate::broker::Broker;
use crate::error::PublishError;
use crate::message::{short, OutgoingMessage};
use crate::metrics::Metrics;

/// Publishes through the broker's shared confirm channel; cheap to clone.
#[derive(Clone)]
pub struct Publisher {
    broker: Broker,
}

impl Publisher {
    pub(crate) fn new(broker: Broker) -> Publisher {
        Publisher { broker }
    }

    pub fn broker(&self) -> &Broker {
        &self.broker
    }

    /// Publishes one message and waits for the broker to confirm it.
    pub async fn publish(&self, message: &OutgoingMessage) -> Result<(), PublishError> {
        self.publish_all(std::slice::from_ref(message))
            .await
            .pop()
            .unwrap_or_else(|| Err(PublishError::Broker("nothing was published".into())))
    }

    /// Publishes every message, pipelined, and returns one result per message, in order. On one
    /// channel the broker keeps publish order, so a prefix of the batch lands even if the
    /// connection fails half-way.
    pub async fn publish_all(&self, messages: &[OutgoingMessage]) -> Vec<Result<(), PublishError>> {
        self.publish_each(messages.iter()).await
    }

    /// Like [`Publisher::publish_all`], taking messages from an iterator only as the confirm
    /// window has room for them: a long stream is built as it is sent, not all up front.
    pub async fn publish_each<I, M>(&self, messages: I) -> Vec<Result<(), PublishError>>
    where
        I: IntoIterator<Item = M>,
        M: Borrow<OutgoingMessage>,
    {
        let mut messages = messages.into_iter().peekable();
        if messages.peek().is_none() {
            return Vec::new();
        }
        let config = self.broker.config();
        let timeout = config.publish_timeout;
        let Some(session) = self.broker.session(timeout).await else {
            let reason = self
                .broker
                .last_error()
                .unwrap_or_else(|| "not connected".into());
            let error = PublishError::Unavailable(reason);
            return messages.map(|_| Err(error.clone())).collect();
        };
        let channel = match session.publish_channel().await {
            Ok(channel) => channel,
            Err(error) => {
                let error = PublishError::Broker(error.to_string());
                return messages.map(|_| Err(error.clone())).collect();
            }
        };
        let metrics = self.broker.counters();
        let mut results: Vec<Option<Result<(), PublishError>>> = Vec::new();
        let mut in_flight = FuturesUnordered::new();
        for (index, message) in messages.enumerate() {
            results.push(None);
            while in_flight.len() >= config.confirm_window {
                if let Some((done, result)) = in_flight.next().await {
                    results[done] = Some(result);
                }
            }
            let message = message.borrow();
            if let Err(error) = check_names(message) {
                results[index] = Some(Err(error));
                continue;
            }
            let published = channel
                .basic_publish(
                    short(&message.exchange),
                    short(&message.routing_key),
                    BasicPublishOptions {
                        mandatory: message.mandatory,
                        ..BasicPublishOptions::default()
                    },
                    &message.body,
                    message.properties(&config.service, config.username()),
                )
                .await;
            Metrics::add(&metrics.published, 1);
            let route = (message.exchange.clone(), message.routing_key.clone());
            match published {
                Ok(confirm) => in_flight
                    .push(async move { (index, settle(confirm, route, timeout, metrics).await) }),
                Err(error) => results[index] = Some(Err(from_lapin(&error, &route.0))),
            }
        }
        while let Some((done, result)) = in_flight.next().await {
            results[done] = Some(result);
        }
        results
            .into_iter()
            .map(|r| r.unwrap_or_else(|| Err(PublishError::Broker("not attempted".into()))))
            .collect()
    }
}

fn check_names(message: &OutgoingMessage) -> Result<(), PublishError> {
    if message.exchange.len() > 255 || message.routing_key.len() > 255 {
        return Err(PublishError::Broker(
            "exchange names and routing keys are at most 255 bytes".into(),
        ));
    }
    Ok(())
}

/// Waits for a publish's confirm; `route` is its exchange and routing key, for errors.
async fn settle(
    confirm: PublisherConfirm,
    route: (String, String),
    timeout: std::time::Duration,
    metrics: &Metrics,
) -> Result<(), PublishError> {
    let confirmation = match tokio::time::timeout(timeout, confirm).await {
        Err(_) => return Err(PublishError::Timeout(timeout)),
        Ok(Err(error)) => return Err(from_lapin(&error, &route.0)),
        Ok(Ok(confirmation)) => confirmation,
    };
    match confirmation {
        Confirmation::Ack(None) | Confirmation::NotRequested => {
            Metrics::add(&metrics.confirmed, 1);
            Ok(())
        }
        Confirmation::Ack(Some(_returned)) => {
            Metrics::add(&metrics.returned, 1);
            Err(PublishError::Unroutable {
                exchange: route.0,
                routing_key: route.1,
            })
        }
        Confirmation::Nack(_) => {
            Metrics::add(&metrics.nacked, 1);
            Err(PublishError::Nacked)
        }
    }
}

fn from_lapin(error: &lapin::Error, exchange: &str) -> PublishError {
    match error.kind() {
        ErrorKind::ProtocolError(amqp) if amqp.get_id() == 404 => {
            PublishError::NoSuchExchange(exchange.to_string())
        }
        _ => PublishError::Broker(error.to_string()),
    }
}
