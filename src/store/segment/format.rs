//! The bytes of a segment file: the header, the frames and the footer, as the
//! module documentation lays them out. Nothing here touches a disk; every
//! function turns values into bytes or checks bytes and turns them back.

use std::ops::Range;

use super::FrameInput;

/// The length of the segment header at offset 0.
pub const SEGMENT_HEADER_LEN: u64 = 64;
/// The length of the footer in the last bytes of a sealed segment.
pub const SEGMENT_FOOTER_LEN: u64 = 64;
/// The length of a frame's fixed header.
pub const FRAME_HEADER_LEN: u64 = 32;
/// Frames start at multiples of this, and their lengths are multiples of it.
pub const FRAME_ALIGN: u64 = 8;

const SEGMENT_MAGIC: &[u8; 8] = b"CAIRNSEG";
const FOOTER_MAGIC: &[u8; 8] = b"CAIRNEND";
const FORMAT_VERSION: u32 = 1;
/// Header and footer carry a crc32c of their first 60 bytes in the last 4.
const CHECKSUMMED_LEN: usize = 60;

/// The header of a segment file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SegmentHeader {
    /// The segment's number, the same as in its file name.
    pub number: u64,
    /// The seq of the first record of the segment, or the one it will have.
    pub first_seq: u64,
    /// The size of the segment file.
    pub segment_bytes: u64,
}

impl SegmentHeader {
    /// The 64 bytes of the header.
    pub fn encode(&self) -> [u8; SEGMENT_HEADER_LEN as usize] {
        let mut bytes = [0u8; SEGMENT_HEADER_LEN as usize];
        bytes[0..8].copy_from_slice(SEGMENT_MAGIC);
        bytes[8..12].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
        // Bytes 12..16 are reserved and stay zero.
        bytes[16..24].copy_from_slice(&self.number.to_le_bytes());
        bytes[24..32].copy_from_slice(&self.first_seq.to_le_bytes());
        bytes[32..40].copy_from_slice(&self.segment_bytes.to_le_bytes());
        seal_checksum(&mut bytes);
        bytes
    }

    /// Reads a header, or says what is wrong with it.
    pub fn decode(bytes: &[u8]) -> Result<SegmentHeader, String> {
        if bytes.len() < SEGMENT_HEADER_LEN as usize {
            return Err("the file is shorter than a segment header".to_string());
        }
        let bytes = &bytes[..SEGMENT_HEADER_LEN as usize];
        if &bytes[0..8] != SEGMENT_MAGIC {
            return Err("the segment header has no CAIRNSEG magic".to_string());
        }
        check_checksum(bytes, "segment header")?;
        let format = read_u32(bytes, 8);
        if format != FORMAT_VERSION {
            return Err(format!("unknown segment format {format}"));
        }
        if read_u32(bytes, 12) != 0 {
            return Err("the segment header's reserved field is not zero".to_string());
        }
        Ok(SegmentHeader {
            number: read_u64(bytes, 16),
            first_seq: read_u64(bytes, 24),
            segment_bytes: read_u64(bytes, 32),
        })
    }
}

/// The footer of a sealed segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SegmentFooter {
    /// The seq of the last record in the segment; the segment's first seq
    /// minus one when it holds no record.
    pub last_seq: u64,
    /// The offset just past the last frame.
    pub data_end: u64,
    /// The chain hash after the last frame, as the caller gave it.
    pub last_hash: [u8; 32],
}

impl SegmentFooter {
    /// The 64 bytes of the footer.
    pub fn encode(&self) -> [u8; SEGMENT_FOOTER_LEN as usize] {
        let mut bytes = [0u8; SEGMENT_FOOTER_LEN as usize];
        bytes[0..8].copy_from_slice(FOOTER_MAGIC);
        bytes[8..16].copy_from_slice(&self.last_seq.to_le_bytes());
        bytes[16..24].copy_from_slice(&self.data_end.to_le_bytes());
        bytes[24..56].copy_from_slice(&self.last_hash);
        seal_checksum(&mut bytes);
        bytes
    }

    /// Reads a footer, or says what is wrong with it.
    pub fn decode(bytes: &[u8]) -> Result<SegmentFooter, String> {
        if bytes.len() < SEGMENT_FOOTER_LEN as usize {
            return Err("the footer is shorter than 64 bytes".to_string());
        }
        let bytes = &bytes[..SEGMENT_FOOTER_LEN as usize];
        if &bytes[0..8] != FOOTER_MAGIC {
            return Err("the segment has no footer (no CAIRNEND magic)".to_string());
        }
        check_checksum(bytes, "footer")?;
        if bytes[56..60] != [0; 4] {
            return Err("the footer's reserved bytes are not zero".to_string());
        }
        let mut last_hash = [0u8; 32];
        last_hash.copy_from_slice(&bytes[24..56]);
        Ok(SegmentFooter {
            last_seq: read_u64(bytes, 8),
            data_end: read_u64(bytes, 16),
            last_hash,
        })
    }
}

/// The fixed header of a frame, once the whole frame has been checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader {
    /// The whole frame's length, header and padding included.
    pub len: u64,
    /// The seq of the frame's first record.
    pub first_seq: u64,
    /// How many records the frame holds.
    pub count: u64,
    /// The offset in the segment where the write that carried the frame put
    /// its first frame.
    pub group_start: u64,
    /// The length of the meta bytes.
    pub meta_len: u64,
}

impl FrameHeader {
    /// The seq after the frame's last record.
    pub fn next_seq(&self) -> u64 {
        self.first_seq + self.count
    }
}

/// Rounds `value` up to a multiple of [`FRAME_ALIGN`].
pub fn align_up(value: u64) -> u64 {
    value.div_ceil(FRAME_ALIGN) * FRAME_ALIGN
}

/// The length `encode_frame` gives `input`, padding included. Saturates
/// instead of overflowing, so an absurd input is simply too large.
pub fn frame_len(input: &FrameInput<'_>) -> u64 {
    let records = input.records.iter().fold(0u64, |total, record| {
        total.saturating_add(4).saturating_add(record.len() as u64)
    });
    let unpadded = FRAME_HEADER_LEN
        .saturating_add(input.meta.len() as u64)
        .saturating_add(records);
    align_up(unpadded.min(u64::MAX - FRAME_ALIGN))
}

/// Appends the frame of `input` to `out`. The caller has checked that the
/// frame fits a segment, so every length fits its `u32` field.
pub fn encode_frame(out: &mut Vec<u8>, input: &FrameInput<'_>, group_start: u64) {
    let start = out.len();
    let len = frame_len(input);
    out.reserve(len as usize);
    out.extend_from_slice(&(len as u32).to_le_bytes());
    // The checksum is filled in once the rest of the frame is in place.
    out.extend_from_slice(&0u32.to_le_bytes());
    out.extend_from_slice(&input.first_seq.to_le_bytes());
    out.extend_from_slice(&(input.records.len() as u32).to_le_bytes());
    out.extend_from_slice(&(group_start as u32).to_le_bytes());
    out.extend_from_slice(&(input.meta.len() as u32).to_le_bytes());
    out.extend_from_slice(&0u32.to_le_bytes());
    out.extend_from_slice(input.meta);
    for record in input.records {
        out.extend_from_slice(&(record.len() as u32).to_le_bytes());
        out.extend_from_slice(record);
    }
    out.resize(start + len as usize, 0);
    let checksum = crc32c::crc32c(&out[start + 8..]);
    out[start + 4..start + 8].copy_from_slice(&checksum.to_le_bytes());
}

/// The frame length in the first 4 bytes of `bytes`, if there are 4.
pub fn peek_len(bytes: &[u8]) -> Option<u64> {
    (bytes.len() >= 4).then(|| u64::from(read_u32(bytes, 0)))
}

/// Whether `len`, read at `offset`, can be the length of a frame that ends
/// at or before `data_limit`. It says why not.
pub fn check_len(len: u64, offset: u64, data_limit: u64) -> Result<(), String> {
    if len == 0 {
        return Err("a zero frame length before non-zero bytes".to_string());
    }
    if !len.is_multiple_of(FRAME_ALIGN) {
        return Err(format!("frame length {len} is not a multiple of 8"));
    }
    if len < FRAME_HEADER_LEN {
        return Err(format!("frame length {len} is shorter than a frame header"));
    }
    if len > data_limit.saturating_sub(offset) {
        return Err(format!(
            "frame length {len} runs past the end of the data at offset {data_limit}"
        ));
    }
    Ok(())
}

/// Checks the frame at the start of `bytes`, which was read at `offset` of
/// its segment and must hold the whole frame (it may hold more): its length,
/// its checksum, its header, the layout of its meta and records, and its
/// zero padding. Returns the frame's header, or says what is wrong.
pub fn check_frame(bytes: &[u8], offset: u64) -> Result<FrameHeader, String> {
    let len = peek_len(bytes).ok_or_else(|| "a frame header cut short".to_string())?;
    check_len(len, offset, offset + bytes.len() as u64)?;
    let frame = &bytes[..len as usize];
    let stored = read_u32(frame, 4);
    let computed = crc32c::crc32c(&frame[8..]);
    if stored != computed {
        return Err(format!(
            "frame checksum mismatch (stored {stored:#010x}, computed {computed:#010x})"
        ));
    }
    let header = FrameHeader {
        len,
        first_seq: read_u64(frame, 8),
        count: u64::from(read_u32(frame, 16)),
        group_start: u64::from(read_u32(frame, 20)),
        meta_len: u64::from(read_u32(frame, 24)),
    };
    if read_u32(frame, 28) != 0 {
        return Err("the frame's reserved field is not zero".to_string());
    }
    if !header.group_start.is_multiple_of(FRAME_ALIGN)
        || header.group_start < SEGMENT_HEADER_LEN
        || header.group_start > offset
    {
        return Err(format!(
            "group start {} is impossible for a frame at offset {offset}",
            header.group_start
        ));
    }
    let mut cursor = FRAME_HEADER_LEN
        .checked_add(header.meta_len)
        .filter(|end| *end <= len)
        .ok_or_else(|| format!("meta length {} overruns the frame", header.meta_len))?;
    for index in 0..header.count {
        let record_len = (cursor + 4 <= len)
            .then(|| u64::from(read_u32(frame, cursor as usize)))
            .ok_or_else(|| format!("record {index} has no room for its length"))?;
        cursor += 4;
        if record_len > len - cursor {
            return Err(format!(
                "record {index} of {record_len} bytes overruns the frame"
            ));
        }
        cursor += record_len;
    }
    if align_up(cursor) != len {
        return Err(format!(
            "the frame is {len} bytes but its contents end at {cursor}"
        ));
    }
    if frame[cursor as usize..].iter().any(|byte| *byte != 0) {
        return Err("the frame's padding is not zero".to_string());
    }
    Ok(header)
}

/// The byte ranges, within a frame that `check_frame` accepted, of its meta
/// and of each of its records.
pub fn frame_ranges(frame: &[u8], header: &FrameHeader) -> (Range<usize>, Vec<Range<usize>>) {
    let meta_start = FRAME_HEADER_LEN as usize;
    let meta = meta_start..meta_start + header.meta_len as usize;
    let mut records = Vec::with_capacity(header.count as usize);
    let mut cursor = meta.end;
    for _ in 0..header.count {
        let record_len = read_u32(frame, cursor) as usize;
        cursor += 4;
        records.push(cursor..cursor + record_len);
        cursor += record_len;
    }
    (meta, records)
}

fn seal_checksum(bytes: &mut [u8]) {
    let checksum = crc32c::crc32c(&bytes[..CHECKSUMMED_LEN]);
    bytes[CHECKSUMMED_LEN..CHECKSUMMED_LEN + 4].copy_from_slice(&checksum.to_le_bytes());
}

fn check_checksum(bytes: &[u8], what: &str) -> Result<(), String> {
    let stored = read_u32(bytes, CHECKSUMMED_LEN);
    let computed = crc32c::crc32c(&bytes[..CHECKSUMMED_LEN]);
    if stored != computed {
        return Err(format!(
            "{what} checksum mismatch (stored {stored:#010x}, computed {computed:#010x})"
        ));
    }
    Ok(())
}

fn read_u32(bytes: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(bytes[at..at + 4].try_into().expect("four bytes"))
}

fn read_u64(bytes: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(bytes[at..at + 8].try_into().expect("eight bytes"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input<'a>(records: &'a [Vec<u8>], meta: &'a [u8]) -> FrameInput<'a> {
        FrameInput {
            first_seq: 7,
            records,
            meta,
            last_hash: [9; 32],
        }
    }

    #[test]
    fn a_frame_encodes_to_its_computed_length_and_checks() {
        let records = vec![b"one".to_vec(), Vec::new(), vec![0xAB; 13]];
        let frame_input = input(&records, b"meta!");
        let mut bytes = vec![0xEE; 8];
        encode_frame(&mut bytes, &frame_input, 64);
        let frame = &bytes[8..];
        assert_eq!(frame.len() as u64, frame_len(&frame_input));
        assert_eq!(frame.len() % 8, 0);
        let header = check_frame(frame, 64).expect("a valid frame");
        assert_eq!(header.first_seq, 7);
        assert_eq!(header.count, 3);
        assert_eq!(header.next_seq(), 10);
        let (meta, ranges) = frame_ranges(frame, &header);
        assert_eq!(&frame[meta], b"meta!");
        let decoded: Vec<&[u8]> = ranges.into_iter().map(|range| &frame[range]).collect();
        assert_eq!(decoded, vec![&b"one"[..], &b""[..], &[0xAB; 13][..]]);
    }

    #[test]
    fn every_flipped_byte_of_a_frame_is_caught() {
        let records = vec![b"record".to_vec()];
        let mut bytes = Vec::new();
        encode_frame(&mut bytes, &input(&records, b""), 64);
        for index in 0..bytes.len() {
            let mut damaged = bytes.clone();
            damaged[index] ^= 0x40;
            assert!(
                check_frame(&damaged, 64).is_err(),
                "a flip at byte {index} went unnoticed"
            );
        }
    }

    #[test]
    fn header_and_footer_round_trip_and_catch_damage() {
        let header = SegmentHeader {
            number: 3,
            first_seq: 100,
            segment_bytes: 8192,
        };
        let mut bytes = header.encode();
        assert_eq!(SegmentHeader::decode(&bytes), Ok(header));
        bytes[20] ^= 1;
        assert!(SegmentHeader::decode(&bytes).is_err());

        let footer = SegmentFooter {
            last_seq: 99,
            data_end: 4096,
            last_hash: [5; 32],
        };
        let mut bytes = footer.encode();
        assert_eq!(SegmentFooter::decode(&bytes), Ok(footer));
        bytes[30] ^= 1;
        assert!(SegmentFooter::decode(&bytes).is_err());
    }

    #[test]
    fn a_group_start_after_the_frame_is_refused() {
        let records = vec![b"x".to_vec()];
        let mut bytes = Vec::new();
        encode_frame(&mut bytes, &input(&records, b""), 128);
        assert!(check_frame(&bytes, 128).is_ok());
        assert!(check_frame(&bytes, 120).is_err());
    }
}
