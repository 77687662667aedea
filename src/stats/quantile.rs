//! Harrell-Davis quantile estimates and a seeded percentile bootstrap of
//! ln HD_E(p) − ln HD_C(p) for tail-quantile hypotheses (Wilcox et al.).
//! The HD weights depend only on n and p, so they are computed once; each
//! bootstrap replicate is a multinomial count over the sorted sample
//! (counting sort), which keeps a replicate O(n) instead of O(n log n).

use rand::{Rng, SeedableRng};

use rand_chacha::ChaCha8Rng;

use super::special::beta_reg;

/// Harrell-Davis weights W_i = I_{i/n}(a,b) − I_{(i−1)/n}(a,b).
pub fn hd_weights(n: usize, p: f64) -> Vec<f64> {
    let nf = n as f64;
    let a = p * (nf + 1.0);
    let b = (1.0 - p) * (nf + 1.0);
    let mut w = Vec::with_capacity(n);
    let mut prev = 0.0;
    for i in 1..=n {
        let cur = if i == n { 1.0 } else { beta_reg(a, b, i as f64 / nf) };
        w.push(cur - prev);
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

/// Percentile bootstrap of the log ratio of Harrell-Davis p-quantiles.
/// Both samples must be positive (latencies) and sorted ascending.
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
    let mut ce = vec![0u32; experiment_sorted.len()];
    let mut cc = vec![0u32; control_sorted.len()];
    let mut reps = Vec::with_capacity(replicates);
    let mut words = Vec::new();
    for _ in 0..replicates {
        resample_counts(&mut rng, experiment_sorted.len(), &mut ce, &mut words);
        resample_counts(&mut rng, control_sorted.len(), &mut cc, &mut words);
        let theta =
            we.apply(experiment_sorted, &ce).ln() - wc.apply(control_sorted, &cc).ln();
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
}
