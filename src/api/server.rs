//! The HTTP server: accepts connections, serves the API's filter on each with
//! hyper, and reads every HTTP/1 request head a second time below hyper, for
//! the one thing hyper does not tell its service.
//!
//! A request with both `Content-Length` and `Transfer-Encoding` says two
//! things about where its body ends; a proxy in front of the daemon may
//! believe the other one, and the bytes it takes for the next request are
//! then the attacker's (request smuggling). RFC 9112 §6.1 lets a server refuse
//! such a request, and Cairn does. hyper reads the body by
//! `Transfer-Encoding` and drops the `Content-Length` header before any filter
//! sees it, so the finding cannot be a filter's: [`FramingTracker`] follows
//! the bytes of each connection as hyper reads them, [`ApiService`] marks the
//! request whose head had both ([`ConflictingFraming`]), and `strict.rs`
//! answers it with 400 `conflicting_framing`.
//!
//! # Layout
//! - [`serve`]: the accept loop and graceful shutdown (what `warp::serve` did,
//!   with the connection in our hands).
//! - [`FramingTracker`]: pure; follows one connection's request heads and
//!   `Content-Length` bodies and names the request whose head had both.
//! - [`WatchedStream`]: the socket, showing every byte read to the tracker.
//! - [`ApiService`]: the warp service, told of the tracker's verdict.
//!
//! The tracker follows a connection until the first request with a
//! `Transfer-Encoding` (it does not decode chunks): that request is answered
//! with `Connection: close`, so no request follows it on the connection. HTTP
//! clients send known-length bodies with `Content-Length` and keep their
//! connections.

use std::convert::Infallible;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::future::{Either, FutureExt, Map};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use warp::http::{header, HeaderValue, Request};
use warp::reply::Response;

/// The most header lines a request may have: hyper's and the tracker's
/// parser are given the same bound, so neither reads a head the other refuses.
pub const MAX_HEADERS: usize = 100;

/// The largest request head, in bytes. hyper's read buffer is bounded to it
/// (a longer head is 431), and the tracker never holds more. Bodies are read
/// in chunks of at most this size too.
pub const MAX_HEAD_BYTES: usize = 64 * 1024;

/// Serves `service` on every connection `listener` accepts until `shutdown`
/// is cancelled, then waits for the requests in flight to be answered.
pub async fn serve<S>(listener: TcpListener, service: S, shutdown: CancellationToken)
where
    S: tower_service::Service<Request<Incoming>, Response = Response, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _peer)) => stream,
                Err(error) => {
                    accept_failed(error, &shutdown).await;
                    continue;
                }
            },
            () = shutdown.cancelled() => break,
        };
        let framing = Arc::new(ConnectionFraming::default());
        let io = TokioIo::new(WatchedStream {
            stream,
            tracker: FramingTracker::default(),
            framing: framing.clone(),
        });
        let service = ApiService {
            inner: service.clone(),
            framing,
        };
        let mut builder = auto::Builder::new(TokioExecutor::new());
        builder
            .http1()
            .max_headers(MAX_HEADERS)
            .max_buf_size(MAX_HEAD_BYTES);
        let watcher = graceful.watcher();
        tokio::spawn(async move {
            let connection = builder.serve_connection(io, service);
            if let Err(error) = watcher.watch(connection).await {
                // A client that goes away mid-request (an SSE reader that
                // stops reading, a refused body left unsent) is not the
                // daemon's error.
                tracing::debug!(%error, "connection ended with an error");
            }
        });
    }
    drop(listener);
    graceful.shutdown().await;
}

/// What to do when `accept` fails: a failed handshake is the peer's
/// business; anything else (out of file descriptors) is logged and waited
/// out, as hyper's own accept loop did, so the loop does not spin.
async fn accept_failed(error: io::Error, shutdown: &CancellationToken) {
    if matches!(
        error.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
    ) {
        return;
    }
    tracing::error!(%error, "accepting a connection failed; retrying in 1 s");
    tokio::select! {
        () = tokio::time::sleep(Duration::from_secs(1)) => {}
        () = shutdown.cancelled() => {}
    }
}

/// One connection's findings, shared by its stream (which reads the heads)
/// and its service (which answers the requests, in the same order).
#[derive(Debug, Default)]
struct ConnectionFraming {
    /// One more than the index of the request whose head had both
    /// `Content-Length` and `Transfer-Encoding`; 0 while there is none.
    conflicting_request: AtomicU64,
    /// Requests the service has been called for.
    requests: AtomicU64,
}

/// Follows the request heads of one HTTP/1 connection, byte for byte as
/// hyper reads them: each head is parsed with httparse (hyper's parser, with
/// its bounds), a `Content-Length` body is skipped, and the next head starts
/// after it. It stops following at a `Transfer-Encoding` (the request is
/// answered with `Connection: close`), at anything it cannot parse (hyper
/// refuses it and closes), and at a connection that is not HTTP/1.
#[derive(Debug, Default)]
pub struct FramingTracker {
    state: TrackerState,
    /// The part of a head that has arrived; empty between heads.
    partial_head: Vec<u8>,
    /// Heads read completely so far.
    heads: u64,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum TrackerState {
    #[default]
    Head,
    Body {
        remaining: u64,
    },
    Stopped,
}

/// What one complete head says about the bytes after it.
enum HeadFraming {
    NoBody,
    Length(u64),
    /// Both `Content-Length` and `Transfer-Encoding`.
    Conflicting,
    /// Chunked, or a head hyper will refuse: not followed further.
    Unfollowed,
}

impl FramingTracker {
    /// Takes the next bytes read from the connection. Returns the index
    /// (from 0, in arrival order) of a request whose head had both
    /// `Content-Length` and `Transfer-Encoding`, if these bytes completed one.
    pub fn observe(&mut self, mut bytes: &[u8]) -> Option<u64> {
        loop {
            match self.state {
                TrackerState::Stopped => return None,
                TrackerState::Body { remaining } => {
                    let skipped = remaining.min(bytes.len() as u64);
                    bytes = &bytes[skipped as usize..];
                    self.state = if skipped == remaining {
                        TrackerState::Head
                    } else {
                        TrackerState::Body {
                            remaining: remaining - skipped,
                        }
                    };
                    if bytes.is_empty() {
                        return None;
                    }
                }
                TrackerState::Head => {
                    if bytes.is_empty() {
                        return None;
                    }
                    let (framing, consumed) = self.read_head(bytes)?;
                    bytes = &bytes[consumed..];
                    let index = self.heads;
                    self.heads += 1;
                    match framing {
                        HeadFraming::NoBody => {}
                        HeadFraming::Length(length) => {
                            self.state = TrackerState::Body { remaining: length };
                        }
                        HeadFraming::Conflicting => {
                            self.state = TrackerState::Stopped;
                            return Some(index);
                        }
                        HeadFraming::Unfollowed => {
                            self.state = TrackerState::Stopped;
                            return None;
                        }
                    }
                }
            }
        }
    }

    /// Reads a head from the partial head and `bytes`. Returns what it says
    /// and how many of `bytes` it took, or `None` when the head is not
    /// complete yet (the bytes are kept) or the tracker stopped.
    fn read_head(&mut self, bytes: &[u8]) -> Option<(HeadFraming, usize)> {
        if self.partial_head.is_empty() {
            // The common case: a whole head in one read, parsed in place.
            match parse_head(bytes) {
                Parsed::Complete(framing, length) => return Some((framing, length)),
                Parsed::Partial => {}
                Parsed::Refused => {
                    self.state = TrackerState::Stopped;
                    return None;
                }
            }
        }
        let before = self.partial_head.len();
        let room = MAX_HEAD_BYTES.saturating_sub(before);
        self.partial_head
            .extend_from_slice(&bytes[..bytes.len().min(room)]);
        match parse_head(&self.partial_head) {
            Parsed::Complete(framing, length) => {
                self.partial_head.clear();
                Some((framing, length - before))
            }
            Parsed::Partial if self.partial_head.len() < MAX_HEAD_BYTES => None,
            // Longer than hyper reads: hyper refuses it.
            Parsed::Partial | Parsed::Refused => {
                self.partial_head = Vec::new();
                self.state = TrackerState::Stopped;
                None
            }
        }
    }
}

enum Parsed {
    Complete(HeadFraming, usize),
    Partial,
    Refused,
}

fn parse_head(bytes: &[u8]) -> Parsed {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut request = httparse::Request::new(&mut headers);
    let length = match request.parse(bytes) {
        Ok(httparse::Status::Complete(length)) => length,
        Ok(httparse::Status::Partial) => return Parsed::Partial,
        Err(_) => return Parsed::Refused,
    };
    let mut content_lengths = request
        .headers
        .iter()
        .filter(|h| h.name.eq_ignore_ascii_case("content-length"));
    let has_transfer_encoding = request
        .headers
        .iter()
        .any(|h| h.name.eq_ignore_ascii_case("transfer-encoding"));
    let first_length = content_lengths.next();
    let framing = match (first_length, has_transfer_encoding) {
        (Some(_), true) => HeadFraming::Conflicting,
        (None, true) => HeadFraming::Unfollowed,
        (None, false) => HeadFraming::NoBody,
        // Given twice, it is refused by api/strict.rs with `Connection: close`.
        (Some(_), false) if content_lengths.next().is_some() => HeadFraming::Unfollowed,
        (Some(value), false) => match parse_digits(value.value) {
            Some(length) => HeadFraming::Length(length),
            None => HeadFraming::Unfollowed,
        },
    };
    Parsed::Complete(framing, length)
}

/// A `Content-Length` value as hyper reads it: ASCII digits only.
fn parse_digits(value: &[u8]) -> Option<u64> {
    if value.is_empty() || !value.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(value).ok()?.parse().ok()
}

/// A connection's socket that shows every byte read to its tracker.
struct WatchedStream {
    stream: TcpStream,
    tracker: FramingTracker,
    framing: Arc<ConnectionFraming>,
}

impl AsyncRead for WatchedStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        context: &mut Context<'_>,
        buffer: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let before = buffer.filled().len();
        let poll = Pin::new(&mut this.stream).poll_read(context, buffer);
        if let Poll::Ready(Ok(())) = poll {
            if let Some(index) = this.tracker.observe(&buffer.filled()[before..]) {
                this.framing
                    .conflicting_request
                    .store(index + 1, Ordering::Release);
            }
        }
        poll
    }
}

impl AsyncWrite for WatchedStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        context: &mut Context<'_>,
        bytes: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(context, bytes)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        context: &mut Context<'_>,
        buffers: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(context, buffers)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, context: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(context)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, context: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(context)
    }
}

/// Marks a request whose head had both `Content-Length` and
/// `Transfer-Encoding`; `strict.rs` refuses it before any route, so that it
/// is answered, logged and counted as every other refusal is.
#[derive(Debug, Clone, Copy)]
pub struct ConflictingFraming;

/// The API's warp service, told of the connection's framing verdict.
#[derive(Clone)]
struct ApiService<S> {
    inner: S,
    framing: Arc<ConnectionFraming>,
}

type Answer = Result<Response, Infallible>;

impl<S> hyper::service::Service<Request<Incoming>> for ApiService<S>
where
    S: tower_service::Service<Request<Incoming>, Response = Response, Error = Infallible> + Clone,
{
    type Response = Response;
    type Error = Infallible;
    type Future = Either<Map<S::Future, fn(Answer) -> Answer>, S::Future>;

    fn call(&self, mut request: Request<Incoming>) -> Self::Future {
        let index = self.framing.requests.fetch_add(1, Ordering::AcqRel);
        if self.framing.conflicting_request.load(Ordering::Acquire) == index + 1 {
            request.extensions_mut().insert(ConflictingFraming);
        }
        let chunked = request.headers().contains_key(header::TRANSFER_ENCODING);
        // tower's `call` takes `&mut self`; warp's service is a handle to
        // shared filters, cloned per request as hyper-util's adapter does.
        let answer = self.inner.clone().call(request);
        if chunked {
            // The tracker no longer follows this connection: no request may
            // come after this one.
            Either::Left(answer.map(close_connection as fn(Answer) -> Answer))
        } else {
            Either::Right(answer)
        }
    }
}

fn close_connection(answer: Answer) -> Answer {
    let mut response = answer?;
    response
        .headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    Ok(response)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn observe_all(tracker: &mut FramingTracker, bytes: &[u8], chunk: usize) -> Vec<u64> {
        bytes
            .chunks(chunk.max(1))
            .filter_map(|piece| tracker.observe(piece))
            .collect()
    }

    /// Every split of the stream into reads gives the same verdict.
    fn verdicts(bytes: &[u8]) -> Vec<u64> {
        let whole = observe_all(&mut FramingTracker::default(), bytes, bytes.len());
        for chunk in [1, 2, 3, 7, 16, 100] {
            assert_eq!(
                observe_all(&mut FramingTracker::default(), bytes, chunk),
                whole,
                "reads of {chunk} bytes"
            );
        }
        whole
    }

    const GET: &str = "GET /healthz HTTP/1.1\r\nHost: a\r\n\r\n";

    #[test]
    fn a_head_with_both_lengths_is_named_by_its_index() {
        let both = "POST /v1/apply HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\
                    Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n";
        assert_eq!(verdicts(both.as_bytes()), vec![0]);
        let reversed = "POST /v1/apply HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\
                        content-length: 5\r\n\r\n0\r\n\r\n";
        assert_eq!(verdicts(reversed.as_bytes()), vec![0]);
    }

    #[test]
    fn bodies_of_known_length_are_skipped_to_the_next_head() {
        // The first body looks like a head with both headers: it must be
        // skipped as a body, not read as a request.
        let body = "GET / HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n";
        let stream = format!(
            "POST /v1/apply HTTP/1.1\r\nContent-Length: {}\r\n\r\n{body}{GET}\
             POST /x HTTP/1.1\r\nContent-Length: 0\r\nTransfer-Encoding: chunked\r\n\r\n",
            body.len()
        );
        assert_eq!(verdicts(stream.as_bytes()), vec![2]);
    }

    #[test]
    fn a_chunked_request_ends_the_tracking() {
        let stream = format!(
            "POST /v1/apply HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n\
             5\r\nhello\r\n0\r\n\r\n{GET}"
        );
        let mut tracker = FramingTracker::default();
        assert_eq!(tracker.observe(stream.as_bytes()), None);
        assert_eq!(tracker.state, TrackerState::Stopped);
    }

    #[test]
    fn requests_without_bodies_follow_one_another() {
        let stream = GET.repeat(5);
        let mut tracker = FramingTracker::default();
        assert!(observe_all(&mut tracker, stream.as_bytes(), 9).is_empty());
        assert_eq!(tracker.heads, 5);
        assert_eq!(tracker.state, TrackerState::Head);
        assert!(tracker.partial_head.is_empty());
    }

    #[test]
    fn what_hyper_refuses_stops_the_tracking() {
        for stream in [
            // Not HTTP/1: the HTTP/2 preface.
            "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_string(),
            // A length hyper does not read.
            "POST / HTTP/1.1\r\nContent-Length: +5\r\n\r\n".to_string(),
            // Too many header lines.
            format!(
                "GET / HTTP/1.1\r\n{}\r\n",
                "X: y\r\n".repeat(MAX_HEADERS + 1)
            ),
        ] {
            let mut tracker = FramingTracker::default();
            assert_eq!(tracker.observe(stream.as_bytes()), None, "{stream:?}");
            assert_eq!(tracker.state, TrackerState::Stopped, "{stream:?}");
        }
    }

    #[test]
    fn a_head_longer_than_hyper_reads_is_not_held() {
        let mut tracker = FramingTracker::default();
        let line = format!("X-Padding: {}\r\n", "p".repeat(1000));
        assert_eq!(tracker.observe(b"GET / HTTP/1.1\r\n"), None);
        for _ in 0..(MAX_HEAD_BYTES / line.len() + 2) {
            assert_eq!(tracker.observe(line.as_bytes()), None);
        }
        assert_eq!(tracker.state, TrackerState::Stopped);
        assert_eq!(tracker.partial_head.capacity(), 0);
    }
}
