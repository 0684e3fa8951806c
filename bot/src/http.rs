//! The HTTP server: metrics, health, readiness, the command reference and GitLab's webhooks
//! (`POST /hooks/gitlab`, when `[gitlab_comments]` is configured; see `gitlab/hooks.rs`).
//!
//! `POST /hooks/alertmanager` (when `[alerts]` is configured) and `POST /api/v1/say` are in
//! `alerts.rs`.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use sha2::{Digest, Sha256};
use shepherd_core::metrics::Metrics;
use shepherd_core::store::Store;
use subtle::ConstantTimeEq;
use tokio::sync::watch;

use crate::alerts::{self, AlertHookState, SayState};
use crate::gitlab::hooks::{self as gitlab_hooks, HookState};

#[derive(Clone)]
pub struct HttpState {
    pub metrics: Arc<Metrics>,
    pub store: Store,
    /// The generated command reference (GET /help).
    pub reference: Arc<String>,
    /// `POST /hooks/gitlab`, when GitLab comments are configured.
    pub gitlab_hooks: Option<HookState>,
    /// `POST /hooks/alertmanager`, when alerts are configured.
    pub alert_hooks: Option<AlertHookState>,
    /// `POST /api/v1/say` (refuses everything without `http.api_token`).
    pub say: SayState,
}

pub fn router(state: HttpState) -> Router {
    let hooks = state.gitlab_hooks.clone();
    let alert_hooks = state.alert_hooks.clone();
    let say = state.say.clone();
    let mut router = Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/help", get(help))
        .with_state(state)
        .merge(
            Router::new()
                .route("/api/v1/say", post(alerts::say))
                .layer(DefaultBodyLimit::max(64 * 1024))
                .with_state(say),
        );
    if let Some(hooks) = hooks {
        router = router.merge(
            Router::new()
                .route("/hooks/gitlab", post(gitlab_hooks::receive))
                .with_state(hooks),
        );
    }
    if let Some(alert_hooks) = alert_hooks {
        router = router.merge(
            Router::new()
                .route("/hooks/alertmanager", post(alerts::receive))
                .with_state(alert_hooks),
        );
    }
    router
}

async fn metrics(State(s): State<HttpState>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        s.metrics.render(),
    )
}

async fn readyz(State(s): State<HttpState>) -> impl IntoResponse {
    match s.store.ping().await {
        Ok(()) => (StatusCode::OK, "ready\n".to_string()),
        Err(e) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("store unavailable: {e}\n"),
        ),
    }
}

async fn help(State(s): State<HttpState>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/markdown; charset=utf-8")],
        s.reference.as_str().to_owned(),
    )
}

/// A configured secret as it is kept in memory: its SHA-256.
pub fn secret_digest(secret: &str) -> [u8; 32] {
    Sha256::digest(secret.as_bytes()).into()
}

/// Compares a presented secret with a kept digest in constant time; hashing first means not
/// even the length leaks.
pub fn same_secret(given: &[u8], expected: &[u8; 32]) -> bool {
    let given: [u8; 32] = Sha256::digest(given).into();
    given.ct_eq(expected).into()
}

/// A JSON answer with a status.
pub fn answer(status: StatusCode, body: serde_json::Value) -> axum::response::Response {
    (status, axum::Json(body)).into_response()
}

/// Binds and serves until `shutdown` turns true.
pub async fn serve(
    listen: SocketAddr,
    state: HttpState,
    mut shutdown: watch::Receiver<bool>,
) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::bind(listen).await?;
    tracing::info!(addr = %listener.local_addr()?, "http: listening");
    axum::serve(listener, router(state))
        .with_graceful_shutdown(async move {
            let _ = shutdown.wait_for(|s| *s).await;
        })
        .await
}
