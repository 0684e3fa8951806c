//! The HTTP server: metrics, health, readiness, the command reference and GitLab's webhooks
//! (`POST /hooks/gitlab`, when `[gitlab_comments]` is configured; see `gitlab/hooks.rs`).
//!
//! `POST /hooks/alertmanager` (when `[alerts]` is configured) and `POST /api/v1/say` are in
//! `alerts.rs`.
//!
//! Slow and idle clients cannot hold the server: a connection must send each request's
//! headers within `http.header_timeout_secs` (which also bounds the idle time between
//! kept-alive requests), its body within `http.body_timeout_secs` (408 beyond), and take what
//! the server writes without stalling it for longer than that either (a client that sends
//! requests and never reads the answers is cut); at most `http.max_connections` are served at
//! once — the rest wait in the listen backlog until a slot frees, which the timeouts guarantee.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::request::Parts;
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use prometheus::{IntCounterVec, IntGauge, Opts};
use sha2::{Digest, Sha256};
use shepherd_core::metrics::Metrics;
use shepherd_core::store::Store;
use subtle::ConstantTimeEq;
use tokio::sync::{Semaphore, watch};
use tokio::time::Instant;

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

/// When a request's body must have arrived (set per request by the server; see [`read_body`]).
#[derive(Debug, Clone, Copy)]
struct BodyDeadline(Instant);

/// Why a request body could not be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyError {
    /// Longer than the endpoint's limit: 413.
    TooLarge,
    /// Not all there by the body deadline: 408.
    TimedOut,
    /// The connection broke while reading: 400.
    Broken,
    /// Other requests' bodies fill the memory kept for bodies until the deadline: 503.
    Busy,
}

impl BodyError {
    /// The answer to a request whose body could not be read.
    pub fn response(self, limit: usize) -> Response {
        let (status, text) = match self {
            BodyError::TooLarge => (
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("the body is larger than {limit} bytes"),
            ),
            BodyError::TimedOut => (
                StatusCode::REQUEST_TIMEOUT,
                "the body did not arrive in time".to_string(),
            ),
            BodyError::Broken => (
                StatusCode::BAD_REQUEST,
                "the body could not be read".to_string(),
            ),
            BodyError::Busy => (
                StatusCode::SERVICE_UNAVAILABLE,
                "too many large requests at once; try again".to_string(),
            ),
        };
        let mut r = answer(status, serde_json::json!({ "error": text }));
        if self != BodyError::TooLarge {
            r.headers_mut().insert(
                header::CONNECTION,
                header::HeaderValue::from_static("close"),
            );
        }
        r
    }

    /// The `outcome` label of webhook metrics.
    pub fn label(self) -> &'static str {
        match self {
            BodyError::TooLarge => "too_large",
            BodyError::TimedOut => "timed_out",
            BodyError::Broken => "malformed",
            BodyError::Busy => "busy",
        }
    }
}

/// Request bodies held in memory at once, over all connections: without a bound, the connection
/// cap times the largest body limit (512 × 16 MiB) could be buffered at once.
pub const BODY_BUDGET_BYTES: usize = 64 * 1024 * 1024;
const BUDGET_UNIT: usize = 1024;

fn body_budget() -> &'static Arc<Semaphore> {
    static BUDGET: std::sync::OnceLock<Arc<Semaphore>> = std::sync::OnceLock::new();
    BUDGET.get_or_init(|| Arc::new(Semaphore::new(BODY_BUDGET_BYTES / BUDGET_UNIT)))
}

/// A request's body, with its share of [`BODY_BUDGET_BYTES`] held until it is dropped.
pub struct BodyBytes {
    bytes: Bytes,
    _budget: tokio::sync::OwnedSemaphorePermit,
}

impl AsRef<[u8]> for BodyBytes {
    fn as_ref(&self) -> &[u8] {
        &self.bytes
    }
}

impl std::ops::Deref for BodyBytes {
    type Target = Bytes;

    fn deref(&self) -> &Bytes {
        &self.bytes
    }
}

/// Reads a request's whole body, at most `limit` bytes, by the deadline the server gave it
/// (kept in the request's `parts`). Its size (the declared length, else `limit`) is first taken
/// from the body budget, waiting until the deadline for room.
pub async fn read_body(parts: &Parts, body: Body, limit: usize) -> Result<BodyBytes, BodyError> {
    let deadline = parts
        .extensions
        .get::<BodyDeadline>()
        .map(|d| d.0)
        .unwrap_or_else(|| Instant::now() + Duration::from_secs(30));
    let declared = parts
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|n| n > limit) {
        return Err(BodyError::TooLarge);
    }
    let units = declared
        .unwrap_or(limit)
        .div_ceil(BUDGET_UNIT)
        .clamp(1, BODY_BUDGET_BYTES / BUDGET_UNIT);
    let budget = match tokio::time::timeout_at(
        deadline,
        body_budget()
            .clone()
            .acquire_many_owned(u32::try_from(units).unwrap_or(u32::MAX)),
    )
    .await
    {
        Ok(Ok(permit)) => permit,
        _ => return Err(BodyError::Busy),
    };
    match tokio::time::timeout_at(deadline, axum::body::to_bytes(body, limit)).await {
        Err(_) => Err(BodyError::TimedOut),
        Ok(Ok(bytes)) => Ok(BodyBytes {
            bytes,
            _budget: budget,
        }),
        Ok(Err(e))
            if std::error::Error::source(&e)
                .is_some_and(|s| s.is::<http_body_util::LengthLimitError>()) =>
        {
            Err(BodyError::TooLarge)
        }
        Ok(Err(_)) => Err(BodyError::Broken),
    }
}

/// The HTTP server's own limits and metrics.
#[derive(Clone)]
pub struct ServerSettings {
    pub listen: SocketAddr,
    pub header_timeout: Duration,
    pub body_timeout: Duration,
    pub max_connections: usize,
}

#[derive(Clone)]
struct ServerMetrics {
    open: IntGauge,
    closed: IntCounterVec,
}

impl ServerMetrics {
    fn register(registry: &prometheus::Registry) -> Result<Self, prometheus::Error> {
        let m = Self {
            open: IntGauge::new("http_connections", "HTTP connections open now")?,
            closed: IntCounterVec::new(
                Opts::new(
                    "http_connections_closed_total",
                    "HTTP connections closed, by reason (done, header_timeout, write_timeout, error)",
                ),
                &["reason"],
            )?,
        };
        registry.register(Box::new(m.open.clone()))?;
        registry.register(Box::new(m.closed.clone()))?;
        Ok(m)
    }
}

/// Whether a connection ended because the client would not take what was written.
fn is_write_timeout(e: &hyper::Error) -> bool {
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        if let Some(io) = s.downcast_ref::<std::io::Error>() {
            return io.kind() == std::io::ErrorKind::TimedOut;
        }
        source = s.source();
    }
    false
}

/// Resolves once `shutdown` is true (holding no borrow of it).
async fn stopped(shutdown: &mut watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|s| *s).await;
}

/// Binds and serves until `shutdown` turns true, then lets open requests finish (a few seconds).
pub async fn serve(
    settings: ServerSettings,
    state: HttpState,
    mut shutdown: watch::Receiver<bool>,
) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::bind(settings.listen).await?;
    tracing::info!(addr = %listener.local_addr()?, max_connections = settings.max_connections, "http: listening");
    let metrics =
        ServerMetrics::register(state.metrics.registry()).map_err(std::io::Error::other)?;
    let body_timeout = settings.body_timeout;
    let app = router(state).layer(axum::middleware::from_fn(
        move |mut request: Request, next: Next| async move {
            request
                .extensions_mut()
                .insert(BodyDeadline(Instant::now() + body_timeout));
            next.run(request).await
        },
    ));
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(settings.header_timeout);
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let slots = Arc::new(Semaphore::new(settings.max_connections.max(1)));
    loop {
        let slot = tokio::select! {
            slot = slots.clone().acquire_owned() => match slot {
                Ok(slot) => slot,
                Err(_) => break,
            },
            _ = stopped(&mut shutdown) => break,
        };
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // Out of file descriptors, most likely: wait for some to close.
                    tracing::warn!(error = %e, "http: cannot accept a connection");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = stopped(&mut shutdown) => break,
        };
        let _ = stream.set_nodelay(true);
        // A write that cannot go out for this long (the client reads nothing) ends the connection.
        let mut stream = tokio_io_timeout::TimeoutStream::new(stream);
        stream.set_write_timeout(Some(body_timeout));
        let service = hyper_util::service::TowerToHyperService::new(app.clone());
        let connection = graceful
            .watch(http.serve_connection(hyper_util::rt::TokioIo::new(Box::pin(stream)), service));
        let metrics = metrics.clone();
        metrics.open.inc();
        tokio::spawn(async move {
            let reason = match connection.await {
                Ok(()) => "done",
                Err(e) if e.is_timeout() => "header_timeout",
                Err(e) if is_write_timeout(&e) => "write_timeout",
                Err(e) => {
                    tracing::debug!(error = %e, "http: connection ended with an error");
                    "error"
                }
            };
            metrics.closed.with_label_values(&[reason]).inc();
            metrics.open.dec();
            drop(slot);
        });
    }
    drop(listener);
    tokio::select! {
        _ = graceful.shutdown() => {}
        _ = tokio::time::sleep(Duration::from_secs(5)) => {
            tracing::warn!("http: some connections were still open at shutdown");
        }
    }
    Ok(())
}
