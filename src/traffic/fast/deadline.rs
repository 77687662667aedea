//! A deadline that is re-armed lazily, for the fast path's waits.
//!
//! Every request of a keep-alive connection waits twice (for the upstream's
//! response head, then for the client's next request), each under a
//! timeout. A fresh `tokio::time::timeout` registers a timer in the wheel
//! and removes it again, and a timer earlier than the runtime's planned
//! wake-up makes tokio write its eventfd to re-plan: measured at 0.21
//! extra system calls per request under load, plus the wheel's lock each
//! time. Here each connection keeps one timer per kind of wait; moving the
//! deadline later (what every request does) only stores the new instant,
//! and when the armed timer fires early it is re-armed to the latest one.
//! So a timer is touched about once per timeout period, not per request.

use std::future::{poll_fn, Future};
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use tokio::time::{Instant, Sleep};

/// Far enough that an unarmed timer never fires.
const UNARMED: Duration = Duration::from_secs(365 * 24 * 3600);

/// The wait ran past its deadline.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct Elapsed;

/// One lazily re-armed timer; see the module docs.
pub(super) struct Deadline {
    timer: Pin<Box<Sleep>>,
    /// When the current wait must end; never earlier than what the timer
    /// is armed for, except between [`Deadline::set`] and the next poll.
    due: Instant,
}

impl Deadline {
    pub(super) fn new() -> Self {
        let far = Instant::now() + UNARMED;
        Deadline { timer: Box::pin(tokio::time::sleep_until(far)), due: far }
    }

    /// Sets when the next wait ends. A later instant than the armed one
    /// touches no timer; an earlier one re-arms it now.
    fn set(&mut self, due: Instant) {
        self.due = due;
        if due < self.timer.deadline() {
            self.timer.as_mut().reset(due);
        }
    }

    /// Ready once `due` has passed.
    fn poll_elapsed(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        loop {
            ready!(self.timer.as_mut().poll(cx));
            if self.timer.deadline() >= self.due {
                return Poll::Ready(());
            }
            // Fired for an older, earlier deadline: wait for the current.
            self.timer.as_mut().reset(self.due);
        }
    }

    /// Runs `work` until it completes or `due` passes, whichever is first
    /// (`work` is polled first, like `tokio::time::timeout_at`).
    pub(super) async fn run<F: Future>(
        &mut self,
        due: Instant,
        work: F,
    ) -> Result<F::Output, Elapsed> {
        self.set(due);
        let mut work = std::pin::pin!(work);
        poll_fn(|cx| {
            if let Poll::Ready(out) = work.as_mut().poll(cx) {
                return Poll::Ready(Ok(out));
            }
            self.poll_elapsed(cx).map(|()| Err(Elapsed))
        })
        .await
    }

    /// [`Deadline::run`] with a deadline `within` from now.
    pub(super) async fn within<F: Future>(
        &mut self,
        within: Duration,
        work: F,
    ) -> Result<F::Output, Elapsed> {
        self.run(Instant::now() + within, work).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    #[tokio::test(start_paused = true)]
    async fn work_that_finishes_in_time_returns_its_output() {
        let mut d = Deadline::new();
        let out = d.within(S, async { 7 }).await;
        assert_eq!(out, Ok(7));
        let slow = d.within(S * 2, tokio::time::sleep(S)).await;
        assert_eq!(slow, Ok(()));
    }

    #[tokio::test(start_paused = true)]
    async fn a_wait_ends_at_its_own_deadline_not_an_earlier_armed_one() {
        let mut d = Deadline::new();
        let start = Instant::now();
        // Arms the timer for start + 1 s.
        assert_eq!(d.within(S, async {}).await, Ok(()));
        // A later deadline: start + 3 s. The armed timer fires at 1 s and
        // must be re-armed, not end the wait.
        let waited = d.run(start + S * 3, std::future::pending::<()>()).await;
        assert_eq!(waited, Err(Elapsed));
        assert_eq!(Instant::now(), start + S * 3);
    }

    #[tokio::test(start_paused = true)]
    async fn an_earlier_deadline_re_arms_the_timer() {
        let mut d = Deadline::new();
        let start = Instant::now();
        assert_eq!(d.within(S * 60, async {}).await, Ok(()));
        let waited = d.within(S, std::future::pending::<()>()).await;
        assert_eq!(waited, Err(Elapsed));
        assert_eq!(Instant::now(), start + S);
    }

    #[tokio::test(start_paused = true)]
    async fn it_keeps_working_after_it_fired() {
        let mut d = Deadline::new();
        let start = Instant::now();
        assert_eq!(d.within(S, std::future::pending::<()>()).await, Err(Elapsed));
        assert_eq!(d.within(S, async { 1 }).await, Ok(1));
        assert_eq!(d.within(S * 2, std::future::pending::<()>()).await, Err(Elapsed));
        assert_eq!(Instant::now(), start + S * 3);
    }

    #[tokio::test(start_paused = true)]
    async fn a_deadline_already_past_ends_a_pending_wait_at_once() {
        let mut d = Deadline::new();
        let past = Instant::now();
        tokio::time::sleep(S).await;
        assert_eq!(d.run(past, std::future::pending::<()>()).await, Err(Elapsed));
    }
}
