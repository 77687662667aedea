//! The runner's fault schedule with faults on inventory hosts (see
//! fleet_support): it owns the `fault::Session`, so a panic in the
//! observe phase reverts the faults on every host right away (not after
//! the agents' lease) and leaves the controller's journal settled. Driven
//! through the library, as `runner::run` drives it, from a thread in the
//! controller's namespace.

use std::sync::mpsc;
use std::time::{Duration, Instant};

use chaos::fault::{Preflight, Session};
use chaos::journal::Journal;
use chaos::runner::schedule::{Event, Schedule, ScheduledFault};

use crate::fleet_gameday::{
    fleet, journal_settled, payments_faults, payments_faults_active,
};
use crate::support::eventually;

#[test]
fn a_panic_in_the_observe_phase_reverts_the_faults_on_every_host() {
    let Some(f) = fleet() else { return };
    let inv = f.inventory();
    let before = f.snapshot();
    let path = f.dir.path().join("panicky.toml");
    std::fs::write(
        &path,
        format!(
            r#"
[experiment]
name = "panicky"
duration = "60s"
[traffic]
listen = "127.0.0.1:0"
upstream = "http://127.0.0.1:1"
[[hypothesis]]
name = "errors flat"
metric = "error_rate"
tolerance = "+1pp"
{}"#,
            // 3 s faults; the schedule is never ticked past them.
            payments_faults(&f)
        ),
    )
    .unwrap();
    let loaded = chaos::experiment::load(&path);
    let mut exp = loaded.experiment.unwrap_or_else(|| panic!("{:?}", loaded.diagnostics));
    exp.hosts = Some(chaos::fleet::inventory::Inventory::load(&inv).unwrap());
    let journal = f.dir.path().join("panic-journal");
    let ns = format!("/run/netns/{}", f.ctl);
    let (applied_tx, applied_rx) = mpsc::channel();
    let (go_tx, go_rx) = mpsc::channel::<()>();
    let jdir = journal.clone();
    let runner = std::thread::spawn(move || {
        // The controller's side: ssh to the hosts from its namespace.
        let file = std::fs::File::open(&ns).unwrap();
        nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
        let ctx = chaos::runner::plan::fault_context(&exp, 1, "panicky");
        let mut remote = chaos::runner::remote::prepare(&exp, &ctx).expect("preflight");
        let faults = exp
            .faults
            .iter()
            .map(|spec| {
                let rf = remote.remove(&spec.id).expect("a remote fault");
                ScheduledFault::new(spec, exp.meta.duration)
                    .with_injector(Box::new(rf), None)
            })
            .collect();
        let session = Session::new(Journal::open(&jdir, "panicky").unwrap());
        let mut schedule =
            Schedule::new(faults, Some(session), ctx, Preflight::default());
        let tick = schedule.tick(Duration::ZERO, Duration::ZERO);
        assert_eq!(tick.error, None);
        assert_eq!(tick.events, vec![Event::Applied(0), Event::Applied(1)]);
        applied_tx.send(()).unwrap();
        // The observe phase: it waits for the test to look at the hosts,
        // then a monitor panics.
        let observe = |_: &mut Schedule| {
            let _ = go_rx.recv();
            panic!("a monitor panicked in the observe phase");
        };
        observe(&mut schedule);
        schedule.revert_all(Duration::from_secs(1));
    });
    applied_rx.recv_timeout(Duration::from_secs(30)).expect("the faults were applied");
    let landed =
        eventually(Duration::from_secs(10), || payments_faults_active(&f).then_some(()));
    assert!(landed.is_some(), "faults on web-1 and web-2: {:?}", f.snapshot());
    let start = Instant::now();
    go_tx.send(()).unwrap();
    assert!(runner.join().is_err(), "the observe phase panicked");
    // The agents' lease is 10 s (the inventory's default): reverted well
    // before it ran out means the schedule reverted on its way out.
    let back =
        eventually(Duration::from_secs(3), || (f.snapshot() == before).then_some(()));
    eprintln!("panic → every host reverted after {:?}", start.elapsed());
    assert!(back.is_some(), "every host back to its snapshot: {:?}", f.snapshot());
    let records = journal_settled(&journal).unwrap();
    assert!(records > 0, "the controller journalled both host faults");
}
