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
}
