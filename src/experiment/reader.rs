//! Typed, span-aware access to one TOML table. Every read records the key
//! as known, so `finish` can reject unknown keys with a "did you mean".
//! Every failure becomes a diagnostic; reads never stop at the first one.

use std::collections::BTreeSet;
use std::ops::Range;
use std::time::Duration;

use toml_edit::{Item, TableLike, Value};

use super::diagnostic::{did_you_mean, Sink};
use crate::units::{self, Tolerance};

/// A value together with where it was written.
#[derive(Debug, Clone, PartialEq)]
pub struct At<T> {
    /// The parsed value.
    pub value: T,
    /// Byte range in the source (for later diagnostics).
    pub span: Option<Range<usize>>,
}

/// Reads the fields of one table (or inline table).
pub struct TableReader<'d> {
    table: &'d dyn TableLike,
    /// Dotted path of this table, e.g. `fault[2]`.
    pub path: String,
    /// Span used for problems with the table as a whole (missing keys).
    pub span: Option<Range<usize>>,
    known: BTreeSet<&'static str>,
}

impl<'d> TableReader<'d> {
    /// Wraps `table` found at `path`.
    pub fn new(
        table: &'d dyn TableLike,
        path: String,
        span: Option<Range<usize>>,
    ) -> Self {
        TableReader { table, path, span, known: BTreeSet::new() }
    }

    /// Dotted path of `key` in this table.
    pub fn key_path(&self, key: &str) -> String {
        if self.path.is_empty() {
            key.to_string()
        } else {
            format!("{}.{key}", self.path)
        }
    }

    /// Span of the key itself (where unknown-key errors point).
    fn key_span(&self, key: &str) -> Option<Range<usize>> {
        self.table.key(key).and_then(|k| k.span())
    }

    /// The raw item for `key`, marking the key as known.
    pub fn item(&mut self, key: &'static str) -> Option<&'d Item> {
        self.known.insert(key);
        self.table.get(key).filter(|i| !i.is_none())
    }

    /// Marks keys as valid without reading them (read elsewhere).
    pub fn allow(&mut self, keys: &[&'static str]) {
        self.known.extend(keys.iter().copied());
    }

    /// Reports a missing required key at the table.
    pub fn missing(&self, sink: &mut Sink, key: &str, hint: &str) {
        sink.error(
            self.span.clone(),
            &self.key_path(key),
            format!("missing required key `{key}` in [{}]", self.path),
            hint,
        );
    }

    fn wrong_type(
        &self,
        sink: &mut Sink,
        key: &str,
        item: &Item,
        expected: &str,
        hint: &str,
    ) {
        sink.error(
            item.span().or_else(|| self.key_span(key)),
            &self.key_path(key),
            format!("`{key}` must be {expected}, found {}", describe(item)),
            hint,
        );
    }

    /// A string (with `${VAR}` interpolation).
    pub fn string(
        &mut self,
        sink: &mut Sink,
        key: &'static str,
        hint: &str,
    ) -> Option<At<String>> {
        let item = self.item(key)?;
        match item.as_str() {
            Some(s) => {
                let span = item.span();
                match interpolate(s) {
                    Ok(v) => Some(At { value: v, span }),
                    Err(msg) => {
                        sink.error(
                            span,
                            &self.key_path(key),
                            msg,
                            "export the variable, or give a default: ${NAME:-default}",
                        );
                        None
                    }
                }
            }
            None => {
                self.wrong_type(sink, key, item, "a string", hint);
                None
            }
        }
    }

    /// A required string.
    pub fn req_string(
        &mut self,
        sink: &mut Sink,
        key: &'static str,
        hint: &str,
    ) -> Option<At<String>> {
        if self.table.get(key).is_none() {
            self.known.insert(key);
            self.missing(sink, key, hint);
            return None;
        }
        self.string(sink, key, hint)
    }

    /// An integer within `range`.
    pub fn integer(
        &mut self,
        sink: &mut Sink,
        key: &'static str,
        range: std::ops::RangeInclusive<i64>,
        hint: &str,
    ) -> Option<At<i64>> {
        let item = self.item(key)?;
        match item.as_integer() {
            Some(v) if range.contains(&v) => Some(At { value: v, span: item.span() }),
            Some(v) => {
                sink.error(
                    item.span(),
                    &self.key_path(key),
                    format!(
                        "`{key}` = {v} is out of range {}..={}",
                        range.start(),
                        range.end()
                    ),
                    hint,
                );
                None
            }
            None => {
                self.wrong_type(sink, key, item, "an integer", hint);
                None
            }
        }
    }

    /// A boolean.
    pub fn boolean(&mut self, sink: &mut Sink, key: &'static str) -> Option<At<bool>> {
        let item = self.item(key)?;
        match item.as_bool() {
            Some(v) => Some(At { value: v, span: item.span() }),
            None => {
                self.wrong_type(sink, key, item, "true or false", "write true or false");
                None
            }
        }
    }

    /// A float or integer.
    pub fn number(
        &mut self,
        sink: &mut Sink,
        key: &'static str,
        hint: &str,
    ) -> Option<At<f64>> {
        let item = self.item(key)?;
        let v = item.as_float().or_else(|| item.as_integer().map(|i| i as f64));
        match v {
            Some(v) if v.is_finite() => Some(At { value: v, span: item.span() }),
            _ => {
                self.wrong_type(sink, key, item, "a number", hint);
                None
            }
        }
    }

    /// A duration string such as `"250ms"`; zero is refused unless `allow_zero`.
    pub fn duration(
        &mut self,
        sink: &mut Sink,
        key: &'static str,
        allow_zero: bool,
    ) -> Option<At<Duration>> {
        let s = self.string(
            sink,
            key,
            "write a duration such as \"250ms\", \"5s\" or \"2m\"",
        )?;
        match units::parse_duration(&s.value) {
            Ok(d) if d.is_zero() && !allow_zero => {
                sink.error(
                    s.span,
                    &self.key_path(key),
                    format!("`{key}` must be greater than zero"),
                    "write a positive duration such as \"30s\"",
                );
                None
            }
            Ok(d) => Some(At { value: d, span: s.span }),
            Err(msg) => {
                sink.error(
                    s.span,
                    &self.key_path(key),
                    msg,
                    "units: us, ms, s, m, h — e.g. \"250ms\"",
                );
                None
            }
        }
    }

    /// A percentage (`"5%"` or a number 0..=100) as a fraction.
    pub fn percent(&mut self, sink: &mut Sink, key: &'static str) -> Option<At<f64>> {
        let item = self.item(key)?;
        let text = match (item.as_str(), item.as_float(), item.as_integer()) {
            (Some(s), _, _) => s.to_string(),
            (_, Some(f), _) => f.to_string(),
            (_, _, Some(i)) => i.to_string(),
            _ => {
                self.wrong_type(
                    sink,
                    key,
                    item,
                    "a percentage",
                    "write e.g. \"5%\" or 5",
                );
                return None;
            }
        };
        match units::parse_percent(&text) {
            Ok(v) => Some(At { value: v, span: item.span() }),
            Err(msg) => {
                sink.error(
                    item.span(),
                    &self.key_path(key),
                    msg,
                    "write a percentage between 0% and 100%, e.g. \"5%\"",
                );
                None
            }
        }
    }

    /// A signed tolerance (`"+10%"`, `"+0.5pp"`).
    pub fn tolerance(
        &mut self,
        sink: &mut Sink,
        key: &'static str,
    ) -> Option<At<Tolerance>> {
        let s =
            self.string(sink, key, "write a tolerance such as \"+10%\" or \"+0.5pp\"")?;
        match units::parse_tolerance(&s.value) {
            Ok(t) => Some(At { value: t, span: s.span }),
            Err(msg) => {
                sink.error(
                    s.span,
                    &self.key_path(key),
                    msg,
                    "\"+10%\" = at most 10% higher than control; \"-5%\" = at most 5% lower; \
                     \"+0.5pp\" = at most 0.5 percentage points higher",
                );
                None
            }
        }
    }

    /// An array of strings (each interpolated).
    pub fn strings(
        &mut self,
        sink: &mut Sink,
        key: &'static str,
        hint: &str,
    ) -> Option<Vec<At<String>>> {
        let item = self.item(key)?;
        let Some(arr) = item.as_array() else {
            self.wrong_type(sink, key, item, "an array of strings", hint);
            return None;
        };
        let mut out = Vec::new();
        for (i, v) in arr.iter().enumerate() {
            match v.as_str() {
                Some(s) => match interpolate(s) {
                    Ok(s) => out.push(At { value: s, span: v.span() }),
                    Err(msg) => sink.error(
                        v.span(),
                        &format!("{}[{i}]", self.key_path(key)),
                        msg,
                        "export the variable, or give a default: ${NAME:-default}",
                    ),
                },
                None => sink.error(
                    v.span(),
                    &format!("{}[{i}]", self.key_path(key)),
                    format!(
                        "element of `{key}` must be a string, found {}",
                        describe_value(v)
                    ),
                    hint,
                ),
            }
        }
        Some(out)
    }

    /// Reports every key that no read asked for, suggesting a close name.
    pub fn finish(self, sink: &mut Sink) {
        let known: Vec<&str> = self.known.iter().copied().collect();
        for (key, _) in self.table.iter() {
            if self.known.contains(key) {
                continue;
            }
            let hint = match did_you_mean(key, &known) {
                Some(s) => format!("did you mean `{s}`?"),
                None => format!("valid keys here: {}", known.join(", ")),
            };
            sink.error(
                self.key_span(key),
                &self.key_path(key),
                format!("unknown key `{key}` in [{}]", self.path),
                &hint,
            );
        }
    }
}

/// Parses TOML text, keeping spans; a syntax error becomes one located
/// diagnostic. Shared by experiments, game-day scenarios and daemon
/// configurations so all three report syntax errors the same way.
pub fn parse_document<'s>(
    src: &'s str,
    sink: &mut Sink,
) -> Option<toml_edit::ImDocument<&'s str>> {
    match toml_edit::ImDocument::parse(src) {
        Ok(doc) => Some(doc),
        Err(e) => {
            let msg = e.message().trim().replace('\n', "; ");
            sink.error(
                e.span(),
                "",
                format!("invalid TOML: {msg}"),
                "check quoting, brackets and `key = value` syntax near this position",
            );
            None
        }
    }
}

/// A table with the span of its header (or inline braces).
pub type SpannedTable<'d> = (&'d dyn TableLike, Option<Range<usize>>);

/// Tables found under a key: `[[x]]` array of tables, or `x = [{...}]`.
pub fn tables_of(item: &Item) -> Option<Vec<SpannedTable<'_>>> {
    if let Some(aot) = item.as_array_of_tables() {
        return Some(aot.iter().map(|t| (t as &dyn TableLike, t.span())).collect());
    }
    let arr = item.as_array()?;
    let mut out = Vec::new();
    for v in arr.iter() {
        let t = v.as_inline_table()?;
        out.push((t as &dyn TableLike, v.span()));
    }
    Some(out)
}

/// A single table: `[x]` or `x = {...}`.
pub fn table_of(item: &Item) -> Option<SpannedTable<'_>> {
    match item {
        Item::Table(t) => Some((t as &dyn TableLike, t.span())),
        Item::Value(Value::InlineTable(t)) => Some((t as &dyn TableLike, t.span())),
        _ => None,
    }
}

/// Human description of a TOML item's type, for "found ..." messages.
pub fn describe(item: &Item) -> String {
    match item {
        Item::None => "nothing".into(),
        Item::Value(v) => describe_value(v),
        Item::Table(_) => "a table".into(),
        Item::ArrayOfTables(_) => "an array of tables".into(),
    }
}

fn describe_value(v: &Value) -> String {
    match v {
        Value::String(s) => format!("the string {:?}", truncate(s.value(), 40)),
        Value::Integer(i) => format!("the integer {}", i.value()),
        Value::Float(f) => format!("the float {}", f.value()),
        Value::Boolean(b) => format!("the boolean {}", b.value()),
        Value::Datetime(_) => "a date-time".into(),
        Value::Array(_) => "an array".into(),
        Value::InlineTable(_) => "an inline table".into(),
    }
}

fn truncate(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        s.to_string()
    } else {
        let mut t: String = s.chars().take(max).collect();
        t.push('…');
        t
    }
}

/// Expands `${NAME}` and `${NAME:-default}` from the environment, so one
/// experiment file serves several environments (ports, hosts) unchanged.
pub fn interpolate(s: &str) -> Result<String, String> {
    if !s.contains("${") {
        return Ok(s.to_string());
    }
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let Some(end) = after.find('}') else {
            return Err(format!("unterminated ${{ in {s:?}"));
        };
        let expr = &after[..end];
        let (name, default) = match expr.split_once(":-") {
            Some((n, d)) => (n, Some(d)),
            None => (expr, None),
        };
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        {
            return Err(format!("invalid variable name {name:?} in {s:?}"));
        }
        match (std::env::var(name), default) {
            (Ok(v), _) if !v.is_empty() => out.push_str(&v),
            (_, Some(d)) => out.push_str(d),
            _ => {
                return Err(format!(
                    "environment variable {name} is not set (used in {s:?})"
                ))
            }
        }
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interpolates_variables_with_and_without_defaults() {
        std::env::set_var("CHAOS_TEST_INTERP_PORT", "9000");
        assert_eq!(
            interpolate("http://127.0.0.1:${CHAOS_TEST_INTERP_PORT}/x").as_deref(),
            Ok("http://127.0.0.1:9000/x")
        );
        assert_eq!(interpolate("${CHAOS_TEST_INTERP_UNSET:-7}").as_deref(), Ok("7"));
        assert!(interpolate("${CHAOS_TEST_INTERP_UNSET}")
            .unwrap_err()
            .contains("not set"));
        assert!(interpolate("${oops").unwrap_err().contains("unterminated"));
        assert!(interpolate("${a b}").unwrap_err().contains("invalid variable"));
        assert_eq!(interpolate("plain").as_deref(), Ok("plain"));
    }
}
