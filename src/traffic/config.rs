//! Runtime configuration of the proxy, built either from CLI flags or
//! (later) from an experiment's `[traffic]` section through
//! [`ProxyConfig::from_parts`].

use std::fmt;
use std::net::{IpAddr, SocketAddr};
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
        "upstream {url:?}: {reason} (expected http://HOST:PORT, https://HOST[:PORT] \
         or h2c://HOST:PORT, \
         optionally with @REGION)"
    )]
    Upstream { url: String, reason: String },
    #[error("no upstream given: at least one --upstream is required")]
    NoUpstream,
    #[error("forwarded mode {0:?}: expected \"append\", \"replace\" or \"off\"")]
    ForwardedMode(String),
    #[error("trusted proxy {0:?}: expected an IP address or CIDR (e.g. 10.0.0.0/8)")]
    TrustedProxy(String),
    #[error("max header bytes {0}: must be between 8192 and 1048576")]
    MaxHeaderBytes(usize),
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
    /// `http://host:port` (HTTP/1.1), `https://host[:port]` (TLS to the
    /// upstream, SNI from the host; h2 or HTTP/1.1 by ALPN) or
    /// `h2c://host:port` (HTTP/2 with prior knowledge, e.g. gRPC); any path
    /// is ignored (the client's path is kept).
    pub url: http::Uri,
    /// Region label (e.g. for region faults and reports).
    pub region: Option<String>,
}

impl FromStr for Upstream {
    type Err = ConfigError;

    /// `http://127.0.0.1:9000`, `h2c://127.0.0.1:50051` or
    /// `http://127.0.0.1:9000@eu-west`.
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
        if !matches!(uri.scheme_str(), Some("http" | "https" | "h2c")) {
            return Err(err("only http://, https:// and h2c:// upstreams are supported"));
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

/// What the proxy does with `X-Forwarded-For`, `X-Forwarded-Proto` and
/// `Forwarded` (RFC 7239).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ForwardedMode {
    /// Adds the peer to the client's list when the peer is a trusted proxy;
    /// otherwise replaces the list with the peer (no spoofing).
    #[default]
    Append,
    /// Always replaces the list with the peer.
    Replace,
    /// Leaves the headers as the client sent them.
    Off,
}

impl FromStr for ForwardedMode {
    type Err = ConfigError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "append" => Ok(ForwardedMode::Append),
            "replace" => Ok(ForwardedMode::Replace),
            "off" => Ok(ForwardedMode::Off),
            _ => Err(ConfigError::ForwardedMode(s.to_string())),
        }
    }
}

/// A trusted proxy address or network (`10.0.0.0/8`, `127.0.0.1`, `::1`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IpNet {
    addr: IpAddr,
    prefix: u8,
}

impl IpNet {
    /// Whether `ip` is inside this network (IPv4-mapped IPv6 peers count
    /// as their IPv4 address).
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
            v4 => v4,
        };
        match (self.addr, ip) {
            (IpAddr::V4(n), IpAddr::V4(a)) => {
                let mask = u32::MAX.checked_shl(32 - u32::from(self.prefix)).unwrap_or(0);
                u32::from(n) & mask == u32::from(a) & mask
            }
            (IpAddr::V6(n), IpAddr::V6(a)) => {
                let mask =
                    u128::MAX.checked_shl(128 - u32::from(self.prefix)).unwrap_or(0);
                u128::from(n) & mask == u128::from(a) & mask
            }
            _ => false,
        }
    }
}

impl FromStr for IpNet {
    type Err = ConfigError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || ConfigError::TrustedProxy(s.to_string());
        let (a, p) = match s.trim().split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s.trim(), None),
        };
        let addr: IpAddr = a.parse().map_err(|_| bad())?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match p {
            Some(p) => p.parse::<u8>().ok().filter(|p| *p <= max).ok_or_else(bad)?,
            None => max,
        };
        Ok(IpNet { addr, prefix })
    }
}

impl fmt::Display for IpNet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

/// Connection and body timeouts towards clients and upstreams. Defaults
/// sit between HAProxy's and nginx's usual settings (see docs/proxy.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    /// From the first byte of a request head to its end (HTTP/1; 408-less
    /// close like HAProxy's `timeout http-request`). Default 30 s.
    pub client_header: Duration,
    /// A client connection with no request in flight and no response
    /// streaming is closed after this long (`timeout http-keep-alive`,
    /// nginx `keepalive_timeout`). Default 60 s.
    pub idle: Duration,
    /// Longest pause between two pieces of a request body (nginx
    /// `client_body_timeout`). Default 60 s.
    pub request_body: Duration,
    /// Longest pause between two pieces of an upstream response body
    /// (nginx `proxy_read_timeout`); the client connection is then cut.
    /// Default 60 s.
    pub response_body: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            client_header: Duration::from_secs(30),
            idle: Duration::from_secs(60),
            request_body: Duration::from_secs(60),
            response_body: Duration::from_secs(60),
        }
    }
}

/// Default limit of a request head (request line plus headers).
pub const DEFAULT_MAX_HEADER_BYTES: usize = 32 * 1024;

/// Checks a header-size limit (hyper needs at least 8 KiB).
pub fn check_max_header_bytes(n: usize) -> Result<usize, ConfigError> {
    if (8192..=1024 * 1024).contains(&n) {
        Ok(n)
    } else {
        Err(ConfigError::MaxHeaderBytes(n))
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
    /// Client header read, idle keep-alive and body idle timeouts.
    pub timeouts: Timeouts,
    /// Largest request head accepted; larger ones get 431.
    pub max_header_bytes: usize,
    /// `X-Forwarded-For`/`-Proto` and `Forwarded` handling.
    pub forwarded: ForwardedMode,
    /// Peers whose forwarding headers are kept (appended to).
    pub trusted_proxies: Vec<IpNet>,
    /// Salts the cohort hash (same seed + same key = same cohort in every
    /// process) and seeds the fault dice.
    pub seed: u64,
    /// Terminate TLS for clients with this certificate and key (plain TCP
    /// when `None`).
    pub tls: Option<crate::tls::ServerTlsFiles>,
    /// CA bundle that https upstreams must chain to (replaces the system
    /// trust store when set).
    pub upstream_ca: Option<std::path::PathBuf>,
    /// Serve plain HTTP/1.1 `GET`/`HEAD` requests on the fast path (on by
    /// default; it applies only without client TLS, in edge mode, with
    /// `http://` upstreams).
    pub fast_path: bool,
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
            timeouts: Timeouts::default(),
            max_header_bytes: DEFAULT_MAX_HEADER_BYTES,
            forwarded: ForwardedMode::default(),
            trusted_proxies: Vec::new(),
            seed,
            tls: None,
            upstream_ca: None,
            fast_path: true,
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
        assert!("h2c://127.0.0.1:50051".parse::<Upstream>().is_ok());
        let u: Upstream = "https://api.internal@eu".parse().unwrap();
        assert_eq!(u.url.scheme_str(), Some("https"));
        assert!("ftp://x:1".parse::<Upstream>().is_err());
        assert!("127.0.0.1:9000".parse::<Upstream>().is_err());
    }

    #[test]
    fn matches_trusted_networks() {
        let n: IpNet = "10.0.0.0/8".parse().unwrap();
        assert!(n.contains("10.1.2.3".parse().unwrap()));
        assert!(!n.contains("11.0.0.1".parse().unwrap()));
        assert!(n.contains("::ffff:10.0.0.1".parse().unwrap()));
        let h: IpNet = "127.0.0.1".parse().unwrap();
        assert!(h.contains("127.0.0.1".parse().unwrap()));
        assert!(!h.contains("127.0.0.2".parse().unwrap()));
        let all: IpNet = "0.0.0.0/0".parse().unwrap();
        assert!(all.contains("8.8.8.8".parse().unwrap()));
        let v6: IpNet = "fd00::/8".parse().unwrap();
        assert!(v6.contains("fd12::1".parse().unwrap()));
        for bad in ["10.0.0.0/33", "nope", "::1/129", ""] {
            assert!(bad.parse::<IpNet>().is_err(), "{bad}");
        }
        assert_eq!("off".parse::<ForwardedMode>(), Ok(ForwardedMode::Off));
        assert!("sometimes".parse::<ForwardedMode>().is_err());
        assert!(check_max_header_bytes(4096).is_err());
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
