//! Seeded simulations of the engine's error rates (issue 3's "done when"):
//! A/A experiments must not reject more than α, the sequential monitor must
//! not falsely abort more than α_abort at the null boundary, and it must
//! catch a doubled error rate. Sized to run in seconds in debug builds;
//! shares and medians are printed for the closing note
//! (`cargo test --lib stats::simulation -- --nocapture`).

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::*;
use crate::units::Tolerance;

mod keys;

const RUNS: usize = 1000;

/// Binomial(n, p) by inversion (cheap for the small n·p used here).
fn binomial(rng: &mut ChaCha8Rng, n: u64, p: f64) -> u64 {
    let u: f64 = rng.gen();
    let q = 1.0 - p;
    let mut pk = q.powf(n as f64);
    let mut cdf = pk;
    let mut k = 0u64;
    while cdf < u && k < n {
        pk *= (n - k) as f64 / (k + 1) as f64 * p / q;
        k += 1;
        cdf += pk;
    }
    k
}

fn std_normal(rng: &mut ChaCha8Rng) -> f64 {
    let u1: f64 = rng.gen_range(f64::MIN_POSITIVE..1.0);
    let u2: f64 = rng.gen();
    (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
}

fn lognormal(rng: &mut ChaCha8Rng, n: usize, mu: f64, sigma: f64) -> Vec<f64> {
    (0..n).map(|_| (mu + sigma * std_normal(rng)).exp()).collect()
}

fn spec(name: &str, kind: MetricKind, tolerance: Tolerance) -> HypothesisSpec {
    HypothesisSpec { name: name.into(), kind, tolerance, critical: false, min_samples: 0 }
}

/// Runs `RUNS` experiments with a latency and an error-rate hypothesis and
/// returns (latency rejections, error-rate rejections, overall rejections).
fn simulate(
    seed: u64,
    latency_scale: f64,
    latency_tol: f64,
    rate_tol_points: f64,
) -> (usize, usize, usize) {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let lat = spec(
        "latency",
        MetricKind::LatencyDistribution,
        Tolerance::Relative { fraction: latency_tol },
    );
    let err = spec(
        "errors",
        MetricKind::ErrorRate,
        Tolerance::Absolute { points: rate_tol_points },
    );
    let (mut rl, mut re, mut ro) = (0, 0, 0);
    for run in 0..RUNS {
        let control = lognormal(&mut rng, 150, 3.0, 0.5);
        let experiment: Vec<f64> = lognormal(&mut rng, 150, 3.0, 0.5)
            .into_iter()
            .map(|v| v * latency_scale)
            .collect();
        let n = 3000;
        let e = Counts::new(binomial(&mut rng, n, 0.01), n);
        let c = Counts::new(binomial(&mut rng, n, 0.01), n);
        let v1 =
            judge(&lat, &CohortData::Samples { experiment, control }, 0.05, run as u64);
        let v2 = judge(&err, &CohortData::Counts { experiment: e, control: c }, 0.05, 0);
        rl += usize::from(v1.verdict == Verdict::Rejected);
        re += usize::from(v2.verdict == Verdict::Rejected);
        let (_, overall) = judge_experiment(vec![v1, v2], 0.05, false);
        ro += usize::from(overall == Verdict::Rejected);
    }
    (rl, re, ro)
}

fn share(k: usize, n: usize) -> f64 {
    k as f64 / n as f64
}

#[test]
fn a_a_experiments_at_the_zero_tolerance_boundary_reject_at_most_six_percent() {
    // Tolerance 0 makes A/A exactly the null boundary: the hardest case.
    let (rl, re, ro) = simulate(1, 1.0, 0.0, 0.0);
    println!(
        "A/A, zero tolerances, {RUNS} runs: latency (MWU) rejects {:.1}%, \
         error rate (Fisher/z) {:.1}%, experiment after Holm {:.1}%",
        100.0 * share(rl, RUNS),
        100.0 * share(re, RUNS),
        100.0 * share(ro, RUNS)
    );
    assert!(share(rl, RUNS) <= 0.06, "latency rejects {rl}/{RUNS}");
    assert!(share(re, RUNS) <= 0.06, "error rate rejects {re}/{RUNS}");
    assert!(share(ro, RUNS) <= 0.06, "experiment rejects {ro}/{RUNS}");
    // A test that never rejects would pass the bound trivially.
    assert!(rl >= 20, "MWU should reject near alpha at the boundary, got {rl}");
}

#[test]
fn experiments_exactly_at_the_relative_tolerance_reject_at_most_six_percent() {
    // Experiment latency is 10% slower by construction, tolerance +10%;
    // error rates are A/A with a +0.5 pp tolerance.
    let (rl, re, ro) = simulate(2, 1.1, 0.10, 0.005);
    println!(
        "boundary +10% latency, {RUNS} runs: latency rejects {:.1}%, error rate {:.1}%, \
         experiment {:.1}%",
        100.0 * share(rl, RUNS),
        100.0 * share(re, RUNS),
        100.0 * share(ro, RUNS)
    );
    assert!(share(rl, RUNS) <= 0.06 && share(ro, RUNS) <= 0.06);
    assert!(rl >= 20, "rescaled MWU should reject near alpha, got {rl}");
}

/// Runs the rate monitor; returns (aborts, requests per cohort at each abort).
fn monitor_runs(seed: u64, p_e: f64, runs: usize) -> (usize, Vec<u64>) {
    const P_C: f64 = 0.01;
    const MARGIN: f64 = 0.005;
    const BATCH: u64 = 500;
    const LOOKS: u64 = 50;
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    // Information expected at a quarter of the planned 25,000 per cohort.
    let n_quarter = (BATCH * LOOKS / 4) as f64;
    let info = n_quarter / (p_e * (1.0 - p_e) + P_C * (1.0 - P_C));
    let mut at = Vec::new();
    for _ in 0..runs {
        let mut m = AbortMonitor::for_rate(MARGIN, 0.01, 1, info);
        let (mut e, mut c) = (Counts::default(), Counts::default());
        for _ in 0..LOOKS {
            e.events += binomial(&mut rng, BATCH, p_e);
            c.events += binomial(&mut rng, BATCH, P_C);
            e.total += BATCH;
            c.total += BATCH;
            if m.update_counts(e, c).is_abort() {
                at.push(e.total);
                break;
            }
        }
    }
    (at.len(), at)
}

#[test]
fn sequential_monitor_false_aborts_at_most_one_and_a_half_percent_at_the_boundary() {
    // p_C = 1%, abort margin 0.5 pp, p_E = 1.5%: exactly at the margin,
    // consulted after each of 50 batches of 500 requests per cohort.
    let (aborts, _) = monitor_runs(3, 0.015, RUNS);
    let (aa, _) = monitor_runs(4, 0.01, RUNS);
    println!(
        "monitor false aborts over {RUNS} runs x 50 looks: at the margin {:.2}%, A/A {:.2}%",
        100.0 * share(aborts, RUNS),
        100.0 * share(aa, RUNS)
    );
    assert!(share(aborts, RUNS) <= 0.015, "false aborts {aborts}/{RUNS}");
    assert!(share(aa, RUNS) <= 0.015);
}

#[test]
fn sequential_monitor_aborts_most_runs_when_the_error_rate_doubles() {
    let (aborts, mut at) = monitor_runs(5, 0.02, RUNS);
    at.sort_unstable();
    let median = at.get(at.len() / 2).copied().unwrap_or(0);
    println!(
        "doubled error rate (1% -> 2%, abort margin 0.5 pp): aborts in {:.1}% of runs, \
         median {median} requests per cohort to abort",
        100.0 * share(aborts, RUNS)
    );
    assert!(share(aborts, RUNS) > 0.8, "aborted only {aborts}/{RUNS}");
}

#[test]
fn latency_monitor_false_aborts_rarely_at_the_boundary_and_catches_a_doubling() {
    let runs = 300;
    let margin = 0.2f64.ln_1p();
    let mut rng = ChaCha8Rng::seed_from_u64(6);
    let count = |scale: f64, rng: &mut ChaCha8Rng| {
        let mut aborts = 0;
        for _ in 0..runs {
            let mut m = AbortMonitor::for_log_latency(margin, 0.01, 1, 2000.0);
            for _ in 0..20 {
                let c = lognormal(rng, 200, 3.0, 0.5);
                let e: Vec<f64> = lognormal(rng, 200, 3.0, 0.5)
                    .into_iter()
                    .map(|v| v * scale)
                    .collect();
                if m.update_latencies(&e, &c).is_abort() {
                    aborts += 1;
                    break;
                }
            }
        }
        aborts
    };
    let boundary = count(1.2, &mut rng);
    let doubled = count(2.0, &mut rng);
    println!(
        "latency monitor over {runs} runs: false aborts at +20% margin {:.2}%, \
         aborts at 2x latency {:.1}%",
        100.0 * share(boundary, runs),
        100.0 * share(doubled, runs)
    );
    assert!(share(boundary, runs) <= 0.015);
    assert!(share(doubled, runs) > 0.95);
}

#[test]
fn throughput_at_the_tolerance_boundary_rejects_at_most_six_percent() {
    // Twelve aligned 10 s windows whose shared traffic level swings ±20%
    // (bursts hit both cohorts), each cohort with its own Poisson-like
    // noise; the experiment runs exactly 5% below control, tolerance -5%.
    // Cheap, so four times the runs of the others: a tighter estimate.
    const T_RUNS: usize = 4 * RUNS;
    let mut rng = ChaCha8Rng::seed_from_u64(4);
    let s = spec(
        "throughput",
        MetricKind::Throughput,
        Tolerance::Relative { fraction: -0.05 },
    );
    let mut rejected = 0;
    for _ in 0..T_RUNS {
        let (mut e, mut c) = (Vec::new(), Vec::new());
        for _ in 0..12 {
            let level = 1000.0 * (1.0 + 0.2 * std_normal(&mut rng)).max(0.2);
            c.push(level + level.sqrt() * std_normal(&mut rng));
            e.push(0.95 * level + (0.95 * level).sqrt() * std_normal(&mut rng));
        }
        let data = CohortData::AlignedWindows { experiment: e, control: c };
        let v = judge(&s, &data, 0.05, 0);
        assert_eq!(v.test, "paired-log-ratio-t");
        rejected += usize::from(v.verdict == Verdict::Rejected);
    }
    println!(
        "throughput at the -5% boundary, {T_RUNS} runs: paired log-ratio t rejects {:.1}%",
        100.0 * share(rejected, T_RUNS)
    );
    assert!(share(rejected, T_RUNS) <= 0.06, "rejects {rejected}/{T_RUNS}");
    assert!(rejected >= 80, "should reject near alpha at the boundary, got {rejected}");
}
