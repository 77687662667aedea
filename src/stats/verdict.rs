//! Verdicts on steady-state hypotheses "θ ≤ m" by two one-sided tests
//! against the tolerance (STATISTICS.md §1-§5), and the experiment verdict
//! over several hypotheses (Holm for rejection, intersection-union for
//! acceptance, abort and critical rules).

use serde::Serialize;

use super::cluster::{combined_df, ClusteredMean, Clustering, KeyData, MIN_KEYS};
use super::holm::holm_adjust;
use super::mann_whitney::{rank_sums_sorted, sorted};
use super::proportions::{
    fisher_exact, katz_log_rr, newcombe_interval_z, newcombe_p_value, two_proportion_z,
};
use super::quantile::bootstrap_log_quantile_ratio;
use super::special::{normal_cdf, normal_pdf, normal_quantile, normal_sf, student_t_sf};
use super::welch::{mean_var, t_p_value, welch_from_moments};
use super::{Alternative, Counts, Verdict};
use crate::units::Tolerance;

/// Bootstrap replicates for quantile hypotheses.
pub const BOOTSTRAP_REPLICATES: usize = 2000;
/// Minimum per cohort for Mann-Whitney verdicts.
pub const MIN_MWU: u64 = 20;
/// Minimum windows per cohort for Welch verdicts.
pub const MIN_WINDOWS: u64 = 10;
/// Minimum requests per cohort for rate verdicts.
pub const MIN_RATE_N: u64 = 30;
/// Minimum events per arm for the Katz relative-risk interval.
pub const MIN_KATZ_EVENTS: u64 = 5;
/// Power used for `needed_n`.
const POWER: f64 = 0.8;

/// What a hypothesis measures (the experiment model maps onto this).
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum MetricKind {
    /// Whole latency distribution (Mann-Whitney on a scale shift).
    LatencyDistribution,
    /// A latency quantile, e.g. 0.5, 0.9, 0.99 (Harrell-Davis + bootstrap).
    LatencyQuantile(f64),
    /// Error rate from counts.
    ErrorRate,
    /// Per-window request rates; a negative relative tolerance.
    Throughput,
    /// Generic per-window values (PromQL); the tolerance sign says which
    /// direction is worse.
    Samples,
}

/// One hypothesis to judge.
#[derive(Debug, Clone, PartialEq)]
pub struct HypothesisSpec {
    pub name: String,
    pub kind: MetricKind,
    pub tolerance: Tolerance,
    pub critical: bool,
    /// Per-cohort minimum on top of the statistical gates (0 = none).
    pub min_samples: u64,
}

/// Data per cohort. Latencies in any consistent unit; throughput and
/// samples as per-window values.
#[derive(Debug, Clone, PartialEq)]
pub enum CohortData {
    Samples {
        experiment: Vec<f64>,
        control: Vec<f64>,
    },
    /// Per-window values where window i of both cohorts covers the same
    /// time span (the runner's throughput windows): throughput is then
    /// judged on the paired log ratios. Other metrics treat it as samples.
    AlignedWindows {
        experiment: Vec<f64>,
        control: Vec<f64>,
    },
    Counts {
        experiment: Counts,
        control: Counts,
    },
}

/// The verdict on one hypothesis, with everything a report shows.
/// `estimate`, `ci_low`, `ci_high` and `margin` are on the scale named by
/// `scale`; the interval is the 1−2α interval whose ends are the one-sided
/// bounds of the two tests (non-finite ends serialize as null).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct HypothesisVerdict {
    pub name: String,
    pub verdict: Verdict,
    /// Which test produced the p-values ("mann-whitney", "newcombe", ...).
    pub test: String,
    pub estimate: f64,
    pub ci_low: f64,
    pub ci_high: f64,
    pub margin: f64,
    /// p-value of rejecting "θ ≤ m" (the experiment is worse than allowed).
    pub p_reject: f64,
    /// Holm-adjusted p_reject (equal to p_reject until `judge_experiment`).
    pub p_reject_adjusted: f64,
    /// p-value of rejecting "θ ≥ m" (acceptance, non-inferiority).
    pub p_accept: f64,
    pub n_experiment: u64,
    pub n_control: u64,
    /// When inconclusive: per-cohort n that would give 80% power at the
    /// observed effect (windows for Welch tests).
    pub needed_n: Option<u64>,
    pub critical: bool,
    /// Whether a test ran (false when a gate failed); only tested
    /// hypotheses enter the Holm family.
    pub tested: bool,
    pub reason: String,
    /// Unit of estimate/ci/margin, e.g. "relative change of the p99".
    pub scale: String,
    /// Per-key inference, when keys were known: the design effects applied
    /// and what the per-request test said on the same data.
    pub clustering: Option<Clustering>,
}

fn z_power_sq(alpha: f64) -> f64 {
    let z = normal_quantile(1.0 - alpha) + normal_quantile(POWER);
    z * z
}

fn needed(n: f64) -> Option<u64> {
    (n.is_finite() && n > 0.0).then(|| n.ceil().min(u64::MAX as f64 / 2.0) as u64)
}

/// Bisection for the crossing of an increasing step function f over
/// [lo, hi]: returns x with f(x) ≈ level (lo/hi as ±∞ sentinels).
fn crossing(f: impl Fn(f64) -> f64, level: f64, lo: f64, hi: f64) -> f64 {
    if f(lo) > level {
        return f64::NEG_INFINITY;
    }
    if f(hi) <= level {
        return f64::INFINITY;
    }
    let (mut a, mut b) = (lo, hi);
    // 40 halvings of a width-40 bracket: 4e-11 in log-ratio units.
    for _ in 0..40 {
        let mid = 0.5 * (a + b);
        if f(mid) <= level {
            a = mid;
        } else {
            b = mid;
        }
    }
    0.5 * (a + b)
}

struct Draft {
    test: &'static str,
    estimate: f64,
    ci_low: f64,
    ci_high: f64,
    margin: f64,
    p_reject: f64,
    p_accept: f64,
    needed_n: Option<u64>,
    scale: String,
    note: String,
    clustering: Option<Clustering>,
}

fn inconclusive(
    spec: &HypothesisSpec,
    n: (u64, u64),
    reason: String,
    needed_n: Option<u64>,
) -> HypothesisVerdict {
    HypothesisVerdict {
        name: spec.name.clone(),
        verdict: Verdict::Inconclusive,
        test: "none".into(),
        estimate: f64::NAN,
        ci_low: f64::NAN,
        ci_high: f64::NAN,
        margin: f64::NAN,
        p_reject: 1.0,
        p_reject_adjusted: 1.0,
        p_accept: 1.0,
        n_experiment: n.0,
        n_control: n.1,
        needed_n,
        critical: spec.critical,
        tested: false,
        reason,
        scale: String::new(),
        clustering: None,
    }
}

fn finish(
    spec: &HypothesisSpec,
    n: (u64, u64),
    alpha: f64,
    d: Draft,
) -> HypothesisVerdict {
    let verdict = if d.p_reject <= alpha {
        Verdict::Rejected
    } else if d.p_accept <= alpha {
        Verdict::Accepted
    } else {
        Verdict::Inconclusive
    };
    let what = match verdict {
        Verdict::Rejected => format!(
            "worse than the tolerance: lower bound {} > margin {} (p = {:.3e})",
            fmt_num(d.ci_low),
            fmt_num(d.margin),
            d.p_reject
        ),
        Verdict::Accepted => format!(
            "within tolerance: upper bound {} < margin {} (p = {:.3e})",
            fmt_num(d.ci_high),
            fmt_num(d.margin),
            d.p_accept
        ),
        Verdict::Inconclusive => format!(
            "interval [{}, {}] contains the margin {}",
            fmt_num(d.ci_low),
            fmt_num(d.ci_high),
            fmt_num(d.margin)
        ),
    };
    let reason = if d.note.is_empty() { what } else { format!("{what}; {}", d.note) };
    HypothesisVerdict {
        name: spec.name.clone(),
        verdict,
        test: d.test.into(),
        estimate: d.estimate,
        ci_low: d.ci_low,
        ci_high: d.ci_high,
        margin: d.margin,
        p_reject: d.p_reject,
        p_reject_adjusted: d.p_reject,
        p_accept: d.p_accept,
        n_experiment: n.0,
        n_control: n.1,
        needed_n: if verdict == Verdict::Inconclusive {
            d.needed_n.map(|v| v.max(spec.min_samples))
        } else {
            None
        },
        critical: spec.critical,
        tested: true,
        reason,
        scale: d.scale,
        clustering: d.clustering,
    }
}

fn fmt_num(v: f64) -> String {
    if v.is_finite() {
        format!("{v:.4}")
    } else if v > 0.0 {
        "+inf".into()
    } else if v < 0.0 {
        "-inf".into()
    } else {
        "n/a".into()
    }
}

/// Judges one hypothesis. Never panics on data: gates, wrong data shape and
/// tolerances whose direction does not fit the metric give INCONCLUSIVE
/// with a reason.
///
/// Below the experiment's own `min_samples` (a policy, not a statistical
/// limit) the verdict is INCONCLUSIVE, but when the data passes the
/// statistical gates the estimate and interval are still filled in, marked
/// as information only: an aborted run should still show how bad it got.
pub fn judge(
    spec: &HypothesisSpec,
    data: &CohortData,
    alpha: f64,
    seed: u64,
) -> HypothesisVerdict {
    judge_keyed(spec, data, None, alpha, seed)
}

/// [`judge`] with per-key data: error rates and latencies then use the
/// per-key (cluster-robust) variance whenever keys repeat (`cluster.rs`);
/// with unique keys the result is [`judge`]'s. `keys` that do not fit the
/// data (labels of another length) are ignored.
pub fn judge_keyed(
    spec: &HypothesisSpec,
    data: &CohortData,
    keys: Option<&KeyData>,
    alpha: f64,
    seed: u64,
) -> HypothesisVerdict {
    let n = data_size(data);
    match judge_draft(spec, data, keys, alpha, seed) {
        Ok(Judged::Draft(d)) => finish(spec, n, alpha, d),
        Ok(Judged::Gate { reason, needed_n }) => {
            let mut v = inconclusive(spec, n, reason, needed_n);
            if spec.min_samples > 0 {
                let statistical_only = HypothesisSpec { min_samples: 0, ..spec.clone() };
                if let Ok(Judged::Draft(d)) =
                    judge_draft(&statistical_only, data, keys, alpha, seed)
                {
                    v.test = d.test.into();
                    v.estimate = d.estimate;
                    v.ci_low = d.ci_low;
                    v.ci_high = d.ci_high;
                    v.margin = d.margin;
                    v.scale = d.scale;
                    v.clustering = d.clustering;
                    v.reason
                        .push_str("; the estimate and interval are for information only");
                }
            }
            v
        }
        Err(reason) => inconclusive(spec, n, reason, None),
    }
}

fn data_size(data: &CohortData) -> (u64, u64) {
    match data {
        CohortData::Samples { experiment, control }
        | CohortData::AlignedWindows { experiment, control } => {
            (experiment.len() as u64, control.len() as u64)
        }
        CohortData::Counts { experiment, control } => (experiment.total, control.total),
    }
}

fn judge_draft(
    spec: &HypothesisSpec,
    data: &CohortData,
    keys: Option<&KeyData>,
    alpha: f64,
    seed: u64,
) -> Result<Judged, String> {
    let aligned = matches!(data, CohortData::AlignedWindows { .. });
    if !(alpha > 0.0 && alpha < 0.5) {
        return Err(format!("alpha {alpha} must be in (0, 0.5)"));
    }
    match (spec.kind, data) {
        (MetricKind::ErrorRate, CohortData::Counts { experiment, control }) => match keys
        {
            Some(KeyData::Sums { experiment: ke, control: kc }) => {
                judge_rate_keyed(spec, (*experiment, *control), (ke, kc), alpha)
            }
            _ => judge_rate(spec, *experiment, *control, alpha),
        },
        (_, CohortData::Counts { .. }) => {
            Err(format!("{:?} needs samples per cohort, not counts", spec.kind))
        }
        (
            kind,
            CohortData::Samples { experiment, control }
            | CohortData::AlignedWindows { experiment, control },
        ) => {
            if let Some(bad) =
                experiment.iter().chain(control.iter()).find(|v| !v.is_finite())
            {
                Err(format!("samples must be finite numbers, found {bad}"))
            } else {
                let labels = match keys {
                    Some(KeyData::Labels { experiment: le, control: lc })
                        if le.len() == experiment.len() && lc.len() == control.len() =>
                    {
                        Some((le.as_slice(), lc.as_slice()))
                    }
                    _ => None,
                };
                match kind {
                    MetricKind::LatencyDistribution => {
                        judge_latency_mwu(spec, experiment, control, labels, alpha)
                    }
                    MetricKind::LatencyQuantile(p) => {
                        judge_quantile(spec, p, experiment, control, labels, alpha, seed)
                    }
                    MetricKind::Throughput | MetricKind::Samples if aligned => {
                        judge_paired(spec, experiment, control, alpha)
                    }
                    MetricKind::Throughput | MetricKind::Samples => {
                        judge_welch(spec, experiment, control, alpha)
                    }
                    MetricKind::ErrorRate => {
                        Err("error_rate needs counts (events/total), not samples".into())
                    }
                }
            }
        }
    }
}

enum Judged {
    Draft(Draft),
    Gate { reason: String, needed_n: Option<u64> },
}

fn gate(spec: &HypothesisSpec, n: (u64, u64), min: u64, unit: &str) -> Option<Judged> {
    let need = min.max(spec.min_samples);
    let have = n.0.min(n.1);
    (have < need).then(|| Judged::Gate {
        reason: format!(
            "too few {unit}: {} experiment / {} control, need at least {need} per cohort",
            n.0, n.1
        ),
        needed_n: Some(need),
    })
}

fn relative_upper(spec: &HypothesisSpec, what: &str) -> Result<f64, String> {
    match spec.tolerance {
        Tolerance::Relative { fraction } if fraction >= 0.0 => Ok(fraction),
        t => Err(format!(
            "tolerance {t} does not fit {what}: use a relative increase like \"+10%\""
        )),
    }
}

fn judge_latency_mwu(
    spec: &HypothesisSpec,
    experiment: &[f64],
    control: &[f64],
    labels: Option<(&[u64], &[u64])>,
    alpha: f64,
) -> Result<Judged, String> {
    let r = relative_upper(spec, "a latency distribution")?;
    if experiment.iter().chain(control).any(|v| *v < 0.0) {
        return Err("latencies must not be negative".into());
    }
    let n = (experiment.len() as u64, control.len() as u64);
    if let Some(g) = gate(spec, n, MIN_MWU, "requests") {
        return Ok(g);
    }
    // Per-key variance of the rank statistic, when keys are known.
    let keyed = labels
        .and_then(|(le, lc)| rank_design_effects(experiment, control, le, lc, 1.0 + r));
    if let Some(k) = &keyed {
        if let Some(g) = few_keys_gate(&k.0, &k.1) {
            return Ok(g);
        }
    }
    let (de, dc) = keyed
        .as_ref()
        .map(|(e, c)| (e.design_effect(), c.design_effect()))
        .unwrap_or((1.0, 1.0));
    let (n1, n2) = (experiment.len() as f64, control.len() as f64);
    // Var(U) scales by the design effects weighted as the two cohorts'
    // shares of Var(mean rank E − mean rank C) (Hájek projection); the
    // reference is Student's t with the Satterthwaite df of that sum.
    let inflation = (de / n1 + dc / n2) / (1.0 / n1 + 1.0 / n2);
    let df = keyed
        .as_ref()
        .map(|(e, c)| combined_df((de / n1, e.df()), (dc / n2, c.df())))
        .unwrap_or(f64::INFINITY);
    let inflation = (inflation, df);
    let a = sorted(experiment);
    let b = sorted(control);
    // The verdict's p-values: MWU of E against (1+r)·C, literally.
    let at_margin = rank_sums_sorted(&a, &b, 1.0 + r);
    let p_reject = mwu_p(&at_margin, Alternative::Greater, inflation);
    let p_accept = mwu_p(&at_margin, Alternative::Less, inflation);
    let clustering = keyed.as_ref().map(|(e, c)| Clustering {
        keys_experiment: e.keys,
        keys_control: c.keys,
        df,
        design_effect_experiment: de,
        design_effect_control: dc,
        p_reject_per_request: at_margin.p_value(Alternative::Greater),
        p_accept_per_request: at_margin.p_value(Alternative::Less),
    });
    // Interval and estimate by inverting the test over the scale factor e^x.
    let p_greater = |x: f64| {
        mwu_p(&rank_sums_sorted(&a, &b, x.exp()), Alternative::Greater, inflation)
    };
    let p_less =
        |x: f64| mwu_p(&rank_sums_sorted(&a, &b, x.exp()), Alternative::Less, inflation);
    // Scale factors e^±20 bracket any real latency ratio; beyond is ±inf.
    let (lo, hi) = (-20.0, 20.0);
    let l = crossing(p_greater, alpha, lo, hi);
    let u = crossing(|x| 1.0 - p_less(x), 1.0 - alpha, lo, hi);
    let est = crossing(|x| -rank_sums_sorted(&a, &b, x.exp()).z_plain(), 0.0, lo, hi);
    let m = r.ln_1p();
    let needed_n = {
        let logs: Vec<f64> = experiment
            .iter()
            .chain(control)
            .filter(|v| **v > 0.0)
            .map(|v| v.ln())
            .collect();
        let sd = if logs.len() > 2 { mean_var(&logs).1.sqrt() } else { f64::NAN };
        let gap = (m - est).abs();
        let p = normal_cdf(gap / (sd * std::f64::consts::SQRT_2));
        needed(z_power_sq(alpha) * de.max(dc) / (6.0 * (p - 0.5).powi(2)))
            .map(|v| v.max(MIN_MWU))
    };
    Ok(Judged::Draft(Draft {
        test: "mann-whitney",
        estimate: est.exp_m1(),
        ci_low: l.exp_m1(),
        ci_high: u.exp_m1(),
        margin: r,
        p_reject,
        p_accept,
        needed_n,
        scale: "relative scale shift of latency (experiment/control - 1)".into(),
        note: clustering.map(key_note).unwrap_or_default(),
        clustering,
    }))
}

fn judge_quantile(
    spec: &HypothesisSpec,
    p: f64,
    experiment: &[f64],
    control: &[f64],
    labels: Option<(&[u64], &[u64])>,
    alpha: f64,
    seed: u64,
) -> Result<Judged, String> {
    if !(p > 0.0 && p < 1.0) {
        return Err(format!("quantile {p} must be in (0, 1)"));
    }
    let r = relative_upper(spec, "a latency quantile")?;
    if experiment.iter().chain(control).any(|v| *v <= 0.0) {
        return Err("latencies for a quantile ratio must be positive".into());
    }
    let n = (experiment.len() as u64, control.len() as u64);
    let min = MIN_MWU.max((20.0 / (1.0 - p)).ceil() as u64);
    if let Some(g) = gate(spec, n, min, "requests") {
        return Ok(g);
    }
    let a = sorted(experiment);
    let b = sorted(control);
    let mut boot = bootstrap_log_quantile_ratio(&a, &b, p, BOOTSTRAP_REPLICATES, seed);
    let m = r.ln_1p();
    // Per-key variance of a quantile (Woodruff): the design effect of the
    // indicator 1{x <= q̂_p} in each cohort. The request-level bootstrap's
    // spread around θ̂ is widened by the larger cohort's √d (conservative:
    // the cohorts' shares of Var θ̂ are not separated).
    let keyed = labels.map(|(le, lc)| {
        let below = |x: &[f64], q: f64| -> Vec<f64> {
            x.iter().map(|v| f64::from(u8::from(*v <= q))).collect()
        };
        let qe = super::quantile::harrell_davis(&a, p);
        let qc = super::quantile::harrell_davis(&b, p);
        (
            ClusteredMean::from_labelled(&below(experiment, qe), le),
            ClusteredMean::from_labelled(&below(control, qc), lc),
        )
    });
    let mut clustering = None;
    if let Some((Some(ke), Some(kc))) = keyed {
        if let Some(g) = few_keys_gate(&ke, &kc) {
            return Ok(g);
        }
        let (de, dc) = (ke.design_effect(), kc.design_effect());
        clustering = Some(Clustering {
            keys_experiment: ke.keys,
            keys_control: kc.keys,
            df: f64::INFINITY,
            design_effect_experiment: de,
            design_effect_control: dc,
            p_reject_per_request: boot.p_at_most(m),
            p_accept_per_request: boot.p_at_least(m),
        });
        let widen = de.max(dc).sqrt();
        if widen > 1.0 {
            let centre = boot.estimate;
            // Monotone, so the replicates stay sorted.
            for v in boot.replicates.iter_mut() {
                *v = centre + (*v - centre) * widen;
            }
        }
    }
    let d_max = clustering
        .map(|c| c.design_effect_experiment.max(c.design_effect_control))
        .unwrap_or(1.0);
    let needed_n = {
        let logs: Vec<f64> = control.iter().map(|v| v.ln()).collect();
        let var = mean_var(&logs).1;
        let zp = normal_quantile(p);
        let gap = m - boot.estimate;
        let per =
            2.0 * p * (1.0 - p) * var * d_max / (normal_pdf(zp).powi(2) * gap * gap);
        needed(z_power_sq(alpha) * per).map(|v| v.max(min))
    };
    Ok(Judged::Draft(Draft {
        test: "harrell-davis-bootstrap",
        estimate: boot.estimate.exp_m1(),
        ci_low: boot.percentile(alpha).exp_m1(),
        ci_high: boot.percentile(1.0 - alpha).exp_m1(),
        margin: r,
        p_reject: boot.p_at_most(m),
        p_accept: boot.p_at_least(m),
        needed_n,
        scale: format!("relative change of the p{} (experiment/control - 1)", p * 100.0),
        note: match clustering {
            Some(c) => {
                format!("B = {BOOTSTRAP_REPLICATES}, seed {seed}; {}", key_note(c))
            }
            None => format!("B = {BOOTSTRAP_REPLICATES}, seed {seed}"),
        },
        clustering,
    }))
}

/// INCONCLUSIVE when keys repeat and a cohort has fewer than
/// [`MIN_KEYS`] of them: the per-key variance would rest on too few
/// independent units, and the per-request one is known to be wrong.
fn few_keys_gate(e: &ClusteredMean, c: &ClusteredMean) -> Option<Judged> {
    let repeat = e.keys_repeat() || c.keys_repeat();
    (repeat && e.keys.min(c.keys) < MIN_KEYS).then(|| Judged::Gate {
        reason: format!(
            "too few distinct keys for per-key inference: {} experiment / {} control, \
             need at least {MIN_KEYS} per cohort when keys repeat (requests of one key \
             are not independent)",
            e.keys, c.keys
        ),
        needed_n: None,
    })
}

fn key_note(c: Clustering) -> String {
    if c.adjusted() {
        format!(
            "per-key variance over {}/{} keys: design effect {:.2}/{:.2} \
             (per-request test: P(worse) {:.3e}, P(within) {:.3e})",
            c.keys_experiment,
            c.keys_control,
            c.design_effect_experiment,
            c.design_effect_control,
            c.p_reject_per_request,
            c.p_accept_per_request
        )
    } else {
        format!(
            "per-key variance over {}/{} keys: no excess over per-request (design effect 1)",
            c.keys_experiment, c.keys_control
        )
    }
}

/// Mann-Whitney p-value with Var(U) multiplied by `inflation` and a
/// Student-t reference with `df` (exactly [`RankSums::p_value`] at 1).
fn mwu_p(
    r: &super::mann_whitney::RankSums,
    alt: Alternative,
    (inflation, df): (f64, f64),
) -> f64 {
    if inflation == 1.0 {
        return r.p_value(alt);
    }
    let sigma = r.sigma() * inflation.sqrt();
    if sigma == 0.0 {
        return 1.0;
    }
    let u2 = r.n1 * r.n2 - r.u1;
    let (u, factor) = match alt {
        Alternative::Greater => (r.u1, 1.0),
        Alternative::Less => (u2, 1.0),
        Alternative::TwoSided => (r.u1.max(u2), 2.0),
    };
    let z = (u - r.n1 * r.n2 / 2.0 - 0.5) / sigma;
    let tail = if df.is_finite() { student_t_sf(z, df) } else { normal_sf(z) };
    (factor * tail).clamp(0.0, 1.0)
}

/// Per-cohort clustered means of the pooled mid-ranks of E and scale·C
/// (the placements the Mann-Whitney statistic sums), by key label.
fn rank_design_effects(
    experiment: &[f64],
    control: &[f64],
    le: &[u64],
    lc: &[u64],
    scale: f64,
) -> Option<(ClusteredMean, ClusteredMean)> {
    let mut pooled: Vec<(f64, usize)> = experiment
        .iter()
        .copied()
        .chain(control.iter().map(|v| v * scale))
        .enumerate()
        .map(|(i, v)| (v, i))
        .collect();
    pooled.sort_unstable_by(|x, y| x.0.total_cmp(&y.0));
    let mut ranks = vec![0.0; pooled.len()];
    let mut i = 0;
    while i < pooled.len() {
        let mut j = i;
        while j + 1 < pooled.len() && pooled[j + 1].0 == pooled[i].0 {
            j += 1;
        }
        let avg = (i + j) as f64 / 2.0 + 1.0;
        for item in &pooled[i..=j] {
            ranks[item.1] = avg;
        }
        i = j + 1;
    }
    let (re, rc) = ranks.split_at(experiment.len());
    Some((ClusteredMean::from_labelled(re, le)?, ClusteredMean::from_labelled(rc, lc)?))
}

/// Error rates with per-key sums: the per-request test on Rao-Scott
/// effective counts (x/d, n/d per cohort, d the design effect of that
/// cohort's error share). With d = 1 in both cohorts this is exactly
/// [`judge_rate`].
fn judge_rate_keyed(
    spec: &HypothesisSpec,
    (e, c): (Counts, Counts),
    (ke, kc): (&[super::cluster::KeySums], &[super::cluster::KeySums]),
    alpha: f64,
) -> Result<Judged, String> {
    let per_request = judge_rate(spec, e, c, alpha)?;
    let Judged::Draft(base) = per_request else { return Ok(per_request) };
    let (Some(me), Some(mc)) =
        (ClusteredMean::from_keys(ke), ClusteredMean::from_keys(kc))
    else {
        return Ok(Judged::Draft(base));
    };
    if let Some(g) = few_keys_gate(&me, &mc) {
        return Ok(g);
    }
    let (de, dc) = (me.design_effect(), mc.design_effect());
    let df = combined_df((de * me.var_request, me.df()), (dc * mc.var_request, mc.df()));
    let clustering = Clustering {
        keys_experiment: me.keys,
        keys_control: mc.keys,
        df,
        design_effect_experiment: de,
        design_effect_control: dc,
        p_reject_per_request: base.p_reject,
        p_accept_per_request: base.p_accept,
    };
    if de == 1.0 && dc == 1.0 {
        let note = join_note(&base.note, &key_note(clustering));
        return Ok(Judged::Draft(Draft { note, clustering: Some(clustering), ..base }));
    }
    Ok(Judged::Draft(rate_wald_t(spec, (e, c), (de, dc), df, alpha, clustering)?))
}

/// Error-rate verdicts on the per-key variance: a Wald interval on
/// V_c = d_c · p̃_c(1 − p̃_c)/n_c per cohort (p̃ = (x+1)/(n+2), so a cohort
/// without errors still has a variance, as in the abort monitor), with
/// Student's t on the Satterthwaite df. Rao-Scott effective counts fed to
/// the score intervals would be the textbook route, but with one heavy
/// failing key the effective n collapses to a handful and Wilson's
/// interval, built for Bernoulli trials, turns a coin flip of which cohort
/// got that key into a rejection (the e2e run in tests/e2e/keys.rs).
fn rate_wald_t(
    spec: &HypothesisSpec,
    (e, c): (Counts, Counts),
    (de, dc): (f64, f64),
    df: f64,
    alpha: f64,
    clustering: Clustering,
) -> Result<Draft, String> {
    let tilde = |x: Counts| (x.events as f64 + 1.0) / (x.total as f64 + 2.0);
    let var = |x: Counts, d: f64| d * tilde(x) * (1.0 - tilde(x)) / x.total as f64;
    let (ve, vc) = (var(e, de), var(c, dc));
    let q = crossing(|x| 1.0 - student_t_sf(x, df), 1.0 - alpha, -100.0, 100.0);
    let zz = z_power_sq(alpha);
    let note = key_note(clustering);
    let scale_abs = "difference in error rate (fraction; 0.01 = 1 pp)";
    match spec.tolerance {
        Tolerance::Absolute { points } if points >= 0.0 => {
            let d = e.rate() - c.rate();
            let se = (ve + vc).sqrt();
            let t = (d - points) / se;
            let gap = points - d;
            Ok(Draft {
                test: "per-key-wald-t",
                estimate: d,
                ci_low: d - q * se,
                ci_high: d + q * se,
                margin: points,
                p_reject: student_t_sf(t, df),
                p_accept: if points > 0.0 { student_t_sf(-t, df) } else { 1.0 },
                needed_n: needed(zz * (ve * e.total as f64 + vc * c.total as f64) / (gap * gap))
                    .map(|v| v.max(MIN_RATE_N)),
                scale: scale_abs.into(),
                note: if points > 0.0 {
                    note
                } else {
                    format!("a zero tolerance can be rejected but never accepted; {note}")
                },
                clustering: Some(clustering),
            })
        }
        Tolerance::Relative { fraction } if fraction >= 0.0 => {
            if e.events < MIN_KATZ_EVENTS || c.events < MIN_KATZ_EVENTS {
                return Err(format!(
                    "a relative error-rate tolerance needs at least {MIN_KATZ_EVENTS} errors \
                     per cohort (experiment {}, control {})",
                    e.events, c.events
                ));
            }
            // Delta method on ln(p_E / p_C).
            let lr = (e.rate() / c.rate()).ln();
            let se = (ve / e.rate().powi(2) + vc / c.rate().powi(2)).sqrt();
            let m = fraction.ln_1p();
            let t = (lr - m) / se;
            Ok(Draft {
                test: "per-key-log-relative-risk-t",
                estimate: lr.exp_m1(),
                ci_low: (lr - q * se).exp_m1(),
                ci_high: (lr + q * se).exp_m1(),
                margin: fraction,
                p_reject: student_t_sf(t, df),
                p_accept: student_t_sf(-t, df),
                needed_n: None,
                scale: "relative change of the error rate (experiment/control - 1)".into(),
                note,
                clustering: Some(clustering),
            })
        }
        t => Err(format!(
            "tolerance {t} does not fit an error rate: use \"+0.5pp\" or \"+10%\" (higher is worse)"
        )),
    }
}

fn join_note(a: &str, b: &str) -> String {
    if a.is_empty() {
        b.to_string()
    } else {
        format!("{a}; {b}")
    }
}

fn judge_rate(
    spec: &HypothesisSpec,
    e: Counts,
    c: Counts,
    alpha: f64,
) -> Result<Judged, String> {
    judge_rate_with_gate(spec, e, c, alpha, MIN_RATE_N)
}

/// [`judge_rate`] with the per-cohort minimum `min_n` (Rao-Scott effective
/// counts are judged without the request gate: the raw counts passed it,
/// and a tiny effective n must show as a wide interval, not vanish).
fn judge_rate_with_gate(
    spec: &HypothesisSpec,
    e: Counts,
    c: Counts,
    alpha: f64,
    min_n: u64,
) -> Result<Judged, String> {
    for (cohort, x) in [("experiment", e), ("control", c)] {
        if x.events > x.total {
            return Err(format!(
                "{cohort} has {} events out of {} requests",
                x.events, x.total
            ));
        }
    }
    if let Some(g) = gate(spec, (e.total, c.total), min_n, "requests") {
        return Ok(g);
    }
    let z = normal_quantile(1.0 - alpha);
    let zz = z_power_sq(alpha);
    match spec.tolerance {
        Tolerance::Absolute { points } if points > 0.0 => {
            let i = newcombe_interval_z(e, c, z);
            let (pe, pc) = (e.rate(), c.rate());
            let var = pe * (1.0 - pe) + pc * (1.0 - pc);
            let var = if var > 0.0 { var } else { 2.0 / e.total.min(c.total) as f64 };
            let gap = points - i.estimate;
            Ok(Judged::Draft(Draft {
                test: "newcombe",
                estimate: i.estimate,
                ci_low: i.low,
                ci_high: i.high,
                margin: points,
                p_reject: newcombe_p_value(e, c, points, Alternative::Greater),
                p_accept: newcombe_p_value(e, c, points, Alternative::Less),
                needed_n: needed(zz * var / (gap * gap)).map(|v| v.max(MIN_RATE_N)),
                scale: "difference in error rate (fraction; 0.01 = 1 pp)".into(),
                note: String::new(),
                clustering: None,
            }))
        }
        Tolerance::Absolute { points: 0.0 } => {
            let (tot_e, tot_c) = (e.total as f64, c.total as f64);
            let events = (e.events + c.events) as f64;
            let oks = tot_e + tot_c - events;
            let all = tot_e + tot_c;
            let min_expected =
                [events * tot_e, events * tot_c, oks * tot_e, oks * tot_c]
                    .iter()
                    .fold(f64::INFINITY, |m, v| m.min(v / all));
            let (test, res) = if min_expected >= 5.0 {
                ("two-proportion-z", two_proportion_z(e, c, Alternative::Greater))
            } else {
                ("fisher", fisher_exact(e, c, Alternative::Greater))
            };
            let res = res.map_err(|err| err.to_string())?;
            let i = newcombe_interval_z(e, c, z);
            Ok(Judged::Draft(Draft {
                test,
                estimate: i.estimate,
                ci_low: i.low,
                ci_high: i.high,
                margin: 0.0,
                p_reject: res.p_value,
                p_accept: 1.0,
                needed_n: None,
                scale: "difference in error rate (fraction; 0.01 = 1 pp)".into(),
                note: "a zero tolerance can be rejected but never accepted".into(),
                clustering: None,
            }))
        }
        Tolerance::Relative { fraction } if fraction >= 0.0 => {
            if e.events < MIN_KATZ_EVENTS || c.events < MIN_KATZ_EVENTS {
                return Ok(Judged::Gate {
                    reason: format!(
                        "a relative error-rate tolerance needs at least {MIN_KATZ_EVENTS} \
                         errors per cohort (experiment {}, control {})",
                        e.events, c.events
                    ),
                    needed_n: None,
                });
            }
            let (i, se) = katz_log_rr(e, c, z).ok_or("no events in a cohort")?;
            let m = fraction.ln_1p();
            let stat = (i.estimate - m) / se;
            let per = (1.0 - e.rate()) / e.rate() + (1.0 - c.rate()) / c.rate();
            let gap = m - i.estimate;
            Ok(Judged::Draft(Draft {
                test: "katz-log-relative-risk",
                estimate: i.estimate.exp_m1(),
                ci_low: i.low.exp_m1(),
                ci_high: i.high.exp_m1(),
                margin: fraction,
                p_reject: normal_sf(stat),
                p_accept: normal_cdf(stat),
                // Var(ln RR) ≈ per-event terms scale with 1/n.
                needed_n: needed(zz * per / (gap * gap)).map(|v| v.max(MIN_RATE_N)),
                scale: "relative change of the error rate (experiment/control - 1)".into(),
                note: String::new(),
                clustering: None,
            }))
        }
        t => Err(format!(
            "tolerance {t} does not fit an error rate: use \"+0.5pp\" or \"+10%\" (higher is worse)"
        )),
    }
}

/// Time-aligned values (window or step i of both cohorts covers the same
/// seconds): the one-sample t-test on per-window differences — log ratios
/// ln(E_i/C_i) against ln(1 ± r) for relative tolerances, E_i − C_i
/// against ±δ for absolute ones. Traffic bursts and load swings hit both
/// cohorts and cancel in the pair, which makes it far more powerful than
/// Welch on the raw values (STATISTICS.md §2). Falls back to Welch when the
/// values cannot be paired: unequal counts, a non-positive value under a
/// relative tolerance (the log is undefined, and a collapse to zero must
/// still be caught), or no spread at all in the differences.
fn judge_paired(
    spec: &HypothesisSpec,
    experiment: &[f64],
    control: &[f64],
    alpha: f64,
) -> Result<Judged, String> {
    /// How a pair becomes a difference and what "worse" means.
    enum Form {
        /// ln(E/C) above ln(1 + r) is worse (latency-like, `+r%`).
        RatioUp(f64),
        /// ln(E/C) below ln(1 − r) is worse (throughput-like, `-r%`).
        RatioDown(f64),
        /// E − C above δ is worse (`+δ`).
        ShiftUp(f64),
        /// C − E above δ is worse (`-δ`).
        ShiftDown(f64),
    }
    let form = match (spec.kind, spec.tolerance) {
        (MetricKind::Throughput, Tolerance::Relative { fraction })
            if fraction <= 0.0 && fraction > -1.0 =>
        {
            Form::RatioDown(-fraction)
        }
        (MetricKind::Samples, Tolerance::Relative { fraction }) if fraction >= 0.0 => {
            Form::RatioUp(fraction)
        }
        (MetricKind::Samples, Tolerance::Relative { fraction }) if fraction > -1.0 => {
            Form::RatioDown(-fraction)
        }
        (MetricKind::Samples, Tolerance::Absolute { points }) if points >= 0.0 => {
            Form::ShiftUp(points)
        }
        (MetricKind::Samples, Tolerance::Absolute { points }) => Form::ShiftDown(-points),
        _ => return judge_welch(spec, experiment, control, alpha),
    };
    let ratio = matches!(form, Form::RatioUp(_) | Form::RatioDown(_));
    let pairable = experiment.len() == control.len()
        && (!ratio || experiment.iter().chain(control).all(|v| *v > 0.0));
    if !pairable {
        return judge_welch(spec, experiment, control, alpha);
    }
    let n = (experiment.len() as u64, control.len() as u64);
    if let Some(g) = gate(spec, n, MIN_WINDOWS, "windows") {
        return Ok(g);
    }
    let d: Vec<f64> = experiment
        .iter()
        .zip(control)
        .map(|(e, c)| if ratio { (e / c).ln() } else { e - c })
        .collect();
    let (mean, var) = mean_var(&d);
    if var.is_nan() || var <= 0.0 {
        // Identical differences in every window: no spread to test against.
        return judge_welch(spec, experiment, control, alpha);
    }
    let k = d.len() as f64;
    let df = k - 1.0;
    let se = (var / k).sqrt();
    // The boundary in difference units, whether larger differences are
    // worse, the margin as displayed, and the display scale (increasing in
    // "worse").
    type Shape = (f64, bool, f64, fn(f64) -> f64, &'static str);
    let (bound, worse_up, margin, display, scale): Shape = match form {
        Form::RatioUp(r) => (
            (1.0 + r).ln(),
            true,
            r,
            f64::exp_m1,
            "relative change (experiment/control - 1)",
        ),
        Form::RatioDown(r) => (
            (1.0 - r).ln(),
            false,
            r,
            |x: f64| -x.exp_m1(),
            "relative shortfall (1 - experiment/control)",
        ),
        Form::ShiftUp(m) => (m, true, m, |x| x, "difference (experiment - control)"),
        Form::ShiftDown(m) => {
            (-m, false, m, |x: f64| -x, "shortfall (control - experiment)")
        }
    };
    let t = (mean - bound) / se;
    let (worse, better) = if worse_up {
        (Alternative::Greater, Alternative::Less)
    } else {
        (Alternative::Less, Alternative::Greater)
    };
    let p_reject = t_p_value(t, df, worse);
    let p_accept = t_p_value(t, df, better);
    let q = crossing(|x| 1.0 - student_t_sf(x, df), 1.0 - alpha, -100.0, 100.0);
    let (lo, hi) = (mean - q * se, mean + q * se);
    let (ci_low, ci_high) =
        if worse_up { (display(lo), display(hi)) } else { (display(hi), display(lo)) };
    let gap = mean - bound;
    let needed_n =
        needed(z_power_sq(alpha) * var / (gap * gap)).map(|v| v.max(MIN_WINDOWS));
    Ok(Judged::Draft(Draft {
        test: if ratio { "paired-log-ratio-t" } else { "paired-difference-t" },
        estimate: display(mean),
        ci_low,
        ci_high,
        margin,
        p_reject,
        p_accept,
        needed_n,
        scale: scale.into(),
        note: String::new(),
        clustering: None,
    }))
}

/// Welch verdicts for values that cannot be paired (throughput windows or
/// generic samples). The tolerance picks the parametrisation of "control
/// adjusted by the margin".
fn judge_welch(
    spec: &HypothesisSpec,
    experiment: &[f64],
    control: &[f64],
    alpha: f64,
) -> Result<Judged, String> {
    #[derive(Clone, Copy)]
    enum Form {
        /// θ = ln(E/C) ≤ m, higher is worse.
        ScaleUp,
        /// θ = ln(C/E) ≤ m, lower is worse.
        ScaleDown,
        /// θ = E − C ≤ δ.
        ShiftUp,
        /// θ = C − E ≤ δ.
        ShiftDown,
    }
    let (form, margin_display) = match (spec.kind, spec.tolerance) {
        (MetricKind::Throughput, Tolerance::Relative { fraction }) if fraction <= 0.0 => {
            (Form::ScaleDown, -fraction)
        }
        (MetricKind::Throughput, t) => {
            return Err(format!(
                "tolerance {t} does not fit throughput: use a relative drop like \"-5%\""
            ))
        }
        (_, Tolerance::Relative { fraction }) if fraction >= 0.0 => {
            (Form::ScaleUp, fraction)
        }
        (_, Tolerance::Relative { fraction }) => (Form::ScaleDown, -fraction),
        (_, Tolerance::Absolute { points }) if points >= 0.0 => (Form::ShiftUp, points),
        (_, Tolerance::Absolute { points }) => (Form::ShiftDown, -points),
    };
    let n = (experiment.len() as u64, control.len() as u64);
    if let Some(g) = gate(spec, n, MIN_WINDOWS, "windows") {
        return Ok(g);
    }
    let (me, ve) = mean_var(experiment);
    let (mc, vc) = mean_var(control);
    if ve == 0.0 && vc == 0.0 {
        return Err("both cohorts have zero variance; Welch's t-test is undefined".into());
    }
    let (ne, nc) = (experiment.len() as f64, control.len() as f64);
    // Control adjusted to the boundary θ = x, and the alternative that
    // means "worse than x".
    let adjusted = |x: f64| -> (f64, f64) {
        match form {
            Form::ScaleUp => (mc * x.exp(), vc * (2.0 * x).exp()),
            Form::ScaleDown => (mc * (-x).exp(), vc * (-2.0 * x).exp()),
            Form::ShiftUp => (mc + x, vc),
            Form::ShiftDown => (mc - x, vc),
        }
    };
    let worse = match form {
        Form::ScaleUp | Form::ShiftUp => Alternative::Greater,
        Form::ScaleDown | Form::ShiftDown => Alternative::Less,
    };
    let better = match worse {
        Alternative::Greater => Alternative::Less,
        _ => Alternative::Greater,
    };
    let p_at = |x: f64, alt: Alternative| {
        let (m, v) = adjusted(x);
        let (t, df) = welch_from_moments((me, ve, ne), (m, v, nc));
        t_p_value(t, df, alt)
    };
    // Margin in θ units, with the literal factor for relative tolerances.
    let (m_theta, p_reject, p_accept) = match form {
        Form::ScaleUp | Form::ScaleDown => {
            let factor = match form {
                Form::ScaleUp => 1.0 + margin_display,
                _ => 1.0 - margin_display,
            };
            let (t, df) =
                welch_from_moments((me, ve, ne), (mc * factor, vc * factor * factor, nc));
            let m = match form {
                Form::ScaleUp => factor.ln(),
                _ => -factor.ln(),
            };
            (m, t_p_value(t, df, worse), t_p_value(t, df, better))
        }
        _ => (margin_display, p_at(margin_display, worse), p_at(margin_display, better)),
    };
    let span = match form {
        Form::ScaleUp | Form::ScaleDown => 20.0,
        _ => {
            let s = (ve.sqrt() + vc.sqrt() + me.abs() + mc.abs()).max(1.0);
            1e3 * s
        }
    };
    let l = crossing(|x| p_at(x, worse), alpha, -span, span);
    let u = crossing(|x| 1.0 - p_at(x, better), 1.0 - alpha, -span, span);
    let est = crossing(|x| p_at(x, worse), 0.5, -span, span);
    let (to_display, scale): (fn(f64) -> f64, &str) = match form {
        Form::ScaleUp => (f64::exp_m1, "relative change (experiment/control - 1)"),
        Form::ScaleDown => {
            (|x: f64| -(-x).exp_m1(), "relative shortfall (1 - experiment/control)")
        }
        Form::ShiftUp => (|x| x, "difference (experiment - control)"),
        Form::ShiftDown => (|x| x, "shortfall (control - experiment)"),
    };
    let gap_abs = {
        let (m, _) = adjusted(m_theta);
        me - m
    };
    let needed_n =
        needed(z_power_sq(alpha) * (ve + adjusted(m_theta).1) / (gap_abs * gap_abs))
            .map(|v| v.max(MIN_WINDOWS));
    Ok(Judged::Draft(Draft {
        test: "welch-t",
        estimate: to_display(est),
        ci_low: to_display(l),
        ci_high: to_display(u),
        margin: margin_display,
        p_reject,
        p_accept,
        needed_n,
        scale: scale.into(),
        note: String::new(),
        clustering: None,
    }))
}

/// Applies Holm to the REJECT p-values of the tested hypotheses, the
/// intersection-union rule for acceptance, and the abort rule (§4).
/// Returns the updated verdicts and the overall verdict.
///
/// Every tested hypothesis, critical or not, is in the Holm family, so the
/// familywise false-rejection rate stays ≤ α, and any hypothesis rejected
/// after Holm rejects the run. `critical` decides what acceptance needs:
/// every critical hypothesis accepted and no other one rejected, so an
/// underpowered non-critical hypothesis (a p99 short of samples) can stay
/// inconclusive without blocking the run; it is still an intersection-union
/// test, over the critical ones. With no hypothesis marked critical, every
/// one must be accepted. An abort rejects the run whatever the hypotheses
/// say.
pub fn judge_experiment(
    mut verdicts: Vec<HypothesisVerdict>,
    alpha: f64,
    aborted: bool,
) -> (Vec<HypothesisVerdict>, Verdict) {
    let family: Vec<usize> =
        (0..verdicts.len()).filter(|&i| verdicts[i].tested).collect();
    let p: Vec<f64> = family.iter().map(|&i| verdicts[i].p_reject).collect();
    let adjusted = holm_adjust(&p);
    for (&i, &adj) in family.iter().zip(&adjusted) {
        let v = &mut verdicts[i];
        v.p_reject_adjusted = adj;
        if v.verdict == Verdict::Rejected && adj > alpha {
            v.verdict = if v.p_accept <= alpha {
                Verdict::Accepted
            } else {
                Verdict::Inconclusive
            };
            v.reason = format!(
                "not rejected after Holm over {} hypotheses (adjusted p = {adj:.3e}); {}",
                family.len(),
                v.reason
            );
        }
    }
    let any_rejected = verdicts.iter().any(|v| v.verdict == Verdict::Rejected);
    let any_critical = verdicts.iter().any(|v| v.critical);
    let all_accepted = !verdicts.is_empty()
        && verdicts
            .iter()
            .filter(|v| v.critical || !any_critical)
            .all(|v| v.verdict == Verdict::Accepted);
    let overall = if aborted || any_rejected {
        Verdict::Rejected
    } else if all_accepted {
        Verdict::Accepted
    } else {
        Verdict::Inconclusive
    };
    (verdicts, overall)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(kind: MetricKind, tolerance: Tolerance) -> HypothesisSpec {
        HypothesisSpec {
            name: "h".into(),
            kind,
            tolerance,
            critical: false,
            min_samples: 0,
        }
    }

    fn rel(fraction: f64) -> Tolerance {
        Tolerance::Relative { fraction }
    }

    /// Deterministic, spread-out latencies around 100.
    fn latencies(n: usize, scale: f64, offset: usize) -> Vec<f64> {
        (0..n).map(|i| scale * (60.0 + ((i + offset) * 37 % 83) as f64)).collect()
    }

    fn samples(e: Vec<f64>, c: Vec<f64>) -> CohortData {
        CohortData::Samples { experiment: e, control: c }
    }

    fn aligned(e: Vec<f64>, c: Vec<f64>) -> CohortData {
        CohortData::AlignedWindows { experiment: e, control: c }
    }

    #[test]
    fn equal_latencies_are_accepted_and_a_fifty_percent_slowdown_is_rejected() {
        let s = spec(MetricKind::LatencyDistribution, rel(0.10));
        let ok =
            judge(&s, &samples(latencies(400, 1.0, 3), latencies(400, 1.0, 0)), 0.05, 0);
        assert_eq!(ok.verdict, Verdict::Accepted, "{ok:?}");
        assert!(ok.ci_low < 0.0 && ok.ci_high < 0.10 && ok.estimate.abs() < 0.05);
        let bad =
            judge(&s, &samples(latencies(400, 1.5, 0), latencies(400, 1.0, 0)), 0.05, 0);
        assert_eq!(bad.verdict, Verdict::Rejected);
        assert!((bad.estimate - 0.5).abs() < 0.05, "estimate {}", bad.estimate);
        assert!(bad.ci_low > 0.10 && bad.needed_n.is_none());
    }

    #[test]
    fn the_interval_and_the_two_tests_agree() {
        let s = spec(MetricKind::LatencyDistribution, rel(0.2));
        for scale in [0.9, 1.1, 1.2, 1.3, 1.6] {
            let v = judge(
                &s,
                &samples(latencies(200, scale, 5), latencies(200, 1.0, 0)),
                0.05,
                0,
            );
            assert_eq!(v.ci_low > v.margin, v.p_reject <= 0.05, "{v:?}");
            assert_eq!(v.ci_high < v.margin, v.p_accept <= 0.05, "{v:?}");
        }
    }

    #[test]
    fn too_few_samples_are_inconclusive_with_the_needed_n() {
        let s = HypothesisSpec {
            min_samples: 50,
            ..spec(MetricKind::LatencyDistribution, rel(0.1))
        };
        let v =
            judge(&s, &samples(latencies(30, 1.0, 0), latencies(30, 1.0, 0)), 0.05, 0);
        assert_eq!(v.verdict, Verdict::Inconclusive);
        assert_eq!(v.needed_n, Some(50));
        assert!(!v.tested);
        // Past the statistical gate (20), short of the file's 50: the
        // estimate is still shown, for information.
        assert!(v.estimate.is_finite() && v.ci_low < v.ci_high, "{v:?}");
        assert!(v.reason.contains("for information only"), "{}", v.reason);
        let q = spec(MetricKind::LatencyQuantile(0.99), rel(0.1));
        let v =
            judge(&q, &samples(latencies(500, 1.0, 0), latencies(500, 1.0, 0)), 0.05, 0);
        assert_eq!(v.needed_n, Some(2000));
        // Below a statistical gate there is no estimate at all.
        assert!(v.estimate.is_nan());
    }

    #[test]
    fn an_error_rate_short_of_min_samples_stays_inconclusive_but_shows_the_jump() {
        let s = HypothesisSpec {
            min_samples: 500,
            ..spec(MetricKind::ErrorRate, Tolerance::Absolute { points: 0.005 })
        };
        // 400 requests per cohort: 60 errors against none.
        let data = CohortData::Counts {
            experiment: Counts::new(60, 400),
            control: Counts::new(0, 400),
        };
        let v = judge(&s, &data, 0.05, 0);
        assert_eq!(v.verdict, Verdict::Inconclusive);
        assert!(!v.tested, "kept out of the Holm family");
        assert_eq!(v.needed_n, Some(500));
        assert!(v.estimate > 0.1 && v.ci_low > 0.05, "{v:?}");
    }

    #[test]
    fn a_tolerance_in_the_wrong_direction_is_inconclusive_not_a_panic() {
        let data = samples(latencies(100, 1.0, 0), latencies(100, 1.0, 0));
        for (kind, tol) in [
            (MetricKind::LatencyDistribution, rel(-0.1)),
            (MetricKind::LatencyQuantile(0.9), Tolerance::Absolute { points: 0.01 }),
            (MetricKind::Throughput, rel(0.05)),
        ] {
            let v = judge(&spec(kind, tol), &data, 0.05, 0);
            assert_eq!(v.verdict, Verdict::Inconclusive);
            assert!(v.reason.contains("does not fit"), "{}", v.reason);
        }
        let counts = CohortData::Counts {
            experiment: Counts::new(1, 100),
            control: Counts::new(1, 100),
        };
        let v = judge(&spec(MetricKind::ErrorRate, rel(-0.1)), &counts, 0.05, 0);
        assert!(v.reason.contains("does not fit"));
        let v = judge(&spec(MetricKind::LatencyDistribution, rel(0.1)), &counts, 0.05, 0);
        assert!(v.reason.contains("needs samples"));
    }

    #[test]
    fn error_rates_use_newcombe_for_a_margin_and_fisher_or_z_for_zero() {
        let counts = |e, c| CohortData::Counts {
            experiment: Counts::new(e, 10_000),
            control: Counts::new(c, 10_000),
        };
        let s = spec(MetricKind::ErrorRate, Tolerance::Absolute { points: 0.005 });
        let v = judge(&s, &counts(105, 100), 0.05, 0);
        assert_eq!((v.test.as_str(), v.verdict), ("newcombe", Verdict::Accepted));
        let v = judge(&s, &counts(300, 100), 0.05, 0);
        assert_eq!(v.verdict, Verdict::Rejected);
        let zero = spec(MetricKind::ErrorRate, Tolerance::Absolute { points: 0.0 });
        assert_eq!(judge(&zero, &counts(130, 100), 0.05, 0).test, "two-proportion-z");
        let v = judge(&zero, &counts(3, 0), 0.05, 0);
        assert_eq!(v.test, "fisher");
        assert_ne!(v.verdict, Verdict::Accepted);
        let relative = spec(MetricKind::ErrorRate, rel(0.5));
        let v = judge(&relative, &counts(300, 100), 0.05, 0);
        assert_eq!(
            (v.test.as_str(), v.verdict),
            ("katz-log-relative-risk", Verdict::Rejected)
        );
        assert!((v.estimate - 2.0).abs() < 1e-9);
        let v = judge(&relative, &counts(2, 1), 0.05, 0);
        assert!(v.reason.contains("at least 5 errors"));
    }

    #[test]
    fn throughput_drop_is_rejected_and_equal_throughput_accepted() {
        let s = spec(MetricKind::Throughput, rel(-0.05));
        let ctl: Vec<f64> = (0..20).map(|i| 1000.0 + (i % 5) as f64 * 10.0).collect();
        let same: Vec<f64> = (0..20).map(|i| 1000.0 + (i % 4) as f64 * 12.0).collect();
        let half: Vec<f64> = ctl.iter().map(|v| v / 2.0).collect();
        let v = judge(&s, &samples(same, ctl.clone()), 0.05, 0);
        assert_eq!(v.verdict, Verdict::Accepted, "{v:?}");
        let v = judge(&s, &samples(half, ctl), 0.05, 0);
        assert_eq!(v.verdict, Verdict::Rejected);
        assert!((v.estimate - 0.5).abs() < 0.01, "shortfall {}", v.estimate);
    }

    #[test]
    fn aligned_throughput_windows_use_the_paired_log_ratio_test_like_scipy() {
        // scipy 1.17.1: ttest_1samp(log(E/C), log(0.95), alternative=...),
        // and the 90% t interval mapped to 1 - E/C.
        let c = vec![
            1001.2, 1014.4, 977.8, 935.2, 950.7, 916.5, 985.7, 1092.9, 942.9, 948.1,
            1026.0, 1031.3,
        ];
        let e = vec![
            971.6, 991.3, 924.8, 896.0, 934.3, 894.1, 959.8, 1068.9, 922.7, 914.4,
            1018.7, 989.6,
        ];
        let s = spec(MetricKind::Throughput, rel(-0.05));
        let v = judge(&s, &aligned(e.clone(), c.clone()), 0.05, 0);
        assert_eq!(v.test, "paired-log-ratio-t");
        assert_eq!(v.verdict, Verdict::Accepted, "{v:?}");
        let close = |a: f64, b: f64| (a - b).abs() <= 1e-9 * b.abs().max(1e-300);
        assert!(close(v.p_reject, 0.9999475353414807), "{}", v.p_reject);
        assert!(close(v.p_accept, 5.246465851925571e-05), "{}", v.p_accept);
        assert!(close(v.estimate, 0.02865100890658734), "{}", v.estimate);
        assert!((v.ci_low - 0.022044406909807357).abs() < 1e-8, "{}", v.ci_low);
        assert!((v.ci_high - 0.03521297984828453).abs() < 1e-8, "{}", v.ci_high);
        // The same data as unaligned samples goes to Welch (scipy: p_accept
        // 0.158), which cannot accept: burst-to-burst spread drowns a 3%
        // shortfall.
        let unpaired = judge(&s, &samples(e, c), 0.05, 0);
        assert_eq!(unpaired.test, "welch-t");
        assert_eq!(unpaired.verdict, Verdict::Inconclusive);
    }

    #[test]
    fn aligned_generic_samples_are_paired_by_ratio_or_difference_like_scipy() {
        // Per-step values of a PromQL query, a shared level swinging ±16%.
        // scipy 1.17.1 ttest_1samp on ln(E/C) vs ln(1.1) and on E - C vs 3.
        let c = vec![
            50.74, 61.88, 59.56, 45.78, 48.27, 44.98, 52.91, 49.94, 55.22, 33.87, 61.51,
            48.77, 54.12, 47.45, 47.0,
        ];
        let e = vec![
            53.22, 63.02, 61.26, 48.12, 50.23, 47.33, 57.36, 52.61, 57.97, 36.03, 65.49,
            51.45, 58.93, 49.56, 48.2,
        ];
        let close = |a: f64, b: f64, tol: f64| (a - b).abs() <= tol * b.abs();
        let v = judge(
            &spec(MetricKind::Samples, rel(0.10)),
            &aligned(e.clone(), c.clone()),
            0.05,
            0,
        );
        assert_eq!(
            (v.test.as_str(), v.verdict),
            ("paired-log-ratio-t", Verdict::Accepted)
        );
        assert!(close(v.p_accept, 8.212330440939936e-08, 1e-9), "{}", v.p_accept);
        assert!(close(v.p_reject, 0.9999999178766956, 1e-9), "{}", v.p_reject);
        assert!(close(v.estimate, 0.05113209878258004, 1e-9), "{}", v.estimate);
        assert!(close(v.ci_low, 0.04236150239195495, 1e-8), "{}", v.ci_low);
        assert!(close(v.ci_high, 0.05997649237395625, 1e-8), "{}", v.ci_high);
        // Unpaired, Welch cannot accept the same data (scipy: p 0.19).
        let w = judge(
            &spec(MetricKind::Samples, rel(0.10)),
            &samples(e.clone(), c.clone()),
            0.05,
            0,
        );
        assert_eq!((w.test.as_str(), w.verdict), ("welch-t", Verdict::Inconclusive));

        let abs = Tolerance::Absolute { points: 3.0 };
        let v = judge(
            &spec(MetricKind::Samples, abs),
            &aligned(e.clone(), c.clone()),
            0.05,
            0,
        );
        assert_eq!(v.test, "paired-difference-t");
        assert!(close(v.p_reject, 0.921594130336965, 1e-9), "{}", v.p_reject);
        assert!(close(v.p_accept, 0.07840586966303496, 1e-9), "{}", v.p_accept);
        assert!(close(v.estimate, 2.585333333333333, 1e-9));
        assert!(
            close(v.ci_low, 2.097179759044474, 1e-8)
                && close(v.ci_high, 3.0734869076221916, 1e-8)
        );
        assert_eq!(v.verdict, Verdict::Inconclusive, "the interval holds the margin 3");
        // Mirrored: "-3" means control - experiment must stay below 3.
        let v = judge(
            &spec(MetricKind::Samples, Tolerance::Absolute { points: -3.0 }),
            &aligned(c, e),
            0.05,
            0,
        );
        assert!(close(v.p_accept, 0.07840586966303496, 1e-9), "{}", v.p_accept);
        assert!(close(v.estimate, 2.585333333333333, 1e-9), "{}", v.estimate);
    }

    #[test]
    fn an_empty_experiment_window_falls_back_to_welch_and_rejects_the_collapse() {
        let s = spec(MetricKind::Throughput, rel(-0.05));
        let c: Vec<f64> = (0..12).map(|i| 1000.0 + (i % 3) as f64 * 20.0).collect();
        let mut e: Vec<f64> = c.iter().map(|v| v * 0.2).collect();
        e[3] = 0.0;
        let v = judge(&s, &aligned(e, c), 0.05, 0);
        assert_eq!(v.test, "welch-t");
        assert_eq!(v.verdict, Verdict::Rejected);
    }

    #[test]
    fn p99_is_judged_by_the_seeded_bootstrap() {
        let s = spec(MetricKind::LatencyQuantile(0.99), rel(0.2));
        // At the p99 gate (2000 per cohort); reproducibility for a seed is
        // covered in quantile.rs with cheaper data.
        let data = samples(latencies(2000, 2.0, 0), latencies(2000, 1.0, 1));
        let a = judge(&s, &data, 0.05, 42);
        assert_eq!(a.verdict, Verdict::Rejected, "{a:?}");
        assert!(a.reason.contains("seed 42"));
    }

    fn verdict(p_reject: f64, p_accept: f64, tested: bool) -> HypothesisVerdict {
        let v = if p_reject <= 0.05 {
            Verdict::Rejected
        } else if p_accept <= 0.05 {
            Verdict::Accepted
        } else {
            Verdict::Inconclusive
        };
        HypothesisVerdict {
            name: "h".into(),
            verdict: v,
            test: "t".into(),
            estimate: 0.0,
            ci_low: 0.0,
            ci_high: 0.0,
            margin: 0.1,
            p_reject,
            p_reject_adjusted: p_reject,
            p_accept,
            n_experiment: 100,
            n_control: 100,
            needed_n: None,
            critical: false,
            tested,
            reason: String::new(),
            scale: String::new(),
            clustering: None,
        }
    }

    #[test]
    fn holm_can_overturn_a_marginal_rejection_in_a_family() {
        let (vs, overall) = judge_experiment(
            vec![verdict(0.03, 0.9, true), verdict(0.5, 0.01, true)],
            0.05,
            false,
        );
        assert_eq!(vs[0].verdict, Verdict::Inconclusive);
        assert!((vs[0].p_reject_adjusted - 0.06).abs() < 1e-12);
        assert_eq!(overall, Verdict::Inconclusive);
        let (_, overall) = judge_experiment(
            vec![verdict(0.001, 0.9, true), verdict(0.5, 0.01, true)],
            0.05,
            false,
        );
        assert_eq!(overall, Verdict::Rejected);
    }

    #[test]
    fn acceptance_needs_every_hypothesis_and_an_abort_always_rejects() {
        let accepted = vec![verdict(0.9, 0.01, true), verdict(0.8, 0.02, true)];
        assert_eq!(judge_experiment(accepted.clone(), 0.05, false).1, Verdict::Accepted);
        assert_eq!(judge_experiment(accepted, 0.05, true).1, Verdict::Rejected);
        let mixed = vec![verdict(0.9, 0.01, true), verdict(1.0, 1.0, false)];
        assert_eq!(judge_experiment(mixed, 0.05, false).1, Verdict::Inconclusive);
        assert_eq!(judge_experiment(vec![], 0.05, false).1, Verdict::Inconclusive);
    }

    fn critical(mut v: HypothesisVerdict) -> HypothesisVerdict {
        v.critical = true;
        v
    }

    #[test]
    fn critical_hypotheses_decide_acceptance_and_any_rejection_still_rejects() {
        let accepted = verdict(0.9, 0.01, true);
        let inconclusive = verdict(0.6, 0.4, true);
        let rejected = verdict(0.001, 0.99, true);
        // A non-critical inconclusive one does not block a proven critical one.
        let (vs, overall) = judge_experiment(
            vec![critical(accepted.clone()), inconclusive.clone()],
            0.05,
            false,
        );
        assert_eq!(overall, Verdict::Accepted);
        assert_eq!(vs[1].verdict, Verdict::Inconclusive, "reported as it is");
        // A critical inconclusive one does.
        let (_, overall) = judge_experiment(
            vec![critical(inconclusive.clone()), accepted.clone()],
            0.05,
            false,
        );
        assert_eq!(overall, Verdict::Inconclusive);
        // A rejected non-critical one rejects the run.
        let (_, overall) =
            judge_experiment(vec![critical(accepted.clone()), rejected], 0.05, false);
        assert_eq!(overall, Verdict::Rejected);
        // And an abort rejects even when every critical one was accepted.
        let (_, overall) = judge_experiment(vec![critical(accepted)], 0.05, true);
        assert_eq!(overall, Verdict::Rejected);
    }
}
