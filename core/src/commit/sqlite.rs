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

use rusqlite::{Connection, OpenFlags, OptionalExtension, TransactionBehavior, params};
use tokio::sync::mpsc;

use super::{GroupStats, Line, MAX_GROUP, Reply, Write, Written, answer};
use crate::queue::{Enqueued, NewRequest};
use crate::store::{StoreError, WriteGate, new_id, now_ms};

const INSERT_REQUEST: &str = "INSERT INTO requests (id, kind, frontend, room, addressee, identity, \
     payload, dedup_key, state, attempts, available_at, created_at, updated_at, after_id, lane) \
     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, 'ready', 0, ?9, ?9, ?9, ?10, ?11) \
     ON CONFLICT (dedup_key) DO NOTHING";
const REQUEST_BY_KEY: &str = "SELECT id FROM requests WHERE dedup_key = ?1";
const INSERT_LINE: &str = "INSERT INTO outbox (id, frontend, room, addressee, body, dedup_key, \
     request_id, created_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8) \
     ON CONFLICT (dedup_key) DO NOTHING";

/// What the thread is given: a write for the next group, or a transaction of its own.
#[expect(
    clippy::large_enum_variant,
    reason = "writes are nearly every job: boxing them would cost an allocation each"
)]
pub(crate) enum Job {
    Write(Write, Reply),
    /// Opens, runs and ends its own transaction and answers its caller (see
    /// `GroupWriter::on_thread`); `relaxed` ones run with `synchronous = NORMAL`.
    Run {
        relaxed: bool,
        work: Work,
    },
}

pub(crate) type Work = Box<dyn FnOnce(&mut Connection) + Send>;

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

fn run(mut conn: Connection, gate: WriteGate, mut rx: mpsc::Receiver<Job>, stats: Arc<GroupStats>) {
    let mut group: Vec<(Write, Reply)> = Vec::with_capacity(MAX_GROUP);
    // A transaction of its own that arrived behind a group: it runs once the group committed.
    let mut next: Option<Job> = None;
    loop {
        let Some(job) = next.take().or_else(|| rx.blocking_recv()) else {
            return;
        };
        match job {
            Job::Run { relaxed, work } => {
                // This thread is not in the runtime, so it may block for its turn.
                let _turn = gate.blocking_lock();
                run_one(&mut conn, relaxed, work);
            }
            Job::Write(write, reply) => {
                group.push((write, reply));
                while group.len() < MAX_GROUP {
                    match rx.try_recv() {
                        Ok(Job::Write(write, reply)) => group.push((write, reply)),
                        Ok(run) => {
                            next = Some(run);
                            break;
                        }
                        Err(_) => break,
                    }
                }
                let (writes, replies): (Vec<Write>, Vec<Reply>) = group.drain(..).unzip();
                let started = std::time::Instant::now();
                let result = {
                    let _turn = gate.blocking_lock();
                    stats
                        .turn_wait_seconds
                        .observe(started.elapsed().as_secs_f64());
                    // Acknowledged writes: never on a relaxed connection (a relaxed run that
                    // could not restore the sync level is caught here).
                    if full_sync(&conn) {
                        commit(&mut conn, &writes)
                    } else {
                        Err(StoreError::Group(
                            "the store's writer cannot make its commits durable".to_string(),
                        ))
                    }
                };
                stats
                    .commit_seconds
                    .observe(started.elapsed().as_secs_f64());
                answer(&stats, writes.len(), replies, result);
            }
        }
    }
}

/// A transaction of its own; a relaxed one commits with `synchronous = NORMAL` (no wait for
/// the disk; durable across a crash of the process, and made durable by the next full sync of
/// the same log), then the connection is back to `FULL` for the next group.
fn run_one(conn: &mut Connection, relaxed: bool, work: Work) {
    let relaxed = relaxed
        && conn
            .pragma_update(None, "synchronous", "NORMAL")
            .inspect_err(|e| tracing::warn!(error = %e, "store: cannot relax the writer's sync; committing with a full sync"))
            .is_ok();
    work(conn);
    if relaxed {
        full_sync(conn);
    }
}

/// Puts the connection back to `synchronous = FULL`; false (logged) when that failed, and then
/// no group may commit on it.
fn full_sync(conn: &Connection) -> bool {
    conn.pragma_update(None, "synchronous", "FULL")
        .inspect_err(
            |e| tracing::error!(error = %e, "store: cannot restore the writer's full sync"),
        )
        .is_ok()
}

/// Writes a group in one transaction; the results are in the order of `writes`. Dropping the
/// transaction on an error rolls it back before the turn is given up.
fn commit(
    conn: &mut Connection,
    writes: &[Write],
) -> Result<Vec<Result<Written, StoreError>>, StoreError> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let now = now_ms();
    let mut results = Vec::with_capacity(writes.len());
    {
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
                        // Not inserted: its dedup key is stored (earlier, or earlier in this
                        // group).
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
                Write::Push(line) => Ok(Written::Pushed(insert_line(&tx, &id, line, now)?)),
            });
        }
    }
    tx.commit()?;
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
