//! The double's model of users, project memberships, merge requests and their notes, and how they
//! render as GitLab v4 JSON (projects too, which only need their path to render).
//!
//! Faithful: the documented "single merge request", "note", "member" and "project" entities, with
//! GitLab's field names and JSON types; merge-request ids are instance-wide while `iid`s count per
//! target project (separately from pipeline `iid`s); note ids are instance-wide; web URLs are
//! `{base}/{project}/-/merge_requests/{iid}` and `...#note_{id}`; the head `sha` of a merge request
//! changes on every push; a member's `access_level` is GitLab's number (10 guest ... 50 owner).
//!
//! Simplified: users have no email, avatar or profile beyond their names; every project is private,
//! its namespace is a group named after the path before its last segment, and its default branch is
//! `main`; a merge request always targets `main`, can always be merged (`can_be_merged`,
//! `mergeable`), has no labels, assignees, reviewers, milestones or approvals, and is a draft only
//! if its title starts with `Draft:`; notes are plain comments (no threads, diff positions, system
//! notes or quick actions).

use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::{Value, json};

use super::model::{USER_ID, USER_NAME, USERNAME, fnv1a, sha_for, timestamp};

/// Longest note body GitLab accepts, in characters.
pub const MAX_NOTE_CHARS: usize = 1_000_000;

/// A GitLab user known to the double: the token's owner ([`USER_ID`], [`USERNAME`]) or one added
/// with [`super::GitLabDouble::add_user`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    pub id: u64,
    pub username: String,
    pub name: String,
}

impl User {
    /// The user both tokens of the double belong to.
    pub fn token_owner() -> User {
        User {
            id: USER_ID,
            username: USERNAME.to_owned(),
            name: USER_NAME.to_owned(),
        }
    }

    fn avatar_url(&self, base_url: &str) -> String {
        format!(
            "{base_url}/uploads/-/system/user/avatar/{}/avatar.png",
            self.id
        )
    }

    /// GitLab's "basic user" (the `author` of merge requests and notes).
    pub fn basic_json(&self, base_url: &str) -> Value {
        json!({
            "id": self.id,
            "username": self.username,
            "name": self.name,
            "state": "active",
            "locked": false,
            "avatar_url": self.avatar_url(base_url),
            "web_url": format!("{base_url}/{}", self.username),
        })
    }

    /// The `user` object of webhook payloads. Nobody has a public email, which GitLab shows as
    /// `[REDACTED]`.
    pub fn hook_json(&self, base_url: &str) -> Value {
        json!({
            "id": self.id,
            "name": self.name,
            "username": self.username,
            "avatar_url": self.avatar_url(base_url),
            "email": "[REDACTED]",
        })
    }

    /// The members API's entity for this user with `access_level` (`GET
    /// /projects/:id/members/all/:user_id`).
    pub fn member_json(&self, base_url: &str, access_level: u64, since: DateTime<Utc>) -> Value {
        json!({
            "id": self.id,
            "username": self.username,
            "name": self.name,
            "state": "active",
            "locked": false,
            "avatar_url": self.avatar_url(base_url),
            "web_url": format!("{base_url}/{}", self.username),
            "access_level": access_level,
            "created_at": timestamp(since),
            "created_by": User::token_owner().basic_json(base_url),
            "expires_at": Value::Null,
            "membership_state": "active",
        })
    }
}

/// The last segment of a project path: the project's `path` (and, in the double, its `name`).
pub fn project_name(path: &str) -> &str {
    path.rsplit('/').next().unwrap_or(path)
}

/// The namespace part of a project path (`group/sub` of `group/sub/project`; empty if none).
pub fn namespace_path(path: &str) -> &str {
    path.rsplit_once('/').map_or("", |(ns, _)| ns)
}

/// A project's HTTP and SSH clone URLs.
pub fn clone_urls(base_url: &str, path: &str) -> (String, String) {
    let host = url::Url::parse(base_url)
        .ok()
        .and_then(|u| u.host_str().map(str::to_owned))
        .unwrap_or_else(|| "localhost".to_owned());
    (
        format!("{base_url}/{path}.git"),
        format!("git@{host}:{path}.git"),
    )
}

/// A stable fake id for a namespace (projects of one group share it).
fn namespace_id(full_path: &str) -> u64 {
    100 + fnv1a(full_path.as_bytes()) % 100_000
}

/// `GET /projects/:id`.
pub fn project_json(base_url: &str, id: u64, path: &str) -> Value {
    let name = project_name(path);
    let ns = namespace_path(path);
    let ns_name = project_name(ns);
    let (http, ssh) = clone_urls(base_url, path);
    let web_url = format!("{base_url}/{path}");
    json!({
        "id": id,
        "description": Value::Null,
        "name": name,
        "name_with_namespace": path.split('/').collect::<Vec<_>>().join(" / "),
        "path": name,
        "path_with_namespace": path,
        "created_at": "2020-01-01T00:00:00.000Z",
        "default_branch": "main",
        "tag_list": [],
        "topics": [],
        "ssh_url_to_repo": ssh,
        "http_url_to_repo": http,
        "web_url": web_url,
        "readme_url": Value::Null,
        "forks_count": 0,
        "avatar_url": Value::Null,
        "star_count": 0,
        "last_activity_at": timestamp(Utc::now()),
        "namespace": {
            "id": namespace_id(ns),
            "name": ns_name,
            "path": ns_name,
            "kind": "group",
            "full_path": ns,
            "parent_id": Value::Null,
            "avatar_url": Value::Null,
            "web_url": format!("{base_url}/groups/{ns}"),
        },
        "visibility": "private",
        "archived": false,
        "empty_repo": false,
        "issues_enabled": true,
        "merge_requests_enabled": true,
        "jobs_enabled": true,
        "creator_id": USER_ID,
        "_links": {
            "self": format!("{base_url}/api/v4/projects/{id}"),
            "merge_requests": format!("{base_url}/api/v4/projects/{id}/merge_requests"),
            "repo_branches": format!("{base_url}/api/v4/projects/{id}/repository/branches"),
            "members": format!("{base_url}/api/v4/projects/{id}/members"),
        },
    })
}

/// The `project` object of webhook payloads (also `source`/`target` of a merge request there).
pub fn project_hook_json(base_url: &str, id: u64, path: &str) -> Value {
    let (http, ssh) = clone_urls(base_url, path);
    let web_url = format!("{base_url}/{path}");
    json!({
        "id": id,
        "name": project_name(path),
        "description": "",
        "web_url": web_url,
        "avatar_url": Value::Null,
        "git_ssh_url": ssh,
        "git_http_url": http,
        "namespace": project_name(namespace_path(path)),
        "visibility_level": 0,
        "path_with_namespace": path,
        "default_branch": "main",
        "ci_config_path": Value::Null,
        "homepage": web_url,
        "url": http,
        "ssh_url": ssh,
        "http_url": http,
    })
}

/// A merge request as the double stores it; [`MergeRequest::to_json`] is GitLab's answer for it.
/// All fields are public so that tests and benchmarks can build one to render webhook payloads
/// without a running double.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MergeRequest {
    /// Instance-wide id.
    pub id: u64,
    /// Number within the target project (`!iid`).
    pub iid: u64,
    /// The target project, where the merge request lives.
    pub project_id: u64,
    pub project_path: String,
    /// Where the change comes from (the target project itself, or a fork).
    pub source_project_id: u64,
    pub source_project_path: String,
    pub source_branch: String,
    pub target_branch: String,
    pub title: String,
    pub description: String,
    /// `opened`, `closed`, `merged` or `locked`.
    pub state: String,
    pub author: User,
    /// The head commit of the source branch; a new one on every push.
    pub sha: String,
    /// Pushes since the merge request was opened.
    pub pushes: u32,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub web_url: String,
}

impl MergeRequest {
    /// The head SHA after `pushes` pushes to `branch` of `source_path` (stable across runs).
    pub fn head_sha(source_path: &str, branch: &str, pushes: u32) -> String {
        if pushes == 0 {
            sha_for(source_path, branch)
        } else {
            sha_for(source_path, &format!("{branch}\0push {pushes}"))
        }
    }

    /// Whether GitLab shows it as a draft (title starting `Draft:`, `[Draft]` or `(Draft)`).
    pub fn draft(&self) -> bool {
        let t = self.title.trim_start().to_ascii_lowercase();
        t.starts_with("draft:") || t.starts_with("[draft]") || t.starts_with("(draft)")
    }

    /// GitLab's `state_id`: 1 opened, 2 closed, 3 merged, 4 locked.
    pub fn state_id(&self) -> u64 {
        match self.state.as_str() {
            "closed" => 2,
            "merged" => 3,
            "locked" => 4,
            _ => 1,
        }
    }

    /// The SHA of the target branch (`main`) the change is based on.
    pub fn base_sha(&self) -> String {
        sha_for(&self.project_path, &self.target_branch)
    }

    /// The single-merge-request entity (`GET /projects/:id/merge_requests/:merge_request_iid`).
    pub fn to_json(&self, base_url: &str, user_notes_count: usize) -> Value {
        let merged = self.state == "merged";
        let closed = self.state == "closed";
        let at = |cond: bool| {
            if cond {
                Value::String(timestamp(self.updated_at))
            } else {
                Value::Null
            }
        };
        let by = |cond: bool| {
            if cond {
                User::token_owner().basic_json(base_url)
            } else {
                Value::Null
            }
        };
        let base_sha = self.base_sha();
        let mut mr = json!({
            "id": self.id,
            "iid": self.iid,
            "project_id": self.project_id,
            "title": self.title,
            "description": self.description,
            "state": self.state,
            "created_at": timestamp(self.created_at),
            "updated_at": timestamp(self.updated_at),
            "merged_by": by(merged),
            "merge_user": by(merged),
            "merged_at": at(merged),
            "closed_by": by(closed),
            "closed_at": at(closed),
            "target_branch": self.target_branch,
            "source_branch": self.source_branch,
            "user_notes_count": user_notes_count,
            "upvotes": 0,
            "downvotes": 0,
            "author": self.author.basic_json(base_url),
            "assignees": [],
            "assignee": Value::Null,
            "reviewers": [],
            "source_project_id": self.source_project_id,
            "target_project_id": self.project_id,
            "labels": [],
            "draft": self.draft(),
            "imported": false,
            "imported_from": "none",
            "work_in_progress": self.draft(),
            "milestone": Value::Null,
            "merge_when_pipeline_succeeds": false,
            "merge_status": "can_be_merged",
            "detailed_merge_status": if self.draft() { "draft_status" } else { "mergeable" },
            "sha": self.sha,
            "merge_commit_sha": Value::Null,
            "squash_commit_sha": Value::Null,
            "discussion_locked": Value::Null,
            "should_remove_source_branch": Value::Null,
            "force_remove_source_branch": true,
        });
        let rest = json!({
            "prepared_at": timestamp(self.created_at),
            "reference": format!("!{}", self.iid),
            "references": {
                "short": format!("!{}", self.iid),
                "relative": format!("!{}", self.iid),
                "full": format!("{}!{}", self.project_path, self.iid),
            },
            "web_url": self.web_url,
            "time_stats": {
                "time_estimate": 0,
                "total_time_spent": 0,
                "human_time_estimate": Value::Null,
                "human_total_time_spent": Value::Null,
            },
            "squash": false,
            "squash_on_merge": false,
            "task_completion_status": { "count": 0, "completed_count": 0 },
            "has_conflicts": false,
            "blocking_discussions_resolved": true,
            "approvals_before_merge": Value::Null,
            "subscribed": false,
            "changes_count": "1",
            "latest_build_started_at": Value::Null,
            "latest_build_finished_at": Value::Null,
            "first_deployed_to_production_at": Value::Null,
            "pipeline": Value::Null,
            "head_pipeline": Value::Null,
            "diff_refs": {
                "base_sha": base_sha,
                "head_sha": self.sha,
                "start_sha": base_sha,
            },
            "merge_error": Value::Null,
            "first_contribution": false,
            "user": { "can_merge": true },
        });
        if let (Some(map), Value::Object(rest)) = (mr.as_object_mut(), rest) {
            map.extend(rest);
        }
        mr
    }
}

/// A note (comment) on a merge request, as the double stores it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NoteRecord {
    /// Instance-wide id.
    pub id: u64,
    /// The merge request's project and iid.
    pub project_id: u64,
    pub mr_iid: u64,
    /// The merge request's instance-wide id (GitLab's `noteable_id`).
    pub noteable_id: u64,
    pub author_id: u64,
    /// The author's username.
    pub author: String,
    pub body: String,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    /// How many times the body was changed after creation (through `PUT` or
    /// [`super::GitLabDouble::edit_comment`]); setting the same body again is no change.
    pub edits: u32,
}

impl NoteRecord {
    /// The notes API's entity (list, get, create, edit).
    pub fn to_json(&self, base_url: &str, author: &User) -> Value {
        json!({
            "id": self.id,
            "type": Value::Null,
            "body": self.body,
            "attachment": Value::Null,
            "author": author.basic_json(base_url),
            "created_at": timestamp(self.created_at),
            "updated_at": timestamp(self.updated_at),
            "system": false,
            "noteable_id": self.noteable_id,
            "noteable_type": "MergeRequest",
            "project_id": self.project_id,
            "noteable_iid": self.mr_iid,
            "commands_changes": {},
            "resolvable": false,
            "confidential": false,
            "internal": false,
            "imported": false,
            "imported_from": "none",
        })
    }

    /// The `discussion_id` GitLab gives a single comment: 40 hex digits, stable per note.
    pub fn discussion_id(&self) -> String {
        sha_for("discussion", &self.id.to_string())
    }
}

/// ISO 8601 with seconds and `Z`, as merge-request webhooks write their times.
pub fn iso_seconds(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Secs, true)
}
