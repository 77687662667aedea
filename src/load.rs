//! Open-loop HTTP load generator for demo and CI-gate traffic.
//!
//! Requests are scheduled by the clock (request `i` is due at
//! `start + i / rate`), never by the previous response, so a slow target
//! does not quietly lower the offered load (no coordinated omission).
//! Latency is measured from the scheduled time for the same reason. When
//! `concurrency` requests are already in flight a due request is not sent
//! and is counted as `dropped`: the offered rate stays honest and the
//! generator stays bounded. Every request carries a random user id from
//! `key_space` so a sticky cohort split sees many keys.

use bytes::Bytes;
use http::Uri;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;
use rand::{Rng, SeedableRng};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{watch, Semaphore};
use tokio::time::Instant;

/// What load to generate.
#[derive(Debug, Clone)]
pub struct LoadConfig {
    /// Full URL, e.g. `http://127.0.0.1:8080/checkout`.
    pub target: Uri,
    /// Offered requests per second (> 0).
    pub rate_per_s: f64,
    /// Most requests in flight at once (≥ 1).
    pub concurrency: usize,
    /// Header carrying the user id, e.g. `x-user-id`.
    pub key_header: String,
    /// Number of distinct user ids (≥ 1); ids are `user-0 … user-(N-1)`.
    pub key_space: u64,
    /// Zipf exponent of the user-id mix: `user-i` (i from 0) is drawn
    /// with weight 1/(i+1)^s, so a few users send most requests (real
    /// traffic). `None`: uniform. At most 1,000,000 keys with a Zipf mix.
    pub key_zipf: Option<f64>,
    /// Seed for the user-id sequence (same seed, same sequence).
    pub seed: u64,
    /// Per-request timeout (headers and body).
    pub timeout: Duration,
    /// Stop after this many scheduled requests, if set.
    pub max_requests: Option<u64>,
}

impl LoadConfig {
    /// Defaults: 64 in flight, `x-user-id` over 10,000 users, seed 1, 2 s
    /// timeout, no request cap (the duration bounds it).
    pub fn new(target: Uri, rate_per_s: f64) -> Self {
        LoadConfig {
            target,
            rate_per_s,
            concurrency: 64,
            key_header: "x-user-id".into(),
            key_space: 10_000,
            key_zipf: None,
            seed: 1,
            timeout: Duration::from_secs(2),
            max_requests: None,
        }
    }
}

/// What happened. `sent = ok + http_errors + failed + timeouts`. As JSON,
/// durations are seconds (floats).
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct LoadStats {
    /// Requests actually sent.
    pub sent: u64,
    /// 2xx/3xx responses.
    pub ok: u64,
    /// 4xx/5xx responses.
    pub http_errors: u64,
    /// Connection or protocol failures.
    pub failed: u64,
    /// Requests that hit `timeout`.
    pub timeouts: u64,
    /// Due requests not sent because `concurrency` were in flight.
    pub dropped: u64,
    /// Wall time from the first scheduled request to the last completion.
    #[serde(serialize_with = "secs")]
    pub elapsed: Duration,
    /// Median latency from scheduled send time, of answered requests.
    #[serde(serialize_with = "opt_secs")]
    pub p50: Option<Duration>,
    /// 99th percentile latency, same basis.
    #[serde(serialize_with = "opt_secs")]
    pub p99: Option<Duration>,
}

fn secs<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(d.as_secs_f64())
}

fn opt_secs<S: serde::Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
    match d {
        Some(d) => s.serialize_some(&d.as_secs_f64()),
        None => s.serialize_none(),
    }
}

impl LoadStats {
    /// Requests sent per second of `elapsed`.
    pub fn achieved_rate(&self) -> f64 {
        let s = self.elapsed.as_secs_f64();
        if s > 0.0 {
            self.sent as f64 / s
        } else {
            0.0
        }
    }

    /// All non-ok outcomes (HTTP errors, failures, timeouts).
    pub fn errors(&self) -> u64 {
        self.http_errors + self.failed + self.timeouts
    }
}

/// A configuration the generator refuses to run.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// One field is out of range.
    #[error("invalid load config: {0}")]
    Config(String),
}

#[derive(Default)]
struct Tally {
    stats: LoadStats,
    hist: Option<hdrhistogram::Histogram<u64>>,
}

/// Runs load until `stop` turns true, `max_duration` passes or
/// `max_requests` were scheduled, then waits for in-flight requests (each
/// bounded by `timeout`) and returns the counts.
pub async fn run(
    cfg: LoadConfig,
    mut stop: watch::Receiver<bool>,
    max_duration: Duration,
) -> Result<LoadStats, LoadError> {
    validate(&cfg)?;
    let header =
        http::HeaderName::from_bytes(cfg.key_header.as_bytes()).map_err(|e| {
            LoadError::Config(format!("key_header {:?}: {e}", cfg.key_header))
        })?;
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    let client: Client<_, Empty<Bytes>> = Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(cfg.concurrency)
        .build(connector);
    let limit = Arc::new(Semaphore::new(cfg.concurrency));
    let hist = hdrhistogram::Histogram::new_with_bounds(1, 3_600_000_000, 3)
        .map_err(|e| LoadError::Config(format!("histogram: {e}")))?;
    let tally =
        Arc::new(Mutex::new(Tally { stats: LoadStats::default(), hist: Some(hist) }));
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(cfg.seed);
    let zipf = cfg.key_zipf.map(|s| zipf_cdf(cfg.key_space, s));
    let interval = Duration::from_secs_f64(1.0 / cfg.rate_per_s);
    let start = Instant::now();
    let end = start + max_duration;
    let mut tasks = tokio::task::JoinSet::new();
    let mut i: u64 = 0;
    // A dropped sender means "nobody will say stop": keep going to the
    // deadline instead of spinning on a closed channel.
    let mut stop_open = true;
    loop {
        if cfg.max_requests.is_some_and(|m| i >= m) || *stop.borrow() {
            break;
        }
        let due = start + interval.mul_f64(i as f64);
        if due >= end {
            break;
        }
        tokio::select! {
            () = tokio::time::sleep_until(due) => {}
            r = stop.changed(), if stop_open => {
                stop_open = r.is_ok();
                continue;
            }
        }
        i += 1;
        let Ok(permit) = Arc::clone(&limit).try_acquire_owned() else {
            lock(&tally).stats.dropped += 1;
            continue;
        };
        let user = match &zipf {
            Some(cdf) => {
                let x: f64 = rng.gen();
                cdf.partition_point(|c| *c < x).min(cdf.len() - 1) as u64
            }
            None => rng.gen_range(0..cfg.key_space),
        };
        let req = http::Request::get(cfg.target.clone())
            .header(&header, format!("user-{user}"))
            .body(Empty::new())
            .map_err(|e| LoadError::Config(format!("request: {e}")))?;
        let client = client.clone();
        let tally = Arc::clone(&tally);
        let timeout = cfg.timeout;
        tasks.spawn(async move {
            let outcome = tokio::time::timeout(timeout, async {
                let resp = client.request(req).await?;
                let status = resp.status();
                // Read the whole body so the connection is reused.
                resp.into_body().collect().await?;
                Ok::<_, Box<dyn std::error::Error + Send + Sync>>(status)
            })
            .await;
            let latency = due.elapsed();
            let mut t = lock(&tally);
            t.stats.sent += 1;
            match outcome {
                Ok(Ok(status)) => {
                    if status.is_client_error() || status.is_server_error() {
                        t.stats.http_errors += 1;
                    } else {
                        t.stats.ok += 1;
                    }
                    if let Some(h) = t.hist.as_mut() {
                        let _ = h.record(latency.as_micros().max(1) as u64);
                    }
                }
                Ok(Err(_)) => t.stats.failed += 1,
                Err(_) => t.stats.timeouts += 1,
            }
            drop(permit);
        });
        // Reap finished tasks as we go so the set stays small.
        while tasks.try_join_next().is_some() {}
    }
    while tasks.join_next().await.is_some() {}
    let mut t = lock(&tally);
    t.stats.elapsed = start.elapsed();
    if let Some(h) = t.hist.take().filter(|h| !h.is_empty()) {
        t.stats.p50 = Some(Duration::from_micros(h.value_at_quantile(0.5)));
        t.stats.p99 = Some(Duration::from_micros(h.value_at_quantile(0.99)));
    }
    Ok(t.stats.clone())
}

fn lock(t: &Mutex<Tally>) -> std::sync::MutexGuard<'_, Tally> {
    // Counters stay meaningful even if a task panicked while holding it.
    t.lock().unwrap_or_else(|p| p.into_inner())
}

/// Cumulative Zipf weights of `user-0 … user-(n-1)`, normalised to 1.
fn zipf_cdf(n: u64, s: f64) -> Vec<f64> {
    let mut acc = 0.0;
    let mut cdf: Vec<f64> = (1..=n)
        .map(|i| {
            acc += (i as f64).powf(-s);
            acc
        })
        .collect();
    for c in cdf.iter_mut() {
        *c /= acc;
    }
    cdf
}

/// Everything [`run`] would refuse, checked without running: callers
/// check first so a refused config is an error, not a silent no-load.
pub fn check(cfg: &LoadConfig) -> Result<(), LoadError> {
    validate(cfg)?;
    http::HeaderName::from_bytes(cfg.key_header.as_bytes()).map_err(|e| {
        LoadError::Config(format!("key_header {:?}: {e}", cfg.key_header))
    })?;
    Ok(())
}

/// True for a valid HTTP field name: an RFC 9110 `token` (§5.1, §5.6.2):
/// one or more of ALPHA, DIGIT and ``!#$%&'*+-.^_`|~``.
pub fn valid_header_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// True for a request path the generator can send: starts with '/', only
/// visible ASCII (no spaces, controls or '#'), and an RFC 3986 path and
/// query as the `http` crate parses it.
pub fn valid_request_path(path: &str) -> bool {
    path.starts_with('/')
        && path.len() <= 8192
        && path.bytes().all(|b| b.is_ascii_graphic() && b != b'#')
        && path.parse::<http::uri::PathAndQuery>().is_ok()
}

fn validate(cfg: &LoadConfig) -> Result<(), LoadError> {
    let bad = |m: String| Err(LoadError::Config(m));
    if !(cfg.rate_per_s.is_finite() && cfg.rate_per_s > 0.0 && cfg.rate_per_s <= 1e6) {
        return bad(format!("rate_per_s must be in (0, 1e6], got {}", cfg.rate_per_s));
    }
    if cfg.concurrency == 0 {
        return bad("concurrency must be at least 1".into());
    }
    if cfg.key_space == 0 {
        return bad("key_space must be at least 1".into());
    }
    if let Some(z) = cfg.key_zipf {
        if !(z.is_finite() && z > 0.0 && z <= 5.0) {
            return bad(format!("key_zipf must be in (0, 5], got {z}"));
        }
        if cfg.key_space > 1_000_000 {
            return bad(format!(
                "a Zipf key mix takes at most 1000000 keys, got {}",
                cfg.key_space
            ));
        }
    }
    if cfg.timeout.is_zero() {
        return bad("timeout must be above zero".into());
    }
    if cfg.target.scheme_str() != Some("http") || cfg.target.authority().is_none() {
        return bad(format!("target must be http://HOST:PORT/PATH, got {}", cfg.target));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> LoadConfig {
        LoadConfig::new("http://127.0.0.1:9/checkout".parse().unwrap(), 100.0)
    }

    #[test]
    fn a_zipf_mix_gives_the_heaviest_user_its_share() {
        let cdf = zipf_cdf(500, 1.1);
        assert!((cdf[499] - 1.0).abs() < 1e-12);
        // H(500, 1.1) ≈ 5.20: user-0 sends about 19% of requests.
        assert!((cdf[0] - 0.192).abs() < 0.005, "{}", cdf[0]);
        let mut c = cfg();
        c.key_zipf = Some(0.0);
        assert!(validate(&c).is_err());
        c.key_zipf = Some(1.1);
        c.key_space = 2_000_000;
        assert!(validate(&c).is_err());
    }

    #[test]
    fn rejects_a_zero_rate_concurrency_or_key_space() {
        let mut c = cfg();
        c.rate_per_s = 0.0;
        assert!(validate(&c).is_err());
        let mut c = cfg();
        c.concurrency = 0;
        assert!(validate(&c).is_err());
        let mut c = cfg();
        c.key_space = 0;
        assert!(validate(&c).is_err());
        let mut c = cfg();
        c.target = "https://127.0.0.1/".parse().unwrap();
        assert!(validate(&c).is_err());
        assert!(validate(&cfg()).is_ok());
    }

    #[tokio::test]
    async fn schedules_by_the_clock_and_counts_refused_connections_as_failures() {
        // Port 9 (discard) is closed on loopback: every request fails fast,
        // and the schedule still offers rate × duration requests.
        let (_tx, rx) = watch::channel(false);
        let mut c = cfg();
        c.timeout = Duration::from_millis(500);
        let stats = run(c, rx, Duration::from_secs(1)).await.unwrap();
        assert_eq!(stats.sent + stats.dropped, 100, "{stats:?}");
        assert_eq!(stats.ok, 0);
        assert_eq!(stats.errors(), stats.sent);
    }

    #[tokio::test]
    async fn runs_to_its_deadline_when_the_stop_sender_is_dropped() {
        let (tx, rx) = watch::channel(false);
        drop(tx);
        let t = std::time::Instant::now();
        let stats = run(cfg(), rx, Duration::from_millis(300)).await.unwrap();
        assert_eq!(stats.sent + stats.dropped, 30, "{stats:?}");
        assert!(t.elapsed() >= Duration::from_millis(290), "{:?}", t.elapsed());
    }

    #[tokio::test]
    async fn stops_when_told_to() {
        let (tx, rx) = watch::channel(false);
        let mut c = cfg();
        c.max_requests = Some(1_000_000);
        let handle = tokio::spawn(run(c, rx, Duration::from_secs(3600)));
        tokio::time::sleep(Duration::from_millis(250)).await;
        tx.send(true).unwrap();
        let stats = tokio::time::timeout(Duration::from_secs(5), handle)
            .await
            .expect("stopped in time")
            .unwrap()
            .unwrap();
        assert!(stats.sent + stats.dropped <= 40, "{stats:?}");
    }

    /// Issue 12 "Also": a bad path or header gave no traffic and no error.
    #[test]
    fn r12_load_paths_and_header_names_are_checked() {
        assert!(valid_request_path("/checkout?x=1&y=%20"));
        for bad in ["checkout", "/a b", "/a\nb", "/a#frag", "/\u{e9}", ""] {
            assert!(!valid_request_path(bad), "{bad:?}");
        }
        assert!(valid_header_name("x-user-id"));
        for bad in ["x user", "x:y", "", "x\u{e9}", "a\"b", "a\r\nb"] {
            assert!(!valid_header_name(bad), "{bad:?}");
        }
        let mut c = cfg();
        c.key_header = "bad header".into();
        assert!(check(&c).is_err());
    }
}
