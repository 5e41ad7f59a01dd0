//! The desired-state projection: what the log says each cluster should look like.
//!
//! It folds `cluster/<name>` streams (manifest changes and lifecycle commands,
//! machine replacement requests among them) and the `ClusterDeleted` event of
//! `reconcile/<name>`, which ends a cluster.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::{decode_for_fold, decode_payload, ends_a_cluster, FoldPayload};
use crate::event::payload::Payload;
use crate::event::{Actor, Event, EventRef};
use crate::model::{apply_change_in_place, Change, Lifecycle, Manifest};

/// The prefix of every cluster stream.
pub const CLUSTER_STREAM_PREFIX: &str = "cluster/";
/// The prefix of every reconciler stream.
pub const RECONCILE_STREAM_PREFIX: &str = "reconcile/";

/// What the log says one cluster should look like.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterState {
    pub manifest: Manifest,
    /// The cluster stream's version: what `If-Match` compares against.
    pub stream_version: u64,
    pub declared_seq: u64,
    pub updated_seq: u64,
    pub updated_time: DateTime<Utc>,
    pub updated_by: Actor,
    /// The id and correlation of the last event that changed this state:
    /// what reconciler actions name as their cause.
    pub updated_id: Uuid,
    pub correlation: Uuid,
    /// No provider calls while paused.
    pub paused: bool,
    /// Deletion was requested; the reconciler is tearing resources down.
    pub deletion_requested: bool,
    /// Machines asked to be replaced: machine name -> the provider id the
    /// request named. A newer request for the same machine overwrites the
    /// older one; an entry whose provider id the machine no longer has is
    /// spent (the planner ignores it).
    #[serde(default)]
    pub replacements: BTreeMap<String, String>,
}

/// Desired state of every cluster, folded from the log.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DesiredState {
    clusters: BTreeMap<String, ClusterState>,
    /// The version of every cluster stream, deleted clusters included: a
    /// cluster declared again after its deletion continues its stream.
    stream_versions: BTreeMap<String, u64>,
    /// The last seq folded in.
    pub applied_seq: u64,
    /// Events whose payload did not decode or whose change did not fit.
    pub skipped_events: u64,
}

impl DesiredState {
    /// Folds every event, in order, into a fresh state.
    pub fn replay<'a>(events: impl IntoIterator<Item = &'a Event>) -> DesiredState {
        let mut state = DesiredState::default();
        for event in events {
            state.apply(event);
        }
        state
    }

    pub fn cluster(&self, name: &str) -> Option<&ClusterState> {
        self.clusters.get(name)
    }

    pub fn clusters(&self) -> impl Iterator<Item = &ClusterState> {
        self.clusters.values()
    }

    /// Every cluster ever declared, deleted ones included, with its stream version.
    pub fn stream_versions(&self) -> impl Iterator<Item = (&String, u64)> {
        self.stream_versions
            .iter()
            .map(|(name, version)| (name, *version))
    }

    /// Puts back one cluster's state, as a snapshot holds it.
    pub(super) fn restore(&mut self, name: &str, cluster: Option<ClusterState>, version: u64) {
        if version > 0 {
            self.stream_versions.insert(name.to_string(), version);
        }
        if let Some(cluster) = cluster {
            self.clusters.insert(name.to_string(), cluster);
        }
    }

    /// The current version of a cluster's stream (0: never declared).
    pub fn stream_version(&self, name: &str) -> u64 {
        self.stream_versions.get(name).copied().unwrap_or(0)
    }

    /// Folds one event. See the module docs of `projection` for the rules.
    pub fn apply(&mut self, event: &Event) {
        let event = event.view();
        self.apply_decoded(&event, decode_for_fold(&event));
    }

    /// Folds one event whose payload the caller decoded with
    /// [`decode_for_fold`] (`Projections` decodes once for both
    /// projections); `None` decodes it here.
    pub fn apply_decoded(&mut self, event: &EventRef<'_>, payload: FoldPayload) {
        if event.stream.starts_with(RECONCILE_STREAM_PREFIX) {
            let payload = payload.unwrap_or_else(|| decode_payload(event));
            self.apply_reconcile(event, ends_a_cluster(&payload));
            return;
        }
        if event.seq <= self.applied_seq {
            return;
        }
        self.applied_seq = event.seq;
        let Some(name) = event.stream.strip_prefix(CLUSTER_STREAM_PREFIX) else {
            return;
        };
        match self.stream_versions.get_mut(name) {
            Some(version) => *version = event.version,
            None => {
                self.stream_versions.insert(name.to_string(), event.version);
            }
        }
        if let Some(cluster) = self.clusters.get_mut(name) {
            cluster.stream_version = event.version;
        }
        let change = match payload.unwrap_or_else(|| decode_payload(event)) {
            Ok(Payload::Change(change)) => *change,
            Ok(Payload::Lifecycle(lifecycle)) => {
                self.apply_lifecycle(name, &lifecycle, event);
                return;
            }
            Ok(Payload::Unknown { .. } | Payload::Reconcile(_) | Payload::Webhook(_)) => return,
            Err(_) => {
                self.skipped_events += 1;
                return;
            }
        };
        match self.clusters.get_mut(name) {
            Some(cluster) => {
                // Changed in place: a fold of the whole log must not copy
                // a manifest per change.
                if !apply_change_in_place(&mut cluster.manifest, change) {
                    self.skipped_events += 1;
                    return;
                }
                cluster.stream_version = event.version;
                cluster.updated_seq = event.seq;
                cluster.updated_time = event.time;
                if !event.actor.is(&cluster.updated_by) {
                    cluster.updated_by = event.actor.to_actor();
                }
                cluster.updated_id = event.id;
                cluster.correlation = event.correlation;
            }
            None => {
                let Change::ClusterDeclared(declared) = change else {
                    self.skipped_events += 1;
                    return;
                };
                self.clusters.insert(
                    name.to_string(),
                    ClusterState {
                        manifest: declared.manifest,
                        stream_version: event.version,
                        declared_seq: event.seq,
                        updated_seq: event.seq,
                        updated_time: event.time,
                        updated_by: event.actor.to_actor(),
                        updated_id: event.id,
                        correlation: event.correlation,
                        paused: false,
                        deletion_requested: false,
                        replacements: BTreeMap::new(),
                    },
                );
            }
        }
    }

    /// Folds an event of a `reconcile/` stream: of the reconcilers' events
    /// only the end of a cluster (`ends_cluster`: a `ClusterDeleted` that
    /// decoded) matters here; the others are for the observed projection.
    pub(super) fn apply_reconcile(&mut self, event: &EventRef<'_>, ends_cluster: bool) {
        if event.seq <= self.applied_seq {
            return;
        }
        self.applied_seq = event.seq;
        let Some(name) = event.stream.strip_prefix(RECONCILE_STREAM_PREFIX) else {
            return;
        };
        // A deletion called off before the reconciler finished leaves the
        // cluster wanted: it is built again.
        if ends_cluster
            && self
                .clusters
                .get(name)
                .is_some_and(|cluster| cluster.deletion_requested)
        {
            self.clusters.remove(name);
        }
    }

    fn apply_lifecycle(&mut self, name: &str, lifecycle: &Lifecycle, event: &EventRef<'_>) {
        // A rollback request only names the changes that follow it; it may
        // precede the declaration that brings a deleted cluster back.
        if let Lifecycle::RollbackRequested(_) = lifecycle {
            return;
        }
        let Some(cluster) = self.clusters.get_mut(name) else {
            self.skipped_events += 1;
            return;
        };
        match lifecycle {
            Lifecycle::ClusterPaused(_) => cluster.paused = true,
            Lifecycle::ClusterResumed(_) => cluster.paused = false,
            Lifecycle::ClusterDeletionRequested(_) => cluster.deletion_requested = true,
            Lifecycle::ClusterDeletionCancelled(_) => cluster.deletion_requested = false,
            Lifecycle::MachineReplacementRequested(replacement) => {
                cluster
                    .replacements
                    .insert(replacement.machine.clone(), replacement.provider_id.clone());
            }
            Lifecycle::RollbackRequested(_) => {}
        }
        cluster.updated_seq = event.seq;
        cluster.updated_time = event.time;
        cluster.updated_by = event.actor.to_actor();
        cluster.updated_id = event.id;
        cluster.correlation = event.correlation;
    }
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;
    use proptest::prelude::*;

    use super::*;
    use crate::event::payload;
    use crate::event::{ActorKind, Cause, Hash, NewEvent, GENESIS_HASH};
    use crate::model::arbitrary::manifest_strategy;
    use crate::model::diff;

    /// A log built in memory, the way the store would build it.
    struct MemoryLog {
        events: Vec<Event>,
        head: Hash,
        versions: BTreeMap<String, u64>,
    }

    impl MemoryLog {
        fn new() -> MemoryLog {
            MemoryLog {
                events: Vec::new(),
                head: GENESIS_HASH,
                versions: BTreeMap::new(),
            }
        }

        fn append_diff(&mut self, state: &DesiredState, next: &Manifest) -> Vec<Event> {
            let name = &next.metadata.name;
            let current = state.cluster(name).map(|cluster| &cluster.manifest);
            let changes = diff(current, next).expect("generated manifests are diffable");
            changes
                .iter()
                .map(|change| self.append(next.stream(), payload::encode_change(change)))
                .collect()
        }

        fn append_lifecycle(&mut self, cluster: &str, lifecycle: &Lifecycle) -> Event {
            let stream = format!("{CLUSTER_STREAM_PREFIX}{cluster}");
            self.append(stream, payload::encode_lifecycle(lifecycle))
        }

        /// Seals one event as the store would: the next seq and stream
        /// version, a correlation id of its own.
        fn append(&mut self, stream: String, encoded: payload::EncodedPayload) -> Event {
            let version = self.versions.entry(stream.clone()).or_default();
            *version += 1;
            let seq = self.events.len() as u64 + 1;
            let new = NewEvent {
                id: Uuid::from_u128(seq as u128),
                event_type: encoded.event_type.to_string(),
                schema: encoded.schema,
                actor: Actor {
                    kind: ActorKind::User,
                    name: "prop".into(),
                },
                cause: Cause::None,
                correlation: Uuid::from_u128(1000 + seq as u128),
                payload: encoded.bytes,
            };
            let time = Utc.timestamp_opt(1_700_000_000 + seq as i64, 0).unwrap();
            let event = Event::seal(new, &stream, seq, *version, time, self.head);
            self.head = event.hash;
            self.events.push(event.clone());
            event
        }
    }

    fn replacement(machine: &str, provider_id: &str) -> Lifecycle {
        Lifecycle::MachineReplacementRequested(crate::model::MachineReplacementRequested {
            machine: machine.into(),
            provider_id: provider_id.into(),
        })
    }

    fn manifests() -> impl Strategy<Value = Vec<Manifest>> {
        let one = prop_oneof![
            manifest_strategy("alpha"),
            manifest_strategy("beta"),
            manifest_strategy("gamma"),
        ];
        proptest::collection::vec(one, 1..12)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        #[test]
        fn folding_successive_diffs_gives_back_the_last_manifest(sequence in manifests()) {
            let mut log = MemoryLog::new();
            let mut incremental = DesiredState::default();
            let mut last = BTreeMap::new();
            for manifest in &sequence {
                for event in log.append_diff(&incremental, manifest) {
                    incremental.apply(&event);
                }
                last.insert(manifest.metadata.name.clone(), manifest.clone());
            }
            for (name, manifest) in &last {
                prop_assert_eq!(&incremental.cluster(name).unwrap().manifest, manifest);
            }
            prop_assert_eq!(incremental.skipped_events, 0);

            // Replay from seq 1 equals the incremental state.
            let replayed = DesiredState::replay(&log.events);
            prop_assert_eq!(&replayed, &incremental);
            // The same log replayed twice gives identical state.
            prop_assert_eq!(&DesiredState::replay(&log.events), &replayed);
            // Delivering an event twice changes nothing.
            let mut twice = replayed.clone();
            for event in &log.events {
                twice.apply(event);
            }
            prop_assert_eq!(&twice, &replayed);
        }
    }

    #[test]
    fn applying_the_same_manifest_twice_appends_nothing() {
        let manifest: Manifest = crate::model::parse_manifest(
            include_bytes!("../../docs/examples/prod-eu.yaml"),
            crate::model::ManifestFormat::Yaml,
        )
        .unwrap();
        let mut log = MemoryLog::new();
        let mut state = DesiredState::default();
        for event in log.append_diff(&state, &manifest) {
            state.apply(&event);
        }
        assert_eq!(log.events.len(), 1);
        assert!(log.append_diff(&state, &manifest).is_empty());
    }

    #[test]
    fn a_replacement_request_is_folded_and_a_newer_one_overwrites_it() {
        let manifest: Manifest = crate::model::parse_manifest(
            include_bytes!("../../docs/examples/prod-eu.yaml"),
            crate::model::ManifestFormat::Yaml,
        )
        .unwrap();
        let name = manifest.metadata.name.clone();
        let mut log = MemoryLog::new();
        let mut state = DesiredState::default();
        for event in log.append_diff(&state, &manifest) {
            state.apply(&event);
        }
        assert!(state.cluster(&name).unwrap().replacements.is_empty());

        let first = log.append_lifecycle(&name, &replacement("workers-2", "sim-m-1"));
        state.apply(&first);
        let other = log.append_lifecycle(&name, &replacement("workers-3", "sim-m-7"));
        state.apply(&other);
        let newer = log.append_lifecycle(&name, &replacement("workers-2", "sim-m-9"));
        state.apply(&newer);

        let cluster = state.cluster(&name).unwrap();
        let expected: BTreeMap<String, String> = [
            ("workers-2".to_string(), "sim-m-9".to_string()),
            ("workers-3".to_string(), "sim-m-7".to_string()),
        ]
        .into();
        assert_eq!(cluster.replacements, expected);
        // The request is the cluster's latest desired change: the
        // reconciler's actions name it as their cause.
        assert_eq!(cluster.updated_id, newer.id);
        assert_eq!(cluster.updated_seq, newer.seq);
        assert_eq!(cluster.correlation, newer.correlation);
        assert_eq!(cluster.stream_version, newer.version);
        assert_eq!(cluster.manifest, manifest);
        assert_eq!(state.skipped_events, 0);

        // A later manifest change keeps the requests, and a replay agrees.
        let mut scaled = manifest.clone();
        scaled.spec.pools[1].replicas += 1;
        for event in log.append_diff(&state, &scaled) {
            state.apply(&event);
        }
        assert_eq!(state.cluster(&name).unwrap().replacements, expected);
        assert_eq!(DesiredState::replay(&log.events), state);
    }

    #[test]
    fn a_replacement_request_for_an_unknown_cluster_is_skipped() {
        let mut log = MemoryLog::new();
        let mut state = DesiredState::default();
        state.apply(&log.append_lifecycle("ghost", &replacement("workers-0", "sim-m-1")));
        assert!(state.cluster("ghost").is_none());
        assert_eq!(state.skipped_events, 1);
    }
}
