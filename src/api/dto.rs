//! The JSON shapes of the HTTP API. Separate from the stored types on purpose:
//! the log's format and the API's format evolve on their own schedules.
//!
//! **Architecture Invariant:** this file does not use warp, so the CLI can
//! decode responses with the same types the daemon encodes them with.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::event::{payload, Actor, Cause, Event};
use crate::ledger::EventPage;
use crate::model::{describe_change, Change, FieldError, Manifest};
use crate::projection::ClusterState;
use crate::store::VerifyReport;

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

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ClusterView {
    pub name: String,
    pub stream_version: u64,
    pub declared_seq: u64,
    pub updated_seq: u64,
    pub updated_at: DateTime<Utc>,
    pub updated_by: Actor,
    pub desired: Manifest,
}

impl ClusterView {
    pub fn from_state(state: &ClusterState) -> ClusterView {
        ClusterView {
            name: state.manifest.metadata.name.clone(),
            stream_version: state.stream_version,
            declared_seq: state.declared_seq,
            updated_seq: state.updated_seq,
            updated_at: state.updated_time,
            updated_by: state.updated_by.clone(),
            desired: state.manifest.clone(),
        }
    }
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
}

impl ClusterSummary {
    pub fn from_state(state: &ClusterState) -> ClusterSummary {
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
