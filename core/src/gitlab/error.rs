//! What can go wrong talking to GitLab, split by what the caller should do about it.
//!
//! Three families: errors retrying cannot fix (`NotFound`, `Unauthorized`, `BadRequest`, ... —
//! the user gets [`GitLabError::user_message`]), errors a later attempt may fix (`Unavailable`,
//! `Ambiguous` — a queue item goes back with a delay, see [`GitLabError::is_retryable`]), and
//! local faults (`Decode`, `Config`). `Ambiguous` is special: a write that may or may not have
//! taken effect, so the caller must look for its own request id before writing again.
//!
//! No variant ever carries the token: messages come from GitLab's response bodies and from
//! transport errors, and neither contains request headers.

use serde_json::Value;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GitLabError {
    /// 404: the thing does not exist, or the token cannot see it (GitLab does not tell which).
    #[error("GitLab: {what} not found (404)")]
    NotFound { what: String },
    /// 401: no token, a wrong one, or an expired one.
    #[error("GitLab refused the token (401 Unauthorized)")]
    Unauthorized,
    /// 403: the token is valid but lacks the role or scope for this action.
    #[error("GitLab forbade the request (403): {message}")]
    Forbidden { message: String },
    /// 400: GitLab rejected the parameters (unknown ref, invalid variable, ...).
    #[error("GitLab rejected the request (400): {message}")]
    BadRequest { message: String },
    /// 409.
    #[error("GitLab reported a conflict (409): {message}")]
    Conflict { message: String },
    /// 422.
    #[error("GitLab could not process the request (422): {message}")]
    Unprocessable { message: String },
    /// Any other 4xx that retrying cannot fix.
    #[error("GitLab answered {status}: {message}")]
    Client { status: u16, message: String },
    /// A write that may have taken effect: the request was sent, but no clear answer came back
    /// (timeout, reset, 5xx, unreadable success body). Look for the effect before repeating it.
    #[error("GitLab did not confirm {endpoint}; it may have taken effect: {detail}")]
    Ambiguous {
        endpoint: &'static str,
        detail: String,
    },
    /// Retries exhausted on errors that may go away (connection, timeout, 5xx, 429).
    #[error("GitLab unavailable: {endpoint} failed {attempts} times, last: {last}")]
    Unavailable {
        endpoint: &'static str,
        attempts: u32,
        last: String,
    },
    /// A 2xx answer whose body is not what GitLab documents.
    #[error("GitLab's answer to {endpoint} could not be read: {detail}")]
    Decode {
        endpoint: &'static str,
        detail: String,
    },
    /// The client could not be built from its settings.
    #[error("GitLab client configuration: {0}")]
    Config(String),
}

impl GitLabError {
    /// True when the same call may succeed later, so a queue item should be retried with a
    /// delay rather than answered with an error. (`Ambiguous` is retryable too, provided the
    /// caller first checks whether the write already happened.)
    pub fn is_retryable(&self) -> bool {
        matches!(self, Self::Unavailable { .. } | Self::Ambiguous { .. })
    }

    /// One sentence a chat user can act on. Never contains the token.
    pub fn user_message(&self) -> String {
        match self {
            Self::NotFound { what } => format!(
                "GitLab says {what} was not found (or shepherd's token cannot see it)."
            ),
            Self::Unauthorized => {
                "GitLab refused the token (401): check gitlab.token_env and that the token has not expired."
                    .to_string()
            }
            Self::Forbidden { message } => format!(
                "GitLab forbade this (403: {message}): shepherd's token lacks the role or scope for it."
            ),
            Self::BadRequest { message } => format!("GitLab rejected the request: {message}."),
            Self::Conflict { message } => format!("GitLab reported a conflict: {message}."),
            Self::Unprocessable { message } => {
                format!("GitLab could not process the request: {message}.")
            }
            Self::Client { status, message } => format!("GitLab answered {status}: {message}."),
            Self::Ambiguous { endpoint, detail } => format!(
                "GitLab did not confirm {endpoint} ({detail}); shepherd will check whether it took effect before trying again."
            ),
            Self::Unavailable {
                endpoint,
                attempts,
                last,
            } => format!(
                "GitLab is unavailable ({endpoint} failed {attempts} times, last: {last})."
            ),
            Self::Decode { endpoint, detail } => format!(
                "GitLab sent an answer to {endpoint} that shepherd could not read ({detail}); this is a shepherd bug or a GitLab version mismatch."
            ),
            Self::Config(detail) => format!("shepherd's GitLab client is misconfigured: {detail}."),
        }
    }
}

/// Longest message taken from a response body, in characters.
const MAX_MESSAGE_CHARS: usize = 300;

/// Renders GitLab's error body readably.
///
/// GitLab answers errors as `{"message": "..."}`, `{"message": {"field": ["error", ...]}}`
/// (validation errors; `base` holds the ones about no particular field), or
/// `{"error": "...", "error_description": "..."}` (Grape and OAuth errors). Anything else is
/// shown as trimmed text; an empty body becomes the status's reason phrase.
pub(crate) fn render_error_body(body: &[u8], fallback: &str) -> String {
    let text = String::from_utf8_lossy(body);
    let rendered = match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(map)) => {
            if let Some(message) = map.get("message") {
                render_value(message)
            } else if let Some(error) = map.get("error") {
                let mut s = render_value(error);
                if let Some(Value::String(d)) = map.get("error_description") {
                    s = format!("{s}: {d}");
                }
                s
            } else {
                plain_text(&text)
            }
        }
        Ok(other) => render_value(&other),
        Err(_) => plain_text(&text),
    };
    // One line, always: replies are chat lines.
    let rendered = rendered.split_whitespace().collect::<Vec<_>>().join(" ");
    if rendered.is_empty() {
        fallback.to_string()
    } else {
        truncate(&rendered, MAX_MESSAGE_CHARS)
    }
}

/// A non-JSON body: a proxy's HTML error page is reduced to its title, anything else kept.
fn plain_text(text: &str) -> String {
    let trimmed = text.trim();
    if !trimmed.starts_with('<') {
        return trimmed.to_string();
    }
    let lower = trimmed.to_ascii_lowercase();
    match (lower.find("<title>"), lower.find("</title>")) {
        (Some(start), Some(end)) if start + 7 <= end => {
            format!("an HTML error page: {}", trimmed[start + 7..end].trim())
        }
        _ => "an HTML error page".to_string(),
    }
}

fn render_value(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        Value::Array(items) => items
            .iter()
            .map(render_value)
            .collect::<Vec<_>>()
            .join(", "),
        Value::Object(map) => map
            .iter()
            .map(|(field, errors)| {
                let errors = render_value(errors);
                if field == "base" {
                    errors
                } else {
                    format!("{field} {errors}")
                }
            })
            .collect::<Vec<_>>()
            .join("; "),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

pub(crate) fn truncate(s: &str, max_chars: usize) -> String {
    match s.char_indices().nth(max_chars) {
        Some((cut, _)) => format!("{}…", &s[..cut]),
        None => s.to_string(),
    }
}

#[cfg(test)]
mod body_tests {
    use super::render_error_body;

    #[test]
    fn html_error_pages_become_one_line_with_their_title() {
        let page = b"<!DOCTYPE html>\n<html>\n<head>\n<title>Something went wrong (503)</title>\n</head>\n<body><h1>503</h1></body></html>";
        assert_eq!(
            render_error_body(page, "Service Unavailable"),
            "an HTML error page: Something went wrong (503)"
        );
        assert_eq!(
            render_error_body(b"<html>no title", "x"),
            "an HTML error page"
        );
        assert_eq!(render_error_body(b"Retry\n  later\n", "x"), "Retry later");
        assert_eq!(
            render_error_body(br#"{"message":"line one\nline two"}"#, "x"),
            "line one line two"
        );
    }
}
