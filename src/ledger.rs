//! The ledger: commands that turn requests into events, and the queries over
//! the log and its projections. This is the "commands" box of DESIGN.md.
//!
//! # Layout
//!
//! - `Ledger::open` replays the log into the desired-state projection.
//! - `Ledger::follow` (a task) folds each committed event into the projection
//!   and publishes the applied seq, so a command can wait until its own events
//!   are visible before it answers (read-your-writes).
//! - `Ledger::apply` diffs a manifest against the projection and appends the
//!   changes with optimistic concurrency and an optional idempotency key.
//! - `Ledger::lifecycle` appends a lifecycle command (pause, resume, deletion
//!   request, machine replacement) unless the cluster is already so;
//!   `replace_machine` first resolves the machine in the observed projection.
//! - `Ledger::record` appends the reconcilers' events, and
//!   `Ledger::record_webhook` the webhook inbox's own (`WebhookReceived`,
//!   `WebhookProcessed`). With the commands above, they are the only appends
//!   to the store outside the store itself and the offline import.
//!
//! - `history.rs`: time travel (a cluster at a point, diffs between points)
//!   and rollback as a forward change.
//! - `snapshots.rs`: loading the newest snapshot at start-up and taking one
//!   every `LedgerConfig::snapshot_every` events.
//!
//! **Architecture Invariant:** the ledger knows nothing of HTTP. Its errors say
//! what went wrong in domain terms; `api` maps them to status codes.

mod history;
mod snapshots;

pub use history::{ClusterAt, ClusterDiff, DiffEntry, EventRef, Point, RollbackOutcome};
pub use snapshots::{LedgerConfig, DEFAULT_SNAPSHOT_EVERY};

use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::{Arc, RwLock};

use sha2::{Digest, Sha256};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::event::payload::{self, Payload};
use crate::event::{Actor, ActorKind, Cause, Event, NewEvent};
use crate::model::{
    cluster_stream, diff, hook_stream, reconcile_stream, validate, Change, CloudResource,
    ClusterDeletionRequested, ClusterPaused, ClusterResumed, FieldError, Lifecycle,
    MachineReplacementRequested, Manifest, ReconcileEvent, ResourceKind,
};
use crate::projection::{ClusterState, ObservedCluster, Projections};
use crate::store::{
    AppendOutcome, AppendRequest, EventStore, ExpectedVersion, Idempotency, StoreError,
    Subscription, VerifyReport,
};

/// How many times `apply` recomputes its diff after losing a race with
/// another writer of the same cluster, when the caller gave no `If-Match`.
const MAX_CONFLICT_RETRIES: usize = 8;

/// The actor name reconciler events carry.
pub const RECONCILER_NAME: &str = "reconciler";

/// How long a command waits for the projection to fold in an event before it
/// gives up with `ProjectionBehind`. Folding is in-memory and takes
/// microseconds; this only fires when the follower is stuck.
const MAX_PROJECTION_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

/// How long the follower waits before it retries a failed read of the log.
const CATCH_UP_RETRY: std::time::Duration = std::time::Duration::from_millis(500);

#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    /// The manifest cannot be applied on top of the current state.
    #[error("the manifest cannot be applied")]
    Invalid(Vec<FieldError>),
    /// `If-Match` named a version the cluster is no longer at.
    #[error("cluster {cluster} is at version {current}, the request expected {expected}")]
    VersionMismatch {
        cluster: String,
        expected: u64,
        current: u64,
    },
    #[error("no cluster named {0}")]
    ClusterNotFound(String),
    /// The cluster is being deleted; it can be declared again once it is gone.
    #[error("cluster {0} is being deleted; declare it again once its deletion has finished")]
    ClusterDeleting(String),
    #[error("cluster {cluster} has no pool named {pool}")]
    PoolNotFound { cluster: String, pool: String },
    /// No machine the reconcilers know of in the cluster goes by that name,
    /// provider id or address.
    #[error("cluster {cluster} has no machine named {machine} (by name, provider id or address)")]
    MachineNotFound { cluster: String, machine: String },
    /// One change of the manifest would be a stored event over the size limit.
    #[error(
        "the {event_type} event this manifest needs is {size} bytes, over the limit of \
         {limit} bytes for one event (a ClusterDeclared event holds the whole manifest)"
    )]
    ChangeTooLarge {
        event_type: String,
        size: usize,
        limit: usize,
    },
    /// The projection did not catch up with the log in time; retry later.
    #[error("the projection is {behind} events behind the log; try again")]
    ProjectionBehind { behind: u64 },
    /// Deterministic: the cluster had no event at or before that point.
    #[error("cluster {name} did not exist at {point} (seq {seq})")]
    ClusterNotFoundAt {
        name: String,
        point: String,
        seq: u64,
    },
    /// Deterministic until the log grows: the seq is not written yet.
    #[error("seq {seq} is past the head of the log (seq {head})")]
    PointAfterHead { seq: u64, head: u64 },
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Who asks, and with what guarantees, for one command.
#[derive(Debug, Clone)]
pub struct CommandContext {
    pub actor: Actor,
    pub request_id: String,
    /// One id across the whole causal chain this request starts.
    pub correlation: Uuid,
    pub idempotency_key: Option<String>,
    /// Free text: why the change is made.
    pub reason: Option<String>,
    /// When set, what the command's events carry as their cause instead of
    /// the request (a webhook delivery: `Cause::WebhookDelivery`).
    pub cause: Option<Cause>,
}

impl CommandContext {
    /// A new request by `actor`: a fresh request id, which is also the
    /// correlation id of everything the request causes; no key, no reason.
    pub fn new(actor: Actor) -> CommandContext {
        let request_id = Uuid::now_v7();
        CommandContext {
            actor,
            request_id: request_id.to_string(),
            correlation: request_id,
            idempotency_key: None,
            reason: None,
            cause: None,
        }
    }

    /// The key the store records for this request's `Idempotency-Key`:
    /// the client's key under its principal (the actor: with tokens, the
    /// token's name), so one principal's key never answers for another's.
    /// The principal is hashed, so a long actor name does not make the key
    /// longer than the store takes.
    pub fn scoped_idempotency_key(&self) -> Option<String> {
        let key = self.idempotency_key.as_ref()?;
        let mut hasher = Sha256::new();
        hasher.update(b"principal\n");
        hasher.update(self.actor.kind.as_str().as_bytes());
        hasher.update(b"\n");
        hasher.update(self.actor.name.as_bytes());
        let principal: [u8; 32] = hasher.finalize().into();
        Some(format!("{}/{key}", hex::encode(&principal[..16])))
    }

    /// The idempotency this request asks for, bound to `digest`: what the
    /// command is, on what, with what (each command's digest starts with its
    /// own name, so no two commands share one).
    fn idempotency(&self, digest: [u8; 32]) -> Option<Idempotency> {
        self.scoped_idempotency_key()
            .map(|key| Idempotency { key, digest })
    }
}

/// Options of `apply`.
#[derive(Debug, Clone, Copy, Default)]
pub struct ApplyOptions {
    /// Compute the plan, append nothing.
    pub dry_run: bool,
    /// The cluster stream version the caller saw (`If-Match`).
    pub if_match: Option<u64>,
}

/// What `apply` did.
#[derive(Debug, Clone)]
pub struct ApplyOutcome {
    pub cluster: String,
    pub changes: Vec<Change>,
    /// The appended events (empty for a dry run or no change).
    pub events: Vec<Arc<Event>>,
    pub stream_version: u64,
    pub dry_run: bool,
    /// Answered from an earlier request with the same idempotency key.
    pub deduplicated: bool,
}

/// What a lifecycle command did.
#[derive(Debug, Clone)]
pub struct LifecycleOutcome {
    pub cluster: String,
    /// The appended event; None when the cluster was already in that state.
    pub event: Option<Arc<Event>>,
    pub stream_version: u64,
}

// Pages of events are the audit module's; the ledger's queries answer with
// them too, under their old paths.
pub use crate::audit::{EventPage, EventQuery, MAX_PAGE};

pub struct Ledger {
    store: Arc<dyn EventStore>,
    config: LedgerConfig,
    projections: RwLock<Projections>,
    applied: watch::Sender<u64>,
    /// The seq of the newest snapshot taken or loaded (0: none).
    last_snapshot_seq: AtomicU64,
    /// A snapshot is being written; the follower does not start another.
    snapshot_running: AtomicBool,
    /// The seqs of the stored snapshots, ascending, for point-in-time reads.
    snapshot_seqs: RwLock<Vec<u64>>,
}

impl Ledger {
    /// `open_with` the default configuration.
    pub async fn open(store: Arc<dyn EventStore>) -> Result<Arc<Ledger>, StoreError> {
        Ledger::open_with(store, LedgerConfig::default()).await
    }

    /// Loads the newest snapshot that decodes and replays the log after it
    /// (all of it when there is none). The caller then runs `follow`.
    pub async fn open_with(
        store: Arc<dyn EventStore>,
        config: LedgerConfig,
    ) -> Result<Arc<Ledger>, StoreError> {
        let snapshot_seqs = snapshots::readable_seqs(store.as_ref()).await?;
        let (snapshot_seq, mut projections) =
            match snapshots::load_latest(store.as_ref(), &snapshot_seqs).await? {
                Some((seq, projections)) => (seq, projections),
                None => (0, Projections::default()),
            };
        catch_up(&store, &mut projections).await?;
        tracing::info!(
            snapshot_seq,
            applied_seq = projections.applied_seq(),
            "projections loaded"
        );
        let (applied, _) = watch::channel(projections.applied_seq());
        let ledger = Arc::new(Ledger {
            store,
            config,
            projections: RwLock::new(projections),
            applied,
            last_snapshot_seq: AtomicU64::new(snapshot_seq),
            snapshot_running: AtomicBool::new(false),
            snapshot_seqs: RwLock::new(snapshot_seqs),
        });
        // A long replay is worth keeping even if no event arrives soon.
        ledger.snapshot_if_due();
        Ok(ledger)
    }

    pub fn store(&self) -> &Arc<dyn EventStore> {
        &self.store
    }

    /// Folds committed events into the projection until `shutdown`, through a
    /// catch-up subscription from the first seq it has not applied (so events
    /// committed between `open` and now, or missed by a lagging broadcast, are
    /// read from the store). A failed read is retried after a pause; commands
    /// meanwhile time out (see `wait_applied`).
    pub async fn follow(self: Arc<Self>, shutdown: CancellationToken) {
        let mut subscription = Subscription::new(self.store.clone(), self.applied_seq() + 1);
        loop {
            let next = tokio::select! {
                () = shutdown.cancelled() => return,
                next = subscription.next() => next,
            };
            match next {
                Ok(Some(event)) => {
                    let applied = {
                        let mut projections = self.projections.write().expect("projection lock");
                        projections.apply(&event);
                        projections.applied_seq()
                    };
                    self.applied.send_replace(applied);
                    self.snapshot_if_due();
                }
                Ok(None) => return,
                Err(error) => {
                    tracing::error!(%error, "the projection cannot read the log; retrying");
                    tokio::select! {
                        () = shutdown.cancelled() => return,
                        () = tokio::time::sleep(CATCH_UP_RETRY) => {}
                    }
                }
            }
        }
    }

    /// Waits until the projection has folded in `seq`, for at most
    /// `MAX_PROJECTION_WAIT`.
    pub async fn wait_applied(&self, seq: u64) -> Result<(), LedgerError> {
        let mut applied = self.applied.subscribe();
        let waited = tokio::time::timeout(
            MAX_PROJECTION_WAIT,
            applied.wait_for(|applied| *applied >= seq),
        )
        .await;
        match waited {
            // The sender lives as long as self, so the inner wait cannot fail.
            Ok(_) => Ok(()),
            Err(_) => Err(LedgerError::ProjectionBehind {
                behind: seq.saturating_sub(self.applied_seq()),
            }),
        }
    }

    /// Waits until a command's committed events are in the projections, so
    /// its answer is read-your-writes. The change is committed whatever
    /// happens now: a slow projection only delays that, it does not make the
    /// append a failure.
    async fn wait_visible(&self, events: &[Arc<Event>]) {
        if let Some(last) = events.last() {
            if let Err(error) = self.wait_applied(last.seq).await {
                tracing::warn!(%error, seq = last.seq, "answering before the projection caught up");
            }
        }
    }

    pub fn applied_seq(&self) -> u64 {
        *self.applied.borrow()
    }

    pub fn cluster(&self, name: &str) -> Option<ClusterState> {
        self.read(|projections| projections.desired.cluster(name).cloned())
    }

    pub fn clusters(&self) -> Vec<ClusterState> {
        self.read(|projections| projections.desired.clusters().cloned().collect())
    }

    /// What the reconcilers know of a cluster's cloud resources.
    pub fn observed(&self, name: &str) -> Option<ObservedCluster> {
        self.read(|projections| projections.observed.cluster(name).cloned())
    }

    /// Reads the projections, all folded to the same seq, under one lock.
    pub fn read<T>(&self, read: impl FnOnce(&Projections) -> T) -> T {
        read(&self.projections.read().expect("projection lock"))
    }

    /// Declares or updates a cluster: diff against the desired state, then
    /// append the changes. Applying the same manifest twice appends nothing.
    pub async fn apply(
        &self,
        manifest: Manifest,
        options: ApplyOptions,
        context: &CommandContext,
    ) -> Result<ApplyOutcome, LedgerError> {
        let name = manifest.metadata.name.clone();
        let stream = cluster_stream(&name);
        let idempotency = context.idempotency(apply_digest(&manifest));
        if !options.dry_run {
            if let Some(idempotency) = &idempotency {
                if let Some(outcome) = self.replay_idempotent(&name, idempotency).await? {
                    return Ok(outcome);
                }
            }
        }

        let mut attempt = 0;
        loop {
            attempt += 1;
            // See every committed event before diffing, so the expected version
            // is the true current one unless another writer races us.
            self.wait_applied(self.store.head().seq).await?;
            let (current, current_version) = self.read(|projections| {
                (
                    projections.desired.cluster(&name).cloned(),
                    projections.desired.stream_version(&name),
                )
            });
            if current
                .as_ref()
                .is_some_and(|cluster| cluster.deletion_requested)
            {
                return Err(LedgerError::ClusterDeleting(name));
            }
            if let Some(expected) = options.if_match {
                if expected != current_version {
                    return Err(LedgerError::VersionMismatch {
                        cluster: name,
                        expected,
                        current: current_version,
                    });
                }
            }
            let changes = diff(current.as_ref().map(|cluster| &cluster.manifest), &manifest)
                .map_err(LedgerError::Invalid)?;
            let mut outcome = ApplyOutcome {
                cluster: name.clone(),
                changes,
                events: Vec::new(),
                stream_version: current_version,
                dry_run: options.dry_run,
                deduplicated: false,
            };
            let events: Vec<NewEvent> = outcome
                .changes
                .iter()
                .map(|change| {
                    command_event(
                        payload::encode_change(change),
                        request_cause(context),
                        context,
                    )
                })
                .collect();
            if options.dry_run {
                // A plan that the real apply would refuse is no plan.
                self.check_event_sizes(&stream, &events, &outcome.changes)?;
                return Ok(outcome);
            }
            if outcome.changes.is_empty() && idempotency.is_none() {
                return Ok(outcome);
            }
            let expected = if current_version == 0 {
                ExpectedVersion::NoStream
            } else {
                ExpectedVersion::Exact(current_version)
            };
            let request = AppendRequest {
                stream: stream.clone(),
                expected,
                events,
                idempotency: idempotency.clone(),
            };
            match self.store.append(request).await {
                Ok(appended) => {
                    self.wait_visible(&appended.events).await;
                    if appended.deduplicated {
                        // A concurrent request with the same key won the race.
                        outcome.changes = changes_of(&appended.events);
                    }
                    outcome.events = appended.events;
                    outcome.stream_version = appended.stream_version;
                    outcome.deduplicated = appended.deduplicated;
                    return Ok(outcome);
                }
                Err(StoreError::WrongExpectedVersion { current, .. })
                    if options.if_match.is_none() && attempt < MAX_CONFLICT_RETRIES =>
                {
                    tracing::debug!(cluster = %name, current, attempt, "apply lost a race; retrying");
                }
                Err(StoreError::WrongExpectedVersion { current, .. }) => {
                    return Err(LedgerError::VersionMismatch {
                        cluster: name,
                        expected: current_version,
                        current,
                    })
                }
                Err(StoreError::EventTooLarge { index, size, limit }) => {
                    let event_type = outcome
                        .changes
                        .get(index)
                        .map_or("", |change| payload::change_type(change));
                    return Err(LedgerError::ChangeTooLarge {
                        event_type: event_type.to_string(),
                        size,
                        limit,
                    });
                }
                Err(error) => return Err(error.into()),
            }
        }
    }

    /// Sets a pool's replica count: a `PoolScaled` change through `apply`.
    pub async fn scale(
        &self,
        name: &str,
        pool: &str,
        replicas: i64,
        if_match: Option<u64>,
        context: &CommandContext,
    ) -> Result<ApplyOutcome, LedgerError> {
        self.scale_with(name, pool, |_| replicas, if_match, context)
            .await
    }

    /// Sets a pool's replica count to `replicas(current count)`, read and
    /// appended at one cluster version (read again after a lost race when the
    /// caller gave no `if_match`). A target equal to the current count
    /// appends nothing, but records the idempotency key if there is one.
    pub async fn scale_with(
        &self,
        name: &str,
        pool: &str,
        replicas: impl Fn(i64) -> i64,
        if_match: Option<u64>,
        context: &CommandContext,
    ) -> Result<ApplyOutcome, LedgerError> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            self.wait_applied(self.store.head().seq).await?;
            let current = self
                .cluster(name)
                .ok_or_else(|| LedgerError::ClusterNotFound(name.to_string()))?;
            let mut manifest = current.manifest;
            let Some(target) = manifest.spec.pools.iter_mut().find(|p| p.name == pool) else {
                return Err(LedgerError::PoolNotFound {
                    cluster: name.to_string(),
                    pool: pool.to_string(),
                });
            };
            target.replicas = replicas(target.replicas);
            let errors = validate(&manifest);
            if !errors.is_empty() {
                return Err(LedgerError::Invalid(errors));
            }
            // The manifest was read at this version: applying it at another
            // would undo whatever changed in between, so it is pinned.
            let options = ApplyOptions {
                dry_run: false,
                if_match: Some(if_match.unwrap_or(current.stream_version)),
            };
            match self.apply(manifest, options, context).await {
                Err(LedgerError::VersionMismatch { .. })
                    if if_match.is_none() && attempt < MAX_CONFLICT_RETRIES => {}
                result => return result,
            }
        }
    }

    /// Appends a lifecycle command (pause, resume, deletion request) unless the
    /// cluster is already in the state it asks for.
    ///
    /// With an idempotency key, a command that ran before under the same key
    /// answers with what it appended then (or nothing, if it found the cluster
    /// already in that state), and the key is recorded even when nothing is
    /// appended, so that a retry never acts on a state that changed since.
    pub async fn lifecycle(
        &self,
        name: &str,
        command: Lifecycle,
        context: &CommandContext,
    ) -> Result<LifecycleOutcome, LedgerError> {
        let digest = lifecycle_digest(name, &command);
        self.lifecycle_bound_to(name, command, digest, context)
            .await
    }

    /// `lifecycle`, with the key bound to `digest` (a machine replacement
    /// binds it to the machine as asked, before it is resolved).
    async fn lifecycle_bound_to(
        &self,
        name: &str,
        command: Lifecycle,
        digest: [u8; 32],
        context: &CommandContext,
    ) -> Result<LifecycleOutcome, LedgerError> {
        let stream = cluster_stream(name);
        let idempotency = context.idempotency(digest);
        if let Some(idempotency) = &idempotency {
            if let Some(outcome) = self.replay_idempotent(name, idempotency).await? {
                return Ok(LifecycleOutcome {
                    cluster: name.to_string(),
                    event: outcome.events.into_iter().next(),
                    stream_version: outcome.stream_version,
                });
            }
        }
        let mut attempt = 0;
        loop {
            attempt += 1;
            self.wait_applied(self.store.head().seq).await?;
            let current = self
                .cluster(name)
                .ok_or_else(|| LedgerError::ClusterNotFound(name.to_string()))?;
            let already = match command {
                Lifecycle::ClusterPaused(_) => current.paused,
                Lifecycle::ClusterResumed(_) => !current.paused,
                Lifecycle::ClusterDeletionRequested(_) => current.deletion_requested,
                Lifecycle::ClusterDeletionCancelled(_) => !current.deletion_requested,
                // Written by `rollback` together with its changes, never alone.
                Lifecycle::RollbackRequested(_) => false,
                Lifecycle::MachineReplacementRequested(ref replacement) => {
                    current.replacements.get(&replacement.machine) == Some(&replacement.provider_id)
                }
            };
            if already && idempotency.is_none() {
                return Ok(LifecycleOutcome {
                    cluster: name.to_string(),
                    event: None,
                    stream_version: current.stream_version,
                });
            }
            let events = if already {
                Vec::new()
            } else {
                vec![command_event(
                    payload::encode_lifecycle(&command),
                    request_cause(context),
                    context,
                )]
            };
            let request = AppendRequest {
                stream: stream.clone(),
                expected: ExpectedVersion::Exact(current.stream_version),
                events,
                idempotency: idempotency.clone(),
            };
            match self.store.append(request).await {
                Ok(appended) => {
                    self.wait_visible(&appended.events).await;
                    return Ok(LifecycleOutcome {
                        cluster: name.to_string(),
                        event: appended.events.into_iter().next(),
                        stream_version: appended.stream_version,
                    });
                }
                Err(StoreError::WrongExpectedVersion { .. }) if attempt < MAX_CONFLICT_RETRIES => {}
                Err(error) => return Err(error.into()),
            }
        }
    }

    pub async fn pause(
        &self,
        name: &str,
        context: &CommandContext,
    ) -> Result<LifecycleOutcome, LedgerError> {
        self.lifecycle(name, Lifecycle::ClusterPaused(ClusterPaused {}), context)
            .await
    }

    pub async fn resume(
        &self,
        name: &str,
        context: &CommandContext,
    ) -> Result<LifecycleOutcome, LedgerError> {
        self.lifecycle(name, Lifecycle::ClusterResumed(ClusterResumed {}), context)
            .await
    }

    pub async fn request_deletion(
        &self,
        name: &str,
        context: &CommandContext,
    ) -> Result<LifecycleOutcome, LedgerError> {
        let command = Lifecycle::ClusterDeletionRequested(ClusterDeletionRequested {});
        self.lifecycle(name, command, context).await
    }

    /// Asks for one machine to be replaced: `machine` is its name
    /// (`workers-2`), its provider id or its private address, resolved in
    /// the observed projection to the machine's name and current provider
    /// id, which the `MachineReplacementRequested` event records. A repeat
    /// request for the same incarnation of the machine appends nothing.
    pub async fn replace_machine(
        &self,
        cluster: &str,
        machine: &str,
        context: &CommandContext,
    ) -> Result<LifecycleOutcome, LedgerError> {
        // A retry under the same key gets the first answer, before the
        // machine is looked up: by then the replacement may have given it a
        // new provider id, or removed the one the request named.
        let digest = replace_digest(cluster, machine);
        if let Some(idempotency) = context.idempotency(digest) {
            if let Some(record) = self.store.idempotency_record(&idempotency.key).await? {
                if record.digest != idempotency.digest {
                    return Err(StoreError::IdempotencyKeyReused {
                        key: context.idempotency_key.clone().unwrap_or_default(),
                    }
                    .into());
                }
                self.wait_applied(record.last_seq).await?;
                let appended = record.last_seq + 1 > record.first_seq;
                let events = if appended {
                    self.store.read(record.first_seq - 1, 1).await?
                } else {
                    Vec::new()
                };
                return Ok(LifecycleOutcome {
                    cluster: cluster.to_string(),
                    event: events.into_iter().next(),
                    stream_version: record.stream_version,
                });
            }
        }
        self.wait_applied(self.store.head().seq).await?;
        let (desired, observed) = self.read(|projections| {
            (
                projections.desired.cluster(cluster).cloned(),
                projections.observed.cluster(cluster).cloned(),
            )
        });
        let desired = desired.ok_or_else(|| LedgerError::ClusterNotFound(cluster.to_string()))?;
        if desired.deletion_requested {
            return Err(LedgerError::ClusterDeleting(cluster.to_string()));
        }
        let resolved = observed
            .as_ref()
            .and_then(|observed| resolve_machine(observed, machine));
        let Some((name, provider_id)) = resolved else {
            return Err(LedgerError::MachineNotFound {
                cluster: cluster.to_string(),
                machine: machine.to_string(),
            });
        };
        let command = Lifecycle::MachineReplacementRequested(MachineReplacementRequested {
            machine: name,
            provider_id,
        });
        self.lifecycle_bound_to(cluster, command, digest, context)
            .await
    }

    /// Refuses a change whose stored event would be over the store's limit,
    /// as the store itself would at append time.
    fn check_event_sizes(
        &self,
        stream: &str,
        events: &[NewEvent],
        changes: &[Change],
    ) -> Result<(), LedgerError> {
        let limit = self.store.max_record_bytes();
        for (event, change) in events.iter().zip(changes) {
            let size = Event::record_len_upper_bound(event, stream);
            if size > limit {
                return Err(LedgerError::ChangeTooLarge {
                    event_type: payload::change_type(change).to_string(),
                    size,
                    limit,
                });
            }
        }
        Ok(())
    }

    /// The original outcome of an idempotency key, if it was used for this request.
    async fn replay_idempotent(
        &self,
        name: &str,
        idempotency: &Idempotency,
    ) -> Result<Option<ApplyOutcome>, LedgerError> {
        let Some(record) = self.store.idempotency_record(&idempotency.key).await? else {
            return Ok(None);
        };
        if record.digest != idempotency.digest {
            return Err(StoreError::IdempotencyKeyReused {
                key: client_key(&idempotency.key).to_string(),
            }
            .into());
        }
        let count = (record.last_seq + 1).saturating_sub(record.first_seq) as usize;
        self.wait_applied(record.last_seq).await?;
        let events = if count == 0 {
            Vec::new()
        } else {
            self.store.read(record.first_seq - 1, count).await?
        };
        Ok(Some(ApplyOutcome {
            cluster: name.to_string(),
            changes: changes_of(&events),
            events,
            stream_version: record.stream_version,
            dry_run: false,
            deduplicated: true,
        }))
    }

    /// A cluster's events, oldest first, after a stream version.
    pub async fn history(
        &self,
        name: &str,
        after_version: u64,
        limit: usize,
    ) -> Result<EventPage, LedgerError> {
        let stream = cluster_stream(name);
        let current = self.store.stream_version(&stream).await?;
        if current == 0 {
            return Err(LedgerError::ClusterNotFound(name.to_string()));
        }
        let events = self
            .store
            .read_stream(&stream, after_version, limit.clamp(1, MAX_PAGE))
            .await?;
        let next_after = events
            .last()
            .map(|event| event.version)
            .filter(|version| *version < current);
        Ok(EventPage { events, next_after })
    }

    /// A page of the log, filtered (see `audit`).
    pub async fn events(&self, query: &EventQuery) -> Result<EventPage, LedgerError> {
        Ok(crate::audit::events(self.store.as_ref(), query).await?)
    }

    /// The causal chain of an event, both ways (see `audit::trace`); None
    /// when the log has no event with this id.
    pub async fn trace(&self, id: Uuid) -> Result<Option<crate::audit::Trace>, LedgerError> {
        Ok(crate::audit::trace(self.store.as_ref(), id, Default::default()).await?)
    }

    /// Appends reconciler events to a cluster's `reconcile/<name>` stream, each
    /// with its cause, and waits until the projections have folded them in.
    /// They are durable when this returns.
    pub async fn record(
        &self,
        cluster: &str,
        correlation: Uuid,
        events: Vec<(ReconcileEvent, Cause)>,
    ) -> Result<Vec<Arc<Event>>, LedgerError> {
        if events.is_empty() {
            return Ok(Vec::new());
        }
        let events = events
            .into_iter()
            .map(|(event, cause)| {
                let actor = Actor {
                    kind: ActorKind::Reconciler,
                    name: RECONCILER_NAME.to_string(),
                };
                NewEvent::new(payload::encode_reconcile(&event), actor, cause, correlation)
            })
            .collect();
        let request = AppendRequest {
            stream: reconcile_stream(cluster),
            expected: ExpectedVersion::Any,
            events,
            idempotency: None,
        };
        let appended = self.store.append(request).await?;
        if let Some(last) = appended.events.last() {
            self.wait_applied(last.seq).await?;
        }
        Ok(appended.events)
    }

    /// Appends one event of the webhook receiver `hook` to its `hook/<name>`
    /// stream under `idempotency`, by `Actor::webhook(hook)`: in the chain
    /// `correlation`, or starting a chain of its own when that is None.
    /// It answers as soon as the event is durable, without waiting for the
    /// projections (they fold no webhook event, and a sender waits on this
    /// answer), and returns the store's own error, which the inbox tells
    /// apart (a reused delivery id, a delivery too large).
    pub async fn record_webhook(
        &self,
        hook: &str,
        encoded: payload::EncodedPayload,
        cause: Cause,
        correlation: Option<Uuid>,
        idempotency: Idempotency,
    ) -> Result<AppendOutcome, StoreError> {
        let actor = Actor::webhook(hook);
        let event = match correlation {
            Some(correlation) => NewEvent::new(encoded, actor, cause, correlation),
            None => NewEvent::new_root(encoded, actor, cause),
        };
        let request = AppendRequest {
            stream: hook_stream(hook),
            expected: ExpectedVersion::Any,
            events: vec![event],
            idempotency: Some(idempotency),
        };
        self.store.append(request).await
    }

    pub async fn verify(&self) -> Result<VerifyReport, StoreError> {
        self.store.verify().await
    }
}

async fn catch_up(store: &Arc<dyn EventStore>, state: &mut Projections) -> Result<(), StoreError> {
    // Up to the head as it is now; the follower's subscription takes the rest.
    let until = store.head().seq;
    let mut pages = crate::store::read_ahead::read_ahead(store.clone(), state.applied_seq(), until);
    while let Some(page) = pages.recv().await {
        for event in &page? {
            state.apply(event);
        }
    }
    Ok(())
}

/// The name and provider id of the observed machine that `machine` names:
/// by name first, then by provider id, then by private address.
fn resolve_machine(observed: &ObservedCluster, machine: &str) -> Option<(String, String)> {
    let machines: Vec<&CloudResource> = observed
        .resources
        .values()
        .filter(|resource| resource.key().kind == ResourceKind::Machine)
        .collect();
    let matchers: [fn(&CloudResource, &str) -> bool; 3] = [
        |resource, machine| resource.spec.name() == machine,
        |resource, machine| resource.provider_id == machine,
        |resource, machine| resource.address.as_deref() == Some(machine),
    ];
    matchers.iter().find_map(|matches| {
        machines
            .iter()
            .find(|resource| matches(resource, machine))
            .map(|resource| {
                (
                    resource.spec.name().to_string(),
                    resource.provider_id.clone(),
                )
            })
    })
}

/// A command's event: the context's actor and correlation, with `cause`.
fn command_event(
    encoded: payload::EncodedPayload,
    cause: Cause,
    context: &CommandContext,
) -> NewEvent {
    NewEvent::new(encoded, context.actor.clone(), cause, context.correlation)
}

/// The cause of a command's own events: the context's `cause` when set,
/// otherwise the request.
fn request_cause(context: &CommandContext) -> Cause {
    if let Some(cause) = &context.cause {
        return cause.clone();
    }
    Cause::Request {
        request_id: context.request_id.clone(),
        idempotency_key: context.idempotency_key.clone(),
        reason: context.reason.clone(),
    }
}

/// The desired-state changes carried by stored events.
pub fn changes_of(events: &[Arc<Event>]) -> Vec<Change> {
    events
        .iter()
        .filter_map(|event| {
            match payload::decode(&event.event_type, event.schema, &event.payload) {
                Ok(Payload::Change(change)) => Some(*change),
                _ => None,
            }
        })
        .collect()
}

/// What an idempotency key of a lifecycle command is bound to: the cluster
/// and the command.
fn lifecycle_digest(name: &str, command: &Lifecycle) -> [u8; 32] {
    let encoded = payload::encode_lifecycle(command);
    let mut hasher = Sha256::new();
    hasher.update(b"lifecycle\n");
    hasher.update(name.as_bytes());
    hasher.update(b"\n");
    hasher.update(encoded.event_type.as_bytes());
    hasher.update(b"\n");
    hasher.update(&encoded.bytes);
    hasher.finalize().into()
}

/// What an idempotency key of a machine replacement is bound to: the
/// cluster and the machine as the request named it.
fn replace_digest(cluster: &str, machine: &str) -> [u8; 32] {
    let mut hasher = Sha256::new();
    hasher.update(b"replace\n");
    hasher.update(cluster.as_bytes());
    hasher.update(b"\n");
    hasher.update(machine.as_bytes());
    hasher.finalize().into()
}

/// The client's part of a scoped key ([`CommandContext::scoped_idempotency_key`]).
/// Any other key (the webhook inbox's own) is returned as it is.
pub fn client_key(scoped: &str) -> &str {
    match scoped.split_once('/') {
        Some((principal, key))
            if principal.len() == 32 && principal.bytes().all(|byte| byte.is_ascii_hexdigit()) =>
        {
            key
        }
        _ => scoped,
    }
}

/// What an idempotency key of an apply is bound to: the normalized manifest.
fn apply_digest(manifest: &Manifest) -> [u8; 32] {
    let mut hasher = Sha256::new();
    hasher.update(b"apply\n");
    hasher.update(serde_json::to_vec(manifest).expect("a manifest always serializes"));
    hasher.finalize().into()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{MachineSpec, ResourceSpec, SubnetSpec, WebhookEvent, WebhookReceived};

    #[test]
    fn a_scoped_key_is_the_clients_key_under_its_principal() {
        let context = |kind: ActorKind, name: &str| CommandContext {
            idempotency_key: Some("deploy/1".into()),
            ..CommandContext::new(Actor {
                kind,
                name: name.into(),
            })
        };
        let alice = context(ActorKind::User, "alice")
            .scoped_idempotency_key()
            .unwrap();
        let bob = context(ActorKind::User, "bob")
            .scoped_idempotency_key()
            .unwrap();
        let system_alice = context(ActorKind::System, "alice")
            .scoped_idempotency_key()
            .unwrap();
        assert_ne!(alice, bob);
        assert_ne!(alice, system_alice);
        assert_eq!(client_key(&alice), "deploy/1");
        // However long the name, the key stays within what the store takes.
        let long = context(ActorKind::User, &"x".repeat(10_000))
            .scoped_idempotency_key()
            .unwrap();
        assert_eq!(long.len(), alice.len());
        // The inbox's own keys are not scoped, and are shown as they are.
        assert_eq!(client_key("hook/github/push-2/1"), "hook/github/push-2/1");
        let without_key = CommandContext::new(Actor {
            kind: ActorKind::User,
            name: "alice".into(),
        });
        assert_eq!(without_key.scoped_idempotency_key(), None);
    }

    fn machine(name: &str, provider_id: &str, address: &str) -> CloudResource {
        CloudResource {
            provider_id: provider_id.into(),
            cluster: "c".into(),
            token: format!("c/machine/{name}/0"),
            spec: ResourceSpec::Machine(MachineSpec {
                name: name.into(),
                pool: "workers".into(),
                role: "worker".into(),
                machine_type: "m5.large".into(),
                image: "ubuntu-24.04".into(),
                subnet: "a".into(),
                kubernetes_version: "1.31.2".into(),
            }),
            address: Some(address.into()),
        }
    }

    #[test]
    fn a_machine_is_found_by_name_provider_id_or_address() {
        let mut observed = ObservedCluster::default();
        for resource in [
            machine("workers-0", "sim-m-1", "10.0.1.4"),
            machine("workers-1", "sim-m-2", "10.0.2.5"),
        ] {
            observed.resources.insert(resource.key(), resource);
        }
        let subnet = CloudResource {
            provider_id: "sim-subnet-3".into(),
            cluster: "c".into(),
            token: "c/subnet/a/0".into(),
            spec: ResourceSpec::Subnet(SubnetSpec {
                name: "a".into(),
                cidr: "10.0.1.0/24".into(),
                zone: None,
            }),
            address: None,
        };
        observed.resources.insert(subnet.key(), subnet);
        let found = |reference: &str| resolve_machine(&observed, reference);
        let workers_1 = Some(("workers-1".to_string(), "sim-m-2".to_string()));
        assert_eq!(found("workers-1"), workers_1);
        assert_eq!(found("sim-m-2"), workers_1);
        assert_eq!(found("10.0.2.5"), workers_1);
        assert_eq!(
            found("10.0.1.4"),
            Some(("workers-0".to_string(), "sim-m-1".to_string()))
        );
        // Only machines are replaced, and an unknown reference finds nothing.
        assert_eq!(found("a"), None);
        assert_eq!(found("sim-subnet-3"), None);
        assert_eq!(found("workers-7"), None);
    }

    #[tokio::test]
    async fn a_webhook_record_is_keyed_and_answers_without_the_projections() {
        let dir = tempfile::tempdir().unwrap();
        let store = crate::store::open(crate::store::StoreConfig::new(dir.path())).unwrap();
        // No follower runs, so the projections never move: a record that
        // waited for them would not answer.
        let ledger = Ledger::open(store).await.unwrap();
        let received = || {
            payload::encode_webhook(&WebhookEvent::WebhookReceived(WebhookReceived {
                hook: "github".into(),
                delivery: "d-1".into(),
                digest: "00".into(),
                kind: "github".into(),
                event: "push".into(),
                request: "{}".into(),
            }))
        };
        let cause = || Cause::Webhook {
            hook: "github".into(),
            delivery: "d-1".into(),
        };
        let key = |digest: u8| Idempotency {
            key: "hook/github/delivery/d-1".into(),
            digest: [digest; 32],
        };
        let first = ledger
            .record_webhook("github", received(), cause(), None, key(1))
            .await
            .unwrap();
        let event = &first.events[0];
        assert_eq!(event.stream, "hook/github");
        assert_eq!(event.actor, Actor::webhook("github"));
        assert_eq!(
            event.correlation, event.id,
            "a delivery starts its own chain"
        );
        assert!(!first.deduplicated);
        assert_eq!(ledger.applied_seq(), 0);
        // The same key and digest answer with the first record; another
        // digest is the store's own refusal, for the inbox to map.
        let again = ledger
            .record_webhook("github", received(), cause(), None, key(1))
            .await
            .unwrap();
        assert!(again.deduplicated);
        assert_eq!(again.events[0].id, event.id);
        let reused = ledger
            .record_webhook("github", received(), cause(), None, key(2))
            .await;
        assert!(matches!(
            reused,
            Err(StoreError::IdempotencyKeyReused { .. })
        ));
        // An event of a chain keeps the chain's correlation.
        let correlation = Uuid::now_v7();
        let next = Idempotency {
            key: "hook/github/processed/d-1".into(),
            digest: [3; 32],
        };
        let processed = ledger
            .record_webhook("github", received(), cause(), Some(correlation), next)
            .await
            .unwrap();
        assert_eq!(processed.events[0].correlation, correlation);
    }
}
