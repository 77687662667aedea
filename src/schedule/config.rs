//! The daemon configuration file (`chaos continuous --config FILE`):
//! `[daemon]`, `[[schedule]]` and `[[monkey]]`, validated with the same
//! file:line:col diagnostics as experiment files. Every referenced
//! experiment is validated too, so a typo fails at start, not at 3 a.m.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use jiff::tz::TimeZone;

use super::cron::Cron;
use super::window::Window;
use crate::experiment::diagnostic::{did_you_mean, Diagnostic, Severity, Sink};
use crate::experiment::reader::{table_of, tables_of, At, TableReader};
use crate::target::TargetSelector;

/// A validated daemon configuration.
#[derive(Debug, Clone)]
pub struct DaemonConfig {
    /// The file it came from.
    pub file: PathBuf,
    /// Status/metrics endpoint (loopback by default).
    pub listen: SocketAddr,
    /// Bearer token required for any change through the API; without one,
    /// changes are refused.
    pub token: Option<String>,
    /// SQLite history database.
    pub history: PathBuf,
    /// Default time zone of cron expressions and windows.
    pub timezone: String,
    /// Where each run's reports go (one directory per run).
    pub report_dir: PathBuf,
    /// Fault journal directory handed to the runner (None = its default).
    pub journal_dir: Option<PathBuf>,
    /// Seed for jitter and monkey victim choice (None = random).
    pub seed: Option<u64>,
    /// Inventory for experiments with host targets (`@host:`/`@hosts:`);
    /// replaces their own `[[host]]` tables, like `chaos run --inventory`.
    pub inventory: Option<PathBuf>,
    /// Schedules and monkeys, in file order.
    pub entries: Vec<EntrySpec>,
}

/// One `[[schedule]]` or `[[monkey]]` entry.
#[derive(Debug, Clone)]
pub struct EntrySpec {
    /// Unique name (used in URLs, metrics and history).
    pub name: String,
    /// What runs.
    pub kind: EntryKind,
    /// When it fires.
    pub cron: Cron,
    /// Time zone of `cron`.
    pub tz: TimeZone,
    /// Each fire is delayed by a random amount in `[0, jitter]`.
    pub jitter: Duration,
    /// Fires outside this window are skipped.
    pub window: Option<Window>,
    /// Pause after this many failures in a row.
    pub max_consecutive_failures: u32,
    /// After a rejection or abort, skip fires for this long.
    pub backoff: Duration,
}

/// What an entry does when it fires.
#[derive(Debug, Clone, PartialEq)]
pub enum EntryKind {
    /// Run an experiment file.
    Experiment(PathBuf),
    /// Chaos Monkey: signal random processes among `targets`.
    Monkey(MonkeySpec),
}

/// A Chaos Monkey entry's blast radius.
#[derive(Debug, Clone, PartialEq)]
pub struct MonkeySpec {
    /// Candidate processes (pid, pidfile or name selectors).
    pub targets: Vec<TargetSelector>,
    /// At most this many processes per strike.
    pub max_targets: u32,
    /// Signal name, e.g. `SIGKILL`.
    pub signal: String,
}

impl EntrySpec {
    /// `experiment` or `monkey`.
    pub fn kind_name(&self) -> &'static str {
        match self.kind {
            EntryKind::Experiment(_) => "experiment",
            EntryKind::Monkey(_) => "monkey",
        }
    }
}

const SECTIONS: &[&str] = &["daemon", "schedule", "monkey"];

/// The result of loading a config: the config when there were no errors,
/// and every diagnostic either way.
#[derive(Debug)]
pub struct LoadedConfig {
    /// `Some` only without errors.
    pub config: Option<DaemonConfig>,
    /// Every problem found.
    pub diagnostics: Vec<Diagnostic>,
}

/// Reads and validates the daemon config at `path`.
pub fn load(path: &Path) -> LoadedConfig {
    let display = path.display().to_string();
    let src = match crate::input_file::read_text(
        path,
        crate::experiment::MAX_FILE_BYTES as u64,
    ) {
        Ok(s) => s,
        Err(e) => {
            let mut sink = Sink::new(&display, "");
            sink.error(None, "", e.to_string(), "check the path");
            return LoadedConfig { config: None, diagnostics: sink.diagnostics };
        }
    };
    load_str(path, &src)
}

/// Validates config text already in memory.
pub fn load_str(path: &Path, src: &str) -> LoadedConfig {
    let display = path.display().to_string();
    let mut sink = Sink::new(&display, src);
    let config = parse(path, src, &mut sink);
    let mut diagnostics = sink.diagnostics;
    diagnostics.sort_by_key(|d| (d.line, d.column));
    let failed = diagnostics.iter().any(|d| d.severity == Severity::Error);
    LoadedConfig { config: if failed { None } else { config }, diagnostics }
}

/// Resolves `p` relative to the directory of `file`.
pub fn relative_to(file: &Path, p: &str) -> PathBuf {
    let p = PathBuf::from(p);
    if p.is_absolute() {
        return p;
    }
    file.parent().map(|d| d.join(&p)).unwrap_or(p)
}

fn parse(file: &Path, src: &str, sink: &mut Sink) -> Option<DaemonConfig> {
    let doc = crate::experiment::reader::parse_document(src, sink)?;
    let root = doc.as_table();
    let mut top = TableReader::new(root, String::new(), Some(0..0));
    for (key, item) in root.iter() {
        if SECTIONS.contains(&key) {
            continue;
        }
        let hint = match did_you_mean(key, SECTIONS) {
            Some(s) => format!("did you mean [{s}]?"),
            None => "valid sections: [daemon], [[schedule]], [[monkey]]".into(),
        };
        let span = root.key(key).and_then(|k| k.span()).or_else(|| item.span());
        sink.error(span, key, format!("unknown section or key `{key}`"), &hint);
    }

    let mut cfg = DaemonConfig {
        file: file.to_path_buf(),
        listen: "127.0.0.1:9464".parse().expect("literal address"),
        token: None,
        history: relative_to(file, "chaos-history.db"),
        timezone: "UTC".into(),
        report_dir: relative_to(file, "reports"),
        journal_dir: None,
        seed: None,
        inventory: None,
        entries: Vec::new(),
    };
    let mut default_tz = TimeZone::UTC;
    if let Some(item) = top.item("daemon") {
        match table_of(item) {
            Some((t, span)) => {
                let mut t = TableReader::new(t, "daemon".into(), span);
                read_daemon(&mut t, sink, file, &mut cfg, &mut default_tz);
                t.finish(sink);
            }
            None => sink.error(
                item.span(),
                "daemon",
                "`daemon` must be a table".into(),
                "write [daemon]",
            ),
        }
    }

    let mut names = BTreeSet::new();
    for (section, monkey) in [("schedule", false), ("monkey", true)] {
        let Some(item) = top.item(section) else { continue };
        let Some(tables) = tables_of(item) else {
            sink.error(
                item.span(),
                section,
                format!("`{section}` must be an array of tables"),
                &format!("write each entry as [[{section}]]"),
            );
            continue;
        };
        for (i, (t, span)) in tables.into_iter().enumerate() {
            let mut t = TableReader::new(t, format!("{section}[{i}]"), span);
            if let Some(e) = read_entry(&mut t, sink, file, &cfg, &default_tz, monkey) {
                if !names.insert(e.name.clone()) {
                    sink.error(
                        t.span.clone(),
                        &t.key_path("name"),
                        format!("duplicate entry name {:?}", e.name),
                        "names identify schedules in history, metrics and the API",
                    );
                }
                cfg.entries.push(e);
            }
            t.finish(sink);
        }
    }
    if cfg.entries.is_empty() && !sink.has_errors() {
        sink.error(
            Some(0..0),
            "schedule",
            "no [[schedule]] or [[monkey]] entries: the daemon would do nothing".into(),
            "add a [[schedule]] with name, experiment and cron",
        );
    }
    Some(cfg)
}

fn read_daemon(
    t: &mut TableReader,
    sink: &mut Sink,
    file: &Path,
    cfg: &mut DaemonConfig,
    default_tz: &mut TimeZone,
) {
    let allow_remote = t.boolean(sink, "allow_remote").map(|b| b.value).unwrap_or(false);
    let mut listen_at = None;
    if let Some(s) = t.string(sink, "listen", "write e.g. \"127.0.0.1:9464\"") {
        match s.value.parse::<SocketAddr>() {
            Ok(a) => {
                listen_at = Some((a, s.span.clone()));
                cfg.listen = a;
            }
            Err(e) => sink.error(
                s.span,
                "daemon.listen",
                format!("{:?} is not an address: {e}", s.value),
                "write IP:PORT, e.g. \"127.0.0.1:9464\"",
            ),
        }
    }
    if let Some(s) = t.string(sink, "token", "write token = \"${CHAOS_DAEMON_TOKEN}\"") {
        if s.value.len() < 8 {
            sink.error(
                s.span,
                "daemon.token",
                "token is shorter than 8 characters".into(),
                "use a long random value, e.g. from `openssl rand -hex 16`",
            );
        } else {
            cfg.token = Some(s.value);
        }
    }
    // The API pauses and resumes schedules: the same rule as the proxy's
    // admin endpoint (loopback, or explicitly remote with a token).
    if let Some((a, span)) = listen_at {
        if let Some(why) =
            crate::traffic::admin::exposure_refusal(a, allow_remote, cfg.token.is_some())
        {
            sink.error(
                span,
                "daemon.listen",
                format!("status API {why}"),
                "keep 127.0.0.1, or set allow_remote = true and token = \
                 \"${CHAOS_DAEMON_TOKEN}\" in [daemon]",
            );
        }
    }
    if let Some(s) = t.string(sink, "history", "write history = \"chaos-history.db\"") {
        cfg.history = relative_to(file, &s.value);
    }
    if let Some(s) = t.string(sink, "report_dir", "write report_dir = \"reports\"") {
        cfg.report_dir = relative_to(file, &s.value);
    }
    if let Some(s) =
        t.string(sink, "journal_dir", "write journal_dir = \"/var/lib/chaos\"")
    {
        cfg.journal_dir = Some(relative_to(file, &s.value));
    }
    if let Some(s) = t.integer(sink, "seed", 0..=i64::MAX, "a non-negative integer") {
        cfg.seed = Some(s.value as u64);
    }
    if let Some(s) = t.string(sink, "inventory", "write inventory = \"fleet.toml\"") {
        let path = relative_to(file, &s.value);
        // Checked now (and read again for every run, so fleet changes
        // reach the daemon), so a broken inventory fails at start.
        match crate::fleet::inventory::Inventory::load(&path) {
            Ok(_) => cfg.inventory = Some(path),
            Err(e) => sink.error(
                s.span,
                "daemon.inventory",
                e,
                "[[host]] tables (name, address, user, labels) or an Ansible YAML \
                 inventory; see README \"Fleets\"",
            ),
        }
    }
    if let Some(s) = t.string(sink, "timezone", "write e.g. \"Europe/Berlin\" or \"UTC\"")
    {
        match super::time_zone(&s.value) {
            Ok(tz) => {
                *default_tz = tz;
                cfg.timezone = s.value;
            }
            Err(msg) => sink.error(
                s.span,
                "daemon.timezone",
                msg,
                "use an IANA name such as \"Europe/Berlin\", \"America/New_York\" or \"UTC\"",
            ),
        }
    }
}

fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

fn read_entry(
    t: &mut TableReader,
    sink: &mut Sink,
    file: &Path,
    cfg: &DaemonConfig,
    default_tz: &TimeZone,
    monkey: bool,
) -> Option<EntrySpec> {
    let name =
        t.req_string(sink, "name", "give the entry a name: name = \"checkout-latency\"");
    if let Some(n) = &name {
        if !valid_name(&n.value) {
            sink.error(
                n.span.clone(),
                &t.key_path("name"),
                format!("name {:?} must be 1-64 letters, digits, '-' or '_'", n.value),
                "names appear in URLs (/schedules/NAME/pause) and metric labels",
            );
        }
    }
    let cron =
        t.req_string(sink, "cron", "write e.g. cron = \"0 */15 9-17 * * mon-fri\"");
    let cron = cron.and_then(|c| match Cron::parse(&c.value) {
        Ok(v) => Some(v),
        Err(e) => {
            sink.error(
                c.span,
                &t.key_path("cron"),
                e.reason,
                "six fields: sec min hour day month weekday (or five without seconds)",
            );
            None
        }
    });
    let jitter = t.duration(sink, "jitter", true).map(|d| d.value).unwrap_or_default();
    let window = read_window(t, sink, cfg);
    let max_failures = t
        .integer(
            sink,
            "max_consecutive_failures",
            1..=10_000,
            "a positive integer, e.g. 3",
        )
        .map(|v| v.value as u32)
        .unwrap_or(3);
    let backoff = t
        .duration(sink, "backoff", true)
        .map(|d| d.value)
        .unwrap_or(Duration::from_secs(600));
    let kind = if monkey {
        read_monkey(t, sink)
    } else {
        read_experiment_ref(t, sink, file, cfg)
    };
    Some(EntrySpec {
        name: name?.value,
        kind: kind?,
        cron: cron?,
        tz: default_tz.clone(),
        jitter,
        window: window?,
        max_consecutive_failures: max_failures,
        backoff,
    })
}

fn read_experiment_ref(
    t: &mut TableReader,
    sink: &mut Sink,
    file: &Path,
    cfg: &DaemonConfig,
) -> Option<EntryKind> {
    let exp =
        t.req_string(sink, "experiment", "write experiment = \"experiments/x.toml\"")?;
    let path = relative_to(file, &exp.value);
    let loaded = crate::experiment::load(&path);
    let errors: Vec<&Diagnostic> =
        loaded.diagnostics.iter().filter(|d| d.severity == Severity::Error).collect();
    if let Some(first) = errors.first() {
        sink.error(
            exp.span,
            &t.key_path("experiment"),
            format!(
                "experiment {} is invalid ({} error(s)); first: {}:{}: {}",
                path.display(),
                errors.len(),
                first.line,
                first.column,
                first.message
            ),
            &format!("run `chaos validate {}` for every problem", path.display()),
        );
        return None;
    }
    // Host targets need an inventory: a missing one fails at start, not
    // at the first fire.
    let needs_hosts = loaded.experiment.as_ref().and_then(|e| {
        let f = e.faults.iter().find(|f| f.host_target.is_some())?;
        (e.hosts.is_none() && cfg.inventory.is_none()).then(|| f.id.clone())
    });
    if let Some(fault) = needs_hosts {
        sink.error(
            exp.span,
            &t.key_path("experiment"),
            format!(
                "experiment {}: fault {fault} targets hosts, but neither the experiment \
                 ([[host]] tables) nor [daemon] inventory names any",
                path.display()
            ),
            "add inventory = \"fleet.toml\" to [daemon]",
        );
        return None;
    }
    Some(EntryKind::Experiment(path))
}

fn read_monkey(t: &mut TableReader, sink: &mut Sink) -> Option<EntryKind> {
    let hint =
        "write targets = [\"name:^demo-api-\"] (pid:, pidfile: or name: selectors)";
    let targets = match t.strings(sink, "targets", hint) {
        Some(v) if !v.is_empty() => v,
        Some(_) => {
            sink.error(
                t.span.clone(),
                &t.key_path("targets"),
                "targets is empty".into(),
                hint,
            );
            return None;
        }
        None => {
            t.missing(sink, "targets", hint);
            return None;
        }
    };
    let mut sels = Vec::new();
    for (i, s) in targets.iter().enumerate() {
        let path = format!("{}[{i}]", t.key_path("targets"));
        match TargetSelector::parse(&s.value) {
            Ok(
                sel @ (TargetSelector::Pid(_)
                | TargetSelector::Pidfile(_)
                | TargetSelector::Name(_)),
            ) => sels.push(sel),
            Ok(_) => sink.error(
                s.span.clone(),
                &path,
                format!("{:?} is not a process selector", s.value),
                "Chaos Monkey signals processes: use pid:, pidfile: or name:",
            ),
            Err(msg) => sink.error(s.span.clone(), &path, msg, hint),
        }
    }
    let max_targets = t
        .integer(sink, "max_targets", 1..=100, "how many processes per strike, e.g. 1")
        .map(|v| v.value as u32)
        .unwrap_or(1);
    let signal = match t.string(sink, "signal", "write signal = \"SIGKILL\"") {
        Some(s) => match crate::experiment::parse::normalize_signal(&s.value) {
            Some(sig) => sig,
            None => {
                sink.error(
                    s.span,
                    &t.key_path("signal"),
                    format!("unknown signal {:?}", s.value),
                    "use SIGKILL, SIGTERM, SIGINT, SIGQUIT, SIGHUP, SIGUSR1 or SIGUSR2",
                );
                return None;
            }
        },
        None => "SIGKILL".into(),
    };
    if sels.len() != targets.len() {
        return None;
    }
    Some(EntryKind::Monkey(MonkeySpec { targets: sels, max_targets, signal }))
}

fn read_window(
    t: &mut TableReader,
    sink: &mut Sink,
    cfg: &DaemonConfig,
) -> Option<Option<Window>> {
    let Some(item) = t.item("window") else { return Some(None) };
    let path = t.key_path("window");
    let hint =
        "write window = { days = \"mon-fri\", start = \"09:00\", end = \"17:00\" }";
    let Some((wt, span)) = table_of(item) else {
        sink.error(item.span(), &path, "`window` must be a table".into(), hint);
        return None;
    };
    let mut w = TableReader::new(wt, path.clone(), span.clone());
    let days = w.string(sink, "days", hint);
    let start = w.req_string(sink, "start", hint);
    let end = w.req_string(sink, "end", hint);
    let tz = w.string(sink, "timezone", "write e.g. \"Europe/Berlin\"");
    w.finish(sink);
    let (start, end) = (start?, end?);
    let days = days.unwrap_or(At { value: "*".into(), span: None });
    let tz_name = tz.map(|t| t.value).unwrap_or_else(|| cfg.timezone.clone());
    match Window::new(&days.value, &start.value, &end.value, &tz_name) {
        Ok(win) => Some(Some(win)),
        Err(msg) => {
            sink.error(start.span.or(span), &path, msg, hint);
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_experiment(dir: &Path) {
        std::fs::write(
            dir.join("exp.toml"),
            r#"
[experiment]
name = "e"
duration = "4s"
baseline = "2s"
[traffic]
listen = "127.0.0.1:19011"
upstream = "http://127.0.0.1:19012"
[[hypothesis]]
name = "latency"
metric = "latency"
tolerance = "+10%"
"#,
        )
        .unwrap();
    }

    /// Issue 11: an experiment with host targets needs an inventory, from
    /// its own [[host]] tables or `[daemon] inventory`; a missing or broken
    /// one fails at start with file:line:col, not at the first fire.
    #[test]
    fn host_targets_need_an_inventory_checked_at_start() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("fleet-exp.toml"),
            r#"
[experiment]
name = "fleet"
duration = "4s"
[traffic]
listen = "127.0.0.1:19021"
upstream = "http://127.0.0.1:19022"
[[hypothesis]]
name = "latency"
metric = "latency"
tolerance = "+10%"
[[fault]]
kind = "process-pause"
target = "name:payments@hosts:role=payments"
"#,
        )
        .unwrap();
        std::fs::write(
            dir.path().join("fleet.toml"),
            "[[host]]\nname = \"web-1\"\naddress = \"10.0.0.1\"\nlabels = { role = \"payments\" }\n",
        )
        .unwrap();
        let file = dir.path().join("continuous.toml");
        let entry = "[[schedule]]\nname = \"fleet\"\nexperiment = \"fleet-exp.toml\"\ncron = \"0 * * * *\"\n";
        let without = load_str(&file, entry);
        assert!(without.config.is_none());
        let d = &without.diagnostics[0];
        assert!(d.message.contains("targets hosts"), "{d:?}");
        assert_eq!(d.line, 3, "points at the experiment key: {d:?}");
        assert!(d.hint.contains("inventory"), "{d:?}");

        let with =
            load_str(&file, &format!("[daemon]\ninventory = \"fleet.toml\"\n{entry}"));
        let cfg = with.config.unwrap_or_else(|| panic!("{:?}", with.diagnostics));
        assert_eq!(cfg.inventory, Some(dir.path().join("fleet.toml")));

        let broken =
            load_str(&file, &format!("[daemon]\ninventory = \"missing.toml\"\n{entry}"));
        assert!(broken.config.is_none());
        assert!(
            broken.diagnostics.iter().any(|d| d.path == "daemon.inventory"
                && d.message.contains("missing.toml")
                && d.line == 2),
            "{:?}",
            broken.diagnostics
        );
    }

    #[test]
    fn loads_a_full_config_with_defaults_and_relative_paths() {
        let dir = tempfile::tempdir().unwrap();
        write_experiment(dir.path());
        let file = dir.path().join("continuous.toml");
        let src = r#"
[daemon]
listen = "127.0.0.1:0"
token = "0123456789abcdef"
history = "h.db"
timezone = "Europe/Berlin"

[[schedule]]
name = "latency"
experiment = "exp.toml"
cron = "*/5 * * * * *"
jitter = "2s"
window = { days = "mon-fri", start = "09:00", end = "17:00" }
max_consecutive_failures = 2
backoff = "1m"

[[monkey]]
name = "monkey"
targets = ["name:^demo-api-"]
cron = "0 */10 * * * *"
signal = "term"
"#;
        let l = load_str(&file, src);
        assert!(l.diagnostics.is_empty(), "{:?}", l.diagnostics);
        let c = l.config.unwrap();
        assert_eq!(c.history, dir.path().join("h.db"));
        assert_eq!(c.entries.len(), 2);
        let s = &c.entries[0];
        assert_eq!(s.kind, EntryKind::Experiment(dir.path().join("exp.toml")));
        assert_eq!(s.jitter, Duration::from_secs(2));
        assert_eq!(s.window.as_ref().unwrap().tz_name(), "Europe/Berlin");
        assert_eq!(s.max_consecutive_failures, 2);
        let m = &c.entries[1];
        assert_eq!(m.backoff, Duration::from_secs(600));
        match &m.kind {
            EntryKind::Monkey(spec) => {
                assert_eq!(spec.signal, "SIGTERM");
                assert_eq!(spec.max_targets, 1);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn reports_every_problem_with_line_and_column() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("bad.toml");
        let src = r#"[daemon]
listen = "nowhere"
timezone = "Mars/Base"

[[schedule]]
name = "a b"
experiment = "missing.toml"
cron = "* * *"
windw = 1

[[monkey]]
name = "m"
targets = ["iface:eth0"]
cron = "@daily"
"#;
        let l = load_str(&file, src);
        assert!(l.config.is_none());
        let text: Vec<String> = l.diagnostics.iter().map(|d| d.to_string()).collect();
        let has = |needle: &str, line: usize| {
            l.diagnostics.iter().any(|d| d.line == line && d.to_string().contains(needle))
        };
        assert!(has("not an address", 2), "{text:#?}");
        assert!(has("unknown time zone", 3), "{text:#?}");
        assert!(has("must be 1-64", 6), "{text:#?}");
        assert!(has("is invalid", 7), "{text:#?}");
        assert!(has("3 fields", 8), "{text:#?}");
        assert!(has("did you mean `window`", 9), "{text:#?}");
        assert!(has("not a process selector", 13), "{text:#?}");
    }

    /// Issue 12 case 12, for the daemon's API: non-loopback only with
    /// `allow_remote = true` and a token.
    #[test]
    fn r12_12_a_non_loopback_daemon_api_needs_allow_remote_and_a_token() {
        let dir = tempfile::tempdir().unwrap();
        write_experiment(dir.path());
        let file = dir.path().join("c.toml");
        let with = |daemon: &str| {
            load_str(
                &file,
                &format!(
                    "[daemon]\n{daemon}\n[[schedule]]\nname = \"x\"\n\
                     experiment = \"exp.toml\"\ncron = \"@hourly\"\n"
                ),
            )
        };
        let bare = with("listen = \"0.0.0.0:9464\"");
        assert!(bare.config.is_none());
        assert!(
            bare.diagnostics
                .iter()
                .any(|d| d.line == 2 && d.message.contains("loopback")),
            "{:?}",
            bare.diagnostics
        );
        let no_token = with("listen = \"0.0.0.0:9464\"\nallow_remote = true");
        assert!(no_token.config.is_none());
        let ok = with(
            "listen = \"0.0.0.0:9464\"\nallow_remote = true\ntoken = \"0123456789abcdef\"",
        );
        assert!(ok.config.is_some(), "{:?}", ok.diagnostics);
        assert!(with("listen = \"127.0.0.1:9464\"").config.is_some());
    }

    #[test]
    fn the_example_daemon_config_in_scenarios_validates() {
        let path =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("scenarios/continuous.toml");
        let l = load(&path);
        assert!(l.config.is_some(), "{:#?}", l.diagnostics);
        let c = l.config.unwrap();
        assert_eq!(c.listen.to_string(), "127.0.0.1:9464");
        assert_eq!(c.entries.len(), 3);
        assert!(c.token.is_some());
    }

    #[test]
    fn refuses_duplicate_names_and_an_empty_config() {
        let dir = tempfile::tempdir().unwrap();
        write_experiment(dir.path());
        let file = dir.path().join("c.toml");
        let dup = "[[schedule]]\nname = \"x\"\nexperiment = \"exp.toml\"\ncron = \"@hourly\"\n\
                   [[schedule]]\nname = \"x\"\nexperiment = \"exp.toml\"\ncron = \"@daily\"\n";
        let l = load_str(&file, dup);
        assert!(l.diagnostics.iter().any(|d| d.message.contains("duplicate")));
        let l = load_str(&file, "[daemon]\n");
        assert!(l.diagnostics.iter().any(|d| d.message.contains("would do nothing")));
    }
}
