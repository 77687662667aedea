//! The agent's loop: read requests, drive the local fault engine, answer,
//! and keep the lease. Independent of the transport: any line reader and
//! writer will do (stdio under SSH today).
//!
//! The lease is the agent's own safety: every request renews it (for the
//! duration the latest `hello` / `apply` / `heartbeat` named, else the
//! default). When it runs out, or the input ends, or writing fails, or
//! the caller's `stop` check fires (signals, a halt marker), the agent
//! reverts everything it applied and returns. Nothing here waits on the
//! controller, so a controller that is gone cannot hold a fault in place.

use std::io::{BufRead, Write};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::time::{Duration, Instant};

use super::held::Held;
use super::protocol::{
    lease_of, millis, AgentInfo, ErrorCode, Request, Response, PROTOCOL,
};
use crate::fault::{self, FaultContext, InfraFault};
use crate::journal::Journal;

/// How the agent is set up.
#[derive(Debug, Clone)]
pub struct AgentOptions {
    /// The lease until the controller names one.
    pub lease: Duration,
    /// The host name `hello` reports.
    pub host: String,
    /// The session the controller reaches this agent through, spared
    /// by every nftables fault the agent applies (see
    /// [`crate::fault::management`]); `None` outside SSH.
    pub management: Option<fault::ManagementPath>,
}

/// Why the agent stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExitReason {
    Shutdown,
    /// The input ended (controller closed the connection or died).
    Eof,
    LeaseExpired,
    /// Writing a response failed (the controller is gone: EPIPE).
    WriteFailed,
    /// The embedding process asked to stop (a signal, a halt marker).
    Stopped(String),
}

impl std::fmt::Display for ExitReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ExitReason::Shutdown => write!(f, "shutdown requested"),
            ExitReason::Eof => write!(f, "controller closed the connection"),
            ExitReason::LeaseExpired => write!(f, "lease expired without a heartbeat"),
            ExitReason::WriteFailed => write!(f, "controller stopped reading"),
            ExitReason::Stopped(why) => write!(f, "{why}"),
        }
    }
}

/// What [`serve`] did on its way out.
#[derive(Debug)]
pub struct Outcome {
    pub reason: ExitReason,
    pub reverted: usize,
    /// Faults whose revert failed (pending in the journal for `recover`).
    pub failed: Vec<String>,
}

/// How often the loop looks at `stop` and the lease while idle.
const TICK: Duration = Duration::from_millis(50);

/// Serves one controller until it leaves; see the module comment.
pub fn serve<R, W>(
    reader: R,
    mut writer: W,
    journal: Journal,
    opts: &AgentOptions,
    stop: &dyn Fn() -> Option<String>,
) -> Outcome
where
    R: BufRead + Send + 'static,
    W: Write,
{
    let (tx, rx) = mpsc::channel::<Option<String>>();
    // A blocking read cannot be interrupted, so it gets its own thread;
    // the loop below only waits on the channel, with a deadline.
    std::thread::Builder::new()
        .name("agent-reader".into())
        .spawn(move || {
            for line in reader.lines() {
                match line {
                    Ok(l) => {
                        if tx.send(Some(l)).is_err() {
                            return;
                        }
                    }
                    Err(_) => break,
                }
            }
            let _ = tx.send(None);
        })
        .map_err(|e| tracing::error!(error = %e, "cannot start the agent reader"))
        .ok();
    let mut state = State { held: Held::new(journal), lease: opts.lease, opts };
    let mut deadline = Instant::now() + state.lease;
    let mut bye_id = None;
    let reason = loop {
        if let Some(why) = stop() {
            break ExitReason::Stopped(why);
        }
        let now = Instant::now();
        if now >= deadline {
            break ExitReason::LeaseExpired;
        }
        match rx.recv_timeout((deadline - now).min(TICK)) {
            Ok(Some(line)) if line.trim().is_empty() => {}
            Ok(Some(line)) => {
                let (response, shutdown) = state.handle(&line);
                deadline = Instant::now() + state.lease;
                if shutdown {
                    bye_id = response.id();
                    break ExitReason::Shutdown;
                }
                if send(&mut writer, &response).is_err() {
                    break ExitReason::WriteFailed;
                }
            }
            Ok(None) | Err(RecvTimeoutError::Disconnected) => break ExitReason::Eof,
            Err(RecvTimeoutError::Timeout) => {}
        }
    };
    let (done, failed) = state.held.revert_all();
    let failed: Vec<String> =
        failed.into_iter().map(|(label, e)| format!("{label}: {e}")).collect();
    tracing::warn!(%reason, reverted = done.len(), failed = failed.len(), "agent leaving");
    // The last word is best effort: the controller may be gone.
    let bye = Response::Bye {
        id: bye_id,
        reason: reason.to_string(),
        reverted: done.len(),
        failed: failed.clone(),
    };
    let _ = send(&mut writer, &bye);
    Outcome { reason, reverted: done.len(), failed }
}

fn send<W: Write>(writer: &mut W, response: &Response) -> std::io::Result<()> {
    let mut line = serde_json::to_string(response).expect("responses serialise");
    line.push('\n');
    writer.write_all(line.as_bytes())?;
    writer.flush()
}

struct State<'a> {
    held: Held,
    lease: Duration,
    opts: &'a AgentOptions,
}

fn error(id: u64, code: ErrorCode, message: impl Into<String>) -> Response {
    Response::Error { id: Some(id), code, message: message.into() }
}

impl State<'_> {
    /// Answers one line; the flag says "shut down after this".
    fn handle(&mut self, line: &str) -> (Response, bool) {
        let request: Request = match serde_json::from_str(line) {
            Ok(r) => r,
            Err(e) => {
                return (
                    Response::Error {
                        id: None,
                        code: ErrorCode::BadRequest,
                        message: format!("not a request of protocol {PROTOCOL}: {e}"),
                    },
                    false,
                )
            }
        };
        let id = request.id();
        let response = match request {
            Request::Hello { protocols, lease_ms, .. } => {
                if !protocols.contains(&PROTOCOL) {
                    error(
                        id,
                        ErrorCode::Protocol,
                        format!(
                            "this agent speaks protocol {PROTOCOL}, the controller {protocols:?}; \
                             install the same chaos version on both ends (--install)"
                        ),
                    )
                } else {
                    self.renew(lease_ms);
                    Response::Hello { id, agent: self.info() }
                }
            }
            Request::Preflight { faults, context, .. } => {
                let parsed = faults
                    .into_iter()
                    .map(InfraFault::try_from)
                    .collect::<Result<Vec<_>, _>>();
                match (parsed, FaultContext::try_from(context)) {
                    (Ok(faults), Ok(ctx)) => match fault::preflight(&faults, &ctx) {
                        Ok(pre) => Response::Ready { id, warnings: pre.warnings },
                        Err(e) => error(id, ErrorCode::for_fault(&e), e.to_string()),
                    },
                    (Err(e), _) | (_, Err(e)) => {
                        error(id, ErrorCode::Invalid, e.to_string())
                    }
                }
            }
            Request::Describe { fault, context, .. } => {
                match self.prepare(fault, context) {
                    Ok((_, injector)) => {
                        Response::Described { id, lines: injector.describe() }
                    }
                    Err((code, message)) => error(id, code, message),
                }
            }
            Request::Apply { label, fault, context, lease_ms, .. } => {
                self.renew(lease_ms);
                match self.prepare(fault, context) {
                    Ok((_, injector)) => {
                        let lines = injector.describe();
                        match self.held.apply(&label, injector) {
                            Ok(handle) => Response::Applied { id, handle, lines },
                            Err(e) => error(id, ErrorCode::for_fault(&e), e.to_string()),
                        }
                    }
                    Err((code, message)) => error(id, code, message),
                }
            }
            Request::Revert { handle: Some(handle), .. } => {
                match self.held.revert(handle) {
                    Ok(true) => Response::Reverted { id, handles: vec![handle] },
                    Ok(false) => error(
                        id,
                        ErrorCode::UnknownHandle,
                        format!("no applied fault has handle {handle}"),
                    ),
                    Err(e) => error(
                        id,
                        ErrorCode::RevertFailed,
                        format!(
                            "{e}; it stays in {}",
                            self.held.journal().path().display()
                        ),
                    ),
                }
            }
            Request::Revert { handle: None, .. } => {
                let (handles, failed) = self.held.revert_all();
                if failed.is_empty() {
                    Response::Reverted { id, handles }
                } else {
                    let list: Vec<String> =
                        failed.iter().map(|(l, e)| format!("{l}: {e}")).collect();
                    error(id, ErrorCode::RevertFailed, list.join("; "))
                }
            }
            Request::Heartbeat { lease_ms, .. } => {
                self.renew(lease_ms);
                Response::Alive { id, lease_ms: millis(self.lease) }
            }
            Request::Status { .. } => Response::Status {
                id,
                active: self.held.active(),
                lease_ms: millis(self.lease),
                journal: self.held.journal().path().display().to_string(),
            },
            Request::Shutdown { .. } => {
                return (
                    Response::Bye {
                        id: Some(id),
                        reason: "shutdown".into(),
                        reverted: 0,
                        failed: vec![],
                    },
                    true,
                )
            }
        };
        (response, false)
    }

    fn renew(&mut self, lease_ms: Option<u64>) {
        if let Some(lease) = lease_of(lease_ms) {
            self.lease = lease;
        }
    }

    fn info(&self) -> AgentInfo {
        let tools = ["ip", "nft", "tc"]
            .into_iter()
            .map(|t| (t.to_string(), fault::cmd::on_path(t)))
            .collect();
        AgentInfo {
            protocol: PROTOCOL,
            version: env!("CARGO_PKG_VERSION").to_string(),
            host: self.opts.host.clone(),
            pid: std::process::id(),
            journal: self.held.journal().path().display().to_string(),
            euid: nix::unistd::geteuid().as_raw(),
            net_admin: fault::has_net_admin(),
            tools,
            management: self.opts.management.map(|m| m.to_string()),
        }
    }

    fn prepare(
        &self,
        fault: super::wire::WireFault,
        context: super::wire::WireContext,
    ) -> Result<(InfraFault, Box<dyn fault::Injector>), Refusal> {
        prepare(fault, context, self.opts.management.as_ref())
    }
}

/// Why a fault could not be prepared: the error code and message of
/// the `error` answer (the caller adds the request id).
type Refusal = (ErrorCode, String);

/// Parses, preflights and prepares one wire fault (its nftables tables
/// sparing `management`).
fn prepare(
    fault: super::wire::WireFault,
    context: super::wire::WireContext,
    management: Option<&fault::ManagementPath>,
) -> Result<(InfraFault, Box<dyn fault::Injector>), Refusal> {
    let invalid = |m: String| (ErrorCode::Invalid, m);
    let fault = InfraFault::try_from(fault).map_err(|e| invalid(e.to_string()))?;
    let ctx = FaultContext::try_from(context).map_err(|e| invalid(e.to_string()))?;
    let engine = |e: fault::FaultError| (ErrorCode::for_fault(&e), e.to_string());
    let pre = fault::preflight(std::slice::from_ref(&fault), &ctx).map_err(engine)?;
    let injector =
        fault::prepare_sparing(&fault, &ctx, &pre, management).map_err(engine)?;
    Ok((fault, injector))
}

/// The host name for `hello`: the kernel's nodename.
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "unknown".into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent::wire::{WireContext, WireFault, WireSelection};
    use crate::target::process;

    fn run_lines(lines: &[String], dir: &std::path::Path) -> (Vec<Response>, Outcome) {
        let input = std::io::Cursor::new(lines.join("\n") + "\n");
        let mut out = Vec::new();
        let journal = Journal::open(dir, "agent-test").unwrap();
        let opts = AgentOptions {
            lease: Duration::from_secs(30),
            host: "h".into(),
            management: None,
        };
        let outcome = serve(input, &mut out, journal, &opts, &|| None);
        let responses = String::from_utf8(out)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        (responses, outcome)
    }

    #[test]
    fn answers_each_request_by_id_and_reverts_everything_at_end_of_input() {
        let mut child = std::process::Command::new("sleep").arg("30").spawn().unwrap();
        let pid = child.id();
        let dir = tempfile::tempdir().unwrap();
        let pause = WireFault::ProcessPause {
            target: format!("pid:{pid}"),
            selection: WireSelection::Count(1),
        };
        let ctx = WireContext { run_id: "t1".into(), ..Default::default() };
        let lines: Vec<String> = [
            Request::Hello {
                id: 1,
                protocols: vec![99],
                version: "x".into(),
                lease_ms: None,
            },
            Request::Hello {
                id: 2,
                protocols: vec![PROTOCOL],
                version: "x".into(),
                lease_ms: None,
            },
            Request::Apply {
                id: 3,
                label: "p".into(),
                fault: pause,
                context: ctx,
                lease_ms: None,
            },
            Request::Status { id: 4 },
        ]
        .iter()
        .map(|r| serde_json::to_string(r).unwrap())
        .chain(["{not json".to_string()])
        .collect();
        let (responses, outcome) = run_lines(&lines, dir.path());
        let resumed = (0..100).any(|_| {
            std::thread::sleep(Duration::from_millis(10));
            process::read(pid).is_some_and(|p| p.state == 'S')
        });
        let _ = child.kill();
        let _ = child.wait();
        assert!(
            matches!(
                &responses[0],
                Response::Error { id: Some(1), code: ErrorCode::Protocol, .. }
            ),
            "{responses:?}"
        );
        assert!(matches!(&responses[1], Response::Hello { id: 2, .. }), "{responses:?}");
        assert!(
            matches!(&responses[2], Response::Applied { id: 3, handle: 1, .. }),
            "{responses:?}"
        );
        match &responses[3] {
            Response::Status { active, .. } => assert_eq!(active.len(), 1),
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            &responses[4],
            Response::Error { id: None, code: ErrorCode::BadRequest, .. }
        ));
        assert!(
            matches!(&responses[5], Response::Bye { reverted: 1, .. }),
            "{responses:?}"
        );
        assert_eq!(outcome.reason, ExitReason::Eof);
        assert!(resumed, "end of input resumed the paused process");
    }

    #[test]
    fn a_fault_on_the_wrong_kind_of_target_is_refused_as_invalid() {
        let dir = tempfile::tempdir().unwrap();
        // A process fault on a network target: the engine says no.
        let wrong = WireFault::ProcessPause {
            target: "iface:lo".into(),
            selection: WireSelection::Count(1),
        };
        let ctx = WireContext { run_id: "t2".into(), ..Default::default() };
        let req = Request::Describe { id: 1, fault: wrong, context: ctx };
        let (responses, _) =
            run_lines(&[serde_json::to_string(&req).unwrap()], dir.path());
        assert!(
            matches!(
                &responses[0],
                Response::Error { id: Some(1), code: ErrorCode::Invalid, .. }
            ),
            "{responses:?}"
        );
    }

    #[test]
    fn the_stop_check_ends_the_loop_with_its_reason() {
        let dir = tempfile::tempdir().unwrap();
        let (_r, w) = std::os::unix::net::UnixStream::pair().unwrap();
        let reader = std::io::BufReader::new(w.try_clone().unwrap());
        let journal = Journal::open(dir.path(), "agent-stop").unwrap();
        let opts = AgentOptions {
            lease: Duration::from_secs(30),
            host: "h".into(),
            management: None,
        };
        let mut out = Vec::new();
        let outcome = serve(reader, &mut out, journal, &opts, &|| Some("halted".into()));
        assert_eq!(outcome.reason, ExitReason::Stopped("halted".into()));
    }
}
