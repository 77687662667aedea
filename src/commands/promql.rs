//! `chaos promql`: try a hypothesis or guardrail query against Prometheus
//! before putting it in an experiment file: does it return exactly one
//! series per cohort, how many samples does a window give, is a guardrail
//! currently above its threshold.

use std::time::{Duration, SystemTime};

use clap::Args;

use crate::exit;
use crate::promql::{self, PromConfig, PromError};
use crate::units::parse_duration;

const AFTER_HELP: &str = "Examples:
  # A hypothesis query: evaluated per cohort over the last 5 minutes
  chaos promql --last 5m \\
    'sum(rate(chaos_requests_total{cohort=\"$cohort\",status_class=\"5xx\"}[30s]))'

  # A guardrail: exit 1 when the value is above the threshold now
  chaos promql --url http://127.0.0.1:9090 --above 14.4 \\
    'sum(rate(http_requests_total{code=~\"5..\"}[5m])) / sum(rate(http_requests_total[5m])) / 0.001'

  # Prometheus behind TLS with a private CA
  chaos promql --url https://prom.internal:9090 --ca-file /etc/chaos/ca.pem 'up'

A query with $cohort runs as range queries (one per cohort) and prints the
sample count, min, median and max of each cohort; without it, it runs as an
instant query. Credentials come from CHAOS_PROMETHEUS_TOKEN (bearer) or
CHAOS_PROMETHEUS_BASIC_AUTH (USER:PASSWORD).
Exit status: 0 ok (guardrail not breached), 1 guardrail breached, 2 the
query was refused (syntax, several series), 5 Prometheus unreachable.";

/// Arguments of `chaos promql`.
#[derive(Debug, Args)]
#[command(after_help = AFTER_HELP)]
pub struct PromqlArgs {
    /// The PromQL query; `$cohort` makes it a per-cohort hypothesis query.
    #[arg(value_name = "QUERY")]
    pub query: String,
    /// Prometheus base URL.
    #[arg(long, env = "CHAOS_PROMETHEUS_URL", default_value = "http://127.0.0.1:9090")]
    pub url: String,
    /// Window for per-cohort queries, ending now (e.g. "5m").
    #[arg(long, default_value = "5m", value_parser = parse_duration)]
    pub last: Duration,
    /// Range-query resolution.
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    pub step: Duration,
    /// Bound on each request.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    pub timeout: Duration,
    /// Guardrail threshold: report (and exit 1) when the value is above it.
    #[arg(long)]
    pub above: Option<f64>,
    /// Bearer token.
    #[arg(long, env = "CHAOS_PROMETHEUS_TOKEN", hide_env_values = true)]
    pub bearer_token: Option<String>,
    /// Basic auth as USER:PASSWORD.
    #[arg(long, env = "CHAOS_PROMETHEUS_BASIC_AUTH", hide_env_values = true)]
    pub basic_auth: Option<String>,
    /// CA bundle (PEM) an https:// Prometheus must chain to (default: the
    /// system trust store).
    #[arg(long, value_name = "FILE")]
    pub ca_file: Option<std::path::PathBuf>,
}

/// Runs `chaos promql`.
pub fn run(args: PromqlArgs) -> u8 {
    let basic_auth = match args.basic_auth.as_deref().map(|b| b.split_once(':')) {
        None => None,
        Some(Some((u, p))) if !u.is_empty() => Some((u.to_string(), p.to_string())),
        Some(_) => {
            eprintln!("error: --basic-auth must be USER:PASSWORD");
            return exit::INVALID;
        }
    };
    let cfg = PromConfig {
        url: args.url.clone(),
        timeout: args.timeout,
        step: args.step,
        bearer_token: args.bearer_token.clone(),
        basic_auth,
        ca_file: args.ca_file.clone(),
    };
    let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return exit::ENVIRONMENT;
        }
    };
    match rt.block_on(evaluate(&cfg, &args)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e}");
            exit_code_of(&e)
        }
    }
}

async fn evaluate(cfg: &PromConfig, args: &PromqlArgs) -> Result<u8, PromError> {
    promql::check_reachable(cfg).await?;
    if args.query.contains(promql::COHORT_PLACEHOLDER) {
        let end = SystemTime::now();
        let start = end.checked_sub(args.last).unwrap_or(SystemTime::UNIX_EPOCH);
        let s = promql::cohort_samples(cfg, &args.query, start, end).await?;
        println!(
            "{:<11} {:>7} {:>12} {:>12} {:>12}",
            "cohort", "samples", "min", "median", "max"
        );
        for (name, values) in [("control", &s.control), ("experiment", &s.experiment)] {
            println!("{}", summary_line(name, values));
        }
        if s.control.is_empty() || s.experiment.is_empty() {
            println!("note: a cohort without samples makes a hypothesis inconclusive");
        }
        return Ok(exit::OK);
    }
    let value = promql::instant(cfg, &args.query).await?;
    match value {
        Some(v) => println!("value: {v}"),
        None => println!("value: no data"),
    }
    match (args.above, value) {
        (Some(above), Some(v)) if v > above => {
            println!("guardrail breached: {v} > {above}");
            Ok(exit::REJECTED)
        }
        (Some(above), _) => {
            println!("guardrail holds (threshold {above})");
            Ok(exit::OK)
        }
        (None, _) => Ok(exit::OK),
    }
}

fn summary_line(name: &str, values: &[f64]) -> String {
    if values.is_empty() {
        return format!("{name:<11} {:>7} {:>12} {:>12} {:>12}", 0, "-", "-", "-");
    }
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let median = sorted[sorted.len() / 2];
    format!(
        "{name:<11} {:>7} {:>12.6} {:>12.6} {:>12.6}",
        sorted.len(),
        sorted[0],
        median,
        sorted[sorted.len() - 1]
    )
}

/// Refused queries are the user's input (2); everything about reaching
/// the server is the environment (5).
fn exit_code_of(e: &PromError) -> u8 {
    match e {
        PromError::InvalidUrl { .. }
        | PromError::MultipleSeries { .. }
        | PromError::WrongResultType { .. } => exit::INVALID,
        PromError::Status { status, .. }
            if (400..500).contains(status) && !matches!(status, 401 | 403) =>
        {
            exit::INVALID
        }
        _ => exit::ENVIRONMENT,
    }
}
