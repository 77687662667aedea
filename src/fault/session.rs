//! [`Session`]: the faults a runner has applied, reverted on every path.
//! `revert` (one fault, by label) and `revert_all` are the normal ways
//! out; `Drop` is the safety net for early returns and panics, so no code
//! path can forget a fault. The runner's fault schedule
//! (`runner::schedule`) and `chaos inject` each own one.

use super::{FaultError, Injector};
use crate::journal::Journal;

/// Owns the journal and every injected fault of one run.
pub struct Session {
    journal: Journal,
    active: Vec<(String, Box<dyn Injector>)>,
}

impl Session {
    pub fn new(journal: Journal) -> Session {
        Session { journal, active: Vec::new() }
    }

    /// Injects `injector` (journalled) and keeps it for revert. It is held
    /// before it acts, and kept on error too: an injector undoes its own
    /// partial steps when a step fails, but not when the journal refuses
    /// one (a lock held elsewhere) after earlier steps were applied, nor
    /// when something panics mid-inject; its revert is idempotent, so
    /// holding it costs nothing and covers those cases.
    pub fn inject(
        &mut self,
        label: &str,
        injector: Box<dyn Injector>,
    ) -> Result<(), FaultError> {
        self.active.push((label.to_string(), injector));
        let (_, held) = self.active.last_mut().expect("just pushed");
        let result = held.inject(&mut self.journal);
        if result.is_ok() {
            tracing::info!(fault = label, "fault injected");
        }
        result
    }

    /// Reverts the newest fault injected as `label` and hands its injector
    /// back (to inject again, e.g. the next strike of a repeated kill) with
    /// the revert's result; `None` when no fault of that label is applied.
    /// A failed revert stays pending in the journal for `chaos recover`.
    pub fn revert(
        &mut self,
        label: &str,
    ) -> Option<(Box<dyn Injector>, Result<(), FaultError>)> {
        let i = self.active.iter().rposition(|(l, _)| l == label)?;
        let (label, mut injector) = self.active.remove(i);
        let result = injector.revert(&mut self.journal);
        match &result {
            Ok(()) => tracing::info!(fault = %label, "fault reverted"),
            Err(e) => tracing::error!(fault = %label, error = %e, "revert failed"),
        }
        Some((injector, result))
    }

    /// Number of faults currently applied.
    pub fn active(&self) -> usize {
        self.active.len()
    }

    /// Reverts every fault, newest first; keeps going past failures and
    /// returns them all (each stays pending in the journal for `recover`).
    pub fn revert_all(&mut self) -> Vec<(String, FaultError)> {
        let mut failures = Vec::new();
        while let Some((label, mut injector)) = self.active.pop() {
            match injector.revert(&mut self.journal) {
                Ok(()) => tracing::info!(fault = %label, "fault reverted"),
                Err(e) => failures.push((label, e)),
            }
        }
        failures
    }

    /// The journal (e.g. to print its path).
    pub fn journal(&self) -> &Journal {
        &self.journal
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        for (label, e) in self.revert_all() {
            tracing::error!(fault = %label, error = %e, "revert on drop failed; run `chaos recover`");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fault::{preflight, prepare, FaultContext, InfraFault, ProcessPause};
    use crate::target::{process, Selection, TargetSelector};

    #[test]
    fn dropping_a_session_resumes_a_paused_process() {
        let mut child = std::process::Command::new("sleep").arg("30").spawn().unwrap();
        let pid = child.id();
        let dir = tempfile::tempdir().unwrap();
        let fault = InfraFault::ProcessPause(ProcessPause {
            target: TargetSelector::Pid(pid),
            selection: Selection::Count(1),
        });
        let ctx = FaultContext { run_id: "drop".into(), ..Default::default() };
        let pre = preflight(std::slice::from_ref(&fault), &ctx).unwrap();
        {
            let mut session = Session::new(Journal::open(dir.path(), "drop").unwrap());
            session.inject("pause", prepare(&fault, &ctx, &pre).unwrap()).unwrap();
            let stopped = (0..100).any(|_| {
                std::thread::sleep(std::time::Duration::from_millis(10));
                process::read(pid).is_some_and(|p| p.state == 'T')
            });
            assert!(stopped);
        }
        let resumed = (0..100).any(|_| {
            std::thread::sleep(std::time::Duration::from_millis(10));
            process::read(pid).is_some_and(|p| p.state == 'S')
        });
        let _ = child.kill();
        let _ = child.wait();
        assert!(resumed);
    }
}
