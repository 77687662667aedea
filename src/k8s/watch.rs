//! Waiting for a Deployment or StatefulSet to be back at its desired
//! ready replicas, within a bound: a watch on the one object
//! (`fieldSelector=metadata.name=NAME`, from resourceVersion "0" so the
//! current state comes first as ADDED), so the check sees the moment it
//! heals instead of the next poll; when the watch cannot be opened or
//! ends early (RBAC without `watch`, a proxy that cuts long requests),
//! it falls back to polling the object for the rest of the bound.

use std::time::{Duration, Instant};

use futures_util::TryStreamExt;
use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use kube::api::{Api, WatchEvent, WatchParams};

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

/// Watches until ready or the deadline: `Ok(Some)` ready, `Ok(None)`
/// the stream ended (or the deadline passed) first, `Err` the watch
/// failed; `last` keeps the latest state seen.
async fn watch_once<K>(
    api: Api<K>,
    name: String,
    deadline: Instant,
    ready_of: fn(&K) -> (i32, i32),
    last: &mut String,
) -> Result<Option<(i32, i32)>, String>
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
        while let Some(event) = stream.try_next().await.map_err(|e| e.to_string())? {
            match event {
                WatchEvent::Added(o) | WatchEvent::Modified(o) => {
                    let (ready, desired) = ready_of(&o);
                    if ready >= desired {
                        return Ok(Some((ready, desired)));
                    }
                    *last = format!("{ready}/{desired} ready");
                }
                WatchEvent::Deleted(_) => *last = "deleted".into(),
                WatchEvent::Bookmark(_) => {}
                WatchEvent::Error(e) => return Err(format!("{} {}", e.code, e.message)),
            }
        }
        Ok(None)
    };
    match tokio::time::timeout(left, body).await {
        Ok(r) => r,
        Err(_) => Ok(None),
    }
}

/// Waits for `w` to be ready until `deadline`; see the module comment.
pub fn until_ready(kube: &Kube, w: &Workload, deadline: Instant) -> Outcome {
    let mut last = String::new();
    let watched = match w {
        Workload::Deployment { namespace, name } => {
            kube.note_call(&format!(
                "GET /apis/apps/v1/namespaces/{namespace}/deployments?watch=true&\
                 fieldSelector=metadata.name={name}"
            ));
            let api: Api<Deployment> = Api::namespaced(kube.client.clone(), namespace);
            let name = name.clone();
            kube.block_on(async {
                watch_once(api, name, deadline, ready_of_deployment, &mut last).await
            })
        }
        Workload::StatefulSet { namespace, name } => {
            kube.note_call(&format!(
                "GET /apis/apps/v1/namespaces/{namespace}/statefulsets?watch=true&\
                 fieldSelector=metadata.name={name}"
            ));
            let api: Api<StatefulSet> = Api::namespaced(kube.client.clone(), namespace);
            let name = name.clone();
            kube.block_on(async {
                watch_once(api, name, deadline, ready_of_statefulset, &mut last).await
            })
        }
        Workload::Pods { .. } => {
            return (Err(format!("{w} has no desired replicas")), Via::Polling)
        }
    };
    match watched {
        Ok(Some(r)) => return (Ok(r), Via::Watch),
        Ok(None) => {}
        Err(e) => {
            tracing::warn!(workload = %w, error = %e, "watch failed; polling instead");
        }
    }
    loop {
        match api::replicas(kube, w) {
            Ok((ready, desired)) if ready >= desired => {
                return (Ok((ready, desired)), Via::Polling)
            }
            Ok((ready, desired)) => last = format!("{ready}/{desired} ready"),
            Err(e) => last = e.to_string(),
        }
        let now = Instant::now();
        if now >= deadline {
            return (Err(last), Via::Polling);
        }
        std::thread::sleep(Duration::from_millis(250).min(deadline - now));
    }
}
