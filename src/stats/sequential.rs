//! Sequential abort monitor: the normal-mixture SPRT (Johari-Pekelis-Walsh
//! mSPRT) with an always-valid one-sided p-value, consulted after every
//! batch. Peeking at a fixed-n test after every batch inflates false alarms
//! (34% in the design's simulation); this rule keeps them ≤ α_abort at any
//! stopping time. See STATISTICS.md §6.

use super::Counts;

/// What the monitor says after a batch.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
#[serde(tag = "decision", rename_all = "kebab-case")]
pub enum AbortDecision {
    /// Keep going. `p_value` is the always-valid p so far, `estimate` θ̂.
    Continue { p_value: f64, estimate: f64 },
    /// Stop and revert: the experiment is significantly beyond the abort margin.
    Abort { p_value: f64, estimate: f64, reason: String },
}

impl AbortDecision {
    pub fn is_abort(&self) -> bool {
        matches!(self, AbortDecision::Abort { .. })
    }
}

/// Burn-in before any statistical abort (requests per cohort, events).
pub const BURN_IN_REQUESTS: u64 = 1000;
pub const BURN_IN_EVENTS: u64 = 5;

#[derive(Debug, Clone, Copy, Default)]
struct Welford {
    n: u64,
    mean: f64,
    m2: f64,
}

impl Welford {
    fn push(&mut self, x: f64) {
        self.n += 1;
        let d = x - self.mean;
        self.mean += d / self.n as f64;
        self.m2 += d * (x - self.mean);
    }

    fn var(&self) -> f64 {
        if self.n > 1 {
            self.m2 / (self.n - 1) as f64
        } else {
            f64::NAN
        }
    }
}

#[derive(Debug, Clone)]
enum Kind {
    Rate,
    LogLatency { experiment: Welford, control: Welford },
}

/// One monitored hypothesis (create one per metric; k = how many).
#[derive(Debug, Clone)]
pub struct AbortMonitor {
    kind: Kind,
    margin: f64,
    threshold: f64,
    rho: f64,
    p_plus: f64,
    looks: u64,
}

/// ρ tuned so the boundary is tightest at information I* (confseq best_rho).
fn best_rho(expected_information: f64, alpha: f64) -> f64 {
    let l = 2.0 * (1.0 / alpha).ln();
    (expected_information / (l + (1.0 + l).ln())).max(f64::MIN_POSITIVE)
}

impl AbortMonitor {
    fn new(kind: Kind, margin: f64, alpha_abort: f64, k: usize, info: f64) -> Self {
        let k = k.max(1) as f64;
        let threshold = alpha_abort / k;
        AbortMonitor {
            kind,
            margin,
            threshold,
            rho: best_rho(info.max(1e-12), threshold),
            p_plus: 1.0,
            looks: 0,
        }
    }

    /// Error-rate monitor: abort when p_E − p_C is significantly above
    /// `abort_margin_points` (a fraction: 0.01 = 1 pp). `expected_information`
    /// is 1/Var(θ̂) expected at about a quarter of the planned duration.
    pub fn for_rate(
        abort_margin_points: f64,
        alpha_abort: f64,
        k: usize,
        expected_information: f64,
    ) -> Self {
        Self::new(Kind::Rate, abort_margin_points, alpha_abort, k, expected_information)
    }

    /// Latency monitor on mean ln(latency): abort when the log ratio is
    /// significantly above `abort_margin_log` (ln(1 + r)).
    pub fn for_log_latency(
        abort_margin_log: f64,
        alpha_abort: f64,
        k: usize,
        expected_information: f64,
    ) -> Self {
        Self::new(
            Kind::LogLatency {
                experiment: Welford::default(),
                control: Welford::default(),
            },
            abort_margin_log,
            alpha_abort,
            k,
            expected_information,
        )
    }

    /// Information a rate monitor will have with n per cohort at rate p
    /// (helper for sizing `expected_information`).
    pub fn rate_information(p: f64, n_per_cohort: f64) -> f64 {
        n_per_cohort / (2.0 * p * (1.0 - p)).max(1e-12)
    }

    /// How many looks have been taken.
    pub fn looks(&self) -> u64 {
        self.looks
    }

    /// Feed cumulative counts (events/total so far per cohort).
    pub fn update_counts(
        &mut self,
        experiment: Counts,
        control: Counts,
    ) -> AbortDecision {
        self.update_counts_keyed(experiment, control, (1.0, 1.0))
    }

    /// [`update_counts`] when requests of one key are correlated: each
    /// cohort's plug-in variance is multiplied by its design effect (≥ 1,
    /// from the per-key sums, `cluster.rs`), so V̂ is the per-key variance
    /// and I = 1/V̂ the information the keys really carry.
    ///
    /// [`update_counts`]: AbortMonitor::update_counts
    pub fn update_counts_keyed(
        &mut self,
        experiment: Counts,
        control: Counts,
        (de, dc): (f64, f64),
    ) -> AbortDecision {
        self.looks += 1;
        let tilde = |c: Counts| (c.events as f64 + 1.0) / (c.total as f64 + 2.0);
        let (ne, nc) = (experiment.total as f64, control.total as f64);
        if experiment.total == 0 || control.total == 0 {
            return AbortDecision::Continue { p_value: self.p_plus, estimate: 0.0 };
        }
        let theta = experiment.events as f64 / ne - control.events as f64 / nc;
        let (te, tc) = (tilde(experiment), tilde(control));
        let v = de.max(1.0) * te * (1.0 - te) / ne + dc.max(1.0) * tc * (1.0 - tc) / nc;
        let burned_in = experiment.total.min(control.total) >= BURN_IN_REQUESTS
            && experiment.events + control.events >= BURN_IN_EVENTS;
        self.step(theta, v, burned_in, "error rate", "pp", 100.0)
    }

    /// Feed new latencies only (positive values, any consistent unit).
    /// Non-positive or non-finite values are ignored. On a rate monitor
    /// this is a no-op that answers Continue.
    pub fn update_latencies(
        &mut self,
        experiment_batch: &[f64],
        control_batch: &[f64],
    ) -> AbortDecision {
        self.update_latencies_keyed(experiment_batch, control_batch, (1.0, 1.0))
    }

    /// [`update_latencies`] with per-cohort design effects of mean
    /// ln(latency) (≥ 1), as for [`update_counts_keyed`].
    ///
    /// [`update_latencies`]: AbortMonitor::update_latencies
    /// [`update_counts_keyed`]: AbortMonitor::update_counts_keyed
    pub fn update_latencies_keyed(
        &mut self,
        experiment_batch: &[f64],
        control_batch: &[f64],
        (de, dc): (f64, f64),
    ) -> AbortDecision {
        self.looks += 1;
        let Kind::LogLatency { experiment, control } = &mut self.kind else {
            return AbortDecision::Continue { p_value: self.p_plus, estimate: f64::NAN };
        };
        for &x in experiment_batch.iter().filter(|x| x.is_finite() && **x > 0.0) {
            experiment.push(x.ln());
        }
        for &x in control_batch.iter().filter(|x| x.is_finite() && **x > 0.0) {
            control.push(x.ln());
        }
        let (e, c) = (*experiment, *control);
        if e.n < 2 || c.n < 2 {
            return AbortDecision::Continue { p_value: self.p_plus, estimate: f64::NAN };
        }
        let theta = e.mean - c.mean;
        let v = de.max(1.0) * e.var() / e.n as f64 + dc.max(1.0) * c.var() / c.n as f64;
        let burned_in = e.n.min(c.n) >= BURN_IN_REQUESTS;
        self.step(theta, v, burned_in, "log latency ratio", "", 1.0)
    }

    fn step(
        &mut self,
        theta: f64,
        v: f64,
        burned_in: bool,
        what: &str,
        unit: &str,
        scale: f64,
    ) -> AbortDecision {
        if burned_in && v > 0.0 && v.is_finite() && theta > self.margin {
            let info = 1.0 / v;
            let rho = self.rho;
            let d = theta - self.margin;
            let ln_lambda = 0.5 * (rho / (info + rho)).ln()
                + info * info * d * d / (2.0 * (info + rho));
            let p = (-ln_lambda).exp().min(1.0);
            self.p_plus = self.p_plus.min(p);
        }
        if self.p_plus <= self.threshold {
            AbortDecision::Abort {
                p_value: self.p_plus,
                estimate: theta,
                reason: format!(
                    "{what} difference {:.4}{unit} is significantly above the abort margin \
                     {:.4}{unit} (always-valid p = {:.2e} <= {:.2e})",
                    theta * scale,
                    self.margin * scale,
                    self.p_plus,
                    self.threshold
                ),
            }
        } else {
            AbortDecision::Continue { p_value: self.p_plus, estimate: theta }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn never_aborts_during_burn_in() {
        let mut m = AbortMonitor::for_rate(0.001, 0.01, 1, 1e5);
        let d = m.update_counts(Counts::new(500, 900), Counts::new(0, 900));
        assert!(!d.is_abort());
    }

    #[test]
    fn aborts_on_an_overwhelming_error_rate_and_stays_aborted() {
        let mut m = AbortMonitor::for_rate(0.01, 0.01, 1, 1e5);
        let d = m.update_counts(Counts::new(300, 2000), Counts::new(20, 2000));
        assert!(d.is_abort(), "{d:?}");
        // p⁺ is a running minimum: a calmer later look cannot un-abort.
        let d = m.update_counts(Counts::new(300, 200000), Counts::new(2000, 200000));
        assert!(d.is_abort());
    }

    #[test]
    fn latency_monitor_aborts_on_a_doubling_but_not_on_equal_cohorts() {
        let e: Vec<f64> = (0..3000).map(|i| 20.0 + (i % 17) as f64).collect();
        let c: Vec<f64> = (0..3000).map(|i| 10.0 + (i % 17) as f64 / 2.0).collect();
        let mut m = AbortMonitor::for_log_latency(0.2f64.ln_1p(), 0.01, 2, 1e4);
        assert!(m.update_latencies(&e, &c).is_abort());
        let mut same = AbortMonitor::for_log_latency(0.2f64.ln_1p(), 0.01, 2, 1e4);
        assert!(!same.update_latencies(&c, &c).is_abort());
    }
}
