//! From a command text (already stripped of its address) to a typed [`Command`].
//!
//! The text is tokenized once (`lexer`), politeness is dropped, the first word picks the command
//! and one small function per command reads the remaining arguments, so each command's grammar
//! can be read in one place. Every error carries the byte offset of the argument it is about.

use crate::command::{COMMAND_NAMES, Command, DeploySource, Target, usage};
use crate::error::{ParseError, ParseErrorKind};
use crate::lexer::{Token, tokenize};
use crate::refs::{
    JOB_EXPECTED, JobRef, MATCHER_EXPECTED, MR_EXPECTED, Matcher, MrRef, PIPELINE_EXPECTED,
    PipelineRef, Var,
};

/// What the parser knows about where the text came from.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ParseContext {
    /// The merge request whose comment this is; commands default to it.
    pub implicit_mr: Option<MrRef>,
}

impl ParseContext {
    /// The context of a comment on merge request `mr`.
    pub fn in_mr(mr: MrRef) -> Self {
        ParseContext {
            implicit_mr: Some(mr),
        }
    }
}

const VAR_EXPECTED: &str =
    "KEY=value, KEY made of letters, digits and _ and not starting with a digit";
const TARGET_EXPECTED: &str = "a pipeline URL, group/project/pipelines/ID, an ID, a merge request URL, group/project!IID or !IID";
const NAME_EXPECTED: &str = "letters, digits, '.', '_' and '-', starting with a letter or digit";
const TAG_EXPECTED: &str =
    "a merge request (URL, group/project!IID or !IID), an image tag or a digest (sha256:...)";
const VERSION_EXPECTED: &str = "an image tag such as v1.2.3, or a digest (sha256:...)";
const CODE_EXPECTED: &str = "the code shepherd gave when you asked, such as k7m2qz";
const DURATION_EXPECTED: &str = "a duration of at least one second like 30m, 2h30m or 1d";
const SILENCE_ID_EXPECTED: &str = "the silence's id, as shown by `silence`";

/// Parses one command text. `ctx` supplies the merge request of an MR comment.
pub fn parse(text: &str, ctx: &ParseContext) -> Result<Command, ParseError> {
    let tokens: Vec<Token> = tokenize(text)
        .map_err(|e| match command_word(text) {
            Some(name) => e.in_command(name),
            None => e,
        })?
        .into_iter()
        .filter(|t| !t.is_keyword("please"))
        .collect();
    let Some((first, rest)) = tokens.split_first() else {
        return Err(ParseError::new(ParseErrorKind::Empty, 0));
    };
    let name = COMMAND_NAMES
        .iter()
        .copied()
        .find(|n| !first.quoted && !first.in_bracket && first.value.eq_ignore_ascii_case(n));
    let Some(name) = name else {
        return Err(ParseError::new(
            ParseErrorKind::UnknownCommand {
                word: first.value.clone(),
                did_you_mean: did_you_mean(&first.value).map(str::to_owned),
            },
            first.start,
        ));
    };
    let mut args = Args {
        command: name,
        tokens: rest,
        next: 0,
        end: text.trim_end().len(),
        command_start: first.start,
        ctx,
    };
    args.command().map_err(|e| e.in_command(name))
}

/// The command a text starts with, read without the tokenizer (for errors the tokenizer reports).
fn command_word(text: &str) -> Option<&'static str> {
    let word = text
        .split_whitespace()
        .find(|w| !w.eq_ignore_ascii_case("please"))?;
    COMMAND_NAMES
        .iter()
        .copied()
        .find(|n| n.eq_ignore_ascii_case(word))
}

/// The closest command word to a mistyped one, if any is close enough.
fn did_you_mean(word: &str) -> Option<&'static str> {
    // No command is longer than 11 characters; this also bounds the work on hostile input.
    if word.chars().count() > 16 {
        return None;
    }
    let word = word.to_lowercase();
    COMMAND_NAMES
        .iter()
        .map(|n| {
            (
                *n,
                strsim::jaro_winkler(&word, n),
                strsim::osa_distance(&word, n),
            )
        })
        .filter(|(_, jw, dl)| *jw >= 0.85 || (*dl <= 2 && word.chars().count() > 3))
        .max_by(|a, b| a.1.total_cmp(&b.1))
        .map(|(n, _, _)| n)
}

/// A cursor over a command's arguments.
struct Args<'t> {
    command: &'static str,
    tokens: &'t [Token],
    next: usize,
    /// Where a missing argument is reported: the end of the text.
    end: usize,
    command_start: usize,
    ctx: &'t ParseContext,
}

impl<'t> Args<'t> {
    fn command(&mut self) -> Result<Command, ParseError> {
        Ok(match self.command {
            "help" => {
                let topic = self.optional_word()?.map(|t| t.value.to_lowercase());
                self.finish()?;
                Command::Help { topic }
            }
            "ping" => self.finish().map(|()| Command::Ping)?,
            "version" => self.finish().map(|()| Command::Version)?,
            "whoami" => self.finish().map(|()| Command::Whoami)?,
            "retrigger" => {
                let (overrides, positional) = self.overrides_and_positionals()?;
                let mut positional = positional.into_iter();
                let pipeline = match positional.next() {
                    Some(t) => PipelineRef::parse(&t.value).ok_or_else(|| {
                        self.bad_or_override(t, "pipeline reference", PIPELINE_EXPECTED)
                    })?,
                    None => return Err(self.missing("<pipeline>")),
                };
                self.no_more(positional)?;
                Command::Retrigger {
                    pipeline,
                    overrides,
                }
            }
            "test" => {
                if self.ctx.implicit_mr.is_none() {
                    return Err(ParseError::new(
                        ParseErrorKind::NeedsMergeRequest { command: "test" },
                        self.command_start,
                    ));
                }
                let (overrides, positional) = self.overrides_and_positionals()?;
                self.no_more(positional.into_iter())?;
                Command::Test { overrides }
            }
            "canary" => {
                let (overrides, positional) = self.overrides_and_positionals()?;
                let mut positional = positional.into_iter();
                let mr = match positional.next() {
                    Some(t) => MrRef::parse(&t.value).ok_or_else(|| {
                        self.bad_or_override(t, "merge request reference", MR_EXPECTED)
                    })?,
                    None => self.implicit_mr("<mr>")?,
                };
                self.no_more(positional)?;
                Command::Canary { mr, overrides }
            }
            "retest" => {
                let mr = match self.optional_word()? {
                    Some(t) => MrRef::parse(&t.value)
                        .ok_or_else(|| bad(t, "merge request reference", MR_EXPECTED))?,
                    None => self.implicit_mr("<mr>")?,
                };
                self.finish()?;
                Command::Retest { mr }
            }
            "status" | "cancel" => {
                let target = match self.optional_word()? {
                    Some(t) => MrRef::parse(&t.value)
                        .map(Target::Mr)
                        .or_else(|| PipelineRef::parse(&t.value).map(Target::Pipeline))
                        .ok_or_else(|| {
                            bad(t, "pipeline or merge request reference", TARGET_EXPECTED)
                        })?,
                    None => Target::Mr(self.implicit_mr("<pipeline or mr>")?),
                };
                self.finish()?;
                if self.command == "status" {
                    Command::Status { target }
                } else {
                    Command::Cancel { target }
                }
            }
            "deploy" => self.deploy()?,
            "rollback" => self.rollback()?,
            "deployments" => {
                let service = self.service()?;
                let mut env = None;
                if let Some(t) = self.take() {
                    if !t.is_keyword("in") {
                        return Err(self.unexpected(t));
                    }
                    env = Some(self.name("<env>", "environment name")?);
                }
                self.finish()?;
                Command::Deployments { service, env }
            }
            "confirm" => {
                let t = self
                    .optional_word()?
                    .ok_or_else(|| self.missing("<code>"))?;
                let valid = (4..=16).contains(&t.value.len())
                    && t.value.chars().all(|c| c.is_ascii_alphanumeric());
                if !valid {
                    return Err(bad(t, "confirmation code", CODE_EXPECTED));
                }
                self.finish()?;
                Command::Confirm {
                    code: t.value.to_ascii_lowercase(),
                }
            }
            "lock" => {
                let env = self.name("<env>", "environment name")?;
                let mut reason = Vec::new();
                while let Some(t) = self.take() {
                    reason.push(t.value.as_str());
                }
                let reason = reason.join(" ");
                Command::Lock {
                    env,
                    reason: (!reason.is_empty()).then_some(reason),
                }
            }
            "unlock" => {
                let env = self.name("<env>", "environment name")?;
                self.finish()?;
                Command::Unlock { env }
            }
            "alerts" => {
                let mut filter = Vec::new();
                while let Some(t) = self.take() {
                    filter.push(matcher(t)?);
                }
                Command::Alerts { filter }
            }
            "herder" => {
                let job = match self.optional_word()? {
                    Some(t) => Some(
                        JobRef::parse(&t.value)
                            .ok_or_else(|| bad(t, "job reference", JOB_EXPECTED))?,
                    ),
                    None => None,
                };
                self.finish()?;
                Command::Herder { job }
            }
            "failover" | "failback" => {
                let switch = self.name("<switch>", "failover switch name")?;
                self.finish()?;
                if self.command == "failover" {
                    Command::Failover { switch }
                } else {
                    Command::Failback { switch }
                }
            }
            "failovers" => self.finish().map(|()| Command::Failovers)?,
            "silence" => self.silence()?,
            "unsilence" => {
                let t = self
                    .optional_word()?
                    .ok_or_else(|| self.missing("<silence id>"))?;
                let valid = t
                    .value
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-');
                if !valid || t.value.is_empty() {
                    return Err(bad(t, "silence id", SILENCE_ID_EXPECTED));
                }
                self.finish()?;
                Command::Unsilence {
                    id: t.value.clone(),
                }
            }
            // COMMAND_NAMES and this match list the same words; a unit test checks it.
            other => {
                return Err(ParseError::new(
                    ParseErrorKind::UnknownCommand {
                        word: other.to_owned(),
                        did_you_mean: None,
                    },
                    self.command_start,
                ));
            }
        })
    }

    fn deploy(&mut self) -> Result<Command, ParseError> {
        let service = self.service()?;
        let mut source = None;
        if let Some(t) = self.peek().filter(|t| !t.is_keyword("to")) {
            self.next += 1;
            self.reject_bracket(t)?;
            let parsed = match MrRef::parse(&t.value) {
                Some(mr) => DeploySource::Mr(mr),
                None if is_digest(&t.value) => DeploySource::Digest(t.value.to_ascii_lowercase()),
                None if is_tag(&t.value) => DeploySource::Tag(t.value.clone()),
                None => return Err(bad(t, "merge request, image tag or digest", TAG_EXPECTED)),
            };
            source = Some(parsed);
        }
        let mut env = None;
        if self.peek().is_some_and(|t| t.is_keyword("to")) {
            self.next += 1;
            env = Some(self.name("<env>", "environment name")?);
        }
        self.finish()?;
        let source = match source {
            Some(s) => s,
            None => DeploySource::Mr(self.implicit_mr("<mr, tag or digest>")?),
        };
        Ok(Command::Deploy {
            service,
            source,
            env,
        })
    }

    fn rollback(&mut self) -> Result<Command, ParseError> {
        let service = self.service()?;
        let (mut env, mut to) = (None, None);
        while let Some(t) = self.take() {
            let slot = if t.is_keyword("in") {
                &mut env
            } else if t.is_keyword("to") {
                &mut to
            } else {
                return Err(self.unexpected(t));
            };
            if slot.is_some() {
                return Err(ParseError::new(
                    ParseErrorKind::DuplicateArg {
                        key: t.value.to_lowercase(),
                    },
                    t.start,
                ));
            }
            *slot = Some(if t.is_keyword("in") {
                self.name("<env>", "environment name")?
            } else {
                let v = self.take().ok_or_else(|| self.missing("<tag or digest>"))?;
                if v.in_bracket {
                    return Err(bad(v, "version", VERSION_EXPECTED));
                }
                if is_digest(&v.value) {
                    v.value.to_ascii_lowercase()
                } else if is_tag(&v.value) {
                    v.value.clone()
                } else {
                    return Err(bad(v, "version", VERSION_EXPECTED));
                }
            });
        }
        Ok(Command::Rollback { service, env, to })
    }

    fn silence(&mut self) -> Result<Command, ParseError> {
        let mut matchers = Vec::new();
        let for_token = loop {
            let Some(t) = self.take() else {
                return Err(self.missing(if matchers.is_empty() {
                    "<matcher>"
                } else {
                    "for <duration>"
                }));
            };
            if t.is_keyword("for") {
                break t;
            }
            match Matcher::from_parts(t.bare_prefix(), &t.value) {
                Some(m) => matchers.push(m),
                None if humantime::parse_duration(&t.value).is_ok() => {
                    return Err(bad(
                        t,
                        "matcher",
                        "a label matcher; a duration goes after `for`, as in `silence alertname=DiskFull for 1h`",
                    ));
                }
                None => return Err(bad(t, "matcher", MATCHER_EXPECTED)),
            }
        };
        if matchers.is_empty() {
            return Err(self.missing_at("<matcher>", for_token.start));
        }
        let d = self.take().ok_or_else(|| self.missing("<duration>"))?;
        let duration_secs = humantime::parse_duration(&d.value)
            .ok()
            .map(|d| d.as_secs())
            .filter(|s| *s > 0 && !d.in_bracket)
            .ok_or_else(|| bad(d, "duration", DURATION_EXPECTED))?;
        let mut reason = Vec::new();
        while let Some(t) = self.take() {
            reason.push(t.value.as_str());
        }
        let reason = reason.join(" ");
        Ok(Command::Silence {
            matchers,
            duration_secs,
            duration_text: d.value.clone(),
            reason: (!reason.is_empty()).then_some(reason),
        })
    }

    fn peek(&self) -> Option<&'t Token> {
        self.tokens.get(self.next)
    }

    fn take(&mut self) -> Option<&'t Token> {
        let t = self.tokens.get(self.next)?;
        self.next += 1;
        Some(t)
    }

    /// The next argument, which must not come from a `[...]` bracket.
    fn optional_word(&mut self) -> Result<Option<&'t Token>, ParseError> {
        match self.take() {
            Some(t) => self.reject_bracket(t).map(|()| Some(t)),
            None => Ok(None),
        }
    }

    fn reject_bracket(&self, t: &Token) -> Result<(), ParseError> {
        if t.in_bracket {
            Err(self.unexpected(t))
        } else {
            Ok(())
        }
    }

    /// A service, environment or similar name.
    fn name(&mut self, argument: &'static str, what: &'static str) -> Result<String, ParseError> {
        let t = self
            .optional_word()?
            .ok_or_else(|| self.missing(argument))?;
        if !is_name(&t.value) {
            return Err(bad(t, what, NAME_EXPECTED));
        }
        Ok(t.value.clone())
    }

    /// The service of deploy/rollback/deployments (a keyword there means it was left out).
    fn service(&mut self) -> Result<String, ParseError> {
        if self
            .peek()
            .is_some_and(|t| t.is_keyword("to") || t.is_keyword("in"))
        {
            return Err(self.missing("<service>"));
        }
        self.name("<service>", "service name")
    }

    fn implicit_mr(&self, argument: &'static str) -> Result<MrRef, ParseError> {
        self.ctx
            .implicit_mr
            .clone()
            .ok_or_else(|| self.missing(argument))
    }

    /// Splits the remaining arguments into `KEY=value` overrides (in order, no key twice) and the rest.
    fn overrides_and_positionals(&mut self) -> Result<(Vec<Var>, Vec<&'t Token>), ParseError> {
        let mut overrides: Vec<Var> = Vec::new();
        let mut positional = Vec::new();
        while let Some(t) = self.take() {
            match Var::from_parts(t.bare_prefix(), &t.value) {
                Some(var) => {
                    if overrides.iter().any(|v| v.key == var.key) {
                        return Err(ParseError::new(
                            ParseErrorKind::DuplicateArg { key: var.key },
                            t.start,
                        ));
                    }
                    overrides.push(var);
                }
                None if t.in_bracket => return Err(bad(t, "variable override", VAR_EXPECTED)),
                None => positional.push(t),
            }
        }
        Ok((overrides, positional))
    }

    /// Fails on the first of `rest` (positionals left over after the expected ones).
    fn no_more(&self, mut rest: impl Iterator<Item = &'t Token>) -> Result<(), ParseError> {
        match rest.next() {
            Some(t) if t.bare_prefix().contains('=') => {
                Err(bad(t, "variable override", VAR_EXPECTED))
            }
            Some(t) => Err(self.unexpected(t)),
            None => Ok(()),
        }
    }

    /// A malformed positional; if it looks like a mistyped `KEY=value`, says so instead.
    fn bad_or_override(
        &self,
        t: &Token,
        argument: &'static str,
        expected: &'static str,
    ) -> ParseError {
        if t.bare_prefix().contains('=') && !t.bare_prefix().contains('/') {
            bad(t, "variable override", VAR_EXPECTED)
        } else {
            bad(t, argument, expected)
        }
    }

    fn finish(&mut self) -> Result<(), ParseError> {
        match self.peek() {
            Some(t) => Err(self.unexpected(t)),
            None => Ok(()),
        }
    }

    fn unexpected(&self, t: &Token) -> ParseError {
        ParseError::new(
            ParseErrorKind::UnexpectedArgument {
                command: self.command,
                argument: t.value.clone(),
            },
            t.start,
        )
    }

    fn missing(&self, argument: &'static str) -> ParseError {
        self.missing_at(argument, self.end)
    }

    fn missing_at(&self, argument: &'static str, position: usize) -> ParseError {
        ParseError::new(
            ParseErrorKind::MissingArgument {
                command: self.command,
                argument,
                usage: usage(self.command).unwrap_or(self.command),
            },
            position,
        )
    }
}

fn bad(t: &Token, argument: &'static str, expected: &'static str) -> ParseError {
    ParseError::new(
        ParseErrorKind::BadValue {
            argument,
            value: t.value.clone(),
            expected,
        },
        t.start,
    )
}

fn matcher(t: &Token) -> Result<Matcher, ParseError> {
    Matcher::from_parts(t.bare_prefix(), &t.value)
        .ok_or_else(|| bad(t, "matcher", MATCHER_EXPECTED))
}

/// Service and environment names: `[A-Za-z0-9][A-Za-z0-9._-]*`.
fn is_name(s: &str) -> bool {
    let mut chars = s.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphanumeric())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
}

/// An image digest as shepherd takes it: `sha256:` and 64 hex digits.
pub fn is_digest(s: &str) -> bool {
    s.get(..7)
        .is_some_and(|p| p.eq_ignore_ascii_case("sha256:"))
        && s.len() == 71
        && s[7..].chars().all(|c| c.is_ascii_hexdigit())
}

/// Container image tags: `[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}`.
fn is_tag(s: &str) -> bool {
    let mut chars = s.chars();
    s.len() <= 128
        && chars
            .next()
            .is_some_and(|c| c.is_ascii_alphanumeric() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_command_name_has_a_grammar_and_a_usage() {
        let ctx = ParseContext::in_mr(MrRef {
            instance: None,
            project: None,
            iid: 1,
        });
        for name in COMMAND_NAMES {
            assert!(usage(name).is_some(), "{name} has no usage");
            if let Err(e) = parse(name, &ctx) {
                assert!(
                    !matches!(e.kind, ParseErrorKind::UnknownCommand { .. }),
                    "{name}: {e:?}"
                );
            }
        }
    }

    #[test]
    fn suggestions() {
        assert_eq!(did_you_mean("retriger"), Some("retrigger"));
        assert_eq!(did_you_mean("RETRIGER"), Some("retrigger"));
        assert_eq!(did_you_mean("stat"), Some("status"));
        assert_eq!(did_you_mean("deployment"), Some("deployments"));
        assert_eq!(did_you_mean("silense"), Some("silence"));
        assert_eq!(did_you_mean("xyzzy"), None);
        assert_eq!(did_you_mean("hello"), Some("help"));
        assert_eq!(did_you_mean("frobnicate"), None);
        assert_eq!(did_you_mean("x"), None);
        assert_eq!(did_you_mean("retriggerretrigger"), None);
    }
}
