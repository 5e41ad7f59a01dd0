//! Durable events/s of Cairn over HTTP beside its peers, etcd and PostgreSQL
//! (issue 6): one point per target, N concurrent writers, single events or
//! batches, for a fixed time.
//!
//! Run: `cargo bench --bench peers -- --writers 64 --batch 1 --seconds 5`
//! (defaults 64, 1, 5; `--json` prints a JSON array instead of the markdown
//! table; `--targets cairn-http,etcd,postgres` picks targets).
//!
//! - cairn-http: the daemon runs in the measuring process, as in
//!   `tools/bench_append.rs`; each writer declares its own cluster with `batch`
//!   pools (not measured), then applies it with every pool's replicas
//!   alternating 2 and 1, so each apply appends exactly `batch` PoolScaled
//!   events, fsynced before the answer.
//! - etcd: started with `tools/peers.sh start etcd DIR` (a fresh member, default
//!   settings, so its WAL is fsynced); each request is one `POST /v3/kv/txn`
//!   through the JSON gateway that, per event, compares that the key
//!   `events/<stream>/<version>` does not exist yet (create_revision == 0) and
//!   puts the ~250-byte JSON payload. A batch is one txn of `batch` compares
//!   and puts.
//! - postgres: started with `tools/peers.sh start postgres DIR` (fsync and
//!   synchronous_commit on); one `tokio-postgres` connection per writer; a
//!   prepared `INSERT INTO events (id, stream, version, type, payload)` per
//!   event in autocommit, or a batch as BEGIN, `batch` pipelined inserts,
//!   COMMIT.
//!
//! Cairn and etcd go through the same code path: one `reqwest::Client` per
//! point and one loop (`post_loop`) that posts a JSON body and waits for a 2xx
//! answer and its whole body. Streams are chosen among 1,000; writer w owns
//! the streams whose index % writers == w and keeps their version counters, so
//! no target pays for conflicts.
//!
//! Each target runs in a fresh process of this program (as bench_append does
//! per point); the parent starts and stops the peer servers, so a failed point
//! still stops its server.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use base64::Engine;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

const STREAMS: usize = 1000;
const TARGETS: [&str; 3] = ["cairn-http", "etcd", "postgres"];

#[derive(Clone, Debug, Serialize, Deserialize)]
struct PointResult {
    target: String,
    writers: usize,
    batch: usize,
    events: u64,
    requests: u64,
    seconds: f64,
    events_per_s: f64,
    p50_ms: f64,
    p99_ms: f64,
}

fn summarize(
    target: &str,
    writers: usize,
    batch: usize,
    elapsed: Duration,
    mut latencies: Vec<Duration>,
) -> PointResult {
    latencies.sort();
    let pick = |q: f64| {
        let index = ((latencies.len() as f64 - 1.0) * q).round() as usize;
        latencies
            .get(index)
            .map_or(0.0, |d| d.as_secs_f64() * 1000.0)
    };
    let requests = latencies.len() as u64;
    let events = requests * batch as u64;
    PointResult {
        target: target.to_string(),
        writers,
        batch,
        events,
        requests,
        seconds: elapsed.as_secs_f64(),
        events_per_s: events as f64 / elapsed.as_secs_f64(),
        p50_ms: pick(0.5),
        p99_ms: pick(0.99),
    }
}

/// About 250 bytes of JSON, the same as bench_append's events carry.
fn payload() -> String {
    format!(
        "{{\"pool\":\"workers\",\"from\":3,\"to\":5,\"reason\":\"{}\"}}",
        "x".repeat(200)
    )
}

/// The streams writer `writer` of `writers` owns, with their next versions.
struct OwnedStreams {
    indexes: Vec<usize>,
    versions: Vec<u64>,
    turn: usize,
}

impl OwnedStreams {
    fn new(writer: usize, writers: usize) -> Self {
        let indexes: Vec<usize> = (0..STREAMS).filter(|i| i % writers == writer).collect();
        let versions = vec![0; indexes.len()];
        OwnedStreams {
            indexes,
            versions,
            turn: 0,
        }
    }

    /// The next (stream, version) of this writer: its streams in turn.
    fn next(&mut self) -> (String, u64) {
        let slot = self.turn % self.indexes.len();
        self.turn += 1;
        self.versions[slot] += 1;
        (
            format!("cluster-{:03}", self.indexes[slot]),
            self.versions[slot],
        )
    }
}

/// The one load-generator loop of the HTTP targets: until `deadline`, post
/// the JSON body `next_body` gives to `url`, wait for a 2xx status and the
/// whole answer, check it with `accept`, and record the latency.
async fn post_loop(
    client: reqwest::Client,
    url: String,
    deadline: Instant,
    mut next_body: impl FnMut() -> Vec<u8>,
    accept: fn(&[u8]) -> bool,
) -> Result<Vec<Duration>> {
    let mut latencies = Vec::new();
    while Instant::now() < deadline {
        let body = next_body();
        let begun = Instant::now();
        let response = client
            .post(&url)
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .with_context(|| format!("POST {url}"))?;
        let status = response.status();
        let answer = response.bytes().await.context("answer body")?;
        if !status.is_success() || !accept(&answer) {
            bail!(
                "POST {url}: {status}: {}",
                String::from_utf8_lossy(&answer[..answer.len().min(500)])
            );
        }
        latencies.push(begun.elapsed());
    }
    Ok(latencies)
}

/// Runs `writers` writers (built by `writer(index)`) and gathers latencies.
async fn run_writers<F, Fut>(writers: usize, mut writer: F) -> Result<(Duration, Vec<Duration>)>
where
    F: FnMut(usize) -> Fut,
    Fut: std::future::Future<Output = Result<Vec<Duration>>> + Send + 'static,
{
    let started = Instant::now();
    let tasks: Vec<_> = (0..writers).map(|w| tokio::spawn(writer(w))).collect();
    let mut latencies = Vec::new();
    for task in tasks {
        latencies.extend(task.await.context("writer task")??);
    }
    Ok((started.elapsed(), latencies))
}

fn http_client(writers: usize) -> Result<reqwest::Client> {
    Ok(reqwest::Client::builder()
        .pool_max_idle_per_host(writers.max(1))
        .build()?)
}

fn cluster_manifest(name: &str, pools: usize, replicas: u32) -> Vec<u8> {
    let pools: Vec<_> = (0..pools)
        .map(|pool| {
            serde_json::json!({
                "name": format!("p{pool}"), "role": "worker", "replicas": replicas,
                "machineType": "m5.large", "image": "ubuntu-24.04", "subnets": ["a"],
            })
        })
        .collect();
    serde_json::to_vec(&serde_json::json!({
        "apiVersion": "cairn/v1",
        "kind": "Cluster",
        "metadata": {"name": name},
        "spec": {
            "provider": "sim",
            "region": "eu-west-1",
            "kubernetesVersion": "1.31.2",
            "network": {"cidr": "10.0.0.0/16", "subnets": [{"name": "a", "cidr": "10.0.1.0/24"}]},
            "pools": pools,
        },
    }))
    .expect("manifest")
}

async fn cairn_http_point(
    writers: usize,
    batch: usize,
    seconds: f64,
    dir: &Path,
) -> Result<PointResult> {
    let config = cairn::config::Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        data_dir: dir.to_path_buf(),
        ..cairn::config::Config::default()
    };
    let shutdown = CancellationToken::new();
    let daemon = cairn::daemon::start(config, shutdown.clone())
        .await
        .context("start daemon")?;
    let url = format!("http://{}/v1/apply", daemon.addr);
    let client = http_client(writers)?;
    let measured = async {
        // Declare every writer's cluster first (not measured).
        for writer in 0..writers {
            let body = cluster_manifest(&format!("w{writer}"), batch, 1);
            let answer = client
                .post(&url)
                .header("content-type", "application/json")
                .body(body)
                .send()
                .await?;
            if !answer.status().is_success() {
                bail!("declare w{writer}: {}", answer.status());
            }
        }
        let deadline = Instant::now() + Duration::from_secs_f64(seconds);
        run_writers(writers, |writer| {
            let bodies = [
                cluster_manifest(&format!("w{writer}"), batch, 2),
                cluster_manifest(&format!("w{writer}"), batch, 1),
            ];
            let mut turn = 0;
            post_loop(
                client.clone(),
                url.clone(),
                deadline,
                move || {
                    turn += 1;
                    bodies[turn % 2].clone()
                },
                |_| true,
            )
        })
        .await
    }
    .await;
    shutdown.cancel();
    daemon.finished.await.context("daemon stops")?;
    let (elapsed, latencies) = measured?;
    Ok(summarize("cairn-http", writers, batch, elapsed, latencies))
}

fn etcd_txn(streams: &mut OwnedStreams, batch: usize, value: &str) -> Vec<u8> {
    let b64 = base64::engine::general_purpose::STANDARD;
    let value = b64.encode(value);
    let mut compare = Vec::with_capacity(batch);
    let mut success = Vec::with_capacity(batch);
    for _ in 0..batch {
        let (stream, version) = streams.next();
        let key = b64.encode(format!("events/{stream}/{version:020}"));
        compare.push(serde_json::json!({
            "key": key, "result": "EQUAL", "target": "CREATE", "create_revision": "0",
        }));
        success.push(serde_json::json!({"request_put": {"key": key, "value": value}}));
    }
    serde_json::to_vec(&serde_json::json!({"compare": compare, "success": success}))
        .expect("txn body")
}

/// A txn whose compares failed answers 200 without `"succeeded":true`.
fn etcd_succeeded(answer: &[u8]) -> bool {
    serde_json::from_slice::<serde_json::Value>(answer)
        .ok()
        .and_then(|v| v.get("succeeded").and_then(|s| s.as_bool()))
        .unwrap_or(false)
}

async fn etcd_point(writers: usize, batch: usize, seconds: f64, port: u16) -> Result<PointResult> {
    let url = format!("http://127.0.0.1:{port}/v3/kv/txn");
    let client = http_client(writers)?;
    let deadline = Instant::now() + Duration::from_secs_f64(seconds);
    let (elapsed, latencies) = run_writers(writers, |writer| {
        let mut streams = OwnedStreams::new(writer, writers);
        let value = payload();
        post_loop(
            client.clone(),
            url.clone(),
            deadline,
            move || etcd_txn(&mut streams, batch, &value),
            etcd_succeeded,
        )
    })
    .await?;
    Ok(summarize("etcd", writers, batch, elapsed, latencies))
}

async fn postgres_writer(
    port: u16,
    writer: usize,
    writers: usize,
    batch: usize,
    deadline: Instant,
) -> Result<Vec<Duration>> {
    let (mut client, connection) = tokio_postgres::connect(
        &format!("host=127.0.0.1 port={port} user=postgres dbname=postgres"),
        tokio_postgres::NoTls,
    )
    .await
    .context("connect to PostgreSQL")?;
    let connection = tokio::spawn(connection);
    let insert = client
        .prepare(
            "INSERT INTO events (id, stream, version, type, payload) VALUES ($1, $2, $3, $4, $5)",
        )
        .await?;
    let payload: serde_json::Value = serde_json::from_str(&payload())?;
    let event_type = "BenchEvent".to_string();
    let mut streams = OwnedStreams::new(writer, writers);
    let mut latencies = Vec::new();
    while Instant::now() < deadline {
        let rows: Vec<(Uuid, String, i64)> = (0..batch)
            .map(|_| {
                let (stream, version) = streams.next();
                (Uuid::now_v7(), stream, version as i64)
            })
            .collect();
        let begun = Instant::now();
        if batch == 1 {
            let (id, stream, version) = &rows[0];
            client
                .execute(&insert, &[id, stream, version, &event_type, &payload])
                .await?;
        } else {
            let transaction = client.transaction().await?;
            let (transaction_ref, insert, event_type, payload) =
                (&transaction, &insert, &event_type, &payload);
            let inserts = rows.iter().map(|(id, stream, version)| async move {
                transaction_ref
                    .execute(insert, &[id, stream, version, event_type, payload])
                    .await
            });
            futures_util::future::try_join_all(inserts).await?;
            transaction.commit().await?;
        }
        latencies.push(begun.elapsed());
    }
    drop(client);
    let _ = connection.await;
    Ok(latencies)
}

async fn postgres_point(
    writers: usize,
    batch: usize,
    seconds: f64,
    port: u16,
) -> Result<PointResult> {
    let deadline = Instant::now() + Duration::from_secs_f64(seconds);
    let (elapsed, latencies) = run_writers(writers, |writer| {
        postgres_writer(port, writer, writers, batch, deadline)
    })
    .await?;
    Ok(summarize("postgres", writers, batch, elapsed, latencies))
}

/// A peer server started with tools/peers.sh; stopped when dropped, so a
/// failed point (an error or a panic in the parent) still stops it.
struct Peer {
    kind: &'static str,
    dir: PathBuf,
    port: u16,
    _temp: tempfile::TempDir,
}

fn peers_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tools/peers.sh")
}

impl Peer {
    fn start(kind: &'static str) -> Result<Peer> {
        let temp = tempfile::Builder::new().prefix("cairn-peers-").tempdir()?;
        // As root, PostgreSQL runs as the user postgres, which must reach DIR.
        std::fs::set_permissions(
            temp.path(),
            std::os::unix::fs::PermissionsExt::from_mode(0o755),
        )?;
        let dir = temp.path().join(kind);
        let output = Command::new(peers_script())
            .args(["start", kind])
            .arg(&dir)
            .stderr(std::process::Stdio::inherit())
            .output()
            .context("run tools/peers.sh")?;
        let stdout = String::from_utf8_lossy(&output.stdout);
        let port = stdout.lines().last().and_then(|l| l.trim().parse().ok());
        let peer_dir = dir.clone();
        let stop_anyway = || {
            let _ = Command::new(peers_script())
                .args(["stop", kind])
                .arg(&peer_dir)
                .status();
        };
        match (output.status.success(), port) {
            (true, Some(port)) => Ok(Peer {
                kind,
                dir,
                port,
                _temp: temp,
            }),
            _ => {
                stop_anyway();
                bail!("tools/peers.sh start {kind} failed: {stdout}")
            }
        }
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        let status = Command::new(peers_script())
            .args(["stop", self.kind])
            .arg(&self.dir)
            .stdout(std::process::Stdio::null())
            .status();
        if !matches!(status, Ok(s) if s.success()) {
            eprintln!(
                "bench_peers: tools/peers.sh stop {} {} failed",
                self.kind,
                self.dir.display()
            );
        }
    }
}

struct Options {
    writers: usize,
    batch: usize,
    seconds: f64,
    json: bool,
    targets: Vec<String>,
    /// In a child: the target to measure and its port (0 for cairn-http).
    only: Option<(String, u16)>,
}

fn options() -> Result<Options> {
    let mut options = Options {
        writers: 64,
        batch: 1,
        seconds: 5.0,
        json: false,
        targets: TARGETS.iter().map(|t| t.to_string()).collect(),
        only: None,
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = || args.next().with_context(|| format!("{arg} takes a value"));
        match arg.as_str() {
            "--writers" => options.writers = value()?.parse()?,
            "--batch" => options.batch = value()?.parse()?,
            "--seconds" => options.seconds = value()?.parse()?,
            "--targets" => options.targets = value()?.split(',').map(str::to_string).collect(),
            "--only" => {
                let point = value()?;
                let (target, port) = point.split_once(':').context("--only takes TARGET:PORT")?;
                options.only = Some((target.to_string(), port.parse()?));
            }
            "--json" => options.json = true,
            // cargo bench passes --bench to harness = false benches.
            "--bench" => {}
            other => bail!("unknown argument {other:?}"),
        }
    }
    if options.writers == 0 || options.writers > STREAMS || options.batch == 0 {
        bail!("--writers takes 1 to {STREAMS}, --batch at least 1");
    }
    for target in &options.targets {
        if !TARGETS.contains(&target.as_str()) {
            bail!("unknown target {target:?}: {}", TARGETS.join(", "));
        }
    }
    Ok(options)
}

/// In a child process: measures one target and prints its result as JSON.
fn run_child(options: &Options, target: &str, port: u16) -> Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let (writers, batch, seconds) = (options.writers, options.batch, options.seconds);
    let result = runtime.block_on(async {
        match target {
            "cairn-http" => {
                let dir = tempfile::Builder::new().prefix("cairn-bench-").tempdir()?;
                cairn_http_point(writers, batch, seconds, dir.path()).await
            }
            "etcd" => etcd_point(writers, batch, seconds, port).await,
            "postgres" => postgres_point(writers, batch, seconds, port).await,
            other => bail!("unknown target {other:?}"),
        }
    })?;
    println!("{}", serde_json::to_string(&result)?);
    Ok(())
}

fn run_target(options: &Options, target: &str) -> Result<PointResult> {
    let peer = match target {
        "etcd" => Some(Peer::start("etcd")?),
        "postgres" => Some(Peer::start("postgres")?),
        _ => None,
    };
    let port = peer.as_ref().map_or(0, |p| p.port);
    // Start each point with nothing dirty in the page cache.
    let _ = Command::new("sync").status();
    let output = Command::new(std::env::current_exe()?)
        .args(["--only", &format!("{target}:{port}")])
        .args(["--writers", &options.writers.to_string()])
        .args(["--batch", &options.batch.to_string()])
        .args(["--seconds", &options.seconds.to_string()])
        .stderr(std::process::Stdio::inherit())
        .output()
        .context("the bench runs itself")?;
    drop(peer);
    if !output.status.success() {
        bail!("point {target} failed ({})", output.status);
    }
    let stdout = String::from_utf8_lossy(&output.stdout);
    let line = stdout.lines().last().context("no result from the point")?;
    Ok(serde_json::from_str(line)?)
}

fn main() -> Result<()> {
    let options = options()?;
    if let Some((target, port)) = &options.only {
        return run_child(&options, target, *port);
    }
    let mut results = Vec::new();
    for target in &options.targets {
        results.push(run_target(&options, target)?);
    }
    if options.json {
        println!("{}", serde_json::to_string_pretty(&results)?);
        return Ok(());
    }
    println!(
        "durable events, {} writers, batch {}, {} s per target",
        options.writers, options.batch, options.seconds
    );
    println!();
    println!("| target | writers | batch | events/s | p50 ms | p99 ms |");
    println!("|---|---|---|---|---|---|");
    for r in &results {
        println!(
            "| {} | {} | {} | {:.0} | {:.2} | {:.2} |",
            r.target, r.writers, r.batch, r.events_per_s, r.p50_ms, r.p99_ms
        );
    }
    let cairn = results.iter().find(|r| r.target == "cairn-http");
    let best_peer = results
        .iter()
        .filter(|r| r.target != "cairn-http")
        .max_by(|a, b| a.events_per_s.total_cmp(&b.events_per_s));
    if let (Some(cairn), Some(peer)) = (cairn, best_peer) {
        println!();
        println!(
            "cairn-http / better peer ({}): {:.2}x",
            peer.target,
            cairn.events_per_s / peer.events_per_s
        );
    }
    Ok(())
}
