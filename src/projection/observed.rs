//! The observed-state projection: what the reconcilers know the cloud holds,
//! folded from the `reconcile/<name>` streams.
//!
//! Per cluster it keeps the resources known to exist (with provider ids),
//! resources found in the cloud that the log did not create (orphans), the
//! actions started without an outcome (in flight), the attempts made with the
//! current token of each resource, drift not yet repaired, the incarnation of
//! each resource (bumped when a resource is gone, so its next create carries a
//! new token), and the conditions.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::desired::RECONCILE_STREAM_PREFIX;
use super::{decode_for_fold, decode_payload, FoldPayload};
use crate::event::payload::Payload;
use crate::event::{Event, EventRef};
use crate::model::{
    Action, ActionFailed, ActionStarted, ActionSucceeded, CloudResource, ConditionChanged,
    ConditionType, DriftDetected, ReconcileEvent, ResourceKey,
};

/// An action whose `ActionStarted` is in the log without an outcome.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InFlightAction {
    pub action: Action,
    pub token: String,
    pub attempt: u32,
    pub started_seq: u64,
    pub started_id: Uuid,
}

/// The tries made with one token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attempts {
    /// What the tries do.
    pub action: Action,
    pub token: String,
    pub count: u32,
}

/// Drift found by a resync and not repaired yet.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DriftRecord {
    pub detected_seq: u64,
    pub expected: Option<CloudResource>,
    pub actual: Option<CloudResource>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Condition {
    pub status: bool,
    pub reason: String,
    pub message: String,
    /// The seq of the `ConditionChanged` that set it.
    pub seq: u64,
    pub time: DateTime<Utc>,
}

/// What the log says about one cluster's cloud resources.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObservedCluster {
    pub resources: BTreeMap<ResourceKey, CloudResource>,
    /// Resources in the cloud, tagged with this cluster, that the log did not
    /// create or that duplicate a key, by provider id.
    pub orphans: BTreeMap<String, CloudResource>,
    /// By token.
    pub in_flight: BTreeMap<String, InFlightAction>,
    pub attempts: BTreeMap<ResourceKey, Attempts>,
    pub incarnations: BTreeMap<ResourceKey, u32>,
    pub drift: BTreeMap<ResourceKey, DriftRecord>,
    pub conditions: BTreeMap<ConditionType, Condition>,
    /// The seq of the last event of the cluster's reconcile stream.
    pub updated_seq: u64,
    /// The version of that event in the stream: where a fold of this
    /// cluster alone continues (see `Projections::cluster_at`).
    pub stream_version: u64,
    /// `ClusterDeleted` is the last word so far (cleared by a later action).
    pub deleted: bool,
}

impl ObservedCluster {
    /// The incarnation of a resource: how many times one under this key has
    /// gone away. The create token includes it.
    pub fn incarnation(&self, key: &ResourceKey) -> u32 {
        self.incarnations.get(key).copied().unwrap_or(0)
    }

    fn gone(&mut self, key: &ResourceKey) {
        self.resources.remove(key);
        *self.incarnations.entry(key.clone()).or_default() += 1;
    }
}

/// Observed state of every cluster, folded from the log.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObservedState {
    clusters: BTreeMap<String, ObservedCluster>,
    pub applied_seq: u64,
    /// Reconcile events whose payload did not decode.
    pub skipped_events: u64,
}

impl ObservedState {
    /// Puts back one cluster's state, as a snapshot holds it.
    pub(super) fn restore(&mut self, name: &str, cluster: ObservedCluster) {
        self.clusters.insert(name.to_string(), cluster);
    }

    pub fn cluster(&self, name: &str) -> Option<&ObservedCluster> {
        self.clusters.get(name)
    }

    pub fn clusters(&self) -> impl Iterator<Item = (&String, &ObservedCluster)> {
        self.clusters.iter()
    }

    /// Folds one event. See the module docs of `projection` for the rules.
    pub fn apply(&mut self, event: &Event) {
        let event = event.view();
        self.apply_decoded(&event, decode_for_fold(&event));
    }

    /// Folds one event whose payload the caller decoded with
    /// [`decode_for_fold`]; `None` decodes it here.
    pub fn apply_decoded(&mut self, event: &EventRef<'_>, payload: FoldPayload) {
        if event.seq <= self.applied_seq {
            return;
        }
        self.applied_seq = event.seq;
        let Some(name) = event.stream.strip_prefix(RECONCILE_STREAM_PREFIX) else {
            return;
        };
        let reconcile = match payload.unwrap_or_else(|| decode_payload(event)) {
            Ok(Payload::Reconcile(reconcile)) => *reconcile,
            Ok(_) => return,
            Err(_) => {
                self.skipped_events += 1;
                return;
            }
        };
        // One lookup for a known cluster (nearly every event of a replay);
        // the name is copied only for a new one.
        let cluster = match self.clusters.get_mut(name) {
            Some(cluster) => cluster,
            None => self.clusters.entry(name.to_string()).or_default(),
        };
        cluster.updated_seq = event.seq;
        cluster.stream_version = event.version;
        match reconcile {
            ReconcileEvent::ActionStarted(started) => started_action(cluster, started, event),
            ReconcileEvent::ActionSucceeded(succeeded) => succeeded_action(cluster, succeeded),
            ReconcileEvent::ActionFailed(failed) => failed_action(cluster, failed),
            ReconcileEvent::DriftDetected(drift) => drift_detected(cluster, drift, event.seq),
            ReconcileEvent::ConditionChanged(changed) => condition_changed(cluster, changed, event),
            ReconcileEvent::ClusterDeleted(_) => {
                cluster.deleted = true;
                cluster.drift.clear();
                cluster.attempts.clear();
            }
        }
    }
}

fn is_orphan(cluster: &ObservedCluster, action: &Action) -> bool {
    matches!(action, Action::Delete { provider_id, .. } if cluster.orphans.contains_key(provider_id))
}

fn started_action(cluster: &mut ObservedCluster, started: ActionStarted, event: &EventRef<'_>) {
    cluster.deleted = false;
    // An orphan's clean-up does not count as a try of the resource under its key.
    if !is_orphan(cluster, &started.action) {
        let key = started.action.key();
        let attempts = cluster.attempts.entry(key).or_insert_with(|| Attempts {
            action: started.action.clone(),
            token: started.token.clone(),
            count: 0,
        });
        if attempts.token != started.token {
            attempts.action = started.action.clone();
            attempts.token = started.token.clone();
            attempts.count = 0;
        }
        attempts.count = attempts.count.max(started.attempt);
    }
    cluster.in_flight.insert(
        started.token.clone(),
        InFlightAction {
            action: started.action,
            token: started.token,
            attempt: started.attempt,
            started_seq: event.seq,
            started_id: event.id,
        },
    );
}

fn succeeded_action(cluster: &mut ObservedCluster, succeeded: ActionSucceeded) {
    cluster.in_flight.remove(&succeeded.token);
    if is_orphan(cluster, &succeeded.action) {
        cluster.orphans.remove(&succeeded.provider_id);
        return;
    }
    let key = succeeded.action.key();
    cluster.attempts.remove(&key);
    cluster.drift.remove(&key);
    match succeeded.action {
        Action::Create { .. } => {
            if let Some(resource) = succeeded.observed {
                cluster.orphans.remove(&resource.provider_id);
                cluster.resources.insert(key, resource);
            }
        }
        Action::Delete { provider_id, .. } => {
            if cluster
                .resources
                .get(&key)
                .is_some_and(|resource| resource.provider_id == provider_id)
            {
                cluster.gone(&key);
            }
        }
    }
}

fn failed_action(cluster: &mut ObservedCluster, failed: ActionFailed) {
    cluster.in_flight.remove(&failed.token);
    if is_orphan(cluster, &failed.action) {
        return;
    }
    // The try stays in `attempts`: the next one reuses its token, and a
    // resync that finds the token's resource claims it. Only a spent token
    // (its resource came and went unseen) starts a new incarnation.
    if failed.token_spent {
        let key = failed.action.key();
        cluster.attempts.remove(&key);
        cluster.gone(&key);
    }
}

fn drift_detected(cluster: &mut ObservedCluster, drift: DriftDetected, seq: u64) {
    let key = drift.resource.clone();
    let ours = cluster.attempts.get(&key);
    match (&drift.expected, &drift.actual) {
        // An orphan went away: nothing left to clean up.
        (Some(expected), None) if cluster.orphans.contains_key(&expected.provider_id) => {
            cluster.orphans.remove(&expected.provider_id);
            return;
        }
        // Our own delete did it, though its answer was lost: not drift.
        (Some(expected), None)
            if ours.is_some_and(|ours| {
                matches!(&ours.action, Action::Delete { provider_id, .. }
                    if *provider_id == expected.provider_id)
            }) =>
        {
            cluster.attempts.remove(&key);
            cluster.gone(&key);
            return;
        }
        // Gone behind our back: forget it, so its next create has a new token.
        (Some(_), None) => cluster.gone(&key),
        // Our own create made it, though its answer was lost: not drift.
        (None, Some(actual))
            if !cluster.resources.contains_key(&key)
                && ours.is_some_and(|ours| ours.token == actual.token) =>
        {
            cluster.attempts.remove(&key);
            cluster.resources.insert(key, actual.clone());
            return;
        }
        // Present though the log did not know it, and its key is taken: an
        // orphan, tracked by provider id (not as drift of the key's resource).
        (None, Some(actual)) if cluster.resources.contains_key(&key) => {
            cluster
                .orphans
                .insert(actual.provider_id.clone(), actual.clone());
            return;
        }
        // Present though the log did not know it: adopt it under its free key.
        (None, Some(actual)) => {
            cluster.resources.insert(key.clone(), actual.clone());
        }
        // Changed behind our back: what the cloud has is what is observed.
        (Some(_), Some(actual)) => {
            cluster.resources.insert(key.clone(), actual.clone());
        }
        (None, None) => return,
    }
    cluster.drift.insert(
        key,
        DriftRecord {
            detected_seq: seq,
            expected: drift.expected,
            actual: drift.actual,
        },
    );
}

fn condition_changed(
    cluster: &mut ObservedCluster,
    changed: ConditionChanged,
    event: &EventRef<'_>,
) {
    cluster.conditions.insert(
        changed.condition,
        Condition {
            status: changed.status,
            reason: changed.reason,
            message: changed.message,
            seq: event.seq,
            time: event.time,
        },
    );
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;
    use proptest::prelude::*;

    use super::*;
    use crate::event::payload::encode_reconcile;
    use crate::event::{Actor, ActorKind, Cause, NewEvent, GENESIS_HASH};
    use crate::model::{ClusterDeleted, MachineSpec, ResourceKey, ResourceKind, ResourceSpec};

    fn machine(index: u8) -> ResourceSpec {
        ResourceSpec::Machine(MachineSpec {
            name: format!("w-{index}"),
            pool: "w".into(),
            role: "worker".into(),
            machine_type: "m".into(),
            image: "i".into(),
            subnet: "a".into(),
            kubernetes_version: "1.31.2".into(),
        })
    }

    fn resource(index: u8, id: u8, token: u8) -> CloudResource {
        CloudResource {
            provider_id: format!("sim-m-{id}"),
            cluster: "c".into(),
            token: format!("t{token}"),
            spec: machine(index),
            address: None,
        }
    }

    /// Reconciler events over three machines, three tokens and four ids:
    /// small enough that events about the same resource collide often.
    fn event() -> impl Strategy<Value = ReconcileEvent> {
        let create = |index: u8| Action::Create {
            spec: machine(index),
        };
        let delete = |index: u8, id: u8| Action::Delete {
            key: ResourceKey::new(ResourceKind::Machine, format!("w-{index}")),
            provider_id: format!("sim-m-{id}"),
        };
        prop_oneof![
            (0..3u8, 0..3u8, 1..4u32).prop_map(move |(i, t, attempt)| {
                ReconcileEvent::ActionStarted(ActionStarted {
                    action: create(i),
                    token: format!("t{t}"),
                    attempt,
                })
            }),
            (0..3u8, 0..4u8, 0..3u8).prop_map(move |(i, id, t)| ReconcileEvent::ActionStarted(
                ActionStarted {
                    action: delete(i, id),
                    token: format!("t{t}"),
                    attempt: 1
                }
            )),
            (0..3u8, 0..4u8, 0..3u8).prop_map(move |(i, id, t)| ReconcileEvent::ActionSucceeded(
                ActionSucceeded {
                    action: create(i),
                    token: format!("t{t}"),
                    provider_id: format!("sim-m-{id}"),
                    observed: Some(resource(i, id, t)),
                }
            )),
            (0..3u8, 0..4u8, 0..3u8).prop_map(move |(i, id, t)| ReconcileEvent::ActionSucceeded(
                ActionSucceeded {
                    action: delete(i, id),
                    token: format!("t{t}"),
                    provider_id: format!("sim-m-{id}"),
                    observed: None,
                }
            )),
            (0..3u8, 0..3u8, any::<bool>(), any::<bool>()).prop_map(
                move |(i, t, retryable, spent)| {
                    ReconcileEvent::ActionFailed(ActionFailed {
                        action: create(i),
                        token: format!("t{t}"),
                        error: "failed".into(),
                        retryable,
                        token_spent: spent,
                    })
                }
            ),
            (
                0..3u8,
                proptest::option::of((0..4u8, 0..3u8)),
                proptest::option::of((0..4u8, 0..3u8))
            )
                .prop_map(move |(i, expected, actual)| ReconcileEvent::DriftDetected(
                    DriftDetected {
                        resource: ResourceKey::new(ResourceKind::Machine, format!("w-{i}")),
                        expected: expected.map(|(id, t)| resource(i, id, t)),
                        actual: actual.map(|(id, t)| resource(i, id, t)),
                    }
                )),
            (any::<bool>(), 0..4usize).prop_map(
                |(status, which)| ReconcileEvent::ConditionChanged(ConditionChanged {
                    condition: ConditionType::ALL[which],
                    status,
                    reason: "Why".into(),
                    message: String::new(),
                })
            ),
            Just(ReconcileEvent::ClusterDeleted(ClusterDeleted {})),
        ]
    }

    fn seal(events: &[ReconcileEvent]) -> Vec<Event> {
        let mut head = GENESIS_HASH;
        events
            .iter()
            .enumerate()
            .map(|(index, payload)| {
                let seq = index as u64 + 1;
                let encoded = encode_reconcile(payload);
                let new = NewEvent {
                    id: Uuid::from_u128(seq as u128),
                    event_type: encoded.event_type.to_string(),
                    schema: encoded.schema,
                    actor: Actor {
                        kind: ActorKind::Reconciler,
                        name: "reconciler".into(),
                    },
                    cause: Cause::None,
                    correlation: Uuid::nil(),
                    payload: encoded.bytes,
                };
                let time = Utc.timestamp_opt(1_700_000_000 + seq as i64, 0).unwrap();
                let event = Event::seal(new, "reconcile/c", seq, seq, time, head);
                head = event.hash;
                event
            })
            .collect()
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(128))]

        #[test]
        fn observed_state_replays_deterministically(payloads in proptest::collection::vec(event(), 0..40), split in 0usize..40) {
            let events = seal(&payloads);
            let mut once = ObservedState::default();
            for event in &events {
                once.apply(event);
            }
            // A second replay from scratch is the same state.
            let mut again = ObservedState::default();
            for event in &events {
                again.apply(event);
            }
            prop_assert_eq!(&again, &once);
            // Every event delivered twice changes nothing.
            let mut twice = ObservedState::default();
            for event in &events {
                twice.apply(event);
                twice.apply(event);
            }
            prop_assert_eq!(&twice, &once);
            // A state kept at any point and folded on from there is the same.
            let split = split.min(events.len());
            let mut prefix = ObservedState::default();
            for event in &events[..split] {
                prefix.apply(event);
            }
            let mut resumed = prefix.clone();
            for event in &events[split..] {
                resumed.apply(event);
            }
            prop_assert_eq!(&resumed, &once);
            prop_assert_eq!(once.skipped_events, 0);
        }
    }
}
