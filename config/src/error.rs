//! `ConfigError`: every way loading can fail, each message naming where the bad value came from (the
//! file or the `SHEPHERD_*` variable), the key's full dotted path, and what was expected. Figment's
//! deserialization errors are translated here so that callers never see figment types.

use std::io;
use std::path::PathBuf;

use figment::error::Kind;

use crate::secret::redact_url;
use crate::sources::Origins;

/// Why a configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The configuration file does not exist.
    #[error("{}: configuration file not found (pass --config PATH or set SHEPHERD_CONFIG)", path.display())]
    NotFound { path: PathBuf },
    /// The configuration file exists but cannot be read.
    #[error("{}: cannot read configuration file: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// The file is not valid TOML. `line` and `column` count from 1.
    #[error("{}:{line}:{column}: TOML syntax error: {message}", path.display())]
    Syntax {
        path: PathBuf,
        line: usize,
        column: usize,
        message: String,
    },
    /// A key that no section has. `origin` is the file path or `environment SHEPHERD_...`.
    #[error(
        "{origin}: unknown key `{key}` (expected one of: {}){}",
        .expected.join(", "),
        .hint.as_deref().map(|h| format!("; {h}")).unwrap_or_default()
    )]
    UnknownKey {
        origin: String,
        key: String,
        expected: Vec<String>,
        hint: Option<String>,
    },
    /// A key with a value of the wrong type or a value that is not allowed.
    #[error("{origin}: {key}: {message}")]
    Invalid {
        origin: String,
        key: String,
        message: String,
    },
    /// A `SHEPHERD_*` variable that cannot be a key path at all.
    #[error("environment {var}: {message}")]
    Environment { var: String, message: String },
    /// A `*_file` secret source that cannot be read.
    #[error("{origin}: {key}: cannot read secret file {}: {source}", file.display())]
    SecretFile {
        origin: String,
        key: String,
        file: PathBuf,
        #[source]
        source: io::Error,
    },
    /// Several problems found by validation, one per line.
    #[error("{}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n"))]
    Multiple(Vec<ConfigError>),
}

/// Turns figment's first deserialization error into a `ConfigError`.
pub(crate) fn from_figment(
    err: figment::Error,
    origins: &Origins,
    figment: &figment::Figment,
) -> ConfigError {
    let path = err.path.clone();
    match err.kind {
        Kind::UnknownField(field, expected) => {
            // Figment's path already ends with the unknown key; serde's convention would not.
            let mut parent = path;
            if parent.last() == Some(&field) {
                parent.pop();
            }
            let mut key = parent.clone();
            key.push(field.clone());
            let origin = origins.of(&key);
            let hint = unknown_key_hint(&parent, &field, expected, origins.env_var(&key));
            ConfigError::UnknownKey {
                origin,
                key: dotted(&key),
                expected: expected.iter().map(|s| (*s).to_owned()).collect(),
                hint,
            }
        }
        Kind::MissingField(field) => {
            let origin = origins.of(&path);
            let mut key = path;
            key.push(field.into_owned());
            ConfigError::Invalid {
                origin,
                key: dotted(&key),
                message: "missing (this key is required in its section)".to_owned(),
            }
        }
        Kind::UnknownVariant(found, expected) => ConfigError::Invalid {
            origin: origins.of(&path),
            key: dotted(&path),
            message: format!(
                "unknown value {found:?} (expected one of: {})",
                expected.join(", ")
            ),
        },
        Kind::Message(message) => {
            // Errors from a type's own parser (SocketAddr, Url) do not quote the value: add it.
            let found = figment
                .find_value(&path.join("."))
                .ok()
                .and_then(|v| v.into_string())
                .filter(|found| !message.contains(&format!("{found:?}")))
                .map(|found| redact_url(&found));
            let message = redact_url(&message);
            let message = match (found, expectation(&path)) {
                (Some(found), Some(expected)) => {
                    format!("{found:?} is not valid: {message} (expected {expected})")
                }
                (Some(found), None) => format!("{found:?} is not valid: {message}"),
                (None, Some(expected)) => format!("{message} (expected {expected})"),
                (None, None) => message,
            };
            ConfigError::Invalid {
                origin: origins.of(&path),
                key: dotted(&path),
                message,
            }
        }
        kind => ConfigError::Invalid {
            origin: origins.of(&path),
            key: dotted(&path),
            // A value quoted in the message may be a URL with a password.
            message: redact_url(&kind.to_string()),
        },
    }
}

/// `a.b[0].c`, or `(top level)` for the root.
pub(crate) fn dotted(path: &[String]) -> String {
    let mut out = String::new();
    for segment in path {
        if !out.is_empty() && segment.parse::<usize>().is_ok() {
            out.push_str(&format!("[{segment}]"));
        } else {
            if !out.is_empty() {
                out.push('.');
            }
            out.push_str(segment);
        }
    }
    if out.is_empty() {
        "(top level)".to_owned()
    } else {
        out
    }
}

fn expectation(path: &[String]) -> Option<&'static str> {
    match path.last().map(String::as_str) {
        Some("listen") => Some("IP:PORT such as 127.0.0.1:8080"),
        Some("url" | "alertmanager_url") => Some("an http:// or https:// URL"),
        _ => None,
    }
}

fn unknown_key_hint(
    parent: &[String],
    field: &str,
    expected: &[&str],
    env_var: Option<&str>,
) -> Option<String> {
    let prefix = if parent.is_empty() {
        String::new()
    } else {
        format!("{}.", dotted(parent))
    };
    if expected.contains(&format!("{field}_env").as_str()) {
        return Some(format!(
            "secrets are never configuration values: set {prefix}{field}_env to the name of a \
             variable holding it, or {prefix}{field}_file to a file"
        ));
    }
    if env_var.is_some() {
        // `SHEPHERD_GITLAB_URL` instead of `SHEPHERD_GITLAB__URL`: a known key followed by `_`.
        for (at, _) in field.match_indices('_') {
            let (head, rest) = (&field[..at], &field[at + 1..]);
            if expected.contains(&head) && !rest.is_empty() {
                let mut segments: Vec<&str> = parent.iter().map(String::as_str).collect();
                segments.push(head);
                segments.push(rest);
                return Some(format!(
                    "did you mean SHEPHERD_{}? (levels are separated by `__`)",
                    segments.join("__").to_uppercase()
                ));
            }
        }
    }
    let best = expected
        .iter()
        .map(|candidate| (strsim::jaro_winkler(field, candidate), candidate))
        .filter(|(score, _)| *score > 0.8)
        .max_by(|a, b| a.0.total_cmp(&b.0))?;
    Some(format!("did you mean `{prefix}{}`?", best.1))
}
