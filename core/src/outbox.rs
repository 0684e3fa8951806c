//! The outbox: replies and notifications waiting for the front end that owns their room.
//!
//! Everything said to a person goes through here, so nothing is lost while a front end is
//! disconnected or the process restarts. Each message may carry a dedup key derived from
//! the effect it reports (`<request id>:reply`, `watch:<id>:final`), so redelivered work
//! never says the same thing twice. Front ends deliver in (created_at, id) order per room.

use std::sync::Arc;

use sqlx::{AnyConnection, Row};
use tokio::sync::Notify;

use crate::commit::Line;
use crate::origin::Origin;
use crate::store::{ID_CHUNK, Store, StoreError, new_id, now_ms, placeholders};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxMessage {
    pub id: String,
    pub origin: Origin,
    pub body: String,
    pub request_id: Option<String>,
    pub created_at: i64,
    /// Messages of one slot replace each other where the front end can edit.
    pub slot: Option<String>,
    /// When a front end began a send of it (see [`Outbox::mark_sending`]); front ends that send
    /// several messages as one use the value as the batch's tag ([`Outbox::mark_sending_batch`]).
    pub send_started_at: Option<i64>,
    /// Sends tried so far that were not acknowledged (see [`Outbox::note_attempts`]).
    pub attempts: u32,
}

/// A message a front end gave up on (see [`Outbox::park`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParkedMessage {
    pub id: String,
    pub origin: Origin,
    pub body: String,
    pub created_at: i64,
    pub parked_at: i64,
    pub attempts: u32,
    pub reason: String,
}

#[derive(Clone)]
pub struct Outbox {
    store: Store,
    notify: Arc<Notify>,
}

impl Outbox {
    pub fn new(store: Store) -> Self {
        Self {
            store,
            notify: Arc::new(Notify::new()),
        }
    }

    /// Wakes front ends in this process when a message was added.
    pub fn notified(&self) -> &Notify {
        &self.notify
    }

    /// Call after committing a transaction that pushed messages with `push_in`.
    pub fn wake(&self) {
        self.notify.notify_waiters();
    }

    pub async fn push(
        &self,
        origin: &Origin,
        body: &str,
        dedup_key: Option<&str>,
        request_id: Option<&str>,
    ) -> Result<bool, StoreError> {
        let added = self
            .store
            .writer()
            .push(Line {
                origin: origin.clone(),
                body: body.to_string(),
                dedup_key: dedup_key.map(str::to_string),
                request_id: request_id.map(str::to_string),
            })
            .await?;
        self.wake();
        Ok(added)
    }

    /// Undelivered messages for a front end that are not parked, oldest first.
    pub async fn pending(
        &self,
        frontend: &str,
        limit: i64,
    ) -> Result<Vec<OutboxMessage>, StoreError> {
        self.pending_except(frontend, &[], limit).await
    }

    /// Like [`Outbox::pending`], leaving out the rooms in `closed` (compared in lower case):
    /// messages for rooms that cannot take them now never fill the window of those that can.
    pub async fn pending_except(
        &self,
        frontend: &str,
        closed: &[String],
        limit: i64,
    ) -> Result<Vec<OutboxMessage>, StoreError> {
        let except = if closed.is_empty() {
            String::new()
        } else {
            format!(
                "AND LOWER(room) NOT IN ({}) ",
                placeholders(2, closed.len())
            )
        };
        let sql = format!(
            "SELECT id, frontend, room, addressee, body, request_id, created_at, slot, send_started_at, attempts \
             FROM outbox WHERE frontend = $1 AND delivered_at IS NULL AND parked_at IS NULL {except}\
             ORDER BY created_at, id LIMIT {limit}"
        );
        // The limit is in the text: SQLite prepares a statement again whenever a bound LIMIT
        // changes, and a front end asks with the same one every time.
        let mut q = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(frontend);
        for room in closed {
            q = q.bind(room.to_ascii_lowercase());
        }
        let rows = q.fetch_all(self.store.pool()).await?;
        messages_of(&rows)
    }

    /// The undelivered messages of one batch (see [`Outbox::mark_sending_batch`]), in order.
    pub async fn batch(
        &self,
        frontend: &str,
        room: &str,
        tag: i64,
    ) -> Result<Vec<OutboxMessage>, StoreError> {
        let rows = sqlx::query(
            "SELECT id, frontend, room, addressee, body, request_id, created_at, slot, send_started_at, attempts \
             FROM outbox WHERE frontend = $1 AND room = $2 AND send_started_at = $3 \
             AND delivered_at IS NULL AND parked_at IS NULL ORDER BY created_at, id",
        )
        .bind(frontend)
        .bind(room)
        .bind(tag)
        .fetch_all(self.store.pool())
        .await?;
        messages_of(&rows)
    }

    pub async fn mark_delivered(&self, id: &str) -> Result<(), StoreError> {
        self.mark_all_delivered(&[id]).await
    }

    /// Marks several messages delivered in one statement.
    pub async fn mark_all_delivered(&self, ids: &[&str]) -> Result<(), StoreError> {
        self.update_each("delivered_at = $1", Value::Millis(now_ms()), ids)
            .await
    }

    /// Records a failed send of each message (refused, or in flight when the acknowledgement
    /// never came or the connection died): one more attempt, and why. A message that keeps
    /// failing is known as such after a reconnect or a restart too.
    pub async fn record_failure(&self, ids: &[&str], reason: &str) -> Result<(), StoreError> {
        self.update_each(
            "attempts = attempts + 1, last_error = $1",
            Value::Text(reason),
            ids,
        )
        .await
    }

    /// `UPDATE outbox SET <set> WHERE id IN (ids)`, `$1` in `set` bound to `value`, a statement
    /// per [`ID_CHUNK`] ids, all in one transaction.
    async fn update_each(
        &self,
        set: &str,
        value: Value<'_>,
        ids: &[&str],
    ) -> Result<(), StoreError> {
        if ids.is_empty() {
            return Ok(());
        }
        // One transaction, however many statements: one commit for a whole round. Relaxed:
        // a mark lost in a power failure means the line is sent again, as after a crash
        // between the send and the mark. On SQLite on the writer's own connection, one
        // prepared statement run for each id.
        let writer = self.store.writer();
        if writer.has_thread() {
            let sql = format!(
                "UPDATE outbox SET {} WHERE id = ?2",
                set.replace("$1", "?1")
            );
            let value = match value {
                Value::Millis(ms) => rusqlite::types::Value::Integer(ms),
                Value::Text(text) => rusqlite::types::Value::Text(text.to_string()),
            };
            let ids: Vec<String> = ids.iter().map(|id| id.to_string()).collect();
            if let Some(done) = writer
                .on_thread(true, move |tx| {
                    let mut update = tx.prepare_cached(&sql)?;
                    for id in &ids {
                        update.execute(rusqlite::params![value, id])?;
                    }
                    Ok(())
                })
                .await
            {
                return done;
            }
        }
        let mut tx = self.store.begin_relaxed().await?;
        for chunk in ids.chunks(ID_CHUNK) {
            let sql = format!(
                "UPDATE outbox SET {set} WHERE id IN ({})",
                placeholders(2, chunk.len())
            );
            let q = sqlx::query(sqlx::AssertSqlSafe(sql));
            let mut q = match value {
                Value::Millis(ms) => q.bind(ms),
                Value::Text(text) => q.bind(text),
            };
            for id in chunk {
                q = q.bind(*id);
            }
            q.execute(&mut *tx).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Gives up on a message: it stays in the store with `reason`, but is no longer pending,
    /// so the messages behind it go on. `shepherd outbox parked` lists parked messages.
    pub async fn park(&self, id: &str, reason: &str) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE outbox SET parked_at = $1, \
             last_error = CASE WHEN last_error IS NULL THEN $2 ELSE $2 || ': ' || last_error END \
             WHERE id = $3 AND delivered_at IS NULL",
        )
        .bind(now_ms())
        .bind(reason)
        .bind(id)
        .execute(self.store.pool())
        .await?;
        Ok(())
    }

    /// Parked messages, newest first.
    pub async fn parked(&self, limit: i64) -> Result<Vec<ParkedMessage>, StoreError> {
        let rows = sqlx::query(
            "SELECT id, frontend, room, addressee, body, created_at, parked_at, attempts, last_error \
             FROM outbox WHERE parked_at IS NOT NULL ORDER BY parked_at DESC, id LIMIT $1",
        )
        .bind(limit)
        .fetch_all(self.store.pool())
        .await?;
        rows.iter()
            .map(|row| {
                Ok(ParkedMessage {
                    id: row.try_get("id")?,
                    origin: origin_of(row)?,
                    body: row.try_get("body")?,
                    created_at: row.try_get("created_at")?,
                    parked_at: row.try_get("parked_at")?,
                    attempts: attempts_of(row)?,
                    reason: row
                        .try_get::<Option<String>, _>("last_error")?
                        .unwrap_or_default(),
                })
            })
            .collect::<Result<_, sqlx::Error>>()
            .map_err(StoreError::from)
    }

    /// Records that a non-idempotent send (a GitLab note create) is about to start, so a
    /// redelivery after a crash looks for the message's marker before sending again.
    pub async fn mark_sending(&self, id: &str) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE outbox SET send_started_at = $1 WHERE id = $2 AND send_started_at IS NULL",
        )
        .bind(now_ms())
        .bind(id)
        .execute(self.store.pool())
        .await?;
        Ok(())
    }

    /// Marks messages about to be sent together as one network message, with `tag` (unique to
    /// this batch) as their `send_started_at`: a batch is pinned from its first send on, so a send
    /// tried again — after an ambiguous answer, or by a restarted process — is the same batch
    /// under the same transaction id, never a different mix of messages. Messages already marked
    /// keep their tag.
    pub async fn mark_sending_batch(&self, ids: &[&str], tag: i64) -> Result<(), StoreError> {
        for chunk in ids.chunks(ID_CHUNK) {
            let sql = format!(
                "UPDATE outbox SET send_started_at = $1 WHERE send_started_at IS NULL AND id IN ({})",
                placeholders(2, chunk.len())
            );
            let mut q = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(tag);
            for id in chunk {
                q = q.bind(*id);
            }
            q.execute(self.store.pool()).await?;
        }
        Ok(())
    }

    /// What a slot was delivered as (a GitLab note id), if it was.
    pub async fn slot_target(&self, slot: &str) -> Result<Option<String>, StoreError> {
        let id = sqlx::query_scalar("SELECT external_id FROM outbox_slots WHERE slot = $1")
            .bind(slot)
            .fetch_optional(self.store.pool())
            .await?;
        Ok(id)
    }

    /// Marks a slot message delivered and remembers what the slot was delivered as, together.
    pub async fn mark_slot_delivered(
        &self,
        message: &OutboxMessage,
        slot: &str,
        external_id: &str,
    ) -> Result<(), StoreError> {
        let now = now_ms();
        let mut tx = self.store.begin().await?;
        sqlx::query(
            "INSERT INTO outbox_slots (slot, frontend, room, external_id, created_at, updated_at) \
             VALUES ($1, $2, $3, $4, $5, $5) \
             ON CONFLICT (slot) DO UPDATE SET external_id = $4, updated_at = $5",
        )
        .bind(slot)
        .bind(&message.origin.frontend)
        .bind(&message.origin.room)
        .bind(external_id)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        sqlx::query("UPDATE outbox SET delivered_at = $1 WHERE id = $2")
            .bind(now)
            .bind(&message.id)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Undelivered messages by front end (for the `outbox_pending` gauge).
    pub async fn pending_by_frontend(&self) -> Result<Vec<(String, i64)>, StoreError> {
        let rows = sqlx::query(
            "SELECT frontend, COUNT(*) AS n FROM outbox \
             WHERE delivered_at IS NULL AND parked_at IS NULL GROUP BY frontend",
        )
        .fetch_all(self.store.pool())
        .await?;
        rows.iter()
            .map(|r| Ok((r.try_get("frontend")?, r.try_get("n")?)))
            .collect::<Result<_, sqlx::Error>>()
            .map_err(StoreError::from)
    }

    pub async fn pending_count(&self, frontend: &str) -> Result<i64, StoreError> {
        let row = sqlx::query(
            "SELECT COUNT(*) AS n FROM outbox \
             WHERE frontend = $1 AND delivered_at IS NULL AND parked_at IS NULL",
        )
        .bind(frontend)
        .fetch_one(self.store.pool())
        .await?;
        Ok(row.try_get("n")?)
    }
}

/// A value bound to `$1` of a bulk update.
#[derive(Clone, Copy)]
enum Value<'a> {
    Millis(i64),
    Text(&'a str),
}

fn messages_of(rows: &[sqlx::any::AnyRow]) -> Result<Vec<OutboxMessage>, StoreError> {
    rows.iter()
        .map(|row| {
            Ok(OutboxMessage {
                id: row.try_get("id")?,
                origin: origin_of(row)?,
                body: row.try_get("body")?,
                request_id: row.try_get("request_id")?,
                created_at: row.try_get("created_at")?,
                slot: row.try_get("slot")?,
                send_started_at: row.try_get("send_started_at")?,
                attempts: attempts_of(row)?,
            })
        })
        .collect::<Result<_, sqlx::Error>>()
        .map_err(StoreError::from)
}

/// A row's room: its `frontend`, `room` and `addressee` columns.
fn origin_of(row: &sqlx::any::AnyRow) -> Result<Origin, sqlx::Error> {
    Ok(Origin::from_columns(
        row.try_get("frontend")?,
        row.try_get("room")?,
        row.try_get("addressee")?,
    ))
}

fn attempts_of(row: &sqlx::any::AnyRow) -> Result<u32, sqlx::Error> {
    Ok(u32::try_from(row.try_get::<i64, _>("attempts")?).unwrap_or(u32::MAX))
}

/// Adds a message of a slot (see [`OutboxMessage::slot`]) inside the caller's transaction.
pub async fn push_slot_in(
    conn: &mut AnyConnection,
    origin: &Origin,
    body: &str,
    slot: &str,
    dedup_key: &str,
    request_id: Option<&str>,
) -> Result<bool, StoreError> {
    let r = sqlx::query(
        "INSERT INTO outbox (id, frontend, room, addressee, body, dedup_key, request_id, created_at, slot) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) ON CONFLICT (dedup_key) DO NOTHING",
    )
    .bind(new_id())
    .bind(&origin.frontend)
    .bind(&origin.room)
    .bind(origin.addressee.as_deref())
    .bind(body)
    .bind(dedup_key)
    .bind(request_id)
    .bind(now_ms())
    .bind(slot)
    .execute(&mut *conn)
    .await?;
    Ok(r.rows_affected() == 1)
}

/// Pushes `lines` inside `conn`'s transaction with multi-row inserts, in order; for each line,
/// whether it was stored (false: its dedup key was used before). Call [`Outbox::wake`] after the
/// commit.
pub async fn push_all_in(
    conn: &mut AnyConnection,
    lines: &[Line],
) -> Result<Vec<bool>, StoreError> {
    let ids: Vec<String> = lines.iter().map(|_| new_id()).collect();
    let rows: Vec<(&str, &Line)> = ids.iter().map(String::as_str).zip(lines).collect();
    let stored: std::collections::HashSet<String> = insert_lines(conn, &rows, now_ms())
        .await?
        .into_iter()
        .collect();
    Ok(ids.iter().map(|id| stored.contains(id)).collect())
}

/// The multi-row INSERT of outbox lines under the given ids (time-ordered, so delivery keeps
/// their order); the ids actually inserted (a used dedup key inserts nothing).
pub(crate) async fn insert_lines(
    conn: &mut AnyConnection,
    rows: &[(&str, &Line)],
    now: i64,
) -> Result<Vec<String>, StoreError> {
    let mut inserted = Vec::with_capacity(rows.len());
    for chunk in rows.chunks(crate::commit::ROWS_PER_STATEMENT) {
        let values = (0..chunk.len())
            .map(|r| {
                let b = r * 8;
                format!(
                    "(${}, ${}, ${}, ${}, ${}, ${}, ${}, ${})",
                    b + 1,
                    b + 2,
                    b + 3,
                    b + 4,
                    b + 5,
                    b + 6,
                    b + 7,
                    b + 8
                )
            })
            .collect::<Vec<_>>()
            .join(", ");
        let sql = format!(
            "INSERT INTO outbox (id, frontend, room, addressee, body, dedup_key, request_id, created_at) \
             VALUES {values} ON CONFLICT (dedup_key) DO NOTHING RETURNING id"
        );
        let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
        for (id, l) in chunk {
            q = q
                .bind(id.to_string())
                .bind(l.origin.frontend.clone())
                .bind(l.origin.room.clone())
                .bind(l.origin.addressee.clone())
                .bind(l.body.clone())
                .bind(l.dedup_key.clone())
                .bind(l.request_id.clone())
                .bind(now);
        }
        for row in q.fetch_all(&mut *conn).await? {
            inserted.push(row.try_get("id")?);
        }
    }
    Ok(inserted)
}

/// Adds a message inside the caller's transaction; false when its dedup key was already used.
pub async fn push_in(
    conn: &mut AnyConnection,
    origin: &Origin,
    body: &str,
    dedup_key: Option<&str>,
    request_id: Option<&str>,
) -> Result<bool, StoreError> {
    let r = sqlx::query(
        "INSERT INTO outbox (id, frontend, room, addressee, body, dedup_key, request_id, created_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT (dedup_key) DO NOTHING",
    )
    .bind(new_id())
    .bind(&origin.frontend)
    .bind(&origin.room)
    .bind(origin.addressee.as_deref())
    .bind(body)
    .bind(dedup_key)
    .bind(request_id)
    .bind(now_ms())
    .execute(&mut *conn)
    .await?;
    Ok(r.rows_affected() == 1)
}
