//! Backup and restore: `cairn export` through a running daemon, `cairn import`
//! into a fresh data directory, `cairn verify` on it, and a daemon on the
//! imported directory that shows the same state and head hash. Tampered and
//! truncated files are refused with the line where they broke, and leave no
//! data directory behind.

use std::path::Path;

use serde_json::Value;

use crate::harness::{
    all_events, example_manifest_path, get, http_client, manifest_with_name_and_worker_replicas,
    post_apply, run_command_line, Daemon, ProcessOutput,
};

#[track_caller]
fn assert_exit_code(output: &ProcessOutput, expected_exit_code: i32) {
    assert_eq!(
        output.exit_code,
        expected_exit_code,
        "unexpected exit code; the output was:\n{}",
        output.all_output()
    );
}

/// The names in a directory, sorted.
fn names_in(directory: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(directory)
        .unwrap()
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// A daemon with a short story in its log: two clusters, a scale, a pause.
async fn daemon_with_a_story(data_directory: &Path) -> Daemon {
    let daemon = Daemon::start(data_directory);
    let server = daemon.base_url();
    let example = example_manifest_path();
    assert_exit_code(
        &run_command_line(
            Some(&server),
            &["apply", "-f", example.to_str().unwrap()],
            None,
        ),
        0,
    );
    let client = http_client();
    post_apply(
        &client,
        &daemon,
        "/v1/apply",
        &manifest_with_name_and_worker_replicas("prod-eu", 7),
        &[("x-cairn-reason", "more capacity")],
    )
    .await
    .assert_status(200);
    post_apply(
        &client,
        &daemon,
        "/v1/apply",
        &manifest_with_name_and_worker_replicas("staging", 2),
        &[],
    )
    .await
    .assert_status(201);
    assert_exit_code(
        &run_command_line(
            Some(&server),
            &["pause", "staging", "--reason", "freeze"],
            None,
        ),
        0,
    );
    daemon
}

#[tokio::test]
async fn export_import_verify_and_a_daemon_on_the_import_shows_the_same_state() {
    let original_directory = tempfile::tempdir().unwrap();
    let original = daemon_with_a_story(original_directory.path()).await;
    let client = http_client();
    let work = tempfile::tempdir().unwrap();
    let export_path = work.path().join("backup.ndjson");
    let export_arg = export_path.to_str().unwrap();

    // Export through the daemon.
    let exported = run_command_line(
        Some(&original.base_url()),
        &["export", "-f", export_arg],
        None,
    );
    assert_exit_code(&exported, 0);
    let original_verify = get(&client, &original.url("/v1/verify")).await;
    original_verify.assert_status(200);
    let head_seq = original_verify.body["headSeq"].as_u64().unwrap();
    let head_hash = original_verify.body["headHash"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(head_seq >= 4, "{}", original_verify.body_text);
    let text = std::fs::read_to_string(&export_path).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len() as u64, head_seq + 2, "header, events, trailer");
    let header: Value = serde_json::from_str(lines[0]).unwrap();
    assert_eq!(header["format"], "cairn-export");
    assert_eq!(header["headSeq"], head_seq);
    assert_eq!(header["headHash"], head_hash);
    let trailer: Value = serde_json::from_str(lines[lines.len() - 1]).unwrap();
    assert_eq!(trailer["end"], true);
    assert_eq!(trailer["events"], head_seq);
    assert_eq!(trailer["headHash"], head_hash);

    // The same bytes through the HTTP API, as NDJSON (but for exportedAt).
    let response = client.get(original.url("/v1/export")).send().await.unwrap();
    assert_eq!(response.status().as_u16(), 200);
    assert_eq!(
        response.headers()["content-type"].to_str().unwrap(),
        "application/x-ndjson"
    );
    let over_http = response.text().await.unwrap();
    assert_eq!(over_http.lines().skip(1).collect::<Vec<_>>(), lines[1..]);

    // Import into a fresh directory, then verify it offline.
    let imported_directory = work.path().join("restored");
    let imported_arg = imported_directory.to_str().unwrap();
    let imported = run_command_line(
        None,
        &["import", "--data-dir", imported_arg, "-f", export_arg],
        None,
    );
    assert_exit_code(&imported, 0);
    assert!(
        imported
            .standard_output
            .contains(&format!("imported {head_seq} events")),
        "{}",
        imported.standard_output
    );
    assert!(
        imported
            .standard_output
            .contains(&format!("head seq {head_seq}, hash {head_hash}")),
        "{}",
        imported.standard_output
    );
    assert!(imported.standard_output.contains("events/s"));
    let verified = run_command_line(None, &["verify", "--data-dir", imported_arg], None);
    assert_exit_code(&verified, 0);
    assert!(
        verified.standard_output.contains(&head_hash),
        "{}",
        verified.standard_output
    );

    // A daemon on the imported directory: same clusters, same log, same head.
    let restored = Daemon::start(&imported_directory);
    for path in [
        "/v1/clusters",
        "/v1/clusters/prod-eu",
        "/v1/clusters/staging",
    ] {
        let before = get(&client, &original.url(path)).await;
        let after = get(&client, &restored.url(path)).await;
        after.assert_status(200);
        assert_eq!(after.body, before.body, "{path} differs");
    }
    assert_eq!(
        get(&client, &restored.url("/v1/verify")).await.body,
        original_verify.body
    );
    assert_eq!(
        all_events(&client, &restored).await,
        all_events(&client, &original).await
    );
    // The restored log goes on from where the original stood.
    post_apply(
        &client,
        &restored,
        "/v1/apply",
        &manifest_with_name_and_worker_replicas("prod-eu", 9),
        &[],
    )
    .await
    .assert_status(200);
    let restored_verify = get(&client, &restored.url("/v1/verify")).await;
    assert_eq!(
        restored_verify.body["ok"], true,
        "{}",
        restored_verify.body_text
    );
    assert_eq!(restored_verify.body["headSeq"], head_seq + 1);
    restored.terminate();

    // Offline, an export of the restored directory holds the original events
    // (and the one appended since); the original directory is held by its
    // daemon, and the offline export says so.
    let offline = run_command_line(None, &["export", "--data-dir", imported_arg], None);
    assert_exit_code(&offline, 0);
    let offline_lines: Vec<&str> = offline.standard_output.lines().collect();
    assert_eq!(offline_lines.len() as u64, head_seq + 3);
    assert_eq!(
        offline_lines[1..=head_seq as usize],
        lines[1..=head_seq as usize]
    );
    let locked = run_command_line(
        None,
        &[
            "export",
            "--data-dir",
            original_directory.path().to_str().unwrap(),
        ],
        None,
    );
    assert_exit_code(&locked, 2);
    assert!(
        locked.standard_error.contains("in use"),
        "{}",
        locked.standard_error
    );
}

#[tokio::test]
async fn tampered_truncated_and_misdirected_imports_are_refused_without_leaving_a_data_directory() {
    let original_directory = tempfile::tempdir().unwrap();
    let original = daemon_with_a_story(original_directory.path()).await;
    let exported = run_command_line(Some(&original.base_url()), &["export"], None);
    assert_exit_code(&exported, 0);
    let text = exported.standard_output;
    let lines: Vec<String> = text.lines().map(str::to_string).collect();
    let work = tempfile::tempdir().unwrap();
    let target = work.path().join("restored");
    let target_arg = target.to_str().unwrap();

    let import_from_stdin = |content: String| {
        run_command_line(
            None,
            &["import", "--data-dir", target_arg],
            Some(content.as_bytes()),
        )
    };
    let assert_refused_at = |output: &ProcessOutput, line: usize, words: &str| {
        assert_exit_code(output, 4);
        assert!(
            output.standard_error.contains(&format!("line {line}: ")),
            "the refusal must name line {line}:\n{}",
            output.standard_error
        );
        assert!(
            output.standard_error.contains(words),
            "the refusal must say {words:?}:\n{}",
            output.standard_error
        );
        assert!(
            !target.exists(),
            "a refused import must not create the directory"
        );
        assert!(
            names_in(work.path()).is_empty(),
            "a refused import must leave nothing behind: {:?}",
            names_in(work.path())
        );
    };

    // The stored payload bytes of line 3 (seq 2, the pool scale) changed:
    // its hash no longer matches.
    let mut tampered = lines.clone();
    let mut event: Value = serde_json::from_str(&tampered[2]).unwrap();
    assert_eq!(event["type"], "PoolScaled", "{}", tampered[2]);
    let payload = event["payload"].as_str().unwrap().to_string();
    let flipped = if payload.starts_with('A') { "B" } else { "A" };
    event["payload"] = Value::String(format!("{flipped}{}", &payload[1..]));
    tampered[2] = event.to_string();
    assert_refused_at(
        &import_from_stdin(tampered.join("\n") + "\n"),
        3,
        "hash does not match",
    );

    // A line deleted from the middle: the next one does not follow on.
    let mut deleted = lines.clone();
    deleted.remove(2);
    assert_refused_at(
        &import_from_stdin(deleted.join("\n") + "\n"),
        3,
        "was expected",
    );

    // Truncated at a line boundary: the trailer is missing.
    let last_event_line = lines.len() - 1;
    let truncated = lines[..last_event_line].join("\n") + "\n";
    assert_refused_at(&import_from_stdin(truncated), last_event_line, "truncated");

    // Truncated inside a line.
    let cut = &text[..text.len() - 20];
    assert_refused_at(&import_from_stdin(cut.to_string()), lines.len(), "cut off");

    // A data directory that already holds a log is never imported into.
    let existing = run_command_line(
        None,
        &[
            "import",
            "--data-dir",
            original_directory.path().to_str().unwrap(),
        ],
        Some(text.as_bytes()),
    );
    assert_exit_code(&existing, 2);
    assert!(
        existing.standard_error.contains("new or empty directory"),
        "{}",
        existing.standard_error
    );

    // The untouched file still imports.
    let good = import_from_stdin(text.clone());
    assert_exit_code(&good, 0);
    assert_eq!(names_in(work.path()), vec!["restored".to_string()]);
}

/// A config with an admin and a reader.
const CONFIG_WITH_ADMIN: &str = r#"
[reconcile]
enabled = false

[[tokens]]
name = "root"
secret = "root-secret-0123456789"
role = "admin"

[[tokens]]
name = "reader"
secret = "reader-secret-0123456789"
role = "read"
"#;

#[tokio::test]
async fn only_an_admin_may_export() {
    let data_directory = tempfile::tempdir().unwrap();
    let daemon = Daemon::start_with_config(data_directory.path(), CONFIG_WITH_ADMIN);
    let server = daemon.base_url();

    let as_reader = run_command_line(
        Some(&server),
        &["export", "--token", "reader-secret-0123456789"],
        None,
    );
    assert_exit_code(&as_reader, 1);
    assert!(
        as_reader.standard_error.contains("forbidden"),
        "{}",
        as_reader.standard_error
    );
    assert!(as_reader.standard_output.is_empty());

    let as_admin = run_command_line(
        Some(&server),
        &["export", "--token", "root-secret-0123456789"],
        None,
    );
    assert_exit_code(&as_admin, 0);
    assert_eq!(as_admin.standard_output.lines().count(), 2, "an empty log");
}
