//! Runtime configuration of the proxy, built either from CLI flags or
//! (later) from an experiment's `[traffic]` section through
//! [`ProxyConfig::from_parts`].

use std::fmt;
use std::net::SocketAddr;
use std::str::FromStr;
use std::time::Duration;

/// Why a piece of proxy configuration was rejected.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ConfigError {
    #[error(
        "cohort key {0:?}: expected \"header:NAME\", \"cookie:NAME\" or \"client-ip\""
    )]
    CohortKey(String),
    #[error(
        "upstream {url:?}: {reason} (expected http://HOST:PORT or https://HOST[:PORT], \
         optionally with @REGION)"
    )]
    Upstream { url: String, reason: String },
    #[error("no upstream given: at least one --upstream is required")]
    NoUpstream,
    #[error(
        "experiment ({experiment}) plus control ({control}) must be fractions \
         in [0, 1] that sum to at most 1"
    )]
    Fractions { experiment: f64, control: f64 },
}

/// Where the proxy sits, which decides who assigns cohorts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ProxyMode {
    /// In front of a service: assigns cohorts, strips client-sent
    /// `x-chaos-cohort` (no spoofing), faults the experiment cohort.
    #[default]
    Edge,
    /// Between a service and its dependency (FIT injection point): trusts
    /// the incoming `x-chaos-cohort` and faults only `experiment`.
    Sidecar,
}

/// One upstream server.
#[derive(Debug, Clone, PartialEq)]
pub struct Upstream {
    /// `http://host:port` or `https://host[:port]` (TLS to the upstream,
    /// SNI from the host); any path is ignored (the client's path is kept).
    pub url: http::Uri,
    /// Region label (e.g. for region faults and reports).
    pub region: Option<String>,
}

impl FromStr for Upstream {
    type Err = ConfigError;

    /// `http://127.0.0.1:9000` or `http://127.0.0.1:9000@eu-west`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = |reason: &str| ConfigError::Upstream {
            url: s.to_string(),
            reason: reason.to_string(),
        };
        let (url, region) = match s.rsplit_once('@') {
            Some((u, r)) if !r.contains('/') && !r.is_empty() => (u, Some(r.to_string())),
            _ => (s, None),
        };
        let uri: http::Uri = url.trim().parse().map_err(|e| err(&format!("{e}")))?;
        if !matches!(uri.scheme_str(), Some("http" | "https")) {
            return Err(err("only http:// and https:// upstreams are supported"));
        }
        if uri.authority().is_none() {
            return Err(err("missing host"));
        }
        Ok(Upstream { url: uri, region })
    }
}

/// Upstream pools: cohort pools, when non-empty, replace the default pool
/// for that cohort (ChAP's separate experiment and control clusters).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct UpstreamPools {
    pub default: Vec<Upstream>,
    pub control: Vec<Upstream>,
    pub experiment: Vec<Upstream>,
}

/// What identifies a user for sticky cohort assignment. A request without
/// the key gets a random position (it is not sticky).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CohortKey {
    /// The value of a request header (name stored lowercase).
    Header(String),
    /// The value of a cookie.
    Cookie(String),
    /// The peer IP address of the client connection.
    ClientIp,
}

impl FromStr for CohortKey {
    type Err = ConfigError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || ConfigError::CohortKey(s.to_string());
        if s == "client-ip" {
            return Ok(CohortKey::ClientIp);
        }
        let (kind, name) = s.split_once(':').ok_or_else(bad)?;
        let name = name.trim();
        if name.is_empty() {
            return Err(bad());
        }
        match kind {
            "header" => {
                http::HeaderName::from_bytes(name.as_bytes()).map_err(|_| bad())?;
                Ok(CohortKey::Header(name.to_ascii_lowercase()))
            }
            "cookie" => Ok(CohortKey::Cookie(name.to_string())),
            _ => Err(bad()),
        }
    }
}

impl fmt::Display for CohortKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CohortKey::Header(h) => write!(f, "header:{h}"),
            CohortKey::Cookie(c) => write!(f, "cookie:{c}"),
            CohortKey::ClientIp => f.write_str("client-ip"),
        }
    }
}

/// The admin endpoint (faults, metrics, health).
#[derive(Debug, Clone, PartialEq)]
pub struct AdminConfig {
    pub listen: SocketAddr,
    /// Bearer token every state change must carry; `None` refuses all
    /// changes (read-only admin).
    pub token: Option<String>,
    /// Listening on a non-loopback address was asked for explicitly
    /// (it also needs a token; see `admin::exposure_refusal`).
    pub allow_remote: bool,
}

/// Everything the proxy needs to run.
#[derive(Debug, Clone, PartialEq)]
pub struct ProxyConfig {
    pub listen: SocketAddr,
    pub pools: UpstreamPools,
    pub cohort_key: CohortKey,
    /// Share of keys in the experiment cohort, in [0, 1].
    pub experiment_fraction: f64,
    /// Share of keys in the control cohort, in [0, 1].
    pub control_fraction: f64,
    pub mode: ProxyMode,
    /// Limit from sending the request to the upstream's response head (504).
    pub upstream_timeout: Duration,
    /// Limit for establishing an upstream connection (504 when exceeded).
    pub connect_timeout: Duration,
    pub admin: Option<AdminConfig>,
    /// Salts the cohort hash (same seed + same key = same cohort in every
    /// process) and seeds the fault dice.
    pub seed: u64,
    /// Terminate TLS for clients with this certificate and key (plain TCP
    /// when `None`).
    pub tls: Option<crate::tls::ServerTlsFiles>,
    /// CA bundle that https upstreams must chain to (replaces the system
    /// trust store when set).
    pub upstream_ca: Option<std::path::PathBuf>,
}

impl ProxyConfig {
    /// The seam for both the CLI and an experiment's `[traffic]` section:
    /// validates the parts and fills defaults (30 s upstream timeout, 2 s
    /// connect timeout).
    #[allow(clippy::too_many_arguments)]
    pub fn from_parts(
        listen: SocketAddr,
        pools: UpstreamPools,
        cohort_key: CohortKey,
        experiment_fraction: f64,
        control_fraction: f64,
        mode: ProxyMode,
        admin: Option<AdminConfig>,
        seed: u64,
    ) -> Result<ProxyConfig, ConfigError> {
        if pools.default.is_empty()
            && (pools.control.is_empty() || pools.experiment.is_empty())
        {
            return Err(ConfigError::NoUpstream);
        }
        let ok = |f: f64| (0.0..=1.0).contains(&f);
        if !ok(experiment_fraction)
            || !ok(control_fraction)
            || experiment_fraction + control_fraction > 1.0 + 1e-12
        {
            return Err(ConfigError::Fractions {
                experiment: experiment_fraction,
                control: control_fraction,
            });
        }
        Ok(ProxyConfig {
            listen,
            pools,
            cohort_key,
            experiment_fraction,
            control_fraction,
            mode,
            upstream_timeout: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(2),
            admin,
            seed,
            tls: None,
            upstream_ca: None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_cohort_key_form_and_rejects_others() {
        assert_eq!(
            "header:X-User-Id".parse::<CohortKey>(),
            Ok(CohortKey::Header("x-user-id".into()))
        );
        assert_eq!(
            "cookie:sid".parse::<CohortKey>(),
            Ok(CohortKey::Cookie("sid".into()))
        );
        assert_eq!("client-ip".parse::<CohortKey>(), Ok(CohortKey::ClientIp));
        for bad in ["header:", "ip", "query:x", "header:bad name"] {
            assert!(bad.parse::<CohortKey>().is_err(), "{bad}");
        }
    }

    #[test]
    fn parses_upstreams_with_optional_region() {
        let u: Upstream = "http://127.0.0.1:9000@eu-west".parse().unwrap();
        assert_eq!(u.region.as_deref(), Some("eu-west"));
        assert_eq!(u.url.authority().map(|a| a.as_str()), Some("127.0.0.1:9000"));
        let u: Upstream = "https://api.internal@eu".parse().unwrap();
        assert_eq!(u.url.scheme_str(), Some("https"));
        assert!("ftp://x:1".parse::<Upstream>().is_err());
        assert!("127.0.0.1:9000".parse::<Upstream>().is_err());
    }

    #[test]
    fn rejects_fractions_that_overflow_the_traffic() {
        let pools = UpstreamPools {
            default: vec!["http://127.0.0.1:1".parse().unwrap()],
            ..Default::default()
        };
        let addr = "127.0.0.1:0".parse().unwrap();
        let mk = |e, c| {
            ProxyConfig::from_parts(
                addr,
                pools.clone(),
                CohortKey::ClientIp,
                e,
                c,
                ProxyMode::Edge,
                None,
                0,
            )
        };
        assert!(mk(0.05, 0.05).is_ok());
        assert!(mk(0.6, 0.5).is_err());
        assert!(mk(-0.1, 0.0).is_err());
    }
}
