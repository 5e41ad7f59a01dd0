//! Time travel end to end: a cluster at a seq or a time, diffs, rollback
//! carried out on the simulated cloud, rollback past a deletion, snapshots
//! across a restart and `cairn replay`. Every wait is a poll with a deadline.

use serde_json::Value;

use crate::harness::{
    all_events, get, head_seq, http_client, post_apply, run_command_line, Daemon,
};
use crate::reconcile::{cli, cluster_manifest, sim_config, sim_resources, wait_for, wait_ready};

const DEADLINE: std::time::Duration = std::time::Duration::from_secs(90);

/// `cluster_manifest` with one more firewall rule, `ssh`.
fn with_ssh_rule(manifest: &str) -> String {
    let api_rule =
        "    - {name: api, direction: ingress, protocol: tcp, ports: \"443\", source: 0.0.0.0/0}\n";
    assert!(
        manifest.contains(api_rule),
        "the manifest lost its api rule"
    );
    manifest.replace(
        api_rule,
        &format!(
            "{api_rule}    - {{name: ssh, direction: ingress, protocol: tcp, ports: \"22\", source: 10.0.0.0/8}}\n"
        ),
    )
}

/// (machines of pool `workers`, firewall rule names) in the simulated cloud.
async fn cloud_shape(
    client: &reqwest::Client,
    daemon: &Daemon,
    cluster: &str,
) -> (usize, Vec<String>) {
    let resources = sim_resources(client, daemon, cluster).await;
    let workers = resources
        .iter()
        .filter(|resource| resource["spec"]["machine"]["pool"] == "workers")
        .count();
    let mut rules: Vec<String> = resources
        .iter()
        .filter_map(|resource| resource["spec"]["firewall_rule"]["name"].as_str())
        .map(str::to_string)
        .collect();
    rules.sort();
    (workers, rules)
}

fn rule_names(manifest: &Value) -> Vec<String> {
    let mut names: Vec<String> = manifest["spec"]["firewall"]
        .as_array()
        .expect("a firewall list")
        .iter()
        .map(|rule| rule["name"].as_str().unwrap().to_string())
        .collect();
    names.sort();
    names
}

/// An apply answered 201 (declared) or 200 (changed).
fn applied(answer: crate::harness::HttpAnswer) {
    assert!(matches!(answer.status, 200 | 201), "{}", answer.body_text);
}

fn workers(manifest: &Value) -> i64 {
    crate::harness::pool_replicas(manifest, "workers")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_at_a_point_its_diff_and_a_rollback_carried_out_on_the_cloud() {
    let directory = tempfile::tempdir().unwrap();
    let config = format!(
        "{}\n[snapshots]\nevery_events = 15\n",
        sim_config(0.0, 1, 60_000)
    );
    let daemon = Daemon::start_with_config(directory.path(), &config);
    let client = http_client();
    let base = cluster_manifest("tt", "sim", "correct", &[("workers", 2)]);
    applied(post_apply(&client, &daemon, "/v1/apply", &base, &[]).await);
    wait_ready(&client, &daemon, "tt").await;
    let before = head_seq(&client, &daemon).await;
    let events = all_events(&client, &daemon).await;
    let before_time = events.last().unwrap()["time"].as_str().unwrap().to_string();

    // A scale-up and a new firewall rule, carried out.
    client
        .post(daemon.url("/v1/clusters/tt/pools/workers/scale"))
        .json(&serde_json::json!({"replicas": 5}))
        .send()
        .await
        .unwrap();
    let grown = with_ssh_rule(&cluster_manifest("tt", "sim", "correct", &[("workers", 5)]));
    applied(post_apply(&client, &daemon, "/v1/apply", &grown, &[]).await);
    wait_ready(&client, &daemon, "tt").await;
    wait_for("the cloud to grow", DEADLINE, || async {
        let shape = cloud_shape(&client, &daemon, "tt").await;
        (shape == (5, vec!["api".to_string(), "ssh".to_string()])).then_some(())
    })
    .await;

    // The cluster as it was, by seq and by time: the same point.
    let at_seq = get(
        &client,
        &daemon.url(&format!("/v1/clusters/tt?at={before}")),
    )
    .await;
    at_seq.assert_status(200);
    assert_eq!(at_seq.body["at"]["seq"], before);
    assert_eq!(at_seq.body["deleted"], false);
    let desired = &at_seq.body["cluster"]["desired"];
    assert_eq!(workers(desired), 2);
    assert_eq!(rule_names(desired), vec!["api"]);
    let machines_then = at_seq.body["observed"]["resources"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|resource| resource["pool"] == "workers")
        .count();
    assert_eq!(machines_then, 2, "observed state as of that seq");
    let encoded_time = before_time.replace('+', "%2B");
    let at_time = get(
        &client,
        &daemon.url(&format!("/v1/clusters/tt?at={encoded_time}")),
    )
    .await;
    at_time.assert_status(200);
    assert_eq!(
        at_time.body["at"]["seq"], before,
        "a time resolves to the last event at or before it"
    );
    let now = get(&client, &daemon.url("/v1/clusters/tt?at=now")).await;
    assert_eq!(workers(&now.body["cluster"]["desired"]), 5);

    // Before the cluster existed, a bad point, a point past the head.
    get(&client, &daemon.url("/v1/clusters/tt?at=0"))
        .await
        .assert_problem(404, "cluster_not_found");
    get(
        &client,
        &daemon.url("/v1/clusters/tt?at=1999-01-01T00:00:00Z"),
    )
    .await
    .assert_problem(404, "cluster_not_found");
    get(&client, &daemon.url("/v1/clusters/tt?at=yesterday"))
        .await
        .assert_problem(400, "bad_parameter");
    get(&client, &daemon.url("/v1/clusters/tt?at=99999999"))
        .await
        .assert_problem(400, "point_after_head");
    get(&client, &daemon.url("/v1/clusters/tt?when=1"))
        .await
        .assert_status(400);

    // The diff names what changed and the events that changed it.
    let diff = get(
        &client,
        &daemon.url(&format!("/v1/clusters/tt/diff?from={before}&to=now")),
    )
    .await;
    diff.assert_status(200);
    let desired_lines: Vec<(String, String, usize)> = diff.body["desired"]
        .as_array()
        .unwrap()
        .iter()
        .map(|entry| {
            (
                entry["op"].as_str().unwrap().to_string(),
                entry["subject"].as_str().unwrap().to_string(),
                entry["events"].as_array().unwrap().len(),
            )
        })
        .collect();
    assert!(
        desired_lines.contains(&("~".into(), "pool/workers".into(), 1)),
        "{desired_lines:?}"
    );
    assert!(
        desired_lines.contains(&("+".into(), "firewall/ssh".into(), 1)),
        "{desired_lines:?}"
    );
    assert_eq!(desired_lines.len(), 2, "{desired_lines:?}");
    let added_machines = diff.body["observed"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|entry| {
            entry["op"] == "+"
                && entry["subject"]
                    .as_str()
                    .unwrap()
                    .starts_with("machine/workers-")
        })
        .count();
    assert_eq!(added_machines, 3);
    let diff_text = cli(&daemon, &["diff", "tt", "--from", &before.to_string()]).standard_output;
    assert!(
        diff_text.contains("~ pool workers replicas 2 -> 5"),
        "{diff_text}"
    );
    assert!(diff_text.contains("+ firewall rule ssh"), "{diff_text}");
    let at_text = cli(
        &daemon,
        &["get", "cluster", "tt", "--at", &before.to_string()],
    )
    .standard_output;
    assert!(
        at_text.contains(&format!("as of:     seq {before}")),
        "{at_text}"
    );

    // A dry run appends nothing.
    let head = head_seq(&client, &daemon).await;
    let dry = cli(
        &daemon,
        &["rollback", "tt", "--to", &before.to_string(), "--dry-run"],
    )
    .standard_output;
    assert!(dry.contains("(dry run, nothing appended)"), "{dry}");
    assert_eq!(head_seq(&client, &daemon).await, head);

    // The rollback: RollbackRequested, then the changes, each caused by it.
    let answer = client
        .post(daemon.url("/v1/clusters/tt/rollback"))
        .header("x-cairn-reason", "the scale-up broke the build farm")
        .json(&serde_json::json!({"to": before.to_string()}))
        .send()
        .await
        .unwrap();
    let answer = crate::harness::HttpAnswer::read(answer).await;
    answer.assert_status(202);
    let appended = answer.body["events"].as_array().unwrap();
    assert_eq!(appended[0]["type"], "RollbackRequested");
    assert_eq!(appended[0]["data"]["toSeq"], before);
    let request_seq = appended[0]["seq"].clone();
    assert!(appended.len() >= 3, "{}", answer.body_text);
    for event in &appended[1..] {
        assert_eq!(event["cause"]["event"]["seq"], request_seq, "{event}");
        assert_eq!(event["cause"]["event"]["id"], appended[0]["id"], "{event}");
    }
    let types: Vec<&str> = appended
        .iter()
        .map(|event| event["type"].as_str().unwrap())
        .collect();
    assert!(
        types.contains(&"PoolScaled") && types.contains(&"FirewallRuleRemoved"),
        "{types:?}"
    );

    // The reconcilers carry it out: the cloud is back to two workers, one rule.
    wait_for("the cloud to shrink back", DEADLINE, || async {
        let shape = cloud_shape(&client, &daemon, "tt").await;
        (shape == (2, vec!["api".to_string()])).then_some(())
    })
    .await;
    let back = wait_ready(&client, &daemon, "tt").await;
    assert_eq!(workers(&back["desired"]), 2);
    assert_eq!(rule_names(&back["desired"]), vec!["api"]);

    // Rolling back to the same point again changes nothing.
    let again = cli(&daemon, &["rollback", "tt", "--to", &before.to_string()]).standard_output;
    assert!(again.contains("nothing to roll back"), "{again}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rolling_back_past_a_deletion_restores_the_cluster() {
    let directory = tempfile::tempdir().unwrap();
    let daemon = Daemon::start_with_config(directory.path(), &sim_config(0.0, 1, 60_000));
    let client = http_client();
    let manifest = cluster_manifest("phoenix", "sim", "correct", &[("workers", 2)]);
    applied(post_apply(&client, &daemon, "/v1/apply", &manifest, &[]).await);
    wait_ready(&client, &daemon, "phoenix").await;
    let alive = head_seq(&client, &daemon).await;

    cli(&daemon, &["delete", "cluster", "phoenix"]);
    wait_for("the deletion to finish", DEADLINE, || async {
        let answer = get(&client, &daemon.url("/v1/clusters/phoenix")).await;
        (answer.status == 404).then_some(())
    })
    .await;
    assert!(sim_resources(&client, &daemon, "phoenix").await.is_empty());

    // After the deletion, the deleted state; before it, the cluster.
    let now = get(&client, &daemon.url("/v1/clusters/phoenix?at=now")).await;
    now.assert_status(200);
    assert_eq!(now.body["deleted"], true);
    assert!(now.body["cluster"].is_null());
    let then = get(
        &client,
        &daemon.url(&format!("/v1/clusters/phoenix?at={alive}")),
    )
    .await;
    assert_eq!(then.body["deleted"], false);

    let rolled = cli(
        &daemon,
        &["rollback", "phoenix", "--to", &alive.to_string()],
    )
    .standard_output;
    assert!(rolled.contains("rolled back"), "{rolled}");
    let view = wait_ready(&client, &daemon, "phoenix").await;
    assert_eq!(workers(&view["desired"]), 2);
    wait_for("the machines to come back", DEADLINE, || async {
        (cloud_shape(&client, &daemon, "phoenix").await.0 == 2).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshots_carry_the_state_across_a_restart_and_replay_agrees_with_them() {
    let directory = tempfile::tempdir().unwrap();
    let config = "[reconcile]\nenabled = false\n[snapshots]\nevery_events = 7\n";
    let daemon = Daemon::start_with_config(directory.path(), config);
    let client = http_client();
    for (index, name) in ["one", "two", "three"].iter().enumerate() {
        let manifest = cluster_manifest(name, "sim", "correct", &[("workers", 1)]);
        applied(post_apply(&client, &daemon, "/v1/apply", &manifest, &[]).await);
        for replicas in 2..(6 + index as i64) {
            let manifest = cluster_manifest(name, "sim", "correct", &[("workers", replicas)]);
            applied(post_apply(&client, &daemon, "/v1/apply", &manifest, &[]).await);
        }
    }
    let clusters = get(&client, &daemon.url("/v1/clusters")).await.body;
    let middle = head_seq(&client, &daemon).await / 2;
    let then = get(
        &client,
        &daemon.url(&format!("/v1/clusters/two?at={middle}")),
    )
    .await
    .body;
    daemon.terminate();

    let daemon = Daemon::start_with_config(directory.path(), config);
    assert_eq!(
        get(&client, &daemon.url("/v1/clusters")).await.body,
        clusters
    );
    let again = get(
        &client,
        &daemon.url(&format!("/v1/clusters/two?at={middle}")),
    )
    .await
    .body;
    assert_eq!(
        again, then,
        "a point-in-time read is the same after a restart"
    );
    daemon.terminate();

    let data_dir = directory.path().to_str().unwrap();
    let replay = run_command_line(None, &["replay", "--data-dir", data_dir], None);
    assert_eq!(replay.exit_code, 0, "{}", replay.all_output());
    let checked = replay.standard_output.matches(": same").count();
    assert!(
        checked == 2,
        "18 events, a snapshot every 7: two snapshots, both compared: {}",
        replay.standard_output
    );
    assert!(
        !replay.standard_output.contains("different"),
        "{}",
        replay.standard_output
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rollback_calls_off_a_deletion_in_progress() {
    let directory = tempfile::tempdir().unwrap();
    // Slow deletes, one call at a time: the deletion is still going on when
    // the rollback lands.
    let config = "[reconcile]\nresync_interval_ms = 60000\nbackoff_base_ms = 20\nbackoff_max_ms = 500\n\
                  concurrency = 1\ncluster_concurrency = 1\n\n[sim]\nseed = 7\nlist_delay_ms = 0\n\n\
                  [sim.latency_ms]\ncreate = 1\ndelete = 300\ndescribe = 0\nlookup = 0\nlist = 1\n";
    let daemon = Daemon::start_with_config(directory.path(), config);
    let client = http_client();
    let manifest = cluster_manifest("midway", "sim", "correct", &[("workers", 4)]);
    applied(post_apply(&client, &daemon, "/v1/apply", &manifest, &[]).await);
    wait_ready(&client, &daemon, "midway").await;
    let alive = head_seq(&client, &daemon).await;

    cli(&daemon, &["delete", "cluster", "midway"]);
    wait_for("the first machine to go", DEADLINE, || async {
        (cloud_shape(&client, &daemon, "midway").await.0 < 4).then_some(())
    })
    .await;
    let rolled = cli(&daemon, &["rollback", "midway", "--to", &alive.to_string()]).standard_output;
    assert!(rolled.contains("call the deletion off"), "{rolled}");

    let view = wait_ready(&client, &daemon, "midway").await;
    assert_eq!(view["deletionRequested"], false);
    wait_for("the machines to come back", DEADLINE, || async {
        (cloud_shape(&client, &daemon, "midway").await.0 == 4).then_some(())
    })
    .await;
    let events = all_events(&client, &daemon).await;
    assert!(
        events.iter().all(|event| event["type"] != "ClusterDeleted"),
        "the deletion never finished"
    );
}
