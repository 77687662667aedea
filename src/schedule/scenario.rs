//! Game-day scenario files: `[gameday]` (name, description, stop_on_abort)
//! and an ordered list of `[[step]]`s — `experiment` (a file, run by the
//! runner), `checkpoint` (a message a human confirms) and `pause` (a
//! duration). Paths are relative to the scenario file. Every referenced
//! experiment is validated up front, so a game day never dies at step 4
//! because of a typo.

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::config::relative_to;
use crate::experiment::diagnostic::{did_you_mean, Diagnostic, Severity, Sink};
use crate::experiment::reader::{table_of, tables_of, TableReader};

/// A validated game day.
#[derive(Debug, Clone, PartialEq)]
pub struct Scenario {
    /// The file it came from.
    pub file: PathBuf,
    /// Human name.
    pub name: String,
    /// What the game day is for.
    pub description: String,
    /// Stop at the first aborted (or unstartable) experiment.
    pub stop_on_abort: bool,
    /// Steps in order.
    pub steps: Vec<Step>,
}

/// One step.
#[derive(Debug, Clone, PartialEq)]
pub enum Step {
    /// Run an experiment file.
    Experiment {
        /// Resolved path.
        file: PathBuf,
        /// The experiment's `[experiment] name`.
        name: String,
    },
    /// Wait for a human to confirm.
    Checkpoint {
        /// What to confirm.
        message: String,
    },
    /// Wait.
    Pause {
        /// How long.
        duration: Duration,
    },
}

impl Step {
    /// `experiment`, `checkpoint` or `pause`.
    pub fn kind(&self) -> &'static str {
        match self {
            Step::Experiment { .. } => "experiment",
            Step::Checkpoint { .. } => "checkpoint",
            Step::Pause { .. } => "pause",
        }
    }

    /// One-line description for the timeline.
    pub fn label(&self) -> String {
        match self {
            Step::Experiment { name, .. } => name.clone(),
            Step::Checkpoint { message } => message.clone(),
            Step::Pause { duration } => crate::units::format_duration(*duration),
        }
    }
}

impl Scenario {
    /// True when some step needs a human.
    pub fn has_checkpoints(&self) -> bool {
        self.steps.iter().any(|s| matches!(s, Step::Checkpoint { .. }))
    }
}

/// A loaded scenario and every diagnostic.
#[derive(Debug)]
pub struct LoadedScenario {
    /// `Some` only without errors.
    pub scenario: Option<Scenario>,
    /// Every problem found (the scenario's and its experiments').
    pub diagnostics: Vec<Diagnostic>,
}

const STEP_KINDS: &[&str] = &["experiment", "checkpoint", "pause"];

/// Reads and validates the scenario at `path`.
pub fn load(path: &Path) -> LoadedScenario {
    match crate::input_file::read_text(path, crate::experiment::MAX_FILE_BYTES as u64) {
        Ok(src) => load_str(path, &src),
        Err(e) => {
            let mut sink = Sink::new(&path.display().to_string(), "");
            sink.error(None, "", e.to_string(), "check the path");
            LoadedScenario { scenario: None, diagnostics: sink.diagnostics }
        }
    }
}

/// Validates scenario text already in memory.
pub fn load_str(path: &Path, src: &str) -> LoadedScenario {
    let mut sink = Sink::new(&path.display().to_string(), src);
    let mut extra = Vec::new();
    let scenario = parse(path, src, &mut sink, &mut extra);
    let mut diagnostics = sink.diagnostics;
    diagnostics.sort_by_key(|d| (d.line, d.column));
    diagnostics.extend(extra);
    let failed = diagnostics.iter().any(|d| d.severity == Severity::Error);
    LoadedScenario { scenario: if failed { None } else { scenario }, diagnostics }
}

fn parse(
    file: &Path,
    src: &str,
    sink: &mut Sink,
    extra: &mut Vec<Diagnostic>,
) -> Option<Scenario> {
    let doc = crate::experiment::reader::parse_document(src, sink)?;
    let root = doc.as_table();
    let mut top = TableReader::new(root, String::new(), Some(0..0));
    for (key, item) in root.iter() {
        if key == "gameday" || key == "step" {
            continue;
        }
        let hint = match did_you_mean(key, &["gameday", "step"]) {
            Some(s) => format!("did you mean `{s}`?"),
            None => "valid sections: [gameday] and [[step]]".into(),
        };
        let span = root.key(key).and_then(|k| k.span()).or_else(|| item.span());
        sink.error(span, key, format!("unknown section or key `{key}`"), &hint);
    }
    let (mut name, mut description, mut stop_on_abort) = (None, String::new(), true);
    match top.item("gameday").map(|i| (table_of(i), i.span())) {
        Some((Some((t, span)), _)) => {
            let mut g = TableReader::new(t, "gameday".into(), span);
            name =
                g.req_string(sink, "name", "name the game day: name = \"Q4 checkout\"");
            if let Some(d) = g.string(sink, "description", "a sentence about the goal") {
                description = d.value;
            }
            if let Some(b) = g.boolean(sink, "stop_on_abort") {
                stop_on_abort = b.value;
            }
            g.finish(sink);
        }
        Some((None, span)) => sink.error(
            span,
            "gameday",
            "`gameday` must be a table".into(),
            "write [gameday] followed by name = \"...\"",
        ),
        None => sink.error(
            Some(0..0),
            "gameday",
            "missing required section [gameday]".into(),
            "add [gameday] with name = \"...\" (and optionally stop_on_abort = true)",
        ),
    }
    let mut steps = Vec::new();
    match top.item("step").map(|i| (tables_of(i), i.span())) {
        Some((Some(tables), _)) if !tables.is_empty() => {
            for (i, (t, span)) in tables.into_iter().enumerate() {
                let mut r = TableReader::new(t, format!("step[{i}]"), span);
                if let Some(s) = read_step(&mut r, sink, file, extra) {
                    steps.push(s);
                }
                r.finish(sink);
            }
        }
        Some((_, span)) => sink.error(
            span,
            "step",
            "`step` must be a non-empty array of tables".into(),
            "write each step as [[step]] with kind = \"experiment\" | \"checkpoint\" | \"pause\"",
        ),
        None => sink.error(
            Some(0..0),
            "step",
            "a game day needs at least one [[step]]".into(),
            "add [[step]] kind = \"experiment\" file = \"../experiments/x.toml\"",
        ),
    }
    Some(Scenario {
        file: file.to_path_buf(),
        name: name?.value,
        description,
        stop_on_abort,
        steps,
    })
}

fn read_step(
    r: &mut TableReader,
    sink: &mut Sink,
    file: &Path,
    extra: &mut Vec<Diagnostic>,
) -> Option<Step> {
    let kind =
        r.req_string(sink, "kind", "kind = \"experiment\", \"checkpoint\" or \"pause\"")?;
    // Keys of the other kinds are read by nobody and so reported by
    // `finish` as unknown, with a did-you-mean among this kind's keys.
    match kind.value.as_str() {
        "experiment" => {
            let f =
                r.req_string(sink, "file", "file = \"../experiments/aa-no-fault.toml\"")?;
            let path = relative_to(file, &f.value);
            let loaded = crate::experiment::load(&path);
            let errors =
                loaded.diagnostics.iter().filter(|d| d.severity == Severity::Error);
            let n = errors.count();
            if n > 0 {
                sink.error(
                    f.span,
                    &r.key_path("file"),
                    format!(
                        "experiment {} has {n} error(s) (listed below)",
                        path.display()
                    ),
                    &format!(
                        "fix them; `chaos validate {}` shows the same",
                        path.display()
                    ),
                );
                extra.extend(loaded.diagnostics);
                return None;
            }
            let name = loaded
                .experiment
                .map(|e| e.meta.name)
                .unwrap_or_else(|| path.display().to_string());
            Some(Step::Experiment { file: path, name })
        }
        "checkpoint" => {
            let m = r.req_string(sink, "message", "message = \"On-call confirms …\"")?;
            Some(Step::Checkpoint { message: m.value })
        }
        "pause" => {
            if r.item("duration").is_none() {
                r.missing(sink, "duration", "duration = \"30s\"");
                return None;
            }
            let d = r.duration(sink, "duration", false)?;
            Some(Step::Pause { duration: d.value })
        }
        other => {
            let hint = match did_you_mean(other, STEP_KINDS) {
                Some(s) => format!("did you mean \"{s}\"?"),
                None => "kinds: experiment, checkpoint, pause".into(),
            };
            sink.error(
                kind.span,
                &r.key_path("kind"),
                format!("unknown step kind {other:?}"),
                &hint,
            );
            r.allow(&["file", "message", "duration"]);
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_checkout_sketch_in_scenarios_is_a_valid_game_day() {
        let path =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("scenarios/checkout-gameday.toml");
        let l = load(&path);
        assert!(l.diagnostics.is_empty(), "{:#?}", l.diagnostics);
        let s = l.scenario.unwrap();
        assert!(s.stop_on_abort);
        let kinds: Vec<&str> = s.steps.iter().map(Step::kind).collect();
        assert_eq!(
            kinds,
            ["experiment", "checkpoint", "experiment", "pause", "experiment"]
        );
        assert!(s.has_checkpoints());
        assert_eq!(s.steps[3], Step::Pause { duration: Duration::from_secs(30) });
    }

    #[test]
    fn every_scenario_file_in_the_repository_validates() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("scenarios");
        let mut n = 0;
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            let text = std::fs::read_to_string(&p).unwrap();
            if p.extension().is_some_and(|x| x == "toml") && text.contains("[gameday]") {
                let l = load(&p);
                assert!(l.scenario.is_some(), "{}: {:#?}", p.display(), l.diagnostics);
                n += 1;
            }
        }
        assert!(n >= 1);
    }

    #[test]
    fn reports_step_problems_with_line_column_and_hints() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("g.toml");
        let src = r#"[gameday]
name = "x"
stop_on_abrot = true

[[step]]
kind = "experimnt"

[[step]]
kind = "pause"
duration = "soon"

[[step]]
kind = "checkpoint"
mesage = "ok?"

[[step]]
kind = "experiment"
file = "missing.toml"
"#;
        let l = load_str(&file, src);
        assert!(l.scenario.is_none());
        let has = |line: usize, needle: &str| {
            l.diagnostics.iter().any(|d| d.line == line && d.to_string().contains(needle))
        };
        let all: Vec<String> = l.diagnostics.iter().map(|d| d.to_string()).collect();
        assert!(has(3, "did you mean `stop_on_abort`"), "{all:#?}");
        assert!(has(6, "did you mean \"experiment\""), "{all:#?}");
        assert!(has(10, "duration"), "{all:#?}");
        assert!(has(12, "missing required key `message`"), "{all:#?}");
        assert!(
            has(14, "did you mean `message`") || has(14, "unknown key `mesage`"),
            "{all:#?}"
        );
        assert!(has(18, "has 1 error(s)"), "{all:#?}");
        assert!(l.diagnostics.iter().any(|d| d.file.ends_with("missing.toml")));
    }

    #[test]
    fn requires_a_gameday_section_and_steps() {
        let l = load_str(Path::new("e.toml"), "");
        let msgs: Vec<&str> = l.diagnostics.iter().map(|d| d.message.as_str()).collect();
        assert!(msgs.iter().any(|m| m.contains("[gameday]")), "{msgs:?}");
        assert!(msgs.iter().any(|m| m.contains("at least one [[step]]")), "{msgs:?}");
    }
}
