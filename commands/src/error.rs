//! Parse errors: what went wrong, where (a byte offset into the command text), and the one line
//! that is shown to the user.
//!
//! The dispatcher never builds its own wording from a `ParseErrorKind`: it calls
//! [`ParseError::reply`], so every front end gives the same, actionable message that quotes the
//! offending piece with its column and points to `help`.

use thiserror::Error;

use crate::command::usage;

/// A command text that could not be turned into a [`crate::Command`].
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("{kind} (at byte {position})")]
pub struct ParseError {
    /// What went wrong.
    pub kind: ParseErrorKind,
    /// Byte offset in the parsed text where the problem is (the end of the text for a missing piece).
    pub position: usize,
    /// The command being parsed, once the command word was recognised (used for `help <command>`).
    pub command: Option<&'static str>,
}

/// The kinds of mistakes a user can make in a command.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ParseErrorKind {
    /// Nothing but whitespace (and politeness) was addressed to the bot.
    #[error("empty command")]
    Empty,
    /// The first word is not a command.
    #[error("unknown command `{word}`")]
    UnknownCommand {
        word: String,
        did_you_mean: Option<String>,
    },
    /// A required argument is absent.
    #[error("{command}: missing {argument}")]
    MissingArgument {
        command: &'static str,
        argument: &'static str,
        usage: &'static str,
    },
    /// An argument is present but malformed.
    #[error("`{value}` is not a {argument}")]
    BadValue {
        argument: &'static str,
        value: String,
        expected: &'static str,
    },
    /// An argument the command does not take.
    #[error("{command}: unexpected argument `{argument}`")]
    UnexpectedArgument {
        command: &'static str,
        argument: String,
    },
    /// The same `key=value` (or keyword) was given twice.
    #[error("`{key}` given twice")]
    DuplicateArg { key: String },
    /// A `"` without its closing `"`.
    #[error("unclosed quote")]
    UnclosedQuote,
    /// A `[` without its closing `]`.
    #[error("unclosed bracket")]
    UnclosedBracket,
    /// A backslash escape inside quotes other than `\"`, `\\`, `\n`, `\t`.
    #[error("unknown escape in quoted text")]
    BadEscape,
    /// A command that only makes sense in a merge-request comment was used elsewhere.
    #[error("`{command}` needs a merge request")]
    NeedsMergeRequest { command: &'static str },
}

impl ParseError {
    pub(crate) fn new(kind: ParseErrorKind, position: usize) -> Self {
        ParseError {
            kind,
            position,
            command: None,
        }
    }

    pub(crate) fn in_command(mut self, command: &'static str) -> Self {
        self.command.get_or_insert(command);
        self
    }

    /// One line for the user: the problem, the offending piece and its column, and a pointer to help.
    ///
    /// `input` must be the text that was given to [`crate::parse`] (it is only used to turn the byte
    /// offset into a column; any string is accepted).
    pub fn reply(&self, input: &str) -> String {
        let col = column(input, self.position);
        let help = match self.command {
            Some(c) => format!("See `help {c}`."),
            None => "Try `help`.".to_owned(),
        };
        let prefix = self.command.map(|c| format!("{c}: ")).unwrap_or_default();
        match &self.kind {
            ParseErrorKind::Empty => "empty command. Try `help`.".to_owned(),
            ParseErrorKind::UnknownCommand { word, did_you_mean } => match did_you_mean {
                Some(s) => format!(
                    "unknown command `{}` — did you mean `{s}`? Try `help`.",
                    quote(word)
                ),
                None => format!("unknown command `{}`. Try `help`.", quote(word)),
            },
            ParseErrorKind::MissingArgument {
                command,
                argument,
                usage,
            } => format!("{command}: missing {argument} (usage: `{usage}`). See `help {command}`."),
            ParseErrorKind::BadValue {
                argument,
                value,
                expected,
            } => format!(
                "{prefix}`{}` at column {col} is not {} {argument} (expected {expected}). {help}",
                quote(value),
                article(argument)
            ),
            ParseErrorKind::UnexpectedArgument { command, argument } => {
                let usage = usage(command).unwrap_or(command);
                format!(
                    "{command}: unexpected argument `{}` at column {col} (usage: `{usage}`). See `help {command}`.",
                    quote(argument)
                )
            }
            ParseErrorKind::DuplicateArg { key } => format!(
                "{prefix}`{}` is given twice (again at column {col}); give it once. {help}",
                quote(key)
            ),
            ParseErrorKind::UnclosedQuote => format!(
                "{prefix}the quote `\"` at column {col} is never closed; end the value with `\"` (write `\\\"` for a quote inside). {help}"
            ),
            ParseErrorKind::UnclosedBracket => format!(
                "{prefix}the bracket `[` at column {col} is never closed; end the list with `]`. {help}"
            ),
            ParseErrorKind::BadEscape => {
                let piece: String = input
                    .get(self.position..)
                    .unwrap_or("")
                    .chars()
                    .take(2)
                    .collect();
                format!(
                    "{prefix}unknown escape `{}` at column {col} in quoted text (use `\\\"`, `\\\\`, `\\n` or `\\t`). {help}",
                    quote(&piece)
                )
            }
            ParseErrorKind::NeedsMergeRequest { command } => {
                if *command == "test" {
                    "`test` only works in a merge request comment; elsewhere use `canary <mr> [key=value ...]`. See `help canary`.".to_owned()
                } else {
                    format!(
                        "`{command}` only works in a merge request comment or with a merge request reference. See `help {command}`."
                    )
                }
            }
        }
    }
}

/// 1-based column (in characters) of byte offset `position` in `input`; never panics.
fn column(input: &str, position: usize) -> usize {
    let mut pos = position.min(input.len());
    while !input.is_char_boundary(pos) {
        pos -= 1;
    }
    input.get(..pos).map_or(0, |s| s.chars().count()) + 1
}

/// A user-supplied piece made safe to put between backticks on one line.
fn quote(s: &str) -> String {
    const MAX: usize = 60;
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i == MAX {
            out.push('…');
            break;
        }
        match c {
            '`' => out.push('\''),
            '\n' => out.push_str("\\n"),
            c if c.is_control() => out.push(' '),
            c => out.push(c),
        }
    }
    out
}

fn article(noun: &str) -> &'static str {
    match noun.chars().next() {
        Some('a' | 'e' | 'i' | 'o' | 'u') => "an",
        _ => "a",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn column_counts_characters_and_survives_bad_offsets() {
        assert_eq!(column("abc", 0), 1);
        assert_eq!(column("abc", 2), 3);
        assert_eq!(column("héllo x", 7), 7);
        assert_eq!(column("é", 1), 1);
        assert_eq!(column("abc", 99), 4);
    }

    #[test]
    fn quote_truncates_and_flattens() {
        assert_eq!(quote("a`b\nc\td"), "a'b\\nc d");
        let long = "x".repeat(100);
        assert_eq!(quote(&long), format!("{}…", "x".repeat(60)));
    }

    #[test]
    fn article_follows_the_noun() {
        assert_eq!(article("environment name"), "an");
        assert_eq!(article("pipeline reference"), "a");
    }
}
