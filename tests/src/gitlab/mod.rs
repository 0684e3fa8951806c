//! A test double of GitLab's REST API v4, in process, shared by every end-to-end test and benchmark
//! that needs GitLab (which cannot run on the test machines).
//!
//! Each test starts its own double on `127.0.0.1:0` with [`GitLabDouble::start`], seeds projects
//! and reference pipelines, points shepherd at [`GitLabDouble::url`] with [`GitLabDouble::token`],
//! then drives pipelines ([`GitLabDouble::set_status`], [`GitLabDouble::set_auto_finish`]), injects
//! faults ([`GitLabDouble::set_faults`], [`GitLabDouble::fail_next`], [`GitLabDouble::hold_creates`])
//! and checks what shepherd asked ([`GitLabDouble::requests`], [`GitLabDouble::pipelines_created`]).
//!
//! Faithful to GitLab (as its API documentation describes it):
//! - routes under `/api/v4`: get a pipeline, its variables, list a project's pipelines (filters
//!   `ref`, `status`, `source`, `scope`, `sha`, `username`, `updated_after`, `updated_before`;
//!   `order_by` id|status|ref|updated_at|user_id, `sort` asc|desc), create a pipeline
//!   (`POST /projects/:id/pipeline`, `ref` and `variables` in a JSON body or `ref` in the query),
//!   cancel a pipeline, list a pipeline's jobs (`scope[]` repeatable), `GET /user`, `GET /version`;
//! - a project is addressed by numeric id or URL-encoded full path (`group%2Fsub%2Fproject`, found
//!   case-insensitively); pipeline ids are global and increasing, `iid`s count per project;
//! - auth by `PRIVATE-TOKEN: <token>` or `Authorization: Bearer <token>`; JSON shapes, status codes
//!   and error bodies: 401 `{"message":"401 Unauthorized"}`, 403 `{"message":"403 Forbidden"}`
//!   (the read-only [`GitLabDouble::guest_token`] on a write), 404 `{"message":"404 Project Not
//!   Found"}` / `{"message":"404 Not found"}`, unknown route 404 `{"error":"404 Not Found"}`, wrong
//!   method 405 `{"error":"405 Not Allowed"}`, parameter errors 400 `{"error":"<param> is missing"}`
//!   / `{"error":"<param> does not have a valid value"}` / `{"error":"variables is invalid"}`,
//!   unknown ref 400 `{"message":{"base":["Reference not found"]}}`;
//! - offset pagination: `page` (default 1), `per_page` (default 20, at most 100), headers
//!   `x-page`, `x-per-page`, `x-next-page`, `x-prev-page` (empty when none), `x-total`,
//!   `x-total-pages` and a `link` header with `prev`/`next`/`first`/`last`;
//! - a create takes effect before its answer is sent, so a lost answer (fault or held response)
//!   leaves the pipeline in place, as it would in GitLab.
//!
//! Simplified (see also `model.rs` and `faults.rs`):
//! - there is no repository: a ref "exists" if it is `main`, was added with
//!   [`GitLabDouble::add_ref`], or is the ref of a pipeline of the project; SHAs are stable fakes;
//! - one user owns both tokens; anonymous requests and bad tokens get 401 on every route (GitLab
//!   answers 404 rather than 401 for anonymous reads of private projects);
//! - a pipeline created through the API stays `created` until the test drives it (or an
//!   [`AutoFinish`] policy does); it has no jobs unless the test adds them or the policy does;
//! - cancel turns every cancelable status into `canceled` at once (GitLab may pass through
//!   `canceling`), cancels the pipeline's unfinished jobs, and answers 200 with the pipeline, left
//!   unchanged if it had already finished.

mod faults;
mod model;
mod server;

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use serde_json::Value;
use tokio::sync::watch;

pub use faults::{FaultKind, Faults, Route, RouteMatcher};
pub use model::{
    AutoFinish, AutoOutcome, BLANK_SHA, Job, Pipeline, Project, Step, USER_ID, USER_NAME, USERNAME,
    Variable, timestamp,
};

use faults::Scripted;
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
        self.projects.push(Project {
            id,
            path: path.to_owned(),
            last_iid: 0,
        });
        id
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
    }

    /// Stores a new pipeline in `project_id` and returns its id.
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
        let Some(project) = self.projects.iter_mut().find(|p| p.id == project_id) else {
            panic!("GitLab double: no project {project_id}");
        };
        project.last_iid += 1;
        let pipeline = Pipeline {
            id,
            iid: project.last_iid,
            project_id,
            project_path: project.path.clone(),
            sha: sha_for(&project.path, git_ref),
            git_ref: git_ref.to_owned(),
            status: "created".to_owned(),
            source: source.to_owned(),
            created_at,
            updated_at: created_at,
            started_at: None,
            finished_at: None,
            variables,
            web_url: format!("{base}/{}/-/pipelines/{id}", project.path),
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
        if automatic {
            self.insert_job(id, "build", "build", "created", created_at);
        }
        id
    }

    pub fn insert_job(
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
        };
        if status != "created" {
            job.transition(status, None, at);
        }
        self.jobs.insert(id, job);
        id
    }

    /// Applies an automatic policy's transitions that are due for pipeline `id`.
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
            match next {
                "running" => {
                    if let Some(job) = build.and_then(|b| self.jobs.get_mut(&b)) {
                        job.transition("running", None, at);
                    }
                }
                _ => {
                    if let Some(job) = build.and_then(|b| self.jobs.get_mut(&b)) {
                        job.transition("success", None, at);
                    }
                    if let AutoOutcome::Failed {
                        job,
                        failure_reason,
                    } = &auto.policy.outcome
                    {
                        let jid = self.insert_job(id, job, "test", "created", at);
                        if let Some(j) = self.jobs.get_mut(&jid) {
                            j.transition("failed", Some(failure_reason), at);
                        }
                    }
                }
            }
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

    /// Cancels pipeline `id` (and its unfinished jobs) if it can be canceled.
    pub fn cancel(&mut self, id: u64, now: DateTime<Utc>) {
        let Some(pipeline) = self.pipelines.get_mut(&id) else {
            return;
        };
        if !is_cancelable(&pipeline.status) {
            return;
        }
        pipeline.auto = None;
        pipeline.transition("canceled", now);
        for job in self.jobs.values_mut().filter(|j| j.pipeline_id == id) {
            if is_cancelable(&job.status) {
                job.transition("canceled", None, now);
            }
        }
    }
}

/// State plus the signal that wakes [`GitLabDouble::wait_for`].
pub(crate) struct Shared {
    pub state: Mutex<State>,
    /// Bumped whenever a request is recorded or answered.
    pub changed: watch::Sender<u64>,
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
            next_pipeline_id: 1001,
            next_job_id: 5001,
            auto: None,
            faults: Faults::none(),
            scripted: Vec::new(),
            per_path_counts: HashMap::new(),
            requests: Vec::new(),
            hold: None,
        };
        let shared = Arc::new(Shared {
            state: Mutex::new(state),
            changed: watch::Sender::new(0),
        });
        let (shutdown, shutdown_rx) = watch::channel(());
        tokio::spawn(server::serve(listener, shared.clone(), shutdown_rx));
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
    /// GitLab would, and takes it out of automatic mode.
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
    }

    /// Adds a job to pipeline `id`; a `failed` job gets `failure_reason` `script_failure`.
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
}
