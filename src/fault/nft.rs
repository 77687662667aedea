//! The nftables backend: one `inet` table per fault that the tool owns
//! (`chaos_<run>_<n>`), so revert is `delete table` and never touches
//! anyone else's rules. Loss uses `numgen random`, blackhole `drop`,
//! connection reset `reject with tcp reset`; every rule has a counter.
//!
//! Injection safety: the ruleset is text for `nft -f -`, so every value
//! written into it is checked here against a strict charset or re-printed
//! from a parsed value (addresses, ports) before it is used, even though
//! the parser already refused hostile names: no value can add a token,
//! close a string or start a comment. Each table carries a comment naming
//! itself, and [`owned_table`] checks prefix and comment before a revert
//! (or `chaos recover`, which trusts only the journal) deletes it.

use std::sync::atomic::{AtomicU32, Ordering};

use super::cmd::Cmd;
use super::management::ManagementPath;
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
    format!("{TABLE_PREFIX}{run}_{n}")
}

/// Every table the tool creates starts with this.
pub const TABLE_PREFIX: &str = "chaos_";

/// The comment written on a table at creation; [`owned_table`] compares
/// it before deleting. Derived from the name, which the journal records.
pub fn table_comment(table: &str) -> String {
    format!("owned by chaos: {table}")
}

/// A table name we could have made: our prefix, then `[A-Za-z0-9_]`.
fn check_table(table: &str) -> Result<(), FaultError> {
    let ok = table.len() <= 64
        && table.strip_prefix(TABLE_PREFIX).is_some_and(|rest| {
            !rest.is_empty()
                && rest.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        });
    if ok {
        Ok(())
    } else {
        Err(FaultError::Invalid(format!(
            "nft table name {table:?} is not one chaos creates ({TABLE_PREFIX}[A-Za-z0-9_]+)"
        )))
    }
}

const FAMILIES: [&str; 6] = ["inet", "ip", "ip6", "arp", "bridge", "netdev"];

/// True when `table` exists in `netns` and is ours: a name chaos creates
/// (prefix `chaos_`), and the table comment is exactly `expected` (see
/// [`table_comment`]). `Ok(false)` when it is absent. Refuses (error)
/// names that could not be ours: a journal is a file anyone with write
/// access to the journal directory can edit, and must not be able to make
/// `recover` delete someone else's table or smuggle an option into argv.
pub fn owned_table(
    netns: Option<&str>,
    family: &str,
    table: &str,
    expected: &str,
) -> Result<bool, FaultError> {
    if let Some(ns) = netns {
        crate::target::check_netns(ns).map_err(FaultError::Invalid)?;
    }
    if !FAMILIES.contains(&family) {
        return Err(FaultError::Invalid(format!("{family:?} is not an nftables family")));
    }
    check_table(table)?;
    let (ok, listing, _) = list_cmd(netns, family, table).output()?;
    if !ok {
        return Ok(false);
    }
    if listing_has_comment(&listing, expected) {
        Ok(true)
    } else {
        Err(FaultError::NotOwned {
            what: format!("nftables table {family} {table}"),
            reason: format!("it does not carry the comment {expected:?} chaos writes"),
        })
    }
}

/// The table comment is the first line inside the table block.
fn listing_has_comment(listing: &str, expected: &str) -> bool {
    let want = format!("comment \"{expected}\"");
    listing
        .lines()
        .skip_while(|l| !l.trim_start().starts_with("table "))
        .nth(1)
        .is_some_and(|l| l.trim() == want)
}

/// An interface name re-checked right where it enters the rule text.
fn quoted_iface(name: &str) -> Result<String, FaultError> {
    crate::target::check_iface(name).map_err(FaultError::Invalid)?;
    Ok(format!("\"{name}\""))
}

/// An address or CIDR, printed back from its parsed form (so nothing but
/// digits, hex, '.', ':' and '/' reaches the rule text).
fn canonical_cidr(text: &str) -> Result<String, FaultError> {
    let bad = || FaultError::Invalid(format!("{text:?} is not an IP address or CIDR"));
    let (addr, prefix) = match text.split_once('/') {
        Some((a, p)) => (a, Some(p)),
        None => (text, None),
    };
    let ip: std::net::IpAddr = addr.parse().map_err(|_| bad())?;
    let max = if ip.is_ipv4() { 32 } else { 128 };
    match prefix {
        None => Ok(ip.to_string()),
        Some(p) => {
            let n: u8 = p.parse().map_err(|_| bad())?;
            if n > max {
                return Err(bad());
            }
            Ok(format!("{ip}/{n}"))
        }
    }
}

/// The ruleset fed to `nft -f -`. Both directions of the target are hit:
/// packets arriving (input) and leaving (output).
pub fn ruleset(
    table: &str,
    target: &NetTarget,
    filter: &NetFilter,
    verdict: Verdict,
) -> Result<String, FaultError> {
    ruleset_sparing(table, target, filter, verdict, None)
}

/// [`ruleset`], with `spare`'s accept rules first in each chain: an
/// agent's own SSH session passes, everything else meets the verdict.
/// The exemption lives in the fault's own table, so the one `delete
/// table` of revert and `chaos recover` takes both away together.
pub fn ruleset_sparing(
    table: &str,
    target: &NetTarget,
    filter: &NetFilter,
    verdict: Verdict,
    spare: Option<&ManagementPath>,
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
    check_table(table)?;
    let mut out = format!("table inet {table} {{\n");
    out.push_str(&format!("  comment \"{}\"\n", table_comment(table)));
    let iface = target.iface.as_deref().map(quoted_iface).transpose()?;
    let mut v4 = Vec::new();
    let mut v6 = Vec::new();
    for d in &filter.destinations {
        let c = canonical_cidr(d)?;
        if c.contains(':') {
            v6.push(c);
        } else {
            v4.push(c);
        }
    }
    for (chain, hook, iface_kw, addr_kw, port_kw) in [
        ("input", "input", "iifname", "saddr", "sport"),
        ("output", "output", "oifname", "daddr", "dport"),
    ] {
        out.push_str(&format!(
            "  chain {chain} {{\n    type filter hook {hook} priority -150; policy accept;\n"
        ));
        for rule in spare.map(|m| m.rules(chain)).unwrap_or_default() {
            out.push_str(&format!("    {rule}\n"));
        }
        let iface = match &iface {
            Some(i) => format!("{iface_kw} {i} "),
            // A whole namespace: its own loopback keeps working.
            None => format!("{iface_kw} != \"lo\" "),
        };
        let mut addr_matches: Vec<String> = Vec::new();
        if filter.destinations.is_empty() {
            addr_matches.push(String::new());
        }
        if !v4.is_empty() {
            addr_matches.push(format!("ip {addr_kw} {{ {} }} ", v4.join(", ")));
        }
        if !v6.is_empty() {
            addr_matches.push(format!("ip6 {addr_kw} {{ {} }} ", v6.join(", ")));
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
        let r = ruleset("chaos_x", &t, &filter, Verdict::Drop).unwrap();
        assert!(r.contains(
            "oifname \"v0\" ip daddr { 10.0.0.0/24 } meta l4proto { tcp, udp } th dport { 80, 443 } counter drop"
        ), "{r}");
        assert!(r.contains("iifname \"v0\" ip6 saddr { fd00::/64 } meta l4proto { tcp, udp } th dport"), "{r}");
    }

    #[test]
    fn tcp_reset_rejects_only_tcp() {
        let r =
            ruleset("chaos_x", &ns(), &NetFilter::default(), Verdict::TcpReset).unwrap();
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

    /// Issue 12 case 8 at the builder: whatever reaches it (a journal, a
    /// future caller that skips the parser), a hostile value is refused
    /// instead of changing the ruleset's structure.
    #[test]
    fn r12_8_the_nft_builder_refuses_hostile_values() {
        let filter = NetFilter::default();
        for iface in ["q\"drop;drop;#", "a\nb", "eth*", "a b", "..", "-x", "a}b"] {
            let t = NetTarget { netns: None, iface: Some(iface.into()) };
            assert!(
                ruleset("chaos_t_0", &t, &filter, Verdict::Drop).is_err(),
                "{iface:?} reached the ruleset"
            );
        }
        for table in
            ["filter", "chaos_", "chaos_a;flush ruleset", "chaos_a b", "chaos_\n"]
        {
            assert!(ruleset(table, &ns(), &filter, Verdict::Drop).is_err(), "{table:?}");
        }
        for dest in ["10.0.0.0/24 } drop; #", "1.2.3.4/33", "x", "10.0.0.1\n"] {
            let f = NetFilter { destinations: vec![dest.into()], ports: vec![] };
            assert!(ruleset("chaos_t_0", &ns(), &f, Verdict::Drop).is_err(), "{dest:?}");
        }
    }

    #[test]
    fn a_legitimate_blackhole_is_exactly_two_chains_of_one_rule_each() {
        let t = NetTarget { netns: None, iface: Some("v0".into()) };
        let r = ruleset("chaos_t_0", &t, &NetFilter::default(), Verdict::Drop).unwrap();
        let rules: Vec<&str> =
            r.lines().map(str::trim).filter(|l| l.ends_with("drop")).collect();
        assert_eq!(rules, ["iifname \"v0\" counter drop", "oifname \"v0\" counter drop"]);
        assert!(r.contains("comment \"owned by chaos: chaos_t_0\""), "{r}");
    }

    #[test]
    fn a_spared_management_path_is_accepted_ahead_of_the_drop_in_both_chains() {
        let m = ManagementPath {
            peer: "10.77.0.2".parse().unwrap(),
            local: Some("10.77.0.10".parse().unwrap()),
            port: 22,
        };
        let t = NetTarget { netns: None, iface: Some("eth0".into()) };
        let r = ruleset_sparing(
            "chaos_t_0",
            &t,
            &NetFilter::default(),
            Verdict::Drop,
            Some(&m),
        )
        .unwrap();
        let rules: Vec<&str> = r
            .lines()
            .map(str::trim)
            .filter(|l| l.ends_with("drop") || l.contains("accept comment"))
            .collect();
        assert_eq!(
            rules,
            [
                "ip saddr 10.77.0.2 ip daddr 10.77.0.10 tcp dport 22 counter accept comment \"chaos: management path\"",
                "iifname \"eth0\" counter drop",
                "ip daddr 10.77.0.2 ip saddr 10.77.0.10 tcp sport 22 counter accept comment \"chaos: management path\"",
                "oifname \"eth0\" counter drop",
            ]
        );
        // The table comment stays the first line: ownership checks hold.
        assert!(listing_has_comment(&r, &table_comment("chaos_t_0")), "{r}");
    }

    #[test]
    fn ownership_needs_the_table_comment_as_first_line_of_the_table() {
        let ours = "table inet chaos_a_0 {\n\tcomment \"owned by chaos: chaos_a_0\"\n\tchain input {\n";
        assert!(listing_has_comment(ours, &table_comment("chaos_a_0")));
        assert!(!listing_has_comment(ours, &table_comment("chaos_b_0")));
        let theirs = "table inet chaos_a_0 {\n\tchain input {\n\t\tcomment \"owned by chaos: chaos_a_0\"\n";
        assert!(!listing_has_comment(theirs, &table_comment("chaos_a_0")));
    }

    /// Issue 12 case 13: names a journal could carry that are not ours
    /// are refused before any command runs.
    #[test]
    fn r12_13_owned_table_refuses_names_chaos_never_creates() {
        let c = table_comment("filter");
        assert!(owned_table(None, "inet", "filter", &c).is_err());
        assert!(owned_table(None, "-f", "chaos_a_0", &c).is_err());
        assert!(owned_table(Some("-x"), "inet", "chaos_a_0", &c).is_err());
        assert!(owned_table(None, "inet", "chaos_a;b", &c).is_err());
    }
}
