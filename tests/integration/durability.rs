//! Durability: what the data directory holds after a clean stop, a crash
//! (`kill -9` under load) and tampering, checked with the real binary.
//!
//! The promise under test is the store's: an event is acknowledged only once
//! it is on disk, so every event a client saw in a 2xx answer must be in the
//! log after any restart, unchanged, with seqs gap-free and the hash chain
//! intact, and the projections rebuilt from the log must agree with it.

use std::collections::{BTreeMap, HashSet};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::harness::{
    all_events, example_manifest_text, get, http_client, manifest_with_name_and_pool_replicas,
    manifest_with_name_and_worker_replicas, pool_replicas, post_apply, run_command_line,
    run_to_exit_with_deadline, Daemon, CAIRN_BINARY_PATH,
};

/// What a client was told about one event in a 2xx answer.
#[derive(Debug, Clone, PartialEq, Eq)]
struct AcknowledgedEvent {
    seq: u64,
    id: String,
    hash: String,
    prev_hash: String,
    stream: String,
    version: u64,
    event_type: String,
}

impl AcknowledgedEvent {
    fn from_json(event: &Value) -> AcknowledgedEvent {
        let text = |field: &str| {
            event[field]
                .as_str()
                .unwrap_or_else(|| panic!("{field} is a string in {event}"))
                .to_string()
        };
        let number = |field: &str| {
            event[field]
                .as_u64()
                .unwrap_or_else(|| panic!("{field} is a number in {event}"))
        };
        AcknowledgedEvent {
            seq: number("seq"),
            id: text("id"),
            hash: text("hash"),
            prev_hash: text("prevHash"),
            stream: text("stream"),
            version: number("version"),
            event_type: text("type"),
        }
    }
}

/// Adds newly acknowledged events to the record of all of them. Two answers
/// that claim the same seq for different events would be a broken promise.
fn record_acknowledged_events(
    record: &mut BTreeMap<u64, AcknowledgedEvent>,
    new_events: Vec<AcknowledgedEvent>,
) {
    for event in new_events {
        if let Some(earlier) = record.get(&event.seq) {
            assert_eq!(
                earlier, &event,
                "two acknowledged answers disagree about seq {}",
                event.seq
            );
        }
        record.insert(event.seq, event);
    }
}

/// What a load run saw.
struct LoadOutcome {
    acknowledged: Vec<AcknowledgedEvent>,
    /// Answers that were neither 2xx nor a broken connection.
    unexpected_answers: Vec<String>,
    /// How many writers stopped because a request failed (the daemon went
    /// away under them) rather than because they were told to stop.
    writers_stopped_by_a_failed_request: usize,
}

/// Concurrent writers, each declaring its own cluster and then scaling both of
/// its pools back and forth with `POST /v1/apply` (two events per request, in
/// one atomic batch), until told to stop or until a request fails (as every
/// request does once the daemon is gone).
struct LoadGenerator {
    stop: Arc<AtomicBool>,
    acknowledged: Arc<Mutex<Vec<AcknowledgedEvent>>>,
    unexpected_answers: Arc<Mutex<Vec<String>>>,
    acknowledged_count: watch::Receiver<usize>,
    /// Each writer returns true when a failed request stopped it.
    writers: Vec<JoinHandle<bool>>,
}

impl LoadGenerator {
    fn start(daemon: &Daemon, cluster_names: &[String]) -> LoadGenerator {
        let stop = Arc::new(AtomicBool::new(false));
        let acknowledged = Arc::new(Mutex::new(Vec::new()));
        let unexpected_answers = Arc::new(Mutex::new(Vec::new()));
        let (count_sender, acknowledged_count) = watch::channel(0usize);
        let count_sender = Arc::new(count_sender);
        let apply_url = daemon.url("/v1/apply");
        let writers = cluster_names
            .iter()
            .map(|cluster_name| {
                let manifests = [
                    manifest_with_name_and_pool_replicas(cluster_name, 6, 3),
                    manifest_with_name_and_pool_replicas(cluster_name, 7, 4),
                ];
                let stop = stop.clone();
                let acknowledged = acknowledged.clone();
                let unexpected_answers = unexpected_answers.clone();
                let count_sender = count_sender.clone();
                let apply_url = apply_url.clone();
                tokio::spawn(async move {
                    let client = http_client();
                    let mut iteration = 0usize;
                    while !stop.load(Ordering::SeqCst) {
                        let manifest = manifests[iteration % 2].clone();
                        iteration += 1;
                        let sent = client
                            .post(&apply_url)
                            .header("content-type", "application/yaml")
                            .body(manifest)
                            .send()
                            .await;
                        let Ok(response) = sent else { return true };
                        let status = response.status().as_u16();
                        // A body cut off by the crash is no acknowledgement.
                        let Ok(body_text) = response.text().await else {
                            return true;
                        };
                        if status != 200 && status != 201 {
                            unexpected_answers
                                .lock()
                                .unwrap()
                                .push(format!("HTTP {status}: {body_text}"));
                            return true;
                        }
                        let body: Value =
                            serde_json::from_str(&body_text).expect("a 2xx answer is JSON");
                        let events: Vec<AcknowledgedEvent> = body["events"]
                            .as_array()
                            .expect("an apply answer has events")
                            .iter()
                            .map(AcknowledgedEvent::from_json)
                            .collect();
                        let new_count = events.len();
                        acknowledged.lock().unwrap().extend(events);
                        count_sender.send_modify(|count| *count += new_count);
                    }
                    false
                })
            })
            .collect();
        LoadGenerator {
            stop,
            acknowledged,
            unexpected_answers,
            acknowledged_count,
            writers,
        }
    }

    /// Waits until at least `target` events were acknowledged, or `deadline`
    /// passed, or every writer stopped. Returns the count acknowledged so far.
    async fn wait_for_acknowledged_events(&mut self, target: usize, deadline: Duration) -> usize {
        let _ = tokio::time::timeout(
            deadline,
            self.acknowledged_count.wait_for(|count| *count >= target),
        )
        .await;
        *self.acknowledged_count.borrow()
    }

    /// Tells the writers to stop, waits for them, and returns what they saw.
    async fn stop_and_collect(self) -> LoadOutcome {
        self.stop.store(true, Ordering::SeqCst);
        let mut writers_stopped_by_a_failed_request = 0;
        for writer in self.writers {
            let stopped_by_a_failed_request = tokio::time::timeout(Duration::from_secs(60), writer)
                .await
                .expect("a writer stops once its daemon is gone")
                .expect("a writer does not panic");
            if stopped_by_a_failed_request {
                writers_stopped_by_a_failed_request += 1;
            }
        }
        LoadOutcome {
            acknowledged: std::mem::take(&mut *self.acknowledged.lock().unwrap()),
            unexpected_answers: std::mem::take(&mut *self.unexpected_answers.lock().unwrap()),
            writers_stopped_by_a_failed_request,
        }
    }
}

/// Reads the whole log of a restarted daemon and checks it against every
/// acknowledged event and against the daemon's projections. Returns the log.
async fn assert_log_is_intact_and_holds_every_acknowledged_event(
    client: &reqwest::Client,
    daemon: &Daemon,
    acknowledged: &BTreeMap<u64, AcknowledgedEvent>,
) -> Vec<Value> {
    let log = all_events(client, daemon).await;
    let log_events: Vec<AcknowledgedEvent> = log.iter().map(AcknowledgedEvent::from_json).collect();

    // Seqs are exactly 1..=head, and each event links to the one before it.
    let mut previous_hash = "0".repeat(64);
    let mut seen_ids = HashSet::new();
    for (index, event) in log_events.iter().enumerate() {
        assert_eq!(
            event.seq,
            index as u64 + 1,
            "the seqs have a gap or a repeat"
        );
        assert_eq!(
            event.prev_hash, previous_hash,
            "seq {} does not link to the event before it",
            event.seq
        );
        assert!(
            seen_ids.insert(event.id.clone()),
            "event id {} repeats",
            event.id
        );
        previous_hash = event.hash.clone();
    }
    let head_seq = log_events.len() as u64;

    // Every acknowledged event is there, unchanged.
    for (seq, acknowledged_event) in acknowledged {
        let stored = log_events.get(*seq as usize - 1).unwrap_or_else(|| {
            panic!("acknowledged seq {seq} is missing: the log ends at seq {head_seq}")
        });
        assert_eq!(stored, acknowledged_event, "acknowledged seq {seq} changed");
    }

    // The daemon's own verification agrees.
    let verification = get(client, &daemon.url("/v1/verify")).await;
    verification.assert_status(200);
    assert_eq!(verification.body["ok"], true, "{}", verification.body_text);
    assert_eq!(verification.body["headSeq"], head_seq);
    assert_eq!(verification.body["eventsChecked"], head_seq);

    // A request's events are all there or none is: every scale request of the
    // load changes both pools, so it appended exactly two events.
    let mut events_per_request: BTreeMap<String, Vec<&str>> = BTreeMap::new();
    for (event, json) in log_events.iter().zip(&log) {
        let request_id = json["cause"]["request"]["requestId"]
            .as_str()
            .unwrap_or_else(|| panic!("an apply event names its request: {json}"));
        events_per_request
            .entry(request_id.to_string())
            .or_default()
            .push(event.event_type.as_str());
    }
    for (request_id, types) in &events_per_request {
        assert!(
            types[..] == ["ClusterDeclared"] || types[..] == ["PoolScaled", "PoolScaled"],
            "request {request_id} left a partial batch: {types:?}"
        );
    }

    // Per stream, versions count from 1 without gaps, and folding the events
    // gives the pool sizes that the projection shows.
    let pools = ["control-plane", "workers"];
    let mut streams: BTreeMap<String, (u64, BTreeMap<String, i64>)> = BTreeMap::new();
    for (event, json) in log_events.iter().zip(&log) {
        let (version, replicas) = streams.entry(event.stream.clone()).or_default();
        *version += 1;
        assert_eq!(
            event.version, *version,
            "stream {} skips a version",
            event.stream
        );
        match event.event_type.as_str() {
            "ClusterDeclared" => {
                for pool in pools {
                    replicas.insert(
                        pool.to_string(),
                        pool_replicas(&json["data"]["manifest"], pool),
                    );
                }
            }
            "PoolScaled" => {
                let pool = json["data"]["pool"].as_str().expect("pool is a string");
                let current = replicas.get(pool).copied();
                assert_eq!(
                    json["data"]["from"].as_i64(),
                    current,
                    "a PoolScaled event must start where the previous one ended: {json}"
                );
                let to = json["data"]["to"].as_i64().expect("to is a number");
                replicas.insert(pool.to_string(), to);
            }
            other => panic!("unexpected event type {other} in {json}"),
        }
    }
    let cluster_list = get(client, &daemon.url("/v1/clusters")).await;
    cluster_list.assert_status(200);
    assert_eq!(
        cluster_list.body["clusters"].as_array().unwrap().len(),
        streams.len(),
        "one cluster per stream"
    );
    for (stream, (version, replicas)) in &streams {
        let cluster_name = stream
            .strip_prefix("cluster/")
            .unwrap_or_else(|| panic!("unexpected stream {stream}"));
        let cluster = get(client, &daemon.url(&format!("/v1/clusters/{cluster_name}"))).await;
        cluster.assert_status(200);
        assert_eq!(cluster.body["streamVersion"], *version, "{cluster_name}");
        for pool in pools {
            assert_eq!(
                pool_replicas(&cluster.body["desired"], pool),
                replicas[pool],
                "the projection of {cluster_name} disagrees with its last event for {pool}"
            );
        }
    }
    log
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_acknowledged_event_survives_repeated_kill_9_under_load() {
    let data_directory = tempfile::tempdir().unwrap();
    let client = http_client();
    let cluster_names: Vec<String> = (0..32).map(|index| format!("crash-{index:02}")).collect();
    let mut acknowledged = BTreeMap::new();
    let mut daemon = Daemon::start(data_directory.path());
    // Each round kills at a different amount of work, so at a different moment.
    for (round, events_before_the_kill) in [300usize, 137, 229].into_iter().enumerate() {
        let mut load = LoadGenerator::start(&daemon, &cluster_names);
        let acknowledged_before_the_kill = load
            .wait_for_acknowledged_events(events_before_the_kill, Duration::from_millis(1500))
            .await;
        // The writers are still sending: this kill lands with requests in flight.
        daemon.kill_9();
        let outcome = load.stop_and_collect().await;
        assert!(
            outcome.unexpected_answers.is_empty(),
            "round {round}: answers other than 2xx: {:?}",
            outcome.unexpected_answers
        );
        assert!(
            acknowledged_before_the_kill >= 32,
            "round {round}: only {acknowledged_before_the_kill} events acknowledged; \
             the test needs real load to mean anything"
        );
        // A writer only checks the stop flag between requests, so a writer
        // that failed had a request in flight when the daemon died.
        assert!(
            outcome.writers_stopped_by_a_failed_request > 0,
            "round {round}: no request was in flight at the kill"
        );
        eprintln!(
            "round {round}: {acknowledged_before_the_kill} events acknowledged before the kill, \
             {} in total, {} writers had a request in flight",
            outcome.acknowledged.len(),
            outcome.writers_stopped_by_a_failed_request
        );
        record_acknowledged_events(&mut acknowledged, outcome.acknowledged);

        daemon = Daemon::start(data_directory.path());
        let log = assert_log_is_intact_and_holds_every_acknowledged_event(
            &client,
            &daemon,
            &acknowledged,
        )
        .await;
        assert!(log.len() >= acknowledged.len());
        eprintln!(
            "round {round}: after the restart the log holds {} events, {} of them acknowledged",
            log.len(),
            acknowledged.len()
        );
    }
    daemon.terminate();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_with_requests_in_flight_exits_cleanly_and_keeps_every_acknowledged_event() {
    let data_directory = tempfile::tempdir().unwrap();
    let client = http_client();
    let cluster_names: Vec<String> = (0..16)
        .map(|index| format!("graceful-{index:02}"))
        .collect();
    let daemon = Daemon::start(data_directory.path());
    let mut load = LoadGenerator::start(&daemon, &cluster_names);
    let acknowledged_before_the_signal = load
        .wait_for_acknowledged_events(100, Duration::from_secs(10))
        .await;
    assert!(
        acknowledged_before_the_signal >= 100,
        "only {acknowledged_before_the_signal} events acknowledged within 10 s"
    );

    // SIGTERM while the writers keep sending; `terminate` asserts exit status 0.
    tokio::task::spawn_blocking(move || daemon.terminate())
        .await
        .expect("the daemon shuts down cleanly");
    let outcome = load.stop_and_collect().await;
    assert!(
        outcome.unexpected_answers.is_empty(),
        "answers other than 2xx during shutdown: {:?}",
        outcome.unexpected_answers
    );
    eprintln!(
        "graceful: {acknowledged_before_the_signal} events acknowledged before SIGTERM, {} in total",
        outcome.acknowledged.len()
    );
    let mut acknowledged = BTreeMap::new();
    record_acknowledged_events(&mut acknowledged, outcome.acknowledged);

    let restarted = Daemon::start(data_directory.path());
    assert_log_is_intact_and_holds_every_acknowledged_event(&client, &restarted, &acknowledged)
        .await;
    restarted.terminate();
}

#[tokio::test]
async fn restart_keeps_the_projected_cluster_state_and_the_log() {
    let data_directory = tempfile::tempdir().unwrap();
    let client = http_client();
    let daemon = Daemon::start(data_directory.path());
    post_apply(&client, &daemon, "/v1/apply", &example_manifest_text(), &[])
        .await
        .assert_status(201);
    let scaled_to_seven = manifest_with_name_and_worker_replicas("prod-eu", 7);
    post_apply(&client, &daemon, "/v1/apply", &scaled_to_seven, &[])
        .await
        .assert_status(200);
    let other_cluster = manifest_with_name_and_worker_replicas("other-eu", 4);
    post_apply(&client, &daemon, "/v1/apply", &other_cluster, &[])
        .await
        .assert_status(201);

    let cluster_before = get(&client, &daemon.url("/v1/clusters/prod-eu")).await;
    cluster_before.assert_status(200);
    let list_before = get(&client, &daemon.url("/v1/clusters")).await;
    let history_before = get(&client, &daemon.url("/v1/clusters/prod-eu/history")).await;
    let log_before = all_events(&client, &daemon).await;
    assert_eq!(log_before.len(), 3);
    daemon.terminate();

    let restarted = Daemon::start(data_directory.path());
    let cluster_after = get(&client, &restarted.url("/v1/clusters/prod-eu")).await;
    cluster_after.assert_status(200);
    assert_eq!(cluster_after.body, cluster_before.body);
    assert_eq!(cluster_after.header("etag"), cluster_before.header("etag"));
    assert_eq!(
        get(&client, &restarted.url("/v1/clusters")).await.body,
        list_before.body
    );
    assert_eq!(
        get(&client, &restarted.url("/v1/clusters/prod-eu/history"))
            .await
            .body,
        history_before.body
    );
    assert_eq!(all_events(&client, &restarted).await, log_before);

    // The restarted daemon knows the state: the same manifest is no change,
    // and the next change continues the chain at seq 4.
    let repeated = post_apply(&client, &restarted, "/v1/apply", &scaled_to_seven, &[]).await;
    repeated.assert_status(200);
    assert_eq!(repeated.body["events"], serde_json::json!([]));
    let scaled_to_nine = manifest_with_name_and_worker_replicas("prod-eu", 9);
    let continued = post_apply(&client, &restarted, "/v1/apply", &scaled_to_nine, &[]).await;
    continued.assert_status(200);
    assert_eq!(continued.body["events"][0]["seq"], 4);
    assert_eq!(continued.body["events"][0]["version"], 3);
    assert_eq!(
        continued.body["events"][0]["prevHash"],
        log_before[2]["hash"]
    );
    assert_eq!(
        continued.body["events"][0]["data"],
        serde_json::json!({"pool": "workers", "from": 7, "to": 9})
    );
}

/// Copies a directory tree (a stopped daemon's data directory).
/// One frame of a segment file (docs/storage.md): where it is and what it holds.
struct FrameOnDisk {
    segment: std::path::PathBuf,
    offset: usize,
    length: usize,
    first_seq: u64,
    count: u64,
}

fn u32_at(bytes: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap())
}

/// Every frame of a stopped daemon's log, in order, read by following the
/// frame lengths from offset 64 of each segment file.
fn frames_on_disk(data_dir: &Path) -> Vec<FrameOnDisk> {
    let mut segments: Vec<_> = std::fs::read_dir(data_dir.join("log"))
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|extension| extension == "seg"))
        .collect();
    segments.sort();
    let mut frames = Vec::new();
    for segment in segments {
        let bytes = std::fs::read(&segment).unwrap();
        let mut offset = 64;
        while offset + 32 <= bytes.len() {
            let length = u32_at(&bytes, offset) as usize;
            if length == 0 {
                break;
            }
            frames.push(FrameOnDisk {
                segment: segment.clone(),
                offset,
                length,
                first_seq: u64::from_le_bytes(bytes[offset + 8..offset + 16].try_into().unwrap()),
                count: u32_at(&bytes, offset + 16) as u64,
            });
            offset += length;
        }
    }
    frames
}

/// Changes the record of `seq` in place with `change` (which must keep its
/// length); with `fix_checksum`, recomputes its frame's crc32c as a
/// tamperer who knows the format would.
fn rewrite_record(data_dir: &Path, seq: u64, fix_checksum: bool, change: impl FnOnce(&mut [u8])) {
    let frame = frames_on_disk(data_dir)
        .into_iter()
        .find(|frame| (frame.first_seq..frame.first_seq + frame.count).contains(&seq))
        .unwrap_or_else(|| panic!("seq {seq} is in no frame of {}", data_dir.display()));
    let mut bytes = std::fs::read(&frame.segment).unwrap();
    let meta_length = u32_at(&bytes, frame.offset + 24) as usize;
    let mut at = frame.offset + 32 + meta_length;
    for _ in frame.first_seq..seq {
        at += 4 + u32_at(&bytes, at) as usize;
    }
    let record_length = u32_at(&bytes, at) as usize;
    change(&mut bytes[at + 4..at + 4 + record_length]);
    if fix_checksum {
        let crc = crc32c::crc32c(&bytes[frame.offset + 8..frame.offset + frame.length]);
        bytes[frame.offset + 4..frame.offset + 8].copy_from_slice(&crc.to_le_bytes());
    }
    std::fs::write(&frame.segment, &bytes).unwrap();
}

/// A daemon on `data_path` whose log holds the example cluster and three
/// scale changes (four events of desired state).
async fn daemon_with_four_changes(client: &reqwest::Client, data_path: &Path) -> Daemon {
    let daemon = Daemon::start(data_path);
    post_apply(client, &daemon, "/v1/apply", &example_manifest_text(), &[])
        .await
        .assert_status(201);
    for replicas in [6, 7, 8] {
        let scaled = manifest_with_name_and_worker_replicas("prod-eu", replicas);
        post_apply(client, &daemon, "/v1/apply", &scaled, &[])
            .await
            .assert_status(200);
    }
    daemon
}

/// Runs `cairn serve` on `data_dir` until it exits (a daemon that cannot
/// open its log exits at once).
fn serve_until_exit(data_dir: &Path) -> crate::harness::ProcessOutput {
    let mut daemon = std::process::Command::new(CAIRN_BINARY_PATH);
    daemon
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(data_dir);
    run_to_exit_with_deadline(daemon, None, Duration::from_secs(20))
}

#[tokio::test]
async fn a_torn_last_write_is_cut_and_damage_before_the_end_is_refused() {
    let data_directory = tempfile::tempdir().unwrap();
    let data_path = data_directory.path().join("data");
    let client = http_client();
    let daemon = daemon_with_four_changes(&client, &data_path).await;
    let acknowledged = all_events(&client, &daemon).await;
    daemon.terminate();
    let pristine = data_directory.path().join("pristine");
    copy_directory(&data_path, &pristine);

    // A torn last write: half a frame after the last one (its length and
    // first bytes written, the rest still zeros), as a crash mid-write
    // leaves it. It was never acknowledged: the daemon cuts it and starts.
    let last = frames_on_disk(&data_path).pop().unwrap();
    let mut bytes = std::fs::read(&last.segment).unwrap();
    let torn_at = last.offset + last.length;
    bytes[torn_at..torn_at + 4].copy_from_slice(&512u32.to_le_bytes());
    bytes[torn_at + 4..torn_at + 40].fill(0xAB);
    std::fs::write(&last.segment, &bytes).unwrap();
    let daemon = Daemon::start(&data_path);
    let log = all_events(&client, &daemon).await;
    assert!(log.len() >= acknowledged.len());
    for (kept, before) in log.iter().zip(&acknowledged) {
        assert_eq!(
            kept["hash"], before["hash"],
            "the acknowledged events are all there"
        );
    }
    post_apply(
        &client,
        &daemon,
        "/v1/apply",
        &manifest_with_name_and_worker_replicas("prod-eu", 9),
        &[],
    )
    .await
    .assert_status(200);
    daemon.terminate();
    let after_cut = std::fs::read(&last.segment).unwrap();
    assert_ne!(
        &after_cut[torn_at + 4..torn_at + 40],
        &[0xAB; 36][..],
        "the torn bytes were replaced"
    );

    // Damage to an acknowledged frame with valid frames after it: a bit
    // flipped in the record of seq 2 of the untouched copy, its checksum
    // left as it was. The daemon refuses to start and names the file and
    // the offset; so does offline verification. Nothing is cut.
    let damaged_frame = frames_on_disk(&pristine)
        .into_iter()
        .find(|frame| (frame.first_seq..frame.first_seq + frame.count).contains(&2))
        .unwrap();
    rewrite_record(&pristine, 2, false, |record| {
        record[record.len() / 2] ^= 0x01
    });
    let before = std::fs::read(&damaged_frame.segment).unwrap();
    let refused = serve_until_exit(&pristine);
    assert_ne!(refused.exit_code, 0, "{}", refused.all_output());
    let segment_name = damaged_frame.segment.file_name().unwrap().to_str().unwrap();
    let offset = format!("offset {}", damaged_frame.offset);
    for needle in ["damaged", segment_name, offset.as_str()] {
        assert!(
            refused.all_output().contains(needle),
            "the refusal names {needle:?}: {}",
            refused.all_output()
        );
    }
    let verify = run_command_line(
        None,
        &["verify", "--data-dir", pristine.to_str().unwrap()],
        None,
    );
    assert_ne!(verify.exit_code, 0, "{}", verify.all_output());
    assert!(
        verify.all_output().contains(&offset),
        "{}",
        verify.all_output()
    );
    assert_eq!(
        std::fs::read(&damaged_frame.segment).unwrap(),
        before,
        "nothing of a damaged log is cut"
    );
}

fn copy_directory(source: &Path, destination: &Path) {
    std::fs::create_dir_all(destination).unwrap();
    for entry in std::fs::read_dir(source).unwrap() {
        let entry = entry.unwrap();
        let target = destination.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_directory(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}

#[tokio::test]
async fn offline_verify_names_the_first_tampered_seq() {
    let data_directory = tempfile::tempdir().unwrap();
    let data_path = data_directory.path().join("data");
    let client = http_client();
    let daemon = daemon_with_four_changes(&client, &data_path).await;
    let log = all_events(&client, &daemon).await;
    assert_eq!(log.len(), 4);
    daemon.terminate();
    let data_argument = data_path.to_str().unwrap();

    // Untouched, the data directory verifies.
    let intact = run_command_line(None, &["verify", "--data-dir", data_argument], None);
    assert_eq!(intact.exit_code, 0, "{}", intact.all_output());
    assert!(
        intact.standard_output.starts_with("ok: 4 events verified"),
        "{}",
        intact.standard_output
    );
    let untouched_copy = data_directory.path().join("untouched-copy");
    copy_directory(&data_path, &untouched_copy);

    // Flip one bit in the middle of the record of seq 3, as a tamperer who
    // knows the format would: the frame's checksum is fixed up, so only the
    // hash chain can tell.
    rewrite_record(&data_path, 3, true, |record| {
        let middle = record.len() / 2;
        record[middle] ^= 0x01;
    });

    let tampered = run_command_line(None, &["verify", "--data-dir", data_argument], None);
    assert_eq!(tampered.exit_code, 4, "{}", tampered.all_output());
    assert!(
        tampered.all_output().contains("seq 3"),
        "the failure names seq 3: {}",
        tampered.all_output()
    );
    let tampered_json = run_command_line(
        None,
        &["verify", "--data-dir", data_argument, "-o", "json"],
        None,
    );
    assert_eq!(tampered_json.exit_code, 4, "{}", tampered_json.all_output());
    let report: Value = serde_json::from_str(&tampered_json.standard_output).unwrap();
    assert_eq!(report["ok"], false);
    assert_eq!(report["firstBadSeq"], 3);
    assert_eq!(report["eventsChecked"], 2);

    // The copy taken before the tampering still verifies: the tool is not the difference.
    let copy_argument = untouched_copy.to_str().unwrap();
    let copy = run_command_line(None, &["verify", "--data-dir", copy_argument], None);
    assert_eq!(copy.exit_code, 0, "{}", copy.all_output());

    // A daemon on the tampered directory reports the same through the API and the client.
    let daemon = Daemon::start(&data_path);
    let verification = get(&client, &daemon.url("/v1/verify")).await;
    verification.assert_status(200);
    assert_eq!(verification.body["ok"], false, "{}", verification.body_text);
    assert_eq!(verification.body["firstBadSeq"], 3);
    let server = daemon.base_url();
    let remote = run_command_line(Some(&server), &["verify"], None);
    assert_eq!(remote.exit_code, 4, "{}", remote.all_output());
    assert!(
        remote.all_output().contains("seq 3"),
        "{}",
        remote.all_output()
    );
    daemon.terminate();
}

#[test]
fn a_second_process_on_the_data_directory_of_a_running_daemon_is_refused() {
    let data_directory = tempfile::tempdir().unwrap();
    let daemon = Daemon::start(data_directory.path());

    // A second daemon on the same data directory must not open it.
    let mut second_daemon = std::process::Command::new(CAIRN_BINARY_PATH);
    second_daemon
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(data_directory.path());
    let second = run_to_exit_with_deadline(second_daemon, None, Duration::from_secs(20));
    assert_ne!(second.exit_code, 0, "{second:?}");
    assert!(
        !second.standard_output.contains("listening"),
        "the second daemon must not serve: {second:?}"
    );
    assert!(
        second.standard_error.contains("in use by another process"),
        "{second:?}"
    );

    // Offline verification of a directory in use is refused too.
    let data_argument = data_directory.path().to_str().unwrap();
    let offline = run_command_line(None, &["verify", "--data-dir", data_argument], None);
    assert_eq!(offline.exit_code, 2, "{}", offline.all_output());
    assert!(
        offline.standard_error.contains("in use by another process"),
        "{}",
        offline.standard_error
    );

    // The first daemon is unharmed.
    daemon.terminate();
}

/// The index is derived: deleted, it is rebuilt at the next start;
/// `cairn reindex` rebuilds it offline; lookups by id answer the same after
/// both.
#[tokio::test]
async fn a_deleted_index_is_rebuilt_at_start_and_reindex_rebuilds_it_offline() {
    let data_directory = tempfile::tempdir().unwrap();
    let data_path = data_directory.path().join("data");
    let client = http_client();
    let daemon = Daemon::start(&data_path);
    post_apply(&client, &daemon, "/v1/apply", &example_manifest_text(), &[])
        .await
        .assert_status(201);
    let scaled = manifest_with_name_and_worker_replicas("prod-eu", 7);
    post_apply(&client, &daemon, "/v1/apply", &scaled, &[])
        .await
        .assert_status(200);
    let before = all_events(&client, &daemon).await;
    let last_id = before.last().unwrap()["id"].as_str().unwrap().to_string();
    daemon.terminate();

    let trace_finds = |daemon: &Daemon| {
        let url = daemon.url(&format!("/v1/events/{last_id}/trace"));
        let client = client.clone();
        async move { get(&client, &url).await.status }
    };

    std::fs::remove_file(data_path.join("index.redb")).unwrap();
    let daemon = Daemon::start(&data_path);
    assert_eq!(trace_finds(&daemon).await, 200);
    let after = all_events(&client, &daemon).await;
    assert_eq!(after[..before.len()], before[..]);
    daemon.terminate();

    let data_argument = data_path.to_str().unwrap();
    let reindexed = run_command_line(None, &["reindex", "--data-dir", data_argument], None);
    assert_eq!(reindexed.exit_code, 0, "{}", reindexed.all_output());
    assert!(
        reindexed.standard_output.starts_with("reindexed "),
        "{}",
        reindexed.standard_output
    );
    let daemon = Daemon::start(&data_path);
    assert_eq!(trace_finds(&daemon).await, 200);
    daemon.terminate();
}
