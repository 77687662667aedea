//! The cohort proxy: listener, sticky cohort assignment, upstream pools,
//! the HTTP fault layer (experiment cohort only), `x-chaos-cohort` and W3C
//! baggage (`chaos.cohort`) propagation, the admin endpoint and the
//! sample-ratio-mismatch check.
//! The runner wires it to a [`crate::metrics::Recorder`]; the proxy never
//! calls faults or statistics itself.

pub mod admin;
pub mod assign;
pub mod baggage;
pub(crate) mod body;
pub mod config;
mod fast;
pub mod fault;
pub(crate) mod forwarded;
mod h2relay;
pub(crate) mod headers;
mod idle_poll;
mod linger;
pub mod malformed;
mod rewind;
pub mod server;
pub mod srm;
pub mod tls;
pub mod upstream;
pub mod workers;

pub use assign::assign_position;
pub use config::{
    AdminConfig, CohortKey, ForwardedMode, IpNet, ProxyConfig, ProxyMode, Timeouts,
    Upstream, UpstreamPools,
};
pub use fault::{HttpFault, HttpFaultKind, LatencyDistribution, MalformedMode};
pub use idle_poll::IdlePoll;
pub use server::{Proxy, ProxyError, ProxyHandle};
pub use srm::{
    key_sample_ratio_mismatch, sample_ratio_mismatch, split_checks, SplitChecks,
    SrmResult,
};
pub use workers::{Workers, WorkersError};
