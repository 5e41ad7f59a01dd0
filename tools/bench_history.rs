//! Time travel, replay, start-up, backup and the live stream on a large log
//! (the figures of issue 4, and the Cairn-only figures of issue 6).
//!
//! Run: `cargo bench --bench history` (1,000,000 events over 1,000 clusters;
//! add `-- --events 50000 --clusters 100` for a quick run). Other flags:
//! `--in-flight N` (concurrent writers while generating, default 64),
//! `--data-dir DIR` (generate into DIR and keep it; a DIR that already holds a
//! log is reused as it is, e.g. to profile one step), `--stream-rate N` and
//! `--stream-seconds N` (the live-stream load, default 200/s for 10 s),
//! `--point-reads N`, `--time-reads N`, `--http-reads N` (2,000, 300, 300),
//! `--wrk-seconds N`, `--wrk-threads N`, `--wrk-connections N` (the HTTP load,
//! default 5 s, 2 threads, 64 connections), `--skip-backup` (leave out the
//! export and import of step 6, about a minute and a half of a full run, as the
//! benchmark suite of issue 6 does) and `--json-out FILE` (also write the
//! figures as one JSON object, see the end of this comment).
//!
//! 1. Generation (not a figure of the issue, printed for context): every
//!    cluster is declared with a real manifest (3 subnets, 3 firewall rules,
//!    2 pools of 3) and "reconciled" (intents and outcomes with CloudResource
//!    payloads, conditions, in five phases), then random clusters get scale
//!    changes and firewall rules added or removed, each followed by the
//!    reconciler events that carry it out, until the log holds `--events`.
//!    Desired changes go through `Ledger::scale` and `Ledger::apply`,
//!    reconciler events through `Ledger::record` (several per append), with
//!    `--in-flight` writers at once, and a `Ledger` follows the log and takes
//!    snapshots (every 50,000 events, the default) as the daemon would. No
//!    provider is called: the bench writes what a reconciler would record.
//! 2. The daemon: the real `cairn` binary (`serve`, reconcilers off) on the
//!    generated directory, first started right after the generating process
//!    closed the log (as after a daemon that wrote it and stopped). Start-up
//!    is from spawn to the first 200 from `/readyz`; memory is VmRSS and
//!    VmHWM of /proc/<pid>/status once ready. Then 300 point-in-time reads
//!    over HTTP (`GET /v1/clusters/{name}?at=<seq>`). Then `wrk` (it must be
//!    installed; the bench checks before generating) loads
//!    `GET /v1/clusters/{name}` for `--wrk-seconds`, a cluster picked at random
//!    per request by a Lua script written to the temporary directory; its
//!    `Requests/sec:` line, latency p50 and p99 and its count of non-2xx
//!    answers are reported. wrk runs on the same 2 cores as the daemon (and
//!    this process), so the figure is what the machine serves with the load
//!    generator on it, not what the daemon alone could.
//! 3. Live stream: one SSE client on `GET /v1/watch` (its own thread and
//!    runtime) while one writer `POST`s a scale change (one `PoolScaled`
//!    event) at a steady rate; for each event, the time the client read it
//!    minus the time its append was acknowledged (signed: the stream can be
//!    first), and minus the time the request was sent, on this process's
//!    monotonic clock. The daemon is then stopped with SIGTERM and waited for.
//! 4. Point in time, in process: the store is reopened and `Ledger::open_with`
//!    (newest snapshot plus tail) is timed; then 2,000 sequential
//!    `cluster_at` reads at a uniformly random seq of a random cluster, and
//!    300 at a random time; then 500 more timed part by part (snapshot part,
//!    stream reads, fold) through the public API, with the streams read in
//!    pages of 1,024 events (as `cluster_at` does) and of 64, side by side.
//!    Then append to subscriber in process: with the ledger's follower
//!    running, `Ledger::scale` appends one event at a time at `--stream-rate`
//!    for `--stream-seconds` while a task receives the store's
//!    `subscribe_committed()`; received minus `scale` returned (signed), and
//!    minus `scale` called. These appends move the head that step 5 replays to.
//! 5. Replay: `replay::replay` folds the log from seq 1 and checks every
//!    snapshot; events/s excludes the snapshot comparisons.
//! 6. Export to an NDJSON file (`backup::write_export`, then fsync) and import
//!    into a fresh store (`backup::import_into_store`, what `cairn import` runs
//!    in its staging directory); events/s and MB/s of each, and the imported
//!    head hash must equal the original. The import is stopped, and its rate
//!    so far reported, if this process's VmRSS passes `--import-rss-limit-mib`
//!    (default 6144), a guard kept from the sled store, whose garbage grew
//!    without bound during an import (docs/PERFORMANCE.md, issue 4).
//! 7. The daemon is started once more (a restart after a clean stop) and
//!    stopped; then a markdown table of every figure with its goal (the goals
//!    of issue 4 there; the JSON below carries those of issue 6).
//!
//! Everything but `--data-dir` lives in a temporary directory removed at the end.
//!
//! With `--json-out FILE`, the figures are also written to FILE as
//! `{"bench": "history", "params": {...}, "figures": [{"name", "value", "unit",
//! "goal"?, "met"}]}` (`tools/bench_json.rs`), with these names (ms and s are
//! wall time, MiB is 1,048,576 bytes):
//! `generate_events_per_s` (only when the log was generated), `bytes_per_event`
//! and `disk_mb` (the generated log on disk, snapshots included),
//! `replay_events_per_s` (goal >= 1,000,000), `point_p50_ms` and `point_p99_ms`
//! (`cluster_at` at a random seq, goal p99 < 10 ms), `point_time_p50_ms` and
//! `point_time_p99_ms` (at a random time), `point_http_p50_ms` and
//! `point_http_p99_ms` (over HTTP, `?at=<seq>`), `ledger_open_ms`,
//! `startup_first_s` and `startup_restart_s` (spawn to /readyz 200, goal < 1 s),
//! `rss_ready_mib` (VmRSS once ready), `rss_peak_mib` (VmHWM once ready: the
//! peak over start-up, goal < 200 MB, compared as < 190.73 MiB),
//! `rss_restart_ready_mib` and `rss_peak_restart_mib` (the same at the restart,
//! same goal), `rss_after_load_mib` and `rss_peak_after_load_mib` (after the
//! HTTP reads, wrk and the live stream), `get_cluster_req_per_s`,
//! `get_cluster_p50_ms`, `get_cluster_p99_ms` and `get_cluster_non_2xx` (wrk;
//! goal 0 non-2xx), `subscriber_p50_ms`, `subscriber_p99_ms` (SSE received
//! minus append acknowledged), `subscriber_sent_p99_ms` (received minus request
//! sent), `subscriber_append_p99_ms` (the append's round trip) and
//! `subscriber_missing` (goal 0), the same five as `subscriber_in_process_*`
//! (step 4), and, without `--skip-backup`, `export_events_per_s`,
//! `import_events_per_s` and `import_complete` (1, or 0 when stopped at the
//! memory limit).

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufRead, BufReader, BufWriter};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The daemon's allocator (src/main.rs), so that the library figures are
/// those of the process that ships.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

// The command-line helpers of the shared file serve the reconcile bench.
#[allow(dead_code)]
#[path = "bench_json.rs"]
mod bench_json;

use bench_json::Figures;
use cairn::backup;
use cairn::event::{Actor, ActorKind, Cause, Event};
use cairn::ledger::{ApplyOptions, CommandContext, Ledger, LedgerConfig, LedgerError, Point};
use cairn::model::{
    cluster_stream, parse_manifest, reconcile_stream, Action, ActionStarted, ActionSucceeded,
    CloudResource, ConditionChanged, ConditionType, FirewallRule, MachineSpec, ManifestFormat,
    NetworkSpec, ReconcileEvent, ResourceKey, ResourceKind, ResourceSpec, SubnetSpec,
};
use cairn::projection::Projections;
use cairn::replay;
use cairn::store::EventStore;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio_util::sync::CancellationToken;

/// The `cairn` binary Cargo built for this bench (release, like the bench).
const CAIRN_BINARY: &str = env!("CARGO_BIN_EXE_cairn");

const SUBNETS: [(&str, &str, &str); 3] = [
    ("a", "10.0.1.0/24", "eu-west-1a"),
    ("b", "10.0.2.0/24", "eu-west-1b"),
    ("c", "10.0.3.0/24", "eu-west-1c"),
];

/// Name, role, machine type; both pools start with 3 replicas.
const POOLS: [(&str, &str, &str); 2] = [
    ("control-plane", "control-plane", "m5.large"),
    ("workers", "worker", "m5.xlarge"),
];

const START_REPLICAS: i64 = 3;
const MAX_STORY_REPLICAS: i64 = 8;
const MAX_EXTRA_RULES: usize = 3;

struct Args {
    events: u64,
    clusters: usize,
    in_flight: usize,
    data_dir: Option<PathBuf>,
    point_reads: usize,
    time_reads: usize,
    http_reads: usize,
    stream_rate: u64,
    stream_seconds: u64,
    import_rss_limit_mib: u64,
    skip_backup: bool,
    json_out: Option<PathBuf>,
    wrk_seconds: u64,
    wrk_threads: u64,
    wrk_connections: u64,
}

impl Args {
    fn parse() -> Args {
        let mut args = Args {
            events: 1_000_000,
            clusters: 1_000,
            in_flight: 64,
            data_dir: None,
            point_reads: 2_000,
            time_reads: 300,
            http_reads: 300,
            stream_rate: 200,
            stream_seconds: 10,
            import_rss_limit_mib: 6 * 1024,
            skip_backup: false,
            json_out: None,
            wrk_seconds: 5,
            wrk_threads: 2,
            wrk_connections: 64,
        };
        let mut arguments = std::env::args().skip(1);
        while let Some(argument) = arguments.next() {
            let mut number = |name: &str| -> u64 {
                arguments
                    .next()
                    .and_then(|value| value.replace('_', "").parse().ok())
                    .unwrap_or_else(|| panic!("{name} takes a number"))
            };
            match argument.as_str() {
                "--events" => args.events = number("--events"),
                "--clusters" => args.clusters = number("--clusters") as usize,
                "--in-flight" => args.in_flight = number("--in-flight") as usize,
                "--point-reads" => args.point_reads = number("--point-reads") as usize,
                "--time-reads" => args.time_reads = number("--time-reads") as usize,
                "--http-reads" => args.http_reads = number("--http-reads") as usize,
                "--stream-rate" => args.stream_rate = number("--stream-rate"),
                "--stream-seconds" => args.stream_seconds = number("--stream-seconds"),
                "--import-rss-limit-mib" => {
                    args.import_rss_limit_mib = number("--import-rss-limit-mib")
                }
                "--skip-backup" => args.skip_backup = true,
                "--wrk-seconds" => args.wrk_seconds = number("--wrk-seconds"),
                "--wrk-threads" => args.wrk_threads = number("--wrk-threads"),
                "--wrk-connections" => args.wrk_connections = number("--wrk-connections"),
                "--json-out" => {
                    args.json_out = Some(PathBuf::from(
                        arguments.next().expect("--json-out takes a path"),
                    ))
                }
                "--data-dir" => {
                    args.data_dir = Some(PathBuf::from(
                        arguments.next().expect("--data-dir takes a path"),
                    ))
                }
                // `cargo bench` passes `--bench`; anything else is ignored too.
                _ => {}
            }
        }
        assert!(args.clusters > 0 && args.in_flight > 0);
        assert!(args.wrk_seconds > 0 && args.wrk_threads > 0);
        assert!(args.wrk_connections >= args.wrk_threads);
        args
    }
}

fn cluster_name(index: usize) -> String {
    format!("c{index:04}")
}

fn ms(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1000.0
}

/// Nearest-rank percentiles of latencies in milliseconds (may be negative).
struct Summary {
    count: usize,
    p50: f64,
    p99: f64,
    max: f64,
}

impl Summary {
    fn of(mut values: Vec<f64>) -> Summary {
        values.sort_by(|a, b| a.total_cmp(b));
        let pick = |q: f64| -> f64 {
            if values.is_empty() {
                return f64::NAN;
            }
            let rank = (q * values.len() as f64).ceil() as usize;
            values[rank.clamp(1, values.len()) - 1]
        };
        Summary {
            count: values.len(),
            p50: pick(0.5),
            p99: pick(0.99),
            max: values.last().copied().unwrap_or(f64::NAN),
        }
    }

    fn text(&self) -> String {
        format!("{:.2} / {:.2} / {:.2} ms", self.p50, self.p99, self.max)
    }
}

/// Bytes the files under `dir` take on disk (allocated blocks).
fn disk_bytes(dir: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let mut total = 0;
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    for entry in entries.flatten() {
        let Ok(metadata) = entry.metadata() else {
            continue;
        };
        if metadata.is_dir() {
            total += disk_bytes(&entry.path());
        } else {
            total += metadata.blocks() * 512;
        }
    }
    total
}

// ---------------------------------------------------------------------------
// Generation
// ---------------------------------------------------------------------------

fn manifest_yaml(name: &str) -> String {
    let subnets: String = SUBNETS
        .iter()
        .map(|(subnet, cidr, zone)| {
            format!("      - {{name: {subnet}, cidr: {cidr}, zone: {zone}}}\n")
        })
        .collect();
    let pools: String = POOLS
        .iter()
        .map(|(pool, role, machine_type)| {
            format!(
                "    - {{name: {pool}, role: {role}, replicas: {START_REPLICAS}, \
                 machineType: {machine_type}, image: ubuntu-24.04, subnets: [a, b, c]}}\n"
            )
        })
        .collect();
    format!(
        "apiVersion: cairn/v1\nkind: Cluster\nmetadata: {{name: {name}, labels: {{team: platform, \
         env: bench}}}}\nspec:\n  provider: sim\n  region: eu-west-1\n  kubernetesVersion: 1.31.2\n  \
         network:\n    cidr: 10.0.0.0/16\n    subnets:\n{subnets}  firewall:\n    \
         - {{name: api, direction: ingress, protocol: tcp, ports: \"443\", source: 0.0.0.0/0}}\n    \
         - {{name: ssh, direction: ingress, protocol: tcp, ports: \"22\", source: 10.0.0.0/8}}\n    \
         - {{name: nodeports, direction: ingress, protocol: tcp, ports: \"30000-32767\", \
         source: 10.0.0.0/16}}\n  pools:\n{pools}  policy: {{drift: correct}}\n"
    )
}

fn user_context() -> CommandContext {
    let mut context = CommandContext::new(Actor {
        kind: ActorKind::User,
        name: "bench".into(),
    });
    context.reason = Some("load test of issue 4".into());
    context
}

fn cause_of(event: &Event) -> Cause {
    Cause::Event {
        seq: event.seq,
        id: event.id,
    }
}

/// What the bench knows of one cluster, to write the events a reconciler would.
struct ClusterModel {
    name: String,
    replicas: [i64; 2],
    extra_rules: Vec<String>,
    next_rule: u32,
    incarnations: HashMap<ResourceKey, u32>,
    provider_ids: HashMap<ResourceKey, String>,
}

/// A provider call to record: its intent, then its outcome.
struct Step {
    action: Action,
    token: String,
    provider_id: String,
    observed: Option<CloudResource>,
}

impl ClusterModel {
    fn new(name: String) -> ClusterModel {
        ClusterModel {
            name,
            replicas: [START_REPLICAS; 2],
            extra_rules: Vec::new(),
            next_rule: 0,
            incarnations: HashMap::new(),
            provider_ids: HashMap::new(),
        }
    }

    fn token(&self, key: &ResourceKey) -> String {
        let incarnation = self.incarnations.get(key).copied().unwrap_or(0);
        format!(
            "{}/{}/{}/{incarnation}",
            self.name,
            key.kind.as_str(),
            key.name
        )
    }

    fn create(&mut self, spec: ResourceSpec, ids: &AtomicU64) -> Step {
        let key = spec.key();
        let token = self.token(&key);
        let number = ids.fetch_add(1, Ordering::Relaxed);
        let prefix = match key.kind {
            ResourceKind::Network => "n",
            ResourceKind::Subnet => "s",
            ResourceKind::FirewallRule => "f",
            ResourceKind::Machine => "m",
        };
        let provider_id = format!("sim-{prefix}-{number:08}");
        let address = matches!(key.kind, ResourceKind::Machine)
            .then(|| format!("10.0.{}.{}", 1 + number % 3, 10 + number % 240));
        self.provider_ids.insert(key, provider_id.clone());
        Step {
            observed: Some(CloudResource {
                provider_id: provider_id.clone(),
                cluster: self.name.clone(),
                token: token.clone(),
                spec: spec.clone(),
                address,
            }),
            action: Action::Create { spec },
            token,
            provider_id,
        }
    }

    fn delete(&mut self, key: ResourceKey) -> Step {
        let token = self.token(&key);
        let provider_id = self
            .provider_ids
            .remove(&key)
            .expect("the bench deletes only what it created");
        *self.incarnations.entry(key.clone()).or_insert(0) += 1;
        Step {
            action: Action::Delete {
                key,
                provider_id: provider_id.clone(),
            },
            token,
            provider_id,
            observed: None,
        }
    }

    fn machine(&self, pool: usize, index: i64) -> ResourceSpec {
        let (pool_name, role, machine_type) = POOLS[pool];
        ResourceSpec::Machine(MachineSpec {
            name: format!("{pool_name}-{index}"),
            pool: pool_name.into(),
            role: role.into(),
            machine_type: machine_type.into(),
            image: "ubuntu-24.04".into(),
            subnet: SUBNETS[index as usize % SUBNETS.len()].0.into(),
            kubernetes_version: "1.31.2".into(),
        })
    }
}

fn condition(
    condition: ConditionType,
    status: bool,
    reason: &str,
    message: String,
) -> ReconcileEvent {
    ReconcileEvent::ConditionChanged(ConditionChanged {
        condition,
        status,
        reason: reason.into(),
        message,
    })
}

fn started(step: &Step) -> ReconcileEvent {
    ReconcileEvent::ActionStarted(ActionStarted {
        action: step.action.clone(),
        token: step.token.clone(),
        attempt: 1,
    })
}

fn succeeded(step: &Step) -> ReconcileEvent {
    ReconcileEvent::ActionSucceeded(ActionSucceeded {
        action: step.action.clone(),
        token: step.token.clone(),
        provider_id: step.provider_id.clone(),
        observed: step.observed.clone(),
    })
}

/// Records phases of provider calls as a reconciler pass would: each append
/// holds the outcomes of the previous phase and the intents of the next one;
/// the first opens with `opening` events, the last closes with `closing`.
async fn record_pass(
    ledger: &Ledger,
    cluster: &str,
    correlation: uuid::Uuid,
    cause: Cause,
    opening: Vec<ReconcileEvent>,
    phases: Vec<Vec<Step>>,
    closing: Vec<ReconcileEvent>,
) -> Result<(), LedgerError> {
    let mut batch: Vec<(ReconcileEvent, Cause)> = opening
        .into_iter()
        .map(|event| (event, cause.clone()))
        .collect();
    let mut previous: Vec<(Step, Cause)> = Vec::new();
    for phase in phases {
        for (step, intent) in previous.drain(..) {
            batch.push((succeeded(&step), intent));
        }
        let intents: Vec<ReconcileEvent> = phase.iter().map(started).collect();
        let first_intent = batch.len();
        batch.extend(intents.into_iter().map(|event| (event, cause.clone())));
        let written = ledger
            .record(cluster, correlation, std::mem::take(&mut batch))
            .await?;
        for (step, event) in phase.into_iter().zip(&written[first_intent..]) {
            previous.push((step, cause_of(event)));
        }
    }
    for (step, intent) in previous {
        batch.push((succeeded(&step), intent));
    }
    batch.extend(closing.into_iter().map(|event| (event, cause.clone())));
    ledger.record(cluster, correlation, batch).await?;
    Ok(())
}

fn converged() -> Vec<ReconcileEvent> {
    vec![
        condition(
            ConditionType::Ready,
            true,
            "Converged",
            "observed state matches desired state".into(),
        ),
        condition(
            ConditionType::Progressing,
            false,
            "Converged",
            "no action left".into(),
        ),
    ]
}

fn progressing(actions: usize) -> Vec<ReconcileEvent> {
    vec![
        condition(
            ConditionType::Ready,
            false,
            "Progressing",
            format!("{actions} actions to carry out"),
        ),
        condition(
            ConditionType::Progressing,
            true,
            "ActionsPending",
            format!("{actions} actions to carry out"),
        ),
    ]
}

async fn declare(
    ledger: &Ledger,
    model: &mut ClusterModel,
    ids: &AtomicU64,
) -> Result<(), LedgerError> {
    let manifest = parse_manifest(manifest_yaml(&model.name).as_bytes(), ManifestFormat::Yaml)
        .expect("the bench manifest is valid");
    let context = user_context();
    let outcome = ledger
        .apply(manifest.clone(), ApplyOptions::default(), &context)
        .await?;
    let declared = outcome
        .events
        .first()
        .expect("a new cluster appends an event");
    let network = model.create(
        ResourceSpec::Network(NetworkSpec {
            cidr: manifest.spec.network.cidr.clone(),
            region: manifest.spec.region.clone(),
        }),
        ids,
    );
    let subnets = SUBNETS
        .iter()
        .map(|(name, cidr, zone)| {
            model.create(
                ResourceSpec::Subnet(SubnetSpec {
                    name: (*name).into(),
                    cidr: (*cidr).into(),
                    zone: Some((*zone).into()),
                }),
                ids,
            )
        })
        .collect();
    let rules = manifest
        .spec
        .firewall
        .iter()
        .map(|rule| model.create(ResourceSpec::FirewallRule(rule.clone()), ids))
        .collect();
    let mut machines = Vec::new();
    for pool in 0..POOLS.len() {
        for index in 0..model.replicas[pool] {
            let spec = model.machine(pool, index);
            machines.push(model.create(spec, ids));
        }
    }
    let actions = 1 + SUBNETS.len() + manifest.spec.firewall.len() + machines.len();
    record_pass(
        ledger,
        &model.name,
        context.correlation,
        cause_of(declared),
        progressing(actions),
        vec![vec![network], subnets, rules, machines],
        converged(),
    )
    .await
}

async fn scale_story(
    ledger: &Ledger,
    model: &mut ClusterModel,
    rng: &mut StdRng,
    ids: &AtomicU64,
) -> Result<(), LedgerError> {
    let pool = if rng.random_bool(0.8) { 1 } else { 0 };
    let from = model.replicas[pool];
    let mut to = from;
    while to == from {
        to = rng.random_range(1..=MAX_STORY_REPLICAS);
    }
    let context = user_context();
    let outcome = ledger
        .scale(&model.name, POOLS[pool].0, to, None, &context)
        .await?;
    let scaled = outcome.events.first().expect("a scale appends an event");
    let steps: Vec<Step> = if to > from {
        (from..to)
            .map(|index| {
                let spec = model.machine(pool, index);
                model.create(spec, ids)
            })
            .collect()
    } else {
        (to..from)
            .rev()
            .map(|index| {
                let key = model.machine(pool, index).key();
                model.delete(key)
            })
            .collect()
    };
    model.replicas[pool] = to;
    let actions = steps.len();
    record_pass(
        ledger,
        &model.name,
        context.correlation,
        cause_of(scaled),
        progressing(actions),
        vec![steps],
        converged(),
    )
    .await
}

async fn firewall_story(
    ledger: &Ledger,
    model: &mut ClusterModel,
    rng: &mut StdRng,
    ids: &AtomicU64,
) -> Result<(), LedgerError> {
    let mut manifest = ledger
        .cluster(&model.name)
        .expect("the cluster was declared")
        .manifest;
    let add = model.extra_rules.is_empty()
        || (model.extra_rules.len() < MAX_EXTRA_RULES && rng.random_bool(0.5));
    let step = if add {
        let name = format!("extra-{}", model.next_rule);
        let rule = FirewallRule {
            name: name.clone(),
            direction: "ingress".into(),
            protocol: "tcp".into(),
            ports: Some(format!("{}", 8000 + model.next_rule % 1000)),
            source: format!("10.{}.0.0/16", model.next_rule % 250),
        };
        model.next_rule += 1;
        model.extra_rules.push(name);
        manifest.spec.firewall.push(rule.clone());
        model.create(ResourceSpec::FirewallRule(rule), ids)
    } else {
        let index = rng.random_range(0..model.extra_rules.len());
        let name = model.extra_rules.swap_remove(index);
        manifest.spec.firewall.retain(|rule| rule.name != name);
        model.delete(ResourceKey::new(ResourceKind::FirewallRule, name))
    };
    manifest.normalize();
    let context = user_context();
    let outcome = ledger
        .apply(manifest, ApplyOptions::default(), &context)
        .await?;
    let changed = outcome
        .events
        .first()
        .expect("a firewall change appends an event");
    record_pass(
        ledger,
        &model.name,
        context.correlation,
        cause_of(changed),
        progressing(1),
        vec![vec![step]],
        converged(),
    )
    .await
}

struct Generated {
    seconds: f64,
    events: u64,
    snapshots: usize,
    disk_bytes: u64,
}

async fn generate(dir: &Path, args: &Args) -> Generated {
    let store = cairn::store::open(cairn::store::StoreConfig::new(dir)).expect("the store opens");
    let ledger = Ledger::open_with(
        store.clone() as Arc<dyn EventStore>,
        LedgerConfig::default(),
    )
    .await
    .expect("the ledger opens");
    let follow_stop = CancellationToken::new();
    let follower = tokio::spawn(ledger.clone().follow(follow_stop.clone()));
    let started = Instant::now();
    let ids = Arc::new(AtomicU64::new(1));
    let target = args.events;
    let writers = args.in_flight.min(args.clusters);
    let progress_stop = CancellationToken::new();
    let progress = {
        let store = store.clone();
        let stop = progress_stop.clone();
        tokio::spawn(async move {
            let step = (target / 10).max(1);
            let mut next = step;
            loop {
                tokio::select! {
                    () = stop.cancelled() => return,
                    () = tokio::time::sleep(Duration::from_millis(500)) => {}
                }
                let head = store.head().seq;
                if head >= next {
                    eprintln!(
                        "  generated {head} events in {:.1} s",
                        started.elapsed().as_secs_f64()
                    );
                    next = (head / step + 1) * step;
                }
            }
        })
    };
    let mut tasks = tokio::task::JoinSet::new();
    for writer in 0..writers {
        let ledger = ledger.clone();
        let ids = ids.clone();
        let names: Vec<String> = (writer..args.clusters)
            .step_by(writers)
            .map(cluster_name)
            .collect();
        tasks.spawn(async move {
            let mut rng = StdRng::seed_from_u64(writer as u64);
            let mut models: Vec<ClusterModel> = names.into_iter().map(ClusterModel::new).collect();
            for model in &mut models {
                declare(&ledger, model, &ids).await.expect("a declaration");
            }
            while ledger.store().head().seq < target {
                let index = rng.random_range(0..models.len());
                let model = &mut models[index];
                let result = if rng.random_bool(0.75) {
                    scale_story(&ledger, model, &mut rng, &ids).await
                } else {
                    firewall_story(&ledger, model, &mut rng, &ids).await
                };
                result.expect("a story");
            }
        });
    }
    while let Some(result) = tasks.join_next().await {
        result.expect("a writer task");
    }
    let seconds = started.elapsed().as_secs_f64();
    progress_stop.cancel();
    let _ = progress.await;
    let events = store.head().seq;
    ledger
        .wait_applied(events)
        .await
        .expect("the follower catches up");
    follow_stop.cancel();
    follower.await.expect("the follower ends");
    // A snapshot in progress holds the ledger; let it finish before closing.
    while Arc::strong_count(&ledger) > 1 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    drop(ledger);
    let snapshots = store
        .snapshot_seqs()
        .await
        .expect("the snapshot seqs")
        .len();
    store.close().await;
    drop(store);
    Generated {
        seconds,
        events,
        snapshots,
        disk_bytes: disk_bytes(dir),
    }
}

// ---------------------------------------------------------------------------
// In-process reads, replay, backup
// ---------------------------------------------------------------------------

struct PointReads {
    by_seq: Summary,
    by_seq_not_found: usize,
    by_time: Summary,
    by_time_not_found: usize,
}

/// One `cluster_at`: its latency in ms, and whether the cluster did not exist yet.
async fn read_at(ledger: &Ledger, name: &str, point: Point) -> (f64, bool) {
    let begun = Instant::now();
    let result = ledger.cluster_at(name, point).await;
    let elapsed = ms(begun.elapsed());
    match result {
        Ok(at) => {
            assert!(at.stream_version > 0);
            (elapsed, false)
        }
        Err(LedgerError::ClusterNotFoundAt { .. }) => (elapsed, true),
        Err(error) => panic!("cluster_at({name}, {point}) failed: {error}"),
    }
}

async fn point_reads(ledger: &Ledger, args: &Args, rng: &mut StdRng) -> PointReads {
    let store = ledger.store().clone();
    let head = store.head().seq;
    let first_time = store.read(0, 1).await.expect("seq 1")[0].time;
    let last_time = store.read(head - 1, 1).await.expect("the head")[0].time;
    let span = (last_time - first_time)
        .num_microseconds()
        .unwrap_or(0)
        .max(1);
    let mut by_seq = Vec::new();
    let mut by_seq_not_found = 0;
    for _ in 0..args.point_reads {
        let seq = rng.random_range(1..=head);
        let name = cluster_name(rng.random_range(0..args.clusters));
        let (elapsed, not_found) = read_at(ledger, &name, Point::Seq(seq)).await;
        by_seq.push(elapsed);
        by_seq_not_found += usize::from(not_found);
    }
    let mut by_time = Vec::new();
    let mut by_time_not_found = 0;
    for _ in 0..args.time_reads {
        let time = first_time + chrono::TimeDelta::microseconds(rng.random_range(0..=span));
        let name = cluster_name(rng.random_range(0..args.clusters));
        let (elapsed, not_found) = read_at(ledger, &name, Point::Time(time)).await;
        by_time.push(elapsed);
        by_time_not_found += usize::from(not_found);
    }
    PointReads {
        by_seq: Summary::of(by_seq),
        by_seq_not_found,
        by_time: Summary::of(by_time),
        by_time_not_found,
    }
}

/// Where a `cluster_at` spends its time, timed part by part through the
/// public API (as `Ledger::cluster_at` does it) for `count` random (seq,
/// cluster) pairs: the snapshot part (read and decoded), the events of the
/// cluster's two streams after it up to the seq (through the per-stream
/// index), and their fold.
async fn point_read_parts(
    ledger: &Ledger,
    snapshot_seqs: &[u64],
    pairs: &[(u64, String)],
    page_size: usize,
) -> String {
    let store = ledger.store().clone();
    let count = pairs.len();
    let (mut part_ms, mut read_ms, mut fold_ms, mut events, mut fetched) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new(), 0usize);
    for (seq, name) in pairs {
        let (seq, name) = (*seq, name.clone());
        let snapshot = snapshot_seqs
            .iter()
            .rev()
            .find(|snapshot| **snapshot <= seq)
            .copied()
            .unwrap_or(0);
        let begun = Instant::now();
        let part = if snapshot > 0 {
            store
                .snapshot_part(snapshot, &name)
                .await
                .expect("a snapshot part")
        } else {
            None
        };
        let mut projections = Projections::from_cluster_part(&name, snapshot, part.as_deref())
            .expect("the part decodes");
        part_ms.push(ms(begun.elapsed()));
        let begun = Instant::now();
        let (cluster_version, reconcile_version) = projections.cluster_stream_versions(&name);
        let mut folded = Vec::new();
        for (stream, mut after) in [
            (cluster_stream(&name), cluster_version),
            (reconcile_stream(&name), reconcile_version),
        ] {
            loop {
                let page = store
                    .read_stream(&stream, after, page_size)
                    .await
                    .expect("read_stream");
                fetched += page.len();
                let mut done = page.len() < page_size;
                for event in page {
                    if event.seq > seq {
                        done = true;
                        break;
                    }
                    after = event.version;
                    folded.push(event);
                }
                if done {
                    break;
                }
            }
        }
        read_ms.push(ms(begun.elapsed()));
        folded.sort_by_key(|event| event.seq);
        let begun = Instant::now();
        for event in &folded {
            projections.apply(event);
        }
        fold_ms.push(ms(begun.elapsed()));
        events.push(folded.len() as f64);
    }
    let mean = |values: &[f64]| values.iter().sum::<f64>() / values.len().max(1) as f64;
    let (part_mean, read_mean, fold_mean, events_mean) = (
        mean(&part_ms),
        mean(&read_ms),
        mean(&fold_ms),
        mean(&events),
    );
    let events = Summary::of(events);
    format!(
        "{count} reads, pages of {page_size}: snapshot part mean {part_mean:.2} ms (p50/p99/max {}); \
         stream reads mean {read_mean:.2} ms (p50/p99/max {}); fold mean {fold_mean:.3} ms; \
         events folded per query mean {events_mean:.0}, p50 {:.0}, p99 {:.0}, max {:.0}; \
         events fetched per query mean {:.0}",
        Summary::of(part_ms).text(),
        Summary::of(read_ms).text(),
        events.p50,
        events.p99,
        events.max,
        fetched as f64 / count.max(1) as f64
    )
}

struct Transfer {
    seconds: f64,
    events: u64,
    bytes: u64,
}

impl Transfer {
    fn text(&self) -> String {
        format!(
            "{:.0} events/s, {:.1} MB/s ({} events, {:.1} MB in {:.1} s)",
            self.events as f64 / self.seconds,
            self.bytes as f64 / 1e6 / self.seconds,
            self.events,
            self.bytes as f64 / 1e6,
            self.seconds
        )
    }
}

async fn export(store: Arc<dyn EventStore>, file: &Path) -> Transfer {
    let begun = Instant::now();
    let output = File::create(file).expect("the export file");
    let mut writer = BufWriter::with_capacity(1024 * 1024, output);
    let summary = backup::write_export(store, &mut writer)
        .await
        .expect("the export");
    let output = writer.into_inner().expect("the export flushes");
    output.sync_all().expect("the export syncs");
    Transfer {
        seconds: begun.elapsed().as_secs_f64(),
        events: summary.events,
        bytes: std::fs::metadata(file).expect("the export file").len(),
    }
}

/// How an import ended: the whole file, or stopped at the memory limit.
struct Imported {
    transfer: Transfer,
    /// Set when the import was stopped: the bench's VmRSS went over the limit.
    stopped_at_rss_kib: Option<u64>,
    /// The bench's VmRSS when the import started, and at its end.
    rss_before_kib: u64,
    rss_after_kib: u64,
}

/// Imports the export into a fresh store (`backup::import_into_store`, which
/// `import_into_dir` and `cairn import` run in a staging directory), watching
/// this process's memory: past `limit_kib` the import is dropped and the rate
/// so far is reported, so that a growth in memory cannot take the machine down.
async fn import(
    file: &Path,
    target: &Path,
    expected: cairn::store::Head,
    limit_kib: u64,
) -> Imported {
    let store = cairn::store::open(cairn::store::StoreConfig::new(target)).expect("a fresh store");
    let input = BufReader::with_capacity(1024 * 1024, File::open(file).expect("the export"));
    let export_bytes = std::fs::metadata(file).expect("the export file").len();
    let rss_before_kib = proc_status_kib("self", "VmRSS:");
    let begun = Instant::now();
    let mut stopped_at_rss_kib = None;
    let outcome = {
        let import = backup::import_into_store(&*store, input);
        tokio::pin!(import);
        let mut tick = tokio::time::interval(Duration::from_millis(200));
        loop {
            tokio::select! {
                result = &mut import => break Some(result.expect("the import")),
                _ = tick.tick() => {
                    let rss = proc_status_kib("self", "VmRSS:");
                    if rss > limit_kib {
                        stopped_at_rss_kib = Some(rss);
                        break None;
                    }
                }
            }
        }
    };
    let seconds = begun.elapsed().as_secs_f64();
    let rss_after_kib = proc_status_kib("self", "VmRSS:");
    let events = store.head().seq;
    if outcome.is_some() {
        assert_eq!(
            store.head(),
            expected,
            "the imported head must be the original head"
        );
    }
    store.close().await;
    drop(store);
    Imported {
        transfer: Transfer {
            seconds,
            events,
            // The share of the file the imported events took.
            bytes: export_bytes * events / expected.seq.max(1),
        },
        stopped_at_rss_kib,
        rss_before_kib,
        rss_after_kib,
    }
}

// ---------------------------------------------------------------------------
// The daemon
// ---------------------------------------------------------------------------

/// The daemon process; killed if still running when dropped (a panic), so
/// the bench never leaves it behind.
struct DaemonProcess {
    child: Option<Child>,
    address: String,
    /// What the daemon wrote to standard error (warnings and errors only).
    stderr: Arc<Mutex<String>>,
}

impl DaemonProcess {
    fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// SIGTERM, then wait (at most 60 s, then SIGKILL).
    fn terminate(mut self) -> Duration {
        let mut child = self.child.take().expect("running");
        let begun = Instant::now();
        // SAFETY: kill(2) with a pid we spawned and still own (not reaped).
        unsafe {
            libc::kill(child.id() as i32, libc::SIGTERM);
        }
        loop {
            if let Some(status) = child.try_wait().expect("wait on the daemon") {
                assert!(status.success(), "the daemon exited with {status}");
                return begun.elapsed();
            }
            if begun.elapsed() > Duration::from_secs(60) {
                let _ = child.kill();
                let _ = child.wait();
                panic!("the daemon did not stop within 60 s of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

impl Drop for DaemonProcess {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

struct Startup {
    head_seq: u64,
    listening: Duration,
    ready: Duration,
    rss_kib: u64,
    hwm_kib: u64,
}

/// A field of /proc/<pid>/status in KiB (`pid` may be "self").
fn proc_status_kib(pid: impl std::fmt::Display, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("/proc status");
    status
        .lines()
        .find_map(|line| line.strip_prefix(field))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

async fn start_daemon(
    data_dir: &Path,
    config: &Path,
    client: &reqwest::Client,
) -> (DaemonProcess, Startup) {
    let begun = Instant::now();
    let mut command = Command::new(CAIRN_BINARY);
    command
        .arg("serve")
        .args(["--listen", "127.0.0.1:0", "--data-dir"])
        .arg(data_dir)
        .arg("--config")
        .arg(config)
        .env("CAIRN_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for variable in [
        "http_proxy",
        "HTTP_PROXY",
        "https_proxy",
        "HTTPS_PROXY",
        "all_proxy",
        "ALL_PROXY",
    ] {
        command.env_remove(variable);
    }
    let mut child = command.spawn().expect("the cairn binary starts");
    let stdout = child.stdout.take().expect("piped stdout");
    let mut stderr = child.stderr.take().expect("piped stderr");
    let log = Arc::new(Mutex::new(String::new()));
    {
        let log = log.clone();
        std::thread::spawn(move || {
            let mut text = String::new();
            let _ = std::io::Read::read_to_string(&mut stderr, &mut text);
            log.lock().expect("lock").push_str(&text);
        });
    }
    let mut process = DaemonProcess {
        child: Some(child),
        address: String::new(),
        stderr: log,
    };
    let line = tokio::task::spawn_blocking(move || {
        let mut reader = BufReader::new(stdout);
        let mut line = String::new();
        reader.read_line(&mut line).expect("the daemon's stdout");
        // Keep draining, so the daemon never blocks on a full pipe.
        std::thread::spawn(move || std::io::copy(&mut reader, &mut std::io::sink()));
        line
    })
    .await
    .expect("the line reader");
    let listening = begun.elapsed();
    process.address = line
        .trim()
        .strip_prefix("cairn listening on http://")
        .unwrap_or_else(|| panic!("unexpected first line from the daemon: {line:?}"))
        .to_string();
    let readyz = format!("http://{}/readyz", process.address);
    let head_seq = loop {
        if let Ok(response) = client.get(&readyz).send().await {
            if response.status() == reqwest::StatusCode::OK {
                let body: serde_json::Value = response.json().await.expect("the /readyz body");
                break body["headSeq"].as_u64().expect("headSeq");
            }
        }
        assert!(
            begun.elapsed() < Duration::from_secs(120),
            "the daemon never got ready"
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    };
    let ready = begun.elapsed();
    let pid = process.pid();
    let startup = Startup {
        head_seq,
        listening,
        ready,
        rss_kib: proc_status_kib(pid, "VmRSS:"),
        hwm_kib: proc_status_kib(pid, "VmHWM:"),
    };
    (process, startup)
}

async fn http_reads(
    client: &reqwest::Client,
    address: &str,
    head: u64,
    args: &Args,
    rng: &mut StdRng,
) -> (Summary, usize) {
    let mut latencies = Vec::new();
    let mut not_found = 0;
    for _ in 0..args.http_reads {
        let seq = rng.random_range(1..=head);
        let name = cluster_name(rng.random_range(0..args.clusters));
        let url = format!("http://{address}/v1/clusters/{name}?at={seq}");
        let begun = Instant::now();
        let response = client.get(&url).send().await.expect("GET ?at=");
        let status = response.status();
        let body = response.bytes().await.expect("the body");
        latencies.push(ms(begun.elapsed()));
        match status.as_u16() {
            200 => {}
            404 => not_found += 1,
            other => panic!("GET {url}: {other} {}", String::from_utf8_lossy(&body)),
        }
    }
    (Summary::of(latencies), not_found)
}

/// The live-stream client: its own thread and runtime, so the writer's
/// work does not delay its reads. Records when each event's seq arrived.
struct Watcher {
    received: Arc<Mutex<HashMap<u64, Instant>>>,
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<()>,
}

fn start_watcher(address: &str) -> Watcher {
    let url = format!("http://{address}/v1/watch");
    let received = Arc::new(Mutex::new(HashMap::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let (ready_sender, ready) = std::sync::mpsc::channel();
    let thread = {
        let received = received.clone();
        let stop = stop.clone();
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("the watcher's runtime");
            runtime.block_on(async move {
                let client = reqwest::Client::builder()
                    .no_proxy()
                    .build()
                    .expect("a client");
                let mut response = client
                    .get(&url)
                    .header("accept", "text/event-stream")
                    .send()
                    .await
                    .expect("GET /v1/watch");
                assert_eq!(response.status(), reqwest::StatusCode::OK);
                let mut buffer: Vec<u8> = Vec::new();
                let mut ready_sender = Some(ready_sender);
                while !stop.load(Ordering::Acquire) {
                    let chunk =
                        match tokio::time::timeout(Duration::from_millis(50), response.chunk())
                            .await
                        {
                            Err(_) => continue,
                            Ok(chunk) => chunk.expect("the stream reads"),
                        };
                    let now = Instant::now();
                    let Some(chunk) = chunk else { break };
                    buffer.extend_from_slice(&chunk);
                    while let Some(end) = buffer.windows(2).position(|pair| pair == b"\n\n") {
                        let message: Vec<u8> = buffer.drain(..end + 2).collect();
                        let text = String::from_utf8_lossy(&message);
                        let mut id = None;
                        let mut data = false;
                        for line in text.lines() {
                            if let Some(value) = line.strip_prefix("id:") {
                                id = value.trim().parse::<u64>().ok();
                            } else if line.starts_with("data:") {
                                data = true;
                            }
                        }
                        match (id, data) {
                            (Some(seq), true) => {
                                received.lock().expect("lock").insert(seq, now);
                            }
                            // The opening id-only message: the stream is live.
                            (Some(_), false) => {
                                if let Some(sender) = ready_sender.take() {
                                    let _ = sender.send(());
                                }
                            }
                            _ => {}
                        }
                    }
                }
            });
        })
    };
    ready
        .recv_timeout(Duration::from_secs(30))
        .expect("the watch stream opens");
    Watcher {
        received,
        stop,
        thread,
    }
}

struct StreamLatency {
    appends: usize,
    rate: f64,
    missing: usize,
    after_ack: Summary,
    after_send: Summary,
    append: Summary,
}

impl StreamLatency {
    /// Summarizes appends, each `(seq, sent, acknowledged)`, against the time
    /// the subscriber received each seq. Received − acknowledged is signed: a
    /// subscriber can have the event before the writer has its answer.
    fn of(
        sent_acked: &[(u64, Instant, Instant)],
        received: &HashMap<u64, Instant>,
        rate: f64,
    ) -> StreamLatency {
        let mut after_ack = Vec::new();
        let mut after_send = Vec::new();
        let mut append = Vec::new();
        let mut missing = 0;
        for (seq, sent, acked) in sent_acked {
            append.push(ms(*acked - *sent));
            match received.get(seq) {
                Some(at) => {
                    let delta = if at >= acked {
                        ms(*at - *acked)
                    } else {
                        -ms(*acked - *at)
                    };
                    after_ack.push(delta);
                    after_send.push(ms(*at - *sent));
                }
                None => missing += 1,
            }
        }
        StreamLatency {
            appends: sent_acked.len(),
            rate,
            missing,
            after_ack: Summary::of(after_ack),
            after_send: Summary::of(after_send),
            append: Summary::of(append),
        }
    }
}

async fn stream_latency(client: &reqwest::Client, address: &str, args: &Args) -> StreamLatency {
    let watcher = start_watcher(address);
    let total = (args.stream_rate * args.stream_seconds) as usize;
    let mut interval =
        tokio::time::interval(Duration::from_secs_f64(1.0 / args.stream_rate as f64));
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut sent_acked: Vec<(u64, Instant, Instant)> = Vec::with_capacity(total);
    let begun = Instant::now();
    for index in 0..total {
        interval.tick().await;
        // Round-robin over the clusters with a replica count that differs
        // from the one before (the generator keeps pools at 1..=8).
        let name = cluster_name(index % args.clusters);
        let replicas = 10 + (index / args.clusters) % 2;
        let url = format!("http://{address}/v1/clusters/{name}/pools/workers/scale");
        let sent = Instant::now();
        let response = client
            .post(&url)
            .json(&serde_json::json!({ "replicas": replicas }))
            .send()
            .await
            .expect("POST scale");
        let status = response.status();
        let body: serde_json::Value = response.json().await.expect("the scale answer");
        let acked = Instant::now();
        assert!(status.is_success(), "POST {url}: {status} {body}");
        for event in body["events"].as_array().expect("events") {
            let seq = event["seq"].as_u64().expect("seq");
            sent_acked.push((seq, sent, acked));
        }
    }
    let rate = total as f64 / begun.elapsed().as_secs_f64();
    let last = sent_acked.last().map_or(0, |(seq, _, _)| *seq);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !watcher.received.lock().expect("lock").contains_key(&last) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    watcher.stop.store(true, Ordering::Release);
    watcher.thread.join().expect("the watcher thread");
    let received = watcher.received.lock().expect("lock");
    // Signed: the stream may deliver before the answer arrives.
    StreamLatency::of(&sent_acked, &received, rate)
}

/// Append to subscriber in process: a task receives `subscribe_committed()`
/// of the reopened store while `Ledger::scale` appends one `PoolScaled` event
/// at a time at `--stream-rate` for `--stream-seconds` (the ledger's follower
/// running, as in the daemon). For each event, the time the task received it
/// minus the time `scale` returned (signed), and minus the time it was called,
/// on the monotonic clock; no HTTP and no SSE encoding in between.
async fn in_process_subscriber(ledger: &Arc<Ledger>, args: &Args) -> StreamLatency {
    let follow_stop = CancellationToken::new();
    let follower = tokio::spawn(ledger.clone().follow(follow_stop.clone()));
    let received: Arc<Mutex<HashMap<u64, Instant>>> = Arc::new(Mutex::new(HashMap::new()));
    let mut receiver = ledger.store().subscribe_committed();
    let subscriber = {
        let received = received.clone();
        tokio::spawn(async move {
            loop {
                match receiver.recv().await {
                    Ok(event) => {
                        let now = Instant::now();
                        received.lock().expect("lock").insert(event.seq, now);
                    }
                    // A lagging receiver misses events: they count as missing.
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                }
            }
        })
    };
    let total = (args.stream_rate * args.stream_seconds) as usize;
    let mut interval =
        tokio::time::interval(Duration::from_secs_f64(1.0 / args.stream_rate as f64));
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let context = user_context();
    let mut sent_acked: Vec<(u64, Instant, Instant)> = Vec::with_capacity(total);
    let begun = Instant::now();
    for index in 0..total {
        interval.tick().await;
        // Round-robin as the HTTP stream did, to counts neither it nor the
        // generator used, so that every scale appends an event.
        let name = cluster_name(index % args.clusters);
        let replicas = 12 + ((index / args.clusters) % 2) as i64;
        let sent = Instant::now();
        let outcome = ledger
            .scale(&name, "workers", replicas, None, &context)
            .await
            .unwrap_or_else(|error| panic!("scale {name} in process: {error}"));
        let acked = Instant::now();
        for event in &outcome.events {
            sent_acked.push((event.seq, sent, acked));
        }
    }
    let rate = total as f64 / begun.elapsed().as_secs_f64();
    let last = sent_acked.last().map_or(0, |(seq, _, _)| *seq);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !received.lock().expect("lock").contains_key(&last) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    subscriber.abort();
    let _ = subscriber.await;
    follow_stop.cancel();
    follower.await.expect("the follower ends");
    let received = received.lock().expect("lock");
    // Signed: the broadcast is sent before `scale` returns.
    StreamLatency::of(&sent_acked, &received, rate)
}

// ---------------------------------------------------------------------------
// HTTP load with wrk
// ---------------------------------------------------------------------------

/// What wrk measured on `GET /v1/clusters/{name}`.
struct WrkLoad {
    requests: u64,
    requests_per_s: f64,
    p50_ms: f64,
    p99_ms: f64,
    non_2xx: u64,
    socket_errors: String,
}

/// Fails early, with a clear message, when wrk is not installed.
fn check_wrk() {
    match Command::new("wrk").arg("-v").output() {
        Ok(_) => {}
        Err(error) => panic!(
            "the history bench runs wrk for GET /v1/clusters/{{name}} requests/s, and `wrk` \
             cannot be run ({error}): install it (`apt-get install -y wrk`)"
        ),
    }
}

/// A wrk latency such as `1.23ms`, `850.00us` or `1.02s`, in milliseconds.
fn wrk_duration_ms(text: &str) -> Option<f64> {
    let text = text.trim();
    let split = text.find(|c: char| c.is_ascii_alphabetic())?;
    let (number, unit) = text.split_at(split);
    let number: f64 = number.parse().ok()?;
    let factor = match unit {
        "us" => 0.001,
        "ms" => 1.0,
        "s" => 1000.0,
        "m" => 60_000.0,
        "h" => 3_600_000.0,
        _ => return None,
    };
    Some(number * factor)
}

/// Runs wrk against `GET /v1/clusters/{name}` of the daemon at `address`, a
/// cluster picked uniformly at random per request (a Lua script written to
/// `scratch`), and parses its report.
fn wrk_get_cluster(address: &str, args: &Args, scratch: &Path) -> WrkLoad {
    let script = scratch.join("get-cluster.lua");
    std::fs::write(
        &script,
        format!(
            "-- Written by tools/bench_history.rs: GET a random generated cluster.\n\
             local counter = 0\n\
             function setup(thread)\n  thread:set(\"id\", counter)\n  counter = counter + 1\nend\n\
             function init(args)\n  math.randomseed(4 + 7919 * (id or 0))\nend\n\
             function request()\n  \
             return wrk.format(\"GET\", string.format(\"/v1/clusters/c%04d\", math.random(0, {} - 1)))\n\
             end\n",
            args.clusters
        ),
    )
    .expect("the wrk script");
    let output = Command::new("wrk")
        .arg(format!("-t{}", args.wrk_threads))
        .arg(format!("-c{}", args.wrk_connections))
        .arg(format!("-d{}s", args.wrk_seconds))
        .arg("--latency")
        .arg("-s")
        .arg(&script)
        .arg(format!("http://{address}/"))
        .stdin(Stdio::null())
        .output()
        .expect("wrk runs");
    let text = String::from_utf8_lossy(&output.stdout).to_string();
    assert!(
        output.status.success(),
        "wrk failed ({}): {text}{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    let mut load = WrkLoad {
        requests: 0,
        requests_per_s: f64::NAN,
        p50_ms: f64::NAN,
        p99_ms: f64::NAN,
        non_2xx: 0,
        socket_errors: "none".into(),
    };
    for line in text.lines() {
        let line = line.trim();
        if let Some(rest) = line.strip_prefix("Requests/sec:") {
            load.requests_per_s = rest.trim().parse().unwrap_or(f64::NAN);
        } else if let Some(rest) = line.strip_prefix("Non-2xx or 3xx responses:") {
            load.non_2xx = rest.trim().parse().unwrap_or(u64::MAX);
        } else if let Some(rest) = line.strip_prefix("Socket errors:") {
            load.socket_errors = rest.trim().to_string();
        } else if let Some(rest) = line.strip_prefix("50%") {
            load.p50_ms = wrk_duration_ms(rest).unwrap_or(f64::NAN);
        } else if let Some(rest) = line.strip_prefix("99%") {
            load.p99_ms = wrk_duration_ms(rest).unwrap_or(f64::NAN);
        } else if line.contains(" requests in ") {
            load.requests = line
                .split_whitespace()
                .next()
                .and_then(|count| count.parse().ok())
                .unwrap_or(0);
        }
    }
    assert!(
        load.requests_per_s.is_finite(),
        "no Requests/sec line in wrk's report: {text}"
    );
    load
}

// ---------------------------------------------------------------------------

fn commit() -> String {
    Command::new("git")
        .args(["rev-parse", "--short", "HEAD"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .ok()
        .filter(|output| output.status.success())
        .map(|output| String::from_utf8_lossy(&output.stdout).trim().to_string())
        .unwrap_or_else(|| "unknown".into())
}

async fn run(args: Args) {
    let scratch = tempfile::tempdir().expect("a temporary directory");
    let data_dir = args
        .data_dir
        .clone()
        .unwrap_or_else(|| scratch.path().join("data"));
    let mut rng = StdRng::seed_from_u64(4);
    check_wrk();
    println!(
        "history bench at commit {}: {} events over {} clusters, {} writers in flight",
        commit(),
        args.events,
        args.clusters,
        args.in_flight
    );

    // 1. Generation.
    // The bytes on disk of a reused log, before the daemon touches it.
    let mut reused_disk_bytes = 0;
    let generated = if cairn::store::holds_a_log(&data_dir) {
        println!("reusing the log in {}", data_dir.display());
        reused_disk_bytes = disk_bytes(&data_dir);
        None
    } else {
        let generated = generate(&data_dir, &args).await;
        println!(
            "generated {} events in {:.1} s ({:.0} events/s); {} snapshots; {:.0} MB on disk, \
             {:.0} bytes per event (snapshots included)",
            generated.events,
            generated.seconds,
            generated.events as f64 / generated.seconds,
            generated.snapshots,
            generated.disk_bytes as f64 / 1e6,
            generated.disk_bytes as f64 / generated.events as f64,
        );
        println!(
            "bench process after generation: VmRSS {:.0} MiB, VmHWM {:.0} MiB",
            proc_status_kib("self", "VmRSS:") as f64 / 1024.0,
            proc_status_kib("self", "VmHWM:") as f64 / 1024.0
        );
        Some(generated)
    };

    // 2. The daemon, first start after the generating process closed the log.
    let config = scratch.path().join("cairn.toml");
    std::fs::write(&config, "[reconcile]\nenabled = false\n").expect("the config file");
    let client = reqwest::Client::builder()
        .no_proxy()
        .build()
        .expect("a client");
    let (daemon, startup) = start_daemon(&data_dir, &config, &client).await;
    println!(
        "daemon: listening after {:.0} ms, /readyz 200 after {:.0} ms; VmRSS {:.0} MiB, VmHWM {:.0} MiB",
        ms(startup.listening),
        ms(startup.ready),
        startup.rss_kib as f64 / 1024.0,
        startup.hwm_kib as f64 / 1024.0
    );
    let (http, http_not_found) =
        http_reads(&client, &daemon.address, startup.head_seq, &args, &mut rng).await;
    println!(
        "GET /v1/clusters/{{name}}?at=<seq>: {} reads, p50/p99/max {} ({http_not_found} 404 before the cluster existed)",
        http.count,
        http.text()
    );
    // wrk shares the machine's cores with the daemon (and this process).
    let wrk =
        tokio::task::block_in_place(|| wrk_get_cluster(&daemon.address, &args, scratch.path()));
    println!(
        "wrk GET /v1/clusters/{{name}} (random of {} clusters), {} threads, {} connections, {} s: \
         {:.0} requests/s ({} requests), latency p50 {:.2} ms, p99 {:.2} ms; {} non-2xx; \
         socket errors: {}",
        args.clusters,
        args.wrk_threads,
        args.wrk_connections,
        args.wrk_seconds,
        wrk.requests_per_s,
        wrk.requests,
        wrk.p50_ms,
        wrk.p99_ms,
        wrk.non_2xx,
        wrk.socket_errors
    );
    if wrk.non_2xx > 0 {
        println!("WARNING: wrk saw {} non-2xx answers", wrk.non_2xx);
    }

    // 3. The live stream.
    let stream = stream_latency(&client, &daemon.address, &args).await;
    println!(
        "live stream: {} appends at {:.0}/s, {} missing; received - acknowledged p50/p99/max {}; \
         received - sent {}; append round trip {}",
        stream.appends,
        stream.rate,
        stream.missing,
        stream.after_ack.text(),
        stream.after_send.text(),
        stream.append.text()
    );
    let pid = daemon.pid();
    let rss_after = proc_status_kib(pid, "VmRSS:");
    let hwm_after = proc_status_kib(pid, "VmHWM:");
    let daemon_log = daemon.stderr.clone();
    let stopped = daemon.terminate();
    // The reader thread ends with the process; give it a moment to hand over.
    std::thread::sleep(Duration::from_millis(50));
    let daemon_log = daemon_log.lock().expect("lock").clone();
    if !daemon_log.trim().is_empty() {
        println!("the daemon's warnings and errors:");
        for line in daemon_log.lines() {
            println!("    {line}");
        }
    }
    println!(
        "daemon after the load: VmRSS {:.0} MiB, VmHWM {:.0} MiB; stopped {:.0} ms after SIGTERM",
        rss_after as f64 / 1024.0,
        hwm_after as f64 / 1024.0,
        ms(stopped)
    );

    // 4. Reopen: the store, then the ledger (newest snapshot + tail).
    let begun = Instant::now();
    let store =
        cairn::store::open(cairn::store::StoreConfig::new(&data_dir)).expect("the store reopens");
    let store_open = begun.elapsed();
    let head = store.head();
    let snapshot_seqs = store.snapshot_seqs().await.expect("snapshot seqs");
    let begun = Instant::now();
    let ledger = Ledger::open_with(
        store.clone() as Arc<dyn EventStore>,
        LedgerConfig::default(),
    )
    .await
    .expect("the ledger reopens");
    let ledger_open = begun.elapsed();
    let tail = head.seq - snapshot_seqs.last().copied().unwrap_or(0);
    println!(
        "reopened: store {:.0} ms, Ledger::open_with {:.0} ms (snapshot at {:?}, tail {tail} events); head seq {}",
        ms(store_open),
        ms(ledger_open),
        snapshot_seqs.last(),
        head.seq
    );
    let reads = point_reads(&ledger, &args, &mut rng).await;
    println!(
        "cluster_at by seq: {} reads, p50/p99/max {} ({} before the cluster existed)",
        reads.by_seq.count,
        reads.by_seq.text(),
        reads.by_seq_not_found
    );
    println!(
        "cluster_at by time: {} reads, p50/p99/max {} ({} before the cluster existed)",
        reads.by_time.count,
        reads.by_time.text(),
        reads.by_time_not_found
    );
    // The same 500 points, read in pages of 1,024 stream events (as
    // `Ledger::cluster_at` does at this commit) and of 64.
    let pairs: Vec<(u64, String)> = (0..500)
        .map(|_| {
            let seq = rng.random_range(1..=head.seq);
            (seq, cluster_name(rng.random_range(0..args.clusters)))
        })
        .collect();
    for page_size in [1024, 64] {
        println!(
            "cluster_at parts: {}",
            point_read_parts(&ledger, &snapshot_seqs, &pairs, page_size).await
        );
    }
    let in_process = in_process_subscriber(&ledger, &args).await;
    println!(
        "in-process subscriber (subscribe_committed): {} appends at {:.0}/s, {} missing; \
         received - append returned p50/p99/max {}; received - append called {}; append {}",
        in_process.appends,
        in_process.rate,
        in_process.missing,
        in_process.after_ack.text(),
        in_process.after_send.text(),
        in_process.append.text()
    );
    // A snapshot in progress holds the ledger; let it finish before replaying.
    while Arc::strong_count(&ledger) > 1 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    drop(ledger);
    // The in-process appends moved the head.
    let head = store.head();

    // 5. Replay.
    let begun = Instant::now();
    let report = replay::replay(store.clone() as Arc<dyn EventStore>)
        .await
        .expect("the replay");
    let replay_wall = begun.elapsed();
    assert_eq!(report.events, head.seq);
    assert!(report.is_clean(), "a snapshot differs from the replay");
    println!(
        "replay: {} events in {:.2} s folding ({:.0} events/s), {:.2} s with {} snapshot checks, all the same",
        report.events,
        report.seconds,
        report.events_per_second,
        replay_wall.as_secs_f64(),
        report.snapshots.len()
    );

    // 6. Export, then import into a fresh store.
    let backup = if args.skip_backup {
        println!("export and import skipped (--skip-backup)");
        store.close().await;
        drop(store);
        None
    } else {
        let export_file = scratch.path().join("export.ndjson");
        let exported = export(store.clone() as Arc<dyn EventStore>, &export_file).await;
        println!("export: {}", exported.text());
        store.close().await;
        drop(store);
        let imported_dir = scratch.path().join("imported");
        let imported = import(
            &export_file,
            &imported_dir,
            head,
            args.import_rss_limit_mib * 1024,
        )
        .await;
        let import_text = match imported.stopped_at_rss_kib {
            None => format!(
                "{} (head hash matches); bench VmRSS {:.0} -> {:.0} MiB",
                imported.transfer.text(),
                imported.rss_before_kib as f64 / 1024.0,
                imported.rss_after_kib as f64 / 1024.0
            ),
            Some(rss) => format!(
            "STOPPED at VmRSS {:.0} MiB (limit {} MiB) after {} of {} events: {}; bench VmRSS grew \
             {:.1} KiB per imported event",
            rss as f64 / 1024.0,
            args.import_rss_limit_mib,
            imported.transfer.events,
            head.seq,
            imported.transfer.text(),
            (rss.saturating_sub(imported.rss_before_kib)) as f64
                / imported.transfer.events.max(1) as f64
        ),
        };
        println!("import: {import_text}");
        let _ = std::fs::remove_dir_all(&imported_dir);
        Some((exported, imported, import_text))
    };

    // 7. The daemon again: a restart after a clean stop.
    let (daemon, restart) = start_daemon(&data_dir, &config, &client).await;
    println!(
        "daemon restart: /readyz 200 after {:.0} ms; VmRSS {:.0} MiB, VmHWM {:.0} MiB",
        ms(restart.ready),
        restart.rss_kib as f64 / 1024.0,
        restart.hwm_kib as f64 / 1024.0
    );
    daemon.terminate();

    println!();
    println!("| figure | result | goal |");
    println!("|---|---|---|");
    if let Some(generated) = &generated {
        println!(
            "| generation (context) | {} events in {:.0} s, {:.0} events/s; {:.0} bytes/event on disk; {} snapshots | |",
            generated.events,
            generated.seconds,
            generated.events as f64 / generated.seconds,
            generated.disk_bytes as f64 / generated.events as f64,
            generated.snapshots
        );
    }
    println!(
        "| state at a random seq, `cluster_at`, p50 / p99 / max | {} | p99 < 10 ms |",
        reads.by_seq.text()
    );
    println!(
        "| state at a random time, `cluster_at`, p50 / p99 / max | {} | p99 < 10 ms |",
        reads.by_time.text()
    );
    println!(
        "| state at a random seq over HTTP, p50 / p99 / max | {} | p99 < 10 ms |",
        http.text()
    );
    println!(
        "| full replay from seq 1 | {:.0} events/s ({:.2} s) | > 500,000 events/s |",
        report.events_per_second, report.seconds
    );
    println!(
        "| in process: `Ledger::open_with` (snapshot + {tail}-event tail), after the store's open | {:.0} ms (+ {:.0} ms) | |",
        ms(ledger_open),
        ms(store_open)
    );
    println!(
        "| daemon start-up, spawn to /readyz 200: first start after the writer stopped / restart | {:.2} s / {:.2} s | < 2 s |",
        startup.ready.as_secs_f64(),
        restart.ready.as_secs_f64()
    );
    println!(
        "| daemon memory once ready, VmRSS / VmHWM | {:.0} / {:.0} MiB | |",
        startup.rss_kib as f64 / 1024.0,
        startup.hwm_kib as f64 / 1024.0
    );
    if let Some((exported, _, import_text)) = &backup {
        println!("| export (NDJSON file, fsynced) | {} | |", exported.text());
        println!("| import (fresh store) | {import_text} | |");
    }
    println!(
        "| live stream, received - acknowledged, p50 / p99 / max | {} | p99 < 5 ms |",
        stream.after_ack.text()
    );
    println!(
        "| live stream, received - request sent, p50 / p99 / max | {} | |",
        stream.after_send.text()
    );
    println!(
        "| in process, `subscribe_committed` received - `scale` returned, p50 / p99 / max | {} | |",
        in_process.after_ack.text()
    );
    println!(
        "| GET /v1/clusters/{{name}}, wrk {} threads / {} connections (sharing the 2 cores) | {:.0} requests/s, p50 {:.2} ms, p99 {:.2} ms, {} non-2xx | |",
        args.wrk_threads, args.wrk_connections, wrk.requests_per_s, wrk.p50_ms, wrk.p99_ms, wrk.non_2xx
    );

    let Some(json_out) = &args.json_out else {
        return;
    };
    // The goals of issue 6. Memory is compared in MiB: 200 MB is
    // 200,000,000 bytes, 190.73 MiB.
    const RSS_GOAL_MIB: f64 = 200e6 / (1024.0 * 1024.0);
    let rss_goal = "< 200 MB (190.7 MiB)";
    let mib = |kib: u64| kib as f64 / 1024.0;
    let mut figures = Figures::default();
    let (disk_total, disk_events) = match &generated {
        Some(generated) => (generated.disk_bytes, generated.events),
        None => (reused_disk_bytes, startup.head_seq),
    };
    if let Some(generated) = &generated {
        figures.add(
            "generate_events_per_s",
            generated.events as f64 / generated.seconds,
            "events/s",
        );
    }
    figures.add(
        "bytes_per_event",
        disk_total as f64 / disk_events.max(1) as f64,
        "bytes",
    );
    figures.add("disk_mb", disk_total as f64 / 1e6, "MB");
    figures.goal(
        "replay_events_per_s",
        report.events_per_second,
        "events/s",
        ">= 1,000,000 events/s",
        |value| value >= 1_000_000.0,
    );
    let point_goal = "p99 < 10 ms";
    for (name, summary) in [
        ("point", &reads.by_seq),
        ("point_time", &reads.by_time),
        ("point_http", &http),
    ] {
        figures.add(&format!("{name}_p50_ms"), summary.p50, "ms");
        figures.goal(
            &format!("{name}_p99_ms"),
            summary.p99,
            "ms",
            point_goal,
            |value| value < 10.0,
        );
    }
    figures.add("ledger_open_ms", ms(ledger_open), "ms");
    for (name, seconds) in [
        ("startup_first_s", startup.ready.as_secs_f64()),
        ("startup_restart_s", restart.ready.as_secs_f64()),
    ] {
        figures.goal(name, seconds, "s", "< 1 s", |value| value < 1.0);
    }
    figures.add("rss_ready_mib", mib(startup.rss_kib), "MiB");
    figures.goal(
        "rss_peak_mib",
        mib(startup.hwm_kib),
        "MiB",
        rss_goal,
        |value| value < RSS_GOAL_MIB,
    );
    figures.add("rss_restart_ready_mib", mib(restart.rss_kib), "MiB");
    figures.goal(
        "rss_peak_restart_mib",
        mib(restart.hwm_kib),
        "MiB",
        rss_goal,
        |value| value < RSS_GOAL_MIB,
    );
    figures.add("rss_after_load_mib", mib(rss_after), "MiB");
    figures.add("rss_peak_after_load_mib", mib(hwm_after), "MiB");
    figures.add("get_cluster_req_per_s", wrk.requests_per_s, "requests/s");
    figures.add("get_cluster_p50_ms", wrk.p50_ms, "ms");
    figures.add("get_cluster_p99_ms", wrk.p99_ms, "ms");
    figures.goal(
        "get_cluster_non_2xx",
        wrk.non_2xx as f64,
        "responses",
        "0",
        |value| value == 0.0,
    );
    for (prefix, latency) in [
        ("subscriber", &stream),
        ("subscriber_in_process", &in_process),
    ] {
        figures.add(&format!("{prefix}_p50_ms"), latency.after_ack.p50, "ms");
        figures.add(&format!("{prefix}_p99_ms"), latency.after_ack.p99, "ms");
        figures.add(
            &format!("{prefix}_sent_p99_ms"),
            latency.after_send.p99,
            "ms",
        );
        figures.add(&format!("{prefix}_append_p99_ms"), latency.append.p99, "ms");
        figures.goal(
            &format!("{prefix}_missing"),
            latency.missing as f64,
            "events",
            "0",
            |value| value == 0.0,
        );
    }
    if let Some((exported, imported, _)) = &backup {
        figures.add(
            "export_events_per_s",
            exported.events as f64 / exported.seconds,
            "events/s",
        );
        figures.add(
            "import_events_per_s",
            imported.transfer.events as f64 / imported.transfer.seconds,
            "events/s",
        );
        figures.goal(
            "import_complete",
            f64::from(u8::from(imported.stopped_at_rss_kib.is_none())),
            "bool",
            "1 (not stopped at the memory limit)",
            |value| value == 1.0,
        );
    }
    figures.write(
        json_out,
        "history",
        serde_json::json!({
            "events": startup.head_seq,
            "clusters": args.clusters,
            "in_flight": args.in_flight,
            "generated": generated.is_some(),
            "point_reads": args.point_reads,
            "time_reads": args.time_reads,
            "http_reads": args.http_reads,
            "stream_rate": args.stream_rate,
            "stream_seconds": args.stream_seconds,
            "wrk_threads": args.wrk_threads,
            "wrk_connections": args.wrk_connections,
            "wrk_seconds": args.wrk_seconds,
            "skip_backup": args.skip_backup,
            "commit": commit(),
        }),
    );
}

fn main() {
    let args = Args::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    runtime.block_on(run(args));
}
