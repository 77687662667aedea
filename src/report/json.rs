//! `result.json`: the run report as pretty JSON, documented by
//! `schemas/result.schema.json`. Non-finite floats are `null` (see `float`).

use super::RunReport;

/// The report as indented JSON (no trailing newline).
pub fn to_string_pretty(report: &RunReport) -> serde_json::Result<String> {
    serde_json::to_string_pretty(report)
}

/// Several reports (a game day) as one JSON array.
pub fn to_string_pretty_many(reports: &[RunReport]) -> serde_json::Result<String> {
    serde_json::to_string_pretty(reports)
}

/// Parses a `result.json` written by this or a compatible build.
pub fn from_str(s: &str) -> serde_json::Result<RunReport> {
    serde_json::from_str(s)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::sample;

    #[test]
    fn round_trips_a_report_through_json() {
        let r = sample::latency_fault_run();
        let s = to_string_pretty(&r).unwrap();
        let back = from_str(&s).unwrap();
        // Short decimals parse back exactly (serde_json's fast path); the
        // sample uses microsecond precision like a real recorder.
        assert_eq!(back, r);
        assert_eq!(back.hypotheses.len(), r.hypotheses.len());
    }

    #[test]
    fn uses_kebab_case_words_for_verdicts_and_cohorts() {
        let s = to_string_pretty(&sample::latency_fault_run()).unwrap();
        assert!(s.contains(r#""outcome": "rejected""#), "{s}");
        assert!(s.contains(r#""cohort": "experiment""#));
        assert!(s.contains(r#""schema_version": 1"#));
    }

    #[test]
    fn reads_results_written_before_p_within_and_per_key_existed() {
        let r = sample::latency_fault_run();
        let mut v: serde_json::Value =
            serde_json::from_str(&to_string_pretty(&r).unwrap()).unwrap();
        for h in v["hypotheses"].as_array_mut().unwrap() {
            let h = h.as_object_mut().unwrap();
            assert!(h.remove("p_within").is_some() && h.remove("per_key").is_some());
        }
        let old = from_str(&v.to_string()).expect("old results still parse");
        assert!(old
            .hypotheses
            .iter()
            .all(|h| h.p_within.is_nan() && h.per_key.is_none()));
        assert_eq!(old.hypotheses[0].p_value, r.hypotheses[0].p_value);
    }

    #[test]
    fn writes_both_one_sided_p_values_and_the_per_key_details() {
        let s = to_string_pretty(&sample::latency_fault_run()).unwrap();
        assert!(s.contains(r#""p_within": 0.0004"#), "{s}");
        assert!(s.contains(r#""design_effect_experiment": 3.1"#), "{s}");
    }
}
