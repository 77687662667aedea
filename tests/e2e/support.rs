//! Shared test harness: the binary under test, bounded waits, unique names.

#![allow(dead_code)]

use std::path::PathBuf;
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// Path of the `chaos` binary cargo built for these tests.
pub fn chaos_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_chaos"))
}

/// Runs `chaos ARGS` to completion and returns its output.
pub fn chaos(args: &[&str]) -> Output {
    Command::new(chaos_bin()).args(args).output().expect("spawn chaos binary")
}

/// Repository root (for `experiments/`, fixtures).
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A name unique to this test process and call, short enough for
/// interface names (15 chars): `prefix` should be at most 5 characters.
pub fn unique_name(prefix: &str) -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    format!("{prefix}{:x}{n:x}", std::process::id() % 0xfffff)
}

/// Polls `check` until it returns `Some` or `timeout` passes.
pub fn eventually<T>(
    timeout: Duration,
    mut check: impl FnMut() -> Option<T>,
) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = check() {
            return Some(v);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// True when running under CI, where a missing capability must fail a
/// test instead of skipping it.
pub fn in_ci() -> bool {
    std::env::var("CI").map(|v| v == "true" || v == "1").unwrap_or(false)
}

/// Reports a missing capability loudly. Under CI this panics (the test
/// fails); locally it prints a SKIPPED line that shows up in the log.
pub fn require_capability(ok: bool, what: &str) -> bool {
    if ok {
        return true;
    }
    if in_ci() {
        panic!("required capability missing in CI: {what}");
    }
    eprintln!("SKIPPED (capability missing): {what}");
    false
}

/// Serializes the heaviest end-to-end tests (demo fleets with load, the
/// 20,000-request proxy runs, rate measurements). On a 2-core CI machine
/// running them at the same time starves the timing they measure; every
/// other test still runs in parallel with them.
pub fn heavy() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// A loopback port that refuses connections for as long as this value
/// lives. A socket is bound to it but never listens: connects get
/// ECONNREFUSED, and no parallel test can bind the port in the meantime
/// (a port merely "bound then released" can be taken by another test's
/// listener, which turned a "refused" into a "reset" in CI once).
pub struct ClosedPort {
    _socket: tokio::net::TcpSocket,
    pub port: u16,
}

impl ClosedPort {
    pub fn new() -> ClosedPort {
        let socket = tokio::net::TcpSocket::new_v4().expect("tcp socket");
        socket.bind("127.0.0.1:0".parse().expect("addr")).expect("bind 127.0.0.1:0");
        let port = socket.local_addr().expect("local addr").port();
        ClosedPort { _socket: socket, port }
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

/// An edge-mode proxy config on a loopback port with one upstream
/// (`http://…`, `https://…` or `h2c://…`), cohorts drawn by `key` with
/// seed 0, no admin endpoint; tests change the fields they need.
pub fn proxy_config(
    upstream_url: &str,
    key: chaos::traffic::CohortKey,
    experiment: f64,
    control: f64,
) -> chaos::traffic::ProxyConfig {
    let pools = chaos::traffic::UpstreamPools {
        default: vec![upstream_url.parse().expect("a valid upstream URL")],
        ..Default::default()
    };
    chaos::traffic::ProxyConfig::from_parts(
        "127.0.0.1:0".parse().expect("a socket address"),
        pools,
        key,
        experiment,
        control,
        chaos::traffic::ProxyMode::Edge,
        None,
        0,
    )
    .expect("a valid proxy config")
}

/// Serves every connection `l` accepts with `serve`, each on its own task
/// (test upstreams).
pub fn accept_loop<F, Fut>(l: tokio::net::TcpListener, serve: F)
where
    F: Fn(tokio::net::TcpStream) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    tokio::spawn(async move {
        loop {
            let Ok((s, _)) = l.accept().await else { return };
            tokio::spawn(serve(s));
        }
    });
}
