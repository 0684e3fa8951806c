//! `POST /hooks/gitlab`: GitLab's webhooks, stored before they are acknowledged.
//!
//! In order: the `X-Gitlab-Token` is compared with the configured secret in constant time (both
//! hashed first, so not even the length leaks; 401 otherwise, before the body is read); the body
//! is read up to `gitlab_comments.max_body_bytes` (413 beyond); it must be JSON of the kind its
//! `X-Gitlab-Event` names (400 otherwise). Then it is stored in the durable queue and only then
//! answered 202. A redelivery (the same `Idempotency-Key`, or the same `X-Gitlab-Event-UUID` and
//! body) finds the stored request and is answered 200 without storing it again. Events shepherd
//! does not use are answered 200 and not stored. A store that cannot take the event is 503, which
//! GitLab retries.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use serde_json::json;
use sha2::{Digest, Sha256};
use shepherd_core::Origin;
use shepherd_core::metrics::Metrics;
use shepherd_core::queue::{Enqueued, NewRequest, Queue};

use crate::http::{answer, read_body, same_secret, secret_digest};
use shepherd_core::gitlab::webhook::{self, HookKind, WebhookError};

/// The queue kind of a stored GitLab event.
pub const EVENT_KIND: &str = "gitlab-event";

#[derive(Clone)]
pub struct HookState {
    /// SHA-256 of the secret; `None` refuses every delivery.
    secret: Option<[u8; 32]>,
    max_body_bytes: usize,
    queue: Queue,
    metrics: Arc<Metrics>,
}

impl HookState {
    pub fn new(
        secret: Option<&str>,
        max_body_bytes: usize,
        queue: Queue,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            secret: secret.map(secret_digest),
            max_body_bytes,
            queue,
            metrics,
        }
    }

    fn token_ok(&self, headers: &HeaderMap) -> bool {
        let Some(expected) = &self.secret else {
            return false;
        };
        let given = headers
            .get("x-gitlab-token")
            .map(|v| v.as_bytes())
            .unwrap_or_default();
        same_secret(given, expected)
    }

    fn count(&self, event: &str, outcome: &str) {
        self.metrics
            .gitlab_webhooks
            .with_label_values(&[event, outcome])
            .inc();
    }
}

fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|v| !v.is_empty())
}

/// The key that makes a redelivery of the same event a duplicate.
fn delivery_key(headers: &HeaderMap, event: &str, body: &[u8]) -> String {
    if let Some(key) = header(headers, "idempotency-key") {
        return format!("gitlab:idempotency:{key}");
    }
    let digest = Sha256::new()
        .chain_update(event.as_bytes())
        .chain_update([0])
        .chain_update(body)
        .finalize();
    let body_hash = hex::encode(&digest[..16]);
    match header(headers, "x-gitlab-event-uuid") {
        Some(uuid) => format!("gitlab:event:{uuid}:{body_hash}"),
        None => format!("gitlab:body:{body_hash}"),
    }
}

pub async fn receive(State(state): State<HookState>, request: Request<Body>) -> Response {
    let (parts, body) = request.into_parts();
    let headers = &parts.headers;
    let event = header(headers, "x-gitlab-event").unwrap_or("").to_string();
    let kind = HookKind::from_header(&event);
    let label = kind.map(HookKind::label).unwrap_or("other");

    if !state.token_ok(headers) {
        state.count(label, "unauthorized");
        tracing::warn!(event, "gitlab webhook: wrong or missing X-Gitlab-Token");
        return answer(
            StatusCode::UNAUTHORIZED,
            json!({"error": "invalid X-Gitlab-Token"}),
        );
    }
    let bytes = match read_body(&parts, body, state.max_body_bytes).await {
        Ok(b) => b,
        Err(e) => {
            state.count(label, e.label());
            tracing::warn!(event, limit = state.max_body_bytes, error = ?e, "gitlab webhook: body too large, too slow or unreadable");
            return e.response(state.max_body_bytes);
        }
    };
    let delivery = match webhook::decode(&event, &bytes) {
        Ok(d) => d,
        Err(WebhookError::Ignored(_)) => {
            state.count(label, "ignored");
            tracing::debug!(event, "gitlab webhook: event not used; ignored");
            return answer(
                StatusCode::OK,
                json!({"status": "ignored", "reason": format!("shepherd does not use {event:?} events")}),
            );
        }
        Err(WebhookError::Malformed(problem)) => {
            state.count(label, "malformed");
            return answer(StatusCode::BAD_REQUEST, json!({"error": problem}));
        }
    };
    let request = NewRequest {
        kind: EVENT_KIND.to_string(),
        origin: Origin::new("gitlab", delivery.room),
        identity: delivery.identity,
        payload: delivery.payload,
        dedup_key: Some(delivery_key(headers, &event, &bytes)),
        after: None,
        not_before: None,
    };
    match state.queue.enqueue(request).await {
        Ok(Enqueued::New(id)) => {
            state.count(label, "accepted");
            tracing::info!(request = %id, event, "gitlab webhook stored");
            answer(
                StatusCode::ACCEPTED,
                json!({"status": "accepted", "request": id}),
            )
        }
        Ok(Enqueued::Duplicate(id)) => {
            state.count(label, "duplicate");
            tracing::info!(request = %id, event, "gitlab webhook redelivered; already stored");
            answer(
                StatusCode::OK,
                json!({"status": "duplicate", "request": id}),
            )
        }
        Err(e) => {
            state.count(label, "unavailable");
            tracing::error!(event, error = %e, "gitlab webhook: cannot store it; GitLab will retry");
            answer(
                StatusCode::SERVICE_UNAVAILABLE,
                json!({"error": "the event could not be stored; try again"}),
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_idempotency_key_wins_and_bodies_tell_events_apart() {
        let mut h = HeaderMap::new();
        h.insert("x-gitlab-event-uuid", "u-1".parse().expect("header"));
        let a = delivery_key(&h, "Note Hook", b"{\"a\":1}");
        let b = delivery_key(&h, "Note Hook", b"{\"a\":2}");
        assert_ne!(a, b);
        assert_eq!(a, delivery_key(&h, "Note Hook", b"{\"a\":1}"));
        h.insert("idempotency-key", "k-1".parse().expect("header"));
        assert_eq!(
            delivery_key(&h, "Note Hook", b"{\"a\":2}"),
            "gitlab:idempotency:k-1"
        );
    }
}
