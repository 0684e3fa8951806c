//! `shepherd serve`'s HTTP endpoints and metrics, dead-lettering of work that cannot succeed,
//! and the durable queue's contract on both stores.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use shepherd_core::Origin;
use shepherd_core::metrics::Metrics;
use shepherd_core::queue::{Enqueued, FailOutcome, NewRequest, Payload, Queue, QueueSettings};
use shepherd_core::store::Store;
use shepherd_tests::gitlab::{FaultKind, Faults, GitLabDouble};
use shepherd_tests::harness::{Backend, Shepherd, ShepherdConfig, TestStore, metric_value};
use shepherd_tests::on_both_stores;

const WAIT: Duration = Duration::from_secs(30);

/// Awaits `GET url` answering 200 (the server binds a moment after start).
async fn get_when_up(url: &str) -> reqwest::Response {
    let client = reqwest::Client::new();
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        if let Ok(r) = client.get(url).send().await
            && r.status().is_success()
        {
            return r;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{url} never answered 200"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

async fn metric(base: &str, series: &str) -> Option<f64> {
    let text = get_when_up(&format!("{base}/metrics"))
        .await
        .text()
        .await
        .expect("metrics body");
    metric_value(&text, series)
}

async fn serve_endpoints(backend: Backend) {
    let store = TestStore::new(backend).await;
    let gitlab = GitLabDouble::start().await;
    let p = gitlab.add_pipeline("g/p", "main", "running", &[]);
    let config = ShepherdConfig::new(&store, &gitlab);
    let base = format!("http://127.0.0.1:{}", config.http_port);
    let mut bot = Shepherd::serve(&config).await;

    assert_eq!(
        get_when_up(&format!("{base}/healthz"))
            .await
            .text()
            .await
            .ok()
            .as_deref(),
        Some("ok\n")
    );
    assert_eq!(
        get_when_up(&format!("{base}/readyz"))
            .await
            .text()
            .await
            .ok()
            .as_deref(),
        Some("ready\n")
    );
    let help = get_when_up(&format!("{base}/help"))
        .await
        .text()
        .await
        .expect("help");
    for needle in [
        "## retrigger",
        "`retrigger <pipeline> [key=value ...]`",
        "Who may use it: groups admins, developers",
        "## deploy",
        "`deploy <service> <mr, tag or digest> [to <env>]`",
        "## confirm",
    ] {
        assert!(help.contains(needle), "{needle} in /help:\n{help}");
    }

    bot.send("ping").await;
    bot.expect_line("pong", WAIT).await;
    bot.send("frobnicate").await;
    bot.expect_line("unknown command", WAIT).await;
    bot.send(&format!("status {}", p.web_url)).await;
    bot.expect_line(&format!("pipeline {} of g/p: running", p.id), WAIT)
        .await;

    assert_eq!(
        metric(
            &base,
            "shepherd_commands_total{command=\"ping\",outcome=\"ok\"}"
        )
        .await,
        Some(1.0)
    );
    assert_eq!(
        metric(
            &base,
            "shepherd_commands_total{command=\"unknown\",outcome=\"parse_error\"}"
        )
        .await,
        Some(1.0)
    );
    assert_eq!(
        metric(
            &base,
            "shepherd_commands_total{command=\"status\",outcome=\"ok\"}"
        )
        .await,
        Some(1.0)
    );
    assert_eq!(
        metric(&base, "shepherd_gitlab_requests_total{endpoint=\"GET /projects/:id/pipelines/:pipeline_id\",status=\"200\"}").await,
        Some(1.0)
    );
    assert!(
        metric(
            &base,
            "shepherd_command_duration_seconds_count{command=\"status\"}"
        )
        .await
            >= Some(1.0)
    );
    assert!(
        metric(&base, "shepherd_queue_items{state=\"dead\"}")
            .await
            .is_some()
    );

    // SIGTERM: a clean stop.
    let pid = bot.pid().expect("running");
    let status = std::process::Command::new("kill")
        .arg("-TERM")
        .arg(pid.to_string())
        .status()
        .expect("kill");
    assert!(status.success());
    assert!(bot.wait_exit(WAIT).await.success(), "{}", bot.stderr());
}
on_both_stores!(serve_exposes_health_help_and_metrics, serve_endpoints);

async fn dead_letter(backend: Backend) {
    let store = TestStore::new(backend).await;
    let gitlab = GitLabDouble::start().await;
    let p = gitlab.add_pipeline("g/p", "main", "success", &[]);
    gitlab.set_faults(Faults {
        rate: 1.0,
        kinds: vec![FaultKind::Status(503)],
        seed: 1,
    });
    let mut config = ShepherdConfig::new(&store, &gitlab);
    config.queue = "max_attempts = 3".into();
    config.gitlab = "max_retries = 1".into();
    let mut bot = Shepherd::console(&config).await;
    bot.send(&format!("retrigger {}", p.web_url)).await;
    bot.close_stdin();
    assert!(bot.wait_exit(WAIT).await.success(), "{}", bot.stderr());
    let lines = bot.lines();
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert!(
        lines[0].starts_with("`retrigger` failed after 3 attempts and was given up"),
        "{}",
        lines[0]
    );
    assert_eq!(
        store
            .count("SELECT COUNT(*) FROM requests WHERE state = 'dead' AND attempts = 3")
            .await,
        1
    );
    assert_eq!(
        store
            .count("SELECT COUNT(*) FROM audit WHERE command = 'retrigger' AND outcome = 'failed'")
            .await,
        1
    );
    // Visible with a command.
    let listed = std::process::Command::new(shepherd_tests::harness::shepherd_bin())
        .args(["queue", "dead", "--config"])
        .arg(bot.dir.path().join("shepherd.toml"))
        .output()
        .expect("shepherd queue dead");
    let listed = String::from_utf8_lossy(&listed.stdout);
    assert!(listed.starts_with("1 dead request(s)\n"), "{listed}");
    assert!(
        listed.contains("console:console  console:tester  attempts=3"),
        "{listed}"
    );
    assert!(listed.contains("HTTP 503"), "{listed}");
    // 3 attempts x (1 try + 1 retry) of the first GET, and nothing else.
    assert_eq!(gitlab.requests().len(), 6, "{:?}", gitlab.requests());
    assert!(gitlab.pipelines_created().is_empty());
}
on_both_stores!(
    work_that_keeps_failing_is_parked_dead_and_reported,
    dead_letter
);

fn settings(max_attempts: u32, lease_ms: u64) -> QueueSettings {
    QueueSettings {
        max_attempts,
        lease: Duration::from_millis(lease_ms),
        retry_base: Duration::from_millis(20),
        retry_max: Duration::from_millis(40),
        lanes: vec!["lane".to_string()],
    }
}

fn request(n: usize, dedup: Option<&str>) -> NewRequest {
    NewRequest {
        kind: "command".into(),
        origin: Origin::new("console", "console"),
        identity: "console:tester".into(),
        payload: serde_json::json!({ "n": n }).into(),
        dedup_key: dedup.map(str::to_string),
        after: None,
        not_before: None,
    }
}

/// The next item, once one is due (an item put back waits for its retry delay).
async fn lease_soon(queue: &Queue, owner: &str) -> shepherd_core::queue::Leased {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        if let Some(item) = queue.lease(owner).await.expect("lease") {
            return item;
        }
        assert!(tokio::time::Instant::now() < deadline, "nothing became due");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn queue_contract(backend: Backend) {
    let test_store = TestStore::new(backend).await;
    let store = Store::connect(&test_store.url).await.expect("store");
    let metrics = Arc::new(Metrics::new().expect("metrics"));
    let queue = Queue::new(store.clone(), settings(2, 300), metrics);

    // Dedup: the same delivery id is stored once.
    let a = queue
        .enqueue(request(1, Some("delivery-1")))
        .await
        .expect("enqueue");
    let again = queue
        .enqueue(request(1, Some("delivery-1")))
        .await
        .expect("enqueue");
    assert_eq!(again, Enqueued::Duplicate(a.id().to_string()));

    // Lease, then the lease expires (the worker "died"): redelivered as attempt 2.
    let first = queue.lease("w1").await.expect("lease").expect("an item");
    assert_eq!(
        (
            first.attempt,
            first.payload.decode::<serde_json::Value>().expect("JSON")["n"].as_i64()
        ),
        (1, Some(1))
    );
    assert!(
        queue.lease("w2").await.expect("lease").is_none(),
        "leased items are not shared"
    );
    tokio::time::sleep(Duration::from_millis(350)).await; // let the 300 ms lease run out
    let second = queue
        .lease("w2")
        .await
        .expect("lease")
        .expect("redelivered");
    assert_eq!((second.id.as_str(), second.attempt), (first.id.as_str(), 2));
    // The dead worker cannot complete what it lost.
    let mut conn = store.pool().acquire().await.expect("conn");
    assert!(
        !queue
            .complete_in(&mut conn, &first)
            .await
            .expect("complete")
    );
    // Last attempt fails: parked dead, listed, counted.
    assert_eq!(
        queue.fail(&second, "boom").await.expect("fail"),
        FailOutcome::Dead
    );
    let dead = queue.dead(10).await.expect("dead");
    assert_eq!(dead.len(), 1);
    assert_eq!(
        (dead[0].attempts, dead[0].last_error.as_deref()),
        (2, Some("boom"))
    );
    assert_eq!(queue.counts().await.expect("counts").dead, 1);

    // A failed attempt goes to the back with a delay.
    let b = queue.enqueue(request(2, None)).await.expect("enqueue");
    let c = queue.enqueue(request(3, None)).await.expect("enqueue");
    let item = queue.lease("w1").await.expect("lease").expect("b");
    assert_eq!(item.id, b.id());
    assert!(matches!(
        queue.fail(&item, "transient").await.expect("fail"),
        FailOutcome::Retry { .. }
    ));
    let next = queue.lease("w1").await.expect("lease").expect("c first");
    assert_eq!(next.id, c.id(), "the failed item went to the back");
    assert!(queue.complete_in(&mut conn, &next).await.expect("complete"));

    // A request that waits for another: not leased until that one is done or dead.
    // b is back after its retry delay.
    let item = lease_soon(&queue, "w1").await;
    assert_eq!(item.id, b.id());
    assert!(queue.complete_in(&mut conn, &item).await.expect("complete"));
    let first = queue.enqueue(request(4, None)).await.expect("enqueue");
    let mut waiting = request(5, None);
    waiting.after = Some(first.id().to_string());
    let waiting = queue.enqueue(waiting).await.expect("enqueue");
    let leased = queue.lease("w1").await.expect("lease").expect("the first");
    assert_eq!(leased.id, first.id());
    assert!(
        queue.lease("w2").await.expect("lease").is_none(),
        "the second waits while the first runs"
    );
    assert!(matches!(
        queue.fail(&leased, "transient").await.expect("fail"),
        FailOutcome::Retry { .. }
    ));
    // The first is back in the queue with a delay; the second still waits for it.
    let retried = lease_soon(&queue, "w2").await;
    assert_eq!(
        retried.id,
        first.id(),
        "the second never overtakes the first"
    );
    assert!(
        queue
            .complete_in(&mut conn, &retried)
            .await
            .expect("complete")
    );
    let second = queue
        .lease("w1")
        .await
        .expect("lease")
        .expect("now the second");
    assert_eq!(second.id, waiting.id());
    assert!(
        queue
            .complete_in(&mut conn, &second)
            .await
            .expect("complete")
    );

    // A lane: its kind only through lease_lane, one at a time, in arrival order.
    let lane_item = |n: usize| NewRequest {
        kind: "lane".into(),
        ..request(n, None)
    };
    let l1 = queue.enqueue(lane_item(6)).await.expect("enqueue");
    let l2 = queue.enqueue(lane_item(7)).await.expect("enqueue");
    assert!(
        queue.lease("w1").await.expect("lease").is_none(),
        "general workers never take lane items"
    );
    let first = queue
        .lease_lane("w1", "lane")
        .await
        .expect("lease")
        .expect("l1");
    assert_eq!(first.id, l1.id());
    assert!(
        queue
            .lease_lane("w2", "lane")
            .await
            .expect("lease")
            .is_none(),
        "one at a time"
    );
    assert!(matches!(
        queue.fail(&first, "transient").await.expect("fail"),
        FailOutcome::Retry { .. }
    ));
    assert!(
        queue
            .lease_lane("w2", "lane")
            .await
            .expect("lease")
            .is_none(),
        "l2 does not overtake l1 while l1 waits for its retry"
    );
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    let again = loop {
        if let Some(item) = queue.lease_lane("w2", "lane").await.expect("lease") {
            break item;
        }
        assert!(tokio::time::Instant::now() < deadline, "l1 never came back");
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    assert_eq!(again.id, l1.id());
    assert!(
        queue
            .complete_in(&mut conn, &again)
            .await
            .expect("complete")
    );
    let second = queue
        .lease_lane("w1", "lane")
        .await
        .expect("lease")
        .expect("l2");
    assert_eq!(second.id, l2.id());
    assert!(
        queue
            .complete_in(&mut conn, &second)
            .await
            .expect("complete")
    );

    // The lane taken in batches: the due front of the lane, in arrival order, leased together;
    // nothing behind a leased batch is handed out, and a batch completes together. (Leases long
    // enough that none runs out while the test looks, however slow the machine.)
    let queue = Queue::new(
        store.clone(),
        settings(5, 30_000),
        Arc::new(Metrics::new().expect("metrics")),
    );
    let mut ids = Vec::new();
    for n in 0..5 {
        ids.push(
            queue
                .enqueue(lane_item(20 + n))
                .await
                .expect("enqueue")
                .id()
                .to_string(),
        );
    }
    let batch = queue
        .lease_lane_batch("w1", "lane", 3)
        .await
        .expect("lease");
    let got: Vec<&str> = batch.iter().map(|i| i.id.as_str()).collect();
    assert_eq!(got, ids[..3].iter().map(String::as_str).collect::<Vec<_>>());
    assert!(batch.iter().all(|i| i.attempt == 1 && i.owner == "w1"));
    assert!(
        queue
            .lease_lane_batch("w2", "lane", 10)
            .await
            .expect("lease")
            .is_empty(),
        "the rest wait behind the leased front"
    );
    let refs: Vec<&shepherd_core::queue::Leased> = batch.iter().collect();
    assert!(
        queue
            .complete_all_in(&mut conn, &refs)
            .await
            .expect("complete")
    );
    let rest = queue
        .lease_lane_batch("w2", "lane", 10)
        .await
        .expect("lease");
    assert_eq!(
        rest.iter().map(|i| i.id.as_str()).collect::<Vec<_>>(),
        ids[3..].iter().map(String::as_str).collect::<Vec<_>>()
    );
    let stale: Vec<&shepherd_core::queue::Leased> = batch.iter().collect();
    assert!(
        !queue
            .complete_all_in(&mut conn, &stale)
            .await
            .expect("complete"),
        "a batch whose leases are gone does not complete"
    );
    let refs: Vec<&shepherd_core::queue::Leased> = rest.iter().collect();
    assert!(
        queue
            .complete_all_in(&mut conn, &refs)
            .await
            .expect("complete")
    );

    // What a holder that is gone leased is taken back at once, its attempt counted.
    let held = queue.enqueue(request(30, None)).await.expect("enqueue");
    let taken = queue
        .lease("host/1/dead/w0")
        .await
        .expect("lease")
        .expect("item");
    assert_eq!(taken.id, held.id());
    assert!(
        queue.lease("w2").await.expect("lease").is_none(),
        "still leased"
    );
    let freed = queue
        .reclaim(|owner| owner == "host/1/dead/w0")
        .await
        .expect("reclaim");
    assert_eq!(freed, 1);
    let again = queue.lease("w2").await.expect("lease").expect("taken back");
    assert_eq!((again.id.as_str(), again.attempt), (held.id(), 2));
    assert!(
        queue
            .complete_in(&mut conn, &again)
            .await
            .expect("complete")
    );

    // Concurrent enqueues share commits: each distinct key is stored once, every duplicate (in
    // the same group or not) names the stored request.
    let mut tasks = tokio::task::JoinSet::new();
    for n in 0..200 {
        let queue = queue.clone();
        tasks.spawn(async move {
            let key = format!("group-{}", n % 50);
            (
                key.clone(),
                queue
                    .enqueue(request(40 + n, Some(&key)))
                    .await
                    .expect("enqueue"),
            )
        });
    }
    let mut by_key: std::collections::HashMap<String, Vec<Enqueued>> = Default::default();
    while let Some(done) = tasks.join_next().await {
        let (key, e) = done.expect("task");
        by_key.entry(key).or_default().push(e);
    }
    assert_eq!(by_key.len(), 50);
    for (key, answers) in &by_key {
        let new: Vec<&Enqueued> = answers
            .iter()
            .filter(|e| matches!(e, Enqueued::New(_)))
            .collect();
        assert_eq!(new.len(), 1, "{key}: {answers:?}");
        assert!(
            answers.iter().all(|e| e.id() == new[0].id()),
            "{key}: {answers:?}"
        );
    }
    assert_eq!(
        test_store
            .count("SELECT COUNT(*) FROM requests WHERE dedup_key LIKE 'group-%'")
            .await,
        50
    );
    let stats = store.writer().stats();
    let groups = stats.groups.get();
    let writes = stats.writes.get();
    assert!(
        writes > groups,
        "some writes shared a commit ({writes} writes in {groups} groups)"
    );
    let general: Vec<shepherd_core::queue::Leased> = {
        let mut v = Vec::new();
        while let Some(item) = queue.lease("w1").await.expect("lease") {
            v.push(item);
        }
        v
    };
    assert_eq!(general.len(), 50);
    for item in &general {
        assert!(queue.complete_in(&mut conn, item).await.expect("complete"));
    }

    // Many workers, many items: each item is leased exactly once.
    drop(conn);
    let queue = Queue::new(
        store.clone(),
        settings(5, 30_000),
        Arc::new(Metrics::new().expect("metrics")),
    );
    for n in 0..60 {
        queue
            .enqueue(request(100 + n, None))
            .await
            .expect("enqueue");
    }
    let mut tasks = tokio::task::JoinSet::new();
    for w in 0..4 {
        let queue = queue.clone();
        let store = store.clone();
        tasks.spawn(async move {
            let mut got = Vec::new();
            while let Some(item) = queue.lease(&format!("racer-{w}")).await.expect("lease") {
                let mut conn = store.pool().acquire().await.expect("conn");
                assert!(queue.complete_in(&mut conn, &item).await.expect("complete"));
                got.push(item.id);
            }
            got
        });
    }
    let mut seen = HashSet::new();
    let mut total = 0;
    while let Some(got) = tasks.join_next().await {
        for id in got.expect("racer") {
            total += 1;
            seen.insert(id);
        }
    }
    // b comes back after its delay; the 60 new ones are leased once each.
    assert!(
        total >= 60 && total == seen.len(),
        "{total} leases, {} distinct",
        seen.len()
    );

    // Retention: finished work older than the cut is deleted; dead items and comment commands stay.
    let mut from_comment = request(999, Some("note:1:2:abc:1"));
    from_comment.kind = "command".into();
    let kept = queue.enqueue(from_comment).await.expect("enqueue");
    let item = lease_soon(&queue, "w1").await;
    assert_eq!(item.id, kept.id());
    let mut conn = store.pool().acquire().await.expect("conn");
    assert!(queue.complete_in(&mut conn, &item).await.expect("complete"));
    drop(conn);
    let done_before: i64 = test_store
        .count("SELECT COUNT(*) FROM requests WHERE state = 'done'")
        .await;
    let action = shepherd_core::herder::actions::Action {
        kind: shepherd_core::herder::actions::ActionKind::Retried,
        project: "g/p".into(),
        job_id: 7,
        job_name: "boot".into(),
        job_url: "https://gitlab.example.com/g/p/-/jobs/7".into(),
        matcher: "runner".into(),
        retry: Some(1),
        new_job_id: Some(8),
        detail: None,
        at: 0,
    };
    assert!(
        shepherd_core::herder::actions::record(&store, &action)
            .await
            .expect("record")
    );
    assert!(
        !shepherd_core::herder::actions::record(&store, &action)
            .await
            .expect("record"),
        "an action is recorded once per job and kind"
    );
    let pruned = shepherd_core::store::prune(&store, shepherd_core::store::now_ms() + 1)
        .await
        .expect("prune");
    assert_eq!(pruned.herder_actions, 1, "old herder actions go");
    assert_eq!(
        pruned.requests as i64,
        done_before - 1,
        "all done but the comment's"
    );
    assert_eq!(
        test_store
            .count("SELECT COUNT(*) FROM requests WHERE state = 'done'")
            .await,
        1
    );
    assert_eq!(
        queue.counts().await.expect("counts").dead,
        1,
        "dead items stay"
    );
}
on_both_stores!(queue_leases_redelivers_delays_and_parks, queue_contract);

/// A request stored with `not_before` waits for that time: neither a general worker nor a lane
/// takes it earlier, the next-due time says when it falls due, and one whose time is past (or
/// that has none) is due at once. Both engines' inserts (the group writer's thread on SQLite,
/// the multi-row INSERT on PostgreSQL).
async fn delayed_requests(backend: Backend) {
    let test_store = TestStore::new(backend).await;
    let store = Store::connect(&test_store.url).await.expect("store");
    let metrics = Arc::new(Metrics::new().expect("metrics"));
    let queue = Queue::new(store.clone(), settings(2, 60_000), metrics);
    let now = shepherd_core::store::now_ms();
    let hour = 3_600_000;
    let later = NewRequest {
        not_before: Some(now + hour),
        ..request(1, Some("later"))
    };
    let past = NewRequest {
        not_before: Some(now - hour),
        ..request(2, Some("past"))
    };
    let later_lane = NewRequest {
        kind: "lane".into(),
        not_before: Some(now + hour),
        ..request(3, Some("later-lane"))
    };
    for r in [later, past, later_lane] {
        assert!(matches!(
            queue.enqueue(r).await.expect("enqueue"),
            Enqueued::New(_)
        ));
    }
    // Stored with its time, not the time it was stored.
    assert_eq!(
        test_store
            .count(&format!(
                "SELECT COUNT(*) FROM requests WHERE available_at >= {}",
                now + hour
            ))
            .await,
        2
    );
    let due = queue
        .lease("w1")
        .await
        .expect("lease")
        .expect("the past one is due");
    assert_eq!(
        due.payload.decode::<serde_json::Value>().expect("JSON")["n"],
        2
    );
    assert!(
        queue.lease("w1").await.expect("lease").is_none(),
        "the later one waits"
    );
    assert!(
        queue
            .lease_lane("w1", "lane")
            .await
            .expect("lane lease")
            .is_none(),
        "a lane's front waits too"
    );
    // Done (on its own, like a GitLab event): only the delayed one is left to fall due.
    assert!(queue.complete(&due).await.expect("complete"));
    assert!(!queue.complete(&due).await.expect("complete"), "done once");
    let next = queue
        .next_due_in()
        .await
        .expect("next due")
        .expect("something is due later");
    assert!(
        next > Duration::from_secs(3_500) && next <= Duration::from_secs(3_600),
        "{next:?}"
    );
    assert_eq!(queue.counts().await.expect("counts").ready, 2);
}
on_both_stores!(delayed_requests_wait_for_their_time, delayed_requests);

/// The alert lane's batched statements: the dedup window judged for many notifications in one
/// statement, and many lines pushed in one, in order, a used dedup key storing nothing.
async fn lane_batch_statements(backend: Backend) {
    use shepherd_core::alerts::first_showings_in;
    use shepherd_core::commit::Line;
    use shepherd_core::outbox::push_all_in;

    let test_store = TestStore::new(backend).await;
    let store = Store::connect(&test_store.url).await.expect("store");
    let mut conn = store.pool().acquire().await.expect("connection");
    let hour = 3_600_000;

    let shown = first_showings_in(&mut conn, &["k1", "k2"], hour)
        .await
        .expect("dedup");
    assert_eq!(shown.len(), 2, "new contents are shown: {shown:?}");
    let shown = first_showings_in(&mut conn, &["k1", "k3"], hour)
        .await
        .expect("dedup");
    assert_eq!(
        shown.into_iter().collect::<Vec<_>>(),
        ["k3"],
        "k1 was shown within the window"
    );
    // A window that has passed: shown again (its time moves on).
    let since = shepherd_core::store::now_ms();
    while shepherd_core::store::now_ms() == since {
        tokio::task::yield_now().await;
    }
    let shown = first_showings_in(&mut conn, &["k1"], 0)
        .await
        .expect("dedup");
    assert!(shown.contains("k1"), "{shown:?}");

    let line = |body: &str, key: &str| Line {
        origin: Origin::parse("irc:#alerts").expect("origin"),
        body: body.to_string(),
        dedup_key: Some(key.to_string()),
        request_id: Some("req".to_string()),
    };
    let mut tx = store.pool().begin().await.expect("begin");
    let stored = push_all_in(
        &mut tx,
        &[
            line("one", "d1"),
            line("two", "d2"),
            line("one again", "d1"),
            line("three", "d3"),
        ],
    )
    .await
    .expect("push");
    assert_eq!(stored, [true, true, false, true]);
    tx.commit().await.expect("commit");
    let bodies: Vec<String> =
        sqlx::query_scalar("SELECT body FROM outbox WHERE request_id = 'req' ORDER BY id")
            .fetch_all(store.pool())
            .await
            .expect("read");
    assert_eq!(bodies, ["one", "two", "three"], "in order, once");
    let again = push_all_in(&mut conn, &[line("two", "d2")])
        .await
        .expect("push");
    assert_eq!(again, [false], "a used key stores nothing");
}
on_both_stores!(alert_lane_batch_statements, lane_batch_statements);

/// Relaxed transactions (`Store::begin_relaxed`) are ordinary transactions whose commit does not
/// wait for the disk: SQLite runs them on its `synchronous = NORMAL` connection, PostgreSQL with
/// `synchronous_commit = off` for the transaction only; ordinary ones keep the full sync. What
/// they commit is there, what they roll back is not, and a payload is stored as its text.
async fn relaxed_transactions(backend: Backend) {
    use sqlx::Row;

    let test_store = TestStore::new(backend).await;
    let store = Store::connect(&test_store.url).await.expect("store");
    let setting = match backend {
        Backend::Sqlite => "PRAGMA synchronous",
        Backend::Postgres => "SHOW synchronous_commit",
    };
    async fn read(tx: &mut shepherd_core::store::Tx, sql: &str) -> String {
        let row = sqlx::query(sqlx::AssertSqlSafe(sql.to_string()))
            .fetch_one(&mut **tx)
            .await
            .expect("read the setting");
        row.try_get::<String, _>(0)
            .or_else(|_| row.try_get::<i64, _>(0).map(|n| n.to_string()))
            .expect("a text or number")
    }
    async fn audit_row(tx: &mut shepherd_core::store::Tx, id: &str) {
        sqlx::query(
            "INSERT INTO audit (id, at, identity, frontend, room, command, text, outcome) \
             VALUES ($1, 1, 'test', 'console', 'x', 'relaxed', 'relaxed', 'done')",
        )
        .bind(id)
        .execute(&mut **tx)
        .await
        .expect("insert");
    }
    let mut relaxed = store.begin_relaxed().await.expect("relaxed");
    let got = read(&mut relaxed, setting).await;
    match backend {
        Backend::Sqlite => assert_eq!(got, "1", "NORMAL on the relaxed connection"),
        Backend::Postgres => assert_eq!(got, "off"),
    }
    audit_row(&mut relaxed, "relaxed-1").await;
    relaxed.commit().await.expect("commit");

    let mut rolled = store.begin_relaxed().await.expect("relaxed");
    audit_row(&mut rolled, "relaxed-2").await;
    rolled.rollback().await.expect("rollback");

    // Ordinary transactions after them still sync fully (PostgreSQL's setting was local).
    for _ in 0..3 {
        let mut tx = store.begin().await.expect("begin");
        let got = read(&mut tx, setting).await;
        let want = match backend {
            Backend::Sqlite => "2",
            Backend::Postgres => "on",
        };
        assert_eq!(got, want, "full sync outside relaxed transactions");
        tx.rollback().await.expect("rollback");
    }
    assert_eq!(
        test_store
            .count("SELECT COUNT(*) FROM audit WHERE command = 'relaxed'")
            .await,
        1,
        "the committed row only"
    );

    // Payloads are JSON text: refused when not JSON, read back as written.
    assert!(Payload::from_json("{\"a\": [1, 2".into()).is_err());
    let payload = Payload::from_json("{\"n\": 7, \"s\": \"x\\u00e9\"}".into()).expect("JSON");
    assert_eq!(payload.as_str(), "{\"n\": 7, \"s\": \"x\\u00e9\"}");
    let v: serde_json::Value = payload.decode().expect("decodes");
    assert_eq!((v["n"].as_i64(), v["s"].as_str()), (Some(7), Some("xé")));
    store.close().await;
}
on_both_stores!(
    relaxed_transactions_skip_only_the_disk_wait,
    relaxed_transactions
);

/// The alert lane's batch finished on the SQLite writer's thread (`Queue::finish_lane_on_thread`):
/// each key judged once in the dedup window, the lines of first showings stored in order, a
/// repeat in the same batch and one already shown store nothing, every item done; a lost lease
/// writes nothing at all, and the batch can be finished by its real holder afterwards.
#[tokio::test]
async fn a_lane_batch_finished_on_the_writer_thread_is_all_or_nothing() {
    use shepherd_core::commit::Line;
    use shepherd_core::queue::LaneFinish;

    let test_store = TestStore::new(Backend::Sqlite).await;
    let store = Store::connect(&test_store.url).await.expect("store");
    assert!(store.writer().has_thread());
    let queue = Queue::new(
        store.clone(),
        settings(5, 30_000),
        Arc::new(Metrics::new().expect("metrics")),
    );
    for n in 0..4 {
        queue
            .enqueue(NewRequest {
                kind: "lane".into(),
                ..request(n, None)
            })
            .await
            .expect("enqueue");
    }
    let batch = queue
        .lease_lane_batch("w1", "lane", 10)
        .await
        .expect("lease");
    assert_eq!(batch.len(), 4);
    let line = |id: &str, i: usize| Line {
        origin: Origin::new("irc", "#alerts"),
        body: format!("line {i} of {id}"),
        dedup_key: Some(format!("alert:{id}:irc:#alerts:{i}")),
        request_id: Some(id.to_string()),
    };
    // Keys: a, a (a repeat in the batch), b, c; c was shown a moment ago.
    let keys = ["a", "a", "b", "c"];
    let finish = |attempt_of_last: u32| -> Vec<LaneFinish> {
        batch
            .iter()
            .zip(keys)
            .enumerate()
            .map(|(n, (item, key))| LaneFinish {
                id: item.id.clone(),
                owner: item.owner.clone(),
                attempt: if n == 3 {
                    attempt_of_last
                } else {
                    item.attempt
                },
                key: key.to_string(),
                lines: vec![line(&item.id, 0), line(&item.id, 1)],
            })
            .collect()
    };
    sqlx::query("INSERT INTO alert_notices (key, shown_at) VALUES ('c', $1)")
        .bind(shepherd_core::store::now_ms())
        .execute(store.pool())
        .await
        .expect("seed c");

    // The last item's lease is not the one held (another attempt took it): nothing written.
    let lost = queue
        .finish_lane_on_thread(finish(batch[3].attempt + 1), 60_000)
        .await
        .expect("the thread");
    assert!(
        matches!(lost, Err(shepherd_core::store::StoreError::Conflict(_))),
        "{lost:?}"
    );
    assert_eq!(test_store.count("SELECT COUNT(*) FROM outbox").await, 0);
    assert_eq!(
        test_store.count("SELECT COUNT(*) FROM alert_notices").await,
        1,
        "no key judged"
    );
    assert_eq!(
        test_store
            .count("SELECT COUNT(*) FROM requests WHERE state = 'leased'")
            .await,
        4
    );

    let shown = queue
        .finish_lane_on_thread(finish(batch[3].attempt), 60_000)
        .await
        .expect("the thread")
        .expect("finish");
    assert_eq!(shown, [true, false, true, false]);
    let bodies: Vec<String> = sqlx::query_scalar("SELECT body FROM outbox ORDER BY id")
        .fetch_all(store.pool())
        .await
        .expect("read");
    let want: Vec<String> = [&batch[0].id, &batch[0].id, &batch[2].id, &batch[2].id]
        .iter()
        .enumerate()
        .map(|(i, id)| format!("line {} of {id}", i % 2))
        .collect();
    assert_eq!(bodies, want, "the first showings' lines, in order");
    assert_eq!(
        test_store
            .count("SELECT COUNT(*) FROM requests WHERE state = 'done'")
            .await,
        4
    );
    store.close().await;
}
