//! Worker threads for the proxy: one current-thread tokio runtime per
//! thread. The proxy hands each accepted client connection to one worker
//! (round robin), and everything that connection does afterwards (its
//! requests, its upstream connections, its timers) stays on that thread:
//! no work stealing, no cross-thread wake-ups on the hot path.

use std::thread::JoinHandle;

use tokio::runtime::Handle;
use tokio::sync::oneshot;

use super::idle_poll::{self, IdlePoll};

/// Why the workers could not start.
#[derive(Debug, thiserror::Error)]
pub enum WorkersError {
    #[error("cannot build the runtime of proxy worker {index}: {source}")]
    Runtime { index: usize, source: std::io::Error },
    #[error("cannot start proxy worker thread {index}: {source}")]
    Thread { index: usize, source: std::io::Error },
}

/// Running worker threads; dropping this stops them (their tasks are
/// cancelled) and joins the threads.
pub struct Workers {
    handles: Vec<Handle>,
    threads: Vec<(oneshot::Sender<()>, JoinHandle<()>)>,
}

impl Workers {
    /// Starts `n` worker threads (at least one), idle polling off.
    pub fn start(n: usize) -> Result<Workers, WorkersError> {
        Workers::start_with(n, IdlePoll::default())
    }

    /// Starts `n` worker threads whose idle polling window is `poll`'s
    /// (see [`super::idle_poll`]).
    pub fn start_with(n: usize, poll: IdlePoll) -> Result<Workers, WorkersError> {
        let mut w = Workers { handles: Vec::new(), threads: Vec::new() };
        for index in 0..n.max(1) {
            let switch = poll.clone();
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .on_thread_park(move || idle_poll::before_park(&switch))
                .build()
                .map_err(|source| WorkersError::Runtime { index, source })?;
            w.handles.push(rt.handle().clone());
            let (stop_tx, stop_rx) = oneshot::channel::<()>();
            let thread = std::thread::Builder::new()
                .name(format!("chaos-proxy-{index}"))
                .spawn(move || {
                    rt.spawn(idle_poll::poller());
                    // Either a stop message or the sender being dropped.
                    let _ = rt.block_on(stop_rx);
                })
                .map_err(|source| WorkersError::Thread { index, source })?;
            w.threads.push((stop_tx, thread));
        }
        Ok(w)
    }

    /// One runtime handle per worker, for [`crate::traffic::Proxy::start_on`].
    pub fn handles(&self) -> Vec<Handle> {
        self.handles.clone()
    }

    /// The default worker count: one per available core.
    pub fn default_count() -> usize {
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
    }
}

impl Drop for Workers {
    fn drop(&mut self) {
        for (stop, thread) in self.threads.drain(..) {
            let _ = stop.send(());
            let _ = thread.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_spawned_tasks_on_its_threads_and_stops_when_dropped() {
        let w = Workers::start(2).unwrap();
        let handles = w.handles();
        assert_eq!(handles.len(), 2);
        let (tx, rx) = std::sync::mpsc::channel();
        for h in &handles {
            let tx = tx.clone();
            h.spawn(async move {
                let name = std::thread::current().name().map(str::to_string);
                tx.send(name).unwrap();
            });
        }
        let mut names: Vec<_> = (0..2).map(|_| rx.recv().unwrap().unwrap()).collect();
        names.sort();
        assert_eq!(names, ["chaos-proxy-0", "chaos-proxy-1"]);
        drop(w);
    }
}
