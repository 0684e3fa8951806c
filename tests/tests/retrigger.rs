//! `retrigger` end to end through the console: the real binary, a real store, the GitLab double.

use std::time::Duration;

use shepherd_tests::gitlab::{AutoFinish, GitLabDouble, Route};
use shepherd_tests::harness::{Backend, Shepherd, ShepherdConfig, TestStore};
use shepherd_tests::on_both_stores;

const PROJECT: &str = "cki-project/pipeline-definition";
const WAIT: Duration = Duration::from_secs(30);

async fn round_trip(backend: Backend) {
    let store = TestStore::new(backend).await;
    let gitlab = GitLabDouble::start().await;
    let old = gitlab.add_pipeline(
        PROJECT,
        "main",
        "success",
        &[("KERNEL_VERSION", "6.12.0"), ("tree_name", "mainline")],
    );
    gitlab.set_auto_finish(Some(AutoFinish::failed_after_polls(1, 1, "test x86_64")));

    let config = ShepherdConfig::new(&store, &gitlab);
    let mut bot = Shepherd::console(&config).await;
    bot.send(&format!("retrigger {} foo=bar", old.web_url))
        .await;
    let reply = bot.expect_line("retriggered pipeline", WAIT).await;

    let created = gitlab.pipelines_created();
    assert_eq!(created.len(), 1, "exactly one pipeline: {created:?}");
    let new = &created[0];
    assert_eq!(new.git_ref, "main");
    assert_eq!(new.variable("KERNEL_VERSION"), Some("6.12.0"));
    assert_eq!(new.variable("tree_name"), Some("mainline"));
    assert_eq!(new.variable("foo"), Some("bar"));
    assert_eq!(
        new.variable("CKI_DEPLOYMENT_ENVIRONMENT"),
        Some("retrigger")
    );
    let request_id = new
        .variable("SHEPHERD_REQUEST_ID")
        .expect("the request id travels with the pipeline");
    assert_eq!(new.variables.len(), 5, "{:?}", new.variables);
    assert!(
        reply.contains(&new.web_url),
        "reply carries the new URL: {reply}"
    );
    assert!(reply.contains(&format!("pipeline {}", old.id)), "{reply}");

    let report = bot
        .expect_line(&format!("pipeline {} of {PROJECT} finished", new.id), WAIT)
        .await;
    assert!(report.contains("failed"), "{report}");
    assert!(report.contains("test x86_64"), "failed job named: {report}");
    assert!(report.contains("/-/jobs/"), "failed job linked: {report}");

    bot.close_stdin();
    assert!(bot.wait_exit(WAIT).await.success(), "{}", bot.stderr());
    assert_eq!(gitlab.pipelines_created().len(), 1);

    // What was stored: the request done, the pipeline remembered, the watch closed, audited.
    let done = store
        .count(&format!(
            "SELECT COUNT(*) FROM requests WHERE id = '{request_id}' AND state = 'done'"
        ))
        .await;
    assert_eq!(done, 1);
    assert_eq!(store.count("SELECT COUNT(*) FROM pipelines").await, 1);
    assert_eq!(
        store
            .count("SELECT COUNT(*) FROM watches WHERE state = 'done' AND last_status = 'failed'")
            .await,
        1
    );
    assert_eq!(
        store
            .count("SELECT COUNT(*) FROM audit WHERE command = 'retrigger' AND outcome = 'done'")
            .await,
        1
    );
}
on_both_stores!(
    round_trip_creates_one_pipeline_and_reports_its_end,
    round_trip
);

async fn non_production(backend: Backend) {
    let store = TestStore::new(backend).await;
    let gitlab = GitLabDouble::start().await;
    let old = gitlab.add_pipeline(PROJECT, "main", "success", &[("A", "1")]);
    let mut config = ShepherdConfig::new(&store, &gitlab);
    config.production = false;
    let mut bot = Shepherd::console(&config).await;
    bot.send(&format!("retrigger {} foo=bar", old.id)).await;
    let reply = bot.expect_line("would retrigger", WAIT).await;
    assert!(reply.contains("non-production mode"), "{reply}");
    assert!(reply.contains("foo=bar"), "{reply}");
    assert!(reply.contains("A=1"), "{reply}");
    bot.close_stdin();
    assert!(bot.wait_exit(WAIT).await.success());
    assert!(gitlab.pipelines_created().is_empty());
    // Reads are real, writes are not even attempted.
    let requests = gitlab.requests();
    assert!(requests.iter().any(|r| r.is(Route::GetPipeline)));
    assert!(requests.iter().all(|r| r.method == "GET"), "{requests:?}");
    assert_eq!(
        store
            .count("SELECT COUNT(*) FROM audit WHERE command = 'retrigger' AND outcome = 'would'")
            .await,
        1
    );
}
on_both_stores!(non_production_mode_only_describes, non_production);

async fn status_and_cancel(backend: Backend) {
    let store = TestStore::new(backend).await;
    let gitlab = GitLabDouble::start().await;
    let old = gitlab.add_pipeline(PROJECT, "main", "failed", &[]);
    let foreign = gitlab.add_pipeline(PROJECT, "main", "running", &[]);
    let config = ShepherdConfig::new(&store, &gitlab);
    let mut bot = Shepherd::console(&config).await;

    bot.send(&format!("retrigger {PROJECT}/pipelines/{}", old.id))
        .await;
    bot.expect_line("retriggered pipeline", WAIT).await;
    let new = gitlab.pipelines_created().remove(0);

    bot.send(&format!("status {}", new.web_url)).await;
    let status = bot
        .expect_line(&format!("pipeline {} of {PROJECT}:", new.id), WAIT)
        .await;
    assert!(
        status.contains("started by shepherd for console:tester"),
        "{status}"
    );

    bot.send(&format!("cancel {PROJECT}/pipelines/{}", foreign.id))
        .await;
    let refused = bot.expect_line("was not started by shepherd", WAIT).await;
    assert!(refused.contains(&foreign.id.to_string()), "{refused}");
    assert_eq!(
        gitlab.pipeline(foreign.id).map(|p| p.status),
        Some("running".into())
    );

    bot.send(&format!("cancel {}", new.web_url)).await;
    bot.expect_line("cancel requested", WAIT).await;
    let report = bot
        .expect_line(&format!("pipeline {} of {PROJECT} finished", new.id), WAIT)
        .await;
    assert!(report.contains("canceled"), "{report}");
    assert_eq!(
        gitlab.pipeline(new.id).map(|p| p.status),
        Some("canceled".into())
    );
    assert!(
        gitlab
            .requests()
            .iter()
            .filter(|r| r.is(Route::CancelPipeline))
            .all(|r| r.pipeline == Some(new.id))
    );
    bot.close_stdin();
    assert!(bot.wait_exit(WAIT).await.success());
}
on_both_stores!(status_and_cancel_of_started_pipelines, status_and_cancel);
