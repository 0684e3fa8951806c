//! Secrets: values that come from an environment variable or a file named in the configuration, never
//! from the configuration itself. [`Secret`] never shows its value in `Debug`, `Display` or `Serialize`;
//! [`SecretSlot`] records how a secret key ended up (set, unset and why, not configured) so that
//! `shepherd config check` can say so without printing the value.

use std::fmt;

use serde::{Serialize, Serializer};

const REDACTED: &str = "<redacted>";

/// A secret value (token, password). Only [`Secret::expose`] gives the value.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a value.
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }

    /// The secret value itself. Call it where the value is sent, nowhere else.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(REDACTED)
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(REDACTED)
    }
}

impl Serialize for Secret {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(REDACTED)
    }
}

/// What loading made of a `*_env` / `*_file` pair.
#[derive(Clone, Default, PartialEq, Eq)]
pub(crate) enum SecretSlot {
    /// Neither key is set.
    #[default]
    NotConfigured,
    /// A source is named but gave nothing; the text says why (`env GITLAB_TOKEN is not set`).
    Unset(String),
    /// The secret was read.
    Set(Secret),
}

impl SecretSlot {
    pub(crate) fn get(&self) -> Option<&Secret> {
        match self {
            SecretSlot::Set(secret) => Some(secret),
            _ => None,
        }
    }

    pub(crate) fn is_not_configured(&self) -> bool {
        matches!(self, SecretSlot::NotConfigured)
    }

    fn describe(&self) -> String {
        match self {
            SecretSlot::NotConfigured => "<not configured>".to_owned(),
            SecretSlot::Unset(why) => format!("<unset: {why}>"),
            SecretSlot::Set(_) => REDACTED.to_owned(),
        }
    }
}

impl fmt::Debug for SecretSlot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.describe())
    }
}

impl Serialize for SecretSlot {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.describe())
    }
}

/// A connection URL that may carry a password (`postgres://user:pw@host/db`, `amqp://guest:pw@host`,
/// `smtp://user:pw@host`, or `?password=` in its query). Only [`SecretUrl::expose`] gives it whole;
/// `Debug`, `Display` and `Serialize` show it with every credential replaced by `<redacted>`, so the
/// URL can go into `config check`, logs and error messages as it is.
#[derive(Clone, PartialEq, Eq, serde::Deserialize)]
#[serde(transparent)]
pub struct SecretUrl(String);

impl SecretUrl {
    pub fn new(url: impl Into<String>) -> Self {
        SecretUrl(url.into())
    }

    /// The URL with its credentials. Call it where the connection is made, nowhere else.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// The URL with its credentials redacted (what `Display` writes).
    pub fn redacted(&self) -> String {
        redact_url(&self.0)
    }
}

impl fmt::Debug for SecretUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.redacted())
    }
}

impl fmt::Display for SecretUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted())
    }
}

impl Serialize for SecretUrl {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.redacted())
    }
}

/// Query parameters that carry a credential in the connection URLs of sqlx, lapin and lettre.
const SECRET_PARAMS: &[&str] = &[
    "password",
    "pass",
    "passwd",
    "pwd",
    "token",
    "secret",
    "sslpassword",
    "auth",
];

/// `text` with the password of its user info and the values of credential query parameters
/// replaced by `<redacted>`. Text that is not a URL is searched for a `scheme://user:password@`
/// part all the same, so a half-valid URL in an error message does not leak either.
pub fn redact_url(text: &str) -> String {
    // More than one `@` means a password with an unencoded `@` (and maybe `/` or `?`) in it,
    // which a parser splits in the wrong place: redact up to the last `@` instead.
    let several_at = text
        .split_whitespace()
        .next()
        .is_some_and(|t| t.matches('@').count() > 1);
    if !several_at
        && let Ok(mut url) = url::Url::parse(text)
        && url.has_authority()
    {
        let mut changed = false;
        if url.password().is_some() {
            changed |= url.set_password(Some(REDACTED)).is_ok();
        }
        if url.query().is_some() {
            let pairs: Vec<(String, String)> = url
                .query_pairs()
                .map(|(k, v)| {
                    let secret = SECRET_PARAMS.iter().any(|p| k.eq_ignore_ascii_case(p));
                    (
                        k.into_owned(),
                        if secret {
                            REDACTED.to_owned()
                        } else {
                            v.into_owned()
                        },
                    )
                })
                .collect();
            if pairs.iter().any(|(_, v)| v == REDACTED) {
                url.query_pairs_mut().clear().extend_pairs(pairs);
                changed = true;
            }
        }
        return if changed {
            url.to_string().replace("%3Credacted%3E", REDACTED)
        } else {
            text.to_owned()
        };
    }
    redact_userinfo(text)
}

/// Free text (an unparseable URL, an error message quoting one) with the password of every
/// `scheme://user:password@host` and the value of every credential parameter (`password=...`)
/// redacted. The user info runs to the last `@` before the next white space or quote, so a
/// password holding an unencoded `/`, `?`, `#` or `@` is covered too.
fn redact_userinfo(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find("://") {
        let (head, tail) = rest.split_at(i + 3);
        out.push_str(head);
        let token_end = tail
            .find(|c: char| c.is_whitespace() || matches!(c, '"' | '\'' | '`' | '<' | '>'))
            .unwrap_or(tail.len());
        let token = &tail[..token_end];
        match (token.rfind('@'), token.find(':')) {
            (Some(at), Some(colon)) if colon < at => {
                out.push_str(&token[..colon + 1]);
                out.push_str(REDACTED);
                out.push_str(&token[at..]);
            }
            _ => out.push_str(token),
        }
        rest = &tail[token_end..];
    }
    out.push_str(rest);
    redact_params(&out)
}

/// `name=value` of every credential parameter in free text, value redacted.
fn redact_params(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    'scan: while !rest.is_empty() {
        for (i, _) in rest.match_indices('=') {
            let name_start = rest[..i]
                .rfind(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .map_or(0, |p| p + 1);
            let name = &rest[name_start..i];
            if SECRET_PARAMS.iter().any(|p| name.eq_ignore_ascii_case(p)) {
                let value_end = rest[i + 1..]
                    .find(|c: char| c.is_whitespace() || matches!(c, '&' | '"' | '\'' | ';' | ','))
                    .map_or(rest.len(), |e| i + 1 + e);
                out.push_str(&rest[..=i]);
                out.push_str(REDACTED);
                rest = &rest[value_end..];
                continue 'scan;
            }
        }
        out.push_str(rest);
        break;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_never_prints_its_value() {
        let secret = Secret::new("hunter2");
        assert_eq!(format!("{secret}"), "<redacted>");
        assert_eq!(format!("{secret:?}"), "<redacted>");
        assert_eq!(
            serde_json::to_string(&secret).expect("serialize"),
            "\"<redacted>\""
        );
        assert_eq!(secret.expose(), "hunter2");
        let slot = SecretSlot::Set(secret);
        assert_eq!(format!("{slot:?}"), "<redacted>");
    }

    #[test]
    fn urls_never_print_their_credentials() {
        let cases = [
            (
                "postgres://shepherd:hunter2@db:5432/shepherd",
                "postgres://shepherd:<redacted>@db:5432/shepherd",
            ),
            (
                "amqp://guest:hunter2@127.0.0.1:5672/%2f",
                "amqp://guest:<redacted>@127.0.0.1:5672/%2f",
            ),
            (
                "smtps://mail:hunter2@smtp.example.org",
                "smtps://mail:<redacted>@smtp.example.org",
            ),
            (
                "postgres://db/shepherd?user=s&password=hunter2",
                "postgres://db/shepherd?user=s&password=<redacted>",
            ),
            (
                "postgres://u:hunter2@db/x?sslpassword=hunter2",
                "postgres://u:<redacted>@db/x?sslpassword=<redacted>",
            ),
            ("sqlite://shepherd.db", "sqlite://shepherd.db"),
            ("store", "store"),
            (
                "postgres://shepherd@db/shepherd",
                "postgres://shepherd@db/shepherd",
            ),
            // Not a valid URL (a space in the host), still redacted.
            (
                "postgres://u:hunter2@bad host/x",
                "postgres://u:<redacted>@bad host/x",
            ),
        ];
        for (url, shown) in cases {
            let u = SecretUrl::new(url);
            assert_eq!(u.to_string(), shown, "{url}");
            assert_eq!(format!("{u:?}"), format!("{shown:?}"), "{url}");
            assert_eq!(
                serde_json::to_string(&u).expect("json"),
                format!("{shown:?}")
            );
            assert_eq!(u.expose(), url);
        }
        assert_eq!(
            redact_url("error: cannot reach amqp://guest:hunter2@mq/ (refused)"),
            "error: cannot reach amqp://guest:<redacted>@mq/ (refused)"
        );
        // Unencoded `/`, `?`, `@` in a password make the URL unparseable: redacted all the same.
        for (url, shown) in [
            (
                "postgres://u:ab/cd@host/db",
                "postgres://u:<redacted>@host/db",
            ),
            (
                "postgres://u:p@ss/w?rd@host/db",
                "postgres://u:<redacted>@host/db",
            ),
            ("amqp://u:a#b@mq/%2f", "amqp://u:<redacted>@mq/%2f"),
        ] {
            assert_eq!(redact_url(url), shown, "{url}");
        }
        assert_eq!(
            redact_url("connect to host=db user=s password=hunter2 sslmode=require failed"),
            "connect to host=db user=s password=<redacted> sslmode=require failed"
        );
        assert_eq!(
            redact_url("no url here, password_env=X is a name"),
            "no url here, password_env=X is a name"
        );
    }
}
