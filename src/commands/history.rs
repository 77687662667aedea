//! `chaos history`: list and show the runs the continuous daemon recorded.

use std::io::Write;
use std::path::PathBuf;

use clap::{Args, Subcommand};

use crate::exit;
use crate::schedule::history::{History, RunRow};

const AFTER_HELP: &str = "Examples:
  chaos history --db /var/lib/chaos/history.db
  chaos history --limit 5 --json | jq '.[].outcome'
  chaos history show 42

Runs are recorded by `chaos continuous` (see [daemon] history in its config).
A run still in progress shows as `running`; one a crashed daemon left behind
shows as `abandoned`.";

/// Arguments of `chaos history`.
#[derive(Debug, Args)]
#[command(after_help = AFTER_HELP)]
pub struct HistoryArgs {
    /// Show one run in full instead of listing.
    #[command(subcommand)]
    pub action: Option<HistoryAction>,
    /// The history database written by `chaos continuous`.
    #[arg(
        long,
        global = true,
        env = "CHAOS_HISTORY",
        default_value = "chaos-history.db"
    )]
    pub db: PathBuf,
    /// Print JSON instead of text.
    #[arg(long, global = true)]
    pub json: bool,
    /// How many of the newest runs to list.
    #[arg(long, default_value_t = 20)]
    pub limit: u32,
}

/// `chaos history show`.
#[derive(Debug, Subcommand)]
pub enum HistoryAction {
    /// Show one run: verdicts, report directory and details.
    Show {
        /// The run id (first column of `chaos history`).
        run_id: i64,
    },
}

/// Runs `chaos history`.
pub fn run(args: HistoryArgs) -> u8 {
    match execute(&args) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("chaos history: {e:#}");
            exit::INVALID
        }
    }
}

fn execute(args: &HistoryArgs) -> anyhow::Result<u8> {
    use anyhow::Context;
    if !args.db.exists() {
        anyhow::bail!(
            "no history database at {} (the daemon creates it; pass --db PATH)",
            args.db.display()
        );
    }
    let h = History::open(&args.db)
        .with_context(|| format!("opening {}", args.db.display()))?;
    let mut out = std::io::stdout().lock();
    match &args.action {
        None => {
            let rows = h.list(args.limit)?;
            if args.json {
                writeln!(out, "{}", serde_json::to_string_pretty(&rows)?)?;
            } else {
                print_table(&mut out, &rows)?;
            }
            Ok(exit::OK)
        }
        Some(HistoryAction::Show { run_id }) => {
            let Some(row) = h.get(*run_id)? else {
                eprintln!("chaos history: no run {run_id} in {}", args.db.display());
                return Ok(exit::INVALID);
            };
            if args.json {
                writeln!(out, "{}", serde_json::to_string_pretty(&row)?)?;
            } else {
                print_one(&mut out, &row)?;
            }
            Ok(exit::OK)
        }
    }
}

fn print_table(out: &mut dyn Write, rows: &[RunRow]) -> std::io::Result<()> {
    if rows.is_empty() {
        return writeln!(out, "no runs recorded yet");
    }
    writeln!(
        out,
        "{:>6}  {:<20}  {:<16}  {:<24}  {:<18}  VERDICTS",
        "ID", "STARTED", "OUTCOME", "SCHEDULE", "DURATION"
    )?;
    for r in rows {
        writeln!(
            out,
            "{:>6}  {:<20}  {:<16}  {:<24}  {:<18}  {}",
            r.id,
            r.started_at.chars().take(20).collect::<String>(),
            r.outcome,
            r.schedule,
            duration(r),
            verdict_summary(&r.verdicts)
        )?;
    }
    Ok(())
}

fn duration(r: &RunRow) -> String {
    let parse = |s: &str| s.parse::<jiff::Timestamp>().ok();
    match (parse(&r.started_at), r.finished_at.as_deref().and_then(parse)) {
        (Some(a), Some(b)) => {
            crate::units::format_duration(crate::schedule::clock::until(a, b))
        }
        _ => "-".into(),
    }
}

fn verdict_summary(v: &serde_json::Value) -> String {
    let Some(items) = v.as_array() else { return String::new() };
    items
        .iter()
        .map(|i| match (i.get("hypothesis"), i.get("verdict"), i.get("pid")) {
            (Some(h), Some(v), _) => {
                format!("{}={}", h.as_str().unwrap_or("?"), v.as_str().unwrap_or("?"))
            }
            (_, _, Some(pid)) => format!(
                "killed {} ({})",
                pid,
                i.get("name").and_then(|n| n.as_str()).unwrap_or("?")
            ),
            _ => i.to_string(),
        })
        .collect::<Vec<_>>()
        .join(", ")
}

fn print_one(out: &mut dyn Write, r: &RunRow) -> std::io::Result<()> {
    writeln!(out, "run {}", r.id)?;
    writeln!(out, "  schedule:    {}", r.schedule)?;
    writeln!(out, "  experiment:  {}", r.experiment)?;
    writeln!(out, "  started:     {}", r.started_at)?;
    writeln!(out, "  finished:    {}", r.finished_at.as_deref().unwrap_or("-"))?;
    writeln!(out, "  duration:    {}", duration(r))?;
    writeln!(out, "  outcome:     {}", r.outcome)?;
    if let Some(d) = &r.report_dir {
        writeln!(out, "  reports:     {d}")?;
    }
    if let Some(d) = &r.detail {
        writeln!(out, "  detail:      {d}")?;
    }
    let v = verdict_summary(&r.verdicts);
    if !v.is_empty() {
        writeln!(out, "  verdicts:")?;
        for part in v.split(", ") {
            writeln!(out, "    {part}")?;
        }
    }
    Ok(())
}
