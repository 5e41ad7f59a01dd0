//! Time travel: the state of a cluster at any point of the log, the diff
//! between two points, and rollback as a new forward change.
//!
//! A point is a seq, a time (the last event at or before it, found through
//! the store's time index) or "now". A cluster's state at seq `s` is its
//! part of the newest snapshot at or before `s`, folded on with the events of
//! its own two streams up to `s` (see `projection::snapshot`): the cost is
//! bounded by the events since that snapshot, not by the length of the log.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::{
    command_event, request_cause, CommandContext, Ledger, LedgerError, MAX_CONFLICT_RETRIES,
};
use crate::event::payload::{self, Payload};
use crate::event::{Cause, Event};
use crate::model::{
    change_subject, cluster_stream, describe_change, diff, reconcile_stream, Change, ChangeOp,
    CloudResource, ClusterDeletionCancelled, ClusterDeletionRequested, ClusterPaused,
    ClusterResumed, Lifecycle, ReconcileEvent, ResourceKey, RollbackRequested,
};
use crate::projection::{ClusterState, ObservedCluster, Projections};
use crate::store::{AppendRequest, ExpectedVersion, Idempotency, StoreError};

/// Events read by the first page while folding a cluster forward; each next
/// page doubles, up to `MAX_FOLD_PAGE`. A point usually lies a few dozen
/// events past the snapshot, and every event read past it is decoded for
/// nothing: in `cargo bench --bench history`, pages of 1,024 took the p99 of
/// a point read's stream reads to 11.64 ms, pages of 64 to 2.54 ms.
const FIRST_FOLD_PAGE: usize = 32;
const MAX_FOLD_PAGE: usize = 1024;

/// A point of the log, as a user names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Point {
    Seq(u64),
    Time(DateTime<Utc>),
    Now,
}

impl FromStr for Point {
    type Err = String;

    /// `now`, a seq (digits), or an RFC 3339 time.
    fn from_str(text: &str) -> Result<Point, String> {
        let text = text.trim();
        if text.eq_ignore_ascii_case("now") {
            return Ok(Point::Now);
        }
        if !text.is_empty() && text.bytes().all(|byte| byte.is_ascii_digit()) {
            return text
                .parse()
                .map(Point::Seq)
                .map_err(|_| format!("{text:?} is too large for a seq"));
        }
        DateTime::parse_from_rfc3339(text)
            .map(|time| Point::Time(time.with_timezone(&Utc)))
            .map_err(|error| {
                format!("{text:?} is neither a seq, an RFC 3339 time nor \"now\": {error}")
            })
    }
}

impl fmt::Display for Point {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Point::Seq(seq) => write!(f, "{seq}"),
            Point::Time(time) => write!(f, "{}", time.to_rfc3339()),
            Point::Now => write!(f, "now"),
        }
    }
}

/// A cluster as of a point of the log.
#[derive(Debug, Clone)]
pub struct ClusterAt {
    /// The seq the point resolved to.
    pub seq: u64,
    /// The time of the event at that seq (None for seq 0).
    pub time: Option<DateTime<Utc>>,
    /// The desired state; None once the cluster was deleted.
    pub desired: Option<ClusterState>,
    pub observed: Option<ObservedCluster>,
    /// The cluster stream's version at that point.
    pub stream_version: u64,
}

impl ClusterAt {
    /// `ClusterDeleted` had ended the cluster at this point.
    pub fn deleted(&self) -> bool {
        self.desired.is_none()
    }
}

/// One line of a diff, printed like a plan line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DiffEntry {
    /// `+`, `~` or `-`.
    pub op: char,
    /// What it touches: `pool/workers`, `machine/workers-0`, `paused`, ...
    pub subject: String,
    pub summary: String,
    /// The events in the range that changed this subject, oldest first.
    pub events: Vec<EventRef>,
}

/// An event named by a diff entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EventRef {
    pub seq: u64,
    pub id: Uuid,
    #[serde(rename = "type")]
    pub event_type: String,
    pub actor: String,
}

impl EventRef {
    fn of(event: &Event) -> EventRef {
        EventRef {
            seq: event.seq,
            id: event.id,
            event_type: event.event_type.clone(),
            actor: event.actor.name.clone(),
        }
    }
}

/// What changed in a cluster between two points.
#[derive(Debug, Clone)]
pub struct ClusterDiff {
    pub from: ClusterAt,
    pub to: ClusterAt,
    pub desired: Vec<DiffEntry>,
    pub observed: Vec<DiffEntry>,
}

/// What a rollback did, or would do.
#[derive(Debug, Clone)]
pub struct RollbackOutcome {
    pub cluster: String,
    pub to_seq: u64,
    /// The changes that take the desired state back, in order.
    pub changes: Vec<Change>,
    /// Lifecycle commands among them (deletion called off or requested,
    /// pause, resume), in order.
    pub lifecycle: Vec<Lifecycle>,
    /// The appended events, `RollbackRequested` first; empty for a dry run
    /// or when the state at `to` is the current one.
    pub events: Vec<Arc<Event>>,
    pub stream_version: u64,
    pub dry_run: bool,
}

impl Ledger {
    /// The seq a point names: at most the head, whose time is at or before
    /// a time point. A seq inside an atomic append is moved to the append's
    /// last event, since the states in between never existed (a subnet
    /// replaced by `SubnetRemoved` + `SubnetAdded` would read as missing). A
    /// time point needs no such care: the events of one append share a time.
    pub async fn resolve_point(&self, point: Point) -> Result<u64, LedgerError> {
        let head = self.store.head().seq;
        match point {
            Point::Now => Ok(head),
            Point::Seq(seq) if seq > head => Err(LedgerError::PointAfterHead { seq, head }),
            Point::Seq(seq) => Ok(self.end_of_append(seq).await?),
            Point::Time(time) => Ok(self.store.seq_at_time(time).await?),
        }
    }

    /// The last seq of the append that wrote `seq`: the events after it with
    /// the same stream, correlation and commit time. (Two appends of one
    /// correlation to one stream in the same microsecond, which only the
    /// reconciler makes, read as one: their intermediate state is skipped.)
    async fn end_of_append(&self, seq: u64) -> Result<u64, StoreError> {
        if seq == 0 {
            return Ok(0);
        }
        let Some(mut last) = self.store.read(seq - 1, 1).await?.pop() else {
            return Ok(seq);
        };
        loop {
            let next = self.store.read(last.seq, 64).await?;
            let full = next.len() == 64;
            for event in next {
                let same_append = event.stream == last.stream
                    && event.correlation == last.correlation
                    && event.time == last.time;
                if !same_append {
                    return Ok(last.seq);
                }
                last = event;
            }
            if !full {
                return Ok(last.seq);
            }
        }
    }

    /// A cluster as of a point. `ClusterNotFound` when it had no event yet.
    pub async fn cluster_at(&self, name: &str, point: Point) -> Result<ClusterAt, LedgerError> {
        let seq = self.resolve_point(point).await?;
        self.cluster_at_resolved(name, point, seq).await
    }

    /// `cluster_at` for a point already resolved to `seq` (named `point` in
    /// the error), so callers that resolved it do not read the log again.
    async fn cluster_at_resolved(
        &self,
        name: &str,
        point: Point,
        seq: u64,
    ) -> Result<ClusterAt, LedgerError> {
        let projections = self.fold_cluster(name, seq).await?;
        let stream_version = projections.desired.stream_version(name);
        if stream_version == 0 {
            return Err(LedgerError::ClusterNotFoundAt {
                name: name.to_string(),
                point: point.to_string(),
                seq,
            });
        }
        let time = match seq {
            0 => None,
            seq => self
                .store
                .read(seq - 1, 1)
                .await?
                .first()
                .map(|event| event.time),
        };
        Ok(ClusterAt {
            seq,
            time,
            desired: projections.desired.cluster(name).cloned(),
            observed: projections.observed.cluster(name).cloned(),
            stream_version,
        })
    }

    /// Projections holding one cluster as of `seq`: its snapshot part, then
    /// its own events after the snapshot up to `seq`.
    async fn fold_cluster(&self, name: &str, seq: u64) -> Result<Projections, LedgerError> {
        let snapshot = self.snapshot_at_or_before(seq);
        let mut projections =
            Projections::from_cluster_part(name, 0, None).expect("an empty part always decodes");
        if snapshot > 0 {
            let part = self.store.snapshot_part(snapshot, name).await?;
            match Projections::from_cluster_part(name, snapshot, part.as_deref()) {
                Ok(decoded) => projections = decoded,
                Err(error) => {
                    tracing::warn!(snapshot, %error, "a snapshot part does not decode; folding from seq 1");
                }
            }
        }
        let (cluster_version, reconcile_version) = projections.cluster_stream_versions(name);
        let desired = self
            .stream_until(&cluster_stream(name), cluster_version, seq)
            .await?;
        let observed = self
            .stream_until(&reconcile_stream(name), reconcile_version, seq)
            .await?;
        // Both streams in seq order, merged.
        let (mut left, mut right) = (desired.iter().peekable(), observed.iter().peekable());
        loop {
            let next = match (left.peek(), right.peek()) {
                (Some(a), Some(b)) if a.seq < b.seq => left.next(),
                (Some(_), Some(_)) => right.next(),
                (Some(_), None) => left.next(),
                (None, Some(_)) => right.next(),
                (None, None) => break,
            };
            if let Some(event) = next {
                projections.apply(event);
            }
        }
        Ok(projections)
    }

    /// The events of a stream after a version, up to seq `last`.
    async fn stream_until(
        &self,
        stream: &str,
        after_version: u64,
        last: u64,
    ) -> Result<Vec<Arc<Event>>, StoreError> {
        let mut events = Vec::new();
        let mut after = after_version;
        let mut page_size = FIRST_FOLD_PAGE;
        loop {
            let page = self.store.read_stream(stream, after, page_size).await?;
            let full = page.len() == page_size;
            page_size = (page_size * 2).min(MAX_FOLD_PAGE);
            for event in page {
                if event.seq > last {
                    return Ok(events);
                }
                after = event.version;
                events.push(event);
            }
            if !full {
                return Ok(events);
            }
        }
    }

    /// What changed in a cluster between two points, with the events that
    /// changed each part. The cluster must exist at one of them at least.
    pub async fn diff_cluster(
        &self,
        name: &str,
        from: Point,
        to: Point,
    ) -> Result<ClusterDiff, LedgerError> {
        let from_seq = self.resolve_point(from).await?;
        let to_seq = self.resolve_point(to).await?;
        let from_state = self.cluster_at_or_absent(name, from_seq).await?;
        let to_state = self.cluster_at_or_absent(name, to_seq).await?;
        if from_state.stream_version == 0 && to_state.stream_version == 0 {
            return Err(LedgerError::ClusterNotFoundAt {
                name: name.to_string(),
                point: to.to_string(),
                seq: to_seq,
            });
        }
        let low = if from_seq <= to_seq {
            &from_state
        } else {
            &to_state
        };
        let high = from_seq.max(to_seq);
        let between = self.cluster_events_between(name, low, high).await?;
        let desired = desired_entries(&from_state, &to_state, &between)?;
        let observed = observed_entries(&from_state, &to_state, &between);
        Ok(ClusterDiff {
            from: from_state,
            to: to_state,
            desired,
            observed,
        })
    }

    /// Like `cluster_at`, but a cluster that did not exist yet is an empty
    /// state (stream version 0) rather than an error.
    async fn cluster_at_or_absent(&self, name: &str, seq: u64) -> Result<ClusterAt, LedgerError> {
        match self.cluster_at_resolved(name, Point::Seq(seq), seq).await {
            Err(LedgerError::ClusterNotFoundAt { .. }) => Ok(ClusterAt {
                seq,
                time: None,
                desired: None,
                observed: None,
                stream_version: 0,
            }),
            other => other,
        }
    }

    /// The events of a cluster's two streams after the state `low`, up to
    /// seq `high`: read from the stream versions `low` had folded.
    async fn cluster_events_between(
        &self,
        name: &str,
        low: &ClusterAt,
        high: u64,
    ) -> Result<Vec<Arc<Event>>, LedgerError> {
        let reconcile_version = low
            .observed
            .as_ref()
            .map_or(0, |observed| observed.stream_version);
        let mut events = Vec::new();
        for (stream, after) in [
            (cluster_stream(name), low.stream_version),
            (reconcile_stream(name), reconcile_version),
        ] {
            for event in self.stream_until(&stream, after, high).await? {
                if event.seq > low.seq {
                    events.push(event);
                }
            }
        }
        events.sort_by_key(|event| event.seq);
        Ok(events)
    }

    /// Takes a cluster's desired state back to what it was at `to`, as new
    /// events: `RollbackRequested`, then the changes (each caused by it).
    /// A cluster absent at `to` (not declared yet, or deleted) is deleted;
    /// a deleted cluster, or one being deleted, is wanted again. The state
    /// is read at one stream version and the append is pinned to it, so a
    /// concurrent change is never undone unseen; a conflict is retried.
    pub async fn rollback(
        &self,
        name: &str,
        to: Point,
        dry_run: bool,
        context: &CommandContext,
    ) -> Result<RollbackOutcome, LedgerError> {
        // With a key, the first append records it (an empty one when there
        // is nothing to roll back), and a retry answers from the record.
        let idempotency = context.idempotency(rollback_digest(name, to));
        if let (Some(idempotency), false) = (&idempotency, dry_run) {
            if let Some(outcome) = self.replay_rollback(name, idempotency).await? {
                return Ok(outcome);
            }
        }
        let to_seq = self.resolve_point(to).await?;
        let target = match self.cluster_at_resolved(name, to, to_seq).await {
            Ok(state) => state.desired,
            Err(LedgerError::ClusterNotFoundAt { .. }) => None,
            Err(error) => return Err(error),
        };
        // Every state the log can name is valid, but this build's rules may
        // be stricter than those of the build that wrote it.
        if let Some(target) = &target {
            let errors = crate::model::validate(&target.manifest);
            if !errors.is_empty() {
                return Err(LedgerError::Invalid(errors));
            }
        }
        let mut appended_so_far: Vec<Arc<Event>> = Vec::new();
        let mut attempt = 0;
        loop {
            attempt += 1;
            self.wait_applied(self.store.head().seq).await?;
            let (current, version) = self.read(|projections| {
                (
                    projections.desired.cluster(name).cloned(),
                    projections.desired.stream_version(name),
                )
            });
            if version == 0 {
                return Err(LedgerError::ClusterNotFound(name.to_string()));
            }
            let (changes, lifecycle) = rollback_plan(current.as_ref(), target.as_ref())?;
            let mut outcome = RollbackOutcome {
                cluster: name.to_string(),
                to_seq,
                changes,
                lifecycle,
                events: Vec::new(),
                stream_version: version,
                dry_run,
            };
            let nothing_to_do = outcome.changes.is_empty() && outcome.lifecycle.is_empty();
            // The key goes with the first append only: a second one (after a
            // race with `ClusterDeleted`) is part of the same request.
            let key = idempotency.clone().filter(|_| appended_so_far.is_empty());
            if dry_run || (nothing_to_do && key.is_none()) {
                outcome.events = appended_so_far;
                return Ok(outcome);
            }
            let mut request = if nothing_to_do {
                AppendRequest {
                    stream: cluster_stream(name),
                    expected: ExpectedVersion::Exact(version),
                    events: Vec::new(),
                    idempotency: None,
                }
            } else {
                rollback_request(name, version, to, to_seq, &outcome, context)
            };
            request.idempotency = key;
            match self.store.append(request).await {
                Ok(appended) => {
                    self.wait_visible(&appended.events).await;
                    appended_so_far.extend(appended.events);
                    // The pin covers the cluster stream only: a `ClusterDeleted`
                    // (in the reconcile stream) between the read and the append
                    // ended the cluster the changes were planned against, and
                    // the projection skipped them. Plan again from the deleted
                    // state, which declares the cluster anew.
                    let ended_meanwhile = current.is_some() && self.cluster(name).is_none();
                    if ended_meanwhile && target.is_some() && attempt < MAX_CONFLICT_RETRIES {
                        tracing::info!(
                            cluster = name,
                            "the cluster was deleted during the rollback; planning again"
                        );
                        continue;
                    }
                    outcome.events = appended_so_far;
                    outcome.stream_version =
                        self.read(|projections| projections.desired.stream_version(name));
                    return Ok(outcome);
                }
                Err(StoreError::WrongExpectedVersion { .. }) if attempt < MAX_CONFLICT_RETRIES => {}
                Err(error) => return Err(error.into()),
            }
        }
    }
}

/// What an idempotency key of a rollback is bound to: the cluster and the
/// point as the caller gave it (`now` stays `now`, so a retry matches).
fn rollback_digest(name: &str, to: Point) -> [u8; 32] {
    use sha2::{Digest, Sha256};
    let mut hasher = Sha256::new();
    hasher.update(b"rollback\n");
    hasher.update(name.as_bytes());
    hasher.update(b"\n");
    hasher.update(to.to_string().as_bytes());
    hasher.finalize().into()
}

impl Ledger {
    /// The first outcome of a rollback whose key was used, if it was.
    async fn replay_rollback(
        &self,
        name: &str,
        idempotency: &Idempotency,
    ) -> Result<Option<RollbackOutcome>, LedgerError> {
        let Some(record) = self.store.idempotency_record(&idempotency.key).await? else {
            return Ok(None);
        };
        if record.digest != idempotency.digest || record.stream != cluster_stream(name) {
            return Err(StoreError::IdempotencyKeyReused {
                key: super::client_key(&idempotency.key).to_string(),
            }
            .into());
        }
        self.wait_applied(record.last_seq).await?;
        let count = (record.last_seq + 1).saturating_sub(record.first_seq) as usize;
        let events = if count == 0 {
            Vec::new()
        } else {
            self.store.read(record.first_seq - 1, count).await?
        };
        let to_seq = events
            .first()
            .and_then(|event| {
                match payload::decode(&event.event_type, event.schema, &event.payload) {
                    Ok(Payload::Lifecycle(Lifecycle::RollbackRequested(requested))) => {
                        Some(requested.to_seq)
                    }
                    _ => None,
                }
            })
            .unwrap_or(0);
        let lifecycle = events
            .iter()
            .skip(1)
            .filter_map(|event| {
                match payload::decode(&event.event_type, event.schema, &event.payload) {
                    Ok(Payload::Lifecycle(lifecycle)) => Some(lifecycle),
                    _ => None,
                }
            })
            .collect();
        Ok(Some(RollbackOutcome {
            cluster: name.to_string(),
            to_seq,
            changes: super::changes_of(&events),
            lifecycle,
            events,
            stream_version: record.stream_version,
            dry_run: false,
        }))
    }
}

/// The changes and lifecycle commands that take `current` to `target`.
/// Lifecycle order: a deletion is called off before the changes, and a
/// pause or resume follows them.
fn rollback_plan(
    current: Option<&ClusterState>,
    target: Option<&ClusterState>,
) -> Result<(Vec<Change>, Vec<Lifecycle>), LedgerError> {
    let mut lifecycle = Vec::new();
    let Some(target) = target else {
        // Absent at `to`: the cluster goes, unless it is already going.
        if current.is_some_and(|current| !current.deletion_requested) {
            lifecycle.push(Lifecycle::ClusterDeletionRequested(
                ClusterDeletionRequested {},
            ));
        }
        return Ok((Vec::new(), lifecycle));
    };
    let manifest = current.map(|current| &current.manifest);
    let changes = diff(manifest, &target.manifest).map_err(LedgerError::Invalid)?;
    match current {
        Some(current) => {
            if current.deletion_requested && !target.deletion_requested {
                lifecycle.push(Lifecycle::ClusterDeletionCancelled(
                    ClusterDeletionCancelled {},
                ));
            }
            if current.paused != target.paused {
                lifecycle.push(pause_command(target.paused));
            }
            if !current.deletion_requested && target.deletion_requested {
                lifecycle.push(Lifecycle::ClusterDeletionRequested(
                    ClusterDeletionRequested {},
                ));
            }
        }
        // Declared again: a new declaration starts unpaused and wanted.
        None => {
            if target.paused {
                lifecycle.push(pause_command(true));
            }
            if target.deletion_requested {
                lifecycle.push(Lifecycle::ClusterDeletionRequested(
                    ClusterDeletionRequested {},
                ));
            }
        }
    }
    Ok((changes, lifecycle))
}

fn pause_command(paused: bool) -> Lifecycle {
    if paused {
        Lifecycle::ClusterPaused(ClusterPaused {})
    } else {
        Lifecycle::ClusterResumed(ClusterResumed {})
    }
}

/// One atomic append: `RollbackRequested`, a called-off deletion if any,
/// the changes, then the other lifecycle commands; every event after the
/// first names it as its cause (the store fills in its seq).
fn rollback_request(
    name: &str,
    version: u64,
    to: Point,
    to_seq: u64,
    outcome: &RollbackOutcome,
    context: &CommandContext,
) -> AppendRequest {
    let requested = Lifecycle::RollbackRequested(RollbackRequested {
        to_seq,
        requested: to.to_string(),
    });
    let first = command_event(
        payload::encode_lifecycle(&requested),
        request_cause(context),
        context,
    );
    let caused = Cause::Event {
        seq: 0,
        id: first.id,
    };
    let (before, after): (Vec<&Lifecycle>, Vec<&Lifecycle>) = outcome
        .lifecycle
        .iter()
        .partition(|command| matches!(command, Lifecycle::ClusterDeletionCancelled(_)));
    let mut events = vec![first];
    for command in before {
        events.push(command_event(
            payload::encode_lifecycle(command),
            caused.clone(),
            context,
        ));
    }
    for change in &outcome.changes {
        events.push(command_event(
            payload::encode_change(change),
            caused.clone(),
            context,
        ));
    }
    for command in after {
        events.push(command_event(
            payload::encode_lifecycle(command),
            caused.clone(),
            context,
        ));
    }
    AppendRequest {
        stream: cluster_stream(name),
        expected: ExpectedVersion::Exact(version),
        events,
        idempotency: None,
    }
}

/// The desired-state side of a diff: manifest changes and lifecycle flags.
fn desired_entries(
    from: &ClusterAt,
    to: &ClusterAt,
    between: &[Arc<Event>],
) -> Result<Vec<DiffEntry>, LedgerError> {
    // The subject each event of the cluster stream touched.
    let touched: Vec<(String, &Arc<Event>)> = between
        .iter()
        .filter(|event| event.stream.starts_with("cluster/"))
        .filter_map(|event| {
            let subject = match payload::decode(&event.event_type, event.schema, &event.payload) {
                Ok(Payload::Change(change)) => change_subject(&change),
                Ok(Payload::Lifecycle(lifecycle)) => lifecycle_subject(&lifecycle)?.to_string(),
                _ => return None,
            };
            Some((subject, event))
        })
        .collect();
    let events_of = |subject: &str| -> Vec<EventRef> {
        touched
            .iter()
            .filter(|(touched, _)| {
                touched == subject || touched == "cluster" || subject == "cluster"
            })
            .map(|(_, event)| EventRef::of(event))
            .collect()
    };
    let mut entries = Vec::new();
    match (&from.desired, &to.desired) {
        (None, None) => {}
        (Some(from), None) => entries.push(DiffEntry {
            op: ChangeOp::Destroy.symbol(),
            subject: "cluster".into(),
            summary: format!("cluster {} deleted", from.manifest.metadata.name),
            events: between
                .iter()
                .filter(|event| {
                    event.event_type == "ClusterDeleted"
                        || event.event_type == "ClusterDeletionRequested"
                })
                .map(|event| EventRef::of(event))
                .collect(),
        }),
        (from_state, Some(to_state)) => {
            let changes = diff(
                from_state.as_ref().map(|state| &state.manifest),
                &to_state.manifest,
            )
            .map_err(LedgerError::Invalid)?;
            for change in changes {
                let description = describe_change(&change);
                let subject = change_subject(&change);
                entries.push(DiffEntry {
                    op: description.op.symbol(),
                    events: events_of(&subject),
                    subject,
                    summary: description.summary,
                });
            }
            if let Some(from_state) = from_state {
                for (subject, before, after) in [
                    ("paused", from_state.paused, to_state.paused),
                    (
                        "deletionRequested",
                        from_state.deletion_requested,
                        to_state.deletion_requested,
                    ),
                ] {
                    if before != after {
                        entries.push(DiffEntry {
                            op: ChangeOp::Update.symbol(),
                            subject: subject.into(),
                            summary: format!("{subject} {before} -> {after}"),
                            events: events_of(subject),
                        });
                    }
                }
            }
        }
    }
    Ok(entries)
}

fn lifecycle_subject(lifecycle: &Lifecycle) -> Option<&'static str> {
    match lifecycle {
        Lifecycle::ClusterPaused(_) | Lifecycle::ClusterResumed(_) => Some("paused"),
        Lifecycle::ClusterDeletionRequested(_) | Lifecycle::ClusterDeletionCancelled(_) => {
            Some("deletionRequested")
        }
        // A replacement changes no desired value a diff compares: the
        // observed side shows the machine going and coming back.
        Lifecycle::RollbackRequested(_) | Lifecycle::MachineReplacementRequested(_) => None,
    }
}

/// The observed side of a diff: resources that appeared, went or changed,
/// and conditions that flipped, each with the reconciler events behind it.
fn observed_entries(from: &ClusterAt, to: &ClusterAt, between: &[Arc<Event>]) -> Vec<DiffEntry> {
    let empty = ObservedCluster::default();
    let before = from.observed.as_ref().unwrap_or(&empty);
    let after = to.observed.as_ref().unwrap_or(&empty);
    // Each reconciler event decoded once: the resource it concerns.
    let mut by_key: std::collections::BTreeMap<ResourceKey, Vec<EventRef>> = Default::default();
    for event in between
        .iter()
        .filter(|event| event.stream.starts_with("reconcile/"))
    {
        let key = match payload::decode(&event.event_type, event.schema, &event.payload) {
            Ok(Payload::Reconcile(reconcile)) => match *reconcile {
                ReconcileEvent::ActionSucceeded(done) => done.action.key(),
                ReconcileEvent::DriftDetected(drift) => drift.resource,
                _ => continue,
            },
            _ => continue,
        };
        by_key.entry(key).or_default().push(EventRef::of(event));
    }
    let events_of = |key: &ResourceKey| by_key.get(key).cloned().unwrap_or_default();
    let mut entries = Vec::new();
    let keys: std::collections::BTreeSet<&ResourceKey> = before
        .resources
        .keys()
        .chain(after.resources.keys())
        .collect();
    for key in keys {
        let (op, summary) = match (before.resources.get(key), after.resources.get(key)) {
            (None, Some(resource)) => (ChangeOp::Create, resource_text(key, resource)),
            (Some(resource), None) => (ChangeOp::Destroy, resource_text(key, resource)),
            (Some(old), Some(new)) if old != new => (
                ChangeOp::Update,
                format!("{} {} -> {}", key, old.provider_id, new.provider_id),
            ),
            _ => continue,
        };
        entries.push(DiffEntry {
            op: op.symbol(),
            subject: key.to_string(),
            summary,
            events: events_of(key),
        });
    }
    for (condition, state) in &after.conditions {
        let previous = before.conditions.get(condition);
        if previous.map(|previous| previous.status) != Some(state.status) {
            let was = previous.map_or("unknown".to_string(), |previous| {
                previous.status.to_string()
            });
            let events = between
                .iter()
                .filter(|event| event.seq == state.seq)
                .map(|event| EventRef::of(event))
                .collect();
            entries.push(DiffEntry {
                op: ChangeOp::Update.symbol(),
                subject: format!("condition/{}", condition.as_str()),
                summary: format!(
                    "{} {was} -> {} ({})",
                    condition.as_str(),
                    state.status,
                    state.reason
                ),
                events,
            });
        }
    }
    entries
}

fn resource_text(key: &ResourceKey, resource: &CloudResource) -> String {
    format!("{key} ({})", resource.provider_id)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{Actor, ActorKind};
    use crate::model::{parse_manifest, ManifestFormat};

    fn state(replicas: i64, paused: bool, deleting: bool) -> ClusterState {
        let text = format!(
            "apiVersion: cairn/v1\nkind: Cluster\nmetadata: {{name: c}}\nspec:\n  provider: sim\n  \
             region: r\n  kubernetesVersion: 1.31.2\n  network:\n    cidr: 10.0.0.0/16\n    subnets:\n      \
             - {{name: a, cidr: 10.0.1.0/24}}\n  pools:\n    - {{name: w, role: worker, replicas: {replicas}, \
             machineType: m, image: i, subnets: [a]}}\n"
        );
        ClusterState {
            manifest: parse_manifest(text.as_bytes(), ManifestFormat::Yaml).unwrap(),
            stream_version: 1,
            declared_seq: 1,
            updated_seq: 1,
            updated_time: DateTime::<Utc>::default(),
            updated_by: Actor {
                kind: ActorKind::User,
                name: "u".into(),
            },
            updated_id: Uuid::nil(),
            correlation: Uuid::nil(),
            paused,
            deletion_requested: deleting,
            replacements: Default::default(),
        }
    }

    fn names(plan: &(Vec<Change>, Vec<Lifecycle>)) -> Vec<&'static str> {
        plan.0
            .iter()
            .map(payload::change_type)
            .chain(plan.1.iter().map(payload::lifecycle_type))
            .collect()
    }

    #[test]
    fn a_rollback_plan_restores_manifest_pause_and_deletion() {
        let same = rollback_plan(Some(&state(3, false, false)), Some(&state(3, false, false)));
        assert_eq!(names(&same.unwrap()), Vec::<&str>::new());
        let scaled = rollback_plan(Some(&state(5, false, false)), Some(&state(3, false, false)));
        assert_eq!(names(&scaled.unwrap()), vec!["PoolScaled"]);
        let deleting = rollback_plan(Some(&state(5, true, true)), Some(&state(3, false, false)));
        assert_eq!(
            names(&deleting.unwrap()),
            vec!["PoolScaled", "ClusterDeletionCancelled", "ClusterResumed"]
        );
        let gone = rollback_plan(None, Some(&state(3, true, false)));
        assert_eq!(
            names(&gone.unwrap()),
            vec!["ClusterDeclared", "ClusterPaused"]
        );
        let absent_then = rollback_plan(Some(&state(3, false, false)), None);
        assert_eq!(
            names(&absent_then.unwrap()),
            vec!["ClusterDeletionRequested"]
        );
        let already_going = rollback_plan(Some(&state(3, false, true)), None);
        assert_eq!(names(&already_going.unwrap()), Vec::<&str>::new());
    }

    #[test]
    fn a_rollback_plan_never_undoes_a_machine_replacement() {
        // The target had no replacement requested and the current state has
        // one (or the other way round): a replacement is done or spent, not
        // a desired value to restore, so the plan does not mention it.
        let mut replaced = state(3, false, false);
        replaced
            .replacements
            .insert("w-1".into(), "sim-m-000042".into());
        let plain = state(3, false, false);
        let forward = rollback_plan(Some(&replaced), Some(&plain));
        assert_eq!(names(&forward.unwrap()), Vec::<&str>::new());
        let backward = rollback_plan(Some(&plain), Some(&replaced));
        assert_eq!(names(&backward.unwrap()), Vec::<&str>::new());
        let scaled = rollback_plan(Some(&replaced), Some(&state(2, false, false)));
        assert_eq!(names(&scaled.unwrap()), vec!["PoolScaled"]);
    }

    #[test]
    fn points_parse_from_seqs_times_and_now() {
        assert_eq!("42".parse::<Point>(), Ok(Point::Seq(42)));
        assert_eq!("now".parse::<Point>(), Ok(Point::Now));
        assert!(matches!(
            "2026-11-25T10:00:00+01:00".parse::<Point>(),
            Ok(Point::Time(time)) if time.to_rfc3339() == "2026-11-25T09:00:00+00:00"
        ));
        let error = "last tuesday".parse::<Point>().unwrap_err();
        assert!(error.contains("\"last tuesday\""), "{error}");
        assert!("99999999999999999999999".parse::<Point>().is_err());
    }
}

#[cfg(test)]
mod regression_tests;
