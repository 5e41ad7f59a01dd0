//! The segment layer on the real disk, in a temporary directory, with small
//! segments. `HookedDisk` wraps `RealDisk` to record the operations, fail
//! them on demand, or hold a sync until the test lets it go.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;

use super::super::disk::RealDisk;
use super::format::{SegmentFooter, SegmentHeader, SEGMENT_FOOTER_LEN};
use super::*;

const SEGMENT_BYTES: u64 = 8 * 1024;

fn config() -> SegmentConfig {
    SegmentConfig {
        segment_bytes: SEGMENT_BYTES,
    }
}

/// The hash a test gives the frame that ends at `next_seq`.
pub(super) fn hash_after(next_seq: u64) -> [u8; 32] {
    let mut hash = [0u8; 32];
    hash[..8].copy_from_slice(&next_seq.to_le_bytes());
    hash[31] = 0xAA;
    hash
}

/// The records and meta of one test frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct TestFrame {
    pub first_seq: u64,
    pub records: Vec<Vec<u8>>,
    pub meta: Vec<u8>,
}

impl TestFrame {
    /// A frame of `count` records of `record_len` bytes each, whose bytes
    /// depend on the seq.
    fn new(first_seq: u64, count: usize, record_len: usize) -> TestFrame {
        let records = (0..count)
            .map(|index| {
                let seq = first_seq + index as u64;
                (0..record_len)
                    .map(|byte| (seq as usize * 31 + byte) as u8)
                    .collect()
            })
            .collect();
        TestFrame {
            first_seq,
            records,
            meta: format!("meta of {first_seq}").into_bytes(),
        }
    }

    pub(super) fn next_seq(&self) -> u64 {
        self.first_seq + self.records.len() as u64
    }

    pub(super) fn input(&self) -> FrameInput<'_> {
        FrameInput {
            first_seq: self.first_seq,
            records: &self.records,
            meta: &self.meta,
            last_hash: hash_after(self.next_seq()),
        }
    }

    pub(super) fn matches(&self, frame: &Frame) -> bool {
        frame.first_seq == self.first_seq
            && frame.meta == self.meta
            && frame.records.len() == self.records.len()
            && frame
                .records
                .iter()
                .zip(&self.records)
                .all(|(read, written)| read == written)
    }
}

/// Makes `groups` groups of `per_group` frames, continuing at `next_seq`.
fn make_groups(
    next_seq: &mut u64,
    groups: usize,
    per_group: usize,
    record_len: usize,
) -> Vec<Vec<TestFrame>> {
    (0..groups)
        .map(|group| {
            (0..per_group)
                .map(|index| {
                    let frame = TestFrame::new(*next_seq, 1 + (group + index) % 3, record_len);
                    *next_seq = frame.next_seq();
                    frame
                })
                .collect()
        })
        .collect()
}

fn append_group(writer: &mut SegmentWriter, group: &[TestFrame]) -> Vec<Position> {
    let inputs: Vec<FrameInput<'_>> = group.iter().map(TestFrame::input).collect();
    writer.append(&inputs).expect("append")
}

pub(super) fn read_all(reader: &SegmentReader) -> Vec<Frame> {
    read_all_in(reader, 1000)
}

/// Every frame, read `max_bytes` at a time.
fn read_all_in(reader: &SegmentReader, max_bytes: usize) -> Vec<Frame> {
    let mut frames = Vec::new();
    let mut position = reader.start();
    loop {
        let batch = reader.read_frames(position, max_bytes).expect("read");
        let Some(last) = batch.last() else {
            return frames;
        };
        position = last.next;
        frames.extend(batch);
    }
}

/// A log in `dir` on a disk whose hooks the test sets; the writer makes the
/// spare segments itself, so every operation is on the test's thread.
fn open_hooked(dir: &Path) -> (Arc<HookedDisk>, SegmentWriter, SegmentReader) {
    let disk = HookedDisk::new();
    let (writer, reader, _) = open_with(disk.clone(), dir, config(), SpareMaker::Writer).unwrap();
    (disk, writer, reader)
}

fn segment_path(dir: &Path, number: u64) -> PathBuf {
    dir.join(segment_file_name(number))
}

fn open_real(dir: &Path) -> Result<(SegmentWriter, SegmentReader, Recovery), LogError> {
    open_with(Arc::new(RealDisk), dir, config(), SpareMaker::Writer)
}

/// Flips one byte of a file, behind the log's back.
fn flip_byte(path: &Path, offset: u64) {
    let mut bytes = fs::read(path).unwrap();
    bytes[offset as usize] ^= 0x5A;
    fs::write(path, bytes).unwrap();
}

/// Writes `bytes` into a file at `offset`, behind the log's back.
fn overwrite(path: &Path, offset: u64, bytes: &[u8]) {
    let mut contents = fs::read(path).unwrap();
    contents[offset as usize..offset as usize + bytes.len()].copy_from_slice(bytes);
    fs::write(path, contents).unwrap();
}

fn encoded(frame: &TestFrame, group_start: u64) -> Vec<u8> {
    let mut bytes = Vec::new();
    format::encode_frame(&mut bytes, &frame.input(), group_start);
    bytes
}

#[test]
fn frames_round_trip_with_records_meta_and_positions() {
    let temp = tempfile::tempdir().unwrap();
    let dir = temp.path().join("log");
    let (mut writer, reader, recovery) = open_real(&dir).unwrap();
    assert_eq!(
        recovery.end,
        Position {
            segment: 1,
            offset: 64
        }
    );
    assert_eq!(recovery.next_seq, FIRST_SEQ);
    assert_eq!(recovery.cut, None);
    assert_eq!(recovery.last_frame, None);

    let empty_meta = TestFrame {
        first_seq: 1,
        records: vec![b"first".to_vec(), Vec::new()],
        meta: Vec::new(),
    };
    let no_records = TestFrame {
        first_seq: 3,
        records: Vec::new(),
        meta: b"an idempotency record only".to_vec(),
    };
    let plain = TestFrame::new(3, 3, 50);
    let written = vec![empty_meta, no_records, plain];
    let positions = append_group(&mut writer, &written);

    let frames = read_all(&reader);
    assert_eq!(frames.len(), 3);
    for ((frame, expected), position) in frames.iter().zip(&written).zip(&positions) {
        assert!(expected.matches(frame), "{frame:?} is not {expected:?}");
        assert_eq!(frame.position, *position);
    }
    assert_eq!(
        positions[0],
        Position {
            segment: 1,
            offset: 64
        }
    );
    assert_eq!(frames[0].next, frames[1].position);
    assert_eq!(frames[1].next, frames[2].position);
    assert_eq!(frames[2].next, writer.end());
    assert_eq!(reader.durable_end(), writer.end());
    assert_eq!(writer.next_seq(), 6);
    // A read from a later frame starts there.
    let from_second = reader.read_frames(positions[1], 1 << 20).unwrap();
    assert_eq!(from_second.len(), 2);
    assert_eq!(from_second[0].position, positions[1]);
}

#[test]
fn appends_across_many_segments_roll_and_seal_them() {
    let temp = tempfile::tempdir().unwrap();
    let dir = temp.path().join("log");
    // The default open: the spare comes from the background thread.
    let (mut writer, reader, _) = open(Arc::new(RealDisk), &dir, config()).unwrap();
    let mut next_seq = FIRST_SEQ;
    let groups = make_groups(&mut next_seq, 40, 5, 120);
    let mut written = Vec::new();
    for group in &groups {
        append_group(&mut writer, group);
        written.extend(group.iter().cloned());
    }
    let last_segment = writer.end().segment;
    assert!(last_segment >= 5, "only {last_segment} segments");

    let frames = read_all(&reader);
    assert_eq!(frames.len(), written.len());
    for (frame, expected) in frames.iter().zip(&written) {
        assert!(expected.matches(frame));
    }
    // Read in bulk (a segment's data whole), the sealed segments are read in
    // place (mapped), with the same frames, and unmapped once no record read
    // from them is alive; the tail is read.
    let states = || -> Vec<String> {
        let published = reader.shared.snapshot();
        published
            .segments
            .iter()
            .map(|entry| format!("{:?}", entry.mapping))
            .collect()
    };
    assert!(states().iter().all(|state| state == "not read yet"));
    let bulk = read_all_in(&reader, 1 << 20);
    assert_eq!(bulk.len(), frames.len());
    for (mapped, read) in bulk.iter().zip(&frames) {
        assert_eq!(mapped.position, read.position);
        assert_eq!(mapped.records, read.records);
        assert_eq!(mapped.meta, read.meta);
    }
    let while_held = states();
    let (tail, sealed) = while_held.split_last().unwrap();
    assert!(
        sealed.iter().all(|state| state == "mapped"),
        "{while_held:?}"
    );
    assert_eq!(tail, "not read yet");
    drop(bulk);
    let after = states();
    let (tail, sealed) = after.split_last().unwrap();
    assert!(sealed.iter().all(|state| state == "unmapped"), "{after:?}");
    assert_eq!(tail, "not read yet");
    // Every segment but the last is sealed, and its footer matches its
    // frames; the next header continues its seqs.
    for number in 1..last_segment {
        let bytes = fs::read(segment_path(&dir, number)).unwrap();
        assert_eq!(bytes.len() as u64, SEGMENT_BYTES);
        let header = SegmentHeader::decode(&bytes).unwrap();
        assert_eq!(header.number, number);
        let footer = SegmentFooter::decode(&bytes[(SEGMENT_BYTES - SEGMENT_FOOTER_LEN) as usize..])
            .expect("a sealed segment has a footer");
        let in_segment: Vec<&Frame> = frames
            .iter()
            .filter(|frame| frame.position.segment == number)
            .collect();
        let last = in_segment.last().expect("every segment holds a frame");
        assert_eq!(footer.data_end, last.next.offset);
        let last_seq = last.first_seq + last.records.len() as u64 - 1;
        assert_eq!(footer.last_seq, last_seq);
        assert_eq!(footer.last_hash, hash_after(last_seq + 1));
        assert_eq!(in_segment[0].first_seq, header.first_seq);
        assert!(
            bytes[footer.data_end as usize..(SEGMENT_BYTES - SEGMENT_FOOTER_LEN) as usize]
                .iter()
                .all(|byte| *byte == 0)
        );
        let next = fs::read(segment_path(&dir, number + 1)).unwrap();
        assert_eq!(
            SegmentHeader::decode(&next).unwrap().first_seq,
            last_seq + 1
        );
    }
    // The spare is made ahead of use.
    drop(writer);
    assert!(dir.join(SPARE_NAME).exists());
    assert_eq!(
        fs::metadata(dir.join(SPARE_NAME)).unwrap().len(),
        SEGMENT_BYTES
    );
}

#[test]
fn a_group_costs_one_write_and_one_sync_per_segment() {
    let temp = tempfile::tempdir().unwrap();
    let dir = temp.path().join("log");
    let (disk, mut writer, _reader) = open_hooked(&dir);
    let mut next_seq = FIRST_SEQ;
    let first = make_groups(&mut next_seq, 1, 1, 1000);
    append_group(&mut writer, &first[0]);

    disk.hooks.take_events();
    let one_segment = make_groups(&mut next_seq, 1, 4, 100);
    append_group(&mut writer, &one_segment[0]);
    assert_eq!(
        disk.hooks.take_events(),
        vec!["write 0000000000000001.seg", "sync 0000000000000001.seg"]
    );

    // A group that fills segment 1 and goes on in segment 2.
    let rolling = make_groups(&mut next_seq, 1, 12, 300);
    let positions = append_group(&mut writer, &rolling[0]);
    assert_eq!(positions.first().unwrap().segment, 1);
    assert_eq!(positions.last().unwrap().segment, 2);
    let events = disk.hooks.take_events();
    assert_eq!(
        events[..6],
        [
            "write 0000000000000001.seg",
            "sync 0000000000000001.seg",
            "write spare.tmp",
            "sync spare.tmp",
            "rename spare.tmp 0000000000000002.seg",
            "sync_dir log",
        ]
    );
    // Then the writer makes the next spare.
    assert_eq!(events[6], "create spare.tmp");
    assert!(events[7..]
        .iter()
        .all(|event| event.ends_with("spare.tmp") || event == "sync_dir log"));
}

#[test]
fn read_frames_never_passes_the_durable_end() {
    let temp = tempfile::tempdir().unwrap();
    let dir = temp.path().join("log");
    let (disk, mut writer, reader) = open_hooked(&dir);
    let mut next_seq = FIRST_SEQ;
    let groups = make_groups(&mut next_seq, 2, 3, 40);
    append_group(&mut writer, &groups[0]);
    let durable = reader.durable_end();
    assert_eq!(reader.read_frames(durable, 1 << 20).unwrap(), Vec::new());

    // The next group's sync is held: its bytes are in the file, but not
    // durable, and readers must not see them.
    let (entered_sender, entered) = mpsc::channel();
    let (release, release_receiver) = mpsc::channel();
    *disk.hooks.sync_gate.lock().unwrap() = Some((entered_sender, release_receiver));
    let second = groups[1].clone();
    let appending = std::thread::spawn(move || {
        let inputs: Vec<FrameInput<'_>> = second.iter().map(TestFrame::input).collect();
        writer.append(&inputs).map(|_| writer)
    });
    entered
        .recv_timeout(Duration::from_secs(20))
        .expect("the append reaches its fdatasync");
    assert_eq!(reader.durable_end(), durable);
    assert_eq!(read_all(&reader).len(), 3);
    let bytes_on_file = fs::read(segment_path(&dir, 1)).unwrap();
    assert_ne!(
        bytes_on_file[durable.offset as usize], 0,
        "the group was written"
    );
    release.send(()).unwrap();
    let writer = appending.join().unwrap().unwrap();
    assert_eq!(read_all(&reader).len(), 6);
    assert_eq!(reader.durable_end(), writer.end());
}

#[test]
fn reads_cross_segments_and_stop_after_about_max_bytes() {
    let temp = tempfile::tempdir().unwrap();
    let dir = temp.path().join("log");
    let (mut writer, reader, _) = open_real(&dir).unwrap();
    let mut next_seq = FIRST_SEQ;
    for group in make_groups(&mut next_seq, 30, 4, 200) {
        append_group(&mut writer, &group);
    }
    assert!(writer.end().segment >= 3);
    let everything = reader.read_frames(reader.start(), usize::MAX).unwrap();
    assert_eq!(everything.len(), 120);
    assert!(everything
        .windows(2)
        .all(|pair| pair[0].first_seq + pair[0].records.len() as u64 == pair[1].first_seq));
    assert!(everything
        .iter()
        .any(|frame| frame.position.segment == writer.end().segment));

    // One byte asks for one frame; a frame's worth or two give one or two.
    let one = reader.read_frames(reader.start(), 1).unwrap();
    assert_eq!(one.len(), 1);
    let two = reader
        .read_frames(reader.start(), everything[0].next.offset as usize)
        .unwrap();
    assert!((1..=2).contains(&two.len()));

    // Frame by frame, following `next` across every segment boundary.
    let mut position = reader.start();
    let mut count = 0;
    loop {
        let batch = reader.read_frames(position, 1).unwrap();
        let Some(frame) = batch.first() else { break };
        assert_eq!(*frame, everything[count]);
        position = frame.next;
        count += 1;
    }
    assert_eq!(count, 120);

    // segment_of_seq finds the segment that holds a seq.
    for frame in &everything {
        for (index, _) in frame.records.iter().enumerate() {
            let seq = frame.first_seq + index as u64;
            assert_eq!(reader.segment_of_seq(seq).segment, frame.position.segment);
        }
    }
    assert!(matches!(
        reader.read_frames(
            Position {
                segment: 1,
                offset: 12
            },
            10
        ),
        Err(LogError::BadPosition { .. })
    ));
}

#[test]
fn a_reopened_log_continues_its_seqs() {
    let temp = tempfile::tempdir().unwrap();
    let dir = temp.path().join("log");
    let mut next_seq = FIRST_SEQ;
    let groups = make_groups(&mut next_seq, 12, 3, 150);
    let (mut writer, _, _) = open_real(&dir).unwrap();
    for group in &groups[..6] {
        append_group(&mut writer, group);
    }
    let end = writer.end();
    let seq = writer.next_seq();
    drop(writer);

    let (mut writer, reader, recovery) = open_real(&dir).unwrap();
    assert_eq!(recovery.cut, None);
    assert_eq!(recovery.end, end);
    assert_eq!(recovery.next_seq, seq);
    assert_eq!(recovery.last_hash, None);
    let last = reader.read_frames(recovery.last_frame.unwrap(), 1).unwrap();
    assert_eq!(last[0].next, end);
    // The footer needs the chain hash, which the caller knows.
    let inputs: Vec<FrameInput<'_>> = groups[6].iter().map(TestFrame::input).collect();
    assert!(matches!(
        writer.append(&inputs),
        Err(LogError::LastHashUnknown)
    ));
    writer.set_last_hash(hash_after(seq));
    // Seqs must continue.
    let wrong = TestFrame::new(seq + 1, 1, 10);
    assert!(matches!(
        writer.append(&[wrong.input()]),
        Err(LogError::SeqGap { expected, found, .. }) if expected == seq && found == seq + 1
    ));
    for group in &groups[6..] {
        append_group(&mut writer, group);
    }
    let frames = read_all(&reader);
    let written: Vec<&TestFrame> = groups.iter().flatten().collect();
    assert_eq!(frames.len(), written.len());
    assert!(frames
        .iter()
        .zip(written)
        .all(|(frame, expected)| expected.matches(frame)));
}

/// Appends two groups of three frames in segment 1 and returns the frames'
/// positions.
fn two_groups(dir: &Path) -> Vec<Position> {
    let (mut writer, _, _) = open_real(dir).unwrap();
    let mut next_seq = FIRST_SEQ;
    let mut positions = Vec::new();
    for group in make_groups(&mut next_seq, 2, 3, 60) {
        positions.extend(append_group(&mut writer, &group));
    }
    assert!(positions.iter().all(|position| position.segment == 1));
    positions
}

#[test]
fn damage_followed_by_a_later_write_refuses_to_open() {
    let temp = tempfile::tempdir().unwrap();
    let dir = temp.path().join("log");
    let positions = two_groups(&dir);
    // A record byte of the second frame of the first group.
    flip_byte(&segment_path(&dir, 1), positions[1].offset + 40);
    let before = fs::read(segment_path(&dir, 1)).unwrap();
    match open_real(&dir) {
        Err(LogError::Corrupt {
            segment,
            offset,
            reason,
        }) => {
            assert_eq!(segment, segment_path(&dir, 1));
            assert_eq!(offset, positions[1].offset);
            assert!(reason.contains("checksum"), "{reason}");
        }
        other => panic!("expected Corrupt, got {other:?}"),
    }
    // Nothing was cut.
    assert_eq!(fs::read(segment_path(&dir, 1)).unwrap(), before);
    // A reader meets the same damage when it reads the frame.
    let message = LogError::Corrupt {
        segment: segment_path(&dir, 1),
        offset: positions[1].offset,
        reason: "x".to_string(),
    }
    .to_string();
    assert!(message.contains("0000000000000001.seg at offset"));
}

#[test]
fn a_half_written_last_frame_is_cut_and_reported() {
    let temp = tempfile::tempdir().unwrap();
    let dir = temp.path().join("log");
    let positions = two_groups(&dir);
    let (writer, _, _) = open_real(&dir).unwrap();
    let end = writer.end();
    let next_seq = writer.next_seq();
    drop(writer);
    let torn = TestFrame::new(next_seq, 2, 300);
    let bytes = encoded(&torn, end.offset);
    overwrite(
        &segment_path(&dir, 1),
        end.offset,
        &bytes[..bytes.len() / 2],
    );

    let (_, reader, recovery) = open_real(&dir).unwrap();
    let cut = recovery.cut.expect("a cut");
    assert_eq!(cut.segment, 1);
    assert_eq!(cut.offset, end.offset);
    assert_eq!(cut.bytes_zeroed, (bytes.len() / 2) as u64);
    assert_eq!(recovery.end, end);
    assert_eq!(recovery.next_seq, next_seq);
    assert_eq!(recovery.last_frame, positions.last().copied());
    assert_eq!(read_all(&reader).len(), 6);
    let contents = fs::read(segment_path(&dir, 1)).unwrap();
    assert!(contents[end.offset as usize..]
        .iter()
        .all(|byte| *byte == 0));

    let (_, _, again) = open_real(&dir).unwrap();
    assert_eq!(again.cut, None);
    assert_eq!(again.end, end);
}

#[test]
fn a_last_frame_whose_head_is_zeros_is_cut() {
    let temp = tempfile::tempdir().unwrap();
    let dir = temp.path().join("log");
    two_groups(&dir);
    let (writer, _, _) = open_real(&dir).unwrap();
    let end = writer.end();
    let next_seq = writer.next_seq();
    drop(writer);
    // As if the first sector of the write never reached the disk.
    let torn = TestFrame::new(next_seq, 1, 900);
    let bytes = encoded(&torn, end.offset);
    overwrite(&segment_path(&dir, 1), end.offset + 512, &bytes[512..]);

    let (_, _, recovery) = open_real(&dir).unwrap();
    let cut = recovery.cut.expect("a cut");
    assert_eq!(cut.offset, end.offset);
    // Up to the last non-zero byte: the frame's zero padding may stay.
    let len = bytes.len() as u64;
    assert!(
        cut.bytes_zeroed > len - 8 && cut.bytes_zeroed <= len,
        "{cut:?}"
    );
    assert!(cut.reason.contains("zero frame length"), "{}", cut.reason);
    assert_eq!(recovery.next_seq, next_seq);
    assert_eq!(open_real(&dir).unwrap().2.cut, None);
}

#[test]
fn damage_inside_the_last_group_is_cut_as_a_torn_write() {
    let temp = tempfile::tempdir().unwrap();
    let dir = temp.path().join("log");
    let positions = two_groups(&dir);
    // The first frame of the second group is damaged; the two after it
    // are whole, but they were carried by the same write.
    flip_byte(&segment_path(&dir, 1), positions[3].offset + 36);
    let (mut writer, reader, recovery) = open_real(&dir).unwrap();
    let cut = recovery.cut.expect("a cut");
    assert_eq!(cut.offset, positions[3].offset);
    assert_eq!(recovery.end, positions[3]);
    let frames = read_all(&reader);
    assert_eq!(frames.len(), 3);
    assert_eq!(
        recovery.next_seq,
        frames[2].first_seq + frames[2].records.len() as u64
    );
    // The log goes on from the cut.
    writer.set_last_hash(hash_after(recovery.next_seq));
    let next = TestFrame::new(recovery.next_seq, 1, 10);
    assert_eq!(append_group(&mut writer, &[next]), vec![positions[3]]);
    drop(writer);
    assert_eq!(open_real(&dir).unwrap().2.cut, None);
}

#[test]
fn a_damaged_footer_of_a_sealed_segment_refuses_to_open() {
    let temp = tempfile::tempdir().unwrap();
    let dir = temp.path().join("log");
    let (mut writer, _, _) = open_real(&dir).unwrap();
    let mut next_seq = FIRST_SEQ;
    for group in make_groups(&mut next_seq, 10, 4, 200) {
        append_group(&mut writer, &group);
    }
    assert!(writer.end().segment >= 2);
    drop(writer);
    let footer_offset = SEGMENT_BYTES - SEGMENT_FOOTER_LEN;
    flip_byte(&segment_path(&dir, 1), footer_offset + 9);
    match open_real(&dir) {
        Err(LogError::Corrupt {
            segment, offset, ..
        }) => {
            assert_eq!(segment, segment_path(&dir, 1));
            assert_eq!(offset, footer_offset);
        }
        other => panic!("expected Corrupt, got {other:?}"),
    }
}

#[test]
fn a_missing_segment_or_broken_seq_chain_refuses_to_open() {
    let temp = tempfile::tempdir().unwrap();
    let dir = temp.path().join("log");
    let (mut writer, _, _) = open_real(&dir).unwrap();
    let mut next_seq = FIRST_SEQ;
    for group in make_groups(&mut next_seq, 20, 4, 200) {
        append_group(&mut writer, &group);
    }
    assert!(writer.end().segment >= 3);
    drop(writer);

    // A header whose first seq does not continue the previous footer.
    let path = segment_path(&dir, 2);
    let mut header = SegmentHeader::decode(&fs::read(&path).unwrap()).unwrap();
    header.first_seq += 1;
    overwrite(&path, 0, &header.encode());
    assert!(matches!(open_real(&dir), Err(LogError::Corrupt { segment, .. }) if segment == path));

    fs::remove_file(&path).unwrap();
    assert!(matches!(
        open_real(&dir),
        Err(LogError::Corrupt { segment, .. }) if segment == segment_path(&dir, 3)
    ));

    // A log whose first segment is gone has lost its beginning.
    let temp = tempfile::tempdir().unwrap();
    let dir = temp.path().join("log");
    let (mut writer, _, _) = open_real(&dir).unwrap();
    let mut next_seq = FIRST_SEQ;
    for group in make_groups(&mut next_seq, 20, 4, 200) {
        append_group(&mut writer, &group);
    }
    drop(writer);
    fs::remove_file(segment_path(&dir, 1)).unwrap();
    assert!(matches!(
        open_real(&dir),
        Err(LogError::Corrupt { segment, .. }) if segment == segment_path(&dir, 2)
    ));
}

#[test]
fn a_torn_seal_of_the_last_segment_is_cut_and_the_segment_reopened() {
    let temp = tempfile::tempdir().unwrap();
    let dir = temp.path().join("log");
    let positions = two_groups(&dir);
    let footer_offset = SEGMENT_BYTES - SEGMENT_FOOTER_LEN;
    // Half a footer, as if the power failed while sealing.
    let (writer, _, _) = open_real(&dir).unwrap();
    let footer = SegmentFooter {
        last_seq: writer.next_seq() - 1,
        data_end: writer.end().offset,
        last_hash: hash_after(writer.next_seq()),
    };
    drop(writer);
    overwrite(
        &segment_path(&dir, 1),
        footer_offset,
        &footer.encode()[..32],
    );
    let (mut writer, _, recovery) = open_real(&dir).unwrap();
    let cut = recovery.cut.expect("the torn footer is zeroed");
    assert_eq!(cut.offset, footer_offset);
    assert!(cut.bytes_zeroed > 0 && cut.bytes_zeroed <= 32);
    assert_eq!(recovery.last_frame, positions.last().copied());
    // The segment is not sealed: the next frame goes after the last one.
    writer.set_last_hash(hash_after(recovery.next_seq));
    let next = TestFrame::new(recovery.next_seq, 1, 10);
    assert_eq!(append_group(&mut writer, &[next]), vec![recovery.end]);
}

#[test]
fn a_sealed_last_segment_rolls_at_the_next_append() {
    let temp = tempfile::tempdir().unwrap();
    let dir = temp.path().join("log");
    let (mut writer, _, _) = open_real(&dir).unwrap();
    let mut next_seq = FIRST_SEQ;
    for group in make_groups(&mut next_seq, 8, 4, 200) {
        append_group(&mut writer, &group);
    }
    let last_segment = writer.end().segment;
    assert!(last_segment >= 2);
    drop(writer);
    // As if the power failed after the seal, before the next segment got
    // its name.
    let sealed = segment_path(&dir, last_segment - 1);
    let bytes = fs::read(&sealed).unwrap();
    let footer =
        SegmentFooter::decode(&bytes[(SEGMENT_BYTES - SEGMENT_FOOTER_LEN) as usize..]).unwrap();
    fs::remove_file(segment_path(&dir, last_segment)).unwrap();

    let (mut writer, reader, recovery) = open_real(&dir).unwrap();
    assert_eq!(recovery.cut, None);
    assert_eq!(
        recovery.end,
        Position {
            segment: last_segment - 1,
            offset: footer.data_end
        }
    );
    assert_eq!(recovery.next_seq, footer.last_seq + 1);
    assert_eq!(recovery.last_hash, Some(footer.last_hash));
    let next = TestFrame::new(recovery.next_seq, 1, 10);
    let position = append_group(&mut writer, std::slice::from_ref(&next));
    assert_eq!(
        position,
        vec![Position {
            segment: last_segment,
            offset: 64
        }]
    );
    let frames = read_all(&reader);
    assert!(next.matches(frames.last().unwrap()));
}

#[test]
fn a_leftover_spare_is_replaced() {
    let temp = tempfile::tempdir().unwrap();
    let dir = temp.path().join("log");
    two_groups(&dir);
    fs::write(dir.join(SPARE_NAME), b"half a spare").unwrap();
    let (writer, _, _) = open_real(&dir).unwrap();
    assert_eq!(
        fs::metadata(dir.join(SPARE_NAME)).unwrap().len(),
        SEGMENT_BYTES
    );
    assert!(fs::read(dir.join(SPARE_NAME))
        .unwrap()
        .iter()
        .all(|byte| *byte == 0));
    drop(writer);
}

#[test]
fn a_new_log_directory_is_made_durable_up_to_the_existing_level() {
    let temp = tempfile::tempdir().unwrap();
    let dir = temp.path().join("data").join("log");
    let (disk, writer, _reader) = open_hooked(&dir);
    let events = disk.hooks.take_events();
    let temp_name = temp
        .path()
        .file_name()
        .unwrap()
        .to_string_lossy()
        .into_owned();
    assert_eq!(events[0], format!("sync_dir {temp_name}"), "{events:?}");
    assert_eq!(events[1], "sync_dir data", "{events:?}");
    assert!(events.contains(&"rename spare.tmp 0000000000000001.seg".to_string()));
    drop(writer);

    // An existing log directory gets its parent fsynced once per open.
    let (_writer, _reader, _) =
        open_with(disk.clone(), &dir, config(), SpareMaker::Writer).unwrap();
    let events = disk.hooks.take_events();
    assert_eq!(events[0], "sync_dir data", "{events:?}");
    assert!(!events
        .iter()
        .any(|event| event == &format!("sync_dir {temp_name}")));
}

#[test]
fn an_oversized_frame_is_refused_before_anything_is_written() {
    let temp = tempfile::tempdir().unwrap();
    let dir = temp.path().join("log");
    let (disk, mut writer, _) = open_hooked(&dir);
    disk.hooks.take_events();
    let fits = TestFrame::new(1, 1, 10);
    let too_large = TestFrame::new(2, 1, SEGMENT_BYTES as usize);
    let result = writer.append(&[fits.input(), too_large.input()]);
    assert!(
        matches!(result, Err(LogError::FrameTooLarge { capacity, .. }) if capacity == config().frame_capacity())
    );
    assert!(disk.hooks.take_events().is_empty());
    // The writer still works; the largest frame that fits is accepted.
    let largest = TestFrame {
        first_seq: 1,
        records: vec![vec![7; (config().frame_capacity() - 32 - 4) as usize]],
        meta: Vec::new(),
    };
    assert_eq!(
        format::frame_len(&largest.input()),
        config().frame_capacity()
    );
    append_group(&mut writer, std::slice::from_ref(&fits));
    let largest = TestFrame {
        first_seq: 2,
        ..largest
    };
    let positions = append_group(&mut writer, &[largest]);
    assert_eq!(
        positions[0],
        Position {
            segment: 2,
            offset: 64
        }
    );
}

#[test]
fn a_write_error_fails_the_writer_for_good() {
    let temp = tempfile::tempdir().unwrap();
    let dir = temp.path().join("log");
    let (disk, mut writer, reader) = open_hooked(&dir);
    let mut next_seq = FIRST_SEQ;
    let groups = make_groups(&mut next_seq, 3, 2, 20);
    append_group(&mut writer, &groups[0]);
    let durable = reader.durable_end();

    disk.hooks.fail_writes.store(true, Ordering::SeqCst);
    let inputs: Vec<FrameInput<'_>> = groups[1].iter().map(TestFrame::input).collect();
    let first = writer.append(&inputs).unwrap_err();
    assert!(matches!(first, LogError::Io { .. }), "{first:?}");
    disk.hooks.fail_writes.store(false, Ordering::SeqCst);
    disk.hooks.take_events();
    // Later appends fail with the first reason, and touch nothing.
    match writer.append(&inputs) {
        Err(LogError::Failed(reason)) => assert_eq!(reason, first.to_string()),
        other => panic!("expected Failed, got {other:?}"),
    }
    assert!(disk.hooks.take_events().is_empty());
    assert_eq!(writer.failure(), Some(first.to_string().as_str()));
    assert_eq!(reader.durable_end(), durable);
}

#[test]
fn a_failed_fdatasync_is_never_retried() {
    let temp = tempfile::tempdir().unwrap();
    let dir = temp.path().join("log");
    let (disk, mut writer, reader) = open_hooked(&dir);
    let durable = reader.durable_end();
    disk.hooks.fail_syncs.store(true, Ordering::SeqCst);
    let frame = TestFrame::new(1, 1, 10);
    assert!(matches!(
        writer.append(&[frame.input()]),
        Err(LogError::Io { .. })
    ));
    // The frame's bytes may be in the file, but readers never see them.
    assert_eq!(reader.durable_end(), durable);
    assert!(read_all(&reader).is_empty());
    disk.hooks.fail_syncs.store(false, Ordering::SeqCst);
    disk.hooks.take_events();
    assert!(matches!(
        writer.append(&[frame.input()]),
        Err(LogError::Failed(_))
    ));
    assert!(
        disk.hooks.take_events().is_empty(),
        "no write and no sync after the failure"
    );
}

/// Records operations on `RealDisk`, fails them on demand, and can hold one
/// `sync_data` until the test releases it.
#[derive(Debug)]
struct HookedDisk {
    hooks: Arc<Hooks>,
}

type SyncGate = (mpsc::Sender<()>, mpsc::Receiver<()>);

#[derive(Debug, Default)]
struct Hooks {
    events: Mutex<Vec<String>>,
    fail_writes: AtomicBool,
    fail_syncs: AtomicBool,
    /// When set, the next `sync_data` says it entered and waits for a
    /// release.
    sync_gate: Mutex<Option<SyncGate>>,
}

impl Hooks {
    fn record(&self, event: String) {
        self.events.lock().unwrap().push(event);
    }

    fn take_events(&self) -> Vec<String> {
        std::mem::take(&mut *self.events.lock().unwrap())
    }
}

fn name_of(path: &Path) -> String {
    path.file_name()
        .map_or_else(String::new, |name| name.to_string_lossy().into_owned())
}

fn injected() -> io::Error {
    io::Error::from_raw_os_error(libc::EIO)
}

impl HookedDisk {
    fn new() -> Arc<HookedDisk> {
        Arc::new(HookedDisk {
            hooks: Arc::new(Hooks::default()),
        })
    }
}

impl Disk for HookedDisk {
    fn create_dir_all(&self, path: &Path) -> io::Result<()> {
        RealDisk.create_dir_all(path)
    }

    fn list_dir(&self, dir: &Path) -> io::Result<Vec<String>> {
        RealDisk.list_dir(dir)
    }

    fn exists(&self, path: &Path) -> bool {
        RealDisk.exists(path)
    }

    fn open(&self, path: &Path, mode: OpenMode) -> io::Result<Arc<dyn DiskFile>> {
        if mode == OpenMode::CreateNew {
            self.hooks.record(format!("create {}", name_of(path)));
        }
        Ok(Arc::new(HookedFile {
            inner: RealDisk.open(path, mode)?,
            name: name_of(path),
            hooks: self.hooks.clone(),
        }))
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        self.hooks
            .record(format!("rename {} {}", name_of(from), name_of(to)));
        RealDisk.rename(from, to)
    }

    fn remove_file(&self, path: &Path) -> io::Result<()> {
        self.hooks.record(format!("remove {}", name_of(path)));
        RealDisk.remove_file(path)
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        self.hooks.record(format!("sync_dir {}", name_of(dir)));
        RealDisk.sync_dir(dir)
    }
}

#[derive(Debug)]
struct HookedFile {
    inner: Arc<dyn DiskFile>,
    name: String,
    hooks: Arc<Hooks>,
}

impl DiskFile for HookedFile {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        self.inner.read_at(buf, offset)
    }

    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.hooks.record(format!("write {}", self.name));
        if self.hooks.fail_writes.load(Ordering::SeqCst) {
            return Err(injected());
        }
        self.inner.write_at(buf, offset)
    }

    fn sync_data(&self) -> io::Result<()> {
        self.hooks.record(format!("sync {}", self.name));
        let gate = self.hooks.sync_gate.lock().unwrap().take();
        if let Some((entered, release)) = gate {
            entered.send(()).unwrap();
            release.recv().unwrap();
        }
        if self.hooks.fail_syncs.load(Ordering::SeqCst) {
            return Err(injected());
        }
        self.inner.sync_data()
    }

    fn sync_all(&self) -> io::Result<()> {
        self.sync_data()
    }

    fn len(&self) -> io::Result<u64> {
        self.inner.len()
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        self.hooks.record(format!("set_len {}", self.name));
        self.inner.set_len(len)
    }
}
