//! What a fault hits. This file owns the selector syntax shared by the
//! experiment validator and the fault engine; resolution lives in submodules.

use std::fmt;

pub mod container;
pub mod place;
pub mod process;
pub mod resolve;

pub use resolve::{
    resolve, select, BlastRadius, NetTarget, Resolved, Selection, TargetError,
};

/// A parsed `--target` / `target = "..."` value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TargetSelector {
    /// `pid:N`
    Pid(u32),
    /// `pidfile:PATH`
    Pidfile(String),
    /// `name:PATTERN` — regex over the process name and command line.
    Name(String),
    /// `netns:NAME`
    Netns(String),
    /// `iface:NAME[@NETNS]`
    Iface { name: String, netns: Option<String> },
    /// `region:NAME` — every target labelled with this region.
    Region(String),
    /// `container:RUNTIME://ID` — the processes of one container, or its
    /// network namespace (see [`container`]); what the agent on a
    /// Kubernetes node is sent for faults inside a pod.
    Container(container::ContainerId),
}

/// The selector kinds, for hints.
pub const SELECTOR_KINDS: &str = "pid:N, pidfile:PATH, name:REGEX, netns:NAME, \
iface:NAME[@NETNS], region:NAME, container:RUNTIME://ID";

impl TargetSelector {
    /// Parses `kind:value`; the error says what was expected.
    pub fn parse(text: &str) -> Result<TargetSelector, String> {
        let Some((kind, value)) = text.split_once(':') else {
            return Err(format!(
                "target {text:?} has no kind; expected one of {SELECTOR_KINDS}"
            ));
        };
        if value.is_empty() {
            return Err(format!("target {text:?} has an empty {kind:?} value"));
        }
        match kind {
            "pid" => value
                .parse::<u32>()
                .ok()
                .filter(|p| *p > 0)
                .map(TargetSelector::Pid)
                .ok_or_else(|| format!("pid target {text:?} needs a positive integer")),
            "pidfile" => {
                if value.chars().any(char::is_control) {
                    return Err(format!(
                        "pidfile path {value:?} contains a control character"
                    ));
                }
                Ok(TargetSelector::Pidfile(value.to_string()))
            }
            "name" => match regex::Regex::new(value) {
                Ok(_) => Ok(TargetSelector::Name(value.to_string())),
                Err(e) => Err(format!("name target {text:?} is not a valid regex: {e}")),
            },
            "netns" => check_netns(value).map(|()| TargetSelector::Netns(value.to_string())),
            "iface" => {
                let (name, netns) = match value.split_once('@') {
                    Some((n, ns)) => (n, Some(ns)),
                    None => (value, None),
                };
                check_iface(name)?;
                if let Some(ns) = netns {
                    check_netns(ns)?;
                }
                Ok(TargetSelector::Iface {
                    name: name.to_string(),
                    netns: netns.map(str::to_string),
                })
            }
            "region" => {
                check_region(value).map(|()| TargetSelector::Region(value.to_string()))
            }
            "container" => container::ContainerId::parse(value)
                .map(TargetSelector::Container)
                .map_err(|e| format!("container target {text:?}: {e}")),
            other => Err(format!(
                "unknown target kind {other:?} in {text:?}; expected one of {SELECTOR_KINDS}"
            )),
        }
    }
}

/// Characters allowed in interface, namespace and region names. The
/// kernel allows more in an interface name (anything but '/', ':' and
/// whitespace), but a name also ends up inside nft rules (`iifname "..."`,
/// where `*` is a wildcard and `"` ends the string) and in `ip`/`tc` argv:
/// only this set is certain to mean itself everywhere.
fn safe_name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')
}

/// Checks an interface name: the kernel's `dev_valid_name` rules (1 to 15
/// bytes, not "." or "..", no '/', ':' or whitespace) narrowed to
/// [`safe_name_char`], and no leading '-' (it would read as an option of
/// `ip` or `tc`).
pub fn check_iface(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 15
        && name != "."
        && name != ".."
        && !name.starts_with('-')
        && name.chars().all(safe_name_char);
    if ok {
        Ok(())
    } else {
        Err(format!(
            "interface name {name:?} is invalid (1-15 characters of letters, digits, \
             - _ . ; not \".\" or \"..\", not starting with -)"
        ))
    }
}

/// Checks a network namespace name (a file in /run/netns, and an argv
/// word of `ip netns exec`).
pub fn check_netns(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name.chars().all(safe_name_char)
        && !name.starts_with('-')
        && name != "."
        && name != "..";
    if ok {
        Ok(())
    } else {
        Err(format!(
            "network namespace name {name:?} is invalid (1-64 characters of letters, \
             digits, - _ . ; not \".\" or \"..\", not starting with -)"
        ))
    }
}

/// Checks a region name: it is printed in plans, reports and logs, so no
/// control characters (a newline would forge a log line).
fn check_region(name: &str) -> Result<(), String> {
    if name.len() <= 64 && name.chars().all(|c| !c.is_control()) {
        Ok(())
    } else {
        Err(format!(
            "region name {name:?} is invalid (at most 64 characters, no control characters)"
        ))
    }
}

impl fmt::Display for TargetSelector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TargetSelector::Pid(p) => write!(f, "pid:{p}"),
            TargetSelector::Pidfile(p) => write!(f, "pidfile:{p}"),
            TargetSelector::Name(n) => write!(f, "name:{n}"),
            TargetSelector::Netns(n) => write!(f, "netns:{n}"),
            TargetSelector::Iface { name, netns: Some(ns) } => {
                write!(f, "iface:{name}@{ns}")
            }
            TargetSelector::Iface { name, netns: None } => write!(f, "iface:{name}"),
            TargetSelector::Region(r) => write!(f, "region:{r}"),
            TargetSelector::Container(c) => write!(f, "container:{c}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_selector_kind_and_prints_it_back() {
        for text in [
            "pid:42",
            "pidfile:/run/api.pid",
            "name:payments-(us|eu)",
            "netns:chaos-a",
            "iface:veth0",
            "iface:veth0@chaos-a",
            "region:us-east",
            "container:containerd://0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
        ] {
            let sel = TargetSelector::parse(text).expect(text);
            assert_eq!(sel.to_string(), text);
        }
    }

    #[test]
    fn refuses_malformed_selectors_with_a_reason() {
        assert!(TargetSelector::parse("payments").unwrap_err().contains("no kind"));
        assert!(TargetSelector::parse("pid:0").unwrap_err().contains("positive"));
        assert!(TargetSelector::parse("pid:abc").is_err());
        assert!(TargetSelector::parse("name:(").unwrap_err().contains("regex"));
        assert!(TargetSelector::parse("iface:averyveryverylongname").is_err());
        assert!(TargetSelector::parse("netns:../etc").is_err());
        assert!(TargetSelector::parse("netns:-n").is_err());
        assert!(TargetSelector::parse("host:x")
            .unwrap_err()
            .contains("unknown target kind"));
    }

    /// Issue 12 case 8: a quote in an interface name turned a blackhole
    /// into two plain `drop` rules. Every name the nft builder or `ip`
    /// could misread is refused at parse time.
    #[test]
    fn r12_8_hostile_interface_names_are_refused() {
        for bad in [
            "iface:q\"drop;drop;#@ns",
            "iface:q\"drop;drop;#",
            "iface:.",
            "iface:..",
            "iface:a\nb",
            "iface:a\rb",
            "iface:a\0b",
            "iface:a b",
            "iface:a\tb",
            "iface:a/b",
            "iface:a:b",
            "iface:eth*",
            "iface:a\\b",
            "iface:a'b",
            "iface:a{b}",
            "iface:-dev",
            "iface:sixteen_chars_xx",
            "iface:\u{e9}t\u{e9}",
            "iface:v0@bad\"ns",
            "iface:v0@..",
            "iface:v0@",
            "netns:a\nb",
            "netns:a\"b",
            "region:a\nb",
            "pidfile:/run/a\nb",
        ] {
            assert!(TargetSelector::parse(bad).is_err(), "{bad:?} was accepted");
        }
        for good in
            ["iface:eth0", "iface:eth0.100", "iface:veth-a_1", "iface:fifteen_chars_x"]
        {
            assert!(TargetSelector::parse(good).is_ok(), "{good:?} was refused");
        }
    }
}
