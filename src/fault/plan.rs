//! The one [`Injector`] every fault kind compiles into: an ordered list of
//! steps, each with the action that applies it and the [`RevertAction`]
//! that undoes it. Applying a step is always: take the (machine-wide)
//! target lock, write the journal record (fsynced), act. A step whose
//! action failed created nothing, so its revert is never run: only what
//! this fault applied is ever undone. Reverting is idempotent and shared
//! with `chaos recover`, which only has the journal to go on.

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use std::time::{Duration, Instant};

use super::cmd::Cmd;
use super::{nft, tc, FaultError, Injector};
use crate::journal::{Journal, RevertAction};
use crate::target::process;

/// How one step is applied.
#[derive(Debug, Clone)]
pub enum Apply {
    /// Send `signal`; with `grace`, send SIGTERM first and `signal` only
    /// if the process outlives the grace period.
    Signal { pid: u32, starttime: u64, signal: Signal, grace: Option<Duration> },
    /// Run a command (nft, tc).
    Command(Cmd),
    /// Name a container's network namespace (`fault::container`).
    EnterNetns { name: String, container: String },
}

/// One unit of a fault.
#[derive(Debug, Clone)]
pub struct Step {
    /// Human description for the journal and logs.
    pub what: String,
    /// Target lock key.
    pub lock: String,
    pub apply: Apply,
    pub revert: RevertAction,
}

/// A prepared fault: its steps and which were applied.
#[derive(Debug)]
pub struct Plan {
    pub notes: Vec<String>,
    pub steps: Vec<Step>,
    /// (journal id, step index, the revert recorded for it).
    applied: Vec<(u64, usize, RevertAction)>,
}

impl Plan {
    pub fn new(notes: Vec<String>, steps: Vec<Step>) -> Plan {
        Plan { notes, steps, applied: Vec::new() }
    }
}

impl Injector for Plan {
    fn describe(&self) -> Vec<String> {
        let mut out = self.notes.clone();
        for step in &self.steps {
            out.push(format!("{}:", step.what));
            match &step.apply {
                Apply::Signal { pid, signal, grace: Some(g), .. } => out.push(format!(
                    "  kill -TERM {pid}; after {} if still alive: kill -{} {pid}",
                    crate::units::format_duration(*g),
                    signal.as_str().trim_start_matches("SIG")
                )),
                Apply::Signal { pid, signal, .. } => out.push(format!(
                    "  kill -{} {pid}",
                    signal.as_str().trim_start_matches("SIG")
                )),
                Apply::Command(cmd) => out.push(format!("  {cmd}")),
                Apply::EnterNetns { name, container } => out.push(format!(
                    "  ip netns attach {name} <pid of container {container}>"
                )),
            }
            match &step.revert {
                RevertAction::Nothing { .. } => {
                    out.push("  revert: nothing to undo".into())
                }
                other => {
                    for cmd in revert_commands(other) {
                        out.push(format!("  revert: {cmd}"));
                    }
                }
            }
        }
        out
    }

    fn inject(&mut self, journal: &mut Journal) -> Result<(), FaultError> {
        for index in 0..self.steps.len() {
            if self.applied.iter().any(|(_, i, _)| *i == index) {
                continue;
            }
            let step = self.steps[index].clone();
            journal.lock_target(&step.lock)?;
            let revert = as_found(&step.revert);
            let id =
                journal.record_apply(&step.what, Some(&step.lock), revert.clone())?;
            if let Err(e) = apply(&step.apply) {
                // This step created nothing (`nft -f` and `tc qdisc add`
                // are all-or-nothing, a signal is sent or not), so its
                // revert must not run: it could delete an identical fault
                // someone else owns. Close its record, then undo the steps
                // before it; the error wins.
                let closed = journal.record_reverted(id, Some(&step.lock));
                let _ = self.revert(journal);
                closed?;
                return Err(e);
            }
            if matches!(revert, RevertAction::Nothing { .. }) {
                journal.record_reverted(id, Some(&step.lock))?;
            } else {
                self.applied.push((id, index, revert));
            }
        }
        Ok(())
    }

    fn revert(&mut self, journal: &mut Journal) -> Result<(), FaultError> {
        let mut first_error = None;
        // Reverse order: undo the last thing first.
        while let Some((id, index, revert)) = self.applied.pop() {
            let step = &self.steps[index];
            match revert_action(&revert) {
                Ok(()) => journal.record_reverted(id, Some(&step.lock))?,
                Err(e) => {
                    tracing::error!(error = %e, what = %step.what, "revert failed; left in journal");
                    first_error.get_or_insert(e);
                }
            }
        }
        first_error.map_or(Ok(()), Err)
    }
}

/// The revert to record, given the target's state right before acting: a
/// process that is already stopped (by its owner, a debugger, another
/// tool) is left stopped by the revert, as it was found.
fn as_found(revert: &RevertAction) -> RevertAction {
    match revert {
        RevertAction::Continue { pid, starttime, .. } => RevertAction::Continue {
            pid: *pid,
            starttime: *starttime,
            stopped_before: process::read(*pid)
                .is_some_and(|p| p.starttime == *starttime && p.state == 'T'),
        },
        other => other.clone(),
    }
}

fn apply(action: &Apply) -> Result<(), FaultError> {
    match action {
        Apply::Command(cmd) => cmd.run().map(|_| ()),
        Apply::EnterNetns { name, container } => super::container::enter(name, container),
        Apply::Signal { pid, starttime, signal, grace } => {
            let same = |p: &process::ProcessInfo| p.starttime == *starttime;
            match process::read(*pid) {
                Some(p) if same(&p) => {}
                _ => return Err(FaultError::Gone { pid: *pid }),
            }
            let send = |sig: Signal| {
                kill(Pid::from_raw(*pid as i32), sig).map_err(|errno| {
                    FaultError::Signal { pid: *pid, signal: sig.as_str(), errno }
                })
            };
            if let Some(grace) = grace {
                send(Signal::SIGTERM)?;
                let deadline = Instant::now() + *grace;
                while Instant::now() < deadline {
                    match process::read(*pid) {
                        Some(p) if same(&p) && p.state != 'Z' => {
                            std::thread::sleep(Duration::from_millis(20))
                        }
                        _ => return Ok(()),
                    }
                }
            }
            send(*signal)
        }
    }
}

/// The commands [`revert_action`] may run, for `--dry-run` output.
pub fn revert_commands(action: &RevertAction) -> Vec<String> {
    match action {
        RevertAction::Nothing { .. } => vec![],
        RevertAction::Continue { stopped_before: true, .. } => vec![],
        RevertAction::Continue { pid, .. } => vec![format!("kill -CONT {pid}")],
        RevertAction::DeleteNftTable { netns, family, table } => {
            vec![nft::del_cmd(netns.as_deref(), family, table).to_string()]
        }
        RevertAction::DeleteQdisc { netns, dev, .. } => {
            vec![tc::del_cmd(netns.as_deref(), dev).to_string()]
        }
        RevertAction::ReleaseNetns { name, .. } => vec![format!("ip netns del {name}")],
    }
}

/// Undoes one journal record. Idempotent: something already gone (the
/// table, the qdisc, the namespace, the process) counts as reverted.
pub fn revert_action(action: &RevertAction) -> Result<(), FaultError> {
    match action {
        RevertAction::Nothing { .. } => Ok(()),
        // It was stopped before the fault: leave it as it was found.
        RevertAction::Continue { stopped_before: true, .. } => Ok(()),
        RevertAction::Continue { pid, starttime, .. } => match process::read(*pid) {
            Some(p) if p.starttime == *starttime => {
                kill(Pid::from_raw(*pid as i32), Signal::SIGCONT).map_err(|errno| {
                    FaultError::Signal { pid: *pid, signal: "SIGCONT", errno }
                })
            }
            _ => Ok(()),
        },
        RevertAction::DeleteNftTable { netns, family, table } => {
            if netns_gone(netns) {
                return Ok(());
            }
            let ns = netns.as_deref();
            if !nft::owned_table(ns, family, table, &nft::table_comment(table))? {
                return Ok(());
            }
            nft::del_cmd(ns, family, table).run().map(|_| ())
        }
        RevertAction::DeleteQdisc { netns, dev, kind, .. } => {
            if netns_gone(netns) {
                return Ok(());
            }
            let ns = netns.as_deref();
            let (ok, shown, _) = tc::show_cmd(ns, dev).output()?;
            if !ok || !tc::is_ours(&shown, kind) {
                // Device gone, or the root qdisc is no longer ours.
                return Ok(());
            }
            tc::del_cmd(ns, dev).run().map(|_| ())
        }
        RevertAction::ReleaseNetns { name, container } => {
            super::container::release(name, container)
        }
    }
}

fn netns_gone(netns: &Option<String>) -> bool {
    netns.as_ref().is_some_and(|ns| !std::path::Path::new("/run/netns").join(ns).exists())
}
