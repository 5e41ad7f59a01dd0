//! Replacing a machine on request (what an alert's receiver asks for): the
//! real daemon on the simulated cloud, over HTTP and the command line.
//! Every wait is a poll with a deadline; nothing here asserts a timing.

use serde_json::Value;

use crate::harness::{all_events, get, http_client, post_apply, Daemon, HttpAnswer};
use crate::reconcile::{
    cli, cluster_manifest, cluster_view, condition, sim_config, sim_machines, sim_resources,
    wait_for, wait_ready, CONVERGE_DEADLINE,
};

/// `POST /v1/clusters/{cluster}/machines/{machine}/replace` with a reason.
async fn replace(
    client: &reqwest::Client,
    daemon: &Daemon,
    cluster: &str,
    machine: &str,
) -> HttpAnswer {
    let path = format!("/v1/clusters/{cluster}/machines/{machine}/replace");
    let response = client
        .post(daemon.url(&path))
        .header("x-cairn-reason", "alertname=NodeDown")
        .send()
        .await
        .expect("the replace request is answered");
    HttpAnswer::read(response).await
}

/// The machine's observed resource in a cluster view.
fn observed_machine<'a>(view: &'a Value, machine: &str) -> Option<&'a Value> {
    let key = format!("machine/{machine}");
    view["observed"]["resources"]
        .as_array()?
        .iter()
        .find(|resource| resource["key"] == key.as_str())
}

/// The cloud's provider id of a machine, by name.
async fn cloud_provider_id(
    client: &reqwest::Client,
    daemon: &Daemon,
    cluster: &str,
    machine: &str,
) -> Option<String> {
    let machines = sim_machines(&sim_resources(client, daemon, cluster).await);
    machines
        .get(machine)
        .map(|(_, provider_id)| provider_id.clone())
}

/// Waits until the machine exists in the cloud and in the log under another
/// provider id than `old`, nothing is in flight and the cluster is Ready.
async fn wait_replaced(
    client: &reqwest::Client,
    daemon: &Daemon,
    cluster: &str,
    machine: &str,
    old: &str,
) -> String {
    wait_for(
        &format!("machine {machine} to be replaced and {cluster} Ready"),
        CONVERGE_DEADLINE,
        || async {
            let cloud = cloud_provider_id(client, daemon, cluster, machine).await?;
            let view = cluster_view(client, daemon, cluster).await?;
            let logged = observed_machine(&view, machine)?["providerId"].as_str()?;
            let settled = view["observed"]["inFlight"].as_array()?.is_empty()
                && condition(&view, "Ready")? == ("True".into(), "Converged".into());
            (cloud != old && logged == cloud && settled).then_some(cloud)
        },
    )
    .await
}

#[tokio::test]
async fn a_machine_is_replaced_on_request_once_per_incarnation() {
    let data = tempfile::tempdir().unwrap();
    let daemon = Daemon::start_with_config(data.path(), &sim_config(0.0, 2, 60_000));
    let client = http_client();
    let manifest = cluster_manifest("omega", "sim", "correct", &[("workers", 3)]);
    post_apply(&client, &daemon, "/v1/apply", &manifest, &[])
        .await
        .assert_status(201);
    wait_ready(&client, &daemon, "omega").await;
    let old = cloud_provider_id(&client, &daemon, "omega", "workers-1")
        .await
        .expect("workers-1 exists in the cloud");
    let others_before = sim_machines(&sim_resources(&client, &daemon, "omega").await);

    // Paused, nothing carries the request out, so the second identical
    // request meets the same incarnation of workers-1 for certain.
    cli(&daemon, &["pause", "omega"]);
    let first = replace(&client, &daemon, "omega", "workers-1").await;
    first.assert_status(200);
    assert_eq!(first.body["changed"], true, "{}", first.body_text);
    let event = &first.body["event"];
    assert_eq!(event["type"], "MachineReplacementRequested", "{event}");
    assert_eq!(
        event["data"],
        serde_json::json!({"machine": "workers-1", "providerId": old})
    );
    assert_eq!(event["cause"]["request"]["reason"], "alertname=NodeDown");
    let version = first.body["streamVersion"].as_u64().unwrap();
    let view = cluster_view(&client, &daemon, "omega").await.unwrap();
    assert_eq!(view["replacements"]["workers-1"], old.as_str(), "{view:#}");

    let events_before = all_events(&client, &daemon).await.len();
    let second = replace(&client, &daemon, "omega", "workers-1").await;
    second.assert_status(200);
    assert_eq!(second.body["changed"], false, "{}", second.body_text);
    assert!(second.body["event"].is_null(), "{}", second.body_text);
    assert_eq!(second.body["streamVersion"].as_u64().unwrap(), version);
    // The same machine named by its provider id is the same request too.
    let by_id = replace(&client, &daemon, "omega", &old).await;
    assert_eq!(by_id.body["changed"], false, "{}", by_id.body_text);
    assert_eq!(all_events(&client, &daemon).await.len(), events_before);

    cli(&daemon, &["resume", "omega"]);
    let new = wait_replaced(&client, &daemon, "omega", "workers-1", &old).await;
    assert_ne!(new, old);
    // Only workers-1 was replaced; the other machines are the same ones.
    let others_after = sim_machines(&sim_resources(&client, &daemon, "omega").await);
    assert_eq!(others_after.len(), 3, "{others_after:?}");
    for name in ["workers-0", "workers-2"] {
        assert_eq!(
            others_after[name], others_before[name],
            "{name} was touched"
        );
    }

    // Unpaused, the request alone starts a pass; here the command line
    // names the machine by its private address, and the reconciler's
    // actions are caused by the request and share its correlation.
    let view = cluster_view(&client, &daemon, "omega").await.unwrap();
    let address = observed_machine(&view, "workers-0").unwrap()["address"]
        .as_str()
        .expect("a machine has an address")
        .to_string();
    let old_0 = others_after["workers-0"].1.clone();
    let output = cli(
        &daemon,
        &[
            "replace-machine",
            "omega",
            &address,
            "--reason",
            "alertname=NodeDown",
            "-o",
            "json",
        ],
    );
    let answer: Value = serde_json::from_str(&output.standard_output).expect("JSON output");
    assert_eq!(answer["changed"], true, "{answer}");
    assert_eq!(answer["event"]["data"]["machine"], "workers-0");
    wait_replaced(&client, &daemon, "omega", "workers-0", &old_0).await;
    let requested = &answer["event"];
    let events = all_events(&client, &daemon).await;
    let delete_started = events
        .iter()
        .find(|e| {
            e["type"] == "ActionStarted"
                && e["data"]["action"]["delete"]["providerId"] == old_0.as_str()
        })
        .expect("the delete of the replaced machine was started");
    assert_eq!(delete_started["cause"]["event"]["id"], requested["id"]);
    assert_eq!(delete_started["correlation"], requested["correlation"]);

    // Unknown machines and clusters are 404s, with distinct codes.
    replace(&client, &daemon, "omega", "workers-9")
        .await
        .assert_problem(404, "machine_not_found");
    replace(&client, &daemon, "omega", "sim-m-nope")
        .await
        .assert_problem(404, "machine_not_found");
    replace(&client, &daemon, "nowhere", "workers-1")
        .await
        .assert_problem(404, "cluster_not_found");
    let history = get(&client, &daemon.url("/v1/clusters/omega/history")).await;
    let requests = history.body["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["type"] == "MachineReplacementRequested")
        .count();
    assert_eq!(requests, 2, "{}", history.body_text);
}
