//! Tests of the GitLab double itself, spoken to over HTTP with reqwest the way shepherd's client
//! speaks to GitLab.
//!
//! They pin what is faithful to GitLab's documented v4 API (paths, auth headers, status codes, JSON
//! field names and types, error bodies, pagination headers, the rate limiter's 429) and what each
//! injected fault looks like from the client's side, so that the end-to-end tests built on the double
//! can trust it. What the double simplifies is listed in `tests/src/gitlab/mod.rs`.

use std::time::Duration;

use reqwest::{Client, Method, Response, StatusCode};
use serde_json::{Value, json};
use shepherd_tests::gitlab::{
    AutoFinish, AutoOutcome, BLANK_SHA, FaultKind, Faults, GitLabDouble, Route, RouteMatcher, Step,
    USERNAME,
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
