//! `cairn replay`: rebuild every projection from seq 1, offline, and check
//! each stored snapshot against the state the replay had at its seq.
//!
//! Snapshots are a cache of the fold; this is how an operator (or a test)
//! proves the cache says what the log says. A snapshot of another format is
//! reported as not comparable rather than as a difference.

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use serde::Serialize;

use std::ops::Range;

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot};

use crate::event::EventRef;
use crate::projection::{
    check_comparable, join_shares, Projections, ShareParts, SnapshotError, CLUSTER_STREAM_PREFIX,
    RECONCILE_STREAM_PREFIX,
};
use crate::store::read_ahead::read_records_ahead;
use crate::store::{EventStore, StoreError};

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ReplayReport {
    pub events: u64,
    pub seconds: f64,
    pub events_per_second: f64,
    pub clusters: usize,
    pub skipped_events: u64,
    pub snapshots: Vec<SnapshotCheck>,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SnapshotCheck {
    pub seq: u64,
    /// `same`, `different` or `not comparable`.
    pub verdict: String,
    /// The parts (cluster names; "" is the header) that differ, or why the
    /// snapshot could not be compared.
    pub details: Vec<String>,
}

impl ReplayReport {
    pub fn differing(&self) -> usize {
        self.snapshots
            .iter()
            .filter(|check| check.verdict == "different")
            .count()
    }

    pub fn is_clean(&self) -> bool {
        self.differing() == 0
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    #[error("{0} is not a Cairn data directory (it holds no log)")]
    NotADataDir(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Replays the log of a data directory that no daemon holds.
pub async fn replay_offline(dir: &Path) -> Result<ReplayReport, ReplayError> {
    if !crate::store::holds_a_log(dir) {
        // A sled directory gets its own message; anything else is not one.
        crate::store::require_a_log(dir)?;
        return Err(ReplayError::NotADataDir(dir.display().to_string()));
    }
    let store = crate::store::open_off_runtime(crate::store::StoreConfig::new(dir)).await?;
    let report = replay(store.clone()).await;
    store.close().await;
    report
}

/// Folds the whole log from seq 1, checking every stored snapshot on the way.
///
/// The fold is split by cluster over one thread per core (a cluster's state
/// depends only on its own two streams, see `projection::snapshot`): every
/// fold thread is handed every page of records, reads the stream of each
/// (a few bytes), and decodes and folds only the records of its own
/// clusters. Decoding on the thread that folds keeps an event's allocations
/// on the thread that frees them. At a snapshot's seq each fold thread
/// encodes the parts of its clusters, and they are compared together.
pub async fn replay(store: Arc<dyn EventStore>) -> Result<ReplayReport, ReplayError> {
    replay_with(store, fold_threads()).await
}

/// One fold thread per core the process may use (at least one).
fn fold_threads() -> usize {
    std::thread::available_parallelism().map_or(1, usize::from)
}

/// [`replay`] with `threads` fold threads.
async fn replay_with(
    store: Arc<dyn EventStore>,
    threads: usize,
) -> Result<ReplayReport, ReplayError> {
    let mut snapshots = Comparisons {
        pending: store.snapshot_seqs().await?.into_iter().collect(),
        checks: Vec::new(),
        seconds: 0.0,
    };
    let started = Instant::now();
    let until = store.head().seq;
    let folds: Vec<FoldThread> = (0..threads)
        .map(|index| FoldThread::spawn(index, threads))
        .collect();
    let mut pages = read_records_ahead(store.clone(), 0, until);
    // The seq of the last record handed to the fold threads.
    let mut handed = 0u64;
    let mut failure = None;
    // A snapshot at seq 0 first.
    let mut going = snapshots
        .compare_reached(store.as_ref(), &folds, handed)
        .await?;
    while going {
        let page = match pages.recv().await {
            Some(Ok(page)) => Arc::new(page),
            Some(Err(error)) => {
                failure = Some(error);
                break;
            }
            None => break,
        };
        // Split the page at the next snapshot's seq, so that each snapshot
        // is compared at its own seq, not at the page's end.
        let mut start = 0;
        while going && start < page.len() {
            let room = snapshots.next_seq().map_or(usize::MAX, |seq| {
                usize::try_from(seq.saturating_sub(handed)).unwrap_or(usize::MAX)
            });
            let end = page.len().min(start.saturating_add(room.max(1)));
            for fold in &folds {
                let records = Records {
                    page: page.clone(),
                    range: start..end,
                    first_seq: handed + 1,
                };
                going &= fold.sender.send(ToFold::Records(records)).await.is_ok();
            }
            handed += (end - start) as u64;
            start = end;
            going = going
                && snapshots
                    .compare_reached(store.as_ref(), &folds, handed)
                    .await?;
        }
    }
    let mut summary = FoldSummary::default();
    for fold in folds {
        drop(fold.sender);
        let result = fold
            .handle
            .await
            .expect("a fold thread does not panic on any record");
        match result {
            Ok(part) => summary.add(&part),
            Err(error) => failure = failure.or(Some(error)),
        }
    }
    if let Some(error) = failure {
        return Err(error.into());
    }
    let mut checks = snapshots.checks;
    for seq in snapshots.pending {
        checks.push(SnapshotCheck {
            seq,
            verdict: "different".into(),
            details: vec![format!(
                "the snapshot is past the end of the log (seq {handed})"
            )],
        });
    }
    let seconds = started.elapsed().as_secs_f64() - snapshots.seconds;
    let events = handed;
    Ok(ReplayReport {
        events,
        seconds,
        events_per_second: if seconds > 0.0 {
            events as f64 / seconds
        } else {
            0.0
        },
        clusters: summary.clusters,
        skipped_events: summary.desired_skipped + summary.observed_skipped,
        snapshots: checks,
    })
}

/// The stored snapshots a replay compares with its fold.
struct Comparisons {
    /// The seqs of the snapshots not compared yet, in order.
    pending: std::collections::VecDeque<u64>,
    checks: Vec<SnapshotCheck>,
    /// The time spent encoding and comparing: not the fold's.
    seconds: f64,
}

impl Comparisons {
    fn next_seq(&self) -> Option<u64> {
        self.pending.front().copied()
    }

    /// Compares every snapshot at or before `handed`, the last seq handed
    /// to the fold threads. False when a fold thread has stopped (its
    /// result says why).
    async fn compare_reached(
        &mut self,
        store: &dyn EventStore,
        folds: &[FoldThread],
        handed: u64,
    ) -> Result<bool, StoreError> {
        while let Some(seq) = self.next_seq().filter(|&seq| seq <= handed) {
            self.pending.pop_front();
            let Some((parts, encode_seconds)) = checkpoint(folds, handed).await else {
                return Ok(false);
            };
            let compared = Instant::now();
            self.checks.push(check(store, seq, parts).await?);
            self.seconds += compared.elapsed().as_secs_f64() + encode_seconds;
        }
        Ok(true)
    }
}

/// Records `range` of a page read from the log; the first is at `first_seq`.
struct Records {
    page: Arc<Vec<Bytes>>,
    range: Range<usize>,
    first_seq: u64,
}

enum ToFold {
    Records(Records),
    /// Encode the parts of this thread's clusters, as of the last record
    /// handed to it.
    /// The reply carries the time the encoding took: a snapshot check's,
    /// not the fold's.
    Checkpoint(oneshot::Sender<(ShareParts, f64)>),
}

/// What a fold thread's state comes to at the end.
#[derive(Default)]
struct FoldSummary {
    clusters: usize,
    desired_skipped: u64,
    observed_skipped: u64,
}

impl FoldSummary {
    fn add(&mut self, other: &FoldSummary) {
        self.clusters += other.clusters;
        self.desired_skipped += other.desired_skipped;
        self.observed_skipped += other.observed_skipped;
    }
}

/// A thread that folds the clusters of one share (see [`share_of`]).
struct FoldThread {
    sender: mpsc::Sender<ToFold>,
    handle: tokio::task::JoinHandle<Result<FoldSummary, StoreError>>,
}

impl FoldThread {
    fn spawn(index: usize, shares: usize) -> FoldThread {
        // A few page ranges ahead: enough to keep the thread busy while the
        // reader fills the next page, few enough to bound the memory.
        let (sender, receiver) = mpsc::channel(4);
        let handle = tokio::task::spawn_blocking(move || fold_share(receiver, index, shares));
        FoldThread { sender, handle }
    }
}

/// The fold thread's loop: folds the records of share `index` of `shares`
/// until the channel ends, or until a record is not what the log says.
fn fold_share(
    mut receiver: mpsc::Receiver<ToFold>,
    index: usize,
    shares: usize,
) -> Result<FoldSummary, StoreError> {
    let mut projections = Projections::default();
    while let Some(message) = receiver.blocking_recv() {
        match message {
            ToFold::Records(records) => {
                for (offset, record) in records.page[records.range.clone()].iter().enumerate() {
                    if share_of(record, shares) != index {
                        continue;
                    }
                    let seq = records.first_seq + offset as u64;
                    let event = read_in_place(record, seq)?;
                    projections.apply_ref(&event);
                }
            }
            ToFold::Checkpoint(reply) => {
                let encoding = Instant::now();
                let share = projections.share_parts();
                // The receiver is gone only when the replay has stopped.
                let _ = reply.send((share, encoding.elapsed().as_secs_f64()));
            }
        }
    }
    Ok(FoldSummary {
        clusters: projections.desired.clusters().count(),
        desired_skipped: projections.desired.skipped_events,
        observed_skipped: projections.observed.skipped_events,
    })
}

/// The share a record belongs to: a cluster's two streams (`cluster/<name>`
/// and `reconcile/<name>`) are in the same share, any other stream by its
/// whole name. A record whose stream cannot be read goes to share 0, whose
/// full decode reports it.
fn share_of(record: &[u8], shares: usize) -> usize {
    if shares == 1 {
        return 0;
    }
    let Some(stream) = EventRef::stream_bytes_of_record(record) else {
        return 0;
    };
    let key = stream
        .strip_prefix(CLUSTER_STREAM_PREFIX.as_bytes())
        .or_else(|| stream.strip_prefix(RECONCILE_STREAM_PREFIX.as_bytes()))
        .unwrap_or(stream);
    // FNV-1a: fixed, so a share does not change from run to run.
    let hash = key.iter().fold(0xcbf2_9ce4_8422_2325_u64, |hash, byte| {
        (hash ^ u64::from(*byte)).wrapping_mul(0x0100_0000_01b3)
    });
    (hash % shares as u64) as usize
}

/// Every fold thread's parts as of the last record handed to them, put
/// together with the header of a snapshot at `seq`, and the longest time a
/// thread took to encode its share. None when a fold thread has stopped.
async fn checkpoint(folds: &[FoldThread], seq: u64) -> Option<(Vec<(String, Vec<u8>)>, f64)> {
    let mut replies = Vec::with_capacity(folds.len());
    for fold in folds {
        let (reply, answer) = oneshot::channel();
        fold.sender.send(ToFold::Checkpoint(reply)).await.ok()?;
        replies.push(answer);
    }
    let mut shares = Vec::with_capacity(folds.len());
    let mut encode_seconds = 0.0f64;
    for answer in replies {
        let (share, seconds) = answer.await.ok()?;
        shares.push(share);
        encode_seconds = encode_seconds.max(seconds);
    }
    Some((join_shares(seq, shares), encode_seconds))
}

/// The event a stored record holds, read in place; it must be the event at
/// `seq`.
fn read_in_place(record: &[u8], seq: u64) -> Result<EventRef<'_>, StoreError> {
    let event = EventRef::decode_record(record).map_err(|error| StoreError::Corrupt {
        seq,
        reason: error.to_string(),
    })?;
    if event.seq != seq {
        return Err(StoreError::Corrupt {
            seq,
            reason: format!("the record says seq {}", event.seq),
        });
    }
    Ok(event)
}

/// Compares the stored snapshot at `seq` with the replay's parts then.
async fn check(
    store: &dyn EventStore,
    seq: u64,
    expected: Vec<(String, Vec<u8>)>,
) -> Result<SnapshotCheck, StoreError> {
    let stored = store.snapshot_parts(seq).await?;
    if let Err(error @ (SnapshotError::OtherFormat { .. } | SnapshotError::NoHeader)) =
        check_comparable(&stored)
    {
        return Ok(SnapshotCheck {
            seq,
            verdict: "not comparable".into(),
            details: vec![error.to_string()],
        });
    }
    // Parts are encoded deterministically, so comparing bytes by name names
    // exactly the clusters whose state differs.
    let mut details = Vec::new();
    let mut stored_iter = stored.iter().peekable();
    let mut expected_iter = expected.iter().peekable();
    loop {
        match (stored_iter.peek(), expected_iter.peek()) {
            (None, None) => break,
            (Some((a, x)), Some((b, y))) if a == b => {
                if x != y {
                    details.push(format!("{a:?}: differs"));
                }
                stored_iter.next();
                expected_iter.next();
            }
            (Some((a, _)), Some((b, _))) if a < b => {
                details.push(format!("{a:?}: only in the snapshot"));
                stored_iter.next();
            }
            (Some(_), Some((b, _))) | (None, Some((b, _))) => {
                details.push(format!("{b:?}: missing from the snapshot"));
                expected_iter.next();
            }
            (Some((a, _)), None) => {
                details.push(format!("{a:?}: only in the snapshot"));
                stored_iter.next();
            }
        }
    }
    Ok(SnapshotCheck {
        seq,
        verdict: if details.is_empty() {
            "same"
        } else {
            "different"
        }
        .into(),
        details,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::payload::{encode_change, encode_reconcile, EncodedPayload};
    use crate::model::{
        parse_manifest, Change, ClusterDeclared, ConditionChanged, ConditionType, ManifestFormat,
        PoolScaled, ReconcileEvent,
    };
    use crate::store::test_support::request;
    use crate::store::{AppendRequest, ExpectedVersion};

    /// One event of `stream` with this payload.
    fn encoded_request(stream: &str, encoded: EncodedPayload) -> AppendRequest {
        let mut request = request(stream, ExpectedVersion::Any, &["x"]);
        request.events[0].event_type = encoded.event_type.to_string();
        request.events[0].schema = encoded.schema;
        request.events[0].payload = encoded.bytes;
        request
    }

    #[tokio::test]
    async fn a_replay_split_over_any_number_of_threads_reports_the_same() {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn EventStore> =
            crate::store::open(crate::store::StoreConfig::new(dir.path())).unwrap();
        let names = ["alpha", "beta", "gamma", "delta", "epsilon"];
        for name in names {
            let yaml = crate::webhook::github::tests::manifest_yaml(name, 3);
            let manifest = parse_manifest(yaml.as_bytes(), ManifestFormat::Yaml).unwrap();
            let declared = Change::ClusterDeclared(ClusterDeclared { manifest });
            let stream = format!("cluster/{name}");
            store
                .append(encoded_request(&stream, encode_change(&declared)))
                .await
                .unwrap();
        }
        for round in 0..20u32 {
            let name = names[round as usize % names.len()];
            let scaled = Change::PoolScaled(PoolScaled {
                pool: "workers".into(),
                from: 3 + i64::from(round),
                to: 4 + i64::from(round),
            });
            let condition = ReconcileEvent::ConditionChanged(ConditionChanged {
                condition: ConditionType::ALL[round as usize % ConditionType::ALL.len()],
                status: round % 2 == 0,
                reason: "Why".into(),
                message: String::new(),
            });
            let requests = [
                encoded_request(&format!("cluster/{name}"), encode_change(&scaled)),
                encoded_request(&format!("reconcile/{name}"), encode_reconcile(&condition)),
                // A payload that does not decode as its type: skipped.
                encoded_request(
                    &format!("reconcile/{name}"),
                    EncodedPayload {
                        event_type: "ConditionChanged",
                        schema: 1,
                        bytes: vec![0xff; 3],
                    },
                ),
                request("hook/github", ExpectedVersion::Any, &["delivery"]),
            ];
            for request in requests {
                store.append(request).await.unwrap();
            }
        }
        let head = store.head().seq;
        let mut whole = Projections::default();
        for event in store.read(0, head as usize).await.unwrap() {
            whole.apply(&event);
            if event.seq % 17 == 0 {
                store
                    .save_snapshot(event.seq, whole.snapshot_parts())
                    .await
                    .unwrap();
            }
        }
        assert!(whole.desired.skipped_events + whole.observed.skipped_events > 0);

        for threads in 1..=3 {
            let report = replay_with(store.clone(), threads).await.unwrap();
            assert_eq!(report.events, head, "{threads} threads");
            assert_eq!(report.clusters, names.len(), "{threads} threads");
            assert_eq!(
                report.skipped_events,
                whole.desired.skipped_events + whole.observed.skipped_events,
                "{threads} threads"
            );
            assert_eq!(report.snapshots.len(), (head / 17) as usize);
            assert!(
                report.is_clean(),
                "{threads} threads: {:?}",
                report.snapshots
            );
        }
    }

    #[tokio::test]
    async fn replay_names_the_part_of_a_snapshot_that_differs() {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn EventStore> =
            crate::store::open(crate::store::StoreConfig::new(dir.path())).unwrap();
        for text in ["1", "2", "3", "4"] {
            store
                .append(request("cluster/x", ExpectedVersion::Any, &[text]))
                .await
                .unwrap();
        }
        // True snapshots at seqs 1 and 2, all in one page of the replay, so
        // each must be compared at its own seq, not at the page's end.
        let fold = |until: u64| {
            let store = store.clone();
            async move {
                let mut state = Projections::default();
                for event in store.read(0, until as usize).await.unwrap() {
                    state.apply(&event);
                }
                state
            }
        };
        for seq in [1, 2] {
            let parts = fold(seq).await.snapshot_parts();
            store.save_snapshot(seq, parts).await.unwrap();
        }
        // A snapshot at seq 3 whose cluster part holds the state of seq 2.
        let mut parts = fold(2).await.snapshot_parts();
        parts[0] = fold(3).await.snapshot_parts()[0].clone();
        parts.push(("ghost".into(), parts[1].1.clone()));
        store.save_snapshot(3, parts).await.unwrap();

        let report = replay(store.clone()).await.unwrap();
        assert_eq!(report.events, 4);
        let verdicts: Vec<(u64, &str)> = report
            .snapshots
            .iter()
            .map(|check| (check.seq, check.verdict.as_str()))
            .collect();
        assert_eq!(verdicts, [(1, "same"), (2, "same"), (3, "different")]);
        assert_eq!(
            report.snapshots[2].details,
            vec![
                "\"ghost\": only in the snapshot".to_string(),
                "\"x\": differs".to_string()
            ]
        );
        assert!(!report.is_clean());
    }
}
