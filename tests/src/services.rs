//! A real IRC network with services per test: InspIRCd 3 plus Atheme 7.2, on loopback only.
//!
//! `ServicesNet::start` picks two free ports on 127.0.0.1 (clients, server link), renders
//! `tests/ircd/services/inspircd.conf.template` and `atheme.conf.template` (compiled in) into a
//! temporary folder, runs `inspircd --config F --nofork --nopid --runasroot`, waits until its client
//! port answers, then runs `atheme-services -n -c F -D DIR -l LOG -p PID`, which links to InspIRCd as
//! `services.shepherd.test`. Readiness is awaited, never slept for: a probe client must get a NOTICE
//! back from NickServ. Both processes are killed when the `ServicesNet` is dropped; `log()` is
//! everything both printed plus their log files.
//!
//! What this network gives a test (the setup shepherd's IRC identity rules are checked against):
//! accounts registered with `PRIVMSG NickServ :REGISTER <password> <email>` (no e-mail
//! verification, `auth = none`), login by SASL PLAIN during registration (InspIRCd's `sasl` module
//! relays AUTHENTICATE to Atheme's SaslServ) or by `NickServ IDENTIFY <account> <password>`, and
//! the IRCv3 capabilities `account-tag`, `account-notify` and `extended-join`, plus numeric 330
//! (RPL_WHOISACCOUNT) in WHOIS.
//!
//! Packages (Debian 12): `apt-get install -y inspircd atheme-services`; neither starts on install.
//! Facts this relies on: InspIRCd config comments must start with `#`; its stock connect class
//! allows 3 connections per IP (raised here); Atheme's `protocol/inspircd` module (written for
//! InspIRCd 2.0's link protocol 1202, which InspIRCd 3 still accepts) needs `services_account`
//! loaded and a `<uline>` for the services server; Atheme runs as root without complaint; leaving
//! `ratelimit_uses`/`ratelimit_period` out of its `general` block turns off the registration rate
//! limit (5 a minute in the shipped example), and `flood_msgs = 0` its flood protection.
//! Observed here: InspIRCd 3.15 sends 001 about one second after NICK/USER (with no DNS lookup
//! made; registration apparently completes on its once-a-second timer), so every client costs
//! ~1 s; connect independent clients side by side. `start` takes ~1.1 s, NickServ REGISTER ~0.1 s.
//! Atheme sends NickServ's "You are now identified" notice before the server's 900.
//!
//! [`RawClient`] is the minimal raw-socket IRC client used for readiness and
//! [`ServicesNet::register_account`]; tests may use it to talk to the network directly.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::net::tcp::OwnedWriteHalf;
use tokio::process::{Child, Command};
use tokio::sync::Notify;

/// The InspIRCd config template, with `@CLIENT_PORT@`, `@LINK_PORT@`, `@DIR@` and `@LINK_PASS@`.
pub const INSPIRCD_TEMPLATE: &str = include_str!("../ircd/services/inspircd.conf.template");
/// The Atheme config template, with `@LINK_PORT@`, `@DIR@` and `@LINK_PASS@`.
pub const ATHEME_TEMPLATE: &str = include_str!("../ircd/services/atheme.conf.template");
/// The IRC server's name (the prefix of its own lines).
pub const SERVER_NAME: &str = "irc.shepherd.test";
/// The services server's name (Atheme), U-lined on the IRC server.
pub const SERVICES_NAME: &str = "services.shepherd.test";
/// The password both sides of the services link send and expect.
pub const LINK_PASSWORD: &str = "shepherd-link-secret";
/// How long `start` waits for the network to be ready before it gives up.
pub const START_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a `RawClient` waits for an expected line by default.
pub const LINE_TIMEOUT: Duration = Duration::from_secs(10);

/// The path of a binary: the environment variable `env` if set, else `name` if found on `PATH`,
/// else `fallback`.
fn find_bin(env: &str, name: &str, fallback: &str) -> PathBuf {
    if let Ok(p) = std::env::var(env) {
        return PathBuf::from(p);
    }
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            let candidate = dir.join(name);
            if candidate.is_file() {
                return candidate;
            }
        }
    }
    PathBuf::from(fallback)
}

/// The inspircd binary: `$INSPIRCD_BIN`, else `inspircd` on `PATH`, else `/usr/sbin/inspircd`.
pub fn inspircd_bin() -> PathBuf {
    find_bin("INSPIRCD_BIN", "inspircd", "/usr/sbin/inspircd")
}

/// The Atheme binary: `$ATHEME_BIN`, else `atheme-services` on `PATH`, else
/// `/usr/bin/atheme-services`.
pub fn atheme_bin() -> PathBuf {
    find_bin("ATHEME_BIN", "atheme-services", "/usr/bin/atheme-services")
}

/// Fill in a template's placeholders.
pub fn render(template: &str, client_port: u16, link_port: u16, dir: &Path) -> String {
    template
        .replace("@CLIENT_PORT@", &client_port.to_string())
        .replace("@LINK_PORT@", &link_port.to_string())
        .replace("@DIR@", &dir.display().to_string())
        .replace("@LINK_PASS@", LINK_PASSWORD)
}

/// A port that was free a moment ago.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// Copy everything a child prints into the shared log, line by line, with a prefix.
fn capture(
    out: impl AsyncRead + Unpin + Send + 'static,
    tag: &'static str,
    log: Arc<Mutex<String>>,
) {
    tokio::spawn(async move {
        let mut lines = BufReader::new(out).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            let mut log = log.lock().unwrap();
            log.push_str(tag);
            log.push_str(line.trim_end());
            log.push('\n');
        }
    });
}

/// Start a process with piped stdout/stderr captured into `log`, killed when dropped.
fn spawn(mut cmd: Command, tag: &'static str, log: &Arc<Mutex<String>>) -> Child {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let mut child = cmd.spawn().unwrap_or_else(|e| {
        panic!("cannot start {tag}: {e} (apt-get install -y inspircd atheme-services)")
    });
    capture(child.stdout.take().unwrap(), tag, log.clone());
    capture(child.stderr.take().unwrap(), tag, log.clone());
    child
}

/// InspIRCd + Atheme in a temporary folder, both killed on drop.
pub struct ServicesNet {
    dir: tempfile::TempDir,
    port: u16,
    link_port: u16,
    inspircd: Child,
    atheme: Child,
    output: Arc<Mutex<String>>,
    startup: Duration,
}

impl ServicesNet {
    /// Start both servers and wait until services are linked and answering (a client gets a
    /// NOTICE back from NickServ). Panics, with the servers' output, when that does not happen
    /// within [`START_TIMEOUT`].
    pub async fn start() -> ServicesNet {
        let began = Instant::now();
        let output = Arc::new(Mutex::new(String::new()));
        let dir = tempfile::Builder::new()
            .prefix("shepherd-services-")
            .tempdir()
            .expect("temp dir");
        std::fs::write(dir.path().join("motd.txt"), "shepherd services testbed\n").expect("motd");

        // InspIRCd first; retried with other ports if one was taken between free_port and bind.
        let mut attempt = 0;
        let (port, link_port, inspircd) = loop {
            attempt += 1;
            let port = free_port();
            let mut link_port = free_port();
            while link_port == port {
                link_port = free_port();
            }
            let conf = dir.path().join("inspircd.conf");
            std::fs::write(
                &conf,
                render(INSPIRCD_TEMPLATE, port, link_port, dir.path()),
            )
            .expect("write inspircd.conf");
            let mut cmd = Command::new(inspircd_bin());
            cmd.arg("--config")
                .arg(&conf)
                .args(["--nofork", "--nopid", "--runasroot"])
                .current_dir(dir.path());
            let mut child = spawn(cmd, "[inspircd] ", &output);
            match wait_listening(&mut child, port, began + START_TIMEOUT).await {
                Ok(()) => break (port, link_port, child),
                Err(why) if attempt < 5 => {
                    let _ = child.kill().await;
                    output.lock().unwrap().push_str(&format!(
                        "[services.rs] inspircd attempt {attempt}: {why}; retrying\n"
                    ));
                }
                Err(why) => panic!(
                    "InspIRCd did not start: {why}\n{}",
                    snapshot(&output, dir.path())
                ),
            }
        };

        let conf = dir.path().join("atheme.conf");
        std::fs::write(&conf, render(ATHEME_TEMPLATE, port, link_port, dir.path()))
            .expect("write atheme.conf");
        let mut cmd = Command::new(atheme_bin());
        cmd.arg("-n")
            .arg("-c")
            .arg(&conf)
            .arg("-D")
            .arg(dir.path())
            .arg("-l")
            .arg(dir.path().join("atheme.log"))
            .arg("-p")
            .arg(dir.path().join("atheme.pid"))
            .current_dir(dir.path());
        let atheme = spawn(cmd, "[atheme] ", &output);

        let mut net = ServicesNet {
            dir,
            port,
            link_port,
            inspircd,
            atheme,
            output,
            startup: Duration::ZERO,
        };
        net.wait_services(began + START_TIMEOUT).await;
        net.startup = began.elapsed();
        net
    }

    /// Poll until NickServ answers a probe client.
    async fn wait_services(&mut self, deadline: Instant) {
        let mut n = 0;
        loop {
            for (name, child) in [
                ("inspircd", &mut self.inspircd),
                ("atheme", &mut self.atheme),
            ] {
                if let Ok(Some(status)) = child.try_wait() {
                    panic!(
                        "{name} exited ({status}) before services were ready\n{}",
                        snapshot(&self.output, self.dir.path())
                    );
                }
            }
            if Instant::now() > deadline {
                panic!("services not ready after {START_TIMEOUT:?}\n{}", self.log());
            }
            n += 1;
            let nick = format!("probe{n}");
            if let Ok(mut probe) =
                RawClient::try_connect(&self.addr(), &nick, &[], None, Duration::from_secs(5)).await
            {
                probe.send("PRIVMSG NickServ :HELP").await;
                let answer = probe
                    .wait_for(Duration::from_secs(2), |l| {
                        let m = Message::parse(l);
                        (m.command == "NOTICE" && m.nick() == Some("NickServ"))
                            || m.command == "401"
                    })
                    .await;
                probe.quit().await;
                if answer.is_some_and(|l| Message::parse(&l).command == "NOTICE") {
                    return;
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// `127.0.0.1:PORT` of the plaintext client port.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The client port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The server-link port Atheme is connected to.
    pub fn link_port(&self) -> u16 {
        self.link_port
    }

    /// The temporary folder holding configs, logs and Atheme's database.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// How long `start` took until services answered.
    pub fn startup_time(&self) -> Duration {
        self.startup
    }

    /// Register a services account named `account` (also the nick used to register it) with
    /// `password`, through a raw client and `NickServ REGISTER`. Panics unless NickServ confirms.
    pub async fn register_account(&self, account: &str, password: &str) {
        let mut c = RawClient::connect(&self.addr(), account).await;
        c.send(&format!(
            "PRIVMSG NickServ :REGISTER {password} {account}@example.com"
        ))
        .await;
        let reply = c
            .expect(|l| {
                let m = Message::parse(l);
                m.command == "NOTICE" && m.nick() == Some("NickServ")
            })
            .await;
        let text = Message::parse(&reply).trailing().to_string();
        if !text.contains("is now registered") {
            panic!(
                "NickServ refused to register {account}: {text}\n{}",
                self.log()
            );
        }
        c.quit().await;
    }

    /// Everything both servers printed, then their log files.
    pub fn log(&self) -> String {
        snapshot(&self.output, self.dir.path())
    }
}

impl Drop for ServicesNet {
    fn drop(&mut self) {
        let _ = self.atheme.start_kill();
        let _ = self.inspircd.start_kill();
    }
}

fn snapshot(output: &Arc<Mutex<String>>, dir: &Path) -> String {
    let mut s = output.lock().unwrap().clone();
    for f in ["inspircd.log", "atheme.log", "atheme-account.log"] {
        if let Ok(text) = std::fs::read_to_string(dir.join(f)) {
            s.push_str(&format!("----- {f}\n{text}"));
        }
    }
    s
}

/// Wait until `port` accepts a connection, failing early if the child exits.
async fn wait_listening(child: &mut Child, port: u16, deadline: Instant) -> Result<(), String> {
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return Err(format!("exited with {status}"));
        }
        if TcpStream::connect(("127.0.0.1", port)).await.is_ok() {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(format!("port {port} not listening"));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// One IRC line taken apart: IRCv3 tags, prefix, command, parameters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// Tags as (key, raw value); a tag without `=` has an empty value.
    pub tags: Vec<(String, String)>,
    pub prefix: Option<String>,
    pub command: String,
    pub params: Vec<String>,
}

impl Message {
    pub fn parse(line: &str) -> Message {
        let mut rest = line.trim_end_matches(['\r', '\n']);
        let mut tags = Vec::new();
        if let Some(r) = rest.strip_prefix('@') {
            let (t, r) = r.split_once(' ').unwrap_or((r, ""));
            for tag in t.split(';').filter(|t| !t.is_empty()) {
                let (k, v) = tag.split_once('=').unwrap_or((tag, ""));
                tags.push((k.to_string(), v.to_string()));
            }
            rest = r.trim_start();
        }
        let mut prefix = None;
        if let Some(r) = rest.strip_prefix(':') {
            let (p, r) = r.split_once(' ').unwrap_or((r, ""));
            prefix = Some(p.to_string());
            rest = r.trim_start();
        }
        let (command, mut rest) = rest.split_once(' ').unwrap_or((rest, ""));
        let mut params = Vec::new();
        while !rest.is_empty() {
            if let Some(trailing) = rest.strip_prefix(':') {
                params.push(trailing.to_string());
                break;
            }
            let (p, r) = rest.split_once(' ').unwrap_or((rest, ""));
            params.push(p.to_string());
            rest = r.trim_start();
        }
        Message {
            tags,
            prefix,
            command: command.to_ascii_uppercase(),
            params,
        }
    }

    /// The value of tag `key`, if present.
    pub fn tag(&self, key: &str) -> Option<&str> {
        self.tags
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// The nick part of the prefix.
    pub fn nick(&self) -> Option<&str> {
        self.prefix
            .as_deref()
            .map(|p| p.split(['!', '@']).next().unwrap_or(p))
    }

    /// The last parameter, or "".
    pub fn trailing(&self) -> &str {
        self.params.last().map(String::as_str).unwrap_or("")
    }
}

/// `s` without IRC formatting codes (bold, italic, underline, reverse, reset; colours with their
/// digits). Atheme writes account names in bold.
pub fn plain_text(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\x02' | '\x1d' | '\x1f' | '\x16' | '\x0f' | '\x1e' | '\x11' => {}
            '\x03' => {
                // Up to two digits of foreground, then optionally ,NN background.
                for _ in 0..2 {
                    if chars.peek().is_some_and(char::is_ascii_digit) {
                        chars.next();
                    }
                }
                let mut ahead = chars.clone();
                if ahead.next() == Some(',') && ahead.peek().is_some_and(char::is_ascii_digit) {
                    chars.next();
                    for _ in 0..2 {
                        if chars.peek().is_some_and(char::is_ascii_digit) {
                            chars.next();
                        }
                    }
                }
            }
            c => out.push(c),
        }
    }
    out
}

/// Standard base64 (with padding), for SASL PLAIN.
pub fn base64(data: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// A minimal raw-socket IRC client: every line received is kept (PINGs are answered), and a
/// cursor lets a test wait for the next line matching a predicate.
pub struct RawClient {
    nick: String,
    writer: Arc<tokio::sync::Mutex<OwnedWriteHalf>>,
    lines: Arc<Mutex<Vec<String>>>,
    notify: Arc<Notify>,
    cursor: usize,
    sasl: Option<String>,
    caps: Vec<String>,
}

impl RawClient {
    /// Connect and register with `nick`, no capabilities; panics unless 001 arrives.
    pub async fn connect(addr: &str, nick: &str) -> RawClient {
        Self::connect_with(addr, nick, &[], None).await
    }

    /// Connect, request `caps` (CAP LS 302 / CAP REQ), optionally log in with SASL PLAIN as
    /// `(account, password)` before CAP END, and wait for 001. Panics on failure to register
    /// (a failed SASL login is not a failure here: see [`RawClient::sasl_result`]).
    pub async fn connect_with(
        addr: &str,
        nick: &str,
        caps: &[&str],
        sasl: Option<(&str, &str)>,
    ) -> RawClient {
        match Self::try_connect(addr, nick, caps, sasl, LINE_TIMEOUT).await {
            Ok(c) => c,
            Err(e) => panic!("{nick} could not register on {addr}: {e}"),
        }
    }

    async fn try_connect(
        addr: &str,
        nick: &str,
        caps: &[&str],
        sasl: Option<(&str, &str)>,
        timeout: Duration,
    ) -> Result<RawClient, String> {
        let stream = TcpStream::connect(addr)
            .await
            .map_err(|e| format!("connect: {e}"))?;
        let (read, write) = stream.into_split();
        let writer = Arc::new(tokio::sync::Mutex::new(write));
        let lines = Arc::new(Mutex::new(Vec::new()));
        let notify = Arc::new(Notify::new());
        {
            // Weak: dropping the RawClient drops the write half, which closes the connection.
            let (writer, lines, notify) = (Arc::downgrade(&writer), lines.clone(), notify.clone());
            tokio::spawn(async move {
                let mut reader = BufReader::new(read).lines();
                while let Ok(Some(line)) = reader.next_line().await {
                    if let (Some(token), Some(writer)) =
                        (line.strip_prefix("PING "), writer.upgrade())
                    {
                        let _ = writer
                            .lock()
                            .await
                            .write_all(format!("PONG {token}\r\n").as_bytes())
                            .await;
                    }
                    lines.lock().unwrap().push(line);
                    notify.notify_waiters();
                }
                lines.lock().unwrap().push("<closed>".to_string());
                notify.notify_waiters();
            });
        }
        let mut c = RawClient {
            nick: nick.to_string(),
            writer,
            lines,
            notify,
            cursor: 0,
            sasl: None,
            caps: Vec::new(),
        };
        let negotiate = !caps.is_empty() || sasl.is_some();
        if negotiate {
            c.send("CAP LS 302").await;
        }
        c.send(&format!("NICK {nick}")).await;
        c.send(&format!("USER {nick} 0 * :shepherd test client"))
            .await;
        if negotiate {
            // CAP * LS [*] :caps — a `*` before the list means more lines follow.
            let mut offered = Vec::new();
            loop {
                let l = c
                    .wait_for(timeout, |l| {
                        let m = Message::parse(l);
                        m.command == "CAP" && m.params.get(1).map(String::as_str) == Some("LS")
                    })
                    .await
                    .ok_or_else(|| format!("no CAP LS reply\n{}", c.transcript()))?;
                let m = Message::parse(&l);
                offered.extend(
                    m.trailing()
                        .split_whitespace()
                        .map(|s| s.split('=').next().unwrap().to_string()),
                );
                if m.params.len() < 4 || m.params[2] != "*" {
                    break;
                }
            }
            let mut want: Vec<&str> = caps.to_vec();
            if sasl.is_some() {
                want.push("sasl");
            }
            if let Some(missing) = want.iter().find(|w| !offered.iter().any(|o| o == *w)) {
                return Err(format!(
                    "server does not offer capability {missing}: {offered:?}"
                ));
            }
            c.send(&format!("CAP REQ :{}", want.join(" "))).await;
            let l = c
                .wait_for(timeout, |l| {
                    let m = Message::parse(l);
                    m.command == "CAP"
                        && matches!(m.params.get(1).map(String::as_str), Some("ACK" | "NAK"))
                })
                .await
                .ok_or_else(|| format!("no CAP ACK/NAK\n{}", c.transcript()))?;
            let m = Message::parse(&l);
            if m.params[1] == "NAK" {
                return Err(format!("CAP REQ refused: {l}"));
            }
            c.caps = m
                .trailing()
                .split_whitespace()
                .map(str::to_string)
                .collect();
            if let Some((account, password)) = sasl {
                c.send("AUTHENTICATE PLAIN").await;
                c.wait_for(timeout, |l| {
                    Message::parse(l).command == "AUTHENTICATE" || l.contains(" 904 ")
                })
                .await
                .ok_or_else(|| format!("no AUTHENTICATE challenge\n{}", c.transcript()))?;
                let blob = base64(format!("{account}\0{account}\0{password}").as_bytes());
                c.send(&format!("AUTHENTICATE {blob}")).await;
                let l = c
                    .wait_for(timeout, |l| {
                        matches!(
                            Message::parse(l).command.as_str(),
                            "903" | "904" | "905" | "906" | "907" | "908"
                        )
                    })
                    .await
                    .ok_or_else(|| format!("no SASL result numeric\n{}", c.transcript()))?;
                c.sasl = Some(Message::parse(&l).command);
            }
            c.send("CAP END").await;
        }
        c.wait_for(timeout, |l| {
            let m = Message::parse(l);
            m.command == "001" || m.command == "ERROR" || m.command == "433" || l == "<closed>"
        })
        .await
        .filter(|l| Message::parse(l).command == "001")
        .ok_or_else(|| format!("no 001\n{}", c.transcript()))?;
        Ok(c)
    }

    /// The nick this client registered with.
    pub fn nick(&self) -> &str {
        &self.nick
    }

    /// The SASL result numeric received during registration ("903" success, "904" failure, ...),
    /// or None if SASL was not attempted.
    pub fn sasl_result(&self) -> Option<&str> {
        self.sasl.as_deref()
    }

    /// The capabilities the server ACKed.
    pub fn caps(&self) -> &[String] {
        &self.caps
    }

    /// Send one line (CRLF appended).
    pub async fn send(&self, line: &str) {
        let mut w = self.writer.lock().await;
        w.write_all(format!("{line}\r\n").as_bytes())
            .await
            .expect("send to IRC server");
    }

    /// Wait for the next line (after the last one matched) satisfying `pred`; None on timeout.
    pub async fn wait_for(
        &mut self,
        timeout: Duration,
        pred: impl Fn(&str) -> bool,
    ) -> Option<String> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let notified = self.notify.notified();
            {
                let lines = self.lines.lock().unwrap();
                if let Some(i) = (self.cursor..lines.len()).find(|&i| pred(&lines[i])) {
                    self.cursor = i + 1;
                    return Some(lines[i].clone());
                }
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return None;
            }
        }
    }

    /// Wait until any line received so far or later satisfies `pred`, whatever its order
    /// relative to lines already matched; the cursor is left alone. None on timeout.
    pub async fn wait_seen(
        &self,
        timeout: Duration,
        pred: impl Fn(&str) -> bool,
    ) -> Option<String> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let notified = self.notify.notified();
            if let Some(l) = self.lines.lock().unwrap().iter().find(|l| pred(l)) {
                return Some(l.clone());
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return None;
            }
        }
    }

    /// Like `wait_for` with [`LINE_TIMEOUT`], panicking with the transcript on timeout.
    pub async fn expect(&mut self, pred: impl Fn(&str) -> bool) -> String {
        match self.wait_for(LINE_TIMEOUT, pred).await {
            Some(l) => l,
            None => panic!(
                "{}: expected line not received\n{}",
                self.nick,
                self.transcript()
            ),
        }
    }

    /// Every line received so far.
    pub fn lines(&self) -> Vec<String> {
        self.lines.lock().unwrap().clone()
    }

    /// Every line received so far, one per line, for failure messages.
    pub fn transcript(&self) -> String {
        self.lines().join("\n")
    }

    /// Send QUIT and wait briefly for the server to close the connection.
    pub async fn quit(mut self) {
        self.send("QUIT :bye").await;
        let _ = self
            .wait_for(Duration::from_secs(2), |l| l == "<closed>")
            .await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_matches_rfc4648_vectors() {
        for (input, want) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(base64(input.as_bytes()), want);
        }
        assert_eq!(base64(b"alice\0alice\0pw"), "YWxpY2UAYWxpY2UAcHc=");
    }

    #[test]
    fn parses_tags_prefix_and_params() {
        let m = Message::parse("@account=alice;msgid=x :carol!u@h PRIVMSG bob :hi there\r\n");
        assert_eq!(m.tag("account"), Some("alice"));
        assert_eq!(m.nick(), Some("carol"));
        assert_eq!(m.command, "PRIVMSG");
        assert_eq!(m.params, vec!["bob", "hi there"]);
        let m = Message::parse(":irc 330 me carol alice :is logged in as");
        assert_eq!(m.params, vec!["me", "carol", "alice", "is logged in as"]);
        assert_eq!(m.tag("account"), None);
    }

    #[test]
    fn strips_formatting() {
        assert_eq!(
            plain_text("Information on \x02alice\x02 (account \x1falice\x1f):"),
            "Information on alice (account alice):"
        );
        assert_eq!(plain_text("\x0304,12red\x0f \x035x"), "red x");
    }

    #[test]
    fn templates_render_all_placeholders() {
        for t in [INSPIRCD_TEMPLATE, ATHEME_TEMPLATE] {
            let r = render(t, 1, 2, Path::new("/tmp/x"));
            for placeholder in ["@CLIENT_PORT@", "@LINK_PORT@", "@DIR@", "@LINK_PASS@"] {
                assert!(
                    !r.contains(placeholder),
                    "{placeholder} left in a rendered template"
                );
            }
        }
    }
}
