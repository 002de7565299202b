//! A service's registry and a collector for counters kept elsewhere as plain atomics.

use std::fmt::Write as _;
use std::sync::{Arc, Mutex, PoisonError};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::TypedMetric;

/// What one service exposes at `/metrics`. Cheap to clone: clones share the registry.
#[derive(Clone, Default)]
pub struct Registry {
    inner: Arc<Mutex<prometheus_client::registry::Registry>>,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Registry")
    }
}

impl Registry {
    pub fn new() -> Registry {
        Registry::default()
    }

    /// Registers `metric` under `name` (a counter's `_total` is added when rendered) with
    /// `help`, a sentence.
    pub fn register(
        &self,
        name: &str,
        help: &str,
        metric: impl prometheus_client::registry::Metric,
    ) {
        // The library ends every help text with a period of its own.
        self.lock()
            .register(name, help.trim_end_matches('.'), metric);
    }

    /// Registers what `collector` reports on every scrape.
    pub fn register_collector(&self, collector: impl Collector) {
        self.lock().register_collector(Box::new(collector));
    }

    /// The OpenMetrics text exposition of everything registered.
    pub fn render(&self) -> String {
        let mut out = String::new();
        if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &self.lock()) {
            tracing::warn!(error = %e, "metrics could not be rendered");
            out.clear();
            let _ = writeln!(out, "# EOF");
        }
        out
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, prometheus_client::registry::Registry> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Values read on every scrape from counters or gauges another crate keeps (the messaging
/// crate's atomics, a token cache's hits): each entry is a name, its help, whether it is a
/// gauge, and how to read it.
pub struct CounterSet {
    entries: Vec<Entry>,
}

struct Entry {
    name: &'static str,
    help: &'static str,
    gauge: bool,
    read: Box<dyn Fn() -> u64 + Send + Sync>,
}

impl std::fmt::Debug for CounterSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<&str> = self.entries.iter().map(|e| e.name).collect();
        f.debug_struct("CounterSet").field("names", &names).finish()
    }
}

impl Default for CounterSet {
    fn default() -> Self {
        Self::new()
    }
}

impl CounterSet {
    pub fn new() -> CounterSet {
        CounterSet {
            entries: Vec::new(),
        }
    }

    /// A monotonic counter (rendered with `_total`).
    pub fn counter(
        self,
        name: &'static str,
        help: &'static str,
        read: impl Fn() -> u64 + Send + Sync + 'static,
    ) -> CounterSet {
        self.with(name, help, false, read)
    }

    /// A value that goes up and down.
    pub fn gauge(
        self,
        name: &'static str,
        help: &'static str,
        read: impl Fn() -> u64 + Send + Sync + 'static,
    ) -> CounterSet {
        self.with(name, help, true, read)
    }

    fn with(
        mut self,
        name: &'static str,
        help: &'static str,
        gauge: bool,
        read: impl Fn() -> u64 + Send + Sync + 'static,
    ) -> CounterSet {
        self.entries.push(Entry {
            name,
            help,
            gauge,
            read: Box::new(read),
        });
        self
    }
}

impl Collector for CounterSet {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        for entry in &self.entries {
            let value = (entry.read)();
            if entry.gauge {
                let gauge = ConstGauge::new(value.min(i64::MAX as u64) as i64);
                let metric = encoder.encode_descriptor(
                    entry.name,
                    entry.help,
                    None,
                    ConstGauge::<i64>::TYPE,
                )?;
                gauge.encode(metric)?;
            } else {
                let counter = ConstCounter::new(value);
                let metric = encoder.encode_descriptor(
                    entry.name,
                    entry.help,
                    None,
                    ConstCounter::<u64>::TYPE,
                )?;
                counter.encode(metric)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU64, Ordering};

    #[test]
    fn counters_kept_elsewhere_are_read_at_each_scrape() {
        let registry = Registry::new();
        let hits = Arc::new(AtomicU64::new(2));
        let read = hits.clone();
        registry.register_collector(
            CounterSet::new()
                .counter("cache_hits", "Hits.", move || read.load(Ordering::Relaxed))
                .gauge("depth", "Depth.", || 7),
        );
        assert!(registry.render().contains("cache_hits_total 2\n"));
        hits.store(5, Ordering::Relaxed);
        let text = registry.render();
        assert!(text.contains("cache_hits_total 5\n"), "{text}");
        assert!(text.contains("# TYPE depth gauge\ndepth 7\n"), "{text}");
        assert!(text.ends_with("# EOF\n"));
    }
}
