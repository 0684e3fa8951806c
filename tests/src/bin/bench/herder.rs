//! `bench herder [jobs]`: the herder through the real release `shepherd serve` and the GitLab
//! double, on each store.
//!
//! - Latency: jobs fail one at a time (each in a pipeline of its own ref, `runner_system_failure`,
//!   a matcher with a zero delay); measured from `set_job_status` (which sends the Job Hook) to
//!   the double's arrival of `POST .../jobs/:id/retry`, on the double's own records. p50/p99.
//! - Burst: `jobs` (default 1,000) jobs in 100 pipelines fail as fast as the double can send
//!   their hooks, half with a runner failure (judged without the trace), half with a script
//!   failure whose trace holds "Connection reset by peer" (the trace's tail is read). Measured:
//!   how long until every job was retried, the API calls per job by route, and the most calls
//!   in any 60 s window against the configured budget (`gitlab.requests_per_minute`, GitLab.com's
//!   2,000 a minute for an authenticated user; its burst is a minute's budget). Every job must
//!   be retried exactly once.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use shepherd_tests::gitlab::{GitLabDouble, RecordedRequest};
use shepherd_tests::harness::{Backend, Shepherd, ShepherdConfig, TestStore};
use shepherd_tests::measure::{ms, percentile};

use super::{backend_label, log_problems, shipped_queue_env};

const PROJECT: &str = "bench/pipeline";
const SECRET: &str = "bench-webhook-secret-0123456789";
/// GitLab.com's limit for authenticated API requests, per user and minute.
const BUDGET: u32 = 2_000;
const PIPELINES: usize = 100;
const WAIT: Duration = Duration::from_secs(900);

const HERDER: &str = r#"
[gitlab_comments]
webhook_secret_env = "BENCH_WEBHOOK_SECRET"
[herder]
projects = ["bench/pipeline"]
targets = []
[[herder.matchers]]
name = "runner-system-failure"
action = "retry"
failure_reason = ["runner_system_failure"]
retry_delays = ["0s"]
retry_limit = 3
[[herder.matchers]]
name = "connection-reset"
action = "retry"
messages = ["Connection reset by peer"]
retry_delays = ["0s"]
retry_limit = 3
"#;

async fn start(backend: Backend) -> (TestStore, GitLabDouble, Shepherd) {
    let store = TestStore::new(backend).await;
    let gitlab = GitLabDouble::start().await;
    let mut config = ShepherdConfig::new(&store, &gitlab);
    config.extra = HERDER.to_string();
    config.gitlab = format!("requests_per_minute = {BUDGET}");
    config
        .env
        .push(("BENCH_WEBHOOK_SECRET".into(), SECRET.into()));
    config.env.extend(shipped_queue_env());
    config.env.push(("SHEPHERD_LOG".into(), "info".into()));
    let bot = Shepherd::serve(&config).await;
    bot.wait_http(Duration::from_secs(30)).await;
    gitlab.set_webhook(&format!("{}/hooks/gitlab", bot.base_url()), SECRET);
    (store, gitlab, bot)
}

fn is_retry(r: &RecordedRequest) -> bool {
    r.method == "POST" && r.path.ends_with("/retry")
}

/// The job id of `POST .../jobs/:id/retry`.
fn retried_job(r: &RecordedRequest) -> Option<u64> {
    let rest = r.path.strip_suffix("/retry")?;
    rest.rsplit('/').next()?.parse().ok()
}

/// An API call's route, for the table.
fn route(r: &RecordedRequest) -> String {
    let p = r.path.as_str();
    let what = if p.ends_with("/retry") {
        "jobs/:id/retry"
    } else if p.ends_with("/trace") {
        "jobs/:id/trace"
    } else if p.ends_with("/jobs") {
        "pipelines/:id/jobs"
    } else if p.ends_with("/variables") {
        "pipelines/:id/variables"
    } else if p.ends_with("/pipelines") {
        "pipelines?ref="
    } else if p.contains("/pipelines/") {
        "pipelines/:id"
    } else {
        "other"
    };
    format!("{} {what}", r.method)
}

async fn latency(backend: Backend, n: usize) -> (Duration, Duration, Duration) {
    let (_store, gitlab, bot) = start(backend).await;
    let mut took = Vec::with_capacity(n);
    for i in 0..n {
        let p = gitlab.add_pipeline(PROJECT, &format!("lat-{i}"), "running", &[]);
        let job = gitlab.add_job(p.id, "boot", "test", "running");
        let path = format!("/jobs/{job}/retry");
        let failed = Instant::now();
        gitlab.set_job_status(job, "failed", Some("runner_system_failure"));
        let seen = gitlab
            .wait_for(
                |rs| rs.iter().any(|r| is_retry(r) && r.path.ends_with(&path)),
                Duration::from_secs(30),
            )
            .await;
        assert!(seen, "job {job} was not retried\n{}", bot.stderr());
        let at = gitlab
            .requests()
            .iter()
            .find(|r| is_retry(r) && r.path.ends_with(&path))
            .map(|r| r.time)
            .unwrap_or(failed);
        took.push(at.duration_since(failed));
    }
    log_problems(
        &format!("herder latency {}", backend_label(backend)),
        &bot.stderr(),
    );
    took.sort();
    (
        percentile(&took, 50.0),
        percentile(&took, 99.0),
        took.last().copied().unwrap_or_default(),
    )
}

struct Burst {
    jobs: usize,
    sent_in: Duration,
    done_in: Duration,
    calls: BTreeMap<String, usize>,
    busiest_minute: usize,
}

async fn burst(backend: Backend, jobs: usize) -> Burst {
    let (_store, gitlab, bot) = start(backend).await;
    let per_pipeline = jobs.div_ceil(PIPELINES);
    let mut all = Vec::with_capacity(jobs);
    for p in 0..PIPELINES {
        let pipeline = gitlab.add_pipeline(PROJECT, &format!("branch-{p}"), "running", &[]);
        for j in 0..per_pipeline {
            if all.len() == jobs {
                break;
            }
            let id = gitlab.add_job(pipeline.id, &format!("test {j}"), "test", "running");
            let traced = all.len() % 2 == 1;
            if traced {
                gitlab.set_trace(
                    id,
                    &format!(
                        "{}fetching sources\nerror: Connection reset by peer (os error 104)\n",
                        "building...\n".repeat(200)
                    ),
                );
            }
            all.push((id, traced));
        }
    }
    // The setup's own hooks (running jobs) are judged and ignored first.
    let before = gitlab.requests().len();
    let started = Instant::now();
    for (id, traced) in &all {
        if *traced {
            gitlab.set_job_status(*id, "failed", None);
        } else {
            gitlab.set_job_status(*id, "failed", Some("runner_system_failure"));
        }
    }
    let sent_in = started.elapsed();
    let done = gitlab
        .wait_for(
            |rs| {
                rs[before.min(rs.len())..]
                    .iter()
                    .filter(|r| is_retry(r))
                    .count()
                    >= jobs
            },
            WAIT,
        )
        .await;
    assert!(
        done,
        "not every job was retried within {WAIT:?}\n{}",
        bot.stderr()
    );
    let requests: Vec<RecordedRequest> = gitlab.requests().split_off(before);
    let last = requests
        .iter()
        .filter(|r| is_retry(r))
        .map(|r| r.time)
        .max()
        .unwrap_or(started);
    let mut per_job: HashMap<u64, usize> = HashMap::new();
    for r in requests.iter().filter(|r| is_retry(r)) {
        if let Some(id) = retried_job(r) {
            *per_job.entry(id).or_default() += 1;
        }
    }
    assert_eq!(per_job.len(), jobs, "every job retried");
    assert!(per_job.values().all(|n| *n == 1), "each exactly once");
    let mut calls = BTreeMap::new();
    for r in &requests {
        *calls.entry(route(r)).or_default() += 1;
    }
    let times: Vec<Instant> = requests.iter().map(|r| r.time).collect();
    let mut busiest_minute = 0;
    let mut lo = 0;
    for hi in 0..times.len() {
        while times[hi].duration_since(times[lo]) >= Duration::from_secs(60) {
            lo += 1;
        }
        busiest_minute = busiest_minute.max(hi + 1 - lo);
    }
    log_problems(
        &format!("herder burst {}", backend_label(backend)),
        &bot.stderr(),
    );
    Burst {
        jobs,
        sent_in,
        done_in: last.duration_since(started),
        calls,
        busiest_minute,
    }
}

pub async fn main(jobs: usize) {
    let n = 200;
    let mut latencies = Vec::new();
    let mut bursts = Vec::new();
    for backend in [Backend::Sqlite, Backend::Postgres] {
        latencies.push((backend, latency(backend, n).await));
        bursts.push((backend, burst(backend, jobs).await));
    }
    println!(
        "Job Hook (failed, runner_system_failure, zero delay) -> `POST .../jobs/:id/retry` at the double, {n} jobs one at a time, ms\n"
    );
    println!("| store | p50 | p99 | max |");
    println!("|---|---|---|---|");
    for (backend, (p50, p99, max)) in &latencies {
        println!(
            "| {} | {} | {} | {} |",
            backend_label(*backend),
            ms(*p50),
            ms(*p99),
            ms(*max)
        );
    }
    println!();
    println!(
        "{jobs} failed jobs in {PIPELINES} pipelines (half judged by failure reason, half by the trace's tail), budget {BUDGET} API calls a minute\n"
    );
    println!(
        "| store | hooks sent in | all retried after | API calls per job | busiest 60 s | per route (calls per job) |"
    );
    println!("|---|---|---|---|---|---|");
    for (backend, b) in &bursts {
        let total: usize = b.calls.values().sum();
        let routes = b
            .calls
            .iter()
            .map(|(r, c)| format!("{r} {:.2}", *c as f64 / b.jobs as f64))
            .collect::<Vec<_>>()
            .join(", ");
        println!(
            "| {} | {:.2} s | {:.1} s | {:.2} | {} | {routes} |",
            backend_label(*backend),
            b.sent_in.as_secs_f64(),
            b.done_in.as_secs_f64(),
            total as f64 / b.jobs as f64,
            b.busiest_minute,
        );
    }
}
