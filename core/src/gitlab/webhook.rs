//! The GitLab webhook payloads shepherd reads (GitLab's "Webhook events" documentation), as far
//! as it reads them: serde ignores every other field, so what GitLab adds never breaks decoding.
//! A payload that lacks a field read here is malformed and answered 400 before it is stored.
//!
//! [`decode`] is the one door for a delivery's bytes: `POST /hooks/gitlab` calls it before it
//! stores anything, and the fuzz target `gitlab_webhook` feeds it arbitrary input.

use chrono::{DateTime, NaiveDateTime, Utc};
use serde::Deserialize;
use serde_json::Value;

use super::{Job, JobStatus, Pipeline, PipelineStatus};
use crate::queue::Payload;

/// The events `POST /hooks/gitlab` stores, by their `X-Gitlab-Event` header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HookKind {
    Note,
    MergeRequest,
    Pipeline,
    Job,
}

impl HookKind {
    pub fn from_header(event: &str) -> Option<Self> {
        match event {
            "Note Hook" | "Confidential Note Hook" => Some(HookKind::Note),
            "Merge Request Hook" => Some(HookKind::MergeRequest),
            "Pipeline Hook" => Some(HookKind::Pipeline),
            "Job Hook" => Some(HookKind::Job),
            _ => None,
        }
    }

    /// The payload's `object_kind`, and the label of metrics.
    pub fn object_kind(self) -> &'static str {
        match self {
            HookKind::Note => "note",
            HookKind::MergeRequest => "merge_request",
            HookKind::Pipeline => "pipeline",
            HookKind::Job => "build",
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            HookKind::Job => "job",
            other => other.object_kind(),
        }
    }

    pub fn from_label(label: &str) -> Option<Self> {
        match label {
            "note" => Some(HookKind::Note),
            "merge_request" => Some(HookKind::MergeRequest),
            "pipeline" => Some(HookKind::Pipeline),
            "job" => Some(HookKind::Job),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
pub struct HookUser {
    #[serde(default)]
    pub id: u64,
    pub username: String,
}

#[derive(Debug, Clone, Deserialize)]
pub struct HookProject {
    pub id: u64,
    pub path_with_namespace: String,
    #[serde(default)]
    pub web_url: String,
}

#[derive(Debug, Clone, Deserialize)]
pub struct NoteEvent {
    pub user: HookUser,
    pub project: HookProject,
    pub object_attributes: NoteAttributes,
    #[serde(default)]
    pub merge_request: Option<NoteMergeRequest>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct NoteAttributes {
    pub id: u64,
    pub note: String,
    pub noteable_type: String,
    #[serde(default)]
    pub system: bool,
    /// `create` or `update` (GitLab 16.x and later).
    #[serde(default)]
    pub action: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct NoteMergeRequest {
    pub iid: u64,
}

#[derive(Debug, Clone, Deserialize)]
pub struct MergeRequestEvent {
    pub project: HookProject,
    pub object_attributes: MergeRequestAttributes,
}

#[derive(Debug, Clone, Deserialize)]
pub struct MergeRequestAttributes {
    pub iid: u64,
    /// `open`, `reopen`, `update`, `close`, `merge`, `approved`, ...
    #[serde(default)]
    pub action: Option<String>,
    /// Set on an `update` that pushed new commits: the previous head.
    #[serde(default)]
    pub oldrev: Option<String>,
    #[serde(default)]
    pub last_commit: Option<Commit>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Commit {
    pub id: String,
}

#[derive(Debug, Clone, Deserialize)]
pub struct PipelineEvent {
    pub project: HookProject,
    pub object_attributes: PipelineAttributes,
    #[serde(default)]
    pub builds: Vec<HookBuild>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct PipelineAttributes {
    pub id: u64,
    #[serde(default)]
    pub iid: Option<u64>,
    #[serde(rename = "ref")]
    pub git_ref: String,
    pub sha: String,
    pub status: String,
    #[serde(default)]
    pub source: Option<String>,
    #[serde(default)]
    pub created_at: Option<String>,
    #[serde(default)]
    pub finished_at: Option<String>,
    #[serde(default)]
    pub duration: Option<f64>,
    /// The pipeline's web page (GitLab 15.x and later).
    #[serde(default)]
    pub url: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct HookBuild {
    pub id: u64,
    pub name: String,
    #[serde(default)]
    pub stage: String,
    pub status: String,
    #[serde(default)]
    pub allow_failure: bool,
    #[serde(default)]
    pub failure_reason: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct JobEvent {
    pub build_id: u64,
    pub build_name: String,
    pub build_status: String,
    /// GitLab's reason for a failure (`runner_system_failure`, ...).
    #[serde(default)]
    pub build_failure_reason: Option<String>,
    pub pipeline_id: u64,
    pub project_id: u64,
    #[serde(rename = "ref", default)]
    pub git_ref: String,
    /// Present in the payloads of GitLab 15 and later.
    #[serde(default)]
    pub project: Option<HookProject>,
}

impl JobEvent {
    /// The job's status (`Unknown` for a word this version does not know).
    pub fn status(&self) -> JobStatus {
        status_of(&self.build_status).unwrap_or(JobStatus::Unknown)
    }

    /// The job's web page, when the payload names its project's.
    pub fn web_url(&self) -> Option<String> {
        self.project
            .as_ref()
            .filter(|p| !p.web_url.is_empty())
            .map(|p| {
                format!(
                    "{}/-/jobs/{}",
                    p.web_url.trim_end_matches('/'),
                    self.build_id
                )
            })
    }
}

/// GitLab's hook timestamps: `2025-01-01 12:00:00 UTC`, or RFC 3339 in newer payloads.
pub fn parse_time(text: &str) -> Option<DateTime<Utc>> {
    if let Ok(t) = DateTime::parse_from_rfc3339(text) {
        return Some(t.with_timezone(&Utc));
    }
    let trimmed = text.trim_end_matches(" UTC").trim_end_matches(" +0000");
    NaiveDateTime::parse_from_str(trimmed, "%Y-%m-%d %H:%M:%S")
        .ok()
        .map(|t| t.and_utc())
}

fn status_of<T: serde::de::DeserializeOwned>(status: &str) -> Option<T> {
    serde_json::from_value(Value::String(status.to_string())).ok()
}

impl PipelineEvent {
    /// The pipeline as the API would show it, built from the event.
    pub fn pipeline(&self) -> Pipeline {
        let a = &self.object_attributes;
        let created = a
            .created_at
            .as_deref()
            .and_then(parse_time)
            .unwrap_or_else(Utc::now);
        let finished = a.finished_at.as_deref().and_then(parse_time);
        Pipeline {
            id: a.id,
            iid: a.iid,
            project_id: self.project.id,
            sha: a.sha.clone(),
            git_ref: a.git_ref.clone(),
            status: status_of(&a.status).unwrap_or(PipelineStatus::Unknown),
            source: a.source.clone(),
            web_url: a
                .url
                .clone()
                .unwrap_or_else(|| format!("{}/-/pipelines/{}", self.project.web_url, a.id)),
            created_at: created,
            updated_at: finished.unwrap_or(created),
            started_at: None,
            finished_at: finished,
            duration: a.duration,
        }
    }

    /// The failed jobs the event lists, with links to them.
    pub fn failed_jobs(&self) -> Vec<Job> {
        self.builds
            .iter()
            .filter(|b| b.status == "failed")
            .map(|b| Job {
                id: b.id,
                name: b.name.clone(),
                stage: b.stage.clone(),
                status: status_of(&b.status).unwrap_or(JobStatus::Unknown),
                web_url: format!("{}/-/jobs/{}", self.project.web_url, b.id),
                allow_failure: b.allow_failure,
                failure_reason: b.failure_reason.clone(),
                pipeline: None,
            })
            .collect()
    }
}

/// A delivery `POST /hooks/gitlab` will store: the raw JSON (stored as it came), its kind, and
/// where replies about it go and who caused it.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub kind: HookKind,
    /// What is stored: `{"event": <kind's label>, "body": <the body as it came>}`, built
    /// from the body's own text (it was just checked to be JSON), not written out again.
    pub payload: Payload,
    /// `group/project!iid` for notes and merge requests, else the project path.
    pub room: String,
    /// `gitlab:<username>`.
    pub identity: String,
}

/// Why a delivery is not stored.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WebhookError {
    /// An event shepherd does not use (200, not stored).
    #[error("shepherd does not use {0:?} events")]
    Ignored(String),
    /// Not JSON, or not the payload its header names (400).
    #[error("{0}")]
    Malformed(String),
}

/// A typed event, as the workers read a stored delivery.
#[derive(Debug, Clone)]
pub enum Event {
    Note(NoteEvent),
    MergeRequest(MergeRequestEvent),
    Pipeline(PipelineEvent),
    Job(JobEvent),
}

impl Event {
    /// Reads a delivery's JSON as the event of `kind`.
    pub fn read(kind: HookKind, body: &Value) -> Result<Event, serde_json::Error> {
        Ok(match kind {
            HookKind::Note => Event::Note(NoteEvent::deserialize(body)?),
            HookKind::MergeRequest => Event::MergeRequest(MergeRequestEvent::deserialize(body)?),
            HookKind::Pipeline => Event::Pipeline(PipelineEvent::deserialize(body)?),
            HookKind::Job => Event::Job(JobEvent::deserialize(body)?),
        })
    }
}

/// Decodes one delivery: its `X-Gitlab-Event` header and its body.
pub fn decode(event_header: &str, body: &[u8]) -> Result<Delivery, WebhookError> {
    let kind = HookKind::from_header(event_header)
        .ok_or_else(|| WebhookError::Ignored(event_header.to_string()))?;
    let value: Value = serde_json::from_slice(body)
        .map_err(|e| WebhookError::Malformed(format!("the body is not JSON: {e}")))?;
    check(kind, &value).map_err(WebhookError::Malformed)?;
    let (room, identity) = origin_and_identity(kind, &value);
    drop(value);
    // JSON that parsed from bytes is UTF-8: its strings were checked, all else is ASCII.
    let text = std::str::from_utf8(body)
        .map_err(|e| WebhookError::Malformed(format!("the body is not UTF-8: {e}")))?;
    let label = kind.label();
    let mut stored = String::with_capacity(text.len() + label.len() + 21);
    stored.push_str("{\"event\":\"");
    stored.push_str(label);
    stored.push_str("\",\"body\":");
    stored.push_str(text);
    stored.push('}');
    Ok(Delivery {
        kind,
        payload: Payload::decoded(stored),
        room,
        identity,
    })
}

/// A payload decoded for its kind, or why it cannot be.
pub fn check(kind: HookKind, body: &Value) -> Result<(), String> {
    let object_kind = body
        .get("object_kind")
        .and_then(Value::as_str)
        .ok_or("the payload has no object_kind")?;
    if object_kind != kind.object_kind() {
        return Err(format!(
            "object_kind {object_kind:?} does not match the event header (expected {:?})",
            kind.object_kind()
        ));
    }
    Event::read(kind, body)
        .map(|_| ())
        .map_err(|e| format!("{} payload: {e}", kind.object_kind()))
}

/// Where replies about the event go and who caused it, for the stored request.
pub fn origin_and_identity(kind: HookKind, body: &Value) -> (String, String) {
    let path = body
        .pointer("/project/path_with_namespace")
        .and_then(Value::as_str)
        .unwrap_or("-")
        .to_string();
    let iid = match kind {
        HookKind::Note => body.pointer("/merge_request/iid").and_then(Value::as_u64),
        HookKind::MergeRequest => body
            .pointer("/object_attributes/iid")
            .and_then(Value::as_u64),
        _ => None,
    };
    let room = match iid {
        Some(iid) => format!("{path}!{iid}"),
        None => path,
    };
    let user = body
        .pointer("/user/username")
        .and_then(Value::as_str)
        .map(|u| format!("gitlab:{u}"))
        .unwrap_or_else(|| "gitlab:-".to_string());
    (room, user)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_both_timestamp_formats() {
        let a = parse_time("2025-01-02 03:04:05 UTC").expect("hook format");
        let b = parse_time("2025-01-02T03:04:05Z").expect("rfc 3339");
        assert_eq!(a, b);
        assert_eq!(parse_time("yesterday"), None);
    }

    #[test]
    fn decode_sorts_deliveries() {
        assert_eq!(
            decode("Push Hook", b"{}").map(|_| ()),
            Err(WebhookError::Ignored("Push Hook".into()))
        );
        assert!(matches!(
            decode("Job Hook", b"not json"),
            Err(WebhookError::Malformed(_))
        ));
        let job = br#"{"object_kind":"build","build_id":1,"build_name":"test","build_status":"failed",
            "pipeline_id":2,"project_id":3,"project":{"id":3,"path_with_namespace":"g/p"},"user":{"username":"u"}}"#;
        let d = decode("Job Hook", job).expect("a job event");
        assert_eq!(
            (d.kind, d.room.as_str(), d.identity.as_str()),
            (HookKind::Job, "g/p", "gitlab:u")
        );
        // Stored as it came, under its kind's label, and readable as the event again.
        let stored: Value = d.payload.decode().expect("stored JSON");
        assert_eq!(stored["event"], "job");
        assert_eq!(
            stored["body"],
            serde_json::from_slice::<Value>(job).expect("json")
        );
        assert!(matches!(
            Event::read(d.kind, &stored["body"]),
            Ok(Event::Job(_))
        ));
    }

    #[test]
    fn a_payload_must_match_its_header() {
        let note = serde_json::json!({"object_kind": "note"});
        assert!(check(HookKind::Pipeline, &note).is_err());
        let missing = check(HookKind::Note, &note).expect_err("fields missing");
        assert!(missing.contains("note payload"), "{missing}");
    }
}
