//! Kubernetes targets: `pod:NAMESPACE/LABEL_SELECTOR`,
//! `deployment:NAMESPACE/NAME`, `statefulset:NAMESPACE/NAME`. The
//! namespace ends at the first `/` (namespaces are DNS labels; label
//! selectors may contain `/`, as in `app.kubernetes.io/name=web`).

use std::fmt;

/// Namespaces no fault touches unless the file says
/// `allow_system_namespaces = true`: the cluster's own machinery.
pub const SYSTEM_NAMESPACES: &[&str] = &["kube-system", "kube-public", "kube-node-lease"];

/// What a Kubernetes fault hits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Workload {
    /// Pods matching a label selector (`kubectl get pods -l` syntax).
    Pods { namespace: String, selector: String },
    /// A Deployment's pods (through its `spec.selector`).
    Deployment { namespace: String, name: String },
    /// A StatefulSet's pods (through its `spec.selector`).
    StatefulSet { namespace: String, name: String },
}

/// The kinds accepted, for messages.
pub const WORKLOAD_KINDS: &str =
    "pod:NAMESPACE/LABEL_SELECTOR, deployment:NAMESPACE/NAME, \
statefulset:NAMESPACE/NAME";

fn dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

fn dns_subdomain(s: &str) -> bool {
    !s.is_empty() && s.len() <= 253 && s.split('.').all(dns_label)
}

/// A label selector kubectl accepts: `k=v`, `k==v`, `k!=v`, `k`, `!k`,
/// `k in (a,b)`, `k notin (a,b)`, comma-separated. Checked for the
/// characters only; the API server has the last word.
fn plausible_selector(s: &str) -> bool {
    !s.trim().is_empty()
        && s.len() <= 1024
        && s.chars().all(|c| c.is_ascii_alphanumeric() || "=!,()-_./ ".contains(c))
}

impl Workload {
    /// True when `text` names a Kubernetes target (by its kind prefix).
    pub fn is_kubernetes(text: &str) -> bool {
        ["pod:", "deployment:", "statefulset:"].iter().any(|p| text.starts_with(p))
    }

    /// Parses `kind:NAMESPACE/REST`; the error says what was expected.
    pub fn parse(text: &str) -> Result<Workload, String> {
        let Some((kind, rest)) = text.split_once(':') else {
            return Err(format!(
                "target {text:?} has no kind; expected {WORKLOAD_KINDS}"
            ));
        };
        let Some((namespace, value)) = rest.split_once('/') else {
            return Err(format!(
                "target {text:?} has no namespace; write {kind}:NAMESPACE/..."
            ));
        };
        if !dns_label(namespace) {
            return Err(format!(
                "{namespace:?} is not a namespace name (lowercase letters, digits, '-')"
            ));
        }
        let namespace = namespace.to_string();
        match kind {
            "pod" if plausible_selector(value) => {
                Ok(Workload::Pods { namespace, selector: value.trim().to_string() })
            }
            "pod" => {
                Err(format!("{value:?} is not a label selector (e.g. app=web,tier!=db)"))
            }
            "deployment" | "statefulset" if dns_subdomain(value) => {
                let name = value.to_string();
                Ok(if kind == "deployment" {
                    Workload::Deployment { namespace, name }
                } else {
                    Workload::StatefulSet { namespace, name }
                })
            }
            "deployment" | "statefulset" => {
                Err(format!("{value:?} is not a {kind} name"))
            }
            other => {
                Err(format!("unknown target kind {other:?}; expected {WORKLOAD_KINDS}"))
            }
        }
    }

    pub fn namespace(&self) -> &str {
        match self {
            Workload::Pods { namespace, .. }
            | Workload::Deployment { namespace, .. }
            | Workload::StatefulSet { namespace, .. } => namespace,
        }
    }

    /// True for the cluster's own namespaces.
    pub fn in_system_namespace(&self) -> bool {
        SYSTEM_NAMESPACES.contains(&self.namespace())
    }
}

impl fmt::Display for Workload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Workload::Pods { namespace, selector } => {
                write!(f, "pod:{namespace}/{selector}")
            }
            Workload::Deployment { namespace, name } => {
                write!(f, "deployment:{namespace}/{name}")
            }
            Workload::StatefulSet { namespace, name } => {
                write!(f, "statefulset:{namespace}/{name}")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_each_kind_and_keeps_slashes_in_selectors() {
        assert_eq!(
            Workload::parse("pod:shop/app.kubernetes.io/name=web,tier!=db").unwrap(),
            Workload::Pods {
                namespace: "shop".into(),
                selector: "app.kubernetes.io/name=web,tier!=db".into()
            }
        );
        assert_eq!(
            Workload::parse("deployment:shop/checkout").unwrap().to_string(),
            "deployment:shop/checkout"
        );
        assert!(matches!(
            Workload::parse("statefulset:db/pg").unwrap(),
            Workload::StatefulSet { .. }
        ));
    }

    #[test]
    fn refuses_bad_targets_with_a_reason() {
        assert!(Workload::parse("pod:shop").unwrap_err().contains("no namespace"));
        assert!(Workload::parse("pod:Shop/app=x").unwrap_err().contains("namespace"));
        assert!(Workload::parse("deployment:shop/Bad_Name")
            .unwrap_err()
            .contains("name"));
        assert!(Workload::parse("job:shop/x").unwrap_err().contains("unknown"));
        assert!(Workload::parse("pod:shop/app=$(x)").is_err());
    }

    #[test]
    fn knows_system_namespaces() {
        assert!(Workload::parse("pod:kube-system/k8s-app=kube-dns")
            .unwrap()
            .in_system_namespace());
        assert!(!Workload::parse("pod:shop/app=x").unwrap().in_system_namespace());
    }
}
