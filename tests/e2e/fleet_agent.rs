//! `chaos agent --stdio` through a local transport (a spawned child):
//! the lease reverts a paused process and an nft table in a test
//! namespace when heartbeats stop; end of input reverts at once.

use std::io::BufReader;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use chaos::agent::client::AgentClient;
use chaos::agent::protocol::{Request, Response};
use chaos::agent::wire::{WireContext, WireFault, WireFilter, WireSelection};

use crate::netns::{self, Lab};
use crate::support::{chaos_bin, eventually, require_capability};

/// A local agent child, killed on drop.
pub struct LocalAgent {
    pub child: Child,
    pub client: Option<AgentClient>,
    pub _journal: tempfile::TempDir,
}

impl LocalAgent {
    pub fn spawn(lease: &str) -> LocalAgent {
        Self::spawn_with_state(lease, None)
    }

    /// With `CHAOS_STATE_DIR` (locks, halt marker) set to `state`.
    pub fn spawn_with_state(lease: &str, state: Option<&std::path::Path>) -> LocalAgent {
        let journal = tempfile::tempdir().unwrap();
        let mut cmd = Command::new(chaos_bin());
        if let Some(state) = state {
            cmd.env("CHAOS_STATE_DIR", state);
        }
        let mut child = cmd
            .args(["agent", "--stdio", "--lease", lease, "--journal-dir"])
            .arg(journal.path())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn chaos agent");
        let stdout = BufReader::new(child.stdout.take().unwrap());
        let client = AgentClient::new(
            stdout,
            child.stdin.take().unwrap(),
            Duration::from_secs(10),
        );
        LocalAgent { child, client: Some(client), _journal: journal }
    }

    pub fn client(&self) -> &AgentClient {
        self.client.as_ref().unwrap()
    }

    /// Exit code once the agent has left (bounded wait).
    pub fn exit_code(&mut self, within: Duration) -> Option<i32> {
        eventually(within, || self.child.try_wait().ok().flatten()).and_then(|s| s.code())
    }
}

impl Drop for LocalAgent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn state(pid: u32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit_once(") ")?.1.chars().next()
}

fn apply(client: &AgentClient, label: &str, fault: WireFault, lease_ms: u64) -> u64 {
    let ctx = WireContext {
        run_id: crate::support::unique_name("ag"),
        seed: 1,
        ..Default::default()
    };
    match client
        .call(|id| Request::Apply {
            id,
            label: label.into(),
            fault,
            context: ctx,
            lease_ms: Some(lease_ms),
        })
        .expect("apply")
    {
        Response::Applied { handle, .. } => handle,
        other => panic!("{other:?}"),
    }
}

struct Victim(Child);
impl Drop for Victim {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn victim() -> Victim {
    Victim(Command::new("sleep").arg("60").spawn().unwrap())
}

/// Pause + blackhole through a fresh agent; returns (agent, victim, lab, before).
fn faults_through_agent(lease: Duration) -> Option<(LocalAgent, Victim, Lab, String)> {
    if !require_capability(netns::can_create_netns(), "network namespaces (root)") {
        return None;
    }
    let lab = Lab::new(1);
    let v = victim();
    let pid = v.0.id();
    let before = lab.snapshot();
    let agent = LocalAgent::spawn("30s");
    let lease_ms = lease.as_millis() as u64;
    agent.client().hello(lease).expect("hello");
    apply(
        agent.client(),
        "pause",
        WireFault::ProcessPause {
            target: format!("pid:{pid}"),
            selection: WireSelection::Count(1),
        },
        lease_ms,
    );
    apply(
        agent.client(),
        "blackhole",
        WireFault::Blackhole {
            target: format!("netns:{}", lab.spokes[0]),
            selection: WireSelection::Count(1),
            filter: WireFilter::default(),
        },
        lease_ms,
    );
    let paused =
        eventually(Duration::from_secs(2), || (state(pid) == Some('T')).then_some(()));
    assert!(paused.is_some(), "paused");
    assert_ne!(lab.snapshot(), before, "nft table in place");
    Some((agent, v, lab, before))
}

fn reverted(pid: u32, lab: &Lab, before: &str) -> bool {
    matches!(state(pid), Some('S')) && lab.snapshot() == before
}

#[test]
fn without_a_heartbeat_the_agent_reverts_everything_within_the_lease_and_exits() {
    let lease = Duration::from_secs(1);
    let Some((mut agent, v, lab, before)) = faults_through_agent(lease) else { return };
    let pid = v.0.id();
    let start = Instant::now();
    // No heartbeat: the connection stays open but silent.
    let done = eventually(lease + Duration::from_secs(2), || {
        reverted(pid, &lab, &before).then_some(())
    });
    let took = start.elapsed();
    eprintln!("lease {lease:?}: reverted after {took:?}");
    assert!(done.is_some(), "reverted within lease + 2 s: {}", lab.snapshot());
    assert!(
        took >= lease - Duration::from_millis(100),
        "not before the lease ran out ({took:?})"
    );
    assert_eq!(agent.exit_code(Duration::from_secs(3)), Some(3), "left with exit 3");
}

#[test]
fn heartbeats_keep_the_lease_and_end_of_input_reverts_at_once() {
    let lease = Duration::from_secs(1);
    let Some((mut agent, v, lab, before)) = faults_through_agent(lease) else { return };
    let pid = v.0.id();
    agent.client().start_heartbeat(Duration::from_millis(250), lease);
    std::thread::sleep(lease * 2 + Duration::from_millis(500));
    assert_eq!(state(pid), Some('T'), "heartbeats held the fault past its lease");
    assert_ne!(lab.snapshot(), before);
    // Closing our end is what a dead controller's ssh does.
    let start = Instant::now();
    drop(agent.client.take());
    let done = eventually(Duration::from_millis(900), || {
        reverted(pid, &lab, &before).then_some(())
    });
    eprintln!("end of input: reverted after {:?}", start.elapsed());
    assert!(done.is_some(), "reverted right after end of input");
    assert_eq!(agent.exit_code(Duration::from_secs(3)), Some(3));
}

#[test]
fn sigterm_makes_the_agent_revert_and_leave() {
    let v = victim();
    let pid = v.0.id();
    let mut agent = LocalAgent::spawn("30s");
    agent.client().hello(Duration::from_secs(30)).expect("hello");
    apply(
        agent.client(),
        "pause",
        WireFault::ProcessPause {
            target: format!("pid:{pid}"),
            selection: WireSelection::Count(1),
        },
        30_000,
    );
    let paused =
        eventually(Duration::from_secs(2), || (state(pid) == Some('T')).then_some(()));
    assert!(paused.is_some(), "paused");
    let agent_pid = nix::unistd::Pid::from_raw(agent.child.id() as i32);
    nix::sys::signal::kill(agent_pid, nix::sys::signal::Signal::SIGTERM).unwrap();
    assert_eq!(agent.exit_code(Duration::from_secs(3)), Some(3));
    let resumed =
        eventually(Duration::from_secs(1), || (state(pid) == Some('S')).then_some(()));
    assert!(resumed.is_some(), "SIGTERM resumed the paused process");
}

#[test]
fn chaos_halt_makes_the_agent_revert_and_leave() {
    let state_dir = tempfile::tempdir().unwrap();
    let v = victim();
    let pid = v.0.id();
    let mut agent = LocalAgent::spawn_with_state("30s", Some(state_dir.path()));
    agent.client().hello(Duration::from_secs(30)).expect("hello");
    apply(
        agent.client(),
        "pause",
        WireFault::ProcessPause {
            target: format!("pid:{pid}"),
            selection: WireSelection::Count(1),
        },
        30_000,
    );
    let paused =
        eventually(Duration::from_secs(2), || (state(pid) == Some('T')).then_some(()));
    assert!(paused.is_some(), "paused");
    let start = Instant::now();
    let halt = Command::new(chaos_bin())
        .args(["halt", "--reason", "e2e"])
        .env("CHAOS_STATE_DIR", state_dir.path())
        .output()
        .unwrap();
    assert!(halt.status.success(), "{}", String::from_utf8_lossy(&halt.stderr));
    assert_eq!(agent.exit_code(Duration::from_secs(3)), Some(3), "the agent left");
    let resumed =
        eventually(Duration::from_secs(1), || (state(pid) == Some('S')).then_some(()));
    eprintln!("halt: agent reverted after {:?}", start.elapsed());
    assert!(resumed.is_some(), "halt resumed the paused process");
}
