//! The store: one connection pool over SQLite (the embedded default) or PostgreSQL.
//!
//! Everything durable lives here: the work queue, idempotency records, the outbox,
//! watched pipelines and the audit log. The schema is portable SQL (see `migrations/`),
//! so one set of queries serves both backends through sqlx's `Any` driver; migrations
//! run at connect. Times are Unix milliseconds, ids are time-ordered UUIDv7 strings.

/// The connection type of `*_in` functions (a transaction derefs to it), for crates that do
/// not name sqlx themselves.
pub use sqlx::AnyConnection;
use std::str::FromStr;
use std::time::Duration;

use shepherd_config::redact_url;

use crate::commit::GroupWriter;
use sqlx::any::{AnyConnectOptions, AnyPoolOptions};
use sqlx::{AnyPool, Executor};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("store URL `{url}` is not supported (expected sqlite:PATH or postgres://...)")]
    UnsupportedUrl { url: String },
    /// `url` is redacted; so is `detail` (the driver's words, which may quote the URL).
    #[error("cannot open the store at {url}: {detail}")]
    Connect { url: String, detail: String },
    #[error("store migrations failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("store: {0}")]
    Sql(#[from] sqlx::Error),
    /// From the group writer's own SQLite connection (see `commit/sqlite.rs`).
    #[error("store: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("store: bad data in {what}: {detail}")]
    Corrupt { what: &'static str, detail: String },
    /// What a transaction was to change was changed meanwhile (a lease taken back): it rolled
    /// back, nothing of it was written.
    #[error("store: {0}; nothing was written")]
    Conflict(String),
    /// A group commit failed (see `commit`): nothing of the group was stored.
    #[error("store: {0}")]
    Group(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// A cloneable handle on the pool.
#[derive(Clone, Debug)]
pub struct Store {
    pool: AnyPool,
    /// SQLite only: one connection whose commits do not wait for the disk (see
    /// [`Store::begin_relaxed`]).
    relaxed: Option<AnyPool>,
    backend: Backend,
    writer: GroupWriter,
    /// SQLite only: write transactions of this process take turns here. SQLite has one writer
    /// at a time; without the gate, a transaction that finds the database locked waits in
    /// SQLite's busy handler, which sleeps 1 to 100 ms between tries (the 38 ms p99 of alert
    /// ingestion when the group writer, the alert lane and the IRC marks overlapped). Behind
    /// the gate they queue in order and each starts as soon as the previous one committed.
    gate: Option<WriteGate>,
}

/// The turn of write transactions (see [`Store`]).
pub(crate) type WriteGate = std::sync::Arc<tokio::sync::Mutex<()>>;

/// A write transaction, holding the store's write turn (SQLite) until it ends. Use it as the
/// connection (`&mut tx`), then `commit` or `rollback`; dropping it rolls back.
pub struct Tx {
    tx: sqlx::Transaction<'static, sqlx::Any>,
    _turn: Option<tokio::sync::OwnedMutexGuard<()>>,
}

impl std::ops::Deref for Tx {
    type Target = AnyConnection;
    fn deref(&self) -> &AnyConnection {
        &self.tx
    }
}

impl std::ops::DerefMut for Tx {
    fn deref_mut(&mut self) -> &mut AnyConnection {
        &mut self.tx
    }
}

impl Tx {
    /// Opens a write transaction on `pool`, after waiting for the write turn when there is one.
    pub(crate) async fn begin(pool: &AnyPool, gate: Option<&WriteGate>) -> Result<Tx, StoreError> {
        let turn = match gate {
            Some(g) => Some(g.clone().lock_owned().await),
            None => None,
        };
        Ok(Tx {
            tx: pool.begin().await?,
            _turn: turn,
        })
    }

    pub async fn commit(self) -> Result<(), StoreError> {
        Ok(self.tx.commit().await?)
    }

    pub async fn rollback(self) -> Result<(), StoreError> {
        Ok(self.tx.rollback().await?)
    }
}

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

impl Store {
    /// Opens (creating an SQLite file if needed) and migrates the store at `url`.
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        sqlx::any::install_default_drivers();
        let (backend, url) = normalise(url)?;
        let options = AnyConnectOptions::from_str(&url).map_err(|source| StoreError::Connect {
            url: redact_url(&url),
            detail: redact_url(&source.to_string()),
        })?;
        let connect_error = |source: sqlx::Error| StoreError::Connect {
            url: redact_url(&url),
            detail: redact_url(&source.to_string()),
        };
        let pool = pool_options(
            backend,
            true,
            match backend {
                Backend::Sqlite => 4,
                Backend::Postgres => 10,
            },
        )
        .connect_with(options.clone())
        .await
        .map_err(connect_error)?;
        MIGRATOR.run(&pool).await?;
        let gate = (backend == Backend::Sqlite).then(WriteGate::default);
        let relaxed = match backend {
            Backend::Sqlite => Some(
                pool_options(backend, false, 1)
                    .connect_with(options)
                    .await
                    .map_err(connect_error)?,
            ),
            Backend::Postgres => None,
        };
        let writer = match (&gate, sqlite_file(&url)) {
            (Some(gate), Some(path)) => GroupWriter::start_sqlite(&path, gate.clone())?,
            _ => GroupWriter::start(pool.clone(), gate.clone()),
        };
        Ok(Self {
            pool,
            relaxed,
            backend,
            writer,
            gate,
        })
    }

    pub fn pool(&self) -> &AnyPool {
        &self.pool
    }

    /// A write transaction (in this process, one at a time on SQLite: see [`Store`]). Never
    /// open another, nor wait for the group writer, while holding one.
    pub async fn begin(&self) -> Result<Tx, StoreError> {
        Tx::begin(&self.pool, self.gate.as_ref()).await
    }

    /// A write transaction whose loss in a power failure only makes work happen again — a
    /// line marked delivered (said again), an alert notification's lines and completion (relayed
    /// again), a GitLab event's completion (processed again; what it caused has dedup keys) —
    /// and never for what was acknowledged to anyone outside, nor for the record of an
    /// effect. Its commit does not wait for the disk: on SQLite it runs on a connection with
    /// `synchronous = NORMAL` (in WAL mode durable across a crash of shepherd, and made durable
    /// by the next ordinary commit's sync of the same log); on PostgreSQL with
    /// `synchronous_commit = off` for this transaction. Same rules as [`Store::begin`].
    pub async fn begin_relaxed(&self) -> Result<Tx, StoreError> {
        // SQLite has the relaxed connection; PostgreSQL relaxes the transaction itself.
        if let Some(relaxed) = &self.relaxed {
            return Tx::begin(relaxed, self.gate.as_ref()).await;
        }
        let mut tx = Tx::begin(&self.pool, None).await?;
        sqlx::query("SET LOCAL synchronous_commit = off")
            .execute(&mut *tx)
            .await?;
        Ok(tx)
    }

    /// The group writer: requests and lines from outside, committed together (see `commit`).
    pub fn writer(&self) -> &GroupWriter {
        &self.writer
    }

    /// Adds the store's own series (the group writer's) to `registry`.
    pub fn register_metrics(
        &self,
        registry: &prometheus::Registry,
    ) -> Result<(), prometheus::Error> {
        self.writer.stats().register(registry)
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// A cheap round trip, for readiness checks.
    pub async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    pub async fn close(&self) {
        if let Some(relaxed) = &self.relaxed {
            relaxed.close().await;
        }
        self.pool.close().await;
    }
}

/// The pool's options; on SQLite every connection gets the store's pragmas with
/// `synchronous = FULL`, or `NORMAL` when not `durable`.
fn pool_options(backend: Backend, durable: bool, max: u32) -> AnyPoolOptions {
    AnyPoolOptions::new()
        .max_connections(max)
        .acquire_timeout(Duration::from_secs(30))
        .after_connect(move |conn, _meta| {
            Box::pin(async move {
                if backend == Backend::Sqlite {
                    // WAL lets readers run beside the writer; FULL makes every commit
                    // durable before it returns, which "stored before acknowledged" needs
                    // (NORMAL only on the relaxed connection, see `Store::begin_relaxed`).
                    conn.execute("PRAGMA journal_mode = WAL").await?;
                    conn.execute(if durable {
                        "PRAGMA synchronous = FULL"
                    } else {
                        "PRAGMA synchronous = NORMAL"
                    })
                    .await?;
                    conn.execute("PRAGMA busy_timeout = 10000").await?;
                    // The page cache is per connection: 1 MiB each (5 MiB for the pools)
                    // holds the hot indexes; the default (~2 MB each) only grows RSS under
                    // a storm without making the queue's index reads faster.
                    conn.execute("PRAGMA cache_size = -1024").await?;
                    conn.execute("PRAGMA foreign_keys = ON").await?;
                }
                Ok(())
            })
        })
}

/// Current time in Unix milliseconds.
/// Rows deleted by [`prune`], by table.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Pruned {
    pub requests: u64,
    pub effects: u64,
    pub outbox: u64,
    pub watches: u64,
    pub alert_notices: u64,
    pub herder_actions: u64,
}

/// Deletes what is finished and older than `before` (Unix ms): done requests and their
/// idempotency records, delivered messages, ended watches, alert notices, the herder's recorded
/// actions. Dead requests, the
/// audit log, pipelines started and canary runs stay. Slot messages whose slot is still in use
/// are not needed once delivered: the slot row keeps the note id.
pub async fn prune(store: &Store, before: i64) -> Result<Pruned, StoreError> {
    let mut tx = store.begin().await?;
    // Commands from merge-request comments stay: their keys are what keeps an edited comment
    // from running them again.
    let effects = sqlx::query(
        "DELETE FROM effects WHERE request_id IN \
         (SELECT id FROM requests WHERE state = 'done' AND updated_at < $1 \
          AND (dedup_key IS NULL OR dedup_key NOT LIKE 'note:%'))",
    )
    .bind(before)
    .execute(&mut *tx)
    .await?
    .rows_affected();
    let requests = sqlx::query(
        "DELETE FROM requests WHERE state = 'done' AND updated_at < $1 \
         AND (dedup_key IS NULL OR dedup_key NOT LIKE 'note:%')",
    )
    .bind(before)
    .execute(&mut *tx)
    .await?
    .rows_affected();
    // Delivered messages, and parked ones (given up on; anyone can cause those cheaply, so
    // they are kept for the retention time, not for ever).
    let outbox = sqlx::query(
        "DELETE FROM outbox WHERE (delivered_at IS NOT NULL AND delivered_at < $1) \
         OR (parked_at IS NOT NULL AND parked_at < $1)",
    )
    .bind(before)
    .execute(&mut *tx)
    .await?
    .rows_affected();
    let watches = sqlx::query("DELETE FROM watches WHERE state = 'done' AND finished_at < $1")
        .bind(before)
        .execute(&mut *tx)
        .await?
        .rows_affected();
    let alert_notices = sqlx::query("DELETE FROM alert_notices WHERE shown_at < $1")
        .bind(before)
        .execute(&mut *tx)
        .await?
        .rows_affected();
    let herder_actions = sqlx::query("DELETE FROM herder_actions WHERE created_at < $1")
        .bind(before)
        .execute(&mut *tx)
        .await?
        .rows_affected();
    tx.commit().await?;
    Ok(Pruned {
        requests,
        effects,
        outbox,
        watches,
        alert_notices,
        herder_actions,
    })
}

/// Whether anything was stored for a message named `base` (a request or a reply whose dedup key
/// is `base:...`, see the dispatcher's command keys): a front end that sees a message again after
/// a restart asks this before treating it as new. Rare (only old messages), so a prefix match
/// without an index is fine.
pub async fn message_known(store: &Store, base: &str) -> Result<bool, StoreError> {
    let escaped = base
        .replace('\\', "\\\\")
        .replace('%', "\\%")
        .replace('_', "\\_");
    let pattern = format!("{escaped}:%");
    let n: i64 = sqlx::query_scalar(
        "SELECT (SELECT COUNT(*) FROM requests WHERE dedup_key LIKE $1 ESCAPE '\\') \
              + (SELECT COUNT(*) FROM outbox WHERE dedup_key LIKE $1 ESCAPE '\\')",
    )
    .bind(&pattern)
    .fetch_one(store.pool())
    .await?;
    Ok(n > 0)
}

/// Ids per statement in the `IN (...)` of bulk statements (well below every backend's limit).
pub(crate) const ID_CHUNK: usize = 200;

/// `$first, $first+1, ...`: `n` numbered placeholders.
pub(crate) fn placeholders(first: usize, n: usize) -> String {
    (first..first + n)
        .map(|i| format!("${i}"))
        .collect::<Vec<_>>()
        .join(", ")
}

pub fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// A new time-ordered id.
pub fn new_id() -> String {
    uuid::Uuid::now_v7().to_string()
}

/// The file of an SQLite store URL; `None` for an in-memory database, which only sqlx's own
/// connections can share.
fn sqlite_file(url: &str) -> Option<std::path::PathBuf> {
    let options = sqlx::sqlite::SqliteConnectOptions::from_str(url).ok()?;
    let path = options.get_filename();
    let name = path.to_string_lossy();
    (!name.starts_with("file:") && name != ":memory:").then(|| path.to_path_buf())
}

fn normalise(url: &str) -> Result<(Backend, String), StoreError> {
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        return Ok((Backend::Postgres, url.to_string()));
    }
    if let Some(rest) = url.strip_prefix("sqlite:") {
        // Create the file when missing, like an embedded database should.
        let with_mode = if rest.contains("mode=") {
            url.to_string()
        } else if rest.contains('?') {
            format!("{url}&mode=rwc")
        } else {
            format!("{url}?mode=rwc")
        };
        return Ok((Backend::Sqlite, with_mode));
    }
    Err(StoreError::UnsupportedUrl {
        url: redact_url(url),
    })
}
