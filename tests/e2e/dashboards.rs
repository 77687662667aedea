//! The Grafana dashboards in `dashboards/` only query metrics the code
//! exports (names read from the library's `pub const`s), are importable
//! (datasource input, schema version) and hold valid PromQL (checked by a
//! real Prometheus).

use std::collections::BTreeSet;
use std::path::PathBuf;

use serde_json::Value;

/// Every metric family the platform exports, from the library itself.
fn exported_metric_names() -> BTreeSet<&'static str> {
    let mut names: BTreeSet<&'static str> =
        chaos::metrics::platform::ALL_METRIC_NAMES.iter().copied().collect();
    names.extend(chaos::metrics::labels::ALL);
    names.extend(chaos::metrics::platform::DAEMON_METRIC_NAMES);
    names
}

fn dashboards() -> Vec<(PathBuf, Value)> {
    let dir = crate::support::repo_root().join("dashboards");
    let mut out: Vec<(PathBuf, Value)> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("read {}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .map(|p| {
            let text = std::fs::read_to_string(&p).unwrap();
            let v = serde_json::from_str(&text)
                .unwrap_or_else(|e| panic!("{} is not JSON: {e}", p.display()));
            (p, v)
        })
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    assert!(!out.is_empty(), "no dashboards in {}", dir.display());
    out
}

/// Every `expr` string anywhere in a dashboard (panels, nested rows).
fn exprs(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(m) => {
            for (k, v) in m {
                match (k.as_str(), v) {
                    ("expr", Value::String(s)) => out.push(s.clone()),
                    _ => exprs(v, out),
                }
            }
        }
        Value::Array(a) => a.iter().for_each(|v| exprs(v, out)),
        _ => {}
    }
}

/// Words that are never metric names in PromQL.
const KEYWORDS: &[&str] = &[
    "sum",
    "min",
    "max",
    "avg",
    "group",
    "stddev",
    "stdvar",
    "count",
    "count_values",
    "bottomk",
    "topk",
    "quantile",
    "and",
    "or",
    "unless",
    "bool",
    "offset",
    "inf",
    "nan",
];
/// Modifiers followed by a parenthesised list of label names.
const LABEL_LISTS: &[&str] =
    &["by", "without", "on", "ignoring", "group_left", "group_right"];

/// Metric names in a PromQL expression: identifiers outside label
/// matchers, ranges and strings that are not functions, keywords, Grafana
/// variables (`$__rate_interval`) or label lists (`by (le, cohort)`).
fn metric_names(expr: &str) -> BTreeSet<String> {
    let chars: Vec<char> = expr.chars().collect();
    let mut names = BTreeSet::new();
    let mut i = 0;
    let skip_to = |i: usize, close: char| {
        let mut j = i + 1;
        while j < chars.len() && chars[j] != close {
            j += if chars[j] == '\\' { 2 } else { 1 };
        }
        j + 1
    };
    while i < chars.len() {
        let c = chars[i];
        match c {
            '"' | '\'' | '`' => i = skip_to(i, c),
            '{' => i = skip_to(i, '}'),
            '[' => i = skip_to(i, ']'),
            '$' | '0'..='9' | '.' => {
                // Variables, numbers and durations (`0.99`, `1e3`, `5m`).
                i += 1;
                while i < chars.len()
                    && (chars[i].is_alphanumeric() || "_.".contains(chars[i]))
                {
                    i += 1;
                }
            }
            c if c.is_ascii_alphabetic() || c == '_' || c == ':' => {
                let start = i;
                while i < chars.len()
                    && (chars[i].is_ascii_alphanumeric()
                        || chars[i] == '_'
                        || chars[i] == ':')
                {
                    i += 1;
                }
                let word: String = chars[start..i].iter().collect();
                let mut j = i;
                while j < chars.len() && chars[j].is_whitespace() {
                    j += 1;
                }
                let next = chars.get(j).copied();
                if LABEL_LISTS.contains(&word.as_str()) {
                    if next == Some('(') {
                        i = skip_to(j, ')');
                    }
                } else if next != Some('(') && !KEYWORDS.contains(&word.as_str()) {
                    names.insert(word);
                }
            }
            _ => i += 1,
        }
    }
    names
}

/// `foo_bucket` → `foo` when `foo` is exported (histogram series).
fn family<'a>(name: &'a str, known: &BTreeSet<&str>) -> &'a str {
    for suffix in ["_bucket", "_sum", "_count"] {
        if let Some(base) = name.strip_suffix(suffix) {
            if known.contains(base) {
                return base;
            }
        }
    }
    name
}

#[test]
fn finds_metric_names_and_skips_functions_labels_and_variables() {
    let e = r#"histogram_quantile(0.99, sum by (le, cohort) (rate(x_bucket{cohort=~"a|b"}[$__rate_interval]))) / on (job) group_left y_total offset 5m"#;
    let found: Vec<String> = metric_names(e).into_iter().collect();
    assert_eq!(found, ["x_bucket", "y_total"]);
}

#[test]
fn every_metric_a_dashboard_queries_is_one_the_code_exports() {
    let known = exported_metric_names();
    for (path, dash) in dashboards() {
        let mut all = Vec::new();
        exprs(&dash, &mut all);
        assert!(!all.is_empty(), "{} has no queries", path.display());
        for expr in &all {
            let names = metric_names(expr);
            assert!(!names.is_empty(), "{}: no metric in {expr:?}", path.display());
            for name in &names {
                assert!(
                    known.contains(family(name, &known)),
                    "{}: {name} in {expr:?} is not exported; exported: {known:?}",
                    path.display()
                );
            }
        }
    }
}

#[test]
fn every_exported_metric_is_on_some_dashboard() {
    let known = exported_metric_names();
    let mut used = BTreeSet::new();
    for (_, dash) in dashboards() {
        let mut all = Vec::new();
        exprs(&dash, &mut all);
        for e in all {
            used.extend(metric_names(&e).iter().map(|n| family(n, &known).to_string()));
        }
    }
    for name in known {
        assert!(used.contains(name), "{name} is exported but no dashboard shows it");
    }
}

#[test]
fn dashboards_are_importable_with_a_prometheus_datasource_input() {
    for (path, dash) in dashboards() {
        let p = path.display();
        assert!(dash["schemaVersion"].as_u64().unwrap_or(0) >= 36, "{p}: schemaVersion");
        assert!(dash["uid"].is_string() && dash["title"].is_string(), "{p}: uid/title");
        let inputs = dash["__inputs"].as_array().expect("__inputs");
        assert!(
            inputs
                .iter()
                .any(|i| i["name"] == "DS_PROMETHEUS" && i["pluginId"] == "prometheus"),
            "{p}: needs a DS_PROMETHEUS input"
        );
        let panels = dash["panels"].as_array().expect("panels");
        let mut ids = BTreeSet::new();
        for panel in panels {
            assert!(
                ids.insert(panel["id"].as_u64().expect("panel id")),
                "{p}: duplicate id"
            );
            if panel["type"] != "row" {
                assert_eq!(
                    panel["datasource"]["uid"], "${DS_PROMETHEUS}",
                    "{p}: {panel}"
                );
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_dashboard_query_is_valid_promql_for_a_real_prometheus() {
    if !crate::prometheus::support_prometheus() {
        return;
    }
    // Nothing needs to be scraped: Prometheus parses and evaluates the
    // queries over empty storage; a syntax error is a 400 bad_data.
    let prom = crate::prometheus::start_prometheus("127.0.0.1:9".parse().unwrap()).await;
    let cfg = chaos::promql::PromConfig {
        url: prom.url.clone(),
        timeout: std::time::Duration::from_secs(5),
        step: std::time::Duration::from_secs(1),
        bearer_token: None,
        basic_auth: None,
        ca_file: None,
    };
    for (path, dash) in dashboards() {
        let mut all = Vec::new();
        exprs(&dash, &mut all);
        for expr in all {
            // Grafana's own variables, as Grafana would fill them in.
            let q = expr
                .replace("$__rate_interval", "1m")
                .replace("$__interval", "15s")
                .replace("$__range", "1h");
            if let Err(e) = chaos::promql::instant(&cfg, &q).await {
                // Several series are fine for a dashboard; syntax is not.
                assert!(
                    matches!(e, chaos::promql::PromError::MultipleSeries { .. }),
                    "{}: {e}",
                    path.display()
                );
            }
        }
    }
}
