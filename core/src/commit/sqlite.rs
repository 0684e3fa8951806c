//! The group writer's engine on SQLite: its own thread and its own connection.
//!
//! Through sqlx, every statement is a message to the connection's worker thread and back —
//! begin, each multi-row insert and its returned rows, commit — and the handoffs, not SQLite,
//! were most of a group's time (issue 12: the store floor of 17,600 rows/s against 1,800
//! notifications/s). Here the writer is a thread that owns a rusqlite connection to the same
//! file (the same SQLite library as sqlx's, so one lock table for the process): it takes the
//! waiting writes, runs the group's statements back to back on prepared statements, commits
//! with a full sync, and answers each caller. One handoff in, one answer out per write.
//!
//! The rules are the sqlx engine's (see the module above): every write of a group commits
//! together or none does, ids are time-ordered in arrival order, a request whose dedup key is
//! already stored is answered with the stored id. The thread takes the process's write turn
//! ([`WriteGate`]) for each transaction, like every other writer on SQLite here.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use std::any::Any;

use rusqlite::{
    Connection, OpenFlags, OptionalExtension, Transaction, TransactionBehavior, params,
};
use tokio::sync::{mpsc, oneshot};

use super::{GroupStats, Line, MAX_GROUP, Reply, Write, Written, answer};
use crate::queue::{Enqueued, NewRequest};
use crate::store::{StoreError, WriteGate, new_id, now_ms};

const INSERT_REQUEST: &str = "INSERT INTO requests (id, kind, frontend, room, addressee, identity, \
     payload, dedup_key, state, attempts, available_at, created_at, updated_at, after_id, lane) \
     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, 'ready', 0, ?12, ?9, ?9, ?10, ?11) \
     ON CONFLICT (dedup_key) DO NOTHING";
const REQUEST_BY_KEY: &str = "SELECT id FROM requests WHERE dedup_key = ?1";
const INSERT_LINE: &str = "INSERT INTO outbox (id, frontend, room, addressee, body, dedup_key, \
     request_id, created_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8) \
     ON CONFLICT (dedup_key) DO NOTHING";

/// What the thread is given: a write for the next group, or a transaction's worth of work of
/// its own. Writes are most of what comes, each moved once through the channel, so they are not
/// boxed (that would be an allocation per request) for the sake of the rarer runs' size.
#[allow(clippy::large_enum_variant)]
pub(crate) enum Job {
    Write(Write, Reply),
    /// Runs in the next transaction and is answered once that committed (see
    /// `GroupWriter::on_thread`); `relaxed` ones alone commit with `synchronous = NORMAL`.
    Run {
        relaxed: bool,
        work: Work,
        reply: RunReply,
    },
}

type RunReply = oneshot::Sender<Result<Value, StoreError>>;

/// What a run returns, handed back to its caller (who knows its type) after the commit.
pub(crate) type Value = Box<dyn Any + Send>;
/// A run's work: only statements on the transaction it is given, and no effect outside it, for
/// it runs again when another job of its turn failed and the turn was rolled back.
pub(crate) type Work = Box<dyn Fn(&Transaction<'_>) -> Result<Value, StoreError> + Send>;

/// What a group's writes became, each, or the group's error.
type GroupResult = Result<Vec<Result<Written, StoreError>>, StoreError>;

/// What a run came to: its value, or its error (or the turn's).
type RunOutcome = Result<Value, StoreError>;

/// A committed turn: what its group came to (none without writes) and each run's outcome.
type Committed = (Option<GroupResult>, Vec<RunOutcome>);

/// Most runs in one transaction (each is a lane batch or a batch of outbox marks at most).
const MAX_RUNS: usize = 64;

/// Opens the writer's connection to the migrated store at `path`, with the store's pragmas and
/// `synchronous = FULL` (a group is acknowledged, so its commit waits for the disk).
pub(crate) fn open(path: &Path) -> Result<Connection, StoreError> {
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    conn.busy_timeout(Duration::from_secs(10))?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "FULL")?;
    conn.pragma_update(None, "cache_size", -1024)?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    Ok(conn)
}

/// Runs the writer on its own thread until every handle is dropped.
pub(crate) fn spawn(
    conn: Connection,
    gate: WriteGate,
    rx: mpsc::Receiver<Job>,
    stats: Arc<GroupStats>,
) -> Result<(), StoreError> {
    std::thread::Builder::new()
        .name("shepherd-store-writer".into())
        .spawn(move || run(conn, gate, rx, stats))
        .map(|_| ())
        .map_err(|e| StoreError::Group(format!("cannot start the store's writer thread: {e}")))
}

/// One turn of the writer: the writes and the runs that were waiting, in one transaction.
#[derive(Default)]
struct Turn {
    writes: Vec<Write>,
    replies: Vec<Reply>,
    works: Vec<Work>,
    run_replies: Vec<RunReply>,
    /// Whether the commit must wait for the disk: a write (acknowledged to someone outside)
    /// or a run that is not relaxed.
    durable: bool,
}

impl Turn {
    fn add(&mut self, job: Job) {
        match job {
            Job::Write(write, reply) => {
                self.writes.push(write);
                self.replies.push(reply);
                self.durable = true;
            }
            Job::Run {
                relaxed,
                work,
                reply,
            } => {
                self.works.push(work);
                self.run_replies.push(reply);
                self.durable |= !relaxed;
            }
        }
    }

    fn full(&self) -> bool {
        self.writes.len() >= MAX_GROUP || self.works.len() >= MAX_RUNS
    }
}

fn run(mut conn: Connection, gate: WriteGate, mut rx: mpsc::Receiver<Job>, stats: Arc<GroupStats>) {
    // The level the connection is at; set only when a turn needs another.
    let mut level = SyncLevel::Full;
    while let Some(job) = rx.blocking_recv() {
        // Everything that arrived while the previous turn was committing shares this one:
        // one transaction, one commit, for a group and the lane's and outbox's runs alike.
        let mut turn = Turn::default();
        turn.add(job);
        while !turn.full() {
            match rx.try_recv() {
                Ok(job) => turn.add(job),
                Err(_) => break,
            }
        }
        let started = std::time::Instant::now();
        // This thread is not in the runtime, so it may block for its turn.
        let _turn = gate.blocking_lock();
        if !turn.writes.is_empty() {
            stats
                .turn_wait_seconds
                .observe(started.elapsed().as_secs_f64());
        }
        let wanted = if turn.durable {
            SyncLevel::Full
        } else {
            SyncLevel::Normal
        };
        if wanted != level {
            match conn.pragma_update(None, "synchronous", wanted.pragma()) {
                Ok(()) => level = wanted,
                // A relaxed turn on a connection that stayed at FULL only waits longer.
                Err(e) if wanted == SyncLevel::Normal => {
                    tracing::warn!(error = %e, "store: cannot relax the writer's sync; committing with a full sync");
                }
                Err(e) => {
                    // Nothing acknowledged may commit on a relaxed connection.
                    tracing::error!(error = %e, "store: cannot restore the writer's full sync");
                    let e = StoreError::Group(
                        "the store's writer cannot make its commits durable".to_string(),
                    );
                    finish(&stats, turn, started, Err(e));
                    continue;
                }
            }
        }
        let committed = commit(&mut conn, &turn.writes, &turn.works);
        finish(&stats, turn, started, committed);
    }
}

/// The connection's `synchronous` levels the writer uses.
#[derive(Clone, Copy, PartialEq, Eq)]
enum SyncLevel {
    Full,
    Normal,
}

impl SyncLevel {
    fn pragma(self) -> &'static str {
        match self {
            SyncLevel::Full => "FULL",
            SyncLevel::Normal => "NORMAL",
        }
    }
}

/// Answers a turn: the group's writes with their results and each run with its own, once
/// the transaction committed; everyone with the error when it did not.
fn finish(
    stats: &GroupStats,
    turn: Turn,
    started: std::time::Instant,
    committed: Result<Committed, StoreError>,
) {
    let (group, mut outcomes) = match committed {
        Ok((group, outcomes)) => (group, outcomes.into_iter()),
        Err(e) => {
            tracing::error!(error = %e, runs = turn.run_replies.len(), "store: the writer's transaction failed; nothing of it is stored");
            (Some(Err(e)), Vec::new().into_iter())
        }
    };
    for reply in turn.run_replies {
        let outcome = outcomes.next().unwrap_or_else(|| {
            Err(StoreError::Group(match &group {
                Some(Err(e)) => e.to_string(),
                _ => "the store's writer could not commit".to_string(),
            }))
        });
        let _ = reply.send(outcome);
    }
    if let Some(result) = group.filter(|_| !turn.writes.is_empty()) {
        stats
            .commit_seconds
            .observe(started.elapsed().as_secs_f64());
        answer(stats, turn.writes.len(), turn.replies, result);
    }
}

/// The turn's transaction: the group's writes, then each run, then one commit. A job that
/// fails is answered with its error and the turn is rolled back and done again without it
/// (savepoints would copy every page a job touches to SQLite's statement journal first, and
/// jobs fail rarely: a lost lease). `Err` when the transaction itself failed: nothing of the
/// turn is stored. The runs' outcomes are in order.
fn commit(
    conn: &mut Connection,
    writes: &[Write],
    works: &[Work],
) -> Result<Committed, StoreError> {
    let mut group_failed: Option<StoreError> = None;
    let mut failed: Vec<Option<StoreError>> = works.iter().map(|_| None).collect();
    // Each pass that fails leaves one job out: at most one pass per job, and one more.
    'pass: loop {
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let mut group = None;
        if !writes.is_empty() && group_failed.is_none() {
            match write_group(&tx, writes) {
                Ok(written) => group = Some(written),
                Err(e) => {
                    group_failed = Some(e);
                    drop(tx);
                    continue 'pass;
                }
            }
        }
        let mut values = Vec::with_capacity(works.len());
        for (work, failed) in works.iter().zip(failed.iter_mut()) {
            if failed.is_some() {
                values.push(None);
                continue;
            }
            match work(&tx) {
                Ok(value) => values.push(Some(value)),
                Err(e) => {
                    *failed = Some(e);
                    drop(tx);
                    continue 'pass;
                }
            }
        }
        // SQLite ends a transaction itself on some errors (a full disk, say): then nothing of
        // the turn may be answered as stored.
        if tx.is_autocommit() {
            return Err(StoreError::Group(
                "the store's writer lost its transaction".to_string(),
            ));
        }
        tx.commit()?;
        let group = match group_failed {
            Some(e) => Some(Err(e)),
            None => group.map(Ok),
        };
        let outcomes = values
            .into_iter()
            .zip(failed)
            .map(|(value, failed)| match (value, failed) {
                (Some(value), _) => Ok(value),
                (None, Some(e)) => Err(e),
                (None, None) => Err(StoreError::Group("a run was left out".to_string())),
            })
            .collect();
        return Ok((group, outcomes));
    }
}

/// Writes a group inside the turn's transaction; the results are in the order of `writes`.
fn write_group(
    tx: &Transaction<'_>,
    writes: &[Write],
) -> Result<Vec<Result<Written, StoreError>>, StoreError> {
    let now = now_ms();
    let mut results = Vec::with_capacity(writes.len());
    let mut insert_request = tx.prepare_cached(INSERT_REQUEST)?;
    let mut by_key = tx.prepare_cached(REQUEST_BY_KEY)?;
    for write in writes {
        // Ids in arrival order: they are time-ordered, so a lane reads the group in order.
        let id = new_id();
        results.push(match write {
            Write::Enqueue(r, lane) => {
                if insert(&mut insert_request, &id, r, lane.as_deref(), now)? == 1 {
                    Ok(Written::Enqueued(Enqueued::New(id)))
                } else {
                    // Not inserted: its dedup key is stored (earlier, or earlier in this group).
                    let stored: Option<String> = match &r.dedup_key {
                        Some(key) => by_key.query_row([key], |row| row.get(0)).optional()?,
                        None => None,
                    };
                    let stored = stored.ok_or_else(|| StoreError::Corrupt {
                        what: "requests",
                        detail: "a request was neither inserted nor found by its dedup key"
                            .to_string(),
                    })?;
                    Ok(Written::Enqueued(Enqueued::Duplicate(stored)))
                }
            }
            Write::Push(line) => Ok(Written::Pushed(insert_line(tx, &id, line, now)?)),
        });
    }
    Ok(results)
}

fn insert(
    stmt: &mut rusqlite::CachedStatement<'_>,
    id: &str,
    r: &NewRequest,
    lane: Option<&str>,
    now: i64,
) -> rusqlite::Result<usize> {
    stmt.execute(params![
        id,
        r.kind,
        r.origin.frontend,
        r.origin.room,
        r.origin.addressee,
        r.identity,
        r.payload.as_str(),
        r.dedup_key,
        now,
        r.after,
        lane,
        r.available_at(now),
    ])
}

/// Stores an outbox line on the writer's connection (inside its transaction); false when its
/// dedup key was already used. For the groups and for the lane's batch on this thread.
pub(crate) fn insert_line(
    conn: &Connection,
    id: &str,
    l: &Line,
    now: i64,
) -> rusqlite::Result<bool> {
    let mut stmt = conn.prepare_cached(INSERT_LINE)?;
    Ok(stmt.execute(params![
        id,
        l.origin.frontend,
        l.origin.room,
        l.origin.addressee,
        l.body,
        l.dedup_key,
        l.request_id,
        now,
    ])? == 1)
}
