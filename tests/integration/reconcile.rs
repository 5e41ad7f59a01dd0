//! Reconcilers and providers, end to end: the real daemon with the simulated
//! cloud (and the reference exec plugin), over HTTP and the command line.
//! Every wait is a poll with a deadline; nothing here asserts a timing.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::harness::{
    all_events, get, head_seq, http_client, post_apply, run_command_line, Daemon, HttpAnswer,
    ProcessOutput,
};

/// How long a cluster may take to converge in these tests; far above what
/// it takes, so that only a stuck reconciler fails.
pub(crate) const CONVERGE_DEADLINE: Duration = Duration::from_secs(90);

/// Runs the command line client against the daemon and insists it succeeds.
pub(crate) fn cli(daemon: &Daemon, arguments: &[&str]) -> ProcessOutput {
    let output = run_command_line(Some(&daemon.base_url()), arguments, None);
    assert_eq!(
        output.exit_code,
        0,
        "cairn {arguments:?} failed:\n{}",
        output.all_output()
    );
    output
}

/// Polls `probe` until it returns Some, or panics after `deadline`.
pub(crate) async fn wait_for<T, F, Fut>(what: &str, deadline: Duration, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let started = Instant::now();
    loop {
        if let Some(value) = probe().await {
            return value;
        }
        assert!(started.elapsed() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A cluster manifest on subnets a and b with these pools (name, replicas).
pub(crate) fn cluster_manifest(
    name: &str,
    provider: &str,
    drift: &str,
    pools: &[(&str, i64)],
) -> String {
    let pools: String = pools
        .iter()
        .map(|(pool, replicas)| {
            format!(
                "    - {{name: {pool}, role: worker, replicas: {replicas}, machineType: m5.large, \
                 image: ubuntu-24.04, subnets: [a, b]}}\n"
            )
        })
        .collect();
    format!(
        "apiVersion: cairn/v1\nkind: Cluster\nmetadata: {{name: {name}}}\nspec:\n  provider: {provider}\n  \
         region: eu-west-1\n  kubernetesVersion: 1.31.2\n  network:\n    cidr: 10.0.0.0/16\n    subnets:\n      \
         - {{name: a, cidr: 10.0.1.0/24}}\n      - {{name: b, cidr: 10.0.2.0/24}}\n  firewall:\n    \
         - {{name: api, direction: ingress, protocol: tcp, ports: \"443\", source: 0.0.0.0/0}}\n  pools:\n{pools}  \
         policy: {{drift: {drift}}}\n"
    )
}

/// A config with a fast, seeded simulated cloud.
pub(crate) fn sim_config(failure_rate: f64, create_latency_ms: u64, resync_ms: u64) -> String {
    format!(
        "[reconcile]\nresync_interval_ms = {resync_ms}\nbackoff_base_ms = 20\nbackoff_max_ms = 500\n\
         concurrency = 16\ncluster_concurrency = 16\n\n\
         [sim]\nseed = 7\nfailure_rate = {failure_rate}\nlist_delay_ms = 30\n\n\
         [sim.latency_ms]\ncreate = {create_latency_ms}\ndelete = 2\ndescribe = 0\nlookup = 0\nlist = 1\n"
    )
}

pub(crate) async fn cluster_view(
    client: &reqwest::Client,
    daemon: &Daemon,
    name: &str,
) -> Option<Value> {
    let answer = get(client, &daemon.url(&format!("/v1/clusters/{name}"))).await;
    (answer.status == 200).then_some(answer.body)
}

pub(crate) fn condition(view: &Value, condition: &str) -> Option<(String, String)> {
    view["conditions"].as_array()?.iter().find_map(|c| {
        (c["type"] == condition).then(|| {
            (
                c["status"].as_str().unwrap_or_default().to_string(),
                c["reason"].as_str().unwrap_or_default().to_string(),
            )
        })
    })
}

/// Waits until the cluster's Ready condition is True.
pub(crate) async fn wait_ready(client: &reqwest::Client, daemon: &Daemon, name: &str) -> Value {
    wait_for(
        &format!("cluster {name} to be Ready"),
        CONVERGE_DEADLINE,
        || async {
            let view = cluster_view(client, daemon, name).await?;
            (condition(&view, "Ready")? == ("True".to_string(), "Converged".to_string()))
                .then_some(view)
        },
    )
    .await
}

/// The simulated cloud's true state for one cluster.
pub(crate) async fn sim_resources(
    client: &reqwest::Client,
    daemon: &Daemon,
    cluster: &str,
) -> Vec<Value> {
    let answer = get(client, &daemon.url("/v1/sim/resources")).await;
    answer.assert_status(200);
    answer.body["resources"]
        .as_array()
        .expect("a resources array")
        .iter()
        .filter(|resource| resource["cluster"] == cluster)
        .cloned()
        .collect()
}

/// Machine name -> (pool, provider id), panicking on a duplicate name.
pub(crate) fn sim_machines(resources: &[Value]) -> BTreeMap<String, (String, String)> {
    let mut machines = BTreeMap::new();
    for resource in resources {
        let Some(machine) = resource["spec"].get("machine") else {
            continue;
        };
        let name = machine["name"]
            .as_str()
            .expect("a machine name")
            .to_string();
        let entry = (
            machine["pool"].as_str().expect("a pool").to_string(),
            resource["providerId"]
                .as_str()
                .expect("a provider id")
                .to_string(),
        );
        let previous = machines.insert(name.clone(), entry);
        assert!(
            previous.is_none(),
            "duplicate machine {name} in the cloud: {resources:#?}"
        );
    }
    machines
}

/// For every token, the number of ActionStarted and of outcomes must match.
fn assert_every_start_has_an_outcome(events: &[Value], cluster: &str) {
    let stream = format!("reconcile/{cluster}");
    let mut balance: BTreeMap<String, (u32, u32)> = BTreeMap::new();
    for event in events.iter().filter(|event| event["stream"] == stream) {
        let token = event["data"]["token"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        match event["type"].as_str() {
            Some("ActionStarted") => balance.entry(token).or_default().0 += 1,
            Some("ActionSucceeded" | "ActionFailed") => balance.entry(token).or_default().1 += 1,
            _ => {}
        }
    }
    assert!(
        !balance.is_empty(),
        "no actions were recorded for {cluster}"
    );
    let unbalanced: Vec<_> = balance
        .iter()
        .filter(|(_, (started, outcomes))| started != outcomes)
        .collect();
    assert!(
        unbalanced.is_empty(),
        "tokens whose starts and outcomes differ: {unbalanced:?}"
    );
}

fn expected_machine_names(pools: &[(&str, i64)]) -> BTreeSet<String> {
    pools
        .iter()
        .flat_map(|(pool, replicas)| (0..*replicas).map(move |index| format!("{pool}-{index}")))
        .collect()
}

#[tokio::test]
async fn an_applied_cluster_becomes_cloud_resources_with_every_intent_and_outcome_logged() {
    let data = tempfile::tempdir().unwrap();
    let daemon = Daemon::start_with_config(data.path(), &sim_config(0.0, 2, 60_000));
    let client = http_client();
    let pools = [("control", 3), ("workers", 5)];
    let manifest = cluster_manifest("alpha", "sim", "correct", &pools);
    post_apply(&client, &daemon, "/v1/apply", &manifest, &[])
        .await
        .assert_status(201);

    let view = wait_ready(&client, &daemon, "alpha").await;
    let observed = view["observed"]["resources"].as_array().unwrap();
    // A network, two subnets, one firewall rule and eight machines.
    assert_eq!(observed.len(), 12, "{view:#}");
    assert!(view["observed"]["inFlight"].as_array().unwrap().is_empty());
    assert_eq!(condition(&view, "Progressing").unwrap().0, "False");
    let machine = observed
        .iter()
        .find(|r| r["key"] == "machine/workers-1")
        .unwrap();
    assert_eq!(machine["pool"], "workers");
    let address = machine["address"].as_str().unwrap();
    assert!(
        address.starts_with("10.0.2."),
        "workers-1 goes to subnet b: {machine}"
    );

    let cloud = sim_resources(&client, &daemon, "alpha").await;
    let machines = sim_machines(&cloud);
    assert_eq!(
        machines.keys().cloned().collect::<BTreeSet<_>>(),
        expected_machine_names(&pools)
    );
    assert_eq!(cloud.len(), 12);

    let events = all_events(&client, &daemon).await;
    assert_every_start_has_an_outcome(&events, "alpha");
    // The network's intent comes before any subnet's, subnets before machines.
    let first_start = |kind: &str| {
        events
            .iter()
            .position(|e| {
                e["type"] == "ActionStarted"
                    && e["data"]["action"]["create"]["spec"].get(kind).is_some()
            })
            .unwrap_or_else(|| panic!("no create of a {kind}"))
    };
    assert!(first_start("network") < first_start("subnet"));
    assert!(first_start("subnet") < first_start("machine"));
    // Intents are caused by the desired-state event and share its correlation.
    let declared = events
        .iter()
        .find(|e| e["type"] == "ClusterDeclared")
        .unwrap();
    let started = events
        .iter()
        .find(|e| e["type"] == "ActionStarted")
        .unwrap();
    assert_eq!(started["correlation"], declared["correlation"]);
    assert_eq!(started["cause"]["event"]["id"], declared["id"]);
    assert_eq!(started["actor"]["kind"], "reconciler");

    // The command line shows desired, observed and conditions.
    let text = cli(&daemon, &["get", "cluster", "alpha"]).all_output();
    for expected in [
        "conditions:",
        "Ready",
        "Converged",
        "machine/workers-4",
        "10.0.1.4",
        "desired:",
    ] {
        assert!(
            text.contains(expected),
            "`get cluster` lacks {expected:?}:\n{text}"
        );
    }
    let metrics = get(&client, &daemon.url("/metrics")).await;
    for family in [
        "cairn_reconcile_actions_total{operation=\"create\",outcome=\"succeeded\"} 12",
        "cairn_reconcile_pass_seconds",
        "cairn_reconcile_queue_depth",
        "cairn_reconcile_lag_events",
    ] {
        assert!(
            metrics.body_text.contains(family),
            "/metrics lacks {family}:\n{}",
            metrics.body_text
        );
    }
}

#[tokio::test]
async fn kill_9_during_reconciliation_never_duplicates_a_machine() {
    let data = tempfile::tempdir().unwrap();
    let config = sim_config(0.0, 25, 60_000);
    let pools = [("control", 3), ("workers", 197)];
    let manifest = cluster_manifest("crash", "sim", "correct", &pools);
    let client = http_client();
    let mut daemon = Daemon::start_with_config(data.path(), &config);
    post_apply(&client, &daemon, "/v1/apply", &manifest, &[])
        .await
        .assert_status(201);

    // Kill when the log shows intents without outcomes (the window a crash
    // must survive), once past each threshold of machines in the cloud.
    let mut kills_in_flight = 0;
    for threshold in [20, 70, 120, 170] {
        let in_flight = wait_for(
            "intents in flight past a threshold",
            CONVERGE_DEADLINE,
            || async {
                let count = sim_machines(&sim_resources(&client, &daemon, "crash").await).len();
                if count == 200 {
                    return Some(0);
                }
                let view = cluster_view(&client, &daemon, "crash").await?;
                let in_flight = view["observed"]["inFlight"].as_array()?.len();
                (count >= threshold && in_flight > 0).then_some(in_flight)
            },
        )
        .await;
        if in_flight == 0 {
            break;
        }
        daemon.kill_9();
        kills_in_flight += 1;
        daemon = Daemon::start_with_config(data.path(), &config);
    }
    assert!(
        kills_in_flight >= 3,
        "the daemon was killed with intents in flight only {kills_in_flight} times"
    );

    let view = wait_ready(&client, &daemon, "crash").await;
    assert!(
        view["observed"]["inFlight"].as_array().unwrap().is_empty(),
        "{view:#}"
    );
    assert!(
        view["observed"]["orphans"].as_array().unwrap().is_empty(),
        "{view:#}"
    );
    let cloud = sim_resources(&client, &daemon, "crash").await;
    let machines = sim_machines(&cloud);
    assert_eq!(machines.len(), 200);
    assert_eq!(
        machines.keys().cloned().collect::<BTreeSet<_>>(),
        expected_machine_names(&pools)
    );
    for (name, (pool, _)) in &machines {
        assert!(
            name.starts_with(&format!("{pool}-")),
            "{name} is in pool {pool}"
        );
    }
    // No orphans: exactly the network, two subnets, one rule and the machines.
    assert_eq!(cloud.len(), 204);
    let events = all_events(&client, &daemon).await;
    assert_every_start_has_an_outcome(&events, "crash");
    let verify = get(&client, &daemon.url("/v1/verify")).await;
    assert_eq!(verify.body["ok"], true, "{}", verify.body_text);
}

#[tokio::test]
async fn with_a_fifth_of_provider_calls_failing_the_cluster_still_converges_without_duplicates() {
    let data = tempfile::tempdir().unwrap();
    let daemon = Daemon::start_with_config(data.path(), &sim_config(0.2, 1, 60_000));
    let client = http_client();
    let pools = [("workers", 40)];
    let manifest = cluster_manifest("flaky", "sim", "correct", &pools);
    post_apply(&client, &daemon, "/v1/apply", &manifest, &[])
        .await
        .assert_status(201);
    wait_ready(&client, &daemon, "flaky").await;

    let cloud = sim_resources(&client, &daemon, "flaky").await;
    let machines = sim_machines(&cloud);
    assert_eq!(
        machines.keys().cloned().collect::<BTreeSet<_>>(),
        expected_machine_names(&pools)
    );
    assert_eq!(cloud.len(), 44, "no duplicates or leftovers: {cloud:#?}");
    let events = all_events(&client, &daemon).await;
    let failures = events
        .iter()
        .filter(|e| e["type"] == "ActionFailed")
        .count();
    assert!(
        failures > 0,
        "a failure rate of 0.2 over 44 creates failed none"
    );
    // A retry reuses the token of the attempt it retries.
    let retried = events
        .iter()
        .find(|e| e["type"] == "ActionStarted" && e["data"]["attempt"].as_u64() > Some(1))
        .expect("at least one retry");
    let token = &retried["data"]["token"];
    assert!(events.iter().any(|e| e["type"] == "ActionStarted"
        && e["data"]["token"] == *token
        && e["data"]["attempt"] == 1));
    assert_every_start_has_an_outcome(&events, "flaky");
}

#[tokio::test]
async fn drift_is_repaired_with_policy_correct_and_only_reported_with_policy_report() {
    let data = tempfile::tempdir().unwrap();
    let daemon = Daemon::start_with_config(data.path(), &sim_config(0.0, 1, 200));
    let client = http_client();
    let pools = [("workers", 3)];
    for (name, policy) in [("fixme", "correct"), ("tellme", "report")] {
        let manifest = cluster_manifest(name, "sim", policy, &pools);
        post_apply(&client, &daemon, "/v1/apply", &manifest, &[])
            .await
            .assert_status(201);
        wait_ready(&client, &daemon, name).await;
    }
    let old_id = |cloud: &[Value]| sim_machines(cloud)["workers-0"].1.clone();
    let fixme_old = old_id(&sim_resources(&client, &daemon, "fixme").await);
    let tellme_old = old_id(&sim_resources(&client, &daemon, "tellme").await);

    for name in ["fixme", "tellme"] {
        let output = cli(&daemon, &["sim", "delete-machine", name, "workers-0"]);
        assert!(
            output.all_output().contains("behind Cairn's back"),
            "{}",
            output.all_output()
        );
    }

    // Policy correct: a new workers-0, after DriftDetected. The log (the
    // observed state) is what is waited for: the cloud has the machine a
    // moment before its ActionSucceeded is appended.
    let fixme_new = wait_for("workers-0 to be replaced", CONVERGE_DEADLINE, || async {
        let view = cluster_view(&client, &daemon, "fixme").await?;
        view["observed"]["resources"]
            .as_array()?
            .iter()
            .find(|resource| resource["key"] == "machine/workers-0")
            .and_then(|resource| resource["providerId"].as_str())
            .map(str::to_string)
            .filter(|id| *id != fixme_old)
    })
    .await;
    let machines = sim_machines(&sim_resources(&client, &daemon, "fixme").await);
    assert_eq!(machines["workers-0"].1, fixme_new);
    let events = all_events(&client, &daemon).await;
    let drift_seq = events
        .iter()
        .find(|e| e["type"] == "DriftDetected" && e["stream"] == "reconcile/fixme")
        .map(|e| e["seq"].as_u64().unwrap())
        .expect("DriftDetected for fixme");
    let repair = events
        .iter()
        .find(|e| e["type"] == "ActionSucceeded" && e["data"]["providerId"] == fixme_new.as_str())
        .expect("the repair's ActionSucceeded");
    assert!(repair["seq"].as_u64().unwrap() > drift_seq);
    let drift = events.iter().find(|e| e["seq"] == drift_seq).unwrap();
    assert_eq!(drift["data"]["resource"]["name"], "workers-0");
    assert_eq!(drift["data"]["expected"]["providerId"], fixme_old.as_str());
    assert!(drift["data"]["actual"].is_null());

    // Policy report: DriftDetected and Degraded, and no machine is created.
    let view = wait_for("tellme to report drift", CONVERGE_DEADLINE, || async {
        let view = cluster_view(&client, &daemon, "tellme").await?;
        (condition(&view, "Degraded")? == ("True".to_string(), "DriftReported".to_string()))
            .then_some(view)
    })
    .await;
    assert_eq!(
        condition(&view, "Ready").unwrap(),
        ("False".into(), "DriftReported".into())
    );
    let machines = sim_machines(&sim_resources(&client, &daemon, "tellme").await);
    assert!(
        !machines.contains_key("workers-0"),
        "report must not repair: {machines:?}"
    );
    let events = all_events(&client, &daemon).await;
    let drift_seq = events
        .iter()
        .find(|e| e["type"] == "DriftDetected" && e["stream"] == "reconcile/tellme")
        .map(|e| e["seq"].as_u64().unwrap())
        .expect("DriftDetected for tellme");
    assert!(
        !events.iter().any(|e| e["stream"] == "reconcile/tellme"
            && e["type"] == "ActionStarted"
            && e["seq"].as_u64().unwrap() > drift_seq),
        "no action may follow reported drift"
    );
    assert_ne!(tellme_old, "");
}

#[tokio::test]
async fn pause_scale_resume_and_delete_through_the_command_line() {
    let data = tempfile::tempdir().unwrap();
    let daemon = Daemon::start_with_config(data.path(), &sim_config(0.0, 1, 60_000));
    let client = http_client();
    let manifest = cluster_manifest("beta", "sim", "correct", &[("workers", 2)]);
    post_apply(&client, &daemon, "/v1/apply", &manifest, &[])
        .await
        .assert_status(201);
    wait_ready(&client, &daemon, "beta").await;

    cli(&daemon, &["pause", "beta", "--reason", "maintenance"]);
    wait_for("the Paused condition", CONVERGE_DEADLINE, || async {
        let view = cluster_view(&client, &daemon, "beta").await?;
        (condition(&view, "Paused")?.0 == "True").then_some(())
    })
    .await;
    let scaled = cli(&daemon, &["scale", "beta", "workers", "4"]);
    assert!(
        scaled.all_output().contains("workers"),
        "{}",
        scaled.all_output()
    );
    // Paused: for a while, no provider call happens (a window, not a timing).
    let paused_at = head_seq(&client, &daemon).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        sim_machines(&sim_resources(&client, &daemon, "beta").await).len(),
        2
    );
    let events = all_events(&client, &daemon).await;
    assert!(!events
        .iter()
        .any(|e| e["type"] == "ActionStarted" && e["seq"].as_u64().unwrap() > paused_at));

    cli(&daemon, &["resume", "beta"]);
    wait_for("four machines", CONVERGE_DEADLINE, || async {
        (sim_machines(&sim_resources(&client, &daemon, "beta").await).len() == 4).then_some(())
    })
    .await;
    // Scaling over HTTP, and a pool that does not exist.
    let answer = HttpAnswer::read(
        client
            .post(daemon.url("/v1/clusters/beta/pools/nope/scale"))
            .header("content-type", "application/json")
            .body(r#"{"replicas": 3}"#)
            .send()
            .await
            .unwrap(),
    )
    .await;
    answer.assert_problem(404, "pool_not_found");

    cli(&daemon, &["delete", "cluster", "beta"]);
    wait_for("beta to be gone", CONVERGE_DEADLINE, || async {
        cluster_view(&client, &daemon, "beta")
            .await
            .is_none()
            .then_some(())
    })
    .await;
    assert!(sim_resources(&client, &daemon, "beta").await.is_empty());
    let history = get(&client, &daemon.url("/v1/clusters/beta/history")).await;
    history.assert_status(200);
    let types: Vec<&str> = history.body["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["type"].as_str().unwrap())
        .collect();
    assert_eq!(
        types,
        [
            "ClusterDeclared",
            "ClusterPaused",
            "PoolScaled",
            "ClusterResumed",
            "ClusterDeletionRequested"
        ]
    );
    let events = all_events(&client, &daemon).await;
    let deleted_event = events
        .iter()
        .find(|e| e["type"] == "ClusterDeleted")
        .expect("ClusterDeleted");
    assert_eq!(deleted_event["stream"], "reconcile/beta");
    // Deleting machines, then subnets, then the network: reverse order.
    let delete_position = |kind: &str| {
        events
            .iter()
            .position(|e| {
                e["type"] == "ActionStarted" && e["data"]["action"]["delete"]["key"]["kind"] == kind
            })
            .unwrap_or_else(|| panic!("no delete of a {kind}"))
    };
    assert!(delete_position("machine") < delete_position("subnet"));
    assert!(delete_position("subnet") < delete_position("network"));
    // The same name can be declared again.
    post_apply(&client, &daemon, "/v1/apply", &manifest, &[])
        .await
        .assert_status(200);
    wait_ready(&client, &daemon, "beta").await;
}

#[tokio::test]
async fn the_reference_exec_plugin_drives_a_cluster() {
    let data = tempfile::tempdir().unwrap();
    let plugin_state = tempfile::tempdir().unwrap();
    let plugin =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tools/plugins/reference_plugin.py");
    let config = format!(
        "{}\n[providers.exec.ref]\ncommand = [\"python3\", {:?}, \"--state-dir\", {:?}]\ntimeout_seconds = 10\n",
        sim_config(0.0, 1, 60_000),
        plugin.to_str().unwrap(),
        plugin_state.path().to_str().unwrap()
    );
    let daemon = Daemon::start_with_config(data.path(), &config);
    let client = http_client();
    let manifest = cluster_manifest("plugged", "exec:ref", "correct", &[("workers", 3)]);
    post_apply(&client, &daemon, "/v1/apply", &manifest, &[])
        .await
        .assert_status(201);
    let view = wait_ready(&client, &daemon, "plugged").await;
    let resources = view["observed"]["resources"].as_array().unwrap();
    assert_eq!(resources.len(), 7, "{view:#}");
    for resource in resources {
        let id = resource["providerId"].as_str().unwrap();
        assert!(
            id.starts_with("ref-"),
            "made by the plugin, not the sim: {id}"
        );
    }
    assert!(sim_resources(&client, &daemon, "plugged").await.is_empty());
}

#[tokio::test]
async fn commands_need_their_roles_and_a_cluster_being_deleted_refuses_applies() {
    let data = tempfile::tempdir().unwrap();
    let config = format!(
        "{}\n[[tokens]]\nname = \"admin\"\nsecret = \"admin-secret-0123456789\"\nrole = \"admin\"\n\n\
         [[tokens]]\nname = \"alice\"\nsecret = \"alice-secret-0123456789\"\nrole = \"write\"\n\n\
         [[tokens]]\nname = \"reader\"\nsecret = \"reader-secret-0123456789\"\nrole = \"read\"\n",
        sim_config(0.0, 1, 60_000)
    );
    let daemon = Daemon::start_with_config(data.path(), &config);
    let client = http_client();
    let send = |method: reqwest::Method, path: &str, token: &str, body: &str| {
        let request = client
            .request(method, daemon.url(path))
            .bearer_auth(token)
            .header("content-type", "application/json")
            .body(body.to_string());
        async move { HttpAnswer::read(request.send().await.unwrap()).await }
    };
    let (admin, alice, reader) = (
        "admin-secret-0123456789",
        "alice-secret-0123456789",
        "reader-secret-0123456789",
    );
    let manifest = cluster_manifest("gamma", "sim", "correct", &[("workers", 1)]);
    let applied = client
        .post(daemon.url("/v1/apply"))
        .bearer_auth(alice)
        .header("content-type", "application/yaml")
        .body(manifest.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(applied.status(), 201);
    wait_for("gamma to be Ready", CONVERGE_DEADLINE, || async {
        let view = HttpAnswer::read(
            client
                .get(daemon.url("/v1/clusters/gamma"))
                .bearer_auth(reader)
                .send()
                .await
                .unwrap(),
        )
        .await;
        (condition(&view.body, "Ready")?.0 == "True").then_some(())
    })
    .await;

    // Readers may look, not act.
    let post = reqwest::Method::POST;
    send(post.clone(), "/v1/clusters/gamma/pause", reader, "")
        .await
        .assert_problem(403, "forbidden");
    send(
        post.clone(),
        "/v1/clusters/gamma/pools/workers/scale",
        reader,
        r#"{"replicas": 2}"#,
    )
    .await
    .assert_problem(403, "forbidden");
    send(reqwest::Method::DELETE, "/v1/clusters/gamma", reader, "")
        .await
        .assert_problem(403, "forbidden");
    let listed = send(reqwest::Method::GET, "/v1/sim/resources", reader, "").await;
    listed.assert_status(200);
    let resources = listed.body["resources"].as_array().unwrap();
    let subnet = resources
        .iter()
        .find(|r| r["spec"]["subnet"]["name"] == "a" && r["cluster"] == "gamma")
        .unwrap()["providerId"]
        .as_str()
        .unwrap()
        .to_string();
    // Changing the cloud behind Cairn's back is for admins only; the sim,
    // like a cloud, refuses to delete a subnet with a machine in it.
    let path = format!("/v1/sim/resources/{subnet}");
    send(reqwest::Method::DELETE, &path, alice, "")
        .await
        .assert_problem(403, "forbidden");
    send(reqwest::Method::DELETE, &path, admin, "")
        .await
        .assert_problem(409, "resource_in_use");
    send(
        reqwest::Method::DELETE,
        "/v1/sim/resources/sim-m-999999",
        admin,
        "",
    )
    .await
    .assert_problem(404, "not_found");

    // A bad scale changes nothing.
    let version_before = send(reqwest::Method::GET, "/v1/clusters/gamma", reader, "")
        .await
        .body["streamVersion"]
        .clone();
    send(
        post.clone(),
        "/v1/clusters/gamma/pools/workers/scale",
        alice,
        r#"{"replicas": 5000}"#,
    )
    .await
    .assert_problem(422, "invalid_manifest");
    send(
        post.clone(),
        "/v1/clusters/gamma/pools/workers/scale",
        alice,
        r#"{"replica": 2}"#,
    )
    .await
    .assert_problem(400, "malformed");
    let version_after = send(reqwest::Method::GET, "/v1/clusters/gamma", reader, "")
        .await
        .body["streamVersion"]
        .clone();
    assert_eq!(version_before, version_after);

    // Writers may delete. Paused first, the deletion waits, and meanwhile
    // the cluster refuses applies; resumed, it goes.
    send(post.clone(), "/v1/clusters/gamma/pause", alice, "")
        .await
        .assert_status(200);
    send(reqwest::Method::DELETE, "/v1/clusters/gamma", alice, "")
        .await
        .assert_status(202);
    let refused = HttpAnswer::read(
        client
            .post(daemon.url("/v1/apply"))
            .bearer_auth(alice)
            .header("content-type", "application/yaml")
            .body(manifest.replace("replicas: 1", "replicas: 2"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    refused.assert_problem(409, "cluster_deleting");
    send(post.clone(), "/v1/clusters/gamma/resume", alice, "")
        .await
        .assert_status(200);
    wait_for("gamma to be deleted", CONVERGE_DEADLINE, || async {
        let view = send(reqwest::Method::GET, "/v1/clusters/gamma", reader, "").await;
        (view.status == 404).then_some(())
    })
    .await;
}
