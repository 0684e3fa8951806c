//! Running the real `shepherd` binary in tests.
//!
//! `TestStore` gives each test a fresh store: an SQLite file in a temporary folder, or a new
//! database on the PostgreSQL at `TEST_POSTGRES_URL` (default `postgres://postgres@127.0.0.1:5432/postgres`),
//! dropped afterwards. `ShepherdConfig` writes a config file pointing at the GitLab double;
//! `Shepherd` runs `shepherd console` (or `serve`) with piped stdin/stdout and lets a test
//! send lines and await replies — conditions are awaited, never slept for.

use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin, Command};
use tokio::sync::Notify;

use crate::gitlab::GitLabDouble;

/// Which store a test runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// The `shepherd` binary built by cargo for this workspace.
pub fn shepherd_bin() -> PathBuf {
    if let Ok(p) = std::env::var("SHEPHERD_BIN") {
        return PathBuf::from(p);
    }
    // target/<profile>/deps/<test binary> or target/<profile>/<bench binary>
    // -> target/<profile>/shepherd
    let exe = std::env::current_exe().expect("test binary path");
    let dir = exe.parent().expect("the test binary is in a folder");
    let candidates = [dir.join("shepherd"), dir.join("../shepherd")];
    candidates
        .iter()
        .find(|p| p.exists())
        .cloned()
        .unwrap_or_else(|| {
            panic!(
                "{} is missing: run `cargo build -p shepherd-bot` first (scripts/test does)",
                candidates[1].display()
            )
        })
}

pub fn postgres_admin_url() -> String {
    std::env::var("TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_string())
}

/// A fresh, empty store for one test.
pub struct TestStore {
    pub backend: Backend,
    pub url: String,
    pg_db: Option<String>,
    _dir: tempfile::TempDir,
}

impl TestStore {
    pub async fn new(backend: Backend) -> TestStore {
        let dir = tempfile::tempdir().expect("tempdir");
        match backend {
            Backend::Sqlite => {
                let url = format!("sqlite://{}", dir.path().join("shepherd.db").display());
                TestStore {
                    backend,
                    url,
                    pg_db: None,
                    _dir: dir,
                }
            }
            Backend::Postgres => {
                sqlx::any::install_default_drivers();
                let name = format!("shepherd_t_{}", uuid::Uuid::now_v7().simple());
                let admin = postgres_admin_url();
                let mut conn = <sqlx::AnyConnection as sqlx::Connection>::connect(&admin)
                    .await
                    .unwrap_or_else(|e| panic!("PostgreSQL at {admin} is needed: {e}"));
                sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
                    .execute(&mut conn)
                    .await
                    .expect("create test database");
                let mut url = url::Url::parse(&admin).expect("TEST_POSTGRES_URL is a URL");
                url.set_path(&format!("/{name}"));
                TestStore {
                    backend,
                    url: url.to_string(),
                    pg_db: Some(name),
                    _dir: dir,
                }
            }
        }
    }

    /// A direct connection, for assertions on what was stored.
    pub async fn connect(&self) -> sqlx::AnyPool {
        sqlx::any::install_default_drivers();
        sqlx::any::AnyPoolOptions::new()
            .max_connections(2)
            .connect(&self.url)
            .await
            .expect("connect to the test store")
    }

    pub async fn count(&self, sql: &str) -> i64 {
        let pool = self.connect().await;
        let n: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(sql.to_string()))
            .fetch_one(&pool)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
        pool.close().await;
        n
    }
}

impl TestStore {
    /// Awaits `sql` (a COUNT) equal to `expected`, re-reading it until `timeout`; the
    /// store has no change notifications, so this is a short poll. True when it got there.
    pub async fn wait_count(&self, sql: &str, expected: i64, timeout: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if self.count(sql).await == expected {
                return true;
            }
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// The value of one series (`name{labels}`, as written) in Prometheus text.
pub fn metric_value(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(series))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

impl Drop for TestStore {
    fn drop(&mut self) {
        if let Some(name) = self.pg_db.take() {
            // Best effort, outside the test's runtime.
            let admin = postgres_admin_url();
            let _ = std::thread::spawn(move || {
                let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                else {
                    return;
                };
                rt.block_on(async move {
                    sqlx::any::install_default_drivers();
                    if let Ok(mut conn) =
                        <sqlx::AnyConnection as sqlx::Connection>::connect(&admin).await
                    {
                        let _ = sqlx::query(sqlx::AssertSqlSafe(format!(
                            "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
                        )))
                        .execute(&mut conn)
                        .await;
                    }
                });
            })
            .join();
        }
    }
}

/// The configuration a test runs shepherd with.
#[derive(Debug, Clone)]
pub struct ShepherdConfig {
    pub production: bool,
    pub identity: String,
    pub groups: Vec<String>,
    pub store_url: String,
    pub gitlab_url: String,
    pub gitlab_token: String,
    pub default_project: String,
    pub http_port: u16,
    /// Extra TOML appended verbatim (sections not otherwise written).
    pub extra: String,
    /// Extra key lines for [queue] / [gitlab] / [rate_limits].
    pub queue: String,
    pub gitlab: String,
    pub rate_limits: String,
    /// Extra key lines for [http].
    pub http: String,
    /// The watcher's base poll interval (its maximum is four times this).
    pub watcher_poll_ms: u64,
    /// Extra environment for the process (secrets named by `*_env` keys).
    pub env: Vec<(String, String)>,
}

impl ShepherdConfig {
    pub fn new(store: &TestStore, gitlab: &GitLabDouble) -> Self {
        Self {
            production: true,
            identity: "console:tester".into(),
            groups: vec!["admins".into()],
            store_url: store.url.clone(),
            gitlab_url: gitlab.url(),
            gitlab_token: gitlab.token().to_string(),
            default_project: "cki-project/pipeline-definition".into(),
            http_port: free_port(),
            extra: String::new(),
            queue: String::new(),
            gitlab: String::new(),
            rate_limits: String::new(),
            http: String::new(),
            watcher_poll_ms: 100,
            env: Vec::new(),
        }
    }

    pub fn render(&self) -> String {
        format!(
            r#"production = {production}
[bot]
name = "shepherd"
[store]
url = "{store}"
[queue]
lease_seconds = 2
retry_base_ms = 50
retry_max_ms = 400
poll_interval_ms = 50
workers = 2
{queue}
[http]
listen = "127.0.0.1:{port}"
{http}
[gitlab]
url = "{gitlab}"
token_env = "TEST_GITLAB_TOKEN"
default_project = "{project}"
timeout_ms = 1500
retry_base_ms = 10
retry_max_ms = 200
{gitlab_extra}
[retrigger]
marker_variables = {{ CKI_DEPLOYMENT_ENVIRONMENT = "retrigger" }}
[watcher]
poll_interval_ms = {watch}
max_poll_interval_ms = {watch_max}
[console]
identity = "{identity}"
[rate_limits]
{rate_limits}
[[people]]
name = "tester"
identities = ["console:tester"]
groups = [{groups}]
{extra}
"#,
            production = self.production,
            store = self.store_url,
            queue = self.queue,
            port = self.http_port,
            http = self.http,
            gitlab = self.gitlab_url,
            project = self.default_project,
            gitlab_extra = self.gitlab,
            identity = self.identity,
            rate_limits = self.rate_limits,
            watch = self.watcher_poll_ms,
            watch_max = self.watcher_poll_ms * 4,
            groups = self
                .groups
                .iter()
                .map(|g| format!("\"{g}\""))
                .collect::<Vec<_>>()
                .join(", "),
            extra = self.extra,
        )
    }
}

impl ShepherdConfig {
    /// The secrets this configuration gives shepherd: the GitLab token, the values of the
    /// variables it passes (secrets come from `*_env` variables; names of `SHEPHERD_*` overrides
    /// and short values are not secrets) and a password in the store URL.
    pub fn secrets(&self) -> Vec<String> {
        let mut secrets = vec![self.gitlab_token.clone()];
        secrets.extend(
            self.env
                .iter()
                .filter(|(k, _)| !k.starts_with("SHEPHERD_"))
                .map(|(_, v)| v.clone()),
        );
        if let Ok(url) = url::Url::parse(&self.store_url)
            && let Some(pw) = url.password()
        {
            secrets.push(pw.to_string());
        }
        secrets.retain(|s| s.len() >= 8);
        secrets
    }
}

/// Awaits `cond` (re-checked every 25 ms: for state with no change notification, such as the
/// double's notes or a process's HTTP server). True when it held before `timeout`.
pub async fn until(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return cond();
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// A port that was free a moment ago.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// A running shepherd process.
pub struct Shepherd {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: Arc<Mutex<Vec<String>>>,
    changed: Arc<Notify>,
    pub dir: tempfile::TempDir,
    pub config: ShepherdConfig,
}

impl Shepherd {
    /// `shepherd console --config <file>`.
    pub async fn console(config: &ShepherdConfig) -> Shepherd {
        Self::spawn(config, &["console"]).await
    }

    /// `shepherd serve --config <file>`.
    pub async fn serve(config: &ShepherdConfig) -> Shepherd {
        Self::spawn(config, &["serve"]).await
    }

    pub async fn spawn(config: &ShepherdConfig, args: &[&str]) -> Shepherd {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("shepherd.toml");
        std::fs::write(&path, config.render()).expect("write config");
        let stderr = std::fs::File::create(dir.path().join("stderr.log")).expect("stderr log");
        let mut child = Command::new(shepherd_bin())
            .args(args)
            .arg("--config")
            .arg(&path)
            .env("TEST_GITLAB_TOKEN", &config.gitlab_token)
            // A test may set its own level through `config.env`.
            .env("SHEPHERD_LOG", "info,shepherd_core=debug")
            .envs(config.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .env_remove("SHEPHERD_CONFIG")
            // The harness's own variable; shepherd would refuse it as an unknown SHEPHERD_* key.
            .env_remove("SHEPHERD_BIN")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(stderr))
            .kill_on_drop(true)
            .spawn()
            .expect("spawn shepherd");
        let stdout = child.stdout.take().expect("stdout");
        let stdin = child.stdin.take();
        let lines = Arc::new(Mutex::new(Vec::new()));
        let changed = Arc::new(Notify::new());
        {
            let lines = lines.clone();
            let changed = changed.clone();
            tokio::spawn(async move {
                let mut reader = BufReader::new(stdout).lines();
                while let Ok(Some(line)) = reader.next_line().await {
                    lines.lock().expect("lines").push(line);
                    changed.notify_waiters();
                }
                changed.notify_waiters();
            });
        }
        Shepherd {
            child,
            stdin,
            lines,
            changed,
            dir,
            config: config.clone(),
        }
    }

    pub async fn send(&mut self, line: &str) {
        let stdin = self.stdin.as_mut().expect("stdin still open");
        stdin
            .write_all(format!("{line}\n").as_bytes())
            .await
            .expect("write to shepherd");
        stdin.flush().await.expect("flush");
    }

    pub async fn send_bytes(&mut self, bytes: &[u8]) {
        let stdin = self.stdin.as_mut().expect("stdin still open");
        stdin.write_all(bytes).await.expect("write to shepherd");
        stdin.flush().await.expect("flush");
    }

    /// Closes stdin (EOF): `console` then finishes its work and exits.
    pub fn close_stdin(&mut self) {
        self.stdin.take();
    }

    pub fn lines(&self) -> Vec<String> {
        self.lines.lock().expect("lines").clone()
    }

    /// Awaits a condition on everything printed so far.
    pub async fn wait_for(&self, timeout: Duration, pred: impl Fn(&[String]) -> bool) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let waiter = self.changed.notified();
            if pred(&self.lines()) {
                return true;
            }
            if tokio::time::timeout_at(deadline, waiter).await.is_err() {
                return pred(&self.lines());
            }
        }
    }

    /// Awaits a line containing `needle` and returns it; panics with the log otherwise.
    pub async fn expect_line(&self, needle: &str, timeout: Duration) -> String {
        let found = self
            .wait_for(timeout, |lines| lines.iter().any(|l| l.contains(needle)))
            .await;
        if !found {
            panic!(
                "no line containing {needle:?} within {timeout:?}.\nstdout:\n{}\nstderr:\n{}",
                self.lines().join("\n"),
                self.stderr()
            );
        }
        self.lines()
            .into_iter()
            .find(|l| l.contains(needle))
            .unwrap_or_default()
    }

    pub fn stderr(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("stderr.log")).unwrap_or_default()
    }

    /// Awaits the process's exit; panics with the log if it does not exit in time.
    pub async fn wait_exit(&mut self, timeout: Duration) -> std::process::ExitStatus {
        match tokio::time::timeout(timeout, self.child.wait()).await {
            Ok(Ok(status)) => {
                // Let the reader drain what was printed last.
                let _ = self.wait_for(Duration::from_millis(200), |_| false).await;
                status
            }
            Ok(Err(e)) => panic!("waiting for shepherd: {e}"),
            Err(_) => panic!(
                "shepherd did not exit within {timeout:?}.\nstdout:\n{}\nstderr:\n{}",
                self.lines().join("\n"),
                self.stderr()
            ),
        }
    }

    /// SIGKILL: no chance to clean up, like a crash.
    pub async fn kill9(&mut self) {
        self.child.start_kill().expect("kill shepherd");
        let _ = self.child.wait().await;
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// `http://127.0.0.1:<http port>`.
    pub fn base_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.config.http_port)
    }

    /// Awaits `GET /healthz` answering 200; panics with the log if it does not in time.
    pub async fn wait_http(&self, timeout: Duration) {
        let client = reqwest::Client::new();
        let url = format!("{}/healthz", self.base_url());
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if let Ok(r) = client.get(&url).send().await
                && r.status().is_success()
            {
                return;
            }
            if tokio::time::Instant::now() >= deadline {
                panic!(
                    "{url} never answered 200 within {timeout:?}.\nstderr:\n{}",
                    self.stderr()
                );
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// `GET /metrics` as text (empty when it cannot be read).
    pub async fn metrics_text(&self) -> String {
        match reqwest::get(format!("{}/metrics", self.base_url())).await {
            Ok(r) => r.text().await.unwrap_or_default(),
            Err(_) => String::new(),
        }
    }

    /// The value of one series on `GET /metrics`.
    pub async fn metric(&self, series: &str) -> Option<f64> {
        metric_value(&self.metrics_text().await, series)
    }
}

/// Every test's shepherd log is checked for the secrets its configuration gave it: none may
/// appear, whatever the test did (see [`ShepherdConfig::secrets`]).
impl Drop for Shepherd {
    fn drop(&mut self) {
        if std::thread::panicking() {
            return;
        }
        let log = self.stderr();
        let stdout = self.lines().join("\n");
        for secret in self.config.secrets() {
            if log.contains(&secret) || stdout.contains(&secret) {
                panic!(
                    "a configured secret ({} bytes) appears in shepherd's output:\n{log}",
                    secret.len()
                );
            }
        }
    }
}

/// Runs an async test body once per store backend.
#[macro_export]
macro_rules! on_both_stores {
    ($name:ident, $body:ident) => {
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                super::$body($crate::harness::Backend::Sqlite).await;
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                super::$body($crate::harness::Backend::Postgres).await;
            }
        }
    };
}
