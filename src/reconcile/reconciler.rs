//! The executor: workers that take clusters off the work queue and reconcile
//! them, one pass at a time.
//!
//! One pass over one cluster (`Reconciler::reconcile`):
//!
//! 1. Paused: set the Paused condition and stop. No provider calls at all.
//! 2. Resolve actions in flight (an `ActionStarted` without an outcome, left
//!    by a crash or a failed append): ask the provider about the token
//!    (`lookup` for a create, `describe` for a delete) and record what it says.
//!    Never create again to find out.
//! 3. Resync when due: list the cluster's resources and record
//!    `DriftDetected` for each difference. A listing may lag, so a resource
//!    missing from it (or one it shows that the log does not know) is
//!    confirmed with a consistent `describe` first.
//! 4. `plan()` and execute phase by phase (deletions in reverse dependency
//!    order, then creations), actions of a phase concurrently, bounded per
//!    cluster and overall. Each action: append `ActionStarted` (durable), call
//!    the provider with the token, append `ActionSucceeded`/`ActionFailed`.
//!    A phase with a failure ends the pass.
//! 5. A cluster being deleted whose resources are all gone gets `ClusterDeleted`.
//! 6. Conditions are recomputed, and each one that changed status or reason is
//!    recorded as `ConditionChanged`.
//!
//! The pass returns when to look again (kube-rs style): at once when work
//! remains, after a backoff when actions failed, at the resync interval when
//! converged. Consecutive passes with failures and no progress make the
//! cluster Degraded; a pass without failures clears it.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::sync::Semaphore;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use uuid::Uuid;

use super::plan::{plan, PlanInput, PlannedAction};
use super::queue::{Backoff, WorkQueue};
use crate::event::{ActorKind, Cause};
use crate::ledger::{Ledger, LedgerError};
use crate::metrics::{ActionLabels, ReconcileMetrics};
use crate::model::{
    Action, ActionFailed, ActionStarted, ActionSucceeded, ClusterDeleted, ConditionChanged,
    ConditionType, DriftDetected, ReconcileEvent,
};
use crate::projection::{
    ClusterState, ObservedCluster, CLUSTER_STREAM_PREFIX, RECONCILE_STREAM_PREFIX,
};
use crate::provider::{Provider, ProviderError, Providers};
use crate::store::Subscription;

/// How the reconcilers run. See `[reconcile]` in the config docs.
#[derive(Debug, Clone)]
pub struct ReconcilerConfig {
    /// Clusters reconciled at once.
    pub workers: usize,
    /// Provider calls in flight at once, over all clusters.
    pub concurrency: usize,
    /// Provider calls in flight at once for one cluster.
    pub cluster_concurrency: usize,
    /// How often a converged cluster is observed for drift.
    pub resync: Duration,
    pub backoff: Backoff,
    /// Consecutive failing passes (failures and no progress) before Degraded.
    pub degraded_after_failures: u32,
}

/// What a pass tells its worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Requeue {
    /// Work remains that can go on at once.
    Now,
    /// Look again after this long.
    After(Duration),
    /// Nothing to do until an event about the cluster arrives.
    OnEvent,
}

/// Per-cluster memory of the executor. Not part of any projection: it only
/// paces the work, and a restart starting from zero is harmless.
#[derive(Debug, Default)]
struct ClusterMemory {
    failing_passes: u32,
    last_resync: Option<Instant>,
    last_error: Option<String>,
}

pub struct Reconciler {
    ledger: Arc<Ledger>,
    providers: Providers,
    config: ReconcilerConfig,
    queue: Arc<WorkQueue>,
    global: Arc<Semaphore>,
    memory: Mutex<HashMap<String, ClusterMemory>>,
    metrics: ReconcileMetrics,
    /// The last seq the feeder has taken in.
    processed_seq: AtomicU64,
    jitter: Mutex<StdRng>,
}

/// What a pass's actions record as their origin, and what the plan assumed.
#[derive(Clone, Copy)]
struct PassOrigin<'a> {
    correlation: Uuid,
    /// The desired-state event the pass acts on.
    cause: &'a Cause,
    /// Whether the plan tears the cluster down.
    deleting: bool,
}

#[derive(Debug, Default)]
struct PassReport {
    succeeded: usize,
    failed: usize,
    any_permanent: bool,
    last_error: Option<String>,
}

impl Reconciler {
    pub fn new(
        ledger: Arc<Ledger>,
        providers: Providers,
        config: ReconcilerConfig,
        metrics: ReconcileMetrics,
    ) -> Arc<Reconciler> {
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |elapsed| elapsed.as_nanos() as u64);
        Arc::new(Reconciler {
            ledger,
            providers,
            global: Arc::new(Semaphore::new(config.concurrency.max(1))),
            config,
            queue: WorkQueue::new(),
            memory: Mutex::new(HashMap::new()),
            metrics,
            processed_seq: AtomicU64::new(0),
            jitter: Mutex::new(StdRng::seed_from_u64(seed)),
        })
    }

    /// Starts the feeder and the workers; they stop when `shutdown` is
    /// cancelled (a pass in progress starts no new action and finishes the
    /// ones it started).
    pub fn start(self: &Arc<Self>, tasks: &TaskTracker, shutdown: CancellationToken) {
        tasks.spawn(self.clone().feed(shutdown.clone()));
        for _ in 0..self.config.workers.max(1) {
            tasks.spawn(self.clone().work(shutdown.clone()));
        }
    }

    /// The last seq taken in by the feeder.
    pub fn processed_seq(&self) -> u64 {
        self.processed_seq.load(Ordering::Relaxed)
    }

    /// Reconciler lag: the head seq minus the last seq up to which every
    /// event's cluster has been through a pass that began after the event.
    pub fn lag(&self) -> u64 {
        let head = self.ledger.store().head().seq;
        let reconciled = match self.queue.oldest_unreconciled() {
            Some(oldest) => oldest - 1,
            None => self.processed_seq(),
        };
        head.saturating_sub(reconciled)
    }

    fn update_gauges(&self) {
        self.metrics.lag_events.set(self.lag() as i64);
        self.metrics.queue_depth.set(self.queue.depth() as i64);
    }

    /// Queues every known cluster, then every cluster an event names.
    async fn feed(self: Arc<Self>, shutdown: CancellationToken) {
        let from = self.ledger.applied_seq();
        let names: Vec<String> = self.ledger.read(|projections| {
            let mut names: Vec<String> = projections
                .desired
                .clusters()
                .map(|cluster| cluster.manifest.metadata.name.clone())
                .collect();
            names.extend(
                projections
                    .observed
                    .clusters()
                    .filter(|(_, observed)| !observed.in_flight.is_empty())
                    .map(|(name, _)| name.clone()),
            );
            names
        });
        for name in names {
            self.queue.add(&name);
        }
        self.processed_seq.store(from, Ordering::Relaxed);
        let mut subscription = Subscription::new(self.ledger.store().clone(), from + 1);
        loop {
            let next = tokio::select! {
                () = shutdown.cancelled() => break,
                next = subscription.next() => next,
            };
            match next {
                Ok(Some(event)) => {
                    tracing::debug!(seq = event.seq, stream = %event.stream, "reconciler feeder");
                    // The reconciler's own events need no new pass: the pass
                    // that wrote them decides when to look again.
                    if event.actor.kind != ActorKind::Reconciler {
                        let name = event
                            .stream
                            .strip_prefix(CLUSTER_STREAM_PREFIX)
                            .or_else(|| event.stream.strip_prefix(RECONCILE_STREAM_PREFIX));
                        if let Some(name) = name {
                            self.queue.add_event(name, event.seq);
                        }
                    }
                    self.processed_seq.store(event.seq, Ordering::Relaxed);
                    self.update_gauges();
                }
                Ok(None) => break,
                Err(error) => {
                    tracing::error!(%error, "the reconciler cannot read the log; retrying");
                    tokio::select! {
                        () = shutdown.cancelled() => break,
                        () = tokio::time::sleep(Duration::from_millis(500)) => {}
                    }
                }
            }
        }
        self.queue.close();
    }

    async fn work(self: Arc<Self>, shutdown: CancellationToken) {
        while let Some(name) = self.queue.next().await {
            self.metrics.queue_depth.set(self.queue.depth() as i64);
            let started = std::time::Instant::now();
            let requeue = match self.reconcile(&name, &shutdown).await {
                Ok(requeue) => requeue,
                Err(error) => {
                    tracing::warn!(cluster = %name, %error, "reconcile pass failed");
                    let failures = self.note_pass(&name, false, Some(error.to_string()));
                    Requeue::After(self.backoff(failures))
                }
            };
            self.metrics
                .pass_seconds
                .observe(started.elapsed().as_secs_f64());
            self.queue.done(&name);
            if !shutdown.is_cancelled() {
                match requeue {
                    Requeue::Now => self.queue.add(&name),
                    Requeue::After(delay) => self.queue.add_after(&name, delay),
                    Requeue::OnEvent => {}
                }
            }
            self.update_gauges();
        }
    }

    /// The backoff after `failures` failing passes, with fresh jitter.
    fn backoff(&self, failures: u32) -> Duration {
        let jitter = self.jitter.lock().expect("jitter lock").random::<f64>();
        self.config.backoff.delay(failures.max(1), jitter)
    }

    /// Records how a pass went; returns the consecutive failing passes. A
    /// cluster first seen since start-up that the log says is Degraded starts
    /// out counted as failing, so a restart during an outage does not clear it.
    fn note_pass(&self, name: &str, progressed: bool, error: Option<String>) -> u32 {
        let logged_degraded = self.ledger.read(|projections| {
            let observed = projections.observed.cluster(name);
            observed
                .and_then(|observed| observed.conditions.get(&ConditionType::Degraded))
                .is_some_and(|degraded| degraded.status && degraded.reason == "ActionsFailing")
        });
        let mut memory = self.memory.lock().expect("memory lock");
        let cluster = memory
            .entry(name.to_string())
            .or_insert_with(|| ClusterMemory {
                failing_passes: if logged_degraded {
                    self.config.degraded_after_failures
                } else {
                    0
                },
                ..ClusterMemory::default()
            });
        match error {
            None => cluster.failing_passes = 0,
            Some(_) if progressed => {}
            Some(_) => cluster.failing_passes += 1,
        }
        if let Some(error) = error {
            cluster.last_error = Some(error);
        }
        cluster.failing_passes
    }

    /// One pass over one cluster. See the module docs.
    pub async fn reconcile(
        &self,
        name: &str,
        shutdown: &CancellationToken,
    ) -> Result<Requeue, LedgerError> {
        // The feeder may hear of an event before the projections fold it in.
        self.ledger.wait_applied(self.processed_seq()).await?;
        let desired = self.ledger.cluster(name);
        tracing::debug!(cluster = %name, found = desired.is_some(), "reconcile pass");
        let Some(desired) = desired else {
            return Ok(Requeue::OnEvent);
        };
        let cause = Cause::Event {
            seq: desired.updated_seq,
            id: desired.updated_id,
        };
        let correlation = desired.correlation;
        if desired.paused {
            self.update_conditions(name, &desired, correlation, &cause, None)
                .await?;
            return Ok(Requeue::OnEvent);
        }
        let provider_name = &desired.manifest.spec.provider;
        let Some(provider) = self.providers.get(provider_name).cloned() else {
            let error = format!("no provider named {provider_name} is configured in this daemon");
            let failures = self.note_pass(name, false, Some(error));
            self.update_conditions(name, &desired, correlation, &cause, None)
                .await?;
            return Ok(Requeue::After(
                self.backoff(failures).max(self.config.resync),
            ));
        };

        let observed = self.observed(name);
        self.resolve_in_flight(name, provider.as_ref(), &observed, correlation, shutdown)
            .await?;
        let unresolved = self.ledger.read(|projections| {
            projections
                .observed
                .cluster(name)
                .is_some_and(|observed| !observed.in_flight.is_empty())
        });

        if self.resync_due(name) && !shutdown.is_cancelled() {
            let observed = self.observed(name);
            match self
                .detect_drift(name, provider.as_ref(), &observed, shutdown)
                .await
            {
                Ok(drift) => {
                    self.metrics.drift_detected.inc_by(drift.len() as u64);
                    let events = drift
                        .into_iter()
                        .map(|drift| (ReconcileEvent::DriftDetected(drift), cause.clone()))
                        .collect();
                    self.ledger.record(name, correlation, events).await?;
                    self.memory
                        .lock()
                        .expect("memory lock")
                        .entry(name.to_string())
                        .or_default()
                        .last_resync = Some(Instant::now());
                }
                Err(error) => {
                    tracing::warn!(cluster = %name, %error, "resync failed");
                }
            }
        }

        let observed = self.observed(name);
        let actions = plan(self.plan_input(name, &desired, &observed));
        tracing::debug!(cluster = %name, actions = actions.len(), "planned");
        let origin = PassOrigin {
            correlation,
            cause: &cause,
            deleting: desired.deletion_requested,
        };
        let report = self
            .execute(name, provider.clone(), actions, origin, shutdown)
            .await?;

        let observed = self.observed(name);
        let remaining = plan(self.plan_input(name, &desired, &observed));
        if desired.deletion_requested
            && !shutdown.is_cancelled()
            && !Self::plan_outdated(&self.ledger, name, true)
            && remaining.is_empty()
            && observed.resources.is_empty()
            && observed.orphans.is_empty()
            && observed.in_flight.is_empty()
        {
            // Before the last word, make sure of the doubts: a failed create
            // may have made its resource anyway, and a listing shows what
            // else the cloud holds for this cluster.
            let leftovers = self.leftovers(name, provider.as_ref(), &observed).await;
            match leftovers {
                Ok(leftovers) if leftovers.is_empty() => {
                    let events = vec![(ReconcileEvent::ClusterDeleted(ClusterDeleted {}), cause)];
                    self.ledger.record(name, correlation, events).await?;
                    self.note_pass(name, true, None);
                    return Ok(Requeue::OnEvent);
                }
                Ok(leftovers) => {
                    let events = leftovers
                        .into_iter()
                        .map(|drift| (ReconcileEvent::DriftDetected(drift), cause.clone()))
                        .collect();
                    self.ledger.record(name, correlation, events).await?;
                    return Ok(Requeue::Now);
                }
                Err(error) => {
                    let failures = self.note_pass(name, false, Some(error.message));
                    return Ok(Requeue::After(self.backoff(failures)));
                }
            }
        }

        if shutdown.is_cancelled() {
            // A pass cut short says nothing about the provider's health.
            return Ok(Requeue::OnEvent);
        }
        let failures = self.note_pass(
            name,
            report.succeeded > 0,
            (report.failed > 0 || unresolved).then(|| {
                report
                    .last_error
                    .clone()
                    .unwrap_or_else(|| "an action in flight could not be resolved".into())
            }),
        );
        self.update_conditions(name, &desired, correlation, &cause, Some(remaining.len()))
            .await?;
        let outcome = PassOutcome {
            failed: report.failed > 0 || unresolved,
            permanent: report.any_permanent,
            remaining: remaining.len(),
        };
        let jitter = self.jitter.lock().expect("jitter lock").random::<f64>();
        Ok(requeue_after(&self.config, outcome, failures, jitter))
    }

    fn observed(&self, name: &str) -> ObservedCluster {
        self.ledger.observed(name).unwrap_or_default()
    }

    fn plan_input<'a>(
        &self,
        name: &'a str,
        desired: &'a ClusterState,
        observed: &'a ObservedCluster,
    ) -> PlanInput<'a> {
        PlanInput {
            cluster: name,
            desired: (!desired.deletion_requested).then_some(&desired.manifest),
            observed,
            replacements: &desired.replacements,
        }
    }

    fn resync_due(&self, name: &str) -> bool {
        let memory = self.memory.lock().expect("memory lock");
        memory
            .get(name)
            .and_then(|cluster| cluster.last_resync)
            .is_none_or(|last| last.elapsed() >= self.config.resync)
    }

    /// Resolves actions started without an outcome by asking the provider.
    async fn resolve_in_flight(
        &self,
        name: &str,
        provider: &dyn Provider,
        observed: &ObservedCluster,
        correlation: Uuid,
        shutdown: &CancellationToken,
    ) -> Result<(), LedgerError> {
        for in_flight in observed.in_flight.values() {
            if shutdown.is_cancelled() {
                break;
            }
            let cause = Cause::Event {
                seq: in_flight.started_seq,
                id: in_flight.started_id,
            };
            let outcome = match &in_flight.action {
                Action::Create { .. } => match provider.lookup(&in_flight.token).await {
                    Ok(Some(resource)) => Ok(Some(resource)),
                    Ok(None) => Err(ProviderError::retryable(
                        "the provider has no resource with this token: the call never completed \
                         (found in flight after a restart)",
                    )),
                    Err(error) => {
                        tracing::warn!(cluster = %name, %error, "cannot resolve an action in flight");
                        continue;
                    }
                },
                Action::Delete { provider_id, .. } => match provider.describe(provider_id).await {
                    Ok(None) => Ok(None),
                    Ok(Some(_)) => Err(ProviderError::retryable(
                        "the resource still exists: the delete never completed \
                         (found in flight after a restart)",
                    )),
                    Err(error) => {
                        tracing::warn!(cluster = %name, %error, "cannot resolve an action in flight");
                        continue;
                    }
                },
            };
            self.metrics
                .actions
                .get_or_create(&ActionLabels {
                    operation: in_flight.action.operation(),
                    outcome: if outcome.is_ok() {
                        "resolved_succeeded"
                    } else {
                        "resolved_failed"
                    },
                })
                .inc();
            let event = outcome_event(&in_flight.action, &in_flight.token, outcome);
            self.ledger
                .record(name, correlation, vec![(event, cause)])
                .await?;
        }
        Ok(())
    }

    /// Compares the provider's listing with the observed state.
    async fn detect_drift(
        &self,
        name: &str,
        provider: &dyn Provider,
        observed: &ObservedCluster,
        shutdown: &CancellationToken,
    ) -> Result<Vec<DriftDetected>, ProviderError> {
        let cancelled = || ProviderError::retryable("shutting down");
        let listed = provider.list(name).await?;
        let listed_by_id: HashMap<&str, _> = listed
            .iter()
            .map(|resource| (resource.provider_id.as_str(), resource))
            .collect();
        let mut drift = Vec::new();
        let known = observed.resources.values().chain(observed.orphans.values());
        for expected in known {
            if shutdown.is_cancelled() {
                return Err(cancelled());
            }
            let listed = listed_by_id.get(expected.provider_id.as_str());
            if listed.is_some_and(|listed| listed.spec == expected.spec) {
                continue;
            }
            // The listing may lag: confirm with a consistent read.
            let actual = provider.describe(&expected.provider_id).await?;
            if actual.as_ref().map(|actual| &actual.spec) != Some(&expected.spec) {
                drift.push(DriftDetected {
                    resource: expected.key(),
                    expected: Some(expected.clone()),
                    actual,
                });
            }
        }
        let known_ids: std::collections::HashSet<&str> = observed
            .resources
            .values()
            .chain(observed.orphans.values())
            .map(|resource| resource.provider_id.as_str())
            .collect();
        for resource in &listed {
            if shutdown.is_cancelled() {
                return Err(cancelled());
            }
            if known_ids.contains(resource.provider_id.as_str())
                || observed.in_flight.contains_key(&resource.token)
            {
                continue;
            }
            // A recently deleted resource may still be listed.
            if let Some(actual) = provider.describe(&resource.provider_id).await? {
                drift.push(DriftDetected {
                    resource: actual.key(),
                    expected: None,
                    actual: Some(actual),
                });
            }
        }
        Ok(drift)
    }

    /// What the cloud still holds for a cluster whose resources the log says
    /// are all gone: resources of failed creates found by their tokens, and
    /// anything a listing shows (confirmed by `describe`). Each is reported as
    /// found, so the next pass deletes it.
    async fn leftovers(
        &self,
        name: &str,
        provider: &dyn Provider,
        observed: &ObservedCluster,
    ) -> Result<Vec<DriftDetected>, ProviderError> {
        let mut found: HashMap<String, crate::model::CloudResource> = HashMap::new();
        for attempts in observed.attempts.values() {
            if matches!(attempts.action, Action::Create { .. }) {
                if let Some(resource) = provider.lookup(&attempts.token).await? {
                    found.insert(resource.provider_id.clone(), resource);
                }
            }
        }
        for listed in provider.list(name).await? {
            if found.contains_key(&listed.provider_id) {
                continue;
            }
            if let Some(resource) = provider.describe(&listed.provider_id).await? {
                found.insert(resource.provider_id.clone(), resource);
            }
        }
        Ok(found
            .into_values()
            .map(|resource| DriftDetected {
                resource: resource.key(),
                expected: None,
                actual: Some(resource),
            })
            .collect())
    }

    /// Whether the pass's plan no longer holds: the cluster has been paused
    /// or has gone since the pass began, or its deletion was requested or
    /// called off (a rollback) since. The next pass plans again.
    fn plan_outdated(ledger: &Ledger, name: &str, deleting: bool) -> bool {
        ledger.read(|projections| {
            projections
                .desired
                .cluster(name)
                .is_none_or(|cluster| cluster.paused || cluster.deletion_requested != deleting)
        })
    }

    /// Runs the plan phase by phase; a phase with a failure ends it.
    async fn execute(
        &self,
        name: &str,
        provider: Arc<dyn Provider>,
        actions: Vec<PlannedAction>,
        origin: PassOrigin<'_>,
        shutdown: &CancellationToken,
    ) -> Result<PassReport, LedgerError> {
        let PassOrigin {
            correlation,
            cause,
            deleting,
        } = origin;
        let mut report = PassReport::default();
        let cluster_limit = Arc::new(Semaphore::new(self.config.cluster_concurrency.max(1)));
        let mut rest = actions.as_slice();
        while let Some(first) = rest.first() {
            if shutdown.is_cancelled() || Self::plan_outdated(&self.ledger, name, deleting) {
                break;
            }
            let phase = first.phase();
            let end = rest
                .iter()
                .position(|action| action.phase() != phase)
                .unwrap_or(rest.len());
            let (current, next) = rest.split_at(end);
            rest = next;
            let mut running = tokio::task::JoinSet::new();
            for planned in current.iter().cloned() {
                let global = self.global.clone();
                let cluster_limit = cluster_limit.clone();
                let provider = provider.clone();
                let ledger = self.ledger.clone();
                let metrics = self.metrics.clone();
                let name = name.to_string();
                let cause = cause.clone();
                let shutdown = shutdown.clone();
                running.spawn(async move {
                    let _cluster = cluster_limit.acquire_owned().await.ok()?;
                    let _global = global.acquire_owned().await.ok()?;
                    // A pause (or a deletion requested or called off) takes
                    // effect before the next intent, mid-phase too.
                    if shutdown.is_cancelled() || Self::plan_outdated(&ledger, &name, deleting) {
                        return None;
                    }
                    Some(
                        run_action(
                            &ledger,
                            provider.as_ref(),
                            &metrics,
                            &name,
                            planned,
                            correlation,
                            cause,
                        )
                        .await,
                    )
                });
            }
            let mut store_error = None;
            while let Some(joined) = running.join_next().await {
                match joined {
                    Ok(Some(Ok(Ok(())))) => report.succeeded += 1,
                    Ok(Some(Ok(Err(error)))) => {
                        report.failed += 1;
                        report.any_permanent |= !error.retryable;
                        report.last_error = Some(error.message);
                    }
                    Ok(Some(Err(error))) => store_error = Some(error),
                    Ok(None) => {}
                    Err(join_error) => {
                        tracing::error!(%join_error, "an action task panicked");
                        report.failed += 1;
                    }
                }
            }
            if let Some(error) = store_error {
                return Err(error);
            }
            if report.failed > 0 {
                break;
            }
        }
        Ok(report)
    }

    /// Records each condition whose status or reason differs from the log.
    async fn update_conditions(
        &self,
        name: &str,
        desired: &ClusterState,
        correlation: Uuid,
        cause: &Cause,
        remaining: Option<usize>,
    ) -> Result<(), LedgerError> {
        let observed = self.observed(name);
        let (failing_passes, last_error) = {
            let memory = self.memory.lock().expect("memory lock");
            memory.get(name).map_or((0, None), |cluster| {
                (cluster.failing_passes, cluster.last_error.clone())
            })
        };
        // Drift counts while it matters: for a resource still wanted or still
        // there, and orphans left in place.
        let reported_drift = if desired.manifest.spec.policy.drift == "report" {
            let wanted = super::plan::desired_resources(&desired.manifest);
            let drifted = observed
                .drift
                .keys()
                .filter(|key| wanted.contains_key(*key) || observed.resources.contains_key(*key))
                .count();
            drifted + observed.orphans.len()
        } else {
            0
        };
        let degraded_by_failures = failing_passes >= self.config.degraded_after_failures;
        let mut wanted: Vec<(ConditionType, bool, &str, String)> = Vec::new();
        if desired.paused {
            wanted.push((
                ConditionType::Paused,
                true,
                "PausedByUser",
                "no provider calls until resumed".into(),
            ));
        } else {
            wanted.push((ConditionType::Paused, false, "Active", String::new()));
        }
        if let Some(remaining) = remaining {
            let converged = remaining == 0;
            let (ready_reason, ready_message) = if desired.deletion_requested {
                (
                    "Deleting",
                    format!("{remaining} actions left to tear the cluster down"),
                )
            } else if !converged {
                ("Reconciling", format!("{remaining} actions left"))
            } else if reported_drift > 0 {
                (
                    "DriftReported",
                    format!("{reported_drift} resources differ from the log (drift policy report)"),
                )
            } else {
                (
                    "Converged",
                    "observed state matches desired state".to_string(),
                )
            };
            wanted.push((
                ConditionType::Ready,
                converged && reported_drift == 0 && !desired.deletion_requested,
                ready_reason,
                ready_message,
            ));
            wanted.push(if converged {
                (
                    ConditionType::Progressing,
                    false,
                    "Converged",
                    String::new(),
                )
            } else {
                (
                    ConditionType::Progressing,
                    true,
                    "Reconciling",
                    format!("{remaining} actions left"),
                )
            });
        }
        if degraded_by_failures || remaining.is_some() || failing_passes > 0 {
            wanted.push(if degraded_by_failures {
                let message = format!(
                    "{failing_passes} passes in a row failed without progress: {}",
                    last_error.unwrap_or_default()
                );
                (ConditionType::Degraded, true, "ActionsFailing", message)
            } else if reported_drift > 0 {
                (
                    ConditionType::Degraded,
                    true,
                    "DriftReported",
                    format!("{reported_drift} resources drifted"),
                )
            } else {
                (ConditionType::Degraded, false, "AsExpected", String::new())
            });
        }
        let events: Vec<(ReconcileEvent, Cause)> = wanted
            .into_iter()
            .filter(|(condition, status, reason, _)| {
                observed
                    .conditions
                    .get(condition)
                    .is_none_or(|current| current.status != *status || current.reason != *reason)
            })
            .map(|(condition, status, reason, message)| {
                let event = ReconcileEvent::ConditionChanged(ConditionChanged {
                    condition,
                    status,
                    reason: reason.to_string(),
                    message,
                });
                (event, cause.clone())
            })
            .collect();
        self.ledger.record(name, correlation, events).await?;
        Ok(())
    }
}

/// How a pass ended, as far as when to look again is concerned.
#[derive(Debug, Clone, Copy)]
struct PassOutcome {
    /// An action failed, or one in flight could not be resolved.
    failed: bool,
    /// A failure was not retryable (a quota, a bad spec).
    permanent: bool,
    /// Actions the plan still has after the pass.
    remaining: usize,
}

/// The error policy, kube-rs style: when to look at a cluster again. After
/// failures, exponential backoff with jitter (`failing_passes` in a row); a
/// permanent failure waits at least the resync interval; remaining work goes
/// on at once; a converged cluster is looked at again at the resync interval.
fn requeue_after(
    config: &ReconcilerConfig,
    outcome: PassOutcome,
    failing_passes: u32,
    jitter: f64,
) -> Requeue {
    if outcome.failed {
        let delay = config.backoff.delay(failing_passes.max(1), jitter);
        if outcome.permanent {
            Requeue::After(delay.max(config.resync))
        } else {
            Requeue::After(delay)
        }
    } else if outcome.remaining > 0 {
        Requeue::Now
    } else {
        Requeue::After(config.resync)
    }
}

/// One action: intent, provider call, outcome. Returns the provider's error
/// (the pass goes on) or a store error (the pass stops).
async fn run_action(
    ledger: &Ledger,
    provider: &dyn Provider,
    metrics: &ReconcileMetrics,
    name: &str,
    planned: PlannedAction,
    correlation: Uuid,
    cause: Cause,
) -> Result<Result<(), ProviderError>, LedgerError> {
    let started = ReconcileEvent::ActionStarted(ActionStarted {
        action: planned.action.clone(),
        token: planned.token.clone(),
        attempt: planned.attempt,
    });
    let appended = ledger
        .record(name, correlation, vec![(started, cause)])
        .await?;
    let started_event = &appended[0];
    let outcome = match &planned.action {
        Action::Create { spec } => provider.create(name, &planned.token, spec).await.map(Some),
        Action::Delete { provider_id, .. } => provider
            .delete(name, &planned.token, provider_id)
            .await
            .map(|()| None),
    };
    let result = outcome.as_ref().map(|_| ()).map_err(Clone::clone);
    metrics
        .actions
        .get_or_create(&ActionLabels {
            operation: planned.action.operation(),
            outcome: if result.is_ok() {
                "succeeded"
            } else {
                "failed"
            },
        })
        .inc();
    let event = outcome_event(&planned.action, &planned.token, outcome);
    let cause = Cause::Event {
        seq: started_event.seq,
        id: started_event.id,
    };
    ledger
        .record(name, correlation, vec![(event, cause)])
        .await?;
    Ok(result)
}

fn outcome_event(
    action: &Action,
    token: &str,
    outcome: Result<Option<crate::model::CloudResource>, ProviderError>,
) -> ReconcileEvent {
    match outcome {
        Ok(observed) => {
            let provider_id = match (&observed, action) {
                (Some(resource), _) => resource.provider_id.clone(),
                (None, Action::Delete { provider_id, .. }) => provider_id.clone(),
                (None, Action::Create { .. }) => String::new(),
            };
            ReconcileEvent::ActionSucceeded(ActionSucceeded {
                action: action.clone(),
                token: token.to_string(),
                provider_id,
                observed,
            })
        }
        Err(error) => ReconcileEvent::ActionFailed(ActionFailed {
            action: action.clone(),
            token: token.to_string(),
            error: error.message,
            retryable: error.retryable,
            token_spent: error.token_spent,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> ReconcilerConfig {
        ReconcilerConfig {
            workers: 1,
            concurrency: 1,
            cluster_concurrency: 1,
            resync: Duration::from_secs(30),
            backoff: Backoff {
                base: Duration::from_millis(200),
                max: Duration::from_secs(10),
            },
            degraded_after_failures: 3,
        }
    }

    #[test]
    fn failing_passes_back_off_exponentially_within_the_jitter() {
        let failed = PassOutcome {
            failed: true,
            permanent: false,
            remaining: 5,
        };
        for (passes, low, high) in [
            (1, 100, 200),
            (2, 200, 400),
            (3, 400, 800),
            (9, 5000, 10000),
        ] {
            for jitter in [0.0, 0.5, 0.999] {
                let Requeue::After(delay) = requeue_after(&config(), failed, passes, jitter) else {
                    panic!("a failed pass is retried after a delay");
                };
                let millis = delay.as_millis();
                assert!(
                    (low..=high).contains(&millis),
                    "pass {passes}, jitter {jitter}: {millis} ms"
                );
            }
        }
        let permanent = PassOutcome {
            permanent: true,
            ..failed
        };
        assert_eq!(
            requeue_after(&config(), permanent, 1, 0.0),
            Requeue::After(Duration::from_secs(30))
        );
    }

    #[test]
    fn work_left_goes_on_at_once_and_a_converged_cluster_waits_for_the_resync() {
        let remaining = PassOutcome {
            failed: false,
            permanent: false,
            remaining: 3,
        };
        assert_eq!(requeue_after(&config(), remaining, 0, 0.5), Requeue::Now);
        let converged = PassOutcome {
            remaining: 0,
            ..remaining
        };
        assert_eq!(
            requeue_after(&config(), converged, 0, 0.5),
            Requeue::After(Duration::from_secs(30))
        );
    }
}
