//! Durable append throughput, through the library and through HTTP.
//!
//! Run: `cargo bench --bench append` (add `-- --seconds 5` for longer runs, or
//! `-- --only library:64:100` for one point, e.g. under a profiler).
//!
//! For 1, 16 and 64 concurrent writers and batches of 1 and 100 events, each
//! writer appends as fast as its acknowledgements come back, for a fixed time.
//! Every figure is durable: an append is acknowledged only after fdatasync.
//! Printed per point: events/s, append latency p50/p99, fsyncs per
//! acknowledged append (below 1 means group commit shared fsyncs), and for
//! the library points where a group's time goes: the writer's mean per group
//! in staging it (checks, sealing, encoding: CPU) and in writing and
//! fdatasyncing its frames (the disk), from the store's histograms.
//!
//! The HTTP writers run in the same process as the daemon (the load generator
//! shares the machine's cores with it); each HTTP writer owns a cluster and
//! alternates replicas, so every apply appends exactly 1 or 100 PoolScaled events.

use std::path::PathBuf;
use std::time::{Duration, Instant};

/// The daemon's allocator (src/main.rs), so that the library figures are
/// those of the process that ships.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use cairn::config::Config;
use cairn::store::{AppendRequest, EventStore, ExpectedVersion};
use tokio_util::sync::CancellationToken;

#[path = "bench_event.rs"]
mod bench_event;
use bench_event::{new_event, payload, percentile_ms};

const WRITERS: [usize; 3] = [1, 16, 64];
const BATCHES: [usize; 2] = [1, 100];

struct Point {
    mode: &'static str,
    writers: usize,
    batch: usize,
    events: u64,
    appends: u64,
    elapsed: Duration,
    latencies: Vec<Duration>,
    fsyncs: u64,
    /// Library points only: the writer's mean milliseconds per group in
    /// staging (checks, sealing, encoding) and in the write and fdatasync of
    /// its frames, from the store's histograms.
    store_times: Option<StoreTimes>,
}

struct StoreTimes {
    writer_ms_per_group: f64,
    sync_ms_per_sync: f64,
}

impl StoreTimes {
    /// Mean milliseconds per observation since `before`.
    fn since(store: &dyn EventStore, before: &[(f64, u64); 2]) -> StoreTimes {
        let now = histogram_totals(store);
        let mean = |sum: f64, count: u64| sum * 1000.0 / count.max(1) as f64;
        StoreTimes {
            writer_ms_per_group: mean(now[0].0 - before[0].0, now[0].1 - before[0].1),
            sync_ms_per_sync: mean(now[1].0 - before[1].0, now[1].1 - before[1].1),
        }
    }
}

/// Sum and count of the writer's staging and its write-and-fdatasync histograms.
fn histogram_totals(store: &dyn EventStore) -> [(f64, u64); 2] {
    let metrics = store.metrics();
    [&metrics.apply_seconds, &metrics.write_seconds]
        .map(|histogram| (histogram.sum(), histogram.count()))
}

impl Point {
    fn row(&mut self) -> String {
        self.latencies.sort();
        let pick = |q: f64| percentile_ms(&self.latencies, q);
        let (writer_ms, sync_ms) = match &self.store_times {
            Some(times) => (
                format!("{:.3}", times.writer_ms_per_group),
                format!("{:.3}", times.sync_ms_per_sync),
            ),
            None => ("-".to_string(), "-".to_string()),
        };
        format!(
            "| {} | {} | {} | {:.0} | {:.0} | {:.2} | {:.2} | {:.3} | {writer_ms} | {sync_ms} |",
            self.mode,
            self.writers,
            self.batch,
            self.events as f64 / self.elapsed.as_secs_f64(),
            self.appends as f64 / self.elapsed.as_secs_f64(),
            pick(0.5),
            pick(0.99),
            self.fsyncs as f64 / self.appends.max(1) as f64,
        )
    }
}

/// A point's data directory. Data stays until the end of the run: on this
/// machine's ext4 (mounted with `discard`), deleting hundreds of megabytes
/// makes the next fsyncs wait for the discards.
fn bench_dir(name: &str) -> PathBuf {
    let dir = bench_base().join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("bench dir");
    dir
}

async fn library_point(writers: usize, batch: usize, seconds: f64) -> Point {
    let dir = bench_dir(&format!("lib-{writers}-{batch}"));
    let store = cairn::store::open(cairn::store::StoreConfig::new(&dir)).expect("open store");
    let deadline = Instant::now() + Duration::from_secs_f64(seconds);
    let started = Instant::now();
    let fsyncs_before = store.metrics().fsyncs.get();
    let totals_before = histogram_totals(&*store);
    let tasks: Vec<_> = (0..writers)
        .map(|writer| {
            let store = store.clone();
            tokio::spawn(async move {
                let payload = payload();
                let mut latencies = Vec::new();
                let mut sequence = 0u64;
                while Instant::now() < deadline {
                    let events = (0..batch).map(|_| new_event(payload.as_bytes())).collect();
                    let request = AppendRequest {
                        // Streams chosen among 1,000, as the suite's peers use.
                        stream: format!("bench/{}", (writer as u64 * 7919 + sequence) % 1000),
                        expected: ExpectedVersion::Any,
                        events,
                        idempotency: None,
                    };
                    sequence += 1;
                    let begun = Instant::now();
                    store.append(request).await.expect("append");
                    latencies.push(begun.elapsed());
                }
                latencies
            })
        })
        .collect();
    let mut latencies = Vec::new();
    for task in tasks {
        latencies.extend(task.await.expect("writer"));
    }
    let elapsed = started.elapsed();
    let appends = latencies.len() as u64;
    let fsyncs = store.metrics().fsyncs.get() - fsyncs_before;
    let store_times = Some(StoreTimes::since(&*store, &totals_before));
    store.close().await;
    Point {
        mode: "library",
        writers,
        batch,
        events: appends * batch as u64,
        appends,
        elapsed,
        latencies,
        fsyncs,
        store_times,
    }
}

fn manifest(name: &str, pools: usize, replicas: u32) -> String {
    let mut text = format!(
        "apiVersion: cairn/v1\nkind: Cluster\nmetadata: {{name: {name}}}\nspec:\n  provider: sim\n  region: eu-west-1\n  kubernetesVersion: 1.31.2\n  network:\n    cidr: 10.0.0.0/16\n    subnets: [{{name: a, cidr: 10.0.1.0/24}}]\n  pools:\n"
    );
    for pool in 0..pools {
        text.push_str(&format!(
            "  - {{name: p{pool}, role: worker, replicas: {replicas}, machineType: m5.large, image: ubuntu-24.04, subnets: [a]}}\n"
        ));
    }
    text
}

async fn http_point(writers: usize, batch: usize, seconds: f64) -> Point {
    let dir = bench_dir(&format!("http-{writers}-{batch}"));
    let config = Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        data_dir: dir,
        ..Config::default()
    };
    let shutdown = CancellationToken::new();
    let daemon = cairn::daemon::start(config, shutdown.clone())
        .await
        .expect("start daemon");
    let url = format!("http://{}/v1/apply", daemon.addr);
    let metrics_url = format!("http://{}/metrics", daemon.addr);
    let client = reqwest::Client::new();
    // Declare every writer's cluster first (not measured).
    for writer in 0..writers {
        let response = client
            .post(&url)
            .body(manifest(&format!("w{writer}"), batch, 1))
            .send()
            .await
            .expect("declare");
        assert!(response.status().is_success(), "{}", response.status());
    }
    let fsyncs_before = fsync_count(&client, &metrics_url).await;
    let deadline = Instant::now() + Duration::from_secs_f64(seconds);
    let started = Instant::now();
    let tasks: Vec<_> = (0..writers)
        .map(|writer| {
            let client = client.clone();
            let url = url.clone();
            let bodies = [
                manifest(&format!("w{writer}"), batch, 2),
                manifest(&format!("w{writer}"), batch, 1),
            ];
            tokio::spawn(async move {
                let mut latencies = Vec::new();
                let mut turn = 0;
                while Instant::now() < deadline {
                    let begun = Instant::now();
                    let response = client
                        .post(&url)
                        .body(bodies[turn % 2].clone())
                        .send()
                        .await
                        .expect("apply");
                    assert!(response.status().is_success(), "{}", response.status());
                    response.bytes().await.expect("body");
                    latencies.push(begun.elapsed());
                    turn += 1;
                }
                latencies
            })
        })
        .collect();
    let mut latencies = Vec::new();
    for task in tasks {
        latencies.extend(task.await.expect("writer"));
    }
    let elapsed = started.elapsed();
    let fsyncs = fsync_count(&client, &metrics_url).await - fsyncs_before;
    shutdown.cancel();
    daemon.finished.await.expect("daemon stops");
    let appends = latencies.len() as u64;
    Point {
        mode: "http",
        writers,
        batch,
        events: appends * batch as u64,
        appends,
        elapsed,
        latencies,
        fsyncs,
        store_times: None,
    }
}

async fn fsync_count(client: &reqwest::Client, url: &str) -> u64 {
    let text = client
        .get(url)
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("metrics body");
    text.lines()
        .find_map(|line| line.strip_prefix("cairn_fsyncs_total "))
        .and_then(|value| value.trim().parse().ok())
        .expect("cairn_fsyncs_total in /metrics")
}

fn bench_base() -> PathBuf {
    std::env::var_os("CAIRN_BENCH_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("target/bench-data"))
}

/// Runs one point in this process and prints its row.
fn run_point(point: &str, seconds: f64) {
    let parts: Vec<&str> = point.split(':').collect();
    let [mode, writers, batch] = parts[..] else {
        panic!("--only takes mode:writers:batch, e.g. library:64:100");
    };
    let writers: usize = writers.parse().expect("writers is a number");
    let batch: usize = batch.parse().expect("batch is a number");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let mut point = runtime.block_on(async {
        match mode {
            "library" => library_point(writers, batch, seconds).await,
            "http" => http_point(writers, batch, seconds).await,
            other => panic!("unknown mode {other:?}: library or http"),
        }
    });
    println!("{}", point.row());
}

fn main() {
    let mut seconds = 3.0;
    let mut only: Option<String> = None;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--seconds" => {
                seconds = args
                    .next()
                    .and_then(|value| value.parse().ok())
                    .expect("--seconds takes a number")
            }
            "--only" => only = Some(args.next().expect("--only takes mode:writers:batch")),
            _ => {}
        }
    }
    if let Some(point) = only {
        run_point(&point, seconds);
        return;
    }
    println!(
        "durable appends, {seconds} s per point, data under CAIRN_BENCH_DIR or target/bench-data"
    );
    println!();
    println!("| mode | writers | events/append | events/s | appends/s | p50 ms | p99 ms | fsyncs/append | staging ms/group | write+sync ms/group |");
    println!("|---|---|---|---|---|---|---|---|---|---|");
    // Each point runs in a fresh process of this program, so that no point
    // inherits another's heap, threads or runtime (in one process, the first
    // HTTP point after the library points ran at a fifth of its speed alone).
    let this_program = std::env::current_exe().expect("the bench's own path");
    for mode in ["library", "http"] {
        for batch in BATCHES {
            for writers in WRITERS {
                // Start each point with nothing dirty in the page cache.
                let _ = std::process::Command::new("sync").status();
                let status = std::process::Command::new(&this_program)
                    .args(["--only", &format!("{mode}:{writers}:{batch}")])
                    .args(["--seconds", &seconds.to_string()])
                    .status()
                    .expect("the bench runs itself");
                assert!(status.success(), "point {mode}:{writers}:{batch} failed");
            }
        }
    }
    let _ = std::fs::remove_dir_all(bench_base());
}
