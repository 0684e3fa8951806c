//! The SQLite engine's transactions of their own (`GroupWriter::on_thread`): relaxed ones run
//! with `synchronous = NORMAL` and only they do, what they commit is there and what fails is
//! rolled back, and groups commit with a full sync after them.

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
        .on_thread(true, |tx| {
            tx.execute(
                "UPDATE outbox SET body = 'changed' WHERE dedup_key = 'k1'",
                [],
            )?;
            Err::<(), _>(StoreError::Group("refused on purpose".into()))
        })
        .await
        .expect("thread");
    assert!(matches!(failed, Err(StoreError::Group(_))), "{failed:?}");
    assert_eq!(
        count(&store, "SELECT COUNT(*) FROM outbox WHERE body = 'one'").await,
        1,
        "rolled back"
    );
    let changed = writer
        .on_thread(true, |tx| {
            Ok(tx.execute(
                "UPDATE outbox SET body = 'changed' WHERE dedup_key = 'k1'",
                [],
            )?)
        })
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

#[tokio::test]
async fn an_in_memory_store_keeps_the_sqlx_writer() {
    let store = Store::connect("sqlite::memory:").await.expect("store");
    assert!(!store.writer().has_thread());
    assert!(store.writer().on_thread(false, sync_level).await.is_none());
}
