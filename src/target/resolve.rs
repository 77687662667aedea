//! Turning a [`TargetSelector`] into concrete processes and network
//! endpoints, and choosing `count` or `percent` of them with a seeded RNG
//! under blast-radius limits.

use rand::seq::SliceRandom;
use rand::SeedableRng;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::process::{self, ProcessInfo};
use super::TargetSelector;

/// Errors resolving or selecting targets.
#[derive(Debug, thiserror::Error)]
pub enum TargetError {
    #[error("target {selector}: no process with pid {pid}")]
    NoSuchProcess { selector: String, pid: u32 },
    #[error("refusing to target pid {pid} ({comm}): {reason}")]
    Refused { pid: u32, comm: String, reason: &'static str },
    #[error("cannot read pidfile {path}: {reason}")]
    Pidfile { path: PathBuf, reason: String },
    #[error("target {selector} matches nothing: {reason}")]
    NoMatch { selector: String, reason: String },
    #[error("target {selector} is invalid: {reason}")]
    Invalid { selector: String, reason: String },
    #[error("region {region:?} is not declared; declared regions: {known}")]
    UnknownRegion { region: String, known: String },
    #[error(
        "blast radius exceeded for {selector}: {selected} of {matched} targets selected, \
         limit {limit}"
    )]
    BlastRadius { selector: String, selected: usize, matched: usize, limit: String },
}

/// A network place a fault can be applied to: a whole namespace, or one
/// interface (in a namespace or on the host).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct NetTarget {
    pub netns: Option<String>,
    pub iface: Option<String>,
}

impl NetTarget {
    /// The lock key: faults in one namespace (or on one host interface)
    /// exclude each other.
    pub fn lock_key(&self) -> String {
        match (&self.netns, &self.iface) {
            (Some(ns), _) => format!("net-{ns}"),
            (None, Some(i)) => format!("net-host-{i}"),
            (None, None) => "net-host".to_string(),
        }
    }
}

impl std::fmt::Display for NetTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (&self.netns, &self.iface) {
            (Some(ns), Some(i)) => write!(f, "iface {i} in netns {ns}"),
            (Some(ns), None) => write!(f, "netns {ns}"),
            (None, Some(i)) => write!(f, "host iface {i}"),
            (None, None) => write!(f, "host network"),
        }
    }
}

/// One resolved target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resolved {
    Process(ProcessInfo),
    Net(NetTarget),
}

/// How many of the matches to hit.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Selection {
    Count(u32),
    /// A fraction in (0, 1].
    Percent(f64),
}

impl Default for Selection {
    fn default() -> Self {
        Selection::Count(1)
    }
}

/// Upper bounds on what one fault may hit.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct BlastRadius {
    pub max_targets: Option<u32>,
    /// A fraction in (0, 1] of the matches.
    pub max_percent: Option<f64>,
}

/// Resolves a selector. Regions expand to their declared selectors.
pub fn resolve(
    selector: &TargetSelector,
    regions: &BTreeMap<String, Vec<TargetSelector>>,
) -> Result<Vec<Resolved>, TargetError> {
    let text = selector.to_string();
    match selector {
        TargetSelector::Pid(pid) => {
            Ok(vec![Resolved::Process(process::by_pid(*pid, &text)?)])
        }
        TargetSelector::Pidfile(path) => {
            let pid = process::pid_from_file(Path::new(path))?;
            Ok(vec![Resolved::Process(process::by_pid(pid, &text)?)])
        }
        TargetSelector::Name(pattern) => {
            let found = process::by_name(pattern)?;
            if found.is_empty() {
                return Err(TargetError::NoMatch {
                    selector: text,
                    reason: "no running process has a matching name or command line \
                             (pid 1, chaos itself and its ancestors never match)"
                        .into(),
                });
            }
            Ok(found.into_iter().map(Resolved::Process).collect())
        }
        TargetSelector::Netns(ns) => {
            check_netns(ns, &text)?;
            Ok(vec![Resolved::Net(NetTarget { netns: Some(ns.clone()), iface: None })])
        }
        TargetSelector::Iface { name, netns } => {
            if let Some(ns) = netns {
                check_netns(ns, &text)?;
                let present = std::process::Command::new("ip")
                    .args(["-n", ns, "link", "show", "dev", name])
                    .output()
                    .map(|o| o.status.success())
                    .unwrap_or(false);
                if !present {
                    return Err(TargetError::NoMatch {
                        selector: text,
                        reason: format!("no interface {name} in netns {ns}"),
                    });
                }
            } else if !Path::new("/sys/class/net").join(name).exists() {
                return Err(TargetError::NoMatch {
                    selector: text,
                    reason: format!("no host interface {name}"),
                });
            }
            Ok(vec![Resolved::Net(NetTarget {
                netns: netns.clone(),
                iface: Some(name.clone()),
            })])
        }
        TargetSelector::Container(c) => Ok(super::container::resolve(c, &text)?
            .into_iter()
            .map(Resolved::Process)
            .collect()),
        TargetSelector::Region(region) => {
            let members =
                regions.get(region).ok_or_else(|| TargetError::UnknownRegion {
                    region: region.clone(),
                    known: if regions.is_empty() {
                        "(none)".to_string()
                    } else {
                        regions.keys().cloned().collect::<Vec<_>>().join(", ")
                    },
                })?;
            let mut out = Vec::new();
            for member in members {
                if matches!(member, TargetSelector::Region(_)) {
                    return Err(TargetError::Invalid {
                        selector: member.to_string(),
                        reason: format!(
                            "region {region:?} may not contain another region"
                        ),
                    });
                }
                out.extend(resolve(member, regions)?);
            }
            Ok(out)
        }
    }
}

fn check_netns(ns: &str, selector: &str) -> Result<(), TargetError> {
    if Path::new("/run/netns").join(ns).exists() {
        Ok(())
    } else {
        Err(TargetError::NoMatch {
            selector: selector.to_string(),
            reason: format!("no network namespace {ns} (see `ip netns list`)"),
        })
    }
}

/// Picks `selection` of `items` with a ChaCha RNG seeded by `seed`, then
/// enforces the blast radius. Items are sorted first so the same seed
/// picks the same targets for the same matches.
pub fn select<T: Clone>(
    selector: &str,
    items: &[T],
    selection: Selection,
    seed: u64,
    limits: BlastRadius,
) -> Result<Vec<T>, TargetError> {
    let matched = items.len();
    if let Selection::Percent(p) = selection {
        // `ceil` and the clamp below would turn 0% into one target.
        if !(p > 0.0 && p <= 1.0) {
            return Err(TargetError::Invalid {
                selector: selector.to_string(),
                reason: format!("percent {}% must be in (0%, 100%]", p * 100.0),
            });
        }
    }
    let want = match selection {
        Selection::Count(n) => (n as usize).min(matched),
        Selection::Percent(p) => ((matched as f64 * p).ceil() as usize).clamp(1, matched),
    };
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let mut order: Vec<usize> = (0..matched).collect();
    order.shuffle(&mut rng);
    let mut picked: Vec<usize> = order.into_iter().take(want).collect();
    picked.sort_unstable();
    if let Some(max) = limits.max_targets {
        if want > max as usize {
            return Err(TargetError::BlastRadius {
                selector: selector.to_string(),
                selected: want,
                matched,
                limit: format!("max_targets = {max}"),
            });
        }
    }
    if let Some(max) = limits.max_percent {
        if matched > 0 && want as f64 / matched as f64 > max + 1e-9 {
            return Err(TargetError::BlastRadius {
                selector: selector.to_string(),
                selected: want,
                matched,
                limit: format!("max_percent = {}%", max * 100.0),
            });
        }
    }
    Ok(picked.into_iter().map(|i| items[i].clone()).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_seed_selects_the_same_targets() {
        let items: Vec<u32> = (0..20).collect();
        let a =
            select("x", &items, Selection::Count(5), 42, BlastRadius::default()).unwrap();
        let b =
            select("x", &items, Selection::Count(5), 42, BlastRadius::default()).unwrap();
        let c =
            select("x", &items, Selection::Count(5), 43, BlastRadius::default()).unwrap();
        assert_eq!(a, b);
        assert_eq!(a.len(), 5);
        assert_ne!(a, c);
    }

    #[test]
    fn a_percent_selects_at_least_one_and_rounds_up() {
        let items: Vec<u32> = (0..10).collect();
        let none = BlastRadius::default();
        assert_eq!(
            select("x", &items, Selection::Percent(0.25), 1, none).unwrap().len(),
            3
        );
        assert_eq!(
            select("x", &items, Selection::Percent(0.01), 1, none).unwrap().len(),
            1
        );
    }

    #[test]
    fn refuses_a_selection_beyond_the_blast_radius() {
        let items: Vec<u32> = (0..10).collect();
        let limits = BlastRadius { max_targets: Some(2), max_percent: None };
        let err = select("name:x", &items, Selection::Count(3), 1, limits).unwrap_err();
        assert!(err.to_string().contains("max_targets = 2"), "{err}");
        let limits = BlastRadius { max_targets: None, max_percent: Some(0.5) };
        assert!(select("name:x", &items, Selection::Percent(0.6), 1, limits).is_err());
        assert!(select("name:x", &items, Selection::Percent(0.5), 1, limits).is_ok());
    }

    #[test]
    fn an_undeclared_region_names_the_declared_ones() {
        let mut regions = BTreeMap::new();
        regions.insert("eu".to_string(), vec![]);
        let err = resolve(&TargetSelector::Region("us".into()), &regions).unwrap_err();
        assert!(err.to_string().contains("declared regions: eu"), "{err}");
    }

    /// Issue 12 case 10: 0% used to select one target.
    #[test]
    fn r12_10_zero_percent_selects_nothing_and_is_refused() {
        let items: Vec<u32> = (0..10).collect();
        let none = BlastRadius::default();
        assert!(select("x", &items, Selection::Percent(0.0), 1, none).is_err());
        assert!(select("x", &items, Selection::Percent(f64::NAN), 1, none).is_err());
    }
}
