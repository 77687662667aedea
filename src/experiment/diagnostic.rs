//! Problems found in an experiment file, located by line and column and
//! rendered as `FILE:LINE:COL: error: MESSAGE` + `hint: ...`, or as JSON.

use serde::Serialize;
use std::fmt;
use std::ops::Range;

/// How bad a problem is. Warnings never block a run unless
/// `--deny-warnings` promotes them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// The file cannot be used.
    Error,
    /// The file works but probably not as intended.
    Warning,
}

/// One problem with its location (1-based line and column, columns counted
/// in characters) and a hint that says how to fix it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Diagnostic {
    /// Path as given by the user.
    pub file: String,
    /// 1-based line.
    pub line: usize,
    /// 1-based column in characters.
    pub column: usize,
    /// Error or warning.
    pub severity: Severity,
    /// Dotted path of the offending field, e.g. `fault[1].probability`.
    pub path: String,
    /// What is wrong.
    pub message: String,
    /// How to fix it.
    pub hint: String,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let sev = match self.severity {
            Severity::Error => "error",
            Severity::Warning => "warning",
        };
        write!(
            f,
            "{}:{}:{}: {sev}: {}",
            self.file, self.line, self.column, self.message
        )?;
        if !self.path.is_empty() {
            write!(f, " (at {})", self.path)?;
        }
        if !self.hint.is_empty() {
            write!(f, "\n  hint: {}", self.hint)?;
        }
        Ok(())
    }
}

/// Maps byte offsets in a source text to 1-based line and column.
pub struct LineIndex<'a> {
    src: &'a str,
    line_starts: Vec<usize>,
}

impl<'a> LineIndex<'a> {
    /// Indexes `src` once; lookups are a binary search.
    pub fn new(src: &'a str) -> Self {
        let mut line_starts = vec![0];
        line_starts.extend(src.match_indices('\n').map(|(i, _)| i + 1));
        LineIndex { src, line_starts }
    }

    /// Line and column (both 1-based; column in characters) of `offset`.
    pub fn locate(&self, offset: usize) -> (usize, usize) {
        let offset = offset.min(self.src.len());
        let line = match self.line_starts.binary_search(&offset) {
            Ok(i) => i,
            Err(i) => i - 1,
        };
        let start = self.line_starts[line];
        let mut end = offset;
        while !self.src.is_char_boundary(end) {
            end -= 1;
        }
        let column = self.src[start..end].chars().count() + 1;
        (line + 1, column)
    }
}

/// Collects diagnostics for one file.
pub struct Sink<'a> {
    file: String,
    index: LineIndex<'a>,
    /// Everything reported so far, in order.
    pub diagnostics: Vec<Diagnostic>,
}

impl<'a> Sink<'a> {
    /// A sink for `file` whose source text is `src`.
    pub fn new(file: &str, src: &'a str) -> Self {
        Sink {
            file: file.to_string(),
            index: LineIndex::new(src),
            diagnostics: Vec::new(),
        }
    }

    /// Reports an error at `span` (start of the span is the location).
    pub fn error(
        &mut self,
        span: Option<Range<usize>>,
        path: &str,
        message: String,
        hint: &str,
    ) {
        self.push(Severity::Error, span, path, message, hint.to_string());
    }

    /// Reports a warning at `span`.
    pub fn warn(
        &mut self,
        span: Option<Range<usize>>,
        path: &str,
        message: String,
        hint: &str,
    ) {
        self.push(Severity::Warning, span, path, message, hint.to_string());
    }

    fn push(
        &mut self,
        severity: Severity,
        span: Option<Range<usize>>,
        path: &str,
        message: String,
        hint: String,
    ) {
        let (line, column) = self.index.locate(span.map(|s| s.start).unwrap_or(0));
        self.diagnostics.push(Diagnostic {
            file: self.file.clone(),
            line,
            column,
            severity,
            path: path.to_string(),
            message,
            hint,
        });
    }

    /// True when at least one error (not warning) was reported.
    pub fn has_errors(&self) -> bool {
        self.diagnostics.iter().any(|d| d.severity == Severity::Error)
    }
}

/// The closest candidate to `word` if it is plausibly a typo of it.
pub fn did_you_mean<'c>(word: &str, candidates: &[&'c str]) -> Option<&'c str> {
    candidates
        .iter()
        .map(|c| (strsim::jaro_winkler(word, c), *c))
        .filter(|(score, _)| *score > 0.8)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, c)| c)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locates_offsets_as_one_based_line_and_character_column() {
        let src = "a = 1\nbé = 2\n\nc";
        let idx = LineIndex::new(src);
        assert_eq!(idx.locate(0), (1, 1));
        assert_eq!(idx.locate(4), (1, 5));
        assert_eq!(idx.locate(6), (2, 1));
        // 'é' is two bytes but one column.
        assert_eq!(idx.locate(9), (2, 3));
        assert_eq!(idx.locate(src.len()), (4, 2));
        assert_eq!(idx.locate(usize::MAX), (4, 2));
    }

    #[test]
    fn suggests_close_names_only() {
        let c = ["duration", "description", "min_samples"];
        assert_eq!(did_you_mean("duraton", &c), Some("duration"));
        assert_eq!(did_you_mean("min_sample", &c), Some("min_samples"));
        assert_eq!(did_you_mean("zzz", &c), None);
    }

    #[test]
    fn renders_file_line_column_and_hint() {
        let d = Diagnostic {
            file: "x.toml".into(),
            line: 3,
            column: 7,
            severity: Severity::Error,
            path: "experiment.duration".into(),
            message: "bad".into(),
            hint: "fix it".into(),
        };
        assert_eq!(
            d.to_string(),
            "x.toml:3:7: error: bad (at experiment.duration)\n  hint: fix it"
        );
    }
}
