//! The nftables backend: one `inet` table per fault that the tool owns
//! (`chaos_<run>_<n>`), so revert is `delete table` and never touches
//! anyone else's rules. Loss uses `numgen random`, blackhole `drop`,
//! connection reset `reject with tcp reset`; every rule has a counter.

use std::sync::atomic::{AtomicU32, Ordering};

use super::cmd::Cmd;
use super::{FaultError, NetFilter};
use crate::target::NetTarget;

/// What the table does to matching packets.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Verdict {
    /// Drop this fraction of packets, chosen at random.
    Loss(f64),
    Drop,
    TcpReset,
}

/// A table name unique to this run and process: `chaos_<run>_<n>`.
pub fn table_name(run_id: &str) -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let run: String = run_id
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .take(40)
        .collect();
    format!("chaos_{run}_{n}")
}

/// The ruleset fed to `nft -f -`. Both directions of the target are hit:
/// packets arriving (input) and leaving (output).
pub fn ruleset(
    table: &str,
    target: &NetTarget,
    filter: &NetFilter,
    verdict: Verdict,
) -> Result<String, FaultError> {
    let action = match verdict {
        Verdict::Loss(p) => {
            if !(0.0..=1.0).contains(&p) {
                return Err(FaultError::Invalid(format!("loss {p} is not in [0, 1]")));
            }
            // Per ten thousand so fractional percentages stay exact.
            format!("numgen random mod 10000 < {} counter drop", (p * 10000.0).round())
        }
        Verdict::Drop => "counter drop".to_string(),
        // The RST we generate leaves through the output chain: never
        // reject an RST, or the reset itself would be swallowed.
        Verdict::TcpReset => {
            "tcp flags & rst == 0 counter reject with tcp reset".to_string()
        }
    };
    let mut out = format!("table inet {table} {{\n");
    for (chain, hook, iface_kw, addr_kw, port_kw) in [
        ("input", "input", "iifname", "saddr", "sport"),
        ("output", "output", "oifname", "daddr", "dport"),
    ] {
        out.push_str(&format!(
            "  chain {chain} {{\n    type filter hook {hook} priority -150; policy accept;\n"
        ));
        let iface = match &target.iface {
            Some(i) => format!("{iface_kw} \"{i}\" "),
            // A whole namespace: its own loopback keeps working.
            None => format!("{iface_kw} != \"lo\" "),
        };
        let (v4, v6): (Vec<&String>, Vec<&String>) =
            filter.destinations.iter().partition(|d| !d.contains(':'));
        let mut addr_matches: Vec<String> = Vec::new();
        if filter.destinations.is_empty() {
            addr_matches.push(String::new());
        }
        if !v4.is_empty() {
            addr_matches.push(format!("ip {addr_kw} {{ {} }} ", join(&v4)));
        }
        if !v6.is_empty() {
            addr_matches.push(format!("ip6 {addr_kw} {{ {} }} ", join(&v6)));
        }
        let ports: Vec<String> = filter.ports.iter().map(u16::to_string).collect();
        let proto = if verdict == Verdict::TcpReset { "tcp" } else { "{ tcp, udp }" };
        let mut port_matches: Vec<String> = Vec::new();
        if ports.is_empty() {
            port_matches.push(if verdict == Verdict::TcpReset {
                "meta l4proto tcp ".to_string()
            } else {
                String::new()
            });
        } else {
            // Ports are matched on either side, so `ports = [80]` hits a
            // server listening on 80 and a client calling port 80 alike.
            let set = ports.join(", ");
            for kw in [port_kw, if port_kw == "sport" { "dport" } else { "sport" }] {
                port_matches.push(format!("meta l4proto {proto} th {kw} {{ {set} }} "));
            }
        }
        for a in &addr_matches {
            for p in &port_matches {
                out.push_str(&format!("    {iface}{a}{p}{action}\n"));
            }
        }
        out.push_str("  }\n");
    }
    out.push_str("}\n");
    Ok(out)
}

fn join(items: &[&String]) -> String {
    items.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", ")
}

/// `nft -f -` with the ruleset on stdin.
pub fn add_cmd(netns: Option<&str>, ruleset: String) -> Cmd {
    Cmd::new(netns, "nft", &["-f", "-"]).with_stdin(ruleset)
}

/// Deletes our table.
pub fn del_cmd(netns: Option<&str>, family: &str, table: &str) -> Cmd {
    Cmd::new(netns, "nft", &["delete", "table", family, table])
}

/// Lists our table (fails when it does not exist).
pub fn list_cmd(netns: Option<&str>, family: &str, table: &str) -> Cmd {
    Cmd::new(netns, "nft", &["list", "table", family, table])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ns() -> NetTarget {
        NetTarget { netns: Some("a".into()), iface: None }
    }

    #[test]
    fn loss_of_ten_percent_drops_at_random_in_both_directions_except_loopback() {
        let r = ruleset("chaos_t_0", &ns(), &NetFilter::default(), Verdict::Loss(0.1))
            .unwrap();
        assert!(r.starts_with("table inet chaos_t_0 {"));
        assert!(
            r.contains("iifname != \"lo\" numgen random mod 10000 < 1000 counter drop"),
            "{r}"
        );
        assert!(
            r.contains("oifname != \"lo\" numgen random mod 10000 < 1000 counter drop"),
            "{r}"
        );
    }

    #[test]
    fn a_blackhole_can_be_limited_to_destinations_and_ports() {
        let filter = NetFilter {
            destinations: vec!["10.0.0.0/24".into(), "fd00::/64".into()],
            ports: vec![80, 443],
        };
        let t = NetTarget { netns: None, iface: Some("v0".into()) };
        let r = ruleset("x", &t, &filter, Verdict::Drop).unwrap();
        assert!(r.contains(
            "oifname \"v0\" ip daddr { 10.0.0.0/24 } meta l4proto { tcp, udp } th dport { 80, 443 } counter drop"
        ), "{r}");
        assert!(r.contains("iifname \"v0\" ip6 saddr { fd00::/64 } meta l4proto { tcp, udp } th dport"), "{r}");
    }

    #[test]
    fn tcp_reset_rejects_only_tcp() {
        let r = ruleset("x", &ns(), &NetFilter::default(), Verdict::TcpReset).unwrap();
        assert!(
            r.contains(
                "meta l4proto tcp tcp flags & rst == 0 counter reject with tcp reset"
            ),
            "{r}"
        );
    }

    #[test]
    fn table_names_are_unique_and_nft_safe() {
        let a = table_name("run-1.x");
        let b = table_name("run-1.x");
        assert_ne!(a, b);
        assert!(a.starts_with("chaos_run_1_x_"));
    }
}
