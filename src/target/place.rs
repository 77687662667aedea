//! Where a target lives: this machine, or hosts of a fleet inventory.
//! Wraps [`TargetSelector`] with an optional host part, split off at the
//! `@host:` / `@hosts:` marker (the selector itself may contain `@`, as
//! in `iface:NAME@NETNS`):
//!
//! - `name:payments` — here;
//! - `name:payments@host:web-1` — on the inventory host `web-1`;
//! - `iface:eth0@hosts:region=us-east,role=web` — on every host whose
//!   labels match all pairs (`group=NAME` matches an Ansible group,
//!   `hosts:*` every host).
//!
//! In a selector with a host part, `{host}` stands for each host's
//! inventory name (e.g. `pidfile:/srv/{host}/api.pid` on a shared file
//! system); it is replaced before the selector is sent to that host.

use std::fmt;

use super::TargetSelector;

/// Which hosts a placed target names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Place {
    /// This machine (no host part).
    Local,
    /// One inventory host by name.
    Host(String),
    /// Every host whose labels match all pairs; empty = every host.
    Hosts(Vec<(String, String)>),
}

/// A target selector and the place it runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placement {
    /// The selector as parsed (with `{host}` left as a literal
    /// placeholder for remote places; see [`Placement::for_host`]).
    pub selector: TargetSelector,
    /// The selector text as written, before `{host}` expansion.
    pub text: String,
    pub place: Place,
}

const HOST_MARK: &str = "@host:";
const HOSTS_MARK: &str = "@hosts:";

/// The placeholder `{host}` is validated as, so regexes and paths that
/// contain it parse (`{` is not valid regex syntax on its own).
const PLACEHOLDER: &str = "HOST";

impl Placement {
    /// Parses `SELECTOR[@host:NAME | @hosts:K=V[,K=V...] | @hosts:*]`.
    pub fn parse(text: &str) -> Result<Placement, String> {
        let (sel_text, place) = if let Some(i) = text.rfind(HOSTS_MARK) {
            (&text[..i], parse_labels(&text[i + HOSTS_MARK.len()..])?)
        } else if let Some(i) = text.rfind(HOST_MARK) {
            let name = &text[i + HOST_MARK.len()..];
            check_name(name)?;
            (&text[..i], Place::Host(name.to_string()))
        } else {
            (text, Place::Local)
        };
        if place == Place::Local && sel_text.contains("{host}") {
            return Err(format!(
                "target {text:?} uses {{host}} but names no hosts (add @host:NAME or @hosts:LABEL=VALUE)"
            ));
        }
        let selector = TargetSelector::parse(&sel_text.replace("{host}", PLACEHOLDER))?;
        Ok(Placement { selector, text: sel_text.to_string(), place })
    }

    /// True when the target names hosts of an inventory.
    pub fn is_remote(&self) -> bool {
        self.place != Place::Local
    }

    /// The selector to send to host `name` (with `{host}` replaced).
    pub fn for_host(&self, name: &str) -> Result<TargetSelector, String> {
        TargetSelector::parse(&self.text.replace("{host}", name))
    }
}

fn check_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 253
        && name.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c));
    if ok {
        Ok(())
    } else {
        Err(format!("host name {name:?} is invalid (letters, digits, - _ .)"))
    }
}

fn parse_labels(text: &str) -> Result<Place, String> {
    if text == "*" {
        return Ok(Place::Hosts(Vec::new()));
    }
    let mut pairs = Vec::new();
    for part in text.split(',') {
        let Some((k, v)) = part.split_once('=') else {
            return Err(format!(
                "host selector {part:?} needs KEY=VALUE (e.g. @hosts:role=payments) or * for every host"
            ));
        };
        check_name(k).map_err(|e| format!("label key: {e}"))?;
        check_name(v).map_err(|e| format!("label value: {e}"))?;
        pairs.push((k.to_string(), v.to_string()));
    }
    Ok(Place::Hosts(pairs))
}

impl fmt::Display for Placement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.text)?;
        match &self.place {
            Place::Local => Ok(()),
            Place::Host(h) => write!(f, "{HOST_MARK}{h}"),
            Place::Hosts(pairs) if pairs.is_empty() => write!(f, "{HOSTS_MARK}*"),
            Place::Hosts(pairs) => {
                let list: Vec<String> =
                    pairs.iter().map(|(k, v)| format!("{k}={v}")).collect();
                write!(f, "{HOSTS_MARK}{}", list.join(","))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_the_host_part_off_at_its_marker_and_prints_it_back() {
        for text in [
            "name:payments",
            "name:payments@host:web-1",
            "name:payments@hosts:role=payments",
            "iface:eth0@hosts:region=us-east,role=web",
            "iface:eth0@blue@host:web-1",
            "netns:blue@hosts:*",
            "pidfile:/srv/{host}/api.pid@hosts:role=api",
        ] {
            let p = Placement::parse(text).expect(text);
            assert_eq!(p.to_string(), text);
        }
        let p = Placement::parse("iface:eth0@blue@host:web-1").unwrap();
        assert_eq!(
            p.selector,
            TargetSelector::Iface { name: "eth0".into(), netns: Some("blue".into()) }
        );
        assert_eq!(p.place, Place::Host("web-1".into()));
        assert!(!Placement::parse("iface:eth0@blue").unwrap().is_remote());
    }

    #[test]
    fn host_placeholders_expand_per_host() {
        let p = Placement::parse("name:payments-{host}@hosts:role=payments").unwrap();
        assert_eq!(
            p.for_host("web-2").unwrap(),
            TargetSelector::Name("payments-web-2".into())
        );
    }

    #[test]
    fn malformed_host_parts_are_refused_with_a_reason() {
        assert!(Placement::parse("name:x@hosts:role").unwrap_err().contains("KEY=VALUE"));
        assert!(Placement::parse("name:x@host:").unwrap_err().contains("invalid"));
        assert!(Placement::parse("name:x@host:a b").is_err());
        assert!(Placement::parse("name:{host}").unwrap_err().contains("names no hosts"));
        assert!(Placement::parse("pid:0@host:web-1").is_err());
    }
}
