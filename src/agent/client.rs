//! The controller's side of the protocol over any byte stream: requests
//! matched to responses by id, a heartbeat thread that keeps the agent's
//! lease alive, and a clear error when the stream ends. Knows nothing of
//! SSH; the transport hands it a reader and a writer.

use std::collections::HashMap;
use std::io::{BufRead, Write};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::protocol::{millis, AgentInfo, ErrorCode, Request, Response, PROTOCOL};

/// Errors talking to an agent.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("connection to the agent lost{}", last_word(.0))]
    Lost(Option<String>),
    #[error("the agent did not answer within {0:?}")]
    Timeout(Duration),
    #[error("agent refused ({code:?}): {message}")]
    Agent { code: ErrorCode, message: String },
    #[error("unexpected answer from the agent: {0}")]
    Unexpected(String),
}

fn last_word(w: &Option<String>) -> String {
    w.as_ref().map(|w| format!(": {w}")).unwrap_or_default()
}

impl ClientError {
    /// The exit code a command should end with for this error.
    pub fn exit_code(&self) -> u8 {
        match self {
            ClientError::Agent { code, .. } => code.exit_code(),
            _ => crate::exit::ENVIRONMENT,
        }
    }
}

type Pending = Arc<Mutex<HashMap<u64, mpsc::Sender<Response>>>>;

/// One connection to one agent.
pub struct AgentClient {
    writer: Arc<Mutex<Box<dyn Write + Send>>>,
    pending: Pending,
    next: Arc<AtomicU64>,
    closed: Arc<Mutex<Option<Option<String>>>>,
    heartbeat_stop: Arc<AtomicBool>,
    timeout: Duration,
}

impl AgentClient {
    /// Wraps a connection; `timeout` bounds every request.
    pub fn new<R, W>(reader: R, writer: W, timeout: Duration) -> AgentClient
    where
        R: BufRead + Send + 'static,
        W: Write + Send + 'static,
    {
        let pending: Pending = Arc::default();
        let closed: Arc<Mutex<Option<Option<String>>>> = Arc::default();
        let (p, c) = (pending.clone(), closed.clone());
        let _ =
            std::thread::Builder::new().name("agent-client".into()).spawn(move || {
                let mut last = None;
                for line in reader.lines() {
                    let Ok(line) = line else { break };
                    let Ok(resp) = serde_json::from_str::<Response>(&line) else {
                        tracing::warn!(%line, "unreadable line from the agent");
                        continue;
                    };
                    match resp.id() {
                        Some(id) => {
                            if let Some(tx) = lock(&p).remove(&id) {
                                let _ = tx.send(resp);
                            }
                        }
                        None => last = Some(describe_last(&resp)),
                    }
                }
                *lock(&c) = Some(last);
                // Dropping the senders wakes every waiter with "lost".
                lock(&p).clear();
            });
        AgentClient {
            writer: Arc::new(Mutex::new(Box::new(writer))),
            pending,
            next: Arc::new(AtomicU64::new(1)),
            closed,
            heartbeat_stop: Arc::new(AtomicBool::new(false)),
            timeout,
        }
    }

    /// Sends one request (built from its id) and waits for its answer;
    /// an `error` answer becomes [`ClientError::Agent`].
    pub fn call(
        &self,
        build: impl FnOnce(u64) -> Request,
    ) -> Result<Response, ClientError> {
        call(&self.writer, &self.pending, &self.next, &self.closed, self.timeout, build)
    }

    /// `hello`: negotiates the protocol and returns what the agent says
    /// about itself.
    pub fn hello(&self, lease: Duration) -> Result<AgentInfo, ClientError> {
        match self.call(|id| Request::Hello {
            id,
            protocols: vec![PROTOCOL],
            version: env!("CARGO_PKG_VERSION").to_string(),
            lease_ms: Some(millis(lease)),
        })? {
            Response::Hello { agent, .. } => Ok(agent),
            other => Err(ClientError::Unexpected(format!("{other:?}"))),
        }
    }

    /// Sends a heartbeat every `every` on a thread of its own until the
    /// client is dropped or the connection ends.
    pub fn start_heartbeat(&self, every: Duration, lease: Duration) {
        let (w, p, n, c, stop) = (
            self.writer.clone(),
            self.pending.clone(),
            self.next.clone(),
            self.closed.clone(),
            self.heartbeat_stop.clone(),
        );
        let timeout = self.timeout;
        let _ =
            std::thread::Builder::new().name("agent-heartbeat".into()).spawn(move || {
                while !stop.load(Ordering::SeqCst) {
                    let beat = call(&w, &p, &n, &c, timeout, |id| Request::Heartbeat {
                        id,
                        lease_ms: Some(millis(lease)),
                    });
                    if let Err(ClientError::Lost(_)) = beat {
                        return;
                    }
                    let mut slept = Duration::ZERO;
                    while slept < every && !stop.load(Ordering::SeqCst) {
                        std::thread::sleep(Duration::from_millis(20));
                        slept += Duration::from_millis(20);
                    }
                }
            });
    }

    /// True once the agent's side of the stream has ended.
    pub fn is_closed(&self) -> bool {
        lock(&self.closed).is_some()
    }
}

impl Drop for AgentClient {
    fn drop(&mut self) {
        self.heartbeat_stop.store(true, Ordering::SeqCst);
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn describe_last(resp: &Response) -> String {
    match resp {
        Response::Bye { reason, reverted, failed, .. } => {
            let mut s = format!("agent left ({reason}), reverted {reverted}");
            if !failed.is_empty() {
                s.push_str(&format!(", failed: {}", failed.join("; ")));
            }
            s
        }
        Response::Error { code, message, .. } => format!("{code:?}: {message}"),
        other => format!("{other:?}"),
    }
}

fn call(
    writer: &Mutex<Box<dyn Write + Send>>,
    pending: &Pending,
    next: &AtomicU64,
    closed: &Mutex<Option<Option<String>>>,
    timeout: Duration,
    build: impl FnOnce(u64) -> Request,
) -> Result<Response, ClientError> {
    let id = next.fetch_add(1, Ordering::SeqCst);
    let request = build(id);
    let (tx, rx) = mpsc::channel();
    lock(pending).insert(id, tx);
    // Checked after registering: the reader clears `pending` when the
    // stream ends, so a request cannot slip in unseen and wait forever.
    if let Some(last) = lock(closed).clone() {
        lock(pending).remove(&id);
        return Err(ClientError::Lost(last));
    }
    let mut line = serde_json::to_string(&request).expect("requests serialise");
    line.push('\n');
    let written = {
        let mut w = lock(writer);
        w.write_all(line.as_bytes()).and_then(|()| w.flush())
    };
    if written.is_err() {
        lock(pending).remove(&id);
        return Err(ClientError::Lost(lock(closed).clone().flatten()));
    }
    match rx.recv_timeout(timeout) {
        Ok(Response::Error { code, message, .. }) => {
            Err(ClientError::Agent { code, message })
        }
        Ok(resp) => Ok(resp),
        Err(mpsc::RecvTimeoutError::Timeout) => {
            lock(pending).remove(&id);
            Err(ClientError::Timeout(timeout))
        }
        Err(mpsc::RecvTimeoutError::Disconnected) => {
            Err(ClientError::Lost(lock(closed).clone().flatten()))
        }
    }
}
