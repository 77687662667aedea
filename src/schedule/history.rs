//! The run history: an embedded SQLite database (bundled, so no system
//! library is needed) that survives daemon restarts. A row is written when
//! a run starts (outcome `running`) and completed when it ends, so a crash
//! leaves evidence; the next start marks such rows `abandoned`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::{params, Connection, OptionalExtension};
use serde::Serialize;

/// History database errors, with the file involved.
#[derive(Debug, thiserror::Error)]
pub enum HistoryError {
    /// Opening, migrating or querying failed.
    #[error("history database {path}: {source}")]
    Sql {
        /// The database file.
        path: PathBuf,
        /// The SQLite error.
        #[source]
        source: rusqlite::Error,
    },
    /// Another daemon holds the history's lock file.
    #[error(
        "history database {path} is in use by another `chaos continuous` (lock {lock})"
    )]
    Locked {
        /// The database file.
        path: PathBuf,
        /// The lock file.
        lock: PathBuf,
    },
    /// The parent directory could not be created.
    #[error("history database {path}: cannot create its directory: {source}")]
    Dir {
        /// The database file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
}

/// One recorded run.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RunRow {
    /// Run id (increasing).
    pub id: i64,
    /// Schedule, monkey or game-day name.
    pub schedule: String,
    /// Experiment file or name (for monkeys: `monkey`).
    pub experiment: String,
    /// RFC 3339.
    pub started_at: String,
    /// RFC 3339; None while running.
    pub finished_at: Option<String>,
    /// `running`, `accepted`, `rejected`, …, `could-not-start`, `struck`.
    pub outcome: String,
    /// Per-hypothesis verdicts (or monkey victims) as JSON.
    pub verdicts: serde_json::Value,
    /// Where the run's reports are.
    pub report_dir: Option<String>,
    /// Why it failed or what a monkey did.
    pub detail: Option<String>,
}

/// How a run ended, for [`History::finish`].
#[derive(Debug, Clone)]
pub struct RunEnd<'a> {
    /// RFC 3339.
    pub finished_at: String,
    /// Outcome word.
    pub outcome: &'a str,
    /// Verdicts JSON.
    pub verdicts: serde_json::Value,
    /// Report directory.
    pub report_dir: Option<&'a Path>,
    /// Free text.
    pub detail: Option<&'a str>,
}

/// An exclusive claim on a history database for one daemon, released when
/// dropped (or when the process dies: it is an flock).
pub struct HistoryLock {
    _file: std::fs::File,
}

impl HistoryLock {
    /// Takes `PATH.lock`, failing at once when another daemon holds it.
    pub fn acquire(path: &Path) -> Result<HistoryLock, HistoryError> {
        use fs2::FileExt;
        let lock = PathBuf::from(format!("{}.lock", path.display()));
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|source| HistoryError::Dir {
                path: path.to_path_buf(),
                source,
            })?;
        }
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock)
            .map_err(|source| HistoryError::Dir { path: lock.clone(), source })?;
        file.try_lock_exclusive()
            .map_err(|_| HistoryError::Locked { path: path.to_path_buf(), lock })?;
        Ok(HistoryLock { _file: file })
    }
}

/// An open history database.
pub struct History {
    conn: Connection,
    path: PathBuf,
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS runs (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    schedule      TEXT NOT NULL,
    experiment    TEXT NOT NULL,
    started_at    TEXT NOT NULL,
    finished_at   TEXT,
    outcome       TEXT NOT NULL,
    verdicts_json TEXT NOT NULL DEFAULT '[]',
    report_dir    TEXT,
    detail        TEXT
);
CREATE INDEX IF NOT EXISTS runs_by_schedule ON runs (schedule, id);
";

impl History {
    /// Opens (creating if needed) the database at `path`.
    pub fn open(path: &Path) -> Result<History, HistoryError> {
        let sql = |source| HistoryError::Sql { path: path.to_path_buf(), source };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|source| HistoryError::Dir {
                path: path.to_path_buf(),
                source,
            })?;
        }
        let conn = Connection::open(path).map_err(sql)?;
        // WAL lets `chaos history` read while the daemon writes; the busy
        // timeout covers the short write locks.
        conn.busy_timeout(Duration::from_secs(5)).map_err(sql)?;
        conn.pragma_update(None, "journal_mode", "WAL").map_err(sql)?;
        // In WAL mode NORMAL cannot corrupt the database; at worst the last
        // commit is lost on power failure, and it keeps a loaded disk's
        // fsync latency out of the scheduler's timing.
        conn.pragma_update(None, "synchronous", "NORMAL").map_err(sql)?;
        conn.execute_batch(SCHEMA).map_err(sql)?;
        Ok(History { conn, path: path.to_path_buf() })
    }

    fn err(&self, source: rusqlite::Error) -> HistoryError {
        HistoryError::Sql { path: self.path.clone(), source }
    }

    /// Records the start of a run; returns its id.
    pub fn begin(
        &self,
        schedule: &str,
        experiment: &str,
        started_at: &str,
    ) -> Result<i64, HistoryError> {
        self.conn
            .execute(
                "INSERT INTO runs (schedule, experiment, started_at, outcome) \
                 VALUES (?1, ?2, ?3, 'running')",
                params![schedule, experiment, started_at],
            )
            .map_err(|e| self.err(e))?;
        Ok(self.conn.last_insert_rowid())
    }

    /// Completes run `id`.
    pub fn finish(&self, id: i64, end: &RunEnd) -> Result<(), HistoryError> {
        self.conn
            .execute(
                "UPDATE runs SET finished_at = ?2, outcome = ?3, verdicts_json = ?4, \
                 report_dir = ?5, detail = ?6 WHERE id = ?1",
                params![
                    id,
                    end.finished_at,
                    end.outcome,
                    end.verdicts.to_string(),
                    end.report_dir.map(|p| p.display().to_string()),
                    end.detail,
                ],
            )
            .map_err(|e| self.err(e))?;
        Ok(())
    }

    /// Marks rows left `running` by a previous process as `abandoned`;
    /// returns how many there were.
    pub fn mark_abandoned(&self, now: &str) -> Result<usize, HistoryError> {
        self.conn
            .execute(
                "UPDATE runs SET outcome = 'abandoned', finished_at = ?1, \
                 detail = 'the daemon stopped without finishing this run' \
                 WHERE outcome = 'running'",
                params![now],
            )
            .map_err(|e| self.err(e))
    }

    /// The newest `limit` runs, newest first.
    pub fn list(&self, limit: u32) -> Result<Vec<RunRow>, HistoryError> {
        let mut stmt = self
            .conn
            .prepare(
                "SELECT id, schedule, experiment, started_at, finished_at, outcome, \
                 verdicts_json, report_dir, detail FROM runs ORDER BY id DESC LIMIT ?1",
            )
            .map_err(|e| self.err(e))?;
        let rows = stmt.query_map(params![limit], row).map_err(|e| self.err(e))?;
        rows.collect::<Result<Vec<_>, _>>().map_err(|e| self.err(e))
    }

    /// One run by id.
    pub fn get(&self, id: i64) -> Result<Option<RunRow>, HistoryError> {
        self.conn
            .query_row(
                "SELECT id, schedule, experiment, started_at, finished_at, outcome, \
                 verdicts_json, report_dir, detail FROM runs WHERE id = ?1",
                params![id],
                row,
            )
            .optional()
            .map_err(|e| self.err(e))
    }

    /// Per (schedule, outcome) counts of finished runs, for metrics that
    /// continue across restarts.
    pub fn counts(&self) -> Result<Vec<(String, String, u64)>, HistoryError> {
        let mut stmt = self
            .conn
            .prepare(
                "SELECT schedule, outcome, COUNT(*) FROM runs \
                 WHERE outcome != 'running' GROUP BY schedule, outcome",
            )
            .map_err(|e| self.err(e))?;
        let rows = stmt
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get::<_, i64>(2)? as u64)))
            .map_err(|e| self.err(e))?;
        rows.collect::<Result<Vec<_>, _>>().map_err(|e| self.err(e))
    }
}

fn row(r: &rusqlite::Row) -> rusqlite::Result<RunRow> {
    let verdicts: String = r.get(6)?;
    Ok(RunRow {
        id: r.get(0)?,
        schedule: r.get(1)?,
        experiment: r.get(2)?,
        started_at: r.get(3)?,
        finished_at: r.get(4)?,
        outcome: r.get(5)?,
        verdicts: serde_json::from_str(&verdicts).unwrap_or(serde_json::Value::Null),
        report_dir: r.get(7)?,
        detail: r.get(8)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn runs_survive_closing_and_reopening_the_database() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/history.db");
        let id = {
            let h = History::open(&path).unwrap();
            let id = h.begin("checkout", "exp.toml", "2026-01-05T09:00:00Z").unwrap();
            h.finish(
                id,
                &RunEnd {
                    finished_at: "2026-01-05T09:00:06Z".into(),
                    outcome: "rejected",
                    verdicts: json!([{"hypothesis": "p99", "verdict": "rejected"}]),
                    report_dir: Some(Path::new("/tmp/r/1")),
                    detail: None,
                },
            )
            .unwrap();
            h.begin("checkout", "exp.toml", "2026-01-05T09:01:00Z").unwrap();
            id
        };
        let h = History::open(&path).unwrap();
        assert_eq!(h.mark_abandoned("2026-01-05T09:02:00Z").unwrap(), 1);
        let rows = h.list(10).unwrap();
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[0].outcome, "abandoned", "newest first");
        let r = h.get(id).unwrap().unwrap();
        assert_eq!(r.outcome, "rejected");
        assert_eq!(r.verdicts[0]["verdict"], "rejected");
        assert_eq!(r.report_dir.as_deref(), Some("/tmp/r/1"));
        assert_eq!(r.finished_at.as_deref(), Some("2026-01-05T09:00:06Z"));
        assert_eq!(h.get(999).unwrap(), None);
        assert_eq!(h.list(1).unwrap().len(), 1);
        let mut counts = h.counts().unwrap();
        counts.sort();
        assert_eq!(
            counts,
            [
                ("checkout".to_string(), "abandoned".to_string(), 1),
                ("checkout".to_string(), "rejected".to_string(), 1)
            ]
        );
    }

    #[test]
    fn only_one_daemon_at_a_time_may_claim_a_history() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("h.db");
        let first = HistoryLock::acquire(&path).unwrap();
        let err = HistoryLock::acquire(&path).err().unwrap();
        assert!(err.to_string().contains("in use by another"), "{err}");
        drop(first);
        assert!(HistoryLock::acquire(&path).is_ok());
    }

    #[test]
    fn an_unwritable_location_is_an_error_naming_the_file() {
        let err = History::open(Path::new("/proc/chaos/history.db")).err().unwrap();
        assert!(err.to_string().contains("/proc/chaos/history.db"), "{err}");
    }
}
