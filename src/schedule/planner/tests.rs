//! Scheduling decisions on a hand-moved clock: no real waiting.

use std::path::PathBuf;
use std::time::Duration;

use jiff::tz::TimeZone;
use jiff::Timestamp;

use super::*;
use crate::schedule::clock::{add, Clock, ManualClock};
use crate::schedule::config::{EntryKind, EntrySpec};
use crate::schedule::cron::Cron;
use crate::schedule::window::Window;

fn at(s: &str) -> Timestamp {
    s.parse().unwrap()
}

fn entry(name: &str, cron: &str) -> EntrySpec {
    EntrySpec {
        name: name.into(),
        kind: EntryKind::Experiment(PathBuf::from(format!("{name}.toml"))),
        cron: Cron::parse(cron).unwrap(),
        tz: TimeZone::UTC,
        jitter: Duration::ZERO,
        window: None,
        max_consecutive_failures: 3,
        backoff: Duration::from_secs(600),
    }
}

fn keys(k: &[&str]) -> TargetSet {
    TargetSet::from_keys(k.iter().map(|s| s.to_string()))
}

fn no_targets(_: &EntrySpec) -> Result<TargetSet, String> {
    Ok(TargetSet::default())
}

/// Moves the clock to the next wake-up and returns the decisions there.
fn step(p: &mut Planner, clock: &ManualClock) -> (Timestamp, Vec<Decision>) {
    let wake = p.next_wake().expect("something scheduled");
    clock.set(wake);
    let now = clock.now();
    (now, p.due(now, &mut no_targets))
}

fn started(ds: &[Decision]) -> Vec<&str> {
    ds.iter()
        .filter_map(|d| match d {
            Decision::Start { name } => Some(name.as_str()),
            _ => None,
        })
        .collect()
}

#[test]
fn cron_schedules_fire_at_the_right_times() {
    let clock = ManualClock::new(at("2026-01-05T08:59:58Z"));
    let mut p = Planner::new(
        vec![entry("every-5s", "*/5 * * * * *"), entry("hourly", "0 0 * * * *")],
        clock.now(),
        1,
    );
    let mut fires = Vec::new();
    for _ in 0..4 {
        let (now, ds) = step(&mut p, &clock);
        for name in started(&ds) {
            fires.push(format!("{now} {name}"));
            p.finished(name, Finished::Run(RunOutcome::Accepted), now);
        }
    }
    assert_eq!(
        fires,
        [
            "2026-01-05T09:00:00Z every-5s",
            "2026-01-05T09:00:00Z hourly",
            "2026-01-05T09:00:05Z every-5s",
            "2026-01-05T09:00:10Z every-5s",
            "2026-01-05T09:00:15Z every-5s",
        ]
    );
    assert!(clock.now() == at("2026-01-05T09:00:15Z"));
    let status = p.status();
    assert_eq!(status[1].next_fire.as_deref(), Some("2026-01-05T10:00:00Z"));
}

#[test]
fn fires_are_planned_inside_the_window_only() {
    let mut e = entry("business", "0 0 * * * *");
    e.window = Some(Window::new("mon-fri", "09:00", "17:00", "Europe/Berlin").unwrap());
    // Monday 2026-01-05 06:30 UTC = 07:30 Berlin: 08:00 Berlin is jumped over.
    let clock = ManualClock::new(at("2026-01-05T06:30:00Z"));
    let mut p = Planner::new(vec![e], clock.now(), 1);
    let (now, ds) = step(&mut p, &clock);
    assert_eq!(now, at("2026-01-05T08:00:00Z"), "09:00 Berlin");
    assert_eq!(started(&ds), ["business"]);
    p.finished("business", Finished::Run(RunOutcome::Accepted), now);
    // The last fire of Friday is 16:00 Berlin; the next is Monday 09:00.
    clock.set(at("2026-01-09T14:30:00Z"));
    p.resume("business", clock.now());
    let (now, _) = step(&mut p, &clock);
    assert_eq!(now, at("2026-01-09T15:00:00Z"), "16:00 Berlin");
    p.finished("business", Finished::Run(RunOutcome::Accepted), now);
    assert_eq!(p.status()[0].next_fire.as_deref(), Some("2026-01-12T08:00:00Z"));
}

#[test]
fn a_fire_pushed_out_of_the_window_by_jitter_is_skipped() {
    let mut e = entry("late", "0 0 16 * * *");
    e.window = Some(Window::new("*", "09:00", "17:00", "UTC").unwrap());
    e.jitter = Duration::from_secs(2 * 3600);
    let clock = ManualClock::new(at("2026-01-05T12:00:00Z"));
    let mut p = Planner::new(vec![e], clock.now(), 5);
    let (mut runs, mut skips) = (0, 0);
    for _ in 0..20 {
        let (now, ds) = step(&mut p, &clock);
        match &ds[0] {
            Decision::Start { .. } => {
                runs += 1;
                p.finished("late", Finished::Run(RunOutcome::Accepted), now);
            }
            Decision::Skip { reason: SkipReason::OutsideWindow, .. } => skips += 1,
            other => panic!("{other:?}"),
        }
    }
    assert!(runs > 0 && skips > 0, "runs {runs}, skips {skips}");
}

#[test]
fn overlapping_experiments_never_run_at_the_same_time() {
    let clock = ManualClock::new(at("2026-01-05T09:00:00Z"));
    let mut p = Planner::new(
        vec![
            entry("api-latency", "*/10 * * * * *"),
            entry("api-kill", "*/10 * * * * *"),
            entry("db-loss", "*/10 * * * * *"),
        ],
        clock.now(),
        1,
    );
    let mut targets = |e: &EntrySpec| -> Result<TargetSet, String> {
        Ok(match e.name.as_str() {
            "api-latency" => keys(&["upstream:http://127.0.0.1:18001"]),
            "api-kill" => keys(&["name:^api$", "upstream:http://127.0.0.1:18001"]),
            _ => keys(&["name:^db$"]),
        })
    };
    clock.set(p.next_wake().unwrap());
    let ds = p.due(clock.now(), &mut targets);
    assert_eq!(started(&ds), ["api-latency", "db-loss"]);
    assert_eq!(
        ds[1],
        Decision::Skip {
            name: "api-kill".into(),
            reason: SkipReason::Overlap {
                with: "api-latency".into(),
                target: "upstream:http://127.0.0.1:18001".into()
            }
        }
    );
    // Still running at the next fire: the same entry is not started twice.
    clock.set(p.next_wake().unwrap());
    let ds = p.due(clock.now(), &mut targets);
    assert!(ds.contains(&Decision::Skip {
        name: "api-latency".into(),
        reason: SkipReason::StillRunning
    }));
    assert!(started(&ds).is_empty());
    // Once it finishes, the other one may run.
    p.finished("api-latency", Finished::Run(RunOutcome::Accepted), clock.now());
    p.finished("db-loss", Finished::Run(RunOutcome::Accepted), clock.now());
    clock.set(p.next_wake().unwrap());
    let ds = p.due(clock.now(), &mut targets);
    assert_eq!(started(&ds), ["api-latency", "db-loss"], "config order wins ties");
    assert_eq!(p.running(), ["api-latency", "db-loss"]);
}

#[test]
fn back_off_applies_after_a_rejection_and_an_abort() {
    let mut e = entry("checkout", "0 * * * * *");
    e.backoff = Duration::from_secs(150);
    let clock = ManualClock::new(at("2026-01-05T09:00:30Z"));
    let mut p = Planner::new(vec![e], clock.now(), 1);
    let (now, ds) = step(&mut p, &clock);
    assert_eq!(started(&ds), ["checkout"]);
    // The run takes 10 s and is rejected.
    clock.advance(Duration::from_secs(10));
    p.finished("checkout", Finished::Run(RunOutcome::Rejected), clock.now());
    assert_eq!(now, at("2026-01-05T09:01:00Z"));
    // Back-off until 09:03:40: the 09:02 and 09:03 fires are skipped.
    for expected in ["2026-01-05T09:02:00Z", "2026-01-05T09:03:00Z"] {
        let (now, ds) = step(&mut p, &clock);
        assert_eq!(now, at(expected));
        assert_eq!(
            ds,
            [Decision::Skip {
                name: "checkout".into(),
                reason: SkipReason::BackingOff { until: "2026-01-05T09:03:40Z".into() }
            }]
        );
    }
    let (now, ds) = step(&mut p, &clock);
    assert_eq!(now, at("2026-01-05T09:04:00Z"));
    assert_eq!(started(&ds), ["checkout"]);
    p.finished("checkout", Finished::Run(RunOutcome::Aborted), now);
    let (_, ds) = step(&mut p, &clock);
    assert!(matches!(
        ds[0],
        Decision::Skip { reason: SkipReason::BackingOff { .. }, .. }
    ));
}

#[test]
fn a_schedule_pauses_after_n_consecutive_failures_until_resumed() {
    let mut e = entry("flaky", "*/5 * * * * *");
    e.max_consecutive_failures = 2;
    e.backoff = Duration::ZERO;
    let clock = ManualClock::new(at("2026-01-05T09:00:00Z"));
    let mut p = Planner::new(vec![e, entry("steady", "0 0 * * * *")], clock.now(), 1);
    // Failure, success (resets), failure, failure → paused.
    for how in [
        Finished::Run(RunOutcome::Rejected),
        Finished::Run(RunOutcome::Accepted),
        Finished::CouldNotStart,
        Finished::Run(RunOutcome::EnvironmentError),
    ] {
        let (now, ds) = step(&mut p, &clock);
        assert_eq!(started(&ds), ["flaky"]);
        p.finished("flaky", how, now);
    }
    let s = &p.status()[0];
    assert_eq!(s.paused, Some(Paused::Failures));
    assert_eq!(s.consecutive_failures, 2);
    assert_eq!(s.next_fire, None);
    assert_eq!(p.paused_count(), 1);
    // Only the hourly entry is left to wake for.
    assert_eq!(p.next_wake(), Some(at("2026-01-05T10:00:00Z")));
    assert!(p.resume("flaky", clock.now()));
    assert_eq!(p.next_wake(), Some(at("2026-01-05T09:00:25Z")));
    assert_eq!(p.status()[0].consecutive_failures, 0);
    assert!(!p.resume("nope", clock.now()));
}

#[test]
fn inconclusive_and_interrupted_runs_neither_count_nor_reset_failures() {
    let mut e = entry("x", "*/5 * * * * *");
    e.max_consecutive_failures = 2;
    e.backoff = Duration::ZERO;
    let clock = ManualClock::new(at("2026-01-05T09:00:00Z"));
    let mut p = Planner::new(vec![e], clock.now(), 1);
    for how in [
        Finished::Run(RunOutcome::Rejected),
        Finished::Run(RunOutcome::Inconclusive),
        Finished::Run(RunOutcome::Interrupted),
    ] {
        let (now, _) = step(&mut p, &clock);
        p.finished("x", how, now);
    }
    assert_eq!(p.status()[0].consecutive_failures, 1);
    assert_eq!(p.status()[0].paused, None);
}

#[test]
fn operator_pause_stops_fires_and_resume_restarts_them() {
    let clock = ManualClock::new(at("2026-01-05T09:00:00Z"));
    let mut p = Planner::new(vec![entry("x", "*/5 * * * * *")], clock.now(), 1);
    assert!(p.pause("x"));
    assert_eq!(p.next_wake(), None);
    clock.advance(Duration::from_secs(60));
    assert!(p.due(clock.now(), &mut no_targets).is_empty());
    assert_eq!(p.status()[0].paused, Some(Paused::Operator));
    p.resume("x", clock.now());
    assert_eq!(p.next_wake(), Some(at("2026-01-05T09:01:05Z")));
}

#[test]
fn jitter_is_bounded_and_reproducible_from_the_seed() {
    let mut e = entry("j", "0 * * * * *");
    e.jitter = Duration::from_secs(10);
    let offsets = |seed: u64| {
        let clock = ManualClock::new(at("2026-01-05T09:00:30Z"));
        let mut p = Planner::new(vec![e.clone()], clock.now(), seed);
        let mut out = Vec::new();
        for _ in 0..50 {
            let (now, ds) = step(&mut p, &clock);
            assert_eq!(started(&ds), ["j"]);
            p.finished("j", Finished::Run(RunOutcome::Accepted), now);
            // Offset from the whole minute.
            out.push(now.as_millisecond().rem_euclid(60_000));
        }
        out
    };
    let a = offsets(7);
    assert!(a.iter().all(|ms| (0..=10_000).contains(ms)), "{a:?}");
    assert!(a.iter().any(|ms| *ms > 1_000), "jitter actually spreads fires: {a:?}");
    assert_eq!(a, offsets(7));
    assert_ne!(a, offsets(8));
}

#[test]
fn missed_fires_are_coalesced_into_one() {
    let clock = ManualClock::new(at("2026-01-05T09:00:00Z"));
    let mut p = Planner::new(vec![entry("x", "*/5 * * * * *")], clock.now(), 1);
    // The daemon was stopped (or busy) for a minute.
    clock.advance(Duration::from_secs(61));
    let ds = p.due(clock.now(), &mut no_targets);
    assert_eq!(started(&ds), ["x"]);
    assert_eq!(p.next_wake(), Some(at("2026-01-05T09:01:05Z")));
    assert_eq!(add(clock.now(), Duration::from_secs(4)), at("2026-01-05T09:01:05Z"));
}

#[test]
fn an_invalid_experiment_is_reported_and_counts_as_a_failure() {
    let mut e = entry("broken", "*/5 * * * * *");
    e.max_consecutive_failures = 1;
    let clock = ManualClock::new(at("2026-01-05T09:00:00Z"));
    let mut p = Planner::new(vec![e], clock.now(), 1);
    clock.set(p.next_wake().unwrap());
    let ds = p.due(clock.now(), &mut |_| Err("broken.toml:3:1: bad".into()));
    assert_eq!(
        ds,
        [Decision::Invalid {
            name: "broken".into(),
            error: "broken.toml:3:1: bad".into()
        }]
    );
    p.finished("broken", Finished::CouldNotStart, clock.now());
    assert_eq!(p.status()[0].paused, Some(Paused::Failures));
}

#[test]
fn a_halt_skips_every_fire_without_counting_failures_and_resume_restarts_them() {
    let clock = ManualClock::new(at("2026-01-05T08:59:58Z"));
    let mut p = Planner::new(vec![entry("e", "*/5 * * * * *")], clock.now(), 1);
    p.set_halted(Some("halted: freeze (by ops at t)".into()));
    for _ in 0..5 {
        let (_, ds) = step(&mut p, &clock);
        assert!(started(&ds).is_empty(), "{ds:?}");
        assert!(
            matches!(
                &ds[..],
                [Decision::Skip { reason: SkipReason::Halted { halt }, .. }] if halt.contains("freeze")
            ),
            "{ds:?}"
        );
    }
    assert!(p.status()[0].paused.is_none(), "a halt never pauses a schedule");
    p.set_halted(None);
    let (_, ds) = step(&mut p, &clock);
    assert_eq!(started(&ds), ["e"]);
}
