//! The verdict `benches/proxy.sh` prints per goal (its `goal_verdict`
//! shell function, run by bash as the benchmark runs it): the confidence
//! interval for the median of per-round ratios, its coverage, and met /
//! missed / not resolved.

use std::process::Command;

/// Runs `goal_verdict A B OP GOAL` from the benchmark script.
fn goal_verdict(a: &[f64], b: &[f64], op: &str, goal: f64) -> String {
    let join = |v: &[f64]| v.iter().map(f64::to_string).collect::<Vec<_>>().join(" ");
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/benches/proxy.sh");
    let out = Command::new("bash")
        .arg("-c")
        .arg(r#"eval "$(sed -n '/^goal_verdict() {/,/^}/p' "$0")" && goal_verdict "$1" "$2" "$3" "$4""#)
        .args([script, &join(a), &join(b), op, &goal.to_string()])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

fn ones(n: usize) -> Vec<f64> {
    vec![1.0; n]
}

#[test]
fn ten_rounds_use_the_second_smallest_and_largest_ratio_at_98_percent() {
    // Ratios 1.1 .. 2.0: P(Bin(10, 1/2) <= 1) = 11/1024, coverage 97.9 %.
    let a: Vec<f64> = (11..=20).map(|i| f64::from(i) / 10.0).collect();
    let v = goal_verdict(&a, &ones(10), "ge", 1.05);
    assert!(v.starts_with("met "), "{v}");
    assert!(v.contains("98% interval for their median 1.200 to 1.900"), "{v}");
    assert!(v.contains("10 of 10 rounds"), "{v}");
    let v = goal_verdict(&a, &ones(10), "le", 1.00);
    assert!(v.starts_with("missed "), "{v}");
    assert!(v.contains("0 of 10 rounds"), "{v}");
}

#[test]
fn an_interval_that_straddles_the_goal_is_not_resolved() {
    let a = [1.0, 1.01, 1.02, 0.99, 0.98, 1.03, 1.04, 0.97, 1.0, 1.01];
    let v = goal_verdict(&a, &ones(10), "le", 1.00);
    assert!(v.starts_with("not resolved "), "{v}");
    assert!(v.contains("0.980 to 1.030"), "{v}");
    assert!(v.contains("5 of 10 rounds"), "{v}");
}

#[test]
fn twenty_rounds_use_the_sixth_ratio_from_each_end_at_96_percent() {
    // P(Bin(20, 1/2) <= 5) = 21700/1048576, coverage 95.9 %; k = 7 would
    // cover only 88.5 %.
    let a: Vec<f64> = (1..=20).map(f64::from).collect();
    let b = vec![10.0; 20];
    let v = goal_verdict(&a, &b, "ge", 1.05);
    assert!(v.contains("96% interval for their median 0.600 to 1.500"), "{v}");
    assert!(v.starts_with("not resolved "), "{v}");
}

#[test]
fn paired_ratios_divide_round_by_round() {
    // Each round doubles its own baseline: a swing between rounds (10 to
    // 40) must not widen the interval.
    let b = [10.0, 40.0, 20.0, 30.0, 10.0];
    let a: Vec<f64> = b.iter().map(|x| x * 2.0).collect();
    let v = goal_verdict(&a, &b, "ge", 1.05);
    assert!(v.starts_with("met (per-round ratios 2.000 to 2.000"), "{v}");
    assert!(v.contains("94% interval"), "{v}");
}
