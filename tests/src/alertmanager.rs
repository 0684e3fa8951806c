//! A real Prometheus Alertmanager per test, a webhook receiver that records what it is sent, and
//! the Debian `alertmanager-irc-relay` (the peer shepherd's alert relay is benchmarked against).
//!
//! `Alertmanager::start` picks a free port on 127.0.0.1, writes `alertmanager.yml` into a
//! temporary folder and runs `prometheus-alertmanager` with clustering off
//! (`--cluster.listen-address=`, else it opens 0.0.0.0:9094). Readiness is awaited, never slept
//! for: `GET /-/ready` answers 200 (or the process exits, which is retried on another port when
//! the port was taken meanwhile). The process is killed when the `Alertmanager` is dropped; its
//! stdout and stderr go to `alertmanager.log` in its folder, and every panic message of this
//! module carries that log.
//!
//! Alertmanager facts this relies on (0.25, Debian package `prometheus-alertmanager`, checked
//! with `amtool check-config` and against the running server):
//! - a webhook receiver's bearer token is `http_config: {authorization: {type: Bearer,
//!   credentials: TOKEN}}` (the older `bearer_token: TOKEN` is accepted too, but not both);
//!   it arrives as `Authorization: Bearer TOKEN`;
//! - webhook bodies are version "4" (`payload-firing.json` in the test bed), the first one
//!   `group_wait` after a new group's first alert, a resolved one at the next `group_interval`;
//! - `POST /api/v2/alerts` takes `[{labels, annotations, startsAt, endsAt, generatorURL}]`; an
//!   alert whose `endsAt` has passed is resolved; `POST /api/v2/silences` answers
//!   `{"silenceID": ...}`; `DELETE /api/v2/silence/{id}` expires one (200 again if it already
//!   was); expired silences stay listed with `status.state = "expired"`.
//!
//! `IrcRelayPeer` runs `alertmanager-irc-relay --config F` (0.4.2) against a given IRC server.
//! Its config keys (from `/usr/share/doc/alertmanager-irc-relay/README.md`, the packaged
//! `/etc/alertmanager-irc-relay.yml` and the yaml tags in the binary): `http_host`, `http_port`,
//! `irc_host`, `irc_port`, `irc_host_password`, `irc_use_ssl` (default yes), `irc_verify_ssl`,
//! `irc_nickname`, `irc_nickname_password`, `irc_realname`, `irc_channels: [{name, password}]`,
//! `msg_template` (Go text/template over one alert, or over the whole webhook body when
//! `msg_once_per_alert_group`), `use_privmsg` (default: NOTICE), `alert_buffer_size`,
//! `nickserv_identify_patterns`. It expands `$VAR` anywhere in the file (so no `$` may appear in
//! the config: there is no escape). `POST /<channel without #>` relays a webhook body;
//! `GET /metrics` shows `irc_connected 1` once its IRC session is up. Alerts that arrive before
//! that are buffered, not dropped. Its IRC library (goirc) rate-limits what it sends itself, with
//! Hybrid's algorithm: 2 s per line plus 1/120 s per character, sleeping once that debt exceeds
//! 10 s; registration and JOIN use most of that allowance, so the first alert after a start
//! waits about 2.4 s ("irc.rateLimit(): Flood! Sleeping for ..." in its log) and a burst drains
//! at about one line per 2 s. It is not configurable: benchmarks must count it as the peer's.

use std::collections::BTreeMap;
use std::fs::OpenOptions;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize, Serializer};
use tokio::process::{Child, Command};
use tokio::sync::Notify;
use tokio::task::JoinHandle;

use crate::ircd::free_port;

/// How long a start (including retries on another port) may take.
const START_DEADLINE: Duration = Duration::from_secs(20);
/// Timeout of one HTTP request to Alertmanager or the relay.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// A binary: `$<env>`, else `name` on `PATH`, else `/usr/bin/<name>`; panics with the install
/// command when it is nowhere.
fn find_bin(env: &str, name: &str, package: &str) -> PathBuf {
    if let Ok(p) = std::env::var(env) {
        return PathBuf::from(p);
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    for dir in std::env::split_paths(&path).chain([PathBuf::from("/usr/bin")]) {
        let candidate = dir.join(name);
        if candidate.is_file() {
            return candidate;
        }
    }
    panic!(
        "{name} is not installed: `apt-get update && apt-get install -y {package}` (scripts/test does)"
    )
}

/// The Alertmanager binary: `$ALERTMANAGER_BIN`, else `prometheus-alertmanager` on `PATH`.
pub fn alertmanager_bin() -> PathBuf {
    find_bin(
        "ALERTMANAGER_BIN",
        "prometheus-alertmanager",
        "prometheus-alertmanager",
    )
}

/// The relay binary: `$ALERTMANAGER_IRC_RELAY_BIN`, else `alertmanager-irc-relay` on `PATH`.
pub fn irc_relay_bin() -> PathBuf {
    find_bin(
        "ALERTMANAGER_IRC_RELAY_BIN",
        "alertmanager-irc-relay",
        "alertmanager-irc-relay",
    )
}

/// An HTTP client for loopback servers (never through a proxy from the environment).
fn http_client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(REQUEST_TIMEOUT)
        .build()
        .expect("reqwest client")
}

/// A YAML double-quoted scalar (a JSON string is one).
fn yaml_str(s: &str) -> String {
    serde_json::to_string(s).expect("a string serializes")
}

/// An Alertmanager duration: `1s`, `1500ms`, `0s`.
pub fn am_duration(d: Duration) -> String {
    if d.subsec_millis() == 0 {
        format!("{}s", d.as_secs())
    } else {
        format!("{}ms", d.as_millis())
    }
}

/// RFC 3339 with milliseconds, as Alertmanager prints them.
fn rfc3339(t: &DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Millis, true)
}

fn ser_opt_time<S: Serializer>(t: &Option<DateTime<Utc>>, s: S) -> Result<S::Ok, S::Error> {
    match t {
        Some(t) => s.serialize_str(&rfc3339(t)),
        None => s.serialize_none(),
    }
}

fn ser_time<S: Serializer>(t: &DateTime<Utc>, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&rfc3339(t))
}

fn default_true() -> bool {
    true
}

// ---------------------------------------------------------------------------------------------
// Configuration

/// One receiver with one `webhook_configs` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReceiverConfig {
    pub name: String,
    pub url: String,
    /// Sent as `Authorization: Bearer <token>` (`http_config.authorization`).
    pub bearer_token: Option<String>,
    pub send_resolved: bool,
}

/// A child route of the root route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteConfig {
    pub receiver: String,
    /// Alertmanager matcher syntax, e.g. `severity="critical"`, `alertname=~"Disk.*"`.
    pub matchers: Vec<String>,
    /// `continue: true`: later sibling routes are tried too.
    pub continue_matching: bool,
}

/// What `Alertmanager::start_with` writes into `alertmanager.yml`. The root route sends to the
/// first receiver; `routes` are its children. `max_alerts` is left unset (all alerts are sent).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AlertmanagerOptions {
    pub receivers: Vec<ReceiverConfig>,
    pub routes: Vec<RouteConfig>,
    /// `['alertname']` by default; `['...']` groups by every label.
    pub group_by: Vec<String>,
    pub group_wait: Duration,
    pub group_interval: Duration,
    pub repeat_interval: Duration,
    /// How long an alert posted without `endsAt` stays firing.
    pub resolve_timeout: Duration,
}

impl AlertmanagerOptions {
    /// One receiver named `webhook` posting to `webhook_url` (bearer token if given, resolved
    /// notifications on); group by `alertname`, `group_wait` and `group_interval` 1 s,
    /// `repeat_interval` 1 h, `resolve_timeout` 5 min.
    pub fn new(webhook_url: &str, bearer_token: Option<&str>) -> AlertmanagerOptions {
        AlertmanagerOptions {
            receivers: vec![ReceiverConfig {
                name: "webhook".into(),
                url: webhook_url.into(),
                bearer_token: bearer_token.map(str::to_string),
                send_resolved: true,
            }],
            routes: Vec::new(),
            group_by: vec!["alertname".into()],
            group_wait: Duration::from_secs(1),
            group_interval: Duration::from_secs(1),
            repeat_interval: Duration::from_secs(3600),
            resolve_timeout: Duration::from_secs(300),
        }
    }

    /// Adds a receiver (resolved notifications on).
    pub fn receiver(mut self, name: &str, url: &str, bearer_token: Option<&str>) -> Self {
        self.receivers.push(ReceiverConfig {
            name: name.into(),
            url: url.into(),
            bearer_token: bearer_token.map(str::to_string),
            send_resolved: true,
        });
        self
    }

    /// Adds a child route to `receiver` for alerts matching every one of `matchers`.
    pub fn route(mut self, receiver: &str, matchers: &[&str], continue_matching: bool) -> Self {
        self.routes.push(RouteConfig {
            receiver: receiver.into(),
            matchers: matchers.iter().map(|m| m.to_string()).collect(),
            continue_matching,
        });
        self
    }

    pub fn group_by(mut self, labels: &[&str]) -> Self {
        self.group_by = labels.iter().map(|l| l.to_string()).collect();
        self
    }

    pub fn group_wait(mut self, d: Duration) -> Self {
        self.group_wait = d;
        self
    }

    pub fn group_interval(mut self, d: Duration) -> Self {
        self.group_interval = d;
        self
    }

    pub fn repeat_interval(mut self, d: Duration) -> Self {
        self.repeat_interval = d;
        self
    }

    pub fn resolve_timeout(mut self, d: Duration) -> Self {
        self.resolve_timeout = d;
        self
    }

    /// The `alertmanager.yml` text.
    pub fn render(&self) -> String {
        assert!(
            !self.receivers.is_empty(),
            "an Alertmanager config needs at least one receiver"
        );
        let list = |items: &[String]| {
            let quoted: Vec<String> = items.iter().map(|s| yaml_str(s)).collect();
            format!("[{}]", quoted.join(", "))
        };
        let mut y = String::new();
        y.push_str("# Written by shepherd-tests (tests/src/alertmanager.rs).\n");
        y.push_str("global:\n");
        y.push_str(&format!(
            "  resolve_timeout: {}\n",
            am_duration(self.resolve_timeout)
        ));
        y.push_str("route:\n");
        y.push_str(&format!(
            "  receiver: {}\n",
            yaml_str(&self.receivers[0].name)
        ));
        y.push_str(&format!("  group_by: {}\n", list(&self.group_by)));
        y.push_str(&format!("  group_wait: {}\n", am_duration(self.group_wait)));
        y.push_str(&format!(
            "  group_interval: {}\n",
            am_duration(self.group_interval)
        ));
        y.push_str(&format!(
            "  repeat_interval: {}\n",
            am_duration(self.repeat_interval)
        ));
        if !self.routes.is_empty() {
            y.push_str("  routes:\n");
            for r in &self.routes {
                y.push_str(&format!("    - receiver: {}\n", yaml_str(&r.receiver)));
                y.push_str(&format!("      matchers: {}\n", list(&r.matchers)));
                y.push_str(&format!("      continue: {}\n", r.continue_matching));
            }
        }
        y.push_str("receivers:\n");
        for r in &self.receivers {
            y.push_str(&format!("  - name: {}\n", yaml_str(&r.name)));
            y.push_str("    webhook_configs:\n");
            y.push_str(&format!("      - url: {}\n", yaml_str(&r.url)));
            y.push_str(&format!("        send_resolved: {}\n", r.send_resolved));
            if let Some(token) = &r.bearer_token {
                y.push_str("        http_config:\n");
                y.push_str("          authorization:\n");
                y.push_str("            type: Bearer\n");
                y.push_str(&format!("            credentials: {}\n", yaml_str(token)));
            }
        }
        y
    }
}

// ---------------------------------------------------------------------------------------------
// API types

/// An alert to post (`POST /api/v2/alerts`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AlertSpec {
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
    /// Unset: Alertmanager uses the time it receives the alert.
    #[serde(
        skip_serializing_if = "Option::is_none",
        serialize_with = "ser_opt_time"
    )]
    pub starts_at: Option<DateTime<Utc>>,
    /// Unset: firing until `resolve_timeout` passes without a repost. In the past: resolved.
    #[serde(
        skip_serializing_if = "Option::is_none",
        serialize_with = "ser_opt_time"
    )]
    pub ends_at: Option<DateTime<Utc>>,
    #[serde(rename = "generatorURL", skip_serializing_if = "Option::is_none")]
    pub generator_url: Option<String>,
}

impl AlertSpec {
    /// An alert with only its `alertname` label.
    pub fn new(alertname: &str) -> AlertSpec {
        AlertSpec::default().label("alertname", alertname)
    }

    pub fn label(mut self, name: &str, value: &str) -> Self {
        self.labels.insert(name.into(), value.into());
        self
    }

    pub fn annotation(mut self, name: &str, value: &str) -> Self {
        self.annotations.insert(name.into(), value.into());
        self
    }

    pub fn starts_at(mut self, t: DateTime<Utc>) -> Self {
        self.starts_at = Some(t);
        self
    }

    pub fn ends_at(mut self, t: DateTime<Utc>) -> Self {
        self.ends_at = Some(t);
        self
    }

    pub fn generator_url(mut self, url: &str) -> Self {
        self.generator_url = Some(url.into());
        self
    }

    /// The same alert (same labels, so the same fingerprint) ending now: posted, it resolves
    /// the firing one.
    pub fn resolved(&self) -> AlertSpec {
        self.clone().ends_at(Utc::now())
    }
}

/// One matcher of a silence (also used to create one).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Matcher {
    pub name: String,
    pub value: String,
    pub is_regex: bool,
    /// False for `!=` / `!~`.
    #[serde(default = "default_true")]
    pub is_equal: bool,
}

impl Matcher {
    /// `name="value"`.
    pub fn equal(name: &str, value: &str) -> Matcher {
        Matcher {
            name: name.into(),
            value: value.into(),
            is_regex: false,
            is_equal: true,
        }
    }

    /// `name=~"regex"`.
    pub fn regex(name: &str, regex: &str) -> Matcher {
        Matcher {
            name: name.into(),
            value: regex.into(),
            is_regex: true,
            is_equal: true,
        }
    }
}

/// `status` of an alert from `GET /api/v2/alerts`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AlertStatus {
    /// `active`, `suppressed` or `unprocessed`.
    pub state: String,
    #[serde(default)]
    pub silenced_by: Vec<String>,
    #[serde(default)]
    pub inhibited_by: Vec<String>,
}

/// A receiver name in an alert from `GET /api/v2/alerts`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct ReceiverName {
    pub name: String,
}

/// An alert as `GET /api/v2/alerts` lists it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Alert {
    pub labels: BTreeMap<String, String>,
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
    pub starts_at: DateTime<Utc>,
    pub ends_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub fingerprint: String,
    #[serde(rename = "generatorURL", default)]
    pub generator_url: String,
    pub status: AlertStatus,
    #[serde(default)]
    pub receivers: Vec<ReceiverName>,
}

/// `status` of a silence.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct SilenceStatus {
    /// `active`, `pending` or `expired`.
    pub state: String,
}

/// A silence as `GET /api/v2/silences` lists it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Silence {
    pub id: String,
    pub matchers: Vec<Matcher>,
    pub created_by: String,
    pub comment: String,
    pub starts_at: DateTime<Utc>,
    pub ends_at: DateTime<Utc>,
    #[serde(default)]
    pub updated_at: Option<DateTime<Utc>>,
    pub status: SilenceStatus,
}

/// The body of `POST /api/v2/silences`.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
struct NewSilence<'a> {
    matchers: &'a [Matcher],
    #[serde(serialize_with = "ser_time")]
    starts_at: DateTime<Utc>,
    #[serde(serialize_with = "ser_time")]
    ends_at: DateTime<Utc>,
    created_by: &'a str,
    comment: &'a str,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct SilenceCreated {
    #[serde(rename = "silenceID")]
    silence_id: String,
}

/// One alert in a webhook body.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WebhookAlert {
    /// `firing` or `resolved`.
    pub status: String,
    pub labels: BTreeMap<String, String>,
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
    pub starts_at: DateTime<Utc>,
    /// `0001-01-01T00:00:00Z` while firing.
    pub ends_at: DateTime<Utc>,
    #[serde(rename = "generatorURL", default)]
    pub generator_url: String,
    pub fingerprint: String,
}

/// A webhook body from Alertmanager (version "4").
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WebhookPayload {
    pub version: String,
    pub group_key: String,
    #[serde(default)]
    pub truncated_alerts: u64,
    /// `firing` if any alert fires, else `resolved`.
    pub status: String,
    pub receiver: String,
    #[serde(default)]
    pub group_labels: BTreeMap<String, String>,
    #[serde(default)]
    pub common_labels: BTreeMap<String, String>,
    #[serde(default)]
    pub common_annotations: BTreeMap<String, String>,
    #[serde(rename = "externalURL")]
    pub external_url: String,
    pub alerts: Vec<WebhookAlert>,
}

// ---------------------------------------------------------------------------------------------
// Processes

/// A child process whose stdout and stderr go to a log file.
struct LoggedProcess {
    child: Option<Child>,
    log_path: PathBuf,
}

impl LoggedProcess {
    fn spawn(bin: &Path, args: &[String], dir: &Path, log_path: PathBuf) -> Result<Self, String> {
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .map_err(|e| format!("open {}: {e}", log_path.display()))?;
        let err = log
            .try_clone()
            .map_err(|e| format!("clone log handle: {e}"))?;
        let child = Command::new(bin)
            .args(args)
            .current_dir(dir)
            .stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(err))
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| format!("cannot run {}: {e}", bin.display()))?;
        Ok(LoggedProcess {
            child: Some(child),
            log_path,
        })
    }

    /// `Some(status)` once the process has exited.
    fn exited(&mut self) -> Option<String> {
        match self.child.as_mut() {
            Some(child) => match child.try_wait() {
                Ok(Some(status)) => Some(status.to_string()),
                Ok(None) => None,
                Err(e) => Some(format!("unknown ({e})")),
            },
            None => Some("killed".into()),
        }
    }

    fn pid(&self) -> Option<u32> {
        self.child.as_ref().and_then(|c| c.id())
    }

    async fn kill(&mut self, what: &str) {
        if let Some(mut child) = self.child.take() {
            let _ = child.start_kill();
            let _ = child.wait().await;
            append_log(
                &self.log_path,
                &format!("=== shepherd-tests: {what} killed ==="),
            );
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }
}

impl Drop for LoggedProcess {
    fn drop(&mut self) {
        if let Some(child) = self.child.as_mut() {
            let _ = child.start_kill();
        }
    }
}

fn append_log(path: &Path, line: &str) {
    use std::io::Write;
    if let Ok(mut f) = OpenOptions::new().create(true).append(true).open(path) {
        let _ = writeln!(f, "{line}");
    }
}

/// Waits until `GET url` answers 200 with a body that `ready` accepts. Err as soon as the
/// process exits, `give_up` finds its log hopeless, or the deadline passes. HTTP readiness has no
/// push signal: the condition is re-checked every few milliseconds (growing to 100 ms).
async fn await_http_ready(
    proc_: &mut LoggedProcess,
    client: &reqwest::Client,
    url: &str,
    ready: impl Fn(&str) -> bool,
    give_up: impl Fn(&str) -> Option<String>,
    deadline: Instant,
) -> Result<(), String> {
    let mut pause = Duration::from_millis(5);
    let mut last = String::from("no answer yet");
    loop {
        if let Some(status) = proc_.exited() {
            return Err(format!("exited with {status} before it was ready ({last})"));
        }
        if let Some(reason) = give_up(&proc_.log()) {
            return Err(reason);
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(format!("not ready in {START_DEADLINE:?}: {last}"));
        }
        match tokio::time::timeout(left.min(REQUEST_TIMEOUT), client.get(url).send()).await {
            Ok(Ok(resp)) => {
                let status = resp.status();
                let body = resp.text().await.unwrap_or_default();
                if status.is_success() && ready(&body) {
                    return Ok(());
                }
                last = format!("GET {url}: {status}");
            }
            Ok(Err(e)) => last = format!("GET {url}: {e}"),
            Err(_) => last = format!("GET {url}: timed out"),
        }
        tokio::time::sleep(pause.min(deadline.saturating_duration_since(Instant::now()))).await;
        pause = (pause * 2).min(Duration::from_millis(100));
    }
}

// ---------------------------------------------------------------------------------------------
// Alertmanager

/// A running Alertmanager on 127.0.0.1.
pub struct Alertmanager {
    port: u16,
    options: AlertmanagerOptions,
    process: LoggedProcess,
    client: reqwest::Client,
    dir: tempfile::TempDir,
}

impl Alertmanager {
    /// Starts one whose every alert goes to `webhook_url` (with `Authorization: Bearer <token>`
    /// when `bearer_token` is given), with `AlertmanagerOptions::new`'s timings.
    pub async fn start(webhook_url: &str, bearer_token: Option<&str>) -> Alertmanager {
        Alertmanager::start_with(AlertmanagerOptions::new(webhook_url, bearer_token)).await
    }

    /// Starts one with `options` and waits until `GET /-/ready` answers.
    pub async fn start_with(options: AlertmanagerOptions) -> Alertmanager {
        let dir = tempfile::tempdir().expect("tempdir for alertmanager");
        let conf = dir.path().join("alertmanager.yml");
        let storage = dir.path().join("data");
        std::fs::create_dir_all(&storage).expect("alertmanager storage folder");
        std::fs::write(&conf, options.render()).expect("write alertmanager.yml");
        let log_path = dir.path().join("alertmanager.log");
        let client = http_client();
        let deadline = Instant::now() + START_DEADLINE;
        let mut errors = Vec::new();
        // A port found free can be taken before Alertmanager binds it: then it exits at once,
        // and the next attempt uses another port.
        for _ in 0..5 {
            let port = free_port();
            let url = format!("http://127.0.0.1:{port}");
            let args = vec![
                format!("--config.file={}", conf.display()),
                format!("--storage.path={}", storage.display()),
                format!("--web.listen-address=127.0.0.1:{port}"),
                format!("--web.external-url={url}"),
                "--cluster.listen-address=".to_string(),
            ];
            let mut process =
                LoggedProcess::spawn(&alertmanager_bin(), &args, dir.path(), log_path.clone())
                    .unwrap_or_else(|e| panic!("{e}"));
            let ready = await_http_ready(
                &mut process,
                &client,
                &format!("{url}/-/ready"),
                |_| true,
                |_| None,
                deadline,
            )
            .await;
            match ready {
                Ok(()) => {
                    return Alertmanager {
                        port,
                        options,
                        process,
                        client,
                        dir,
                    };
                }
                Err(e) => {
                    process.kill("alertmanager").await;
                    let log = process.log();
                    errors.push(format!("port {port}: {e}"));
                    if Instant::now() >= deadline || !log.contains("address already in use") {
                        break;
                    }
                }
            }
        }
        panic!(
            "alertmanager did not start: {}\n--- alertmanager.yml ---\n{}--- alertmanager log ---\n{}",
            errors.join("; "),
            options.render(),
            std::fs::read_to_string(&log_path).unwrap_or_default()
        )
    }

    /// `http://127.0.0.1:PORT` (also its `--web.external-url`, so the webhooks' `externalURL`).
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The options it was started with.
    pub fn options(&self) -> &AlertmanagerOptions {
        &self.options
    }

    /// The `alertmanager.yml` it runs with.
    pub fn config_text(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("alertmanager.yml")).unwrap_or_default()
    }

    /// The process id while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.process.pid()
    }

    /// Everything the process printed (stdout and stderr).
    pub fn log(&self) -> String {
        self.process.log()
    }

    /// SIGKILLs the server and reaps it. Idempotent.
    pub async fn kill(&mut self) {
        self.process.kill("alertmanager").await;
    }

    fn fail(&self, what: &str) -> ! {
        panic!("{what}\n--- alertmanager log ---\n{}", self.log())
    }

    /// Sends a request, returns the answer's status and body; panics (with the log) if there is
    /// no answer.
    async fn send(&self, req: reqwest::RequestBuilder, what: &str) -> (StatusCode, String) {
        let resp = match req.send().await {
            Ok(r) => r,
            Err(e) => self.fail(&format!("{what}: {e}")),
        };
        let status =
            StatusCode::from_u16(resp.status().as_u16()).unwrap_or(StatusCode::IM_A_TEAPOT);
        let body = resp.text().await.unwrap_or_default();
        (status, body)
    }

    /// Sends a request that must answer 200; returns the body.
    async fn send_ok(&self, req: reqwest::RequestBuilder, what: &str) -> String {
        let (status, body) = self.send(req, what).await;
        if status != StatusCode::OK {
            self.fail(&format!("{what}: HTTP {status}: {body}"));
        }
        body
    }

    fn parse<T: serde::de::DeserializeOwned>(&self, body: &str, what: &str) -> T {
        serde_json::from_str(body)
            .unwrap_or_else(|e| self.fail(&format!("{what}: cannot parse {e}: {body}")))
    }

    /// `POST /api/v2/alerts`; panics unless it answers 200.
    pub async fn post_alerts(&self, alerts: &[AlertSpec]) {
        let (status, body) = self.try_post_alerts(alerts).await;
        if status != StatusCode::OK {
            self.fail(&format!("POST /api/v2/alerts: HTTP {status}: {body}"));
        }
    }

    /// `POST /api/v2/alerts`, returning the status and body (for tests of rejected alerts).
    pub async fn try_post_alerts(&self, alerts: &[AlertSpec]) -> (StatusCode, String) {
        let req = self
            .client
            .post(format!("{}/api/v2/alerts", self.url()))
            .json(alerts);
        self.send(req, "POST /api/v2/alerts").await
    }

    /// Posts `alerts` again ending now (`AlertSpec::resolved`): they resolve, and a resolved
    /// notification follows at the next `group_interval`.
    pub async fn resolve_alerts(&self, alerts: &[AlertSpec]) {
        let resolved: Vec<AlertSpec> = alerts.iter().map(AlertSpec::resolved).collect();
        self.post_alerts(&resolved).await;
    }

    /// `GET /api/v2/alerts`: active, silenced and inhibited alerts (not resolved ones).
    pub async fn alerts(&self) -> Vec<Alert> {
        let req = self.client.get(format!("{}/api/v2/alerts", self.url()));
        let body = self.send_ok(req, "GET /api/v2/alerts").await;
        self.parse(&body, "GET /api/v2/alerts")
    }

    /// `GET /api/v2/silences`: every silence, expired ones included.
    pub async fn silences(&self) -> Vec<Silence> {
        let req = self.client.get(format!("{}/api/v2/silences", self.url()));
        let body = self.send_ok(req, "GET /api/v2/silences").await;
        self.parse(&body, "GET /api/v2/silences")
    }

    /// `POST /api/v2/silences`: a silence from now for `duration`; returns its id.
    pub async fn create_silence(
        &self,
        matchers: &[Matcher],
        duration: Duration,
        created_by: &str,
        comment: &str,
    ) -> String {
        let now = Utc::now();
        let ends_at = now
            + chrono::Duration::from_std(duration)
                .unwrap_or_else(|e| panic!("silence duration {duration:?}: {e}"));
        let new = NewSilence {
            matchers,
            starts_at: now,
            ends_at,
            created_by,
            comment,
        };
        let req = self
            .client
            .post(format!("{}/api/v2/silences", self.url()))
            .json(&new);
        let body = self.send_ok(req, "POST /api/v2/silences").await;
        self.parse::<SilenceCreated>(&body, "POST /api/v2/silences")
            .silence_id
    }

    /// `DELETE /api/v2/silence/{id}`: expires it (it stays listed, `status.state = "expired"`).
    pub async fn expire_silence(&self, id: &str) {
        let req = self
            .client
            .delete(format!("{}/api/v2/silence/{id}", self.url()));
        self.send_ok(req, &format!("DELETE /api/v2/silence/{id}"))
            .await;
    }
}

// ---------------------------------------------------------------------------------------------
// Webhook receiver

/// One request the `WebhookReceiver` got.
#[derive(Debug, Clone)]
pub struct WebhookRequest {
    /// The path (`/alerts`).
    pub path: String,
    /// The `Authorization` header, if any.
    pub authorization: Option<String>,
    pub content_type: Option<String>,
    pub body: Bytes,
    /// When it arrived.
    pub at: Instant,
}

impl WebhookRequest {
    pub fn body_text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The body as JSON; panics with the body if it is not.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("webhook body is not JSON ({e}): {}", self.body_text()))
    }

    /// The body as an Alertmanager webhook payload; panics with the body if it is not one.
    pub fn payload(&self) -> WebhookPayload {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "webhook body is not an Alertmanager payload ({e}): {}",
                self.body_text()
            )
        })
    }
}

#[derive(Default)]
struct Recorded {
    requests: Mutex<Vec<WebhookRequest>>,
    changed: Notify,
}

impl Recorded {
    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<WebhookRequest>> {
        self.requests.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// An HTTP server on 127.0.0.1 that records every POST (any path) and answers 200; other
/// methods get 405 and are not recorded. Stopped when dropped.
pub struct WebhookReceiver {
    addr: std::net::SocketAddr,
    recorded: Arc<Recorded>,
    server: JoinHandle<()>,
}

async fn record(
    State(recorded): State<Arc<Recorded>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> StatusCode {
    if method != Method::POST {
        return StatusCode::METHOD_NOT_ALLOWED;
    }
    let header = |name: &str| {
        headers
            .get(name)
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
    };
    let request = WebhookRequest {
        path: uri.path().to_string(),
        authorization: header("authorization"),
        content_type: header("content-type"),
        body,
        at: Instant::now(),
    };
    recorded.lock().push(request);
    recorded.changed.notify_waiters();
    StatusCode::OK
}

impl WebhookReceiver {
    /// Binds 127.0.0.1 on a port the OS picks and starts serving.
    pub async fn start() -> WebhookReceiver {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the webhook receiver on 127.0.0.1");
        let addr = listener.local_addr().expect("webhook receiver address");
        let recorded = Arc::new(Recorded::default());
        let app = Router::new().fallback(record).with_state(recorded.clone());
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        WebhookReceiver {
            addr,
            recorded,
            server,
        }
    }

    /// `http://127.0.0.1:PORT/alerts`.
    pub fn url(&self) -> String {
        self.url_for("/alerts")
    }

    /// `http://127.0.0.1:PORT<path>` (`path` starts with `/`).
    pub fn url_for(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Every POST so far, in arrival order.
    pub fn received(&self) -> Vec<WebhookRequest> {
        self.recorded.lock().clone()
    }

    /// The POSTs so far to `path`.
    pub fn received_at(&self, path: &str) -> Vec<WebhookRequest> {
        self.recorded
            .lock()
            .iter()
            .filter(|r| r.path == path)
            .cloned()
            .collect()
    }

    /// Waits until `pred` holds for the requests received so far; false after `timeout`.
    /// Woken by each new request, never polling. `pred` runs under the receiver's lock.
    pub async fn wait_until(
        &self,
        timeout: Duration,
        pred: impl Fn(&[WebhookRequest]) -> bool,
    ) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let changed = self.recorded.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            if pred(&self.recorded.lock()) {
                return true;
            }
            if tokio::time::timeout_at(deadline, changed).await.is_err() {
                return pred(&self.recorded.lock());
            }
        }
    }

    /// Waits until at least `n` POSTs arrived and returns all of them; panics with what did
    /// arrive after `timeout`.
    pub async fn wait_for(&self, n: usize, timeout: Duration) -> Vec<WebhookRequest> {
        if !self.wait_until(timeout, |r| r.len() >= n).await {
            panic!(
                "the webhook receiver got {} of {n} POSTs within {timeout:?}:\n{}",
                self.recorded.lock().len(),
                self.transcript()
            );
        }
        self.received()
    }

    /// Every request, one per line (path, Authorization, body), for failure messages.
    pub fn transcript(&self) -> String {
        self.recorded
            .lock()
            .iter()
            .map(|r| {
                format!(
                    "  POST {} auth={:?} {}\n",
                    r.path,
                    r.authorization,
                    r.body_text()
                )
            })
            .collect()
    }
}

impl Drop for WebhookReceiver {
    fn drop(&mut self) {
        self.server.abort();
    }
}

// ---------------------------------------------------------------------------------------------
// alertmanager-irc-relay

/// What `IrcRelayPeer::start_with` writes into the relay's config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IrcRelayOptions {
    pub irc_host: String,
    pub irc_port: u16,
    pub nickname: String,
    /// Channels joined at start (`#ops`); the relay also joins a channel it is asked to post to.
    pub channels: Vec<String>,
    /// Go text/template over one alert (`.Labels`, `.Annotations`, `.Status`, ...), or over the
    /// webhook body when `msg_once_per_alert_group`. No `$` (the relay expands env vars).
    pub msg_template: String,
    pub msg_once_per_alert_group: bool,
    /// PRIVMSG (true) or the relay's default, NOTICE (false).
    pub use_privmsg: bool,
}

/// `start`'s message template: one line per alert.
pub const RELAY_MSG_TEMPLATE: &str =
    "Alert {{ .Labels.alertname }} on {{ .Labels.instance }} is {{ .Status }}";

impl IrcRelayOptions {
    /// Plain-text IRC, PRIVMSG, one message per alert with `RELAY_MSG_TEMPLATE`.
    pub fn new(irc_host: &str, irc_port: u16, nickname: &str, channels: &[&str]) -> Self {
        IrcRelayOptions {
            irc_host: irc_host.into(),
            irc_port,
            nickname: nickname.into(),
            channels: channels.iter().map(|c| c.to_string()).collect(),
            msg_template: RELAY_MSG_TEMPLATE.into(),
            msg_once_per_alert_group: false,
            use_privmsg: true,
        }
    }

    /// The relay's config text for `http_port`.
    pub fn render(&self, http_port: u16) -> String {
        let yes_no = |b: bool| if b { "yes" } else { "no" };
        let mut y = String::new();
        y.push_str("# Written by shepherd-tests (tests/src/alertmanager.rs).\n");
        y.push_str("http_host: 127.0.0.1\n");
        y.push_str(&format!("http_port: {http_port}\n"));
        y.push_str(&format!("irc_host: {}\n", yaml_str(&self.irc_host)));
        y.push_str(&format!("irc_port: {}\n", self.irc_port));
        y.push_str("irc_use_ssl: no\n");
        y.push_str(&format!("irc_nickname: {}\n", yaml_str(&self.nickname)));
        y.push_str("irc_realname: \"shepherd-tests peer relay\"\n");
        if self.channels.is_empty() {
            y.push_str("irc_channels: []\n");
        } else {
            y.push_str("irc_channels:\n");
            for c in &self.channels {
                y.push_str(&format!("  - name: {}\n", yaml_str(c)));
            }
        }
        y.push_str(&format!(
            "msg_once_per_alert_group: {}\n",
            yes_no(self.msg_once_per_alert_group)
        ));
        y.push_str(&format!("use_privmsg: {}\n", yes_no(self.use_privmsg)));
        y.push_str(&format!("msg_template: {}\n", yaml_str(&self.msg_template)));
        assert!(
            !y.contains('$'),
            "alertmanager-irc-relay expands $VARS in its config and has no escape; \
             keep `$` out of it:\n{y}"
        );
        y
    }
}

/// A running `alertmanager-irc-relay`, connected to its IRC server.
pub struct IrcRelayPeer {
    http_port: u16,
    options: IrcRelayOptions,
    process: LoggedProcess,
    client: reqwest::Client,
    dir: tempfile::TempDir,
}

impl IrcRelayPeer {
    /// Starts a relay on the plain-text IRC server at `irc_host:irc_port` with
    /// `IrcRelayOptions::new`'s settings.
    pub async fn start(
        irc_host: &str,
        irc_port: u16,
        nickname: &str,
        channels: &[&str],
    ) -> IrcRelayPeer {
        IrcRelayPeer::start_with(IrcRelayOptions::new(irc_host, irc_port, nickname, channels)).await
    }

    /// Starts a relay with `options` and waits until its HTTP port answers and its IRC session
    /// is up (`irc_connected 1` in `GET /metrics`).
    pub async fn start_with(options: IrcRelayOptions) -> IrcRelayPeer {
        let dir = tempfile::tempdir().expect("tempdir for alertmanager-irc-relay");
        let conf = dir.path().join("relay.yml");
        let log_path = dir.path().join("relay.log");
        let client = http_client();
        let deadline = Instant::now() + START_DEADLINE;
        let mut errors = Vec::new();
        for _ in 0..5 {
            let http_port = free_port();
            std::fs::write(&conf, options.render(http_port)).expect("write relay.yml");
            let args = vec!["--config".to_string(), conf.display().to_string()];
            let mut process =
                LoggedProcess::spawn(&irc_relay_bin(), &args, dir.path(), log_path.clone())
                    .unwrap_or_else(|e| panic!("{e}"));
            // When its port is taken the relay logs this and keeps running without HTTP.
            let give_up = |log: &str| {
                log.lines()
                    .find(|l| l.contains("Could not start http server"))
                    .map(str::to_string)
            };
            let ready = await_http_ready(
                &mut process,
                &client,
                &format!("http://127.0.0.1:{http_port}/metrics"),
                |body| body.lines().any(|l| l.trim() == "irc_connected 1"),
                give_up,
                deadline,
            )
            .await;
            match ready {
                Ok(()) => {
                    return IrcRelayPeer {
                        http_port,
                        options,
                        process,
                        client,
                        dir,
                    };
                }
                Err(e) => {
                    process.kill("alertmanager-irc-relay").await;
                    let port_taken = give_up(&process.log()).is_some();
                    errors.push(format!("http port {http_port}: {e}"));
                    if Instant::now() >= deadline || !port_taken {
                        break;
                    }
                }
            }
        }
        panic!(
            "alertmanager-irc-relay did not start: {}\n--- relay.yml ---\n{}--- relay log ---\n{}",
            errors.join("; "),
            std::fs::read_to_string(&conf).unwrap_or_default(),
            std::fs::read_to_string(&log_path).unwrap_or_default()
        )
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.http_port)
    }

    /// Where Alertmanager posts alerts for `channel` (`#ops` or `ops`): the path is the channel
    /// name without `#`.
    pub fn webhook_url(&self, channel: &str) -> String {
        format!("{}/{}", self.url(), channel.trim_start_matches('#'))
    }

    /// The nick it was configured with (it appends `^` if that one is taken).
    pub fn nickname(&self) -> &str {
        &self.options.nickname
    }

    pub fn options(&self) -> &IrcRelayOptions {
        &self.options
    }

    /// The config file it runs with.
    pub fn config_text(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("relay.yml")).unwrap_or_default()
    }

    /// `POST` `body` to `webhook_url(channel)` as Alertmanager would; returns the HTTP status
    /// (200 when accepted, 422 for a body it cannot decode).
    pub async fn post_webhook(&self, channel: &str, body: &str) -> u16 {
        let resp = self
            .client
            .post(self.webhook_url(channel))
            .header("content-type", "application/json")
            .body(body.to_string())
            .send()
            .await
            .unwrap_or_else(|e| {
                panic!(
                    "POST {}: {e}\n--- relay log ---\n{}",
                    self.webhook_url(channel),
                    self.log()
                )
            });
        resp.status().as_u16()
    }

    /// Its Prometheus metrics text (`irc_sent_msgs`, `webhook_handled_alerts`, ...).
    pub async fn metrics(&self) -> String {
        let url = format!("{}/metrics", self.url());
        match self.client.get(&url).send().await {
            Ok(resp) => resp.text().await.unwrap_or_default(),
            Err(e) => panic!("GET {url}: {e}\n--- relay log ---\n{}", self.log()),
        }
    }

    pub fn pid(&self) -> Option<u32> {
        self.process.pid()
    }

    /// Everything the relay printed.
    pub fn log(&self) -> String {
        self.process.log()
    }

    /// SIGKILLs the relay and reaps it. Idempotent.
    pub async fn kill(&mut self) {
        self.process.kill("alertmanager-irc-relay").await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_render_in_alertmanager_units() {
        assert_eq!(am_duration(Duration::from_secs(1)), "1s");
        assert_eq!(am_duration(Duration::from_millis(1500)), "1500ms");
        assert_eq!(am_duration(Duration::ZERO), "0s");
        assert_eq!(am_duration(Duration::from_secs(3600)), "3600s");
    }

    #[test]
    fn config_has_bearer_authorization_and_routes() {
        let text = AlertmanagerOptions::new("http://127.0.0.1:1/a", Some("t0k\"en"))
            .receiver("pager", "http://127.0.0.1:1/p", None)
            .route("pager", &["severity=\"critical\""], true)
            .group_by(&["alertname", "job"])
            .render();
        assert!(text.contains("  receiver: \"webhook\"\n"), "{text}");
        assert!(
            text.contains("  group_by: [\"alertname\", \"job\"]\n"),
            "{text}"
        );
        assert!(text.contains("  group_wait: 1s\n"), "{text}");
        assert!(
            text.contains("          authorization:\n            type: Bearer\n            credentials: \"t0k\\\"en\"\n"),
            "{text}"
        );
        assert_eq!(text.matches("authorization:").count(), 1, "{text}");
        assert!(
            text.contains(
                "      matchers: [\"severity=\\\"critical\\\"\"]\n      continue: true\n"
            ),
            "{text}"
        );
        assert!(!text.contains("max_alerts"), "{text}");
    }

    #[test]
    fn relay_config_turns_tls_off_and_privmsg_on() {
        let text = IrcRelayOptions::new("127.0.0.1", 6667, "amrelay", &["#ops"]).render(8000);
        for line in [
            "http_host: 127.0.0.1",
            "http_port: 8000",
            "irc_port: 6667",
            "irc_use_ssl: no",
            "use_privmsg: yes",
            "  - name: \"#ops\"",
            "msg_once_per_alert_group: no",
        ] {
            assert!(text.lines().any(|l| l == line), "no {line:?} in:\n{text}");
        }
    }

    #[test]
    fn alert_specs_serialize_as_the_v2_api_wants() {
        let t = DateTime::parse_from_rfc3339("2026-01-02T03:04:05.678901Z")
            .expect("time")
            .with_timezone(&Utc);
        let v = serde_json::to_value(
            AlertSpec::new("DiskFull")
                .annotation("summary", "s")
                .starts_at(t)
                .generator_url("http://g/"),
        )
        .expect("serializes");
        assert_eq!(
            v,
            serde_json::json!({
                "labels": {"alertname": "DiskFull"},
                "annotations": {"summary": "s"},
                "startsAt": "2026-01-02T03:04:05.678Z",
                "generatorURL": "http://g/",
            })
        );
    }
}
