//! What a fault hits. This file owns the selector syntax shared by the
//! experiment validator and the fault engine; resolution lives in submodules.

use std::fmt;

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
}

/// The selector kinds, for hints.
pub const SELECTOR_KINDS: &str = "pid:N, pidfile:PATH, name:REGEX, netns:NAME, \
iface:NAME[@NETNS], region:NAME";

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
            "pidfile" => Ok(TargetSelector::Pidfile(value.to_string())),
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
                if name.is_empty() || name.len() > 15 || name.contains(['/', ' ']) {
                    return Err(format!(
                        "interface name {name:?} is invalid (1-15 characters, no '/' or space)"
                    ));
                }
                if let Some(ns) = netns {
                    check_netns(ns)?;
                }
                Ok(TargetSelector::Iface {
                    name: name.to_string(),
                    netns: netns.map(str::to_string),
                })
            }
            "region" => Ok(TargetSelector::Region(value.to_string())),
            other => Err(format!(
                "unknown target kind {other:?} in {text:?}; expected one of {SELECTOR_KINDS}"
            )),
        }
    }
}

fn check_netns(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        && name != "."
        && name != "..";
    if ok {
        Ok(())
    } else {
        Err(format!(
            "network namespace name {name:?} is invalid (letters, digits, - _ .)"
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
        assert!(TargetSelector::parse("host:x")
            .unwrap_err()
            .contains("unknown target kind"));
    }
}
