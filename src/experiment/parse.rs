//! Turns a parsed TOML document into a validated [`Experiment`], reporting
//! every problem (not just the first) with its span and a hint.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use super::diagnostic::{did_you_mean, Sink};
use super::model::*;
use super::reader::{table_of, tables_of, At, TableReader};
use crate::target::place::Placement;
use crate::target::{TargetSelector, SELECTOR_KINDS};
use crate::units::Tolerance;

/// Every fault kind accepted in `kind = "..."`.
pub const FAULT_KINDS: &[&str] = &[
    "latency",
    "http-error",
    "abort",
    "reset",
    "malformed-payload",
    "process-kill",
    "process-pause",
    "netem",
    "packet-loss",
    "blackhole",
    "tcp-reset",
    "bandwidth",
    "region-outage",
];

/// Every metric accepted in `metric = "..."`.
pub const METRICS: &[&str] = &[
    "latency",
    "latency_p50",
    "latency_p90",
    "latency_p95",
    "latency_p99",
    "error_rate",
    "throughput",
    "promql",
];

const MALFORMED_MODES: &[&str] = &[
    "truncate",
    "flip-bytes",
    "json-wrong-type",
    "wrong-content-type",
    "missing-content-type",
    "oversized",
];

const SECTIONS: &[&str] = &[
    "experiment",
    "traffic",
    "load",
    "hypothesis",
    "fault",
    "region",
    "safety",
    "prometheus",
    "guardrail",
    "host",
    "ssh",
    "kubernetes",
    "otel",
];

/// Parses and validates `src` (the contents of `file`).
pub fn parse(file: &Path, src: &str, sink: &mut Sink) -> Option<Experiment> {
    let doc = super::reader::parse_document(src, sink)?;
    let root = doc.as_table();
    let mut top = TableReader::new(root, String::new(), Some(0..0));

    let meta =
        section(&mut top, sink, "experiment", true).and_then(|t| read_meta(t, sink));
    let sidecars_and_traffic =
        section(&mut top, sink, "traffic", true).and_then(|t| read_traffic(t, sink));
    let load = section(&mut top, sink, "load", false).and_then(|t| read_load(t, sink));
    let regions = read_regions(&mut top, sink);
    let safety = match section(&mut top, sink, "safety", false) {
        Some(t) => read_safety(t, sink),
        None => Some(default_safety()),
    };
    let prometheus = section(&mut top, sink, "prometheus", false)
        .and_then(|t| read_prometheus(t, sink));
    let hypotheses = read_hypotheses(&mut top, sink, prometheus.is_some());
    let guardrails = read_guardrails(&mut top, sink, prometheus.is_some());
    let otel = section(&mut top, sink, "otel", false).and_then(|t| read_otel(t, sink));
    let region_names: BTreeSet<String> = regions.iter().map(|r| r.name.clone()).collect();
    let sidecar_names: BTreeSet<String> = sidecars_and_traffic
        .as_ref()
        .map(|t| t.sidecars.iter().map(|s| s.name.clone()).collect())
        .unwrap_or_default();
    let faults = read_faults(&mut top, sink, &regions, &region_names, &sidecar_names);
    let hosts = crate::fleet::inventory::read_experiment_hosts(src, sink);
    let (kubernetes, pod_faults) = crate::k8s::spec::read(src, sink);
    // Unknown top-level sections.
    for (key, item) in root.iter() {
        if SECTIONS.contains(&key) {
            continue;
        }
        let hint = match did_you_mean(key, SECTIONS) {
            Some(s) => format!("did you mean [{s}]?"),
            None => format!("valid sections: {}", SECTIONS.join(", ")),
        };
        let span = root.key(key).and_then(|k| k.span()).or_else(|| item.span());
        sink.error(span, key, format!("unknown section or key `{key}`"), &hint);
    }

    let (meta, traffic, safety) = (meta?, sidecars_and_traffic?, safety?);
    cross_checks(sink, &meta, &traffic, load.as_ref(), &faults, &safety, &regions);
    check_host_blast_radius(sink, &faults, &safety, hosts.as_ref());
    if sink.has_errors() {
        return None;
    }
    Some(Experiment {
        file: file.to_path_buf(),
        meta,
        traffic,
        load,
        hypotheses: hypotheses.into_iter().map(|h| h.value).collect(),
        faults: faults.into_iter().map(|f| f.value).chain(pod_faults).collect(),
        regions,
        safety,
        prometheus,
        guardrails,
        hosts,
        kubernetes,
        otel,
    })
}

/// `[otel] endpoint = "http://HOST:PORT[/PATH]"`, `service_name`.
fn read_otel(mut t: TableReader, sink: &mut Sink) -> Option<OtelSink> {
    let endpoint = t.req_string(sink, "endpoint", "endpoint = \"http://127.0.0.1:4318\"");
    let service = t.string(sink, "service_name", "service_name = \"chaos\"");
    t.finish(sink);
    let endpoint = endpoint?;
    let url = match crate::otel::endpoint_url(&endpoint.value) {
        Ok(url) => url,
        Err(problem) => {
            sink.error(
                endpoint.span,
                "otel.endpoint",
                format!("invalid OTLP endpoint {:?}: {problem}", endpoint.value),
                "write the collector's OTLP/HTTP receiver, e.g. \"http://127.0.0.1:4318\" \
                 (/v1/traces is added)",
            );
            return None;
        }
    };
    let service_name = match service {
        Some(s) if s.value.trim().is_empty() => {
            sink.error(
                s.span,
                "otel.service_name",
                "service_name is empty".into(),
                "leave it out for the default \"chaos\"",
            );
            return None;
        }
        Some(s) => s.value,
        None => "chaos".to_string(),
    };
    Some(OtelSink { endpoint: url, service_name })
}

fn read_guardrails(
    top: &mut TableReader,
    sink: &mut Sink,
    has_prom: bool,
) -> Vec<Guardrail> {
    let Some(item) = top.item("guardrail") else { return Vec::new() };
    let Some(tables) = tables_of(item) else {
        sink.error(
            item.span(),
            "guardrail",
            "`guardrail` must be an array of tables".into(),
            "write each guardrail as [[guardrail]] with name, query and above",
        );
        return Vec::new();
    };
    if !has_prom {
        sink.error(
            item.span(),
            "guardrail",
            "guardrails are PromQL queries and need a [prometheus] section".into(),
            "add [prometheus] url = \"http://127.0.0.1:9090\"",
        );
    }
    let mut out = Vec::new();
    for (i, (tab, span)) in tables.into_iter().enumerate() {
        let mut r = TableReader::new(tab, format!("guardrail[{i}]"), span);
        let name = r.req_string(sink, "name", "name = \"SLO burn rate\"");
        let query =
            r.req_string(sink, "query", "an instant PromQL query returning one number");
        let above = match r.item("above") {
            None => {
                r.missing(
                    sink,
                    "above",
                    "above = 14.4 (abort when the query is above this)",
                );
                None
            }
            Some(_) => r.number(sink, "above", "a number, e.g. above = 14.4"),
        };
        r.finish(sink);
        if let (Some(n), Some(q), Some(a)) = (name, query, above) {
            out.push(Guardrail { name: n.value, query: q.value, above: a.value });
        }
    }
    out
}

/// A `[name]` table, or a diagnostic when it is required and missing or
/// is not a table.
fn section<'d>(
    top: &mut TableReader<'d>,
    sink: &mut Sink,
    name: &'static str,
    required: bool,
) -> Option<TableReader<'d>> {
    match top.item(name) {
        None => {
            if required {
                sink.error(
                    Some(0..0),
                    name,
                    format!("missing required section [{name}]"),
                    &format!("add a [{name}] table; see README \"File format\""),
                );
            }
            None
        }
        Some(item) => match table_of(item) {
            Some((t, span)) => Some(TableReader::new(t, name.to_string(), span)),
            None => {
                sink.error(
                    item.span(),
                    name,
                    format!("`{name}` must be a table, written [{name}]"),
                    &format!("write [{name}] on its own line followed by its keys"),
                );
                None
            }
        },
    }
}

fn read_meta(mut t: TableReader, sink: &mut Sink) -> Option<Meta> {
    let name = t.req_string(sink, "name", "give the experiment a name: name = \"...\"");
    if let Some(n) = &name {
        if n.value.trim().is_empty() {
            sink.error(
                n.span.clone(),
                "experiment.name",
                "name is empty".into(),
                "write a name",
            );
        }
    }
    let description =
        t.string(sink, "description", "a sentence: what and why").map(|d| d.value);
    let duration = match t.item("duration") {
        None => {
            t.missing(
                sink,
                "duration",
                "how long faults stay active, e.g. duration = \"60s\"",
            );
            None
        }
        Some(_) => t.duration(sink, "duration", false),
    };
    let baseline = t.duration(sink, "baseline", true);
    let min_samples =
        t.integer(sink, "min_samples", 1..=1_000_000_000, "per-cohort minimum, e.g. 500");
    let alpha = read_alpha(&mut t, sink, "alpha", 0.05);
    let alpha_abort = read_alpha(&mut t, sink, "alpha_abort", 0.01);
    let seed = t.integer(sink, "seed", 0..=i64::MAX, "any non-negative integer");
    t.finish(sink);
    Some(Meta {
        name: name?.value,
        description: description.unwrap_or_default(),
        duration: duration?.value,
        baseline: baseline.map(|b| b.value).unwrap_or(Duration::from_secs(5)),
        min_samples: min_samples.map(|m| m.value as u64).unwrap_or(100),
        alpha,
        alpha_abort,
        seed: seed.map(|s| s.value as u64),
    })
}

fn read_alpha(
    t: &mut TableReader,
    sink: &mut Sink,
    key: &'static str,
    default: f64,
) -> f64 {
    match t.number(sink, key, "a significance level such as 0.05") {
        Some(a) if a.value > 0.0 && a.value <= 0.2 => a.value,
        Some(a) => {
            sink.error(
                a.span,
                &t.key_path(key),
                format!("`{key}` = {} must be in (0, 0.2]", a.value),
                "typical values: alpha = 0.05, alpha_abort = 0.01",
            );
            default
        }
        None => default,
    }
}

fn parse_socket(
    sink: &mut Sink,
    t: &TableReader,
    key: &str,
    s: &At<String>,
) -> Option<SocketAddr> {
    match s.value.parse::<SocketAddr>() {
        Ok(a) => Some(a),
        Err(_) => {
            sink.error(
                s.span.clone(),
                &t.key_path(key),
                format!("`{key}` = {:?} is not an IP:port address", s.value),
                "write e.g. \"127.0.0.1:8080\" (host names are not resolved here)",
            );
            None
        }
    }
}

/// Checks an upstream URL: `http://host:port[/]`, `h2c://host:port[/]` or
/// `https://host[:port][/]` (https defaults to port 443).
fn check_url(sink: &mut Sink, path: &str, s: &At<String>) -> bool {
    let v = &s.value;
    let problem = if let Some(rest) =
        v.strip_prefix("http://").or(v.strip_prefix("h2c://"))
    {
        let authority = rest.split('/').next().unwrap_or("");
        match authority.rsplit_once(':') {
            Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok() => None,
            _ => Some("expected http://HOST:PORT"),
        }
    } else if let Some(rest) = v.strip_prefix("https://") {
        let authority = rest.split('/').next().unwrap_or("");
        let host_ok = |h: &str| !h.is_empty() && !h.contains(['@', ' ', '?', '#']);
        match authority.rsplit_once(':') {
            _ if authority.starts_with('[') && authority.ends_with(']') => None,
            Some((host, port)) if !host.ends_with(']') && host.contains(':') => {
                let _ = port;
                Some("write an IPv6 host in brackets: https://[::1]:8443")
            }
            Some((host, port)) if host_ok(host) && port.parse::<u16>().is_ok() => None,
            None if host_ok(authority) => None,
            _ => Some("expected https://HOST[:PORT]"),
        }
    } else {
        Some("expected a URL starting with http://, https:// or h2c:// (HTTP/2 prior knowledge)")
    };
    match problem {
        None => true,
        Some(p) => {
            sink.error(
                s.span.clone(),
                path,
                format!("invalid upstream {v:?}: {p}"),
                "write e.g. \"http://127.0.0.1:9000\" or \"https://api.internal:8443\"",
            );
            false
        }
    }
}

/// A PEM file key (`tls_cert`, `upstream_ca`, ...): loaded now with
/// `load`, so a missing, unreadable or non-PEM file is reported at the
/// key instead of when the run starts.
fn read_pem_path<T>(
    t: &mut TableReader,
    sink: &mut Sink,
    key: &'static str,
    load: impl Fn(&std::path::Path) -> Result<T, crate::tls::TlsError>,
) -> Option<At<std::path::PathBuf>> {
    let s = t.string(sink, key, &format!("{key} = \"/etc/chaos/{key}.pem\""))?;
    let path = std::path::PathBuf::from(&s.value);
    if let Err(e) = load(&path) {
        sink.error(
            s.span.clone(),
            &t.key_path(key),
            format!("`{key}`: {e}"),
            "give the path of a readable PEM file (relative paths are taken from \
             the working directory)",
        );
        return None;
    }
    Some(At { value: path, span: s.span })
}

/// `tls_cert` + `tls_key` (both or neither, a matching pair) and
/// `upstream_ca` of `[traffic]`.
fn read_traffic_tls(
    t: &mut TableReader,
    sink: &mut Sink,
) -> (Option<crate::tls::ServerTlsFiles>, Option<std::path::PathBuf>) {
    let cert = read_pem_path(t, sink, "tls_cert", crate::tls::load_certs);
    let key = read_pem_path(t, sink, "tls_key", crate::tls::load_key);
    let upstream_ca = read_pem_path(t, sink, "upstream_ca", crate::tls::load_certs);
    let tls = match (cert, key) {
        (Some(cert), Some(key)) => {
            let files = crate::tls::ServerTlsFiles { cert: cert.value, key: key.value };
            match crate::tls::server_config(&files) {
                Ok(_) => Some(files),
                Err(e) => {
                    sink.error(
                        key.span,
                        "traffic.tls_key",
                        e.to_string(),
                        "tls_key must be the private key of the first certificate \
                         in tls_cert",
                    );
                    None
                }
            }
        }
        _ => {
            let given = |t: &mut TableReader, k| t.item(k).map(|i| i.span());
            let (c, k) = (given(t, "tls_cert"), given(t, "tls_key"));
            if let Some((span, missing)) = match (c, k) {
                (Some(span), None) => Some((span, "tls_key")),
                (None, Some(span)) => Some((span, "tls_cert")),
                _ => None,
            } {
                sink.error(
                    span,
                    &t.key_path(missing),
                    format!(
                        "TLS needs both `tls_cert` and `tls_key`; `{missing}` is missing"
                    ),
                    "add tls_cert = \"cert.pem\" and tls_key = \"key.pem\" together",
                );
            }
            None
        }
    };
    (tls, upstream_ca.map(|c| c.value))
}

/// `key = "url"` | `key = ["url", ...]` | `key = [{ url = "...", region = "..." }]`.
fn read_upstreams(
    t: &mut TableReader,
    sink: &mut Sink,
    key: &'static str,
) -> Vec<UpstreamSpec> {
    let path = t.key_path(key);
    let Some(item) = t.item(key) else { return Vec::new() };
    let mut out = Vec::new();
    if item.as_str().is_some() {
        if let Some(s) = t.string(sink, key, "") {
            if check_url(sink, &path, &s) {
                out.push(UpstreamSpec { url: s.value, region: None });
            }
        }
        return out;
    }
    if let Some(tables) = tables_of(item).filter(|v| !v.is_empty()) {
        for (i, (tab, span)) in tables.into_iter().enumerate() {
            let mut r = TableReader::new(tab, format!("{path}[{i}]"), span);
            let url = r.req_string(sink, "url", "url = \"http://127.0.0.1:9000\"");
            let region = r.string(sink, "region", "a region label such as \"us-east\"");
            r.finish(sink);
            if let Some(url) = url {
                if check_url(sink, &format!("{path}[{i}].url"), &url) {
                    out.push(UpstreamSpec {
                        url: url.value,
                        region: region.map(|r| r.value),
                    });
                }
            }
        }
        return out;
    }
    if let Some(list) = t.strings(sink, key, "write upstream URLs as strings") {
        for (i, s) in list.into_iter().enumerate() {
            if check_url(sink, &format!("{path}[{i}]"), &s) {
                out.push(UpstreamSpec { url: s.value, region: None });
            }
        }
    }
    out
}

fn read_traffic(mut t: TableReader, sink: &mut Sink) -> Option<Traffic> {
    let listen = match t.req_string(sink, "listen", "listen = \"127.0.0.1:8080\"") {
        Some(s) => parse_socket(sink, &t, "listen", &s),
        None => None,
    };
    let upstreams = read_upstreams(&mut t, sink, "upstream");
    let control_upstreams = read_upstreams(&mut t, sink, "control_upstream");
    let experiment_upstreams = read_upstreams(&mut t, sink, "experiment_upstream");
    if t.item("upstream").is_none() {
        t.missing(
            sink,
            "upstream",
            "upstream = \"http://127.0.0.1:9000\" (or a list with regions)",
        );
    }
    let cohort_key = match t.string(sink, "cohort_key", "") {
        None => Some(CohortKeySpec::Header("x-user-id".into())),
        Some(s) => {
            let parsed = match s.value.split_once(':') {
                Some(("header", n)) if valid_token(n) => {
                    Some(CohortKeySpec::Header(n.into()))
                }
                Some(("cookie", n)) if valid_token(n) => {
                    Some(CohortKeySpec::Cookie(n.into()))
                }
                None if s.value == "client-ip" => Some(CohortKeySpec::ClientIp),
                _ => None,
            };
            if parsed.is_none() {
                sink.error(
                    s.span.clone(),
                    "traffic.cohort_key",
                    format!("invalid cohort_key {:?}", s.value),
                    "write \"header:NAME\", \"cookie:NAME\" or \"client-ip\"",
                );
            }
            parsed
        }
    };
    let experiment = t.percent(sink, "experiment_percent");
    let control = t.percent(sink, "control_percent");
    let exp_f = experiment.as_ref().map(|e| e.value).unwrap_or(0.05);
    let ctl_f = control.as_ref().map(|c| c.value).unwrap_or(exp_f);
    for (name, v) in [("experiment_percent", &experiment), ("control_percent", &control)]
    {
        if let Some(v) = v {
            if v.value <= 0.0 {
                sink.error(
                    v.span.clone(),
                    &format!("traffic.{name}"),
                    format!("`{name}` must be greater than 0%"),
                    "each cohort needs traffic; 1% to 10% is typical",
                );
            }
        }
    }
    if exp_f + ctl_f > 1.0 + 1e-9 {
        sink.error(
            control.as_ref().or(experiment.as_ref()).and_then(|c| c.span.clone()),
            "traffic.control_percent",
            format!(
                "cohort percentages sum to {}%, more than 100%",
                ((exp_f + ctl_f) * 100.0).round()
            ),
            "experiment_percent + control_percent must be at most 100",
        );
    } else if (exp_f - ctl_f).abs() > 1e-9 {
        sink.warn(
            control.as_ref().and_then(|c| c.span.clone()),
            "traffic.control_percent",
            "control and experiment cohorts differ in size".into(),
            "equal cohorts give the most statistical power per unit of blast radius",
        );
    }
    if exp_f > 0.25 {
        sink.warn(
            experiment.as_ref().and_then(|e| e.span.clone()),
            "traffic.experiment_percent",
            format!(
                "{}% of traffic in the experiment cohort is a large blast radius",
                exp_f * 100.0
            ),
            "start small (1-5%) and grow once the experiment passes",
        );
    }
    let upstream_timeout = t.duration(sink, "upstream_timeout", false);
    let allow_remote =
        t.boolean(sink, "admin_allow_remote").map(|b| b.value).unwrap_or(false);
    let admin = match t.string(sink, "admin", "") {
        Some(s) => {
            let a = parse_socket(sink, &t, "admin", &s);
            if let Some(a) = a {
                // The token never lives in the file (CHAOS_ADMIN_TOKEN at
                // run time, checked again when the proxy starts).
                if let Some(why) =
                    crate::traffic::admin::exposure_refusal(a, allow_remote, true)
                {
                    sink.error(
                        s.span.clone(),
                        "traffic.admin",
                        format!("admin endpoint {why}"),
                        "keep it on 127.0.0.1, or set admin_allow_remote = true and \
                         export CHAOS_ADMIN_TOKEN for the run",
                    );
                }
            }
            a
        }
        None => None,
    };
    let edge = read_edge_limits(&mut t, sink);
    let sidecars = read_sidecars(&mut t, sink);
    let (tls, upstream_ca) = read_traffic_tls(&mut t, sink);
    t.finish(sink);
    Some(Traffic {
        listen: listen?,
        upstreams,
        control_upstreams,
        experiment_upstreams,
        cohort_key: cohort_key?,
        experiment_fraction: exp_f,
        control_fraction: ctl_f,
        upstream_timeout: upstream_timeout
            .map(|d| d.value)
            .unwrap_or(Duration::from_secs(10)),
        admin,
        admin_allow_remote: allow_remote,
        sidecars,
        timeouts: edge.timeouts,
        max_header_bytes: edge.max_header_bytes,
        forwarded: edge.forwarded,
        trusted_proxies: edge.trusted_proxies,
        tls,
        upstream_ca,
    })
}

/// The edge proxy's timeouts, header limit and forwarding rules.
struct EdgeLimits {
    timeouts: crate::traffic::Timeouts,
    max_header_bytes: usize,
    forwarded: crate::traffic::ForwardedMode,
    trusted_proxies: Vec<crate::traffic::IpNet>,
}

fn read_edge_limits(t: &mut TableReader, sink: &mut Sink) -> EdgeLimits {
    let d = crate::traffic::Timeouts::default();
    let mut dur = |key: &'static str, default: Duration| {
        t.duration(sink, key, false).map(|d| d.value).unwrap_or(default)
    };
    let timeouts = crate::traffic::Timeouts {
        client_header: dur("client_header_timeout", d.client_header),
        idle: dur("idle_timeout", d.idle),
        request_body: dur("request_body_timeout", d.request_body),
        response_body: dur("response_body_timeout", d.response_body),
    };
    let max_header_bytes = t
        .integer(
            sink,
            "max_header_bytes",
            8192..=1024 * 1024,
            "a request head limit in bytes, e.g. 32768 (HAProxy's default is 16384)",
        )
        .map(|v| v.value as usize)
        .unwrap_or(crate::traffic::config::DEFAULT_MAX_HEADER_BYTES);
    let forwarded =
        match t.string(sink, "forwarded", "one of \"append\", \"replace\", \"off\"") {
            Some(s) => match s.value.parse() {
                Ok(m) => m,
                Err(e) => {
                    sink.error(
                    s.span.clone(),
                    &t.key_path("forwarded"),
                    format!("{e}"),
                    "append keeps a trusted proxy's X-Forwarded-For and adds the peer",
                );
                    Default::default()
                }
            },
            None => Default::default(),
        };
    let mut trusted_proxies = Vec::new();
    for (i, s) in t
        .strings(
            sink,
            "trusted_proxies",
            "a list such as [\"10.0.0.0/8\", \"127.0.0.1\"]",
        )
        .unwrap_or_default()
        .into_iter()
        .enumerate()
    {
        match s.value.parse() {
            Ok(n) => trusted_proxies.push(n),
            Err(e) => sink.error(
                s.span.clone(),
                &format!("{}[{i}]", t.key_path("trusted_proxies")),
                format!("{e}"),
                "write an address or network, e.g. \"10.0.0.0/8\"",
            ),
        }
    }
    EdgeLimits { timeouts, max_header_bytes, forwarded, trusted_proxies }
}

fn valid_token(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
}

fn read_sidecars(t: &mut TableReader, sink: &mut Sink) -> Vec<SidecarSpec> {
    let Some(item) = t.item("sidecar") else { return Vec::new() };
    let Some(tables) = tables_of(item) else {
        sink.error(
            item.span(),
            "traffic.sidecar",
            "`sidecar` must be an array of tables".into(),
            "write [[traffic.sidecar]] with name, listen and upstream",
        );
        return Vec::new();
    };
    let mut out = Vec::new();
    let mut seen = BTreeSet::new();
    for (i, (tab, span)) in tables.into_iter().enumerate() {
        let mut r = TableReader::new(tab, format!("traffic.sidecar[{i}]"), span);
        let name = r.req_string(
            sink,
            "name",
            "name = \"payments\" (faults refer to it with at)",
        );
        let listen = r
            .req_string(sink, "listen", "listen = \"127.0.0.1:9101\"")
            .and_then(|s| parse_socket(sink, &r, "listen", &s));
        let upstreams = read_upstreams(&mut r, sink, "upstream");
        let control_upstreams = read_upstreams(&mut r, sink, "control_upstream");
        let experiment_upstreams = read_upstreams(&mut r, sink, "experiment_upstream");
        if r.item("upstream").is_none() {
            r.missing(sink, "upstream", "upstream = \"http://127.0.0.1:9001\"");
        }
        r.finish(sink);
        if let Some(n) = &name {
            if n.value == "edge" || !seen.insert(n.value.clone()) {
                sink.error(
                    n.span.clone(),
                    &format!("traffic.sidecar[{i}].name"),
                    format!("sidecar name {:?} is reserved or used twice", n.value),
                    "give every sidecar a unique name other than \"edge\"",
                );
            }
        }
        if let (Some(name), Some(listen)) = (name, listen) {
            if !upstreams.is_empty() {
                out.push(SidecarSpec {
                    name: name.value,
                    listen,
                    upstreams,
                    control_upstreams,
                    experiment_upstreams,
                });
            }
        }
    }
    out
}

fn read_load(mut t: TableReader, sink: &mut Sink) -> Option<Load> {
    let path = t.string(sink, "path", "path = \"/checkout\"");
    if let Some(p) = &path {
        if !crate::load::valid_request_path(&p.value) {
            sink.error(
                p.span.clone(),
                "load.path",
                format!(
                    "load path {:?} is not a request path (it must start with / and \
                     hold no spaces, control characters or #)",
                    p.value
                ),
                "write e.g. \"/checkout\"; percent-encode anything else (%20)",
            );
        }
    }
    let rate = t.number(sink, "rate", "requests per second, e.g. 200");
    if let Some(r) = &rate {
        if !(r.value > 0.0 && r.value <= 100_000.0) {
            sink.error(
                r.span.clone(),
                "load.rate",
                format!("rate {} must be in (0, 100000] requests per second", r.value),
                "e.g. rate = 200",
            );
        }
    }
    let concurrency = t.integer(sink, "concurrency", 1..=10_000, "e.g. concurrency = 64");
    let key_header = t.string(sink, "key_header", "e.g. key_header = \"x-user-id\"");
    if let Some(k) = &key_header {
        if !crate::load::valid_header_name(&k.value) {
            sink.error(
                k.span.clone(),
                "load.key_header",
                format!("key_header {:?} is not an HTTP header name", k.value),
                "a header name is letters, digits and !#$%&'*+-.^_`|~ (RFC 9110), \
                 e.g. \"x-user-id\"",
            );
        }
    }
    let (keys, key_zipf) = read_load_keys(&mut t, sink);
    let timeout = t.duration(sink, "timeout", false);
    t.finish(sink);
    Some(Load {
        path: path.map(|p| p.value).unwrap_or_else(|| "/".into()),
        rate: rate.map(|r| r.value).unwrap_or(100.0),
        concurrency: concurrency.map(|c| c.value as usize).unwrap_or(64),
        key_header: key_header.map(|k| k.value).unwrap_or_else(|| "x-user-id".into()),
        keys: keys.unwrap_or(10_000),
        key_zipf,
        timeout: timeout.map(|d| d.value),
    })
}

/// Most keys a Zipf mix may have: the generator keeps one cumulative
/// weight per key (8 MB at this size).
pub const MAX_ZIPF_KEYS: i64 = 1_000_000;

/// `keys = 10000` (uniform) or `keys = { count = 500, zipf = 1.1 }`: user
/// ids drawn with weight 1/rank^zipf, the heavy-tailed traffic of real
/// users (a few send most requests).
fn read_load_keys(t: &mut TableReader, sink: &mut Sink) -> (Option<u64>, Option<f64>) {
    let hint =
        "distinct user ids, e.g. keys = 10000 or keys = { count = 500, zipf = 1.1 }";
    let Some(item) = t.item("keys") else { return (None, None) };
    if item.as_integer().is_some() || table_of(item).is_none() {
        let n = t.integer(sink, "keys", 1..=1_000_000_000, hint);
        return (n.map(|k| k.value as u64), None);
    }
    let Some((table, span)) = table_of(item) else { return (None, None) };
    let mut k = TableReader::new(table, t.key_path("keys"), span);
    let count = k.integer(sink, "count", 1..=MAX_ZIPF_KEYS, "e.g. count = 500");
    if count.is_none() && table.get("count").is_none() {
        k.missing(sink, "count", "e.g. keys = { count = 500, zipf = 1.1 }");
    }
    let zipf = k.number(sink, "zipf", "the Zipf exponent, e.g. zipf = 1.1");
    let zipf = match zipf {
        Some(z) if z.value > 0.0 && z.value <= 5.0 => Some(z.value),
        Some(z) => {
            sink.error(
                z.span.clone(),
                &k.key_path("zipf"),
                format!("zipf = {} must be in (0, 5]", z.value),
                "real user traffic is near 1, e.g. zipf = 1.1",
            );
            None
        }
        None => {
            if table.get("zipf").is_none() {
                k.missing(sink, "zipf", "e.g. keys = { count = 500, zipf = 1.1 }");
            }
            None
        }
    };
    k.finish(sink);
    (count.map(|c| c.value as u64), zipf)
}

fn read_hypotheses(
    top: &mut TableReader,
    sink: &mut Sink,
    has_prom: bool,
) -> Vec<At<Hypothesis>> {
    let Some(item) = top.item("hypothesis") else {
        sink.error(
            Some(0..0),
            "hypothesis",
            "no [[hypothesis]]: an experiment needs at least one steady-state hypothesis"
                .into(),
            "add e.g. [[hypothesis]] name = \"latency holds\" metric = \"latency_p99\" \
             tolerance = \"+10%\"",
        );
        return Vec::new();
    };
    let Some(tables) = tables_of(item) else {
        sink.error(
            item.span(),
            "hypothesis",
            "`hypothesis` must be an array of tables".into(),
            "write each hypothesis as [[hypothesis]] (double brackets)",
        );
        return Vec::new();
    };
    let mut out: Vec<At<Hypothesis>> = Vec::new();
    let mut names = BTreeSet::new();
    for (i, (tab, span)) in tables.into_iter().enumerate() {
        let mut r = TableReader::new(tab, format!("hypothesis[{i}]"), span.clone());
        if let Some(h) = read_hypothesis(&mut r, sink, has_prom) {
            if !names.insert(h.name.clone()) {
                sink.error(
                    span.clone(),
                    &format!("hypothesis[{i}].name"),
                    format!("hypothesis name {:?} is used twice", h.name),
                    "names identify hypotheses in reports and JUnit; make them unique",
                );
            }
            out.push(At { value: h, span });
        }
        r.finish(sink);
    }
    out
}

fn read_hypothesis(
    r: &mut TableReader,
    sink: &mut Sink,
    has_prom: bool,
) -> Option<Hypothesis> {
    let path = r.path.clone();
    let name = r.req_string(sink, "name", "name = \"p99 latency holds\"");
    let metric_s =
        r.req_string(sink, "metric", &format!("one of: {}", METRICS.join(", ")));
    let query = r.string(sink, "query", "a PromQL expression containing $cohort");
    let tolerance = match r.item("tolerance") {
        None => {
            r.missing(sink, "tolerance", "e.g. tolerance = \"+10%\" or \"+0.5pp\"");
            None
        }
        Some(_) => r.tolerance(sink, "tolerance"),
    };
    let abort = r.tolerance(sink, "abort");
    let critical = r.boolean(sink, "critical").map(|c| c.value).unwrap_or(false);
    let metric = metric_s.as_ref().and_then(|m| {
        let parsed = match m.value.as_str() {
            "latency" => Some(Metric::Latency),
            "latency_p50" => Some(Metric::LatencyQuantile(0.5)),
            "latency_p90" => Some(Metric::LatencyQuantile(0.9)),
            "latency_p95" => Some(Metric::LatencyQuantile(0.95)),
            "latency_p99" => Some(Metric::LatencyQuantile(0.99)),
            "error_rate" => Some(Metric::ErrorRate),
            "throughput" => Some(Metric::Throughput),
            "promql" => match &query {
                Some(q) if q.value.contains("$cohort") => {
                    Some(Metric::PromQl(q.value.clone()))
                }
                Some(q) => {
                    sink.error(
                        q.span.clone(),
                        &format!("{path}.query"),
                        "PromQL query does not contain $cohort".into(),
                        "use $cohort where the cohort label goes, e.g. \
                         {cohort=\"$cohort\"}; it is evaluated once per cohort",
                    );
                    None
                }
                None => {
                    r.missing(
                        sink,
                        "query",
                        "query = 'sum(rate(x{cohort=\"$cohort\"}[30s]))'",
                    );
                    None
                }
            },
            other => {
                let hint = match did_you_mean(other, METRICS) {
                    Some(s) => format!("did you mean \"{s}\"?"),
                    None => format!("one of: {}", METRICS.join(", ")),
                };
                sink.error(
                    m.span.clone(),
                    &format!("{path}.metric"),
                    format!("unknown metric {other:?}"),
                    &hint,
                );
                None
            }
        };
        if matches!(parsed, Some(Metric::PromQl(_))) && !has_prom {
            sink.error(
                m.span.clone(),
                &format!("{path}.metric"),
                "metric \"promql\" needs a [prometheus] section".into(),
                "add [prometheus] url = \"http://127.0.0.1:9090\"",
            );
        }
        parsed
    });
    if let (Some(q), Some(m)) = (&query, &metric) {
        if !matches!(m, Metric::PromQl(_)) {
            sink.error(
                q.span.clone(),
                &format!("{path}.query"),
                "`query` is only used with metric = \"promql\"".into(),
                "remove `query`, or set metric = \"promql\"",
            );
        }
    }
    if let (Some(m), Some(tol)) = (&metric, &tolerance) {
        let tol_ok =
            check_direction(sink, &format!("{path}.tolerance"), m, tol, "tolerance");
        if let Some(a) = &abort {
            if check_direction(sink, &format!("{path}.abort"), m, a, "abort") && tol_ok {
                check_abort_beyond_tolerance(sink, &path, tol, a);
            }
        }
    }
    Some(Hypothesis {
        name: name?.value,
        metric: metric?,
        tolerance: tolerance?.value,
        abort: abort.map(|a| a.value),
        critical,
    })
}

/// A tolerance's kind and sign must fit the metric: latency may only get
/// worse by going up (relative), throughput by going down, error rates are
/// compared in percentage points.
fn check_direction(
    sink: &mut Sink,
    path: &str,
    metric: &Metric,
    tol: &At<Tolerance>,
    what: &str,
) -> bool {
    let problem = match (metric, tol.value) {
        (Metric::Latency | Metric::LatencyQuantile(_), Tolerance::Absolute { .. }) => Some((
            "a latency takes a relative tolerance, not percentage points",
            "write e.g. \"+10%\" (experiment at most 10% slower than control)",
        )),
        (Metric::Latency | Metric::LatencyQuantile(_), Tolerance::Relative { fraction })
            if fraction < 0.0 =>
        {
            Some((
                "lower latency is not a degradation, so a negative latency tolerance never \
                 fires",
                "write a positive tolerance such as \"+10%\"",
            ))
        }
        (Metric::ErrorRate, Tolerance::Relative { .. }) => Some((
            "an error rate takes a tolerance in percentage points",
            "write e.g. \"+0.5pp\" (at most 0.5 points more errors than control)",
        )),
        (Metric::ErrorRate, Tolerance::Absolute { points }) if points < 0.0 => Some((
            "fewer errors is not a degradation, so a negative error-rate tolerance never fires",
            "write a positive tolerance such as \"+0.5pp\"",
        )),
        (Metric::Throughput, Tolerance::Absolute { .. }) => Some((
            "throughput takes a relative tolerance, not percentage points",
            "write e.g. \"-5%\" (at most 5% less throughput than control)",
        )),
        (Metric::Throughput, Tolerance::Relative { fraction }) if fraction > 0.0 => Some((
            "more throughput is not a degradation; a throughput tolerance is negative",
            "write e.g. \"-5%\"",
        )),
        _ => None,
    };
    match problem {
        None => true,
        Some((msg, hint)) => {
            sink.error(
                tol.span.clone(),
                path,
                format!(
                    "{what} {} does not fit metric {}: {msg}",
                    tol.value,
                    metric.name()
                ),
                hint,
            );
            false
        }
    }
}

fn check_abort_beyond_tolerance(
    sink: &mut Sink,
    path: &str,
    tol: &At<Tolerance>,
    abort: &At<Tolerance>,
) {
    let magnitude = |t: Tolerance| match t {
        Tolerance::Relative { fraction } => fraction.abs(),
        Tolerance::Absolute { points } => points.abs(),
    };
    let same_kind =
        std::mem::discriminant(&tol.value) == std::mem::discriminant(&abort.value);
    if !same_kind || magnitude(abort.value) < magnitude(tol.value) {
        sink.error(
            abort.span.clone(),
            &format!("{path}.abort"),
            format!(
                "abort threshold {} is tighter than the tolerance {}",
                abort.value, tol.value
            ),
            "the abort threshold must be the same kind and at least as far out as the \
             tolerance (e.g. tolerance \"+10%\", abort \"+100%\")",
        );
    }
}

fn read_regions(top: &mut TableReader, sink: &mut Sink) -> Vec<Region> {
    let Some(item) = top.item("region") else { return Vec::new() };
    let Some(tables) = tables_of(item) else {
        sink.error(
            item.span(),
            "region",
            "`region` must be an array of tables".into(),
            "write [[region]] with name and targets",
        );
        return Vec::new();
    };
    let mut out = Vec::new();
    let mut seen = BTreeSet::new();
    for (i, (tab, span)) in tables.into_iter().enumerate() {
        let path = format!("region[{i}]");
        let mut r = TableReader::new(tab, path.clone(), span);
        let name = r.req_string(sink, "name", "name = \"us-east\"");
        let targets =
            r.strings(sink, "targets", "targets = [\"netns:use-1\", \"name:api-use\"]");
        if r.item("targets").is_none() {
            r.missing(sink, "targets", "targets = [\"netns:use-1\", \"name:api-use\"]");
        }
        let targets_span = r.item("targets").and_then(|i| i.span()).or(r.span.clone());
        r.finish(sink);
        if targets.as_ref().is_some_and(Vec::is_empty) {
            sink.error(
                targets_span,
                &format!("{path}.targets"),
                "a region with no targets would be \"applied\" to nothing".into(),
                "list its processes, namespaces or interfaces: \
                 targets = [\"netns:use-1\", \"name:api-use\"]",
            );
        }
        let mut sels = Vec::new();
        let mut texts = Vec::new();
        for (j, t) in targets.unwrap_or_default().into_iter().enumerate() {
            texts.push(t.value.clone());
            // `{host}` (a region on inventory hosts: each host's name) is
            // validated as a plain word, as in `@hosts:` targets.
            match TargetSelector::parse(&t.value.replace("{host}", "HOST")) {
                Ok(TargetSelector::Region(_)) => sink.error(
                    t.span,
                    &format!("{path}.targets[{j}]"),
                    "a region cannot contain another region".into(),
                    "list processes, namespaces or interfaces",
                ),
                Ok(s) => {
                    if let Some(why) = refused_pid(&s) {
                        sink.error(
                            t.span.clone(),
                            &format!("{path}.targets[{j}]"),
                            format!("refusing to target {s}: {why}"),
                            "name the service's own process (pid:, pidfile: or name:)",
                        );
                    }
                    sels.push(s)
                }
                Err(msg) => sink.error(
                    t.span,
                    &format!("{path}.targets[{j}]"),
                    msg,
                    &format!("targets are one of {SELECTOR_KINDS}"),
                ),
            }
        }
        if let Some(Err(msg)) =
            name.as_ref().map(|n| TargetSelector::parse(&format!("region:{}", n.value)))
        {
            sink.error(
                name.as_ref().and_then(|n| n.span.clone()),
                &format!("{path}.name"),
                msg,
                "a region name is printable text, e.g. name = \"us-east\"",
            );
        }
        if let Some(n) = name {
            if !seen.insert(n.value.clone()) {
                sink.error(
                    n.span,
                    &format!("{path}.name"),
                    format!("region {:?} is declared twice", n.value),
                    "merge the targets into one [[region]]",
                );
            } else {
                out.push(Region { name: n.value, targets: sels, texts });
            }
        }
    }
    out
}

fn default_safety() -> Safety {
    Safety {
        max_targets: 3,
        max_target_fraction: 1.0,
        max_duration: Duration::from_secs(30 * 60),
        abort_on_srm: true,
        max_error_rate: None,
        // Unlimited unless set: the hosts a fault reaches are already named
        // explicitly (`@host:NAME`, or a label selector over an inventory
        // the user wrote), processes per host stay capped by max_targets,
        // and `inject`/`kill` default to no host limit as well, so the same
        // target behaves the same in a file and on the command line.
        max_hosts: None,
        max_host_fraction: None,
    }
}

fn read_safety(mut t: TableReader, sink: &mut Sink) -> Option<Safety> {
    let d = default_safety();
    let max_targets = t.integer(sink, "max_targets", 1..=10_000, "e.g. max_targets = 3");
    let max_percent = t.percent(sink, "max_target_percent");
    let max_duration = t.duration(sink, "max_duration", false);
    let abort_on_srm = t.boolean(sink, "abort_on_srm");
    let max_error_rate = t.percent(sink, "max_error_rate");
    let max_hosts = t.integer(sink, "max_hosts", 1..=100_000, "e.g. max_hosts = 2");
    let max_host_percent = t.percent(sink, "max_host_percent");
    if let Some(p) = &max_host_percent {
        if p.value <= 0.0 {
            sink.error(
                p.span.clone(),
                "safety.max_host_percent",
                "max_host_percent 0% would refuse every host fault".into(),
                "write e.g. max_host_percent = \"50%\", or remove the host faults",
            );
        }
    }
    t.finish(sink);
    Some(Safety {
        max_targets: max_targets.map(|m| m.value as u32).unwrap_or(d.max_targets),
        max_target_fraction: max_percent
            .map(|m| m.value)
            .unwrap_or(d.max_target_fraction),
        max_duration: max_duration.map(|m| m.value).unwrap_or(d.max_duration),
        abort_on_srm: abort_on_srm.map(|a| a.value).unwrap_or(d.abort_on_srm),
        max_error_rate: max_error_rate.map(|m| m.value),
        max_hosts: max_hosts.map(|m| m.value as u32).or(d.max_hosts),
        max_host_fraction: max_host_percent.map(|m| m.value).or(d.max_host_fraction),
    })
}

fn read_prometheus(mut t: TableReader, sink: &mut Sink) -> Option<PrometheusSource> {
    let url = t.req_string(sink, "url", "url = \"http://127.0.0.1:9090\"");
    if let Some(u) = &url {
        check_url(sink, "prometheus.url", u);
    }
    let ca_file = read_pem_path(&mut t, sink, "ca_file", crate::tls::load_certs);
    let step = t.duration(sink, "step", false);
    let timeout = t.duration(sink, "timeout", false);
    let bearer = t.string(sink, "bearer_token", "bearer_token = \"${PROM_TOKEN}\"");
    let basic = t.string(sink, "basic_auth", "basic_auth = \"user:${PROM_PASSWORD}\"");
    let basic_auth = basic.and_then(|b| match b.value.split_once(':') {
        Some((u, p)) if !u.is_empty() => Some((u.to_string(), p.to_string())),
        _ => {
            sink.error(
                b.span,
                "prometheus.basic_auth",
                "basic_auth must be \"USER:PASSWORD\"".into(),
                "keep the password out of the file: \"user:${PROM_PASSWORD}\"",
            );
            None
        }
    });
    t.finish(sink);
    Some(PrometheusSource {
        url: url?.value,
        step: step.map(|s| s.value).unwrap_or(Duration::from_secs(1)),
        timeout: timeout.map(|s| s.value).unwrap_or(Duration::from_secs(5)),
        bearer_token: bearer.map(|b| b.value),
        basic_auth,
        ca_file: ca_file.map(|c| c.value),
    })
}

fn read_faults(
    top: &mut TableReader,
    sink: &mut Sink,
    regions: &[Region],
    region_names: &BTreeSet<String>,
    sidecars: &BTreeSet<String>,
) -> Vec<At<Fault>> {
    let Some(item) = top.item("fault") else { return Vec::new() };
    let Some(tables) = tables_of(item) else {
        sink.error(
            item.span(),
            "fault",
            "`fault` must be an array of tables".into(),
            "write each fault as [[fault]] (double brackets)",
        );
        return Vec::new();
    };
    let mut out: Vec<At<Fault>> = Vec::new();
    let mut ids = BTreeSet::new();
    for (i, (tab, span)) in tables.into_iter().enumerate() {
        let mut r = TableReader::new(tab, format!("fault[{i}]"), span.clone());
        let f = read_fault(&mut r, sink, i, regions, region_names, sidecars);
        r.finish(sink);
        if let Some(f) = f {
            if !ids.insert(f.id.clone()) {
                sink.error(
                    span.clone(),
                    &format!("fault[{i}].name"),
                    format!("fault name {:?} is used twice", f.id),
                    "fault names identify faults in the journal; make them unique",
                );
            }
            out.push(At { value: f, span });
        }
    }
    out
}

const TARGET_HINT: &str =
    "e.g. target = \"name:payments-us-east\" or \"iface:veth0@ns1\"";

fn read_fault(
    r: &mut TableReader,
    sink: &mut Sink,
    index: usize,
    regions: &[Region],
    region_names: &BTreeSet<String>,
    sidecars: &BTreeSet<String>,
) -> Option<Fault> {
    let path = r.path.clone();
    let kind_s =
        r.req_string(sink, "kind", &format!("one of: {}", FAULT_KINDS.join(", ")))?;
    let kind_name = kind_s.value.as_str();
    if !FAULT_KINDS.contains(&kind_name) {
        let hint = match did_you_mean(kind_name, FAULT_KINDS) {
            Some(s) => format!("did you mean \"{s}\"?"),
            None => format!("one of: {}", FAULT_KINDS.join(", ")),
        };
        sink.error(
            kind_s.span,
            &format!("{path}.kind"),
            format!("unknown fault kind {kind_name:?}"),
            &hint,
        );
        // Don't report its other keys as unknown: we do not know the kind.
        r.allow(ALL_FAULT_KEYS);
        return None;
    }
    let name = r.string(sink, "name", "a short unique name, e.g. \"slow-payments\"");
    let start = r.duration(sink, "start", true).map(|s| s.value).unwrap_or_default();
    let duration = r.duration(sink, "duration", false).map(|d| d.value);
    let http = matches!(
        kind_name,
        "latency" | "http-error" | "abort" | "reset" | "malformed-payload"
    );
    let process = matches!(kind_name, "process-kill" | "process-pause");

    // Keys that only some kinds take: read them only for those kinds so
    // the rest are reported as unknown with a precise message.
    let (probability, at) = if http {
        let p = r.percent(sink, "probability").map(|p| p.value).unwrap_or(1.0);
        let at = r.string(sink, "at", "\"edge\" or a sidecar name").map(|a| {
            if a.value != "edge" && !sidecars.contains(&a.value) {
                sink.error(
                    a.span.clone(),
                    &format!("{path}.at"),
                    format!("no sidecar named {:?}", a.value),
                    "use \"edge\" (the cohort proxy) or the name of a [[traffic.sidecar]]",
                );
            }
            a.value
        });
        (p, at.unwrap_or_else(|| "edge".into()))
    } else {
        (1.0, "edge".into())
    };
    let mut host_target = None;
    let target = if !http && kind_name != "region-outage" {
        match r.req_string(sink, "target", TARGET_HINT) {
            Some(t) => match Placement::parse(&t.value) {
                Ok(placed) => {
                    if placed.is_remote() {
                        host_target = Some(placed.clone());
                    }
                    let sel = placed.selector;
                    check_target_fits(sink, &path, kind_name, &t, sel, region_names)
                }
                Err(msg) => {
                    sink.error(
                        t.span,
                        &format!("{path}.target"),
                        msg,
                        &format!("targets are one of {SELECTOR_KINDS}"),
                    );
                    None
                }
            },
            None => None,
        }
    } else {
        None
    };
    let selection = if process {
        let count =
            r.integer(sink, "count", 1..=100_000, "how many processes, e.g. count = 1");
        let percent = r.percent(sink, "percent");
        match (count, percent) {
            (Some(_), Some(p)) => {
                sink.error(
                    p.span,
                    &format!("{path}.percent"),
                    "`count` and `percent` are mutually exclusive".into(),
                    "keep one of them",
                );
                Selection::Count(1)
            }
            (Some(c), None) => Selection::Count(c.value as u32),
            (None, Some(p)) if p.value <= 0.0 => {
                sink.error(
                    p.span,
                    &format!("{path}.percent"),
                    "percent 0% selects nothing (it used to select one target)".into(),
                    "use a share above 0%, e.g. percent = \"50%\", or count = 1",
                );
                Selection::Count(1)
            }
            (None, Some(p)) => Selection::Percent(p.value),
            (None, None) => Selection::Count(1),
        }
    } else {
        Selection::Count(1)
    };

    let kind = match kind_name {
        "latency" => {
            let delay = match r.item("delay") {
                None => {
                    r.missing(sink, "delay", "delay = \"200ms\"");
                    None
                }
                Some(_) => r.duration(sink, "delay", false),
            };
            let jitter = r.duration(sink, "jitter", true);
            if let (Some(d), Some(j)) = (&delay, &jitter) {
                if j.value > d.value {
                    sink.warn(
                        j.span.clone(),
                        &format!("{path}.jitter"),
                        "jitter is larger than the delay; delays are clamped at zero"
                            .into(),
                        "keep jitter at most the delay for a symmetric distribution",
                    );
                }
            }
            Some(FaultKind::Latency {
                delay: delay?.value,
                jitter: jitter.map(|j| j.value).unwrap_or_default(),
            })
        }
        "http-error" => {
            let status =
                r.integer(sink, "status", 400..=599, "an HTTP error status, e.g. 503");
            let body = r.string(sink, "body", "the response body").map(|b| b.value);
            Some(FaultKind::HttpError {
                status: status.map(|s| s.value as u16).unwrap_or(503),
                body: body.unwrap_or_else(|| "injected by chaos\n".into()),
            })
        }
        "abort" => Some(FaultKind::Abort),
        "reset" => Some(FaultKind::Reset),
        "malformed-payload" => {
            let hint = format!("one of: {}", MALFORMED_MODES.join(", "));
            let mode = r.req_string(sink, "mode", &hint).and_then(|m| {
                let mode = match m.value.as_str() {
                    "truncate" => Some(MalformedMode::Truncate),
                    "flip-bytes" => Some(MalformedMode::FlipBytes),
                    "json-wrong-type" => Some(MalformedMode::JsonWrongType),
                    "wrong-content-type" => Some(MalformedMode::WrongContentType),
                    "missing-content-type" => Some(MalformedMode::MissingContentType),
                    "oversized" => Some(MalformedMode::Oversized),
                    _ => None,
                };
                if mode.is_none() {
                    let h = match did_you_mean(&m.value, MALFORMED_MODES) {
                        Some(s) => format!("did you mean \"{s}\"?"),
                        None => hint.clone(),
                    };
                    sink.error(
                        m.span,
                        &format!("{path}.mode"),
                        format!("unknown mode {:?}", m.value),
                        &h,
                    );
                }
                mode
            });
            Some(FaultKind::MalformedPayload { mode: mode? })
        }
        "process-kill" => {
            let signal = r.string(sink, "signal", "e.g. \"SIGKILL\" or \"SIGTERM\"");
            let signal = match signal {
                Some(s) => match normalize_signal(&s.value) {
                    Some(n) => Some(n),
                    None => {
                        sink.error(
                            s.span,
                            &format!("{path}.signal"),
                            format!("unknown signal {:?}", s.value),
                            "use a name such as SIGKILL, SIGTERM, SIGINT, SIGHUP or a number",
                        );
                        None
                    }
                },
                None => Some("SIGKILL".to_string()),
            };
            let grace = r.duration(sink, "grace", false).map(|g| g.value);
            let interval = r.duration(sink, "interval", false).map(|g| g.value);
            Some(FaultKind::ProcessKill { signal: signal?, grace, interval })
        }
        "process-pause" => Some(FaultKind::ProcessPause),
        "netem" => {
            let spec = NetemSpec {
                delay: r.duration(sink, "delay", false).map(|d| d.value),
                jitter: r.duration(sink, "jitter", true).map(|d| d.value),
                loss: r.percent(sink, "loss").map(|p| p.value),
                corrupt: r.percent(sink, "corrupt").map(|p| p.value),
                duplicate: r.percent(sink, "duplicate").map(|p| p.value),
                reorder: r.percent(sink, "reorder").map(|p| p.value),
                rate: read_rate(r, sink, &path, false),
            };
            if spec == NetemSpec::default() {
                sink.error(
                    r.span.clone(),
                    &path,
                    "netem fault sets no parameter".into(),
                    "set at least one of delay, jitter, loss, corrupt, duplicate, reorder, rate",
                );
            }
            if spec.reorder.is_some() && spec.delay.is_none() {
                sink.error(
                    r.span.clone(),
                    &format!("{path}.reorder"),
                    "netem reorder needs a delay".into(),
                    "add delay = \"10ms\"; netem reorders by letting some packets skip the delay",
                );
            }
            Some(FaultKind::Netem(spec))
        }
        "packet-loss" => {
            let loss = match r.item("loss") {
                None => {
                    r.missing(sink, "loss", "loss = \"10%\"");
                    None
                }
                Some(_) => r.percent(sink, "loss"),
            };
            let (destinations, ports) = read_filters(r, sink, &path);
            Some(FaultKind::PacketLoss { loss: loss?.value, destinations, ports })
        }
        "blackhole" => {
            let (destinations, ports) = read_filters(r, sink, &path);
            Some(FaultKind::Blackhole { destinations, ports })
        }
        "tcp-reset" => {
            let (destinations, ports) = read_filters(r, sink, &path);
            Some(FaultKind::TcpReset { destinations, ports })
        }
        "bandwidth" => {
            Some(FaultKind::Bandwidth { rate: read_rate(r, sink, &path, true)? })
        }
        "region-outage" => {
            let region =
                r.req_string(sink, "region", "region = \"us-east\" (a [[region]] name)");
            let method = r.string(sink, "method", "\"blackhole\" or \"pause\"");
            let method = match method {
                None => Some(OutageMethod::Blackhole),
                Some(m) => match m.value.as_str() {
                    "blackhole" => Some(OutageMethod::Blackhole),
                    "pause" => Some(OutageMethod::Pause),
                    _ => {
                        sink.error(
                            m.span,
                            &format!("{path}.method"),
                            format!("unknown outage method {:?}", m.value),
                            "\"blackhole\" (nftables drop in the region's namespaces) or \
                             \"pause\" (SIGSTOP the region's processes)",
                        );
                        None
                    }
                },
            };
            let region = region.and_then(|reg| {
                let Some(found) = regions.iter().find(|x| x.name == reg.value) else {
                    let names: Vec<&str> =
                        regions.iter().map(|x| x.name.as_str()).collect();
                    let hint = match did_you_mean(&reg.value, &names) {
                        Some(s) => format!("did you mean \"{s}\"?"),
                        None if names.is_empty() => {
                            "declare it: [[region]] name = \"...\" targets = [...]".into()
                        }
                        None => format!("declared regions: {}", names.join(", ")),
                    };
                    sink.error(
                        reg.span,
                        &format!("{path}.region"),
                        format!("no region named {:?}", reg.value),
                        &hint,
                    );
                    return None;
                };
                if let Some(m) = method {
                    check_region_targets_fit(sink, &path, &reg, found, m);
                }
                Some(reg.value)
            });
            Some(FaultKind::RegionOutage { region: region?, method: method? })
        }
        _ => None,
    };
    Some(Fault {
        id: name.map(|n| n.value).unwrap_or_else(|| format!("fault-{}", index + 1)),
        start,
        duration,
        probability,
        at,
        target: if http || kind_name == "region-outage" { None } else { Some(target?) },
        host_target,
        selection,
        kind: kind?,
    })
}

/// Every key any fault kind accepts, so a mistyped `kind` does not also
/// flood the output with "unknown key" errors.
const ALL_FAULT_KEYS: &[&str] = &[
    "name",
    "start",
    "duration",
    "probability",
    "at",
    "target",
    "count",
    "percent",
    "delay",
    "jitter",
    "status",
    "body",
    "mode",
    "signal",
    "grace",
    "interval",
    "loss",
    "corrupt",
    "duplicate",
    "reorder",
    "rate",
    "destinations",
    "ports",
    "region",
    "method",
];

/// Why a `pid:` target must never be hit, decided at validation like
/// `kill`/`inject` decide it: pid 1, pid 2 (kthreadd), kernel threads,
/// this process and its ancestors (the shell that will also start the
/// run). Other selectors resolve at run time.
fn refused_pid(sel: &TargetSelector) -> Option<&'static str> {
    let TargetSelector::Pid(pid) = sel else { return None };
    crate::target::process::refusal_of_pid(*pid)
}

fn check_target_fits(
    sink: &mut Sink,
    path: &str,
    kind: &str,
    t: &At<String>,
    sel: TargetSelector,
    regions: &BTreeSet<String>,
) -> Option<TargetSelector> {
    if let Some(why) = refused_pid(&sel) {
        sink.error(
            t.span.clone(),
            &format!("{path}.target"),
            format!("refusing to target {sel}: {why}"),
            "name the service's own process (pid:, pidfile: or name:)",
        );
        return None;
    }
    if let TargetSelector::Region(r) = &sel {
        if !regions.contains(r) {
            sink.error(
                t.span.clone(),
                &format!("{path}.target"),
                format!("no region named {r:?}"),
                "declare it with [[region]] name = \"...\" targets = [...]",
            );
            return None;
        }
    }
    let is_process = matches!(
        sel,
        TargetSelector::Pid(_)
            | TargetSelector::Pidfile(_)
            | TargetSelector::Name(_)
            | TargetSelector::Region(_)
            | TargetSelector::Container(_)
    );
    let is_net = matches!(
        sel,
        TargetSelector::Netns(_)
            | TargetSelector::Iface { .. }
            | TargetSelector::Region(_)
            | TargetSelector::Container(_)
    );
    let ok = match kind {
        "process-kill" | "process-pause" => is_process,
        "netem" | "bandwidth" => {
            matches!(sel, TargetSelector::Iface { .. } | TargetSelector::Container(_))
        }
        _ => is_net,
    };
    if ok {
        return Some(sel);
    }
    let want = match kind {
        "process-kill" | "process-pause" => "a process: pid:, pidfile:, name: or region:",
        "netem" | "bandwidth" => {
            "an interface: iface:NAME[@NETNS] (tc qdiscs live on interfaces)"
        }
        _ => "a network namespace or interface: netns:, iface: or region:",
    };
    sink.error(
        t.span.clone(),
        &format!("{path}.target"),
        format!("a {kind} fault cannot target {sel}"),
        &format!("use {want}"),
    );
    None
}

fn check_region_targets_fit(
    sink: &mut Sink,
    path: &str,
    reg: &At<String>,
    region: &Region,
    method: OutageMethod,
) {
    let bad = region.targets.iter().find(|t| {
        let net = matches!(t, TargetSelector::Netns(_) | TargetSelector::Iface { .. });
        match method {
            OutageMethod::Blackhole => !net,
            OutageMethod::Pause => net,
        }
    });
    if let Some(bad) = bad {
        let (m, want) = match method {
            OutageMethod::Blackhole => ("blackhole", "netns: or iface: targets"),
            OutageMethod::Pause => ("pause", "process targets (pid:, pidfile:, name:)"),
        };
        sink.error(
            reg.span.clone(),
            &format!("{path}.region"),
            format!(
                "region {:?} contains {bad}, which method {m:?} cannot act on",
                region.name
            ),
            &format!(
                "method {m:?} needs {want}; pick the other method or split the region"
            ),
        );
    }
}

fn read_rate(
    r: &mut TableReader,
    sink: &mut Sink,
    path: &str,
    required: bool,
) -> Option<String> {
    if required && r.item("rate").is_none() {
        r.missing(sink, "rate", "rate = \"1mbit\"");
        return None;
    }
    let s = r.string(sink, "rate", "e.g. \"1mbit\"")?;
    // The fault engine's own parser, so whatever validates also applies
    // (an overflowing rate used to fail only at apply time).
    match crate::fault::tc::parse_rate(&s.value) {
        Ok(_) => Some(s.value),
        Err(e) => {
            sink.error(
                s.span,
                &format!("{path}.rate"),
                e.to_string(),
                "write a tc rate such as \"1mbit\", \"500kbit\" or \"10mbps\" \
                 (at most 1000gbit)",
            );
            None
        }
    }
}

fn read_filters(
    r: &mut TableReader,
    sink: &mut Sink,
    path: &str,
) -> (Vec<String>, Vec<u16>) {
    let mut dests = Vec::new();
    for (i, d) in r
        .strings(sink, "destinations", "CIDRs such as \"10.0.0.0/24\"")
        .unwrap_or_default()
        .into_iter()
        .enumerate()
    {
        if valid_cidr(&d.value) {
            dests.push(d.value);
        } else {
            sink.error(
                d.span,
                &format!("{path}.destinations[{i}]"),
                format!("{:?} is not an IP address or CIDR", d.value),
                "write e.g. \"10.0.0.0/24\", \"10.0.0.7\" or \"fd00::/64\"",
            );
        }
    }
    let mut ports = Vec::new();
    if let Some(item) = r.item("ports") {
        match item.as_array() {
            Some(arr) => {
                for (i, v) in arr.iter().enumerate() {
                    match v.as_integer() {
                        Some(p) if (1..=65535).contains(&p) => ports.push(p as u16),
                        _ => sink.error(
                            v.span(),
                            &format!("{path}.ports[{i}]"),
                            "ports must be integers between 1 and 65535".into(),
                            "write e.g. ports = [80, 443]",
                        ),
                    }
                }
            }
            None => sink.error(
                item.span(),
                &format!("{path}.ports"),
                "`ports` must be an array of integers".into(),
                "write e.g. ports = [80, 443]",
            ),
        }
    }
    (dests, ports)
}

fn valid_cidr(s: &str) -> bool {
    let (addr, prefix) = match s.split_once('/') {
        Some((a, p)) => (a, Some(p)),
        None => (s, None),
    };
    let Ok(ip) = addr.parse::<std::net::IpAddr>() else { return false };
    let max = if ip.is_ipv4() { 32 } else { 128 };
    prefix.map(|p| p.parse::<u8>().map(|n| n <= max).unwrap_or(false)).unwrap_or(true)
}

/// Canonical `SIGNAME` for `"KILL"`, `"SIGKILL"`, `"9"`.
pub fn normalize_signal(s: &str) -> Option<String> {
    const NAMES: &[(&str, i32)] = &[
        ("SIGHUP", 1),
        ("SIGINT", 2),
        ("SIGQUIT", 3),
        ("SIGABRT", 6),
        ("SIGKILL", 9),
        ("SIGUSR1", 10),
        ("SIGSEGV", 11),
        ("SIGUSR2", 12),
        ("SIGPIPE", 13),
        ("SIGALRM", 14),
        ("SIGTERM", 15),
    ];
    let up = s.trim().to_ascii_uppercase();
    if let Ok(n) = up.parse::<i32>() {
        return NAMES.iter().find(|(_, num)| *num == n).map(|(name, _)| name.to_string());
    }
    let full = if up.starts_with("SIG") { up } else { format!("SIG{up}") };
    NAMES.iter().find(|(name, _)| *name == full).map(|(name, _)| name.to_string())
}

/// The host blast radius of every `@host:`/`@hosts:` fault, when the
/// file carries its own `[[host]]` tables (an `--inventory` given to `run`
/// is checked by the runner, still before connecting to any host).
fn check_host_blast_radius(
    sink: &mut Sink,
    faults: &[At<Fault>],
    safety: &Safety,
    hosts: Option<&crate::fleet::inventory::Inventory>,
) {
    let Some(inv) = hosts else { return };
    let limits = safety.host_limits();
    for (i, f) in faults.iter().enumerate() {
        let Some(placed) = f.value.placement(Some(inv)) else { continue };
        // An unknown host or label is reported by the runner with the
        // inventory's host list; only the count is checked here.
        let Ok(selected) = inv.select(&placed.place) else { continue };
        if let Err(msg) = limits.check(selected.len(), inv.hosts.len()) {
            sink.error(
                f.span.clone(),
                &format!("fault[{i}].target"),
                format!("{placed}: {msg}"),
                "narrow the host selector, or raise [safety] max_hosts / max_host_percent \
                 deliberately",
            );
        }
    }
}

fn cross_checks(
    sink: &mut Sink,
    meta: &Meta,
    traffic: &Traffic,
    load: Option<&Load>,
    faults: &[At<Fault>],
    safety: &Safety,
    regions: &[Region],
) {
    if meta.baseline + meta.duration > safety.max_duration {
        sink.error(
            Some(0..0),
            "experiment.duration",
            format!(
                "baseline + duration ({}) exceeds safety.max_duration ({})",
                crate::units::format_duration(meta.baseline + meta.duration),
                crate::units::format_duration(safety.max_duration)
            ),
            "shorten the experiment or raise [safety] max_duration deliberately",
        );
    }
    for (i, f) in faults.iter().enumerate() {
        let fault = &f.value;
        if fault.start >= meta.duration {
            sink.error(
                f.span.clone(),
                &format!("fault[{i}].start"),
                format!(
                    "fault starts at {} but the experiment lasts {}",
                    crate::units::format_duration(fault.start),
                    crate::units::format_duration(meta.duration)
                ),
                "start must be before the end of [experiment] duration",
            );
        } else if let Some(d) = fault.duration {
            if fault.start + d > meta.duration {
                sink.warn(
                    f.span.clone(),
                    &format!("fault[{i}].duration"),
                    "fault would outlive the experiment; it is reverted when observation ends"
                        .into(),
                    "shorten duration or start earlier",
                );
            }
        }
        if let Selection::Count(c) = fault.selection {
            if c > safety.max_targets {
                sink.error(
                    f.span.clone(),
                    &format!("fault[{i}].count"),
                    format!(
                        "count {c} exceeds safety.max_targets {}",
                        safety.max_targets
                    ),
                    "lower count, or raise [safety] max_targets deliberately",
                );
            }
        }
        if let FaultKind::RegionOutage { region, .. } = &fault.kind {
            if let Some(r) = regions.iter().find(|r| &r.name == region) {
                if r.targets.len() as u32 > safety.max_targets {
                    sink.error(
                        f.span.clone(),
                        &format!("fault[{i}].region"),
                        format!(
                            "region {region:?} has {} targets, more than safety.max_targets {}",
                            r.targets.len(),
                            safety.max_targets
                        ),
                        "raise [safety] max_targets to cover the whole region deliberately",
                    );
                }
            }
        }
    }
    if let Some(load) = load {
        let per_cohort = load.rate
            * traffic.experiment_fraction.min(traffic.control_fraction)
            * meta.duration.as_secs_f64();
        if per_cohort < meta.min_samples as f64 {
            sink.warn(
                Some(0..0),
                "load.rate",
                format!(
                    "expect about {} requests per cohort, below min_samples = {}",
                    per_cohort.round(),
                    meta.min_samples
                ),
                "raise load.rate, the cohort percentages or the duration; otherwise the \
                 verdict will be inconclusive",
            );
        }
    }
}
