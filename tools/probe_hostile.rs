//! Hostile clients against the release daemon: the figures of issue 21.
//!
//! Run: `cargo bench --bench hostile` (about 20 s). It starts the real `cairn`
//! binary (`serve`, reconcilers off, one generic webhook receiver, default
//! limits) on 127.0.0.1:0 with a temporary data directory, and prints:
//!
//! 1. **Worst bodies.** `POST /v1/apply` with 1 MiB bodies built to be slow to
//!    parse: YAML of nested flow mappings (`{a: {a: ...`, quadratic in
//!    libyaml), a YAML flow list and a block mapping of a million bytes, and
//!    the same shapes in JSON. Each is sent 5 times over a new connection; the
//!    figure is the slowest, from the first byte sent to the last byte of the
//!    answer, with the answer's status. Goal: each refused within 50 ms.
//! 2. **`/healthz` while 100 of them arrive at once.** 100 threads post the
//!    bodies above (in turn) at the same moment; meanwhile `GET /healthz` is
//!    sent over and over, one connection each. Three times: the senders at the
//!    daemon's priority, then at nice 10, then in Linux's idle scheduling
//!    class (`SCHED_IDLE`), which runs them only on a core nothing else
//!    wants: the nearest one machine comes to remote clients, whose own CPU is
//!    not on the daemon's cores (the loopback's kernel work still is). Goal:
//!    p99 and max under 10 ms.
//! 3. **Stalled webhooks.** 150 connections post to the receiver with a
//!    well-formed signature header, announce 1 MiB − 1 and send 3 bytes. The
//!    daemon's VmRSS is read before and 1 s after they are open; then the
//!    time each connection takes to be closed by the daemon, and the status it
//!    got. Goal: growth under 20 MB, every one closed within the read timeout
//!    (`[api] webhook_body_timeout_ms`, 10 s by default).
//!
//! Everything runs on this machine's cores together with the daemon: the
//! figures are what it serves with the load generator on it.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const CAIRN_BINARY: &str = env!("CARGO_BIN_EXE_cairn");
const MIB: usize = 1024 * 1024;

fn main() {
    let directory = tempfile::tempdir().expect("a temporary directory");
    let config = directory.path().join("cairn.toml");
    std::fs::write(
        &config,
        "[reconcile]\nenabled = false\n\n[hooks.deploys]\ntype = \"generic\"\n\
         secret = \"probe-secret-0123456789\"\n",
    )
    .expect("the config file");
    let mut daemon = Command::new(CAIRN_BINARY)
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(directory.path().join("data"))
        .arg("--config")
        .arg(&config)
        .env("CAIRN_LOG", "error")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("the cairn binary starts");
    let mut stdout = BufReader::new(daemon.stdout.take().expect("piped stdout"));
    let mut line = String::new();
    stdout
        .read_line(&mut line)
        .expect("the daemon's first line");
    std::thread::spawn(move || std::io::copy(&mut stdout, &mut std::io::sink()));
    let address = line
        .trim()
        .strip_prefix("cairn listening on http://")
        .unwrap_or_else(|| panic!("unexpected first line: {line:?}"))
        .to_string();
    let pid = daemon.id();
    let started = Instant::now();
    while request(&address, &get("/readyz")).0 != 200 {
        assert!(started.elapsed() < Duration::from_secs(60), "never ready");
        std::thread::sleep(Duration::from_millis(10));
    }
    println!("# hostile clients against {address} (pid {pid})\n");

    let bodies = worst_bodies();
    println!("## 1. Worst 1 MiB bodies, POST /v1/apply, slowest of 5\n");
    println!("| body | bytes | status | slowest ms |");
    println!("|---|---|---|---|");
    for (name, content_type, body) in &bodies {
        let mut slowest = Duration::ZERO;
        let mut status = 0;
        for _ in 0..5 {
            let (answer, took) = request(&address, &post("/v1/apply", content_type, body));
            status = answer;
            slowest = slowest.max(took);
        }
        println!(
            "| {name} | {} | {status} | {:.1} |",
            body.len(),
            ms(slowest)
        );
    }

    println!("\n## 2. GET /healthz while 100 of those bodies arrive at once\n");
    // The senders at the daemon's priority, then lower and lower, towards
    // remote clients (whose threads would not run on the daemon's cores).
    for priority in [
        SenderPriority::Nice(0),
        SenderPriority::Nice(10),
        SenderPriority::IdleClass,
    ] {
        healthz_under_bodies(&address, &bodies, priority);
    }

    println!("\n## 3. 150 stalled webhook deliveries\n");
    let rss_before = rss_kib(pid);
    let signature = format!("t={},v1={}", unix_now(), "0".repeat(64));
    let opened = Instant::now();
    let stalled: Vec<TcpStream> = (0..150)
        .map(|_| {
            let mut connection = TcpStream::connect(&address).expect("a connection");
            let head = format!(
                "POST /v1/hooks/deploys HTTP/1.1\r\nHost: 127.0.0.1\r\n\
                 Content-Type: application/json\r\nX-Cairn-Signature: {signature}\r\n\
                 Content-Length: {}\r\n\r\n{{\"i",
                MIB - 1
            );
            connection.write_all(head.as_bytes()).expect("the head");
            connection
        })
        .collect();
    std::thread::sleep(Duration::from_secs(1));
    let rss_during = rss_kib(pid);
    let waiters: Vec<_> = stalled
        .into_iter()
        .map(|mut connection| {
            std::thread::spawn(move || {
                connection
                    .set_read_timeout(Some(Duration::from_secs(60)))
                    .expect("a read timeout");
                let mut answer = Vec::new();
                let _ = connection.read_to_end(&mut answer);
                (status_of(&answer), opened.elapsed())
            })
        })
        .collect();
    let mut closes = std::collections::BTreeMap::new();
    let mut last_close = Duration::ZERO;
    for waiter in waiters {
        let (status, closed_after) = waiter.join().expect("a waiter");
        *closes.entry(status).or_insert(0) += 1;
        last_close = last_close.max(closed_after);
    }
    println!(
        "VmRSS {:.1} MB before, {:.1} MB with 150 open: growth {:.1} MB; answers {closes:?}; the last closed {:.2} s after they were opened",
        rss_before as f64 * 1024.0 / 1e6,
        rss_during as f64 * 1024.0 / 1e6,
        (rss_during as f64 - rss_before as f64) * 1024.0 / 1e6,
        last_close.as_secs_f64()
    );
    let _ = daemon.kill();
    let _ = daemon.wait();
}

/// How the 100 senders of part 2 are scheduled beside the daemon.
#[derive(Clone, Copy, Debug)]
enum SenderPriority {
    /// The normal class at this nice value (0 is the daemon's own).
    Nice(i32),
    /// `SCHED_IDLE`: run only when a core has nothing else to run.
    IdleClass,
}

impl SenderPriority {
    /// Applies this priority to the calling thread. Lowering a thread's
    /// priority needs no privilege; a failure is reported, not ignored, since
    /// the figure would then be of another setting.
    fn apply_to_this_thread(self) {
        // SAFETY: plain syscalls on this thread's own id; `parameters` lives
        // across the call that reads it.
        let result = unsafe {
            let thread = libc::syscall(libc::SYS_gettid) as libc::pid_t;
            match self {
                SenderPriority::Nice(niceness) => {
                    libc::setpriority(libc::PRIO_PROCESS, thread as libc::id_t, niceness)
                }
                SenderPriority::IdleClass => {
                    let parameters = libc::sched_param { sched_priority: 0 };
                    libc::sched_setscheduler(thread, libc::SCHED_IDLE, &parameters)
                }
            }
        };
        assert_eq!(
            result,
            0,
            "setting {self:?}: {}",
            std::io::Error::last_os_error()
        );
    }
}

impl std::fmt::Display for SenderPriority {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SenderPriority::Nice(niceness) => write!(formatter, "at nice {niceness}"),
            SenderPriority::IdleClass => write!(formatter, "in SCHED_IDLE"),
        }
    }
}

/// `GET /healthz` over and over while 100 threads, scheduled at `priority`,
/// each send one of `bodies` at the same moment; prints the latencies.
fn healthz_under_bodies(
    address: &str,
    bodies: &[(String, String, Vec<u8>)],
    priority: SenderPriority,
) {
    let barrier = std::sync::Arc::new(std::sync::Barrier::new(101));
    let senders: Vec<_> = (0..100)
        .map(|index| {
            let (_, content_type, body) = bodies[index % bodies.len()].clone();
            let address = address.to_string();
            let barrier = barrier.clone();
            std::thread::spawn(move || {
                priority.apply_to_this_thread();
                let request_bytes = post("/v1/apply", &content_type, &body);
                barrier.wait();
                request(&address, &request_bytes)
            })
        })
        .collect();
    barrier.wait();
    let mut health = Vec::new();
    while senders.iter().any(|sender| !sender.is_finished()) {
        let (status, took) = request(address, &get("/healthz"));
        assert_eq!(status, 200, "/healthz");
        health.push(took);
    }
    let mut statuses = std::collections::BTreeMap::new();
    let mut slowest_body = Duration::ZERO;
    for sender in senders {
        let (status, took) = sender.join().expect("a sender");
        *statuses.entry(status).or_insert(0) += 1;
        slowest_body = slowest_body.max(took);
    }
    health.sort();
    let over_10_ms = health
        .iter()
        .filter(|took| **took > Duration::from_millis(10))
        .count();
    println!(
        "senders {priority}: /healthz {} requests, p50 {:.2} ms, p99 {:.2} ms, p99.9 {:.2} ms, max {:.2} ms, {over_10_ms} over 10 ms; the 100 bodies: statuses {statuses:?}, the last answered after {:.1} ms",
        health.len(),
        ms(percentile(&health, 0.50)),
        ms(percentile(&health, 0.99)),
        ms(percentile(&health, 0.999)),
        ms(*health.last().expect("at least one /healthz")),
        ms(slowest_body)
    );
}

/// The bodies, as (name, content type, bytes): each about 1 MiB.
fn worst_bodies() -> Vec<(String, String, Vec<u8>)> {
    let fill = |head: &str, unit: &str, tail: &str| {
        let mut text = String::from(head);
        while text.len() + unit.len() + tail.len() < MIB {
            text.push_str(unit);
        }
        text.push_str(tail);
        text.into_bytes()
    };
    let nested = |open: &str, close: &str| {
        let depth = MIB / (open.len() + close.len() + 1);
        format!("{}1{}", open.repeat(depth), close.repeat(depth)).into_bytes()
    };
    let yaml = "application/yaml".to_string();
    let json = "application/json".to_string();
    vec![
        (
            "YAML nested flow mappings".into(),
            yaml.clone(),
            nested("{a: ", "}"),
        ),
        (
            "YAML flow list".into(),
            yaml.clone(),
            fill("a: [", "1,", "1]"),
        ),
        ("YAML block mapping".into(), yaml, {
            let mut text = String::new();
            let mut index = 0;
            while text.len() < MIB - 32 {
                text.push_str(&format!("k{index}: 1\n"));
                index += 1;
            }
            text.into_bytes()
        }),
        ("JSON nested arrays".into(), json.clone(), nested("[", "]")),
        (
            "JSON flat list".into(),
            json.clone(),
            fill("{\"a\": [", "1,", "1]}"),
        ),
        ("JSON object of keys".into(), json, {
            let mut text = String::from("{");
            let mut index = 0;
            while text.len() < MIB - 32 {
                text.push_str(&format!("\"k{index}\": 1,"));
                index += 1;
            }
            text.push_str("\"end\": 1}");
            text.into_bytes()
        }),
    ]
}

fn get(path: &str) -> Vec<u8> {
    format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n").into_bytes()
}

fn post(path: &str, content_type: &str, body: &[u8]) -> Vec<u8> {
    let mut bytes = format!(
        "POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: {content_type}\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    bytes.extend_from_slice(body);
    bytes
}

/// Sends `bytes` over a new connection; the answer's status and the time
/// from the first byte sent to the end of the answer.
fn request(address: &str, bytes: &[u8]) -> (u16, Duration) {
    let began = Instant::now();
    let mut connection = TcpStream::connect(address).expect("a connection");
    // The daemon may answer and close before the whole body is sent.
    let _ = connection.write_all(bytes);
    let mut answer = Vec::new();
    let _ = connection.read_to_end(&mut answer);
    (status_of(&answer), began.elapsed())
}

fn status_of(answer: &[u8]) -> u16 {
    String::from_utf8_lossy(answer)
        .split_whitespace()
        .nth(1)
        .and_then(|status| status.parse().ok())
        .unwrap_or(0)
}

fn percentile(sorted: &[Duration], fraction: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * fraction).round() as usize]
}

fn ms(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1000.0
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("after 1970")
        .as_secs()
}
