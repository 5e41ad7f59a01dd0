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

use tokio::sync::mpsc;

use std::ops::Range;

use bytes::Bytes;

use crate::event::{ActorRef, EventRef};
use crate::projection::{decode_for_fold, FoldPayload, Projections, SnapshotError};
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
pub async fn replay(store: Arc<dyn EventStore>) -> Result<ReplayReport, ReplayError> {
    let snapshot_seqs = store.snapshot_seqs().await?;
    let mut pending = snapshot_seqs.iter().copied().peekable();
    let mut checks = Vec::new();
    let mut projections = Projections::default();
    let started = Instant::now();
    let mut compare_seconds = 0.0;
    let until = store.head().seq;
    let mut pages = decode_ahead(read_records_ahead(store.clone(), 0, until), 0);
    loop {
        // Compare every snapshot the fold has reached (one at seq 0 first).
        while let Some(&seq) = pending.peek() {
            if seq > projections.applied_seq() {
                break;
            }
            pending.next();
            let compared = Instant::now();
            checks.push(check(store.as_ref(), seq, &projections).await?);
            compare_seconds += compared.elapsed().as_secs_f64();
        }
        let Some(page) = pages.recv().await else {
            break;
        };
        let mut next_snapshot = pending.peek().copied().unwrap_or(u64::MAX);
        for (record, located, payload) in page? {
            let event = located.view(&record)?;
            projections.apply_decoded(&event, payload);
            if event.seq == next_snapshot {
                let compared = Instant::now();
                pending.next();
                checks.push(check(store.as_ref(), event.seq, &projections).await?);
                compare_seconds += compared.elapsed().as_secs_f64();
                next_snapshot = pending.peek().copied().unwrap_or(u64::MAX);
            }
        }
    }
    for seq in pending {
        checks.push(SnapshotCheck {
            seq,
            verdict: "different".into(),
            details: vec![format!(
                "the snapshot is past the end of the log (seq {})",
                projections.applied_seq()
            )],
        });
    }
    let seconds = started.elapsed().as_secs_f64() - compare_seconds;
    let events = projections.applied_seq();
    Ok(ReplayReport {
        events,
        seconds,
        events_per_second: if seconds > 0.0 {
            events as f64 / seconds
        } else {
            0.0
        },
        clusters: projections.desired.clusters().count(),
        skipped_events: projections.desired.skipped_events + projections.observed.skipped_events,
        snapshots: checks,
    })
}

/// A page of stored records, each with where its fields are and its
/// payload decoded for the fold.
type DecodedPage = Vec<(Bytes, Located, FoldPayload)>;

/// Where an event's fields are in its record, found by the decode stage so
/// that the fold's thread does not parse the record again: the fixed-size
/// fields copied, the strings and the payload as byte ranges.
struct Located {
    seq: u64,
    version: u64,
    id: uuid::Uuid,
    schema: u16,
    time: chrono::DateTime<chrono::Utc>,
    actor_kind: crate::event::ActorKind,
    correlation: uuid::Uuid,
    stream: Range<usize>,
    event_type: Range<usize>,
    actor_name: Range<usize>,
    payload: Range<usize>,
}

impl Located {
    fn new(record: &[u8], event: &EventRef<'_>) -> Located {
        // Every slice of `event` borrows from `record`.
        let range = |part: &[u8]| {
            let start = part.as_ptr() as usize - record.as_ptr() as usize;
            start..start + part.len()
        };
        Located {
            seq: event.seq,
            version: event.version,
            id: event.id,
            schema: event.schema,
            time: event.time,
            actor_kind: event.actor.kind,
            correlation: event.correlation,
            stream: range(event.stream.as_bytes()),
            event_type: range(event.event_type.as_bytes()),
            actor_name: range(event.actor.name.as_bytes()),
            payload: range(event.payload),
        }
    }

    /// The event again, borrowed from the same record.
    fn view<'a>(&self, record: &'a [u8]) -> Result<EventRef<'a>, StoreError> {
        let text = |range: &Range<usize>| {
            std::str::from_utf8(&record[range.clone()]).map_err(|error| StoreError::Corrupt {
                seq: self.seq,
                reason: error.to_string(),
            })
        };
        Ok(EventRef {
            seq: self.seq,
            stream: text(&self.stream)?,
            version: self.version,
            id: self.id,
            event_type: text(&self.event_type)?,
            schema: self.schema,
            time: self.time,
            actor: ActorRef {
                kind: self.actor_kind,
                name: text(&self.actor_name)?,
            },
            correlation: self.correlation,
            payload: &record[self.payload.clone()],
        })
    }
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

/// Reads the records `read_records_ahead` reads (from seq `after + 1`) in
/// place and decodes their payloads, on a blocking thread of its own:
/// reading, decoding and folding run at once, and the fold's thread only
/// folds. The channel ends after the last page, or after an error.
fn decode_ahead(
    mut pages: mpsc::Receiver<Result<Vec<Bytes>, StoreError>>,
    after: u64,
) -> mpsc::Receiver<Result<DecodedPage, StoreError>> {
    let (sender, receiver) = mpsc::channel(4);
    tokio::task::spawn_blocking(move || {
        let mut seq = after;
        while let Some(page) = pages.blocking_recv() {
            let decoded = page.and_then(|records| {
                records
                    .into_iter()
                    .map(|record| {
                        seq += 1;
                        let event = read_in_place(&record, seq)?;
                        let located = Located::new(&record, &event);
                        let payload = decode_for_fold(&event);
                        Ok((record, located, payload))
                    })
                    .collect::<Result<DecodedPage, StoreError>>()
            });
            let failed = decoded.is_err();
            if sender.blocking_send(decoded).is_err() || failed {
                return;
            }
        }
    });
    receiver
}

async fn check(
    store: &dyn EventStore,
    seq: u64,
    replayed: &Projections,
) -> Result<SnapshotCheck, StoreError> {
    let stored = store.snapshot_parts(seq).await?;
    if let Err(error @ (SnapshotError::OtherFormat { .. } | SnapshotError::NoHeader)) =
        Projections::from_snapshot_parts(&stored)
    {
        return Ok(SnapshotCheck {
            seq,
            verdict: "not comparable".into(),
            details: vec![error.to_string()],
        });
    }
    // Parts are encoded deterministically, so comparing bytes by name names
    // exactly the clusters whose state differs.
    let expected = replayed.snapshot_parts();
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
    use crate::store::test_support::request;
    use crate::store::ExpectedVersion;

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
