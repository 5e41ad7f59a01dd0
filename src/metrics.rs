//! Prometheus metrics: the registry the daemon serves on `GET /metrics`.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use crate::store::metrics::StoreMetrics;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResponseLabels {
    pub code: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ActionLabels {
    /// `create` or `delete`.
    pub operation: &'static str,
    /// `succeeded` or `failed`; `resolved_succeeded` or `resolved_failed` for
    /// an action found in flight (after a restart) and settled by its token.
    pub outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DeliveryLabels {
    /// The receiver's name; `_unknown` (no DNS label, so no receiver's name)
    /// for a name no receiver has, so that made-up names cannot grow the
    /// label set.
    pub hook: String,
    /// `accepted`, `duplicate`, or why it was refused: `unauthorized`,
    /// `too_large`, `malformed`, `unknown_hook`, `conflict`, `failed`.
    pub result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DeliveryOutcomeLabels {
    pub hook: String,
    /// `done`, `ignored`, `partial` or `failed`.
    pub outcome: &'static str,
}

/// What the reconcilers report.
#[derive(Clone)]
pub struct ReconcileMetrics {
    pub actions: Family<ActionLabels, Counter>,
    pub pass_seconds: Histogram,
    pub queue_depth: Gauge,
    /// Head seq minus the last seq up to which every event's cluster has been
    /// through a pass that began after the event.
    pub lag_events: Gauge,
    pub drift_detected: Counter,
}

impl Default for ReconcileMetrics {
    fn default() -> Self {
        ReconcileMetrics {
            actions: Family::default(),
            pass_seconds: Histogram::new(exponential_buckets(0.001, 2.0, 16)),
            queue_depth: Gauge::default(),
            lag_events: Gauge::default(),
            drift_detected: Counter::default(),
        }
    }
}

pub struct Metrics {
    registry: Registry,
    /// HTTP responses by status code.
    pub http_responses: Family<ResponseLabels, Counter>,
    /// Applies that appended at least one event.
    pub applies_changed: Counter,
    /// `GET /v1/watch` streams open now.
    pub watch_streams: Gauge,
    pub reconcile: ReconcileMetrics,
    /// Webhook deliveries answered, by receiver and result.
    pub webhook_deliveries: Family<DeliveryLabels, Counter>,
    /// Webhook deliveries processed, by receiver and outcome.
    pub webhook_outcomes: Family<DeliveryOutcomeLabels, Counter>,
}

impl Metrics {
    pub fn new(store: &StoreMetrics) -> Metrics {
        let mut registry = Registry::with_prefix("cairn");
        store.register(&mut registry);
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
        let watch_streams = Gauge::default();
        registry.register(
            "watch_streams",
            "GET /v1/watch streams open now",
            watch_streams.clone(),
        );
        let reconcile = ReconcileMetrics::default();
        registry.register(
            "reconcile_actions",
            "Provider actions by operation and outcome",
            reconcile.actions.clone(),
        );
        registry.register(
            "reconcile_pass_seconds",
            "Seconds per reconcile pass of one cluster",
            reconcile.pass_seconds.clone(),
        );
        registry.register(
            "reconcile_queue_depth",
            "Clusters waiting for a reconcile worker",
            reconcile.queue_depth.clone(),
        );
        registry.register(
            "reconcile_lag_events",
            "Head seq minus the last seq whose cluster has been reconciled since",
            reconcile.lag_events.clone(),
        );
        registry.register(
            "reconcile_drift_detected",
            "DriftDetected events written",
            reconcile.drift_detected.clone(),
        );
        let webhook_deliveries = Family::<DeliveryLabels, Counter>::default();
        registry.register(
            "webhook_deliveries",
            "Webhook deliveries answered, by receiver and result (accepted, duplicate, or the reason for refusal)",
            webhook_deliveries.clone(),
        );
        let webhook_outcomes = Family::<DeliveryOutcomeLabels, Counter>::default();
        registry.register(
            "webhook_outcomes",
            "Webhook deliveries processed, by receiver and outcome",
            webhook_outcomes.clone(),
        );
        Metrics {
            registry,
            http_responses,
            applies_changed,
            watch_streams,
            reconcile,
            webhook_deliveries,
            webhook_outcomes,
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
