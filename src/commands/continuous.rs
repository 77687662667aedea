//! `chaos continuous`: the scheduling daemon with history, status API and
//! metrics. SIGTERM/SIGINT stop scheduling, let the running experiment
//! revert, and exit 0.

use std::io::Write;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use clap::Args;

use crate::exit;
use crate::experiment::Severity;
use crate::runner::progress::ProgressMode;
use crate::schedule::api;
use crate::schedule::clock::{Clock, SystemClock};
use crate::schedule::config;
use crate::schedule::daemon::{Daemon, EventSink};
use crate::schedule::exec::Stop;
use crate::schedule::planner::Planner;
use crate::schedule::runner_exec::RunnerExecutor;

const AFTER_HELP: &str = "Examples:
  chaos continuous --config scenarios/continuous.toml
  chaos continuous --config scenarios/continuous.toml --check
  curl -s 127.0.0.1:9464/status | jq '.schedules[] | {name, next_fire, paused}'
  curl -s -X POST -H \"Authorization: Bearer $TOKEN\" 127.0.0.1:9464/schedules/checkout/pause

Runs [[schedule]] experiments on cron (six fields with seconds, or five),
with jitter and allowed windows in a time zone; [[monkey]] entries signal a
random process among their targets. Never runs two entries on the same
target at once, backs off after a rejection or abort, and pauses an entry
after max_consecutive_failures. Experiments with host targets
(`@host:`/`@hosts:`) reach the hosts of `[daemon] inventory = \"fleet.toml\"`
(or of their own [[host]] tables). Every run is recorded in the SQLite history
(`chaos history`). One line per event on stdout.
SIGTERM: stop scheduling, let the running experiment revert, exit 0.";

/// Arguments of `chaos continuous`.
#[derive(Debug, Args)]
#[command(after_help = AFTER_HELP)]
pub struct ContinuousArgs {
    /// The daemon config (TOML: [daemon], [[schedule]], [[monkey]]).
    #[arg(long, value_name = "FILE")]
    pub config: PathBuf,
    /// Validate the config and print the next fire times, then exit.
    #[arg(long)]
    pub check: bool,
}

/// Runs `chaos continuous`.
pub fn run(args: ContinuousArgs) -> u8 {
    let loaded = config::load(&args.config);
    for d in &loaded.diagnostics {
        eprintln!("{d}");
    }
    let Some(cfg) = loaded.config else { return exit::INVALID };
    if loaded.diagnostics.iter().any(|d| d.severity == Severity::Error) {
        return exit::INVALID;
    }
    if args.check {
        let p = Planner::new(
            cfg.entries.clone(),
            jiff::Timestamp::now(),
            cfg.seed.unwrap_or(0),
        );
        for s in p.status() {
            println!(
                "{} {}: cron {:?}, window {}, next fire {}",
                s.kind,
                s.name,
                s.cron,
                s.window.as_deref().unwrap_or("any time"),
                s.next_fire.as_deref().unwrap_or("never")
            );
        }
        return exit::OK;
    }
    let interrupt = match crate::signals::install() {
        Ok(i) => i,
        Err(e) => {
            eprintln!("chaos continuous: cannot install signal handlers ({e})");
            return exit::ENVIRONMENT;
        }
    };
    let exec = RunnerExecutor {
        journal_dir: crate::journal::resolve_dir(cfg.journal_dir.as_deref()),
        seed: None,
        progress: ProgressMode::Quiet,
        interrupt: Some(interrupt),
        inventory: cfg.inventory.clone(),
    };
    let rt = match super::runner_runtime("chaos continuous") {
        Ok(rt) => rt,
        Err(code) => return code,
    };
    let events: EventSink = Arc::new(Mutex::new(Box::new(std::io::stdout())));
    rt.block_on(async move {
        let clock: Arc<dyn Clock> = Arc::new(SystemClock);
        let listen = cfg.listen;
        let daemon = match Daemon::new(cfg, exec, clock.clone(), events.clone()) {
            Ok(d) => d,
            Err(e) => {
                eprintln!("chaos continuous: {e}");
                return exit::ENVIRONMENT;
            }
        };
        let listener = match tokio::net::TcpListener::bind(listen).await {
            Ok(l) => l,
            Err(e) => {
                eprintln!("chaos continuous: cannot listen on {listen}: {e}");
                return exit::ENVIRONMENT;
            }
        };
        let bound = listener.local_addr().map(|a| a.to_string()).unwrap_or_default();
        {
            let mut w = events.lock().unwrap_or_else(|p| p.into_inner());
            let _ = writeln!(
                w,
                "{} listening on http://{bound} (GET /status, GET /metrics)",
                clock.now()
            );
            let _ = w.flush();
        }
        let stop = Stop::new();
        tokio::spawn(api::serve(listener, daemon.shared(), clock.clone(), stop.clone()));
        let s = stop.clone();
        tokio::spawn(async move {
            interrupt.wait().await;
            s.set();
        });
        daemon.run(stop.clone()).await;
        stop.set();
        exit::OK
    })
}
