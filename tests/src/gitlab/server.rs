//! The HTTP side of the GitLab double: accepting connections, routing `/api/v4` requests, recording
//! them, injecting faults and answering as GitLab does.
//!
//! Faithful: routes, methods, status codes, headers and bodies as GitLab's REST API documents them
//! (see the module documentation of `gitlab`), including the pagination headers, the 429 answer of
//! GitLab's rate limiter, the proxy's HTML 502/503 pages, and a create that takes effect before its
//! answer is written.
//!
//! Simplified: HTTP/1.1 only, no TLS; unknown API paths and known paths with another method both
//! answer 404 `{"error":"404 Not Found"}`; paths outside `/api/v4` answer a plain 404. Connections
//! are served here rather than by `axum::serve` so that one can be dropped without an answer (the
//! `Reset` fault closes it with a TCP RST).

use std::convert::Infallible;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};

use axum::Json;
use axum::body::Body;
use axum::http::{HeaderMap, HeaderValue, Request, Response, StatusCode, header};
use axum::response::IntoResponse;
use chrono::{DateTime, NaiveDate, Utc};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, watch};

use super::faults::{FaultKind, Route};
use super::merge_requests::{MAX_NOTE_CHARS, project_json};
use super::model::{self, STATUSES, USER_ID, USER_NAME, USERNAME, Variable, is_finished};
use super::{REVISION, RecordedRequest, Shared, State, VERSION};

/// Largest request body the double reads.
const BODY_LIMIT: usize = 1 << 20;

/// Pipeline sources GitLab knows (the `source` filter accepts only these).
const SOURCES: &[&str] = &[
    "push",
    "web",
    "trigger",
    "schedule",
    "api",
    "external",
    "pipeline",
    "chat",
    "webide",
    "merge_request_event",
    "external_pull_request_event",
    "parent_pipeline",
    "ondemand_dast_scan",
    "ondemand_dast_validation",
    "security_orchestration_policy",
    "container_registry_push",
    "duo_workflow",
    "pipeline_execution_policy_schedule",
    "unknown",
];

/// Lets a request handler drop its own connection.
#[derive(Default)]
struct ConnCtl {
    killed: AtomicBool,
    kill: Notify,
}

impl ConnCtl {
    fn kill(&self) {
        self.killed.store(true, Ordering::SeqCst);
        self.kill.notify_one();
    }
}

/// A TCP stream that is closed with a reset (SO_LINGER 0) when its connection was killed.
struct KillableStream {
    inner: TcpStream,
    ctl: Arc<ConnCtl>,
}

impl Drop for KillableStream {
    fn drop(&mut self) {
        if self.ctl.killed.load(Ordering::SeqCst) {
            let _ = self.inner.set_zero_linger();
        }
    }
}

impl AsyncRead for KillableStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for KillableStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Accepts connections until `shutdown`'s sender is dropped.
pub(crate) async fn serve(
    listener: TcpListener,
    shared: Arc<Shared>,
    mut shutdown: watch::Receiver<()>,
) {
    loop {
        let stream = tokio::select! {
            biased;
            _ = shutdown.changed() => return,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(_) => {
                    tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let ctl = Arc::new(ConnCtl::default());
        let io = TokioIo::new(KillableStream {
            inner: stream,
            ctl: ctl.clone(),
        });
        let shared = shared.clone();
        let mut shutdown = shutdown.clone();
        tokio::spawn(async move {
            let handler_ctl = ctl.clone();
            let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                let shared = shared.clone();
                let ctl = handler_ctl.clone();
                async move { Ok::<_, Infallible>(handle(shared, ctl, req).await) }
            });
            let conn = hyper::server::conn::http1::Builder::new().serve_connection(io, service);
            tokio::select! {
                biased;
                _ = shutdown.changed() => {}
                _ = ctl.kill.notified() => {}
                _ = conn => {}
            }
        });
    }
}

/// What a request path addresses.
#[derive(Default)]
struct Target {
    route: Route,
    api: bool,
    /// The decoded `:id` segment.
    project_ref: Option<String>,
    /// The `:pipeline_id` segment (may not be a number).
    pipeline_ref: Option<String>,
    /// The `:merge_request_iid` segment (may not be a number).
    mr_ref: Option<String>,
    /// The `:note_id` segment (may not be a number).
    note_ref: Option<String>,
    /// The `:user_id` segment of the members route (may not be a number).
    user_ref: Option<String>,
    /// The `:job_id` segment (may not be a number).
    job_ref: Option<String>,
    /// A project's or group's CI/CD variables route.
    variables: Option<super::ci_variables::VariablesTarget>,
}

pub(crate) fn percent_decode(s: &str) -> String {
    fn hex(b: u8) -> Option<u8> {
        (b as char).to_digit(16).map(|d| d as u8)
    }
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && let (Some(hi), Some(lo)) = (
                bytes.get(i + 1).copied().and_then(hex),
                bytes.get(i + 2).copied().and_then(hex),
            )
        {
            out.push(hi << 4 | lo);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn parse_target(method: &str, path: &str) -> Target {
    let Some(rest) = path.strip_prefix("/api/v4/") else {
        return Target {
            api: path == "/api/v4",
            ..Target::default()
        };
    };
    let segments: Vec<&str> = rest.split('/').collect();
    let mut target = Target {
        api: true,
        ..Target::default()
    };
    let owned = |i: usize| segments.get(i).map(|s| (*s).to_owned());
    if let Some((route, variables)) = super::ci_variables::parse(method, &segments) {
        target.route = route;
        if variables.kind == "projects" {
            target.project_ref = Some(variables.owner_ref.clone());
        }
        target.variables = Some(variables);
        return target;
    }
    target.route = match (method, segments.as_slice()) {
        ("GET", ["user"]) => Route::User,
        ("GET", ["version"]) => Route::Version,
        ("GET", ["projects", _]) => Route::GetProject,
        ("GET", ["projects", _, "members", "all", _]) => Route::GetMember,
        ("GET", ["projects", _, "pipelines"]) => Route::ListPipelines,
        ("POST", ["projects", _, "pipeline"]) => Route::CreatePipeline,
        ("GET", ["projects", _, "pipelines", _]) => Route::GetPipeline,
        ("GET", ["projects", _, "pipelines", _, "variables"]) => Route::PipelineVariables,
        ("POST", ["projects", _, "pipelines", _, "cancel"]) => Route::CancelPipeline,
        ("GET", ["projects", _, "pipelines", _, "jobs"]) => Route::ListJobs,
        ("GET", ["projects", _, "jobs", _]) => Route::GetJob,
        ("GET", ["projects", _, "jobs", _, "trace"]) => Route::JobTrace,
        ("POST", ["projects", _, "jobs", _, "retry"]) => Route::RetryJob,
        ("GET", ["projects", _, "merge_requests", _]) => Route::GetMergeRequest,
        ("GET", ["projects", _, "merge_requests", _, "notes"]) => Route::ListNotes,
        ("POST", ["projects", _, "merge_requests", _, "notes"]) => Route::CreateNote,
        ("GET", ["projects", _, "merge_requests", _, "notes", _]) => Route::GetNote,
        ("PUT", ["projects", _, "merge_requests", _, "notes", _]) => Route::EditNote,
        _ => Route::Unknown,
    };
    if target.route == Route::Unknown || segments.first() != Some(&"projects") {
        return target;
    }
    target.project_ref = segments.get(1).map(|s| percent_decode(s));
    match target.route {
        Route::GetMember => target.user_ref = owned(4),
        Route::GetPipeline | Route::PipelineVariables | Route::CancelPipeline | Route::ListJobs => {
            target.pipeline_ref = owned(3)
        }
        Route::GetMergeRequest | Route::ListNotes | Route::CreateNote => {
            target.mr_ref = owned(3);
        }
        Route::GetNote | Route::EditNote => {
            target.mr_ref = owned(3);
            target.note_ref = owned(5);
        }
        Route::GetJob | Route::JobTrace | Route::RetryJob => target.job_ref = owned(3),
        _ => {}
    }
    target
}

pub(crate) fn json_response(status: StatusCode, body: Value) -> Response<Body> {
    (status, Json(body)).into_response()
}

pub(crate) fn message(status: StatusCode, text: &str) -> Response<Body> {
    json_response(status, json!({ "message": text }))
}

fn param_error(text: &str) -> Response<Body> {
    json_response(StatusCode::BAD_REQUEST, json!({ "error": text }))
}

/// A numeric id from the path (`:job_id`, `:user_id`, `:merge_request_iid`); `None` is
/// answered with GitLab's 400 naming the parameter.
fn path_id(value: Option<&str>) -> Option<u64> {
    value.and_then(|v| v.parse::<u64>().ok())
}

/// The answer of a `Status`/`CreateThenFail` fault.
fn status_fault(code: u16) -> Response<Body> {
    let status = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let reason = status.canonical_reason().unwrap_or("Error");
    match code {
        502..=504 => {
            let title = match code {
                502 => "Whoops, GitLab is taking too much time to respond.",
                503 => "GitLab is not responding.",
                _ => "The gateway timed out.",
            };
            let html = format!(
                "<!DOCTYPE html>\n<html>\n<head>\n<title>Something went wrong ({code})</title>\n</head>\n\
                 <body>\n<h1>{code}</h1>\n<h3>{title}</h3>\n<p>Try refreshing the page, or going back and \
                 attempting the action again.</p>\n</body>\n</html>\n"
            );
            (
                status,
                [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
                html,
            )
                .into_response()
        }
        _ => message(status, &format!("{code} {reason}")),
    }
}

/// The answer of GitLab's rate limiter.
fn too_many_requests(retry_after_secs: u64) -> Response<Body> {
    let reset = Utc::now() + chrono::Duration::seconds(retry_after_secs as i64);
    let headers = [
        (header::CONTENT_TYPE, "text/plain".to_owned()),
        (header::RETRY_AFTER, retry_after_secs.to_string()),
        (
            header::HeaderName::from_static("ratelimit-name"),
            "throttle_authenticated_api".to_owned(),
        ),
        (
            header::HeaderName::from_static("ratelimit-limit"),
            "2000".to_owned(),
        ),
        (
            header::HeaderName::from_static("ratelimit-observed"),
            "2001".to_owned(),
        ),
        (
            header::HeaderName::from_static("ratelimit-remaining"),
            "0".to_owned(),
        ),
        (
            header::HeaderName::from_static("ratelimit-reset"),
            reset.timestamp().to_string(),
        ),
        (
            header::HeaderName::from_static("ratelimit-resettime"),
            reset.format("%a, %d %b %Y %H:%M:%S GMT").to_string(),
        ),
    ];
    (StatusCode::TOO_MANY_REQUESTS, headers, "Retry later\n").into_response()
}

/// Handles one request: records it, injects a fault if one is due, answers.
async fn handle(shared: Arc<Shared>, ctl: Arc<ConnCtl>, req: Request<Incoming>) -> Response<Body> {
    let method = req.method().as_str().to_owned();
    let path = req.uri().path().to_owned();
    let query = req.uri().query().unwrap_or("").to_owned();
    let headers = req.headers().clone();
    let body = axum::body::to_bytes(Body::new(req.into_body()), BODY_LIMIT)
        .await
        .unwrap_or_default();
    let target = parse_target(&method, &path);
    let body_json = if body.is_empty() {
        None
    } else {
        serde_json::from_slice::<Value>(&body).ok()
    };

    let (seq, fault) = {
        let mut state = shared.lock();
        let project = target
            .project_ref
            .as_deref()
            .and_then(|r| state.project_by_id_or_path(r))
            .map(|p| p.id);
        let fault = if target.api {
            decide_fault(&mut state, &method, &path, target.route)
        } else {
            None
        };
        let seq = state.requests.len() as u64;
        state.requests.push(RecordedRequest {
            seq,
            method: method.clone(),
            path: path.clone(),
            query: query.clone(),
            time: std::time::Instant::now(),
            route: target.route,
            project,
            pipeline: target.pipeline_ref.as_deref().and_then(|p| p.parse().ok()),
            merge_request: target.mr_ref.as_deref().and_then(|m| m.parse().ok()),
            note: target.note_ref.as_deref().and_then(|n| n.parse().ok()),
            body: body_json.clone(),
            status: None,
            fault,
        });
        (seq, fault)
    };
    shared.bump();

    let req = ApiRequest {
        path: &path,
        query: &query,
        headers: &headers,
        body: &body,
        body_json: body_json.as_ref(),
        target: &target,
    };
    let response = match fault {
        None => Some(respond(&shared, &req).await),
        Some(FaultKind::Status(code)) => Some(status_fault(code)),
        Some(FaultKind::TooManyRequests { retry_after_secs }) => {
            Some(too_many_requests(retry_after_secs))
        }
        Some(FaultKind::Slow(delay)) => {
            tokio::time::sleep(delay).await;
            Some(respond(&shared, &req).await)
        }
        Some(FaultKind::CreateThenFail(code)) => {
            if matches!(
                target.route,
                Route::CreatePipeline | Route::CreateNote | Route::RetryJob | Route::CreateVariable
            ) {
                let _ = respond(&shared, &req).await;
            }
            Some(status_fault(code))
        }
        Some(FaultKind::Reset) => {
            ctl.kill();
            None
        }
        Some(FaultKind::Timeout) => None,
    };
    let Some(response) = response else {
        // Never answer: the connection is dropped (Reset) or the client gives up (Timeout).
        return std::future::pending().await;
    };
    {
        let mut state = shared.lock();
        if let Some(r) = state.requests.get_mut(seq as usize) {
            r.status = Some(response.status().as_u16());
        }
    }
    shared.bump();
    response
}

/// Scripted faults first, then the seeded random ones.
fn decide_fault(state: &mut State, method: &str, path: &str, route: Route) -> Option<FaultKind> {
    let key = (method.to_owned(), path.to_owned());
    let counter = state.per_path_counts.entry(key).or_insert(0);
    let nth = *counter;
    *counter += 1;
    if let Some(script) = state
        .scripted
        .iter_mut()
        .find(|s| s.remaining > 0 && s.matcher.matches(route, path))
    {
        script.remaining -= 1;
        let kind = script.kind;
        state.scripted.retain(|s| s.remaining > 0);
        return Some(kind);
    }
    state.faults.decide(method, path, nth)
}

/// Everything about a request the route handlers look at.
struct ApiRequest<'a> {
    path: &'a str,
    query: &'a str,
    headers: &'a HeaderMap,
    body: &'a [u8],
    body_json: Option<&'a Value>,
    target: &'a Target,
}

impl ApiRequest<'_> {
    fn token(&self) -> Option<&str> {
        if let Some(t) = self
            .headers
            .get("private-token")
            .and_then(|v| v.to_str().ok())
        {
            return Some(t.trim());
        }
        self.headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim)
    }

    fn query_pairs(&self) -> Vec<(String, String)> {
        url::form_urlencoded::parse(self.query.as_bytes())
            .into_owned()
            .collect()
    }

    fn param(&self, name: &str) -> Option<String> {
        self.query_pairs()
            .into_iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v)
    }
}

/// The normal (fault-free) answer.
async fn respond(shared: &Shared, req: &ApiRequest<'_>) -> Response<Body> {
    if !req.target.api {
        return (StatusCode::NOT_FOUND, "Not Found").into_response();
    }
    if req.target.route == Route::Unknown {
        return json_response(StatusCode::NOT_FOUND, json!({ "error": "404 Not Found" }));
    }
    let can_write = {
        let state = shared.lock();
        match req.token() {
            Some(t) if t == state.token => true,
            Some(t) if t == state.guest_token => false,
            _ => return message(StatusCode::UNAUTHORIZED, "401 Unauthorized"),
        }
    };
    if let Some(variables) = &req.target.variables {
        let params = super::ci_variables::Params {
            json: req.body_json,
            form: if req.body_json.is_none() {
                url::form_urlencoded::parse(req.body).into_owned().collect()
            } else {
                Vec::new()
            },
            query: req.query_pairs(),
        };
        let mut state = shared.lock();
        return super::ci_variables::respond(
            &mut state,
            req.target.route,
            variables,
            &params,
            can_write,
        );
    }
    let base_url = shared.lock().base_url.clone();
    match req.target.route {
        Route::User => json_response(StatusCode::OK, current_user(&base_url)),
        Route::Version => json_response(
            StatusCode::OK,
            json!({
                "version": VERSION,
                "revision": REVISION,
                "kas": { "enabled": false, "externalUrl": Value::Null, "externalK8sProxyUrl": Value::Null, "version": Value::Null },
                "enterprise": false,
            }),
        ),
        route => project_route(shared, req, route, can_write, &base_url).await,
    }
}

/// `GET /user` for the token's user.
fn current_user(base_url: &str) -> Value {
    let mut user = model::user_json(base_url);
    if let Some(map) = user.as_object_mut() {
        for (k, v) in [
            ("created_at", json!("2020-01-01T00:00:00.000Z")),
            ("bio", json!("")),
            ("location", json!("")),
            ("public_email", Value::Null),
            ("job_title", json!("")),
            ("bot", json!(false)),
            ("last_sign_in_at", Value::Null),
            ("confirmed_at", json!("2020-01-01T00:00:00.000Z")),
            (
                "last_activity_on",
                json!(Utc::now().format("%Y-%m-%d").to_string()),
            ),
            ("email", json!(format!("{USERNAME}@example.com"))),
            ("projects_limit", json!(100_000)),
            ("can_create_group", json!(true)),
            ("can_create_project", json!(true)),
            ("two_factor_enabled", json!(false)),
            ("external", json!(false)),
            ("private_profile", json!(false)),
            ("is_admin", json!(false)),
        ] {
            map.insert(k.to_owned(), v);
        }
    }
    debug_assert_eq!(user["id"], json!(USER_ID));
    debug_assert_eq!(user["name"], json!(USER_NAME));
    user
}

/// Routes under `/projects/:id`.
async fn project_route(
    shared: &Shared,
    req: &ApiRequest<'_>,
    route: Route,
    can_write: bool,
    base_url: &str,
) -> Response<Body> {
    let now = Utc::now();
    let project = {
        let state = shared.lock();
        req.target
            .project_ref
            .as_deref()
            .and_then(|r| state.project_by_id_or_path(r))
            .cloned()
    };
    let Some(project) = project else {
        return message(StatusCode::NOT_FOUND, "404 Project Not Found");
    };
    // The pipeline of `/pipelines/:pipeline_id/...` routes, checked to belong to the project.
    let pipeline_id = match &req.target.pipeline_ref {
        Some(p) if route != Route::ListPipelines && route != Route::CreatePipeline => {
            match p.parse::<u64>() {
                Ok(id) => {
                    let state = shared.lock();
                    match state.pipelines.get(&id) {
                        Some(pl) if pl.project_id == project.id => Some(id),
                        _ => return message(StatusCode::NOT_FOUND, "404 Not found"),
                    }
                }
                Err(_) => return param_error("pipeline_id is invalid"),
            }
        }
        _ => None,
    };
    match (route, pipeline_id) {
        (Route::GetPipeline, Some(id)) => {
            let mut state = shared.lock();
            state.advance(id, now);
            let Some(pipeline) = state.pipelines.get_mut(&id) else {
                return message(StatusCode::NOT_FOUND, "404 Not found");
            };
            let body = pipeline.to_json(base_url);
            if let Some(auto) = pipeline.auto.as_mut() {
                auto.polls += 1;
            }
            json_response(StatusCode::OK, body)
        }
        (Route::PipelineVariables, Some(id)) => {
            let state = shared.lock();
            let vars: Vec<Value> = state
                .pipelines
                .get(&id)
                .map(|p| p.variables.iter().map(Variable::to_json).collect())
                .unwrap_or_default();
            json_response(StatusCode::OK, Value::Array(vars))
        }
        (Route::CancelPipeline, Some(id)) => {
            if !can_write {
                return message(StatusCode::FORBIDDEN, "403 Forbidden");
            }
            let mut state = shared.lock();
            state.advance(id, now);
            state.cancel(id, now);
            match state.pipelines.get(&id) {
                Some(p) => json_response(StatusCode::OK, p.to_json(base_url)),
                None => message(StatusCode::NOT_FOUND, "404 Not found"),
            }
        }
        (Route::ListJobs, Some(id)) => list_jobs(shared, req, id, base_url),
        (Route::GetJob | Route::JobTrace | Route::RetryJob, _) => {
            job_route(shared, req, route, project.id, can_write, base_url)
        }
        (Route::GetProject, _) => json_response(
            StatusCode::OK,
            project_json(base_url, project.id, &project.path),
        ),
        (Route::GetMember, _) => get_member(shared, req, project.id, base_url),
        (
            Route::GetMergeRequest
            | Route::ListNotes
            | Route::GetNote
            | Route::CreateNote
            | Route::EditNote,
            _,
        ) => merge_request_route(shared, req, route, project.id, can_write, base_url),
        (Route::ListPipelines, _) => list_pipelines(shared, req, project.id, base_url),
        (Route::CreatePipeline, _) => {
            if !can_write {
                return message(StatusCode::FORBIDDEN, "403 Forbidden");
            }
            create_pipeline(shared, req, project.id, base_url).await
        }
        _ => json_response(StatusCode::NOT_FOUND, json!({ "error": "404 Not Found" })),
    }
}

/// `page` and `per_page` as GitLab reads them.
/// Errors are the text of GitLab's `{"error": ...}` body.
fn page_params(req: &ApiRequest<'_>) -> Result<(usize, usize), &'static str> {
    let page = match req.param("page") {
        None => 1,
        Some(p) => match p.trim().parse::<i64>() {
            Ok(n) => n.max(1) as usize,
            Err(_) => return Err("page is invalid"),
        },
    };
    let per_page = match req.param("per_page") {
        None => 20,
        Some(p) => match p.trim().parse::<i64>() {
            Ok(n) if n < 1 => 20,
            Ok(n) => n.min(100) as usize,
            Err(_) => return Err("per_page is invalid"),
        },
    };
    Ok((page, per_page))
}

/// One page of `items` with GitLab's offset-pagination headers.
fn paginate(
    req: &ApiRequest<'_>,
    base_url: &str,
    items: Vec<Value>,
    page: usize,
    per_page: usize,
) -> Response<Body> {
    let total = items.len();
    let total_pages = total.div_ceil(per_page).max(1);
    let page_items: Vec<Value> = items
        .into_iter()
        .skip((page - 1).saturating_mul(per_page))
        .take(per_page)
        .collect();
    let next = (page < total_pages).then_some(page + 1);
    let prev = (page > 1).then(|| (page - 1).min(total_pages));
    let link_to = |p: usize| {
        let mut ser = url::form_urlencoded::Serializer::new(String::new());
        for (k, v) in req.query_pairs() {
            if k != "page" && k != "per_page" {
                ser.append_pair(&k, &v);
            }
        }
        ser.append_pair("page", &p.to_string());
        ser.append_pair("per_page", &per_page.to_string());
        format!("<{base_url}{}?{}>", req.path, ser.finish())
    };
    let mut links = Vec::new();
    if let Some(p) = prev {
        links.push(format!("{}; rel=\"prev\"", link_to(p)));
    }
    if let Some(n) = next {
        links.push(format!("{}; rel=\"next\"", link_to(n)));
    }
    links.push(format!("{}; rel=\"first\"", link_to(1)));
    links.push(format!("{}; rel=\"last\"", link_to(total_pages)));

    let mut response = json_response(StatusCode::OK, Value::Array(page_items));
    let h = response.headers_mut();
    let mut set = |name: &'static str, value: String| {
        if let Ok(v) = HeaderValue::from_str(&value) {
            h.insert(name, v);
        }
    };
    set("x-page", page.to_string());
    set("x-per-page", per_page.to_string());
    set(
        "x-next-page",
        next.map(|n| n.to_string()).unwrap_or_default(),
    );
    set(
        "x-prev-page",
        prev.map(|n| n.to_string()).unwrap_or_default(),
    );
    set("x-total", total.to_string());
    set("x-total-pages", total_pages.to_string());
    set("link", links.join(", "));
    response
}

fn parse_time(value: &str) -> Option<DateTime<Utc>> {
    if let Ok(t) = DateTime::parse_from_rfc3339(value) {
        return Some(t.with_timezone(&Utc));
    }
    NaiveDate::parse_from_str(value, "%Y-%m-%d")
        .ok()
        .and_then(|d| d.and_hms_opt(0, 0, 0))
        .map(|t| t.and_utc())
}

/// `GET /projects/:id/pipelines`.
fn list_pipelines(
    shared: &Shared,
    req: &ApiRequest<'_>,
    project_id: u64,
    base_url: &str,
) -> Response<Body> {
    let (page, per_page) = match page_params(req) {
        Ok(p) => p,
        Err(e) => return param_error(e),
    };
    let status = req.param("status");
    if status.as_deref().is_some_and(|s| !STATUSES.contains(&s)) {
        return param_error("status does not have a valid value");
    }
    let source = req.param("source");
    if source.as_deref().is_some_and(|s| !SOURCES.contains(&s)) {
        return param_error("source does not have a valid value");
    }
    let scope = req.param("scope");
    if scope
        .as_deref()
        .is_some_and(|s| !["running", "pending", "finished", "branches", "tags"].contains(&s))
    {
        return param_error("scope does not have a valid value");
    }
    let order_by = req.param("order_by").unwrap_or_else(|| "id".to_owned());
    if !["id", "status", "ref", "updated_at", "user_id"].contains(&order_by.as_str()) {
        return param_error("order_by does not have a valid value");
    }
    let sort = req.param("sort").unwrap_or_else(|| "desc".to_owned());
    if sort != "asc" && sort != "desc" {
        return param_error("sort does not have a valid value");
    }
    let mut bounds = [None, None];
    for (slot, name) in bounds.iter_mut().zip(["updated_after", "updated_before"]) {
        if let Some(v) = req.param(name) {
            match parse_time(&v) {
                Some(t) => *slot = Some(t),
                None => return param_error(&format!("{name} is invalid")),
            }
        }
    }
    let [updated_after, updated_before] = bounds;
    let git_ref = req.param("ref");
    let sha = req.param("sha");
    let username = req.param("username");
    let yaml_errors = req.param("yaml_errors");

    let mut state = shared.lock();
    state.advance_all(Utc::now());
    let mut pipelines: Vec<&model::Pipeline> = state
        .pipelines
        .values()
        .filter(|p| p.project_id == project_id)
        .filter(|p| git_ref.as_ref().is_none_or(|r| &p.git_ref == r))
        .filter(|p| status.as_ref().is_none_or(|s| &p.status == s))
        .filter(|p| source.as_ref().is_none_or(|s| &p.source == s))
        .filter(|p| sha.as_ref().is_none_or(|s| &p.sha == s))
        .filter(|_| username.as_ref().is_none_or(|u| u == USERNAME))
        .filter(|_| yaml_errors.as_deref() != Some("true"))
        .filter(|p| match scope.as_deref() {
            Some("running") => p.status == "running",
            Some("pending") => p.status == "pending",
            Some("finished") => is_finished(&p.status),
            Some("tags") => false,
            _ => true,
        })
        .filter(|p| updated_after.is_none_or(|t| p.updated_at > t))
        .filter(|p| updated_before.is_none_or(|t| p.updated_at < t))
        .collect();
    pipelines.sort_by(|a, b| {
        let primary = match order_by.as_str() {
            "status" => a.status.cmp(&b.status),
            "ref" => a.git_ref.cmp(&b.git_ref),
            "updated_at" => a.updated_at.cmp(&b.updated_at),
            _ => std::cmp::Ordering::Equal,
        };
        primary.then(a.id.cmp(&b.id))
    });
    if sort == "desc" {
        pipelines.reverse();
    }
    let items = pipelines.iter().map(|p| p.to_basic_json()).collect();
    drop(state);
    paginate(req, base_url, items, page, per_page)
}

/// `GET /projects/:id/pipelines/:pipeline_id/jobs`.
fn list_jobs(
    shared: &Shared,
    req: &ApiRequest<'_>,
    pipeline_id: u64,
    base_url: &str,
) -> Response<Body> {
    let (page, per_page) = match page_params(req) {
        Ok(p) => p,
        Err(e) => return param_error(e),
    };
    let scopes: Vec<String> = req
        .query_pairs()
        .into_iter()
        .filter(|(k, _)| k == "scope[]" || k == "scope")
        .map(|(_, v)| v)
        .collect();
    if scopes.iter().any(|s| !STATUSES.contains(&s.as_str())) {
        return param_error("scope does not have a valid value");
    }
    let include_retried = match req
        .query_pairs()
        .into_iter()
        .find(|(k, _)| k == "include_retried")
        .map(|(_, v)| v)
    {
        None => false,
        Some(v) if v == "true" => true,
        Some(v) if v == "false" => false,
        Some(_) => return param_error("include_retried is invalid"),
    };
    let mut state = shared.lock();
    state.advance(pipeline_id, Utc::now());
    let Some(pipeline) = state.pipelines.get(&pipeline_id) else {
        return message(StatusCode::NOT_FOUND, "404 Not found");
    };
    let items = state
        .jobs
        .values()
        .filter(|j| j.pipeline_id == pipeline_id)
        .filter(|j| include_retried || !j.retried)
        .filter(|j| scopes.is_empty() || scopes.contains(&j.status))
        .map(|j| j.to_json(pipeline, base_url))
        .collect();
    drop(state);
    paginate(req, base_url, items, page, per_page)
}

/// `GET /projects/:id/jobs/:job_id`, `.../trace` and `POST .../retry`.
fn job_route(
    shared: &Shared,
    req: &ApiRequest<'_>,
    route: Route,
    project_id: u64,
    can_write: bool,
    base_url: &str,
) -> Response<Body> {
    let Some(id) = path_id(req.target.job_ref.as_deref()) else {
        return param_error("job_id is invalid");
    };
    if route == Route::RetryJob && !can_write {
        return message(StatusCode::FORBIDDEN, "403 Forbidden");
    }
    let mut state = shared.lock();
    let found = state.jobs.get(&id).and_then(|j| {
        let pipeline = state.pipelines.get(&j.pipeline_id)?;
        (pipeline.project_id == project_id).then(|| (j.clone(), pipeline.clone()))
    });
    let Some((job, pipeline)) = found else {
        return message(StatusCode::NOT_FOUND, "404 Job Not Found");
    };
    match route {
        Route::GetJob => json_response(StatusCode::OK, job.to_json(&pipeline, base_url)),
        Route::JobTrace => (
            StatusCode::OK,
            [(
                axum::http::header::CONTENT_TYPE,
                "text/plain; charset=utf-8",
            )],
            job.trace.clone(),
        )
            .into_response(),
        _ => {
            if !job.retryable() {
                return message(
                    StatusCode::FORBIDDEN,
                    "403 Forbidden - Job is not retryable",
                );
            }
            if let Some(old) = state.jobs.get_mut(&id) {
                old.retried = true;
            }
            let new_id = state.insert_job(
                job.pipeline_id,
                &job.name,
                &job.stage,
                "pending",
                Utc::now(),
            );
            let Some(new_job) = state.jobs.get(&new_id).cloned() else {
                return message(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "500 Internal Server Error",
                );
            };
            json_response(StatusCode::CREATED, new_job.to_json(&pipeline, base_url))
        }
    }
}

/// `POST /projects/:id/pipeline`.
async fn create_pipeline(
    shared: &Shared,
    req: &ApiRequest<'_>,
    project_id: u64,
    base_url: &str,
) -> Response<Body> {
    // `ref` comes from the JSON body, a form body, or the query string.
    let form_ref = || {
        url::form_urlencoded::parse(req.body)
            .into_owned()
            .find(|(k, _)| k == "ref")
            .map(|(_, v)| v)
    };
    let git_ref = req
        .body_json
        .and_then(|b| b.get("ref"))
        .and_then(|r| match r {
            Value::String(s) => Some(s.clone()),
            Value::Number(n) => Some(n.to_string()),
            _ => None,
        })
        .or_else(|| {
            if req.body_json.is_none() {
                form_ref()
            } else {
                None
            }
        })
        .or_else(|| req.param("ref"));
    let Some(git_ref) = git_ref else {
        return param_error("ref is missing");
    };
    let variables = match req.body_json.and_then(|b| b.get("variables")) {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(items)) => {
            let mut vars = Vec::with_capacity(items.len());
            for item in items {
                match parse_variable(item) {
                    Ok(v) => vars.push(v),
                    Err(e) => return param_error(e),
                }
            }
            vars
        }
        Some(_) => return param_error("variables is invalid"),
    };
    let (body, hold) = {
        let mut state = shared.lock();
        if !state.ref_exists(project_id, &git_ref) {
            return json_response(
                StatusCode::BAD_REQUEST,
                json!({ "message": { "base": ["Reference not found"] } }),
            );
        }
        let id = state.insert_pipeline(project_id, &git_ref, "api", variables, Utc::now(), true);
        let body = state
            .pipelines
            .get(&id)
            .map(|p| p.to_json(base_url))
            .unwrap_or(Value::Null);
        (body, state.hold.clone())
    };
    if let Some(hold) = hold {
        let mut released = hold.released.subscribe();
        hold.reached.send_modify(|n| *n += 1);
        let _ = released.wait_for(|r| *r).await;
    }
    json_response(StatusCode::CREATED, body)
}

/// One element of the create body's `variables`.
/// Errors are the text of GitLab's `{"error": ...}` body.
fn parse_variable(item: &Value) -> Result<Variable, &'static str> {
    let as_string = |v: Option<&Value>| match v {
        Some(Value::String(s)) => Some(s.clone()),
        Some(Value::Number(n)) => Some(n.to_string()),
        Some(Value::Bool(b)) => Some(b.to_string()),
        _ => None,
    };
    let Some(obj) = item.as_object() else {
        return Err("variables is invalid");
    };
    let key = as_string(obj.get("key")).filter(|k| !k.is_empty());
    let Some(key) = key else {
        return Err("variables is invalid");
    };
    let value = as_string(obj.get("value")).unwrap_or_default();
    let variable_type = match obj.get("variable_type") {
        None | Some(Value::Null) => "env_var".to_owned(),
        Some(Value::String(t)) if t == "env_var" || t == "file" => t.clone(),
        Some(_) => {
            return Err("variables[variable_type] does not have a valid value");
        }
    };
    Ok(Variable {
        key,
        value,
        variable_type,
    })
}

/// `GET /projects/:id/members/all/:user_id`: the token's user owns every project; others are
/// members where the test added them.
fn get_member(
    shared: &Shared,
    req: &ApiRequest<'_>,
    project_id: u64,
    base_url: &str,
) -> Response<Body> {
    let Some(user_id) = path_id(req.target.user_ref.as_deref()) else {
        return param_error("user_id is invalid");
    };
    let state = shared.lock();
    let membership = if user_id == USER_ID {
        Some((50, model_epoch()))
    } else {
        state.members.get(&(project_id, user_id)).copied()
    };
    match (state.user(user_id), membership) {
        (Some(user), Some((level, since))) => {
            json_response(StatusCode::OK, user.member_json(base_url, level, since))
        }
        _ => message(StatusCode::NOT_FOUND, "404 Not found"),
    }
}

/// When the token's user joined every project (the date `GET /user` gives as `created_at`).
fn model_epoch() -> DateTime<Utc> {
    DateTime::parse_from_rfc3339("2020-01-01T00:00:00Z")
        .map(|t| t.with_timezone(&Utc))
        .unwrap_or_default()
}

/// A note's `body` from a JSON body, a form body, or the query string (as Grape reads params).
fn body_param(req: &ApiRequest<'_>) -> Option<String> {
    if let Some(json) = req.body_json {
        return json.get("body").and_then(|b| match b {
            Value::String(s) => Some(s.clone()),
            Value::Number(n) => Some(n.to_string()),
            Value::Bool(b) => Some(b.to_string()),
            _ => None,
        });
    }
    url::form_urlencoded::parse(req.body)
        .into_owned()
        .find(|(k, _)| k == "body")
        .map(|(_, v)| v)
        .or_else(|| req.param("body"))
}

/// Rails' validation of a note's text, as GitLab answers it.
fn note_validation(body: &str) -> Option<Response<Body>> {
    let problem = if body.trim().is_empty() {
        "can't be blank".to_owned()
    } else if body.chars().count() > MAX_NOTE_CHARS {
        format!("is too long (maximum is {MAX_NOTE_CHARS} characters)")
    } else {
        return None;
    };
    Some(json_response(
        StatusCode::BAD_REQUEST,
        json!({ "message": { "note": [problem] } }),
    ))
}

/// Routes under `/projects/:id/merge_requests/:merge_request_iid`.
fn merge_request_route(
    shared: &Shared,
    req: &ApiRequest<'_>,
    route: Route,
    project_id: u64,
    can_write: bool,
    base_url: &str,
) -> Response<Body> {
    let Some(iid) = path_id(req.target.mr_ref.as_deref()) else {
        return param_error("merge_request_iid is invalid");
    };
    let note_id = match &req.target.note_ref {
        None => None,
        Some(n) => match n.parse::<u64>() {
            Ok(id) => Some(id),
            Err(_) => return param_error("note_id is invalid"),
        },
    };
    let mut state = shared.lock();
    let Some(mr) = state.mr(project_id, iid).cloned() else {
        return message(StatusCode::NOT_FOUND, "404 Not found");
    };
    // The note of `.../notes/:note_id` routes, checked to belong to the merge request.
    let note = match note_id {
        None => None,
        Some(id) => match state.notes.get(&id) {
            Some(n) if n.project_id == project_id && n.mr_iid == iid => Some(n.clone()),
            _ => return message(StatusCode::NOT_FOUND, "404 Not found"),
        },
    };
    let render = |state: &super::State, n: &super::NoteRecord| {
        let author = state
            .user(n.author_id)
            .cloned()
            .unwrap_or_else(super::User::token_owner);
        n.to_json(base_url, &author)
    };
    match (route, note) {
        (Route::GetMergeRequest, _) => {
            let count = state
                .notes
                .values()
                .filter(|n| n.project_id == project_id && n.mr_iid == iid)
                .count();
            json_response(StatusCode::OK, mr.to_json(base_url, count))
        }
        (Route::GetNote, Some(n)) => json_response(StatusCode::OK, render(&state, &n)),
        (Route::ListNotes, _) => {
            let (page, per_page) = match page_params(req) {
                Ok(p) => p,
                Err(e) => return param_error(e),
            };
            let order_by = req
                .param("order_by")
                .unwrap_or_else(|| "created_at".to_owned());
            if order_by != "created_at" && order_by != "updated_at" {
                return param_error("order_by does not have a valid value");
            }
            let sort = req.param("sort").unwrap_or_else(|| "desc".to_owned());
            if sort != "asc" && sort != "desc" {
                return param_error("sort does not have a valid value");
            }
            let mut notes: Vec<&super::NoteRecord> = state
                .notes
                .values()
                .filter(|n| n.project_id == project_id && n.mr_iid == iid)
                .collect();
            notes.sort_by(|a, b| {
                let primary = if order_by == "updated_at" {
                    a.updated_at.cmp(&b.updated_at)
                } else {
                    a.created_at.cmp(&b.created_at)
                };
                primary.then(a.id.cmp(&b.id))
            });
            if sort == "desc" {
                notes.reverse();
            }
            let items = notes.iter().map(|n| render(&state, n)).collect();
            drop(state);
            paginate(req, base_url, items, page, per_page)
        }
        (Route::CreateNote, _) => {
            if !can_write {
                return message(StatusCode::FORBIDDEN, "403 Forbidden");
            }
            let Some(body) = body_param(req) else {
                return param_error("body is missing");
            };
            if let Some(invalid) = note_validation(&body) {
                return invalid;
            }
            let Some(id) = state.insert_note(project_id, iid, USER_ID, &body, Utc::now()) else {
                return message(StatusCode::NOT_FOUND, "404 Not found");
            };
            match state.notes.get(&id) {
                Some(n) => json_response(StatusCode::CREATED, render(&state, n)),
                None => message(StatusCode::NOT_FOUND, "404 Not found"),
            }
        }
        (Route::EditNote, Some(n)) => {
            if !can_write || n.author_id != USER_ID {
                return message(StatusCode::FORBIDDEN, "403 Forbidden");
            }
            let Some(body) = body_param(req) else {
                return param_error("body is missing");
            };
            if let Some(invalid) = note_validation(&body) {
                return invalid;
            }
            state.edit_note(n.id, &body, Utc::now());
            match state.notes.get(&n.id) {
                Some(n) => json_response(StatusCode::OK, render(&state, n)),
                None => message(StatusCode::NOT_FOUND, "404 Not found"),
            }
        }
        _ => json_response(StatusCode::NOT_FOUND, json!({ "error": "404 Not Found" })),
    }
}
