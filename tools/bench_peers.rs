//! Durable events/s of Cairn beside its peers, etcd and PostgreSQL (issue 6):
//! for every target, every writer count and every batch size given, N
//! concurrent writers append single events or batches for a fixed time, and
//! the bench reports events/s, p50 and p99 latency, the bytes of payload each
//! event carries and the CPU time the measuring process spent.
//!
//! Run: `cargo bench --bench peers -- --writers 1,16,64 --batch 1,100
//! --seconds 3` (defaults 64, 1, 5; `--json` prints a JSON array instead of
//! the markdown table; `--json-out FILE` also writes it to FILE;
//! `--targets cairn-http,cairn-lib,etcd,postgres,null-http` picks targets, by
//! default all but null-http; `--peers-dir DIR` puts the peer servers' data
//! under DIR instead of a temp dir, so whoever runs the bench can stop them
//! with `tools/peers.sh stop KIND DIR/KIND` if the bench itself is killed).
//!
//! - cairn-http: the daemon is the real `cairn` binary in a process of its own
//!   (`serve`, reconcilers off, a temporary data directory), as the peers run,
//!   so the daemon's CPU time (read from `/proc/PID/stat` before and after the
//!   point) is apart from the load generator's; each writer declares its own cluster with `batch`
//!   pools (not measured), then applies it with every pool's replicas
//!   alternating 2 and 1, so each apply appends exactly `batch` PoolScaled
//!   events, fsynced before the answer. Every apply carries an
//!   `X-Cairn-Reason` header sized so that an event's data plus its reason is
//!   about 250 bytes, like the peers' payload; the bench reads one stored event
//!   back through `GET /v1/events` to report the actual size.
//! - cairn-lib: `EventStore::append` on `store::open` directly, as `tools/bench_append.rs` does:
//!   the same ~250-byte JSON payload, one stream per append chosen among 1,000
//!   (a batch is `batch` events on one stream), fsynced before it returns.
//! - etcd: started with `tools/peers.sh start etcd DIR` (a fresh member, default
//!   settings, so its WAL is fsynced); a put per event through the JSON
//!   gateway, as the issue names it: `POST /v3/kv/put` of the ~250-byte JSON
//!   payload under `events/<stream>/<version>`. The gateway has no multi-put,
//!   so a batch is one `POST /v3/kv/txn` of `batch` puts.
//! - etcd-txn: the same member, with the guard the other targets have: per
//!   event, the txn compares that the key does not exist yet
//!   (create_revision == 0) before it puts, so a duplicate version is refused
//!   as Cairn's expected version and PostgreSQL's unique (stream, version)
//!   refuse it. A batch is one txn of `batch` compares and puts.
//! - postgres: started with `tools/peers.sh start postgres DIR` (fsync and
//!   synchronous_commit on); one `tokio-postgres` connection per writer; a
//!   prepared `INSERT INTO events (id, stream, version, type, payload)` per
//!   event in autocommit, or a batch as BEGIN, `batch` pipelined inserts,
//!   COMMIT.
//! - null-http: the load generator's own cost. A server in the parent process
//!   answers every request with 200 and `{}` at once; the measuring child runs
//!   the same loop as for Cairn and etcd, so its requests/s is the ceiling of
//!   the generator and its CPU time per request (getrusage of the child) is
//!   what the generator takes from the machine's cores at the other targets.
//!
//! Cairn and etcd go through the same code path: one `reqwest::Client` per
//! point and one loop (`post_loop`) that posts a JSON body and waits for a 2xx
//! answer and its whole body. Streams are chosen among 1,000; writer w owns
//! the streams whose index % writers == w and keeps their version counters, so
//! no target pays for conflicts. Each point names its streams with its own
//! prefix, so a peer server started once serves every point of the matrix
//! without version conflicts.
//!
//! Each point runs in a fresh process of this program (as bench_append does);
//! the parent starts each peer server once for all its points, runs `sync`
//! before each point, and stops the servers at the end, also when a point
//! fails (a failed point is reported and the others still run; the exit
//! status is then non-zero).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// The daemon's allocator (src/main.rs), so that the library figures are
/// those of the process that ships.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use anyhow::{bail, Context, Result};
use base64::Engine;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

#[path = "bench_event.rs"]
mod bench_event;
use bench_event::{new_event, payload, percentile_ms};

const STREAMS: usize = 1000;
const TARGETS: [&str; 6] = [
    "cairn-http",
    "cairn-lib",
    "etcd",
    "etcd-txn",
    "postgres",
    "null-http",
];
/// The targets run when `--targets` is not given.
const DEFAULT_TARGETS: [&str; 4] = ["cairn-http", "cairn-lib", "etcd", "postgres"];
/// PoolScaled's data for the bench's pools, e.g. `{"pool":"p0","from":1,"to":2}`,
/// is about 30 bytes; the reason brings an event to about 250.
const CAIRN_REASON_BYTES: usize = 220;

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
    /// The bytes of payload one event carries: the JSON value for the peers
    /// and the library, the event's data plus its reason for cairn-http.
    payload_bytes: usize,
    /// For cairn-http: one stored event as `GET /v1/events` shows it (with
    /// its envelope: ids, actor, cause, hashes), in bytes of JSON.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    event_json_bytes: Option<usize>,
    /// User plus system CPU time of the measuring process during the point
    /// (for cairn-http and cairn-lib this includes the store or daemon).
    cpu_seconds: f64,
    /// CPU time per request, in microseconds.
    cpu_us_per_request: f64,
    /// CPU time over wall time: how many cores the measuring process took.
    cpu_cores: f64,
    /// For cairn-http: the daemon process's CPU time during the point, and
    /// per request and per event, in microseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    server_cpu_seconds: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    server_cpu_us_per_request: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    server_cpu_us_per_event: Option<f64>,
}

/// User plus system CPU time this process has used so far.
fn process_cpu() -> Duration {
    // SAFETY: getrusage only writes into the struct it is given.
    let usage = unsafe {
        let mut usage = std::mem::zeroed::<libc::rusage>();
        libc::getrusage(libc::RUSAGE_SELF, &mut usage);
        usage
    };
    let time = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    time(usage.ru_utime) + time(usage.ru_stime)
}

/// The CPU time (user and system) a process has used so far, every thread's,
/// ended ones included, from `/proc/PID/stat` (in clock ticks: 10 ms apiece
/// where the kernel counts 100 a second, a fraction of a percent of a point).
fn other_process_cpu(pid: u32) -> Result<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("read /proc/{pid}/stat"))?;
    // The fields after the command, which is in parentheses and may hold spaces.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .context("a stat line has the command in parentheses")?
        .1
        .split_whitespace()
        .collect();
    // utime and stime are fields 14 and 15 of the line, 12 and 13 after ')'.
    let ticks = |index: usize| -> Result<u64> {
        fields
            .get(index)
            .context("a stat line has utime and stime")?
            .parse()
            .context("utime and stime are numbers")
    };
    // SAFETY: sysconf reads a constant of the system.
    let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    Ok(Duration::from_secs_f64(
        (ticks(11)? + ticks(12)?) as f64 / per_second,
    ))
}

/// What a point's writers did: wall time, CPU time and each request's latency.
struct Measured {
    elapsed: Duration,
    /// The measuring process's CPU time: the load generator's, and for
    /// cairn-lib the store's too.
    cpu: Duration,
    /// The server's CPU time, where it runs as a process whose id the bench
    /// knows (cairn-http).
    server_cpu: Option<Duration>,
    latencies: Vec<Duration>,
}

fn summarize(
    target: &str,
    writers: usize,
    batch: usize,
    payload_bytes: usize,
    measured: Measured,
) -> PointResult {
    let Measured {
        elapsed,
        cpu,
        server_cpu,
        mut latencies,
    } = measured;
    latencies.sort();
    let pick = |q: f64| percentile_ms(&latencies, q);
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
        payload_bytes,
        event_json_bytes: None,
        cpu_seconds: cpu.as_secs_f64(),
        cpu_us_per_request: cpu.as_secs_f64() * 1e6 / requests.max(1) as f64,
        cpu_cores: cpu.as_secs_f64() / elapsed.as_secs_f64(),
        server_cpu_seconds: server_cpu.map(|cpu| cpu.as_secs_f64()),
        server_cpu_us_per_request: server_cpu
            .map(|cpu| cpu.as_secs_f64() * 1e6 / requests.max(1) as f64),
        server_cpu_us_per_event: server_cpu
            .map(|cpu| cpu.as_secs_f64() * 1e6 / events.max(1) as f64),
    }
}

/// About 250 bytes of JSON, the same as bench_append's events carry.
/// The streams writer `writer` of `writers` owns, with their next versions.
struct OwnedStreams {
    /// The point's prefix of every stream name, e.g. `w64b1-`.
    prefix: String,
    indexes: Vec<usize>,
    versions: Vec<u64>,
    turn: usize,
}

impl OwnedStreams {
    fn new(prefix: &str, writer: usize, writers: usize) -> Self {
        let indexes: Vec<usize> = (0..STREAMS).filter(|i| i % writers == writer).collect();
        let versions = vec![0; indexes.len()];
        OwnedStreams {
            prefix: prefix.to_string(),
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
            format!("{}cluster-{:03}", self.prefix, self.indexes[slot]),
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
    headers: reqwest::header::HeaderMap,
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
            .headers(headers.clone())
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

/// Runs `writers` writers (built by `writer(index)`) and gathers latencies,
/// the wall time and the process's CPU time over the run.
async fn run_writers<F, Fut>(writers: usize, writer: F) -> Result<Measured>
where
    F: FnMut(usize) -> Fut,
    Fut: std::future::Future<Output = Result<Vec<Duration>>> + Send + 'static,
{
    run_writers_against(None, writers, writer).await
}

/// [`run_writers`], also reading the CPU time of the server process `server`
/// over the same span.
async fn run_writers_against<F, Fut>(
    server: Option<u32>,
    writers: usize,
    mut writer: F,
) -> Result<Measured>
where
    F: FnMut(usize) -> Fut,
    Fut: std::future::Future<Output = Result<Vec<Duration>>> + Send + 'static,
{
    let server_before = server.map(other_process_cpu).transpose()?;
    let cpu_before = process_cpu();
    let started = Instant::now();
    let tasks: Vec<_> = (0..writers).map(|w| tokio::spawn(writer(w))).collect();
    let mut latencies = Vec::new();
    for task in tasks {
        latencies.extend(task.await.context("writer task")??);
    }
    let elapsed = started.elapsed();
    let cpu = process_cpu().saturating_sub(cpu_before);
    let server_cpu = match (server, server_before) {
        (Some(pid), Some(before)) => Some(other_process_cpu(pid)?.saturating_sub(before)),
        _ => None,
    };
    Ok(Measured {
        elapsed,
        cpu,
        server_cpu,
        latencies,
    })
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
    // Reconcilers off (`[reconcile] enabled = false`): the peers only store
    // events, and with the sim reconciler on, every scale change also starts
    // provider calls and their events on the same 2 cores.
    let daemon = DaemonProcess::start(dir)?;
    let url = format!("http://{}/v1/apply", daemon.address);
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
        let mut headers = reqwest::header::HeaderMap::new();
        headers.insert("x-cairn-reason", cairn_reason().parse()?);
        let deadline = Instant::now() + Duration::from_secs_f64(seconds);
        let measured = run_writers_against(Some(daemon.pid), writers, |writer| {
            let bodies = [
                cluster_manifest(&format!("w{writer}"), batch, 2),
                cluster_manifest(&format!("w{writer}"), batch, 1),
            ];
            let mut turn = 0;
            post_loop(
                client.clone(),
                url.clone(),
                headers.clone(),
                deadline,
                // The cluster was declared with replicas 1: start at 2, so
                // every apply changes every pool and appends `batch` events.
                move || {
                    let body = bodies[turn % 2].clone();
                    turn += 1;
                    body
                },
                |_| true,
            )
        })
        .await?;
        let sizes = stored_event_sizes(&client, &daemon.address).await?;
        Ok((measured, sizes))
    }
    .await;
    daemon.stop()?;
    let (measured, (payload_bytes, event_json_bytes)) = measured?;
    let mut result = summarize("cairn-http", writers, batch, payload_bytes, measured);
    result.event_json_bytes = Some(event_json_bytes);
    Ok(result)
}

/// The release `cairn` binary serving on a loopback port: killed when
/// dropped, so a failed point does not leave it running.
struct DaemonProcess {
    child: std::process::Child,
    pid: u32,
    /// `127.0.0.1:PORT`.
    address: String,
}

impl DaemonProcess {
    /// Starts `cairn serve` on 127.0.0.1:0 with its data in `dir`, reconcilers
    /// off, and waits until it answers `/readyz`.
    fn start(dir: &Path) -> Result<DaemonProcess> {
        use std::io::BufRead;
        let config = dir.with_extension("toml");
        std::fs::write(&config, "[reconcile]\nenabled = false\n")?;
        let mut child = Command::new(env!("CARGO_BIN_EXE_cairn"))
            .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(dir)
            .arg("--config")
            .arg(&config)
            .env("CAIRN_LOG", "error")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::inherit())
            .spawn()
            .context("start the cairn binary")?;
        let pid = child.id();
        let mut stdout = std::io::BufReader::new(child.stdout.take().context("piped stdout")?);
        let mut line = String::new();
        stdout
            .read_line(&mut line)
            .context("the daemon's first line")?;
        // Keep reading, so the daemon never blocks on a full pipe.
        std::thread::spawn(move || std::io::copy(&mut stdout, &mut std::io::sink()));
        let daemon = DaemonProcess {
            child,
            pid,
            address: match line.trim().strip_prefix("cairn listening on http://") {
                Some(address) => address.to_string(),
                None => bail!("the daemon's first line is not its address: {line:?}"),
            },
        };
        let started = Instant::now();
        loop {
            let ready = std::net::TcpStream::connect(&daemon.address).and_then(|mut stream| {
                use std::io::{Read, Write};
                stream.write_all(
                    b"GET /readyz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n",
                )?;
                let mut answer = String::new();
                stream.read_to_string(&mut answer)?;
                Ok(answer.starts_with("HTTP/1.1 200"))
            });
            if ready.unwrap_or(false) {
                return Ok(daemon);
            }
            if started.elapsed() > Duration::from_secs(60) {
                bail!("the daemon was not ready within 60 s");
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Stops the daemon as Ctrl-C would and waits for it to exit.
    fn stop(mut self) -> Result<()> {
        // SAFETY: kill on the child's own pid, which it keeps until waited for.
        unsafe { libc::kill(self.pid as libc::pid_t, libc::SIGTERM) };
        let status = self.child.wait().context("wait for the daemon")?;
        if !status.success() {
            bail!("the daemon exited with {status}");
        }
        Ok(())
    }
}

impl Drop for DaemonProcess {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// The reason every cairn-http apply carries.
fn cairn_reason() -> String {
    format!(
        "bench: {}",
        "x".repeat(CAIRN_REASON_BYTES - "bench: ".len())
    )
}

/// Reads the newest PoolScaled event back and returns its data plus reason
/// in bytes, and its whole JSON in bytes.
async fn stored_event_sizes(client: &reqwest::Client, addr: &str) -> Result<(usize, usize)> {
    let page: serde_json::Value = client
        .get(format!("http://{addr}/v1/events?type=PoolScaled&limit=1"))
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    let event = page
        .get("events")
        .and_then(|events| events.get(0))
        .context("no PoolScaled event in GET /v1/events")?;
    let data = event.get("data").map_or(0, |d| d.to_string().len());
    let reason = event
        .pointer("/cause/request/reason")
        .and_then(|r| r.as_str())
        .map_or(0, str::len);
    Ok((data + reason, event.to_string().len()))
}

async fn cairn_lib_point(
    writers: usize,
    batch: usize,
    seconds: f64,
    dir: &Path,
    prefix: &str,
) -> Result<PointResult> {
    use cairn::store::{AppendRequest, ExpectedVersion};
    let store = cairn::store::open(cairn::store::StoreConfig::new(dir))?;
    let deadline = Instant::now() + Duration::from_secs_f64(seconds);
    let payload = payload().into_bytes();
    let payload_bytes = payload.len();
    let measured = run_writers(writers, |writer| {
        let store = store.clone();
        let payload = payload.clone();
        let mut streams = OwnedStreams::new(prefix, writer, writers);
        async move {
            let mut latencies = Vec::new();
            while Instant::now() < deadline {
                let events = (0..batch).map(|_| new_event(&payload)).collect();
                let (stream, _) = streams.next();
                let request = AppendRequest {
                    stream,
                    expected: ExpectedVersion::Any,
                    events,
                    idempotency: None,
                };
                let begun = Instant::now();
                store.append(request).await.context("append")?;
                latencies.push(begun.elapsed());
            }
            Ok(latencies)
        }
    })
    .await;
    store.close().await;
    Ok(summarize(
        "cairn-lib",
        writers,
        batch,
        payload_bytes,
        measured?,
    ))
}

/// How the etcd targets write an event.
#[derive(Clone, Copy, PartialEq, Eq)]
enum EtcdWrite {
    /// `/v3/kv/put` per event; a batch is a txn of puts.
    Put,
    /// A txn that puts each event only if its key does not exist yet.
    GuardedTxn,
}

impl EtcdWrite {
    fn target(self) -> &'static str {
        match self {
            EtcdWrite::Put => "etcd",
            EtcdWrite::GuardedTxn => "etcd-txn",
        }
    }

    fn path(self, batch: usize) -> &'static str {
        if self == EtcdWrite::Put && batch == 1 {
            "/v3/kv/put"
        } else {
            "/v3/kv/txn"
        }
    }

    fn body(self, streams: &mut OwnedStreams, batch: usize, value: &str) -> Vec<u8> {
        let b64 = base64::engine::general_purpose::STANDARD;
        let value = b64.encode(value);
        let mut compare = Vec::with_capacity(batch);
        let mut success = Vec::with_capacity(batch);
        for _ in 0..batch {
            let (stream, version) = streams.next();
            let key = b64.encode(format!("events/{stream}/{version:020}"));
            if self == EtcdWrite::Put && batch == 1 {
                return serde_json::to_vec(&serde_json::json!({"key": key, "value": value}))
                    .expect("put body");
            }
            if self == EtcdWrite::GuardedTxn {
                compare.push(serde_json::json!({
                    "key": key, "result": "EQUAL", "target": "CREATE", "create_revision": "0",
                }));
            }
            success.push(serde_json::json!({"request_put": {"key": key, "value": value}}));
        }
        serde_json::to_vec(&serde_json::json!({"compare": compare, "success": success}))
            .expect("txn body")
    }
}

/// A put answers with its header (the new revision); a txn whose compares
/// failed answers 200 without `"succeeded":true`.
fn etcd_succeeded(answer: &[u8]) -> bool {
    let Ok(answer) = serde_json::from_slice::<serde_json::Value>(answer) else {
        return false;
    };
    match answer.get("succeeded") {
        Some(succeeded) => succeeded.as_bool() == Some(true),
        None => answer
            .get("header")
            .and_then(|header| header.get("revision"))
            .is_some(),
    }
}

async fn etcd_point(
    write: EtcdWrite,
    writers: usize,
    batch: usize,
    seconds: f64,
    port: u16,
    prefix: &str,
) -> Result<PointResult> {
    let url = format!("http://127.0.0.1:{port}{}", write.path(batch));
    let client = http_client(writers)?;
    let deadline = Instant::now() + Duration::from_secs_f64(seconds);
    let measured = run_writers(writers, |writer| {
        let mut streams = OwnedStreams::new(prefix, writer, writers);
        let value = payload();
        post_loop(
            client.clone(),
            url.clone(),
            reqwest::header::HeaderMap::new(),
            deadline,
            move || write.body(&mut streams, batch, &value),
            etcd_succeeded,
        )
    })
    .await?;
    Ok(summarize(
        write.target(),
        writers,
        batch,
        payload().len(),
        measured,
    ))
}

/// The load generator alone: the same loop against a server that answers at
/// once. Each request carries one ~250-byte payload, about what a batch-1
/// etcd put carries.
async fn null_http_point(writers: usize, seconds: f64, port: u16) -> Result<PointResult> {
    let url = format!("http://127.0.0.1:{port}/null");
    let client = http_client(writers)?;
    let deadline = Instant::now() + Duration::from_secs_f64(seconds);
    let measured = run_writers(writers, |_| {
        let body = payload().into_bytes();
        post_loop(
            client.clone(),
            url.clone(),
            reqwest::header::HeaderMap::new(),
            deadline,
            move || body.clone(),
            |_| true,
        )
    })
    .await?;
    Ok(summarize(
        "null-http",
        writers,
        1,
        payload().len(),
        measured,
    ))
}

/// Starts the null server on a loopback port in a thread of this process; it
/// runs until the process exits.
fn start_null_server() -> Result<u16> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    let listener = runtime.block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))?;
    let port = listener.local_addr()?.port();
    std::thread::spawn(move || {
        use warp::Filter;
        let routes = warp::any().map(|| warp::reply::json(&serde_json::json!({})));
        runtime.block_on(warp::serve(routes).incoming(listener).run());
    });
    Ok(port)
}

/// One writer's connection with its prepared insert, made before the clock
/// starts, so the peer is not charged for setting up 64 connections.
struct PostgresConnection {
    client: tokio_postgres::Client,
    connection: tokio::task::JoinHandle<Result<(), tokio_postgres::Error>>,
    insert: tokio_postgres::Statement,
}

async fn postgres_connect(port: u16) -> Result<PostgresConnection> {
    let (client, connection) = tokio_postgres::connect(
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
    Ok(PostgresConnection {
        client,
        connection,
        insert,
    })
}

async fn postgres_writer(
    connected: PostgresConnection,
    prefix: String,
    writer: usize,
    writers: usize,
    batch: usize,
    deadline: Instant,
) -> Result<Vec<Duration>> {
    let PostgresConnection {
        mut client,
        connection,
        insert,
    } = connected;
    let payload: serde_json::Value = serde_json::from_str(&payload())?;
    let event_type = "BenchEvent".to_string();
    let mut streams = OwnedStreams::new(&prefix, writer, writers);
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
    prefix: &str,
) -> Result<PointResult> {
    let mut connections = Vec::with_capacity(writers);
    for _ in 0..writers {
        connections.push(Some(postgres_connect(port).await?));
    }
    let deadline = Instant::now() + Duration::from_secs_f64(seconds);
    let measured = run_writers(writers, |writer| {
        let connected = connections[writer]
            .take()
            .expect("one connection per writer");
        postgres_writer(
            connected,
            prefix.to_string(),
            writer,
            writers,
            batch,
            deadline,
        )
    })
    .await?;
    Ok(summarize(
        "postgres",
        writers,
        batch,
        payload().len(),
        measured,
    ))
}

/// A peer server started with tools/peers.sh; stopped when dropped, so a
/// failed point (an error or a panic in the parent) still stops it.
struct Peer {
    kind: &'static str,
    dir: PathBuf,
    port: u16,
    _temp: Option<tempfile::TempDir>,
}

fn peers_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tools/peers.sh")
}

/// Makes `dir` reachable by the user postgres: as root, PostgreSQL runs as
/// that user.
fn open_to_postgres(dir: &Path) -> Result<()> {
    std::fs::set_permissions(dir, std::os::unix::fs::PermissionsExt::from_mode(0o755))?;
    Ok(())
}

impl Peer {
    /// Starts a `kind` server in `base/kind`, or in a temp dir when `base` is
    /// not given.
    /// Starts a `kind` server in `base/<name>`: each target gets its own
    /// server and directory, so etcd and etcd-txn never share a member.
    fn start(kind: &'static str, name: &str, base: Option<&Path>) -> Result<Peer> {
        let (temp, base) = match base {
            Some(base) => {
                std::fs::create_dir_all(base)?;
                (None, base.to_path_buf())
            }
            None => {
                let temp = tempfile::Builder::new().prefix("cairn-peers-").tempdir()?;
                let path = temp.path().to_path_buf();
                (Some(temp), path)
            }
        };
        open_to_postgres(&base)?;
        let dir = base.join(name);
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
    writers: Vec<usize>,
    batches: Vec<usize>,
    seconds: f64,
    json: bool,
    json_out: Option<PathBuf>,
    targets: Vec<String>,
    peers_dir: Option<PathBuf>,
    /// Cairn's data of every point (see `cairn_data_dir`); set by the parent.
    cairn_data: PathBuf,
    /// In a child: the target to measure and its port (0 for cairn-lib and
    /// cairn-http).
    only: Option<(String, u16)>,
}

fn numbers(text: &str) -> Result<Vec<usize>> {
    text.split(',')
        .map(|n| {
            n.trim()
                .parse()
                .with_context(|| format!("{n:?} is not a number"))
        })
        .collect()
}

fn options() -> Result<Options> {
    let mut options = Options {
        writers: vec![64],
        batches: vec![1],
        seconds: 5.0,
        json: false,
        json_out: None,
        targets: DEFAULT_TARGETS.iter().map(|t| t.to_string()).collect(),
        peers_dir: None,
        cairn_data: PathBuf::new(),
        only: None,
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = || args.next().with_context(|| format!("{arg} takes a value"));
        match arg.as_str() {
            "--writers" => options.writers = numbers(&value()?)?,
            "--batch" => options.batches = numbers(&value()?)?,
            "--seconds" => options.seconds = value()?.parse()?,
            "--targets" => options.targets = value()?.split(',').map(str::to_string).collect(),
            "--json-out" => options.json_out = Some(PathBuf::from(value()?)),
            "--peers-dir" => options.peers_dir = Some(PathBuf::from(value()?)),
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
    if options
        .writers
        .iter()
        .any(|&writers| writers == 0 || writers > STREAMS)
        || options.batches.contains(&0)
    {
        bail!("--writers takes 1 to {STREAMS}, --batch at least 1");
    }
    for target in &options.targets {
        if !TARGETS.contains(&target.as_str()) {
            bail!("unknown target {target:?}: {}", TARGETS.join(", "));
        }
    }
    Ok(options)
}

/// In a child process: measures one point and prints its result as JSON.
/// Where a point's children keep Cairn's data: a directory the parent made
/// and removes when the whole run ends (`CAIRN_BENCH_DATA`). On this
/// machine's ext4 (mounted with `discard`), deleting a point's data right
/// before the next point slows that point's fsyncs, so a point never deletes
/// its own; the peers' data likewise stays until their target is done.
const CAIRN_DATA_VARIABLE: &str = "CAIRN_BENCH_DATA";

fn cairn_data_dir() -> Result<PathBuf> {
    let Some(base) = std::env::var_os(CAIRN_DATA_VARIABLE) else {
        bail!("{CAIRN_DATA_VARIABLE} is not set: run the bench without --only");
    };
    Ok(tempfile::Builder::new()
        .prefix("cairn-bench-")
        .tempdir_in(base)?
        .keep())
}

fn run_child(options: &Options, target: &str, port: u16) -> Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let (writers, batch, seconds) = (options.writers[0], options.batches[0], options.seconds);
    // Every point names its streams apart from the other points' on the same
    // peer server.
    let prefix = format!("w{writers}b{batch}-");
    let result = runtime.block_on(async {
        match target {
            "cairn-http" => {
                let dir = cairn_data_dir()?;
                cairn_http_point(writers, batch, seconds, &dir).await
            }
            "cairn-lib" => {
                let dir = cairn_data_dir()?;
                cairn_lib_point(writers, batch, seconds, &dir, &prefix).await
            }
            "etcd" => etcd_point(EtcdWrite::Put, writers, batch, seconds, port, &prefix).await,
            "etcd-txn" => {
                etcd_point(
                    EtcdWrite::GuardedTxn,
                    writers,
                    batch,
                    seconds,
                    port,
                    &prefix,
                )
                .await
            }
            "postgres" => postgres_point(writers, batch, seconds, port, &prefix).await,
            "null-http" => null_http_point(writers, seconds, port).await,
            other => bail!("unknown target {other:?}"),
        }
    })?;
    // A point where no request completed measured nothing: a failure, not 0/s.
    if result.requests == 0 {
        bail!("no request completed in {seconds} s");
    }
    println!("{}", serde_json::to_string(&result)?);
    Ok(())
}

/// Runs one point in a fresh process of this program.
fn run_point(
    options: &Options,
    target: &str,
    port: u16,
    writers: usize,
    batch: usize,
) -> Result<PointResult> {
    // Start each point with nothing dirty in the page cache.
    let _ = Command::new("sync").status();
    let output = Command::new(std::env::current_exe()?)
        .env(CAIRN_DATA_VARIABLE, &options.cairn_data)
        .args(["--only", &format!("{target}:{port}")])
        .args(["--writers", &writers.to_string()])
        .args(["--batch", &batch.to_string()])
        .args(["--seconds", &options.seconds.to_string()])
        .stderr(std::process::Stdio::inherit())
        .output()
        .context("the bench runs itself")?;
    if !output.status.success() {
        bail!(
            "point {target} w{writers} b{batch} failed ({})",
            output.status
        );
    }
    let stdout = String::from_utf8_lossy(&output.stdout);
    let line = stdout.lines().last().context("no result from the point")?;
    Ok(serde_json::from_str(line)?)
}

/// Runs every point of one target, with its server started once; failures
/// are added to `failures` and the other points still run.
fn run_target(
    options: &Options,
    target: &str,
    results: &mut Vec<PointResult>,
    failures: &mut Vec<String>,
) {
    let port = match target {
        "etcd" | "etcd-txn" | "postgres" => {
            let kind = if target == "postgres" {
                "postgres"
            } else {
                "etcd"
            };
            match Peer::start(kind, target, options.peers_dir.as_deref()) {
                Ok(peer) => Some(peer),
                Err(error) => {
                    failures.push(format!("{target}: {error:#}"));
                    return;
                }
            }
            .map(|peer| (peer.port, Some(peer)))
        }
        "null-http" => match start_null_server() {
            Ok(port) => Some((port, None)),
            Err(error) => {
                failures.push(format!("{target}: null server: {error:#}"));
                return;
            }
        },
        _ => Some((0, None)),
    };
    let Some((port, peer)) = port else { return };
    // The null target measures the generator alone: batches do not apply.
    let batches = if target == "null-http" {
        vec![1]
    } else {
        options.batches.clone()
    };
    for &batch in &batches {
        for &writers in &options.writers {
            eprintln!("bench_peers: {target}, {writers} writers, batch {batch}");
            match run_point(options, target, port, writers, batch) {
                Ok(result) => results.push(result),
                Err(error) => failures.push(format!("{error:#}")),
            }
        }
    }
    drop(peer);
}

fn main() -> Result<()> {
    let mut options = options()?;
    if let Some((target, port)) = &options.only {
        return run_child(&options, target, *port);
    }
    // Removed when main returns, after every point.
    let cairn_data = tempfile::Builder::new()
        .prefix("cairn-bench-data-")
        .tempdir()?;
    options.cairn_data = cairn_data.path().to_path_buf();
    let mut results = Vec::new();
    let mut failures = Vec::new();
    for target in &options.targets {
        run_target(&options, target, &mut results, &mut failures);
    }
    if let Some(path) = &options.json_out {
        let report = serde_json::json!({
            "seconds_per_point": options.seconds,
            "points": results,
            "failures": failures,
        });
        std::fs::write(path, serde_json::to_string_pretty(&report)?)
            .with_context(|| format!("write {}", path.display()))?;
    }
    if options.json {
        println!("{}", serde_json::to_string_pretty(&results)?);
    } else {
        print_table(&options, &results);
    }
    for failure in &failures {
        eprintln!("bench_peers: FAILED: {failure}");
    }
    if !failures.is_empty() {
        bail!("{} point(s) failed", failures.len());
    }
    Ok(())
}

fn print_table(options: &Options, results: &[PointResult]) {
    println!("durable events, {} s per point", options.seconds);
    println!();
    println!(
        "| target | writers | batch | events/s | p50 ms | p99 ms | bytes/event | CPU cores | \
         CPU µs/request | server CPU µs/request | server CPU µs/event |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|");
    let or_dash = |value: Option<f64>| value.map_or("-".to_string(), |v| format!("{v:.1}"));
    for r in results {
        println!(
            "| {} | {} | {} | {:.0} | {:.2} | {:.2} | {} | {:.2} | {:.1} | {} | {} |",
            r.target,
            r.writers,
            r.batch,
            r.events_per_s,
            r.p50_ms,
            r.p99_ms,
            r.payload_bytes,
            r.cpu_cores,
            r.cpu_us_per_request,
            or_dash(r.server_cpu_us_per_request),
            or_dash(r.server_cpu_us_per_event),
        );
    }
    for &batch in &options.batches {
        for &writers in &options.writers {
            let at = |target: &str| {
                results
                    .iter()
                    .find(|r| r.target == target && r.writers == writers && r.batch == batch)
            };
            let best_peer = ["etcd", "etcd-txn", "postgres"]
                .iter()
                .filter_map(|t| at(t))
                .max_by(|a, b| a.events_per_s.total_cmp(&b.events_per_s));
            let Some(peer) = best_peer else { continue };
            for cairn in ["cairn-http", "cairn-lib"].iter().filter_map(|t| at(t)) {
                println!(
                    "{writers} writers, batch {batch}: {} / better peer ({}): {:.2}x",
                    cairn.target,
                    peer.target,
                    cairn.events_per_s / peer.events_per_s
                );
            }
        }
    }
}
