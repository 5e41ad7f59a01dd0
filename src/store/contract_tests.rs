//! One contract suite that every backend runs: the same cases, the same
//! answers (toyDB's engine tests are the model).
//!
//! A backend's test module implements `Backend` (a fresh, empty store's data,
//! and a way to open a store over it, again after a close as a restart
//! would) and calls `contract_suite!(ItsBackend)`, which makes one
//! `#[tokio::test]` per case below. Adding a case is one async function here
//! and one name in the macro's list.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;

use chrono::{DateTime, TimeZone, Utc};
use uuid::Uuid;

use super::test_support::{new_event, request};
use super::{AppendRequest, Clock, EventStore, ExpectedVersion, Idempotency, StoreError};
use crate::event::{Cause, Event};

/// A backend under test.
pub(crate) trait Backend: Send + Sync + Sized {
    /// Empty data for a new log.
    fn new() -> Self;
    /// A store over this backend's data, stamping events with `clock`. The
    /// data outlives the store: a store opened after another was closed sees
    /// everything the first one acknowledged.
    fn open(&self, clock: Clock) -> Arc<dyn EventStore>;
}

/// A clock tests can set and step backwards.
#[derive(Clone)]
pub(crate) struct TestClock(Arc<AtomicI64>);

impl TestClock {
    pub(crate) fn at_micros(micros: i64) -> TestClock {
        TestClock(Arc::new(AtomicI64::new(micros)))
    }

    pub(crate) fn set_micros(&self, micros: i64) {
        self.0.store(micros, Ordering::SeqCst);
    }

    pub(crate) fn step_micros(&self, delta: i64) {
        self.0.fetch_add(delta, Ordering::SeqCst);
    }

    pub(crate) fn clock(&self) -> Clock {
        let micros = self.0.clone();
        Arc::new(move || Utc.timestamp_micros(micros.load(Ordering::SeqCst)).unwrap())
    }
}

fn wall_clock() -> Clock {
    Arc::new(Utc::now)
}

fn at(micros: i64) -> DateTime<Utc> {
    Utc.timestamp_micros(micros).unwrap()
}

fn seqs(events: &[Arc<Event>]) -> Vec<u64> {
    events.iter().map(|event| event.seq).collect()
}

fn keyed(stream: &str, key: &str, digest: u8, texts: &[&str]) -> AppendRequest {
    AppendRequest {
        idempotency: Some(Idempotency {
            key: key.into(),
            digest: [digest; 32],
        }),
        ..request(stream, ExpectedVersion::Any, texts)
    }
}

pub(crate) async fn seqs_are_gap_free_and_versions_count_per_stream<B: Backend>(backend: &B) {
    let store = backend.open(wall_clock());
    let a = store
        .append(request("a", ExpectedVersion::NoStream, &["1", "2"]))
        .await
        .unwrap();
    let b = store
        .append(request("b", ExpectedVersion::Any, &["3"]))
        .await
        .unwrap();
    let a2 = store
        .append(request("a", ExpectedVersion::Exact(2), &["4"]))
        .await
        .unwrap();
    assert_eq!(seqs(&a.events), vec![1, 2]);
    assert_eq!(seqs(&b.events), vec![3]);
    assert_eq!(seqs(&a2.events), vec![4]);
    assert_eq!(a2.stream_version, 3);
    assert_eq!(a2.events[0].prev_hash, b.events[0].hash);
    let stream = store.read_stream("a", 0, 10).await.unwrap();
    let positions: Vec<_> = stream.iter().map(|e| (e.seq, e.version)).collect();
    assert_eq!(positions, vec![(1, 1), (2, 2), (4, 3)]);
    assert_eq!(seqs(&store.read_stream("a", 1, 1).await.unwrap()), vec![2]);
    assert!(store.read_stream("a", 3, 10).await.unwrap().is_empty());
    assert!(store
        .read_stream("missing", 0, 10)
        .await
        .unwrap()
        .is_empty());
    assert_eq!(seqs(&store.read(1, 2).await.unwrap()), vec![2, 3]);
    assert!(store.read(4, 10).await.unwrap().is_empty());
    assert_eq!(store.stream_version("a").await.unwrap(), 3);
    assert_eq!(store.stream_version("missing").await.unwrap(), 0);
    assert_eq!(store.head().seq, 4);
    assert_eq!(store.head().hash, a2.events[0].hash);
    assert!(store.verify().await.unwrap().is_ok());
}

pub(crate) async fn records_are_the_stored_form_of_what_read_reads<B: Backend>(backend: &B) {
    async fn compare(store: &dyn EventStore, after: u64, limit: usize) -> usize {
        let events = store.read(after, limit).await.unwrap();
        let records = store.read_records(after, limit).await.unwrap();
        let encoded: Vec<Vec<u8>> = events.iter().map(|event| event.encode_record()).collect();
        let stored: Vec<Vec<u8>> = records.iter().map(|record| record.to_vec()).collect();
        assert_eq!(stored, encoded, "after {after}, limit {limit}");
        records.len()
    }
    {
        // Just appended (the log store answers these from memory).
        let store = backend.open(wall_clock());
        store
            .append(request("a", ExpectedVersion::Any, &["1", "2", "3"]))
            .await
            .unwrap();
        store.append(keyed("b", "k", 1, &["4", "5"])).await.unwrap();
        assert_eq!(compare(store.as_ref(), 0, 10).await, 5);
        store.close().await;
    }
    // After a restart (the log store reads them from its files).
    let store = backend.open(wall_clock());
    assert_eq!(compare(store.as_ref(), 0, 10).await, 5);
    assert_eq!(compare(store.as_ref(), 1, 2).await, 2);
    assert_eq!(compare(store.as_ref(), 4, 10).await, 1);
    assert_eq!(compare(store.as_ref(), 5, 10).await, 0);
    assert_eq!(compare(store.as_ref(), 0, 0).await, 0);
}

pub(crate) async fn wrong_expected_version_is_a_conflict_carrying_the_current_version<
    B: Backend,
>(
    backend: &B,
) {
    let store = backend.open(wall_clock());
    store
        .append(request("a", ExpectedVersion::NoStream, &["1"]))
        .await
        .unwrap();
    for expected in [ExpectedVersion::NoStream, ExpectedVersion::Exact(5)] {
        match store.append(request("a", expected, &["x"])).await {
            Err(StoreError::WrongExpectedVersion { current, .. }) => assert_eq!(current, 1),
            other => panic!("expected a conflict, got {other:?}"),
        }
    }
    assert_eq!(store.head().seq, 1);
}

pub(crate) async fn idempotency_key_returns_the_original_outcome_across_restarts<B: Backend>(
    backend: &B,
) {
    let first = {
        let store = backend.open(wall_clock());
        let first = store
            .append(keyed("a", "k1", 1, &["1", "2"]))
            .await
            .unwrap();
        assert!(!first.deduplicated);
        store.close().await;
        first
    };
    let store = backend.open(wall_clock());
    let again = store
        .append(keyed("a", "k1", 1, &["1", "2"]))
        .await
        .unwrap();
    assert!(again.deduplicated);
    assert_eq!(again.events, first.events);
    assert_eq!(again.stream_version, 2);
    assert_eq!(store.head().seq, 2);
    match store.append(keyed("a", "k1", 2, &["1", "2"])).await {
        Err(StoreError::IdempotencyKeyReused { key }) => assert_eq!(key, "k1"),
        other => panic!("expected reuse error, got {other:?}"),
    }
    assert_eq!(store.head().seq, 2);
    let record = store.idempotency_record("k1").await.unwrap().unwrap();
    assert_eq!((record.first_seq, record.last_seq), (1, 2));
    assert_eq!(store.idempotency_record("other").await.unwrap(), None);
}

pub(crate) async fn a_key_alone_is_recorded_by_an_empty_append<B: Backend>(backend: &B) {
    let store = backend.open(wall_clock());
    store
        .append(request("a", ExpectedVersion::Any, &["1"]))
        .await
        .unwrap();
    let empty = store.append(keyed("a", "nothing", 7, &[])).await.unwrap();
    assert!(empty.events.is_empty());
    assert_eq!(empty.stream_version, 1);
    assert_eq!(store.head().seq, 1);
    store.close().await;
    drop(store);
    let store = backend.open(wall_clock());
    let again = store.append(keyed("a", "nothing", 7, &[])).await.unwrap();
    assert!(again.deduplicated);
    assert!(again.events.is_empty());
    let record = store.idempotency_record("nothing").await.unwrap().unwrap();
    assert!(record.first_seq > record.last_seq);
}

pub(crate) async fn a_request_with_one_oversized_event_stores_nothing<B: Backend>(backend: &B) {
    let store = backend.open(wall_clock());
    let big = "x".repeat(store.max_record_bytes() + 1);
    match store
        .append(request("a", ExpectedVersion::Any, &["small", &big]))
        .await
    {
        Err(StoreError::EventTooLarge { index, .. }) => assert_eq!(index, 1),
        other => panic!("expected EventTooLarge, got {other:?}"),
    }
    assert_eq!(store.head().seq, 0);
    assert_eq!(store.stream_version("a").await.unwrap(), 0);
    let next = store
        .append(request("a", ExpectedVersion::NoStream, &["ok"]))
        .await
        .unwrap();
    assert_eq!(seqs(&next.events), vec![1]);
}

pub(crate) async fn invalid_requests_are_refused_and_store_nothing<B: Backend>(backend: &B) {
    let store = backend.open(wall_clock());
    for bad in [
        request("", ExpectedVersion::Any, &["x"]),
        request("a\0b", ExpectedVersion::Any, &["x"]),
        request("a", ExpectedVersion::Any, &[]),
        keyed("a", "", 1, &["x"]),
    ] {
        assert!(matches!(
            store.append(bad).await,
            Err(StoreError::InvalidRequest(_))
        ));
    }
    assert_eq!(store.head().seq, 0);
}

pub(crate) async fn event_time_never_decreases_when_the_clock_steps_back<B: Backend>(backend: &B) {
    let clock = TestClock::at_micros(2_000_000_000_000_000);
    let store = backend.open(clock.clock());
    let mut times = Vec::new();
    for step in [0, -5_000_000, 1, -60_000_000, 100_000_000] {
        clock.step_micros(step);
        let outcome = store
            .append(request("a", ExpectedVersion::Any, &["t"]))
            .await
            .unwrap();
        times.push(outcome.events[0].time);
    }
    assert!(times.windows(2).all(|pair| pair[0] <= pair[1]), "{times:?}");
    assert!(
        times[4] > times[3],
        "time moves on once the clock catches up"
    );
    // Also across a restart: the new store knows the last time.
    store.close().await;
    drop(store);
    clock.step_micros(-1_000_000_000);
    let store = backend.open(clock.clock());
    let after = store
        .append(request("a", ExpectedVersion::Any, &["t"]))
        .await
        .unwrap();
    assert_eq!(after.events[0].time, times[4]);
}

pub(crate) async fn a_cause_naming_an_event_of_the_same_request_gets_its_seq<B: Backend>(
    backend: &B,
) {
    let store = backend.open(wall_clock());
    store
        .append(request("a", ExpectedVersion::Any, &["before"]))
        .await
        .unwrap();
    let mut first = new_event("request");
    let mut second = new_event("effect");
    second.cause = Cause::Event {
        seq: 0,
        id: first.id,
    };
    // A zero seq naming an id outside the request is left as it is.
    let stranger = Uuid::now_v7();
    first.cause = Cause::Event {
        seq: 0,
        id: stranger,
    };
    let outcome = store
        .append(AppendRequest {
            stream: "a".into(),
            expected: ExpectedVersion::Any,
            events: vec![first.clone(), second],
            idempotency: None,
        })
        .await
        .unwrap();
    let resolved = Cause::Event {
        seq: 2,
        id: first.id,
    };
    assert_eq!(outcome.events[1].cause, resolved);
    let untouched = Cause::Event {
        seq: 0,
        id: stranger,
    };
    assert_eq!(outcome.events[0].cause, untouched);
    assert_eq!(store.caused_by(2, 0, 10).await.unwrap(), vec![3]);
    assert_eq!(store.verify().await.unwrap().first_bad, None);
}

pub(crate) async fn events_are_found_by_id_time_cause_and_correlation<B: Backend>(backend: &B) {
    let clock = TestClock::at_micros(1_000_000);
    let store = backend.open(clock.clock());
    let correlation = Uuid::now_v7();
    let mut ids = Vec::new();
    for step in 0..5u64 {
        clock.set_micros(1_000_000 + step as i64 * 10);
        let mut event = new_event("x");
        event.correlation = if step % 2 == 0 {
            correlation
        } else {
            Uuid::nil()
        };
        if step > 0 {
            event.cause = Cause::Event { seq: 1, id: ids[0] };
        }
        ids.push(event.id);
        store
            .append(AppendRequest {
                stream: "a".into(),
                expected: ExpectedVersion::Any,
                events: vec![event],
                idempotency: None,
            })
            .await
            .unwrap();
    }
    // An append of several events has one time.
    clock.set_micros(2_000_000);
    store
        .append(AppendRequest {
            stream: "b".into(),
            expected: ExpectedVersion::Any,
            events: vec![new_event("b1"), new_event("b2"), new_event("b3")],
            idempotency: None,
        })
        .await
        .unwrap();
    let check = |store: Arc<dyn EventStore>| {
        let ids = ids.clone();
        async move {
            assert_eq!(store.seq_of_id(ids[3]).await.unwrap(), Some(4));
            assert_eq!(store.seq_of_id(Uuid::now_v7()).await.unwrap(), None);
            assert_eq!(store.seq_at_time(at(999_999)).await.unwrap(), 0);
            assert_eq!(store.seq_at_time(at(1_000_000)).await.unwrap(), 1);
            assert_eq!(store.seq_at_time(at(1_000_025)).await.unwrap(), 3);
            assert_eq!(store.seq_at_time(at(1_999_999)).await.unwrap(), 5);
            assert_eq!(store.seq_at_time(at(2_000_000)).await.unwrap(), 8);
            assert_eq!(store.seq_at_time(at(9_000_000)).await.unwrap(), 8);
            assert_eq!(store.caused_by(1, 0, 10).await.unwrap(), vec![2, 3, 4, 5]);
            assert_eq!(store.caused_by(1, 3, 1).await.unwrap(), vec![4]);
            assert!(store.caused_by(2, 0, 10).await.unwrap().is_empty());
            let correlated = store.correlated(correlation, 0, 10).await.unwrap();
            assert_eq!(correlated, vec![1, 3, 5]);
            assert_eq!(store.correlated(correlation, 1, 1).await.unwrap(), vec![3]);
        }
    };
    check(store.clone()).await;
    store.close().await;
    drop(store);
    check(backend.open(wall_clock())).await;
}

pub(crate) async fn import_takes_a_chain_as_it_is_and_names_the_first_event_that_does_not_fit<
    B: Backend,
>(
    backend: &B,
) {
    let source_backend = B::new();
    let source = source_backend.open(wall_clock());
    source
        .append(request("a", ExpectedVersion::Any, &["1", "2"]))
        .await
        .unwrap();
    source
        .append(request("b", ExpectedVersion::Any, &["3"]))
        .await
        .unwrap();
    let events: Vec<Event> = source
        .read(0, 10)
        .await
        .unwrap()
        .iter()
        .map(|event| (**event).clone())
        .collect();

    let target = backend.open(wall_clock());
    let mut tampered = events.clone();
    tampered[1].payload = b"two".to_vec();
    match target.import(tampered).await {
        Err(StoreError::ImportRejected { index, seq, .. }) => assert_eq!((index, seq), (1, 2)),
        other => panic!("expected a rejection, got {other:?}"),
    }
    // Nothing of the rejected request was stored.
    assert_eq!(target.head().seq, 0);
    let mut skipping = events.clone();
    skipping.remove(0);
    assert!(matches!(
        target.import(skipping).await,
        Err(StoreError::ImportRejected {
            index: 0,
            seq: 2,
            ..
        })
    ));

    target.import(events[..1].to_vec()).await.unwrap();
    let head = target.import(events[1..].to_vec()).await.unwrap();
    assert_eq!(head, source.head());
    assert!(target.verify().await.unwrap().is_ok());
    assert_eq!(target.stream_version("a").await.unwrap(), 2);
    assert_eq!(
        target.seq_of_id(events[2].id).await.unwrap(),
        Some(3),
        "imported events are indexed"
    );
    // Appends continue the imported chain.
    let next = target
        .append(request("a", ExpectedVersion::Exact(2), &["4"]))
        .await
        .unwrap();
    assert_eq!((next.events[0].seq, next.events[0].version), (4, 3));
    assert!(target.verify().await.unwrap().is_ok());
}

pub(crate) async fn snapshots_are_kept_by_seq<B: Backend>(backend: &B) {
    let store = backend.open(wall_clock());
    store
        .append(request(
            "a",
            ExpectedVersion::Any,
            &["1", "2", "3", "4", "5"],
        ))
        .await
        .unwrap();
    store
        .save_snapshot(
            5,
            vec![("b".into(), vec![2; 100_000]), ("a".into(), vec![1])],
        )
        .await
        .unwrap();
    store
        .save_snapshot(3, vec![("a".into(), vec![0])])
        .await
        .unwrap();
    assert_eq!(store.snapshot_seqs().await.unwrap(), vec![3, 5]);
    assert_eq!(
        store.snapshot_part(5, "b").await.unwrap(),
        Some(vec![2; 100_000])
    );
    assert_eq!(store.snapshot_part(5, "c").await.unwrap(), None);
    let names: Vec<String> = store
        .snapshot_parts(5)
        .await
        .unwrap()
        .into_iter()
        .map(|(name, _)| name)
        .collect();
    assert_eq!(names, vec!["a", "b"]);
    store.close().await;
    drop(store);
    let store = backend.open(wall_clock());
    assert_eq!(store.snapshot_seqs().await.unwrap(), vec![3, 5]);
}

pub(crate) async fn concurrent_appends_are_all_stored_in_one_chain<B: Backend>(backend: &B) {
    let store = backend.open(wall_clock());
    let tasks: Vec<_> = (0..32)
        .map(|writer| {
            let store = store.clone();
            tokio::spawn(async move {
                for _ in 0..10 {
                    store
                        .append(request(&format!("s{writer}"), ExpectedVersion::Any, &["e"]))
                        .await
                        .unwrap();
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    assert_eq!(store.head().seq, 320);
    assert_eq!(store.metrics().events_appended.get(), 320);
    assert_eq!(store.stream_version("s7").await.unwrap(), 10);
    assert!(store.verify().await.unwrap().is_ok());
}

pub(crate) async fn committed_events_are_published_in_order<B: Backend>(backend: &B) {
    let store = backend.open(wall_clock());
    let mut live = store.subscribe_committed();
    store
        .append(request("a", ExpectedVersion::Any, &["1", "2"]))
        .await
        .unwrap();
    store
        .append(request("b", ExpectedVersion::Any, &["3"]))
        .await
        .unwrap();
    for expected in 1..=3 {
        assert_eq!(live.recv().await.unwrap().seq, expected);
    }
}

pub(crate) async fn a_closed_store_refuses_appends<B: Backend>(backend: &B) {
    let store = backend.open(wall_clock());
    store
        .append(request("a", ExpectedVersion::Any, &["1"]))
        .await
        .unwrap();
    store.close().await;
    assert!(matches!(
        store
            .append(request("a", ExpectedVersion::Any, &["2"]))
            .await,
        Err(StoreError::Closed)
    ));
    drop(store);
    let store = backend.open(wall_clock());
    assert_eq!(store.head().seq, 1);
}

/// One `#[tokio::test]` per contract case for a `Backend` type.
macro_rules! contract_suite {
    ($backend:ty) => {
        $crate::store::contract_tests::contract_suite!(@cases $backend;
            seqs_are_gap_free_and_versions_count_per_stream,
            records_are_the_stored_form_of_what_read_reads,
            wrong_expected_version_is_a_conflict_carrying_the_current_version,
            idempotency_key_returns_the_original_outcome_across_restarts,
            a_key_alone_is_recorded_by_an_empty_append,
            a_request_with_one_oversized_event_stores_nothing,
            invalid_requests_are_refused_and_store_nothing,
            event_time_never_decreases_when_the_clock_steps_back,
            a_cause_naming_an_event_of_the_same_request_gets_its_seq,
            events_are_found_by_id_time_cause_and_correlation,
            import_takes_a_chain_as_it_is_and_names_the_first_event_that_does_not_fit,
            snapshots_are_kept_by_seq,
            concurrent_appends_are_all_stored_in_one_chain,
            committed_events_are_published_in_order,
            a_closed_store_refuses_appends,
        );
    };
    (@cases $backend:ty; $($case:ident),* $(,)?) => {
        mod contract {
            #[allow(unused_imports)]
            use super::*;
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    let backend = <$backend as $crate::store::contract_tests::Backend>::new();
                    $crate::store::contract_tests::$case(&backend).await;
                }
            )*
        }
    };
}
pub(crate) use contract_suite;
