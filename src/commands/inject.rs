//! `chaos inject KIND`: hold one infrastructure fault for a duration or
//! until Ctrl-C / SIGTERM, then revert it (exit 130 after an interrupt).
//! Also home of the target/selection flags `chaos kill` shares.

use anyhow::Context;
use clap::{Args, ValueEnum};
use nix::sys::signal::Signal;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use crate::exit;
use crate::fault::{
    self, FaultContext, FaultError, InfraFault, NetFilter, OutageMethod, Preflight,
};
use crate::journal::Journal;
use crate::target::place::Placement;
use crate::target::{BlastRadius, Selection, TargetSelector};
use crate::units;

pub const AFTER_HELP: &str = "Examples:
  chaos inject process-pause --target name:payments-eu --duration 30s
  chaos inject packet-loss --target netns:blue --loss 10% --duration 1m
  chaos inject blackhole --target iface:veth1@blue --destination 10.0.0.0/24 --port 80
  chaos inject netem --target iface:eth1@blue --delay 100ms --jitter 10ms --dry-run
  chaos inject bandwidth --target netns:blue --rate 1mbit --duration 20s
  chaos inject packet-loss --target iface:eth0@hosts:role=payments --loss 5% \\
      --inventory fleet.toml --duration 1m
  chaos inject region-outage --region us-east=netns:use1,name:api-us-east \\
      --target region:us-east --method blackhole --duration 30s

The fault is journalled before it is applied and reverted when the duration
ends, on Ctrl-C or SIGTERM (exit 130). If chaos itself is killed, run
`chaos recover`. Without netem in the kernel, netem loss uses nftables and
netem delay is refused (use the proxy's HTTP latency fault).
At most --max-targets (default 3) targets are hit: `--target 'name:.*'
--percent 100%` is refused (exit 2) instead of hitting every process.
Exit codes: 0 done, 2 invalid input or refused target, 3 halted by
`chaos halt` (reverted), 5 environment (missing tool, privilege, target
not found or locked, chaos halted before the start), 130 interrupted.";

/// Ad-hoc commands get the blast radius experiments get by default.
pub const DEFAULT_MAX_TARGETS: u32 = 3;

/// Target selection flags shared by `kill` and `inject`.
#[derive(Debug, Args)]
pub struct TargetArgs {
    /// What to hit: pid:N, pidfile:PATH, name:REGEX, netns:NAME,
    /// iface:NAME[@NETNS], region:NAME, container:RUNTIME://ID (on a
    /// Kubernetes node: that container's processes or network
    /// namespace); on other hosts with
    /// @host:NAME or @hosts:KEY=VALUE (needs --inventory).
    #[arg(long, value_parser = Placement::parse)]
    pub target: Placement,
    /// How many of the matching targets to hit.
    #[arg(long, conflicts_with = "percent")]
    pub count: Option<u32>,
    /// Which share of the matching targets to hit, e.g. "50%".
    #[arg(long, value_parser = units::parse_percent)]
    pub percent: Option<f64>,
    /// Seed for choosing targets (printed; default: random).
    #[arg(long)]
    pub seed: Option<u64>,
    /// Refuse to hit more than this many targets (the same default as an
    /// experiment's [safety] max_targets; raise it deliberately).
    #[arg(long, default_value_t = DEFAULT_MAX_TARGETS,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub max_targets: u32,
    /// Refuse to hit more than this share of the matches, e.g. "50%".
    #[arg(long, value_parser = units::parse_percent)]
    pub max_percent: Option<f64>,
    /// Declare a region: NAME=SELECTOR[,SELECTOR...] (repeatable).
    #[arg(long = "region", value_name = "NAME=SELECTORS")]
    pub regions: Vec<String>,
    /// Print the resolved targets and exact commands; change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Journal directory [default: $CHAOS_JOURNAL_DIR, else
    /// $CHAOS_STATE_DIR, else /var/lib/chaos as root, else
    /// $XDG_STATE_HOME/chaos].
    #[arg(long)]
    pub journal_dir: Option<PathBuf>,
    #[command(flatten)]
    pub fleet: super::fleet::FleetArgs,
}

impl TargetArgs {
    pub fn selection(&self) -> Selection {
        match (self.count, self.percent) {
            (_, Some(p)) => Selection::Percent(p),
            (Some(n), None) => Selection::Count(n),
            (None, None) => Selection::Count(1),
        }
    }

    pub fn context(&self, prefix: &str) -> anyhow::Result<FaultContext> {
        if self.percent.is_some_and(|p| p <= 0.0) {
            anyhow::bail!(
                "--percent 0% selects nothing; use a share above 0% or --count"
            );
        }
        let mut regions: BTreeMap<String, Vec<TargetSelector>> = BTreeMap::new();
        for decl in &self.regions {
            let (name, sels) = decl.split_once('=').with_context(|| {
                format!("--region {decl:?}: expected NAME=SELECTOR[,...]")
            })?;
            TargetSelector::parse(&format!("region:{name}"))
                .map_err(anyhow::Error::msg)
                .with_context(|| format!("--region {decl:?}"))?;
            let parsed = sels
                .split(',')
                .map(TargetSelector::parse)
                .collect::<Result<Vec<_>, _>>()
                .map_err(anyhow::Error::msg)
                .with_context(|| format!("--region {decl:?}"))?;
            regions.entry(name.to_string()).or_default().extend(parsed);
        }
        let seed = self.seed.unwrap_or_else(|| {
            let t = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(0);
            t ^ (u64::from(std::process::id()) << 32)
        });
        let secs = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        Ok(FaultContext {
            regions,
            seed,
            limits: BlastRadius {
                max_targets: Some(self.max_targets),
                max_percent: self.max_percent,
            },
            run_id: format!("{prefix}-{}-{secs}", std::process::id()),
        })
    }

    pub fn journal_dir(&self) -> PathBuf {
        crate::journal::resolve_dir(self.journal_dir.as_deref())
    }
}

/// The fault kinds `inject` can hold.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Kind {
    ProcessKill,
    ProcessPause,
    Netem,
    PacketLoss,
    Blackhole,
    TcpReset,
    Bandwidth,
    RegionOutage,
}

/// `chaos inject` arguments.
#[derive(Debug, Args)]
pub struct InjectArgs {
    /// The fault kind.
    #[arg(value_enum)]
    pub kind: Kind,
    #[command(flatten)]
    pub target: TargetArgs,
    /// Hold the fault this long (default: until Ctrl-C / SIGTERM).
    #[arg(long, value_parser = units::parse_duration)]
    pub duration: Option<Duration>,
    /// process-kill: signal to send (KILL, TERM, 9, SIGINT, ...).
    #[arg(long, default_value = "KILL", value_parser = parse_signal)]
    pub signal: Signal,
    /// process-kill: send SIGTERM first, then --signal after this grace.
    #[arg(long, value_parser = units::parse_duration)]
    pub grace: Option<Duration>,
    /// process-kill: repeat every interval (targets re-resolved each time).
    #[arg(long, value_parser = units::parse_duration)]
    pub interval: Option<Duration>,
    /// netem: added delay, e.g. "100ms".
    #[arg(long, value_parser = units::parse_duration)]
    pub delay: Option<Duration>,
    /// netem: delay jitter.
    #[arg(long, value_parser = units::parse_duration)]
    pub jitter: Option<Duration>,
    /// netem / packet-loss: share of packets lost, e.g. "10%".
    #[arg(long, value_parser = units::parse_percent)]
    pub loss: Option<f64>,
    /// netem: share of packets corrupted.
    #[arg(long, value_parser = units::parse_percent)]
    pub corrupt: Option<f64>,
    /// netem: share of packets duplicated.
    #[arg(long, value_parser = units::parse_percent)]
    pub duplicate: Option<f64>,
    /// netem: share of packets reordered (needs --delay).
    #[arg(long, value_parser = units::parse_percent)]
    pub reorder: Option<f64>,
    /// netem / bandwidth: rate limit, e.g. "1mbit".
    #[arg(long)]
    pub rate: Option<String>,
    /// packet-loss / blackhole / tcp-reset: only towards these CIDRs.
    #[arg(long = "destination", value_name = "CIDR")]
    pub destinations: Vec<String>,
    /// packet-loss / blackhole / tcp-reset: only these ports.
    #[arg(long = "port")]
    pub ports: Vec<u16>,
    /// region-outage: blackhole (nftables) or pause (SIGSTOP).
    #[arg(long, value_enum, default_value = "blackhole")]
    pub method: Method,
}

/// `--method` for region outages.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Method {
    Blackhole,
    Pause,
}

pub use crate::fault::parse_signal;

fn build(args: &InjectArgs) -> anyhow::Result<InfraFault> {
    let target = args.target.target.selector.clone();
    let selection = args.target.selection();
    let filter =
        NetFilter { destinations: args.destinations.clone(), ports: args.ports.clone() };
    let need = |v: Option<f64>, flag: &str| {
        v.with_context(|| format!("{:?} needs --{flag}", args.kind))
    };
    Ok(match args.kind {
        Kind::ProcessKill => InfraFault::ProcessKill(fault::ProcessKill {
            target,
            selection,
            signal: args.signal,
            grace: args.grace,
            interval: args.interval,
        }),
        Kind::ProcessPause => {
            InfraFault::ProcessPause(fault::ProcessPause { target, selection })
        }
        Kind::Netem => InfraFault::Netem(fault::Netem {
            target,
            selection,
            delay: args.delay,
            jitter: args.jitter,
            loss: args.loss,
            corrupt: args.corrupt,
            duplicate: args.duplicate,
            reorder: args.reorder,
            rate: args.rate.clone(),
        }),
        Kind::PacketLoss => InfraFault::PacketLoss(fault::NftLoss {
            target,
            selection,
            loss: need(args.loss, "loss")?,
            filter,
        }),
        Kind::Blackhole => {
            InfraFault::Blackhole(fault::NftBlackhole { target, selection, filter })
        }
        Kind::TcpReset => {
            InfraFault::TcpReset(fault::NftReset { target, selection, filter })
        }
        Kind::Bandwidth => InfraFault::Bandwidth(fault::Tbf {
            target,
            selection,
            rate: args
                .rate
                .clone()
                .context("bandwidth needs --rate, e.g. --rate 1mbit")?,
        }),
        Kind::RegionOutage => {
            let TargetSelector::Region(region) = target else {
                anyhow::bail!(
                    "region-outage needs --target region:NAME (declare it with --region)"
                );
            };
            InfraFault::RegionOutage(fault::RegionOutage {
                region,
                method: match args.method {
                    Method::Blackhole => OutageMethod::Blackhole,
                    Method::Pause => OutageMethod::Pause,
                },
            })
        }
    })
}

/// Exit code for a fault error (see [`FaultError::exit_code`]).
pub fn code_for(e: &FaultError) -> u8 {
    e.exit_code()
}

/// What `--dry-run` prints: the resolved targets and exact commands.
pub fn print_dry_run(injector: &dyn fault::Injector) {
    println!("dry run: nothing will be changed");
    for line in injector.describe() {
        println!("{line}");
    }
}

/// Preflight + prepare, printing warnings and the seed; `Err(code)` after
/// printing the error.
pub fn plan(
    fault: &InfraFault,
    ctx: &FaultContext,
) -> Result<(Preflight, Box<dyn fault::Injector>), u8> {
    let fail = |e: FaultError| {
        eprintln!("error: {e}");
        code_for(&e)
    };
    let pre = fault::preflight(std::slice::from_ref(fault), ctx).map_err(fail)?;
    for w in &pre.warnings {
        eprintln!("warning: {w}");
    }
    eprintln!(
        "seed: {} (rerun with --seed {} to pick the same targets)",
        ctx.seed, ctx.seed
    );
    let injector = fault::prepare(fault, ctx, &pre).map_err(fail)?;
    Ok((pre, injector))
}

fn try_run(args: InjectArgs) -> anyhow::Result<u8> {
    let fault = match build(&args) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("error: {e:#}");
            return Ok(exit::INVALID);
        }
    };
    let ctx = match args.target.context("inject") {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e:#}");
            return Ok(exit::INVALID);
        }
    };
    if args.target.target.is_remote() {
        let t = &args.target;
        return super::fleet::inject(
            &t.target,
            &fault,
            &ctx,
            &t.fleet,
            t.dry_run,
            args.duration,
        );
    }
    let (pre, injector) = match plan(&fault, &ctx) {
        Ok(p) => p,
        Err(code) => return Ok(code),
    };
    if args.target.dry_run {
        print_dry_run(injector.as_ref());
        return Ok(exit::OK);
    }
    // Handlers first: a signal between inject and the wait must not kill
    // us with the fault in place.
    let interrupt =
        crate::signals::install().context("installing SIGINT/SIGTERM handlers")?;
    let dir = args.target.journal_dir();
    // `chaos halt` polls the marker first and SIGTERMs registered holders
    // of faults that did not stop on their own.
    let state = crate::journal::state_dir();
    let _registration = crate::halt::register_default("chaos inject");
    let journal = Journal::open(&dir, &ctx.run_id)
        .with_context(|| format!("opening the journal in {}", dir.display()))?;
    let journal_path = journal.path().to_path_buf();
    let mut session = fault::Session::new(journal);
    for line in injector.describe() {
        eprintln!("{line}");
    }
    if let Err(e) = session.inject(fault.kind(), injector) {
        eprintln!("error: {e}");
        return Ok(code_for(&e));
    }
    eprintln!(
        "injected {} (run {}); {}",
        fault.kind(),
        ctx.run_id,
        match args.duration {
            Some(d) =>
                format!("holding for {}, Ctrl-C reverts early", units::format_duration(d)),
            None => "holding until Ctrl-C or SIGTERM".to_string(),
        }
    );
    let deadline = args.duration.map(|d| Instant::now() + d);
    let remaining = || deadline.map(|d| d.saturating_duration_since(Instant::now()));
    let mut failure = None;
    let mut interrupted = false;
    let mut halted = false;
    let repeat = match &fault {
        InfraFault::ProcessKill(k) => k.interval,
        _ => None,
    };
    // A one-shot kill has nothing to hold.
    let one_shot = matches!(fault, InfraFault::ProcessKill(_)) && repeat.is_none();
    while !one_shot && !interrupted {
        let wait = match (repeat, remaining()) {
            (Some(r), Some(left)) => r.min(left),
            (Some(r), None) => r,
            (None, Some(left)) => left,
            (None, None) => Duration::from_secs(3600),
        };
        match crate::halt::sleep(&interrupt, wait, &state) {
            crate::halt::Wake::Elapsed => {}
            crate::halt::Wake::Interrupted => {
                interrupted = true;
                break;
            }
            crate::halt::Wake::Halted(h) => {
                eprintln!("{h}: reverting");
                halted = true;
                break;
            }
        }
        if remaining().is_some_and(|left| left.is_zero()) {
            break;
        }
        if repeat.is_some() {
            match fault::prepare(&fault, &ctx, &pre) {
                Ok(next) => {
                    if let Err(e) = session.inject(fault.kind(), next) {
                        failure = Some(e);
                        break;
                    }
                }
                Err(e) => {
                    // Nothing left to kill is not a reason to stop early.
                    eprintln!("warning: {e}");
                }
            }
        }
    }
    let failures = session.revert_all();
    let reverted_ok = failures.is_empty();
    for (what, e) in &failures {
        eprintln!(
            "error: revert of {what} failed: {e}\nthe fault is still recorded in {}; fix the \
             cause and run `chaos recover --journal-dir {}`",
            journal_path.display(),
            dir.display()
        );
    }
    if reverted_ok {
        eprintln!("reverted {}", fault.kind());
    }
    if interrupted {
        return Ok(exit::INTERRUPTED);
    }
    if halted {
        return Ok(exit::ABORTED);
    }
    if let Some(e) = failure {
        eprintln!("error: {e}");
        return Ok(code_for(&e));
    }
    Ok(if reverted_ok { exit::OK } else { exit::ENVIRONMENT })
}

/// Runs `chaos inject`; returns the exit code.
pub fn run(args: InjectArgs) -> u8 {
    match try_run(args) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            crate::exit::ENVIRONMENT
        }
    }
}
