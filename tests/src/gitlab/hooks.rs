//! Webhooks: the double sends GitLab's Note, Merge Request, Pipeline and Job Hooks to the URL a
//! test configured, the way GitLab does, and records every delivery.
//!
//! Faithful: the payloads follow the samples of GitLab's "Webhook events" documentation (field
//! names, nesting, `object_kind`/`event_type`, `object_attributes.action` of notes and merge
//! requests, `oldrev` after a push, the pipeline's `builds`, the job hook's flat `build_*` fields);
//! times are written as GitLab writes them in hooks: `2015-05-17 18:21:36 UTC` in notes, in the
//! merge request of a note, in pipelines and their builds and in job hooks (whose `*_iso` fields
//! carry ISO 8601), ISO 8601 (`2013-12-03T17:23:34Z`) in merge-request hooks, and
//! `2015-05-17 18:21:36 UTC` in the `changes` of merge-request hooks. Every delivery is a `POST`
//! with a compact JSON body and the headers `Content-Type: application/json`,
//! `User-Agent: GitLab/<version>`, `X-Gitlab-Event`, `X-Gitlab-Token` (the secret token),
//! `X-Gitlab-Instance` (the instance's base URL), `X-Gitlab-Webhook-UUID` (new for every request),
//! `X-Gitlab-Event-UUID` and `Idempotency-Key` (one per event; a "Resend request" repeats both).
//! GitLab does not retry a failed delivery on its own; the receiver's status (or the transport
//! error) is recorded, as in GitLab's "Recent events" log. Deliveries are asynchronous: the event
//! happens (and the API answers) first, and one background sender posts the hooks in the order the
//! events happened, each after the previous one was answered (10 s timeout, like GitLab's).
//!
//! Simplified: there is one webhook for the whole instance (not one per project or group), with
//! a switch per event kind instead of GitLab's full list; Push, Tag, Issue and other hooks are never
//! sent; a pipeline created through the API sends a hook for its `created` status (GitLab's first
//! hook is usually `pending`); the seeded reference pipelines of `add_pipeline` send nothing, as
//! they stand for history; `email` is always `[REDACTED]` (nobody has a public email); `runner`
//! is a fixed shared runner once a job has started; `environment`, `source_pipeline` and the
//! pipeline's `merge_request` are `null`/absent; `project_name` in job hooks is GitLab's
//! `name_with_namespace` (`group / project`).

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::{Value, json};

use super::VERSION;
use super::merge_requests::{MergeRequest, NoteRecord, User, iso_seconds, project_hook_json};
use super::model::{Job, Pipeline, USER_NAME, USERNAME, is_finished};

/// How long GitLab waits for a webhook receiver to answer (its default `webhook_timeout`).
pub const HOOK_TIMEOUT: Duration = Duration::from_secs(10);

/// The kinds of webhook event the double sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum WebhookEvent {
    /// A comment was written or edited (`Note Hook`, `object_kind: note`).
    Note,
    /// A merge request was opened, updated (pushed to), closed, merged or reopened.
    MergeRequest,
    /// A pipeline changed status.
    Pipeline,
    /// A job changed status (`object_kind: build`).
    Job,
}

impl WebhookEvent {
    /// The `X-Gitlab-Event` header: `Note Hook`, `Merge Request Hook`, `Pipeline Hook`, `Job Hook`.
    pub fn header(self) -> &'static str {
        match self {
            WebhookEvent::Note => "Note Hook",
            WebhookEvent::MergeRequest => "Merge Request Hook",
            WebhookEvent::Pipeline => "Pipeline Hook",
            WebhookEvent::Job => "Job Hook",
        }
    }
}

/// Which events the webhook receives (GitLab's per-webhook triggers). All on by default.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WebhookEvents {
    pub note: bool,
    pub merge_request: bool,
    pub pipeline: bool,
    pub job: bool,
}

impl Default for WebhookEvents {
    fn default() -> WebhookEvents {
        WebhookEvents {
            note: true,
            merge_request: true,
            pipeline: true,
            job: true,
        }
    }
}

impl WebhookEvents {
    pub(crate) fn enabled(self, event: WebhookEvent) -> bool {
        match event {
            WebhookEvent::Note => self.note,
            WebhookEvent::MergeRequest => self.merge_request,
            WebhookEvent::Pipeline => self.pipeline,
            WebhookEvent::Job => self.job,
        }
    }
}

/// The configured webhook.
#[derive(Debug, Clone)]
pub(crate) struct Webhook {
    pub url: String,
    pub secret: String,
}

/// How a delivery ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HookOutcome {
    /// Queued or being sent.
    Pending,
    /// The receiver answered with this status (GitLab counts 2xx as success).
    Status(u16),
    /// No answer: connection refused or reset, timeout, ...
    Error(String),
}

/// One webhook request the double sent (or is about to send), in the order of the events.
#[derive(Debug, Clone, PartialEq)]
pub struct HookDelivery {
    pub event: WebhookEvent,
    pub url: String,
    /// `Idempotency-Key`: one per event, the same on a resend.
    pub idempotency_key: String,
    /// `X-Gitlab-Event-UUID`: one per event, the same on a resend.
    pub event_uuid: String,
    /// `X-Gitlab-Webhook-UUID`: new for every request; `None` until it is sent.
    pub webhook_uuid: Option<String>,
    /// The JSON body.
    pub body: Value,
    /// For a resend ([`super::GitLabDouble::redeliver`]): the index of the delivery it repeats.
    pub redelivery_of: Option<usize>,
    pub outcome: HookOutcome,
}

impl HookDelivery {
    /// The receiver's status, once answered.
    pub fn status(&self) -> Option<u16> {
        match self.outcome {
            HookOutcome::Status(s) => Some(s),
            _ => None,
        }
    }

    /// Whether it was sent and answered or failed (not pending any more).
    pub fn is_done(&self) -> bool {
        self.outcome != HookOutcome::Pending
    }
}

/// A new random (version 4) UUID, as GitLab generates for its webhook headers.
pub(crate) fn new_uuid() -> String {
    uuid::Builder::from_random_bytes(rand::random())
        .into_uuid()
        .to_string()
}

/// GitLab's time format in hooks: `2015-05-17 18:21:36 UTC`.
pub fn hook_time(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%d %H:%M:%S UTC").to_string()
}

fn opt_hook_time(t: Option<DateTime<Utc>>) -> Value {
    t.map_or(Value::Null, |t| Value::String(hook_time(t)))
}

fn opt_iso(t: Option<DateTime<Utc>>) -> Value {
    t.map_or(Value::Null, |t| Value::String(iso_seconds(t)))
}

fn seconds(from: DateTime<Utc>, to: DateTime<Utc>) -> f64 {
    (to - from).num_milliseconds().max(0) as f64 / 1000.0
}

/// The `repository` object of note and merge-request hooks.
fn repository_json(base_url: &str, path: &str) -> Value {
    let project = project_hook_json(base_url, 0, path);
    json!({
        "name": project["name"],
        "url": project["git_http_url"],
        "description": "",
        "homepage": project["web_url"],
    })
}

/// The commit at the head of a merge request (its `last_commit`).
fn last_commit_json(base_url: &str, mr: &MergeRequest) -> Value {
    let message = if mr.pushes == 0 {
        format!("Start {}\n", mr.source_branch)
    } else {
        format!("Push {} to {}\n", mr.pushes, mr.source_branch)
    };
    json!({
        "id": mr.sha,
        "message": message,
        "title": message.trim_end(),
        "timestamp": mr.updated_at.to_rfc3339_opts(chrono::SecondsFormat::Secs, false),
        "url": format!("{base_url}/{}/-/commit/{}", mr.source_project_path, mr.sha),
        "author": {
            "name": mr.author.name,
            "email": format!("{}@example.com", mr.author.username),
        },
    })
}

/// GitLab's `MergeRequest#hook_attrs`: `object_attributes` of a merge-request hook, and
/// `merge_request` of a note hook. `time` formats its timestamps.
fn merge_request_hook_attrs(
    base_url: &str,
    mr: &MergeRequest,
    time: fn(DateTime<Utc>) -> String,
) -> Value {
    json!({
        "id": mr.id,
        "iid": mr.iid,
        "target_branch": mr.target_branch,
        "source_branch": mr.source_branch,
        "source_project_id": mr.source_project_id,
        "author_id": mr.author.id,
        "assignee_ids": [],
        "assignee_id": Value::Null,
        "reviewer_ids": [],
        "title": mr.title,
        "created_at": time(mr.created_at),
        "updated_at": time(mr.updated_at),
        "last_edited_at": Value::Null,
        "last_edited_by_id": Value::Null,
        "milestone_id": Value::Null,
        "state_id": mr.state_id(),
        "state": mr.state,
        "blocking_discussions_resolved": true,
        "work_in_progress": mr.draft(),
        "draft": mr.draft(),
        "first_contribution": false,
        "merge_status": "can_be_merged",
        "target_project_id": mr.project_id,
        "description": mr.description,
        "prepared_at": time(mr.created_at),
        "total_time_spent": 0,
        "time_change": 0,
        "human_total_time_spent": Value::Null,
        "human_time_change": Value::Null,
        "human_time_estimate": Value::Null,
        "url": mr.web_url,
        "source": project_hook_json(base_url, mr.source_project_id, &mr.source_project_path),
        "target": project_hook_json(base_url, mr.project_id, &mr.project_path),
        "last_commit": last_commit_json(base_url, mr),
        "labels": [],
        "detailed_merge_status": if mr.draft() { "draft_status" } else { "mergeable" },
    })
}

/// A Note Hook for a comment on a merge request (`action` is `create` or `update`), written by
/// `author`; `note` must belong to `mr`.
pub fn note_hook_payload(
    base_url: &str,
    mr: &MergeRequest,
    author: &User,
    note: &NoteRecord,
    action: &str,
) -> Value {
    json!({
        "object_kind": "note",
        "event_type": "note",
        "user": author.hook_json(base_url),
        "project_id": mr.project_id,
        "project": project_hook_json(base_url, mr.project_id, &mr.project_path),
        "object_attributes": {
            "attachment": Value::Null,
            "author_id": note.author_id,
            "change_position": Value::Null,
            "commit_id": Value::Null,
            "created_at": hook_time(note.created_at),
            "discussion_id": note.discussion_id(),
            "id": note.id,
            "line_code": Value::Null,
            "note": note.body,
            "noteable_id": note.noteable_id,
            "noteable_type": "MergeRequest",
            "original_position": Value::Null,
            "position": Value::Null,
            "project_id": note.project_id,
            "resolved_at": Value::Null,
            "resolved_by_id": Value::Null,
            "resolved_by_push": Value::Null,
            "st_diff": Value::Null,
            "system": false,
            "type": Value::Null,
            "updated_at": hook_time(note.updated_at),
            "updated_by_id": if note.edits > 0 { json!(note.author_id) } else { Value::Null },
            "description": note.body,
            "internal": false,
            "url": format!("{}#note_{}", mr.web_url, note.id),
            "action": action,
        },
        "repository": repository_json(base_url, &mr.project_path),
        "merge_request": merge_request_hook_attrs(base_url, mr, hook_time),
    })
}

/// A Merge Request Hook: `action` is `open`, `update`, `close`, `reopen` or `merge`; `user` did
/// it; `oldrev` (the previous head) is set when the update was a push, as GitLab does.
pub fn merge_request_hook_payload(
    base_url: &str,
    mr: &MergeRequest,
    user: &User,
    action: &str,
    oldrev: Option<&str>,
) -> Value {
    let mut attrs = merge_request_hook_attrs(base_url, mr, iso_seconds);
    if let Some(map) = attrs.as_object_mut() {
        map.insert("action".to_owned(), json!(action));
        if let Some(old) = oldrev {
            map.insert("oldrev".to_owned(), json!(old));
        }
    }
    let changed =
        |previous: Value, current: Value| json!({ "previous": previous, "current": current });
    let changes = match action {
        "open" => json!({
            "author_id": changed(Value::Null, json!(mr.author.id)),
            "created_at": changed(Value::Null, json!(hook_time(mr.created_at))),
            "description": changed(Value::Null, json!(mr.description)),
            "id": changed(Value::Null, json!(mr.id)),
            "iid": changed(Value::Null, json!(mr.iid)),
            "source_branch": changed(Value::Null, json!(mr.source_branch)),
            "source_project_id": changed(Value::Null, json!(mr.source_project_id)),
            "target_branch": changed(Value::Null, json!(mr.target_branch)),
            "target_project_id": changed(Value::Null, json!(mr.project_id)),
            "title": changed(Value::Null, json!(mr.title)),
            "updated_at": changed(Value::Null, json!(hook_time(mr.updated_at))),
        }),
        "close" | "reopen" | "merge" => {
            let previous = match action {
                "reopen" => 2,
                _ => 1,
            };
            json!({
                "state_id": changed(json!(previous), json!(mr.state_id())),
                "updated_at": changed(Value::Null, json!(hook_time(mr.updated_at))),
            })
        }
        _ => json!({
            "updated_at": changed(Value::Null, json!(hook_time(mr.updated_at))),
        }),
    };
    json!({
        "object_kind": "merge_request",
        "event_type": "merge_request",
        "user": user.hook_json(base_url),
        "project": project_hook_json(base_url, mr.project_id, &mr.project_path),
        "object_attributes": attrs,
        "labels": [],
        "changes": changes,
        "repository": repository_json(base_url, &mr.project_path),
        "assignees": [],
        "reviewers": [],
    })
}

/// The runner the double pretends ran every started job.
fn runner_json() -> Value {
    json!({
        "id": 380987,
        "description": "shared-runners-manager-6.gitlab.com",
        "active": true,
        "runner_type": "instance_type",
        "is_shared": true,
        "tags": ["linux", "docker"],
    })
}

/// The commit of a pipeline, as pipeline hooks show it.
fn pipeline_commit_json(base_url: &str, pipeline: &Pipeline) -> Value {
    json!({
        "id": pipeline.sha,
        "message": "Commit of the GitLab double\n",
        "title": "Commit of the GitLab double",
        "timestamp": pipeline.created_at.to_rfc3339_opts(chrono::SecondsFormat::Secs, false),
        "url": format!("{base_url}/{}/-/commit/{}", pipeline.project_path, pipeline.sha),
        "author": { "name": USER_NAME, "email": format!("{USERNAME}@example.com") },
    })
}

/// One entry of a pipeline hook's `builds`.
fn build_json(base_url: &str, job: &Job, user: &User) -> Value {
    let duration = match (job.started_at, job.finished_at) {
        (Some(s), Some(f)) => json!(seconds(s, f)),
        _ => Value::Null,
    };
    let queued = job.started_at.map(|s| seconds(job.created_at, s));
    json!({
        "id": job.id,
        "stage": job.stage,
        "name": job.name,
        "status": job.status,
        "created_at": hook_time(job.created_at),
        "started_at": opt_hook_time(job.started_at),
        "finished_at": opt_hook_time(job.finished_at),
        "duration": duration,
        "queued_duration": queued,
        "failure_reason": job.failure_reason,
        "when": "on_success",
        "manual": false,
        "allow_failure": job.allow_failure,
        "user": user.hook_json(base_url),
        "runner": if job.started_at.is_some() { runner_json() } else { Value::Null },
        "artifacts_file": { "filename": Value::Null, "size": Value::Null },
        "environment": Value::Null,
    })
}

/// A Pipeline Hook for `pipeline` in its current status with its jobs (`builds`, newest first)
/// and `stages` in the order they first appear; `user` started the pipeline.
pub fn pipeline_hook_payload(
    base_url: &str,
    pipeline: &Pipeline,
    jobs: &[Job],
    user: &User,
) -> Value {
    let mut stages: Vec<&str> = Vec::new();
    let mut ordered: Vec<&Job> = jobs.iter().collect();
    ordered.sort_by_key(|j| j.id);
    for job in &ordered {
        if !stages.contains(&job.stage.as_str()) {
            stages.push(&job.stage);
        }
    }
    let builds: Vec<Value> = ordered
        .iter()
        .rev()
        .map(|j| build_json(base_url, j, user))
        .collect();
    let label = super::model::detailed_status_label(&pipeline.status);
    json!({
        "object_kind": "pipeline",
        "object_attributes": {
            "id": pipeline.id,
            "iid": pipeline.iid,
            "name": Value::Null,
            "ref": pipeline.git_ref,
            "tag": false,
            "sha": pipeline.sha,
            "before_sha": super::model::BLANK_SHA,
            "source": pipeline.source,
            "status": pipeline.status,
            "detailed_status": label,
            "stages": stages,
            "created_at": hook_time(pipeline.created_at),
            "finished_at": opt_hook_time(pipeline.finished_at),
            "duration": pipeline.duration(),
            "queued_duration": pipeline.queued_duration().map(|q| q.round() as u64),
            "variables": pipeline
                .variables
                .iter()
                .map(|v| json!({ "key": v.key, "value": v.value }))
                .collect::<Vec<_>>(),
            "url": pipeline.web_url,
        },
        "merge_request": Value::Null,
        "user": user.hook_json(base_url),
        "project": project_hook_json(base_url, pipeline.project_id, &pipeline.project_path),
        "commit": pipeline_commit_json(base_url, pipeline),
        "builds": builds,
    })
}

/// A Job Hook (`object_kind: build`) for `job` of `pipeline` in its current status.
pub fn job_hook_payload(base_url: &str, pipeline: &Pipeline, job: &Job, user: &User) -> Value {
    let project = project_hook_json(base_url, pipeline.project_id, &pipeline.project_path);
    let duration = match (job.started_at, job.finished_at) {
        (Some(s), Some(f)) => json!(seconds(s, f)),
        _ => Value::Null,
    };
    let queued = match job.started_at {
        Some(s) => seconds(job.created_at, s),
        None if !is_finished(&job.status) => seconds(job.created_at, Utc::now()),
        None => 0.0,
    };
    json!({
        "object_kind": "build",
        "ref": pipeline.git_ref,
        "tag": false,
        "before_sha": super::model::BLANK_SHA,
        "sha": pipeline.sha,
        "build_id": job.id,
        "build_name": job.name,
        "build_stage": job.stage,
        "build_status": job.status,
        "build_created_at": hook_time(job.created_at),
        "build_created_at_iso": iso_seconds(job.created_at),
        "build_started_at": opt_hook_time(job.started_at),
        "build_started_at_iso": opt_iso(job.started_at),
        "build_finished_at": opt_hook_time(job.finished_at),
        "build_finished_at_iso": opt_iso(job.finished_at),
        "build_duration": duration,
        "build_queued_duration": queued,
        "build_allow_failure": job.allow_failure,
        "build_failure_reason": job.failure_reason,
        "retries_count": 0,
        "pipeline_id": pipeline.id,
        "project_id": pipeline.project_id,
        "project_name": pipeline.project_path.split('/').collect::<Vec<_>>().join(" / "),
        "user": user.hook_json(base_url),
        "commit": {
            "id": pipeline.id,
            "name": Value::Null,
            "sha": pipeline.sha,
            "message": "Commit of the GitLab double\n",
            "author_name": USER_NAME,
            "author_email": format!("{USERNAME}@example.com"),
            "status": pipeline.status,
            "duration": pipeline.duration(),
            "started_at": opt_hook_time(pipeline.started_at),
            "started_at_iso": opt_iso(pipeline.started_at),
            "finished_at": opt_hook_time(pipeline.finished_at),
            "finished_at_iso": opt_iso(pipeline.finished_at),
        },
        "repository": {
            "name": project["name"],
            "url": project["git_ssh_url"],
            "description": "",
            "homepage": project["web_url"],
            "git_http_url": project["git_http_url"],
            "git_ssh_url": project["git_ssh_url"],
            "visibility_level": 0,
        },
        "project": project,
        "runner": if job.started_at.is_some() { runner_json() } else { Value::Null },
        "environment": Value::Null,
    })
}

/// Everything one webhook request carries besides the body.
#[derive(Debug, Clone)]
pub(crate) struct HookHeaders<'a> {
    pub url: &'a str,
    pub secret: &'a str,
    pub event: &'a str,
    pub instance: &'a str,
    pub idempotency_key: &'a str,
    pub event_uuid: &'a str,
    pub webhook_uuid: &'a str,
}

/// Sends webhook requests with GitLab's headers (one HTTP client, reused).
#[derive(Debug, Clone)]
pub struct HookSender {
    client: reqwest::Client,
}

impl Default for HookSender {
    fn default() -> HookSender {
        HookSender::new()
    }
}

impl HookSender {
    /// A sender with GitLab's 10 s webhook timeout that does not follow redirects.
    ///
    /// # Panics
    /// If the HTTP client cannot be built (no TLS backend).
    pub fn new() -> HookSender {
        let client = reqwest::Client::builder()
            .timeout(HOOK_TIMEOUT)
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .expect("GitLab double: webhook HTTP client");
        HookSender { client }
    }

    /// POSTs `body` to `url` as GitLab sends an `event` (`Note Hook`, ...) with secret token
    /// `secret`: new `X-Gitlab-Event-UUID`, `Idempotency-Key` and `X-Gitlab-Webhook-UUID`, and
    /// `X-Gitlab-Instance` taken from the origin of `body.project.web_url` (or
    /// `https://gitlab.example.com`). Returns the receiver's status, or the transport error.
    pub async fn send(
        &self,
        url: &str,
        secret: &str,
        event: &str,
        body: &Value,
    ) -> Result<u16, String> {
        let instance = body
            .pointer("/project/web_url")
            .and_then(Value::as_str)
            .and_then(|u| url::Url::parse(u).ok())
            .map(|u| u.origin().ascii_serialization())
            .unwrap_or_else(|| "https://gitlab.example.com".to_owned());
        let (key, event_uuid, webhook_uuid) = (new_uuid(), new_uuid(), new_uuid());
        self.deliver(
            &HookHeaders {
                url,
                secret,
                event,
                instance: &instance,
                idempotency_key: &key,
                event_uuid: &event_uuid,
                webhook_uuid: &webhook_uuid,
            },
            body,
        )
        .await
    }

    pub(crate) async fn deliver(&self, h: &HookHeaders<'_>, body: &Value) -> Result<u16, String> {
        let bytes = serde_json::to_vec(body).map_err(|e| format!("encoding the payload: {e}"))?;
        let response = self
            .client
            .post(h.url)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header(reqwest::header::USER_AGENT, format!("GitLab/{VERSION}"))
            .header("X-Gitlab-Event", h.event)
            .header("X-Gitlab-Token", h.secret)
            .header("X-Gitlab-Instance", h.instance)
            .header("X-Gitlab-Webhook-UUID", h.webhook_uuid)
            .header("X-Gitlab-Event-UUID", h.event_uuid)
            .header("Idempotency-Key", h.idempotency_key)
            .body(bytes)
            .send()
            .await
            .map_err(|e| describe(&e))?;
        let status = response.status().as_u16();
        // Read the answer to its end, as GitLab does (it logs the body).
        let _ = response.bytes().await;
        Ok(status)
    }
}

/// POSTs one webhook request the way GitLab does (see [`HookSender::send`]), with a new client.
pub async fn send_hook(url: &str, secret: &str, event: &str, body: &Value) -> Result<u16, String> {
    HookSender::new().send(url, secret, event, body).await
}

/// An error with its causes on one line.
fn describe(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        let s = cause.to_string();
        if !text.contains(&s) {
            text.push_str(": ");
            text.push_str(&s);
        }
        source = cause.source();
    }
    text
}
