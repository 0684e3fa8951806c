//! Group commit: the one writer that stores what comes in from outside.
//!
//! Every request from outside — a webhook, an alert notification, a chat command — and every
//! line said outside a worker's transaction must be committed before anyone is answered. Paying
//! a whole commit (an `fdatasync` on SQLite) for each of them caps ingestion at the disk's sync
//! rate, so they share commits instead: one writer task takes everything that arrived while its
//! previous commit was flushing, writes it with multi-row inserts in one transaction, commits
//! once, and only then answers each caller. When the commit fails, every write of the group is
//! answered with the same error and none of them is stored: there are no partial
//! acknowledgements. A caller whose future is dropped (its client went away) changes nothing:
//! its write commits with the group, as it would have alone.
//!
//! Bounded: at most [`MAX_GROUP`] writes per transaction and [`QUEUE_DEPTH`] waiting, so a storm
//! waits at the door (callers are paced by the channel) instead of growing memory.

use std::collections::HashMap;
use std::sync::Arc;

use prometheus::{Histogram, HistogramOpts, IntCounter, Registry};

use sqlx::{AnyConnection, AnyPool, Row};
use tokio::sync::{mpsc, oneshot};

use crate::origin::Origin;
use crate::queue::{Enqueued, NewRequest};
use crate::store::{StoreError, Tx, WriteGate, new_id, now_ms, placeholders};

mod sqlite;
/// The SQLite engine's outbox line insert, for other transactions on its thread.
pub(crate) use sqlite::insert_line;
#[cfg(test)]
mod tests;

/// Most writes in one transaction.
pub const MAX_GROUP: usize = 512;
/// Writes waiting for the writer before callers wait to hand theirs over.
pub const QUEUE_DEPTH: usize = 4096;
/// Rows per multi-row INSERT (at most 12 parameters each: well under every backend's limit).
pub(crate) const ROWS_PER_STATEMENT: usize = 64;

/// A line for the outbox, stored outside a worker's transaction (a dispatcher reply, `say`).
#[derive(Debug, Clone)]
pub struct Line {
    pub origin: Origin,
    pub body: String,
    pub dedup_key: Option<String>,
    pub request_id: Option<String>,
}

/// One write handed to the group writer.
#[derive(Debug)]
enum Write {
    /// The request, and its lane if its kind runs in one.
    Enqueue(NewRequest, Option<String>),
    Push(Line),
}

/// What a write became once its group committed.
#[derive(Debug)]
enum Written {
    Enqueued(Enqueued),
    /// False when the line's dedup key was already used.
    Pushed(bool),
}

type Reply = oneshot::Sender<Result<Written, StoreError>>;

/// Counters of the writer's work, as Prometheus series (`Store::register_metrics` adds them to
/// the registry; tests read them directly).
#[derive(Debug, Clone)]
pub struct GroupStats {
    /// Transactions the writer committed or tried that held writes (on SQLite: turns with a
    /// group; turns of runs alone are not counted).
    pub groups: IntCounter,
    /// Writes (requests and lines) handed to the writer.
    pub writes: IntCounter,
    /// Groups whose transaction failed (each of their writes answered with the error).
    pub failed_groups: IntCounter,
    /// Writes per transaction.
    pub group_size: Histogram,
    /// Seconds from taking a group to its commit (its turn included), and of that, waiting to
    /// start the transaction (the write turn on SQLite, while another transaction had it).
    pub commit_seconds: Histogram,
    pub turn_wait_seconds: Histogram,
}

fn seconds(name: &str, help: &str) -> Histogram {
    Histogram::with_opts(HistogramOpts::new(name, help).buckets(vec![
        0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0,
    ]))
    .unwrap_or_else(|e| unreachable!("metric {name}: {e}"))
}

impl GroupStats {
    fn new() -> Self {
        // The names and help texts are constants: these constructors cannot fail on them.
        let counter = |name: &str, help: &str| {
            IntCounter::new(name, help).unwrap_or_else(|e| unreachable!("metric {name}: {e}"))
        };
        Self {
            groups: counter(
                "store_group_commits_total",
                "Transactions of the group writer that held requests or lines from outside (on SQLite: writer turns with a group; turns of lease and completion runs alone are not counted)",
            ),
            writes: counter(
                "store_group_writes_total",
                "Requests and lines stored by the group writer",
            ),
            failed_groups: counter(
                "store_group_commit_failures_total",
                "Group transactions that failed; each of their writes was answered with the error",
            ),
            group_size: Histogram::with_opts(
                HistogramOpts::new("store_group_size", "Writes per group transaction").buckets(
                    vec![1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0],
                ),
            )
            .unwrap_or_else(|e| unreachable!("metric store_group_size: {e}")),
            commit_seconds: seconds(
                "store_group_commit_seconds",
                "Seconds from taking a group to its commit, the wait for the write turn included",
            ),
            turn_wait_seconds: seconds(
                "store_group_turn_wait_seconds",
                "Seconds a group waited to start its transaction: the write turn (SQLite), the BEGIN through sqlx",
            ),
        }
    }

    /// Adds the series to `registry`.
    pub fn register(&self, registry: &Registry) -> Result<(), prometheus::Error> {
        registry.register(Box::new(self.groups.clone()))?;
        registry.register(Box::new(self.writes.clone()))?;
        registry.register(Box::new(self.failed_groups.clone()))?;
        registry.register(Box::new(self.group_size.clone()))?;
        registry.register(Box::new(self.commit_seconds.clone()))?;
        registry.register(Box::new(self.turn_wait_seconds.clone()))?;
        Ok(())
    }
}

/// The handle callers share; the writer task ends when the last handle is dropped.
#[derive(Clone, Debug)]
pub struct GroupWriter {
    door: Door,
    stats: Arc<GroupStats>,
}

impl GroupWriter {
    /// Starts the writer task on `pool` (needs a Tokio runtime).
    pub fn start(pool: AnyPool, gate: Option<WriteGate>) -> Self {
        let (tx, rx) = mpsc::channel(QUEUE_DEPTH);
        let stats = Arc::new(GroupStats::new());
        tokio::spawn(run(pool, gate, rx, stats.clone()));
        Self {
            door: Door::Task(tx),
            stats,
        }
    }

    /// Starts the writer on its own thread with its own connection to the migrated SQLite
    /// store at `path` (see `commit/sqlite.rs`), taking `gate` for each transaction.
    pub(crate) fn start_sqlite(
        path: &std::path::Path,
        gate: WriteGate,
    ) -> Result<Self, StoreError> {
        let conn = sqlite::open(path)?;
        let (tx, rx) = mpsc::channel(QUEUE_DEPTH);
        let stats = Arc::new(GroupStats::new());
        sqlite::spawn(conn, gate, rx, stats.clone())?;
        Ok(Self {
            door: Door::Thread(tx),
            stats,
        })
    }

    pub fn stats(&self) -> &GroupStats {
        &self.stats
    }

    /// Stores a request; returns once its group committed.
    pub async fn enqueue(
        &self,
        request: NewRequest,
        lane: Option<String>,
    ) -> Result<Enqueued, StoreError> {
        match self.write(Write::Enqueue(request, lane)).await? {
            Written::Enqueued(e) => Ok(e),
            Written::Pushed(_) => Err(mismatch()),
        }
    }

    /// Stores an outbox line; false when its dedup key was already used.
    pub async fn push(&self, line: Line) -> Result<bool, StoreError> {
        match self.write(Write::Push(line)).await? {
            Written::Pushed(added) => Ok(added),
            Written::Enqueued(_) => Err(mismatch()),
        }
    }

    async fn write(&self, write: Write) -> Result<Written, StoreError> {
        let (reply, answer) = oneshot::channel();
        match &self.door {
            Door::Task(tx) => tx.send((write, reply)).await.map_err(|_| stopped())?,
            Door::Thread(tx) => tx
                .send(sqlite::Job::Write(write, reply))
                .await
                .map_err(|_| stopped())?,
        }
        answer.await.map_err(|_| stopped())?
    }

    /// Jobs handed over and not yet taken by the writer (for tests that line jobs up).
    #[cfg(test)]
    pub(crate) fn waiting(&self) -> usize {
        match &self.door {
            Door::Task(tx) => tx.max_capacity() - tx.capacity(),
            Door::Thread(tx) => tx.max_capacity() - tx.capacity(),
        }
    }

    /// Whether the writer has its own SQLite connection, on which [`GroupWriter::on_thread`]
    /// runs transactions.
    pub fn has_thread(&self) -> bool {
        matches!(self.door, Door::Thread(_))
    }

    /// Runs `work` on the SQLite writer's connection, all or nothing: what it wrote is
    /// committed when it returns `Ok` and undone when it returns `Err`. It shares the writer's
    /// next transaction with whatever else is waiting there (a group, other runs: see
    /// `commit/sqlite.rs`), and is answered once that transaction committed. `work` may run
    /// more than once (again after another job of its turn failed), so it does nothing but
    /// statements on the transaction it is given. `relaxed` allows that commit not to wait for the disk when
    /// nothing in it needs to (see `Store::begin_relaxed` for when that is allowed). One
    /// handoff instead of one per statement and row: for the hot transactions of the alert
    /// lane and the outbox. `None` without a thread ([`GroupWriter::has_thread`]).
    pub(crate) async fn on_thread<R: Send + 'static>(
        &self,
        relaxed: bool,
        work: impl Fn(&rusqlite::Transaction<'_>) -> Result<R, StoreError> + Send + 'static,
    ) -> Option<Result<R, StoreError>> {
        let Door::Thread(tx) = &self.door else {
            return None;
        };
        let (reply, answer) = oneshot::channel();
        let job = sqlite::Job::Run {
            relaxed,
            work: Box::new(move |t| work(t).map(|value| Box::new(value) as sqlite::Value)),
            reply,
        };
        if tx.send(job).await.is_err() {
            return Some(Err(stopped()));
        }
        Some(match answer.await {
            Ok(Ok(value)) => value.downcast::<R>().map(|v| *v).map_err(|_| mismatch()),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(stopped()),
        })
    }
}

/// Where writes go: the task of the sqlx engine, or the SQLite engine's thread.
#[derive(Clone, Debug)]
enum Door {
    Task(mpsc::Sender<(Write, Reply)>),
    Thread(mpsc::Sender<sqlite::Job>),
}

fn stopped() -> StoreError {
    StoreError::Group("the store's writer has stopped".to_string())
}

fn mismatch() -> StoreError {
    StoreError::Group("the writer answered a different kind of write".to_string())
}

async fn run(
    pool: AnyPool,
    gate: Option<WriteGate>,
    mut rx: mpsc::Receiver<(Write, Reply)>,
    stats: Arc<GroupStats>,
) {
    let mut group: Vec<(Write, Reply)> = Vec::with_capacity(MAX_GROUP);
    while rx.recv_many(&mut group, MAX_GROUP).await > 0 {
        let (writes, replies): (Vec<Write>, Vec<Reply>) = group.drain(..).unzip();
        let started = std::time::Instant::now();
        let result = commit(&pool, gate.as_ref(), &writes, &stats).await;
        stats
            .commit_seconds
            .observe(started.elapsed().as_secs_f64());
        answer(&stats, writes.len(), replies, result);
    }
}

/// Counts a group and answers its callers: each with its own result once the group committed,
/// all with the group's error when it failed.
fn answer(
    stats: &GroupStats,
    writes: usize,
    replies: Vec<Reply>,
    result: Result<Vec<Result<Written, StoreError>>, StoreError>,
) {
    stats.groups.inc();
    stats.writes.inc_by(writes as u64);
    stats.group_size.observe(writes as f64);
    match result {
        Ok(results) => {
            for (reply, result) in replies.into_iter().zip(results) {
                let _ = reply.send(result);
            }
        }
        Err(e) => {
            stats.failed_groups.inc();
            tracing::error!(error = %e, writes, "store: a group commit failed; none of its writes is stored, each is answered with the error");
            let detail = e.to_string();
            for reply in replies {
                let _ = reply.send(Err(StoreError::Group(detail.clone())));
            }
        }
    }
}

/// Writes a group in one transaction; the results are in the order of `writes`.
async fn commit(
    pool: &AnyPool,
    gate: Option<&WriteGate>,
    writes: &[Write],
    stats: &GroupStats,
) -> Result<Vec<Result<Written, StoreError>>, StoreError> {
    let waited = std::time::Instant::now();
    let mut tx = Tx::begin(pool, gate).await?;
    stats
        .turn_wait_seconds
        .observe(waited.elapsed().as_secs_f64());
    match write_all(&mut tx, writes).await {
        Ok(results) => {
            tx.commit().await?;
            Ok(results)
        }
        Err(e) => {
            // Rolled back now, not when the connection is next used: until then a PostgreSQL
            // session would sit idle in its failed transaction, holding its locks.
            if let Err(rollback) = tx.rollback().await {
                tracing::warn!(error = %rollback, "store: rollback of a failed group failed");
            }
            Err(e)
        }
    }
}

/// The group's statements, inside `tx`.
async fn write_all(
    tx: &mut AnyConnection,
    writes: &[Write],
) -> Result<Vec<Result<Written, StoreError>>, StoreError> {
    let now = now_ms();
    // Ids in arrival order: they are time-ordered, so a lane reads the group in that order.
    let ids: Vec<String> = writes.iter().map(|_| new_id()).collect();

    let requests: Vec<(usize, &NewRequest, &Option<String>)> = writes
        .iter()
        .enumerate()
        .filter_map(|(i, w)| match w {
            Write::Enqueue(r, lane) => Some((i, r, lane)),
            Write::Push(_) => None,
        })
        .collect();
    let lines: Vec<(usize, &Line)> = writes
        .iter()
        .enumerate()
        .filter_map(|(i, w)| match w {
            Write::Push(l) => Some((i, l)),
            Write::Enqueue(..) => None,
        })
        .collect();

    let mut inserted: Vec<bool> = vec![false; writes.len()];
    let position: HashMap<&str, usize> = ids
        .iter()
        .enumerate()
        .map(|(i, id)| (id.as_str(), i))
        .collect();

    for chunk in requests.chunks(ROWS_PER_STATEMENT) {
        let values = (0..chunk.len())
            .map(|r| {
                let b = r * 12;
                let n = |k: usize| format!("${}", b + k);
                format!(
                    "({}, {}, {}, {}, {}, {}, {}, {}, 'ready', 0, {}, {}, {}, {}, {})",
                    n(1),
                    n(2),
                    n(3),
                    n(4),
                    n(5),
                    n(6),
                    n(7),
                    n(8),
                    n(12),
                    n(9),
                    n(9),
                    n(10),
                    n(11),
                )
            })
            .collect::<Vec<_>>()
            .join(", ");
        let sql = format!(
            "INSERT INTO requests (id, kind, frontend, room, addressee, identity, payload, dedup_key, \
             state, attempts, available_at, created_at, updated_at, after_id, lane) VALUES {values} \
             ON CONFLICT (dedup_key) DO NOTHING RETURNING id"
        );
        let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
        for (i, r, lane) in chunk {
            q = q
                .bind(ids[*i].clone())
                .bind(r.kind.clone())
                .bind(r.origin.frontend.clone())
                .bind(r.origin.room.clone())
                .bind(r.origin.addressee.clone())
                .bind(r.identity.clone())
                .bind(r.payload.as_str().to_string())
                .bind(r.dedup_key.clone())
                .bind(now)
                .bind(r.after.clone())
                .bind((*lane).clone())
                .bind(r.available_at(now));
        }
        for row in q.fetch_all(&mut *tx).await? {
            let id: String = row.try_get("id")?;
            if let Some(&i) = position.get(id.as_str()) {
                inserted[i] = true;
            }
        }
    }

    let rows: Vec<(&str, &Line)> = lines.iter().map(|(i, l)| (ids[*i].as_str(), *l)).collect();
    for id in crate::outbox::insert_lines(tx, &rows, now).await? {
        if let Some(&i) = position.get(id.as_str()) {
            inserted[i] = true;
        }
    }

    // Requests not inserted carry a dedup key already stored (earlier, or earlier in this group).
    let duplicates: Vec<&str> = requests
        .iter()
        .filter(|(i, ..)| !inserted[*i])
        .filter_map(|(_, r, _)| r.dedup_key.as_deref())
        .collect();
    let mut existing: HashMap<String, String> = HashMap::new();
    for chunk in duplicates.chunks(ROWS_PER_STATEMENT) {
        let sql = format!(
            "SELECT id, dedup_key FROM requests WHERE dedup_key IN ({})",
            placeholders(1, chunk.len())
        );
        let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
        for key in chunk {
            q = q.bind(key.to_string());
        }
        for row in q.fetch_all(&mut *tx).await? {
            existing.insert(row.try_get("dedup_key")?, row.try_get("id")?);
        }
    }
    Ok(writes
        .iter()
        .enumerate()
        .map(|(i, w)| match w {
            Write::Push(_) => Ok(Written::Pushed(inserted[i])),
            Write::Enqueue(..) if inserted[i] => {
                Ok(Written::Enqueued(Enqueued::New(ids[i].clone())))
            }
            Write::Enqueue(r, _) => {
                let id = r
                    .dedup_key
                    .as_ref()
                    .and_then(|k| existing.get(k))
                    .ok_or_else(|| StoreError::Corrupt {
                        what: "requests",
                        detail: "a request was neither inserted nor found by its dedup key"
                            .to_string(),
                    })?;
                Ok(Written::Enqueued(Enqueued::Duplicate(id.clone())))
            }
        })
        .collect())
}
