//! Counters of what a service's messaging did, for logs, tests and the Prometheus endpoint.

use std::sync::atomic::{AtomicU64, Ordering};

macro_rules! counters {
    ($($name:ident: $help:literal,)*) => {
        /// Monotonic counters, shared by a broker's publishers and consumers.
        #[derive(Debug, Default)]
        pub struct Metrics {
            $(pub(crate) $name: AtomicU64,)*
        }

        /// A copy of the counters at one moment.
        #[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
        pub struct MetricsSnapshot {
            $(#[doc = $help] pub $name: u64,)*
        }

        impl Metrics {
            pub fn snapshot(&self) -> MetricsSnapshot {
                MetricsSnapshot { $($name: self.$name.load(Ordering::Relaxed),)* }
            }
        }

        impl MetricsSnapshot {
            /// Every counter as `opsconductor_messaging_<name>_total`, read from `read` at
            /// each scrape.
            pub(crate) fn counter_set(
                read: std::sync::Arc<dyn Fn() -> MetricsSnapshot + Send + Sync>,
            ) -> opsconductor_metrics::CounterSet {
                let set = opsconductor_metrics::CounterSet::new();
                $(
                    let r = read.clone();
                    let set = set.counter(
                        concat!("opsconductor_messaging_", stringify!($name)),
                        $help,
                        move || r().$name,
                    );
                )*
                set
            }
        }
    };
}

counters! {
    published: "Messages handed to the broker.",
    confirmed: "Publishes the broker confirmed.",
    returned: "Publishes the broker returned as unroutable.",
    nacked: "Publishes the broker refused.",
    consumed: "Deliveries received by consumers.",
    acked: "Deliveries acknowledged after their handler succeeded or they were moved on.",
    retried: "Deliveries sent to a delay queue for another attempt.",
    dead_lettered: "Deliveries moved to a dead-letter queue.",
    redelivered: "Deliveries the broker marked as redelivered.",
    duplicates: "Deliveries an inbox recognised as already processed.",
    signatures_refused: "Deliveries refused for a missing or bad signature.",
    forgeries_refused: "Deliveries refused because they do not prove a producer their queue accepts.",
    connections: "Connections established (the first one included).",
}

impl Metrics {
    pub(crate) fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    /// Counts a duplicate an inbox skipped (handlers call this through [`crate::Inbox`]).
    pub fn duplicate(&self) {
        Metrics::add(&self.duplicates, 1);
    }
}
