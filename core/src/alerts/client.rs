//! Alertmanager's API v2, as far as the chat commands need it: the firing alerts, and silences
//! (create, read, expire).
//!
//! Every call is retried on connection errors, timeouts and 5xx with exponential backoff and
//! full jitter. Creating a silence is not idempotent: the silence's comment carries the request
//! id (`[shepherd:<id>]`), and after an ambiguous failure (the request may have reached
//! Alertmanager) the active silences are searched for it before creating again — the same
//! exactly-once scheme as GitLab pipelines.

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use chrono::{DateTime, Utc};
use reqwest::{Method, StatusCode};
use serde::{Deserialize, Serialize};
use serde_json::json;
use url::Url;

use super::matcher::Matcher;
use crate::once::{self, CreateFailure, OnceError};

#[derive(Debug, Clone)]
pub struct AlertmanagerSettings {
    pub url: Url,
    pub timeout: Duration,
    pub max_retries: u32,
    pub retry_base: Duration,
    pub retry_max: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum AlertmanagerError {
    #[error("Alertmanager at {url} is unreachable: {detail}")]
    Unavailable { url: String, detail: String },
    #[error("Alertmanager refused the request ({status}): {detail}")]
    Refused { status: u16, detail: String },
    #[error("Alertmanager has no silence {id}")]
    NoSuchSilence { id: String },
    #[error("Alertmanager's answer could not be read: {0}")]
    Decode(String),
    #[error("creating the silence was ambiguous {attempts} times in a row")]
    Ambiguous { attempts: u32 },
    #[error("the Alertmanager client cannot be built: {0}")]
    Config(String),
}

impl AlertmanagerError {
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            AlertmanagerError::Unavailable { .. } | AlertmanagerError::Ambiguous { .. }
        )
    }
}

/// A firing alert as `GET /api/v2/alerts` lists it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct ActiveAlert {
    pub labels: std::collections::BTreeMap<String, String>,
    #[serde(default)]
    pub annotations: std::collections::BTreeMap<String, String>,
    #[serde(rename = "startsAt")]
    pub starts_at: DateTime<Utc>,
    #[serde(rename = "generatorURL", default)]
    pub generator_url: String,
    #[serde(default)]
    pub fingerprint: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SilenceMatcher {
    pub name: String,
    pub value: String,
    #[serde(rename = "isRegex")]
    pub is_regex: bool,
    #[serde(rename = "isEqual", default = "yes")]
    pub is_equal: bool,
}

fn yes() -> bool {
    true
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Silence {
    pub id: String,
    pub matchers: Vec<SilenceMatcher>,
    #[serde(rename = "startsAt")]
    pub starts_at: DateTime<Utc>,
    #[serde(rename = "endsAt")]
    pub ends_at: DateTime<Utc>,
    #[serde(rename = "createdBy")]
    pub created_by: String,
    pub comment: String,
    pub status: SilenceStatus,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct SilenceStatus {
    pub state: String,
}

/// What a silence is made of.
#[derive(Debug, Clone)]
pub struct NewSilence<'a> {
    pub matchers: &'a [Matcher],
    pub duration: Duration,
    pub created_by: &'a str,
    pub comment: &'a str,
    /// Goes into the comment as `[shepherd:<id>]`, to find the silence again.
    pub request_id: &'a str,
}

#[derive(Clone)]
pub struct Alertmanager {
    http: reqwest::Client,
    settings: AlertmanagerSettings,
}

enum Outcome {
    Done(reqwest::StatusCode, Vec<u8>),
    /// Failed before the request could have had an effect, or with a 5xx: retry.
    Transient {
        detail: String,
        sent: bool,
    },
}

impl Alertmanager {
    pub fn new(settings: AlertmanagerSettings) -> Result<Self, AlertmanagerError> {
        let http = reqwest::Client::builder()
            .timeout(settings.timeout)
            .connect_timeout(settings.timeout)
            .user_agent(concat!("shepherd/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| AlertmanagerError::Config(e.to_string()))?;
        Ok(Self { http, settings })
    }

    pub fn url(&self) -> &Url {
        &self.settings.url
    }

    fn endpoint(&self, path: &str) -> String {
        format!(
            "{}/api/v2/{path}",
            self.settings.url.as_str().trim_end_matches('/')
        )
    }

    async fn once(&self, method: Method, url: &str, body: Option<&serde_json::Value>) -> Outcome {
        let mut req = self.http.request(method, url);
        if let Some(b) = body {
            req = req.json(b);
        }
        match req.send().await {
            Ok(r) => {
                let status = r.status();
                match r.bytes().await {
                    Ok(bytes) if status.is_server_error() => Outcome::Transient {
                        detail: format!("{status}: {}", String::from_utf8_lossy(&bytes)),
                        sent: true,
                    },
                    Ok(bytes) => Outcome::Done(status, bytes.to_vec()),
                    Err(e) => Outcome::Transient {
                        detail: e.to_string(),
                        sent: true,
                    },
                }
            }
            Err(e) => Outcome::Transient {
                detail: e.to_string(),
                sent: !e.is_connect(),
            },
        }
    }

    fn backoff(&self, attempt: u32) -> Duration {
        crate::backoff::full_jitter(self.settings.retry_base, self.settings.retry_max, attempt)
    }

    /// A call that is safe to repeat, retried until it answers or the retries are spent.
    async fn call(
        &self,
        method: Method,
        url: &str,
        body: Option<&serde_json::Value>,
    ) -> Result<(StatusCode, Vec<u8>), AlertmanagerError> {
        let mut last = String::new();
        for attempt in 0..=self.settings.max_retries {
            if attempt > 0 {
                tokio::time::sleep(self.backoff(attempt)).await;
            }
            match self.once(method.clone(), url, body).await {
                Outcome::Done(status, bytes) => return Ok((status, bytes)),
                Outcome::Transient { detail, .. } => {
                    tracing::warn!(url, attempt, error = %detail, "alertmanager: call failed; retrying");
                    last = detail;
                }
            }
        }
        Err(AlertmanagerError::Unavailable {
            url: self.settings.url.to_string(),
            detail: last,
        })
    }

    fn decode<T: for<'de> Deserialize<'de>>(
        status: StatusCode,
        bytes: &[u8],
    ) -> Result<T, AlertmanagerError> {
        if !status.is_success() {
            return Err(AlertmanagerError::Refused {
                status: status.as_u16(),
                detail: String::from_utf8_lossy(bytes).trim().to_string(),
            });
        }
        serde_json::from_slice(bytes).map_err(|e| AlertmanagerError::Decode(e.to_string()))
    }

    /// The alerts firing now (not silenced, not inhibited) that match every filter matcher.
    pub async fn alerts(&self, filter: &[Matcher]) -> Result<Vec<ActiveAlert>, AlertmanagerError> {
        let mut url = Url::parse(&self.endpoint("alerts"))
            .map_err(|e| AlertmanagerError::Config(e.to_string()))?;
        {
            let mut q = url.query_pairs_mut();
            q.append_pair("active", "true");
            q.append_pair("silenced", "false");
            q.append_pair("inhibited", "false");
            for m in filter {
                q.append_pair("filter", &m.to_string());
            }
        }
        let (status, bytes) = self.call(Method::GET, url.as_str(), None).await?;
        let mut alerts: Vec<ActiveAlert> = Self::decode(status, &bytes)?;
        alerts.sort_by(|a, b| {
            a.starts_at
                .cmp(&b.starts_at)
                .then(a.fingerprint.cmp(&b.fingerprint))
        });
        Ok(alerts)
    }

    pub async fn silences(&self) -> Result<Vec<Silence>, AlertmanagerError> {
        let (status, bytes) = self
            .call(Method::GET, &self.endpoint("silences"), None)
            .await?;
        Self::decode(status, &bytes)
    }

    pub async fn silence(&self, id: &str) -> Result<Silence, AlertmanagerError> {
        let url = self.endpoint(&format!("silence/{id}"));
        let (status, bytes) = self.call(Method::GET, &url, None).await?;
        if status == StatusCode::NOT_FOUND {
            return Err(AlertmanagerError::NoSuchSilence { id: id.to_string() });
        }
        Self::decode(status, &bytes)
    }

    /// The marker a silence's comment carries for `request_id`.
    pub fn marker(request_id: &str) -> String {
        format!("[shepherd:{request_id}]")
    }

    /// Finds the silence an earlier attempt of `request_id` created.
    pub async fn find_own(&self, request_id: &str) -> Result<Option<Silence>, AlertmanagerError> {
        let marker = Self::marker(request_id);
        Ok(self
            .silences()
            .await?
            .into_iter()
            .find(|s| s.comment.contains(&marker) && s.status.state != "expired"))
    }

    /// Creates a silence, exactly once per request id (its comment carries [`Self::marker`]; see
    /// [`crate::once`]). A silence is always looked for first: the request may be a redelivery.
    pub async fn create_silence(&self, s: &NewSilence<'_>) -> Result<Silence, AlertmanagerError> {
        let now = Utc::now();
        let ends = now
            + chrono::Duration::from_std(s.duration)
                .map_err(|e| AlertmanagerError::Config(e.to_string()))?;
        let body = json!({
            "matchers": s.matchers.iter().map(|m| SilenceMatcher {
                name: m.name.clone(),
                value: m.value.clone(),
                is_regex: m.is_regex(),
                is_equal: m.is_equal(),
            }).collect::<Vec<_>>(),
            "startsAt": now.to_rfc3339(),
            "endsAt": ends.to_rfc3339(),
            "createdBy": s.created_by,
            "comment": format!("{} {}", s.comment, Self::marker(s.request_id)),
        });
        let url = &self.endpoint("silences");
        let body = &body;
        let tries = &AtomicU32::new(0);
        let created = once::create_once(
            "silence",
            true,
            self.settings.max_retries.max(1),
            move || self.find_own(s.request_id),
            move || async move {
                let attempt = tries.fetch_add(1, Ordering::Relaxed);
                if attempt > 0 {
                    tokio::time::sleep(self.backoff(attempt)).await;
                }
                match self.once(Method::POST, url, Some(body)).await {
                    Outcome::Done(status, bytes) => {
                        #[derive(Deserialize)]
                        struct Created {
                            #[serde(rename = "silenceID")]
                            silence_id: String,
                        }
                        let created: Created =
                            Self::decode(status, &bytes).map_err(CreateFailure::Failed)?;
                        self.silence(&created.silence_id)
                            .await
                            .map_err(CreateFailure::Failed)
                    }
                    Outcome::Transient { detail, sent: true } => {
                        Err(CreateFailure::Ambiguous(detail))
                    }
                    Outcome::Transient {
                        detail,
                        sent: false,
                    } => Err(CreateFailure::NotSent(detail)),
                }
            },
        )
        .await
        .map_err(|e| match e {
            OnceError::Failed(e) => e,
            OnceError::StillAmbiguous { attempts, .. } => AlertmanagerError::Ambiguous { attempts },
        })?;
        Ok(created.into_inner())
    }

    /// Expires a silence (idempotent: expiring an expired silence is fine).
    pub async fn expire_silence(&self, id: &str) -> Result<(), AlertmanagerError> {
        let url = self.endpoint(&format!("silence/{id}"));
        let (status, bytes) = self.call(Method::DELETE, &url, None).await?;
        match status {
            s if s.is_success() => Ok(()),
            StatusCode::NOT_FOUND => Err(AlertmanagerError::NoSuchSilence { id: id.to_string() }),
            s => Err(AlertmanagerError::Refused {
                status: s.as_u16(),
                detail: String::from_utf8_lossy(&bytes).trim().to_string(),
            }),
        }
    }
}
