//! Agents on many hosts at once. Connecting spawns one `ssh HOST chaos
//! agent --stdio` per host from a spawner thread the fleet keeps alive
//! (see [`super::ssh`] on why the thread matters), then talks to all of them in parallel:
//! `hello` (protocol and version), preflight, describe, apply, revert.
//! Heartbeats, started right after each `hello`, keep every agent's
//! lease alive while this process lives;
//! dropping a [`Fleet`] reverts and closes every connection.

use std::process::Child;
use std::time::{Duration, Instant};

use super::inventory::{Host, SshSettings};
use super::ssh::{self, StderrTail};
use super::FleetError;
use crate::agent::client::{AgentClient, ClientError};
use crate::agent::protocol::{millis, AgentInfo, Request, Response};
use crate::agent::wire::{WireContext, WireFault};

/// How to connect.
#[derive(Debug, Clone)]
pub struct ConnectOptions {
    /// The agents' lease; heartbeats go out every third of it.
    pub lease: Duration,
    /// Copy this binary to hosts without it (or with another version).
    pub install: bool,
    /// Echo the agents' stderr (their logs), prefixed with the host.
    pub echo_stderr: bool,
}

/// One connected agent.
pub struct Remote {
    pub host: Host,
    pub info: AgentInfo,
    client: Option<AgentClient>,
    child: Child,
    tail: StderrTail,
}

/// Connected agents, in inventory order.
pub struct Fleet {
    pub remotes: Vec<Remote>,
    lease: Duration,
    /// Dropping it lets the ssh spawner thread end (after the children).
    _keeper: std::sync::mpsc::Sender<()>,
}

fn request_timeout(lease: Duration) -> Duration {
    // Applying a fault can take a while (a netem probe, a kill's grace),
    // but never longer than this.
    Duration::from_secs(30).max(lease * 2)
}

/// What went wrong with a connection, preferring ssh's own words.
fn cause(
    host: &Host,
    child: &mut Child,
    tail: &StderrTail,
    err: ClientError,
) -> FleetError {
    if let ClientError::Lost(_) = err {
        // ssh has exited or is about to; its stderr says why.
        let code = crate::fleet::remote::wait_exit(child, Duration::from_secs(2));
        std::thread::sleep(Duration::from_millis(30));
        return FleetError::Host {
            host: host.name.clone(),
            cause: ssh::diagnose(&tail.text(), code),
        };
    }
    FleetError::Agent { host: host.name.clone(), source: err }
}

/// Waits up to `within` for a child to exit; its exit code if it did.
pub fn wait_exit(child: &mut Child, within: Duration) -> Option<i32> {
    let deadline = Instant::now() + within;
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return status.code(),
            Ok(None) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(20))
            }
            _ => return None,
        }
    }
}

/// Connects to every host; on any failure closes the others and returns
/// every failure (each names its host and cause). Nothing is applied.
pub fn connect(
    hosts: &[&Host],
    ssh_settings: &SshSettings,
    opts: &ConnectOptions,
) -> Result<Fleet, Vec<FleetError>> {
    // Installing runs commands to completion, so it may use threads.
    let commands: Vec<Result<String, FleetError>> = if opts.install {
        std::thread::scope(|s| {
            let jobs: Vec<_> = hosts
                .iter()
                .map(|h| s.spawn(move || ssh::ensure_installed(h, ssh_settings)))
                .collect();
            jobs.into_iter()
                .zip(hosts)
                .map(|(j, h)| {
                    j.join().unwrap_or_else(|_| {
                        Err(FleetError::Host {
                            host: h.name.clone(),
                            cause: "install panicked".into(),
                        })
                    })
                })
                .collect()
        })
    } else {
        hosts.iter().map(|h| Ok(h.chaos.clone())).collect()
    };
    let mut errors = Vec::new();
    let mut jobs = Vec::new();
    for (host, command) in hosts.iter().zip(commands) {
        match command {
            Ok(c) => jobs.push(((*host).clone(), c)),
            Err(e) => errors.push(e),
        }
    }
    // The ssh children are spawned on a thread of their own that lives
    // as long as the Fleet: PR_SET_PDEATHSIG fires when the spawning
    // *thread* exits, and a caller's thread (a tokio worker given to
    // block_in_place, a scoped worker) may go away before the fleet does.
    let (keeper, keep_rx) = std::sync::mpsc::channel::<()>();
    let (kids_tx, kids_rx) = std::sync::mpsc::channel();
    let settings = ssh_settings.clone();
    let echo = opts.echo_stderr;
    let lease_arg = format!("{}ms", millis(opts.lease));
    let spawner =
        std::thread::Builder::new().name("ssh-spawner".into()).spawn(move || {
            let kids: Vec<_> = jobs
                .into_iter()
                .map(|(host, command)| {
                    let remote = [
                        command,
                        "agent".into(),
                        "--stdio".into(),
                        "--lease".into(),
                        lease_arg.clone(),
                    ];
                    let r = ssh::spawn(&host, &settings, &remote, echo);
                    (host, r)
                })
                .collect();
            let _ = kids_tx.send(kids);
            // Hold the thread (and with it the children) until the Fleet goes.
            let _ = keep_rx.recv();
        });
    let kids = match spawner.ok().and_then(|_| kids_rx.recv().ok()) {
        Some(k) => k,
        None => {
            errors.push(FleetError::Host {
                host: "*".into(),
                cause: "cannot start the ssh spawner thread".into(),
            });
            Vec::new()
        }
    };
    let mut spawned = Vec::new();
    for (host, result) in kids {
        match result {
            Ok((mut child, tail)) => {
                let (Some(out), Some(inp)) = (child.stdout.take(), child.stdin.take())
                else {
                    errors.push(FleetError::Host {
                        host: host.name.clone(),
                        cause: "ssh without pipes".into(),
                    });
                    continue;
                };
                let client = AgentClient::new(
                    std::io::BufReader::new(out),
                    inp,
                    request_timeout(opts.lease),
                );
                spawned.push((host, child, tail, client));
            }
            Err(e) => errors.push(e),
        }
    }
    let lease = opts.lease;
    let results: Vec<Result<Remote, FleetError>> = std::thread::scope(|s| {
        let jobs: Vec<_> = spawned
            .into_iter()
            .map(|(host, mut child, tail, client)| {
                s.spawn(move || match client.hello(lease) {
                    Ok(info) if info.version != env!("CARGO_PKG_VERSION") => {
                        Err(FleetError::Host {
                            host: host.name.clone(),
                            cause: format!(
                                "agent version {} differs from this controller's {} \
                                 (rerun with --install)",
                                info.version,
                                env!("CARGO_PKG_VERSION")
                            ),
                        })
                    }
                    Ok(info) => {
                        // At once: connecting many hosts (and preflight)
                        // can take longer than one lease.
                        client.start_heartbeat(lease / 3, lease);
                        Ok(Remote { host, info, client: Some(client), child, tail })
                    }
                    Err(e) => {
                        drop(client);
                        Err(cause(&host, &mut child, &tail, e))
                    }
                })
            })
            .collect();
        jobs.into_iter()
            .map(|j| {
                j.join().unwrap_or_else(|_| {
                    Err(FleetError::Host {
                        host: "?".into(),
                        cause: "hello panicked".into(),
                    })
                })
            })
            .collect()
    });
    let mut remotes = Vec::new();
    for r in results {
        match r {
            Ok(remote) => remotes.push(remote),
            Err(e) => errors.push(e),
        }
    }
    let fleet = Fleet { remotes, lease, _keeper: keeper };
    if errors.is_empty() {
        Ok(fleet)
    } else {
        drop(fleet);
        Err(errors)
    }
}

impl Remote {
    fn client(&self) -> Result<&AgentClient, FleetError> {
        self.client.as_ref().ok_or_else(|| FleetError::Host {
            host: self.host.name.clone(),
            cause: "connection closed".into(),
        })
    }

    fn call(&self, build: impl FnOnce(u64) -> Request) -> Result<Response, FleetError> {
        self.client()?
            .call(build)
            .map_err(|source| FleetError::Agent { host: self.host.name.clone(), source })
    }

    /// True once the agent's side of the connection has ended (it left:
    /// lease expired, killed, network gone).
    pub fn is_lost(&self) -> bool {
        self.client.as_ref().is_none_or(AgentClient::is_closed)
    }

    /// ssh's (and the agent's) last stderr lines.
    pub fn stderr_tail(&self) -> String {
        self.tail.text()
    }
}

/// One unit of work for one host: (index into `remotes`, fault).
pub type Assignment = (usize, WireFault);

impl Fleet {
    /// Runs `job` on every remote named in `work` in parallel; results in
    /// the order of `work`.
    fn each<T: Send>(
        &self,
        work: &[Assignment],
        job: impl Fn(&Remote, &WireFault) -> Result<T, FleetError> + Sync,
    ) -> Vec<Result<T, FleetError>> {
        std::thread::scope(|s| {
            let jobs: Vec<_> = work
                .iter()
                .map(|(i, f)| {
                    let remote = &self.remotes[*i];
                    let job = &job;
                    s.spawn(move || job(remote, f))
                })
                .collect();
            jobs.into_iter()
                .map(|j| {
                    j.join().unwrap_or_else(|_| {
                        Err(FleetError::Host {
                            host: "?".into(),
                            cause: "worker panicked".into(),
                        })
                    })
                })
                .collect()
        })
    }

    /// Preflight of every host for its faults, in parallel.
    pub fn preflight(
        &self,
        work: &[Assignment],
        ctx: &WireContext,
    ) -> Vec<Result<Vec<String>, FleetError>> {
        // One request per host with all of its faults.
        let mut per_host: Vec<(usize, Vec<WireFault>)> = Vec::new();
        for (i, f) in work {
            match per_host.iter_mut().find(|(j, _)| j == i) {
                Some((_, v)) => v.push(f.clone()),
                None => per_host.push((*i, vec![f.clone()])),
            }
        }
        std::thread::scope(|s| {
            let jobs: Vec<_> = per_host
                .into_iter()
                .map(|(i, faults)| {
                    let remote = &self.remotes[i];
                    let ctx = ctx.for_host(&remote.host.name);
                    s.spawn(move || {
                        match remote.call(|id| Request::Preflight {
                            id,
                            faults,
                            context: ctx,
                        })? {
                            Response::Ready { warnings, .. } => Ok(warnings),
                            other => Err(unexpected(remote, other)),
                        }
                    })
                })
                .collect();
            jobs.into_iter()
                .map(|j| {
                    j.join().unwrap_or_else(|_| {
                        Err(FleetError::Host {
                            host: "?".into(),
                            cause: "preflight panicked".into(),
                        })
                    })
                })
                .collect()
        })
    }

    /// The exact commands each host would run (the agents' describe).
    pub fn describe(
        &self,
        work: &[Assignment],
        ctx: &WireContext,
    ) -> Vec<Result<Vec<String>, FleetError>> {
        self.each(work, |remote, fault| {
            let fault = fault.clone();
            let context = ctx.for_host(&remote.host.name);
            match remote.call(|id| Request::Describe { id, fault, context })? {
                Response::Described { lines, .. } => Ok(lines),
                other => Err(unexpected(remote, other)),
            }
        })
    }

    /// Applies each fault on its host, in parallel: (handle, lines).
    pub fn apply(
        &self,
        label: &str,
        work: &[Assignment],
        ctx: &WireContext,
    ) -> Vec<Result<(u64, Vec<String>), FleetError>> {
        let lease_ms = Some(millis(self.lease));
        self.each(work, |remote, fault| {
            let fault = fault.clone();
            let context = ctx.for_host(&remote.host.name);
            let label = label.to_string();
            match remote.call(|id| Request::Apply {
                id,
                label,
                fault,
                context,
                lease_ms,
            })? {
                Response::Applied { handle, lines, .. } => Ok((handle, lines)),
                other => Err(unexpected(remote, other)),
            }
        })
    }

    /// Reverts one applied fault on one host.
    pub fn revert(&self, index: usize, handle: u64) -> Result<(), FleetError> {
        let remote = &self.remotes[index];
        match remote.call(|id| Request::Revert { id, handle: Some(handle) })? {
            Response::Reverted { .. } => Ok(()),
            other => Err(unexpected(remote, other)),
        }
    }

    /// Hosts whose agent has left on its own.
    pub fn lost(&self) -> Vec<&Remote> {
        self.remotes.iter().filter(|r| r.is_lost()).collect()
    }

    /// Reverts everything on every host (in parallel) and closes the
    /// connections; returns the failures (host named in each).
    pub fn close(mut self) -> Vec<FleetError> {
        self.shutdown_all()
    }

    fn shutdown_all(&mut self) -> Vec<FleetError> {
        let failures: Vec<FleetError> = std::thread::scope(|s| {
            let jobs: Vec<_> = self
                .remotes
                .iter()
                .map(|remote| {
                    s.spawn(move || {
                        if remote.is_lost() {
                            // It reverted by itself; a dead agent's journal
                            // is for `chaos recover --inventory`.
                            return None;
                        }
                        match remote.call(|id| Request::Revert { id, handle: None }) {
                            Ok(_) => {
                                let _ = remote.call(|id| Request::Shutdown { id });
                                None
                            }
                            Err(e) => Some(e),
                        }
                    })
                })
                .collect();
            jobs.into_iter().filter_map(|j| j.join().ok().flatten()).collect()
        });
        for r in &mut self.remotes {
            // Closing stdin is the agent's end of input: it reverts
            // whatever is left and exits.
            drop(r.client.take());
            if wait_exit(&mut r.child, Duration::from_secs(3)).is_none() {
                let _ = r.child.kill();
            }
            let _ = r.child.wait();
        }
        failures
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        if self.remotes.iter().any(|r| r.client.is_some()) {
            for e in self.shutdown_all() {
                tracing::error!(error = %e, "remote revert on drop failed; run `chaos recover --inventory`");
            }
        }
    }
}

fn unexpected(remote: &Remote, resp: Response) -> FleetError {
    FleetError::Host {
        host: remote.host.name.clone(),
        cause: format!("unexpected answer {resp:?}"),
    }
}

/// The fault with its target swapped for `selector` (via the wire form;
/// the agent re-parses everything).
pub fn retarget(
    fault: &crate::fault::InfraFault,
    selector: &crate::target::TargetSelector,
) -> WireFault {
    let mut wire = WireFault::from(fault);
    let text = selector.to_string();
    match &mut wire {
        WireFault::ProcessKill { target, .. }
        | WireFault::ProcessPause { target, .. }
        | WireFault::Netem { target, .. }
        | WireFault::PacketLoss { target, .. }
        | WireFault::Blackhole { target, .. }
        | WireFault::TcpReset { target, .. }
        | WireFault::Bandwidth { target, .. } => *target = text,
        WireFault::RegionOutage { .. } => {}
    }
    wire
}
