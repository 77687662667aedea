//! The embedded per-cohort recorder: counts, a bounded uniform reservoir
//! of raw samples per cohort (what the statistical tests consume) and
//! per-second windows (throughput and p50/p99 over time). Memory is bounded
//! by `reservoir_per_cohort` samples plus [`MAX_WINDOWS`] windows per
//! cohort, however long the run.
//!
//! Untouched traffic is only counted (atomics); each measured cohort takes
//! one short per-cohort lock per request, never a global one.

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hdrhistogram::Histogram;
use prometheus_client::registry::Registry;
use serde::Serialize;
use tokio::time::Instant;

use super::exposition::PromState;
use super::keys::{KeyBuckets, KeySketch};
use super::labels::{CohortLabel, FaultKindLabel, StatusClass};
use crate::cohort::Cohort;

/// Per-second windows kept per cohort (one hour); older ones are dropped.
pub const MAX_WINDOWS: usize = 3600;

/// One request as the statistical tests see it.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Sample {
    /// Arrival time in milliseconds since the recorder's origin.
    pub at_ms: u64,
    /// Arrival to response head (or to the abort), in milliseconds.
    pub latency_ms: f64,
    /// Status >= 500, or no response at all (abort, reset, upstream failure).
    pub error: bool,
    /// The request's key bucket ([`KeyBuckets::bucket_of`]), so tests on
    /// the reservoir can use per-key variances. Not serialized.
    #[serde(skip)]
    pub key: u32,
}

/// One second of a cohort's traffic. Seconds without requests appear with
/// `requests == 0` and zero latencies, so throughput series have no holes.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Window {
    /// Start of the second, in milliseconds since the recorder's origin.
    pub start_ms: u64,
    pub requests: u64,
    pub errors: u64,
    pub p50_ms: f64,
    pub p99_ms: f64,
}

/// Everything recorded for one cohort so far.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct CohortSnapshot {
    pub total: u64,
    /// Status >= 500 (including the proxy's own 502/504) and requests that
    /// got no response (aborted, reset).
    pub errors: u64,
    /// Responses by status; requests without a response are under key 0.
    pub status_counts: BTreeMap<u16, u64>,
    /// Bounded uniform reservoir (algorithm R) over the whole run, in
    /// arrival order.
    pub samples: Vec<Sample>,
    /// Per-second windows, oldest first, the current (partial) one last.
    pub windows: Vec<Window>,
}

/// What happened to one request.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Outcome {
    /// Response status, or `None` when no response was sent.
    pub status: Option<u16>,
    /// Time from arrival to response head.
    pub latency: Duration,
}

impl Outcome {
    /// Error as the verdict engine counts it.
    pub fn is_error(&self) -> bool {
        self.status.is_none_or(|s| s >= 500)
    }
}

/// Arc-shared recorder for one proxy / run.
#[derive(Debug)]
pub struct Recorder {
    origin: Instant,
    reservoir_cap: usize,
    cohorts: [CohortState; 2],
    untouched: AtomicU64,
    keys: KeySketch,
    prom: Arc<PromState>,
    registry: Registry,
}

#[derive(Debug)]
struct CohortState {
    total: AtomicU64,
    errors: AtomicU64,
    inner: Mutex<CohortInner>,
}

#[derive(Debug)]
struct CohortInner {
    status_counts: BTreeMap<u16, u64>,
    reservoir: Vec<Sample>,
    seen: u64,
    rng: u64,
    windows: VecDeque<Window>,
    current: Option<CurrentWindow>,
    /// Per-key sums (bounded: [`super::keys::SUM_BUCKETS`] cells).
    keys: KeyBuckets,
}

#[derive(Debug)]
struct CurrentWindow {
    second: u64,
    requests: u64,
    errors: u64,
    hist: Histogram<u64>,
}

impl CurrentWindow {
    fn close(&self) -> Window {
        let (p50, p99) = if self.hist.is_empty() {
            (0.0, 0.0)
        } else {
            (
                self.hist.value_at_quantile(0.5) as f64 / 1000.0,
                self.hist.value_at_quantile(0.99) as f64 / 1000.0,
            )
        };
        Window {
            start_ms: self.second * 1000,
            requests: self.requests,
            errors: self.errors,
            p50_ms: p50,
            p99_ms: p99,
        }
    }
}

/// splitmix64: a tiny, good-enough generator for reservoir replacement.
fn splitmix(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

impl CohortInner {
    fn new(seed: u64) -> Self {
        CohortInner {
            status_counts: BTreeMap::new(),
            reservoir: Vec::new(),
            seen: 0,
            rng: seed,
            windows: VecDeque::new(),
            current: None,
            keys: KeyBuckets::new(),
        }
    }

    fn push_window(&mut self, w: Window) {
        if self.windows.len() == MAX_WINDOWS {
            self.windows.pop_front();
        }
        self.windows.push_back(w);
    }

    fn record(&mut self, cap: usize, sample: Sample, status: Option<u16>) {
        *self.status_counts.entry(status.unwrap_or(0)).or_insert(0) += 1;
        self.keys.add(sample.key, sample.error, sample.latency_ms);
        // Algorithm R: keep the first `cap`, then replace with probability
        // cap/seen, which leaves a uniform sample of everything seen.
        self.seen += 1;
        if self.reservoir.len() < cap {
            self.reservoir.push(sample);
        } else if cap > 0 {
            let j = splitmix(&mut self.rng) % self.seen;
            if let Ok(j) = usize::try_from(j) {
                if j < cap {
                    self.reservoir[j] = sample;
                }
            }
        }
        let second = sample.at_ms / 1000;
        let same = self.current.as_ref().map(|c| c.second);
        if same != Some(second) {
            if let Some(cur) = self.current.take() {
                // A late sample from an earlier second joins the current
                // window rather than reopening a closed one.
                if second < cur.second {
                    self.current = Some(cur);
                } else {
                    self.push_window(cur.close());
                    let gap_start = cur.second + 1;
                    let gaps = second.saturating_sub(gap_start).min(MAX_WINDOWS as u64);
                    for s in second - gaps..second {
                        self.push_window(Window {
                            start_ms: s * 1000,
                            requests: 0,
                            errors: 0,
                            p50_ms: 0.0,
                            p99_ms: 0.0,
                        });
                    }
                    let mut hist = cur.hist;
                    hist.reset();
                    self.current =
                        Some(CurrentWindow { second, requests: 0, errors: 0, hist });
                }
            } else {
                // 1 µs to 1 h at 2 significant digits: a few KiB.
                let hist = Histogram::new_with_bounds(1, 3_600_000_000, 2)
                    .expect("static histogram bounds are valid");
                self.current =
                    Some(CurrentWindow { second, requests: 0, errors: 0, hist });
            }
        }
        if let Some(cur) = self.current.as_mut() {
            cur.requests += 1;
            cur.errors += u64::from(sample.error);
            let us = (sample.latency_ms * 1000.0).max(1.0) as u64;
            cur.hist.saturating_record(us);
        }
    }
}

impl Recorder {
    /// A recorder whose sample times count from `origin`, keeping at most
    /// `reservoir_per_cohort` raw samples per cohort.
    pub fn new(origin: Instant, reservoir_per_cohort: usize) -> Self {
        let prom = Arc::new(PromState::default());
        let mut registry = Registry::default();
        registry.register_collector(Box::new(super::exposition::Collector(prom.clone())));
        let state = |seed| CohortState {
            total: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            inner: Mutex::new(CohortInner::new(seed)),
        };
        Recorder {
            origin,
            reservoir_cap: reservoir_per_cohort,
            cohorts: [state(0x5EED_0001), state(0x5EED_0002)],
            untouched: AtomicU64::new(0),
            keys: KeySketch::new(),
            prom,
            registry,
        }
    }

    /// The clock origin sample times are relative to.
    pub fn origin(&self) -> Instant {
        self.origin
    }

    /// Milliseconds since the origin, the time base of samples and windows.
    pub fn elapsed_ms(&self, at: Instant) -> u64 {
        u64::try_from(at.saturating_duration_since(self.origin).as_millis())
            .unwrap_or(u64::MAX)
    }

    /// Records one finished request that arrived at `arrived`, without a
    /// key: it counts as a key of its own (independent of every other).
    pub fn record(&self, cohort: Option<Cohort>, arrived: Instant, outcome: Outcome) {
        self.record_keyed(cohort, arrived, outcome, None);
    }

    /// [`record`] with the assignment position of the request's key, which
    /// puts it into its key's bucket of the per-key sums.
    ///
    /// [`record`]: Recorder::record
    pub fn record_keyed(
        &self,
        cohort: Option<Cohort>,
        arrived: Instant,
        outcome: Outcome,
        key_position: Option<f64>,
    ) {
        let label = CohortLabel::of(cohort);
        self.prom.record(label, StatusClass::of(outcome.status), outcome.latency);
        if cohort.is_none() {
            self.untouched.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let state = &self.cohorts[label.index()];
        let error = outcome.is_error();
        let mut sample = Sample {
            at_ms: self.elapsed_ms(arrived),
            latency_ms: outcome.latency.as_secs_f64() * 1000.0,
            error,
            key: key_position.map(KeyBuckets::bucket_of).unwrap_or(0),
        };
        // A poisoned lock only means another request panicked mid-record;
        // the data is still consistent enough to keep counting.
        let mut inner = state.inner.lock().unwrap_or_else(|p| p.into_inner());
        // Counted under the lock: a snapshot (which holds it) then sees
        // the totals and the status counts of the same requests.
        state.total.fetch_add(1, Ordering::Relaxed);
        if error {
            state.errors.fetch_add(1, Ordering::Relaxed);
        }
        if key_position.is_none() {
            // Keyless: a bucket at random, as if it were a key of its own.
            sample.key =
                (splitmix(&mut inner.rng) % super::keys::SUM_BUCKETS as u64) as u32;
        }
        inner.record(self.reservoir_cap, sample, outcome.status);
    }

    /// Notes the assignment position of a recorded request's key (edge
    /// mode only: a sidecar never assigns). Called alongside [`record`], so
    /// a request lost before recording is missing from both.
    ///
    /// [`record`]: Recorder::record
    pub fn note_key(&self, position: f64) {
        self.keys.note(position);
    }

    /// A copy of `cohort`'s per-key sums so far (cumulative; see
    /// [`KeyBuckets::since`]).
    pub fn key_buckets(&self, cohort: Cohort) -> KeyBuckets {
        let state = &self.cohorts[CohortLabel::of(Some(cohort)).index()];
        let inner = state.inner.lock().unwrap_or_else(|p| p.into_inner());
        inner.keys.clone()
    }

    /// The keys seen so far, for the key-level sample-ratio check.
    pub fn keys(&self) -> &KeySketch {
        &self.keys
    }

    /// Counts one injected fault.
    pub fn record_fault(&self, kind: FaultKindLabel) {
        self.prom.record_fault(kind);
    }

    /// Faults injected so far of one kind.
    pub fn faults_injected(&self, kind: FaultKindLabel) -> u64 {
        self.prom.faults_injected(kind)
    }

    /// Requests outside both cohorts.
    pub fn untouched_total(&self) -> u64 {
        self.untouched.load(Ordering::Relaxed)
    }

    /// (total, errors) of a cohort without copying its samples.
    pub fn totals(&self, cohort: Cohort) -> (u64, u64) {
        let state = &self.cohorts[CohortLabel::of(Some(cohort)).index()];
        (state.total.load(Ordering::Relaxed), state.errors.load(Ordering::Relaxed))
    }

    /// Everything recorded for `cohort` so far.
    pub fn snapshot(&self, cohort: Cohort) -> CohortSnapshot {
        let state = &self.cohorts[CohortLabel::of(Some(cohort)).index()];
        let inner = state.inner.lock().unwrap_or_else(|p| p.into_inner());
        let mut samples = inner.reservoir.clone();
        samples.sort_by_key(|s| s.at_ms);
        let mut windows: Vec<Window> = inner.windows.iter().copied().collect();
        if let Some(cur) = inner.current.as_ref() {
            windows.push(cur.close());
        }
        CohortSnapshot {
            total: state.total.load(Ordering::Relaxed),
            errors: state.errors.load(Ordering::Relaxed),
            status_counts: inner.status_counts.clone(),
            samples,
            windows,
        }
    }

    /// The Prometheus registry (for embedding in another exposition).
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// The OpenMetrics text exposition of every metric in [`super::labels`].
    pub fn metrics_text(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(ms: u64) -> Outcome {
        Outcome { status: Some(200), latency: Duration::from_millis(ms) }
    }

    #[test]
    fn reservoir_stays_bounded_while_counts_keep_growing() {
        let origin = Instant::now();
        let rec = Recorder::new(origin, 100);
        for i in 0..10_000u64 {
            rec.record(
                Some(Cohort::Experiment),
                origin + Duration::from_millis(i),
                ok(i),
            );
        }
        let snap = rec.snapshot(Cohort::Experiment);
        assert_eq!(snap.total, 10_000);
        assert_eq!(snap.samples.len(), 100);
        // Uniform over the run: the reservoir reaches far past the first 100.
        assert!(snap.samples.iter().any(|s| s.at_ms > 5_000));
        assert_eq!(snap.windows.len(), 10);
        assert_eq!(snap.windows[3].requests, 1000);
        assert_eq!(rec.snapshot(Cohort::Control).total, 0);
    }

    #[test]
    fn a_snapshot_taken_while_requests_are_recorded_is_consistent() {
        // Totals and status counts of the same requests, whatever the
        // recording threads are doing (a CI run once saw 25 failures but
        // 24 status entries).
        let origin = Instant::now();
        let rec = std::sync::Arc::new(Recorder::new(origin, 10));
        let writers: Vec<_> = (0..3)
            .map(|_| {
                let rec = rec.clone();
                std::thread::spawn(move || {
                    for _ in 0..20_000 {
                        rec.record(Some(Cohort::Control), origin, ok(1));
                    }
                })
            })
            .collect();
        let mut checked = 0;
        while checked < 2_000 || !writers.iter().all(|w| w.is_finished()) {
            let snap = rec.snapshot(Cohort::Control);
            assert_eq!(snap.status_counts.values().sum::<u64>(), snap.total);
            checked += 1;
        }
        for w in writers {
            w.join().expect("writer");
        }
        assert_eq!(rec.snapshot(Cohort::Control).total, 60_000);
    }

    #[test]
    fn errors_count_5xx_and_missing_responses_but_not_4xx() {
        let origin = Instant::now();
        let rec = Recorder::new(origin, 10);
        let lat = Duration::from_millis(1);
        for status in [Some(200), Some(404), Some(502), None] {
            rec.record(Some(Cohort::Control), origin, Outcome { status, latency: lat });
        }
        rec.record(None, origin, ok(1));
        let snap = rec.snapshot(Cohort::Control);
        assert_eq!((snap.total, snap.errors), (4, 2));
        assert_eq!(snap.status_counts.get(&0), Some(&1));
        assert_eq!(rec.untouched_total(), 1);
    }

    #[test]
    fn quiet_seconds_appear_as_empty_windows() {
        let origin = Instant::now();
        let rec = Recorder::new(origin, 10);
        rec.record(Some(Cohort::Control), origin, ok(5));
        rec.record(Some(Cohort::Control), origin + Duration::from_millis(3500), ok(7));
        let w = rec.snapshot(Cohort::Control).windows;
        let reqs: Vec<u64> = w.iter().map(|w| w.requests).collect();
        assert_eq!(reqs, vec![1, 0, 0, 1]);
        assert!((w[3].p50_ms - 7.0).abs() < 0.1, "{:?}", w[3]);
    }

    #[test]
    fn exposition_names_every_metric_constant() {
        let origin = Instant::now();
        let rec = Recorder::new(origin, 10);
        rec.record(Some(Cohort::Experiment), origin, ok(3));
        rec.record_fault(FaultKindLabel::Latency);
        let text = rec.metrics_text();
        for name in super::super::labels::ALL {
            assert!(text.contains(name), "{name} missing from\n{text}");
        }
        assert!(text.contains(
            "chaos_requests_total{cohort=\"experiment\",status_class=\"2xx\"} 1"
        ));
        assert!(text.contains("chaos_faults_injected_total{kind=\"latency\"} 1"));
    }

    /// Cost of the per-key sums on the recording path: the whole
    /// `record_keyed` call against the part the per-key sums add (a hash
    /// of the key position, a logarithm, five additions). Ignored: timing,
    /// not correctness; `cargo test --lib recorder_cost -- --ignored
    /// --nocapture` (numbers in docs/statistics.md).
    #[test]
    #[ignore = "micro-benchmark; prints ns per request"]
    fn recorder_cost_of_per_key_sums() {
        let n = 1_000_000u64;
        let origin = Instant::now();
        let rec = Recorder::new(origin, 10_000);
        let t = std::time::Instant::now();
        for i in 0..n {
            let at = origin + Duration::from_micros(i * 50);
            let pos = crate::traffic::assign::unit(crate::traffic::assign::mix(i % 5000));
            rec.record_keyed(Some(Cohort::Experiment), at, ok(1 + i % 7), Some(pos));
        }
        let whole = t.elapsed().as_nanos() as f64 / n as f64;
        let mut b = KeyBuckets::new();
        let t = std::time::Instant::now();
        for i in 0..n {
            let pos = crate::traffic::assign::unit(crate::traffic::assign::mix(i % 5000));
            b.add(KeyBuckets::bucket_of(pos), i % 97 == 0, 1.0 + (i % 7) as f64);
        }
        let sums = t.elapsed().as_nanos() as f64 / n as f64;
        std::hint::black_box(&b);
        println!(
            "record_keyed: {whole:.0} ns/request, of which per-key sums {sums:.0} ns \
             ({:.1}%)",
            100.0 * sums / whole
        );
    }
}
