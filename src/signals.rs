//! SIGINT/SIGTERM handling shared by `chaos inject` and the runner.
//!
//! The handler only records which signal arrived; the main loop notices
//! (poll [`Interrupt::is_set`] or await [`Interrupt::wait`]) and reverts
//! every fault before exiting with 130. Nothing is reverted from inside a
//! signal handler, where almost nothing is async-signal-safe.

use nix::sys::signal::{sigaction, SaFlags, SigAction, SigHandler, SigSet, Signal};
use std::sync::atomic::{AtomicI32, Ordering};
use std::time::Duration;

static RECEIVED: AtomicI32 = AtomicI32::new(0);

extern "C" fn on_signal(sig: libc::c_int) {
    RECEIVED.store(sig, Ordering::SeqCst);
}

/// Handle on the installed handlers; cheap to copy.
#[derive(Debug, Clone, Copy)]
pub struct Interrupt(());

/// Installs handlers for SIGINT and SIGTERM (idempotent). A second signal
/// does not kill the process either: reverting must finish.
pub fn install() -> Result<Interrupt, nix::Error> {
    let action = SigAction::new(
        SigHandler::Handler(on_signal),
        SaFlags::SA_RESTART,
        SigSet::empty(),
    );
    for sig in [Signal::SIGINT, Signal::SIGTERM] {
        // SAFETY: the handler only stores into an atomic, which is
        // async-signal-safe.
        unsafe { sigaction(sig, &action) }?;
    }
    Ok(Interrupt(()))
}

impl Interrupt {
    /// True once SIGINT or SIGTERM has arrived.
    pub fn is_set(&self) -> bool {
        RECEIVED.load(Ordering::SeqCst) != 0
    }

    /// The signal that arrived, if any.
    pub fn signal(&self) -> Option<Signal> {
        match RECEIVED.load(Ordering::SeqCst) {
            0 => None,
            n => Signal::try_from(n).ok(),
        }
    }

    /// Sleeps up to `d`, waking early on a signal; returns true if
    /// interrupted.
    pub fn sleep(&self, d: Duration) -> bool {
        let deadline = std::time::Instant::now() + d;
        loop {
            if self.is_set() {
                return true;
            }
            let now = std::time::Instant::now();
            if now >= deadline {
                return false;
            }
            std::thread::sleep((deadline - now).min(Duration::from_millis(20)));
        }
    }

    /// Resolves when a signal has arrived (for `tokio::select!`).
    pub async fn wait(&self) {
        while !self.is_set() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_delivered_sigterm_is_recorded_instead_of_killing_the_process() {
        let int = install().unwrap();
        nix::sys::signal::raise(Signal::SIGTERM).unwrap();
        assert!(int.sleep(Duration::from_secs(2)));
        assert_eq!(int.signal(), Some(Signal::SIGTERM));
    }
}
