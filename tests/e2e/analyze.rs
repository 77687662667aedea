//! `chaos analyze` end to end: scipy reference vectors checked through the
//! CLI (files written to a temp dir, `--json` parsed back), input errors,
//! hypothesis verdicts and exit codes.

use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::support::{chaos, repo_root};

fn vectors() -> Value {
    let path = repo_root().join("tests/vectors/stats_vectors.json");
    let text = std::fs::read_to_string(&path).expect("read committed vectors");
    serde_json::from_str(&text).expect("vectors are JSON")
}

/// Writes a cohort argument: sample arrays become files, "E/T" strings
/// are written to a file too (the literal form is tested separately).
fn write_cohort(dir: &Path, name: &str, v: &Value) -> PathBuf {
    let path = dir.join(name);
    let text = match v {
        Value::Array(xs) => {
            let mut s = String::from("# written by tests/e2e/analyze.rs\n");
            for x in xs {
                s.push_str(&x.to_string());
                s.push('\n');
            }
            s
        }
        Value::String(s) => format!("{s}\n"),
        other => panic!("unexpected cohort {other}"),
    };
    std::fs::write(&path, text).expect("write cohort file");
    path
}

fn run_json(args: &[&str]) -> (i32, Value) {
    let out = chaos(args);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let json = serde_json::from_str(stdout.trim()).unwrap_or_else(|e| {
        panic!(
            "bad JSON ({e}) from {args:?}: stdout {stdout:?} stderr {:?}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (out.status.code().unwrap_or(-1), json)
}

fn close(got: &Value, want: &Value, tol: f64) -> Result<(), String> {
    match (got, want) {
        (Value::Null, Value::Null) => Ok(()),
        (g, w) => {
            let (g, w) = (
                g.as_f64().ok_or(format!("got {g}, want {w}"))?,
                w.as_f64().ok_or(format!("got {g}, want {w}"))?,
            );
            let err = if w == 0.0 { g.abs() } else { ((g - w) / w).abs() };
            if err <= tol {
                Ok(())
            } else {
                Err(format!("got {g:e}, want {w:e} (relative error {err:e} > {tol:e})"))
            }
        }
    }
}

#[test]
fn every_scipy_reference_vector_is_reproduced_through_the_cli() {
    let v = vectors();
    let cases = v["cases"].as_array().expect("cases array");
    assert!(cases.len() >= 40, "need at least 40 reference cases, have {}", cases.len());
    let dir = tempfile::tempdir().expect("temp dir");
    let mut failures = Vec::new();
    let mut tiny = 0;
    for (i, case) in cases.iter().enumerate() {
        let name = case["name"].as_str().expect("name");
        let e = write_cohort(dir.path(), &format!("e{i}.txt"), &case["experiment"]);
        let c = write_cohort(dir.path(), &format!("c{i}.txt"), &case["control"]);
        let (e, c) = (e.to_str().expect("utf8 path"), c.to_str().expect("utf8 path"));
        let confidence = case["confidence"].as_f64().unwrap_or(0.95).to_string();
        let mut args = vec!["analyze", "--json", "--experiment", e, "--control", c];
        let kind = case["kind"].as_str().expect("kind");
        if kind == "test" {
            let test = case["test"].as_str().expect("test");
            args.extend([
                "--test",
                test,
                "--alternative",
                case["alternative"].as_str().expect("alternative"),
                "--confidence",
                &confidence,
            ]);
        } else {
            args.extend([
                "--hypothesis",
                case["hypothesis"].as_str().expect("hypothesis"),
            ]);
        }
        let (code, got) = run_json(&args);
        if kind == "test" && code != 0 {
            failures.push(format!("{name}: exit {code}"));
            continue;
        }
        let tol = if case["test"] == "fisher" { 1e-8 } else { 1e-9 };
        for (key, want) in case["expect"].as_object().expect("expect object") {
            if key == "statistic_text" {
                if &got[key] != want {
                    failures.push(format!("{name}: {key} {} != {want}", got[key]));
                }
                continue;
            }
            if key == "p_value" && want.as_f64().is_some_and(|p| p > 0.0 && p < 1e-50) {
                tiny += 1;
            }
            if let Err(msg) = close(&got[key], want, tol) {
                failures.push(format!("{name}: {key}: {msg}"));
            }
        }
        if kind == "test" {
            for key in ["test", "alternative", "p_value", "n_experiment", "n_control"] {
                if got.get(key).is_none() {
                    failures.push(format!("{name}: JSON lacks {key}"));
                }
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} mismatches:\n{}",
        failures.len(),
        failures.join("\n")
    );
    assert!(tiny >= 3, "vectors should include p-values below 1e-50 (found {tiny})");
}

#[test]
fn rate_tests_accept_literal_counts_and_encode_an_infinite_odds_ratio() {
    let (code, got) = run_json(&[
        "analyze",
        "--test",
        "fisher",
        "--alternative",
        "greater",
        "--experiment",
        "5/100",
        "--control",
        "0/100",
        "--json",
    ]);
    assert_eq!(code, 0);
    assert_eq!(got["statistic"], Value::Null);
    assert_eq!(got["statistic_text"], "inf");
    assert!(got["p_value"].as_f64().unwrap() < 0.05);
}

#[test]
fn bad_input_names_the_file_and_line_and_exits_2() {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good.txt");
    std::fs::write(&good, "1\n2\n3\n").unwrap();
    let bad = dir.path().join("bad.txt");
    std::fs::write(&bad, "# header\n1.5\n\n2.5 # fine\nfast\n").unwrap();
    let empty = dir.path().join("empty.txt");
    std::fs::write(&empty, "# only a comment\n\n").unwrap();
    let (g, b, e) =
        (good.to_str().unwrap(), bad.to_str().unwrap(), empty.to_str().unwrap());

    let out =
        chaos(&["analyze", "--test", "mann-whitney", "--experiment", b, "--control", g]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("bad.txt:5") && err.contains("fast"), "stderr: {err}");

    let out = chaos(&["analyze", "--test", "welch", "--experiment", g, "--control", e]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no numbers"));

    for (counts, needle) in
        [("3/0", "total is 0"), ("11/10", "exceed"), ("x/10", "whole")]
    {
        let file = dir.path().join("counts.txt");
        std::fs::write(&file, format!("{counts}\n")).unwrap();
        let f = file.to_str().unwrap();
        let out = chaos(&[
            "analyze",
            "--test",
            "fisher",
            "--experiment",
            f,
            "--control",
            "1/10",
        ]);
        assert_eq!(out.status.code(), Some(2), "{counts}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(needle) && err.contains("counts.txt:1"), "stderr: {err}");
    }

    let out = chaos(&[
        "analyze",
        "--test",
        "fisher",
        "--experiment",
        "nope.txt",
        "--control",
        "1/2",
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("nope.txt"));
}

fn write_lines(dir: &Path, name: &str, xs: impl Iterator<Item = f64>) -> String {
    let path = dir.join(name);
    let text: String = xs.map(|x| format!("{x}\n")).collect();
    std::fs::write(&path, text).unwrap();
    path.to_str().unwrap().to_string()
}

#[test]
fn hypotheses_print_verdicts_and_map_them_to_exit_codes() {
    let dir = tempfile::tempdir().unwrap();
    // Deterministic spread-out latencies: control around 100 ms.
    let base = |i: usize| 80.0 + ((i * 37) % 41) as f64;
    let ctl = write_lines(dir.path(), "ctl.txt", (0..400).map(base));
    let same = write_lines(dir.path(), "same.txt", (0..400).map(|i| base(i + 7)));
    let slow = write_lines(dir.path(), "slow.txt", (0..400).map(|i| 1.5 * base(i)));
    let few = write_lines(dir.path(), "few.txt", (0..8).map(base));

    let accepted = chaos(&[
        "analyze",
        "--hypothesis",
        "latency <= +10%",
        "--experiment",
        &same,
        "--control",
        &ctl,
    ]);
    let text = String::from_utf8_lossy(&accepted.stdout);
    assert_eq!(accepted.status.code(), Some(0), "{text}");
    assert!(text.contains("ACCEPTED") && text.contains("interval"), "{text}");

    let rejected = chaos(&[
        "analyze",
        "--hypothesis",
        "latency <= +10%",
        "--experiment",
        &slow,
        "--control",
        &ctl,
    ]);
    assert_eq!(rejected.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&rejected.stdout).contains("REJECTED"));

    let (code, v) = run_json(&[
        "analyze",
        "--hypothesis",
        "latency <= +10%",
        "--experiment",
        &few,
        "--control",
        &ctl,
        "--json",
    ]);
    assert_eq!(code, 4);
    assert_eq!(v["verdict"], "inconclusive");
    assert_eq!(v["needed_n"], 20);

    let (code, v) = run_json(&[
        "analyze",
        "--hypothesis",
        "error_rate <= +0.5pp",
        "--experiment",
        "52/10000",
        "--control",
        "40/10000",
        "--json",
    ]);
    assert_eq!(code, 0, "{v}");
    assert_eq!(v["test"], "newcombe");
    assert!(v["ci_low"].as_f64().unwrap() < v["estimate"].as_f64().unwrap());

    let (code, v) = run_json(&[
        "analyze",
        "--hypothesis",
        "p99 <= +20%",
        "--experiment",
        &slow,
        "--control",
        &ctl,
        "--json",
    ]);
    assert_eq!(code, 4, "400 requests are below the p99 gate of 2000: {v}");
    assert_eq!(v["needed_n"], 2000);

    let out = chaos(&[
        "analyze",
        "--hypothesis",
        "latency >= -10%",
        "--experiment",
        &same,
        "--control",
        &ctl,
    ]);
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn paired_throughput_windows_accept_what_welch_cannot() {
    // Twelve aligned windows whose shared traffic level swings; the
    // experiment runs 3% below control. scipy 1.17.1 on ln(E/C) against
    // ln(0.95): p_accept 5.246465851925571e-05 (Welch on the same data:
    // 0.158, inconclusive).
    let dir = tempfile::tempdir().unwrap();
    let c = [
        1001.2, 1014.4, 977.8, 935.2, 950.7, 916.5, 985.7, 1092.9, 942.9, 948.1, 1026.0,
        1031.3,
    ];
    let e = [
        971.6, 991.3, 924.8, 896.0, 934.3, 894.1, 959.8, 1068.9, 922.7, 914.4, 1018.7,
        989.6,
    ];
    let ctl = write_lines(dir.path(), "c.txt", c.into_iter());
    let exp = write_lines(dir.path(), "e.txt", e.into_iter());
    let args = ["analyze", "--hypothesis", "throughput >= -5%", "--experiment", &exp];
    let (code, v) =
        run_json(&[&args[..], &["--control", &ctl, "--json", "--paired"]].concat());
    assert_eq!(code, 0, "{v}");
    assert_eq!(v["test"], "paired-log-ratio-t");
    close(&v["p_accept"], &serde_json::json!(5.246465851925571e-05), 1e-9).unwrap();
    let (code, v) = run_json(&[&args[..], &["--control", &ctl, "--json"]].concat());
    assert_eq!(code, 4, "{v}");
    assert_eq!(v["test"], "welch-t");

    let short = write_lines(dir.path(), "short.txt", c[1..].iter().copied());
    let out = chaos(&[&args[..], &["--control", &short, "--paired"]].concat());
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("one line per window"));
}

#[test]
fn analyze_help_explains_the_command_with_examples() {
    let out = chaos(&["analyze", "--help"]);
    assert_eq!(out.status.code(), Some(0));
    let text = String::from_utf8_lossy(&out.stdout);
    for needle in ["--test", "--hypothesis", "Examples", "ERRORS/TOTAL", "statistic_text"]
    {
        assert!(text.contains(needle), "help lacks {needle}: {text}");
    }
}

/// `KEY,VALUE` files for an A/A error rate where three users of the
/// experiment fail every request: 40 users per cohort, user i sending
/// 5 + i requests, a base error every 29th request everywhere.
fn keyed_error_files(dir: &Path, unique: bool) -> (String, String) {
    let write = |name: &str, failing: &[usize]| {
        let mut s = String::from("# user,failed\n");
        let mut n = 0usize;
        for user in 0..40usize {
            for r in 0..5 + user {
                n += 1;
                let failed = failing.contains(&user) || n.is_multiple_of(29);
                let key = if unique {
                    format!("{name}-{user}-{r}")
                } else {
                    format!("u{user}")
                };
                s.push_str(&format!("{key},{}\n", u8::from(failed)));
            }
        }
        let path = dir.join(name);
        std::fs::write(&path, s).expect("write keyed file");
        path.to_str().expect("utf-8").to_string()
    };
    (write("e.csv", &[30, 34, 38]), write("c.csv", &[]))
}

#[test]
fn per_key_input_judges_error_rates_by_user_and_reduces_to_per_request_without_repeats() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (e, c) = keyed_error_files(dir.path(), false);
    let hypothesis = "error_rate <= +1pp";
    let (code, v) = run_json(&[
        "analyze",
        "--hypothesis",
        hypothesis,
        "--experiment",
        &e,
        "--control",
        &c,
        "--json",
    ]);
    let k = &v["clustering"];
    // Per request the three failing users would reject...
    assert!(k["p_reject_per_request"].as_f64().expect("p") < 1e-6, "{v}");
    // ...per user they are three of forty, and the verdict is not a rejection.
    assert_eq!(k["keys_experiment"], 40, "{v}");
    assert!(k["design_effect_experiment"].as_f64().expect("deff") > 3.0, "{v}");
    assert_ne!(v["verdict"], "rejected", "{v}");
    assert_eq!(code, 4, "inconclusive: {v}");
    assert_eq!(v["test"], "per-key-wald-t", "{v}");

    // The same requests with every key once: exactly the per-request test.
    let (eu, cu) = keyed_error_files(dir.path(), true);
    let (code_u, u) = run_json(&[
        "analyze",
        "--hypothesis",
        hypothesis,
        "--experiment",
        &eu,
        "--control",
        &cu,
        "--json",
    ]);
    let counts = |v: &Value| format!("{}/{}", v["n_experiment"], v["n_control"]);
    let errors_e = std::fs::read_to_string(&eu).expect("read").matches(",1").count();
    let errors_c = std::fs::read_to_string(&cu).expect("read").matches(",1").count();
    let (code_p, plain) = run_json(&[
        "analyze",
        "--hypothesis",
        hypothesis,
        "--experiment",
        &format!("{errors_e}/{}", u["n_experiment"]),
        "--control",
        &format!("{errors_c}/{}", u["n_control"]),
        "--json",
    ]);
    assert_eq!(counts(&u), counts(&plain));
    assert_eq!((u["test"].clone(), code_u), (plain["test"].clone(), code_p));
    assert_eq!(u["p_reject"], plain["p_reject"], "{u}\n{plain}");
    assert_eq!(u["p_accept"], plain["p_accept"]);
    assert_eq!(code_u, 1, "per request, the failures reject: {u}");
    assert_eq!(u["clustering"]["design_effect_experiment"], 1.0);

    // Mixed formats and bad lines are input errors (exit 2) naming the file.
    let plain_file = write_lines(dir.path(), "plain.txt", [1.0, 2.0].into_iter());
    let out = chaos(&[
        "analyze",
        "--hypothesis",
        "latency <= +10%",
        "--experiment",
        &e,
        "--control",
        &plain_file,
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("must both be KEY,VALUE"));
    let bad = dir.path().join("bad.csv");
    std::fs::write(&bad, "u1,0\nu2,2\n").expect("write");
    let out = chaos(&[
        "analyze",
        "--hypothesis",
        hypothesis,
        "--experiment",
        bad.to_str().expect("utf-8"),
        "--control",
        &c,
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("KEY,0 (ok) or KEY,1"),
        "{out:?}"
    );
}
