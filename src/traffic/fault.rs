//! HTTP faults for the experiment cohort: their runtime model, a compact
//! one-line spec for the CLI (`kind=latency,delay=200ms,jitter=50ms`), and
//! the dice that decide whether a fault fires for one request.

use std::fmt;
use std::time::Duration;

use serde::Serialize;

use super::assign::random_unit;
use crate::metrics::labels::FaultKindLabel;
use crate::units::{format_duration, parse_duration, parse_percent};

/// A fault spec that could not be understood.
#[derive(Debug, thiserror::Error, PartialEq)]
#[error("fault spec {spec:?}: {reason}")]
pub struct FaultSpecError {
    pub spec: String,
    pub reason: String,
}

/// How added latency is drawn.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum LatencyDistribution {
    /// `delay` ± `jitter`, uniformly (jitter 0 = fixed delay).
    #[default]
    Uniform,
    /// Normal with mean `delay` and standard deviation `jitter`, clamped at 0.
    Normal,
    /// Exponential with mean `delay` (a long tail); `jitter` is ignored.
    Exponential,
}

/// How a response body or its headers are damaged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum MalformedMode {
    /// Only the first half of the body, with a matching Content-Length (a
    /// valid HTTP message whose payload is cut short).
    Truncate,
    /// Some bytes inverted (at least one, about 1 in 64).
    FlipBytes,
    /// The first JSON leaf value replaced by one of another type.
    JsonWrongType,
    /// A Content-Type that does not match the body.
    WrongContentType,
    /// No Content-Type at all.
    MissingContentType,
    /// The body padded with whitespace to [`super::malformed::OVERSIZED_BYTES`].
    Oversized,
}

impl MalformedMode {
    /// Every mode, for tests and help texts.
    pub const ALL: [MalformedMode; 6] = [
        MalformedMode::Truncate,
        MalformedMode::FlipBytes,
        MalformedMode::JsonWrongType,
        MalformedMode::WrongContentType,
        MalformedMode::MissingContentType,
        MalformedMode::Oversized,
    ];

    /// The kebab-case name used in specs.
    pub fn as_str(self) -> &'static str {
        match self {
            MalformedMode::Truncate => "truncate",
            MalformedMode::FlipBytes => "flip-bytes",
            MalformedMode::JsonWrongType => "json-wrong-type",
            MalformedMode::WrongContentType => "wrong-content-type",
            MalformedMode::MissingContentType => "missing-content-type",
            MalformedMode::Oversized => "oversized",
        }
    }

    fn parse(s: &str) -> Option<MalformedMode> {
        MalformedMode::ALL.into_iter().find(|m| m.as_str() == s)
    }

    /// The metric label / `x-chaos-fault` value of this mode.
    pub fn label(self) -> FaultKindLabel {
        match self {
            MalformedMode::Truncate => FaultKindLabel::Truncate,
            MalformedMode::FlipBytes => FaultKindLabel::FlipBytes,
            MalformedMode::JsonWrongType => FaultKindLabel::JsonWrongType,
            MalformedMode::WrongContentType => FaultKindLabel::WrongContentType,
            MalformedMode::MissingContentType => FaultKindLabel::MissingContentType,
            MalformedMode::Oversized => FaultKindLabel::Oversized,
        }
    }
}

/// What a fault does.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum HttpFaultKind {
    /// Hold the request before forwarding it.
    Latency {
        #[serde(serialize_with = "ser_duration")]
        delay: Duration,
        #[serde(serialize_with = "ser_duration")]
        jitter: Duration,
        distribution: LatencyDistribution,
    },
    /// Answer with this status and body instead of forwarding.
    Error { status: u16, body: String },
    /// Close the client connection without a response (FIN).
    Abort,
    /// Reset the client connection (RST, via SO_LINGER 0).
    Reset,
    /// Forward, then damage the response.
    Malformed { mode: MalformedMode },
    /// Answer as a gRPC server failing the call: `200`, `content-type:
    /// application/grpc`, and `grpc-status`/`grpc-message` in a
    /// trailers-only response.
    Grpc { code: u8, message: String },
}

fn ser_duration<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&format_duration(*d))
}

impl HttpFaultKind {
    /// The metric label / `x-chaos-fault` value.
    pub fn label(&self) -> FaultKindLabel {
        match self {
            HttpFaultKind::Latency { .. } => FaultKindLabel::Latency,
            HttpFaultKind::Error { .. } => FaultKindLabel::Error,
            HttpFaultKind::Abort => FaultKindLabel::Abort,
            HttpFaultKind::Reset => FaultKindLabel::Reset,
            HttpFaultKind::Malformed { mode } => mode.label(),
            HttpFaultKind::Grpc { .. } => FaultKindLabel::Grpc,
        }
    }

    /// Draws one delay for a latency fault (zero for other kinds).
    pub fn draw_delay(&self) -> Duration {
        let HttpFaultKind::Latency { delay, jitter, distribution } = self else {
            return Duration::ZERO;
        };
        let d = delay.as_secs_f64();
        let j = jitter.as_secs_f64();
        let secs = match distribution {
            LatencyDistribution::Uniform => d + j * (2.0 * random_unit() - 1.0),
            LatencyDistribution::Normal => {
                // Box-Muller; 1 - u keeps ln away from 0.
                let u1 = 1.0 - random_unit();
                let u2 = random_unit();
                let z = (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos();
                d + j * z
            }
            LatencyDistribution::Exponential => -d * (1.0 - random_unit()).ln(),
        };
        Duration::from_secs_f64(secs.clamp(0.0, 3600.0))
    }
}

/// A fault as the proxy holds it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct HttpFault {
    /// Unique name, used by the admin endpoint.
    pub id: String,
    #[serde(flatten)]
    pub kind: HttpFaultKind,
    /// Chance in [0, 1] that it fires for one experiment request.
    pub probability: f64,
    pub enabled: bool,
}

impl HttpFault {
    /// Rolls the dice for one request.
    pub fn fires(&self) -> bool {
        self.enabled && (self.probability >= 1.0 || random_unit() < self.probability)
    }

    /// Parses `kind=K[,key=value]...`. Keys: `id` (default: the kind),
    /// `probability` (`50%` or `0.5`, default 100%), `enabled` (default
    /// true); latency: `delay`, `jitter`, `distribution`
    /// (uniform|normal|exponential); error: `status` (default 503), `body`;
    /// malformed: `mode` (truncate|flip-bytes|json-wrong-type|
    /// wrong-content-type|missing-content-type|oversized); grpc: `code`
    /// (0-16, default 14 UNAVAILABLE), `message`.
    pub fn parse_spec(spec: &str) -> Result<HttpFault, FaultSpecError> {
        let err = |reason: String| FaultSpecError { spec: spec.to_string(), reason };
        let mut kind = None;
        let mut id = None;
        let mut probability = 1.0;
        let mut enabled = true;
        let mut delay = Duration::ZERO;
        let mut jitter = Duration::ZERO;
        let mut distribution = LatencyDistribution::Uniform;
        let mut status = 503u16;
        let mut body = String::from("injected by chaos");
        let mut mode = None;
        let mut code = 14u8;
        let mut message = String::from("injected by chaos");
        for part in spec.split(',') {
            let (k, v) = part
                .split_once('=')
                .ok_or_else(|| err(format!("{part:?} is not key=value")))?;
            let v = v.trim();
            match k.trim() {
                "kind" => kind = Some(v.to_string()),
                "id" => id = Some(v.to_string()),
                "probability" | "p" => {
                    probability = if v.ends_with('%') {
                        parse_percent(v).map_err(err)?
                    } else {
                        let p: f64 = v
                            .parse()
                            .map_err(|_| err(format!("bad probability {v:?}")))?;
                        if !(0.0..=1.0).contains(&p) {
                            return Err(err(format!("probability {v} not in [0, 1]")));
                        }
                        p
                    }
                }
                "enabled" => {
                    enabled = v.parse().map_err(|_| err(format!("bad enabled {v:?}")))?
                }
                "delay" => delay = parse_duration(v).map_err(err)?,
                "jitter" => jitter = parse_duration(v).map_err(err)?,
                "distribution" => {
                    distribution = match v {
                        "uniform" => LatencyDistribution::Uniform,
                        "normal" => LatencyDistribution::Normal,
                        "exponential" => LatencyDistribution::Exponential,
                        _ => return Err(err(format!("unknown distribution {v:?}"))),
                    }
                }
                "status" => {
                    status = v
                        .parse()
                        .ok()
                        .filter(|s| (100..=599).contains(s))
                        .ok_or_else(|| err(format!("bad status {v:?}")))?
                }
                "body" => body = v.to_string(),
                "code" => {
                    code = v
                        .parse()
                        .ok()
                        .filter(|c| *c <= 16)
                        .ok_or_else(|| err(format!("bad gRPC code {v:?} (0-16)")))?
                }
                "message" => message = v.to_string(),
                "mode" => {
                    mode =
                        Some(MalformedMode::parse(v).ok_or_else(|| {
                            err(format!("unknown malformed mode {v:?}"))
                        })?)
                }
                other => return Err(err(format!("unknown key {other:?}"))),
            }
        }
        let kind_name = kind.ok_or_else(|| err("missing kind=".into()))?;
        let kind = match kind_name.as_str() {
            "latency" => HttpFaultKind::Latency { delay, jitter, distribution },
            "error" => HttpFaultKind::Error { status, body },
            "abort" => HttpFaultKind::Abort,
            "reset" => HttpFaultKind::Reset,
            "malformed" => HttpFaultKind::Malformed {
                mode: mode.ok_or_else(|| err("malformed needs mode=".into()))?,
            },
            "grpc" => HttpFaultKind::Grpc { code, message },
            other => return Err(err(format!("unknown kind {other:?}"))),
        };
        Ok(HttpFault { id: id.unwrap_or(kind_name), kind, probability, enabled })
    }
}

impl fmt::Display for HttpFault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} ({}, p={}, {})",
            self.id,
            self.kind.label().as_str(),
            self.probability,
            if self.enabled { "enabled" } else { "disabled" }
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_latency_spec_with_defaults() {
        let f =
            HttpFault::parse_spec("kind=latency,delay=200ms,jitter=50ms,p=25%").unwrap();
        assert_eq!(f.id, "latency");
        assert_eq!(f.probability, 0.25);
        assert!(f.enabled);
        assert_eq!(
            f.kind,
            HttpFaultKind::Latency {
                delay: Duration::from_millis(200),
                jitter: Duration::from_millis(50),
                distribution: LatencyDistribution::Uniform,
            }
        );
        for _ in 0..1000 {
            let d = f.kind.draw_delay();
            assert!(d >= Duration::from_millis(150) && d <= Duration::from_millis(250));
        }
    }

    #[test]
    fn rejects_specs_with_unknown_kinds_keys_or_modes() {
        for bad in [
            "kind=teleport",
            "kind=latency,speed=3",
            "kind=malformed",
            "kind=malformed,mode=sideways",
            "kind=error,status=99",
            "kind=error,probability=1.5",
            "delay=1s",
        ] {
            assert!(HttpFault::parse_spec(bad).is_err(), "{bad}");
        }
        assert!(HttpFault::parse_spec("kind=grpc,code=17").is_err());
        let g = HttpFault::parse_spec("kind=grpc,code=8,message=no quota").unwrap();
        assert_eq!(g.kind, HttpFaultKind::Grpc { code: 8, message: "no quota".into() });
        let f = HttpFault::parse_spec("kind=malformed,mode=oversized,id=big").unwrap();
        assert_eq!(f.kind.label(), FaultKindLabel::Oversized);
        assert_eq!(f.id, "big");
    }

    #[test]
    fn a_disabled_or_zero_probability_fault_never_fires() {
        let mut f = HttpFault::parse_spec("kind=abort,p=0").unwrap();
        assert!((0..1000).all(|_| !f.fires()));
        f.probability = 1.0;
        f.enabled = false;
        assert!(!f.fires());
    }
}
