//! [`SegmentReader`]: reads frames up to the durable end, from any thread,
//! and the state the writer publishes to it.

use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock, PoisonError};

use bytes::{Bytes, BytesMut};

use super::format::{self, FRAME_HEADER_LEN, SEGMENT_HEADER_LEN};
use super::{io_error, read_exact_at, DiskFile, Frame, LogError, Position};
use crate::store::disk::Mapping;

/// A segment as readers see it.
#[derive(Debug, Clone)]
pub(super) struct SegmentEntry {
    pub number: u64,
    pub path: PathBuf,
    pub file: Arc<dyn DiskFile>,
    pub first_seq: u64,
    /// The data end of a sealed segment; `None` for the tail.
    pub sealed_end: Option<u64>,
    /// The sealed segment's mapping while some read of it is alive (shared
    /// by the clones of this entry in later publications).
    pub mapping: Arc<SegmentMapping>,
}

/// A sealed segment's mapping: made by a read when none is alive, and
/// unmapped when the last `Bytes` read from it is dropped, so that the
/// mapped pages of a log read once (a replay, the background verification)
/// do not stay in the daemon's resident memory. Its `Debug` says whether
/// there is one, not what it holds.
#[derive(Default)]
pub(super) struct SegmentMapping {
    /// The live mapping, if any.
    live: Mutex<Option<std::sync::Weak<dyn AsRef<[u8]> + Send + Sync>>>,
    /// The disk does not map files (the simulated disk), or mapping failed.
    unmappable: OnceLock<()>,
}

impl SegmentMapping {
    /// The live mapping, or a new one; `None` when the segment is read
    /// instead.
    fn get(&self, entry: &SegmentEntry) -> Option<Mapping> {
        if self.unmappable.get().is_some() {
            return None;
        }
        let mut live = self.live.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(mapping) = live.as_ref().and_then(std::sync::Weak::upgrade) {
            return Some(mapping);
        }
        match entry.file.map() {
            Ok(Some(mapping)) => {
                *live = Some(Arc::downgrade(&mapping));
                Some(mapping)
            }
            Ok(None) => {
                let _ = self.unmappable.set(());
                None
            }
            Err(error) => {
                tracing::warn!(path = %entry.path.display(), %error, "a sealed segment cannot be mapped; reading it instead");
                let _ = self.unmappable.set(());
                None
            }
        }
    }
}

impl std::fmt::Debug for SegmentMapping {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let live = self.live.lock().unwrap_or_else(PoisonError::into_inner);
        let state = if self.unmappable.get().is_some() {
            "read, not mapped"
        } else if live.as_ref().is_some_and(|weak| weak.strong_count() > 0) {
            "mapped"
        } else if live.is_some() {
            "unmapped"
        } else {
            "not read yet"
        };
        formatter.write_str(state)
    }
}

/// A range of a mapped segment, owned by the `Bytes` of one read: the
/// records sliced from it keep the mapping alive.
struct MappedRange {
    mapping: Mapping,
    start: usize,
    end: usize,
}

impl AsRef<[u8]> for MappedRange {
    fn as_ref(&self) -> &[u8] {
        &(*self.mapping).as_ref()[self.start..self.end]
    }
}

/// What the writer has made durable: the segments (contiguous numbers, in
/// order) and the durable end. Replaced as a whole under the lock.
#[derive(Debug, Clone)]
pub(super) struct Published {
    pub segments: Arc<Vec<SegmentEntry>>,
    pub durable_end: Position,
}

/// The state shared by the writer and every reader.
#[derive(Debug)]
pub(super) struct Shared {
    published: Mutex<Published>,
}

impl Shared {
    pub fn new(published: Published) -> Shared {
        Shared {
            published: Mutex::new(published),
        }
    }

    /// A copy of what is published now (two `Arc` clones and a position).
    pub fn snapshot(&self) -> Published {
        self.published
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Publishes a new durable end, with the segments named and sealed
    /// since the last call.
    pub fn publish(&self, durable_end: Position, named: Vec<SegmentEntry>, sealed: &[(u64, u64)]) {
        let mut published = self
            .published
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if !named.is_empty() || !sealed.is_empty() {
            let mut segments: Vec<SegmentEntry> = published.segments.as_ref().clone();
            segments.extend(named);
            for (number, data_end) in sealed {
                if let Some(entry) = segments
                    .iter_mut()
                    .rev()
                    .find(|entry| entry.number == *number)
                {
                    entry.sealed_end = Some(*data_end);
                }
            }
            published.segments = Arc::new(segments);
        }
        published.durable_end = durable_end;
    }
}

/// Reads the log up to its durable end. A clone shares the same log; it is
/// `Send + Sync` and meant for many threads.
#[derive(Debug, Clone)]
pub struct SegmentReader {
    pub(super) shared: Arc<Shared>,
}

impl SegmentReader {
    /// Where the next frame will go; nothing at or past it is read.
    pub fn durable_end(&self) -> Position {
        self.shared.snapshot().durable_end
    }

    /// The position of the log's first frame (the start of the first
    /// segment's data).
    pub fn start(&self) -> Position {
        let published = self.shared.snapshot();
        Position {
            segment: published.segments[0].number,
            offset: SEGMENT_HEADER_LEN,
        }
    }

    /// The start of the data of the segment that holds `seq`: the last one
    /// whose first seq is at most `seq` (the first segment when none is).
    pub fn segment_of_seq(&self, seq: u64) -> Position {
        let published = self.shared.snapshot();
        let segments = &published.segments;
        let after = segments.partition_point(|entry| entry.first_seq <= seq);
        let entry = &segments[after.saturating_sub(1)];
        Position {
            segment: entry.number,
            offset: SEGMENT_HEADER_LEN,
        }
    }

    /// Frames from `from`, in order, crossing segments, never at or past the
    /// durable end, stopping once about `max_bytes` of frames were read
    /// (always at least one frame when there is one). `from` must be a
    /// frame start, a sealed segment's data end (reading goes on in the next
    /// segment), or at or past the durable end (nothing to read).
    ///
    /// Every frame is checked (length, checksum, layout, and that seqs
    /// continue); a bad one is [`LogError::Corrupt`] naming the segment file
    /// and the offset.
    pub fn read_frames(&self, from: Position, max_bytes: usize) -> Result<Vec<Frame>, LogError> {
        let published = self.shared.snapshot();
        let segments = &published.segments;
        let durable_end = published.durable_end;
        let mut frames = Vec::new();
        if from >= durable_end {
            return Ok(frames);
        }
        let first_number = segments[0].number;
        if from.segment < first_number
            || from.offset < SEGMENT_HEADER_LEN
            || !from.offset.is_multiple_of(format::FRAME_ALIGN)
        {
            return Err(LogError::BadPosition {
                position: from,
                reason: "it is before the log's first frame or not 8-aligned".to_string(),
            });
        }
        let max_bytes = max_bytes as u64;
        let mut read_bytes = 0u64;
        let mut position = from;
        // The seq the next frame must start with, once one is known.
        let mut expected_seq: Option<u64> = None;
        'segments: loop {
            if position >= durable_end {
                break;
            }
            let entry = &segments[(position.segment - first_number) as usize];
            let limit = if position.segment == durable_end.segment {
                durable_end.offset
            } else {
                entry
                    .sealed_end
                    .expect("every segment before the durable end's is sealed")
            };
            if position.offset >= limit {
                if position.offset > limit {
                    return Err(LogError::BadPosition {
                        position,
                        reason: format!("the segment's data ends at offset {limit}"),
                    });
                }
                position = Position {
                    segment: position.segment + 1,
                    offset: SEGMENT_HEADER_LEN,
                };
                continue;
            }
            if position.offset == SEGMENT_HEADER_LEN {
                expected_seq = Some(entry.first_seq);
            }
            let budget = max_bytes.saturating_sub(read_bytes).max(FRAME_HEADER_LEN);
            let want = budget.min(limit - position.offset);
            let mut buffer = read_bytes_at(entry, position.offset, want)?;
            let mut used = 0usize;
            while used < buffer.len() {
                let offset = position.offset + used as u64;
                let rest = &buffer[used..];
                let len = match format::peek_len(rest) {
                    Some(len) => len,
                    None if frames.is_empty() => {
                        let reason =
                            format!("the data ends at offset {limit}, inside a frame header");
                        return Err(corrupt(entry, offset, reason));
                    }
                    None => break 'segments,
                };
                if let Err(reason) = format::check_len(len, offset, limit) {
                    return Err(corrupt(entry, offset, reason));
                }
                if len > rest.len() as u64 {
                    if !frames.is_empty() {
                        break 'segments;
                    }
                    // The first frame is larger than the budget: read it
                    // whole on its own.
                    buffer = read_bytes_at(entry, offset, len)?;
                    position.offset = offset;
                    used = 0;
                    continue;
                }
                let bytes = buffer.slice(used..used + len as usize);
                let frame = decode_frame(entry, offset, bytes, expected_seq)?;
                expected_seq = Some(frame.first_seq + frame.records.len() as u64);
                frames.push(frame);
                used += len as usize;
                read_bytes += len;
                if read_bytes >= max_bytes {
                    break 'segments;
                }
            }
            position.offset += used as u64;
        }
        Ok(frames)
    }
}

/// The bytes at `offset..offset + len` of a segment: for a bulk read of a
/// sealed segment on a disk that maps files, a slice of its mapping; else
/// read into one buffer.
///
/// **Architecture Invariant:** nothing writes or cuts a sealed segment while
/// the log is open (the writer seals a segment after its last write; repairs
/// run at open, before any read), so a mapping of one never changes under a
/// reader and never shrinks (which would be SIGBUS, not an error).
fn read_bytes_at(entry: &SegmentEntry, offset: u64, len: u64) -> Result<Bytes, LogError> {
    // Bulk reads only (a replay, an export, the verification read 256 KiB at
    // a time, or a segment's data whole): a point read of a few KiB costs
    // less read into a buffer than a mapping made, faulted in and unmapped
    // for it.
    let bulk = len >= READ_BUFFER_BYTES as u64
        || entry.sealed_end == Some(SEGMENT_HEADER_LEN.saturating_add(len));
    if entry.sealed_end.is_some() && bulk {
        if let Some(mapping) = entry.mapping.get(entry) {
            let end = offset.saturating_add(len);
            if end <= (*mapping).as_ref().len() as u64 {
                return Ok(Bytes::from_owner(MappedRange {
                    mapping,
                    start: offset as usize,
                    end: end as usize,
                }));
            }
        }
    }
    let len = len as usize;
    // A pooled buffer for the reads that fill most of one; a small point
    // read allocates what it reads, not a quarter of a MiB.
    if !(READ_BUFFER_BYTES / 4..=READ_BUFFER_BYTES).contains(&len) {
        let mut buffer = BytesMut::zeroed(len);
        read_exact_at(entry.file.as_ref(), &mut buffer, offset).map_err(io_error(
            format_args!("read {len} bytes at offset {offset} of"),
            &entry.path,
        ))?;
        return Ok(buffer.freeze());
    }
    let mut buffer = ReadBuffer::take(len);
    read_exact_at(entry.file.as_ref(), buffer.as_mut(), offset).map_err(io_error(
        format_args!("read {len} bytes at offset {offset} of"),
        &entry.path,
    ))?;
    Ok(Bytes::from_owner(buffer))
}

/// The size of a pooled read buffer: the largest read of a range of records
/// (`log_store::for_records_in_range`).
const READ_BUFFER_BYTES: usize = 256 << 10;

/// Read buffers kept for reuse, at most (16 MiB).
const POOLED_READ_BUFFERS: usize = 64;

/// Buffers of finished reads. A replay reads the log 256 KiB at a time; a
/// fresh buffer for each read cost its reading thread page faults and
/// zeroing, for every byte, on top of the copy from the page cache.
static READ_BUFFERS: Mutex<Vec<Vec<u8>>> = Mutex::new(Vec::new());

/// A read buffer from the pool: `READ_BUFFER_BYTES` initialized bytes, of
/// which the first `used` hold the read. Back in the pool when the last
/// `Bytes` of it is dropped.
struct ReadBuffer {
    bytes: Vec<u8>,
    used: usize,
}

impl ReadBuffer {
    fn take(used: usize) -> ReadBuffer {
        let pooled = READ_BUFFERS
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .pop();
        let bytes = pooled.unwrap_or_else(|| vec![0; READ_BUFFER_BYTES]);
        ReadBuffer { bytes, used }
    }
}

impl AsRef<[u8]> for ReadBuffer {
    fn as_ref(&self) -> &[u8] {
        &self.bytes[..self.used]
    }
}

impl AsMut<[u8]> for ReadBuffer {
    fn as_mut(&mut self) -> &mut [u8] {
        &mut self.bytes[..self.used]
    }
}

impl Drop for ReadBuffer {
    fn drop(&mut self) {
        let mut pool = READ_BUFFERS.lock().unwrap_or_else(PoisonError::into_inner);
        if pool.len() < POOLED_READ_BUFFERS {
            pool.push(std::mem::take(&mut self.bytes));
        }
    }
}

/// Checks one frame, held whole in `bytes`, and slices it into a `Frame`.
fn decode_frame(
    entry: &SegmentEntry,
    offset: u64,
    bytes: Bytes,
    expected_seq: Option<u64>,
) -> Result<Frame, LogError> {
    let header =
        format::check_frame(&bytes, offset).map_err(|reason| corrupt(entry, offset, reason))?;
    if let Some(expected) = expected_seq {
        if header.first_seq != expected {
            return Err(corrupt(
                entry,
                offset,
                format!(
                    "the frame starts at seq {}, but the log continues at {expected}",
                    header.first_seq
                ),
            ));
        }
    }
    let (meta, records) = format::frame_ranges(&bytes, &header);
    Ok(Frame {
        position: Position {
            segment: entry.number,
            offset,
        },
        next: Position {
            segment: entry.number,
            offset: offset + header.len,
        },
        first_seq: header.first_seq,
        meta: bytes.slice(meta),
        records: records
            .into_iter()
            .map(|range| bytes.slice(range))
            .collect(),
    })
}

fn corrupt(entry: &SegmentEntry, offset: u64, reason: String) -> LogError {
    LogError::Corrupt {
        segment: entry.path.clone(),
        offset,
        reason,
    }
}
