//! Tests of the GitLab double itself, spoken to over HTTP with reqwest the way shepherd's client
//! speaks to GitLab.
//!
//! They pin what is faithful to GitLab's documented v4 API (paths, auth headers, status codes, JSON
//! field names and types, error bodies, pagination headers, the rate limiter's 429) and what each
//! injected fault looks like from the client's side, so that the end-to-end tests built on the double
//! can trust it. What the double simplifies is listed in `tests/src/gitlab/mod.rs`.

use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::http::HeaderMap;
use reqwest::{Client, Method, Response, StatusCode};
use serde_json::{Value, json};
use shepherd_tests::gitlab::{
    AutoFinish, AutoOutcome, BLANK_SHA, FaultKind, Faults, GitLabDouble, HookOutcome, HookSender,
    MergeRequest, NoteRecord, Route, RouteMatcher, Step, USER_ID, USERNAME, User, WebhookEvent,
    hook_time, merge_request_hook_payload, note_hook_payload, send_hook,
};

const WAIT: Duration = Duration::from_secs(5);

fn client() -> Client {
    Client::builder().build().expect("reqwest client")
}

fn api(d: &GitLabDouble, path: &str) -> String {
    format!("{}/api/v4{path}", d.url())
}

async fn get(d: &GitLabDouble, path: &str) -> Response {
    client()
        .get(api(d, path))
        .header("PRIVATE-TOKEN", d.token())
        .send()
        .await
        .expect("GET answered")
}

async fn post(d: &GitLabDouble, path: &str, body: Value) -> Response {
    client()
        .post(api(d, path))
        .header("PRIVATE-TOKEN", d.token())
        .json(&body)
        .send()
        .await
        .expect("POST answered")
}

async fn put(d: &GitLabDouble, path: &str, body: Value) -> Response {
    client()
        .put(api(d, path))
        .header("PRIVATE-TOKEN", d.token())
        .json(&body)
        .send()
        .await
        .expect("PUT answered")
}

async fn json_of(r: Response) -> Value {
    r.json().await.expect("JSON body")
}

fn header<'a>(r: &'a Response, name: &str) -> &'a str {
    r.headers()
        .get(name)
        .unwrap_or_else(|| panic!("header {name} missing"))
        .to_str()
        .expect("ASCII header")
}

/// GitLab's timestamp format: `2016-08-11T11:28:34.085Z`.
fn assert_timestamp(v: &Value) {
    let s = v
        .as_str()
        .unwrap_or_else(|| panic!("{v} is not a timestamp string"));
    assert_eq!(s.len(), 24, "{s}");
    assert_eq!(&s[19..20], ".", "{s}");
    assert!(s.ends_with('Z'), "{s}");
    chrono::DateTime::parse_from_rfc3339(s).expect("RFC 3339");
}

fn keys(v: &Value) -> Vec<&str> {
    let mut k: Vec<&str> = v
        .as_object()
        .expect("object")
        .keys()
        .map(String::as_str)
        .collect();
    k.sort_unstable();
    k
}

#[tokio::test]
async fn single_pipeline_has_gitlabs_shape() {
    let d = GitLabDouble::start().await;
    let project = d.add_project("group/sub/project");
    let seeded = d.add_pipeline("group/sub/project", "main", "failed", &[("ARCH", "x86_64")]);
    assert_eq!(project, 1);
    assert_eq!(seeded.id, 1001);

    let by_id = json_of(get(&d, "/projects/1/pipelines/1001").await).await;
    let by_path = json_of(get(&d, "/projects/group%2Fsub%2Fproject/pipelines/1001").await).await;
    assert_eq!(by_id, by_path);
    let p = by_id;
    assert_eq!(
        keys(&p),
        vec![
            "archived",
            "before_sha",
            "committed_at",
            "coverage",
            "created_at",
            "detailed_status",
            "duration",
            "finished_at",
            "id",
            "iid",
            "name",
            "project_id",
            "queued_duration",
            "ref",
            "sha",
            "source",
            "started_at",
            "status",
            "tag",
            "updated_at",
            "user",
            "web_url",
            "yaml_errors",
        ]
    );
    assert_eq!(p["id"], json!(1001));
    assert_eq!(p["iid"], json!(1));
    assert_eq!(p["project_id"], json!(1));
    assert_eq!(p["ref"], json!("main"));
    assert_eq!(p["status"], json!("failed"));
    assert_eq!(p["source"], json!("web"));
    assert_eq!(p["sha"].as_str().map(str::len), Some(40));
    assert_eq!(p["sha"], json!(seeded.sha));
    assert_eq!(p["before_sha"], json!(BLANK_SHA));
    assert_eq!(p["tag"], json!(false));
    assert_eq!(p["yaml_errors"], Value::Null);
    assert_eq!(p["committed_at"], Value::Null);
    assert_eq!(p["coverage"], Value::Null);
    assert_eq!(p["duration"], json!(300));
    assert_eq!(p["queued_duration"], json!(7.0));
    assert_eq!(
        p["web_url"],
        json!(format!("{}/group/sub/project/-/pipelines/1001", d.url()))
    );
    for field in ["created_at", "updated_at", "started_at", "finished_at"] {
        assert_timestamp(&p[field]);
    }
    assert_eq!(p["updated_at"], p["finished_at"]);
    assert_eq!(p["user"]["id"], json!(1));
    assert_eq!(p["user"]["username"], json!(USERNAME));
    assert_eq!(p["user"]["name"], json!("Shepherd Bot"));
    assert_eq!(p["user"]["state"], json!("active"));
    assert_eq!(p["detailed_status"]["group"], json!("failed"));
    assert_eq!(p["detailed_status"]["icon"], json!("status_failed"));
    assert_eq!(p["detailed_status"]["text"], json!("Failed"));
    assert_eq!(
        p["detailed_status"]["details_path"],
        json!("/group/sub/project/-/pipelines/1001")
    );

    let vars = json_of(get(&d, "/projects/1/pipelines/1001/variables").await).await;
    assert_eq!(
        vars,
        json!([{ "variable_type": "env_var", "key": "ARCH", "value": "x86_64" }])
    );
}

#[tokio::test]
async fn auth_is_checked_with_gitlabs_bodies() {
    let d = GitLabDouble::start().await;
    d.add_pipeline("g/p", "main", "success", &[]);
    let c = client();

    let none = c
        .get(api(&d, "/projects/1/pipelines/1001"))
        .send()
        .await
        .unwrap();
    assert_eq!(none.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(
        json_of(none).await,
        json!({ "message": "401 Unauthorized" })
    );

    let wrong = c
        .get(api(&d, "/user"))
        .header("PRIVATE-TOKEN", "glpat-wrong")
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(
        json_of(wrong).await,
        json!({ "message": "401 Unauthorized" })
    );

    let bearer = c
        .get(api(&d, "/projects/1/pipelines/1001"))
        .bearer_auth(d.token())
        .send()
        .await
        .unwrap();
    assert_eq!(bearer.status(), StatusCode::OK);

    let user = json_of(get(&d, "/user").await).await;
    assert_eq!(user["id"], json!(1));
    assert_eq!(user["username"], json!(USERNAME));
    assert_eq!(user["web_url"], json!(format!("{}/{USERNAME}", d.url())));

    let version = json_of(get(&d, "/version").await).await;
    assert_eq!(version["version"], json!("17.11.1"));
    assert_eq!(version["revision"], json!("4bd8c2ba6e1"));

    // The guest token reads but may not write.
    let guest_read = c
        .get(api(&d, "/projects/1/pipelines"))
        .header("PRIVATE-TOKEN", d.guest_token())
        .send()
        .await
        .unwrap();
    assert_eq!(guest_read.status(), StatusCode::OK);
    for path in ["/projects/1/pipeline", "/projects/1/pipelines/1001/cancel"] {
        let forbidden = c
            .post(api(&d, path))
            .header("PRIVATE-TOKEN", d.guest_token())
            .json(&json!({ "ref": "main" }))
            .send()
            .await
            .unwrap();
        assert_eq!(forbidden.status(), StatusCode::FORBIDDEN, "{path}");
        assert_eq!(
            json_of(forbidden).await,
            json!({ "message": "403 Forbidden" })
        );
    }
    assert!(d.pipelines_created().is_empty());
}

#[tokio::test]
async fn unknown_things_answer_gitlabs_404s() {
    let d = GitLabDouble::start().await;
    d.add_pipeline("g/one", "main", "success", &[]);
    d.add_pipeline("g/two", "main", "success", &[]);

    for path in [
        "/projects/99/pipelines/1001",
        "/projects/g%2Fnope/pipelines",
        "/projects/g%2Fnope/pipelines/1001/jobs",
    ] {
        let r = get(&d, path).await;
        assert_eq!(r.status(), StatusCode::NOT_FOUND, "{path}");
        assert_eq!(
            json_of(r).await,
            json!({ "message": "404 Project Not Found" })
        );
    }
    // Pipeline 1002 exists, but in g/two.
    for path in [
        "/projects/1/pipelines/4242",
        "/projects/1/pipelines/1002",
        "/projects/g%2Fone/pipelines/1002/variables",
    ] {
        let r = get(&d, path).await;
        assert_eq!(r.status(), StatusCode::NOT_FOUND, "{path}");
        assert_eq!(json_of(r).await, json!({ "message": "404 Not found" }));
    }
    let r = post(&d, "/projects/1/pipelines/4242/cancel", json!({})).await;
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    assert_eq!(json_of(r).await, json!({ "message": "404 Not found" }));

    let r = get(&d, "/projects/1/nothing-here").await;
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    assert_eq!(json_of(r).await, json!({ "error": "404 Not Found" }));

    // The path is matched case-insensitively, like GitLab's full-path lookup.
    assert_eq!(
        get(&d, "/projects/G%2FOne/pipelines/1001").await.status(),
        StatusCode::OK
    );
}

#[tokio::test]
async fn pipeline_list_paginates_like_gitlab() {
    let d = GitLabDouble::start().await;
    for i in 0..45 {
        let git_ref = if i % 3 == 0 { "stable" } else { "main" };
        let status = if i % 5 == 0 { "failed" } else { "success" };
        d.add_pipeline("g/p", git_ref, status, &[]);
    }
    d.add_pipeline("g/other", "main", "success", &[]);

    let r = get(&d, "/projects/1/pipelines").await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(header(&r, "x-page"), "1");
    assert_eq!(header(&r, "x-per-page"), "20");
    assert_eq!(header(&r, "x-next-page"), "2");
    assert_eq!(header(&r, "x-prev-page"), "");
    assert_eq!(header(&r, "x-total"), "45");
    assert_eq!(header(&r, "x-total-pages"), "3");
    let base = format!("{}/api/v4/projects/1/pipelines", d.url());
    assert_eq!(
        header(&r, "link"),
        format!(
            "<{base}?page=2&per_page=20>; rel=\"next\", <{base}?page=1&per_page=20>; rel=\"first\", \
             <{base}?page=3&per_page=20>; rel=\"last\""
        )
    );
    let page1 = json_of(r).await;
    let ids: Vec<u64> = page1
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["id"].as_u64().unwrap())
        .collect();
    assert_eq!(ids, (1026..=1045).rev().collect::<Vec<u64>>());
    assert_eq!(
        keys(&page1[0]),
        vec![
            "created_at",
            "id",
            "iid",
            "name",
            "project_id",
            "ref",
            "sha",
            "source",
            "status",
            "updated_at",
            "web_url",
        ]
    );
    assert_eq!(page1[0]["iid"], json!(45));

    let r = get(&d, "/projects/g%2Fp/pipelines?page=3&per_page=20").await;
    assert_eq!(header(&r, "x-next-page"), "");
    assert_eq!(header(&r, "x-prev-page"), "2");
    assert_eq!(json_of(r).await.as_array().unwrap().len(), 5);

    let r = get(&d, "/projects/1/pipelines?per_page=500").await;
    assert_eq!(header(&r, "x-per-page"), "100");
    assert_eq!(header(&r, "x-total-pages"), "1");
    assert_eq!(json_of(r).await.as_array().unwrap().len(), 45);

    let r = get(&d, "/projects/1/pipelines?ref=stable&sort=asc&per_page=5").await;
    assert_eq!(header(&r, "x-total"), "15");
    let stable = json_of(r).await;
    let ids: Vec<u64> = stable
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["id"].as_u64().unwrap())
        .collect();
    assert_eq!(ids, vec![1001, 1004, 1007, 1010, 1013]);

    let r = get(&d, "/projects/1/pipelines?status=failed&ref=main").await;
    assert_eq!(header(&r, "x-total"), "6");
    let failed = json_of(r).await;
    assert!(
        failed
            .as_array()
            .unwrap()
            .iter()
            .all(|p| p["status"] == "failed" && p["ref"] == "main")
    );

    let r = get(&d, "/projects/1/pipelines?source=api").await;
    assert_eq!(header(&r, "x-total"), "0");
    assert_eq!(header(&r, "x-total-pages"), "1");
    assert_eq!(json_of(r).await, json!([]));

    let r = get(
        &d,
        "/projects/1/pipelines?updated_after=2999-01-01T00:00:00Z",
    )
    .await;
    assert_eq!(header(&r, "x-total"), "0");
    let r = get(
        &d,
        "/projects/1/pipelines?updated_before=2999-01-01T00:00:00Z",
    )
    .await;
    assert_eq!(header(&r, "x-total"), "45");

    for (query, error) in [
        (
            "order_by=created_at",
            "order_by does not have a valid value",
        ),
        ("sort=up", "sort does not have a valid value"),
        ("status=done", "status does not have a valid value"),
        ("updated_after=yesterday", "updated_after is invalid"),
        ("page=x", "page is invalid"),
    ] {
        let r = get(&d, &format!("/projects/1/pipelines?{query}")).await;
        assert_eq!(r.status(), StatusCode::BAD_REQUEST, "{query}");
        assert_eq!(json_of(r).await, json!({ "error": error }), "{query}");
    }
}

#[tokio::test]
async fn create_with_variables_then_read_them_back() {
    let d = GitLabDouble::start().await;
    let reference = d.add_pipeline("kernel/ci", "release-6.1", "failed", &[("A", "1")]);
    d.add_project("other/project");
    d.add_pipeline("other/project", "main", "success", &[]);

    let r = post(
        &d,
        "/projects/kernel%2Fci/pipeline",
        json!({
            "ref": "release-6.1",
            "variables": [
                { "key": "A", "value": "2" },
                { "key": "SHEPHERD_REQUEST_ID", "value": "req-1", "variable_type": "env_var" },
                { "key": "CONFIG", "value": "x=1", "variable_type": "file" },
            ],
        }),
    )
    .await;
    assert_eq!(r.status(), StatusCode::CREATED);
    let created = json_of(r).await;
    assert_eq!(created["id"], json!(1003));
    assert_eq!(created["iid"], json!(2));
    assert_eq!(created["project_id"], json!(1));
    assert_eq!(created["status"], json!("created"));
    assert_eq!(created["source"], json!("api"));
    assert_eq!(created["ref"], json!("release-6.1"));
    assert_eq!(created["sha"], json!(reference.sha));
    assert_eq!(created["started_at"], Value::Null);
    assert_eq!(created["finished_at"], Value::Null);
    assert_eq!(created["duration"], Value::Null);
    assert_eq!(created["queued_duration"], Value::Null);
    assert_eq!(created["created_at"], created["updated_at"]);
    assert_timestamp(&created["created_at"]);
    assert_eq!(
        created["web_url"],
        json!(format!("{}/kernel/ci/-/pipelines/1003", d.url()))
    );

    let vars = json_of(get(&d, "/projects/1/pipelines/1003/variables").await).await;
    assert_eq!(
        vars,
        json!([
            { "variable_type": "env_var", "key": "A", "value": "2" },
            { "variable_type": "env_var", "key": "SHEPHERD_REQUEST_ID", "value": "req-1" },
            { "variable_type": "file", "key": "CONFIG", "value": "x=1" },
        ])
    );
    let all = d.pipelines_created();
    assert_eq!(all.len(), 1);
    assert_eq!(all[0].id, 1003);
    assert_eq!(all[0].variable("SHEPHERD_REQUEST_ID"), Some("req-1"));
    assert!(all[0].created_via_api);

    // `ref` in the query string, as older clients send it; `main` always exists.
    let r = post(&d, "/projects/2/pipeline?ref=main", json!({})).await;
    assert_eq!(r.status(), StatusCode::CREATED);
    let second = json_of(r).await;
    assert_eq!(second["id"], json!(1004));
    assert_eq!(second["iid"], json!(2));
    assert_eq!(d.pipelines_created().len(), 2);

    let rec = d.requests();
    let creates: Vec<_> = rec.iter().filter(|r| r.is(Route::CreatePipeline)).collect();
    assert_eq!(creates.len(), 2);
    assert_eq!(creates[0].project, Some(1));
    assert_eq!(creates[0].status, Some(201));
    assert_eq!(
        creates[0].body.as_ref().unwrap()["ref"],
        json!("release-6.1")
    );
    assert_eq!(creates[1].query, "ref=main");
}

#[tokio::test]
async fn create_rejects_bad_input_like_gitlab() {
    let d = GitLabDouble::start().await;
    d.add_project("g/p");
    d.add_ref("g/p", "feature");

    for (body, status, answer) in [
        (json!({}), 400, json!({ "error": "ref is missing" })),
        (
            json!({ "ref": "no-such-branch" }),
            400,
            json!({ "message": { "base": ["Reference not found"] } }),
        ),
        (
            json!({ "ref": "main", "variables": { "A": "1" } }),
            400,
            json!({ "error": "variables is invalid" }),
        ),
        (
            json!({ "ref": "main", "variables": [{ "key": "A", "value": "1", "variable_type": "secret" }] }),
            400,
            json!({ "error": "variables[variable_type] does not have a valid value" }),
        ),
    ] {
        let r = post(&d, "/projects/1/pipeline", body.clone()).await;
        assert_eq!(r.status().as_u16(), status, "{body}");
        assert_eq!(json_of(r).await, answer, "{body}");
    }
    assert!(d.pipelines_created().is_empty());

    let r = post(&d, "/projects/1/pipeline", json!({ "ref": "feature" })).await;
    assert_eq!(r.status(), StatusCode::CREATED);
    assert_eq!(json_of(r).await["id"], json!(1001));
}

#[tokio::test]
async fn jobs_are_filtered_by_scope() {
    let d = GitLabDouble::start().await;
    let p = d.add_pipeline("g/p", "main", "failed", &[]);
    let build = d.add_job(p.id, "build", "build", "success");
    let lint = d.add_job(p.id, "lint", "test", "failed");
    let boot = d.add_job(p.id, "boot", "test", "failed");
    d.set_job_status(boot, "failed", Some("runner_system_failure"));
    let deploy = d.add_job(p.id, "deploy", "deploy", "canceled");
    assert_eq!((build, lint, boot, deploy), (5001, 5002, 5003, 5004));

    let r = get(&d, "/projects/1/pipelines/1001/jobs?scope[]=failed").await;
    assert_eq!(header(&r, "x-total"), "2");
    let failed = json_of(r).await;
    let names: Vec<&str> = failed
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, vec!["lint", "boot"]);
    let j = &failed[1];
    assert_eq!(j["id"], json!(5003));
    assert_eq!(j["stage"], json!("test"));
    assert_eq!(j["status"], json!("failed"));
    assert_eq!(j["failure_reason"], json!("runner_system_failure"));
    assert_eq!(failed[0]["failure_reason"], json!("script_failure"));
    assert_eq!(j["allow_failure"], json!(false));
    assert_eq!(j["ref"], json!("main"));
    assert_eq!(j["web_url"], json!(format!("{}/g/p/-/jobs/5003", d.url())));
    assert_eq!(
        j["pipeline"],
        json!({ "id": 1001, "project_id": 1, "ref": "main", "sha": p.sha, "status": "failed" })
    );
    assert_eq!(j["user"]["username"], json!(USERNAME));
    for field in ["created_at", "started_at", "finished_at"] {
        assert_timestamp(&j[field]);
    }
    assert!(j["duration"].is_f64());

    let r = get(
        &d,
        "/projects/1/pipelines/1001/jobs?scope[]=failed&scope[]=canceled",
    )
    .await;
    let ids: Vec<u64> = json_of(r)
        .await
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j["id"].as_u64().unwrap())
        .collect();
    assert_eq!(ids, vec![5002, 5003, 5004]);

    let r = get(&d, "/projects/1/pipelines/1001/jobs").await;
    assert_eq!(header(&r, "x-total"), "4");
    let all = json_of(r).await;
    assert!(all[0].get("failure_reason").is_none());

    let r = get(&d, "/projects/1/pipelines/1001/jobs?per_page=3&page=2").await;
    assert_eq!(header(&r, "x-page"), "2");
    assert_eq!(header(&r, "x-prev-page"), "1");
    assert_eq!(json_of(r).await[0]["id"], json!(5004));

    let r = get(&d, "/projects/1/pipelines/1001/jobs?scope[]=broken").await;
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    assert_eq!(
        json_of(r).await,
        json!({ "error": "scope does not have a valid value" })
    );
}

#[tokio::test]
async fn cancel_cancels_unfinished_pipelines_only() {
    let d = GitLabDouble::start().await;
    let running = d.add_pipeline("g/p", "main", "running", &[]);
    let job = d.add_job(running.id, "test", "test", "running");
    let done = d.add_pipeline("g/p", "main", "success", &[]);

    let r = post(&d, "/projects/1/pipelines/1001/cancel", json!({})).await;
    assert_eq!(r.status(), StatusCode::OK);
    let canceled = json_of(r).await;
    assert_eq!(canceled["status"], json!("canceled"));
    assert_timestamp(&canceled["finished_at"]);
    assert!(canceled["duration"].as_u64().is_some());
    assert_eq!(d.pipeline(running.id).unwrap().status, "canceled");
    assert_eq!(d.jobs(running.id)[0].id, job);
    assert_eq!(d.jobs(running.id)[0].status, "canceled");

    let r = post(&d, "/projects/1/pipelines/1002/cancel", json!({})).await;
    assert_eq!(r.status(), StatusCode::OK);
    let unchanged = json_of(r).await;
    assert_eq!(unchanged["status"], json!("success"));
    assert_eq!(
        unchanged["updated_at"],
        json!(shepherd_tests::gitlab::timestamp(done.updated_at))
    );
}

#[tokio::test]
async fn set_status_fills_timestamps_like_gitlab() {
    let d = GitLabDouble::start().await;
    d.add_project("g/p");
    let created = json_of(post(&d, "/projects/1/pipeline", json!({ "ref": "main" })).await).await;
    let id = created["id"].as_u64().unwrap();

    d.set_status(id, "running");
    let p = d.pipeline(id).unwrap();
    assert_eq!(p.status, "running");
    assert!(p.started_at.is_some());
    assert_eq!(p.finished_at, None);
    let running = json_of(get(&d, "/projects/1/pipelines/1001").await).await;
    assert_eq!(running["status"], json!("running"));
    assert_eq!(running["detailed_status"]["text"], json!("Running"));
    assert_timestamp(&running["started_at"]);
    assert_eq!(running["finished_at"], Value::Null);
    assert_eq!(running["duration"], Value::Null);

    tokio::time::sleep(Duration::from_millis(20)).await;
    d.set_status(id, "success");
    let p = d.pipeline(id).unwrap();
    assert!(p.finished_at.unwrap() > p.started_at.unwrap());
    assert_eq!(p.duration(), Some(0));
    let done = json_of(get(&d, "/projects/1/pipelines/1001").await).await;
    assert_eq!(done["status"], json!("success"));
    assert_eq!(done["duration"], json!(0));
    assert_eq!(done["detailed_status"]["label"], json!("passed"));
    assert_eq!(done["updated_at"], done["finished_at"]);
}

#[tokio::test]
async fn auto_finish_drives_created_pipelines_by_polls() {
    let d = GitLabDouble::start().await;
    d.add_project("g/p");
    d.set_auto_finish(Some(AutoFinish::success_after_polls(1, 2)));
    post(&d, "/projects/1/pipeline", json!({ "ref": "main" })).await;
    let mut seen = Vec::new();
    for _ in 0..5 {
        let p = json_of(get(&d, "/projects/1/pipelines/1001").await).await;
        seen.push(p["status"].as_str().unwrap().to_owned());
    }
    assert_eq!(
        seen,
        ["created", "running", "running", "success", "success"]
    );
    let jobs = json_of(get(&d, "/projects/1/pipelines/1001/jobs").await).await;
    assert_eq!(jobs.as_array().unwrap().len(), 1);
    assert_eq!(jobs[0]["name"], json!("build"));
    assert_eq!(jobs[0]["status"], json!("success"));

    d.set_auto_finish(Some(AutoFinish::failed_after_polls(0, 1, "boot-test")));
    post(&d, "/projects/1/pipeline", json!({ "ref": "main" })).await;
    let first = json_of(get(&d, "/projects/1/pipelines/1002").await).await;
    assert_eq!(first["status"], json!("running"));
    let second = json_of(get(&d, "/projects/1/pipelines/1002").await).await;
    assert_eq!(second["status"], json!("failed"));
    let failed = json_of(get(&d, "/projects/1/pipelines/1002/jobs?scope[]=failed").await).await;
    assert_eq!(failed.as_array().unwrap().len(), 1);
    assert_eq!(failed[0]["name"], json!("boot-test"));
    assert_eq!(failed[0]["failure_reason"], json!("script_failure"));

    // A manual status takes a pipeline out of automatic mode.
    post(&d, "/projects/1/pipeline", json!({ "ref": "main" })).await;
    d.set_status(1003, "pending");
    for _ in 0..3 {
        let p = json_of(get(&d, "/projects/1/pipelines/1003").await).await;
        assert_eq!(p["status"], json!("pending"));
    }
    // Reference pipelines are never automatic.
    assert_eq!(
        d.add_pipeline("g/p", "main", "created", &[]).status,
        "created"
    );
}

#[tokio::test]
async fn auto_finish_by_time_uses_nominal_timestamps() {
    let d = GitLabDouble::start().await;
    d.add_project("g/p");
    d.set_auto_finish(Some(AutoFinish {
        start: Step::After(Duration::ZERO),
        finish: Step::After(Duration::ZERO),
        outcome: AutoOutcome::Failed {
            job: "test".to_owned(),
            failure_reason: "stuck_or_timeout_failure".to_owned(),
        },
    }));
    post(&d, "/projects/1/pipeline", json!({ "ref": "main" })).await;
    let p = d.pipeline(1001).unwrap();
    assert_eq!(p.status, "failed");
    assert_eq!(p.started_at, Some(p.created_at));
    assert_eq!(p.finished_at, Some(p.created_at));
    let listed = json_of(get(&d, "/projects/1/pipelines?status=failed").await).await;
    assert_eq!(listed[0]["id"], json!(1001));
    let jobs = d.jobs(1001);
    assert_eq!(jobs.len(), 2);
    assert_eq!(
        jobs[1].failure_reason.as_deref(),
        Some("stuck_or_timeout_failure")
    );
}

#[tokio::test]
async fn status_faults_answer_the_code_with_realistic_bodies() {
    let d = GitLabDouble::start().await;
    d.add_pipeline("g/p", "main", "success", &[]);
    d.fail_next(Route::GetPipeline, 1, FaultKind::Status(503));
    d.fail_next(Route::GetPipeline, 1, FaultKind::Status(500));
    d.fail_next(RouteMatcher::Any, 1, FaultKind::Status(502));

    let r = get(&d, "/projects/1/pipelines/1001").await;
    assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(header(&r, "content-type").starts_with("text/html"));
    let r = get(&d, "/projects/1/pipelines/1001").await;
    assert_eq!(r.status(), StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(
        json_of(r).await,
        json!({ "message": "500 Internal Server Error" })
    );
    let r = get(&d, "/version").await;
    assert_eq!(r.status(), StatusCode::BAD_GATEWAY);
    assert!(r.text().await.unwrap().contains("502"));
    let r = get(&d, "/projects/1/pipelines/1001").await;
    assert_eq!(r.status(), StatusCode::OK);

    let statuses: Vec<(Option<u16>, Option<FaultKind>)> =
        d.requests().iter().map(|r| (r.status, r.fault)).collect();
    assert_eq!(
        statuses,
        vec![
            (Some(503), Some(FaultKind::Status(503))),
            (Some(500), Some(FaultKind::Status(500))),
            (Some(502), Some(FaultKind::Status(502))),
            (Some(200), None),
        ]
    );
    // Faults come before authentication, as from a proxy.
    d.fail_next(Route::User, 1, FaultKind::Status(500));
    let r = client().get(api(&d, "/user")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::INTERNAL_SERVER_ERROR);
}

#[tokio::test]
async fn too_many_requests_carries_retry_after() {
    let d = GitLabDouble::start().await;
    d.add_project("g/p");
    d.fail_next(
        Route::ListPipelines,
        1,
        FaultKind::TooManyRequests {
            retry_after_secs: 7,
        },
    );
    let r = get(&d, "/projects/1/pipelines").await;
    assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(header(&r, "retry-after"), "7");
    assert_eq!(header(&r, "ratelimit-remaining"), "0");
    assert!(header(&r, "content-type").starts_with("text/plain"));
    assert_eq!(r.text().await.unwrap(), "Retry later\n");
    assert_eq!(
        get(&d, "/projects/1/pipelines").await.status(),
        StatusCode::OK
    );
}

#[tokio::test]
async fn reset_drops_the_connection_without_an_answer() {
    let d = GitLabDouble::start().await;
    d.add_project("g/p");
    d.fail_next(Route::CreatePipeline, 1, FaultKind::Reset);
    let err = client()
        .post(api(&d, "/projects/1/pipeline"))
        .header("PRIVATE-TOKEN", d.token())
        .json(&json!({ "ref": "main" }))
        .send()
        .await
        .expect_err("the connection is dropped");
    assert!(!err.is_timeout(), "{err:?}");
    assert!(err.status().is_none());
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(&err);
    let mut reset = false;
    while let Some(e) = source {
        reset |= e
            .downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::ConnectionReset);
        source = e.source();
    }
    assert!(reset, "a TCP reset, not {err:?}");
    // Nothing was created, and the request is recorded as never answered.
    assert!(d.pipelines_created().is_empty());
    let rec = d.requests();
    assert_eq!(rec.len(), 1);
    assert_eq!(rec[0].status, None);
    assert_eq!(rec[0].fault, Some(FaultKind::Reset));
    // The next request works.
    let r = post(&d, "/projects/1/pipeline", json!({ "ref": "main" })).await;
    assert_eq!(r.status(), StatusCode::CREATED);
}

#[tokio::test]
async fn create_then_fail_stores_the_pipeline_and_answers_502() {
    let d = GitLabDouble::start().await;
    d.add_project("g/p");
    d.fail_next(Route::CreatePipeline, 1, FaultKind::CreateThenFail(502));
    let r = post(
        &d,
        "/projects/1/pipeline",
        json!({ "ref": "main", "variables": [{ "key": "SHEPHERD_REQUEST_ID", "value": "r-9" }] }),
    )
    .await;
    assert_eq!(r.status(), StatusCode::BAD_GATEWAY);
    let created = d.pipelines_created();
    assert_eq!(created.len(), 1);
    assert_eq!(created[0].id, 1001);
    assert_eq!(created[0].variable("SHEPHERD_REQUEST_ID"), Some("r-9"));
    // A client that looks before creating again finds it.
    let listed = json_of(get(&d, "/projects/1/pipelines?ref=main&source=api").await).await;
    assert_eq!(listed[0]["id"], json!(1001));
    let vars = json_of(get(&d, "/projects/1/pipelines/1001/variables").await).await;
    assert_eq!(vars[0]["value"], json!("r-9"));
    assert_eq!(d.requests()[0].status, Some(502));
}

#[tokio::test]
async fn timeout_never_answers() {
    let d = GitLabDouble::start().await;
    d.add_project("g/p");
    d.fail_next(Route::ListPipelines, 1, FaultKind::Timeout);
    let err = Client::builder()
        .timeout(Duration::from_millis(300))
        .build()
        .unwrap()
        .get(api(&d, "/projects/1/pipelines"))
        .header("PRIVATE-TOKEN", d.token())
        .send()
        .await
        .expect_err("no answer");
    assert!(err.is_timeout(), "{err:?}");
    let rec = d.requests();
    assert_eq!(rec[0].status, None);
    assert_eq!(rec[0].fault, Some(FaultKind::Timeout));
}

#[tokio::test]
async fn slow_answers_correctly_but_late() {
    let d = GitLabDouble::start().await;
    d.add_pipeline("g/p", "main", "success", &[]);
    d.fail_next(
        Route::GetPipeline,
        1,
        FaultKind::Slow(Duration::from_millis(250)),
    );
    let start = std::time::Instant::now();
    let r = get(&d, "/projects/1/pipelines/1001").await;
    assert!(start.elapsed() >= Duration::from_millis(250));
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(json_of(r).await["id"], json!(1001));
}

#[tokio::test]
async fn hold_keeps_the_create_answer_until_released() {
    let d = GitLabDouble::start().await;
    d.add_project("g/p");
    let hold = d.hold_creates();
    let url = api(&d, "/projects/1/pipeline");
    let token = d.token().to_owned();
    let mut answer = tokio::spawn(async move {
        client()
            .post(url)
            .header("PRIVATE-TOKEN", token)
            .json(&json!({ "ref": "main" }))
            .send()
            .await
            .map(|r| r.status())
    });
    tokio::time::timeout(WAIT, hold.wait_reached())
        .await
        .expect("create reached the hold");
    assert_eq!(hold.held(), 1);
    // Stored already, but not answered.
    assert_eq!(d.pipelines_created().len(), 1);
    assert_eq!(d.requests()[0].status, None);
    assert!(
        tokio::time::timeout(Duration::from_millis(100), &mut answer)
            .await
            .is_err()
    );
    hold.release();
    let status = answer.await.unwrap().unwrap();
    assert_eq!(status, StatusCode::CREATED);
    assert!(
        d.wait_for(|r| r[0].status == Some(201), WAIT).await,
        "the release is recorded"
    );
    // Without a hold, creates answer at once.
    let r = post(&d, "/projects/1/pipeline", json!({ "ref": "main" })).await;
    assert_eq!(r.status(), StatusCode::CREATED);
}

/// Status codes of `n` sequential `GET /version` under `faults`.
async fn fault_run(faults: Faults, n: usize) -> Vec<u16> {
    let d = GitLabDouble::start().await;
    d.set_faults(faults);
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        out.push(get(&d, "/version").await.status().as_u16());
    }
    out
}

#[tokio::test]
async fn seeded_fault_rate_is_honoured_and_reproducible() {
    let faults = |seed| Faults {
        rate: 0.25,
        kinds: vec![FaultKind::Status(500), FaultKind::Status(503)],
        seed,
    };
    let first = fault_run(faults(42), 400).await;
    let again = fault_run(faults(42), 400).await;
    let other = fault_run(faults(7), 400).await;
    assert_eq!(first, again);
    assert_ne!(first, other);
    let failed = first.iter().filter(|s| **s != 200).count();
    assert!((70..=130).contains(&failed), "{failed} of 400 failed");
    // Pinned, so that a change of the draw (and of every seeded run built on it) is noticed.
    assert_eq!(failed, 95);
    assert_eq!(first.iter().filter(|s| **s == 500).count(), 54);
    assert!(first.iter().all(|s| [200, 500, 503].contains(s)));

    // Rate 1 fails every API request, and nothing outside the API.
    let d = GitLabDouble::start().await;
    d.set_faults(Faults {
        rate: 1.0,
        kinds: vec![FaultKind::Status(503)],
        seed: 1,
    });
    assert_eq!(
        get(&d, "/version").await.status(),
        StatusCode::SERVICE_UNAVAILABLE
    );
    let outside = client()
        .request(Method::GET, format!("{}/-/health", d.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(outside.status(), StatusCode::NOT_FOUND);
    assert_eq!(d.requests()[1].fault, None);
    d.set_faults(Faults::none());
    assert_eq!(get(&d, "/version").await.status(), StatusCode::OK);
}

#[tokio::test]
async fn wait_for_wakes_on_requests_and_times_out() {
    let d = GitLabDouble::start().await;
    d.add_pipeline("g/p", "main", "success", &[]);
    let url = api(&d, "/projects/g%2Fp/pipelines/1001");
    let token = d.token().to_owned();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(50)).await;
        client()
            .get(url)
            .header("PRIVATE-TOKEN", token)
            .send()
            .await
            .map(|r| r.status())
    });
    let seen = d
        .wait_for(
            |r| {
                r.iter().any(|r| {
                    r.is(Route::GetPipeline)
                        && r.pipeline == Some(1001)
                        && r.project == Some(1)
                        && r.status == Some(200)
                })
            },
            WAIT,
        )
        .await;
    assert!(seen);
    let never = d
        .wait_for(
            |r| r.iter().any(|r| r.is(Route::CancelPipeline)),
            Duration::from_millis(50),
        )
        .await;
    assert!(!never);
}

#[tokio::test]
async fn dropping_the_double_stops_it() {
    let d = GitLabDouble::start().await;
    let url = api(&d, "/version");
    let token = d.token().to_owned();
    assert_eq!(get(&d, "/version").await.status(), StatusCode::OK);
    drop(d);
    tokio::task::yield_now().await;
    let err = client()
        .get(url)
        .header("PRIVATE-TOKEN", token)
        .send()
        .await
        .expect_err("nobody listens any more");
    assert!(err.is_connect() || err.is_request(), "{err:?}");
}

#[tokio::test]
async fn token_owner_is_the_bot_account() {
    let d = GitLabDouble::start().await;
    assert_eq!(USERNAME, "shepherd");
    let user = json_of(get(&d, "/user").await).await;
    assert_eq!(user["username"], json!("shepherd"));
    assert_eq!(user["id"], json!(USER_ID));
    // Adding the bot's name again gives the bot.
    assert_eq!(d.add_user("shepherd"), USER_ID);
}

#[tokio::test]
async fn project_has_gitlabs_shape() {
    let d = GitLabDouble::start().await;
    let id = d.add_project("kernel/sub/ci");
    let by_id = json_of(get(&d, "/projects/1").await).await;
    let by_path = json_of(get(&d, "/projects/kernel%2Fsub%2Fci").await).await;
    assert_eq!(by_id["id"], json!(id));
    assert_eq!(by_path["id"], json!(id));
    for field in [
        "id",
        "name",
        "path",
        "path_with_namespace",
        "name_with_namespace",
        "web_url",
        "http_url_to_repo",
        "ssh_url_to_repo",
        "default_branch",
        "namespace",
        "visibility",
        "created_at",
    ] {
        assert!(by_id.get(field).is_some(), "{field} missing");
    }
    assert_eq!(by_id["name"], json!("ci"));
    assert_eq!(by_id["path"], json!("ci"));
    assert_eq!(by_id["path_with_namespace"], json!("kernel/sub/ci"));
    assert_eq!(by_id["name_with_namespace"], json!("kernel / sub / ci"));
    assert_eq!(
        by_id["web_url"],
        json!(format!("{}/kernel/sub/ci", d.url()))
    );
    assert_eq!(
        by_id["http_url_to_repo"],
        json!(format!("{}/kernel/sub/ci.git", d.url()))
    );
    assert_eq!(
        by_id["ssh_url_to_repo"],
        json!("git@127.0.0.1:kernel/sub/ci.git")
    );
    assert_eq!(by_id["default_branch"], json!("main"));
    assert_eq!(by_id["namespace"]["full_path"], json!("kernel/sub"));
    assert_eq!(by_id["namespace"]["path"], json!("sub"));
    assert_eq!(by_id["namespace"]["kind"], json!("group"));
    assert_eq!(by_id["visibility"], json!("private"));
    assert_timestamp(&by_id["created_at"]);

    let r = get(&d, "/projects/kernel%2Fnope").await;
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    assert_eq!(
        json_of(r).await,
        json!({ "message": "404 Project Not Found" })
    );
    let r = client().get(api(&d, "/projects/1")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    assert!(d.requests().iter().all(|r| r.is(Route::GetProject)));
}

#[tokio::test]
async fn members_api_reports_effective_access() {
    let d = GitLabDouble::start().await;
    d.add_project("g/p");
    let alice = d.add_user("alice");
    let bob = d.add_user("bob");
    assert_eq!((alice, bob), (2, 3));
    assert_eq!(d.add_user("alice"), alice, "usernames are unique");
    d.add_member("g/p", alice, 30);
    d.add_member("g/other", bob, 20);

    let r = get(&d, &format!("/projects/g%2Fp/members/all/{alice}")).await;
    assert_eq!(r.status(), StatusCode::OK);
    let m = json_of(r).await;
    for field in [
        "id",
        "username",
        "name",
        "state",
        "avatar_url",
        "web_url",
        "access_level",
        "created_at",
        "expires_at",
    ] {
        assert!(m.get(field).is_some(), "{field} missing");
    }
    assert_eq!(m["id"], json!(alice));
    assert_eq!(m["username"], json!("alice"));
    assert_eq!(m["state"], json!("active"));
    assert_eq!(m["access_level"], json!(30));
    assert_eq!(m["expires_at"], Value::Null);
    assert_eq!(m["web_url"], json!(format!("{}/alice", d.url())));
    assert_timestamp(&m["created_at"]);

    // The token's user owns every project.
    let owner = json_of(get(&d, "/projects/1/members/all/1").await).await;
    assert_eq!(owner["access_level"], json!(50));
    assert_eq!(owner["username"], json!(USERNAME));

    // A member elsewhere, an unknown user: 404, like GitLab.
    for path in [
        format!("/projects/1/members/all/{bob}"),
        "/projects/1/members/all/999".to_owned(),
    ] {
        let r = get(&d, &path).await;
        assert_eq!(r.status(), StatusCode::NOT_FOUND, "{path}");
        assert_eq!(json_of(r).await, json!({ "message": "404 Not found" }));
    }
    let r = get(&d, "/projects/1/members/all/alice").await;
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    assert_eq!(json_of(r).await, json!({ "error": "user_id is invalid" }));
    let r = get(&d, "/projects/g%2Fnope/members/all/1").await;
    assert_eq!(
        json_of(r).await,
        json!({ "message": "404 Project Not Found" })
    );

    // Changing the level replaces the membership.
    d.add_member("g/p", alice, 40);
    let m = json_of(get(&d, &format!("/projects/1/members/all/{alice}")).await).await;
    assert_eq!(m["access_level"], json!(40));
    let rec = d.requests();
    assert!(rec.iter().all(|r| r.is(Route::GetMember)));
}

#[tokio::test]
async fn merge_request_has_gitlabs_shape_and_moves_on_push() {
    let d = GitLabDouble::start().await;
    let alice = d.add_user("alice");
    d.add_project("kernel/ci");
    let iid = d.add_mr("kernel/ci", "alice/ci", "sched-fix", alice);
    assert_eq!(iid, 1);
    assert_eq!(d.add_mr("kernel/ci", "kernel/ci", "other", alice), 2);

    let r = get(&d, "/projects/kernel%2Fci/merge_requests/1").await;
    assert_eq!(r.status(), StatusCode::OK);
    let mr = json_of(r).await;
    for field in [
        "id",
        "iid",
        "project_id",
        "title",
        "description",
        "state",
        "created_at",
        "updated_at",
        "target_branch",
        "source_branch",
        "author",
        "source_project_id",
        "target_project_id",
        "draft",
        "work_in_progress",
        "merge_status",
        "detailed_merge_status",
        "sha",
        "web_url",
        "references",
        "diff_refs",
        "user_notes_count",
    ] {
        assert!(mr.get(field).is_some(), "{field} missing");
    }
    let model = d.mr("kernel/ci", 1).expect("stored");
    assert_eq!(mr["id"], json!(model.id));
    assert_ne!(mr["id"], mr["iid"], "ids are global, iids per project");
    assert_eq!(mr["iid"], json!(1));
    assert_eq!(mr["project_id"], json!(1));
    assert_eq!(mr["target_project_id"], json!(1));
    assert_eq!(mr["source_project_id"], json!(2), "the fork");
    assert_eq!(mr["source_branch"], json!("sched-fix"));
    assert_eq!(mr["target_branch"], json!("main"));
    assert_eq!(mr["state"], json!("opened"));
    assert_eq!(mr["draft"], json!(false));
    assert_eq!(mr["author"]["username"], json!("alice"));
    assert_eq!(mr["author"]["id"], json!(alice));
    assert_eq!(mr["sha"].as_str().map(str::len), Some(40));
    assert_eq!(mr["sha"], json!(model.sha));
    assert_eq!(mr["diff_refs"]["head_sha"], mr["sha"]);
    assert_eq!(
        mr["references"],
        json!({ "short": "!1", "relative": "!1", "full": "kernel/ci!1" })
    );
    assert_eq!(
        mr["web_url"],
        json!(format!("{}/kernel/ci/-/merge_requests/1", d.url()))
    );
    assert_timestamp(&mr["created_at"]);

    // A push moves the head; the MR ref and the source branch follow it.
    let old = model.sha.clone();
    let new = d.push_mr("kernel/ci", 1);
    assert_ne!(new, old);
    assert_eq!(d.mr("kernel/ci", 1).unwrap().sha, new);
    let mr = json_of(get(&d, "/projects/1/merge_requests/1").await).await;
    assert_eq!(mr["sha"], json!(new));
    let p = json_of(
        post(
            &d,
            "/projects/1/pipeline",
            json!({ "ref": "refs/merge-requests/1/head" }),
        )
        .await,
    )
    .await;
    assert_eq!(p["sha"], json!(new));
    let p = json_of(
        post(
            &d,
            "/projects/alice%2Fci/pipeline",
            json!({ "ref": "sched-fix" }),
        )
        .await,
    )
    .await;
    assert_eq!(
        p["sha"],
        json!(new),
        "the fork's branch has the pushed head"
    );

    d.set_mr_state("kernel/ci", 1, "merged");
    let mr = json_of(get(&d, "/projects/1/merge_requests/1").await).await;
    assert_eq!(mr["state"], json!("merged"));
    assert_timestamp(&mr["merged_at"]);

    for path in [
        "/projects/1/merge_requests/3",
        "/projects/2/merge_requests/1",
    ] {
        let r = get(&d, path).await;
        assert_eq!(r.status(), StatusCode::NOT_FOUND, "{path}");
        assert_eq!(json_of(r).await, json!({ "message": "404 Not found" }));
    }
    let r = get(&d, "/projects/1/merge_requests/first").await;
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    assert_eq!(
        json_of(r).await,
        json!({ "error": "merge_request_iid is invalid" })
    );
    let gets: Vec<_> = d
        .requests()
        .into_iter()
        .filter(|r| r.is(Route::GetMergeRequest))
        .collect();
    assert_eq!(gets[0].merge_request, Some(1));
    assert_eq!(gets[0].project, Some(1));
    assert_eq!(gets[0].pipeline, None);
}

/// A project with one merge request by `alice` (returned), as most note tests need.
fn with_mr(d: &GitLabDouble) -> u64 {
    let alice = d.add_user("alice");
    d.add_member("g/p", alice, 30);
    d.add_mr("g/p", "g/p", "feature", alice);
    alice
}

#[tokio::test]
async fn notes_are_created_read_and_edited_like_gitlab() {
    let d = GitLabDouble::start().await;
    let alice = with_mr(&d);
    let human = d.comment("g/p", 1, alice, "@shepherd test ARCH=arm64");

    let r = post(
        &d,
        "/projects/g%2Fp/merge_requests/1/notes",
        json!({ "body": "Canary started.\n\n<!-- shepherd:r1 -->" }),
    )
    .await;
    assert_eq!(r.status(), StatusCode::CREATED);
    let note = json_of(r).await;
    let mut k = keys(&note);
    k.retain(|k| !["commands_changes", "imported", "imported_from"].contains(k));
    assert_eq!(
        k,
        vec![
            "attachment",
            "author",
            "body",
            "confidential",
            "created_at",
            "id",
            "internal",
            "noteable_id",
            "noteable_iid",
            "noteable_type",
            "project_id",
            "resolvable",
            "system",
            "type",
            "updated_at",
        ]
    );
    let id = note["id"].as_u64().unwrap();
    assert!(id > human);
    assert_eq!(
        note["body"],
        json!("Canary started.\n\n<!-- shepherd:r1 -->")
    );
    assert_eq!(note["author"]["username"], json!(USERNAME));
    assert_eq!(note["author"]["id"], json!(USER_ID));
    assert_eq!(note["type"], Value::Null);
    assert_eq!(note["attachment"], Value::Null);
    assert_eq!(note["system"], json!(false));
    assert_eq!(note["noteable_type"], json!("MergeRequest"));
    assert_eq!(note["noteable_iid"], json!(1));
    assert_eq!(note["noteable_id"], json!(d.mr("g/p", 1).unwrap().id));
    assert_eq!(note["project_id"], json!(1));
    assert_eq!(note["resolvable"], json!(false));
    assert_eq!(note["confidential"], json!(false));
    assert_eq!(note["internal"], json!(false));
    assert_timestamp(&note["created_at"]);
    assert_eq!(note["created_at"], note["updated_at"]);

    // `body` in a form body or the query string works too.
    let form = client()
        .post(api(&d, "/projects/1/merge_requests/1/notes"))
        .header("PRIVATE-TOKEN", d.token())
        .form(&[("body", "from a form")])
        .send()
        .await
        .unwrap();
    assert_eq!(form.status(), StatusCode::CREATED);
    let query = client()
        .post(api(
            &d,
            "/projects/1/merge_requests/1/notes?body=from%20the%20query",
        ))
        .header("PRIVATE-TOKEN", d.token())
        .send()
        .await
        .unwrap();
    assert_eq!(query.status(), StatusCode::CREATED);
    let bodies: Vec<String> = d.notes("g/p", 1).into_iter().map(|n| n.body).collect();
    assert_eq!(bodies[2..], ["from a form", "from the query"]);

    for (body, answer) in [
        (json!({}), json!({ "error": "body is missing" })),
        (
            json!({ "body": "  \n" }),
            json!({ "message": { "note": ["can't be blank"] } }),
        ),
        (
            json!({ "body": "x".repeat(1_000_001) }),
            json!({ "message": { "note": ["is too long (maximum is 1000000 characters)"] } }),
        ),
    ] {
        let r = post(&d, "/projects/1/merge_requests/1/notes", body).await;
        assert_eq!(r.status(), StatusCode::BAD_REQUEST);
        assert_eq!(json_of(r).await, answer);
    }
    assert_eq!(
        d.notes("g/p", 1).len(),
        4,
        "nothing stored for a bad request"
    );

    // One note, by id.
    let one = json_of(get(&d, &format!("/projects/1/merge_requests/1/notes/{id}")).await).await;
    assert_eq!(one, note);

    // Edit in place: only the text and `updated_at` change. (Timestamps have millisecond
    // resolution: wait for the clock to move so that the new `updated_at` is visibly later.)
    tokio::time::sleep(Duration::from_millis(5)).await;
    let r = put(
        &d,
        &format!("/projects/1/merge_requests/1/notes/{id}"),
        json!({ "body": "Canary finished.\n\n<!-- shepherd:r1 -->" }),
    )
    .await;
    assert_eq!(r.status(), StatusCode::OK);
    let edited = json_of(r).await;
    assert_eq!(edited["id"], json!(id));
    assert_eq!(
        edited["body"],
        json!("Canary finished.\n\n<!-- shepherd:r1 -->")
    );
    assert_eq!(edited["created_at"], note["created_at"]);
    assert_ne!(edited["updated_at"], note["updated_at"]);
    // The same text again is no change.
    let again = json_of(
        put(
            &d,
            &format!("/projects/1/merge_requests/1/notes/{id}"),
            json!({ "body": "Canary finished.\n\n<!-- shepherd:r1 -->" }),
        )
        .await,
    )
    .await;
    assert_eq!(again, edited);
    let stored = d.note(id).unwrap();
    assert_eq!(stored.edits, 1);
    assert_eq!(stored.author, USERNAME);

    // Someone else's note: 403; the guest token may not write at all.
    let r = put(
        &d,
        &format!("/projects/1/merge_requests/1/notes/{human}"),
        json!({ "body": "hijacked" }),
    )
    .await;
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    assert_eq!(json_of(r).await, json!({ "message": "403 Forbidden" }));
    assert_eq!(d.note(human).unwrap().body, "@shepherd test ARCH=arm64");
    let guest = client()
        .post(api(&d, "/projects/1/merge_requests/1/notes"))
        .header("PRIVATE-TOKEN", d.guest_token())
        .json(&json!({ "body": "x" }))
        .send()
        .await
        .unwrap();
    assert_eq!(guest.status(), StatusCode::FORBIDDEN);
    let anonymous = client()
        .post(api(&d, "/projects/1/merge_requests/1/notes"))
        .json(&json!({ "body": "x" }))
        .send()
        .await
        .unwrap();
    assert_eq!(anonymous.status(), StatusCode::UNAUTHORIZED);

    // Unknown notes and merge requests, and a note of another merge request.
    d.add_mr("g/p", "g/p", "second", alice);
    for (method, path) in [
        (
            Method::GET,
            "/projects/1/merge_requests/1/notes/99999".to_owned(),
        ),
        (
            Method::PUT,
            "/projects/1/merge_requests/1/notes/99999".to_owned(),
        ),
        (
            Method::GET,
            format!("/projects/1/merge_requests/2/notes/{id}"),
        ),
        (Method::GET, "/projects/1/merge_requests/7/notes".to_owned()),
        (
            Method::POST,
            "/projects/1/merge_requests/7/notes".to_owned(),
        ),
    ] {
        let r = client()
            .request(method.clone(), api(&d, &path))
            .header("PRIVATE-TOKEN", d.token())
            .json(&json!({ "body": "x" }))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::NOT_FOUND, "{method} {path}");
        assert_eq!(json_of(r).await, json!({ "message": "404 Not found" }));
    }
    let r = client()
        .delete(api(&d, &format!("/projects/1/merge_requests/1/notes/{id}")))
        .header("PRIVATE-TOKEN", d.token())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    assert_eq!(json_of(r).await, json!({ "error": "404 Not Found" }));

    let rec = d.requests();
    let edits: Vec<_> = rec.iter().filter(|r| r.is(Route::EditNote)).collect();
    assert_eq!(edits[0].note, Some(id));
    assert_eq!(edits[0].merge_request, Some(1));
    assert!(rec.iter().any(|r| r.is(Route::GetNote)));
    assert_eq!(rec.iter().filter(|r| r.is(Route::CreateNote)).count(), 9);
}

#[tokio::test]
async fn notes_list_newest_first_and_paginates() {
    let d = GitLabDouble::start().await;
    let alice = with_mr(&d);
    let mut ids = Vec::new();
    for i in 0..25 {
        ids.push(d.comment("g/p", 1, alice, &format!("comment {i}")));
    }
    // Editing the oldest makes it the most recently updated (after the clock moved on: times
    // have millisecond resolution).
    tokio::time::sleep(Duration::from_millis(5)).await;
    d.edit_comment(ids[0], "comment 0, edited");
    assert_eq!(d.note(ids[0]).unwrap().edits, 1);

    let r = get(&d, "/projects/1/merge_requests/1/notes?per_page=10").await;
    assert_eq!(header(&r, "x-total"), "25");
    assert_eq!(header(&r, "x-total-pages"), "3");
    assert_eq!(header(&r, "x-next-page"), "2");
    let page: Vec<u64> = json_of(r)
        .await
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["id"].as_u64().unwrap())
        .collect();
    let newest: Vec<u64> = ids.iter().rev().take(10).copied().collect();
    assert_eq!(page, newest, "default: created_at desc");

    let r = get(&d, "/projects/1/merge_requests/1/notes?per_page=10&page=3").await;
    assert_eq!(header(&r, "x-prev-page"), "2");
    assert_eq!(header(&r, "x-next-page"), "");
    assert_eq!(json_of(r).await.as_array().unwrap().len(), 5);

    let asc = json_of(
        get(
            &d,
            "/projects/1/merge_requests/1/notes?sort=asc&per_page=100",
        )
        .await,
    )
    .await;
    assert_eq!(asc[0]["id"], json!(ids[0]));
    assert_eq!(asc.as_array().unwrap().len(), 25);
    let by_update = json_of(
        get(
            &d,
            "/projects/1/merge_requests/1/notes?order_by=updated_at&per_page=1",
        )
        .await,
    )
    .await;
    assert_eq!(by_update[0]["id"], json!(ids[0]));
    assert_eq!(by_update[0]["body"], json!("comment 0, edited"));

    for (query, error) in [
        ("order_by=id", "order_by does not have a valid value"),
        ("sort=newest", "sort does not have a valid value"),
        ("page=x", "page is invalid"),
    ] {
        let r = get(&d, &format!("/projects/1/merge_requests/1/notes?{query}")).await;
        assert_eq!(r.status(), StatusCode::BAD_REQUEST, "{query}");
        assert_eq!(json_of(r).await, json!({ "error": error }));
    }
}

#[tokio::test]
async fn note_create_fault_leaves_the_note_in_place() {
    let d = GitLabDouble::start().await;
    with_mr(&d);
    d.fail_next(Route::CreateNote, 1, FaultKind::CreateThenFail(502));
    let r = post(
        &d,
        "/projects/1/merge_requests/1/notes",
        json!({ "body": "summary <!-- shepherd:r7 -->" }),
    )
    .await;
    assert_eq!(r.status(), StatusCode::BAD_GATEWAY);
    assert!(header(&r, "content-type").starts_with("text/html"));
    let notes = d.notes("g/p", 1);
    assert_eq!(
        notes.len(),
        1,
        "the note exists although the answer was lost"
    );
    assert_eq!(notes[0].body, "summary <!-- shepherd:r7 -->");
    // A client that looks before writing again finds it, newest first.
    let listed = json_of(get(&d, "/projects/1/merge_requests/1/notes?per_page=5").await).await;
    assert_eq!(listed[0]["id"], json!(notes[0].id));
    assert_eq!(d.requests()[0].status, Some(502));
    assert_eq!(d.requests()[0].fault, Some(FaultKind::CreateThenFail(502)));

    // A plain status fault on an edit does nothing; the retry does.
    let id = notes[0].id;
    d.fail_next(Route::EditNote, 1, FaultKind::Status(502));
    let path = format!("/projects/1/merge_requests/1/notes/{id}");
    let r = put(&d, &path, json!({ "body": "edited" })).await;
    assert_eq!(r.status(), StatusCode::BAD_GATEWAY);
    assert_eq!(d.note(id).unwrap().body, "summary <!-- shepherd:r7 -->");
    let r = put(&d, &path, json!({ "body": "edited" })).await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(d.note(id).unwrap().edits, 1);
    // Reset on a create: nothing is written.
    d.fail_next(Route::CreateNote, 1, FaultKind::Reset);
    let err = client()
        .post(api(&d, "/projects/1/merge_requests/1/notes"))
        .header("PRIVATE-TOKEN", d.token())
        .json(&json!({ "body": "lost" }))
        .send()
        .await;
    assert!(err.is_err());
    assert_eq!(d.notes("g/p", 1).len(), 1);
}

/// What a webhook receiver saw: headers and JSON body of each POST, in arrival order.
#[derive(Clone, Default)]
struct Receiver {
    seen: Arc<Mutex<Vec<(HeaderMap, Value)>>>,
    /// The status it answers with.
    status: Arc<AtomicU16>,
}

impl Receiver {
    /// A tiny axum server on a free port; returns its hook URL.
    async fn start() -> (Receiver, String) {
        let receiver = Receiver::default();
        receiver.status.store(200, Ordering::SeqCst);
        let r = receiver.clone();
        let app = axum::Router::new().route(
            "/hooks/gitlab",
            axum::routing::post(
                move |headers: HeaderMap, axum::Json(body): axum::Json<Value>| {
                    let r = r.clone();
                    async move {
                        r.seen.lock().unwrap().push((headers, body));
                        StatusCode::from_u16(r.status.load(Ordering::SeqCst)).unwrap()
                    }
                },
            ),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/hooks/gitlab", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        (receiver, url)
    }

    fn seen(&self) -> Vec<(HeaderMap, Value)> {
        self.seen.lock().unwrap().clone()
    }
}

fn h<'a>(headers: &'a HeaderMap, name: &str) -> &'a str {
    headers
        .get(name)
        .unwrap_or_else(|| panic!("header {name} missing"))
        .to_str()
        .unwrap()
}

/// GitLab's hook time format: `2015-05-17 18:21:36 UTC`.
fn assert_hook_time(v: &Value) {
    let s = v.as_str().unwrap_or_else(|| panic!("{v} is not a time"));
    chrono::NaiveDateTime::parse_from_str(s, "%Y-%m-%d %H:%M:%S UTC")
        .unwrap_or_else(|e| panic!("{s}: {e}"));
}

#[tokio::test]
async fn webhooks_arrive_in_order_with_gitlabs_headers_and_payloads() {
    let d = GitLabDouble::start().await;
    let (receiver, url) = Receiver::start().await;
    d.add_project("g/p");
    let alice = d.add_user("alice");
    // Before a webhook is set, nothing is sent.
    d.add_mr("g/p", "g/p", "early", alice);
    d.set_webhook(&url, "s3cret");

    let iid = d.add_mr("g/p", "g/p", "feature", alice);
    let human = d.comment("g/p", iid, alice, "@shepherd test ARCH=arm64");
    let created = json_of(
        post(
            &d,
            "/projects/1/merge_requests/2/notes",
            json!({ "body": "Canary started <!-- shepherd:r1 -->" }),
        )
        .await,
    )
    .await;
    let bot_note = created["id"].as_u64().unwrap();
    put(
        &d,
        &format!("/projects/1/merge_requests/2/notes/{bot_note}"),
        json!({ "body": "Canary finished <!-- shepherd:r1 -->" }),
    )
    .await;
    let old_sha = d.mr("g/p", iid).unwrap().sha;
    let new_sha = d.push_mr("g/p", iid);
    let pipeline = json_of(
        post(
            &d,
            "/projects/1/pipeline",
            json!({ "ref": "main", "variables": [{ "key": "SHEPHERD_REQUEST_ID", "value": "r1" }] }),
        )
        .await,
    )
    .await;
    let pid = pipeline["id"].as_u64().unwrap();
    d.set_status(pid, "running");
    let job = d.add_job(pid, "boot", "test", "running");
    post(
        &d,
        &format!("/projects/1/pipelines/{pid}/cancel"),
        json!({}),
    )
    .await;

    let expected = [
        ("Merge Request Hook", "merge_request"),
        ("Note Hook", "note"),
        ("Note Hook", "note"),
        ("Note Hook", "note"),
        ("Merge Request Hook", "merge_request"),
        ("Pipeline Hook", "pipeline"),
        ("Pipeline Hook", "pipeline"),
        ("Job Hook", "build"),
        ("Job Hook", "build"),
        ("Pipeline Hook", "pipeline"),
    ];
    assert!(
        d.wait_hook_deliveries(expected.len(), WAIT).await,
        "{:?}",
        d.hook_deliveries()
    );
    let seen = receiver.seen();
    assert_eq!(seen.len(), expected.len());
    let kinds: Vec<(&str, &str)> = seen
        .iter()
        .map(|(hd, b)| (h(hd, "x-gitlab-event"), b["object_kind"].as_str().unwrap()))
        .collect();
    assert_eq!(kinds, expected);

    // Headers of every delivery.
    let mut webhook_uuids = std::collections::HashSet::new();
    let mut keys_seen = std::collections::HashSet::new();
    for (hd, _) in &seen {
        assert_eq!(h(hd, "content-type"), "application/json");
        assert_eq!(h(hd, "user-agent"), "GitLab/17.11.1");
        assert_eq!(h(hd, "x-gitlab-token"), "s3cret");
        assert_eq!(h(hd, "x-gitlab-instance"), d.url());
        for name in [
            "x-gitlab-webhook-uuid",
            "x-gitlab-event-uuid",
            "idempotency-key",
        ] {
            uuid::Uuid::parse_str(h(hd, name)).unwrap_or_else(|e| panic!("{name}: {e}"));
        }
        assert!(webhook_uuids.insert(h(hd, "x-gitlab-webhook-uuid").to_owned()));
        assert!(keys_seen.insert(h(hd, "idempotency-key").to_owned()));
    }
    let deliveries = d.hook_deliveries();
    assert_eq!(deliveries.len(), expected.len());
    for (delivery, (hd, body)) in deliveries.iter().zip(&seen) {
        assert_eq!(delivery.outcome, HookOutcome::Status(200));
        assert_eq!(delivery.status(), Some(200));
        assert_eq!(&delivery.body, body);
        assert_eq!(delivery.idempotency_key, h(hd, "idempotency-key"));
        assert_eq!(delivery.event_uuid, h(hd, "x-gitlab-event-uuid"));
        assert_eq!(
            delivery.webhook_uuid.as_deref(),
            Some(h(hd, "x-gitlab-webhook-uuid"))
        );
        assert_eq!(delivery.url, url);
    }
    assert_eq!(deliveries[0].event, WebhookEvent::MergeRequest);

    // Merge Request Hook, open.
    let open = &seen[0].1;
    assert_eq!(open["event_type"], json!("merge_request"));
    assert_eq!(open["user"]["username"], json!("alice"));
    assert_eq!(open["user"]["email"], json!("[REDACTED]"));
    for k in ["id", "name", "username", "avatar_url", "email"] {
        assert!(open["user"].get(k).is_some(), "user.{k}");
    }
    for k in [
        "id",
        "name",
        "description",
        "web_url",
        "git_ssh_url",
        "git_http_url",
        "namespace",
        "visibility_level",
        "path_with_namespace",
        "default_branch",
        "homepage",
        "url",
        "ssh_url",
        "http_url",
    ] {
        assert!(open["project"].get(k).is_some(), "project.{k}");
    }
    assert_eq!(open["project"]["path_with_namespace"], json!("g/p"));
    let attrs = &open["object_attributes"];
    assert_eq!(attrs["action"], json!("open"));
    assert_eq!(attrs["iid"], json!(2));
    assert_eq!(attrs["state"], json!("opened"));
    assert_eq!(attrs["source_branch"], json!("feature"));
    assert_eq!(attrs["target_branch"], json!("main"));
    assert_eq!(attrs["author_id"], json!(alice));
    assert_eq!(attrs["last_commit"]["id"], json!(old_sha));
    assert_eq!(
        attrs["url"],
        json!(format!("{}/g/p/-/merge_requests/2", d.url()))
    );
    assert!(attrs.get("oldrev").is_none());
    chrono::DateTime::parse_from_rfc3339(attrs["created_at"].as_str().unwrap()).unwrap();
    assert_eq!(
        open["repository"]["homepage"],
        json!(format!("{}/g/p", d.url()))
    );

    // Note Hook for the human's comment, then shepherd's own note (create and update).
    let note = &seen[1].1;
    assert_eq!(note["event_type"], json!("note"));
    assert_eq!(note["user"]["username"], json!("alice"));
    assert_eq!(note["project_id"], json!(1));
    let a = &note["object_attributes"];
    assert_eq!(a["id"], json!(human));
    assert_eq!(a["note"], json!("@shepherd test ARCH=arm64"));
    assert_eq!(a["noteable_type"], json!("MergeRequest"));
    assert_eq!(a["author_id"], json!(alice));
    assert_eq!(a["system"], json!(false));
    assert_eq!(a["action"], json!("create"));
    assert_eq!(
        a["url"],
        json!(format!("{}/g/p/-/merge_requests/2#note_{human}", d.url()))
    );
    assert_hook_time(&a["created_at"]);
    assert_hook_time(&a["updated_at"]);
    assert_eq!(note["merge_request"]["iid"], json!(2));
    assert_eq!(note["merge_request"]["state"], json!("opened"));
    assert_eq!(note["merge_request"]["last_commit"]["id"], json!(old_sha));
    assert_hook_time(&note["merge_request"]["created_at"]);
    let mine = &seen[2].1;
    assert_eq!(mine["user"]["username"], json!(USERNAME));
    assert_eq!(mine["object_attributes"]["id"], json!(bot_note));
    assert_eq!(mine["object_attributes"]["action"], json!("create"));
    let edit = &seen[3].1;
    assert_eq!(edit["object_attributes"]["action"], json!("update"));
    assert_eq!(
        edit["object_attributes"]["note"],
        json!("Canary finished <!-- shepherd:r1 -->")
    );

    // Merge Request Hook, update after a push.
    let push = &seen[4].1["object_attributes"];
    assert_eq!(push["action"], json!("update"));
    assert_eq!(push["oldrev"], json!(old_sha));
    assert_eq!(push["last_commit"]["id"], json!(new_sha));

    // Pipeline Hooks: created, running, canceled (with the job).
    let p = &seen[5].1;
    let pa = &p["object_attributes"];
    for k in [
        "id",
        "iid",
        "name",
        "ref",
        "tag",
        "sha",
        "before_sha",
        "source",
        "status",
        "detailed_status",
        "stages",
        "created_at",
        "finished_at",
        "duration",
        "queued_duration",
        "variables",
        "url",
    ] {
        assert!(pa.get(k).is_some(), "object_attributes.{k}");
    }
    assert_eq!(pa["id"], json!(pid));
    assert_eq!(pa["status"], json!("created"));
    assert_eq!(pa["source"], json!("api"));
    assert_eq!(pa["ref"], json!("main"));
    assert_eq!(
        pa["variables"],
        json!([{ "key": "SHEPHERD_REQUEST_ID", "value": "r1" }])
    );
    assert_eq!(pa["finished_at"], Value::Null);
    assert_hook_time(&pa["created_at"]);
    assert_eq!(p["merge_request"], Value::Null);
    assert_eq!(p["user"]["username"], json!(USERNAME));
    assert_eq!(p["commit"]["id"], pa["sha"]);
    assert_eq!(p["builds"], json!([]));
    assert_eq!(seen[6].1["object_attributes"]["status"], json!("running"));
    assert_eq!(
        seen[6].1["object_attributes"]["detailed_status"],
        json!("running")
    );

    // Job Hooks: the job added running, then canceled.
    let j = &seen[7].1;
    for k in [
        "ref",
        "tag",
        "before_sha",
        "sha",
        "build_id",
        "build_name",
        "build_stage",
        "build_status",
        "build_created_at",
        "build_started_at",
        "build_finished_at",
        "build_duration",
        "build_queued_duration",
        "build_allow_failure",
        "build_failure_reason",
        "pipeline_id",
        "project_id",
        "project_name",
        "user",
        "commit",
        "repository",
        "runner",
        "environment",
    ] {
        assert!(j.get(k).is_some(), "{k}");
    }
    assert_eq!(j["build_id"], json!(job));
    assert_eq!(j["build_name"], json!("boot"));
    assert_eq!(j["build_stage"], json!("test"));
    assert_eq!(j["build_status"], json!("running"));
    assert_eq!(j["pipeline_id"], json!(pid));
    assert_eq!(
        j["commit"]["id"],
        json!(pid),
        "the pipeline's id, as documented"
    );
    assert_hook_time(&j["build_started_at"]);
    assert_eq!(j["build_finished_at"], Value::Null);
    assert!(j["runner"].is_object());
    assert_eq!(seen[8].1["build_status"], json!("canceled"));
    assert_hook_time(&seen[8].1["build_finished_at"]);
    let canceled = &seen[9].1;
    assert_eq!(canceled["object_attributes"]["status"], json!("canceled"));
    assert_hook_time(&canceled["object_attributes"]["finished_at"]);
    assert_eq!(canceled["object_attributes"]["stages"], json!(["test"]));
    let builds = canceled["builds"].as_array().unwrap();
    assert_eq!(builds.len(), 1);
    for k in [
        "id",
        "stage",
        "name",
        "status",
        "created_at",
        "started_at",
        "finished_at",
        "duration",
        "queued_duration",
        "failure_reason",
        "when",
        "manual",
        "allow_failure",
        "user",
        "runner",
        "artifacts_file",
        "environment",
    ] {
        assert!(builds[0].get(k).is_some(), "builds[].{k}");
    }
    assert_eq!(builds[0]["status"], json!("canceled"));
}

#[tokio::test]
async fn redeliver_keeps_the_idempotency_key_and_failures_are_recorded() {
    let d = GitLabDouble::start().await;
    let (receiver, url) = Receiver::start().await;
    let alice = with_mr(&d);
    d.set_webhook(&url, "tok");
    receiver.status.store(500, Ordering::SeqCst);
    d.comment("g/p", 1, alice, "@shepherd ping");
    assert!(d.wait_hook_deliveries(1, WAIT).await);
    assert_eq!(d.hook_deliveries()[0].outcome, HookOutcome::Status(500));

    // GitLab's "Resend request": same event, same keys, a new request id.
    receiver.status.store(202, Ordering::SeqCst);
    assert_eq!(d.redeliver(0).await, Ok(202));
    let seen = receiver.seen();
    assert_eq!(seen.len(), 2);
    let (first, again) = (&seen[0].0, &seen[1].0);
    for name in ["idempotency-key", "x-gitlab-event-uuid", "x-gitlab-event"] {
        assert_eq!(h(first, name), h(again, name), "{name}");
    }
    assert_ne!(
        h(first, "x-gitlab-webhook-uuid"),
        h(again, "x-gitlab-webhook-uuid")
    );
    assert_eq!(seen[0].1, seen[1].1);
    let deliveries = d.hook_deliveries();
    assert_eq!(deliveries.len(), 2);
    assert_eq!(deliveries[1].redelivery_of, Some(0));
    assert_eq!(deliveries[1].outcome, HookOutcome::Status(202));
    assert_eq!(deliveries[1].idempotency_key, deliveries[0].idempotency_key);
    assert_eq!(
        d.redeliver(7).await,
        Err("there is no delivery 7".to_owned())
    );

    // A receiver that is gone: the error is recorded, nothing is retried.
    let closed = {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        format!("http://{}/hooks/gitlab", l.local_addr().unwrap())
    };
    d.set_webhook(&closed, "tok");
    d.comment("g/p", 1, alice, "@shepherd ping");
    assert!(d.wait_hook_deliveries(3, WAIT).await);
    let last = d.hook_deliveries().pop().unwrap();
    assert!(
        matches!(&last.outcome, HookOutcome::Error(e) if !e.is_empty()),
        "{:?}",
        last.outcome
    );
    assert_eq!(last.status(), None);
    assert_eq!(receiver.seen().len(), 2);
}

#[tokio::test]
async fn webhook_events_can_be_switched_off() {
    let d = GitLabDouble::start().await;
    let (receiver, url) = Receiver::start().await;
    d.add_project("g/p");
    let alice = d.add_user("alice");
    d.set_webhook(&url, "tok");
    d.set_webhook_events(true, false, false, false);
    let iid = d.add_mr("g/p", "g/p", "f", alice);
    let p = d.add_pipeline("g/p", "main", "running", &[]);
    d.set_status(p.id, "success");
    d.add_job(p.id, "build", "build", "success");
    d.comment("g/p", iid, alice, "only this one");
    assert!(d.wait_hook_deliveries(1, WAIT).await);
    // The background sender works in order: once the note's hook is done, nothing else is queued.
    let deliveries = d.hook_deliveries();
    assert_eq!(deliveries.len(), 1, "{deliveries:?}");
    assert_eq!(deliveries[0].event, WebhookEvent::Note);
    assert_eq!(receiver.seen().len(), 1);
    d.remove_webhook();
    d.comment("g/p", iid, alice, "not sent");
    assert_eq!(d.hook_deliveries().len(), 1);
}

#[tokio::test]
async fn timed_auto_finish_sends_hooks_without_polling() {
    let d = GitLabDouble::start().await;
    let (receiver, url) = Receiver::start().await;
    d.add_project("g/p");
    d.set_webhook(&url, "tok");
    d.set_webhook_events(false, false, true, false);
    d.set_auto_finish(Some(AutoFinish::after(
        Duration::from_millis(50),
        Duration::from_millis(50),
        AutoOutcome::Failed {
            job: "boot".to_owned(),
            failure_reason: "runner_system_failure".to_owned(),
        },
    )));
    post(&d, "/projects/1/pipeline", json!({ "ref": "main" })).await;
    let finished = d
        .wait_hooks(
            |ds| {
                ds.iter()
                    .any(|d| d.is_done() && d.body["object_attributes"]["status"] == "failed")
            },
            WAIT,
        )
        .await;
    assert!(finished, "{:?}", d.hook_deliveries());
    let statuses: Vec<String> = receiver
        .seen()
        .iter()
        .map(|(_, b)| {
            b["object_attributes"]["status"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    assert_eq!(statuses, ["created", "running", "failed"]);
    let last = &receiver.seen()[2].1;
    assert_eq!(
        last["object_attributes"]["stages"],
        json!(["build", "test"])
    );
    let failed: Vec<&Value> = last["builds"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|b| b["status"] == "failed")
        .collect();
    assert_eq!(failed[0]["failure_reason"], json!("runner_system_failure"));
    // Nobody read the pipeline.
    assert!(
        d.requests().iter().all(|r| r.is(Route::CreatePipeline)),
        "only the create"
    );
}

#[tokio::test]
async fn payload_builders_and_send_hook_work_without_a_double() {
    let (receiver, url) = Receiver::start().await;
    let base = "https://gitlab.example.com";
    let alice = User {
        id: 7,
        username: "alice".to_owned(),
        name: "Alice".to_owned(),
    };
    let now = chrono::Utc::now();
    let mr = MergeRequest {
        id: 500,
        iid: 3,
        project_id: 9,
        project_path: "kernel/ci".to_owned(),
        source_project_id: 9,
        source_project_path: "kernel/ci".to_owned(),
        source_branch: "fix".to_owned(),
        target_branch: "main".to_owned(),
        title: "Draft: fix".to_owned(),
        description: String::new(),
        state: "opened".to_owned(),
        author: alice.clone(),
        sha: MergeRequest::head_sha("kernel/ci", "fix", 0),
        pushes: 0,
        created_at: now,
        updated_at: now,
        web_url: format!("{base}/kernel/ci/-/merge_requests/3"),
    };
    let note = NoteRecord {
        id: 42,
        project_id: 9,
        mr_iid: 3,
        noteable_id: 500,
        author_id: 7,
        author: "alice".to_owned(),
        body: "@shepherd test".to_owned(),
        created_at: now,
        updated_at: now,
        edits: 0,
    };
    let body = note_hook_payload(base, &mr, &alice, &note, "create");
    assert_eq!(body["object_attributes"]["note"], json!("@shepherd test"));
    assert_eq!(
        body["object_attributes"]["created_at"],
        json!(hook_time(now))
    );
    assert_eq!(body["merge_request"]["draft"], json!(true));
    assert_eq!(send_hook(&url, "tok", "Note Hook", &body).await, Ok(200));
    let mr_body = merge_request_hook_payload(base, &mr, &alice, "update", Some("abc"));
    assert_eq!(mr_body["object_attributes"]["oldrev"], json!("abc"));
    let sender = HookSender::new();
    assert_eq!(
        sender
            .send(&url, "tok", "Merge Request Hook", &mr_body)
            .await,
        Ok(200)
    );
    let seen = receiver.seen();
    assert_eq!(seen.len(), 2);
    assert_eq!(h(&seen[0].0, "x-gitlab-event"), "Note Hook");
    assert_eq!(h(&seen[0].0, "x-gitlab-instance"), base);
    assert_eq!(h(&seen[0].0, "x-gitlab-token"), "tok");
    assert_ne!(
        h(&seen[0].0, "idempotency-key"),
        h(&seen[1].0, "idempotency-key")
    );
    assert_eq!(seen[1].1, mr_body);
}

#[tokio::test]
async fn wait_notes_wakes_when_a_note_is_written() {
    let d = GitLabDouble::start().await;
    with_mr(&d);
    let url = api(&d, "/projects/1/merge_requests/1/notes");
    let token = d.token().to_owned();
    let writer = tokio::spawn(async move {
        client()
            .post(url)
            .header("PRIVATE-TOKEN", token)
            .json(&json!({ "body": "summary <!-- shepherd:r1 -->" }))
            .send()
            .await
            .map(|r| r.status())
    });
    let found = d
        .wait_notes(
            "g/p",
            1,
            |notes| {
                notes
                    .iter()
                    .any(|n| n.author == USERNAME && n.body.contains("shepherd:r1"))
            },
            WAIT,
        )
        .await;
    assert!(found);
    assert_eq!(writer.await.unwrap().unwrap(), StatusCode::CREATED);
    let never = d
        .wait_notes("g/p", 1, |notes| notes.len() > 1, Duration::from_millis(50))
        .await;
    assert!(!never);
}

/// Jobs one by one, as the herder reads and retries them: `GET /projects/:id/jobs/:job_id`,
/// its log (`.../trace`, plain text), and `POST .../retry` (a new job of the same name; the old
/// one is listed again only with `include_retried=true`; a job that has not finished, or was
/// already retried, is not retryable: 403).
#[tokio::test]
async fn jobs_are_read_traced_and_retried_like_gitlab() {
    let d = GitLabDouble::start().await;
    let p = d.add_pipeline("g/p", "main", "failed", &[]);
    let boot = d.add_job(p.id, "boot x86_64", "test", "failed");
    d.set_job_status(boot, "failed", Some("runner_system_failure"));
    let running = d.add_job(p.id, "lint", "test", "running");
    d.set_trace(boot, "step 1\nConnection reset by peer\n");

    let r = get(&d, &format!("/projects/g%2Fp/jobs/{boot}")).await;
    assert_eq!(r.status(), StatusCode::OK);
    let job = json_of(r).await;
    assert_eq!(job["name"], json!("boot x86_64"));
    assert_eq!(job["failure_reason"], json!("runner_system_failure"));
    assert_eq!(job["pipeline"]["id"], json!(p.id));

    let r = get(&d, &format!("/projects/1/jobs/{boot}/trace")).await;
    assert_eq!(r.status(), StatusCode::OK);
    assert!(header(&r, "content-type").starts_with("text/plain"));
    assert_eq!(
        r.text().await.expect("trace"),
        "step 1\nConnection reset by peer\n"
    );

    let r = post(&d, &format!("/projects/1/jobs/{boot}/retry"), json!({})).await;
    assert_eq!(r.status(), StatusCode::CREATED);
    let new = json_of(r).await;
    let new_id = new["id"].as_u64().expect("id");
    assert!(new_id > boot);
    assert_eq!(
        (new["name"].clone(), new["status"].clone()),
        (json!("boot x86_64"), json!("pending"))
    );
    assert!(d.job(boot).expect("old job").retried);

    let listed = |r: Value| -> Vec<u64> {
        r.as_array()
            .expect("array")
            .iter()
            .map(|j| j["id"].as_u64().expect("id"))
            .collect()
    };
    let r = get(&d, &format!("/projects/1/pipelines/{}/jobs", p.id)).await;
    assert_eq!(listed(json_of(r).await), vec![running, new_id]);
    let r = get(
        &d,
        &format!("/projects/1/pipelines/{}/jobs?include_retried=true", p.id),
    )
    .await;
    assert_eq!(listed(json_of(r).await), vec![boot, running, new_id]);

    for (job, why) in [(boot, "already retried"), (running, "not finished")] {
        let r = post(&d, &format!("/projects/1/jobs/{job}/retry"), json!({})).await;
        assert_eq!(r.status(), StatusCode::FORBIDDEN, "{why}");
        assert_eq!(
            json_of(r).await,
            json!({ "message": "403 Forbidden - Job is not retryable" })
        );
    }
    let r = get(&d, "/projects/1/jobs/999999").await;
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    assert_eq!(json_of(r).await, json!({ "message": "404 Job Not Found" }));
    let other = d.add_pipeline("g/other", "main", "failed", &[]);
    let theirs = d.add_job(other.id, "build", "build", "failed");
    let r = get(&d, &format!("/projects/1/jobs/{theirs}")).await;
    assert_eq!(r.status(), StatusCode::NOT_FOUND, "another project's job");
}

/// shepherd's client on the job routes: a job with its pipeline, the tail of a long log read
/// as it streams (never the whole log), and a retry.
#[tokio::test]
async fn the_client_reads_a_jobs_trace_tail_and_retries_it() {
    use shepherd_core::gitlab::{GitLab, GitLabSettings, JobStatus};
    let d = GitLabDouble::start().await;
    let p = d.add_pipeline("g/p", "main", "failed", &[]);
    let boot = d.add_job(p.id, "boot", "test", "failed");
    d.set_job_status(boot, "failed", Some("stuck_or_timeout_failure"));
    // 2 MiB of log with the interesting part at the end.
    let long = format!(
        "{}\nkernel: Out of memory: Killed process 4242\n",
        "x".repeat(2 << 20)
    );
    d.set_trace(boot, &long);
    let mut settings = GitLabSettings::new(url::Url::parse(&d.url()).expect("url"));
    settings.token = Some(d.token().to_string());
    let metrics = std::sync::Arc::new(shepherd_core::metrics::Metrics::new().expect("metrics"));
    let gitlab = GitLab::new(settings, metrics).expect("client");

    let job = gitlab.job("g/p", boot).await.expect("job");
    assert_eq!(job.status, JobStatus::Failed);
    assert_eq!(
        job.failure_reason.as_deref(),
        Some("stuck_or_timeout_failure")
    );
    assert_eq!(job.pipeline.as_ref().map(|p| p.id), Some(p.id));

    let tail = gitlab
        .job_trace_tail("g/p", boot, 4096)
        .await
        .expect("trace");
    assert_eq!(tail.len(), 4096);
    assert!(long.ends_with(&tail));
    assert!(tail.ends_with("Killed process 4242\n"));
    let short = gitlab
        .job_trace_tail("g/p", boot, 10 << 20)
        .await
        .expect("trace");
    assert_eq!(short, long, "a log shorter than the bound is read whole");

    let new = gitlab.retry_job("g/p", boot).await.expect("retry");
    assert_eq!(
        (new.name.as_str(), new.status),
        ("boot", JobStatus::Pending)
    );
    let again = gitlab.retry_job("g/p", boot).await;
    assert!(again.is_err(), "a retried job is not retryable: {again:?}");
    assert!(matches!(
        gitlab.job("g/p", 999_999).await,
        Err(shepherd_core::gitlab::GitLabError::NotFound { .. })
    ));
}

async fn delete(d: &GitLabDouble, path: &str) -> Response {
    client()
        .delete(api(d, path))
        .header("PRIVATE-TOKEN", d.token())
        .send()
        .await
        .expect("DELETE answered")
}

#[tokio::test]
async fn ci_variables_of_projects_and_groups_are_kept_like_gitlab() {
    let d = GitLabDouble::start().await;
    d.add_project("cki/pipeline");
    d.add_project_variable("cki/pipeline", "BEAKER_URL", "https://beaker-1");

    // Listed with GitLab's fields; read one by key.
    let list = json_of(get(&d, "/projects/cki%2Fpipeline/variables").await).await;
    assert_eq!(
        list,
        json!([{"variable_type": "env_var", "key": "BEAKER_URL", "value": "https://beaker-1",
                "protected": false, "masked": false, "raw": false, "environment_scope": "*",
                "description": null}])
    );
    let one = get(&d, "/projects/1/variables/BEAKER_URL").await;
    assert_eq!(one.status(), StatusCode::OK);
    assert_eq!(json_of(one).await["value"], "https://beaker-1");

    // Create, then the same key again: 400 with Rails' message; a bad key; a missing value.
    let created = post(
        &d,
        "/projects/cki%2Fpipeline/variables",
        json!({"key": "LAB", "value": "b"}),
    )
    .await;
    assert_eq!(created.status(), StatusCode::CREATED);
    assert_eq!(json_of(created).await["key"], "LAB");
    let again = post(
        &d,
        "/projects/cki%2Fpipeline/variables",
        json!({"key": "LAB", "value": "c"}),
    )
    .await;
    assert_eq!(again.status(), StatusCode::BAD_REQUEST);
    assert_eq!(
        json_of(again).await,
        json!({"message": {"key": ["(LAB) has already been taken"]}})
    );
    let bad = post(
        &d,
        "/projects/cki%2Fpipeline/variables",
        json!({"key": "NO-DASH", "value": "x"}),
    )
    .await;
    assert_eq!(bad.status(), StatusCode::BAD_REQUEST);
    assert!(
        json_of(bad).await["message"]["key"][0]
            .as_str()
            .is_some_and(|m| m.contains("only letters"))
    );
    let missing = post(
        &d,
        "/projects/cki%2Fpipeline/variables",
        json!({"key": "X"}),
    )
    .await;
    assert_eq!(missing.status(), StatusCode::BAD_REQUEST);
    assert_eq!(json_of(missing).await, json!({"error": "value is missing"}));

    // Update keeps what is not given; delete is 204 and then 404 with GitLab's body.
    let updated = put(
        &d,
        "/projects/1/variables/BEAKER_URL",
        json!({"value": "https://beaker-2"}),
    )
    .await;
    assert_eq!(updated.status(), StatusCode::OK);
    assert_eq!(json_of(updated).await["value"], "https://beaker-2");
    assert_eq!(
        delete(&d, "/projects/1/variables/LAB").await.status(),
        StatusCode::NO_CONTENT
    );
    let gone = get(&d, "/projects/1/variables/LAB").await;
    assert_eq!(gone.status(), StatusCode::NOT_FOUND);
    assert_eq!(
        json_of(gone).await,
        json!({"message": "404 Variable Not Found"})
    );
    assert_eq!(
        d.project_variables("cki/pipeline")
            .expect("project")
            .iter()
            .map(|v| (v.key.as_str(), v.value.as_str()))
            .collect::<Vec<_>>(),
        [("BEAKER_URL", "https://beaker-2")]
    );

    // Two scopes of one key: which one must be said.
    for scope in ["production", "staging"] {
        let r = post(
            &d,
            "/projects/1/variables",
            json!({"key": "TARGET", "value": scope, "environment_scope": scope}),
        )
        .await;
        assert_eq!(r.status(), StatusCode::CREATED);
    }
    assert_eq!(
        get(&d, "/projects/1/variables/TARGET").await.status(),
        StatusCode::CONFLICT
    );
    let staging = get(
        &d,
        "/projects/1/variables/TARGET?filter%5Benvironment_scope%5D=staging",
    )
    .await;
    assert_eq!(json_of(staging).await["value"], "staging");

    // A group is any namespace of a project, by path or id; its variables are its own.
    let g = post(
        &d,
        "/groups/cki/variables",
        json!({"key": "BEAKER_URL", "value": "g"}),
    )
    .await;
    assert_eq!(g.status(), StatusCode::CREATED);
    assert_eq!(d.group_variables("cki").expect("group").len(), 1);
    assert_eq!(
        d.project_variables("cki/pipeline").expect("project").len(),
        3
    );
    let nope = get(&d, "/groups/nope/variables").await;
    assert_eq!(nope.status(), StatusCode::NOT_FOUND);
    assert_eq!(
        json_of(nope).await,
        json!({"message": "404 Group Not Found"})
    );
    let no_project = get(&d, "/projects/nope%2Fnope/variables").await;
    assert_eq!(
        json_of(no_project).await,
        json!({"message": "404 Project Not Found"})
    );

    // Maintainers only: the guest token reads and writes nothing.
    let guest = client()
        .post(api(&d, "/projects/1/variables"))
        .header("PRIVATE-TOKEN", d.guest_token())
        .json(&json!({"key": "G", "value": "g"}))
        .send()
        .await
        .expect("answered");
    assert_eq!(guest.status(), StatusCode::FORBIDDEN);
    assert_eq!(json_of(guest).await, json!({"message": "403 Forbidden"}));
    assert_eq!(
        d.project_variables("cki/pipeline").expect("project").len(),
        3
    );
}

/// shepherd's client on the CI/CD variables routes, against the double: read a project's and
/// a group's variables, create, update and delete one, and GitLab's refusals as typed errors.
#[tokio::test]
async fn the_client_reads_sets_and_deletes_ci_variables() {
    use shepherd_core::gitlab::{GitLab, GitLabError, GitLabSettings, VariableOwner};
    let d = GitLabDouble::start().await;
    d.add_project("cki/pipeline");
    d.add_project_variable("cki/pipeline", "BEAKER_URL", "https://beaker-1");
    let mut settings = GitLabSettings::new(url::Url::parse(&d.url()).expect("url"));
    settings.token = Some(d.token().to_string());
    let metrics = std::sync::Arc::new(shepherd_core::metrics::Metrics::new().expect("metrics"));
    let gitlab = GitLab::new(settings, metrics).expect("client");
    let project = VariableOwner::Project("cki/pipeline");
    let group = VariableOwner::Group("cki");
    let values = |vars: Vec<shepherd_core::gitlab::CiVariable>| {
        vars.into_iter()
            .map(|v| (v.key, v.value))
            .collect::<Vec<_>>()
    };

    let before = gitlab.ci_variables(project).await.expect("list");
    assert_eq!(
        values(before),
        [("BEAKER_URL".to_string(), "https://beaker-1".to_string())]
    );
    gitlab
        .update_ci_variable(project, "BEAKER_URL", "https://beaker-2")
        .await
        .expect("update");
    gitlab
        .create_ci_variable(project, "LAB", "backup")
        .await
        .expect("create");
    // A second create of the same key is GitLab's 400, not a second variable.
    let again = gitlab.create_ci_variable(project, "LAB", "other").await;
    assert!(
        matches!(&again, Err(GitLabError::BadRequest { message }) if message.contains("already been taken")),
        "{again:?}"
    );
    assert_eq!(
        values(gitlab.ci_variables(project).await.expect("list")),
        [
            ("BEAKER_URL".to_string(), "https://beaker-2".to_string()),
            ("LAB".to_string(), "backup".to_string())
        ]
    );
    gitlab
        .delete_ci_variable(project, "LAB")
        .await
        .expect("delete");
    assert!(matches!(
        gitlab.delete_ci_variable(project, "LAB").await,
        Err(GitLabError::NotFound { .. })
    ));
    assert!(matches!(
        gitlab.update_ci_variable(project, "LAB", "x").await,
        Err(GitLabError::NotFound { .. })
    ));

    // A group's variables are its own; an unknown group is NotFound.
    gitlab
        .create_ci_variable(group, "BEAKER_URL", "g")
        .await
        .expect("group create");
    assert_eq!(
        values(gitlab.ci_variables(group).await.expect("group list")),
        [("BEAKER_URL".to_string(), "g".to_string())]
    );
    assert_eq!(
        d.project_variables("cki/pipeline").expect("project").len(),
        1
    );
    assert!(matches!(
        gitlab.ci_variables(VariableOwner::Group("nope")).await,
        Err(GitLabError::NotFound { .. })
    ));
}
