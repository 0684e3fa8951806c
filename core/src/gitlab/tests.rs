//! Tests of the GitLab client against a tiny scripted HTTP/1.1 server on a local port.
//!
//! The server answers each request with the next canned response (one connection per request,
//! `Connection: close`) and records what it received and when, so timing assertions are made
//! on the server's clock, never by sleeping in the test.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use url::Url;

use super::*;
use crate::metrics::Metrics;

const TOKEN: &str = "glpat-s3cret-test-token";

/// One request as the server saw it.
#[derive(Debug, Clone)]
struct Seen {
    method: String,
    /// Path and query, as sent.
    target: String,
    /// Lower-case names.
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    at: Instant,
}

impl Seen {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// What the server does with a request.
#[derive(Clone)]
enum Canned {
    Respond {
        status: u16,
        headers: Vec<(&'static str, String)>,
        body: String,
    },
    /// Read the request, then say nothing for this long (the client times out).
    Hang(Duration),
}

fn respond(status: u16, body: &str) -> Canned {
    Canned::Respond {
        status,
        headers: Vec::new(),
        body: body.to_string(),
    }
}

fn respond_with(status: u16, headers: &[(&'static str, &str)], body: &str) -> Canned {
    Canned::Respond {
        status,
        headers: headers.iter().map(|(n, v)| (*n, v.to_string())).collect(),
        body: body.to_string(),
    }
}

type Handler = Arc<dyn Fn(usize, &Seen) -> Canned + Send + Sync>;

struct Server {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Server {
    /// Answers the n-th request with `script[n]`, and every later one with the last entry.
    async fn script(script: Vec<Canned>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        Self::serve(listener, script_handler(script))
    }

    fn serve(listener: TcpListener, handler: Handler) -> Self {
        let addr = listener.local_addr().expect("local addr");
        let seen = Arc::new(Mutex::new(Vec::new()));
        let task = {
            let seen = seen.clone();
            tokio::spawn(async move {
                while let Ok((stream, _)) = listener.accept().await {
                    let seen = seen.clone();
                    let handler = handler.clone();
                    tokio::spawn(async move {
                        let _ = handle(stream, seen, handler).await;
                    });
                }
            })
        };
        Self { addr, seen, task }
    }

    fn url(&self) -> Url {
        Url::parse(&format!("http://{}", self.addr)).expect("url")
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().expect("lock").clone()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn script_handler(script: Vec<Canned>) -> Handler {
    Arc::new(move |n, _| {
        script
            .get(n)
            .or(script.last())
            .cloned()
            .unwrap_or_else(|| respond(500, ""))
    })
}

async fn handle(
    mut stream: TcpStream,
    seen: Arc<Mutex<Vec<Seen>>>,
    handler: Handler,
) -> std::io::Result<()> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(pos) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break pos;
        }
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Ok(());
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
    let mut lines = head.split("\r\n");
    let request_line = lines.next().unwrap_or_default();
    let mut parts = request_line.split(' ');
    let method = parts.next().unwrap_or_default().to_string();
    let target = parts.next().unwrap_or_default().to_string();
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let length: usize = headers
        .iter()
        .find(|(n, _)| n == "content-length")
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0);
    let mut body = buf[head_end + 4..].to_vec();
    while body.len() < length {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            break;
        }
        body.extend_from_slice(&chunk[..n]);
    }
    let request = Seen {
        method,
        target,
        headers,
        body,
        at: Instant::now(),
    };
    let canned = {
        let mut seen = seen.lock().expect("lock");
        seen.push(request.clone());
        handler(seen.len() - 1, &request)
    };
    match canned {
        Canned::Hang(how_long) => {
            tokio::time::sleep(how_long).await;
        }
        Canned::Respond {
            status,
            headers,
            body,
        } => {
            let mut response = format!(
                "HTTP/1.1 {status} {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n",
                reqwest::StatusCode::from_u16(status)
                    .ok()
                    .and_then(|s| s.canonical_reason())
                    .unwrap_or("Whatever"),
                body.len()
            );
            for (name, value) in headers {
                response.push_str(&format!("{name}: {value}\r\n"));
            }
            response.push_str("\r\n");
            response.push_str(&body);
            stream.write_all(response.as_bytes()).await?;
            stream.shutdown().await?;
        }
    }
    Ok(())
}

fn settings(base_url: Url) -> GitLabSettings {
    GitLabSettings {
        base_url,
        token: Some(TOKEN.to_string()),
        timeout: Duration::from_secs(5),
        max_retries: 3,
        retry_base: Duration::from_millis(10),
        retry_max: Duration::from_millis(50),
        requests_per_minute: 60_000,
    }
}

fn client(settings: GitLabSettings) -> (GitLab, Arc<Metrics>) {
    let metrics = Arc::new(Metrics::new().expect("metrics"));
    let gitlab = GitLab::new(settings, metrics.clone()).expect("client");
    (gitlab, metrics)
}

fn requests_count(metrics: &Metrics, endpoint: &str, status: &str) -> u64 {
    metrics
        .gitlab_requests
        .with_label_values(&[endpoint, status])
        .get()
}

fn retries_count(metrics: &Metrics, reason: &str) -> u64 {
    metrics.gitlab_retries.with_label_values(&[reason]).get()
}

/// A pipeline as GitLab 17 returns it, unknown fields included.
const PIPELINE_JSON: &str = r#"{
  "id": 145400, "iid": 421, "project_id": 855, "name": null,
  "sha": "7134adce4522c399cdab16e128b0a1af15b93f14",
  "ref": "main", "status": "success", "source": "api",
  "created_at": "2019-09-03T14:09:47.178-04:00",
  "updated_at": "2019-09-03T14:15:47.018-04:00",
  "started_at": "2019-09-03T14:09:51.465-04:00",
  "finished_at": "2019-09-03T14:15:47.013-04:00",
  "committed_at": null, "duration": 355, "queued_duration": 4, "coverage": null,
  "before_sha": "0000000000000000000000000000000000000000", "tag": false, "yaml_errors": null,
  "user": {"id": 35, "name": "buildbot", "username": "buildbot", "state": "active"},
  "detailed_status": {"icon": "status_success", "text": "passed", "group": "success"},
  "web_url": "https://gitlab.example.com/group/sub/project/-/pipelines/145400"
}"#;

const CREATED_JSON: &str = r#"{
  "id": 61, "iid": 7, "project_id": 1, "sha": "384c444e840a515b23f21915ee5766b87068a70d",
  "ref": "main", "status": "created", "source": "api",
  "created_at": "2024-02-01T12:00:00.000Z", "updated_at": "2024-02-01T12:00:00.000Z",
  "started_at": null, "finished_at": null, "duration": null,
  "web_url": "https://gitlab.example.com/group/project/-/pipelines/61"
}"#;

#[tokio::test]
async fn sends_token_and_user_agent_and_decodes_user() {
    let server = Server::script(vec![respond(
        200,
        r#"{"id": 7, "username": "shepherd", "name": "Shepherd", "state": "active", "bot": true}"#,
    )])
    .await;
    let (gitlab, _) = client(settings(server.url()));

    let user = gitlab.current_user().await.expect("user");

    assert_eq!(
        user,
        User {
            id: 7,
            username: "shepherd".into(),
            name: "Shepherd".into()
        }
    );
    let seen = server.seen();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].method, "GET");
    assert_eq!(seen[0].target, "/api/v4/user");
    assert_eq!(seen[0].header("private-token"), Some(TOKEN));
    let agent = seen[0].header("user-agent").unwrap_or_default();
    assert!(agent.starts_with("shepherd/"), "{agent}");
}

#[tokio::test]
async fn without_token_no_private_token_header() {
    let server = Server::script(vec![respond(
        200,
        r#"{"id": 1, "username": "u", "name": "U"}"#,
    )])
    .await;
    let mut s = settings(server.url());
    s.token = None;
    let (gitlab, _) = client(s);
    gitlab.current_user().await.expect("user");
    assert_eq!(server.seen()[0].header("private-token"), None);
}

#[tokio::test]
async fn encodes_project_path_as_one_segment_and_decodes_pipeline() {
    let server = Server::script(vec![respond(200, PIPELINE_JSON)]).await;
    let (gitlab, _) = client(settings(server.url()));

    let pipeline = gitlab
        .pipeline("group/sub/project", 145400)
        .await
        .expect("pipeline");

    assert_eq!(
        server.seen()[0].target,
        "/api/v4/projects/group%2Fsub%2Fproject/pipelines/145400"
    );
    assert_eq!(pipeline.id, 145400);
    assert_eq!(pipeline.iid, Some(421));
    assert_eq!(pipeline.project_id, 855);
    assert_eq!(pipeline.git_ref, "main");
    assert_eq!(pipeline.status, PipelineStatus::Success);
    assert!(pipeline.status.is_finished());
    assert_eq!(pipeline.source.as_deref(), Some("api"));
    assert_eq!(pipeline.duration, Some(355.0));
    assert_eq!(
        pipeline.created_at.to_rfc3339(),
        "2019-09-03T18:09:47.178+00:00"
    );
    assert!(pipeline.finished_at.is_some());
}

#[tokio::test]
async fn numeric_project_and_base_url_with_path_prefix() {
    let server = Server::script(vec![respond(200, "[]")]).await;
    let base = server.url().join("gitlab/").expect("join");
    let (gitlab, _) = client(settings(base));
    let vars = gitlab.pipeline_variables("42", 9).await.expect("variables");
    assert!(vars.is_empty());
    assert_eq!(
        server.seen()[0].target,
        "/gitlab/api/v4/projects/42/pipelines/9/variables"
    );
}

#[test]
fn api_root_appends_api_v4_once() {
    let root = |s: &str| api_root(&Url::parse(s).expect("url")).to_string();
    assert_eq!(root("https://gitlab.com"), "https://gitlab.com/api/v4/");
    assert_eq!(root("https://gitlab.com/"), "https://gitlab.com/api/v4/");
    assert_eq!(
        root("https://host/gitlab?x=1"),
        "https://host/gitlab/api/v4/"
    );
    assert_eq!(root("https://host/api/v4"), "https://host/api/v4/");
    assert_eq!(root("https://host/api/v4/"), "https://host/api/v4/");
}

#[tokio::test]
async fn decodes_variables_with_and_without_type() {
    let server = Server::script(vec![respond(
        200,
        r#"[{"key": "RUN_NIGHTLY_BUILD", "variable_type": "env_var", "value": "true"},
            {"key": "CONFIG", "variable_type": "file", "value": "a: 1"},
            {"key": "OLD", "value": "x"}]"#,
    )])
    .await;
    let (gitlab, _) = client(settings(server.url()));
    let vars = gitlab
        .pipeline_variables("group/project", 5)
        .await
        .expect("variables");
    assert_eq!(
        vars,
        vec![
            Variable::env("RUN_NIGHTLY_BUILD", "true"),
            Variable {
                key: "CONFIG".into(),
                value: "a: 1".into(),
                variable_type: VariableType::File
            },
            Variable::env("OLD", "x"),
        ]
    );
}

#[tokio::test]
async fn lists_pipelines_with_filters_newest_first() {
    let server = Server::script(vec![respond(
        200,
        r#"[{"id": 48, "iid": 12, "project_id": 1, "status": "running", "source": "api",
             "ref": "main", "sha": "eb94b618", "name": null,
             "web_url": "https://gitlab.example.com/g/p/-/pipelines/48",
             "created_at": "2016-08-11T11:28:34.085Z", "updated_at": "2016-08-11T11:32:35.169Z"},
            {"id": 47, "project_id": 1, "status": "waiting_for_callback", "ref": "main",
             "sha": "a91957a8", "web_url": "https://gitlab.example.com/g/p/-/pipelines/47"}]"#,
    )])
    .await;
    let (gitlab, _) = client(settings(server.url()));
    let query = PipelineQuery {
        git_ref: Some("main".into()),
        source: Some("api".into()),
        updated_after: chrono::DateTime::parse_from_rfc3339("2024-01-02T03:04:05Z")
            .ok()
            .map(|d| d.with_timezone(&chrono::Utc)),
        per_page: Some(50),
        ..PipelineQuery::default()
    };

    let list = gitlab.pipelines("g/p", &query).await.expect("pipelines");

    assert_eq!(list.len(), 2);
    assert_eq!(list[0].id, 48);
    assert_eq!(list[0].status, PipelineStatus::Running);
    assert_eq!(list[1].status, PipelineStatus::WaitingForCallback);
    assert_eq!(list[1].created_at, None);
    assert_eq!(
        server.seen()[0].target,
        "/api/v4/projects/g%2Fp/pipelines?ref=main&source=api\
         &updated_after=2024-01-02T03%3A04%3A05Z&order_by=id&sort=desc&per_page=50"
    );
}

#[tokio::test]
async fn creates_pipeline_with_variables() {
    let server = Server::script(vec![respond(201, CREATED_JSON)]).await;
    let (gitlab, metrics) = client(settings(server.url()));
    let vars = vec![
        Variable::env("SHEPHERD_REQUEST_ID", "req-1"),
        Variable {
            key: "CFG".into(),
            value: "x".into(),
            variable_type: VariableType::File,
        },
    ];

    let pipeline = gitlab
        .create_pipeline("group/project", "main", &vars)
        .await
        .expect("created");

    assert_eq!(pipeline.id, 61);
    assert_eq!(pipeline.status, PipelineStatus::Created);
    assert!(!pipeline.status.is_finished());
    let seen = server.seen();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].method, "POST");
    assert_eq!(seen[0].target, "/api/v4/projects/group%2Fproject/pipeline");
    assert_eq!(seen[0].header("content-type"), Some("application/json"));
    let body: serde_json::Value = serde_json::from_slice(&seen[0].body).expect("json body");
    assert_eq!(
        body,
        serde_json::json!({
            "ref": "main",
            "variables": [
                {"key": "SHEPHERD_REQUEST_ID", "value": "req-1", "variable_type": "env_var"},
                {"key": "CFG", "value": "x", "variable_type": "file"}
            ]
        })
    );
    assert_eq!(
        requests_count(&metrics, "POST /projects/:id/pipeline", "201"),
        1
    );
}

#[tokio::test]
async fn pages_through_jobs_with_scope() {
    let job = |id: u64, status: &str| {
        format!(
            r#"{{"id": {id}, "name": "build {id}", "stage": "build", "status": "{status}",
                "web_url": "https://gitlab.example.com/g/p/-/jobs/{id}", "allow_failure": false,
                "failure_reason": "runner_system_failure", "runner": null, "artifacts": []}}"#
        )
    };
    let page1 = format!("[{},{}]", job(1, "failed"), job(2, "failed"));
    let page2 = format!("[{}]", job(3, "failed"));
    let server = Server::script(vec![
        respond_with(200, &[("X-Next-Page", "2"), ("X-Page", "1")], &page1),
        respond_with(200, &[("X-Next-Page", ""), ("X-Page", "2")], &page2),
    ])
    .await;
    let (gitlab, _) = client(settings(server.url()));

    let jobs = gitlab
        .pipeline_jobs("g/p", 77, &[JobStatus::Failed])
        .await
        .expect("jobs");

    assert_eq!(jobs.iter().map(|j| j.id).collect::<Vec<_>>(), vec![1, 2, 3]);
    assert_eq!(jobs[0].status, JobStatus::Failed);
    assert_eq!(
        jobs[0].failure_reason.as_deref(),
        Some("runner_system_failure")
    );
    let seen = server.seen();
    assert_eq!(seen.len(), 2);
    assert_eq!(
        seen[0].target,
        "/api/v4/projects/g%2Fp/pipelines/77/jobs?scope%5B%5D=failed&per_page=100&page=1"
    );
    assert_eq!(
        seen[1].target,
        "/api/v4/projects/g%2Fp/pipelines/77/jobs?scope%5B%5D=failed&per_page=100&page=2"
    );
}

#[tokio::test]
async fn not_found_is_typed_and_readable() {
    let server = Server::script(vec![respond(404, r#"{"message":"404 Not found"}"#)]).await;
    let (gitlab, _) = client(settings(server.url()));
    let err = gitlab
        .pipeline("group/project", 123)
        .await
        .expect_err("404");
    assert_eq!(
        err,
        GitLabError::NotFound {
            what: "pipeline 123 of group/project".into()
        }
    );
    assert!(!err.is_retryable());
    assert!(
        err.user_message()
            .starts_with("GitLab says pipeline 123 of group/project was not found"),
        "{}",
        err.user_message()
    );
    assert_eq!(server.seen().len(), 1, "a 404 is not retried");
}

#[tokio::test]
async fn unauthorized_points_at_the_token_setting() {
    let server = Server::script(vec![respond(401, r#"{"message":"401 Unauthorized"}"#)]).await;
    let (gitlab, _) = client(settings(server.url()));
    let err = gitlab.current_user().await.expect_err("401");
    assert_eq!(err, GitLabError::Unauthorized);
    assert!(err.user_message().contains("gitlab.token_env"));
    assert!(!err.user_message().contains(TOKEN));
    assert!(!format!("{err} {err:?}").contains(TOKEN));
    assert_eq!(server.seen().len(), 1);
}

#[tokio::test]
async fn bad_request_messages_are_rendered_readably() {
    let server = Server::script(vec![
        respond(400, r#"{"message":{"base":["Reference not found"]}}"#),
        respond(
            400,
            r#"{"message":{"variables":["is invalid"],"ref":["is missing","is blank"]}}"#,
        ),
        respond(400, r#"{"error":"ref is missing"}"#),
        respond(400, r#"{"message":"400 Bad request - \"ref\" not given"}"#),
        respond(400, ""),
    ])
    .await;
    let (gitlab, _) = client(settings(server.url()));
    let mut messages = Vec::new();
    for _ in 0..5 {
        match gitlab.create_pipeline("g/p", "nope", &[]).await {
            Err(GitLabError::BadRequest { message }) => messages.push(message),
            other => panic!("expected BadRequest, got {other:?}"),
        }
    }
    assert_eq!(
        messages,
        vec![
            "Reference not found",
            "ref is missing, is blank; variables is invalid",
            "ref is missing",
            "400 Bad request - \"ref\" not given",
            "Bad Request",
        ]
    );
    let err = GitLabError::BadRequest {
        message: messages[0].clone(),
    };
    assert_eq!(
        err.user_message(),
        "GitLab rejected the request: Reference not found."
    );
    // Without variables the body has only the ref.
    let body: serde_json::Value =
        serde_json::from_slice(&server.seen()[0].body).expect("json body");
    assert_eq!(body, serde_json::json!({"ref": "nope"}));
}

#[tokio::test]
async fn other_client_errors_are_typed() {
    let server = Server::script(vec![
        respond(403, r#"{"message":"403 Forbidden"}"#),
        respond(409, r#"{"message":"Conflict"}"#),
        respond(422, r#"{"message":"Cannot cancel"}"#),
        respond(418, "teapot"),
        respond_with(
            301,
            &[("Location", "https://gitlab.example.com/api/v4/user")],
            "",
        ),
    ])
    .await;
    let (gitlab, _) = client(settings(server.url()));
    let mut errors = Vec::new();
    for _ in 0..5 {
        errors.push(gitlab.cancel_pipeline("g/p", 1).await.expect_err("4xx"));
    }
    assert_eq!(
        errors[0],
        GitLabError::Forbidden {
            message: "403 Forbidden".into()
        }
    );
    assert_eq!(
        errors[1],
        GitLabError::Conflict {
            message: "Conflict".into()
        }
    );
    assert_eq!(
        errors[2],
        GitLabError::Unprocessable {
            message: "Cannot cancel".into()
        }
    );
    assert_eq!(
        errors[3],
        GitLabError::Client {
            status: 418,
            message: "teapot".into()
        }
    );
    assert!(
        matches!(&errors[4], GitLabError::Client { status: 301, message } if message.contains("gitlab.url")),
        "{:?}",
        errors[4]
    );
    assert_eq!(server.seen().len(), 5, "no 4xx is retried");
}

#[tokio::test]
async fn get_500_then_200_is_retried_and_counted() {
    let server = Server::script(vec![
        respond(500, r#"{"message":"500 Internal Server Error"}"#),
        respond(200, PIPELINE_JSON),
    ])
    .await;
    let (gitlab, metrics) = client(settings(server.url()));

    let pipeline = gitlab.pipeline("g/p", 145400).await.expect("after retry");

    assert_eq!(pipeline.id, 145400);
    assert_eq!(server.seen().len(), 2);
    let endpoint = "GET /projects/:id/pipelines/:pipeline_id";
    assert_eq!(requests_count(&metrics, endpoint, "500"), 1);
    assert_eq!(requests_count(&metrics, endpoint, "200"), 1);
    assert_eq!(retries_count(&metrics, "5xx"), 1);
    assert_eq!(
        metrics
            .gitlab_request_duration
            .with_label_values(&[endpoint])
            .get_sample_count(),
        2
    );
    assert!(metrics.render().contains("shepherd_gitlab_requests_total"));
}

#[tokio::test]
async fn cancel_is_retried_after_5xx() {
    let cancelled = PIPELINE_JSON.replace(r#""status": "success""#, r#""status": "canceled""#);
    let server = Server::script(vec![respond(502, ""), respond(200, &cancelled)]).await;
    let (gitlab, _) = client(settings(server.url()));
    let pipeline = gitlab.cancel_pipeline("g/p", 145400).await.expect("cancel");
    assert_eq!(pipeline.status, PipelineStatus::Canceled);
    let seen = server.seen();
    assert_eq!(seen.len(), 2);
    assert!(seen.iter().all(
        |s| s.method == "POST" && s.target == "/api/v4/projects/g%2Fp/pipelines/145400/cancel"
    ));
}

#[tokio::test]
async fn too_many_requests_honours_retry_after_seconds() {
    let server = Server::script(vec![
        respond_with(429, &[("Retry-After", "1")], r#"{"message":"Retry later"}"#),
        respond(200, r#"{"id": 1, "username": "u", "name": "U"}"#),
    ])
    .await;
    let mut s = settings(server.url());
    s.retry_max = Duration::from_secs(5);
    let (gitlab, metrics) = client(s);

    gitlab.current_user().await.expect("after 429");

    let seen = server.seen();
    assert_eq!(seen.len(), 2);
    let gap = seen[1].at.duration_since(seen[0].at);
    assert!(
        gap >= Duration::from_millis(950),
        "second attempt after {gap:?}"
    );
    assert!(gap < Duration::from_secs(3), "second attempt after {gap:?}");
    assert_eq!(retries_count(&metrics, "429"), 1);
    assert_eq!(requests_count(&metrics, "GET /user", "429"), 1);
}

#[tokio::test]
async fn retry_after_longer_than_retry_max_waits_retry_max() {
    let server = Server::script(vec![
        respond_with(429, &[("Retry-After", "3600")], ""),
        respond(200, r#"{"id": 1, "username": "u", "name": "U"}"#),
    ])
    .await;
    let mut s = settings(server.url());
    s.retry_max = Duration::from_millis(300);
    let (gitlab, _) = client(s);

    gitlab.current_user().await.expect("after 429");

    let seen = server.seen();
    assert_eq!(seen.len(), 2);
    let gap = seen[1].at.duration_since(seen[0].at);
    assert!(
        gap >= Duration::from_millis(280),
        "second attempt after {gap:?}"
    );
    assert!(gap < Duration::from_secs(3), "second attempt after {gap:?}");
}

#[test]
fn parses_retry_after_forms() {
    let now = chrono::DateTime::parse_from_rfc3339("2015-10-21T07:28:00Z")
        .expect("date")
        .with_timezone(&chrono::Utc);
    assert_eq!(
        parse_retry_after("120", now),
        Some(Duration::from_secs(120))
    );
    assert_eq!(parse_retry_after(" 0 ", now), Some(Duration::from_secs(0)));
    assert_eq!(
        parse_retry_after("Wed, 21 Oct 2015 07:28:30 GMT", now),
        Some(Duration::from_secs(30))
    );
    assert_eq!(
        parse_retry_after("Wed, 21 Oct 2015 07:00:00 GMT", now),
        Some(Duration::ZERO)
    );
    assert_eq!(parse_retry_after("soon", now), None);
}

#[tokio::test]
async fn create_after_502_is_ambiguous_and_not_retried() {
    let server = Server::script(vec![
        respond(502, "Bad Gateway"),
        respond(201, CREATED_JSON),
    ])
    .await;
    let (gitlab, metrics) = client(settings(server.url()));

    let err = gitlab
        .create_pipeline("g/p", "main", &[Variable::env("SHEPHERD_REQUEST_ID", "r")])
        .await
        .expect_err("ambiguous");

    assert!(
        matches!(&err, GitLabError::Ambiguous { endpoint: "POST /projects/:id/pipeline", detail } if detail.contains("502")),
        "{err:?}"
    );
    assert!(err.is_retryable());
    assert_eq!(server.seen().len(), 1, "exactly one POST");
    assert_eq!(retries_count(&metrics, "5xx"), 0);
}

#[tokio::test]
async fn create_after_timeout_is_ambiguous_and_not_retried() {
    let server = Server::script(vec![
        Canned::Hang(Duration::from_secs(5)),
        respond(201, CREATED_JSON),
    ])
    .await;
    let mut s = settings(server.url());
    s.timeout = Duration::from_millis(300);
    let (gitlab, metrics) = client(s);

    let err = gitlab
        .create_pipeline("g/p", "main", &[])
        .await
        .expect_err("ambiguous");

    assert!(matches!(err, GitLabError::Ambiguous { .. }), "{err:?}");
    assert_eq!(server.seen().len(), 1, "exactly one POST");
    assert_eq!(
        requests_count(&metrics, "POST /projects/:id/pipeline", "error"),
        1
    );
}

#[tokio::test]
async fn create_with_unreadable_success_is_ambiguous() {
    let server = Server::script(vec![respond(201, r#"{"id": "not a pipeline"}"#)]).await;
    let (gitlab, _) = client(settings(server.url()));
    let err = gitlab
        .create_pipeline("g/p", "main", &[])
        .await
        .expect_err("ambiguous");
    assert!(matches!(err, GitLabError::Ambiguous { .. }), "{err:?}");
}

#[tokio::test]
async fn get_with_unreadable_success_is_decode_error() {
    let server = Server::script(vec![respond(200, r#"{"id": 1}"#)]).await;
    let (gitlab, _) = client(settings(server.url()));
    let err = gitlab.pipeline("g/p", 1).await.expect_err("decode");
    assert!(
        matches!(
            &err,
            GitLabError::Decode {
                endpoint: "GET /projects/:id/pipelines/:pipeline_id",
                ..
            }
        ),
        "{err:?}"
    );
    assert!(!err.is_retryable());
    assert_eq!(server.seen().len(), 1);
}

#[tokio::test]
async fn create_after_429_is_retried() {
    let server = Server::script(vec![
        respond_with(429, &[("Retry-After", "0")], ""),
        respond(201, CREATED_JSON),
    ])
    .await;
    let (gitlab, metrics) = client(settings(server.url()));
    let pipeline = gitlab
        .create_pipeline("g/p", "main", &[])
        .await
        .expect("created after 429");
    assert_eq!(pipeline.id, 61);
    assert_eq!(server.seen().len(), 2);
    assert_eq!(retries_count(&metrics, "429"), 1);
}

#[tokio::test]
async fn create_after_connection_refused_is_retried() {
    // Reserve a port, then free it: connecting to it is refused until the server starts.
    let addr = {
        let probe = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        probe.local_addr().expect("addr")
    };
    let mut s = settings(Url::parse(&format!("http://{addr}")).expect("url"));
    s.max_retries = 30;
    s.retry_base = Duration::from_millis(20);
    s.retry_max = Duration::from_millis(40);
    let (gitlab, metrics) = client(s);
    let starter = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let listener = TcpListener::bind(addr).await.expect("rebind");
        Server::serve(listener, script_handler(vec![respond(201, CREATED_JSON)]))
    });

    let result = gitlab.create_pipeline("g/p", "main", &[]).await;
    let server = starter.await.expect("server");

    let pipeline = result.expect("created once the server is up");
    assert_eq!(pipeline.id, 61);
    assert_eq!(
        server.seen().len(),
        1,
        "exactly one POST reached the server"
    );
    assert!(retries_count(&metrics, "connect") >= 1);
    assert!(requests_count(&metrics, "POST /projects/:id/pipeline", "error") >= 1);
}

#[tokio::test]
async fn connection_refused_until_retries_run_out_is_unavailable() {
    let addr = {
        let probe = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        probe.local_addr().expect("addr")
    };
    let mut s = settings(Url::parse(&format!("http://{addr}")).expect("url"));
    s.max_retries = 2;
    let (gitlab, metrics) = client(s);
    let err = gitlab
        .create_pipeline("g/p", "main", &[])
        .await
        .expect_err("refused");
    assert!(
        matches!(err, GitLabError::Unavailable { attempts: 3, .. }),
        "{err:?}"
    );
    assert_eq!(retries_count(&metrics, "connect"), 2);
}

#[tokio::test]
async fn exhausted_retries_are_unavailable_with_attempt_count() {
    let server = Server::script(vec![respond(503, r#"{"message":"maintenance"}"#)]).await;
    let mut s = settings(server.url());
    s.max_retries = 2;
    let (gitlab, metrics) = client(s);

    let err = gitlab
        .pipelines("g/p", &PipelineQuery::default())
        .await
        .expect_err("unavailable");

    assert_eq!(
        err,
        GitLabError::Unavailable {
            endpoint: "GET /projects/:id/pipelines",
            attempts: 3,
            last: "HTTP 503: maintenance".into()
        }
    );
    assert!(err.is_retryable());
    assert_eq!(
        err.user_message(),
        "GitLab is unavailable (GET /projects/:id/pipelines failed 3 times, last: HTTP 503: maintenance)."
    );
    assert_eq!(server.seen().len(), 3);
    assert_eq!(retries_count(&metrics, "5xx"), 2);
    assert_eq!(
        requests_count(&metrics, "GET /projects/:id/pipelines", "503"),
        3
    );
}

#[tokio::test]
async fn rate_limiter_is_awaited_before_each_attempt() {
    let server = Server::script(vec![respond(
        200,
        r#"{"id": 1, "username": "u", "name": "U"}"#,
    )])
    .await;
    let mut s = settings(server.url());
    s.requests_per_minute = 1;
    let (gitlab, _) = client(s);

    gitlab.current_user().await.expect("first");
    let second = tokio::time::timeout(Duration::from_millis(300), gitlab.current_user()).await;

    assert!(second.is_err(), "the second call must wait for the budget");
    assert_eq!(server.seen().len(), 1);
}

#[test]
fn rejects_bad_settings() {
    let metrics = Arc::new(Metrics::new().expect("metrics"));
    let base = Url::parse("https://gitlab.example.com").expect("url");
    let mut s = settings(base.clone());
    s.requests_per_minute = 0;
    assert!(matches!(
        GitLab::new(s, metrics.clone()),
        Err(GitLabError::Config(_))
    ));
    let mut s = settings(base);
    s.token = Some("bad\ntoken".into());
    match GitLab::new(s, metrics.clone()) {
        Err(GitLabError::Config(msg)) => assert!(!msg.contains("bad\ntoken")),
        other => panic!("expected Config, got {other:?}"),
    }
    let s = settings(Url::parse("ftp://gitlab.example.com").expect("url"));
    assert!(matches!(
        GitLab::new(s, metrics),
        Err(GitLabError::Config(_))
    ));
}

#[test]
fn debug_output_hides_the_token() {
    let s = settings(Url::parse("https://gitlab.example.com").expect("url"));
    let shown = format!("{s:?}");
    assert!(!shown.contains(TOKEN), "{shown}");
    assert!(shown.contains("<redacted>"));
    let (gitlab, _) = client(s);
    assert!(!format!("{gitlab:?}").contains(TOKEN));
    assert_eq!(gitlab.base_url().as_str(), "https://gitlab.example.com/");
}

#[test]
fn statuses_decode_leniently() {
    let status: PipelineStatus = serde_json::from_str(r#""brand_new_state""#).expect("status");
    assert_eq!(status, PipelineStatus::Unknown);
    assert!(!status.is_finished());
    for (text, finished) in [
        ("success", true),
        ("failed", true),
        ("canceled", true),
        ("skipped", true),
        ("canceling", false),
        ("manual", false),
        ("scheduled", false),
        ("waiting_for_resource", false),
        ("preparing", false),
    ] {
        let status: PipelineStatus = serde_json::from_str(&format!("\"{text}\"")).expect("status");
        assert_eq!(status.as_str(), text);
        assert_eq!(status.is_finished(), finished, "{text}");
    }
    assert!(PipelineStatus::Manual.is_blocked());
    let job: JobStatus = serde_json::from_str(r#""who_knows""#).expect("job status");
    assert_eq!(job, JobStatus::Unknown);
}

#[test]
fn backoff_is_jittered_and_capped() {
    let mut s = settings(Url::parse("https://gitlab.example.com").expect("url"));
    s.retry_base = Duration::from_millis(100);
    s.retry_max = Duration::from_millis(250);
    let (gitlab, _) = client(s);
    for _ in 0..200 {
        assert!(gitlab.backoff(1) <= Duration::from_millis(100));
        assert!(gitlab.backoff(2) <= Duration::from_millis(200));
        assert!(gitlab.backoff(3) <= Duration::from_millis(250));
        assert!(gitlab.backoff(40) <= Duration::from_millis(250));
    }
    let distinct: std::collections::HashSet<Duration> =
        (0..50).map(|_| gitlab.backoff(3)).collect();
    assert!(distinct.len() > 1, "delays are random");
}

#[tokio::test]
async fn job_scope_accepts_gitlab_spellings_and_stops_without_next_page() {
    let server = Server::script(vec![respond(200, "[]")]).await;
    let (gitlab, _) = client(settings(server.url()));
    let jobs = gitlab
        .pipeline_jobs("g/p", 5, &["failed", "canceled", "unknown"])
        .await
        .expect("jobs");
    assert!(jobs.is_empty());
    let seen = server.seen();
    assert_eq!(seen.len(), 1);
    assert_eq!(
        seen[0].target,
        "/api/v4/projects/g%2Fp/pipelines/5/jobs?scope%5B%5D=failed&scope%5B%5D=canceled\
         &per_page=100&page=1"
    );
}

/// A merge request as GitLab 17 returns it (abridged), unknown fields included.
const MR_JSON: &str = r#"{
  "id": 155016530, "iid": 133, "project_id": 15513260,
  "title": "Draft: canary for the scheduler", "description": "", "state": "opened",
  "created_at": "2022-05-13T07:26:38.402Z", "updated_at": "2022-05-14T03:38:31.354Z",
  "merged_by": null, "merge_user": null, "merged_at": null, "closed_by": null, "closed_at": null,
  "target_branch": "main", "source_branch": "sched-fix", "user_notes_count": 0,
  "author": {"id": 10, "username": "alice", "name": "Alice", "state": "active", "locked": false,
             "avatar_url": null, "web_url": "https://gitlab.example.com/alice"},
  "assignees": [], "reviewers": [], "source_project_id": 15513261, "target_project_id": 15513260,
  "labels": [], "draft": true, "work_in_progress": true, "milestone": null,
  "merge_status": "can_be_merged", "detailed_merge_status": "draft_status",
  "sha": "8888888888888888888888888888888888888888", "merge_commit_sha": null,
  "references": {"short": "!133", "relative": "!133", "full": "kernel/ci!133"},
  "web_url": "https://gitlab.example.com/kernel/ci/-/merge_requests/133",
  "diff_refs": {"base_sha": "aaaa", "head_sha": "8888888888888888888888888888888888888888", "start_sha": "aaaa"}
}"#;

const NOTE_JSON: &str = r#"{
  "id": 301, "type": null, "body": "@shepherd test ARCH=arm64", "attachment": null,
  "author": {"id": 10, "username": "alice", "name": "Alice", "state": "active"},
  "created_at": "2013-10-02T08:57:14.000Z", "updated_at": "2013-10-02T08:57:14.000Z",
  "system": false, "noteable_id": 2, "noteable_type": "MergeRequest", "project_id": 5,
  "noteable_iid": 133, "resolvable": false, "confidential": false, "internal": false
}"#;

#[tokio::test]
async fn decodes_merge_request_project_and_notes() {
    let project_json = r#"{
      "id": 3, "description": null, "name": "ci", "name_with_namespace": "Kernel / ci",
      "path": "ci", "path_with_namespace": "kernel/ci", "default_branch": "main",
      "ssh_url_to_repo": "git@gitlab.example.com:kernel/ci.git",
      "http_url_to_repo": "https://gitlab.example.com/kernel/ci.git",
      "web_url": "https://gitlab.example.com/kernel/ci",
      "namespace": {"id": 2, "name": "Kernel", "path": "kernel", "kind": "group", "full_path": "kernel"},
      "visibility": "private"
    }"#;
    let empty_repo = project_json.replace(r#""default_branch": "main","#, "");
    let notes = format!(
        "[{NOTE_JSON}, {}]",
        r#"{"id": 300, "body": "added 1 commit", "author": {"id": 10, "username": "alice"},
            "created_at": "2013-10-02T08:50:00Z", "system": true}"#
    );
    let server = Server::script(vec![
        respond(200, MR_JSON),
        respond(200, project_json),
        respond(200, &empty_repo),
        respond(200, &notes),
    ])
    .await;
    let (gitlab, _) = client(settings(server.url()));

    let mr = gitlab.merge_request("kernel/ci", 133).await.expect("mr");
    assert_eq!(
        mr,
        MergeRequest {
            id: 155016530,
            iid: 133,
            project_id: 15513260,
            source_project_id: 15513261,
            target_project_id: 15513260,
            title: "Draft: canary for the scheduler".into(),
            state: "opened".into(),
            source_branch: "sched-fix".into(),
            target_branch: "main".into(),
            sha: "8888888888888888888888888888888888888888".into(),
            web_url: "https://gitlab.example.com/kernel/ci/-/merge_requests/133".into(),
            draft: true,
            author: Some(UserRef {
                id: 10,
                username: "alice".into(),
                name: "Alice".into()
            }),
        }
    );
    let project = gitlab.project("kernel/ci").await.expect("project");
    assert_eq!(
        project,
        Project {
            id: 3,
            path_with_namespace: "kernel/ci".into(),
            web_url: "https://gitlab.example.com/kernel/ci".into(),
            http_url_to_repo: "https://gitlab.example.com/kernel/ci.git".into(),
            default_branch: Some("main".into()),
        }
    );
    let empty = gitlab.project("3").await.expect("empty project");
    assert_eq!(empty.default_branch, None);
    let notes = gitlab.mr_notes("kernel/ci", 133, 20).await.expect("notes");
    assert_eq!(notes.len(), 2);
    assert_eq!(notes[0].id, 301);
    assert_eq!(notes[0].body, "@shepherd test ARCH=arm64");
    assert_eq!(notes[0].author.username, "alice");
    assert!(!notes[0].system);
    assert_eq!(notes[0].noteable_type.as_deref(), Some("MergeRequest"));
    assert_eq!(notes[0].noteable_iid, Some(133));
    assert_eq!(
        notes[0].created_at.to_rfc3339(),
        "2013-10-02T08:57:14+00:00"
    );
    assert!(notes[0].updated_at.is_some());
    // A minimal system note: the optional fields default.
    assert!(notes[1].system);
    assert_eq!(notes[1].author.name, "");
    assert_eq!(notes[1].updated_at, None);
    assert_eq!(notes[1].noteable_iid, None);

    let seen = server.seen();
    assert_eq!(
        seen.iter().map(|s| s.target.as_str()).collect::<Vec<_>>(),
        vec![
            "/api/v4/projects/kernel%2Fci/merge_requests/133",
            "/api/v4/projects/kernel%2Fci",
            "/api/v4/projects/3",
            "/api/v4/projects/kernel%2Fci/merge_requests/133/notes\
             ?order_by=created_at&sort=desc&per_page=20",
        ]
    );
}

#[tokio::test]
async fn merge_request_not_found_names_it() {
    let server = Server::script(vec![respond(404, r#"{"message":"404 Not found"}"#)]).await;
    let (gitlab, _) = client(settings(server.url()));
    let err = gitlab.merge_request("g/p", 9).await.expect_err("404");
    assert_eq!(
        err,
        GitLabError::NotFound {
            what: "merge request g/p!9".into()
        }
    );
}

#[tokio::test]
async fn member_access_level_reads_inherited_level_and_404_is_no_access() {
    let member = |level: u64, extra: &str| {
        format!(
            r#"{{"id": 7, "username": "bob", "name": "Bob", "state": "active",
                "avatar_url": null, "web_url": "https://gitlab.example.com/bob",
                "access_level": {level}, "created_at": "2012-10-22T14:13:35Z",
                "expires_at": null{extra}}}"#
        )
    };
    let server = Server::script(vec![
        respond(200, &member(30, "")),
        respond(404, r#"{"message":"404 Not found"}"#),
        respond(404, r#"{"message":"404 Project Not Found"}"#),
        respond(200, &member(60, "")),
        respond(200, &member(40, r#", "membership_state": "awaiting""#)),
        respond(200, &member(40, "").replace(r#""active""#, r#""blocked""#)),
        respond(401, r#"{"message":"401 Unauthorized"}"#),
    ])
    .await;
    let (gitlab, _) = client(settings(server.url()));

    assert_eq!(
        gitlab.member_access_level("g/p", 7).await,
        Ok(AccessLevel::Developer)
    );
    assert_eq!(
        gitlab.member_access_level("g/p", 8).await,
        Ok(AccessLevel::NoAccess),
        "not a member"
    );
    assert_eq!(
        gitlab.member_access_level("g/nope", 7).await,
        Ok(AccessLevel::NoAccess),
        "a project the token cannot see"
    );
    assert_eq!(
        gitlab.member_access_level("g/p", 1).await,
        Ok(AccessLevel::Owner),
        "admin (60) reads as owner"
    );
    assert_eq!(
        gitlab.member_access_level("g/p", 7).await,
        Ok(AccessLevel::NoAccess),
        "awaiting approval"
    );
    assert_eq!(
        gitlab.member_access_level("g/p", 7).await,
        Ok(AccessLevel::NoAccess),
        "blocked user"
    );
    assert_eq!(
        gitlab.member_access_level("g/p", 7).await,
        Err(GitLabError::Unauthorized),
        "other errors stay errors"
    );
    let seen = server.seen();
    assert_eq!(seen.len(), 7, "a 404 is an answer, not retried");
    assert_eq!(seen[0].target, "/api/v4/projects/g%2Fp/members/all/7");
}

#[tokio::test]
async fn creates_note_with_json_body() {
    let server = Server::script(vec![respond(201, NOTE_JSON)]).await;
    let (gitlab, metrics) = client(settings(server.url()));
    let text = "Canary started.\n\n<!-- shepherd:req-1 -->";

    let note = gitlab
        .create_mr_note("kernel/ci", 133, text)
        .await
        .expect("created");

    assert_eq!(note.id, 301);
    let seen = server.seen();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].method, "POST");
    assert_eq!(
        seen[0].target,
        "/api/v4/projects/kernel%2Fci/merge_requests/133/notes"
    );
    assert_eq!(seen[0].header("content-type"), Some("application/json"));
    let body: serde_json::Value = serde_json::from_slice(&seen[0].body).expect("json body");
    assert_eq!(body, serde_json::json!({ "body": text }));
    assert_eq!(
        requests_count(
            &metrics,
            "POST /projects/:id/merge_requests/:merge_request_iid/notes",
            "201"
        ),
        1
    );
}

#[tokio::test]
async fn note_create_is_not_retried_after_it_was_sent() {
    let server = Server::script(vec![respond(502, "Bad Gateway"), respond(201, NOTE_JSON)]).await;
    let (gitlab, metrics) = client(settings(server.url()));
    let err = gitlab
        .create_mr_note("g/p", 1, "hello")
        .await
        .expect_err("ambiguous");
    assert!(
        matches!(
            &err,
            GitLabError::Ambiguous {
                endpoint: "POST /projects/:id/merge_requests/:merge_request_iid/notes",
                detail
            } if detail.contains("502")
        ),
        "{err:?}"
    );
    assert!(err.is_retryable());
    assert_eq!(server.seen().len(), 1, "exactly one POST");
    assert_eq!(retries_count(&metrics, "5xx"), 0);

    // An answer that cannot be read is ambiguous too: the note exists, its id is unknown.
    let server = Server::script(vec![respond(201, r#"{"id": "?"}"#)]).await;
    let (gitlab, _) = client(settings(server.url()));
    let err = gitlab
        .create_mr_note("g/p", 1, "hello")
        .await
        .expect_err("ambiguous");
    assert!(matches!(err, GitLabError::Ambiguous { .. }), "{err:?}");

    // Refused with 429: nothing was written, so it is sent again.
    let server = Server::script(vec![
        respond_with(429, &[("Retry-After", "0")], ""),
        respond(201, NOTE_JSON),
    ])
    .await;
    let (gitlab, _) = client(settings(server.url()));
    let note = gitlab
        .create_mr_note("g/p", 1, "hello")
        .await
        .expect("after 429");
    assert_eq!(note.id, 301);
    assert_eq!(server.seen().len(), 2);
}

#[tokio::test]
async fn note_edit_is_retried_after_502() {
    let edited = NOTE_JSON.replace("@shepherd test ARCH=arm64", "edited");
    let server = Server::script(vec![respond(502, ""), respond(200, &edited)]).await;
    let (gitlab, metrics) = client(settings(server.url()));

    let note = gitlab
        .edit_mr_note("kernel/ci", 133, 301, "edited")
        .await
        .expect("edited after a retry");

    assert_eq!(note.body, "edited");
    let seen = server.seen();
    assert_eq!(seen.len(), 2);
    for s in &seen {
        assert_eq!(s.method, "PUT");
        assert_eq!(
            s.target,
            "/api/v4/projects/kernel%2Fci/merge_requests/133/notes/301"
        );
        let body: serde_json::Value = serde_json::from_slice(&s.body).expect("json body");
        assert_eq!(body, serde_json::json!({ "body": "edited" }));
    }
    assert_eq!(retries_count(&metrics, "5xx"), 1);
    let endpoint = "PUT /projects/:id/merge_requests/:merge_request_iid/notes/:note_id";
    assert_eq!(requests_count(&metrics, endpoint, "502"), 1);
    assert_eq!(requests_count(&metrics, endpoint, "200"), 1);

    // Only the author may edit: 403 is final.
    let server = Server::script(vec![respond(403, r#"{"message":"403 Forbidden"}"#)]).await;
    let (gitlab, _) = client(settings(server.url()));
    let err = gitlab
        .edit_mr_note("g/p", 1, 5, "x")
        .await
        .expect_err("403");
    assert!(matches!(err, GitLabError::Forbidden { .. }), "{err:?}");
    assert_eq!(server.seen().len(), 1);
}

#[tokio::test]
async fn mr_notes_asks_for_one_page_newest_first_clamped() {
    let server = Server::script(vec![respond(200, "[]")]).await;
    let (gitlab, _) = client(settings(server.url()));
    assert!(
        gitlab
            .mr_notes("g/p", 4, 0)
            .await
            .expect("notes")
            .is_empty()
    );
    assert!(
        gitlab
            .mr_notes("g/p", 4, 500)
            .await
            .expect("notes")
            .is_empty()
    );
    let seen = server.seen();
    assert_eq!(
        seen[0].target,
        "/api/v4/projects/g%2Fp/merge_requests/4/notes?order_by=created_at&sort=desc&per_page=1"
    );
    assert_eq!(
        seen[1].target,
        "/api/v4/projects/g%2Fp/merge_requests/4/notes?order_by=created_at&sort=desc&per_page=100"
    );
}

#[test]
fn access_levels_map_numbers_and_names() {
    let expected = [
        (0, AccessLevel::NoAccess, "no access"),
        (5, AccessLevel::Minimal, "minimal access"),
        (10, AccessLevel::Guest, "guest"),
        (15, AccessLevel::Planner, "planner"),
        (20, AccessLevel::Reporter, "reporter"),
        (30, AccessLevel::Developer, "developer"),
        (40, AccessLevel::Maintainer, "maintainer"),
        (50, AccessLevel::Owner, "owner"),
    ];
    for (n, level, name) in expected {
        assert_eq!(AccessLevel::from_level(n), level);
        assert_eq!(level.level(), n);
        assert_eq!(level.as_str(), name);
        assert_eq!(level.to_string(), name);
        assert_eq!(name.parse::<AccessLevel>(), Ok(level));
        assert_eq!(n.to_string().parse::<AccessLevel>(), Ok(level));
    }
    // Unknown numbers: the highest level not above them.
    assert_eq!(AccessLevel::from_level(4), AccessLevel::NoAccess);
    assert_eq!(AccessLevel::from_level(35), AccessLevel::Developer);
    assert_eq!(AccessLevel::from_level(60), AccessLevel::Owner);
    assert_eq!(AccessLevel::from_level(u64::MAX), AccessLevel::Owner);
    // Ordered by privilege.
    assert!(AccessLevel::Maintainer >= AccessLevel::Developer);
    assert!(AccessLevel::Reporter < AccessLevel::Developer);
    assert!(AccessLevel::Planner > AccessLevel::Guest);
    // Spellings.
    for (text, level) in [
        ("Developer", AccessLevel::Developer),
        (" MAINTAINER ", AccessLevel::Maintainer),
        ("minimal_access", AccessLevel::Minimal),
        ("Minimal", AccessLevel::Minimal),
        ("no-access", AccessLevel::NoAccess),
        ("No  Access", AccessLevel::NoAccess),
        ("none", AccessLevel::NoAccess),
    ] {
        assert_eq!(text.parse::<AccessLevel>(), Ok(level), "{text}");
    }
    for bad in ["dev", "admin", "35", "-1", "", "developers"] {
        let err = bad.parse::<AccessLevel>().expect_err(bad);
        assert!(
            err.to_string().contains("is not a GitLab access level"),
            "{err}"
        );
    }
}

#[test]
fn web_urls_of_other_instances_are_not_ours() {
    let url = |s: &str| Url::parse(s).expect("url");
    let (ours, _) = client(settings(url("https://gitlab.example.org")));
    let path = |instance: &str| ours.local_project_path(instance, "g/p");
    assert_eq!(path("https://gitlab.example.org").as_deref(), Some("g/p"));
    assert_eq!(path("https://GITLAB.example.org").as_deref(), Some("g/p"));
    assert_eq!(path("http://gitlab.example.org").as_deref(), Some("g/p"));
    assert_eq!(
        path("https://gitlab.example.org:443").as_deref(),
        Some("g/p")
    );
    assert_eq!(path("https://gitlab.example.org:8443"), None);
    assert_eq!(path("https://gitlab.com"), None);
    assert_eq!(path("https://gitlab.example.org.evil.example"), None);
    assert_eq!(path("https://user@evil.example"), None);
    assert_eq!(path("not a url"), None);

    let (local, _) = client(settings(url("http://127.0.0.1:8080")));
    assert_eq!(
        local
            .local_project_path("http://127.0.0.1:8080", "g/p")
            .as_deref(),
        Some("g/p")
    );
    assert_eq!(
        local.local_project_path("http://127.0.0.1:9090", "g/p"),
        None
    );
    assert_eq!(local.local_project_path("http://127.0.0.1", "g/p"), None);

    // An instance under a relative root: the root is not part of the project's path.
    let (rooted, _) = client(settings(url("https://example.org/gitlab/")));
    assert_eq!(
        rooted
            .local_project_path("https://example.org", "gitlab/g/p")
            .as_deref(),
        Some("g/p")
    );
    assert_eq!(
        rooted.local_project_path("https://example.org", "other/g/p"),
        None
    );
    assert_eq!(
        rooted.local_project_path("https://example.org", "gitlab"),
        None
    );
}
