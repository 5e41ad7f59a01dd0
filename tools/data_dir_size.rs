//! Where the bytes of a data directory go, and what opening its index costs.
//!
//! Run with `cargo run --release --example data-dir-size DIR` on a data
//! directory no daemon holds (the history bench makes one at a million
//! events: `cargo bench --bench history -- --data-dir DIR --skip-backup`).
//! It prints the bytes every file takes on disk and per event; each index
//! table's stored, metadata and fragmented bytes; the snapshot parts'
//! bytes as stored (LZ4) beside the bytes they decompress to; and the time
//! `IndexDb::open` takes with and without `verify_on_open` (the check the
//! daemon skips and `cairn verify --data-dir` makes), each timed twice, warm.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Instant;

use cairn::store::index::{IndexConfig, IndexDb};

fn main() {
    let dir = PathBuf::from(
        std::env::args()
            .nth(1)
            .expect("usage: data-dir-size DIR (a Cairn data directory no daemon holds)"),
    );
    let index_path = dir.join("index.redb");

    let mut files = Vec::new();
    list_files(&dir, &mut files);
    files.sort();
    let mut total = 0;
    for (path, bytes) in &files {
        println!("{bytes:>12} B  {}", path.display());
        total += bytes;
    }

    let index = open(&index_path, false);
    let events = index
        .checkpoint()
        .expect("read the checkpoint")
        .map_or(0, |checkpoint| checkpoint.seq);
    println!(
        "{total:>12} B  in all: {events} events, {:.1} bytes per event",
        total as f64 / events.max(1) as f64
    );
    for table in index.table_sizes().expect("measure the tables") {
        println!(
            "table {:<15} {:>9} rows, {:>11} B stored, {:>9} B metadata, {:>10} B fragmented",
            table.table,
            table.rows,
            table.stored_bytes,
            table.metadata_bytes,
            table.fragmented_bytes
        );
    }
    let seqs = index.snapshot_seqs().expect("list the snapshots");
    let stored: u64 = index
        .table_sizes()
        .expect("measure the tables")
        .iter()
        .filter(|table| table.table == "snapshot_parts")
        .map(|table| table.stored_bytes)
        .sum();
    let mut decompressed = 0;
    for seq in &seqs {
        for (name, part) in index.snapshot_parts(*seq).expect("read a snapshot") {
            // The keys (seq and name) are stored as they are.
            decompressed += (8 + name.len() + part.len()) as u64;
        }
    }
    println!(
        "snapshots: {} of them, parts {decompressed} B decompressed, {stored} B stored ({:.2}x)",
        seqs.len(),
        decompressed as f64 / stored.max(1) as f64
    );
    drop(index);

    for verify in [false, true, false, true] {
        let started = Instant::now();
        let index = open(&index_path, verify);
        println!(
            "IndexDb::open, verify_on_open {verify}: {:.3} s",
            started.elapsed().as_secs_f64()
        );
        drop(index);
    }
}

fn open(path: &Path, verify_on_open: bool) -> IndexDb {
    IndexDb::open(
        path,
        IndexConfig {
            verify_on_open,
            ..IndexConfig::default()
        },
    )
    .expect("open the index (is a daemon holding the directory?)")
}

/// Every file under `dir` with the bytes its blocks take on disk.
fn list_files(dir: &Path, files: &mut Vec<(PathBuf, u64)>) {
    for entry in std::fs::read_dir(dir).expect("list the directory") {
        let entry = entry.expect("read a directory entry");
        let metadata = entry.metadata().expect("stat a file");
        if metadata.is_dir() {
            list_files(&entry.path(), files);
        } else {
            files.push((entry.path(), metadata.blocks() * 512));
        }
    }
}
