//! Waiting for a Deployment or StatefulSet to be back at its desired
//! ready replicas, within a bound: a watch on the one object
//! (`fieldSelector=metadata.name=NAME`, from resourceVersion "0" so the
//! current state comes first as ADDED), so the check sees the moment it
//! heals instead of the next poll; when the watch cannot be opened or
//! ends early (RBAC without `watch`, a proxy that cuts long requests),
//! it falls back to polling the object for the rest of the bound.
//!
//! Which "ready" counts is the [`Gate`]'s rule: right after a delete the
//! status can still say ready == desired (the controller has not seen
//! the deletion yet), so after a kill readiness counts only once the
//! workload was seen below desired (the dip), or, when no dip shows
//! within a short grace, from the end of that grace (a replacement
//! faster than the watch, or an eviction a PodDisruptionBudget refused).

use std::time::{Duration, Instant};

use futures_util::TryStreamExt;
use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use kube::api::{Api, WatchEvent, WatchParams};
use tokio::sync::watch as signal;

use super::api;
use super::client::Kube;
use super::target::Workload;

/// How the outcome was observed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Via {
    Watch,
    Polling,
}

impl std::fmt::Display for Via {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Via::Watch => "watch",
            Via::Polling => "polling",
        })
    }
}

/// What the wait saw: `Ok((ready, desired))` once ready >= desired, or
/// `Err(last state or error)` when the deadline passed first.
pub type Outcome = (Result<(i32, i32), String>, Via);

/// When an observation of "ready" counts (see the module comment).
#[derive(Debug, Clone, Copy)]
pub struct Gate {
    since: Instant,
    grace: Duration,
    dipped: bool,
    /// Ready seen before any dip, within the grace: counts at the end
    /// of the grace unless something else is seen first.
    pending: Option<(i32, i32)>,
}

impl Gate {
    /// Every ready counts (no kill to be wary of): the bound runs from
    /// `since`.
    pub fn immediate(since: Instant) -> Gate {
        Gate { since, grace: Duration::ZERO, dipped: false, pending: None }
    }

    /// After a kill at `kill`: ready counts after a dip, or after `grace`.
    pub fn after_kill(kill: Instant, grace: Duration) -> Gate {
        Gate { since: kill, grace, dipped: false, pending: None }
    }

    /// The grace a check with bound `within` gets: min(2 s, within / 2),
    /// long enough for the controller to observe a delete, short enough
    /// to leave most of the bound for the heal itself.
    pub fn grace_for(within: Duration) -> Duration {
        Duration::from_secs(2).min(within / 2)
    }

    /// Whether the workload was seen below desired.
    pub fn dipped(&self) -> bool {
        self.dipped
    }

    /// The grace this gate applies.
    pub fn grace(&self) -> Duration {
        self.grace
    }

    /// Feeds one observation made at `now`; true when it counts as
    /// healed.
    pub fn observe(&mut self, ready: i32, desired: i32, now: Instant) -> bool {
        if ready < desired {
            self.dipped = true;
            self.pending = None;
            return false;
        }
        if self.dipped || now >= self.since + self.grace {
            return true;
        }
        self.pending = Some((ready, desired));
        false
    }

    /// The workload is gone or unreadable: not ready.
    fn not_ready(&mut self) {
        self.dipped = true;
        self.pending = None;
    }

    /// A ready state waiting for the grace to end, and when it ends.
    fn pending(&self) -> Option<((i32, i32), Instant)> {
        self.pending.map(|p| (p, self.since + self.grace))
    }
}

/// The result of a wait.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Healed {
    /// `Ok((ready, desired))` when it counted as healed, else the last
    /// state seen (or the last error).
    pub result: Result<(i32, i32), String>,
    pub via: Via,
    /// When readiness was seen (or the wait ended).
    pub at: Instant,
    /// Whether the workload was seen below desired first.
    pub dipped: bool,
}

/// A signal that ends a wait early (a later kill superseded it).
pub type Cancel = signal::Receiver<bool>;

async fn cancelled(mut cancel: Cancel) {
    // A sender that went away never cancels.
    if cancel.wait_for(|c| *c).await.is_err() {
        std::future::pending::<()>().await;
    }
}

fn ready_of_deployment(d: &Deployment) -> (i32, i32) {
    let desired = d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
    let ready = d.status.as_ref().and_then(|s| s.ready_replicas).unwrap_or(0);
    (ready, desired)
}

fn ready_of_statefulset(s: &StatefulSet) -> (i32, i32) {
    let desired = s.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
    let ready = s.status.as_ref().and_then(|s| s.ready_replicas).unwrap_or(0);
    (ready, desired)
}

/// How a watch ended.
enum Watched {
    /// Counted as healed at this moment.
    Ready((i32, i32), Instant),
    /// The stream ended, or the deadline passed, first.
    Ended,
    Cancelled,
}

/// Watches until healed or the deadline; `Err` the watch failed. `last`
/// keeps the latest state seen, `gate` what was seen so far.
async fn watch_once<K>(
    api: Api<K>,
    name: String,
    deadline: Instant,
    ready_of: fn(&K) -> (i32, i32),
    gate: &mut Gate,
    last: &mut String,
    cancel: Cancel,
) -> Result<Watched, String>
where
    K: kube::Resource
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug
        + Send
        + 'static,
{
    let left = deadline.saturating_duration_since(Instant::now());
    // The server ends the watch itself a little after the bound.
    let secs = u32::try_from(left.as_secs() + 1).unwrap_or(290).min(290);
    let wp =
        WatchParams::default().fields(&format!("metadata.name={name}")).timeout(secs);
    let body = async {
        let stream = api.watch(&wp, "0").await.map_err(|e| e.to_string())?;
        futures_util::pin_mut!(stream);
        loop {
            let pending = gate.pending();
            let grace_end = pending.map_or(deadline, |(_, at)| at);
            let next = tokio::select! {
                next = stream.try_next() => next.map_err(|e| e.to_string())?,
                // Ready all along and no dip within the grace: it counts now.
                () = tokio::time::sleep_until(grace_end.into()), if pending.is_some() => {
                    let (state, at) = pending.unwrap_or(((0, 0), grace_end));
                    return Ok(Watched::Ready(state, at));
                }
            };
            let Some(event) = next else { return Ok(Watched::Ended) };
            match event {
                WatchEvent::Added(o) | WatchEvent::Modified(o) => {
                    let (ready, desired) = ready_of(&o);
                    let now = Instant::now();
                    if gate.observe(ready, desired, now) {
                        return Ok(Watched::Ready((ready, desired), now));
                    }
                    *last = format!("{ready}/{desired} ready");
                }
                WatchEvent::Deleted(_) => {
                    gate.not_ready();
                    *last = "deleted".into();
                }
                WatchEvent::Bookmark(_) => {}
                WatchEvent::Error(e) => return Err(format!("{} {}", e.code, e.message)),
            }
        }
    };
    tokio::select! {
        r = tokio::time::timeout(left, body) => r.unwrap_or(Ok(Watched::Ended)),
        () = cancelled(cancel) => Ok(Watched::Cancelled),
    }
}

/// Waits for `w` to be ready until `deadline`, every ready counting;
/// see the module comment.
pub fn until_ready(kube: &Kube, w: &Workload, deadline: Instant) -> Outcome {
    // Kept alive for the call: never cancelled.
    let (_keep, cancel) = signal::channel(false);
    let h = until_healed(kube, w, Gate::immediate(Instant::now()), deadline, cancel);
    (h.result, h.via)
}

/// Waits for `w` to count as healed under `gate` until `deadline`, or
/// until `cancel` says so: by watch, then by polling.
pub fn until_healed(
    kube: &Kube,
    w: &Workload,
    mut gate: Gate,
    deadline: Instant,
    cancel: Cancel,
) -> Healed {
    let mut last = String::new();
    let end = |result: Result<(i32, i32), String>, via: Via, at: Instant, gate: &Gate| {
        Healed { result, via, at, dipped: gate.dipped() }
    };
    let watched = match w {
        Workload::Deployment { namespace, name } => {
            kube.note_call(&format!(
                "GET /apis/apps/v1/namespaces/{namespace}/deployments?watch=true&\
                 fieldSelector=metadata.name={name}"
            ));
            let api: Api<Deployment> = Api::namespaced(kube.client.clone(), namespace);
            let (name, cancel) = (name.clone(), cancel.clone());
            kube.block_on(async {
                watch_once(
                    api,
                    name,
                    deadline,
                    ready_of_deployment,
                    &mut gate,
                    &mut last,
                    cancel,
                )
                .await
            })
        }
        Workload::StatefulSet { namespace, name } => {
            kube.note_call(&format!(
                "GET /apis/apps/v1/namespaces/{namespace}/statefulsets?watch=true&\
                 fieldSelector=metadata.name={name}"
            ));
            let api: Api<StatefulSet> = Api::namespaced(kube.client.clone(), namespace);
            let (name, cancel) = (name.clone(), cancel.clone());
            kube.block_on(async {
                watch_once(
                    api,
                    name,
                    deadline,
                    ready_of_statefulset,
                    &mut gate,
                    &mut last,
                    cancel,
                )
                .await
            })
        }
        Workload::Pods { .. } => {
            let e = Err(format!("{w} has no desired replicas"));
            return end(e, Via::Polling, Instant::now(), &gate);
        }
    };
    match watched {
        Ok(Watched::Ready(r, at)) => return end(Ok(r), Via::Watch, at, &gate),
        Ok(Watched::Cancelled) => {
            return end(Err("superseded".into()), Via::Watch, Instant::now(), &gate)
        }
        Ok(Watched::Ended) => {}
        Err(e) => {
            tracing::warn!(workload = %w, error = %e, "watch failed; polling instead");
        }
    }
    loop {
        if *cancel.borrow() {
            return end(Err("superseded".into()), Via::Polling, Instant::now(), &gate);
        }
        match api::replicas(kube, w) {
            Ok((ready, desired)) => {
                let now = Instant::now();
                if gate.observe(ready, desired, now) {
                    return end(Ok((ready, desired)), Via::Polling, now, &gate);
                }
                last = format!("{ready}/{desired} ready");
            }
            Err(e) => {
                gate.not_ready();
                last = e.to_string();
            }
        }
        let now = Instant::now();
        if now >= deadline {
            return end(Err(last), Via::Polling, now, &gate);
        }
        std::thread::sleep(Duration::from_millis(250).min(deadline - now));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn after_a_kill_ready_counts_after_a_dip_or_after_the_grace() {
        let kill = Instant::now();
        let grace = Duration::from_secs(2);
        let at = |ms| kill + Duration::from_millis(ms);
        // Stale "ready" right after the delete, then the dip, then the heal.
        let mut g = Gate::after_kill(kill, grace);
        assert!(!g.observe(3, 3, at(0)));
        assert_eq!(g.pending(), Some(((3, 3), at(2000))));
        assert!(!g.observe(2, 3, at(300)));
        assert_eq!(g.pending(), None);
        assert!(g.observe(3, 3, at(900)), "after the dip, at once");
        assert!(g.dipped());
        // No dip ever: ready counts from the end of the grace.
        let mut g = Gate::after_kill(kill, grace);
        assert!(!g.observe(3, 3, at(1999)));
        assert!(g.observe(3, 3, at(2000)));
        assert!(!g.dipped());
        // An error reading the workload is not ready.
        let mut g = Gate::after_kill(kill, grace);
        g.not_ready();
        assert!(g.observe(3, 3, at(10)));
    }

    #[test]
    fn without_a_kill_every_ready_counts_and_the_grace_is_capped() {
        let now = Instant::now();
        assert!(Gate::immediate(now).observe(3, 3, now));
        assert_eq!(Gate::grace_for(Duration::from_secs(20)), Duration::from_secs(2));
        assert_eq!(Gate::grace_for(Duration::from_secs(1)), Duration::from_millis(500));
    }
}
