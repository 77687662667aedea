//! The faults one agent holds: each applied fault under a handle, with
//! the agent's journal. Unlike the runner's `fault::Session` a controller
//! can revert one fault by handle; like it, dropping reverts everything,
//! so no exit path of the agent leaves a fault behind.

use crate::fault::{FaultError, Injector};
use crate::journal::Journal;

use super::protocol::ActiveFault;

/// Applied faults by handle, newest last.
pub struct Held {
    journal: Journal,
    next: u64,
    faults: Vec<(u64, String, Box<dyn Injector>)>,
}

impl Held {
    pub fn new(journal: Journal) -> Held {
        Held { journal, next: 1, faults: Vec::new() }
    }

    /// Injects (journalled) and returns the handle. On error the fault's
    /// partial steps are already reverted by the engine.
    pub fn apply(
        &mut self,
        label: &str,
        mut injector: Box<dyn Injector>,
    ) -> Result<u64, FaultError> {
        injector.inject(&mut self.journal)?;
        let handle = self.next;
        self.next += 1;
        tracing::info!(fault = label, handle, "agent applied fault");
        self.faults.push((handle, label.to_string(), injector));
        Ok(handle)
    }

    /// Reverts one fault; `Ok(false)` when no fault has this handle.
    pub fn revert(&mut self, handle: u64) -> Result<bool, FaultError> {
        let Some(pos) = self.faults.iter().position(|(h, _, _)| *h == handle) else {
            return Ok(false);
        };
        let (_, label, mut injector) = self.faults.remove(pos);
        match injector.revert(&mut self.journal) {
            Ok(()) => {
                tracing::info!(fault = %label, handle, "agent reverted fault");
                Ok(true)
            }
            Err(e) => {
                // Keep it: a later revert-all (or drop) tries again.
                self.faults.insert(pos, (handle, label, injector));
                Err(e)
            }
        }
    }

    /// Reverts everything, newest first: (reverted handles, failures).
    pub fn revert_all(&mut self) -> (Vec<u64>, Vec<(String, FaultError)>) {
        let mut done = Vec::new();
        let mut failed = Vec::new();
        while let Some((handle, label, mut injector)) = self.faults.pop() {
            match injector.revert(&mut self.journal) {
                Ok(()) => done.push(handle),
                Err(e) => failed.push((label, e)),
            }
        }
        (done, failed)
    }

    pub fn active(&self) -> Vec<ActiveFault> {
        self.faults
            .iter()
            .map(|(handle, label, _)| ActiveFault {
                handle: *handle,
                label: label.clone(),
            })
            .collect()
    }

    pub fn journal(&self) -> &Journal {
        &self.journal
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        for (label, e) in self.revert_all().1 {
            tracing::error!(fault = %label, error = %e, "agent revert on drop failed; run `chaos recover`");
        }
    }
}
