//! The alert relay's HTTP side and its worker step.
//!
//! `POST /hooks/alertmanager`: bearer token (or basic auth whose password is the token), checked
//! in constant time before the body is read (401); a body over `alerts.max_body_bytes` is 413;
//! a body that is not an Alertmanager version 4 notification is 400. A valid notification is
//! stored in the durable queue and only then answered 200 — Alertmanager retries on anything
//! else, so refusing is safe and dropping is not. A resend of the same body is acknowledged
//! without storing it twice.
//!
//! `POST /api/v1/say` (bearer `http.api_token`): `{"target": "irc:#ops", "text": "..."}` (or
//! `"targets": [...]`) puts a message in the outbox of each room, for the herder, deploy
//! pipelines and other services; an `Idempotency-Key` header makes a retried call say it once.
//!
//! The worker step ([`AlertRelay::process_in`]) runs inside the transaction that completes the
//! queue item: dedup window, routing, wording, outbox.

use std::sync::Arc;

use axum::Json;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use serde::Deserialize;
use serde_json::json;
use sha2::{Digest, Sha256};
use shepherd_config::Config;
use shepherd_core::alerts::{self, AlertCount, Notification, Router, decode_notification};
use shepherd_core::commit::Line;
use shepherd_core::metrics::Metrics;
use shepherd_core::outbox::{self, Outbox};
use shepherd_core::queue::{Enqueued, Leased, NewRequest, Queue};
use shepherd_core::store::{AnyConnection, StoreError};
use shepherd_core::{FrontEnds, Origin};
use shepherd_plugins::alerts::AlertFormatter;

use crate::http::{answer, read_body, same_secret, secret_digest};

/// The queue kind of a stored Alertmanager notification.
pub const NOTIFICATION_KIND: &str = "alert-notification";
/// The longest message `POST /api/v1/say` accepts.
const SAY_MAX_CHARS: usize = 4000;
/// Largest `POST /api/v1/say` body.
const SAY_MAX_BODY: usize = 64 * 1024;

fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::AUTHORIZATION)?
        .to_str()
        .ok()?
        .strip_prefix("Bearer ")
        .map(str::trim)
}

#[derive(Clone)]
pub struct AlertHookState {
    token: Option<[u8; 32]>,
    username: Option<String>,
    max_body_bytes: usize,
    queue: Queue,
    metrics: Arc<Metrics>,
}

impl AlertHookState {
    pub fn new(
        token: Option<&str>,
        username: Option<String>,
        max_body_bytes: usize,
        queue: Queue,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            token: token.map(secret_digest),
            username,
            max_body_bytes,
            queue,
            metrics,
        }
    }

    fn authorized(&self, headers: &HeaderMap) -> bool {
        let Some(expected) = &self.token else {
            return false;
        };
        if let Some(token) = bearer(headers) {
            return same_secret(token.as_bytes(), expected);
        }
        let basic = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Basic "))
            .and_then(|b| {
                base64::engine::general_purpose::STANDARD
                    .decode(b.trim())
                    .ok()
            })
            .and_then(|raw| String::from_utf8(raw).ok());
        let Some(pair) = basic else {
            return false;
        };
        let Some((user, password)) = pair.split_once(':') else {
            return false;
        };
        let user_ok = self.username.as_deref().is_none_or(|u| u == user);
        same_secret(password.as_bytes(), expected) && user_ok
    }

    fn count(&self, outcome: &str) {
        self.metrics
            .alert_notifications
            .with_label_values(&[outcome])
            .inc();
    }
}

pub async fn receive(State(state): State<AlertHookState>, request: Request<Body>) -> Response {
    let (parts, body) = request.into_parts();
    if !state.authorized(&parts.headers) {
        state.count("unauthorized");
        tracing::warn!("alertmanager webhook: wrong or missing credentials");
        return (
            StatusCode::UNAUTHORIZED,
            [(header::WWW_AUTHENTICATE, "Bearer")],
            Json(json!({"error": "invalid or missing credentials"})),
        )
            .into_response();
    }
    let bytes = match read_body(&parts, body, state.max_body_bytes).await {
        Ok(b) => b,
        Err(e) => {
            state.count(e.label());
            return e.response(state.max_body_bytes);
        }
    };
    let (payload, notification) = match decode_notification(&bytes) {
        Ok(decoded) => decoded,
        Err(e) => {
            state.count("malformed");
            return answer(StatusCode::BAD_REQUEST, json!({"error": e.to_string()}));
        }
    };
    let key = format!(
        "alertmanager:{}",
        hex::encode(&Sha256::digest(&bytes)[..16])
    );
    // Only these are needed from here on; the body is let go before the store is waited for.
    let Notification {
        receiver,
        alerts: AlertCount(alert_count),
        status,
        ..
    } = notification;
    drop(bytes);
    let request = NewRequest {
        kind: NOTIFICATION_KIND.to_string(),
        origin: Origin::new("alertmanager", receiver.clone()),
        identity: format!("alertmanager:{receiver}"),
        payload,
        dedup_key: Some(key),
        after: None,
        not_before: None,
    };
    match state.queue.enqueue(request).await {
        Ok(Enqueued::New(id)) => {
            state.count("stored");
            tracing::info!(request = %id, alerts = alert_count, status = %status, "alertmanager notification stored");
            answer(StatusCode::OK, json!({"status": "stored", "request": id}))
        }
        Ok(Enqueued::Duplicate(id)) => {
            state.count("duplicate");
            answer(
                StatusCode::OK,
                json!({"status": "duplicate", "request": id}),
            )
        }
        Err(e) => {
            tracing::error!(error = %e, "alertmanager notification: cannot store it; Alertmanager will retry");
            answer(
                StatusCode::SERVICE_UNAVAILABLE,
                json!({"error": "the notification could not be stored; try again"}),
            )
        }
    }
}

/// Routing, wording and the dedup window, for the worker.
pub struct AlertRelay {
    pub router: Router,
    pub formatter: AlertFormatter,
    /// Each room's lines are written for its front end's formatting.
    pub frontends: FrontEnds,
    pub dedup_window_ms: i64,
    pub metrics: Arc<Metrics>,
}

/// One stored notification, read and worded before the store is asked whether it is a repeat.
pub struct Prepared {
    /// The dedup window's key: a hash of what the notification says.
    pub key: String,
    /// Its lines, to be stored if it is shown.
    pub lines: Vec<Line>,
    group_key: String,
    statuses: Vec<String>,
    /// Lines per front end, and alerts that matched no route.
    said: Vec<(String, u64)>,
    unrouted: usize,
}

impl AlertRelay {
    /// Reads and words each notification of a batch (the due front of the lane, in arrival
    /// order); an unreadable one is `Err` with why (the caller parks it). Nothing is counted
    /// yet: whether each is shown is the store's answer ([`AlertRelay::account`]).
    pub fn prepare(&self, items: &[Leased]) -> Vec<Result<Prepared, String>> {
        items
            .iter()
            .map(|item| {
                // Read from the stored value in place: a storm's notification is not copied.
                let n: Notification = item.payload.decode().map_err(|e| e.to_string())?;
                let key = hex::encode(Sha256::digest(n.content_key().as_bytes()));
                let (plan, nowhere) = self.router.plan(&n);
                let mut lines = Vec::new();
                let mut said = Vec::new();
                for (room, alerts) in &plan {
                    let bodies =
                        self.formatter
                            .lines(self.frontends.of(room).formatting, &n, alerts);
                    said.push((room.frontend.clone(), bodies.len() as u64));
                    for (i, body) in bodies.into_iter().enumerate() {
                        lines.push(Line {
                            origin: room.clone(),
                            body,
                            dedup_key: Some(format!("alert:{}:{room}:{i}", item.id)),
                            request_id: Some(item.id.clone()),
                        });
                    }
                }
                Ok(Prepared {
                    key,
                    lines,
                    group_key: n.group_key.clone(),
                    statuses: n.alerts.iter().map(|a| a.status.clone()).collect(),
                    said,
                    unrouted: nowhere.len(),
                })
            })
            .collect()
    }

    /// Counts and logs a prepared notification once the store said whether it was shown.
    pub fn account(&self, item: &Leased, prepared: &Prepared, shown: bool) {
        if !shown {
            self.count("repeat");
            tracing::info!(request = %item.id, group = %prepared.group_key, "alert notification repeated within the dedup window; not shown again");
            return;
        }
        self.count("shown");
        for status in &prepared.statuses {
            self.metrics.alerts.with_label_values(&[status]).inc();
        }
        if prepared.unrouted > 0 {
            self.count("unrouted");
            tracing::warn!(request = %item.id, alerts = prepared.unrouted, "alerts matched no route and there is no default target");
        }
        for (frontend, n) in &prepared.said {
            self.metrics
                .alert_lines
                .with_label_values(&[frontend])
                .inc_by(*n);
        }
    }

    /// Relays a batch of stored notifications (the due front of the lane, in arrival order)
    /// inside `conn`'s transaction: one statement for their dedup-window checks and one for all
    /// their lines, whatever the batch's size. Per item, in order: relayed, or unreadable (the
    /// caller parks it). A store error fails the whole batch.
    pub async fn process_batch_in(
        &self,
        conn: &mut AnyConnection,
        items: &[Leased],
        prepared: Vec<Result<Prepared, String>>,
    ) -> Result<Vec<Result<(), String>>, StoreError> {
        let mut keys: Vec<&str> = Vec::with_capacity(prepared.len());
        for p in prepared.iter().flatten() {
            if !keys.contains(&p.key.as_str()) {
                keys.push(&p.key);
            }
        }
        let mut first = alerts::first_showings_in(conn, &keys, self.dedup_window_ms).await?;
        let mut lines = Vec::new();
        let mut outcomes = Vec::with_capacity(items.len());
        for (item, p) in items.iter().zip(prepared) {
            let p = match p {
                Ok(p) => p,
                Err(why) => {
                    outcomes.push(Err(why));
                    continue;
                }
            };
            outcomes.push(Ok(()));
            // Taken out: the same content again later in this batch is a repeat.
            let shown = first.remove(&p.key);
            self.account(item, &p, shown);
            if shown {
                lines.extend(p.lines);
            }
        }
        outbox::push_all_in(conn, &lines).await?;
        Ok(outcomes)
    }

    fn count(&self, outcome: &str) {
        self.metrics
            .alert_notifications
            .with_label_values(&[outcome])
            .inc();
    }
}

#[derive(Clone)]
pub struct SayState {
    token: Option<[u8; 32]>,
    outbox: Outbox,
    /// Judges targets the way configuration does (`Config::target_problem`).
    config: Arc<Config>,
}

impl SayState {
    pub fn new(token: Option<&str>, outbox: Outbox, config: Arc<Config>) -> Self {
        Self {
            token: token.map(secret_digest),
            outbox,
            config,
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SayBody {
    #[serde(default)]
    target: Option<String>,
    #[serde(default)]
    targets: Vec<String>,
    text: String,
}

pub async fn say(State(state): State<SayState>, request: Request<Body>) -> Response {
    let (parts, body) = request.into_parts();
    let headers = &parts.headers;
    let ok = match (&state.token, bearer(headers)) {
        (Some(expected), Some(given)) => same_secret(given.as_bytes(), expected),
        _ => false,
    };
    if !ok {
        return (
            StatusCode::UNAUTHORIZED,
            [(header::WWW_AUTHENTICATE, "Bearer")],
            Json(json!({"error": "invalid or missing bearer token"})),
        )
            .into_response();
    }
    let body = match read_body(&parts, body, SAY_MAX_BODY).await {
        Ok(b) => b,
        Err(e) => return e.response(SAY_MAX_BODY),
    };
    let req: SayBody = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => {
            return answer(
                StatusCode::BAD_REQUEST,
                json!({"error": format!("expected {{\"target\": \"irc:#room\", \"text\": \"...\"}}: {e}")}),
            );
        }
    };
    let text = req.text.trim();
    if text.is_empty() || text.chars().count() > SAY_MAX_CHARS {
        return answer(
            StatusCode::BAD_REQUEST,
            json!({"error": format!("text must have 1 to {SAY_MAX_CHARS} characters")}),
        );
    }
    let mut rooms = Vec::new();
    for t in req.target.iter().chain(req.targets.iter()) {
        // Judged as configured targets are; a target that passes is a valid origin.
        match (state.config.target_problem(t), Origin::parse(t)) {
            (None, Some(o)) => rooms.push(o),
            (problem, _) => {
                let refusal = problem.unwrap_or_else(|| format!("{t:?} is not a room"));
                return answer(StatusCode::BAD_REQUEST, json!({ "error": refusal }));
            }
        }
    }
    if rooms.is_empty() {
        return answer(
            StatusCode::BAD_REQUEST,
            json!({"error": "name a target (\"irc:#ops\") or targets"}),
        );
    }
    let idempotency = headers
        .get("idempotency-key")
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|v| !v.is_empty());
    let mut queued = 0;
    for room in &rooms {
        let key = idempotency.map(|k| format!("say:{k}:{room}"));
        match state.outbox.push(room, text, key.as_deref(), None).await {
            Ok(true) => queued += 1,
            Ok(false) => {}
            Err(e) => {
                tracing::error!(error = %e, "say: cannot store the message");
                return answer(
                    StatusCode::SERVICE_UNAVAILABLE,
                    json!({"error": "the message could not be stored; try again"}),
                );
            }
        }
    }
    answer(
        StatusCode::ACCEPTED,
        json!({"status": "queued", "rooms": rooms.len(), "new": queued}),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_compare_by_digest() {
        let expected = secret_digest("token");
        assert!(same_secret(b"token", &expected));
        assert!(!same_secret(b"tokem", &expected));
        assert!(!same_secret(b"", &expected));
    }
}
