//! The demo fleet used by the README's main command and by tests: for each
//! pool (control, experiment) one API process and two payments replicas in
//! regions `us-east` and `eu-west`, all real child processes of the `chaos`
//! binary on loopback. ChAP style: each cohort gets its own identical cluster,
//! so a fault on the experiment pool cannot touch control traffic.
//!
//! `payments` and `api` are the services themselves (run inside the child
//! via the hidden `chaos demo-service` subcommand); `fleet` spawns, watches,
//! restarts and always stops them.

mod api;
mod fleet;
mod http;
mod payments;

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

pub use api::{
    serve as serve_api, ApiConfig, PAYMENT_ATTEMPTS_HEADER, PAYMENT_BAGGAGE_HEADER,
    PAYMENT_COHORT_HEADER,
};
pub(crate) use fleet::tmp_path;
pub use fleet::{Fleet, FleetSpec, ProcessInfo};
pub use payments::{serve as serve_payments, PaymentsConfig};

use crate::cohort::Cohort;

/// What a demo process does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Role {
    /// The front door: `GET /checkout`, calls payments.
    Api,
    /// The dependency: `GET /charge`, one replica per region.
    Payments,
}

impl Role {
    /// Lowercase name used in process names, env vars and output.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Api => "api",
            Role::Payments => "payments",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A payments region. `us-east` is the API's primary.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, clap::ValueEnum)]
pub enum Region {
    /// Primary region.
    UsEast,
    /// Secondary region, used by the resilient API when the primary fails.
    EuWest,
}

impl Region {
    /// Both regions, primary first.
    pub const ALL: [Region; 2] = [Region::UsEast, Region::EuWest];

    /// The label value, e.g. `us-east`.
    pub fn as_str(self) -> &'static str {
        match self {
            Region::UsEast => "us-east",
            Region::EuWest => "eu-west",
        }
    }

    /// Parses a label value (exact, lowercase).
    pub fn parse(s: &str) -> Option<Region> {
        Region::ALL.into_iter().find(|r| r.as_str() == s)
    }

    /// The region to fail over to.
    pub fn other(self) -> Region {
        match self {
            Region::UsEast => Region::EuWest,
            Region::EuWest => Region::UsEast,
        }
    }
}

impl fmt::Display for Region {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How the API treats a failing dependency.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, clap::ValueEnum)]
pub enum Variant {
    /// Per-attempt timeout, one retry in the other region, fallback response.
    Resilient,
    /// No timeout beyond a safety bound, no retry, errors become 5xx.
    Fragile,
}

impl Variant {
    /// The CLI value, e.g. `resilient`.
    pub fn as_str(self) -> &'static str {
        match self {
            Variant::Resilient => "resilient",
            Variant::Fragile => "fragile",
        }
    }
}

impl fmt::Display for Variant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Simulated payments service time: lognormal with this median and shape.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ServiceTime {
    /// Median service time.
    pub median: Duration,
    /// σ of the underlying normal (0 = constant service time).
    pub sigma: f64,
}

impl Default for ServiceTime {
    fn default() -> Self {
        ServiceTime { median: Duration::from_millis(8), sigma: 0.35 }
    }
}

impl ServiceTime {
    /// Draws one service time. Box-Muller keeps us off `rand_distr` (one
    /// crate less to compile for a single distribution).
    pub fn sample(&self, rng: &mut impl rand::Rng) -> Duration {
        let u1: f64 = rng.gen_range(f64::MIN_POSITIVE..1.0);
        let u2: f64 = rng.gen();
        let z = (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos();
        let secs = self.median.as_secs_f64() * (self.sigma * z).exp();
        // A 60 s ceiling only guards against absurd parameters.
        Duration::from_secs_f64(secs.clamp(0.0, 60.0))
    }
}

/// The process name (argv[0]) of a demo process, stable so fault targets
/// like `name:chaos-demo-payments-experiment-us-east` select it.
pub fn process_name(role: Role, pool: Cohort, region: Option<Region>) -> String {
    match region {
        Some(r) => format!("chaos-demo-{role}-{pool}-{r}"),
        None => format!("chaos-demo-{role}-{pool}"),
    }
}

/// Everything that can go wrong starting, running or stopping the fleet.
#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    /// The fleet directory could not be created or written.
    #[error("demo fleet directory {path}: {source}")]
    Dir {
        /// The file or directory.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A child process could not be spawned.
    #[error("cannot spawn {name} ({exe}): {source}")]
    Spawn {
        /// The demo process name.
        name: String,
        /// The executable.
        exe: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A child exited or never became healthy.
    #[error("{name} (pid {pid}) {what}; last lines of {log}:\n{stderr_tail}")]
    Unhealthy {
        /// The demo process name.
        name: String,
        /// Its pid.
        pid: u32,
        /// What happened.
        what: String,
        /// Its log file.
        log: PathBuf,
        /// The end of its stderr.
        stderr_tail: String,
    },
    /// A service could not bind its listener.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A URL given for payments is not a usable `http://` URL.
    #[error("invalid payments URL {url:?}: {reason}")]
    BadUrl {
        /// The URL.
        url: String,
        /// Why.
        reason: String,
    },
    /// `restart`/`pid` named a process the fleet does not have.
    #[error("the demo fleet has no {0}")]
    NoSuchProcess(String),
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn service_time_samples_have_the_configured_median() {
        let st = ServiceTime::default();
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
        let mut v: Vec<f64> =
            (0..4001).map(|_| st.sample(&mut rng).as_secs_f64() * 1e3).collect();
        v.sort_by(f64::total_cmp);
        let median = v[2000];
        assert!((7.4..8.6).contains(&median), "median {median} ms");
        assert!(v[3960] > 12.0, "p99 {} ms shows no tail", v[3960]);
    }

    #[test]
    fn zero_sigma_gives_a_constant_service_time() {
        let st = ServiceTime { median: Duration::from_millis(5), sigma: 0.0 };
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
        let d = st.sample(&mut rng).as_secs_f64() - 0.005;
        assert!(d.abs() < 1e-6, "off by {d} s");
    }

    #[test]
    fn process_names_are_stable_and_selectable() {
        assert_eq!(
            process_name(Role::Payments, Cohort::Experiment, Some(Region::UsEast)),
            "chaos-demo-payments-experiment-us-east"
        );
        assert_eq!(
            process_name(Role::Api, Cohort::Control, None),
            "chaos-demo-api-control"
        );
        assert_eq!(Region::parse("eu-west"), Some(Region::EuWest));
        assert_eq!(Region::UsEast.other(), Region::EuWest);
    }
}
