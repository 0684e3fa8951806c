//! The herder and the failover switches (issue 13), against the GitLab double and a real
//! ngIRCd: `shepherd herder check --job-url URL` judges a job and writes nothing; `serve` judges
//! Job Hooks, says `report` and `alert` matches once, retries after each matcher's delay exactly
//! once per job (a redelivered hook, a kill -9 before the retry was due, a lost answer to it),
//! gives up at the limit with a line in the targets, never retries a superseded pipeline's job,
//! and only describes in non-production mode; `herder` in chat lists and inspects; `failover`,
//! `failback` and `failovers` change a project's or group's variables once and restore them.

use std::time::{Duration, Instant};

use shepherd_tests::gitlab::{FaultKind, GitLabDouble, Route};
use shepherd_tests::harness::{Backend, Shepherd, ShepherdConfig, TestStore, shepherd_bin};
use shepherd_tests::irc_client::{IrcClient, Message, joined};
use shepherd_tests::ircd::{Ngircd, Throttle};
use shepherd_tests::on_both_stores;

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
    let (_, herder) = HERDER.split_once("[herder]").expect("a [herder] section");
    let herder = format!("[herder]{herder}").replace("targets = []", "targets = [\"irc:#ops\"]");
    let h = herding(Backend::Sqlite, &herder).await;
    let (gitlab, human, bot) = (&h.gitlab, &h.human, &h.bot);

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
    let traced = trace_reads(gitlab);
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

/// Matchers that retry quickly enough for a test: the delays are real queue delays.
const RETRYING: &str = r#"
[herder]
projects = ["g/p"]
targets = ["irc:#ops"]
[[herder.matchers]]
name = "runner-system-failure"
description = "the runner lost the job"
action = "retry"
failure_reason = ["runner_system_failure"]
retry_delays = ["1s", "2s"]
retry_limit = 2
[[herder.matchers]]
name = "connection-reset"
action = "retry"
messages = ["Connection reset by peer"]
retry_delays = ["3s"]
[[herder.matchers]]
name = "oom"
action = "report"
messages = ["/out of memory/i"]
"#;

/// A herding shepherd with `#ops` on a real ngIRCd and a human there, the double's webhook
/// pointed at it.
struct Herding {
    gitlab: GitLabDouble,
    human: IrcClient,
    config: ShepherdConfig,
    bot: Shepherd,
    _server: Ngircd,
    store: TestStore,
}

async fn herding(backend: Backend, herder: &str) -> Herding {
    herding_in(backend, herder, true).await
}

async fn herding_in(backend: Backend, herder: &str, production: bool) -> Herding {
    let store = TestStore::new(backend).await;
    let gitlab = GitLabDouble::start().await;
    let server = Ngircd::start(Throttle::Off).await;
    let mut human = IrcClient::connect(&server.addr(), "human").await;
    human.join("#ops").await;
    let mut config = ShepherdConfig::new(&store, &gitlab);
    config.production = production;
    config.extra = format!(
        r##"[gitlab_comments]
webhook_secret_env = "TEST_WEBHOOK_SECRET"
[irc]
server = "127.0.0.1"
port = {port}
tls = false
channels = ["#ops"]
flood_burst = 1000
flood_rate = 1000.0
{herder}"##,
        port = server.port(),
    );
    config
        .env
        .push(("TEST_WEBHOOK_SECRET".into(), SECRET.into()));
    let bot = start_herding(&config, &mut human).await;
    gitlab.set_webhook(&format!("{}/hooks/gitlab", bot.base_url()), SECRET);
    Herding {
        gitlab,
        human,
        config,
        bot,
        _server: server,
        store,
    }
}

async fn start_herding(config: &ShepherdConfig, human: &mut IrcClient) -> Shepherd {
    let seen = human.received_len();
    let bot = Shepherd::serve(config).await;
    bot.wait_http(WAIT).await;
    assert!(
        human
            .wait_for(WAIT, |m| joined("shepherd", "#ops")(
                &m[seen.min(m.len())..]
            ))
            .await,
        "{}",
        bot.stderr()
    );
    bot
}

/// The times the double was asked to retry job `id`.
fn retries_of(gitlab: &GitLabDouble, id: u64) -> Vec<Instant> {
    let path = format!("/jobs/{id}/retry");
    gitlab
        .requests()
        .iter()
        .filter(|r| r.method == "POST" && r.path.ends_with(&path))
        .map(|r| r.time)
        .collect()
}

async fn wait_retried(h: &Herding, id: u64) -> Instant {
    let path = format!("/jobs/{id}/retry");
    assert!(
        h.gitlab
            .wait_for(
                |rs| rs
                    .iter()
                    .any(|r| r.method == "POST" && r.path.ends_with(&path)),
                WAIT
            )
            .await,
        "job {id} was not retried\n{}",
        h.bot.stderr()
    );
    // The request is recorded as it arrives; the new attempt exists once it is answered.
    for _ in 0..1000 {
        if h.gitlab.job(id).is_some_and(|j| j.retried) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(h.gitlab.job(id).is_some_and(|j| j.retried), "job {id}");
    retries_of(&h.gitlab, id)[0]
}

/// The newest job named `name` in pipeline `pipeline`.
fn newest(gitlab: &GitLabDouble, pipeline: u64, name: &str) -> u64 {
    gitlab
        .jobs(pipeline)
        .iter()
        .filter(|j| j.name == name)
        .map(|j| j.id)
        .max()
        .expect("a job of that name")
}

async fn wait_metric(bot: &Shepherd, series: &str, want: f64) {
    let mut last = None;
    for _ in 0..600 {
        last = bot.metric(series).await;
        if last == Some(want) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!(
        "{series} is {last:?}, not {want}\n{}",
        bot.metrics_text().await
    );
}

fn retried(matcher: &str, outcome: &str) -> String {
    format!("shepherd_herder_retries_total{{matcher=\"{matcher}\",outcome=\"{outcome}\"}}")
}

async fn retried_after_delays_given_up_at_the_limit_and_never_when_stale(backend: Backend) {
    let h = herding(backend, RETRYING).await;
    let gitlab = &h.gitlab;
    let p = gitlab.add_pipeline("g/p", "main", "running", &[]);
    let boot = gitlab.add_job(p.id, "boot", "test", "running");
    let net = gitlab.add_job(p.id, "net", "test", "running");
    gitlab.set_trace(
        net,
        "step 1\nerror: Connection reset by peer (os error 104)\n",
    );
    let oom = gitlab.add_job(p.id, "build", "build", "running");
    gitlab.set_trace(oom, "cc1: out of memory\n");
    let plain = gitlab.add_job(p.id, "lint", "test", "running");
    gitlab.set_trace(plain, "error: unused variable\n");
    let ok = gitlab.add_job(p.id, "docs", "test", "running");
    let stopped = gitlab.add_job(p.id, "deploy", "deploy", "running");
    // On `feature`: an old pipeline, a retrigger's one-off (it carries the request id), and a
    // newer ordinary pipeline that supersedes the old one but not the one-off.
    let old = gitlab.add_pipeline("g/p", "feature", "running", &[]);
    let stale = gitlab.add_job(old.id, "boot", "test", "running");
    let one_off = gitlab.add_pipeline(
        "g/p",
        "feature",
        "running",
        &[("SHEPHERD_REQUEST_ID", "req-1")],
    );
    let asked_for = gitlab.add_job(one_off.id, "boot", "test", "running");
    gitlab.add_pipeline("g/p", "feature", "running", &[]);

    let failed_at = Instant::now();
    gitlab.set_job_status(boot, "failed", Some("runner_system_failure"));
    // The same job's hook once more (a new delivery) and the same delivery again: one retry.
    gitlab.set_job_status(boot, "failed", Some("runner_system_failure"));
    let first = |d: &shepherd_tests::gitlab::HookDelivery| {
        d.body["build_id"] == serde_json::json!(boot) && d.body["build_status"] == "failed"
    };
    assert!(gitlab.wait_hooks(|ds| ds.iter().any(first), WAIT).await);
    let index = gitlab
        .hook_deliveries()
        .iter()
        .position(first)
        .expect("the hook");
    gitlab.redeliver(index).await.expect("redelivered");
    gitlab.set_job_status(net, "failed", None);
    gitlab.set_job_status(oom, "failed", None);
    gitlab.set_job_status(plain, "failed", None);
    gitlab.set_job_status(ok, "success", None);
    gitlab.set_job_status(stopped, "canceled", None);
    gitlab.set_job_status(stale, "failed", Some("runner_system_failure"));
    gitlab.set_job_status(asked_for, "failed", Some("runner_system_failure"));

    // Retry 1 after the first delay; its new attempt fails too: retry 2 after the second.
    let at = wait_retried(&h, boot).await;
    assert!(
        at - failed_at >= Duration::from_secs(1),
        "not before its delay"
    );
    let second = newest(gitlab, p.id, "boot");
    assert_ne!(second, boot);
    let failed_again = Instant::now();
    gitlab.set_job_status(second, "failed", Some("runner_system_failure"));
    let at = wait_retried(&h, second).await;
    assert!(
        at - failed_again >= Duration::from_secs(2),
        "the second delay"
    );
    // The third attempt fails: given up, said once in #ops.
    let third = newest(gitlab, p.id, "boot");
    assert_ne!(third, second);
    gitlab.set_job_status(third, "failed", Some("runner_system_failure"));
    let third_url = format!("{}/g/p/-/jobs/{third}", gitlab.url());
    let given_up = format!(
        "herder: given up after 2 retries — job `boot` {third_url} failed again: the runner lost the job (runner-system-failure)"
    );
    assert!(
        h.human
            .wait_for(WAIT, |m| said_in_ops(m).contains(&given_up))
            .await,
        "{:?}\n{}",
        said_in_ops(&h.human.received()),
        h.bot.stderr()
    );
    // A trace match waits for its own matcher's delay.
    let at = wait_retried(&h, net).await;
    assert!(
        at - failed_at >= Duration::from_secs(3),
        "the trace matcher's delay"
    );
    // The retrigger's one-off is retried; the superseded pipeline's job is not.
    wait_retried(&h, asked_for).await;
    wait_metric(&h.bot, &retried("runner-system-failure", "superseded"), 1.0).await;
    wait_metric(&h.bot, &retried("runner-system-failure", "retried"), 3.0).await;
    wait_metric(&h.bot, &retried("connection-reset", "retried"), 1.0).await;
    wait_metric(
        &h.bot,
        "shepherd_herder_given_up_total{matcher=\"runner-system-failure\"}",
        1.0,
    )
    .await;

    for (job, times) in [
        (boot, 1),
        (second, 1),
        (third, 0),
        (net, 1),
        (asked_for, 1),
        (stale, 0),
        (oom, 0),
        (plain, 0),
        (ok, 0),
        (stopped, 0),
    ] {
        assert_eq!(retries_of(gitlab, job).len(), times, "job {job}");
    }
    assert_eq!(
        gitlab
            .jobs(p.id)
            .iter()
            .filter(|j| j.name == "boot")
            .count(),
        3,
        "the job and its two retries"
    );
    let oom_url = format!("{}/g/p/-/jobs/{oom}", gitlab.url());
    assert_eq!(
        said_in_ops(&h.human.received()),
        vec![
            format!("herder: oom — job `build` {oom_url}: oom: cc1: out of memory"),
            given_up.clone()
        ],
        "a report and the given-up line; retries themselves are not announced"
    );

    // In chat: what it did lately, and what it would do with one job.
    let mut bot = h.bot;
    bot.send("herder").await;
    bot.expect_line("herder: the latest 10 actions, newest first:", WAIT)
        .await;
    let boot_url = format!("{}/g/p/-/jobs/{boot}", gitlab.url());
    bot.expect_line(
        &format!("given up after 2 retries — job `boot` {third_url} (runner-system-failure)"),
        WAIT,
    )
    .await;
    bot.send(&format!("herder {boot_url}")).await;
    bot.expect_line(
        &format!("action: none — already retried (job {third} is newer)"),
        WAIT,
    )
    .await;
    bot.send(&format!("herder {third_url}")).await;
    bot.expect_line(
        "retries so far: 2 (attempt 3 of `boot` in its pipeline)",
        WAIT,
    )
    .await;
    bot.expect_line(
        "action: give up — 2 of 2 retries made; would say so in the targets",
        WAIT,
    )
    .await;
    let recent = bot.lines().join("\n");
    assert!(
        recent.contains(&format!(
            "retry 1 made: job {second} — job `boot` {boot_url} (runner-system-failure)"
        )),
        "{recent}"
    );
    assert_eq!(
        retries_of(gitlab, third).len(),
        0,
        "`herder <job>` changes nothing"
    );
}

on_both_stores!(
    retries,
    retried_after_delays_given_up_at_the_limit_and_never_when_stale
);

async fn a_retry_due_at_a_crash_is_made_once_after_the_restart(backend: Backend) {
    let herder = RETRYING.replace(r#"retry_delays = ["1s", "2s"]"#, r#"retry_delays = ["2s"]"#);
    let mut h = herding(backend, &herder).await;
    let p = h.gitlab.add_pipeline("g/p", "main", "running", &[]);
    let boot = h.gitlab.add_job(p.id, "boot", "test", "running");
    let failed_at = Instant::now();
    h.gitlab
        .set_job_status(boot, "failed", Some("runner_system_failure"));
    let mut logged = false;
    for _ in 0..600 {
        if h.bot.stderr().contains("herder: retry scheduled") {
            logged = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(logged, "{}", h.bot.stderr());
    h.bot.kill9().await;
    assert!(
        retries_of(&h.gitlab, boot).is_empty(),
        "killed before it was due"
    );
    // The first answer to the retry is lost after the new job was made: the restarted
    // process finds that attempt instead of making another.
    h.gitlab
        .fail_next(Route::RetryJob, 1, FaultKind::CreateThenFail(502));
    h.bot = start_herding(&h.config, &mut h.human).await;
    let at = wait_retried(&h, boot).await;
    assert!(
        at - failed_at >= Duration::from_secs(2),
        "not before its delay"
    );
    wait_metric(&h.bot, &retried("runner-system-failure", "retried"), 1.0).await;
    assert_eq!(retries_of(&h.gitlab, boot).len(), 1, "{}", h.bot.stderr());
    assert_eq!(
        h.gitlab
            .jobs(p.id)
            .iter()
            .filter(|j| j.name == "boot")
            .count(),
        2,
        "one retry"
    );
}

on_both_stores!(crash, a_retry_due_at_a_crash_is_made_once_after_the_restart);

const SWITCHES: &str = r#"
[[failover]]
name = "beaker"
description = "test on the backup Beaker lab"
project = "g/p"
variables = { BEAKER_URL = "https://beaker-2.example.org", BEAKER_POOL = "backup" }
[[failover]]
name = "lab"
group = "g"
variables = { LAB = "b" }
"#;

/// The variable writes the double was asked for (creates, updates, deletes).
fn variable_writes(gitlab: &GitLabDouble) -> Vec<String> {
    gitlab
        .requests()
        .iter()
        .filter(|r| r.method != "GET" && r.path.contains("/variables"))
        .map(|r| format!("{} {}", r.method, r.path))
        .collect()
}

fn vars_of(vars: Option<Vec<shepherd_tests::gitlab::CiVariable>>) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = vars
        .unwrap_or_default()
        .into_iter()
        .map(|v| (v.key, v.value))
        .collect();
    out.sort();
    out
}

fn kv(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

async fn switches_are_set_once_announced_and_restored_exactly(backend: Backend) {
    let gitlab_setup = |g: &GitLabDouble| {
        g.add_project("g/p");
        g.add_project_variable("g/p", "BEAKER_URL", "https://beaker-1.example.org");
        g.add_project_variable("g/p", "OTHER", "kept");
    };
    let herder = format!("{RETRYING}{SWITCHES}");
    let h = herding(backend, &herder).await;
    gitlab_setup(&h.gitlab);
    let gitlab = &h.gitlab;
    let mut bot = h.bot;
    let before = kv(&[
        ("BEAKER_URL", "https://beaker-1.example.org"),
        ("OTHER", "kept"),
    ]);
    assert_eq!(vars_of(gitlab.project_variables("g/p")), before);

    bot.send("failovers").await;
    bot.expect_line("beaker — off — sets BEAKER_POOL=backup BEAKER_URL=https://beaker-2.example.org on project g/p (test on the backup Beaker lab)", WAIT).await;
    // The first create's answer is lost after it took effect: the redelivered request reads
    // before writing, so the variable is created once.
    gitlab.fail_next(Route::CreateVariable, 1, FaultKind::CreateThenFail(502));
    bot.send("failover beaker").await;
    let on = "failover: beaker (project g/p) is on: test on the backup Beaker lab — BEAKER_POOL: unset → \"backup\", BEAKER_URL: \"https://beaker-1.example.org\" → \"https://beaker-2.example.org\" (by tester)";
    bot.expect_line(on, WAIT).await;
    assert_eq!(
        vars_of(gitlab.project_variables("g/p")),
        kv(&[
            ("BEAKER_POOL", "backup"),
            ("BEAKER_URL", "https://beaker-2.example.org"),
            ("OTHER", "kept")
        ])
    );
    assert!(
        h.human
            .wait_for(WAIT, |m| said_in_ops(m).iter().any(|l| l == on))
            .await,
        "announced in the herder's targets: {:?}",
        said_in_ops(&h.human.received())
    );
    let writes = variable_writes(gitlab);
    assert_eq!(
        writes.iter().filter(|w| w.starts_with("POST")).count(),
        1,
        "one create despite the lost answer: {writes:?}"
    );
    assert_eq!(
        writes.iter().filter(|w| w.starts_with("PUT")).count(),
        1,
        "{writes:?}"
    );

    // Twice is one change.
    bot.send("failover beaker").await;
    bot.expect_line("failover: beaker (project g/p) is on already", WAIT)
        .await;
    assert_eq!(variable_writes(gitlab).len(), 2);
    bot.send("failovers").await;
    bot.expect_line("beaker — ON since", WAIT).await;

    // Back: the old value restored, the new variable deleted, the rest untouched.
    bot.send("failback beaker").await;
    bot.expect_line("failback: beaker (project g/p) is off again — BEAKER_POOL: \"backup\" → unset, BEAKER_URL: \"https://beaker-2.example.org\" → \"https://beaker-1.example.org\"", WAIT).await;
    assert_eq!(vars_of(gitlab.project_variables("g/p")), before);
    bot.send("failback beaker").await;
    bot.expect_line(
        "failback: beaker (project g/p) is not on; nothing changed.",
        WAIT,
    )
    .await;
    assert_eq!(
        variable_writes(gitlab).len(),
        4,
        "{:?}",
        variable_writes(gitlab)
    );

    // A group's switch.
    bot.send("failover lab").await;
    bot.expect_line("failover: lab (group g) is on — LAB: unset → \"b\"", WAIT)
        .await;
    assert_eq!(vars_of(gitlab.group_variables("g")), kv(&[("LAB", "b")]));
    bot.send("failback lab").await;
    bot.expect_line(
        "failback: lab (group g) is off again — LAB: \"b\" → unset",
        WAIT,
    )
    .await;
    assert_eq!(vars_of(gitlab.group_variables("g")), Vec::new());

    bot.send("failover nope").await;
    bot.expect_line(
        "there is no failover switch \"nope\" (configured: beaker, lab)",
        WAIT,
    )
    .await;
    assert_eq!(
        h.store
            .count("SELECT COUNT(*) FROM audit WHERE command IN ('failover', 'failback') AND outcome = 'done'")
            .await,
        6,
        "every failover and failback is audited"
    );
    assert_eq!(
        variable_writes(gitlab).len(),
        6,
        "{:?}",
        variable_writes(gitlab)
    );
}

on_both_stores!(
    failover,
    switches_are_set_once_announced_and_restored_exactly
);

#[tokio::test]
async fn non_production_failovers_only_describe() {
    let store = TestStore::new(Backend::Sqlite).await;
    let gitlab = GitLabDouble::start().await;
    gitlab.add_project("g/p");
    gitlab.add_project_variable("g/p", "BEAKER_URL", "https://beaker-1.example.org");
    let mut config = ShepherdConfig::new(&store, &gitlab);
    config.production = false;
    config.extra = SWITCHES.into();
    let mut bot = Shepherd::serve(&config).await;
    bot.wait_http(WAIT).await;
    bot.send("failover beaker").await;
    bot.expect_line("non-production mode: failover beaker (project g/p) would change BEAKER_POOL: unset → \"backup\", BEAKER_URL: \"https://beaker-1.example.org\" → \"https://beaker-2.example.org\" — nothing was changed.", WAIT).await;
    bot.send("failovers").await;
    bot.expect_line("beaker — off", WAIT).await;
    bot.send("failback beaker").await;
    bot.expect_line(
        "failback: beaker (project g/p) is not on; nothing changed.",
        WAIT,
    )
    .await;
    assert!(
        variable_writes(&gitlab).is_empty(),
        "{:?}",
        variable_writes(&gitlab)
    );
    assert_eq!(
        store
            .count("SELECT COUNT(*) FROM audit WHERE command = 'failover' AND outcome = 'would'")
            .await,
        1
    );
}

#[tokio::test]
async fn non_production_retries_are_only_described() {
    let h = herding_in(Backend::Sqlite, RETRYING, false).await;
    let p = h.gitlab.add_pipeline("g/p", "main", "running", &[]);
    let boot = h.gitlab.add_job(p.id, "boot", "test", "running");
    h.gitlab
        .set_job_status(boot, "failed", Some("runner_system_failure"));
    let url = format!("{}/g/p/-/jobs/{boot}", h.gitlab.url());
    let line = format!(
        "herder: non-production mode: would retry job `boot` {url} now (runner-system-failure, retry 1 of 2) — nothing was sent."
    );
    assert!(
        h.human
            .wait_for(WAIT, |m| said_in_ops(m).contains(&line))
            .await,
        "{:?}\n{}",
        said_in_ops(&h.human.received()),
        h.bot.stderr()
    );
    wait_metric(
        &h.bot,
        &retried("runner-system-failure", "would_retry"),
        1.0,
    )
    .await;
    assert!(
        h.gitlab.requests().iter().all(|r| r.method == "GET"),
        "{:?}",
        h.gitlab.requests()
    );
    assert_eq!(h.gitlab.jobs(p.id).len(), 1, "no new attempt");
}
