//! `chaos agent --stdio`: serve the agent protocol on stdin/stdout (what
//! a controller starts over SSH), with a journal and a lease of its own.

use clap::Args;
use std::path::PathBuf;
use std::time::Duration;

use crate::agent::{self, server};
use crate::exit;
use crate::journal::Journal;
use crate::units;

pub const AFTER_HELP: &str = "Examples:
  chaos agent --stdio
  ssh web-1 chaos agent --stdio --lease 10s      (what `chaos run` does)

Speaks the agent protocol (JSON lines, docs/faults.md) on stdin/stdout;
logs go to stderr. Every fault it applies is journalled in its own
journal on this host. Without a request for the lease (default 10s; the
controller's heartbeats renew it), on end of input, or on SIGHUP,
SIGTERM, SIGINT or SIGPIPE it reverts everything it applied and exits.
If the agent itself is SIGKILLed, `chaos recover` on this host (or
`chaos recover --inventory FILE` from the controller) settles its journal.
`chaos halt` on this host makes it revert and exit as well (and refuse
to start while halted). Exit codes: 0 shut down on request, 3 left on its
own (lease, end of input, signal, halt) with everything reverted, 5 a
revert failed (or halted at start).

Started by sshd, the agent spares its own session in every nftables fault
it applies (the peer and sshd port from SSH_CONNECTION, accepted ahead of
the fault's drop in the same table), so a blackhole of this host does not
cut the controller off; `hello` reports it as `management`.";

/// `chaos agent` arguments.
#[derive(Debug, Args)]
pub struct AgentArgs {
    /// Serve the protocol on stdin/stdout (the only transport today).
    #[arg(long, required = true)]
    pub stdio: bool,
    /// Lease until the controller names one: revert and exit after this
    /// long without a request.
    #[arg(long, default_value = "10s", value_parser = units::parse_duration)]
    pub lease: Duration,
    /// Journal directory [default: $CHAOS_STATE_DIR, /var/lib/chaos as
    /// root, else $XDG_STATE_HOME/chaos].
    #[arg(long)]
    pub journal_dir: Option<PathBuf>,
}

/// Runs `chaos agent`; returns the exit code.
pub fn run(args: AgentArgs) -> u8 {
    if let Err(e) = agent::install_exit_signals() {
        eprintln!("error: installing signal handlers: {e}");
        return exit::ENVIRONMENT;
    }
    let dir = crate::journal::resolve_dir(args.journal_dir.as_deref());
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let run_id = format!("agent-{}-{secs}", std::process::id());
    let journal = match Journal::open(&dir, &run_id) {
        Ok(j) => j,
        Err(e) => {
            eprintln!("error: opening the agent journal in {}: {e}", dir.display());
            return exit::ENVIRONMENT;
        }
    };
    // The session sshd started us in: every nftables fault spares it.
    let management = crate::fault::ManagementPath::from_env(|k| std::env::var(k).ok())
        .unwrap_or_else(|e| {
            eprintln!("warning: {e}; nftables faults will not spare the SSH session");
            None
        });
    let opts =
        server::AgentOptions { lease: args.lease, host: server::hostname(), management };
    let stdin = std::io::BufReader::new(std::io::stdin());
    let stdout = std::io::stdout();
    // `chaos halt` on this host stops the agent like a signal does: the
    // marker is polled every tick, and the registration lets `halt`
    // SIGTERM an agent too stuck to poll.
    let state = crate::journal::state_dir();
    let _registered = crate::halt::register_default("chaos agent");
    let stop = || {
        agent::exit_signal().or_else(|| {
            crate::halt::check(&state).map(|h| format!("halted on this host: {h}"))
        })
    };
    let outcome = server::serve(stdin, stdout, journal, &opts, &stop);
    eprintln!(
        "chaos agent: {}; reverted {} fault(s){}",
        outcome.reason,
        outcome.reverted,
        if outcome.failed.is_empty() {
            String::new()
        } else {
            format!(", FAILED: {} (run `chaos recover`)", outcome.failed.join("; "))
        }
    );
    if !outcome.failed.is_empty() {
        exit::ENVIRONMENT
    } else if outcome.reason == server::ExitReason::Shutdown {
        exit::OK
    } else {
        exit::ABORTED
    }
}
