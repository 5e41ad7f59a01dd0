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
use crate::projection::{Projections, HEADER_PART};
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

/// The seqs of the snapshots this build can read: a header of this format
/// naming the same seq. Point-in-time reads decode single parts without a
/// header, so a snapshot of another format must never be offered to them.
pub(super) async fn readable_seqs(store: &dyn EventStore) -> Result<Vec<u64>, StoreError> {
    let mut readable = Vec::new();
    for seq in store.snapshot_seqs().await? {
        let header = store.snapshot_part(seq, HEADER_PART).await?;
        match header.as_deref().map(Projections::snapshot_seq) {
            Some(Ok(said)) if said == seq => readable.push(seq),
            Some(Ok(said)) => tracing::warn!(
                seq,
                said,
                "a snapshot names another seq than its key; not used"
            ),
            Some(Err(error)) => tracing::warn!(seq, %error, "a snapshot is not readable; not used"),
            None => tracing::warn!(seq, "a snapshot has no header; not used"),
        }
    }
    Ok(readable)
}

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
            let taken = result.is_ok();
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
            // Events the follower folded while this snapshot was written
            // found it running and did not start one; look again now, or a
            // quiet log would wait for its next event.
            if taken {
                ledger.snapshot_if_due();
            }
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

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio_util::sync::CancellationToken;

    use super::*;
    use crate::event::{Actor, ActorKind};
    use crate::ledger::{ApplyOptions, CommandContext};
    use crate::model::{parse_manifest, Manifest, ManifestFormat};
    use crate::projection::SNAPSHOT_FORMAT;

    fn manifest(name: &str, replicas: i64) -> Manifest {
        let text = format!(
            "apiVersion: cairn/v1\nkind: Cluster\nmetadata: {{name: {name}}}\nspec:\n  provider: sim\n  \
             region: r\n  kubernetesVersion: 1.31.2\n  network:\n    cidr: 10.0.0.0/16\n    subnets:\n      \
             - {{name: a, cidr: 10.0.1.0/24}}\n  pools:\n    - {{name: w, role: worker, replicas: {replicas}, \
             machineType: m, image: i, subnets: [a]}}\n"
        );
        parse_manifest(text.as_bytes(), ManifestFormat::Yaml).unwrap()
    }

    fn context() -> CommandContext {
        CommandContext::new(Actor {
            kind: ActorKind::User,
            name: "test".into(),
        })
    }

    async fn apply(ledger: &Ledger, name: &str, replicas: i64) {
        let options = ApplyOptions {
            dry_run: false,
            if_match: None,
        };
        ledger
            .apply(manifest(name, replicas), options, &context())
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn the_follower_takes_snapshots_and_start_up_loads_the_newest() {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn EventStore> =
            crate::store::open(crate::store::StoreConfig::new(dir.path())).unwrap();
        let config = LedgerConfig { snapshot_every: 3 };
        let ledger = Ledger::open_with(store.clone(), config).await.unwrap();
        let shutdown = CancellationToken::new();
        let follower = tokio::spawn(ledger.clone().follow(shutdown.clone()));
        for replicas in 1..=7 {
            apply(&ledger, "a", replicas).await;
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while store.snapshot_seqs().await.unwrap().len() < 2 {
            assert!(Instant::now() < deadline, "no snapshots taken");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let seqs = store.snapshot_seqs().await.unwrap();
        assert!(
            seqs.windows(2).all(|pair| pair[1] >= pair[0] + 3),
            "{seqs:?}"
        );
        shutdown.cancel();
        follower.await.unwrap();

        // Plant a snapshot at the head that says something the log does not:
        // a ledger that loads it shows the planted cluster, which proves the
        // start-up read the snapshot instead of replaying from seq 1.
        let head = store.head().seq;
        let mut planted = ledger.read(Projections::clone);
        let mut extra = Projections::default();
        for event in store.read(0, 100).await.unwrap() {
            let mut renamed = (*event).clone();
            renamed.stream = renamed.stream.replace("cluster/a", "cluster/planted");
            extra.apply(&renamed);
        }
        let mut parts = planted.snapshot_parts();
        parts.extend(
            extra
                .snapshot_parts()
                .into_iter()
                .filter(|(name, _)| name == "planted"),
        );
        planted = Projections::from_snapshot_parts(&parts).unwrap();
        store
            .save_snapshot(head, planted.snapshot_parts())
            .await
            .unwrap();
        let reopened = Ledger::open_with(store.clone(), config).await.unwrap();
        assert!(reopened.cluster("planted").is_some());
        assert_eq!(reopened.cluster("a"), ledger.cluster("a"));

        // A newer snapshot of another format is passed over for the next one.
        let mut other = planted.snapshot_parts();
        other[0].1 =
            bincode::serde::encode_to_vec((SNAPSHOT_FORMAT + 1, 0u64), bincode::config::standard())
                .unwrap();
        let shutdown = CancellationToken::new();
        let follower = tokio::spawn(reopened.clone().follow(shutdown.clone()));
        apply(&reopened, "a", 8).await;
        shutdown.cancel();
        follower.await.unwrap();
        store.save_snapshot(store.head().seq, other).await.unwrap();
        let reopened = Ledger::open_with(store.clone(), config).await.unwrap();
        assert!(
            reopened.cluster("planted").is_some(),
            "fell back to seq {head}"
        );
        assert_eq!(
            reopened.cluster("a").unwrap().manifest.spec.pools[0].replicas,
            8,
            "and replayed the tail after it"
        );
    }
}
