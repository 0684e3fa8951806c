//! The durable work queue, kept in the store.
//!
//! A request is written here before anyone acknowledges it. Workers take it under a lease
//! (at-least-once: a worker that dies loses its lease and the item comes back when the lease
//! expires). A failed attempt puts the item at the back of the queue with a growing, jittered
//! delay; after `max_attempts` it is parked as `dead` — kept, counted and listable, never
//! dropped. Leasing is a compare-and-set on `attempts`, which works the same on SQLite and
//! PostgreSQL and lets several processes share one queue.

use std::sync::Arc;
use std::time::Duration;

use rand::Rng;
use sqlx::{AnyConnection, Row};
use tokio::sync::Notify;

use crate::metrics::Metrics;
use crate::origin::Origin;
use crate::store::{ID_CHUNK, Store, StoreError, now_ms, placeholders};

#[derive(Debug, Clone)]
pub struct QueueSettings {
    pub max_attempts: u32,
    pub lease: Duration,
    pub retry_base: Duration,
    pub retry_max: Duration,
    /// Kinds that run in a lane: one at a time, strictly in arrival order, leased only by
    /// [`Queue::lease_lane`] (alert notifications: the lines must reach the rooms in the order
    /// the alerts came). [`Queue::lease`] never hands them out.
    pub lanes: Vec<String>,
}

/// A request's payload: JSON text, kept as it came and parsed only by whoever reads it (an
/// Alertmanager storm of 10,000 alerts is 3.5 MiB of text, but tens of MiB as a JSON tree).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Payload(String);

impl Payload {
    /// JSON text, checked to be one JSON value (without building a tree of it).
    pub fn from_json(text: String) -> Result<Payload, serde_json::Error> {
        serde_json::from_str::<serde::de::IgnoredAny>(&text)?;
        Ok(Payload(text))
    }

    /// Text already known to be JSON (it was just decoded), not checked again.
    pub(crate) fn decoded(text: String) -> Payload {
        Payload(text)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Reads the payload as a `T`.
    pub fn decode<'a, T: serde::Deserialize<'a>>(&'a self) -> Result<T, serde_json::Error> {
        serde_json::from_str(&self.0)
    }
}

impl From<serde_json::Value> for Payload {
    fn from(value: serde_json::Value) -> Payload {
        Payload(value.to_string())
    }
}

#[derive(Debug, Clone)]
pub struct NewRequest {
    pub kind: String,
    pub origin: Origin,
    pub identity: String,
    pub payload: Payload,
    /// Delivery id of the event that caused it; a second enqueue with the same key is a no-op.
    pub dedup_key: Option<String>,
    /// Not leased before this request is done or dead: the commands of one message (a GitLab
    /// comment) run in the order they were written.
    pub after: Option<String>,
    /// Not leased before this time (Unix ms): work that is due later, such as the herder's
    /// retry of a job after its matcher's delay. `None` (or a time already past): at once.
    pub not_before: Option<i64>,
}

impl NewRequest {
    /// When the request is first due, stored at `now`.
    pub(crate) fn available_at(&self, now: i64) -> i64 {
        self.not_before.map_or(now, |t| t.max(now))
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Enqueued {
    New(String),
    Duplicate(String),
}

impl Enqueued {
    pub fn id(&self) -> &str {
        match self {
            Enqueued::New(id) | Enqueued::Duplicate(id) => id,
        }
    }
}

/// An item taken from the queue under a lease.
#[derive(Debug, Clone)]
pub struct Leased {
    pub id: String,
    pub kind: String,
    pub origin: Origin,
    pub identity: String,
    pub payload: Payload,
    /// This attempt's number, from 1.
    pub attempt: u32,
    pub created_at: i64,
    pub owner: String,
}

/// A leased lane item to finish on the writer's thread ([`Queue::finish_lane_on_thread`]).
#[derive(Debug, Clone)]
pub struct LaneFinish {
    pub id: String,
    pub owner: String,
    pub attempt: u32,
    /// Its dedup window key, and the lines to store when it is shown.
    pub key: String,
    pub lines: Vec<crate::commit::Line>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum FailOutcome {
    /// Back in the queue, available again at this time (Unix ms).
    Retry { available_at: i64 },
    /// Parked after its last attempt.
    Dead,
    /// The lease had already passed to someone else; nothing changed.
    LeaseLost,
}

#[derive(Debug, Clone, PartialEq)]
pub struct DeadItem {
    pub id: String,
    pub kind: String,
    pub origin: Origin,
    pub identity: String,
    pub attempts: u32,
    pub last_error: Option<String>,
    pub created_at: i64,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct QueueCounts {
    pub ready: i64,
    pub leased: i64,
    pub dead: i64,
}

#[derive(Clone)]
pub struct Queue {
    store: Store,
    settings: QueueSettings,
    metrics: Arc<Metrics>,
    /// Woken by new work outside the lanes (one idle worker per item), and by new lane items.
    notify: Arc<Notify>,
    lane_notify: Arc<Notify>,
}

impl Queue {
    pub fn new(store: Store, settings: QueueSettings, metrics: Arc<Metrics>) -> Self {
        Self {
            store,
            settings,
            metrics,
            notify: Arc::new(Notify::new()),
            lane_notify: Arc::new(Notify::new()),
        }
    }

    pub fn settings(&self) -> &QueueSettings {
        &self.settings
    }

    /// Wakes when something is enqueued in this process (other processes are found by polling):
    /// for a lane worker (`lane` is its kind) when a lane item came, else when other work came.
    /// Lane items never wake the general workers, which could not take them.
    pub fn notified(&self, lane: Option<&str>) -> &Notify {
        match lane {
            Some(_) => &self.lane_notify,
            None => &self.notify,
        }
    }

    /// Stores a request durably; returns only after the commit, which it shares with the
    /// requests that arrived meanwhile (`commit`).
    pub async fn enqueue(&self, req: NewRequest) -> Result<Enqueued, StoreError> {
        let lane = self
            .settings
            .lanes
            .contains(&req.kind)
            .then(|| req.kind.clone());
        let in_lane = lane.is_some();
        let out = self.store.writer().enqueue(req, lane).await?;
        if matches!(out, Enqueued::New(_)) {
            if in_lane {
                // One worker per lane: wake them all (few), each looks at its own lane.
                self.lane_notify.notify_waiters();
                self.lane_notify.notify_one();
            } else {
                // One idle worker per new item (or a permit for the next to look).
                self.notify.notify_one();
            }
        }
        Ok(out)
    }

    /// Takes the oldest available item under a lease, or None when nothing is due. Lane items
    /// are never handed out here (see [`Queue::lease_lane`]).
    pub async fn lease(&self, owner: &str) -> Result<Option<Leased>, StoreError> {
        if let Some(front) = self.lease_general_on_thread(owner).await {
            match front? {
                GeneralFront::Took(item) => return Ok(Some(*item)),
                GeneralFront::Nothing => return Ok(None),
                // Its worker died: the compare-and-set below takes it, or parks it when that
                // was its last attempt.
                GeneralFront::Expired => {}
            }
        }
        let pool = self.store.pool();
        let [expired_sql, ready_sql] = general_front_sql("r.id, r.attempts, r.state");
        // A lost compare-and-set means another worker took that item: look again.
        for _ in 0..16 {
            let now = now_ms();
            let mut row = None;
            for sql in [&expired_sql, &ready_sql] {
                row = sqlx::query(sqlx::AssertSqlSafe(sql.clone()))
                    .bind(now)
                    .fetch_optional(pool)
                    .await?;
                if row.is_some() {
                    break;
                }
            }
            let Some(row) = row else {
                return Ok(None);
            };
            let id: String = row.try_get("id")?;
            let attempts: i64 = row.try_get("attempts")?;
            let state: String = row.try_get("state")?;
            if let Some(item) = self
                .take(owner, &id, attempts, &state, now, self.settings.lease)
                .await?
            {
                return Ok(Some(item));
            }
        }
        Ok(None)
    }

    /// On SQLite with the writer's own connection: the oldest due ready request outside the
    /// lanes, read and leased in one relaxed run there (one handoff instead of four statements
    /// on sqlx's connection thread, and no commit of its own: it joins the writer's turn).
    /// Nothing else writes during a run, so no compare-and-set is needed. An expired lease
    /// (its worker died) is left to [`Queue::lease`]'s general path; `None` without the thread.
    async fn lease_general_on_thread(
        &self,
        owner: &str,
    ) -> Option<Result<GeneralFront, StoreError>> {
        let owner = owner.to_string();
        let lease = duration_ms(self.settings.lease);
        // Relaxed: a lease lost in a power failure only means the item is leased again.
        self.store
            .writer()
            .on_thread(true, move |tx| {
                let now = now_ms();
                let [expired_sql, ready_sql] = general_front_sql(
                    "r.id, r.kind, r.frontend, r.room, r.addressee, r.identity, r.payload, \
                     r.attempts, r.created_at",
                );
                if tx
                    .prepare_cached(&expired_sql)?
                    .exists(rusqlite::params![now])?
                {
                    return Ok(GeneralFront::Expired);
                }
                let mut ready = tx.prepare_cached(&ready_sql)?;
                let mut rows = ready.query(rusqlite::params![now])?;
                let Some(row) = rows.next()? else {
                    return Ok(GeneralFront::Nothing);
                };
                let item = leased_on_thread(row, &owner)?;
                drop(rows);
                let mut take = tx.prepare_cached(
                    "UPDATE requests SET state = 'leased', lease_owner = ?1, lease_until = ?2, \
                     attempts = attempts + 1, updated_at = ?3 WHERE id = ?4 AND state = 'ready'",
                )?;
                if take.execute(rusqlite::params![owner, now + lease, now, item.id])? != 1 {
                    return Ok(GeneralFront::Nothing);
                }
                Ok(GeneralFront::Took(Box::new(item)))
            })
            .await
    }

    /// The oldest unfinished request of a lane `kind`, when it is due; `None` while it waits
    /// (its retry delay, or another worker's lease): nothing behind it overtakes it.
    pub async fn lease_lane(&self, owner: &str, kind: &str) -> Result<Option<Leased>, StoreError> {
        Ok(self
            .lease_lane_batch(owner, kind, 1)
            .await?
            .into_iter()
            .next())
    }

    /// Up to `max` of a lane's oldest unfinished requests, in arrival order, leased together in
    /// one statement: the due ones from the front of the lane, stopping at the first that is not
    /// due (its retry delay, or another worker's lease), so nothing overtakes it. An expired
    /// lease at the front (its worker died) is taken alone. Lane leases are short
    /// ([`LANE_LEASE`] at most): a lane waits for a dead worker's item seconds, not minutes.
    pub async fn lease_lane_batch(
        &self,
        owner: &str,
        kind: &str,
        max: usize,
    ) -> Result<Vec<Leased>, StoreError> {
        let pool = self.store.pool();
        let lease = self.settings.lease.min(LANE_LEASE);
        let limit = i64::try_from(max.max(1)).unwrap_or(i64::MAX);
        if let Some(leased) = self.lease_front_on_thread(owner, kind, limit, lease).await
            && let Some(items) = leased?
        {
            return Ok(items);
        }
        // Without the thread, or an expired lease at the front (taken below, alone):
        for _ in 0..16 {
            let now = now_ms();
            // The limit is written into the statement: SQLite prepares a statement again
            // whenever a bound LIMIT changes, and it is the same for every batch.
            let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
                "SELECT id, kind, frontend, room, addressee, identity, payload, attempts, state, \
                 available_at, lease_until, created_at FROM requests \
                 WHERE kind = $1 AND state IN ('ready', 'leased') ORDER BY created_at, id \
                 LIMIT {limit}"
            )))
            .bind(kind)
            .fetch_all(pool)
            .await?;
            let Some(first) = rows.first() else {
                return Ok(Vec::new());
            };
            let state: String = first.try_get("state")?;
            if state == "leased" {
                let lease_until: Option<i64> = first.try_get("lease_until")?;
                if lease_until.is_none_or(|t| t > now) {
                    return Ok(Vec::new());
                }
                let id: String = first.try_get("id")?;
                let attempts: i64 = first.try_get("attempts")?;
                match self.take(owner, &id, attempts, &state, now, lease).await? {
                    Some(item) => return Ok(vec![item]),
                    None => continue,
                }
            }
            // The due ready items at the front, in order.
            let mut due = Vec::new();
            for row in &rows {
                let state: String = row.try_get("state")?;
                let available_at: i64 = row.try_get("available_at")?;
                if state != "ready" || available_at > now {
                    break;
                }
                due.push(row);
            }
            if due.is_empty() {
                return Ok(Vec::new());
            }
            let lease_until = now + duration_ms(lease);
            // Relaxed: a lease lost in a power failure only means the items are leased again.
            let mut tx = self.store.begin_relaxed().await?;
            let mut taken: std::collections::HashMap<String, i64> = Default::default();
            for chunk in due.chunks(ID_CHUNK) {
                let sql = format!(
                    "UPDATE requests SET state = 'leased', lease_owner = $1, lease_until = $2, \
                     attempts = attempts + 1, updated_at = $3 WHERE state = 'ready' AND id IN ({}) \
                     RETURNING id, attempts",
                    placeholders(4, chunk.len())
                );
                let mut q = sqlx::query(sqlx::AssertSqlSafe(sql))
                    .bind(owner)
                    .bind(lease_until)
                    .bind(now);
                for row in chunk {
                    q = q.bind(row.try_get::<String, _>("id")?);
                }
                for row in q.fetch_all(&mut *tx).await? {
                    taken.insert(
                        row.try_get::<String, _>("id")?,
                        row.try_get::<i64, _>("attempts")?,
                    );
                }
            }
            if taken.len() != due.len() {
                // Another worker took some of them first: look again.
                tx.rollback().await?;
                continue;
            }
            tx.commit().await?;
            return due
                .into_iter()
                .map(|row| {
                    let mut item = leased_of(row, owner)?;
                    item.attempt = taken
                        .get(&item.id)
                        .and_then(|a| u32::try_from(*a).ok())
                        .unwrap_or(u32::MAX);
                    Ok(item)
                })
                .collect();
        }
        Ok(Vec::new())
    }

    /// On SQLite with the writer's own connection: the due ready requests at the front of the
    /// lane, read and leased in one transaction on that connection (one handoff, a warm page
    /// cache; nothing else writes meanwhile, so no compare-and-set is needed). `Some(None)`
    /// when the front is an expired lease, which the general path takes; `None` without the
    /// thread.
    async fn lease_front_on_thread(
        &self,
        owner: &str,
        kind: &str,
        limit: i64,
        lease: Duration,
    ) -> Option<Result<Option<Vec<Leased>>, StoreError>> {
        let writer = self.store.writer();
        let (owner, kind) = (owner.to_string(), kind.to_string());
        let lease = duration_ms(lease);
        // Relaxed: a lease lost in a power failure only means the items are leased again.
        writer
            .on_thread(true, move |tx| {
                let now = now_ms();
                // The limit in the text, not bound (a bound LIMIT is prepared again each
                // time it is bound: SQLite plans with its value).
                let mut front = tx.prepare_cached(&format!(
                    "SELECT id, kind, frontend, room, addressee, identity, payload, attempts, \
                     created_at, state, available_at, lease_until FROM requests \
                     WHERE kind = ?1 AND state IN ('ready', 'leased') \
                     ORDER BY created_at, id LIMIT {limit}"
                ))?;
                let mut rows = front.query(rusqlite::params![kind])?;
                let mut due = Vec::new();
                while let Some(row) = rows.next()? {
                    let state: String = row.get(9)?;
                    if due.is_empty() && state == "leased" {
                        let lease_until: Option<i64> = row.get(11)?;
                        let held = lease_until.is_none_or(|t| t > now);
                        return Ok(held.then(Vec::new));
                    }
                    let available_at: i64 = row.get(10)?;
                    if state != "ready" || available_at > now {
                        break;
                    }
                    due.push(leased_on_thread(row, &owner)?);
                }
                drop(rows);
                let mut take = tx.prepare_cached(
                    "UPDATE requests SET state = 'leased', lease_owner = ?1, lease_until = ?2, \
                     attempts = attempts + 1, updated_at = ?3 WHERE id = ?4 AND state = 'ready'",
                )?;
                for item in &due {
                    if take.execute(rusqlite::params![owner, now + lease, now, item.id])? != 1 {
                        return Err(StoreError::Corrupt {
                            what: "requests",
                            detail: format!("{} changed while its lane lease was taken", item.id),
                        });
                    }
                }
                Ok(Some(due))
            })
            .await
    }

    /// On SQLite with the writer's own connection: finishes a lane batch of alert
    /// notifications in one transaction there — each distinct dedup key judged in the window
    /// (`alerts::first_showings_in`'s statement), the lines of each first showing stored
    /// (the first of a key in the batch; a later one is a repeat), every item done. Per item,
    /// in order, whether it was shown. `Err(StoreError::Conflict)` when a lease was lost
    /// meanwhile (nothing written; the batch is redelivered); `None` without the thread.
    pub async fn finish_lane_on_thread(
        &self,
        batch: Vec<LaneFinish>,
        window_ms: i64,
    ) -> Option<Result<Vec<bool>, StoreError>> {
        // Relaxed: the notifications were committed before their 200; if a power failure
        // loses this, they are relayed again.
        self.store
            .writer()
            .on_thread(true, move |tx| {
                let now = now_ms();
                let mut judge = tx.prepare_cached(
                    "INSERT INTO alert_notices (key, shown_at) VALUES (?1, ?2) \
                     ON CONFLICT (key) DO UPDATE SET shown_at = ?2 \
                     WHERE alert_notices.shown_at < ?3 RETURNING key",
                )?;
                let mut judged = std::collections::HashSet::new();
                let mut first = std::collections::HashSet::new();
                for b in &batch {
                    if judged.insert(b.key.as_str())
                        && judge
                            .query(rusqlite::params![b.key, now, now - window_ms])?
                            .next()?
                            .is_some()
                    {
                        first.insert(b.key.as_str());
                    }
                }
                let mut done = tx.prepare_cached(
                    "UPDATE requests SET state = 'done', lease_owner = NULL, lease_until = NULL, \
                     updated_at = ?1 WHERE id = ?2 AND lease_owner = ?3 AND attempts = ?4 \
                     AND state = 'leased'",
                )?;
                let mut shown = Vec::with_capacity(batch.len());
                for b in &batch {
                    // Taken out: the same content again later in this batch is a repeat.
                    let is_first = first.remove(b.key.as_str());
                    if is_first {
                        for l in &b.lines {
                            crate::commit::insert_line(tx, &crate::store::new_id(), l, now)?;
                        }
                    }
                    if done.execute(rusqlite::params![now, b.id, b.owner, i64::from(b.attempt)])?
                        != 1
                    {
                        return Err(StoreError::Conflict(format!(
                            "the lane lease of {} was lost",
                            b.id
                        )));
                    }
                    shown.push(is_first);
                }
                Ok(shown)
            })
            .await
    }

    /// Takes one candidate with a compare-and-set; `None` when another worker was first (or
    /// the candidate's last attempt had died with its worker: it is parked instead).
    async fn take(
        &self,
        owner: &str,
        id: &str,
        attempts: i64,
        state: &str,
        now: i64,
        lease: Duration,
    ) -> Result<Option<Leased>, StoreError> {
        let pool = self.store.pool();
        if state == "leased" && attempts >= i64::from(self.settings.max_attempts) {
            // Its last attempt died with its worker: park it rather than run it again.
            let done = sqlx::query(
                "UPDATE requests SET state = 'dead', lease_owner = NULL, lease_until = NULL, \
                 last_error = COALESCE(last_error, 'lease expired on the last attempt'), updated_at = $1 \
                 WHERE id = $2 AND attempts = $3 AND state = 'leased'",
            )
            .bind(now)
            .bind(id)
            .bind(attempts)
            .execute(pool)
            .await?;
            if done.rows_affected() == 1 {
                self.metrics
                    .queue_dead_total
                    .with_label_values(&["expired"])
                    .inc();
            }
            return Ok(None);
        }

        let lease_until = now + duration_ms(lease);
        let taken = sqlx::query(
            "UPDATE requests SET state = 'leased', lease_owner = $1, lease_until = $2, \
             attempts = attempts + 1, updated_at = $3 \
             WHERE id = $4 AND attempts = $5 AND state = $6",
        )
        .bind(owner)
        .bind(lease_until)
        .bind(now)
        .bind(id)
        .bind(attempts)
        .bind(state)
        .execute(pool)
        .await?;
        if taken.rows_affected() != 1 {
            return Ok(None);
        }
        let row = sqlx::query(
            "SELECT id, kind, frontend, room, addressee, identity, payload, attempts, created_at \
             FROM requests WHERE id = $1",
        )
        .bind(id)
        .fetch_one(pool)
        .await?;
        leased_of(&row, owner).map(Some)
    }

    /// Extends a lease still held by `owner`; false when it was lost.
    pub async fn renew(&self, item: &Leased) -> Result<bool, StoreError> {
        let now = now_ms();
        let lease = if self.settings.lanes.contains(&item.kind) {
            self.settings.lease.min(LANE_LEASE)
        } else {
            self.settings.lease
        };
        let r = sqlx::query(
            "UPDATE requests SET lease_until = $1, updated_at = $2 \
             WHERE id = $3 AND lease_owner = $4 AND state = 'leased' AND attempts = $5",
        )
        .bind(now + duration_ms(lease))
        .bind(now)
        .bind(&item.id)
        .bind(&item.owner)
        .bind(i64::from(item.attempt))
        .execute(self.store.pool())
        .await?;
        Ok(r.rows_affected() == 1)
    }

    /// Marks an item done inside the caller's transaction, so its replies and records
    /// commit together with it. False (and the caller should roll back) when the lease was lost.
    pub async fn complete_in(
        &self,
        conn: &mut AnyConnection,
        item: &Leased,
    ) -> Result<bool, StoreError> {
        let r = sqlx::query(
            "UPDATE requests SET state = 'done', lease_owner = NULL, lease_until = NULL, updated_at = $1 \
             WHERE id = $2 AND lease_owner = $3 AND state = 'leased' AND attempts = $4",
        )
        .bind(now_ms())
        .bind(&item.id)
        .bind(&item.owner)
        .bind(i64::from(item.attempt))
        .execute(&mut *conn)
        .await?;
        Ok(r.rows_affected() == 1)
    }

    /// Marks an item done on its own, when nothing else needs to commit with it (a GitLab event
    /// whose effects, if any, were stored by then). On SQLite with the writer's own
    /// connection this is a relaxed run there: if a power failure loses it, the item runs
    /// again and its effects' own dedup keys keep them from happening twice. False when the
    /// lease was lost.
    pub async fn complete(&self, item: &Leased) -> Result<bool, StoreError> {
        let (id, owner, attempt) = (item.id.clone(), item.owner.clone(), i64::from(item.attempt));
        let on_thread = self
            .store
            .writer()
            .on_thread(true, move |tx| {
                let mut done = tx.prepare_cached(
                    "UPDATE requests SET state = 'done', lease_owner = NULL, lease_until = NULL, \
                     updated_at = ?1 WHERE id = ?2 AND lease_owner = ?3 AND attempts = ?4 \
                     AND state = 'leased'",
                )?;
                Ok(done.execute(rusqlite::params![now_ms(), id, owner, attempt])? == 1)
            })
            .await;
        if let Some(done) = on_thread {
            return done;
        }
        let mut tx = self.store.begin_relaxed().await?;
        if self.complete_in(&mut tx, item).await? {
            tx.commit().await?;
            Ok(true)
        } else {
            tx.rollback().await?;
            Ok(false)
        }
    }

    /// Marks several items done inside the caller's transaction; false (roll back) when any of
    /// their leases was lost.
    pub async fn complete_all_in(
        &self,
        conn: &mut AnyConnection,
        items: &[&Leased],
    ) -> Result<bool, StoreError> {
        let now = now_ms();
        let mut done = 0u64;
        for chunk in items.chunks(ID_CHUNK) {
            let mut sql = String::from(
                "UPDATE requests SET state = 'done', lease_owner = NULL, lease_until = NULL, \
                 updated_at = $1 WHERE state = 'leased' AND (",
            );
            for i in 0..chunk.len() {
                if i > 0 {
                    sql.push_str(" OR ");
                }
                let b = 2 + i * 3;
                sql.push_str(&format!(
                    "(id = ${} AND lease_owner = ${} AND attempts = ${})",
                    b,
                    b + 1,
                    b + 2
                ));
            }
            sql.push(')');
            let mut q = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(now);
            for item in chunk {
                q = q
                    .bind(item.id.clone())
                    .bind(item.owner.clone())
                    .bind(i64::from(item.attempt));
            }
            done += q.execute(&mut *conn).await?.rows_affected();
        }
        Ok(done == items.len() as u64)
    }

    /// Would a failure of this attempt park the item?
    pub fn is_last_attempt(&self, item: &Leased) -> bool {
        item.attempt >= self.settings.max_attempts
    }

    /// Records a failed attempt inside the caller's transaction: back of the queue with a
    /// growing delay, or parked as dead after the last attempt.
    pub async fn fail_in(
        &self,
        conn: &mut AnyConnection,
        item: &Leased,
        error: &str,
    ) -> Result<FailOutcome, StoreError> {
        let dead = self.is_last_attempt(item);
        self.settle_failure(conn, item, error, dead).await
    }

    /// Parks an item as dead at once (it can never succeed, e.g. an unreadable payload).
    pub async fn park_in(
        &self,
        conn: &mut AnyConnection,
        item: &Leased,
        error: &str,
    ) -> Result<FailOutcome, StoreError> {
        self.settle_failure(conn, item, error, true).await
    }

    async fn settle_failure(
        &self,
        conn: &mut AnyConnection,
        item: &Leased,
        error: &str,
        dead: bool,
    ) -> Result<FailOutcome, StoreError> {
        let now = now_ms();
        let available_at = now + duration_ms(self.retry_delay(item.attempt));
        let r = sqlx::query(
            "UPDATE requests SET state = $1, available_at = $2, lease_owner = NULL, lease_until = NULL, \
             last_error = $3, updated_at = $4 \
             WHERE id = $5 AND lease_owner = $6 AND state = 'leased' AND attempts = $7",
        )
        .bind(if dead { "dead" } else { "ready" })
        .bind(if dead { now } else { available_at })
        .bind(error)
        .bind(now)
        .bind(&item.id)
        .bind(&item.owner)
        .bind(i64::from(item.attempt))
        .execute(&mut *conn)
        .await?;
        if r.rows_affected() != 1 {
            return Ok(FailOutcome::LeaseLost);
        }
        if dead {
            self.metrics
                .queue_dead_total
                .with_label_values(&[item.kind.as_str()])
                .inc();
            Ok(FailOutcome::Dead)
        } else {
            self.metrics
                .queue_retries
                .with_label_values(&[item.kind.as_str()])
                .inc();
            Ok(FailOutcome::Retry { available_at })
        }
    }

    /// Same as `fail_in`, in its own transaction.
    pub async fn fail(&self, item: &Leased, error: &str) -> Result<FailOutcome, StoreError> {
        let mut conn = self.store.pool().acquire().await?;
        self.fail_in(&mut conn, item, error).await
    }

    /// Exponential delay from `retry_base`, capped at `retry_max`, with equal jitter.
    pub fn retry_delay(&self, attempt: u32) -> Duration {
        let base = self.settings.retry_base.as_millis() as u64;
        let cap = self.settings.retry_max.as_millis() as u64;
        let exp = base
            .saturating_mul(1u64 << attempt.saturating_sub(1).min(32))
            .min(cap);
        let half = exp / 2;
        let jitter = if half > 0 {
            rand::rng().random_range(0..=half)
        } else {
            0
        };
        Duration::from_millis(half + jitter)
    }

    pub async fn dead(&self, limit: i64) -> Result<Vec<DeadItem>, StoreError> {
        dead_items(&self.store, limit).await
    }

    pub async fn counts(&self) -> Result<QueueCounts, StoreError> {
        let rows = sqlx::query(
            // `state <> 'done'`: the form of `requests_unfinished`'s condition, so it is read
            // instead of every row.
            "SELECT state, COUNT(*) AS n FROM requests WHERE state <> 'done' GROUP BY state",
        )
        .fetch_all(self.store.pool())
        .await?;
        let mut c = QueueCounts::default();
        for row in rows {
            let state: String = row.try_get("state")?;
            let n: i64 = row.try_get("n")?;
            match state.as_str() {
                "ready" => c.ready = n,
                "leased" => c.leased = n,
                "dead" => c.dead = n,
                _ => {}
            }
        }
        Ok(c)
    }

    /// Updates the queue gauges from the store.
    pub async fn refresh_metrics(&self) -> Result<QueueCounts, StoreError> {
        let c = self.counts().await?;
        self.metrics
            .queue_items
            .with_label_values(&["ready"])
            .set(c.ready);
        self.metrics
            .queue_items
            .with_label_values(&["leased"])
            .set(c.leased);
        self.metrics
            .queue_items
            .with_label_values(&["dead"])
            .set(c.dead);
        Ok(c)
    }

    /// Requests from this front end that are not finished yet (ready or leased).
    pub async fn unfinished_for(&self, frontend: &str) -> Result<i64, StoreError> {
        let row = sqlx::query(
            "SELECT COUNT(*) AS n FROM requests \
             WHERE frontend = $1 AND state <> 'done' AND state IN ('ready', 'leased')",
        )
        .bind(frontend)
        .fetch_one(self.store.pool())
        .await?;
        Ok(row.try_get("n")?)
    }

    /// The time until the next item a general worker could take becomes due (for sleeping
    /// workers), if any is waiting: the first ready item outside the lanes and the first lease
    /// to expire, each read from the front of its index.
    pub async fn next_due_in(&self) -> Result<Option<Duration>, StoreError> {
        let pool = self.store.pool();
        let ready: Option<i64> = sqlx::query_scalar(
            "SELECT MIN(available_at) FROM requests WHERE state = 'ready' AND lane IS NULL",
        )
        .fetch_one(pool)
        .await?;
        let expiring: Option<i64> = sqlx::query_scalar(
            "SELECT MIN(lease_until) FROM requests WHERE state = 'leased' AND lane IS NULL",
        )
        .fetch_one(pool)
        .await?;
        let due = match (ready, expiring) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        Ok(due.map(|d| Duration::from_millis((d - now_ms()).max(0) as u64)))
    }

    /// The time until a lane's front item becomes due, if the lane holds anything.
    pub async fn lane_due_in(&self, kind: &str) -> Result<Option<Duration>, StoreError> {
        let row = sqlx::query(
            "SELECT state, available_at, lease_until FROM requests \
             WHERE kind = $1 AND state IN ('ready', 'leased') ORDER BY created_at, id LIMIT 1",
        )
        .bind(kind)
        .fetch_optional(self.store.pool())
        .await?;
        let Some(row) = row else { return Ok(None) };
        let state: String = row.try_get("state")?;
        let due: i64 = if state == "ready" {
            row.try_get("available_at")?
        } else {
            row.try_get::<Option<i64>, _>("lease_until")?.unwrap_or(0)
        };
        Ok(Some(Duration::from_millis((due - now_ms()).max(0) as u64)))
    }

    /// Ends the leases of holders that are gone (`gone(owner)`: a process on this host that
    /// died, say), so what they held is taken again at once rather than when the lease runs out.
    /// Returns how many items were freed. The attempt they were on still counts.
    pub async fn reclaim(&self, gone: impl Fn(&str) -> bool) -> Result<u64, StoreError> {
        let pool = self.store.pool();
        let owners: Vec<Option<String>> =
            // `state <> 'done'` lets SQLite read `requests_unfinished` (it does not infer it).
            sqlx::query_scalar(
                "SELECT DISTINCT lease_owner FROM requests \
                 WHERE state <> 'done' AND state = 'leased'",
            )
                .fetch_all(pool)
                .await?;
        let now = now_ms();
        let mut freed = 0;
        for owner in owners.into_iter().flatten().filter(|o| gone(o)) {
            let r = sqlx::query(
                "UPDATE requests SET lease_until = $1, updated_at = $1 \
                 WHERE state <> 'done' AND state = 'leased' AND lease_owner = $2 \
                 AND lease_until > $1",
            )
            .bind(now)
            .bind(&owner)
            .execute(pool)
            .await?;
            if r.rows_affected() > 0 {
                tracing::info!(owner = %owner, items = r.rows_affected(), "queue: took back what a holder that is gone had leased");
            }
            freed += r.rows_affected();
        }
        Ok(freed)
    }
}

/// The longest lease on a lane item: strict order holds the whole lane behind it, so a worker
/// that dies must not hold it for long (a live one renews it while it works).
pub const LANE_LEASE: Duration = Duration::from_secs(10);

/// A leased row as a [`Leased`].
/// The general workers' two lookups, selecting `columns` of the candidate `r`, `$1` the time
/// now (the same text serves sqlx and the writer's rusqlite connection). Two index-friendly
/// lookups instead of one sorted OR: first a lease that expired (its worker died; the few leased
/// rows of `requests_general`), then the oldest due ready item outside the lanes, in that
/// index's order (available_at, id; only unfinished, non-lane rows), so neither done rows nor a
/// lane's backlog are ever walked. A request that waits for the one before it
/// (`NewRequest::after`) is not taken while that one is unfinished.
fn general_front_sql(columns: &str) -> [String; 2] {
    const WAITS: &str = "AND (r.after_id IS NULL OR NOT EXISTS (SELECT 1 FROM requests p \
         WHERE p.id = r.after_id AND p.state IN ('ready', 'leased')))";
    [
        format!(
            "SELECT {columns} FROM requests r \
             WHERE r.state = 'leased' AND r.lease_until <= $1 AND r.lane IS NULL {WAITS} \
             ORDER BY r.lease_until LIMIT 1"
        ),
        format!(
            "SELECT {columns} FROM requests r \
             WHERE r.state = 'ready' AND r.lane IS NULL AND r.available_at <= $1 {WAITS} \
             ORDER BY r.available_at, r.id LIMIT 1"
        ),
    ]
}

/// What the general lease found on the writer's thread.
enum GeneralFront {
    Took(Box<Leased>),
    Nothing,
    Expired,
}

/// A leased item from a row of the writer's connection whose first columns are `id, kind,
/// frontend, room, addressee, identity, payload, attempts, created_at` (attempts as they
/// were before this lease took it).
fn leased_on_thread(row: &rusqlite::Row<'_>, owner: &str) -> Result<Leased, StoreError> {
    let payload = Payload::from_json(row.get(6)?).map_err(|e| StoreError::Corrupt {
        what: "requests.payload",
        detail: e.to_string(),
    })?;
    let attempts: i64 = row.get(7)?;
    Ok(Leased {
        id: row.get(0)?,
        kind: row.get(1)?,
        origin: Origin::from_columns(row.get(2)?, row.get(3)?, row.get(4)?),
        identity: row.get(5)?,
        payload,
        attempt: u32::try_from(attempts + 1).unwrap_or(u32::MAX),
        created_at: row.get(8)?,
        owner: owner.to_string(),
    })
}

fn leased_of(row: &sqlx::any::AnyRow, owner: &str) -> Result<Leased, StoreError> {
    let payload: String = row.try_get("payload")?;
    let payload = Payload::from_json(payload).map_err(|e| StoreError::Corrupt {
        what: "requests.payload",
        detail: e.to_string(),
    })?;
    Ok(Leased {
        id: row.try_get("id")?,
        kind: row.try_get("kind")?,
        origin: Origin::from_columns(
            row.try_get("frontend")?,
            row.try_get("room")?,
            row.try_get("addressee")?,
        ),
        identity: row.try_get("identity")?,
        payload,
        attempt: u32::try_from(row.try_get::<i64, _>("attempts")?).unwrap_or(u32::MAX),
        created_at: row.try_get("created_at")?,
        owner: owner.to_string(),
    })
}

/// Requests parked as dead, newest first (needs no queue settings: `shepherd queue dead`).
pub async fn dead_items(store: &Store, limit: i64) -> Result<Vec<DeadItem>, StoreError> {
    let rows = sqlx::query(
        "SELECT id, kind, frontend, room, identity, attempts, last_error, created_at \
         FROM requests WHERE state = 'dead' ORDER BY updated_at DESC, id DESC LIMIT $1",
    )
    .bind(limit)
    .fetch_all(store.pool())
    .await?;
    rows.iter()
        .map(|row| {
            Ok(DeadItem {
                id: row.try_get("id")?,
                kind: row.try_get("kind")?,
                origin: Origin::new(
                    row.try_get::<String, _>("frontend")?,
                    row.try_get::<String, _>("room")?,
                ),
                identity: row.try_get("identity")?,
                attempts: u32::try_from(row.try_get::<i64, _>("attempts")?).unwrap_or(u32::MAX),
                last_error: row.try_get("last_error")?,
                created_at: row.try_get("created_at")?,
            })
        })
        .collect::<Result<_, sqlx::Error>>()
        .map_err(StoreError::from)
}

fn duration_ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}
