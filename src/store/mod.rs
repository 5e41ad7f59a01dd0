//! The event store: its contract, split into the log, the indexes, the
//! snapshots and admin, and its backends.
//!
//! # Layout
//!
//! - `mod.rs`: the contract every backend keeps (`EventLog`, `EventIndex`,
//!   `SnapshotStore`, `StoreAdmin`, together `EventStore`), its request and
//!   result types, its errors, and `open`, the one place that picks a backend.
//! - `rules.rs`: the rules every backend keeps, as pure functions.
//! - `log_store.rs`: the embedded backend: the writer and indexer threads,
//!   reads, recovery at open, verification.
//! - `segment/`: the segment files of the log (docs/storage.md).
//! - `index.rs`: the derived indexes and snapshots in redb.
//! - `disk.rs` and `disk/sim.rs`: the file operations of the log, real and
//!   simulated (power loss, ENOSPC, EIO).
//! - `memory.rs`: the in-memory backend.
//! - `contract_tests.rs`: the suite every backend runs;
//!   `power_loss_tests.rs`: seeded crashes of the embedded backend.
//! - `subscription.rs`: catch-up subscriptions over any store (from a seq,
//!   then live, no gap, no duplicate); `read_ahead.rs`: pages read ahead of
//!   a fold.
//!
//! # The contract
//!
//! - `seq` is global, gap-free and starts at 1; `version` counts per stream from 1.
//! - `append` is atomic: all events of a request are stored, or none.
//! - `append` returns only after the events are on disk (fdatasync returned).
//! - An idempotency key is remembered for as long as the log exists. The same key
//!   with the same digest returns the original outcome and stores nothing; the same
//!   key with another digest is `StoreError::IdempotencyKeyReused`.
//! - Event time never decreases along the log.
//! - A new event whose cause is `Cause::Event { seq: 0, id }`, where `id` is
//!   an earlier event of the same request, is stored with that event's seq:
//!   a request can say "caused by my first event" before seqs are assigned.
//! - Events can be found by id, by time, by the event that caused them and by
//!   correlation id (indexes over envelope fields, derived from the log).
//! - Snapshots are opaque named parts stored under a seq, outside the hash
//!   chain; the caller encodes them and can always rebuild them from the log.
//!
//! The trait is shaped so a PostgreSQL store fits later: optimistic concurrency
//! is a `(stream, version)` uniqueness check, idempotency a keyed table, and
//! live delivery a notification that readers back with `read`.
//!
//! **Architecture Invariant:** the store knows nothing of clusters, manifests or
//! payload types. It moves envelopes with opaque payload bytes.

#[cfg(test)]
pub(crate) mod contract_tests;
pub mod disk;
pub mod index;
pub mod log_store;
pub mod memory;
pub mod metrics;
#[cfg(test)]
mod power_loss_tests;
pub mod read_ahead;
pub mod rules;
pub mod segment;
pub mod subscription;
#[cfg(test)]
pub(crate) mod test_support;

use std::path::PathBuf;
use std::sync::Arc;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;

use uuid::Uuid;

use crate::event::{Event, Hash, NewEvent};

pub use subscription::Subscription;

/// The stream version an append expects to find.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ExpectedVersion {
    /// No check.
    Any,
    /// The stream must not exist yet (version 0).
    NoStream,
    /// The stream must be at exactly this version.
    Exact(u64),
}

impl ExpectedVersion {
    pub(crate) fn admits(self, current: u64) -> bool {
        match self {
            ExpectedVersion::Any => true,
            ExpectedVersion::NoStream => current == 0,
            ExpectedVersion::Exact(version) => current == version,
        }
    }
}

/// A caller's idempotency key with a digest of what the request asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Idempotency {
    pub key: String,
    /// SHA-256 of the request content, as the caller defines it.
    pub digest: Hash,
}

/// One atomic append.
#[derive(Debug, Clone)]
pub struct AppendRequest {
    pub stream: String,
    pub expected: ExpectedVersion,
    /// May be empty: with an idempotency key, that records the key alone.
    pub events: Vec<NewEvent>,
    pub idempotency: Option<Idempotency>,
}

/// What an append did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppendOutcome {
    /// The stored events, in order (for a deduplicated request, the original ones).
    pub events: Vec<Arc<Event>>,
    /// The stream's version after the append.
    pub stream_version: u64,
    /// True when an earlier request with the same idempotency key answered this one.
    pub deduplicated: bool,
}

/// What the store remembers of an idempotency key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdempotencyRecord {
    pub digest: Hash,
    pub stream: String,
    /// The seqs the original request stored; `first_seq > last_seq` when it stored none.
    pub first_seq: u64,
    pub last_seq: u64,
    pub stream_version: u64,
}

/// The end of the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Head {
    pub seq: u64,
    pub hash: Hash,
}

/// The result of recomputing the hash chain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VerifyReport {
    pub events_checked: u64,
    pub head_seq: u64,
    pub head_hash: String,
    /// The first seq that fails, with the reason; None when the chain is intact.
    pub first_bad: Option<BadRecord>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BadRecord {
    pub seq: u64,
    pub reason: String,
}

impl VerifyReport {
    pub fn is_ok(&self) -> bool {
        self.first_bad.is_none()
    }
}

/// Store errors, classified by what a caller can do about them.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Deterministic: retrying the same request fails the same way until the
    /// caller rereads the stream.
    #[error("stream {stream} is at version {current}, the request expected {expected:?}")]
    WrongExpectedVersion {
        stream: String,
        expected: ExpectedVersion,
        current: u64,
    },
    /// Deterministic: the key was used for a different request.
    #[error("idempotency key {key:?} was already used for a different request")]
    IdempotencyKeyReused { key: String },
    /// Deterministic: the request itself is not storable.
    #[error("event {index} of the request is {size} bytes encoded, over the limit of {limit}")]
    EventTooLarge {
        index: usize,
        size: usize,
        limit: usize,
    },
    #[error("invalid request: {0}")]
    InvalidRequest(String),
    /// The log on disk is damaged; an operator must look.
    #[error("corrupt record at seq {seq}: {reason}")]
    Corrupt { seq: u64, reason: String },
    /// The disk failed before anything of the request was written.
    /// The writer stops taking appends after this.
    #[error("storage I/O: {0}")]
    Io(String),
    /// The request was written but its fdatasync failed: it may or may not be on
    /// disk. The writer stops taking appends; after a restart, retrying with the
    /// same idempotency key is safe.
    #[error("storage I/O failed after the write, its outcome is unknown: {0}")]
    OutcomeUnknown(String),
    /// The store is shutting down or has failed; retry against a healthy daemon.
    #[error("the store is closed")]
    Closed,
    /// An earlier write, fdatasync or index update failed (the reason), and
    /// the store takes no appends until the process restarts: retrying
    /// against this process fails the same way.
    #[error("the store stopped taking appends after a failure ({0}); restart the daemon once the cause is fixed")]
    Failed(String),
    /// Deterministic: an imported event does not chain onto the log.
    #[error("imported event {index} (seq {seq}) does not fit the log: {reason}")]
    ImportRejected {
        index: usize,
        seq: u64,
        reason: String,
    },
    #[error("the data directory {path} is in use by another process (is a daemon running? ask it instead)")]
    Locked { path: String },
    /// The log's files are damaged before their end: an operator must look.
    /// Nothing was cut or changed.
    #[error("the log is damaged in {path} at offset {offset}: {reason}")]
    DamagedLog {
        path: String,
        offset: u64,
        reason: String,
    },
    /// The data directory holds something this build cannot read.
    #[error("{0}")]
    WrongFormat(String),
}

impl StoreError {
    /// Whether the same request may succeed if simply retried later.
    pub fn is_retryable(&self) -> bool {
        matches!(self, StoreError::Io(_) | StoreError::Closed)
    }

    /// Whether the same request would fail the same way however often it is
    /// retried: the request is wrong, not the store. (Neither this nor
    /// `is_retryable`: the store is damaged, in use, or failed mid-write.)
    pub fn is_deterministic(&self) -> bool {
        matches!(
            self,
            StoreError::WrongExpectedVersion { .. }
                | StoreError::IdempotencyKeyReused { .. }
                | StoreError::EventTooLarge { .. }
                | StoreError::InvalidRequest(_)
                | StoreError::ImportRejected { .. }
        )
    }
}

/// A source of wall-clock time, injectable so tests can step it backwards.
pub type Clock = Arc<dyn Fn() -> DateTime<Utc> + Send + Sync>;

/// The log: appends, reads, and live delivery. See the module docs for the
/// contract.
#[async_trait]
pub trait EventLog: Send + Sync + 'static {
    /// Appends atomically and durably; see `AppendRequest`.
    async fn append(&self, request: AppendRequest) -> Result<AppendOutcome, StoreError>;

    /// Up to `limit` events with `seq > after`, in seq order.
    async fn read(&self, after: u64, limit: usize) -> Result<Vec<Arc<Event>>, StoreError>;

    /// The stored records of what `read` answers (the format byte and the
    /// encoding, which `Event::decode_record` and `EventRef::decode_record`
    /// read): a replay decodes them in place rather than allocate an
    /// `Event` for each. This default encodes `read`'s events; the log
    /// answers with the bytes it holds.
    async fn read_records(
        &self,
        after: u64,
        limit: usize,
    ) -> Result<Vec<bytes::Bytes>, StoreError> {
        Ok(self
            .read(after, limit)
            .await?
            .iter()
            .map(|event| bytes::Bytes::from(event.encode_record()))
            .collect())
    }

    /// Up to `limit` events of `stream` with `version > after_version`, in order.
    async fn read_stream(
        &self,
        stream: &str,
        after_version: u64,
        limit: usize,
    ) -> Result<Vec<Arc<Event>>, StoreError>;

    /// The current version of a stream (0 when it has no events).
    async fn stream_version(&self, stream: &str) -> Result<u64, StoreError>;

    /// What an idempotency key was used for, if it was.
    async fn idempotency_record(&self, key: &str) -> Result<Option<IdempotencyRecord>, StoreError>;

    /// The last durable event. (A store shared by several daemons will make
    /// this a read; today's single writer keeps it in memory.)
    fn head(&self) -> Head;

    /// The largest stored record the store accepts (`EventTooLarge` beyond).
    fn max_record_bytes(&self) -> usize;

    /// Events as they are committed by this process, after they are durable. A
    /// receiver that lags gets `RecvError::Lagged` and must catch up with
    /// `read`; `read` is the source of truth, the broadcast only a wake-up.
    fn subscribe_committed(&self) -> broadcast::Receiver<Arc<Event>>;
}

/// Lookups over envelope fields, derived from the log.
#[async_trait]
pub trait EventIndex: Send + Sync + 'static {
    /// The seq of the event with this id.
    async fn seq_of_id(&self, id: Uuid) -> Result<Option<u64>, StoreError>;

    /// The last seq whose time is at or before `time`; 0 when the log starts later.
    async fn seq_at_time(&self, time: DateTime<Utc>) -> Result<u64, StoreError>;

    /// Up to `limit` seqs after `after` of events whose cause names the event
    /// at `cause_seq` (`Cause::causing_event`), in order.
    async fn caused_by(
        &self,
        cause_seq: u64,
        after: u64,
        limit: usize,
    ) -> Result<Vec<u64>, StoreError>;

    /// Up to `limit` seqs after `after` of events with this correlation id, in order.
    async fn correlated(
        &self,
        correlation: Uuid,
        after: u64,
        limit: usize,
    ) -> Result<Vec<u64>, StoreError>;
}

/// Snapshots: opaque named parts stored under a seq, outside the hash chain.
#[async_trait]
pub trait SnapshotStore: Send + Sync + 'static {
    /// Stores a snapshot: named opaque parts, as of `seq`.
    async fn save_snapshot(
        &self,
        seq: u64,
        parts: Vec<(String, Vec<u8>)>,
    ) -> Result<(), StoreError>;

    /// The seqs of the stored snapshots, ascending.
    async fn snapshot_seqs(&self) -> Result<Vec<u64>, StoreError>;

    /// One part of the snapshot at `seq`, if that snapshot has it.
    async fn snapshot_part(&self, seq: u64, part: &str) -> Result<Option<Vec<u8>>, StoreError>;

    /// Every part of the snapshot at `seq`, sorted by name.
    async fn snapshot_parts(&self, seq: u64) -> Result<Vec<(String, Vec<u8>)>, StoreError>;
}

/// Verification, import, health and shutdown.
#[async_trait]
pub trait StoreAdmin: Send + Sync + 'static {
    /// Recomputes the whole hash chain.
    async fn verify(&self) -> Result<VerifyReport, StoreError>;

    /// Appends events exported from another log, exactly as they were (ids,
    /// times, hashes). Each must chain onto the head: the next seq, the head's
    /// hash as `prev_hash`, a hash that matches its content, a time not before
    /// the head's, and the next version of its stream. Atomic and durable like
    /// `append`; `StoreError::ImportRejected` names the first event that fails.
    async fn import(&self, events: Vec<Event>) -> Result<Head, StoreError>;

    /// Why the store stopped taking appends, if it did.
    fn failure(&self) -> Option<String>;

    /// The store's own metrics (`StoreMetrics::register` adds them to a
    /// Prometheus registry).
    fn metrics(&self) -> &metrics::StoreMetrics;

    /// Stops taking appends, finishes the ones queued, and syncs.
    async fn close(&self);
}

/// A whole store: what the daemon and the offline commands hold, as
/// `Arc<dyn EventStore>`. Every backend implements the four parts.
pub trait EventStore: EventLog + EventIndex + SnapshotStore + StoreAdmin {}

impl<T: EventLog + EventIndex + SnapshotStore + StoreAdmin> EventStore for T {}

/// How to open the store.
#[derive(Clone)]
pub struct StoreConfig {
    /// The data directory.
    pub data_dir: PathBuf,
    /// The most append requests one group commit takes.
    pub max_group_requests: usize,
    /// The largest encoded event record accepted.
    pub max_record_bytes: usize,
    /// How many committed events a slow subscriber may fall behind before it
    /// gets `Lagged` and must read from the store.
    pub broadcast_capacity: usize,
    /// The wall clock that stamps events.
    pub clock: Clock,
}

impl StoreConfig {
    pub fn new(data_dir: impl Into<PathBuf>) -> StoreConfig {
        StoreConfig {
            data_dir: data_dir.into(),
            max_group_requests: 4096,
            max_record_bytes: rules::MAX_RECORD_BYTES,
            broadcast_capacity: 4096,
            clock: Arc::new(Utc::now),
        }
    }
}

/// Opens (or creates) the embedded store in `config.data_dir`. The only
/// place outside the backends that knows which backend that is.
pub fn open(config: StoreConfig) -> Result<Arc<dyn EventStore>, StoreError> {
    Ok(Arc::new(log_store::LogStore::open(
        log_store::LogStoreConfig::new(config),
    )?))
}

/// [`open`] on tokio's blocking pool: opening reads the tail segment whole,
/// may cut a torn write and fsync, and catches the index up, none of which
/// may run on a runtime worker. What every async caller uses.
pub async fn open_off_runtime(config: StoreConfig) -> Result<Arc<dyn EventStore>, StoreError> {
    tokio::task::spawn_blocking(move || open(config))
        .await
        .map_err(|error| StoreError::Io(format!("opening the store: {error}")))?
}

/// Checks the hash chain of a data directory that no daemon holds, from seq
/// 1 to the head (`cairn verify --data-dir`). Opening it recovers it as a
/// daemon's start would (a torn last write is cut; damage before the end is
/// refused with `DamagedLog`, naming the file and offset).
pub async fn verify_offline(data_dir: &std::path::Path) -> Result<VerifyReport, StoreError> {
    require_a_log(data_dir)?;
    let mut config = log_store::LogStoreConfig::new(StoreConfig::new(data_dir));
    config.verify_in_background = false;
    // An operator's check reads every page of the index too; a damaged
    // index is rebuilt from the log by the open.
    config.verify_index_pages = true;
    let store = tokio::task::spawn_blocking(move || log_store::LogStore::open(config))
        .await
        .map_err(|error| StoreError::Io(format!("opening the store: {error}")))??;
    let report = store.verify().await;
    store.close().await;
    report
}

/// Whether `data_dir` holds a Cairn log (so it is a data directory, not an
/// empty or foreign one).
pub fn holds_a_log(data_dir: &std::path::Path) -> bool {
    data_dir.join("log").is_dir()
}

/// `Ok` when `data_dir` holds a Cairn log; otherwise why not, for the
/// offline commands (`verify`, `export`, `replay`), which never create one.
pub fn require_a_log(data_dir: &std::path::Path) -> Result<(), StoreError> {
    log_store::refuse_sled_directory(data_dir)?;
    if holds_a_log(data_dir) {
        Ok(())
    } else {
        Err(StoreError::InvalidRequest(format!(
            "{} is not a Cairn data directory (it holds no log)",
            data_dir.display()
        )))
    }
}

/// What `reindex_offline` did.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ReindexReport {
    pub events_indexed: u64,
    pub head_seq: u64,
    pub seconds: f64,
}

/// Empties the derived indexes of a data directory that no daemon holds and
/// builds them again from the log (`cairn reindex --data-dir`); snapshots
/// are kept (they are checked against the log when loaded). An index file
/// redb cannot open is deleted and made anew.
pub async fn reindex_offline(data_dir: &std::path::Path) -> Result<ReindexReport, StoreError> {
    require_a_log(data_dir)?;
    let started = std::time::Instant::now();
    let mut config = log_store::LogStoreConfig::new(StoreConfig::new(data_dir));
    config.verify_in_background = false;
    let store = tokio::task::spawn_blocking(move || {
        log_store::clear_index(&config)?;
        log_store::LogStore::open(config)
    })
    .await
    .map_err(|error| StoreError::Io(error.to_string()))??;
    let report = ReindexReport {
        events_indexed: store.indexed_seq()?,
        head_seq: store.head().seq,
        seconds: started.elapsed().as_secs_f64(),
    };
    store.close().await;
    Ok(report)
}
