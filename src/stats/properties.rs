//! Property tests over random inputs: p-values stay in [0, 1], two-sided
//! p-values are twice the smaller tail, and swapping cohorts swaps the
//! alternatives.

use proptest::prelude::*;

use super::*;

fn sample() -> impl Strategy<Value = Vec<f64>> {
    // Small integer-valued samples produce plenty of ties.
    prop::collection::vec((0u32..50).prop_map(f64::from), 2..60)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    #[test]
    fn mann_whitney_p_values_are_probabilities_and_symmetric(e in sample(), c in sample()) {
        let g = mann_whitney_u(&e, &c, Alternative::Greater).unwrap();
        let l = mann_whitney_u(&e, &c, Alternative::Less).unwrap();
        let t = mann_whitney_u(&e, &c, Alternative::TwoSided).unwrap();
        for p in [g.p_value, l.p_value, t.p_value] {
            prop_assert!((0.0..=1.0).contains(&p));
        }
        prop_assert!((t.p_value - (2.0 * g.p_value.min(l.p_value)).min(1.0)).abs() < 1e-12);
        let swapped = mann_whitney_u(&c, &e, Alternative::Less).unwrap();
        prop_assert!((swapped.p_value - g.p_value).abs() < 1e-12);
    }

    #[test]
    fn welch_p_values_are_probabilities(e in sample(), c in sample()) {
        if let Ok(r) = welch_t(&e, &c, Alternative::TwoSided) {
            prop_assert!((0.0..=1.0).contains(&r.p_value));
        }
    }

    #[test]
    fn fisher_and_z_p_values_are_probabilities(
        ee in 0u64..60, et in 1u64..400, ce in 0u64..60, ct in 1u64..400,
    ) {
        let e = Counts::new(ee.min(et), et);
        let c = Counts::new(ce.min(ct), ct);
        for alt in [Alternative::TwoSided, Alternative::Greater, Alternative::Less] {
            let f = fisher_exact(e, c, alt).unwrap().p_value;
            let z = two_proportion_z(e, c, alt).unwrap().p_value;
            prop_assert!((0.0..=1.0).contains(&f), "fisher {f}");
            prop_assert!((0.0..=1.0).contains(&z), "z {z}");
        }
        let g = fisher_exact(e, c, Alternative::Greater).unwrap().p_value;
        let l = fisher_exact(e, c, Alternative::Less).unwrap().p_value;
        // The two one-sided tails overlap in the observed table.
        prop_assert!(g + l >= 1.0 - 1e-9);
    }
}
