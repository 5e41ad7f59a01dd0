//! Audit queries end to end: every filter of `GET /v1/events` against what
//! the whole log says it should return, page after page; the causal trace of
//! a change and of a reconciler outcome, over HTTP and through `cairn trace`.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use serde_json::Value;

use crate::harness::{
    all_events, get, http_client, manifest_with_name_and_pool_replicas,
    manifest_with_name_and_worker_replicas, post_apply, run_command_line, Daemon,
};

/// Far above what convergence takes, so that only a stuck reconciler fails.
const CONVERGE_DEADLINE: Duration = Duration::from_secs(90);

/// A fast simulated cloud without failures; the resync is far away, so the
/// log stays still once the cluster has converged.
const SIM_CONFIG: &str = "[reconcile]\nresync_interval_ms = 600000\nbackoff_base_ms = 20\n\
    backoff_max_ms = 500\nconcurrency = 16\ncluster_concurrency = 16\n\n\
    [sim]\nseed = 7\nfailure_rate = 0.0\nlist_delay_ms = 0\n\n\
    [sim.latency_ms]\ncreate = 1\ndelete = 1\ndescribe = 0\nlookup = 0\nlist = 0\n";

fn seq(event: &Value) -> u64 {
    event["seq"].as_u64().expect("seq is a number")
}

fn time(event: &Value) -> DateTime<Utc> {
    event["time"]
        .as_str()
        .expect("time is a string")
        .parse()
        .expect("time is RFC 3339")
}

/// The seq an event's `Cause::Event` names, if it has one.
fn cause_seq(event: &Value) -> Option<u64> {
    event["cause"]["event"]["seq"].as_u64()
}

/// Percent-encodes a query value (ids, times, names used here).
fn encode(value: &str) -> String {
    value
        .replace('%', "%25")
        .replace('+', "%2B")
        .replace(':', "%3A")
}

/// The seqs of every page of `GET /v1/events?{query}&limit={limit}`,
/// following `next`; asserts that the cursor moves forward.
async fn paged_seqs(
    client: &reqwest::Client,
    daemon: &Daemon,
    query: &str,
    limit: u64,
) -> Vec<u64> {
    let mut seqs = Vec::new();
    let mut after = 0;
    for _ in 0..10_000 {
        let url = daemon.url(&format!("/v1/events?{query}&limit={limit}&after={after}"));
        let answer = get(client, &url).await;
        answer.assert_status(200);
        let page = answer.body["events"].as_array().expect("an events array");
        assert!(page.len() as u64 <= limit, "{query}: {}", answer.body_text);
        seqs.extend(page.iter().map(seq));
        match answer.body["next"].as_str() {
            None => return seqs,
            Some(next) => {
                let next: u64 = next.parse().expect("the cursor is a seq");
                assert!(next > after, "{query}: the cursor must move forward");
                after = next;
            }
        }
    }
    panic!("{query}: too many pages");
}

/// Asserts that the query returns exactly the events `expected` selects
/// from the whole log, with pages of several sizes.
async fn check_filter(
    client: &reqwest::Client,
    daemon: &Daemon,
    log: &[Value],
    query: &str,
    expected: impl Fn(&Value) -> bool,
) {
    let expected: Vec<u64> = log.iter().filter(|e| expected(e)).map(seq).collect();
    for limit in [1, 3, 1000] {
        assert_eq!(
            paged_seqs(client, daemon, query, limit).await,
            expected,
            "GET /v1/events?{query} with limit {limit}"
        );
    }
}

/// Asserts a 400 problem whose detail names the parameter.
async fn assert_bad_parameter(client: &reqwest::Client, daemon: &Daemon, query: &str, name: &str) {
    let answer = get(client, &daemon.url(&format!("/v1/events?{query}"))).await;
    answer.assert_problem(400, "bad_query");
    assert!(
        answer.body["detail"].as_str().unwrap().contains(name),
        "{query}: the detail must name {name}: {}",
        answer.body_text
    );
}

async fn apply_as(
    client: &reqwest::Client,
    daemon: &Daemon,
    manifest: &str,
    headers: &[(&str, &str)],
) -> Value {
    let answer = post_apply(client, daemon, "/v1/apply", manifest, headers).await;
    assert!(
        answer.status == 200 || answer.status == 201,
        "apply failed: {}",
        answer.body_text
    );
    answer.body
}

#[tokio::test]
async fn every_event_filter_returns_exactly_its_events_across_pages() {
    let data_directory = tempfile::tempdir().unwrap();
    let daemon = Daemon::start(data_directory.path());
    let client = http_client();
    let alice = [("x-cairn-actor", "alice")];
    let bob = [("x-cairn-actor", "bob")];
    apply_as(
        &client,
        &daemon,
        &manifest_with_name_and_worker_replicas("f-a", 5),
        &alice,
    )
    .await;
    apply_as(
        &client,
        &daemon,
        &manifest_with_name_and_worker_replicas("f-b", 5),
        &bob,
    )
    .await;
    apply_as(
        &client,
        &daemon,
        &manifest_with_name_and_worker_replicas("f-a", 7),
        &bob,
    )
    .await;
    apply_as(
        &client,
        &daemon,
        &manifest_with_name_and_pool_replicas("f-a", 7, 5),
        &alice,
    )
    .await;
    let keyed = [
        ("x-cairn-actor", "alice"),
        ("idempotency-key", "key-two-scales"),
        ("x-cairn-reason", "two at once"),
    ];
    let two = apply_as(
        &client,
        &daemon,
        &manifest_with_name_and_pool_replicas("f-b", 2, 1),
        &keyed,
    )
    .await;
    assert_eq!(two["events"].as_array().unwrap().len(), 2);
    apply_as(
        &client,
        &daemon,
        &manifest_with_name_and_worker_replicas("f-c", 3),
        &bob,
    )
    .await;
    let paused = client
        .post(daemon.url("/v1/clusters/f-b/pause"))
        .header("x-cairn-actor", "bob")
        .send()
        .await
        .unwrap();
    assert_eq!(paused.status(), 200);
    apply_as(
        &client,
        &daemon,
        &manifest_with_name_and_worker_replicas("f-c", 4),
        &alice,
    )
    .await;

    let log = all_events(&client, &daemon).await;
    assert_eq!(log.len(), 9);
    let request_id = two["events"][0]["cause"]["request"]["requestId"]
        .as_str()
        .unwrap()
        .to_string();
    let correlation = two["events"][0]["correlation"]
        .as_str()
        .unwrap()
        .to_string();

    check_filter(&client, &daemon, &log, "stream=cluster/f-a", |e| {
        e["stream"] == "cluster/f-a"
    })
    .await;
    check_filter(&client, &daemon, &log, "type=PoolScaled", |e| {
        e["type"] == "PoolScaled"
    })
    .await;
    check_filter(&client, &daemon, &log, "actor=alice", |e| {
        e["actor"]["name"] == "alice"
    })
    .await;
    check_filter(&client, &daemon, &log, "actor=user:bob", |e| {
        e["actor"]["name"] == "bob"
    })
    .await;
    check_filter(&client, &daemon, &log, "actor=reconciler:bob", |_| false).await;
    check_filter(
        &client,
        &daemon,
        &log,
        &format!("correlation={correlation}"),
        |e| e["correlation"] == correlation.as_str(),
    )
    .await;
    // A request id or an idempotency key as the cause: the request's events.
    check_filter(
        &client,
        &daemon,
        &log,
        &format!("cause={request_id}"),
        |e| e["cause"]["request"]["requestId"] == request_id.as_str(),
    )
    .await;
    check_filter(&client, &daemon, &log, "cause=key-two-scales", |e| {
        e["cause"]["request"]["idempotencyKey"] == "key-two-scales"
    })
    .await;
    // Nothing here is caused by an event: no reconcilers run.
    let first_id = log[0]["id"].as_str().unwrap();
    check_filter(&client, &daemon, &log, &format!("cause={first_id}"), |_| {
        false
    })
    .await;

    // since/until by seq and by time, both inclusive, alone and with others.
    check_filter(&client, &daemon, &log, "since=3&until=7", |e| {
        (3..=7).contains(&seq(e))
    })
    .await;
    check_filter(&client, &daemon, &log, "since=4", |e| seq(e) >= 4).await;
    check_filter(&client, &daemon, &log, "until=2", |e| seq(e) <= 2).await;
    let (from, to) = (time(&log[2]), time(&log[6]));
    let (from_text, to_text) = (
        encode(log[2]["time"].as_str().unwrap()),
        encode(log[6]["time"].as_str().unwrap()),
    );
    check_filter(
        &client,
        &daemon,
        &log,
        &format!("since={from_text}&until={to_text}"),
        |e| (from..=to).contains(&time(e)),
    )
    .await;
    check_filter(&client, &daemon, &log, &format!("since={from_text}"), |e| {
        time(e) >= from
    })
    .await;
    check_filter(&client, &daemon, &log, &format!("until={to_text}"), |e| {
        time(e) <= to
    })
    .await;
    let offset = encode(&(from + chrono::Duration::microseconds(1)).to_rfc3339());
    check_filter(&client, &daemon, &log, &format!("since={offset}"), |e| {
        time(e) > from
    })
    .await;
    check_filter(&client, &daemon, &log, "until=2001-01-01T00:00:00Z", |_| {
        false
    })
    .await;
    check_filter(&client, &daemon, &log, "since=9&until=3", |_| false).await;
    check_filter(
        &client,
        &daemon,
        &log,
        &format!("stream=cluster/f-b&actor=alice&since={from_text}"),
        |e| e["stream"] == "cluster/f-b" && e["actor"]["name"] == "alice" && time(e) >= from,
    )
    .await;
    check_filter(
        &client,
        &daemon,
        &log,
        &format!("type=PoolScaled&correlation={correlation}&until=6"),
        |e| e["type"] == "PoolScaled" && e["correlation"] == correlation.as_str() && seq(e) <= 6,
    )
    .await;

    // Bad parameters: 400 naming them.
    assert_bad_parameter(&client, &daemon, "colour=red", "colour").await;
    assert_bad_parameter(&client, &daemon, "since=yesterday", "since").await;
    assert_bad_parameter(&client, &daemon, "until=-3", "until").await;
    assert_bad_parameter(&client, &daemon, "correlation=not-a-uuid", "correlation").await;
    assert_bad_parameter(&client, &daemon, "actor=robot:alice", "actor").await;
    assert_bad_parameter(&client, &daemon, "actor=", "actor").await;
    assert_bad_parameter(&client, &daemon, "cause=", "cause").await;
    assert_bad_parameter(&client, &daemon, "after=x", "after").await;
    assert_bad_parameter(&client, &daemon, "limit=0", "limit").await;

    // The command line passes the filters through.
    let output = run_command_line(
        Some(&daemon.base_url()),
        &[
            "events",
            "--actor",
            "user:alice",
            "--since",
            "2",
            "--until",
            "8",
            "-o",
            "json",
        ],
        None,
    );
    assert_eq!(output.exit_code, 0, "{}", output.all_output());
    let page: Value = serde_json::from_str(&output.standard_output).unwrap();
    let seqs: Vec<u64> = page["events"].as_array().unwrap().iter().map(seq).collect();
    let expected: Vec<u64> = log
        .iter()
        .filter(|e| e["actor"]["name"] == "alice" && (2..=8).contains(&seq(e)))
        .map(seq)
        .collect();
    assert_eq!(seqs, expected);
    let output = run_command_line(
        Some(&daemon.base_url()),
        &["events", "--since", "soon"],
        None,
    );
    assert_eq!(output.exit_code, 1, "{}", output.all_output());
    assert!(
        output.standard_error.contains("since"),
        "{}",
        output.all_output()
    );
}

/// Waits until the cluster's Ready condition is True (Converged).
async fn wait_ready(client: &reqwest::Client, daemon: &Daemon, name: &str) {
    let started = Instant::now();
    loop {
        let answer = get(client, &daemon.url(&format!("/v1/clusters/{name}"))).await;
        let ready = answer.body["conditions"]
            .as_array()
            .is_some_and(|conditions| {
                conditions.iter().any(|c| {
                    c["type"] == "Ready" && c["status"] == "True" && c["reason"] == "Converged"
                })
            });
        if ready {
            return;
        }
        assert!(
            started.elapsed() < CONVERGE_DEADLINE,
            "cluster {name} did not converge"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn entry_seqs(entries: &Value) -> Vec<u64> {
    entries
        .as_array()
        .expect("an array of trace entries")
        .iter()
        .map(|entry| seq(&entry["event"]))
        .collect()
}

#[tokio::test]
async fn a_trace_leads_from_a_change_to_the_reconciler_outcomes_and_back() {
    let data_directory = tempfile::tempdir().unwrap();
    let daemon = Daemon::start_with_config(data_directory.path(), SIM_CONFIG);
    let client = http_client();
    let manifest = manifest_with_name_and_worker_replicas("trace-a", 2);
    let applied = post_apply(
        &client,
        &daemon,
        "/v1/apply",
        &manifest,
        &[("x-cairn-reason", "trace me")],
    )
    .await;
    applied.assert_status(201);
    let request_id = applied.header("x-request-id");
    let change = applied.body["events"][0].clone();
    let change_id = change["id"].as_str().unwrap().to_string();
    let change_seq = seq(&change);
    wait_ready(&client, &daemon, "trace-a").await;
    let log = all_events(&client, &daemon).await;

    // What the log says the change caused, recursively.
    let mut chain: BTreeMap<u64, (u64, u64)> = BTreeMap::new(); // seq -> (depth, parent)
    for event in &log {
        let Some(parent) = cause_seq(event) else {
            continue;
        };
        if parent == change_seq {
            chain.insert(seq(event), (1, parent));
        } else if let Some((depth, _)) = chain.get(&parent).copied() {
            chain.insert(seq(event), (depth + 1, parent));
        }
    }

    let answer = get(
        &client,
        &daemon.url(&format!("/v1/events/{change_id}/trace")),
    )
    .await;
    answer.assert_status(200);
    let trace = &answer.body;
    assert_eq!(trace["event"]["event"]["id"], change_id.as_str());
    assert!(
        trace["event"]["summary"]
            .as_str()
            .unwrap()
            .starts_with("+ "),
        "{}",
        answer.body_text
    );
    assert_eq!(trace["causes"], serde_json::json!([]));
    assert_eq!(trace["origin"]["request"]["requestId"], request_id.as_str());
    assert_eq!(trace["origin"]["request"]["reason"], "trace me");
    assert_eq!(trace["effectsTruncated"], false);
    let effects = trace["effects"].as_array().unwrap();
    let found: BTreeMap<u64, (u64, u64)> = effects
        .iter()
        .map(|entry| {
            (
                seq(&entry["event"]),
                (
                    entry["depth"].as_u64().unwrap(),
                    entry["parent"].as_u64().unwrap(),
                ),
            )
        })
        .collect();
    assert_eq!(
        found, chain,
        "the effects are exactly what the log says the change caused"
    );
    assert_eq!(
        entry_seqs(&trace["effects"]),
        chain.keys().copied().collect::<Vec<_>>(),
        "in seq order"
    );
    let type_at = |wanted: u64| -> String {
        log.iter().find(|e| seq(e) == wanted).unwrap()["type"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let types: BTreeSet<String> = effects
        .iter()
        .map(|e| e["event"]["type"].as_str().unwrap().to_string())
        .collect();
    assert!(
        types.contains("ActionStarted") && types.contains("ActionSucceeded"),
        "{types:?}"
    );
    for effect in effects {
        match effect["event"]["type"].as_str().unwrap() {
            "ActionStarted" => assert_eq!(
                (effect["depth"].as_u64(), effect["parent"].as_u64()),
                (Some(1), Some(change_seq))
            ),
            "ActionSucceeded" => {
                assert_eq!(effect["depth"], 2);
                assert_eq!(type_at(effect["parent"].as_u64().unwrap()), "ActionStarted");
            }
            _ => {}
        }
    }

    // From an outcome back up to the change and its request.
    let succeeded = effects
        .iter()
        .find(|e| e["event"]["type"] == "ActionSucceeded")
        .unwrap();
    let succeeded_id = succeeded["event"]["id"].as_str().unwrap();
    let answer = get(
        &client,
        &daemon.url(&format!("/v1/events/{succeeded_id}/trace")),
    )
    .await;
    answer.assert_status(200);
    let back = &answer.body;
    assert_eq!(
        entry_seqs(&back["causes"]),
        vec![change_seq, succeeded["parent"].as_u64().unwrap()],
        "root first: the change, then the ActionStarted"
    );
    assert_eq!(back["causes"][0]["event"]["id"], change_id.as_str());
    assert_eq!(back["origin"]["request"]["requestId"], request_id.as_str());
    assert_eq!(back["effects"], serde_json::json!([]));
    let in_chain: BTreeSet<u64> = entry_seqs(&back["causes"])
        .into_iter()
        .chain([seq(&succeeded["event"])])
        .collect();
    for entry in back["correlated"].as_array().unwrap() {
        assert!(!in_chain.contains(&seq(&entry["event"])));
        assert_eq!(entry["event"]["correlation"], change["correlation"]);
    }
    assert!(
        !back["correlated"].as_array().unwrap().is_empty(),
        "the other reconciler events share the correlation"
    );

    // The cause and correlation filters answer from the indexes, page by page.
    let started_seq = succeeded["parent"].as_u64().unwrap();
    let started_id = log.iter().find(|e| seq(e) == started_seq).unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    check_filter(&client, &daemon, &log, &format!("cause={change_id}"), |e| {
        cause_seq(e) == Some(change_seq)
    })
    .await;
    check_filter(
        &client,
        &daemon,
        &log,
        &format!("cause={started_id}"),
        |e| cause_seq(e) == Some(started_seq),
    )
    .await;
    let correlation = change["correlation"].as_str().unwrap();
    check_filter(
        &client,
        &daemon,
        &log,
        &format!("correlation={correlation}"),
        |e| e["correlation"] == correlation,
    )
    .await;
    check_filter(
        &client,
        &daemon,
        &log,
        &format!("correlation={correlation}&type=ActionSucceeded&since=3"),
        |e| e["correlation"] == correlation && e["type"] == "ActionSucceeded" && seq(e) >= 3,
    )
    .await;
    check_filter(
        &client,
        &daemon,
        &log,
        "actor=reconciler:reconciler&stream=reconcile/trace-a",
        |e| e["actor"]["name"] == "reconciler" && e["stream"] == "reconcile/trace-a",
    )
    .await;
    check_filter(
        &client,
        &daemon,
        &log,
        &format!("cause={change_id}&until={started_seq}"),
        |e| cause_seq(e) == Some(change_seq) && seq(e) <= started_seq,
    )
    .await;

    // Unknown and malformed ids.
    let unknown = "0190b6a2-0000-7000-8000-000000000000";
    get(&client, &daemon.url(&format!("/v1/events/{unknown}/trace")))
        .await
        .assert_problem(404, "event_not_found");
    get(&client, &daemon.url("/v1/events/not-a-uuid/trace"))
        .await
        .assert_problem(400, "bad_path");
    get(
        &client,
        &daemon.url(&format!("/v1/events/{change_id}/trace?depth=2")),
    )
    .await
    .assert_problem(400, "bad_query");

    // The command line: the chain as an indented table, and the raw answer.
    let output = run_command_line(Some(&daemon.base_url()), &["trace", &change_id], None);
    assert_eq!(output.exit_code, 0, "{}", output.all_output());
    let text = &output.standard_output;
    assert!(
        text.starts_with(&format!("origin: request {request_id}")),
        "{text}"
    );
    assert!(text.contains("reason \"trace me\""), "{text}");
    let marked = text
        .lines()
        .find(|line| line.starts_with("* "))
        .expect("the traced event is marked");
    assert!(
        marked.contains("ClusterDeclared") && marked.contains(&format!("* {change_seq} ")),
        "{text}"
    );
    assert!(
        text.lines()
            .any(|line| line.contains("  ActionStarted") && line.contains("(attempt 1)")),
        "{text}"
    );
    assert!(
        text.lines()
            .any(|line| line.contains("    ActionSucceeded")),
        "indented by depth: {text}"
    );
    let output = run_command_line(
        Some(&daemon.base_url()),
        &["trace", succeeded_id, "-o", "json"],
        None,
    );
    assert_eq!(output.exit_code, 0, "{}", output.all_output());
    let raw: Value = serde_json::from_str(&output.standard_output).unwrap();
    assert_eq!(raw["causes"], back["causes"]);
    let output = run_command_line(Some(&daemon.base_url()), &["trace", unknown], None);
    assert_eq!(output.exit_code, 1, "{}", output.all_output());
    assert!(
        output.standard_error.contains("event_not_found"),
        "{}",
        output.all_output()
    );
    let output = run_command_line(Some(&daemon.base_url()), &["trace", "nope"], None);
    assert_eq!(output.exit_code, 2, "{}", output.all_output());
}
