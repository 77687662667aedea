//! Maps the validated experiment onto the runtime types of the proxy, the
//! fault engine and the statistics engine. Pure: nothing here starts or
//! changes anything, so `--dry-run` and the real run share one plan.

use std::collections::BTreeMap;
use std::str::FromStr;
use std::time::Duration;

use crate::experiment::{
    CohortKeySpec, Experiment, Fault, FaultKind, Hypothesis, MalformedMode, Metric,
    OutageMethod, Selection, UpstreamSpec,
};
use crate::fault::{self, FaultContext, InfraFault, NetFilter};
use crate::stats::{HypothesisSpec, MetricKind};
use crate::target::{BlastRadius, Selection as TargetSelection};
use crate::traffic::MalformedMode as ProxyMalformed;
use crate::traffic::{
    AdminConfig, CohortKey, HttpFault, HttpFaultKind, LatencyDistribution, ProxyConfig,
    ProxyMode, Upstream, UpstreamPools,
};

/// Why the experiment cannot be mapped (should not happen after validation,
/// but the runtime types re-check some invariants).
#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    /// An upstream URL the proxy refused.
    #[error("upstream {url}: {reason}")]
    Upstream { url: String, reason: String },
    /// The proxy configuration was refused.
    #[error("proxy configuration: {0}")]
    Proxy(String),
    /// A signal name nix does not know.
    #[error("unknown signal {0}")]
    Signal(String),
}

fn upstream(u: &UpstreamSpec) -> Result<Upstream, PlanError> {
    let mut up = Upstream::from_str(&u.url)
        .map_err(|e| PlanError::Upstream { url: u.url.clone(), reason: e.to_string() })?;
    up.region = u.region.clone();
    Ok(up)
}

fn pool(list: &[UpstreamSpec]) -> Result<Vec<Upstream>, PlanError> {
    list.iter().map(upstream).collect()
}

fn cohort_key(k: &CohortKeySpec) -> CohortKey {
    match k {
        CohortKeySpec::Header(h) => CohortKey::Header(h.to_ascii_lowercase()),
        CohortKeySpec::Cookie(c) => CohortKey::Cookie(c.clone()),
        CohortKeySpec::ClientIp => CohortKey::ClientIp,
    }
}

/// The cohort proxy at the edge.
pub fn edge_proxy(exp: &Experiment, seed: u64) -> Result<ProxyConfig, PlanError> {
    let t = &exp.traffic;
    let pools = UpstreamPools {
        default: pool(&t.upstreams)?,
        control: pool(&t.control_upstreams)?,
        experiment: pool(&t.experiment_upstreams)?,
    };
    let mut cfg = ProxyConfig::from_parts(
        t.listen,
        pools,
        cohort_key(&t.cohort_key),
        t.experiment_fraction,
        t.control_fraction,
        ProxyMode::Edge,
        // The admin endpoint serves /metrics for Prometheus; changes need
        // the token, which never lives in the experiment file.
        t.admin.map(|listen| AdminConfig {
            listen,
            token: std::env::var("CHAOS_ADMIN_TOKEN").ok().filter(|t| !t.is_empty()),
            allow_remote: t.admin_allow_remote,
        }),
        seed,
    )
    .map_err(|e| PlanError::Proxy(e.to_string()))?;
    cfg.upstream_timeout = t.upstream_timeout;
    cfg.timeouts = t.timeouts;
    cfg.max_header_bytes = t.max_header_bytes;
    cfg.forwarded = t.forwarded;
    cfg.trusted_proxies = t.trusted_proxies.clone();
    cfg.tls = t.tls.clone();
    cfg.upstream_ca = t.upstream_ca.clone();
    Ok(cfg)
}

/// Sidecar proxies in front of dependencies, by name.
pub fn sidecars(
    exp: &Experiment,
    seed: u64,
) -> Result<Vec<(String, ProxyConfig)>, PlanError> {
    let mut out = Vec::new();
    for s in &exp.traffic.sidecars {
        let pools = UpstreamPools {
            default: pool(&s.upstreams)?,
            control: pool(&s.control_upstreams)?,
            experiment: pool(&s.experiment_upstreams)?,
        };
        // Sidecars trust the cohort header set at the edge; the fractions
        // are irrelevant in sidecar mode.
        let mut cfg = ProxyConfig::from_parts(
            s.listen,
            pools,
            CohortKey::ClientIp,
            0.0,
            0.0,
            ProxyMode::Sidecar,
            None,
            seed,
        )
        .map_err(|e| PlanError::Proxy(e.to_string()))?;
        cfg.upstream_timeout = exp.traffic.upstream_timeout.max(Duration::from_secs(30));
        // Sidecars speak plain HTTP to the service; https dependencies are
        // verified against the same CA bundle as the edge's upstreams.
        cfg.upstream_ca = exp.traffic.upstream_ca.clone();
        out.push((s.name.clone(), cfg));
    }
    Ok(out)
}

/// The proxy's runtime form of an HTTP fault (enabled).
pub fn http_fault(f: &Fault) -> Option<HttpFault> {
    let kind = match &f.kind {
        FaultKind::Latency { delay, jitter } => HttpFaultKind::Latency {
            delay: *delay,
            jitter: *jitter,
            distribution: LatencyDistribution::Uniform,
        },
        FaultKind::HttpError { status, body } => {
            HttpFaultKind::Error { status: *status, body: body.clone() }
        }
        FaultKind::Abort => HttpFaultKind::Abort,
        FaultKind::Reset => HttpFaultKind::Reset,
        FaultKind::MalformedPayload { mode } => HttpFaultKind::Malformed {
            mode: match mode {
                MalformedMode::Truncate => ProxyMalformed::Truncate,
                MalformedMode::FlipBytes => ProxyMalformed::FlipBytes,
                MalformedMode::JsonWrongType => ProxyMalformed::JsonWrongType,
                MalformedMode::WrongContentType => ProxyMalformed::WrongContentType,
                MalformedMode::MissingContentType => ProxyMalformed::MissingContentType,
                MalformedMode::Oversized => ProxyMalformed::Oversized,
            },
        },
        _ => return None,
    };
    Some(HttpFault { id: f.id.clone(), kind, probability: f.probability, enabled: true })
}

fn selection(s: Selection) -> TargetSelection {
    match s {
        Selection::Count(c) => TargetSelection::Count(c),
        Selection::Percent(p) => TargetSelection::Percent(p),
    }
}

/// The fault engine's runtime form of an infrastructure fault.
pub fn infra_fault(f: &Fault) -> Result<Option<InfraFault>, PlanError> {
    let target =
        || f.target.clone().expect("validated: infrastructure faults have a target");
    let sel = selection(f.selection);
    let filter = |destinations: &[String], ports: &[u16]| NetFilter {
        destinations: destinations.to_vec(),
        ports: ports.to_vec(),
    };
    Ok(Some(match &f.kind {
        FaultKind::ProcessKill { signal, grace, interval } => {
            let sig = nix::sys::signal::Signal::from_str(signal)
                .map_err(|_| PlanError::Signal(signal.clone()))?;
            InfraFault::ProcessKill(fault::ProcessKill {
                target: target(),
                selection: sel,
                signal: sig,
                grace: *grace,
                interval: *interval,
            })
        }
        FaultKind::ProcessPause => InfraFault::ProcessPause(fault::ProcessPause {
            target: target(),
            selection: sel,
        }),
        FaultKind::Netem(n) => InfraFault::Netem(fault::Netem {
            target: target(),
            selection: sel,
            delay: n.delay,
            jitter: n.jitter,
            loss: n.loss,
            corrupt: n.corrupt,
            duplicate: n.duplicate,
            reorder: n.reorder,
            rate: n.rate.clone(),
        }),
        FaultKind::PacketLoss { loss, destinations, ports } => {
            InfraFault::PacketLoss(fault::NftLoss {
                target: target(),
                selection: sel,
                loss: *loss,
                filter: filter(destinations, ports),
            })
        }
        FaultKind::Blackhole { destinations, ports } => {
            InfraFault::Blackhole(fault::NftBlackhole {
                target: target(),
                selection: sel,
                filter: filter(destinations, ports),
            })
        }
        FaultKind::TcpReset { destinations, ports } => {
            InfraFault::TcpReset(fault::NftReset {
                target: target(),
                selection: sel,
                filter: filter(destinations, ports),
            })
        }
        FaultKind::Bandwidth { rate } => InfraFault::Bandwidth(fault::Tbf {
            target: target(),
            selection: sel,
            rate: rate.clone(),
        }),
        FaultKind::RegionOutage { region, method } => {
            InfraFault::RegionOutage(fault::RegionOutage {
                region: region.clone(),
                method: match method {
                    OutageMethod::Blackhole => fault::OutageMethod::Blackhole,
                    OutageMethod::Pause => fault::OutageMethod::Pause,
                },
            })
        }
        _ => return Ok(None),
    }))
}

/// Regions, blast radius and seed for target resolution.
pub fn fault_context(exp: &Experiment, seed: u64, run_id: &str) -> FaultContext {
    let regions: BTreeMap<_, _> =
        exp.regions.iter().map(|r| (r.name.clone(), r.targets.clone())).collect();
    FaultContext {
        regions,
        seed,
        limits: BlastRadius {
            max_targets: Some(exp.safety.max_targets),
            max_percent: Some(exp.safety.max_target_fraction),
        },
        run_id: run_id.to_string(),
    }
}

/// The statistics engine's form of a hypothesis.
pub fn hypothesis_spec(h: &Hypothesis, min_samples: u64) -> HypothesisSpec {
    let kind = match &h.metric {
        Metric::Latency => MetricKind::LatencyDistribution,
        Metric::LatencyQuantile(q) => MetricKind::LatencyQuantile(*q),
        Metric::ErrorRate => MetricKind::ErrorRate,
        Metric::Throughput => MetricKind::Throughput,
        Metric::PromQl(_) => MetricKind::Samples,
    };
    HypothesisSpec {
        name: h.name.clone(),
        kind,
        tolerance: h.tolerance,
        critical: h.critical,
        min_samples,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::experiment::load_bytes;
    use std::path::Path;

    const EXP: &str = r#"
[experiment]
name = "plan"
duration = "30s"
[traffic]
listen = "127.0.0.1:18080"
upstream = [{ url = "http://127.0.0.1:18001", region = "us-east" }]
experiment_upstream = "http://127.0.0.1:18002"
cohort_key = "header:X-User"
experiment_percent = 10
control_percent = 10
upstream_timeout = "2s"
admin = "127.0.0.1:18099"
[[traffic.sidecar]]
name = "pay"
listen = "127.0.0.1:18091"
upstream = "http://127.0.0.1:18011"
[[region]]
name = "us-east"
targets = ["netns:use1"]
[[hypothesis]]
name = "p99"
metric = "latency_p99"
tolerance = "+10%"
[[fault]]
kind = "latency"
delay = "200ms"
probability = "50%"
at = "pay"
[[fault]]
kind = "process-kill"
target = "name:api"
signal = "TERM"
percent = "50%"
[[fault]]
kind = "packet-loss"
target = "netns:use1"
loss = "10%"
ports = [80]
[[fault]]
kind = "region-outage"
region = "us-east"
"#;

    fn exp() -> Experiment {
        let l = load_bytes(Path::new("plan.toml"), EXP.as_bytes());
        l.experiment.unwrap_or_else(|| panic!("{:?}", l.diagnostics))
    }

    #[test]
    fn maps_traffic_onto_the_edge_proxy_and_its_sidecars() {
        let e = exp();
        let edge = edge_proxy(&e, 7).expect("edge");
        assert_eq!(edge.listen.port(), 18080);
        assert_eq!(edge.pools.default[0].region.as_deref(), Some("us-east"));
        assert_eq!(edge.pools.experiment.len(), 1);
        assert!(edge.pools.control.is_empty(), "control falls back to the default pool");
        assert_eq!(edge.cohort_key, CohortKey::Header("x-user".into()));
        assert_eq!((edge.experiment_fraction, edge.control_fraction), (0.1, 0.1));
        assert_eq!(edge.upstream_timeout, Duration::from_secs(2));
        assert_eq!(edge.admin.as_ref().map(|a| a.listen.port()), Some(18099));
        let sc = sidecars(&e, 7).expect("sidecars");
        assert_eq!(sc.len(), 1);
        assert_eq!(sc[0].0, "pay");
        assert_eq!(sc[0].1.mode, ProxyMode::Sidecar);
    }

    #[test]
    fn maps_each_fault_to_exactly_one_runtime_kind() {
        let e = exp();
        let latency = http_fault(&e.faults[0]).expect("http fault");
        assert_eq!(latency.probability, 0.5);
        assert!(matches!(latency.kind, HttpFaultKind::Latency { .. }));
        assert!(infra_fault(&e.faults[0]).expect("ok").is_none());
        for (i, want) in [(1, "process-kill"), (2, "packet-loss"), (3, "region-outage")] {
            assert!(http_fault(&e.faults[i]).is_none());
            let f = infra_fault(&e.faults[i]).expect("maps").expect("infra");
            assert_eq!(f.kind(), want);
        }
        match infra_fault(&e.faults[1]).expect("ok") {
            Some(InfraFault::ProcessKill(k)) => {
                assert_eq!(k.signal, nix::sys::signal::Signal::SIGTERM);
                assert_eq!(k.selection, TargetSelection::Percent(0.5));
            }
            other => panic!("{other:?}"),
        }
        let ctx = fault_context(&e, 3, "run-1");
        assert_eq!(ctx.regions["us-east"].len(), 1);
        assert_eq!(ctx.limits.max_targets, Some(3));
    }

    #[test]
    fn maps_hypotheses_onto_the_statistics_engine() {
        let e = exp();
        let spec = hypothesis_spec(&e.hypotheses[0], 500);
        assert_eq!(spec.kind, MetricKind::LatencyQuantile(0.99));
        assert_eq!(spec.min_samples, 500);
    }
}
