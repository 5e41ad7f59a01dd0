//! The durable inbox: a delivery is recorded in the log before anything acts
//! on it, and acted on exactly once, across redeliveries and crashes.
//!
//! # Contract
//!
//! - `Inbox::receive` appends `WebhookReceived` to stream `hook/<name>` under
//!   the idempotency key `hook/<name>/delivery/<id>`, bound to the digest of
//!   the body. The inbox appends only through the `Ledger`: its own events
//!   through `Ledger::record_webhook`, the actions through its commands. The same delivery again answers with the first record and,
//!   once there is one, its `WebhookProcessed`; the same id with another body
//!   is `InboxError::DeliveryReused`. Keys never expire.
//! - One worker per receiver reads the receiver's stream in order and
//!   processes each `WebhookReceived` that has no `WebhookProcessed` yet (the
//!   cause index answers that). Processing in log order means that every
//!   delivery recorded before the newest processed one was processed too;
//!   at start-up the worker looks back from the end of the stream for that
//!   point and goes on from there.
//! - Each action runs under the idempotency key `hook/<name>/action/<key>`
//!   (see `PlannedHookAction::key`). After a crash mid-delivery, the actions
//!   that had run find their keys used and count as `already_done`;
//!   `WebhookProcessed` itself is appended under `hook/<name>/processed/<id>`.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use sha2::{Digest, Sha256};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::action::{DeliveryPlan, HookAction};
use super::HookConfig;
use crate::event::payload::{self, Payload};
use crate::event::{Actor, Cause, Event};
use crate::ledger::{ApplyOptions, CommandContext, Ledger, LedgerError, Point};
use crate::metrics::{DeliveryOutcomeLabels, Metrics};
use crate::model::{
    escape_for_record, hook_stream, ActionReport, ActionResult, DeliveryOutcome, SkippedReport,
    WebhookEvent, WebhookProcessed, WebhookReceived,
};
use crate::store::{Idempotency, StoreError};

// `Delivery` lives beside the plan in `action.rs`, so that the receivers
// need not import the inbox; tools and tests still name it from here.
pub use super::action::Delivery;

/// How long a worker waits before it retries after the store failed it.
const STORE_RETRY: Duration = Duration::from_secs(1);

/// Every idempotency key of the inbox starts with this; the API refuses
/// client keys that do.
pub const KEY_PREFIX: &str = "hook/";

/// How often an idle worker looks at its stream without being woken.
const RECHECK: Duration = Duration::from_secs(30);

/// The most action reports and skipped parts one `WebhookProcessed` keeps;
/// the rest are counted in a last skipped entry. An outcome must fit one
/// event, or the worker could never record it.
const MAX_REPORTS: usize = 100;

/// The largest encoded outcome: well under the store's 64 KiB per event,
/// leaving room for the envelope.
const MAX_OUTCOME_BYTES: usize = 48 * 1024;

/// The longest text (an error, a reason) one report keeps.
const MAX_REPORT_TEXT: usize = 512;

/// How many events of a receiver's stream one read takes.
const PAGE: usize = 256;

/// What `receive` did.
#[derive(Debug, Clone)]
pub enum Receipt {
    /// Recorded now; the worker will process it.
    Accepted { received: Arc<Event> },
    /// Recorded before: the first record, and its outcome once there is one.
    Duplicate {
        received: Arc<Event>,
        processed: Option<ProcessedDelivery>,
    },
}

/// A `WebhookProcessed` event, decoded.
#[derive(Debug, Clone)]
pub struct ProcessedDelivery {
    pub event: Arc<Event>,
    pub processed: WebhookProcessed,
}

/// One delivery as `cairn hooks deliveries` shows it.
#[derive(Debug, Clone)]
pub struct DeliveryRecord {
    pub received: Arc<Event>,
    pub payload: WebhookReceived,
    pub processed: Option<ProcessedDelivery>,
}

#[derive(Debug, thiserror::Error)]
pub enum InboxError {
    #[error("no webhook receiver named {0:?}")]
    UnknownHook(String),
    /// Deterministic: a delivery id is bound to the body it first came with.
    #[error("delivery {delivery:?} was received before with a different body")]
    DeliveryReused { delivery: String },
    /// The recorded request does not fit one event.
    #[error("the delivery is {size} bytes once recorded, over the limit of {limit} bytes")]
    TooLarge { size: usize, limit: usize },
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The receivers and their workers.
pub struct Inbox {
    ledger: Arc<Ledger>,
    hooks: BTreeMap<String, Receiver>,
    metrics: Arc<Metrics>,
}

struct Receiver {
    config: Arc<HookConfig>,
    /// Wakes the receiver's worker after a new delivery is recorded.
    wake: Arc<Notify>,
}

impl Inbox {
    /// Starts one worker per receiver on `tracker`; each first processes what
    /// was recorded but not processed before the last stop.
    pub fn start(
        ledger: Arc<Ledger>,
        hooks: &BTreeMap<String, HookConfig>,
        metrics: Arc<Metrics>,
        shutdown: CancellationToken,
        tracker: &TaskTracker,
    ) -> Arc<Inbox> {
        let hooks: BTreeMap<String, Receiver> = hooks
            .iter()
            .map(|(name, config)| {
                let receiver = Receiver {
                    config: Arc::new(config.clone()),
                    wake: Arc::new(Notify::new()),
                };
                (name.clone(), receiver)
            })
            .collect();
        let inbox = Arc::new(Inbox {
            ledger,
            hooks,
            metrics,
        });
        for name in inbox.hooks.keys() {
            let worker = Worker {
                inbox: inbox.clone(),
                hook: name.clone(),
                shutdown: shutdown.clone(),
            };
            tracker.spawn(worker.run());
        }
        inbox
    }

    /// The configured receivers, by name.
    pub fn hooks(&self) -> impl Iterator<Item = (&String, &HookConfig)> {
        self.hooks
            .iter()
            .map(|(name, receiver)| (name, receiver.config.as_ref()))
    }

    pub fn hook(&self, name: &str) -> Option<&HookConfig> {
        self.hooks
            .get(name)
            .map(|receiver| receiver.config.as_ref())
    }

    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// Records a delivery (fsynced when this returns) and wakes the worker.
    pub async fn receive(&self, hook: &str, delivery: Delivery) -> Result<Receipt, InboxError> {
        let receiver = self
            .hooks
            .get(hook)
            .ok_or_else(|| InboxError::UnknownHook(hook.to_string()))?;
        let received = WebhookReceived {
            hook: hook.to_string(),
            delivery: delivery.id.clone(),
            digest: hex::encode(delivery.digest),
            kind: receiver.config.receiver.kind().to_string(),
            event: delivery.event,
            request: delivery.request,
        };
        let encoded = payload::encode_webhook(&WebhookEvent::WebhookReceived(received));
        let cause = Cause::Webhook {
            hook: hook.to_string(),
            delivery: delivery.id.clone(),
        };
        let idempotency = Idempotency {
            key: delivery_key(hook, &delivery.id),
            digest: delivery.digest,
        };
        // The delivery starts a causal chain of its own: no correlation.
        let recorded = self
            .ledger
            .record_webhook(hook, encoded, cause, None, idempotency)
            .await;
        let appended = match recorded {
            Ok(appended) => appended,
            Err(StoreError::IdempotencyKeyReused { .. }) => {
                return Err(InboxError::DeliveryReused {
                    delivery: delivery.id,
                })
            }
            Err(StoreError::EventTooLarge { size, limit, .. }) => {
                return Err(InboxError::TooLarge { size, limit })
            }
            Err(error) => return Err(error.into()),
        };
        let received = appended
            .events
            .into_iter()
            .next()
            .ok_or(StoreError::InvalidRequest(
                "the store answered a delivery with no event".into(),
            ))?;
        if appended.deduplicated {
            let processed = processed_of(&self.ledger, &received).await?;
            if processed.is_none() {
                // The first request may have been dropped between its append
                // and its wake-up (the sender gave up): wake the worker now.
                receiver.wake.notify_one();
            }
            return Ok(Receipt::Duplicate {
                received,
                processed,
            });
        }
        receiver.wake.notify_one();
        Ok(Receipt::Accepted { received })
    }

    /// A receiver's deliveries, newest first, with their outcomes.
    pub async fn deliveries(
        &self,
        hook: &str,
        limit: usize,
    ) -> Result<Vec<DeliveryRecord>, InboxError> {
        if !self.hooks.contains_key(hook) {
            return Err(InboxError::UnknownHook(hook.to_string()));
        }
        let store = self.ledger.store();
        let stream = hook_stream(hook);
        let mut end = store.stream_version(&stream).await?;
        let mut records = Vec::new();
        while end > 0 && records.len() < limit {
            let start = end.saturating_sub(PAGE as u64);
            let page = store
                .read_stream(&stream, start, (end - start) as usize)
                .await?;
            for event in page.iter().rev() {
                let Some(WebhookEvent::WebhookReceived(payload)) = decode(event) else {
                    continue;
                };
                let processed = processed_of(&self.ledger, event).await?;
                records.push(DeliveryRecord {
                    received: event.clone(),
                    payload,
                    processed,
                });
                if records.len() == limit {
                    break;
                }
            }
            end = start;
        }
        Ok(records)
    }
}

/// A receiver's worker: processes its deliveries in log order.
struct Worker {
    inbox: Arc<Inbox>,
    hook: String,
    shutdown: CancellationToken,
}

impl Worker {
    async fn run(self) {
        let wake = self.inbox.hooks[&self.hook].wake.clone();
        let mut cursor = loop {
            match self.start_cursor().await {
                Ok(cursor) => break cursor,
                Err(error) => {
                    tracing::warn!(hook = %self.hook, %error, "webhook worker cannot read its stream; retrying");
                    if self.pause(STORE_RETRY).await {
                        return;
                    }
                }
            }
        };
        loop {
            if let Err(error) = self.process_from(&mut cursor).await {
                tracing::warn!(hook = %self.hook, %error, "webhook worker stopped on a store error; retrying");
                if self.pause(STORE_RETRY).await {
                    return;
                }
                continue;
            }
            // Also look again now and then: a wake-up can be lost when a
            // request is dropped between its append and its notify.
            tokio::select! {
                _ = wake.notified() => {}
                _ = tokio::time::sleep(RECHECK) => {}
                _ = self.shutdown.cancelled() => return,
            }
        }
    }

    /// Sleeps, or returns true at once when the daemon shuts down.
    async fn pause(&self, duration: Duration) -> bool {
        tokio::select! {
            _ = tokio::time::sleep(duration) => false,
            _ = self.shutdown.cancelled() => true,
        }
    }

    /// The stream version after which deliveries may be unprocessed: that of
    /// the delivery the newest `WebhookProcessed` answers (deliveries are
    /// processed in log order, so every one before it was processed).
    async fn start_cursor(&self) -> Result<u64, StoreError> {
        let store = self.inbox.ledger.store();
        let stream = hook_stream(&self.hook);
        let mut end = store.stream_version(&stream).await?;
        while end > 0 {
            let start = end.saturating_sub(PAGE as u64);
            let page = store
                .read_stream(&stream, start, (end - start) as usize)
                .await?;
            for event in page.iter().rev() {
                if event.event_type != "WebhookProcessed" {
                    continue;
                }
                let Some((seq, _)) = event.cause.causing_event() else {
                    continue;
                };
                let answered = store.read(seq.saturating_sub(1), 1).await?;
                if let Some(received) = answered.first() {
                    return Ok(received.version);
                }
            }
            end = start;
        }
        Ok(0)
    }

    /// Processes every unprocessed delivery after `cursor`, moving it on.
    async fn process_from(&self, cursor: &mut u64) -> Result<(), RetryLater> {
        let store = self.inbox.ledger.store().clone();
        let stream = hook_stream(&self.hook);
        loop {
            let page = store.read_stream(&stream, *cursor, PAGE).await?;
            if page.is_empty() {
                return Ok(());
            }
            for event in page {
                if self.shutdown.is_cancelled() {
                    return Ok(());
                }
                if let Some(WebhookEvent::WebhookReceived(received)) = decode(&event) {
                    if processed_of(&self.inbox.ledger, &event).await?.is_none() {
                        self.process(&event, received).await?;
                    }
                }
                *cursor = event.version;
            }
        }
    }

    /// Plans and runs one delivery's actions, then records the outcome.
    async fn process(
        &self,
        event: &Arc<Event>,
        received: WebhookReceived,
    ) -> Result<(), RetryLater> {
        let config = self.inbox.hooks[&self.hook].config.clone();
        // Planning may wait on git for minutes; a shutdown does not wait for
        // it. The delivery stays unprocessed and the next start takes it up,
        // as after a crash.
        let planned = tokio::select! {
            planned = super::receivers::plan(&config, &received) => planned,
            _ = self.shutdown.cancelled() => return Ok(()),
        };
        let processed = match planned {
            Err(reason) => WebhookProcessed {
                delivery: received.delivery.clone(),
                outcome: DeliveryOutcome::Failed,
                summary: reason,
                actions: Vec::new(),
                skipped: Vec::new(),
            },
            Ok(plan) => self.run_plan(event, &received, plan).await?,
        };
        tracing::info!(
            hook = %self.hook,
            delivery = %received.delivery,
            outcome = processed.outcome.as_str(),
            summary = %processed.summary,
            "webhook delivery processed"
        );
        self.inbox
            .metrics
            .webhook_outcomes
            .get_or_create(&DeliveryOutcomeLabels {
                hook: self.hook.clone(),
                outcome: processed.outcome.as_str(),
            })
            .inc();
        let (_, encoded) = bounded(processed);
        let cause = Cause::Event {
            seq: event.seq,
            id: event.id,
        };
        let idempotency = Idempotency {
            key: processed_key(&self.hook, &received.delivery),
            digest: Sha256::digest(received.delivery.as_bytes()).into(),
        };
        let recorded = self
            .inbox
            .ledger
            .record_webhook(
                &self.hook,
                encoded,
                cause,
                Some(event.correlation),
                idempotency,
            )
            .await;
        match recorded {
            Ok(_) => Ok(()),
            // A refusal that would recur on every retry must not stall the
            // receiver: the delivery stays without an outcome, and the
            // worker goes on to the next.
            Err(error) if error.is_deterministic() => {
                tracing::error!(
                    hook = %self.hook,
                    delivery = %received.delivery,
                    %error,
                    "the outcome of a webhook delivery cannot be recorded; going on to the next"
                );
                Ok(())
            }
            Err(error) => Err(error.into()),
        }
    }

    async fn run_plan(
        &self,
        event: &Arc<Event>,
        received: &WebhookReceived,
        plan: DeliveryPlan,
    ) -> Result<WebhookProcessed, RetryLater> {
        let mut actions = Vec::new();
        for planned in plan.actions {
            let context = CommandContext {
                actor: Actor::webhook(&self.hook),
                request_id: received.delivery.clone(),
                correlation: event.correlation,
                idempotency_key: Some(action_key(&self.hook, &planned.key)),
                reason: None,
                cause: Some(Cause::WebhookDelivery {
                    hook: self.hook.clone(),
                    delivery: received.delivery.clone(),
                    received_seq: event.seq,
                    received_id: event.id,
                    details: recordable_details(&planned.details),
                }),
            };
            let key = context.scoped_idempotency_key().unwrap_or_default();
            // An action whose key was used ran before (an earlier delivery, or
            // this one before a crash): it is not run again, whatever the
            // state is now.
            let ran_before = self
                .inbox
                .ledger
                .store()
                .idempotency_record(&key)
                .await?
                .is_some();
            let result = if ran_before {
                Ok(ActionResult::AlreadyDone)
            } else {
                run_action(&self.inbox.ledger, &planned.action, &context).await
            };
            let result = match result {
                Ok(result) => result,
                Err(LedgerError::Store(StoreError::IdempotencyKeyReused { .. })) => {
                    ActionResult::AlreadyDone
                }
                // The store failing is no outcome of the delivery: stop, and
                // process it again once the store works.
                Err(LedgerError::Store(error)) if !error.is_deterministic() => {
                    return Err(RetryLater::Store(error))
                }
                // The projection lagging is no outcome either: try again.
                Err(error @ LedgerError::ProjectionBehind { .. }) => {
                    return Err(RetryLater::Ledger(error))
                }
                Err(error) => ActionResult::Failed {
                    error: error.to_string(),
                },
            };
            actions.push(ActionReport {
                action: describe(&planned.action),
                key: planned.key,
                result,
            });
        }
        let skipped: Vec<SkippedReport> = plan
            .skipped
            .into_iter()
            .map(|skipped| SkippedReport {
                subject: skipped.subject,
                reason: skipped.reason,
            })
            .collect();
        let (outcome, summary) = summarize(&actions, &skipped, plan.ignored);
        Ok(WebhookProcessed {
            delivery: received.delivery.clone(),
            outcome,
            summary,
            actions,
            skipped,
        })
    }
}

/// The outcome cut to fit one event: at most `MAX_REPORTS` actions and
/// skipped parts, texts at most `MAX_REPORT_TEXT` bytes, and fewer reports
/// still while the encoded payload is over `MAX_OUTCOME_BYTES`; what is cut
/// is counted in a last skipped entry.
/// Returns the cut outcome and its encoding.
fn bounded(processed: WebhookProcessed) -> (WebhookProcessed, payload::EncodedPayload) {
    let mut limit = MAX_REPORTS;
    loop {
        let candidate = bounded_to(processed.clone(), limit);
        let encoded = payload::encode_webhook(&WebhookEvent::WebhookProcessed(candidate.clone()));
        if encoded.bytes.len() <= MAX_OUTCOME_BYTES || limit == 0 {
            return (candidate, encoded);
        }
        limit /= 2;
    }
}

/// A delivery's details as they are recorded: keys and values from the
/// payload, escaped to follow the rule of recorded text (`model::text`).
fn recordable_details(details: &BTreeMap<String, String>) -> BTreeMap<String, String> {
    details
        .iter()
        .map(|(key, value)| {
            let (mut key, mut value) = (key.clone(), value.clone());
            escape_for_record(&mut key);
            escape_for_record(&mut value);
            (key, value)
        })
        .collect()
}

fn bounded_to(mut processed: WebhookProcessed, limit: usize) -> WebhookProcessed {
    // Escaped first (it lengthens), then cut.
    let cut = |text: &mut String| {
        escape_for_record(text);
        if text.len() > MAX_REPORT_TEXT {
            let mut end = MAX_REPORT_TEXT;
            while !text.is_char_boundary(end) {
                end -= 1;
            }
            text.truncate(end);
            text.push('…');
        }
    };
    cut(&mut processed.summary);
    let dropped_actions = processed.actions.len().saturating_sub(limit);
    processed.actions.truncate(limit);
    for report in &mut processed.actions {
        cut(&mut report.action);
        escape_for_record(&mut report.key);
        if let ActionResult::Failed { error } = &mut report.result {
            cut(error);
        }
    }
    let dropped_skipped = processed.skipped.len().saturating_sub(limit);
    processed.skipped.truncate(limit);
    for skipped in &mut processed.skipped {
        cut(&mut skipped.subject);
        cut(&mut skipped.reason);
    }
    if dropped_actions + dropped_skipped > 0 {
        processed.skipped.push(SkippedReport {
            subject: "(not recorded)".to_string(),
            reason: format!(
                "{dropped_actions} more action reports and {dropped_skipped} more skipped parts"
            ),
        });
    }
    processed
}

/// Why a worker stops and processes the same delivery again later: the store
/// failed, or the projection lags. Neither is an outcome of the delivery.
#[derive(Debug, thiserror::Error)]
enum RetryLater {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Ledger(LedgerError),
}

/// Runs one action through the ledger.
async fn run_action(
    ledger: &Ledger,
    action: &HookAction,
    context: &CommandContext,
) -> Result<ActionResult, LedgerError> {
    let appended = |events: usize, deduplicated: bool| {
        if deduplicated {
            ActionResult::AlreadyDone
        } else if events == 0 {
            ActionResult::Unchanged
        } else {
            ActionResult::Applied {
                events: events as u64,
            }
        }
    };
    match action {
        HookAction::Apply { manifest } => {
            let outcome = ledger
                .apply((**manifest).clone(), ApplyOptions::default(), context)
                .await?;
            Ok(appended(outcome.events.len(), outcome.deduplicated))
        }
        HookAction::Scale {
            cluster,
            pool,
            replicas,
        } => {
            let outcome = ledger
                .scale(cluster, pool, *replicas, None, context)
                .await?;
            Ok(appended(outcome.events.len(), outcome.deduplicated))
        }
        HookAction::ScaleBy {
            cluster,
            pool,
            by,
            max,
        } => {
            // At or over the maximum, the scale still runs (to the same
            // count), so that its key is recorded and a repeat never acts.
            let grow = |current: i64| {
                if current >= *max {
                    current
                } else {
                    current.saturating_add(*by).min(*max)
                }
            };
            let outcome = ledger
                .scale_with(cluster, pool, grow, None, context)
                .await?;
            Ok(appended(outcome.events.len(), outcome.deduplicated))
        }
        HookAction::Pause { cluster } => {
            let outcome = ledger.pause(cluster, context).await?;
            Ok(appended(usize::from(outcome.event.is_some()), false))
        }
        HookAction::Resume { cluster } => {
            let outcome = ledger.resume(cluster, context).await?;
            Ok(appended(usize::from(outcome.event.is_some()), false))
        }
        HookAction::RequestDeletion { cluster } => {
            let outcome = ledger.request_deletion(cluster, context).await?;
            Ok(appended(usize::from(outcome.event.is_some()), false))
        }
        HookAction::Rollback { cluster, to } => {
            let point: Point = to.parse().map_err(|error: String| {
                LedgerError::Invalid(vec![crate::model::FieldError::new("to", error)])
            })?;
            let outcome = ledger.rollback(cluster, point, false, context).await?;
            Ok(appended(outcome.events.len(), false))
        }
        HookAction::ReplaceMachine { cluster, machine } => {
            let outcome = ledger.replace_machine(cluster, machine, context).await?;
            Ok(appended(usize::from(outcome.event.is_some()), false))
        }
    }
}

/// An action in words, for the outcome and the CLI.
pub fn describe(action: &HookAction) -> String {
    match action {
        HookAction::Apply { manifest } => format!("apply cluster {}", manifest.metadata.name),
        HookAction::Scale {
            cluster,
            pool,
            replicas,
        } => format!("scale {cluster}/{pool} to {replicas}"),
        HookAction::ScaleBy {
            cluster,
            pool,
            by,
            max,
        } => format!("scale {cluster}/{pool} by +{by} up to {max}"),
        HookAction::Pause { cluster } => format!("pause {cluster}"),
        HookAction::Resume { cluster } => format!("resume {cluster}"),
        HookAction::Rollback { cluster, to } => format!("roll {cluster} back to {to}"),
        HookAction::RequestDeletion { cluster } => format!("delete cluster {cluster}"),
        HookAction::ReplaceMachine { cluster, machine } => {
            format!("replace machine {machine} of {cluster}")
        }
    }
}

/// The outcome of a delivery from its action results.
fn summarize(
    actions: &[ActionReport],
    skipped: &[SkippedReport],
    ignored: Option<String>,
) -> (DeliveryOutcome, String) {
    if actions.is_empty() {
        // A receiver that says why there is nothing to do (a ping, another
        // branch, resolved alerts) was ignored; one that had parts to act on
        // and could act on none of them (every file invalid) failed.
        if let Some(reason) = ignored {
            return (DeliveryOutcome::Ignored, reason);
        }
        if skipped.is_empty() {
            return (DeliveryOutcome::Ignored, "nothing to do".to_string());
        }
        let first = &skipped[0];
        let summary = format!(
            "0 actions: {} skipped (first: {}: {})",
            skipped.len(),
            first.subject,
            first.reason
        );
        return (DeliveryOutcome::Failed, summary);
    }
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for report in actions {
        let name = match report.result {
            ActionResult::Applied { .. } => "applied",
            ActionResult::Unchanged => "unchanged",
            ActionResult::AlreadyDone => "already done",
            ActionResult::Failed { .. } => "failed",
        };
        *counts.entry(name).or_default() += 1;
    }
    if !skipped.is_empty() {
        counts.insert("skipped", skipped.len());
    }
    let failed = counts.get("failed").copied().unwrap_or(0);
    let worked = actions.len() - failed;
    let outcome = if failed == 0 && skipped.is_empty() {
        DeliveryOutcome::Done
    } else if worked > 0 {
        DeliveryOutcome::Partial
    } else {
        DeliveryOutcome::Failed
    };
    let parts: Vec<String> = counts
        .iter()
        .map(|(name, count)| format!("{count} {name}"))
        .collect();
    let noun = if actions.len() == 1 {
        "action"
    } else {
        "actions"
    };
    let mut summary = format!("{} {noun}: {}", actions.len(), parts.join(", "));
    if let Some(first_failure) = actions.iter().find_map(|report| match &report.result {
        ActionResult::Failed { error } => Some(format!("{}: {error}", report.action)),
        _ => None,
    }) {
        summary.push_str(&format!(" (first failure: {first_failure})"));
    }
    (outcome, summary)
}

fn delivery_key(hook: &str, delivery: &str) -> String {
    format!("{KEY_PREFIX}{hook}/delivery/{delivery}")
}

fn action_key(hook: &str, key: &str) -> String {
    format!("{KEY_PREFIX}{hook}/action/{key}")
}

fn processed_key(hook: &str, delivery: &str) -> String {
    format!("{KEY_PREFIX}{hook}/processed/{delivery}")
}

fn decode(event: &Event) -> Option<WebhookEvent> {
    match payload::decode(&event.event_type, event.schema, &event.payload) {
        Ok(Payload::Webhook(webhook)) => Some(*webhook),
        _ => None,
    }
}

/// The `WebhookProcessed` that answers a `WebhookReceived`, if there is one.
async fn processed_of(
    ledger: &Ledger,
    received: &Event,
) -> Result<Option<ProcessedDelivery>, StoreError> {
    let store = ledger.store();
    let mut after = received.seq;
    loop {
        let seqs = store.caused_by(received.seq, after, 64).await?;
        let Some(&last) = seqs.last() else {
            return Ok(None);
        };
        for seq in seqs {
            let Some(event) = store.read(seq - 1, 1).await?.into_iter().next() else {
                continue;
            };
            if event.stream != received.stream {
                continue;
            }
            if let Some(WebhookEvent::WebhookProcessed(processed)) = decode(&event) {
                return Ok(Some(ProcessedDelivery { event, processed }));
            }
        }
        after = last;
    }
}

#[cfg(test)]
mod tests;
