//! The store's own metrics (`StoreAdmin::metrics`), registered by the daemon.

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

/// Write-path metrics of a store.
#[derive(Clone, Debug)]
pub struct StoreMetrics {
    /// Events committed.
    pub events_appended: Counter,
    /// Append requests answered (including rejected and deduplicated ones).
    pub append_requests: Counter,
    /// Groups written (each one write and one fdatasync per segment it
    /// touches).
    pub group_commits: Counter,
    /// fdatasync calls on segment files for groups.
    pub fsyncs: Counter,
    /// Append requests per group commit.
    pub group_size: Histogram,
    /// Events per accepted append request.
    pub batch_size: Histogram,
    /// Seconds the writer spends per group staging it (checks, sealing,
    /// encoding into frames): its CPU, beside its wait on the disk
    /// (`write_seconds`).
    pub apply_seconds: Histogram,
    /// Seconds per group in the write and the fdatasync of its frames.
    pub write_seconds: Histogram,
    /// The last committed seq.
    pub head_seq: Gauge,
}

impl Default for StoreMetrics {
    fn default() -> Self {
        StoreMetrics {
            events_appended: Counter::default(),
            append_requests: Counter::default(),
            group_commits: Counter::default(),
            fsyncs: Counter::default(),
            group_size: Histogram::new(exponential_buckets(1.0, 2.0, 13)),
            batch_size: Histogram::new(exponential_buckets(1.0, 2.0, 12)),
            apply_seconds: Histogram::new(exponential_buckets(0.00005, 2.0, 16)),
            write_seconds: Histogram::new(exponential_buckets(0.00005, 2.0, 16)),
            head_seq: Gauge::default(),
        }
    }
}

impl StoreMetrics {
    /// Adds every metric to `registry` (whose prefix is `cairn`).
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "events_appended",
            "Events committed to the log",
            self.events_appended.clone(),
        );
        registry.register(
            "append_requests",
            "Append requests answered by the writer, accepted or not",
            self.append_requests.clone(),
        );
        registry.register(
            "group_commits",
            "Groups written, each with one write and one fdatasync per segment it touches",
            self.group_commits.clone(),
        );
        registry.register(
            "fsyncs",
            "fdatasync calls on segment files for groups",
            self.fsyncs.clone(),
        );
        registry.register(
            "group_commit_requests",
            "Append requests per group the writer applies",
            self.group_size.clone(),
        );
        registry.register(
            "append_batch_events",
            "Events per accepted append request",
            self.batch_size.clone(),
        );
        registry.register(
            "apply_seconds",
            "Seconds per group in the writer: checking, sealing and encoding it",
            self.apply_seconds.clone(),
        );
        registry.register(
            "write_seconds",
            "Seconds per group in the write and the fdatasync of its frames",
            self.write_seconds.clone(),
        );
        registry.register(
            "head_seq",
            "The seq of the last committed event",
            self.head_seq.clone(),
        );
    }
}
