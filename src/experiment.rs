//! Experiment files: loading, validation with precise diagnostics, and the
//! validated model. Parsing happens in two stages (as ripgrep goes from
//! low-level to high-level args): a span-preserving TOML document, then a
//! typed [`Experiment`] that cannot hold bad values.

pub mod diagnostic;
pub mod model;
pub mod parse;
pub mod reader;

#[cfg(test)]
mod tests;

use std::path::Path;

pub use diagnostic::{Diagnostic, Severity};
pub use model::*;

/// Experiment files larger than this are refused before parsing: real ones
/// are a few KiB, and the bound keeps `validate` fast on any input.
pub const MAX_FILE_BYTES: usize = 1024 * 1024;

/// The outcome of loading one file: the experiment when there were no
/// errors, and every diagnostic (errors and warnings) either way.
#[derive(Debug)]
pub struct Loaded {
    /// `Some` only when no error was found.
    pub experiment: Option<Experiment>,
    /// Every problem, in file order of discovery.
    pub diagnostics: Vec<Diagnostic>,
}

impl Loaded {
    /// True when at least one error (not warning) was found.
    pub fn has_errors(&self) -> bool {
        self.diagnostics.iter().any(|d| d.severity == Severity::Error)
    }

    /// True when at least one warning was found.
    pub fn has_warnings(&self) -> bool {
        self.diagnostics.iter().any(|d| d.severity == Severity::Warning)
    }
}

/// Reads and validates the experiment at `path`. I/O problems become
/// diagnostics at 1:1 too, so callers have one error path.
pub fn load(path: &Path) -> Loaded {
    let display = path.display().to_string();
    let bytes = match read_bounded(path) {
        Ok(b) => b,
        Err(msg) => return single_error(&display, msg, "check the path and permissions"),
    };
    load_bytes(path, &bytes)
}

/// Validates file contents already in memory (used by tests and fuzzing).
pub fn load_bytes(path: &Path, bytes: &[u8]) -> Loaded {
    let display = path.display().to_string();
    if bytes.len() > MAX_FILE_BYTES {
        return single_error(
            &display,
            format!("file is {} bytes, larger than the 1 MiB limit", bytes.len()),
            "an experiment file is a few KiB; is this the right file?",
        );
    }
    let src = match std::str::from_utf8(bytes) {
        Ok(s) => s,
        Err(e) => {
            let valid = &bytes[..e.valid_up_to()];
            // Safe: the prefix up to valid_up_to is valid UTF-8 by definition.
            let prefix = std::str::from_utf8(valid).unwrap_or("");
            let mut sink = diagnostic::Sink::new(&display, prefix);
            sink.error(
                Some(prefix.len()..prefix.len()),
                "",
                "file is not valid UTF-8 text".into(),
                "experiment files are UTF-8 TOML; is this a binary file?",
            );
            return Loaded { experiment: None, diagnostics: sink.diagnostics };
        }
    };
    let mut sink = diagnostic::Sink::new(&display, src);
    let experiment = parse::parse(path, src, &mut sink);
    let mut diagnostics = sink.diagnostics;
    diagnostics.sort_by_key(|d| (d.line, d.column));
    let has_errors = diagnostics.iter().any(|d| d.severity == Severity::Error);
    Loaded { experiment: if has_errors { None } else { experiment }, diagnostics }
}

fn read_bounded(path: &Path) -> Result<Vec<u8>, String> {
    // fstat on the opened file, refuse FIFOs and devices, read with a
    // bound: `validate /dev/zero` or a FIFO return at once.
    crate::input_file::read_limited(path, MAX_FILE_BYTES as u64)
        .map_err(|e| e.to_string())
}

fn single_error(file: &str, message: String, hint: &str) -> Loaded {
    Loaded {
        experiment: None,
        diagnostics: vec![Diagnostic {
            file: file.to_string(),
            line: 1,
            column: 1,
            severity: Severity::Error,
            path: String::new(),
            message,
            hint: hint.to_string(),
        }],
    }
}
