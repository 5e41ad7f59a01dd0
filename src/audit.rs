//! Audit queries over the log: a filtered page of events (`events`) and the
//! causal trace of one event (`trace`). Both read envelopes only, through the
//! store's indexes wherever one answers (by id, time, cause and correlation),
//! and scan the log only for what no index covers, a bounded number of events
//! per call.
//!
//! # Filters (`EventQuery`)
//!
//! - `stream`, `event_type`: exact match (a scan).
//! - `actor`: `name`, or `kind:name` with kind one of user, webhook,
//!   reconciler, system (a scan).
//! - `cause`: the id of an event: the events it caused directly, from the
//!   cause index. A value that is not the id of an event in the log is taken
//!   as a request id, an idempotency key or a webhook delivery id, and matched
//!   against the `Request` and `Webhook` causes by a scan.
//! - `correlation`: from the correlation index.
//! - `since`, `until`: a seq or a time, both inclusive; a time becomes a seq
//!   bound through the time index, so the scan starts and stops there.
//!
//! A page returns at most `limit` events and examines at most
//! `MAX_SCAN_PER_PAGE` (log events or index entries); `next_after` is the
//! cursor to continue from, None once nothing after it can match.
//!
//! # The trace
//!
//! Causes are the `Cause::Event` links of the envelope. Reconciler events name
//! the desired-state event they act on; an outcome (`ActionSucceeded`,
//! `ActionFailed`) names its `ActionStarted`. So the chain of a change is a
//! tree: change -> ActionStarted -> outcome, and ConditionChanged,
//! DriftDetected, ClusterDeleted under the change. `trace` follows it both
//! ways and adds the other events of the same correlation id.
//!
//! **Architecture Invariant:** audit queries know envelopes only (ids, times,
//! actors, causes, correlations), never payloads: rendering is the caller's.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;

use chrono::{DateTime, Duration, Utc};
use uuid::Uuid;

use crate::event::{Actor, ActorKind, Cause, Event};
use crate::store::{EventStore, StoreError};

/// The most events one page of a query returns.
pub const MAX_PAGE: usize = 1000;

/// How many events (or index entries) one `events` page may examine before
/// it returns a partial page with a cursor.
pub const MAX_SCAN_PER_PAGE: usize = 10_000;

/// Events read from the store or an index at a time.
const CHUNK: usize = 256;

/// A position in the log for `since` and `until`: a seq or a time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogPoint {
    Seq(u64),
    Time(DateTime<Utc>),
}

impl LogPoint {
    /// Digits are a seq; anything else must be an RFC 3339 time.
    pub fn parse(text: &str) -> Result<LogPoint, String> {
        if !text.is_empty() && text.bytes().all(|byte| byte.is_ascii_digit()) {
            return text
                .parse()
                .map(LogPoint::Seq)
                .map_err(|_| format!("{text:?} is too large for a seq"));
        }
        DateTime::parse_from_rfc3339(text)
            .map(|time| LogPoint::Time(time.with_timezone(&Utc)))
            .map_err(|error| format!("{text:?} is neither a seq nor an RFC 3339 time ({error})"))
    }
}

/// An actor filter: a name, optionally with its kind.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ActorFilter {
    pub kind: Option<ActorKind>,
    pub name: String,
}

impl ActorFilter {
    /// `name`, or `kind:name` (split at the first colon).
    pub fn parse(text: &str) -> Result<ActorFilter, String> {
        let Some((kind, name)) = text.split_once(':') else {
            if text.is_empty() {
                return Err("an actor name must not be empty".into());
            }
            return Ok(ActorFilter {
                kind: None,
                name: text.to_string(),
            });
        };
        let kind = match kind {
            "user" => ActorKind::User,
            "webhook" => ActorKind::Webhook,
            "reconciler" => ActorKind::Reconciler,
            "system" => ActorKind::System,
            other => {
                return Err(format!(
                    "{other:?} is not an actor kind (user, webhook, reconciler, system)"
                ))
            }
        };
        if name.is_empty() {
            return Err("an actor name must not be empty".into());
        }
        Ok(ActorFilter {
            kind: Some(kind),
            name: name.to_string(),
        })
    }

    pub fn matches(&self, actor: &Actor) -> bool {
        actor.name == self.name && self.kind.is_none_or(|kind| kind == actor.kind)
    }
}

/// One page of events, with where to continue: of `events`, and of a
/// cluster's history (`Ledger::history`).
#[derive(Debug, Clone)]
pub struct EventPage {
    pub events: Vec<Arc<Event>>,
    /// Pass as `after` for the next page (a seq for the log, a version for a
    /// cluster's history); None at the end.
    pub next_after: Option<u64>,
}

/// Filters of an `events` query; see the module docs.
#[derive(Debug, Clone, Default)]
pub struct EventQuery {
    /// Only events with a seq above this (the page cursor).
    pub after: u64,
    pub limit: usize,
    pub stream: Option<String>,
    pub event_type: Option<String>,
    pub actor: Option<ActorFilter>,
    /// An event id, or a request id, idempotency key or webhook delivery id.
    pub cause: Option<String>,
    pub correlation: Option<Uuid>,
    /// Inclusive.
    pub since: Option<LogPoint>,
    /// Inclusive.
    pub until: Option<LogPoint>,
}

/// What the `cause` filter resolved to.
#[derive(Debug, Clone, PartialEq, Eq)]
enum CauseMatch {
    /// Caused by the event at this seq.
    Event(u64),
    /// Caused by this request, idempotency key or webhook delivery.
    Origin(String),
}

impl CauseMatch {
    fn matches(&self, cause: &Cause) -> bool {
        match (self, cause) {
            (CauseMatch::Event(seq), cause) => {
                cause.causing_event().map(|(cause_seq, _)| cause_seq) == Some(*seq)
            }
            (
                CauseMatch::Origin(text),
                Cause::Request {
                    request_id,
                    idempotency_key,
                    ..
                },
            ) => request_id == text || idempotency_key.as_ref() == Some(text),
            (
                CauseMatch::Origin(text),
                Cause::Webhook { delivery, .. } | Cause::WebhookDelivery { delivery, .. },
            ) => delivery == text,
            _ => false,
        }
    }
}

/// Where a page's candidates come from.
#[derive(Debug, Clone, Copy)]
enum Source {
    Log,
    CausedBy(u64),
    Correlated(Uuid),
}

impl Source {
    /// Up to `limit` candidate seqs after `after`, from the index; None for the log.
    async fn index_seqs(
        self,
        store: &dyn EventStore,
        after: u64,
        limit: usize,
    ) -> Result<Option<Vec<u64>>, StoreError> {
        match self {
            Source::Log => Ok(None),
            Source::CausedBy(seq) => store.caused_by(seq, after, limit).await.map(Some),
            Source::Correlated(id) => store.correlated(id, after, limit).await.map(Some),
        }
    }
}

fn matches(event: &Event, query: &EventQuery, cause: Option<&CauseMatch>) -> bool {
    query.stream.as_ref().is_none_or(|s| *s == event.stream)
        && query
            .event_type
            .as_ref()
            .is_none_or(|t| *t == event.event_type)
        && query.actor.as_ref().is_none_or(|a| a.matches(&event.actor))
        && query.correlation.is_none_or(|c| c == event.correlation)
        && cause.is_none_or(|c| c.matches(&event.cause))
}

/// Rounds a time up to the next whole microsecond (event times are microseconds).
fn ceil_to_micros(time: DateTime<Utc>) -> DateTime<Utc> {
    let extra = time.timestamp_subsec_nanos() % 1000;
    if extra == 0 {
        time
    } else {
        time + Duration::nanoseconds(i64::from(1000 - extra))
    }
}

/// The seq after which events are at or past `since`.
async fn since_bound(store: &dyn EventStore, since: LogPoint) -> Result<u64, StoreError> {
    match since {
        LogPoint::Seq(seq) => Ok(seq.saturating_sub(1)),
        // The last event strictly before the time: at or before one µs less.
        LogPoint::Time(time) => {
            store
                .seq_at_time(ceil_to_micros(time) - Duration::microseconds(1))
                .await
        }
    }
}

/// The last seq at or before `until`.
async fn until_bound(store: &dyn EventStore, until: LogPoint) -> Result<u64, StoreError> {
    match until {
        LogPoint::Seq(seq) => Ok(seq),
        LogPoint::Time(time) => store.seq_at_time(time).await,
    }
}

/// The events at these seqs (ascending), read in runs of consecutive seqs.
async fn read_seqs(store: &dyn EventStore, seqs: &[u64]) -> Result<Vec<Arc<Event>>, StoreError> {
    let mut events = Vec::with_capacity(seqs.len());
    let mut start = 0;
    while start < seqs.len() {
        let mut end = start + 1;
        while end < seqs.len() && seqs[end] == seqs[end - 1] + 1 {
            end += 1;
        }
        let first = seqs[start];
        if first > 0 {
            events.extend(store.read(first - 1, end - start).await?);
        }
        start = end;
    }
    Ok(events)
}

async fn read_one(store: &dyn EventStore, seq: u64) -> Result<Option<Arc<Event>>, StoreError> {
    if seq == 0 {
        return Ok(None);
    }
    Ok(store
        .read(seq - 1, 1)
        .await?
        .into_iter()
        .next()
        .filter(|event| event.seq == seq))
}

/// A page of the log, filtered; see the module docs.
pub async fn events(store: &dyn EventStore, query: &EventQuery) -> Result<EventPage, StoreError> {
    let limit = query.limit.clamp(1, MAX_PAGE);
    let head = store.head().seq;
    let mut lower = query.after;
    if let Some(since) = query.since {
        lower = lower.max(since_bound(store, since).await?);
    }
    let mut upper = head;
    if let Some(until) = query.until {
        upper = upper.min(until_bound(store, until).await?);
    }
    let mut cause = None;
    let mut source = match query.correlation {
        Some(correlation) => Source::Correlated(correlation),
        None => Source::Log,
    };
    if let Some(text) = &query.cause {
        let event_seq = match Uuid::parse_str(text) {
            Ok(id) => store.seq_of_id(id).await?,
            Err(_) => None,
        };
        cause = Some(match event_seq {
            Some(seq) => {
                source = Source::CausedBy(seq);
                CauseMatch::Event(seq)
            }
            None => CauseMatch::Origin(text.clone()),
        });
    }

    let mut events = Vec::new();
    let mut cursor = lower;
    let mut scanned = 0;
    let mut exhausted = false;
    while cursor < upper && events.len() < limit && scanned < MAX_SCAN_PER_PAGE {
        let want = CHUNK.min(MAX_SCAN_PER_PAGE - scanned);
        let chunk = match source.index_seqs(store, cursor, want).await? {
            None => {
                let want = want.min(usize::try_from(upper - cursor).unwrap_or(usize::MAX));
                store.read(cursor, want).await?
            }
            Some(mut seqs) => {
                seqs.retain(|seq| *seq <= upper);
                read_seqs(store, &seqs).await?
            }
        };
        if chunk.is_empty() {
            exhausted = true;
            break;
        }
        for event in chunk {
            cursor = event.seq;
            scanned += 1;
            if matches(&event, query, cause.as_ref()) {
                events.push(event);
                if events.len() == limit {
                    break;
                }
            }
        }
    }
    let more = if exhausted || cursor >= upper {
        false
    } else {
        match source.index_seqs(store, cursor, 1).await? {
            None => true,
            Some(seqs) => seqs.first().is_some_and(|seq| *seq <= upper),
        }
    };
    Ok(EventPage {
        events,
        next_after: more.then_some(cursor),
    })
}

/// How far a trace goes.
#[derive(Debug, Clone, Copy)]
pub struct TraceLimits {
    /// The most causes followed upward.
    pub causes: usize,
    /// The most effects collected (breadth first, so the nearest are kept).
    pub effects: usize,
    /// The most correlated events outside the chain.
    pub correlated: usize,
}

impl Default for TraceLimits {
    fn default() -> TraceLimits {
        TraceLimits {
            causes: 1_000,
            effects: 10_000,
            correlated: 1_000,
        }
    }
}

/// An event caused, directly or not, by the traced event.
#[derive(Debug, Clone)]
pub struct Effect {
    pub event: Arc<Event>,
    /// 1 for an event the traced event caused directly, 2 for one that caused, ...
    pub depth: u32,
    /// The seq of the event that caused it.
    pub parent: u64,
}

/// The causal chain of one event, both ways.
#[derive(Debug, Clone)]
pub struct Trace {
    pub event: Arc<Event>,
    /// From the root of the chain down to the event's direct cause.
    pub causes: Vec<Arc<Event>>,
    /// The chain upward was longer than the limit.
    pub causes_truncated: bool,
    /// The root's own cause: a request (with its reason), a webhook delivery,
    /// or none. A `Cause::Event` here means the chain stopped at an event
    /// that names a cause not in the log, or at the limit.
    pub origin: Cause,
    /// Everything the event caused, recursively, in seq order.
    pub effects: Vec<Effect>,
    pub effects_truncated: bool,
    /// Other events with the event's correlation id, not in the chain, in seq order.
    pub correlated: Vec<Arc<Event>>,
    pub correlated_truncated: bool,
}

/// The event an event's `Cause::Event` names, if it is in the log before it.
async fn cause_of(store: &dyn EventStore, event: &Event) -> Result<Option<Arc<Event>>, StoreError> {
    let Some((seq, id)) = event.cause.causing_event() else {
        return Ok(None);
    };
    // A cause always comes first; a link that does not is not followed, so
    // the walk ends even on a malformed (imported) log.
    let found = match read_one(store, seq).await? {
        Some(cause) if cause.id == id => Some(cause),
        _ => match store.seq_of_id(id).await? {
            Some(seq) => read_one(store, seq).await?,
            None => None,
        },
    };
    Ok(found.filter(|cause| cause.seq < event.seq))
}

/// The causal trace of the event with this id; None when the log has no such event.
pub async fn trace(
    store: &dyn EventStore,
    id: Uuid,
    limits: TraceLimits,
) -> Result<Option<Trace>, StoreError> {
    let Some(seq) = store.seq_of_id(id).await? else {
        return Ok(None);
    };
    let event = match read_one(store, seq).await? {
        Some(event) if event.id == id => event,
        _ => {
            return Err(StoreError::Corrupt {
                seq,
                reason: format!("the id index names seq {seq} for event {id}, which is not there"),
            })
        }
    };

    // Upward: follow the causes to the root.
    let mut causes = Vec::new();
    let mut causes_truncated = false;
    let mut top = event.clone();
    while let Some(cause) = cause_of(store, &top).await? {
        if causes.len() == limits.causes {
            causes_truncated = true;
            break;
        }
        causes.push(cause.clone());
        top = cause;
    }
    causes.reverse();
    let origin = top.cause.clone();

    // Downward: breadth first through the cause index.
    let (effect_seqs, effects_truncated) = effect_seqs(store, seq, limits.effects).await?;
    let mut sorted: Vec<u64> = effect_seqs.keys().copied().collect();
    sorted.sort_unstable();
    let effects = read_seqs(store, &sorted)
        .await?
        .into_iter()
        .filter_map(|event| {
            let (depth, parent) = *effect_seqs.get(&event.seq)?;
            Some(Effect {
                event,
                depth,
                parent,
            })
        })
        .collect();

    // Sideways: the rest of the correlation.
    let mut chain: HashSet<u64> = effect_seqs.keys().copied().collect();
    chain.insert(seq);
    chain.extend(causes.iter().map(|cause| cause.seq));
    let (correlated, correlated_truncated) =
        correlated_outside(store, event.correlation, &chain, limits.correlated).await?;

    Ok(Some(Trace {
        event,
        causes,
        causes_truncated,
        origin,
        effects,
        effects_truncated,
        correlated,
        correlated_truncated,
    }))
}

/// The seqs caused by `root`, recursively: seq -> (depth, parent), with
/// whether more exist than `limit`.
async fn effect_seqs(
    store: &dyn EventStore,
    root: u64,
    limit: usize,
) -> Result<(HashMap<u64, (u32, u64)>, bool), StoreError> {
    let mut found = HashMap::new();
    let mut queue = VecDeque::from([(root, 0u32)]);
    while let Some((parent, depth)) = queue.pop_front() {
        let mut after = parent;
        loop {
            if found.len() == limit {
                // Full: truncated if anything more is caused by what is left.
                if !store.caused_by(parent, after, 1).await?.is_empty() {
                    return Ok((found, true));
                }
                for (node, _) in queue {
                    if !store.caused_by(node, node, 1).await?.is_empty() {
                        return Ok((found, true));
                    }
                }
                return Ok((found, false));
            }
            let want = CHUNK.min(limit - found.len());
            let seqs = store.caused_by(parent, after, want).await?;
            for seq in &seqs {
                found.insert(*seq, (depth + 1, parent));
                queue.push_back((*seq, depth + 1));
            }
            match seqs.last() {
                Some(last) if seqs.len() == want => after = *last,
                _ => break,
            }
        }
    }
    Ok((found, false))
}

/// Events with this correlation id whose seqs are not in `chain`.
async fn correlated_outside(
    store: &dyn EventStore,
    correlation: Uuid,
    chain: &HashSet<u64>,
    limit: usize,
) -> Result<(Vec<Arc<Event>>, bool), StoreError> {
    // The nil id is what "no correlation" looks like: it correlates nothing.
    if correlation.is_nil() {
        return Ok((Vec::new(), false));
    }
    let mut seqs = Vec::new();
    let mut after = 0;
    let mut truncated = false;
    'pages: loop {
        let page = store.correlated(correlation, after, CHUNK).await?;
        let Some(last) = page.last() else { break };
        after = *last;
        for seq in page {
            if chain.contains(&seq) {
                continue;
            }
            if seqs.len() == limit {
                truncated = true;
                break 'pages;
            }
            seqs.push(seq);
        }
    }
    Ok((read_seqs(store, &seqs).await?, truncated))
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicI64, Ordering};

    use chrono::TimeZone;

    use super::*;
    use crate::event::NewEvent;
    use crate::store::{AppendRequest, ExpectedVersion};

    fn base_time() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 11, 25, 3, 0, 0).unwrap()
    }

    /// A store whose clock moves one second per event appended.
    fn store(dir: &std::path::Path) -> Arc<dyn crate::store::EventStore> {
        let tick = Arc::new(AtomicI64::new(0));
        let mut config = crate::store::StoreConfig::new(dir);
        config.clock =
            Arc::new(move || base_time() + Duration::seconds(tick.fetch_add(1, Ordering::SeqCst)));
        crate::store::open(config).unwrap()
    }

    fn actor(kind: ActorKind, name: &str) -> Actor {
        Actor {
            kind,
            name: name.into(),
        }
    }

    /// Appends one event and returns it.
    async fn append(
        store: &dyn crate::store::EventStore,
        stream: &str,
        event_type: &str,
        actor: Actor,
        cause: Cause,
        correlation: Uuid,
    ) -> Arc<Event> {
        let event = NewEvent {
            id: Uuid::now_v7(),
            event_type: event_type.into(),
            schema: 1,
            actor,
            cause,
            correlation,
            payload: Vec::new(),
        };
        let request = AppendRequest {
            stream: stream.into(),
            expected: ExpectedVersion::Any,
            events: vec![event],
            idempotency: None,
        };
        store.append(request).await.unwrap().events[0].clone()
    }

    fn caused_by(event: &Event) -> Cause {
        Cause::Event {
            seq: event.seq,
            id: event.id,
        }
    }

    fn request(id: &str) -> Cause {
        Cause::Request {
            request_id: id.into(),
            idempotency_key: Some(format!("key-{id}")),
            reason: Some("why".into()),
        }
    }

    /// Every page of a query, with the limit given, as seqs; checks that the
    /// cursor moves forward and that the last page says so.
    async fn all_pages(store: &dyn crate::store::EventStore, query: &EventQuery) -> Vec<u64> {
        let mut query = query.clone();
        let mut seqs = Vec::new();
        for _ in 0..1000 {
            let page = events(store, &query).await.unwrap();
            assert!(page.events.len() <= query.limit);
            seqs.extend(page.events.iter().map(|event| event.seq));
            match page.next_after {
                None => return seqs,
                Some(next) => {
                    assert!(next > query.after, "the cursor must move forward");
                    query.after = next;
                }
            }
        }
        panic!("too many pages");
    }

    /// seq 1: change (alice, request r1), 2: started (caused by 1), 3: other
    /// change (bob, request r2), 4: succeeded (caused by 2), 5: condition
    /// (caused by 1), 6: a change of r1 in another stream, 7: failed (caused by 2).
    async fn story(store: &dyn crate::store::EventStore) -> (Uuid, Uuid, Vec<Arc<Event>>) {
        let (c1, c2) = (Uuid::now_v7(), Uuid::now_v7());
        let alice = actor(ActorKind::User, "alice");
        let bob = actor(ActorKind::User, "bob");
        let reconciler = actor(ActorKind::Reconciler, "reconciler");
        let e1 = append(
            store,
            "cluster/a",
            "PoolScaled",
            alice.clone(),
            request("r1"),
            c1,
        )
        .await;
        let e2 = append(
            store,
            "reconcile/a",
            "ActionStarted",
            reconciler.clone(),
            caused_by(&e1),
            c1,
        )
        .await;
        let e3 = append(store, "cluster/b", "PoolScaled", bob, request("r2"), c2).await;
        let e4 = append(
            store,
            "reconcile/a",
            "ActionSucceeded",
            reconciler.clone(),
            caused_by(&e2),
            c1,
        )
        .await;
        let e5 = append(
            store,
            "reconcile/a",
            "ConditionChanged",
            reconciler.clone(),
            caused_by(&e1),
            c1,
        )
        .await;
        let e6 = append(
            store,
            "cluster/c",
            "LabelsChanged",
            alice,
            request("r1"),
            c1,
        )
        .await;
        let e7 = append(
            store,
            "reconcile/a",
            "ActionFailed",
            reconciler,
            caused_by(&e2),
            c1,
        )
        .await;
        (c1, c2, vec![e1, e2, e3, e4, e5, e6, e7])
    }

    #[test]
    fn log_points_are_seqs_or_rfc3339_times() {
        assert_eq!(LogPoint::parse("42"), Ok(LogPoint::Seq(42)));
        assert_eq!(
            LogPoint::parse("2026-11-25T03:00:01Z"),
            Ok(LogPoint::Time(base_time() + Duration::seconds(1)))
        );
        assert_eq!(
            LogPoint::parse("2026-11-25T04:00:00+01:00"),
            Ok(LogPoint::Time(base_time()))
        );
        for bad in [
            "",
            "-1",
            "yesterday",
            "99999999999999999999999",
            "2026-11-25",
        ] {
            assert!(LogPoint::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn actor_filters_take_a_name_or_kind_and_name() {
        let filter = ActorFilter::parse("alice").unwrap();
        assert!(filter.matches(&actor(ActorKind::User, "alice")));
        assert!(filter.matches(&actor(ActorKind::Webhook, "alice")));
        assert!(!filter.matches(&actor(ActorKind::User, "bob")));
        let filter = ActorFilter::parse("user:alice").unwrap();
        assert!(filter.matches(&actor(ActorKind::User, "alice")));
        assert!(!filter.matches(&actor(ActorKind::Webhook, "alice")));
        let filter = ActorFilter::parse("webhook:git:main").unwrap();
        assert_eq!(filter.name, "git:main");
        assert_eq!(filter.kind, Some(ActorKind::Webhook));
        for bad in ["", "robot:x", "user:", ":x"] {
            assert!(ActorFilter::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn times_round_up_to_whole_microseconds() {
        let time = base_time() + Duration::nanoseconds(1_500);
        assert_eq!(
            ceil_to_micros(time),
            base_time() + Duration::microseconds(2)
        );
        assert_eq!(ceil_to_micros(base_time()), base_time());
    }

    #[tokio::test]
    async fn every_filter_selects_exactly_its_events_on_every_page_size() {
        let dir = tempfile::tempdir().unwrap();
        let store = store(dir.path());
        let (c1, c2, e) = story(&*store).await;
        let at = |i: usize| e[i - 1].time;
        let id = |i: usize| e[i - 1].id.to_string();
        let cases: Vec<(EventQuery, Vec<u64>)> = vec![
            (EventQuery::default(), vec![1, 2, 3, 4, 5, 6, 7]),
            (
                EventQuery {
                    stream: Some("reconcile/a".into()),
                    ..Default::default()
                },
                vec![2, 4, 5, 7],
            ),
            (
                EventQuery {
                    event_type: Some("PoolScaled".into()),
                    ..Default::default()
                },
                vec![1, 3],
            ),
            (
                EventQuery {
                    actor: Some(ActorFilter::parse("alice").unwrap()),
                    ..Default::default()
                },
                vec![1, 6],
            ),
            (
                EventQuery {
                    actor: Some(ActorFilter::parse("reconciler:alice").unwrap()),
                    ..Default::default()
                },
                vec![],
            ),
            (
                EventQuery {
                    actor: Some(ActorFilter::parse("reconciler:reconciler").unwrap()),
                    ..Default::default()
                },
                vec![2, 4, 5, 7],
            ),
            (
                EventQuery {
                    cause: Some(id(1)),
                    ..Default::default()
                },
                vec![2, 5],
            ),
            (
                EventQuery {
                    cause: Some(id(2)),
                    ..Default::default()
                },
                vec![4, 7],
            ),
            (
                EventQuery {
                    cause: Some(id(3)),
                    ..Default::default()
                },
                vec![],
            ),
            (
                EventQuery {
                    cause: Some("r1".into()),
                    ..Default::default()
                },
                vec![1, 6],
            ),
            (
                EventQuery {
                    cause: Some("key-r2".into()),
                    ..Default::default()
                },
                vec![3],
            ),
            (
                EventQuery {
                    cause: Some(Uuid::now_v7().to_string()),
                    ..Default::default()
                },
                vec![],
            ),
            (
                EventQuery {
                    correlation: Some(c1),
                    ..Default::default()
                },
                vec![1, 2, 4, 5, 6, 7],
            ),
            (
                EventQuery {
                    correlation: Some(c2),
                    ..Default::default()
                },
                vec![3],
            ),
            (
                EventQuery {
                    correlation: Some(Uuid::now_v7()),
                    ..Default::default()
                },
                vec![],
            ),
            (
                EventQuery {
                    since: Some(LogPoint::Seq(3)),
                    until: Some(LogPoint::Seq(5)),
                    ..Default::default()
                },
                vec![3, 4, 5],
            ),
            (
                EventQuery {
                    since: Some(LogPoint::Time(at(3))),
                    until: Some(LogPoint::Time(at(5))),
                    ..Default::default()
                },
                vec![3, 4, 5],
            ),
            (
                EventQuery {
                    since: Some(LogPoint::Time(at(3) - Duration::nanoseconds(1))),
                    until: Some(LogPoint::Time(at(5) - Duration::nanoseconds(1))),
                    ..Default::default()
                },
                vec![3, 4],
            ),
            (
                EventQuery {
                    since: Some(LogPoint::Time(at(3) + Duration::nanoseconds(1))),
                    ..Default::default()
                },
                vec![4, 5, 6, 7],
            ),
            (
                EventQuery {
                    until: Some(LogPoint::Time(at(1) - Duration::seconds(1))),
                    ..Default::default()
                },
                vec![],
            ),
            (
                EventQuery {
                    since: Some(LogPoint::Time(at(7) + Duration::seconds(1))),
                    ..Default::default()
                },
                vec![],
            ),
            (
                EventQuery {
                    since: Some(LogPoint::Seq(6)),
                    until: Some(LogPoint::Seq(2)),
                    ..Default::default()
                },
                vec![],
            ),
            (
                EventQuery {
                    until: Some(LogPoint::Seq(100)),
                    ..Default::default()
                },
                vec![1, 2, 3, 4, 5, 6, 7],
            ),
            (
                EventQuery {
                    after: 4,
                    since: Some(LogPoint::Seq(2)),
                    ..Default::default()
                },
                vec![5, 6, 7],
            ),
            (
                EventQuery {
                    correlation: Some(c1),
                    until: Some(LogPoint::Seq(5)),
                    stream: Some("reconcile/a".into()),
                    ..Default::default()
                },
                vec![2, 4, 5],
            ),
            (
                EventQuery {
                    cause: Some(id(1)),
                    correlation: Some(c1),
                    since: Some(LogPoint::Seq(3)),
                    ..Default::default()
                },
                vec![5],
            ),
            (
                EventQuery {
                    cause: Some(id(2)),
                    until: Some(LogPoint::Time(at(6))),
                    ..Default::default()
                },
                vec![4],
            ),
            (
                EventQuery {
                    cause: Some("r1".into()),
                    since: Some(LogPoint::Seq(2)),
                    ..Default::default()
                },
                vec![6],
            ),
        ];
        for (query, expected) in cases {
            for limit in [1, 2, 3, 1000] {
                let query = EventQuery {
                    limit,
                    ..query.clone()
                };
                assert_eq!(all_pages(&*store, &query).await, expected, "{query:?}");
            }
        }
    }

    #[tokio::test]
    async fn an_index_page_says_whether_more_can_follow() {
        let dir = tempfile::tempdir().unwrap();
        let store = store(dir.path());
        let (_, _, e) = story(&*store).await;
        let query = EventQuery {
            cause: Some(e[1].id.to_string()),
            limit: 1,
            ..Default::default()
        };
        let first = events(&*store, &query).await.unwrap();
        assert_eq!(first.next_after, Some(4));
        let last = events(
            &*store,
            &EventQuery {
                after: 4,
                ..query.clone()
            },
        )
        .await
        .unwrap();
        assert_eq!(last.events[0].seq, 7);
        assert_eq!(last.next_after, None, "nothing else is caused by seq 2");
        // An exactly full last page of the log still points past its end
        // only when something is after it.
        let whole = events(
            &*store,
            &EventQuery {
                limit: 7,
                ..Default::default()
            },
        )
        .await
        .unwrap();
        assert_eq!(whole.next_after, None);
    }

    #[tokio::test]
    async fn a_trace_follows_causes_up_and_effects_down() {
        let dir = tempfile::tempdir().unwrap();
        let store = store(dir.path());
        let (_, _, e) = story(&*store).await;

        let of_change = trace(&*store, e[0].id, TraceLimits::default())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(of_change.event.seq, 1);
        assert!(of_change.causes.is_empty());
        assert_eq!(of_change.origin, request("r1"));
        let effects: Vec<(u64, u32, u64)> = of_change
            .effects
            .iter()
            .map(|effect| (effect.event.seq, effect.depth, effect.parent))
            .collect();
        assert_eq!(effects, vec![(2, 1, 1), (4, 2, 2), (5, 1, 1), (7, 2, 2)]);
        assert!(!of_change.effects_truncated);
        let correlated: Vec<u64> = of_change.correlated.iter().map(|e| e.seq).collect();
        assert_eq!(correlated, vec![6], "same correlation, outside the chain");

        let of_outcome = trace(&*store, e[3].id, TraceLimits::default())
            .await
            .unwrap()
            .unwrap();
        let causes: Vec<u64> = of_outcome.causes.iter().map(|e| e.seq).collect();
        assert_eq!(causes, vec![1, 2], "root first");
        assert_eq!(of_outcome.origin, request("r1"));
        assert!(of_outcome.effects.is_empty());
        let correlated: Vec<u64> = of_outcome.correlated.iter().map(|e| e.seq).collect();
        assert_eq!(correlated, vec![5, 6, 7]);

        assert!(trace(&*store, Uuid::now_v7(), TraceLimits::default())
            .await
            .unwrap()
            .is_none());
    }

    #[tokio::test]
    async fn a_trace_is_bounded_and_says_so() {
        let dir = tempfile::tempdir().unwrap();
        let store = store(dir.path());
        let (_, _, e) = story(&*store).await;
        let limits = TraceLimits {
            causes: 1,
            effects: 2,
            correlated: 1,
        };
        let of_change = trace(&*store, e[0].id, limits).await.unwrap().unwrap();
        let effects: Vec<u64> = of_change.effects.iter().map(|e| e.event.seq).collect();
        assert_eq!(
            effects,
            vec![2, 5],
            "breadth first: the direct effects first"
        );
        assert!(of_change.effects_truncated);
        assert_eq!(of_change.correlated.len(), 1);
        assert!(of_change.correlated_truncated);

        let of_outcome = trace(&*store, e[3].id, limits).await.unwrap().unwrap();
        assert_eq!(of_outcome.causes.len(), 1);
        assert_eq!(of_outcome.causes[0].seq, 2, "the nearest cause is kept");
        assert!(of_outcome.causes_truncated);

        // Exactly at the limit is not truncated.
        let limits = TraceLimits {
            effects: 4,
            ..TraceLimits::default()
        };
        let of_change = trace(&*store, e[0].id, limits).await.unwrap().unwrap();
        assert_eq!(of_change.effects.len(), 4);
        assert!(!of_change.effects_truncated);
    }
}
