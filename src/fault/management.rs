//! The management path a network fault must spare: the SSH session a
//! controller drives an agent through. A blackhole (or heavy loss) on a
//! host would otherwise drop the agent's own heartbeats, its lease would
//! run out and the fault would undo itself after one lease.
//!
//! The path is what the *host* sees, read by the agent from the
//! environment sshd gives every session: `SSH_CONNECTION` ("peer
//! peer_port local local_port"), else `SSH_CLIENT` ("peer peer_port
//! local_port", no local address). Through a bastion (ProxyJump) the
//! peer is the last jump host, which is exactly the address the
//! session's packets carry on this host; the controller's own address
//! never appears here and would be the wrong thing to spare.
//!
//! The exemption matches the peer address and the sshd port (not the
//! peer's source port), so a new session from the same peer, e.g.
//! `chaos recover --inventory` after the agent was SIGKILLed mid-fault,
//! still reaches the host. Its rules are written first in each chain of
//! the fault's own nft table, so deleting the table (revert, recover)
//! removes the drop and the exemption in one atomic step.

use std::net::IpAddr;

/// The agent's management connection, as its host sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ManagementPath {
    /// The session's peer: the controller, or the last bastion.
    pub peer: IpAddr,
    /// This host's address the session arrived on; `None` when only
    /// `SSH_CLIENT` was set (then any local address matches).
    pub local: Option<IpAddr>,
    /// The sshd port on this host.
    pub port: u16,
}

/// `SSH_CONNECTION` / `SSH_CLIENT` that cannot be read as addresses.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{var}={value:?} is not \"ADDRESS PORT ...\" as sshd sets it: {why}")]
pub struct ManagementError {
    pub var: &'static str,
    pub value: String,
    pub why: String,
}

impl ManagementPath {
    /// The path from sshd's session variables (`get` reads one, e.g.
    /// `std::env::var`); `Ok(None)` outside an SSH session.
    pub fn from_env(
        get: impl Fn(&str) -> Option<String>,
    ) -> Result<Option<ManagementPath>, ManagementError> {
        if let Some(v) = get("SSH_CONNECTION").filter(|v| !v.trim().is_empty()) {
            return parse(&v, "SSH_CONNECTION", 4).map(Some);
        }
        if let Some(v) = get("SSH_CLIENT").filter(|v| !v.trim().is_empty()) {
            return parse(&v, "SSH_CLIENT", 3).map(Some);
        }
        Ok(None)
    }

    /// The nft rules (one per line, without indentation) that accept the
    /// path in `chain` ("input" or "output"), ahead of the fault's drop.
    pub fn rules(&self, chain: &str) -> Vec<String> {
        let fam = if self.peer.is_ipv4() { "ip" } else { "ip6" };
        let (peer_kw, local_kw, port_kw) = match chain {
            "input" => ("saddr", "daddr", "dport"),
            _ => ("daddr", "saddr", "sport"),
        };
        // Addresses and the port are printed from parsed values, so
        // nothing but digits, hex, '.' and ':' reaches the rule text.
        let local =
            self.local.map(|l| format!("{fam} {local_kw} {l} ")).unwrap_or_default();
        let mut out = vec![format!(
            "{fam} {peer_kw} {} {local}tcp {port_kw} {} counter accept comment \"{}\"",
            self.peer, self.port, RULE_COMMENT
        )];
        if self.peer.is_ipv6() {
            // IPv6 resolves neighbours with ICMPv6 (ARP is not in the
            // inet family, so IPv4 needs no such rule): without it the
            // peer's neighbour entry expires and the session dies anyway.
            out.push(format!(
                "icmpv6 type {{ nd-neighbor-solicit, nd-neighbor-advert }} counter accept \
                 comment \"{RULE_COMMENT}\""
            ));
        }
        out
    }
}

/// The comment on every exemption rule (`nft list` shows why it is there).
pub const RULE_COMMENT: &str = "chaos: management path";

impl std::fmt::Display for ManagementPath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let port = self.port;
        match (self.local, self.peer) {
            (Some(l @ IpAddr::V6(_)), p) => write!(f, "ssh {p} -> [{l}]:{port}"),
            (Some(l), p) => write!(f, "ssh {p} -> {l}:{port}"),
            (None, p) => write!(f, "ssh {p} -> port {port}"),
        }
    }
}

fn parse(
    value: &str,
    var: &'static str,
    fields: usize,
) -> Result<ManagementPath, ManagementError> {
    let bad =
        |why: &str| ManagementError { var, value: value.to_string(), why: why.into() };
    let parts: Vec<&str> = value.split_whitespace().collect();
    if parts.len() != fields {
        return Err(bad(&format!("expected {fields} fields")));
    }
    let addr = |text: &str| -> Result<IpAddr, ManagementError> {
        // sshd may print a link-local address with its zone ("%eth0");
        // the rule matches the address itself.
        let text = text.split('%').next().unwrap_or(text);
        text.parse().map_err(|_| bad(&format!("{text:?} is not an IP address")))
    };
    let port = |text: &str| -> Result<u16, ManagementError> {
        text.parse::<u16>()
            .ok()
            .filter(|p| *p > 0)
            .ok_or_else(|| bad(&format!("{text:?} is not a port")))
    };
    let peer = addr(parts[0])?;
    port(parts[1])?;
    let (local, local_port) = if fields == 4 {
        (Some(addr(parts[2])?), port(parts[3])?)
    } else {
        (None, port(parts[2])?)
    };
    let unmapped = |a: IpAddr| match a {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(a, IpAddr::V4),
        v4 => v4,
    };
    let (peer, local) = (unmapped(peer), local.map(unmapped));
    if local.is_some_and(|l| l.is_ipv4() != peer.is_ipv4()) {
        return Err(bad("peer and local address are of different families"));
    }
    Ok(ManagementPath { peer, local, port: local_port })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env<'a>(pairs: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
        move |k| pairs.iter().find(|(n, _)| *n == k).map(|(_, v)| v.to_string())
    }

    #[test]
    fn reads_the_session_from_ssh_connection_first_then_ssh_client() {
        let p = ManagementPath::from_env(env(&[
            ("SSH_CONNECTION", "10.77.0.2 54022 10.77.0.10 22"),
            ("SSH_CLIENT", "192.0.2.9 1 2222"),
        ]))
        .unwrap()
        .unwrap();
        assert_eq!(p.peer.to_string(), "10.77.0.2");
        assert_eq!(p.local.unwrap().to_string(), "10.77.0.10");
        assert_eq!(p.port, 22);
        assert_eq!(p.to_string(), "ssh 10.77.0.2 -> 10.77.0.10:22");
        let c = ManagementPath::from_env(env(&[("SSH_CLIENT", "192.0.2.9 41000 2222")]))
            .unwrap()
            .unwrap();
        assert_eq!((c.local, c.port), (None, 2222));
        assert_eq!(ManagementPath::from_env(env(&[])).unwrap(), None);
    }

    #[test]
    fn input_accepts_from_the_peer_to_sshd_and_output_the_answers() {
        let p = ManagementPath::from_env(env(&[(
            "SSH_CONNECTION",
            "10.77.0.2 54022 10.77.0.10 22",
        )]))
        .unwrap()
        .unwrap();
        assert_eq!(
            p.rules("input"),
            ["ip saddr 10.77.0.2 ip daddr 10.77.0.10 tcp dport 22 counter accept \
              comment \"chaos: management path\""]
        );
        assert_eq!(
            p.rules("output"),
            ["ip daddr 10.77.0.2 ip saddr 10.77.0.10 tcp sport 22 counter accept \
              comment \"chaos: management path\""]
        );
    }

    #[test]
    fn ipv6_sessions_keep_neighbour_discovery_and_mapped_v4_is_v4() {
        let p = ManagementPath::from_env(env(&[(
            "SSH_CONNECTION",
            "fd00::2 5 fe80::1%eth0 22",
        )]))
        .unwrap()
        .unwrap();
        let rules = p.rules("input");
        assert!(rules[0].starts_with("ip6 saddr fd00::2 ip6 daddr fe80::1 tcp dport 22"));
        assert!(rules[1].contains("nd-neighbor-solicit"), "{rules:?}");
        let m = ManagementPath::from_env(env(&[(
            "SSH_CONNECTION",
            "::ffff:10.0.0.1 5 ::ffff:10.0.0.2 22",
        )]))
        .unwrap()
        .unwrap();
        assert_eq!(m.rules("input").len(), 1);
        assert!(m.rules("input")[0].starts_with("ip saddr 10.0.0.1 ip daddr 10.0.0.2"));
    }

    #[test]
    fn malformed_session_variables_are_refused_not_guessed() {
        for bad in [
            "10.0.0.1 22",
            "10.0.0.1 x 10.0.0.2 22",
            "10.0.0.1 1 10.0.0.2 0",
            "evil} 1 10.0.0.2 22",
            "10.0.0.1 1 fd00::1 22",
            "10.0.0.1 1 10.0.0.2 22 extra",
        ] {
            let e = ManagementPath::from_env(env(&[("SSH_CONNECTION", bad)]));
            assert!(e.is_err(), "{bad:?} -> {e:?}");
        }
    }
}
