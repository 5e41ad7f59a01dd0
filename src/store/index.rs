//! Derived indexes over the event log, kept in one redb file.
//!
//! The event log's segment files are the source of truth. Everything in this
//! file is derived from them: the writer applies one [`IndexBatch`] per group
//! of acknowledged log records, behind the acknowledgement, and the whole
//! file can be deleted and rebuilt from the log at any time. The only rows
//! that are not derived from the log are the snapshots, which are derived
//! from the projections and can be rebuilt by replaying the log as well.
//!
//! The module knows plain index entries only ([`IndexEntry`]): it does not
//! know Cairn's event type, payloads, clusters or manifests.
//!
//! # Durability and crashes
//!
//! [`IndexDb::apply`] commits with [`redb::Durability::None`]: the batch is
//! visible to every reader of this process at once, but nothing is fsynced
//! and the commit slot on disk is not switched to it. redb records a
//! non-durable commit in its in-memory copy of the file header only, and a
//! non-durable commit frees no page that the last durable commit uses, so the
//! last durable commit stays whole on disk whatever happens to the pages
//! written after it (redb 4.6.0: "Non-durable commits" in `docs/design.md`;
//! `WriteTransaction::non_durable_commit` in `src/transactions.rs` and
//! `TransactionalMemory::non_durable_commit` in
//! `src/tree_store/page_store/page_manager.rs`; the doc of
//! `Durability::None`: "will not be persisted to disk unless followed by a
//! commit with `Durability::Immediate`").
//!
//! [`IndexDb::make_durable`] commits an empty transaction with
//! [`redb::Durability::Immediate`] and quick-repair: that makes every earlier
//! non-durable commit durable at once (one commit for many batches) and
//! records the page allocator's state, so that an open after a crash need
//! not rebuild it by walking the whole file (when `verify_on_open` is off).
//! [`IndexDb::save_snapshot`] and [`IndexDb::clear_indexes`] commit with
//! `Immediate` too, which makes the batches before them durable as well.
//! [`IndexDb::close`], and dropping an [`IndexDb`], closes redb, whose close
//! makes a durable commit of its own, so a clean shutdown loses nothing even
//! without a last `make_durable`.
//!
//! What a crash (the process killed, or the machine losing power) can lose is
//! every batch applied since the last durable commit, and nothing else: redb
//! reopens the file at its last durable commit, which is whole and
//! consistent, and that commit holds the checkpoint row written by the same
//! transaction as the last batch in it. So after a crash
//! [`IndexDb::checkpoint`] describes exactly what the tables hold, never more
//! and never less, and the tables hold every batch up to it.
//!
//! That loss is safe because the index is behind the log: the writer applies
//! a batch only after the log records it describes are durable, so every
//! batch that a crash takes from the index is still in the log, and the
//! writer replays the log from the checkpoint's position to apply it again.
//! The one rule for the caller is that order: never apply (and so never make
//! durable, nor save a snapshot over) index entries whose log records are
//! not durable yet, or a crash could leave the index ahead of the log.
//!
//! The pages that non-durable commits replace stay reserved for the last
//! durable commit until the next one, so the file holds free pages in
//! proportion to the pages the batches between two durable commits touched.
//! Calling `make_durable` every few thousand events or every second or so
//! keeps that small (see `tools/index_size.rs`).
//!
//! # Damage
//!
//! [`IndexDb::open`] answers [`IndexError::Damaged`] for a file that redb
//! cannot open (not a redb file, an unreadable header, an older redb file
//! format), for a file without a format-version row or with an unknown one,
//! and for a file that lacks one of the tables below or has one with other
//! key or value types. The caller then deletes the file and rebuilds it from
//! the log. [`IndexError::InUse`] is not damage: another `IndexDb` has the
//! file open.
//!
//! redb trusts a file that it closed cleanly: a plain open verifies no page
//! checksum, so bytes overwritten in a page that a table uses are read back
//! as if they were rows, and a page whose structure is overwritten can make
//! redb panic on the read. [`IndexConfig::verify_on_open`], on by default,
//! makes the open verify the checksum of every page in use (redb's
//! `Builder::set_check_integrity_on_open`), which reports such a file as
//! `Corrupted`, here `Damaged`. Bytes overwritten in a free page do no harm
//! and are not reported. Every redb `Corrupted` error of any later call maps
//! to `Damaged` too.
//!
//! # Layout
//!
//! Integers are big-endian and fixed-width, so that redb's byte-wise order of
//! fixed-size byte arrays (`[u8; N]`, compared element by element) and of
//! byte strings (`&[u8]`, compared as slices) is the numeric order. A time is
//! the signed microseconds since 1970 with its sign bit flipped, written as a
//! big-endian `u64`, so that earlier times sort first, before 1970 too. A uuid
//! is its 16 bytes in RFC 4122 order.
//!
//! Byte ranges are half-open (`0..8` is bytes 0 to 7). `&str` and `&[u8]`
//! keys and values are stored by redb as their bytes, variable-length; every
//! other key and value is a fixed-size byte array, and `()` is zero bytes.
//!
//! | table             | key                                                   | value                                              | rows |
//! |-------------------|-------------------------------------------------------|----------------------------------------------------|------|
//! | `meta`            | `&str`: the row's name                                | `&[u8]`: see below                                 | 1 or 2 |
//! | `event_ids`       | `[u8; 16]`: `0..16` event id                          | `[u8; 8]`: `0..8` seq                              | one per event |
//! | `event_times`     | `[u8; 8]`: `0..8` time                                | `[u8; 8]`: `0..8` the largest seq with that time   | one per distinct time |
//! | `causes`          | `[u8; 16]`: `0..8` causing seq, `8..16` seq           | `()`                                               | one per event with a cause |
//! | `correlations`    | `[u8; 24]`: `0..16` correlation id, `16..24` seq      | `()`                                               | one per event with a correlation |
//! | `streams`         | `&str`: the stream's name                             | `[u8; 12]`: `0..4` stream number (`u32`), `4..12` last version | one per stream |
//! | `stream_events`   | `[u8; 12]`: `0..4` stream number (`u32`), `4..12` version | `[u8; 8]`: `0..8` seq                          | one per event |
//! | `idempotency`     | `&str`: the idempotency key                           | `&[u8]`: the caller's record, opaque               | one per key |
//! | `frames`          | `[u8; 8]`: `0..8` the frame's first seq               | `[u8; 16]`: `0..8` segment, `8..16` offset         | one per frame position |
//! | `snapshots`       | `[u8; 8]`: `0..8` seq                                 | `()`                                               | one per snapshot |
//! | `snapshot_parts`  | `&[u8]`: `0..8` seq, `8..` the part's name (UTF-8)    | `&[u8]`: `0..4` the part's length (`u32`, little-endian), `4..` the part, LZ4-compressed (block format) | one per part |
//!
//! The rows of `meta`:
//!
//! - `format_version`: a `u32`, big-endian (4 bytes). [`FORMAT_VERSION`] is
//!   the only value this build reads; bump it whenever any encoding here
//!   changes, and every existing file opens as `Damaged` and is rebuilt.
//! - `checkpoint`: 56 bytes: `0..8` the last indexed seq, `8..40` its chain
//!   hash, `40..48` the segment and `48..56` the offset just past the last
//!   indexed frame. Absent while nothing is indexed.
//!
//! A stream's number is the count of streams indexed before it: the first
//! stream of the log is 0, the next new one 1, and so on, so a rebuild from
//! the log numbers them the same. `stream_events` keys carry the 4-byte
//! number instead of the name, which keeps them fixed-width and 12 bytes
//! long; the versions of one stream are one contiguous key range.
//!
//! A part name in `snapshot_parts` follows a fixed-width seq, so the parts of
//! one snapshot are the keys that start with its 8 bytes, in the byte order
//! of their names. A snapshot is saved in one transaction, marker and parts
//! together, so it is whole or absent.
//!
//! Every table but `snapshots` and `snapshot_parts` is derived from the log:
//! [`IndexDb::clear_indexes`] empties them, and [`IndexDb::dump`] lists them.
//!
//! Measured with `cargo run --release --example index-size`
//! (`tools/index_size.rs`: 200,000 synthetic events with random ids): the tables take about 101 bytes per event in pages in use, and the
//! file about 147 bytes per event on disk with a durable commit every 1,000
//! events.

use std::collections::hash_map::Entry;
use std::collections::{HashMap, HashSet};
use std::fmt;
use std::path::{Path, PathBuf};

use redb::{
    Database, Durability, ReadTransaction, ReadableDatabase, ReadableTable, ReadableTableMetadata,
    TableDefinition, TableHandle, WriteTransaction,
};
use uuid::Uuid;

/// The layout version this build reads and writes.
pub const FORMAT_VERSION: u32 = 2;

/// The longest snapshot part a stored length may claim; a damaged length
/// must not make a read allocate gigabytes.
const MAX_SNAPSHOT_PART_BYTES: usize = 256 << 20;

/// A snapshot part as `snapshot_parts` stores it: its length, then LZ4.
fn pack_snapshot_part(part: &[u8]) -> Vec<u8> {
    lz4_flex::block::compress_prepend_size(part)
}

/// The part that `pack_snapshot_part` stored; `Damaged` when the bytes are
/// not what it writes.
fn unpack_snapshot_part(seq: u64, name: &str, stored: &[u8]) -> Result<Vec<u8>, IndexError> {
    let damaged =
        |why: String| IndexError::Damaged(format!("the part {name:?} of snapshot {seq}: {why}"));
    let (length, compressed) = stored
        .split_first_chunk::<4>()
        .ok_or_else(|| damaged(format!("{} bytes, too short for its length", stored.len())))?;
    let length = u32::from_le_bytes(*length) as usize;
    if length > MAX_SNAPSHOT_PART_BYTES {
        return Err(damaged(format!("a length of {length} bytes")));
    }
    let part = lz4_flex::block::decompress(compressed, length)
        .map_err(|error| damaged(error.to_string()))?;
    // The length is an upper bound to the decoder; it must be exact here.
    if part.len() != length {
        return Err(damaged(format!(
            "{} bytes where its length says {length}",
            part.len()
        )));
    }
    Ok(part)
}

const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
const EVENT_IDS: TableDefinition<[u8; 16], [u8; 8]> = TableDefinition::new("event_ids");
const EVENT_TIMES: TableDefinition<[u8; 8], [u8; 8]> = TableDefinition::new("event_times");
const CAUSES: TableDefinition<[u8; 16], ()> = TableDefinition::new("causes");
const CORRELATIONS: TableDefinition<[u8; 24], ()> = TableDefinition::new("correlations");
const STREAMS: TableDefinition<&str, [u8; 12]> = TableDefinition::new("streams");
const STREAM_EVENTS: TableDefinition<[u8; 12], [u8; 8]> = TableDefinition::new("stream_events");
const IDEMPOTENCY: TableDefinition<&str, &[u8]> = TableDefinition::new("idempotency");
const FRAMES: TableDefinition<[u8; 8], [u8; 16]> = TableDefinition::new("frames");
const SNAPSHOTS: TableDefinition<[u8; 8], ()> = TableDefinition::new("snapshots");
const SNAPSHOT_PARTS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("snapshot_parts");

/// The names of every table, so that open can check that all are present.
const TABLE_NAMES: [&str; 11] = [
    "meta",
    "event_ids",
    "event_times",
    "causes",
    "correlations",
    "streams",
    "stream_events",
    "idempotency",
    "frames",
    "snapshots",
    "snapshot_parts",
];

const FORMAT_VERSION_ROW: &str = "format_version";
const CHECKPOINT_ROW: &str = "checkpoint";
const CHECKPOINT_BYTES: usize = 56;

/// Errors of the index, by what the caller can do about them.
#[derive(Debug, thiserror::Error)]
pub enum IndexError {
    /// The file is not a usable index: delete it and rebuild from the log.
    #[error("the index is damaged: {0}")]
    Damaged(String),
    /// Reading or writing the file failed; the file may be fine.
    #[error("index storage I/O: {0}")]
    Io(String),
    /// Another `IndexDb` (in this process or another one) has the file open.
    #[error("the index file {0} is already open")]
    InUse(String),
    /// Deterministic: the request itself is wrong (out of order, a gap, a
    /// time that goes back, a duplicate snapshot part, a value too large).
    #[error("invalid index request: {0}")]
    InvalidRequest(String),
}

/// Attaches what was being done to a redb error, and sorts it into an
/// [`IndexError`].
trait Context<T> {
    fn context(self, what: &str) -> Result<T, IndexError>;

    /// `context`, with the text made only on an error.
    fn with_context(self, what: impl FnOnce() -> String) -> Result<T, IndexError>;
}

impl<T, E: Into<redb::Error>> Context<T> for Result<T, E> {
    fn context(self, what: &str) -> Result<T, IndexError> {
        self.map_err(|error| classify(what, error.into()))
    }

    fn with_context(self, what: impl FnOnce() -> String) -> Result<T, IndexError> {
        self.map_err(|error| classify(&what(), error.into()))
    }
}

/// Sorts a redb error by what the caller can do about it: damage means
/// rebuild, a wrong request is the caller's, everything else is I/O.
fn classify(what: &str, error: redb::Error) -> IndexError {
    match error {
        redb::Error::Corrupted(reason) => IndexError::Damaged(format!("{what}: {reason}")),
        redb::Error::UpgradeRequired(version) => IndexError::Damaged(format!(
            "{what}: the file has redb file format {version}, which this redb does not read"
        )),
        error @ (redb::Error::TableTypeMismatch { .. }
        | redb::Error::TableIsMultimap(_)
        | redb::Error::TableIsNotMultimap(_)
        | redb::Error::TypeDefinitionChanged { .. }
        | redb::Error::TableDoesNotExist(_)) => {
            IndexError::Damaged(format!("{what}: unexpected table layout: {error}"))
        }
        // redb reports a file that is not a redb database at all (a wrong
        // magic number) as an I/O error of kind InvalidData.
        redb::Error::Io(error) if error.kind() == std::io::ErrorKind::InvalidData => {
            IndexError::Damaged(format!("{what}: {error}"))
        }
        redb::Error::DatabaseAlreadyOpen => IndexError::InUse(what.to_string()),
        error @ redb::Error::ValueTooLarge(_) => {
            IndexError::InvalidRequest(format!("{what}: {error}"))
        }
        error => IndexError::Io(format!("{what}: {error}")),
    }
}

/// How to open the index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IndexConfig {
    /// Memory redb may use to cache pages of the file.
    pub cache_bytes: usize,
    /// Verify the checksum of every page in use at open (redb's
    /// `set_check_integrity_on_open`). This finds bytes damaged in a file
    /// that redb closed cleanly, which a plain open trusts: reads would then
    /// return wrong rows or panic inside redb. It costs one read of the
    /// file's pages in use at each open (about 20 ms for the 20 MB of
    /// 200,000 events, warm). On by default.
    pub verify_on_open: bool,
}

impl Default for IndexConfig {
    fn default() -> IndexConfig {
        IndexConfig {
            cache_bytes: 64 * 1024 * 1024,
            verify_on_open: true,
        }
    }
}

/// One event's index entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IndexEntry<'a> {
    /// The event's place in the log, from 1, without gaps.
    pub seq: u64,
    pub id: Uuid,
    pub stream: &'a str,
    /// The event's place in its stream, from 1.
    pub version: u64,
    /// Microseconds since 1970.
    pub time_micros: i64,
    /// The seq of the event that caused this one, if any.
    pub causing_seq: Option<u64>,
    pub correlation: Option<Uuid>,
}

/// Where a frame of the log starts. The log records one every few KiB, plus
/// the last frame of each batch, so the index is sparse: a reader looks up
/// the frame at or before the seq it wants and reads forward from there.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct FramePosition {
    pub first_seq: u64,
    pub segment: u64,
    pub offset: u64,
}

/// What the index is built through: the last seq, its chain hash, and the
/// position just past the last indexed frame, where a replay starts reading.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Checkpoint {
    pub seq: u64,
    pub hash: [u8; 32],
    pub segment: u64,
    pub offset: u64,
}

/// Everything one group of log records adds to the index, applied in one
/// transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IndexBatch<'a> {
    /// The events, in seq order, continuing the checkpoint's seq without a
    /// gap.
    pub events: Vec<IndexEntry<'a>>,
    /// Idempotency keys with the caller's opaque record for each; a key
    /// given again replaces its record.
    pub idempotency: Vec<(&'a str, &'a [u8])>,
    /// Where the batch's frames start. When a first seq already has a
    /// position, the earlier position stays.
    pub frames: Vec<FramePosition>,
    /// The checkpoint after this batch: its seq is the last event's seq (the
    /// previous checkpoint's seq when the batch has no events).
    pub checkpoint: Checkpoint,
}

/// Every row of every derived table, decoded and sorted, so that two indexes
/// can be compared with `==`. Snapshots are not part of it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IndexDump {
    pub checkpoint: Option<Checkpoint>,
    /// (id, seq), by id.
    pub event_ids: Vec<(Uuid, u64)>,
    /// (time, largest seq with that time), by time.
    pub event_times: Vec<(i64, u64)>,
    /// (causing seq, seq).
    pub causes: Vec<(u64, u64)>,
    /// (correlation, seq).
    pub correlations: Vec<(Uuid, u64)>,
    /// (stream, stream number, last version), by stream.
    pub streams: Vec<(String, u32, u64)>,
    /// (stream number, version, seq).
    pub stream_events: Vec<(u32, u64, u64)>,
    /// (key, record).
    pub idempotency: Vec<(String, Vec<u8>)>,
    pub frames: Vec<FramePosition>,
}

/// The size of one table, for measurements and metrics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableSize {
    pub table: &'static str,
    pub rows: u64,
    /// Bytes of keys and values in leaf pages.
    pub stored_bytes: u64,
    /// Bytes of page headers, offsets and branch pages.
    pub metadata_bytes: u64,
    /// Bytes of pages that hold nothing.
    pub fragmented_bytes: u64,
}

/// The index file. Send and Sync: any number of threads may read while one
/// applies; a read sees whole batches only.
pub struct IndexDb {
    db: Database,
    path: PathBuf,
}

impl fmt::Debug for IndexDb {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IndexDb").field("path", &self.path).finish()
    }
}

fn be_u64(bytes: &[u8]) -> u64 {
    let mut array = [0; 8];
    array.copy_from_slice(&bytes[..8]);
    u64::from_be_bytes(array)
}

fn time_key(time_micros: i64) -> [u8; 8] {
    ((time_micros as u64) ^ (1 << 63)).to_be_bytes()
}

fn time_from_key(key: [u8; 8]) -> i64 {
    (u64::from_be_bytes(key) ^ (1 << 63)) as i64
}

fn pair_key(first: u64, second: u64) -> [u8; 16] {
    let mut key = [0; 16];
    key[..8].copy_from_slice(&first.to_be_bytes());
    key[8..].copy_from_slice(&second.to_be_bytes());
    key
}

fn correlation_key(correlation: Uuid, seq: u64) -> [u8; 24] {
    let mut key = [0; 24];
    key[..16].copy_from_slice(correlation.as_bytes());
    key[16..].copy_from_slice(&seq.to_be_bytes());
    key
}

/// A stream's row in `streams`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct StreamRow {
    number: u32,
    version: u64,
}

impl StreamRow {
    fn encode(&self) -> [u8; 12] {
        let mut bytes = [0; 12];
        bytes[..4].copy_from_slice(&self.number.to_be_bytes());
        bytes[4..].copy_from_slice(&self.version.to_be_bytes());
        bytes
    }

    fn decode(bytes: [u8; 12]) -> StreamRow {
        let mut number = [0; 4];
        number.copy_from_slice(&bytes[..4]);
        StreamRow {
            number: u32::from_be_bytes(number),
            version: be_u64(&bytes[4..]),
        }
    }
}

fn stream_event_key(number: u32, version: u64) -> [u8; 12] {
    StreamRow { number, version }.encode()
}

fn frame_value(frame: &FramePosition) -> [u8; 16] {
    pair_key(frame.segment, frame.offset)
}

fn frame_from_row(key: [u8; 8], value: [u8; 16]) -> FramePosition {
    FramePosition {
        first_seq: u64::from_be_bytes(key),
        segment: be_u64(&value[..8]),
        offset: be_u64(&value[8..]),
    }
}

fn encode_checkpoint(checkpoint: &Checkpoint) -> [u8; CHECKPOINT_BYTES] {
    let mut bytes = [0; CHECKPOINT_BYTES];
    bytes[..8].copy_from_slice(&checkpoint.seq.to_be_bytes());
    bytes[8..40].copy_from_slice(&checkpoint.hash);
    bytes[40..48].copy_from_slice(&checkpoint.segment.to_be_bytes());
    bytes[48..].copy_from_slice(&checkpoint.offset.to_be_bytes());
    bytes
}

fn decode_checkpoint(bytes: &[u8]) -> Result<Checkpoint, IndexError> {
    if bytes.len() != CHECKPOINT_BYTES {
        return Err(IndexError::Damaged(format!(
            "the checkpoint row has {} bytes, not {CHECKPOINT_BYTES}",
            bytes.len()
        )));
    }
    let mut hash = [0; 32];
    hash.copy_from_slice(&bytes[8..40]);
    Ok(Checkpoint {
        seq: be_u64(&bytes[..8]),
        hash,
        segment: be_u64(&bytes[40..48]),
        offset: be_u64(&bytes[48..]),
    })
}

fn snapshot_part_key(seq: u64, part: &str) -> Vec<u8> {
    let mut key = Vec::with_capacity(8 + part.len());
    key.extend_from_slice(&seq.to_be_bytes());
    key.extend_from_slice(part.as_bytes());
    key
}

/// The first seq (or version) that a cursor query reads after `after`, or
/// None when it reads nothing: a limit of 0, or a cursor at `u64::MAX`.
fn first_seq_after(after: u64, limit: usize) -> Option<u64> {
    if limit == 0 {
        None
    } else {
        after.checked_add(1)
    }
}

/// Reads the checkpoint row of an open `meta` table.
fn read_checkpoint(
    meta: &impl ReadableTable<&'static str, &'static [u8]>,
) -> Result<Option<Checkpoint>, IndexError> {
    match meta
        .get(CHECKPOINT_ROW)
        .context("reading the checkpoint row")?
    {
        Some(bytes) => Ok(Some(decode_checkpoint(bytes.value())?)),
        None => Ok(None),
    }
}

/// Checks that a batch continues the index: seqs without a gap after the
/// checkpoint, times that do not go back, and a checkpoint at the last seq.
fn check_batch_order(
    batch: &IndexBatch,
    previous: Option<&Checkpoint>,
    last_time: Option<i64>,
) -> Result<(), IndexError> {
    let previous_seq = previous.map_or(0, |checkpoint| checkpoint.seq);
    let mut expected_seq = previous_seq + 1;
    let mut time_floor = last_time;
    for entry in &batch.events {
        if entry.seq != expected_seq {
            return Err(IndexError::InvalidRequest(format!(
                "event seq {} does not continue the index at seq {}",
                entry.seq,
                expected_seq - 1
            )));
        }
        if let Some(floor) = time_floor {
            if entry.time_micros < floor {
                return Err(IndexError::InvalidRequest(format!(
                    "event seq {} has time {} µs, before the time {floor} µs of an earlier event",
                    entry.seq, entry.time_micros
                )));
            }
        }
        time_floor = Some(entry.time_micros);
        expected_seq += 1;
    }
    let last_seq = expected_seq - 1;
    if batch.checkpoint.seq != last_seq {
        return Err(IndexError::InvalidRequest(format!(
            "the batch checkpoint is at seq {}, but the batch ends the index at seq {last_seq}",
            batch.checkpoint.seq
        )));
    }
    Ok(())
}

/// An index "file" in memory (redb's `InMemoryBackend`) that outlives the
/// `IndexDb` using it; clones share it.
#[derive(Debug, Clone)]
pub struct MemoryIndexFile(std::sync::Arc<redb::backends::InMemoryBackend>);

impl Default for MemoryIndexFile {
    fn default() -> Self {
        MemoryIndexFile(std::sync::Arc::new(redb::backends::InMemoryBackend::new()))
    }
}

impl redb::StorageBackend for MemoryIndexFile {
    fn len(&self) -> Result<u64, std::io::Error> {
        self.0.len()
    }

    fn read(&self, offset: u64, out: &mut [u8]) -> Result<(), std::io::Error> {
        self.0.read(offset, out)
    }

    fn set_len(&self, len: u64) -> Result<(), std::io::Error> {
        self.0.set_len(len)
    }

    fn sync_data(&self) -> Result<(), std::io::Error> {
        self.0.sync_data()
    }

    fn write(&self, offset: u64, data: &[u8]) -> Result<(), std::io::Error> {
        self.0.write(offset, data)
    }
}

impl IndexDb {
    /// Opens the index file at `path`, creating it when missing.
    ///
    /// A file that redb cannot open, or whose format-version row is missing
    /// or unknown, or that lacks a table, is [`IndexError::Damaged`]: delete
    /// it and rebuild. A file another `IndexDb` has open is
    /// [`IndexError::InUse`].
    pub fn open(path: &Path, config: IndexConfig) -> Result<IndexDb, IndexError> {
        let what = format!("opening the index file {}", path.display());
        let db = redb::Builder::new()
            .set_cache_size(config.cache_bytes)
            .set_check_integrity_on_open(config.verify_on_open)
            .create(path)
            .map_err(|error| match classify(&what, error.into()) {
                IndexError::InUse(_) => IndexError::InUse(path.display().to_string()),
                other => other,
            })?;
        IndexDb::from_database(db, path.to_path_buf())
    }

    /// An index in memory: for a log on the simulated disk, which redb
    /// cannot use as a file system. Opening it again over the same
    /// `MemoryIndexFile` sees what was committed, as a file would.
    pub fn open_in_memory(file: MemoryIndexFile) -> Result<IndexDb, IndexError> {
        IndexDb::open_backend(file, IndexConfig::default())
    }

    /// Opens the index on any redb storage backend (tests simulate crashes
    /// with one).
    fn open_backend(
        backend: impl redb::StorageBackend,
        config: IndexConfig,
    ) -> Result<IndexDb, IndexError> {
        let db = redb::Builder::new()
            .set_cache_size(config.cache_bytes)
            .set_check_integrity_on_open(config.verify_on_open)
            .create_with_backend(backend)
            .context("opening the index backend")?;
        IndexDb::from_database(db, PathBuf::from("<backend>"))
    }

    fn from_database(db: Database, path: PathBuf) -> Result<IndexDb, IndexError> {
        let index = IndexDb { db, path };
        index.initialize_or_check_format()?;
        Ok(index)
    }

    /// Creates every table and the format-version row in a new file, or
    /// checks them in an existing one.
    fn initialize_or_check_format(&self) -> Result<(), IndexError> {
        let txn = self.begin_write("checking the index format")?;
        let present: HashSet<String> = txn
            .list_tables()
            .context("listing the index tables")?
            .map(|table| table.name().to_string())
            .collect();
        if present.is_empty() {
            txn.open_table(META)
                .context("creating the meta table")?
                .insert(FORMAT_VERSION_ROW, &FORMAT_VERSION.to_be_bytes()[..])
                .context("writing the format version")?;
            create_derived_tables(&txn)?;
            txn.open_table(SNAPSHOTS)
                .context("creating the snapshots table")?;
            txn.open_table(SNAPSHOT_PARTS)
                .context("creating the snapshot_parts table")?;
            return txn.commit().context("committing a new index file");
        }
        let format = {
            let meta = txn.open_table(META).context("opening the meta table")?;
            let row = meta
                .get(FORMAT_VERSION_ROW)
                .context("reading the format version")?;
            row.map(|bytes| bytes.value().to_vec())
        };
        match format.as_deref() {
            None => {
                return Err(IndexError::Damaged(format!(
                    "{} has no format version row",
                    self.path.display()
                )))
            }
            Some(bytes) if bytes != FORMAT_VERSION.to_be_bytes() => {
                return Err(IndexError::Damaged(format!(
                    "{} has index format {bytes:02x?}; this build reads format {FORMAT_VERSION} only",
                    self.path.display()
                )))
            }
            Some(_) => {}
        }
        if let Some(missing) = TABLE_NAMES.iter().find(|name| !present.contains(**name)) {
            return Err(IndexError::Damaged(format!(
                "{} lacks the table {missing}",
                self.path.display()
            )));
        }
        // Opening each table checks its key and value types as well.
        drop(txn);
        let read = self.begin_read()?;
        read.open_table(EVENT_IDS).context("checking event_ids")?;
        read.open_table(EVENT_TIMES)
            .context("checking event_times")?;
        read.open_table(CAUSES).context("checking causes")?;
        read.open_table(CORRELATIONS)
            .context("checking correlations")?;
        read.open_table(STREAMS).context("checking streams")?;
        read.open_table(STREAM_EVENTS)
            .context("checking stream_events")?;
        read.open_table(IDEMPOTENCY)
            .context("checking idempotency")?;
        read.open_table(FRAMES).context("checking frames")?;
        read.open_table(SNAPSHOTS).context("checking snapshots")?;
        read.open_table(SNAPSHOT_PARTS)
            .context("checking snapshot_parts")?;
        read_checkpoint(&read.open_table(META).context("checking meta")?)?;
        Ok(())
    }

    fn begin_write(&self, what: &str) -> Result<WriteTransaction, IndexError> {
        self.db
            .begin_write()
            .context(&format!("starting a write transaction for {what}"))
    }

    fn begin_read(&self) -> Result<ReadTransaction, IndexError> {
        self.db.begin_read().context("starting a read transaction")
    }

    /// Applies one batch in one write transaction: every entry and the new
    /// checkpoint are visible together, or none is. Not durable on return:
    /// see the module doc.
    pub fn apply(&self, batch: &IndexBatch) -> Result<(), IndexError> {
        let mut txn = self.begin_write("applying a batch")?;
        txn.set_durability(Durability::None)
            .context("choosing non-durable commits for a batch")?;
        {
            let mut meta = txn.open_table(META).context("opening meta")?;
            let mut times = txn.open_table(EVENT_TIMES).context("opening event_times")?;
            let previous = read_checkpoint(&meta)?;
            let last_time = times
                .last()
                .context("reading the last indexed time")?
                .map(|(key, _)| time_from_key(key.value()));
            check_batch_order(batch, previous.as_ref(), last_time)?;

            let mut ids = txn.open_table(EVENT_IDS).context("opening event_ids")?;
            let mut causes = txn.open_table(CAUSES).context("opening causes")?;
            let mut correlations = txn
                .open_table(CORRELATIONS)
                .context("opening correlations")?;
            let mut stream_events = txn
                .open_table(STREAM_EVENTS)
                .context("opening stream_events")?;
            let mut streams = txn.open_table(STREAMS).context("opening streams")?;
            // The row of each stream this batch touches, as the batch leaves
            // it; written once per stream after the loop.
            let mut touched: HashMap<&str, StreamRow> = HashMap::new();
            // Streams are numbered in the order they first appear.
            let mut stream_count = streams.len().context("counting streams")?;
            // The time entry waiting to be written: only the last seq with a
            // time gets one, and seqs of one time are adjacent.
            let mut pending_time: Option<(i64, u64)> = None;
            // Causes and correlations point back at earlier events, and a
            // batch's events belong to many streams, so those keys are
            // scattered over their tables: inserted in key order, one batch
            // touches each page once instead of once per key.
            let mut cause_keys = Vec::new();
            let mut correlation_keys = Vec::new();
            let mut stream_event_rows = Vec::with_capacity(batch.events.len());

            for entry in &batch.events {
                let seq = entry.seq.to_be_bytes();
                // Ids are UUIDv7s that the writers make, and the log does not
                // refuse a repeated one: an acknowledged event must never
                // stop the index. The first event with an id keeps it.
                // One insert, not a lookup and an insert: a repeated id is
                // rare, and then the earlier seq is put back.
                let earlier = ids
                    .insert(entry.id.as_bytes(), seq)
                    .context("writing event_ids")?
                    .map(|earlier| earlier.value());
                if let Some(earlier) = earlier {
                    ids.insert(entry.id.as_bytes(), earlier)
                        .context("writing event_ids")?;
                }
                if let Some((time, last_seq_with_time)) = pending_time {
                    if time != entry.time_micros {
                        times
                            .insert(time_key(time), last_seq_with_time.to_be_bytes())
                            .context("writing event_times")?;
                    }
                }
                pending_time = Some((entry.time_micros, entry.seq));
                if let Some(causing_seq) = entry.causing_seq {
                    cause_keys.push(pair_key(causing_seq, entry.seq));
                }
                if let Some(correlation) = entry.correlation {
                    correlation_keys.push(correlation_key(correlation, entry.seq));
                }
                let row = match touched.entry(entry.stream) {
                    Entry::Occupied(row) => row.into_mut(),
                    Entry::Vacant(vacant) => {
                        let stored = streams.get(entry.stream).context("reading streams")?;
                        let row = match stored {
                            Some(bytes) => StreamRow::decode(bytes.value()),
                            None => {
                                let number = u32::try_from(stream_count).map_err(|_| {
                                    IndexError::InvalidRequest(format!(
                                        "stream {:?} would be stream number {stream_count}, past the last one the layout has",
                                        entry.stream
                                    ))
                                })?;
                                stream_count += 1;
                                StreamRow { number, version: 0 }
                            }
                        };
                        vacant.insert(row)
                    }
                };
                if entry.version <= row.version {
                    return Err(IndexError::InvalidRequest(format!(
                        "event seq {} has version {} of stream {:?}, which is already at version {}",
                        entry.seq, entry.version, entry.stream, row.version
                    )));
                }
                row.version = entry.version;
                stream_event_rows.push((stream_event_key(row.number, entry.version), seq));
            }
            if let Some((time, last_seq_with_time)) = pending_time {
                times
                    .insert(time_key(time), last_seq_with_time.to_be_bytes())
                    .context("writing event_times")?;
            }
            cause_keys.sort_unstable();
            for key in cause_keys {
                causes.insert(key, ()).context("writing causes")?;
            }
            correlation_keys.sort_unstable();
            for key in correlation_keys {
                correlations
                    .insert(key, ())
                    .context("writing correlations")?;
            }
            stream_event_rows.sort_unstable();
            for (key, seq) in stream_event_rows {
                stream_events
                    .insert(key, seq)
                    .context("writing stream_events")?;
            }

            for (stream, row) in touched {
                streams
                    .insert(stream, row.encode())
                    .context("writing streams")?;
            }

            let mut idempotency = txn.open_table(IDEMPOTENCY).context("opening idempotency")?;
            for (key, record) in &batch.idempotency {
                idempotency
                    .insert(*key, *record)
                    .context("writing idempotency")?;
            }

            let mut frames = txn.open_table(FRAMES).context("opening frames")?;
            for frame in &batch.frames {
                let key = frame.first_seq.to_be_bytes();
                // Two frames can start at the same seq (a frame that holds no
                // event, such as an idempotency record alone, and the next
                // one). The earlier keeps its row: reading forward from it
                // finds the seq as well.
                if frames.get(key).context("reading frames")?.is_none() {
                    frames
                        .insert(key, frame_value(frame))
                        .context("writing frames")?;
                }
            }

            meta.insert(CHECKPOINT_ROW, &encode_checkpoint(&batch.checkpoint)[..])
                .context("writing the checkpoint")?;
        }
        txn.commit().context("committing a batch")
    }

    /// Closes the file: makes every batch applied so far durable and records
    /// redb's page allocator state, as dropping the `IndexDb` does, but
    /// returns the error that a drop can only ignore.
    pub fn close(self) -> Result<(), IndexError> {
        self.db.close().context("closing the index file")
    }

    /// Makes every batch applied so far durable: one fsync'ed commit with
    /// quick-repair, so that the open after a crash starts from here without
    /// a full scan of the file.
    pub fn make_durable(&self) -> Result<(), IndexError> {
        let mut txn = self.begin_write("making the index durable")?;
        txn.set_durability(Durability::Immediate)
            .context("choosing a durable commit")?;
        txn.set_quick_repair(true);
        txn.commit().context("committing the index durably")
    }

    /// What the index is built through; None while it is empty.
    pub fn checkpoint(&self) -> Result<Option<Checkpoint>, IndexError> {
        let read = self.begin_read()?;
        read_checkpoint(&read.open_table(META).context("opening meta")?)
    }

    /// The seq of the event with this id.
    pub fn seq_of_id(&self, id: Uuid) -> Result<Option<u64>, IndexError> {
        let read = self.begin_read()?;
        let ids = read.open_table(EVENT_IDS).context("opening event_ids")?;
        let seq = ids.get(id.as_bytes()).context("reading event_ids")?;
        Ok(seq.map(|value| u64::from_be_bytes(value.value())))
    }

    /// The last seq whose time is at or before `time_micros`; 0 when none is.
    pub fn seq_at_time(&self, time_micros: i64) -> Result<u64, IndexError> {
        let read = self.begin_read()?;
        let times = read
            .open_table(EVENT_TIMES)
            .context("opening event_times")?;
        let mut range = times
            .range(..=time_key(time_micros))
            .context("reading event_times")?;
        match range.next_back() {
            Some(row) => {
                let (_, seq) = row.context("reading event_times")?;
                Ok(u64::from_be_bytes(seq.value()))
            }
            None => Ok(0),
        }
    }

    /// Seqs of the events caused by the event at `causing_seq`, after
    /// `after_seq`, ascending, at most `limit`.
    pub fn caused_by(
        &self,
        causing_seq: u64,
        after_seq: u64,
        limit: usize,
    ) -> Result<Vec<u64>, IndexError> {
        let Some(first) = first_seq_after(after_seq, limit) else {
            return Ok(Vec::new());
        };
        let read = self.begin_read()?;
        seqs_ending_keys(
            &read,
            CAUSES,
            pair_key(causing_seq, first)..=pair_key(causing_seq, u64::MAX),
            limit,
        )
    }

    /// Seqs of the events with this correlation id, after `after_seq`,
    /// ascending, at most `limit`.
    pub fn correlated(
        &self,
        correlation: Uuid,
        after_seq: u64,
        limit: usize,
    ) -> Result<Vec<u64>, IndexError> {
        let Some(first) = first_seq_after(after_seq, limit) else {
            return Ok(Vec::new());
        };
        let read = self.begin_read()?;
        seqs_ending_keys(
            &read,
            CORRELATIONS,
            correlation_key(correlation, first)..=correlation_key(correlation, u64::MAX),
            limit,
        )
    }

    /// Seqs of the stream's events with versions above `after_version`,
    /// ascending, at most `limit`.
    pub fn stream_seqs(
        &self,
        stream: &str,
        after_version: u64,
        limit: usize,
    ) -> Result<Vec<u64>, IndexError> {
        let Some(first) = first_seq_after(after_version, limit) else {
            return Ok(Vec::new());
        };
        let read = self.begin_read()?;
        let Some(row) = read_stream(&read, stream)? else {
            return Ok(Vec::new());
        };
        let stream_events = read
            .open_table(STREAM_EVENTS)
            .context("opening stream_events")?;
        let range = stream_events
            .range(stream_event_key(row.number, first)..=stream_event_key(row.number, u64::MAX))
            .context("reading stream_events")?;
        let mut seqs = Vec::new();
        for row in range.take(limit) {
            let (_, seq) = row.context("reading stream_events")?;
            seqs.push(u64::from_be_bytes(seq.value()));
        }
        Ok(seqs)
    }

    /// The stream's last indexed version; 0 for a stream without events.
    pub fn stream_version(&self, stream: &str) -> Result<u64, IndexError> {
        let row = read_stream(&self.begin_read()?, stream)?;
        Ok(row.map_or(0, |row| row.version))
    }

    /// Every stream with its last version, by name.
    pub fn stream_versions(&self) -> Result<Vec<(String, u64)>, IndexError> {
        let streams = read_streams(&self.begin_read()?)?;
        Ok(streams
            .into_iter()
            .map(|(stream, row)| (stream, row.version))
            .collect())
    }

    /// The caller's record for an idempotency key.
    pub fn idempotency(&self, key: &str) -> Result<Option<Vec<u8>>, IndexError> {
        let read = self.begin_read()?;
        let idempotency = read
            .open_table(IDEMPOTENCY)
            .context("opening idempotency")?;
        let record = idempotency.get(key).context("reading idempotency")?;
        Ok(record.map(|value| value.value().to_vec()))
    }

    /// The frame position with the greatest first seq at or before `seq`.
    pub fn frame_at_or_before(&self, seq: u64) -> Result<Option<FramePosition>, IndexError> {
        let read = self.begin_read()?;
        let frames = read.open_table(FRAMES).context("opening frames")?;
        let mut range = frames
            .range(..=seq.to_be_bytes())
            .context("reading frames")?;
        match range.next_back() {
            Some(row) => {
                let (key, value) = row.context("reading frames")?;
                Ok(Some(frame_from_row(key.value(), value.value())))
            }
            None => Ok(None),
        }
    }

    /// Stores a snapshot's parts under `seq`, replacing any snapshot saved
    /// there before. Durable on return, and it makes every batch applied
    /// before it durable too. Part names must be distinct.
    pub fn save_snapshot(&self, seq: u64, parts: &[(String, Vec<u8>)]) -> Result<(), IndexError> {
        let mut names = HashSet::new();
        if let Some((name, _)) = parts.iter().find(|(name, _)| !names.insert(name.as_str())) {
            return Err(IndexError::InvalidRequest(format!(
                "snapshot {seq} names the part {name:?} twice"
            )));
        }
        let mut txn = self.begin_write("saving a snapshot")?;
        txn.set_durability(Durability::Immediate)
            .context("choosing a durable commit for a snapshot")?;
        txn.set_quick_repair(true);
        {
            let mut markers = txn.open_table(SNAPSHOTS).context("opening snapshots")?;
            let mut stored = txn
                .open_table(SNAPSHOT_PARTS)
                .context("opening snapshot_parts")?;
            // Parts of an earlier snapshot at the same seq must not stay
            // behind. Its keys are the ones that start with the seq's 8
            // bytes: at or after them, and before the next seq's.
            let prefix = seq.to_be_bytes();
            let removed = match seq.checked_add(1) {
                Some(next) => stored.retain_in::<&[u8], _>(
                    prefix.as_slice()..next.to_be_bytes().as_slice(),
                    |_, _| false,
                ),
                None => stored.retain_in::<&[u8], _>(prefix.as_slice().., |_, _| false),
            };
            removed.context("removing the parts of an earlier snapshot at the same seq")?;
            for (name, bytes) in parts {
                stored
                    .insert(
                        snapshot_part_key(seq, name).as_slice(),
                        pack_snapshot_part(bytes).as_slice(),
                    )
                    .context("writing a snapshot part")?;
            }
            markers
                .insert(prefix, ())
                .context("writing the snapshot marker")?;
        }
        txn.commit().context("committing a snapshot")
    }

    /// The seqs of every snapshot, ascending.
    pub fn snapshot_seqs(&self) -> Result<Vec<u64>, IndexError> {
        let read = self.begin_read()?;
        let markers = read.open_table(SNAPSHOTS).context("opening snapshots")?;
        let mut seqs = Vec::new();
        for row in markers.iter().context("reading snapshots")? {
            let (key, _) = row.context("reading snapshots")?;
            seqs.push(u64::from_be_bytes(key.value()));
        }
        Ok(seqs)
    }

    /// One part of the snapshot at `seq`.
    pub fn snapshot_part(&self, seq: u64, part: &str) -> Result<Option<Vec<u8>>, IndexError> {
        let read = self.begin_read()?;
        let stored = read
            .open_table(SNAPSHOT_PARTS)
            .context("opening snapshot_parts")?;
        let bytes = stored
            .get(snapshot_part_key(seq, part).as_slice())
            .context("reading a snapshot part")?;
        bytes
            .map(|value| unpack_snapshot_part(seq, part, value.value()))
            .transpose()
    }

    /// Every part of the snapshot at `seq`, by name; empty when there is no
    /// such snapshot.
    pub fn snapshot_parts(&self, seq: u64) -> Result<Vec<(String, Vec<u8>)>, IndexError> {
        let read = self.begin_read()?;
        let stored = read
            .open_table(SNAPSHOT_PARTS)
            .context("opening snapshot_parts")?;
        let prefix = seq.to_be_bytes();
        let mut parts = Vec::new();
        for row in stored
            .range::<&[u8]>(prefix.as_slice()..)
            .context("reading snapshot parts")?
        {
            let (key, value) = row.context("reading snapshot parts")?;
            let Some(name) = key.value().strip_prefix(prefix.as_slice()) else {
                break;
            };
            let name = std::str::from_utf8(name).map_err(|_| {
                IndexError::Damaged(format!("a part name of snapshot {seq} is not UTF-8"))
            })?;
            let part = unpack_snapshot_part(seq, name, value.value())?;
            parts.push((name.to_string(), part));
        }
        Ok(parts)
    }

    /// Empties every derived table and removes the checkpoint, keeping the
    /// snapshots, so that the caller can rebuild from the start of the log.
    /// Durable on return.
    pub fn clear_indexes(&self) -> Result<(), IndexError> {
        let mut txn = self.begin_write("clearing the indexes")?;
        txn.set_durability(Durability::Immediate)
            .context("choosing a durable commit for clearing")?;
        txn.set_quick_repair(true);
        txn.delete_table(EVENT_IDS).context("deleting event_ids")?;
        txn.delete_table(EVENT_TIMES)
            .context("deleting event_times")?;
        txn.delete_table(CAUSES).context("deleting causes")?;
        txn.delete_table(CORRELATIONS)
            .context("deleting correlations")?;
        txn.delete_table(STREAMS).context("deleting streams")?;
        txn.delete_table(STREAM_EVENTS)
            .context("deleting stream_events")?;
        txn.delete_table(IDEMPOTENCY)
            .context("deleting idempotency")?;
        txn.delete_table(FRAMES).context("deleting frames")?;
        create_derived_tables(&txn)?;
        txn.open_table(META)
            .context("opening meta")?
            .remove(CHECKPOINT_ROW)
            .context("removing the checkpoint")?;
        txn.commit().context("committing the cleared indexes")
    }

    /// Every row of every derived table and the checkpoint, decoded and
    /// sorted; snapshots are left out.
    pub fn dump(&self) -> Result<IndexDump, IndexError> {
        let read = self.begin_read()?;
        let mut dump = IndexDump {
            checkpoint: read_checkpoint(&read.open_table(META).context("opening meta")?)?,
            ..IndexDump::default()
        };
        let ids = read.open_table(EVENT_IDS).context("opening event_ids")?;
        for row in ids.iter().context("reading event_ids")? {
            let (id, seq) = row.context("reading event_ids")?;
            dump.event_ids.push((
                Uuid::from_bytes(id.value()),
                u64::from_be_bytes(seq.value()),
            ));
        }
        let times = read
            .open_table(EVENT_TIMES)
            .context("opening event_times")?;
        for row in times.iter().context("reading event_times")? {
            let (time, seq) = row.context("reading event_times")?;
            dump.event_times
                .push((time_from_key(time.value()), u64::from_be_bytes(seq.value())));
        }
        let causes = read.open_table(CAUSES).context("opening causes")?;
        for row in causes.iter().context("reading causes")? {
            let (key, _) = row.context("reading causes")?;
            let key = key.value();
            dump.causes.push((be_u64(&key[..8]), be_u64(&key[8..])));
        }
        let correlations = read
            .open_table(CORRELATIONS)
            .context("opening correlations")?;
        for row in correlations.iter().context("reading correlations")? {
            let (key, _) = row.context("reading correlations")?;
            let key = key.value();
            let mut id = [0; 16];
            id.copy_from_slice(&key[..16]);
            dump.correlations
                .push((Uuid::from_bytes(id), be_u64(&key[16..])));
        }
        dump.streams = read_streams(&read)?
            .into_iter()
            .map(|(stream, row)| (stream, row.number, row.version))
            .collect();
        let stream_events = read
            .open_table(STREAM_EVENTS)
            .context("opening stream_events")?;
        for row in stream_events.iter().context("reading stream_events")? {
            let (key, seq) = row.context("reading stream_events")?;
            let key = StreamRow::decode(key.value());
            dump.stream_events
                .push((key.number, key.version, u64::from_be_bytes(seq.value())));
        }
        let idempotency = read
            .open_table(IDEMPOTENCY)
            .context("opening idempotency")?;
        for row in idempotency.iter().context("reading idempotency")? {
            let (key, record) = row.context("reading idempotency")?;
            dump.idempotency
                .push((key.value().to_string(), record.value().to_vec()));
        }
        let frames = read.open_table(FRAMES).context("opening frames")?;
        for row in frames.iter().context("reading frames")? {
            let (key, value) = row.context("reading frames")?;
            dump.frames.push(frame_from_row(key.value(), value.value()));
        }
        Ok(dump)
    }

    /// Bytes of the file's pages in use: the file's length less its free
    /// pages (redb frees pages only at durable commits, and shrinks the file
    /// only when the free pages are at its end).
    pub fn allocated_bytes(&self) -> Result<u64, IndexError> {
        let txn = self.begin_write("measuring the file")?;
        let stats = txn.stats().context("measuring the file")?;
        Ok(stats.allocated_pages() * stats.page_size() as u64)
    }

    /// Rewrites the file so that its free pages are at its end, then
    /// shrinks it. Slow (it moves pages around in many durable commits) and
    /// needs the index to itself, so it is for after a rebuild. Returns
    /// whether it moved anything.
    pub fn compact(&mut self) -> Result<bool, IndexError> {
        let mut compacted = false;
        while self.db.compact().context("compacting the index file")? {
            compacted = true;
        }
        Ok(compacted)
    }

    /// The rows and bytes of every table.
    pub fn table_sizes(&self) -> Result<Vec<TableSize>, IndexError> {
        let read = self.begin_read()?;
        let mut sizes = Vec::new();
        macro_rules! measure {
            ($definition:expr, $name:literal) => {{
                let table = read
                    .open_table($definition)
                    .context(concat!("opening ", $name))?;
                let stats = table.stats().context(concat!("measuring ", $name))?;
                sizes.push(TableSize {
                    table: $name,
                    rows: table.len().context(concat!("counting ", $name))?,
                    stored_bytes: stats.stored_bytes(),
                    metadata_bytes: stats.metadata_bytes(),
                    fragmented_bytes: stats.fragmented_bytes(),
                });
            }};
        }
        measure!(META, "meta");
        measure!(EVENT_IDS, "event_ids");
        measure!(EVENT_TIMES, "event_times");
        measure!(CAUSES, "causes");
        measure!(CORRELATIONS, "correlations");
        measure!(STREAMS, "streams");
        measure!(STREAM_EVENTS, "stream_events");
        measure!(IDEMPOTENCY, "idempotency");
        measure!(FRAMES, "frames");
        measure!(SNAPSHOTS, "snapshots");
        measure!(SNAPSHOT_PARTS, "snapshot_parts");
        Ok(sizes)
    }
}

/// The seqs that end the keys of `keys` in `table` (`causes` and
/// `correlations`: a lookup value, then the seq of the event it names),
/// ascending, at most `limit`.
fn seqs_ending_keys<const N: usize>(
    read: &ReadTransaction,
    table: TableDefinition<[u8; N], ()>,
    keys: std::ops::RangeInclusive<[u8; N]>,
    limit: usize,
) -> Result<Vec<u64>, IndexError> {
    let what = table.name();
    let table = read
        .open_table(table)
        .with_context(|| format!("opening {what}"))?;
    let mut seqs = Vec::new();
    for row in table
        .range(keys)
        .with_context(|| format!("reading {what}"))?
        .take(limit)
    {
        let (key, _) = row.with_context(|| format!("reading {what}"))?;
        seqs.push(be_u64(&key.value()[N - 8..]));
    }
    Ok(seqs)
}

/// One stream's row, as a read transaction sees it.
fn read_stream(read: &ReadTransaction, stream: &str) -> Result<Option<StreamRow>, IndexError> {
    let streams = read.open_table(STREAMS).context("opening streams")?;
    let row = streams.get(stream).context("reading streams")?;
    Ok(row.map(|bytes| StreamRow::decode(bytes.value())))
}

/// Every stream's row, by name, as a read transaction sees them.
fn read_streams(read: &ReadTransaction) -> Result<Vec<(String, StreamRow)>, IndexError> {
    let table = read.open_table(STREAMS).context("opening streams")?;
    let mut streams = Vec::new();
    for row in table.iter().context("reading streams")? {
        let (stream, bytes) = row.context("reading streams")?;
        streams.push((stream.value().to_string(), StreamRow::decode(bytes.value())));
    }
    Ok(streams)
}

/// Creates the tables that [`IndexDb::clear_indexes`] empties.
fn create_derived_tables(txn: &WriteTransaction) -> Result<(), IndexError> {
    txn.open_table(EVENT_IDS).context("creating event_ids")?;
    txn.open_table(EVENT_TIMES)
        .context("creating event_times")?;
    txn.open_table(CAUSES).context("creating causes")?;
    txn.open_table(CORRELATIONS)
        .context("creating correlations")?;
    txn.open_table(STREAMS).context("creating streams")?;
    txn.open_table(STREAM_EVENTS)
        .context("creating stream_events")?;
    txn.open_table(IDEMPOTENCY)
        .context("creating idempotency")?;
    txn.open_table(FRAMES).context("creating frames")?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use std::sync::{Arc, Mutex};

    use super::*;

    /// A directory of its own for one test, removed when the test ends.
    struct TestDir(PathBuf);

    impl TestDir {
        fn new(name: &str) -> TestDir {
            static NEXT: AtomicUsize = AtomicUsize::new(0);
            let path = std::env::temp_dir().join(format!(
                "redbindex-{name}-{}-{}",
                std::process::id(),
                NEXT.fetch_add(1, Ordering::Relaxed)
            ));
            let _ = std::fs::remove_dir_all(&path);
            std::fs::create_dir_all(&path).unwrap();
            TestDir(path)
        }

        fn file(&self) -> PathBuf {
            self.0.join("index.redb")
        }
    }

    impl Drop for TestDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn small_config() -> IndexConfig {
        IndexConfig {
            cache_bytes: 1024 * 1024,
            verify_on_open: true,
        }
    }

    fn open(path: &Path) -> IndexDb {
        IndexDb::open(path, small_config()).unwrap()
    }

    fn id(seq: u64) -> Uuid {
        Uuid::from_u128(0x1d00_0000 + u128::from(seq))
    }

    const C1: Uuid = Uuid::from_u128(0xC1);
    const C2: Uuid = Uuid::from_u128(0xC2);

    fn entry(
        seq: u64,
        stream: &'static str,
        version: u64,
        time_micros: i64,
        causing_seq: Option<u64>,
        correlation: Option<Uuid>,
    ) -> IndexEntry<'static> {
        IndexEntry {
            seq,
            id: id(seq),
            stream,
            version,
            time_micros,
            causing_seq,
            correlation,
        }
    }

    /// A small log of 12 events in three streams (`a`, `ab` and `b`, so
    /// that one name is a prefix of another), with times shared by several
    /// events, causes and correlations.
    fn known_log() -> Vec<IndexEntry<'static>> {
        vec![
            entry(1, "a", 1, 100, None, Some(C1)),
            entry(2, "b", 1, 100, Some(1), Some(C1)),
            entry(3, "a", 2, 200, Some(1), None),
            entry(4, "ab", 1, 200, None, Some(C2)),
            entry(5, "a", 3, 300, Some(2), Some(C1)),
            entry(6, "b", 2, 300, Some(1), Some(C2)),
            entry(7, "a", 4, 300, None, Some(C1)),
            entry(8, "ab", 2, 400, Some(7), None),
            entry(9, "a", 5, 500, Some(1), Some(C1)),
            entry(10, "b", 3, 500, None, None),
            entry(11, "a", 6, 600, Some(7), Some(C2)),
            entry(12, "ab", 3, 600, None, Some(C1)),
        ]
    }

    fn checkpoint_at(seq: u64) -> Checkpoint {
        Checkpoint {
            seq,
            hash: [seq as u8; 32],
            segment: seq / 8,
            offset: seq * 100,
        }
    }

    fn frame(first_seq: u64) -> FramePosition {
        FramePosition {
            first_seq,
            segment: first_seq / 8,
            offset: (first_seq - 1) * 100,
        }
    }

    /// The batch of the known log's events `first..=last`, with an
    /// idempotency key on the first event of each batch and frames at every
    /// fourth seq and at the batch's last event.
    fn batch_of(events: &[IndexEntry<'static>], first: u64, last: u64) -> IndexBatch<'static> {
        const KEYS: [&str; 13] = [
            "", "key-1", "key-2", "key-3", "key-4", "key-5", "key-6", "key-7", "key-8", "key-9",
            "key-10", "key-11", "key-12",
        ];
        let mut frames: Vec<FramePosition> = (first..=last)
            .filter(|seq| seq % 4 == 1)
            .map(frame)
            .collect();
        if frames.last().map(|frame| frame.first_seq) != Some(last) {
            frames.push(frame(last));
        }
        IndexBatch {
            events: events
                .iter()
                .filter(|event| (first..=last).contains(&event.seq))
                .copied()
                .collect(),
            idempotency: vec![(KEYS[first as usize], b"record".as_slice())],
            frames,
            checkpoint: checkpoint_at(last),
        }
    }

    /// The known log in three batches: 1..=5, 6..=9, 10..=12.
    fn known_batches() -> Vec<IndexBatch<'static>> {
        let log = known_log();
        vec![
            batch_of(&log, 1, 5),
            batch_of(&log, 6, 9),
            batch_of(&log, 10, 12),
        ]
    }

    fn apply_all(index: &IndexDb, batches: &[IndexBatch]) {
        for batch in batches {
            index.apply(batch).unwrap();
        }
    }

    fn indexed_known_log(path: &Path) -> IndexDb {
        let index = open(path);
        apply_all(&index, &known_batches());
        index
    }

    #[test]
    fn index_db_is_send_and_sync() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<IndexDb>();
    }

    #[test]
    fn a_new_index_is_empty() {
        let dir = TestDir::new("empty");
        let index = open(&dir.file());
        assert_eq!(index.checkpoint().unwrap(), None);
        assert_eq!(index.seq_of_id(id(1)).unwrap(), None);
        assert_eq!(index.seq_at_time(i64::MAX).unwrap(), 0);
        assert_eq!(index.stream_version("a").unwrap(), 0);
        assert_eq!(index.stream_seqs("a", 0, 10).unwrap(), Vec::<u64>::new());
        assert_eq!(index.stream_versions().unwrap(), Vec::new());
        assert_eq!(index.frame_at_or_before(u64::MAX).unwrap(), None);
        assert_eq!(index.dump().unwrap(), IndexDump::default());
    }

    #[test]
    fn every_query_answers_over_a_small_known_log() {
        let dir = TestDir::new("queries");
        let index = indexed_known_log(&dir.file());

        assert_eq!(index.checkpoint().unwrap(), Some(checkpoint_at(12)));
        for seq in 1..=12 {
            assert_eq!(index.seq_of_id(id(seq)).unwrap(), Some(seq));
        }
        assert_eq!(index.seq_of_id(id(13)).unwrap(), None);
        assert_eq!(index.seq_of_id(Uuid::nil()).unwrap(), None);

        assert_eq!(index.seq_at_time(250).unwrap(), 4);
        assert_eq!(index.caused_by(1, 0, 100).unwrap(), vec![2, 3, 6, 9]);
        assert_eq!(index.caused_by(7, 0, 100).unwrap(), vec![8, 11]);
        assert_eq!(index.caused_by(2, 0, 100).unwrap(), vec![5]);
        assert_eq!(index.caused_by(3, 0, 100).unwrap(), Vec::<u64>::new());
        assert_eq!(
            index.correlated(C1, 0, 100).unwrap(),
            vec![1, 2, 5, 7, 9, 12]
        );
        assert_eq!(index.correlated(C2, 0, 100).unwrap(), vec![4, 6, 11]);
        assert_eq!(
            index.correlated(Uuid::from_u128(0xC3), 0, 100).unwrap(),
            Vec::<u64>::new()
        );

        // `a` is a prefix of `ab`: neither stream sees the other's events.
        assert_eq!(
            index.stream_seqs("a", 0, 100).unwrap(),
            vec![1, 3, 5, 7, 9, 11]
        );
        assert_eq!(index.stream_seqs("ab", 0, 100).unwrap(), vec![4, 8, 12]);
        assert_eq!(index.stream_seqs("b", 0, 100).unwrap(), vec![2, 6, 10]);
        assert_eq!(index.stream_seqs("c", 0, 100).unwrap(), Vec::<u64>::new());
        assert_eq!(index.stream_version("a").unwrap(), 6);
        assert_eq!(index.stream_version("ab").unwrap(), 3);
        assert_eq!(index.stream_version("b").unwrap(), 3);
        assert_eq!(index.stream_version("c").unwrap(), 0);
        assert_eq!(
            index.stream_versions().unwrap(),
            vec![
                ("a".to_string(), 6),
                ("ab".to_string(), 3),
                ("b".to_string(), 3)
            ]
        );

        assert_eq!(
            index.idempotency("key-1").unwrap(),
            Some(b"record".to_vec())
        );
        assert_eq!(
            index.idempotency("key-10").unwrap(),
            Some(b"record".to_vec())
        );
        assert_eq!(index.idempotency("key-2").unwrap(), None);

        assert_eq!(index.frame_at_or_before(7).unwrap(), Some(frame(5)));

        // Streams are numbered in the order they first appear in the log.
        let dump = index.dump().unwrap();
        assert_eq!(
            dump.streams,
            vec![
                ("a".to_string(), 0, 6),
                ("ab".to_string(), 2, 3),
                ("b".to_string(), 1, 3)
            ]
        );
        assert_eq!(dump.event_ids.len(), 12);
        assert_eq!(dump.stream_events.len(), 12);
        assert_eq!(
            dump.event_times,
            vec![(100, 2), (200, 4), (300, 7), (400, 8), (500, 10), (600, 12)],
            "one row per distinct time, with its largest seq"
        );
    }

    #[test]
    fn seq_at_time_boundaries() {
        let dir = TestDir::new("times");
        let index = indexed_known_log(&dir.file());
        // Before the first event.
        assert_eq!(index.seq_at_time(i64::MIN).unwrap(), 0);
        assert_eq!(index.seq_at_time(-1).unwrap(), 0);
        assert_eq!(index.seq_at_time(99).unwrap(), 0);
        // Exactly the first time, shared by seqs 1 and 2: the last of them.
        assert_eq!(index.seq_at_time(100).unwrap(), 2);
        // Between two times.
        assert_eq!(index.seq_at_time(101).unwrap(), 2);
        assert_eq!(index.seq_at_time(299).unwrap(), 4);
        // Exactly a time shared by seqs 5, 6 and 7, all in the first two
        // batches: the row of batch 1 (seq 5) was replaced by batch 2's.
        assert_eq!(index.seq_at_time(300).unwrap(), 7);
        // A time shared across the last two batches (seqs 9 and 10).
        assert_eq!(index.seq_at_time(500).unwrap(), 10);
        // Exactly the last time, and after it.
        assert_eq!(index.seq_at_time(600).unwrap(), 12);
        assert_eq!(index.seq_at_time(601).unwrap(), 12);
        assert_eq!(index.seq_at_time(i64::MAX).unwrap(), 12);
    }

    #[test]
    fn times_before_1970_sort_before_later_ones() {
        let dir = TestDir::new("negative-times");
        let index = open(&dir.file());
        let events = vec![
            entry(1, "a", 1, -5_000, None, None),
            entry(2, "a", 2, -1, None, None),
            entry(3, "a", 3, 0, None, None),
            entry(4, "a", 4, 7, None, None),
        ];
        index
            .apply(&IndexBatch {
                events,
                idempotency: Vec::new(),
                frames: Vec::new(),
                checkpoint: checkpoint_at(4),
            })
            .unwrap();
        assert_eq!(index.seq_at_time(-5_001).unwrap(), 0);
        assert_eq!(index.seq_at_time(-5_000).unwrap(), 1);
        assert_eq!(index.seq_at_time(-2).unwrap(), 1);
        assert_eq!(index.seq_at_time(-1).unwrap(), 2);
        assert_eq!(index.seq_at_time(0).unwrap(), 3);
        assert_eq!(index.seq_at_time(6).unwrap(), 3);
        assert_eq!(index.seq_at_time(7).unwrap(), 4);
    }

    #[test]
    fn limits_and_after_cursors() {
        let dir = TestDir::new("cursors");
        let index = indexed_known_log(&dir.file());

        // A limit of 0 answers nothing; smaller limits cut from the start.
        assert_eq!(index.caused_by(1, 0, 0).unwrap(), Vec::<u64>::new());
        assert_eq!(index.caused_by(1, 0, 1).unwrap(), vec![2]);
        assert_eq!(index.caused_by(1, 0, 3).unwrap(), vec![2, 3, 6]);
        // `after` is exclusive, and may be a seq that is not in the list.
        assert_eq!(index.caused_by(1, 2, 100).unwrap(), vec![3, 6, 9]);
        assert_eq!(index.caused_by(1, 4, 2).unwrap(), vec![6, 9]);
        assert_eq!(index.caused_by(1, 9, 100).unwrap(), Vec::<u64>::new());
        assert_eq!(
            index.caused_by(1, u64::MAX, 100).unwrap(),
            Vec::<u64>::new()
        );

        assert_eq!(index.correlated(C1, 0, 0).unwrap(), Vec::<u64>::new());
        assert_eq!(index.correlated(C1, 0, 2).unwrap(), vec![1, 2]);
        assert_eq!(index.correlated(C1, 2, 2).unwrap(), vec![5, 7]);
        assert_eq!(index.correlated(C1, 7, 2).unwrap(), vec![9, 12]);
        assert_eq!(index.correlated(C1, 12, 2).unwrap(), Vec::<u64>::new());
        assert_eq!(
            index.correlated(C1, u64::MAX, 2).unwrap(),
            Vec::<u64>::new()
        );

        // Paging a stream by version: after version 2, two at a time.
        assert_eq!(index.stream_seqs("a", 0, 0).unwrap(), Vec::<u64>::new());
        assert_eq!(index.stream_seqs("a", 2, 2).unwrap(), vec![5, 7]);
        assert_eq!(index.stream_seqs("a", 4, 2).unwrap(), vec![9, 11]);
        assert_eq!(index.stream_seqs("a", 6, 2).unwrap(), Vec::<u64>::new());
        assert_eq!(
            index.stream_seqs("a", u64::MAX, 2).unwrap(),
            Vec::<u64>::new()
        );
        assert_eq!(index.stream_seqs("ab", 1, 100).unwrap(), vec![8, 12]);
    }

    #[test]
    fn frame_at_or_before_finds_the_nearest_start() {
        let dir = TestDir::new("frames");
        let index = indexed_known_log(&dir.file());
        // The frames start at 1, 5, 9 (every fourth seq) and at each
        // batch's last seq: 5, 9, 12.
        assert_eq!(
            index.dump().unwrap().frames,
            vec![frame(1), frame(5), frame(9), frame(12)]
        );
        assert_eq!(index.frame_at_or_before(0).unwrap(), None);
        assert_eq!(index.frame_at_or_before(1).unwrap(), Some(frame(1)));
        assert_eq!(index.frame_at_or_before(4).unwrap(), Some(frame(1)));
        assert_eq!(index.frame_at_or_before(5).unwrap(), Some(frame(5)));
        assert_eq!(index.frame_at_or_before(11).unwrap(), Some(frame(9)));
        assert_eq!(index.frame_at_or_before(12).unwrap(), Some(frame(12)));
        assert_eq!(index.frame_at_or_before(u64::MAX).unwrap(), Some(frame(12)));

        // A later frame with the same first seq keeps the earlier position.
        let later = FramePosition {
            first_seq: 12,
            segment: 9,
            offset: 9,
        };
        index
            .apply(&IndexBatch {
                events: Vec::new(),
                idempotency: Vec::new(),
                frames: vec![later],
                checkpoint: checkpoint_at(12),
            })
            .unwrap();
        assert_eq!(index.frame_at_or_before(12).unwrap(), Some(frame(12)));
    }

    #[test]
    fn a_repeated_id_keeps_its_first_seq_and_never_stops_the_index() {
        let dir = TestDir::new("repeated-id");
        let index = open(&dir.file());
        let batches = known_batches();
        index.apply(&batches[0]).unwrap();
        let mut repeated = batches[1].clone();
        repeated.events[3].id = id(2);
        index.apply(&repeated).unwrap();
        assert_eq!(index.seq_of_id(id(2)).unwrap(), Some(2));
        assert_eq!(index.checkpoint().unwrap(), Some(checkpoint_at(9)));
    }

    #[test]
    fn a_failing_batch_leaves_nothing_behind() {
        let dir = TestDir::new("atomic");
        let index = open(&dir.file());
        let batches = known_batches();
        index.apply(&batches[0]).unwrap();
        let before = index.dump().unwrap();

        // The last entry (seq 9) repeats version 3 of stream `a` (seq 5's):
        // apply fails after it has written the rows of the first three, and
        // the transaction must take them all back.
        let mut bad = batches[1].clone();
        bad.events[3].version = 3;
        assert!(matches!(
            index.apply(&bad),
            Err(IndexError::InvalidRequest(message)) if message.contains("version 3")
        ));
        assert_eq!(index.dump().unwrap(), before);
        assert_eq!(index.seq_of_id(id(6)).unwrap(), None);

        // The good batch still applies, and everything shows at once.
        index.apply(&batches[1]).unwrap();
        assert_eq!(index.checkpoint().unwrap(), Some(checkpoint_at(9)));
        assert_eq!(index.seq_of_id(id(9)).unwrap(), Some(9));
    }

    #[test]
    fn apply_takes_only_batches_that_continue_the_index() {
        let dir = TestDir::new("order");
        let index = open(&dir.file());
        let batches = known_batches();

        // The first batch must start at seq 1.
        assert!(matches!(
            index.apply(&batches[1]),
            Err(IndexError::InvalidRequest(_))
        ));
        index.apply(&batches[0]).unwrap();
        // The same batch again (a replay from a wrong checkpoint).
        assert!(matches!(
            index.apply(&batches[0]),
            Err(IndexError::InvalidRequest(_))
        ));
        // A gap: seqs 10..=12 after 5.
        assert!(matches!(
            index.apply(&batches[2]),
            Err(IndexError::InvalidRequest(_))
        ));
        // A checkpoint that is not at the last event.
        let mut wrong_checkpoint = batches[1].clone();
        wrong_checkpoint.checkpoint.seq = 8;
        assert!(matches!(
            index.apply(&wrong_checkpoint),
            Err(IndexError::InvalidRequest(_))
        ));
        // A time before the last indexed one (300 at seq 5).
        let mut earlier_time = batches[1].clone();
        earlier_time.events[0].time_micros = 299;
        assert!(matches!(
            index.apply(&earlier_time),
            Err(IndexError::InvalidRequest(message)) if message.contains("before")
        ));
        // Stream version 0.
        let mut version_zero = batches[1].clone();
        version_zero.events[0].version = 0;
        assert!(matches!(
            index.apply(&version_zero),
            Err(IndexError::InvalidRequest(_))
        ));
        assert_eq!(index.checkpoint().unwrap(), Some(checkpoint_at(5)));

        // A batch without events (an idempotency record alone) moves the
        // checkpoint's position, not its seq.
        let moved = Checkpoint {
            offset: 555,
            ..checkpoint_at(5)
        };
        index
            .apply(&IndexBatch {
                events: Vec::new(),
                idempotency: vec![("alone", b"only a key".as_slice())],
                frames: Vec::new(),
                checkpoint: moved,
            })
            .unwrap();
        assert_eq!(index.checkpoint().unwrap(), Some(moved));
        assert_eq!(
            index.idempotency("alone").unwrap(),
            Some(b"only a key".to_vec())
        );
        index.apply(&batches[1]).unwrap();
        index.apply(&batches[2]).unwrap();
        assert_eq!(index.checkpoint().unwrap(), Some(checkpoint_at(12)));
    }

    #[test]
    fn reopen_after_make_durable_keeps_everything() {
        let dir = TestDir::new("reopen");
        let index = indexed_known_log(&dir.file());
        index
            .save_snapshot(9, &[("p".to_string(), vec![9])])
            .unwrap();
        index.make_durable().unwrap();
        let dump = index.dump().unwrap();
        drop(index);

        let index = open(&dir.file());
        assert_eq!(index.dump().unwrap(), dump);
        assert_eq!(index.checkpoint().unwrap(), Some(checkpoint_at(12)));
        assert_eq!(
            index.stream_seqs("a", 0, 100).unwrap(),
            vec![1, 3, 5, 7, 9, 11]
        );
        assert_eq!(index.snapshot_seqs().unwrap(), vec![9]);

        // New streams after the reopen are numbered after the old ones.
        index
            .apply(&IndexBatch {
                events: vec![entry(13, "c", 1, 700, None, None)],
                idempotency: Vec::new(),
                frames: Vec::new(),
                checkpoint: checkpoint_at(13),
            })
            .unwrap();
        assert!(index
            .dump()
            .unwrap()
            .streams
            .contains(&("c".to_string(), 3, 1)));
        index.close().unwrap();
        let index = open(&dir.file());
        assert_eq!(index.stream_seqs("c", 0, 10).unwrap(), vec![13]);
    }

    #[test]
    fn a_clean_close_keeps_batches_without_make_durable() {
        let dir = TestDir::new("close");
        let index = indexed_known_log(&dir.file());
        let dump = index.dump().unwrap();
        index.close().unwrap();
        assert_eq!(open(&dir.file()).dump().unwrap(), dump);
    }

    /// A storage backend in memory that can be "crashed": it keeps what was
    /// written and what was last synced apart, so that a test can reopen the
    /// disk as a power loss leaves it (only synced bytes) or as a killed
    /// process leaves it (every write, without redb's close).
    #[derive(Debug, Clone, Default)]
    struct CrashableDisk(Arc<Mutex<DiskBytes>>);

    #[derive(Debug, Default)]
    struct DiskBytes {
        written: Vec<u8>,
        synced: Vec<u8>,
    }

    impl CrashableDisk {
        fn with_bytes(bytes: Vec<u8>) -> CrashableDisk {
            CrashableDisk(Arc::new(Mutex::new(DiskBytes {
                written: bytes.clone(),
                synced: bytes,
            })))
        }

        /// The disk after the machine lost power: only synced bytes.
        fn after_power_loss(&self) -> CrashableDisk {
            CrashableDisk::with_bytes(self.0.lock().unwrap().synced.clone())
        }

        /// The disk after the process was killed: every write reached the
        /// operating system, but redb never closed the file.
        fn after_process_kill(&self) -> CrashableDisk {
            CrashableDisk::with_bytes(self.0.lock().unwrap().written.clone())
        }
    }

    impl redb::StorageBackend for CrashableDisk {
        fn len(&self) -> Result<u64, std::io::Error> {
            Ok(self.0.lock().unwrap().written.len() as u64)
        }

        fn read(&self, offset: u64, out: &mut [u8]) -> Result<(), std::io::Error> {
            let disk = self.0.lock().unwrap();
            let start = offset as usize;
            let bytes = disk.written.get(start..start + out.len()).ok_or_else(|| {
                std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "read past the end")
            })?;
            out.copy_from_slice(bytes);
            Ok(())
        }

        fn set_len(&self, len: u64) -> Result<(), std::io::Error> {
            self.0.lock().unwrap().written.resize(len as usize, 0);
            Ok(())
        }

        fn sync_data(&self) -> Result<(), std::io::Error> {
            let mut disk = self.0.lock().unwrap();
            disk.synced = disk.written.clone();
            Ok(())
        }

        fn write(&self, offset: u64, data: &[u8]) -> Result<(), std::io::Error> {
            let mut disk = self.0.lock().unwrap();
            let end = offset as usize + data.len();
            if disk.written.len() < end {
                disk.written.resize(end, 0);
            }
            disk.written[offset as usize..end].copy_from_slice(data);
            Ok(())
        }
    }

    /// Ends an index the way a crash does: redb's close never runs.
    fn crash(index: IndexDb) {
        std::mem::forget(index);
    }

    #[test]
    fn a_crash_loses_only_the_batches_after_the_last_durable_commit() {
        for (kind, after_crash) in [
            (
                "power loss",
                CrashableDisk::after_power_loss as fn(&CrashableDisk) -> CrashableDisk,
            ),
            ("process kill", CrashableDisk::after_process_kill),
        ] {
            let disk = CrashableDisk::default();
            let index = IndexDb::open_backend(disk.clone(), small_config()).unwrap();
            let batches = known_batches();
            index.apply(&batches[0]).unwrap();
            index.apply(&batches[1]).unwrap();
            index.make_durable().unwrap();
            let durable = index.dump().unwrap();
            index.apply(&batches[2]).unwrap();
            let full = index.dump().unwrap();
            assert_eq!(index.checkpoint().unwrap(), Some(checkpoint_at(12)));
            crash(index);

            let index = IndexDb::open_backend(after_crash(&disk), small_config()).unwrap();
            assert_eq!(index.dump().unwrap(), durable, "{kind}");
            assert_eq!(
                index.checkpoint().unwrap(),
                Some(checkpoint_at(9)),
                "{kind}"
            );
            assert_eq!(index.seq_of_id(id(10)).unwrap(), None, "{kind}");
            assert_eq!(index.stream_version("a").unwrap(), 5, "{kind}");
            // Replaying the log from the checkpoint restores the rest.
            index.apply(&batches[2]).unwrap();
            assert_eq!(index.dump().unwrap(), full, "{kind}");
        }
    }

    #[test]
    fn a_crash_before_any_durable_commit_leaves_an_empty_index() {
        let disk = CrashableDisk::default();
        let index = IndexDb::open_backend(disk.clone(), small_config()).unwrap();
        index
            .save_snapshot(3, &[("p".to_string(), vec![3])])
            .unwrap();
        index.clear_indexes().unwrap();
        apply_all(&index, &known_batches());
        crash(index);
        let index = IndexDb::open_backend(disk.after_power_loss(), small_config()).unwrap();
        assert_eq!(index.dump().unwrap(), IndexDump::default());
        assert_eq!(index.snapshot_seqs().unwrap(), vec![3]);
    }

    #[test]
    fn a_snapshot_makes_the_batches_before_it_durable() {
        let disk = CrashableDisk::default();
        let index = IndexDb::open_backend(disk.clone(), small_config()).unwrap();
        let batches = known_batches();
        index.apply(&batches[0]).unwrap();
        index
            .save_snapshot(5, &[("p".to_string(), vec![5])])
            .unwrap();
        index.apply(&batches[1]).unwrap();
        crash(index);
        let index = IndexDb::open_backend(disk.after_power_loss(), small_config()).unwrap();
        assert_eq!(index.checkpoint().unwrap(), Some(checkpoint_at(5)));
        assert_eq!(index.snapshot_part(5, "p").unwrap(), Some(vec![5]));
    }

    #[test]
    fn clear_indexes_then_reapply_gives_an_equal_dump() {
        let dir = TestDir::new("rebuild");
        let index = indexed_known_log(&dir.file());
        index
            .save_snapshot(7, &[("p".to_string(), vec![7])])
            .unwrap();
        let incremental = index.dump().unwrap();

        index.clear_indexes().unwrap();
        assert_eq!(index.dump().unwrap(), IndexDump::default());
        assert_eq!(index.checkpoint().unwrap(), None);
        assert_eq!(index.seq_of_id(id(1)).unwrap(), None);
        assert_eq!(index.stream_versions().unwrap(), Vec::new());
        assert_eq!(index.snapshot_seqs().unwrap(), vec![7], "snapshots stay");

        apply_all(&index, &known_batches());
        assert_eq!(index.dump().unwrap(), incremental);

        // Other batch boundaries give the same rows (the frames are the
        // log's, so they are passed along unchanged).
        index.clear_indexes().unwrap();
        let log = known_log();
        let mut first = batch_of(&log, 1, 2);
        let mut second = batch_of(&log, 3, 12);
        first.frames = incremental.frames.clone();
        second.frames.clear();
        first.idempotency.clear();
        second.idempotency = vec![
            ("key-1", b"record".as_slice()),
            ("key-6", b"record".as_slice()),
            ("key-10", b"record".as_slice()),
        ];
        index.apply(&first).unwrap();
        index.apply(&second).unwrap();
        assert_eq!(index.dump().unwrap(), incremental);

        // And the dump does tell indexes apart.
        index.clear_indexes().unwrap();
        let batches = known_batches();
        index.apply(&batches[0]).unwrap();
        index.apply(&batches[1]).unwrap();
        assert_ne!(index.dump().unwrap(), incremental);
    }

    #[test]
    fn the_dump_includes_the_checkpoint_position() {
        let dir = TestDir::new("dump-position");
        let index = indexed_known_log(&dir.file());
        let before = index.dump().unwrap();
        let moved = Checkpoint {
            segment: 99,
            ..checkpoint_at(12)
        };
        index
            .apply(&IndexBatch {
                events: Vec::new(),
                idempotency: Vec::new(),
                frames: Vec::new(),
                checkpoint: moved,
            })
            .unwrap();
        let after = index.dump().unwrap();
        assert_ne!(after, before);
        assert_eq!(after.checkpoint, Some(moved));
    }

    #[test]
    fn snapshots_round_trip_and_sort() {
        let dir = TestDir::new("snapshots");
        let index = open(&dir.file());
        let big: Vec<u8> = (0..300_000).map(|i| (i % 251) as u8).collect();
        let saved = vec![
            ("b".to_string(), vec![2]),
            (String::new(), vec![0]),
            ("a".to_string(), big.clone()),
            ("ab".to_string(), Vec::new()),
        ];
        index.save_snapshot(20, &saved).unwrap();
        index
            .save_snapshot(10, &[("a".to_string(), vec![1])])
            .unwrap();
        index
            .save_snapshot(u64::MAX, &[("x".to_string(), vec![3])])
            .unwrap();
        index.save_snapshot(30, &[]).unwrap();
        assert_eq!(index.snapshot_seqs().unwrap(), vec![10, 20, 30, u64::MAX]);

        assert_eq!(index.snapshot_part(20, "a").unwrap(), Some(big.clone()));
        assert_eq!(index.snapshot_part(20, "ab").unwrap(), Some(Vec::new()));
        assert_eq!(index.snapshot_part(20, "").unwrap(), Some(vec![0]));
        assert_eq!(index.snapshot_part(20, "c").unwrap(), None);
        assert_eq!(index.snapshot_part(15, "a").unwrap(), None);
        assert_eq!(index.snapshot_part(10, "a").unwrap(), Some(vec![1]));
        let mut by_name = saved.clone();
        by_name.sort();
        assert_eq!(index.snapshot_parts(20).unwrap(), by_name);
        assert_eq!(index.snapshot_parts(30).unwrap(), Vec::new());
        assert_eq!(index.snapshot_parts(31).unwrap(), Vec::new());
        assert_eq!(
            index.snapshot_parts(u64::MAX).unwrap(),
            vec![("x".to_string(), vec![3])]
        );

        // Saved again at the same seq, smaller: no part of the old one stays,
        // and the neighbours are untouched.
        index
            .save_snapshot(20, &[("a".to_string(), vec![7; 10])])
            .unwrap();
        assert_eq!(
            index.snapshot_parts(20).unwrap(),
            vec![("a".to_string(), vec![7; 10])]
        );
        assert_eq!(index.snapshot_part(20, "b").unwrap(), None);
        assert_eq!(
            index.snapshot_parts(10).unwrap(),
            vec![("a".to_string(), vec![1])]
        );
        index.save_snapshot(u64::MAX, &[]).unwrap();
        assert_eq!(index.snapshot_parts(u64::MAX).unwrap(), Vec::new());

        // A name given twice is refused, and changes nothing.
        let twice = vec![("a".to_string(), vec![1]), ("a".to_string(), vec![2])];
        assert!(matches!(
            index.save_snapshot(40, &twice),
            Err(IndexError::InvalidRequest(_))
        ));
        assert_eq!(index.snapshot_seqs().unwrap(), vec![10, 20, 30, u64::MAX]);

        // Snapshots are not in the dump, and survive a reopen.
        assert_eq!(index.dump().unwrap(), IndexDump::default());
        drop(index);
        let index = open(&dir.file());
        assert_eq!(
            index.snapshot_parts(20).unwrap(),
            vec![("a".to_string(), vec![7; 10])]
        );
    }

    #[test]
    fn a_file_that_is_not_redb_is_damaged() {
        let dir = TestDir::new("not-redb");
        std::fs::write(dir.file(), vec![0x42; 10_000]).unwrap();
        assert!(matches!(
            IndexDb::open(&dir.file(), small_config()),
            Err(IndexError::Damaged(_))
        ));
    }

    #[test]
    fn an_empty_file_becomes_a_new_index() {
        let dir = TestDir::new("empty-file");
        std::fs::write(dir.file(), []).unwrap();
        assert_eq!(open(&dir.file()).checkpoint().unwrap(), None);
    }

    #[test]
    fn an_unknown_format_version_is_damaged() {
        let dir = TestDir::new("format");
        drop(open(&dir.file()));
        {
            let db = Database::create(dir.file()).unwrap();
            let txn = db.begin_write().unwrap();
            txn.open_table(META)
                .unwrap()
                .insert(FORMAT_VERSION_ROW, &99_u32.to_be_bytes()[..])
                .unwrap();
            txn.commit().unwrap();
        }
        match IndexDb::open(&dir.file(), small_config()) {
            Err(IndexError::Damaged(reason)) => assert!(reason.contains("format"), "{reason}"),
            other => panic!("expected Damaged, got {other:?}"),
        }
    }

    #[test]
    fn a_redb_file_of_something_else_is_damaged() {
        // A redb file with tables but no format-version row.
        let dir = TestDir::new("other-redb");
        {
            let db = Database::create(dir.file()).unwrap();
            let txn = db.begin_write().unwrap();
            let other: TableDefinition<u64, u64> = TableDefinition::new("other");
            txn.open_table(other).unwrap().insert(1, 2).unwrap();
            txn.commit().unwrap();
        }
        match IndexDb::open(&dir.file(), small_config()) {
            Err(IndexError::Damaged(reason)) => {
                assert!(reason.contains("no format version"), "{reason}")
            }
            other => panic!("expected Damaged, got {other:?}"),
        }

        // The right format row, but a table missing.
        let dir = TestDir::new("missing-table");
        drop(open(&dir.file()));
        {
            let db = Database::create(dir.file()).unwrap();
            let txn = db.begin_write().unwrap();
            txn.delete_table(FRAMES).unwrap();
            txn.commit().unwrap();
        }
        match IndexDb::open(&dir.file(), small_config()) {
            Err(IndexError::Damaged(reason)) => assert!(reason.contains("frames"), "{reason}"),
            other => panic!("expected Damaged, got {other:?}"),
        }

        // A table with other key or value types.
        let dir = TestDir::new("retyped-table");
        drop(open(&dir.file()));
        {
            let db = Database::create(dir.file()).unwrap();
            let txn = db.begin_write().unwrap();
            txn.delete_table(CAUSES).unwrap();
            let retyped: TableDefinition<u64, u64> = TableDefinition::new("causes");
            txn.open_table(retyped).unwrap();
            txn.commit().unwrap();
        }
        match IndexDb::open(&dir.file(), small_config()) {
            Err(IndexError::Damaged(reason)) => assert!(reason.contains("causes"), "{reason}"),
            other => panic!("expected Damaged, got {other:?}"),
        }
    }

    /// Overwrites `bytes.len()` bytes of the file where `marker` is, which
    /// is inside a page that a table uses (not a free page).
    fn overwrite_marker(path: &Path, marker: &[u8], bytes: &[u8]) {
        let mut file = std::fs::read(path).unwrap();
        let at = file
            .windows(marker.len())
            .position(|window| window == marker)
            .expect("the marker is in the file");
        assert!(at > 4096, "the marker is past redb's header, at {at}");
        file[at..at + bytes.len()].copy_from_slice(bytes);
        std::fs::write(path, file).unwrap();
    }

    /// An index whose idempotency record holds a marker that a test can
    /// find in the file, closed cleanly.
    fn index_with_marker(path: &Path, marker: &[u8]) {
        let index = indexed_known_log(path);
        index
            .apply(&IndexBatch {
                events: Vec::new(),
                idempotency: vec![("marked", marker)],
                frames: Vec::new(),
                checkpoint: checkpoint_at(12),
            })
            .unwrap();
        index.close().unwrap();
    }

    #[test]
    fn corrupted_bytes_in_a_used_page_are_damaged_when_verified() {
        let marker = [0xE7_u8; 48];
        let dir = TestDir::new("corrupt");
        index_with_marker(&dir.file(), &marker);
        overwrite_marker(&dir.file(), &marker, &[0x11; 48]);

        // Verified at open (the default): the page fails its checksum.
        match IndexDb::open(&dir.file(), small_config()) {
            Err(IndexError::Damaged(reason)) => assert!(reason.contains("corrupt"), "{reason}"),
            other => panic!("expected Damaged, got {other:?}"),
        }

        // Not verified: redb trusts a cleanly closed file, and the read
        // returns the damaged bytes as if they were the record.
        let unverified = IndexConfig {
            verify_on_open: false,
            ..small_config()
        };
        let index = IndexDb::open(&dir.file(), unverified).unwrap();
        assert_eq!(index.idempotency("marked").unwrap(), Some(vec![0x11; 48]));
    }

    #[test]
    fn a_corrupted_page_structure_is_damaged_when_verified() {
        // Garbage over the whole page that holds the marker (its header
        // too), which a plain open would trip over.
        let marker = [0xE8_u8; 48];
        let dir = TestDir::new("corrupt-page");
        index_with_marker(&dir.file(), &marker);
        let mut file = std::fs::read(dir.file()).unwrap();
        let at = file
            .windows(marker.len())
            .position(|window| window == marker)
            .unwrap();
        let page = at / 4096 * 4096;
        for (offset, byte) in file[page..page + 4096].iter_mut().enumerate() {
            *byte = (offset * 31 % 251) as u8;
        }
        std::fs::write(dir.file(), file).unwrap();
        assert!(matches!(
            IndexDb::open(&dir.file(), small_config()),
            Err(IndexError::Damaged(_))
        ));
    }

    #[test]
    fn a_snapshot_part_is_stored_compressed_and_read_back_whole() {
        let part: Vec<u8> = b"subnet-a subnet-b subnet-c ".repeat(100);
        let packed = pack_snapshot_part(&part);
        assert!(packed.len() < part.len() / 4, "{} bytes", packed.len());
        assert_eq!(unpack_snapshot_part(7, "x", &packed).unwrap(), part);
        assert_eq!(
            unpack_snapshot_part(7, "x", &pack_snapshot_part(&[])).unwrap(),
            b""
        );

        // A length the bytes do not fill, a huge length, and no length at
        // all are damage that names the part, never a panic or a huge
        // allocation.
        let mut wrong_length = packed.clone();
        wrong_length[..4].copy_from_slice(&(part.len() as u32 + 1).to_le_bytes());
        let mut huge_length = packed.clone();
        huge_length[..4].copy_from_slice(&u32::MAX.to_le_bytes());
        for stored in [wrong_length, huge_length, vec![1, 2]] {
            match unpack_snapshot_part(7, "x", &stored) {
                Err(IndexError::Damaged(reason)) => {
                    assert!(reason.contains("\"x\" of snapshot 7"), "{reason}")
                }
                other => panic!("expected Damaged, got {other:?}"),
            }
        }
    }

    #[test]
    fn a_second_open_of_the_same_file_is_in_use() {
        let dir = TestDir::new("in-use");
        let index = open(&dir.file());
        assert!(matches!(
            IndexDb::open(&dir.file(), small_config()),
            Err(IndexError::InUse(_))
        ));
        drop(index);
        open(&dir.file());
    }

    #[test]
    fn readers_on_many_threads_see_whole_batches_while_one_thread_applies() {
        const BATCHES: u64 = 60;
        const PER_BATCH: u64 = 7;
        let dir = TestDir::new("threads");
        let index = Arc::new(open(&dir.file()));
        let done = Arc::new(AtomicBool::new(false));
        let streams = ["s0", "s1", "s2"];

        let readers: Vec<_> = (0..3)
            .map(|_| {
                let index = Arc::clone(&index);
                let done = Arc::clone(&done);
                std::thread::spawn(move || {
                    let mut last_seen = 0;
                    let mut reads = 0;
                    while !done.load(Ordering::Acquire) || reads == 0 {
                        let Some(checkpoint) = index.checkpoint().unwrap() else {
                            continue;
                        };
                        assert!(checkpoint.seq >= last_seen, "the checkpoint went back");
                        last_seen = checkpoint.seq;
                        // Whatever a later read sees includes this batch whole.
                        assert_eq!(
                            index.seq_of_id(id(checkpoint.seq)).unwrap(),
                            Some(checkpoint.seq)
                        );
                        assert!(
                            index.seq_at_time(checkpoint.seq as i64).unwrap() >= checkpoint.seq
                        );
                        let total: u64 = index
                            .stream_versions()
                            .unwrap()
                            .iter()
                            .map(|(_, version)| version)
                            .sum();
                        assert!(total >= checkpoint.seq);
                        reads += 1;
                    }
                    reads
                })
            })
            .collect();

        let mut versions = [0_u64; 3];
        for batch in 0..BATCHES {
            let mut events = Vec::new();
            for seq in batch * PER_BATCH + 1..=(batch + 1) * PER_BATCH {
                let stream = (seq % 3) as usize;
                versions[stream] += 1;
                events.push(IndexEntry {
                    seq,
                    id: id(seq),
                    stream: streams[stream],
                    version: versions[stream],
                    time_micros: seq as i64,
                    causing_seq: None,
                    correlation: None,
                });
            }
            let last = (batch + 1) * PER_BATCH;
            index
                .apply(&IndexBatch {
                    events,
                    idempotency: Vec::new(),
                    frames: Vec::new(),
                    checkpoint: checkpoint_at(last),
                })
                .unwrap();
            if batch % 10 == 9 {
                index.make_durable().unwrap();
            }
        }
        done.store(true, Ordering::Release);
        for reader in readers {
            assert!(reader.join().unwrap() > 0);
        }
        assert_eq!(
            index.checkpoint().unwrap().map(|checkpoint| checkpoint.seq),
            Some(BATCHES * PER_BATCH)
        );
    }

    #[test]
    fn layout_encodings_sort_numerically() {
        assert!(time_key(i64::MIN) < time_key(-1));
        assert!(time_key(-1) < time_key(0));
        assert!(time_key(0) < time_key(1));
        assert!(time_key(1) < time_key(i64::MAX));
        for time in [i64::MIN, -1, 0, 1, i64::MAX] {
            assert_eq!(time_from_key(time_key(time)), time);
        }
        assert!(pair_key(1, u64::MAX) < pair_key(2, 0));
        assert!(stream_event_key(0, u64::MAX) < stream_event_key(1, 0));
        assert_eq!(
            decode_checkpoint(&encode_checkpoint(&checkpoint_at(77))).unwrap(),
            checkpoint_at(77)
        );
        assert!(matches!(
            decode_checkpoint(&[0; 10]),
            Err(IndexError::Damaged(_))
        ));
    }
}
