//! Snapshots of the projections: loaded at start-up, taken every
//! `LedgerConfig::snapshot_every` events by the follower.
//!
//! A snapshot is only a shortcut: the log stays the truth. A snapshot that
//! does not decode (another format, damage) is passed over with a warning,
//! and the fold starts from an older one or from seq 1. `cairn replay`
//! compares every stored snapshot with a fold from scratch.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use super::Ledger;
use crate::projection::Projections;
use crate::store::{EventStore, StoreError};

/// How the ledger keeps its projections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LedgerConfig {
    /// Take a snapshot each time this many events were folded since the
    /// last one; 0 takes none.
    pub snapshot_every: u64,
}

impl Default for LedgerConfig {
    fn default() -> Self {
        LedgerConfig {
            snapshot_every: DEFAULT_SNAPSHOT_EVERY,
        }
    }
}

/// See `docs/PERFORMANCE.md` for what this costs and saves at 1,000,000 events.
pub const DEFAULT_SNAPSHOT_EVERY: u64 = 50_000;

/// The newest snapshot that decodes, with its seq; `None` to start from seq 1.
pub(super) async fn load_latest(
    store: &dyn EventStore,
    seqs: &[u64],
) -> Result<Option<(u64, Projections)>, StoreError> {
    let head = store.head().seq;
    for &seq in seqs.iter().rev() {
        if seq > head {
            tracing::warn!(
                seq,
                head,
                "a snapshot is past the head of the log; not used"
            );
            continue;
        }
        let parts = store.snapshot_parts(seq).await?;
        let decoded = tokio::task::spawn_blocking(move || Projections::from_snapshot_parts(&parts))
            .await
            .map_err(|error| StoreError::Io(error.to_string()))?;
        match decoded {
            Ok(projections) if projections.applied_seq() == seq => {
                return Ok(Some((seq, projections)))
            }
            Ok(projections) => tracing::warn!(
                seq,
                says = projections.applied_seq(),
                "a snapshot names another seq than its key; not used"
            ),
            Err(error) => tracing::warn!(seq, %error, "a snapshot does not decode; not used"),
        }
    }
    Ok(None)
}

impl Ledger {
    /// Takes a snapshot in the background when enough events were folded
    /// since the last one. Called by the follower after each event; at most
    /// one snapshot is written at a time, and appends never wait for it.
    pub(super) fn snapshot_if_due(self: &Arc<Self>) {
        let every = self.config.snapshot_every;
        if every == 0 {
            return;
        }
        let applied = self.applied_seq();
        if applied < self.last_snapshot_seq.load(Ordering::Acquire) + every {
            return;
        }
        if self.snapshot_running.swap(true, Ordering::AcqRel) {
            return;
        }
        // Cloning under the read lock is the only part that holds up the
        // follower; encoding and writing run on a blocking thread.
        let projections = self.read(Projections::clone);
        let ledger = self.clone();
        tokio::spawn(async move {
            let seq = projections.applied_seq();
            let started = Instant::now();
            let parts = tokio::task::spawn_blocking(move || projections.snapshot_parts()).await;
            let result = match parts {
                Ok(parts) => {
                    let bytes: usize = parts.iter().map(|(_, part)| part.len()).sum();
                    ledger.store.save_snapshot(seq, parts).await.map(|()| bytes)
                }
                Err(error) => Err(StoreError::Io(error.to_string())),
            };
            match result {
                Ok(bytes) => {
                    ledger.last_snapshot_seq.store(seq, Ordering::Release);
                    ledger
                        .snapshot_seqs
                        .write()
                        .expect("snapshot seqs lock")
                        .push(seq);
                    tracing::info!(
                        seq,
                        bytes,
                        millis = started.elapsed().as_millis() as u64,
                        "snapshot taken"
                    );
                }
                Err(error) => {
                    // Retried at the next event; the log is unaffected.
                    tracing::warn!(seq, %error, "snapshot failed");
                }
            }
            ledger.snapshot_running.store(false, Ordering::Release);
        });
    }

    /// The seq of the newest stored snapshot at or before `seq` (0: none).
    pub(super) fn snapshot_at_or_before(&self, seq: u64) -> u64 {
        let seqs = self.snapshot_seqs.read().expect("snapshot seqs lock");
        match seqs.binary_search(&seq) {
            Ok(index) => seqs[index],
            Err(0) => 0,
            Err(index) => seqs[index - 1],
        }
    }
}
