//! The fault schedule of one run: which fault starts, repeats and stops
//! when, and the [`fault::Session`] that holds every applied fault.
//!
//! The schedule OWNS the session, so every applied fault is reverted on
//! every way out of a run: [`Schedule::revert_all`] on the normal path,
//! the session's `Drop` when the runner returns early or panics anywhere
//! (the observe loop, a monitor, report assembly). Local faults and the
//! faults on inventory hosts (`runner::remote`, reverted through their
//! agents) are both `fault::Injector`s in the same session, so both are
//! covered; the journal records of each are closed by its revert.
//!
//! The schedule changes no proxy and emits no progress line itself: each
//! [`Schedule::tick`] returns what happened ([`Event`]s, whether the HTTP
//! faults changed, the error that ends the run), and the caller reports
//! it. That keeps it drivable on its own (see the tests).

use std::time::Duration;

use crate::experiment::{Fault, FaultKind};
use crate::fault::{self, FaultContext, InfraFault, Injector, Preflight, Session};
use crate::report::FaultRecord;
use crate::traffic::HttpFault;

/// A fault during the run: when it starts and stops, and its state.
pub struct ScheduledFault {
    /// The fault as the experiment file declares it.
    pub spec: Fault,
    /// Offset into the fault window at which it starts.
    pub start: Duration,
    /// Offset into the fault window at which it is reverted.
    pub stop: Duration,
    /// Prepared and not applied (applied ones live in the session).
    injector: Option<Box<dyn Injector>>,
    /// Kept to re-resolve targets when the fault starts: processes named
    /// at preflight may have restarted (new pid) by then.
    infra: Option<InfraFault>,
    /// The proxy's form of an HTTP fault.
    pub http: Option<HttpFault>,
    /// When it was first applied (run time, from the recorder's origin).
    pub applied_at: Option<Duration>,
    /// `process-kill` with `interval`: when to strike again (relative to
    /// the start of injection).
    next_repeat: Option<Duration>,
    /// When it was reverted.
    pub reverted_at: Option<Duration>,
    /// Why its revert failed (then it is pending in the journal).
    pub revert_error: Option<String>,
    /// One line for the timeline and the report.
    pub description: String,
}

impl ScheduledFault {
    /// A fault from `spec`, starting at `spec.start` and stopping after
    /// its duration (or with the window of `window` length).
    pub fn new(spec: &Fault, window: Duration) -> ScheduledFault {
        let stop = spec.start + spec.duration.unwrap_or(window);
        let http = super::plan::http_fault(spec);
        let description = http
            .as_ref()
            .map(|h| {
                format!(
                    "{} on {:.0}% of experiment-cohort requests at {}",
                    h.kind.label().as_str(),
                    h.probability * 100.0,
                    spec.at
                )
            })
            .unwrap_or_default();
        ScheduledFault {
            spec: spec.clone(),
            start: spec.start,
            stop: stop.min(window),
            injector: None,
            infra: None,
            http,
            applied_at: None,
            next_repeat: None,
            reverted_at: None,
            revert_error: None,
            description,
        }
    }

    /// A fault run through `injector` (local, remote or pod). `infra` is
    /// the local engine's fault, re-prepared when the fault starts.
    pub fn with_injector(
        mut self,
        injector: Box<dyn Injector>,
        infra: Option<InfraFault>,
    ) -> ScheduledFault {
        self.description = summarize(&injector.describe(), self.spec.kind.name());
        self.injector = Some(injector);
        self.infra = infra;
        self
    }

    /// The report's record; times are seconds since traffic start (the
    /// recorder's origin), the axis every report timeline uses.
    pub fn record(&self) -> FaultRecord {
        let rel = |d: Option<Duration>| d.map(|d| d.as_secs_f64());
        FaultRecord {
            id: self.spec.id.clone(),
            kind: self.spec.kind.name().to_string(),
            target: match (&self.spec.target, &self.spec.kind) {
                (Some(t), _) => t.to_string(),
                (None, FaultKind::RegionOutage { region, .. }) => {
                    format!("region:{region}")
                }
                (None, _) => format!("experiment cohort @ {}", self.spec.at),
            },
            description: self.description.clone(),
            applied_at_s: rel(self.applied_at),
            reverted_at_s: rel(self.reverted_at),
            revert_error: self.revert_error.clone(),
        }
    }

    fn active(&self) -> bool {
        self.applied_at.is_some() && self.reverted_at.is_none()
    }
}

/// What a tick did to one fault (by index into [`Schedule::faults`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// Applied for the first time.
    Applied(usize),
    /// A repeated `process-kill` struck again.
    Repeated(usize),
    /// Reverted at its stop time.
    Reverted(usize),
}

/// The outcome of one [`Schedule::tick`].
#[derive(Debug, Default)]
pub struct Tick {
    /// In order.
    pub events: Vec<Event>,
    /// An HTTP fault started or stopped: the proxies need the new set.
    pub http_changed: bool,
    /// A fault could not start: the run ends as an environment error
    /// (whatever was applied stays applied until `revert_all`).
    pub error: Option<String>,
}

/// Every fault of a run and the session holding the applied ones.
pub struct Schedule {
    faults: Vec<ScheduledFault>,
    /// `None` when the run has no fault that needs a journal (HTTP only).
    session: Option<Session>,
    ctx: FaultContext,
    pre: Preflight,
}

/// Runs a blocking fault step (commands, signals, SSH round trips) from
/// the runner's async loop without stalling the runtime's other tasks;
/// directly where that is not possible (no runtime, or a current-thread
/// one, where `block_in_place` would panic).
fn blocking<T>(f: impl FnOnce() -> T) -> T {
    match tokio::runtime::Handle::try_current() {
        Ok(h) if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(f)
        }
        _ => f(),
    }
}

impl Schedule {
    /// A schedule over `faults`; `session` must be given when any of them
    /// has an injector. `ctx` and `pre` re-prepare local faults at start.
    pub fn new(
        faults: Vec<ScheduledFault>,
        session: Option<Session>,
        ctx: FaultContext,
        pre: Preflight,
    ) -> Schedule {
        Schedule { faults, session, ctx, pre }
    }

    /// The faults, in the experiment's order.
    pub fn faults(&self) -> &[ScheduledFault] {
        &self.faults
    }

    /// Faults currently held by the session (applied, not yet reverted).
    pub fn applied(&self) -> usize {
        self.session.as_ref().map_or(0, Session::active)
    }

    /// The journal file of this run, if it has one.
    pub fn journal_path(&self) -> Option<&std::path::Path> {
        self.session.as_ref().map(|s| s.journal().path())
    }

    /// Starts, repeats and stops the faults due at `rel` into the fault
    /// window; `now` (run time) is what the records say.
    pub fn tick(&mut self, rel: Duration, now: Duration) -> Tick {
        let mut tick = Tick::default();
        for i in 0..self.faults.len() {
            let sf = &self.faults[i];
            let due_start = sf.applied_at.is_none() && rel >= sf.start && rel < sf.stop;
            let due_repeat = sf.reverted_at.is_none()
                && rel < sf.stop
                && sf.next_repeat.is_some_and(|t| rel >= t);
            if due_start || due_repeat {
                if let Err(e) = self.start(i, rel, now, due_repeat, &mut tick) {
                    tick.error = Some(e);
                    break;
                }
            } else if sf.active() && rel >= sf.stop {
                self.revert_one(i, now, &mut tick.http_changed);
                tick.events.push(Event::Reverted(i));
            }
        }
        tick
    }

    /// Applies fault `i` (or strikes it again); an error ends the run.
    fn start(
        &mut self,
        i: usize,
        rel: Duration,
        now: Duration,
        repeat: bool,
        tick: &mut Tick,
    ) -> Result<(), String> {
        let sf = &mut self.faults[i];
        if repeat {
            // The previous strike has nothing to undo (a kill); close its
            // journal record before the next one opens.
            if let Some(session) = self.session.as_mut() {
                if let Some((old, r)) = blocking(|| session.revert(&sf.spec.id)) {
                    if let Err(e) = r {
                        sf.revert_error = Some(e.to_string());
                    }
                    sf.injector = Some(old);
                }
            }
        }
        if let Some(infra_fault) = sf.infra.as_ref() {
            // Resolve again now: the preflight resolution proved the
            // targets existed; this one hits what exists at start time.
            let fresh = fault::prepare(infra_fault, &self.ctx, &self.pre)
                .map_err(|e| format!("fault {} cannot start: {e}", sf.spec.id))?;
            sf.description = summarize(&fresh.describe(), sf.spec.kind.name());
            sf.injector = Some(fresh);
        }
        if let Some(inj) = sf.injector.take() {
            let session = self
                .session
                .as_mut()
                .expect("a session exists when faults have injectors");
            let r = blocking(|| session.inject(&sf.spec.id, inj));
            // Set on failure too: the session keeps a failed injector,
            // and `revert_all` must undo whatever it left.
            sf.applied_at.get_or_insert(now);
            if let FaultKind::ProcessKill { interval: Some(every), .. } = sf.spec.kind {
                sf.next_repeat = Some(rel + every);
            }
            r.map_err(|e| format!("fault {} failed to apply: {e}", sf.spec.id))?;
            tick.events.push(if repeat { Event::Repeated(i) } else { Event::Applied(i) });
        } else if sf.http.is_some() {
            sf.applied_at = Some(now);
            tick.http_changed = true;
            tick.events.push(Event::Applied(i));
        }
        Ok(())
    }

    fn revert_one(&mut self, i: usize, now: Duration, http_changed: &mut bool) {
        let sf = &mut self.faults[i];
        if sf.http.is_some() {
            *http_changed = true;
        } else if let Some(session) = self.session.as_mut() {
            if let Some((_, Err(e))) = blocking(|| session.revert(&sf.spec.id)) {
                sf.revert_error = Some(e.to_string());
            }
        }
        sf.reverted_at = Some(now);
    }

    /// Reverts every applied fault, newest first (undo in reverse order of
    /// application, as layered faults must be peeled), then anything the
    /// session still holds. Returns the indices reverted, in order. The
    /// caller clears the proxies' HTTP faults.
    pub fn revert_all(&mut self, now: Duration) -> Vec<usize> {
        let mut order: Vec<usize> =
            (0..self.faults.len()).filter(|&i| self.faults[i].active()).collect();
        order.sort_by_key(|&i| std::cmp::Reverse(self.faults[i].applied_at));
        let mut ignored = false;
        for &i in &order {
            self.revert_one(i, now, &mut ignored);
        }
        // Nothing should be left; if bookkeeping and session ever disagree,
        // the session is the truth about what is applied.
        if let Some(session) = self.session.as_mut() {
            for (label, e) in blocking(|| session.revert_all()) {
                if let Some(sf) = self.faults.iter_mut().find(|sf| sf.spec.id == label) {
                    sf.revert_error.get_or_insert_with(|| e.to_string());
                }
            }
        }
        order
    }

    /// The HTTP faults active at proxy `at` (`edge` or a sidecar's name).
    pub fn active_http(&self, at: &str) -> Vec<HttpFault> {
        self.faults
            .iter()
            .filter(|sf| sf.spec.at == at && sf.active())
            .filter_map(|sf| sf.http.clone())
            .collect()
    }

    /// The report's records of every fault.
    pub fn records(&self) -> Vec<FaultRecord> {
        self.faults.iter().map(ScheduledFault::record).collect()
    }
}

/// A one-line summary of an injector's plan for reports: the resolved
/// targets and the first action, without the selection preamble.
pub fn summarize(lines: &[String], kind: &str) -> String {
    lines
        .iter()
        .map(|l| l.trim().trim_end_matches(':'))
        .filter(|l| {
            !l.is_empty() && !l.starts_with(kind) && !l.contains("selection seed")
        })
        .take(2)
        .collect::<Vec<_>>()
        .join("; ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::journal::{self, Journal};
    use std::process::Command;
    use std::time::Duration;

    /// A network namespace for this test, deleted on drop (also on panic).
    struct TestNs(String);

    impl Drop for TestNs {
        fn drop(&mut self) {
            let _ = Command::new("ip").args(["netns", "del", &self.0]).output();
        }
    }

    /// A `sleep` child, resumed and killed on drop (also on panic).
    struct Child(std::process::Child);

    impl Drop for Child {
        fn drop(&mut self) {
            let pid = nix::unistd::Pid::from_raw(self.0.id() as i32);
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGCONT);
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }

    fn ruleset(ns: &str) -> String {
        let out = Command::new("ip")
            .args(["netns", "exec", ns, "nft", "list", "ruleset"])
            .output()
            .expect("nft list ruleset");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn state(pid: u32) -> Option<char> {
        crate::target::process::read(pid).map(|p| p.state)
    }

    fn eventually(what: impl Fn() -> bool) -> bool {
        (0..200).any(|_| {
            if what() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(10));
            false
        })
    }

    /// The schedule of `exp_text`, prepared as preflight prepares it
    /// (local faults only), with its session on a journal in `dir`.
    fn schedule_of(exp_text: &str, dir: &std::path::Path) -> Schedule {
        let loaded = crate::experiment::load_bytes(
            std::path::Path::new("t.toml"),
            exp_text.as_bytes(),
        );
        let exp = loaded.experiment.unwrap_or_else(|| panic!("{:?}", loaded.diagnostics));
        let ctx = super::super::plan::fault_context(&exp, 1, "panicky");
        let infra: Vec<InfraFault> = exp
            .faults
            .iter()
            .map(|f| super::super::plan::infra_fault(f).unwrap().unwrap())
            .collect();
        let pre = fault::preflight(&infra, &ctx).expect("preflight");
        let faults = exp
            .faults
            .iter()
            .zip(&infra)
            .map(|(f, i)| {
                let inj = fault::prepare(i, &ctx, &pre).expect("prepare");
                ScheduledFault::new(f, exp.meta.duration)
                    .with_injector(inj, Some(i.clone()))
            })
            .collect();
        let session = Session::new(Journal::open(dir, "panicky").expect("journal"));
        Schedule::new(faults, Some(session), ctx, pre)
    }

    /// Issue 11: the schedule owns the fault session, so a panic in the
    /// observe phase (here: the closure the window runs between ticks)
    /// still reverts every applied fault and settles the journal. Real
    /// parts: a paused `sleep` and an nftables table in a test netns,
    /// driven from a task on a multi-thread runtime like the runner's.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_panic_in_the_observe_phase_reverts_every_applied_fault() {
        let ready = crate::fault::has_net_admin()
            && crate::fault::cmd::on_path("nft")
            && crate::fault::cmd::on_path("ip");
        if !ready {
            assert!(
                std::env::var("CI").as_deref() != Ok("true"),
                "CI needs root, ip and nft for this test"
            );
            eprintln!("SKIPPED: needs CAP_NET_ADMIN, ip and nft");
            return;
        }
        let ns = TestNs(format!("chsched{}", std::process::id()));
        let added = Command::new("ip").args(["netns", "add", &ns.0]).status().unwrap();
        assert!(added.success(), "ip netns add {}", ns.0);
        let child = Child(Command::new("sleep").arg("60").spawn().unwrap());
        let pid = child.0.id();
        let dir = tempfile::tempdir().unwrap();
        let exp = format!(
            r#"
[experiment]
name = "panicky"
duration = "30s"
[traffic]
listen = "127.0.0.1:18080"
upstream = "http://127.0.0.1:18001"
[[hypothesis]]
name = "errors"
metric = "error_rate"
tolerance = "+1pp"
[[fault]]
kind = "process-pause"
target = "pid:{pid}"
[[fault]]
kind = "packet-loss"
target = "netns:{ns}"
loss = "30%"
destinations = ["192.0.2.0/24"]
"#,
            ns = ns.0
        );
        let schedule = schedule_of(&exp, dir.path());
        let journal_path = schedule.journal_path().unwrap().to_path_buf();
        let ns_name = ns.0.clone();
        let observed = tokio::spawn(async move {
            let mut schedule = schedule;
            let tick = schedule.tick(Duration::ZERO, Duration::ZERO);
            assert_eq!(tick.error, None);
            assert_eq!(tick.events, vec![Event::Applied(0), Event::Applied(1)]);
            assert_eq!(schedule.applied(), 2);
            // The observe phase sees both faults in place, then panics.
            let observe = |s: &Schedule| {
                assert!(eventually(|| state(pid) == Some('T')), "paused");
                assert!(ruleset(&ns_name).contains("table inet chaos_"), "nft table");
                assert!(s.faults().iter().all(|f| f.applied_at.is_some()));
                panic!("a monitor panicked in the observe phase");
            };
            observe(&schedule);
            schedule.revert_all(Duration::from_secs(1));
        })
        .await;
        assert!(observed.is_err_and(|e| e.is_panic()), "the observe phase panicked");
        assert!(eventually(|| state(pid) == Some('S')), "the paused process runs again");
        assert!(
            !ruleset(&ns.0).contains("chaos_"),
            "the nft table is gone: {}",
            ruleset(&ns.0)
        );
        let entries = journal::read_entries(&journal_path).unwrap();
        assert!(entries.len() >= 4, "both faults were journalled: {entries:?}");
        assert_eq!(journal::pending(&entries), vec![], "every record settled");
    }

    /// A repeated kill closes its previous record before striking again;
    /// the session holds one strike at a time.
    #[test]
    fn a_repeated_kill_holds_one_strike_at_a_time() {
        // A shell that ignores SIGTERM, so every strike finds it alive.
        let mut a = Child(
            Command::new("sh").args(["-c", "trap '' TERM; sleep 60"]).spawn().unwrap(),
        );
        let dir = tempfile::tempdir().unwrap();
        let exp = format!(
            r#"
[experiment]
name = "repeat"
duration = "30s"
[traffic]
listen = "127.0.0.1:18080"
upstream = "http://127.0.0.1:18001"
[[hypothesis]]
name = "errors"
metric = "error_rate"
tolerance = "+1pp"
[[fault]]
kind = "process-kill"
target = "pid:{}"
signal = "SIGTERM"
interval = "1s"
"#,
            a.0.id()
        );
        let mut schedule = schedule_of(&exp, dir.path());
        let t = schedule.tick(Duration::ZERO, Duration::ZERO);
        assert_eq!(t.events, vec![Event::Applied(0)]);
        let t = schedule.tick(Duration::from_millis(500), Duration::from_millis(500));
        assert!(t.events.is_empty());
        let t = schedule.tick(Duration::from_secs(1), Duration::from_secs(1));
        assert_eq!(t.events, vec![Event::Repeated(0)], "{:?}", t.error);
        assert_eq!(schedule.applied(), 1);
        assert_eq!(schedule.revert_all(Duration::from_secs(2)), vec![0]);
        assert_eq!(schedule.applied(), 0);
        let path = schedule.journal_path().unwrap().to_path_buf();
        assert_eq!(journal::pending(&journal::read_entries(&path).unwrap()), vec![]);
        assert!(a.0.try_wait().unwrap().is_none(), "SIGTERM was ignored");
    }
}
