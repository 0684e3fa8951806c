//! Merge-request comment commands and canary pipelines, end to end: the real `shepherd serve`
//! receives GitLab's webhooks from the GitLab double (which sends them the way GitLab does, with
//! the real headers), runs the reference pipelines with the MR's code, and keeps one summary note
//! up to date until the verdict. Every scenario that stores something runs on SQLite and
//! PostgreSQL.

use std::time::Duration;

use shepherd_tests::gitlab::{FaultKind, GitLabDouble, NoteRecord, Pipeline, Route, WebhookEvent};
use shepherd_tests::harness::{Backend, Shepherd, ShepherdConfig, TestStore, until};
use shepherd_tests::on_both_stores;

const WAIT: Duration = Duration::from_secs(20);
const MR_PROJECT: &str = "cki-project/pipeline-definition";
const PIPE_PROJECT: &str = "cki-project/cki-pipeline";
const SECRET: &str = "webhook-secret-1";

struct Env {
    gitlab: GitLabDouble,
    store: TestStore,
    config: ShepherdConfig,
    alice: u64,
    mr: u64,
    mainline: Pipeline,
    rhel: Pipeline,
}

/// Two references: `mainline` is a listed pipeline, `rhel9` the latest successful pipeline of
/// its branch (a newer failed one and an older successful one must not be chosen).
async fn setup(backend: Backend) -> Env {
    let gitlab = GitLabDouble::start().await;
    let store = TestStore::new(backend).await;
    let mainline = gitlab.add_pipeline(
        PIPE_PROJECT,
        "mainline",
        "success",
        &[("tree_name", "mainline"), ("kernel", "v6.12")],
    );
    gitlab.add_pipeline(
        PIPE_PROJECT,
        "rhel9",
        "success",
        &[("tree_name", "rhel9"), ("kernel", "old")],
    );
    let rhel = gitlab.add_pipeline(
        PIPE_PROJECT,
        "rhel9",
        "success",
        &[("tree_name", "rhel9"), ("kernel", "5.14.0-500")],
    );
    gitlab.add_pipeline(
        PIPE_PROJECT,
        "rhel9",
        "failed",
        &[("tree_name", "rhel9"), ("kernel", "broken")],
    );
    let alice = gitlab.add_user("alice");
    gitlab.add_member(MR_PROJECT, alice, 30);
    let mr = gitlab.add_mr(MR_PROJECT, MR_PROJECT, "fix-tests", alice);

    let mut config = ShepherdConfig::new(&store, &gitlab);
    config.extra = format!(
        r#"
[[people]]
name = "gitlab-users"
identities = ["gitlab:*"]
groups = ["developers"]

[gitlab_comments]
webhook_secret_env = "TEST_WEBHOOK_SECRET"

[gitlab_comments.projects."{MR_PROJECT}"]
welcome = true

[[canary.projects]]
project = "{MR_PROJECT}"
variables = {{ PIPELINE_DEFINITION_URL = "{{{{ mr.clone_url }}}}", PIPELINE_DEFINITION_REF = "{{{{ mr.ref }}}}", MR_SHA = "{{{{ mr.sha }}}}" }}
references = [
  {{ tree = "mainline", project = "{PIPE_PROJECT}", pipeline = {mainline} }},
  {{ tree = "rhel9", project = "{PIPE_PROJECT}", branch = "rhel9" }},
]
"#,
        mainline = mainline.id
    );
    config
        .env
        .push(("TEST_WEBHOOK_SECRET".into(), SECRET.into()));
    Env {
        gitlab,
        store,
        config,
        alice,
        mr,
        mainline,
        rhel,
    }
}

impl Env {
    async fn serve(&self) -> Shepherd {
        let shepherd = Shepherd::serve(&self.config).await;
        shepherd.wait_http(WAIT).await;
        self.gitlab
            .set_webhook(&format!("{}/hooks/gitlab", shepherd.base_url()), SECRET);
        shepherd
    }

    fn bot_notes(&self) -> Vec<NoteRecord> {
        self.gitlab
            .notes(MR_PROJECT, self.mr)
            .into_iter()
            .filter(|n| n.author == "shepherd")
            .collect()
    }

    fn summaries(&self) -> Vec<NoteRecord> {
        self.bot_notes()
            .into_iter()
            .filter(|n| n.body.contains("Canary pipelines for"))
            .collect()
    }

    /// Awaits exactly one summary note that contains `needle`.
    async fn summary_with(&self, shepherd: &Shepherd, needle: &str) -> NoteRecord {
        let ok = until(WAIT, || {
            self.summaries()
                .first()
                .is_some_and(|n| n.body.contains(needle))
        })
        .await;
        assert!(
            ok,
            "no summary containing {needle:?}; notes: {:#?}\nstderr:\n{}",
            self.gitlab.notes(MR_PROJECT, self.mr),
            shepherd.stderr()
        );
        let summaries = self.summaries();
        assert_eq!(summaries.len(), 1, "one summary note, edited in place");
        summaries[0].clone()
    }

    async fn created(&self, shepherd: &Shepherd, n: usize) -> Vec<Pipeline> {
        let ok = until(WAIT, || self.gitlab.pipelines_created().len() >= n).await;
        assert!(
            ok,
            "{n} pipelines were not created; stderr:\n{}",
            shepherd.stderr()
        );
        self.gitlab.pipelines_created()
    }

    fn tree_of<'a>(&self, pipelines: &'a [Pipeline], tree: &str) -> &'a Pipeline {
        pipelines
            .iter()
            .find(|p| p.variable("tree_name") == Some(tree))
            .unwrap_or_else(|| panic!("no canary pipeline for {tree}: {pipelines:#?}"))
    }
}

async fn developer_test_reaches_a_verdict(backend: Backend) {
    let env = setup(backend).await;
    let shepherd = env.serve().await;
    let gitlab = &env.gitlab;

    gitlab.comment(
        MR_PROJECT,
        env.mr,
        env.alice,
        "Reworked the test stage.\n\n@shepherd please test",
    );
    let created = env.created(&shepherd, 2).await;
    assert_eq!(created.len(), 2, "one pipeline per reference");
    let mr = gitlab.mr(MR_PROJECT, env.mr).expect("the MR");
    let mainline = env.tree_of(&created, "mainline");
    let rhel = env.tree_of(&created, "rhel9");
    assert_eq!(mainline.git_ref, env.mainline.git_ref);
    assert_eq!(rhel.git_ref, "rhel9");
    // The reference's own variables: rhel9 is the latest SUCCESSFUL pipeline of its branch.
    assert_eq!(mainline.variable("kernel"), Some("v6.12"));
    assert_eq!(rhel.variable("kernel"), Some("5.14.0-500"));
    assert_eq!(env.rhel.variable("kernel"), Some("5.14.0-500"));
    for p in [mainline, rhel] {
        assert_eq!(
            p.variable("PIPELINE_DEFINITION_REF"),
            Some(format!("refs/merge-requests/{}/head", env.mr).as_str())
        );
        assert_eq!(
            p.variable("PIPELINE_DEFINITION_URL"),
            Some(format!("{}/{MR_PROJECT}.git", gitlab.url()).as_str())
        );
        assert_eq!(p.variable("MR_SHA"), Some(mr.sha.as_str()));
        assert_eq!(p.variable("CKI_DEPLOYMENT_ENVIRONMENT"), Some("retrigger"));
        assert!(p.variable("SHEPHERD_REQUEST_ID").is_some());
    }

    let summary = env.summary_with(&shepherd, "Canary pipelines for").await;
    assert!(
        summary.body.contains(&format!("#{}", mainline.id)),
        "{}",
        summary.body
    );
    assert!(summary.body.contains("Running: 0 of 2"), "{}", summary.body);

    gitlab.set_status(mainline.id, "running");
    env.summary_with(&shepherd, "🔄 running").await;
    gitlab.set_status(mainline.id, "success");
    let job = gitlab.add_job(rhel.id, "test x86_64", "test", "failed");
    gitlab.set_status(rhel.id, "failed");
    let done = env.summary_with(&shepherd, "Verdict").await;
    assert!(
        done.body.contains("❌ 1 of 2 failed (rhel9)"),
        "{}",
        done.body
    );
    assert!(done.body.contains("test x86_64"), "{}", done.body);
    assert!(
        done.body.contains(&format!("/-/jobs/{job}")),
        "{}",
        done.body
    );
    assert!(done.edits >= 2, "edited in place, not re-posted: {done:?}");
    assert_eq!(
        env.bot_notes().len(),
        1,
        "nothing but the summary was posted"
    );

    assert_eq!(
        env.store
            .count("SELECT COUNT(*) FROM canary_runs WHERE state = 'done'")
            .await,
        1
    );
    assert_eq!(
        env.store
            .count("SELECT COUNT(*) FROM audit WHERE command = 'test' AND identity = 'gitlab:alice' AND outcome = 'done'")
            .await,
        1
    );
    // Canary pipelines are no single reports: nothing but the summary.
    assert_eq!(
        env.store
            .count("SELECT COUNT(*) FROM outbox WHERE frontend = 'gitlab' AND slot IS NULL")
            .await,
        0
    );
}
on_both_stores!(developer_test, developer_test_reaches_a_verdict);

async fn guest_is_refused(backend: Backend) {
    let env = setup(backend).await;
    let shepherd = env.serve().await;
    let bob = env.gitlab.add_user("bob");
    env.gitlab.add_member(MR_PROJECT, bob, 10);
    let carol = env.gitlab.add_user("carol");

    env.gitlab
        .comment(MR_PROJECT, env.mr, bob, "@shepherd test");
    env.gitlab
        .comment(MR_PROJECT, env.mr, carol, "@shepherd retest");
    let ok = until(WAIT, || env.bot_notes().len() == 2).await;
    assert!(ok, "two refusals; stderr:\n{}", shepherd.stderr());
    let notes = env.bot_notes();
    let to_bob = notes
        .iter()
        .find(|n| n.body.starts_with("@bob "))
        .expect("a reply to bob");
    assert!(
        to_bob.body.contains("Developer access") && to_bob.body.contains("you have guest"),
        "{}",
        to_bob.body
    );
    let to_carol = notes
        .iter()
        .find(|n| n.body.starts_with("@carol "))
        .expect("a reply to carol");
    assert!(to_carol.body.contains("you have none"), "{}", to_carol.body);
    assert!(env.gitlab.pipelines_created().is_empty());
    assert_eq!(
        env.store
            .count("SELECT COUNT(*) FROM audit WHERE outcome = 'refused' AND identity IN ('gitlab:bob', 'gitlab:carol')")
            .await,
        2
    );
    assert_eq!(
        env.store
            .count("SELECT COUNT(*) FROM requests WHERE kind = 'command'")
            .await,
        0,
        "nothing refused is stored"
    );
}
on_both_stores!(guest, guest_is_refused);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quoted_commands_and_own_notes_do_nothing() {
    let env = setup(Backend::Sqlite).await;
    let shepherd = env.serve().await;
    env.gitlab.comment(
        MR_PROJECT,
        env.mr,
        env.alice,
        "To run it, say:\n\n```\n@shepherd test\n```\n\n> @shepherd test\n\nor `@shepherd test` inline.",
    );
    // A note by the bot's own account that looks like a command.
    env.gitlab.comment(
        MR_PROJECT,
        env.mr,
        1,
        "@shepherd test\n\n<!-- shepherd:x -->",
    );
    let processed = env
        .store
        .wait_count(
            "SELECT COUNT(*) FROM requests WHERE kind = 'gitlab-event' AND state = 'done'",
            2,
            WAIT,
        )
        .await;
    assert!(
        processed,
        "both events processed; stderr:\n{}",
        shepherd.stderr()
    );
    assert!(env.gitlab.pipelines_created().is_empty());
    assert_eq!(
        env.bot_notes().len(),
        1,
        "only the note the test wrote as the bot"
    );
    assert_eq!(
        env.store
            .count("SELECT COUNT(*) FROM requests WHERE kind = 'command'")
            .await,
        0
    );
}

async fn redelivered_and_edited_comments_run_once(backend: Backend) {
    let env = setup(backend).await;
    let shepherd = env.serve().await;
    let note = env
        .gitlab
        .comment(MR_PROJECT, env.mr, env.alice, "@shepherd test");
    env.created(&shepherd, 2).await;
    env.summary_with(&shepherd, "Canary pipelines for").await;

    // GitLab's "Resend request": the same Idempotency-Key and event UUID.
    let deliveries = env.gitlab.hook_deliveries();
    let index = deliveries
        .iter()
        .position(|d| d.event == WebhookEvent::Note && d.body["object_attributes"]["id"] == note)
        .expect("the note's delivery");
    let status = env.gitlab.redeliver(index).await.expect("resent");
    assert_eq!(
        status, 200,
        "a redelivery is acknowledged, not stored again"
    );

    // An edit that keeps the command and adds one runs only the new one.
    env.gitlab
        .edit_comment(note, "@shepherd test\n@shepherd status");
    let ok = until(WAIT, || {
        env.bot_notes()
            .iter()
            .any(|n| n.body.starts_with("@alice ") && n.body.contains("Canary pipelines"))
    })
    .await;
    assert!(ok, "the status reply; stderr:\n{}", shepherd.stderr());
    assert_eq!(env.gitlab.pipelines_created().len(), 2, "test ran once");
    assert_eq!(
        env.store
            .count("SELECT COUNT(*) FROM requests WHERE kind = 'command'")
            .await,
        2,
        "test and status, each once"
    );
    assert_eq!(
        env.store
            .count("SELECT COUNT(*) FROM requests WHERE kind = 'gitlab-event' AND identity = 'gitlab:alice' AND payload LIKE '%\"event\":\"note\"%'")
            .await,
        2,
        "the note's create and its edit; the resend was not stored"
    );
}
on_both_stores!(redelivery, redelivered_and_edited_comments_run_once);

async fn crash_during_a_canary_creates_nothing_twice(backend: Backend) {
    let env = setup(backend).await;
    let mut shepherd = env.serve().await;
    let hold = env.gitlab.hold_creates();
    env.gitlab
        .comment(MR_PROJECT, env.mr, env.alice, "@shepherd test");
    // A create reached GitLab and took effect; its answer is held: kill shepherd now.
    hold.wait_reached().await;
    shepherd.kill9().await;
    drop(hold);

    let shepherd = env.serve().await;
    let created = env.created(&shepherd, 2).await;
    for p in &created {
        env.gitlab.set_status(p.id, "success");
    }
    let done = env.summary_with(&shepherd, "Verdict").await;
    assert!(
        done.body.contains("✅ all 2 canary pipelines passed"),
        "{}",
        done.body
    );
    assert_eq!(
        env.gitlab.pipelines_created().len(),
        2,
        "no duplicate pipelines after the crash"
    );
    assert_eq!(env.bot_notes().len(), 1, "one summary");
}
on_both_stores!(crash, crash_during_a_canary_creates_nothing_twice);

async fn retest_reruns_only_the_failed(backend: Backend) {
    let env = setup(backend).await;
    let shepherd = env.serve().await;
    env.gitlab
        .comment(MR_PROJECT, env.mr, env.alice, "@shepherd test");
    let created = env.created(&shepherd, 2).await;
    let mainline = env.tree_of(&created, "mainline").id;
    let rhel = env.tree_of(&created, "rhel9").id;
    env.gitlab.set_status(mainline, "success");
    env.gitlab.set_status(rhel, "failed");
    env.summary_with(&shepherd, "1 of 2 failed").await;

    env.gitlab
        .comment(MR_PROJECT, env.mr, env.alice, "@shepherd retest");
    let created = env.created(&shepherd, 3).await;
    assert_eq!(created.len(), 3, "only the failed tree is re-run");
    let again = created
        .iter()
        .find(|p| p.id != mainline && p.id != rhel)
        .expect("the retest pipeline");
    assert_eq!(again.variable("tree_name"), Some("rhel9"));
    let running = env.summary_with(&shepherd, "(retest 1)").await;
    assert!(running.body.contains("Running: 1 of 2"), "{}", running.body);
    env.gitlab.set_status(again.id, "success");
    env.summary_with(&shepherd, "✅ all 2 canary pipelines passed")
        .await;
    assert!(
        env.bot_notes()
            .iter()
            .any(|n| n.body.contains("re-running 1 failed canary pipeline(s)")),
        "the retest is acknowledged"
    );
}
on_both_stores!(retest, retest_reruns_only_the_failed);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_push_marks_the_summary_outdated_and_cancel_stops_the_run() {
    let env = setup(Backend::Sqlite).await;
    let shepherd = env.serve().await;
    env.gitlab
        .comment(MR_PROJECT, env.mr, env.alice, "@shepherd test");
    let created = env.created(&shepherd, 2).await;
    env.summary_with(&shepherd, "Running").await;

    let new_head = env.gitlab.push_mr(MR_PROJECT, env.mr);
    env.summary_with(
        &shepherd,
        &format!(
            "Outdated:** !{} has new commits (`{}`)",
            env.mr,
            &new_head[..8]
        ),
    )
    .await;
    // retest refuses to mix commits.
    env.gitlab
        .comment(MR_PROJECT, env.mr, env.alice, "@shepherd retest");
    let ok = until(WAIT, || {
        env.bot_notes()
            .iter()
            .any(|n| n.body.contains("nothing to retest yet") || n.body.contains("has new commits"))
    })
    .await;
    assert!(ok, "retest answered; stderr:\n{}", shepherd.stderr());

    env.gitlab
        .comment(MR_PROJECT, env.mr, env.alice, "@shepherd cancel");
    let done = env.summary_with(&shepherd, "Verdict").await;
    assert!(done.body.contains("⏹️ 2 of 2 canceled"), "{}", done.body);
    for p in &created {
        assert_eq!(
            env.gitlab.pipeline(p.id).expect("pipeline").status,
            "canceled"
        );
    }
    assert_eq!(env.gitlab.pipelines_created().len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipeline_hooks_finish_the_run_without_polling() {
    let mut env = setup(Backend::Sqlite).await;
    // The watcher would first poll after ten minutes: only Pipeline Hooks can finish this run.
    env.config.watcher_poll_ms = 600_000;
    let shepherd = env.serve().await;
    env.gitlab
        .comment(MR_PROJECT, env.mr, env.alice, "@shepherd test");
    let created = env.created(&shepherd, 2).await;
    // The watches exist once the first summary is posted (one transaction); a hook that
    // arrives before that finds nothing to update, and only polling would see it.
    env.summary_with(&shepherd, "Running").await;
    for p in &created {
        env.gitlab.set_status(p.id, "running");
        env.gitlab.set_status(p.id, "success");
    }
    env.summary_with(&shepherd, "✅ all 2 canary pipelines passed")
        .await;
    assert_eq!(
        shepherd
            .metric("shepherd_watch_updates_total{source=\"poll\"}")
            .await
            .unwrap_or(0.0),
        0.0
    );
    assert!(
        shepherd
            .metric("shepherd_watch_updates_total{source=\"hook\"}")
            .await
            .unwrap_or(0.0)
            >= 2.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_merge_requests_get_one_welcome_comment() {
    let env = setup(Backend::Sqlite).await;
    let shepherd = env.serve().await;
    let iid = env
        .gitlab
        .add_mr(MR_PROJECT, MR_PROJECT, "new-feature", env.alice);
    let welcomes = || {
        env.gitlab
            .notes(MR_PROJECT, iid)
            .into_iter()
            .filter(|n| n.author == "shepherd" && n.body.contains("@shepherd test"))
            .count()
    };
    assert!(
        until(WAIT, || welcomes() == 1).await,
        "a welcome; stderr:\n{}",
        shepherd.stderr()
    );
    // Resending the open event does not welcome twice.
    let index = env
        .gitlab
        .hook_deliveries()
        .iter()
        .position(|d| d.event == WebhookEvent::MergeRequest)
        .expect("the open event");
    assert_eq!(env.gitlab.redeliver(index).await.expect("resent"), 200);
    env.gitlab.push_mr(MR_PROJECT, iid);
    let processed = env
        .store
        .wait_count(
            "SELECT COUNT(*) FROM requests WHERE kind = 'gitlab-event' AND state = 'done' AND payload LIKE '%\"event\":\"merge_request\"%'",
            2,
            WAIT,
        )
        .await;
    assert!(processed);
    assert_eq!(welcomes(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn canary_from_the_console_reports_lines() {
    let env = setup(Backend::Sqlite).await;
    let mut shepherd = Shepherd::console(&env.config).await;
    shepherd
        .send(&format!("canary {MR_PROJECT}!{} debug=true", env.mr))
        .await;
    let created = env.created(&shepherd, 2).await;
    assert!(created.iter().all(|p| p.variable("debug") == Some("true")));
    shepherd
        .expect_line(&format!("canary of {MR_PROJECT}!{} at", env.mr), WAIT)
        .await;
    for p in &created {
        env.gitlab.set_status(p.id, "success");
    }
    shepherd
        .expect_line("verdict: ✅ all 2 canary pipelines passed", WAIT)
        .await;
    shepherd.close_stdin();
    assert!(shepherd.wait_exit(WAIT).await.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_summary_note_survives_gitlab_faults() {
    let env = setup(Backend::Sqlite).await;
    let shepherd = env.serve().await;
    // The first note create takes effect and is answered 502: shepherd must find it by its
    // marker instead of posting a second summary.
    env.gitlab
        .fail_next(Route::CreateNote, 1, FaultKind::CreateThenFail(502));
    env.gitlab
        .comment(MR_PROJECT, env.mr, env.alice, "@shepherd test");
    let created = env.created(&shepherd, 2).await;
    env.summary_with(&shepherd, "Running").await;
    // Edits fail for longer than the client retries: the summary waits and is edited later.
    env.gitlab
        .fail_next(Route::EditNote, 12, FaultKind::Status(503));
    for p in &created {
        env.gitlab.set_status(p.id, "success");
    }
    env.summary_with(&shepherd, "✅ all 2 canary pipelines passed")
        .await;
    assert_eq!(env.bot_notes().len(), 1, "one summary despite the faults");
    let creates = env
        .gitlab
        .requests()
        .iter()
        .filter(|r| r.is(Route::CreateNote))
        .count();
    assert_eq!(creates, 1, "the ambiguous create was not repeated");
    assert!(
        shepherd
            .metric("shepherd_gitlab_notes_total{action=\"recovered\"}")
            .await
            .unwrap_or(0.0)
            >= 1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_cannot_be_tested_is_refused_and_non_production_only_describes() {
    let mut env = setup(Backend::Sqlite).await;
    env.config.production = false;
    let other = env
        .gitlab
        .add_mr("someone/else", "someone/else", "x", env.alice);
    let mut shepherd = Shepherd::console(&env.config).await;
    shepherd
        .send(&format!("canary {MR_PROJECT}!{}", env.mr))
        .await;
    let would = shepherd
        .expect_line("non-production mode: would run 2 canary pipeline(s)", WAIT)
        .await;
    assert!(
        would.contains(&format!("{MR_PROJECT}!{}", env.mr)),
        "{would}"
    );
    shepherd
        .expect_line(
            &format!(
                "mainline: pipeline {} of {PIPE_PROJECT} on `mainline` with",
                env.mainline.id
            ),
            WAIT,
        )
        .await;
    shepherd
        .expect_line("PIPELINE_DEFINITION_REF=refs/merge-requests/", WAIT)
        .await;
    shepherd.send(&format!("canary someone/else!{other}")).await;
    shepherd
        .expect_line("someone/else has no canary configuration", WAIT)
        .await;
    shepherd.send("test").await;
    shepherd.expect_line("merge request", WAIT).await;
    shepherd
        .send(&format!("retest {MR_PROJECT}!{}", env.mr))
        .await;
    shepherd
        .expect_line("has no canary run to retest; ask for `test` first", WAIT)
        .await;
    env.gitlab.set_mr_state(MR_PROJECT, env.mr, "merged");
    shepherd
        .send(&format!("canary {MR_PROJECT}!{}", env.mr))
        .await;
    shepherd
        .expect_line("is merged; only open merge requests are tested", WAIT)
        .await;
    shepherd.close_stdin();
    assert!(shepherd.wait_exit(WAIT).await.success());
    assert!(env.gitlab.pipelines_created().is_empty());
    assert_eq!(
        env.store.count("SELECT COUNT(*) FROM canary_runs").await,
        0,
        "nothing recorded for what did not run"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_commands_of_one_comment_run_in_order() {
    let env = setup(Backend::Sqlite).await;
    let shepherd = env.serve().await;
    let hold = env.gitlab.hold_creates();
    env.gitlab.comment(
        MR_PROJECT,
        env.mr,
        env.alice,
        "@shepherd test\n@shepherd status",
    );
    // `test` is stuck in a pipeline create. A free worker must leave `status` alone meanwhile;
    // the pause gives a wrong order the time to show (there is no event for "nothing happened").
    hold.wait_reached().await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        env.store
            .count("SELECT COUNT(*) FROM requests WHERE kind = 'command' AND state = 'ready' AND after_id IS NOT NULL")
            .await,
        1,
        "status waits for test; stderr:\n{}",
        shepherd.stderr()
    );
    drop(hold);
    let ok = until(WAIT, || {
        env.bot_notes()
            .iter()
            .any(|n| n.body.starts_with("@alice ") && n.body.contains("Canary pipelines for"))
    })
    .await;
    assert!(
        ok,
        "status answered with the run; stderr:\n{}",
        shepherd.stderr()
    );
    assert!(
        !env.bot_notes()
            .iter()
            .any(|n| n.body.contains("has no canary run yet")),
        "status never ran before test"
    );
}

/// Help in a comment speaks the comment's own addressing: `@shepherd help <command>`, comment
/// examples as `@shepherd test` — never the chat prefix (`!help`, `!@shepherd test`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn help_in_a_comment_is_addressed_as_in_a_comment() {
    let env = setup(Backend::Sqlite).await;
    let shepherd = env.serve().await;
    env.gitlab
        .comment(MR_PROJECT, env.mr, env.alice, "@shepherd help");
    env.gitlab
        .comment(MR_PROJECT, env.mr, env.alice, "@shepherd help test");
    let answered = until(WAIT, || env.bot_notes().len() >= 2).await;
    assert!(
        answered,
        "notes: {:#?}\nstderr:\n{}",
        env.bot_notes(),
        shepherd.stderr()
    );
    let notes = env.bot_notes();
    let list = notes
        .iter()
        .find(|n| n.body.contains("commands:"))
        .expect("the command list");
    assert!(
        list.body.contains("`@shepherd help <command>`"),
        "{}",
        list.body
    );
    let test = notes
        .iter()
        .find(|n| n.body.contains("Examples:"))
        .expect("help for test");
    assert!(test.body.contains("`@shepherd test`"), "{}", test.body);
    assert!(
        test.body.contains("@shepherd test [key=value ...] —"),
        "{}",
        test.body
    );
    for n in &notes {
        assert!(
            !n.body.contains("`!"),
            "no chat prefix in a comment: {}",
            n.body
        );
    }
}
