//! Idempotency records: the side effects already performed for a request.
//!
//! A worker writes `(request id, name) -> value` as soon as an effect is known to have
//! happened (or to be about to happen). A redelivered request reads them first, so a
//! crash between "created" and "replied" never performs the effect a second time.

use sqlx::Row;

use crate::store::{Store, StoreError, now_ms};

pub async fn get(
    store: &Store,
    request_id: &str,
    name: &str,
) -> Result<Option<String>, StoreError> {
    let row = sqlx::query("SELECT value FROM effects WHERE request_id = $1 AND name = $2")
        .bind(request_id)
        .bind(name)
        .fetch_optional(store.pool())
        .await?;
    Ok(match row {
        Some(r) => Some(r.try_get("value")?),
        None => None,
    })
}

/// Records an effect; the first record for a name wins (later ones are ignored).
pub async fn put(
    store: &Store,
    request_id: &str,
    name: &str,
    value: &str,
) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO effects (request_id, name, value, created_at) VALUES ($1, $2, $3, $4) \
         ON CONFLICT (request_id, name) DO NOTHING",
    )
    .bind(request_id)
    .bind(name)
    .bind(value)
    .bind(now_ms())
    .execute(store.pool())
    .await?;
    Ok(())
}
