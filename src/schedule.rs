//! Game days and continuous experiments: scenario files (`chaos gameday`),
//! the scheduling daemon (`chaos continuous`) with cron, windows, back-off,
//! overlap prevention and Chaos Monkey entries, and the run history.
//!
//! Everything that decides *when* something runs is pure logic over a
//! [`clock::Clock`], so it is unit-tested on a manual clock without real
//! waiting. Running an experiment goes through the [`exec::Executor`] trait
//! (the real one calls the runner), so the scheduling logic never depends on
//! the fault engine.

pub mod api;
pub mod clock;
pub mod config;
pub mod cron;
pub mod daemon;
pub mod exec;
pub mod gameday;
pub mod history;
pub mod monkey;
pub mod planner;
pub mod runner_exec;
pub mod scenario;
pub mod targets;
pub mod window;

use jiff::tz::TimeZone;

/// Resolves a time-zone name from the system database (`/usr/share/zoneinfo`),
/// falling back to the IANA database compiled into the binary; accepts `UTC`
/// and `local` as special names.
pub fn time_zone(name: &str) -> Result<TimeZone, String> {
    match name {
        "UTC" | "utc" | "Etc/UTC" => Ok(TimeZone::UTC),
        "local" => Ok(TimeZone::system()),
        _ => TimeZone::get(name).map_err(|e| format!("unknown time zone {name:?}: {e}")),
    }
}
