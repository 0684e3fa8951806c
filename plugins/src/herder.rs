//! The herder's wording and its command: the lines it says in its targets (a `report` or
//! `alert` match, a job given up on, a retry GitLab refused, a retry non-production mode only
//! describes), what it would do with one job (`herder <job url>`, and `shepherd herder check`),
//! and what it did lately (`herder`).

use async_trait::async_trait;
use shepherd_commands::Command;
use shepherd_config::{HerderAction, HerderMatcher};
use shepherd_core::herder::actions::{self, Action, ActionKind};
use shepherd_core::herder::retry::{Decision, PlannedRetry};
use shepherd_core::herder::{Inspection, Plan};

use crate::util::{gitlab_error, local_project};
use crate::{Call, HelpEntry, Outcome, Plugin, PluginError, Services};

/// The line a `report` or `alert` match says: the matcher, the job, its URL and what matched.
/// An `alert` is marked as one, the way alert lines show their severity.
pub fn match_line(matcher: &HerderMatcher, job: &str, url: &str, message: Option<&str>) -> String {
    let mark = match matcher.action {
        HerderAction::Alert => "[ALERT] ",
        _ => "",
    };
    let what = matcher.description.as_deref().unwrap_or(&matcher.name);
    match message {
        Some(m) => format!(
            "{mark}herder: {} — job `{job}` {url}: {what}: {m}",
            matcher.name
        ),
        None => format!("{mark}herder: {} — job `{job}` {url}: {what}", matcher.name),
    }
}

/// A job retried `retries` times (its matcher's limit) that failed again.
pub fn given_up_line(matcher: &HerderMatcher, job: &str, url: &str, retries: u32) -> String {
    let what = matcher.description.as_deref().unwrap_or(&matcher.name);
    format!(
        "herder: given up after {retries} {} — job `{job}` {url} failed again: {what} ({})",
        if retries == 1 { "retry" } else { "retries" },
        matcher.name
    )
}

/// A retry that GitLab refused (the job cannot be retried, the token may not).
pub fn retry_failed_line(plan: &PlannedRetry, why: &str) -> String {
    format!(
        "herder: could not retry job `{}` {} ({}, retry {} of {}): {why}",
        plan.job_name, plan.job_url, plan.matcher, plan.retry, plan.limit
    )
}

/// A due retry in non-production mode.
pub fn would_retry_line(plan: &PlannedRetry) -> String {
    format!(
        "herder: non-production mode: would retry job `{}` {} now ({}, retry {} of {}) — nothing was sent.",
        plan.job_name, plan.job_url, plan.matcher, plan.retry, plan.limit
    )
}

/// What `shepherd herder check` prints and `herder <job url>` says: the job, its pipeline, its
/// retries so far, the matcher and the action.
pub fn inspection_text(i: &Inspection) -> String {
    let job = &i.job;
    let mut lines = vec![format!(
        "job {} `{}` of {}: {}{} — {}",
        job.id,
        job.name,
        i.project,
        job.status.as_str(),
        job.failure_reason
            .as_deref()
            .map(|r| format!(" ({r})"))
            .unwrap_or_default(),
        job.web_url
    )];
    if let Some(p) = &job.pipeline {
        lines.push(format!("pipeline {} ({}): {}", p.id, p.git_ref, p.status));
    }
    lines.push(format!(
        "retries so far: {} (attempt {} of `{}` in its pipeline)",
        i.retries,
        i.retries + 1,
        job.name
    ));
    match &i.matcher {
        None => lines.push("matcher: none".to_string()),
        Some(m) => {
            lines.push(format!(
                "matcher: {}{}",
                m.name,
                m.description
                    .as_deref()
                    .map(|d| format!(" — {d}"))
                    .unwrap_or_default()
            ));
            if let Some(line) = &i.message {
                lines.push(format!("matched: {line}"));
            }
        }
    }
    let limit = i.matcher.as_ref().map_or(0, |m| m.retry_limit);
    let action = match &i.plan {
        Plan::NoMatcher { failed: true } => {
            "none — a failed job no matcher knows (counted as unmatched)".to_string()
        }
        Plan::NoMatcher { failed: false } => "none".to_string(),
        Plan::Retry(Decision::AlreadyRetried { newer }) => {
            format!("none — already retried (job {newer} is newer)")
        }
        Plan::Retry(Decision::GiveUp { retries }) => {
            format!("give up — {retries} of {limit} retries made; would say so in the targets")
        }
        Plan::Retry(Decision::Retry { retry, delay }) => format!(
            "retry {retry} of {limit} after {}",
            humantime::format_duration(*delay)
        ),
        Plan::Report => "report — one line in the targets".to_string(),
        Plan::Alert => "alert — one alert line in the targets".to_string(),
    };
    let action = if i.herded {
        action
    } else {
        format!(
            "none — {} is not in herder.projects (would be: {action})",
            i.project
        )
    };
    lines.push(format!("action: {action}"));
    lines.join("\n")
}

/// One recorded action, for `herder`.
fn action_line(a: &Action) -> String {
    let when = chrono::DateTime::from_timestamp_millis(a.at)
        .map(|t| t.format("%Y-%m-%d %H:%M:%S UTC").to_string())
        .unwrap_or_default();
    let what = match (a.kind, a.retry, a.new_job_id) {
        (ActionKind::Scheduled, _, _) => "retry scheduled".to_string(),
        (ActionKind::Retried, Some(n), Some(new)) => format!("retry {n} made: job {new}"),
        (ActionKind::Retried, _, _) => "retried".to_string(),
        (ActionKind::WouldRetry, _, _) => "would retry (non-production mode)".to_string(),
        (ActionKind::GivenUp, Some(n), _) => format!("given up after {n} retries"),
        (ActionKind::GivenUp, None, _) => "given up".to_string(),
        (ActionKind::Reported, _, _) => "reported".to_string(),
        (ActionKind::Alerted, _, _) => "alerted".to_string(),
        (ActionKind::Skipped, _, _) => "not retried".to_string(),
        (ActionKind::Failed, _, _) => "retry refused".to_string(),
    };
    let detail = a
        .detail
        .as_deref()
        .map(|d| format!(": {d}"))
        .unwrap_or_default();
    format!(
        "{when} {what} — job `{}` {} ({}){detail}",
        a.job_name, a.job_url, a.matcher
    )
}

/// How many actions `herder` lists.
const LATEST: u32 = 10;

pub struct HerderPlugin;

static HERDER: HelpEntry = HelpEntry {
    command: "herder",
    summary: "What the herder did lately (retries scheduled and made, given up, reports), or with a job URL what it would do with that job: the matcher, the action, the retries so far. Changes nothing.",
    examples: &[
        "herder",
        "herder https://gitlab.com/cki-project/pipeline/-/jobs/123",
    ],
    comment_examples: &[],
    default_groups: &["admins", "developers"],
    changes_something: false,
    queued: true,
};

#[async_trait]
impl Plugin for HerderPlugin {
    fn help(&self) -> &'static HelpEntry {
        &HERDER
    }

    fn unavailable(&self, services: &Services) -> Option<String> {
        services.herder.is_none().then(|| {
            "the herder is not enabled on this shepherd: there is no [herder] section in its configuration.".to_string()
        })
    }

    async fn run(&self, services: &Services, call: &Call<'_>) -> Result<Outcome, PluginError> {
        let Command::Herder { job } = call.command else {
            return Err(PluginError::Refuse("herder: unexpected command".into()));
        };
        let Some(herder) = &services.herder else {
            return Err(PluginError::Refuse(
                self.unavailable(services).unwrap_or_default(),
            ));
        };
        let Some(job) = job else {
            let latest = actions::latest(&services.store, LATEST)
                .await
                .map_err(|e| PluginError::Retry(e.to_string()))?;
            if latest.is_empty() {
                return Ok(Outcome::reply(
                    "herder: nothing done yet — no job of a herded project has matched a matcher.",
                ));
            }
            let mut text = format!("herder: the latest {} actions, newest first:", latest.len());
            for a in &latest {
                text.push('\n');
                text.push_str(&action_line(a));
            }
            return Ok(Outcome::reply(text));
        };
        let project = local_project(services, job.instance.as_deref(), &job.project)?;
        let inspection = herder
            .inspect(&services.gitlab, &project, job.id)
            .await
            .map_err(gitlab_error)?;
        Ok(Outcome::reply(inspection_text(&inspection)))
    }
}
