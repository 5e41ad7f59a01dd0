//! The rules every backend keeps, as pure functions: no IO, no clock, no
//! locks. A backend looks up what they need (the stream's version, an
//! idempotency record, the log's tail) in its own way and calls these, so
//! the embedded log and the in-memory store answer every request alike.
//!
//! The order a backend follows for one append request:
//!
//! 1. `validate_request`: names and shape (`InvalidRequest`).
//! 2. `check_idempotency` with the record the key has, if any: the same
//!    digest is a duplicate answered with the original events, another
//!    digest is `IdempotencyKeyReused`.
//! 3. `seal_request` with the stream's current version and the log's tail:
//!    the expected version (`WrongExpectedVersion`), the time that never
//!    decreases, causes that name an event of the same request, the record
//!    size limit (`EventTooLarge`), and the hash chain.
//!
//! Imports follow `check_import` instead of 2 and 3.

use std::collections::HashMap;
use std::sync::Arc;

use chrono::{DateTime, Utc};

use super::{AppendRequest, Head, IdempotencyRecord, StoreError};
use crate::event::{Cause, ChainCursor, Event};

/// The longest stream name and idempotency key a store accepts.
pub const MAX_NAME_BYTES: usize = 512;

/// The largest stored record every backend accepts by default.
pub const MAX_RECORD_BYTES: usize = 64 * 1024;

/// The end of the log as the writer sees it, including requests accepted
/// earlier in the same group that are not durable yet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tail {
    pub head: Head,
    /// The time of the last event, `None` for an empty log.
    pub last_time: Option<DateTime<Utc>>,
}

/// A request that passed every check, ready to be written.
#[derive(Debug, Clone)]
pub struct Sealed {
    pub stream: String,
    /// The stored events, in order; empty for a request that records only
    /// its idempotency key.
    pub events: Vec<Arc<Event>>,
    /// The encoded record of each event.
    pub records: Vec<Vec<u8>>,
    /// The stream's version after the request.
    pub stream_version: u64,
    /// What the key will answer from now on, when the request has one.
    pub idempotency: Option<(String, IdempotencyRecord)>,
}

/// Checks the request's shape. Deterministic: the same request always fails.
pub fn validate_request(request: &AppendRequest) -> Result<(), StoreError> {
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

/// Decides what an earlier use of the request's key means: `Ok(Some(record))`
/// when the request is a duplicate that the record answers, `Ok(None)` when
/// the key is new (or the request has none).
pub fn check_idempotency(
    request: &AppendRequest,
    earlier: Option<&IdempotencyRecord>,
) -> Result<Option<IdempotencyRecord>, StoreError> {
    let (Some(idempotency), Some(record)) = (&request.idempotency, earlier) else {
        return Ok(None);
    };
    if record.digest != idempotency.digest {
        return Err(StoreError::IdempotencyKeyReused {
            key: idempotency.key.clone(),
        });
    }
    Ok(Some(record.clone()))
}

/// Checks a new request against the stream's current version and the tail,
/// and seals its events. On success the tail has moved past them; on error
/// nothing changed.
///
/// Every event of one request gets one time: the clock's, or the last
/// event's when the clock stepped back.
pub fn seal_request(
    request: AppendRequest,
    current_version: u64,
    tail: &mut Tail,
    now: DateTime<Utc>,
    max_record_bytes: usize,
) -> Result<Sealed, StoreError> {
    if !request.expected.admits(current_version) {
        return Err(StoreError::WrongExpectedVersion {
            stream: request.stream,
            expected: request.expected,
            current: current_version,
        });
    }
    let now = crate::event::truncate_to_micros(now);
    let time = match tail.last_time {
        Some(last) if last > now => last,
        _ => now,
    };
    let first_seq = tail.head.seq + 1;
    let mut head = tail.head;
    let mut version = current_version;
    let mut events = Vec::with_capacity(request.events.len());
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
        let (event, record) =
            Event::seal_with_record(new, &request.stream, head.seq + 1, version, time, head.hash);
        if record.len() > max_record_bytes {
            return Err(StoreError::EventTooLarge {
                index,
                size: record.len(),
                limit: max_record_bytes,
            });
        }
        head = Head {
            seq: event.seq,
            hash: event.hash,
        };
        records.push(record);
        events.push(Arc::new(event));
    }
    let idempotency = request.idempotency.map(|idempotency| {
        let record = IdempotencyRecord {
            digest: idempotency.digest,
            stream: request.stream.clone(),
            first_seq,
            last_seq: head.seq,
            stream_version: version,
        };
        (idempotency.key, record)
    });
    if !events.is_empty() {
        tail.head = head;
        tail.last_time = Some(time);
    }
    Ok(Sealed {
        stream: request.stream,
        events,
        records,
        stream_version: version,
        idempotency,
    })
}

/// Imported events that chain onto the log, with their records and the
/// streams' versions after them.
#[derive(Debug)]
pub struct CheckedImport {
    pub events: Vec<Arc<Event>>,
    pub records: Vec<Vec<u8>>,
    pub stream_versions: HashMap<String, u64>,
}

/// Checks events exported from another log against the tail: each must be
/// the next seq, chain onto the previous hash with a hash that matches its
/// content, not go back in time, and be the next version of its stream
/// (`version_of` gives a stream's version before the import). On success
/// the tail has moved past them; `ImportRejected` names the first that fails.
pub fn check_import(
    events: Vec<Event>,
    tail: &mut Tail,
    mut version_of: impl FnMut(&str) -> Result<u64, StoreError>,
    max_record_bytes: usize,
) -> Result<CheckedImport, StoreError> {
    let mut cursor = ChainCursor {
        last_seq: tail.head.seq,
        last_hash: tail.head.hash,
        last_time: tail.last_time,
    };
    let mut stream_versions: HashMap<String, u64> = HashMap::new();
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
        if record.len() > max_record_bytes {
            return Err(rejected(format!(
                "{} bytes encoded, over the limit of {max_record_bytes}",
                record.len()
            )));
        }
        cursor
            .check(event.seq, &record)
            .map_err(|error| rejected(error.to_string()))?;
        let current = match stream_versions.get(&event.stream) {
            Some(version) => *version,
            None => version_of(&event.stream)?,
        };
        if event.version != current + 1 {
            return Err(rejected(format!(
                "version {} of stream {:?}, which is at version {current}",
                event.version, event.stream
            )));
        }
        stream_versions.insert(event.stream.clone(), event.version);
        records.push(record);
    }
    tail.head = Head {
        seq: cursor.last_seq,
        hash: cursor.last_hash,
    };
    tail.last_time = cursor.last_time;
    Ok(CheckedImport {
        events: events.into_iter().map(Arc::new).collect(),
        records,
        stream_versions,
    })
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;

    use super::*;
    use crate::event::GENESIS_HASH;
    use crate::store::test_support::{new_event, request};
    use crate::store::{ExpectedVersion, Idempotency};

    fn empty_tail() -> Tail {
        Tail {
            head: Head {
                seq: 0,
                hash: GENESIS_HASH,
            },
            last_time: None,
        }
    }

    fn at(micros: i64) -> DateTime<Utc> {
        Utc.timestamp_micros(micros).unwrap()
    }

    #[test]
    fn a_request_is_sealed_onto_the_tail_and_moves_it() {
        let mut tail = empty_tail();
        let sealed = seal_request(
            request("s", ExpectedVersion::NoStream, &["a", "b"]),
            0,
            &mut tail,
            at(10),
            MAX_RECORD_BYTES,
        )
        .unwrap();
        assert_eq!(sealed.stream_version, 2);
        assert_eq!(sealed.events[1].prev_hash, sealed.events[0].hash);
        assert_eq!(tail.head.seq, 2);
        assert_eq!(tail.head.hash, sealed.events[1].hash);
        assert_eq!(tail.last_time, Some(at(10)));
    }

    #[test]
    fn time_never_goes_back_when_the_clock_does() {
        let mut tail = empty_tail();
        let request_one = request("s", ExpectedVersion::Any, &["a"]);
        seal_request(request_one, 0, &mut tail, at(50), MAX_RECORD_BYTES).unwrap();
        let request_two = request("s", ExpectedVersion::Any, &["b"]);
        let sealed = seal_request(request_two, 1, &mut tail, at(20), MAX_RECORD_BYTES).unwrap();
        assert_eq!(sealed.events[0].time, at(50));
    }

    #[test]
    fn a_rejected_request_leaves_the_tail_alone() {
        let mut tail = empty_tail();
        let before = tail;
        let error = seal_request(
            request("s", ExpectedVersion::Exact(3), &["a"]),
            0,
            &mut tail,
            at(1),
            MAX_RECORD_BYTES,
        )
        .unwrap_err();
        assert!(matches!(
            error,
            StoreError::WrongExpectedVersion { current: 0, .. }
        ));
        let too_large = seal_request(
            request("s", ExpectedVersion::Any, &["x"; 1]),
            0,
            &mut tail,
            at(1),
            10,
        )
        .unwrap_err();
        assert!(matches!(
            too_large,
            StoreError::EventTooLarge { index: 0, .. }
        ));
        assert_eq!(tail, before);
    }

    #[test]
    fn a_cause_naming_an_earlier_event_of_the_request_gets_its_seq() {
        let mut tail = empty_tail();
        let first = new_event("a");
        let mut second = new_event("b");
        second.cause = Cause::Event {
            seq: 0,
            id: first.id,
        };
        let request = AppendRequest {
            stream: "s".into(),
            expected: ExpectedVersion::Any,
            events: vec![first.clone(), second],
            idempotency: None,
        };
        let sealed = seal_request(request, 0, &mut tail, at(1), MAX_RECORD_BYTES).unwrap();
        assert_eq!(
            sealed.events[1].cause,
            Cause::Event {
                seq: 1,
                id: first.id
            }
        );
    }

    #[test]
    fn a_key_with_another_digest_is_refused_and_the_same_digest_is_a_duplicate() {
        let mut with_key = request("s", ExpectedVersion::Any, &["a"]);
        with_key.idempotency = Some(Idempotency {
            key: "k".into(),
            digest: [1; 32],
        });
        let record = IdempotencyRecord {
            digest: [1; 32],
            stream: "s".into(),
            first_seq: 1,
            last_seq: 1,
            stream_version: 1,
        };
        assert_eq!(
            check_idempotency(&with_key, Some(&record)).unwrap(),
            Some(record.clone())
        );
        let other = IdempotencyRecord {
            digest: [2; 32],
            ..record
        };
        assert!(matches!(
            check_idempotency(&with_key, Some(&other)),
            Err(StoreError::IdempotencyKeyReused { .. })
        ));
        assert_eq!(check_idempotency(&with_key, None).unwrap(), None);
    }

    #[test]
    fn names_are_checked() {
        let mut bad = request("", ExpectedVersion::Any, &["a"]);
        assert!(matches!(
            validate_request(&bad),
            Err(StoreError::InvalidRequest(_))
        ));
        bad.stream = "a\0b".into();
        assert!(validate_request(&bad).is_err());
        let empty = request("s", ExpectedVersion::Any, &[]);
        assert!(validate_request(&empty).is_err());
    }

    #[test]
    fn an_import_must_chain_and_continue_each_stream() {
        let mut source = empty_tail();
        let sealed = seal_request(
            request("s", ExpectedVersion::Any, &["a", "b"]),
            0,
            &mut source,
            at(5),
            MAX_RECORD_BYTES,
        )
        .unwrap();
        let events: Vec<Event> = sealed.events.iter().map(|e| (**e).clone()).collect();

        let mut tail = empty_tail();
        let checked = check_import(events.clone(), &mut tail, |_| Ok(0), MAX_RECORD_BYTES).unwrap();
        assert_eq!(checked.stream_versions.get("s"), Some(&2));
        assert_eq!(tail.head, source.head);

        let mut tampered = events;
        tampered[1].payload = b"changed".to_vec();
        let error =
            check_import(tampered, &mut empty_tail(), |_| Ok(0), MAX_RECORD_BYTES).unwrap_err();
        assert!(matches!(
            error,
            StoreError::ImportRejected {
                index: 1,
                seq: 2,
                ..
            }
        ));
    }
}
