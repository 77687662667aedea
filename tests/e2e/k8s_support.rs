//! An in-process HTTP server that speaks the part of the Kubernetes REST
//! API `chaos` uses (no API server can run on these machines): list pods
//! by label selector, get Deployments, delete and evict pods (with
//! `dryRun=All`), refuse pods/exec upgrades — or, when told to, accept
//! them and run a real local `chaos agent` behind the WebSocket. Every body is built from
//! `k8s-openapi` types with `serde_json::to_vec`, never written by hand.
//! Every request is recorded for the tests to assert on, and errors,
//! PDB refusals and delays can be injected per path. Watches stream:
//! each change of a workload's readiness goes out as it happens.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::Frame;
use hyper::{Request, Response, StatusCode};
use k8s_openapi::api::apps::v1::{
    Deployment, DeploymentSpec, DeploymentStatus, StatefulSet, StatefulSetSpec,
    StatefulSetStatus,
};
use k8s_openapi::api::core::v1::{Container, ContainerStatus, Pod, PodSpec, PodStatus};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{
    LabelSelector, ListMeta, ObjectMeta, Status, WatchEvent,
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
    statefulsets: Vec<StatefulSet>,
    /// Watches of workloads answer 403 (RBAC without `watch`).
    watch_fails: bool,
    seen: Vec<Seen>,
    rules: Vec<Rule>,
    /// Evictions answer 429 (a PodDisruptionBudget).
    pdb_blocks: bool,
    /// After a kill, the deployment reports one ready replica fewer
    /// until this long has passed (`None`: it never heals).
    heal_after: Option<Duration>,
    /// For this long after a kill the status still reports every replica
    /// ready (the controller has not observed the deletion yet).
    stale_for: Duration,
    last_kill: Option<Instant>,
    replaced: u32,
    /// When set, pods/exec upgrades are accepted and run a real local
    /// `chaos agent` (see [`FakeKube::serve_exec`]).
    exec: Option<ExecBackend>,
    /// Agents started behind exec upgrades, killed on drop.
    exec_children: Vec<u32>,
}

/// What an accepted pods/exec runs: the real `chaos` binary with the
/// command's arguments, a journal directory and a state directory.
#[derive(Debug, Clone)]
pub struct ExecBackend {
    pub bin: PathBuf,
    pub journal_dir: PathBuf,
    pub state_dir: PathBuf,
    /// The subprotocols this server speaks, preferred first.
    pub protocols: Vec<&'static str>,
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

/// A running pod whose container `container` has started with `id`
/// (`containerd://<64 hex>`) on `node`, as the kubelet reports it.
pub fn pod_with_container(
    ns: &str,
    name: &str,
    app: &str,
    node: &str,
    container: &str,
    id: &str,
) -> Pod {
    let mut p = pod(ns, name, app, node);
    if let Some(spec) = p.spec.as_mut() {
        spec.containers =
            vec![Container { name: container.into(), ..Default::default() }];
    }
    p.status = Some(PodStatus {
        phase: Some("Running".into()),
        container_statuses: Some(vec![ContainerStatus {
            name: container.into(),
            container_id: Some(id.into()),
            ready: true,
            ..Default::default()
        }]),
        ..Default::default()
    });
    p
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

/// A StatefulSet selecting `app=APP` with `replicas` desired.
pub fn statefulset(ns: &str, name: &str, app: &str, replicas: i32) -> StatefulSet {
    StatefulSet {
        metadata: ObjectMeta {
            name: Some(name.into()),
            namespace: Some(ns.into()),
            ..Default::default()
        },
        spec: Some(StatefulSetSpec {
            replicas: Some(replicas),
            selector: LabelSelector {
                match_labels: Some(labels(&[("app", app)])),
                ..Default::default()
            },
            service_name: Some(name.into()),
            ..Default::default()
        }),
        status: Some(StatefulSetStatus {
            ready_replicas: Some(replicas),
            replicas,
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

    /// Accepts pods/exec upgrades from now on: each runs `chaos` (the
    /// exec's `command` words after the first) behind the WebSocket, with
    /// the Kubernetes channel framing (stdin 0, stdout 1, stderr 2,
    /// status 3, close 255 in v5).
    pub fn serve_exec(&self, backend: ExecBackend) {
        self.with(|s| s.exec = Some(backend));
    }

    pub fn add_statefulset(&self, st: StatefulSet) {
        self.with(|s| s.statefulsets.push(st));
    }

    /// Watches of Deployments/StatefulSets are refused (403) from now on.
    pub fn refuse_watches(&self) {
        self.with(|s| s.watch_fails = true);
    }

    /// As if a pod had just been killed: workloads report one ready
    /// replica fewer until `heal_after` has passed.
    pub fn mark_killed(&self) {
        self.with(|s| s.last_kill = Some(Instant::now()));
    }

    pub fn pdb_blocks_evictions(&self) {
        self.with(|s| s.pdb_blocks = true);
    }

    pub fn heal_after(&self, d: Option<Duration>) {
        self.with(|s| s.heal_after = d);
    }

    /// After a kill, the status keeps reporting every replica ready for
    /// `d` before the dip shows (a controller that has not yet observed
    /// the deletion).
    pub fn stale_after_kill(&self, d: Duration) {
        self.with(|s| s.stale_for = d);
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
        for pid in self.with(|s| std::mem::take(&mut s.exec_children)) {
            // Our own children, by pid; they normally left at end of input.
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A whole body, or a watch's stream of events.
type Body = BoxBody<Bytes, Infallible>;

fn reply(code: u16, body: Vec<u8>) -> Response<Body> {
    Response::builder()
        .status(StatusCode::from_u16(code).expect("status"))
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body)).boxed())
        .expect("response")
}

fn header(req: &Request<hyper::body::Incoming>, name: &str) -> String {
    req.headers().get(name).and_then(|v| v.to_str().ok()).unwrap_or("").to_string()
}

/// Accepts a pods/exec WebSocket upgrade and runs the real agent behind
/// it: 101 with the negotiated subprotocol, then frames pumped between
/// the socket and the child's stdin/stdout until either side ends.
fn exec_upgrade(
    state: Arc<Mutex<State>>,
    mut req: Request<hyper::body::Incoming>,
    backend: ExecBackend,
) -> Response<Body> {
    let query = req.uri().query().unwrap_or("").to_string();
    state.lock().expect("state").seen.push(Seen {
        method: req.method().to_string(),
        path: req.uri().path().to_string(),
        query: query.clone(),
        body: None,
    });
    let offered = header(&req, "sec-websocket-protocol");
    let offered: Vec<&str> = offered.split(',').map(str::trim).collect();
    let Some(protocol) = backend.protocols.iter().find(|p| offered.contains(p)).copied()
    else {
        return reply(
            400,
            status_body(400, "BadRequest", "no supported channel subprotocol offered"),
        );
    };
    let command: Vec<String> = url_decode_pairs(&query)
        .into_iter()
        .filter(|(k, _)| k == "command")
        .map(|(_, v)| v)
        .collect();
    if command.first().map(String::as_str) != Some("chaos") {
        return reply(400, status_body(400, "BadRequest", "only chaos runs here"));
    }
    let accept = tokio_tungstenite::tungstenite::handshake::derive_accept_key(
        header(&req, "sec-websocket-key").as_bytes(),
    );
    let mut child = match tokio::process::Command::new(&backend.bin)
        .args(&command[1..])
        .arg("--journal-dir")
        .arg(&backend.journal_dir)
        .env("CHAOS_STATE_DIR", &backend.state_dir)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
    {
        Ok(c) => c,
        Err(e) => return reply(500, status_body(500, "InternalError", &e.to_string())),
    };
    if let Some(pid) = child.id() {
        state.lock().expect("state").exec_children.push(pid);
    }
    let v5 = protocol.starts_with("v5");
    tokio::spawn(async move {
        use futures_util::{SinkExt, StreamExt};
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        use tokio_tungstenite::tungstenite::Message;
        let Ok(upgraded) = hyper::upgrade::on(&mut req).await else { return };
        let ws = tokio_tungstenite::WebSocketStream::from_raw_socket(
            hyper_util::rt::TokioIo::new(upgraded),
            tokio_tungstenite::tungstenite::protocol::Role::Server,
            None,
        )
        .await;
        let (mut tx, mut rx) = ws.split();
        let mut stdin = child.stdin.take();
        let mut stdout = child.stdout.take().expect("piped stdout");
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            tokio::select! {
                frame = rx.next() => match frame {
                    Some(Ok(Message::Binary(b))) if b.first() == Some(&0) => {
                        if let Some(w) = stdin.as_mut() {
                            if w.write_all(&b[1..]).await.is_err() {
                                stdin = None;
                            }
                        }
                    }
                    // v5: CLOSE(255) of the stdin channel is end of input.
                    Some(Ok(Message::Binary(b))) if v5 && b.as_ref() == [255u8, 0] => {
                        stdin = None;
                    }
                    Some(Ok(_)) => {}
                    // The client went away: end of input for the agent.
                    Some(Err(_)) | None => {
                        stdin = None;
                        break;
                    }
                },
                n = stdout.read(&mut buf) => match n {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        let mut frame = Vec::with_capacity(n + 1);
                        frame.push(1u8);
                        frame.extend_from_slice(&buf[..n]);
                        if tx.send(Message::binary(frame)).await.is_err() {
                            stdin = None;
                            break;
                        }
                    }
                },
            }
        }
        drop(stdin);
        // The agent reverts on end of input; wait for it (bounded).
        let code = tokio::time::timeout(Duration::from_secs(10), child.wait())
            .await
            .ok()
            .and_then(|r| r.ok())
            .and_then(|s| s.code());
        let status = Status {
            status: Some(if code == Some(0) { "Success" } else { "Failure" }.into()),
            message: Some(format!("chaos agent exited with {code:?}")),
            ..Default::default()
        };
        let mut frame = vec![3u8];
        frame.extend(serde_json::to_vec(&status).expect("status serialises"));
        let _ = tx.send(Message::binary(frame)).await;
        let _ = tx.close().await;
    });
    Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header("connection", "Upgrade")
        .header("upgrade", "websocket")
        .header("sec-websocket-accept", accept)
        .header("sec-websocket-protocol", protocol)
        .body(Full::new(Bytes::new()).boxed())
        .expect("101 response")
}

async fn handle(
    state: Arc<Mutex<State>>,
    req: Request<hyper::body::Incoming>,
) -> Response<Body> {
    let upgrade = header(&req, "upgrade").eq_ignore_ascii_case("websocket");
    if upgrade && req.uri().path().ends_with("/exec") {
        let backend = state.lock().expect("state").exec.clone();
        if let Some(b) = backend {
            return exec_upgrade(state, req, b);
        }
    }
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
    if let (
        "GET",
        ["apis", "apps", "v1", "namespaces", ns, kind @ ("deployments" | "statefulsets")],
    ) = (method.as_str(), parts.as_slice())
    {
        if query_param(&query, "watch").as_deref() == Some("true") {
            return watch(&state, ns, kind, &query).await;
        }
    }
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
            let healed = healed_now(&s);
            match s.deployments.iter().find(|d| {
                d.metadata.namespace.as_deref() == Some(*ns)
                    && d.metadata.name.as_deref() == Some(*name)
            }) {
                Some(d) => {
                    let d = deployment_ready(d, healed);
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
        ("GET", ["apis", "apps", "v1", "namespaces", ns, "statefulsets", name]) => {
            let healed = healed_now(&s);
            match s.statefulsets.iter().find(|d| {
                d.metadata.namespace.as_deref() == Some(*ns)
                    && d.metadata.name.as_deref() == Some(*name)
            }) {
                Some(st) => {
                    reply(200, serde_json::to_vec(&with_ready(st, healed)).expect("sts"))
                }
                None => reply(
                    404,
                    status_body(
                        404,
                        "NotFound",
                        &format!("statefulsets.apps \"{name}\" not found"),
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

/// Whether the status reports every replica ready now.
fn healed_now(s: &State) -> bool {
    match (s.last_kill, s.heal_after) {
        (None, _) => true,
        (Some(t), _) if t.elapsed() < s.stale_for => true,
        (Some(t), Some(h)) => t.elapsed() >= h,
        (Some(_), None) => false,
    }
}

fn with_ready(st: &StatefulSet, healed: bool) -> StatefulSet {
    let mut st = st.clone();
    let desired = st.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
    st.status = Some(StatefulSetStatus {
        ready_replicas: Some(if healed { desired } else { desired - 1 }),
        replicas: desired,
        ..Default::default()
    });
    st
}

fn deployment_ready(d: &Deployment, healed: bool) -> Deployment {
    let mut d = d.clone();
    let desired = d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
    d.status = Some(DeploymentStatus {
        ready_replicas: Some(if healed { desired } else { desired - 1 }),
        replicas: Some(desired),
        ..Default::default()
    });
    d
}

/// A watch of one Deployment/StatefulSet (`fieldSelector=metadata.name=`):
/// ADDED with the current state at once, then MODIFIED each time its
/// readiness changes (checked every 20 ms), streamed as it happens,
/// until the watch's `timeoutSeconds` (capped at 5 s, as servers cut
/// watches) or the client goes away. Events are `WatchEvent`s of
/// k8s-openapi, one JSON per line.
async fn watch(
    state: &Arc<Mutex<State>>,
    ns: &str,
    kind: &str,
    query: &str,
) -> Response<Body> {
    let name = query_param(query, "fieldSelector")
        .and_then(|f| f.strip_prefix("metadata.name=").map(str::to_string))
        .unwrap_or_default();
    let timeout = query_param(query, "timeoutSeconds")
        .and_then(|t| t.parse::<u64>().ok())
        .map_or(Duration::from_secs(30), Duration::from_secs)
        .min(Duration::from_secs(5));
    if state.lock().expect("state").watch_fails {
        return reply(
            403,
            status_body(403, "Forbidden", &format!("{kind} is forbidden: cannot watch")),
        );
    }
    let (ns, kind) = (ns.to_string(), kind.to_string());
    let state = state.clone();
    // The readiness now and its event line (`None`: no such object).
    let event = move |first: bool| -> Option<(bool, Vec<u8>)> {
        let s = state.lock().expect("state");
        let healed = healed_now(&s);
        let found = |m: &ObjectMeta| {
            m.namespace.as_deref() == Some(ns.as_str())
                && m.name.as_deref() == Some(name.as_str())
        };
        let line = if kind == "deployments" {
            let d = deployment_ready(
                s.deployments.iter().find(|d| found(&d.metadata))?,
                healed,
            );
            let ev = if first { WatchEvent::Added(d) } else { WatchEvent::Modified(d) };
            serde_json::to_vec(&ev)
        } else {
            let st =
                with_ready(s.statefulsets.iter().find(|d| found(&d.metadata))?, healed);
            let ev = if first { WatchEvent::Added(st) } else { WatchEvent::Modified(st) };
            serde_json::to_vec(&ev)
        };
        let mut line = line.expect("event serialises");
        line.push(b'\n');
        Some((healed, line))
    };
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(16);
    tokio::spawn(async move {
        let end = Instant::now() + timeout;
        let Some((mut was, line)) = event(true) else { return };
        if tx.send(Bytes::from(line)).await.is_err() {
            return;
        }
        while Instant::now() < end {
            tokio::time::sleep(Duration::from_millis(20)).await;
            let Some((healed, line)) = event(false) else { return };
            if healed != was {
                was = healed;
                if tx.send(Bytes::from(line)).await.is_err() {
                    return;
                }
            }
        }
    });
    let frames = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|b| (Ok::<_, Infallible>(Frame::data(b)), rx))
    });
    Response::builder()
        .status(StatusCode::OK)
        .header("content-type", "application/json")
        .body(StreamBody::new(frames).boxed())
        .expect("watch response")
}
