//! The stored event: envelope, payload encoding, record format and hashing.
//!
//! # Layout
//!
//! - `Event` is the envelope every stored event carries (DESIGN.md, "Events").
//! - `payload` maps a `type` name and `schema` version to a typed payload and back.
//! - A stored record is one format byte (`RECORD_FORMAT_V1`) followed by the
//!   bincode (2.0.1, serde, standard config) encoding of the whole `Event`.
//! - `hash = SHA-256(prev_hash || canonical bytes)`, where the canonical bytes are
//!   the format byte followed by the bincode encoding of every envelope field
//!   except `prev_hash` and `hash`.
//!
//! **Architecture Invariant:** the record format only grows. A new field or a
//! new payload version means a new format byte or a new `schema` number with
//! an upcaster; the fixture log in `tests/fixtures/` must decode and verify in
//! every later version. This module knows nothing of HTTP or of storage.

mod cursor;
pub mod payload;

use chrono::{DateTime, TimeZone, Utc};

use cursor::Cursor;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use uuid::Uuid;

/// The first byte of every stored record. Bump it, and keep a decoder for
/// every older value, whenever the envelope changes shape.
pub const RECORD_FORMAT_V1: u8 = 1;

/// A SHA-256 digest.
pub type Hash = [u8; 32];

/// The hash that the first event of a log chains to.
pub const GENESIS_HASH: Hash = [0; 32];

/// Who caused an event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Actor {
    pub kind: ActorKind,
    /// For a user, the name of the bearer token (or the local user without tokens);
    /// for a webhook, the receiver name; for a reconciler, its name.
    pub name: String,
}

impl Actor {
    /// The webhook receiver `hook`, as the actor of what its deliveries record.
    pub fn webhook(hook: &str) -> Actor {
        Actor {
            kind: ActorKind::Webhook,
            name: hook.to_string(),
        }
    }
}

/// The kinds of actor. Append new kinds at the end only: bincode stores the index.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ActorKind {
    User,
    Webhook,
    Reconciler,
    System,
}

impl ActorKind {
    /// The kind's name, as JSON spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            ActorKind::User => "user",
            ActorKind::Webhook => "webhook",
            ActorKind::Reconciler => "reconciler",
            ActorKind::System => "system",
        }
    }
}

/// Why an event was written. Append new variants at the end only.
/// Field names affect only JSON: bincode stores no names, only variant indexes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case", rename_all_fields = "camelCase")]
pub enum Cause {
    /// Nothing recorded (system events).
    None,
    /// An API request, with the caller's idempotency key and free-text reason if given.
    Request {
        request_id: String,
        idempotency_key: Option<String>,
        reason: Option<String>,
    },
    /// A webhook delivery.
    Webhook { hook: String, delivery: String },
    /// Another event of the log.
    Event { seq: u64, id: Uuid },
    /// A change a webhook delivery asked for: the delivery, the
    /// `WebhookReceived` event that recorded it, and facts from the payload
    /// that explain the change (GitHub: commit, pusher, repository, file).
    WebhookDelivery {
        hook: String,
        delivery: String,
        received_seq: u64,
        received_id: Uuid,
        details: std::collections::BTreeMap<String, String>,
    },
}

impl Cause {
    /// The event this cause names (seq, id), which trace walks to.
    pub fn causing_event(&self) -> Option<(u64, Uuid)> {
        match self {
            Cause::Event { seq, id } => Some((*seq, *id)),
            Cause::WebhookDelivery {
                received_seq,
                received_id,
                ..
            } => Some((*received_seq, *received_id)),
            Cause::None | Cause::Request { .. } | Cause::Webhook { .. } => None,
        }
    }
}

/// An event as the log stores it. Everything but `payload` is the envelope.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    /// Global position, gap-free, starting at 1.
    pub seq: u64,
    /// The stream, e.g. `cluster/prod-eu`.
    pub stream: String,
    /// Position within the stream, starting at 1.
    pub version: u64,
    /// UUIDv7, unique in the log.
    pub id: Uuid,
    /// The payload type name, e.g. `PoolScaled`.
    pub event_type: String,
    /// The payload schema version for `event_type`.
    pub schema: u16,
    /// Commit time, UTC, microseconds; never decreases along the log.
    #[serde(with = "chrono::serde::ts_microseconds")]
    pub time: DateTime<Utc>,
    pub actor: Actor,
    pub cause: Cause,
    /// One id across a whole causal chain.
    pub correlation: Uuid,
    /// The payload, encoded by `payload::encode`; opaque to the store.
    #[serde(with = "serde_bytes")]
    pub payload: Vec<u8>,
    pub prev_hash: Hash,
    pub hash: Hash,
}

/// An event read in place from its stored record: every envelope field a
/// fold reads, borrowed, so that decoding it allocates nothing (a replay
/// decodes a million of them). `Event::view` gives one of a decoded event.
/// The cause and the hashes are not in it: no fold reads them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EventRef<'a> {
    pub seq: u64,
    pub stream: &'a str,
    pub version: u64,
    pub id: Uuid,
    pub event_type: &'a str,
    pub schema: u16,
    pub time: DateTime<Utc>,
    pub actor: ActorRef<'a>,
    pub correlation: Uuid,
    pub payload: &'a [u8],
}

/// An [`Actor`], borrowed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub struct ActorRef<'a> {
    pub kind: ActorKind,
    pub name: &'a str,
}

impl ActorRef<'_> {
    pub fn to_actor(&self) -> Actor {
        Actor {
            kind: self.kind,
            name: self.name.to_string(),
        }
    }

    /// Whether this is `actor`, without making an `Actor`.
    pub fn is(&self, actor: &Actor) -> bool {
        self.kind == actor.kind && self.name == actor.name
    }
}

/// The two hashes that end every record, in bytes.
const RECORD_HASHES_LEN: usize = 64;

/// A stored record's encoding, after its format byte; the one place that
/// knows which format bytes this build reads.
fn record_body(bytes: &[u8]) -> Result<&[u8], DecodeError> {
    match bytes.first() {
        None => Err(DecodeError::Empty),
        Some(&RECORD_FORMAT_V1) => Ok(&bytes[1..]),
        Some(&other) => Err(DecodeError::UnknownFormat(other)),
    }
}

impl<'a> EventRef<'a> {
    /// Reads a stored record of any known format in place.
    ///
    /// It follows `Event`'s fields in their order (bincode stores no names,
    /// only the order), reads every field a fold uses as serde would, and
    /// steps over the cause and counts the hashes (see `cursor`).
    pub fn decode_record(bytes: &'a [u8]) -> Result<EventRef<'a>, DecodeError> {
        let mut cursor = Cursor::new(record_body(bytes)?);
        let seq = cursor.u64("seq")?;
        let stream = cursor.str("stream")?;
        let version = cursor.u64("version")?;
        let id = cursor.uuid("id")?;
        let event_type = cursor.str("event_type")?;
        let schema = cursor.u16("schema")?;
        let time = cursor.time_micros("time")?;
        let actor = ActorRef {
            kind: actor_kind(cursor.u32("actor.kind")?)?,
            name: cursor.str("actor.name")?,
        };
        skip_cause(&mut cursor)?;
        let correlation = cursor.uuid("correlation")?;
        let payload = cursor.bytes("payload")?;
        match cursor.rest().len().cmp(&RECORD_HASHES_LEN) {
            std::cmp::Ordering::Less => {
                return Err(DecodeError::Bincode(format!(
                    "the record ends {} bytes into its hashes",
                    cursor.rest().len()
                )))
            }
            std::cmp::Ordering::Greater => {
                return Err(DecodeError::TrailingBytes(
                    cursor.rest().len() - RECORD_HASHES_LEN,
                ))
            }
            std::cmp::Ordering::Equal => {}
        }
        Ok(EventRef {
            seq,
            stream,
            version,
            id,
            event_type,
            schema,
            time,
            actor,
            correlation,
            payload,
        })
    }

    /// The bytes of the stream of a stored record, read without decoding
    /// the rest (nor checking them as UTF-8): the seq and the stream are the
    /// first two fields, so this costs a few bytes. None when the record
    /// does not start like a record; its full decode then says why.
    pub fn stream_bytes_of_record(bytes: &'a [u8]) -> Option<&'a [u8]> {
        let body = record_body(bytes).ok()?;
        let (_seq, rest) = split_varint(body)?;
        let (len, rest) = split_varint(rest)?;
        let len = usize::try_from(len).ok()?;
        rest.get(..len)
    }
}

/// A bincode varint (its standard configuration) and the bytes after it.
fn split_varint(bytes: &[u8]) -> Option<(u64, &[u8])> {
    let (&first, rest) = bytes.split_first()?;
    let take = |width: usize| -> Option<(u64, &[u8])> {
        let (value, rest) = (rest.get(..width)?, &rest[width..]);
        let mut le = [0u8; 8];
        le[..width].copy_from_slice(value);
        Some((u64::from_le_bytes(le), rest))
    };
    match first {
        0..=250 => Some((u64::from(first), rest)),
        251 => take(2),
        252 => take(4),
        253 => take(8),
        _ => None,
    }
}

/// The kind an `ActorKind` variant index names, as serde's decoder reads it.
fn actor_kind(index: u32) -> Result<ActorKind, DecodeError> {
    match index {
        0 => Ok(ActorKind::User),
        1 => Ok(ActorKind::Webhook),
        2 => Ok(ActorKind::Reconciler),
        3 => Ok(ActorKind::System),
        other => Err(DecodeError::Bincode(format!(
            "actor.kind: no kind has index {other}"
        ))),
    }
}

/// Steps over a [`Cause`], variant by variant, without reading its text.
fn skip_cause(cursor: &mut Cursor<'_>) -> Result<(), DecodeError> {
    match cursor.u32("cause")? {
        // Cause::None
        0 => {}
        // Cause::Request { request_id, idempotency_key, reason }
        1 => {
            cursor.skip_str("cause.request_id")?;
            if cursor.option("cause.idempotency_key")? {
                cursor.skip_str("cause.idempotency_key")?;
            }
            if cursor.option("cause.reason")? {
                cursor.skip_str("cause.reason")?;
            }
        }
        // Cause::Webhook { hook, delivery }
        2 => {
            cursor.skip_str("cause.hook")?;
            cursor.skip_str("cause.delivery")?;
        }
        // Cause::Event { seq, id }
        3 => {
            cursor.u64("cause.seq")?;
            cursor.uuid("cause.id")?;
        }
        // Cause::WebhookDelivery { hook, delivery, received_seq, received_id, details }
        4 => {
            cursor.skip_str("cause.hook")?;
            cursor.skip_str("cause.delivery")?;
            cursor.u64("cause.received_seq")?;
            cursor.uuid("cause.received_id")?;
            for _ in 0..cursor.u64("cause.details")? {
                cursor.skip_str("cause.details key")?;
                cursor.skip_str("cause.details value")?;
            }
        }
        other => {
            return Err(DecodeError::Bincode(format!(
                "cause: no cause has index {other}"
            )))
        }
    }
    Ok(())
}

/// What a writer hands to the store: the envelope fields the writer decides.
/// The store assigns `seq`, `version`, `time`, `prev_hash` and `hash`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewEvent {
    pub id: Uuid,
    pub event_type: String,
    pub schema: u16,
    pub actor: Actor,
    pub cause: Cause,
    pub correlation: Uuid,
    pub payload: Vec<u8>,
}

impl NewEvent {
    /// An event with an encoded payload, by `actor` because of `cause`, in
    /// the causal chain `correlation`. Its id is a fresh UUIDv7. Every event
    /// the daemon writes is made here or by `new_root`.
    pub fn new(
        encoded: payload::EncodedPayload,
        actor: Actor,
        cause: Cause,
        correlation: Uuid,
    ) -> NewEvent {
        NewEvent {
            id: Uuid::now_v7(),
            event_type: encoded.event_type.to_string(),
            schema: encoded.schema,
            actor,
            cause,
            correlation,
            payload: encoded.bytes,
        }
    }

    /// An event that starts a causal chain of its own: `new` with the
    /// event's own id as its correlation.
    pub fn new_root(encoded: payload::EncodedPayload, actor: Actor, cause: Cause) -> NewEvent {
        let mut event = NewEvent::new(encoded, actor, cause, Uuid::nil());
        event.correlation = event.id;
        event
    }
}

/// The envelope without its hashes, borrowed: what the hash covers.
#[derive(Serialize)]
struct CanonicalEnvelope<'a> {
    seq: u64,
    stream: &'a str,
    version: u64,
    id: &'a Uuid,
    event_type: &'a str,
    schema: u16,
    #[serde(with = "chrono::serde::ts_microseconds")]
    time: DateTime<Utc>,
    actor: &'a Actor,
    cause: &'a Cause,
    correlation: &'a Uuid,
    #[serde(with = "serde_bytes")]
    payload: &'a [u8],
}

/// Errors decoding a stored record. All are deterministic: the bytes are bad
/// and reading them again gives the same answer.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    #[error("empty record")]
    Empty,
    #[error("unknown record format byte {0:#04x}")]
    UnknownFormat(u8),
    #[error("bincode: {0}")]
    Bincode(String),
    #[error("{0} trailing bytes after the record")]
    TrailingBytes(usize),
}

fn bincode_config() -> bincode::config::Configuration {
    bincode::config::standard()
}

/// The most bytes a decoder may claim for one value. A record is far smaller
/// (the store bounds it at 64 KiB); the limit keeps a corrupted length prefix
/// from making the decoder allocate gigabytes instead of reporting an error.
/// It applies to decoding only and does not change the format.
const MAX_DECODE_BYTES: usize = 1024 * 1024;

fn bincode_decode_config() -> bincode::config::Configuration<
    bincode::config::LittleEndian,
    bincode::config::Varint,
    bincode::config::Limit<MAX_DECODE_BYTES>,
> {
    bincode::config::standard().with_limit::<MAX_DECODE_BYTES>()
}

/// Encodes any serde value with the project's bincode configuration.
pub(crate) fn to_bincode<T: Serialize>(value: &T) -> Vec<u8> {
    // Encoding into a Vec only fails for types serde cannot express in bincode
    // (maps with unknown length, `deserialize_any`); the types here have none.
    bincode::serde::encode_to_vec(value, bincode_config())
        .expect("bincode encoding of a plain serde type cannot fail")
}

/// Decodes a serde value and insists that every byte was used.
pub(crate) fn from_bincode<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, DecodeError> {
    let (value, used) = bincode::serde::decode_from_slice(bytes, bincode_decode_config())
        .map_err(|error| DecodeError::Bincode(error.to_string()))?;
    if used != bytes.len() {
        return Err(DecodeError::TrailingBytes(bytes.len() - used));
    }
    Ok(value)
}

impl Event {
    /// The bytes the hash covers (everything but `prev_hash` and `hash`).
    pub fn canonical_bytes(&self) -> Vec<u8> {
        let envelope = CanonicalEnvelope {
            seq: self.seq,
            stream: &self.stream,
            version: self.version,
            id: &self.id,
            event_type: &self.event_type,
            schema: self.schema,
            time: self.time,
            actor: &self.actor,
            cause: &self.cause,
            correlation: &self.correlation,
            payload: &self.payload,
        };
        let mut bytes = vec![RECORD_FORMAT_V1];
        bytes.extend_from_slice(&to_bincode(&envelope));
        bytes
    }

    /// `SHA-256(prev_hash || canonical bytes)`.
    pub fn compute_hash(&self) -> Hash {
        let mut hasher = Sha256::new();
        hasher.update(self.prev_hash);
        hasher.update(self.canonical_bytes());
        hasher.finalize().into()
    }

    /// The event's fields as a fold reads them, borrowed.
    pub fn view(&self) -> EventRef<'_> {
        EventRef {
            seq: self.seq,
            stream: &self.stream,
            version: self.version,
            id: self.id,
            event_type: &self.event_type,
            schema: self.schema,
            time: self.time,
            actor: ActorRef {
                kind: self.actor.kind,
                name: &self.actor.name,
            },
            correlation: self.correlation,
            payload: &self.payload,
        }
    }

    /// The stored record: format byte, then the bincode encoding of the event.
    pub fn encode_record(&self) -> Vec<u8> {
        let mut bytes = vec![RECORD_FORMAT_V1];
        bytes.extend_from_slice(&to_bincode(self));
        bytes
    }

    /// Decodes a stored record of any known format.
    pub fn decode_record(bytes: &[u8]) -> Result<Event, DecodeError> {
        from_bincode(record_body(bytes)?)
    }

    /// The most bytes `new` can take once stored in `stream`: its record with
    /// the largest seq and version (any time after 1970 encodes in the same 9
    /// bytes), so a plan can be checked against the store's record limit
    /// before anything is appended.
    pub fn record_len_upper_bound(new: &NewEvent, stream: &str) -> usize {
        Event::seal(
            new.clone(),
            stream,
            u64::MAX,
            u64::MAX,
            Utc::now(),
            GENESIS_HASH,
        )
        .encode_record()
        .len()
    }

    /// `seal`, and the event's stored record, encoded once: the record is
    /// the canonical bytes followed by `prev_hash` and `hash` (bincode
    /// writes a struct's fields in order, and the two hashes are the last
    /// fields of `Event`, each 32 bytes as they are), so the writer need not
    /// encode the envelope twice. A unit test holds this equal to
    /// `encode_record`.
    pub fn seal_with_record(
        new: NewEvent,
        stream: &str,
        seq: u64,
        version: u64,
        time: DateTime<Utc>,
        prev_hash: Hash,
    ) -> (Event, Vec<u8>) {
        let mut event = Event {
            seq,
            stream: stream.to_string(),
            version,
            id: new.id,
            event_type: new.event_type,
            schema: new.schema,
            time,
            actor: new.actor,
            cause: new.cause,
            correlation: new.correlation,
            payload: new.payload,
            prev_hash,
            hash: [0; 32],
        };
        let mut record = event.canonical_bytes();
        let mut hasher = Sha256::new();
        hasher.update(prev_hash);
        hasher.update(&record);
        event.hash = hasher.finalize().into();
        record.reserve_exact(64);
        record.extend_from_slice(&event.prev_hash);
        record.extend_from_slice(&event.hash);
        (event, record)
    }

    /// Builds a fully formed event: assigns the position, time and hashes.
    pub fn seal(
        new: NewEvent,
        stream: &str,
        seq: u64,
        version: u64,
        time: DateTime<Utc>,
        prev_hash: Hash,
    ) -> Event {
        Event::seal_with_record(new, stream, seq, version, time, prev_hash).0
    }
}

/// Why a record fails chain verification.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChainError {
    #[error("record does not decode: {0}")]
    Undecodable(DecodeError),
    #[error("record bytes are not the canonical encoding of their content")]
    NonCanonical,
    #[error("stored under seq {key} but says seq {stored}")]
    SeqMismatch { key: u64, stored: u64 },
    #[error("prev_hash does not match the hash of seq {previous}")]
    BrokenLink { previous: u64 },
    #[error("hash does not match the content")]
    HashMismatch,
    #[error("time goes backwards from the previous event")]
    TimeBackwards,
}

/// The running state of a chain check: what the next record must chain to.
#[derive(Debug, Clone)]
pub struct ChainCursor {
    pub last_seq: u64,
    pub last_hash: Hash,
    pub last_time: Option<DateTime<Utc>>,
}

impl Default for ChainCursor {
    fn default() -> Self {
        ChainCursor {
            last_seq: 0,
            last_hash: GENESIS_HASH,
            last_time: None,
        }
    }
}

impl ChainCursor {
    /// Checks the record stored under `key_seq`, which must be `last_seq + 1`
    /// (the caller checks for gaps), and advances the cursor.
    pub fn check(&mut self, key_seq: u64, record: &[u8]) -> Result<Event, ChainError> {
        let event = Event::decode_record(record).map_err(ChainError::Undecodable)?;
        if event.encode_record() != record {
            return Err(ChainError::NonCanonical);
        }
        if event.seq != key_seq {
            return Err(ChainError::SeqMismatch {
                key: key_seq,
                stored: event.seq,
            });
        }
        if event.prev_hash != self.last_hash {
            return Err(ChainError::BrokenLink {
                previous: self.last_seq,
            });
        }
        if event.compute_hash() != event.hash {
            return Err(ChainError::HashMismatch);
        }
        if self.last_time.is_some_and(|last| event.time < last) {
            return Err(ChainError::TimeBackwards);
        }
        self.last_seq = event.seq;
        self.last_hash = event.hash;
        self.last_time = Some(event.time);
        Ok(event)
    }
}

/// Truncates a time to the microsecond precision the log stores, so that an
/// event's time survives a round trip through the record unchanged.
pub fn truncate_to_micros(time: DateTime<Utc>) -> DateTime<Utc> {
    Utc.timestamp_micros(time.timestamp_micros())
        .single()
        .unwrap_or(time)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    pub(crate) fn sample(seq: u64, prev_hash: Hash) -> Event {
        let new = NewEvent {
            id: Uuid::from_u128(seq as u128),
            event_type: "PoolScaled".into(),
            schema: 1,
            actor: Actor {
                kind: ActorKind::User,
                name: "alice".into(),
            },
            cause: Cause::Request {
                request_id: "r1".into(),
                idempotency_key: None,
                reason: Some("more capacity".into()),
            },
            correlation: Uuid::from_u128(7),
            payload: vec![1, 2, 3, 255],
        };
        let time = Utc
            .timestamp_micros(1_700_000_000_000_000 + seq as i64)
            .unwrap();
        Event::seal(new, "cluster/a", seq, seq, time, prev_hash)
    }

    #[test]
    fn an_actor_kinds_name_is_its_json_name() {
        for kind in [
            ActorKind::User,
            ActorKind::Webhook,
            ActorKind::Reconciler,
            ActorKind::System,
        ] {
            assert_eq!(serde_json::to_value(kind).unwrap(), kind.as_str());
        }
    }

    #[test]
    fn a_new_event_takes_its_payload_and_a_fresh_id() {
        let encoded = || payload::EncodedPayload {
            event_type: "PoolScaled",
            schema: 1,
            bytes: vec![1, 2, 3],
        };
        let correlation = Uuid::from_u128(7);
        let event = NewEvent::new(
            encoded(),
            Actor::webhook("github"),
            Cause::None,
            correlation,
        );
        assert_eq!(event.event_type, "PoolScaled");
        assert_eq!(event.schema, 1);
        assert_eq!(event.payload, vec![1, 2, 3]);
        assert_eq!(event.actor.kind, ActorKind::Webhook);
        assert_eq!(event.actor.name, "github");
        assert_eq!(event.correlation, correlation);
        assert_eq!(event.id.get_version_num(), 7);
        // A root starts its own chain: its correlation is its own id.
        let root = NewEvent::new_root(encoded(), Actor::webhook("github"), Cause::None);
        assert_eq!(root.correlation, root.id);
        assert_ne!(root.id, event.id);
    }

    #[test]
    fn a_record_sealed_in_one_encoding_is_the_stored_record() {
        let event = sample(3, [7; 32]);
        let new = NewEvent {
            id: event.id,
            event_type: event.event_type.clone(),
            schema: event.schema,
            actor: event.actor.clone(),
            cause: event.cause.clone(),
            correlation: event.correlation,
            payload: event.payload.clone(),
        };
        let (sealed, record) =
            Event::seal_with_record(new, &event.stream, 3, 3, event.time, [7; 32]);
        assert_eq!(sealed, event);
        assert_eq!(record, event.encode_record());
    }

    #[test]
    fn the_stream_of_a_record_is_read_without_decoding_it() {
        // Seqs of every varint width, and streams of one and two length bytes.
        for seq in [1, 250, 251, 70_000, 5_000_000_000] {
            for stream in [
                "cluster/a".to_string(),
                format!("reconcile/{}", "x".repeat(300)),
            ] {
                let mut event = sample(seq, GENESIS_HASH);
                event.stream = stream.clone();
                let record = event.encode_record();
                assert_eq!(
                    EventRef::stream_bytes_of_record(&record),
                    Some(stream.as_bytes())
                );
                assert_eq!(EventRef::decode_record(&record).unwrap().stream, stream);
                assert_eq!(EventRef::stream_bytes_of_record(&record[..4]), None);
            }
        }
        assert_eq!(EventRef::stream_bytes_of_record(&[]), None);
        assert_eq!(
            EventRef::stream_bytes_of_record(&[RECORD_FORMAT_V1, 254]),
            None
        );
    }

    #[test]
    fn record_round_trips() {
        let event = sample(1, GENESIS_HASH);
        let record = event.encode_record();
        assert_eq!(record[0], RECORD_FORMAT_V1);
        assert_eq!(Event::decode_record(&record).unwrap(), event);
    }

    #[test]
    fn a_record_read_in_place_is_the_view_of_the_decoded_event() {
        let causes = [
            Cause::None,
            Cause::Request {
                request_id: "r1".into(),
                idempotency_key: Some("k".into()),
                reason: None,
            },
            Cause::Webhook {
                hook: "github".into(),
                delivery: "d-1".into(),
            },
            Cause::Event {
                seq: 2,
                id: Uuid::from_u128(2),
            },
            Cause::WebhookDelivery {
                hook: "github".into(),
                delivery: "d-2".into(),
                received_seq: 4,
                received_id: Uuid::from_u128(4),
                details: [("commit", "abc"), ("pusher", "bob")]
                    .into_iter()
                    .map(|(key, value)| (key.to_string(), value.to_string()))
                    .collect(),
            },
        ];
        for (index, cause) in causes.into_iter().enumerate() {
            let mut event = sample(index as u64 + 1, [3; 32]);
            event.cause = cause;
            event.actor.kind = ActorKind::Webhook;
            let record = event.encode_record();
            assert_eq!(EventRef::decode_record(&record), Ok(event.view()));
            assert!(event.view().actor.is(&event.actor));
            assert_eq!(event.view().actor.to_actor(), event.actor);
            // Every byte counts: a cut record, one with a byte more, or an
            // unknown format is an error, as for `Event::decode_record`.
            assert!(EventRef::decode_record(&record[..record.len() - 1]).is_err());
            let mut longer = record.clone();
            longer.push(0);
            assert_eq!(
                EventRef::decode_record(&longer),
                Err(DecodeError::TrailingBytes(1))
            );
            longer[0] = 9;
            assert_eq!(
                EventRef::decode_record(&longer),
                Err(DecodeError::UnknownFormat(9))
            );
        }
    }

    #[test]
    fn unknown_format_byte_is_reported() {
        let mut record = sample(1, GENESIS_HASH).encode_record();
        record[0] = 9;
        assert_eq!(
            Event::decode_record(&record),
            Err(DecodeError::UnknownFormat(9))
        );
    }

    #[test]
    fn chain_checks_links_and_flags_every_flipped_byte() {
        let first = sample(1, GENESIS_HASH);
        let second = sample(2, first.hash);
        let mut cursor = ChainCursor::default();
        cursor.check(1, &first.encode_record()).unwrap();
        cursor.check(2, &second.encode_record()).unwrap();

        let record = second.encode_record();
        for index in 0..record.len() {
            let mut tampered = record.clone();
            tampered[index] ^= 0x01;
            let mut cursor = ChainCursor::default();
            cursor.check(1, &first.encode_record()).unwrap();
            assert!(
                cursor.check(2, &tampered).is_err(),
                "flipping byte {index} went unnoticed"
            );
        }
    }

    /// Every value of every byte, not only one bit: a corrupted length prefix
    /// must be an error, never a huge allocation or a panic.
    #[test]
    fn every_value_of_every_byte_is_noticed() {
        let first = sample(1, GENESIS_HASH);
        let second = sample(2, first.hash);
        let record = second.encode_record();
        for index in 0..record.len() {
            for value in 0..=255u8 {
                if value == record[index] {
                    continue;
                }
                let mut tampered = record.clone();
                tampered[index] = value;
                let mut cursor = ChainCursor::default();
                cursor.check(1, &first.encode_record()).unwrap();
                assert!(
                    cursor.check(2, &tampered).is_err(),
                    "byte {index} set to {value:#04x} went unnoticed"
                );
            }
        }
    }

    #[test]
    fn broken_link_names_the_previous_seq() {
        let first = sample(1, GENESIS_HASH);
        let unrelated = sample(2, [9; 32]);
        let mut cursor = ChainCursor::default();
        cursor.check(1, &first.encode_record()).unwrap();
        assert_eq!(
            cursor.check(2, &unrelated.encode_record()).unwrap_err(),
            ChainError::BrokenLink { previous: 1 }
        );
    }

    /// The reference for `EventRef::decode_record`: the record's fields in
    /// their order, borrowed, decoded by bincode's serde decoder. The cause's
    /// text is read as bytes: the hand decoder steps over it unchecked.
    #[derive(Deserialize)]
    struct RecordBySerde<'a> {
        seq: u64,
        stream: &'a str,
        version: u64,
        id: Uuid,
        event_type: &'a str,
        schema: u16,
        #[serde(with = "chrono::serde::ts_microseconds")]
        time: DateTime<Utc>,
        #[serde(borrow)]
        actor: ActorRef<'a>,
        #[serde(borrow)]
        _cause: CauseBySerde<'a>,
        correlation: Uuid,
        payload: &'a [u8],
    }

    #[derive(Deserialize)]
    #[allow(dead_code)]
    enum CauseBySerde<'a> {
        None,
        Request {
            request_id: &'a [u8],
            idempotency_key: Option<&'a [u8]>,
            reason: Option<&'a [u8]>,
        },
        Webhook {
            hook: &'a [u8],
            delivery: &'a [u8],
        },
        Event {
            seq: u64,
            id: Uuid,
        },
        WebhookDelivery {
            hook: &'a [u8],
            delivery: &'a [u8],
            received_seq: u64,
            received_id: Uuid,
            details: Vec<(&'a [u8], &'a [u8])>,
        },
    }

    fn decode_by_serde(bytes: &[u8]) -> Result<EventRef<'_>, DecodeError> {
        let body = record_body(bytes)?;
        let (record, used): (RecordBySerde<'_>, usize) =
            bincode::serde::borrow_decode_from_slice(body, bincode_decode_config())
                .map_err(|error| DecodeError::Bincode(error.to_string()))?;
        if body.len() - used != RECORD_HASHES_LEN {
            return Err(DecodeError::Bincode("not the hashes' length".into()));
        }
        Ok(EventRef {
            seq: record.seq,
            stream: record.stream,
            version: record.version,
            id: record.id,
            event_type: record.event_type,
            schema: record.schema,
            time: record.time,
            actor: record.actor,
            correlation: record.correlation,
            payload: record.payload,
        })
    }

    fn any_cause() -> impl Strategy<Value = Cause> {
        let text = || "\\PC{0,12}";
        prop_oneof![
            Just(Cause::None),
            (
                text(),
                proptest::option::of(text()),
                proptest::option::of(text())
            )
                .prop_map(|(request_id, idempotency_key, reason)| Cause::Request {
                    request_id,
                    idempotency_key,
                    reason,
                }),
            (text(), text()).prop_map(|(hook, delivery)| Cause::Webhook { hook, delivery }),
            (any::<u64>(), any::<u128>()).prop_map(|(seq, id)| Cause::Event {
                seq,
                id: Uuid::from_u128(id),
            }),
            (
                text(),
                text(),
                any::<u64>(),
                any::<u128>(),
                proptest::collection::btree_map(text(), text(), 0..4)
            )
                .prop_map(|(hook, delivery, received_seq, id, details)| {
                    Cause::WebhookDelivery {
                        hook,
                        delivery,
                        received_seq,
                        received_id: Uuid::from_u128(id),
                        details,
                    }
                }),
        ]
    }

    fn any_event() -> impl Strategy<Value = Event> {
        (
            (any::<u64>(), "\\PC{0,300}", any::<u64>(), any::<u128>()),
            (
                "\\PC{0,20}",
                any::<u16>(),
                -62_000_000_000_000_000i64..250_000_000_000_000_000,
            ),
            (0usize..4, "\\PC{0,12}", any_cause(), any::<u128>()),
            proptest::collection::vec(any::<u8>(), 0..300),
        )
            .prop_map(
                |(
                    (seq, stream, version, id),
                    (event_type, schema, micros),
                    (kind, name, cause, correlation),
                    payload,
                )| {
                    let kind = [
                        ActorKind::User,
                        ActorKind::Webhook,
                        ActorKind::Reconciler,
                        ActorKind::System,
                    ][kind];
                    let new = NewEvent {
                        id: Uuid::from_u128(id),
                        event_type,
                        schema,
                        actor: Actor { kind, name },
                        cause,
                        correlation: Uuid::from_u128(correlation),
                        payload,
                    };
                    let time = Utc.timestamp_micros(micros).unwrap();
                    Event::seal(new, &stream, seq, version, time, [9; 32])
                },
            )
    }

    proptest! {
        /// The hand decoder reads what serde's reads, and fails where it
        /// fails: on every event, and on every cut or changed byte.
        #[test]
        fn reading_in_place_agrees_with_serde(
            event in any_event(),
            cut in any::<proptest::sample::Index>(),
            changed in any::<proptest::sample::Index>(),
            byte in any::<u8>(),
        ) {
            let record = event.encode_record();
            prop_assert_eq!(EventRef::decode_record(&record), Ok(event.view()));
            prop_assert_eq!(decode_by_serde(&record), Ok(event.view()));
            let cut_record = &record[..cut.index(record.len())];
            prop_assert!(EventRef::decode_record(cut_record).is_err());
            prop_assert!(decode_by_serde(cut_record).is_err());
            let mut other = record.clone();
            other[changed.index(record.len())] = byte;
            let by_hand = EventRef::decode_record(&other);
            let by_serde = decode_by_serde(&other);
            prop_assert_eq!(by_hand.is_ok(), by_serde.is_ok(), "by hand {:?}, by serde {:?}", by_hand, by_serde);
            if let (Ok(by_hand), Ok(by_serde)) = (by_hand, by_serde) {
                prop_assert_eq!(by_hand, by_serde);
            }
        }
    }
}

#[cfg(test)]
mod fixture_tests;
