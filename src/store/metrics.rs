//! The store's own metrics, registered by `StoreAdmin::register_metrics`.

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
    /// Syncs of applied groups (each one flush and one fdatasync, covering
    /// every group waiting for it).
    pub group_commits: Counter,
    /// fdatasync calls on the database file.
    pub fsyncs: Counter,
    /// Append requests per group commit.
    pub group_size: Histogram,
    /// Events per accepted append request.
    pub batch_size: Histogram,
    /// Seconds in sled's flush (writes and sync_file_range), per group commit.
    pub flush_seconds: Histogram,
    /// Seconds the writer spends per group staging it (checks, sealing,
    /// encoding) and applying it to sled: its CPU, beside the syncer's wait
    /// on the disk (`flush_seconds`, `fsync_seconds`).
    pub apply_seconds: Histogram,
    /// Seconds in the fsync of the database file, per group commit.
    pub fsync_seconds: Histogram,
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
            flush_seconds: Histogram::new(exponential_buckets(0.00005, 2.0, 16)),
            apply_seconds: Histogram::new(exponential_buckets(0.00005, 2.0, 16)),
            fsync_seconds: Histogram::new(exponential_buckets(0.00005, 2.0, 16)),
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
            "Syncs of applied groups, each one flush and one fdatasync (one can cover several groups)",
            self.group_commits.clone(),
        );
        registry.register(
            "fsyncs",
            "fdatasync calls on the database file",
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
            "flush_seconds",
            "Seconds per sync in sled's flush (writes and sync_file_range)",
            self.flush_seconds.clone(),
        );
        registry.register(
            "apply_seconds",
            "Seconds per group in the writer: staging it and applying it to sled",
            self.apply_seconds.clone(),
        );
        registry.register(
            "fsync_seconds",
            "Seconds per sync in the fdatasync of the database file",
            self.fsync_seconds.clone(),
        );
        registry.register(
            "head_seq",
            "The seq of the last committed event",
            self.head_seq.clone(),
        );
    }
}
