//! Time for the scheduler: a [`Clock`] trait with the real system clock and
//! a [`ManualClock`] that tests move by hand, so cron and back-off logic is
//! checked without waiting for real minutes.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use jiff::Timestamp;
use tokio::sync::watch;

/// A boxed future, so the trait stays object-safe.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Where the scheduler reads the time and waits for it.
pub trait Clock: Send + Sync {
    /// The current instant.
    fn now(&self) -> Timestamp;
    /// Resolves once `now() >= deadline`.
    fn sleep_until(&self, deadline: Timestamp) -> BoxFuture<'_, ()>;
}

/// Adds a std duration to an instant, saturating at the far future instead
/// of panicking (durations here come from config files).
pub fn add(t: Timestamp, d: Duration) -> Timestamp {
    let ms = i64::try_from(d.as_millis()).unwrap_or(i64::MAX / 4);
    Timestamp::from_millisecond(t.as_millisecond().saturating_add(ms))
        .unwrap_or(Timestamp::MAX)
}

/// Milliseconds from `a` to `b` (zero when `b` is not later).
pub fn until(a: Timestamp, b: Timestamp) -> Duration {
    let ms = b.as_millisecond().saturating_sub(a.as_millisecond());
    Duration::from_millis(u64::try_from(ms).unwrap_or(0))
}

/// The real wall clock. Sleeps are re-checked in bounded slices so a wall
/// clock step (NTP) is noticed within a second.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Timestamp {
        Timestamp::now()
    }

    fn sleep_until(&self, deadline: Timestamp) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            loop {
                let left = until(Timestamp::now(), deadline);
                if left.is_zero() {
                    return;
                }
                tokio::time::sleep(left.min(Duration::from_secs(1))).await;
            }
        })
    }
}

/// A clock that only moves when told to; sleepers wake when it passes
/// their deadline.
#[derive(Debug)]
pub struct ManualClock {
    now: watch::Sender<Timestamp>,
}

impl ManualClock {
    /// A clock stopped at `start`.
    pub fn new(start: Timestamp) -> Self {
        ManualClock { now: watch::Sender::new(start) }
    }

    /// Moves the clock to `t` (never backwards).
    pub fn set(&self, t: Timestamp) {
        self.now.send_modify(|now| {
            if t > *now {
                *now = t;
            }
        });
    }

    /// Moves the clock forward by `d`.
    pub fn advance(&self, d: Duration) {
        let t = add(*self.now.borrow(), d);
        self.set(t);
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Timestamp {
        *self.now.borrow()
    }

    fn sleep_until(&self, deadline: Timestamp) -> BoxFuture<'_, ()> {
        let mut rx = self.now.subscribe();
        Box::pin(async move {
            // The sender lives as long as the clock, which outlives this
            // future (it borrows it), so `wait_for` cannot fail.
            let _ = rx.wait_for(|now| *now >= deadline).await;
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn manual_clock_wakes_sleepers_only_when_advanced_past_their_deadline() {
        let clock = std::sync::Arc::new(ManualClock::new(Timestamp::UNIX_EPOCH));
        let deadline = add(Timestamp::UNIX_EPOCH, Duration::from_secs(60));
        let c = clock.clone();
        let sleeper = tokio::spawn(async move { c.sleep_until(deadline).await });
        tokio::task::yield_now().await;
        clock.advance(Duration::from_secs(59));
        tokio::task::yield_now().await;
        assert!(!sleeper.is_finished());
        clock.advance(Duration::from_secs(1));
        tokio::time::timeout(Duration::from_secs(5), sleeper)
            .await
            .expect("sleeper woke")
            .unwrap();
        assert_eq!(clock.now(), deadline);
    }

    #[test]
    fn add_and_until_are_inverse_and_saturate() {
        let t = Timestamp::UNIX_EPOCH;
        let later = add(t, Duration::from_millis(1500));
        assert_eq!(until(t, later), Duration::from_millis(1500));
        assert_eq!(until(later, t), Duration::ZERO);
        assert_eq!(add(t, Duration::MAX), Timestamp::MAX);
    }
}
