//! `junit.xml`: one `<testsuite>` per run, one `<testcase>` per hypothesis,
//! so CI systems show each steady-state hypothesis as a test.
//!
//! Mapping: accepted = pass, rejected = `<failure>`, inconclusive =
//! `<skipped>`. A run that did not finish (aborted, interrupted,
//! environment error) gives every testcase an `<error>`: none of its
//! verdicts is final. A fault that failed to revert adds an erroring
//! testcase of its own, so the CI run cannot look green. The output is
//! valid against `tests/fixtures/junit/junit.xsd`.

use std::fmt::Write as _;

use super::{terminal, HypothesisResult, RunReport};
use crate::outcome::{RunOutcome, Verdict};

/// A single run as a JUnit document with a `<testsuite>` root.
pub fn render(report: &RunReport) -> String {
    let mut out = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
    suite(&mut out, report, "");
    out
}

/// Several runs (a game day) as one `<testsuites>` document.
pub fn render_suites(reports: &[RunReport]) -> String {
    let mut out = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
    let counts = reports.iter().map(Counts::of).fold(Counts::default(), Counts::add);
    let time: f64 = reports.iter().map(|r| secs(r.timings.total_s)).sum();
    let _ = writeln!(
        out,
        "<testsuites name=\"chaos\" tests=\"{}\" failures=\"{}\" errors=\"{}\" \
         skipped=\"{}\" time=\"{}\">",
        counts.tests,
        counts.failures,
        counts.errors,
        counts.skipped,
        fmt_time(time)
    );
    for r in reports {
        suite(&mut out, r, "  ");
    }
    out.push_str("</testsuites>\n");
    out
}

#[derive(Default, Clone, Copy)]
struct Counts {
    tests: usize,
    failures: usize,
    errors: usize,
    skipped: usize,
}

impl Counts {
    fn of(r: &RunReport) -> Counts {
        cases(r).iter().fold(Counts::default(), |mut c, case| {
            c.tests += 1;
            match case.result {
                CaseResult::Pass => {}
                CaseResult::Failure(..) => c.failures += 1,
                CaseResult::Error(..) => c.errors += 1,
                CaseResult::Skipped(..) => c.skipped += 1,
            }
            c
        })
    }

    fn add(self, o: Counts) -> Counts {
        Counts {
            tests: self.tests + o.tests,
            failures: self.failures + o.failures,
            errors: self.errors + o.errors,
            skipped: self.skipped + o.skipped,
        }
    }
}

enum CaseResult {
    Pass,
    /// (type, message, body)
    Failure(&'static str, String, String),
    Error(&'static str, String, String),
    Skipped(String),
}

struct Case {
    name: String,
    time: f64,
    result: CaseResult,
}

/// Whether the run finished, i.e. its verdicts are final.
fn unfinished(o: RunOutcome) -> Option<&'static str> {
    match o {
        RunOutcome::Aborted => Some("aborted"),
        RunOutcome::Interrupted => Some("interrupted"),
        RunOutcome::EnvironmentError => Some("environment-error"),
        RunOutcome::Accepted | RunOutcome::Rejected | RunOutcome::Inconclusive => None,
    }
}

fn cases(r: &RunReport) -> Vec<Case> {
    let time = secs(r.timings.observe_s);
    let stopped = unfinished(r.outcome);
    let why_stopped = || match &r.abort {
        Some(a) => format!(
            "run {} at {}s{}: {}",
            r.outcome,
            terminal::fmt_num(a.at_s, 1),
            a.hypothesis.as_deref().map(|h| format!(" by \"{h}\"")).unwrap_or_default(),
            a.reason
        ),
        None => format!("run {} before a final verdict", r.outcome),
    };
    let mut out: Vec<Case> = r
        .hypotheses
        .iter()
        .map(|h| {
            let result = match (stopped, h.verdict) {
                (Some(kind), v) => CaseResult::Error(
                    kind,
                    why_stopped(),
                    format!("{}\n(interim verdict: {v})", evidence(h)),
                ),
                (None, Verdict::Accepted) => CaseResult::Pass,
                (None, Verdict::Rejected) => {
                    CaseResult::Failure("rejected", h.reason.clone(), evidence(h))
                }
                (None, Verdict::Inconclusive) => CaseResult::Skipped(match h.needed_n {
                    Some(n) => {
                        format!("inconclusive: {} (about {n} samples needed)", h.reason)
                    }
                    None => format!("inconclusive: {}", h.reason),
                }),
            };
            Case { name: h.name.clone(), time, result }
        })
        .collect();
    if out.is_empty() && stopped.is_some() {
        out.push(Case {
            name: "run".into(),
            time: secs(r.timings.total_s),
            result: CaseResult::Error(
                stopped.unwrap_or("error"),
                why_stopped(),
                r.warnings.join("\n"),
            ),
        });
    }
    for f in &r.faults {
        if let Some(e) = &f.revert_error {
            out.push(Case {
                name: format!("revert fault {}", f.id),
                time: secs(r.timings.revert_s),
                result: CaseResult::Error(
                    "revert-failed",
                    format!("fault {} on {} was not reverted: {e}", f.id, f.target),
                    "Run `chaos recover` to revert it from the journal.".into(),
                ),
            });
        }
    }
    out
}

fn evidence(h: &HypothesisResult) -> String {
    format!(
        "metric {} tolerance {}: estimate {} interval {} P(worse) {} (Holm-adjusted {}), \
         P(within) {}, test {}, n experiment {} / control {}{}",
        h.metric,
        h.tolerance,
        terminal::fmt_value(h.estimate, &h.unit),
        terminal::fmt_interval(h.ci_low, h.ci_high, &h.unit),
        terminal::fmt_p(h.p_value),
        terminal::fmt_p(h.p_value_adjusted),
        terminal::fmt_p(h.p_within),
        h.test,
        h.n_experiment,
        h.n_control,
        h.per_key
            .map(|k| format!(
                "; per-key variance: design effect {}/{} over {}/{} keys (per-request \
                 P(worse) {}, P(within) {})",
                terminal::fmt_num(k.design_effect_experiment, 2),
                terminal::fmt_num(k.design_effect_control, 2),
                k.keys_experiment,
                k.keys_control,
                terminal::fmt_p(k.p_value_per_request),
                terminal::fmt_p(k.p_within_per_request)
            ))
            .unwrap_or_default()
    )
}

fn suite(out: &mut String, r: &RunReport, ind: &str) {
    let c = Counts::of(r);
    let _ = writeln!(
        out,
        "{ind}<testsuite name=\"{}\" tests=\"{}\" failures=\"{}\" errors=\"{}\" \
         skipped=\"{}\" time=\"{}\" timestamp=\"{}\" id=\"{}\" file=\"{}\">",
        esc(&r.experiment.name),
        c.tests,
        c.failures,
        c.errors,
        c.skipped,
        fmt_time(secs(r.timings.total_s)),
        esc(&r.started_at),
        esc(&r.run_id),
        esc(&r.experiment.file),
    );
    let _ = writeln!(out, "{ind}  <properties>");
    let mut props: Vec<(String, String)> = vec![
        ("run_id".into(), r.run_id.clone()),
        ("outcome".into(), r.outcome.to_string()),
        ("exit_code".into(), r.exit_code().to_string()),
        ("schema_version".into(), r.schema_version.to_string()),
        ("experiment_file".into(), r.experiment.file.clone()),
        ("started_at".into(), r.started_at.clone()),
        ("finished_at".into(), r.finished_at.clone()),
    ];
    for f in &r.faults {
        props.push((format!("fault.{}", f.id), format!("{} on {}", f.kind, f.target)));
    }
    if let Some(a) = &r.abort {
        props.push(("abort_at_s".into(), terminal::fmt_num(a.at_s, 3)));
        props.push(("abort_reason".into(), a.reason.clone()));
    }
    for (k, v) in props {
        let _ = writeln!(
            out,
            "{ind}    <property name=\"{}\" value=\"{}\"/>",
            esc(&k),
            esc(&v)
        );
    }
    let _ = writeln!(out, "{ind}  </properties>");
    let classname = format!("chaos.{}", r.experiment.name);
    for case in cases(r) {
        let open = format!(
            "{ind}  <testcase name=\"{}\" classname=\"{}\" time=\"{}\"",
            esc(&case.name),
            esc(&classname),
            fmt_time(case.time)
        );
        match case.result {
            CaseResult::Pass => {
                let _ = writeln!(out, "{open}/>");
            }
            CaseResult::Failure(kind, msg, body) | CaseResult::Error(kind, msg, body) => {
                let tag = if matches!(kind, "rejected") { "failure" } else { "error" };
                let _ = writeln!(
                    out,
                    "{open}>\n{ind}    <{tag} type=\"{kind}\" message=\"{}\">{}</{tag}>\n\
                     {ind}  </testcase>",
                    esc(&msg),
                    esc(&body)
                );
            }
            CaseResult::Skipped(msg) => {
                let _ = writeln!(
                    out,
                    "{open}>\n{ind}    <skipped message=\"{}\"/>\n{ind}  </testcase>",
                    esc(&msg)
                );
            }
        }
    }
    let _ = writeln!(
        out,
        "{ind}  <system-out>{}</system-out>",
        esc(&terminal::verdict_table(r, false))
    );
    let _ = writeln!(out, "{ind}</testsuite>");
}

/// Seconds as a JUnit time: non-negative, finite, three decimals.
fn fmt_time(s: f64) -> String {
    format!("{:.3}", secs(s))
}

fn secs(s: f64) -> f64 {
    if s.is_finite() && s > 0.0 {
        s
    } else {
        0.0
    }
}

/// Escapes text for element content and double-quoted attributes. Names
/// come from user files: characters XML 1.0 cannot carry at all (most C0
/// controls) become U+FFFD, and newlines in attributes are kept as
/// character references so they survive attribute normalisation.
pub fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            '\n' => out.push_str("&#10;"),
            '\r' => out.push_str("&#13;"),
            '\t' => out.push_str("&#9;"),
            c if (c as u32) < 0x20 || matches!(c, '\u{FFFE}' | '\u{FFFF}') => {
                out.push('\u{FFFD}')
            }
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::sample;

    #[test]
    fn evidence_names_both_one_sided_p_values_and_the_per_key_variance() {
        let r = crate::report::sample::latency_fault_run();
        let e = evidence(&r.hypotheses[1]);
        assert!(e.contains("P(worse) 0.970") && e.contains("P(within) <0.001"), "{e}");
        assert!(e.contains("design effect 3.10/1.00 over 412/398 keys"), "{e}");
    }

    #[test]
    fn maps_rejected_to_failure_and_inconclusive_to_skipped() {
        let x = render(&sample::latency_fault_run());
        assert!(
            x.contains(
                "tests=\"3\" failures=\"1\" errors=\"0\" skipped=\"1\" time=\"61.000\""
            ),
            "{x}"
        );
        assert!(x.contains("<testcase name=\"api error rate\" classname=\"chaos.payments dependency latency\" time=\"50.000\"/>"), "{x}");
        assert!(x.contains("<failure type=\"rejected\" message=\"lower bound +148.9%"));
        assert!(x.contains(
            "<skipped message=\"inconclusive: interval [-3.9%, +5.6%] contains"
        ));
        assert!(x.contains("<property name=\"outcome\" value=\"rejected\"/>"));
        assert!(
            x.contains("<property name=\"run_id\" value=\"run-20261123-030412-9f3c\"/>")
        );
    }

    #[test]
    fn marks_every_testcase_of_an_aborted_run_as_an_error() {
        let x = render(&sample::aborted_run());
        assert!(x.contains("failures=\"0\" errors=\"3\" skipped=\"0\""), "{x}");
        assert_eq!(
            x.matches("<error type=\"aborted\" message=\"run aborted at 24.0s").count(),
            3
        );
    }

    #[test]
    fn adds_an_erroring_testcase_for_a_fault_that_was_not_reverted() {
        let mut r = sample::latency_fault_run();
        r.faults[0].revert_error = Some("nft: table not found".into());
        let x = render(&r);
        assert!(x.contains("<testcase name=\"revert fault payments-slow\""), "{x}");
        assert!(x.contains("errors=\"1\""));
    }

    #[test]
    fn escapes_markup_and_drops_characters_xml_cannot_hold() {
        let mut r = sample::latency_fault_run();
        r.hypotheses[0].name = "a<b>&\"c\"\u{1}'d'".into();
        let x = render(&r);
        assert!(
            x.contains("name=\"a&lt;b&gt;&amp;&quot;c&quot;\u{FFFD}&apos;d&apos;\""),
            "{x}"
        );
        assert!(!x.contains('\u{1}'));
    }

    proptest::proptest! {
        #[test]
        fn escaped_text_never_carries_markup_or_forbidden_characters(s in "\\PC*|[\\x00-\\x1f<>&'\"]*") {
            let e = esc(&s);
            proptest::prop_assert!(!e.contains(['<', '>', '"', '\'']));
            proptest::prop_assert!(!e.chars().any(|c| (c as u32) < 0x20));
            for (i, _) in e.match_indices('&') {
                let rest = &e[i..];
                proptest::prop_assert!(
                    ["&amp;", "&lt;", "&gt;", "&quot;", "&apos;", "&#10;", "&#13;", "&#9;"]
                        .iter()
                        .any(|ent| rest.starts_with(ent)),
                    "bare ampersand in {e:?}"
                );
            }
        }
    }

    #[test]
    fn wraps_several_runs_in_testsuites_with_totals() {
        let x = render_suites(&[sample::latency_fault_run(), sample::accepted_run()]);
        assert!(x.contains("<testsuites name=\"chaos\" tests=\"6\" failures=\"1\" errors=\"0\" skipped=\"1\""), "{x}");
        assert_eq!(x.matches("<testsuite ").count(), 2);
        assert_eq!(x.matches("<?xml").count(), 1);
    }
}
