//! Webhook receivers, end to end: signed generic requests, GitHub pushes read
//! from a real local git repository, Alertmanager notifications from the
//! fixtures, forged and replayed deliveries, and a kill -9 between receipt
//! and action. Signatures are computed here with the `hmac` crate, not with
//! Cairn's own signing code.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use hmac::{Hmac, Mac};
use serde_json::{json, Value};
use sha2::Sha256;

use crate::harness::{all_events, get, head_seq, http_client, post_apply, Daemon, HttpAnswer};
use crate::reconcile::{
    cli, cluster_manifest, cluster_view, sim_config, sim_resources, wait_for, wait_ready,
    CONVERGE_DEADLINE,
};

const GENERIC_SECRET: &str = "generic-secret-0123456789";
const GITHUB_SECRET: &str = "github-secret-0123456789";
const ALERTS_TOKEN: &str = "alertmanager-token-0123456789";

fn hmac_hex(secret: &str, parts: &[&[u8]]) -> String {
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(secret.as_bytes()).unwrap();
    for part in parts {
        mac.update(part);
    }
    hex::encode(mac.finalize().into_bytes())
}

fn generic_signature(secret: &str, timestamp: i64, body: &[u8]) -> String {
    let signature = hmac_hex(secret, &[timestamp.to_string().as_bytes(), b".", body]);
    format!("t={timestamp},v1={signature}")
}

fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

async fn post_hook(
    client: &reqwest::Client,
    daemon: &Daemon,
    hook: &str,
    headers: &[(&str, String)],
    body: Vec<u8>,
) -> HttpAnswer {
    let mut request = client
        .post(daemon.url(&format!("/v1/hooks/{hook}")))
        .header("content-type", "application/json")
        .body(body);
    for (name, value) in headers {
        request = request.header(*name, value);
    }
    HttpAnswer::read(request.send().await.expect("the delivery is answered")).await
}

async fn post_generic(client: &reqwest::Client, daemon: &Daemon, body: &Value) -> HttpAnswer {
    post_generic_bytes(client, daemon, serde_json::to_vec(body).unwrap()).await
}

/// Posts `body`, as it is, to the `deploys` receiver, signed with its secret.
async fn post_generic_bytes(
    client: &reqwest::Client,
    daemon: &Daemon,
    body: Vec<u8>,
) -> HttpAnswer {
    let signature = generic_signature(GENERIC_SECRET, now(), &body);
    post_hook(
        client,
        daemon,
        "deploys",
        &[("x-cairn-signature", signature)],
        body,
    )
    .await
}

/// Waits until a delivery has an outcome and returns its delivery view.
async fn wait_processed(
    client: &reqwest::Client,
    daemon: &Daemon,
    hook: &str,
    delivery: &str,
) -> Value {
    wait_for(
        &format!("delivery {delivery} of {hook} to be processed"),
        CONVERGE_DEADLINE,
        || async {
            let answer = get(
                client,
                &daemon.url(&format!("/v1/hooks/{hook}/deliveries?limit=100")),
            )
            .await;
            answer.assert_status(200);
            answer.body["deliveries"]
                .as_array()
                .unwrap()
                .iter()
                .find(|view| view["delivery"] == delivery && !view["outcome"].is_null())
                .cloned()
        },
    )
    .await
}

fn events_of_type<'a>(events: &'a [Value], event_type: &str) -> Vec<&'a Value> {
    events
        .iter()
        .filter(|event| event["type"] == event_type)
        .collect()
}

fn metric(text: &str, line_start: &str) -> f64 {
    text.lines()
        .find(|line| line.starts_with(line_start))
        .and_then(|line| line.rsplit(' ').next())
        .and_then(|value| value.parse().ok())
        .unwrap_or(0.0)
}

/// A daemon without reconcilers, with `top` before its sections, the
/// generic receiver `deploys` and the Alertmanager receiver `alerts` (rule
/// `saturated`: pool `workers` grows by 1, to at most 9), and cluster `web`
/// applied; and a client for it.
async fn web_with_receivers(data_directory: &Path, top: &str) -> (Daemon, reqwest::Client) {
    let config = format!(
        "{top}[reconcile]\nenabled = false\n\n\
         [hooks.deploys]\ntype = \"generic\"\nsecret = \"{GENERIC_SECRET}\"\n\n\
         [hooks.alerts]\ntype = \"alertmanager\"\nsecret = \"{ALERTS_TOKEN}\"\n\n\
         [[hooks.alerts.rules]]\nname = \"saturated\"\nmatch = {{ alertname = \"PoolSaturated\" }}\n\
         action = \"scale_pool\"\nby = 1\nmax = 9\n"
    );
    let daemon = Daemon::start_with_config(data_directory, &config);
    let client = http_client();
    let manifest = cluster_manifest("web", "sim", "correct", &[("workers", 3)]);
    post_apply(&client, &daemon, "/v1/apply", &manifest, &[])
        .await
        .assert_status(201);
    (daemon, client)
}

#[tokio::test]
async fn generic_requests_change_state_once_and_bad_ones_change_nothing() {
    let data_directory = tempfile::tempdir().unwrap();
    let (daemon, client) =
        web_with_receivers(data_directory.path(), "max_body_bytes = 8192\n").await;
    let head_before = head_seq(&client, &daemon).await;

    let scale = json!({"id": "deploy-1", "action": "scale", "cluster": "web",
                       "pool": "workers", "replicas": 7, "reason": "launch day"});
    let body = serde_json::to_vec(&scale).unwrap();

    // Bad deliveries: each answered at once, none changes anything.
    let forged = generic_signature("not-the-secret-at-all", now(), &body);
    post_hook(
        &client,
        &daemon,
        "deploys",
        &[("x-cairn-signature", forged)],
        body.clone(),
    )
    .await
    .assert_problem(401, "unauthorized");
    post_hook(&client, &daemon, "deploys", &[], body.clone())
        .await
        .assert_problem(401, "unauthorized");
    let stale = generic_signature(GENERIC_SECRET, now() - 600, &body);
    let answer = post_hook(
        &client,
        &daemon,
        "deploys",
        &[("x-cairn-signature", stale)],
        body.clone(),
    )
    .await;
    answer.assert_problem(401, "unauthorized");
    assert!(
        answer.body["detail"]
            .as_str()
            .unwrap()
            .contains("timestamp"),
        "{}",
        answer.body_text
    );
    let signature = generic_signature(GENERIC_SECRET, now(), &body);
    post_hook(
        &client,
        &daemon,
        "nope",
        &[("x-cairn-signature", signature)],
        body.clone(),
    )
    .await
    .assert_problem(404, "unknown_hook");
    let mut huge = scale.clone();
    huge["reason"] = Value::String("x".repeat(10_000));
    let huge = serde_json::to_vec(&huge).unwrap();
    let signature = generic_signature(GENERIC_SECRET, now(), &huge);
    post_hook(
        &client,
        &daemon,
        "deploys",
        &[("x-cairn-signature", signature)],
        huge,
    )
    .await
    .assert_problem(413, "body_too_large");
    let missing = serde_json::to_vec(
        &json!({"id": "deploy-x", "action": "scale", "cluster": "web", "pool": "workers"}),
    )
    .unwrap();
    let answer = post_generic_bytes(&client, &daemon, missing).await;
    answer.assert_problem(400, "malformed_payload");
    assert!(
        answer.body["detail"].as_str().unwrap().contains("replicas"),
        "{}",
        answer.body_text
    );
    assert_eq!(
        head_seq(&client, &daemon).await,
        head_before,
        "refused deliveries append nothing"
    );

    // The real one: recorded, answered 202, then acted on.
    let answer = post_generic(&client, &daemon, &scale).await;
    answer.assert_status(202);
    assert_eq!(answer.body["status"], "accepted");
    assert_eq!(answer.body["delivery"], "deploy-1");
    let received_id = answer.body["eventId"].as_str().unwrap().to_string();
    assert_eq!(
        answer.body["trace"],
        format!("/v1/events/{received_id}/trace").as_str()
    );
    let view = wait_processed(&client, &daemon, "deploys", "deploy-1").await;
    assert_eq!(view["outcome"]["outcome"], "done", "{view}");
    assert_eq!(
        view["outcome"]["actions"][0]["result"]["applied"]["events"],
        1
    );
    let cluster = cluster_view(&client, &daemon, "web").await.unwrap();
    assert_eq!(
        crate::harness::pool_replicas(&cluster["desired"], "workers"),
        7
    );

    // The change names the delivery, and the trace of the receipt leads to it.
    let events = all_events(&client, &daemon).await;
    let scaled = events_of_type(&events, "PoolScaled");
    assert_eq!(scaled.len(), 1);
    let cause = &scaled[0]["cause"]["webhook_delivery"];
    assert_eq!(cause["hook"], "deploys");
    assert_eq!(cause["delivery"], "deploy-1");
    assert_eq!(cause["receivedId"], received_id.as_str());
    assert_eq!(cause["details"]["reason"], "launch day");
    assert_eq!(scaled[0]["actor"]["kind"], "webhook");
    let trace = get(
        &client,
        &daemon.url(&format!("/v1/events/{received_id}/trace")),
    )
    .await;
    trace.assert_status(200);
    let effect_types: Vec<&str> = trace.body["effects"]
        .as_array()
        .unwrap()
        .iter()
        .map(|entry| entry["event"]["type"].as_str().unwrap())
        .collect();
    assert_eq!(
        effect_types,
        ["PoolScaled", "WebhookProcessed"],
        "{}",
        trace.body_text
    );

    // A redelivery, signed anew, gets the first outcome and changes nothing.
    let head = head_seq(&client, &daemon).await;
    let again = post_generic(&client, &daemon, &scale).await;
    again.assert_status(200);
    assert_eq!(again.body["status"], "duplicate");
    assert_eq!(again.body["eventId"], received_id.as_str());
    assert_eq!(again.body["outcome"]["outcome"], "done");
    assert_eq!(head_seq(&client, &daemon).await, head);
    // The same id with another body is a conflict.
    let mut other = scale.clone();
    other["replicas"] = json!(9);
    post_generic(&client, &daemon, &other)
        .await
        .assert_problem(409, "delivery_reused");
    assert_eq!(head_seq(&client, &daemon).await, head);

    // Pause, then a request that fails in the ledger: recorded as failed.
    let pause = json!({"id": "pause-1", "action": "pause", "cluster": "web"});
    post_generic(&client, &daemon, &pause)
        .await
        .assert_status(202);
    let view = wait_processed(&client, &daemon, "deploys", "pause-1").await;
    assert_eq!(view["outcome"]["outcome"], "done");
    let absent = json!({"id": "scale-absent", "action": "scale", "cluster": "absent",
                        "pool": "workers", "replicas": 2});
    post_generic(&client, &daemon, &absent)
        .await
        .assert_status(202);
    let view = wait_processed(&client, &daemon, "deploys", "scale-absent").await;
    assert_eq!(view["outcome"]["outcome"], "failed");
    assert!(
        view["outcome"]["summary"]
            .as_str()
            .unwrap()
            .contains("absent"),
        "{view}"
    );

    // No API client can claim a key of the inbox.
    let manifest = cluster_manifest("web", "sim", "correct", &[("workers", 3)]);
    post_apply(
        &client,
        &daemon,
        "/v1/apply",
        &manifest,
        &[("idempotency-key", "hook/deploys/delivery/next")],
    )
    .await
    .assert_problem(400, "bad_header");

    // Every refusal is counted, by receiver and reason.
    let metrics = get(&client, &daemon.url("/metrics")).await.body_text;
    for (labels, count) in [
        ("hook=\"deploys\",result=\"unauthorized\"", 3.0),
        ("hook=\"_unknown\",result=\"unknown_hook\"", 1.0),
        ("hook=\"deploys\",result=\"too_large\"", 1.0),
        ("hook=\"deploys\",result=\"malformed\"", 1.0),
        ("hook=\"deploys\",result=\"accepted\"", 3.0),
        ("hook=\"deploys\",result=\"duplicate\"", 1.0),
        ("hook=\"deploys\",result=\"conflict\"", 1.0),
    ] {
        let found = metric(
            &metrics,
            &format!("cairn_webhook_deliveries_total{{{labels}}}"),
        );
        assert_eq!(found, count, "{labels}:\n{metrics}");
    }
    // The secret is in no log line.
    assert!(!daemon.standard_error_so_far().contains(GENERIC_SECRET));

    // `cairn hooks send` signs with the secret from a config file.
    let files = tempfile::tempdir().unwrap();
    let config_path = files.path().join("cairn.toml");
    std::fs::write(
        &config_path,
        format!("[hooks.deploys]\ntype = \"generic\"\nsecret = \"{GENERIC_SECRET}\"\n"),
    )
    .unwrap();
    let payload_path = files.path().join("resume.json");
    std::fs::write(
        &payload_path,
        r#"{"id": "resume-1", "action": "resume", "cluster": "web"}"#,
    )
    .unwrap();
    let sent = cli(
        &daemon,
        &[
            "hooks",
            "send",
            "deploys",
            "-f",
            payload_path.to_str().unwrap(),
            "--config",
            config_path.to_str().unwrap(),
        ],
    );
    assert!(
        sent.standard_output
            .starts_with("accepted delivery resume-1"),
        "{}",
        sent.all_output()
    );
    let view = wait_processed(&client, &daemon, "deploys", "resume-1").await;
    assert_eq!(view["outcome"]["outcome"], "done", "{view}");
    assert_eq!(
        cluster_view(&client, &daemon, "web").await.unwrap()["paused"],
        false
    );

    // The command line lists the receiver and its deliveries.
    let listed = cli(&daemon, &["hooks", "list"]);
    assert!(
        listed.standard_output.contains("deploys"),
        "{}",
        listed.all_output()
    );
    assert!(!listed.standard_output.contains(GENERIC_SECRET));
    let deliveries = cli(&daemon, &["hooks", "deliveries", "deploys"]);
    assert!(
        deliveries.standard_output.contains("deploy-1"),
        "{}",
        deliveries.all_output()
    );
    assert!(
        deliveries.standard_output.contains("failed"),
        "{}",
        deliveries.all_output()
    );
}

/// Runs git in `directory` with a fixed identity, and insists it succeeds.
fn git(directory: &Path, arguments: &[&str]) -> String {
    let output = Command::new("git")
        .args(["-c", "user.name=Test", "-c", "user.email=test@example.com"])
        .args([
            "-c",
            "init.defaultBranch=main",
            "-c",
            "protocol.file.allow=always",
        ])
        .args(arguments)
        .current_dir(directory)
        .env("GIT_TERMINAL_PROMPT", "0")
        .output()
        .expect("git runs");
    assert!(
        output.status.success(),
        "git {arguments:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap().trim().to_string()
}

/// An upstream (bare), a clone people push from, and a clone Cairn reads.
struct Repositories {
    _directory: tempfile::TempDir,
    work: std::path::PathBuf,
    cairn: std::path::PathBuf,
}

impl Repositories {
    fn new() -> Repositories {
        let directory = tempfile::tempdir().unwrap();
        let upstream = directory.path().join("upstream.git");
        let work = directory.path().join("work");
        let cairn = directory.path().join("cairn");
        std::fs::create_dir_all(&upstream).unwrap();
        git(&upstream, &["init", "--bare", "--quiet"]);
        git(
            directory.path(),
            &["clone", "--quiet", upstream.to_str().unwrap(), "work"],
        );
        std::fs::write(work.join("README.md"), "manifests\n").unwrap();
        git(&work, &["add", "."]);
        git(&work, &["commit", "--quiet", "-m", "start"]);
        git(&work, &["push", "--quiet", "origin", "HEAD:main"]);
        git(
            directory.path(),
            &["clone", "--quiet", upstream.to_str().unwrap(), "cairn"],
        );
        Repositories {
            _directory: directory,
            work,
            cairn,
        }
    }

    fn head(&self) -> String {
        git(&self.work, &["rev-parse", "HEAD"])
    }

    /// Writes (Some) or removes (None) files, commits and pushes upstream;
    /// returns the new commit.
    fn commit(&self, files: &[(&str, Option<&str>)], message: &str) -> String {
        for (path, text) in files {
            let full = self.work.join(path);
            match text {
                Some(text) => {
                    std::fs::create_dir_all(full.parent().unwrap()).unwrap();
                    std::fs::write(&full, text).unwrap();
                }
                None => std::fs::remove_file(&full).unwrap(),
            }
        }
        git(&self.work, &["add", "-A"]);
        git(&self.work, &["commit", "--quiet", "-m", message]);
        git(&self.work, &["push", "--quiet", "origin", "HEAD:main"]);
        self.head()
    }
}

fn github_config(repositories: &Repositories, extra: &str) -> String {
    format!(
        "[reconcile]\nenabled = false\n\n[hooks.gitops]\ntype = \"github\"\nsecret = \"{GITHUB_SECRET}\"\n\
         repository = \"{}\"\nremote = \"origin\"\nbranch = \"main\"\npath = \"clusters\"\nprune = true\n{extra}",
        repositories.cairn.display()
    )
}

/// The fixture push, pointed at these commits.
fn push_body(git_ref: &str, before: &str, after: &str) -> Vec<u8> {
    let mut push: Value =
        serde_json::from_str(include_str!("../fixtures/webhooks/github-push.json")).unwrap();
    push["ref"] = json!(git_ref);
    push["before"] = json!(before);
    push["after"] = json!(after);
    push["head_commit"]["id"] = json!(after);
    serde_json::to_vec(&push).unwrap()
}

async fn post_github(
    client: &reqwest::Client,
    daemon: &Daemon,
    event: &str,
    delivery: &str,
    body: Vec<u8>,
) -> HttpAnswer {
    let signature = format!("sha256={}", hmac_hex(GITHUB_SECRET, &[&body]));
    let headers = [
        ("x-hub-signature-256", signature),
        ("x-github-event", event.to_string()),
        ("x-github-delivery", delivery.to_string()),
    ];
    post_hook(client, daemon, "gitops", &headers, body).await
}

/// Delivers a push, insists on 202, and waits for its outcome.
async fn push_and_wait(
    client: &reqwest::Client,
    daemon: &Daemon,
    delivery: &str,
    body: Vec<u8>,
) -> Value {
    post_github(client, daemon, "push", delivery, body)
        .await
        .assert_status(202);
    wait_processed(client, daemon, "gitops", delivery).await
}

const ZERO: &str = "0000000000000000000000000000000000000000";

#[tokio::test]
async fn github_pushes_apply_the_manifests_of_the_pushed_commit() {
    let repositories = Repositories::new();
    let data_directory = tempfile::tempdir().unwrap();
    let daemon =
        Daemon::start_with_config(data_directory.path(), &github_config(&repositories, ""));
    let client = http_client();

    // A ping is answered and recorded, and does nothing.
    let ping = include_bytes!("../fixtures/webhooks/github-ping.json").to_vec();
    post_github(&client, &daemon, "ping", "ping-1", ping)
        .await
        .assert_status(202);
    let view = wait_processed(&client, &daemon, "gitops", "ping-1").await;
    assert_eq!(view["outcome"]["outcome"], "ignored");

    // The first push declares two clusters. Cairn's clone is behind: it fetches.
    let alpha = cluster_manifest("alpha", "sim", "correct", &[("workers", 2)]);
    let beta = cluster_manifest("beta", "sim", "correct", &[("workers", 1)]);
    let first = repositories.commit(
        &[
            ("clusters/alpha.yaml", Some(&alpha)),
            ("clusters/beta.yaml", Some(&beta)),
        ],
        "two clusters",
    );
    let view = push_and_wait(
        &client,
        &daemon,
        "push-1",
        push_body("refs/heads/main", ZERO, &first),
    )
    .await;
    assert_eq!(view["outcome"]["outcome"], "done", "{view}");
    for name in ["alpha", "beta"] {
        assert!(
            cluster_view(&client, &daemon, name).await.is_some(),
            "{name}"
        );
    }
    let events = all_events(&client, &daemon).await;
    let declared = events_of_type(&events, "ClusterDeclared");
    assert_eq!(declared.len(), 2);
    let cause = &declared[0]["cause"]["webhook_delivery"];
    assert_eq!(cause["details"]["commit"], first.as_str());
    assert_eq!(cause["details"]["pusher"], "octocat");
    assert_eq!(cause["details"]["repository"], "acme/infra");
    assert_eq!(cause["details"]["file"], "clusters/alpha.yaml");

    // The second push scales alpha, removes beta and adds a broken file.
    let alpha_scaled = cluster_manifest("alpha", "sim", "correct", &[("workers", 4)]);
    let second = repositories.commit(
        &[
            ("clusters/alpha.yaml", Some(&alpha_scaled)),
            ("clusters/beta.yaml", None),
            (
                "clusters/broken.yaml",
                Some("apiVersion: cairn/v1\nkind: Cluster\n"),
            ),
        ],
        "scale alpha, drop beta, break something",
    );
    let view = push_and_wait(
        &client,
        &daemon,
        "push-2",
        push_body("refs/heads/main", &first, &second),
    )
    .await;
    // A broken file holds deletions back (it might declare beta): partial.
    assert_eq!(view["outcome"]["outcome"], "partial", "{view}");
    let skipped: Vec<&str> = view["outcome"]["skipped"]
        .as_array()
        .unwrap()
        .iter()
        .map(|skipped| skipped["subject"].as_str().unwrap())
        .collect();
    assert!(skipped.contains(&"clusters/broken.yaml"), "{view}");
    let alpha_view = cluster_view(&client, &daemon, "alpha").await.unwrap();
    assert_eq!(
        crate::harness::pool_replicas(&alpha_view["desired"], "workers"),
        4
    );
    let beta_view = cluster_view(&client, &daemon, "beta").await.unwrap();
    assert_eq!(beta_view["deletionRequested"], false, "{beta_view}");

    // The third push fixes the file: now beta's removal prunes it.
    let third = repositories.commit(&[("clusters/broken.yaml", None)], "fix");
    let view = push_and_wait(
        &client,
        &daemon,
        "push-3",
        push_body("refs/heads/main", &first, &third),
    )
    .await;
    assert_eq!(view["outcome"]["outcome"], "done", "{view}");
    let beta_view = cluster_view(&client, &daemon, "beta").await.unwrap();
    assert_eq!(beta_view["deletionRequested"], true, "{beta_view}");

    // The first push again, under a new delivery id (a redelivery from
    // GitHub's page, or a captured body replayed): the branch has moved on,
    // so its tip is read, and nothing goes back to the first commit.
    let head = head_seq(&client, &daemon).await;
    let view = push_and_wait(
        &client,
        &daemon,
        "push-1-again",
        push_body("refs/heads/main", ZERO, &first),
    )
    .await;
    assert_eq!(view["outcome"]["outcome"], "done", "{view}");
    let results: Vec<&Value> = view["outcome"]["actions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|action| &action["result"])
        .collect();
    assert_eq!(results, [&json!("unchanged")], "{view}");
    let events = all_events(&client, &daemon).await;
    assert!(
        events[head as usize..]
            .iter()
            .all(|event| event["stream"] == "hook/gitops"),
        "a stale push changes no cluster"
    );
    let alpha_view = cluster_view(&client, &daemon, "alpha").await.unwrap();
    assert_eq!(
        crate::harness::pool_replicas(&alpha_view["desired"], "workers"),
        4
    );

    // A push to another branch is acknowledged and ignored.
    let head = head_seq(&client, &daemon).await;
    let view = push_and_wait(
        &client,
        &daemon,
        "push-4",
        push_body("refs/heads/feature", &third, &third),
    )
    .await;
    assert_eq!(view["outcome"]["outcome"], "ignored");
    assert!(view["outcome"]["summary"]
        .as_str()
        .unwrap()
        .contains("refs/heads/feature"));
    let events = all_events(&client, &daemon).await;
    assert!(
        events[head as usize..]
            .iter()
            .all(|event| event["stream"] == "hook/gitops"),
        "an ignored push changes no cluster"
    );

    // A forged signature is refused.
    let body = push_body("refs/heads/main", &first, &third);
    let headers = [
        (
            "x-hub-signature-256",
            format!("sha256={}", hmac_hex("wrong-secret-0123456789", &[&body])),
        ),
        ("x-github-event", "push".to_string()),
        ("x-github-delivery", "push-5".to_string()),
    ];
    post_hook(&client, &daemon, "gitops", &headers, body)
        .await
        .assert_problem(401, "unauthorized");
}

#[tokio::test]
async fn a_delivery_received_before_a_kill_9_is_processed_once_after_the_restart() {
    let repositories = Repositories::new();
    let alpha = cluster_manifest("alpha", "sim", "correct", &[("workers", 2)]);
    let first = repositories.commit(&[("clusters/alpha.yaml", Some(&alpha))], "alpha");
    // Fetching from upstream hangs, so the daemon is killed after it recorded
    // the delivery and before it acted on it.
    git(
        &repositories.cairn,
        &[
            "config",
            "remote.origin.uploadpack",
            "sleep 20; git-upload-pack",
        ],
    );
    let data_directory = tempfile::tempdir().unwrap();
    let config = github_config(&repositories, "");
    let daemon = Daemon::start_with_config(data_directory.path(), &config);
    let client = http_client();
    let answer = post_github(
        &client,
        &daemon,
        "push",
        "push-1",
        push_body("refs/heads/main", ZERO, &first),
    )
    .await;
    answer.assert_status(202);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let pending = get(&client, &daemon.url("/v1/hooks/gitops/deliveries")).await;
    assert!(
        pending.body["deliveries"][0]["outcome"].is_null(),
        "{}",
        pending.body_text
    );
    assert!(cluster_view(&client, &daemon, "alpha").await.is_none());
    daemon.kill_9();

    git(
        &repositories.cairn,
        &["config", "--unset", "remote.origin.uploadpack"],
    );
    let daemon = Daemon::start_with_config(data_directory.path(), &config);
    let view = wait_processed(&client, &daemon, "gitops", "push-1").await;
    assert_eq!(view["outcome"]["outcome"], "done", "{view}");
    assert!(cluster_view(&client, &daemon, "alpha").await.is_some());
    let events = all_events(&client, &daemon).await;
    assert_eq!(events_of_type(&events, "WebhookReceived").len(), 1);
    assert_eq!(events_of_type(&events, "WebhookProcessed").len(), 1);
    assert_eq!(events_of_type(&events, "ClusterDeclared").len(), 1);

    // A restart after that processes nothing again; a redelivery neither.
    daemon.terminate();
    let daemon = Daemon::start_with_config(data_directory.path(), &config);
    let again = post_github(
        &client,
        &daemon,
        "push",
        "push-1",
        push_body("refs/heads/main", ZERO, &first),
    )
    .await;
    again.assert_status(200);
    assert_eq!(again.body["status"], "duplicate");
    assert_eq!(again.body["outcome"]["outcome"], "done");
    let events_after = all_events(&client, &daemon).await;
    assert_eq!(events_after.len(), events.len());
}

#[tokio::test]
async fn alertmanager_alerts_replace_a_machine_and_scale_a_pool_once() {
    let data_directory = tempfile::tempdir().unwrap();
    let config = format!(
        "{}\n[hooks.alerts]\ntype = \"alertmanager\"\nsecret = \"{ALERTS_TOKEN}\"\n\n\
         [[hooks.alerts.rules]]\nname = \"node-down\"\nmatch = {{ alertname = \"NodeDown\" }}\n\
         action = \"replace_machine\"\nmachine_label = \"instance\"\n\n\
         [[hooks.alerts.rules]]\nname = \"saturated\"\nmatch = {{ alertname = \"PoolSaturated\" }}\n\
         action = \"scale_pool\"\nby = 2\nmax = 5\n",
        sim_config(0.0, 2, 60_000)
    );
    let daemon = Daemon::start_with_config(data_directory.path(), &config);
    let client = http_client();
    let manifest = cluster_manifest("prod-eu", "sim", "correct", &[("workers", 2)]);
    post_apply(&client, &daemon, "/v1/apply", &manifest, &[])
        .await
        .assert_status(201);
    wait_ready(&client, &daemon, "prod-eu").await;
    let machines_before =
        crate::reconcile::sim_machines(&sim_resources(&client, &daemon, "prod-eu").await);
    let (_, old_provider_id) = machines_before["workers-1"].clone();

    let firing = include_bytes!("../fixtures/webhooks/alertmanager-firing.json").to_vec();
    let bearer = [("authorization", format!("Bearer {ALERTS_TOKEN}"))];
    let wrong = [(
        "authorization",
        "Bearer not-the-token-0123456789".to_string(),
    )];
    post_hook(&client, &daemon, "alerts", &wrong, firing.clone())
        .await
        .assert_problem(401, "unauthorized");
    let answer = post_hook(&client, &daemon, "alerts", &bearer, firing.clone()).await;
    answer.assert_status(202);
    let delivery = answer.body["delivery"].as_str().unwrap().to_string();
    let view = wait_processed(&client, &daemon, "alerts", &delivery).await;
    assert_eq!(view["outcome"]["outcome"], "done", "{view}");

    // The pool grew by 2 (under the maximum of 5), and workers-1 was replaced.
    let cluster = cluster_view(&client, &daemon, "prod-eu").await.unwrap();
    assert_eq!(
        crate::harness::pool_replicas(&cluster["desired"], "workers"),
        4
    );
    wait_for("workers-1 to be replaced", CONVERGE_DEADLINE, || async {
        let machines =
            crate::reconcile::sim_machines(&sim_resources(&client, &daemon, "prod-eu").await);
        machines
            .get("workers-1")
            .filter(|(_, provider_id)| *provider_id != old_provider_id)
            .map(|_| ())
    })
    .await;
    wait_ready(&client, &daemon, "prod-eu").await;

    // The same notification again: the same delivery, answered as before.
    let head = head_seq(&client, &daemon).await;
    let again = post_hook(&client, &daemon, "alerts", &bearer, firing.clone()).await;
    again.assert_status(200);
    assert_eq!(again.body["status"], "duplicate");
    // A repeat notification of the same alerts (another body: a new group
    // key) is a new delivery whose actions were already done.
    let mut repeat: Value = serde_json::from_slice(&firing).unwrap();
    repeat["groupKey"] = json!("{}:{cluster=\"prod-eu\"}/repeat");
    let answer = post_hook(
        &client,
        &daemon,
        "alerts",
        &bearer,
        serde_json::to_vec(&repeat).unwrap(),
    )
    .await;
    answer.assert_status(202);
    let delivery = answer.body["delivery"].as_str().unwrap().to_string();
    let view = wait_processed(&client, &daemon, "alerts", &delivery).await;
    let results: Vec<&Value> = view["outcome"]["actions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|action| &action["result"])
        .collect();
    assert_eq!(
        results,
        [&json!("already_done"), &json!("already_done")],
        "{view}"
    );
    // Resolved: nothing to act on.
    let resolved = include_bytes!("../fixtures/webhooks/alertmanager-resolved.json").to_vec();
    let answer = post_hook(&client, &daemon, "alerts", &bearer, resolved).await;
    answer.assert_status(202);
    let delivery = answer.body["delivery"].as_str().unwrap().to_string();
    let view = wait_processed(&client, &daemon, "alerts", &delivery).await;
    assert_eq!(view["outcome"]["outcome"], "ignored", "{view}");
    let events = all_events(&client, &daemon).await;
    let changed: Vec<&Value> = events[head as usize..]
        .iter()
        .filter(|event| event["stream"] == "cluster/prod-eu")
        .collect();
    assert!(
        changed.is_empty(),
        "repeats change no desired state: {changed:?}"
    );
    let cluster = cluster_view(&client, &daemon, "prod-eu").await.unwrap();
    assert_eq!(
        crate::harness::pool_replicas(&cluster["desired"], "workers"),
        4
    );
}

/// Opens a connection and sends `head` (a request line and headers, without
/// the blank line) and then `body_start`, announcing `length` body bytes.
fn send_partial_request(
    daemon: &Daemon,
    head: &str,
    length: usize,
    body_start: &[u8],
) -> std::net::TcpStream {
    use std::io::Write;
    let mut connection = std::net::TcpStream::connect(daemon.address).unwrap();
    let request = format!(
        "{head}\r\nHost: {}\r\nContent-Type: application/json\r\nContent-Length: {length}\r\n\r\n",
        daemon.address
    );
    connection.write_all(request.as_bytes()).unwrap();
    connection.write_all(body_start).unwrap();
    connection
}

/// The status line of the answer on `connection`, read within `deadline`
/// (None when nothing came), and whether the daemon then closed it.
fn status_and_close(
    connection: &mut std::net::TcpStream,
    deadline: Duration,
) -> (Option<String>, bool) {
    use std::io::Read;
    connection.set_read_timeout(Some(deadline)).unwrap();
    let mut answer = Vec::new();
    let mut buffer = [0u8; 4096];
    loop {
        match connection.read(&mut buffer) {
            Ok(0) => break,
            Ok(read) => answer.extend_from_slice(&buffer[..read]),
            Err(_) => {
                // Timed out: whatever came, and the connection still open.
                let text = String::from_utf8_lossy(&answer).into_owned();
                return (text.lines().next().map(str::to_string), false);
            }
        }
    }
    let text = String::from_utf8_lossy(&answer).into_owned();
    (text.lines().next().map(str::to_string), true)
}

#[tokio::test]
async fn a_webhook_is_checked_before_its_body_is_read_and_the_read_is_bounded() {
    let data_directory = tempfile::tempdir().unwrap();
    let config = format!(
        "[reconcile]\nenabled = false\n[api]\nwebhook_body_timeout_ms = 1000\n\n\
         [hooks.deploys]\ntype = \"generic\"\nsecret = \"{GENERIC_SECRET}\"\n\n\
         [hooks.alerts]\ntype = \"alertmanager\"\nsecret = \"{ALERTS_TOKEN}\"\n"
    );
    let daemon = Daemon::start_with_config(data_directory.path(), &config);
    let answer_within = Duration::from_secs(5);
    let announced = 1024 * 1024 - 1;

    // Each of these announces a large body and sends 3 bytes of it: the
    // answer comes at once, from the headers alone, and the connection is
    // closed. (Before, the body was awaited first, with no time limit.)
    let signature = format!("t={},v1={}", now(), "0".repeat(64));
    let cases = [
        ("POST /v1/hooks/no-such-hook HTTP/1.1".to_string(), "404"),
        ("POST /v1/hooks/deploys HTTP/1.1".to_string(), "401"),
        (
            "POST /v1/hooks/deploys HTTP/1.1\r\nX-Cairn-Signature: t=1,v1=nothex".to_string(),
            "401",
        ),
        (
            "POST /v1/hooks/alerts HTTP/1.1\r\nAuthorization: Bearer wrong-token".to_string(),
            "401",
        ),
        (
            format!("POST /v1/hooks/deploys HTTP/1.1\r\nX-Cairn-Signature: {signature}"),
            // Over max_body_bytes (1 MiB) as declared.
            "413",
        ),
    ];
    for (index, (head, status)) in cases.iter().enumerate() {
        let length = if index == 4 {
            2 * 1024 * 1024
        } else {
            announced
        };
        let mut connection = send_partial_request(&daemon, head, length, b"{\"i");
        let (line, closed) = status_and_close(&mut connection, answer_within);
        let line = line.unwrap_or_else(|| panic!("{head}: no answer within {answer_within:?}"));
        assert!(line.contains(status), "{head}: {line}");
        assert!(closed, "{head}: the connection stays open");
    }

    // A well-formed signature: the body is read, for at most the timeout.
    let mut stalled = Vec::new();
    for _ in 0..cairn::api::MAX_WEBHOOK_BODY_READS {
        let head = format!("POST /v1/hooks/deploys HTTP/1.1\r\nX-Cairn-Signature: {signature}");
        stalled.push(send_partial_request(&daemon, &head, announced, b"{\"i"));
    }
    // Past the bound (once the daemon has taken those, well within their
    // timeout), a delivery is refused at once, its body unread.
    std::thread::sleep(Duration::from_millis(500));
    let head = format!("POST /v1/hooks/deploys HTTP/1.1\r\nX-Cairn-Signature: {signature}");
    let mut over = send_partial_request(&daemon, &head, announced, b"{\"i");
    let (line, closed) = status_and_close(&mut over, answer_within);
    assert!(
        line.as_deref().is_some_and(|line| line.contains("503")),
        "{line:?}"
    );
    assert!(closed);
    // Every stalled read ends with 408 and a closed connection.
    for mut connection in stalled {
        let (line, closed) = status_and_close(&mut connection, answer_within);
        assert!(
            line.as_deref().is_some_and(|line| line.contains("408")),
            "{line:?}"
        );
        assert!(closed);
    }
    // Once they ended, a delivery is read again (and refused by its signature).
    let client = http_client();
    let body = b"{}".to_vec();
    let answer = post_hook(
        &client,
        &daemon,
        "deploys",
        &[("x-cairn-signature", signature.clone())],
        body,
    )
    .await;
    answer.assert_problem(401, "unauthorized");
    let metrics = get(&client, &daemon.url("/metrics")).await.body_text;
    assert_eq!(
        metric(
            &metrics,
            "cairn_webhook_deliveries_total{hook=\"deploys\",result=\"timeout\"}"
        ),
        cairn::api::MAX_WEBHOOK_BODY_READS as f64
    );
    assert_eq!(
        metric(
            &metrics,
            "cairn_webhook_deliveries_total{hook=\"deploys\",result=\"busy\"}"
        ),
        1.0
    );
}

#[tokio::test]
async fn text_that_could_forge_a_history_row_is_refused_or_recorded_escaped() {
    let data_directory = tempfile::tempdir().unwrap();
    let (daemon, client) = web_with_receivers(data_directory.path(), "").await;
    let head = head_seq(&client, &daemon).await;
    for reason in [
        "launch\n  99  1  2026-11-25T20:00:00.000Z  root  ClusterDeleted",
        "\u{1b}[2Kclean",
        "right-to-left \u{202e}override",
    ] {
        let scale = json!({"id": format!("forge-{}", reason.len()), "action": "scale",
                           "cluster": "web", "pool": "workers", "replicas": 4, "reason": reason});
        let answer = post_generic(&client, &daemon, &scale).await;
        answer.assert_problem(400, "malformed_payload");
        assert!(answer.body_text.contains("reason"), "{}", answer.body_text);
        assert!(
            answer.body_text.contains("control character"),
            "{}",
            answer.body_text
        );
    }
    // A key given twice (serde_json would keep the last `id`) is refused.
    let twice = br#"{"id": "dup-1", "id": "dup-2", "action": "pause", "cluster": "web"}"#.to_vec();
    let answer = post_generic_bytes(&client, &daemon, twice).await;
    answer.assert_problem(400, "malformed_payload");
    assert!(
        answer.body_text.contains("duplicate key"),
        "{}",
        answer.body_text
    );
    assert_eq!(head_seq(&client, &daemon).await, head);
    // A tab is text.
    let scale = json!({"id": "tabbed", "action": "scale", "cluster": "web",
                       "pool": "workers", "replicas": 4, "reason": "launch\tday"});
    post_generic(&client, &daemon, &scale)
        .await
        .assert_status(202);
    assert!(head_seq(&client, &daemon).await > head);

    // An Alertmanager notification is not refused for its text: its actions
    // run, and what it says is recorded escaped.
    let head = head_seq(&client, &daemon).await;
    let mut notification: Value = serde_json::from_slice(include_bytes!(
        "../fixtures/webhooks/alertmanager-firing.json"
    ))
    .unwrap();
    let forged_row = "cairn\n  99  1  2026-11-25T20:00:00.000Z  root  ClusterDeleted";
    notification["receiver"] = json!(forged_row);
    let saturated = notification["alerts"][1].clone();
    let mut workers = saturated.clone();
    workers["labels"]["cluster"] = json!("web");
    let mut escape = saturated;
    escape["labels"]["cluster"] = json!("web");
    escape["labels"]["pool"] = json!("\u{1b}[2Kworkers\u{202e}");
    escape["fingerprint"] = json!("00000000000000ff");
    notification["alerts"] = json!([workers, escape]);
    let bearer = [("authorization", format!("Bearer {ALERTS_TOKEN}"))];
    let answer = post_hook(
        &client,
        &daemon,
        "alerts",
        &bearer,
        serde_json::to_vec(&notification).unwrap(),
    )
    .await;
    answer.assert_status(202);
    let delivery = answer.body["delivery"].as_str().unwrap().to_string();
    wait_processed(&client, &daemon, "alerts", &delivery).await;
    let events = all_events(&client, &daemon).await;
    let recorded: Vec<&Value> = events[head as usize..]
        .iter()
        .filter(|event| event["type"] != "WebhookReceived")
        .collect();
    assert!(
        recorded.iter().any(|e| e["stream"] == "cluster/web"),
        "the pool was scaled: {recorded:?}"
    );
    let mut texts = Vec::new();
    for event in &recorded {
        strings_of(event, &mut texts);
    }
    for text in &texts {
        assert_eq!(
            cairn::model::check_text(text),
            Ok(()),
            "recorded unescaped: {text:?}"
        );
    }
    assert!(
        texts.iter().any(|text| text.contains("cairn\\n  99")),
        "the receiver is recorded, escaped: {texts:?}"
    );
    assert!(
        texts.iter().any(|text| text.contains("\\e[2Kworkers")),
        "the pool's name is recorded, escaped: {texts:?}"
    );
}

/// Every string in `value`, at any depth.
fn strings_of(value: &Value, into: &mut Vec<String>) {
    match value {
        Value::String(text) => into.push(text.clone()),
        Value::Array(items) => items.iter().for_each(|item| strings_of(item, into)),
        Value::Object(fields) => fields.values().for_each(|item| strings_of(item, into)),
        _ => {}
    }
}
