//! Human units used in experiment files and CLI flags: durations
//! (`"250ms"`, `"5s"`, `"2m"`), percentages (`"5%"`) and tolerances
//! (`"+10%"`, `"-5%"`, `"+0.5pp"`). Parsers return a message that names what
//! was expected, so callers can turn it into a diagnostic with a span.

use std::fmt;
use std::time::Duration;

/// Largest duration accepted anywhere (a week): bounds arithmetic and
/// catches `"5000000h"` typos.
pub const MAX_DURATION: Duration = Duration::from_secs(7 * 24 * 3600);

/// Parses `"250ms"`, `"1.5s"`, `"2m"`, `"1h"`, `"500us"`. A bare number is
/// refused: a unit-less duration is the classic ms-vs-s mistake.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    let split = t.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    if num.is_empty() {
        return Err(format!(
            "expected a duration like \"250ms\" or \"5s\", found {text:?}"
        ));
    }
    let value: f64 = num
        .parse()
        .map_err(|_| format!("expected a duration like \"250ms\", found {text:?}"))?;
    let seconds_per_unit = match unit.trim() {
        "us" | "µs" => 1e-6,
        "ms" => 1e-3,
        "s" => 1.0,
        "m" | "min" => 60.0,
        "h" => 3600.0,
        "" => {
            return Err(format!(
                "duration {text:?} has no unit; write e.g. \"{num}s\" or \"{num}ms\""
            ))
        }
        other => {
            return Err(format!(
                "unknown duration unit {other:?} in {text:?}; use us, ms, s, m or h"
            ))
        }
    };
    let secs = value * seconds_per_unit;
    if !secs.is_finite() || secs > MAX_DURATION.as_secs_f64() {
        return Err(format!("duration {text:?} is longer than the maximum of 7 days"));
    }
    Ok(Duration::from_secs_f64(secs))
}

/// Formats a duration the way it would be written in a file.
pub fn format_duration(d: Duration) -> String {
    let ms = d.as_secs_f64() * 1e3;
    if ms < 1.0 {
        format!("{}us", d.as_micros())
    } else if ms < 1000.0 {
        format!("{}ms", trim_float(ms))
    } else if d.as_secs_f64() < 120.0 {
        format!("{}s", trim_float(d.as_secs_f64()))
    } else {
        format!("{}m", trim_float(d.as_secs_f64() / 60.0))
    }
}

fn trim_float(v: f64) -> String {
    let s = format!("{v:.3}");
    s.trim_end_matches('0').trim_end_matches('.').to_string()
}

/// Parses a percentage `"5%"` (or a bare `5`) into a fraction in [0, 1].
pub fn parse_percent(text: &str) -> Result<f64, String> {
    let t = text.trim();
    let num = t.strip_suffix('%').unwrap_or(t).trim();
    let v: f64 = num
        .parse()
        .map_err(|_| format!("expected a percentage like \"5%\", found {text:?}"))?;
    if !(0.0..=100.0).contains(&v) {
        return Err(format!("percentage {text:?} must be between 0% and 100%"));
    }
    Ok(v / 100.0)
}

/// How much worse the experiment cohort may be than control.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Tolerance {
    /// `"+10%"`: a ratio; `fraction` is signed (+0.10, or -0.05 for "-5%").
    Relative { fraction: f64 },
    /// `"+0.5pp"`: percentage points on a rate; `points` is a signed fraction
    /// (+0.005 for "+0.5pp").
    Absolute { points: f64 },
}

impl Tolerance {
    /// The sign written in the file: +1 for "may be higher", -1 for "may be lower".
    pub fn sign(self) -> f64 {
        let v = match self {
            Tolerance::Relative { fraction } => fraction,
            Tolerance::Absolute { points } => points,
        };
        if v < 0.0 {
            -1.0
        } else {
            1.0
        }
    }
}

impl fmt::Display for Tolerance {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Tolerance::Relative { fraction } => {
                write!(
                    f,
                    "{:+}%",
                    trim_float(fraction * 100.0).parse::<f64>().unwrap_or(0.0)
                )
            }
            Tolerance::Absolute { points } => {
                write!(
                    f,
                    "{:+}pp",
                    trim_float(points * 100.0).parse::<f64>().unwrap_or(0.0)
                )
            }
        }
    }
}

/// Parses `"+10%"`, `"-5%"`, `"+0.5pp"`. The sign is mandatory so the
/// direction ("higher is worse" vs "lower is worse") is never implicit.
pub fn parse_tolerance(text: &str) -> Result<Tolerance, String> {
    let t = text.trim();
    let expected = "expected a signed tolerance like \"+10%\", \"-5%\" or \"+0.5pp\"";
    let (sign, rest) = match t.chars().next() {
        Some('+') => (1.0, &t[1..]),
        Some('-') => (-1.0, &t[1..]),
        _ => return Err(format!("{expected}, found {text:?} (the sign is required)")),
    };
    let (num, absolute) = if let Some(n) = rest.strip_suffix("pp") {
        (n, true)
    } else if let Some(n) = rest.strip_suffix('%') {
        (n, false)
    } else {
        return Err(format!("{expected}, found {text:?} (unit % or pp is required)"));
    };
    let v: f64 = num.trim().parse().map_err(|_| format!("{expected}, found {text:?}"))?;
    if !v.is_finite() || v < 0.0 {
        return Err(format!("{expected}, found {text:?}"));
    }
    if absolute {
        if v > 100.0 {
            return Err(format!("tolerance {text:?} exceeds 100 percentage points"));
        }
        Ok(Tolerance::Absolute { points: sign * v / 100.0 })
    } else {
        if sign < 0.0 && v >= 100.0 {
            return Err(format!("tolerance {text:?} would allow a drop of 100% or more"));
        }
        if v > 100_000.0 {
            return Err(format!("tolerance {text:?} is implausibly large"));
        }
        Ok(Tolerance::Relative { fraction: sign * v / 100.0 })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_durations_in_every_unit() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("5s"), Ok(Duration::from_secs(5)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_duration("500us"), Ok(Duration::from_micros(500)));
    }

    #[test]
    fn refuses_unitless_garbage_and_huge_durations() {
        assert!(parse_duration("5").unwrap_err().contains("no unit"));
        assert!(parse_duration("5 parsecs").is_err());
        assert!(parse_duration("ms").is_err());
        assert!(parse_duration("").is_err());
        assert!(parse_duration("1e9h").is_err());
        assert!(parse_duration("9999999h").unwrap_err().contains("maximum"));
    }

    #[test]
    fn formats_durations_readably() {
        assert_eq!(format_duration(Duration::from_millis(250)), "250ms");
        assert_eq!(format_duration(Duration::from_millis(1500)), "1.5s");
        assert_eq!(format_duration(Duration::from_secs(300)), "5m");
    }

    #[test]
    fn parses_percentages_as_fractions() {
        assert_eq!(parse_percent("5%"), Ok(0.05));
        assert_eq!(parse_percent("12.5"), Ok(0.125));
        assert!(parse_percent("101%").is_err());
        assert!(parse_percent("-1%").is_err());
    }

    #[test]
    fn parses_signed_tolerances() {
        assert_eq!(parse_tolerance("+10%"), Ok(Tolerance::Relative { fraction: 0.10 }));
        assert_eq!(parse_tolerance("-5%"), Ok(Tolerance::Relative { fraction: -0.05 }));
        assert_eq!(parse_tolerance("+0.5pp"), Ok(Tolerance::Absolute { points: 0.005 }));
        assert!(parse_tolerance("10%").unwrap_err().contains("sign is required"));
        assert!(parse_tolerance("+10").unwrap_err().contains("unit"));
        assert!(parse_tolerance("-100%").is_err());
        assert_eq!(Tolerance::Relative { fraction: 0.1 }.to_string(), "+10%");
        assert_eq!(Tolerance::Absolute { points: 0.005 }.to_string(), "+0.5pp");
    }
}
