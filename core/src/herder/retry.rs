//! The herder's retries, exactly once per job.
//!
//! When a Job Hook's job matches a `retry` matcher, [`decide`] says what to do from the job's
//! attempts in its pipeline: retry it (the how-manyth retry, after which delay), give up at the
//! matcher's `retry_limit`, or nothing when a newer attempt exists (someone retried it already).
//! A retry is a queue request of kind [`RETRY_KIND`], due after the delay (the queue keeps it
//! across restarts; no task sleeps) and keyed by project and job, so a redelivered hook
//! schedules it once. When it is due, [`carry_out`] retries the job unless that would be stale:
//!
//! 1. a newer attempt of the job exists: if this request had started a retry, that attempt is
//!    its own (recovered after a crash or an ambiguous answer); otherwise someone else retried
//!    it, and the herder does not;
//! 2. the job's pipeline was superseded by a newer pipeline of the same ref (or of the same
//!    merge request): never retried (a herder that paused during an outage must not retry
//!    stale pipelines when it ends);
//! 3. "retry started" is recorded before the request is sent, and an ambiguous answer is settled
//!    by looking for the newer attempt ([`crate::once`]).
//!
//! Pipelines shepherd made for a person (they carry `SHEPHERD_REQUEST_ID`: retriggers, canaries)
//! are herded like any other, and are never superseded: each is a one-off someone is waiting for,
//! and a newer pipeline of its ref says nothing about it. Nor do they supersede the ref's own
//! pipelines.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use shepherd_config::HerderMatcher;

use super::actions::{Action, ActionKind};
use crate::effects;
use crate::gitlab::{GitLab, GitLabError, Job, PipelineQuery};
use crate::once::{self, CreateFailure, OnceError};
use crate::retrigger::REQUEST_ID_VARIABLE;
use crate::store::{Store, StoreError};

/// The queue kind of a retry that is due later.
pub const RETRY_KIND: &str = "herder-retry";

/// The effect a retry request records before it sends the retry.
const EFFECT_STARTED: &str = "herder-retry-started";

/// How many newer pipelines of a ref are looked at for one that supersedes a job's pipeline.
const SUPERSEDING_LOOKED_AT: u32 = 20;

/// Ambiguous answers to one retry in a row before the request is tried again later.
const RETRY_ATTEMPTS: u32 = 3;

/// A retry decided on and stored, to be carried out when it is due.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlannedRetry {
    /// The project's path (`group/project`).
    pub project: String,
    pub job_id: u64,
    pub job_name: String,
    pub job_url: String,
    pub pipeline_id: u64,
    /// The pipeline's ref, from the Job Hook (empty: read from the pipeline when needed).
    #[serde(default)]
    pub git_ref: String,
    pub matcher: String,
    /// Which retry of the job this is (1 = the first).
    pub retry: u32,
    /// The matcher's `retry_limit`.
    pub limit: u32,
}

impl PlannedRetry {
    /// The queue's dedup key: one retry per job, however often its hook comes.
    pub fn dedup_key(&self) -> String {
        format!("{RETRY_KIND}:{}:{}", self.project, self.job_id)
    }
}

impl PlannedRetry {
    /// This retry's action of `kind`, to record (see [`super::actions`]).
    pub fn action(&self, kind: ActionKind) -> Action {
        Action {
            kind,
            project: self.project.clone(),
            job_id: self.job_id,
            job_name: self.job_name.clone(),
            job_url: self.job_url.clone(),
            matcher: self.matcher.clone(),
            retry: Some(self.retry),
            new_job_id: None,
            detail: None,
            at: 0,
        }
    }
}

/// What the herder does with a job a `retry` matcher matched.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Retry it after `delay`: retry number `retry` of the job.
    Retry { retry: u32, delay: Duration },
    /// `retries` were made (the matcher's `retry_limit`): say so and stop.
    GiveUp { retries: u32 },
    /// A newer attempt of the job exists already.
    AlreadyRetried { newer: u64 },
}

/// Decides from `attempts` — every job of the pipeline with the job's name, retried ones
/// included — what to do with job `job_id`. Its retries so far are the attempts before it,
/// whoever made them.
pub fn decide(matcher: &HerderMatcher, job_id: u64, attempts: &[Job]) -> Decision {
    if let Some(newer) = attempts
        .iter()
        .map(|j| j.id)
        .filter(|&id| id > job_id)
        .max()
    {
        return Decision::AlreadyRetried { newer };
    }
    let retries =
        u32::try_from(attempts.iter().filter(|j| j.id < job_id).count()).unwrap_or(u32::MAX);
    if retries >= matcher.retry_limit {
        return Decision::GiveUp { retries };
    }
    let retry = retries + 1;
    Decision::Retry {
        retry,
        delay: matcher.retry_delay(retry),
    }
}

/// Reads the attempts of job `job_id` (named `name`, in pipeline `pipeline_id` of `project`)
/// and [`decide`]s.
pub async fn plan(
    gitlab: &GitLab,
    matcher: &HerderMatcher,
    project: &str,
    pipeline_id: u64,
    name: &str,
    job_id: u64,
) -> Result<Decision, GitLabError> {
    let attempts = gitlab.job_attempts(project, pipeline_id, name).await?;
    Ok(decide(matcher, job_id, &attempts))
}

/// What became of a due retry.
#[derive(Debug, Clone, PartialEq)]
pub enum RetryOutcome {
    /// The job was retried: `job` is the new attempt (`recovered`: an earlier try of this
    /// request had made it).
    Retried { job: Job, recovered: bool },
    /// Non-production mode: it would have been retried; nothing was sent.
    WouldRetry,
    /// Someone retried the job already: `newer` is that attempt.
    AlreadyRetried { newer: u64 },
    /// The job's pipeline was superseded by pipeline `by`.
    Superseded { by: u64 },
    /// The job (or its pipeline) no longer exists.
    Gone,
}

#[derive(Debug, thiserror::Error)]
pub enum RetryError {
    #[error(transparent)]
    GitLab(#[from] GitLabError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("the answers to the retry of job {job} were ambiguous {attempts} times in a row")]
    StillAmbiguous { job: u64, attempts: u32 },
}

impl RetryError {
    /// True when the request should be tried again later.
    pub fn is_retryable(&self) -> bool {
        match self {
            RetryError::GitLab(e) => e.is_retryable(),
            RetryError::Store(_) | RetryError::StillAmbiguous { .. } => true,
        }
    }

    /// One sentence for the herder's targets. Never contains the token.
    pub fn user_message(&self) -> String {
        match self {
            RetryError::GitLab(e) => e.user_message(),
            other => other.to_string(),
        }
    }
}

/// Carries out `plan`, stored as request `request_id`, exactly once (see the module's rules).
/// In non-production mode (`production` false) it checks the same and sends nothing.
pub async fn carry_out(
    gitlab: &GitLab,
    store: &Store,
    request_id: &str,
    plan: &PlannedRetry,
    production: bool,
) -> Result<RetryOutcome, RetryError> {
    let project = plan.project.as_str();
    let started = effects::get(store, request_id, EFFECT_STARTED)
        .await?
        .is_some();
    let attempts = match gitlab
        .job_attempts(project, plan.pipeline_id, &plan.job_name)
        .await
    {
        Ok(attempts) => attempts,
        Err(GitLabError::NotFound { .. }) => return Ok(RetryOutcome::Gone),
        Err(e) => return Err(e.into()),
    };
    if let Some(newer) = newest_after(&attempts, plan.job_id) {
        return Ok(if started {
            RetryOutcome::Retried {
                job: newer,
                recovered: true,
            }
        } else {
            RetryOutcome::AlreadyRetried { newer: newer.id }
        });
    }
    if !attempts.iter().any(|j| j.id == plan.job_id) {
        return Ok(RetryOutcome::Gone);
    }
    let known_ref = Some(plan.git_ref.as_str()).filter(|r| !r.is_empty());
    match superseded_by(gitlab, project, plan.pipeline_id, known_ref).await {
        Ok(Some(by)) => return Ok(RetryOutcome::Superseded { by }),
        Ok(None) => {}
        Err(GitLabError::NotFound { .. }) => return Ok(RetryOutcome::Gone),
        Err(e) => return Err(e.into()),
    }
    if !production {
        return Ok(RetryOutcome::WouldRetry);
    }
    if !started {
        effects::put(store, request_id, EFFECT_STARTED, "1").await?;
    }
    let created = once::create_once(
        "job retry",
        false,
        RETRY_ATTEMPTS,
        move || async move {
            let attempts = gitlab
                .job_attempts(project, plan.pipeline_id, &plan.job_name)
                .await?;
            Ok::<_, GitLabError>(newest_after(&attempts, plan.job_id))
        },
        move || async move {
            gitlab
                .retry_job(project, plan.job_id)
                .await
                .map_err(|e| match e {
                    GitLabError::Ambiguous { detail, .. } => CreateFailure::Ambiguous(detail),
                    other => CreateFailure::Failed(other),
                })
        },
    )
    .await
    .map_err(|e| match e {
        OnceError::Failed(e) => RetryError::GitLab(e),
        OnceError::StillAmbiguous { attempts, .. } => RetryError::StillAmbiguous {
            job: plan.job_id,
            attempts,
        },
    })?;
    let recovered = created.recovered();
    Ok(RetryOutcome::Retried {
        job: created.into_inner(),
        recovered,
    })
}

/// The newest attempt after job `id`, if any.
fn newest_after(attempts: &[Job], id: u64) -> Option<Job> {
    attempts
        .iter()
        .filter(|j| j.id > id)
        .max_by_key(|j| j.id)
        .cloned()
}

/// The newest pipeline that supersedes pipeline `id`: a newer one of the same ref (of any of
/// a merge request's refs, for a merge request pipeline) that shepherd did not make for
/// someone. `None` when `id` itself is such a one-off. `git_ref` is the pipeline's ref when
/// the caller knows it (else it is read).
pub async fn superseded_by(
    gitlab: &GitLab,
    project: &str,
    id: u64,
    git_ref: Option<&str>,
) -> Result<Option<u64>, GitLabError> {
    if carries_request_id(gitlab, project, id).await? {
        return Ok(None);
    }
    let git_ref = match git_ref {
        Some(r) => r.to_string(),
        None => gitlab.pipeline(project, id).await?.git_ref,
    };
    let mut newest = None;
    for git_ref in superseding_refs(&git_ref) {
        let query = PipelineQuery {
            git_ref: Some(git_ref),
            per_page: Some(SUPERSEDING_LOOKED_AT),
            ..PipelineQuery::default()
        };
        // Newest first: the first that is not a one-off decides for this ref.
        for candidate in gitlab.pipelines(project, &query).await? {
            if candidate.id <= id || newest.is_some_and(|n| n >= candidate.id) {
                break;
            }
            if !carries_request_id(gitlab, project, candidate.id).await? {
                newest = Some(candidate.id);
                break;
            }
        }
    }
    Ok(newest)
}

async fn carries_request_id(gitlab: &GitLab, project: &str, id: u64) -> Result<bool, GitLabError> {
    Ok(gitlab
        .pipeline_variables(project, id)
        .await?
        .iter()
        .any(|v| v.key == REQUEST_ID_VARIABLE))
}

/// The refs whose newer pipelines supersede a pipeline of `git_ref`: the ref itself, and for a
/// merge request's ref (`refs/merge-requests/<iid>/head`, `/merge` or `/train`) all three.
pub fn superseding_refs(git_ref: &str) -> Vec<String> {
    let mr = git_ref
        .strip_prefix("refs/merge-requests/")
        .and_then(|rest| rest.split_once('/'))
        .filter(|(iid, kind)| {
            !iid.is_empty()
                && iid.bytes().all(|b| b.is_ascii_digit())
                && ["head", "merge", "train"].contains(kind)
        });
    match mr {
        Some((iid, _)) => ["head", "merge", "train"]
            .iter()
            .map(|kind| format!("refs/merge-requests/{iid}/{kind}"))
            .collect(),
        None => vec![git_ref.to_string()],
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gitlab::JobStatus;
    use shepherd_config::HerderAction;

    fn job(id: u64) -> Job {
        Job {
            id,
            name: "test x86_64".into(),
            stage: "test".into(),
            status: JobStatus::Failed,
            web_url: format!("https://gitlab.example.com/g/p/-/jobs/{id}"),
            allow_failure: false,
            failure_reason: Some("runner_system_failure".into()),
            pipeline: None,
        }
    }

    fn matcher(limit: u32) -> HerderMatcher {
        HerderMatcher {
            name: "runner".into(),
            description: None,
            action: HerderAction::Retry,
            job_status: vec!["failed".into()],
            job_name: None,
            failure_reason: Vec::new(),
            messages: Vec::new(),
            retry_delays: vec!["1m".into(), "5m".into()],
            retry_limit: limit,
        }
    }

    #[test]
    fn retries_count_the_earlier_attempts_and_stop_at_the_limit() {
        let m = matcher(2);
        assert_eq!(
            decide(&m, 10, &[job(10)]),
            Decision::Retry {
                retry: 1,
                delay: Duration::from_secs(60)
            }
        );
        assert_eq!(
            decide(&m, 11, &[job(10), job(11)]),
            Decision::Retry {
                retry: 2,
                delay: Duration::from_secs(300)
            }
        );
        assert_eq!(
            decide(&m, 12, &[job(11), job(12), job(10)]),
            Decision::GiveUp { retries: 2 }
        );
        assert_eq!(
            decide(&matcher(0), 10, &[job(10)]),
            Decision::GiveUp { retries: 0 },
            "retry_limit 0: never retried"
        );
        // The last delay repeats.
        assert_eq!(
            decide(&matcher(5), 13, &[job(10), job(11), job(12), job(13)]),
            Decision::Retry {
                retry: 4,
                delay: Duration::from_secs(300)
            }
        );
    }

    #[test]
    fn a_job_with_a_newer_attempt_is_not_retried() {
        assert_eq!(
            decide(&matcher(3), 10, &[job(10), job(14), job(12)]),
            Decision::AlreadyRetried { newer: 14 }
        );
        assert_eq!(
            newest_after(&[job(10), job(14), job(12)], 10).map(|j| j.id),
            Some(14)
        );
        assert_eq!(newest_after(&[job(10)], 10), None);
    }

    #[test]
    fn a_merge_requests_pipelines_supersede_each_other_across_its_refs() {
        assert_eq!(superseding_refs("main"), vec!["main".to_string()]);
        assert_eq!(
            superseding_refs("refs/merge-requests/12/merge"),
            vec![
                "refs/merge-requests/12/head".to_string(),
                "refs/merge-requests/12/merge".to_string(),
                "refs/merge-requests/12/train".to_string(),
            ]
        );
        for plain in [
            "refs/merge-requests/x/head",
            "refs/merge-requests//head",
            "refs/merge-requests/12/other",
            "refs/merge-requests/12",
        ] {
            assert_eq!(superseding_refs(plain), vec![plain.to_string()], "{plain}");
        }
    }
}
