//! The relays under test, the IRC scene around them, the payloads, and small measuring helpers
//! shared by the phases of `bench_alerts`.

use std::collections::BTreeSet;
use std::time::Duration;

use shepherd_tests::alertmanager::IrcRelayPeer;
use shepherd_tests::gitlab::GitLabDouble;
use shepherd_tests::harness::{Backend, Shepherd, ShepherdConfig, TestStore, metric_value};
use shepherd_tests::irc_client::{IrcClient, Message};
use shepherd_tests::ircd::{Ngircd, Throttle};

pub use shepherd_tests::measure::{Stats, mib, ms, rss_kib};

use super::cut::CutProxy;

/// The one channel every relay says its alerts in.
pub const CHANNEL: &str = "#alerts";
/// The human who watches the channel.
pub const WATCHER: &str = "watcher";
/// shepherd's webhook bearer token; the peer is sent the same header (it ignores it).
pub const TOKEN: &str = "bench-am-token-0123456789";
/// The peer's nick.
pub const PEER_NICK: &str = "amrelay";
/// shepherd's pacing in this bench: a burst and a rate no single line (nor a 2,000-line backlog)
/// ever waits for, so the measured latency is shepherd's own work.
pub const FLOOD_BURST: u32 = 100_000;
pub const FLOOD_RATE: f64 = 100_000.0;
/// How long a start, a join or a single expected line may take before the bench gives up.
pub const WAIT: Duration = Duration::from_secs(60);
/// Quiet after a relay joined before its idle memory is read.
pub const IDLE_SETTLE: Duration = Duration::from_secs(3);

/// A webhook body captured from Alertmanager 0.25 (`payload-firing.json` of the test bed, kept
/// here so the bench runs where that folder is absent). Each notification replaces the alert's
/// name (`DiskFull`, in its labels, group labels, group key and summary) and its fingerprint.
const PAYLOAD_FIRING: &str = r#"{
  "receiver": "webhook",
  "status": "firing",
  "alerts": [
    {
      "status": "firing",
      "labels": {
        "alertname": "DiskFull",
        "instance": "db1:9100",
        "job": "node",
        "severity": "critical"
      },
      "annotations": {
        "description": "Disk usage above 90%",
        "summary": "DiskFull is firing on db1"
      },
      "startsAt": "2026-11-25T07:47:20Z",
      "endsAt": "0001-01-01T00:00:00Z",
      "generatorURL": "http://127.0.0.1:9090/graph?g0.expr=up",
      "fingerprint": "1751650d45bf7d6b"
    }
  ],
  "groupLabels": {
    "alertname": "DiskFull"
  },
  "commonLabels": {
    "alertname": "DiskFull",
    "instance": "db1:9100",
    "job": "node",
    "severity": "critical"
  },
  "commonAnnotations": {
    "description": "Disk usage above 90%",
    "summary": "DiskFull is firing on db1"
  },
  "externalURL": "http://127.0.0.1:19093",
  "version": "4",
  "groupKey": "{}/{alertname=~\".+\"}:{alertname=\"DiskFull\"}",
  "truncatedAlerts": 0
}"#;

/// Digits after a name's prefix (`AmLoad00042`).
const DIGITS: usize = 5;

/// The alert name `prefix` + `i` in five digits.
pub fn alert_name(prefix: &str, i: usize) -> String {
    format!("{prefix}{i:0width$}", width = DIGITS)
}

/// A stable 16-hex-digit fingerprint of `name` (FNV-1a), as Alertmanager gives each alert one.
fn fingerprint(name: &str) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in name.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{h:016x}")
}

/// A version 4 notification with one firing alert named `name`, in the captured shape.
pub fn payload(name: &str) -> Vec<u8> {
    PAYLOAD_FIRING
        .replace("DiskFull", name)
        .replace("1751650d45bf7d6b", &fingerprint(name))
        .into_bytes()
}

/// A version 4 notification of `n` firing alerts named `prefix` + 0, 1, ... (a storm in one
/// group), in the captured shape.
pub fn storm_payload(prefix: &str, n: usize) -> Vec<u8> {
    let mut notification: serde_json::Value =
        serde_json::from_str(PAYLOAD_FIRING).expect("the captured payload is JSON");
    let template = notification["alerts"][0].clone();
    let alerts: Vec<serde_json::Value> = (0..n)
        .map(|i| {
            let name = alert_name(prefix, i);
            let mut alert = template.clone();
            alert["labels"]["alertname"] = name.clone().into();
            alert["annotations"]["summary"] = format!("{name} is firing on db1").into();
            alert["fingerprint"] = fingerprint(&name).into();
            alert
        })
        .collect();
    notification["alerts"] = alerts.into();
    notification["groupLabels"] = serde_json::json!({ "job": "node" });
    notification["commonLabels"] = serde_json::json!({ "job": "node", "instance": "db1:9100" });
    notification["groupKey"] = "{}/{alertname=~\".+\"}:{job=\"node\"}".into();
    serde_json::to_vec(&notification).expect("serializes")
}

/// The number in the first alert name with `prefix` in `text`.
pub fn index_in(text: &str, prefix: &str) -> Option<usize> {
    let at = text.find(prefix)? + prefix.len();
    text.get(at..at + DIGITS)?.parse().ok()
}

/// The relay's lines in the channel.
pub fn relay_lines<'a>(msgs: &'a [Message], nick: &str) -> impl Iterator<Item = &'a Message> {
    let nick = nick.to_string();
    msgs.iter().filter(move |m| {
        m.is_message_from(&nick) && m.param(0).is_some_and(|c| c.eq_ignore_ascii_case(CHANNEL))
    })
}

/// How many of the relay's lines name an alert with `prefix`.
pub fn count_lines(msgs: &[Message], nick: &str, prefix: &str) -> usize {
    relay_lines(msgs, nick)
        .filter(|m| index_in(m.text(), prefix).is_some())
        .count()
}

/// The alert numbers (with `prefix`) the relay's lines named, in arrival order.
pub fn indices(msgs: &[Message], nick: &str, prefix: &str) -> Vec<usize> {
    relay_lines(msgs, nick)
        .filter_map(|m| index_in(m.text(), prefix))
        .collect()
}

pub fn distinct(v: &[usize]) -> BTreeSet<usize> {
    v.iter().copied().collect()
}

/// A JOIN of `nick` to the channel.
pub fn joined(msgs: &[Message], nick: &str) -> bool {
    msgs.iter().any(|m| {
        m.command == "JOIN"
            && m.nick
                .as_deref()
                .is_some_and(|n| n.eq_ignore_ascii_case(nick))
            && m.param(0).is_some_and(|c| c.eq_ignore_ascii_case(CHANNEL))
    })
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RelayKind {
    Shepherd(Backend),
    Peer,
}

impl RelayKind {
    pub fn label(self) -> &'static str {
        match self {
            RelayKind::Shepherd(Backend::Sqlite) => "shepherd, SQLite",
            RelayKind::Shepherd(Backend::Postgres) => "shepherd, PostgreSQL",
            RelayKind::Peer => "peer: alertmanager-irc-relay",
        }
    }

    pub fn nick(self) -> &'static str {
        match self {
            RelayKind::Shepherd(_) => "shepherd",
            RelayKind::Peer => PEER_NICK,
        }
    }

    /// A name for files: `shepherd-sqlite`, `shepherd-postgres`, `peer`.
    pub fn slug(self) -> &'static str {
        match self {
            RelayKind::Shepherd(Backend::Sqlite) => "shepherd-sqlite",
            RelayKind::Shepherd(Backend::Postgres) => "shepherd-postgres",
            RelayKind::Peer => "peer",
        }
    }

    /// `sqlite`, `postgres` or `peer` (the `relays=` option's words).
    pub fn parse(word: &str) -> Option<RelayKind> {
        match word.trim() {
            "sqlite" => Some(RelayKind::Shepherd(Backend::Sqlite)),
            "postgres" | "postgresql" | "pg" => Some(RelayKind::Shepherd(Backend::Postgres)),
            "peer" => Some(RelayKind::Peer),
            _ => None,
        }
    }
}

/// The shipped `[queue]` settings (`config/shepherd.toml`) as `SHEPHERD_*` overrides of the
/// harness's test settings (2 workers, 2 s leases, 50 ms polls).
fn shipped_queue_env() -> Vec<(String, String)> {
    [
        ("SHEPHERD_QUEUE__WORKERS", "4"),
        ("SHEPHERD_QUEUE__LEASE_SECONDS", "60"),
        ("SHEPHERD_QUEUE__RETRY_BASE_MS", "1000"),
        ("SHEPHERD_QUEUE__RETRY_MAX_MS", "300000"),
        ("SHEPHERD_QUEUE__POLL_INTERVAL_MS", "250"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect()
}

/// `shepherd serve`, its store and the GitLab double its config points at.
struct ShepherdRun {
    bot: Shepherd,
    store: TestStore,
    _gitlab: GitLabDouble,
}

enum Inner {
    Shepherd(Box<ShepherdRun>),
    Peer(Box<IrcRelayPeer>),
}

/// One running relay.
pub struct Relay {
    pub kind: RelayKind,
    inner: Inner,
}

impl Relay {
    /// Starts the relay against the IRC server on 127.0.0.1:`irc_port` (returns once its HTTP
    /// side answers; the caller awaits its JOIN).
    pub async fn start(kind: RelayKind, irc_port: u16) -> Relay {
        let inner = match kind {
            RelayKind::Shepherd(backend) => {
                let store = TestStore::new(backend).await;
                let gitlab = GitLabDouble::start().await;
                let mut config = ShepherdConfig::new(&store, &gitlab);
                config.production = false;
                // Nothing is watched; poll at the shipped interval.
                config.watcher_poll_ms = 30_000;
                config.extra = format!(
                    "[irc]\nserver = \"127.0.0.1\"\nport = {irc_port}\ntls = false\n\
                     channels = [\"{CHANNEL}\"]\nflood_burst = {FLOOD_BURST}\n\
                     flood_rate = {FLOOD_RATE:.1}\n\n[alerts]\n\
                     webhook_token_env = \"BENCH_AM_TOKEN\"\n\
                     default_targets = [\"irc:{CHANNEL}\"]\n"
                );
                config.env.push(("BENCH_AM_TOKEN".into(), TOKEN.into()));
                config.env.extend(shipped_queue_env());
                let bot = Shepherd::serve(&config).await;
                bot.wait_http(WAIT).await;
                Inner::Shepherd(Box::new(ShepherdRun {
                    bot,
                    store,
                    _gitlab: gitlab,
                }))
            }
            RelayKind::Peer => {
                let peer = IrcRelayPeer::start("127.0.0.1", irc_port, PEER_NICK, &[CHANNEL]).await;
                Inner::Peer(Box::new(peer))
            }
        };
        Relay { kind, inner }
    }

    pub fn nick(&self) -> &'static str {
        self.kind.nick()
    }

    /// Where notifications are POSTed.
    pub fn webhook_url(&self) -> String {
        match &self.inner {
            Inner::Shepherd(run) => format!("{}/hooks/alertmanager", run.bot.base_url()),
            Inner::Peer(peer) => peer.webhook_url(CHANNEL),
        }
    }

    /// A cheap GET that opens a client's keep-alive connection before the clock starts.
    pub fn warm_url(&self) -> String {
        match &self.inner {
            Inner::Shepherd(run) => format!("{}/healthz", run.bot.base_url()),
            Inner::Peer(peer) => format!("{}/metrics", peer.url()),
        }
    }

    pub fn pid(&self) -> Option<u32> {
        match &self.inner {
            Inner::Shepherd(run) => run.bot.pid(),
            Inner::Peer(peer) => peer.pid(),
        }
    }

    /// shepherd's stderr, or everything the peer printed.
    pub fn log(&self) -> String {
        match &self.inner {
            Inner::Shepherd(run) => run.bot.stderr(),
            Inner::Peer(peer) => peer.log(),
        }
    }

    /// Keeps the relay's log (and `extra` logs, such as the IRC server's) in
    /// `$TMPDIR/bench_alerts-logs/<phase>-<relay>*.log`, for reading after the run.
    pub fn save_log(&self, phase: &str, extra: &[(&str, String)]) {
        let dir = std::env::temp_dir().join("bench_alerts-logs");
        if std::fs::create_dir_all(&dir).is_err() {
            return;
        }
        let base = format!("{phase}-{}", self.kind.slug());
        let mut files = vec![(format!("{base}.log"), self.log())];
        for (name, text) in extra {
            files.push((format!("{base}-{name}.log"), text.clone()));
        }
        for (name, text) in files {
            let path = dir.join(name);
            if std::fs::write(&path, text).is_ok() {
                eprintln!("[{phase}] {}: log in {}", self.kind.label(), path.display());
            }
        }
    }

    /// The relay's Prometheus text ("" when it does not answer).
    pub async fn metrics_text(&self) -> String {
        let url = match &self.inner {
            Inner::Shepherd(run) => format!("{}/metrics", run.bot.base_url()),
            Inner::Peer(peer) => format!("{}/metrics", peer.url()),
        };
        match http_client().get(&url).send().await {
            Ok(r) => r.text().await.unwrap_or_default(),
            Err(_) => String::new(),
        }
    }

    /// The sum of every series of metric `name` (all label sets).
    pub async fn metric_sum(&self, name: &str) -> f64 {
        let text = self.metrics_text().await;
        text.lines()
            .filter(|l| {
                l.strip_prefix(name)
                    .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
            })
            .filter_map(|l| metric_value(l, name))
            .fold(0.0, |a, b| a + b)
    }

    /// shepherd only: IRC outbox messages not (yet) marked delivered.
    pub async fn undelivered(&self) -> Option<i64> {
        match &self.inner {
            Inner::Shepherd(run) => Some(
                run.store
                    .count(
                        "SELECT COUNT(*) FROM outbox WHERE frontend = 'irc' AND delivered_at IS NULL",
                    )
                    .await,
            ),
            Inner::Peer(_) => None,
        }
    }

    /// shepherd only: stored notifications whose queue item is not done.
    pub async fn unprocessed(&self) -> Option<i64> {
        match &self.inner {
            Inner::Shepherd(run) => Some(
                run.store
                    .count("SELECT COUNT(*) FROM requests WHERE state <> 'done'")
                    .await,
            ),
            Inner::Peer(_) => None,
        }
    }

    /// shepherd only: when the last stored notification was processed (its queue item done)
    /// and when the last IRC line was marked delivered, in Unix ms, from the store.
    pub async fn finished_at(&self) -> Option<(Option<i64>, Option<i64>)> {
        let Inner::Shepherd(run) = &self.inner else {
            return None;
        };
        let pool = run.store.connect().await;
        let scalar = |sql: &'static str| {
            let pool = pool.clone();
            async move {
                sqlx::query_scalar::<_, Option<i64>>(sql)
                    .fetch_one(&pool)
                    .await
                    .ok()
                    .flatten()
            }
        };
        let processed = scalar(
            "SELECT MAX(updated_at) FROM requests WHERE kind = 'alert-notification' AND state = 'done'",
        )
        .await;
        let delivered = scalar("SELECT MAX(delivered_at) FROM outbox WHERE frontend = 'irc'").await;
        pool.close().await;
        Some((processed, delivered))
    }

    /// Stops the process (SIGKILL) and drops its store.
    pub async fn stop(self) {
        match self.inner {
            Inner::Shepherd(mut run) => {
                run.bot.kill9().await;
                drop(run);
            }
            Inner::Peer(mut peer) => peer.kill().await,
        }
    }
}

/// A fresh ngIRCd (throttling off), optionally a proxy in front of it for the relay, the human
/// in the channel, and the relay, joined.
pub struct Scene {
    pub server: Ngircd,
    pub proxy: Option<CutProxy>,
    pub human: IrcClient,
    pub relay: Relay,
}

/// The human connected to `server` and in the channel.
pub async fn watcher(server: &Ngircd) -> IrcClient {
    let mut human = IrcClient::connect(&server.addr(), WATCHER).await;
    human.join(CHANNEL).await;
    human
}

impl Scene {
    /// `proxy`: `None` for a direct connection, `Some(fix_user)` for a `CutProxy`.
    pub async fn start(kind: RelayKind, proxy: Option<bool>) -> Scene {
        let server = Ngircd::start(Throttle::Off).await;
        let proxy = match proxy {
            Some(fix_user) => Some(CutProxy::start(&server.addr(), fix_user).await),
            None => None,
        };
        let human = watcher(&server).await;
        let irc_port = proxy.as_ref().map_or(server.port(), CutProxy::port);
        let relay = Relay::start(kind, irc_port).await;
        let nick = relay.nick();
        if !human.wait_for(WAIT, |m| joined(m, nick)).await {
            panic!(
                "{} never joined {CHANNEL}:\n{}\n--- relay log ---\n{}",
                kind.label(),
                human.transcript(),
                relay.log()
            );
        }
        Scene {
            server,
            proxy,
            human,
            relay,
        }
    }

    /// A scene whose relay has settled: started, joined, then `IDLE_SETTLE` of quiet; with the
    /// relay's pid and its idle VmRSS (KiB), read then.
    pub async fn settled(kind: RelayKind) -> (Scene, u32, u64) {
        let scene = Scene::start(kind, None).await;
        let pid = scene.relay.pid().expect("the relay runs");
        tokio::time::sleep(IDLE_SETTLE).await;
        let (rss_idle_kib, _) = rss_kib(pid).expect("the relay's /proc status");
        (scene, pid, rss_idle_kib)
    }

    pub async fn stop(self, phase: &str) {
        self.relay.save_log(phase, &[("ngircd", self.server.log())]);
        self.relay.stop().await;
        drop(self.human);
        drop(self.proxy);
        drop(self.server);
    }
}

/// An HTTP client with one keep-alive connection, never through a proxy from the environment.
pub fn http_client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .pool_max_idle_per_host(1)
        .timeout(Duration::from_secs(30))
        .build()
        .expect("HTTP client")
}

/// POSTs one notification as Alertmanager does (bearer token, JSON, its user agent) and reads
/// the answer to its end. The status, or the transport error.
pub async fn post(client: &reqwest::Client, url: &str, body: Vec<u8>) -> Result<u16, String> {
    let r = client
        .post(url)
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .header(reqwest::header::USER_AGENT, "Alertmanager/0.25.0")
        .header(reqwest::header::AUTHORIZATION, format!("Bearer {TOKEN}"))
        .body(body)
        .send()
        .await
        .map_err(|e| e.to_string())?;
    let status = r.status().as_u16();
    let _ = r.bytes().await;
    Ok(status)
}

pub fn secs(d: Duration) -> String {
    format!("{:.2} s", d.as_secs_f64())
}

/// The highest VmRSS of a process, sampled every 10 ms until [`PeakSampler::stop`].
pub struct PeakSampler {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    peak: std::sync::Arc<std::sync::atomic::AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl PeakSampler {
    pub fn start(pid: u32) -> PeakSampler {
        use std::sync::atomic::Ordering;
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let peak = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let task = {
            let (stop, peak) = (stop.clone(), peak.clone());
            tokio::spawn(async move {
                while !stop.load(Ordering::SeqCst) {
                    if let Some((rss, _)) = rss_kib(pid) {
                        peak.fetch_max(rss, Ordering::SeqCst);
                    }
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            })
        };
        PeakSampler { stop, peak, task }
    }

    /// Stops sampling; the highest VmRSS seen, in KiB.
    pub async fn stop(self) -> u64 {
        use std::sync::atomic::Ordering;
        self.stop.store(true, Ordering::SeqCst);
        let _ = self.task.await;
        self.peak.load(Ordering::SeqCst)
    }
}

/// Counts WARN and ERROR lines of a shepherd log and prints each distinct message once to
/// stderr with how often it came (timestamps and fields cut).
pub fn log_problems(run: &str, log: &str) -> (usize, usize) {
    let mut seen: Vec<(String, usize)> = Vec::new();
    let (mut warnings, mut errors) = (0, 0);
    for line in log.lines() {
        let level = if line.contains(" WARN ") {
            warnings += 1;
            "WARN"
        } else if line.contains(" ERROR ") {
            errors += 1;
            "ERROR"
        } else {
            continue;
        };
        let message = line
            .split_once(level)
            .map(|(_, m)| m.trim())
            .unwrap_or(line);
        let short: String = message
            .split(" error=")
            .next()
            .unwrap_or(message)
            .chars()
            .take(160)
            .collect();
        let short = format!("{level} {short}");
        match seen.iter_mut().find(|(m, _)| *m == short) {
            Some((_, n)) => *n += 1,
            None => seen.push((short, 1)),
        }
    }
    for (m, n) in &seen {
        eprintln!("[{run}] {n}x {m}");
    }
    (warnings, errors)
}

/// How often the peer's IRC library slept for its flood limit (`irc.rateLimit(): Flood!`).
pub fn flood_sleeps(log: &str) -> usize {
    log.matches("Flood! Sleeping").count()
}
