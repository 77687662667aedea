//! Glue for `chaos demo fleet` (start the fleet in the foreground) and the
//! hidden `chaos demo-service` (one demo process; the fleet spawns these).

use anyhow::Context;
use clap::{Args, Subcommand};
use std::collections::BTreeMap;
use std::future::Future;
use std::path::PathBuf;
use std::time::Duration;

use crate::cohort::Cohort;
use crate::demo::{
    self, ApiConfig, Fleet, FleetSpec, PaymentsConfig, Region, ServiceTime, Variant,
};
use crate::exit;
use crate::units::parse_duration;

/// Help epilogue of `chaos demo fleet`.
pub const FLEET_AFTER_HELP: &str = "\
Each pool (control, experiment) gets its own API and two payments replicas
(us-east, eu-west), all on 127.0.0.1. Processes are named for fault targets,
e.g. name:chaos-demo-payments-experiment-us-east, and write pidfiles into
--dir. The printed CHAOS_DEMO_* variables can be exported for ${VAR}
interpolation in experiment files.

Example:
  chaos demo fleet --variant fragile --dir /tmp/demo
  curl -H 'x-chaos-cohort: experiment' $CHAOS_DEMO_API_EXPERIMENT/checkout";

/// `chaos demo fleet` arguments.
#[derive(Debug, Args)]
pub struct FleetArgs {
    /// How the API treats a failing payments dependency.
    #[arg(long, value_enum, default_value_t = Variant::Resilient)]
    pub variant: Variant,
    /// Directory for pidfiles and logs (default: a new temporary directory).
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// Median payments service time.
    #[arg(long, default_value = "8ms", value_parser = parse_duration)]
    pub median: Duration,
    /// Spread (σ of the log) of the payments service time.
    #[arg(long, default_value_t = 0.35)]
    pub sigma: f64,
    /// Resilient API: timeout per payments attempt.
    #[arg(long, default_value = "120ms", value_parser = parse_duration)]
    pub attempt_timeout: Duration,
    /// Fragile API: the only bound on a payments call.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub safety_timeout: Duration,
}

/// Starts the fleet, prints it, waits for Ctrl-C/SIGTERM, stops it.
pub fn run_fleet(args: FleetArgs) -> u8 {
    match fleet(args) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            exit::ENVIRONMENT
        }
    }
}

fn fleet(args: FleetArgs) -> anyhow::Result<u8> {
    let dir = match args.dir {
        Some(d) => d,
        None => std::env::temp_dir().join(format!("chaos-demo-{}", std::process::id())),
    };
    let mut spec = FleetSpec::new(args.variant, &dir);
    spec.service_time = ServiceTime { median: args.median, sigma: args.sigma };
    spec.attempt_timeout = args.attempt_timeout;
    spec.safety_timeout = args.safety_timeout;
    // Handlers go in before anything starts: a SIGTERM that arrives right
    // after the listing is printed must stop the fleet, not kill us.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("creating the signal runtime")?;
    let (mut int, mut term) = rt
        .block_on(async {
            use tokio::signal::unix::{signal, SignalKind};
            Ok::<_, std::io::Error>((
                signal(SignalKind::interrupt())?,
                signal(SignalKind::terminate())?,
            ))
        })
        .context("installing signal handlers")?;
    let mut fleet = Fleet::start(spec)
        .with_context(|| format!("starting the demo fleet in {}", dir.display()))?;
    println!("demo fleet ({} API) in {}", args.variant, dir.display());
    println!("{:<9} {:<11} {:<8} {:>8}  url", "role", "pool", "region", "pid");
    for p in fleet.processes() {
        let region = p.region.map_or("-", Region::as_str);
        let (role, pool) = (p.role.as_str(), p.pool.as_str());
        println!("{role:<9} {pool:<11} {region:<8} {:>8}  {}", p.pid, p.url());
    }
    println!();
    for (k, v) in fleet.env_vars() {
        println!("export {k}={v}");
    }
    println!("\nrunning; Ctrl-C stops every process");
    let interrupted = rt.block_on(async {
        tokio::select! {
            _ = int.recv() => true,
            _ = term.recv() => false,
        }
    });
    fleet.shutdown();
    println!("demo fleet stopped");
    Ok(if interrupted { exit::INTERRUPTED } else { exit::OK })
}

/// Help epilogue of `chaos demo load`.
pub const LOAD_AFTER_HELP: &str = "\
Requests are scheduled by the clock, not by responses (no coordinated
omission); a request due while --concurrency are in flight is counted as
dropped. Latency percentiles are measured from the scheduled send time.
Ctrl-C stops early and still prints the counts.

Example:
  chaos demo load --target $CHAOS_DEMO_API_CONTROL/checkout --rate 500 --duration 5s";

/// `chaos demo load` arguments.
#[derive(Debug, Args)]
pub struct LoadArgs {
    /// URL to GET, e.g. http://127.0.0.1:8080/checkout.
    #[arg(long)]
    pub target: http::Uri,
    /// Requests per second.
    #[arg(long, default_value_t = 100.0)]
    pub rate: f64,
    /// How long to send.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub duration: Duration,
    /// Most requests in flight.
    #[arg(long, default_value_t = 64)]
    pub concurrency: usize,
    /// Header carrying a random user id.
    #[arg(long, default_value = "x-user-id")]
    pub key_header: String,
    /// Number of distinct user ids.
    #[arg(long, default_value_t = 10_000)]
    pub key_space: u64,
    /// Seed of the user-id sequence.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Per-request timeout.
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    pub timeout: Duration,
}

/// Runs `chaos demo load` and prints `LoadStats` as JSON on stdout.
pub fn run_load(args: LoadArgs) -> u8 {
    match load(args) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            exit::INVALID
        }
    }
}

fn load(a: LoadArgs) -> anyhow::Result<u8> {
    let mut cfg = crate::load::LoadConfig::new(a.target, a.rate);
    cfg.concurrency = a.concurrency;
    cfg.key_header = a.key_header;
    cfg.key_space = a.key_space;
    cfg.seed = a.seed;
    cfg.timeout = a.timeout;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("creating the runtime")?;
    let (stats, interrupted) = rt.block_on(async move {
        let (tx, rx) = tokio::sync::watch::channel(false);
        let interrupted = tokio::spawn(async move {
            let hit = tokio::signal::ctrl_c().await.is_ok();
            let _ = tx.send(true);
            hit
        });
        let stats = crate::load::run(cfg, rx, a.duration).await;
        let hit = interrupted.is_finished() && interrupted.await.unwrap_or(false);
        (stats, hit)
    });
    let stats = stats?;
    let mut json = serde_json::to_value(&stats).context("serialising the counts")?;
    json["achieved_rate_per_s"] = serde_json::json!(stats.achieved_rate());
    println!("{}", serde_json::to_string_pretty(&json).context("printing the counts")?);
    Ok(if interrupted { exit::INTERRUPTED } else { exit::OK })
}

/// Help epilogue of the internal `chaos demo-service`.
const SERVICE_AFTER_HELP: &str = "\
Internal: `chaos demo fleet` and the runner spawn these with argv[0] set to
e.g. chaos-demo-payments-experiment-us-east. Each exits when its parent dies.

Example:
  chaos demo-service payments --pool experiment --region us-east --listen 127.0.0.1:9001
  chaos demo-service api --pool experiment --variant resilient --listen 127.0.0.1:9000 \\
    --payments us-east=http://127.0.0.1:9001 --payments eu-west=http://127.0.0.1:9002";

/// `chaos demo-service` arguments (internal: spawned by the fleet).
#[derive(Debug, Args)]
#[command(after_help = SERVICE_AFTER_HELP)]
pub struct ServiceArgs {
    #[command(subcommand)]
    pub service: Service,
}

/// Which demo service to run.
#[derive(Debug, Subcommand)]
pub enum Service {
    /// A payments replica.
    Payments(PaymentsArgs),
    /// An API process.
    Api(ApiArgs),
}

/// Options every demo service takes.
#[derive(Debug, Args)]
pub struct Listen {
    /// Address to listen on (port 0 = pick a free one).
    #[arg(long, default_value = "127.0.0.1:0")]
    pub listen: String,
    /// File to write the bound address to once listening.
    #[arg(long)]
    pub addr_file: Option<PathBuf>,
}

/// `chaos demo-service payments`.
#[derive(Debug, Args)]
pub struct PaymentsArgs {
    /// control or experiment.
    #[arg(long, value_parser = parse_pool)]
    pub pool: Cohort,
    /// Region reported in every charge.
    #[arg(long, value_enum)]
    pub region: Region,
    /// Median service time.
    #[arg(long, default_value = "8ms", value_parser = parse_duration)]
    pub median: Duration,
    /// Spread (σ of the log) of the service time.
    #[arg(long, default_value_t = 0.35)]
    pub sigma: f64,
    #[command(flatten)]
    pub listen: Listen,
}

/// `chaos demo-service api`.
#[derive(Debug, Args)]
pub struct ApiArgs {
    /// control or experiment.
    #[arg(long, value_parser = parse_pool)]
    pub pool: Cohort,
    /// resilient or fragile.
    #[arg(long, value_enum)]
    pub variant: Variant,
    /// Payments base URL per region, `REGION=URL`; give both regions.
    #[arg(long = "payments", value_parser = parse_payments, required = true)]
    pub payments: Vec<(Region, http::Uri)>,
    /// Resilient: timeout per payments attempt.
    #[arg(long, default_value = "120ms", value_parser = parse_duration)]
    pub attempt_timeout: Duration,
    /// Fragile: the only bound on a payments call.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub safety_timeout: Duration,
    /// Checkouts handled at once; more are shed with 503.
    #[arg(long, default_value_t = 1024)]
    pub max_in_flight: usize,
    #[command(flatten)]
    pub listen: Listen,
}

fn parse_pool(s: &str) -> Result<Cohort, String> {
    Cohort::parse(s).ok_or_else(|| format!("expected control or experiment, got {s:?}"))
}

fn parse_payments(s: &str) -> Result<(Region, http::Uri), String> {
    let (r, url) = s.split_once('=').ok_or("expected REGION=URL")?;
    let region = Region::parse(r).ok_or_else(|| format!("unknown region {r:?}"))?;
    let uri: http::Uri = url.parse().map_err(|e| format!("URL {url:?}: {e}"))?;
    if uri.scheme_str() != Some("http") || uri.authority().is_none() {
        return Err(format!("URL {url:?} is not http://HOST:PORT"));
    }
    Ok((region, uri))
}

/// Runs one demo service until its parent goes away or it is signalled.
pub fn run_service(args: ServiceArgs) -> u8 {
    match service(args) {
        Ok(()) => exit::OK,
        Err(e) => {
            eprintln!("error: {e:#}");
            exit::ENVIRONMENT
        }
    }
}

fn service(args: ServiceArgs) -> anyhow::Result<()> {
    // Two workers: the machine and the fleet are small (six processes).
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("creating the runtime")?;
    rt.block_on(async move {
        match args.service {
            Service::Payments(a) => {
                let listener = bind(&a.listen).await?;
                let cfg = PaymentsConfig {
                    pool: a.pool,
                    region: a.region,
                    service_time: ServiceTime { median: a.median, sigma: a.sigma },
                };
                demo::serve_payments(listener, cfg, parent_gone()).await;
            }
            Service::Api(a) => {
                let payments: BTreeMap<Region, http::Uri> =
                    a.payments.into_iter().collect();
                for r in Region::ALL {
                    anyhow::ensure!(
                        payments.contains_key(&r),
                        "--payments {r}=URL is missing"
                    );
                }
                let listener = bind(&a.listen).await?;
                let mut cfg = ApiConfig::new(a.pool, a.variant, payments);
                cfg.attempt_timeout = a.attempt_timeout;
                cfg.safety_timeout = a.safety_timeout;
                cfg.max_in_flight = a.max_in_flight;
                demo::serve_api(listener, cfg, parent_gone()).await;
            }
        }
        Ok(())
    })
}

async fn bind(l: &Listen) -> anyhow::Result<tokio::net::TcpListener> {
    let listener = tokio::net::TcpListener::bind(&l.listen)
        .await
        .map_err(|source| demo::DemoError::Bind { addr: l.listen.clone(), source })?;
    if let Some(path) = &l.addr_file {
        let addr = listener.local_addr().context("reading the bound address")?;
        let tmp = demo::tmp_path(path);
        std::fs::write(&tmp, format!("{addr}\n"))
            .and_then(|()| std::fs::rename(&tmp, path))
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(listener)
}

/// Completes when the parent process is gone (we were re-parented), so a
/// runner killed with SIGKILL does not leave demo services behind.
fn parent_gone() -> impl Future<Output = ()> {
    let parent = nix::unistd::getppid();
    async move {
        loop {
            tokio::time::sleep(Duration::from_millis(250)).await;
            if nix::unistd::getppid() != parent {
                tracing::info!("parent process gone; exiting");
                return;
            }
        }
    }
}
