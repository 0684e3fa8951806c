//! The value types commands refer to — pipelines, merge requests, variable overrides, alert
//! matchers — with their nom grammars and canonical textual form (`Display`).
//!
//! Each grammar accepts one whole argument and returns `None` when it does not match, so the
//! command parser can try several readings of an argument (an MR or a pipeline?) and report the
//! argument's position itself. `Display` writes a form every grammar here reads back.

use std::fmt;
use std::str::FromStr;

use nom::branch::alt;
use nom::bytes::complete::{tag, tag_no_case, take_while, take_while1};
use nom::character::complete::{char, digit1, one_of, satisfy};
use nom::combinator::{all_consuming, map_res, opt, recognize, rest};
use nom::multi::separated_list1;
use nom::{IResult, Parser};
use serde::{Deserialize, Serialize};

use crate::error::{ParseError, ParseErrorKind};

/// A pipeline: a web URL, `group/project/pipelines/123`, or a bare id for the default project.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct PipelineRef {
    /// The GitLab instance a pasted web URL names (`https://gitlab.example.org`, scheme and
    /// authority as written, lower case); `None` for the forms without a host. Whoever acts on the
    /// reference checks it against the configured instance: a URL of another GitLab never acts on
    /// the same path of ours.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance: Option<String>,
    /// Full project path (`group/sub/project`); `None` for a bare id (the plugin uses the default project).
    pub project: Option<String>,
    pub id: u64,
}

/// A merge request: a web URL, `group/project!12`, or `!12` (project from context).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct MrRef {
    /// The GitLab instance of a pasted web URL (see [`PipelineRef::instance`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance: Option<String>,
    /// Full project path; `None` for `!12`.
    pub project: Option<String>,
    pub iid: u64,
}

impl PipelineRef {
    /// A reference by project path (no instance) or, without a project, by bare id.
    pub fn new(project: Option<&str>, id: u64) -> Self {
        PipelineRef {
            instance: None,
            project: project.map(str::to_owned),
            id,
        }
    }
}

impl MrRef {
    /// A reference by project path (no instance) or, without a project, `!iid`.
    pub fn new(project: Option<&str>, iid: u64) -> Self {
        MrRef {
            instance: None,
            project: project.map(str::to_owned),
            iid,
        }
    }
}

/// A job: a web URL (`https://host/group/project/-/jobs/123`) or `group/project/-/jobs/123`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct JobRef {
    /// The GitLab instance of a pasted web URL (see [`PipelineRef::instance`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance: Option<String>,
    /// Full project path.
    pub project: String,
    pub id: u64,
}

/// A CI variable override, `KEY=value`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Var {
    pub key: String,
    pub value: String,
}

/// An Alertmanager label matcher, `name=value`, `name!=value`, `name=~regex`, `name!~regex`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Matcher {
    pub name: String,
    pub op: MatchOp,
    pub value: String,
}

/// The operator of a [`Matcher`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MatchOp {
    Eq,
    NotEq,
    Regex,
    NotRegex,
}

impl MatchOp {
    /// The operator as written: `=`, `!=`, `=~`, `!~`.
    pub fn as_str(self) -> &'static str {
        match self {
            MatchOp::Eq => "=",
            MatchOp::NotEq => "!=",
            MatchOp::Regex => "=~",
            MatchOp::NotRegex => "!~",
        }
    }
}

pub(crate) const PIPELINE_EXPECTED: &str = "a pipeline URL, group/project/pipelines/ID or an ID";
pub(crate) const JOB_EXPECTED: &str = "a job URL or group/project/-/jobs/ID";
pub(crate) const MR_EXPECTED: &str = "a merge request URL, group/project!IID or !IID";
pub(crate) const MATCHER_EXPECTED: &str =
    "a label matcher like severity=critical, env!=dev or alertname=~\"Disk.*\"";

type R<'a, O> = IResult<&'a str, O>;

fn segment(i: &str) -> R<'_, &str> {
    take_while1(|c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')).parse(i)
}

fn path(i: &str) -> R<'_, Vec<&str>> {
    separated_list1(char('/'), segment).parse(i)
}

fn number(i: &str) -> R<'_, u64> {
    map_res(digit1, str::parse::<u64>).parse(i)
}

/// `https://host/` (or `http://`); returns the instance, `https://host`, in lower case.
fn url_origin(i: &str) -> R<'_, String> {
    let (i, origin) = recognize((
        alt((tag_no_case("https://"), tag_no_case("http://"))),
        take_while1(|c: char| !matches!(c, '/' | '?' | '#' | '\\') && !c.is_whitespace()),
    ))
    .parse(i)?;
    let (i, _) = char('/').parse(i)?;
    Ok((i, origin.to_ascii_lowercase()))
}

/// What may follow a path in a pasted URL: a trailing `/`, then `?query` or `#fragment`.
fn url_end(i: &str) -> R<'_, ()> {
    let (i, _) = opt(char('/')).parse(i)?;
    let (i, _) = opt((one_of("?#"), rest)).parse(i)?;
    Ok((i, ()))
}

/// A URL's instance and path segments, e.g. `("https://gitlab.com", ["group", "project", "-",
/// "pipelines", "1"])`.
fn url_segments(i: &str) -> Option<(String, Vec<&str>)> {
    all_consuming((url_origin, path, url_end))
        .parse(i)
        .ok()
        .map(|(_, (origin, segs, _))| (origin, segs))
}

/// A path without host, optionally ending in `/`.
fn plain_segments(i: &str) -> Option<Vec<&str>> {
    all_consuming((path, opt(char('/'))))
        .parse(i)
        .ok()
        .map(|(_, (segs, _))| segs)
}

/// A namespace/project path: at least two segments, each starting with a letter, digit or `_`.
fn project_path(segs: &[&str]) -> Option<String> {
    let valid = segs.len() >= 2
        && segs.iter().all(|s| {
            s.chars()
                .next()
                .is_some_and(|c| c.is_ascii_alphanumeric() || c == '_')
        });
    valid.then(|| segs.join("/"))
}

fn positive(i: &str) -> Option<u64> {
    all_consuming(number)
        .parse(i)
        .ok()
        .map(|(_, n)| n)
        .filter(|n| *n > 0)
}

/// Splits `[project.., "-"?, keyword, id]` into (project, id).
fn split_resource<'s>(segs: &'s [&'s str], keyword: &str) -> Option<(String, u64)> {
    let (id, before) = segs.split_last()?;
    let (kw, mut project) = before.split_last()?;
    if *kw != keyword {
        return None;
    }
    if let Some((dash, p)) = project.split_last()
        && *dash == "-"
    {
        project = p;
    }
    Some((project_path(project)?, positive(id)?))
}

impl PipelineRef {
    /// Reads a pipeline reference; `None` if `text` is not one.
    pub fn parse(text: &str) -> Option<PipelineRef> {
        if let Some(id) = positive(text) {
            return Some(PipelineRef::new(None, id));
        }
        let (instance, segs) = match url_segments(text) {
            Some((instance, segs)) => (Some(instance), segs),
            None => (None, plain_segments(text)?),
        };
        let (project, id) = split_resource(&segs, "pipelines")?;
        Some(PipelineRef {
            instance,
            project: Some(project),
            id,
        })
    }
}

impl JobRef {
    /// Reads a job reference; `None` if `text` is not one.
    pub fn parse(text: &str) -> Option<JobRef> {
        let (instance, segs) = match url_segments(text) {
            Some((instance, segs)) => (Some(instance), segs),
            None => (None, plain_segments(text)?),
        };
        let (project, id) = split_resource(&segs, "jobs")?;
        Some(JobRef {
            instance,
            project,
            id,
        })
    }
}

impl MrRef {
    /// Reads a merge request reference; `None` if `text` is not one.
    pub fn parse(text: &str) -> Option<MrRef> {
        let bang = all_consuming((opt(recognize(path)), char('!'), number)).parse(text);
        if let Ok((_, (project, _, iid))) = bang {
            let project = match project {
                Some(p) => Some(project_path(&p.split('/').collect::<Vec<_>>())?),
                None => None,
            };
            return (iid > 0).then_some(MrRef {
                instance: None,
                project,
                iid,
            });
        }
        let (instance, mut segs) = match url_segments(text) {
            Some((instance, segs)) => (Some(instance), segs),
            None => (None, plain_segments(text)?),
        };
        // A pasted URL may point at a tab of the merge request.
        if segs
            .last()
            .is_some_and(|s| matches!(*s, "diffs" | "commits" | "pipelines"))
        {
            segs.pop();
        }
        let (project, iid) = split_resource(&segs, "merge_requests")?;
        Some(MrRef {
            instance,
            project: Some(project),
            iid,
        })
    }
}

/// `[A-Za-z_][A-Za-z0-9_]*`: GitLab variable names and Prometheus label names.
pub(crate) fn identifier(i: &str) -> R<'_, &str> {
    recognize((
        satisfy(|c| c.is_ascii_alphabetic() || c == '_'),
        take_while(|c: char| c.is_ascii_alphanumeric() || c == '_'),
    ))
    .parse(i)
}

fn match_op(i: &str) -> R<'_, MatchOp> {
    alt((
        tag("=~").map(|_| MatchOp::Regex),
        tag("!=").map(|_| MatchOp::NotEq),
        tag("!~").map(|_| MatchOp::NotRegex),
        tag("=").map(|_| MatchOp::Eq),
    ))
    .parse(i)
}

impl Var {
    /// Reads `KEY=value` from an argument: `bare` is its unquoted leading part (where the key and
    /// `=` must be), `full` the whole argument with quotes removed.
    pub(crate) fn from_parts(bare: &str, full: &str) -> Option<Var> {
        let (_, (key, _)) = (identifier, char('=')).parse(bare).ok()?;
        let value = full.get(key.len() + 1..)?;
        Some(Var {
            key: key.to_owned(),
            value: value.to_owned(),
        })
    }
}

impl Matcher {
    /// Reads `name<op>value` from an argument (see [`Var::from_parts`] for `bare` and `full`).
    pub(crate) fn from_parts(bare: &str, full: &str) -> Option<Matcher> {
        let (after, (name, op)) = (identifier, match_op).parse(bare).ok()?;
        let consumed = bare.len() - after.len();
        let value = full.get(consumed..)?;
        Some(Matcher {
            name: name.to_owned(),
            op,
            value: value.to_owned(),
        })
    }
}

/// Whether `value` must be quoted to read back as one argument (also inside `[...]`).
fn needs_quotes(value: &str) -> bool {
    value.is_empty()
        || value
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || matches!(c, '"' | '\\' | '[' | ']'))
}

/// Writes a free-form argument (help topic, tag, duration, reason) so it reads back as one
/// argument with the same value: quoted when needed or when it would read as a keyword.
pub(crate) fn write_word(f: &mut fmt::Formatter<'_>, value: &str) -> fmt::Result {
    let keyword = ["please", "to", "in", "for"]
        .iter()
        .any(|k| value.eq_ignore_ascii_case(k));
    if keyword || needs_quotes(value) {
        write_quoted(f, value)
    } else {
        f.write_str(value)
    }
}

/// Writes `value` between double quotes with the escapes the tokenizer reads.
fn write_quoted(f: &mut fmt::Formatter<'_>, value: &str) -> fmt::Result {
    f.write_str("\"")?;
    for c in value.chars() {
        match c {
            '"' => f.write_str("\\\"")?,
            '\\' => f.write_str("\\\\")?,
            '\n' => f.write_str("\\n")?,
            '\t' => f.write_str("\\t")?,
            c => write!(f, "{c}")?,
        }
    }
    f.write_str("\"")
}

impl fmt::Display for PipelineRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (&self.instance, &self.project) {
            (Some(i), Some(p)) => write!(f, "{i}/{p}/-/pipelines/{}", self.id),
            (None, Some(p)) => write!(f, "{p}/pipelines/{}", self.id),
            (_, None) => write!(f, "{}", self.id),
        }
    }
}

impl fmt::Display for JobRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.instance {
            Some(i) => write!(f, "{i}/{}/-/jobs/{}", self.project, self.id),
            None => write!(f, "{}/-/jobs/{}", self.project, self.id),
        }
    }
}

impl fmt::Display for MrRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (&self.instance, &self.project) {
            (Some(i), Some(p)) => write!(f, "{i}/{p}/-/merge_requests/{}", self.iid),
            (None, Some(p)) => write!(f, "{p}!{}", self.iid),
            (_, None) => write!(f, "!{}", self.iid),
        }
    }
}

impl fmt::Display for Var {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}=", self.key)?;
        if needs_quotes(&self.value) {
            write_quoted(f, &self.value)
        } else {
            f.write_str(&self.value)
        }
    }
}

impl fmt::Display for MatchOp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Alertmanager's own form: the value is always quoted (`severity=~"critical|page"`).
impl fmt::Display for Matcher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}{}", self.name, self.op)?;
        write_quoted(f, &self.value)
    }
}

fn bad_value(argument: &'static str, value: &str, expected: &'static str) -> ParseError {
    ParseError::new(
        ParseErrorKind::BadValue {
            argument,
            value: value.to_owned(),
            expected,
        },
        0,
    )
}

/// Reads one argument as the tokenizer would (quotes and escapes allowed).
fn single_token(s: &str) -> Result<crate::lexer::Token, ParseError> {
    let mut tokens = crate::lexer::tokenize(s)?;
    match (tokens.pop(), tokens.is_empty()) {
        (Some(t), true) if !t.in_bracket => Ok(t),
        _ => Err(bad_value("matcher", s, MATCHER_EXPECTED)),
    }
}

/// Parses Alertmanager matcher syntax, e.g. in configuration (`severity=~"critical|page"`).
impl FromStr for Matcher {
    type Err = ParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let t = single_token(s)?;
        Matcher::from_parts(t.bare_prefix(), &t.value)
            .ok_or_else(|| bad_value("matcher", s, MATCHER_EXPECTED))
    }
}

impl FromStr for PipelineRef {
    type Err = ParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        PipelineRef::parse(s).ok_or_else(|| bad_value("pipeline reference", s, PIPELINE_EXPECTED))
    }
}

impl FromStr for MrRef {
    type Err = ParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        MrRef::parse(s).ok_or_else(|| bad_value("merge request reference", s, MR_EXPECTED))
    }
}
