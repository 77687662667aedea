//! Kubernetes: pods, deployments and statefulsets as fault targets,
//! through the Kubernetes API (the `kube` client over rustls).
//!
//! - [`target`]: `pod:NS/SELECTOR`, `deployment:NS/NAME`,
//!   `statefulset:NS/NAME` and the system-namespace guard.
//! - [`select`]: Chaos Mesh's selection modes, seeded, within the blast
//!   radius.
//! - [`spec`]: the `[kubernetes]` section of an experiment file.
//! - [`client`]: kubeconfig / in-cluster configuration as kubectl
//!   resolves it, a runtime of its own, API errors named plainly.
//! - [`api`]: the calls used (list, get, delete, eviction, readiness).
//! - [`inject`]: pod faults as `fault::Injector`s for the runner, and
//!   the self-healing checks.
//! - [`heal`]: the checks' watchers, started at each kill.
//! - [`inpod`]: faults inside a pod's container, through the agent on
//!   the pod's node.
//! - [`rbac`]: the permissions the calls need (what rbac.yaml grants).
//! - [`watch`]: waiting for ready replicas, by watch with a polling
//!   fallback.
//! - [`exec`]: a transport to `chaos agent` in the DaemonSet pod on a
//!   node, over the pods/exec WebSocket.

pub mod api;
pub mod client;
pub mod exec;
pub mod heal;
pub mod inject;
pub mod inpod;
pub mod rbac;
pub mod select;
pub mod spec;
pub mod target;
pub mod watch;

/// Errors talking to the Kubernetes API or resolving targets there.
#[derive(Debug, thiserror::Error)]
pub enum K8sError {
    #[error("kubernetes configuration: {0}")]
    Config(String),
    #[error("{call}: {status} {reason}: {message}{hint}")]
    Api { call: String, status: u16, reason: String, message: String, hint: String },
    #[error("{call}: no answer from the API server within {timeout:?}")]
    Timeout { call: String, timeout: std::time::Duration },
    #[error("{call}: {cause}")]
    Transport { call: String, cause: String },
    #[error("{0}")]
    Target(String),
}

impl K8sError {
    /// Exit code: a target that does not fit is invalid input (2);
    /// everything the cluster says or fails to say is the environment (5).
    pub fn exit_code(&self) -> u8 {
        match self {
            K8sError::Target(_) => crate::exit::INVALID,
            _ => crate::exit::ENVIRONMENT,
        }
    }

    /// The HTTP status of an API error, if this is one.
    pub fn status(&self) -> Option<u16> {
        match self {
            K8sError::Api { status, .. } => Some(*status),
            _ => None,
        }
    }
}
