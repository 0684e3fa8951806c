//! The audit log: every command that changes something, and every refusal.
//!
//! Entries say who (identity and the person it maps to), what (command and its text),
//! where from (front end and room) and what came of it.

use sqlx::{AnyConnection, Row};

use crate::origin::Origin;
use crate::store::{Store, StoreError, new_id, now_ms};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuditOutcome {
    /// Accepted and queued.
    Accepted,
    /// Refused by the permission policy.
    Refused,
    /// Rate limited.
    Limited,
    /// Carried out.
    Done,
    /// Would have been carried out (non-production mode).
    Would,
    /// Tried and failed.
    Failed,
}

impl AuditOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            AuditOutcome::Accepted => "accepted",
            AuditOutcome::Refused => "refused",
            AuditOutcome::Limited => "limited",
            AuditOutcome::Done => "done",
            AuditOutcome::Would => "would",
            AuditOutcome::Failed => "failed",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditEntry {
    pub identity: String,
    pub person: Option<String>,
    pub origin: Origin,
    pub command: String,
    pub text: String,
    pub outcome: String,
    pub detail: Option<String>,
    pub at: i64,
}

#[derive(Clone)]
pub struct AuditLog {
    store: Store,
}

impl AuditLog {
    pub fn new(store: Store) -> Self {
        Self { store }
    }

    #[allow(clippy::too_many_arguments)]
    pub async fn record(
        &self,
        identity: &str,
        person: Option<&str>,
        origin: &Origin,
        command: &str,
        text: &str,
        outcome: AuditOutcome,
        detail: Option<&str>,
    ) -> Result<(), StoreError> {
        let mut conn = self.store.pool().acquire().await?;
        record_in(
            &mut conn, identity, person, origin, command, text, outcome, detail,
        )
        .await
    }

    /// The newest entries first.
    pub async fn recent(&self, limit: i64) -> Result<Vec<AuditEntry>, StoreError> {
        let rows = sqlx::query(
            "SELECT at, identity, person, frontend, room, command, text, outcome, detail \
             FROM audit ORDER BY at DESC, id DESC LIMIT $1",
        )
        .bind(limit)
        .fetch_all(self.store.pool())
        .await?;
        rows.iter()
            .map(|r| {
                Ok(AuditEntry {
                    identity: r.try_get("identity")?,
                    person: r.try_get("person")?,
                    origin: Origin::new(
                        r.try_get::<String, _>("frontend")?,
                        r.try_get::<String, _>("room")?,
                    ),
                    command: r.try_get("command")?,
                    text: r.try_get("text")?,
                    outcome: r.try_get("outcome")?,
                    detail: r.try_get("detail")?,
                    at: r.try_get("at")?,
                })
            })
            .collect::<Result<_, sqlx::Error>>()
            .map_err(StoreError::from)
    }
}

/// Writes one entry inside the caller's transaction (with the effect it records).
#[allow(clippy::too_many_arguments)]
pub async fn record_in(
    conn: &mut AnyConnection,
    identity: &str,
    person: Option<&str>,
    origin: &Origin,
    command: &str,
    text: &str,
    outcome: AuditOutcome,
    detail: Option<&str>,
) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO audit (id, at, identity, person, frontend, room, command, text, outcome, detail) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
    )
    .bind(new_id())
    .bind(now_ms())
    .bind(identity)
    .bind(person)
    .bind(&origin.frontend)
    .bind(&origin.room)
    .bind(command)
    .bind(text)
    .bind(outcome.as_str())
    .bind(detail)
    .execute(&mut *conn)
    .await?;
    Ok(())
}
