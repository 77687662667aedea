//! Harrell-Davis quantile estimates and a seeded percentile bootstrap of
//! ln HD_E(p) − ln HD_C(p) for tail-quantile hypotheses (Wilcox et al.).
//! The HD weights depend only on n and p, so they are computed once; each
//! bootstrap replicate is a multinomial count over the sorted sample
//! (counting sort), which keeps a replicate O(n) instead of O(n log n).

use rand::{Rng, SeedableRng};

use rand_chacha::ChaCha8Rng;

use super::special::beta_reg;

/// Harrell-Davis weights W_i = I_{i/n}(a,b) − I_{(i−1)/n}(a,b). For large
/// n only a window of ±12 standard deviations of Beta(a, b) around p is
/// evaluated (the weights outside are below 1e-30), which keeps a
/// million-sample estimate to a few thousand incomplete-beta calls.
pub fn hd_weights(n: usize, p: f64) -> Vec<f64> {
    let nf = n as f64;
    let a = p * (nf + 1.0);
    let b = (1.0 - p) * (nf + 1.0);
    let (first, last) = if n > 20_000 {
        let sd = (p * (1.0 - p) / (nf + 2.0)).sqrt();
        let lo = ((p - 12.0 * sd) * nf).floor().max(1.0) as usize;
        let hi = ((p + 12.0 * sd) * nf).ceil().min(nf) as usize;
        (lo, hi.max(lo))
    } else {
        (1, n)
    };
    let mut w = vec![0.0; n];
    let mut prev = if first > 1 { beta_reg(a, b, (first - 1) as f64 / nf) } else { 0.0 };
    for i in first..=last {
        let cur = if i == n { 1.0 } else { beta_reg(a, b, i as f64 / nf) };
        w[i - 1] = cur - prev;
        prev = cur;
    }
    w
}

/// Harrell-Davis estimate of the p-quantile of `sorted` (ascending).
pub fn harrell_davis(sorted: &[f64], p: f64) -> f64 {
    hd_weights(sorted.len(), p).iter().zip(sorted).map(|(w, x)| w * x).sum()
}

/// Precomputed HD weights restricted to the indices that matter (weights
/// below 1e-14 of the total are dropped, which for tail quantiles leaves a
/// short window).
struct WeightWindow {
    start: usize,
    weights: Vec<f64>,
}

impl WeightWindow {
    fn new(n: usize, p: f64) -> Self {
        let w = hd_weights(n, p);
        let keep = |v: &f64| *v > 1e-14;
        let start = w.iter().position(keep).unwrap_or(0);
        let end = w.iter().rposition(keep).map(|e| e + 1).unwrap_or(n);
        WeightWindow { start, weights: w[start..end].to_vec() }
    }

    /// HD of a resample described by `counts` (copies of each sorted value).
    fn apply(&self, sorted: &[f64], counts: &[u32]) -> f64 {
        // Walk the resample in order; position k in the resample gets
        // weight W_k.
        let end = self.start + self.weights.len();
        let mut k = 0usize;
        let mut acc = 0.0;
        for (v, &c) in sorted.iter().zip(counts) {
            if c == 0 {
                continue;
            }
            let next = k + c as usize;
            if next > self.start {
                let lo = k.max(self.start);
                let hi = next.min(end);
                if lo < hi {
                    let w: f64 =
                        self.weights[lo - self.start..hi - self.start].iter().sum();
                    acc += w * v;
                }
            }
            if next >= end {
                break;
            }
            k = next;
        }
        acc
    }
}

/// Result of a bootstrap of θ = ln HD_E(p) − ln HD_C(p).
#[derive(Debug, Clone)]
pub struct QuantileBootstrap {
    /// θ̂ from the full samples.
    pub estimate: f64,
    /// Bootstrap replicates θ*, sorted ascending.
    pub replicates: Vec<f64>,
}

impl QuantileBootstrap {
    /// q-quantile of the replicates (percentile method).
    pub fn percentile(&self, q: f64) -> f64 {
        let b = self.replicates.len();
        if b == 0 {
            return f64::NAN;
        }
        let pos = (q * (b - 1) as f64).clamp(0.0, (b - 1) as f64);
        let lo = pos.floor() as usize;
        let hi = pos.ceil() as usize;
        let frac = pos - lo as f64;
        self.replicates[lo] * (1.0 - frac) + self.replicates[hi] * frac
    }

    /// Bootstrap p-value of "θ ≤ m" (share of replicates ≤ m, +1 smoothed).
    pub fn p_at_most(&self, m: f64) -> f64 {
        let k = self.replicates.partition_point(|v| *v <= m);
        (k as f64 + 1.0) / (self.replicates.len() as f64 + 1.0)
    }

    /// Bootstrap p-value of "θ ≥ m".
    pub fn p_at_least(&self, m: f64) -> f64 {
        let k = self.replicates.len() - self.replicates.partition_point(|v| *v < m);
        (k as f64 + 1.0) / (self.replicates.len() as f64 + 1.0)
    }
}

/// Draws a multinomial resample of size n over n sorted values as counts.
/// Random words come from one bulk `fill` (much cheaper than a call per
/// index, especially in debug builds); each 64-bit word yields two indices
/// by Lemire's multiply-shift, whose bias (≤ n/2³² ≈ 5e-6 at n = 20,000) is
/// far below bootstrap noise.
fn resample_counts(
    rng: &mut ChaCha8Rng,
    n: usize,
    counts: &mut [u32],
    words: &mut Vec<u64>,
) {
    counts.iter_mut().for_each(|c| *c = 0);
    words.resize(n.div_ceil(2), 0);
    rng.fill(&mut words[..]);
    let pick = |half: u64| ((half * n as u64) >> 32) as usize;
    let mut left = n;
    for &w in words.iter() {
        counts[pick(w & 0xffff_ffff)] += 1;
        left -= 1;
        if left == 0 {
            break;
        }
        counts[pick(w >> 32)] += 1;
        left -= 1;
    }
}

/// Above this many values per cohort the bootstrap resamples a
/// log-bucketed histogram instead of the raw sample (STATISTICS.md §2).
pub const HISTOGRAM_ABOVE: usize = 20_000;
/// Relative width of a histogram bucket (0.2%): far below any tolerance.
const BUCKET_WIDTH: f64 = 0.002;

/// Binomial(n, p): inversion when n·min(p, 1−p) is small, otherwise the
/// normal approximation (n·p·q > ~30 here), which is ample for bootstrap
/// counts.
fn binomial(rng: &mut ChaCha8Rng, n: u64, p: f64) -> u64 {
    if n == 0 || p <= 0.0 {
        return 0;
    }
    if p >= 1.0 {
        return n;
    }
    if p > 0.5 {
        return n - binomial(rng, n, 1.0 - p);
    }
    let mean = n as f64 * p;
    if mean < 30.0 {
        let q = 1.0 - p;
        let u: f64 = rng.gen();
        let mut pk = (n as f64 * q.ln()).exp();
        let mut cdf = pk;
        let mut k = 0u64;
        while cdf < u && k < n {
            pk *= (n - k) as f64 / (k + 1) as f64 * p / q;
            k += 1;
            cdf += pk;
            if pk == 0.0 {
                break;
            }
        }
        k
    } else {
        let u1: f64 = rng.gen_range(f64::MIN_POSITIVE..1.0);
        let u2: f64 = rng.gen();
        let z = (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos();
        let draw = (mean + (mean * (1.0 - p)).sqrt() * z).round();
        draw.clamp(0.0, n as f64) as u64
    }
}

/// Draws resamples of one cohort as counts over sorted support values.
enum Resampler {
    /// Every original value is its own support point.
    Exact { n: usize, words: Vec<u64> },
    /// Log-bucketed histogram: support = bucket means, probabilities = shares.
    Histogram { n: u64, probs: Vec<f64> },
}

impl Resampler {
    /// Returns the resampler and the sorted support values.
    fn new(sorted: &[f64]) -> (Self, Vec<f64>) {
        if sorted.len() <= HISTOGRAM_ABOVE {
            return (
                Resampler::Exact { n: sorted.len(), words: Vec::new() },
                sorted.to_vec(),
            );
        }
        let step = BUCKET_WIDTH.ln_1p();
        let mut support = Vec::new();
        let mut probs = Vec::new();
        let n = sorted.len() as f64;
        let mut i = 0;
        while i < sorted.len() {
            let key = (sorted[i].ln() / step).floor();
            let mut j = i;
            let mut sum = 0.0;
            while j < sorted.len() && (sorted[j].ln() / step).floor() == key {
                sum += sorted[j];
                j += 1;
            }
            support.push(sum / (j - i) as f64);
            probs.push((j - i) as f64 / n);
            i = j;
        }
        (Resampler::Histogram { n: sorted.len() as u64, probs }, support)
    }

    fn draw(&mut self, rng: &mut ChaCha8Rng, counts: &mut [u32]) {
        match self {
            Resampler::Exact { n, words } => resample_counts(rng, *n, counts, words),
            Resampler::Histogram { n, probs } => {
                // Multinomial by sequential conditional binomials.
                let mut left = *n;
                let mut mass = 1.0f64;
                let last = probs.len() - 1;
                for (k, &pk) in probs.iter().enumerate() {
                    let c = if k == last || mass <= 0.0 {
                        left
                    } else {
                        binomial(rng, left, (pk / mass).clamp(0.0, 1.0))
                    };
                    counts[k] = c as u32;
                    left -= c;
                    mass -= pk;
                }
            }
        }
    }
}

/// Percentile bootstrap of the log ratio of Harrell-Davis p-quantiles.
/// Both samples must be positive (latencies) and sorted ascending. The
/// estimate always uses the full samples; above [`HISTOGRAM_ABOVE`] values
/// a cohort is resampled from its log-bucketed histogram.
pub fn bootstrap_log_quantile_ratio(
    experiment_sorted: &[f64],
    control_sorted: &[f64],
    p: f64,
    replicates: usize,
    seed: u64,
) -> QuantileBootstrap {
    let we = WeightWindow::new(experiment_sorted.len(), p);
    let wc = WeightWindow::new(control_sorted.len(), p);
    let ones_e = vec![1u32; experiment_sorted.len()];
    let ones_c = vec![1u32; control_sorted.len()];
    let estimate = we.apply(experiment_sorted, &ones_e).ln()
        - wc.apply(control_sorted, &ones_c).ln();
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let (mut re, support_e) = Resampler::new(experiment_sorted);
    let (mut rc, support_c) = Resampler::new(control_sorted);
    let mut ce = vec![0u32; support_e.len()];
    let mut cc = vec![0u32; support_c.len()];
    let mut reps = Vec::with_capacity(replicates);
    for _ in 0..replicates {
        re.draw(&mut rng, &mut ce);
        rc.draw(&mut rng, &mut cc);
        let theta = we.apply(&support_e, &ce).ln() - wc.apply(&support_c, &cc).ln();
        if theta.is_finite() {
            reps.push(theta);
        }
    }
    reps.sort_unstable_by(f64::total_cmp);
    QuantileBootstrap { estimate, replicates: reps }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hd_weights_sum_to_one_and_estimate_the_median_of_a_symmetric_sample() {
        let w = hd_weights(11, 0.5);
        assert!((w.iter().sum::<f64>() - 1.0).abs() < 1e-12);
        let x: Vec<f64> = (1..=11).map(f64::from).collect();
        assert!((harrell_davis(&x, 0.5) - 6.0).abs() < 1e-9);
    }

    #[test]
    fn windowed_weights_for_large_n_still_sum_to_one() {
        let w = hd_weights(100_000, 0.99);
        assert!((w.iter().sum::<f64>() - 1.0).abs() < 1e-9);
        assert_eq!(w[0], 0.0);
    }

    #[test]
    fn hd_p90_lies_between_the_neighbouring_order_statistics() {
        let x: Vec<f64> = (1..=100).map(f64::from).collect();
        let q = harrell_davis(&x, 0.9);
        assert!(q > 88.0 && q < 92.0, "q = {q}");
    }

    #[test]
    fn bootstrap_is_reproducible_for_a_seed_and_centred_on_the_estimate() {
        let e: Vec<f64> = (1..=400).map(|i| f64::from(i) * 1.2).collect();
        let c: Vec<f64> = (1..=400).map(f64::from).collect();
        let a = bootstrap_log_quantile_ratio(&e, &c, 0.9, 300, 7);
        let b = bootstrap_log_quantile_ratio(&e, &c, 0.9, 300, 7);
        assert_eq!(a.replicates, b.replicates);
        assert!((a.estimate - 1.2f64.ln()).abs() < 1e-9);
        assert!(a.percentile(0.05) < a.estimate && a.estimate < a.percentile(0.95));
        assert!(a.p_at_most(0.0) < 0.01);
    }

    #[test]
    fn large_cohorts_bootstrap_a_histogram_with_a_similar_spread() {
        // 30,000 values per cohort: above the histogram threshold.
        let x: Vec<f64> = (1..=30_000).map(|i| 10.0 + f64::from(i % 977)).collect();
        let mut x = x;
        x.sort_unstable_by(f64::total_cmp);
        let b = bootstrap_log_quantile_ratio(&x, &x, 0.99, 200, 3);
        assert_eq!(b.estimate, 0.0);
        let (lo, hi) = (b.percentile(0.05), b.percentile(0.95));
        assert!(lo < 0.0 && hi > 0.0 && hi - lo < 0.05, "[{lo}, {hi}]");
    }

    #[test]
    fn binomial_draws_have_the_right_mean() {
        let mut rng = ChaCha8Rng::seed_from_u64(9);
        for (n, p) in [(100u64, 0.05), (100_000, 0.3), (50, 0.9)] {
            let draws = 400;
            let sum: u64 = (0..draws).map(|_| binomial(&mut rng, n, p)).sum();
            let mean = sum as f64 / draws as f64;
            let sd = (n as f64 * p * (1.0 - p) / draws as f64).sqrt();
            assert!((mean - n as f64 * p).abs() < 5.0 * sd, "n={n} p={p} mean={mean}");
        }
    }
}
