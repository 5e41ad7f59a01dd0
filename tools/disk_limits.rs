//! The disk's own limits, the floor under every durable figure of the suite.
//!
//! Run: `cargo bench --bench disk-limits` (options after `--`: `--dir PATH` to
//! measure another filesystem than the system temp dir, `--seconds N` per
//! measurement, default 5, and `--json` to print JSON instead of markdown).
//!
//! Two measurements, each in a fresh temp dir under `--dir`, removed at the end:
//!
//! - 4 KiB appends: write 4 KiB at the end of a file, `fdatasync`, repeat. This
//!   is what a log that commits one small record at a time costs at best; the
//!   file grows, so every `fdatasync` also carries the new size.
//! - 4 KiB overwrites: the same, but into a file of 64 MiB written and synced
//!   beforehand, from its start and wrapping around. The size does not change,
//!   so `fdatasync` need not commit metadata; this is what a log gets whose
//!   segments are written out before use (PostgreSQL's WAL fills new 16 MiB
//!   segments with zeros by default).
//! - Sequential writes: 1 MiB writes, each followed by `fdatasync`. This is the
//!   bandwidth a log that commits large groups can reach.
//!
//! Rates are over the time spent writing and syncing only; the file is started
//! afresh (outside the clock) when it would pass 1 GiB, so the run stays small
//! on disk.

use std::fs::{File, OpenOptions};
use std::io::{Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

const APPEND_BYTES: usize = 4096;
const SEQUENTIAL_BYTES: usize = 1 << 20;
const MAX_FILE_BYTES: u64 = 1 << 30;
const PREALLOCATED_BYTES: u64 = 64 << 20;

/// What one measurement saw: how many writes, how long they took in all, and
/// each one's latency (write plus `fdatasync`).
struct Measurement {
    name: &'static str,
    write_bytes: usize,
    latencies: Vec<Duration>,
    busy: Duration,
}

impl Measurement {
    fn per_second(&self) -> f64 {
        self.latencies.len() as f64 / self.busy.as_secs_f64().max(f64::MIN_POSITIVE)
    }

    fn mib_per_second(&self) -> f64 {
        self.per_second() * self.write_bytes as f64 / (1 << 20) as f64
    }

    /// The latency at quantile `q` in milliseconds (latencies are sorted).
    fn quantile_ms(&self, q: f64) -> f64 {
        let index = ((self.latencies.len() as f64 - 1.0) * q).round() as usize;
        self.latencies
            .get(index)
            .map_or(0.0, |d| d.as_secs_f64() * 1000.0)
    }

    fn json(&self) -> serde_json::Value {
        serde_json::json!({
            "write_bytes": self.write_bytes,
            "writes": self.latencies.len(),
            "busy_seconds": self.busy.as_secs_f64(),
            "writes_per_second": self.per_second(),
            "mib_per_second": self.mib_per_second(),
            "p50_ms": self.quantile_ms(0.5),
            "p99_ms": self.quantile_ms(0.99),
            "max_ms": self.quantile_ms(1.0),
        })
    }
}

/// Fills a buffer with pseudo-random bytes (xorshift), so a disk or a virtual
/// disk that compresses or skips zero blocks still has to write them.
fn noise(len: usize, mut state: u64) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(len + 8);
    while bytes.len() < len {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        bytes.extend_from_slice(&state.to_le_bytes());
    }
    bytes.truncate(len);
    bytes
}

fn fresh_file(path: &Path) -> File {
    OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(true)
        .open(path)
        .unwrap_or_else(|e| panic!("cannot create {}: {e}", path.display()))
}

/// Writes `write_bytes` and `fdatasync`s it, again and again, for `seconds`;
/// returns each write's latency. The writes go at the end of a growing file,
/// or with `preallocate` into a file of `PREALLOCATED_BYTES` written and synced
/// beforehand, wrapping around at its end.
fn measure(
    name: &'static str,
    dir: &Path,
    write_bytes: usize,
    preallocate: bool,
    seconds: f64,
) -> Measurement {
    let path = dir.join(name);
    let buffer = noise(write_bytes, 0x9e37_79b9_7f4a_7c15);
    let mut file = fresh_file(&path);
    if preallocate {
        let block = noise(1 << 20, 0x2545_f491_4f6c_dd1d);
        for _ in 0..PREALLOCATED_BYTES / block.len() as u64 {
            file.write_all(&block).expect("preallocating write");
        }
    }
    // The file (empty or preallocated) on disk first, so the first write does
    // not also pay for the directory entry or the preallocation.
    file.sync_all().expect("fsync of the new file");
    if preallocate {
        file.seek(SeekFrom::Start(0)).expect("seek to the start");
    }
    let mut written: u64 = 0;
    let mut latencies = Vec::new();
    let mut busy = Duration::ZERO;
    let budget = Duration::from_secs_f64(seconds);
    while busy < budget {
        if preallocate && written + write_bytes as u64 > PREALLOCATED_BYTES {
            file.seek(SeekFrom::Start(0)).expect("seek to the start");
            written = 0;
        } else if written + write_bytes as u64 > MAX_FILE_BYTES {
            drop(file);
            std::fs::remove_file(&path).expect("removing the full file");
            file = fresh_file(&path);
            file.sync_all().expect("fsync of the new file");
            written = 0;
        }
        let start = Instant::now();
        file.write_all(&buffer).expect("write");
        // On Linux, File::sync_data is fdatasync(2).
        file.sync_data().expect("fdatasync");
        let took = start.elapsed();
        latencies.push(took);
        busy += took;
        written += write_bytes as u64;
    }
    drop(file);
    std::fs::remove_file(&path).expect("removing the measurement file");
    latencies.sort();
    Measurement {
        name,
        write_bytes,
        latencies,
        busy,
    }
}

fn main() {
    let mut dir: PathBuf = std::env::temp_dir();
    let mut seconds = 5.0;
    let mut json = false;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--dir" => dir = PathBuf::from(args.next().expect("--dir takes a path")),
            "--seconds" => {
                seconds = args
                    .next()
                    .and_then(|value| value.parse().ok())
                    .expect("--seconds takes a number")
            }
            "--json" => json = true,
            // Cargo passes --bench to every bench target; nothing else is expected.
            _ => {}
        }
    }
    let scratch = tempfile::Builder::new()
        .prefix("cairn-disk-limits-")
        .tempdir_in(&dir)
        .unwrap_or_else(|e| panic!("cannot make a temp dir in {}: {e}", dir.display()));

    let results = [
        measure(
            "append-4k-fdatasync",
            scratch.path(),
            APPEND_BYTES,
            false,
            seconds,
        ),
        measure(
            "overwrite-4k-fdatasync",
            scratch.path(),
            APPEND_BYTES,
            true,
            seconds,
        ),
        measure(
            "sequential-1m-fdatasync",
            scratch.path(),
            SEQUENTIAL_BYTES,
            false,
            seconds,
        ),
    ];

    if json {
        let mut measurements = serde_json::Map::new();
        for result in &results {
            measurements.insert(result.name.to_string(), result.json());
        }
        let report = serde_json::json!({
            "dir": dir.display().to_string(),
            "seconds_per_measurement": seconds,
            "measurements": measurements,
        });
        println!(
            "{}",
            serde_json::to_string_pretty(&report).expect("JSON of the report")
        );
    } else {
        println!(
            "disk limits in {}, {seconds} s per measurement\n",
            dir.display()
        );
        println!("| measurement | write | writes/s | MiB/s | p50 ms | p99 ms | max ms |");
        println!("|---|---|---|---|---|---|---|");
        for result in &results {
            println!(
                "| {} | {} KiB | {:.0} | {:.1} | {:.3} | {:.3} | {:.3} |",
                result.name,
                result.write_bytes / 1024,
                result.per_second(),
                result.mib_per_second(),
                result.quantile_ms(0.5),
                result.quantile_ms(0.99),
                result.quantile_ms(1.0),
            );
        }
    }
}
