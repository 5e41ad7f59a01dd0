//! Backup and restore: the NDJSON export format, its writer and its importer.
//!
//! # The format (docs/events.md, "Export format")
//!
//! One JSON object per line, each line ending in `\n`:
//!
//! 1. A header: `{"format":"cairn-export","version":1,"exportedAt":"...",
//!    "fromSeq":1,"headSeq":N,"headHash":"<hex>"}`.
//! 2. One line per event, seq 1 to N, with every envelope field: `seq`,
//!    `stream`, `version`, `id`, `type`, `schema`, `time` (RFC 3339, UTC,
//!    microseconds), `actor`, `cause`, `correlation`, `data` (the decoded
//!    payload, for humans), `payload` (base64 of the stored payload bytes, which
//!    the hash covers), `prevHash` and `hash` (hex).
//! 3. A trailer: `{"end":true,"events":N,"headSeq":N,"headHash":"<hex>"}`, so
//!    that a file cut at a line boundary is seen to be truncated.
//!
//! `payload` is the truth; `data` is derived from it. On import `data` is
//! checked: when this build can decode the event's type, `data` must equal the
//! decoded payload (so an edit of `data`, which would change nothing, is
//! refused instead of silently ignored); `null` or absent is not checked.
//!
//! # Writing
//!
//! `Export` captures the store's head when it starts and reads pages up to it,
//! so an export is a consistent prefix of the log even while appends continue.
//! It yields chunks of lines, for `GET /v1/export` and for `write_export`.
//!
//! # Reading and importing
//!
//! `ExportReader` parses line by line (each line at most `MAX_LINE_BYTES`),
//! rebuilds the events and checks the chain as it goes: seq without gap,
//! `prevHash` linking to the previous event, `hash` recomputed, time not going
//! back, `data` matching. Every error names the line: `line N: ...`.
//! `import_into_store` hands the events to `EventStore::import` in batches,
//! which checks them again (with the stream versions) and maps a rejection
//! back to its line.
//!
//! `import_into_dir` never leaves a data directory that looks like a valid
//! partial log: it imports into a sibling `<dir>.importing-<pid>`, and renames
//! it to `<dir>` only when every event and the trailer checked out; on failure
//! it removes it. The target must not exist or be an empty directory. An
//! import that is killed leaves the `.importing-<pid>` directory behind (never
//! `<dir>`); it can be deleted.
//!
//! The export holds the log only: the simulated cloud's state (`sim/` in the
//! data directory) is the "cloud", not Cairn's state, and is not part of it.

use std::collections::VecDeque;
use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine;
use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::event::{payload, Actor, Cause, Event, Hash, GENESIS_HASH};
use crate::store::{EventStore, Head, StoreError};

/// The `format` of the header line.
pub const FORMAT_NAME: &str = "cairn-export";
/// The `version` of the header line this build writes and reads.
pub const FORMAT_VERSION: u32 = 1;
/// The longest line the reader accepts. An event record is at most 64 KiB;
/// its line (base64 payload plus decoded `data`) stays far below this.
pub const MAX_LINE_BYTES: usize = 1024 * 1024;
/// Events per `EventStore::import` call (one atomic, fsynced batch each).
pub const IMPORT_BATCH_EVENTS: usize = 1000;
/// Events per store read while exporting.
const EXPORT_PAGE_EVENTS: usize = 256;
/// An export chunk is cut after the line that takes it past this size.
const EXPORT_CHUNK_BYTES: usize = 256 * 1024;

const BASE64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

/// The first line of an export.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Header {
    pub format: String,
    pub version: u32,
    pub exported_at: DateTime<Utc>,
    /// The first seq in the file; 1 (only whole logs are exported).
    pub from_seq: u64,
    /// The last seq in the file: the store's head when the export started.
    pub head_seq: u64,
    pub head_hash: String,
}

/// The last line of an export.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Trailer {
    pub end: bool,
    /// How many event lines the file holds.
    pub events: u64,
    pub head_seq: u64,
    pub head_hash: String,
}

/// One event line.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct EventLine {
    seq: u64,
    stream: String,
    version: u64,
    id: Uuid,
    #[serde(rename = "type")]
    event_type: String,
    schema: u16,
    /// RFC 3339, UTC, microseconds (what the log stores).
    time: String,
    actor: Actor,
    cause: Cause,
    correlation: Uuid,
    /// The decoded payload, for humans; checked on import when decodable.
    #[serde(default)]
    data: Option<serde_json::Value>,
    /// Base64 (standard, padded) of the stored payload bytes.
    payload: String,
    prev_hash: String,
    hash: String,
}

impl EventLine {
    fn from_event(event: &Event) -> EventLine {
        EventLine {
            seq: event.seq,
            stream: event.stream.clone(),
            version: event.version,
            id: event.id,
            event_type: event.event_type.clone(),
            schema: event.schema,
            time: event.time.to_rfc3339_opts(SecondsFormat::Micros, true),
            actor: event.actor.clone(),
            cause: event.cause.clone(),
            correlation: event.correlation,
            data: payload::to_json(&event.event_type, event.schema, &event.payload).ok(),
            payload: BASE64.encode(&event.payload),
            prev_hash: hex::encode(event.prev_hash),
            hash: hex::encode(event.hash),
        }
    }

    /// The event this line describes; the error is what is wrong with a field.
    fn into_event(self) -> Result<(Event, Option<serde_json::Value>), LineProblem> {
        let time = DateTime::parse_from_rfc3339(&self.time)
            .map_err(|error| LineProblem::BadField {
                field: "time",
                reason: format!("{:?} is not an RFC 3339 time: {error}", self.time),
            })?
            .with_timezone(&Utc);
        if time.timestamp_subsec_nanos() % 1000 != 0 {
            return Err(LineProblem::BadField {
                field: "time",
                reason: format!(
                    "{:?} is more precise than the microseconds the log keeps",
                    self.time
                ),
            });
        }
        let payload = BASE64
            .decode(&self.payload)
            .map_err(|error| LineProblem::BadField {
                field: "payload",
                reason: format!("not base64: {error}"),
            })?;
        let event = Event {
            seq: self.seq,
            stream: self.stream,
            version: self.version,
            id: self.id,
            event_type: self.event_type,
            schema: self.schema,
            time,
            actor: self.actor,
            cause: self.cause,
            correlation: self.correlation,
            payload,
            prev_hash: parse_hash("prevHash", &self.prev_hash)?,
            hash: parse_hash("hash", &self.hash)?,
        };
        Ok((event, self.data))
    }
}

fn parse_hash(field: &'static str, text: &str) -> Result<Hash, LineProblem> {
    let bad = || LineProblem::BadField {
        field,
        reason: format!("{text:?} is not a SHA-256 in hex (64 hex digits)"),
    };
    let bytes = hex::decode(text).map_err(|_| bad())?;
    bytes.try_into().map_err(|_| bad())
}

/// What is wrong with one line of an export.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LineProblem {
    #[error("the file is empty, not a Cairn export")]
    EmptyFile,
    #[error("the line is longer than {limit} bytes")]
    TooLong { limit: usize },
    #[error("the line has no newline at its end: the file is cut off in this line (truncated)")]
    CutOff,
    #[error("the line is empty")]
    EmptyLine,
    #[error("not valid JSON: {0}")]
    BadJson(String),
    #[error("not a JSON object")]
    NotAnObject,
    #[error("bad header: {0}")]
    BadHeader(String),
    #[error("bad event line: {0}")]
    BadEvent(String),
    #[error("field {field}: {reason}")]
    BadField { field: &'static str, reason: String },
    #[error("{0}")]
    Chain(String),
    #[error("data does not match the payload (payload is the stored truth; data only shows it): the line was edited")]
    DataMismatch,
    #[error("the store refused the event: {0}")]
    Rejected(String),
    #[error("bad trailer: {0}")]
    BadTrailer(String),
    #[error(
        "the file ends after this line without its trailer line: it is truncated after line {0}"
    )]
    Truncated(u64),
    #[error("more data after the trailer line")]
    AfterTrailer,
    #[error("cannot read: {0}")]
    Read(String),
}

/// Errors of exporting and importing.
#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    /// The file is refused: `line N: what is wrong`.
    #[error("line {line}: {problem}")]
    Line { line: u64, problem: LineProblem },
    #[error("cannot write the export: {0}")]
    Write(std::io::Error),
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The export found the log shorter than the head it captured.
    #[error("the log ended at seq {found} before the head seq {head} the export started from")]
    LogEndedEarly { found: u64, head: u64 },
    #[error("the store returned seq {found} where seq {expected} was expected")]
    StoreGap { expected: u64, found: u64 },
    #[error("cannot import into {path}: {reason}; import needs a new or empty directory")]
    TargetNotEmpty { path: String, reason: String },
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: String,
        source: std::io::Error,
    },
}

impl BackupError {
    fn line(line: u64, problem: LineProblem) -> BackupError {
        BackupError::Line { line, problem }
    }

    /// The line a refused file broke at, if that is the error.
    pub fn line_number(&self) -> Option<u64> {
        match self {
            BackupError::Line { line, .. } => Some(*line),
            _ => None,
        }
    }

    fn io(what: &'static str, path: &Path, source: std::io::Error) -> BackupError {
        BackupError::Io {
            what,
            path: path.display().to_string(),
            source,
        }
    }
}

/// What an export wrote or an import read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExportSummary {
    pub events: u64,
    pub head: Head,
}

// ---------------------------------------------------------------------------
// Writing
// ---------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    Header,
    Events,
    Trailer,
    Done,
}

/// An export in progress: yields the file as chunks of whole lines, reading
/// the store a page at a time up to the head captured at `start`.
pub struct Export {
    store: Arc<dyn EventStore>,
    head: Head,
    exported_at: DateTime<Utc>,
    /// The last seq written.
    written: u64,
    page: VecDeque<Arc<Event>>,
    stage: Stage,
}

impl Export {
    /// Captures the head: the export ends there, whatever is appended later.
    pub fn start(store: Arc<dyn EventStore>) -> Export {
        Export {
            head: store.head(),
            store,
            exported_at: Utc::now(),
            written: 0,
            page: VecDeque::new(),
            stage: Stage::Header,
        }
    }

    /// The last event the export holds.
    pub fn head(&self) -> Head {
        self.head
    }

    /// The next chunk of lines (whole lines only), or None once the trailer
    /// has been given out.
    pub async fn next_chunk(&mut self) -> Result<Option<Vec<u8>>, BackupError> {
        let mut chunk = Vec::new();
        loop {
            match self.stage {
                Stage::Header => {
                    let header = Header {
                        format: FORMAT_NAME.to_string(),
                        version: FORMAT_VERSION,
                        exported_at: self.exported_at,
                        from_seq: 1,
                        head_seq: self.head.seq,
                        head_hash: hex::encode(self.head.hash),
                    };
                    push_line(&mut chunk, &header);
                    self.stage = Stage::Events;
                }
                Stage::Events => {
                    if self.page.is_empty() {
                        if self.written >= self.head.seq {
                            self.stage = Stage::Trailer;
                            continue;
                        }
                        self.read_page().await?;
                    }
                    while let Some(event) = self.page.pop_front() {
                        push_line(&mut chunk, &EventLine::from_event(&event));
                        self.written = event.seq;
                        if chunk.len() >= EXPORT_CHUNK_BYTES {
                            return Ok(Some(chunk));
                        }
                    }
                }
                Stage::Trailer => {
                    let trailer = Trailer {
                        end: true,
                        events: self.head.seq,
                        head_seq: self.head.seq,
                        head_hash: hex::encode(self.head.hash),
                    };
                    push_line(&mut chunk, &trailer);
                    self.stage = Stage::Done;
                    return Ok(Some(chunk));
                }
                Stage::Done => return Ok(None),
            }
        }
    }

    async fn read_page(&mut self) -> Result<(), BackupError> {
        let wanted = (self.head.seq - self.written).min(EXPORT_PAGE_EVENTS as u64) as usize;
        let page = self.store.read(self.written, wanted).await?;
        // `read` is gap-free by contract; an export must never skip silently.
        for (expected, event) in (self.written + 1..).zip(&page) {
            if event.seq != expected {
                return Err(BackupError::StoreGap {
                    expected,
                    found: event.seq,
                });
            }
        }
        if page.is_empty() {
            return Err(BackupError::LogEndedEarly {
                found: self.written,
                head: self.head.seq,
            });
        }
        self.page.extend(page);
        Ok(())
    }
}

fn push_line<T: Serialize>(chunk: &mut Vec<u8>, value: &T) {
    serde_json::to_writer(&mut *chunk, value).expect("export lines serialize to JSON");
    chunk.push(b'\n');
}

/// Writes a whole export of `store` to `out` (and flushes it).
pub async fn write_export(
    store: Arc<dyn EventStore>,
    out: &mut dyn Write,
) -> Result<ExportSummary, BackupError> {
    let mut export = Export::start(store);
    while let Some(chunk) = export.next_chunk().await? {
        out.write_all(&chunk).map_err(BackupError::Write)?;
    }
    out.flush().map_err(BackupError::Write)?;
    Ok(ExportSummary {
        events: export.head.seq,
        head: export.head,
    })
}

// ---------------------------------------------------------------------------
// Reading
// ---------------------------------------------------------------------------

/// Reads an export line by line, checking the chain as it goes.
pub struct ExportReader<R> {
    input: R,
    max_line_bytes: usize,
    /// The number of the last line read.
    line: u64,
    buffer: Vec<u8>,
    header: Option<Header>,
    last_seq: u64,
    last_hash: Hash,
    last_time: Option<DateTime<Utc>>,
    events: u64,
    finished: bool,
}

impl<R: BufRead> ExportReader<R> {
    pub fn new(input: R) -> ExportReader<R> {
        ExportReader::with_max_line_bytes(input, MAX_LINE_BYTES)
    }

    pub fn with_max_line_bytes(input: R, max_line_bytes: usize) -> ExportReader<R> {
        ExportReader {
            input,
            max_line_bytes,
            line: 0,
            buffer: Vec::new(),
            header: None,
            last_seq: 0,
            last_hash: GENESIS_HASH,
            last_time: None,
            events: 0,
            finished: false,
        }
    }

    /// The number of the last line read (1 is the header).
    pub fn line(&self) -> u64 {
        self.line
    }

    /// The header, once read.
    pub fn header(&self) -> Option<&Header> {
        self.header.as_ref()
    }

    /// What was read so far: after `next_event` returned None, the whole file.
    pub fn summary(&self) -> ExportSummary {
        ExportSummary {
            events: self.events,
            head: Head {
                seq: self.last_seq,
                hash: self.last_hash,
            },
        }
    }

    /// The next event, checked against the one before it; None once the
    /// trailer has been read and checked and nothing follows it.
    pub fn next_event(&mut self) -> Result<Option<Event>, BackupError> {
        if self.finished {
            return Ok(None);
        }
        if self.header.is_none() {
            self.read_header()?;
        }
        if !self.read_line()? {
            return Err(self.error(LineProblem::Truncated(self.line)));
        }
        let value = self.parse_json()?;
        if value.get("end").is_some() {
            self.check_trailer(value)?;
            if self.read_line()? {
                return Err(self.error(LineProblem::AfterTrailer));
            }
            self.finished = true;
            return Ok(None);
        }
        let line: EventLine =
            deserialize(value).map_err(|reason| self.error(LineProblem::BadEvent(reason)))?;
        let (event, data) = line.into_event().map_err(|problem| self.error(problem))?;
        self.check_event(&event, data)
            .map_err(|problem| self.error(problem))?;
        self.last_seq = event.seq;
        self.last_hash = event.hash;
        self.last_time = Some(event.time);
        self.events += 1;
        Ok(Some(event))
    }

    fn error(&self, problem: LineProblem) -> BackupError {
        BackupError::line(self.line, problem)
    }

    fn read_header(&mut self) -> Result<(), BackupError> {
        if !self.read_line()? {
            return Err(BackupError::line(1, LineProblem::EmptyFile));
        }
        let value = self.parse_json()?;
        let header: Header =
            deserialize(value).map_err(|reason| self.error(LineProblem::BadHeader(reason)))?;
        let bad = |reason: String| BackupError::line(1, LineProblem::BadHeader(reason));
        if header.format != FORMAT_NAME {
            return Err(bad(format!(
                "format {:?} is not {FORMAT_NAME:?}: not a Cairn export",
                header.format
            )));
        }
        if header.version != FORMAT_VERSION {
            return Err(bad(format!(
                "export format version {} is not one this build reads ({FORMAT_VERSION})",
                header.version
            )));
        }
        if header.from_seq != 1 {
            return Err(bad(format!(
                "fromSeq {} is not 1: only an export of a whole log can be imported",
                header.from_seq
            )));
        }
        parse_hash("headHash", &header.head_hash).map_err(|problem| bad(problem.to_string()))?;
        self.header = Some(header);
        Ok(())
    }

    fn check_event(
        &self,
        event: &Event,
        data: Option<serde_json::Value>,
    ) -> Result<(), LineProblem> {
        let expected = self.last_seq + 1;
        if event.seq != expected {
            return Err(LineProblem::Chain(format!(
                "seq {} where seq {expected} was expected: a line is missing, repeated or out of order",
                event.seq
            )));
        }
        if event.prev_hash != self.last_hash {
            return Err(LineProblem::Chain(format!(
                "prevHash does not match the hash of seq {} (line {})",
                self.last_seq,
                self.line - 1
            )));
        }
        if event.compute_hash() != event.hash {
            return Err(LineProblem::Chain(
                "hash does not match the event's content: the event was changed".into(),
            ));
        }
        if self.last_time.is_some_and(|last| event.time < last) {
            return Err(LineProblem::Chain(
                "time goes backwards from the previous event".into(),
            ));
        }
        if let Some(data) = data.filter(|data| !data.is_null()) {
            match payload::to_json(&event.event_type, event.schema, &event.payload) {
                Ok(decoded) if decoded.is_null() || decoded == data => {}
                Ok(_) => return Err(LineProblem::DataMismatch),
                Err(error) => {
                    return Err(LineProblem::BadField {
                        field: "payload",
                        reason: format!("does not decode as {}: {error}", event.event_type),
                    })
                }
            }
        }
        Ok(())
    }

    fn check_trailer(&self, value: serde_json::Value) -> Result<(), BackupError> {
        let trailer: Trailer =
            deserialize(value).map_err(|reason| self.error(LineProblem::BadTrailer(reason)))?;
        let bad = |reason: String| self.error(LineProblem::BadTrailer(reason));
        if !trailer.end {
            return Err(bad("end is not true".into()));
        }
        if trailer.events != self.events {
            return Err(bad(format!(
                "it counts {} events, the file holds {}",
                trailer.events, self.events
            )));
        }
        if trailer.head_seq != self.last_seq {
            return Err(bad(format!(
                "headSeq {} is not the last seq read, {}",
                trailer.head_seq, self.last_seq
            )));
        }
        if trailer.head_hash != hex::encode(self.last_hash) {
            return Err(bad(format!(
                "headHash {} is not the hash of the last event, {}",
                trailer.head_hash,
                hex::encode(self.last_hash)
            )));
        }
        let header = self.header.as_ref().expect("the header was read first");
        if (header.head_seq, &header.head_hash) != (trailer.head_seq, &trailer.head_hash) {
            return Err(bad(format!(
                "it ends at seq {} ({}), the header announced seq {} ({})",
                trailer.head_seq, trailer.head_hash, header.head_seq, header.head_hash
            )));
        }
        Ok(())
    }

    fn parse_json(&self) -> Result<serde_json::Value, BackupError> {
        if self.buffer.is_empty() {
            return Err(self.error(LineProblem::EmptyLine));
        }
        let value: serde_json::Value = serde_json::from_slice(&self.buffer)
            .map_err(|error| self.error(LineProblem::BadJson(json_error(&error))))?;
        if !value.is_object() {
            return Err(self.error(LineProblem::NotAnObject));
        }
        Ok(value)
    }

    /// Reads the next line into the buffer, without its newline. False at the
    /// end of the input; an error for a line over the limit or without newline.
    fn read_line(&mut self) -> Result<bool, BackupError> {
        self.buffer.clear();
        let number = self.line + 1;
        loop {
            let available = match self.input.fill_buf() {
                Ok(available) => available,
                Err(error) if error.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(error) => {
                    return Err(BackupError::line(
                        number,
                        LineProblem::Read(error.to_string()),
                    ))
                }
            };
            if available.is_empty() {
                if self.buffer.is_empty() {
                    return Ok(false);
                }
                self.line = number;
                return Err(self.error(LineProblem::CutOff));
            }
            let (taken, complete) = match available.iter().position(|byte| *byte == b'\n') {
                Some(end) => (end, true),
                None => (available.len(), false),
            };
            if self.buffer.len() + taken > self.max_line_bytes {
                self.line = number;
                return Err(self.error(LineProblem::TooLong {
                    limit: self.max_line_bytes,
                }));
            }
            self.buffer.extend_from_slice(&available[..taken]);
            self.input.consume(taken + usize::from(complete));
            if complete {
                self.line = number;
                return Ok(true);
            }
        }
    }
}

/// Deserializes with the path of the failing field in the message.
fn deserialize<T: serde::de::DeserializeOwned>(value: serde_json::Value) -> Result<T, String> {
    serde_path_to_error::deserialize(value).map_err(|error| {
        let path = error.path().to_string();
        if path == "." {
            error.into_inner().to_string()
        } else {
            format!("field {path}: {}", error.into_inner())
        }
    })
}

/// serde_json's message without its "at line 1 column N" (the line is ours).
fn json_error(error: &serde_json::Error) -> String {
    let text = error.to_string();
    let message = match text.rfind(" at line ") {
        Some(at) => &text[..at],
        None => &text,
    };
    format!("{message} (column {})", error.column())
}

// ---------------------------------------------------------------------------
// Importing
// ---------------------------------------------------------------------------

/// What an import did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImportSummary {
    pub events: u64,
    pub head: Head,
    pub elapsed: Duration,
}

impl ImportSummary {
    /// Events per second, for the report.
    pub fn rate(&self) -> f64 {
        self.events as f64 / self.elapsed.as_secs_f64().max(1e-6)
    }
}

/// What the parsing thread hands to the importing task.
enum Parsed {
    Batch { first_line: u64, events: Vec<Event> },
    Done(ExportSummary),
    Failed(BackupError),
}

/// Imports an export into `store`, which must be empty. Events go in batches
/// of `IMPORT_BATCH_EVENTS`, each atomic and durable; on error, what was
/// imported before stays in the store (`import_into_dir` discards it).
pub async fn import_into_store<R>(
    store: &dyn EventStore,
    input: R,
) -> Result<ImportSummary, BackupError>
where
    R: BufRead + Send + 'static,
{
    import_batched(store, input, IMPORT_BATCH_EVENTS).await
}

async fn import_batched<R>(
    store: &dyn EventStore,
    input: R,
    batch_events: usize,
) -> Result<ImportSummary, BackupError>
where
    R: BufRead + Send + 'static,
{
    let started = Instant::now();
    let head = store.head();
    if head.seq != 0 {
        return Err(BackupError::TargetNotEmpty {
            path: "the store".into(),
            reason: format!("its log already holds events up to seq {}", head.seq),
        });
    }
    // Parsing (and reading stdin or a file) blocks: it runs on its own thread,
    // a batch or two ahead of the store.
    let (sender, mut receiver) = tokio::sync::mpsc::channel(2);
    let parser = tokio::task::spawn_blocking(move || parse_batches(input, batch_events, sender));
    let mut outcome = None;
    while let Some(parsed) = receiver.recv().await {
        match parsed {
            Parsed::Batch { first_line, events } => {
                if let Err(error) = store.import(events).await {
                    outcome = Some(Err(match error {
                        StoreError::ImportRejected { index, reason, .. } => BackupError::line(
                            first_line + index as u64,
                            LineProblem::Rejected(reason),
                        ),
                        other => BackupError::Store(other),
                    }));
                    break;
                }
            }
            Parsed::Done(summary) => {
                outcome = Some(Ok(summary));
                break;
            }
            Parsed::Failed(error) => {
                outcome = Some(Err(error));
                break;
            }
        }
    }
    // Dropping the receiver stops a parser that is still going.
    drop(receiver);
    let _ = parser.await;
    let summary = outcome.unwrap_or_else(|| {
        Err(BackupError::Io {
            what: "the parser stopped early while reading",
            path: "the export".into(),
            source: std::io::Error::other("parser thread ended without an answer"),
        })
    })?;
    let head = store.head();
    debug_assert_eq!(head, summary.head);
    Ok(ImportSummary {
        events: summary.events,
        head,
        elapsed: started.elapsed(),
    })
}

fn parse_batches<R: BufRead>(
    input: R,
    batch_events: usize,
    sender: tokio::sync::mpsc::Sender<Parsed>,
) {
    let mut reader = ExportReader::new(input);
    let mut batch = Vec::with_capacity(batch_events);
    let mut first_line = 0;
    loop {
        let (event, end) = match reader.next_event() {
            Ok(Some(event)) => (Some(event), None),
            Ok(None) => (None, Some(Parsed::Done(reader.summary()))),
            Err(error) => (None, Some(Parsed::Failed(error))),
        };
        if let Some(event) = event {
            if batch.is_empty() {
                first_line = reader.line();
            }
            batch.push(event);
        }
        // At the end or an error, hand over what was read before it too, so
        // that a store rejection of an earlier line is the error reported.
        if !batch.is_empty() && (end.is_some() || batch.len() >= batch_events) {
            let events = std::mem::replace(&mut batch, Vec::with_capacity(batch_events));
            if sender
                .blocking_send(Parsed::Batch { first_line, events })
                .is_err()
            {
                return;
            }
        }
        if let Some(end) = end {
            let _ = sender.blocking_send(end);
            return;
        }
    }
}

/// Imports an export into a new data directory `dir`, through a temporary
/// sibling that becomes `dir` only when the whole file checked out (see the
/// module docs). `dir` must not exist, or be an empty directory.
pub async fn import_into_dir<R>(dir: &Path, input: R) -> Result<ImportSummary, BackupError>
where
    R: BufRead + Send + 'static,
{
    import_into_dir_batched(dir, input, IMPORT_BATCH_EVENTS).await
}

async fn import_into_dir_batched<R>(
    dir: &Path,
    input: R,
    batch_events: usize,
) -> Result<ImportSummary, BackupError>
where
    R: BufRead + Send + 'static,
{
    check_target(dir)?;
    let staging = staging_dir(dir)?;
    if staging.exists() {
        // Our own name: a leftover of an import of an earlier process with this pid.
        std::fs::remove_dir_all(&staging)
            .map_err(|error| BackupError::io("cannot remove", &staging, error))?;
    }
    let result = import_staged(&staging, input, batch_events).await;
    let result = result.and_then(|summary| {
        // Check again: the target may have appeared while the import ran.
        check_target(dir)?;
        std::fs::rename(&staging, dir)
            .map_err(|error| BackupError::io("cannot rename the import to", dir, error))?;
        sync_parent(dir)?;
        Ok(summary)
    });
    if result.is_err() && staging.exists() {
        if let Err(error) = std::fs::remove_dir_all(&staging) {
            tracing::warn!(path = %staging.display(), %error, "cannot remove the failed import");
        }
    }
    result
}

async fn import_staged<R>(
    staging: &Path,
    input: R,
    batch_events: usize,
) -> Result<ImportSummary, BackupError>
where
    R: BufRead + Send + 'static,
{
    let store = crate::store::open_off_runtime(crate::store::StoreConfig::new(staging)).await?;
    let result = import_batched(store.as_ref(), input, batch_events).await;
    // The writer finishes; dropping the store closes its files and lock.
    store.close().await;
    drop(store);
    result
}

/// `<parent>/<name>.importing-<pid>`.
fn staging_dir(dir: &Path) -> Result<PathBuf, BackupError> {
    let name = dir.file_name().ok_or_else(|| BackupError::TargetNotEmpty {
        path: dir.display().to_string(),
        reason: "the path does not end in a directory name".into(),
    })?;
    let mut staging = name.to_os_string();
    staging.push(format!(".importing-{}", std::process::id()));
    Ok(dir.with_file_name(staging))
}

/// The target must not exist, or be an empty directory.
fn check_target(dir: &Path) -> Result<(), BackupError> {
    let not_empty = |reason: &str| BackupError::TargetNotEmpty {
        path: dir.display().to_string(),
        reason: reason.to_string(),
    };
    match std::fs::symlink_metadata(dir) {
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(error) => Err(BackupError::io("cannot look at", dir, error)),
        Ok(metadata) if metadata.is_dir() => {
            let mut entries = std::fs::read_dir(dir)
                .map_err(|error| BackupError::io("cannot list", dir, error))?;
            match entries.next() {
                None => Ok(()),
                Some(_) if crate::store::holds_a_log(dir) => Err(not_empty(
                    "it is already a Cairn data directory (an import never merges into a log)",
                )),
                Some(_) => Err(not_empty("the directory is not empty")),
            }
        }
        Ok(_) => Err(not_empty("it is not a directory")),
    }
}

/// Makes the rename durable: fsync the directory that holds `dir`.
fn sync_parent(dir: &Path) -> Result<(), BackupError> {
    let parent = match dir.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    };
    std::fs::File::open(parent)
        .and_then(|handle| handle.sync_all())
        .map_err(|error| BackupError::io("cannot sync", parent, error))
}

#[cfg(test)]
mod tests;
