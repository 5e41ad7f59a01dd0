//! Prometheus metrics: the registry the daemon serves on `GET /metrics`.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;

use crate::store::sled_store::StoreMetrics;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResponseLabels {
    pub code: u16,
}

pub struct Metrics {
    registry: Registry,
    /// HTTP responses by status code.
    pub http_responses: Family<ResponseLabels, Counter>,
    /// Applies that appended at least one event.
    pub applies_changed: Counter,
}

impl Metrics {
    pub fn new(store: &StoreMetrics) -> Metrics {
        let mut registry = Registry::with_prefix("cairn");
        registry.register(
            "events_appended",
            "Events committed to the log",
            store.events_appended.clone(),
        );
        registry.register(
            "append_requests",
            "Append requests answered by the writer, accepted or not",
            store.append_requests.clone(),
        );
        registry.register(
            "group_commits",
            "Group commits, each one flush and one fsync",
            store.group_commits.clone(),
        );
        registry.register(
            "fsyncs",
            "fsync calls on the database file",
            store.fsyncs.clone(),
        );
        registry.register(
            "group_commit_requests",
            "Append requests per group commit",
            store.group_size.clone(),
        );
        registry.register(
            "append_batch_events",
            "Events per accepted append request",
            store.batch_size.clone(),
        );
        registry.register(
            "flush_seconds",
            "Seconds per group commit in sled's flush (writes and sync_file_range)",
            store.flush_seconds.clone(),
        );
        registry.register(
            "fsync_seconds",
            "Seconds per group commit in the fsync of the database file",
            store.fsync_seconds.clone(),
        );
        registry.register(
            "head_seq",
            "The seq of the last committed event",
            store.head_seq.clone(),
        );
        let http_responses = Family::<ResponseLabels, Counter>::default();
        registry.register(
            "http_responses",
            "HTTP responses by status code",
            http_responses.clone(),
        );
        let applies_changed = Counter::default();
        registry.register(
            "applies_changed",
            "Applies that appended at least one event",
            applies_changed.clone(),
        );
        Metrics {
            registry,
            http_responses,
            applies_changed,
        }
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &self.registry)
            .expect("writing to a String cannot fail");
        text
    }
}
