//! OCI Distribution API client: just what a deploy needs — read a manifest as it is stored
//! (any of the four manifest media types, bytes untouched), learn a tag's digest, and put the
//! same bytes under another tag, so the digest is kept.
//!
//! Authentication follows the registry's challenge: an anonymous request first; on
//! `401 WWW-Authenticate: Basic` the configured user and password are sent; on
//! `401 WWW-Authenticate: Bearer realm=...,service=...` a token for the request's scope
//! (`repository:<name>:pull` or `pull,push`) is fetched from the realm (with the credentials,
//! when configured), cached until it expires, and sent as `Authorization: Bearer`.
//!
//! Every request here is idempotent (GET, HEAD, and a PUT of the same bytes under the same
//! tag), so connection errors, timeouts, 5xx and 429 (honouring `Retry-After`) are retried with
//! full-jitter backoff until `max_retries`; other answers are final. Every HTTP attempt is counted
//! in `registry_requests_total{method,status}`.
//!
//! Hand-written on reqwest rather than `oci-client`: that crate's raw manifest read does not
//! return the Content-Type the registry served, which a retag must send back unchanged; its
//! errors do not carry HTTP statuses (metrics, retry decisions); and its current release brings a
//! second reqwest major version into the build.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use reqwest::header::{
    ACCEPT, AUTHORIZATION, CONTENT_TYPE, HeaderMap, RETRY_AFTER, WWW_AUTHENTICATE,
};
use reqwest::{Method, StatusCode};
use sha2::{Digest as _, Sha256};
use tokio::sync::Mutex;
use url::Url;

use crate::gitlab::{describe, parse_retry_after, truncate};
use crate::metrics::Metrics;

pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const DOCKER_MANIFEST_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
/// Every manifest media type a deploy accepts (the registry answers MANIFEST_UNKNOWN for an OCI
/// image unless the `Accept` header lists the OCI types).
pub const MANIFEST_MEDIA_TYPES: [&str; 4] = [
    OCI_INDEX,
    OCI_MANIFEST,
    DOCKER_MANIFEST_LIST,
    DOCKER_MANIFEST,
];

/// Manifests larger than this are refused (the spec suggests registries accept at least 4 MiB).
const MAX_MANIFEST_BYTES: usize = 4 * 1024 * 1024;
const USER_AGENT_VALUE: &str = concat!("shepherd/", env!("CARGO_PKG_VERSION"));

/// How the client reaches the registry. `Debug` never shows the password.
#[derive(Clone)]
pub struct RegistrySettings {
    /// The registry's base URL; `/v2/` is added.
    pub base_url: Url,
    pub username: Option<String>,
    pub password: Option<String>,
    pub timeout: Duration,
    pub max_retries: u32,
    pub retry_base: Duration,
    pub retry_max: Duration,
}

impl RegistrySettings {
    /// Defaults: 30 s timeout, 5 retries from 500 ms up to 30 s, anonymous.
    pub fn new(base_url: Url) -> Self {
        Self {
            base_url,
            username: None,
            password: None,
            timeout: Duration::from_secs(30),
            max_retries: 5,
            retry_base: Duration::from_millis(500),
            retry_max: Duration::from_secs(30),
        }
    }
}

impl fmt::Debug for RegistrySettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RegistrySettings")
            .field("base_url", &self.base_url.as_str())
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("timeout", &self.timeout)
            .field("max_retries", &self.max_retries)
            .finish()
    }
}

/// A manifest exactly as the registry stores it.
#[derive(Clone, PartialEq, Eq)]
pub struct Manifest {
    pub bytes: Vec<u8>,
    /// The Content-Type it was served with (one of [`MANIFEST_MEDIA_TYPES`] for a registry that
    /// follows the spec); sent back unchanged when it is put under another tag.
    pub media_type: String,
    /// `sha256:<hex>` of `bytes`.
    pub digest: String,
}

impl fmt::Debug for Manifest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Manifest")
            .field("media_type", &self.media_type)
            .field("digest", &self.digest)
            .field("bytes", &self.bytes.len())
            .finish()
    }
}

/// `sha256:<hex>` of `bytes`: the digest of a manifest is that of its exact bytes.
pub fn sha256_digest(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RegistryError {
    /// The registry refused the credentials (401 after authenticating), or needs some and none
    /// are configured.
    #[error("the registry refused shepherd's credentials (401): {detail}")]
    Unauthorized { detail: String },
    /// 403: authenticated, but not allowed (often: no push right on the repository).
    #[error("the registry denied the request (403): {detail}")]
    Denied { detail: String },
    /// Another 4xx: the registry will not do this, however often it is asked.
    #[error("the registry refused {what} ({status}): {message}")]
    Refused {
        what: String,
        status: u16,
        message: String,
    },
    /// Retries exhausted on errors that may go away (connection, timeout, 5xx, 429).
    #[error("the registry is unavailable: {what} failed {attempts} times, last: {last}")]
    Unavailable {
        what: String,
        attempts: u32,
        last: String,
    },
    /// An answer that breaks the protocol (a digest that does not match, no media type, too big).
    #[error("the registry's answer to {what} is not usable: {detail}")]
    Invalid { what: String, detail: String },
    #[error("registry client configuration: {0}")]
    Config(String),
}

impl RegistryError {
    /// True when the same call may succeed later (the queue tries again).
    pub fn is_retryable(&self) -> bool {
        matches!(self, Self::Unavailable { .. })
    }

    /// One sentence a chat user can act on. Never contains the password.
    pub fn user_message(&self) -> String {
        match self {
            Self::Unauthorized { .. } => "the registry refused shepherd's credentials: check deploy.registry_username and the password in deploy.registry_password_env.".to_string(),
            Self::Denied { detail } => format!("the registry denied this ({detail}): shepherd's account may lack the push right on the repository."),
            Self::Refused { what, status, message } => format!("the registry refused {what} ({status}: {message})."),
            Self::Unavailable { what, attempts, last } => format!("the registry is unavailable ({what} failed {attempts} times, last: {last})."),
            Self::Invalid { what, detail } => format!("the registry's answer to {what} is not usable: {detail}."),
            Self::Config(detail) => format!("shepherd's registry client is misconfigured: {detail}."),
        }
    }
}

/// The registry client. Cheap to clone; clones share the connection pool and the token cache.
#[derive(Clone)]
pub struct Registry {
    inner: Arc<Inner>,
}

impl fmt::Debug for Registry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Registry")
            .field("base", &self.inner.base.as_str())
            .finish_non_exhaustive()
    }
}

struct Inner {
    http: reqwest::Client,
    /// `<base_url>/v2/`.
    base: Url,
    credentials: Option<(String, String)>,
    max_retries: u32,
    retry_base: Duration,
    retry_max: Duration,
    auth: Mutex<AuthState>,
    metrics: Arc<Metrics>,
}

#[derive(Default)]
struct AuthState {
    /// The registry asked for Basic credentials: send them up front from now on.
    basic: bool,
    /// Bearer tokens by scope, with when they stop being used.
    tokens: HashMap<String, (String, Instant)>,
}

/// What one request asks for.
struct Call<'a> {
    method: Method,
    url: Url,
    /// `repository:<name>:pull` or `...:pull,push`, for a Bearer token.
    scope: String,
    /// For messages and metrics: `manifest cki/herder:production`.
    what: &'a str,
    content_type: Option<&'a str>,
    body: Option<&'a [u8]>,
}

struct Reply {
    status: StatusCode,
    headers: HeaderMap,
    body: Vec<u8>,
}

enum Attempt {
    Done(Reply),
    Transient {
        detail: String,
        retry_after: Option<Duration>,
    },
    Fatal(RegistryError),
}

impl Registry {
    pub fn new(settings: RegistrySettings, metrics: Arc<Metrics>) -> Result<Self, RegistryError> {
        if !matches!(settings.base_url.scheme(), "http" | "https") {
            return Err(RegistryError::Config(format!(
                "{} is not an http(s) URL",
                settings.base_url
            )));
        }
        let mut base = settings.base_url.clone();
        base.set_query(None);
        base.set_fragment(None);
        let path = base.path().trim_end_matches('/').to_string();
        base.set_path(&format!("{path}/v2/"));
        let http = reqwest::Client::builder()
            .user_agent(USER_AGENT_VALUE)
            .timeout(settings.timeout)
            .connect_timeout(settings.timeout)
            .build()
            .map_err(|e| RegistryError::Config(format!("building the HTTP client: {e}")))?;
        let credentials = settings
            .username
            .clone()
            .map(|user| (user, settings.password.clone().unwrap_or_default()));
        Ok(Self {
            inner: Arc::new(Inner {
                http,
                base,
                credentials,
                max_retries: settings.max_retries,
                retry_base: settings.retry_base,
                retry_max: settings.retry_max,
                auth: Mutex::new(AuthState::default()),
                metrics,
            }),
        })
    }

    /// The manifest `reference` (a tag or a digest) of `repository`, as stored; `None` when the
    /// registry does not have it.
    pub async fn manifest(
        &self,
        repository: &str,
        reference: &str,
    ) -> Result<Option<Manifest>, RegistryError> {
        let what = format!("manifest {repository}:{reference}");
        let call = self.manifest_call(Method::GET, repository, reference, &what, false)?;
        let Some(reply) = self.execute(&call).await? else {
            return Ok(None);
        };
        if reply.body.len() > MAX_MANIFEST_BYTES {
            return Err(invalid(
                &what,
                format!("{} bytes is too large", reply.body.len()),
            ));
        }
        let digest = sha256_digest(&reply.body);
        if reference.starts_with("sha256:") && !reference.eq_ignore_ascii_case(&digest) {
            return Err(invalid(&what, format!("its bytes hash to {digest}")));
        }
        if let Some(served) = header(&reply.headers, "docker-content-digest")
            && served.starts_with("sha256:")
            && served != digest
        {
            return Err(invalid(
                &what,
                format!("it says its digest is {served}, but its bytes hash to {digest}"),
            ));
        }
        let media_type = match header(&reply.headers, CONTENT_TYPE.as_str()) {
            Some(t) if MANIFEST_MEDIA_TYPES.contains(&t.as_str()) => t,
            // Some registries serve JSON without the precise type: the manifest's own field.
            _ => embedded_media_type(&reply.body)
                .ok_or_else(|| invalid(&what, "it has no manifest media type".to_string()))?,
        };
        Ok(Some(Manifest {
            bytes: reply.body,
            media_type,
            digest,
        }))
    }

    /// The digest `reference` points at (HEAD), `None` when the registry does not have it.
    pub async fn digest(
        &self,
        repository: &str,
        reference: &str,
    ) -> Result<Option<String>, RegistryError> {
        let what = format!("manifest {repository}:{reference}");
        let call = self.manifest_call(Method::HEAD, repository, reference, &what, false)?;
        let Some(reply) = self.execute(&call).await? else {
            return Ok(None);
        };
        match header(&reply.headers, "docker-content-digest") {
            Some(d) if d.starts_with("sha256:") => Ok(Some(d)),
            // No digest header: read the manifest and hash it.
            _ => Ok(self
                .manifest(repository, reference)
                .await?
                .map(|m| m.digest)),
        }
    }

    /// Puts `manifest` (its exact bytes and media type) under `tag`; the registry must keep
    /// its digest.
    pub async fn put_manifest(
        &self,
        repository: &str,
        tag: &str,
        manifest: &Manifest,
    ) -> Result<(), RegistryError> {
        let what = format!("pointing {repository}:{tag} at {}", manifest.digest);
        let mut call = self.manifest_call(Method::PUT, repository, tag, &what, true)?;
        call.content_type = Some(&manifest.media_type);
        call.body = Some(&manifest.bytes);
        let reply = self
            .execute(&call)
            .await?
            .ok_or_else(|| RegistryError::Refused {
                what: what.clone(),
                status: 404,
                message: "the repository is unknown".to_string(),
            })?;
        if let Some(stored) = header(&reply.headers, "docker-content-digest")
            && stored.starts_with("sha256:")
            && stored != manifest.digest
        {
            return Err(invalid(
                &what,
                format!("it stored the manifest as {stored}"),
            ));
        }
        Ok(())
    }

    fn manifest_call<'a>(
        &self,
        method: Method,
        repository: &str,
        reference: &str,
        what: &'a str,
        push: bool,
    ) -> Result<Call<'a>, RegistryError> {
        let url = self
            .inner
            .base
            .join(&format!("{repository}/manifests/{reference}"))
            .map_err(|e| RegistryError::Config(format!("{repository}:{reference}: {e}")))?;
        let scope = format!(
            "repository:{repository}:{}",
            if push { "pull,push" } else { "pull" }
        );
        Ok(Call {
            method,
            url,
            scope,
            what,
            content_type: None,
            body: None,
        })
    }

    /// Runs `call` with authentication and retries. `None`: 404.
    async fn execute(&self, call: &Call<'_>) -> Result<Option<Reply>, RegistryError> {
        let inner = &self.inner;
        let mut attempt = 0u32;
        loop {
            attempt += 1;
            let (detail, retry_after) = match self.authenticated(call).await {
                Attempt::Done(reply) if reply.status == StatusCode::NOT_FOUND => return Ok(None),
                Attempt::Done(reply) => return Ok(Some(reply)),
                Attempt::Fatal(e) => return Err(e),
                Attempt::Transient {
                    detail,
                    retry_after,
                } => (detail, retry_after),
            };
            if attempt > inner.max_retries {
                tracing::warn!(what = call.what, attempts = attempt, %detail, "registry call failed; giving up");
                return Err(RegistryError::Unavailable {
                    what: call.what.to_string(),
                    attempts: attempt,
                    last: detail,
                });
            }
            let delay = retry_after.map_or_else(
                || crate::backoff::full_jitter(inner.retry_base, inner.retry_max, attempt),
                |d| d.min(inner.retry_max),
            );
            tracing::warn!(what = call.what, attempt, %detail, delay_ms = delay.as_millis() as u64, "registry call failed; retrying");
            tokio::time::sleep(delay).await;
        }
    }

    /// One attempt, answering the registry's authentication challenge once if it makes one.
    async fn authenticated(&self, call: &Call<'_>) -> Attempt {
        let auth = self.authorization(&call.scope).await;
        let first = self.send(call, auth.as_deref()).await;
        let Attempt::Done(reply) = &first else {
            return first;
        };
        if reply.status != StatusCode::UNAUTHORIZED {
            return classify(call, first);
        }
        let challenge = header(&reply.headers, WWW_AUTHENTICATE.as_str()).unwrap_or_default();
        let retry_with = match Challenge::parse(&challenge) {
            Some(Challenge::Basic) if self.inner.credentials.is_some() && auth.is_none() => {
                self.inner.auth.lock().await.basic = true;
                self.authorization(&call.scope).await
            }
            Some(Challenge::Bearer { realm, service }) => {
                match self.fetch_token(call, &realm, service.as_deref()).await {
                    Ok(token) => Some(format!("Bearer {token}")),
                    Err(attempt) => return attempt,
                }
            }
            _ => None,
        };
        match retry_with {
            Some(header) if auth.as_deref() != Some(header.as_str()) => {
                classify(call, self.send(call, Some(&header)).await)
            }
            _ => classify(call, first),
        }
    }

    /// The Authorization header to send for `scope` before any challenge: a cached token, or
    /// Basic credentials once the registry has asked for them.
    async fn authorization(&self, scope: &str) -> Option<String> {
        let mut state = self.inner.auth.lock().await;
        let now = Instant::now();
        state.tokens.retain(|_, (_, until)| *until > now);
        if let Some((token, _)) = state.tokens.get(scope) {
            return Some(format!("Bearer {token}"));
        }
        if state.basic {
            return self.inner.credentials.as_ref().map(|(u, p)| basic(u, p));
        }
        None
    }

    /// A Bearer token for the call's scope from `realm`.
    async fn fetch_token(
        &self,
        call: &Call<'_>,
        realm: &str,
        service: Option<&str>,
    ) -> Result<String, Attempt> {
        let mut url = Url::parse(realm).map_err(|e| {
            Attempt::Fatal(RegistryError::Unauthorized {
                detail: format!("the token realm {realm:?} is not a URL: {e}"),
            })
        })?;
        {
            let mut query = url.query_pairs_mut();
            if let Some(service) = service {
                query.append_pair("service", service);
            }
            query.append_pair("scope", &call.scope);
        }
        let mut request = self.inner.http.get(url);
        if let Some((user, password)) = &self.inner.credentials {
            request = request.basic_auth(user, Some(password));
        }
        let response = request.send().await;
        let label = match &response {
            Ok(r) => r.status().as_str().to_string(),
            Err(_) => "error".to_string(),
        };
        self.count("TOKEN", &label);
        let response = response.map_err(transport)?;
        let status = response.status();
        let body = response.bytes().await.map_err(transport)?;
        if status.is_server_error() || status == StatusCode::TOO_MANY_REQUESTS {
            return Err(Attempt::Transient {
                detail: format!("token request: HTTP {status}"),
                retry_after: None,
            });
        }
        if !status.is_success() {
            return Err(Attempt::Fatal(RegistryError::Unauthorized {
                detail: format!("the token service answered {status}: {}", error_text(&body)),
            }));
        }
        #[derive(serde::Deserialize)]
        struct TokenReply {
            token: Option<String>,
            access_token: Option<String>,
            expires_in: Option<u64>,
        }
        let reply: TokenReply = serde_json::from_slice(&body).map_err(|e| {
            Attempt::Fatal(invalid(
                "the token request",
                format!("unreadable answer: {e}"),
            ))
        })?;
        let token = reply
            .token
            .or(reply.access_token)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| {
                Attempt::Fatal(invalid(
                    "the token request",
                    "no token in the answer".into(),
                ))
            })?;
        // Spec default 60 s; stop using it a little before it expires.
        let lifetime = Duration::from_secs(reply.expires_in.unwrap_or(60).max(10) - 5);
        self.inner.auth.lock().await.tokens.insert(
            call.scope.clone(),
            (token.clone(), Instant::now() + lifetime),
        );
        Ok(token)
    }

    /// One HTTP request, counted.
    async fn send(&self, call: &Call<'_>, authorization: Option<&str>) -> Attempt {
        let mut request = self
            .inner
            .http
            .request(call.method.clone(), call.url.clone())
            .header(ACCEPT, MANIFEST_MEDIA_TYPES.join(", "));
        if let Some(value) = authorization {
            request = request.header(AUTHORIZATION, value);
        }
        if let (Some(ct), Some(body)) = (call.content_type, call.body) {
            request = request.header(CONTENT_TYPE, ct).body(body.to_vec());
        }
        let response = match request.send().await {
            Ok(r) => r,
            Err(e) => {
                self.count(call.method.as_str(), "error");
                return transport(e);
            }
        };
        let status = response.status();
        self.count(call.method.as_str(), status.as_str());
        let headers = response.headers().clone();
        let body = match response.bytes().await {
            Ok(b) => b.to_vec(),
            Err(e) if status.is_success() => return transport(e),
            Err(_) => Vec::new(),
        };
        Attempt::Done(Reply {
            status,
            headers,
            body,
        })
    }

    fn count(&self, method: &str, status: &str) {
        self.inner
            .metrics
            .registry_requests
            .with_label_values(&[method, status])
            .inc();
    }
}

/// Sorts a final answer: success and 404 are answers, 5xx/429 are worth another try.
fn classify(call: &Call<'_>, attempt: Attempt) -> Attempt {
    let Attempt::Done(reply) = attempt else {
        return attempt;
    };
    let status = reply.status;
    if status.is_success() || status == StatusCode::NOT_FOUND {
        // A 404 for a manifest is "not there"; NAME_UNKNOWN too.
        return Attempt::Done(reply);
    }
    let message = error_text(&reply.body);
    if status.is_server_error() || status == StatusCode::TOO_MANY_REQUESTS {
        let retry_after = reply
            .headers
            .get(RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| parse_retry_after(v, chrono::Utc::now()));
        return Attempt::Transient {
            detail: format!("HTTP {}: {message}", status.as_u16()),
            retry_after,
        };
    }
    Attempt::Fatal(match status {
        StatusCode::UNAUTHORIZED => RegistryError::Unauthorized { detail: message },
        StatusCode::FORBIDDEN => RegistryError::Denied { detail: message },
        _ => RegistryError::Refused {
            what: call.what.to_string(),
            status: status.as_u16(),
            message,
        },
    })
}

fn transport(e: reqwest::Error) -> Attempt {
    Attempt::Transient {
        detail: describe(&e.without_url()),
        retry_after: None,
    }
}

fn invalid(what: &str, detail: String) -> RegistryError {
    RegistryError::Invalid {
        what: what.to_string(),
        detail,
    }
}

fn basic(user: &str, password: &str) -> String {
    use base64::Engine as _;
    let raw = format!("{user}:{password}");
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(raw)
    )
}

fn header(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.split(';').next().unwrap_or(v).trim().to_string())
}

/// The registry's error body (`{"errors":[{"code":"MANIFEST_UNKNOWN","message":"..."}]}`) on one line.
fn error_text(body: &[u8]) -> String {
    #[derive(serde::Deserialize)]
    struct Errors {
        errors: Vec<ErrorEntry>,
    }
    #[derive(serde::Deserialize)]
    struct ErrorEntry {
        code: Option<String>,
        message: Option<String>,
    }
    if let Ok(errors) = serde_json::from_slice::<Errors>(body)
        && !errors.errors.is_empty()
    {
        let parts: Vec<String> = errors
            .errors
            .iter()
            .map(|e| match (&e.code, &e.message) {
                (Some(c), Some(m)) => format!("{c}: {m}"),
                (Some(c), None) => c.clone(),
                (None, Some(m)) => m.clone(),
                (None, None) => "unknown error".to_string(),
            })
            .collect();
        return truncate(&parts.join("; "), 300);
    }
    let text = String::from_utf8_lossy(body);
    let text = text.trim();
    if text.is_empty() {
        "no details".to_string()
    } else {
        truncate(text, 300)
    }
}

/// The `mediaType` a manifest names itself (Docker schema 2 always does; OCI usually does).
fn embedded_media_type(body: &[u8]) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct Head {
        #[serde(rename = "mediaType")]
        media_type: Option<String>,
    }
    let head: Head = serde_json::from_slice(body).ok()?;
    head.media_type
        .filter(|t| MANIFEST_MEDIA_TYPES.contains(&t.as_str()))
}

/// A `WWW-Authenticate` challenge, as far as shepherd answers it.
#[derive(Debug, PartialEq, Eq)]
enum Challenge {
    Basic,
    Bearer {
        realm: String,
        service: Option<String>,
    },
}

impl Challenge {
    /// `Bearer realm="https://auth/token",service="registry",scope="repository:x:pull"` or `Basic realm="..."`.
    fn parse(header: &str) -> Option<Self> {
        let header = header.trim();
        let (scheme, rest) = header.split_once(' ').unwrap_or((header, ""));
        if scheme.eq_ignore_ascii_case("basic") {
            return Some(Self::Basic);
        }
        if !scheme.eq_ignore_ascii_case("bearer") {
            return None;
        }
        let params = auth_params(rest);
        let realm = params.get("realm")?.clone();
        Some(Self::Bearer {
            realm,
            service: params.get("service").cloned(),
        })
    }
}

/// `key="value", key2=value2` (RFC 9110 auth-params; quoted strings may hold commas and `\"`).
fn auth_params(text: &str) -> HashMap<String, String> {
    let mut out = HashMap::new();
    let mut chars = text.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| *c == ',' || c.is_whitespace()) {
            chars.next();
        }
        let key: String = chars
            .by_ref()
            .take_while(|c| *c != '=')
            .collect::<String>()
            .trim()
            .to_ascii_lowercase();
        if key.is_empty() {
            return out;
        }
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        let mut value = String::new();
        if chars.peek() == Some(&'"') {
            chars.next();
            while let Some(c) = chars.next() {
                match c {
                    '\\' => {
                        if let Some(escaped) = chars.next() {
                            value.push(escaped);
                        }
                    }
                    '"' => break,
                    c => value.push(c),
                }
            }
        } else {
            while let Some(c) = chars.peek() {
                if *c == ',' {
                    break;
                }
                value.push(*c);
                chars.next();
            }
            value = value.trim().to_string();
        }
        out.insert(key, value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn challenges_are_read_with_quoted_commas() {
        assert_eq!(
            Challenge::parse(
                r#"Bearer realm="https://auth.example.org/token",service="registry.example.org",scope="repository:a/b:pull,push""#
            ),
            Some(Challenge::Bearer {
                realm: "https://auth.example.org/token".into(),
                service: Some("registry.example.org".into()),
            })
        );
        assert_eq!(
            Challenge::parse(r#"Basic realm="Registry Realm""#),
            Some(Challenge::Basic)
        );
        assert_eq!(
            Challenge::parse(r#"bearer realm=http://t/x , service = "s\"q""#),
            Some(Challenge::Bearer {
                realm: "http://t/x".into(),
                service: Some("s\"q".into()),
            })
        );
        assert_eq!(Challenge::parse("Bearer service=\"x\""), None);
        assert_eq!(Challenge::parse("Negotiate"), None);
        assert_eq!(Challenge::parse(""), None);
    }

    #[test]
    fn error_bodies_are_read_as_the_spec_writes_them() {
        assert_eq!(
            error_text(br#"{"errors":[{"code":"MANIFEST_UNKNOWN","message":"manifest unknown","detail":{}}]}"#),
            "MANIFEST_UNKNOWN: manifest unknown"
        );
        assert_eq!(error_text(b"  "), "no details");
        assert_eq!(error_text(b"boom"), "boom");
    }

    #[test]
    fn a_manifest_names_its_media_type() {
        assert_eq!(
            embedded_media_type(br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[]}"#),
            Some(OCI_INDEX.to_string())
        );
        assert_eq!(embedded_media_type(br#"{"mediaType":"text/html"}"#), None);
        assert_eq!(embedded_media_type(b"not json"), None);
    }

    #[test]
    fn digests_are_of_the_exact_bytes() {
        assert_eq!(
            sha256_digest(b""),
            "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }
}
