//! Cairn's log in segment files: frames, segments, group writes with one
//! write and one fdatasync per segment, a reader that never passes the
//! durable end, and recovery that tells a torn tail from damage.
//!
//! Every file and directory operation goes through [`Disk`] and
//! [`DiskFile`], so that the simulated disk can cut the power anywhere.
//!
//! # Layout
//!
//! A log directory holds the segment files `NNNNNNNNNNNNNNNN.seg` (the
//! segment number in 16 lower-case hex digits, numbered from 1, contiguous)
//! and at most one `spare.tmp`, the next segment, zero-filled ahead of use.
//! Every segment file has a fixed size (`segment_bytes`, 32 MiB by default),
//! zero-filled before it gets its name. All integers are little-endian.
//!
//! Segment header, at offset 0:
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0 | 8 | magic `CAIRNSEG` |
//! | 8 | 4 | format, 1 |
//! | 12 | 4 | reserved, 0 |
//! | 16 | 8 | segment number, the same as in the file name |
//! | 24 | 8 | first seq: the seq the segment's first record has, or will have |
//! | 32 | 8 | the segment's size in bytes |
//! | 40 | 20 | zeros |
//! | 60 | 4 | crc32c of bytes 0..60 |
//!
//! Frames follow from offset 64, one per append request, each at a multiple
//! of 8, never spanning two segments and never reaching into the last 64
//! bytes (the footer's place). The data area is `64..segment_bytes - 64`.
//!
//! | offset in frame | size | field |
//! |---|---|---|
//! | 0 | 4 | `len`: the whole frame's length, header and padding included; never zero, a multiple of 8 |
//! | 4 | 4 | crc32c of bytes `8..len` |
//! | 8 | 8 | first seq: the seq of the first record |
//! | 16 | 4 | count of records (may be 0) |
//! | 20 | 4 | group start: the offset in this segment of the first frame of the write that carried this frame |
//! | 24 | 4 | meta length |
//! | 28 | 4 | reserved, 0 |
//! | 32 | meta length | meta (opaque here) |
//! | … | 4 + n, per record | each record: its length `n`, then its bytes; record `i` has seq `first seq + i` |
//! | … | to a multiple of 8 | zero padding |
//!
//! Footer, in the last 64 bytes of a sealed segment:
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0 | 8 | magic `CAIRNEND` |
//! | 8 | 8 | last seq: the seq of the segment's last record (its first seq minus one when it holds none) |
//! | 16 | 8 | data end: the offset just past the last frame |
//! | 24 | 32 | the chain hash after the last frame, as the caller gave it |
//! | 56 | 4 | zeros |
//! | 60 | 4 | crc32c of bytes 0..60 |
//!
//! Zeros end the data: a frame's length is never zero and a segment is all
//! zeros past its last frame, up to the footer.
//!
//! # Writing
//!
//! [`SegmentWriter::append`] writes a group of frames with one `write_at`
//! and one `sync_data` per segment the group touches. When the next frame
//! does not fit the tail segment, that segment's write also carries the
//! zeros up to the footer and the footer (so sealing costs no extra write or
//! sync), and the next segment is made from the spare: its header and its
//! first frames are written into `spare.tmp` with one write, fdatasynced,
//! renamed to the segment's name, and the directory fsynced. Only after
//! every sync of the group returned does the writer move the durable end
//! that readers see. Any I/O error fails the writer for good; it never
//! retries an fsync (PostgreSQL's "fsyncgate": after a failed fsync Linux
//! may have dropped the dirty pages).
//!
//! The spare is made ahead of use: at open, and at the end of every append
//! that used the previous one (after the rename freed the name
//! `spare.tmp`). A background thread makes it
//! ([`SpareMaker::BackgroundThread`], the default, so no append waits for
//! the zero-fill), or the writer itself before that append returns
//! ([`SpareMaker::Writer`]: every disk operation on one thread, in an order
//! a simulated disk's seed fully decides). A roll that finds no spare ready
//! (making it failed, or a group filled more than one segment) makes one on
//! the spot, and an error then fails the writer. Making a spare: create
//! `spare.tmp` (`CreateNew`; a leftover is removed first), write zeros to
//! `segment_bytes` in 1 MiB chunks, fdatasync, fsync the directory.
//!
//! # Recovery at open
//!
//! 1. A new log directory is created with `Disk::create_dir_all`, and the
//!    parent of every directory level that did not exist is fsynced, top
//!    down (so the data directory's parent too when the data directory is
//!    new; the caller passes no flag). An existing log directory gets its
//!    parent fsynced once. A leftover `spare.tmp` is deleted (it is made
//!    again). A directory with no segment gets segment 1 (first seq 1),
//!    made like every spare, then its header written and fdatasynced, then
//!    renamed and the directory fsynced.
//! 2. Segment numbers must be contiguous. Every header must be valid (magic,
//!    format, checksum, the number of its file name, the file's size);
//!    a bad header is damage, in the last segment too, since a segment gets
//!    its name only after its header was fdatasynced.
//! 3. Every segment but the last must carry a valid footer, with a data end
//!    inside its data area, and the next segment's first seq must be the
//!    footer's last seq plus one. Their frames are not read: a full scan is
//!    the store's `verify`.
//! 4. The last segment is read whole and scanned from offset 64, frame by
//!    frame, checking each one (length, checksum, header, layout, padding,
//!    and that its first seq continues the previous frame's, or the header's
//!    first seq for the first frame) until a zero length followed by zeros
//!    to the end of the data area (a clean end) or a bad frame at offset X.
//! 5. At a bad frame at X, every 8-aligned offset after X is searched for a
//!    valid frame (checksum and layout). If there is none, the tail is torn.
//!    If there are some and all of them have `group start <= X`, the bad
//!    frame is inside the last group write, which was never acknowledged
//!    (acknowledgement follows the group's fdatasync): torn too. Otherwise a
//!    frame of a later write follows the bad one: the log is damaged, and
//!    open fails with [`LogError::Corrupt`] naming the file and X; nothing
//!    acknowledged is ever cut. The limit this implies: damage inside the
//!    very last group write is indistinguishable from a torn write, and is
//!    cut like one.
//! 6. The footer of the last segment is used only when it is valid and
//!    agrees with the scan (its data end is where the data ends, its last
//!    seq is the last record's): then the segment is sealed and the next
//!    append rolls. A footer area that is not zero and not such a footer is
//!    the remains of an interrupted seal.
//! 7. A torn tail is cut: the bytes from X (or from the footer's place, for
//!    an interrupted seal) to the last non-zero byte are overwritten with
//!    zeros in one write and fdatasynced before anything new is written, and
//!    [`Recovery::cut`] reports it. The next open then finds a clean end.
//!
//! After open, when the tail segment holds frames and is not sealed, the
//! writer does not know the chain hash that a footer needs; the caller reads
//! the last frame (at [`Recovery::last_frame`]) and hands the hash to
//! [`SegmentWriter::set_last_hash`]. Until it does, `append` refuses with
//! [`LogError::LastHashUnknown`].
//!
//! # Modules
//!
//! - `format`: the bytes of headers, frames and footers.
//! - `open`: [`open`] and recovery.
//! - `writer`: [`SegmentWriter`].
//! - `reader`: [`SegmentReader`] and the state it shares with the writer.
//! - `spare`: making `spare.tmp`, on a thread or inline.

use std::fmt;
use std::io;
use std::path::PathBuf;

use bytes::Bytes;

use super::disk::{Disk, DiskFile, OpenMode};

mod format;
mod open;
mod reader;
mod spare;
mod writer;

#[cfg(test)]
mod power_loss_tests;
#[cfg(test)]
mod tests;

pub use format::frame_len;
pub use open::{open, open_with};
pub use reader::SegmentReader;
pub use writer::SegmentWriter;

/// The default size of a segment file: 32 MiB. Every open reads the last
/// segment whole (to tell a torn tail from damage before valid frames), and
/// the tail's unused part and the spare are allocated disk: 32 MiB keeps
/// both small beside a log of a million events (about 300 MB), while a
/// sealed segment still holds about 100,000 events.
pub const DEFAULT_SEGMENT_BYTES: u64 = 32 << 20;
/// The smallest segment size accepted.
pub const MIN_SEGMENT_BYTES: u64 = 1024;
/// The largest segment size accepted (1 GiB): offsets must fit the frame
/// header's `u32` fields, and open reads the tail segment whole.
pub const MAX_SEGMENT_BYTES: u64 = 1 << 30;
/// The seq of the first record of a new log.
pub const FIRST_SEQ: u64 = 1;
/// The name of the spare segment in the log directory.
pub const SPARE_NAME: &str = "spare.tmp";

/// How the log's segments are sized.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SegmentConfig {
    /// The size of every new segment file: a multiple of 8 between
    /// [`MIN_SEGMENT_BYTES`] and [`MAX_SEGMENT_BYTES`]. Existing segments
    /// keep the size their header gives.
    pub segment_bytes: u64,
}

impl Default for SegmentConfig {
    fn default() -> SegmentConfig {
        SegmentConfig {
            segment_bytes: DEFAULT_SEGMENT_BYTES,
        }
    }
}

impl SegmentConfig {
    /// The most bytes one frame may take in a new segment.
    pub fn frame_capacity(&self) -> u64 {
        self.segment_bytes - format::SEGMENT_HEADER_LEN - format::SEGMENT_FOOTER_LEN
    }

    fn validate(&self) -> Result<(), LogError> {
        let bytes = self.segment_bytes;
        if !(MIN_SEGMENT_BYTES..=MAX_SEGMENT_BYTES).contains(&bytes) || !bytes.is_multiple_of(8) {
            return Err(LogError::InvalidConfig(format!(
                "segment_bytes {bytes} must be a multiple of 8 between {MIN_SEGMENT_BYTES} and {MAX_SEGMENT_BYTES}"
            )));
        }
        Ok(())
    }
}

/// Who makes the spare segment ahead of use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SpareMaker {
    /// A background thread, started by `open` and stopped when the writer
    /// is dropped, so that no append waits for a spare to be zero-filled.
    #[default]
    BackgroundThread,
    /// The writer, at open and at the end of the append that used the
    /// previous spare (that append returns later by the time it takes).
    /// Every disk operation then happens on the caller's thread, in an
    /// order the seed of a simulated disk fully decides.
    Writer,
}

/// A place in the log: a segment number and a byte offset in it. Ordered
/// by segment, then offset.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Position {
    pub segment: u64,
    pub offset: u64,
}

impl fmt::Display for Position {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(formatter, "segment {} offset {}", self.segment, self.offset)
    }
}

/// One frame to append: one append request.
#[derive(Debug, Clone, Copy)]
pub struct FrameInput<'a> {
    /// The seq of the first record; it must continue the log.
    pub first_seq: u64,
    /// The records, in seq order (may be empty).
    pub records: &'a [Vec<u8>],
    /// Bytes this layer stores and returns without reading them.
    pub meta: &'a [u8],
    /// The chain hash after this frame, written into the footer when the
    /// segment is sealed after it.
    pub last_hash: [u8; 32],
}

/// A frame read back. `meta` and `records` are slices of one read buffer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// Where the frame starts.
    pub position: Position,
    /// Just past the frame, in the same segment: where the next frame starts
    /// (or, at a sealed segment's data end, the next segment's first frame).
    pub next: Position,
    /// The seq of the first record.
    pub first_seq: u64,
    pub meta: Bytes,
    pub records: Vec<Bytes>,
}

/// What `open` found and did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recovery {
    /// The durable end: where the next frame goes (in a sealed tail segment,
    /// its data end; the next append rolls).
    pub end: Position,
    /// The seq the next record will have.
    pub next_seq: u64,
    /// The position of the log's last frame, if it has one.
    pub last_frame: Option<Position>,
    /// The chain hash after the last frame, when a footer gives it: the tail
    /// segment is sealed, or it holds no frame and the segment before it is
    /// sealed. `None` otherwise (a new log, or a tail with frames: read the
    /// last frame, and give its hash to `SegmentWriter::set_last_hash`).
    pub last_hash: Option<[u8; 32]>,
    /// The torn tail that was cut, if any.
    pub cut: Option<TornTail>,
}

/// A torn tail that recovery overwrote with zeros.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TornTail {
    /// The segment number.
    pub segment: u64,
    /// The segment file.
    pub path: PathBuf,
    /// Where the zeros start: the bad frame, or the footer's place.
    pub offset: u64,
    /// How many bytes were zeroed.
    pub bytes_zeroed: u64,
    /// What was wrong at `offset`.
    pub reason: String,
}

/// The errors of the segment layer.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    /// An I/O error; the writer is failed from now on when it was its own.
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: io::Error,
    },
    /// The log is damaged (not merely torn at its tail).
    #[error("the log is damaged in {} at offset {offset}: {reason}", segment.display())]
    Corrupt {
        segment: PathBuf,
        offset: u64,
        reason: String,
    },
    /// An earlier I/O error failed the writer; the reason is the first one.
    #[error("the log writer failed earlier: {0}")]
    Failed(String),
    /// A frame larger than a segment can hold; nothing was written.
    #[error("a frame of {len} bytes exceeds the {capacity} bytes a segment can hold")]
    FrameTooLarge { len: u64, capacity: u64 },
    /// A frame whose first seq does not continue the log; nothing was
    /// written.
    #[error(
        "frame {index} of the group starts at seq {found}, but the log continues at {expected}"
    )]
    SeqGap {
        index: usize,
        expected: u64,
        found: u64,
    },
    /// `append` before `set_last_hash` after an open that found frames in
    /// an unsealed tail; nothing was written.
    #[error("the chain hash after the last frame is unknown: call set_last_hash after open")]
    LastHashUnknown,
    /// A read from a position that is not a frame start of this log.
    #[error("no frame can start at {position}: {reason}")]
    BadPosition { position: Position, reason: String },
    /// A configuration this layer cannot work with.
    #[error("invalid segment configuration: {0}")]
    InvalidConfig(String),
}

/// An I/O error with what was being done and to which path.
fn io_error(
    context: impl fmt::Display,
    path: &std::path::Path,
) -> impl FnOnce(io::Error) -> LogError {
    let context = format!("{context} {}", path.display());
    move |source| LogError::Io { context, source }
}

/// The file name of segment `number`.
fn segment_file_name(number: u64) -> String {
    format!("{number:016x}.seg")
}

/// The segment number of a file name, if it is a segment's.
fn parse_segment_file_name(name: &str) -> Option<u64> {
    let digits = name.strip_suffix(".seg")?;
    if digits.len() != 16 || !digits.bytes().all(|byte| byte.is_ascii_hexdigit()) {
        return None;
    }
    u64::from_str_radix(digits, 16).ok()
}

/// Reads exactly `buf.len()` bytes at `offset`.
fn read_exact_at(file: &dyn DiskFile, buf: &mut [u8], offset: u64) -> io::Result<()> {
    let read = file.read_at(buf, offset)?;
    if read < buf.len() {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            format!(
                "{} bytes at offset {offset}, but the file ends after {read}",
                buf.len()
            ),
        ));
    }
    Ok(())
}
