//! `shepherd herder check --job-url URL`: what the herder would do with one job, changing
//! nothing (only GitLab reads: the job, its earlier attempts, and the tail of its trace when a
//! matcher needs it).

use std::fmt::Write as _;
use std::sync::Arc;

use anyhow::{Context, bail};
use shepherd_config::{Config, HerderAction};
use shepherd_core::gitlab::GitLab;
use shepherd_core::herder::{Herder, JobFacts, Verdict, parse_job_url};
use shepherd_core::metrics::Metrics;

/// The report printed for `job_url`.
pub async fn check(config: &Config, job_url: &str) -> anyhow::Result<String> {
    let Some(herder_config) = &config.herder else {
        bail!("the herder is not enabled: there is no [herder] section in the configuration");
    };
    let herder = Herder::new(herder_config)?;
    let (project, id) =
        parse_job_url(&config.gitlab.url, job_url).map_err(|why| anyhow::anyhow!(why))?;
    let metrics = Arc::new(Metrics::new().context("creating metrics")?);
    let gitlab = GitLab::new(crate::app::gitlab_settings(config), metrics)?;

    let job = gitlab
        .job(&project, id)
        .await
        .with_context(|| format!("reading job {id} of {project}"))?;
    let mut out = String::new();
    let reason = job.failure_reason.as_deref();
    let _ = writeln!(
        out,
        "job {} `{}` of {project}: {}{} — {}",
        job.id,
        job.name,
        job.status.as_str(),
        reason.map(|r| format!(" ({r})")).unwrap_or_default(),
        job.web_url
    );
    let herded = herder.herds(&project);
    let attempts = match &job.pipeline {
        Some(pipeline) => {
            let _ = writeln!(
                out,
                "pipeline {} ({}): {}",
                pipeline.id, pipeline.git_ref, pipeline.status
            );
            Some(
                gitlab
                    .job_attempts(&project, pipeline.id, &job.name)
                    .await?,
            )
        }
        None => None,
    };
    let newer = attempts
        .as_ref()
        .and_then(|all| all.iter().rev().find(|j| j.id > job.id).cloned());
    let earlier = attempts
        .as_ref()
        .map_or(0, |all| all.iter().filter(|j| j.id < job.id).count());
    let _ = writeln!(
        out,
        "retries so far: {earlier} (attempt {} of `{}` in its pipeline)",
        earlier + 1,
        job.name
    );

    let facts = JobFacts {
        status: job.status.as_str(),
        name: &job.name,
        failure_reason: reason,
    };
    let trace = herder.trace_for(&gitlab, &project, id, &facts).await?;
    let verdict = herder.judge(&facts, trace.as_deref());
    let action = match &verdict {
        Verdict::NoMatcher => {
            let _ = writeln!(out, "matcher: none");
            if job.status.as_str() == "failed" {
                "none — a failed job no matcher knows (counted as unmatched)".to_string()
            } else {
                "none".to_string()
            }
        }
        Verdict::Matched { matcher, message } => {
            let _ = writeln!(
                out,
                "matcher: {}{}",
                matcher.name,
                matcher
                    .description
                    .as_deref()
                    .map(|d| format!(" — {d}"))
                    .unwrap_or_default()
            );
            if let Some(line) = message {
                let _ = writeln!(out, "matched: {line}");
            }
            match matcher.action {
                HerderAction::Retry if newer.is_some() => format!(
                    "none — already retried (job {} is newer)",
                    newer.as_ref().map_or(0, |j| j.id)
                ),
                HerderAction::Retry if earlier as u64 >= u64::from(matcher.retry_limit) => format!(
                    "give up — {earlier} of {} retries made; would say so in the targets",
                    matcher.retry_limit
                ),
                HerderAction::Retry => {
                    let n = u32::try_from(earlier).unwrap_or(u32::MAX).saturating_add(1);
                    format!(
                        "retry {n} of {} after {}",
                        matcher.retry_limit,
                        humantime::format_duration(matcher.retry_delay(n))
                    )
                }
                HerderAction::Report => "report — one line in the targets".to_string(),
                HerderAction::Alert => "alert — one alert line in the targets".to_string(),
            }
        }
    };
    let action = if herded {
        action
    } else {
        format!("none — {project} is not in herder.projects (would be: {action})")
    };
    let _ = writeln!(out, "action: {action}");
    Ok(out)
}
