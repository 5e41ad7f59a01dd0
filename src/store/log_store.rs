//! The embedded store: Cairn's own log in segment files (`segment/`), the
//! source of truth, with derived indexes and snapshots in redb (`index.rs`).
//!
//! # Layout of a data directory
//!
//! | path | what |
//! |---|---|
//! | `log/NNNNNNNNNNNNNNNN.seg` | the segment files (docs/storage.md, byte by byte) |
//! | `log/spare.tmp` | the next segment, zero-filled ahead of use |
//! | `index.redb` | derived indexes and snapshots; rebuilt from the log when missing or damaged |
//! | `LOCK` | held (flock) by the process that has the store open |
//! | `sim/` | the simulated cloud's journal (not the store's) |
//!
//! # Threads
//!
//! - The **writer** owns every append. It takes every request waiting in its
//!   queue (a group), checks each one with `rules`, encodes one frame per
//!   accepted request, and hands the group to `SegmentWriter::append`: one
//!   write and one fdatasync per segment the group touches. Only then does
//!   it move the durable head, keep the group's events in `Recent`, answer
//!   the requests, publish the events and pass them to the indexer. A failed
//!   write or fdatasync fails the store for good: that group's requests get
//!   `OutcomeUnknown` (or `Io`, when nothing was written), every later one
//!   `Failed`, and `failure()` says why.
//! - The **indexer** folds committed frames into redb behind the
//!   acknowledgement, with the position and chain hash it is built through
//!   (its checkpoint), then drops them from `Recent`. Its queue is bounded
//!   (`LogStoreConfig::index_queue_groups`): an indexer far behind makes the
//!   writer wait, so `Recent` cannot grow without end.
//! - Readers run on tokio's blocking pool (`spawn_blocking`): they read
//!   `Recent` first and redb after, so between the two they see every
//!   durable event (the indexer commits to redb before it trims `Recent`).
//!
//! # Open
//!
//! The segment layer recovers the tail (a torn last write is cut; damage
//! before valid data refuses to open). The index's checkpoint is checked
//! against the log (the event at its seq must have its hash); the frames
//! after it are read, their hash chain checked from the checkpoint on, and
//! indexed. An index that redb cannot open, or whose checkpoint the log does
//! not confirm, is rebuilt from the first frame. A full chain check runs in
//! the background afterwards and on `verify`.

use std::collections::{HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use async_trait::async_trait;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use tokio::sync::{broadcast, mpsc, oneshot};
use uuid::Uuid;

use super::disk::{Disk, RealDisk};
use super::index::{Checkpoint, FramePosition, IndexBatch, IndexConfig, IndexDb, IndexEntry};
use super::metrics::StoreMetrics;
use super::rules::{self, Sealed, Tail};
use super::segment::{
    self, Frame, FrameInput, Position, SegmentConfig, SegmentReader, SegmentWriter, SpareMaker,
};
use super::{
    AppendOutcome, AppendRequest, BadRecord, EventIndex, EventLog, Head, IdempotencyRecord,
    SnapshotStore, StoreAdmin, StoreConfig, StoreError, VerifyReport,
};
use crate::event::{from_bincode, to_bincode, ChainCursor, Event, GENESIS_HASH, RECORD_FORMAT_V1};

/// Where the index lives.
#[derive(Clone, Debug)]
pub enum IndexLocation {
    /// `index.redb` in the data directory.
    InDataDirectory,
    /// In memory: the simulated-disk tests, whose "disk" is not a file system
    /// redb can use. A store opened again over the same `MemoryIndexFile`
    /// finds the index as the last one left it; a new one is rebuilt.
    Memory(super::index::MemoryIndexFile),
}

/// How to open a `LogStore`: the common store settings and the log's own.
#[derive(Clone)]
pub struct LogStoreConfig {
    pub store: StoreConfig,
    pub segment_bytes: u64,
    pub disk: Arc<dyn Disk>,
    pub index: IndexLocation,
    /// Hold `LOCK` in the data directory (real disks only).
    pub lock_directory: bool,
    /// Check the whole chain on a background thread after open.
    pub verify_in_background: bool,
    /// Verify the checksum of every page of `index.redb` in use at open
    /// (`IndexConfig::verify_on_open`). It reads the whole file (0.21 s,
    /// warm, for the 164 MB of a million events: `cargo run --release
    /// --example data-dir-size DIR`), so the daemon leaves it
    /// off and `cairn verify --data-dir` turns it on: the index is derived,
    /// and every answer it gives is checked against the log's records
    /// (a stream read keeps only the stream's events, a snapshot must match
    /// the chain hash at its seq), so damage there costs a rebuild
    /// (`cairn reindex`), not a wrong answer.
    pub verify_index_pages: bool,
    /// Who zero-fills the next segment ahead of use: a background thread,
    /// or the writer itself (every disk operation on one thread, for the
    /// seeded power-loss tests).
    pub spare_maker: SpareMaker,
    /// How many committed groups may wait for the indexer before the writer
    /// waits for it. A group's events stay in `Recent` until they are
    /// indexed, so this bounds the memory an index that falls behind can
    /// take; past it, appends slow to the indexer's pace instead.
    pub index_queue_groups: usize,
    /// Held by a test to stop the indexer before its next batch.
    #[cfg(test)]
    pub(crate) index_gate: Option<Arc<Mutex<()>>>,
}

/// Groups waiting for the indexer, at most (`LogStoreConfig::index_queue_groups`).
/// The indexer takes everything waiting at once, so a full queue means it
/// is more than a thousand groups behind.
pub const DEFAULT_INDEX_QUEUE_GROUPS: usize = 1024;

impl LogStoreConfig {
    pub fn new(store: StoreConfig) -> LogStoreConfig {
        LogStoreConfig {
            store,
            segment_bytes: segment::DEFAULT_SEGMENT_BYTES,
            disk: Arc::new(RealDisk),
            index: IndexLocation::InDataDirectory,
            lock_directory: true,
            verify_in_background: true,
            verify_index_pages: false,
            spare_maker: SpareMaker::BackgroundThread,
            index_queue_groups: DEFAULT_INDEX_QUEUE_GROUPS,
            #[cfg(test)]
            index_gate: None,
        }
    }
}

/// What a frame carries besides its records: the request's idempotency key
/// and what it answers. Format byte, then bincode; empty when there is none.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct FrameMeta {
    idempotency_key: String,
    record: IdempotencyRecord,
}

fn encode_meta(idempotency: &Option<(String, IdempotencyRecord)>) -> Vec<u8> {
    match idempotency {
        None => Vec::new(),
        Some((key, record)) => {
            let mut bytes = vec![RECORD_FORMAT_V1];
            bytes.extend_from_slice(&to_bincode(&FrameMeta {
                idempotency_key: key.clone(),
                record: record.clone(),
            }));
            bytes
        }
    }
}

fn decode_meta(bytes: &[u8]) -> Result<Option<FrameMeta>, String> {
    match bytes.split_first() {
        None => Ok(None),
        Some((&RECORD_FORMAT_V1, rest)) => from_bincode(rest)
            .map(Some)
            .map_err(|error| format!("frame meta: {error}")),
        Some((other, _)) => Err(format!("frame meta has unknown format byte {other:#04x}")),
    }
}

/// A frame the writer made durable, on its way to the indexer.
#[derive(Debug, Clone)]
struct CommittedFrame {
    position: Position,
    next: Position,
    events: Vec<Arc<Event>>,
    idempotency: Option<(String, IdempotencyRecord)>,
    /// The chain hash after this frame.
    hash: crate::event::Hash,
}

/// Durable events and keys the index does not hold yet.
#[derive(Debug)]
struct Recent {
    head: Head,
    /// Durable events after the index's checkpoint, in seq order.
    events: VecDeque<Arc<Event>>,
    /// Keys of durable frames after the checkpoint, with their frame's position.
    idempotency: HashMap<String, (IdempotencyRecord, Position)>,
}

impl Recent {
    fn first_seq(&self) -> u64 {
        self.events
            .front()
            .map_or(self.head.seq + 1, |event| event.seq)
    }

    fn event(&self, seq: u64) -> Option<Arc<Event>> {
        let first = self.first_seq();
        if seq < first || seq > self.head.seq {
            return None;
        }
        self.events.get((seq - first) as usize).cloned()
    }
}

struct Shared {
    reader: SegmentReader,
    index: IndexDb,
    recent: Mutex<Recent>,
    failure: Mutex<Option<String>>,
    metrics: StoreMetrics,
}

enum Work {
    Append(AppendRequest),
    Import(Vec<Event>),
}

struct WriteJob {
    work: Work,
    reply: oneshot::Sender<Result<AppendOutcome, StoreError>>,
}

/// The embedded store. See the module docs.
pub struct LogStore {
    shared: Arc<Shared>,
    sender: Mutex<Option<mpsc::Sender<WriteJob>>>,
    writer: Mutex<Option<std::thread::JoinHandle<()>>>,
    indexer: Mutex<Option<std::thread::JoinHandle<()>>>,
    committed: Mutex<Option<broadcast::Sender<Arc<Event>>>>,
    max_record_bytes: usize,
    /// Held for as long as the store is open; the lock goes with the file.
    _lock: Option<std::fs::File>,
}

fn io_error(context: &str, error: impl std::fmt::Display) -> StoreError {
    StoreError::Io(format!("{context}: {error}"))
}

fn log_error(error: segment::LogError) -> StoreError {
    match error {
        segment::LogError::Corrupt {
            segment,
            offset,
            reason,
        } => StoreError::DamagedLog {
            path: segment.display().to_string(),
            offset,
            reason,
        },
        other => StoreError::Io(other.to_string()),
    }
}

fn index_error(error: super::index::IndexError) -> StoreError {
    StoreError::Io(format!("index: {error}"))
}

fn decode(seq: u64, record: &[u8]) -> Result<Event, StoreError> {
    Event::decode_record(record).map_err(|error| StoreError::Corrupt {
        seq,
        reason: error.to_string(),
    })
}

/// Refuses a data directory that the sled store of an earlier build wrote.
pub(crate) fn refuse_sled_directory(data_dir: &Path) -> Result<(), StoreError> {
    if data_dir.join("conf").is_file() && data_dir.join("db").is_file() {
        return Err(StoreError::WrongFormat(format!(
            "{} was written by the sled store of a development build before the segment log; \
             this build cannot read it. Export it with that build (`cairn export --data-dir {0}`) \
             and import the file into a new directory (`cairn import --data-dir NEW`), or start \
             with an empty data directory",
            data_dir.display()
        )));
    }
    Ok(())
}

/// Creates the data directory if needed, syncing each new level's parent so
/// the new names survive a power loss.
fn create_data_directory(disk: &dyn Disk, data_dir: &Path) -> Result<(), StoreError> {
    let mut missing = Vec::new();
    let mut cursor = Some(data_dir);
    while let Some(path) = cursor {
        if path.as_os_str().is_empty() || disk.exists(path) {
            break;
        }
        missing.push(path.to_path_buf());
        cursor = path.parent();
    }
    disk.create_dir_all(data_dir)
        .map_err(|error| io_error("creating the data directory", error))?;
    for created in missing.iter().rev() {
        if let Some(parent) = created.parent().filter(|p| !p.as_os_str().is_empty()) {
            disk.sync_dir(parent)
                .map_err(|error| io_error("syncing the data directory's parent", error))?;
        }
    }
    Ok(())
}

fn lock_directory(data_dir: &Path) -> Result<std::fs::File, StoreError> {
    let path = data_dir.join("LOCK");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|error| io_error(&format!("opening {}", path.display()), error))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => Err(StoreError::Locked {
            path: data_dir.display().to_string(),
        }),
        Err(std::fs::TryLockError::Error(error)) => {
            Err(io_error(&format!("locking {}", path.display()), error))
        }
    }
}

/// Reads frames from `from` to the durable end, calling `each` per frame.
fn for_each_frame(
    reader: &SegmentReader,
    from: Position,
    mut each: impl FnMut(&Frame) -> Result<(), StoreError>,
) -> Result<(), StoreError> {
    let mut position = from;
    loop {
        let frames = reader.read_frames(position, 4 << 20).map_err(log_error)?;
        let Some(last) = frames.last() else {
            return Ok(());
        };
        position = last.next;
        for frame in &frames {
            each(frame)?;
        }
    }
}

/// The sparse frame positions the index keeps: a frame is recorded when it
/// holds a seq that is a multiple of `FRAME_INDEX_EVERY_SEQS`, so finding a
/// seq reads at most that many events before its frame. The rule depends
/// on the log alone, so a rebuilt index records the same frames as one
/// built as the log grew.
const FRAME_INDEX_EVERY_SEQS: u64 = 16;

fn frame_is_indexed(first_seq: u64, count: u64) -> bool {
    if count == 0 {
        return false;
    }
    let last_seq = first_seq + count - 1;
    first_seq == 1 || (first_seq - 1) / FRAME_INDEX_EVERY_SEQS != last_seq / FRAME_INDEX_EVERY_SEQS
}

fn index_entry(event: &Event) -> IndexEntry<'_> {
    IndexEntry {
        seq: event.seq,
        id: event.id,
        stream: &event.stream,
        version: event.version,
        time_micros: event.time.timestamp_micros(),
        causing_seq: event.cause.causing_event().map(|(seq, _)| seq),
        correlation: (!event.correlation.is_nil()).then_some(event.correlation),
    }
}

/// Folds committed frames into one index batch and applies it.
fn index_frames(
    index: &IndexDb,
    frames: &[CommittedFrame],
    checkpoint_seq: u64,
) -> Result<Option<Checkpoint>, StoreError> {
    let Some(last) = frames.last() else {
        return Ok(None);
    };
    let metas: Vec<(String, Vec<u8>)> = frames
        .iter()
        .filter_map(|frame| {
            frame
                .idempotency
                .as_ref()
                .map(|(key, record)| (key.clone(), to_bincode(record)))
        })
        .collect();
    let checkpoint = Checkpoint {
        seq: frames
            .iter()
            .rev()
            .find_map(|frame| frame.events.last().map(|event| event.seq))
            .unwrap_or(checkpoint_seq),
        hash: last.hash,
        segment: last.next.segment,
        offset: last.next.offset,
    };
    let batch = IndexBatch {
        events: frames
            .iter()
            .flat_map(|frame| frame.events.iter().map(|event| index_entry(event)))
            .collect(),
        idempotency: metas
            .iter()
            .map(|(key, bytes)| (key.as_str(), bytes.as_slice()))
            .collect(),
        frames: frames
            .iter()
            .filter_map(|frame| {
                let first = frame.events.first()?;
                frame_is_indexed(first.seq, frame.events.len() as u64).then_some(FramePosition {
                    first_seq: first.seq,
                    segment: frame.position.segment,
                    offset: frame.position.offset,
                })
            })
            .collect(),
        checkpoint,
    };
    index.apply(&batch).map_err(index_error)?;
    Ok(Some(checkpoint))
}

/// A store dropped without `close` still lets its writer finish the jobs
/// queued and its indexer make the index durable before the directory's
/// lock goes with the `_lock` field, so a second opener never finds the
/// threads of the first still writing.
impl Drop for LogStore {
    fn drop(&mut self) {
        self.sender.lock().expect("sender lock").take();
        if let Some(writer) = self.writer.lock().expect("writer lock").take() {
            let _ = writer.join();
        }
        if let Some(indexer) = self.indexer.lock().expect("indexer lock").take() {
            let _ = indexer.join();
        }
    }
}

impl LogStore {
    /// Opens (or creates) the store; see the module docs.
    pub fn open(config: LogStoreConfig) -> Result<LogStore, StoreError> {
        let data_dir = config.store.data_dir.clone();
        refuse_sled_directory(&data_dir)?;
        create_data_directory(config.disk.as_ref(), &data_dir)?;
        let lock = if config.lock_directory {
            Some(lock_directory(&data_dir)?)
        } else {
            None
        };
        let (mut segments, reader, recovery) = segment::open_with(
            config.disk.clone(),
            &data_dir.join("log"),
            SegmentConfig {
                segment_bytes: config.segment_bytes,
            },
            config.spare_maker,
        )
        .map_err(log_error)?;
        if let Some(cut) = &recovery.cut {
            tracing::warn!(
                segment = %cut.path.display(),
                offset = cut.offset,
                bytes = cut.bytes_zeroed,
                reason = %cut.reason,
                "cut a torn last write (never acknowledged) at the end of the log"
            );
        }
        let index = open_index(&data_dir, &config.index, config.verify_index_pages)?;
        let started = Instant::now();
        let caught_up = catch_up(&reader, &index)?;
        tracing::debug!(
            head_seq = caught_up.tail.head.seq,
            events_indexed = caught_up.events_indexed,
            millis = started.elapsed().as_millis() as u64,
            "log opened"
        );
        if caught_up.tail.head.seq + 1 != recovery.next_seq {
            return Err(StoreError::Corrupt {
                seq: caught_up.tail.head.seq + 1,
                reason: format!(
                    "the frames end at seq {} but the segments continue at seq {}",
                    caught_up.tail.head.seq, recovery.next_seq
                ),
            });
        }
        // The footer of the segment the writer will seal next needs the
        // chain hash after the last frame, which only the records know.
        segments.set_last_hash(caught_up.tail.head.hash);
        let metrics = StoreMetrics::default();
        metrics.head_seq.set(caught_up.tail.head.seq as i64);
        let shared = Arc::new(Shared {
            reader,
            index,
            recent: Mutex::new(Recent {
                head: caught_up.tail.head,
                events: VecDeque::new(),
                idempotency: HashMap::new(),
            }),
            failure: Mutex::new(None),
            metrics,
        });
        let (committed, _) = broadcast::channel(config.store.broadcast_capacity);
        let (sender, receiver) = mpsc::channel(config.store.max_group_requests);
        let (to_index, index_receiver) =
            std::sync::mpsc::sync_channel(config.index_queue_groups.max(1));
        let stream_versions = shared
            .index
            .stream_versions()
            .map_err(index_error)?
            .into_iter()
            .collect();
        let writer = Writer {
            segments,
            frame_capacity: SegmentConfig {
                segment_bytes: config.segment_bytes,
            }
            .frame_capacity(),
            config: config.store.clone(),
            tail: caught_up.tail,
            stream_versions,
            failed: None,
            shared: shared.clone(),
            committed: committed.clone(),
            to_index,
        };
        let writer = std::thread::Builder::new()
            .name("cairn-writer".into())
            .spawn(move || writer.run(receiver))
            .map_err(|error| io_error("starting the writer", error))?;
        let indexer = Indexer {
            shared: shared.clone(),
            checkpoint_seq: caught_up.tail.head.seq,
            #[cfg(test)]
            gate: config.index_gate.clone(),
        };
        let indexer = std::thread::Builder::new()
            .name("cairn-indexer".into())
            .spawn(move || indexer.run(index_receiver))
            .map_err(|error| io_error("starting the indexer", error))?;
        if config.verify_in_background {
            // The reader only: the index (redb allows one open per file)
            // must close with the store, not with this thread.
            let reader = shared.reader.clone();
            let head = caught_up.tail.head;
            let _ = std::thread::Builder::new()
                .name("cairn-verify".into())
                .spawn(move || {
                    // Let start-up (the ledger's snapshot and tail) have the
                    // cores first; the check reads the whole log.
                    std::thread::sleep(std::time::Duration::from_secs(5));
                    match verify_chain(&reader, head) {
                    Ok(report) if report.is_ok() => {
                        tracing::debug!(events = report.events_checked, "the whole log verified")
                    }
                    Ok(report) => tracing::error!(
                        first_bad = ?report.first_bad,
                        "the log's hash chain is broken; `cairn verify` names the first bad record"
                    ),
                    Err(error) => tracing::error!(%error, "the background verification failed"),
                    }
                });
        }
        Ok(LogStore {
            shared,
            sender: Mutex::new(Some(sender)),
            writer: Mutex::new(Some(writer)),
            indexer: Mutex::new(Some(indexer)),
            committed: Mutex::new(Some(committed)),
            max_record_bytes: config.store.max_record_bytes,
            _lock: lock,
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

    /// Runs a blocking read on tokio's blocking pool.
    async fn blocking<T: Send + 'static>(
        &self,
        read: impl FnOnce(&Shared) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let shared = self.shared.clone();
        tokio::task::spawn_blocking(move || read(&shared))
            .await
            .map_err(|error| io_error("a read task", error))?
    }
}

/// Empties the derived tables of the index (snapshots stay), so that the
/// next open rebuilds them from the first frame.
pub(crate) fn clear_index(config: &LogStoreConfig) -> Result<(), StoreError> {
    refuse_sled_directory(&config.store.data_dir)?;
    let _lock = if config.lock_directory {
        Some(lock_directory(&config.store.data_dir)?)
    } else {
        None
    };
    let index = open_index(&config.store.data_dir, &config.index, true)?;
    index.clear_indexes().map_err(index_error)
}

impl LogStore {
    /// The seq the index is built through.
    pub(crate) fn indexed_seq(&self) -> Result<u64, StoreError> {
        Ok(self
            .shared
            .index
            .checkpoint()
            .map_err(index_error)?
            .map_or(0, |checkpoint| checkpoint.seq))
    }
}

fn open_index(
    data_dir: &Path,
    location: &IndexLocation,
    verify_pages: bool,
) -> Result<IndexDb, StoreError> {
    let index_config = IndexConfig {
        verify_on_open: verify_pages,
        ..IndexConfig::default()
    };
    match location {
        IndexLocation::Memory(file) => IndexDb::open_in_memory(file.clone()).map_err(index_error),
        IndexLocation::InDataDirectory => {
            let path: PathBuf = data_dir.join("index.redb");
            match IndexDb::open(&path, index_config.clone()) {
                Ok(index) => Ok(index),
                Err(super::index::IndexError::Damaged(reason)) => {
                    tracing::warn!(%reason, path = %path.display(), "the index is damaged; rebuilding it from the log");
                    std::fs::remove_file(&path)
                        .map_err(|error| io_error("removing the damaged index", error))?;
                    IndexDb::open(&path, index_config).map_err(index_error)
                }
                Err(other) => Err(index_error(other)),
            }
        }
    }
}

struct CaughtUp {
    tail: Tail,
    events_indexed: u64,
}

/// Checks the index's checkpoint against the log, then reads, chain-checks
/// and indexes every frame after it.
fn catch_up(reader: &SegmentReader, index: &IndexDb) -> Result<CaughtUp, StoreError> {
    let mut cursor = ChainCursor::default();
    let mut start = reader.start();
    if let Some(checkpoint) = index.checkpoint().map_err(index_error)? {
        match confirm_checkpoint(reader, index, &checkpoint)? {
            Some(time) => {
                cursor = ChainCursor {
                    last_seq: checkpoint.seq,
                    last_hash: checkpoint.hash,
                    last_time: time,
                };
                start = Position {
                    segment: checkpoint.segment,
                    offset: checkpoint.offset,
                };
            }
            None => {
                tracing::warn!(
                    seq = checkpoint.seq,
                    "the index's checkpoint does not match the log; rebuilding the index"
                );
                index.clear_indexes().map_err(index_error)?;
            }
        }
    }
    let mut pending: Vec<CommittedFrame> = Vec::new();
    let mut pending_events = 0;
    let mut events_indexed = 0;
    for_each_frame(reader, start, |frame| {
        let mut events = Vec::with_capacity(frame.records.len());
        for (index, record) in frame.records.iter().enumerate() {
            let seq = frame.first_seq + index as u64;
            let event = cursor
                .check(seq, record)
                .map_err(|error| StoreError::Corrupt {
                    seq,
                    reason: error.to_string(),
                })?;
            events.push(Arc::new(event));
        }
        let idempotency = decode_meta(&frame.meta)
            .map_err(|reason| StoreError::DamagedLog {
                path: format!("segment {}", frame.position.segment),
                offset: frame.position.offset,
                reason,
            })?
            .map(|meta| (meta.idempotency_key, meta.record));
        pending_events += events.len();
        pending.push(CommittedFrame {
            position: frame.position,
            next: frame.next,
            events,
            idempotency,
            hash: cursor.last_hash,
        });
        if pending_events >= 16_384 {
            index_frames(index, &pending, cursor.last_seq)?;
            events_indexed += pending_events as u64;
            pending.clear();
            pending_events = 0;
        }
        Ok(())
    })?;
    events_indexed += pending_events as u64;
    index_frames(index, &pending, cursor.last_seq)?;
    index.make_durable().map_err(index_error)?;
    Ok(CaughtUp {
        tail: Tail {
            head: Head {
                seq: cursor.last_seq,
                hash: cursor.last_hash,
            },
            last_time: cursor.last_time,
        },
        events_indexed,
    })
}

/// The time of the checkpoint's event when the log confirms the checkpoint
/// (`Some(None)` for a checkpoint before any event), `None` when it does not.
fn confirm_checkpoint(
    reader: &SegmentReader,
    index: &IndexDb,
    checkpoint: &Checkpoint,
) -> Result<Option<Option<DateTime<Utc>>>, StoreError> {
    let end = reader.durable_end();
    let position = Position {
        segment: checkpoint.segment,
        offset: checkpoint.offset,
    };
    if position > end {
        return Ok(None);
    }
    if checkpoint.seq == 0 {
        return Ok((checkpoint.hash == GENESIS_HASH).then_some(None));
    }
    // The positions come from the index being checked: a read that fails
    // through them (a position inside a frame, before the first segment)
    // says the index is not this log's, not that the log is damaged. The
    // catch-up after a confirmed checkpoint reads every frame again anyway.
    match read_event(reader, index, checkpoint.seq) {
        Ok(Some(event)) if event.hash == checkpoint.hash => Ok(Some(Some(event.time))),
        Ok(_) => Ok(None),
        Err(error) => {
            tracing::warn!(%error, "reading the index's checkpoint event failed");
            Ok(None)
        }
    }
}

/// One event from the segment files, found through the sparse frame index.
fn read_event(
    reader: &SegmentReader,
    index: &IndexDb,
    seq: u64,
) -> Result<Option<Arc<Event>>, StoreError> {
    Ok(read_range(reader, index, seq, seq, 1)?.pop())
}

/// Up to `limit` events with seqs `first..=last` from the segment files.
fn read_range(
    reader: &SegmentReader,
    index: &IndexDb,
    first: u64,
    last: u64,
    limit: usize,
) -> Result<Vec<Arc<Event>>, StoreError> {
    let mut events = Vec::new();
    for_records_in_range(reader, index, first, last, limit, |seq, record| {
        let event = decode(seq, record)?;
        if event.seq != seq {
            return Err(StoreError::Corrupt {
                seq,
                reason: format!("the record says seq {}", event.seq),
            });
        }
        events.push(Arc::new(event));
        Ok(())
    })?;
    Ok(events)
}

/// Up to `limit` stored records with seqs `first..=last`, as the segment
/// files hold them (slices of the read buffers, not copies).
fn read_record_range(
    reader: &SegmentReader,
    index: &IndexDb,
    first: u64,
    last: u64,
    limit: usize,
) -> Result<Vec<Bytes>, StoreError> {
    let mut records = Vec::new();
    for_records_in_range(reader, index, first, last, limit, |_, record| {
        records.push(record.clone());
        Ok(())
    })?;
    Ok(records)
}

/// Calls `visit` with each of the first `limit` records with seqs
/// `first..=last`, in order, and its seq (from its frame's first seq).
fn for_records_in_range(
    reader: &SegmentReader,
    index: &IndexDb,
    first: u64,
    last: u64,
    limit: usize,
    mut visit: impl FnMut(u64, &Bytes) -> Result<(), StoreError>,
) -> Result<(), StoreError> {
    if first > last || limit == 0 {
        return Ok(());
    }
    let mut visited = 0;
    let mut position = match index.frame_at_or_before(first).map_err(index_error)? {
        Some(frame) => Position {
            segment: frame.segment,
            offset: frame.offset,
        },
        None => reader.segment_of_seq(first),
    };
    // Read about what the range needs: the indexed frame is at most
    // `FRAME_INDEX_EVERY_SEQS` events before `first`, and an event is a few
    // hundred bytes. A point read then reads a few KiB, not a whole buffer.
    let wanted = (last - first)
        .min(limit as u64)
        .saturating_add(1 + FRAME_INDEX_EVERY_SEQS);
    let mut read_bytes = usize::try_from(wanted.saturating_mul(512))
        .unwrap_or(usize::MAX)
        .clamp(4 << 10, 256 << 10);
    loop {
        let frames = reader
            .read_frames(position, read_bytes)
            .map_err(log_error)?;
        // Past the first read, the range goes on: read in large pieces.
        read_bytes = 256 << 10;
        let Some(tail) = frames.last() else {
            return Ok(());
        };
        position = tail.next;
        for frame in &frames {
            let frame_last = frame.first_seq + frame.records.len() as u64;
            if frame_last <= first {
                continue;
            }
            for (offset, record) in frame.records.iter().enumerate() {
                let seq = frame.first_seq + offset as u64;
                if seq < first {
                    continue;
                }
                if seq > last || visited == limit {
                    return Ok(());
                }
                visit(seq, record)?;
                visited += 1;
            }
        }
    }
}

/// Recomputes the hash chain from seq 1 up to `head`.
fn verify_chain(reader: &SegmentReader, head: Head) -> Result<VerifyReport, StoreError> {
    let mut cursor = ChainCursor::default();
    let mut first_bad = None;
    let result = for_each_frame(reader, reader.start(), |frame| {
        for (index, record) in frame.records.iter().enumerate() {
            let seq = frame.first_seq + index as u64;
            if seq > head.seq {
                return Err(StoreError::Closed);
            }
            if seq != cursor.last_seq + 1 {
                first_bad = Some(BadRecord {
                    seq: cursor.last_seq + 1,
                    reason: format!("missing: the next stored event is seq {seq}"),
                });
                return Err(StoreError::Closed);
            }
            if let Err(error) = cursor.check(seq, record) {
                first_bad = Some(BadRecord {
                    seq,
                    reason: error.to_string(),
                });
                return Err(StoreError::Closed);
            }
        }
        Ok(())
    });
    match result {
        // `Closed` only stops the walk early.
        Ok(()) | Err(StoreError::Closed) => {}
        Err(StoreError::DamagedLog {
            path,
            offset,
            reason,
        }) => {
            first_bad = Some(BadRecord {
                seq: cursor.last_seq + 1,
                reason: format!("{path} at offset {offset}: {reason}"),
            });
        }
        Err(other) => return Err(other),
    }
    if first_bad.is_none() && cursor.last_seq < head.seq {
        first_bad = Some(BadRecord {
            seq: cursor.last_seq + 1,
            reason: format!("missing: the log ends at seq {}", head.seq),
        });
    }
    Ok(VerifyReport {
        events_checked: cursor.last_seq,
        head_seq: head.seq,
        head_hash: hex::encode(head.hash),
        first_bad,
    })
}

/// The writer thread's state. See the module docs.
struct Writer {
    segments: SegmentWriter,
    /// The most bytes one frame may take.
    frame_capacity: u64,
    config: StoreConfig,
    /// The durable tail; a group's requests move a copy of it.
    tail: Tail,
    /// Every stream's durable version.
    stream_versions: HashMap<String, u64>,
    failed: Option<String>,
    shared: Arc<Shared>,
    committed: broadcast::Sender<Arc<Event>>,
    /// Bounded: the writer waits when the indexer is far behind.
    to_index: std::sync::mpsc::SyncSender<Vec<CommittedFrame>>,
}

/// What the requests of one group so far have changed, before it is durable.
#[derive(Default)]
struct GroupOverlay {
    tail: Option<Tail>,
    stream_versions: HashMap<String, u64>,
    idempotency: HashMap<String, (IdempotencyRecord, Vec<Arc<Event>>)>,
}

/// What a key was used for: its record, and the events when they are known
/// without a read (the key was used earlier in the same group).
type EarlierUse = (IdempotencyRecord, Option<Vec<Arc<Event>>>);

/// One request's place in a group.
enum Staged {
    /// Answered without writing: a duplicate, or refused.
    Answered(Result<AppendOutcome, StoreError>),
    /// To be written as one frame.
    Frame {
        sealed: Box<Sealed>,
        meta: Vec<u8>,
        hash: crate::event::Hash,
        first_seq: u64,
    },
}

impl Writer {
    fn run(mut self, mut receiver: mpsc::Receiver<WriteJob>) {
        while let Some(first) = receiver.blocking_recv() {
            let mut jobs = vec![first];
            while jobs.len() < self.config.max_group_requests {
                match receiver.try_recv() {
                    Ok(job) => jobs.push(job),
                    Err(_) => break,
                }
            }
            self.commit_group(jobs);
        }
    }

    fn commit_group(&mut self, jobs: Vec<WriteJob>) {
        let metrics = self.shared.metrics.clone();
        metrics.group_size.observe(jobs.len() as f64);
        metrics.append_requests.inc_by(jobs.len() as u64);
        if self.failed.is_none() {
            // The indexer can fail the store too.
            self.failed = self.shared.failure.lock().expect("failure lock").clone();
        }
        if let Some(reason) = &self.failed {
            for job in jobs {
                let _ = job.reply.send(Err(StoreError::Failed(reason.clone())));
            }
            return;
        }
        let started = Instant::now();
        let mut overlay = GroupOverlay::default();
        let mut staged = Vec::with_capacity(jobs.len());
        let mut replies = Vec::with_capacity(jobs.len());
        for job in jobs {
            let result = match job.work {
                Work::Append(request) => self.stage(request, &mut overlay),
                Work::Import(events) => self.stage_import(events, &mut overlay),
            };
            staged.push(result.unwrap_or_else(|error| Staged::Answered(Err(error))));
            replies.push(job.reply);
        }
        let inputs: Vec<FrameInput<'_>> = staged
            .iter()
            .filter_map(|staged| match staged {
                Staged::Frame {
                    sealed,
                    meta,
                    hash,
                    first_seq,
                } => Some(FrameInput {
                    first_seq: *first_seq,
                    records: &sealed.records,
                    meta,
                    last_hash: *hash,
                }),
                Staged::Answered(_) => None,
            })
            .collect();
        metrics
            .apply_seconds
            .observe(started.elapsed().as_secs_f64());
        let positions = if inputs.is_empty() {
            Ok(Vec::new())
        } else {
            let writing = Instant::now();
            let written = self.segments.append(&inputs);
            metrics
                .write_seconds
                .observe(writing.elapsed().as_secs_f64());
            written
        };
        drop(inputs);
        let positions = match positions {
            Ok(positions) => positions,
            Err(error) => {
                let reason = error.to_string();
                tracing::error!(error = %reason, "a group commit failed; the store stops taking appends");
                self.failed = Some(reason.clone());
                *self.shared.failure.lock().expect("failure lock") = Some(reason.clone());
                for (staged, reply) in staged.into_iter().zip(replies) {
                    // Every answer of this group but a refusal of the request's
                    // own shape may rest on frames of the group that are not
                    // on disk (a duplicate of a key set earlier in the group, a
                    // version conflict with one of its appends): unknown.
                    let answer = match staged {
                        Staged::Answered(Err(
                            error @ (StoreError::InvalidRequest(_)
                            | StoreError::EventTooLarge { .. }),
                        )) => Err(error),
                        Staged::Answered(_) | Staged::Frame { .. } => {
                            Err(StoreError::OutcomeUnknown(reason.clone()))
                        }
                    };
                    let _ = reply.send(answer);
                }
                return;
            }
        };
        if let (Some(first), Some(last)) = (positions.first(), positions.last()) {
            metrics.group_commits.inc();
            // One fdatasync per segment the group touched.
            metrics.fsyncs.inc_by(last.segment - first.segment + 1);
        }

        // Durable: move the tail and the versions, keep the events for
        // readers until they are indexed, answer, publish, index.
        let appended: usize = staged
            .iter()
            .map(|staged| match staged {
                Staged::Frame { sealed, .. } => sealed.events.len(),
                Staged::Answered(_) => 0,
            })
            .sum();
        metrics.events_appended.inc_by(appended as u64);
        let end = self.segments.end();
        let mut committed_frames = Vec::with_capacity(positions.len());
        let mut positions = positions.into_iter().peekable();
        let mut published = Vec::new();
        {
            let mut recent = self.shared.recent.lock().expect("recent lock");
            for (staged, reply) in staged.into_iter().zip(replies) {
                let answer = match staged {
                    Staged::Answered(answer) => answer,
                    Staged::Frame { sealed, hash, .. } => {
                        let position = positions.next().expect("one position per frame");
                        let next = positions.peek().copied().unwrap_or(end);
                        if let Some(last) = sealed.events.last() {
                            recent.head = Head {
                                seq: last.seq,
                                hash: last.hash,
                            };
                            self.tail = Tail {
                                head: recent.head,
                                last_time: Some(last.time),
                            };
                        }
                        // Per event: an import's frame spans streams.
                        for event in &sealed.events {
                            self.stream_versions
                                .insert(event.stream.clone(), event.version);
                        }
                        recent.events.extend(sealed.events.iter().cloned());
                        if let Some((key, record)) = &sealed.idempotency {
                            recent
                                .idempotency
                                .insert(key.clone(), (record.clone(), position));
                        }
                        published.extend(sealed.events.iter().cloned());
                        if !sealed.events.is_empty() {
                            metrics.batch_size.observe(sealed.events.len() as f64);
                        }
                        committed_frames.push(CommittedFrame {
                            position,
                            next,
                            events: sealed.events.clone(),
                            idempotency: sealed.idempotency.clone(),
                            hash,
                        });
                        Ok(AppendOutcome {
                            events: sealed.events,
                            stream_version: sealed.stream_version,
                            deduplicated: false,
                        })
                    }
                };
                let _ = reply.send(answer);
            }
        }
        metrics.head_seq.set(self.tail.head.seq as i64);
        for event in published {
            let _ = self.committed.send(event);
        }
        if !committed_frames.is_empty() && self.to_index.send(committed_frames).is_err() {
            // The indexer is gone (it failed or panicked): `Recent` would grow
            // without end, so the store stops taking appends and says why.
            let reason = "the indexer stopped; restart the daemon to rebuild the index".to_string();
            tracing::error!(%reason);
            self.failed = Some(reason.clone());
            let mut failure = self.shared.failure.lock().expect("failure lock");
            failure.get_or_insert(reason);
        }
    }

    /// A request is one frame and a frame never spans segments: one larger
    /// than a segment can hold is refused before anything is written.
    fn check_frame_fits(&self, records: &[Vec<u8>], meta: &[u8]) -> Result<(), StoreError> {
        let length = segment::frame_len(&FrameInput {
            first_seq: 1,
            records,
            meta,
            last_hash: GENESIS_HASH,
        });
        if length > self.frame_capacity {
            return Err(StoreError::InvalidRequest(format!(
                "the request is {length} bytes as one frame, more than a segment holds ({} bytes); split it",
                self.frame_capacity
            )));
        }
        Ok(())
    }

    fn stream_version(&self, stream: &str, overlay: &GroupOverlay) -> u64 {
        overlay
            .stream_versions
            .get(stream)
            .or_else(|| self.stream_versions.get(stream))
            .copied()
            .unwrap_or(0)
    }

    /// What the key answers so far: this group, the durable but unindexed
    /// frames, then the index.
    fn earlier_use(
        &self,
        key: &str,
        overlay: &GroupOverlay,
    ) -> Result<Option<EarlierUse>, StoreError> {
        if let Some((record, events)) = overlay.idempotency.get(key) {
            return Ok(Some((record.clone(), Some(events.clone()))));
        }
        if let Some((record, _)) = self
            .shared
            .recent
            .lock()
            .expect("recent lock")
            .idempotency
            .get(key)
        {
            return Ok(Some((record.clone(), None)));
        }
        Ok(lookup_indexed_key(&self.shared.index, key)?.map(|record| (record, None)))
    }

    fn stage(
        &mut self,
        request: AppendRequest,
        overlay: &mut GroupOverlay,
    ) -> Result<Staged, StoreError> {
        rules::validate_request(&request)?;
        if let Some(idempotency) = &request.idempotency {
            if let Some((record, events)) = self.earlier_use(&idempotency.key, overlay)? {
                if let Some(record) = rules::check_idempotency(&request, Some(&record))? {
                    let events = match events {
                        Some(events) => events,
                        None => read_known_range(&self.shared, record.first_seq, record.last_seq)?,
                    };
                    return Ok(Staged::Answered(Ok(AppendOutcome {
                        events,
                        stream_version: record.stream_version,
                        deduplicated: true,
                    })));
                }
            }
        }
        let current = self.stream_version(&request.stream, overlay);
        let mut tail = overlay.tail.unwrap_or(self.tail);
        let first_seq = tail.head.seq + 1;
        let sealed = rules::seal_request(
            request,
            current,
            &mut tail,
            (self.config.clock)(),
            self.config.max_record_bytes,
        )?;
        let meta = encode_meta(&sealed.idempotency);
        self.check_frame_fits(&sealed.records, &meta)?;
        overlay.tail = Some(tail);
        if !sealed.events.is_empty() {
            overlay
                .stream_versions
                .insert(sealed.stream.clone(), sealed.stream_version);
        }
        if let Some((key, record)) = &sealed.idempotency {
            overlay
                .idempotency
                .insert(key.clone(), (record.clone(), sealed.events.clone()));
        }
        Ok(Staged::Frame {
            hash: tail.head.hash,
            first_seq,
            meta,
            sealed: Box::new(sealed),
        })
    }

    fn stage_import(
        &mut self,
        events: Vec<Event>,
        overlay: &mut GroupOverlay,
    ) -> Result<Staged, StoreError> {
        let mut tail = overlay.tail.unwrap_or(self.tail);
        let first_seq = tail.head.seq + 1;
        let checked = {
            let overlay = &*overlay;
            rules::check_import(
                events,
                &mut tail,
                |stream| Ok(self.stream_version(stream, overlay)),
                self.config.max_record_bytes,
            )?
        };
        self.check_frame_fits(&checked.records, &[])?;
        if checked.events.is_empty() {
            return Ok(Staged::Answered(Ok(AppendOutcome {
                events: Vec::new(),
                stream_version: 0,
                deduplicated: false,
            })));
        }
        overlay.tail = Some(tail);
        overlay
            .stream_versions
            .extend(checked.stream_versions.clone());
        // An import may span streams: the writer's versions move per event
        // once the frame is durable (`commit_group`).
        let sealed = Sealed {
            stream: String::new(),
            events: checked.events,
            records: checked.records,
            stream_version: 0,
            idempotency: None,
        };
        Ok(Staged::Frame {
            hash: tail.head.hash,
            first_seq,
            meta: Vec::new(),
            sealed: Box::new(sealed),
        })
    }
}

fn lookup_indexed_key(index: &IndexDb, key: &str) -> Result<Option<IdempotencyRecord>, StoreError> {
    match index.idempotency(key).map_err(index_error)? {
        None => Ok(None),
        Some(bytes) => from_bincode(&bytes)
            .map(Some)
            .map_err(|error| StoreError::Corrupt {
                seq: 0,
                reason: format!("idempotency record {key:?} in the index: {error}"),
            }),
    }
}

/// Exactly the events `first..=last`, all durable: from `Recent` where it
/// holds them, from the segment files otherwise.
fn read_known_range(shared: &Shared, first: u64, last: u64) -> Result<Vec<Arc<Event>>, StoreError> {
    if first > last {
        return Ok(Vec::new());
    }
    let from_recent: Vec<Arc<Event>> = {
        let recent = shared.recent.lock().expect("recent lock");
        (first..=last).map_while(|seq| recent.event(seq)).collect()
    };
    if from_recent.len() as u64 == last - first + 1 {
        return Ok(from_recent);
    }
    let events = read_range(&shared.reader, &shared.index, first, last, usize::MAX)?;
    if events.len() as u64 != last - first + 1 {
        return Err(StoreError::Corrupt {
            seq: first + events.len() as u64,
            reason: "missing event".into(),
        });
    }
    Ok(events)
}

/// The indexer thread. See the module docs.
struct Indexer {
    shared: Arc<Shared>,
    checkpoint_seq: u64,
    #[cfg(test)]
    gate: Option<Arc<Mutex<()>>>,
}

impl Indexer {
    fn run(mut self, receiver: std::sync::mpsc::Receiver<Vec<CommittedFrame>>) {
        use std::sync::mpsc::RecvTimeoutError;
        const DURABLE_EVERY: std::time::Duration = std::time::Duration::from_secs(1);
        const BATCH_EVERY: std::time::Duration = std::time::Duration::from_millis(5);
        let mut dirty = false;
        let mut last_batch = Instant::now();
        let mut last_durable = Instant::now();
        loop {
            // About once a second, busy or quiet, what was indexed is made
            // durable, so a crash replays at most a second of the log.
            if dirty && last_durable.elapsed() >= DURABLE_EVERY {
                if let Err(error) = self.shared.index.make_durable() {
                    tracing::warn!(%error, "the index could not be made durable");
                }
                dirty = false;
                last_durable = Instant::now();
            }
            let mut frames = match receiver.recv_timeout(DURABLE_EVERY) {
                Ok(frames) => frames,
                Err(RecvTimeoutError::Timeout) => continue,
                Err(RecvTimeoutError::Disconnected) => break,
            };
            // Under load, let the groups of a few milliseconds gather into
            // one redb transaction: each transaction costs about the same
            // whatever it holds, and readers find the events in `Recent`
            // meanwhile.
            let since_last = last_batch.elapsed();
            if since_last < BATCH_EVERY {
                std::thread::sleep(BATCH_EVERY - since_last);
            }
            last_batch = Instant::now();
            while let Ok(more) = receiver.try_recv() {
                frames.extend(more);
                if frames.len() >= 65_536 {
                    break;
                }
            }
            #[cfg(test)]
            let gate = self.gate.clone();
            #[cfg(test)]
            let _held = gate.as_ref().map(|gate| gate.lock().expect("gate lock"));
            if let Err(error) = self.index(&frames) {
                // The log is whole, and a restart rebuilds the index from its
                // last checkpoint; but `Recent` would grow without end, so
                // the store stops taking appends and says why.
                let reason =
                    format!("indexing failed: {error}; restart the daemon to rebuild the index");
                tracing::error!(%reason);
                *self.shared.failure.lock().expect("failure lock") = Some(reason);
                return;
            }
            dirty = true;
        }
        if let Err(error) = self.shared.index.make_durable() {
            tracing::warn!(%error, "the index could not be made durable at close");
        }
    }

    fn index(&mut self, frames: &[CommittedFrame]) -> Result<(), StoreError> {
        let Some(checkpoint) = index_frames(&self.shared.index, frames, self.checkpoint_seq)?
        else {
            return Ok(());
        };
        self.checkpoint_seq = checkpoint.seq;
        let through = Position {
            segment: checkpoint.segment,
            offset: checkpoint.offset,
        };
        let mut recent = self.shared.recent.lock().expect("recent lock");
        while recent
            .events
            .front()
            .is_some_and(|event| event.seq <= checkpoint.seq)
        {
            recent.events.pop_front();
        }
        recent
            .idempotency
            .retain(|_, (_, position)| *position >= through);
        Ok(())
    }
}

#[async_trait]
impl EventLog for LogStore {
    async fn append(&self, request: AppendRequest) -> Result<AppendOutcome, StoreError> {
        self.submit(Work::Append(request)).await
    }

    async fn read(&self, after: u64, limit: usize) -> Result<Vec<Arc<Event>>, StoreError> {
        let first = after.saturating_add(1);
        if let Some(events) = self.shared.recent_from(first, limit) {
            return Ok(events);
        }
        let head = self.head().seq;
        self.blocking(move |shared| read_range(&shared.reader, &shared.index, first, head, limit))
            .await
    }

    async fn read_records(&self, after: u64, limit: usize) -> Result<Vec<Bytes>, StoreError> {
        let first = after.saturating_add(1);
        if let Some(events) = self.shared.recent_from(first, limit) {
            return Ok(events
                .iter()
                .map(|event| Bytes::from(event.encode_record()))
                .collect());
        }
        let head = self.head().seq;
        self.blocking(move |shared| {
            read_record_range(&shared.reader, &shared.index, first, head, limit)
        })
        .await
    }

    async fn read_stream(
        &self,
        stream: &str,
        after_version: u64,
        limit: usize,
    ) -> Result<Vec<Arc<Event>>, StoreError> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let stream = stream.to_string();
        self.blocking(move |shared| {
            // Recent first, then the index: together they hold every
            // durable event (see the module docs).
            let recent: Vec<Arc<Event>> = {
                let recent = shared.recent.lock().expect("recent lock");
                recent
                    .events
                    .iter()
                    .filter(|event| event.stream == stream && event.version > after_version)
                    .cloned()
                    .collect()
            };
            let seqs = shared
                .index
                .stream_seqs(&stream, after_version, limit)
                .map_err(index_error)?;
            let mut events = Vec::with_capacity(seqs.len());
            for run in contiguous_runs(&seqs) {
                let (first, last) = run;
                events.extend(
                    read_range(&shared.reader, &shared.index, first, last, usize::MAX)?
                        .into_iter()
                        .filter(|event| event.stream == stream),
                );
            }
            let indexed_through = events.last().map_or(after_version, |event| event.version);
            events.extend(
                recent
                    .into_iter()
                    .filter(|event| event.version > indexed_through),
            );
            events.truncate(limit);
            Ok(events)
        })
        .await
    }

    async fn stream_version(&self, stream: &str) -> Result<u64, StoreError> {
        let stream = stream.to_string();
        self.blocking(move |shared| {
            let recent = {
                let recent = shared.recent.lock().expect("recent lock");
                recent
                    .events
                    .iter()
                    .rev()
                    .find(|event| event.stream == stream)
                    .map(|event| event.version)
            };
            match recent {
                Some(version) => Ok(version),
                None => shared.index.stream_version(&stream).map_err(index_error),
            }
        })
        .await
    }

    async fn idempotency_record(&self, key: &str) -> Result<Option<IdempotencyRecord>, StoreError> {
        let key = key.to_string();
        self.blocking(move |shared| {
            let recent = shared
                .recent
                .lock()
                .expect("recent lock")
                .idempotency
                .get(&key)
                .map(|(record, _)| record.clone());
            match recent {
                Some(record) => Ok(Some(record)),
                None => lookup_indexed_key(&shared.index, &key),
            }
        })
        .await
    }

    fn head(&self) -> Head {
        self.shared.recent.lock().expect("recent lock").head
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

/// Splits ascending seqs into runs of consecutive ones, `(first, last)`.
fn contiguous_runs(seqs: &[u64]) -> Vec<(u64, u64)> {
    let mut runs: Vec<(u64, u64)> = Vec::new();
    for &seq in seqs {
        match runs.last_mut() {
            Some((_, last)) if *last + 1 == seq => *last = seq,
            _ => runs.push((seq, seq)),
        }
    }
    runs
}

/// Merges the index's answer (all at or before its checkpoint) with the
/// matching recent seqs, after `after`, up to `limit`.
fn merge_seqs(indexed: Vec<u64>, recent: Vec<u64>, after: u64, limit: usize) -> Vec<u64> {
    let mut seqs = indexed;
    let last = seqs.last().copied().unwrap_or(after);
    seqs.extend(recent.into_iter().filter(|seq| *seq > last && *seq > after));
    seqs.truncate(limit);
    seqs
}

#[async_trait]
impl EventIndex for LogStore {
    async fn seq_of_id(&self, id: Uuid) -> Result<Option<u64>, StoreError> {
        self.blocking(move |shared| {
            let recent = shared
                .recent
                .lock()
                .expect("recent lock")
                .events
                .iter()
                .find(|event| event.id == id)
                .map(|event| event.seq);
            match recent {
                Some(seq) => Ok(Some(seq)),
                None => shared.index.seq_of_id(id).map_err(index_error),
            }
        })
        .await
    }

    async fn seq_at_time(&self, time: DateTime<Utc>) -> Result<u64, StoreError> {
        self.blocking(move |shared| {
            let recent = shared
                .recent
                .lock()
                .expect("recent lock")
                .events
                .iter()
                .rev()
                .find(|event| event.time <= time)
                .map(|event| event.seq);
            let indexed = shared
                .index
                .seq_at_time(time.timestamp_micros())
                .map_err(index_error)?;
            Ok(recent.map_or(indexed, |seq| seq.max(indexed)))
        })
        .await
    }

    async fn caused_by(
        &self,
        cause_seq: u64,
        after: u64,
        limit: usize,
    ) -> Result<Vec<u64>, StoreError> {
        self.blocking(move |shared| {
            let recent = shared.recent_seqs(|event| {
                event.cause.causing_event().map(|(seq, _)| seq) == Some(cause_seq)
            });
            let indexed = shared
                .index
                .caused_by(cause_seq, after, limit)
                .map_err(index_error)?;
            Ok(merge_seqs(indexed, recent, after, limit))
        })
        .await
    }

    async fn correlated(
        &self,
        correlation: Uuid,
        after: u64,
        limit: usize,
    ) -> Result<Vec<u64>, StoreError> {
        if correlation.is_nil() {
            return Ok(Vec::new());
        }
        self.blocking(move |shared| {
            let recent = shared.recent_seqs(|event| event.correlation == correlation);
            let indexed = shared
                .index
                .correlated(correlation, after, limit)
                .map_err(index_error)?;
            Ok(merge_seqs(indexed, recent, after, limit))
        })
        .await
    }
}

/// The part under which a snapshot records the chain hash of the event it
/// was taken at; callers never see it.
const CHAIN_PART: &str = "\u{0}chain";

impl Shared {
    /// Up to `limit` events from seq `first` on, when `first` is among the
    /// durable events not yet indexed (or past the head: then none);
    /// `None` when the range starts in the files.
    fn recent_from(&self, first: u64, limit: usize) -> Option<Vec<Arc<Event>>> {
        let recent = self.recent.lock().expect("recent lock");
        (first >= recent.first_seq()).then(|| {
            (first..=recent.head.seq)
                .take(limit)
                .filter_map(|seq| recent.event(seq))
                .collect()
        })
    }

    /// The seqs of the durable, not yet indexed events that `matches`.
    fn recent_seqs(&self, matches: impl Fn(&Event) -> bool) -> Vec<u64> {
        self.recent
            .lock()
            .expect("recent lock")
            .events
            .iter()
            .filter(|event| matches(event))
            .map(|event| event.seq)
            .collect()
    }

    /// Whether the snapshot at `seq` was taken on this log: the event at its
    /// seq still has the chain hash the snapshot recorded.
    fn snapshot_matches_log(&self, seq: u64) -> Result<bool, StoreError> {
        let Some(recorded) = self
            .index
            .snapshot_part(seq, CHAIN_PART)
            .map_err(index_error)?
        else {
            return Ok(false);
        };
        let head = self.recent.lock().expect("recent lock").head;
        if seq > head.seq {
            return Ok(false);
        }
        let hash = if seq == 0 {
            GENESIS_HASH
        } else {
            match read_known_range(self, seq, seq) {
                Ok(events) => events[0].hash,
                Err(StoreError::Corrupt { .. }) => return Ok(false),
                Err(other) => return Err(other),
            }
        };
        Ok(recorded == hash)
    }
}

#[async_trait]
impl SnapshotStore for LogStore {
    async fn save_snapshot(
        &self,
        seq: u64,
        parts: Vec<(String, Vec<u8>)>,
    ) -> Result<(), StoreError> {
        self.blocking(move |shared| {
            let hash = if seq == 0 {
                GENESIS_HASH
            } else {
                read_known_range(shared, seq, seq)?[0].hash
            };
            let mut parts = parts;
            parts.push((CHAIN_PART.to_string(), hash.to_vec()));
            shared.index.save_snapshot(seq, &parts).map_err(index_error)
        })
        .await
    }

    async fn snapshot_seqs(&self) -> Result<Vec<u64>, StoreError> {
        self.blocking(|shared| {
            let mut seqs = Vec::new();
            for seq in shared.index.snapshot_seqs().map_err(index_error)? {
                if shared.snapshot_matches_log(seq)? {
                    seqs.push(seq);
                } else {
                    tracing::warn!(
                        seq,
                        "a snapshot does not match the log's chain at its seq; it is ignored"
                    );
                }
            }
            Ok(seqs)
        })
        .await
    }

    async fn snapshot_part(&self, seq: u64, part: &str) -> Result<Option<Vec<u8>>, StoreError> {
        if part == CHAIN_PART {
            return Ok(None);
        }
        let part = part.to_string();
        self.blocking(move |shared| {
            if !shared.snapshot_matches_log(seq)? {
                return Ok(None);
            }
            shared.index.snapshot_part(seq, &part).map_err(index_error)
        })
        .await
    }

    async fn snapshot_parts(&self, seq: u64) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        self.blocking(move |shared| {
            if !shared.snapshot_matches_log(seq)? {
                return Ok(Vec::new());
            }
            let mut parts = shared.index.snapshot_parts(seq).map_err(index_error)?;
            parts.retain(|(name, _)| name != CHAIN_PART);
            Ok(parts)
        })
        .await
    }
}

#[async_trait]
impl StoreAdmin for LogStore {
    async fn verify(&self) -> Result<VerifyReport, StoreError> {
        let head = self.head();
        self.blocking(move |shared| verify_chain(&shared.reader, head))
            .await
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

    fn metrics(&self) -> &StoreMetrics {
        &self.shared.metrics
    }

    async fn close(&self) {
        let sender = self.sender.lock().expect("sender lock").take();
        drop(sender);
        let writer = self.writer.lock().expect("writer lock").take();
        let indexer = self.indexer.lock().expect("indexer lock").take();
        // The writer finishes every job already queued, then exits when the
        // last sender is gone; its channel to the indexer closes with it, and
        // the indexer makes the index durable before it exits.
        let _ = tokio::task::spawn_blocking(move || {
            if let Some(writer) = writer {
                let _ = writer.join();
            }
            if let Some(indexer) = indexer {
                let _ = indexer.join();
            }
        })
        .await;
        self.committed.lock().expect("committed lock").take();
    }
}

#[cfg(test)]
impl LogStore {
    /// Every row of the derived indexes, for comparing an index built as the
    /// log grew with one rebuilt from it.
    /// Waits (up to ten seconds) until the indexer has caught up with the
    /// durable end of the log.
    pub(crate) async fn index_dump(&self) -> Result<super::index::IndexDump, StoreError> {
        self.blocking(|shared| {
            let deadline = Instant::now() + std::time::Duration::from_secs(10);
            loop {
                let dump = shared.index.dump().map_err(index_error)?;
                let indexed_through = dump.checkpoint.map(|checkpoint| Position {
                    segment: checkpoint.segment,
                    offset: checkpoint.offset,
                });
                if indexed_through >= Some(shared.reader.durable_end()) || Instant::now() > deadline
                {
                    return Ok(dump);
                }
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::disk::sim::SimDisk;

    /// The embedded store on the real file system.
    struct LogOnRealDisk {
        dir: tempfile::TempDir,
    }

    impl crate::store::contract_tests::Backend for LogOnRealDisk {
        fn new() -> Self {
            LogOnRealDisk {
                dir: tempfile::tempdir().unwrap(),
            }
        }

        fn open(&self, clock: crate::store::Clock) -> Arc<dyn crate::store::EventStore> {
            let mut store = StoreConfig::new(self.dir.path());
            store.clock = clock;
            Arc::new(LogStore::open(LogStoreConfig::new(store)).unwrap())
        }
    }

    mod real_disk {
        use super::*;
        crate::store::contract_tests::contract_suite!(LogOnRealDisk);
    }

    /// The embedded store on the simulated disk, with small segments so
    /// the suite's appends roll several of them.
    struct LogOnSimDisk {
        disk: SimDisk,
        index: crate::store::index::MemoryIndexFile,
    }

    impl crate::store::contract_tests::Backend for LogOnSimDisk {
        fn new() -> Self {
            LogOnSimDisk {
                disk: SimDisk::new(42),
                index: Default::default(),
            }
        }

        fn open(&self, clock: crate::store::Clock) -> Arc<dyn crate::store::EventStore> {
            let mut store = StoreConfig::new("/data");
            store.clock = clock;
            Arc::new(
                LogStore::open(LogStoreConfig {
                    segment_bytes: 64 * 1024,
                    disk: Arc::new(self.disk.clone()),
                    index: IndexLocation::Memory(self.index.clone()),
                    lock_directory: false,
                    verify_in_background: false,
                    ..LogStoreConfig::new(store)
                })
                .unwrap(),
            )
        }
    }

    mod sim_disk {
        use super::*;
        crate::store::contract_tests::contract_suite!(LogOnSimDisk);
    }

    /// Holds `gate` on a thread of its own until the returned sender sends
    /// (or is dropped).
    fn hold(gate: Arc<Mutex<()>>) -> std::sync::mpsc::Sender<()> {
        let (release, released) = std::sync::mpsc::channel::<()>();
        let (locked, is_locked) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _held = gate.lock().unwrap();
            locked.send(()).unwrap();
            let _ = released.recv();
        });
        is_locked.recv().unwrap();
        release
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_indexer_far_behind_makes_the_writer_wait_and_loses_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let gate = Arc::new(Mutex::new(()));
        let store = Arc::new(
            LogStore::open(LogStoreConfig {
                verify_in_background: false,
                index_queue_groups: 2,
                index_gate: Some(gate.clone()),
                ..LogStoreConfig::new(StoreConfig::new(dir.path()))
            })
            .unwrap(),
        );
        let release = hold(gate);
        // One append at a time, so each is a group of its own. With the
        // indexer stopped, the writer acknowledges the groups the queue
        // holds (and the one the indexer took, and the one it is handing
        // over), then waits: an unbounded queue would take all 20.
        let mut acknowledged = 0usize;
        let mut waiting = None;
        for i in 0..20 {
            let mut append = tokio::spawn({
                let store = store.clone();
                async move {
                    let text = i.to_string();
                    store
                        .append(crate::store::test_support::request(
                            "s",
                            crate::store::ExpectedVersion::Any,
                            &[&text],
                        ))
                        .await
                }
            });
            match tokio::time::timeout(std::time::Duration::from_millis(500), &mut append).await {
                Ok(answer) => {
                    answer.unwrap().unwrap();
                    acknowledged += 1;
                }
                Err(_) => {
                    waiting = Some(append);
                    break;
                }
            }
        }
        let waiting = waiting.expect("the writer waits for an indexer 2 groups behind");
        assert!(
            (1..=6).contains(&acknowledged),
            "{acknowledged} appends acknowledged"
        );
        assert!(store.shared.recent.lock().unwrap().events.len() <= acknowledged);
        // The indexer goes on: the waiting append is acknowledged, and every
        // event is there.
        release.send(()).unwrap();
        waiting.await.unwrap().unwrap();
        let events = store.read(0, 100).await.unwrap();
        assert_eq!(events.len(), acknowledged + 1);
        store.close().await;
    }
}
