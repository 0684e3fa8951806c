//! A real ngIRCd per test.
//!
//! `Ngircd::start` picks a free port on 127.0.0.1, writes `tests/ircd/ngircd.conf.in` (compiled
//! in) with that port into a temporary folder and runs `ngircd -n -f <conf>` in the foreground.
//! Readiness is awaited, never slept for: the server's own "ready" log line (or its exit, which is
//! retried when the port is still busy), then a TCP connection that gets a server line back.
//! The server is killed when the `Ngircd` is dropped; `kill`, `restart` and `stop_for` let a
//! test take it away and bring it back on the same port. `log()` is everything it printed.
//!
//! ngIRCd facts this relies on (ngIRCd 26, Debian package `ngircd`, `apt-get install -y ngircd`):
//! run as root it drops to user `nobody` (so no PidFile: the harness tracks the PID it started);
//! `MaxPenaltyTime` is a `[Limits]` key (0 = no flood throttling, -1 = stock); stock
//! `MaxConnectionsIP` is 5, set to 0 here because tests connect several clients; with `-n` it
//! logs to stdout and prints `Server "<name>" (on "<host>") ready.` once it listens, or exits with
//! status 1 and "Can't bind socket" when the port is taken.

use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::Notify;

/// The config template, with `@PORT@`, `@PING_TIMEOUT@`, `@PONG_TIMEOUT@`, `@MAX_PENALTY_TIME@`,
/// `@OPER_NAME@` and `@OPER_PASSWORD@` placeholders.
pub const CONFIG_TEMPLATE: &str = include_str!("../ircd/ngircd.conf.in");
/// The server name ngIRCd announces (the prefix of its own lines).
pub const SERVER_NAME: &str = "irc.test.local";
/// `OPER <name> <password>` makes a client an IRC operator (see `IrcClient::oper`).
pub const OPER_NAME: &str = "testoper";
pub const OPER_PASSWORD: &str = "testoper";
/// `start`'s `PingTimeout`: seconds without data from a client after which the server PINGs it.
/// ngIRCd counts from the last *read*, and a throttled client's PONG waits behind its queued
/// lines (drained at 3 per second): a backlog older than PingTimeout + PongTimeout gets the
/// client dropped with "Ping timeout". 20 + 20 s leaves room for a 60-line burst.
pub const PING_TIMEOUT_SECS: u64 = 20;
/// `start`'s `PongTimeout`: seconds the server waits for the PONG before it drops the client.
pub const PONG_TIMEOUT_SECS: u64 = 20;

/// How much ngIRCd throttles clients that send fast.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Throttle {
    /// `MaxPenaltyTime = 0`: no command penalties, for fast tests.
    Off,
    /// `MaxPenaltyTime = -1`: ngIRCd's stock flood limits (a fast sender's lines are queued and
    /// drained slowly, as on a real network).
    Stock,
}

impl Throttle {
    fn max_penalty_time(self) -> &'static str {
        match self {
            Throttle::Off => "0",
            Throttle::Stock => "-1",
        }
    }
}

/// The path of the ngircd binary: `$NGIRCD_BIN`, else `ngircd` on `PATH`, else `/usr/sbin/ngircd`.
pub fn ngircd_bin() -> PathBuf {
    if let Ok(p) = std::env::var("NGIRCD_BIN") {
        return PathBuf::from(p);
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    for dir in std::env::split_paths(&path).chain([PathBuf::from("/usr/sbin")]) {
        let candidate = dir.join("ngircd");
        if candidate.is_file() {
            return candidate;
        }
    }
    panic!(
        "ngircd is not installed: `apt-get update && apt-get install -y ngircd` (scripts/test does)"
    )
}

/// The config text for `port`, `throttle` and the ping/pong timeouts (whole seconds, at least
/// 1), from `CONFIG_TEMPLATE`.
pub fn render_config(
    port: u16,
    throttle: Throttle,
    ping_timeout: Duration,
    pong_timeout: Duration,
) -> String {
    let secs = |d: Duration| d.as_secs().max(1).to_string();
    let text = CONFIG_TEMPLATE
        .replace("@PORT@", &port.to_string())
        .replace("@PING_TIMEOUT@", &secs(ping_timeout))
        .replace("@PONG_TIMEOUT@", &secs(pong_timeout))
        .replace("@MAX_PENALTY_TIME@", throttle.max_penalty_time())
        .replace("@OPER_NAME@", OPER_NAME)
        .replace("@OPER_PASSWORD@", OPER_PASSWORD)
        .replace("@GLOBAL_EXTRA@", "")
        .replace("@EXTRA@", "");
    assert!(
        !text.lines().any(|l| l.trim_end().ends_with('@')),
        "unsubstituted placeholder in the ngircd config:\n{text}"
    );
    text
}

/// What the server printed, shared with the tasks that read its stdout and stderr.
#[derive(Default)]
struct Output {
    text: Mutex<String>,
    changed: Notify,
}

impl Output {
    fn push_line(&self, line: &str) {
        let mut text = self.text.lock().expect("ngircd log lock");
        text.push_str(line);
        text.push('\n');
        drop(text);
        self.changed.notify_waiters();
    }
    fn snapshot(&self) -> String {
        self.text.lock().expect("ngircd log lock").clone()
    }
    fn len(&self) -> usize {
        self.text.lock().expect("ngircd log lock").len()
    }
}

/// A running (or deliberately stopped) ngIRCd on 127.0.0.1.
pub struct Ngircd {
    port: u16,
    throttle: Throttle,
    ping_timeout: Duration,
    pong_timeout: Duration,
    conf: PathBuf,
    /// Lines added to `[Global]`, and sections added at the end (see `start_configured`).
    global_extra: String,
    extra: String,
    child: Option<Child>,
    output: Arc<Output>,
    _dir: tempfile::TempDir,
}

/// How long a start (including retries while the port is still taken) may take.
const START_DEADLINE: Duration = Duration::from_secs(20);

impl Ngircd {
    /// Starts a fresh server on a free port and waits until it accepts IRC connections.
    pub async fn start(throttle: Throttle) -> Ngircd {
        Ngircd::start_with(
            throttle,
            Duration::from_secs(PING_TIMEOUT_SECS),
            Duration::from_secs(PONG_TIMEOUT_SECS),
        )
        .await
    }

    /// Like `start`, with other `PingTimeout` / `PongTimeout` values (whole seconds; ngIRCd
    /// checks them once a second): short ones let a test see the server PING a client, or drop
    /// one that does not answer, within a few seconds.
    pub async fn start_with(
        throttle: Throttle,
        ping_timeout: Duration,
        pong_timeout: Duration,
    ) -> Ngircd {
        Ngircd::unstarted(throttle, ping_timeout, pong_timeout, "", |_| String::new())
            .launch()
            .await
    }

    /// A server not started yet, in a fresh folder.
    fn unstarted(
        throttle: Throttle,
        ping_timeout: Duration,
        pong_timeout: Duration,
        global_extra: &str,
        extra: impl Fn(&std::path::Path) -> String,
    ) -> Ngircd {
        let dir = tempfile::tempdir().expect("tempdir for ngircd");
        // ngIRCd reads its config as root, then runs as nobody: keep the folder readable.
        set_mode(dir.path(), 0o755);
        Ngircd {
            port: 0,
            throttle,
            ping_timeout,
            pong_timeout,
            conf: dir.path().join("ngircd.conf"),
            global_extra: global_extra.to_string(),
            extra: extra(dir.path()),
            child: None,
            output: Arc::new(Output::default()),
            _dir: dir,
        }
    }

    /// Writes the config and starts the server on a free port, awaiting readiness.
    async fn launch(mut self) -> Ngircd {
        // A port found free can be taken by someone else before ngIRCd binds it: then the
        // server exits at once, and the next attempt uses another port.
        let mut errors = Vec::new();
        for _ in 0..5 {
            self.port = free_port();
            std::fs::write(&self.conf, self.config_text()).expect("write ngircd.conf");
            set_mode(&self.conf, 0o644);
            match self
                .spawn_until_ready(Instant::now() + START_DEADLINE)
                .await
            {
                Ok(()) => return self,
                Err(e) => {
                    self.kill().await;
                    errors.push(format!("port {}: {e}", self.port));
                }
            }
        }
        panic!(
            "ngircd did not start: {}\n--- ngircd log ---\n{}",
            errors.join("; "),
            self.log()
        )
    }

    /// The port it listens on (the same across restarts).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `127.0.0.1:PORT`.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The flood setting it runs with.
    pub fn throttle(&self) -> Throttle {
        self.throttle
    }

    /// The `PingTimeout` and `PongTimeout` it runs with.
    pub fn ping_pong_timeouts(&self) -> (Duration, Duration) {
        (self.ping_timeout, self.pong_timeout)
    }

    /// True while the server process runs (false after `kill`).
    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut() {
            Some(child) => matches!(child.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// SIGKILLs the server and reaps it; every client connection drops. Idempotent.
    pub async fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.start_kill();
            let _ = child.wait().await;
            self.output
                .push_line("=== shepherd-tests: ngircd killed ===");
        }
    }

    /// Starts the server again on the same port (killing it first if it still runs) and waits
    /// until it accepts connections; while the port is briefly unavailable, binding is retried.
    pub async fn restart(&mut self) {
        self.kill().await;
        self.output
            .push_line("=== shepherd-tests: ngircd restarting ===");
        let deadline = Instant::now() + START_DEADLINE;
        let mut backoff = Duration::from_millis(20);
        loop {
            match self.spawn_until_ready(deadline).await {
                Ok(()) => return,
                Err(e) if Instant::now() < deadline => {
                    self.kill().await;
                    self.output.push_line(&format!(
                        "=== shepherd-tests: start failed ({e}), retrying ==="
                    ));
                    // Back-off between bind attempts (the port is in use), not a readiness guess.
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_millis(500));
                }
                Err(e) => panic!(
                    "ngircd did not restart on port {}: {e}\n--- ngircd log ---\n{}",
                    self.port,
                    self.log()
                ),
            }
        }
    }

    /// Kills the server, waits `d`, and starts it again on the same port.
    pub async fn stop_for(&mut self, d: Duration) {
        self.kill().await;
        tokio::time::sleep(d).await;
        self.restart().await;
    }

    /// Everything the server printed so far (all runs), for failure messages.
    /// Starts a server whose config has `global_extra` lines in `[Global]` (e.g.
    /// `Password = x`) and `extra` sections at the end (`[SSL]`, `[Channel]`). `extra` may
    /// name files in the server's folder (`dir()`), which exists before the server starts: `extra` gets its path.
    pub async fn start_configured(
        throttle: Throttle,
        global_extra: &str,
        extra: impl Fn(&std::path::Path) -> String,
    ) -> Ngircd {
        let ping = Duration::from_secs(PING_TIMEOUT_SECS);
        let pong = Duration::from_secs(PONG_TIMEOUT_SECS);
        Ngircd::unstarted(throttle, ping, pong, global_extra, extra)
            .launch()
            .await
    }

    fn config_text(&self) -> String {
        let base = render_config(
            self.port,
            self.throttle,
            self.ping_timeout,
            self.pong_timeout,
        );
        // render_config leaves the extension points empty; fill them for this server.
        let global = format!(
            "\tMotdPhrase = \"shepherd test server\"\n{}",
            self.global_extra
        );
        base.replacen("\tMotdPhrase = \"shepherd test server\"", &global, 1) + self.extra.as_str()
    }

    /// The server process, while it runs (for SIGSTOP/SIGCONT in liveness tests).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().and_then(|c| c.id())
    }

    /// The folder holding the config (and any files a test put there).
    pub fn dir(&self) -> &std::path::Path {
        self._dir.path()
    }

    pub fn log(&self) -> String {
        self.output.snapshot()
    }

    /// Spawns ngircd once and waits for readiness; Err if it exits or the deadline passes.
    async fn spawn_until_ready(&mut self, deadline: Instant) -> Result<(), String> {
        let mut child = Command::new(ngircd_bin())
            .arg("-n")
            .arg("-f")
            .arg(&self.conf)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| format!("cannot run {}: {e}", ngircd_bin().display()))?;
        let start_mark = self.output.len();
        if let Some(out) = child.stdout.take() {
            tokio::spawn(pump(out, self.output.clone()));
        }
        if let Some(err) = child.stderr.take() {
            tokio::spawn(pump(err, self.output.clone()));
        }
        self.child = Some(child);

        // 1. The server says it is ready (or exits).
        let ready_line = format!("Server \"{SERVER_NAME}\"");
        loop {
            let changed = self.output.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            let since = self.output.snapshot().split_off(start_mark);
            if since
                .lines()
                .any(|l| l.contains(&ready_line) && l.contains("ready"))
            {
                break;
            }
            if since.contains("exiting due to fatal errors") {
                return Err(since
                    .lines()
                    .find(|l| l.contains("Can't") || l.contains("isn't"))
                    .unwrap_or("ngircd exited with fatal errors")
                    .to_string());
            }
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                return Err(format!("ngircd exited with {status} before it was ready"));
            }
            let now = Instant::now();
            if now >= deadline {
                return Err("timed out waiting for ngircd's ready line".into());
            }
            // Woken by each new log line; the exit check above needs an occasional look, since
            // a dying process's last line may come before its exit status is visible.
            let wait = (deadline - now).min(Duration::from_millis(100));
            let _ = tokio::time::timeout(wait, changed).await;
        }

        // 2. A client connection gets a line back from the server.
        let remaining = deadline.saturating_duration_since(Instant::now());
        tokio::time::timeout(remaining, probe(&self.addr()))
            .await
            .map_err(|_| "timed out probing ngircd's port".to_string())?
    }
}

impl Drop for Ngircd {
    fn drop(&mut self) {
        if let Some(child) = self.child.as_mut() {
            let _ = child.start_kill();
        }
    }
}

/// Connects, sends `PING`, and waits for any line from the server (a PONG, or 451 "not
/// registered"): the server is accepting and processing connections.
async fn probe(addr: &str) -> Result<(), String> {
    let mut stream = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect {addr}: {e}"))?;
    stream
        .write_all(b"PING :shepherd-ready-probe\r\nQUIT\r\n")
        .await
        .map_err(|e| format!("write to {addr}: {e}"))?;
    let mut buf = [0u8; 512];
    let n = stream
        .read(&mut buf)
        .await
        .map_err(|e| format!("read from {addr}: {e}"))?;
    if n == 0 {
        return Err(format!("{addr} closed the probe connection without a line"));
    }
    Ok(())
}

/// Copies a child's output, line by line, into `out`.
async fn pump(stream: impl AsyncRead + Unpin, out: Arc<Output>) {
    let mut lines = BufReader::new(stream);
    let mut buf = Vec::new();
    loop {
        buf.clear();
        match lines.read_until(b'\n', &mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {
                let line = String::from_utf8_lossy(&buf);
                out.push_line(line.trim_end_matches(['\r', '\n']));
            }
        }
    }
}

/// A port that was free on 127.0.0.1 a moment ago.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("bind 127.0.0.1:0")
}

#[cfg(unix)]
fn set_mode(path: &std::path::Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .unwrap_or_else(|e| panic!("chmod {}: {e}", path.display()));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_has_every_placeholder_filled() {
        let (ping, pong) = (Duration::from_secs(7), Duration::from_millis(300));
        let off = render_config(12345, Throttle::Off, ping, pong);
        assert!(off.contains("PingTimeout = 7"));
        assert!(off.contains("PongTimeout = 1"));
        assert!(off.contains("Ports = 12345"));
        assert!(off.contains("MaxPenaltyTime = 0"));
        assert!(off.contains("MaxConnectionsIP = 0"));
        assert!(off.contains("Password = testoper"));
        assert!(!off.lines().any(|l| l.trim_end().ends_with('@')), "{off}");
        let stock = render_config(12345, Throttle::Stock, ping, pong);
        assert!(stock.contains("MaxPenaltyTime = -1"));
    }
}
