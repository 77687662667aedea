//! The validated experiment: every value here has passed the checks in
//! `parse`, so runtime code never re-validates (bounded, positive, in range).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use crate::target::TargetSelector;
use crate::units::Tolerance;

/// A whole experiment file after validation.
#[derive(Debug, Clone)]
pub struct Experiment {
    /// The file it came from.
    pub file: PathBuf,
    /// `[experiment]`.
    pub meta: Meta,
    /// `[traffic]`.
    pub traffic: Traffic,
    /// `[load]`: synthetic traffic the runner generates (demos, CI gates).
    pub load: Option<Load>,
    /// `[[hypothesis]]`, in file order.
    pub hypotheses: Vec<Hypothesis>,
    /// `[[fault]]`, in file order.
    pub faults: Vec<Fault>,
    /// `[[region]]`: region labels for targets.
    pub regions: Vec<Region>,
    /// `[safety]`.
    pub safety: Safety,
    /// `[prometheus]`: a server to evaluate PromQL hypotheses against.
    pub prometheus: Option<PrometheusSource>,
    /// `[[guardrail]]`: PromQL abort conditions checked during the run.
    pub guardrails: Vec<Guardrail>,
    /// `[[host]]` / `[ssh]`: the fleet for host targets (or `--inventory`).
    pub hosts: Option<crate::fleet::inventory::Inventory>,
    /// `[kubernetes]`: the cluster, self-healing checks (its pod faults
    /// are in `faults`).
    pub kubernetes: Option<crate::k8s::spec::Settings>,
    /// `[otel]`: where each run's trace goes; `None` = no tracing.
    pub otel: Option<OtelSink>,
}

/// `[otel]`: an OTLP/HTTP (protobuf) trace receiver, e.g. an OpenTelemetry
/// Collector, Jaeger or Tempo.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OtelSink {
    /// Full URL spans are POSTed to (`/v1/traces` added when the file gave
    /// only `http://host:port`).
    pub endpoint: String,
    /// `service.name` of the run's spans.
    pub service_name: String,
}

/// `[[guardrail]]`: abort (and revert) as soon as `query` is above `above`,
/// without statistics — e.g. an SLO burn rate.
#[derive(Debug, Clone, PartialEq)]
pub struct Guardrail {
    /// Shown in the abort reason.
    pub name: String,
    /// An instant PromQL query returning one number.
    pub query: String,
    /// Threshold; strictly above it aborts.
    pub above: f64,
}

/// `[experiment]`.
#[derive(Debug, Clone)]
pub struct Meta {
    /// Human name, shown in reports.
    pub name: String,
    /// What the experiment tests and why.
    pub description: String,
    /// Observation time with faults active.
    pub duration: Duration,
    /// Fault-free observation before injection (sizes the abort monitor,
    /// checks the split).
    pub baseline: Duration,
    /// Per-cohort minimum; below it a hypothesis is inconclusive.
    pub min_samples: u64,
    /// Significance level of the final verdict.
    pub alpha: f64,
    /// Significance level of the sequential abort monitor.
    pub alpha_abort: f64,
    /// Seed for target selection and bootstrap; recorded in reports.
    pub seed: Option<u64>,
}

/// How a request is mapped to a cohort.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CohortKeySpec {
    /// `header:NAME`
    Header(String),
    /// `cookie:NAME`
    Cookie(String),
    /// `client-ip`
    ClientIp,
}

/// One upstream URL with an optional region label.
#[derive(Debug, Clone, PartialEq)]
pub struct UpstreamSpec {
    /// `http://host:port`
    pub url: String,
    /// Region label, e.g. `us-east`.
    pub region: Option<String>,
}

/// A sidecar proxy the runner starts between a service and a dependency;
/// it faults only requests already tagged `x-chaos-cohort: experiment`.
#[derive(Debug, Clone)]
pub struct SidecarSpec {
    /// Referenced by HTTP faults as `at = "NAME"`.
    pub name: String,
    /// Where the service sends its dependency calls.
    pub listen: SocketAddr,
    /// The real dependency.
    pub upstreams: Vec<UpstreamSpec>,
    /// The control cluster's instance of the dependency; empty = `upstreams`.
    pub control_upstreams: Vec<UpstreamSpec>,
    /// The experiment cluster's instance; empty = `upstreams`.
    pub experiment_upstreams: Vec<UpstreamSpec>,
}

/// `[traffic]`.
#[derive(Debug, Clone)]
pub struct Traffic {
    /// Where the cohort proxy listens.
    pub listen: SocketAddr,
    /// Pool for untouched traffic (and for cohorts without their own pool).
    pub upstreams: Vec<UpstreamSpec>,
    /// ChAP's control cluster; empty = `upstreams`.
    pub control_upstreams: Vec<UpstreamSpec>,
    /// ChAP's experiment cluster; empty = `upstreams`.
    pub experiment_upstreams: Vec<UpstreamSpec>,
    /// Sticky cohort key.
    pub cohort_key: CohortKeySpec,
    /// Share of keys in the experiment cohort, in [0, 1].
    pub experiment_fraction: f64,
    /// Share of keys in the control cohort, in [0, 1].
    pub control_fraction: f64,
    /// Per-request upstream timeout.
    pub upstream_timeout: Duration,
    /// Admin/metrics endpoint (loopback unless stated).
    pub admin: Option<SocketAddr>,
    /// A non-loopback `admin` was asked for explicitly (the run also needs
    /// CHAOS_ADMIN_TOKEN).
    pub admin_allow_remote: bool,
    /// Sidecar proxies in front of dependencies.
    pub sidecars: Vec<SidecarSpec>,
    /// Client header read, idle keep-alive and body idle timeouts of the
    /// edge proxy (`client_header_timeout`, `idle_timeout`,
    /// `request_body_timeout`, `response_body_timeout`).
    pub timeouts: crate::traffic::Timeouts,
    /// `max_header_bytes`: largest request head (431 beyond).
    pub max_header_bytes: usize,
    /// `forwarded = "append" | "replace" | "off"`.
    pub forwarded: crate::traffic::ForwardedMode,
    /// `trusted_proxies = ["10.0.0.0/8", ...]`.
    pub trusted_proxies: Vec<crate::traffic::IpNet>,
    /// `tls_cert` + `tls_key`: the edge proxy terminates TLS for clients.
    pub tls: Option<crate::tls::ServerTlsFiles>,
    /// `upstream_ca`: CA bundle for `https://` upstreams (system roots
    /// when unset).
    pub upstream_ca: Option<std::path::PathBuf>,
}

/// `[load]`: open-loop synthetic traffic sent to `traffic.listen`.
#[derive(Debug, Clone)]
pub struct Load {
    /// Request path, e.g. `/checkout`.
    pub path: String,
    /// Requests per second.
    pub rate: f64,
    /// Maximum requests in flight.
    pub concurrency: usize,
    /// Header carrying a random user id (matches `cohort_key` when it is a header).
    pub key_header: String,
    /// Number of distinct user ids.
    pub keys: u64,
    /// Zipf exponent of the user-id mix (`keys = { count, zipf }`); `None`
    /// draws ids uniformly.
    pub key_zipf: Option<f64>,
    /// How long a client waits for a response before giving up; `None`
    /// means the proxy's upstream timeout plus one second. Requests given
    /// up on count as failures of their cohort.
    pub timeout: Option<Duration>,
}

/// What a hypothesis measures.
#[derive(Debug, Clone, PartialEq)]
pub enum Metric {
    /// Whole latency distribution (Mann-Whitney on a scale shift).
    Latency,
    /// A latency quantile in (0, 1), e.g. 0.99.
    LatencyQuantile(f64),
    /// Share of failed requests.
    ErrorRate,
    /// Requests per second per window.
    Throughput,
    /// A PromQL query with `$cohort`, evaluated per cohort as a range query.
    PromQl(String),
}

impl Metric {
    /// The name written in the file.
    pub fn name(&self) -> String {
        match self {
            Metric::Latency => "latency".into(),
            Metric::LatencyQuantile(q) => format!("latency_p{}", (q * 100.0).round()),
            Metric::ErrorRate => "error_rate".into(),
            Metric::Throughput => "throughput".into(),
            Metric::PromQl(_) => "promql".into(),
        }
    }
}

/// `[[hypothesis]]`: "the experiment cohort is at most `tolerance` worse".
#[derive(Debug, Clone)]
pub struct Hypothesis {
    /// Shown in reports and JUnit testcase names.
    pub name: String,
    /// What is measured.
    pub metric: Metric,
    /// The steady-state margin.
    pub tolerance: Tolerance,
    /// Stop early and revert when clearly worse than this.
    pub abort: Option<Tolerance>,
    /// Must be accepted for the run to be accepted (with none marked
    /// critical, every hypothesis must be); any rejection rejects the run.
    pub critical: bool,
}

/// Which processes a process fault selects among the matches.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Selection {
    /// Exactly this many (at most the number of matches).
    Count(u32),
    /// This fraction of the matches, rounded up.
    Percent(f64),
}

/// Malformed-payload variants.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MalformedMode {
    /// Cut the body short.
    Truncate,
    /// Flip random bytes.
    FlipBytes,
    /// Change a JSON field to a wrong type.
    JsonWrongType,
    /// A wrong content-type header.
    WrongContentType,
    /// No content-type header.
    MissingContentType,
    /// A body far larger than expected.
    Oversized,
}

/// How a region outage is produced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutageMethod {
    /// nftables drop in every namespace/interface of the region.
    Blackhole,
    /// SIGSTOP every process of the region.
    Pause,
}

/// Netem parameters (all optional; at least one set).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct NetemSpec {
    /// Added delay.
    pub delay: Option<Duration>,
    /// Jitter around the delay.
    pub jitter: Option<Duration>,
    /// Packet loss fraction.
    pub loss: Option<f64>,
    /// Corruption fraction.
    pub corrupt: Option<f64>,
    /// Duplication fraction.
    pub duplicate: Option<f64>,
    /// Reorder fraction.
    pub reorder: Option<f64>,
    /// Rate limit as tc writes it, e.g. `1mbit`.
    pub rate: Option<String>,
}

/// The fault-specific part of a `[[fault]]`.
#[derive(Debug, Clone, PartialEq)]
pub enum FaultKind {
    /// Added latency, experiment cohort only.
    Latency { delay: Duration, jitter: Duration },
    /// A synthetic error response.
    HttpError { status: u16, body: String },
    /// Close the connection without a response.
    Abort,
    /// TCP reset.
    Reset,
    /// A corrupted response.
    MalformedPayload { mode: MalformedMode },
    /// Signal processes (default SIGKILL), optionally TERM-then-KILL.
    ProcessKill { signal: String, grace: Option<Duration>, interval: Option<Duration> },
    /// SIGSTOP, reverted by SIGCONT.
    ProcessPause,
    /// tc netem on an interface.
    Netem(NetemSpec),
    /// nftables random drop.
    PacketLoss { loss: f64, destinations: Vec<String>, ports: Vec<u16> },
    /// nftables drop everything (optionally only some destinations/ports).
    Blackhole { destinations: Vec<String>, ports: Vec<u16> },
    /// nftables `reject with tcp reset`.
    TcpReset { destinations: Vec<String>, ports: Vec<u16> },
    /// tbf rate limit.
    Bandwidth { rate: String },
    /// Every target of a region unreachable.
    RegionOutage { region: String, method: OutageMethod },
    /// A pod fault through the Kubernetes API (`[[kubernetes.fault]]`).
    Kubernetes(crate::k8s::spec::PodFault),
}

impl FaultKind {
    /// The `kind = "..."` name.
    pub fn name(&self) -> &'static str {
        match self {
            FaultKind::Latency { .. } => "latency",
            FaultKind::HttpError { .. } => "http-error",
            FaultKind::Abort => "abort",
            FaultKind::Reset => "reset",
            FaultKind::MalformedPayload { .. } => "malformed-payload",
            FaultKind::ProcessKill { .. } => "process-kill",
            FaultKind::ProcessPause => "process-pause",
            FaultKind::Netem(_) => "netem",
            FaultKind::PacketLoss { .. } => "packet-loss",
            FaultKind::Blackhole { .. } => "blackhole",
            FaultKind::TcpReset { .. } => "tcp-reset",
            FaultKind::Bandwidth { .. } => "bandwidth",
            FaultKind::RegionOutage { .. } => "region-outage",
            FaultKind::Kubernetes(p) => p.kind_name(),
        }
    }

    /// HTTP faults are applied by the cohort proxy (or a sidecar) to the
    /// experiment cohort; the rest act on processes and interfaces.
    pub fn is_http(&self) -> bool {
        matches!(
            self,
            FaultKind::Latency { .. }
                | FaultKind::HttpError { .. }
                | FaultKind::Abort
                | FaultKind::Reset
                | FaultKind::MalformedPayload { .. }
        )
    }
}

/// `[[fault]]`.
#[derive(Debug, Clone, PartialEq)]
pub struct Fault {
    /// Stable id (`name` or `fault-N`), used in journals and reports.
    pub id: String,
    /// Offset from the start of injection.
    pub start: Duration,
    /// How long it stays; `None` = until the observation ends.
    pub duration: Option<Duration>,
    /// HTTP faults: share of experiment requests affected.
    pub probability: f64,
    /// HTTP faults: `edge` (the cohort proxy) or a sidecar name.
    pub at: String,
    /// Infrastructure faults: what is hit.
    pub target: Option<TargetSelector>,
    /// Infrastructure faults on other hosts: the target with its host
    /// part (`...@host:NAME`, `...@hosts:K=V`); `None` = this machine.
    pub host_target: Option<crate::target::place::Placement>,
    /// Process faults: how many of the matches.
    pub selection: Selection,
    /// The kind and its parameters.
    pub kind: FaultKind,
}

/// `[[region]]`: a region label for a set of targets.
#[derive(Debug, Clone, PartialEq)]
pub struct Region {
    /// Region name, e.g. `us-east`.
    pub name: String,
    /// Targets that make up the region.
    pub targets: Vec<TargetSelector>,
    /// The targets as written; on inventory hosts `{host}` becomes each
    /// host's name (see `runner::remote`).
    pub texts: Vec<String>,
}

impl Fault {
    /// Where the fault runs when `hosts` is the run's inventory: its
    /// `@host:`/`@hosts:` target, or, for a `region-outage` whose region
    /// labels inventory hosts (`labels = {region = "..."}`), every host
    /// of that region. `None` = this machine. The inventory decides
    /// because it says where a region lives; a region no host carries
    /// stays a local `[[region]]`.
    pub fn placement(
        &self,
        hosts: Option<&crate::fleet::inventory::Inventory>,
    ) -> Option<crate::target::place::Placement> {
        if let Some(p) = &self.host_target {
            return Some(p.clone());
        }
        let FaultKind::RegionOutage { region, .. } = &self.kind else { return None };
        let pairs = vec![("region".to_string(), region.clone())];
        let inv = hosts?;
        inv.hosts.iter().any(|h| h.matches(&pairs)).then(|| {
            crate::target::place::Placement {
                selector: TargetSelector::Region(region.clone()),
                text: format!("region:{region}"),
                place: crate::target::place::Place::Hosts(pairs),
            }
        })
    }
}

/// `[safety]`: the blast radius.
#[derive(Debug, Clone, PartialEq)]
pub struct Safety {
    /// Never hit more processes/interfaces than this per fault.
    pub max_targets: u32,
    /// Never hit more than this fraction of the matches per fault.
    pub max_target_fraction: f64,
    /// Hard cap on the whole run, baseline included.
    pub max_duration: Duration,
    /// Abort when the cohort split drifts (sample-ratio mismatch).
    pub abort_on_srm: bool,
    /// Abort without statistics when the experiment error rate exceeds this.
    pub max_error_rate: Option<f64>,
    /// Never reach more hosts than this per fault (`@host:`/`@hosts:`
    /// targets); `None` = no limit beyond the selector itself.
    pub max_hosts: Option<u32>,
    /// Never reach more than this fraction of the inventory's hosts per
    /// fault; `None` = no limit.
    pub max_host_fraction: Option<f64>,
}

impl Safety {
    /// The host blast radius, as `inject`/`kill` take it from flags.
    pub fn host_limits(&self) -> crate::fleet::inventory::HostLimits {
        crate::fleet::inventory::HostLimits {
            max_hosts: self.max_hosts,
            max_host_percent: self.max_host_fraction,
        }
    }
}

/// `[prometheus]`: where PromQL hypotheses are evaluated.
#[derive(Debug, Clone, PartialEq)]
pub struct PrometheusSource {
    /// Base URL, e.g. `http://127.0.0.1:9090`.
    pub url: String,
    /// Query step.
    pub step: Duration,
    /// Per-request timeout.
    pub timeout: Duration,
    /// Bearer token (from the environment via `${VAR}`).
    pub bearer_token: Option<String>,
    /// Basic auth `user:password`.
    pub basic_auth: Option<(String, String)>,
    /// CA bundle for an `https://` URL (system roots when unset).
    pub ca_file: Option<std::path::PathBuf>,
}
