//! The wire format: the JSON shapes of the HTTP API's requests and
//! responses, in one place. The daemon's handlers (`api`) encode and decode
//! them, and so does the CLI, which depends on this module and never on
//! `api`. Separate from the stored types on purpose: the log's format and
//! the API's format evolve on their own schedules.
//!
//! The types here say what goes on the wire; how a handler fills one from
//! the ledger's answers may live beside the handler (`api::history`,
//! `api::hooks`).
//!
//! **Architecture Invariant:** this module knows no HTTP (no warp, no
//! handler), so the CLI decodes responses with the same types the daemon
//! encodes them with. Its serde attributes are the API's contract:
//! `schemas/event.schema.json` is generated from `EventView`.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::event::{payload, Actor, Cause, Event};
use crate::ledger::EventPage;
use crate::model::{
    describe_change, describe_lifecycle, ActionReport, Change, CloudResource, DeliveryOutcome,
    FieldError, Lifecycle, Manifest, ReconcileEvent, SkippedReport,
};
use crate::projection::{ClusterState, ObservedCluster};
use crate::store::VerifyReport;

// A line of a diff goes on the wire as the ledger computes it.
pub use crate::ledger::DiffEntry;

/// The envelope of an event, as the API shows it (`schemas/event.schema.json`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EventView {
    /// Global position in the log, gap-free from 1.
    pub seq: u64,
    /// The stream, e.g. `cluster/prod-eu`.
    pub stream: String,
    /// Position in the stream, from 1.
    pub version: u64,
    /// UUIDv7.
    pub id: Uuid,
    /// The payload type, e.g. `PoolScaled` (see docs/events.md).
    #[serde(rename = "type")]
    pub event_type: String,
    /// The payload's schema version.
    pub schema: u16,
    /// Commit time, UTC; never decreases along the log.
    pub time: DateTime<Utc>,
    pub actor: Actor,
    pub cause: Cause,
    /// One id across a whole causal chain.
    pub correlation: Uuid,
    /// The payload; null for a type this build does not know.
    pub data: serde_json::Value,
    /// Hex SHA-256 of the previous event (zeros for seq 1).
    pub prev_hash: String,
    /// Hex SHA-256 over prev_hash and this event's canonical bytes.
    pub hash: String,
}

impl EventView {
    pub fn from_event(event: &Event) -> EventView {
        EventView {
            seq: event.seq,
            stream: event.stream.clone(),
            version: event.version,
            id: event.id,
            event_type: event.event_type.clone(),
            schema: event.schema,
            time: event.time,
            actor: event.actor.clone(),
            cause: event.cause.clone(),
            correlation: event.correlation,
            data: payload::to_json(&event.event_type, event.schema, &event.payload)
                .unwrap_or(serde_json::Value::Null),
            prev_hash: hex::encode(event.prev_hash),
            hash: hex::encode(event.hash),
        }
    }

    pub fn from_events(events: &[Arc<Event>]) -> Vec<EventView> {
        events
            .iter()
            .map(|event| EventView::from_event(event))
            .collect()
    }

    /// A one-line summary of the payload: the plan line of a change, the
    /// action of a reconciler event; empty for a type this build does not know.
    pub fn summary(&self) -> String {
        summary_of(&self.event_type, &self.data)
    }
}

/// The one-line summary of an event of this type with this payload.
pub fn summary_of(event_type: &str, data: &serde_json::Value) -> String {
    let tagged = serde_json::json!({ event_type: data.clone() });
    if let Ok(change) = serde_json::from_value::<Change>(tagged.clone()) {
        let description = describe_change(&change);
        return format!("{} {}", description.op.symbol(), description.summary);
    }
    if let Ok(lifecycle) = serde_json::from_value::<Lifecycle>(tagged.clone()) {
        let description = describe_lifecycle(&lifecycle);
        return format!("{} {}", description.op.symbol(), description.summary);
    }
    match serde_json::from_value::<ReconcileEvent>(tagged) {
        Ok(ReconcileEvent::ActionStarted(started)) => {
            format!("{} (attempt {})", started.action, started.attempt)
        }
        Ok(ReconcileEvent::ActionSucceeded(done)) => {
            format!("{} -> {}", done.action, done.provider_id)
        }
        Ok(ReconcileEvent::ActionFailed(failed)) => format!(
            "{}: {}{}",
            failed.action,
            failed.error,
            if failed.retryable { " (retryable)" } else { "" }
        ),
        Ok(ReconcileEvent::DriftDetected(drift)) => format!(
            "{}: expected {}, found {}",
            drift.resource,
            drift.expected.map_or("nothing".into(), |r| r.provider_id),
            drift.actual.map_or("nothing".into(), |r| r.provider_id)
        ),
        Ok(ReconcileEvent::ConditionChanged(changed)) => format!(
            "{:?}={} ({})",
            changed.condition,
            if changed.status { "True" } else { "False" },
            changed.reason
        ),
        Ok(ReconcileEvent::ClusterDeleted(_)) => "every resource is gone".into(),
        Err(_) => String::new(),
    }
}

/// The CloudEvents `specversion` of `GET /v1/watch`.
pub const CLOUDEVENTS_SPEC_VERSION: &str = "1.0";

/// The prefix of every CloudEvents `type`: `io.cairn.<EventType>.v<schema>`.
pub const CLOUDEVENTS_TYPE_PREFIX: &str = "io.cairn.";

/// An event as `GET /v1/watch` sends it: CloudEvents 1.0, JSON structured mode
/// (docs/events.md, "The live stream"). The envelope fields that CloudEvents
/// has no attribute for are extension attributes (lowercase letters and
/// digits only, as the spec requires). Counters are decimal strings, since a
/// CloudEvents integer is 32-bit and a seq is not.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CloudEventView {
    /// Always "1.0".
    pub specversion: String,
    /// The event's UUIDv7, unique in the log.
    pub id: Uuid,
    /// `/cairn/<stream>`, e.g. `/cairn/cluster/prod-eu`.
    pub source: String,
    /// `io.cairn.<EventType>.v<schema>`, e.g. `io.cairn.PoolScaled.v1`.
    #[serde(rename = "type")]
    pub event_type: String,
    /// Commit time, RFC 3339, UTC.
    pub time: DateTime<Utc>,
    /// The stream, e.g. `cluster/prod-eu`.
    pub subject: String,
    /// Always "application/json".
    pub datacontenttype: String,
    /// The payload, as in `GET /v1/events`; null for a type this build does not know.
    pub data: serde_json::Value,
    /// Extension: the global seq (also the SSE `id`).
    #[serde(with = "decimal_string")]
    pub seq: u64,
    /// Extension: the event's position in its stream.
    #[serde(with = "decimal_string")]
    pub streamversion: u64,
    /// Extension: the actor's name.
    pub actor: String,
    /// Extension: the actor's kind (`user`, `webhook`, `reconciler`, `system`).
    pub actorkind: String,
    /// Extension: what kind of cause (`none`, `request`, `webhook`, `event`).
    pub causekind: String,
    /// Extension: the cause: a request id, `<hook>/<delivery>` for a webhook,
    /// or the id of the causing event; absent for `none`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cause: Option<String>,
    /// Extension: one id across a whole causal chain.
    pub correlation: Uuid,
}

impl CloudEventView {
    pub fn from_event(event: &Event) -> CloudEventView {
        let (causekind, cause) = match &event.cause {
            Cause::None => ("none", None),
            Cause::Request { request_id, .. } => ("request", Some(request_id.clone())),
            Cause::Webhook { hook, delivery } | Cause::WebhookDelivery { hook, delivery, .. } => {
                ("webhook", Some(format!("{hook}/{delivery}")))
            }
            Cause::Event { id, .. } => ("event", Some(id.to_string())),
        };
        let actorkind = serde_json::to_value(event.actor.kind)
            .ok()
            .and_then(|kind| kind.as_str().map(str::to_string))
            .unwrap_or_default();
        CloudEventView {
            specversion: CLOUDEVENTS_SPEC_VERSION.to_string(),
            id: event.id,
            source: format!("/cairn/{}", event.stream),
            event_type: format!(
                "{CLOUDEVENTS_TYPE_PREFIX}{}.v{}",
                event.event_type, event.schema
            ),
            time: event.time,
            subject: event.stream.clone(),
            datacontenttype: "application/json".to_string(),
            data: payload::to_json(&event.event_type, event.schema, &event.payload)
                .unwrap_or(serde_json::Value::Null),
            seq: event.seq,
            streamversion: event.version,
            actor: event.actor.name.clone(),
            actorkind,
            causekind: causekind.to_string(),
            cause,
            correlation: event.correlation,
        }
    }

    /// The Cairn type name and schema from `type` (`PoolScaled`, 1); None
    /// when `type` is not of the `io.cairn.<EventType>.v<schema>` form.
    pub fn cairn_type(&self) -> Option<(&str, u16)> {
        let rest = self.event_type.strip_prefix(CLOUDEVENTS_TYPE_PREFIX)?;
        let (name, schema) = rest.rsplit_once(".v")?;
        Some((name, schema.parse().ok()?))
    }
}

/// A u64 as a decimal JSON string.
mod decimal_string {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(value: &u64, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(value)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<u64, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// One line of a plan: `+` create, `~` change, `-` destroy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PlannedChange {
    pub op: String,
    #[serde(rename = "type")]
    pub event_type: String,
    pub summary: String,
}

impl PlannedChange {
    pub fn from_lifecycle(lifecycle: &Lifecycle) -> PlannedChange {
        let description = describe_lifecycle(lifecycle);
        PlannedChange {
            op: description.op.symbol().to_string(),
            event_type: payload::lifecycle_type(lifecycle).to_string(),
            summary: description.summary,
        }
    }

    pub fn from_change(change: &Change) -> PlannedChange {
        let description = describe_change(change);
        PlannedChange {
            op: description.op.symbol().to_string(),
            event_type: payload::change_type(change).to_string(),
            summary: description.summary,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ApplyResponse {
    pub cluster: String,
    pub dry_run: bool,
    /// True when an earlier request with the same Idempotency-Key answered.
    pub deduplicated: bool,
    /// The cluster stream version after the apply (use it as If-Match).
    pub stream_version: u64,
    pub changes: Vec<PlannedChange>,
    pub events: Vec<EventView>,
}

impl ApplyResponse {
    pub fn from_outcome(outcome: &crate::ledger::ApplyOutcome) -> ApplyResponse {
        ApplyResponse {
            cluster: outcome.cluster.clone(),
            dry_run: outcome.dry_run,
            deduplicated: outcome.deduplicated,
            stream_version: outcome.stream_version,
            changes: outcome
                .changes
                .iter()
                .map(PlannedChange::from_change)
                .collect(),
            events: EventView::from_events(&outcome.events),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ClusterView {
    pub name: String,
    pub stream_version: u64,
    pub declared_seq: u64,
    pub updated_seq: u64,
    pub updated_at: DateTime<Utc>,
    pub updated_by: Actor,
    pub paused: bool,
    pub deletion_requested: bool,
    /// Machines asked to be replaced: name -> the provider id the request
    /// named (spent once the machine has another one).
    #[serde(default)]
    pub replacements: std::collections::BTreeMap<String, String>,
    pub desired: Manifest,
    pub observed: ObservedView,
    pub conditions: Vec<ConditionView>,
}

impl ClusterView {
    pub fn from_state(state: &ClusterState, observed: &ObservedCluster) -> ClusterView {
        ClusterView {
            name: state.manifest.metadata.name.clone(),
            stream_version: state.stream_version,
            declared_seq: state.declared_seq,
            updated_seq: state.updated_seq,
            updated_at: state.updated_time,
            updated_by: state.updated_by.clone(),
            paused: state.paused,
            deletion_requested: state.deletion_requested,
            replacements: state.replacements.clone(),
            desired: state.manifest.clone(),
            observed: ObservedView::from_observed(observed),
            conditions: ConditionView::from_observed(observed),
        }
    }
}

/// What the reconcilers know exists in the cloud.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ObservedView {
    /// The seq of the cluster's last reconciler event (0: none yet).
    pub updated_seq: u64,
    pub resources: Vec<ResourceView>,
    /// Resources in the cloud that the log did not create.
    pub orphans: Vec<ResourceView>,
    pub in_flight: Vec<InFlightView>,
    pub drift: Vec<DriftView>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ResourceView {
    /// `machine/workers-0`.
    pub key: String,
    pub provider_id: String,
    /// A machine's pool.
    pub pool: Option<String>,
    pub address: Option<String>,
    pub resource: CloudResource,
}

impl ResourceView {
    pub fn from_resource(resource: &CloudResource) -> ResourceView {
        let pool = match &resource.spec {
            crate::model::ResourceSpec::Machine(machine) => Some(machine.pool.clone()),
            _ => None,
        };
        ResourceView {
            key: resource.key().to_string(),
            provider_id: resource.provider_id.clone(),
            pool,
            address: resource.address.clone(),
            resource: resource.clone(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct InFlightView {
    /// `create machine/workers-3`.
    pub action: String,
    pub token: String,
    pub attempt: u32,
    pub started_seq: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DriftView {
    pub resource: String,
    pub detected_seq: u64,
    /// The provider id the log expected (None: nothing expected).
    pub expected: Option<String>,
    /// The provider id found (None: nothing found).
    pub actual: Option<String>,
}

impl ObservedView {
    pub fn from_observed(observed: &ObservedCluster) -> ObservedView {
        ObservedView {
            updated_seq: observed.updated_seq,
            resources: observed
                .resources
                .values()
                .map(ResourceView::from_resource)
                .collect(),
            orphans: observed
                .orphans
                .values()
                .map(ResourceView::from_resource)
                .collect(),
            in_flight: observed
                .in_flight
                .values()
                .map(|in_flight| InFlightView {
                    action: in_flight.action.to_string(),
                    token: in_flight.token.clone(),
                    attempt: in_flight.attempt,
                    started_seq: in_flight.started_seq,
                })
                .collect(),
            drift: observed
                .drift
                .iter()
                .map(|(key, record)| DriftView {
                    resource: key.to_string(),
                    detected_seq: record.detected_seq,
                    expected: record.expected.as_ref().map(|r| r.provider_id.clone()),
                    actual: record.actual.as_ref().map(|r| r.provider_id.clone()),
                })
                .collect(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ConditionView {
    #[serde(rename = "type")]
    pub condition_type: String,
    /// `True` or `False`, as Kubernetes writes it.
    pub status: String,
    pub reason: String,
    pub message: String,
    /// The seq of the event that last set it.
    pub seq: u64,
    pub last_transition_time: DateTime<Utc>,
}

impl ConditionView {
    pub fn from_observed(observed: &ObservedCluster) -> Vec<ConditionView> {
        observed
            .conditions
            .iter()
            .map(|(condition, value)| ConditionView {
                condition_type: condition.as_str().to_string(),
                status: if value.status { "True" } else { "False" }.to_string(),
                reason: value.reason.clone(),
                message: value.message.clone(),
                seq: value.seq,
                last_transition_time: value.time,
            })
            .collect()
    }
}

/// What a pause, resume, delete or machine replacement did.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LifecycleResponse {
    pub cluster: String,
    /// False when the cluster was already in that state (nothing appended).
    pub changed: bool,
    pub stream_version: u64,
    pub event: Option<EventView>,
}

/// The body of `POST /v1/clusters/{name}/pools/{pool}/scale`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ScaleRequest {
    pub replicas: i64,
}

/// The simulated cloud's true state (`GET /v1/sim/resources`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SimResources {
    pub resources: Vec<CloudResource>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ClusterSummary {
    pub name: String,
    pub provider: String,
    pub region: String,
    pub kubernetes_version: String,
    pub pools: usize,
    /// Desired machines over all pools.
    pub replicas: i64,
    pub stream_version: u64,
    pub updated_at: DateTime<Utc>,
    pub updated_by: Actor,
    /// Machines the reconcilers know exist.
    pub machines: usize,
    /// The Ready condition (None: not reconciled yet).
    pub ready: Option<bool>,
    pub paused: bool,
    pub deletion_requested: bool,
}

impl ClusterSummary {
    pub fn from_state(state: &ClusterState, observed: &ObservedCluster) -> ClusterSummary {
        let spec = &state.manifest.spec;
        ClusterSummary {
            name: state.manifest.metadata.name.clone(),
            provider: spec.provider.clone(),
            region: spec.region.clone(),
            kubernetes_version: spec.kubernetes_version.clone(),
            pools: spec.pools.len(),
            replicas: spec.pools.iter().map(|pool| pool.replicas).sum(),
            stream_version: state.stream_version,
            updated_at: state.updated_time,
            updated_by: state.updated_by.clone(),
            machines: observed
                .resources
                .keys()
                .filter(|key| key.kind == crate::model::ResourceKind::Machine)
                .count(),
            ready: observed
                .conditions
                .get(&crate::model::ConditionType::Ready)
                .map(|ready| ready.status),
            paused: state.paused,
            deletion_requested: state.deletion_requested,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ClusterList {
    pub clusters: Vec<ClusterSummary>,
}

/// A page of events. `next` is the cursor to pass as `after` for the next page.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EventPageView {
    pub events: Vec<EventView>,
    pub next: Option<String>,
}

impl EventPageView {
    pub fn from_page(page: &EventPage) -> EventPageView {
        EventPageView {
            events: EventView::from_events(&page.events),
            next: page.next_after.map(|after| after.to_string()),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VerifyView {
    pub ok: bool,
    pub events_checked: u64,
    pub head_seq: u64,
    pub head_hash: String,
    pub first_bad_seq: Option<u64>,
    pub reason: Option<String>,
}

impl VerifyView {
    pub fn from_report(report: &VerifyReport) -> VerifyView {
        VerifyView {
            ok: report.is_ok(),
            events_checked: report.events_checked,
            head_seq: report.head_seq,
            head_hash: report.head_hash.clone(),
            first_bad_seq: report.first_bad.as_ref().map(|bad| bad.seq),
            reason: report.first_bad.as_ref().map(|bad| bad.reason.clone()),
        }
    }
}

/// An RFC 7807 problem document. `code` is stable; `title` and `detail` are for people.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Problem {
    #[serde(rename = "type")]
    pub problem_type: String,
    pub title: String,
    pub status: u16,
    pub code: String,
    pub detail: String,
    /// Every field that is wrong, for validation problems.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<FieldError>,
    /// The cluster's current version, for conflicts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current_version: Option<u64>,
    /// Whether the same request may succeed later without change.
    pub retryable: bool,
}

/// One event of a trace: the event as `GET /v1/events` shows it, its
/// summary, and for an effect its depth and the seq of its direct cause.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TraceEntry {
    pub event: EventView,
    /// One line, as `cairn events` prints it.
    pub summary: String,
    /// For an effect: 1 when the traced event caused it directly, 2 one step further, ...
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub depth: Option<u32>,
    /// For an effect: the seq of the event that caused it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<u64>,
}

impl TraceEntry {
    fn from_event(event: &Event) -> TraceEntry {
        let event = EventView::from_event(event);
        TraceEntry {
            summary: event.summary(),
            event,
            depth: None,
            parent: None,
        }
    }
}

/// `GET /v1/events/{id}/trace`: an event's causal chain, both ways.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TraceView {
    pub event: TraceEntry,
    /// From the root of the chain down to the event's direct cause.
    pub causes: Vec<TraceEntry>,
    pub causes_truncated: bool,
    /// The root's own cause: a request (id, idempotency key, reason), a
    /// webhook delivery, or none. `event` here means the chain names an
    /// event that is not in the log (or was cut at the limit).
    pub origin: Cause,
    /// Everything the event caused, recursively, in seq order.
    pub effects: Vec<TraceEntry>,
    /// More effects exist than the 10,000 returned.
    pub effects_truncated: bool,
    /// Other events with the same correlation id, not in the chain, in seq order.
    pub correlated: Vec<TraceEntry>,
    pub correlated_truncated: bool,
}

impl TraceView {
    pub fn from_trace(trace: &crate::audit::Trace) -> TraceView {
        TraceView {
            event: TraceEntry::from_event(&trace.event),
            causes: trace
                .causes
                .iter()
                .map(|event| TraceEntry::from_event(event))
                .collect(),
            causes_truncated: trace.causes_truncated,
            origin: trace.origin.clone(),
            effects: trace
                .effects
                .iter()
                .map(|effect| TraceEntry {
                    depth: Some(effect.depth),
                    parent: Some(effect.parent),
                    ..TraceEntry::from_event(&effect.event)
                })
                .collect(),
            effects_truncated: trace.effects_truncated,
            correlated: trace
                .correlated
                .iter()
                .map(|event| TraceEntry::from_event(event))
                .collect(),
            correlated_truncated: trace.correlated_truncated,
        }
    }
}

// Time travel: `GET /v1/clusters/{name}?at=`, the diff and rollback
// (handlers in `api::history`).

/// Where a point resolved to.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PointView {
    /// What the caller asked for: a seq, a time or "now".
    pub requested: String,
    pub seq: u64,
    /// The time of the event at `seq`.
    pub time: Option<DateTime<Utc>>,
}

/// `GET /v1/clusters/{name}?at=`: the cluster as it was.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ClusterAtView {
    pub name: String,
    pub at: PointView,
    /// `ClusterDeleted` had ended the cluster by then: no desired state.
    pub deleted: bool,
    pub stream_version: u64,
    /// The whole view, as `GET /v1/clusters/{name}` gives it, unless deleted.
    pub cluster: Option<ClusterView>,
    pub observed: ObservedView,
    pub conditions: Vec<ConditionView>,
}

/// `GET /v1/clusters/{name}/diff`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DiffView {
    pub cluster: String,
    pub from: PointView,
    pub to: PointView,
    pub desired: Vec<DiffEntry>,
    pub observed: Vec<DiffEntry>,
}

/// The body of `POST /v1/clusters/{name}/rollback`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RollbackRequest {
    /// A seq, an RFC 3339 time, or "now".
    pub to: String,
    #[serde(default)]
    pub dry_run: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RollbackResponse {
    pub cluster: String,
    pub to_seq: u64,
    pub dry_run: bool,
    pub stream_version: u64,
    /// What the rollback does, in order, like a plan.
    pub changes: Vec<PlannedChange>,
    /// The appended events, `RollbackRequested` first (none for a dry run
    /// or when nothing differs).
    pub events: Vec<EventView>,
}

// Webhooks: the answer to a delivery and the listings (handlers in
// `api::hooks`).

/// The answer to a delivery.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DeliveryResponse {
    pub hook: String,
    pub delivery: String,
    /// `accepted` (recorded now, processing follows) or `duplicate`.
    pub status: String,
    /// The `WebhookReceived` event.
    pub event_id: Uuid,
    pub seq: u64,
    /// Where to follow what the delivery caused.
    pub trace: String,
    /// For a duplicate that was processed: what came of the first delivery.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outcome: Option<OutcomeView>,
}

/// A `WebhookProcessed`, as the API shows it.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OutcomeView {
    pub outcome: DeliveryOutcome,
    pub summary: String,
    pub actions: Vec<ActionReport>,
    pub skipped: Vec<SkippedReport>,
    pub event_id: Uuid,
    pub seq: u64,
    pub time: DateTime<Utc>,
}

/// `GET /v1/hooks`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HookList {
    pub hooks: Vec<HookView>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HookView {
    pub name: String,
    #[serde(rename = "type")]
    pub kind: String,
    /// The path deliveries are posted to.
    pub path: String,
    /// The receiver's settings, without its secret.
    pub settings: serde_json::Value,
}

/// `GET /v1/hooks/{name}/deliveries`, newest first.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DeliveryList {
    pub deliveries: Vec<DeliveryView>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DeliveryView {
    pub delivery: String,
    pub event: String,
    pub received: DateTime<Utc>,
    pub seq: u64,
    pub event_id: Uuid,
    pub trace: String,
    /// None while the delivery waits to be processed.
    pub outcome: Option<OutcomeView>,
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;

    use super::*;
    use crate::event::{ActorKind, GENESIS_HASH};
    use crate::model::PoolScaled;

    fn pool_scaled(seq: u64, cause: Cause) -> Event {
        let encoded = payload::encode_change(&Change::PoolScaled(PoolScaled {
            pool: "workers".into(),
            from: 5,
            to: 7,
        }));
        Event {
            seq,
            stream: "cluster/prod-eu".into(),
            version: 4,
            id: Uuid::parse_str("019abc3e-8f4a-7b52-9d0e-5f2c1a7e4b10").unwrap(),
            event_type: encoded.event_type.into(),
            schema: encoded.schema,
            time: Utc.timestamp_micros(1_795_000_000_123_456).unwrap(),
            actor: Actor {
                kind: ActorKind::User,
                name: "alice".into(),
            },
            cause,
            correlation: Uuid::parse_str("019abc3e-8f49-7000-8000-000000000001").unwrap(),
            payload: encoded.bytes,
            prev_hash: GENESIS_HASH,
            hash: GENESIS_HASH,
        }
    }

    #[test]
    fn a_cloud_event_has_the_required_attributes_and_the_envelope_as_extensions() {
        let cause = Cause::Request {
            request_id: "req-1".into(),
            idempotency_key: None,
            reason: Some("more capacity".into()),
        };
        let json = serde_json::to_value(CloudEventView::from_event(&pool_scaled(
            3_000_000_000,
            cause,
        )))
        .unwrap();
        assert_eq!(
            json,
            serde_json::json!({
                "specversion": "1.0",
                "id": "019abc3e-8f4a-7b52-9d0e-5f2c1a7e4b10",
                "source": "/cairn/cluster/prod-eu",
                "type": "io.cairn.PoolScaled.v1",
                "time": "2026-11-18T11:06:40.123456Z",
                "subject": "cluster/prod-eu",
                "datacontenttype": "application/json",
                "data": {"pool": "workers", "from": 5, "to": 7},
                "seq": "3000000000",
                "streamversion": "4",
                "actor": "alice",
                "actorkind": "user",
                "causekind": "request",
                "cause": "req-1",
                "correlation": "019abc3e-8f49-7000-8000-000000000001",
            })
        );
        // CloudEvents attribute names: lowercase letters and digits only.
        for name in json.as_object().unwrap().keys() {
            assert!(
                name.bytes()
                    .all(|byte| byte.is_ascii_lowercase() || byte.is_ascii_digit()),
                "{name} is not a valid CloudEvents attribute name"
            );
            assert!(name.len() <= 20, "{name} is over 20 characters");
        }
    }

    #[test]
    fn a_cloud_event_round_trips_and_names_its_cairn_type() {
        for cause in [
            Cause::None,
            Cause::Webhook {
                hook: "github".into(),
                delivery: "d-1".into(),
            },
            Cause::Event {
                seq: 1,
                id: Uuid::nil(),
            },
            Cause::WebhookDelivery {
                hook: "github".into(),
                delivery: "d-1".into(),
                received_seq: 1,
                received_id: Uuid::nil(),
                details: [("commit".to_string(), "abc".to_string())].into(),
            },
        ] {
            let view = CloudEventView::from_event(&pool_scaled(2, cause.clone()));
            let text = serde_json::to_string(&view).unwrap();
            let back: CloudEventView = serde_json::from_str(&text).unwrap();
            assert_eq!(back, view);
            assert_eq!(back.cairn_type(), Some(("PoolScaled", 1)));
            match cause {
                Cause::None => {
                    assert_eq!(view.causekind, "none");
                    assert!(!text.contains("\"cause\""), "{text}");
                }
                Cause::Webhook { .. } | Cause::WebhookDelivery { .. } => {
                    assert_eq!(view.cause.as_deref(), Some("github/d-1"))
                }
                Cause::Event { .. } => assert_eq!(view.cause, Some(Uuid::nil().to_string())),
                Cause::Request { .. } => unreachable!(),
            }
        }
        let mut view = CloudEventView::from_event(&pool_scaled(2, Cause::None));
        view.event_type = "com.example.Other".into();
        assert_eq!(view.cairn_type(), None);
    }
}
