//! What the workers count for `/metrics`: attempts by channel and outcome.

use opsconductor_api::common::v1::NotificationChannel;
use opsconductor_api::notification::v1::DeliveryState;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AttemptLabels {
    channel: &'static str,
    /// What the attempt left the delivery in: delivered, retrying, failed, dead_lettered.
    outcome: &'static str,
}

#[derive(Clone, Default)]
pub struct DeliveryCounters {
    attempts: Family<AttemptLabels, Counter>,
}

impl DeliveryCounters {
    pub fn register(registry: &opsconductor_metrics::Registry) -> DeliveryCounters {
        let counters = DeliveryCounters::default();
        registry.register(
            "opsconductor_notification_attempts",
            "Delivery attempts, by channel and the state they left the delivery in.",
            counters.attempts.clone(),
        );
        counters
    }

    pub fn attempt(&self, channel: i64, state: DeliveryState) {
        let channel = match i32::try_from(channel)
            .ok()
            .map(NotificationChannel::try_from)
        {
            Some(Ok(NotificationChannel::Email)) => "email",
            Some(Ok(NotificationChannel::Slack)) => "slack",
            Some(Ok(NotificationChannel::Teams)) => "teams",
            Some(Ok(NotificationChannel::Webhook)) => "webhook",
            _ => "unknown",
        };
        let outcome = match state {
            DeliveryState::Delivered => "delivered",
            DeliveryState::Pending => "retrying",
            DeliveryState::DeadLettered => "dead_lettered",
            _ => "failed",
        };
        self.attempts
            .get_or_create(&AttemptLabels { channel, outcome })
            .inc();
    }
}
