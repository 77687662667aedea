//! deploy/kubernetes parsed into k8s-openapi types (serde_yaml_ng): the
//! RBAC grants exactly what the code calls (`k8s::rbac::NEEDED`), no
//! wildcard and nothing more, the exec grant only in the agent
//! namespace, and the DaemonSet is what the controller looks for
//! (namespace, labels, container name) with what the agent needs.

use std::collections::BTreeSet;

use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::ServiceAccount;
use k8s_openapi::api::rbac::v1::{
    ClusterRole, ClusterRoleBinding, PolicyRule, Role, RoleBinding,
};
use serde::Deserialize;

use chaos::k8s::rbac::{Scope, NEEDED};

use crate::support::repo_root;

fn documents(file: &str) -> Vec<serde_json::Value> {
    let text = std::fs::read_to_string(repo_root().join("deploy/kubernetes").join(file))
        .unwrap();
    serde_yaml_ng::Deserializer::from_str(&text)
        .map(|d| serde_json::Value::deserialize(d).expect("YAML document"))
        .filter(|v| !v.is_null())
        .collect()
}

fn of_kind<T: serde::de::DeserializeOwned>(
    docs: &[serde_json::Value],
    kind: &str,
) -> Vec<T> {
    docs.iter()
        .filter(|d| d["kind"] == kind)
        .map(|d| serde_json::from_value(d.clone()).expect(kind))
        .collect()
}

type Grant = (String, String, String);

fn grants(rules: &[PolicyRule]) -> BTreeSet<Grant> {
    let mut out = BTreeSet::new();
    for r in rules {
        assert!(r.resource_names.is_none() && r.non_resource_urls.is_none(), "{r:?}");
        for g in r.api_groups.iter().flatten() {
            for res in r.resources.iter().flatten() {
                for v in &r.verbs {
                    assert!(g != "*" && res != "*" && v != "*", "no wildcards: {r:?}");
                    out.insert((g.clone(), res.clone(), v.clone()));
                }
            }
        }
    }
    out
}

fn needed(scope: Scope) -> BTreeSet<Grant> {
    NEEDED
        .iter()
        .filter(|n| n.scope == scope)
        .map(|n| (n.api_group.to_string(), n.resource.to_string(), n.verb.to_string()))
        .collect()
}

#[test]
fn rbac_grants_exactly_the_calls_the_code_makes() {
    let docs = documents("rbac.yaml");
    let cluster: Vec<ClusterRole> = of_kind(&docs, "ClusterRole");
    let roles: Vec<Role> = of_kind(&docs, "Role");
    assert_eq!((cluster.len(), roles.len()), (1, 1), "one ClusterRole, one Role");
    let cr = &cluster[0];
    assert_eq!(grants(cr.rules.as_deref().unwrap_or_default()), needed(Scope::Cluster));
    let role = &roles[0];
    assert_eq!(role.metadata.namespace.as_deref(), Some("chaos"), "the agent namespace");
    assert_eq!(
        grants(role.rules.as_deref().unwrap_or_default()),
        needed(Scope::AgentNamespace)
    );
    assert!(
        !grants(cr.rules.as_deref().unwrap_or_default())
            .iter()
            .any(|(_, r, _)| r == "pods/exec"),
        "no exec into workloads"
    );

    // Both bound to the controller's ServiceAccount, nothing else.
    let crb: Vec<ClusterRoleBinding> = of_kind(&docs, "ClusterRoleBinding");
    let rb: Vec<RoleBinding> = of_kind(&docs, "RoleBinding");
    assert_eq!((crb.len(), rb.len()), (1, 1));
    assert_eq!(crb[0].role_ref.kind, "ClusterRole");
    assert_eq!(Some(crb[0].role_ref.name.clone()), cr.metadata.name);
    assert_eq!(rb[0].role_ref.kind, "Role");
    assert_eq!(Some(rb[0].role_ref.name.clone()), role.metadata.name);
    assert_eq!(rb[0].metadata.namespace.as_deref(), Some("chaos"));
    for subjects in [&crb[0].subjects, &rb[0].subjects] {
        let s = subjects.as_deref().unwrap_or_default();
        assert_eq!(s.len(), 1);
        assert_eq!(
            (s[0].kind.as_str(), s[0].name.as_str(), s[0].namespace.as_deref()),
            ("ServiceAccount", "chaos-controller", Some("chaos"))
        );
    }
    let sas: Vec<ServiceAccount> = of_kind(&docs, "ServiceAccount");
    let agent = sas.iter().find(|s| s.metadata.name.as_deref() == Some("chaos-agent"));
    assert_eq!(agent.and_then(|a| a.automount_service_account_token), Some(false));
}

#[test]
fn the_daemonset_is_what_the_controller_looks_for_and_has_what_the_agent_needs() {
    let docs = documents("agent-daemonset.yaml");
    let ds: Vec<DaemonSet> = of_kind(&docs, "DaemonSet");
    assert_eq!(ds.len(), 1);
    let ds = &ds[0];
    // The defaults of [kubernetes] agent_namespace / agent_selector.
    assert_eq!(ds.metadata.namespace.as_deref(), Some("chaos"));
    let tpl = &ds.spec.as_ref().unwrap().template;
    let labels = tpl.metadata.as_ref().unwrap().labels.clone().unwrap();
    assert_eq!(
        labels.get("app.kubernetes.io/name").map(String::as_str),
        Some("chaos-agent")
    );
    let spec = tpl.spec.as_ref().unwrap();
    assert_eq!(spec.host_pid, Some(true), "container pids are host pids");
    assert_eq!(spec.automount_service_account_token, Some(false));
    assert_eq!(spec.service_account_name.as_deref(), Some("chaos-agent"));
    // exec::connect names container "agent".
    let c = spec.containers.iter().find(|c| c.name == "agent").expect("container agent");
    assert_eq!(c.security_context.as_ref().and_then(|s| s.privileged), Some(true));
    let mounts = c.volume_mounts.clone().unwrap_or_default();
    let netns = mounts.iter().find(|m| m.mount_path == "/run/netns").expect("/run/netns");
    assert_eq!(netns.mount_propagation.as_deref(), Some("Bidirectional"));
    assert!(mounts.iter().any(|m| m.mount_path == "/var/lib/chaos/journal"));
    let host_paths: Vec<String> = spec
        .volumes
        .iter()
        .flatten()
        .filter_map(|v| v.host_path.as_ref().map(|h| h.path.clone()))
        .collect();
    assert!(host_paths.contains(&"/run/netns".to_string()), "{host_paths:?}");
    assert!(host_paths.contains(&"/var/lib/chaos/journal".to_string()), "{host_paths:?}");
}
