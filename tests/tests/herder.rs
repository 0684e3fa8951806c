//! The herder (issue 13), as far as it is built: `shepherd herder check --job-url URL` judges a
//! job of the GitLab double with the configured matchers and says what the herder would do,
//! reading only (the double sees no write from it).

use std::time::Duration;

use shepherd_tests::gitlab::GitLabDouble;
use shepherd_tests::harness::{Backend, ShepherdConfig, TestStore, shepherd_bin};

const WAIT: Duration = Duration::from_secs(30);

const HERDER: &str = r#"
[gitlab_comments]
webhook_secret_env = "TEST_HOOK_SECRET"
[herder]
projects = ["g/p"]
targets = []
trace_tail_bytes = 4096
[[herder.matchers]]
name = "runner-system-failure"
description = "the runner lost the job"
action = "retry"
failure_reason = ["runner_system_failure"]
retry_delays = ["1m", "5m"]
retry_limit = 2
[[herder.matchers]]
name = "connection-reset"
action = "retry"
messages = ["Connection reset by peer"]
retry_delays = ["15m"]
[[herder.matchers]]
name = "oom"
action = "report"
messages = ["/out of memory/i"]
"#;

struct Check {
    code: i32,
    stdout: String,
    stderr: String,
}

async fn check(config: &ShepherdConfig, job_url: &str) -> Check {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("shepherd.toml");
    std::fs::write(&path, config.render()).expect("write config");
    let out = tokio::time::timeout(
        WAIT,
        tokio::process::Command::new(shepherd_bin())
            .args(["herder", "check", "--job-url", job_url, "--config"])
            .arg(&path)
            .current_dir(dir.path())
            .env_remove("SHEPHERD_CONFIG")
            .env("TEST_GITLAB_TOKEN", &config.gitlab_token)
            .stdin(std::process::Stdio::null())
            .output(),
    )
    .await
    .expect("answers in time")
    .expect("runs");
    Check {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

fn job_url(gitlab: &GitLabDouble, project: &str, id: u64) -> String {
    format!("{}/{project}/-/jobs/{id}", gitlab.url())
}

/// The line of `out` starting with `key`.
fn line<'a>(out: &'a Check, key: &str) -> &'a str {
    out.stdout
        .lines()
        .find(|l| l.starts_with(key))
        .unwrap_or_else(|| panic!("no {key:?} line in:\n{}\n{}", out.stdout, out.stderr))
}

#[tokio::test]
async fn herder_check_names_the_matcher_and_the_action_and_writes_nothing() {
    let store = TestStore::new(Backend::Sqlite).await;
    let gitlab = GitLabDouble::start().await;
    let mut config = ShepherdConfig::new(&store, &gitlab);
    config.extra = HERDER.into();

    let p = gitlab.add_pipeline("g/p", "main", "failed", &[]);
    let runner = gitlab.add_job(p.id, "boot x86_64", "test", "failed");
    gitlab.set_job_status(runner, "failed", Some("runner_system_failure"));
    let reset = gitlab.add_job(p.id, "test ppc64le", "test", "failed");
    gitlab.set_trace(
        reset,
        &format!(
            "{}\nfetching artifacts\nerror: Connection reset by peer (os error 104)\n",
            "noise\n".repeat(5000)
        ),
    );
    let oom = gitlab.add_job(p.id, "build", "build", "failed");
    gitlab.set_trace(oom, "cc1: Out Of Memory allocating 1 GB\n");
    let plain = gitlab.add_job(p.id, "lint", "test", "failed");
    gitlab.set_trace(plain, "error: unused variable `x`\n");
    let ok = gitlab.add_job(p.id, "docs", "test", "success");
    let other = gitlab.add_pipeline("g/other", "main", "failed", &[]);
    let theirs = gitlab.add_job(other.id, "boot", "test", "failed");
    gitlab.set_job_status(theirs, "failed", Some("runner_system_failure"));
    // Two earlier retries of a job (made by the test, through the double's own API).
    let client = reqwest::Client::new();
    let mut attempts = vec![runner];
    for _ in 0..2 {
        let last = *attempts.last().expect("a job");
        let r = client
            .post(format!(
                "{}/api/v4/projects/g%2Fp/jobs/{last}/retry",
                gitlab.url()
            ))
            .header("PRIVATE-TOKEN", gitlab.token())
            .send()
            .await
            .expect("retry");
        assert_eq!(r.status().as_u16(), 201);
        let new: serde_json::Value = r.json().await.expect("job");
        let id = new["id"].as_u64().expect("id");
        gitlab.set_job_status(id, "failed", Some("runner_system_failure"));
        attempts.push(id);
    }
    let writes_before = gitlab
        .requests()
        .iter()
        .filter(|r| r.method != "GET")
        .count();

    let first = check(&config, &job_url(&gitlab, "g/p", runner)).await;
    assert_eq!(first.code, 0, "{}", first.stderr);
    assert!(line(&first, "job ").contains("`boot x86_64` of g/p: failed (runner_system_failure)"));
    assert_eq!(
        line(&first, "matcher:"),
        "matcher: runner-system-failure — the runner lost the job"
    );
    assert_eq!(
        line(&first, "action:"),
        format!(
            "action: none — already retried (job {} is newer)",
            attempts[2]
        )
    );
    assert!(line(&first, "retries so far:").starts_with("retries so far: 0"));

    let second = check(&config, &job_url(&gitlab, "g/p", attempts[1])).await;
    assert!(line(&second, "retries so far:").starts_with("retries so far: 1 (attempt 2"));
    assert!(line(&second, "action:").starts_with("action: none — already retried"));
    let last = check(&config, &job_url(&gitlab, "g/p", attempts[2])).await;
    assert_eq!(
        line(&last, "action:"),
        "action: give up — 2 of 2 retries made; would say so in the targets"
    );

    let by_trace = check(&config, &job_url(&gitlab, "g/p", reset)).await;
    assert_eq!(line(&by_trace, "matcher:"), "matcher: connection-reset");
    assert_eq!(
        line(&by_trace, "matched:"),
        "matched: error: Connection reset by peer (os error 104)"
    );
    assert_eq!(line(&by_trace, "action:"), "action: retry 1 of 3 after 15m");

    let report = check(&config, &job_url(&gitlab, "g/p", oom)).await;
    assert_eq!(line(&report, "matcher:"), "matcher: oom");
    assert_eq!(
        line(&report, "action:"),
        "action: report — one line in the targets"
    );

    let unmatched = check(&config, &job_url(&gitlab, "g/p", plain)).await;
    assert_eq!(line(&unmatched, "matcher:"), "matcher: none");
    assert!(line(&unmatched, "action:").contains("no matcher knows"));
    let success = check(&config, &job_url(&gitlab, "g/p", ok)).await;
    assert_eq!(line(&success, "action:"), "action: none");
    let elsewhere = check(&config, &job_url(&gitlab, "g/other", theirs)).await;
    assert!(
        line(&elsewhere, "action:").starts_with(
            "action: none — g/other is not in herder.projects (would be: retry 1 of 2"
        ),
        "{}",
        elsewhere.stdout
    );

    // Traces are read only when a matcher needs them, and only their tail.
    let traces: Vec<String> = gitlab
        .requests()
        .iter()
        .filter(|r| r.path.ends_with("/trace"))
        .map(|r| r.path.clone())
        .collect();
    assert_eq!(traces.len(), 3, "reset, oom and lint: {traces:?}");
    assert_eq!(
        gitlab
            .requests()
            .iter()
            .filter(|r| r.method != "GET")
            .count(),
        writes_before,
        "herder check wrote nothing"
    );

    // A URL that is not a job of this GitLab, and a job that does not exist: clear errors.
    for (url, expected) in [
        (
            "https://gitlab.evil.example/g/p/-/jobs/1".to_string(),
            "is not on the GitLab at",
        ),
        (
            format!("{}/g/p/-/pipelines/{}", gitlab.url(), p.id),
            "is not a job URL",
        ),
        (job_url(&gitlab, "g/p", 999_999), "job 999999 of g/p"),
    ] {
        let out = check(&config, &url).await;
        assert_eq!(out.code, 2, "{url}: {}", out.stdout);
        assert!(out.stderr.contains(expected), "{url}: {}", out.stderr);
        assert!(out.stdout.is_empty());
    }
}

#[tokio::test]
async fn herder_check_without_a_herder_says_so() {
    let store = TestStore::new(Backend::Sqlite).await;
    let gitlab = GitLabDouble::start().await;
    let config = ShepherdConfig::new(&store, &gitlab);
    let out = check(&config, &job_url(&gitlab, "g/p", 1)).await;
    assert_eq!(out.code, 2);
    assert!(
        out.stderr.contains("the herder is not enabled"),
        "{}",
        out.stderr
    );
    assert!(gitlab.requests().is_empty(), "{:?}", gitlab.requests());
}
