//! The HTTP API, driven with reqwest against a real daemon: applying and
//! reading clusters, optimistic concurrency, idempotency keys, problem
//! documents, health and metrics endpoints, verification and bearer tokens.

use std::time::Duration;

use serde_json::Value;

use crate::harness::{
    all_events, example_manifest_text, get, head_seq, http_client,
    manifest_with_name_and_worker_replicas, pool_replicas, post_apply, run_to_exit_with_deadline,
    Daemon, CAIRN_BINARY_PATH, LEDGER_ONLY_CONFIG,
};

/// The seqs of a list of events as JSON.
fn seqs_of(events: &[Value]) -> Vec<u64> {
    events
        .iter()
        .map(|event| event["seq"].as_u64().expect("seq is a number"))
        .collect()
}

/// The seqs of `GET /v1/events` with this query string, on one page.
async fn seqs_of_event_query(
    client: &reqwest::Client,
    daemon: &Daemon,
    query_string: &str,
) -> Vec<u64> {
    let answer = get(client, &daemon.url(&format!("/v1/events?{query_string}"))).await;
    answer.assert_status(200);
    seqs_of(answer.body["events"].as_array().expect("an events array"))
}

#[tokio::test]
async fn applying_scaling_and_reading_a_cluster_over_http() {
    let data_directory = tempfile::tempdir().unwrap();
    let daemon = Daemon::start(data_directory.path());
    let client = http_client();
    let example = example_manifest_text();

    // The first apply declares the cluster: one ClusterDeclared event, seq 1.
    let declared = post_apply(&client, &daemon, "/v1/apply", &example, &[]).await;
    declared.assert_status(201);
    assert_eq!(declared.header("etag"), "\"1\"");
    assert_eq!(declared.body["cluster"], "prod-eu");
    assert_eq!(declared.body["streamVersion"], 1);
    assert_eq!(declared.body["dryRun"], false);
    assert_eq!(declared.body["changes"].as_array().unwrap().len(), 1);
    assert_eq!(declared.body["changes"][0]["op"], "+");
    assert_eq!(declared.body["changes"][0]["type"], "ClusterDeclared");
    let declared_events = declared.body["events"].as_array().unwrap();
    assert_eq!(declared_events.len(), 1, "{}", declared.body_text);
    let declared_event = &declared_events[0];
    assert_eq!(declared_event["seq"], 1);
    assert_eq!(declared_event["version"], 1);
    assert_eq!(declared_event["stream"], "cluster/prod-eu");
    assert_eq!(declared_event["type"], "ClusterDeclared");
    assert_eq!(declared_event["prevHash"], "0".repeat(64));
    assert_eq!(
        declared_event["data"]["manifest"]["metadata"]["name"],
        "prod-eu"
    );

    // Applying the same manifest again changes nothing and appends nothing.
    let repeated = post_apply(&client, &daemon, "/v1/apply", &example, &[]).await;
    repeated.assert_status(200);
    assert_eq!(repeated.body["changes"], serde_json::json!([]));
    assert_eq!(repeated.body["events"], serde_json::json!([]));
    assert_eq!(repeated.body["deduplicated"], false);
    assert_eq!(repeated.body["streamVersion"], 1);
    assert_eq!(head_seq(&client, &daemon).await, 1);

    // A dry run of a scale shows one change and appends nothing.
    let scaled_to_seven = manifest_with_name_and_worker_replicas("prod-eu", 7);
    let dry_run = post_apply(
        &client,
        &daemon,
        "/v1/apply?dryRun=true",
        &scaled_to_seven,
        &[],
    )
    .await;
    dry_run.assert_status(200);
    assert_eq!(dry_run.body["dryRun"], true);
    assert_eq!(
        dry_run.body["changes"],
        serde_json::json!([{
            "op": "~",
            "type": "PoolScaled",
            "summary": "pool workers replicas 5 -> 7"
        }])
    );
    assert_eq!(dry_run.body["events"], serde_json::json!([]));
    assert_eq!(head_seq(&client, &daemon).await, 1);

    // The real scale appends one PoolScaled event chained to the first one.
    let scaled = post_apply(&client, &daemon, "/v1/apply", &scaled_to_seven, &[]).await;
    scaled.assert_status(200);
    assert_eq!(scaled.body["streamVersion"], 2);
    assert_eq!(scaled.header("etag"), "\"2\"");
    let scaled_event = &scaled.body["events"][0];
    assert_eq!(scaled.body["events"].as_array().unwrap().len(), 1);
    assert_eq!(scaled_event["seq"], 2);
    assert_eq!(scaled_event["version"], 2);
    assert_eq!(scaled_event["type"], "PoolScaled");
    assert_eq!(
        scaled_event["data"],
        serde_json::json!({"pool": "workers", "from": 5, "to": 7})
    );
    assert_eq!(scaled_event["prevHash"], declared_event["hash"]);

    // The list of clusters shows the new total of replicas (3 control plane + 7 workers).
    let clusters = get(&client, &daemon.url("/v1/clusters")).await;
    clusters.assert_status(200);
    let cluster_list = clusters.body["clusters"].as_array().unwrap();
    assert_eq!(cluster_list.len(), 1);
    assert_eq!(cluster_list[0]["name"], "prod-eu");
    assert_eq!(cluster_list[0]["replicas"], 10);
    assert_eq!(cluster_list[0]["streamVersion"], 2);

    // One cluster: its ETag is its stream version, and it shows the desired state.
    let cluster = get(&client, &daemon.url("/v1/clusters/prod-eu")).await;
    cluster.assert_status(200);
    assert_eq!(cluster.header("etag"), "\"2\"");
    assert_eq!(cluster.body["streamVersion"], 2);
    assert_eq!(cluster.body["declaredSeq"], 1);
    assert_eq!(cluster.body["updatedSeq"], 2);
    assert_eq!(cluster.body["desired"]["metadata"]["name"], "prod-eu");
    assert_eq!(pool_replicas(&cluster.body["desired"], "workers"), 7);
    assert_eq!(pool_replicas(&cluster.body["desired"], "control-plane"), 3);

    // A third event on prod-eu and a second cluster, to give history and filters something to do.
    let scaled_to_nine = manifest_with_name_and_worker_replicas("prod-eu", 9);
    post_apply(&client, &daemon, "/v1/apply", &scaled_to_nine, &[])
        .await
        .assert_status(200);
    let other_cluster = manifest_with_name_and_worker_replicas("other-eu", 5);
    post_apply(&client, &daemon, "/v1/apply", &other_cluster, &[])
        .await
        .assert_status(201);

    // The history of prod-eu lists its own events in version order.
    let history = get(&client, &daemon.url("/v1/clusters/prod-eu/history")).await;
    history.assert_status(200);
    let history_events = history.body["events"].as_array().unwrap();
    let versions: Vec<u64> = history_events
        .iter()
        .map(|event| event["version"].as_u64().unwrap())
        .collect();
    assert_eq!(versions, vec![1, 2, 3]);
    assert_eq!(seqs_of(history_events), vec![1, 2, 3]);
    let history_types: Vec<&str> = history_events
        .iter()
        .map(|event| event["type"].as_str().unwrap())
        .collect();
    assert_eq!(
        history_types,
        vec!["ClusterDeclared", "PoolScaled", "PoolScaled"]
    );
    assert_eq!(
        history_events[2]["data"],
        serde_json::json!({"pool": "workers", "from": 7, "to": 9})
    );

    // Paging with limit=1 visits every event once, in order, through the `next` cursor.
    let mut paged_seqs = Vec::new();
    let mut query_string = "limit=1".to_string();
    for _page in 0..10 {
        let page = get(&client, &daemon.url(&format!("/v1/events?{query_string}"))).await;
        page.assert_status(200);
        let events = page.body["events"].as_array().unwrap();
        assert_eq!(events.len(), 1, "{}", page.body_text);
        paged_seqs.extend(seqs_of(events));
        match page.body["next"].as_str() {
            Some(next) => query_string = format!("limit=1&after={next}"),
            None => break,
        }
    }
    assert_eq!(paged_seqs, vec![1, 2, 3, 4]);

    // Filters by stream, by type, and by both.
    assert_eq!(
        seqs_of_event_query(&client, &daemon, "stream=cluster/other-eu").await,
        vec![4]
    );
    assert_eq!(
        seqs_of_event_query(&client, &daemon, "stream=cluster/prod-eu").await,
        vec![1, 2, 3]
    );
    assert_eq!(
        seqs_of_event_query(&client, &daemon, "type=PoolScaled").await,
        vec![2, 3]
    );
    assert_eq!(
        seqs_of_event_query(
            &client,
            &daemon,
            "type=ClusterDeclared&stream=cluster/prod-eu"
        )
        .await,
        vec![1]
    );
    assert_eq!(
        seqs_of_event_query(&client, &daemon, "type=PoolRemoved").await,
        Vec::<u64>::new()
    );
}

#[tokio::test]
async fn if_match_with_a_stale_version_is_a_conflict_and_the_current_version_succeeds() {
    let data_directory = tempfile::tempdir().unwrap();
    let daemon = Daemon::start(data_directory.path());
    let client = http_client();
    let manifest_for = |replicas| manifest_with_name_and_worker_replicas("prod-eu", replicas);

    post_apply(&client, &daemon, "/v1/apply", &manifest_for(5), &[])
        .await
        .assert_status(201);
    post_apply(&client, &daemon, "/v1/apply", &manifest_for(6), &[])
        .await
        .assert_status(200);

    // The caller saw version 1, but the cluster has moved on to version 2.
    let stale = post_apply(
        &client,
        &daemon,
        "/v1/apply",
        &manifest_for(8),
        &[("if-match", "\"1\"")],
    )
    .await;
    stale.assert_problem(409, "version_conflict");
    assert_eq!(stale.body["currentVersion"], 2, "{}", stale.body_text);
    assert_eq!(head_seq(&client, &daemon).await, 2);

    // With the ETag the daemon hands out now, the same request succeeds.
    let etag = get(&client, &daemon.url("/v1/clusters/prod-eu"))
        .await
        .header("etag");
    assert_eq!(etag, "\"2\"");
    let current = post_apply(
        &client,
        &daemon,
        "/v1/apply",
        &manifest_for(8),
        &[("if-match", &etag)],
    )
    .await;
    current.assert_status(200);
    assert_eq!(current.body["streamVersion"], 3);
    assert_eq!(current.body["events"][0]["data"]["to"], 8);

    // A bare number is accepted as well.
    let bare_number = post_apply(
        &client,
        &daemon,
        "/v1/apply",
        &manifest_for(9),
        &[("if-match", "3")],
    )
    .await;
    bare_number.assert_status(200);
    assert_eq!(head_seq(&client, &daemon).await, 4);
}

#[tokio::test]
async fn idempotency_key_replays_the_original_outcome_and_refuses_a_different_manifest() {
    let data_directory = tempfile::tempdir().unwrap();
    let daemon = Daemon::start(data_directory.path());
    let client = http_client();
    let example = example_manifest_text();
    let key = [("idempotency-key", "deploy-2026-11-25-first")];

    let first = post_apply(&client, &daemon, "/v1/apply", &example, &key).await;
    first.assert_status(201);
    assert_eq!(first.body["deduplicated"], false);
    let first_event = &first.body["events"][0];
    // The key is recorded in the cause of the event.
    assert!(
        first_event["cause"]
            .to_string()
            .contains("\"deploy-2026-11-25-first\""),
        "the idempotency key is not in the cause: {}",
        first_event["cause"]
    );

    // The same key with the same manifest: the original answer (status
    // included), nothing new.
    let retried = post_apply(&client, &daemon, "/v1/apply", &example, &key).await;
    retried.assert_status(201);
    assert_eq!(retried.body["deduplicated"], true, "{}", retried.body_text);
    assert_eq!(retried.body["streamVersion"], 1);
    assert_eq!(retried.body["events"], first.body["events"]);
    assert_eq!(retried.body["events"][0]["id"], first_event["id"]);
    assert_eq!(retried.body["changes"], first.body["changes"]);
    assert_eq!(head_seq(&client, &daemon).await, 1);

    // The same key with another manifest is refused, and nothing is appended.
    let scaled = manifest_with_name_and_worker_replicas("prod-eu", 7);
    let reused = post_apply(&client, &daemon, "/v1/apply", &scaled, &key).await;
    reused.assert_problem(422, "idempotency_key_reused");
    assert_eq!(head_seq(&client, &daemon).await, 1);

    // The replay still works after the refusal.
    let retried_again = post_apply(&client, &daemon, "/v1/apply", &example, &key).await;
    retried_again.assert_status(201);
    assert_eq!(retried_again.body["deduplicated"], true);
    assert_eq!(retried_again.body["events"], first.body["events"]);
    assert_eq!(head_seq(&client, &daemon).await, 1);
}

#[tokio::test]
async fn a_manifest_nested_or_sized_to_be_slow_to_parse_is_refused_where_it_goes_past() {
    let data_directory = tempfile::tempdir().unwrap();
    let daemon = Daemon::start_with_config(data_directory.path(), LEDGER_ONLY_CONFIG);
    let client = http_client();
    // 80,000 nested flow mappings took libyaml 41 s, and ran on after the
    // client gave up; a flat list of a million bytes, a fifth of a second.
    let nested = format!("{}1{}", "{a: ".repeat(80_000), "}".repeat(80_000));
    let flat = format!("a: [{}1]", "1,".repeat(500_000));
    for (body, expected) in [
        (nested, "nest deeper than 32 levels"),
        (flat, "holds more than 20000 values"),
    ] {
        let answer = post_apply(&client, &daemon, "/v1/apply", &body, &[]).await;
        answer.assert_problem(400, "malformed");
        assert!(answer.body_text.contains(expected), "{}", answer.body_text);
        assert!(answer.body_text.contains("line 1"), "{}", answer.body_text);
    }
    let json = format!("{}1{}", "[".repeat(100), "]".repeat(100));
    let mut request = client
        .post(daemon.url("/v1/apply"))
        .header("content-type", "application/json")
        .body(json);
    request = request.header("x-cairn-reason", "deep");
    let answer = crate::harness::HttpAnswer::read(request.send().await.unwrap()).await;
    answer.assert_problem(400, "malformed");
    assert!(
        answer.body_text.contains("nest deeper than 32 levels"),
        "{}",
        answer.body_text
    );
    assert_eq!(head_seq(&client, &daemon).await, 0);
}

/// A daemon without reconcilers, on `data_directory`, with the example
/// manifest applied, and a client for it.
async fn ledger_only_with_the_example(
    data_directory: &std::path::Path,
) -> (Daemon, reqwest::Client) {
    let daemon = Daemon::start_with_config(data_directory, LEDGER_ONLY_CONFIG);
    let client = http_client();
    post_apply(&client, &daemon, "/v1/apply", &example_manifest_text(), &[])
        .await
        .assert_status(201);
    (daemon, client)
}

/// Sends `POST path` with no body and these headers, and reads the answer.
async fn post_command(
    client: &reqwest::Client,
    daemon: &Daemon,
    path: &str,
    headers: &[(&str, &str)],
) -> crate::harness::HttpAnswer {
    let mut request = client.post(daemon.url(path));
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    crate::harness::HttpAnswer::read(request.send().await.expect("the command is answered")).await
}

#[tokio::test]
async fn an_idempotency_key_is_bound_to_its_command_and_scoped_to_its_principal() {
    let data_directory = tempfile::tempdir().unwrap();
    let (daemon, client) = ledger_only_with_the_example(data_directory.path()).await;
    let alice = [("x-cairn-actor", "alice"), ("idempotency-key", "P1")];
    let paused = post_command(&client, &daemon, "/v1/clusters/prod-eu/pause", &alice).await;
    paused.assert_status(200);
    assert_eq!(paused.body["changed"], true, "{}", paused.body_text);
    let head = head_seq(&client, &daemon).await;

    // The key of a pause, reused for a machine replacement (of a machine
    // that does not exist), is refused: it was not answered with the pause.
    let replace = post_command(
        &client,
        &daemon,
        "/v1/clusters/prod-eu/machines/no-such-machine/replace",
        &alice,
    )
    .await;
    replace.assert_problem(422, "idempotency_key_reused");
    assert!(
        replace.body["detail"]
            .as_str()
            .is_some_and(|detail| detail.contains("\"P1\"")),
        "{}",
        replace.body_text
    );
    // And for a resume.
    post_command(&client, &daemon, "/v1/clusters/prod-eu/resume", &alice)
        .await
        .assert_problem(422, "idempotency_key_reused");
    assert_eq!(head_seq(&client, &daemon).await, head);

    // Alice's retry gets her first answer.
    let retried = post_command(&client, &daemon, "/v1/clusters/prod-eu/pause", &alice).await;
    retried.assert_status(200);
    assert_eq!(retried.body["event"]["id"], paused.body["event"]["id"]);

    // Bob's key P1 is his own: his pause, after a resume, is a new event,
    // not alice's answer.
    post_command(
        &client,
        &daemon,
        "/v1/clusters/prod-eu/resume",
        &[("x-cairn-actor", "alice")],
    )
    .await
    .assert_status(200);
    let bob = [("x-cairn-actor", "bob"), ("idempotency-key", "P1")];
    let bobs = post_command(&client, &daemon, "/v1/clusters/prod-eu/pause", &bob).await;
    bobs.assert_status(200);
    assert_eq!(bobs.body["changed"], true, "{}", bobs.body_text);
    assert_ne!(bobs.body["event"]["id"], paused.body["event"]["id"]);
    assert_eq!(
        bobs.body["event"]["actor"]["name"], "bob",
        "{}",
        bobs.body_text
    );
}

/// Sends `POST /v1/apply` with a chunked body (no Content-Length) of a little
/// more than 1 MiB over a raw connection, and returns the raw answer. The
/// client used elsewhere always sends a Content-Length for such a body.
fn post_chunked_body_of_more_than_one_mebibyte(daemon: &Daemon) -> String {
    let mut request = format!(
        "POST /v1/apply HTTP/1.1\r\nHost: {}\r\nContent-Type: application/yaml\r\n\
         Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n",
        daemon.address
    )
    .into_bytes();
    let chunk = vec![b'#'; 64 * 1024];
    for _chunk_number in 0..17 {
        request.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
        request.extend_from_slice(&chunk);
        request.extend_from_slice(b"\r\n");
    }
    request.extend_from_slice(b"0\r\n\r\n");
    raw_answer(daemon, &request)
}

#[tokio::test]
async fn rejected_requests_are_problem_documents_with_stable_codes_and_append_nothing() {
    let data_directory = tempfile::tempdir().unwrap();
    let daemon = Daemon::start(data_directory.path());
    let client = http_client();
    post_apply(&client, &daemon, "/v1/apply", &example_manifest_text(), &[])
        .await
        .assert_status(201);
    let events_before = all_events(&client, &daemon).await;
    assert_eq!(seqs_of(&events_before), vec![1]);

    // Malformed YAML: 400, and the detail says on which line the document broke.
    let malformed_yaml = "apiVersion: cairn/v1\nkind: Cluster\nmetadata:\n  name: [prod-eu\n";
    let malformed = post_apply(&client, &daemon, "/v1/apply", malformed_yaml, &[]).await;
    malformed.assert_problem(400, "malformed");
    let detail = malformed.body["detail"].as_str().unwrap();
    assert!(detail.contains("line "), "no line number in {detail:?}");

    // A manifest with three problems at once: every one of them is listed.
    let invalid_manifest = example_manifest_text()
        .replace("name: prod-eu,", "name: Prod_EU,")
        .replace("cidr: 10.0.0.0/16", "cidr: 10.0.0.0/33")
        .replace(
            "  region: eu-west-1\n",
            "  region: eu-west-1\n  colour: blue\n",
        );
    let invalid = post_apply(&client, &daemon, "/v1/apply", &invalid_manifest, &[]).await;
    invalid.assert_problem(422, "invalid_manifest");
    let errors = invalid.body["errors"]
        .as_array()
        .unwrap_or_else(|| panic!("no errors array in {}", invalid.body_text));
    for error in errors {
        assert!(
            error["reason"]
                .as_str()
                .is_some_and(|reason| !reason.is_empty()),
            "every error has a reason: {error}"
        );
    }
    let paths: Vec<&str> = errors
        .iter()
        .map(|error| error["path"].as_str().expect("every error has a path"))
        .collect();
    for expected_path in ["spec.colour", "metadata.name", "spec.network.cidr"] {
        assert!(
            paths.contains(&expected_path),
            "{expected_path} is missing from {paths:?}"
        );
    }
    assert_eq!(paths.len(), 3, "exactly the three problems: {paths:?}");

    // A body over 1 MiB is refused before it is parsed. The daemon reads and
    // discards it, answers with `Connection: close`, and the client's next
    // request on the same pool still works.
    let oversized_body = format!("# {}\n{}", "x".repeat(1024 * 1024), example_manifest_text());
    let too_large = post_apply(&client, &daemon, "/v1/apply", &oversized_body, &[]).await;
    too_large.assert_problem(413, "body_too_large");
    assert_eq!(
        too_large
            .headers
            .get("connection")
            .map(|value| value.as_bytes()),
        Some(&b"close"[..]),
        "a 413 sent before the body is used closes the connection"
    );
    get(&client, &daemon.url("/healthz"))
        .await
        .assert_status(200);
    // Without a Content-Length, the limit applies while the body streams in.
    let chunked_answer = post_chunked_body_of_more_than_one_mebibyte(&daemon);
    assert!(
        chunked_answer.starts_with("HTTP/1.1 413"),
        "a chunked body over the limit must be refused with 413: {chunked_answer}"
    );
    assert!(
        chunked_answer.contains("\"code\":\"body_too_large\""),
        "{chunked_answer}"
    );

    // Unknown clusters are 404, for the cluster and for its history.
    get(&client, &daemon.url("/v1/clusters/no-such-cluster"))
        .await
        .assert_problem(404, "cluster_not_found");
    get(&client, &daemon.url("/v1/clusters/no-such-cluster/history"))
        .await
        .assert_problem(404, "cluster_not_found");

    // Bad query parameters and headers are 400.
    get(&client, &daemon.url("/v1/events?limit=abc"))
        .await
        .assert_problem(400, "bad_query");
    get(&client, &daemon.url("/v1/events?colour=blue"))
        .await
        .assert_problem(400, "bad_query");
    post_apply(
        &client,
        &daemon,
        "/v1/apply?dryRun=maybe",
        &example_manifest_text(),
        &[],
    )
    .await
    .assert_problem(400, "bad_query");
    let scaled = manifest_with_name_and_worker_replicas("prod-eu", 7);
    post_apply(
        &client,
        &daemon,
        "/v1/apply",
        &scaled,
        &[("if-match", "yesterday")],
    )
    .await
    .assert_problem(400, "bad_header");

    // An unknown endpoint is a problem document too.
    get(&client, &daemon.url("/v1/no-such-endpoint"))
        .await
        .assert_problem(404, "not_found");

    // None of the rejected requests appended anything.
    assert_eq!(all_events(&client, &daemon).await, events_before);
}

#[tokio::test]
async fn health_readiness_and_metrics_endpoints_answer() {
    let data_directory = tempfile::tempdir().unwrap();
    let daemon = Daemon::start(data_directory.path());
    let client = http_client();

    let health = get(&client, &daemon.url("/healthz")).await;
    health.assert_status(200);
    assert_eq!(health.body["status"], "ok");
    let readiness = get(&client, &daemon.url("/readyz")).await;
    readiness.assert_status(200);
    assert_eq!(readiness.body["ready"], true);
    assert_eq!(readiness.body["headSeq"], 0);

    post_apply(&client, &daemon, "/v1/apply", &example_manifest_text(), &[])
        .await
        .assert_status(201);

    let readiness_after_apply = get(&client, &daemon.url("/readyz")).await;
    readiness_after_apply.assert_status(200);
    assert_eq!(readiness_after_apply.body["headSeq"], 1);
    assert_eq!(readiness_after_apply.body["appliedSeq"], 1);

    let metrics = get(&client, &daemon.url("/metrics")).await;
    metrics.assert_status(200);
    let metric_lines: Vec<&str> = metrics.body_text.lines().collect();
    for expected_name in [
        "cairn_events_appended_total",
        "cairn_write_seconds",
        "cairn_head_seq",
        "cairn_append_batch_events",
    ] {
        assert!(
            metric_lines
                .iter()
                .any(|line| !line.starts_with('#') && line.starts_with(expected_name)),
            "no sample of {expected_name} in:\n{}",
            metrics.body_text
        );
    }
    // The values reflect the one event appended above.
    assert!(
        metric_lines.contains(&"cairn_events_appended_total 1"),
        "{}",
        metrics.body_text
    );
    assert!(
        metric_lines.contains(&"cairn_head_seq 1"),
        "{}",
        metrics.body_text
    );
}

#[tokio::test]
async fn verify_endpoint_reports_an_intact_chain() {
    let data_directory = tempfile::tempdir().unwrap();
    let daemon = Daemon::start(data_directory.path());
    let client = http_client();
    post_apply(&client, &daemon, "/v1/apply", &example_manifest_text(), &[])
        .await
        .assert_status(201);
    let scaled = manifest_with_name_and_worker_replicas("prod-eu", 7);
    let scale = post_apply(&client, &daemon, "/v1/apply", &scaled, &[]).await;
    scale.assert_status(200);

    let verification = get(&client, &daemon.url("/v1/verify")).await;
    verification.assert_status(200);
    assert_eq!(verification.body["ok"], true, "{}", verification.body_text);
    assert_eq!(verification.body["eventsChecked"], 2);
    assert_eq!(verification.body["headSeq"], 2);
    assert_eq!(
        verification.body["headHash"],
        scale.body["events"][0]["hash"]
    );
    assert_eq!(verification.body["firstBadSeq"], Value::Null);
}

/// A config with a writer named alice and a reader.
const CONFIG_WITH_TOKENS: &str = r#"
[reconcile]
enabled = false

[[tokens]]
name = "alice"
secret = "alice-secret-0123456789"
role = "write"

[[tokens]]
name = "reader"
secret = "reader-secret-0123456789"
role = "read"
"#;

#[tokio::test]
async fn bearer_tokens_decide_who_may_read_and_write_and_name_the_actor() {
    let data_directory = tempfile::tempdir().unwrap();
    let daemon = Daemon::start_with_config(data_directory.path(), CONFIG_WITH_TOKENS);
    let client = http_client();
    let example = example_manifest_text();
    let alice = "Bearer alice-secret-0123456789";
    let reader = "Bearer reader-secret-0123456789";

    // Health checks need no token.
    get(&client, &daemon.url("/healthz"))
        .await
        .assert_status(200);

    // Without a token, or with an unknown one: 401 with a challenge.
    let anonymous_read = get(&client, &daemon.url("/v1/clusters")).await;
    anonymous_read.assert_problem(401, "unauthorized");
    assert!(anonymous_read
        .header("www-authenticate")
        .starts_with("Bearer"));
    post_apply(&client, &daemon, "/v1/apply", &example, &[])
        .await
        .assert_problem(401, "unauthorized");
    post_apply(
        &client,
        &daemon,
        "/v1/apply",
        &example,
        &[("authorization", "Bearer not-a-token-of-this-daemon")],
    )
    .await
    .assert_problem(401, "unauthorized");

    // A read token reads, but may not write.
    let read_with_reader = client
        .get(daemon.url("/v1/clusters"))
        .header("authorization", reader)
        .send()
        .await
        .unwrap();
    assert_eq!(read_with_reader.status().as_u16(), 200);
    post_apply(
        &client,
        &daemon,
        "/v1/apply",
        &example,
        &[("authorization", reader)],
    )
    .await
    .assert_problem(403, "forbidden");

    // Alice writes, and the event names her, whatever actor the request claims.
    let applied = post_apply(
        &client,
        &daemon,
        "/v1/apply",
        &example,
        &[("authorization", alice), ("x-cairn-actor", "mallory")],
    )
    .await;
    applied.assert_status(201);
    assert_eq!(applied.body["events"][0]["actor"]["name"], "alice");
    assert_eq!(applied.body["events"][0]["actor"]["kind"], "user");

    // Only alice's apply is in the log.
    let events = client
        .get(daemon.url("/v1/events"))
        .header("authorization", reader)
        .send()
        .await
        .unwrap()
        .json::<Value>()
        .await
        .unwrap();
    let events = events["events"].as_array().unwrap();
    assert_eq!(seqs_of(events), vec![1]);
    assert_eq!(events[0]["actor"]["name"], "alice");
}

#[test]
fn daemon_refuses_to_listen_beyond_loopback_without_tokens() {
    let data_directory = tempfile::tempdir().unwrap();
    let mut command = std::process::Command::new(CAIRN_BINARY_PATH);
    command
        .args(["serve", "--listen", "0.0.0.0:0", "--data-dir"])
        .arg(data_directory.path());
    let output = run_to_exit_with_deadline(command, None, Duration::from_secs(20));
    assert_ne!(output.exit_code, 0, "{output:?}");
    assert!(
        !output.standard_output.contains("listening"),
        "the daemon must not listen: {output:?}"
    );
    assert!(
        output.standard_error.contains("refusing"),
        "the refusal must say why: {output:?}"
    );
}

/// A loopback daemon without tokens must not be writable from a web page the
/// user happens to visit: cross-site form posts, fetches and DNS rebinding.
#[tokio::test]
async fn requests_from_web_pages_and_foreign_hosts_are_refused() {
    let data_directory = tempfile::tempdir().unwrap();
    let daemon = Daemon::start(data_directory.path());
    let client = http_client();
    let example = example_manifest_text();

    // A page's fetch or form carries Origin and Sec-Fetch-Site.
    post_apply(
        &client,
        &daemon,
        "/v1/apply",
        &example,
        &[("origin", "https://evil.example")],
    )
    .await
    .assert_problem(403, "browser_request");
    post_apply(
        &client,
        &daemon,
        "/v1/apply",
        &example,
        &[("sec-fetch-site", "cross-site")],
    )
    .await
    .assert_problem(403, "browser_request");
    // A form can post text/plain without a CORS preflight: not a manifest type.
    let form_post = client
        .post(daemon.url("/v1/apply"))
        .header("content-type", "text/plain")
        .body(example.clone())
        .send()
        .await
        .expect("answered");
    let form_post = crate::harness::HttpAnswer::read(form_post).await;
    form_post.assert_problem(415, "unsupported_media_type");
    // DNS rebinding: a foreign name that resolves to 127.0.0.1.
    let rebound = client
        .get(daemon.url("/v1/clusters"))
        .header("host", "evil.example:7470")
        .send()
        .await
        .expect("answered");
    crate::harness::HttpAnswer::read(rebound)
        .await
        .assert_problem(403, "bad_host");
    assert_eq!(head_seq(&client, &daemon).await, 0, "nothing was appended");

    // The CLI's own requests (no Origin, loopback Host) still work.
    post_apply(&client, &daemon, "/v1/apply", &example, &[])
        .await
        .assert_status(201);
}

#[tokio::test]
async fn query_parameters_are_checked_the_same_way_everywhere() {
    let data_directory = tempfile::tempdir().unwrap();
    let daemon = Daemon::start(data_directory.path());
    let client = http_client();
    post_apply(&client, &daemon, "/v1/apply", &example_manifest_text(), &[])
        .await
        .assert_status(201);
    for path in [
        "/v1/events?limit=0",
        "/v1/events?limit=1001",
        "/v1/events?colour=blue",
        "/v1/clusters/prod-eu/history?limit=0",
        "/v1/clusters/prod-eu/history?colour=blue",
    ] {
        get(&client, &daemon.url(path))
            .await
            .assert_problem(400, "bad_query");
    }
    get(&client, &daemon.url("/v1/clusters/no-such/history?after=3"))
        .await
        .assert_problem(404, "cluster_not_found");
    let history = get(&client, &daemon.url("/v1/clusters/prod-eu/history?limit=1")).await;
    history.assert_status(200);
    assert_eq!(history.body["next"], Value::Null, "one event, no next page");
}

/// Sends `request` as it is over a new connection, and returns the answer.
/// Sends `request` as it is over a new connection, and reads the answer
/// until the daemon closes the connection (at most 30 s).
fn raw_answer(daemon: &Daemon, request: &[u8]) -> String {
    use std::io::{Read, Write};
    let mut connection = std::net::TcpStream::connect(daemon.address).unwrap();
    connection
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    // The daemon may answer and stop reading before the whole body is sent.
    let _ = connection.write_all(request);
    let mut answer = Vec::new();
    let _ = connection.read_to_end(&mut answer);
    String::from_utf8_lossy(&answer).into_owned()
}

#[tokio::test]
async fn ambiguous_requests_are_refused_before_any_route() {
    let data_directory = tempfile::tempdir().unwrap();
    let (daemon, client) = ledger_only_with_the_example(data_directory.path()).await;
    let head = head_seq(&client, &daemon).await;
    let host = daemon.address.to_string();
    let cases: Vec<(Vec<u8>, &str)> = vec![
        // A cross-site-looking POST whose Origin is not ASCII was applied:
        // the browser guard read it as absent.
        (
            [
                format!("POST /v1/clusters/prod-eu/pause HTTP/1.1\r\nHost: {host}\r\n").as_bytes(),
                b"Origin: https://ex\xe4mple.org\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            ]
            .concat(),
            "bad_header",
        ),
        (
            [
                format!("POST /v1/clusters/prod-eu/pause HTTP/1.1\r\nHost: {host}\r\n").as_bytes(),
                b"Sec-Fetch-Site: cross-site\xff\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            ]
            .concat(),
            "bad_header",
        ),
        (
            format!(
                "POST /v1/clusters/prod-eu/pause HTTP/1.1\r\nHost: {host}\r\nHost: evil.example\r\n\
                 Content-Length: 0\r\nConnection: close\r\n\r\n"
            )
            .into_bytes(),
            "duplicate_header",
        ),
        // Both lengths, in either order: hyper read the body as chunked and
        // the pause was applied.
        (
            format!(
                "POST /v1/clusters/prod-eu/pause HTTP/1.1\r\nHost: {host}\r\n\
                 Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
            )
            .into_bytes(),
            "conflicting_framing",
        ),
        (
            format!(
                "POST /v1/clusters/prod-eu/pause HTTP/1.1\r\nHost: {host}\r\n\
                 Transfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n0\r\n\r\n"
            )
            .into_bytes(),
            "conflicting_framing",
        ),
    ];
    for (request, code) in cases {
        let answer = raw_answer(&daemon, &request);
        assert!(answer.starts_with("HTTP/1.1 400"), "{code}: {answer}");
        assert!(answer.contains(code), "{code}: {answer}");
    }
    assert_eq!(
        head_seq(&client, &daemon).await,
        head,
        "a refused request changed the log"
    );
    let repeated = get(&client, &daemon.url("/v1/clusters/prod-eu?at=1&at=2")).await;
    repeated.assert_problem(400, "bad_query");

    // On one kept-alive connection, a body that reads like a request with
    // both lengths is a body: the request after it is answered as usual.
    let smuggled = format!(
        "POST /v1/clusters/prod-eu/pause HTTP/1.1\r\nHost: {host}\r\n\
         Content-Length: 0\r\nTransfer-Encoding: chunked\r\n\r\n"
    );
    let pipelined = format!(
        "GET /healthz HTTP/1.1\r\nHost: {host}\r\nContent-Length: {}\r\n\r\n{smuggled}\
         GET /healthz HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n",
        smuggled.len()
    );
    let answer = raw_answer(&daemon, pipelined.as_bytes());
    assert_eq!(answer.matches("HTTP/1.1 200").count(), 2, "{answer}");
    assert!(!answer.contains("conflicting_framing"), "{answer}");
}
