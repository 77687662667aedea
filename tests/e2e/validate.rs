//! `chaos validate` through the binary: example experiments pass, every
//! invalid fixture produces exactly its paired diagnostics, and no input
//! makes it panic or hang.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::support::{chaos, repo_root};

fn toml_files(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .expect("read dir")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "toml"))
        .collect();
    v.sort();
    v
}

#[test]
fn every_example_experiment_validates() {
    let files = toml_files(&repo_root().join("experiments"));
    assert!(files.len() >= 3);
    let mut args = vec!["validate"];
    args.extend(files.iter().map(|p| p.to_str().expect("utf-8 path")));
    let out = chaos(&args);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}");
    assert!(stdout.contains("0 error(s)"), "{stdout}");
}

#[test]
fn scenarios_and_daemon_configs_are_recognised_and_checked_by_their_own_rules() {
    let files = toml_files(&repo_root().join("scenarios"));
    assert!(files.len() >= 2);
    let mut args = vec!["validate"];
    args.extend(files.iter().map(|p| p.to_str().expect("utf-8 path")));
    let out = chaos(&args);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}");

    let dir = tempfile::tempdir().unwrap();
    let gameday = dir.path().join("gd.toml");
    std::fs::write(
        &gameday,
        "[gameday]\nname = \"x\"\n\n[[step]]\nkind = \"experimnt\"\n",
    )
    .unwrap();
    let daemon = dir.path().join("d.toml");
    std::fs::write(
        &daemon,
        "[daemon]\nlisten = \"127.0.0.1:9464\"\n\n[[schedule]]\nname = \"a\"\n\
         experiment = \"../experiments/aa-no-fault.toml\"\ncron = \"0 */15 * * * 99\"\n",
    )
    .unwrap();
    let out = chaos(&["validate", gameday.to_str().unwrap(), daemon.to_str().unwrap()]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(2), "{stdout}");
    assert!(stdout.contains("gd.toml:5:8: error: unknown step kind"), "{stdout}");
    assert!(stdout.contains("did you mean \"experiment\""), "{stdout}");
    assert!(stdout.contains("d.toml:7:8: error: day-of-week field"), "{stdout}");
    // Judged as what they are, not as experiments.
    assert!(!stdout.contains("unknown section or key"), "{stdout}");
}

#[test]
fn every_invalid_fixture_produces_exactly_its_paired_diagnostics() {
    let dir = repo_root().join("tests/fixtures/invalid");
    let files = toml_files(&dir);
    assert!(files.len() >= 15, "need at least 15 fixtures, found {}", files.len());
    for file in files {
        let expected_path = file.with_extension("expected");
        let expected = std::fs::read_to_string(&expected_path)
            .unwrap_or_else(|e| panic!("{} has no .expected: {e}", file.display()));
        let out = chaos(&["validate", "--json", file.to_str().expect("utf-8")]);
        assert_eq!(out.status.code(), Some(2), "{} should exit 2", file.display());
        let diags: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout)
            .expect("validate --json prints a JSON array");
        let mut expected_errors = 0;
        for line in expected.lines().filter(|l| !l.trim().is_empty()) {
            // "LINE:COL: SEVERITY: fragment"
            let mut parts = line.splitn(4, ':');
            let (l, c, sev, frag) = (
                parts.next().and_then(|x| x.trim().parse::<u64>().ok()).expect("line"),
                parts.next().and_then(|x| x.trim().parse::<u64>().ok()).expect("col"),
                parts.next().map(str::trim).expect("severity"),
                parts.next().map(str::trim).expect("fragment"),
            );
            if sev == "error" {
                expected_errors += 1;
            }
            let found = diags.iter().any(|d| {
                d["line"] == l
                    && d["column"] == c
                    && d["severity"] == sev
                    && d["message"].as_str().is_some_and(|m| m.contains(frag))
                    && d["hint"].as_str().is_some_and(|h| !h.is_empty())
                    && d["file"].as_str().is_some_and(|f| f.ends_with(".toml"))
            });
            assert!(found, "{}: expected {line:?}, got {diags:#?}", file.display());
        }
        let errors = diags.iter().filter(|d| d["severity"] == "error").count();
        assert_eq!(errors, expected_errors, "{}: {diags:#?}", file.display());
    }
}

#[test]
fn text_output_names_file_line_column_and_hint() {
    let file = repo_root().join("tests/fixtures/invalid/08-unknown-metric.toml");
    let out = chaos(&["validate", file.to_str().expect("utf-8")]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout
            .contains("08-unknown-metric.toml:11:10: error: unknown metric \"thruput\""),
        "{stdout}"
    );
    assert!(stdout.contains("hint: did you mean \"throughput\"?"), "{stdout}");
}

#[test]
fn hostile_inputs_get_a_diagnostic_quickly_and_never_a_panic() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("empty.toml", Vec::new()),
        ("garbage.toml", (0..4096u32).map(|i| (i * 7919 % 251) as u8).collect()),
        ("huge.toml", vec![b'a'; 3 * 1024 * 1024]),
        (
            "deep.toml",
            format!("a = {}{}", "[".repeat(100_000), "]".repeat(100_000)).into_bytes(),
        ),
        (
            "long-line.toml",
            format!("[experiment]\nname = \"{}\"", "x".repeat(900_000)).into_bytes(),
        ),
    ];
    for (name, bytes) in cases {
        let path = dir.path().join(name);
        std::fs::write(&path, bytes).expect("write");
        let started = Instant::now();
        let out = chaos(&["validate", path.to_str().expect("utf-8")]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{name}: {stderr}");
        assert!(!stderr.contains("panicked"), "{name}: {stderr}");
        assert!(started.elapsed() < Duration::from_secs(10), "{name} took too long");
        assert!(String::from_utf8_lossy(&out.stdout).contains(": error: "), "{name}");
    }
    let out = chaos(&["validate", dir.path().to_str().expect("utf-8")]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stdout).contains("is a directory"));
    let out = chaos(&["validate", "/nonexistent/x.toml"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stdout).contains("cannot open file"));
}

#[test]
fn help_explains_validate_with_an_example() {
    let out = chaos(&["validate", "--help"]);
    assert_eq!(out.status.code(), Some(0));
    let s = String::from_utf8_lossy(&out.stdout);
    assert!(s.contains("chaos validate experiments/*.toml"), "{s}");
    let out = chaos(&["--help"]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("Exit codes"));
}

#[test]
fn every_subcommand_help_teaches_with_an_example() {
    for cmd in [
        "validate",
        "run",
        "gate",
        "analyze",
        "proxy",
        "kill",
        "inject",
        "recover",
        "report",
        "demo",
        "demo run",
        "demo fleet",
        "demo load",
    ] {
        let mut args: Vec<&str> = cmd.split(' ').collect();
        args.push("--help");
        let out = chaos(&args);
        let s = String::from_utf8_lossy(&out.stdout);
        assert_eq!(out.status.code(), Some(0), "{cmd} --help");
        // An example is a line that runs the command itself.
        assert!(
            s.lines().any(|l| l.trim_start().starts_with(&format!("chaos {cmd} "))),
            "{cmd} --help has no example:\n{s}"
        );
    }
}
