//! Fault injection for the GitLab double: what can go wrong between shepherd and GitLab, chosen at
//! random (reproducibly, from a seed) or scripted per route.
//!
//! Faithful: the failures a real GitLab deployment shows to an API client. Rails errors answer JSON
//! (`{"message":"500 Internal Server Error"}`); the proxy in front of Rails answers 502/503 with an
//! HTML page, so a client must not assume a JSON body on 5xx; rate limiting answers 429 with a
//! `Retry-After` header, `RateLimit-*` headers and the plain-text body `Retry later`; a connection
//! can drop without an answer; an answer can be late or never come; and a pipeline create can take
//! effect although its answer is lost (the reason shepherd searches before creating again).
//!
//! Simplified: which requests fail is decided per request from `hash(seed, method, path, n)` where
//! `n` counts earlier requests with the same method and path, so a run is reproducible even when
//! requests to different resources interleave differently. Faults apply only to `/api/v4` routes and
//! are decided before authentication, as a proxy or rate limiter in front of GitLab would.

use std::time::Duration;

use super::model::{fnv1a, splitmix64};

/// One kind of failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultKind {
    /// Answers this status instead of doing the work: 500 with GitLab's JSON body, 502/503 with the
    /// proxy's HTML page, anything else with `{"message":"<code> <reason>"}`.
    Status(u16),
    /// 429 with `Retry-After: retry_after_secs` and the body `Retry later`.
    TooManyRequests { retry_after_secs: u64 },
    /// Does the work and answers correctly, after this delay.
    Slow(Duration),
    /// Drops the connection (TCP reset) without answering; the work is not done.
    Reset,
    /// On `POST /projects/:id/pipeline`, `POST /projects/:id/merge_requests/:iid/notes`,
    /// `POST /projects/:id/jobs/:job_id/retry` and `POST .../variables`: the pipeline, note, new
    /// job or variable is created (with its webhook), then the answer is this status (502 from the
    /// proxy, typically). On other routes it behaves like `Status(code)`.
    CreateThenFail(u16),
    /// Never answers; the client has to give up (the work is not done).
    Timeout,
}

/// Random faults: a fraction `rate` (0..=1) of API requests fail with one of `kinds`, chosen
/// uniformly; the choice is reproducible from `seed`.
#[derive(Debug, Clone, PartialEq)]
pub struct Faults {
    pub rate: f64,
    pub kinds: Vec<FaultKind>,
    pub seed: u64,
}

impl Faults {
    /// No faults at all (the default).
    pub fn none() -> Faults {
        Faults {
            rate: 0.0,
            kinds: Vec::new(),
            seed: 0,
        }
    }

    /// The fault, if any, for the `nth` (0-based) request with this method and path.
    pub(crate) fn decide(&self, method: &str, path: &str, nth: u64) -> Option<FaultKind> {
        if self.kinds.is_empty() || self.rate <= 0.0 {
            return None;
        }
        let key = fnv1a(format!("{method} {path}").as_bytes());
        let draw = splitmix64(self.seed ^ splitmix64(key ^ splitmix64(nth)));
        let unit = (draw >> 11) as f64 / (1u64 << 53) as f64;
        if unit >= self.rate {
            return None;
        }
        let pick = splitmix64(draw) % self.kinds.len() as u64;
        self.kinds.get(pick as usize).copied()
    }
}

impl Default for Faults {
    fn default() -> Faults {
        Faults::none()
    }
}

/// The API routes of the double, for scripted faults and for reading [`super::RecordedRequest`]s.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum Route {
    /// `GET /projects/:id/pipelines/:pipeline_id`
    GetPipeline,
    /// `GET /projects/:id/pipelines/:pipeline_id/variables`
    PipelineVariables,
    /// `GET /projects/:id/pipelines`
    ListPipelines,
    /// `POST /projects/:id/pipeline`
    CreatePipeline,
    /// `POST /projects/:id/pipelines/:pipeline_id/cancel`
    CancelPipeline,
    /// `GET /projects/:id/pipelines/:pipeline_id/jobs`
    ListJobs,
    /// `GET /projects/:id/jobs/:job_id`
    GetJob,
    /// `GET /projects/:id/jobs/:job_id/trace`
    JobTrace,
    /// `POST /projects/:id/jobs/:job_id/retry`
    RetryJob,
    /// `GET /projects/:id`
    GetProject,
    /// `GET /projects/:id/members/all/:user_id`
    GetMember,
    /// `GET /projects/:id/merge_requests/:merge_request_iid`
    GetMergeRequest,
    /// `GET /projects/:id/merge_requests/:merge_request_iid/notes`
    ListNotes,
    /// `GET /projects/:id/merge_requests/:merge_request_iid/notes/:note_id`
    GetNote,
    /// `POST /projects/:id/merge_requests/:merge_request_iid/notes`
    CreateNote,
    /// `PUT /projects/:id/merge_requests/:merge_request_iid/notes/:note_id`
    EditNote,
    /// `GET /projects/:id/variables`, `GET /groups/:id/variables`
    ListVariables,
    /// `POST /projects/:id/variables`, `POST /groups/:id/variables`
    CreateVariable,
    /// `GET /projects/:id/variables/:key` (and groups)
    GetVariable,
    /// `PUT /projects/:id/variables/:key` (and groups)
    UpdateVariable,
    /// `DELETE /projects/:id/variables/:key` (and groups)
    DeleteVariable,
    /// `GET /user`
    User,
    /// `GET /version`
    Version,
    /// Anything else under `/api/v4` (answered 404 or 405).
    #[default]
    Unknown,
}

/// Which requests a scripted fault applies to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RouteMatcher {
    /// Every API request.
    Any,
    /// Requests to one route (any project, any pipeline).
    Route(Route),
    /// Requests to one route whose path contains a fragment (`"/merge_requests/4/"`): one
    /// merge request's notes, one pipeline's jobs.
    RouteAt(Route, &'static str),
}

impl RouteMatcher {
    pub(crate) fn matches(self, route: Route, path: &str) -> bool {
        match self {
            RouteMatcher::Any => true,
            RouteMatcher::Route(r) => r == route,
            RouteMatcher::RouteAt(r, fragment) => r == route && path.contains(fragment),
        }
    }
}

impl From<Route> for RouteMatcher {
    fn from(route: Route) -> RouteMatcher {
        RouteMatcher::Route(route)
    }
}

/// A scripted fault: the next `remaining` requests matching `matcher` fail with `kind`.
#[derive(Debug, Clone)]
pub(crate) struct Scripted {
    pub matcher: RouteMatcher,
    pub remaining: usize,
    pub kind: FaultKind,
}
