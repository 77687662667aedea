//! An in-process HTTP server that speaks the part of the Kubernetes REST
//! API `chaos` uses (no API server can run on these machines): list pods
//! by label selector, get Deployments, delete and evict pods (with
//! `dryRun=All`), refuse pods/exec upgrades. Every body is built from
//! `k8s-openapi` types with `serde_json::to_vec`, never written by hand.
//! Every request is recorded for the tests to assert on, and errors,
//! PDB refusals and delays can be injected per path.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Request, Response, StatusCode};
use k8s_openapi::api::apps::v1::{Deployment, DeploymentSpec, DeploymentStatus};
use k8s_openapi::api::core::v1::{Pod, PodSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{
    LabelSelector, ListMeta, ObjectMeta, Status,
};

/// One request the server saw.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    pub path: String,
    pub query: String,
    pub body: Option<serde_json::Value>,
}

/// An injected answer for requests whose `METHOD path` starts with `prefix`.
#[derive(Debug, Clone)]
struct Rule {
    prefix: String,
    status: u16,
    delay: Duration,
}

#[derive(Default)]
struct State {
    pods: Vec<Pod>,
    deployments: Vec<Deployment>,
    seen: Vec<Seen>,
    rules: Vec<Rule>,
    /// Evictions answer 429 (a PodDisruptionBudget).
    pdb_blocks: bool,
    /// After a kill, the deployment reports one ready replica fewer
    /// until this long has passed (`None`: it never heals).
    heal_after: Option<Duration>,
    last_kill: Option<Instant>,
    replaced: u32,
}

/// The fake API server; stops when dropped.
pub struct FakeKube {
    pub addr: SocketAddr,
    state: Arc<Mutex<State>>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

/// A running pod of `app` on `node`.
pub fn pod(ns: &str, name: &str, app: &str, node: &str) -> Pod {
    Pod {
        metadata: ObjectMeta {
            name: Some(name.into()),
            namespace: Some(ns.into()),
            uid: Some(format!("uid-{name}")),
            labels: Some(labels(&[("app", app)])),
            ..Default::default()
        },
        spec: Some(PodSpec { node_name: Some(node.into()), ..Default::default() }),
        status: None,
    }
}

/// A Deployment selecting `app=APP` with `replicas` desired.
pub fn deployment(ns: &str, name: &str, app: &str, replicas: i32) -> Deployment {
    Deployment {
        metadata: ObjectMeta {
            name: Some(name.into()),
            namespace: Some(ns.into()),
            ..Default::default()
        },
        spec: Some(DeploymentSpec {
            replicas: Some(replicas),
            selector: LabelSelector {
                match_labels: Some(labels(&[("app", app)])),
                ..Default::default()
            },
            ..Default::default()
        }),
        status: Some(DeploymentStatus {
            ready_replicas: Some(replicas),
            ..Default::default()
        }),
    }
}

fn status_body(code: u16, reason: &str, message: &str) -> Vec<u8> {
    serde_json::to_vec(&Status {
        code: Some(i32::from(code)),
        message: Some(message.into()),
        reason: Some(reason.into()),
        status: Some("Failure".into()),
        metadata: ListMeta::default(),
        details: None,
    })
    .expect("status serialises")
}

fn reason_of(code: u16) -> &'static str {
    match code {
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "NotFound",
        409 => "Conflict",
        429 => "TooManyRequests",
        _ => "InternalError",
    }
}

fn matches_selector(pod: &Pod, selector: &str) -> bool {
    let labels = pod.metadata.labels.clone().unwrap_or_default();
    selector.split(',').filter(|s| !s.is_empty()).all(|term| {
        let (k, v) =
            term.split_once("==").or_else(|| term.split_once('=')).unwrap_or((term, ""));
        labels.get(k).map(String::as_str) == Some(v)
    })
}

fn query_param(query: &str, key: &str) -> Option<String> {
    url_decode_pairs(query).into_iter().find(|(k, _)| k == key).map(|(_, v)| v)
}

fn url_decode_pairs(query: &str) -> Vec<(String, String)> {
    query
        .split('&')
        .filter(|s| !s.is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (decode(k), decode(v))
        })
        .collect()
}

fn decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                let h = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("00");
                out.push(u8::from_str_radix(h, 16).unwrap_or(b'?'));
                i += 2;
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

impl FakeKube {
    pub fn start() -> FakeKube {
        let std_listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        std_listener.set_nonblocking(true).expect("nonblocking");
        let addr = std_listener.local_addr().expect("addr");
        let state: Arc<Mutex<State>> = Arc::default();
        let (stop_tx, mut stop_rx) = tokio::sync::oneshot::channel::<()>();
        let st = state.clone();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(std_listener).expect("listener");
                loop {
                    tokio::select! {
                        _ = &mut stop_rx => break,
                        acc = listener.accept() => {
                            let Ok((stream, _)) = acc else { continue };
                            let st = st.clone();
                            tokio::spawn(async move {
                                let svc = hyper::service::service_fn(move |req| {
                                    let st = st.clone();
                                    async move { Ok::<_, Infallible>(handle(st, req).await) }
                                });
                                let _ = hyper::server::conn::http1::Builder::new()
                                    .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                                    .with_upgrades()
                                    .await;
                            });
                        }
                    }
                }
            });
        });
        FakeKube { addr, state, stop: Some(stop_tx), thread: Some(thread) }
    }

    fn with<T>(&self, f: impl FnOnce(&mut State) -> T) -> T {
        f(&mut self.state.lock().expect("state"))
    }

    pub fn add_pod(&self, p: Pod) {
        self.with(|s| s.pods.push(p));
    }

    pub fn add_deployment(&self, d: Deployment) {
        self.with(|s| s.deployments.push(d));
    }

    /// Answers `status` (a k8s Status body) to requests starting with
    /// `METHOD /path...`.
    pub fn fail(&self, prefix: &str, status: u16) {
        self.with(|s| {
            s.rules.push(Rule { prefix: prefix.into(), status, delay: Duration::ZERO })
        });
    }

    /// Delays answers to matching requests (then answers normally).
    pub fn delay(&self, prefix: &str, delay: Duration) {
        self.with(|s| s.rules.push(Rule { prefix: prefix.into(), status: 0, delay }));
    }

    pub fn pdb_blocks_evictions(&self) {
        self.with(|s| s.pdb_blocks = true);
    }

    pub fn heal_after(&self, d: Option<Duration>) {
        self.with(|s| s.heal_after = d);
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.with(|s| s.seen.clone())
    }

    pub fn pod_names(&self) -> Vec<String> {
        self.with(|s| s.pods.iter().filter_map(|p| p.metadata.name.clone()).collect())
    }

    /// A kubeconfig pointing at this server (plain HTTP, a bearer token),
    /// with the context `fake` as the current one.
    pub fn kubeconfig(&self, dir: &Path) -> PathBuf {
        let path = dir.join("kubeconfig");
        let text = format!(
            "apiVersion: v1\nkind: Config\ncurrent-context: fake\nclusters:\n- name: fake\n  cluster:\n    server: http://{}\ncontexts:\n- name: fake\n  context:\n    cluster: fake\n    user: tester\n    namespace: shop\nusers:\n- name: tester\n  user:\n    token: test-token\n",
            self.addr
        );
        std::fs::write(&path, text).expect("write kubeconfig");
        path
    }
}

impl Drop for FakeKube {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn reply(code: u16, body: Vec<u8>) -> Response<Full<Bytes>> {
    Response::builder()
        .status(StatusCode::from_u16(code).expect("status"))
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body)))
        .expect("response")
}

async fn handle(
    state: Arc<Mutex<State>>,
    req: Request<hyper::body::Incoming>,
) -> Response<Full<Bytes>> {
    let method = req.method().to_string();
    let path = req.uri().path().to_string();
    let query = req.uri().query().unwrap_or("").to_string();
    let body = req.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
    let body_json = serde_json::from_slice::<serde_json::Value>(&body).ok();
    let line = format!("{method} {path}");
    let rule = {
        let mut s = state.lock().expect("state");
        s.seen.push(Seen {
            method: method.clone(),
            path: path.clone(),
            query: query.clone(),
            body: body_json,
        });
        s.rules.iter().find(|r| line.starts_with(&r.prefix)).cloned()
    };
    if let Some(r) = &rule {
        if !r.delay.is_zero() {
            tokio::time::sleep(r.delay).await;
        }
        if r.status != 0 {
            let msg = format!("injected {} for {line}", r.status);
            return reply(r.status, status_body(r.status, reason_of(r.status), &msg));
        }
    }
    let dry_run = query_param(&query, "dryRun").as_deref() == Some("All");
    let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let mut s = state.lock().expect("state");
    match (method.as_str(), parts.as_slice()) {
        ("GET", ["api", "v1", "namespaces", ns, "pods"]) => {
            let sel = query_param(&query, "labelSelector").unwrap_or_default();
            let node = query_param(&query, "fieldSelector")
                .and_then(|f| f.strip_prefix("spec.nodeName=").map(str::to_string));
            let items: Vec<Pod> = s
                .pods
                .iter()
                .filter(|p| p.metadata.namespace.as_deref() == Some(*ns))
                .filter(|p| matches_selector(p, &sel))
                .filter(|p| {
                    node.as_ref().is_none_or(|n| {
                        p.spec.as_ref().and_then(|s| s.node_name.as_ref()) == Some(n)
                    })
                })
                .cloned()
                .collect();
            let list = k8s_openapi::List::<Pod> { items, metadata: ListMeta::default() };
            reply(200, serde_json::to_vec(&list).expect("list"))
        }
        ("GET", ["apis", "apps", "v1", "namespaces", ns, "deployments", name]) => {
            let heal_after = s.heal_after;
            let last_kill = s.last_kill;
            match s.deployments.iter().find(|d| {
                d.metadata.namespace.as_deref() == Some(*ns)
                    && d.metadata.name.as_deref() == Some(*name)
            }) {
                Some(d) => {
                    let mut d = d.clone();
                    let desired = d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
                    let healed = match (last_kill, heal_after) {
                        (None, _) => true,
                        (Some(t), Some(h)) => t.elapsed() >= h,
                        (Some(_), None) => false,
                    };
                    d.status = Some(DeploymentStatus {
                        ready_replicas: Some(if healed { desired } else { desired - 1 }),
                        replicas: Some(desired),
                        ..Default::default()
                    });
                    reply(200, serde_json::to_vec(&d).expect("deployment"))
                }
                None => reply(
                    404,
                    status_body(
                        404,
                        "NotFound",
                        &format!("deployments.apps \"{name}\" not found"),
                    ),
                ),
            }
        }
        ("DELETE", ["api", "v1", "namespaces", ns, "pods", name])
        | ("POST", ["api", "v1", "namespaces", ns, "pods", name, "eviction"]) => {
            let evict = method == "POST";
            let Some(i) = s.pods.iter().position(|p| {
                p.metadata.namespace.as_deref() == Some(*ns)
                    && p.metadata.name.as_deref() == Some(*name)
            }) else {
                return reply(
                    404,
                    status_body(404, "NotFound", &format!("pods \"{name}\" not found")),
                );
            };
            if evict && s.pdb_blocks {
                return reply(
                    429,
                    status_body(429, "TooManyRequests", "Cannot evict pod as it would violate the pod's disruption budget."),
                );
            }
            let victim = s.pods[i].clone();
            if !dry_run {
                s.pods.remove(i);
                // The ReplicaSet replaces it under a new name.
                s.replaced += 1;
                let mut fresh = victim.clone();
                fresh.metadata.name = Some(format!("{name}-r{}", s.replaced));
                s.pods.push(fresh);
                s.last_kill = Some(Instant::now());
            }
            if evict {
                reply(201, status_body(201, "", ""))
            } else {
                reply(200, serde_json::to_vec(&victim).expect("pod"))
            }
        }
        ("GET", ["api", "v1", "namespaces", _, "pods", _, "exec"])
        | ("POST", ["api", "v1", "namespaces", _, "pods", _, "exec"]) => {
            // No WebSocket here: the upgrade is refused.
            reply(400, status_body(400, "BadRequest", "Upgrade request required"))
        }
        _ => reply(
            404,
            status_body(
                404,
                "NotFound",
                &format!("the fake API server does not serve {line}"),
            ),
        ),
    }
}
