//! Layered, typed configuration.
//!
//! Sources, later ones winning: a TOML file, then environment variables, then
//! `VAR_FILE` secret files (how Docker Swarm secrets under `/run/secrets`
//! arrive). Each binary names its variables with [`EnvBinding`]s that map a
//! variable to a dotted key of the TOML document, so the file and the
//! environment share one schema.
//!
//! Contract of [`load`]: keys that the target type does not know are errors;
//! every problem found (unreadable file, unknown keys, wrong types, failed
//! [`Validate`] rules) is returned together in one [`ConfigError`], so an
//! operator fixes a file in one pass. Nothing is read from the real process
//! environment unless the caller builds [`Sources::from_process`]; tests
//! inject a map instead.

use serde::Deserialize;
use serde::de::DeserializeOwned;
use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

/// Maps one environment variable to a dotted key of the configuration
/// (`APP_LISTEN` → `server.listen`). The value is taken as a string; the
/// target field's own deserializer parses it (addresses, durations, sizes).
/// `VAR_FILE` is accepted too and names a file holding the value.
#[derive(Debug, Clone, Copy)]
pub struct EnvBinding {
    /// The environment variable, e.g. `MONGODB_URI`.
    pub var: &'static str,
    /// The dotted key it sets, e.g. `mongodb.uri`.
    pub key: &'static str,
}

/// Where configuration comes from: an optional TOML file and an environment.
#[derive(Debug, Clone, Default)]
pub struct Sources {
    /// The TOML file, if any.
    pub file: Option<PathBuf>,
    /// Environment variables (the process's, or a test's map).
    pub env: BTreeMap<String, String>,
}

impl Sources {
    /// The real process environment; the TOML file is the path in `file_var`
    /// (for example `APP_CONFIG`) when that variable is set.
    pub fn from_process(file_var: &str) -> Self {
        let env: BTreeMap<String, String> = std::env::vars().collect();
        let file = env.get(file_var).map(PathBuf::from);
        Self { file, env }
    }

    /// A test environment: no file, the given variables.
    pub fn from_pairs<'a>(pairs: impl IntoIterator<Item = (&'a str, &'a str)>) -> Self {
        let env = pairs.into_iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        Self { file: None, env }
    }

    /// The same sources with a TOML file.
    pub fn with_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.file = Some(path.into());
        self
    }
}

/// One thing wrong with a configuration: the key (dotted path, or the
/// variable/file it came from), where it is in the file, and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// Dotted key, environment variable or file the problem is about.
    pub key: String,
    /// Why it is wrong, in words an operator can act on.
    pub message: String,
    /// The line of the file where the key (or its nearest table) is, when
    /// the problem is about a key written in the file.
    pub line: Option<usize>,
}

impl Problem {
    /// Builds a problem.
    pub fn new(key: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            key: key.into(),
            message: message.into(),
            line: None,
        }
    }
}

/// Every problem found while loading a configuration.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ConfigError {
    /// The file, or `environment` when there was none.
    pub origin: String,
    /// All problems, in the order they were found.
    pub problems: Vec<Problem>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.problems.len();
        let plural = if n == 1 { "" } else { "s" };
        write!(f, "invalid configuration ({}): {n} problem{plural}", self.origin)?;
        for p in &self.problems {
            match p.line {
                Some(line) => write!(f, "\n  - {}:{line}: {}: {}", self.origin, p.key, p.message)?,
                None => write!(f, "\n  - {}: {}", p.key, p.message)?,
            }
        }
        Ok(())
    }
}

/// Rules a configuration checks once it has parsed: cross-field constraints,
/// ranges, files that must exist. Return every failure, not just the first.
pub trait Validate {
    /// All problems with this configuration; empty when it is valid.
    fn validate(&self) -> Vec<Problem>;
}

/// Loads `T` from `sources` (see the module documentation for the contract).
pub fn load<T: DeserializeOwned + Validate>(sources: &Sources, bindings: &[EnvBinding]) -> Result<T, ConfigError> {
    let origin = sources
        .file
        .as_deref()
        .map_or_else(|| "environment".to_string(), |p| p.display().to_string());
    let mut problems = Vec::new();
    let mut table = match &sources.file {
        Some(path) => read_toml(path, &mut problems),
        None => toml::Table::new(),
    };
    apply_env(&mut table, &sources.env, bindings, &mut problems);

    let parsed = deserialize::<T>(table, &mut problems);
    if let Some(config) = &parsed {
        problems.extend(config.validate());
    }
    if let Some(text) = sources.file.as_deref().and_then(|p| std::fs::read_to_string(p).ok()) {
        locate(&text, &mut problems);
    }
    match parsed {
        Some(config) if problems.is_empty() => Ok(config),
        _ => Err(ConfigError { origin, problems }),
    }
}

fn read_toml(path: &Path, problems: &mut Vec<Problem>) -> toml::Table {
    let key = path.display().to_string();
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) => {
            problems.push(Problem::new(key, format!("cannot read the file: {e}")));
            return toml::Table::new();
        }
    };
    text.parse::<toml::Table>().unwrap_or_else(|e| {
        problems.push(Problem::new(key, format!("not valid TOML: {e}")));
        toml::Table::new()
    })
}

/// Overlays environment values, then `_FILE` values, onto `table`.
/// `deserialize_with` for a numeric key an environment variable may set:
/// variables are text, so this takes a number or a string holding one
/// (`APP_WORKER_CONCURRENCY=4` and `concurrency = 4` mean the same).
pub fn number<'de, D, T>(deserializer: D) -> Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
    T: serde::Deserialize<'de> + std::str::FromStr,
{
    #[derive(serde::Deserialize)]
    #[serde(untagged)]
    enum NumberOrText<T> {
        Number(T),
        Text(String),
    }
    match NumberOrText::<T>::deserialize(deserializer) {
        Ok(NumberOrText::Number(n)) => Ok(n),
        Ok(NumberOrText::Text(text)) => text
            .trim()
            .parse()
            .map_err(|_| serde::de::Error::custom(format!("expected a whole number in range, got {text:?}"))),
        Err(_) => Err(serde::de::Error::custom("expected a whole number in range")),
    }
}

fn apply_env(
    table: &mut toml::Table,
    env: &BTreeMap<String, String>,
    bindings: &[EnvBinding],
    problems: &mut Vec<Problem>,
) {
    for binding in bindings {
        let file_var = format!("{}_FILE", binding.var);
        let value = match (env.get(binding.var), env.get(&file_var)) {
            (Some(_), Some(_)) => {
                problems.push(Problem::new(
                    binding.var,
                    format!("set either {} or {file_var}, not both", binding.var),
                ));
                continue;
            }
            (Some(v), None) => v.clone(),
            (None, Some(path)) => match read_secret_file(Path::new(path)) {
                Ok(v) => v,
                Err(e) => {
                    problems.push(Problem::new(file_var, format!("cannot read {path}: {e}")));
                    continue;
                }
            },
            (None, None) => continue,
        };
        if let Err(message) = set_dotted(table, binding.key, toml::Value::String(value)) {
            problems.push(Problem::new(binding.var, message));
        }
    }
}

/// Fills in the file line of every problem whose key is written in `text`
/// (or, failing that, of the nearest enclosing table or array it names).
fn locate(text: &str, problems: &mut [Problem]) {
    let Ok(doc) = toml_edit::Document::parse(text) else {
        return;
    };
    for problem in problems.iter_mut() {
        let mut item = doc.as_item();
        let mut span = None;
        for segment in path_segments(&problem.key) {
            let next = match segment {
                Segment::Key(k) => item.get(k),
                Segment::Index(i) => item.get(i),
            };
            let Some(next) = next else { break };
            span = next.span().or(span);
            item = next;
        }
        problem.line = span.map(|s| text[..s.start].matches('\n').count() + 1);
    }
}

enum Segment<'a> {
    Key(&'a str),
    Index(usize),
}

/// `routes[0].upstream` → `routes`, `0`, `upstream`.
fn path_segments(key: &str) -> Vec<Segment<'_>> {
    let mut out = Vec::new();
    for part in key.split('.') {
        let (name, mut rest) = part.split_once('[').map_or((part, ""), |(n, r)| (n, r));
        if !name.is_empty() {
            out.push(Segment::Key(name));
        }
        while let Some((index, after)) = rest.split_once(']') {
            if let Ok(i) = index.parse() {
                out.push(Segment::Index(i));
            }
            rest = after.strip_prefix('[').unwrap_or(after);
        }
    }
    out
}

/// Reads a secret file: its contents with one trailing newline (`\n` or
/// `\r\n`) removed, as `echo secret > file` and Docker secrets leave one.
pub fn read_secret_file(path: &Path) -> std::io::Result<String> {
    let mut text = std::fs::read_to_string(path)?;
    if text.ends_with('\n') {
        text.pop();
        if text.ends_with('\r') {
            text.pop();
        }
    }
    Ok(text)
}

fn set_dotted(table: &mut toml::Table, key: &str, value: toml::Value) -> Result<(), String> {
    let mut parts = key.split('.').peekable();
    let mut current = table;
    while let Some(part) = parts.next() {
        if parts.peek().is_none() {
            current.insert(part.to_string(), value);
            return Ok(());
        }
        let entry = current
            .entry(part.to_string())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        current = entry
            .as_table_mut()
            .ok_or_else(|| format!("`{part}` in the file is not a table, cannot set `{key}`"))?;
    }
    Ok(())
}

/// Deserializes `table` as far as possible, collecting unknown keys and type errors. On a type
/// error the offending key is removed and deserialization retried, so one
/// bad value does not hide the next (or the [`Validate`] rules); the bound
/// on retries is the number of keys, which each retry shrinks.
fn deserialize<T: DeserializeOwned>(mut table: toml::Table, problems: &mut Vec<Problem>) -> Option<T> {
    let mut unknown: Vec<String> = Vec::new();
    let mut type_errors = Vec::new();
    let parsed = loop {
        let mut track = serde_path_to_error::Track::new();
        let value = toml::Value::Table(table.clone());
        let tracked = serde_path_to_error::Deserializer::new(value, &mut track);
        let result = serde_ignored::deserialize(tracked, |path| {
            let key = path.to_string();
            if !unknown.contains(&key) {
                unknown.push(key);
            }
        });
        match result {
            Ok(config) => break Some(config),
            Err(e) => {
                let path = track.path();
                let key = path.to_string();
                // The TOML deserializer appends "in `key`"; the key is reported already.
                let message = e.to_string();
                let message = message
                    .split("\nin `")
                    .next()
                    .unwrap_or_default()
                    .trim_end()
                    .to_string();
                type_errors.push(Problem::new(
                    if key == "." { "(top level)".into() } else { key },
                    message,
                ));
                if !remove_path(&mut table, &path) {
                    break None;
                }
            }
        }
    };
    problems.extend(unknown.into_iter().map(|key| Problem::new(key, "unknown key")));
    problems.extend(type_errors);
    // A config parsed only after dropping bad values comes back too, so its
    // other problems are validated; the type errors above keep it from being
    // accepted.
    parsed
}

/// Removes the value at `path` from `table`; false if there is none.
fn remove_path(table: &mut toml::Table, path: &serde_path_to_error::Path) -> bool {
    use serde_path_to_error::Segment;
    let segments: Vec<&Segment> = path.iter().collect();
    let Some((last, parents)) = segments.split_last() else {
        return false;
    };
    let mut current = Some(table);
    let mut value: Option<&mut toml::Value> = None;
    for seg in parents {
        let next = match (value.take(), current.take(), seg) {
            (None, Some(t), Segment::Map { key }) => t.get_mut(key),
            (Some(toml::Value::Table(t)), _, Segment::Map { key }) => t.get_mut(key),
            (Some(toml::Value::Array(a)), _, Segment::Seq { index }) => a.get_mut(*index),
            _ => None,
        };
        let Some(next) = next else { return false };
        value = Some(next);
    }
    match (value, current, last) {
        (None, Some(t), Segment::Map { key }) => t.remove(key).is_some(),
        (Some(toml::Value::Table(t)), _, Segment::Map { key }) => t.remove(key).is_some(),
        (Some(toml::Value::Array(a)), _, Segment::Seq { index }) if *index < a.len() => {
            a.remove(*index);
            true
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;
    use std::time::Duration;

    #[derive(Debug, Deserialize)]
    #[serde(default)]
    struct Demo {
        port: u16,
        name: String,
        token: Option<crate::Secret<String>>,
        inner: Inner,
    }

    #[derive(Debug, Deserialize)]
    #[serde(default)]
    struct Inner {
        #[serde(with = "humantime_serde")]
        timeout: Duration,
    }

    impl Default for Demo {
        fn default() -> Self {
            Self {
                port: 80,
                name: "demo".into(),
                token: None,
                inner: Inner::default(),
            }
        }
    }

    impl Default for Inner {
        fn default() -> Self {
            Self {
                timeout: Duration::from_secs(1),
            }
        }
    }

    impl Validate for Demo {
        fn validate(&self) -> Vec<Problem> {
            let mut p = Vec::new();
            if self.port == 0 {
                p.push(Problem::new("port", "must not be 0"));
            }
            if self.name.is_empty() {
                p.push(Problem::new("name", "must not be empty"));
            }
            p
        }
    }

    const BINDINGS: &[EnvBinding] = &[
        EnvBinding {
            var: "DEMO_NAME",
            key: "name",
        },
        EnvBinding {
            var: "DEMO_TOKEN",
            key: "token",
        },
        EnvBinding {
            var: "DEMO_TIMEOUT",
            key: "inner.timeout",
        },
    ];

    fn file_with(text: &str) -> tempfile::NamedTempFile {
        let f = tempfile::NamedTempFile::new().expect("temp file");
        std::fs::write(f.path(), text).expect("write");
        f
    }

    #[test]
    fn defaults_apply_when_nothing_is_set() {
        let c: Demo = load(&Sources::default(), BINDINGS).expect("valid");
        assert_eq!(c.port, 80);
        assert_eq!(c.inner.timeout, Duration::from_secs(1));
    }

    #[test]
    fn environment_overrides_the_file() {
        let f = file_with("name = \"from-file\"\nport = 81\n[inner]\ntimeout = \"5s\"\n");
        let sources = Sources::from_pairs([("DEMO_NAME", "from-env"), ("DEMO_TIMEOUT", "250ms")]).with_file(f.path());
        let c: Demo = load(&sources, BINDINGS).expect("valid");
        assert_eq!(c.name, "from-env");
        assert_eq!(c.port, 81);
        assert_eq!(c.inner.timeout, Duration::from_millis(250));
    }

    #[test]
    fn a_file_variable_reads_the_secret_and_trims_one_newline() {
        let dir = tempfile::tempdir().expect("dir");
        let secret = dir.path().join("token");
        std::fs::write(&secret, "s3cret\n").expect("write");
        let path = secret.to_str().expect("utf-8");
        let c: Demo = load(&Sources::from_pairs([("DEMO_TOKEN_FILE", path)]), BINDINGS).expect("valid");
        assert_eq!(c.token.expect("set").expose(), "s3cret");
    }

    #[test]
    fn a_missing_secret_file_is_a_problem_naming_the_variable() {
        let err = load::<Demo>(
            &Sources::from_pairs([("DEMO_TOKEN_FILE", "/nonexistent/secret")]),
            BINDINGS,
        )
        .expect_err("must fail");
        assert_eq!(err.problems.len(), 1);
        assert_eq!(err.problems[0].key, "DEMO_TOKEN_FILE");
        assert!(err.problems[0].message.contains("/nonexistent/secret"));
    }

    #[test]
    fn both_a_variable_and_its_file_variant_is_a_problem() {
        let err = load::<Demo>(
            &Sources::from_pairs([("DEMO_TOKEN", "a"), ("DEMO_TOKEN_FILE", "/x")]),
            BINDINGS,
        )
        .expect_err("must fail");
        assert!(err.problems[0].message.contains("not both"));
    }

    #[test]
    fn every_problem_is_reported_at_once() {
        let f = file_with("port = 0\nname = \"\"\nbogus = 1\n[inner]\ntimeout = \"1s\"\nextra = 2\n");
        let err = load::<Demo>(&Sources::default().with_file(f.path()), BINDINGS).expect_err("must fail");
        let keys: Vec<&str> = err.problems.iter().map(|p| p.key.as_str()).collect();
        assert_eq!(keys, ["bogus", "inner.extra", "port", "name"], "{err}");
        assert!(err.to_string().contains("4 problems"));
    }

    #[test]
    fn a_wrong_type_names_its_key() {
        let f = file_with("[inner]\ntimeout = \"soon\"\n");
        let err = load::<Demo>(&Sources::default().with_file(f.path()), BINDINGS).expect_err("must fail");
        assert_eq!(err.problems[0].key, "inner.timeout", "{err}");
    }

    #[test]
    fn type_errors_do_not_hide_each_other_or_the_validation_rules() {
        let f = file_with("port = \"eighty\"\nname = \"\"\n[inner]\ntimeout = 5\n");
        let err = load::<Demo>(&Sources::default().with_file(f.path()), BINDINGS).expect_err("must fail");
        let keys: Vec<&str> = err.problems.iter().map(|p| p.key.as_str()).collect();
        assert_eq!(keys, ["inner.timeout", "port", "name"], "{err}");
        assert!(!err.to_string().contains("\nin `"), "{err}");
    }

    #[test]
    fn problems_point_at_their_line_in_the_file() {
        let f = file_with("name = \"ok\"\n\n[inner]\ntimeout = \"never\"\nextra = 1\n");
        let err = load::<Demo>(&Sources::default().with_file(f.path()), BINDINGS).expect_err("must fail");
        let lines: Vec<(&str, Option<usize>)> = err.problems.iter().map(|p| (p.key.as_str(), p.line)).collect();
        assert_eq!(lines, [("inner.extra", Some(5)), ("inner.timeout", Some(4))], "{err}");
        let shown = err.to_string();
        assert!(
            shown.contains(&format!("{}:4: inner.timeout", f.path().display())),
            "{shown}"
        );
    }

    #[test]
    fn invalid_toml_is_reported_with_its_file() {
        let f = file_with("port = \n");
        let err = load::<Demo>(&Sources::default().with_file(f.path()), BINDINGS).expect_err("must fail");
        assert!(err.problems[0].message.contains("not valid TOML"), "{err}");
        assert_eq!(err.origin, f.path().display().to_string());
    }

    #[test]
    fn a_missing_file_is_a_problem() {
        let err = load::<Demo>(&Sources::default().with_file("/nonexistent.toml"), BINDINGS).expect_err("must fail");
        assert!(err.problems[0].message.contains("cannot read"));
    }
}
