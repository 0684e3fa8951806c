//! The herder's wording: the lines it says in its targets (a `report` or `alert` match, a job
//! given up on, a retry GitLab refused, a retry non-production mode only describes).

use shepherd_config::{HerderAction, HerderMatcher};
use shepherd_core::herder::retry::PlannedRetry;

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
