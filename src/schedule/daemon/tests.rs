//! The daemon loop on a manual clock with a scripted executor.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use jiff::tz::TimeZone;
use jiff::Timestamp;

use super::*;
use crate::outcome::RunOutcome;
use crate::schedule::api;
use crate::schedule::clock::ManualClock;
use crate::schedule::config::{DaemonConfig, EntryKind, EntrySpec};
use crate::schedule::cron::Cron;
use crate::schedule::exec::fake::FakeExecutor;
use crate::schedule::history::History;
use crate::schedule::targets::TargetSet;

#[derive(Clone, Default)]
struct Buf(Arc<Mutex<Vec<u8>>>);
impl std::io::Write for Buf {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
impl Buf {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

fn entry(name: &str, cron: &str) -> EntrySpec {
    EntrySpec {
        name: name.into(),
        kind: EntryKind::Experiment(PathBuf::from(format!("{name}.toml"))),
        cron: Cron::parse(cron).unwrap(),
        tz: TimeZone::UTC,
        jitter: Duration::ZERO,
        window: None,
        max_consecutive_failures: 2,
        backoff: Duration::ZERO,
    }
}

fn config(dir: &std::path::Path, entries: Vec<EntrySpec>) -> DaemonConfig {
    DaemonConfig {
        file: dir.join("continuous.toml"),
        listen: "127.0.0.1:0".parse().unwrap(),
        token: Some("sekrit-token".into()),
        history: dir.join("history.db"),
        timezone: "UTC".into(),
        report_dir: dir.join("reports"),
        journal_dir: None,
        seed: Some(1),
        inventory: None,
        entries,
    }
}

fn shared_targets(names: &[&str], key: &str) -> HashMap<String, TargetSet> {
    names
        .iter()
        .map(|n| (n.to_string(), TargetSet::from_keys([key.to_string()])))
        .collect()
}

struct Running {
    clock: Arc<ManualClock>,
    stop: Stop,
    shared: Arc<api::Shared>,
    handle: tokio::task::JoinHandle<DaemonSummary>,
    events: Buf,
}

fn start(cfg: DaemonConfig, exec: FakeExecutor) -> Running {
    let clock = Arc::new(ManualClock::new("2026-01-05T09:00:00Z".parse().unwrap()));
    let events = Buf::default();
    let sink: EventSink = Arc::new(Mutex::new(Box::new(events.clone())));
    let d = Daemon::new(cfg, exec, clock.clone(), sink).unwrap();
    let shared = d.shared();
    let stop = Stop::new();
    let handle = tokio::spawn(d.run(stop.clone()));
    Running { clock, stop, shared, handle, events }
}

/// Advances the manual clock in `step`s and lets virtual tokio time pass
/// so scripted runs (which take tokio time) finish between fires.
async fn tick(r: &Running, steps: u32, step: Duration, settle: Duration) {
    for _ in 0..steps {
        tokio::task::yield_now().await;
        r.clock.advance(step);
        tokio::time::sleep(settle).await;
    }
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn runs_due_experiments_skips_overlaps_and_records_history_and_metrics() {
    let dir = tempfile::tempdir().unwrap();
    let exec = FakeExecutor {
        duration: Duration::from_secs(3),
        targets: shared_targets(&["api-latency", "api-kill"], "name:^api$"),
        ..Default::default()
    };
    let cfg = config(
        dir.path(),
        vec![entry("api-latency", "*/5 * * * * *"), entry("api-kill", "*/5 * * * * *")],
    );
    let r = start(cfg, exec);
    tick(&r, 3, Duration::from_secs(5), Duration::from_secs(4)).await;
    let metrics = r.shared.metrics.render();
    r.stop.set();
    let summary =
        tokio::time::timeout(Duration::from_secs(30), r.handle).await.unwrap().unwrap();
    assert_eq!(summary, DaemonSummary { started: 3, skipped: 3 });
    assert!(
        metrics.contains(
            r#"chaos_daemon_runs_total{schedule="api-latency",outcome="accepted"} 3"#
        ),
        "{metrics}"
    );
    assert!(
        metrics.contains(
            r#"chaos_daemon_skips_total{schedule="api-kill",reason="overlap"} 3"#
        ),
        "{metrics}"
    );
    let h = History::open(&dir.path().join("history.db")).unwrap();
    let rows = h.list(10).unwrap();
    assert_eq!(rows.len(), 3);
    assert!(rows.iter().all(|r| r.schedule == "api-latency" && r.outcome == "accepted"));
    assert_eq!(rows[0].verdicts[0]["verdict"], "accepted");
    assert!(rows[0].report_dir.as_deref().unwrap().contains("api-latency-3"));
    let log = r.events.text();
    assert!(
        log.contains(
            "skip api-kill: api-latency is running on the same target name:^api$"
        ),
        "{log}"
    );
    assert!(log.contains("stopped after 3 run(s)"), "{log}");
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_stop_mid_experiment_lets_the_run_finish_interrupted_and_records_it() {
    let dir = tempfile::tempdir().unwrap();
    let exec = FakeExecutor { duration: Duration::from_secs(60), ..Default::default() };
    let r = start(config(dir.path(), vec![entry("long", "*/5 * * * * *")]), exec);
    tick(&r, 1, Duration::from_secs(5), Duration::from_secs(1)).await;
    assert_eq!(r.shared.planner().running(), ["long"]);
    let running = History::open(&dir.path().join("history.db")).unwrap().list(1).unwrap();
    assert_eq!(running[0].outcome, "running", "the start is recorded before the end");
    r.stop.set();
    let summary =
        tokio::time::timeout(Duration::from_secs(30), r.handle).await.unwrap().unwrap();
    assert_eq!(summary.started, 1);
    let rows = History::open(&dir.path().join("history.db")).unwrap().list(10).unwrap();
    assert_eq!(rows[0].outcome, "interrupted");
    assert!(r.events.text().contains("waiting for long to revert"));
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn repeated_rejections_pause_the_schedule_and_the_api_resumes_it_with_the_token() {
    let dir = tempfile::tempdir().unwrap();
    let exec = FakeExecutor {
        duration: Duration::from_secs(1),
        outcomes: Mutex::new(HashMap::from([(
            "flaky".to_string(),
            vec![RunOutcome::Rejected],
        )])),
        ..Default::default()
    };
    let r = start(config(dir.path(), vec![entry("flaky", "*/5 * * * * *")]), exec);
    tick(&r, 4, Duration::from_secs(5), Duration::from_secs(2)).await;
    let status = r.shared.planner().status();
    assert_eq!(status[0].paused, Some(crate::schedule::planner::Paused::Failures));
    assert_eq!(status[0].runs_started, 2, "paused after the second failure");
    assert!(r.shared.metrics.render().contains("chaos_daemon_schedules_paused 1"));

    let req = |auth: Option<&str>| {
        let mut b = http::Request::post("/schedules/flaky/resume");
        if let Some(a) = auth {
            b = b.header("authorization", a);
        }
        b.body(()).unwrap()
    };
    let clock: &dyn Clock = r.clock.as_ref();
    assert_eq!(api::handle(&req(None), &r.shared, clock).status(), 401);
    assert_eq!(
        api::handle(&req(Some("Bearer wrong-token")), &r.shared, clock).status(),
        401
    );
    let ok = api::handle(&req(Some("Bearer sekrit-token")), &r.shared, clock);
    assert_eq!(ok.status(), 200);
    assert_eq!(r.shared.planner().status()[0].paused, None);
    let get = http::Request::get("/status").body(()).unwrap();
    let resp = api::handle(&get, &r.shared, clock);
    assert_eq!(resp.status(), 200);
    let put = http::Request::post("/status").body(()).unwrap();
    assert_eq!(api::handle(&put, &r.shared, clock).status(), 405);
    let unknown = http::Request::post("/schedules/nope/pause")
        .header("authorization", "Bearer sekrit-token")
        .body(())
        .unwrap();
    assert_eq!(api::handle(&unknown, &r.shared, clock).status(), 404);
    // The resumed schedule fires again.
    tick(&r, 1, Duration::from_secs(5), Duration::from_secs(2)).await;
    assert_eq!(r.shared.planner().status()[0].runs_started, 3);
    r.stop.set();
    tokio::time::timeout(Duration::from_secs(30), r.handle).await.unwrap().unwrap();
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_restarted_daemon_keeps_history_and_marks_unfinished_runs_abandoned() {
    let dir = tempfile::tempdir().unwrap();
    {
        let h = History::open(&dir.path().join("history.db")).unwrap();
        h.begin("x", "x.toml", "2026-01-05T08:00:00Z").unwrap();
    }
    let exec = FakeExecutor { duration: Duration::from_secs(1), ..Default::default() };
    let r = start(config(dir.path(), vec![entry("x", "*/5 * * * * *")]), exec);
    tick(&r, 1, Duration::from_secs(5), Duration::from_secs(2)).await;
    assert!(r
        .shared
        .metrics
        .render()
        .contains(r#"chaos_daemon_runs_total{schedule="x",outcome="abandoned"} 1"#));
    r.stop.set();
    tokio::time::timeout(Duration::from_secs(30), r.handle).await.unwrap().unwrap();
    let rows = History::open(&dir.path().join("history.db")).unwrap().list(10).unwrap();
    let outcomes: Vec<&str> = rows.iter().map(|r| r.outcome.as_str()).collect();
    assert_eq!(outcomes, ["accepted", "abandoned"]);
}

#[test]
fn the_api_refuses_changes_when_no_token_is_configured() {
    let clock = ManualClock::new(Timestamp::UNIX_EPOCH);
    let shared = api::Shared {
        planner: Mutex::new(crate::schedule::planner::Planner::new(
            vec![entry("x", "@hourly")],
            clock.now(),
            1,
        )),
        metrics: Default::default(),
        replan: Default::default(),
        token: None,
        started_at: "t".into(),
        state_dir: std::env::temp_dir().join("chaos-no-such-state-dir"),
    };
    let req = http::Request::post("/schedules/x/pause")
        .header("authorization", "Bearer anything")
        .body(())
        .unwrap();
    assert_eq!(api::handle(&req, &shared, &clock).status(), 403);
    assert_eq!(shared.planner().paused_count(), 0);
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_monkey_strikes_one_random_target_and_never_while_an_experiment_holds_it() {
    use crate::schedule::config::MonkeySpec;
    use crate::target::TargetSelector;
    let tag = format!("{}.{}", 400 + std::process::id() % 100, std::process::id());
    let mut kids: Vec<std::process::Child> = (0..2)
        .map(|_| std::process::Command::new("sleep").arg(&tag).spawn().unwrap())
        .collect();
    let selector = format!("name:^sleep {}$", regex::escape(&tag));
    let dir = tempfile::tempdir().unwrap();
    let mut monkey = entry("monkey", "*/5 * * * * *");
    monkey.kind = EntryKind::Monkey(MonkeySpec {
        targets: vec![TargetSelector::parse(&selector).unwrap()],
        max_targets: 1,
        signal: "SIGKILL".into(),
    });
    // An experiment on the same processes runs every 10 s for 7 s.
    let exec = FakeExecutor {
        duration: Duration::from_secs(7),
        targets: shared_targets(&["holder"], &selector),
        ..Default::default()
    };
    let r =
        start(config(dir.path(), vec![entry("holder", "*/10 * * * * *"), monkey]), exec);
    // 09:00:05: the monkey strikes (nothing holds the targets yet).
    tick(&r, 1, Duration::from_secs(5), Duration::from_secs(1)).await;
    // 09:00:10: the experiment starts; 09:00:15: the monkey must skip.
    tick(&r, 2, Duration::from_secs(5), Duration::from_secs(1)).await;
    r.stop.set();
    tokio::time::timeout(Duration::from_secs(30), r.handle).await.unwrap().unwrap();
    let rows = History::open(&dir.path().join("history.db")).unwrap().list(10).unwrap();
    let strikes: Vec<_> = rows.iter().filter(|r| r.schedule == "monkey").collect();
    assert_eq!(strikes.len(), 1, "{rows:#?}");
    assert_eq!(strikes[0].outcome, "struck");
    assert_eq!(strikes[0].verdicts.as_array().unwrap().len(), 1);
    assert!(r
        .events
        .text()
        .contains("skip monkey: holder is running on the same target"));
    // Exactly one of the two processes was killed.
    std::thread::sleep(Duration::from_millis(200));
    let dead = kids
        .iter_mut()
        .map(|k| k.try_wait())
        .filter(|w| matches!(w, Ok(Some(_))))
        .count();
    for k in &mut kids {
        let _ = k.kill();
        let _ = k.wait();
    }
    assert_eq!(dead, 1);
}

#[tokio::test]
async fn the_status_api_answers_over_http_on_loopback() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new("2026-01-05T09:00:00Z".parse().unwrap()));
    let sink: EventSink = Arc::new(Mutex::new(Box::new(Buf::default())));
    let d = Daemon::new(
        config(dir.path(), vec![entry("x", "@hourly")]),
        FakeExecutor::default(),
        clock.clone(),
        sink,
    )
    .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let stop = Stop::new();
    tokio::spawn(api::serve(listener, d.shared(), clock, stop.clone()));
    let ask = |req: &'static str| async move {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(req.as_bytes()).await.unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
        out
    };
    let status = tokio::time::timeout(
        Duration::from_secs(10),
        ask("GET /status HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n"),
    )
    .await
    .unwrap();
    assert!(status.starts_with("HTTP/1.1 200"), "{status}");
    assert!(status.contains("\"next_fire\": \"2026-01-05T10:00:00Z\""), "{status}");
    let pause = ask(
        "POST /schedules/x/pause HTTP/1.1\r\nhost: x\r\nauthorization: Bearer sekrit-token\r\n\
         content-length: 0\r\nconnection: close\r\n\r\n",
    )
    .await;
    assert!(pause.starts_with("HTTP/1.1 200"), "{pause}");
    assert_eq!(d.shared().planner().paused_count(), 1);
    let metrics =
        ask("GET /metrics HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n").await;
    assert!(metrics.contains("chaos_daemon_schedules_paused 1"), "{metrics}");
    stop.set();
}
