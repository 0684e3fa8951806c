//! Exactly-once under crashes and an unreliable GitLab.
//!
//! - kill -9 while GitLab holds the answer to a create that already took effect; restart:
//!   one pipeline, and the asker still gets the reply and the final report.
//! - 30% of GitLab's answers fail in every way the double knows (5xx, 429, resets,
//!   timeouts, slow answers, creates that took effect then answered 502): every command
//!   still succeeds and none creates two pipelines.

use std::collections::HashSet;
use std::time::Duration;

use shepherd_tests::gitlab::{AutoFinish, FaultKind, Faults, GitLabDouble, Route};
use shepherd_tests::harness::{Backend, Shepherd, ShepherdConfig, TestStore};
use shepherd_tests::on_both_stores;

const PROJECT: &str = "cki-project/pipeline-definition";
const WAIT: Duration = Duration::from_secs(60);

async fn crash_after_create(backend: Backend) {
    let store = TestStore::new(backend).await;
    let gitlab = GitLabDouble::start().await;
    let old = gitlab.add_pipeline(PROJECT, "main", "success", &[("KERNEL_VERSION", "6.12.0")]);
    gitlab.set_auto_finish(Some(AutoFinish::success_after_polls(1, 1)));
    let config = ShepherdConfig::new(&store, &gitlab);

    let hold = gitlab.hold_creates();
    let mut first = Shepherd::console(&config).await;
    first
        .send(&format!("retrigger {} foo=bar", old.web_url))
        .await;
    tokio::time::timeout(WAIT, hold.wait_reached())
        .await
        .expect("the create reached GitLab");
    // The pipeline exists in GitLab; shepherd has not heard back. Crash now.
    first.kill9().await;
    hold.release();
    assert_eq!(gitlab.pipelines_created().len(), 1);
    assert!(
        first.lines().iter().all(|l| !l.contains("retriggered")),
        "no reply before the crash: {:?}",
        first.lines()
    );

    // Restart with nothing on stdin: the console finishes the work it finds and exits.
    let mut second = Shepherd::console(&config).await;
    second.close_stdin();
    let created = gitlab.pipelines_created();
    let reply = second.expect_line("retriggered pipeline", WAIT).await;
    second
        .expect_line(
            &format!("pipeline {} of {PROJECT} finished: success", created[0].id),
            WAIT,
        )
        .await;
    assert!(
        second.wait_exit(WAIT).await.success(),
        "{}",
        second.stderr()
    );

    let created = gitlab.pipelines_created();
    assert_eq!(
        created.len(),
        1,
        "exactly one pipeline after the crash: {created:?}"
    );
    assert!(reply.contains(&created[0].web_url), "{reply}");
    assert_eq!(created[0].variable("foo"), Some("bar"));
    assert_eq!(
        gitlab
            .requests()
            .iter()
            .filter(|r| r.is(Route::CreatePipeline))
            .count(),
        1,
        "the redelivered request looked before creating"
    );
    assert_eq!(
        store
            .count("SELECT COUNT(*) FROM requests WHERE state = 'done' AND attempts = 2")
            .await,
        1
    );
}
on_both_stores!(
    kill_9_after_create_gives_one_pipeline_and_the_reply,
    crash_after_create
);

async fn unreliable_gitlab(backend: Backend) {
    const COMMANDS: usize = 12;
    let store = TestStore::new(backend).await;
    let gitlab = GitLabDouble::start().await;
    let old = gitlab.add_pipeline(PROJECT, "main", "success", &[("KERNEL_VERSION", "6.12.0")]);
    gitlab.set_auto_finish(Some(AutoFinish::success_after_polls(1, 1)));
    gitlab.set_faults(Faults {
        rate: 0.3,
        kinds: vec![
            FaultKind::Status(500),
            FaultKind::Status(502),
            FaultKind::Status(503),
            FaultKind::TooManyRequests {
                retry_after_secs: 1,
            },
            FaultKind::Reset,
            FaultKind::Timeout,
            FaultKind::Slow(Duration::from_millis(300)),
            FaultKind::CreateThenFail(502),
        ],
        seed: 20261125,
    });
    // On top of chance: the first three creates take effect and then answer 502.
    gitlab.fail_next(Route::CreatePipeline, 3, FaultKind::CreateThenFail(502));
    let mut config = ShepherdConfig::new(&store, &gitlab);
    config.queue = "max_attempts = 20".into();
    config.gitlab = "max_retries = 6".into();
    config.rate_limits = "per_identity_per_minute = 1000".into();
    let mut bot = Shepherd::console(&config).await;
    for i in 0..COMMANDS {
        bot.send(&format!("retrigger {} run={i}", old.web_url))
            .await;
    }
    bot.close_stdin();
    assert!(
        bot.wait_exit(Duration::from_secs(240)).await.success(),
        "{}",
        bot.stderr()
    );

    let lines = bot.lines();
    let replies = lines
        .iter()
        .filter(|l| l.contains("retriggered pipeline"))
        .count();
    let reports = lines
        .iter()
        .filter(|l| l.contains("finished: success"))
        .count();
    assert_eq!(
        replies,
        COMMANDS,
        "every command succeeded:\n{}",
        lines.join("\n")
    );
    assert_eq!(
        reports,
        COMMANDS,
        "every pipeline reported:\n{}",
        lines.join("\n")
    );

    let created = gitlab.pipelines_created();
    let ids: HashSet<&str> = created
        .iter()
        .filter_map(|p| p.variable("SHEPHERD_REQUEST_ID"))
        .collect();
    let runs: HashSet<&str> = created.iter().filter_map(|p| p.variable("run")).collect();
    assert_eq!(created.len(), COMMANDS, "no duplicates: {created:#?}");
    assert_eq!(ids.len(), COMMANDS);
    assert_eq!(runs.len(), COMMANDS);
    // The faults really happened, including creates that took effect and then failed.
    let requests = gitlab.requests();
    let creates_faulted: Vec<_> = requests
        .iter()
        .filter(|r| r.is(Route::CreatePipeline))
        .filter_map(|r| r.fault)
        .collect();
    assert!(
        creates_faulted.contains(&FaultKind::CreateThenFail(502)),
        "a create took effect and then failed: {creates_faulted:?}"
    );
    assert!(requests.iter().filter(|r| r.fault.is_some()).count() >= 10);
    assert_eq!(
        store
            .count("SELECT COUNT(*) FROM requests WHERE state = 'dead'")
            .await,
        0
    );
}
on_both_stores!(
    thirty_percent_faults_every_command_succeeds_once,
    unreliable_gitlab
);
