//! Holm's step-down correction for a family of REJECT p-values.

/// Holm-adjusted p-values, in the input order:
/// p̃₍ᵢ₎ = max_{j≤i} min(1, (m−j+1)·p₍ⱼ₎). Reject where p̃ ≤ α.
pub fn holm_adjust(p: &[f64]) -> Vec<f64> {
    let m = p.len();
    let mut order: Vec<usize> = (0..m).collect();
    order.sort_by(|&a, &b| p[a].total_cmp(&p[b]));
    let mut adjusted = vec![1.0; m];
    let mut running = 0.0f64;
    for (rank, &idx) in order.iter().enumerate() {
        let v = ((m - rank) as f64 * p[idx]).min(1.0);
        running = running.max(v);
        adjusted[idx] = running;
    }
    adjusted
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn adjusts_like_the_textbook_example() {
        // statsmodels multipletests([0.01, 0.04, 0.03, 0.005], method="holm")
        let a = holm_adjust(&[0.01, 0.04, 0.03, 0.005]);
        let expect = [0.03, 0.06, 0.06, 0.02];
        for (x, y) in a.iter().zip(expect) {
            assert!((x - y).abs() < 1e-12, "{a:?}");
        }
    }

    #[test]
    fn adjusted_values_are_monotone_and_capped() {
        let a = holm_adjust(&[0.9, 0.8, 0.001]);
        assert_eq!(a[0], 1.0);
        assert!(a[2] <= a[1] && a[1] <= a[0]);
        assert!(holm_adjust(&[]).is_empty());
    }
}
