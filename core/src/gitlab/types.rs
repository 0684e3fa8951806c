//! GitLab's JSON shapes, as far as shepherd reads them.
//!
//! Only the fields shepherd uses are declared; serde ignores the rest, so new fields GitLab adds
//! never break decoding. Statuses have an `Unknown` catch-all for the same reason. Field names
//! follow GitLab's except `ref`, a Rust keyword, which is `git_ref` here.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// A pipeline's status, as GitLab reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PipelineStatus {
    Created,
    WaitingForResource,
    WaitingForCallback,
    Preparing,
    Pending,
    Running,
    Success,
    Failed,
    Canceled,
    Canceling,
    Skipped,
    Manual,
    Scheduled,
    /// A status this version of shepherd does not know.
    #[serde(other)]
    Unknown,
}

impl PipelineStatus {
    /// Finished for good: GitLab's completed statuses (success, failed, canceled, skipped).
    /// `manual` and `scheduled` are blocked, not finished: see [`Self::is_blocked`].
    pub fn is_finished(&self) -> bool {
        matches!(
            self,
            Self::Success | Self::Failed | Self::Canceled | Self::Skipped
        )
    }

    /// Waiting for a person (`manual`) or a time (`scheduled`); nothing runs until then.
    pub fn is_blocked(&self) -> bool {
        matches!(self, Self::Manual | Self::Scheduled)
    }

    /// GitLab's spelling.
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Created => "created",
            Self::WaitingForResource => "waiting_for_resource",
            Self::WaitingForCallback => "waiting_for_callback",
            Self::Preparing => "preparing",
            Self::Pending => "pending",
            Self::Running => "running",
            Self::Success => "success",
            Self::Failed => "failed",
            Self::Canceled => "canceled",
            Self::Canceling => "canceling",
            Self::Skipped => "skipped",
            Self::Manual => "manual",
            Self::Scheduled => "scheduled",
            Self::Unknown => "unknown",
        }
    }
}

impl std::fmt::Display for PipelineStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A job's status; also the values of the jobs API's `scope[]` filter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobStatus {
    Created,
    WaitingForResource,
    Preparing,
    Pending,
    Running,
    Success,
    Failed,
    Canceled,
    Canceling,
    Skipped,
    Manual,
    Scheduled,
    /// A status this version of shepherd does not know.
    #[serde(other)]
    Unknown,
}

impl JobStatus {
    /// Finished for good, as for pipelines: success, failed, canceled, skipped.
    pub fn is_finished(&self) -> bool {
        matches!(
            self,
            Self::Success | Self::Failed | Self::Canceled | Self::Skipped
        )
    }

    /// GitLab's spelling.
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Created => "created",
            Self::WaitingForResource => "waiting_for_resource",
            Self::Preparing => "preparing",
            Self::Pending => "pending",
            Self::Running => "running",
            Self::Success => "success",
            Self::Failed => "failed",
            Self::Canceled => "canceled",
            Self::Canceling => "canceling",
            Self::Skipped => "skipped",
            Self::Manual => "manual",
            Self::Scheduled => "scheduled",
            Self::Unknown => "unknown",
        }
    }
}

impl AsRef<str> for JobStatus {
    fn as_ref(&self) -> &str {
        self.as_str()
    }
}

impl std::fmt::Display for JobStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One pipeline, as `GET /projects/:id/pipelines/:pipeline_id` and the create and cancel
/// endpoints return it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Pipeline {
    pub id: u64,
    /// Project-scoped number (`#421` in the UI); older GitLab versions omit it.
    #[serde(default)]
    pub iid: Option<u64>,
    pub project_id: u64,
    pub sha: String,
    #[serde(rename = "ref")]
    pub git_ref: String,
    pub status: PipelineStatus,
    /// What started it: `push`, `web`, `api`, `trigger`, `schedule`, `merge_request_event`, ...
    #[serde(default)]
    pub source: Option<String>,
    pub web_url: String,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    #[serde(default)]
    pub started_at: Option<DateTime<Utc>>,
    #[serde(default)]
    pub finished_at: Option<DateTime<Utc>>,
    /// Seconds spent running (GitLab sends an integer, or null before it starts).
    #[serde(default)]
    pub duration: Option<f64>,
}

/// One entry of `GET /projects/:id/pipelines`: fewer fields than [`Pipeline`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PipelineSummary {
    pub id: u64,
    #[serde(default)]
    pub iid: Option<u64>,
    pub project_id: u64,
    pub sha: String,
    #[serde(rename = "ref")]
    pub git_ref: String,
    pub status: PipelineStatus,
    #[serde(default)]
    pub source: Option<String>,
    pub web_url: String,
    #[serde(default)]
    pub created_at: Option<DateTime<Utc>>,
    #[serde(default)]
    pub updated_at: Option<DateTime<Utc>>,
}

/// How a CI/CD variable reaches the job: as an environment variable, or as a file whose path
/// is in the environment variable.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum VariableType {
    #[default]
    EnvVar,
    File,
}

/// A pipeline variable (`GET .../variables`, and the `variables` of a create request).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Variable {
    pub key: String,
    pub value: String,
    #[serde(default)]
    pub variable_type: VariableType,
}

impl Variable {
    /// An `env_var` variable.
    pub fn env(key: impl Into<String>, value: impl Into<String>) -> Self {
        Self {
            key: key.into(),
            value: value.into(),
            variable_type: VariableType::EnvVar,
        }
    }
}

/// A job of a pipeline (`GET .../pipelines/:pipeline_id/jobs`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Job {
    pub id: u64,
    pub name: String,
    pub stage: String,
    pub status: JobStatus,
    pub web_url: String,
    #[serde(default)]
    pub allow_failure: bool,
    /// Why it failed: `script_failure`, `runner_system_failure`, `stuck_or_timeout_failure`, ...
    #[serde(default)]
    pub failure_reason: Option<String>,
    /// The pipeline it belongs to (GitLab includes it in job answers).
    #[serde(default)]
    pub pipeline: Option<JobPipeline>,
}

/// The `pipeline` object of a job.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobPipeline {
    pub id: u64,
    pub project_id: u64,
    #[serde(rename = "ref")]
    pub git_ref: String,
    pub sha: String,
    pub status: String,
}

/// The token's user (`GET /user`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct User {
    pub id: u64,
    pub username: String,
    pub name: String,
}

/// Filters for [`super::GitLab::pipelines`]. Results always come newest first
/// (`order_by=id&sort=desc`), one page of `per_page` entries.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PipelineQuery {
    pub git_ref: Option<String>,
    pub sha: Option<String>,
    /// `api`, `push`, `web`, ... (GitLab's `source` filter).
    pub source: Option<String>,
    pub status: Option<PipelineStatus>,
    pub updated_after: Option<DateTime<Utc>>,
    /// Entries in the page, 1..=100 (clamped); `None` is GitLab's default, 20.
    pub per_page: Option<u32>,
}

/// A user as GitLab embeds one in other objects (`author` of a merge request or a note): the
/// "basic user" entity, of which shepherd reads the id and the names.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserRef {
    pub id: u64,
    pub username: String,
    /// The display name; GitLab always sends it, but it is not needed to act on a note.
    #[serde(default)]
    pub name: String,
}

/// A merge request, as `GET /projects/:id/merge_requests/:merge_request_iid` returns it.
///
/// `project_id` is the target project (where the merge request lives); `source_project_id`
/// differs from it when the change comes from a fork. `sha` is the head commit of the source
/// branch, which changes on every push.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MergeRequest {
    /// Instance-wide id.
    pub id: u64,
    /// Project-scoped number (`!12` in the UI, and in every merge-request URL of the API).
    pub iid: u64,
    pub project_id: u64,
    pub source_project_id: u64,
    pub target_project_id: u64,
    pub title: String,
    /// `opened`, `closed`, `merged` or `locked`.
    pub state: String,
    pub source_branch: String,
    pub target_branch: String,
    /// The head commit of the source branch.
    pub sha: String,
    pub web_url: String,
    /// A draft cannot be merged (title starting `Draft:`); older GitLab versions omit it.
    #[serde(default)]
    pub draft: bool,
    #[serde(default)]
    pub author: Option<UserRef>,
}

/// A project, as `GET /projects/:id` returns it (the fields shepherd reads).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Project {
    pub id: u64,
    /// `group/sub/project`.
    pub path_with_namespace: String,
    pub web_url: String,
    /// The HTTPS clone URL (`https://gitlab.example.com/group/project.git`).
    pub http_url_to_repo: String,
    /// `null` for an empty repository.
    #[serde(default)]
    pub default_branch: Option<String>,
}

/// A comment on a merge request (the notes API's "note" entity). GitLab writes system notes
/// ("added 1 commit") into the same list, with `system: true`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Note {
    /// Instance-wide id; also the anchor of its web link (`#note_<id>`).
    pub id: u64,
    /// Markdown, as written.
    pub body: String,
    pub author: UserRef,
    #[serde(default)]
    pub system: bool,
    pub created_at: DateTime<Utc>,
    #[serde(default)]
    pub updated_at: Option<DateTime<Utc>>,
    /// `MergeRequest`, `Issue`, `Commit`, `Snippet`, ...
    #[serde(default)]
    pub noteable_type: Option<String>,
    /// The merge request's (or issue's) iid.
    #[serde(default)]
    pub noteable_iid: Option<u64>,
}

/// GitLab's access levels (members API `access_level`): 0 no access, 5 minimal, 10 guest,
/// 15 planner, 20 reporter, 30 developer, 40 maintainer, 50 owner.
///
/// Ordered by privilege, so `level >= AccessLevel::Developer` reads as GitLab's "Developer or
/// higher". GitLab 17 added Planner (15) between Guest and Reporter; Admin (60) is not a member
/// role and reads as Owner.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum AccessLevel {
    NoAccess,
    Minimal,
    Guest,
    Planner,
    Reporter,
    Developer,
    Maintainer,
    Owner,
}

impl AccessLevel {
    /// Every level, lowest first.
    pub const ALL: [AccessLevel; 8] = [
        Self::NoAccess,
        Self::Minimal,
        Self::Guest,
        Self::Planner,
        Self::Reporter,
        Self::Developer,
        Self::Maintainer,
        Self::Owner,
    ];

    /// The level for GitLab's number. A number GitLab may add later maps to the highest known
    /// level not above it (so `35` is Developer and `60`, Admin, is Owner): never more access
    /// than GitLab granted.
    pub fn from_level(n: u64) -> AccessLevel {
        Self::ALL
            .iter()
            .rev()
            .copied()
            .find(|l| l.level() <= n)
            .unwrap_or(Self::NoAccess)
    }

    /// GitLab's number for this level.
    pub fn level(self) -> u64 {
        match self {
            Self::NoAccess => 0,
            Self::Minimal => 5,
            Self::Guest => 10,
            Self::Planner => 15,
            Self::Reporter => 20,
            Self::Developer => 30,
            Self::Maintainer => 40,
            Self::Owner => 50,
        }
    }

    /// The role's name as GitLab's documentation writes it, in lower case.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::NoAccess => "no access",
            Self::Minimal => "minimal access",
            Self::Guest => "guest",
            Self::Planner => "planner",
            Self::Reporter => "reporter",
            Self::Developer => "developer",
            Self::Maintainer => "maintainer",
            Self::Owner => "owner",
        }
    }
}

impl std::fmt::Display for AccessLevel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A text that names no GitLab access level.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "{0:?} is not a GitLab access level: use no access, minimal access, guest, planner, \
     reporter, developer, maintainer or owner (or 0, 5, 10, 15, 20, 30, 40, 50)"
)]
pub struct ParseAccessLevelError(pub String);

impl std::str::FromStr for AccessLevel {
    type Err = ParseAccessLevelError;

    /// A role name in any case, with a space, `_` or `-` between words (`Developer`,
    /// `minimal_access`, `no-access`; `minimal` and `none` too), or exactly one of GitLab's
    /// numbers (`30`). Other numbers are refused rather than rounded: in configuration they are
    /// more likely typos than new roles.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let text = s.trim();
        if let Ok(n) = text.parse::<u64>() {
            return Self::ALL
                .iter()
                .copied()
                .find(|l| l.level() == n)
                .ok_or_else(|| ParseAccessLevelError(s.to_string()));
        }
        let words = text
            .split(|c: char| c.is_whitespace() || c == '_' || c == '-')
            .filter(|w| !w.is_empty())
            .map(str::to_ascii_lowercase)
            .collect::<Vec<_>>()
            .join(" ");
        let level = match words.as_str() {
            "no access" | "none" => Self::NoAccess,
            "minimal access" | "minimal" => Self::Minimal,
            other => match Self::ALL.iter().find(|l| l.as_str() == other) {
                Some(level) => *level,
                None => return Err(ParseAccessLevelError(s.to_string())),
            },
        };
        Ok(level)
    }
}
