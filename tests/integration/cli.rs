//! The command line client, run as a process against a real daemon: what it
//! prints, and with which exit code it ends.

use serde_json::Value;

use crate::harness::{
    example_manifest_path, example_manifest_text, manifest_with_name_and_worker_replicas,
    run_command_line, Daemon, ProcessOutput,
};

/// Asserts that the client exited with `expected_exit_code`, showing its output otherwise.
fn assert_exit_code(output: &ProcessOutput, expected_exit_code: i32) {
    assert_eq!(
        output.exit_code,
        expected_exit_code,
        "unexpected exit code; the output was:\n{}",
        output.all_output()
    );
}

#[test]
fn command_line_applies_reads_and_verifies_against_a_running_daemon() {
    let data_directory = tempfile::tempdir().unwrap();
    let daemon = Daemon::start(data_directory.path());
    let server = daemon.base_url();
    let server = Some(server.as_str());
    let example_path = example_manifest_path();
    let example_path = example_path.to_str().unwrap();

    // Applying the example prints a plan with one created cluster.
    let applied = run_command_line(server, &["apply", "-f", example_path], None);
    assert_exit_code(&applied, 0);
    assert!(
        applied
            .standard_output
            .lines()
            .any(|line| line.starts_with("+ cluster prod-eu")),
        "no `+ cluster prod-eu` line in:\n{}",
        applied.standard_output
    );
    assert!(
        applied.standard_output.contains("1 change applied"),
        "{}",
        applied.standard_output
    );

    // A dry run of a scale, with the manifest on standard input.
    let scaled = manifest_with_name_and_worker_replicas("prod-eu", 7);
    let dry_run = run_command_line(
        server,
        &["apply", "--dry-run", "-f", "-"],
        Some(scaled.as_bytes()),
    );
    assert_exit_code(&dry_run, 0);
    assert!(
        dry_run
            .standard_output
            .lines()
            .any(|line| line == "~ pool workers replicas 5 -> 7"),
        "no scale line in:\n{}",
        dry_run.standard_output
    );
    assert!(
        dry_run.standard_output.contains("dry run"),
        "the summary must say it was a dry run:\n{}",
        dry_run.standard_output
    );

    // The cluster list is a table with the cluster in it.
    let clusters = run_command_line(server, &["get", "clusters"], None);
    assert_exit_code(&clusters, 0);
    let mut lines = clusters.standard_output.lines();
    assert!(
        lines
            .next()
            .is_some_and(|header| header.starts_with("NAME")),
        "{}",
        clusters.standard_output
    );
    let row = lines
        .find(|line| line.starts_with("prod-eu "))
        .unwrap_or_else(|| panic!("no prod-eu row in:\n{}", clusters.standard_output));
    // The dry run changed nothing: 3 + 5 replicas, version 1. This daemon
    // keeps the ledger only: no machines, readiness unknown.
    let columns: Vec<&str> = row.split_whitespace().collect();
    assert_eq!(
        &columns[..9],
        &[
            "prod-eu",
            "sim",
            "eu-west-1",
            "1.31.2",
            "2",
            "8",
            "0",
            "-",
            "1"
        ],
        "{row}"
    );

    // One cluster as JSON.
    let cluster = run_command_line(server, &["get", "cluster", "prod-eu", "-o", "json"], None);
    assert_exit_code(&cluster, 0);
    let cluster_json: Value = serde_json::from_str(&cluster.standard_output)
        .unwrap_or_else(|error| panic!("not JSON ({error}):\n{}", cluster.standard_output));
    assert_eq!(cluster_json["desired"]["metadata"]["name"], "prod-eu");
    assert_eq!(cluster_json["streamVersion"], 1);

    // The history names the declaration.
    let history = run_command_line(server, &["history", "prod-eu"], None);
    assert_exit_code(&history, 0);
    assert!(
        history.standard_output.contains("ClusterDeclared"),
        "{}",
        history.standard_output
    );

    // The log as YAML parses, and holds exactly the one event.
    let events = run_command_line(server, &["events", "-o", "yaml"], None);
    assert_exit_code(&events, 0);
    // `-o yaml` has the same shape as `-o json`: plain mappings, no YAML tags,
    // so it parses into a JSON value and `cause.request` is a field.
    let events_yaml: Value = serde_norway::from_str(&events.standard_output)
        .unwrap_or_else(|error| panic!("not YAML ({error}):\n{}", events.standard_output));
    let event_list = events_yaml["events"]
        .as_array()
        .unwrap_or_else(|| panic!("no events list in:\n{}", events.standard_output));
    assert_eq!(event_list.len(), 1, "{}", events.standard_output);
    assert_eq!(event_list[0]["seq"].as_u64(), Some(1));
    assert_eq!(event_list[0]["type"].as_str(), Some("ClusterDeclared"));
    assert_eq!(event_list[0]["stream"].as_str(), Some("cluster/prod-eu"));
    assert!(
        event_list[0]["cause"]["request"]["requestId"].is_string(),
        "{}",
        events.standard_output
    );

    // The daemon verifies its chain.
    let verification = run_command_line(server, &["verify"], None);
    assert_exit_code(&verification, 0);
    assert!(
        verification.standard_output.starts_with("ok"),
        "{}",
        verification.standard_output
    );

    // An invalid manifest is refused with exit code 1 and every wrong field path.
    let invalid_manifest = example_manifest_text()
        .replace("name: prod-eu,", "name: Prod_EU,")
        .replace("cidr: 10.0.0.0/16", "cidr: 10.0.0.0/33")
        .replace(
            "  region: eu-west-1\n",
            "  region: eu-west-1\n  colour: blue\n",
        );
    let invalid = run_command_line(
        server,
        &["apply", "-f", "-"],
        Some(invalid_manifest.as_bytes()),
    );
    assert_exit_code(&invalid, 1);
    for expected_path in ["spec.colour", "metadata.name", "spec.network.cidr"] {
        assert!(
            invalid.standard_error.contains(expected_path),
            "{expected_path} is missing from:\n{}",
            invalid.standard_error
        );
    }

    // A missing cluster is a refusal too.
    let missing = run_command_line(server, &["get", "cluster", "no-such-cluster"], None);
    assert_exit_code(&missing, 1);
    assert!(
        missing.standard_error.contains("cluster_not_found"),
        "{}",
        missing.standard_error
    );
}

#[test]
fn command_line_against_a_dead_port_exits_with_code_three() {
    // A port that nothing listens on: bind one, note it, and close it again.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead_server = format!("http://{}", listener.local_addr().unwrap());
    drop(listener);

    let output = run_command_line(Some(&dead_server), &["get", "clusters"], None);
    assert_exit_code(&output, 3);
    assert!(
        output.standard_error.contains("cannot reach"),
        "{}",
        output.standard_error
    );
    assert!(
        output.standard_error.contains(&dead_server),
        "the message names the server: {}",
        output.standard_error
    );
}

/// Local problems (bad arguments, unreadable files) exit 2 before any request,
/// so they are never confused with a refusal (1) or an unreachable daemon (3).
#[test]
fn local_problems_exit_with_code_two() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead_server = format!("http://{}", listener.local_addr().unwrap());
    drop(listener);
    for arguments in [
        &["events", "--limit", "0"][..],
        &["events", "--limit", "5000"][..],
        &["apply", "-f", "/no/such/manifest.yaml"][..],
    ] {
        let output = run_command_line(Some(&dead_server), arguments, None);
        assert_exit_code(&output, 2);
    }
}
