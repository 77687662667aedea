//! The Kubernetes permissions `chaos` needs, call by call: the single
//! list `deploy/kubernetes/rbac.yaml` must grant, no more (a test parses
//! the manifest into k8s-openapi types and compares).

/// Where a grant applies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Scope {
    /// Every namespace a target may live in (a ClusterRole).
    Cluster,
    /// Only the agent DaemonSet's namespace (a Role there).
    AgentNamespace,
}

/// One verb on one resource, and the call that needs it.
#[derive(Debug, Clone, Copy)]
pub struct Need {
    pub scope: Scope,
    /// "" is the core group.
    pub api_group: &'static str,
    pub resource: &'static str,
    pub verb: &'static str,
    pub why: &'static str,
}

const fn need(
    scope: Scope,
    api_group: &'static str,
    resource: &'static str,
    verb: &'static str,
    why: &'static str,
) -> Need {
    Need { scope, api_group, resource, verb, why }
}

/// Everything the code calls.
pub const NEEDED: &[Need] = &[
    need(
        Scope::Cluster,
        "",
        "pods",
        "list",
        "api::list_pods: a target's pods by label selector",
    ),
    need(Scope::Cluster, "", "pods", "delete", "api::delete_pod: pod-kill"),
    need(
        Scope::Cluster,
        "",
        "pods/eviction",
        "create",
        "api::evict_pod: pod-kill with eviction",
    ),
    need(
        Scope::Cluster,
        "apps",
        "deployments",
        "get",
        "api::pod_selector, api::replicas",
    ),
    need(Scope::Cluster, "apps", "deployments", "watch", "watch::until_ready"),
    need(
        Scope::Cluster,
        "apps",
        "statefulsets",
        "get",
        "api::pod_selector, api::replicas",
    ),
    need(Scope::Cluster, "apps", "statefulsets", "watch", "watch::until_ready"),
    need(
        Scope::AgentNamespace,
        "",
        "pods",
        "list",
        "exec::find_agent: the agent pod on a node",
    ),
    need(
        Scope::AgentNamespace,
        "",
        "pods/exec",
        "create",
        "exec::connect (API servers from 1.31 authorize the WebSocket upgrade as create)",
    ),
    need(
        Scope::AgentNamespace,
        "",
        "pods/exec",
        "get",
        "exec::connect (older API servers authorize the WebSocket GET as get)",
    ),
];
