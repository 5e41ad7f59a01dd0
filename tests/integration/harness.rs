//! The test harness: it starts the real `cairn` binary as a daemon on a
//! loopback port with a temporary data directory, talks to it over HTTP, runs
//! the command line client against it, and makes sure that every process it
//! started is gone when the test ends.
//!
//! Nothing here sleeps to wait for something to happen: the harness learns the
//! port from the line the daemon prints at start-up, and every wait on a
//! process is a poll with a bounded deadline, so a hung daemon fails the test
//! instead of hanging it.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use reqwest::header::HeaderMap;
use serde_json::Value;
use tempfile::TempDir;

/// The `cairn` binary that Cargo built for this test run.
pub const CAIRN_BINARY_PATH: &str = env!("CARGO_BIN_EXE_cairn");

/// The prefix of the line the daemon prints on standard output once it listens.
const LISTENING_LINE_PREFIX: &str = "cairn listening on http://";

/// How long a daemon may take to print its listening line.
const DAEMON_START_DEADLINE: Duration = Duration::from_secs(30);

/// How long a daemon may take to exit after SIGTERM or SIGKILL.
const DAEMON_EXIT_DEADLINE: Duration = Duration::from_secs(30);

/// How long one run of the command line client may take.
const COMMAND_LINE_DEADLINE: Duration = Duration::from_secs(60);

/// How often a wait for a process to exit checks again.
const PROCESS_EXIT_POLL_INTERVAL: Duration = Duration::from_millis(5);

/// The environment variables that could send the client's loopback traffic
/// through a proxy; the harness removes them from every child process.
const PROXY_ENVIRONMENT_VARIABLES: &[&str] = &[
    "http_proxy",
    "HTTP_PROXY",
    "https_proxy",
    "HTTPS_PROXY",
    "all_proxy",
    "ALL_PROXY",
];

/// The config of a daemon that keeps the ledger and drives no cloud.
pub const LEDGER_ONLY_CONFIG: &str = "[reconcile]\nenabled = false\n";

/// The path of the example manifest in the repository.
pub fn example_manifest_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/examples/prod-eu.yaml")
}

/// The text of the example manifest (cluster `prod-eu`, 5 workers).
pub fn example_manifest_text() -> String {
    std::fs::read_to_string(example_manifest_path()).expect("the example manifest is readable")
}

/// The example manifest with another cluster name and another number of
/// worker replicas. The replacements are checked, so that a change of the
/// example file fails loudly here instead of silently testing something else.
pub fn manifest_with_name_and_worker_replicas(cluster_name: &str, worker_replicas: i64) -> String {
    let example = example_manifest_text();
    let name_field = "metadata: {name: prod-eu,";
    let workers_field = "{name: workers, role: worker, replicas: 5,";
    assert!(
        example.contains(name_field) && example.contains(workers_field),
        "the example manifest no longer has the fields this test rewrites"
    );
    example
        .replace(name_field, &format!("metadata: {{name: {cluster_name},"))
        .replace(
            workers_field,
            &format!("{{name: workers, role: worker, replicas: {worker_replicas},"),
        )
}

/// The example manifest renamed, with both pools resized: scaling from one
/// such manifest to another with different sizes appends two `PoolScaled`
/// events in one atomic batch.
pub fn manifest_with_name_and_pool_replicas(
    cluster_name: &str,
    worker_replicas: i64,
    control_plane_replicas: i64,
) -> String {
    let control_plane_field = "{name: control-plane, role: control-plane, replicas: 3,";
    let manifest = manifest_with_name_and_worker_replicas(cluster_name, worker_replicas);
    assert!(
        manifest.contains(control_plane_field),
        "the example manifest no longer has the fields this test rewrites"
    );
    manifest.replace(
        control_plane_field,
        &format!("{{name: control-plane, role: control-plane, replicas: {control_plane_replicas},"),
    )
}

/// A `cairn serve` process listening on a loopback port. Dropping it kills the
/// process, so no daemon outlives its test, even when the test panics.
pub struct Daemon {
    /// None once the process has been waited for.
    child: Option<Child>,
    /// The address the daemon printed in its listening line.
    pub address: SocketAddr,
    /// Everything the daemon has written to standard error so far.
    standard_error_log: Arc<Mutex<String>>,
    /// Keeps the directory of the config file alive as long as the daemon.
    _config_directory: Option<TempDir>,
}

impl Daemon {
    /// Starts a daemon on `data_directory` as a ledger only (`[reconcile]
    /// enabled = false`), for the tests of the log, the API and the command
    /// line, whose event counts and seqs would otherwise interleave with the
    /// reconcilers' events. `tests/integration/reconcile.rs` runs the
    /// reconcilers.
    pub fn start(data_directory: &Path) -> Daemon {
        Daemon::start_with_config(data_directory, LEDGER_ONLY_CONFIG)
    }

    /// Starts a daemon with a config file holding `toml_text`.
    pub fn start_with_config(data_directory: &Path, toml_text: &str) -> Daemon {
        Daemon::start_with_config_on(data_directory, toml_text, "127.0.0.1:0")
    }

    /// Starts a daemon with a config file holding `toml_text`, listening on
    /// `listen` (a restarted daemon can take its predecessor's port).
    pub fn start_with_config_on(data_directory: &Path, toml_text: &str, listen: &str) -> Daemon {
        let config_directory = tempfile::tempdir().expect("a temporary directory for the config");
        let config_path = config_directory.path().join("cairn.toml");
        std::fs::write(&config_path, toml_text).expect("the config file is writable");
        let config_argument = config_path.to_str().expect("a UTF-8 temporary path");
        Daemon::start_with_arguments(
            data_directory,
            listen,
            &["--config", config_argument],
            Some(config_directory),
        )
    }

    fn start_with_arguments(
        data_directory: &Path,
        listen: &str,
        extra_arguments: &[&str],
        config_directory: Option<TempDir>,
    ) -> Daemon {
        let mut command = Command::new(CAIRN_BINARY_PATH);
        command
            .arg("serve")
            .args(["--listen", listen])
            .arg("--data-dir")
            .arg(data_directory)
            .args(extra_arguments)
            // Warnings and errors only: request logs under load would cost CPU.
            .env("CAIRN_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for variable in PROXY_ENVIRONMENT_VARIABLES {
            command.env_remove(variable);
        }
        let mut child = command.spawn().expect("the cairn binary starts");
        let standard_error_log = collect_in_background(
            child
                .stderr
                .take()
                .expect("standard error of the daemon is piped"),
        );
        let listening_line = first_line_in_background(
            child
                .stdout
                .take()
                .expect("standard output of the daemon is piped"),
        );
        let mut daemon = Daemon {
            child: Some(child),
            // A placeholder until the listening line arrives.
            address: SocketAddr::from(([127, 0, 0, 1], 0)),
            standard_error_log,
            _config_directory: config_directory,
        };
        let line = match listening_line.recv_timeout(DAEMON_START_DEADLINE) {
            Ok(line) => line,
            Err(_) => {
                let status = daemon.kill_and_reap();
                panic!(
                    "the daemon did not print its listening line (exit status {status:?}); \
                     its standard error:\n{}",
                    daemon.standard_error_so_far()
                );
            }
        };
        let address_text = line
            .trim()
            .strip_prefix(LISTENING_LINE_PREFIX)
            .unwrap_or_else(|| panic!("unexpected first line from the daemon: {line:?}"));
        daemon.address = address_text
            .parse()
            .unwrap_or_else(|error| panic!("bad address {address_text:?}: {error}"));
        assert!(
            daemon.address.ip().is_loopback(),
            "the daemon must listen on loopback, it said {}",
            daemon.address
        );
        daemon
    }

    /// The full URL of `path_and_query` on this daemon, e.g. `url("/v1/clusters")`.
    pub fn url(&self, path_and_query: &str) -> String {
        format!("http://{}{path_and_query}", self.address)
    }

    /// The base URL, as the command line client takes it in `CAIRN_SERVER`.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.address)
    }

    /// The process id of the daemon.
    pub fn process_id(&self) -> u32 {
        self.child
            .as_ref()
            .expect("the daemon is still running")
            .id()
    }

    /// What the daemon has written to standard error so far, for failure messages.
    pub fn standard_error_so_far(&self) -> String {
        self.standard_error_log
            .lock()
            .expect("the log lock is not poisoned")
            .clone()
    }

    /// Kills the daemon with SIGKILL, as a crash would, and waits until it is gone.
    pub fn kill_9(mut self) {
        self.kill_and_reap();
    }

    /// Sends SIGTERM and waits for the daemon to exit; asserts that it exited
    /// successfully, which it does only after a clean shutdown.
    pub fn terminate(mut self) {
        self.send_terminate_signal();
        let status = self.wait_for_exit(DAEMON_EXIT_DEADLINE);
        assert!(
            status.success(),
            "the daemon exited with {status} after SIGTERM; its standard error:\n{}",
            self.standard_error_so_far()
        );
    }

    /// Sends SIGTERM with the `kill` program and returns at once.
    pub fn send_terminate_signal(&self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.process_id().to_string()])
            .status()
            .expect("the kill program runs");
        assert!(status.success(), "kill -TERM failed with {status}");
    }

    /// Polls until the daemon exits, for at most `deadline`; kills it and
    /// panics when the deadline passes.
    pub fn wait_for_exit(&mut self, deadline: Duration) -> ExitStatus {
        let child = self
            .child
            .as_mut()
            .expect("the daemon was not waited for yet");
        let started = Instant::now();
        loop {
            if let Some(status) = child.try_wait().expect("waiting for the daemon works") {
                self.child = None;
                return status;
            }
            if started.elapsed() > deadline {
                let status = self.kill_and_reap();
                panic!(
                    "the daemon did not exit within {deadline:?} (killed: {status:?}); \
                     its standard error:\n{}",
                    self.standard_error_so_far()
                );
            }
            std::thread::sleep(PROCESS_EXIT_POLL_INTERVAL);
        }
    }

    /// Sends SIGKILL (unless the process is already gone) and reaps it.
    fn kill_and_reap(&mut self) -> Option<ExitStatus> {
        let mut child = self.child.take()?;
        // An error here means the process has already exited; wait reaps it either way.
        let _ = child.kill();
        child.wait().ok()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill_and_reap();
    }
}

/// Reads everything from `source` into a shared string, on a thread, so the
/// child never blocks on a full pipe.
fn collect_in_background(mut source: impl Read + Send + 'static) -> Arc<Mutex<String>> {
    let collected = Arc::new(Mutex::new(String::new()));
    let writer = collected.clone();
    std::thread::spawn(move || {
        let mut buffer = [0u8; 8192];
        loop {
            match source.read(&mut buffer) {
                Ok(0) | Err(_) => return,
                Ok(count) => writer
                    .lock()
                    .expect("the log lock is not poisoned")
                    .push_str(&String::from_utf8_lossy(&buffer[..count])),
            }
        }
    });
    collected
}

/// Sends the first line of `source` through the returned channel, then keeps
/// draining `source` so that the child never blocks on a full pipe. The channel
/// disconnects without a line when `source` ends first.
fn first_line_in_background(source: impl Read + Send + 'static) -> mpsc::Receiver<String> {
    let (sender, receiver) = mpsc::channel();
    std::thread::spawn(move || {
        let mut reader = BufReader::new(source);
        let mut line = String::new();
        match reader.read_line(&mut line) {
            Ok(count) if count > 0 => {
                let _ = sender.send(line);
            }
            _ => return,
        }
        drop(sender);
        let _ = std::io::copy(&mut reader, &mut std::io::sink());
    });
    receiver
}

/// How a run of a process ended.
#[derive(Debug)]
pub struct ProcessOutput {
    /// The exit code; -1 when a signal ended the process.
    pub exit_code: i32,
    pub standard_output: String,
    pub standard_error: String,
}

impl ProcessOutput {
    /// Standard output and standard error together, for searching.
    pub fn all_output(&self) -> String {
        format!("{}\n{}", self.standard_output, self.standard_error)
    }
}

/// Runs the `cairn` command line client with `arguments`, pointed at `server`
/// through `CAIRN_SERVER` (or at nothing for offline commands), feeding it
/// `standard_input`. Panics if it runs longer than the deadline.
pub fn run_command_line(
    server: Option<&str>,
    arguments: &[&str],
    standard_input: Option<&[u8]>,
) -> ProcessOutput {
    let mut command = Command::new(CAIRN_BINARY_PATH);
    command
        .args(arguments)
        .env_remove("CAIRN_TOKEN")
        .env_remove("CAIRN_SERVER")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for variable in PROXY_ENVIRONMENT_VARIABLES {
        command.env_remove(variable);
    }
    if let Some(server) = server {
        command.env("CAIRN_SERVER", server);
    }
    run_to_exit_with_deadline(command, standard_input, COMMAND_LINE_DEADLINE)
}

/// Runs `command` to its end with a bounded deadline; on timeout, kills it
/// with SIGKILL and panics.
pub fn run_to_exit_with_deadline(
    mut command: Command,
    standard_input: Option<&[u8]>,
    deadline: Duration,
) -> ProcessOutput {
    command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = command.spawn().expect("the cairn binary starts");
    let process_id = child.id();
    let mut stdin_pipe = child.stdin.take().expect("standard input is piped");
    let input = standard_input.unwrap_or_default().to_vec();
    // Writing on a thread: a child that does not read its input must not block us.
    std::thread::spawn(move || {
        let _ = stdin_pipe.write_all(&input);
    });
    let (sender, receiver) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = sender.send(child.wait_with_output());
    });
    match receiver.recv_timeout(deadline) {
        Ok(output) => {
            let output = output.expect("collecting the output of the process works");
            ProcessOutput {
                exit_code: output.status.code().unwrap_or(-1),
                standard_output: String::from_utf8_lossy(&output.stdout).into_owned(),
                standard_error: String::from_utf8_lossy(&output.stderr).into_owned(),
            }
        }
        Err(_) => {
            let _ = Command::new("kill")
                .args(["-KILL", &process_id.to_string()])
                .status();
            panic!("{command:?} did not finish within {deadline:?}");
        }
    }
}

/// An HTTP client for tests: no proxy, and a timeout so that a stuck request
/// fails the test instead of hanging it.
pub fn http_client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(30))
        .build()
        .expect("the HTTP client builds")
}

/// An HTTP response, read completely.
#[derive(Debug)]
pub struct HttpAnswer {
    pub status: u16,
    pub headers: HeaderMap,
    /// The body as JSON, or `Value::Null` when it is not JSON.
    pub body: Value,
    pub body_text: String,
}

impl HttpAnswer {
    /// Reads a whole response.
    pub async fn read(response: reqwest::Response) -> HttpAnswer {
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let body_text = response
            .text()
            .await
            .expect("the response body is readable");
        let body = serde_json::from_str(&body_text).unwrap_or(Value::Null);
        HttpAnswer {
            status,
            headers,
            body,
            body_text,
        }
    }

    /// A header as text, or the empty string when it is absent.
    pub fn header(&self, name: &str) -> String {
        self.headers
            .get(name)
            .map(|value| value.to_str().expect("a visible ASCII header").to_string())
            .unwrap_or_default()
    }

    /// Asserts the status code, showing the body when it differs.
    pub fn assert_status(&self, expected_status: u16) -> &HttpAnswer {
        assert_eq!(
            self.status, expected_status,
            "unexpected status; the body was: {}",
            self.body_text
        );
        self
    }

    /// Asserts that this is an RFC 7807 problem document with this status and code.
    pub fn assert_problem(&self, expected_status: u16, expected_code: &str) -> &HttpAnswer {
        self.assert_status(expected_status);
        assert_eq!(
            self.header("content-type"),
            "application/problem+json",
            "a refusal must be a problem document: {}",
            self.body_text
        );
        assert_eq!(self.body["code"], expected_code, "{}", self.body_text);
        assert_eq!(self.body["status"], expected_status, "{}", self.body_text);
        assert!(
            self.body["detail"]
                .as_str()
                .is_some_and(|detail| !detail.is_empty()),
            "a problem has a detail: {}",
            self.body_text
        );
        self
    }
}

/// Sends `GET url` and reads the answer.
pub async fn get(client: &reqwest::Client, url: &str) -> HttpAnswer {
    HttpAnswer::read(
        client
            .get(url)
            .send()
            .await
            .expect("the GET request is answered"),
    )
    .await
}

/// Sends `POST /v1/apply` with a YAML manifest and extra headers, and reads the answer.
pub async fn post_apply(
    client: &reqwest::Client,
    daemon: &Daemon,
    path_and_query: &str,
    manifest: &str,
    extra_headers: &[(&str, &str)],
) -> HttpAnswer {
    let mut request = client
        .post(daemon.url(path_and_query))
        .header("content-type", "application/yaml")
        .body(manifest.to_string());
    for (name, value) in extra_headers {
        request = request.header(*name, *value);
    }
    HttpAnswer::read(request.send().await.expect("the apply request is answered")).await
}

/// Every event of the log, oldest first, read page by page through the `next` cursor.
pub async fn all_events(client: &reqwest::Client, daemon: &Daemon) -> Vec<Value> {
    let mut events = Vec::new();
    let mut after = 0u64;
    loop {
        let answer = get(
            client,
            &daemon.url(&format!("/v1/events?after={after}&limit=1000")),
        )
        .await;
        answer.assert_status(200);
        let page = answer.body["events"]
            .as_array()
            .expect("a page has an events array")
            .clone();
        events.extend(page);
        match answer.body["next"].as_str() {
            None => return events,
            Some(next) => {
                let next_after: u64 = next.parse().expect("the cursor is a seq");
                assert!(next_after > after, "the cursor must move forward");
                after = next_after;
            }
        }
    }
}

/// The seq of the last event in the log (0 for an empty log), read through
/// `GET /v1/events`.
pub async fn head_seq(client: &reqwest::Client, daemon: &Daemon) -> u64 {
    all_events(client, daemon)
        .await
        .last()
        .map_or(0, |event| event["seq"].as_u64().expect("seq is a number"))
}

/// The replicas of the pool named `pool_name` in a manifest as JSON.
pub fn pool_replicas(manifest: &Value, pool_name: &str) -> i64 {
    manifest["spec"]["pools"]
        .as_array()
        .expect("the manifest has pools")
        .iter()
        .find(|pool| pool["name"] == pool_name)
        .unwrap_or_else(|| panic!("no pool {pool_name} in {manifest}"))["replicas"]
        .as_i64()
        .expect("replicas is a number")
}
