//! The SQLite engine's runs (`GroupWriter::on_thread`): relaxed ones alone run with
//! `synchronous = NORMAL` and only they do, what they commit is there and what fails is rolled
//! back, groups commit with a full sync after them, and what waits behind a turn shares the
//! next one, each run all or nothing.

use crate::commit::Line;
use crate::origin::Origin;
use crate::store::{Store, StoreError};

async fn store(dir: &tempfile::TempDir) -> Store {
    let url = format!("sqlite:{}", dir.path().join("s.db").display());
    Store::connect(&url).await.expect("store")
}

fn sync_level(tx: &rusqlite::Transaction<'_>) -> Result<i64, StoreError> {
    Ok(tx.query_row("PRAGMA synchronous", [], |r| r.get(0))?)
}

/// Sets the body of the line keyed `k1`; rows changed.
fn set_body(tx: &rusqlite::Transaction<'_>, body: &str) -> Result<usize, StoreError> {
    Ok(tx.execute("UPDATE outbox SET body = ?1 WHERE dedup_key = 'k1'", [body])?)
}

/// Sets the body of the line keyed `k1`, then fails: the change must be undone.
fn set_body_then_fail(tx: &rusqlite::Transaction<'_>, body: &str) -> Result<(), StoreError> {
    set_body(tx, body)?;
    Err(StoreError::Group("refused on purpose".into()))
}

fn line(body: &str, key: &str) -> Line {
    Line {
        origin: Origin::from_columns("console".into(), "t".into(), None),
        body: body.into(),
        dedup_key: Some(key.into()),
        request_id: None,
    }
}

async fn count(store: &Store, sql: &'static str) -> i64 {
    sqlx::query_scalar(sql)
        .fetch_one(store.pool())
        .await
        .expect("count")
}

#[tokio::test]
async fn transactions_on_the_writer_thread_relax_only_themselves() {
    let dir = tempfile::tempdir().expect("dir");
    let store = store(&dir).await;
    let writer = store.writer();
    assert!(
        writer.has_thread(),
        "an SQLite file gets the writer's thread"
    );

    let relaxed = writer.on_thread(true, sync_level).await.expect("thread");
    assert_eq!(relaxed.expect("level"), 1, "NORMAL inside a relaxed one");
    let full = writer.on_thread(false, sync_level).await.expect("thread");
    assert_eq!(full.expect("level"), 2, "FULL again after it");

    // A failing one stores nothing; a committed one is there.
    assert!(writer.push(line("one", "k1")).await.expect("push"));
    let failed = writer
        .on_thread(true, |tx| set_body_then_fail(tx, "changed"))
        .await
        .expect("thread");
    assert!(matches!(failed, Err(StoreError::Group(_))), "{failed:?}");
    assert_eq!(
        count(&store, "SELECT COUNT(*) FROM outbox WHERE body = 'one'").await,
        1,
        "rolled back"
    );
    let changed = writer
        .on_thread(true, |tx| set_body(tx, "changed"))
        .await
        .expect("thread")
        .expect("update");
    assert_eq!(changed, 1);
    assert_eq!(
        count(&store, "SELECT COUNT(*) FROM outbox WHERE body = 'changed'").await,
        1,
        "committed"
    );

    // Groups after relaxed runs: stored once, a used key refused, and the connection is at
    // FULL for them.
    assert!(!writer.push(line("again", "k1")).await.expect("push"));
    assert!(writer.push(line("two", "k2")).await.expect("push"));
    let after = writer.on_thread(false, sync_level).await.expect("thread");
    assert_eq!(after.expect("level"), 2);
    assert_eq!(count(&store, "SELECT COUNT(*) FROM outbox").await, 2);
    store.close().await;
}

/// Jobs that wait behind a turn share the next one: one transaction, each run all or nothing
/// (a failing one undoes only itself), at the full sync a write in it needs.
#[tokio::test]
async fn what_waits_behind_a_turn_commits_together_each_run_all_or_nothing() {
    let dir = tempfile::tempdir().expect("dir");
    let store = store(&dir).await;
    let writer = store.writer().clone();
    assert!(writer.push(line("one", "k1")).await.expect("push"));
    let groups_before = writer.stats().groups.get();

    // A run that holds the writer's thread until told to go on.
    let (running, is_running) = std::sync::mpsc::channel();
    let (go_on, may_go_on) = std::sync::mpsc::channel::<()>();
    let blocker = tokio::spawn({
        let writer = writer.clone();
        async move {
            writer
                .on_thread(true, move |_| {
                    running.send(()).expect("test waits");
                    may_go_on.recv().expect("test says go on");
                    Ok(())
                })
                .await
        }
    });
    tokio::task::spawn_blocking(move || is_running.recv().expect("the run started"))
        .await
        .expect("join");

    // Lined up behind it: a write, a run that fails after writing, a relaxed run.
    let write = tokio::spawn({
        let writer = writer.clone();
        async move { writer.push(line("two", "k2")).await }
    });
    let failing = tokio::spawn({
        let writer = writer.clone();
        async move {
            writer
                .on_thread(true, |tx| set_body_then_fail(tx, "undone"))
                .await
        }
    });
    let relaxed = tokio::spawn({
        let writer = writer.clone();
        async move {
            writer
                .on_thread(true, |tx| {
                    set_body(tx, "kept")?;
                    sync_level(tx)
                })
                .await
        }
    });
    tokio::time::timeout(std::time::Duration::from_secs(10), async {
        while writer.waiting() < 3 {
            tokio::task::yield_now().await;
        }
    })
    .await
    .expect("the three jobs are waiting");
    go_on.send(()).expect("blocker waits");

    blocker
        .await
        .expect("join")
        .expect("thread")
        .expect("blocker");
    assert!(write.await.expect("join").expect("stored"));
    let failed = failing.await.expect("join").expect("thread");
    assert!(matches!(failed, Err(StoreError::Group(_))), "{failed:?}");
    let level = relaxed.await.expect("join").expect("thread").expect("run");
    assert_eq!(
        level, 2,
        "a relaxed run sharing a turn with a write commits with a full sync"
    );
    assert_eq!(
        writer.stats().groups.get() - groups_before,
        1,
        "the write was one group"
    );
    assert_eq!(
        count(&store, "SELECT COUNT(*) FROM outbox WHERE body = 'kept'").await,
        1,
        "the relaxed run's change is kept, the failed run's undone"
    );
    assert_eq!(count(&store, "SELECT COUNT(*) FROM outbox").await, 2);

    // Alone again, a relaxed run does not wait for the disk.
    let alone = writer.on_thread(true, sync_level).await.expect("thread");
    assert_eq!(alone.expect("level"), 1);
    store.close().await;
}

#[tokio::test]
async fn an_in_memory_store_keeps_the_sqlx_writer() {
    let store = Store::connect("sqlite::memory:").await.expect("store");
    assert!(!store.writer().has_thread());
    assert!(store.writer().on_thread(false, sync_level).await.is_none());
}
