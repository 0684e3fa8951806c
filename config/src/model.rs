//! The typed configuration: one struct per TOML section, every key with a default so that an empty
//! file is a valid configuration. Unknown keys are refused everywhere (`deny_unknown_fields`), so a typo
//! is an error instead of a silently ignored setting. Secrets are never keys of their own: a `*_env` /
//! `*_file` pair names where a secret comes from, and loading stores the result in a private slot that
//! only an accessor exposes (and that serializes as `<redacted>`).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use url::Url;

use crate::secret::{Secret, SecretSlot, SecretUrl};

/// The whole configuration of one shepherd process.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// `false` (the default) turns every write to GitLab, the registry and Alertmanager into a logged
    /// "would do X" reply.
    pub production: bool,
    pub bot: BotConfig,
    pub store: StoreConfig,
    pub queue: QueueConfig,
    pub http: HttpConfig,
    pub gitlab: GitlabConfig,
    pub retrigger: RetriggerConfig,
    pub watcher: WatcherConfig,
    pub console: ConsoleConfig,
    /// Identities -> people -> groups.
    pub people: Vec<Person>,
    /// Command name -> groups allowed to run it; `"*"` means everyone.
    pub permissions: BTreeMap<String, Vec<String>>,
    pub rate_limits: RateLimitsConfig,
    pub log: LogConfig,
    /// The IRC front end; absent means it is not started.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub irc: Option<IrcConfig>,
    /// The Matrix front end; absent means it is not started.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub matrix: Option<MatrixConfig>,
    /// Commands in GitLab merge-request comments (the Note Hook); absent means not enabled.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gitlab_comments: Option<GitlabCommentsConfig>,
    /// Reference pipelines for `test` / `canary`.
    pub canary: CanaryConfig,
    /// Alertmanager webhook, alert routes, silences; absent means not enabled.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub alerts: Option<AlertsConfig>,
    /// Deploying merge-request images to environments; absent means not enabled.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub deploy: Option<DeployConfig>,
    /// Retrying jobs that failed for known infrastructure reasons; absent means not enabled.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub herder: Option<HerderConfig>,
    /// `[[failover]]`: named switches of CI/CD variables.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub failover: Vec<FailoverSwitch>,
    #[serde(skip)]
    pub(crate) warnings: Vec<String>,
}

/// `[bot]`: how the bot is named and addressed.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct BotConfig {
    /// IRC nick, Matrix display name, GitLab @username it answers to.
    pub name: String,
    /// Command prefix in IRC and Matrix.
    pub prefix: String,
}

impl Default for BotConfig {
    fn default() -> Self {
        BotConfig {
            name: "shepherd".to_owned(),
            prefix: "!".to_owned(),
        }
    }
}

/// `[store]`: the database.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct StoreConfig {
    /// `sqlite:PATH` / `sqlite://PATH` or `postgres://...` / `postgresql://...`; a password in it is
    /// never printed.
    pub url: SecretUrl,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            url: SecretUrl::new("sqlite://shepherd.db"),
        }
    }
}

impl StoreConfig {
    /// Whether the store is SQLite (else PostgreSQL).
    pub fn is_sqlite(&self) -> bool {
        self.url.expose().starts_with("sqlite:")
    }
}

/// `[queue]`: the durable work queue.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct QueueConfig {
    /// `store` (embedded in the store) or `amqp://...` (RabbitMQ); a password in it is never printed.
    pub url: SecretUrl,
    /// Attempts before an item is parked as dead (>= 1).
    pub max_attempts: u32,
    /// How long a worker holds an item before another may take it.
    pub lease_seconds: u64,
    /// First retry delay; doubles per attempt, with jitter.
    pub retry_base_ms: u64,
    /// Longest retry delay.
    pub retry_max_ms: u64,
    /// Concurrent workers (>= 1).
    pub workers: u32,
    /// How often an idle worker looks for work (embedded queue).
    pub poll_interval_ms: u64,
    /// Finished requests, delivered messages and ended watches older than this are deleted
    /// (dead requests are kept until someone looks at them).
    pub retention_days: u64,
}

impl Default for QueueConfig {
    fn default() -> Self {
        QueueConfig {
            url: SecretUrl::new("store"),
            max_attempts: 8,
            lease_seconds: 60,
            retry_base_ms: 1000,
            retry_max_ms: 300_000,
            workers: 4,
            poll_interval_ms: 250,
            retention_days: 14,
        }
    }
}

impl QueueConfig {
    /// Whether the queue lives in the store (else it is AMQP at `url`).
    pub fn is_store(&self) -> bool {
        self.url.expose() == "store"
    }
    pub fn lease(&self) -> Duration {
        Duration::from_secs(self.lease_seconds)
    }
    pub fn retry_base(&self) -> Duration {
        Duration::from_millis(self.retry_base_ms)
    }
    pub fn retry_max(&self) -> Duration {
        Duration::from_millis(self.retry_max_ms)
    }
    pub fn poll_interval(&self) -> Duration {
        Duration::from_millis(self.poll_interval_ms)
    }
}

/// `[http]`: the HTTP server (webhooks, /metrics, health, /api/v1/say).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct HttpConfig {
    pub listen: SocketAddr,
    /// Variable holding the bearer token of `POST /api/v1/say`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub api_token_env: Option<String>,
    /// File holding the bearer token of `POST /api/v1/say`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub api_token_file: Option<PathBuf>,
    #[serde(
        skip_deserializing,
        skip_serializing_if = "SecretSlot::is_not_configured"
    )]
    pub(crate) api_token: SecretSlot,
    /// A client must send a request's headers within this time (also the idle time allowed
    /// between requests on a kept-alive connection); else the connection is closed.
    pub header_timeout_secs: u64,
    /// A request's whole body must arrive within this time (else 408), and a client must take
    /// what the server writes without stalling it this long (else the connection is cut).
    pub body_timeout_secs: u64,
    /// Connections served at once; more wait to be accepted until one closes.
    pub max_connections: u32,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            api_token_env: None,
            api_token_file: None,
            api_token: SecretSlot::NotConfigured,
            header_timeout_secs: 10,
            body_timeout_secs: 30,
            max_connections: 512,
        }
    }
}

impl HttpConfig {
    pub fn header_timeout(&self) -> Duration {
        Duration::from_secs(self.header_timeout_secs)
    }
    pub fn body_timeout(&self) -> Duration {
        Duration::from_secs(self.body_timeout_secs)
    }
    /// Bearer token for `POST /api/v1/say`; `None` means the endpoint refuses every request.
    pub fn api_token(&self) -> Option<&Secret> {
        self.api_token.get()
    }
    pub fn set_api_token(&mut self, token: Option<Secret>) {
        self.api_token = slot(token);
    }
}

/// `[gitlab]`: the GitLab instance and its API client.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct GitlabConfig {
    /// Base URL of the instance (http or https).
    pub url: Url,
    /// Variable holding the API token (`""` for none).
    pub token_env: String,
    /// File holding the API token; wins over `token_env` when set.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token_file: Option<PathBuf>,
    #[serde(
        skip_deserializing,
        skip_serializing_if = "SecretSlot::is_not_configured"
    )]
    pub(crate) token: SecretSlot,
    /// Project (`group/project`) that bare pipeline ids refer to.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub default_project: Option<String>,
    /// Client-side rate limit.
    pub requests_per_minute: u32,
    /// Per-request timeout.
    pub timeout_ms: u64,
    /// Retries of a failed request (network error, 5xx, 429).
    pub max_retries: u32,
    pub retry_base_ms: u64,
    pub retry_max_ms: u64,
}

impl Default for GitlabConfig {
    fn default() -> Self {
        GitlabConfig {
            url: Url::parse("https://gitlab.com").unwrap_or_else(|_| unreachable!("constant URL")),
            token_env: "GITLAB_TOKEN".to_owned(),
            token_file: None,
            token: SecretSlot::NotConfigured,
            default_project: None,
            requests_per_minute: 600,
            timeout_ms: 10_000,
            max_retries: 5,
            retry_base_ms: 500,
            retry_max_ms: 30_000,
        }
    }
}

impl GitlabConfig {
    /// The API token; `None` when its source is not set (see [`Config::warnings`]).
    pub fn token(&self) -> Option<&Secret> {
        self.token.get()
    }
    pub fn set_token(&mut self, token: Option<Secret>) {
        self.token = slot(token);
    }
    pub fn timeout(&self) -> Duration {
        Duration::from_millis(self.timeout_ms)
    }
    pub fn retry_base(&self) -> Duration {
        Duration::from_millis(self.retry_base_ms)
    }
    pub fn retry_max(&self) -> Duration {
        Duration::from_millis(self.retry_max_ms)
    }
}

/// `[retrigger]`: how retriggered pipelines are marked and found.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct RetriggerConfig {
    /// Variables set on every retriggered pipeline (they mark it as a retrigger).
    pub marker_variables: BTreeMap<String, String>,
    /// How far back to look for a pipeline shepherd already created for a request.
    pub lookback_minutes: u64,
}

impl Default for RetriggerConfig {
    fn default() -> Self {
        RetriggerConfig {
            marker_variables: BTreeMap::new(),
            lookback_minutes: 60,
        }
    }
}

impl RetriggerConfig {
    pub fn lookback(&self) -> Duration {
        Duration::from_secs(self.lookback_minutes.saturating_mul(60))
    }
}

/// `[watcher]`: how watched pipelines are polled.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct WatcherConfig {
    /// First poll interval; it grows while nothing changes.
    pub poll_interval_ms: u64,
    /// Longest poll interval.
    pub max_poll_interval_ms: u64,
}

impl Default for WatcherConfig {
    fn default() -> Self {
        WatcherConfig {
            poll_interval_ms: 30_000,
            max_poll_interval_ms: 300_000,
        }
    }
}

impl WatcherConfig {
    pub fn poll_interval(&self) -> Duration {
        Duration::from_millis(self.poll_interval_ms)
    }
    pub fn max_poll_interval(&self) -> Duration {
        Duration::from_millis(self.max_poll_interval_ms)
    }
}

/// `[console]`: the terminal front end.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct ConsoleConfig {
    /// Identity of the console user; loading fills in `console:$USER` when it is absent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub identity: Option<String>,
    /// Room name that console replies and origins use.
    pub room: String,
}

impl Default for ConsoleConfig {
    fn default() -> Self {
        ConsoleConfig {
            identity: None,
            room: "console".to_owned(),
        }
    }
}

impl ConsoleConfig {
    /// The console identity (`console:<user>`); after [`crate::load`] it is always set.
    pub fn identity(&self) -> &str {
        self.identity.as_deref().unwrap_or("console:unknown")
    }
}

/// One `[[people]]` entry.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Person {
    pub name: String,
    /// Glob patterns over identities: `irc:alice`, `console:*`, `gitlab:*`.
    #[serde(default)]
    pub identities: Vec<String>,
    #[serde(default)]
    pub groups: Vec<String>,
}

/// `[rate_limits]`: commands accepted per minute.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct RateLimitsConfig {
    /// Per person (or per unknown identity).
    pub per_identity_per_minute: u32,
    pub per_room_per_minute: u32,
}

impl Default for RateLimitsConfig {
    fn default() -> Self {
        RateLimitsConfig {
            per_identity_per_minute: 30,
            per_room_per_minute: 120,
        }
    }
}

/// `[log]`: tracing output.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    /// An `EnvFilter` directive (`info`, `shepherd_core=debug,info`); `SHEPHERD_LOG` may override it
    /// at runtime (that is up to the binary).
    pub filter: String,
    pub format: LogFormat,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            filter: "info".to_owned(),
            format: LogFormat::Text,
        }
    }
}

/// Log line format.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// `[irc]`: the IRC front end.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct IrcConfig {
    /// Host name or address (required).
    pub server: String,
    #[serde(default = "default_irc_port")]
    pub port: u16,
    #[serde(default = "default_true")]
    pub tls: bool,
    /// Nick; loading fills in `bot.name` when it is absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nick: Option<String>,
    /// Channels to join (`#ops`).
    #[serde(default)]
    pub channels: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sasl_password_env: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sasl_password_file: Option<PathBuf>,
    #[serde(
        skip_deserializing,
        skip_serializing_if = "SecretSlot::is_not_configured"
    )]
    pub(crate) sasl_password: SecretSlot,
    /// Lines sent at once before pacing starts.
    #[serde(default = "default_flood_burst")]
    pub flood_burst: u32,
    /// Lines per second after the burst.
    #[serde(default = "default_flood_rate")]
    pub flood_rate: f64,
    /// The server password (PASS), from a variable or a file; optional.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_env: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_file: Option<PathBuf>,
    #[serde(
        skip_deserializing,
        skip_serializing_if = "SecretSlot::is_not_configured"
    )]
    pub(crate) password: SecretSlot,
    /// SASL account name (default: the nick).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sasl_account: Option<String>,
    /// NickServ password: `IDENTIFY` when SASL is not used, `GHOST` of whoever holds the nick.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nickserv_password_env: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nickserv_password_file: Option<PathBuf>,
    #[serde(
        skip_deserializing,
        skip_serializing_if = "SecretSlot::is_not_configured"
    )]
    pub(crate) nickserv_password: SecretSlot,
    /// Nicks to use while the nick is taken (default: nick + "_", nick + "__").
    #[serde(default)]
    pub alt_nicks: Vec<String>,
    /// Channel keys, from a variable holding `#chan=key,#other=key2`; optional.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub channel_keys_env: Option<String>,
    #[serde(
        skip_deserializing,
        skip_serializing_if = "SecretSlot::is_not_configured"
    )]
    pub(crate) channel_keys: SecretSlot,
    /// Replies as PRIVMSG (default) or NOTICE.
    #[serde(default)]
    pub reply_with: IrcReplyKind,
    /// Accept a server certificate that does not verify (self-signed test servers only).
    #[serde(default)]
    pub tls_accept_invalid_certs: bool,
    /// PING the server after this many quiet seconds; no PONG within as long again means
    /// the connection is dead.
    #[serde(default = "default_ping_interval")]
    pub ping_interval_secs: u32,
    /// Longest wait between reconnection attempts (exponential backoff with jitter up to this).
    #[serde(default = "default_reconnect_max")]
    pub reconnect_max_secs: u64,
    /// A connection that lasted this long resets the reconnection backoff.
    #[serde(default = "default_stable_after")]
    pub stable_after_secs: u64,
    /// Longest wait between rejoin attempts after a KICK.
    #[serde(default = "default_rejoin_max")]
    pub rejoin_max_secs: u64,
    /// How often to try to get the nick back while on an alternate.
    #[serde(default = "default_regain_interval")]
    pub regain_interval_secs: u64,
    /// How long to wait for a WHOIS answer when a sender's account is not known.
    #[serde(default = "default_whois_timeout")]
    pub whois_timeout_ms: u64,
    /// How long SASL may take before registration goes on without it.
    #[serde(default = "default_sasl_timeout")]
    pub sasl_timeout_secs: u64,
    /// Sends of one message that the server refused or never acknowledged before it is parked
    /// (kept and listed by `shepherd outbox parked`) so the messages behind it go on.
    #[serde(default = "default_max_send_attempts")]
    pub max_send_attempts: u32,
    /// Lines one message may take on IRC; a longer one (an alert annotation of a megabyte) is cut
    /// there with a note of how much was left out, so it cannot hold a channel for an hour.
    #[serde(default = "default_max_lines_per_message")]
    pub max_lines_per_message: u32,
    /// CTCP requests (VERSION, PING, TIME, ...) answered per minute, from everyone together;
    /// the rest are ignored. Answers go through the same flood pacing as every other line.
    #[serde(default = "default_ctcp_per_minute")]
    pub ctcp_per_minute: u32,
}

/// `[matrix]`: the Matrix front end (client-server API, end-to-end encryption).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct MatrixConfig {
    /// The client-server API base URL (required): `https://matrix.example.org`.
    pub homeserver: Url,
    /// The bot's account (required): `@shepherd:example.org`.
    pub user: String,
    /// The password, for the first login only: the session is kept in `store_path` after it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_env: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_file: Option<PathBuf>,
    #[serde(
        skip_deserializing,
        skip_serializing_if = "SecretSlot::is_not_configured"
    )]
    pub(crate) password: SecretSlot,
    /// The session (access token, device id), the sync position and the state and end-to-end
    /// crypto store. Keep it across restarts: a fresh login is a new device.
    #[serde(default = "default_matrix_store")]
    pub store_path: PathBuf,
    /// Passphrase that encrypts the state and crypto store at rest; optional.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub store_passphrase_env: Option<String>,
    #[serde(
        skip_deserializing,
        skip_serializing_if = "SecretSlot::is_not_configured"
    )]
    pub(crate) store_passphrase: SecretSlot,
    /// Rooms joined at start, by id (`!abc:example.org`) or alias (`#ops:example.org`); alert
    /// and say targets must be among these.
    #[serde(default)]
    pub rooms: Vec<String>,
    /// Invites from users matching these globs (`@*:example.org`) are accepted; others refused.
    #[serde(default)]
    pub autojoin: Vec<String>,
    /// The bot's display name (default `bot.name`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub display_name: Option<String>,
    /// The name of the bot's device, shown to people verifying it.
    #[serde(default = "default_device_name")]
    pub device_name: String,
    /// Commands that arrived while the bot was away are run if younger than this; older ones
    /// get one reply saying they were skipped.
    #[serde(default = "default_catch_up_minutes")]
    pub catch_up_minutes: u64,
    /// Whose devices get the keys of the bot's encrypted messages.
    #[serde(default)]
    pub encrypt_for: MatrixEncryptFor,
    /// Longest wait between attempts to log in, sync or join after failures (exponential
    /// backoff with jitter up to this).
    #[serde(default = "default_reconnect_max")]
    pub reconnect_max_secs: u64,
    /// How long one sync request waits on the server for news.
    #[serde(default = "default_sync_timeout")]
    pub sync_timeout_secs: u64,
    /// Sends of one message that the homeserver refused before it is parked (kept and listed by
    /// `shepherd outbox parked`) so the messages behind it go on.
    #[serde(default = "default_max_send_attempts")]
    pub max_send_attempts: u32,
    /// The longest message body, in bytes; a longer one is cut there with a note saying so
    /// (Matrix events are at most 64 KiB, the HTML twin included).
    #[serde(default = "default_matrix_max_bytes")]
    pub max_message_bytes: u32,
}

/// Whose devices an encrypted message from the bot is readable on.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum MatrixEncryptFor {
    /// Every device of every member, verified or not (what mainstream clients do).
    #[default]
    AllDevices,
    /// Only devices their owner cross-signed (a member without cross-signing reads nothing).
    CrossSigned,
}

fn default_matrix_store() -> PathBuf {
    PathBuf::from("matrix-store")
}
fn default_device_name() -> String {
    "shepherd".to_owned()
}
fn default_catch_up_minutes() -> u64 {
    10
}
fn default_sync_timeout() -> u64 {
    30
}
fn default_matrix_max_bytes() -> u32 {
    30_000
}

impl MatrixConfig {
    /// The password for the first login, if one is configured.
    pub fn password(&self) -> Option<&Secret> {
        self.password.get()
    }
    pub fn set_password(&mut self, password: Option<Secret>) {
        self.password = slot(password);
    }
    /// The store passphrase, if any.
    pub fn store_passphrase(&self) -> Option<&Secret> {
        self.store_passphrase.get()
    }
    /// The display name; after [`crate::load`] it is always set (default `bot.name`).
    pub fn display_name(&self) -> &str {
        self.display_name.as_deref().unwrap_or("shepherd")
    }
    pub fn catch_up(&self) -> Duration {
        Duration::from_secs(self.catch_up_minutes.saturating_mul(60))
    }
    /// Whether `room` (an id or an alias) is one of `rooms`. Ids compare exactly, aliases
    /// without case.
    pub fn has_room(&self, room: &str) -> bool {
        self.rooms.iter().any(|r| {
            if r.starts_with('#') {
                r.eq_ignore_ascii_case(room)
            } else {
                r == room
            }
        })
    }
}

/// How the IRC front end sends replies.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum IrcReplyKind {
    #[default]
    Privmsg,
    Notice,
}

fn default_ping_interval() -> u32 {
    60
}
fn default_reconnect_max() -> u64 {
    300
}
fn default_stable_after() -> u64 {
    60
}
fn default_rejoin_max() -> u64 {
    60
}
fn default_regain_interval() -> u64 {
    30
}
fn default_whois_timeout() -> u64 {
    5000
}
fn default_sasl_timeout() -> u64 {
    10
}
fn default_max_send_attempts() -> u32 {
    3
}
fn default_max_lines_per_message() -> u32 {
    200
}
fn default_ctcp_per_minute() -> u32 {
    6
}

fn default_irc_port() -> u16 {
    6697
}
fn default_true() -> bool {
    true
}
fn default_flood_burst() -> u32 {
    4
}
fn default_flood_rate() -> f64 {
    1.0
}

impl Default for IrcConfig {
    /// Every default; `server` is empty, which loading refuses (it is required in a file).
    fn default() -> Self {
        IrcConfig {
            server: String::new(),
            port: default_irc_port(),
            tls: true,
            nick: None,
            channels: Vec::new(),
            sasl_password_env: None,
            sasl_password_file: None,
            sasl_password: SecretSlot::NotConfigured,
            flood_burst: default_flood_burst(),
            flood_rate: default_flood_rate(),
            password_env: None,
            password_file: None,
            password: SecretSlot::NotConfigured,
            sasl_account: None,
            nickserv_password_env: None,
            nickserv_password_file: None,
            nickserv_password: SecretSlot::NotConfigured,
            alt_nicks: Vec::new(),
            channel_keys_env: None,
            channel_keys: SecretSlot::NotConfigured,
            reply_with: IrcReplyKind::Privmsg,
            tls_accept_invalid_certs: false,
            ping_interval_secs: default_ping_interval(),
            reconnect_max_secs: default_reconnect_max(),
            stable_after_secs: default_stable_after(),
            rejoin_max_secs: default_rejoin_max(),
            regain_interval_secs: default_regain_interval(),
            whois_timeout_ms: default_whois_timeout(),
            sasl_timeout_secs: default_sasl_timeout(),
            max_send_attempts: default_max_send_attempts(),
            max_lines_per_message: default_max_lines_per_message(),
            ctcp_per_minute: default_ctcp_per_minute(),
        }
    }
}

impl IrcConfig {
    /// The nick; after [`crate::load`] it is always set (default `bot.name`).
    pub fn nick(&self) -> &str {
        self.nick.as_deref().unwrap_or("shepherd")
    }
    /// SASL password; `None` means no SASL.
    pub fn sasl_password(&self) -> Option<&Secret> {
        self.sasl_password.get()
    }
    pub fn set_sasl_password(&mut self, password: Option<Secret>) {
        self.sasl_password = slot(password);
    }
    /// The server password; `None` means none is sent.
    pub fn password(&self) -> Option<&Secret> {
        self.password.get()
    }
    pub fn set_password(&mut self, password: Option<Secret>) {
        self.password = slot(password);
    }
    /// The NickServ password, if any.
    pub fn nickserv_password(&self) -> Option<&Secret> {
        self.nickserv_password.get()
    }
    pub fn set_nickserv_password(&mut self, password: Option<Secret>) {
        self.nickserv_password = slot(password);
    }
    /// The SASL account: `sasl_account`, else the nick.
    pub fn sasl_account(&self) -> &str {
        self.sasl_account.as_deref().unwrap_or_else(|| self.nick())
    }
    /// Alternate nicks: the configured ones, else nick + "_" and nick + "__".
    pub fn alternate_nicks(&self) -> Vec<String> {
        if self.alt_nicks.is_empty() {
            vec![format!("{}_", self.nick()), format!("{}__", self.nick())]
        } else {
            self.alt_nicks.clone()
        }
    }
    /// Channel keys by channel, parsed from the `channel_keys_env` variable.
    pub fn channel_keys(&self) -> BTreeMap<String, String> {
        parse_channel_keys(self.channel_keys.get().map(Secret::expose).unwrap_or(""))
    }
    pub fn set_channel_keys(&mut self, keys: Option<Secret>) {
        self.channel_keys = slot(keys);
    }
}

/// `#chan=key,#other=key2` -> {#chan: key, #other: key2}; malformed entries are skipped.
pub fn parse_channel_keys(text: &str) -> BTreeMap<String, String> {
    text.split(',')
        .filter_map(|pair| {
            let (chan, key) = pair.trim().split_once('=')?;
            let (chan, key) = (chan.trim(), key.trim());
            (!chan.is_empty() && !key.is_empty()).then(|| (chan.to_string(), key.to_string()))
        })
        .collect()
}

/// `[gitlab_comments]`: commands in merge-request comments.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct GitlabCommentsConfig {
    /// Variable holding the webhook secret (checked against `X-Gitlab-Token`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub webhook_secret_env: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub webhook_secret_file: Option<PathBuf>,
    #[serde(
        skip_deserializing,
        skip_serializing_if = "SecretSlot::is_not_configured"
    )]
    pub(crate) webhook_secret: SecretSlot,
    /// Lowest GitLab access level on the project that may run commands from a comment.
    pub min_access_level: AccessLevel,
    /// Webhook bodies larger than this are refused with 413.
    pub max_body_bytes: usize,
    /// Per-project settings, by project path (`group/project`).
    pub projects: BTreeMap<String, CommentProjectConfig>,
}

impl Default for GitlabCommentsConfig {
    fn default() -> Self {
        GitlabCommentsConfig {
            webhook_secret_env: None,
            webhook_secret_file: None,
            webhook_secret: SecretSlot::NotConfigured,
            min_access_level: AccessLevel::default(),
            max_body_bytes: 2 * 1024 * 1024,
            projects: BTreeMap::new(),
        }
    }
}

/// `[gitlab_comments.projects."group/project"]`: settings for one project's merge requests.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct CommentProjectConfig {
    /// Overrides `gitlab_comments.min_access_level` for this project.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub min_access_level: Option<AccessLevel>,
    /// Post a comment on every newly opened merge request saying how to ask for testing.
    pub welcome: bool,
}

impl GitlabCommentsConfig {
    /// The access level a commenter needs on `project` (matched case-insensitively, as GitLab does).
    pub fn min_access_level_for(&self, project: &str) -> AccessLevel {
        self.project(project)
            .and_then(|p| p.min_access_level)
            .unwrap_or(self.min_access_level)
    }
    /// The settings of `project`, if it has any.
    pub fn project(&self, project: &str) -> Option<&CommentProjectConfig> {
        self.projects
            .iter()
            .find(|(path, _)| path.eq_ignore_ascii_case(project))
            .map(|(_, p)| p)
    }
    /// The webhook secret; `None` means every webhook is refused.
    pub fn webhook_secret(&self) -> Option<&Secret> {
        self.webhook_secret.get()
    }
    pub fn set_webhook_secret(&mut self, secret: Option<Secret>) {
        self.webhook_secret = slot(secret);
    }
}

/// GitLab project access levels, lowest first.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum AccessLevel {
    Guest,
    Reporter,
    #[default]
    Developer,
    Maintainer,
    Owner,
}

impl AccessLevel {
    /// The name GitLab shows (`Developer`).
    pub fn title(self) -> &'static str {
        match self {
            AccessLevel::Guest => "Guest",
            AccessLevel::Reporter => "Reporter",
            AccessLevel::Developer => "Developer",
            AccessLevel::Maintainer => "Maintainer",
            AccessLevel::Owner => "Owner",
        }
    }
    /// GitLab's numeric access level (10, 20, 30, 40, 50).
    pub fn gitlab_value(self) -> u32 {
        match self {
            AccessLevel::Guest => 10,
            AccessLevel::Reporter => 20,
            AccessLevel::Developer => 30,
            AccessLevel::Maintainer => 40,
            AccessLevel::Owner => 50,
        }
    }
}

/// `[canary]`: the reference pipelines that `test` (in an MR comment) and `canary <mr>` re-run
/// with a merge request's code swapped in.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct CanaryConfig {
    /// One entry per project whose merge requests can be tested.
    pub projects: Vec<CanaryProjectConfig>,
}

impl CanaryConfig {
    /// The canary settings of `project` (matched case-insensitively, as GitLab does).
    pub fn project(&self, project: &str) -> Option<&CanaryProjectConfig> {
        self.projects
            .iter()
            .find(|p| p.project.eq_ignore_ascii_case(project))
    }
}

/// One `[[canary.projects]]` entry.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CanaryProjectConfig {
    /// The project whose merge requests are tested (`group/pipeline-definition`).
    pub project: String,
    /// Variables that point a reference pipeline at the merge request's code: name -> template.
    /// Templates are MiniJinja (`{{ mr.ref }}`); see the shipped config for the placeholders.
    #[serde(default)]
    pub variables: BTreeMap<String, String>,
    /// The pipelines re-run for every test, one per tree.
    pub references: Vec<CanaryReference>,
}

/// One reference pipeline: a listed pipeline id, or the latest successful pipeline of a branch.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CanaryReference {
    /// The tree (kernel tree, configuration) this reference stands for; shown in the summary.
    pub tree: String,
    /// The project the reference pipeline runs in.
    pub project: String,
    /// A pipeline id ...
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pipeline: Option<u64>,
    /// ... or the latest successful pipeline on this branch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub branch: Option<String>,
}

/// `[alerts]`: Alertmanager webhook, routes and silences.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct AlertsConfig {
    /// Variable holding the bearer token of `POST /hooks/alertmanager`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub webhook_token_env: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub webhook_token_file: Option<PathBuf>,
    #[serde(
        skip_deserializing,
        skip_serializing_if = "SecretSlot::is_not_configured"
    )]
    pub(crate) webhook_token: SecretSlot,
    /// The user name a basic-auth webhook must give (its password is the token); any name when unset.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub webhook_username: Option<String>,
    /// Alertmanager API, for `alerts`, `silence` and `unsilence`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub alertmanager_url: Option<Url>,
    /// Where alerts go: the first route whose matchers all match (and the next ones while a
    /// matching route says `continue`); alerts no route takes go to `default_targets`.
    pub routes: Vec<AlertRoute>,
    /// Rooms for alerts that no route takes (none: such alerts are only counted and logged).
    pub default_targets: Vec<String>,
    /// MiniJinja template of one firing alert's line (`alert`, `notification` are in scope).
    pub firing_template: String,
    /// MiniJinja template of one resolved alert's line.
    pub resolved_template: String,
    /// `alert`: one line per alert; `group`: one line per notification and room, from
    /// `group_template`.
    pub lines: AlertLines,
    /// MiniJinja template of a group's line (`notification`, `alerts`, `count`, `group`,
    /// `names` are in scope).
    pub group_template: String,
    /// A group with more alerts than this for one room is shown as one summary line ...
    pub storm_threshold: usize,
    /// ... followed by the first this-many alerts.
    pub storm_shown: usize,
    /// A notification Alertmanager repeats within this many minutes is not shown again.
    pub dedup_window_minutes: u64,
    /// Webhook bodies larger than this are refused with 413.
    pub max_body_bytes: usize,
}

/// How many lines a notification becomes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum AlertLines {
    /// One line per alert (a storm becomes a summary and the first few).
    #[default]
    Alert,
    /// One line per notification and room.
    Group,
}

/// The default line of a group: severity, state and count, the group, the alert names, a link.
pub const DEFAULT_GROUP_TEMPLATE: &str = "{{ notification | severity }} {{ count }} alert(s) {{ notification.status }} in {{ group }}: {{ names }} {{ notification.alerts_url }}";

/// The default line of a firing alert: severity, name, summary, where, and links.
pub const DEFAULT_FIRING_TEMPLATE: &str = "{{ alert | severity }} {{ alert.labels.alertname }}{% if alert.labels.instance %} on {{ alert.labels.instance }}{% endif %}: {{ alert.annotations.summary or alert.annotations.description or '' }} {{ alert.generator_url }} silence: {{ alert.silence_url }}";
/// The default line of a resolved alert.
pub const DEFAULT_RESOLVED_TEMPLATE: &str = "{{ alert | severity }} {{ alert.labels.alertname }}{% if alert.labels.instance %} on {{ alert.labels.instance }}{% endif %}: {{ alert.annotations.summary or alert.annotations.description or '' }}";

impl Default for AlertsConfig {
    fn default() -> Self {
        AlertsConfig {
            webhook_token_env: None,
            webhook_token_file: None,
            webhook_token: SecretSlot::NotConfigured,
            webhook_username: None,
            alertmanager_url: None,
            routes: Vec::new(),
            default_targets: Vec::new(),
            firing_template: DEFAULT_FIRING_TEMPLATE.to_string(),
            resolved_template: DEFAULT_RESOLVED_TEMPLATE.to_string(),
            lines: AlertLines::Alert,
            group_template: DEFAULT_GROUP_TEMPLATE.to_string(),
            storm_threshold: 10,
            storm_shown: 3,
            dedup_window_minutes: 240,
            max_body_bytes: 16 * 1024 * 1024,
        }
    }
}

impl AlertsConfig {
    /// The webhook bearer token; `None` means every webhook is refused.
    pub fn webhook_token(&self) -> Option<&Secret> {
        self.webhook_token.get()
    }
    pub fn set_webhook_token(&mut self, token: Option<Secret>) {
        self.webhook_token = slot(token);
    }
}

/// One `[[alerts.routes]]` entry.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AlertRoute {
    /// Alertmanager matchers (`severity=~"critical|page"`); all must match. Empty matches everything.
    #[serde(default)]
    pub matchers: Vec<String>,
    /// Rooms: `<front end>:<room>` (`irc:#ops`, `matrix:!roomid:server`).
    pub targets: Vec<String>,
    /// Go on to the next routes after this one matched (Alertmanager's `continue`).
    #[serde(default, rename = "continue")]
    pub continue_matching: bool,
}

/// `[deploy]`: merge-request images deployed to environments by registry retag (or a pipeline).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DeployConfig {
    /// The OCI Distribution API base URL (`https://registry.example.org`; `http://` allowed).
    pub registry: Url,
    /// The registry user; the password or token comes from `registry_password_env`/`_file`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub registry_username: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub registry_password_env: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub registry_password_file: Option<PathBuf>,
    #[serde(
        default,
        skip_deserializing,
        skip_serializing_if = "SecretSlot::is_not_configured"
    )]
    pub(crate) registry_password: SecretSlot,
    /// Per registry request, from connecting to the end of the body.
    #[serde(default = "default_registry_timeout_ms")]
    pub registry_timeout_ms: u64,
    /// Retries of a registry request after the first attempt (connection errors, 5xx, 429).
    #[serde(default = "default_registry_max_retries")]
    pub registry_max_retries: u32,
    #[serde(default = "default_registry_retry_base_ms")]
    pub registry_retry_base_ms: u64,
    #[serde(default = "default_registry_retry_max_ms")]
    pub registry_retry_max_ms: u64,
    /// How long a `confirm <code>` stays valid.
    #[serde(default = "default_confirm_timeout")]
    pub confirm_timeout_seconds: u64,
    /// Groups whose members may lift a lock someone else holds (`unlock <env>`).
    #[serde(default = "default_lock_breakers")]
    pub lock_breakers: Vec<String>,
    /// What can be deployed.
    pub services: Vec<DeployService>,
    /// Where it can be deployed; the first is the default of `deploy`.
    pub environments: Vec<DeployEnvironment>,
}

fn default_registry_timeout_ms() -> u64 {
    30_000
}
fn default_registry_max_retries() -> u32 {
    5
}
fn default_registry_retry_base_ms() -> u64 {
    500
}
fn default_registry_retry_max_ms() -> u64 {
    30_000
}
fn default_confirm_timeout() -> u64 {
    300
}
fn default_lock_breakers() -> Vec<String> {
    vec!["admins".to_owned()]
}
fn default_mr_tag() -> String {
    "mr-{iid}".to_owned()
}

impl DeployConfig {
    /// The registry password or token; `None` means anonymous (or the username alone).
    pub fn registry_password(&self) -> Option<&Secret> {
        self.registry_password.get()
    }
    pub fn set_registry_password(&mut self, password: Option<Secret>) {
        self.registry_password = slot(password);
    }
    pub fn registry_timeout(&self) -> Duration {
        Duration::from_millis(self.registry_timeout_ms)
    }
    pub fn registry_retry_base(&self) -> Duration {
        Duration::from_millis(self.registry_retry_base_ms)
    }
    pub fn registry_retry_max(&self) -> Duration {
        Duration::from_millis(self.registry_retry_max_ms)
    }
    pub fn confirm_timeout(&self) -> Duration {
        Duration::from_secs(self.confirm_timeout_seconds)
    }
    /// The service named `name` (without case).
    pub fn service(&self, name: &str) -> Option<&DeployService> {
        self.services
            .iter()
            .find(|s| s.name.eq_ignore_ascii_case(name))
    }
    /// The environment named `name` (without case); `None` names the default (the first).
    pub fn environment(&self, name: Option<&str>) -> Option<&DeployEnvironment> {
        match name {
            Some(name) => self
                .environments
                .iter()
                .find(|e| e.name.eq_ignore_ascii_case(name)),
            None => self.environments.first(),
        }
    }
}

/// One `[[deploy.services]]` entry: an image repository and where its MR images come from.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DeployService {
    /// The name used in commands (`deploy herder !12`).
    pub name: String,
    /// The image repository in the registry (`cki/pipeline-herder`).
    pub repository: String,
    /// The project whose merge requests `!12` and MR URLs refer to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mr_project: Option<String>,
    /// The tag an MR's pipeline pushes; `{iid}` is the MR's number.
    #[serde(default = "default_mr_tag")]
    pub mr_tag: String,
    /// Rooms where deploys and rollbacks of this service are announced.
    #[serde(default)]
    pub announce: Vec<String>,
}

/// One `[[deploy.environments]]` entry: a tag to point, or a deploy pipeline to run.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DeployEnvironment {
    pub name: String,
    /// Deploying points this tag of the service's repository at the source's digest ...
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tag: Option<String>,
    /// ... or runs this project's pipeline with DEPLOY_SERVICE, DEPLOY_IMAGE, DEPLOY_ENVIRONMENT.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pipeline: Option<DeployPipeline>,
    /// The asker must `confirm <code>` within `confirm_timeout_seconds`.
    #[serde(default)]
    pub confirm: bool,
    /// Who may deploy here, on top of `[permissions]` deploy / rollback; empty: no extra check.
    #[serde(default)]
    pub groups: Vec<String>,
}

/// A deploy pipeline: `{ project = "cki/deployment-all", ref = "main" }`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DeployPipeline {
    pub project: String,
    #[serde(rename = "ref")]
    pub git_ref: String,
}

fn slot(secret: Option<Secret>) -> SecretSlot {
    match secret {
        Some(secret) => SecretSlot::Set(secret),
        None => SecretSlot::NotConfigured,
    }
}

/// `[herder]`: finished jobs of these projects are judged by the matchers, in order; the first
/// that matches decides what happens.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct HerderConfig {
    /// Projects (`group/project`) whose jobs are herded (their Job Hooks).
    pub projects: Vec<String>,
    /// Where `report` and `alert` matches, given-up retries and failovers are said.
    #[serde(default)]
    pub targets: Vec<String>,
    /// The most of a job's trace read for `messages` (its tail).
    #[serde(default = "default_trace_tail_bytes")]
    pub trace_tail_bytes: u64,
    #[serde(default)]
    pub matchers: Vec<HerderMatcher>,
}

fn default_trace_tail_bytes() -> u64 {
    256 * 1024
}

/// What a matching job gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum HerderAction {
    /// Retried after the attempt's delay, up to `retry_limit` times.
    Retry,
    /// One line in the targets.
    Report,
    /// One line in the targets, shown like an alert.
    Alert,
}

impl HerderAction {
    pub fn as_str(self) -> &'static str {
        match self {
            HerderAction::Retry => "retry",
            HerderAction::Report => "report",
            HerderAction::Alert => "alert",
        }
    }
}

/// One `[[herder.matchers]]` entry. Every criterion given must hold.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct HerderMatcher {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    pub action: HerderAction,
    /// The job's status (GitLab's words), one of these.
    #[serde(default = "default_job_status")]
    pub job_status: Vec<String>,
    /// A regular expression the job's name must match.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job_name: Option<String>,
    /// GitLab's `failure_reason`, one of these (empty: any).
    #[serde(default)]
    pub failure_reason: Vec<String>,
    /// Substrings of the trace's tail, or `/regex/flags`; one of them must be found (empty: the
    /// trace is not read).
    #[serde(default)]
    pub messages: Vec<String>,
    /// The delay before retry n (`1m`, `5m`, ...); the last repeats.
    #[serde(default = "default_retry_delays")]
    pub retry_delays: Vec<String>,
    /// Retries of one job by shepherd; 0 = never retry.
    #[serde(default = "default_retry_limit")]
    pub retry_limit: u32,
}

fn default_job_status() -> Vec<String> {
    vec!["failed".to_owned()]
}
fn default_retry_delays() -> Vec<String> {
    vec!["5m".to_owned()]
}
fn default_retry_limit() -> u32 {
    3
}

impl HerderMatcher {
    /// The delay before retry `attempt` (from 1): its entry of `retry_delays`, the last repeating.
    /// Validation checked that every entry parses.
    pub fn retry_delay(&self, attempt: u32) -> Duration {
        let i = (attempt.max(1) as usize - 1).min(self.retry_delays.len().saturating_sub(1));
        self.retry_delays
            .get(i)
            .and_then(|d| humantime::parse_duration(d).ok())
            .unwrap_or(Duration::from_secs(300))
    }
}

/// One `[[failover]]` switch: CI/CD variables set on a project or a group while it is on.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FailoverSwitch {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub project: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    pub variables: BTreeMap<String, String>,
}
