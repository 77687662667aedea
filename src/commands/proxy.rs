//! `chaos proxy`: runs the cohort proxy ad hoc (without an experiment
//! file) until Ctrl-C or SIGTERM, printing a cohort summary at the end.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Args;

use crate::cohort::Cohort;
use crate::exit;
use crate::metrics::Recorder;
use crate::tls::ServerTlsFiles;
use crate::traffic::{
    split_checks, AdminConfig, CohortKey, ForwardedMode, HttpFault, IdlePoll, IpNet,
    Proxy, ProxyConfig, ProxyMode, SplitChecks, Timeouts, Upstream, UpstreamPools,
    Workers,
};
use crate::units::{parse_duration, parse_percent};

pub const AFTER_HELP: &str = "\
Examples:
  chaos proxy --listen 127.0.0.1:8080 --upstream http://127.0.0.1:9000 \\
      --experiment-percent 5 --control-percent 5 --cohort-key header:x-user-id \\
      --admin 127.0.0.1:9901 --admin-token-file /run/secrets/chaos-admin \\
      --fault kind=latency,delay=200ms,jitter=50ms,enabled=false

  curl -X POST -H 'Authorization: Bearer s3cret' \\
      http://127.0.0.1:9901/faults/latency/enable
  curl http://127.0.0.1:9901/metrics

  chaos proxy --listen 0.0.0.0:8443 --tls-cert /etc/chaos/tls.crt \\
      --tls-key /etc/chaos/tls.key --upstream https://api.internal:8443 \\
      --upstream-ca /etc/chaos/internal-ca.pem
      (TLS for clients, ALPN h2/http1.1; TLS to the upstream, SNI api.internal)

  chaos proxy --config experiments/payments-latency.toml --admin 127.0.0.1:9901
      (listen address, pools, cohort key and split from the file's [traffic];
      its edge faults are loaded switched off)

  chaos proxy --listen 127.0.0.1:8443 --upstream h2c://127.0.0.1:50051 \\
      --fault kind=grpc,code=14,message=unavailable --trusted-proxy 10.0.0.0/8 \\
      --idle-timeout 30s --response-body-timeout 20s

Fault specs (--fault, repeatable): kind=latency|error|abort|reset|malformed|
grpc plus delay, jitter, distribution=uniform|normal|exponential, status,
body, mode=truncate|flip-bytes|json-wrong-type|wrong-content-type|
missing-content-type|oversized, code (gRPC, 0-16), message, probability
(e.g. 50%), id, enabled.
Faults only ever hit the experiment cohort. Runs until Ctrl-C or SIGTERM.

The admin endpoint binds loopback only; a non-loopback --admin is refused
(exit 2) unless --admin-allow-remote is given together with a token. Prefer
--admin-token-file (or CHAOS_ADMIN_TOKEN) to --admin-token, which anyone on
the host can read in /proc/PID/cmdline.";

/// Arguments of `chaos proxy`.
#[derive(Debug, Args)]
pub struct ProxyArgs {
    /// Take listen address, pools, cohort key and split from an experiment
    /// file's [traffic] section (its edge HTTP faults are loaded switched
    /// off, to be enabled through the admin endpoint).
    #[arg(
        long,
        value_name = "EXPERIMENT",
        conflicts_with_all = [
            "listen", "upstream", "experiment_upstream", "control_upstream",
            "experiment_percent", "control_percent", "cohort_key", "sidecar",
        ]
    )]
    pub config: Option<std::path::PathBuf>,
    /// Address clients connect to.
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    /// Upstream URL(s), comma-separated; `http://HOST:PORT[@REGION]`,
    /// `https://HOST[:PORT][@REGION]`, or `h2c://HOST:PORT` for HTTP/2 with
    /// prior knowledge (gRPC).
    #[arg(long, value_delimiter = ',', required_unless_present = "config")]
    pub upstream: Vec<String>,
    /// Separate upstream pool for the experiment cohort.
    #[arg(long, value_delimiter = ',')]
    pub experiment_upstream: Vec<String>,
    /// Separate upstream pool for the control cohort.
    #[arg(long, value_delimiter = ',')]
    pub control_upstream: Vec<String>,
    /// Share of keys in the experiment cohort (e.g. 5 or 5%).
    #[arg(long, default_value = "5")]
    pub experiment_percent: String,
    /// Share of keys in the control cohort.
    #[arg(long, default_value = "5")]
    pub control_percent: String,
    /// Sticky key: header:NAME, cookie:NAME or client-ip.
    #[arg(long, default_value = "header:x-user-id")]
    pub cohort_key: String,
    /// Sidecar mode: trust incoming x-chaos-cohort, fault only experiment.
    #[arg(long)]
    pub sidecar: bool,
    /// Admin endpoint address (health, metrics, fault toggles).
    #[arg(long)]
    pub admin: Option<SocketAddr>,
    /// Token required for admin changes (visible in /proc/PID/cmdline:
    /// prefer --admin-token-file or the environment variable).
    #[arg(long, env = "CHAOS_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,
    /// Read the admin token from this file (first line; at most 4 KiB).
    #[arg(long, value_name = "FILE", conflicts_with = "admin_token")]
    pub admin_token_file: Option<std::path::PathBuf>,
    /// Allow a non-loopback --admin address (needs a token).
    #[arg(long, requires = "admin")]
    pub admin_allow_remote: bool,
    /// Upstream response timeout (504 when exceeded).
    #[arg(long, default_value = "30s")]
    pub upstream_timeout: String,
    /// Upstream connect timeout.
    #[arg(long, default_value = "2s")]
    pub connect_timeout: String,
    /// Close a client connection whose request head takes longer than this
    /// (from its first byte).
    #[arg(long, default_value = "30s")]
    pub client_header_timeout: String,
    /// Close a client connection after this long with no request in flight.
    #[arg(long, default_value = "60s")]
    pub idle_timeout: String,
    /// Longest pause in a client's request body (408 when exceeded).
    #[arg(long, default_value = "60s")]
    pub request_body_timeout: String,
    /// Longest pause in an upstream's response body (the client connection
    /// is then cut).
    #[arg(long, default_value = "60s")]
    pub response_body_timeout: String,
    /// Largest request head (request line + headers) in bytes; larger gets
    /// 431. At least 8192.
    #[arg(long, default_value_t = crate::traffic::config::DEFAULT_MAX_HEADER_BYTES)]
    pub max_header_bytes: usize,
    /// X-Forwarded-For/-Proto and Forwarded: append (to a trusted peer's
    /// list, else replace), replace, or off.
    #[arg(long, default_value = "append")]
    pub forwarded: String,
    /// Peers (IP or CIDR, comma-separated) whose forwarding headers are
    /// appended to instead of replaced.
    #[arg(long, value_delimiter = ',')]
    pub trusted_proxy: Vec<String>,
    /// HTTP fault (repeatable), see below.
    #[arg(long = "fault")]
    pub faults: Vec<String>,
    /// Salt for the cohort hash (same seed = same cohorts across processes).
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Raw samples kept per cohort.
    #[arg(long, default_value_t = 100_000)]
    pub reservoir: usize,
    /// Worker threads serving client connections (0 = one per core).
    #[arg(long, default_value_t = 0)]
    pub workers: usize,
    /// Before a worker sleeps, poll its sockets again for this many
    /// microseconds (yielding the CPU to other runnable threads), which
    /// saves the peer the cost of waking it. Default: 20 when the proxy
    /// relays HTTP/2 to an h2c:// upstream (measured: 1.1-1.5x throughput,
    /// lower p99), 0 otherwise (on the HTTP/1.1 fast path it raised p99).
    /// An idle proxy polls once for this long after its last request.
    #[arg(long, value_name = "MICROSECONDS")]
    pub idle_poll_us: Option<u64>,
    /// Terminate TLS for clients: PEM certificate chain (leaf first).
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    pub tls_cert: Option<std::path::PathBuf>,
    /// Private key (PEM) for --tls-cert.
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    pub tls_key: Option<std::path::PathBuf>,
    /// CA bundle (PEM) that https:// upstreams must chain to; replaces the
    /// system trust store.
    #[arg(long, value_name = "FILE")]
    pub upstream_ca: Option<std::path::PathBuf>,
    /// Serve every request through the general HTTP path (hyper), even
    /// plain HTTP/1.1 GET/HEAD requests the fast path would take; for
    /// comparing the two (benches/proxy.sh) or ruling the fast path out.
    #[arg(long)]
    pub no_fast_path: bool,
}

/// `--tls-cert/--tls-key/--upstream-ca` override the file's settings;
/// the files are loaded now so a bad one is invalid input (exit 2).
fn apply_tls(args: &ProxyArgs, cfg: &mut ProxyConfig) -> anyhow::Result<()> {
    if let (Some(cert), Some(key)) = (&args.tls_cert, &args.tls_key) {
        cfg.tls = Some(ServerTlsFiles { cert: cert.clone(), key: key.clone() });
    }
    if let Some(ca) = &args.upstream_ca {
        cfg.upstream_ca = Some(ca.clone());
    }
    cfg.fast_path = !args.no_fast_path;
    crate::traffic::tls::check(cfg)?;
    Ok(())
}

fn upstreams(list: &[String]) -> anyhow::Result<Vec<Upstream>> {
    list.iter().map(|u| u.parse::<Upstream>().map_err(anyhow::Error::from)).collect()
}

/// Builds the proxy configuration and fault set from the flags.
pub fn config_from_args(
    args: &ProxyArgs,
) -> anyhow::Result<(ProxyConfig, Vec<HttpFault>)> {
    if let Some(path) = &args.config {
        return config_from_experiment(args, path);
    }
    let pools = UpstreamPools {
        default: upstreams(&args.upstream)?,
        control: upstreams(&args.control_upstream)?,
        experiment: upstreams(&args.experiment_upstream)?,
    };
    let key: CohortKey = args.cohort_key.parse()?;
    let pct = |s: &str, what: &str| {
        parse_percent(s).map_err(|e| anyhow::anyhow!(e)).with_context(|| what.to_string())
    };
    let e = pct(&args.experiment_percent, "--experiment-percent")?;
    let c = pct(&args.control_percent, "--control-percent")?;
    let mode = if args.sidecar { ProxyMode::Sidecar } else { ProxyMode::Edge };
    let admin = args.admin.map(|listen| AdminConfig {
        listen,
        token: None,
        allow_remote: args.admin_allow_remote,
    });
    let mut cfg =
        ProxyConfig::from_parts(args.listen, pools, key, e, c, mode, admin, args.seed)?;
    let dur = |s: &str, what: &str| {
        parse_duration(s)
            .map_err(|e| anyhow::anyhow!(e))
            .with_context(|| what.to_string())
    };
    cfg.upstream_timeout = dur(&args.upstream_timeout, "--upstream-timeout")?;
    cfg.connect_timeout = dur(&args.connect_timeout, "--connect-timeout")?;
    apply_edge_flags(args, &mut cfg)?;
    let faults = args
        .faults
        .iter()
        .map(|f| HttpFault::parse_spec(f).map_err(anyhow::Error::from))
        .collect::<anyhow::Result<Vec<_>>>()?;
    apply_admin_token(args, &mut cfg)?;
    apply_tls(args, &mut cfg)?;
    Ok((cfg, faults))
}

/// The timeout, header-size and forwarding flags.
fn apply_edge_flags(args: &ProxyArgs, cfg: &mut ProxyConfig) -> anyhow::Result<()> {
    let dur = |s: &str, what: &str| -> anyhow::Result<Duration> {
        match parse_duration(s) {
            Ok(d) if !d.is_zero() => Ok(d),
            Ok(_) => anyhow::bail!("{what}: must be more than zero"),
            Err(e) => Err(anyhow::anyhow!(e).context(what.to_string())),
        }
    };
    cfg.timeouts = Timeouts {
        client_header: dur(&args.client_header_timeout, "--client-header-timeout")?,
        idle: dur(&args.idle_timeout, "--idle-timeout")?,
        request_body: dur(&args.request_body_timeout, "--request-body-timeout")?,
        response_body: dur(&args.response_body_timeout, "--response-body-timeout")?,
    };
    cfg.max_header_bytes =
        crate::traffic::config::check_max_header_bytes(args.max_header_bytes)
            .context("--max-header-bytes")?;
    cfg.forwarded = args.forwarded.parse::<ForwardedMode>().context("--forwarded")?;
    cfg.trusted_proxies = args
        .trusted_proxy
        .iter()
        .map(|t| t.parse::<IpNet>())
        .collect::<Result<_, _>>()
        .context("--trusted-proxy")?;
    Ok(())
}

/// A token file holds one line; more than this is not a token file.
const TOKEN_FILE_MAX_BYTES: u64 = 4096;

/// Sets the admin token (flag, environment or file) and applies the
/// exposure rule, so a refused address is exit 2 before anything binds.
fn apply_admin_token(args: &ProxyArgs, cfg: &mut ProxyConfig) -> anyhow::Result<()> {
    let token = match &args.admin_token_file {
        Some(path) => {
            let text = crate::input_file::read_text(path, TOKEN_FILE_MAX_BYTES).map_err(
                |e| anyhow::anyhow!("--admin-token-file {}: {e}", path.display()),
            )?;
            let line = text.lines().next().unwrap_or("").trim().to_string();
            anyhow::ensure!(
                !line.is_empty(),
                "--admin-token-file {}: the first line is empty",
                path.display()
            );
            Some(line)
        }
        None => args.admin_token.clone().filter(|t| !t.is_empty()),
    };
    if let Some(admin) = cfg.admin.as_mut() {
        if token.is_some() {
            admin.token = token;
        }
        admin.allow_remote |= args.admin_allow_remote;
        if let Some(why) = crate::traffic::admin::exposure_refusal(
            admin.listen,
            admin.allow_remote,
            admin.token.is_some(),
        ) {
            anyhow::bail!(
                "--admin {why}: pass --admin-allow-remote with --admin-token-file \
                 (or CHAOS_ADMIN_TOKEN)"
            );
        }
    }
    Ok(())
}

/// `--config EXPERIMENT.toml`: the runner's own mapping of [traffic], so
/// `chaos proxy` and `chaos run` split traffic identically.
fn config_from_experiment(
    args: &ProxyArgs,
    path: &std::path::Path,
) -> anyhow::Result<(ProxyConfig, Vec<HttpFault>)> {
    let exp = super::run::load_or_report(path)
        .map_err(|_| anyhow::anyhow!("{} is not a valid experiment", path.display()))?;
    let mut cfg = crate::runner::plan::edge_proxy(&exp, args.seed)
        .with_context(|| format!("[traffic] of {}", path.display()))?;
    if let Some(listen) = args.admin {
        cfg.admin = Some(AdminConfig { listen, token: None, allow_remote: false });
    }
    apply_admin_token(args, &mut cfg)?;
    apply_tls(args, &mut cfg)?;
    let mut faults: Vec<HttpFault> = exp
        .faults
        .iter()
        .filter(|f| f.at == "edge")
        .filter_map(crate::runner::plan::http_fault)
        .map(|mut f| {
            f.enabled = false;
            f
        })
        .collect();
    for spec in &args.faults {
        faults.push(HttpFault::parse_spec(spec)?);
    }
    Ok((cfg, faults))
}

/// Runs `chaos proxy`.
pub fn run(args: ProxyArgs) -> u8 {
    let (cfg, faults) = match config_from_args(&args) {
        Ok(x) => x,
        Err(e) => {
            eprintln!("error: {e:#}");
            return exit::INVALID;
        }
    };
    // Client connections run on current-thread workers (one per core by
    // default); this runtime only accepts, serves admin and waits for signals.
    let n = if args.workers == 0 { Workers::default_count() } else { args.workers };
    let idle_poll = IdlePoll::default();
    let workers = match Workers::start_with(n, idle_poll.clone()) {
        Ok(w) => w,
        Err(e) => {
            eprintln!("error: {e}");
            return exit::ENVIRONMENT;
        }
    };
    let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return exit::ENVIRONMENT;
        }
    };
    let poll = (idle_poll, args.idle_poll_us);
    match rt.block_on(serve(cfg, faults, args.reservoir, workers.handles(), poll)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            exit::ENVIRONMENT
        }
    }
}

/// The workers' idle polling window: `--idle-poll-us`, or by default
/// [`RELAY_IDLE_POLL`] when the proxy relays HTTP/2 and none otherwise.
fn idle_poll_window(flag_us: Option<u64>, relays_http2: bool) -> Duration {
    match flag_us {
        Some(us) => Duration::from_micros(us),
        None if relays_http2 => RELAY_IDLE_POLL,
        None => Duration::ZERO,
    }
}

/// The default idle polling window of an HTTP/2 relay (see
/// `traffic::idle_poll` for the measurements).
const RELAY_IDLE_POLL: Duration = Duration::from_micros(20);

async fn serve(
    cfg: ProxyConfig,
    faults: Vec<HttpFault>,
    reservoir: usize,
    workers: Vec<tokio::runtime::Handle>,
    (idle_poll, idle_poll_us): (IdlePoll, Option<u64>),
) -> anyhow::Result<u8> {
    use tokio::signal::unix::{signal, SignalKind};
    let (cf, ef) = (cfg.control_fraction, cfg.experiment_fraction);
    let recorder = Arc::new(Recorder::new(tokio::time::Instant::now(), reservoir));
    let handle = Proxy::start_on(cfg, recorder.clone(), workers)
        .await
        .context("starting the proxy")?;
    handle.set_faults(faults);
    idle_poll.set(idle_poll_window(idle_poll_us, handle.relays_http2()));
    eprintln!("chaos proxy listening on {}", handle.local_addr());
    if let Some(a) = handle.admin_addr() {
        eprintln!("admin endpoint on http://{a} (/healthz /metrics /cohorts /faults)");
    }
    let mut term =
        signal(SignalKind::terminate()).context("installing SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing SIGINT handler")?;
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    eprintln!("stopping: draining in-flight requests");
    let _ = tokio::time::timeout(Duration::from_secs(10), handle.shutdown()).await;
    let c = recorder.snapshot(Cohort::Control);
    let e = recorder.snapshot(Cohort::Experiment);
    let u = recorder.untouched_total();
    let SplitChecks { by_keys, by_requests } = split_checks(&recorder, cf, ef);
    let flag = |m: bool| if m { " MISMATCH" } else { "" };
    println!(
        "control {} requests ({} errors), experiment {} requests ({} errors), \
         untouched {u}; sample ratio by keys p={:.4}{}, by requests p={:.4}{}",
        c.total,
        c.errors,
        e.total,
        e.errors,
        by_keys.p_value,
        flag(by_keys.mismatch),
        by_requests.p_value,
        flag(by_requests.mismatch)
    );
    Ok(exit::OK)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn idle_polling_is_on_by_default_only_for_the_http2_relay() {
        assert_eq!(idle_poll_window(None, true), RELAY_IDLE_POLL);
        assert_eq!(idle_poll_window(None, false), Duration::ZERO);
        assert_eq!(idle_poll_window(Some(0), true), Duration::ZERO);
        assert_eq!(idle_poll_window(Some(50), false), Duration::from_micros(50));
    }
}
