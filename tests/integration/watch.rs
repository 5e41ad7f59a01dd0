//! The live stream, `GET /v1/watch`, read with reqwest chunks and the CLI's
//! own SSE parser against a real daemon: CloudEvents fields, `after=` and
//! `Last-Event-ID` resume, filters, heartbeats, a slow client, shutdown with a
//! stream open, and `cairn events --follow` across a daemon restart.

use std::collections::VecDeque;
use std::io::BufRead;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use cairn::cli::sse::{SseItem, SseMessage, SseParser};
use serde_json::Value;

use crate::harness::{
    get, http_client, manifest_with_name_and_worker_replicas, post_apply, Daemon,
    CAIRN_BINARY_PATH, LEDGER_ONLY_CONFIG,
};

/// How long a test waits for something the daemon should send.
const RECEIVE_DEADLINE: Duration = Duration::from_secs(30);

/// An open `GET /v1/watch`, parsed as it arrives.
struct Watch {
    response: reqwest::Response,
    parser: SseParser,
    pending: VecDeque<SseItem>,
}

impl Watch {
    /// Opens the stream and asserts that it is one.
    async fn open(
        client: &reqwest::Client,
        daemon: &Daemon,
        query: &str,
        last_event_id: Option<&str>,
    ) -> Watch {
        let mut request = client.get(daemon.url(&format!("/v1/watch{query}")));
        if let Some(id) = last_event_id {
            request = request.header("last-event-id", id);
        }
        let response = request.send().await.expect("the watch request is answered");
        assert_eq!(response.status().as_u16(), 200);
        assert_eq!(
            response.headers()["content-type"].to_str().unwrap(),
            "text/event-stream"
        );
        Watch {
            response,
            parser: SseParser::new(),
            pending: VecDeque::new(),
        }
    }

    /// The next message or comment; None when the daemon ended the stream.
    async fn next_item(&mut self) -> Option<SseItem> {
        let deadline = Instant::now() + RECEIVE_DEADLINE;
        loop {
            if let Some(item) = self.pending.pop_front() {
                return Some(item);
            }
            let chunk = tokio::time::timeout_at(deadline.into(), self.response.chunk())
                .await
                .expect("the daemon sends something before the deadline")
                .expect("the stream reads without error")?;
            self.pending.extend(self.parser.feed(&chunk));
        }
    }

    /// The next event (skipping heartbeats), with its CloudEvent.
    async fn next_event(&mut self) -> (SseMessage, Value) {
        loop {
            match self.next_item().await.expect("the stream is still open") {
                SseItem::Comment(_) => continue,
                SseItem::Message(message) => {
                    let cloud_event = serde_json::from_str(&message.data)
                        .unwrap_or_else(|error| panic!("{error}: {}", message.data));
                    return (message, cloud_event);
                }
            }
        }
    }

    /// The seqs of the next `count` events, checking that each SSE id is the
    /// CloudEvent's seq.
    async fn next_seqs(&mut self, count: usize) -> Vec<u64> {
        let mut seqs = Vec::with_capacity(count);
        for _ in 0..count {
            let (message, cloud_event) = self.next_event().await;
            let seq: u64 = cloud_event["seq"].as_str().unwrap().parse().unwrap();
            assert_eq!(message.id, Some(seq.to_string()));
            seqs.push(seq);
        }
        seqs
    }
}

/// Declares cluster `name` (one `ClusterDeclared`), as `actor`.
async fn declare(client: &reqwest::Client, daemon: &Daemon, name: &str, actor: &str) -> String {
    let manifest = manifest_with_name_and_worker_replicas(name, 5);
    let answer = post_apply(
        client,
        daemon,
        "/v1/apply",
        &manifest,
        &[("x-cairn-actor", actor)],
    )
    .await;
    answer.assert_status(201);
    answer.header("x-request-id")
}

/// Scales the workers of cluster `name` (one `PoolScaled`).
async fn scale(client: &reqwest::Client, daemon: &Daemon, name: &str, replicas: i64) {
    let response = client
        .post(daemon.url(&format!("/v1/clusters/{name}/pools/workers/scale")))
        .header("content-type", "application/json")
        .body(format!("{{\"replicas\": {replicas}}}"))
        .send()
        .await
        .expect("the scale request is answered");
    assert_eq!(
        response.status().as_u16(),
        200,
        "{}",
        response.text().await.unwrap()
    );
}

#[tokio::test]
async fn events_arrive_as_cloudevents_and_resume_by_after_and_last_event_id() {
    let data_directory = tempfile::tempdir().unwrap();
    let daemon = Daemon::start(data_directory.path());
    let client = http_client();
    let request_id = declare(&client, &daemon, "alpha", "alice").await;

    // after=0: from the start of the log.
    let mut watch = Watch::open(&client, &daemon, "?after=0", None).await;
    let (message, cloud_event) = watch.next_event().await;
    let stored = &get(&client, &daemon.url("/v1/events")).await.body["events"][0];
    assert_eq!(message.id.as_deref(), Some("1"));
    assert_eq!(message.event, "ClusterDeclared");
    assert_eq!(cloud_event["specversion"], "1.0");
    assert_eq!(cloud_event["id"], stored["id"]);
    assert_eq!(cloud_event["source"], "/cairn/cluster/alpha");
    assert_eq!(cloud_event["type"], "io.cairn.ClusterDeclared.v1");
    assert_eq!(cloud_event["time"], stored["time"]);
    assert_eq!(cloud_event["subject"], "cluster/alpha");
    assert_eq!(cloud_event["datacontenttype"], "application/json");
    assert_eq!(cloud_event["data"], stored["data"]);
    assert_eq!(cloud_event["seq"], "1");
    assert_eq!(cloud_event["streamversion"], "1");
    assert_eq!(cloud_event["actor"], "alice");
    assert_eq!(cloud_event["actorkind"], "user");
    assert_eq!(cloud_event["causekind"], "request");
    assert_eq!(cloud_event["cause"], request_id.as_str());
    assert_eq!(cloud_event["correlation"], stored["correlation"]);
    drop(watch);

    // No after: only what comes next. The stream starts once the answer's
    // headers are here, so everything appended from now on is in it.
    let mut watch = Watch::open(&client, &daemon, "", None).await;
    for replicas in 6..=8 {
        scale(&client, &daemon, "alpha", replicas).await;
    }
    assert_eq!(watch.next_seqs(1).await, vec![2]);
    // The client goes away mid-way; more is appended meanwhile.
    drop(watch);
    for replicas in 9..=11 {
        scale(&client, &daemon, "alpha", replicas).await;
    }
    // A reconnecting client keeps its URL: Last-Event-ID wins over after.
    let mut watch = Watch::open(&client, &daemon, "?after=0", Some("2")).await;
    assert_eq!(watch.next_seqs(5).await, vec![3, 4, 5, 6, 7]);
    scale(&client, &daemon, "alpha", 12).await;
    assert_eq!(watch.next_seqs(1).await, vec![8]);
    drop(watch);

    // A stream with no events yet still tells the client where it resumes.
    let mut watch = Watch::open(&client, &daemon, "", None).await;
    tokio::time::timeout(RECEIVE_DEADLINE, async {
        while watch.parser.last_event_id().is_none() {
            let chunk = watch.response.chunk().await.unwrap().unwrap();
            watch.pending.extend(watch.parser.feed(&chunk));
        }
    })
    .await
    .expect("the start position arrives");
    assert_eq!(watch.parser.last_event_id(), Some("8"));
    assert!(watch.pending.is_empty(), "{:?}", watch.pending);
    daemon.terminate();
}

#[tokio::test]
async fn filters_select_events_and_bad_requests_are_refused() {
    let data_directory = tempfile::tempdir().unwrap();
    let daemon = Daemon::start(data_directory.path());
    let client = http_client();
    declare(&client, &daemon, "alpha", "alice").await; // 1
    declare(&client, &daemon, "beta", "bob").await; // 2
    scale(&client, &daemon, "alpha", 6).await; // 3
    scale(&client, &daemon, "beta", 6).await; // 4
    declare(&client, &daemon, "gamma", "bob").await; // 5

    let mut by_stream = Watch::open(&client, &daemon, "?after=0&stream=cluster/beta", None).await;
    assert_eq!(by_stream.next_seqs(2).await, vec![2, 4]);
    let mut by_type = Watch::open(&client, &daemon, "?after=0&type=PoolScaled", None).await;
    assert_eq!(by_type.next_seqs(2).await, vec![3, 4]);
    let mut by_actor = Watch::open(&client, &daemon, "?after=0&actor=bob", None).await;
    assert_eq!(by_actor.next_seqs(2).await, vec![2, 5]);
    // Live events go through the same filters.
    scale(&client, &daemon, "beta", 7).await; // 6
    declare(&client, &daemon, "delta", "alice").await; // 7
    scale(&client, &daemon, "beta", 8).await; // 8
    assert_eq!(by_stream.next_seqs(2).await, vec![6, 8]);
    assert_eq!(by_type.next_seqs(2).await, vec![6, 8]);
    let mut by_alice = Watch::open(&client, &daemon, "?after=5&actor=alice", None).await;
    assert_eq!(by_alice.next_seqs(1).await, vec![7]);

    for (query, header, code, naming) in [
        ("?since=3", None, "bad_query", "since"),
        ("?after=x", None, "bad_query", "after"),
        ("?after=99", None, "bad_query", "after"),
        ("?type=PoolScaledd", None, "bad_query", "type"),
        ("?stream=", None, "bad_query", "stream"),
        ("", Some("abc"), "bad_header", "Last-Event-ID"),
        ("", Some("99"), "bad_header", "Last-Event-ID"),
    ] {
        let mut request = client.get(daemon.url(&format!("/v1/watch{query}")));
        if let Some(id) = header {
            request = request.header("last-event-id", id);
        }
        let answer = crate::harness::HttpAnswer::read(request.send().await.unwrap()).await;
        answer.assert_problem(400, code);
        let detail = answer.body["detail"].as_str().unwrap();
        assert!(detail.contains(naming), "{query} {header:?}: {detail}");
    }
    daemon.terminate();
}

/// The value of an unlabelled metric in `GET /metrics`.
async fn metric(client: &reqwest::Client, daemon: &Daemon, name: &str) -> f64 {
    let text = get(client, &daemon.url("/metrics")).await.body_text;
    text.lines()
        .find_map(|line| line.strip_prefix(&format!("{name} ")))
        .unwrap_or_else(|| panic!("no metric {name} in:\n{text}"))
        .parse()
        .unwrap()
}

/// Polls the open-streams gauge until it shows `expected`.
async fn wait_for_open_streams(client: &reqwest::Client, daemon: &Daemon, expected: f64) {
    let deadline = Instant::now() + RECEIVE_DEADLINE;
    loop {
        let open = metric(client, daemon, "cairn_watch_streams").await;
        if open == expected {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{open} streams open, expected {expected}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn an_idle_stream_gets_heartbeats_and_is_counted_while_open() {
    let data_directory = tempfile::tempdir().unwrap();
    let config = format!("{LEDGER_ONLY_CONFIG}[api]\nwatch_heartbeat_ms = 50\n");
    let daemon = Daemon::start_with_config(data_directory.path(), &config);
    let client = http_client();
    wait_for_open_streams(&client, &daemon, 0.0).await;
    let mut watch = Watch::open(&client, &daemon, "", None).await;
    let mut heartbeats = 0;
    while heartbeats < 3 {
        match watch.next_item().await.expect("the stream is open") {
            SseItem::Comment(text) => {
                assert_eq!(text, " heartbeat");
                heartbeats += 1;
            }
            SseItem::Message(message) => panic!("no event was appended: {message:?}"),
        }
    }
    wait_for_open_streams(&client, &daemon, 1.0).await;
    drop(watch);
    wait_for_open_streams(&client, &daemon, 0.0).await;
    daemon.terminate();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_client_gets_every_event_and_does_not_hold_up_appends() {
    const CLUSTERS: usize = 25;
    const SCALES_PER_CLUSTER: usize = 200;
    let total = CLUSTERS * (1 + SCALES_PER_CLUSTER);
    let data_directory = tempfile::tempdir().unwrap();
    let daemon = Daemon::start(data_directory.path());
    let client = http_client();
    // Opened, then not read until every append is done.
    let mut watch = Watch::open(&client, &daemon, "?after=0", None).await;
    let appends: Vec<_> = (0..CLUSTERS)
        .map(|cluster| {
            let client = client.clone();
            let name = format!("slow-{cluster}");
            let url = daemon.url(&format!("/v1/clusters/{name}/pools/workers/scale"));
            let manifest = manifest_with_name_and_worker_replicas(&name, 5);
            let apply_url = daemon.url("/v1/apply");
            tokio::spawn(async move {
                let declared = client
                    .post(apply_url)
                    .header("content-type", "application/yaml")
                    .body(manifest)
                    .send()
                    .await
                    .unwrap();
                assert_eq!(declared.status().as_u16(), 201);
                for step in 0..SCALES_PER_CLUSTER {
                    let response = client
                        .post(&url)
                        .body(format!("{{\"replicas\": {}}}", 6 + step % 2))
                        .send()
                        .await
                        .unwrap();
                    assert_eq!(response.status().as_u16(), 200);
                }
            })
        })
        .collect();
    // Every append is answered while the watcher reads nothing: it cannot
    // have held up the writer (the test's deadline would stop a stuck one).
    tokio::time::timeout(Duration::from_secs(300), async {
        for append in appends {
            append.await.unwrap();
        }
    })
    .await
    .expect("the appends finish while the watcher does not read");
    let seqs = watch.next_seqs(total).await;
    assert_eq!(seqs, (1..=total as u64).collect::<Vec<_>>());
    daemon.terminate();
}

#[tokio::test]
async fn a_daemon_with_an_open_stream_stops_promptly() {
    let data_directory = tempfile::tempdir().unwrap();
    // A watcher that held the shutdown up would make the daemon wait for
    // this long and then exit with an error.
    let config = format!("shutdown_timeout_seconds = 60\n{LEDGER_ONLY_CONFIG}");
    let mut daemon = Daemon::start_with_config(data_directory.path(), &config);
    let client = http_client();
    let mut watch = Watch::open(&client, &daemon, "?after=0", None).await;
    declare(&client, &daemon, "alpha", "alice").await;
    assert_eq!(watch.next_seqs(1).await, vec![1]);
    let started = Instant::now();
    daemon.send_terminate_signal();
    // The daemon ends the stream...
    loop {
        match watch.next_item().await {
            None => break,
            Some(SseItem::Comment(_)) => {}
            Some(SseItem::Message(message)) => panic!("unexpected event {message:?}"),
        }
    }
    // ... and exits cleanly, long before its shutdown deadline.
    let status = daemon.wait_for_exit(Duration::from_secs(20));
    assert!(
        status.success(),
        "{status}: {}",
        daemon.standard_error_so_far()
    );
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "stopping took {:?}",
        started.elapsed()
    );
}

/// `cairn events --follow` running in the background, its lines on a channel.
struct Follower {
    child: Child,
    lines: mpsc::Receiver<String>,
}

impl Follower {
    fn start(server: &str, arguments: &[&str]) -> Follower {
        let mut child = Command::new(CAIRN_BINARY_PATH)
            .args(["events", "--follow"])
            .args(arguments)
            .env("CAIRN_SERVER", server)
            .env_remove("CAIRN_TOKEN")
            .env_remove("http_proxy")
            .env_remove("HTTP_PROXY")
            .env_remove("all_proxy")
            .env_remove("ALL_PROXY")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("the cairn binary starts");
        let stdout = child.stdout.take().unwrap();
        let (sender, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout).lines() {
                let Ok(line) = line else { return };
                if sender.send(line).is_err() {
                    return;
                }
            }
        });
        Follower { child, lines }
    }

    /// The seqs of the next `count` lines.
    fn next_seqs(&self, count: usize) -> Vec<u64> {
        (0..count)
            .map(|_| {
                let line = self
                    .lines
                    .recv_timeout(RECEIVE_DEADLINE)
                    .expect("cairn events --follow prints a line");
                line.split_whitespace()
                    .next()
                    .and_then(|seq| seq.parse().ok())
                    .unwrap_or_else(|| panic!("a line starts with a seq: {line:?}"))
            })
            .collect()
    }
}

impl Drop for Follower {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test]
async fn cairn_events_follow_prints_every_event_once_across_a_daemon_restart() {
    let data_directory = tempfile::tempdir().unwrap();
    let daemon = Daemon::start(data_directory.path());
    let client = http_client();
    declare(&client, &daemon, "alpha", "alice").await; // 1
    declare(&client, &daemon, "beta", "bob").await; // 2
    let follower = Follower::start(&daemon.base_url(), &["--after", "1"]);
    let by_type = Follower::start(
        &daemon.base_url(),
        &["--type", "PoolScaled", "--after", "0"],
    );
    assert_eq!(follower.next_seqs(1), vec![2]);
    scale(&client, &daemon, "alpha", 6).await; // 3
    assert_eq!(follower.next_seqs(1), vec![3]);
    assert_eq!(by_type.next_seqs(1), vec![3]);

    // The daemon goes away and comes back on the same port; the follower
    // reconnects with the last id it printed.
    let address = daemon.address.to_string();
    daemon.terminate();
    let daemon = Daemon::start_with_config_on(data_directory.path(), LEDGER_ONLY_CONFIG, &address);
    // A new client: the old one's pooled connections went with the old daemon.
    let client = http_client();
    scale(&client, &daemon, "beta", 6).await; // 4
    scale(&client, &daemon, "alpha", 7).await; // 5
    declare(&client, &daemon, "gamma", "carol").await; // 6
    assert_eq!(follower.next_seqs(3), vec![4, 5, 6]);
    assert_eq!(by_type.next_seqs(2), vec![4, 5]);
    // Nothing was printed twice: the next line is the next event.
    scale(&client, &daemon, "gamma", 6).await; // 7
    assert_eq!(follower.next_seqs(1), vec![7]);
    assert_eq!(by_type.next_seqs(1), vec![7]);
    drop(follower);
    drop(by_type);
    daemon.terminate();
}
