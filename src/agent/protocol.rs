//! The agent protocol: one JSON object per line in each direction,
//! `{"type": ...}`-tagged. Every request carries an `id` the response
//! echoes; the only unsolicited message is the agent's last word (`bye`
//! or `error` with no id) when it leaves on its own (lease expired,
//! signal). Transport-agnostic: stdio over SSH today, a pod's stream
//! later. Versioned by `hello`: the controller lists the protocol
//! versions it speaks, the agent answers with the one it picked.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::time::Duration;

use super::wire::{WireContext, WireFault};
use crate::fault::FaultError;

/// The protocol version this build speaks.
pub const PROTOCOL: u32 = 1;

/// The lease when the controller names none.
pub const DEFAULT_LEASE: Duration = Duration::from_secs(10);

/// Controller → agent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "kebab-case", deny_unknown_fields)]
pub enum Request {
    /// First message: protocol versions the controller speaks.
    Hello {
        id: u64,
        protocols: Vec<u32>,
        /// The controller's `chaos` version (informational).
        version: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        lease_ms: Option<u64>,
    },
    /// Checks this host for a set of faults (tools, privileges, netem,
    /// targets resolvable) without changing anything.
    Preflight { id: u64, faults: Vec<WireFault>, context: WireContext },
    /// The resolved targets and exact commands of one fault (dry run).
    Describe { id: u64, fault: WireFault, context: WireContext },
    /// Applies one fault (journalled on the agent's host) under a lease.
    Apply {
        id: u64,
        label: String,
        fault: WireFault,
        context: WireContext,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        lease_ms: Option<u64>,
    },
    /// Reverts one applied fault by handle, or all of them.
    Revert {
        id: u64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        handle: Option<u64>,
    },
    /// Renews the lease (any request does; this one does nothing else).
    Heartbeat {
        id: u64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        lease_ms: Option<u64>,
    },
    /// What is applied and how long the lease has left.
    Status { id: u64 },
    /// Revert everything and exit.
    Shutdown { id: u64 },
}

impl Request {
    pub fn id(&self) -> u64 {
        match self {
            Request::Hello { id, .. }
            | Request::Preflight { id, .. }
            | Request::Describe { id, .. }
            | Request::Apply { id, .. }
            | Request::Revert { id, .. }
            | Request::Heartbeat { id, .. }
            | Request::Status { id }
            | Request::Shutdown { id } => *id,
        }
    }
}

/// One applied fault, as `status` lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ActiveFault {
    pub handle: u64,
    pub label: String,
}

/// What the agent says about itself in `hello`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentInfo {
    pub protocol: u32,
    /// `chaos` version of the agent binary.
    pub version: String,
    /// The host's name (uname nodename).
    pub host: String,
    pub pid: u32,
    pub journal: String,
    pub euid: u32,
    pub net_admin: bool,
    /// Tool name → present on the agent's $PATH.
    pub tools: BTreeMap<String, bool>,
    /// The management path its nftables faults spare (`ssh PEER ->
    /// LOCAL:PORT`), from sshd's `SSH_CONNECTION`; absent outside SSH.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub management: Option<String>,
}

/// Agent → controller.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "kebab-case", deny_unknown_fields)]
pub enum Response {
    Hello {
        id: u64,
        agent: AgentInfo,
    },
    Ready {
        id: u64,
        warnings: Vec<String>,
    },
    Described {
        id: u64,
        lines: Vec<String>,
    },
    Applied {
        id: u64,
        handle: u64,
        lines: Vec<String>,
    },
    Reverted {
        id: u64,
        handles: Vec<u64>,
    },
    Alive {
        id: u64,
        lease_ms: u64,
    },
    Status {
        id: u64,
        active: Vec<ActiveFault>,
        lease_ms: u64,
        journal: String,
    },
    /// The agent is leaving; everything it applied has been reverted
    /// (`failed` lists what could not be, left pending in its journal).
    Bye {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<u64>,
        reason: String,
        reverted: usize,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        failed: Vec<String>,
    },
    Error {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<u64>,
        code: ErrorCode,
        message: String,
    },
}

impl Response {
    /// The request this answers; `None` for the agent's unsolicited last word.
    pub fn id(&self) -> Option<u64> {
        match self {
            Response::Hello { id, .. }
            | Response::Ready { id, .. }
            | Response::Described { id, .. }
            | Response::Applied { id, .. }
            | Response::Reverted { id, .. }
            | Response::Alive { id, .. }
            | Response::Status { id, .. } => Some(*id),
            Response::Bye { id, .. } | Response::Error { id, .. } => *id,
        }
    }
}

/// Typed error codes: what the controller should do, not what happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ErrorCode {
    /// No protocol version in common.
    Protocol,
    /// A line that is not a request of this protocol.
    BadRequest,
    /// The fault or its targets were refused (bad input: exit 2).
    Invalid,
    /// The host cannot do it: tools, privileges, target missing or
    /// locked (exit 5).
    Environment,
    /// A revert failed; the record stays pending in the agent's journal.
    RevertFailed,
    /// No applied fault has this handle.
    UnknownHandle,
}

impl ErrorCode {
    /// The code for a fault-engine error: the engine's own split
    /// between invalid input (exit 2) and the environment (exit 5).
    pub fn for_fault(e: &FaultError) -> ErrorCode {
        if e.exit_code() == crate::exit::INVALID {
            ErrorCode::Invalid
        } else {
            ErrorCode::Environment
        }
    }

    /// The process exit code a controller should use for it.
    pub fn exit_code(self) -> u8 {
        match self {
            ErrorCode::Invalid => crate::exit::INVALID,
            _ => crate::exit::ENVIRONMENT,
        }
    }
}

/// Duration from optional milliseconds.
pub fn lease_of(ms: Option<u64>) -> Option<Duration> {
    ms.filter(|m| *m > 0).map(Duration::from_millis)
}

/// Milliseconds of a duration, saturating.
pub fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_and_responses_are_one_tagged_json_object_each() {
        let req = Request::Heartbeat { id: 7, lease_ms: Some(5000) };
        let text = serde_json::to_string(&req).unwrap();
        assert_eq!(text, r#"{"type":"heartbeat","id":7,"lease_ms":5000}"#);
        assert_eq!(serde_json::from_str::<Request>(&text).unwrap(), req);
        let resp = Response::Error {
            id: None,
            code: ErrorCode::RevertFailed,
            message: "x".into(),
        };
        let text = serde_json::to_string(&resp).unwrap();
        assert_eq!(text, r#"{"type":"error","code":"revert-failed","message":"x"}"#);
        assert_eq!(serde_json::from_str::<Response>(&text).unwrap().id(), None);
    }

    #[test]
    fn hello_carries_the_agent_info() {
        let info = AgentInfo {
            protocol: 1,
            version: "0.1.0".into(),
            host: "web-1".into(),
            pid: 9,
            journal: "/var/lib/chaos/agent-9.journal".into(),
            euid: 0,
            net_admin: true,
            tools: BTreeMap::from([("nft".to_string(), true)]),
            management: Some("ssh 10.0.0.2 -> 10.0.0.10:22".into()),
        };
        let text =
            serde_json::to_string(&Response::Hello { id: 1, agent: info }).unwrap();
        assert!(
            text.starts_with(r#"{"type":"hello","id":1,"agent":{"protocol":1"#),
            "{text}"
        );
        let back: Response = serde_json::from_str(&text).unwrap();
        assert_eq!(back.id(), Some(1));
    }

    #[test]
    fn unknown_request_types_and_fields_are_refused() {
        assert!(
            serde_json::from_str::<Request>(r#"{"type":"format-disk","id":1}"#).is_err()
        );
        assert!(
            serde_json::from_str::<Request>(r#"{"type":"status","id":1,"x":2}"#).is_err()
        );
    }
}
