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
