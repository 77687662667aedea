//! Fleets: running faults on other hosts through `chaos agent` over SSH.
//!
//! - [`inventory`]: the hosts (TOML `[[host]]` tables or an Ansible YAML
//!   inventory) and choosing them by name or labels.
//! - [`ssh`]: the system OpenSSH client as a transport (argv only, strict
//!   host keys), and `--install` of this binary on a host.
//! - [`remote`]: connections to many hosts at once: preflight, apply,
//!   heartbeat, revert.
//!
//! Transports know nothing of faults; the agent's fault engine decides
//! which target fits which fault, on the host where it runs.

pub mod inventory;
pub mod remote;
pub mod ssh;

/// Errors reaching or using a host; each names the host.
#[derive(Debug, thiserror::Error)]
pub enum FleetError {
    #[error("{0}")]
    Inventory(String),
    #[error("host {host}: {cause}")]
    Host { host: String, cause: String },
    #[error("host {host}: {source}")]
    Agent {
        host: String,
        #[source]
        source: crate::agent::client::ClientError,
    },
}

impl FleetError {
    /// Exit code: refused faults are invalid input (2), the rest is the
    /// environment (5).
    pub fn exit_code(&self) -> u8 {
        match self {
            FleetError::Agent { source, .. } => source.exit_code(),
            FleetError::Inventory(_) => crate::exit::INVALID,
            FleetError::Host { .. } => crate::exit::ENVIRONMENT,
        }
    }
}
