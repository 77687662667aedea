//! Cron expressions: five fields (`min hour dom month dow`) or six with a
//! leading seconds field, plus `@hourly`-style macros. Fire times are
//! computed in a time zone on the civil clock, so "09:00" stays 09:00 across
//! daylight-saving changes; a time that does not exist (spring forward) is
//! skipped and a repeated one (fall back) fires once, at its first instance.

use std::fmt;

use jiff::civil::DateTime;
use jiff::tz::{AmbiguousOffset, TimeZone};
use jiff::{Timestamp, ToSpan};

/// A cron expression that cannot be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid cron expression {expr:?}: {reason}")]
pub struct CronError {
    /// The expression as written.
    pub expr: String,
    /// What is wrong with it.
    pub reason: String,
}

/// A parsed cron expression: one bit set per allowed value of each field.
#[derive(Clone, PartialEq, Eq)]
pub struct Cron {
    source: String,
    seconds: u64,
    minutes: u64,
    hours: u64,
    days: u64,
    months: u64,
    weekdays: u64,
    /// `*` in the day-of-month field (vixie cron: when both day fields are
    /// restricted, either may match).
    any_day: bool,
    any_weekday: bool,
}

impl fmt::Debug for Cron {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Cron({:?})", self.source)
    }
}

impl fmt::Display for Cron {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.source)
    }
}

const MONTHS: &[&str] =
    &["jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"];
const WEEKDAYS: &[&str] = &["sun", "mon", "tue", "wed", "thu", "fri", "sat"];

/// Upper bound of candidate steps when searching the next fire time: enough
/// for any expression that fires at least once in several years.
const MAX_STEPS: usize = 200_000;

impl Cron {
    /// Parses `expr`; five fields mean seconds = 0.
    pub fn parse(expr: &str) -> Result<Cron, CronError> {
        let err = |reason: String| CronError { expr: expr.to_string(), reason };
        let trimmed = expr.trim();
        let expanded =
            match trimmed {
                "@yearly" | "@annually" => "0 0 0 1 1 *",
                "@monthly" => "0 0 0 1 * *",
                "@weekly" => "0 0 0 * * 0",
                "@daily" | "@midnight" => "0 0 0 * * *",
                "@hourly" => "0 0 * * * *",
                s if s.starts_with('@') => return Err(err(
                    "unknown macro; use @yearly, @monthly, @weekly, @daily or @hourly"
                        .into(),
                )),
                s => s,
            };
        let fields: Vec<&str> = expanded.split_whitespace().collect();
        let fields: Vec<&str> = match fields.len() {
            5 => std::iter::once("0").chain(fields).collect(),
            6 => fields,
            n => {
                return Err(err(format!(
                    "has {n} fields; expected 5 (min hour day month weekday) or 6 \
                     (sec min hour day month weekday)"
                )))
            }
        };
        let f = |i: usize, name: &str, lo: u32, hi: u32, names: &[&str], base: u32| {
            parse_field(fields[i], lo, hi, names, base)
                .map_err(|r| err(format!("{name} field {:?}: {r}", fields[i])))
        };
        let seconds = f(0, "seconds", 0, 59, &[], 0)?;
        let minutes = f(1, "minutes", 0, 59, &[], 0)?;
        let hours = f(2, "hours", 0, 23, &[], 0)?;
        let days = f(3, "day-of-month", 1, 31, &[], 0)?;
        let months = f(4, "month", 1, 12, MONTHS, 1)?;
        // 7 is Sunday too; fold it onto 0.
        let mut weekdays = f(5, "day-of-week", 0, 7, WEEKDAYS, 0)?;
        if weekdays & (1 << 7) != 0 {
            weekdays = (weekdays & !(1 << 7)) | 1;
        }
        let star = |s: &str| s == "*" || s == "?";
        Ok(Cron {
            source: trimmed.to_string(),
            seconds,
            minutes,
            hours,
            days,
            months,
            weekdays,
            any_day: star(fields[3]),
            any_weekday: star(fields[5]),
        })
    }

    fn day_matches(&self, dt: DateTime) -> bool {
        let dom = bit(self.days, dt.day() as u32);
        let dow = bit(self.weekdays, dt.weekday().to_sunday_zero_offset() as u32);
        match (self.any_day, self.any_weekday) {
            (true, true) => true,
            (true, false) => dow,
            (false, true) => dom,
            (false, false) => dom || dow,
        }
    }

    /// The first fire time strictly after `after`, in `tz`; `None` when the
    /// expression never fires (e.g. `0 0 30 2 *`).
    pub fn next_after(&self, after: Timestamp, tz: &TimeZone) -> Option<Timestamp> {
        let start = tz.to_datetime(after);
        let mut dt = start.with().subsec_nanosecond(0).build().ok()?;
        dt = dt.checked_add(1.second()).ok()?;
        for _ in 0..MAX_STEPS {
            if !bit(self.months, dt.month() as u32) {
                dt = dt.first_of_month().start_of_day();
                dt = dt.checked_add(1.month()).ok()?;
                continue;
            }
            if !self.day_matches(dt) {
                dt = dt.start_of_day().checked_add(1.day()).ok()?;
                continue;
            }
            if !bit(self.hours, dt.hour() as u32) {
                dt = dt.with().minute(0).second(0).build().ok()?;
                dt = dt.checked_add(1.hour()).ok()?;
                continue;
            }
            if !bit(self.minutes, dt.minute() as u32) {
                dt = dt.with().second(0).build().ok()?;
                dt = dt.checked_add(1.minute()).ok()?;
                continue;
            }
            if !bit(self.seconds, dt.second() as u32) {
                dt = dt.checked_add(1.second()).ok()?;
                continue;
            }
            let ts = match tz.to_ambiguous_timestamp(dt).offset() {
                AmbiguousOffset::Unambiguous { offset } => offset.to_timestamp(dt).ok(),
                // Fall back: the wall time happens twice; fire at the first.
                AmbiguousOffset::Fold { before, .. } => before.to_timestamp(dt).ok(),
                // Spring forward: the wall time never happens; skip it.
                AmbiguousOffset::Gap { .. } => None,
            };
            match ts {
                Some(ts) if ts > after => return Some(ts),
                _ => dt = dt.checked_add(1.second()).ok()?,
            }
        }
        None
    }
}

fn bit(set: u64, v: u32) -> bool {
    v < 64 && set & (1u64 << v) != 0
}

fn parse_value(
    s: &str,
    lo: u32,
    hi: u32,
    names: &[&str],
    base: u32,
) -> Result<u32, String> {
    let lower = s.to_ascii_lowercase();
    if let Some(i) = names.iter().position(|n| *n == lower) {
        return Ok(i as u32 + base);
    }
    match s.parse::<u32>() {
        Ok(v) if (lo..=hi).contains(&v) => Ok(v),
        Ok(v) => Err(format!("{v} is outside {lo}-{hi}")),
        Err(_) => Err(format!(
            "{s:?} is not a number{}",
            if names.is_empty() {
                String::new()
            } else {
                format!(" or one of {}", names.join(","))
            }
        )),
    }
}

/// One field: a comma list of `*`, `V`, `A-B`, each optionally `/STEP`.
fn parse_field(
    s: &str,
    lo: u32,
    hi: u32,
    names: &[&str],
    base: u32,
) -> Result<u64, String> {
    let mut set = 0u64;
    for part in s.split(',') {
        let (range, step) = match part.split_once('/') {
            Some((r, st)) => {
                let step =
                    st.parse::<u32>().ok().filter(|n| *n > 0).ok_or_else(|| {
                        format!("step {st:?} must be a positive integer")
                    })?;
                (r, Some(step))
            }
            None => (part, None),
        };
        let (a, b) = if range == "*" || range == "?" {
            (lo, hi)
        } else if let Some((a, b)) = range.split_once('-') {
            let a = parse_value(a, lo, hi, names, base)?;
            let b = parse_value(b, lo, hi, names, base)?;
            if a > b {
                return Err(format!("range {range:?} runs backwards"));
            }
            (a, b)
        } else {
            let a = parse_value(range, lo, hi, names, base)?;
            // `5/15` means "from 5 to the end, every 15".
            (a, if step.is_some() { hi } else { a })
        };
        let step = step.unwrap_or(1);
        let mut v = a;
        while v <= b {
            set |= 1u64 << v;
            v += step;
        }
    }
    if set == 0 {
        return Err("selects no value".into());
    }
    Ok(set)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    fn next(expr: &str, after: &str, tz: &str) -> String {
        let tz = crate::schedule::time_zone(tz).unwrap();
        let t = Cron::parse(expr).unwrap().next_after(ts(after), &tz).unwrap();
        t.to_string()
    }

    #[test]
    fn every_five_seconds_fires_on_multiples_of_five() {
        assert_eq!(
            next("*/5 * * * * *", "2026-01-01T00:00:00Z", "UTC"),
            "2026-01-01T00:00:05Z"
        );
        assert_eq!(
            next("*/5 * * * * *", "2026-01-01T00:00:03.5Z", "UTC"),
            "2026-01-01T00:00:05Z"
        );
        assert_eq!(
            next("*/5 * * * * *", "2026-01-01T00:00:59Z", "UTC"),
            "2026-01-01T00:01:00Z"
        );
    }

    #[test]
    fn five_field_expressions_fire_at_second_zero() {
        assert_eq!(
            next("30 9 * * *", "2026-01-01T09:30:00Z", "UTC"),
            "2026-01-02T09:30:00Z"
        );
        assert_eq!(
            next("0 * * * *", "2026-01-01T09:30:00Z", "UTC"),
            "2026-01-01T10:00:00Z"
        );
    }

    #[test]
    fn weekday_names_and_ranges_skip_the_weekend() {
        // 2026-01-02 is a Friday.
        assert_eq!(
            next("0 0 9 * * mon-fri", "2026-01-02T10:00:00Z", "UTC"),
            "2026-01-05T09:00:00Z"
        );
        assert_eq!(
            next("0 9 * * 7", "2026-01-02T10:00:00Z", "UTC"),
            "2026-01-04T09:00:00Z"
        );
    }

    #[test]
    fn restricted_day_of_month_and_weekday_match_either() {
        // 1st of the month OR a Monday: 2026-01-05 is the first Monday.
        assert_eq!(
            next("0 0 1 * mon", "2026-01-01T12:00:00Z", "UTC"),
            "2026-01-05T00:00:00Z"
        );
    }

    #[test]
    fn fires_at_local_wall_time_across_daylight_saving() {
        // Berlin is UTC+1 in winter and UTC+2 in summer.
        assert_eq!(
            next("0 9 * * *", "2026-03-28T12:00:00Z", "Europe/Berlin"),
            "2026-03-29T07:00:00Z"
        );
        assert_eq!(
            next("0 9 * * *", "2026-01-10T12:00:00Z", "Europe/Berlin"),
            "2026-01-11T08:00:00Z"
        );
        // 02:30 does not exist on 2026-03-29 in Berlin: skipped to the next day.
        assert_eq!(
            next("30 2 * * *", "2026-03-28T12:00:00Z", "Europe/Berlin"),
            "2026-03-30T00:30:00Z"
        );
    }

    #[test]
    fn macros_and_month_names_parse() {
        assert_eq!(
            next("@hourly", "2026-01-01T00:10:00Z", "UTC"),
            "2026-01-01T01:00:00Z"
        );
        assert_eq!(
            next("0 0 1 mar *", "2026-01-01T00:00:00Z", "UTC"),
            "2026-03-01T00:00:00Z"
        );
        assert_eq!(
            next("5/20 * * * *", "2026-01-01T00:06:00Z", "UTC"),
            "2026-01-01T00:25:00Z"
        );
    }

    #[test]
    fn impossible_dates_never_fire() {
        let c = Cron::parse("0 0 30 2 *").unwrap();
        assert_eq!(c.next_after(ts("2026-01-01T00:00:00Z"), &TimeZone::UTC), None);
    }

    #[test]
    fn rejects_malformed_expressions_with_the_offending_field() {
        for (expr, needle) in [
            ("* * * *", "4 fields"),
            ("61 * * * * *", "seconds field"),
            ("* 24 * * *", "hours field"),
            ("*/0 * * * *", "step"),
            ("* * * foo *", "month field"),
            ("5-1 * * * *", "backwards"),
            ("@often", "unknown macro"),
        ] {
            let e = Cron::parse(expr).unwrap_err();
            assert!(e.to_string().contains(needle), "{expr}: {e}");
        }
    }
}
