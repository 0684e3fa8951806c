//! A real Synapse per test.
//!
//! `Synapse::start` writes `tests/synapse/homeserver.yaml.in` (compiled in) with a free port and
//! a scratch folder, makes a signing key with the `signedjson` module Synapse ships, and runs
//! `python -m synapse.app.homeserver` from the venv at `$SYNAPSE_VENV` (default
//! `target/testbed/synapse`, which `scripts/test` creates with `pip install matrix-synapse`).
//! Readiness is awaited on `GET /health`, never slept for. `kill` and `restart` take the server
//! away and bring it back on the same port and database; it is killed when dropped.
//!
//! Synapse facts this relies on (1.16x from PyPI): SQLite is enough for tests; with
//! `enable_registration` and `enable_registration_without_verification` a client registers with
//! the `m.login.dummy` stage; `trusted_key_servers: []` keeps it off the internet; the default
//! rate limits answer bursts with 429, so they are raised here (`rc_message` can be set per test
//! to see shepherd honour 429).

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use tokio::process::{Child, Command};

use crate::harness::free_port;

pub const CONFIG_TEMPLATE: &str = include_str!("../synapse/homeserver.yaml.in");
pub const LOG_CONFIG_TEMPLATE: &str = include_str!("../synapse/log.config.in");
/// The server name of every test homeserver: user ids are `@name:localhost`.
pub const SERVER_NAME: &str = "localhost";

/// The venv Synapse is installed in.
pub fn venv() -> PathBuf {
    if let Ok(p) = std::env::var("SYNAPSE_VENV") {
        return PathBuf::from(p);
    }
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/testbed/synapse")
}

fn python() -> PathBuf {
    let python = venv().join("bin/python");
    assert!(
        python.exists(),
        "Synapse is not installed at {}: `python3 -m venv {v} && {v}/bin/pip install matrix-synapse` (scripts/test does)",
        venv().display(),
        v = venv().display()
    );
    python
}

/// Message rate limit of a test homeserver.
#[derive(Debug, Clone, Copy)]
pub struct RateLimit {
    pub per_second: f64,
    pub burst: u32,
}

impl RateLimit {
    /// High enough that no test is limited.
    pub const RAISED: RateLimit = RateLimit {
        per_second: 1000.0,
        burst: 1000,
    };
}

pub struct Synapse {
    pub port: u16,
    dir: tempfile::TempDir,
    child: Option<Child>,
}

const START_DEADLINE: Duration = Duration::from_secs(60);

impl Synapse {
    pub async fn start() -> Synapse {
        Self::start_with(RateLimit::RAISED).await
    }

    pub async fn start_with(limit: RateLimit) -> Synapse {
        let dir = tempfile::tempdir().expect("tempdir for synapse");
        let path = dir.path().to_path_buf();
        let key = path.join("signing.key");
        let made = std::process::Command::new(python())
            .arg("-c")
            .arg(
                "import sys\nfrom signedjson.key import generate_signing_key, write_signing_keys\n\
                 with open(sys.argv[1], 'w') as f: write_signing_keys(f, [generate_signing_key('a_test')])",
            )
            .arg(&key)
            .status()
            .expect("run python for the signing key");
        assert!(
            made.success(),
            "could not write a signing key with signedjson"
        );
        // A port found free may be taken before Synapse binds it: then another is tried.
        let mut synapse = Synapse {
            port: 0,
            dir,
            child: None,
        };
        let mut errors = Vec::new();
        for _ in 0..3 {
            synapse.port = free_port();
            let config = CONFIG_TEMPLATE
                .replace("@PORT@", &synapse.port.to_string())
                .replace("@DIR@", &path.display().to_string())
                .replace("@SIGNING_KEY@", &key.display().to_string())
                .replace("@RC_MESSAGE@", &limit.per_second.to_string())
                .replace("@RC_BURST@", &limit.burst.to_string());
            assert!(
                !config
                    .lines()
                    .any(|l| l.contains('@') && !l.trim_start().starts_with('#')),
                "unsubstituted placeholder in the synapse config:\n{config}"
            );
            std::fs::write(path.join("homeserver.yaml"), config).expect("homeserver.yaml");
            std::fs::write(
                path.join("log.config"),
                LOG_CONFIG_TEMPLATE.replace("@DIR@", &path.display().to_string()),
            )
            .expect("log.config");
            match synapse.launch().await {
                Ok(()) => return synapse,
                Err(e) => {
                    synapse.kill().await;
                    errors.push(e);
                }
            }
        }
        panic!("synapse did not start: {errors:?}\nlog:\n{}", synapse.log());
    }

    async fn launch(&mut self) -> Result<(), String> {
        let out = std::fs::File::create(self.dir.path().join("stdout.log")).expect("stdout log");
        let child = Command::new(python())
            .args(["-m", "synapse.app.homeserver", "-c"])
            .arg(self.dir.path().join("homeserver.yaml"))
            .current_dir(self.dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::from(out.try_clone().expect("clone log")))
            .stderr(Stdio::from(out))
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| format!("spawn synapse: {e}"))?;
        self.child = Some(child);
        let client = reqwest::Client::new();
        let deadline = Instant::now() + START_DEADLINE;
        loop {
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                return Err(format!("synapse exited with {status}"));
            }
            if let Ok(r) = client.get(format!("{}/health", self.url())).send().await
                && r.status().is_success()
            {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(format!("no answer on /health within {START_DEADLINE:?}"));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// `http://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Everything it logged (warnings and errors) and printed.
    pub fn log(&self) -> String {
        let read =
            |name: &str| std::fs::read_to_string(self.dir.path().join(name)).unwrap_or_default();
        format!("{}{}", read("stdout.log"), read("homeserver.log"))
    }

    /// SIGKILL: the homeserver is gone, as in a crash; its database stays.
    pub async fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.start_kill();
            let _ = child.wait().await;
        }
    }

    /// Starts it again on the same port and database.
    pub async fn restart(&mut self) {
        self.kill().await;
        let mut last = String::new();
        for _ in 0..20 {
            match self.launch().await {
                Ok(()) => return,
                // The port may linger for a moment after the kill.
                Err(e) => {
                    last = e;
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
            }
        }
        panic!("synapse did not come back: {last}\n{}", self.log());
    }

    /// Registers `name` with `password` (open registration, the `m.login.dummy` stage); returns
    /// the user id.
    pub async fn register(&self, name: &str, password: &str) -> String {
        let client = reqwest::Client::new();
        let url = format!("{}/_matrix/client/v3/register", self.url());
        let mut body = serde_json::json!({
            "username": name,
            "password": password,
            "inhibit_login": true,
            "auth": {"type": "m.login.dummy"},
        });
        // A 401 opens a session for the dummy stage; the same request with it completes it.
        for _ in 0..2 {
            let r = client
                .post(&url)
                .json(&body)
                .send()
                .await
                .expect("register");
            let status = r.status();
            let json: serde_json::Value = r.json().await.unwrap_or_default();
            if status.is_success() {
                return format!("@{name}:{SERVER_NAME}");
            }
            assert_eq!(status.as_u16(), 401, "register {name}: {status} {json}");
            body["auth"]["session"] = json["session"].clone();
        }
        panic!("register {name}: the dummy stage did not complete");
    }
}
