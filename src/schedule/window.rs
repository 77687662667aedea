//! Allowed windows such as business hours: a set of weekdays and a local
//! start/end time in a time zone. An end before the start is an overnight
//! window (`22:00`–`06:00`), which belongs to the day it starts on.

use std::fmt;

use jiff::civil::Time;
use jiff::tz::TimeZone;
use jiff::Timestamp;

const DAY_NAMES: &[&str] = &["mon", "tue", "wed", "thu", "fri", "sat", "sun"];

/// When a schedule may fire.
#[derive(Clone)]
pub struct Window {
    /// Bit 0 = Monday … bit 6 = Sunday.
    days: u8,
    start: Time,
    end: Time,
    tz: TimeZone,
    tz_name: String,
    text: String,
}

impl fmt::Debug for Window {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Window({})", self.text)
    }
}

impl fmt::Display for Window {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

/// Parses `"mon-fri"`, `"mon,wed,fri"`, `"fri-mon"` (wraps), `"*"`/`"daily"`.
pub fn parse_days(s: &str) -> Result<u8, String> {
    let s = s.trim().to_ascii_lowercase();
    if s == "*" || s == "daily" || s == "all" {
        return Ok(0x7f);
    }
    let day = |d: &str| {
        let d = d.trim();
        DAY_NAMES
            .iter()
            .position(|n| d.starts_with(n) && d.len() >= 3)
            .ok_or_else(|| format!("{d:?} is not a day; write mon, tue, … sun"))
    };
    let mut set = 0u8;
    for part in s.split(',') {
        match part.split_once('-') {
            Some((a, b)) => {
                let (a, b) = (day(a)?, day(b)?);
                let mut i = a;
                loop {
                    set |= 1 << i;
                    if i == b {
                        break;
                    }
                    i = (i + 1) % 7;
                }
            }
            None => set |= 1 << day(part)?,
        }
    }
    Ok(set)
}

/// Parses `"09:00"` or `"17:30:15"`; `"24:00"` means the end of the day.
pub fn parse_time(s: &str) -> Result<Time, String> {
    if s.trim() == "24:00" {
        return Ok(Time::MAX);
    }
    let parts: Vec<&str> = s.trim().split(':').collect();
    let num = |p: &str, max: i8| -> Result<i8, String> {
        p.parse::<i8>()
            .ok()
            .filter(|v| (0..=max).contains(v) && p.len() == 2)
            .ok_or_else(|| format!("{s:?} is not a time; write HH:MM such as \"09:00\""))
    };
    let (h, m, sec) = match parts.as_slice() {
        [h, m] => (num(h, 23)?, num(m, 59)?, 0),
        [h, m, x] => (num(h, 23)?, num(m, 59)?, num(x, 59)?),
        _ => return Err(format!("{s:?} is not a time; write HH:MM such as \"09:00\"")),
    };
    Time::new(h, m, sec, 0).map_err(|e| format!("{s:?}: {e}"))
}

impl Window {
    /// A window from already-parsed parts; `start == end` is refused (it
    /// would be either empty or every moment, and both are surprising).
    pub fn new(
        days: &str,
        start: &str,
        end: &str,
        tz_name: &str,
    ) -> Result<Window, String> {
        let d = parse_days(days)?;
        let (s, e) = (parse_time(start)?, parse_time(end)?);
        if s == e {
            return Err(format!(
                "window start and end are both {start}; omit the window to allow any time"
            ));
        }
        let tz = super::time_zone(tz_name)?;
        Ok(Window {
            days: d,
            start: s,
            end: e,
            tz,
            tz_name: tz_name.to_string(),
            text: format!("{days} {start}-{end} {tz_name}"),
        })
    }

    /// The time-zone name the window is written in.
    pub fn tz_name(&self) -> &str {
        &self.tz_name
    }

    fn day_on(&self, weekday_monday_zero: i8) -> bool {
        self.days & (1 << weekday_monday_zero.rem_euclid(7)) != 0
    }

    /// The first opening of the window strictly after `t` (None if the
    /// window never opens, which validation prevents).
    pub fn next_open(&self, t: Timestamp) -> Option<Timestamp> {
        let mut date = self.tz.to_datetime(t).date();
        // Today plus a week covers every day set.
        for _ in 0..9 {
            if self.day_on(date.weekday().to_monday_zero_offset()) {
                let open = self.tz.to_ambiguous_timestamp(date.to_datetime(self.start));
                if let Ok(ts) = open.compatible() {
                    if ts > t {
                        return Some(ts);
                    }
                }
            }
            date = date.tomorrow().ok()?;
        }
        None
    }

    /// True when `t` falls inside the window.
    pub fn contains(&self, t: Timestamp) -> bool {
        let local = self.tz.to_datetime(t);
        let wd = local.weekday().to_monday_zero_offset();
        let now = local.time();
        if self.start < self.end {
            self.day_on(wd) && now >= self.start && now < self.end
        } else {
            // Overnight: the evening part belongs to today, the morning
            // part to the day before.
            (self.day_on(wd) && now >= self.start)
                || (self.day_on(wd - 1) && now < self.end)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    #[test]
    fn business_hours_in_berlin_respect_the_local_clock_and_weekdays() {
        let w = Window::new("mon-fri", "09:00", "17:00", "Europe/Berlin").unwrap();
        // Monday 2026-01-05: 08:30 UTC is 09:30 in Berlin (UTC+1).
        assert!(w.contains(at("2026-01-05T08:30:00Z")));
        assert!(!w.contains(at("2026-01-05T07:59:59Z")));
        assert!(!w.contains(at("2026-01-05T16:00:00Z")), "17:00 local is outside");
        // Saturday.
        assert!(!w.contains(at("2026-01-10T10:00:00Z")));
        // Summer: UTC+2, so 07:30 UTC is 09:30 local.
        assert!(w.contains(at("2026-07-06T07:30:00Z")));
    }

    #[test]
    fn overnight_windows_belong_to_the_day_they_start() {
        let w = Window::new("fri", "22:00", "06:00", "UTC").unwrap();
        assert!(w.contains(at("2026-01-09T23:00:00Z")), "Friday night");
        assert!(w.contains(at("2026-01-10T05:00:00Z")), "Saturday early morning");
        assert!(!w.contains(at("2026-01-10T23:00:00Z")), "Saturday night");
        assert!(!w.contains(at("2026-01-09T05:00:00Z")), "Friday early morning");
    }

    #[test]
    fn finds_the_next_opening_after_a_time() {
        let w = Window::new("mon-fri", "09:00", "17:00", "Europe/Berlin").unwrap();
        // Friday evening → Monday 09:00 Berlin.
        assert_eq!(
            w.next_open(at("2026-01-09T18:00:00Z")),
            Some(at("2026-01-12T08:00:00Z"))
        );
        // Monday early morning → the same day.
        assert_eq!(
            w.next_open(at("2026-01-12T05:00:00Z")),
            Some(at("2026-01-12T08:00:00Z"))
        );
    }

    #[test]
    fn parses_day_lists_ranges_and_wrapping_ranges() {
        assert_eq!(parse_days("mon-fri").unwrap(), 0b001_1111);
        assert_eq!(parse_days("sat,sun").unwrap(), 0b110_0000);
        assert_eq!(parse_days("fri-mon").unwrap(), 0b111_0001);
        assert_eq!(parse_days("*").unwrap(), 0x7f);
        assert!(parse_days("mon-funday").unwrap_err().contains("not a day"));
    }

    #[test]
    fn rejects_bad_times_zones_and_empty_windows() {
        assert!(Window::new("mon", "9am", "17:00", "UTC").unwrap_err().contains("HH:MM"));
        assert!(Window::new("mon", "25:00", "17:00", "UTC").is_err());
        assert!(Window::new("mon", "09:00", "09:00", "UTC")
            .unwrap_err()
            .contains("both"));
        assert!(Window::new("mon", "09:00", "17:00", "Mars/Olympus")
            .unwrap_err()
            .contains("unknown time zone"));
        assert!(Window::new("mon", "09:00", "24:00", "UTC").is_ok());
    }
}
