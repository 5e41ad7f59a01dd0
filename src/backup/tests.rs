use std::collections::HashMap;
use std::io::Cursor;

use chrono::TimeZone;
use serde_json::Value;

use super::*;
use crate::event::{ActorKind, NewEvent};
use crate::model::{Change, PoolScaled};

/// A chain of `count` sealed events over two streams, with real payloads.
fn chain(count: u64) -> Vec<Event> {
    let mut events = Vec::new();
    let mut prev_hash = GENESIS_HASH;
    let mut versions: HashMap<&str, u64> = HashMap::new();
    for seq in 1..=count {
        let stream = if seq % 3 == 0 {
            "cluster/b"
        } else {
            "cluster/a"
        };
        let version = versions.entry(stream).or_default();
        *version += 1;
        let encoded = payload::encode_change(&Change::PoolScaled(PoolScaled {
            pool: "workers".into(),
            from: seq as i64,
            to: seq as i64 + 1,
        }));
        let new = NewEvent {
            id: Uuid::from_u128(seq as u128),
            event_type: encoded.event_type.to_string(),
            schema: encoded.schema,
            actor: Actor {
                kind: ActorKind::User,
                name: "alice".into(),
            },
            cause: Cause::Request {
                request_id: format!("r{seq}"),
                idempotency_key: None,
                reason: Some("more capacity".into()),
            },
            correlation: Uuid::from_u128(7),
            payload: encoded.bytes,
        };
        let time = Utc
            .timestamp_micros(1_700_000_000_123_456 + seq as i64)
            .unwrap();
        let event = Event::seal(new, stream, seq, *version, time, prev_hash);
        prev_hash = event.hash;
        events.push(event);
    }
    events
}

async fn store_with(dir: &Path, events: &[Event]) -> Arc<dyn EventStore> {
    let store = crate::store::open(crate::store::StoreConfig::new(dir)).unwrap();
    if !events.is_empty() {
        store.import(events.to_vec()).await.unwrap();
    }
    store
}

async fn export_text(events: &[Event]) -> String {
    let dir = tempfile::tempdir().unwrap();
    let store = store_with(dir.path(), events).await;
    let mut out = Vec::new();
    let summary = write_export(store.clone(), &mut out).await.unwrap();
    assert_eq!(summary.events, events.len() as u64);
    store.close().await;
    String::from_utf8(out).unwrap()
}

fn lines(text: &str) -> Vec<String> {
    text.lines().map(str::to_string).collect()
}

fn joined(lines: &[String]) -> String {
    let mut text = lines.join("\n");
    text.push('\n');
    text
}

/// Changes one line's JSON.
fn edit(line: &str, change: impl FnOnce(&mut Value)) -> String {
    let mut value: Value = serde_json::from_str(line).unwrap();
    change(&mut value);
    serde_json::to_string(&value).unwrap()
}

fn read_all(text: &str) -> Result<Vec<Event>, BackupError> {
    let mut reader = ExportReader::new(Cursor::new(text.as_bytes().to_vec()));
    let mut events = Vec::new();
    while let Some(event) = reader.next_event()? {
        events.push(event);
    }
    Ok(events)
}

/// Asserts that reading `text` fails at `line` with a problem that `expected` accepts.
#[track_caller]
fn assert_refused(text: &str, line: u64, expected: impl Fn(&LineProblem) -> bool) {
    match read_all(text) {
        Err(BackupError::Line {
            line: found,
            problem,
        }) => {
            assert_eq!(found, line, "wrong line for {problem}");
            assert!(
                expected(&problem),
                "unexpected problem at line {line}: {problem}"
            );
            let message = BackupError::Line {
                line: found,
                problem,
            }
            .to_string();
            assert!(message.starts_with(&format!("line {line}: ")), "{message}");
        }
        other => panic!("expected a refusal at line {line}, got {other:?}"),
    }
}

fn is_chain(text: &'static str) -> impl Fn(&LineProblem) -> bool {
    move |problem| matches!(problem, LineProblem::Chain(reason) if reason.contains(text))
}

#[tokio::test]
async fn events_round_trip_through_writer_and_reader_exactly() {
    let events = chain(5);
    let text = export_text(&events).await;
    let all = lines(&text);
    assert_eq!(all.len(), 7, "header, 5 events, trailer:\n{text}");

    let header: Value = serde_json::from_str(&all[0]).unwrap();
    assert_eq!(header["format"], "cairn-export");
    assert_eq!(header["version"], 1);
    assert_eq!(header["fromSeq"], 1);
    assert_eq!(header["headSeq"], 5);
    assert_eq!(header["headHash"], hex::encode(events[4].hash));
    let first: Value = serde_json::from_str(&all[1]).unwrap();
    assert_eq!(first["time"], "2023-11-14T22:13:20.123457Z");
    assert_eq!(first["type"], "PoolScaled");
    assert_eq!(
        first["data"],
        serde_json::json!({"pool": "workers", "from": 1, "to": 2})
    );
    assert_eq!(first["prevHash"], hex::encode(GENESIS_HASH));
    let trailer: Value = serde_json::from_str(&all[6]).unwrap();
    assert_eq!(
        trailer,
        serde_json::json!({"end": true, "events": 5, "headSeq": 5, "headHash": hex::encode(events[4].hash)})
    );

    assert_eq!(read_all(&text).unwrap(), events);
}

#[tokio::test]
async fn an_empty_log_exports_and_reads_as_header_and_trailer() {
    let text = export_text(&[]).await;
    assert_eq!(lines(&text).len(), 2, "{text}");
    assert_eq!(read_all(&text).unwrap(), Vec::<Event>::new());
}

#[tokio::test]
async fn an_export_ends_at_the_head_it_started_from() {
    let events = chain(6);
    let dir = tempfile::tempdir().unwrap();
    let store = store_with(dir.path(), &events[..3]).await;
    let mut export = Export::start(store.clone());
    let first = export.next_chunk().await.unwrap().unwrap();
    // Appends continue while the export runs.
    store.import(events[3..].to_vec()).await.unwrap();
    let mut text = first;
    while let Some(chunk) = export.next_chunk().await.unwrap() {
        text.extend(chunk);
    }
    let read = read_all(&String::from_utf8(text).unwrap()).unwrap();
    assert_eq!(read, events[..3].to_vec());
    store.close().await;
}

#[tokio::test]
async fn a_tampered_payload_is_refused_at_its_line() {
    let mut all = lines(&export_text(&chain(4)).await);
    // Line 3 holds seq 2.
    all[2] = edit(&all[2], |value| {
        let tampered = payload::encode_change(&Change::PoolScaled(PoolScaled {
            pool: "workers".into(),
            from: 2,
            to: 300,
        }));
        value["payload"] = Value::String(BASE64.encode(tampered.bytes));
    });
    assert_refused(&joined(&all), 3, is_chain("hash does not match"));
}

#[tokio::test]
async fn a_tampered_hash_is_refused_at_its_line() {
    let mut all = lines(&export_text(&chain(4)).await);
    all[3] = edit(&all[3], |value| {
        value["hash"] = Value::String("ab".repeat(32));
    });
    assert_refused(&joined(&all), 4, is_chain("hash does not match"));
}

#[tokio::test]
async fn edited_data_is_refused_and_bad_fields_name_the_field() {
    let all = lines(&export_text(&chain(3)).await);
    let mut edited = all.clone();
    edited[2] = edit(&edited[2], |value| value["data"]["to"] = Value::from(99));
    assert_refused(&joined(&edited), 3, |problem| {
        *problem == LineProblem::DataMismatch
    });

    // Absent data is not checked.
    let mut without = all.clone();
    without[2] = edit(&without[2], |value| {
        value.as_object_mut().unwrap().remove("data");
    });
    assert_eq!(read_all(&joined(&without)).unwrap().len(), 3);

    let mut bad_base64 = all.clone();
    bad_base64[1] = edit(&bad_base64[1], |value| value["payload"] = "%%%".into());
    assert_refused(&joined(&bad_base64), 2, |problem| {
        matches!(
            problem,
            LineProblem::BadField {
                field: "payload",
                ..
            }
        )
    });

    let mut bad_hex = all.clone();
    bad_hex[1] = edit(&bad_hex[1], |value| value["prevHash"] = "00zz".into());
    assert_refused(&joined(&bad_hex), 2, |problem| {
        matches!(
            problem,
            LineProblem::BadField {
                field: "prevHash",
                ..
            }
        )
    });

    let mut missing = all.clone();
    missing[3] = edit(&missing[3], |value| {
        value.as_object_mut().unwrap().remove("correlation");
    });
    assert_refused(
        &joined(&missing),
        4,
        |problem| matches!(problem, LineProblem::BadEvent(reason) if reason.contains("correlation")),
    );

    let mut nested = all.clone();
    nested[1] = edit(&nested[1], |value| value["actor"]["kind"] = "robot".into());
    assert_refused(
        &joined(&nested),
        2,
        |problem| matches!(problem, LineProblem::BadEvent(reason) if reason.contains("actor.kind")),
    );

    let mut nanos = all;
    nanos[1] = edit(&nanos[1], |value| {
        value["time"] = "2023-11-14T22:13:20.123457001Z".into()
    });
    assert_refused(&joined(&nanos), 2, |problem| {
        matches!(problem, LineProblem::BadField { field: "time", .. })
    });
}

#[tokio::test]
async fn a_deleted_line_is_a_gap_at_the_line_that_follows_it() {
    let mut all = lines(&export_text(&chain(4)).await);
    all.remove(2); // seq 2; seq 3 is now on line 3
    assert_refused(&joined(&all), 3, is_chain("seq 3 where seq 2 was expected"));
}

#[tokio::test]
async fn a_truncated_file_is_refused_whether_cut_inside_a_line_or_between_lines() {
    let text = export_text(&chain(4)).await;
    // Cut in the middle of the trailer (line 6).
    let cut = &text[..text.len() - 10];
    assert_refused(cut, 6, |problem| *problem == LineProblem::CutOff);
    // Cut in the middle of an event line (line 3).
    let all = lines(&text);
    let mut partial = joined(&all[..2]);
    partial.push_str(&all[2][..40]);
    assert_refused(&partial, 3, |problem| *problem == LineProblem::CutOff);
    // Cut after the last event line: the trailer is missing.
    assert_refused(&joined(&all[..5]), 5, |problem| {
        *problem == LineProblem::Truncated(5)
    });
    // Cut right after the header.
    assert_refused(&joined(&all[..1]), 1, |problem| {
        *problem == LineProblem::Truncated(1)
    });
    assert_refused("", 1, |problem| *problem == LineProblem::EmptyFile);
}

#[tokio::test]
async fn a_wrong_trailer_is_refused() {
    let all = lines(&export_text(&chain(3)).await);
    let mut count = all.clone();
    count[4] = edit(&count[4], |value| value["events"] = Value::from(4));
    assert_refused(
        &joined(&count),
        5,
        |problem| matches!(problem, LineProblem::BadTrailer(reason) if reason.contains("counts 4 events")),
    );
    let mut hash = all.clone();
    hash[4] = edit(&hash[4], |value| value["headHash"] = "00".repeat(32).into());
    assert_refused(
        &joined(&hash),
        5,
        |problem| matches!(problem, LineProblem::BadTrailer(reason) if reason.contains("headHash")),
    );
    // A file whose header promised more than it holds: the last event line
    // and the trailer were both dropped and a matching trailer forged.
    let mut forged = all.clone();
    forged.remove(3);
    forged[3] = edit(&forged[3], |value| {
        value["events"] = Value::from(2);
        value["headSeq"] = Value::from(2);
        value["headHash"] = serde_json::from_str::<Value>(&all[2]).unwrap()["hash"].clone();
    });
    assert_refused(
        &joined(&forged),
        4,
        |problem| matches!(problem, LineProblem::BadTrailer(reason) if reason.contains("header announced")),
    );
    let mut after = all;
    after.push("{}".into());
    assert_refused(&joined(&after), 6, |problem| {
        *problem == LineProblem::AfterTrailer
    });
}

#[tokio::test]
async fn garbage_empty_and_over_long_lines_are_refused_at_their_line() {
    let all = lines(&export_text(&chain(3)).await);
    let mut garbage = all.clone();
    garbage[2] = "this is not json".into();
    assert_refused(&joined(&garbage), 3, |problem| {
        matches!(problem, LineProblem::BadJson(_))
    });
    let mut array = all.clone();
    array[2] = "[1, 2]".into();
    assert_refused(&joined(&array), 3, |problem| {
        *problem == LineProblem::NotAnObject
    });
    let mut empty = all.clone();
    empty[2] = String::new();
    assert_refused(&joined(&empty), 3, |problem| {
        *problem == LineProblem::EmptyLine
    });
    let mut long = all.clone();
    long[3] = "x".repeat(MAX_LINE_BYTES + 1);
    assert_refused(&joined(&long), 4, |problem| {
        *problem
            == LineProblem::TooLong {
                limit: MAX_LINE_BYTES,
            }
    });
    let mut header = all;
    header[0] = edit(&header[0], |value| value["format"] = "tar".into());
    assert_refused(
        &joined(&header),
        1,
        |problem| matches!(problem, LineProblem::BadHeader(reason) if reason.contains("not a Cairn export")),
    );
}

#[tokio::test]
async fn import_into_dir_round_trips_and_maps_store_rejections_to_lines() {
    let events = chain(7);
    let text = export_text(&events).await;
    let base = tempfile::tempdir().unwrap();
    let target = base.path().join("data");
    let summary = import_into_dir_batched(&target, Cursor::new(text.clone().into_bytes()), 3)
        .await
        .unwrap();
    assert_eq!(summary.events, 7);
    assert_eq!(summary.head.hash, events[6].hash);
    let store = crate::store::open(crate::store::StoreConfig::new(&target)).unwrap();
    assert_eq!(store.read(0, 100).await.unwrap().len(), 7);
    assert!(store.verify().await.unwrap().is_ok());
    store.close().await;
    drop(store);
    // Only the target is left, no staging directory.
    let names: Vec<_> = std::fs::read_dir(base.path())
        .unwrap()
        .map(|entry| entry.unwrap().file_name())
        .collect();
    assert_eq!(names, vec![std::ffi::OsString::from("data")]);

    // A non-empty target is refused.
    match import_into_dir(&target, Cursor::new(text.into_bytes())).await {
        Err(BackupError::TargetNotEmpty { reason, .. }) => {
            assert!(reason.contains("data directory"), "{reason}")
        }
        other => panic!("expected a refusal, got {other:?}"),
    }

    // A chain the reader accepts but the store does not (seq 5 says version 1
    // of a stream already at version 3): the store's rejection of the second
    // event of the second batch names line 6.
    let mut forged = chain(4);
    let encoded = payload::encode_change(&Change::PoolScaled(PoolScaled {
        pool: "workers".into(),
        from: 1,
        to: 2,
    }));
    let new = NewEvent {
        id: Uuid::from_u128(5),
        event_type: encoded.event_type.into(),
        schema: 1,
        actor: forged[0].actor.clone(),
        cause: Cause::None,
        correlation: Uuid::from_u128(5),
        payload: encoded.bytes,
    };
    let last = forged[3].clone();
    forged.push(Event::seal(new, "cluster/a", 5, 1, last.time, last.hash));
    let mut text = String::new();
    let header = Header {
        format: FORMAT_NAME.into(),
        version: 1,
        exported_at: Utc::now(),
        from_seq: 1,
        head_seq: 5,
        head_hash: hex::encode(forged[4].hash),
    };
    text.push_str(&serde_json::to_string(&header).unwrap());
    text.push('\n');
    for event in &forged {
        text.push_str(&serde_json::to_string(&EventLine::from_event(event)).unwrap());
        text.push('\n');
    }
    let refused_target = base.path().join("refused");
    let error = import_into_dir_batched(&refused_target, Cursor::new(text.into_bytes()), 3)
        .await
        .unwrap_err();
    assert_eq!(error.line_number(), Some(6), "{error}");
    assert!(error.to_string().contains("version 1 of stream"), "{error}");
    assert!(!refused_target.exists());
    let names: Vec<_> = std::fs::read_dir(base.path())
        .unwrap()
        .map(|entry| entry.unwrap().file_name())
        .collect();
    assert_eq!(
        names,
        vec![std::ffi::OsString::from("data")],
        "no staging directory is left"
    );
}

#[tokio::test]
async fn a_failed_import_leaves_no_directory_and_an_empty_one_is_a_fine_target() {
    let events = chain(5);
    let text = export_text(&events).await;
    let all = lines(&text);
    let base = tempfile::tempdir().unwrap();
    let target = base.path().join("data");
    // The trailer is missing: everything else was imported, then discarded.
    let error = import_into_dir_batched(&target, Cursor::new(joined(&all[..6]).into_bytes()), 2)
        .await
        .unwrap_err();
    assert_eq!(error.line_number(), Some(6), "{error}");
    assert!(error.to_string().contains("truncated"), "{error}");
    assert_eq!(std::fs::read_dir(base.path()).unwrap().count(), 0);

    std::fs::create_dir(&target).unwrap();
    let summary = import_into_dir(&target, Cursor::new(text.into_bytes()))
        .await
        .unwrap();
    assert_eq!((summary.events, summary.head.seq), (5, 5));
}
