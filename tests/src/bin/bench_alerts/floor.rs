//! The store's own floor for ingestion (issue 12), measured in the same run as `ingest`: how
//! fast the store itself commits notifications when nothing else runs — no HTTP, no JSON, no
//! lane, no IRC. One writer, the same driver (sqlx's `Any`) and, on SQLite, the same pragmas
//! as shepherd (WAL, `synchronous = FULL`); each row is one notification's bytes.
//!
//! - **grouped**: `clients` rows per transaction, one multi-row INSERT and one commit — what a
//!   perfect group writer does when `clients` keep-alive clients each wait for their answer.
//!   With 8 clients this is the most any durable relay on this store can answer.
//! - **one per commit**: a transaction per row, as shepherd did before group commit.
//! - **direct** (SQLite only): the grouped rows again through rusqlite on one connection, a
//!   prepared single-row INSERT run for each row and one commit per group — the engine of
//!   shepherd's group writer on SQLite (`core/src/commit/sqlite.rs`), without sqlx's handoffs.

use std::time::{Duration, Instant};

use shepherd_tests::harness::{Backend, TestStore};
use sqlx::{AnyPool, Executor};

use super::relay::payload;

pub struct FloorResult {
    pub backend: Backend,
    pub clients: usize,
    pub grouped_rows: usize,
    pub grouped: Duration,
    pub single_rows: usize,
    pub single: Duration,
    /// SQLite: the grouped rows through rusqlite.
    pub direct: Option<Duration>,
}

impl FloorResult {
    pub fn grouped_per_second(&self) -> f64 {
        self.grouped_rows as f64 / self.grouped.as_secs_f64()
    }
    pub fn single_per_second(&self) -> f64 {
        self.single_rows as f64 / self.single.as_secs_f64()
    }
    pub fn direct_per_second(&self) -> Option<f64> {
        self.direct
            .map(|d| self.grouped_rows as f64 / d.as_secs_f64())
    }
}

async fn pool(store: &TestStore) -> AnyPool {
    sqlx::any::install_default_drivers();
    let sqlite = store.backend == Backend::Sqlite;
    let url = if sqlite {
        format!("{}?mode=rwc", store.url)
    } else {
        store.url.clone()
    };
    sqlx::any::AnyPoolOptions::new()
        .max_connections(1)
        .after_connect(move |conn, _| {
            Box::pin(async move {
                if sqlite {
                    conn.execute("PRAGMA journal_mode = WAL").await?;
                    conn.execute("PRAGMA synchronous = FULL").await?;
                }
                Ok(())
            })
        })
        .connect(&url)
        .await
        .expect("connect to the floor's store")
}

/// Inserts `rows` rows, `per_commit` to a transaction, in one multi-row INSERT each.
async fn commit_rows(pool: &AnyPool, body: &str, rows: usize, per_commit: usize) -> Duration {
    let values = (0..per_commit)
        .map(|i| {
            let b = i * 3;
            format!("(${}, ${}, ${})", b + 1, b + 2, b + 3)
        })
        .collect::<Vec<_>>()
        .join(", ");
    let sql = format!("INSERT INTO floor_requests (id, body, created_at) VALUES {values}");
    let started = Instant::now();
    let mut next = 0usize;
    while next < rows {
        let mut tx = pool.begin().await.expect("begin");
        let mut q = sqlx::query(sqlx::AssertSqlSafe(sql.clone()));
        for _ in 0..per_commit {
            q = q
                .bind(format!("{next:016}"))
                .bind(body.to_string())
                .bind(started.elapsed().as_millis() as i64);
            next += 1;
        }
        q.execute(&mut *tx).await.expect("insert");
        tx.commit().await.expect("commit");
    }
    started.elapsed()
}

/// The grouped rows through rusqlite on one connection (see the module's **direct**).
fn commit_rows_direct(path: &str, body: &str, rows: usize, per_commit: usize) -> Duration {
    let mut conn = rusqlite::Connection::open(path).expect("open the floor's store");
    conn.pragma_update(None, "journal_mode", "WAL")
        .expect("WAL");
    conn.pragma_update(None, "synchronous", "FULL")
        .expect("full sync");
    let started = Instant::now();
    let mut next = 0usize;
    while next < rows {
        let tx = conn.transaction().expect("begin");
        {
            let mut insert = tx
                .prepare_cached(
                    "INSERT INTO floor_requests (id, body, created_at) VALUES (?1, ?2, ?3)",
                )
                .expect("prepare");
            for _ in 0..per_commit {
                insert
                    .execute(rusqlite::params![
                        format!("direct{next:016}"),
                        body,
                        started.elapsed().as_millis() as i64
                    ])
                    .expect("insert");
                next += 1;
            }
        }
        tx.commit().expect("commit");
    }
    started.elapsed()
}

pub async fn run(backend: Backend, clients: usize, notifications: usize) -> FloorResult {
    eprintln!(
        "[floor] {backend:?}: {notifications} rows, {clients} per commit, then one per commit"
    );
    let store = TestStore::new(backend).await;
    let pool = pool(&store).await;
    sqlx::query(
        "CREATE TABLE floor_requests (id TEXT PRIMARY KEY, body TEXT NOT NULL, created_at BIGINT NOT NULL)",
    )
    .execute(&pool)
    .await
    .expect("create the floor's table");
    let body = String::from_utf8(payload("AmFloor")).expect("the payload is UTF-8");
    let grouped_rows = notifications - notifications % clients;
    let grouped = commit_rows(&pool, &body, grouped_rows, clients).await;
    sqlx::query("DELETE FROM floor_requests")
        .execute(&pool)
        .await
        .expect("empty the floor's table");
    let single_rows = notifications.min(2000);
    let single = commit_rows(&pool, &body, single_rows, 1).await;
    pool.close().await;
    let direct = match store.url.strip_prefix("sqlite://") {
        Some(path) => {
            let (path, body) = (path.to_string(), body.clone());
            Some(
                tokio::task::spawn_blocking(move || {
                    commit_rows_direct(&path, &body, grouped_rows, clients)
                })
                .await
                .expect("the direct floor"),
            )
        }
        None => None,
    };
    FloorResult {
        backend,
        clients,
        grouped_rows,
        grouped,
        single_rows,
        single,
        direct,
    }
}
