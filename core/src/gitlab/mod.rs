//! GitLab REST v4 client: the few endpoints shepherd needs, made safe to call from a queue.
//!
//! Every HTTP attempt (retries included) first waits for the shared rate limiter, so shepherd
//! never spends more than `requests_per_minute` of the token's budget. Reads and idempotent
//! writes (cancel, note edits) are retried with exponential backoff and full jitter on
//! connection errors, timeouts, 5xx and 429 (honouring `Retry-After`). Creating a pipeline is
//! not idempotent and GitLab has no idempotency keys, so `create_pipeline` retries only when the
//! request certainly had no effect (connection refused before sending, 429); anything else after
//! sending is [`GitLabError::Ambiguous`], and the caller looks for its `SHEPHERD_REQUEST_ID`
//! variable among recent pipelines before creating again (DESIGN.md, "Exactly-once effects").
//! Merge-request notes follow the same rules: `create_mr_note` is not repeated blindly (the
//! caller looks for its hidden `<!-- shepherd:<request id> -->` marker among the newest notes,
//! [`GitLab::mr_notes`]), while `edit_mr_note` sets the whole body and so is repeated like a read.
//!
//! Every attempt is counted in `gitlab_requests{endpoint,status}` and timed in
//! `gitlab_request_duration{endpoint}`, with `endpoint` a route template such as
//! `GET /projects/:id/pipelines/:pipeline_id`; every retry in `gitlab_retries{reason}`.
//!
//! Backoff: the delay before retry `n` (1-based) is uniform in `[0, min(retry_max,
//! retry_base * 2^(n-1))]` ("full jitter"), drawn with `rand`.

mod error;
mod types;
mod variables;
pub mod webhook;

#[cfg(test)]
mod tests;

pub use error::GitLabError;
pub use types::{
    AccessLevel, Job, JobPipeline, JobStatus, MergeRequest, Note, ParseAccessLevelError, Pipeline,
    PipelineQuery, PipelineStatus, PipelineSummary, Project, User, UserRef, Variable, VariableType,
};
pub use variables::{CiVariable, VariableOwner};

use std::fmt;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::{Duration, Instant};

use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use reqwest::header::{CONTENT_TYPE, HeaderMap, HeaderValue, LOCATION, RETRY_AFTER, USER_AGENT};
use reqwest::{Method, StatusCode};
use serde::de::DeserializeOwned;
use url::Url;

use crate::metrics::Metrics;
use error::render_error_body;
pub(crate) use error::truncate;

/// Page size for paginated lists (GitLab's maximum).
const PAGE_SIZE: u32 = 100;
/// At most this many pages of jobs are read (10 000 jobs); more is logged and left out.
const MAX_PAGES: u32 = 100;

const USER_AGENT_VALUE: &str = concat!("shepherd/", env!("CARGO_PKG_VERSION"));

/// How the client reaches GitLab. `Debug` never shows the token.
#[derive(Clone)]
pub struct GitLabSettings {
    /// The GitLab instance (`https://gitlab.com`, or with a path prefix); `/api/v4` is added
    /// unless it is already there.
    pub base_url: Url,
    /// Sent as `PRIVATE-TOKEN`; without one only public data can be read.
    pub token: Option<String>,
    /// Per attempt, from connecting to the end of the body.
    pub timeout: Duration,
    /// Retries after the first attempt.
    pub max_retries: u32,
    /// Ceiling of the first retry's delay; doubles per retry.
    pub retry_base: Duration,
    /// Longest delay between attempts (also caps `Retry-After`).
    pub retry_max: Duration,
    /// HTTP attempts per minute, retries included (the burst is as large as a minute's budget).
    pub requests_per_minute: u32,
}

impl GitLabSettings {
    /// Settings with shepherd's defaults: 30 s timeout, 5 retries from 500 ms up to 30 s,
    /// 600 requests per minute, no token.
    pub fn new(base_url: Url) -> Self {
        Self {
            base_url,
            token: None,
            timeout: Duration::from_secs(30),
            max_retries: 5,
            retry_base: Duration::from_millis(500),
            retry_max: Duration::from_secs(30),
            requests_per_minute: 600,
        }
    }
}

impl fmt::Debug for GitLabSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GitLabSettings")
            .field("base_url", &self.base_url.as_str())
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("timeout", &self.timeout)
            .field("max_retries", &self.max_retries)
            .field("retry_base", &self.retry_base)
            .field("retry_max", &self.retry_max)
            .field("requests_per_minute", &self.requests_per_minute)
            .finish()
    }
}

/// The GitLab client. Cheap to clone; clones share the connection pool and the rate limiter.
#[derive(Clone)]
pub struct GitLab {
    inner: Arc<Inner>,
}

struct Inner {
    http: reqwest::Client,
    base_url: Url,
    /// `<base_url>/api/v4/`, always ending in a slash.
    api: Url,
    max_retries: u32,
    retry_base: Duration,
    retry_max: Duration,
    limiter: DefaultDirectRateLimiter,
    metrics: Arc<Metrics>,
}

impl fmt::Debug for GitLab {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GitLab")
            .field("api", &self.inner.api.as_str())
            .finish_non_exhaustive()
    }
}

/// Whether a request may be repeated after it may have reached GitLab.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Repeat {
    /// Reads and idempotent writes: retry on any transient failure.
    Safe,
    /// Non-idempotent writes: retry only when the request certainly had no effect.
    OnlyIfNoEffect,
}

/// One logical API call (possibly several HTTP attempts).
struct Call {
    method: Method,
    /// Route template, for metrics, logs and errors.
    endpoint: &'static str,
    url: Url,
    body: Option<Vec<u8>>,
    repeat: Repeat,
    /// What a 404 means, for [`GitLabError::NotFound`]: "pipeline 12 of group/project".
    what: String,
    /// Keep only this many bytes of the body, its end (a job's log can be gigabytes).
    tail: Option<usize>,
}

/// A successful (2xx) answer.
struct Reply {
    headers: HeaderMap,
    body: Vec<u8>,
}

/// How one HTTP attempt ended.
enum Attempt {
    Done(Reply),
    /// Retrying cannot help.
    Fatal(GitLabError),
    /// A later attempt may succeed.
    Transient {
        /// `gitlab_retries` label: `connect`, `timeout`, `network`, `5xx`, `429`.
        reason: &'static str,
        detail: String,
        /// False only when GitLab certainly did not act on the request.
        may_have_taken_effect: bool,
        retry_after: Option<Duration>,
    },
}

impl GitLab {
    /// The instance's web address as configured (`gitlab.url`).
    pub fn web_url(&self) -> &Url {
        &self.inner.base_url
    }

    /// The project path a pasted web URL names on this instance, or `None` when the URL is of
    /// another GitLab. `instance` is the URL's `scheme://host[:port]` and `path` the project path
    /// that followed it; an instance served under a relative root (`https://host/gitlab`) has
    /// that root removed from the path. `http://` and `https://` of the same host and default
    /// port are the same instance.
    pub fn local_project_path(&self, instance: &str, path: &str) -> Option<String> {
        let ours = &self.inner.base_url;
        let theirs = Url::parse(instance).ok()?;
        let same_host = match (theirs.host_str(), ours.host_str()) {
            (Some(a), Some(b)) => a.eq_ignore_ascii_case(b),
            _ => false,
        };
        let same_port = theirs.port_or_known_default() == ours.port_or_known_default()
            || (theirs.port().is_none() && ours.port().is_none());
        if !same_host || !same_port {
            return None;
        }
        let root = ours.path().trim_matches('/');
        if root.is_empty() {
            return Some(path.to_string());
        }
        let rest = path.strip_prefix(root)?.strip_prefix('/')?;
        (!rest.is_empty()).then(|| rest.to_string())
    }

    pub fn new(settings: GitLabSettings, metrics: Arc<Metrics>) -> Result<Self, GitLabError> {
        let base_url = settings.base_url;
        if !matches!(base_url.scheme(), "http" | "https") || base_url.cannot_be_a_base() {
            return Err(GitLabError::Config(format!(
                "gitlab url must be an http or https URL, not {base_url}"
            )));
        }
        let api = api_root(&base_url);
        let per_minute = NonZeroU32::new(settings.requests_per_minute).ok_or_else(|| {
            GitLabError::Config("requests_per_minute must be at least 1".to_string())
        })?;
        if settings.timeout.is_zero() {
            return Err(GitLabError::Config("timeout must not be zero".to_string()));
        }

        let mut headers = HeaderMap::new();
        headers.insert(USER_AGENT, HeaderValue::from_static(USER_AGENT_VALUE));
        if let Some(token) = settings.token.as_deref().filter(|t| !t.is_empty()) {
            let mut value = HeaderValue::from_str(token.trim()).map_err(|_| {
                // Never echo the token.
                GitLabError::Config(
                    "the GitLab token contains characters not allowed in an HTTP header"
                        .to_string(),
                )
            })?;
            value.set_sensitive(true);
            headers.insert("PRIVATE-TOKEN", value);
        }
        let http = reqwest::Client::builder()
            .default_headers(headers)
            .timeout(settings.timeout)
            .connect_timeout(settings.timeout)
            // A redirect would turn a POST into a GET; report it instead of following it.
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| GitLabError::Config(format!("building the HTTP client: {e}")))?;

        Ok(Self {
            inner: Arc::new(Inner {
                http,
                base_url,
                api,
                max_retries: settings.max_retries,
                retry_base: settings.retry_base,
                retry_max: settings.retry_max,
                limiter: RateLimiter::direct(Quota::per_minute(per_minute)),
                metrics,
            }),
        })
    }

    /// The GitLab instance's URL, as configured (for building web links).
    pub fn base_url(&self) -> &Url {
        &self.inner.base_url
    }

    /// `GET /projects/:id/pipelines/:pipeline_id`
    pub async fn pipeline(&self, project: &str, id: u64) -> Result<Pipeline, GitLabError> {
        let call = self.get(
            "GET /projects/:id/pipelines/:pipeline_id",
            self.url(&[
                "projects",
                project_segment(project),
                "pipelines",
                &id.to_string(),
            ]),
            pipeline_what(project, id),
        );
        self.call_json(&call).await
    }

    /// `GET /projects/:id/pipelines/:pipeline_id/variables`: the variables it was created with.
    pub async fn pipeline_variables(
        &self,
        project: &str,
        id: u64,
    ) -> Result<Vec<Variable>, GitLabError> {
        let call = self.get(
            "GET /projects/:id/pipelines/:pipeline_id/variables",
            self.url(&[
                "projects",
                project_segment(project),
                "pipelines",
                &id.to_string(),
                "variables",
            ]),
            pipeline_what(project, id),
        );
        self.call_json(&call).await
    }

    /// `GET /projects/:id/pipelines`: one page, newest first.
    pub async fn pipelines(
        &self,
        project: &str,
        query: &PipelineQuery,
    ) -> Result<Vec<PipelineSummary>, GitLabError> {
        let mut url = self.url(&["projects", project_segment(project), "pipelines"]);
        {
            let mut q = url.query_pairs_mut();
            if let Some(git_ref) = &query.git_ref {
                q.append_pair("ref", git_ref);
            }
            if let Some(sha) = &query.sha {
                q.append_pair("sha", sha);
            }
            if let Some(source) = &query.source {
                q.append_pair("source", source);
            }
            if let Some(status) = query.status {
                q.append_pair("status", status.as_str());
            }
            if let Some(after) = query.updated_after {
                q.append_pair(
                    "updated_after",
                    &after.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                );
            }
            q.append_pair("order_by", "id");
            q.append_pair("sort", "desc");
            if let Some(per_page) = query.per_page {
                q.append_pair("per_page", &per_page.clamp(1, PAGE_SIZE).to_string());
            }
        }
        let call = self.get("GET /projects/:id/pipelines", url, project_what(project));
        self.call_json(&call).await
    }

    /// `POST /projects/:id/pipeline`: a new pipeline on `git_ref` with `variables`.
    ///
    /// Not idempotent: retried only when GitLab certainly did not receive the request
    /// (connection refused, DNS or TLS failure) or refused it with 429. Any other failure after
    /// sending returns [`GitLabError::Ambiguous`]; look for the request's own marker variable
    /// among recent pipelines of the ref before calling this again.
    pub async fn create_pipeline(
        &self,
        project: &str,
        git_ref: &str,
        variables: &[Variable],
    ) -> Result<Pipeline, GitLabError> {
        #[derive(serde::Serialize)]
        struct Body<'a> {
            #[serde(rename = "ref")]
            git_ref: &'a str,
            #[serde(skip_serializing_if = "<[_]>::is_empty")]
            variables: &'a [Variable],
        }
        let body = json_body(&Body { git_ref, variables }, "the pipeline request")?;
        let call = Self::write(
            Method::POST,
            "POST /projects/:id/pipeline",
            self.url(&["projects", project_segment(project), "pipeline"]),
            Some(body),
            Repeat::OnlyIfNoEffect,
            project_what(project),
        );
        self.call_json(&call).await
    }

    /// `POST /projects/:id/pipelines/:pipeline_id/cancel`. Idempotent, so retried normally.
    pub async fn cancel_pipeline(&self, project: &str, id: u64) -> Result<Pipeline, GitLabError> {
        let call = Self::write(
            Method::POST,
            "POST /projects/:id/pipelines/:pipeline_id/cancel",
            self.url(&[
                "projects",
                project_segment(project),
                "pipelines",
                &id.to_string(),
                "cancel",
            ]),
            None,
            Repeat::Safe,
            pipeline_what(project, id),
        );
        self.call_json(&call).await
    }

    /// `GET /projects/:id/pipelines/:pipeline_id/jobs?scope[]=...`: every page, 100 jobs a page.
    ///
    /// `scope` takes [`JobStatus`] values or GitLab's spellings (`&["failed"]`); an empty
    /// `scope` means jobs in any status. `JobStatus::Unknown` (`"unknown"`) is not sent.
    pub async fn pipeline_jobs<S: AsRef<str>>(
        &self,
        project: &str,
        id: u64,
        scope: &[S],
    ) -> Result<Vec<Job>, GitLabError> {
        self.list_jobs(project, id, scope, false).await
    }

    /// Every job of pipeline `id` named `name`, retried ones included (`include_retried=true`),
    /// oldest first: one per attempt of that job.
    pub async fn job_attempts(
        &self,
        project: &str,
        id: u64,
        name: &str,
    ) -> Result<Vec<Job>, GitLabError> {
        let mut jobs = self.list_jobs::<&str>(project, id, &[], true).await?;
        jobs.retain(|j| j.name == name);
        jobs.sort_by_key(|j| j.id);
        Ok(jobs)
    }

    async fn list_jobs<S: AsRef<str>>(
        &self,
        project: &str,
        id: u64,
        scope: &[S],
        include_retried: bool,
    ) -> Result<Vec<Job>, GitLabError> {
        let base = self.url(&[
            "projects",
            project_segment(project),
            "pipelines",
            &id.to_string(),
            "jobs",
        ]);
        let mut jobs = Vec::new();
        let mut page = 1u32;
        loop {
            let mut url = base.clone();
            {
                let mut q = url.query_pairs_mut();
                for status in scope.iter().map(AsRef::as_ref) {
                    if !status.is_empty() && status != JobStatus::Unknown.as_str() {
                        q.append_pair("scope[]", status);
                    }
                }
                if include_retried {
                    q.append_pair("include_retried", "true");
                }
                q.append_pair("per_page", &PAGE_SIZE.to_string());
                q.append_pair("page", &page.to_string());
            }
            let call = self.get(
                "GET /projects/:id/pipelines/:pipeline_id/jobs",
                url,
                pipeline_what(project, id),
            );
            let reply = self.execute(&call).await?;
            let mut batch: Vec<Job> = decode(&call, &reply.body)?;
            jobs.append(&mut batch);
            match next_page(&reply, page) {
                Some(next) => {
                    if page >= MAX_PAGES {
                        tracing::warn!(
                            endpoint = call.endpoint,
                            project,
                            pipeline = id,
                            jobs = jobs.len(),
                            "pipeline has more jobs than shepherd reads; ignoring the rest"
                        );
                        break;
                    }
                    page = next;
                }
                _ => break,
            }
        }
        Ok(jobs)
    }

    /// `GET /projects/:id/jobs/:job_id`.
    pub async fn job(&self, project: &str, id: u64) -> Result<Job, GitLabError> {
        let call = self.get(
            "GET /projects/:id/jobs/:job_id",
            self.url(&[
                "projects",
                project_segment(project),
                "jobs",
                &id.to_string(),
            ]),
            format!("job {id} of {project}"),
        );
        self.call_json(&call).await
    }

    /// `GET /projects/:id/jobs/:job_id/trace`: the last `max_bytes` of the job's log (read as
    /// it streams in, never held whole), as text (invalid UTF-8, such as a character cut at the
    /// start, replaced).
    pub async fn job_trace_tail(
        &self,
        project: &str,
        id: u64,
        max_bytes: usize,
    ) -> Result<String, GitLabError> {
        let mut call = self.get(
            "GET /projects/:id/jobs/:job_id/trace",
            self.url(&[
                "projects",
                project_segment(project),
                "jobs",
                &id.to_string(),
                "trace",
            ]),
            format!("job {id} of {project}"),
        );
        call.tail = Some(max_bytes);
        let reply = self.execute(&call).await?;
        Ok(String::from_utf8_lossy(&reply.body).into_owned())
    }

    /// `POST /projects/:id/jobs/:job_id/retry`: the new job. Not idempotent (each call makes a
    /// new job), so an ambiguous failure is not retried here: the caller looks for a newer job
    /// of the same name in the pipeline before trying again.
    pub async fn retry_job(&self, project: &str, id: u64) -> Result<Job, GitLabError> {
        let call = Self::write(
            Method::POST,
            "POST /projects/:id/jobs/:job_id/retry",
            self.url(&[
                "projects",
                project_segment(project),
                "jobs",
                &id.to_string(),
                "retry",
            ]),
            None,
            Repeat::OnlyIfNoEffect,
            format!("job {id} of {project}"),
        );
        self.call_json(&call).await
    }

    /// `GET /user`: who the token belongs to.
    pub async fn current_user(&self) -> Result<User, GitLabError> {
        let call = self.get(
            "GET /user",
            self.url(&["user"]),
            "the token's user".to_string(),
        );
        self.call_json(&call).await
    }

    /// `GET /projects/:id/merge_requests/:merge_request_iid`: one merge request of `project`
    /// (the target project), by its project-scoped iid.
    pub async fn merge_request(
        &self,
        project: &str,
        iid: u64,
    ) -> Result<MergeRequest, GitLabError> {
        let call = self.get(
            "GET /projects/:id/merge_requests/:merge_request_iid",
            self.url(&[
                "projects",
                project_segment(project),
                "merge_requests",
                &iid.to_string(),
            ]),
            merge_request_what(project, iid),
        );
        self.call_json(&call).await
    }

    /// `GET /projects/:id`: a project by numeric id or full path (`group/sub/project`).
    pub async fn project(&self, project: &str) -> Result<Project, GitLabError> {
        let call = self.get(
            "GET /projects/:id",
            self.url(&["projects", project_segment(project)]),
            project_what(project),
        );
        self.call_json(&call).await
    }

    /// `GET /projects/:id/members/all/:user_id`: the user's effective access level in
    /// `project`, memberships inherited from parent groups (and invited groups) included.
    ///
    /// GitLab answers 404 when the user is not a member, and also when shepherd's token cannot
    /// see the project; either way shepherd cannot vouch for any access, so both are
    /// `Ok(AccessLevel::NoAccess)`. A membership that is still awaiting approval
    /// (`membership_state: awaiting`) or belongs to a blocked user grants nothing either.
    pub async fn member_access_level(
        &self,
        project: &str,
        user_id: u64,
    ) -> Result<AccessLevel, GitLabError> {
        #[derive(serde::Deserialize)]
        struct Member {
            access_level: u64,
            #[serde(default)]
            state: Option<String>,
            #[serde(default)]
            membership_state: Option<String>,
        }
        let call = self.get(
            "GET /projects/:id/members/all/:user_id",
            self.url(&[
                "projects",
                project_segment(project),
                "members",
                "all",
                &user_id.to_string(),
            ]),
            format!("member {user_id} of {}", project_segment(project)),
        );
        let member: Member = match self.call_json(&call).await {
            Ok(member) => member,
            Err(GitLabError::NotFound { .. }) => return Ok(AccessLevel::NoAccess),
            Err(e) => return Err(e),
        };
        let inactive = |s: &Option<String>| s.as_deref().is_some_and(|s| s != "active");
        if inactive(&member.state) || inactive(&member.membership_state) {
            return Ok(AccessLevel::NoAccess);
        }
        Ok(AccessLevel::from_level(member.access_level))
    }

    /// `POST /projects/:id/merge_requests/:merge_request_iid/notes`: a new comment on the merge
    /// request, written as the token's user. GitLab sends a Note Hook for it like for any
    /// comment, so shepherd must recognise its own notes.
    ///
    /// Not idempotent, with the same rules as [`Self::create_pipeline`]: retried only when the
    /// request certainly did not reach GitLab (connection refused, 429); any other failure after
    /// sending is [`GitLabError::Ambiguous`], and the caller looks for its own marker among the
    /// newest notes ([`Self::mr_notes`]) before writing again.
    pub async fn create_mr_note(
        &self,
        project: &str,
        iid: u64,
        body: &str,
    ) -> Result<Note, GitLabError> {
        let call = Self::write(
            Method::POST,
            "POST /projects/:id/merge_requests/:merge_request_iid/notes",
            self.url(&[
                "projects",
                project_segment(project),
                "merge_requests",
                &iid.to_string(),
                "notes",
            ]),
            Some(note_body(body)?),
            Repeat::OnlyIfNoEffect,
            merge_request_what(project, iid),
        );
        self.call_json(&call).await
    }

    /// `PUT /projects/:id/merge_requests/:merge_request_iid/notes/:note_id`: replaces the body
    /// of a note. Only its author may (403 otherwise). Setting the same body twice gives the
    /// same note, so this is retried like a read.
    pub async fn edit_mr_note(
        &self,
        project: &str,
        iid: u64,
        note_id: u64,
        body: &str,
    ) -> Result<Note, GitLabError> {
        let call = Self::write(
            Method::PUT,
            "PUT /projects/:id/merge_requests/:merge_request_iid/notes/:note_id",
            self.url(&[
                "projects",
                project_segment(project),
                "merge_requests",
                &iid.to_string(),
                "notes",
                &note_id.to_string(),
            ]),
            Some(note_body(body)?),
            Repeat::Safe,
            format!("note {note_id} of {}", merge_request_what(project, iid)),
        );
        self.call_json(&call).await
    }

    /// `GET /projects/:id/merge_requests/:merge_request_iid/notes?order_by=created_at&sort=desc`:
    /// the newest notes first (system notes included), one page of `per_page` (1..=100,
    /// clamped). Enough to find shepherd's recent notes by their hidden marker without reading
    /// a long discussion.
    pub async fn mr_notes(
        &self,
        project: &str,
        iid: u64,
        per_page: u32,
    ) -> Result<Vec<Note>, GitLabError> {
        let mut url = self.url(&[
            "projects",
            project_segment(project),
            "merge_requests",
            &iid.to_string(),
            "notes",
        ]);
        url.query_pairs_mut()
            .append_pair("order_by", "created_at")
            .append_pair("sort", "desc")
            .append_pair("per_page", &per_page.clamp(1, PAGE_SIZE).to_string());
        let call = self.get(
            "GET /projects/:id/merge_requests/:merge_request_iid/notes",
            url,
            merge_request_what(project, iid),
        );
        self.call_json(&call).await
    }

    fn get(&self, endpoint: &'static str, url: Url, what: String) -> Call {
        Self::write(Method::GET, endpoint, url, None, Repeat::Safe, what)
    }

    /// A call that sends `body` (if any), repeated after an ambiguous failure as `repeat` says.
    fn write(
        method: Method,
        endpoint: &'static str,
        url: Url,
        body: Option<Vec<u8>>,
        repeat: Repeat,
        what: String,
    ) -> Call {
        Call {
            method,
            endpoint,
            url,
            body,
            repeat,
            what,
            tail: None,
        }
    }

    /// The API URL for `segments`, each percent-encoded as one path segment.
    fn url(&self, segments: &[&str]) -> Url {
        let mut url = self.inner.api.clone();
        // `new` refused cannot-be-a-base URLs, so this always succeeds.
        if let Ok(mut path) = url.path_segments_mut() {
            path.pop_if_empty().extend(segments);
        }
        url
    }

    async fn call_json<T: DeserializeOwned>(&self, call: &Call) -> Result<T, GitLabError> {
        let reply = self.execute(call).await?;
        decode(call, &reply.body)
    }

    /// Runs `call` with rate limiting, retries and metrics until it succeeds or fails for good.
    async fn execute(&self, call: &Call) -> Result<Reply, GitLabError> {
        let inner = &self.inner;
        let mut attempt: u32 = 0;
        loop {
            attempt += 1;
            inner.limiter.until_ready().await;
            let started = Instant::now();
            let (outcome, status_label) = self.attempt(call).await;
            let elapsed = started.elapsed();
            inner
                .metrics
                .gitlab_requests
                .with_label_values(&[call.endpoint, &status_label])
                .inc();
            inner
                .metrics
                .gitlab_request_duration
                .with_label_values(&[call.endpoint])
                .observe(elapsed.as_secs_f64());
            tracing::debug!(
                endpoint = call.endpoint,
                attempt,
                status = %status_label,
                elapsed_ms = elapsed.as_millis() as u64,
                "GitLab request"
            );

            let (reason, detail, may_have_taken_effect, retry_after) = match outcome {
                Attempt::Done(reply) => return Ok(reply),
                Attempt::Fatal(err) => return Err(err),
                Attempt::Transient {
                    reason,
                    detail,
                    may_have_taken_effect,
                    retry_after,
                } => (reason, detail, may_have_taken_effect, retry_after),
            };
            if call.repeat == Repeat::OnlyIfNoEffect && may_have_taken_effect {
                tracing::warn!(
                    endpoint = call.endpoint,
                    attempt,
                    reason,
                    %detail,
                    "GitLab write may or may not have taken effect; not retrying it blindly"
                );
                return Err(GitLabError::Ambiguous {
                    endpoint: call.endpoint,
                    detail,
                });
            }
            if attempt > inner.max_retries {
                tracing::warn!(
                    endpoint = call.endpoint,
                    attempts = attempt,
                    reason,
                    %detail,
                    "GitLab call failed; giving up"
                );
                return Err(GitLabError::Unavailable {
                    endpoint: call.endpoint,
                    attempts: attempt,
                    last: detail,
                });
            }
            let delay = match retry_after {
                Some(wait) => wait.min(inner.retry_max),
                None => self.backoff(attempt),
            };
            inner
                .metrics
                .gitlab_retries
                .with_label_values(&[reason])
                .inc();
            tracing::warn!(
                endpoint = call.endpoint,
                attempt,
                reason,
                %detail,
                delay_ms = delay.as_millis() as u64,
                "GitLab call failed; retrying"
            );
            tokio::time::sleep(delay).await;
        }
    }

    /// Full jitter: uniform in `[0, min(retry_max, retry_base * 2^(retry-1))]`.
    fn backoff(&self, retry: u32) -> Duration {
        crate::backoff::full_jitter(self.inner.retry_base, self.inner.retry_max, retry)
    }

    /// One HTTP attempt, and the status label for metrics.
    async fn attempt(&self, call: &Call) -> (Attempt, String) {
        let mut request = self
            .inner
            .http
            .request(call.method.clone(), call.url.clone());
        if let Some(body) = &call.body {
            request = request
                .header(CONTENT_TYPE, "application/json")
                .body(body.clone());
        }
        let response = match request.send().await {
            Ok(response) => response,
            Err(e) => return (transport_failure(e), "error".to_string()),
        };
        let status = response.status();
        let label = status.as_str().to_string();
        let headers = response.headers().clone();
        let read = match call.tail {
            Some(limit) if status.is_success() => read_tail(response, limit).await,
            _ => response.bytes().await.map(|b| b.to_vec()),
        };
        let body = match read {
            Ok(body) => body,
            // A success whose body did not arrive is a failure of the whole attempt.
            Err(e) if status.is_success() => return (transport_failure(e), label),
            // For an error status the status says enough.
            Err(_) => Vec::new(),
        };
        (classify(call, status, headers, body), label)
    }
}

/// The last `limit` bytes of a body, read chunk by chunk so that no more than about twice
/// that is held at once however long the body is.
async fn read_tail(
    mut response: reqwest::Response,
    limit: usize,
) -> Result<Vec<u8>, reqwest::Error> {
    let mut tail: Vec<u8> = Vec::new();
    while let Some(chunk) = response.chunk().await? {
        tail.extend_from_slice(&chunk);
        if tail.len() > limit.saturating_mul(2) {
            tail.drain(..tail.len() - limit);
        }
    }
    if tail.len() > limit {
        tail.drain(..tail.len() - limit);
    }
    Ok(tail)
}

/// Decodes a success body. For a non-idempotent write an unreadable success is ambiguous:
/// the effect happened, but the caller cannot tell which object it created.
fn decode<T: DeserializeOwned>(call: &Call, body: &[u8]) -> Result<T, GitLabError> {
    serde_json::from_slice(body).map_err(|e| match call.repeat {
        Repeat::OnlyIfNoEffect => GitLabError::Ambiguous {
            endpoint: call.endpoint,
            detail: format!("GitLab accepted the request but its answer could not be read: {e}"),
        },
        Repeat::Safe => GitLabError::Decode {
            endpoint: call.endpoint,
            detail: e.to_string(),
        },
    })
}

fn classify(call: &Call, status: StatusCode, headers: HeaderMap, body: Vec<u8>) -> Attempt {
    if status.is_success() {
        return Attempt::Done(Reply { headers, body });
    }
    let reason_phrase = status.canonical_reason().unwrap_or("no reason given");
    let message = || render_error_body(&body, reason_phrase);
    let retry_after = headers
        .get(RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| parse_retry_after(v, chrono::Utc::now()));
    match status.as_u16() {
        429 => Attempt::Transient {
            reason: "429",
            detail: format!("HTTP 429: {}", message()),
            may_have_taken_effect: false,
            retry_after,
        },
        500..=599 => Attempt::Transient {
            reason: "5xx",
            detail: format!("HTTP {}: {}", status.as_u16(), message()),
            may_have_taken_effect: true,
            retry_after,
        },
        400 => Attempt::Fatal(GitLabError::BadRequest { message: message() }),
        401 => Attempt::Fatal(GitLabError::Unauthorized),
        403 => Attempt::Fatal(GitLabError::Forbidden { message: message() }),
        404 => Attempt::Fatal(GitLabError::NotFound {
            what: call.what.clone(),
        }),
        409 => Attempt::Fatal(GitLabError::Conflict { message: message() }),
        422 => Attempt::Fatal(GitLabError::Unprocessable { message: message() }),
        300..=399 => {
            let to = headers
                .get(LOCATION)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("elsewhere");
            Attempt::Fatal(GitLabError::Client {
                status: status.as_u16(),
                message: format!(
                    "redirected to {}; set gitlab.url to GitLab's final address",
                    truncate(to, 200)
                ),
            })
        }
        code => Attempt::Fatal(GitLabError::Client {
            status: code,
            message: message(),
        }),
    }
}

/// Sorts a transport error by whether the request may have reached GitLab.
fn transport_failure(e: reqwest::Error) -> Attempt {
    let (reason, may_have_taken_effect) = if e.is_connect() {
        // Refused, DNS, TLS handshake, connect timeout: nothing was sent.
        ("connect", false)
    } else if e.is_timeout() {
        ("timeout", true)
    } else {
        ("network", true)
    };
    Attempt::Transient {
        reason,
        detail: describe(&e.without_url()),
        may_have_taken_effect,
        retry_after: None,
    }
}

/// An error and its causes on one line ("error sending request: ... : Connection refused").
pub(crate) fn describe(e: &(dyn std::error::Error + 'static)) -> String {
    let mut parts: Vec<String> = vec![e.to_string()];
    let mut source = e.source();
    while let Some(cause) = source {
        let text = cause.to_string();
        if parts.last().is_none_or(|last| !last.contains(&text)) {
            parts.push(text);
        }
        source = cause.source();
    }
    truncate(&parts.join(": "), 300)
}

/// `Retry-After` as delay-seconds or an HTTP-date (RFC 9110 §10.2.3); a date in the past is 0.
pub(crate) fn parse_retry_after(
    value: &str,
    now: chrono::DateTime<chrono::Utc>,
) -> Option<Duration> {
    let value = value.trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let at = chrono::DateTime::parse_from_rfc2822(value).ok()?;
    Some(
        (at.with_timezone(&chrono::Utc) - now)
            .to_std()
            .unwrap_or_default(),
    )
}

/// `<base>/api/v4/` (kept as is when the base already ends in `/api/v4`).
fn api_root(base: &Url) -> Url {
    let mut api = base.clone();
    api.set_query(None);
    api.set_fragment(None);
    let path = base.path().trim_end_matches('/');
    if path.ends_with("/api/v4") {
        api.set_path(&format!("{path}/"));
    } else {
        api.set_path(&format!("{path}/api/v4/"));
    }
    api
}

/// A project path or id as GitLab wants it in one path segment (the caller's `Url` encodes
/// `/` as `%2F`); stray slashes around it are dropped.
fn project_segment(project: &str) -> &str {
    project.trim().trim_matches('/')
}

fn project_what(project: &str) -> String {
    format!("project {}", project_segment(project))
}

fn merge_request_what(project: &str, iid: u64) -> String {
    format!("merge request {}!{iid}", project_segment(project))
}

/// A request's JSON body; `what` names it in the (never expected) error.
fn json_body(value: &impl serde::Serialize, what: &str) -> Result<Vec<u8>, GitLabError> {
    serde_json::to_vec(value).map_err(|e| GitLabError::Config(format!("encoding {what}: {e}")))
}

/// The JSON body of a note create or edit: `{"body": ...}`.
fn note_body(body: &str) -> Result<Vec<u8>, GitLabError> {
    json_body(&serde_json::json!({ "body": body }), "the note")
}

/// The page after `page` that GitLab's `x-next-page` header names, if any.
fn next_page(reply: &Reply, page: u32) -> Option<u32> {
    reply
        .headers
        .get("x-next-page")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u32>().ok())
        .filter(|next| *next > page)
}

fn pipeline_what(project: &str, id: u64) -> String {
    format!("pipeline {id} of {}", project_segment(project))
}
