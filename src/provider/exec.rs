//! The `exec` provider: a plugin program, started by Cairn, that speaks
//! versioned JSON lines over its stdin and stdout, so a provider can be
//! written in any language. docs/providers.md describes the protocol for
//! plugin authors; tools/plugins/reference_plugin.py is a working example.
//!
//! # Layout
//!
//! - `ExecPluginConfig`: one `[providers.exec.<name>]` table of the daemon's
//!   config, and its `check`.
//! - The protocol types: `Request` (an `id`, a version and an `Op`),
//!   `Response` (the echoed `id`, a version and an `Outcome`), `HelloResult`,
//!   `PluginError`, and `PluginMessage`, the root of the JSON Schema in
//!   schemas/exec-plugin.schema.json.
//! - `ExecProvider`: the `Provider` that owns at most one plugin process at a
//!   time, started lazily and restarted after a failure.
//! - `Session`: one running process (its pipes, the task that copies its stderr
//!   into the logs), the handshake, and one request/response exchange.
//!
//! # Failure handling
//!
//! One request is in flight per plugin process: a mutex around the session
//! serialises calls. A process that exits, hangs past `timeout_seconds` or
//! prints a line that is not a valid response fails the call as retryable, is
//! killed and waited for, and the next call starts a fresh process. Errors the
//! plugin itself answers keep the process and carry the plugin's `retryable`.

use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use async_trait::async_trait;
use schemars::JsonSchema;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};
use tokio::sync::Mutex;
use tokio::task::JoinHandle;

use super::{Provider, ProviderError};
use crate::model::{CloudResource, ResourceSpec};

/// The protocol version this build of Cairn speaks.
pub const PROTOCOL_VERSION: u32 = 1;

/// How long one request may take when the config does not say.
pub const DEFAULT_TIMEOUT_SECONDS: u64 = 30;

/// The longest response line Cairn reads; a longer one is a protocol error.
const MAX_LINE_BYTES: u64 = 16 * 1024 * 1024;

/// How much of an invalid line an error message quotes.
const QUOTE_BYTES: usize = 200;

/// How long Cairn waits for a plugin that closed its stdout to exit by itself
/// before it kills it, so that the error can report the plugin's own status.
const EXIT_GRACE: Duration = Duration::from_secs(2);

/// How long Cairn waits, after the process is gone, for the last lines of its
/// stderr to reach the logs.
const STDERR_GRACE: Duration = Duration::from_millis(500);

/// One plugin, as configured in `[providers.exec.<name>]`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ExecPluginConfig {
    /// The program and its arguments, e.g. ["python3", "tools/plugins/reference_plugin.py", "--state-dir", "/var/lib/cairn/ref"].
    pub command: Vec<String>,
    /// How long one request may take before the plugin is killed and the call
    /// fails (retryable). Default 30.
    #[serde(default = "default_timeout_seconds")]
    pub timeout_seconds: u64,
}

fn default_timeout_seconds() -> u64 {
    DEFAULT_TIMEOUT_SECONDS
}

impl ExecPluginConfig {
    /// Refuses a config that cannot work, naming the field at fault.
    pub fn check(&self) -> Result<(), String> {
        match self.command.first() {
            None => {
                return Err("command: must name the program to run, e.g. \
                     [\"python3\", \"tools/plugins/reference_plugin.py\", \"--state-dir\", \"/var/lib/cairn/ref\"]"
                    .into())
            }
            Some(program) if program.trim().is_empty() => {
                return Err("command[0]: the program must not be empty".into())
            }
            Some(_) => {}
        }
        if let Some(index) = self.command.iter().position(|word| word.contains('\0')) {
            return Err(format!("command[{index}]: must not contain a NUL byte"));
        }
        if self.timeout_seconds == 0 {
            return Err(
                "timeout_seconds: must be positive, or every request would time out".into(),
            );
        }
        Ok(())
    }

    fn timeout(&self) -> Duration {
        Duration::from_secs(self.timeout_seconds)
    }

    /// The command as one line, for error messages.
    fn command_line(&self) -> String {
        self.command.join(" ")
    }
}

/// A line Cairn writes to the plugin's stdin.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Request {
    /// The protocol version the message is written in: 1.
    #[schemars(extend("const" = 1))]
    pub v: u32,
    /// Chosen by Cairn; the response echoes it.
    pub id: u64,
    #[serde(flatten)]
    pub op: Op,
}

/// What a request asks for, tagged by `op`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "op", rename_all = "snake_case", rename_all_fields = "camelCase")]
pub enum Op {
    /// The handshake, Cairn's first request to every process. The plugin
    /// answers with a `HelloResult`.
    Hello {
        /// Cairn's version, for the plugin's logs.
        cairn: String,
        /// The protocol versions Cairn speaks.
        versions: Vec<u32>,
    },
    /// Create the resource, tagged with the cluster and the token; or, when a
    /// resource with this token exists, answer it unchanged. Answers a
    /// `CloudResource`.
    Create {
        cluster: String,
        token: String,
        spec: ResourceSpec,
    },
    /// Delete the resource; one that is already gone is success too. Answers
    /// null.
    Delete {
        cluster: String,
        token: String,
        provider_id: String,
    },
    /// Answers the resource with this provider id, or null.
    Describe { provider_id: String },
    /// Answers the resource created with this token, or null.
    Lookup { token: String },
    /// Answers every resource tagged with the cluster, as a list.
    List { cluster: String },
}

impl Op {
    /// The op's name on the wire, for error messages.
    pub fn name(&self) -> &'static str {
        match self {
            Op::Hello { .. } => "hello",
            Op::Create { .. } => "create",
            Op::Delete { .. } => "delete",
            Op::Describe { .. } => "describe",
            Op::Lookup { .. } => "lookup",
            Op::List { .. } => "list",
        }
    }
}

/// A line the plugin writes to its stdout, answering one request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Response {
    /// The protocol version the message is written in: 1.
    #[schemars(extend("const" = 1))]
    pub v: u32,
    /// The `id` of the request this answers.
    pub id: u64,
    #[serde(flatten)]
    pub outcome: Outcome,
}

/// Either `ok` with the op's result or `error`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// The result: a `HelloResult` for hello, a `CloudResource` for create,
    /// a `CloudResource` or null for describe and lookup, null for delete and
    /// a list of `CloudResource` for list.
    Ok(#[schemars(with = "OkResult")] serde_json::Value),
    Error(PluginError),
}

/// The shapes an `ok` result takes, for the JSON Schema only: Cairn reads
/// `ok` as the result type of the op it sent, so no value of this type is made.
#[derive(JsonSchema)]
#[serde(untagged)]
#[allow(dead_code)]
enum OkResult {
    Hello(HelloResult),
    Resource(Box<CloudResource>),
    Resources(Vec<CloudResource>),
    Nothing(()),
}

/// The plugin's answer to the handshake.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct HelloResult {
    /// The plugin's own name, for Cairn's logs.
    pub name: String,
    /// The protocol versions the plugin speaks; Cairn needs 1 among them.
    pub versions: Vec<u32>,
}

/// A failure the plugin reports.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct PluginError {
    pub message: String,
    /// Whether trying again (with the same token) may succeed.
    pub retryable: bool,
    /// For a create: the token already made a resource that no longer
    /// exists, so Cairn must use a new token. Optional, false when absent.
    #[serde(default, rename = "tokenSpent")]
    pub token_spent: bool,
}

/// One line of the exec plugin protocol, in either direction: the root of
/// schemas/exec-plugin.schema.json.
#[derive(JsonSchema)]
#[serde(untagged)]
pub enum PluginMessage {
    /// From Cairn to the plugin.
    Request(Request),
    /// From the plugin to Cairn.
    Response(Response),
}

/// A provider backed by a plugin program. The process is started by the first
/// call and restarted by the call after a failure.
pub struct ExecProvider {
    /// The plugin's name in the config (without the `exec:` prefix).
    name: String,
    config: ExecPluginConfig,
    state: Mutex<State>,
}

/// What the mutex guards: the running process, if any, and the next request id.
struct State {
    session: Option<Session>,
    next_id: u64,
}

impl ExecProvider {
    /// A provider for the plugin `name` (as in `[providers.exec.<name>]` and
    /// `spec.provider: exec:<name>`). Nothing is started until the first call;
    /// the daemon is expected to have run `config.check()`.
    pub fn new(name: impl Into<String>, config: ExecPluginConfig) -> ExecProvider {
        ExecProvider {
            name: name.into(),
            config,
            state: Mutex::new(State {
                session: None,
                next_id: 1,
            }),
        }
    }

    /// Sends one request and returns the `ok` result as the op's result type.
    async fn call<T: DeserializeOwned>(&self, op: Op) -> Result<T, ProviderError> {
        let mut state = self.state.lock().await;
        let state = &mut *state;
        if let Some(session) = state.session.as_mut() {
            if let Some(reason) = session.unusable() {
                tracing::warn!(plugin = %self.name, "exec plugin {reason}; starting a fresh process");
                if let Some(session) = state.session.take() {
                    session.shut_down().await;
                }
            }
        }
        let session = match state.session.take() {
            Some(session) => session,
            None => {
                let hello_id = state.next_id;
                state.next_id += 1;
                Session::start(&self.name, &self.config, hello_id).await?
            }
        };
        let session = state.session.insert(session);
        let id = state.next_id;
        state.next_id += 1;
        let op_name = op.name();
        match session.exchange(id, op).await {
            Ok(Outcome::Ok(value)) => match serde_json::from_value(value) {
                Ok(result) => Ok(result),
                // A result that is not what the protocol says is garbage like
                // a line that is not JSON: the process is replaced, and the
                // call may be retried with the same token.
                Err(error) => {
                    if let Some(session) = state.session.take() {
                        session.shut_down().await;
                    }
                    Err(ProviderError::retryable(format!(
                        "exec plugin {:?} answered the {op_name} request with a result of the \
                         wrong shape: {error}",
                        self.name
                    )))
                }
            },
            Ok(Outcome::Error(error)) => Err(ProviderError {
                message: format!("exec plugin {:?}: {}", self.name, error.message),
                retryable: error.retryable,
                token_spent: error.token_spent,
            }),
            Err(failure) => {
                if let Some(session) = state.session.take() {
                    session.shut_down().await;
                }
                Err(failure.into_error())
            }
        }
    }

    /// The process id of the running plugin, if one runs.
    #[cfg(test)]
    async fn pid(&self) -> Option<u32> {
        let state = self.state.lock().await;
        state
            .session
            .as_ref()
            .and_then(|session| session.child.id())
    }

    fn mismatch(&self, what: String) -> ProviderError {
        ProviderError::permanent(format!("exec plugin {:?} {what}", self.name))
    }
}

#[async_trait]
impl Provider for ExecProvider {
    async fn create(
        &self,
        cluster: &str,
        token: &str,
        spec: &ResourceSpec,
    ) -> Result<CloudResource, ProviderError> {
        let resource: CloudResource = self
            .call(Op::Create {
                cluster: cluster.into(),
                token: token.into(),
                spec: spec.clone(),
            })
            .await?;
        if resource.token != token || resource.cluster != cluster {
            return Err(self.mismatch(format!(
                "answered create (cluster {cluster:?}, token {token:?}) with a resource of \
                 cluster {:?} and token {:?}",
                resource.cluster, resource.token
            )));
        }
        Ok(resource)
    }

    async fn delete(
        &self,
        cluster: &str,
        token: &str,
        provider_id: &str,
    ) -> Result<(), ProviderError> {
        self.call(Op::Delete {
            cluster: cluster.into(),
            token: token.into(),
            provider_id: provider_id.into(),
        })
        .await
    }

    async fn describe(&self, provider_id: &str) -> Result<Option<CloudResource>, ProviderError> {
        let resource: Option<CloudResource> = self
            .call(Op::Describe {
                provider_id: provider_id.into(),
            })
            .await?;
        if let Some(found) = &resource {
            if found.provider_id != provider_id {
                return Err(self.mismatch(format!(
                    "answered describe {provider_id:?} with resource {:?}",
                    found.provider_id
                )));
            }
        }
        Ok(resource)
    }

    async fn lookup(&self, token: &str) -> Result<Option<CloudResource>, ProviderError> {
        let resource: Option<CloudResource> = self
            .call(Op::Lookup {
                token: token.into(),
            })
            .await?;
        if let Some(found) = &resource {
            if found.token != token {
                return Err(self.mismatch(format!(
                    "answered lookup {token:?} with a resource of token {:?}",
                    found.token
                )));
            }
        }
        Ok(resource)
    }

    async fn list(&self, cluster: &str) -> Result<Vec<CloudResource>, ProviderError> {
        let resources: Vec<CloudResource> = self
            .call(Op::List {
                cluster: cluster.into(),
            })
            .await?;
        if let Some(stray) = resources.iter().find(|found| found.cluster != cluster) {
            return Err(self.mismatch(format!(
                "answered list {cluster:?} with resource {:?} of cluster {:?}",
                stray.provider_id, stray.cluster
            )));
        }
        Ok(resources)
    }
}

/// Why an exchange failed in a way that ends the process. Each variant turns
/// into a `ProviderError` naming the plugin.
enum Failure {
    /// The process closed its stdout or its stdin; `how` says how it ended,
    /// e.g. `exited (exit status: 3)`.
    Exited {
        plugin: String,
        op: &'static str,
        how: String,
        last_stderr: Option<String>,
    },
    /// No answer within the timeout.
    TimedOut {
        plugin: String,
        op: &'static str,
        seconds: u64,
    },
    /// The line read is not a valid answer to the request.
    Invalid {
        plugin: String,
        op: &'static str,
        problem: String,
    },
    /// The plugin does not speak Cairn's protocol version. Permanent.
    Version { plugin: String, problem: String },
    /// The plugin answered the handshake with an error of its own.
    Refused { plugin: String, error: PluginError },
}

impl Failure {
    fn into_error(self) -> ProviderError {
        match self {
            Failure::Exited {
                plugin,
                op,
                how,
                last_stderr,
            } => {
                let mut message =
                    format!("exec plugin {plugin:?} {how} without answering the {op} request");
                if let Some(line) = last_stderr {
                    message.push_str(&format!(
                        "; its last stderr line: {}",
                        quote(line.as_bytes())
                    ));
                }
                ProviderError::retryable(message)
            }
            Failure::TimedOut {
                plugin,
                op,
                seconds,
            } => ProviderError::retryable(format!(
                "exec plugin {plugin:?} did not answer the {op} request within {seconds} s \
                 (timeout_seconds); killed it"
            )),
            Failure::Invalid {
                plugin,
                op,
                problem,
            } => ProviderError::retryable(format!(
                "exec plugin {plugin:?} broke the protocol answering the {op} request: {problem}; \
                 killed it"
            )),
            Failure::Version { plugin, problem } => ProviderError::permanent(format!(
                "exec plugin {plugin:?} {problem}, but Cairn speaks only version {PROTOCOL_VERSION}"
            )),
            Failure::Refused { plugin, error } => ProviderError {
                message: format!(
                    "exec plugin {plugin:?} refused the handshake: {}",
                    error.message
                ),
                retryable: error.retryable,
                token_spent: false,
            },
        }
    }
}

/// One running plugin process.
struct Session {
    /// The plugin's name in the config.
    plugin: String,
    timeout: Duration,
    timeout_seconds: u64,
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
    /// Copies stderr into the logs and ends with the last non-empty line.
    stderr_task: Option<JoinHandle<Option<String>>>,
    /// Set while a request awaits its answer. Still set at the start of a call,
    /// it means the previous call was cancelled mid-exchange: its answer may
    /// still come, so the process cannot be trusted any more.
    in_flight: bool,
}

impl Session {
    /// Spawns the plugin and performs the handshake with request `id`.
    async fn start(
        name: &str,
        config: &ExecPluginConfig,
        id: u64,
    ) -> Result<Session, ProviderError> {
        let Some((program, args)) = config.command.split_first() else {
            return Err(ProviderError::permanent(format!(
                "exec plugin {name:?}: command: must name the program to run"
            )));
        };
        let mut child = Command::new(program)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|error| {
                ProviderError::retryable(format!(
                    "exec plugin {name:?}: cannot start `{}`: {error}",
                    config.command_line()
                ))
            })?;
        let pipes = (child.stdin.take(), child.stdout.take(), child.stderr.take());
        let (Some(stdin), Some(stdout), Some(stderr)) = pipes else {
            return Err(ProviderError::retryable(format!(
                "exec plugin {name:?}: `{}` started without its pipes",
                config.command_line()
            )));
        };
        let pid = child.id().unwrap_or_default();
        tracing::info!(plugin = %name, pid, command = %config.command_line(), "exec plugin started");
        let stderr_task = tokio::spawn(copy_stderr(name.to_owned(), pid, stderr));
        let mut session = Session {
            plugin: name.to_owned(),
            timeout: config.timeout(),
            timeout_seconds: config.timeout_seconds,
            child,
            stdin,
            stdout: BufReader::new(stdout),
            stderr_task: Some(stderr_task),
            in_flight: false,
        };
        match session.handshake(id).await {
            Ok(hello) => {
                tracing::info!(
                    plugin = %name,
                    pid,
                    reported_name = %hello.name,
                    versions = ?hello.versions,
                    "exec plugin ready"
                );
                Ok(session)
            }
            Err(failure) => {
                session.shut_down().await;
                Err(failure.into_error())
            }
        }
    }

    async fn handshake(&mut self, id: u64) -> Result<HelloResult, Failure> {
        let hello = Op::Hello {
            cairn: env!("CARGO_PKG_VERSION").into(),
            versions: vec![PROTOCOL_VERSION],
        };
        let line = self.send_and_read(id, &hello).await?;
        // A plugin of another protocol version may answer in its own version;
        // its `versions` then say more than "wrong version" would.
        let value: serde_json::Value = serde_json::from_slice(&line).map_err(|error| {
            self.invalid(
                "hello",
                format!("a line that is not JSON ({error}): {}", quote(&line)),
            )
        })?;
        if value.get("v") != Some(&PROTOCOL_VERSION.into()) {
            let problem = match value.pointer("/ok/versions") {
                Some(versions) => format!("speaks protocol versions {versions}"),
                None => format!(
                    "answered the handshake in protocol version {}",
                    value.get("v").unwrap_or(&serde_json::Value::Null)
                ),
            };
            return Err(Failure::Version {
                plugin: self.plugin.clone(),
                problem,
            });
        }
        match self.parse_response(id, "hello", &line)? {
            Outcome::Error(error) => Err(Failure::Refused {
                plugin: self.plugin.clone(),
                error,
            }),
            Outcome::Ok(value) => {
                let hello: HelloResult = serde_json::from_value(value).map_err(|error| {
                    self.invalid("hello", format!("the hello result is malformed: {error}"))
                })?;
                if !hello.versions.contains(&PROTOCOL_VERSION) {
                    return Err(Failure::Version {
                        plugin: self.plugin.clone(),
                        problem: format!("speaks protocol versions {:?}", hello.versions),
                    });
                }
                Ok(hello)
            }
        }
    }

    /// Sends one request and reads its response.
    async fn exchange(&mut self, id: u64, op: Op) -> Result<Outcome, Failure> {
        let line = self.send_and_read(id, &op).await?;
        self.parse_response(id, op.name(), &line)
    }

    /// Writes the request and reads one line, within the timeout.
    async fn send_and_read(&mut self, id: u64, op: &Op) -> Result<Vec<u8>, Failure> {
        let request = Request {
            v: PROTOCOL_VERSION,
            id,
            op: op.clone(),
        };
        let mut text = serde_json::to_vec(&request).map_err(|error| {
            self.invalid(op.name(), format!("cannot encode the request: {error}"))
        })?;
        text.push(b'\n');
        self.in_flight = true;
        let timeout = self.timeout;
        let read = tokio::time::timeout(timeout, async {
            // A write error means the process is gone, like end of file.
            if self.stdin.write_all(&text).await.is_err() || self.stdin.flush().await.is_err() {
                return Ok(None);
            }
            let mut line = Vec::new();
            let read = (&mut self.stdout)
                .take(MAX_LINE_BYTES + 1)
                .read_until(b'\n', &mut line)
                .await;
            match read {
                Err(error) => Err(error),
                Ok(_) if line.last() == Some(&b'\n') => Ok(Some(line)),
                Ok(_) if line.len() as u64 > MAX_LINE_BYTES => Ok(Some(line)),
                // End of file, possibly after a partial line.
                Ok(_) => Ok(None),
            }
        })
        .await;
        match read {
            Err(_elapsed) => Err(Failure::TimedOut {
                plugin: self.plugin.clone(),
                op: op.name(),
                seconds: self.timeout_seconds,
            }),
            Ok(Err(error)) => Err(self.invalid(op.name(), format!("cannot read stdout: {error}"))),
            Ok(Ok(None)) => Err(self.exited(op.name()).await),
            Ok(Ok(Some(line))) if line.last() != Some(&b'\n') => Err(self.invalid(
                op.name(),
                format!(
                    "a line longer than {MAX_LINE_BYTES} bytes: {}",
                    quote(&line)
                ),
            )),
            Ok(Ok(Some(mut line))) => {
                self.in_flight = false;
                line.pop();
                Ok(line)
            }
        }
    }

    /// Checks that the line is a version-1 response to request `id`.
    fn parse_response(&self, id: u64, op: &'static str, line: &[u8]) -> Result<Outcome, Failure> {
        let value: serde_json::Value = serde_json::from_slice(line).map_err(|error| {
            self.invalid(
                op,
                format!("a line that is not JSON ({error}): {}", quote(line)),
            )
        })?;
        let version = value.get("v");
        if version != Some(&PROTOCOL_VERSION.into()) {
            return Err(self.invalid(
                op,
                format!(
                    "a line of protocol version {} instead of {PROTOCOL_VERSION}: {}",
                    version.unwrap_or(&serde_json::Value::Null),
                    quote(line)
                ),
            ));
        }
        let answered = value.get("id");
        if answered != Some(&id.into()) {
            return Err(self.invalid(
                op,
                format!(
                    "an answer to request id {} instead of {id}: {}",
                    answered.unwrap_or(&serde_json::Value::Null),
                    quote(line)
                ),
            ));
        }
        let has_ok = value.get("ok").is_some();
        let has_error = value.get("error").is_some();
        if has_ok == has_error {
            return Err(self.invalid(
                op,
                format!(
                    "a response needs exactly one of `ok` and `error`: {}",
                    quote(line)
                ),
            ));
        }
        let response: Response = serde_json::from_value(value).map_err(|error| {
            self.invalid(
                op,
                format!("a malformed response ({error}): {}", quote(line)),
            )
        })?;
        Ok(response.outcome)
    }

    fn invalid(&self, op: &'static str, problem: String) -> Failure {
        Failure::Invalid {
            plugin: self.plugin.clone(),
            op,
            problem,
        }
    }

    /// The failure of a process that closed its pipes: waits a little for its
    /// exit status and its last words on stderr.
    async fn exited(&mut self, op: &'static str) -> Failure {
        let how = match tokio::time::timeout(EXIT_GRACE, self.child.wait()).await {
            Ok(Ok(status)) => format!("exited ({})", describe_status(status)),
            Ok(Err(error)) => format!("exited (exit status unknown: {error})"),
            Err(_elapsed) => "closed its pipes but kept running".to_owned(),
        };
        let last_stderr = self.last_stderr().await;
        Failure::Exited {
            plugin: self.plugin.clone(),
            op,
            how,
            last_stderr,
        }
    }

    /// The last line the process wrote to stderr, once the copying task ends.
    async fn last_stderr(&mut self) -> Option<String> {
        let mut task = self.stderr_task.take()?;
        match tokio::time::timeout(STDERR_GRACE, &mut task).await {
            Ok(Ok(line)) => line,
            Ok(Err(_join_error)) => None,
            Err(_elapsed) => {
                task.abort();
                None
            }
        }
    }

    /// Why the process cannot take a request, if it cannot.
    fn unusable(&mut self) -> Option<String> {
        if self.in_flight {
            return Some(format!(
                "{:?} may still be answering a cancelled request",
                self.plugin
            ));
        }
        match self.child.try_wait() {
            Ok(Some(status)) => Some(format!(
                "{:?} exited ({}) between requests",
                self.plugin,
                describe_status(status)
            )),
            Ok(None) => None,
            Err(error) => Some(format!("{:?} cannot be waited for: {error}", self.plugin)),
        }
    }

    /// Kills the process (if it still runs) and waits for it.
    async fn shut_down(mut self) {
        if let Err(error) = self.child.start_kill() {
            // The process has exited already; waiting below reaps it.
            tracing::debug!(plugin = %self.plugin, %error, "exec plugin already gone");
        }
        match self.child.wait().await {
            Ok(status) => tracing::info!(
                plugin = %self.plugin,
                status = %describe_status(status),
                "exec plugin stopped"
            ),
            Err(error) => {
                tracing::warn!(plugin = %self.plugin, %error, "cannot wait for exec plugin")
            }
        }
        let _ = self.last_stderr().await;
    }
}

/// Copies the plugin's stderr into the logs, a line at a time, and returns its
/// last non-empty line at end of file.
async fn copy_stderr(
    plugin: String,
    pid: u32,
    stderr: tokio::process::ChildStderr,
) -> Option<String> {
    let mut reader = BufReader::new(stderr);
    let mut last = None;
    let mut line = Vec::new();
    loop {
        line.clear();
        match (&mut reader)
            .take(MAX_LINE_BYTES)
            .read_until(b'\n', &mut line)
            .await
        {
            Ok(0) => return last,
            Ok(_) => {
                let text = String::from_utf8_lossy(&line);
                let text = text.trim_end();
                if !text.is_empty() {
                    tracing::info!(plugin = %plugin, pid, "exec plugin stderr: {text}");
                    last = Some(text.to_owned());
                }
            }
            Err(error) => {
                tracing::warn!(plugin = %plugin, pid, %error, "cannot read exec plugin stderr");
                return last;
            }
        }
    }
}

/// `exit status: 3` or `signal: 9 (SIGKILL)`, as the standard library says it.
fn describe_status(status: ExitStatus) -> String {
    status.to_string()
}

/// The first `QUOTE_BYTES` bytes of a line, quoted, with `...` when cut.
fn quote(line: &[u8]) -> String {
    let text = String::from_utf8_lossy(line);
    let mut end = text.len().min(QUOTE_BYTES);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    if end < text.len() {
        format!("{:?}...", &text[..end])
    } else {
        format!("{text:?}")
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::model::{MachineSpec, NetworkSpec, SubnetSpec};

    /// The reference plugin, run through `python3`, keeping its cloud in
    /// `state_dir`, with extra test switches such as `--crash-on create`.
    fn reference(state_dir: &Path, switches: &[&str], timeout_seconds: u64) -> ExecProvider {
        let script = format!(
            "{}/tools/plugins/reference_plugin.py",
            env!("CARGO_MANIFEST_DIR")
        );
        let mut command = vec![
            "python3".to_owned(),
            script,
            "--state-dir".to_owned(),
            state_dir.display().to_string(),
        ];
        command.extend(switches.iter().map(|switch| switch.to_string()));
        ExecProvider::new(
            "ref",
            ExecPluginConfig {
                command,
                timeout_seconds,
            },
        )
    }

    /// A plugin written inline in Python, for protocol misbehaviour the
    /// reference plugin has no switch for.
    fn inline(name: &str, script: &str) -> ExecProvider {
        ExecProvider::new(
            name,
            ExecPluginConfig {
                command: vec!["python3".into(), "-c".into(), script.into()],
                timeout_seconds: 5,
            },
        )
    }

    fn network() -> ResourceSpec {
        ResourceSpec::Network(NetworkSpec {
            cidr: "10.0.0.0/16".into(),
            region: "eu-west".into(),
        })
    }

    fn subnet(name: &str, cidr: &str) -> ResourceSpec {
        ResourceSpec::Subnet(SubnetSpec {
            name: name.into(),
            cidr: cidr.into(),
            zone: Some("eu-west-1a".into()),
        })
    }

    fn machine(name: &str, subnet: &str) -> ResourceSpec {
        ResourceSpec::Machine(MachineSpec {
            name: name.into(),
            pool: "workers".into(),
            role: "worker".into(),
            machine_type: "small".into(),
            image: "ubuntu-24.04".into(),
            subnet: subnet.into(),
            kubernetes_version: "1.31.3".into(),
        })
    }

    /// Whether a process with this id exists (a zombie counts: it was not
    /// waited for).
    fn process_exists(pid: u32) -> bool {
        Path::new(&format!("/proc/{pid}")).exists()
    }

    #[tokio::test]
    async fn round_trip_through_the_reference_plugin() {
        let dir = tempfile::tempdir().unwrap();
        let provider = reference(dir.path(), &[], 10);

        let net = provider.create("demo", "t-net", &network()).await.unwrap();
        assert_eq!(net.provider_id, "ref-n-1");
        assert_eq!(net.address, None);
        let sub = provider
            .create("demo", "t-sub", &subnet("a", "10.0.1.0/24"))
            .await
            .unwrap();
        assert_eq!(sub.provider_id, "ref-s-1");
        let worker = provider
            .create("demo", "t-m0", &machine("workers-0", "a"))
            .await
            .unwrap();
        assert_eq!(worker.provider_id, "ref-m-1");
        assert_eq!(worker.cluster, "demo");
        assert_eq!(worker.token, "t-m0");
        assert_eq!(worker.spec, machine("workers-0", "a"));
        assert_eq!(worker.address.as_deref(), Some("10.0.1.1"));

        assert_eq!(
            provider.describe("ref-m-1").await.unwrap(),
            Some(worker.clone())
        );
        assert_eq!(provider.describe("ref-m-9").await.unwrap(), None);
        assert_eq!(provider.lookup("t-sub").await.unwrap(), Some(sub.clone()));
        assert_eq!(provider.lookup("t-unknown").await.unwrap(), None);
        let listed = provider.list("demo").await.unwrap();
        assert_eq!(listed.len(), 3);
        for resource in [&net, &sub, &worker] {
            assert!(
                listed.contains(resource),
                "{resource:?} missing from {listed:?}"
            );
        }
        assert_eq!(provider.list("other").await.unwrap(), Vec::new());

        provider.delete("demo", "t-del", "ref-m-1").await.unwrap();
        assert_eq!(provider.describe("ref-m-1").await.unwrap(), None);
        assert_eq!(provider.lookup("t-m0").await.unwrap(), None);
        // Deleting what is already gone succeeds.
        provider.delete("demo", "t-del", "ref-m-1").await.unwrap();
        assert_eq!(provider.list("demo").await.unwrap().len(), 2);
    }

    #[tokio::test]
    async fn the_same_token_twice_yields_one_resource() {
        let dir = tempfile::tempdir().unwrap();
        let provider = reference(dir.path(), &[], 10);
        provider
            .create("demo", "t-sub", &subnet("a", "10.0.1.0/24"))
            .await
            .unwrap();
        let first = provider
            .create("demo", "t-m0", &machine("workers-0", "a"))
            .await
            .unwrap();
        let again = provider
            .create("demo", "t-m0", &machine("workers-0", "a"))
            .await
            .unwrap();
        assert_eq!(first, again);
        let other = provider
            .create("demo", "t-m1", &machine("workers-1", "a"))
            .await
            .unwrap();
        assert_eq!(other.provider_id, "ref-m-2");
        assert_eq!(other.address.as_deref(), Some("10.0.1.2"));
        let machines = provider
            .list("demo")
            .await
            .unwrap()
            .into_iter()
            .filter(|resource| resource.token == "t-m0")
            .count();
        assert_eq!(machines, 1);
    }

    #[tokio::test]
    async fn the_state_survives_a_plugin_restart() {
        let dir = tempfile::tempdir().unwrap();
        let first = reference(dir.path(), &[], 10);
        let created = first.create("demo", "t-net", &network()).await.unwrap();
        let pid = first.pid().await.unwrap();
        drop(first);

        let second = reference(dir.path(), &[], 10);
        assert_eq!(second.lookup("t-net").await.unwrap(), Some(created.clone()));
        assert_ne!(second.pid().await, Some(pid));
        assert_eq!(
            second.create("demo", "t-net", &network()).await.unwrap(),
            created
        );
        let next = second
            .create("demo", "t-sub", &subnet("a", "10.0.1.0/24"))
            .await
            .unwrap();
        assert_eq!(next.provider_id, "ref-s-1");
        assert_eq!(second.list("demo").await.unwrap().len(), 2);
    }

    #[tokio::test]
    async fn a_crash_fails_the_call_as_retryable_and_the_next_call_restarts() {
        let dir = tempfile::tempdir().unwrap();
        let provider = reference(dir.path(), &["--crash-on", "create"], 10);
        provider.list("demo").await.unwrap();
        let crashed_pid = provider.pid().await.unwrap();

        let error = provider
            .create("demo", "t-net", &network())
            .await
            .unwrap_err();
        assert!(error.retryable, "{error:?}");
        assert!(
            error.message.contains("exec plugin \"ref\"")
                && error.message.contains("exited (exit status: 3)")
                && error.message.contains("create request")
                && error.message.contains("crashing on create"),
            "{}",
            error.message
        );
        assert_eq!(provider.pid().await, None);
        assert!(!process_exists(crashed_pid));

        // The next call starts a fresh process; the crashed create left nothing.
        assert_eq!(provider.lookup("t-net").await.unwrap(), None);
        let restarted = provider.pid().await.unwrap();
        assert_ne!(restarted, crashed_pid);
    }

    #[tokio::test]
    async fn a_hang_times_out_kills_the_plugin_and_the_next_call_restarts() {
        let dir = tempfile::tempdir().unwrap();
        let provider = reference(dir.path(), &["--hang-on", "describe"], 1);
        provider.list("demo").await.unwrap();
        let hung_pid = provider.pid().await.unwrap();

        let error = provider.describe("ref-m-1").await.unwrap_err();
        assert!(error.retryable, "{error:?}");
        assert!(
            error.message.contains("exec plugin \"ref\"")
                && error
                    .message
                    .contains("did not answer the describe request within 1 s")
                && error.message.contains("killed it"),
            "{}",
            error.message
        );
        assert!(!process_exists(hung_pid), "the hung plugin still runs");

        assert_eq!(provider.lookup("t-net").await.unwrap(), None);
        assert_ne!(provider.pid().await.unwrap(), hung_pid);
    }

    #[tokio::test]
    async fn garbage_fails_the_call_quoting_the_line() {
        let dir = tempfile::tempdir().unwrap();
        let provider = reference(dir.path(), &["--garbage-on", "lookup"], 10);
        provider.list("demo").await.unwrap();
        let garbage_pid = provider.pid().await.unwrap();

        let error = provider.lookup("t-net").await.unwrap_err();
        assert!(error.retryable, "{error:?}");
        assert!(
            error.message.contains("exec plugin \"ref\"")
                && error.message.contains("lookup request")
                && error
                    .message
                    .contains("\"this is not JSON: garbage for lookup, as asked\""),
            "{}",
            error.message
        );
        assert!(!process_exists(garbage_pid), "the plugin was not killed");

        assert_eq!(provider.list("demo").await.unwrap(), Vec::new());
        assert_ne!(provider.pid().await.unwrap(), garbage_pid);
    }

    #[tokio::test]
    async fn a_program_that_does_not_exist_is_a_retryable_error_naming_it() {
        let provider = ExecProvider::new(
            "ghost",
            ExecPluginConfig {
                command: vec!["/nonexistent/cairn-plugin".into(), "--flag".into()],
                timeout_seconds: 5,
            },
        );
        let error = provider.list("demo").await.unwrap_err();
        assert!(error.retryable, "{error:?}");
        assert!(
            error.message.contains("exec plugin \"ghost\"")
                && error.message.contains("`/nonexistent/cairn-plugin --flag`"),
            "{}",
            error.message
        );
    }

    #[tokio::test]
    async fn a_plugin_without_protocol_version_1_is_a_clear_error() {
        // This plugin answers in version 2, envelope and all.
        let v2 = inline(
            "future",
            "import json, sys\n\
             m = json.loads(sys.stdin.readline())\n\
             print(json.dumps({'v': 2, 'id': m['id'], 'ok': {'name': 'future', 'versions': [2]}}), flush=True)\n\
             sys.stdin.read()",
        );
        let error = v2.list("demo").await.unwrap_err();
        assert!(!error.retryable, "{error:?}");
        assert_eq!(
            error.message,
            "exec plugin \"future\" speaks protocol versions [2], but Cairn speaks only version 1"
        );
        assert_eq!(v2.pid().await, None);

        // This one answers in version 1 but says it speaks only 2 and 3.
        let polite = inline(
            "polite",
            "import json, sys\n\
             m = json.loads(sys.stdin.readline())\n\
             print(json.dumps({'v': 1, 'id': m['id'], 'ok': {'name': 'polite', 'versions': [2, 3]}}), flush=True)\n\
             sys.stdin.read()",
        );
        let error = polite.list("demo").await.unwrap_err();
        assert!(!error.retryable, "{error:?}");
        assert_eq!(
            error.message,
            "exec plugin \"polite\" speaks protocol versions [2, 3], but Cairn speaks only version 1"
        );
    }

    /// A plugin that handshakes properly, then answers every request with
    /// `answer`, a Python expression over the request `m`.
    fn answering(answer: &str) -> ExecProvider {
        inline(
            "liar",
            &format!(
                "import json, sys\n\
                 for line in sys.stdin:\n    \
                     m = json.loads(line)\n    \
                     if m['op'] == 'hello':\n        \
                         print(json.dumps({{'v': 1, 'id': m['id'], 'ok': {{'name': 'liar', 'versions': [1]}}}}), flush=True)\n    \
                     else:\n        \
                         print(json.dumps({answer}), flush=True)\n"
            ),
        )
    }

    #[tokio::test]
    async fn a_wrong_id_or_version_in_an_answer_breaks_the_protocol() {
        let cases = [
            (
                "{'v': 1, 'id': m['id'] + 100, 'ok': []}",
                "instead of",
            ),
            ("{'v': 2, 'id': m['id'], 'ok': []}", "protocol version 2 instead of 1"),
            (
                "{'v': 1, 'id': m['id'], 'ok': [], 'error': {'message': 'both', 'retryable': True}}",
                "exactly one of `ok` and `error`",
            ),
        ];
        for (answer, expected) in cases {
            let provider = answering(answer);
            let error = provider.list("demo").await.unwrap_err();
            assert!(error.retryable, "{answer}: {error:?}");
            assert!(
                error
                    .message
                    .contains("exec plugin \"liar\" broke the protocol answering the list request")
                    && error.message.contains(expected),
                "{answer}: {}",
                error.message
            );
            assert_eq!(
                provider.pid().await,
                None,
                "{answer}: the plugin still runs"
            );
        }
    }

    #[tokio::test]
    async fn plugin_errors_pass_through_and_keep_the_process() {
        let dir = tempfile::tempdir().unwrap();
        let provider = reference(dir.path(), &[], 10);
        provider.list("demo").await.unwrap();
        let pid = provider.pid().await.unwrap();

        // The reference plugin calls a missing subnet retryable: it may come.
        let error = provider
            .create("demo", "t-m0", &machine("workers-0", "nowhere"))
            .await
            .unwrap_err();
        assert_eq!(
            error,
            ProviderError::retryable(
                "exec plugin \"ref\": subnet 'nowhere' of cluster 'demo' does not exist"
            )
        );
        assert_eq!(provider.pid().await, Some(pid));
    }

    #[tokio::test]
    async fn results_for_another_request_are_permanent_and_of_the_wrong_shape_retryable() {
        let resource = |cluster: &str, token: &str| {
            format!(
                "{{'providerId': 'x-1', 'cluster': '{cluster}', 'token': '{token}', \
                 'spec': {{'network': {{'cidr': '10.0.0.0/16', 'region': 'eu-west'}}}}, \
                 'address': None}}"
            )
        };
        let answer = |ok: String| format!("{{'v': 1, 'id': m['id'], 'ok': {ok}}}");
        let cases = [
            (
                answer("{'not': 'a resource'}".into()),
                "create",
                "answered the create request with a result of the wrong shape",
            ),
            (
                answer(resource("demo", "someone-else")),
                "create",
                "answered create (cluster \"demo\", token \"t-net\") with a resource of \
                 cluster \"demo\" and token \"someone-else\"",
            ),
            (
                answer(resource("demo", "someone-else")),
                "lookup",
                "answered lookup \"t-net\" with a resource of token \"someone-else\"",
            ),
            (
                answer(resource("demo", "t-net")),
                "describe",
                "answered describe \"x-2\" with resource \"x-1\"",
            ),
            (
                answer(format!("[{}]", resource("other", "t-net"))),
                "list",
                "answered list \"demo\" with resource \"x-1\" of cluster \"other\"",
            ),
        ];
        for (answer, op, expected) in cases {
            let liar = answering(&answer);
            let error = match op {
                "create" => liar.create("demo", "t-net", &network()).await.unwrap_err(),
                "lookup" => liar.lookup("t-net").await.unwrap_err(),
                "describe" => liar.describe("x-2").await.unwrap_err(),
                _ => liar.list("demo").await.unwrap_err(),
            };
            let wrong_shape = expected.contains("wrong shape");
            assert_eq!(error.retryable, wrong_shape, "{op}: {error:?}");
            assert!(
                error.message.starts_with("exec plugin \"liar\" ")
                    && error.message.contains(expected),
                "{op}: {}",
                error.message
            );
            // A contradicting answer was a valid response, so the process
            // stays; a result of the wrong shape is garbage, so it goes.
            assert_eq!(liar.pid().await.is_some(), !wrong_shape, "{op}");
        }
    }

    #[tokio::test]
    async fn a_cancelled_call_does_not_leave_a_stale_answer_behind() {
        let dir = tempfile::tempdir().unwrap();
        let provider = reference(dir.path(), &["--hang-on", "describe"], 30);
        provider.list("demo").await.unwrap();
        let pid = provider.pid().await.unwrap();

        let cancelled =
            tokio::time::timeout(Duration::from_millis(300), provider.describe("ref-m-1")).await;
        assert!(
            cancelled.is_err(),
            "the describe was answered: {cancelled:?}"
        );

        // Without a fresh process this list would wait 30 s for the hung one.
        let listed = tokio::time::timeout(Duration::from_secs(10), provider.list("demo")).await;
        assert_eq!(listed, Ok(Ok(Vec::new())));
        assert_ne!(provider.pid().await.unwrap(), pid);
        assert!(!process_exists(pid));
    }

    #[tokio::test]
    async fn a_plugin_that_died_between_calls_is_restarted() {
        let dir = tempfile::tempdir().unwrap();
        let provider = reference(dir.path(), &[], 10);
        provider.create("demo", "t-net", &network()).await.unwrap();
        let pid = provider.pid().await.unwrap();

        let killed = std::process::Command::new("kill")
            .args(["-9", &pid.to_string()])
            .status()
            .unwrap();
        assert!(killed.success());
        // Waits until the process is a zombie, so that the provider can see it.
        let stat = format!("/proc/{pid}/stat");
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while !std::fs::read_to_string(&stat).unwrap().contains(") Z ") {
            assert!(std::time::Instant::now() < deadline, "kill -9 did not take");
            std::thread::sleep(Duration::from_millis(10));
        }

        assert!(provider.lookup("t-net").await.unwrap().is_some());
        assert_ne!(provider.pid().await.unwrap(), pid);
    }

    #[test]
    fn config_parses_with_a_default_timeout_and_check_names_the_field() {
        let config: ExecPluginConfig =
            toml::from_str("command = [\"python3\", \"plugin.py\"]").unwrap();
        assert_eq!(
            config,
            ExecPluginConfig {
                command: vec!["python3".into(), "plugin.py".into()],
                timeout_seconds: 30,
            }
        );
        assert_eq!(config.check(), Ok(()));
        let unknown = toml::from_str::<ExecPluginConfig>("command = [\"x\"]\ntimeout = 3");
        assert!(unknown
            .unwrap_err()
            .to_string()
            .contains("unknown field `timeout`"));

        let check = |command: &[&str], timeout_seconds: u64| {
            ExecPluginConfig {
                command: command.iter().map(|word| word.to_string()).collect(),
                timeout_seconds,
            }
            .check()
            .unwrap_err()
        };
        assert!(check(&[], 30).starts_with("command: must name the program"));
        assert!(check(&[" "], 30).starts_with("command[0]: "));
        assert!(check(&["python3", "a\0b"], 30).starts_with("command[1]: "));
        assert!(check(&["python3"], 0).starts_with("timeout_seconds: must be positive"));
    }

    #[test]
    fn messages_look_as_documented() {
        let check = |request: Request, line: &str| {
            assert_eq!(serde_json::to_string(&request).unwrap(), line);
            assert_eq!(serde_json::from_str::<Request>(line).unwrap(), request);
        };
        check(
            Request {
                v: 1,
                id: 1,
                op: Op::Hello {
                    cairn: "0.1.0".into(),
                    versions: vec![1],
                },
            },
            r#"{"v":1,"id":1,"op":"hello","cairn":"0.1.0","versions":[1]}"#,
        );
        check(
            Request {
                v: 1,
                id: 2,
                op: Op::Create {
                    cluster: "demo".into(),
                    token: "t-net".into(),
                    spec: network(),
                },
            },
            r#"{"v":1,"id":2,"op":"create","cluster":"demo","token":"t-net","spec":{"network":{"cidr":"10.0.0.0/16","region":"eu-west"}}}"#,
        );
        check(
            Request {
                v: 1,
                id: 4,
                op: Op::Delete {
                    cluster: "demo".into(),
                    token: "t-del".into(),
                    provider_id: "ref-n-1".into(),
                },
            },
            r#"{"v":1,"id":4,"op":"delete","cluster":"demo","token":"t-del","providerId":"ref-n-1"}"#,
        );
        // Within version 1 fields may be added; both sides ignore what they do
        // not know.
        let newer = r#"{"v":1,"id":3,"op":"lookup","token":"t","hint":"new"}"#;
        assert_eq!(
            serde_json::from_str::<Request>(newer).unwrap().op,
            Op::Lookup { token: "t".into() }
        );

        let error: Response = serde_json::from_str(
            r#"{"v":1,"id":5,"error":{"message":"quota exceeded","retryable":false}}"#,
        )
        .unwrap();
        assert_eq!(
            error.outcome,
            Outcome::Error(PluginError {
                message: "quota exceeded".into(),
                retryable: false,
                token_spent: false,
            })
        );
        let nothing: Response = serde_json::from_str(r#"{"v":1,"id":6,"ok":null}"#).unwrap();
        assert_eq!(nothing.outcome, Outcome::Ok(serde_json::Value::Null));
        assert_eq!(
            serde_json::to_string(&nothing).unwrap(),
            r#"{"v":1,"id":6,"ok":null}"#
        );
    }

    #[test]
    fn quotes_are_cut_at_200_bytes_on_a_character_boundary() {
        assert_eq!(quote(b"short"), "\"short\"");
        let long = "é".repeat(150);
        let quoted = quote(long.as_bytes());
        assert_eq!(quoted, format!("{:?}...", "é".repeat(100)));
    }
}
