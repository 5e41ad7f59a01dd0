//! The in-memory backend: the contract with nothing on disk.
//!
//! It keeps the same rules as the embedded log (they live in `rules.rs`) and
//! passes the same contract suite (`contract_tests.rs`), so a test of a layer
//! above the store can run without a data directory, and the contract suite
//! has a second implementation to keep it honest. "Durable" here means "in
//! the shared state": a store reopened over the same `MemoryData` sees every
//! event the first one acknowledged, the way a restart sees the disk.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use tokio::sync::broadcast;
use uuid::Uuid;

use super::metrics::StoreMetrics;
use super::rules::{self, Tail};
use super::{
    AppendOutcome, AppendRequest, Clock, EventIndex, EventLog, Head, IdempotencyRecord,
    SnapshotStore, StoreAdmin, StoreError, VerifyReport,
};
use crate::event::{ChainCursor, Event, GENESIS_HASH};

/// Everything a memory store holds; shared by the stores opened over it.
#[derive(Debug, Default)]
pub struct MemoryData {
    events: Vec<Arc<Event>>,
    /// Seqs of each stream's events, in version order.
    streams: HashMap<String, Vec<u64>>,
    idempotency: HashMap<String, IdempotencyRecord>,
    snapshots: BTreeMap<u64, BTreeMap<String, Vec<u8>>>,
}

impl MemoryData {
    fn tail(&self) -> Tail {
        match self.events.last() {
            Some(last) => Tail {
                head: Head {
                    seq: last.seq,
                    hash: last.hash,
                },
                last_time: Some(last.time),
            },
            None => Tail {
                head: Head {
                    seq: 0,
                    hash: GENESIS_HASH,
                },
                last_time: None,
            },
        }
    }

    fn stream_version(&self, stream: &str) -> u64 {
        self.streams.get(stream).map_or(0, |seqs| seqs.len() as u64)
    }

    fn events_in(&self, first_seq: u64, last_seq: u64) -> Vec<Arc<Event>> {
        if first_seq == 0 || first_seq > last_seq {
            return Vec::new();
        }
        self.events[(first_seq - 1) as usize..last_seq as usize].to_vec()
    }

    fn store(&mut self, events: &[Arc<Event>]) {
        for event in events {
            self.streams
                .entry(event.stream.clone())
                .or_default()
                .push(event.seq);
            self.events.push(event.clone());
        }
    }
}

/// How to open a memory store.
#[derive(Clone)]
pub struct MemoryStoreConfig {
    pub max_record_bytes: usize,
    pub broadcast_capacity: usize,
    pub clock: Clock,
}

impl Default for MemoryStoreConfig {
    fn default() -> Self {
        MemoryStoreConfig {
            max_record_bytes: rules::MAX_RECORD_BYTES,
            broadcast_capacity: 4096,
            clock: Arc::new(Utc::now),
        }
    }
}

/// A store whose log lives in memory. See the module docs.
pub struct MemoryStore {
    data: Arc<Mutex<MemoryData>>,
    config: MemoryStoreConfig,
    /// `None` once closed.
    committed: Mutex<Option<broadcast::Sender<Arc<Event>>>>,
    metrics: StoreMetrics,
}

impl MemoryStore {
    /// A store over `data`: new data for a new log, the data of an earlier
    /// store to "restart" it.
    pub fn open(data: Arc<Mutex<MemoryData>>, config: MemoryStoreConfig) -> MemoryStore {
        let (committed, _) = broadcast::channel(config.broadcast_capacity);
        let metrics = StoreMetrics::default();
        metrics
            .head_seq
            .set(data.lock().expect("memory lock").tail().head.seq as i64);
        MemoryStore {
            data,
            config,
            committed: Mutex::new(Some(committed)),
            metrics,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, MemoryData> {
        self.data.lock().expect("memory lock")
    }

    fn publish(&self, events: &[Arc<Event>]) {
        if let Some(sender) = &*self.committed.lock().expect("committed lock") {
            for event in events {
                let _ = sender.send(event.clone());
            }
        }
    }

    fn is_closed(&self) -> bool {
        self.committed.lock().expect("committed lock").is_none()
    }
}

#[async_trait]
impl EventLog for MemoryStore {
    async fn append(&self, request: AppendRequest) -> Result<AppendOutcome, StoreError> {
        if self.is_closed() {
            return Err(StoreError::Closed);
        }
        self.metrics.append_requests.inc();
        rules::validate_request(&request)?;
        let mut data = self.lock();
        let earlier = request
            .idempotency
            .as_ref()
            .and_then(|idempotency| data.idempotency.get(&idempotency.key));
        if let Some(record) = rules::check_idempotency(&request, earlier)? {
            return Ok(AppendOutcome {
                events: data.events_in(record.first_seq, record.last_seq),
                stream_version: record.stream_version,
                deduplicated: true,
            });
        }
        let current = data.stream_version(&request.stream);
        let mut tail = data.tail();
        let sealed = rules::seal_request(
            request,
            current,
            &mut tail,
            (self.config.clock)(),
            self.config.max_record_bytes,
        )?;
        data.store(&sealed.events);
        if let Some((key, record)) = sealed.idempotency {
            data.idempotency.insert(key, record);
        }
        drop(data);
        self.metrics
            .events_appended
            .inc_by(sealed.events.len() as u64);
        self.metrics.head_seq.set(tail.head.seq as i64);
        self.publish(&sealed.events);
        Ok(AppendOutcome {
            events: sealed.events,
            stream_version: sealed.stream_version,
            deduplicated: false,
        })
    }

    async fn read(&self, after: u64, limit: usize) -> Result<Vec<Arc<Event>>, StoreError> {
        let data = self.lock();
        let first = after.saturating_add(1);
        let last = (data.events.len() as u64).min(after.saturating_add(limit as u64));
        Ok(data.events_in(first, last))
    }

    async fn read_stream(
        &self,
        stream: &str,
        after_version: u64,
        limit: usize,
    ) -> Result<Vec<Arc<Event>>, StoreError> {
        let data = self.lock();
        let Some(seqs) = data.streams.get(stream) else {
            return Ok(Vec::new());
        };
        Ok(seqs
            .iter()
            .skip(usize::try_from(after_version).unwrap_or(usize::MAX))
            .take(limit)
            .map(|seq| data.events[(*seq - 1) as usize].clone())
            .collect())
    }

    async fn stream_version(&self, stream: &str) -> Result<u64, StoreError> {
        Ok(self.lock().stream_version(stream))
    }

    async fn idempotency_record(&self, key: &str) -> Result<Option<IdempotencyRecord>, StoreError> {
        Ok(self.lock().idempotency.get(key).cloned())
    }

    fn head(&self) -> Head {
        self.lock().tail().head
    }

    fn max_record_bytes(&self) -> usize {
        self.config.max_record_bytes
    }

    fn subscribe_committed(&self) -> broadcast::Receiver<Arc<Event>> {
        match &*self.committed.lock().expect("committed lock") {
            Some(sender) => sender.subscribe(),
            None => broadcast::channel(1).1,
        }
    }
}

#[async_trait]
impl EventIndex for MemoryStore {
    async fn seq_of_id(&self, id: Uuid) -> Result<Option<u64>, StoreError> {
        Ok(self
            .lock()
            .events
            .iter()
            .find(|event| event.id == id)
            .map(|event| event.seq))
    }

    async fn seq_at_time(&self, time: DateTime<Utc>) -> Result<u64, StoreError> {
        let data = self.lock();
        // Times never decrease along the log, so the events at or before
        // `time` are a prefix.
        Ok(data.events.partition_point(|event| event.time <= time) as u64)
    }

    async fn caused_by(
        &self,
        cause_seq: u64,
        after: u64,
        limit: usize,
    ) -> Result<Vec<u64>, StoreError> {
        Ok(self
            .lock()
            .events
            .iter()
            .filter(|event| event.seq > after)
            .filter(|event| event.cause.causing_event().map(|(seq, _)| seq) == Some(cause_seq))
            .take(limit)
            .map(|event| event.seq)
            .collect())
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
        Ok(self
            .lock()
            .events
            .iter()
            .filter(|event| event.seq > after && event.correlation == correlation)
            .take(limit)
            .map(|event| event.seq)
            .collect())
    }
}

#[async_trait]
impl SnapshotStore for MemoryStore {
    async fn save_snapshot(
        &self,
        seq: u64,
        parts: Vec<(String, Vec<u8>)>,
    ) -> Result<(), StoreError> {
        self.lock()
            .snapshots
            .insert(seq, parts.into_iter().collect());
        Ok(())
    }

    async fn snapshot_seqs(&self) -> Result<Vec<u64>, StoreError> {
        Ok(self.lock().snapshots.keys().copied().collect())
    }

    async fn snapshot_part(&self, seq: u64, part: &str) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self
            .lock()
            .snapshots
            .get(&seq)
            .and_then(|parts| parts.get(part).cloned()))
    }

    async fn snapshot_parts(&self, seq: u64) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        Ok(self
            .lock()
            .snapshots
            .get(&seq)
            .map(|parts| {
                parts
                    .iter()
                    .map(|(name, bytes)| (name.clone(), bytes.clone()))
                    .collect()
            })
            .unwrap_or_default())
    }
}

#[async_trait]
impl StoreAdmin for MemoryStore {
    async fn verify(&self) -> Result<VerifyReport, StoreError> {
        let data = self.lock();
        let mut cursor = ChainCursor::default();
        let mut first_bad = None;
        for event in &data.events {
            if let Err(error) = cursor.check(event.seq, &event.encode_record()) {
                first_bad = Some(super::BadRecord {
                    seq: event.seq,
                    reason: error.to_string(),
                });
                break;
            }
        }
        let head = data.tail().head;
        Ok(VerifyReport {
            events_checked: cursor.last_seq,
            head_seq: head.seq,
            head_hash: hex::encode(head.hash),
            first_bad,
        })
    }

    async fn import(&self, events: Vec<Event>) -> Result<Head, StoreError> {
        if self.is_closed() {
            return Err(StoreError::Closed);
        }
        let mut data = self.lock();
        let mut tail = data.tail();
        let checked = {
            let data = &*data;
            rules::check_import(
                events,
                &mut tail,
                |stream| Ok(data.stream_version(stream)),
                self.config.max_record_bytes,
            )?
        };
        data.store(&checked.events);
        drop(data);
        self.publish(&checked.events);
        Ok(tail.head)
    }

    fn failure(&self) -> Option<String> {
        None
    }

    fn metrics(&self) -> &StoreMetrics {
        &self.metrics
    }

    async fn close(&self) {
        self.committed.lock().expect("committed lock").take();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The memory backend: "reopening" is a new store over the same data.
    struct MemoryBackend {
        data: Arc<Mutex<MemoryData>>,
    }

    impl crate::store::contract_tests::Backend for MemoryBackend {
        fn new() -> Self {
            MemoryBackend {
                data: Arc::default(),
            }
        }

        fn open(&self, clock: Clock) -> Arc<dyn crate::store::EventStore> {
            Arc::new(MemoryStore::open(
                self.data.clone(),
                MemoryStoreConfig {
                    clock,
                    ..MemoryStoreConfig::default()
                },
            ))
        }
    }

    crate::store::contract_tests::contract_suite!(MemoryBackend);
}
