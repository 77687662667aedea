//! Reaching the API server: kubeconfig and in-cluster configuration as
//! kubectl resolves them (an explicit file, else `KUBECONFIG`, else
//! `~/.kube/config`, else the pod's service account; the current
//! context unless one is named), a runtime of its own (the fault engine
//! is synchronous, and a kube `Client` must stay on the runtime that
//! made it), every call bounded by the request timeout, and API errors
//! turned into messages that say what to do.

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kube::config::{KubeConfigOptions, Kubeconfig};

use super::spec::Settings;
use super::K8sError;

/// A connection to one cluster.
pub struct Kube {
    rt: Option<tokio::runtime::Runtime>,
    pub client: kube::Client,
    pub timeout: Duration,
    /// The cluster URL, for messages.
    pub server: String,
    /// Every API call made, in order (`METHOD path?query`), for the dry
    /// run and the journal.
    calls: Arc<Mutex<Vec<String>>>,
}

impl Kube {
    /// Resolves the configuration and builds a client. Nothing is sent
    /// to the server yet.
    pub fn connect(settings: &Settings) -> Result<Kube, K8sError> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("kube")
            .enable_all()
            .build()
            .map_err(|e| K8sError::Config(format!("cannot start a runtime: {e}")))?;
        let (file, context, timeout) = (
            settings.kubeconfig.clone(),
            settings.context.clone(),
            settings.request_timeout,
        );
        let made = on_thread(&rt, async move {
            let opts = KubeConfigOptions { context, ..Default::default() };
            let mut config = match &file {
                Some(path) => {
                    let kc = Kubeconfig::read_from(path).map_err(|e| {
                        K8sError::Config(format!("{}: {e}", path.display()))
                    })?;
                    kube::Config::from_custom_kubeconfig(kc, &opts)
                        .await
                        .map_err(|e| K8sError::Config(format!("{}: {e}", path.display())))?
                }
                None if opts.context.is_some() => kube::Config::from_kubeconfig(&opts)
                    .await
                    .map_err(|e| K8sError::Config(e.to_string()))?,
                None => kube::Config::infer().await.map_err(|e| {
                    K8sError::Config(format!(
                        "{e} (set KUBECONFIG, kubeconfig = \"...\" in [kubernetes], or run \
                         in a pod with a service account)"
                    ))
                })?,
            };
            // The bound that names the call is `call`'s own timeout; the
            // client's fire a little later, only as a backstop.
            let backstop = timeout + Duration::from_secs(1);
            config.connect_timeout = Some(backstop);
            config.read_timeout = Some(backstop);
            config.write_timeout = Some(backstop);
            // No silent retries: a 429 on an eviction is a
            // PodDisruptionBudget's answer, not a transient failure, and
            // every call must end within the request timeout.
            config.default_retry = false;
            let server = config.cluster_url.to_string();
            let client = kube::Client::try_from(config)
                .map_err(|e| K8sError::Config(format!("cannot build a client: {e}")))?;
            Ok::<_, K8sError>((client, server))
        })?;
        let (client, server) = made;
        Ok(Kube { rt: Some(rt), client, timeout, server, calls: Arc::default() })
    }

    /// Runs one API call on the client's runtime, bounded by the request
    /// timeout; `call` names it in errors and the call log.
    pub fn call<T, F>(&self, call: &str, fut: F) -> Result<T, K8sError>
    where
        T: Send,
        F: Future<Output = Result<T, kube::Error>> + Send,
    {
        if let Ok(mut c) = self.calls.lock() {
            c.push(call.to_string());
        }
        let timeout = self.timeout;
        let rt = self.rt.as_ref().expect("runtime lives as long as Kube");
        match on_thread(rt, async move { tokio::time::timeout(timeout, fut).await }) {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(api_error(call, e, timeout)),
            Err(_) => Err(K8sError::Timeout { call: call.to_string(), timeout }),
        }
    }

    /// Runs any future on the client's runtime (long-lived streams).
    pub fn block_on<T: Send>(&self, fut: impl Future<Output = T> + Send) -> T {
        on_thread(self.rt.as_ref().expect("runtime lives as long as Kube"), fut)
    }

    /// Logs a call made outside [`Kube::call`] (a watch stream).
    pub fn note_call(&self, call: &str) {
        if let Ok(mut c) = self.calls.lock() {
            c.push(call.to_string());
        }
    }

    /// The calls made so far.
    pub fn calls(&self) -> Vec<String> {
        self.calls.lock().map(|c| c.clone()).unwrap_or_default()
    }
}

impl Drop for Kube {
    fn drop(&mut self) {
        // Dropping a runtime inside an async context panics; this does not.
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

/// Blocks on `fut` on `rt` from a thread of its own, so it works from
/// plain threads and from inside the runner's runtime alike.
fn on_thread<T: Send>(
    rt: &tokio::runtime::Runtime,
    fut: impl Future<Output = T> + Send,
) -> T {
    std::thread::scope(|s| {
        let h = s.spawn(|| rt.block_on(fut));
        match h.join() {
            Ok(v) => v,
            Err(p) => std::panic::resume_unwind(p),
        }
    })
}

/// An API error with a hint on what to do.
pub fn api_error(call: &str, e: kube::Error, timeout: Duration) -> K8sError {
    match e {
        kube::Error::Api(s) => {
            let hint = match s.code {
                401 => " (the credentials in the kubeconfig were refused: expired token or \
                        wrong user?)",
                403 => " (RBAC: grant this verb to the identity chaos runs as; \
                        deploy/kubernetes/rbac.yaml lists what chaos needs)",
                404 => " (no such object: check the namespace and name)",
                409 => " (conflict: the object changed or is being deleted; try again)",
                429 => " (the API server refused for now: a PodDisruptionBudget or rate limit)",
                500..=599 => " (the API server failed; see its logs)",
                _ => "",
            };
            K8sError::Api {
                call: call.to_string(),
                status: s.code,
                reason: s.reason.clone(),
                message: s.message.clone(),
                hint: hint.to_string(),
            }
        }
        other => {
            let text = other.to_string();
            if text.contains("timed out") || text.contains("deadline") {
                K8sError::Timeout { call: call.to_string(), timeout }
            } else {
                K8sError::Transport { call: call.to_string(), cause: text }
            }
        }
    }
}
