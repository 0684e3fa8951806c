//! Prometheus metrics for every part of shepherd, in one registry.
//!
//! One `Metrics` value is created at start and shared (`Arc`) by every service; the HTTP
//! server renders its registry on `GET /metrics`. Collectors are created here, not in the
//! services, so the full list of series lives in one place and names stay consistent.

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
    TextEncoder,
};

/// Buckets for latencies of local work and API calls, in seconds (1 ms .. 60 s).
const LATENCY_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];

#[derive(Debug, thiserror::Error)]
#[error("metrics: {0}")]
pub struct MetricsError(#[from] prometheus::Error);

#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    /// Commands by name and outcome (`ok`, `refused`, `rate_limited`, `parse_error`, `error`, `not_enabled`).
    pub commands: IntCounterVec,
    /// Time from a command's arrival to its reply being queued, by command name.
    pub command_duration: HistogramVec,
    /// Queue items by state (`ready`, `leased`, `dead`); refreshed by the queue.
    pub queue_items: IntGaugeVec,
    /// Queue items that failed an attempt and were put back with a delay.
    pub queue_retries: IntCounterVec,
    /// Queue items parked as dead after their last attempt.
    pub queue_dead_total: IntCounterVec,
    /// GitLab API calls by endpoint (a route template, not the concrete path) and HTTP status
    /// (`error` when no status came back: timeout, reset, refused).
    pub gitlab_requests: IntCounterVec,
    /// GitLab API call latency by endpoint.
    pub gitlab_request_duration: HistogramVec,
    /// Retries of GitLab calls by reason (`5xx`, `429`, `timeout`, `connect`, ...).
    pub gitlab_retries: IntCounterVec,
    /// Pipelines being watched right now.
    pub watched_pipelines: IntGauge,
    /// Replies and notifications waiting in the outbox, by front end.
    pub outbox_pending: IntGaugeVec,
    /// Updates of watched pipelines by source: `poll` (an API call) or `hook` (a Pipeline Hook).
    pub watch_updates: IntCounterVec,
    /// GitLab webhook deliveries by event (`note`, `merge_request`, `pipeline`, `job`, `other`)
    /// and outcome (`accepted`, `duplicate`, `ignored`, `unauthorized`, `too_large`, `malformed`,
    /// `unavailable`).
    pub gitlab_webhooks: IntCounterVec,
    /// Finished jobs of herded projects a matcher matched, by matcher and action.
    pub herder_problems: IntCounterVec,
    /// Failed jobs of herded projects no matcher matched (the ones to write matchers for), by
    /// project.
    pub herder_unmatched: IntCounterVec,
    /// Due herder retries by matcher and outcome: `retried`, `would_retry` (non-production),
    /// `already_retried`, `superseded`, `gone`, `failed`.
    pub herder_retries: IntCounterVec,
    /// Jobs the herder gave up on at their matcher's `retry_limit`, by matcher.
    pub herder_given_up: IntCounterVec,
    /// Canary runs started, and canary pipelines created.
    pub canary_runs: IntCounterVec,
    /// Alertmanager notifications by outcome: `stored`, `duplicate`, `unauthorized`,
    /// `too_large`, `malformed`, `shown`, `repeat` (within the dedup window), `unrouted`.
    pub alert_notifications: IntCounterVec,
    /// Alerts received in shown notifications, by status (`firing`, `resolved`).
    pub alerts: IntCounterVec,
    /// Alert lines queued for rooms, by front end.
    pub alert_lines: IntCounterVec,
    /// Messages a front end delivered (the network acknowledged them), by front end.
    pub outbox_delivered: IntCounterVec,
    /// From a message entering the outbox to its delivery being acknowledged, by front end.
    pub outbox_delivery_lag: HistogramVec,
    /// Sends of a message the network refused or never acknowledged, by front end.
    pub outbox_send_failures: IntCounterVec,
    /// Messages a front end gave up on after `max_send_attempts` (kept; `shepherd outbox parked`).
    pub outbox_parked: IntCounterVec,
    /// Messages (commands, junk and all) dropped by the rate limits, by scope (`identity`, `room`).
    pub rate_limited: IntCounterVec,
    /// Senders and rooms the rate limiters currently keep state for (pruned every minute).
    pub rate_limiter_keys: IntGauge,
    /// Registry API calls by method (`TOKEN` for token requests) and status (`error`: no answer).
    pub registry_requests: IntCounterVec,
    /// Deploys and rollbacks by service, environment and outcome.
    pub deployments: IntCounterVec,
}

impl Metrics {
    pub fn new() -> Result<Self, MetricsError> {
        let registry = Registry::new_custom(Some("shepherd".into()), None)?;
        let commands = IntCounterVec::new(
            Opts::new(
                "commands_total",
                "Commands received, by command and outcome",
            ),
            &["command", "outcome"],
        )?;
        let command_duration = HistogramVec::new(
            HistogramOpts::new(
                "command_duration_seconds",
                "Time from a command's arrival to its reply being queued",
            )
            .buckets(LATENCY_BUCKETS.to_vec()),
            &["command"],
        )?;
        let queue_items = IntGaugeVec::new(
            Opts::new("queue_items", "Work queue items by state"),
            &["state"],
        )?;
        let queue_retries = IntCounterVec::new(
            Opts::new(
                "queue_retries_total",
                "Queue items put back after a failed attempt",
            ),
            &["kind"],
        )?;
        let queue_dead_total = IntCounterVec::new(
            Opts::new(
                "queue_dead_total",
                "Queue items parked as dead after their last attempt",
            ),
            &["kind"],
        )?;
        let gitlab_requests = IntCounterVec::new(
            Opts::new(
                "gitlab_requests_total",
                "GitLab API calls by endpoint and status",
            ),
            &["endpoint", "status"],
        )?;
        let gitlab_request_duration = HistogramVec::new(
            HistogramOpts::new("gitlab_request_duration_seconds", "GitLab API call latency")
                .buckets(LATENCY_BUCKETS.to_vec()),
            &["endpoint"],
        )?;
        let gitlab_retries = IntCounterVec::new(
            Opts::new(
                "gitlab_retries_total",
                "GitLab API calls retried, by reason",
            ),
            &["reason"],
        )?;
        let watched_pipelines = IntGauge::new(
            "watched_pipelines",
            "Pipelines being watched until they finish",
        )?;
        let outbox_pending = IntGaugeVec::new(
            Opts::new(
                "outbox_pending",
                "Messages waiting in the outbox, by front end",
            ),
            &["frontend"],
        )?;
        let watch_updates = IntCounterVec::new(
            Opts::new(
                "watch_updates_total",
                "Updates of watched pipelines, by source (poll or hook)",
            ),
            &["source"],
        )?;
        let gitlab_webhooks = IntCounterVec::new(
            Opts::new(
                "gitlab_webhooks_total",
                "GitLab webhook deliveries, by event and outcome",
            ),
            &["event", "outcome"],
        )?;
        let herder_problems = IntCounterVec::new(
            Opts::new(
                "herder_problems_total",
                "Finished jobs a herder matcher matched, by matcher and action",
            ),
            &["matcher", "action"],
        )?;
        let herder_unmatched = IntCounterVec::new(
            Opts::new(
                "herder_unmatched_failures_total",
                "Failed jobs of herded projects that no matcher matched, by project",
            ),
            &["project"],
        )?;
        let herder_retries = IntCounterVec::new(
            Opts::new(
                "herder_retries_total",
                "Due herder retries by matcher and outcome (retried, would_retry, already_retried, superseded, gone, failed)",
            ),
            &["matcher", "outcome"],
        )?;
        let herder_given_up = IntCounterVec::new(
            Opts::new(
                "herder_given_up_total",
                "Jobs the herder gave up on at their matcher's retry_limit, by matcher",
            ),
            &["matcher"],
        )?;
        let canary_runs = IntCounterVec::new(
            Opts::new(
                "canary_total",
                "Canary runs started (what=run) and canary pipelines created (what=pipeline)",
            ),
            &["what"],
        )?;
        let alert_notifications = IntCounterVec::new(
            Opts::new(
                "alert_notifications_total",
                "Alertmanager notifications, by outcome",
            ),
            &["outcome"],
        )?;
        let alerts = IntCounterVec::new(
            Opts::new("alerts_total", "Alerts in shown notifications, by status"),
            &["status"],
        )?;
        let alert_lines = IntCounterVec::new(
            Opts::new(
                "alert_lines_total",
                "Alert lines queued for rooms, by front end",
            ),
            &["frontend"],
        )?;
        let outbox_delivered = IntCounterVec::new(
            Opts::new(
                "outbox_delivered_total",
                "Messages delivered and acknowledged, by front end",
            ),
            &["frontend"],
        )?;
        let outbox_delivery_lag = HistogramVec::new(
            HistogramOpts::new(
                "outbox_delivery_lag_seconds",
                "From a message entering the outbox to its acknowledged delivery",
            )
            .buckets(LATENCY_BUCKETS.to_vec()),
            &["frontend"],
        )?;
        let outbox_send_failures = IntCounterVec::new(
            Opts::new(
                "outbox_send_failures_total",
                "Sends of a message the network refused or never acknowledged, by front end",
            ),
            &["frontend"],
        )?;
        let outbox_parked = IntCounterVec::new(
            Opts::new(
                "outbox_parked_total",
                "Messages given up on after their last send attempt (kept), by front end",
            ),
            &["frontend"],
        )?;
        let rate_limited = IntCounterVec::new(
            Opts::new(
                "rate_limited_total",
                "Messages to the bot dropped by the rate limits, by scope",
            ),
            &["scope"],
        )?;
        let rate_limiter_keys = IntGauge::new(
            "rate_limiter_keys",
            "Senders and rooms the rate limiters keep state for",
        )?;
        registry.register(Box::new(outbox_send_failures.clone()))?;
        registry.register(Box::new(outbox_parked.clone()))?;
        registry.register(Box::new(rate_limited.clone()))?;
        registry.register(Box::new(rate_limiter_keys.clone()))?;
        registry.register(Box::new(alert_notifications.clone()))?;
        registry.register(Box::new(alerts.clone()))?;
        registry.register(Box::new(alert_lines.clone()))?;
        registry.register(Box::new(outbox_delivered.clone()))?;
        registry.register(Box::new(outbox_delivery_lag.clone()))?;
        registry.register(Box::new(watch_updates.clone()))?;
        registry.register(Box::new(gitlab_webhooks.clone()))?;
        registry.register(Box::new(herder_problems.clone()))?;
        registry.register(Box::new(herder_unmatched.clone()))?;
        registry.register(Box::new(herder_retries.clone()))?;
        registry.register(Box::new(herder_given_up.clone()))?;
        registry.register(Box::new(canary_runs.clone()))?;
        registry.register(Box::new(commands.clone()))?;
        registry.register(Box::new(command_duration.clone()))?;
        registry.register(Box::new(queue_items.clone()))?;
        registry.register(Box::new(queue_retries.clone()))?;
        registry.register(Box::new(queue_dead_total.clone()))?;
        registry.register(Box::new(gitlab_requests.clone()))?;
        registry.register(Box::new(gitlab_request_duration.clone()))?;
        registry.register(Box::new(gitlab_retries.clone()))?;
        registry.register(Box::new(watched_pipelines.clone()))?;
        registry.register(Box::new(outbox_pending.clone()))?;
        let registry_requests = IntCounterVec::new(
            Opts::new(
                "registry_requests_total",
                "Container registry API calls by method and status",
            ),
            &["method", "status"],
        )?;
        let deployments = IntCounterVec::new(
            Opts::new(
                "deployments_total",
                "Deploys and rollbacks by service, environment and outcome (done, would, refused, failed, confirmation)",
            ),
            &["service", "environment", "outcome"],
        )?;
        registry.register(Box::new(registry_requests.clone()))?;
        registry.register(Box::new(deployments.clone()))?;
        Ok(Self {
            registry,
            commands,
            command_duration,
            queue_items,
            queue_retries,
            queue_dead_total,
            gitlab_requests,
            gitlab_request_duration,
            gitlab_retries,
            watched_pipelines,
            outbox_pending,
            watch_updates,
            gitlab_webhooks,
            herder_problems,
            herder_unmatched,
            herder_retries,
            herder_given_up,
            canary_runs,
            alert_notifications,
            alerts,
            alert_lines,
            outbox_delivered,
            outbox_delivery_lag,
            outbox_send_failures,
            outbox_parked,
            rate_limited,
            rate_limiter_keys,
            registry_requests,
            deployments,
        })
    }

    /// The registry, for collectors added by other crates (front ends, HTTP server).
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// Everything in the Prometheus text exposition format.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        let encoder = TextEncoder::new();
        // Encoding into a Vec cannot fail on I/O; a collector error would be a bug, so log it.
        if let Err(e) = encoder.encode(&self.registry.gather(), &mut buf) {
            tracing::error!(error = %e, "encoding metrics failed");
        }
        String::from_utf8(buf).unwrap_or_default()
    }
}
