//! Measures the index's bytes on disk per event.
//!
//! Indexes 200,000 synthetic events (random ids, 1,000 streams, a
//! correlation on half of them, a cause on a third, one distinct time per 50
//! events, an idempotency key on 1 in 50) in batches of 100, makes the index
//! durable every 10 batches and at the end, then prints the file's bytes per
//! event (its length, and the blocks it takes on disk), the bytes of the
//! pages in use, and each table's share. It then compacts the file, closes
//! it, and times a reopen that verifies every page.
//!
//! Run with `cargo run --release --example index-size [DIRECTORY]`; set
//! `BATCHES_PER_DURABLE_COMMIT` to make the index durable more or less often.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Instant;

use cairn::store::index::{
    Checkpoint, FramePosition, IndexBatch, IndexConfig, IndexDb, IndexEntry,
};
use uuid::Uuid;

const EVENTS: u64 = 200_000;
const BATCH: u64 = 100;
const STREAMS: u64 = 1_000;
/// About the size of one encoded event record in the log.
const RECORD_BYTES: u64 = 410;
/// The log records a frame position about every 4 KiB.
const FRAME_EVERY: u64 = 10;
/// About the size of one encoded idempotency record (digest, stream, seqs).
const IDEMPOTENCY_RECORD_BYTES: usize = 80;

/// A small deterministic generator (splitmix64), so that runs compare.
struct Random(u64);

impl Random {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn uuid(&mut self) -> Uuid {
        let high = self.next().to_be_bytes();
        let low = self.next().to_be_bytes();
        let mut bytes = [0; 16];
        bytes[..8].copy_from_slice(&high);
        bytes[8..].copy_from_slice(&low);
        uuid::Builder::from_random_bytes(bytes).into_uuid()
    }
}

fn main() {
    let directory = std::env::args()
        .nth(1)
        .map(PathBuf::from)
        .unwrap_or_else(std::env::temp_dir)
        .join(format!("cairn-index-size-{}", std::process::id()));
    std::fs::create_dir_all(&directory).expect("create the measurement directory");
    let path = directory.join("index.redb");

    let stream_names: Vec<String> = (0..STREAMS)
        .map(|stream| format!("cluster/cluster-{stream:04}"))
        .collect();
    let mut versions = vec![0_u64; STREAMS as usize];
    let batches_per_durable_commit: u64 = std::env::var("BATCHES_PER_DURABLE_COMMIT")
        .ok()
        .and_then(|value| value.parse().ok())
        .unwrap_or(10);
    let mut random = Random(7);
    let index = IndexDb::open(&path, IndexConfig::default()).expect("open the index");
    let started = Instant::now();

    let mut seq = 0;
    let mut batches: u64 = 0;
    while seq < EVENTS {
        let mut entries = Vec::new();
        let mut keys = Vec::new();
        let mut frames = Vec::new();
        for _ in 0..BATCH {
            seq += 1;
            let stream = (random.next() % STREAMS) as usize;
            versions[stream] += 1;
            let correlation = random.next().is_multiple_of(2).then(|| random.uuid());
            let causing_seq = (seq > 1 && random.next().is_multiple_of(3))
                .then(|| seq - 1 - random.next() % (seq - 1).min(100));
            if random.next().is_multiple_of(50) {
                keys.push(random.uuid().to_string());
            }
            if seq % FRAME_EVERY == 1 {
                frames.push(position(seq));
            }
            entries.push(IndexEntry {
                seq,
                id: random.uuid(),
                stream: &stream_names[stream],
                version: versions[stream],
                time_micros: 1_700_000_000_000_000 + ((seq - 1) / 50) as i64 * 1_000,
                causing_seq,
                correlation,
            });
        }
        // The last frame of each batch has a position too.
        frames.push(position(seq));
        frames.dedup_by_key(|frame| frame.first_seq);
        let record = [0x5A_u8; IDEMPOTENCY_RECORD_BYTES];
        let after = position(seq + 1);
        let batch = IndexBatch {
            events: entries,
            idempotency: keys.iter().map(|key| (key.as_str(), &record[..])).collect(),
            frames,
            checkpoint: Checkpoint {
                seq,
                hash: [seq as u8; 32],
                segment: after.segment,
                offset: after.offset,
            },
        };
        index.apply(&batch).expect("apply a batch");
        batches += 1;
        if batches.is_multiple_of(batches_per_durable_commit) {
            index.make_durable().expect("make the index durable");
        }
    }
    index.make_durable().expect("make the index durable");
    let elapsed = started.elapsed();
    let (open_bytes, open_disk_bytes) = file_sizes(&path);

    println!(
        "indexed {EVENTS} events in {batches} batches in {:.2} s",
        elapsed.as_secs_f64()
    );
    println!(
        "file after make_durable: length {open_bytes} bytes ({:.1} bytes/event), on disk {open_disk_bytes} bytes ({:.1} bytes/event)",
        open_bytes as f64 / EVENTS as f64,
        open_disk_bytes as f64 / EVENTS as f64
    );
    let allocated = index.allocated_bytes().expect("measure the file");
    println!(
        "pages in use: {allocated} bytes, {:.1} bytes/event (durable commit every {batches_per_durable_commit} batches)",
        allocated as f64 / EVENTS as f64
    );
    println!(
        "{:<16} {:>8} {:>10} {:>10} {:>10} {:>9}",
        "table", "rows", "stored", "metadata", "fragment", "B/event"
    );
    let mut total = 0;
    for size in index.table_sizes().expect("measure the tables") {
        let bytes = size.stored_bytes + size.metadata_bytes + size.fragmented_bytes;
        total += bytes;
        println!(
            "{:<16} {:>8} {:>10} {:>10} {:>10} {:>9.1}",
            size.table,
            size.rows,
            size.stored_bytes,
            size.metadata_bytes,
            size.fragmented_bytes,
            bytes as f64 / EVENTS as f64
        );
    }
    println!(
        "tables: {total} bytes, {:.1} bytes/event; the rest of the file is redb's own state and free pages",
        total as f64 / EVENTS as f64
    );

    let mut index = index;
    let compact_started = Instant::now();
    index.compact().expect("compact the index");
    let (compacted_bytes, compacted_disk_bytes) = file_sizes(&path);
    println!(
        "file after compact: length {compacted_bytes} bytes ({:.1} bytes/event), on disk {compacted_disk_bytes} bytes ({:.1} bytes/event), in {:.2} s",
        compacted_bytes as f64 / EVENTS as f64,
        compacted_disk_bytes as f64 / EVENTS as f64,
        compact_started.elapsed().as_secs_f64()
    );
    drop(index);
    let (closed_bytes, closed_disk_bytes) = file_sizes(&path);
    println!(
        "file after close: length {closed_bytes} bytes ({:.1} bytes/event), on disk {closed_disk_bytes} bytes ({:.1} bytes/event)",
        closed_bytes as f64 / EVENTS as f64,
        closed_disk_bytes as f64 / EVENTS as f64
    );
    let verify_started = Instant::now();
    let verify = IndexConfig {
        verify_on_open: true,
        ..IndexConfig::default()
    };
    IndexDb::open(&path, verify).expect("reopen with verification");
    println!(
        "open with verify_on_open: {:.3} s",
        verify_started.elapsed().as_secs_f64()
    );
    std::fs::remove_dir_all(&directory).expect("remove the measurement directory");
}

/// The file's length, and the bytes its allocated blocks take on disk (redb
/// grows the file with `set_len`, which leaves the new tail sparse on most
/// file systems).
fn file_sizes(path: &Path) -> (u64, u64) {
    let metadata = std::fs::metadata(path).expect("stat the index");
    (metadata.len(), metadata.blocks() * 512)
}

/// A made-up log position of the frame that starts at `seq`: records of
/// `RECORD_BYTES`, in segments of 256 MiB.
fn position(seq: u64) -> FramePosition {
    const SEGMENT_BYTES: u64 = 256 * 1024 * 1024;
    let bytes = (seq - 1) * RECORD_BYTES;
    FramePosition {
        first_seq: seq,
        segment: bytes / SEGMENT_BYTES,
        offset: bytes % SEGMENT_BYTES,
    }
}
