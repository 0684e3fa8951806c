//! Stored GitLab events, processed by the workers.
//!
//! - Note Hook on a merge request: the comment's commands (lines starting with `@<bot>`) go to the
//!   dispatcher, after the commenter's access level on the project was read from the members API.
//!   The bot's own notes are never commands. Every command is keyed by the note and its words, so
//!   a redelivery or an edit that keeps a command never runs it twice.
//! - Merge Request Hook: `open` posts the welcome comment where configured; an `update` that
//!   pushed commits marks the MR's canary summaries outdated.
//! - Pipeline Hook: updates the watches of that pipeline without an API call.
//! - Job Hook: a finished job of a project in `[herder] projects` is judged by the herder's
//!   matchers (the trace's tail read only when one needs it). A `report` or `alert` match is
//!   said once in the herder's targets; every match is counted by matcher and action, and a
//!   failed job no matcher knows is counted as unmatched. A `retry` match is scheduled as a
//!   `herder-retry` request due after the matcher's delay (one per job, whoever redelivers the
//!   hook), or given up at the matcher's limit with a line in the targets.
//! - `herder-retry` requests: carried out by `shepherd_core::herder::retry::carry_out` exactly
//!   once, never for a job retried already or a superseded pipeline; every action is recorded
//!   (`herder_actions`) once per job, and what needs saying is said in the same transaction.

use std::sync::Arc;

use shepherd_commands::{Frontend, MrRef, ParseContext, parse};
use shepherd_config::{GitlabCommentsConfig, HerderAction, HerderMatcher};
use shepherd_core::Origin;
use shepherd_core::audit::{self, AuditOutcome};
use shepherd_core::canary::{self, Publish};
use shepherd_core::gitlab::AccessLevel;
use shepherd_core::outbox::{self, Outbox};
use shepherd_core::queue::Leased;
use shepherd_core::store::StoreError;
use shepherd_core::watcher::{Observed, Watcher};
use shepherd_plugins::{Services, welcome_text};

use crate::dispatch::{Dispatcher, Inbound, command_key, command_keys};
use shepherd_core::gitlab::webhook::{
    Event, JobEvent, MergeRequestEvent, NoteEvent, PipelineEvent, Stored,
};
use shepherd_core::herder::actions::{self, Action, ActionKind};
use shepherd_core::herder::retry::{self, Decision, PlannedRetry, RETRY_KIND, RetryOutcome};
use shepherd_core::herder::{Herder, JobFacts, Verdict};
use shepherd_core::queue::{Enqueued, NewRequest, Payload};
use shepherd_core::store::now_ms;
use shepherd_plugins::herder as herder_words;

/// The marker every note shepherd writes carries (see `notes.rs`).
pub const MARKER_PREFIX: &str = "<!-- shepherd:";

#[derive(Debug, thiserror::Error)]
pub enum EventError {
    /// Try again later (GitLab or the store unavailable).
    #[error("{0}")]
    Retry(String),
    /// The stored event cannot be processed; it is parked.
    #[error("{0}")]
    Unreadable(String),
}

impl From<StoreError> for EventError {
    fn from(e: StoreError) -> Self {
        EventError::Retry(e.to_string())
    }
}

pub struct GitLabEvents {
    pub dispatcher: Arc<Dispatcher>,
    pub services: Arc<Services>,
    pub watcher: Watcher,
    pub outbox: Outbox,
    /// `None` when comments are not configured: notes and MR events are then ignored.
    pub comments: Option<GitlabCommentsConfig>,
    /// The herder's compiled matchers and settings, when `[herder]` is configured.
    pub herder: Option<Arc<Herder>>,
    pub metrics: Arc<shepherd_core::metrics::Metrics>,
}

impl GitLabEvents {
    pub async fn process(&self, item: &Leased) -> Result<(), EventError> {
        if item.kind == RETRY_KIND {
            return self.retry(item).await;
        }
        let stored: Stored = item
            .payload
            .decode()
            .map_err(|e| EventError::Unreadable(e.to_string()))?;
        let event = stored.event().map_err(EventError::Unreadable)?;
        match event {
            Event::Note(note) => self.note(note).await,
            Event::MergeRequest(mr) => self.merge_request(mr).await,
            Event::Pipeline(pipeline) => self.pipeline(pipeline).await,
            Event::Job(job) => self.job(job).await,
        }
    }

    /// A Job Hook: judged by the herder when its project is herded and the job finished.
    async fn job(&self, job: JobEvent) -> Result<(), EventError> {
        tracing::debug!(job = job.build_id, name = %job.build_name, status = %job.build_status, pipeline = job.pipeline_id, project = job.project_id, "gitlab: job event");
        let Some(herder) = &self.herder else {
            return Ok(());
        };
        let Some(project) = job.project.as_ref().map(|p| p.path_with_namespace.clone()) else {
            return Ok(());
        };
        if !job.status().is_finished() || !herder.herds(&project) {
            return Ok(());
        }
        let facts = JobFacts {
            status: &job.build_status,
            name: &job.build_name,
            failure_reason: job.build_failure_reason.as_deref(),
        };
        let trace = match herder
            .trace_for(&self.services.gitlab, &project, job.build_id, &facts)
            .await
        {
            Ok(trace) => trace,
            Err(e) if !e.is_retryable() => {
                tracing::warn!(job = job.build_id, error = %e, "herder: cannot read the job's trace; judging without it");
                None
            }
            Err(e) => return Err(EventError::Retry(e.to_string())),
        };
        let url = job
            .web_url()
            .unwrap_or_else(|| format!("job {} of {project}", job.build_id));
        match herder.judge(&facts, trace.as_deref()) {
            Verdict::NoMatcher => {
                if job.build_status == "failed" {
                    self.metrics
                        .herder_unmatched
                        .with_label_values(&[project.as_str()])
                        .inc();
                    tracing::info!(job = job.build_id, %url, "herder: a failed job no matcher knows");
                }
                Ok(())
            }
            Verdict::Matched { matcher, message } => {
                self.metrics
                    .herder_problems
                    .with_label_values(&[matcher.name.as_str(), matcher.action.as_str()])
                    .inc();
                tracing::info!(job = job.build_id, %url, matcher = %matcher.name, action = matcher.action.as_str(), "herder: matched");
                let seen = Seen {
                    project: &project,
                    job: &job,
                    url: &url,
                };
                match matcher.action {
                    HerderAction::Retry => self.plan_retry(herder, matcher, &seen).await,
                    HerderAction::Report | HerderAction::Alert => {
                        let text = herder_words::match_line(
                            matcher,
                            &job.build_name,
                            &url,
                            message.as_deref(),
                        );
                        let kind = if matcher.action == HerderAction::Alert {
                            ActionKind::Alerted
                        } else {
                            ActionKind::Reported
                        };
                        let action = seen.action(kind, matcher, None, message);
                        self.record_and_say(herder, &action, Some(&text)).await?;
                        Ok(())
                    }
                }
            }
        }
    }

    /// A `retry` match: schedules the retry after the matcher's delay, or gives up at its
    /// limit, from the job's attempts in its pipeline.
    async fn plan_retry(
        &self,
        herder: &Herder,
        matcher: &HerderMatcher,
        seen: &Seen<'_>,
    ) -> Result<(), EventError> {
        let job = seen.job;
        let decision = match retry::plan(
            &self.services.gitlab,
            matcher,
            seen.project,
            job.pipeline_id,
            &job.build_name,
            job.build_id,
        )
        .await
        {
            Ok(decision) => decision,
            Err(e) if e.is_retryable() => return Err(EventError::Retry(e.to_string())),
            Err(e) => {
                tracing::warn!(job = job.build_id, error = %e, "herder: cannot read the job's attempts; not retrying it");
                return Ok(());
            }
        };
        match decision {
            Decision::AlreadyRetried { newer } => {
                tracing::info!(
                    job = job.build_id,
                    newer,
                    "herder: the job was retried already"
                );
            }
            Decision::GiveUp { retries } => {
                let text = herder_words::given_up_line(matcher, &job.build_name, seen.url, retries);
                let action = seen.action(ActionKind::GivenUp, matcher, Some(retries), None);
                if self.record_and_say(herder, &action, Some(&text)).await? {
                    self.metrics
                        .herder_given_up
                        .with_label_values(&[matcher.name.as_str()])
                        .inc();
                    tracing::warn!(job = job.build_id, url = %seen.url, retries, matcher = %matcher.name, "herder: given up");
                }
            }
            Decision::Retry { retry, delay } => {
                let plan = PlannedRetry {
                    project: seen.project.to_string(),
                    job_id: job.build_id,
                    job_name: job.build_name.clone(),
                    job_url: seen.url.to_string(),
                    pipeline_id: job.pipeline_id,
                    git_ref: job.git_ref.clone(),
                    matcher: matcher.name.clone(),
                    retry,
                    limit: matcher.retry_limit,
                };
                let payload = serde_json::to_value(&plan)
                    .map(Payload::from)
                    .map_err(|e| EventError::Unreadable(e.to_string()))?;
                let delay_ms = i64::try_from(delay.as_millis()).unwrap_or(i64::MAX / 2);
                let request = NewRequest {
                    kind: RETRY_KIND.to_string(),
                    origin: Origin::new("gitlab", seen.project),
                    identity: "herder".to_string(),
                    payload,
                    dedup_key: Some(plan.dedup_key()),
                    after: None,
                    not_before: Some(now_ms().saturating_add(delay_ms)),
                };
                let enqueued = self.dispatcher.queue.enqueue(request).await?;
                if let Enqueued::New(id) = &enqueued {
                    tracing::info!(job = job.build_id, request = %id, retry, limit = matcher.retry_limit, delay = %humantime::format_duration(delay), "herder: retry scheduled");
                }
                let mut action = seen.action(ActionKind::Scheduled, matcher, Some(retry), None);
                action.detail = Some(format!(
                    "retry {retry} of {} after {}",
                    matcher.retry_limit,
                    humantime::format_duration(delay)
                ));
                self.record_and_say(herder, &action, None).await?;
            }
        }
        Ok(())
    }

    /// A due retry (a `herder-retry` request): carried out exactly once, or skipped when it
    /// would be stale; recorded, and said in the targets when GitLab refused it or
    /// non-production mode only describes it.
    async fn retry(&self, item: &Leased) -> Result<(), EventError> {
        let plan: PlannedRetry = item
            .payload
            .decode()
            .map_err(|e| EventError::Unreadable(e.to_string()))?;
        let Some(herder) = &self.herder else {
            tracing::warn!(
                job = plan.job_id,
                "herder: not configured any more; the retry is not made"
            );
            return Ok(());
        };
        let outcome = retry::carry_out(
            &self.services.gitlab,
            &self.services.store,
            &item.id,
            &plan,
            self.services.production,
        )
        .await;
        let mut action = plan.action(ActionKind::Skipped);
        let mut line = None;
        let label = match outcome {
            Ok(RetryOutcome::Retried { job, recovered }) => {
                tracing::info!(
                    job = plan.job_id,
                    new_job = job.id,
                    recovered,
                    retry = plan.retry,
                    "herder: job retried"
                );
                action.kind = ActionKind::Retried;
                action.new_job_id = Some(job.id);
                "retried"
            }
            Ok(RetryOutcome::WouldRetry) => {
                action.kind = ActionKind::WouldRetry;
                line = Some(herder_words::would_retry_line(&plan));
                "would_retry"
            }
            Ok(RetryOutcome::AlreadyRetried { newer }) => {
                tracing::info!(
                    job = plan.job_id,
                    newer,
                    "herder: retried by someone else already; not retrying"
                );
                action.detail = Some(format!("already retried: job {newer} is newer"));
                "already_retried"
            }
            Ok(RetryOutcome::Superseded { by }) => {
                tracing::info!(
                    job = plan.job_id,
                    pipeline = plan.pipeline_id,
                    superseded_by = by,
                    "herder: the pipeline was superseded; not retrying"
                );
                action.detail = Some(format!(
                    "pipeline {} was superseded by pipeline {by}",
                    plan.pipeline_id
                ));
                "superseded"
            }
            Ok(RetryOutcome::Gone) => {
                tracing::info!(
                    job = plan.job_id,
                    "herder: the job no longer exists; not retrying"
                );
                action.detail = Some("the job no longer exists".to_string());
                "gone"
            }
            Err(e) if e.is_retryable() => return Err(EventError::Retry(e.to_string())),
            Err(e) => {
                tracing::warn!(job = plan.job_id, error = %e, "herder: GitLab refused the retry");
                let why = e.user_message();
                line = Some(herder_words::retry_failed_line(&plan, &why));
                action.kind = ActionKind::Failed;
                action.detail = Some(why);
                "failed"
            }
        };
        if self
            .record_and_say(herder, &action, line.as_deref())
            .await?
        {
            self.metrics
                .herder_retries
                .with_label_values(&[plan.matcher.as_str(), label])
                .inc();
        }
        Ok(())
    }

    /// Records `action` and, the first time, says `line` in the herder's targets — in one
    /// transaction. True when the action was new.
    async fn record_and_say(
        &self,
        herder: &Herder,
        action: &Action,
        line: Option<&str>,
    ) -> Result<bool, EventError> {
        let mut tx = self.services.store.begin().await?;
        let added = actions::record_in(&mut tx, action).await?;
        if let (true, Some(text)) = (added, line) {
            for target in &herder.config().targets {
                let Some(origin) = Origin::parse(target) else {
                    continue;
                };
                let key = format!(
                    "herder:{}:{}:{}:{target}",
                    action.kind.as_str(),
                    action.project,
                    action.job_id
                );
                outbox::push_in(&mut tx, &origin, text, Some(&key), None).await?;
            }
        }
        tx.commit().await?;
        if added && line.is_some() {
            self.outbox.wake();
        }
        Ok(added)
    }

    async fn note(&self, note: NoteEvent) -> Result<(), EventError> {
        let Some(comments) = &self.comments else {
            return Ok(());
        };
        let attrs = &note.object_attributes;
        let Some(mr) = &note.merge_request else {
            return Ok(());
        };
        if attrs.noteable_type != "MergeRequest" || attrs.system {
            return Ok(());
        }
        let bot = &self.services.address.bot_name;
        if note.user.username.eq_ignore_ascii_case(bot) || attrs.note.contains(MARKER_PREFIX) {
            tracing::debug!(note = attrs.id, "gitlab: our own note; not a command");
            return Ok(());
        }
        let project = note.project.path_with_namespace.clone();
        let username = note.user.username.clone();
        let inbound = Inbound {
            frontend: Frontend::GitLabComment,
            origin: Origin::merge_request(&project, mr.iid).addressed_to(username.clone()),
            identity: format!("gitlab:{username}"),
            text: attrs.note.clone(),
            mr: Some(MrRef {
                instance: None,
                project: Some(project.clone()),
                iid: mr.iid,
            }),
            dedup: Some(format!("note:{}:{}", note.project.id, attrs.id)),
            rate_room: None,
            bot_user_id: None,
        };
        let commands = self.dispatcher.commands_of(&inbound);
        if commands.is_empty() {
            return Ok(());
        }
        tracing::info!(note = attrs.id, action = attrs.action.as_deref().unwrap_or("create"), user = %username, commands = commands.len(), "gitlab: commands in a comment");

        let needed = comments.min_access_level_for(&project);
        let level = match self
            .services
            .gitlab
            .member_access_level(&note.project.id.to_string(), note.user.id)
            .await
        {
            Ok(level) => level,
            Err(e) if e.is_retryable() => return Err(EventError::Retry(e.user_message())),
            Err(e) => {
                tracing::warn!(user = %username, project = %project, error = %e, "gitlab: cannot read the commenter's access level; treating it as none");
                AccessLevel::NoAccess
            }
        };
        if level.level() < u64::from(needed.gitlab_value()) {
            tracing::info!(user = %username, project = %project, have = level.as_str(), need = needed.title(), "gitlab: commenter's access level too low");
            self.refuse_all(&inbound, &commands, needed.title(), level)
                .await?;
            return Ok(());
        }
        self.dispatcher.handle(&inbound).await?;
        Ok(())
    }

    /// One polite reply for the comment, and an audit entry for each of its commands.
    async fn refuse_all(
        &self,
        inbound: &Inbound,
        commands: &[String],
        needed: &str,
        have: AccessLevel,
    ) -> Result<(), EventError> {
        let ctx = ParseContext {
            implicit_mr: inbound.mr.clone(),
        };
        let principal = self.services.policy.resolve(&inbound.identity);
        let project = inbound
            .mr
            .as_ref()
            .and_then(|m| m.project.clone())
            .unwrap_or_default();
        let detail = format!("needs {needed} access on {project}; has {}", have.as_str());
        let keys = command_keys(inbound.dedup.as_deref().unwrap_or("note"), commands);
        let names: Vec<String> = commands
            .iter()
            .map(|text| {
                parse(text, &ctx)
                    .map(|c| c.name())
                    .unwrap_or("unknown")
                    .to_string()
            })
            .collect();
        let shown: Vec<String> = names.iter().map(|n| format!("`{n}`")).collect();
        let text = format!(
            "sorry, {} here need{} {needed} access (or higher) to {project}, and you have {}. A maintainer of the project can run {} for you.",
            shown.join(", "),
            if shown.len() == 1 { "s" } else { "" },
            if have == AccessLevel::NoAccess {
                "none".to_string()
            } else {
                have.as_str().to_string()
            },
            if shown.len() == 1 { "it" } else { "them" }
        );
        // One reply per set of commands: a redelivery finds it and neither replies nor audits
        // again; an edit that adds a command is a new set.
        let key = command_key(&keys.join(","), "access", 1);
        let store = &self.services.store;
        let mut tx = store.begin().await?;
        let added = outbox::push_in(&mut tx, &inbound.origin, &text, Some(&key), None).await?;
        if added {
            for (name, text) in names.iter().zip(commands) {
                audit::record_in(
                    &mut tx,
                    &principal.identity,
                    principal.person.as_deref(),
                    &inbound.origin,
                    name,
                    text,
                    AuditOutcome::Refused,
                    Some(&detail),
                )
                .await?;
            }
        }
        tx.commit().await?;
        self.outbox.wake();
        Ok(())
    }

    async fn merge_request(&self, event: MergeRequestEvent) -> Result<(), EventError> {
        let attrs = &event.object_attributes;
        let project = &event.project.path_with_namespace;
        match attrs.action.as_deref() {
            Some("open") => {
                let welcome = self
                    .comments
                    .as_ref()
                    .and_then(|c| c.project(project))
                    .is_some_and(|p| p.welcome);
                if welcome {
                    let canary = self.services.canary.settings().project(project).is_some();
                    let text = welcome_text(&self.services.address.bot_name, canary);
                    self.outbox
                        .push(
                            &Origin::merge_request(project, attrs.iid),
                            &text,
                            Some(&format!("welcome:{}!{}", event.project.id, attrs.iid)),
                            None,
                        )
                        .await?;
                }
            }
            Some("update") if attrs.oldrev.is_some() => {
                let Some(head) = &attrs.last_commit else {
                    return Ok(());
                };
                let store = &self.services.store;
                let mut tx = store.begin().await?;
                let runs = canary::mark_outdated_in(&mut tx, project, attrs.iid, &head.id).await?;
                for run in &runs {
                    canary::publish_in(
                        &mut tx,
                        run,
                        self.watcher.reporter(),
                        &self.services.frontends,
                        Publish::WhereEditable,
                    )
                    .await?;
                }
                tx.commit().await?;
                if !runs.is_empty() {
                    self.outbox.wake();
                    tracing::info!(project = %project, iid = attrs.iid, runs = runs.len(), "gitlab: new commits; canary summaries marked outdated");
                }
            }
            _ => {}
        }
        Ok(())
    }

    async fn pipeline(&self, event: PipelineEvent) -> Result<(), EventError> {
        let observed = Observed {
            pipeline: event.pipeline(),
            failed_jobs: event.failed_jobs(),
        };
        let n = self
            .watcher
            .observe(&event.project.path_with_namespace, observed)
            .await?;
        if n > 0 {
            tracing::debug!(pipeline = event.object_attributes.id, status = %event.object_attributes.status, watches = n, "gitlab: pipeline event applied");
        }
        Ok(())
    }
}

/// A job as the herder saw it in a Job Hook.
struct Seen<'a> {
    project: &'a str,
    job: &'a JobEvent,
    url: &'a str,
}

impl Seen<'_> {
    fn action(
        &self,
        kind: ActionKind,
        matcher: &HerderMatcher,
        retry: Option<u32>,
        detail: Option<String>,
    ) -> Action {
        Action {
            kind,
            project: self.project.to_string(),
            job_id: self.job.build_id,
            job_name: self.job.build_name.clone(),
            job_url: self.url.to_string(),
            matcher: matcher.name.clone(),
            retry,
            new_job_id: None,
            detail,
            at: 0,
        }
    }
}
