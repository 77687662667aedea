//! The serde wire form of an [`InfraFault`] and its [`FaultContext`]: what
//! a controller sends an agent. It mirrors the engine's structs field for
//! field (selectors travel as their `kind:value` text, durations as
//! milliseconds, signals by name); `TryFrom` re-parses everything, so an
//! agent never trusts a controller's parsing. Which target fits which
//! fault stays the engine's call, made on the agent when it prepares.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::time::Duration;

use crate::fault::{self, FaultContext, InfraFault, NetFilter, OutageMethod};
use crate::target::{BlastRadius, Selection, TargetSelector};

/// How many of the matches to hit, on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub enum WireSelection {
    Count(u32),
    /// A fraction in (0, 1].
    Percent(f64),
}

/// Destination / port filter of nftables faults.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WireFilter {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub destinations: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<u16>,
}

/// One fault, as sent to an agent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case", deny_unknown_fields)]
pub enum WireFault {
    ProcessKill {
        target: String,
        selection: WireSelection,
        signal: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        grace_ms: Option<u64>,
    },
    ProcessPause {
        target: String,
        selection: WireSelection,
    },
    Netem {
        target: String,
        selection: WireSelection,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        delay_ms: Option<u64>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        jitter_ms: Option<u64>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        loss: Option<f64>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        corrupt: Option<f64>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        duplicate: Option<f64>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reorder: Option<f64>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        rate: Option<String>,
    },
    PacketLoss {
        target: String,
        selection: WireSelection,
        loss: f64,
        #[serde(default)]
        filter: WireFilter,
    },
    Blackhole {
        target: String,
        selection: WireSelection,
        #[serde(default)]
        filter: WireFilter,
    },
    TcpReset {
        target: String,
        selection: WireSelection,
        #[serde(default)]
        filter: WireFilter,
    },
    Bandwidth {
        target: String,
        selection: WireSelection,
        rate: String,
    },
    RegionOutage {
        region: String,
        /// "blackhole" or "pause".
        method: String,
    },
}

/// The run-wide context of a fault, as sent to an agent.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WireContext {
    pub seed: u64,
    /// Controller's run id; the agent derives its nft table names from it.
    pub run_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_targets: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_percent: Option<f64>,
    /// Region name → selectors, as on the controller's command line.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub regions: BTreeMap<String, Vec<String>>,
}

impl WireContext {
    /// The context as one host sees it: `{host}` in a region's targets
    /// becomes the host's inventory name, as in `@hosts:` targets (so a
    /// region can name each host's own processes or namespace).
    pub fn for_host(&self, host: &str) -> WireContext {
        let mut c = self.clone();
        for sels in c.regions.values_mut() {
            for s in sels.iter_mut() {
                *s = s.replace("{host}", host);
            }
        }
        c
    }
}

/// A wire value the agent cannot turn back into an engine value.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("invalid fault on the wire: {0}")]
pub struct WireError(pub String);

fn ms(d: Option<Duration>) -> Option<u64> {
    d.map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

fn dur(ms: Option<u64>) -> Option<Duration> {
    ms.map(Duration::from_millis)
}

impl From<Selection> for WireSelection {
    fn from(s: Selection) -> Self {
        match s {
            Selection::Count(n) => WireSelection::Count(n),
            Selection::Percent(p) => WireSelection::Percent(p),
        }
    }
}

impl TryFrom<WireSelection> for Selection {
    type Error = WireError;
    fn try_from(s: WireSelection) -> Result<Self, WireError> {
        match s {
            WireSelection::Count(n) => Ok(Selection::Count(n)),
            WireSelection::Percent(p) if p > 0.0 && p <= 1.0 => Ok(Selection::Percent(p)),
            WireSelection::Percent(p) => {
                Err(WireError(format!("percent {p} is outside (0, 1]")))
            }
        }
    }
}

impl From<&NetFilter> for WireFilter {
    fn from(f: &NetFilter) -> Self {
        WireFilter { destinations: f.destinations.clone(), ports: f.ports.clone() }
    }
}

impl From<WireFilter> for NetFilter {
    fn from(f: WireFilter) -> Self {
        NetFilter { destinations: f.destinations, ports: f.ports }
    }
}

fn fraction(name: &str, v: f64) -> Result<f64, WireError> {
    if (0.0..=1.0).contains(&v) {
        Ok(v)
    } else {
        Err(WireError(format!("{name} {v} is outside [0, 1]")))
    }
}

fn fractions(name: &str, v: Option<f64>) -> Result<Option<f64>, WireError> {
    v.map(|v| fraction(name, v)).transpose()
}

fn selector(text: &str) -> Result<TargetSelector, WireError> {
    TargetSelector::parse(text).map_err(WireError)
}

impl From<&InfraFault> for WireFault {
    fn from(f: &InfraFault) -> Self {
        let t = |s: &TargetSelector| s.to_string();
        match f {
            InfraFault::ProcessKill(k) => WireFault::ProcessKill {
                target: t(&k.target),
                selection: k.selection.into(),
                signal: k.signal.as_str().to_string(),
                grace_ms: ms(k.grace),
            },
            InfraFault::ProcessPause(p) => WireFault::ProcessPause {
                target: t(&p.target),
                selection: p.selection.into(),
            },
            InfraFault::Netem(n) => WireFault::Netem {
                target: t(&n.target),
                selection: n.selection.into(),
                delay_ms: ms(n.delay),
                jitter_ms: ms(n.jitter),
                loss: n.loss,
                corrupt: n.corrupt,
                duplicate: n.duplicate,
                reorder: n.reorder,
                rate: n.rate.clone(),
            },
            InfraFault::PacketLoss(l) => WireFault::PacketLoss {
                target: t(&l.target),
                selection: l.selection.into(),
                loss: l.loss,
                filter: (&l.filter).into(),
            },
            InfraFault::Blackhole(b) => WireFault::Blackhole {
                target: t(&b.target),
                selection: b.selection.into(),
                filter: (&b.filter).into(),
            },
            InfraFault::TcpReset(r) => WireFault::TcpReset {
                target: t(&r.target),
                selection: r.selection.into(),
                filter: (&r.filter).into(),
            },
            InfraFault::Bandwidth(b) => WireFault::Bandwidth {
                target: t(&b.target),
                selection: b.selection.into(),
                rate: b.rate.clone(),
            },
            InfraFault::RegionOutage(r) => WireFault::RegionOutage {
                region: r.region.clone(),
                method: match r.method {
                    OutageMethod::Blackhole => "blackhole",
                    OutageMethod::Pause => "pause",
                }
                .to_string(),
            },
        }
    }
}

impl TryFrom<WireFault> for InfraFault {
    type Error = WireError;
    fn try_from(w: WireFault) -> Result<Self, WireError> {
        Ok(match w {
            WireFault::ProcessKill { target, selection, signal, grace_ms } => {
                InfraFault::ProcessKill(fault::ProcessKill {
                    target: selector(&target)?,
                    selection: selection.try_into()?,
                    signal: fault::parse_signal(&signal).map_err(WireError)?,
                    grace: dur(grace_ms),
                    // Repeats are the controller's loop: it re-sends.
                    interval: None,
                })
            }
            WireFault::ProcessPause { target, selection } => {
                InfraFault::ProcessPause(fault::ProcessPause {
                    target: selector(&target)?,
                    selection: selection.try_into()?,
                })
            }
            WireFault::Netem {
                target,
                selection,
                delay_ms,
                jitter_ms,
                loss,
                corrupt,
                duplicate,
                reorder,
                rate,
            } => InfraFault::Netem(fault::Netem {
                target: selector(&target)?,
                selection: selection.try_into()?,
                delay: dur(delay_ms),
                jitter: dur(jitter_ms),
                loss: fractions("loss", loss)?,
                corrupt: fractions("corrupt", corrupt)?,
                duplicate: fractions("duplicate", duplicate)?,
                reorder: fractions("reorder", reorder)?,
                rate,
            }),
            WireFault::PacketLoss { target, selection, loss, filter } => {
                InfraFault::PacketLoss(fault::NftLoss {
                    target: selector(&target)?,
                    selection: selection.try_into()?,
                    loss: fraction("loss", loss)?,
                    filter: filter.into(),
                })
            }
            WireFault::Blackhole { target, selection, filter } => {
                InfraFault::Blackhole(fault::NftBlackhole {
                    target: selector(&target)?,
                    selection: selection.try_into()?,
                    filter: filter.into(),
                })
            }
            WireFault::TcpReset { target, selection, filter } => {
                InfraFault::TcpReset(fault::NftReset {
                    target: selector(&target)?,
                    selection: selection.try_into()?,
                    filter: filter.into(),
                })
            }
            WireFault::Bandwidth { target, selection, rate } => {
                InfraFault::Bandwidth(fault::Tbf {
                    target: selector(&target)?,
                    selection: selection.try_into()?,
                    rate,
                })
            }
            WireFault::RegionOutage { region, method } => {
                InfraFault::RegionOutage(fault::RegionOutage {
                    region,
                    method: match method.as_str() {
                        "blackhole" => OutageMethod::Blackhole,
                        "pause" => OutageMethod::Pause,
                        other => {
                            return Err(WireError(format!(
                            "region-outage method {other:?}; expected blackhole or pause"
                        )))
                        }
                    },
                })
            }
        })
    }
}

impl From<&FaultContext> for WireContext {
    fn from(c: &FaultContext) -> Self {
        WireContext {
            seed: c.seed,
            run_id: c.run_id.clone(),
            max_targets: c.limits.max_targets,
            max_percent: c.limits.max_percent,
            regions: c
                .regions
                .iter()
                .map(|(k, v)| (k.clone(), v.iter().map(ToString::to_string).collect()))
                .collect(),
        }
    }
}

impl TryFrom<WireContext> for FaultContext {
    type Error = WireError;
    fn try_from(w: WireContext) -> Result<Self, WireError> {
        let mut regions = BTreeMap::new();
        for (name, sels) in w.regions {
            let parsed =
                sels.iter().map(|s| selector(s)).collect::<Result<Vec<_>, _>>()?;
            regions.insert(name, parsed);
        }
        if let Some(p) = w.max_percent {
            if !(p > 0.0 && p <= 1.0) {
                return Err(WireError(format!("max_percent {p} is outside (0, 1]")));
            }
        }
        Ok(FaultContext {
            regions,
            seed: w.seed,
            limits: BlastRadius {
                max_targets: w.max_targets,
                max_percent: w.max_percent,
            },
            run_id: w.run_id,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nix::sys::signal::Signal;

    fn sel(s: &str) -> TargetSelector {
        TargetSelector::parse(s).unwrap()
    }

    fn every_kind() -> Vec<InfraFault> {
        let filter =
            NetFilter { destinations: vec!["10.0.0.0/8".into()], ports: vec![80] };
        vec![
            InfraFault::ProcessKill(fault::ProcessKill {
                target: sel("name:payments"),
                selection: Selection::Percent(0.5),
                signal: Signal::SIGTERM,
                grace: Some(Duration::from_millis(1500)),
                interval: None,
            }),
            InfraFault::ProcessPause(fault::ProcessPause {
                target: sel("pidfile:/run/api.pid"),
                selection: Selection::Count(2),
            }),
            InfraFault::Netem(fault::Netem {
                target: sel("iface:eth0@blue"),
                selection: Selection::Count(1),
                delay: Some(Duration::from_millis(100)),
                jitter: Some(Duration::from_millis(10)),
                loss: Some(0.1),
                corrupt: None,
                duplicate: Some(0.01),
                reorder: None,
                rate: Some("1mbit".into()),
            }),
            InfraFault::PacketLoss(fault::NftLoss {
                target: sel("netns:blue"),
                selection: Selection::Count(1),
                loss: 0.25,
                filter: filter.clone(),
            }),
            InfraFault::Blackhole(fault::NftBlackhole {
                target: sel("iface:eth0"),
                selection: Selection::Count(1),
                filter: filter.clone(),
            }),
            InfraFault::TcpReset(fault::NftReset {
                target: sel("netns:blue"),
                selection: Selection::Count(1),
                filter: NetFilter::default(),
            }),
            InfraFault::Bandwidth(fault::Tbf {
                target: sel("iface:eth0"),
                selection: Selection::Count(1),
                rate: "1mbit".into(),
            }),
            InfraFault::RegionOutage(fault::RegionOutage {
                region: "us-east".into(),
                method: OutageMethod::Pause,
            }),
        ]
    }

    #[test]
    fn every_fault_kind_survives_a_json_round_trip() {
        for f in every_kind() {
            let wire = WireFault::from(&f);
            let json = serde_json::to_string(&wire).unwrap();
            let back: WireFault = serde_json::from_str(&json).unwrap();
            assert_eq!(back, wire, "{json}");
            assert_eq!(InfraFault::try_from(back).unwrap(), f, "{json}");
        }
    }

    #[test]
    fn a_context_survives_a_round_trip() {
        let mut regions = BTreeMap::new();
        regions.insert("us-east".to_string(), vec![sel("netns:a"), sel("name:api")]);
        let ctx = FaultContext {
            regions,
            seed: 42,
            limits: BlastRadius { max_targets: Some(3), max_percent: Some(0.5) },
            run_id: "run-1".into(),
        };
        let json = serde_json::to_string(&WireContext::from(&ctx)).unwrap();
        let back: WireContext = serde_json::from_str(&json).unwrap();
        let back = FaultContext::try_from(back).unwrap();
        assert_eq!(back.regions, ctx.regions);
        assert_eq!((back.seed, back.limits, back.run_id), (42, ctx.limits, ctx.run_id));
    }

    #[test]
    fn bad_wire_values_are_refused_not_guessed() {
        let bad = [
            r#"{"kind":"process-pause","target":"pid:0","selection":{"count":1}}"#,
            r#"{"kind":"packet-loss","target":"netns:a","selection":{"count":1},"loss":2}"#,
            r#"{"kind":"process-kill","target":"name:x","selection":{"count":1},"signal":"NOPE"}"#,
            r#"{"kind":"region-outage","region":"r","method":"melt"}"#,
            r#"{"kind":"process-pause","target":"name:x","selection":{"percent":0}}"#,
        ];
        for text in bad {
            let wire: WireFault = serde_json::from_str(text).unwrap();
            assert!(InfraFault::try_from(wire).is_err(), "{text}");
        }
        let unknown =
            r#"{"kind":"process-pause","target":"name:x","selection":{"count":1},"x":1}"#;
        assert!(serde_json::from_str::<WireFault>(unknown).is_err());
    }
}
