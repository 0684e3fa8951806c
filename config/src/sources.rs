//! Where configuration values come from: the TOML file (read and syntax-checked here, so a syntax error
//! has a line and column) and `SHEPHERD_*` environment overrides (turned into a TOML table here, from an
//! explicit list of variables so that tests never touch the process environment). [`Origins`] remembers
//! which variable set which key, so errors can name the variable instead of the file.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use toml::{Table, Value};

use crate::error::ConfigError;

/// Prefix of override variables.
pub const ENV_PREFIX: &str = "SHEPHERD_";

/// `SHEPHERD_*` variables that are not key paths and are never treated as overrides.
pub const NOT_KEY_VARS: &[&str] = &["SHEPHERD_CONFIG", "SHEPHERD_LOG"];

/// Secret variables that the documentation suggests; they are never overrides even when the section
/// naming them is commented out (so a deployment may export them before enabling the feature).
pub const CONVENTIONAL_SECRET_VARS: &[&str] = &[
    "SHEPHERD_IRC_SASL_PASSWORD",
    "SHEPHERD_GITLAB_WEBHOOK_SECRET",
    "SHEPHERD_ALERTMANAGER_TOKEN",
    "SHEPHERD_API_TOKEN",
];

/// Reads and parses the configuration file.
pub(crate) fn read_file(path: &Path) -> Result<Table, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| {
        if source.kind() == std::io::ErrorKind::NotFound {
            ConfigError::NotFound {
                path: path.to_owned(),
            }
        } else {
            ConfigError::Read {
                path: path.to_owned(),
                source,
            }
        }
    })?;
    text.parse::<Table>().map_err(|err| {
        let (line, column) = err
            .span()
            .map(|span| line_column(&text, span.start))
            .unwrap_or((1, 1));
        ConfigError::Syntax {
            path: path.to_owned(),
            line,
            column,
            message: err.message().trim().to_owned(),
        }
    })
}

/// 1-based line and column (in characters) of a byte offset.
fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map(|i| i + 1).unwrap_or(0);
    (line, before[line_start..].chars().count() + 1)
}

/// The overrides from the environment, as a table shaped like the file.
pub(crate) struct EnvOverrides {
    pub(crate) table: Table,
    /// Key path -> the variable that set it.
    pub(crate) keys: Vec<(Vec<String>, String)>,
}

/// Builds the override table from every `SHEPHERD_*` variable that is not ignored: see
/// [`NOT_KEY_VARS`], [`CONVENTIONAL_SECRET_VARS`], and any variable named by a `*_env` key in the file
/// or in another override.
pub(crate) fn env_overrides(
    vars: &BTreeMap<String, String>,
    file: &Table,
) -> Result<EnvOverrides, ConfigError> {
    let mut ignored: BTreeSet<String> = NOT_KEY_VARS
        .iter()
        .chain(CONVENTIONAL_SECRET_VARS)
        .map(|s| (*s).to_owned())
        .collect();
    collect_secret_env_names(file, &mut ignored);

    let mut candidates = Vec::new();
    for (name, raw) in vars {
        let Some(rest) = name.strip_prefix(ENV_PREFIX) else {
            continue;
        };
        let segments: Vec<&str> = rest.split("__").collect();
        if segments.iter().any(|s| s.is_empty()) {
            return Err(ConfigError::Environment {
                var: name.clone(),
                message: "not a configuration key: a key path is SHEPHERD_ + keys in upper case \
                          joined by `__` (SHEPHERD_GITLAB__URL)"
                    .to_owned(),
            });
        }
        if segments.last().is_some_and(|s| s.ends_with("_ENV")) {
            ignored.insert(raw.clone());
        }
        candidates.push((name, segments, raw));
    }

    let mut overrides = EnvOverrides {
        table: Table::new(),
        keys: Vec::new(),
    };
    for (name, segments, raw) in candidates {
        if ignored.contains(name) {
            continue;
        }
        let path = key_path(&segments);
        insert(
            &mut overrides.table,
            &path,
            parse_value(raw),
            name,
            &overrides.keys,
        )?;
        overrides.keys.push((path, name.clone()));
    }
    Ok(overrides)
}

/// Key path of a variable: lower case, except names under `retrigger.marker_variables`, which are
/// GitLab variable names and keep their case.
fn key_path(segments: &[&str]) -> Vec<String> {
    let mut path: Vec<String> = Vec::with_capacity(segments.len());
    for segment in segments {
        let keep_case = path.len() >= 2 && path[0] == "retrigger" && path[1] == "marker_variables";
        path.push(if keep_case {
            (*segment).to_owned()
        } else {
            segment.to_lowercase()
        });
    }
    path
}

/// A TOML value when the text is one (bool, integer, float, array, inline table, quoted string),
/// else the text itself as a string.
fn parse_value(raw: &str) -> Value {
    let as_string = || Value::String(raw.to_owned());
    let Ok(mut table) = format!("v = {raw}").parse::<Table>() else {
        return as_string();
    };
    if table.len() != 1 {
        return as_string();
    }
    match table.remove("v") {
        // `inf` and `nan` are TOML floats, but as a setting they are more likely words.
        Some(Value::Float(_)) if !raw.chars().any(|c| c.is_ascii_digit()) => as_string(),
        Some(
            value @ (Value::Boolean(_)
            | Value::Integer(_)
            | Value::Float(_)
            | Value::String(_)
            | Value::Array(_)
            | Value::Table(_)),
        ) => value,
        _ => as_string(),
    }
}

fn insert(
    table: &mut Table,
    path: &[String],
    value: Value,
    var: &str,
    earlier: &[(Vec<String>, String)],
) -> Result<(), ConfigError> {
    let conflict = || {
        let other = earlier
            .iter()
            .find(|(p, _)| p.starts_with(path) || path.starts_with(p))
            .map(|(_, v)| v.as_str())
            .unwrap_or("another variable");
        ConfigError::Environment {
            var: var.to_owned(),
            message: format!("conflicts with {other}, which sets the same key or a key inside it"),
        }
    };
    let Some((last, parents)) = path.split_last() else {
        return Err(conflict());
    };
    let mut current = table;
    for parent in parents {
        let entry = current
            .entry(parent.clone())
            .or_insert_with(|| Value::Table(Table::new()));
        current = match entry {
            Value::Table(t) => t,
            _ => return Err(conflict()),
        };
    }
    if current.contains_key(last) {
        return Err(conflict());
    }
    current.insert(last.clone(), value);
    Ok(())
}

fn collect_secret_env_names(table: &Table, names: &mut BTreeSet<String>) {
    for (key, value) in table {
        match value {
            Value::String(s) if key.ends_with("_env") => {
                names.insert(s.clone());
            }
            Value::Table(t) => collect_secret_env_names(t, names),
            Value::Array(items) => {
                for item in items {
                    if let Value::Table(t) = item {
                        collect_secret_env_names(t, names);
                    }
                }
            }
            _ => {}
        }
    }
}

/// Which source set a key: the file, or an environment variable.
pub(crate) struct Origins {
    pub(crate) file: String,
    pub(crate) env: Vec<(Vec<String>, String)>,
}

impl Origins {
    /// The variable that set `key`, a key inside it, or a table containing it.
    pub(crate) fn env_var(&self, key: &[String]) -> Option<&str> {
        let key: Vec<&str> = key.iter().map(|k| strip_index(k)).collect();
        self.env
            .iter()
            .find(|(path, _)| {
                let path: Vec<&str> = path.iter().map(String::as_str).collect();
                path.starts_with(&key) || key.starts_with(&path)
            })
            .map(|(_, var)| var.as_str())
    }

    /// `environment SHEPHERD_X` or the file path, for the start of an error message.
    pub(crate) fn of(&self, key: &[String]) -> String {
        match self.env_var(key) {
            Some(var) => format!("environment {var}"),
            None => self.file.clone(),
        }
    }
}

/// `people[2]` -> `people`.
fn strip_index(segment: &str) -> &str {
    segment.split('[').next().unwrap_or(segment)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_parse_like_toml_scalars() {
        assert_eq!(parse_value("true"), Value::Boolean(true));
        assert_eq!(parse_value("3"), Value::Integer(3));
        assert_eq!(parse_value("1.5"), Value::Float(1.5));
        assert_eq!(parse_value("\"7\""), Value::String("7".into()));
        assert_eq!(
            parse_value("127.0.0.1:8080"),
            Value::String("127.0.0.1:8080".into())
        );
        assert_eq!(
            parse_value("https://x.example"),
            Value::String("https://x.example".into())
        );
        assert_eq!(parse_value("inf"), Value::String("inf".into()));
        assert_eq!(
            parse_value("1\nw = 2"),
            Value::String("1\nw = 2".into()),
            "a value never adds keys"
        );
        assert_eq!(
            parse_value("[\"a\", \"b\"]"),
            Value::Array(vec!["a".into(), "b".into()])
        );
    }

    #[test]
    fn line_column_counts_from_one() {
        assert_eq!(line_column("ab\ncd", 0), (1, 1));
        assert_eq!(line_column("ab\ncd", 4), (2, 2));
    }
}
