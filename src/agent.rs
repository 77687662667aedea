//! `chaos agent`: the local fault engine behind a small versioned
//! protocol, so a controller on another machine can apply and revert
//! faults here. The agent keeps its own journal on its host and a lease:
//! without a heartbeat it reverts everything and exits, so a lost
//! controller never leaves a fault behind.
//!
//! - [`protocol`]: the JSON-lines messages and error codes.
//! - [`wire`]: the serde form of a fault.
//! - [`server`]: the agent loop over any reader/writer (stdio today).
//! - [`client`]: the controller's side over any reader/writer.
//! - [`held`]: the faults the agent holds, reverted on every exit.

pub mod client;
pub mod held;
pub mod protocol;
pub mod server;
pub mod wire;

use nix::sys::signal::{sigaction, SaFlags, SigAction, SigHandler, SigSet, Signal};
use std::sync::atomic::{AtomicI32, Ordering};

static LEAVE: AtomicI32 = AtomicI32::new(0);

extern "C" fn on_leave(sig: libc::c_int) {
    LEAVE.store(sig, Ordering::SeqCst);
}

/// Makes SIGHUP (SSH session gone), SIGTERM, SIGINT and SIGPIPE ask the
/// agent to revert and leave instead of killing it with faults applied.
pub fn install_exit_signals() -> Result<(), nix::Error> {
    let action = SigAction::new(
        SigHandler::Handler(on_leave),
        SaFlags::SA_RESTART,
        SigSet::empty(),
    );
    for sig in [Signal::SIGHUP, Signal::SIGTERM, Signal::SIGINT, Signal::SIGPIPE] {
        // SAFETY: the handler only stores into an atomic (async-signal-safe).
        unsafe { sigaction(sig, &action) }?;
    }
    Ok(())
}

/// The signal that asked the agent to leave, if one has.
pub fn exit_signal() -> Option<String> {
    match LEAVE.load(Ordering::SeqCst) {
        0 => None,
        n => Some(
            Signal::try_from(n)
                .map(|s| format!("received {}", s.as_str()))
                .unwrap_or_else(|_| format!("received signal {n}")),
        ),
    }
}
