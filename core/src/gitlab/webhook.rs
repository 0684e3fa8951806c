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

/// Who caused an event that does not need to name them (`user` of a merge request, pipeline
/// or job hook): absent, or without a username, it is `gitlab:-`.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct HookActor {
    #[serde(default)]
    pub username: Option<String>,
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
    #[serde(default)]
    pub user: Option<HookActor>,
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
    #[serde(default)]
    pub user: Option<HookActor>,
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
    #[serde(default)]
    pub user: Option<HookActor>,
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
    /// Reads a delivery's JSON text (its body as it came) as the event of `kind`, straight
    /// into the event's own types: no JSON tree is built.
    pub fn read(kind: HookKind, json: &str) -> Result<Event, serde_json::Error> {
        Ok(match kind {
            HookKind::Note => Event::Note(serde_json::from_str(json)?),
            HookKind::MergeRequest => Event::MergeRequest(serde_json::from_str(json)?),
            HookKind::Pipeline => Event::Pipeline(serde_json::from_str(json)?),
            HookKind::Job => Event::Job(serde_json::from_str(json)?),
        })
    }

    /// Where replies about the event go (`group/project!iid` for notes and merge requests,
    /// else the project path; `-` when the payload names none) and who caused it
    /// (`gitlab:<username>`, `gitlab:-` when it names nobody).
    pub fn origin_and_identity(&self) -> (String, String) {
        let (project, iid, user) = match self {
            Event::Note(n) => (
                Some(&n.project),
                n.merge_request.as_ref().map(|m| m.iid),
                Some(n.user.username.as_str()),
            ),
            Event::MergeRequest(m) => (
                Some(&m.project),
                Some(m.object_attributes.iid),
                actor(&m.user),
            ),
            Event::Pipeline(p) => (Some(&p.project), None, actor(&p.user)),
            Event::Job(j) => (j.project.as_ref(), None, actor(&j.user)),
        };
        let path = project.map_or("-", |p| p.path_with_namespace.as_str());
        let room = match iid {
            Some(iid) => format!("{path}!{iid}"),
            None => path.to_string(),
        };
        (room, format!("gitlab:{}", user.unwrap_or("-")))
    }
}

fn actor(user: &Option<HookActor>) -> Option<&str> {
    user.as_ref().and_then(|u| u.username.as_deref())
}

/// Decodes one delivery: its `X-Gitlab-Event` header and its body. The body is read twice
/// without being kept (its `object_kind`, then the typed event), and stored as the text it
/// came as.
pub fn decode(event_header: &str, body: &[u8]) -> Result<Delivery, WebhookError> {
    /// Only the `object_kind` of an object; every other field is skipped.
    #[derive(Deserialize)]
    struct Head {
        #[serde(default)]
        object_kind: Option<Value>,
    }
    let kind = HookKind::from_header(event_header)
        .ok_or_else(|| WebhookError::Ignored(event_header.to_string()))?;
    // Skipped strings are not checked for UTF-8 by the decoder; the stored text must be.
    let text = std::str::from_utf8(body)
        .map_err(|e| WebhookError::Malformed(format!("the body is not JSON: {e}")))?;
    // A struct also reads from a JSON array; a payload is an object.
    let not_json =
        |e: serde_json::Error| WebhookError::Malformed(format!("the body is not JSON: {e}"));
    let head: Option<Head> = if text.trim_start().starts_with('{') {
        Some(serde_json::from_str(text).map_err(not_json)?)
    } else {
        serde_json::from_str::<serde::de::IgnoredAny>(text).map_err(not_json)?;
        None
    };
    let object_kind = head
        .and_then(|h| h.object_kind)
        .and_then(|k| k.as_str().map(str::to_string))
        .ok_or_else(|| WebhookError::Malformed("the payload has no object_kind".into()))?;
    if object_kind != kind.object_kind() {
        return Err(WebhookError::Malformed(format!(
            "object_kind {object_kind:?} does not match the event header (expected {:?})",
            kind.object_kind()
        )));
    }
    let event = Event::read(kind, text)
        .map_err(|e| WebhookError::Malformed(format!("{} payload: {e}", kind.object_kind())))?;
    let (room, identity) = event.origin_and_identity();
    drop(event);
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

/// A stored delivery as a worker reads it: the event's label, and its body as it came.
#[derive(Deserialize)]
pub struct Stored<'a> {
    pub event: &'a str,
    #[serde(borrow)]
    pub body: &'a serde_json::value::RawValue,
}

impl Stored<'_> {
    /// The stored event, typed.
    pub fn event(&self) -> Result<Event, String> {
        let kind = HookKind::from_label(self.event)
            .ok_or_else(|| format!("unknown event {:?}", self.event))?;
        Event::read(kind, self.body.get()).map_err(|e| e.to_string())
    }
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
        let stored: Stored = d.payload.decode().expect("stored JSON");
        assert_eq!(stored.event, "job");
        assert_eq!(stored.body.get().as_bytes(), job);
        assert!(matches!(stored.event(), Ok(Event::Job(_))));
    }

    fn malformed(header: &str, body: &str) -> String {
        match decode(header, body.as_bytes()) {
            Err(WebhookError::Malformed(why)) => why,
            other => panic!("{body}: {other:?}"),
        }
    }

    #[test]
    fn a_payload_must_match_its_header() {
        let note = r#"{"object_kind": "note"}"#;
        assert!(malformed("Pipeline Hook", note).contains("does not match"));
        assert!(malformed("Note Hook", note).contains("note payload"));
        for not_a_payload in [r#"["note"]"#, r#""note""#, "{}", r#"{"object_kind": 1}"#] {
            assert_eq!(
                malformed("Note Hook", not_a_payload),
                "the payload has no object_kind"
            );
        }
        assert!(malformed("Note Hook", "{\"object_kind\": \"note\"").contains("not JSON"));
        // Not UTF-8, even in a field nobody reads.
        let mut bytes = br#"{"object_kind":"build","x":""#.to_vec();
        bytes.extend_from_slice(&[0xff, b'"', b'}']);
        assert!(matches!(
            decode("Job Hook", &bytes),
            Err(WebhookError::Malformed(why)) if why.contains("not JSON")
        ));
    }

    #[test]
    fn origin_and_identity_come_from_the_typed_event() {
        let mr = r#"{"object_kind":"merge_request","project":{"id":1,"path_with_namespace":"g/p"},
            "object_attributes":{"iid":7,"source_branch":"a","target_branch":"b","state":"opened","title":"t"},
            "user":{"username":"alice"}}"#;
        let d = decode("Merge Request Hook", mr.as_bytes()).expect("an MR event");
        assert_eq!(
            (d.room.as_str(), d.identity.as_str()),
            ("g/p!7", "gitlab:alice")
        );
        let job = r#"{"object_kind":"build","build_id":1,"build_name":"test","build_status":"failed",
            "pipeline_id":2,"project_id":3}"#;
        let d = decode("Job Hook", job.as_bytes()).expect("a job event");
        assert_eq!((d.room.as_str(), d.identity.as_str()), ("-", "gitlab:-"));
    }
}
