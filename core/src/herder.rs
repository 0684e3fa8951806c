//! The herder's judgement: which `[[herder.matchers]]` entry, if any, a finished job matches.
//!
//! The judgement itself is pure: the caller reads the job, asks [`Herder::trace_for`] for the
//! bounded tail of its trace (read only when a matcher needs it), and acts on the [`Verdict`]. Matchers are tried in order
//! and the first whose every criterion holds decides: `job_status` (one of), `job_name` (a
//! regular expression), `failure_reason` (one of GitLab's reasons, or any when empty), and
//! `messages` (one of them found in the trace's tail: a substring, or `/regex/flags` with flags
//! from `imsx`).

pub mod actions;
pub mod retry;

use regex::{Regex, RegexBuilder};

use crate::gitlab::{GitLab, GitLabError, Job, JobStatus};
use shepherd_config::{HerderAction, HerderConfig, HerderMatcher};

/// A pattern in the configuration that does not compile, with the key that holds it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{key}: {detail}")]
pub struct HerderError {
    pub key: String,
    pub detail: String,
}

/// What the herder knows of a finished job before reading its trace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JobFacts<'a> {
    pub status: &'a str,
    pub name: &'a str,
    pub failure_reason: Option<&'a str>,
}

/// The outcome of judging one job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict<'h> {
    /// No matcher matched (for a failed job: one to write a matcher for).
    NoMatcher,
    Matched {
        matcher: &'h HerderMatcher,
        /// The trace line that matched, when the matcher has `messages` (at most
        /// [`MAX_MESSAGE_CHARS`] characters).
        message: Option<String>,
    },
}

/// The most of a matched trace line a verdict keeps.
pub const MAX_MESSAGE_CHARS: usize = 200;

enum Message {
    Substring(String),
    Pattern(Regex),
}

struct Compiled {
    matcher: HerderMatcher,
    job_name: Option<Regex>,
    messages: Vec<Message>,
}

/// The compiled matchers of `[herder]`, in order.
pub struct Herder {
    config: HerderConfig,
    matchers: Vec<Compiled>,
}

impl Herder {
    /// Compiles every pattern; the first that does not compile is an error naming its key.
    pub fn new(config: &HerderConfig) -> Result<Herder, HerderError> {
        let mut matchers = Vec::with_capacity(config.matchers.len());
        for (i, m) in config.matchers.iter().enumerate() {
            let at = format!("herder.matchers[{i}]");
            let job_name = match &m.job_name {
                Some(re) => Some(Regex::new(re).map_err(|e| HerderError {
                    key: format!("{at}.job_name"),
                    detail: format!("{re:?} is not a valid regular expression: {e}"),
                })?),
                None => None,
            };
            let mut messages = Vec::with_capacity(m.messages.len());
            for (j, text) in m.messages.iter().enumerate() {
                messages.push(message(text).map_err(|detail| HerderError {
                    key: format!("{at}.messages[{j}]"),
                    detail,
                })?);
            }
            matchers.push(Compiled {
                matcher: m.clone(),
                job_name,
                messages,
            });
        }
        Ok(Herder {
            config: config.clone(),
            matchers,
        })
    }

    /// The `[herder]` settings it was made from.
    pub fn config(&self) -> &HerderConfig {
        &self.config
    }

    /// Whether jobs of `project` are herded (`herder.projects`, without case).
    pub fn herds(&self, project: &str) -> bool {
        self.config
            .projects
            .iter()
            .any(|p| p.eq_ignore_ascii_case(project))
    }

    /// The tail of job `id`'s trace (at most `trace_tail_bytes`) when judging `job` needs it,
    /// else `None` without a request.
    pub async fn trace_for(
        &self,
        gitlab: &GitLab,
        project: &str,
        id: u64,
        job: &JobFacts<'_>,
    ) -> Result<Option<String>, GitLabError> {
        if !self.needs_trace(job) {
            return Ok(None);
        }
        let max = usize::try_from(self.config.trace_tail_bytes).unwrap_or(usize::MAX);
        gitlab.job_trace_tail(project, id, max).await.map(Some)
    }

    /// Whether judging `job` may need its trace: some matcher whose other criteria hold has
    /// `messages`, and no matcher before it decides without them.
    pub fn needs_trace(&self, job: &JobFacts<'_>) -> bool {
        self.matchers
            .iter()
            .find(|c| c.facts_match(job))
            .is_some_and(|c| !c.messages.is_empty())
    }

    /// The first matcher `job` matches; `trace` is the tail of its trace, if it was read (a
    /// matcher with `messages` does not match without it).
    pub fn judge<'h>(&'h self, job: &JobFacts<'_>, trace: Option<&str>) -> Verdict<'h> {
        for c in &self.matchers {
            if !c.facts_match(job) {
                continue;
            }
            if c.messages.is_empty() {
                return Verdict::Matched {
                    matcher: &c.matcher,
                    message: None,
                };
            }
            if let Some(line) = trace.and_then(|t| c.find_message(t)) {
                return Verdict::Matched {
                    matcher: &c.matcher,
                    message: Some(line),
                };
            }
        }
        Verdict::NoMatcher
    }
}

impl Compiled {
    fn facts_match(&self, job: &JobFacts<'_>) -> bool {
        let m = &self.matcher;
        m.job_status
            .iter()
            .any(|s| s.eq_ignore_ascii_case(job.status))
            && self
                .job_name
                .as_ref()
                .is_none_or(|re| re.is_match(job.name))
            && (m.failure_reason.is_empty()
                || job
                    .failure_reason
                    .is_some_and(|r| m.failure_reason.iter().any(|want| want == r)))
    }

    /// The first trace line holding one of the messages (the earliest message in the list
    /// that is found wins), trimmed and bounded.
    fn find_message(&self, trace: &str) -> Option<String> {
        for m in &self.messages {
            let at = match m {
                Message::Substring(s) => trace.find(s.as_str()),
                Message::Pattern(re) => re.find(trace).map(|found| found.start()),
            };
            if let Some(at) = at {
                let start = trace[..at].rfind('\n').map_or(0, |i| i + 1);
                let end = trace[at..].find('\n').map_or(trace.len(), |i| at + i);
                let line: String = trace[start..end]
                    .trim()
                    .chars()
                    .take(MAX_MESSAGE_CHARS)
                    .collect();
                return Some(line);
            }
        }
        None
    }
}

/// What the herder would do with one job, read from GitLab without changing anything
/// (`shepherd herder check`, and `herder <job url>` in chat).
#[derive(Debug, Clone)]
pub struct Inspection {
    pub project: String,
    pub job: Job,
    /// Whether the job's project is in `herder.projects`.
    pub herded: bool,
    /// The attempts of the job before it in its pipeline: its retries so far.
    pub retries: usize,
    /// The matcher that matched, and the trace line that did.
    pub matcher: Option<HerderMatcher>,
    pub message: Option<String>,
    pub plan: Plan,
}

/// What the herder does with a job (were its project herded).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Plan {
    /// No matcher matched; `failed`: the job failed (counted as unmatched).
    NoMatcher {
        failed: bool,
    },
    /// A `retry` matcher: what [`retry::decide`] says.
    Retry(retry::Decision),
    Report,
    Alert,
}

impl Herder {
    /// Reads job `id` of `project`, its attempts and (when a matcher needs it) its trace's tail,
    /// and judges it.
    pub async fn inspect(
        &self,
        gitlab: &GitLab,
        project: &str,
        id: u64,
    ) -> Result<Inspection, GitLabError> {
        let job = gitlab.job(project, id).await?;
        let attempts = match &job.pipeline {
            Some(p) => gitlab.job_attempts(project, p.id, &job.name).await?,
            None => vec![job.clone()],
        };
        let retries = attempts.iter().filter(|j| j.id < id).count();
        let facts = JobFacts {
            status: job.status.as_str(),
            name: &job.name,
            failure_reason: job.failure_reason.as_deref(),
        };
        let trace = self.trace_for(gitlab, project, id, &facts).await?;
        let (matcher, message, plan) = match self.judge(&facts, trace.as_deref()) {
            Verdict::NoMatcher => (
                None,
                None,
                Plan::NoMatcher {
                    failed: job.status == JobStatus::Failed,
                },
            ),
            Verdict::Matched { matcher, message } => {
                let plan = match matcher.action {
                    HerderAction::Retry => Plan::Retry(retry::decide(matcher, id, &attempts)),
                    HerderAction::Report => Plan::Report,
                    HerderAction::Alert => Plan::Alert,
                };
                (Some(matcher.clone()), message, plan)
            }
        };
        Ok(Inspection {
            project: project.to_string(),
            herded: self.herds(project),
            job,
            retries,
            matcher,
            message,
            plan,
        })
    }
}

/// A `messages` entry: `/regex/flags` (flags from `imsx`), or a substring.
fn message(text: &str) -> Result<Message, String> {
    let Some(body) = text.strip_prefix('/') else {
        return Ok(Message::Substring(text.to_string()));
    };
    let Some(close) = body.rfind('/') else {
        return Ok(Message::Substring(text.to_string()));
    };
    let (pattern, flags) = (&body[..close], &body[close + 1..]);
    let mut builder = RegexBuilder::new(pattern);
    for flag in flags.chars() {
        match flag {
            'i' => builder.case_insensitive(true),
            'm' => builder.multi_line(true),
            's' => builder.dot_matches_new_line(true),
            'x' => builder.ignore_whitespace(true),
            other => {
                return Err(format!(
                    "{text:?}: unknown regular expression flag {other:?} (expected i, m, s or x)"
                ));
            }
        };
    }
    builder
        .build()
        .map(Message::Pattern)
        .map_err(|e| format!("{text:?} is not a valid regular expression: {e}"))
}

/// A job's web URL on the GitLab at `base` (`<base>/<project path>/-/jobs/<id>`): its project
/// path and id. A URL of another instance, or not of a job, is refused with the reason.
pub fn parse_job_url(base: &url::Url, text: &str) -> Result<(String, u64), String> {
    let url = url::Url::parse(text.trim()).map_err(|e| format!("{text:?} is not a URL: {e}"))?;
    let same_instance = url.scheme() == base.scheme()
        && url.host_str() == base.host_str()
        && url.port_or_known_default() == base.port_or_known_default();
    let prefix = base.path().trim_end_matches('/');
    let path = url.path();
    let rest = match path.strip_prefix(prefix) {
        Some(rest) if same_instance && rest.starts_with('/') => &rest[1..],
        _ => {
            return Err(format!(
                "{text:?} is not on the GitLab at {base} (the herder reads jobs there only)"
            ));
        }
    };
    let not_a_job =
        || format!("{text:?} is not a job URL (expected {base}<group>/<project>/-/jobs/<id>)");
    let (project, id) = rest.split_once("/-/jobs/").ok_or_else(not_a_job)?;
    let id = id.trim_end_matches('/');
    if !project.contains('/') || id.is_empty() || !id.bytes().all(|b| b.is_ascii_digit()) {
        return Err(not_a_job());
    }
    let id = id.parse::<u64>().map_err(|_| not_a_job())?;
    Ok((project.to_string(), id))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn matcher(name: &str, action: HerderAction) -> HerderMatcher {
        HerderMatcher {
            name: name.into(),
            description: None,
            action,
            job_status: vec!["failed".into()],
            job_name: None,
            failure_reason: Vec::new(),
            messages: Vec::new(),
            retry_delays: vec!["5m".into()],
            retry_limit: 3,
        }
    }

    fn herder(matchers: Vec<HerderMatcher>) -> Herder {
        Herder::new(&HerderConfig {
            projects: vec!["g/p".into()],
            targets: Vec::new(),
            trace_tail_bytes: 4096,
            matchers,
        })
        .expect("compiles")
    }

    fn job<'a>(status: &'a str, name: &'a str, reason: Option<&'a str>) -> JobFacts<'a> {
        JobFacts {
            status,
            name,
            failure_reason: reason,
        }
    }

    fn name_of(v: &Verdict<'_>) -> Option<String> {
        match v {
            Verdict::Matched { matcher, .. } => Some(matcher.name.clone()),
            Verdict::NoMatcher => None,
        }
    }

    fn sample() -> Herder {
        let mut runner = matcher("runner", HerderAction::Retry);
        runner.failure_reason = vec!["runner_system_failure".into()];
        runner.job_name = Some("^(build|test) ".into());
        let mut reset = matcher("reset", HerderAction::Retry);
        reset.messages = vec![
            "Connection reset by peer".into(),
            "/oom-?kill(ed)?/i".into(),
        ];
        let mut lint = matcher("lint", HerderAction::Report);
        lint.job_name = Some("^lint$".into());
        herder(vec![runner, reset, lint])
    }

    #[test]
    fn the_first_matcher_whose_every_criterion_holds_decides() {
        let h = sample();
        let runner = job("failed", "build x86_64", Some("runner_system_failure"));
        assert!(!h.needs_trace(&runner), "decided without the trace");
        assert_eq!(name_of(&h.judge(&runner, None)).as_deref(), Some("runner"));
        // The name does not match the first: the trace is needed for the second.
        let other = job("failed", "publish", Some("runner_system_failure"));
        assert!(h.needs_trace(&other));
        let trace = "step 1\nerror: Connection reset by peer (os error 104)\nstep 3";
        let v = h.judge(&other, Some(trace));
        assert_eq!(
            v,
            Verdict::Matched {
                matcher: &h.matchers[1].matcher,
                message: Some("error: Connection reset by peer (os error 104)".into()),
            }
        );
        // Not in the trace: on to the next matcher, which does not match either.
        assert_eq!(h.judge(&other, Some("all fine")), Verdict::NoMatcher);
        assert_eq!(
            h.judge(&other, None),
            Verdict::NoMatcher,
            "no trace, no message match"
        );
        let lint = job("failed", "lint", None);
        assert_eq!(name_of(&h.judge(&lint, Some(""))).as_deref(), Some("lint"));
    }

    #[test]
    fn regex_messages_take_flags_and_successes_and_cancels_match_nothing() {
        let h = sample();
        let j = job("failed", "publish", None);
        let v = h.judge(&j, Some("...\n[ 12.3] Task OOM-Killed by the kernel\n"));
        assert_eq!(name_of(&v).as_deref(), Some("reset"));
        for status in ["success", "canceled", "running"] {
            let j = job(status, "build x86_64", Some("runner_system_failure"));
            assert!(!h.needs_trace(&j));
            assert_eq!(
                h.judge(&j, Some("Connection reset by peer")),
                Verdict::NoMatcher
            );
        }
    }

    #[test]
    fn a_matched_line_is_bounded() {
        let mut m = matcher("long", HerderAction::Alert);
        m.messages = vec!["needle".into()];
        let h = herder(vec![m]);
        let trace = format!("{}needle{}", "x".repeat(500), "y".repeat(500));
        match h.judge(&job("failed", "j", None), Some(&trace)) {
            Verdict::Matched {
                message: Some(line),
                ..
            } => {
                assert_eq!(line.chars().count(), MAX_MESSAGE_CHARS)
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn job_urls_of_the_configured_instance_only() {
        let base = url::Url::parse("https://gitlab.example.com/").expect("url");
        assert_eq!(
            parse_job_url(&base, "https://gitlab.example.com/cki/pipeline/-/jobs/123"),
            Ok(("cki/pipeline".to_string(), 123))
        );
        assert_eq!(
            parse_job_url(&base, " https://gitlab.example.com/a/b/c/-/jobs/7/ "),
            Ok(("a/b/c".to_string(), 7))
        );
        let prefixed = url::Url::parse("http://127.0.0.1:8929/gitlab/").expect("url");
        assert_eq!(
            parse_job_url(&prefixed, "http://127.0.0.1:8929/gitlab/g/p/-/jobs/5"),
            Ok(("g/p".to_string(), 5))
        );
        for bad in [
            "https://evil.example.com/cki/pipeline/-/jobs/123",
            "http://gitlab.example.com/cki/pipeline/-/jobs/123",
            "https://gitlab.example.com/cki/pipeline/-/pipelines/123",
            "https://gitlab.example.com/cki/pipeline/-/jobs/12x",
            "https://gitlab.example.com/pipeline/-/jobs/1",
            "not a url",
        ] {
            assert!(parse_job_url(&base, bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn bad_patterns_name_their_keys() {
        let mut a = matcher("a", HerderAction::Retry);
        a.job_name = Some("(unclosed".into());
        let e = Herder::new(&HerderConfig {
            projects: Vec::new(),
            targets: Vec::new(),
            trace_tail_bytes: 4096,
            matchers: vec![a],
        })
        .err()
        .expect("refused");
        assert_eq!(e.key, "herder.matchers[0].job_name");
        let mut b = matcher("b", HerderAction::Retry);
        b.messages = vec!["plain".into(), "/x[/q".into()];
        let e = Herder::new(&HerderConfig {
            projects: Vec::new(),
            targets: Vec::new(),
            trace_tail_bytes: 4096,
            matchers: vec![matcher("ok", HerderAction::Report), b],
        })
        .err()
        .expect("refused");
        assert_eq!(e.key, "herder.matchers[1].messages[1]");
        assert!(
            e.detail.contains("unknown regular expression flag 'q'"),
            "{e}"
        );
    }
}
