//! Snapshots of the projections, and the fold of one cluster alone.
//!
//! A snapshot is a list of named parts (the store keeps them opaque):
//!
//! - `""` (the header): the snapshot format, the seq it was taken at, and the
//!   global counters;
//! - one part per cluster ever declared: its desired state (None once
//!   deleted), its cluster stream version, and its observed state.
//!
//! One part per cluster lets a point-in-time read load the one cluster it
//! asks about instead of the whole state.
//!
//! A cluster's state depends only on the events of its own two streams
//! (`cluster/<name>` and `reconcile/<name>`), so folding those alone, from a
//! snapshot part or from nothing, gives exactly the state the full fold holds
//! for that cluster. `cluster_at` relies on it and the tests check it.
//!
//! **Architecture Invariant:** `SNAPSHOT_FORMAT` changes whenever a type
//! stored in a snapshot changes shape. A snapshot of another format is never
//! decoded: start-up falls back to an older snapshot or to a full replay, and
//! `cairn replay` reports the difference.

use serde::{Deserialize, Serialize};

use super::{ClusterState, ObservedCluster, Projections};

/// The encoding of snapshot parts. Bump on any change to the stored types.
/// Format 2: `ClusterState::replacements`.
pub const SNAPSHOT_FORMAT: u32 = 2;

/// The name of the header part.
pub const HEADER_PART: &str = "";

/// The most bytes a decoder may claim for one part (a corrupt length prefix
/// must not make it allocate more).
const MAX_PART_BYTES: usize = 256 * 1024 * 1024;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SnapshotError {
    #[error("snapshot format {found}, this build reads format {SNAPSHOT_FORMAT}")]
    OtherFormat { found: u32 },
    #[error("the snapshot has no header part")]
    NoHeader,
    #[error("part {part:?} does not decode: {reason}")]
    Undecodable { part: String, reason: String },
}

#[derive(Debug, Serialize, Deserialize)]
struct Header {
    format: u32,
    applied_seq: u64,
    desired_skipped: u64,
    observed_skipped: u64,
}

/// One cluster's share of a snapshot.
#[derive(Debug, Serialize, Deserialize)]
struct ClusterPart {
    desired: Option<ClusterState>,
    stream_version: u64,
    observed: Option<ObservedCluster>,
}

fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    bincode::serde::encode_to_vec(value, bincode::config::standard())
        .expect("bincode encoding of a plain serde type cannot fail")
}

fn decode<T: serde::de::DeserializeOwned>(part: &str, bytes: &[u8]) -> Result<T, SnapshotError> {
    let config = bincode::config::standard().with_limit::<MAX_PART_BYTES>();
    let undecodable = |reason: String| SnapshotError::Undecodable {
        part: part.to_string(),
        reason,
    };
    let (value, used) = bincode::serde::decode_from_slice(bytes, config)
        .map_err(|error| undecodable(error.to_string()))?;
    if used != bytes.len() {
        return Err(undecodable(format!(
            "{} trailing bytes",
            bytes.len() - used
        )));
    }
    Ok(value)
}

/// Reads the header part: the snapshot's format must be this build's.
fn decode_header(bytes: &[u8]) -> Result<Header, SnapshotError> {
    // The format comes first, so another format is told apart from damage.
    let (format, _): (u32, usize) =
        bincode::serde::decode_from_slice(bytes, bincode::config::standard()).map_err(|error| {
            SnapshotError::Undecodable {
                part: HEADER_PART.into(),
                reason: error.to_string(),
            }
        })?;
    if format != SNAPSHOT_FORMAT {
        return Err(SnapshotError::OtherFormat { found: format });
    }
    decode(HEADER_PART, bytes)
}

/// The header of a snapshot's parts, which must be of this build's format.
fn header_of(parts: &[(String, Vec<u8>)]) -> Result<Header, SnapshotError> {
    let header = parts
        .iter()
        .find(|(name, _)| name == HEADER_PART)
        .ok_or(SnapshotError::NoHeader)?;
    decode_header(&header.1)
}

/// Whether a snapshot's parts can be compared with this build's, byte for
/// byte: they have a header, of this build's format. Only the header is
/// decoded (a replay checks twenty snapshots of a thousand clusters each).
pub fn check_comparable(parts: &[(String, Vec<u8>)]) -> Result<(), SnapshotError> {
    header_of(parts).map(drop)
}

/// What one fold encodes of a snapshot: see [`Projections::share_parts`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShareParts {
    pub cluster_parts: Vec<(String, Vec<u8>)>,
    pub desired_skipped: u64,
    pub observed_skipped: u64,
}

/// The snapshot at `applied_seq` of a fold split by cluster: every share
/// folded the events of its own clusters (a cluster's state depends only on
/// its two streams), so their parts together, sorted by name, with the
/// counters added up under one header, are the parts of the whole fold.
pub fn join_shares(applied_seq: u64, shares: Vec<ShareParts>) -> Vec<(String, Vec<u8>)> {
    let mut desired_skipped = 0;
    let mut observed_skipped = 0;
    let mut cluster_parts = Vec::new();
    for share in shares {
        desired_skipped += share.desired_skipped;
        observed_skipped += share.observed_skipped;
        cluster_parts.extend(share.cluster_parts);
    }
    cluster_parts.sort_by(|a, b| a.0.cmp(&b.0));
    let header = Header {
        format: SNAPSHOT_FORMAT,
        applied_seq,
        desired_skipped,
        observed_skipped,
    };
    let mut parts = vec![(HEADER_PART.to_string(), encode(&header))];
    parts.extend(cluster_parts);
    parts
}

impl Projections {
    /// The snapshot parts of the whole state, header first.
    pub fn snapshot_parts(&self) -> Vec<(String, Vec<u8>)> {
        join_shares(self.applied_seq(), vec![self.share_parts()])
    }

    /// This state's share of a snapshot: one part per cluster (every
    /// cluster ever declared, and every one with reconciler events), sorted
    /// by name, and the counters. A fold split by cluster (`cairn replay`)
    /// puts its folds' shares together with [`join_shares`].
    pub fn share_parts(&self) -> ShareParts {
        let mut names: Vec<&String> = self
            .desired
            .stream_versions()
            .map(|(name, _)| name)
            .chain(self.observed.clusters().map(|(name, _)| name))
            .collect();
        names.sort();
        names.dedup();
        let cluster_parts = names
            .into_iter()
            .map(|name| {
                let part = ClusterPart {
                    desired: self.desired.cluster(name).cloned(),
                    stream_version: self.desired.stream_version(name),
                    observed: self.observed.cluster(name).cloned(),
                };
                (name.clone(), encode(&part))
            })
            .collect();
        ShareParts {
            cluster_parts,
            desired_skipped: self.desired.skipped_events,
            observed_skipped: self.observed.skipped_events,
        }
    }

    pub fn from_snapshot_parts(parts: &[(String, Vec<u8>)]) -> Result<Projections, SnapshotError> {
        let header = header_of(parts)?;
        let mut projections = Projections::default();
        for (name, bytes) in parts {
            if name != HEADER_PART {
                projections.restore_cluster(name, decode(name, bytes)?);
            }
        }
        projections.desired.applied_seq = header.applied_seq;
        projections.desired.skipped_events = header.desired_skipped;
        projections.observed.applied_seq = header.applied_seq;
        projections.observed.skipped_events = header.observed_skipped;
        Ok(projections)
    }

    /// The state of one cluster from its snapshot part (None: the cluster
    /// had no event yet), as of `applied_seq`. The global counters are zero.
    pub fn from_cluster_part(
        name: &str,
        applied_seq: u64,
        part: Option<&[u8]>,
    ) -> Result<Projections, SnapshotError> {
        let mut projections = Projections::default();
        if let Some(bytes) = part {
            projections.restore_cluster(name, decode(name, bytes)?);
        }
        projections.desired.applied_seq = applied_seq;
        projections.observed.applied_seq = applied_seq;
        Ok(projections)
    }

    /// Where a fold of one cluster continues: the versions of its cluster
    /// stream and of its reconcile stream folded so far.
    pub fn cluster_stream_versions(&self, name: &str) -> (u64, u64) {
        (
            self.desired.stream_version(name),
            self.observed
                .cluster(name)
                .map_or(0, |cluster| cluster.stream_version),
        )
    }

    /// The header of a snapshot: its format and seq, without the clusters.
    pub fn snapshot_seq(header: &[u8]) -> Result<u64, SnapshotError> {
        decode_header(header).map(|header| header.applied_seq)
    }

    fn restore_cluster(&mut self, name: &str, part: ClusterPart) {
        self.desired
            .restore(name, part.desired, part.stream_version);
        if let Some(observed) = part.observed {
            self.observed.restore(name, observed);
        }
    }
}

#[cfg(test)]
mod tests {
    use chrono::{TimeZone, Utc};
    use proptest::prelude::*;
    use uuid::Uuid;

    use super::*;
    use crate::event::payload::{
        encode_change, encode_lifecycle, encode_reconcile, EncodedPayload,
    };
    use crate::event::{Actor, ActorKind, Cause, Event, Hash, NewEvent, GENESIS_HASH};
    use crate::model::arbitrary::manifest_strategy;
    use crate::model::{
        diff, ClusterDeleted, ClusterDeletionCancelled, ClusterDeletionRequested, ClusterPaused,
        ClusterResumed, ConditionChanged, ConditionType, Lifecycle, MachineReplacementRequested,
        Manifest, ReconcileEvent, RollbackRequested,
    };

    const NAMES: [&str; 3] = ["alpha", "beta", "gamma"];

    /// One step of a random history.
    #[derive(Debug, Clone)]
    enum Step {
        Apply(Box<Manifest>),
        Lifecycle(usize, u8),
        Condition(usize, usize, bool),
        Deleted(usize),
    }

    fn steps() -> impl Strategy<Value = Vec<Step>> {
        let step = prop_oneof![
            3 => prop_oneof![
                manifest_strategy("alpha"),
                manifest_strategy("beta"),
                manifest_strategy("gamma"),
            ]
            .prop_map(|manifest| Step::Apply(Box::new(manifest))),
            2 => (0..3usize, 0..7u8).prop_map(|(cluster, kind)| Step::Lifecycle(cluster, kind)),
            2 => (0..3usize, 0..4usize, any::<bool>())
                .prop_map(|(cluster, condition, status)| Step::Condition(cluster, condition, status)),
            1 => (0..3usize).prop_map(Step::Deleted),
        ];
        proptest::collection::vec(step, 1..40)
    }

    /// Seals events the way the store does, folding as it goes so that
    /// manifest steps become the diff against the state so far.
    fn build_log(steps: &[Step]) -> Vec<Event> {
        let mut events: Vec<Event> = Vec::new();
        let mut head: Hash = GENESIS_HASH;
        let mut versions = std::collections::BTreeMap::<String, u64>::new();
        let mut state = Projections::default();
        let mut push = |stream: String, encoded: EncodedPayload, state: &mut Projections| {
            let version = versions.entry(stream.clone()).or_default();
            *version += 1;
            let seq = events.len() as u64 + 1;
            let new = NewEvent {
                id: Uuid::from_u128(seq as u128),
                event_type: encoded.event_type.to_string(),
                schema: encoded.schema,
                actor: Actor {
                    kind: ActorKind::User,
                    name: "prop".into(),
                },
                cause: Cause::None,
                correlation: Uuid::nil(),
                payload: encoded.bytes,
            };
            let time = Utc.timestamp_opt(1_700_000_000 + seq as i64, 0).unwrap();
            let event = Event::seal(new, &stream, seq, *version, time, head);
            head = event.hash;
            state.apply(&event);
            events.push(event);
        };
        for step in steps {
            match step {
                Step::Apply(manifest) => {
                    let name = &manifest.metadata.name;
                    let current = state
                        .desired
                        .cluster(name)
                        .map(|cluster| cluster.manifest.clone());
                    for change in diff(current.as_ref(), manifest).unwrap() {
                        push(manifest.stream(), encode_change(&change), &mut state);
                    }
                }
                Step::Lifecycle(cluster, kind) => {
                    let lifecycle = match kind {
                        0 => Lifecycle::ClusterPaused(ClusterPaused {}),
                        1 => Lifecycle::ClusterResumed(ClusterResumed {}),
                        2 => Lifecycle::ClusterDeletionRequested(ClusterDeletionRequested {}),
                        3 => Lifecycle::ClusterDeletionCancelled(ClusterDeletionCancelled {}),
                        5 | 6 => {
                            Lifecycle::MachineReplacementRequested(MachineReplacementRequested {
                                machine: "workers-0".into(),
                                provider_id: format!("sim-m-{kind}"),
                            })
                        }
                        _ => Lifecycle::RollbackRequested(RollbackRequested {
                            to_seq: 1,
                            requested: "1".into(),
                        }),
                    };
                    let stream = format!("cluster/{}", NAMES[*cluster]);
                    push(stream, encode_lifecycle(&lifecycle), &mut state);
                }
                Step::Condition(cluster, condition, status) => {
                    let event = ReconcileEvent::ConditionChanged(ConditionChanged {
                        condition: ConditionType::ALL[*condition],
                        status: *status,
                        reason: "Why".into(),
                        message: String::new(),
                    });
                    let stream = format!("reconcile/{}", NAMES[*cluster]);
                    push(stream, encode_reconcile(&event), &mut state);
                }
                Step::Deleted(cluster) => {
                    let event = ReconcileEvent::ClusterDeleted(ClusterDeleted {});
                    let stream = format!("reconcile/{}", NAMES[*cluster]);
                    push(stream, encode_reconcile(&event), &mut state);
                }
            }
        }
        events
    }

    fn fold(events: &[Event]) -> Projections {
        let mut state = Projections::default();
        for event in events {
            state.apply(event);
        }
        state
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(128))]

        #[test]
        fn the_shares_of_a_fold_split_by_cluster_join_into_the_whole_fold(
            steps in steps(),
            shares in 1usize..4,
            salt in any::<u8>(),
        ) {
            let events = build_log(&steps);
            // Any split that keeps a cluster's two streams together.
            let share_of = |event: &Event| {
                let name = event.stream.split_once('/').map_or("", |(_, name)| name);
                name.bytes().fold(usize::from(salt), |sum, byte| sum + usize::from(byte)) % shares
            };
            let mut folds = vec![Projections::default(); shares];
            for event in &events {
                folds[share_of(event)].apply(event);
            }
            let head = events.last().map_or(0, |event| event.seq);
            let joined = join_shares(head, folds.iter().map(Projections::share_parts).collect());
            prop_assert_eq!(joined, fold(&events).snapshot_parts());
        }

        #[test]
        fn snapshot_plus_tail_equals_full_replay(steps in steps(), split in 0usize..200) {
            let events = build_log(&steps);
            let split = split.min(events.len());
            let full = fold(&events);
            let parts = fold(&events[..split]).snapshot_parts();
            let mut restored = Projections::from_snapshot_parts(&parts).unwrap();
            for event in &events[split..] {
                restored.apply(event);
            }
            prop_assert_eq!(restored, full);
        }

        #[test]
        fn one_cluster_folded_alone_from_a_snapshot_part_matches_the_full_fold(
            steps in steps(),
            split in 0usize..200,
            point in 0usize..200,
            which in 0..3usize,
        ) {
            let events = build_log(&steps);
            let point = point.min(events.len());
            let split = split.min(point);
            let name = NAMES[which];
            let at_point = fold(&events[..point]);
            let snapshot = fold(&events[..split]).snapshot_parts();
            let part = snapshot.iter().find(|(part, _)| part == name).map(|(_, bytes)| bytes.as_slice());
            let mut alone = Projections::from_cluster_part(name, split as u64, part).unwrap();
            let own = [format!("cluster/{name}"), format!("reconcile/{name}")];
            for event in events[split..point].iter().filter(|event| own.contains(&event.stream)) {
                alone.apply(event);
            }
            prop_assert_eq!(alone.desired.cluster(name), at_point.desired.cluster(name));
            prop_assert_eq!(alone.desired.stream_version(name), at_point.desired.stream_version(name));
            prop_assert_eq!(alone.observed.cluster(name), at_point.observed.cluster(name));
        }
    }

    #[test]
    fn a_snapshot_of_another_format_is_refused() {
        let mut parts = Projections::default().snapshot_parts();
        parts[0].1 = encode(&Header {
            format: SNAPSHOT_FORMAT + 1,
            applied_seq: 0,
            desired_skipped: 0,
            observed_skipped: 0,
        });
        assert_eq!(
            Projections::from_snapshot_parts(&parts),
            Err(SnapshotError::OtherFormat {
                found: SNAPSHOT_FORMAT + 1
            })
        );
    }
}
