//! Host targets for `chaos inject`, `chaos kill` and `chaos recover`:
//! the flags they share (`--inventory`, `--lease`, `--install`, host
//! blast radius) and the glue that runs one fault on many hosts through
//! their agents: connect and preflight every host first (exit 5 naming
//! the host, nothing injected anywhere), then apply, hold, revert.

use anyhow::Context;
use clap::Args;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use crate::agent::wire::WireContext;
use crate::exit;
use crate::fault::{FaultContext, InfraFault};
use crate::fleet::inventory::{HostLimits, Inventory};
use crate::fleet::remote::{self, retarget, Assignment, ConnectOptions, Fleet};
use crate::fleet::FleetError;
use crate::target::place::{Place, Placement};
use crate::units;

/// Flags for targets with a host part (`@host:NAME`, `@hosts:K=V`).
#[derive(Debug, Args, Clone)]
pub struct FleetArgs {
    /// Inventory for @host:/@hosts: targets: TOML ([[host]] tables) or an
    /// Ansible YAML inventory (.yml/.yaml).
    #[arg(long, env = "CHAOS_INVENTORY")]
    pub inventory: Option<PathBuf>,
    /// Agent lease: a host reverts by itself this long after it last
    /// heard from this process.
    #[arg(long, default_value = "10s", value_parser = units::parse_duration)]
    pub lease: Duration,
    /// Copy this binary to hosts that lack chaos or run another version
    /// (to the inventory's ssh.install_path; sha256 checked on both ends).
    #[arg(long)]
    pub install: bool,
    /// Refuse to reach more than this many hosts.
    #[arg(long)]
    pub max_hosts: Option<u32>,
    /// Refuse to reach more than this share of the inventory's hosts.
    #[arg(long, value_parser = units::parse_percent)]
    pub max_host_percent: Option<f64>,
}

impl FleetArgs {
    fn limits(&self) -> HostLimits {
        HostLimits { max_hosts: self.max_hosts, max_host_percent: self.max_host_percent }
    }
}

/// Connected, preflighted hosts and the fault each gets.
pub struct Prepared {
    pub fleet: Fleet,
    pub work: Vec<Assignment>,
    pub ctx: WireContext,
}

/// Loads the inventory, picks the hosts, connects and preflights every
/// one in parallel. `Err(code)` after printing every host's problem.
pub fn prepare(
    placement: &Placement,
    fault: &InfraFault,
    ctx: &FaultContext,
    args: &FleetArgs,
) -> Result<Prepared, u8> {
    let Some(path) = &args.inventory else {
        eprintln!(
            "error: target {placement} names hosts but no inventory was given\n  \
             hint: pass --inventory FILE (TOML [[host]] tables or an Ansible YAML inventory)"
        );
        return Err(exit::INVALID);
    };
    let inventory = Inventory::load(path).map_err(|e| {
        eprintln!("{e}");
        exit::INVALID
    })?;
    let hosts = inventory.select(&placement.place).map_err(|e| {
        eprintln!("error: target {placement}: {e}");
        exit::INVALID
    })?;
    if let Err(e) = args.limits().check(hosts.len(), inventory.hosts.len()) {
        eprintln!("error: target {placement}: {e}");
        return Err(exit::INVALID);
    }
    let mut work = Vec::new();
    for (i, host) in hosts.iter().enumerate() {
        let selector = placement.for_host(&host.name).map_err(|e| {
            eprintln!("error: target {placement} on host {}: {e}", host.name);
            exit::INVALID
        })?;
        work.push((i, retarget(fault, &selector)));
    }
    let names: Vec<&str> = hosts.iter().map(|h| h.name.as_str()).collect();
    eprintln!(
        "hosts: {} ({} of {})",
        names.join(", "),
        hosts.len(),
        inventory.hosts.len()
    );
    let opts =
        ConnectOptions { lease: args.lease, install: args.install, echo_stderr: false };
    let started = Instant::now();
    let fleet = remote::connect(&hosts, &inventory.ssh, &opts).map_err(|errors| {
        report(&errors);
        worst(&errors)
    })?;
    let wctx = WireContext::from(ctx);
    let mut errors = Vec::new();
    for (result, (i, _)) in fleet.preflight(&work, &wctx).into_iter().zip(&work) {
        match result {
            Ok(warnings) => {
                for w in warnings {
                    eprintln!("warning: host {}: {w}", fleet.remotes[*i].host.name);
                }
            }
            Err(e) => errors.push(e),
        }
    }
    if !errors.is_empty() {
        report(&errors);
        return Err(worst(&errors));
    }
    tracing::info!(hosts = hosts.len(), elapsed = ?started.elapsed(), "fleet connected and preflighted");
    Ok(Prepared { fleet, work, ctx: wctx })
}

fn report(errors: &[FleetError]) {
    for e in errors {
        eprintln!("error: {e}");
    }
    eprintln!("nothing was injected on any host");
}

/// Environment problems (5) outrank refusals (2): a host that cannot be
/// reached must be fixed before anything else matters.
fn worst(errors: &[FleetError]) -> u8 {
    errors.iter().map(FleetError::exit_code).max().unwrap_or(exit::ENVIRONMENT)
}

/// Prints what each host would run.
pub fn dry_run(p: &Prepared) -> u8 {
    println!("dry run: nothing will be changed");
    let mut code = exit::OK;
    for (result, (i, _)) in p.fleet.describe(&p.work, &p.ctx).into_iter().zip(&p.work) {
        let host = &p.fleet.remotes[*i].host.name;
        println!("== host {host} ==");
        match result {
            Ok(lines) => lines.iter().for_each(|l| println!("{l}")),
            Err(e) => {
                eprintln!("error: {e}");
                code = code.max(e.exit_code());
            }
        }
    }
    code
}

/// Applies on every host; on any failure reverts the others. Returns the
/// applied (index, handle) pairs or the exit code.
pub fn apply_all(p: &Prepared, label: &str) -> Result<Vec<(usize, u64)>, u8> {
    let started = Instant::now();
    let results = p.fleet.apply(label, &p.work, &p.ctx);
    let mut applied = Vec::new();
    let mut errors = Vec::new();
    for (result, (i, _)) in results.into_iter().zip(&p.work) {
        let host = &p.fleet.remotes[*i].host.name;
        match result {
            Ok((handle, lines)) => {
                eprintln!("== host {host} ==");
                lines.iter().for_each(|l| eprintln!("{l}"));
                applied.push((*i, handle));
            }
            Err(e) => errors.push(e),
        }
    }
    tracing::info!(hosts = p.work.len(), elapsed = ?started.elapsed(), "applied on the fleet");
    if errors.is_empty() {
        return Ok(applied);
    }
    for e in &errors {
        eprintln!("error: {e}");
    }
    for (i, handle) in &applied {
        if let Err(e) = p.fleet.revert(*i, *handle) {
            eprintln!("error: {e}");
        }
    }
    eprintln!("reverted the hosts where it had been applied");
    Err(worst(&errors))
}

/// `chaos inject` on hosts: apply everywhere, hold for `duration` (or
/// until Ctrl-C / SIGTERM), revert everywhere.
pub fn inject(
    placement: &Placement,
    fault: &InfraFault,
    ctx: &FaultContext,
    args: &FleetArgs,
    dry: bool,
    duration: Option<Duration>,
) -> anyhow::Result<u8> {
    let interrupt =
        crate::signals::install().context("installing SIGINT/SIGTERM handlers")?;
    let p = match prepare(placement, fault, ctx, args) {
        Ok(p) => p,
        Err(code) => return Ok(code),
    };
    if dry {
        return Ok(dry_run(&p));
    }
    if let Err(code) = apply_all(&p, fault.kind()) {
        return Ok(code);
    }
    eprintln!(
        "injected {} on {} host(s) (run {}); lease {}",
        fault.kind(),
        p.work.len(),
        ctx.run_id,
        units::format_duration(args.lease)
    );
    let one_shot = matches!(fault, InfraFault::ProcessKill(_));
    let deadline = duration.map(|d| Instant::now() + d);
    let mut interrupted = false;
    let mut lost = Vec::new();
    // A one-shot kill has nothing to hold.
    while !one_shot && !interrupted && lost.is_empty() {
        if deadline.is_some_and(|d| Instant::now() >= d) {
            break;
        }
        interrupted = interrupt.sleep(Duration::from_millis(200));
        lost = p.fleet.lost().iter().map(|r| r.host.name.clone()).collect();
    }
    let failures = p.fleet.close();
    for e in &failures {
        eprintln!("error: revert: {e}\n  hint: run `chaos recover --inventory FILE`");
    }
    if !lost.is_empty() {
        eprintln!(
            "error: lost the agent on {}: it reverted by itself (lease) or died; \
             run `chaos recover --inventory FILE` to settle a dead agent's journal",
            lost.join(", ")
        );
        return Ok(exit::ENVIRONMENT);
    }
    if failures.is_empty() {
        eprintln!("reverted {} on every host", fault.kind());
    }
    Ok(if interrupted {
        exit::INTERRUPTED
    } else if failures.is_empty() {
        exit::OK
    } else {
        exit::ENVIRONMENT
    })
}

/// `chaos recover --inventory FILE [--hosts SEL]`: runs `chaos recover`
/// on every host in parallel and prints each host's report.
pub fn recover(inventory: &std::path::Path, hosts: Option<&str>, dry_run: bool) -> u8 {
    let inv = match Inventory::load(inventory) {
        Ok(i) => i,
        Err(e) => {
            eprintln!("{e}");
            return exit::INVALID;
        }
    };
    let place = match hosts {
        None | Some("*") => Place::Hosts(Vec::new()),
        Some(sel) => match Placement::parse(&format!("pid:1@{sel}")) {
            Ok(p) if p.is_remote() => p.place,
            _ => {
                eprintln!("error: --hosts {sel:?}: expected host:NAME, hosts:KEY=VALUE[,...] or *");
                return exit::INVALID;
            }
        },
    };
    let selected = match inv.select(&place) {
        Ok(h) => h,
        Err(e) => {
            eprintln!("error: {e}");
            return exit::INVALID;
        }
    };
    type HostOutput = (String, Result<(Option<i32>, String), FleetError>);
    let results: Vec<HostOutput> = std::thread::scope(|s| {
        let jobs: Vec<_> = selected
            .iter()
            .map(|h| {
                let ssh = &inv.ssh;
                s.spawn(move || {
                    let mut remote = vec![h.chaos.clone(), "recover".to_string()];
                    if dry_run {
                        remote.push("--dry-run".into());
                    }
                    (h.name.clone(), crate::fleet::ssh::run(h, ssh, &remote))
                })
            })
            .collect();
        jobs.into_iter().filter_map(|j| j.join().ok()).collect()
    });
    let mut code = exit::OK;
    for (host, result) in results {
        match result {
            Ok((status, out)) => {
                for line in out.lines() {
                    println!("[{host}] {line}");
                }
                if status != Some(0) {
                    eprintln!("error: host {host}: chaos recover exited {status:?}");
                    code = exit::ENVIRONMENT;
                }
            }
            Err(e) => {
                eprintln!("error: {e}");
                code = exit::ENVIRONMENT;
            }
        }
    }
    code
}
