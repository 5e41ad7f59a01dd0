//! The HTTP client the CLI uses to reach a daemon.

use std::io::Write;
use std::time::Duration;

use serde::de::DeserializeOwned;

use crate::wire::Problem;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot reach the Cairn daemon at {server}: {reason}\nIs `cairn serve` running? Point --server or CAIRN_SERVER at it.")]
    Unreachable { server: String, reason: String },
    #[error("{}", render_problem(.problem))]
    Refused { problem: Box<Problem> },
    #[error("unexpected answer from {server} (HTTP {status}): {body}")]
    Unexpected {
        server: String,
        status: u16,
        body: String,
    },
    #[error("bad --server URL {0:?}: it must start with http:// (the CLI does not speak TLS yet)")]
    BadServer(String),
    #[error(
        "the daemon at {server} did not answer within 60 s (it may still carry out the request)"
    )]
    TimedOut { server: String },
    #[error("the download from {server} broke off after {bytes} bytes, the output is incomplete: {reason}")]
    BrokenOff {
        server: String,
        bytes: u64,
        reason: String,
    },
    #[error("cannot write the output: {0}")]
    Output(std::io::Error),
}

impl ClientError {
    /// Whether the same request may succeed if tried again later: the daemon
    /// was unreachable, timed out, or said so.
    pub fn is_retryable(&self) -> bool {
        match self {
            ClientError::Unreachable { .. } | ClientError::TimedOut { .. } => true,
            ClientError::Refused { problem } => problem.retryable || problem.status >= 500,
            ClientError::Unexpected { status, .. } => *status >= 500,
            ClientError::BrokenOff { .. } => true,
            ClientError::BadServer(_) | ClientError::Output(_) => false,
        }
    }
}

fn render_problem(problem: &Problem) -> String {
    let mut text = format!(
        "the daemon refused: {} ({}, HTTP {})",
        problem.title, problem.code, problem.status
    );
    if problem.errors.is_empty() {
        text.push_str(&format!(": {}", problem.detail));
    } else {
        // The detail only summarizes the list.
        for error in &problem.errors {
            text.push_str(&format!("\n  {error}"));
        }
    }
    if let Some(version) = problem.current_version {
        text.push_str(&format!("\n  the cluster is at version {version}"));
    }
    text
}

/// How long a stream may stay silent before the client gives up on the
/// connection (and `events --follow` reconnects). The daemon sends a heartbeat
/// every 15 s by default (`[api] watch_heartbeat_ms`).
const STREAM_READ_TIMEOUT: Duration = Duration::from_secs(60);

/// What `Client::download` wrote.
pub struct Download {
    pub bytes: u64,
    /// The daemon's `X-Cairn-Head-Seq`: the last seq of an export.
    pub head_seq: Option<u64>,
}

pub struct Client {
    http: reqwest::Client,
    /// For long-lived responses (`events --follow`): no total timeout, but a
    /// read that waits longer than `STREAM_READ_TIMEOUT` fails.
    streaming: reqwest::Client,
    server: String,
    token: Option<String>,
}

impl Client {
    pub fn new(server: &str, token: Option<String>) -> Result<Client, ClientError> {
        if !server.starts_with("http://") {
            return Err(ClientError::BadServer(server.to_string()));
        }
        let build = |builder: reqwest::ClientBuilder| {
            // A proxy from the environment cannot reach this machine's loopback.
            let builder = if is_loopback_url(server) {
                builder.no_proxy()
            } else {
                builder
            };
            builder.build().map_err(|error| ClientError::Unreachable {
                server: server.to_string(),
                reason: error.to_string(),
            })
        };
        let http = build(reqwest::Client::builder().timeout(Duration::from_secs(60)))?;
        let streaming = build(
            reqwest::Client::builder()
                .connect_timeout(Duration::from_secs(10))
                .read_timeout(STREAM_READ_TIMEOUT),
        )?;
        Ok(Client {
            http,
            streaming,
            server: server.trim_end_matches('/').to_string(),
            token,
        })
    }

    pub async fn get<T: DeserializeOwned>(
        &self,
        path: &str,
        query: &[(&str, String)],
    ) -> Result<T, ClientError> {
        let request = self.http.get(format!("{}{path}", self.server)).query(query);
        self.send(request).await
    }

    pub async fn post<T: DeserializeOwned>(
        &self,
        path: &str,
        query: &[(&str, String)],
        headers: &[(&str, String)],
        body: Vec<u8>,
    ) -> Result<T, ClientError> {
        let mut request = self
            .http
            .post(format!("{}{path}", self.server))
            .query(query)
            .body(body);
        for (name, value) in headers {
            request = request.header(*name, value);
        }
        self.send(request).await
    }

    pub async fn delete<T: DeserializeOwned>(
        &self,
        path: &str,
        headers: &[(&str, String)],
    ) -> Result<T, ClientError> {
        let mut request = self.http.delete(format!("{}{path}", self.server));
        for (name, value) in headers {
            request = request.header(*name, value);
        }
        self.send(request).await
    }

    /// Opens `GET path` as an event stream, resuming after `last_event_id`,
    /// and returns the response once its status is a success, for the caller
    /// to read with `Response::chunk`.
    pub async fn open_stream(
        &self,
        path: &str,
        query: &[(&str, String)],
        last_event_id: Option<&str>,
    ) -> Result<reqwest::Response, ClientError> {
        let mut request = self
            .streaming
            .get(format!("{}{path}", self.server))
            .query(query)
            .header("accept", "text/event-stream");
        if let Some(id) = last_event_id {
            request = request.header("last-event-id", id);
        }
        let response = self
            .authorize(request)
            .send()
            .await
            .map_err(|error| self.send_error(&error))?;
        if response.status().is_success() {
            return Ok(response);
        }
        let status = response.status();
        let body = response
            .bytes()
            .await
            .map_err(|error| self.send_error(&error))?;
        Err(self.refusal(status, &body))
    }

    /// Streams the body of `GET path` into `out` chunk by chunk, never holding
    /// more than one chunk in memory.
    pub async fn download(&self, path: &str, out: &mut dyn Write) -> Result<Download, ClientError> {
        let request = self.authorize(self.streaming.get(format!("{}{path}", self.server)));
        let mut response = request
            .send()
            .await
            .map_err(|error| self.send_error(&error))?;
        let status = response.status();
        if !status.is_success() {
            let body = response
                .bytes()
                .await
                .map_err(|error| self.send_error(&error))?;
            return Err(self.refusal(status, &body));
        }
        let head_seq = response
            .headers()
            .get("x-cairn-head-seq")
            .and_then(|value| value.to_str().ok())
            .and_then(|text| text.parse().ok());
        let mut written = 0u64;
        loop {
            match response.chunk().await {
                Ok(Some(chunk)) => {
                    out.write_all(&chunk).map_err(ClientError::Output)?;
                    written += chunk.len() as u64;
                }
                Ok(None) => break,
                Err(error) => {
                    return Err(ClientError::BrokenOff {
                        server: self.server.clone(),
                        bytes: written,
                        reason: error_chain(&error),
                    })
                }
            }
        }
        out.flush().map_err(ClientError::Output)?;
        Ok(Download {
            bytes: written,
            head_seq,
        })
    }

    pub fn send_error(&self, error: &reqwest::Error) -> ClientError {
        if error.is_timeout() {
            ClientError::TimedOut {
                server: self.server.clone(),
            }
        } else {
            ClientError::Unreachable {
                server: self.server.clone(),
                reason: error_chain(error),
            }
        }
    }

    fn authorize(&self, request: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        if let Some(token) = &self.token {
            request.bearer_auth(token)
        } else if let Ok(user) = std::env::var("USER") {
            // Without tokens the daemon records this name as the actor.
            request.header("x-cairn-actor", user)
        } else {
            request
        }
    }

    async fn send<T: DeserializeOwned>(
        &self,
        request: reqwest::RequestBuilder,
    ) -> Result<T, ClientError> {
        let response = self
            .authorize(request)
            .send()
            .await
            .map_err(|error| self.send_error(&error))?;
        let status = response.status();
        let body = response
            .bytes()
            .await
            .map_err(|error| self.send_error(&error))?;
        if status.is_success() {
            return serde_json::from_slice(&body).map_err(|error| ClientError::Unexpected {
                server: self.server.clone(),
                status: status.as_u16(),
                body: format!("{error}: {}", String::from_utf8_lossy(&body)),
            });
        }
        Err(self.refusal(status, &body))
    }

    /// The error for a response that is not a success.
    fn refusal(&self, status: reqwest::StatusCode, body: &[u8]) -> ClientError {
        match serde_json::from_slice::<Problem>(body) {
            Ok(problem) => ClientError::Refused {
                problem: Box::new(problem),
            },
            Err(_) => ClientError::Unexpected {
                server: self.server.clone(),
                status: status.as_u16(),
                body: String::from_utf8_lossy(body).into_owned(),
            },
        }
    }
}

/// Whether an `http://host[:port]/...` URL points at this machine's loopback.
fn is_loopback_url(server: &str) -> bool {
    let rest = server.trim_start_matches("http://");
    crate::config::is_loopback_host(rest.split('/').next().unwrap_or(""))
}

/// An error with its causes, e.g. "error sending request: connection refused".
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
