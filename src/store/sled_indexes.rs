//! Envelope indexes of the sled store: by event id, by time, by cause and by
//! correlation.
//!
//! # Key layout (in the event tree, written in the same batch as the event)
//!
//! | key                                   | value        |
//! |---------------------------------------|--------------|
//! | `d` event id (16 bytes)               | seq (u64 BE) |
//! | `t` time (µs since 1970, u64 BE) seq  | empty        |
//! | `c` cause seq (u64 BE) seq (u64 BE)   | empty        |
//! | `r` correlation (16 bytes) seq        | empty        |
//! | `x`                                   | index format |
//!
//! Every index is derived from envelope fields only, so it can be rebuilt
//! from the events at any time: a store opened without `x` at
//! `INDEX_FORMAT` (a log written before the indexes existed) builds them
//! before it takes appends. Readers bound every lookup by the durable head,
//! like the stream index, since an index entry is in sled before its fsync.
//!
//! **Architecture Invariant:** these indexes know envelopes only (ids, times,
//! causes, correlations), never payloads, clusters or manifests.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::StoreError;
use crate::event::Event;

const ID_PREFIX: u8 = b'd';
const TIME_PREFIX: u8 = b't';
const CAUSE_PREFIX: u8 = b'c';
const CORRELATION_PREFIX: u8 = b'r';
const INDEX_FORMAT_KEY: &[u8] = b"x";

/// Bump to rebuild every index at the next start.
const INDEX_FORMAT: u8 = 1;

/// Events per batch while rebuilding.
const REBUILD_BATCH: usize = 10_000;

fn io_error(error: impl std::fmt::Display) -> StoreError {
    StoreError::Io(error.to_string())
}

fn micros(time: DateTime<Utc>) -> u64 {
    // Event times are after 1970; an earlier one would sort first.
    u64::try_from(time.timestamp_micros()).unwrap_or(0)
}

fn key_with_seq(prefix: u8, middle: &[u8], seq: u64) -> Vec<u8> {
    let mut key = Vec::with_capacity(1 + middle.len() + 8);
    key.push(prefix);
    key.extend_from_slice(middle);
    key.extend_from_slice(&seq.to_be_bytes());
    key
}

fn id_key(id: &Uuid) -> Vec<u8> {
    let mut key = Vec::with_capacity(17);
    key.push(ID_PREFIX);
    key.extend_from_slice(id.as_bytes());
    key
}

fn trailing_seq(key: &[u8]) -> u64 {
    key.len()
        .checked_sub(8)
        .and_then(|start| key[start..].try_into().ok())
        .map(u64::from_be_bytes)
        .unwrap_or(0)
}

/// Which of an event's index entries to stage.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum TimeEntry {
    /// The event gets its own time entry.
    Stage,
    /// A later event of the same atomic append, with the same time, carries
    /// the time entry for it: `seq_at_time` answers with the last seq at or
    /// before a time, and an append's events are durable together, so the
    /// entry of its last event is the only one that lookup can return.
    /// This saves a sled insert per event in a batch.
    Skip,
}

/// Stages the index entries of one event.
pub(super) fn stage(batch: &mut sled::Batch, event: &Event, time_entry: TimeEntry) {
    let seq = event.seq.to_be_bytes();
    batch.insert(id_key(&event.id), &seq[..]);
    if time_entry == TimeEntry::Stage {
        batch.insert(
            key_with_seq(TIME_PREFIX, &micros(event.time).to_be_bytes(), event.seq),
            &[][..],
        );
    }
    if let Some((cause, _)) = event.cause.causing_event() {
        batch.insert(
            key_with_seq(CAUSE_PREFIX, &cause.to_be_bytes(), event.seq),
            &[][..],
        );
    }
    batch.insert(
        key_with_seq(CORRELATION_PREFIX, event.correlation.as_bytes(), event.seq),
        &[][..],
    );
}

/// Whether the indexes are complete for the events stored.
pub(super) fn is_current(tree: &sled::Tree) -> Result<bool, StoreError> {
    Ok(tree
        .get(INDEX_FORMAT_KEY)
        .map_err(io_error)?
        .is_some_and(|value| value.as_ref() == [INDEX_FORMAT]))
}

/// Builds every index from the events `1..=head`, then marks them current.
/// Idempotent: an interrupted rebuild is simply run again.
pub(super) fn rebuild(
    tree: &sled::Tree,
    head: u64,
    read: impl Fn(u64, u64) -> Result<Vec<Arc<Event>>, StoreError>,
) -> Result<u64, StoreError> {
    let mut next = 1;
    while next <= head {
        let last = head.min(next + REBUILD_BATCH as u64 - 1);
        let mut batch = sled::Batch::default();
        for event in read(next, last)? {
            stage(&mut batch, &event, TimeEntry::Stage);
        }
        tree.apply_batch(batch).map_err(io_error)?;
        next = last + 1;
    }
    tree.insert(INDEX_FORMAT_KEY, &[INDEX_FORMAT][..])
        .map_err(io_error)?;
    tree.flush().map_err(io_error)?;
    Ok(head)
}

/// The seq of the event with this id, if it is durable.
pub(super) fn seq_of_id(
    tree: &sled::Tree,
    id: &Uuid,
    head: u64,
) -> Result<Option<u64>, StoreError> {
    let value = tree.get(id_key(id)).map_err(io_error)?;
    Ok(value
        .and_then(|bytes| bytes.as_ref().try_into().ok().map(u64::from_be_bytes))
        .filter(|seq| *seq <= head))
}

/// The last durable seq whose time is at or before `time`; 0 when none is.
pub(super) fn seq_at_time(
    tree: &sled::Tree,
    time: DateTime<Utc>,
    head: u64,
) -> Result<u64, StoreError> {
    let end = key_with_seq(TIME_PREFIX, &micros(time).to_be_bytes(), u64::MAX);
    for entry in tree.range(vec![TIME_PREFIX]..=end).rev() {
        let (key, _) = entry.map_err(io_error)?;
        let seq = trailing_seq(&key);
        if seq <= head {
            return Ok(seq);
        }
    }
    Ok(0)
}

/// Durable seqs listed under `prefix ++ middle`, after `after`, in order.
fn scan_seqs(
    tree: &sled::Tree,
    prefix: u8,
    middle: &[u8],
    after: u64,
    limit: usize,
    head: u64,
) -> Result<Vec<u64>, StoreError> {
    let mut seqs = Vec::new();
    if after == u64::MAX || limit == 0 {
        return Ok(seqs);
    }
    let range = key_with_seq(prefix, middle, after + 1)..=key_with_seq(prefix, middle, head);
    if after + 1 > head {
        return Ok(seqs);
    }
    for entry in tree.range(range) {
        let (key, _) = entry.map_err(io_error)?;
        seqs.push(trailing_seq(&key));
        if seqs.len() == limit {
            break;
        }
    }
    Ok(seqs)
}

/// Durable seqs of events whose cause is the event at `cause_seq`.
pub(super) fn caused_by(
    tree: &sled::Tree,
    cause_seq: u64,
    after: u64,
    limit: usize,
    head: u64,
) -> Result<Vec<u64>, StoreError> {
    scan_seqs(
        tree,
        CAUSE_PREFIX,
        &cause_seq.to_be_bytes(),
        after,
        limit,
        head,
    )
}

/// Durable seqs of events with this correlation id.
pub(super) fn correlated(
    tree: &sled::Tree,
    correlation: &Uuid,
    after: u64,
    limit: usize,
    head: u64,
) -> Result<Vec<u64>, StoreError> {
    scan_seqs(
        tree,
        CORRELATION_PREFIX,
        correlation.as_bytes(),
        after,
        limit,
        head,
    )
}
