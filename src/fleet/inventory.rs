//! The fleet inventory: which hosts exist, how to reach them, and their
//! labels. Two shapes are read: chaos's own TOML (`[[host]]` tables and
//! an optional `[ssh]` table) and the Ansible YAML inventory SRE teams
//! already keep (`all` / `children` / `hosts`, with `ansible_host`,
//! `ansible_user`, `ansible_port`, `ansible_ssh_private_key_file`; other
//! host and group variables become labels, group membership `group=NAME`).
//! Problems are reported as `FILE:LINE:COL: error: ...` with a hint.

use serde::Deserialize;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::experiment::diagnostic::{Diagnostic, Sink};
use crate::target::place::Place;

/// One host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Host {
    /// Inventory name (what `@host:NAME` and reports use).
    pub name: String,
    /// Address or ssh_config alias to connect to.
    pub address: String,
    pub user: Option<String>,
    pub port: Option<u16>,
    /// Private key file (`ssh -i`).
    pub identity: Option<PathBuf>,
    /// The `chaos` command on the host (default `chaos` on its $PATH).
    pub chaos: String,
    pub labels: BTreeMap<String, String>,
    /// Ansible groups the host belongs to.
    pub groups: BTreeSet<String>,
}

impl Host {
    /// True when every pair matches a label (`group=NAME`: membership).
    pub fn matches(&self, pairs: &[(String, String)]) -> bool {
        pairs.iter().all(|(k, v)| {
            self.labels.get(k) == Some(v) || (k == "group" && self.groups.contains(v))
        })
    }
}

/// How the SSH client is run for every host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SshSettings {
    /// known_hosts file (`UserKnownHostsFile`); default: ssh's own.
    pub known_hosts: Option<PathBuf>,
    /// An ssh_config file (`-F`); default: ssh's own (~/.ssh/config).
    pub config: Option<PathBuf>,
    pub connect_timeout: Duration,
    /// Where `--install` puts this binary on a host.
    pub install_path: String,
    /// Agent lease for `chaos run` (commands take `--lease`).
    pub lease: Duration,
    /// `chaos run`: install this binary where it is missing (commands
    /// take `--install`).
    pub install: bool,
}

impl Default for SshSettings {
    fn default() -> Self {
        SshSettings {
            known_hosts: None,
            config: None,
            connect_timeout: Duration::from_secs(5),
            install_path: "/usr/local/bin/chaos".into(),
            lease: crate::agent::protocol::DEFAULT_LEASE,
            install: false,
        }
    }
}

/// Every host, and the SSH settings.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Inventory {
    pub hosts: Vec<Host>,
    pub ssh: SshSettings,
}

impl Inventory {
    /// Reads an inventory file: `.yml`/`.yaml` as Ansible YAML, anything
    /// else as TOML. Errors are rendered diagnostics.
    pub fn load(path: &Path) -> Result<Inventory, String> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            format!("{}: error: cannot read the inventory: {e}", path.display())
        })?;
        let file = path.display().to_string();
        let yaml = path.extension().is_some_and(|e| e == "yml" || e == "yaml");
        let parsed =
            if yaml { from_ansible(&file, &text) } else { from_toml(&file, &text) };
        parsed.map_err(|diags| {
            diags.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n")
        })
    }

    /// The hosts a place names, in inventory order.
    pub fn select(&self, place: &Place) -> Result<Vec<&Host>, String> {
        let names =
            || self.hosts.iter().map(|h| h.name.as_str()).collect::<Vec<_>>().join(", ");
        match place {
            Place::Local => Ok(Vec::new()),
            Place::Host(name) => match self.hosts.iter().find(|h| &h.name == name) {
                Some(h) => Ok(vec![h]),
                None => {
                    Err(format!("no host {name:?} in the inventory; hosts: {}", names()))
                }
            },
            Place::Hosts(pairs) => {
                let hits: Vec<&Host> =
                    self.hosts.iter().filter(|h| h.matches(pairs)).collect();
                if hits.is_empty() {
                    let want: Vec<String> =
                        pairs.iter().map(|(k, v)| format!("{k}={v}")).collect();
                    Err(format!(
                        "no host has labels {}; hosts: {}",
                        want.join(","),
                        names()
                    ))
                } else {
                    Ok(hits)
                }
            }
        }
    }
}

/// Limits on how many hosts one fault may reach.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct HostLimits {
    pub max_hosts: Option<u32>,
    /// A fraction in (0, 1] of the inventory's hosts.
    pub max_host_percent: Option<f64>,
}

impl HostLimits {
    /// Refuses a selection of `selected` hosts out of `total`.
    pub fn check(&self, selected: usize, total: usize) -> Result<(), String> {
        match self.exceeded(selected, total) {
            None => Ok(()),
            Some(limit) => Err(format!(
                "blast radius exceeded: {selected} of {total} hosts selected, {limit}"
            )),
        }
    }

    /// The limit a selection of `selected` hosts out of `total` breaks,
    /// e.g. `max_hosts 2`; `None` when it fits.
    pub fn exceeded(&self, selected: usize, total: usize) -> Option<String> {
        if let Some(max) = self.max_hosts {
            if selected > max as usize {
                return Some(format!("max_hosts {max}"));
            }
        }
        if let Some(p) = self.max_host_percent {
            let limit = (p * total as f64).floor() as usize;
            if selected > limit {
                return Some(format!("max_host_percent {}% allows {limit}", p * 100.0));
            }
        }
        None
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TomlFile {
    /// How ssh is run.
    #[serde(default)]
    ssh: Option<TomlSsh>,
    /// The hosts.
    #[serde(default)]
    host: Vec<TomlHost>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TomlSsh {
    /// known_hosts file for StrictHostKeyChecking.
    known_hosts: Option<String>,
    /// ssh_config file passed with -F.
    config: Option<String>,
    /// e.g. "5s".
    connect_timeout: Option<toml::Spanned<String>>,
    /// Where --install copies the binary.
    install_path: Option<toml::Spanned<String>>,
    /// Agent lease for `chaos run`, e.g. "10s".
    lease: Option<toml::Spanned<String>>,
    /// `chaos run`: install chaos on hosts without it.
    install: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TomlHost {
    /// Inventory name.
    name: toml::Spanned<String>,
    /// Address or ssh_config alias.
    address: toml::Spanned<String>,
    /// Login user.
    user: Option<toml::Spanned<String>>,
    /// SSH port.
    port: Option<u16>,
    /// Private key file.
    identity: Option<String>,
    /// The chaos command on the host.
    chaos: Option<toml::Spanned<String>>,
    /// Labels for @hosts:KEY=VALUE.
    #[serde(default)]
    labels: BTreeMap<String, String>,
}

/// The `[ssh]` table and `[[host]]` tables of an experiment file (other
/// sections are the experiment parser's); `None` when it has no hosts.
#[derive(Debug, Deserialize)]
struct TomlSection {
    #[serde(default)]
    ssh: Option<TomlSsh>,
    #[serde(default)]
    host: Vec<TomlHost>,
}

/// Reads the hosts declared in an experiment file into `sink`.
pub fn read_experiment_hosts(src: &str, sink: &mut Sink) -> Option<Inventory> {
    let spec: TomlSection = match toml::from_str(src) {
        Ok(s) => s,
        Err(e) => {
            sink.error(e.span(), "host", e.message().to_string(), HOST_HINT);
            return None;
        }
    };
    if spec.host.is_empty() && spec.ssh.is_none() {
        return None;
    }
    let before = sink.diagnostics.len();
    let inv = convert(spec.ssh, spec.host, sink);
    if inv.hosts.is_empty() {
        sink.error(None, "host", "[ssh] without any [[host]] table".into(), HOST_HINT);
    }
    (sink.diagnostics.len() == before).then_some(inv)
}

const HOST_HINT: &str = "an inventory has [[host]] tables (name, address, user, port, \
    identity, chaos, labels) and an optional [ssh] table (known_hosts, config, \
    connect_timeout, install_path, lease, install)";

fn from_toml(file: &str, text: &str) -> Result<Inventory, Vec<Diagnostic>> {
    let mut sink = Sink::new(file, text);
    let spec: TomlFile = match toml::from_str(text) {
        Ok(s) => s,
        Err(e) => {
            sink.error(e.span(), "", e.message().to_string(), HOST_HINT);
            return Err(sink.diagnostics);
        }
    };
    let inv = convert(spec.ssh, spec.host, &mut sink);
    if inv.hosts.is_empty() && !sink.has_errors() {
        sink.error(
            None,
            "host",
            "the inventory declares no hosts".into(),
            "add [[host]] tables",
        );
    }
    if sink.has_errors() {
        Err(sink.diagnostics)
    } else {
        Ok(inv)
    }
}

fn convert(ssh: Option<TomlSsh>, hosts: Vec<TomlHost>, sink: &mut Sink) -> Inventory {
    let mut inv = Inventory::default();
    if let Some(ssh) = ssh {
        if let Some(t) = ssh.lease {
            match crate::units::parse_duration(t.get_ref()) {
                Ok(d) if d >= Duration::from_secs(1) => inv.ssh.lease = d,
                Ok(_) => sink.error(
                    Some(t.span()),
                    "ssh.lease",
                    "the lease must be at least 1s".into(),
                    "e.g. \"10s\"",
                ),
                Err(e) => sink.error(Some(t.span()), "ssh.lease", e, "e.g. \"10s\""),
            }
        }
        inv.ssh.install = ssh.install.unwrap_or(false);
        inv.ssh.known_hosts = ssh.known_hosts.map(|p| expand_home(&p));
        inv.ssh.config = ssh.config.map(|p| expand_home(&p));
        if let Some(t) = ssh.connect_timeout {
            match crate::units::parse_duration(t.get_ref()) {
                Ok(d) => inv.ssh.connect_timeout = d,
                Err(e) => {
                    sink.error(Some(t.span()), "ssh.connect_timeout", e, "e.g. \"5s\"")
                }
            }
        }
        if let Some(p) = ssh.install_path {
            match crate::fleet::ssh::check_remote_path(p.get_ref()) {
                Ok(()) => inv.ssh.install_path = p.into_inner(),
                Err(e) => {
                    sink.error(Some(p.span()), "ssh.install_path", e, "an absolute path")
                }
            }
        }
    }
    let mut seen = BTreeSet::new();
    for (i, h) in hosts.into_iter().enumerate() {
        let path = format!("host[{i}]");
        let name = h.name.get_ref().clone();
        if let Err(e) = check_word(&name) {
            sink.error(
                Some(h.name.span()),
                &format!("{path}.name"),
                e,
                "letters, digits, - _ .",
            );
        } else if !seen.insert(name.clone()) {
            sink.error(
                Some(h.name.span()),
                &format!("{path}.name"),
                format!("host {name:?} is declared twice"),
                "host names must be unique",
            );
        }
        if let Err(e) = check_address(h.address.get_ref()) {
            sink.error(
                Some(h.address.span()),
                &format!("{path}.address"),
                e,
                "an IP address or host name",
            );
        }
        if let Some(u) = &h.user {
            if let Err(e) = check_word(u.get_ref()) {
                sink.error(Some(u.span()), &format!("{path}.user"), e, "a login name");
            }
        }
        if let Some(c) = &h.chaos {
            if let Err(e) = crate::fleet::ssh::check_remote_path(c.get_ref()) {
                sink.error(
                    Some(c.span()),
                    &format!("{path}.chaos"),
                    e,
                    "e.g. \"/usr/local/bin/chaos\"",
                );
            }
        }
        inv.hosts.push(Host {
            name,
            address: h.address.into_inner(),
            user: h.user.map(toml::Spanned::into_inner),
            port: h.port,
            identity: h.identity.map(|p| expand_home(&p)),
            chaos: h
                .chaos
                .map(toml::Spanned::into_inner)
                .unwrap_or_else(|| "chaos".into()),
            labels: h.labels,
            groups: BTreeSet::new(),
        });
    }
    inv
}

fn from_ansible(file: &str, text: &str) -> Result<Inventory, Vec<Diagnostic>> {
    use serde_yaml_ng::Value;
    let mut sink = Sink::new(file, text);
    let root: Value = match serde_yaml_ng::from_str(text) {
        Ok(v) => v,
        Err(e) => {
            let span = e.location().map(|l| l.index()..l.index());
            sink.error(
                span,
                "",
                e.to_string(),
                "an Ansible YAML inventory: all: {hosts: ..., children: ...}",
            );
            return Err(sink.diagnostics);
        }
    };
    // Where a key first appears, for error locations.
    let at = |key: &str| text.find(&format!("{key}:")).map(|i| i..i);
    let mut hosts: BTreeMap<String, (BTreeMap<String, Value>, BTreeSet<String>)> =
        BTreeMap::new();
    let mut order = Vec::new();
    fn walk(
        group: &str,
        node: &Value,
        inherited: &BTreeMap<String, Value>,
        hosts: &mut BTreeMap<String, (BTreeMap<String, Value>, BTreeSet<String>)>,
        order: &mut Vec<String>,
    ) {
        let mut vars = inherited.clone();
        if let Some(Value::Mapping(m)) = node.get("vars") {
            for (k, v) in m {
                if let Some(k) = k.as_str() {
                    vars.insert(k.to_string(), v.clone());
                }
            }
        }
        if let Some(Value::Mapping(m)) = node.get("hosts") {
            for (name, hv) in m {
                let Some(name) = name.as_str() else { continue };
                let entry = hosts.entry(name.to_string()).or_insert_with(|| {
                    order.push(name.to_string());
                    (BTreeMap::new(), BTreeSet::new())
                });
                for (k, v) in &vars {
                    entry.0.entry(k.clone()).or_insert_with(|| v.clone());
                }
                if let Value::Mapping(hm) = hv {
                    for (k, v) in hm {
                        if let Some(k) = k.as_str() {
                            // Host vars beat group vars.
                            entry.0.insert(k.to_string(), v.clone());
                        }
                    }
                }
                if group != "all" && group != "ungrouped" {
                    entry.1.insert(group.to_string());
                }
            }
        }
        if let Some(Value::Mapping(m)) = node.get("children") {
            for (child, cv) in m {
                if let Some(child) = child.as_str() {
                    walk(child, cv, &vars, hosts, order);
                }
            }
        }
    }
    match root.get("all") {
        Some(all) => walk("all", all, &BTreeMap::new(), &mut hosts, &mut order),
        None => {
            // Top-level groups without `all:`.
            if let Value::Mapping(m) = &root {
                for (g, gv) in m {
                    if let Some(g) = g.as_str() {
                        walk(g, gv, &BTreeMap::new(), &mut hosts, &mut order);
                    }
                }
            }
        }
    }
    let mut inv = Inventory::default();
    for name in order {
        let (vars, groups) = &hosts[&name];
        let text_of = |v: &Value| match v {
            Value::String(s) => Some(s.clone()),
            Value::Number(n) => Some(n.to_string()),
            Value::Bool(b) => Some(b.to_string()),
            _ => None,
        };
        if let Err(e) = check_word(&name) {
            sink.error(at(&name), &name, e, "letters, digits, - _ .");
            continue;
        }
        let address =
            vars.get("ansible_host").and_then(text_of).unwrap_or_else(|| name.clone());
        if let Err(e) = check_address(&address) {
            sink.error(
                at("ansible_host"),
                &format!("{name}.ansible_host"),
                e,
                "an IP address or host name",
            );
        }
        let port = match vars.get("ansible_port") {
            None => None,
            Some(v) => match text_of(v).and_then(|t| t.parse::<u16>().ok()) {
                Some(p) => Some(p),
                None => {
                    sink.error(
                        at("ansible_port"),
                        &format!("{name}.ansible_port"),
                        "ansible_port must be a port number".into(),
                        "e.g. 22",
                    );
                    None
                }
            },
        };
        let user = vars.get("ansible_user").and_then(text_of);
        if let Some(u) = &user {
            if let Err(e) = check_word(u) {
                sink.error(
                    at("ansible_user"),
                    &format!("{name}.ansible_user"),
                    e,
                    "a login name",
                );
            }
        }
        let chaos =
            vars.get("chaos_path").and_then(text_of).unwrap_or_else(|| "chaos".into());
        if let Err(e) = crate::fleet::ssh::check_remote_path(&chaos) {
            sink.error(
                at("chaos_path"),
                &format!("{name}.chaos_path"),
                e,
                "e.g. /usr/local/bin/chaos",
            );
        }
        let labels = vars
            .iter()
            .filter(|(k, _)| !k.starts_with("ansible_") && k.as_str() != "chaos_path")
            .filter_map(|(k, v)| text_of(v).map(|t| (k.clone(), t)))
            .collect();
        inv.hosts.push(Host {
            name: name.clone(),
            address,
            user,
            port,
            identity: vars
                .get("ansible_ssh_private_key_file")
                .and_then(text_of)
                .map(|p| expand_home(&p)),
            chaos,
            labels,
            groups: groups.clone(),
        });
    }
    if inv.hosts.is_empty() && !sink.has_errors() {
        sink.error(
            None,
            "all",
            "the inventory declares no hosts".into(),
            "all: {hosts: {web-1: {ansible_host: 10.0.0.11}}}",
        );
    }
    if sink.has_errors() {
        Err(sink.diagnostics)
    } else {
        Ok(inv)
    }
}

fn expand_home(p: &str) -> PathBuf {
    match (p.strip_prefix("~/"), std::env::var_os("HOME")) {
        (Some(rest), Some(home)) => PathBuf::from(home).join(rest),
        _ => PathBuf::from(p),
    }
}

/// A name, user or label: letters, digits, `-`, `_`, `.`; never starting
/// with `-` (it would read as an ssh option).
fn check_word(s: &str) -> Result<(), String> {
    let ok = !s.is_empty()
        && !s.starts_with('-')
        && s.len() <= 253
        && s.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c));
    if ok {
        Ok(())
    } else {
        Err(format!("{s:?} is invalid (letters, digits, - _ ., not starting with -)"))
    }
}

/// An address: host name, IPv4 or IPv6; never starting with `-`.
fn check_address(s: &str) -> Result<(), String> {
    let ok = !s.is_empty()
        && !s.starts_with('-')
        && s.len() <= 253
        && s.chars().all(|c| c.is_ascii_alphanumeric() || "-_.:".contains(c));
    if ok {
        Ok(())
    } else {
        Err(format!("address {s:?} is invalid (a host name or IP address)"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TOML: &str = r#"
[ssh]
known_hosts = "/etc/chaos/known_hosts"
connect_timeout = "3s"

[[host]]
name = "web-1"
address = "10.0.0.11"
user = "root"
labels = { region = "us-east", role = "payments" }

[[host]]
name = "web-2"
address = "10.0.0.12"
port = 2222
labels = { region = "eu-west", role = "payments" }
"#;

    #[test]
    fn reads_toml_hosts_and_selects_them_by_name_and_labels() {
        let inv = from_toml("inv.toml", TOML).unwrap();
        assert_eq!(inv.hosts.len(), 2);
        assert_eq!(inv.ssh.connect_timeout, Duration::from_secs(3));
        let pay =
            inv.select(&Place::Hosts(vec![("role".into(), "payments".into())])).unwrap();
        assert_eq!(pay.len(), 2);
        let east = inv
            .select(&Place::Hosts(vec![
                ("role".into(), "payments".into()),
                ("region".into(), "us-east".into()),
            ]))
            .unwrap();
        assert_eq!(east[0].name, "web-1");
        assert!(inv
            .select(&Place::Host("db-1".into()))
            .unwrap_err()
            .contains("web-1, web-2"));
    }

    #[test]
    fn toml_problems_point_at_file_line_and_column() {
        let bad =
            TOML.replace("address = \"10.0.0.12\"", "address = \"-oProxyCommand=x\"");
        let err = from_toml("inv.toml", &bad).unwrap_err();
        let text = err[0].to_string();
        assert!(text.starts_with("inv.toml:14:11: error:"), "{text}");
        assert!(text.contains("hint:"), "{text}");
        let unknown = from_toml(
            "inv.toml",
            "[[host]]\nname = \"a\"\naddress = \"b\"\nlabel = {}\n",
        );
        assert!(unknown.unwrap_err()[0].to_string().starts_with("inv.toml:4:1"));
    }

    #[test]
    fn reads_an_ansible_yaml_inventory_with_group_vars_as_labels() {
        let yaml = r#"
all:
  vars:
    ansible_user: root
  hosts:
    bastion:
      ansible_host: 10.0.0.2
  children:
    payments:
      vars:
        role: payments
        region: us-east
      hosts:
        web-1:
          ansible_host: 10.0.0.11
          ansible_port: 2222
          ansible_ssh_private_key_file: /keys/id
        web-2:
          ansible_host: 10.0.0.12
          region: eu-west
"#;
        let inv = from_ansible("inv.yml", yaml).unwrap();
        let names: Vec<&str> = inv.hosts.iter().map(|h| h.name.as_str()).collect();
        assert_eq!(names, ["bastion", "web-1", "web-2"]);
        let web1 = &inv.hosts[1];
        assert_eq!((web1.port, web1.user.as_deref()), (Some(2222), Some("root")));
        assert_eq!(web1.identity, Some(PathBuf::from("/keys/id")));
        assert_eq!(web1.labels.get("region").map(String::as_str), Some("us-east"));
        assert_eq!(
            inv.hosts[2].labels.get("region").map(String::as_str),
            Some("eu-west")
        );
        let group =
            inv.select(&Place::Hosts(vec![("group".into(), "payments".into())])).unwrap();
        assert_eq!(group.len(), 2);
        let bad =
            from_ansible("inv.yml", "all:\n  hosts:\n    a:\n      ansible_port: x\n");
        assert!(bad.unwrap_err()[0].to_string().starts_with("inv.yml:4:7"), "located");
    }

    #[test]
    fn hosts_in_an_experiment_file_are_read_and_located() {
        let src =
            "[experiment]\nname = \"x\"\n\n[[host]]\nname = \"a\"\naddress = \"b c\"\n";
        let mut sink = Sink::new("exp.toml", src);
        assert!(read_experiment_hosts(src, &mut sink).is_none());
        let text = sink.diagnostics[0].to_string();
        assert!(text.starts_with("exp.toml:6:11: error: address"), "{text}");
        let ok = src.replace("b c", "10.0.0.1");
        let mut sink = Sink::new("exp.toml", &ok);
        let inv = read_experiment_hosts(&ok, &mut sink).expect("hosts");
        assert_eq!(inv.hosts[0].address, "10.0.0.1");
        let none = "[experiment]\nname = \"x\"\n";
        assert!(read_experiment_hosts(none, &mut Sink::new("e", none)).is_none());
    }

    #[test]
    fn host_limits_count_hosts() {
        let l = HostLimits { max_hosts: Some(2), max_host_percent: None };
        assert!(l.check(2, 3).is_ok());
        assert!(l.check(3, 3).unwrap_err().contains("max_hosts 2"));
        let p = HostLimits { max_hosts: None, max_host_percent: Some(0.5) };
        assert!(p.check(1, 3).is_ok());
        assert!(p.check(2, 3).is_err());
    }
}
