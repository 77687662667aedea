//! The verdict table printed at the end of a run. Colors are opt-in: the
//! caller decides (TTY and `NO_COLOR`), this module never looks at the
//! environment.

use std::fmt::Write as _;

use super::{HypothesisResult, RunReport};
use crate::outcome::{RunOutcome, Verdict};

const RESET: &str = "\x1b[0m";
const BOLD: &str = "\x1b[1m";
const DIM: &str = "\x1b[2m";
const RED: &str = "\x1b[31m";
const GREEN: &str = "\x1b[32m";
const YELLOW: &str = "\x1b[33m";

/// Longest hypothesis name shown before it is shortened with `…`.
const MAX_NAME: usize = 36;

/// The verdict table, the run outcome line and (if any) the abort reason
/// and warnings; ends with a newline. ANSI colors only when `color`.
pub fn verdict_table(report: &RunReport, color: bool) -> String {
    let paint = |code: &str, s: &str| {
        if color {
            format!("{code}{s}{RESET}")
        } else {
            s.to_string()
        }
    };
    let header = [
        "HYPOTHESIS",
        "METRIC",
        "TOLERANCE",
        "ESTIMATE",
        "INTERVAL",
        "P(worse)",
        "P(within)",
        "N E/C",
    ];
    let rows: Vec<([String; 8], Verdict)> =
        report.hypotheses.iter().map(|h| (row(h), h.verdict)).collect();
    let mut widths = header.map(|h| h.chars().count());
    for (cells, _) in &rows {
        for (w, c) in widths.iter_mut().zip(cells) {
            *w = (*w).max(c.chars().count());
        }
    }

    let mut out = String::new();
    let _ = writeln!(
        out,
        "{} {}",
        paint(BOLD, &clean(&report.experiment.name)),
        paint(DIM, &format!("({})", clean(&report.run_id)))
    );
    let mut line = String::new();
    for (h, w) in header.iter().zip(widths) {
        let _ = write!(line, "{h:<w$}  ");
    }
    line.push_str("VERDICT");
    let _ = writeln!(out, "{}", paint(BOLD, &line));
    for (cells, verdict) in &rows {
        for (i, (c, w)) in cells.iter().zip(widths).enumerate() {
            // Numbers read best right-aligned; names and units left.
            if (3..8).contains(&i) {
                let _ = write!(out, "{c:>w$}  ");
            } else {
                let _ = write!(out, "{c:<w$}  ");
            }
        }
        let _ = writeln!(out, "{}", paint(verdict_color(*verdict), verdict.as_str()));
    }
    if rows.is_empty() {
        let _ = writeln!(out, "(no hypotheses)");
    } else {
        let _ = writeln!(
            out,
            "{}",
            paint(
                DIM,
                "* critical: must be accepted for the run to pass; any rejection \
                 rejects it.\n  P(worse): p of \"worse than the tolerance\", Holm-adjusted \
                 (small: rejected). P(within): p of \"not within the tolerance\" \
                 (small: accepted)."
            )
        );
        for line in per_key_lines(report) {
            let _ = writeln!(out, "{}", paint(DIM, &line));
        }
    }
    out.push('\n');

    let a = report.count(Verdict::Accepted);
    let r = report.count(Verdict::Rejected);
    let i = report.count(Verdict::Inconclusive);
    let outcome = report.outcome.as_str().to_uppercase();
    let _ = writeln!(
        out,
        "Outcome: {}  ({a} accepted, {r} rejected, {i} inconclusive; exit {}; {}s)",
        paint(&format!("{BOLD}{}", outcome_color(report.outcome)), &outcome),
        report.exit_code(),
        fmt_num(report.timings.total_s, 1),
    );
    if let Some(t) = &report.trace {
        let _ = writeln!(out, "{}", trace_line(t));
    }
    if let Some(abort) = &report.abort {
        let who = abort
            .hypothesis
            .as_deref()
            .map(|h| format!(" by \"{}\"", clean(h)))
            .unwrap_or_default();
        let _ = writeln!(
            out,
            "{} at {}s{who}: {}",
            paint(&format!("{BOLD}{RED}"), "Aborted"),
            fmt_num(abort.at_s, 1),
            clean(&abort.reason)
        );
    }
    for f in report.faults.iter().filter(|f| f.revert_error.is_some()) {
        let _ = writeln!(
            out,
            "{} fault {} was not reverted: {} (run `chaos recover`)",
            paint(&format!("{BOLD}{RED}"), "DANGER:"),
            clean(&f.id),
            clean(f.revert_error.as_deref().unwrap_or_default())
        );
    }
    if let Some(srm) = report.srm.filter(|s| s.mismatch) {
        let _ = writeln!(
            out,
            "{} sample ratio mismatch (chi2 {}, p {}, counting {}): verdicts are unreliable",
            paint(YELLOW, "warning:"),
            fmt_num(srm.chi2, 2),
            fmt_p(srm.p_value),
            srm.unit.as_str()
        );
    }
    for w in &report.warnings {
        let _ = writeln!(out, "{} {}", paint(YELLOW, "warning:"), clean(w));
    }
    out
}

/// One line per hypothesis whose variance per-key inference changed: how
/// much, and what the per-request test would have said.
pub fn per_key_lines(report: &RunReport) -> Vec<String> {
    report
        .hypotheses
        .iter()
        .filter_map(|h| {
            let k = h.per_key?;
            (k.design_effect_experiment > 1.0 || k.design_effect_control > 1.0).then(|| {
                format!(
                    "  per-key variance for \"{}\": design effect {}/{} over {}/{} keys \
                     (E/C); requests of one key are correlated. Per-request: P(worse) {}, \
                     P(within) {}.",
                    clean(&h.name),
                    fmt_num(k.design_effect_experiment, 2),
                    fmt_num(k.design_effect_control, 2),
                    k.keys_experiment,
                    k.keys_control,
                    fmt_p(k.p_value_per_request),
                    fmt_p(k.p_within_per_request)
                )
            })
        })
        .collect()
}

fn row(h: &HypothesisResult) -> [String; 8] {
    let mut name = clean(&h.name);
    if name.chars().count() > MAX_NAME {
        name = name.chars().take(MAX_NAME - 1).collect::<String>() + "…";
    }
    if h.critical {
        name.push_str(" *");
    }
    [
        name,
        clean(&h.metric),
        clean(&h.tolerance),
        fmt_value(h.estimate, &h.unit),
        fmt_interval(h.ci_low, h.ci_high, &h.unit),
        fmt_p(h.p_value_adjusted_or_raw()),
        fmt_p(h.p_within),
        format!("{}/{}", h.n_experiment, h.n_control),
    ]
}

/// `+171.3%`, `-0.05pp`, `n/a` for non-finite values.
pub fn fmt_value(v: f64, unit: &str) -> String {
    if !v.is_finite() {
        return "n/a".into();
    }
    let digits = if v.abs() >= 100.0 {
        0
    } else if v.abs() >= 1.0 {
        1
    } else {
        2
    };
    format!("{v:+.digits$}{}", clean(unit))
}

/// A plain number with `digits` decimals, `n/a` when not finite.
pub fn fmt_num(v: f64, digits: usize) -> String {
    if v.is_finite() {
        format!("{v:.digits$}")
    } else {
        "n/a".into()
    }
}

/// `[+148.9%, +196.2%]`.
pub fn fmt_interval(lo: f64, hi: f64, unit: &str) -> String {
    format!("[{}, {}]", fmt_value(lo, unit), fmt_value(hi, unit))
}

/// `<0.001`, `0.041`, `n/a`.
pub fn fmt_p(p: f64) -> String {
    if !p.is_finite() {
        "n/a".into()
    } else if p < 0.001 {
        "<0.001".into()
    } else {
        format!("{p:.3}")
    }
}

/// Removes control characters (user-supplied names must not be able to
/// move the cursor or recolor the terminal).
fn clean(s: &str) -> String {
    s.chars().map(|c| if c.is_control() { ' ' } else { c }).collect()
}

fn verdict_color(v: Verdict) -> &'static str {
    match v {
        Verdict::Accepted => GREEN,
        Verdict::Rejected => RED,
        Verdict::Inconclusive => YELLOW,
    }
}

/// Where the run's trace is: the id to paste into Jaeger or Tempo.
fn trace_line(t: &crate::report::TraceInfo) -> String {
    match &t.error {
        None => format!("Trace: {} (sent to {})", t.trace_id, clean(&t.endpoint)),
        Some(e) => format!(
            "Trace: {} (not delivered to {}: {})",
            t.trace_id,
            clean(&t.endpoint),
            clean(e)
        ),
    }
}

fn outcome_color(o: RunOutcome) -> &'static str {
    match o {
        RunOutcome::Accepted => GREEN,
        RunOutcome::Rejected | RunOutcome::Aborted | RunOutcome::EnvironmentError => RED,
        RunOutcome::Inconclusive | RunOutcome::Interrupted => YELLOW,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::sample;

    #[test]
    fn lists_every_hypothesis_with_its_verdict_and_the_outcome() {
        let t = verdict_table(&sample::latency_fault_run(), false);
        assert!(!t.contains('\x1b'), "no color asked for:\n{t}");
        let line = t.lines().find(|l| l.starts_with("api p99 latency *")).unwrap();
        assert!(line.ends_with("rejected"), "{line}");
        assert!(line.contains("+171%") && line.contains("[+149%, +196%]"), "{line}");
        assert!(t.contains(
            "Outcome: REJECTED  (1 accepted, 1 rejected, 1 inconclusive; exit 1"
        ));
        assert!(t.contains("warning: throughput windows"));
        assert!(
            t.contains("Trace: 4bf92f3577b34da6a3ce929d0e0e4736 (sent to http://"),
            "{t}"
        );
        let t = verdict_table(&sample::accepted_run(), false);
        assert!(!t.contains("Trace:"), "no trace line without [otel]:\n{t}");
    }

    #[test]
    fn names_both_one_sided_p_values_and_explains_per_key_variance() {
        let t = verdict_table(&sample::latency_fault_run(), false);
        let head = t.lines().find(|l| l.starts_with("HYPOTHESIS")).unwrap();
        assert!(head.contains("P(worse)") && head.contains("P(within)"), "{head}");
        assert!(!head.contains(" P "), "no bare P column: {head}");
        // An accepted hypothesis shows the small p that accepted it next to
        // the large one that did not reject it.
        let line = t.lines().find(|l| l.starts_with("api error rate")).unwrap();
        assert!(line.contains("0.970") && line.contains("<0.001"), "{line}");
        assert!(t.contains(
            "per-key variance for \"api error rate\": design effect 3.10/1.00"
        ));
        assert!(t.contains("Per-request: P(worse) 0.900"), "{t}");
    }

    #[test]
    fn aligns_the_verdict_column() {
        let t = verdict_table(&sample::latency_fault_run(), false);
        let cols: Vec<usize> = t
            .lines()
            .filter(|l| {
                l.ends_with("accepted")
                    || l.ends_with("rejected")
                    || l.ends_with("VERDICT")
            })
            .map(|l| {
                l.chars().count() - l.split_whitespace().last().unwrap().chars().count()
            })
            .collect();
        assert_eq!(cols.len(), 3);
        assert!(cols.windows(2).all(|w| w[0] == w[1]), "{cols:?}\n{t}");
    }

    #[test]
    fn colors_verdicts_only_when_asked() {
        let t = verdict_table(&sample::latency_fault_run(), true);
        assert!(t.contains("\x1b[31mrejected\x1b[0m"), "{t}");
        assert!(t.contains("\x1b[32maccepted\x1b[0m"));
    }

    #[test]
    fn explains_an_abort() {
        let t = verdict_table(&sample::aborted_run(), false);
        assert!(t.contains("Outcome: ABORTED"), "{t}");
        assert!(
            t.contains("Aborted at 24.0s by \"api p99 latency\": p99 latency"),
            "{t}"
        );
    }

    #[test]
    fn strips_escape_sequences_from_user_supplied_names() {
        let mut r = sample::latency_fault_run();
        r.hypotheses[0].name = "evil\x1b[2Jname".into();
        let t = verdict_table(&r, false);
        assert!(!t.contains('\x1b'), "{t:?}");
        assert!(t.contains("evil [2Jname"));
    }

    #[test]
    fn formats_missing_numbers_as_not_available() {
        assert_eq!(fmt_value(f64::NAN, "%"), "n/a");
        assert_eq!(fmt_p(0.0001), "<0.001");
        assert_eq!(fmt_value(-0.05, "pp"), "-0.05pp");
    }
}
