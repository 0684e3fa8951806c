//! A test double of GitLab's REST API v4, in process, shared by every end-to-end test and benchmark
//! that needs GitLab (which cannot run on the test machines).
//!
//! Each test starts its own double on `127.0.0.1:0` with [`GitLabDouble::start`], seeds projects,
//! reference pipelines, users, members and merge requests, points shepherd at [`GitLabDouble::url`]
//! with [`GitLabDouble::token`], then drives pipelines ([`GitLabDouble::set_status`],
//! [`GitLabDouble::set_auto_finish`]) and people ([`GitLabDouble::comment`],
//! [`GitLabDouble::push_mr`]), injects faults ([`GitLabDouble::set_faults`],
//! [`GitLabDouble::fail_next`], [`GitLabDouble::hold_creates`]) and checks what shepherd asked and
//! wrote ([`GitLabDouble::requests`], [`GitLabDouble::pipelines_created`], [`GitLabDouble::notes`]).
//! With [`GitLabDouble::set_webhook`] it also sends GitLab's webhooks to shepherd (`hooks.rs`) and
//! records the deliveries ([`GitLabDouble::hook_deliveries`], [`GitLabDouble::redeliver`]).
//!
//! Faithful to GitLab (as its API documentation describes it):
//! - routes under `/api/v4`: get a pipeline, its variables, list a project's pipelines (filters
//!   `ref`, `status`, `source`, `scope`, `sha`, `username`, `updated_after`, `updated_before`;
//!   `order_by` id|status|ref|updated_at|user_id, `sort` asc|desc), create a pipeline
//!   (`POST /projects/:id/pipeline`, `ref` and `variables` in a JSON body or `ref` in the query),
//!   cancel a pipeline, list a pipeline's jobs (`scope[]` repeatable, `include_retried`), get a
//!   job (`GET /projects/:id/jobs/:job_id`), its log (`.../trace`, `text/plain`), retry it
//!   (`POST .../retry`: a new job of the same name, `pending`, 201; 403 `{"message":"403
//!   Forbidden - Job is not retryable"}` unless it finished and was not retried), get a project
//!   (`GET /projects/:id`), get a member's effective access (`GET /projects/:id/members/all/:user_id`),
//!   get a merge request (`GET /projects/:id/merge_requests/:merge_request_iid`), list its notes
//!   (`order_by` created_at|updated_at, `sort` asc|desc, default created_at desc), get one, create
//!   one (`body` in a JSON or form body or the query) and edit one (`PUT .../notes/:note_id`, only
//!   by its author), `GET /user`, `GET /version`; a project's and a group's CI/CD variables
//!   (list, create, get, update, delete under `/projects/:id/variables` and `/groups/:id/variables`,
//!   see `ci_variables.rs`: Rails' 400 for a taken or malformed key, 404 `{"message":"404 Variable
//!   Not Found"}`, 409 when a key has several environment scopes and no `filter[environment_scope]`);
//! - a project is addressed by numeric id or URL-encoded full path (`group%2Fsub%2Fproject`, found
//!   case-insensitively); pipeline, merge-request and note ids are global and increasing, pipeline
//!   and merge-request `iid`s count per project (separately);
//! - auth by `PRIVATE-TOKEN: <token>` or `Authorization: Bearer <token>`; JSON shapes, status codes
//!   and error bodies: 401 `{"message":"401 Unauthorized"}`, 403 `{"message":"403 Forbidden"}`
//!   (the read-only [`GitLabDouble::guest_token`] on a write, or editing someone else's note),
//!   404 `{"message":"404 Project Not Found"}` / `{"message":"404 Not found"}`, unknown route 404
//!   `{"error":"404 Not Found"}`, wrong method 405 `{"error":"405 Not Allowed"}`, parameter errors
//!   400 `{"error":"<param> is missing"}` / `{"error":"<param> does not have a valid value"}` /
//!   `{"error":"<param> is invalid"}`, unknown ref 400 `{"message":{"base":["Reference not found"]}}`,
//!   a blank or too long note 400 `{"message":{"note":["can't be blank"]}}`;
//! - offset pagination: `page` (default 1), `per_page` (default 20, at most 100), headers
//!   `x-page`, `x-per-page`, `x-next-page`, `x-prev-page` (empty when none), `x-total`,
//!   `x-total-pages` and a `link` header with `prev`/`next`/`first`/`last`;
//! - a create (pipeline or note) takes effect, webhook included, before its answer is sent, so a
//!   lost answer (fault or held response) leaves it in place, as it would in GitLab;
//! - the token's user ([`USERNAME`], id [`USER_ID`]) owns (access level 50) every project; other
//!   users are members only where [`GitLabDouble::add_member`] put them; a merge request's head
//!   `sha` is the head of its source branch, which every [`GitLabDouble::push_mr`] moves (and
//!   `refs/merge-requests/<iid>/head` of the target project names it, as in GitLab);
//! - webhooks: see `hooks.rs` (payloads of the "Webhook events" documentation, GitLab's delivery
//!   headers, one sender in event order, a resend keeps `Idempotency-Key` and `X-Gitlab-Event-UUID`).
//!
//! Simplified (see also `model.rs`, `merge_requests.rs`, `hooks.rs` and `faults.rs`):
//! - there is no repository: a ref "exists" if it is `main`, was added with
//!   [`GitLabDouble::add_ref`], is the source branch of a merge request, or is the ref of a
//!   pipeline of the project; SHAs are stable fakes;
//! - one user owns both tokens; anonymous requests and bad tokens get 401 on every route (GitLab
//!   answers 404 rather than 401 for anonymous reads of private projects); memberships are direct
//!   (no groups to inherit from), and a user who is not a member cannot be told apart from one who
//!   does not exist (both 404, as in GitLab);
//! - a pipeline created through the API stays `created` until the test drives it (or an
//!   [`AutoFinish`] policy does); it has no jobs unless the test adds them or the policy does. A
//!   policy's polls-based steps advance only when the pipeline is read; time-based steps advance
//!   when it is read, and also on their own while a webhook is set (so that their hooks arrive
//!   without anyone polling, as in GitLab);
//! - cancel turns every cancelable status into `canceled` at once (GitLab may pass through
//!   `canceling`), cancels the pipeline's unfinished jobs, and answers 200 with the pipeline, left
//!   unchanged if it had already finished;
//! - a note edit that sets the same body changes nothing (no new `updated_at`, no hook);
//! - groups exist only as the namespaces of the double's projects (ids from 100, in the order
//!   first seen); a variable's value is not checked against the masking rules, and the
//!   `hidden` field of newer versions is not returned.

mod ci_variables;
mod faults;
mod hooks;
mod merge_requests;
mod model;
mod server;

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use serde_json::Value;
use tokio::sync::{Notify, mpsc, watch};

pub use ci_variables::CiVariable;
pub use faults::{FaultKind, Faults, Route, RouteMatcher};
pub use hooks::{
    HOOK_TIMEOUT, HookDelivery, HookOutcome, HookSender, WebhookEvent, WebhookEvents, hook_time,
    job_hook_payload, merge_request_hook_payload, note_hook_payload, pipeline_hook_payload,
    send_hook,
};
pub use merge_requests::{MAX_NOTE_CHARS, MergeRequest, NoteRecord, User};
pub use model::{
    AutoFinish, AutoOutcome, BLANK_SHA, Job, Pipeline, Project, Step, USER_ID, USER_NAME, USERNAME,
    Variable, timestamp,
};

use faults::Scripted;
use hooks::{HookHeaders, Webhook};
use model::{AutoState, is_cancelable, is_finished, sha_for};

/// The version `GET /version` reports.
pub const VERSION: &str = "17.11.1";
/// The revision `GET /version` reports.
pub const REVISION: &str = "4bd8c2ba6e1";

/// One request the double received, in arrival order.
#[derive(Debug, Clone, PartialEq)]
pub struct RecordedRequest {
    /// Arrival order, from 0.
    pub seq: u64,
    /// `GET`, `POST`, ...
    pub method: String,
    /// The path as sent, still percent-encoded (`/api/v4/projects/group%2Fproject/pipeline`).
    pub path: String,
    /// The query string as sent, without `?` (empty if none).
    pub query: String,
    /// When it arrived.
    pub time: Instant,
    /// Which API route it addressed.
    pub route: Route,
    /// The project it addressed, if that project exists.
    pub project: Option<u64>,
    /// The pipeline id in its path, if any.
    pub pipeline: Option<u64>,
    /// The merge request iid in its path, if any.
    pub merge_request: Option<u64>,
    /// The note id in its path, if any.
    pub note: Option<u64>,
    /// The JSON body, if one was sent and parsed.
    pub body: Option<Value>,
    /// The status answered; `None` while the answer is pending (held, slow, timing out) and
    /// forever when the connection was dropped or never answered.
    pub status: Option<u16>,
    /// The fault injected into this request, if any.
    pub fault: Option<FaultKind>,
}

impl RecordedRequest {
    /// Whether this request addressed `route`.
    pub fn is(&self, route: Route) -> bool {
        self.route == route
    }
}

/// The shared state of the double, behind one lock that is never held across an `.await`.
pub(crate) struct State {
    pub base_url: String,
    pub token: String,
    pub guest_token: String,
    pub projects: Vec<Project>,
    pub refs: Vec<(u64, String)>,
    pub pipelines: BTreeMap<u64, Pipeline>,
    pub jobs: BTreeMap<u64, Job>,
    pub created_order: Vec<u64>,
    pub next_project_id: u64,
    pub next_pipeline_id: u64,
    pub next_job_id: u64,
    pub auto: Option<AutoFinish>,
    pub faults: Faults,
    pub scripted: Vec<Scripted>,
    pub per_path_counts: HashMap<(String, String), u64>,
    pub requests: Vec<RecordedRequest>,
    pub hold: Option<Arc<HoldShared>>,
    pub users: Vec<User>,
    /// `(project id, user id)` -> (access level, member since).
    pub members: HashMap<(u64, u64), (u64, DateTime<Utc>)>,
    /// By instance-wide id.
    pub merge_requests: BTreeMap<u64, MergeRequest>,
    pub notes: BTreeMap<u64, NoteRecord>,
    /// Branch heads moved by pushes: `(project id, branch)` -> SHA.
    pub heads: HashMap<(u64, String), String>,
    pub next_user_id: u64,
    pub next_mr_id: u64,
    pub next_note_id: u64,
    pub webhook: Option<Webhook>,
    pub webhook_events: WebhookEvents,
    pub hook_deliveries: Vec<HookDelivery>,
    pub hook_tx: mpsc::UnboundedSender<Outgoing>,
    /// `(id, full path)`: every namespace of a project.
    pub groups: Vec<(u64, String)>,
    /// Projects' and groups' CI/CD variables, in creation order.
    pub ci_variables: Vec<(ci_variables::Owner, ci_variables::CiVariable)>,
}

/// A delivery waiting for the background sender: its index in `hook_deliveries`, and where to.
pub(crate) struct Outgoing {
    pub index: usize,
    pub url: String,
    pub secret: String,
}

impl State {
    pub fn project_by_id_or_path(&self, id_or_path: &str) -> Option<&Project> {
        match id_or_path.parse::<u64>() {
            Ok(id) => self.projects.iter().find(|p| p.id == id),
            Err(_) => self
                .projects
                .iter()
                .find(|p| p.path.eq_ignore_ascii_case(id_or_path)),
        }
    }

    fn ensure_project(&mut self, path: &str) -> u64 {
        if let Some(p) = self.project_by_id_or_path(path) {
            return p.id;
        }
        let id = self.next_project_id;
        self.next_project_id += 1;
        self.ensure_groups_of(path);
        self.projects.push(Project {
            id,
            path: path.to_owned(),
            last_iid: 0,
            last_mr_iid: 0,
        });
        id
    }

    pub fn user(&self, id: u64) -> Option<&User> {
        self.users.iter().find(|u| u.id == id)
    }

    /// The merge request `iid` of project `project_id`.
    pub fn mr(&self, project_id: u64, iid: u64) -> Option<&MergeRequest> {
        self.merge_requests
            .values()
            .find(|m| m.project_id == project_id && m.iid == iid)
    }

    fn mr_id(&self, project_id: u64, iid: u64) -> Option<u64> {
        self.mr(project_id, iid).map(|m| m.id)
    }

    /// The merge request named by `refs/merge-requests/<iid>/head` in `project_id`, if any.
    fn mr_of_ref(&self, project_id: u64, git_ref: &str) -> Option<&MergeRequest> {
        let iid = git_ref
            .strip_prefix("refs/merge-requests/")?
            .strip_suffix("/head")?
            .parse()
            .ok()?;
        self.mr(project_id, iid)
    }

    pub fn ref_exists(&self, project_id: u64, git_ref: &str) -> bool {
        git_ref == "main"
            || self
                .refs
                .iter()
                .any(|(p, r)| *p == project_id && r == git_ref)
            || self
                .pipelines
                .values()
                .any(|p| p.project_id == project_id && p.git_ref == git_ref)
            || self.mr_of_ref(project_id, git_ref).is_some()
    }

    /// The commit a ref points at: a pushed branch's head, a merge request's head for
    /// `refs/merge-requests/<iid>/head`, else the stable fake of project and ref.
    fn head_sha(&self, project_id: u64, project_path: &str, git_ref: &str) -> String {
        if let Some(sha) = self.heads.get(&(project_id, git_ref.to_owned())) {
            return sha.clone();
        }
        if let Some(mr) = self.mr_of_ref(project_id, git_ref) {
            return mr.sha.clone();
        }
        sha_for(project_path, git_ref)
    }

    /// Queues a webhook delivery of `event` if a webhook is set and takes it; `payload` is built
    /// only then, from the state as it is now (so deliveries show each event as it happened).
    pub fn emit(&mut self, event: WebhookEvent, payload: impl FnOnce(&State) -> Value) {
        let Some(hook) = self.webhook.clone() else {
            return;
        };
        if !self.webhook_events.enabled(event) {
            return;
        }
        let body = payload(self);
        let index = self.hook_deliveries.len();
        self.hook_deliveries.push(HookDelivery {
            event,
            url: hook.url.clone(),
            idempotency_key: hooks::new_uuid(),
            event_uuid: hooks::new_uuid(),
            webhook_uuid: None,
            body,
            redelivery_of: None,
            outcome: HookOutcome::Pending,
        });
        // The receiver lives as long as the double; once it is gone nothing is delivered anyway.
        let _ = self.hook_tx.send(Outgoing {
            index,
            url: hook.url,
            secret: hook.secret,
        });
    }

    /// A Pipeline Hook for pipeline `id` as it is now.
    fn emit_pipeline(&mut self, id: u64) {
        self.emit(WebhookEvent::Pipeline, |state| {
            let Some(pipeline) = state.pipelines.get(&id) else {
                return Value::Null;
            };
            let jobs: Vec<Job> = state
                .jobs
                .values()
                .filter(|j| j.pipeline_id == id)
                .cloned()
                .collect();
            pipeline_hook_payload(&state.base_url, pipeline, &jobs, &User::token_owner())
        });
    }

    /// A Job Hook for job `id` as it is now.
    fn emit_job(&mut self, id: u64) {
        self.emit(WebhookEvent::Job, |state| {
            let Some(job) = state.jobs.get(&id) else {
                return Value::Null;
            };
            let Some(pipeline) = state.pipelines.get(&job.pipeline_id) else {
                return Value::Null;
            };
            job_hook_payload(&state.base_url, pipeline, job, &User::token_owner())
        });
    }

    /// A Note Hook for note `id` with `action` (`create` or `update`).
    fn emit_note(&mut self, id: u64, action: &'static str) {
        self.emit(WebhookEvent::Note, |state| {
            let Some(note) = state.notes.get(&id) else {
                return Value::Null;
            };
            let (Some(mr), Some(author)) = (
                state.mr(note.project_id, note.mr_iid),
                state.user(note.author_id),
            ) else {
                return Value::Null;
            };
            note_hook_payload(&state.base_url, mr, author, note, action)
        });
    }

    /// A Merge Request Hook for merge request `id` with `action`, done by its author.
    fn emit_mr(&mut self, id: u64, action: &'static str, oldrev: Option<String>) {
        self.emit(WebhookEvent::MergeRequest, |state| {
            let Some(mr) = state.merge_requests.get(&id) else {
                return Value::Null;
            };
            merge_request_hook_payload(&state.base_url, mr, &mr.author, action, oldrev.as_deref())
        });
    }

    /// Stores a note on merge request `iid` of `project_id` by `author_id` (and sends its Note
    /// Hook). `None` if the merge request or the user does not exist.
    pub fn insert_note(
        &mut self,
        project_id: u64,
        iid: u64,
        author_id: u64,
        body: &str,
        at: DateTime<Utc>,
    ) -> Option<u64> {
        let noteable_id = self.mr_id(project_id, iid)?;
        let author = self.user(author_id)?.username.clone();
        let id = self.next_note_id;
        self.next_note_id += 1;
        self.notes.insert(
            id,
            NoteRecord {
                id,
                project_id,
                mr_iid: iid,
                noteable_id,
                author_id,
                author,
                body: body.to_owned(),
                created_at: at,
                updated_at: at,
                edits: 0,
            },
        );
        self.emit_note(id, "create");
        Some(id)
    }

    /// Sets the body of note `id`; a change bumps `updated_at` and `edits` and sends a Note Hook
    /// with action `update`. Returns whether the note exists.
    pub fn edit_note(&mut self, id: u64, body: &str, at: DateTime<Utc>) -> bool {
        let Some(note) = self.notes.get_mut(&id) else {
            return false;
        };
        if note.body != body {
            note.body = body.to_owned();
            note.updated_at = at;
            note.edits += 1;
            self.emit_note(id, "update");
        }
        true
    }

    /// When the next time-based step of an automatic pipeline is due, if any.
    fn next_auto_due(&self) -> Option<DateTime<Utc>> {
        self.timed_steps().map(|(_, due)| due).min()
    }

    /// The automatic pipelines whose time-based step is due at `now`.
    fn timed_due(&self, now: DateTime<Utc>) -> Vec<u64> {
        self.timed_steps()
            .filter(|(_, due)| *due <= now)
            .map(|(id, _)| id)
            .collect()
    }

    /// Automatic pipelines waiting for a time-based step, and when it is due.
    fn timed_steps(&self) -> impl Iterator<Item = (u64, DateTime<Utc>)> + '_ {
        self.pipelines.values().filter_map(|p| {
            let auto = p.auto.as_ref()?;
            let step = match p.status.as_str() {
                "created" => auto.policy.start,
                "running" => auto.policy.finish,
                _ => return None,
            };
            match step {
                Step::After(d) => Some((
                    p.id,
                    auto.since + chrono::Duration::from_std(d).unwrap_or_default(),
                )),
                Step::Polls(_) => None,
            }
        })
    }

    /// Stores a new pipeline in `project_id` and returns its id. One created through the API
    /// (`via_api`) follows the automatic policy in force and sends its Pipeline Hook (and the Job
    /// Hook of its first job); a seeded one stands for history and sends nothing.
    pub fn insert_pipeline(
        &mut self,
        project_id: u64,
        git_ref: &str,
        source: &str,
        variables: Vec<Variable>,
        created_at: DateTime<Utc>,
        via_api: bool,
    ) -> u64 {
        let id = self.next_pipeline_id;
        self.next_pipeline_id += 1;
        let base = self.base_url.clone();
        let auto = if via_api { self.auto.clone() } else { None };
        let Some(path) = self
            .projects
            .iter()
            .find(|p| p.id == project_id)
            .map(|p| p.path.clone())
        else {
            panic!("GitLab double: no project {project_id}");
        };
        let sha = self.head_sha(project_id, &path, git_ref);
        let Some(project) = self.projects.iter_mut().find(|p| p.id == project_id) else {
            panic!("GitLab double: no project {project_id}");
        };
        project.last_iid += 1;
        let pipeline = Pipeline {
            id,
            iid: project.last_iid,
            project_id,
            project_path: path.clone(),
            sha,
            git_ref: git_ref.to_owned(),
            status: "created".to_owned(),
            source: source.to_owned(),
            created_at,
            updated_at: created_at,
            started_at: None,
            finished_at: None,
            variables,
            web_url: format!("{base}/{path}/-/pipelines/{id}"),
            created_via_api: via_api,
            auto: auto.map(|policy| AutoState {
                policy,
                polls: 0,
                since: created_at,
            }),
        };
        let automatic = pipeline.auto.is_some();
        self.pipelines.insert(id, pipeline);
        if via_api {
            self.created_order.push(id);
        }
        let build = automatic.then(|| self.store_job(id, "build", "build", "created", created_at));
        if via_api {
            self.emit_pipeline(id);
            if let Some(job) = build {
                self.emit_job(job);
            }
        }
        id
    }

    /// Stores a new job (in `status`) and sends its Job Hook.
    pub fn insert_job(
        &mut self,
        pipeline_id: u64,
        name: &str,
        stage: &str,
        status: &str,
        at: DateTime<Utc>,
    ) -> u64 {
        let id = self.store_job(pipeline_id, name, stage, status, at);
        self.emit_job(id);
        id
    }

    /// Stores a new job without a hook.
    fn store_job(
        &mut self,
        pipeline_id: u64,
        name: &str,
        stage: &str,
        status: &str,
        at: DateTime<Utc>,
    ) -> u64 {
        let Some(pipeline) = self.pipelines.get(&pipeline_id) else {
            panic!("GitLab double: no pipeline {pipeline_id}");
        };
        let id = self.next_job_id;
        self.next_job_id += 1;
        let mut job = Job {
            id,
            pipeline_id,
            name: name.to_owned(),
            stage: stage.to_owned(),
            status: "created".to_owned(),
            failure_reason: None,
            allow_failure: false,
            created_at: at,
            started_at: None,
            finished_at: None,
            web_url: format!("{}/{}/-/jobs/{id}", self.base_url, pipeline.project_path),
            trace: String::new(),
            retried: false,
        };
        if status != "created" {
            job.transition(status, None, at);
        }
        self.jobs.insert(id, job);
        id
    }

    /// Applies an automatic policy's transitions that are due for pipeline `id`, sending the Job
    /// Hooks of the jobs that changed and then the Pipeline Hook, step by step.
    pub fn advance(&mut self, id: u64, now: DateTime<Utc>) {
        loop {
            let Some(pipeline) = self.pipelines.get_mut(&id) else {
                return;
            };
            let Some(auto) = pipeline.auto.clone() else {
                return;
            };
            let (step, next) = match pipeline.status.as_str() {
                "created" => (auto.policy.start, "running"),
                "running" => (
                    auto.policy.finish,
                    match auto.policy.outcome {
                        AutoOutcome::Success => "success",
                        AutoOutcome::Failed { .. } => "failed",
                    },
                ),
                _ => {
                    pipeline.auto = None;
                    return;
                }
            };
            let at = match step {
                Step::Polls(n) if auto.polls >= n => now,
                Step::Polls(_) => return,
                Step::After(d) => {
                    let due = auto.since + chrono::Duration::from_std(d).unwrap_or_default();
                    if due > now {
                        return;
                    }
                    due
                }
            };
            pipeline.transition(next, at);
            if is_finished(next) {
                pipeline.auto = None;
            }
            let build = self
                .jobs
                .values()
                .find(|j| j.pipeline_id == id && j.name == "build")
                .map(|j| j.id);
            let mut changed = Vec::new();
            match next {
                "running" => {
                    if let Some(job) = build.and_then(|b| self.jobs.get_mut(&b)) {
                        job.transition("running", None, at);
                        changed.push(job.id);
                    }
                }
                _ => {
                    if let Some(job) = build.and_then(|b| self.jobs.get_mut(&b)) {
                        job.transition("success", None, at);
                        changed.push(job.id);
                    }
                    if let AutoOutcome::Failed {
                        job,
                        failure_reason,
                    } = &auto.policy.outcome
                    {
                        let jid = self.store_job(id, job, "test", "created", at);
                        if let Some(j) = self.jobs.get_mut(&jid) {
                            j.transition("failed", Some(failure_reason), at);
                        }
                        changed.push(jid);
                    }
                }
            }
            for job in changed {
                self.emit_job(job);
            }
            self.emit_pipeline(id);
        }
    }

    pub fn advance_all(&mut self, now: DateTime<Utc>) {
        let ids: Vec<u64> = self
            .pipelines
            .values()
            .filter(|p| p.auto.is_some())
            .map(|p| p.id)
            .collect();
        for id in ids {
            self.advance(id, now);
        }
    }

    /// Cancels pipeline `id` (and its unfinished jobs) if it can be canceled, with their hooks.
    pub fn cancel(&mut self, id: u64, now: DateTime<Utc>) {
        let Some(pipeline) = self.pipelines.get_mut(&id) else {
            return;
        };
        if !is_cancelable(&pipeline.status) {
            return;
        }
        pipeline.auto = None;
        pipeline.transition("canceled", now);
        let mut canceled = Vec::new();
        for job in self.jobs.values_mut().filter(|j| j.pipeline_id == id) {
            if is_cancelable(&job.status) {
                job.transition("canceled", None, now);
                canceled.push(job.id);
            }
        }
        for job in canceled {
            self.emit_job(job);
        }
        self.emit_pipeline(id);
    }

    /// Opens a merge request in `project_id` from `source_branch` of `source_project_id` (and
    /// sends its Merge Request Hook, action `open`). Returns its iid.
    pub fn insert_mr(
        &mut self,
        project_id: u64,
        source_project_id: u64,
        source_branch: &str,
        author_id: u64,
        now: DateTime<Utc>,
    ) -> u64 {
        let Some(author) = self.user(author_id).cloned() else {
            panic!("GitLab double: no user {author_id}");
        };
        let path_of = |state: &State, id: u64| {
            state
                .projects
                .iter()
                .find(|p| p.id == id)
                .map(|p| p.path.clone())
                .unwrap_or_else(|| panic!("GitLab double: no project {id}"))
        };
        let path = path_of(self, project_id);
        let source_path = path_of(self, source_project_id);
        if !self.ref_exists(source_project_id, source_branch) {
            self.refs
                .push((source_project_id, source_branch.to_owned()));
        }
        let branch = (source_project_id, source_branch.to_owned());
        let sha = self
            .heads
            .entry(branch)
            .or_insert_with(|| MergeRequest::head_sha(&source_path, source_branch, 0))
            .clone();
        let id = self.next_mr_id;
        self.next_mr_id += 1;
        let Some(project) = self.projects.iter_mut().find(|p| p.id == project_id) else {
            panic!("GitLab double: no project {project_id}");
        };
        project.last_mr_iid += 1;
        let iid = project.last_mr_iid;
        let mr = MergeRequest {
            id,
            iid,
            project_id,
            project_path: path.clone(),
            source_project_id,
            source_project_path: source_path,
            source_branch: source_branch.to_owned(),
            target_branch: "main".to_owned(),
            title: format!("Change {source_branch}"),
            description: String::new(),
            state: "opened".to_owned(),
            author,
            sha,
            pushes: 0,
            created_at: now,
            updated_at: now,
            web_url: format!("{}/{path}/-/merge_requests/{iid}", self.base_url),
        };
        self.merge_requests.insert(id, mr);
        self.emit_mr(id, "open", None);
        iid
    }

    /// A push to the source branch of merge request `iid`: a new head SHA, and a Merge Request
    /// Hook with action `update` and `oldrev`. Returns the new SHA.
    pub fn push_mr(&mut self, project_id: u64, iid: u64, now: DateTime<Utc>) -> Option<String> {
        let id = self.mr_id(project_id, iid)?;
        let mr = self.merge_requests.get_mut(&id)?;
        let old = mr.sha.clone();
        mr.pushes += 1;
        mr.sha = MergeRequest::head_sha(&mr.source_project_path, &mr.source_branch, mr.pushes);
        mr.updated_at = now;
        let sha = mr.sha.clone();
        let branch = (mr.source_project_id, mr.source_branch.clone());
        self.heads.insert(branch, sha.clone());
        self.emit_mr(id, "update", Some(old));
        Some(sha)
    }
}

/// State plus the signals that wake waiters and the background tasks.
pub(crate) struct Shared {
    pub state: Mutex<State>,
    /// Bumped whenever a request is recorded or answered, or a webhook delivery ends.
    pub changed: watch::Sender<u64>,
    /// Wakes the clock that drives time-based automatic pipelines while a webhook is set.
    pub clock: Notify,
}

impl Shared {
    pub fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub fn bump(&self) {
        self.changed.send_modify(|v| *v += 1);
    }
}

/// The shared part of a [`Hold`].
pub(crate) struct HoldShared {
    pub released: watch::Sender<bool>,
    pub reached: watch::Sender<usize>,
}

/// While a `Hold` lives, every `POST /projects/:id/pipeline` takes effect (the pipeline is stored)
/// but its answer is held back. Dropping it, or [`Hold::release`], sends the held answers.
pub struct Hold {
    inner: Arc<HoldShared>,
    shared: Arc<Shared>,
}

impl Hold {
    /// Waits until at least one create is being held (its pipeline already stored).
    pub async fn wait_reached(&self) {
        let mut rx = self.inner.reached.subscribe();
        // The sender lives in `self`, so this cannot fail.
        let _ = rx.wait_for(|n| *n >= 1).await;
    }

    /// How many creates have been held so far.
    pub fn held(&self) -> usize {
        *self.inner.reached.borrow()
    }

    /// Answers the held creates (same as dropping the `Hold`).
    pub fn release(self) {}
}

impl Drop for Hold {
    fn drop(&mut self) {
        {
            let mut state = self.shared.lock();
            if state
                .hold
                .as_ref()
                .is_some_and(|h| Arc::ptr_eq(h, &self.inner))
            {
                state.hold = None;
            }
        }
        self.inner.released.send_replace(true);
    }
}

/// A running GitLab double. Dropping it stops the server and drops every open connection.
pub struct GitLabDouble {
    shared: Arc<Shared>,
    addr: SocketAddr,
    token: String,
    guest_token: String,
    _shutdown: watch::Sender<()>,
}

impl GitLabDouble {
    /// Starts a double on `127.0.0.1` on a free port.
    ///
    /// # Panics
    /// If no local port can be bound.
    pub async fn start() -> GitLabDouble {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("GitLab double: bind 127.0.0.1:0");
        let addr = listener.local_addr().expect("GitLab double: local address");
        let base_url = format!("http://{addr}");
        let token = format!(
            "glpat-double-{:016x}",
            model::splitmix64(u64::from(addr.port()))
        );
        let guest_token = format!(
            "glpat-guest-{:016x}",
            model::splitmix64(!u64::from(addr.port()))
        );
        let (hook_tx, hook_rx) = mpsc::unbounded_channel();
        let state = State {
            base_url,
            token: token.clone(),
            guest_token: guest_token.clone(),
            projects: Vec::new(),
            refs: Vec::new(),
            pipelines: BTreeMap::new(),
            jobs: BTreeMap::new(),
            created_order: Vec::new(),
            next_project_id: 1,
            groups: Vec::new(),
            ci_variables: Vec::new(),
            next_pipeline_id: 1001,
            next_job_id: 5001,
            auto: None,
            faults: Faults::none(),
            scripted: Vec::new(),
            per_path_counts: HashMap::new(),
            requests: Vec::new(),
            hold: None,
            users: vec![User::token_owner()],
            members: HashMap::new(),
            merge_requests: BTreeMap::new(),
            notes: BTreeMap::new(),
            heads: HashMap::new(),
            next_user_id: 2,
            next_mr_id: 101,
            next_note_id: 3001,
            webhook: None,
            webhook_events: WebhookEvents::default(),
            hook_deliveries: Vec::new(),
            hook_tx,
        };
        let shared = Arc::new(Shared {
            state: Mutex::new(state),
            changed: watch::Sender::new(0),
            clock: Notify::new(),
        });
        let (shutdown, shutdown_rx) = watch::channel(());
        tokio::spawn(server::serve(listener, shared.clone(), shutdown_rx.clone()));
        tokio::spawn(deliver_hooks(shared.clone(), hook_rx, shutdown_rx.clone()));
        tokio::spawn(clock(shared.clone(), shutdown_rx));
        GitLabDouble {
            shared,
            addr,
            token,
            guest_token,
            _shutdown: shutdown,
        }
    }

    /// The base URL, e.g. `http://127.0.0.1:40123`; the API is under `/api/v4`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The socket address the double listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The valid token with write access (Developer and above, in GitLab terms).
    pub fn token(&self) -> &str {
        &self.token
    }

    /// A valid token that may read but not write: creates and cancels answer 403.
    pub fn guest_token(&self) -> &str {
        &self.guest_token
    }

    /// Adds a project (or returns the id of the existing one with that path). Its web URL is
    /// `url()/path`.
    pub fn add_project(&self, path: &str) -> u64 {
        self.shared.lock().ensure_project(path)
    }

    /// The CI/CD variables of project `path` (`Some` when the project exists), in creation order.
    pub fn project_variables(&self, path: &str) -> Option<Vec<CiVariable>> {
        let state = self.shared.lock();
        let id = state.project_by_id_or_path(path)?.id;
        Some(state.variables_of(ci_variables::Owner::Project(id)))
    }

    /// The CI/CD variables of group `path` (a namespace of a project), in creation order.
    pub fn group_variables(&self, path: &str) -> Option<Vec<CiVariable>> {
        let state = self.shared.lock();
        let (id, _) = state.group_by_id_or_path(path)?;
        Some(state.variables_of(ci_variables::Owner::Group(id)))
    }

    /// Gives project `path` (created if needed) an `env_var` variable for every environment.
    pub fn add_project_variable(&self, path: &str, key: &str, value: &str) {
        let mut state = self.shared.lock();
        let id = state.ensure_project(path);
        state.ci_variables.push((
            ci_variables::Owner::Project(id),
            CiVariable::env(key, value),
        ));
    }

    /// Makes `git_ref` exist in `project` (so that creating a pipeline on it succeeds). `main`
    /// and the refs of existing pipelines always exist.
    pub fn add_ref(&self, project: &str, git_ref: &str) {
        let mut state = self.shared.lock();
        let id = state.ensure_project(project);
        state.refs.push((id, git_ref.to_owned()));
    }

    /// Adds a reference pipeline (source `web`) in `project` (added if unknown), as if it ran ten
    /// minutes ago: `running` ones started 7 s after creation, finished ones ran for 300 s and
    /// finished a few minutes ago.
    pub fn add_pipeline(
        &self,
        project: &str,
        git_ref: &str,
        status: &str,
        variables: &[(&str, &str)],
    ) -> Pipeline {
        let mut state = self.shared.lock();
        let project_id = state.ensure_project(project);
        let created = Utc::now() - chrono::Duration::seconds(600);
        let vars = variables.iter().map(|(k, v)| Variable::env(k, v)).collect();
        let id = state.insert_pipeline(project_id, git_ref, "web", vars, created, false);
        let started = created + chrono::Duration::seconds(7);
        let pipeline = state
            .pipelines
            .get_mut(&id)
            .expect("GitLab double: pipeline just inserted");
        match status {
            "created" => {}
            "running" | "canceling" => pipeline.transition(status, started),
            s if is_finished(s) => {
                if matches!(s, "success" | "failed") {
                    pipeline.transition("running", started);
                }
                pipeline.transition(s, started + chrono::Duration::seconds(300));
            }
            other => pipeline.transition(other, created),
        }
        pipeline.clone()
    }

    /// The current state of pipeline `id`.
    pub fn pipeline(&self, id: u64) -> Option<Pipeline> {
        let mut state = self.shared.lock();
        state.advance(id, Utc::now());
        state.pipelines.get(&id).cloned()
    }

    /// Pipelines created through `POST /projects/:id/pipeline`, in creation order, as they are now
    /// (including those whose answer was lost to a fault or is held).
    pub fn pipelines_created(&self) -> Vec<Pipeline> {
        let mut state = self.shared.lock();
        state.advance_all(Utc::now());
        state
            .created_order
            .iter()
            .filter_map(|id| state.pipelines.get(id).cloned())
            .collect()
    }

    /// Drives pipeline `id` to `status` now, filling `started_at`, `finished_at` and `duration` as
    /// GitLab would, and takes it out of automatic mode. Sends a Pipeline Hook.
    ///
    /// # Panics
    /// If there is no such pipeline or `status` is not a GitLab pipeline status.
    pub fn set_status(&self, id: u64, status: &str) {
        assert!(
            model::STATUSES.contains(&status),
            "GitLab double: {status:?} is not a pipeline status"
        );
        let mut state = self.shared.lock();
        let pipeline = state
            .pipelines
            .get_mut(&id)
            .unwrap_or_else(|| panic!("GitLab double: no pipeline {id}"));
        pipeline.auto = None;
        pipeline.transition(status, Utc::now());
        state.emit_pipeline(id);
    }

    /// Adds a job to pipeline `id`; a `failed` job gets `failure_reason` `script_failure`. Sends a
    /// Job Hook.
    ///
    /// # Panics
    /// If there is no such pipeline or `status` is not a GitLab job status.
    pub fn add_job(&self, pipeline_id: u64, name: &str, stage: &str, status: &str) -> u64 {
        assert!(
            model::STATUSES.contains(&status),
            "GitLab double: {status:?} is not a job status"
        );
        self.shared
            .lock()
            .insert_job(pipeline_id, name, stage, status, Utc::now())
    }

    /// Moves job `id` to `status` (with `failure_reason` if it fails; default `script_failure`).
    /// Sends a Job Hook.
    ///
    /// # Panics
    /// If there is no such job or `status` is not a GitLab job status.
    pub fn set_job_status(&self, id: u64, status: &str, failure_reason: Option<&str>) {
        assert!(
            model::STATUSES.contains(&status),
            "GitLab double: {status:?} is not a job status"
        );
        let mut state = self.shared.lock();
        let job = state
            .jobs
            .get_mut(&id)
            .unwrap_or_else(|| panic!("GitLab double: no job {id}"));
        job.transition(status, failure_reason, Utc::now());
        state.emit_job(id);
    }

    /// Sets job `id`'s log, as `GET .../jobs/:job_id/trace` serves it.
    ///
    /// # Panics
    /// If there is no such job.
    pub fn set_trace(&self, id: u64, trace: &str) {
        let mut state = self.shared.lock();
        let job = state
            .jobs
            .get_mut(&id)
            .unwrap_or_else(|| panic!("GitLab double: no job {id}"));
        job.trace = trace.to_owned();
    }

    /// The job `id`, if there is one.
    pub fn job(&self, id: u64) -> Option<Job> {
        self.shared.lock().jobs.get(&id).cloned()
    }

    /// The jobs of pipeline `id`, by id.
    pub fn jobs(&self, pipeline_id: u64) -> Vec<Job> {
        let mut state = self.shared.lock();
        state.advance(pipeline_id, Utc::now());
        state
            .jobs
            .values()
            .filter(|j| j.pipeline_id == pipeline_id)
            .cloned()
            .collect()
    }

    /// The policy pipelines created from now on follow (`None`: they stay `created`).
    pub fn set_auto_finish(&self, policy: Option<AutoFinish>) {
        self.shared.lock().auto = policy;
        self.shared.clock.notify_one();
    }

    /// Every request received so far, in arrival order.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.shared.lock().requests.clone()
    }

    /// Waits until `pred` holds for the requests received so far (re-checked whenever a request
    /// arrives or is answered), or `timeout` passes. Returns whether `pred` held.
    pub async fn wait_for(
        &self,
        pred: impl Fn(&[RecordedRequest]) -> bool,
        timeout: Duration,
    ) -> bool {
        let mut rx = self.shared.changed.subscribe();
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            rx.borrow_and_update();
            if pred(&self.shared.lock().requests) {
                return true;
            }
            match tokio::time::timeout_at(deadline, rx.changed()).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) | Err(_) => return pred(&self.shared.lock().requests),
            }
        }
    }

    /// Random faults from now on (replacing any earlier setting; `Faults::none()` ends them).
    pub fn set_faults(&self, faults: Faults) {
        self.shared.lock().faults = faults;
    }

    /// The next `n` requests matching `matcher` fail with `kind` (before random faults are
    /// considered). Scripts queue up in the order they were given.
    pub fn fail_next(&self, matcher: impl Into<RouteMatcher>, n: usize, kind: FaultKind) {
        self.shared.lock().scripted.push(Scripted {
            matcher: matcher.into(),
            remaining: n,
            kind,
        });
    }

    /// Forgets the scripted faults not used up yet: the API works again.
    pub fn clear_scripted(&self) {
        self.shared.lock().scripted.clear();
    }

    /// Holds the answers of pipeline creates while the returned [`Hold`] lives.
    pub fn hold_creates(&self) -> Hold {
        let inner = Arc::new(HoldShared {
            released: watch::Sender::new(false),
            reached: watch::Sender::new(0),
        });
        self.shared.lock().hold = Some(inner.clone());
        Hold {
            inner,
            shared: self.shared.clone(),
        }
    }

    /// Adds a GitLab user (or returns the id of the existing one with that username); ids count
    /// from 2 (1 is the token's user, [`USERNAME`]). The display name is the username.
    pub fn add_user(&self, username: &str) -> u64 {
        let mut state = self.shared.lock();
        if let Some(user) = state.users.iter().find(|u| u.username == username) {
            return user.id;
        }
        let id = state.next_user_id;
        state.next_user_id += 1;
        state.users.push(User {
            id,
            username: username.to_owned(),
            name: username.to_owned(),
        });
        id
    }

    /// Makes user `user_id` a member of `project` (added if unknown) with `access_level` (GitLab's
    /// number: 5 minimal access, 10 guest, 15 planner, 20 reporter, 30 developer, 40 maintainer,
    /// 50 owner), replacing an earlier membership. The token's user owns every project anyway.
    ///
    /// # Panics
    /// If there is no such user or the level is not one GitLab accepts for a member.
    pub fn add_member(&self, project: &str, user_id: u64, access_level: u64) {
        assert!(
            [5, 10, 15, 20, 30, 40, 50].contains(&access_level),
            "GitLab double: {access_level} is not a member access level"
        );
        let mut state = self.shared.lock();
        assert!(
            state.user(user_id).is_some(),
            "GitLab double: no user {user_id}"
        );
        let project_id = state.ensure_project(project);
        state
            .members
            .insert((project_id, user_id), (access_level, Utc::now()));
    }

    /// Opens a merge request in `project` (added if unknown) from `source_branch` of
    /// `source_project` (the same project, or a fork; added if unknown), targeting `main`, by user
    /// `author_user_id`. The branch is created if needed. Sends a Merge Request Hook (`open`).
    /// Returns the merge request's iid (counted per project).
    ///
    /// # Panics
    /// If there is no such user.
    pub fn add_mr(
        &self,
        project: &str,
        source_project: &str,
        source_branch: &str,
        author_user_id: u64,
    ) -> u64 {
        let mut state = self.shared.lock();
        let project_id = state.ensure_project(project);
        let source_id = state.ensure_project(source_project);
        state.insert_mr(
            project_id,
            source_id,
            source_branch,
            author_user_id,
            Utc::now(),
        )
    }

    /// Merge request `iid` of `project` as it is now.
    pub fn mr(&self, project: &str, iid: u64) -> Option<MergeRequest> {
        let state = self.shared.lock();
        let project_id = state.project_by_id_or_path(project)?.id;
        state.mr(project_id, iid).cloned()
    }

    /// Its author pushes a commit to the merge request's source branch: a new head SHA (returned),
    /// and a Merge Request Hook with action `update` and `object_attributes.oldrev`.
    ///
    /// # Panics
    /// If there is no such merge request.
    pub fn push_mr(&self, project: &str, iid: u64) -> String {
        let mut state = self.shared.lock();
        let project_id = state
            .project_by_id_or_path(project)
            .map(|p| p.id)
            .unwrap_or_else(|| panic!("GitLab double: no project {project}"));
        state
            .push_mr(project_id, iid, Utc::now())
            .unwrap_or_else(|| panic!("GitLab double: no merge request {project}!{iid}"))
    }

    /// Closes (`closed`), merges (`merged`), reopens (`opened`) or locks (`locked`) merge request
    /// `iid`, with the Merge Request Hook GitLab sends (`close`, `merge`, `reopen`, `update`).
    ///
    /// # Panics
    /// If there is no such merge request or `state` is not one of those.
    pub fn set_mr_state(&self, project: &str, iid: u64, new_state: &str) {
        let action = match new_state {
            "closed" => "close",
            "merged" => "merge",
            "opened" => "reopen",
            "locked" => "update",
            other => panic!("GitLab double: {other:?} is not a merge request state"),
        };
        let mut state = self.shared.lock();
        let id = state
            .project_by_id_or_path(project)
            .and_then(|p| state.mr_id(p.id, iid))
            .unwrap_or_else(|| panic!("GitLab double: no merge request {project}!{iid}"));
        if let Some(mr) = state.merge_requests.get_mut(&id) {
            mr.state = new_state.to_owned();
            mr.updated_at = Utc::now();
        }
        state.emit_mr(id, action, None);
    }

    /// User `user_id` writes a comment on merge request `iid` of `project` in GitLab's web
    /// interface: the note is stored and a Note Hook (action `create`) is sent. Returns its id.
    ///
    /// # Panics
    /// If there is no such merge request or user.
    pub fn comment(&self, project: &str, iid: u64, user_id: u64, body: &str) -> u64 {
        let mut state = self.shared.lock();
        let project_id = state
            .project_by_id_or_path(project)
            .map(|p| p.id)
            .unwrap_or_else(|| panic!("GitLab double: no project {project}"));
        let id = state
            .insert_note(project_id, iid, user_id, body, Utc::now())
            .unwrap_or_else(|| {
                panic!("GitLab double: no merge request {project}!{iid} or no user {user_id}")
            });
        drop(state);
        self.shared.bump();
        id
    }

    /// Its author edits note `note_id` in the web interface: a changed body is stored and a Note
    /// Hook (action `update`) is sent.
    ///
    /// # Panics
    /// If there is no such note.
    pub fn edit_comment(&self, note_id: u64, body: &str) {
        let found = self.shared.lock().edit_note(note_id, body, Utc::now());
        assert!(found, "GitLab double: no note {note_id}");
        self.shared.bump();
    }

    /// The notes of merge request `iid` of `project`, oldest first.
    pub fn notes(&self, project: &str, iid: u64) -> Vec<NoteRecord> {
        let state = self.shared.lock();
        let Some(project_id) = state.project_by_id_or_path(project).map(|p| p.id) else {
            return Vec::new();
        };
        state
            .notes
            .values()
            .filter(|n| n.project_id == project_id && n.mr_iid == iid)
            .cloned()
            .collect()
    }

    /// Note `id` as it is now.
    pub fn note(&self, id: u64) -> Option<NoteRecord> {
        self.shared.lock().notes.get(&id).cloned()
    }

    /// Waits until `pred` holds for the notes of merge request `iid` of `project` (oldest first;
    /// re-checked whenever a request is answered, which is how shepherd's notes arrive), or
    /// `timeout` passes. Returns whether `pred` held.
    pub async fn wait_notes(
        &self,
        project: &str,
        iid: u64,
        pred: impl Fn(&[NoteRecord]) -> bool,
        timeout: Duration,
    ) -> bool {
        let mut rx = self.shared.changed.subscribe();
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            rx.borrow_and_update();
            if pred(&self.notes(project, iid)) {
                return true;
            }
            match tokio::time::timeout_at(deadline, rx.changed()).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) | Err(_) => return pred(&self.notes(project, iid)),
            }
        }
    }

    /// From now on, events are sent to `url` with `X-Gitlab-Token: secret_token` (replacing any
    /// earlier webhook). Which events: [`Self::set_webhook_events`] (all by default).
    pub fn set_webhook(&self, url: &str, secret_token: &str) {
        self.shared.lock().webhook = Some(Webhook {
            url: url.to_owned(),
            secret: secret_token.to_owned(),
        });
        self.shared.clock.notify_one();
    }

    /// No more webhook deliveries (those already queued are still sent).
    pub fn remove_webhook(&self) {
        self.shared.lock().webhook = None;
    }

    /// Which events the webhook receives: comments, merge requests, pipelines, jobs.
    pub fn set_webhook_events(&self, note: bool, merge_request: bool, pipeline: bool, job: bool) {
        self.shared.lock().webhook_events = WebhookEvents {
            note,
            merge_request,
            pipeline,
            job,
        };
    }

    /// Every webhook delivery so far (queued, sent or failed), in the order of the events, with
    /// resends appended when they are made.
    pub fn hook_deliveries(&self) -> Vec<HookDelivery> {
        self.shared.lock().hook_deliveries.clone()
    }

    /// Waits until `pred` holds for the deliveries so far (re-checked whenever one ends), or
    /// `timeout` passes. Returns whether `pred` held.
    pub async fn wait_hooks(
        &self,
        pred: impl Fn(&[HookDelivery]) -> bool,
        timeout: Duration,
    ) -> bool {
        let mut rx = self.shared.changed.subscribe();
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            rx.borrow_and_update();
            if pred(&self.shared.lock().hook_deliveries) {
                return true;
            }
            match tokio::time::timeout_at(deadline, rx.changed()).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) | Err(_) => return pred(&self.shared.lock().hook_deliveries),
            }
        }
    }

    /// Waits until at least `n` deliveries have been answered or have failed, or `timeout`
    /// passes. Returns whether they had.
    pub async fn wait_hook_deliveries(&self, n: usize, timeout: Duration) -> bool {
        self.wait_hooks(|d| d.iter().filter(|d| d.is_done()).count() >= n, timeout)
            .await
    }

    /// GitLab's "Resend request": sends delivery `index` again, now, to the current webhook, with
    /// the same body, `Idempotency-Key` and `X-Gitlab-Event-UUID` and a new
    /// `X-Gitlab-Webhook-UUID`. The resend is recorded as a new delivery. Returns the receiver's
    /// status, or why it could not be sent.
    pub async fn redeliver(&self, index: usize) -> Result<u16, String> {
        let (resend, new_index, hook, instance) = {
            let mut state = self.shared.lock();
            let Some(original) = state.hook_deliveries.get(index).cloned() else {
                return Err(format!("there is no delivery {index}"));
            };
            let Some(hook) = state.webhook.clone() else {
                return Err("no webhook is set".to_owned());
            };
            let resend = HookDelivery {
                url: hook.url.clone(),
                webhook_uuid: Some(hooks::new_uuid()),
                redelivery_of: Some(index),
                outcome: HookOutcome::Pending,
                ..original
            };
            let new_index = state.hook_deliveries.len();
            state.hook_deliveries.push(resend.clone());
            (resend, new_index, hook, state.base_url.clone())
        };
        let result = HookSender::new()
            .deliver(
                &HookHeaders {
                    url: &hook.url,
                    secret: &hook.secret,
                    event: resend.event.header(),
                    instance: &instance,
                    idempotency_key: &resend.idempotency_key,
                    event_uuid: &resend.event_uuid,
                    webhook_uuid: resend.webhook_uuid.as_deref().unwrap_or_default(),
                },
                &resend.body,
            )
            .await;
        if let Some(d) = self.shared.lock().hook_deliveries.get_mut(new_index) {
            d.outcome = match &result {
                Ok(status) => HookOutcome::Status(*status),
                Err(e) => HookOutcome::Error(e.clone()),
            };
        }
        self.shared.bump();
        result
    }
}

/// The background sender: posts queued deliveries one at a time, in order, until the double is
/// dropped.
async fn deliver_hooks(
    shared: Arc<Shared>,
    mut queue: mpsc::UnboundedReceiver<Outgoing>,
    mut shutdown: watch::Receiver<()>,
) {
    let sender = HookSender::new();
    loop {
        let next = tokio::select! {
            biased;
            _ = shutdown.changed() => return,
            next = queue.recv() => next,
        };
        let Some(out) = next else {
            return;
        };
        let (delivery, instance) = {
            let mut state = shared.lock();
            let instance = state.base_url.clone();
            let Some(d) = state.hook_deliveries.get_mut(out.index) else {
                continue;
            };
            d.webhook_uuid = Some(hooks::new_uuid());
            (d.clone(), instance)
        };
        let headers = HookHeaders {
            url: &out.url,
            secret: &out.secret,
            event: delivery.event.header(),
            instance: &instance,
            idempotency_key: &delivery.idempotency_key,
            event_uuid: &delivery.event_uuid,
            webhook_uuid: delivery.webhook_uuid.as_deref().unwrap_or_default(),
        };
        let send = sender.deliver(&headers, &delivery.body);
        let result = tokio::select! {
            biased;
            _ = shutdown.changed() => return,
            result = send => result,
        };
        if let Some(d) = shared.lock().hook_deliveries.get_mut(out.index) {
            d.outcome = match result {
                Ok(status) => HookOutcome::Status(status),
                Err(e) => HookOutcome::Error(e),
            };
        }
        shared.bump();
    }
}

/// While a webhook is set, applies the time-based steps of automatic pipelines when they fall
/// due, so that their hooks are sent without anyone reading the pipelines (as GitLab would).
async fn clock(shared: Arc<Shared>, mut shutdown: watch::Receiver<()>) {
    let mut changed = shared.changed.subscribe();
    loop {
        let due = {
            let mut state = shared.lock();
            if state.webhook.is_some() {
                let now = Utc::now();
                for id in state.timed_due(now) {
                    state.advance(id, now);
                }
                state.next_auto_due()
            } else {
                None
            }
        };
        let wait = due.map(|due| (due - Utc::now()).to_std().unwrap_or_default());
        tokio::select! {
            biased;
            _ = shutdown.changed() => return,
            _ = shared.clock.notified() => {}
            _ = changed.changed() => {}
            _ = async {
                match wait {
                    Some(wait) => tokio::time::sleep(wait).await,
                    None => std::future::pending().await,
                }
            } => {}
        }
    }
}
