//! `chaos history` and `chaos continuous` as real processes.

use crate::support::chaos;

fn seeded_history(dir: &std::path::Path) -> std::path::PathBuf {
    let db = dir.join("history.db");
    let h = chaos::schedule::history::History::open(&db).unwrap();
    let id = h.begin("checkout", "experiments/aa.toml", "2026-01-05T09:00:00Z").unwrap();
    h.finish(
        id,
        &chaos::schedule::history::RunEnd {
            finished_at: "2026-01-05T09:00:06Z".into(),
            outcome: "rejected",
            verdicts: serde_json::json!([
                {"hypothesis": "p99 holds", "verdict": "rejected"},
                {"hypothesis": "errors flat", "verdict": "accepted"}
            ]),
            report_dir: Some(std::path::Path::new("/tmp/reports/checkout-1")),
            detail: None,
        },
    )
    .unwrap();
    db
}

#[test]
fn history_lists_and_shows_runs_as_text_and_json() {
    let dir = tempfile::tempdir().unwrap();
    let db = seeded_history(dir.path());
    let db = db.to_str().unwrap();

    let out = chaos(&["history", "--db", db]);
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("checkout"), "{text}");
    assert!(text.contains("rejected"), "{text}");
    assert!(text.contains("p99 holds=rejected"), "{text}");
    assert!(text.contains("6s"), "duration column: {text}");

    let out = chaos(&["history", "--db", db, "--json", "--limit", "1"]);
    let rows: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(rows.as_array().unwrap().len(), 1);
    assert_eq!(rows[0]["outcome"], "rejected");
    assert_eq!(rows[0]["verdicts"][1]["verdict"], "accepted");

    let out = chaos(&["history", "show", "1", "--db", db]);
    assert_eq!(out.status.code(), Some(0));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("reports:     /tmp/reports/checkout-1"), "{text}");
    assert!(text.contains("errors flat=accepted"), "{text}");

    let out = chaos(&["history", "show", "99", "--db", db]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no run 99"));
}

#[test]
fn history_without_a_database_says_where_it_looked() {
    let out = chaos(&["history", "--db", "/nonexistent/chaos-history.db"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("/nonexistent/chaos-history.db")
    );
}
