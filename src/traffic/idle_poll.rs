//! Idle polling for the proxy's worker threads: when a worker runs out of
//! work it polls its sockets again for a short window (yielding the CPU to
//! any other runnable thread each time) before it sleeps in `epoll_wait`,
//! as KVM's halt polling does for an idle vCPU.
//!
//! Why: a worker that sleeps must be woken by the peer whose write makes
//! its socket readable, and that wake-up is paid by the peer (in a VM
//! without a cpuidle driver it costs a VM exit). The HTTP/2 relay is busy
//! in bursts a few microseconds apart, so without polling it sleeps
//! between them and nginx pays a wake-up every ~10 requests. Measured
//! (h2load `-c32 -m10` → relay → nginx `http2`, interleaved 4-s rounds):
//! with a 20 µs window the relay's sleeps fell from 0.04–0.19 to 0.00 per
//! request, its CPU per request from 16–30 to 13–18 µs, and it did
//! 1.13–1.48× HAProxy's throughput at 0.50–0.70× its p99. On the HTTP/1.1
//! fast path the same window raised p99 (1.11–1.23× HAProxy's, against
//! 0.95–1.00× without), so there it is off by default (see `chaos proxy
//! --idle-poll-us`).
//!
//! Bounded: the window restarts only when the worker read something from a
//! client or an upstream since its previous attempt to sleep
//! ([`note_work`], called by the relay's and the fast path's reads), so an
//! idle proxy polls for one window after its last read and then sleeps. (A
//! first version judged "did work" by the thread's CPU time, and a debug
//! build's poll alone costs more than any sensible threshold: it polled
//! forever; the unit tests below caught it.)

use std::cell::{Cell, RefCell};
use std::future::poll_fn;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Poll, Waker};
use std::time::{Duration, Instant};

/// The polling window of a set of workers, changeable while they run
/// (the proxy decides once it knows which path it serves); zero is off.
#[derive(Clone, Debug, Default)]
pub struct IdlePoll(Arc<AtomicU64>);

impl IdlePoll {
    pub fn set(&self, window: Duration) {
        let ns = u64::try_from(window.as_nanos()).unwrap_or(u64::MAX);
        self.0.store(ns, Ordering::Relaxed);
    }

    pub fn window(&self) -> Duration {
        Duration::from_nanos(self.0.load(Ordering::Relaxed))
    }
}

thread_local! {
    /// The worker's [`poller`] task, woken to keep the worker from sleeping.
    static POLLER: RefCell<Option<Waker>> = const { RefCell::new(None) };
    /// When the worker first ran out of work after its last read; `None`
    /// after a read ([`note_work`]), so the window starts again.
    static IDLE_SINCE: Cell<Option<Instant>> = const { Cell::new(None) };
    /// Polls granted on this thread.
    #[cfg(test)]
    static POLLS: Cell<u64> = const { Cell::new(0) };
}

/// The runtime's `on_thread_park` hook: called each time the worker is
/// about to sleep. Waking [`poller`] makes the runtime poll the driver
/// without blocking instead.
pub(super) fn before_park(switch: &IdlePoll) {
    let window = switch.window();
    if window.is_zero() {
        return;
    }
    let now = Instant::now();
    let since = IDLE_SINCE.get().unwrap_or_else(|| {
        IDLE_SINCE.set(Some(now));
        now
    });
    if now.duration_since(since) >= window {
        return;
    }
    // Let any other runnable thread on this core go first: polling must
    // not take the CPU from the peer it is waiting for.
    // SAFETY: sched_yield takes no arguments and has no failure that
    // matters here.
    unsafe { libc::sched_yield() };
    if let Some(w) = POLLER.with(|p| p.borrow_mut().take()) {
        #[cfg(test)]
        POLLS.set(POLLS.get() + 1);
        w.wake();
    }
}

/// Counts a read that returned data on this thread: the worker is busy,
/// and the polling window starts again when it next runs out of work.
pub(super) fn note_work() {
    IDLE_SINCE.set(None);
}

/// A task that never finishes: it only stores its waker for
/// [`before_park`]. Spawned once on each worker.
pub(super) async fn poller() {
    poll_fn(|cx| {
        POLLER.with(|p| *p.borrow_mut() = Some(cx.waker().clone()));
        Poll::<()>::Pending
    })
    .await
}

/// CPU time of the calling thread.
#[cfg(test)]
pub(super) fn cpu_time() -> Duration {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `ts` is a valid timespec for the call to write.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    if rc != 0 {
        return Duration::ZERO;
    }
    Duration::new(
        u64::try_from(ts.tv_sec).unwrap_or(0),
        u32::try_from(ts.tv_nsec).unwrap_or(0),
    )
}

/// Polls granted on the calling thread so far.
#[cfg(test)]
pub(super) fn polls() -> u64 {
    POLLS.get()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::traffic::Workers;

    /// Runs `f` on the single worker of `w` and returns its result.
    fn on_worker<T: Send + 'static>(
        w: &Workers,
        f: impl std::future::Future<Output = T> + Send + 'static,
    ) -> T {
        let (tx, rx) = std::sync::mpsc::channel();
        w.handles()[0].spawn(async move {
            let _ = tx.send(f.await);
        });
        rx.recv_timeout(Duration::from_secs(10)).expect("the worker answered")
    }

    /// Polls granted and CPU time used on the worker while it waits 300 ms
    /// for a timer after a little work.
    async fn idle_300ms() -> (u64, Duration) {
        let (p0, t0) = (polls(), cpu_time());
        // A read first, so the worker counts as busy before it idles.
        note_work();
        tokio::time::sleep(Duration::from_millis(300)).await;
        (polls() - p0, cpu_time() - t0)
    }

    #[test]
    fn an_idle_worker_polls_for_one_window_then_sleeps() {
        let poll = IdlePoll::default();
        poll.set(Duration::from_millis(2));
        let w = Workers::start_with(1, poll).unwrap();
        let (polls, cpu) = on_worker(&w, idle_300ms());
        assert!(polls > 0, "the worker never polled before sleeping");
        // Polling for the whole 300 ms would use about that much CPU.
        assert!(cpu < Duration::from_millis(60), "{cpu:?} of CPU in 300 ms idle");
    }

    #[test]
    fn a_zero_window_never_polls_and_it_can_be_set_while_workers_run() {
        let poll = IdlePoll::default();
        let w = Workers::start_with(1, poll.clone()).unwrap();
        let (polls, _) = on_worker(&w, idle_300ms());
        assert_eq!(polls, 0);
        poll.set(Duration::from_millis(2));
        let (polls, cpu) = on_worker(&w, idle_300ms());
        assert!(polls > 0);
        assert!(cpu < Duration::from_millis(60), "{cpu:?}");
    }
}
