//! What the herder did, kept for `herder` in chat: one row per job and kind of action, so a
//! redelivered hook or a retry carried out again after a crash records its action once.

use sqlx::{AnyConnection, Row};

use crate::store::{Store, StoreError, now_ms};

/// A kind of herder action.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ActionKind {
    /// A retry stored, due after its delay.
    Scheduled,
    Retried,
    /// Non-production mode: the retry was only described.
    WouldRetry,
    GivenUp,
    Reported,
    Alerted,
    /// Not retried after all: already retried, superseded, or gone.
    Skipped,
    /// GitLab refused the retry.
    Failed,
}

impl ActionKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ActionKind::Scheduled => "scheduled",
            ActionKind::Retried => "retried",
            ActionKind::WouldRetry => "would-retry",
            ActionKind::GivenUp => "given-up",
            ActionKind::Reported => "reported",
            ActionKind::Alerted => "alerted",
            ActionKind::Skipped => "skipped",
            ActionKind::Failed => "failed",
        }
    }

    fn parse(text: &str) -> Option<ActionKind> {
        [
            ActionKind::Scheduled,
            ActionKind::Retried,
            ActionKind::WouldRetry,
            ActionKind::GivenUp,
            ActionKind::Reported,
            ActionKind::Alerted,
            ActionKind::Skipped,
            ActionKind::Failed,
        ]
        .into_iter()
        .find(|k| k.as_str() == text)
    }
}

/// One recorded action.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Action {
    pub kind: ActionKind,
    pub project: String,
    pub job_id: u64,
    pub job_name: String,
    pub job_url: String,
    pub matcher: String,
    /// Which retry of the job (1 = the first), for retries.
    pub retry: Option<u32>,
    /// The attempt a retry made.
    pub new_job_id: Option<u64>,
    /// The matched line, or why a retry was skipped or failed.
    pub detail: Option<String>,
    /// When it was recorded (Unix ms); set by [`record_in`].
    pub at: i64,
}

impl Action {
    fn key(&self) -> String {
        format!("{}:{}:{}", self.kind.as_str(), self.project, self.job_id)
    }
}

/// Records `action` unless this kind of action was recorded for its job already; true when it
/// was new.
pub async fn record_in(conn: &mut AnyConnection, action: &Action) -> Result<bool, StoreError> {
    let done = sqlx::query(
        "INSERT INTO herder_actions (key, project, job_id, job_name, job_url, matcher, action, retry, new_job_id, detail, created_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11) ON CONFLICT (key) DO NOTHING",
    )
    .bind(action.key())
    .bind(&action.project)
    .bind(i64::try_from(action.job_id).unwrap_or(i64::MAX))
    .bind(&action.job_name)
    .bind(&action.job_url)
    .bind(&action.matcher)
    .bind(action.kind.as_str())
    .bind(action.retry.map(i64::from))
    .bind(action.new_job_id.map(|id| i64::try_from(id).unwrap_or(i64::MAX)))
    .bind(action.detail.as_deref())
    .bind(now_ms())
    .execute(conn)
    .await?;
    Ok(done.rows_affected() > 0)
}

/// [`record_in`] in a transaction of its own.
pub async fn record(store: &Store, action: &Action) -> Result<bool, StoreError> {
    let mut tx = store.begin().await?;
    let added = record_in(&mut tx, action).await?;
    tx.commit().await?;
    Ok(added)
}

/// The newest `limit` actions, newest first.
pub async fn latest(store: &Store, limit: u32) -> Result<Vec<Action>, StoreError> {
    let rows = sqlx::query(
        "SELECT project, job_id, job_name, job_url, matcher, action, retry, new_job_id, detail, created_at \
         FROM herder_actions ORDER BY created_at DESC, key DESC LIMIT $1",
    )
    .bind(i64::from(limit))
    .fetch_all(store.pool())
    .await?;
    let mut out = Vec::with_capacity(rows.len());
    for row in rows {
        let kind: String = row.try_get("action")?;
        let Some(kind) = ActionKind::parse(&kind) else {
            continue;
        };
        out.push(Action {
            kind,
            project: row.try_get("project")?,
            job_id: u64::try_from(row.try_get::<i64, _>("job_id")?).unwrap_or(0),
            job_name: row.try_get("job_name")?,
            job_url: row.try_get("job_url")?,
            matcher: row.try_get("matcher")?,
            retry: row
                .try_get::<Option<i64>, _>("retry")?
                .and_then(|r| u32::try_from(r).ok()),
            new_job_id: row
                .try_get::<Option<i64>, _>("new_job_id")?
                .and_then(|r| u64::try_from(r).ok()),
            detail: row.try_get("detail")?,
            at: row.try_get("created_at")?,
        });
    }
    Ok(out)
}
