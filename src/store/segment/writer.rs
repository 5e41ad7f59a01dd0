//! [`SegmentWriter`]: group writes, rolls, and publication of the durable
//! end.

use std::path::PathBuf;
use std::sync::Arc;

use super::format::{self, SegmentFooter, SegmentHeader, SEGMENT_FOOTER_LEN, SEGMENT_HEADER_LEN};
use super::reader::{SegmentEntry, Shared};
use super::spare::Spares;
use super::{
    io_error, segment_file_name, Disk, DiskFile, FrameInput, LogError, Position, SegmentConfig,
};

/// The segment the writer appends to.
#[derive(Debug)]
pub(super) struct Tail {
    pub number: u64,
    pub path: PathBuf,
    pub file: Arc<dyn DiskFile>,
    pub first_seq: u64,
    pub segment_bytes: u64,
    /// Where the next frame goes.
    pub end: u64,
    /// Whether the footer is written (the next append rolls).
    pub sealed: bool,
    /// Whether the file has its segment name yet (a new segment is written
    /// as `spare.tmp` and renamed after its first write is fdatasynced).
    pub named: bool,
}

impl Tail {
    /// The end of the data area: frames must end at or before it.
    fn data_limit(&self) -> u64 {
        self.segment_bytes - SEGMENT_FOOTER_LEN
    }
}

/// What the writer knows of the chain hash after the last frame, which a
/// footer needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum LastHash {
    /// The log has no frame yet.
    NoFrame,
    /// The hash after the last frame.
    Known([u8; 32]),
    /// The tail holds frames written before open; the caller must tell.
    Unknown,
}

/// Appends frames. Owned by one writer thread.
#[derive(Debug)]
pub struct SegmentWriter {
    pub(super) disk: Arc<dyn Disk>,
    pub(super) config: SegmentConfig,
    pub(super) shared: Arc<Shared>,
    pub(super) tail: Tail,
    pub(super) next_seq: u64,
    pub(super) last_hash: LastHash,
    /// The first I/O error's description, once the writer failed.
    pub(super) failed: Option<String>,
    pub(super) spares: Spares,
}

impl SegmentWriter {
    /// Writes `frames`, in order, one frame each, and returns the position
    /// of each: one `write_at` and one `sync_data` per segment touched,
    /// rolling to a new segment when the next frame does not fit (the
    /// sealed segment's write carries its footer; the new segment's first
    /// write carries its header and goes to `spare.tmp`, which is then
    /// renamed and the directory fsynced). Readers see the frames only once
    /// every sync returned.
    ///
    /// Checked before anything is written, without failing the writer: a
    /// frame larger than a segment can hold ([`LogError::FrameTooLarge`]),
    /// seqs that do not continue the log ([`LogError::SeqGap`]), and a chain
    /// hash not yet given after open ([`LogError::LastHashUnknown`]). Any
    /// I/O error fails the writer for good: this call returns it, and every
    /// later call returns [`LogError::Failed`] with its description. Nothing
    /// is retried, fsync least of all.
    pub fn append(&mut self, frames: &[FrameInput<'_>]) -> Result<Vec<Position>, LogError> {
        if let Some(reason) = &self.failed {
            return Err(LogError::Failed(reason.clone()));
        }
        if frames.is_empty() {
            return Ok(Vec::new());
        }
        if self.last_hash == LastHash::Unknown {
            return Err(LogError::LastHashUnknown);
        }
        let lens = self.check_group(frames)?;
        let mut rolled = false;
        match self.write_group(frames, &lens, &mut rolled) {
            Ok(positions) => {
                if rolled {
                    self.spares.make_next();
                }
                Ok(positions)
            }
            Err(error) => {
                self.failed = Some(error.to_string());
                Err(error)
            }
        }
    }

    /// Where the next frame goes; the same as the readers' durable end
    /// between appends.
    pub fn end(&self) -> Position {
        Position {
            segment: self.tail.number,
            offset: self.tail.end,
        }
    }

    /// The seq the next record will have.
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// Gives the chain hash after the log's last frame, which the writer
    /// needs for the footer when it seals the tail segment. Needed after an
    /// open whose [`super::Recovery::last_hash`] was `None` while the log
    /// has frames; harmless otherwise.
    pub fn set_last_hash(&mut self, hash: [u8; 32]) {
        self.last_hash = LastHash::Known(hash);
    }

    /// Whether an earlier I/O error failed the writer, and why.
    pub fn failure(&self) -> Option<&str> {
        self.failed.as_deref()
    }

    /// Checks the group and returns each frame's length.
    fn check_group(&self, frames: &[FrameInput<'_>]) -> Result<Vec<u64>, LogError> {
        let capacity = self.config.frame_capacity();
        let mut expected = self.next_seq;
        let mut lens = Vec::with_capacity(frames.len());
        for (index, frame) in frames.iter().enumerate() {
            let len = format::frame_len(frame);
            if len > capacity {
                return Err(LogError::FrameTooLarge { len, capacity });
            }
            if frame.first_seq != expected {
                return Err(LogError::SeqGap {
                    index,
                    expected,
                    found: frame.first_seq,
                });
            }
            expected += frame.records.len() as u64;
            lens.push(len);
        }
        Ok(lens)
    }

    fn write_group(
        &mut self,
        frames: &[FrameInput<'_>],
        lens: &[u64],
        rolled: &mut bool,
    ) -> Result<Vec<Position>, LogError> {
        let mut positions = Vec::with_capacity(frames.len());
        let mut named = Vec::new();
        let mut sealed = Vec::new();
        let mut index = 0;
        while index < frames.len() {
            if self.tail.sealed {
                self.start_next_segment()?;
                *rolled = true;
            }
            let tail = &mut self.tail;
            let data_limit = tail.data_limit();
            let group_start = tail.end;
            let write_offset = if tail.named { tail.end } else { 0 };
            let mut buffer = Vec::new();
            if !tail.named {
                let header = SegmentHeader {
                    number: tail.number,
                    first_seq: tail.first_seq,
                    segment_bytes: tail.segment_bytes,
                };
                buffer.extend_from_slice(&header.encode());
            }
            while index < frames.len() && lens[index] <= data_limit - tail.end {
                let frame = &frames[index];
                format::encode_frame(&mut buffer, frame, group_start);
                positions.push(Position {
                    segment: tail.number,
                    offset: tail.end,
                });
                tail.end += lens[index];
                self.next_seq += frame.records.len() as u64;
                self.last_hash = LastHash::Known(frame.last_hash);
                index += 1;
            }
            let seal = index < frames.len();
            if seal {
                let last_hash = match self.last_hash {
                    LastHash::Known(hash) => hash,
                    // Only an empty segment of a log without frames can be
                    // sealed before any hash is known.
                    LastHash::NoFrame | LastHash::Unknown => [0; 32],
                };
                let footer = SegmentFooter {
                    last_seq: self.next_seq - 1,
                    data_end: tail.end,
                    last_hash,
                };
                buffer.resize(buffer.len() + (data_limit - tail.end) as usize, 0);
                buffer.extend_from_slice(&footer.encode());
            }
            let context = format_args!("write {} bytes at offset {write_offset} of", buffer.len());
            tail.file
                .write_at(&buffer, write_offset)
                .map_err(io_error(context, &tail.path))?;
            drop(buffer);
            tail.file
                .sync_data()
                .map_err(io_error("fdatasync", &tail.path))?;
            if !tail.named {
                let spare = self.spares.path();
                self.disk.rename(&spare, &tail.path).map_err(io_error(
                    format_args!("rename {} to", spare.display()),
                    &tail.path,
                ))?;
                let dir = self.spares.dir();
                self.disk
                    .sync_dir(dir)
                    .map_err(io_error("fsync the directory", dir))?;
                tail.named = true;
                named.push(SegmentEntry {
                    number: tail.number,
                    path: tail.path.clone(),
                    file: tail.file.clone(),
                    first_seq: tail.first_seq,
                    sealed_end: None,
                    mapping: Default::default(),
                });
            }
            if seal {
                tail.sealed = true;
                sealed.push((tail.number, tail.end));
            }
        }
        self.shared.publish(self.end(), named, &sealed);
        Ok(positions)
    }

    /// Makes the spare the new tail (not yet named; its first write names
    /// it).
    fn start_next_segment(&mut self) -> Result<(), LogError> {
        let file = self.spares.take()?;
        let number = self.tail.number + 1;
        self.tail = Tail {
            number,
            path: self.spares.dir().join(segment_file_name(number)),
            file,
            first_seq: self.next_seq,
            segment_bytes: self.config.segment_bytes,
            end: SEGMENT_HEADER_LEN,
            sealed: false,
            named: false,
        };
        Ok(())
    }
}
