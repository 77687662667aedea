//! `chaos analyze`: the verdict engine offline, on samples exported from
//! anywhere (a load test, a canary, another tool). Reads two files, runs
//! one test or judges one hypothesis, prints text or one JSON object.

use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use clap::{Args, ValueEnum};
use serde_json::{json, Value};

use crate::exit;
use crate::stats::{
    self, judge_keyed, Alternative, CohortData, Counts, HypothesisSpec, KeyData, KeySums,
    MetricKind, Verdict,
};
use crate::units::{parse_tolerance, Tolerance};

const AFTER_HELP: &str = "\
Input files: one number per line for sample tests (blank lines and
`#` comments are ignored), or a single `ERRORS/TOTAL` line such as
`30/10000` for rate tests (fisher, two-proportion, newcombe,
error_rate). For rate tests the argument may also be the literal
`ERRORS/TOTAL` instead of a file name.

`--alternative greater` means the experiment value is larger.

Per-key input (with --hypothesis): `KEY,VALUE` lines, one per request,
where KEY is the user (or session, tenant...) the request belongs to and
VALUE its latency (or sample), or 0/1 (ok/failed) for error_rate. When
keys repeat, the verdict uses the variance of per-key sums (cluster-robust,
as the runner does), because one user's requests are not independent;
with every key once it is the per-request test. The format is detected
per file; both files must use the same one.

Examples:
  chaos analyze --test mann-whitney --alternative greater \\
      --experiment exp_ms.txt --control ctl_ms.txt
  chaos analyze --test fisher --experiment 30/10000 --control 12/10000 --json
  chaos analyze --test newcombe --confidence 0.95 --experiment e.txt --control c.txt
  chaos analyze --hypothesis \"latency <= +10%\" --experiment e.txt --control c.txt
  chaos analyze --hypothesis \"p99 <= +20%\" --experiment e.txt --control c.txt
  chaos analyze --hypothesis \"error_rate <= +0.5pp\" --experiment 52/10000 --control 40/10000
  chaos analyze --hypothesis \"throughput >= -5%\" --experiment e_rps.txt --control c_rps.txt
  chaos analyze --hypothesis \"error_rate <= +0.5pp\" --experiment e_keyed.csv --control c_keyed.csv

With --hypothesis, alpha = 1 - confidence for each one-sided test, so the
printed interval is a (1 - 2*alpha) interval. Exit codes: 0 test done or
hypothesis accepted, 1 rejected, 4 inconclusive, 2 bad input.

JSON: Fisher's odds ratio can be infinite (or undefined when a row or
column is empty); JSON has no infinity, so `statistic` is then null and
`statistic_text` holds \"inf\" or \"nan\".";

/// Which two-sample test `--test` runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum TestName {
    MannWhitney,
    Welch,
    Fisher,
    TwoProportion,
    Newcombe,
}

impl TestName {
    fn as_str(self) -> &'static str {
        match self {
            TestName::MannWhitney => "mann-whitney",
            TestName::Welch => "welch",
            TestName::Fisher => "fisher",
            TestName::TwoProportion => "two-proportion",
            TestName::Newcombe => "newcombe",
        }
    }
}

/// `--alternative` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum AltArg {
    TwoSided,
    Greater,
    Less,
}

impl From<AltArg> for Alternative {
    fn from(a: AltArg) -> Self {
        match a {
            AltArg::TwoSided => Alternative::TwoSided,
            AltArg::Greater => Alternative::Greater,
            AltArg::Less => Alternative::Less,
        }
    }
}

/// Compare an experiment and a control sample offline.
#[derive(Debug, Args)]
#[command(after_help = AFTER_HELP)]
pub struct AnalyzeArgs {
    /// Two-sample test to run.
    #[arg(
        long,
        value_enum,
        required_unless_present = "hypothesis",
        conflicts_with = "hypothesis"
    )]
    pub test: Option<TestName>,

    /// Judge a hypothesis instead: "latency <= +10%", "p99 <= +20%",
    /// "error_rate <= +0.5pp", "throughput >= -5%", "samples <= +3%".
    #[arg(long)]
    pub hypothesis: Option<String>,

    /// Direction of the alternative; greater = experiment larger.
    #[arg(long, value_enum, default_value = "two-sided")]
    pub alternative: AltArg,

    /// Confidence level for intervals (and 1 - alpha for --hypothesis).
    #[arg(long, default_value_t = 0.95)]
    pub confidence: f64,

    /// Experiment cohort file (or ERRORS/TOTAL for rate tests).
    #[arg(long)]
    pub experiment: String,

    /// Control cohort file (or ERRORS/TOTAL for rate tests).
    #[arg(long)]
    pub control: String,

    /// With a throughput hypothesis: line i of both files covers the same
    /// time window, so the per-window log ratios are tested (paired t),
    /// which cancels traffic bursts both cohorts saw. Without it, Welch.
    #[arg(long, requires = "hypothesis")]
    pub paired: bool,

    /// Seed for the bootstrap of quantile hypotheses.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,

    /// Print one JSON object instead of text.
    #[arg(long)]
    pub json: bool,
}

/// Runs `chaos analyze`; bad input prints an error and returns exit 2.
pub fn run(args: &AnalyzeArgs) -> u8 {
    match run_inner(args) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("chaos analyze: error: {e:#}");
            exit::INVALID
        }
    }
}

fn run_inner(args: &AnalyzeArgs) -> Result<u8> {
    if !(args.confidence > 0.0 && args.confidence < 1.0) {
        bail!("--confidence {} must be strictly between 0 and 1", args.confidence);
    }
    if let Some(h) = &args.hypothesis {
        return run_hypothesis(args, h);
    }
    let test = args.test.ok_or_else(|| anyhow!("give --test or --hypothesis"))?;
    let alt: Alternative = args.alternative.into();
    let mut out = serde_json::Map::new();
    out.insert("test".into(), json!(test.as_str()));
    out.insert("alternative".into(), json!(alt.as_str()));
    match test {
        TestName::MannWhitney | TestName::Welch => {
            let e = read_samples(&args.experiment)?;
            let c = read_samples(&args.control)?;
            let r = if test == TestName::MannWhitney {
                stats::mann_whitney_u(&e, &c, alt)?
            } else {
                stats::welch_t(&e, &c, alt)?
            };
            put_statistic(&mut out, r.statistic);
            out.insert("p_value".into(), json!(r.p_value));
            if let Some(df) = r.df {
                out.insert("df".into(), json!(df));
            }
            out.insert("n_experiment".into(), json!(e.len()));
            out.insert("n_control".into(), json!(c.len()));
        }
        TestName::Fisher | TestName::TwoProportion | TestName::Newcombe => {
            let e = read_counts(&args.experiment)?;
            let c = read_counts(&args.control)?;
            match test {
                TestName::Fisher => {
                    let r = stats::fisher_exact(e, c, alt)?;
                    put_statistic(&mut out, r.statistic);
                    out.insert("p_value".into(), json!(r.p_value));
                }
                TestName::TwoProportion => {
                    let r = stats::two_proportion_z(e, c, alt)?;
                    put_statistic(&mut out, r.statistic);
                    out.insert("p_value".into(), json!(r.p_value));
                }
                _ => {
                    let i = stats::newcombe_interval(e, c, args.confidence, alt)?;
                    put_statistic(&mut out, i.estimate);
                    let p = stats::newcombe_p_value(e, c, 0.0, alt);
                    out.insert("p_value".into(), json!(p));
                    out.insert("confidence".into(), json!(args.confidence));
                    out.insert("estimate".into(), json!(i.estimate));
                    out.insert("ci_low".into(), json!(i.low));
                    out.insert("ci_high".into(), json!(i.high));
                }
            }
            out.insert("n_experiment".into(), json!(e.total));
            out.insert("n_control".into(), json!(c.total));
            out.insert("events_experiment".into(), json!(e.events));
            out.insert("events_control".into(), json!(c.events));
        }
    }
    if args.json {
        println!("{}", Value::Object(out));
    } else {
        print_test_text(&out);
    }
    Ok(exit::OK)
}

fn put_statistic(out: &mut serde_json::Map<String, Value>, v: f64) {
    if v.is_finite() {
        out.insert("statistic".into(), json!(v));
    } else {
        out.insert("statistic".into(), Value::Null);
        let text = if v.is_nan() {
            "nan"
        } else if v > 0.0 {
            "inf"
        } else {
            "-inf"
        };
        out.insert("statistic_text".into(), json!(text));
    }
}

fn print_test_text(out: &serde_json::Map<String, Value>) {
    let order = [
        "test",
        "alternative",
        "statistic",
        "statistic_text",
        "p_value",
        "df",
        "confidence",
        "ci_low",
        "ci_high",
        "n_experiment",
        "n_control",
        "events_experiment",
        "events_control",
    ];
    for key in order {
        if let Some(v) = out.get(key) {
            let shown = match v {
                Value::String(s) => s.clone(),
                Value::Null => continue,
                other => other.to_string(),
            };
            println!("{:<18} {shown}", key.replace('_', " "));
        }
    }
}

/// A parsed `--hypothesis`.
#[derive(Debug, Clone, PartialEq)]
pub struct ParsedHypothesis {
    pub kind: MetricKind,
    pub tolerance: Tolerance,
    pub metric: String,
}

/// Parses "METRIC <= +TOL" / "METRIC >= -TOL".
pub fn parse_hypothesis(text: &str) -> Result<ParsedHypothesis> {
    let (metric, op, tol) = if let Some((m, t)) = text.split_once("<=") {
        (m.trim(), "<=", t.trim())
    } else if let Some((m, t)) = text.split_once(">=") {
        (m.trim(), ">=", t.trim())
    } else {
        bail!(
            "hypothesis {text:?} needs an operator: \"latency <= +10%\" or \
             \"throughput >= -5%\""
        );
    };
    let tolerance =
        parse_tolerance(tol).map_err(|e| anyhow!("hypothesis {text:?}: {e}"))?;
    let up = tolerance.sign() > 0.0;
    if (op == "<=") != up {
        bail!(
            "hypothesis {text:?}: `<=` goes with a positive tolerance (\"may be at most +10% \
             higher\") and `>=` with a negative one (\"may be at most -5% lower\")"
        );
    }
    let lower = metric.to_ascii_lowercase();
    let kind = match lower.as_str() {
        "latency" => MetricKind::LatencyDistribution,
        "error_rate" | "errors" => MetricKind::ErrorRate,
        "throughput" => MetricKind::Throughput,
        "samples" | "value" => MetricKind::Samples,
        q if q.starts_with('p') && q.len() > 1 => {
            let digits = &q[1..];
            let v: f64 = digits
                .parse()
                .map_err(|_| anyhow!("hypothesis {text:?}: unknown metric {metric:?}"))?;
            // p99 → 0.99, p999 → 0.999, p50 → 0.5
            let p = v / 10f64.powi(digits.trim_start_matches('0').len().max(2) as i32);
            if !(p > 0.0 && p < 1.0) {
                bail!("hypothesis {text:?}: quantile {metric:?} is out of range");
            }
            MetricKind::LatencyQuantile(p)
        }
        _ => bail!(
            "hypothesis {text:?}: unknown metric {metric:?}; use latency, p50, p90, p99, \
             error_rate, throughput or samples"
        ),
    };
    let fits = match (kind, tolerance) {
        (MetricKind::LatencyDistribution | MetricKind::LatencyQuantile(_), t) => {
            matches!(t, Tolerance::Relative { .. }) && up
        }
        (MetricKind::ErrorRate, _) => up,
        (MetricKind::Throughput, t) => matches!(t, Tolerance::Relative { .. }) && !up,
        (MetricKind::Samples, _) => true,
    };
    if !fits {
        bail!(
            "hypothesis {text:?}: tolerance {tolerance} does not fit {metric}; latency and \
             quantiles take \"+N%\", error_rate \"+Npp\" or \"+N%\", throughput \"-N%\""
        );
    }
    Ok(ParsedHypothesis { kind, tolerance, metric: metric.to_string() })
}

fn run_hypothesis(args: &AnalyzeArgs, text: &str) -> Result<u8> {
    let h = parse_hypothesis(text)?;
    let keyed = [&args.experiment, &args.control].map(|a| is_keyed(a));
    if keyed[0] != keyed[1] {
        bail!(
            "{} and {} must both be KEY,VALUE lines or both plain values",
            args.experiment,
            args.control
        );
    }
    let mut per_key: Option<KeyData> = None;
    let data = if keyed[0] {
        if args.paired || h.kind == MetricKind::Throughput {
            bail!("per-key KEY,VALUE input applies to latency, quantile, error_rate and samples");
        }
        let (e, c) = (read_keyed(&args.experiment)?, read_keyed(&args.control)?);
        if h.kind == MetricKind::ErrorRate {
            let (ce, se) = keyed_counts(&args.experiment, &e)?;
            let (cc, sc) = keyed_counts(&args.control, &c)?;
            per_key = Some(KeyData::Sums { experiment: se, control: sc });
            CohortData::Counts { experiment: ce, control: cc }
        } else {
            per_key = Some(KeyData::Labels { experiment: e.labels, control: c.labels });
            CohortData::Samples { experiment: e.values, control: c.values }
        }
    } else if h.kind == MetricKind::ErrorRate {
        CohortData::Counts {
            experiment: read_counts(&args.experiment)?,
            control: read_counts(&args.control)?,
        }
    } else if args.paired {
        if h.kind != MetricKind::Throughput {
            bail!("--paired applies to throughput hypotheses only, not {:?}", h.metric);
        }
        let (experiment, control) =
            (read_samples(&args.experiment)?, read_samples(&args.control)?);
        if experiment.len() != control.len() {
            bail!(
                "--paired needs one line per window in both files; {} has {} and {} has {}",
                args.experiment,
                experiment.len(),
                args.control,
                control.len()
            );
        }
        CohortData::AlignedWindows { experiment, control }
    } else {
        CohortData::Samples {
            experiment: read_samples(&args.experiment)?,
            control: read_samples(&args.control)?,
        }
    };
    let spec = HypothesisSpec {
        name: text.to_string(),
        kind: h.kind,
        tolerance: h.tolerance,
        critical: true,
        min_samples: 0,
    };
    // Rounded so 0.95 gives alpha 0.05, not 0.050000000000000044.
    let alpha = ((1.0 - args.confidence) * 1e12).round() / 1e12;
    if alpha >= 0.5 {
        bail!(
            "--confidence {} is too low for a verdict (must exceed 0.5)",
            args.confidence
        );
    }
    let v = judge_keyed(&spec, &data, per_key.as_ref(), alpha, args.seed);
    if args.json {
        let mut obj = serde_json::to_value(&v).context("serialize verdict")?;
        if let Value::Object(map) = &mut obj {
            map.insert("alpha".into(), json!(alpha));
            map.insert("tolerance".into(), json!(h.tolerance.to_string()));
        }
        println!("{obj}");
    } else {
        let pct = |x: f64| {
            if x.is_finite() {
                format!("{:+.3}%", x * 100.0)
            } else {
                "n/a".into()
            }
        };
        println!("hypothesis   {text}");
        println!("verdict      {}", v.verdict.as_str().to_uppercase());
        println!("test         {}", v.test);
        if v.tested {
            println!("estimate     {}   ({})", pct(v.estimate), v.scale);
            println!(
                "interval     [{}, {}]   ({:.0}% two-sided; margin {})",
                pct(v.ci_low),
                pct(v.ci_high),
                (1.0 - 2.0 * alpha) * 100.0,
                pct(v.margin)
            );
            println!("P(worse)     {:.4e}   (small: rejected)", v.p_reject);
            println!("P(within)    {:.4e}   (small: accepted)", v.p_accept);
            if let Some(k) = v.clustering {
                println!(
                    "per key      {}/{} keys, design effect {:.2}/{:.2} (experiment/control); \
                     per-request P(worse) {:.4e}, P(within) {:.4e}",
                    k.keys_experiment,
                    k.keys_control,
                    k.design_effect_experiment,
                    k.design_effect_control,
                    k.p_reject_per_request,
                    k.p_accept_per_request
                );
            }
        }
        println!("n            experiment {}, control {}", v.n_experiment, v.n_control);
        if let Some(n) = v.needed_n {
            println!("needed n     about {n} per cohort for 80% power");
        }
        println!("reason       {}", v.reason);
    }
    Ok(match v.verdict {
        Verdict::Accepted => exit::OK,
        Verdict::Rejected => exit::REJECTED,
        Verdict::Inconclusive => exit::INCONCLUSIVE,
    })
}

fn read_text(path: &Path) -> Result<String> {
    std::fs::read_to_string(path)
        .with_context(|| format!("cannot read {}", path.display()))
}

/// Strips `#` comments and surrounding blanks.
fn content(line: &str) -> &str {
    line.split('#').next().unwrap_or("").trim()
}

/// Reads one finite number per line.
pub fn read_samples(arg: &str) -> Result<Vec<f64>> {
    let path = PathBuf::from(arg);
    let text = read_text(&path)?;
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let c = content(line);
        if c.is_empty() {
            continue;
        }
        let v: f64 = c.parse().map_err(|_| {
            anyhow!("{}:{}: expected a number, found {c:?}", path.display(), i + 1)
        })?;
        if !v.is_finite() {
            bail!("{}:{}: {c:?} is not a finite number", path.display(), i + 1);
        }
        out.push(v);
    }
    if out.is_empty() {
        bail!(
            "{}: no numbers found (the file is empty or only comments)",
            path.display()
        );
    }
    Ok(out)
}

/// Whether a file holds `KEY,VALUE` lines (its first data line has a comma).
fn is_keyed(arg: &str) -> bool {
    std::fs::read_to_string(arg)
        .ok()
        .and_then(|t| {
            t.lines().map(content).find(|c| !c.is_empty()).map(|c| c.contains(','))
        })
        .unwrap_or(false)
}

/// Per-request values with their key labels (keys interned in order).
#[derive(Debug, Default, PartialEq)]
pub struct KeyedSamples {
    pub values: Vec<f64>,
    pub labels: Vec<u64>,
    pub keys: usize,
}

/// Reads `KEY,VALUE` lines (the key is any text without a comma).
pub fn read_keyed(arg: &str) -> Result<KeyedSamples> {
    let path = PathBuf::from(arg);
    let text = read_text(&path)?;
    let mut ids: std::collections::HashMap<String, u64> =
        std::collections::HashMap::new();
    let mut out = KeyedSamples::default();
    for (i, line) in text.lines().enumerate() {
        let c = content(line);
        if c.is_empty() {
            continue;
        }
        let (key, value) = c.rsplit_once(',').ok_or_else(|| {
            anyhow!("{}:{}: expected KEY,VALUE, found {c:?}", path.display(), i + 1)
        })?;
        let key = key.trim();
        if key.is_empty() {
            bail!("{}:{}: the key before the comma is empty", path.display(), i + 1);
        }
        let v: f64 = value.trim().parse().map_err(|_| {
            anyhow!(
                "{}:{}: expected a number after the comma, found {c:?}",
                path.display(),
                i + 1
            )
        })?;
        if !v.is_finite() {
            bail!("{}:{}: {c:?} is not a finite number", path.display(), i + 1);
        }
        let next = ids.len() as u64;
        let id = *ids.entry(key.to_string()).or_insert(next);
        out.values.push(v);
        out.labels.push(id);
    }
    if out.values.is_empty() {
        bail!("{}: no KEY,VALUE lines found", path.display());
    }
    out.keys = ids.len();
    Ok(out)
}

/// Error counts and per-key sums from `KEY,0|1` lines.
fn keyed_counts(arg: &str, k: &KeyedSamples) -> Result<(Counts, Vec<KeySums>)> {
    if let Some(bad) = k.values.iter().find(|v| **v != 0.0 && **v != 1.0) {
        bail!("{arg}: error_rate takes KEY,0 (ok) or KEY,1 (failed) lines, found value {bad}");
    }
    let events = k.values.iter().filter(|v| **v == 1.0).count() as u64;
    let counts = Counts { events, total: k.values.len() as u64 };
    Ok((counts, stats::cluster::group(&k.values, &k.labels)))
}

fn parse_counts(c: &str) -> std::result::Result<Counts, String> {
    let (e, t) = c
        .split_once('/')
        .ok_or_else(|| format!("expected ERRORS/TOTAL like \"30/10000\", found {c:?}"))?;
    let events: u64 = e
        .trim()
        .parse()
        .map_err(|_| format!("errors {:?} is not a whole number in {c:?}", e.trim()))?;
    let total: u64 = t
        .trim()
        .parse()
        .map_err(|_| format!("total {:?} is not a whole number in {c:?}", t.trim()))?;
    if total == 0 {
        return Err(format!("total is 0 in {c:?}; need at least one request"));
    }
    if events > total {
        return Err(format!("{events} errors exceed the total of {total} in {c:?}"));
    }
    Ok(Counts { events, total })
}

/// Reads `ERRORS/TOTAL` from a file, or from the argument itself when it
/// is not a file and looks like counts.
pub fn read_counts(arg: &str) -> Result<Counts> {
    let path = PathBuf::from(arg);
    if !path.exists()
        && arg.contains('/')
        && arg.chars().all(|c| c.is_ascii_digit() || c == '/')
    {
        return parse_counts(arg).map_err(|e| anyhow!("{e}"));
    }
    let text = read_text(&path)?;
    let mut found: Option<(usize, Counts)> = None;
    for (i, line) in text.lines().enumerate() {
        let c = content(line);
        if c.is_empty() {
            continue;
        }
        if let Some((first, _)) = found {
            bail!(
                "{}:{}: only one ERRORS/TOTAL line is allowed (the first is on line {})",
                path.display(),
                i + 1,
                first
            );
        }
        let counts =
            parse_counts(c).map_err(|e| anyhow!("{}:{}: {e}", path.display(), i + 1))?;
        found = Some((i + 1, counts));
    }
    found.map(|(_, c)| c).ok_or_else(|| {
        anyhow!("{}: no ERRORS/TOTAL line found (the file is empty)", path.display())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_hypothesis_forms_from_the_issue() {
        let h = parse_hypothesis("latency <= +10%").unwrap();
        assert_eq!(h.kind, MetricKind::LatencyDistribution);
        assert_eq!(h.tolerance, Tolerance::Relative { fraction: 0.10 });
        assert_eq!(
            parse_hypothesis("p99 <= +20%").unwrap().kind,
            MetricKind::LatencyQuantile(0.99)
        );
        assert_eq!(
            parse_hypothesis("p50 <= +20%").unwrap().kind,
            MetricKind::LatencyQuantile(0.5)
        );
        assert_eq!(
            parse_hypothesis("p999 <= +20%").unwrap().kind,
            MetricKind::LatencyQuantile(0.999)
        );
        assert_eq!(
            parse_hypothesis("error_rate <= +0.5pp").unwrap().tolerance,
            Tolerance::Absolute { points: 0.005 }
        );
        assert_eq!(
            parse_hypothesis("throughput >= -5%").unwrap().kind,
            MetricKind::Throughput
        );
    }

    #[test]
    fn refuses_hypotheses_whose_direction_does_not_fit() {
        assert!(parse_hypothesis("latency >= -10%").is_err());
        assert!(parse_hypothesis("latency <= -10%").is_err());
        assert!(parse_hypothesis("throughput <= +5%").is_err());
        assert!(parse_hypothesis("latency <= +0.5pp").is_err());
        assert!(parse_hypothesis("latency = +5%").is_err());
        assert!(parse_hypothesis("bogus <= +5%").is_err());
    }

    #[test]
    fn counts_lines_are_validated() {
        assert_eq!(parse_counts("30/10000"), Ok(Counts { events: 30, total: 10000 }));
        assert!(parse_counts("3/0").unwrap_err().contains("total is 0"));
        assert!(parse_counts("11/10").unwrap_err().contains("exceed"));
        assert!(parse_counts("x/10").is_err());
        assert!(read_counts("5/100").is_ok());
    }
}
