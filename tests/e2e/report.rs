//! Report files checked the way their consumers read them: junit.xml by
//! xmllint against the committed JUnit XSD, result.json against its JSON
//! Schema, report.html rendered by headless Chromium into a PNG.

use std::path::{Path, PathBuf};
use std::process::Command;

use chaos::report::{self, sample, RunReport};
use serde_json::Value;

use crate::support::{repo_root, require_capability};

fn have(cmd: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {cmd}")])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

fn xmllint_validates(xml: &str) -> (bool, String) {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("junit.xml");
    std::fs::write(&file, xml).unwrap();
    let xsd = repo_root().join("tests/fixtures/junit/junit.xsd");
    let out = Command::new("xmllint")
        .arg("--noout")
        .arg("--schema")
        .arg(&xsd)
        .arg(&file)
        .output()
        .expect("run xmllint");
    (out.status.success(), String::from_utf8_lossy(&out.stderr).into_owned())
}

fn hostile_names() -> RunReport {
    let mut r = sample::latency_fault_run();
    r.experiment.name = "<exp> & \"friends\" ]]> 'x'".into();
    r.hypotheses[0].name = "p99 <= 10% \u{7} bell & ]]>".into();
    r.hypotheses[1].reason = "line one\nline two\ttabbed\r".into();
    r.faults[0].id = "a\"b".into();
    r
}

#[test]
fn junit_reports_validate_against_the_committed_xsd() {
    if !require_capability(have("xmllint"), "xmllint (apt-get install -y libxml2-utils)")
    {
        return;
    }
    let mut reverted_badly = sample::latency_fault_run();
    reverted_badly.faults[0].revert_error = Some("nft: No such file".into());
    let cases = [
        ("rejected", report::junit::render(&sample::latency_fault_run())),
        ("aborted", report::junit::render(&sample::aborted_run())),
        ("accepted", report::junit::render(&sample::accepted_run())),
        ("revert failed", report::junit::render(&reverted_badly)),
        ("hostile names", report::junit::render(&hostile_names())),
        (
            "game day",
            report::junit::render_suites(&[
                sample::accepted_run(),
                sample::aborted_run(),
                hostile_names(),
            ]),
        ),
    ];
    for (what, xml) in cases {
        let (ok, stderr) = xmllint_validates(&xml);
        assert!(ok, "{what}: junit.xml does not validate:\n{stderr}\n{xml}");
    }
}

#[test]
fn the_junit_xsd_rejects_a_malformed_report() {
    if !require_capability(have("xmllint"), "xmllint (apt-get install -y libxml2-utils)")
    {
        return;
    }
    let xml = report::junit::render(&sample::latency_fault_run()).replacen(
        "failures=\"1\"",
        "failures=\"one\"",
        1,
    );
    let (ok, stderr) = xmllint_validates(&xml);
    assert!(!ok, "a non-numeric failure count must not validate");
    assert!(stderr.contains("failures"), "{stderr}");
}

fn schema() -> Value {
    let text = std::fs::read_to_string(repo_root().join("schemas/result.schema.json"))
        .expect("read schemas/result.schema.json");
    serde_json::from_str(&text).expect("schema is JSON")
}

/// A small validator for the JSON Schema keywords result.schema.json uses
/// ($ref to $defs, type, enum, const, properties, required,
/// additionalProperties, items, prefixItems, minItems, maxItems, minimum,
/// anyOf). Unknown keywords fail loudly so the schema cannot silently use
/// something this check ignores. (The `jsonschema` crate would add a long
/// dependency tree to a 2-core build for this one test.)
fn validate(root: &Value, schema: &Value, v: &Value, path: &str, errs: &mut Vec<String>) {
    let Some(obj) = schema.as_object() else {
        errs.push(format!("{path}: schema is not an object"));
        return;
    };
    for key in obj.keys() {
        let known = [
            "$schema",
            "$id",
            "$ref",
            "$defs",
            "title",
            "description",
            "format",
            "type",
            "enum",
            "const",
            "properties",
            "required",
            "additionalProperties",
            "items",
            "prefixItems",
            "minItems",
            "maxItems",
            "minimum",
            "pattern",
            "anyOf",
        ];
        assert!(known.contains(&key.as_str()), "validator does not know keyword {key}");
    }
    if let Some(r) = obj.get("$ref").and_then(Value::as_str) {
        let name = r.strip_prefix("#/$defs/").expect("only local $defs refs");
        let target = &root["$defs"][name];
        assert!(target.is_object(), "dangling $ref {r}");
        validate(root, target, v, path, errs);
    }
    if let Some(t) = obj.get("type") {
        let types: Vec<&str> = match t {
            Value::String(s) => vec![s.as_str()],
            Value::Array(a) => a.iter().filter_map(Value::as_str).collect(),
            _ => panic!("bad type keyword at {path}"),
        };
        let ok = types.iter().any(|t| match *t {
            "null" => v.is_null(),
            "boolean" => v.is_boolean(),
            "string" => v.is_string(),
            "number" => v.is_number(),
            "integer" => v.is_u64() || v.is_i64(),
            "array" => v.is_array(),
            "object" => v.is_object(),
            other => panic!("unknown type {other}"),
        });
        if !ok {
            errs.push(format!("{path}: expected {types:?}, got {v}"));
            return;
        }
    }
    if let Some(e) = obj.get("enum").and_then(Value::as_array) {
        if !e.contains(v) {
            errs.push(format!("{path}: {v} not in {e:?}"));
        }
    }
    if let Some(c) = obj.get("const") {
        if c != v {
            errs.push(format!("{path}: {v} != const {c}"));
        }
    }
    if let Some(min) = obj.get("minimum").and_then(Value::as_f64) {
        if v.as_f64().is_some_and(|x| x < min) {
            errs.push(format!("{path}: {v} below minimum {min}"));
        }
    }
    if let Some(p) = obj.get("pattern").and_then(Value::as_str) {
        let re = regex::Regex::new(p).expect("schema pattern is a regex");
        if v.as_str().is_some_and(|s| !re.is_match(s)) {
            errs.push(format!("{path}: {v} does not match {p}"));
        }
    }
    if let Some(any) = obj.get("anyOf").and_then(Value::as_array) {
        let ok = any.iter().any(|s| {
            let mut e = Vec::new();
            validate(root, s, v, path, &mut e);
            e.is_empty()
        });
        if !ok {
            errs.push(format!("{path}: matches no anyOf branch"));
        }
    }
    if let Some(map) = v.as_object() {
        let props = obj.get("properties").and_then(Value::as_object);
        for req in obj.get("required").and_then(Value::as_array).into_iter().flatten() {
            let req = req.as_str().unwrap();
            if !map.contains_key(req) {
                errs.push(format!("{path}: missing required {req}"));
            }
        }
        for (k, child) in map {
            match props.and_then(|p| p.get(k)) {
                Some(s) => validate(root, s, child, &format!("{path}.{k}"), errs),
                None if obj.get("additionalProperties") == Some(&Value::Bool(false)) => {
                    errs.push(format!("{path}: unexpected property {k}"))
                }
                None => {}
            }
        }
    }
    if let Some(items) = v.as_array() {
        let n = items.len() as u64;
        if obj.get("minItems").and_then(Value::as_u64).is_some_and(|m| n < m) {
            errs.push(format!("{path}: fewer than minItems"));
        }
        if obj.get("maxItems").and_then(Value::as_u64).is_some_and(|m| n > m) {
            errs.push(format!("{path}: more than maxItems"));
        }
        let prefix = obj.get("prefixItems").and_then(Value::as_array);
        for (i, item) in items.iter().enumerate() {
            let s = prefix.and_then(|p| p.get(i)).or(obj.get("items"));
            if let Some(s) = s {
                validate(root, s, item, &format!("{path}[{i}]"), errs);
            }
        }
    }
}

pub(crate) fn schema_errors(r: &Value) -> Vec<String> {
    let root = schema();
    let mut errs = Vec::new();
    validate(&root, &root, r, "$", &mut errs);
    errs
}

fn as_json(r: &RunReport) -> Value {
    serde_json::from_str(&report::json::to_string_pretty(r).unwrap()).unwrap()
}

#[test]
fn result_json_matches_its_schema_for_every_kind_of_run() {
    let mut missing_numbers = sample::accepted_run();
    missing_numbers.hypotheses[0].estimate = f64::NAN;
    missing_numbers.hypotheses[0].p_value_adjusted = f64::INFINITY;
    missing_numbers.srm = None;
    missing_numbers.cohorts[0].timeline[0].p99_ms = f64::NAN;
    let mut undelivered = sample::latency_fault_run();
    if let Some(t) = undelivered.trace.as_mut() {
        t.delivered = false;
        t.error = Some("connection refused".into());
    }
    for (what, r) in [
        ("rejected", sample::latency_fault_run()),
        ("aborted", sample::aborted_run()),
        ("accepted", sample::accepted_run()),
        ("non-finite numbers", missing_numbers),
        ("hostile names", hostile_names()),
        ("trace not delivered", undelivered),
    ] {
        let errs = schema_errors(&as_json(&r));
        assert!(errs.is_empty(), "{what}: {errs:#?}");
    }
}

#[test]
fn the_schema_check_rejects_reports_that_break_it() {
    let mut v = as_json(&sample::latency_fault_run());
    v["hypotheses"][0]["verdict"] = "maybe".into();
    v["cohorts"][0].as_object_mut().unwrap().remove("total");
    v["faults"][0]["surprise"] = 1.into();
    v["schema_version"] = 2.into();
    v["trace"]["trace_id"] = "not-hex".into();
    let errs = schema_errors(&v).join("\n");
    for expect in [
        "$.hypotheses[0].verdict: \"maybe\" not in",
        "$.cohorts[0]: missing required total",
        "$.faults[0]: unexpected property surprise",
        "$.schema_version: 2 != const 1",
        "$.trace: matches no anyOf branch",
    ] {
        assert!(errs.contains(expect), "missing {expect:?} in:\n{errs}");
    }
}

#[test]
fn the_schema_documents_every_field() {
    fn walk(v: &Value, path: &str, undocumented: &mut Vec<String>) {
        if let Some(props) = v.get("properties").and_then(Value::as_object) {
            for (k, p) in props {
                let doc =
                    p.get("description").is_some() || p.get("$ref").is_some_and(|_| true);
                if !doc {
                    undocumented.push(format!("{path}.{k}"));
                }
                walk(p, &format!("{path}.{k}"), undocumented);
            }
        }
        for key in ["items", "$defs"] {
            match v.get(key) {
                Some(Value::Object(m)) if key == "$defs" => {
                    for (k, d) in m {
                        if d.get("description").is_none() {
                            undocumented.push(format!("$defs.{k}"));
                        }
                        walk(d, &format!("$defs.{k}"), undocumented);
                    }
                }
                Some(i) => walk(i, &format!("{path}[]"), undocumented),
                None => {}
            }
        }
    }
    let mut undocumented = Vec::new();
    walk(&schema(), "$", &mut undocumented);
    assert!(undocumented.is_empty(), "fields without description: {undocumented:?}");
}

/// Width and height from a PNG's IHDR chunk.
fn png_size(bytes: &[u8]) -> Option<(u32, u32)> {
    if bytes.len() < 24
        || &bytes[..8] != b"\x89PNG\r\n\x1a\n"
        || &bytes[12..16] != b"IHDR"
    {
        return None;
    }
    let be = |b: &[u8]| u32::from_be_bytes([b[0], b[1], b[2], b[3]]);
    Some((be(&bytes[16..20]), be(&bytes[20..24])))
}

fn screenshot(html: &Path, png: &Path, size: &str) -> std::process::Output {
    Command::new(repo_root().join("scripts/screenshot-report.sh"))
        .arg(html)
        .arg(png)
        .arg(size)
        .output()
        .expect("run scripts/screenshot-report.sh")
}

/// Writes the sample reports, screenshots them and checks the PNGs. With
/// `CHAOS_UPDATE_DOCS_IMG=1` it also refreshes `docs/img/report.png`.
#[test]
fn headless_chromium_screenshots_the_html_report() {
    if !require_capability(have("chromium"), "chromium (apt-get install -y chromium)") {
        return;
    }
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("report-screenshot");
    let paths = report::write_all(&dir, &sample::latency_fault_run()).unwrap();
    let png = dir.join("report.png");
    let _ = std::fs::remove_file(&png);
    let out = screenshot(&paths.html, &png, "1280x1660");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let bytes = std::fs::read(&png).expect("screenshot written");
    assert_eq!(png_size(&bytes), Some((1280, 1660)), "PNG dimensions");
    // A blank page compresses to a few KB; plots, text and colors do not.
    assert!(bytes.len() > 60_000, "PNG suspiciously small: {} bytes", bytes.len());
    if std::env::var("CHAOS_UPDATE_DOCS_IMG").is_ok_and(|v| v == "1") {
        std::fs::copy(&png, repo_root().join("docs/img/report.png")).unwrap();
    }
}

#[test]
fn the_screenshot_script_fails_clearly_on_a_missing_report() {
    let out = screenshot(
        Path::new("/nonexistent/report.html"),
        Path::new("/tmp/x.png"),
        "10x10",
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no such report"));
}

fn stored(dir: &Path, name: &str, r: &RunReport) -> PathBuf {
    let paths = report::write_all(&dir.join(name), r).unwrap();
    paths.json
}

#[test]
fn chaos_report_prints_the_verdict_table_of_a_stored_run() {
    let dir = tempfile::tempdir().unwrap();
    let json = stored(dir.path(), "a", &sample::latency_fault_run());
    let out = crate::support::chaos(&["report", json.to_str().unwrap()]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("Outcome: REJECTED"), "{stdout}");
    assert!(!stdout.contains('\x1b'), "no colors when stdout is a pipe");
}

#[test]
fn chaos_report_combines_several_runs_into_one_report_directory() {
    let dir = tempfile::tempdir().unwrap();
    let a = stored(dir.path(), "a", &sample::accepted_run());
    let b = stored(dir.path(), "b", &sample::aborted_run());
    let out_dir = dir.path().join("combined");
    let out = crate::support::chaos(&[
        "report",
        a.to_str().unwrap(),
        b.to_str().unwrap(),
        "--out",
        out_dir.to_str().unwrap(),
        "--color",
        "always",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("\x1b[31m"), "forced color");
    let junit = std::fs::read_to_string(out_dir.join("junit.xml")).unwrap();
    assert_eq!(junit.matches("<testsuite ").count(), 2);
    let html = std::fs::read_to_string(out_dir.join("report.html")).unwrap();
    assert!(html.contains("id=\"run-2\""));
    let many: Vec<RunReport> = serde_json::from_str(
        &std::fs::read_to_string(out_dir.join("results.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(many.len(), 2);
}

#[test]
fn chaos_report_rejects_a_file_that_is_not_a_result_json() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("result.json");
    std::fs::write(&bad, "{\"schema_version\": 1}").unwrap();
    let out = crate::support::chaos(&["report", bad.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("is not a chaos result.json"), "{stderr}");
    let help = crate::support::chaos(&["report", "--help"]);
    assert!(String::from_utf8_lossy(&help.stdout)
        .contains("chaos report reports/result.json"));
}
