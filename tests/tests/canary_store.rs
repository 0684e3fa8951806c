//! The canary run's stored state, on both stores: recording a run once, applying pipeline
//! statuses (a finished status is final, whatever order events arrive in), finishing the run
//! exactly once, retests that replace only failed rows, outdated marking, and summaries
//! published to one outbox slot.

use chrono::Utc;
use shepherd_core::Origin;
use shepherd_core::canary::{
    self, CanaryChange, MrContext, NewRun, Observation, Publish, Retest, RunView, StartedRow,
};
use shepherd_core::gitlab::{Pipeline, PipelineStatus};
use shepherd_core::store::Store;
use shepherd_core::watcher::{Reporter, Watch, WatchEnd};
use shepherd_core::{Capabilities, FrontEnds};
use shepherd_tests::harness::{Backend, TestStore};
use shepherd_tests::on_both_stores;

struct Words;

impl Reporter for Words {
    fn report(&self, _: &Watch, _: &WatchEnd) -> String {
        String::new()
    }
    fn canary_summary(&self, run: &RunView) -> String {
        let rows: Vec<String> = run
            .rows
            .iter()
            .map(|r| format!("{}={}#{}", r.tree, r.status, r.attempt))
            .collect();
        format!(
            "{} finished={} outdated={}",
            rows.join(","),
            run.finished,
            run.outdated_by.as_deref().unwrap_or("-")
        )
    }
}

fn pipeline(id: u64, status: PipelineStatus) -> Pipeline {
    Pipeline {
        id,
        iid: None,
        project_id: 2,
        sha: "abc".into(),
        git_ref: "main".into(),
        status,
        source: Some("api".into()),
        web_url: format!("https://gitlab.example/g/pipes/-/pipelines/{id}"),
        created_at: Utc::now(),
        updated_at: Utc::now(),
        started_at: None,
        finished_at: None,
        duration: None,
    }
}

fn row(idx: usize, tree: &str, p: Option<Pipeline>) -> StartedRow {
    StartedRow {
        idx,
        tree: tree.into(),
        ref_project: "g/pipes".into(),
        reference: Some(pipeline(100 + idx as u64, PipelineStatus::Success)),
        error: p.is_none().then(|| "no successful pipeline".to_string()),
        pipeline: p,
    }
}

fn mr(sha: &str) -> MrContext {
    MrContext {
        iid: 7,
        url: "https://gitlab.example/g/p/-/merge_requests/7".into(),
        project: "g/p".into(),
        project_url: "https://gitlab.example/g/p".into(),
        clone_url: "https://gitlab.example/g/p.git".into(),
        branch: "fix".into(),
        sha: sha.into(),
        git_ref: "refs/merge-requests/7/head".into(),
        target_project: "g/p".into(),
        target_branch: "main".into(),
    }
}

async fn observe(
    store: &Store,
    run: &str,
    id: u64,
    status: &str,
    duration: Option<u64>,
) -> (bool, bool) {
    let mut tx = store.pool().begin().await.expect("tx");
    let out = canary::observe_in(
        &mut tx,
        run,
        &Observation {
            pipeline_id: id,
            status,
            duration_secs: duration,
            failed_jobs: &[],
        },
    )
    .await
    .expect("observe");
    tx.commit().await.expect("commit");
    out
}

async fn view(store: &Store, run: &str) -> RunView {
    let mut conn = store.pool().acquire().await.expect("conn");
    canary::load_view(&mut conn, run)
        .await
        .expect("load")
        .expect("the run exists")
}

async fn run_state_machine(backend: Backend) {
    let test_store = TestStore::new(backend).await;
    let store = Store::connect(&test_store.url).await.expect("store");
    let origin = Origin::merge_request("g/p", 7).addressed_to("alice");
    let run = NewRun {
        id: "run-1".into(),
        project: "g/p".into(),
        mr: mr("sha-1"),
        overrides: vec![("debug".into(), "1".into())],
        rows: vec![
            row(0, "mainline", Some(pipeline(201, PipelineStatus::Created))),
            row(1, "rhel9", None),
        ],
    };
    for _ in 0..2 {
        // A redelivered commit records nothing twice.
        let mut tx = store.pool().begin().await.expect("tx");
        let id = canary::apply_in(
            &mut tx,
            &CanaryChange::New(run.clone()),
            &origin,
            "gitlab:alice",
        )
        .await
        .expect("apply");
        assert_eq!(id, "run-1");
        tx.commit().await.expect("commit");
    }
    let v = view(&store, "run-1").await;
    assert_eq!(v.rows.len(), 2);
    assert_eq!(v.rows[1].status, "error");
    assert!(!v.finished);
    assert_eq!(v.origin, origin);

    assert_eq!(
        observe(&store, "run-1", 201, "running", None).await,
        (true, false)
    );
    assert_eq!(
        observe(&store, "run-1", 201, "running", None).await,
        (false, false)
    );
    assert_eq!(
        observe(&store, "run-1", 201, "failed", None).await,
        (true, true),
        "the run finishes once"
    );
    // A late `running` (events out of order) does not undo the end.
    assert_eq!(
        observe(&store, "run-1", 201, "running", None).await,
        (false, false)
    );
    assert_eq!(
        observe(&store, "run-1", 201, "failed", Some(42)).await,
        (true, false),
        "the duration fills in"
    );
    let v = view(&store, "run-1").await;
    assert!(v.finished);
    assert_eq!(v.rows[0].status, "failed");
    assert_eq!(v.rows[0].duration_secs, Some(42));
    assert_eq!(
        canary::latest_run(&store, "G/P", 7)
            .await
            .expect("latest")
            .map(|r| r.id),
        Some("run-1".to_string()),
        "project paths match case-insensitively"
    );

    // Summaries: one slot, one message per revision where the room edits in place; progress
    // is not published where it does not.
    let editing = FrontEnds::new([Capabilities {
        name: "gitlab",
        edits: true,
        ..Capabilities::unknown()
    }]);
    let not_editing = FrontEnds::new([Capabilities {
        name: "gitlab",
        edits: false,
        ..Capabilities::unknown()
    }]);
    {
        let mut tx = store.pool().begin().await.expect("tx");
        assert!(
            !canary::publish_in(
                &mut tx,
                "run-1",
                &Words,
                &not_editing,
                Publish::WhereEditable
            )
            .await
            .expect("publish"),
            "progress is not said where the summary cannot be edited"
        );
        tx.commit().await.expect("commit");
    }
    for when in [Publish::Always, Publish::WhereEditable] {
        let mut tx = store.pool().begin().await.expect("tx");
        assert!(
            canary::publish_in(&mut tx, "run-1", &Words, &editing, when)
                .await
                .expect("publish")
        );
        tx.commit().await.expect("commit");
    }
    assert_eq!(
        test_store
            .count("SELECT COUNT(*) FROM outbox WHERE slot = 'canary:run-1'")
            .await,
        2
    );

    // A retest replaces both failed rows; a redelivered retest does not count twice.
    let retest = Retest {
        run_id: "run-1".into(),
        rows: vec![
            row(0, "mainline", Some(pipeline(301, PipelineStatus::Created))),
            row(1, "rhel9", Some(pipeline(302, PipelineStatus::Pending))),
        ],
    };
    for _ in 0..2 {
        let mut tx = store.pool().begin().await.expect("tx");
        canary::apply_in(
            &mut tx,
            &CanaryChange::Retest(retest.clone()),
            &origin,
            "gitlab:alice",
        )
        .await
        .expect("retest");
        tx.commit().await.expect("commit");
    }
    let v = view(&store, "run-1").await;
    assert!(!v.finished, "running again");
    assert_eq!(
        v.rows
            .iter()
            .map(|r| (r.pipeline_id, r.attempt))
            .collect::<Vec<_>>(),
        vec![(Some(301), 2), (Some(302), 2)]
    );
    assert_eq!(v.rows[0].duration_secs, None);
    let mut running = canary::running_pipelines(&store, "g/p", 7)
        .await
        .expect("running");
    running.sort();
    assert_eq!(
        running,
        vec![("g/pipes".to_string(), 301), ("g/pipes".to_string(), 302)]
    );

    // A push marks the run outdated once per new head.
    let mut tx = store.pool().begin().await.expect("tx");
    let outdated = canary::mark_outdated_in(&mut tx, "g/p", 7, "sha-2")
        .await
        .expect("mark");
    assert_eq!(outdated, vec!["run-1".to_string()]);
    assert!(
        canary::mark_outdated_in(&mut tx, "g/p", 7, "sha-2")
            .await
            .expect("mark")
            .is_empty()
    );
    assert!(
        canary::mark_outdated_in(&mut tx, "g/p", 7, "sha-1")
            .await
            .expect("mark")
            .is_empty(),
        "the tested head is not outdated"
    );
    tx.commit().await.expect("commit");
    assert_eq!(
        view(&store, "run-1").await.outdated_by.as_deref(),
        Some("sha-2")
    );
    store.close().await;
}
on_both_stores!(run_state, run_state_machine);
