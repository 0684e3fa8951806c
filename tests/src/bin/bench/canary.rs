//! `bench canary [refs]`: one `@shepherd test` on a merge request with `refs` reference
//! pipelines (default 20), through the real release `shepherd serve` and the GitLab double.
//!
//! The double holds the reference pipelines, one per tree, each with five variables; the even
//! trees are listed by pipeline id, the odd ones are "the latest successful pipeline of branch
//! <tree>" (beside an older successful one and a newer failed one, which must not be chosen).
//! A developer writes `@shepherd test` through the double (`comment`), which sends the Note Hook
//! to shepherd. Measured from the comment, on the double's own records (arrival times of the
//! requests shepherd makes, nothing slept): the last of the `refs` pipeline creates, and the
//! first summary note. Then the pipelines run to their end: the double's time-based AutoFinish
//! moves most of them to `running` after 2 s and to `success` 8 s later; every fifth tree fails
//! instead, driven by the bench on the same kind of timeline (`pending` at once, `running` after
//! 2 s, a failed `test` job and `failed` after 4, 6, 12, 14 s). The bench counts the API calls
//! shepherd spent watching them (`GET .../pipelines/:id` and `GET .../pipelines/:id/jobs` of the
//! new pipelines) until the summary note shows the verdict, and every API call of the canary by
//! route; once with Pipeline Hooks, once with them disabled (polling only), on each store.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::time::{Duration, Instant};

use shepherd_tests::gitlab::{AutoFinish, AutoOutcome, GitLabDouble, RecordedRequest, Route};
use shepherd_tests::harness::{Backend, Shepherd, ShepherdConfig, TestStore};

use super::{backend_label, log_problems, shipped_queue_env};

const MR_PROJECT: &str = "cki-project/pipeline-definition";
const PIPE_PROJECT: &str = "cki-project/cki-pipeline";
const SECRET: &str = "bench-webhook-secret-0123456789";
/// The watcher's first poll interval; it grows 1.5x per unchanged poll up to the maximum.
/// The shipped 30 s / 300 s, divided by 30 like the pipelines' durations.
pub const POLL_MS: u64 = 1_000;
pub const MAX_POLL_MS: u64 = 10_000;
/// The automatic pipelines: running after START, finished FINISH later.
const START: Duration = Duration::from_secs(2);
const FINISH: Duration = Duration::from_secs(8);
/// How long each failing pipeline runs, in turn (after START).
const FAILING_RUN_SECS: [u64; 4] = [2, 4, 10, 12];
const WAIT: Duration = Duration::from_secs(180);

const TREES: [&str; 20] = [
    "mainline",
    "rhel9",
    "rhel10",
    "c9s",
    "c10s",
    "fedora",
    "eln",
    "ark",
    "rhel8",
    "rhel9-rt",
    "rhel10-rt",
    "c9s-rt",
    "c10s-rt",
    "stable",
    "stable-6.12",
    "stable-6.6",
    "net-next",
    "bpf-next",
    "scsi",
    "arm-next",
];

fn tree(i: usize) -> String {
    TREES
        .get(i)
        .map(|t| t.to_string())
        .unwrap_or_else(|| format!("tree-{i:02}"))
}

fn failing(i: usize) -> bool {
    i % 5 == 3
}

/// How the pipelines are followed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Follow {
    Hooks,
    PollingOnly,
}

impl Follow {
    fn label(self) -> &'static str {
        match self {
            Follow::Hooks => "Pipeline Hooks + polling fallback",
            Follow::PollingOnly => "polling only",
        }
    }
}

pub struct Run {
    pub backend: Backend,
    pub follow: Follow,
    pub refs: usize,
    pub first_create: Duration,
    pub all_created: Duration,
    pub first_summary: Duration,
    pub verdict: Duration,
    /// When the last pipeline finished in the double.
    pub last_finished: Duration,
    pub verdict_text: String,
    /// Watching calls until the verdict: GET pipeline, GET jobs.
    pub watch_pipeline: usize,
    pub watch_jobs: usize,
    /// Every API call from the comment to the verdict, by route.
    pub by_route: BTreeMap<String, usize>,
    pub after_verdict: usize,
    pub warnings: usize,
    pub errors: usize,
    pub hook_updates: f64,
    pub poll_updates: f64,
}

fn note_text(r: &RecordedRequest) -> &str {
    r.body
        .as_ref()
        .and_then(|b| b.get("body"))
        .and_then(|b| b.as_str())
        .unwrap_or("")
}

fn is_note_write(r: &RecordedRequest) -> bool {
    (r.is(Route::CreateNote) && r.status == Some(201))
        || (r.is(Route::EditNote) && r.status == Some(200))
}

fn is_verdict(r: &RecordedRequest) -> bool {
    is_note_write(r) && note_text(r).contains("**Verdict:**")
}

fn created(r: &RecordedRequest) -> bool {
    r.is(Route::CreatePipeline) && r.status == Some(201)
}

/// What the bench still has to do to one failing pipeline, and when.
struct Plan {
    id: u64,
    running_at: Instant,
    failed_at: Instant,
    running: bool,
    done: bool,
}

pub async fn run(backend: Backend, follow: Follow, refs: usize) -> Run {
    let gitlab = GitLabDouble::start().await;
    let store = TestStore::new(backend).await;
    let mut references = Vec::new();
    for i in 0..refs {
        let t = tree(i);
        let vars = |kernel: &str| {
            vec![
                ("tree_name".to_string(), t.clone()),
                ("kernel".to_string(), kernel.to_string()),
                (
                    "ARCH_CONFIG".to_string(),
                    "x86_64 aarch64 s390x ppc64le".into(),
                ),
                ("KPET_TREE_NAME".to_string(), t.replace('-', "_")),
                ("builds_debug".to_string(), (i % 2 == 0).to_string()),
            ]
        };
        let add = |status: &str, kernel: &str| {
            let v = vars(kernel);
            let v: Vec<(&str, &str)> = v.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
            gitlab.add_pipeline(PIPE_PROJECT, &t, status, &v)
        };
        if i % 2 == 0 {
            let p = add("success", &format!("6.{i}.0-1"));
            references.push(format!(
                "  {{ tree = \"{t}\", project = \"{PIPE_PROJECT}\", pipeline = {} }},",
                p.id
            ));
        } else {
            add("success", "old");
            add("success", &format!("6.{i}.0-2"));
            add("failed", "broken");
            references.push(format!(
                "  {{ tree = \"{t}\", project = \"{PIPE_PROJECT}\", branch = \"{t}\" }},"
            ));
        }
    }
    let alice = gitlab.add_user("alice");
    gitlab.add_member(MR_PROJECT, alice, 30);
    let mr = gitlab.add_mr(MR_PROJECT, MR_PROJECT, "fix-tests", alice);

    let mut config = ShepherdConfig::new(&store, &gitlab);
    config.watcher_poll_ms = POLL_MS;
    config.extra = format!(
        r#"
[[people]]
name = "gitlab-users"
identities = ["gitlab:*"]
groups = ["developers"]

[gitlab_comments]
webhook_secret_env = "BENCH_WEBHOOK_SECRET"

[[canary.projects]]
project = "{MR_PROJECT}"
variables = {{ PIPELINE_DEFINITION_URL = "{{{{ mr.clone_url }}}}", PIPELINE_DEFINITION_REF = "{{{{ mr.ref }}}}", MR_SHA = "{{{{ mr.sha }}}}" }}
references = [
{}
]
"#,
        references.join("\n")
    );
    config
        .env
        .push(("BENCH_WEBHOOK_SECRET".into(), SECRET.into()));
    config.env.extend(shipped_queue_env());
    config.env.push((
        "SHEPHERD_WATCHER__MAX_POLL_INTERVAL_MS".into(),
        MAX_POLL_MS.to_string(),
    ));
    let mut bot = Shepherd::serve(&config).await;
    bot.wait_http(Duration::from_secs(30)).await;
    gitlab.set_webhook(&format!("{}/hooks/gitlab", bot.base_url()), SECRET);
    if follow == Follow::PollingOnly {
        gitlab.set_webhook_events(true, true, false, false);
    }
    gitlab.set_auto_finish(Some(AutoFinish::after(START, FINISH, AutoOutcome::Success)));

    let commented = Instant::now();
    let commented_utc = chrono::Utc::now();
    gitlab.comment(
        MR_PROJECT,
        mr,
        alice,
        "Reworked the test stage.\n\n@shepherd test",
    );

    // Drive the failing pipelines while the run goes on; stop at the verdict.
    let mut seen: HashSet<u64> = HashSet::new();
    let mut plans: Vec<Plan> = Vec::new();
    let deadline = Instant::now() + WAIT;
    loop {
        let now = Instant::now();
        assert!(
            now < deadline,
            "no verdict within {WAIT:?}; stderr:\n{}",
            bot.stderr()
        );
        for p in gitlab.pipelines_created() {
            if !seen.insert(p.id) {
                continue;
            }
            let index = p
                .variable("tree_name")
                .and_then(|name| (0..refs).find(|i| tree(*i) == name))
                .unwrap_or(0);
            if !failing(index) {
                continue;
            }
            // Out of the automatic policy: GitLab's usual next status after `created`.
            gitlab.set_status(p.id, "pending");
            let run = FAILING_RUN_SECS[plans.len() % FAILING_RUN_SECS.len()];
            plans.push(Plan {
                id: p.id,
                running_at: now + START,
                failed_at: now + START + Duration::from_secs(run),
                running: false,
                done: false,
            });
        }
        let mut next = now + Duration::from_millis(200);
        for plan in plans.iter_mut().filter(|p| !p.done) {
            if !plan.running && plan.running_at <= now {
                gitlab.set_status(plan.id, "running");
                plan.running = true;
            }
            if plan.failed_at <= now {
                gitlab.add_job(plan.id, "test x86_64", "test", "failed");
                gitlab.set_status(plan.id, "failed");
                plan.done = true;
                continue;
            }
            next = next.min(if plan.running {
                plan.failed_at
            } else {
                plan.running_at
            });
        }
        let wait = next.saturating_duration_since(Instant::now());
        if gitlab
            .wait_for(|reqs| reqs.iter().any(is_verdict), wait)
            .await
        {
            break;
        }
    }
    // Anything shepherd still asks after the verdict (it should not).
    tokio::time::sleep(Duration::from_secs(3)).await;
    let requests = gitlab.requests();
    let hook_updates = bot
        .metric("shepherd_watch_updates_total{source=\"hook\"}")
        .await
        .unwrap_or(0.0);
    let poll_updates = bot
        .metric("shepherd_watch_updates_total{source=\"poll\"}")
        .await
        .unwrap_or(0.0);
    let (warnings, errors) = log_problems(
        &format!("canary, {}, {}", backend_label(backend), follow.label()),
        &bot.stderr(),
    );
    bot.kill9().await;

    let since = |t: Instant| t.saturating_duration_since(commented);
    let creates: Vec<&RecordedRequest> = requests.iter().filter(|r| created(r)).collect();
    assert_eq!(creates.len(), refs, "one pipeline per reference");
    let verdict_req = requests
        .iter()
        .find(|r| is_verdict(r))
        .expect("the verdict");
    let first_summary = requests
        .iter()
        .find(|r| is_note_write(r) && note_text(r).contains("Canary pipelines for"))
        .expect("a summary");
    let pipelines = gitlab.pipelines_created();
    let new_ids: Vec<u64> = pipelines.iter().map(|p| p.id).collect();
    let last_finished = pipelines
        .iter()
        .filter_map(|p| p.finished_at)
        .max()
        .and_then(|t| (t - commented_utc).to_std().ok())
        .unwrap_or_default();
    let watching = |r: &RecordedRequest, route: Route| {
        r.is(route) && r.pipeline.is_some_and(|p| new_ids.contains(&p))
    };
    let until_verdict: Vec<&RecordedRequest> = requests
        .iter()
        .filter(|r| r.time >= commented && r.seq <= verdict_req.seq)
        .collect();
    let watch_pipeline = until_verdict
        .iter()
        .filter(|r| watching(r, Route::GetPipeline))
        .count();
    let watch_jobs = until_verdict
        .iter()
        .filter(|r| watching(r, Route::ListJobs))
        .count();
    let mut by_route = BTreeMap::new();
    for r in &until_verdict {
        *by_route.entry(format!("{:?}", r.route)).or_insert(0) += 1;
    }
    let after_verdict = requests.iter().filter(|r| r.seq > verdict_req.seq).count();
    let text = note_text(verdict_req);
    let verdict_text = text
        .split("**Verdict:**")
        .nth(1)
        .and_then(|v| v.lines().next())
        .unwrap_or("")
        .trim()
        .to_string();
    Run {
        backend,
        follow,
        refs,
        first_create: since(creates[0].time),
        all_created: since(creates.iter().map(|r| r.time).max().expect("creates")),
        first_summary: since(first_summary.time),
        verdict: since(verdict_req.time),
        last_finished,
        verdict_text,
        watch_pipeline,
        watch_jobs,
        by_route,
        after_verdict,
        warnings,
        errors,
        hook_updates,
        poll_updates,
    }
}

fn s(d: Duration) -> String {
    format!("{:.2} s", d.as_secs_f64())
}

pub async fn main(refs: usize) {
    let mut runs = Vec::new();
    for backend in [Backend::Sqlite, Backend::Postgres] {
        for follow in [Follow::Hooks, Follow::PollingOnly] {
            runs.push(run(backend, follow, refs).await);
        }
    }
    println!(
        "Canary of {refs} reference pipelines; watcher poll {POLL_MS} ms growing to {MAX_POLL_MS} ms; \
         times from the `@shepherd test` comment\n"
    );
    println!(
        "| store, following | first create | all {refs} created | first summary note | last pipeline finished | verdict in the note | watch calls: GET pipeline + GET jobs | watch updates hook/poll | all API calls | after the verdict | WARN/ERROR lines |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|");
    for r in &runs {
        let total: usize = r.by_route.values().sum();
        println!(
            "| {}, {} | {} | **{}** | **{}** | {} | {} (+{:.2} s) | **{}** ({} + {}) | {}/{} | {} | {} | {}/{} |",
            backend_label(r.backend),
            r.follow.label(),
            s(r.first_create),
            s(r.all_created),
            s(r.first_summary),
            s(r.last_finished),
            s(r.verdict),
            r.verdict.as_secs_f64() - r.last_finished.as_secs_f64(),
            r.watch_pipeline + r.watch_jobs,
            r.watch_pipeline,
            r.watch_jobs,
            r.hook_updates,
            r.poll_updates,
            total,
            r.after_verdict,
            r.warnings,
            r.errors
        );
    }
    println!(
        "\nVerdicts: {}",
        runs.first().map(|r| r.verdict_text.as_str()).unwrap_or("")
    );
    let routes: BTreeSet<&String> = runs.iter().flat_map(|r| r.by_route.keys()).collect();
    println!("\nAPI calls from the comment to the verdict, by route\n");
    let header: Vec<String> = runs
        .iter()
        .map(|r| format!("{}, {}", backend_label(r.backend), r.follow.label()))
        .collect();
    println!("| route | {} |", header.join(" | "));
    println!("|---|{}", "---|".repeat(runs.len()));
    for route in routes {
        let cells: Vec<String> = runs
            .iter()
            .map(|r| r.by_route.get(route).copied().unwrap_or(0).to_string())
            .collect();
        println!("| {route} | {} |", cells.join(" | "));
    }
    for r in &runs {
        assert_eq!(r.refs, refs);
    }
}
