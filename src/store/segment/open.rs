//! [`open`]: finds the segments, checks them, recovers the tail (see the
//! module documentation of `segment` for the rules), and starts the writer
//! and the readers.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::format::{
    self, FrameHeader, SegmentFooter, SegmentHeader, FRAME_ALIGN, SEGMENT_FOOTER_LEN,
    SEGMENT_HEADER_LEN,
};
use super::reader::{Published, SegmentEntry, SegmentReader, Shared};
use super::spare::{SpareTarget, Spares};
use super::writer::{LastHash, SegmentWriter, Tail};
use super::{
    io_error, parse_segment_file_name, read_exact_at, segment_file_name, Disk, DiskFile, LogError,
    OpenMode, Position, Recovery, SegmentConfig, SpareMaker, TornTail, FIRST_SEQ, SPARE_NAME,
};

/// Opens (or creates) the log in `dir`, with the spare made by a background
/// thread. See [`open_with`].
pub fn open(
    disk: Arc<dyn Disk>,
    dir: &Path,
    config: SegmentConfig,
) -> Result<(SegmentWriter, SegmentReader, Recovery), LogError> {
    open_with(disk, dir, config, SpareMaker::BackgroundThread)
}

/// Opens (or creates) the log in `dir`: checks every segment's header and
/// every sealed segment's footer, scans the tail segment, cuts a torn tail
/// (zeros, fdatasynced) or refuses a damaged log with
/// [`LogError::Corrupt`], and returns the writer, a reader, and what
/// recovery found.
pub fn open_with(
    disk: Arc<dyn Disk>,
    dir: &Path,
    config: SegmentConfig,
    spare_maker: SpareMaker,
) -> Result<(SegmentWriter, SegmentReader, Recovery), LogError> {
    config.validate()?;
    create_log_directory(disk.as_ref(), dir)?;
    let target = SpareTarget {
        disk: disk.clone(),
        dir: dir.to_path_buf(),
        segment_bytes: config.segment_bytes,
    };
    let mut numbers = Vec::new();
    for name in disk
        .list_dir(dir)
        .map_err(io_error("list the log directory", dir))?
    {
        if name == SPARE_NAME {
            let path = dir.join(&name);
            disk.remove_file(&path)
                .map_err(io_error("remove the leftover", &path))?;
        } else if let Some(number) = parse_segment_file_name(&name) {
            numbers.push(number);
        }
    }
    numbers.sort_unstable();
    if numbers.is_empty() {
        create_first_segment(&target)?;
        numbers.push(1);
    }
    check_contiguous(dir, &numbers)?;

    let last_index = numbers.len() - 1;
    let mut entries = Vec::with_capacity(numbers.len());
    // The footer of the segment before the current one, while walking.
    let mut previous_footer: Option<SegmentFooter> = None;
    for (index, number) in numbers.iter().copied().enumerate() {
        let path = dir.join(segment_file_name(number));
        let is_last = index == last_index;
        let mode = if is_last {
            OpenMode::ReadWrite
        } else {
            OpenMode::Read
        };
        let file = disk.open(&path, mode).map_err(io_error("open", &path))?;
        let header = read_header(file.as_ref(), &path, number)?;
        if let Some(footer) = previous_footer {
            if header.first_seq != footer.last_seq + 1 {
                return Err(corrupt(
                    &path,
                    0,
                    format!(
                        "the segment starts at seq {}, but the previous one ends at seq {}",
                        header.first_seq, footer.last_seq
                    ),
                ));
            }
        }
        let sealed_end = if is_last {
            None
        } else {
            let footer = read_footer(file.as_ref(), &path, &header)?;
            previous_footer = Some(footer);
            Some(footer.data_end)
        };
        entries.push((
            SegmentEntry {
                number,
                path,
                file,
                first_seq: header.first_seq,
                sealed_end,
                mapping: Default::default(),
            },
            header,
        ));
    }

    let (tail_entry, tail_header) = entries.last().expect("at least one segment").clone();
    let tail_scan = recover_tail(&tail_entry, &tail_header)?;
    let mut segments: Vec<SegmentEntry> = entries.into_iter().map(|(entry, _)| entry).collect();
    if let Some(footer) = tail_scan.footer {
        segments.last_mut().expect("a tail").sealed_end = Some(footer.data_end);
    }
    let end = Position {
        segment: tail_entry.number,
        offset: tail_scan.end,
    };
    let last_hash = match (tail_scan.footer, tail_scan.last_frame, previous_footer) {
        (Some(footer), _, _) => Some(footer.last_hash),
        (None, None, Some(previous)) => Some(previous.last_hash),
        _ => None,
    };
    let last_frame = match tail_scan.last_frame {
        Some(offset) => Some(Position {
            segment: tail_entry.number,
            offset,
        }),
        None => previous_last_frame(&segments, previous_footer)?,
    };
    let writer_hash = match last_hash {
        Some(hash) => LastHash::Known(hash),
        None if last_frame.is_none() => LastHash::NoFrame,
        None => LastHash::Unknown,
    };
    let recovery = Recovery {
        end,
        next_seq: tail_scan.next_seq,
        last_frame,
        last_hash,
        cut: tail_scan.cut,
    };
    let shared = Arc::new(Shared::new(Published {
        segments: Arc::new(segments),
        durable_end: end,
    }));
    let writer = SegmentWriter {
        disk,
        config,
        shared: shared.clone(),
        tail: Tail {
            number: tail_entry.number,
            path: tail_entry.path.clone(),
            file: tail_entry.file.clone(),
            first_seq: tail_header.first_seq,
            segment_bytes: tail_header.segment_bytes,
            end: tail_scan.end,
            sealed: tail_scan.footer.is_some(),
            named: true,
        },
        next_seq: tail_scan.next_seq,
        last_hash: writer_hash,
        failed: None,
        spares: Spares::start(target, spare_maker),
    };
    Ok((writer, SegmentReader { shared }, recovery))
}

/// Creates the log directory when it is missing and fsyncs the parent of
/// every level that did not exist, top down, so that the new names are
/// durable; when the directory exists, fsyncs its parent only.
fn create_log_directory(disk: &dyn Disk, dir: &Path) -> Result<(), LogError> {
    let mut missing = Vec::new();
    let mut level = dir;
    while !disk.exists(level) {
        match level.parent() {
            Some(parent) => {
                missing.push(level.to_path_buf());
                if parent.as_os_str().is_empty() {
                    break;
                }
                level = parent;
            }
            // The root directory always exists.
            None => break,
        }
    }
    if missing.is_empty() {
        // The directory may have been made by a process that died before
        // it fsynced the parent; one fsync per open settles it.
        let parent = parent_or_current(dir);
        return disk
            .sync_dir(parent)
            .map_err(io_error("fsync the directory", parent));
    }
    disk.create_dir_all(dir)
        .map_err(io_error("create the log directory", dir))?;
    for created in missing.iter().rev() {
        let parent = parent_or_current(created);
        disk.sync_dir(parent)
            .map_err(io_error("fsync the directory", parent))?;
    }
    Ok(())
}

/// The parent directory of `path`, or `.` for a relative name without one.
fn parent_or_current(path: &Path) -> &Path {
    match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    }
}

/// Makes segment 1 of a new log the way every segment is made: a spare,
/// then its header written and fdatasynced, then the rename and the
/// directory's fsync.
fn create_first_segment(target: &SpareTarget) -> Result<(), LogError> {
    let file = target.make()?;
    let spare = target.path();
    let path = target.dir.join(segment_file_name(1));
    let header = SegmentHeader {
        number: 1,
        first_seq: FIRST_SEQ,
        segment_bytes: target.segment_bytes,
    };
    file.write_at(&header.encode(), 0)
        .map_err(io_error("write the header of", &spare))?;
    file.sync_data().map_err(io_error("fdatasync", &spare))?;
    target.disk.rename(&spare, &path).map_err(io_error(
        format_args!("rename {} to", spare.display()),
        &path,
    ))?;
    target
        .disk
        .sync_dir(&target.dir)
        .map_err(io_error("fsync the directory", &target.dir))
}

fn check_contiguous(dir: &Path, numbers: &[u64]) -> Result<(), LogError> {
    // No segment is ever removed (there is no retention yet), so a log
    // whose first segment is not 1 has lost its beginning.
    if numbers[0] != 1 {
        return Err(corrupt(
            &dir.join(segment_file_name(numbers[0])),
            0,
            format!(
                "the log's first segment is {:016x}: segment numbers start at 1, and earlier ones are missing",
                numbers[0]
            ),
        ));
    }
    for pair in numbers.windows(2) {
        if pair[1] != pair[0] + 1 {
            return Err(corrupt(
                &dir.join(segment_file_name(pair[1])),
                0,
                format!("segment {:016x} is missing before it", pair[0] + 1),
            ));
        }
    }
    Ok(())
}

fn read_header(file: &dyn DiskFile, path: &Path, number: u64) -> Result<SegmentHeader, LogError> {
    let len = file.len().map_err(io_error("read the length of", path))?;
    let mut bytes = [0u8; SEGMENT_HEADER_LEN as usize];
    if len < SEGMENT_HEADER_LEN {
        return Err(corrupt(
            path,
            0,
            format!("the file is only {len} bytes long"),
        ));
    }
    read_exact_at(file, &mut bytes, 0).map_err(io_error("read the header of", path))?;
    let header = SegmentHeader::decode(&bytes).map_err(|reason| corrupt(path, 0, reason))?;
    if header.number != number {
        return Err(corrupt(
            path,
            0,
            format!("the header says segment {:016x}", header.number),
        ));
    }
    if header.first_seq < FIRST_SEQ {
        return Err(corrupt(path, 0, "the header's first seq is 0".to_string()));
    }
    if number == 1 && header.first_seq != FIRST_SEQ {
        return Err(corrupt(
            path,
            0,
            format!(
                "the first segment starts at seq {}, not {FIRST_SEQ}",
                header.first_seq
            ),
        ));
    }
    let sane_size = (super::MIN_SEGMENT_BYTES..=super::MAX_SEGMENT_BYTES)
        .contains(&header.segment_bytes)
        && header.segment_bytes.is_multiple_of(FRAME_ALIGN);
    if !sane_size || header.segment_bytes != len {
        return Err(corrupt(
            path,
            0,
            format!(
                "the header gives a size of {} bytes, the file has {len}",
                header.segment_bytes
            ),
        ));
    }
    Ok(header)
}

/// Reads and checks the footer of a segment that must be sealed.
fn read_footer(
    file: &dyn DiskFile,
    path: &Path,
    header: &SegmentHeader,
) -> Result<SegmentFooter, LogError> {
    let offset = header.segment_bytes - SEGMENT_FOOTER_LEN;
    let mut bytes = [0u8; SEGMENT_FOOTER_LEN as usize];
    read_exact_at(file, &mut bytes, offset).map_err(io_error("read the footer of", path))?;
    let footer = SegmentFooter::decode(&bytes)
        .map_err(|reason| corrupt(path, offset, format!("a segment before the last: {reason}")))?;
    check_footer_fits(&footer, header).map_err(|reason| corrupt(path, offset, reason))?;
    Ok(footer)
}

/// Whether a valid footer's fields fit its segment.
fn check_footer_fits(footer: &SegmentFooter, header: &SegmentHeader) -> Result<(), String> {
    let data_limit = header.segment_bytes - SEGMENT_FOOTER_LEN;
    if footer.data_end < SEGMENT_HEADER_LEN
        || footer.data_end > data_limit
        || !footer.data_end.is_multiple_of(FRAME_ALIGN)
    {
        return Err(format!(
            "the footer's data end {} is outside the data area",
            footer.data_end
        ));
    }
    if footer.last_seq.wrapping_add(1) < header.first_seq {
        return Err(format!(
            "the footer's last seq {} is before the segment's first seq {}",
            footer.last_seq, header.first_seq
        ));
    }
    Ok(())
}

/// The position of the last frame of the log when the tail holds none: the
/// last frame of the sealed segment before it, found by reading its frames.
fn previous_last_frame(
    segments: &[SegmentEntry],
    previous_footer: Option<SegmentFooter>,
) -> Result<Option<Position>, LogError> {
    if previous_footer.is_none() || segments.len() < 2 {
        return Ok(None);
    }
    let entry = &segments[segments.len() - 2];
    let data_end = entry.sealed_end.expect("a sealed segment");
    if data_end == SEGMENT_HEADER_LEN {
        return Ok(None);
    }
    let mut bytes = vec![0u8; (data_end - SEGMENT_HEADER_LEN) as usize];
    read_exact_at(entry.file.as_ref(), &mut bytes, SEGMENT_HEADER_LEN)
        .map_err(io_error("read", &entry.path))?;
    // Walk the lengths only; the frames are checked when they are read.
    let mut offset = 0u64;
    let mut last = None;
    while offset < bytes.len() as u64 {
        let at = SEGMENT_HEADER_LEN + offset;
        let len = format::peek_len(&bytes[offset as usize..]).unwrap_or(0);
        format::check_len(len, at, data_end).map_err(|reason| corrupt(&entry.path, at, reason))?;
        last = Some(Position {
            segment: entry.number,
            offset: at,
        });
        offset += len;
    }
    Ok(last)
}

/// What the scan of the tail segment found.
#[derive(Debug)]
struct TailScan {
    /// Where the data ends (after any cut).
    end: u64,
    next_seq: u64,
    /// The offset of the last whole frame.
    last_frame: Option<u64>,
    /// The footer, when the segment is sealed.
    footer: Option<SegmentFooter>,
    cut: Option<TornTail>,
}

/// Scans the tail segment and cuts a torn tail; see the rules in the
/// module documentation.
fn recover_tail(entry: &SegmentEntry, header: &SegmentHeader) -> Result<TailScan, LogError> {
    let path = &entry.path;
    let size = header.segment_bytes;
    let data_limit = size - SEGMENT_FOOTER_LEN;
    let mut bytes = vec![0u8; size as usize];
    read_exact_at(entry.file.as_ref(), &mut bytes, 0).map_err(io_error("read", path))?;

    let scan = scan_frames(&bytes, header, data_limit);
    let mut end = scan.end;
    let mut torn_reason = None;
    if let Some((offset, reason)) = scan.bad {
        match find_later_write(&bytes, offset, data_limit) {
            Some(later) => {
                return Err(corrupt(
                    path,
                    offset,
                    format!("{reason}; a valid frame of a later write follows at offset {later}"),
                ));
            }
            None => torn_reason = Some(reason),
        }
        end = offset;
    }

    let footer_bytes = &bytes[data_limit as usize..];
    let footer = SegmentFooter::decode(footer_bytes).ok().filter(|footer| {
        check_footer_fits(footer, header).is_ok()
            && footer.data_end == end
            && footer.last_seq.wrapping_add(1) == scan.next_seq
    });
    let footer_is_blank = footer_bytes.iter().all(|byte| *byte == 0);
    // The bytes to zero: from the bad frame (or, for the remains of an
    // interrupted seal, the footer's place) to the last non-zero byte.
    let zero_from = match (&torn_reason, footer.is_some() || footer_is_blank) {
        (Some(_), _) => Some(end),
        (None, false) => Some(data_limit),
        (None, true) => None,
    };
    let mut cut = None;
    if let Some(zero_from) = zero_from {
        let zero_within = if footer.is_some() { data_limit } else { size };
        let zero_to = bytes[..zero_within as usize]
            .iter()
            .rposition(|byte| *byte != 0)
            .map_or(zero_from, |last| (last as u64 + 1).max(zero_from));
        let zeros = vec![0u8; (zero_to - zero_from) as usize];
        entry.file.write_at(&zeros, zero_from).map_err(io_error(
            format_args!("zero the torn tail at offset {zero_from} of"),
            path,
        ))?;
        entry
            .file
            .sync_data()
            .map_err(io_error("fdatasync", path))?;
        cut = Some(TornTail {
            segment: entry.number,
            path: path.clone(),
            offset: zero_from,
            bytes_zeroed: zero_to - zero_from,
            reason: torn_reason.unwrap_or_else(|| {
                "the footer's place holds the remains of an interrupted seal".to_string()
            }),
        });
    }
    Ok(TailScan {
        end,
        next_seq: scan.next_seq,
        last_frame: scan.last_frame,
        footer,
        cut,
    })
}

/// The result of reading the tail's frames in order.
#[derive(Debug)]
struct FrameScan {
    /// Just past the last good frame.
    end: u64,
    next_seq: u64,
    last_frame: Option<u64>,
    /// The first bad frame and what is wrong with it.
    bad: Option<(u64, String)>,
}

/// Reads the frames of a segment (held whole in `bytes`) from offset 64 in
/// order, until a clean end (a zero length and zeros to the end of the data
/// area) or a bad frame.
fn scan_frames(bytes: &[u8], header: &SegmentHeader, data_limit: u64) -> FrameScan {
    let mut scan = FrameScan {
        end: SEGMENT_HEADER_LEN,
        next_seq: header.first_seq,
        last_frame: None,
        bad: None,
    };
    while scan.end < data_limit {
        let offset = scan.end;
        let rest = &bytes[offset as usize..data_limit as usize];
        if format::peek_len(rest) == Some(0) && rest.iter().all(|byte| *byte == 0) {
            return scan;
        }
        let header = match format::check_frame(rest, offset) {
            Ok(header) if header.first_seq == scan.next_seq => header,
            Ok(header) => {
                let reason = format!(
                    "the frame starts at seq {}, but the log continues at {}",
                    header.first_seq, scan.next_seq
                );
                scan.bad = Some((offset, reason));
                return scan;
            }
            Err(reason) => {
                scan.bad = Some((offset, reason));
                return scan;
            }
        };
        scan.last_frame = Some(offset);
        scan.next_seq = header.next_seq();
        scan.end += header.len;
    }
    scan
}

/// Searches every 8-aligned offset after the bad frame at `bad` for a valid
/// frame whose group start is after `bad`: a frame of a later write, which
/// proves the bad frame was acknowledged. Returns its offset.
fn find_later_write(bytes: &[u8], bad: u64, data_limit: u64) -> Option<u64> {
    let mut offset = bad + FRAME_ALIGN;
    while offset < data_limit {
        let rest = &bytes[offset as usize..data_limit as usize];
        let plausible = format::peek_len(rest)
            .is_some_and(|len| format::check_len(len, offset, data_limit).is_ok());
        if plausible {
            if let Ok(FrameHeader {
                len, group_start, ..
            }) = format::check_frame(rest, offset)
            {
                if group_start > bad {
                    return Some(offset);
                }
                // A frame of the same write as the bad one: skip over it
                // (its contents are records, not frames).
                offset += len;
                continue;
            }
        }
        offset += FRAME_ALIGN;
    }
    None
}

fn corrupt(path: &Path, offset: u64, reason: String) -> LogError {
    LogError::Corrupt {
        segment: PathBuf::from(path),
        offset,
        reason,
    }
}
