//! The Kubernetes API calls `chaos` makes, and nothing else: list pods
//! by label selector, get a Deployment or StatefulSet (for its selector
//! and ready replicas), delete a pod, evict a pod. Request bodies are
//! `k8s-openapi` types; dry runs send `dryRun=All` in the query and the
//! options, so the server validates (RBAC, admission, PDBs) and changes
//! nothing.

use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::policy::v1::Eviction;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{
    DeleteOptions, LabelSelector, ObjectMeta,
};
use kube::api::{Api, ListParams};
use std::time::Duration;

use super::client::Kube;
use super::target::Workload;
use super::K8sError;

/// A pod a fault may hit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodRef {
    pub namespace: String,
    pub name: String,
    pub node: Option<String>,
    pub uid: Option<String>,
    /// (container name, `containerID` from the pod's status), in the
    /// order of `spec.containers`; the ID is `None` until it started.
    pub containers: Vec<(String, Option<String>)>,
}

impl std::fmt::Display for PodRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)?;
        if let Some(n) = &self.node {
            write!(f, " (node {n})")?;
        }
        Ok(())
    }
}

/// `spec.selector` as `kubectl -l` text.
pub fn selector_text(sel: &LabelSelector) -> String {
    let mut parts: Vec<String> =
        sel.match_labels.iter().flatten().map(|(k, v)| format!("{k}={v}")).collect();
    for e in sel.match_expressions.iter().flatten() {
        let values = e.values.clone().unwrap_or_default().join(",");
        parts.push(match e.operator.as_str() {
            "In" => format!("{} in ({values})", e.key),
            "NotIn" => format!("{} notin ({values})", e.key),
            "Exists" => e.key.clone(),
            _ => format!("!{}", e.key),
        });
    }
    parts.join(",")
}

fn pods_path(ns: &str) -> String {
    format!("/api/v1/namespaces/{ns}/pods")
}

/// The label selector of a workload's pods (a GET for deployments and
/// statefulsets).
pub fn pod_selector(kube: &Kube, w: &Workload) -> Result<String, K8sError> {
    let empty = |what: &str| {
        K8sError::Target(format!(
            "{what} has an empty selector; refusing to match every pod"
        ))
    };
    match w {
        Workload::Pods { selector, .. } => Ok(selector.clone()),
        Workload::Deployment { namespace, name } => {
            let api: Api<Deployment> = Api::namespaced(kube.client.clone(), namespace);
            let call =
                format!("GET /apis/apps/v1/namespaces/{namespace}/deployments/{name}");
            let d = kube.call(&call, api.get(name))?;
            let sel = d.spec.map(|s| selector_text(&s.selector)).unwrap_or_default();
            if sel.is_empty() {
                return Err(empty(&w.to_string()));
            }
            Ok(sel)
        }
        Workload::StatefulSet { namespace, name } => {
            let api: Api<StatefulSet> = Api::namespaced(kube.client.clone(), namespace);
            let call =
                format!("GET /apis/apps/v1/namespaces/{namespace}/statefulsets/{name}");
            let s = kube.call(&call, api.get(name))?;
            let sel = s.spec.map(|s| selector_text(&s.selector)).unwrap_or_default();
            if sel.is_empty() {
                return Err(empty(&w.to_string()));
            }
            Ok(sel)
        }
    }
}

/// The pods of a workload that are not already terminating, by name.
pub fn list_pods(kube: &Kube, w: &Workload) -> Result<Vec<PodRef>, K8sError> {
    let selector = pod_selector(kube, w)?;
    let ns = w.namespace();
    let api: Api<Pod> = Api::namespaced(kube.client.clone(), ns);
    let call = format!("GET {}?labelSelector={selector}", pods_path(ns));
    let list = kube.call(&call, api.list(&ListParams::default().labels(&selector)))?;
    let mut pods: Vec<PodRef> = list
        .items
        .into_iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .filter_map(|p| {
            let statuses = p
                .status
                .as_ref()
                .and_then(|s| s.container_statuses.clone())
                .unwrap_or_default();
            let containers = p
                .spec
                .as_ref()
                .map(|s| {
                    s.containers
                        .iter()
                        .map(|c| {
                            let id = statuses
                                .iter()
                                .find(|st| st.name == c.name)
                                .and_then(|st| st.container_id.clone());
                            (c.name.clone(), id)
                        })
                        .collect()
                })
                .unwrap_or_default();
            Some(PodRef {
                namespace: p.metadata.namespace.clone().unwrap_or_else(|| ns.to_string()),
                name: p.metadata.name?,
                node: p.spec.and_then(|s| s.node_name),
                uid: p.metadata.uid,
                containers,
            })
        })
        .collect();
    pods.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(pods)
}

fn delete_options(grace: Option<Duration>, dry_run: bool) -> DeleteOptions {
    DeleteOptions {
        grace_period_seconds: grace
            .map(|g| i64::try_from(g.as_secs()).unwrap_or(i64::MAX)),
        dry_run: dry_run.then(|| vec!["All".to_string()]),
        ..Default::default()
    }
}

fn with_dry_run(path: String, dry_run: bool) -> String {
    if dry_run {
        format!("{path}?dryRun=All")
    } else {
        path
    }
}

/// What a kill did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Killed {
    /// The server accepted the delete or eviction (or would, dry run).
    Yes,
    /// The pod was already gone (404).
    AlreadyGone,
    /// An eviction refused by a PodDisruptionBudget (429): the pod lives.
    RefusedByBudget(String),
}

fn json_request(
    method: http::Method,
    path: &str,
    body: Vec<u8>,
) -> Result<http::Request<Vec<u8>>, K8sError> {
    http::Request::builder()
        .method(method)
        .uri(path)
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(body)
        .map_err(|e| K8sError::Transport { call: path.to_string(), cause: e.to_string() })
}

/// `DELETE .../pods/NAME` with a grace period (the pod's own when `None`).
pub fn delete_pod(
    kube: &Kube,
    pod: &PodRef,
    grace: Option<Duration>,
    dry_run: bool,
) -> Result<Killed, K8sError> {
    let path =
        with_dry_run(format!("{}/{}", pods_path(&pod.namespace), pod.name), dry_run);
    let body = serde_json::to_vec(&delete_options(grace, dry_run))
        .map_err(|e| K8sError::Transport { call: path.clone(), cause: e.to_string() })?;
    let req = json_request(http::Method::DELETE, &path, body)?;
    let call = format!("DELETE {path}{}", grace_note(grace));
    match kube.call(&call, kube.client.request::<serde_json::Value>(req)) {
        Ok(_) => Ok(Killed::Yes),
        Err(e) if e.status() == Some(404) => Ok(Killed::AlreadyGone),
        Err(e) => Err(e),
    }
}

/// `POST .../pods/NAME/eviction`: the API server checks the pod's
/// PodDisruptionBudgets and answers 429 when the eviction would break one.
pub fn evict_pod(
    kube: &Kube,
    pod: &PodRef,
    grace: Option<Duration>,
    dry_run: bool,
) -> Result<Killed, K8sError> {
    let path = with_dry_run(
        format!("{}/{}/eviction", pods_path(&pod.namespace), pod.name),
        dry_run,
    );
    let eviction = Eviction {
        metadata: ObjectMeta {
            name: Some(pod.name.clone()),
            namespace: Some(pod.namespace.clone()),
            ..Default::default()
        },
        delete_options: Some(delete_options(grace, dry_run)),
    };
    let body = serde_json::to_vec(&eviction)
        .map_err(|e| K8sError::Transport { call: path.clone(), cause: e.to_string() })?;
    let req = json_request(http::Method::POST, &path, body)?;
    let call = format!("POST {path}{}", grace_note(grace));
    match kube.call(&call, kube.client.request::<serde_json::Value>(req)) {
        Ok(_) => Ok(Killed::Yes),
        Err(e) if e.status() == Some(404) => Ok(Killed::AlreadyGone),
        Err(K8sError::Api { status: 429, message, .. }) => {
            Ok(Killed::RefusedByBudget(message))
        }
        Err(e) => Err(e),
    }
}

fn grace_note(grace: Option<Duration>) -> String {
    match grace {
        Some(g) => format!(" (gracePeriodSeconds {})", g.as_secs()),
        None => " (the pod's own grace period)".into(),
    }
}

/// Ready and desired replicas of a Deployment or StatefulSet.
pub fn replicas(kube: &Kube, w: &Workload) -> Result<(i32, i32), K8sError> {
    match w {
        Workload::Deployment { namespace, name } => {
            let api: Api<Deployment> = Api::namespaced(kube.client.clone(), namespace);
            let call =
                format!("GET /apis/apps/v1/namespaces/{namespace}/deployments/{name}");
            let d = kube.call(&call, api.get(name))?;
            let desired = d.spec.and_then(|s| s.replicas).unwrap_or(1);
            let ready = d.status.and_then(|s| s.ready_replicas).unwrap_or(0);
            Ok((ready, desired))
        }
        Workload::StatefulSet { namespace, name } => {
            let api: Api<StatefulSet> = Api::namespaced(kube.client.clone(), namespace);
            let call =
                format!("GET /apis/apps/v1/namespaces/{namespace}/statefulsets/{name}");
            let s = kube.call(&call, api.get(name))?;
            let desired = s.spec.and_then(|s| s.replicas).unwrap_or(1);
            let ready = s.status.and_then(|s| s.ready_replicas).unwrap_or(0);
            Ok((ready, desired))
        }
        Workload::Pods { .. } => Err(K8sError::Target(format!(
            "{w} has no desired replicas; check a deployment or statefulset"
        ))),
    }
}
