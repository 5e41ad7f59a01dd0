//! The embedded event store on sled 0.34.7.
//!
//! # Key layout (one sled tree, so that one `apply_batch` is atomic)
//!
//! | key                                   | value                                   |
//! |---------------------------------------|-----------------------------------------|
//! | `e` seq (u64 BE)                      | the event record (format byte + bincode)|
//! | `v` stream `\0` version (u64 BE)      | seq (u64 BE): the per-stream index      |
//! | `s` stream                            | the stream's version (u64 BE)           |
//! | `i` idempotency key                   | format byte + bincode(IdempotencyRecord)|
//! | `h`                                   | head: format byte, seq (u64 BE), hash   |
//!
//! Records (events, idempotency records, the head) start with a format byte.
//! Index values (`v`, `s`) are plain big-endian integers, derived from
//! the events and written in the same batch as them.
//!
//! # Group commit
//!
//! One writer thread owns every write. It takes all the append requests waiting
//! in its queue, checks each against the state so far (expected versions,
//! idempotency keys), stages the accepted ones into one `sled::Batch` and
//! applies it. It then hands the group to the syncer thread and goes on with
//! the next group while the syncer calls `flush()` and then `fdatasync` on the
//! database file itself, because sled 0.34's flush on Linux only calls
//! `sync_file_range` (sled issue 1452). One sync covers every group waiting for
//! it. Only then does the syncer move the durable head, answer the requests
//! and publish the events, group by group in order. Threads rather than tokio
//! tasks, because every step blocks on sled or the disk.
//!
//! The writer's own head and stream versions run ahead of the durable head by
//! the groups the syncer holds; readers only ever see the durable head, so an
//! applied group is invisible until it is synced. If a sync fails, every group
//! after it fails too and the store takes no more appends (`failure`).
//!
//! # Blob files
//!
//! sled writes any log message larger than a quarter of its segment size to a
//! file under `blobs/` that it never fsyncs, and a message can be a whole tree
//! node of up to 17 entries. So the store opens sled with 8 MiB segments (a
//! 2 MiB threshold) and bounds records at 64 KiB: 17 of them stay below it. A
//! test fills nodes with records of the largest size and checks that `blobs/`
//! stays empty.

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use tokio::sync::{broadcast, mpsc, oneshot};

use super::{
    AppendOutcome, AppendRequest, BadRecord, Clock, EventIndex, EventLog, Head, IdempotencyRecord,
    SnapshotStore, StoreAdmin, StoreError, VerifyReport,
};
use uuid::Uuid;

use super::metrics::StoreMetrics;
use super::sled_indexes::TimeEntry;
use super::{sled_indexes, sled_snapshots};
use crate::event::{
    from_bincode, to_bincode, Cause, ChainCursor, Event, GENESIS_HASH, RECORD_FORMAT_V1,
};

const EVENT_PREFIX: u8 = b'e';
const STREAM_INDEX_PREFIX: u8 = b'v';
const STREAM_VERSION_PREFIX: u8 = b's';
const IDEMPOTENCY_PREFIX: u8 = b'i';
const HEAD_KEY: &[u8] = b"h";

/// How to open a `SledStore`.
#[derive(Clone)]
pub struct SledStoreConfig {
    /// The data directory; sled keeps its files in it.
    pub path: PathBuf,
    /// The most append requests one group commit takes.
    pub max_group_requests: usize,
    /// The largest encoded event record accepted; at most `MAX_RECORD_BYTES`
    /// (see "Blob files" above).
    pub max_record_bytes: usize,
    /// sled's page cache, in bytes.
    pub cache_capacity_bytes: u64,
    /// How many committed events a slow subscriber may fall behind before it
    /// gets `Lagged` and must read from the store.
    pub broadcast_capacity: usize,
    pub clock: Clock,
}

impl SledStoreConfig {
    pub fn new(path: impl Into<PathBuf>) -> SledStoreConfig {
        SledStoreConfig {
            path: path.into(),
            max_group_requests: 4096,
            max_record_bytes: MAX_RECORD_BYTES,
            cache_capacity_bytes: 64 * 1024 * 1024,
            broadcast_capacity: 4096,
            clock: Arc::new(Utc::now),
        }
    }
}

/// The embedded store. Cheap to share behind an `Arc`.
pub struct SledStore {
    tree: sled::Db,
    /// Projection snapshots, outside the event tree (see `sled_snapshots`).
    snapshots: sled::Tree,
    max_record_bytes: usize,
    sender: Mutex<Option<mpsc::Sender<WriteJob>>>,
    writer: Mutex<Option<std::thread::JoinHandle<()>>>,
    shared: Arc<Shared>,
    /// None once closed, so subscribers see the end of the stream.
    committed: Mutex<Option<broadcast::Sender<Arc<Event>>>>,
}

/// State the writer publishes for readers.
struct Shared {
    head: Mutex<Head>,
    /// Idempotency keys of the group being committed: in sled, not yet fsynced.
    /// Readers treat them as absent until the group is durable.
    pending_keys: Mutex<HashSet<String>>,
    /// Why the writer stopped taking appends, if it did.
    failure: Mutex<Option<String>>,
    metrics: StoreMetrics,
    /// Tests only: when set, the next sync waits until the sender sends (or
    /// is dropped) and then fails, as an fsync error would.
    #[cfg(test)]
    failing_sync: Mutex<Option<std::sync::mpsc::Receiver<()>>>,
}

struct WriteJob {
    work: Work,
    reply: oneshot::Sender<Result<AppendOutcome, StoreError>>,
}

/// What a job asks the writer to do.
enum Work {
    Append(AppendRequest),
    /// Events of another log, stored as they are (see `EventStore::import`).
    Import(Vec<Event>),
}

/// The key of the event at `seq`.
pub fn event_key(seq: u64) -> [u8; 9] {
    let mut key = [EVENT_PREFIX; 9];
    key[1..].copy_from_slice(&seq.to_be_bytes());
    key
}

fn stream_index_key(stream: &str, version: u64) -> Vec<u8> {
    let mut key = Vec::with_capacity(stream.len() + 10);
    key.push(STREAM_INDEX_PREFIX);
    key.extend_from_slice(stream.as_bytes());
    key.push(0);
    key.extend_from_slice(&version.to_be_bytes());
    key
}

fn stream_version_key(stream: &str) -> Vec<u8> {
    let mut key = Vec::with_capacity(stream.len() + 1);
    key.push(STREAM_VERSION_PREFIX);
    key.extend_from_slice(stream.as_bytes());
    key
}

fn idempotency_key(key: &str) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(key.len() + 1);
    bytes.push(IDEMPOTENCY_PREFIX);
    bytes.extend_from_slice(key.as_bytes());
    bytes
}

fn be_u64(bytes: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(bytes.try_into().ok()?))
}

fn io_error(error: impl std::fmt::Display) -> StoreError {
    StoreError::Io(error.to_string())
}

fn open_error(path: &Path, error: sled::Error) -> StoreError {
    // sled 0.34 reports a held lock only as an `io::ErrorKind::Other` with this
    // text (config.rs, `try_lock_exclusive`); there is nothing more specific to
    // match. Any other error stays an I/O error with sled's own words.
    match &error {
        sled::Error::Io(io) if io.to_string().starts_with("could not acquire lock on") => {
            StoreError::Locked {
                path: path.display().to_string(),
            }
        }
        _ => io_error(error),
    }
}

/// sled's segment size. sled records it in the data directory and refuses to
/// open the directory with another one, so this never changes. See "Blob files".
pub const SEGMENT_SIZE_BYTES: usize = 8 * 1024 * 1024;

/// The most entries sled keeps in one leaf node (it splits above 16).
const MAX_ENTRIES_PER_LEAF: usize = 17;

/// The largest record that can never push a node into a blob file: sled's blob
/// threshold is a quarter of the segment, less the segment header, and a node
/// holds its entries with their keys and some framing.
pub const MAX_RECORD_BYTES: usize = 64 * 1024;

const _: () =
    assert!(MAX_ENTRIES_PER_LEAF * (MAX_RECORD_BYTES + 1024) < SEGMENT_SIZE_BYTES / 4 - 1024);

/// Opens the sled database of a data directory, for the store or for offline tools.
pub fn open_db(path: &Path, cache_capacity_bytes: u64) -> Result<sled::Db, StoreError> {
    std::fs::create_dir_all(path).map_err(io_error)?;
    let db = sled::Config::new()
        .path(path)
        .segment_size(SEGMENT_SIZE_BYTES)
        .cache_capacity(cache_capacity_bytes)
        // We flush and fsync ourselves after every group; a background flush
        // would only add writes.
        .flush_every_ms(None)
        .open()
        .map_err(|error| open_error(path, error))?;
    // Make the directory entries of sled's files durable once.
    File::open(path)
        .and_then(|dir| dir.sync_all())
        .map_err(io_error)?;
    Ok(db)
}

fn read_head(tree: &sled::Tree) -> Result<Head, StoreError> {
    match tree.get(HEAD_KEY).map_err(io_error)? {
        None => Ok(Head {
            seq: 0,
            hash: GENESIS_HASH,
        }),
        Some(bytes) if bytes.len() == 41 && bytes[0] == RECORD_FORMAT_V1 => Ok(Head {
            seq: be_u64(&bytes[1..9]).unwrap_or(0),
            hash: bytes[9..].try_into().unwrap_or(GENESIS_HASH),
        }),
        Some(bytes) => Err(StoreError::Corrupt {
            seq: 0,
            reason: format!(
                "the head record ({} bytes) is not format 1 with 40 bytes of seq and hash",
                bytes.len()
            ),
        }),
    }
}

fn encode_head(head: &Head) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(41);
    bytes.push(RECORD_FORMAT_V1);
    bytes.extend_from_slice(&head.seq.to_be_bytes());
    bytes.extend_from_slice(&head.hash);
    bytes
}

fn read_event(tree: &sled::Tree, seq: u64) -> Result<Option<Arc<Event>>, StoreError> {
    match tree.get(event_key(seq)).map_err(io_error)? {
        None => Ok(None),
        Some(record) => Event::decode_record(&record)
            .map(|event| Some(Arc::new(event)))
            .map_err(|error| StoreError::Corrupt {
                seq,
                reason: error.to_string(),
            }),
    }
}

/// Up to `limit` events with seqs in `first..=last`, in order.
fn scan_events(
    tree: &sled::Tree,
    first: u64,
    last: u64,
    limit: usize,
) -> Result<Vec<Arc<Event>>, StoreError> {
    let mut events = Vec::new();
    if first > last || limit == 0 {
        return Ok(events);
    }
    for entry in tree.range(event_key(first)..=event_key(last)) {
        let (key, record) = entry.map_err(io_error)?;
        let seq = be_u64(&key[1..]).unwrap_or(0);
        let event = Event::decode_record(&record).map_err(|error| StoreError::Corrupt {
            seq,
            reason: error.to_string(),
        })?;
        events.push(Arc::new(event));
        if events.len() == limit {
            break;
        }
    }
    Ok(events)
}

/// Exactly the events `first..=last`; a missing one is corruption.
fn read_range(tree: &sled::Tree, first: u64, last: u64) -> Result<Vec<Arc<Event>>, StoreError> {
    let events = scan_events(tree, first, last, usize::MAX)?;
    for (expected, event) in (first..).zip(&events) {
        if event.seq != expected {
            return Err(StoreError::Corrupt {
                seq: expected,
                reason: "missing event".into(),
            });
        }
    }
    if first <= last && events.len() as u64 != last - first + 1 {
        return Err(StoreError::Corrupt {
            seq: first + events.len() as u64,
            reason: "missing event".into(),
        });
    }
    Ok(events)
}

fn read_idempotency(tree: &sled::Tree, key: &str) -> Result<Option<IdempotencyRecord>, StoreError> {
    let Some(bytes) = tree.get(idempotency_key(key)).map_err(io_error)? else {
        return Ok(None);
    };
    match bytes.split_first() {
        Some((&RECORD_FORMAT_V1, rest)) => {
            from_bincode(rest)
                .map(Some)
                .map_err(|error| StoreError::Corrupt {
                    seq: 0,
                    reason: format!("idempotency record {key:?}: {error}"),
                })
        }
        _ => Err(StoreError::Corrupt {
            seq: 0,
            reason: format!("idempotency record {key:?} has an unknown format"),
        }),
    }
}

fn read_stream_version(tree: &sled::Tree, stream: &str) -> Result<u64, StoreError> {
    Ok(tree
        .get(stream_version_key(stream))
        .map_err(io_error)?
        .and_then(|bytes| be_u64(&bytes))
        .unwrap_or(0))
}

/// The first event stored past the head record, if any. sled applies a batch
/// atomically and the head is in the same batch, so this is corruption (or a
/// head record rolled back by hand), never the remains of a crash.
fn first_event_past(tree: &sled::Tree, head: &Head) -> Result<Option<u64>, StoreError> {
    if head.seq == u64::MAX {
        return Ok(None);
    }
    match tree
        .range(event_key(head.seq + 1)..=event_key(u64::MAX))
        .next()
    {
        Some(entry) => {
            let (key, _) = entry.map_err(io_error)?;
            Ok(be_u64(&key[1..]))
        }
        None => Ok(None),
    }
}

/// Recomputes the hash chain of a tree. With `head` given (a running store's
/// durable head), checks up to it; without, checks up to the stored head
/// record and also that nothing is stored past it (offline verification).
pub fn verify_tree(tree: &sled::Tree, head: Option<Head>) -> Result<VerifyReport, StoreError> {
    let offline = head.is_none();
    let head = match head {
        Some(head) => head,
        None => read_head(tree)?,
    };
    let mut cursor = ChainCursor::default();
    let mut first_bad = None;
    for entry in tree.range(event_key(1)..=event_key(head.seq.max(1))) {
        let (key, record) = entry.map_err(io_error)?;
        let key_seq = be_u64(&key[1..]).unwrap_or(0);
        if key_seq > head.seq {
            break;
        }
        let expected = cursor.last_seq + 1;
        if key_seq != expected {
            first_bad = Some(BadRecord {
                seq: expected,
                reason: format!("missing: the next stored event is seq {key_seq}"),
            });
            break;
        }
        if let Err(error) = cursor.check(key_seq, &record) {
            first_bad = Some(BadRecord {
                seq: key_seq,
                reason: error.to_string(),
            });
            break;
        }
    }
    if first_bad.is_none() {
        if cursor.last_seq < head.seq {
            first_bad = Some(BadRecord {
                seq: cursor.last_seq + 1,
                reason: format!(
                    "missing: the head record says the log ends at seq {}",
                    head.seq
                ),
            });
        } else if cursor.last_hash != head.hash {
            first_bad = Some(BadRecord {
                seq: head.seq,
                reason: "hash differs from the one in the head record".into(),
            });
        } else if offline {
            if let Some(seq) = first_event_past(tree, &head)? {
                first_bad = Some(BadRecord {
                    seq,
                    reason: format!(
                        "stored past the head record, which ends the log at seq {}",
                        head.seq
                    ),
                });
            }
        }
    }
    Ok(VerifyReport {
        events_checked: cursor.last_seq,
        head_seq: head.seq,
        head_hash: hex::encode(head.hash),
        first_bad,
    })
}

impl SledStore {
    /// Opens (or creates) the store and starts its writer thread.
    pub fn open(config: SledStoreConfig) -> Result<SledStore, StoreError> {
        let db = open_db(&config.path, config.cache_capacity_bytes)?;
        if config.max_record_bytes > MAX_RECORD_BYTES {
            return Err(StoreError::InvalidRequest(format!(
                "max_record_bytes {} is over {MAX_RECORD_BYTES}, the most sled keeps out of blob files",
                config.max_record_bytes
            )));
        }
        let head = read_head(&db)?;
        if let Some(seq) = first_event_past(&db, &head)? {
            return Err(StoreError::Corrupt {
                seq,
                reason: format!(
                    "an event is stored past the head record (seq {}); run `cairn verify --data-dir`",
                    head.seq
                ),
            });
        }
        let last_time = match read_event(&db, head.seq)? {
            Some(event) => Some(event.time),
            None if head.seq == 0 => None,
            None => {
                return Err(StoreError::Corrupt {
                    seq: head.seq,
                    reason: "the head event is missing".into(),
                })
            }
        };
        if !sled_indexes::is_current(&db)? {
            let started = Instant::now();
            sled_indexes::rebuild(&db, head.seq, |first, last| read_range(&db, first, last))?;
            if head.seq > 0 {
                tracing::info!(
                    events = head.seq,
                    millis = started.elapsed().as_millis() as u64,
                    "built the envelope indexes of a log written before them"
                );
            }
        }
        let snapshots = db.open_tree(sled_snapshots::TREE_NAME).map_err(io_error)?;
        let db_file = File::open(config.path.join("db")).map_err(io_error)?;
        let metrics = StoreMetrics::default();
        metrics.head_seq.set(head.seq as i64);
        let shared = Arc::new(Shared {
            head: Mutex::new(head),
            pending_keys: Mutex::new(HashSet::new()),
            failure: Mutex::new(None),
            metrics,
            #[cfg(test)]
            failing_sync: Mutex::new(None),
        });
        let (committed, _) = broadcast::channel(config.broadcast_capacity);
        let (sender, receiver) = mpsc::channel(config.max_group_requests);
        let writer = Writer {
            tree: db.clone(),
            config: config.clone(),
            head,
            last_time,
            stream_versions: HashMap::new(),
            failed: None,
            shared: shared.clone(),
        };
        let syncer = Syncer {
            tree: db.clone(),
            db_file,
            shared: shared.clone(),
            committed: committed.clone(),
            failed: None,
        };
        let handle = std::thread::Builder::new()
            .name("cairn-writer".into())
            .spawn(move || writer.run(receiver, syncer))
            .map_err(io_error)?;
        Ok(SledStore {
            tree: db,
            snapshots,
            max_record_bytes: config.max_record_bytes,
            sender: Mutex::new(Some(sender)),
            writer: Mutex::new(Some(handle)),
            shared,
            committed: Mutex::new(Some(committed)),
        })
    }

    async fn submit(&self, work: Work) -> Result<AppendOutcome, StoreError> {
        let sender = self
            .sender
            .lock()
            .expect("sender lock")
            .clone()
            .ok_or(StoreError::Closed)?;
        let (reply, answer) = oneshot::channel();
        sender
            .send(WriteJob { work, reply })
            .await
            .map_err(|_| StoreError::Closed)?;
        answer.await.map_err(|_| StoreError::Closed)?
    }
}

#[async_trait]
impl EventLog for SledStore {
    async fn append(&self, request: AppendRequest) -> Result<AppendOutcome, StoreError> {
        self.submit(Work::Append(request)).await
    }

    async fn read(&self, after: u64, limit: usize) -> Result<Vec<Arc<Event>>, StoreError> {
        scan_events(&self.tree, after.saturating_add(1), self.head().seq, limit)
    }

    async fn read_stream(
        &self,
        stream: &str,
        after_version: u64,
        limit: usize,
    ) -> Result<Vec<Arc<Event>>, StoreError> {
        let head = self.head().seq;
        let mut events = Vec::new();
        if limit == 0 || after_version == u64::MAX {
            return Ok(events);
        }
        let range =
            stream_index_key(stream, after_version + 1)..=stream_index_key(stream, u64::MAX);
        for entry in self.tree.range(range) {
            let (_, seq) = entry.map_err(io_error)?;
            let seq = be_u64(&seq).unwrap_or(0);
            // The index is written in the same batch as the event, but the head
            // moves only after the fsync: do not show what is not yet durable.
            if seq > head {
                break;
            }
            match read_event(&self.tree, seq)? {
                Some(event) => events.push(event),
                None => {
                    return Err(StoreError::Corrupt {
                        seq,
                        reason: "indexed event is missing".into(),
                    })
                }
            }
            if events.len() == limit {
                break;
            }
        }
        Ok(events)
    }

    async fn stream_version(&self, stream: &str) -> Result<u64, StoreError> {
        // Read through the index bounded by the durable head rather than the
        // version key, so a reader never sees a version that is not yet fsynced.
        let head = self.head().seq;
        let range = stream_index_key(stream, 1)..=stream_index_key(stream, u64::MAX);
        for entry in self.tree.range(range).rev() {
            let (key, seq) = entry.map_err(io_error)?;
            if be_u64(&seq).unwrap_or(0) <= head {
                return Ok(be_u64(&key[key.len() - 8..]).unwrap_or(0));
            }
        }
        Ok(0)
    }

    async fn idempotency_record(&self, key: &str) -> Result<Option<IdempotencyRecord>, StoreError> {
        let record = read_idempotency(&self.tree, key)?;
        // A record of a group that is not yet durable is not shown. The writer
        // marks a key pending before it applies the batch, so a record found
        // here is either pending or durable.
        let pending = self
            .shared
            .pending_keys
            .lock()
            .expect("pending lock")
            .contains(key);
        Ok(record.filter(|_| !pending))
    }

    fn head(&self) -> Head {
        *self.shared.head.lock().expect("head lock")
    }

    fn max_record_bytes(&self) -> usize {
        self.max_record_bytes
    }

    fn subscribe_committed(&self) -> broadcast::Receiver<Arc<Event>> {
        match &*self.committed.lock().expect("committed lock") {
            Some(sender) => sender.subscribe(),
            // Closed: a receiver whose sender is already gone reports Closed.
            None => broadcast::channel(1).1,
        }
    }
}

#[async_trait]
impl EventIndex for SledStore {
    async fn seq_of_id(&self, id: Uuid) -> Result<Option<u64>, StoreError> {
        sled_indexes::seq_of_id(&self.tree, &id, self.head().seq)
    }

    async fn seq_at_time(&self, time: DateTime<Utc>) -> Result<u64, StoreError> {
        sled_indexes::seq_at_time(&self.tree, time, self.head().seq)
    }

    async fn caused_by(
        &self,
        cause_seq: u64,
        after: u64,
        limit: usize,
    ) -> Result<Vec<u64>, StoreError> {
        sled_indexes::caused_by(&self.tree, cause_seq, after, limit, self.head().seq)
    }

    async fn correlated(
        &self,
        correlation: Uuid,
        after: u64,
        limit: usize,
    ) -> Result<Vec<u64>, StoreError> {
        sled_indexes::correlated(&self.tree, &correlation, after, limit, self.head().seq)
    }
}

#[async_trait]
impl SnapshotStore for SledStore {
    async fn save_snapshot(
        &self,
        seq: u64,
        parts: Vec<(String, Vec<u8>)>,
    ) -> Result<(), StoreError> {
        let tree = self.snapshots.clone();
        tokio::task::spawn_blocking(move || sled_snapshots::save(&tree, seq, &parts))
            .await
            .map_err(io_error)?
    }

    async fn snapshot_seqs(&self) -> Result<Vec<u64>, StoreError> {
        sled_snapshots::seqs(&self.snapshots)
    }

    async fn snapshot_part(&self, seq: u64, part: &str) -> Result<Option<Vec<u8>>, StoreError> {
        sled_snapshots::part(&self.snapshots, seq, part)
    }

    async fn snapshot_parts(&self, seq: u64) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        let tree = self.snapshots.clone();
        tokio::task::spawn_blocking(move || sled_snapshots::parts(&tree, seq))
            .await
            .map_err(io_error)?
    }
}

#[async_trait]
impl StoreAdmin for SledStore {
    async fn verify(&self) -> Result<VerifyReport, StoreError> {
        let tree = self.tree.clone();
        let head = self.head();
        tokio::task::spawn_blocking(move || verify_tree(&tree, Some(head)))
            .await
            .map_err(io_error)?
    }

    async fn import(&self, events: Vec<Event>) -> Result<Head, StoreError> {
        let outcome = self.submit(Work::Import(events)).await?;
        // The import's own last event: the durable head may already be past it.
        Ok(match outcome.events.last() {
            Some(last) => Head {
                seq: last.seq,
                hash: last.hash,
            },
            None => self.head(),
        })
    }

    fn failure(&self) -> Option<String> {
        self.shared.failure.lock().expect("failure lock").clone()
    }

    async fn close(&self) {
        let sender = self.sender.lock().expect("sender lock").take();
        drop(sender);
        let handle = self.writer.lock().expect("writer lock").take();
        if let Some(handle) = handle {
            // The writer finishes every job already queued, then exits when the
            // last sender (including those held by in-flight appends) is gone.
            let _ = tokio::task::spawn_blocking(move || handle.join()).await;
        }
        // With the writer gone too, subscribers now hear Closed.
        self.committed.lock().expect("committed lock").take();
    }

    fn metrics(&self) -> &StoreMetrics {
        &self.shared.metrics
    }
}

/// The single writer. Owns the head, the time watermark and a cache of
/// stream versions; nothing else writes to the tree. It stages and applies
/// groups; the [`Syncer`] makes them durable and answers them.
struct Writer {
    tree: sled::Db,
    config: SledStoreConfig,
    /// The head after the last group applied to sled. It runs ahead of the
    /// durable head (`Shared::head`) by the groups the syncer still holds.
    head: Head,
    last_time: Option<DateTime<Utc>>,
    stream_versions: HashMap<String, u64>,
    /// Set after an I/O failure: the writer answers every later job with it,
    /// since what is on disk is then unknown until a restart reads it back.
    failed: Option<String>,
    shared: Arc<Shared>,
}

/// Makes applied groups durable: one sled flush and one fsync for every group
/// waiting when it gets to them, then answers their requests and publishes
/// their events, in order. Its own thread, so that the writer stages and
/// applies the next group while this one waits for the disk.
struct Syncer {
    tree: sled::Db,
    db_file: File,
    shared: Arc<Shared>,
    committed: broadcast::Sender<Arc<Event>>,
    failed: Option<String>,
}

/// A job's result while its group is being staged.
struct Staged {
    reply: oneshot::Sender<Result<AppendOutcome, StoreError>>,
    result: Result<AppendOutcome, StoreError>,
}

/// The changes a group makes while it is being staged.
#[derive(Default)]
struct GroupOverlay {
    head: Option<Head>,
    last_time: Option<DateTime<Utc>>,
    stream_versions: HashMap<String, u64>,
    idempotency: HashMap<String, (IdempotencyRecord, Vec<Arc<Event>>)>,
    events: Vec<Arc<Event>>,
}

/// A group in sled, handed from the writer to the syncer. Nothing of it is
/// visible to readers until the syncer has made it durable.
struct AppliedGroup {
    staged: Vec<Staged>,
    /// False when every request of the group was refused or deduplicated.
    wrote: bool,
    head: Option<Head>,
    idempotency_keys: Vec<String>,
    events: Vec<Arc<Event>>,
}

/// How many applied groups may wait for the syncer. One: while a group is
/// being synced, the next one waits here and a third is staged; requests
/// arriving meanwhile queue up and make the following group larger.
const APPLIED_GROUPS_WAITING: usize = 1;

impl Writer {
    fn run(mut self, mut receiver: mpsc::Receiver<WriteJob>, syncer: Syncer) {
        let (applied, to_sync) = std::sync::mpsc::sync_channel(APPLIED_GROUPS_WAITING);
        let syncer = std::thread::Builder::new()
            .name("cairn-syncer".into())
            .spawn(move || syncer.run(to_sync));
        let syncer = match syncer {
            Ok(handle) => handle,
            Err(error) => {
                let reason = format!("cannot start the syncer thread: {error}");
                tracing::error!(%reason, "the store stops taking appends");
                *self.shared.failure.lock().expect("failure lock") = Some(reason.clone());
                while let Some(job) = receiver.blocking_recv() {
                    let _ = job.reply.send(Err(StoreError::Io(reason.clone())));
                }
                return;
            }
        };
        while let Some(first) = receiver.blocking_recv() {
            let mut jobs = vec![first];
            while jobs.len() < self.config.max_group_requests {
                match receiver.try_recv() {
                    Ok(job) => jobs.push(job),
                    Err(_) => break,
                }
            }
            if let Some(group) = self.apply_group(jobs) {
                if let Err(std::sync::mpsc::SendError(group)) = applied.send(group) {
                    // The syncer is gone (it panicked). The group is in sled,
                    // so whether it reaches the disk is unknown.
                    let reason = "the syncer thread stopped".to_string();
                    tracing::error!(%reason, "the store stops taking appends");
                    *self.shared.failure.lock().expect("failure lock") = Some(reason.clone());
                    for job in group.staged {
                        let _ = job
                            .reply
                            .send(Err(StoreError::OutcomeUnknown(reason.clone())));
                    }
                    break;
                }
            }
        }
        // The syncer makes the last groups durable, syncs once more and ends.
        drop(applied);
        let _ = syncer.join();
    }

    /// Stages a group's requests into one batch and applies it to sled.
    /// Returns the group for the syncer, or None when its requests were
    /// already answered (the store had failed, or the apply did).
    fn apply_group(&mut self, jobs: Vec<WriteJob>) -> Option<AppliedGroup> {
        let metrics = self.shared.metrics.clone();
        metrics.group_size.observe(jobs.len() as f64);
        metrics.append_requests.inc_by(jobs.len() as u64);
        if self.failed.is_none() {
            // A failed sync stops the writer too.
            self.failed = self.shared.failure.lock().expect("failure lock").clone();
        }
        if let Some(reason) = &self.failed {
            for job in jobs {
                let _ = job.reply.send(Err(StoreError::Io(reason.clone())));
            }
            return None;
        }

        let started = Instant::now();
        let mut batch = sled::Batch::default();
        let mut overlay = GroupOverlay::default();
        let mut staged = Vec::with_capacity(jobs.len());
        for job in jobs {
            let result = match job.work {
                Work::Append(request) => self.stage(request, &mut batch, &mut overlay),
                Work::Import(events) => self.stage_import(events, &mut batch, &mut overlay),
            };
            staged.push(Staged {
                reply: job.reply,
                result,
            });
        }

        let wrote = overlay.head.is_some() || !overlay.idempotency.is_empty();
        if wrote {
            if let Some(head) = overlay.head {
                batch.insert(HEAD_KEY, encode_head(&head));
            }
            self.shared
                .pending_keys
                .lock()
                .expect("pending lock")
                .extend(overlay.idempotency.keys().cloned());
            let applied = self.tree.apply_batch(batch);
            release_sled_garbage(overlay.events.len());
            metrics
                .apply_seconds
                .observe(started.elapsed().as_secs_f64());
            if let Err(error) = applied {
                let reason = io_error(error).to_string();
                tracing::error!(%reason, "applying a group failed; the store stops taking appends");
                self.failed = Some(reason.clone());
                *self.shared.failure.lock().expect("failure lock") = Some(reason.clone());
                for job in staged {
                    let _ = job.reply.send(Err(StoreError::Io(reason.clone())));
                }
                // The pending keys stay hidden: their records may be in sled.
                return None;
            }
        }
        // The next group builds on this one. Should its sync fail, the store
        // takes no more appends, so this state is never read again.
        if let Some(head) = overlay.head {
            self.head = head;
        }
        if overlay.last_time.is_some() {
            self.last_time = overlay.last_time;
        }
        self.stream_versions.extend(overlay.stream_versions);
        Some(AppliedGroup {
            staged,
            wrote,
            head: overlay.head,
            idempotency_keys: overlay.idempotency.into_keys().collect(),
            events: overlay.events,
        })
    }

    fn stream_version(&mut self, stream: &str, overlay: &GroupOverlay) -> Result<u64, StoreError> {
        if let Some(version) = overlay.stream_versions.get(stream) {
            return Ok(*version);
        }
        if let Some(version) = self.stream_versions.get(stream) {
            return Ok(*version);
        }
        let version = read_stream_version(&self.tree, stream)?;
        self.stream_versions.insert(stream.to_string(), version);
        Ok(version)
    }

    /// Checks one request against the state so far and stages its writes.
    /// On error nothing of the request is staged.
    fn stage(
        &mut self,
        request: AppendRequest,
        batch: &mut sled::Batch,
        overlay: &mut GroupOverlay,
    ) -> Result<AppendOutcome, StoreError> {
        validate_request(&request)?;
        if let Some(idempotency) = &request.idempotency {
            let earlier = match overlay.idempotency.get(&idempotency.key) {
                Some((record, events)) => Some((record.clone(), Some(events.clone()))),
                None => {
                    read_idempotency(&self.tree, &idempotency.key)?.map(|record| (record, None))
                }
            };
            if let Some((record, events)) = earlier {
                if record.digest != idempotency.digest {
                    return Err(StoreError::IdempotencyKeyReused {
                        key: idempotency.key.clone(),
                    });
                }
                let events = match events {
                    Some(events) => events,
                    None => read_range(&self.tree, record.first_seq, record.last_seq)?,
                };
                return Ok(AppendOutcome {
                    events,
                    stream_version: record.stream_version,
                    deduplicated: true,
                });
            }
        }

        let current = self.stream_version(&request.stream, overlay)?;
        if !request.expected.admits(current) {
            return Err(StoreError::WrongExpectedVersion {
                stream: request.stream,
                expected: request.expected,
                current,
            });
        }

        let mut head = overlay.head.unwrap_or(self.head);
        let mut last_time = overlay.last_time.or(self.last_time);
        let now = crate::event::truncate_to_micros((self.config.clock)());
        // Never before the previous event, even if the wall clock stepped back.
        let time = match last_time {
            Some(last) if last > now => last,
            _ => now,
        };
        let first_seq = head.seq + 1;
        let mut version = current;
        let mut sealed = Vec::with_capacity(request.events.len());
        let mut records = Vec::with_capacity(request.events.len());
        let mut seq_of_id = HashMap::new();
        for (index, mut new) in request.events.into_iter().enumerate() {
            version += 1;
            if let Cause::Event { seq: 0, id } = new.cause {
                if let Some(seq) = seq_of_id.get(&id) {
                    new.cause = Cause::Event { seq: *seq, id };
                }
            }
            seq_of_id.insert(new.id, head.seq + 1);
            let event = Event::seal(new, &request.stream, head.seq + 1, version, time, head.hash);
            let record = event.encode_record();
            if record.len() > self.config.max_record_bytes {
                return Err(StoreError::EventTooLarge {
                    index,
                    size: record.len(),
                    limit: self.config.max_record_bytes,
                });
            }
            head = Head {
                seq: event.seq,
                hash: event.hash,
            };
            last_time = Some(time);
            records.push(record);
            sealed.push(Arc::new(event));
        }

        // The request is accepted: stage it. Its events share one time, so
        // only the last one gets a time index entry.
        for (index, (event, record)) in sealed.iter().zip(records).enumerate() {
            let seq_bytes = event.seq.to_be_bytes();
            batch.insert(&event_key(event.seq)[..], record);
            batch.insert(
                stream_index_key(&event.stream, event.version),
                &seq_bytes[..],
            );
            let time_entry = if index + 1 == sealed.len() {
                TimeEntry::Stage
            } else {
                TimeEntry::Skip
            };
            sled_indexes::stage(batch, event, time_entry);
        }
        if !sealed.is_empty() {
            batch.insert(
                stream_version_key(&request.stream),
                &version.to_be_bytes()[..],
            );
            overlay
                .stream_versions
                .insert(request.stream.clone(), version);
            overlay.head = Some(head);
            overlay.last_time = last_time;
            overlay.events.extend(sealed.iter().cloned());
        }
        if let Some(idempotency) = request.idempotency {
            let record = IdempotencyRecord {
                digest: idempotency.digest,
                stream: request.stream.clone(),
                first_seq,
                last_seq: head.seq,
                stream_version: version,
            };
            let mut bytes = vec![RECORD_FORMAT_V1];
            bytes.extend_from_slice(&to_bincode(&record));
            batch.insert(idempotency_key(&idempotency.key), bytes);
            overlay
                .idempotency
                .insert(idempotency.key, (record, sealed.clone()));
        }
        Ok(AppendOutcome {
            events: sealed,
            stream_version: version,
            deduplicated: false,
        })
    }
}

impl Syncer {
    fn run(mut self, to_sync: std::sync::mpsc::Receiver<AppliedGroup>) {
        while let Ok(first) = to_sync.recv() {
            let mut groups = vec![first];
            while let Ok(group) = to_sync.try_recv() {
                groups.push(group);
            }
            self.commit(groups);
        }
        if self.failed.is_none() {
            if let Err(error) = self.sync() {
                tracing::error!(%error, "final sync failed");
            }
        }
    }

    fn sync(&self) -> Result<(), StoreError> {
        #[cfg(test)]
        {
            let gate = self.shared.failing_sync.lock().expect("test gate").take();
            if let Some(gate) = gate {
                let _ = gate.recv();
                return Err(StoreError::Io("injected sync failure".into()));
            }
        }
        let metrics = &self.shared.metrics;
        let started = Instant::now();
        self.tree.flush().map_err(io_error)?;
        let flushed = Instant::now();
        metrics
            .flush_seconds
            .observe((flushed - started).as_secs_f64());
        // fdatasync: the data and the file size, not the timestamps.
        self.db_file.sync_data().map_err(io_error)?;
        // The flush replaced sled's buffers on this thread; let them go.
        release_sled_garbage(0);
        metrics.fsyncs.inc();
        metrics
            .fsync_seconds
            .observe(flushed.elapsed().as_secs_f64());
        Ok(())
    }

    /// Makes the groups durable with one flush and one fsync, then answers
    /// and publishes them in the order they were applied.
    fn commit(&mut self, groups: Vec<AppliedGroup>) {
        let metrics = self.shared.metrics.clone();
        let any_wrote = groups.iter().any(|group| group.wrote);
        let synced = match &self.failed {
            Some(reason) => Err(reason.clone()),
            None if any_wrote => self.sync().map_err(|error| error.to_string()),
            None => Ok(()),
        };
        if let Err(reason) = synced {
            if self.failed.is_none() {
                tracing::error!(error = %reason, "group commit failed; the store stops taking appends");
                self.failed = Some(reason.clone());
                *self.shared.failure.lock().expect("failure lock") = Some(reason.clone());
            }
            for group in groups {
                for job in group.staged {
                    // A group that wrote is in sled, applied before the failure
                    // was known (or in the sync that failed): whether it reaches
                    // the disk is unknown, so its callers must not take the
                    // error as "not stored".
                    let answer = if group.wrote {
                        StoreError::OutcomeUnknown(reason.clone())
                    } else {
                        StoreError::Io(reason.clone())
                    };
                    let _ = job.reply.send(Err(answer));
                }
            }
            // The pending keys stay hidden: their records may not be durable.
            return;
        }
        if any_wrote {
            metrics.group_commits.inc();
        }

        // The groups are durable: move the head, then answer and publish. The
        // head moves before the pending keys are released, so a reader that
        // sees a key's record can also read the events it points to.
        for group in groups {
            if let Some(head) = group.head {
                *self.shared.head.lock().expect("head lock") = head;
                metrics.head_seq.set(head.seq as i64);
            }
            if !group.idempotency_keys.is_empty() {
                let mut pending_keys = self.shared.pending_keys.lock().expect("pending lock");
                for key in &group.idempotency_keys {
                    pending_keys.remove(key);
                }
            }
            metrics.events_appended.inc_by(group.events.len() as u64);
            for job in group.staged {
                if let Ok(outcome) = &job.result {
                    if !outcome.deduplicated && !outcome.events.is_empty() {
                        metrics.batch_size.observe(outcome.events.len() as f64);
                    }
                }
                let _ = job.reply.send(job.result);
            }
            for event in group.events {
                // No receivers is fine: nobody is listening yet.
                let _ = self.committed.send(event);
            }
        }
    }
}

impl Writer {
    /// Checks imported events against the log so far and stages them. On
    /// error nothing of the request is staged.
    fn stage_import(
        &mut self,
        events: Vec<Event>,
        batch: &mut sled::Batch,
        overlay: &mut GroupOverlay,
    ) -> Result<AppendOutcome, StoreError> {
        let head = overlay.head.unwrap_or(self.head);
        let mut cursor = ChainCursor {
            last_seq: head.seq,
            last_hash: head.hash,
            last_time: overlay.last_time.or(self.last_time),
        };
        let mut versions: HashMap<String, u64> = HashMap::new();
        let mut records = Vec::with_capacity(events.len());
        for (index, event) in events.iter().enumerate() {
            let rejected = |reason: String| StoreError::ImportRejected {
                index,
                seq: event.seq,
                reason,
            };
            if event.seq != cursor.last_seq + 1 {
                return Err(rejected(format!(
                    "expected seq {}, the next one of the log",
                    cursor.last_seq + 1
                )));
            }
            let record = event.encode_record();
            if record.len() > self.config.max_record_bytes {
                return Err(rejected(format!(
                    "{} bytes encoded, over the limit of {}",
                    record.len(),
                    self.config.max_record_bytes
                )));
            }
            cursor
                .check(event.seq, &record)
                .map_err(|error| rejected(error.to_string()))?;
            let current = match versions.get(&event.stream) {
                Some(version) => *version,
                None => self.stream_version(&event.stream, overlay)?,
            };
            if event.version != current + 1 {
                return Err(rejected(format!(
                    "version {} of stream {:?}, which is at version {current}",
                    event.version, event.stream
                )));
            }
            versions.insert(event.stream.clone(), event.version);
            records.push(record);
        }
        let events: Vec<Arc<Event>> = events.into_iter().map(Arc::new).collect();
        for (event, record) in events.iter().zip(records) {
            batch.insert(&event_key(event.seq)[..], record);
            batch.insert(
                stream_index_key(&event.stream, event.version),
                &event.seq.to_be_bytes()[..],
            );
            // Imported events keep their own times: each gets its entry.
            sled_indexes::stage(batch, event, TimeEntry::Stage);
        }
        for (stream, version) in &versions {
            batch.insert(stream_version_key(stream), &version.to_be_bytes()[..]);
        }
        if let Some(last) = events.last() {
            overlay.head = Some(Head {
                seq: last.seq,
                hash: last.hash,
            });
            overlay.last_time = Some(last.time);
            overlay.stream_versions.extend(versions);
            overlay.events.extend(events.iter().cloned());
        }
        Ok(AppendOutcome {
            events,
            stream_version: 0,
            deduplicated: false,
        })
    }
}

/// Lets sled free the tree nodes a large batch replaced. sled 0.34 defers
/// freeing each replaced node through crossbeam-epoch, which frees a little
/// garbage per pin; a batch of thousands of inserts (an import: 1,000 events
/// with their index entries) makes more garbage per pin than that, and an
/// import of 1,000,000 events grew past 6 GiB (24 KiB per event) in
/// `cargo bench --bench history`. Flushing this thread's deferred garbage and
/// pinning a few times after each batch lets the collector keep up; with 64
/// pins per batch the bench's import of 1,002,504 events ran to the end, its
/// process growing from 740 to 1,068 MiB (docs/PERFORMANCE.md).
///
/// The pins scale with the batch (one per 15 events, at least one and at
/// most 64, so an import's 1,000-event batches still get 64): each pin
/// allocates, and 64 of them after every small group were 8% of the writer's
/// time at 64 writers of one event each (perf, issue 6).
fn release_sled_garbage(events_in_batch: usize) {
    let pins = events_in_batch.div_ceil(15).clamp(1, 64);
    for _ in 0..pins {
        crossbeam_epoch::pin().flush();
    }
}

/// The longest stream name and idempotency key the store accepts.
pub const MAX_NAME_BYTES: usize = 512;

fn validate_request(request: &AppendRequest) -> Result<(), StoreError> {
    if request.stream.is_empty() || request.stream.len() > MAX_NAME_BYTES {
        return Err(StoreError::InvalidRequest(format!(
            "stream name must be 1 to {MAX_NAME_BYTES} bytes"
        )));
    }
    if request.stream.contains('\0') {
        return Err(StoreError::InvalidRequest(
            "stream name contains a NUL byte".into(),
        ));
    }
    if let Some(idempotency) = &request.idempotency {
        if idempotency.key.is_empty() || idempotency.key.len() > MAX_NAME_BYTES {
            return Err(StoreError::InvalidRequest(format!(
                "idempotency key must be 1 to {MAX_NAME_BYTES} bytes"
            )));
        }
    } else if request.events.is_empty() {
        return Err(StoreError::InvalidRequest(
            "an append needs at least one event".into(),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicI64, Ordering};
    use std::time::Duration;

    use super::*;
    use crate::event::GENESIS_HASH;
    use crate::store::test_support::{new_event, request};
    use crate::store::{ExpectedVersion, Idempotency};
    use chrono::TimeZone;

    /// Retries while the directory is still locked: sled's own threads can
    /// hold the lock file for a moment after a closed store is dropped (a
    /// restart in a new process, as in production, never meets this).
    fn when_released<T>(mut attempt: impl FnMut() -> Result<T, StoreError>) -> T {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            match attempt() {
                Err(StoreError::Locked { .. }) if std::time::Instant::now() < deadline => {
                    std::thread::sleep(std::time::Duration::from_millis(10));
                }
                result => return result.unwrap(),
            }
        }
    }

    struct SledBackend {
        dir: tempfile::TempDir,
    }

    impl crate::store::contract_tests::Backend for SledBackend {
        fn new() -> Self {
            SledBackend {
                dir: tempfile::tempdir().unwrap(),
            }
        }

        fn open(&self, clock: Clock) -> Arc<dyn crate::store::EventStore> {
            let mut config = SledStoreConfig::new(self.dir.path());
            config.clock = clock;
            Arc::new(when_released(|| SledStore::open(config.clone())))
        }
    }

    crate::store::contract_tests::contract_suite!(SledBackend);

    fn open(dir: &Path) -> SledStore {
        when_released(|| SledStore::open(SledStoreConfig::new(dir)))
    }

    /// Appends one event per text to stream `a`, closes the store, and opens
    /// its sled database directly, as an offline tool (or a tamperer) would.
    async fn closed_store_with_one_event_each(dir: &Path, texts: &[&str]) -> sled::Db {
        let store = open(dir);
        for text in texts {
            store
                .append(request("a", ExpectedVersion::Any, &[text]))
                .await
                .unwrap();
        }
        store.close().await;
        drop(store);
        when_released(|| open_db(dir, 1 << 20))
    }

    fn seqs(outcome: &AppendOutcome) -> Vec<u64> {
        outcome.events.iter().map(|event| event.seq).collect()
    }

    #[tokio::test]
    async fn seqs_are_gap_free_and_versions_count_per_stream() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path());
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
        assert_eq!(seqs(&a), vec![1, 2]);
        assert_eq!(seqs(&b), vec![3]);
        assert_eq!(seqs(&a2), vec![4]);
        assert_eq!(a2.stream_version, 3);
        assert_eq!(a2.events[0].prev_hash, b.events[0].hash);
        let stream = store.read_stream("a", 0, 10).await.unwrap();
        assert_eq!(
            stream
                .iter()
                .map(|e| (e.seq, e.version))
                .collect::<Vec<_>>(),
            vec![(1, 1), (2, 2), (4, 3)]
        );
        assert_eq!(store.read(1, 2).await.unwrap().len(), 2);
        assert_eq!(store.stream_version("a").await.unwrap(), 3);
        assert_eq!(store.stream_version("missing").await.unwrap(), 0);
        assert!(store.verify().await.unwrap().is_ok());
    }

    #[tokio::test]
    async fn wrong_expected_version_is_a_conflict_carrying_the_current_version() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path());
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

    #[tokio::test]
    async fn idempotency_key_returns_the_original_outcome_across_restarts() {
        let dir = tempfile::tempdir().unwrap();
        let keyed = |digest: u8| AppendRequest {
            idempotency: Some(Idempotency {
                key: "k1".into(),
                digest: [digest; 32],
            }),
            ..request("a", ExpectedVersion::Any, &["1", "2"])
        };
        let first = {
            let store = open(dir.path());
            let first = store.append(keyed(1)).await.unwrap();
            store.close().await;
            first
        };
        let store = open(dir.path());
        let again = store.append(keyed(1)).await.unwrap();
        assert!(again.deduplicated);
        assert_eq!(again.events, first.events);
        assert_eq!(store.head().seq, 2);
        match store.append(keyed(2)).await {
            Err(StoreError::IdempotencyKeyReused { key }) => assert_eq!(key, "k1"),
            other => panic!("expected reuse error, got {other:?}"),
        }
        assert_eq!(store.head().seq, 2);
    }

    /// Between the batch and its fsync a key's record is in sled but not on
    /// disk; readers must not see it then (the writer marks it pending).
    #[tokio::test]
    async fn a_pending_idempotency_key_is_not_shown_to_readers() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path());
        let keyed = AppendRequest {
            idempotency: Some(Idempotency {
                key: "k".into(),
                digest: [1; 32],
            }),
            ..request("a", ExpectedVersion::Any, &["1"])
        };
        store.append(keyed).await.unwrap();
        assert!(store.idempotency_record("k").await.unwrap().is_some());
        // Put the store in the state of a group between apply_batch and fsync.
        store.shared.pending_keys.lock().unwrap().insert("k".into());
        assert!(store.idempotency_record("k").await.unwrap().is_none());
        store.shared.pending_keys.lock().unwrap().remove("k");
        assert!(store.idempotency_record("k").await.unwrap().is_some());
    }

    #[tokio::test]
    async fn a_failed_sync_leaves_every_group_applied_after_it_unknown_and_stops_the_store() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(open(dir.path()));
        store
            .append(request("a", ExpectedVersion::Any, &["durable"]))
            .await
            .unwrap();
        let (release, gate) = std::sync::mpsc::channel();
        *store.shared.failing_sync.lock().unwrap() = Some(gate);

        // Group one reaches the syncer, which holds it in the failing sync.
        let first = tokio::spawn({
            let store = store.clone();
            async move {
                store
                    .append(request("a", ExpectedVersion::Any, &["1"]))
                    .await
            }
        });
        while store.shared.failing_sync.lock().unwrap().is_some() {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        // Group two is applied to sled meanwhile, before the failure is known.
        let second = tokio::spawn({
            let store = store.clone();
            async move {
                store
                    .append(request("b", ExpectedVersion::Any, &["2"]))
                    .await
            }
        });
        while store.tree.get(event_key(3)).unwrap().is_none() {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        // Applied is not durable: readers still see only the first event.
        assert_eq!(store.head().seq, 1);
        assert_eq!(store.read(0, 10).await.unwrap().len(), 1);

        release.send(()).unwrap();
        let first = first.await.unwrap().unwrap_err();
        let second = second.await.unwrap().unwrap_err();
        assert!(matches!(first, StoreError::OutcomeUnknown(_)), "{first:?}");
        assert!(
            matches!(second, StoreError::OutcomeUnknown(_)),
            "{second:?}"
        );
        assert!(store.failure().is_some());
        let third = store
            .append(request("c", ExpectedVersion::Any, &["3"]))
            .await
            .unwrap_err();
        assert!(matches!(third, StoreError::Io(_)), "{third:?}");
        assert_eq!(store.head().seq, 1);
        assert_eq!(store.read(0, 10).await.unwrap().len(), 1);
    }

    #[tokio::test]
    async fn a_request_with_one_oversized_event_stores_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path());
        let big = "x".repeat(70 * 1024);
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
        assert_eq!(seqs(&next), vec![1]);
    }

    #[tokio::test]
    async fn event_time_never_decreases_when_the_clock_steps_back() {
        let dir = tempfile::tempdir().unwrap();
        let micros = Arc::new(AtomicI64::new(2_000_000_000_000_000));
        let clock_micros = micros.clone();
        let mut config = SledStoreConfig::new(dir.path());
        config.clock = Arc::new(move || {
            Utc.timestamp_micros(clock_micros.load(Ordering::SeqCst))
                .unwrap()
        });
        let store = SledStore::open(config).unwrap();
        let mut times = Vec::new();
        for step in [0, -5_000_000, 1, -60_000_000, 100_000_000] {
            micros.fetch_add(step, Ordering::SeqCst);
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
    }

    #[tokio::test]
    async fn concurrent_appends_share_fsyncs() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(open(dir.path()));
        let tasks: Vec<_> = (0..64)
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
        let metrics = store.metrics();
        assert_eq!(store.head().seq, 640);
        assert_eq!(metrics.events_appended.get(), 640);
        // With 64 writers waiting at once, groups hold more than one request,
        // and each group costs one fsync.
        assert!(
            metrics.fsyncs.get() < 640,
            "{} fsyncs for 640 appends",
            metrics.fsyncs.get()
        );
        assert!(store.verify().await.unwrap().is_ok());
    }

    /// sled never fsyncs its blob files, so no record may ever land in one:
    /// records of the largest accepted size, enough to fill many leaf nodes.
    #[tokio::test]
    async fn records_of_the_largest_size_stay_out_of_blob_files() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path());
        // The largest payload whose record still fits under the limit.
        let mut size = MAX_RECORD_BYTES;
        let text = loop {
            let text = "x".repeat(size);
            let record =
                Event::seal(new_event(&text), "a", 1, 1, Utc::now(), GENESIS_HASH).encode_record();
            if record.len() <= MAX_RECORD_BYTES {
                break text;
            }
            size -= record.len() - MAX_RECORD_BYTES;
        };
        for round in 0..6 {
            let texts = vec![text.as_str(); 10];
            store
                .append(request(
                    &format!("s{}", round % 2),
                    ExpectedVersion::Any,
                    &texts,
                ))
                .await
                .unwrap();
        }
        store.close().await;
        drop(store);
        let blobs = dir.path().join("blobs");
        let files = std::fs::read_dir(&blobs)
            .map(|entries| entries.count())
            .unwrap_or(0);
        assert_eq!(
            files,
            0,
            "sled wrote {files} blob files under {}",
            blobs.display()
        );
        let db = when_released(|| open_db(dir.path(), 1 << 20));
        assert!(verify_tree(&db, None).unwrap().is_ok());
    }

    #[tokio::test]
    async fn offline_verify_reports_an_event_stored_past_the_head() {
        let dir = tempfile::tempdir().unwrap();
        let db = closed_store_with_one_event_each(dir.path(), &["1", "2"]).await;
        let record = db.get(event_key(2)).unwrap().unwrap();
        db.insert(event_key(3), record).unwrap();
        let report = verify_tree(&db, None).unwrap();
        assert_eq!(report.first_bad.unwrap().seq, 3);
        drop(db);
        let opened = when_released(|| match SledStore::open(SledStoreConfig::new(dir.path())) {
            Err(StoreError::Locked { path }) => Err(StoreError::Locked { path }),
            other => Ok(other),
        });
        match opened {
            Err(StoreError::Corrupt { seq, .. }) => assert_eq!(seq, 3),
            Err(other) => panic!("expected Corrupt, got {other:?}"),
            Ok(_) => panic!("a store with an event past its head opened"),
        }
    }

    #[tokio::test]
    async fn verify_names_the_first_tampered_seq() {
        let dir = tempfile::tempdir().unwrap();
        let db = closed_store_with_one_event_each(dir.path(), &["1", "2", "3"]).await;
        let mut record = db.get(event_key(2)).unwrap().unwrap().to_vec();
        let last = record.len() - 40;
        record[last] ^= 0x20;
        db.insert(event_key(2), record).unwrap();
        let report = verify_tree(&db, None).unwrap();
        assert_eq!(report.first_bad.unwrap().seq, 2);
    }

    #[tokio::test]
    async fn a_cause_naming_an_event_of_the_same_request_gets_its_seq() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path());
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
        assert_eq!(
            outcome.events[1].cause,
            Cause::Event {
                seq: 2,
                id: first.id
            }
        );
        assert_eq!(
            outcome.events[0].cause,
            Cause::Event {
                seq: 0,
                id: stranger
            }
        );
        assert_eq!(store.caused_by(2, 0, 10).await.unwrap(), vec![3]);
        assert_eq!(store.verify().await.unwrap().first_bad, None);
    }

    #[tokio::test]
    async fn events_are_found_by_id_time_cause_and_correlation() {
        let dir = tempfile::tempdir().unwrap();
        let micros = Arc::new(AtomicI64::new(1_000_000));
        let clock_micros = micros.clone();
        let mut config = SledStoreConfig::new(dir.path());
        config.clock = Arc::new(move || {
            Utc.timestamp_micros(clock_micros.load(Ordering::SeqCst))
                .unwrap()
        });
        let store = when_released(|| SledStore::open(config.clone()));
        let correlation = Uuid::now_v7();
        let mut ids = Vec::new();
        for step in 0..5u64 {
            micros.store(1_000_000 + step as i64 * 10, Ordering::SeqCst);
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
        assert_eq!(store.seq_of_id(ids[3]).await.unwrap(), Some(4));
        assert_eq!(store.seq_of_id(Uuid::now_v7()).await.unwrap(), None);
        let at = |micros: i64| Utc.timestamp_micros(micros).unwrap();
        assert_eq!(store.seq_at_time(at(999_999)).await.unwrap(), 0);
        assert_eq!(store.seq_at_time(at(1_000_000)).await.unwrap(), 1);
        assert_eq!(store.seq_at_time(at(1_000_025)).await.unwrap(), 3);
        assert_eq!(store.seq_at_time(at(9_000_000)).await.unwrap(), 5);
        assert_eq!(store.caused_by(1, 0, 10).await.unwrap(), vec![2, 3, 4, 5]);
        assert_eq!(store.caused_by(1, 3, 1).await.unwrap(), vec![4]);
        assert_eq!(store.caused_by(2, 0, 10).await.unwrap(), Vec::<u64>::new());
        assert_eq!(
            store.correlated(correlation, 0, 10).await.unwrap(),
            vec![1, 3, 5]
        );

        // An append of several events has one time and one time entry, for
        // its last event: a time inside it never names a seq in its middle.
        micros.store(2_000_000, Ordering::SeqCst);
        store
            .append(AppendRequest {
                stream: "b".into(),
                expected: ExpectedVersion::Any,
                events: vec![new_event("b1"), new_event("b2"), new_event("b3")],
                idempotency: None,
            })
            .await
            .unwrap();
        assert_eq!(store.seq_at_time(at(1_999_999)).await.unwrap(), 5);
        assert_eq!(store.seq_at_time(at(2_000_000)).await.unwrap(), 8);
        let time_entries = store.tree.scan_prefix([b't']).count();
        assert_eq!(time_entries, 6, "five single appends and one of three");

        // A log from before the indexes: drop them, and the next open rebuilds them.
        store.close().await;
        drop(store);
        let db = when_released(|| open_db(dir.path(), 1 << 20));
        for prefix in [b'd', b't', b'c', b'r', b'x'] {
            for entry in db.scan_prefix([prefix]) {
                db.remove(entry.unwrap().0).unwrap();
            }
        }
        db.flush().unwrap();
        drop(db);
        let store = when_released(|| SledStore::open(config.clone()));
        assert_eq!(store.seq_of_id(ids[3]).await.unwrap(), Some(4));
        assert_eq!(store.seq_at_time(at(1_000_025)).await.unwrap(), 3);
        // The rebuild gives every event a time entry; the answers are the same.
        assert_eq!(store.seq_at_time(at(2_000_000)).await.unwrap(), 8);
        assert_eq!(store.caused_by(1, 0, 10).await.unwrap(), vec![2, 3, 4, 5]);
        assert_eq!(
            store.correlated(correlation, 0, 10).await.unwrap(),
            vec![1, 3, 5]
        );
    }

    #[tokio::test]
    async fn import_takes_a_chain_as_it_is_and_names_the_first_event_that_does_not_fit() {
        let source_dir = tempfile::tempdir().unwrap();
        let source = open(source_dir.path());
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

        let target_dir = tempfile::tempdir().unwrap();
        let target = open(target_dir.path());
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

    #[tokio::test]
    async fn snapshots_are_kept_by_seq() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path());
        store
            .save_snapshot(
                5,
                vec![("a".into(), vec![1]), ("b".into(), vec![2; 100_000])],
            )
            .await
            .unwrap();
        assert_eq!(store.snapshot_seqs().await.unwrap(), vec![5]);
        assert_eq!(
            store.snapshot_part(5, "b").await.unwrap(),
            Some(vec![2; 100_000])
        );
        assert_eq!(store.snapshot_parts(5).await.unwrap().len(), 2);
        // Snapshot parts never go to sled's unsynced blob files.
        store.close().await;
        let blobs = dir.path().join("blobs");
        let count = std::fs::read_dir(&blobs).map_or(0, |entries| entries.count());
        assert_eq!(count, 0);
    }
}
