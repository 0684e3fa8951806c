//! The double's in-memory model of a GitLab instance: projects, pipelines, jobs, and how they render
//! as GitLab v4 JSON.
//!
//! Faithful: field names and JSON types of the documented "Pipeline" (single pipeline, create,
//! cancel), "basic pipeline" (list) and "Job" entities; timestamps as RFC 3339 UTC with milliseconds
//! and `Z` (`2016-08-11T11:28:34.085Z`); `started_at`, `finished_at`, `duration` (whole seconds for a
//! pipeline, fractional for a job) and `queued_duration` follow the status the way GitLab fills them;
//! pipeline ids are global and increasing while `iid` counts per project; web URLs are
//! `{base}/{project path}/-/pipelines/{id}` and `{base}/{project path}/-/jobs/{id}`.
//!
//! Simplified: there is no repository. The commit SHA of a ref is a stable hash of project and ref,
//! `before_sha` is the blank SHA GitLab uses for pipelines not made by a push, `committed_at` and
//! `coverage` are always null, `tag` is always false, and `detailed_status` carries only the fields
//! clients look at (icon, text, label, group, tooltip, has_details, details_path, illustration,
//! favicon). Every pipeline belongs to the single user of the token.

use std::time::Duration;

use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::{Value, json};

/// The user every token of the double belongs to.
pub const USER_ID: u64 = 1;
/// The username of the token's user: the bot's GitLab account is named like the bot, so people
/// address it as `@shepherd` in comments.
pub const USERNAME: &str = "shepherd";
/// The display name of the token's user.
pub const USER_NAME: &str = "Shepherd Bot";

/// The SHA GitLab writes as `before_sha` when a pipeline was not created by a push.
pub const BLANK_SHA: &str = "0000000000000000000000000000000000000000";

/// Every pipeline and job status GitLab documents.
pub const STATUSES: &[&str] = &[
    "created",
    "waiting_for_resource",
    "preparing",
    "pending",
    "running",
    "success",
    "failed",
    "canceled",
    "canceling",
    "skipped",
    "manual",
    "scheduled",
];

/// Statuses after which nothing more happens to a pipeline or job.
pub fn is_finished(status: &str) -> bool {
    matches!(status, "success" | "failed" | "canceled" | "skipped")
}

/// Statuses that `POST .../cancel` turns into `canceled`.
pub fn is_cancelable(status: &str) -> bool {
    matches!(
        status,
        "created"
            | "waiting_for_resource"
            | "preparing"
            | "pending"
            | "running"
            | "scheduled"
            | "canceling"
    )
}

/// Formats a time the way GitLab's API does: `2016-08-11T11:28:34.085Z`.
pub fn timestamp(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Millis, true)
}

fn opt_timestamp(t: Option<DateTime<Utc>>) -> Value {
    t.map_or(Value::Null, |t| Value::String(timestamp(t)))
}

fn seconds_between(from: DateTime<Utc>, to: DateTime<Utc>) -> f64 {
    (to - from).num_milliseconds().max(0) as f64 / 1000.0
}

/// A stable, fake 40-hex commit SHA for a ref of a project (the double has no repository).
pub fn sha_for(project_path: &str, git_ref: &str) -> String {
    let mut out = String::with_capacity(40);
    let mut state = fnv1a(format!("{project_path}\0{git_ref}").as_bytes());
    while out.len() < 40 {
        state = splitmix64(state);
        out.push_str(&format!("{state:016x}"));
    }
    out.truncate(40);
    out
}

/// FNV-1a, used to turn strings into seeds.
pub fn fnv1a(bytes: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        hash ^= u64::from(*b);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    hash
}

/// One step of SplitMix64: a good, tiny, seedable mixer.
pub fn splitmix64(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// A project known to the double.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Project {
    pub id: u64,
    /// `group/sub/project`.
    pub path: String,
    /// The last pipeline `iid` handed out in this project.
    pub(crate) last_iid: u64,
    /// The last merge-request `iid` handed out in this project.
    pub(crate) last_mr_iid: u64,
}

/// A pipeline variable as GitLab stores it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Variable {
    pub key: String,
    pub value: String,
    /// `env_var` (the default) or `file`.
    pub variable_type: String,
}

impl Variable {
    /// An `env_var` variable.
    pub fn env(key: &str, value: &str) -> Variable {
        Variable {
            key: key.to_owned(),
            value: value.to_owned(),
            variable_type: "env_var".to_owned(),
        }
    }

    /// The JSON of `GET .../pipelines/:id/variables` items.
    pub fn to_json(&self) -> Value {
        json!({ "variable_type": self.variable_type, "key": self.key, "value": self.value })
    }
}

/// When an auto-finishing pipeline moves on (see [`AutoFinish`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// After this many `GET /projects/:id/pipelines/:pipeline_id` answers in the current status.
    Polls(u32),
    /// This long after the pipeline entered the current status.
    After(Duration),
}

/// How an auto-finishing pipeline ends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AutoOutcome {
    /// The pipeline and its `build` job succeed.
    Success,
    /// The pipeline fails: `build` succeeds and a job `job` in stage `test` fails with `failure_reason`
    /// (e.g. `script_failure`, `runner_system_failure`, `stuck_or_timeout_failure`).
    Failed { job: String, failure_reason: String },
}

/// A policy that drives pipelines created through `POST /projects/:id/pipeline` without the test
/// having to call [`super::GitLabDouble::set_status`]: `created` -> `running` after `start`, then
/// `running` -> the outcome after `finish`. The policy in force when a pipeline is created is the
/// one it follows; a manual `set_status` or a cancel takes the pipeline out of automatic mode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AutoFinish {
    pub start: Step,
    pub finish: Step,
    pub outcome: AutoOutcome,
}

impl AutoFinish {
    /// Running after `start` polls, then successful after `finish` more polls.
    pub fn success_after_polls(start: u32, finish: u32) -> AutoFinish {
        AutoFinish {
            start: Step::Polls(start),
            finish: Step::Polls(finish),
            outcome: AutoOutcome::Success,
        }
    }

    /// Running after `start` polls, then failed after `finish` more polls, with the job `job` failed
    /// for `script_failure`.
    pub fn failed_after_polls(start: u32, finish: u32, job: &str) -> AutoFinish {
        AutoFinish {
            start: Step::Polls(start),
            finish: Step::Polls(finish),
            outcome: AutoOutcome::Failed {
                job: job.to_owned(),
                failure_reason: "script_failure".to_owned(),
            },
        }
    }

    /// Running `start` after creation, finished with `outcome` `finish` after that.
    pub fn after(start: Duration, finish: Duration, outcome: AutoOutcome) -> AutoFinish {
        AutoFinish {
            start: Step::After(start),
            finish: Step::After(finish),
            outcome,
        }
    }
}

/// The automatic progress of one pipeline.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct AutoState {
    pub policy: AutoFinish,
    /// Polls answered since the pipeline entered its current status.
    pub polls: u32,
    /// When the pipeline entered its current status.
    pub since: DateTime<Utc>,
}

/// A pipeline as the double stores it. The JSON GitLab would answer is [`Pipeline::to_json`]
/// (single pipeline) or [`Pipeline::to_basic_json`] (list item).
#[derive(Debug, Clone, PartialEq)]
pub struct Pipeline {
    pub id: u64,
    pub iid: u64,
    pub project_id: u64,
    pub project_path: String,
    pub sha: String,
    pub git_ref: String,
    pub status: String,
    /// `api` for pipelines created through the API, `web` for the seeded reference pipelines.
    pub source: String,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
    pub variables: Vec<Variable>,
    pub web_url: String,
    /// Created through `POST /projects/:id/pipeline` (as opposed to seeded by the test).
    pub created_via_api: bool,
    pub(crate) auto: Option<AutoState>,
}

impl Pipeline {
    /// The value of a variable of this pipeline.
    pub fn variable(&self, key: &str) -> Option<&str> {
        self.variables
            .iter()
            .find(|v| v.key == key)
            .map(|v| v.value.as_str())
    }

    /// Whole seconds between start and finish, as GitLab reports a pipeline's `duration`.
    pub fn duration(&self) -> Option<u64> {
        match (self.started_at, self.finished_at) {
            (Some(s), Some(f)) => Some(seconds_between(s, f).floor() as u64),
            _ => None,
        }
    }

    /// Seconds the pipeline waited before it started.
    pub fn queued_duration(&self) -> Option<f64> {
        self.started_at.map(|s| seconds_between(self.created_at, s))
    }

    /// Moves the pipeline to `status` at time `at`, filling the timestamps as GitLab does.
    pub(crate) fn transition(&mut self, status: &str, at: DateTime<Utc>) {
        self.status = status.to_owned();
        self.updated_at = at;
        match status {
            "running" | "canceling" => {
                self.started_at.get_or_insert(at);
                self.finished_at = None;
            }
            s if is_finished(s) => {
                // A pipeline canceled or skipped before it ran never gets a start time.
                if self.started_at.is_none() && matches!(s, "success" | "failed") {
                    self.started_at = Some(at);
                }
                self.finished_at = Some(at);
            }
            _ => {
                self.finished_at = None;
                if matches!(
                    status,
                    "created" | "pending" | "waiting_for_resource" | "preparing"
                ) {
                    self.started_at = None;
                }
            }
        }
        if let Some(auto) = self.auto.as_mut() {
            auto.polls = 0;
            auto.since = at;
        }
    }

    /// The list item form (`GET /projects/:id/pipelines`).
    pub fn to_basic_json(&self) -> Value {
        json!({
            "id": self.id,
            "iid": self.iid,
            "project_id": self.project_id,
            "sha": self.sha,
            "ref": self.git_ref,
            "status": self.status,
            "source": self.source,
            "created_at": timestamp(self.created_at),
            "updated_at": timestamp(self.updated_at),
            "web_url": self.web_url,
            "name": Value::Null,
        })
    }

    /// The full form (get, create, cancel).
    pub fn to_json(&self, base_url: &str) -> Value {
        json!({
            "id": self.id,
            "iid": self.iid,
            "project_id": self.project_id,
            "name": Value::Null,
            "sha": self.sha,
            "ref": self.git_ref,
            "status": self.status,
            "source": self.source,
            "created_at": timestamp(self.created_at),
            "updated_at": timestamp(self.updated_at),
            "web_url": self.web_url,
            "before_sha": BLANK_SHA,
            "tag": false,
            "yaml_errors": Value::Null,
            "user": user_json(base_url),
            "started_at": opt_timestamp(self.started_at),
            "finished_at": opt_timestamp(self.finished_at),
            "committed_at": Value::Null,
            "duration": self.duration(),
            "queued_duration": self.queued_duration(),
            "coverage": Value::Null,
            "archived": false,
            "detailed_status": detailed_status(&self.status, &format!("/{}/-/pipelines/{}", self.project_path, self.id)),
        })
    }
}

/// A job of a pipeline.
#[derive(Debug, Clone, PartialEq)]
pub struct Job {
    pub id: u64,
    pub pipeline_id: u64,
    pub name: String,
    pub stage: String,
    pub status: String,
    /// Set for failed jobs (`script_failure` unless told otherwise).
    pub failure_reason: Option<String>,
    pub allow_failure: bool,
    pub created_at: DateTime<Utc>,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
    pub web_url: String,
    /// The job's log (`GET /projects/:id/jobs/:job_id/trace`), as the test set it.
    pub trace: String,
    /// Retried: a newer job of the same name replaced it (GitLab lists it only with
    /// `include_retried=true`).
    pub retried: bool,
}

impl Job {
    /// Whether GitLab would retry it (`POST .../jobs/:job_id/retry`): finished, and not
    /// already replaced by a retry.
    pub fn retryable(&self) -> bool {
        matches!(self.status.as_str(), "failed" | "canceled" | "success") && !self.retried
    }

    /// Moves the job to `status` at `at`, filling the timestamps as GitLab does.
    pub(crate) fn transition(
        &mut self,
        status: &str,
        failure_reason: Option<&str>,
        at: DateTime<Utc>,
    ) {
        self.status = status.to_owned();
        match status {
            "running" => {
                self.started_at.get_or_insert(at);
                self.finished_at = None;
            }
            s if is_finished(s) => {
                if self.started_at.is_none() && matches!(s, "success" | "failed") {
                    self.started_at = Some(at);
                }
                self.finished_at = Some(at);
            }
            _ => {
                self.started_at = None;
                self.finished_at = None;
            }
        }
        self.failure_reason = if status == "failed" {
            Some(failure_reason.unwrap_or("script_failure").to_owned())
        } else {
            None
        };
    }

    /// The job JSON of `GET /projects/:id/pipelines/:pipeline_id/jobs`.
    pub fn to_json(&self, pipeline: &Pipeline, base_url: &str) -> Value {
        let duration = match (self.started_at, self.finished_at) {
            (Some(s), Some(f)) => Some(seconds_between(s, f)),
            (Some(s), None) => Some(seconds_between(s, Utc::now())),
            _ => None,
        };
        let queued = self.started_at.map(|s| seconds_between(self.created_at, s));
        let mut job = json!({
            "id": self.id,
            "name": self.name,
            "stage": self.stage,
            "status": self.status,
            "ref": pipeline.git_ref,
            "tag": false,
            "coverage": Value::Null,
            "allow_failure": self.allow_failure,
            "created_at": timestamp(self.created_at),
            "started_at": opt_timestamp(self.started_at),
            "finished_at": opt_timestamp(self.finished_at),
            "erased_at": Value::Null,
            "duration": duration,
            "queued_duration": queued,
            "artifacts_expire_at": Value::Null,
            "tag_list": [],
            "user": user_json(base_url),
            "commit": {
                "id": pipeline.sha,
                "short_id": &pipeline.sha[..8],
                "title": "Commit of the GitLab double",
                "message": "Commit of the GitLab double",
                "author_name": USER_NAME,
                "author_email": format!("{USERNAME}@example.com"),
                "created_at": timestamp(pipeline.created_at),
            },
            "pipeline": {
                "id": pipeline.id,
                "project_id": pipeline.project_id,
                "ref": pipeline.git_ref,
                "sha": pipeline.sha,
                "status": pipeline.status,
            },
            "web_url": self.web_url,
            "project": { "ci_job_token_scope_enabled": false },
            "artifacts": [],
            "runner": Value::Null,
            "archived": false,
        });
        if let (Some(reason), Some(map)) = (&self.failure_reason, job.as_object_mut()) {
            map.insert("failure_reason".to_owned(), Value::String(reason.clone()));
        }
        job
    }
}

/// The user object GitLab embeds in pipelines and jobs (and answers for `GET /user`, with more).
pub fn user_json(base_url: &str) -> Value {
    json!({
        "id": USER_ID,
        "username": USERNAME,
        "name": USER_NAME,
        "state": "active",
        "locked": false,
        "avatar_url": format!("{base_url}/uploads/-/system/user/avatar/{USER_ID}/avatar.png"),
        "web_url": format!("{base_url}/{USERNAME}"),
    })
}

/// The `label` of a status's `detailed_status` (`passed`, `failed`, `running`, ...), which
/// pipeline hooks send as their `detailed_status`.
pub(crate) fn detailed_status_label(status: &str) -> String {
    detailed_status(status, "")["label"]
        .as_str()
        .unwrap_or(status)
        .to_owned()
}

/// `detailed_status` as GitLab renders it for a status.
fn detailed_status(status: &str, details_path: &str) -> Value {
    let (text, label, group) = match status {
        "success" => ("Passed", "passed", "success"),
        "failed" => ("Failed", "failed", "failed"),
        "canceled" => ("Canceled", "canceled", "canceled"),
        "canceling" => ("Canceling", "canceling", "canceling"),
        "running" => ("Running", "running", "running"),
        "pending" => ("Pending", "pending", "pending"),
        "created" => ("Created", "created", "created"),
        "skipped" => ("Skipped", "skipped", "skipped"),
        "manual" => ("Blocked", "waiting for manual action", "manual"),
        "scheduled" => ("Scheduled", "waiting for delayed job", "scheduled"),
        "preparing" => ("Preparing", "preparing", "preparing"),
        "waiting_for_resource" => ("Waiting", "waiting for resource", "waiting-for-resource"),
        other => (other, other, other),
    };
    let icon = format!("status_{}", group.replace('-', "_"));
    json!({
        "icon": icon,
        "text": text,
        "label": label,
        "group": group,
        "tooltip": label,
        "has_details": true,
        "details_path": details_path,
        "illustration": Value::Null,
        "favicon": format!("/assets/ci_favicons/favicon_{icon}.png"),
    })
}
