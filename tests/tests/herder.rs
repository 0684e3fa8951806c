//! The herder (issue 13), as far as it is built: `shepherd herder check --job-url URL` judges a
//! job of the GitLab double with the configured matchers and says what the herder would do,
//! reading only (the double sees no write from it); and `serve` judges the double's Job Hooks,
//! says `report` and `alert` matches once in the herder's targets on a real ngIRCd, and counts
//! every match and every failure no matcher knows.

use std::time::Duration;

use shepherd_tests::gitlab::GitLabDouble;
use shepherd_tests::harness::{Backend, Shepherd, ShepherdConfig, TestStore, shepherd_bin};
use shepherd_tests::irc_client::{IrcClient, Message, joined};
use shepherd_tests::ircd::{Ngircd, Throttle};

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
    let traces = trace_reads(&gitlab);
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

const SECRET: &str = "herder-hook-secret";

fn said_in_ops(msgs: &[Message]) -> Vec<String> {
    msgs.iter()
        .filter(|m| {
            m.is_message_from("shepherd")
                && m.param(0).is_some_and(|c| c.eq_ignore_ascii_case("#ops"))
        })
        .map(|m| m.text().to_string())
        .collect()
}

#[tokio::test]
async fn job_hooks_are_judged_reports_said_once_and_matches_counted() {
    let store = TestStore::new(Backend::Sqlite).await;
    let gitlab = GitLabDouble::start().await;
    let server = Ngircd::start(Throttle::Off).await;
    let mut human = IrcClient::connect(&server.addr(), "human").await;
    human.join("#ops").await;
    let mut config = ShepherdConfig::new(&store, &gitlab);
    config.extra = format!(
        r##"[irc]
server = "127.0.0.1"
port = {port}
tls = false
channels = ["#ops"]
flood_burst = 1000
flood_rate = 1000.0
{herder}"##,
        port = server.port(),
        herder = HERDER
            .replace("targets = []", "targets = [\"irc:#ops\"]")
            .replace("TEST_HOOK_SECRET", "TEST_WEBHOOK_SECRET"),
    );
    config
        .env
        .push(("TEST_WEBHOOK_SECRET".into(), SECRET.into()));
    let bot = Shepherd::serve(&config).await;
    bot.wait_http(WAIT).await;
    assert!(
        human.wait_for(WAIT, joined("shepherd", "#ops")).await,
        "{}",
        bot.stderr()
    );
    gitlab.set_webhook(&format!("{}/hooks/gitlab", bot.base_url()), SECRET);

    let p = gitlab.add_pipeline("g/p", "main", "running", &[]);
    let oom = gitlab.add_job(p.id, "build", "build", "running");
    gitlab.set_trace(oom, "cc1: Out Of Memory allocating 1 GB\n");
    let lint = gitlab.add_job(p.id, "lint", "test", "running");
    gitlab.set_trace(lint, "error: unused variable\n");
    let boot = gitlab.add_job(p.id, "boot", "test", "running");
    let docs = gitlab.add_job(p.id, "docs", "test", "running");
    let other = gitlab.add_pipeline("g/other", "main", "running", &[]);
    let theirs = gitlab.add_job(other.id, "build", "build", "running");
    gitlab.set_trace(theirs, "Out of memory\n");

    gitlab.set_job_status(oom, "failed", None);
    gitlab.set_job_status(lint, "failed", None);
    gitlab.set_job_status(boot, "failed", Some("runner_system_failure"));
    gitlab.set_job_status(docs, "success", None);
    gitlab.set_job_status(theirs, "failed", None);
    // The same Job Hook again: said once all the same.
    let failed_oom = |d: &shepherd_tests::gitlab::HookDelivery| {
        d.body["build_id"] == serde_json::json!(oom) && d.body["build_status"] == "failed"
    };
    assert!(
        gitlab
            .wait_hooks(|ds| ds.iter().any(failed_oom), WAIT)
            .await
    );
    let deliveries = gitlab.hook_deliveries();
    let oom_hook = deliveries
        .iter()
        .rposition(failed_oom)
        .expect("the failed oom job's hook");

    let counted =
        |metrics: &str, series: &str| shepherd_tests::harness::metric_value(metrics, series);
    let problems = "shepherd_herder_problems_total{action=\"report\",matcher=\"oom\"}";
    let retries =
        "shepherd_herder_problems_total{action=\"retry\",matcher=\"runner-system-failure\"}";
    let unmatched = "shepherd_herder_unmatched_failures_total{project=\"g/p\"}";
    let mut settled = false;
    for _ in 0..600 {
        let m = bot.metrics_text().await;
        if counted(&m, problems) == Some(1.0)
            && counted(&m, retries) == Some(1.0)
            && counted(&m, unmatched) == Some(1.0)
        {
            settled = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(settled, "{}\n{}", bot.metrics_text().await, bot.stderr());
    gitlab.redeliver(oom_hook).await.expect("redelivered");
    let url = format!("{}/g/p/-/jobs/{oom}", gitlab.url());
    assert!(
        human.wait_for(WAIT, |m| !said_in_ops(m).is_empty()).await,
        "{}",
        bot.stderr()
    );
    // Wait for the redelivery to be processed, then check nothing more was said.
    let mut redelivered = false;
    for _ in 0..600 {
        if counted(
            &bot.metrics_text().await,
            "shepherd_gitlab_webhooks_total{event=\"job\",outcome=\"duplicate\"}",
        )
        .is_some()
        {
            redelivered = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(redelivered, "{}", bot.metrics_text().await);
    let lines = said_in_ops(&human.received());
    assert_eq!(
        lines,
        vec![format!(
            "herder: oom — job `build` {url}: oom: cc1: Out Of Memory allocating 1 GB"
        )],
        "one report, for the herded project's job only"
    );
    // Judging reads traces only where a matcher needs them, and writes nothing.
    assert!(
        gitlab.requests().iter().all(|r| r.method == "GET"),
        "{:?}",
        gitlab.requests()
    );
    let traced = trace_reads(&gitlab);
    assert_eq!(traced.len(), 2, "oom and lint only: {traced:?}");
}

/// The paths of the job traces the double was asked for, in order.
fn trace_reads(gitlab: &GitLabDouble) -> Vec<String> {
    gitlab
        .requests()
        .iter()
        .filter(|r| r.path.ends_with("/trace"))
        .map(|r| r.path.clone())
        .collect()
}
