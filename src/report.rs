//! The run report: the versioned, self-describing record of one experiment
//! run (`RunReport`, schema version 1) that the runner fills, and the
//! writers that turn it into `result.json`, `junit.xml` and `report.html`.
//!
//! The model holds plain numbers and strings only (no statistics internals)
//! so the JSON is stable for consumers. Every renderer is a pure function of
//! the model; game days reuse them on a slice of reports.

pub mod float;
pub mod hist;
pub mod html;
pub mod json;
pub mod junit;
pub mod sample;
mod svg;
pub mod terminal;

use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

use crate::cohort::Cohort;
use crate::outcome::{RunOutcome, Verdict};

/// Version of the `result.json` layout; bump on any incompatible change.
pub const SCHEMA_VERSION: u32 = 1;

/// File names inside a report directory.
pub const RESULT_JSON: &str = "result.json";
/// JUnit XML file name.
pub const JUNIT_XML: &str = "junit.xml";
/// HTML report file name.
pub const REPORT_HTML: &str = "report.html";

/// Errors while writing a report directory.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    /// The directory could not be created.
    #[error("cannot create report directory {dir}: {source}")]
    CreateDir {
        /// Directory that was being created.
        dir: PathBuf,
        /// Underlying I/O error.
        source: std::io::Error,
    },
    /// A report file could not be written.
    #[error("cannot write report file {path}: {source}")]
    Write {
        /// File that was being written.
        path: PathBuf,
        /// Underlying I/O error.
        source: std::io::Error,
    },
    /// The model could not be serialized (should not happen: plain data).
    #[error("cannot serialize the run report to JSON: {0}")]
    Json(#[from] serde_json::Error),
}

impl From<ReportError> for std::io::Error {
    fn from(e: ReportError) -> Self {
        let kind = match &e {
            ReportError::CreateDir { source, .. } | ReportError::Write { source, .. } => {
                source.kind()
            }
            ReportError::Json(_) => std::io::ErrorKind::Other,
        };
        std::io::Error::new(kind, e.to_string())
    }
}

/// Everything known about one finished (or aborted) run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunReport {
    /// Always `SCHEMA_VERSION` when produced by this build.
    pub schema_version: u32,
    /// Unique id of the run (also the tracing span field and journal key).
    pub run_id: String,
    /// Which experiment ran.
    pub experiment: ExperimentInfo,
    /// How the run ended; maps onto the exit code.
    pub outcome: RunOutcome,
    /// RFC 3339 UTC timestamp of the start of preflight.
    pub started_at: String,
    /// RFC 3339 UTC timestamp after the last revert and verdict.
    pub finished_at: String,
    /// Wall time per lifecycle phase.
    pub timings: Timings,
    /// Set when the abort monitor (or a safety condition) stopped the run.
    pub abort: Option<AbortInfo>,
    /// Every fault of the experiment, applied or not.
    pub faults: Vec<FaultRecord>,
    /// One entry per steady-state hypothesis, in file order.
    pub hypotheses: Vec<HypothesisResult>,
    /// Traffic summaries, control first.
    pub cohorts: Vec<CohortSeries>,
    /// Sample-ratio-mismatch check of the traffic split.
    pub srm: Option<SrmInfo>,
    /// Human-readable warnings (validation, data gates, revert trouble).
    pub warnings: Vec<String>,
    /// Where the run's OpenTelemetry trace went (`[otel]`); `None` when
    /// tracing is off. Absent in files written before tracing existed.
    #[serde(default)]
    pub trace: Option<TraceInfo>,
}

/// Where to find the run's trace in Jaeger, Tempo or any OTLP backend.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TraceInfo {
    /// W3C trace id, 32 lowercase hex digits.
    pub trace_id: String,
    /// The OTLP/HTTP URL the spans were sent to.
    pub endpoint: String,
    /// Every span was accepted by the collector before the run ended.
    pub delivered: bool,
    /// Why not, when `delivered` is false.
    pub error: Option<String>,
}

/// Identity of the experiment that ran.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExperimentInfo {
    /// `name` from the experiment file.
    pub name: String,
    /// `description` from the experiment file (may be empty).
    pub description: String,
    /// Path of the experiment file as given on the command line.
    pub file: String,
    /// Planned observation duration in seconds.
    #[serde(with = "float")]
    pub duration_s: f64,
}

/// Wall time in seconds spent in each lifecycle phase.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Timings {
    /// Preflight checks.
    #[serde(with = "float")]
    pub preflight_s: f64,
    /// Baseline observation before the first fault.
    #[serde(with = "float")]
    pub baseline_s: f64,
    /// Observation with faults (until the end or the abort).
    #[serde(with = "float")]
    pub observe_s: f64,
    /// Reverting every fault.
    #[serde(with = "float")]
    pub revert_s: f64,
    /// Whole run, start to finish.
    #[serde(with = "float")]
    pub total_s: f64,
}

/// Why and when the run was stopped early.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AbortInfo {
    /// Seconds since the start of traffic (same axis as the timelines).
    #[serde(with = "float")]
    pub at_s: f64,
    /// Hypothesis whose abort threshold was crossed; `None` for other
    /// safety stops (signal, revert failure, blast radius).
    pub hypothesis: Option<String>,
    /// One sentence a human can act on.
    pub reason: String,
    /// Always-valid sequential p-value at the abort (`null` if n/a).
    #[serde(with = "float")]
    pub p_value: f64,
    /// Effect estimate at the abort, in the hypothesis' unit (`null` if n/a).
    #[serde(with = "float")]
    pub estimate: f64,
}

/// One fault of the experiment and its lifecycle.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FaultRecord {
    /// Id from the experiment file (or `faults[i]`).
    pub id: String,
    /// Fault type, kebab-case (`latency`, `http-error`, `kill`, ...).
    pub kind: String,
    /// Target selector as written (`pid:123`, `region:eu`, ...).
    pub target: String,
    /// Short human description ("+200ms on 100% of requests").
    pub description: String,
    /// Seconds since traffic start when applied; `None` if never applied.
    #[serde(with = "float::option")]
    pub applied_at_s: Option<f64>,
    /// Seconds since traffic start when reverted; `None` if not reverted.
    #[serde(with = "float::option")]
    pub reverted_at_s: Option<f64>,
    /// Set when reverting failed (then `chaos recover` is needed).
    pub revert_error: Option<String>,
}

/// The verdict on one steady-state hypothesis with its evidence.
///
/// `estimate`, `ci_low`, `ci_high` and `margin` are the effect θ in the
/// "worse" direction (experiment vs control) in `unit`: `%` for relative
/// tolerances (100·(e^θ−1)), `pp` for rate differences, `ms` for absolute
/// latency differences.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HypothesisResult {
    /// Hypothesis name from the experiment file.
    pub name: String,
    /// Metric being compared (`latency_p99`, `error_rate`, ...).
    pub metric: String,
    /// Tolerance as written (`+10%`, `+0.5pp`).
    pub tolerance: String,
    /// Must be accepted for the run to be accepted; see `stats::judge_experiment`.
    pub critical: bool,
    /// Accepted / rejected / inconclusive.
    pub verdict: Verdict,
    /// Statistical test used (`mann-whitney-u`, `hd-bootstrap`, ...).
    pub test: String,
    /// Point estimate of the effect.
    #[serde(with = "float")]
    pub estimate: f64,
    /// Lower bound of the 1−2α interval.
    #[serde(with = "float")]
    pub ci_low: f64,
    /// Upper bound of the 1−2α interval.
    #[serde(with = "float")]
    pub ci_high: f64,
    /// The tolerance m in `unit`.
    #[serde(with = "float")]
    pub margin: f64,
    /// Raw p-value of the rejection test.
    #[serde(with = "float")]
    pub p_value: f64,
    /// Holm-adjusted p-value (`null` for advisory hypotheses).
    #[serde(with = "float")]
    pub p_value_adjusted: f64,
    /// P(within): p-value of the acceptance test, i.e. of rejecting
    /// "worse than or at the tolerance" (small: ACCEPTED). `p_value` is
    /// P(worse) (small: REJECTED). `null` when untested, and in results
    /// written before it existed.
    #[serde(with = "float", default = "float::nan")]
    pub p_within: f64,
    /// Per-key inference (keys repeat: requests of one user are not
    /// independent). Absent in results written before it existed and for
    /// metrics without keys (throughput, PromQL).
    #[serde(default)]
    pub per_key: Option<PerKeyInfo>,
    /// Samples in the experiment cohort.
    pub n_experiment: u64,
    /// Samples in the control cohort.
    pub n_control: u64,
    /// Samples per cohort still needed when inconclusive for lack of data.
    pub needed_n: Option<u64>,
    /// Why this verdict, in one sentence.
    pub reason: String,
    /// Unit of `estimate`, `ci_low`, `ci_high`, `margin`.
    pub unit: String,
}

/// What per-key (cluster-robust) inference did to one hypothesis.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PerKeyInfo {
    /// Distinct keys (occupied key buckets) in the experiment cohort.
    pub keys_experiment: u64,
    /// Distinct keys (occupied key buckets) in the control cohort.
    pub keys_control: u64,
    /// Design effect applied to the experiment cohort (≥ 1; 1 means the
    /// per-request variance was kept).
    #[serde(with = "float")]
    pub design_effect_experiment: f64,
    /// Design effect applied to the control cohort.
    #[serde(with = "float")]
    pub design_effect_control: f64,
    /// P(worse) of the per-request test on the same data.
    #[serde(with = "float")]
    pub p_value_per_request: f64,
    /// P(within) of the per-request test on the same data.
    #[serde(with = "float")]
    pub p_within_per_request: f64,
}

/// Traffic summary and time series of one cohort.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CohortSeries {
    /// Which cohort.
    pub cohort: Cohort,
    /// Requests observed.
    pub total: u64,
    /// Requests that failed (5xx, resets, timeouts).
    pub errors: u64,
    /// Latency quantiles over the whole observation.
    pub latency_ms: Quantiles,
    /// Fixed windows in time order.
    pub timeline: Vec<WindowPoint>,
    /// Histogram buckets `[upper_ms, count]`, ascending, non-cumulative.
    #[serde(with = "float::buckets")]
    pub latency_histogram: Vec<(f64, u64)>,
}

/// Latency quantiles in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Quantiles {
    /// Median.
    #[serde(with = "float")]
    pub p50: f64,
    /// 90th percentile.
    #[serde(with = "float")]
    pub p90: f64,
    /// 99th percentile.
    #[serde(with = "float")]
    pub p99: f64,
    /// Slowest request.
    #[serde(with = "float")]
    pub max: f64,
}

/// One time window of a cohort's traffic.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WindowPoint {
    /// End of the window, seconds since traffic start.
    #[serde(with = "float")]
    pub t_s: f64,
    /// Requests completed in the window.
    pub requests: u64,
    /// Failed requests in the window.
    pub errors: u64,
    /// Median latency in the window (`null` when no requests).
    #[serde(with = "float")]
    pub p50_ms: f64,
    /// 99th percentile latency in the window (`null` when no requests).
    #[serde(with = "float")]
    pub p99_ms: f64,
}

/// Chi-square check that the cohorts got their configured traffic shares.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SrmInfo {
    /// Chi-square statistic.
    #[serde(with = "float")]
    pub chi2: f64,
    /// Its p-value.
    #[serde(with = "float")]
    pub p_value: f64,
    /// True when the split is off (verdicts are then inconclusive).
    pub mismatch: bool,
    /// What was counted. Results written before the key-level check
    /// counted requests.
    #[serde(default = "SrmUnit::legacy")]
    pub unit: SrmUnit,
}

/// The unit [`SrmInfo`] counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SrmUnit {
    /// Distinct cohort keys (occupied buckets of the key sketch).
    Keys,
    /// Requests.
    Requests,
}

impl SrmUnit {
    fn legacy() -> SrmUnit {
        SrmUnit::Requests
    }

    pub fn as_str(self) -> &'static str {
        match self {
            SrmUnit::Keys => "keys",
            SrmUnit::Requests => "requests",
        }
    }
}

impl RunReport {
    /// The process exit code of this run: the outcome's, except that a
    /// fault left behind (a failed revert) is an environment error (5)
    /// whatever the verdict — a CI gate must not go green while a fault
    /// is still on a host.
    pub fn exit_code(&self) -> u8 {
        if self.unreverted_faults() > 0 {
            crate::exit::ENVIRONMENT
        } else {
            self.outcome.exit_code()
        }
    }

    /// How many applied faults could not be reverted (`chaos recover`
    /// has to finish them).
    pub fn unreverted_faults(&self) -> usize {
        self.faults.iter().filter(|f| f.revert_error.is_some()).count()
    }

    /// The series of one cohort, if recorded.
    pub fn cohort(&self, c: Cohort) -> Option<&CohortSeries> {
        self.cohorts.iter().find(|s| s.cohort == c)
    }

    /// Count of hypotheses with the given verdict.
    pub fn count(&self, v: Verdict) -> usize {
        self.hypotheses.iter().filter(|h| h.verdict == v).count()
    }
}

impl HypothesisResult {
    /// The Holm-adjusted p-value if there is one, else the raw one.
    pub fn p_value_adjusted_or_raw(&self) -> f64 {
        if self.p_value_adjusted.is_finite() {
            self.p_value_adjusted
        } else {
            self.p_value
        }
    }
}

/// Where `write_all` put the files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReportPaths {
    /// `DIR/result.json`.
    pub json: PathBuf,
    /// `DIR/junit.xml`.
    pub junit: PathBuf,
    /// `DIR/report.html`.
    pub html: PathBuf,
}

/// Writes `result.json`, `junit.xml` and `report.html` into `dir`
/// (created if missing). Files are written to a temporary name and renamed
/// so a reader never sees half a report.
pub fn write_all(dir: &Path, report: &RunReport) -> std::io::Result<ReportPaths> {
    Ok(try_write_all(dir, report)?)
}

/// `write_all` with a typed error.
pub fn try_write_all(dir: &Path, report: &RunReport) -> Result<ReportPaths, ReportError> {
    std::fs::create_dir_all(dir)
        .map_err(|source| ReportError::CreateDir { dir: dir.to_path_buf(), source })?;
    let paths = ReportPaths {
        json: dir.join(RESULT_JSON),
        junit: dir.join(JUNIT_XML),
        html: dir.join(REPORT_HTML),
    };
    let mut json = json::to_string_pretty(report)?;
    json.push('\n');
    write_atomically(&paths.json, &json)?;
    write_atomically(&paths.junit, &junit::render(report))?;
    write_atomically(&paths.html, &html::render(report))?;
    Ok(paths)
}

fn write_atomically(path: &Path, contents: &str) -> Result<(), ReportError> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let err = |source| ReportError::Write { path: path.to_path_buf(), source };
    std::fs::write(&tmp, contents).map_err(err)?;
    std::fs::rename(&tmp, path).map_err(err)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fault_left_behind_exits_5_whatever_the_verdict() {
        let mut r = sample::latency_fault_run();
        assert_eq!(r.exit_code(), r.outcome.exit_code());
        assert_eq!(r.unreverted_faults(), 0);
        let Some(f) = r.faults.first_mut() else { panic!("the sample has a fault") };
        f.revert_error = Some("host web-1: the agent left before the revert".into());
        assert_eq!(r.unreverted_faults(), 1);
        assert_eq!(r.exit_code(), crate::exit::ENVIRONMENT);
        assert_ne!(r.outcome.exit_code(), crate::exit::ENVIRONMENT, "the verdict stays");
    }

    #[test]
    fn writes_all_three_files_into_a_new_directory() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("nested/reports");
        let paths = write_all(&out, &sample::latency_fault_run()).unwrap();
        for p in [&paths.json, &paths.junit, &paths.html] {
            let len = std::fs::metadata(p).unwrap().len();
            assert!(len > 500, "{} is only {len} bytes", p.display());
        }
        assert!(!out.join("result.json.tmp").exists());
    }

    #[test]
    fn reports_the_directory_when_it_cannot_be_created() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("file");
        std::fs::write(&file, "x").unwrap();
        let err = try_write_all(&file.join("sub"), &sample::latency_fault_run())
            .unwrap_err()
            .to_string();
        assert!(err.contains("cannot create report directory"), "{err}");
        assert!(err.contains("file/sub"), "{err}");
    }
}
