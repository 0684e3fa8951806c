//! Alertmanager label matchers: `name="value"`, `name!="value"`, `name=~"regex"`,
//! `name!~"regex"`, as Alertmanager's routes and silences write them. Values may be quoted
//! (with `\"`, `\\` and `\n` escapes) or bare; regular expressions are anchored at both ends, as
//! Alertmanager anchors them; a label an alert does not have matches as the empty string.
//!
//! The grammar is four operators and a quoted string, so it is parsed by hand rather than with
//! a parser combinator crate; the regular expressions are the `regex` crate's (RE2 syntax, the
//! same family as Alertmanager's Go regexps).

use std::collections::BTreeMap;
use std::fmt;

use regex::Regex;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MatchOp {
    Eq,
    NotEq,
    Regex,
    NotRegex,
}

impl MatchOp {
    pub fn as_str(self) -> &'static str {
        match self {
            MatchOp::Eq => "=",
            MatchOp::NotEq => "!=",
            MatchOp::Regex => "=~",
            MatchOp::NotRegex => "!~",
        }
    }
}

#[derive(Debug, Clone)]
pub struct Matcher {
    pub name: String,
    pub op: MatchOp,
    pub value: String,
    regex: Option<Regex>,
}

impl PartialEq for Matcher {
    fn eq(&self, other: &Self) -> bool {
        self.name == other.name && self.op == other.op && self.value == other.value
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MatcherError {
    #[error(
        "{0:?} is not a matcher (expected name=\"value\", name!=\"value\", name=~\"regex\" or name!~\"regex\")"
    )]
    Syntax(String),
    #[error(
        "{name:?} is not a label name (expected letters, digits and _, not starting with a digit)"
    )]
    Name { name: String },
    #[error("the regular expression {value:?} is not valid: {detail}")]
    Regex { value: String, detail: String },
    #[error("unclosed quote in {0:?}")]
    Unclosed(String),
}

impl Matcher {
    pub fn new(name: &str, op: MatchOp, value: &str) -> Result<Self, MatcherError> {
        let valid_name = name
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
            && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !valid_name {
            return Err(MatcherError::Name {
                name: name.to_string(),
            });
        }
        let regex = match op {
            MatchOp::Regex | MatchOp::NotRegex => Some(
                Regex::new(&format!("^(?:{value})$")).map_err(|e| MatcherError::Regex {
                    value: value.to_string(),
                    detail: e.to_string(),
                })?,
            ),
            _ => None,
        };
        Ok(Self {
            name: name.to_string(),
            op,
            value: value.to_string(),
            regex,
        })
    }

    /// Parses one matcher: `severity=~"critical|page"`, `env!=staging`.
    pub fn parse(text: &str) -> Result<Self, MatcherError> {
        let text = text.trim();
        let op_at = text
            .find(['=', '!'])
            .ok_or_else(|| MatcherError::Syntax(text.to_string()))?;
        let name = text[..op_at].trim();
        let rest = &text[op_at..];
        let (op, value) = if let Some(v) = rest.strip_prefix("=~") {
            (MatchOp::Regex, v)
        } else if let Some(v) = rest.strip_prefix("!~") {
            (MatchOp::NotRegex, v)
        } else if let Some(v) = rest.strip_prefix("!=") {
            (MatchOp::NotEq, v)
        } else if let Some(v) = rest.strip_prefix('=') {
            (MatchOp::Eq, v)
        } else {
            return Err(MatcherError::Syntax(text.to_string()));
        };
        let value = unquote(value.trim(), text)?;
        Self::new(name, op, &value)
    }

    /// Parses a list: `{a="b", c=~"d"}` or `a="b", c=~"d"` (commas inside quotes are values).
    pub fn parse_list(text: &str) -> Result<Vec<Self>, MatcherError> {
        let inner = text.trim();
        let inner = inner
            .strip_prefix('{')
            .and_then(|t| t.strip_suffix('}'))
            .unwrap_or(inner);
        split_outside_quotes(inner, text)?
            .iter()
            .filter(|part| !part.trim().is_empty())
            .map(|part| Self::parse(part))
            .collect()
    }

    pub fn matches(&self, labels: &impl LabelSet) -> bool {
        let value = labels.label(&self.name);
        match self.op {
            MatchOp::Eq => value == self.value,
            MatchOp::NotEq => value != self.value,
            MatchOp::Regex => self.regex.as_ref().is_some_and(|r| r.is_match(value)),
            MatchOp::NotRegex => !self.regex.as_ref().is_some_and(|r| r.is_match(value)),
        }
    }

    pub fn is_regex(&self) -> bool {
        matches!(self.op, MatchOp::Regex | MatchOp::NotRegex)
    }

    pub fn is_equal(&self) -> bool {
        matches!(self.op, MatchOp::Eq | MatchOp::Regex)
    }
}

impl fmt::Display for Matcher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let escaped = self
            .value
            .replace('\\', "\\\\")
            .replace('"', "\\\"")
            .replace('\n', "\\n");
        write!(f, "{}{}\"{escaped}\"", self.name, self.op.as_str())
    }
}

/// Labels a matcher reads: an alert's ([`super::Labels`]) or any map of them.
pub trait LabelSet {
    /// The value of label `name`; an absent label reads as empty (Alertmanager's rule).
    fn label(&self, name: &str) -> &str;
}

impl LabelSet for BTreeMap<String, String> {
    fn label(&self, name: &str) -> &str {
        self.get(name).map_or("", String::as_str)
    }
}

/// All matchers match (an empty list matches everything).
pub fn all_match(matchers: &[Matcher], labels: &impl LabelSet) -> bool {
    matchers.iter().all(|m| m.matches(labels))
}

fn unquote(value: &str, whole: &str) -> Result<String, MatcherError> {
    let Some(body) = value.strip_prefix('"') else {
        return Ok(value.to_string());
    };
    let mut out = String::new();
    let mut chars = body.chars();
    while let Some(c) = chars.next() {
        match c {
            '"' => {
                return if chars.as_str().trim().is_empty() {
                    Ok(out)
                } else {
                    Err(MatcherError::Syntax(whole.to_string()))
                };
            }
            '\\' => match chars.next() {
                Some('n') => out.push('\n'),
                Some(other) => out.push(other),
                None => break,
            },
            other => out.push(other),
        }
    }
    Err(MatcherError::Unclosed(whole.to_string()))
}

fn split_outside_quotes<'a>(text: &'a str, whole: &str) -> Result<Vec<&'a str>, MatcherError> {
    let mut parts = Vec::new();
    let mut start = 0;
    let mut quoted = false;
    let mut escaped = false;
    for (i, c) in text.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' if quoted => escaped = true,
            '"' => quoted = !quoted,
            ',' if !quoted => {
                parts.push(&text[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    if quoted {
        return Err(MatcherError::Unclosed(whole.to_string()));
    }
    parts.push(&text[start..]);
    Ok(parts)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn the_four_operators_match_like_alertmanager() {
        let l = labels(&[("severity", "critical"), ("env", "prod")]);
        assert!(
            Matcher::parse(r#"severity="critical""#)
                .expect("eq")
                .matches(&l)
        );
        assert!(
            !Matcher::parse("severity!=critical")
                .expect("ne")
                .matches(&l)
        );
        assert!(
            Matcher::parse(r#"severity=~"critical|page""#)
                .expect("re")
                .matches(&l)
        );
        // Anchored: a regex must match the whole value.
        assert!(
            !Matcher::parse(r#"severity=~"crit""#)
                .expect("re")
                .matches(&l)
        );
        assert!(Matcher::parse(r#"env!~"stag.*""#).expect("nre").matches(&l));
        // A missing label is the empty string.
        assert!(Matcher::parse(r#"team="""#).expect("empty").matches(&l));
        assert!(Matcher::parse(r#"team!~".+""#).expect("absent").matches(&l));
    }

    #[test]
    fn lists_quotes_and_escapes() {
        let list = Matcher::parse_list(r#"{alertname="Disk, full", msg=~"a\"b"}"#).expect("list");
        assert_eq!(list.len(), 2);
        assert_eq!(list[0].value, "Disk, full");
        assert_eq!(list[1].value, "a\"b");
        assert_eq!(list[1].to_string(), r#"msg=~"a\"b""#);
        assert!(Matcher::parse_list("").expect("empty").is_empty());
    }

    #[test]
    fn bad_matchers_say_what_is_wrong() {
        assert!(matches!(
            Matcher::parse("severity"),
            Err(MatcherError::Syntax(_))
        ));
        assert!(matches!(
            Matcher::parse("1x=a"),
            Err(MatcherError::Name { .. })
        ));
        assert!(matches!(
            Matcher::parse(r#"a=~"(""#),
            Err(MatcherError::Regex { .. })
        ));
        assert!(matches!(
            Matcher::parse(r#"a="open"#),
            Err(MatcherError::Unclosed(_))
        ));
        assert!(matches!(
            Matcher::parse(r#"a="x" y"#),
            Err(MatcherError::Syntax(_))
        ));
    }
}
