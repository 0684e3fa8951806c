//! The IRC front end: shepherd in IRC channels and queries.
//!
//! One task keeps a connection alive: connect (TLS or not), register (CAP negotiation for
//! `account-tag`, `account-notify`, `extended-join` and SASL PLAIN; server password; alternate
//! nicks), join the channels (with keys), then read until the connection dies — a missing
//! PONG counts as dead within two ping intervals — and reconnect with capped exponential
//! backoff and full jitter, reset after a stable period.
//!
//! Reading: a PRIVMSG addressed to the bot (prefix or name in a channel, anything in a query)
//! becomes an `Inbound` for the dispatcher, with the sender's services account as identity
//! (never the nick; see `accounts`). NOTICEs, CTCP and our own lines are never commands.
//!
//! Writing: a delivery task takes the `irc` outbox in small, fair rounds (see `plan`), makes
//! every message safe for IRC (`safe_text::irc`: no NUL, CR or other control byte reaches the
//! wire) and splits it into lines that fit IRC's 512 bytes, paces them through a token bucket
//! tuned to the server's flood limits, and marks a round delivered only after the server
//! answered a PING sent behind it — a round not acknowledged is sent again, whole, after a
//! reconnect (at least once: lines the server did process are repeated then), and nothing is
//! lost while the bot is away. A refusal (a 4xx numeric) names a room: every message of the
//! round for that room counts it, and the room then gets one message per round for a while, so
//! later refusals name their message exactly; a refused message, and each message of a round
//! after which the acknowledgement never came or the link died, counts a failed attempt, is
//! tried again on its own, and after `max_send_attempts` is parked; the messages behind it go
//! on. Messages for a channel wait while the bot is not in it (kicked, not yet joined) without
//! crowding out the other rooms; a message for a channel not in `irc.channels` is parked.
//!
//! CTCP requests are answered here, not by the client library: a few per minute in all
//! (`ctcp_per_minute`), through the same pacing as every other line, so a CTCP flood can neither
//! get the bot disconnected for flooding nor hold back the lines people wait for.

mod accounts;
mod nodelay;
mod plan;
mod split;

use std::collections::{HashMap, HashSet};
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use async_trait::async_trait;
use base64::Engine as _;
use futures::StreamExt;
use governor::{DefaultDirectRateLimiter, Quota};
use irc::client::prelude::{
    Capability, Client, Command, Config as IrcClientConfig, Message, Response,
};
use irc::proto::CapSubCommand;
use prometheus::IntCounterVec;
use prometheus::{Counter, IntCounter, IntGauge, Registry};
use shepherd_commands::{Addressing, Frontend, addressed};
use shepherd_config::{BotConfig, IrcConfig, IrcReplyKind};
use shepherd_core::outbox::{Outbox, OutboxMessage};
use shepherd_core::{Capabilities, CommandStyle, Formatting, Origin};
use tokio::sync::{Notify, mpsc, oneshot, watch};

use crate::dispatch::{Dispatcher, Inbound};
use crate::frontend::{Context, FrontEnd};
use accounts::{Account, AccountCache};

pub const FRONTEND: &str = "irc";

/// IRC's own metrics, in the shared registry.
#[derive(Clone)]
pub struct IrcMetrics {
    connected: IntGauge,
    reconnects: IntCounter,
    lines_sent: IntCounter,
    lines_queued: IntGauge,
    send_errors: IntCounter,
    flood_delay: Counter,
    refused: IntCounter,
    ctcp: IntCounterVec,
}

impl IrcMetrics {
    pub fn register(registry: &Registry) -> Result<Self, prometheus::Error> {
        let m = Self {
            connected: IntGauge::new("irc_connected", "1 while registered on the IRC server")?,
            reconnects: IntCounter::new("irc_reconnects_total", "IRC reconnection attempts")?,
            lines_sent: IntCounter::new("irc_lines_sent_total", "Lines sent to IRC")?,
            lines_queued: IntGauge::new(
                "irc_lines_queued",
                "Outbox messages waiting for IRC delivery",
            )?,
            send_errors: IntCounter::new(
                "irc_send_errors_total",
                "Lines that could not be handed to the IRC connection",
            )?,
            flood_delay: Counter::new(
                "irc_flood_delay_seconds_total",
                "Time spent waiting for the flood-control token bucket",
            )?,
            refused: IntCounter::new(
                "irc_messages_refused_total",
                "Messages the IRC server refused (a 4xx numeric for their target)",
            )?,
            ctcp: IntCounterVec::new(
                prometheus::Opts::new(
                    "irc_ctcp_total",
                    "CTCP requests received, by outcome (answered, limited, ignored)",
                ),
                &["outcome"],
            )?,
        };
        registry.register(Box::new(m.connected.clone()))?;
        registry.register(Box::new(m.reconnects.clone()))?;
        registry.register(Box::new(m.lines_sent.clone()))?;
        registry.register(Box::new(m.lines_queued.clone()))?;
        registry.register(Box::new(m.send_errors.clone()))?;
        registry.register(Box::new(m.flood_delay.clone()))?;
        registry.register(Box::new(m.refused.clone()))?;
        registry.register(Box::new(m.ctcp.clone()))?;
        Ok(m)
    }
}

/// The IRC front end as the wiring lists it (see `frontend::configured`).
pub struct Irc {
    cfg: IrcConfig,
    bot_name: String,
    prefix: String,
}

impl Irc {
    pub fn new(cfg: IrcConfig, bot: &BotConfig) -> Self {
        Self {
            cfg,
            bot_name: bot.name.clone(),
            prefix: bot.prefix.clone(),
        }
    }
}

#[async_trait]
impl FrontEnd for Irc {
    fn capabilities(&self) -> Capabilities {
        Capabilities {
            name: FRONTEND,
            edits: false,
            formatting: Formatting::Mirc,
            style: CommandStyle::Prefix,
            // A protocol line, CRLF included; messages are split into as many as they need.
            max_message_bytes: Some(512),
            messages_per_second: Some(self.cfg.flood_rate),
        }
    }

    async fn run(
        self: Box<Self>,
        ctx: Arc<Context>,
        shutdown: watch::Receiver<bool>,
    ) -> anyhow::Result<()> {
        let metrics =
            IrcMetrics::register(ctx.metrics().registry()).context("registering IRC metrics")?;
        let frontend = IrcFrontend {
            cfg: self.cfg,
            bot_name: self.bot_name,
            prefix: self.prefix,
            dispatcher: ctx.dispatcher().clone(),
            outbox: ctx.outbox().clone(),
            metrics,
        };
        frontend.run(shutdown).await;
        Ok(())
    }
}

pub struct IrcFrontend {
    pub cfg: IrcConfig,
    pub bot_name: String,
    pub prefix: String,
    pub dispatcher: Arc<Dispatcher>,
    pub outbox: Outbox,
    pub metrics: IrcMetrics,
}

/// State shared by a session's reader and its delivery task.
struct Shared {
    registered: watch::Sender<bool>,
    joined: Mutex<HashSet<String>>,
    nick: Mutex<String>,
    pongs: Mutex<HashMap<String, oneshot::Sender<()>>>,
    changed: Notify,
    /// Refusals the server sent since the delivery task last looked: the target they name
    /// (lower case; `None` for a refusal without one, such as 417 input too long) and why.
    refusals: Mutex<Vec<(Option<String>, String)>>,
    /// Outbox messages sent and not yet acknowledged.
    in_flight: Mutex<Vec<String>>,
}

impl Shared {
    fn is_joined(&self, channel: &str) -> bool {
        self.joined
            .lock()
            .map(|j| j.contains(&channel.to_ascii_lowercase()))
            .unwrap_or(false)
    }

    fn nick(&self) -> String {
        self.nick.lock().map(|n| n.clone()).unwrap_or_default()
    }
}

#[derive(Debug, thiserror::Error)]
enum SessionError {
    #[error("{0}")]
    Irc(#[from] irc::error::Error),
    #[error("connecting timed out")]
    ConnectTimeout,
    #[error("the server did not answer a PING within {0:?}")]
    NoPong(Duration),
    #[error("the connection closed")]
    Closed,
    #[error("registration did not finish within {0:?}")]
    RegistrationTimeout(Duration),
}

enum Ended {
    Shutdown,
}

fn is_channel(target: &str) -> bool {
    target.starts_with(['#', '&', '+', '!'])
}

impl IrcFrontend {
    /// Keeps a connection up until `shutdown`.
    pub async fn run(self, mut shutdown: watch::Receiver<bool>) {
        let this = Arc::new(self);
        let mut failures: u32 = 0;
        loop {
            if *shutdown.borrow() {
                return;
            }
            let started = Instant::now();
            match this.clone().session(&mut shutdown).await {
                Ok(Ended::Shutdown) => return,
                Err(e) => {
                    tracing::warn!(server = %this.cfg.server, error = %e, "irc: disconnected")
                }
            }
            this.metrics.connected.set(0);
            if started.elapsed() >= Duration::from_secs(this.cfg.stable_after_secs) {
                failures = 0;
            }
            failures = failures.saturating_add(1);
            let cap = Duration::from_secs(this.cfg.reconnect_max_secs);
            // 2^failures seconds, capped, full jitter (at least 100 ms).
            let delay = shepherd_core::backoff::full_jitter(
                Duration::from_secs(1),
                cap,
                failures.min(16) + 1,
            )
            .max(Duration::from_millis(100));
            this.metrics.reconnects.inc();
            tracing::info!(?delay, attempt = failures, "irc: reconnecting");
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = shutdown.changed() => {}
            }
        }
    }

    /// The configured alternates, then numbered ones: the client library ends the session
    /// when a nick change fails and no alternate is left, which must not happen because a
    /// try to regain the nick raced with someone else.
    fn alternates(&self) -> Vec<String> {
        let mut alts = self.cfg.alternate_nicks();
        alts.extend((1..=9).map(|n| format!("{}{n}", self.cfg.nick())));
        alts
    }

    fn realname(&self) -> String {
        format!("{} — CI/CD ChatOps", self.bot_name)
    }

    fn client_config(&self) -> IrcClientConfig {
        IrcClientConfig {
            nickname: Some(self.cfg.nick().to_string()),
            alt_nicks: self.alternates(),
            username: Some(self.bot_name.clone()),
            realname: Some(self.realname()),
            server: Some(self.cfg.server.clone()),
            port: Some(self.cfg.port),
            use_tls: Some(self.cfg.tls),
            dangerously_accept_invalid_certs: Some(self.cfg.tls_accept_invalid_certs),
            channels: self.cfg.channels.clone(),
            channel_keys: self.cfg.channel_keys().into_iter().collect(),
            ping_time: Some(self.cfg.ping_interval_secs),
            ping_timeout: Some(self.cfg.ping_interval_secs),
            encoding: Some("UTF-8".to_string()),
            version: Some(format!("shepherd {}", env!("CARGO_PKG_VERSION"))),
            ..IrcClientConfig::default()
        }
    }

    async fn session(
        self: Arc<Self>,
        shutdown: &mut watch::Receiver<bool>,
    ) -> Result<Ended, SessionError> {
        let connect = Client::from_config(self.client_config());
        let mut client = tokio::time::timeout(Duration::from_secs(30), connect)
            .await
            .map_err(|_| SessionError::ConnectTimeout)??;
        let sender = client.sender();
        let mut stream = client.stream()?;
        tracing::info!(server = %self.cfg.server, port = self.cfg.port, tls = self.cfg.tls, "irc: connected; registering");
        // Lines go out as soon as they are written, not after the server's delayed ACK.
        let peers: Vec<std::net::SocketAddr> =
            tokio::net::lookup_host((self.cfg.server.as_str(), self.cfg.port))
                .await
                .map(Iterator::collect)
                .unwrap_or_default();
        if nodelay::set_towards(&peers) == 0 {
            tracing::warn!(server = %self.cfg.server, "irc: could not set TCP_NODELAY on the connection; back-to-back lines may wait for delayed ACKs");
        }

        // Registration: CAP LS first, so the server holds registration until CAP END.
        sender.send(Command::CAP(
            None,
            CapSubCommand::LS,
            Some("302".into()),
            None,
        ))?;
        if let Some(pass) = self.cfg.password() {
            sender.send(Command::PASS(pass.expose().to_string()))?;
        }
        sender.send(Command::NICK(self.cfg.nick().to_string()))?;
        sender.send(Command::USER(
            self.bot_name.clone(),
            "0".into(),
            self.realname(),
        ))?;

        let (registered_tx, _) = watch::channel(false);
        let shared = Arc::new(Shared {
            registered: registered_tx,
            joined: Mutex::new(HashSet::new()),
            nick: Mutex::new(self.cfg.nick().to_string()),
            pongs: Mutex::new(HashMap::new()),
            changed: Notify::new(),
            refusals: Mutex::new(Vec::new()),
            in_flight: Mutex::new(Vec::new()),
        });
        let (ctcp_tx, ctcp_rx) = mpsc::channel(CTCP_QUEUE);
        let mut delivery = tokio::spawn(self.clone().deliver(
            sender.clone(),
            shared.clone(),
            ctcp_rx,
        ));
        let ctcp_quota = NonZeroU32::new(self.cfg.ctcp_per_minute).map(|n| {
            DefaultDirectRateLimiter::direct(
                Quota::per_minute(n)
                    .allow_burst(n.min(NonZeroU32::new(3).unwrap_or(NonZeroU32::MIN))),
            )
        });
        let mut reader = Reader {
            fe: self.clone(),
            sender: sender.clone(),
            shared: shared.clone(),
            caps_offered: Vec::new(),
            caps: HashSet::new(),
            cap_done: false,
            sasl_deadline: None,
            accounts: AccountCache::default(),
            whois_waiting: HashMap::new(),
            rejoin: HashMap::new(),
            next_regain: None,
            ctcp: ctcp_tx,
            ctcp_quota,
        };
        let mut tick = tokio::time::interval(Duration::from_millis(250));
        // Until registration ends the client library sends no PINGs: a server that accepted
        // the connection but never answers must not hold us forever.
        let register_within = Duration::from_secs(u64::from(self.cfg.ping_interval_secs) * 2);
        let connected_at = Instant::now();
        let result = loop {
            tokio::select! {
                next = stream.next() => match next {
                    Some(Ok(msg)) => reader.handle(msg).await,
                    Some(Err(e)) => break Err(e.into()),
                    None => break Err(SessionError::Closed),
                },
                _ = tick.tick() => {
                    if !*shared.registered.borrow() && connected_at.elapsed() > register_within {
                        break Err(SessionError::RegistrationTimeout(register_within));
                    }
                    reader.on_tick().await
                }
                ended = &mut delivery => {
                    break match ended {
                        Ok(Err(e)) => Err(e),
                        _ => Err(SessionError::Closed),
                    };
                }
                _ = shutdown.changed() => {
                    let _ = sender.send_quit("shepherd is shutting down");
                    break Ok(Ended::Shutdown);
                }
            }
        };
        delivery.abort();
        shared.registered.send_replace(false);
        // A round sent but not acknowledged when the link failed: one of its messages may be
        // what broke it, so each counts a failed attempt (alone next time, parked after the last).
        // A shutdown is no failure: nothing is counted then.
        let in_flight = shared
            .in_flight
            .lock()
            .map(|mut f| std::mem::take(&mut *f))
            .unwrap_or_default();
        if let Err(e) = &result
            && !in_flight.is_empty()
        {
            let ids: Vec<&str> = in_flight.iter().map(String::as_str).collect();
            self.dispatcher
                .metrics
                .outbox_send_failures
                .with_label_values(&[FRONTEND])
                .inc_by(ids.len() as u64);
            if let Err(store) = self
                .outbox
                .record_failure(&ids, &format!("in flight when the link failed: {e}"))
                .await
            {
                tracing::warn!(error = %store, "irc: cannot record failed sends");
            }
        }
        result
    }

    /// Sends the `irc` outbox in fair rounds, paced, and marks what the server acknowledged.
    async fn deliver(
        self: Arc<Self>,
        sender: irc::client::Sender,
        shared: Arc<Shared>,
        mut ctcp: mpsc::Receiver<CtcpAnswer>,
    ) -> Result<(), SessionError> {
        let mut registered = shared.registered.subscribe();
        let _ = registered.wait_for(|r| *r).await;
        let period = Duration::from_secs_f64(1.0 / self.cfg.flood_rate);
        let burst = NonZeroU32::new(self.cfg.flood_burst).unwrap_or(NonZeroU32::MIN);
        let bucket = DefaultDirectRateLimiter::direct(
            Quota::with_period(period)
                .unwrap_or_else(|| Quota::per_second(NonZeroU32::MIN))
                .allow_burst(burst),
        );
        let ack_timeout = Duration::from_secs(u64::from(self.cfg.ping_interval_secs) * 2);
        // A round is what the bucket lets out in about two seconds (at least one burst), so a
        // line that comes in meanwhile waits for one short round, not for a long backlog.
        let round_lines = (self.cfg.flood_rate * 2.0)
            .ceil()
            .clamp(1.0, 1000.0)
            .max(f64::from(self.cfg.flood_burst))
            .min(MAX_ROUND_LINES as f64) as usize;
        // Messages read per round (a message may be several lines, and rooms may be left out).
        let window = 64;
        let core = self.dispatcher.metrics.clone();
        // Rooms that refused a message wait until then before it is tried again,
        let mut retry_at: HashMap<String, Instant> = HashMap::new();
        // and get one message per round until then (see `plan`).
        let mut careful: HashMap<String, Instant> = HashMap::new();
        let mut counted_at: Option<Instant> = None;
        let configured: HashSet<String> = self
            .cfg
            .channels
            .iter()
            .map(|c| c.to_ascii_lowercase())
            .collect();
        loop {
            // CTCP answers are few (limited when asked); they take their turn in the bucket.
            while let Ok(answer) = ctcp.try_recv() {
                self.send_ctcp(&bucket, &sender, answer).await?;
            }
            let waiter = self.outbox.notified().notified();
            let changed = shared.changed.notified();
            let now = Instant::now();
            retry_at.retain(|_, at| *at > now);
            // Rooms that cannot take a message now are left out of the window read, so a long
            // wait in one never crowds out the others.
            let closed: Vec<String> = configured
                .iter()
                .filter(|c| !shared.is_joined(c))
                .chain(retry_at.keys())
                .cloned()
                .collect();
            let open = |room: &str| !closed.iter().any(|c| c == room);
            let pending = match self.outbox.pending_except(FRONTEND, &closed, window).await {
                Ok(p) => p,
                Err(e) => {
                    tracing::warn!(error = %e, "irc: outbox unavailable");
                    Vec::new()
                }
            };
            // The gauge is a count of the whole backlog: refreshed once a second, not per round.
            if counted_at.is_none_or(|at| at.elapsed() >= Duration::from_secs(1)) {
                counted_at = Some(Instant::now());
                if let Ok(n) = self.outbox.pending_count(FRONTEND).await {
                    self.metrics.lines_queued.set(n);
                }
            }
            let nick = shared.nick();
            let is_configured = |channel: &str| configured.contains(channel);
            careful.retain(|_, until| *until > now);
            let is_careful = |room: &str| careful.contains_key(room);
            let round = plan::plan(
                &pending,
                &plan::Rules {
                    open: &open,
                    careful: &is_careful,
                    configured: &is_configured,
                    max_lines: round_lines,
                    max_attempts: self.cfg.max_send_attempts,
                },
                |m| self.lines_of(m, &nick),
            );
            for (m, reason) in &round.park {
                tracing::error!(message = %m.id, room = %m.origin, attempts = m.attempts, %reason, "irc: giving up on a message; it is kept (`shepherd outbox parked`) and the ones behind it go on");
                core.outbox_parked.with_label_values(&[FRONTEND]).inc();
                if let Err(e) = self.outbox.park(&m.id, reason).await {
                    tracing::warn!(error = %e, "irc: cannot park a message");
                }
            }
            if round.send.is_empty() {
                if !round.park.is_empty() {
                    continue;
                }
                let next_retry = retry_at
                    .values()
                    .min()
                    .map(|at| at.saturating_duration_since(now))
                    .unwrap_or(Duration::from_millis(500))
                    .min(Duration::from_millis(500));
                tokio::select! {
                    _ = waiter => {}
                    _ = changed => {}
                    Some(answer) = ctcp.recv() => self.send_ctcp(&bucket, &sender, answer).await?,
                    _ = tokio::time::sleep(next_retry) => {}
                }
                continue;
            }

            // In flight until the server acknowledges the round: if the session ends first
            // (no acknowledgement, or the server closed the link), these count a failed attempt.
            let ids: Vec<String> = round.send.iter().map(|o| o.message.id.clone()).collect();
            if let Ok(mut f) = shared.in_flight.lock() {
                *f = ids;
            }
            if let Ok(mut r) = shared.refusals.lock() {
                r.clear();
            }
            for out in &round.send {
                let m = out.message;
                for line in &out.lines {
                    self.paced(&bucket).await;
                    let cmd = match self.cfg.reply_with {
                        IrcReplyKind::Privmsg => {
                            Command::PRIVMSG(m.origin.room.clone(), line.clone())
                        }
                        IrcReplyKind::Notice => {
                            Command::NOTICE(m.origin.room.clone(), line.clone())
                        }
                    };
                    if let Err(e) = sender.send(cmd) {
                        self.metrics.send_errors.inc();
                        return Err(e.into());
                    }
                    self.metrics.lines_sent.inc();
                }
            }

            // The server answers in order: its PONG means it has processed every line above,
            // and any refusal of them came before it.
            let token = format!("shepherd-{}", uuid::Uuid::now_v7().simple());
            let (tx, rx) = oneshot::channel();
            if let Ok(mut p) = shared.pongs.lock() {
                p.insert(token.clone(), tx);
            }
            sender.send(Command::PING(token, None))?;
            match tokio::time::timeout(ack_timeout, rx).await {
                Ok(Ok(())) => {}
                // The session is ending; it records the round's failure (see `session`).
                Ok(Err(_)) => return Err(SessionError::Closed),
                Err(_) => return Err(SessionError::NoPong(ack_timeout)),
            }
            if let Ok(mut f) = shared.in_flight.lock() {
                f.clear();
            }
            let refusals = shared
                .refusals
                .lock()
                .map(|mut r| std::mem::take(&mut *r))
                .unwrap_or_default();
            let mut delivered: Vec<&str> = Vec::new();
            for out in &round.send {
                let m = out.message;
                let room = m.origin.room.to_ascii_lowercase();
                let refusal = refusals
                    .iter()
                    .find(|(target, _)| target.as_deref().is_none_or(|t| t == room));
                match refusal {
                    Some((_, why)) => {
                        // Tried again on its own after a growing pause; the room waits for it.
                        self.metrics.refused.inc();
                        core.outbox_send_failures
                            .with_label_values(&[FRONTEND])
                            .inc();
                        let pause = Duration::from_secs(1u64 << m.attempts.min(5));
                        retry_at.insert(room.clone(), Instant::now() + pause);
                        careful.insert(room, Instant::now() + CAREFUL_FOR);
                        tracing::warn!(message = %m.id, room = %m.origin, attempt = m.attempts + 1, reason = %why, "irc: the server refused a message; it will be tried again");
                        if let Err(e) = self
                            .outbox
                            .record_failure(&[&m.id], &format!("refused: {why}"))
                            .await
                        {
                            tracing::warn!(error = %e, "irc: cannot record a refusal");
                        }
                    }
                    None => {
                        // The server acknowledged it: delivered, whatever the store says next.
                        core.outbox_delivered.with_label_values(&[FRONTEND]).inc();
                        let lag = (shepherd_core::store::now_ms() - m.created_at).max(0);
                        core.outbox_delivery_lag
                            .with_label_values(&[FRONTEND])
                            .observe(lag as f64 / 1000.0);
                        delivered.push(&m.id);
                    }
                }
            }
            if let Err(e) = self.outbox.mark_all_delivered(&delivered).await {
                tracing::warn!(error = %e, "irc: cannot mark messages delivered");
            }
        }
    }

    /// Sends a CTCP answer in its turn of the flood-control bucket.
    async fn send_ctcp(
        &self,
        bucket: &DefaultDirectRateLimiter,
        sender: &irc::client::Sender,
        answer: CtcpAnswer,
    ) -> Result<(), SessionError> {
        self.paced(bucket).await;
        sender.send_notice(&answer.to, answer.text)?;
        self.metrics.lines_sent.inc();
        Ok(())
    }

    /// Waits for the flood-control bucket, counting the wait.
    async fn paced(&self, bucket: &DefaultDirectRateLimiter) {
        let waited = Instant::now();
        bucket.until_ready().await;
        self.metrics
            .flood_delay
            .inc_by(waited.elapsed().as_secs_f64());
    }

    /// The IRC lines of one message: made safe for IRC, split to fit, the first addressed to
    /// the asker.
    fn lines_of(&self, m: &OutboxMessage, nick: &str) -> Vec<String> {
        let body = match &m.origin.addressee {
            Some(who) => format!("{who}: {}", m.body),
            None => m.body.clone(),
        };
        let mut lines = split::split_lines(
            &crate::safe_text::irc(&body),
            split::text_budget(nick, &m.origin.room),
        );
        let max = usize::try_from(self.cfg.max_lines_per_message)
            .unwrap_or(usize::MAX)
            .max(2);
        if lines.len() > max {
            let left_out = lines.len() - (max - 1);
            lines.truncate(max - 1);
            lines.push(format!("… ({left_out} more lines not shown)"));
        }
        lines
    }
}

/// Most lines sent before the server acknowledges them (the PING behind a round): a round is
/// marked delivered only then, so this is also the most a crash can make the bot say twice.
/// Small rounds cost little: on loopback one round trip and one commit per round still carry
/// thousands of lines a second.
const MAX_ROUND_LINES: usize = 32;
/// How long a room that refused a message gets one message per round.
const CAREFUL_FOR: Duration = Duration::from_secs(600);

/// CTCP answers waiting for the delivery task; more are dropped (and counted as limited).
const CTCP_QUEUE: usize = 8;

/// Commands of one sender kept while a WHOIS says who they are; more are dropped (whoever
/// sends this many lines before one WHOIS answer is flooding, and would be rate-limited).
const WHOIS_WAITING_MAX: usize = 16;

/// A CTCP reply to send (as a NOTICE).
struct CtcpAnswer {
    to: String,
    text: String,
}

/// The answer to a CTCP request (the text between the \x01 delimiters), if it is one we answer.
fn ctcp_answer(request: &str) -> Option<String> {
    let (command, arg) = request.split_once(' ').unwrap_or((request, ""));
    let reply = match command.to_ascii_uppercase().as_str() {
        "VERSION" => format!("VERSION shepherd {}", env!("CARGO_PKG_VERSION")),
        "PING" => {
            // Echo the token, but only a short, printable one.
            let token: String = arg
                .chars()
                .filter(|c| c.is_ascii_graphic())
                .take(32)
                .collect();
            format!("PING {token}")
        }
        "TIME" => format!("TIME {}", chrono::Utc::now().to_rfc2822()),
        "CLIENTINFO" => "CLIENTINFO CLIENTINFO PING TIME VERSION".to_string(),
        _ => return None,
    };
    Some(format!("\u{1}{}\u{1}", reply.trim_end()))
}

/// A command waiting for a WHOIS to say who sent it.
struct Waiting {
    inbound_text: String,
    origin: Origin,
    direct: bool,
    deadline: Instant,
}

/// The reading half of a session.
struct Reader {
    fe: Arc<IrcFrontend>,
    sender: irc::client::Sender,
    shared: Arc<Shared>,
    caps_offered: Vec<String>,
    caps: HashSet<String>,
    cap_done: bool,
    sasl_deadline: Option<Instant>,
    accounts: AccountCache,
    whois_waiting: HashMap<String, (Vec<Waiting>, Option<String>)>,
    rejoin: HashMap<String, (u32, Instant)>,
    next_regain: Option<Instant>,
    ctcp: mpsc::Sender<CtcpAnswer>,
    /// All CTCP answers together, per minute; `None` answers none.
    ctcp_quota: Option<DefaultDirectRateLimiter>,
}

const WANTED_CAPS: &[&str] = &["account-tag", "account-notify", "extended-join"];

impl Reader {
    fn end_cap(&mut self) {
        if !self.cap_done {
            self.cap_done = true;
            self.sasl_deadline = None;
            let _ = self
                .sender
                .send(Command::CAP(None, CapSubCommand::END, None, None));
        }
    }

    async fn handle(&mut self, msg: Message) {
        let source = msg.source_nickname().map(str::to_string);
        match &msg.command {
            Command::CAP(_, sub, a, b) => self.on_cap(sub, a.as_deref(), b.as_deref()),
            Command::AUTHENTICATE(data) if data == "+" => {
                let account = self.fe.cfg.sasl_account().to_string();
                let password = self
                    .fe
                    .cfg
                    .sasl_password()
                    .map(|s| s.expose().to_string())
                    .unwrap_or_default();
                let blob = base64::engine::general_purpose::STANDARD
                    .encode(format!("{account}\0{account}\0{password}"));
                let _ = self.sender.send_sasl(blob);
            }
            Command::Response(Response::RPL_SASLSUCCESS, _) => {
                tracing::info!(account = %self.fe.cfg.sasl_account(), "irc: SASL login succeeded");
                self.end_cap();
            }
            Command::Response(
                r @ (Response::ERR_SASLFAIL | Response::ERR_SASLTOOLONG | Response::ERR_SASLABORT),
                args,
            ) => {
                tracing::error!(code = ?r, reason = ?args.last(), account = %self.fe.cfg.sasl_account(), "irc: SASL login failed; continuing without an account");
                self.end_cap();
            }
            Command::Response(Response::RPL_WELCOME, args) => {
                self.end_cap();
                if let Some(me) = args.first()
                    && let Ok(mut n) = self.shared.nick.lock()
                {
                    *n = me.clone();
                }
                tracing::info!(nick = %self.shared.nick(), caps = ?self.caps, "irc: registered");
                self.fe.metrics.connected.set(1);
                if self.fe.cfg.sasl_password().is_none()
                    && let Some(pass) = self.fe.cfg.nickserv_password()
                {
                    let _ = self.sender.send_privmsg(
                        "NickServ",
                        format!("IDENTIFY {} {}", self.fe.cfg.nick(), pass.expose()),
                    );
                }
                self.shared.registered.send_replace(true);
                self.schedule_regain();
            }
            Command::JOIN(chan, account, _) => {
                if let Some(nick) = &source {
                    if nick.eq_ignore_ascii_case(&self.shared.nick()) {
                        if let Ok(mut j) = self.shared.joined.lock() {
                            j.insert(chan.to_ascii_lowercase());
                        }
                        self.rejoin.remove(&chan.to_ascii_lowercase());
                        tracing::info!(channel = %chan, "irc: joined");
                        self.shared.changed.notify_waiters();
                    } else if self.caps.contains("extended-join")
                        && let Some(account) = account
                    {
                        self.accounts.set(nick, account);
                    }
                }
            }
            Command::ACCOUNT(account) => {
                if let Some(nick) = &source {
                    self.accounts.set(nick, account);
                }
            }
            Command::PART(chan, _) => {
                if source
                    .as_deref()
                    .is_some_and(|n| n.eq_ignore_ascii_case(&self.shared.nick()))
                    && let Ok(mut j) = self.shared.joined.lock()
                {
                    j.remove(&chan.to_ascii_lowercase());
                }
            }
            Command::KICK(chan, who, reason) => {
                if who.eq_ignore_ascii_case(&self.shared.nick()) {
                    if let Ok(mut j) = self.shared.joined.lock() {
                        j.remove(&chan.to_ascii_lowercase());
                    }
                    tracing::warn!(channel = %chan, by = ?source, reason = ?reason, "irc: kicked; will rejoin");
                    self.schedule_rejoin(chan);
                } else {
                    self.accounts.forget(who);
                }
            }
            Command::Response(
                r @ (Response::ERR_CHANNELISFULL
                | Response::ERR_INVITEONLYCHAN
                | Response::ERR_BANNEDFROMCHAN
                | Response::ERR_BADCHANNELKEY),
                args,
            ) => {
                if let Some(chan) = args.get(1) {
                    tracing::warn!(channel = %chan, code = ?r, reason = ?args.last(), "irc: cannot join; will try again");
                    self.schedule_rejoin(chan);
                }
            }
            Command::NICK(new) => {
                if let Some(old) = &source {
                    self.accounts.forget(old);
                    self.accounts.forget(new);
                    if old.eq_ignore_ascii_case(&self.shared.nick()) {
                        if let Ok(mut n) = self.shared.nick.lock() {
                            *n = new.clone();
                        }
                        tracing::info!(nick = %new, "irc: nick changed");
                        self.schedule_regain();
                    } else if old.eq_ignore_ascii_case(self.fe.cfg.nick()) {
                        self.try_regain_now();
                    }
                }
            }
            Command::QUIT(_) => {
                if let Some(nick) = &source {
                    self.accounts.forget(nick);
                    if nick.eq_ignore_ascii_case(self.fe.cfg.nick()) {
                        self.try_regain_now();
                    }
                }
            }
            Command::PONG(first, second) => {
                // `PONG server :token`, or `PONG :token` from some servers.
                let token = second.clone().unwrap_or_else(|| first.clone());
                let ours = self
                    .shared
                    .pongs
                    .lock()
                    .ok()
                    .and_then(|mut p| p.remove(&token));
                if let Some(tx) = ours {
                    let _ = tx.send(());
                    // Answer at once with a bare PONG (servers ignore unsolicited ones): its
                    // segment carries the TCP ACK for the server's PONG now. Otherwise the
                    // kernel delays that ACK (~40 ms) and a server that uses Nagle's algorithm
                    // holds the next line it relays to us until it comes — +40 ms on the next
                    // command (measured: see BENCHMARKS.md).
                    let _ = self.sender.send(Command::PONG(token, None));
                }
            }
            Command::Raw(code, args) if code == "330" => {
                // RPL_WHOISACCOUNT: <me> <nick> <account> :is logged in as
                if let (Some(nick), Some(account)) = (args.get(1), args.get(2))
                    && let Some((_, found)) = self.whois_waiting.get_mut(&nick.to_ascii_lowercase())
                {
                    *found = Some(account.clone());
                }
            }
            Command::Response(Response::RPL_ENDOFWHOIS, args) => {
                if let Some(nick) = args.get(1) {
                    self.whois_done(nick).await;
                }
            }
            Command::Response(
                r @ (Response::ERR_NOSUCHNICK
                | Response::ERR_NOSUCHCHANNEL
                | Response::ERR_CANNOTSENDTOCHAN
                | Response::ERR_TOOMANYTARGETS
                | Response::ERR_NORECIPIENT
                | Response::ERR_NOTEXTTOSEND),
                args,
            ) => {
                // `<me> <target> :reason`; the delivery task matches it to what it sent.
                let target = match r {
                    Response::ERR_NORECIPIENT | Response::ERR_NOTEXTTOSEND => None,
                    _ => args.get(1).map(|t| t.to_ascii_lowercase()),
                };
                let why = format!(
                    "{} {}",
                    *r as u16,
                    args.last().map(String::as_str).unwrap_or("")
                );
                self.refused(target, why);
            }
            Command::Raw(code, args) if code == "417" => {
                // ERR_INPUTTOOLONG names no target.
                let why = format!("417 {}", args.last().map(String::as_str).unwrap_or(""));
                self.refused(None, why);
            }
            Command::Response(Response::RPL_ISON, args) => {
                let online = args.last().map(String::as_str).unwrap_or("");
                let primary = self.fe.cfg.nick();
                if !online
                    .split_whitespace()
                    .any(|n| n.eq_ignore_ascii_case(primary))
                {
                    self.try_regain_now();
                }
            }
            Command::PRIVMSG(target, text) => {
                if let Some(nick) = source {
                    self.on_privmsg(&msg, nick, target, text).await;
                }
            }
            _ => {}
        }
    }

    fn refused(&self, target: Option<String>, why: String) {
        if let Ok(mut r) = self.shared.refusals.lock() {
            // Bounded: a server that keeps refusing must not make this grow without end.
            if r.len() < 256 {
                r.push((target, why));
            }
        }
    }

    /// Answers a CTCP request through the delivery task, within `ctcp_per_minute`. A request
    /// in a channel is answered to the sender, privately.
    fn on_ctcp(&self, nick: &str, text: &str) {
        let request = text.trim_matches('\u{1}');
        let Some(answer) = ctcp_answer(request) else {
            self.fe.metrics.ctcp.with_label_values(&["ignored"]).inc();
            return;
        };
        let allowed = self.ctcp_quota.as_ref().is_some_and(|q| q.check().is_ok());
        let queued = allowed
            && self
                .ctcp
                .try_send(CtcpAnswer {
                    to: nick.to_string(),
                    text: answer,
                })
                .is_ok();
        let outcome = if queued { "answered" } else { "limited" };
        self.fe.metrics.ctcp.with_label_values(&[outcome]).inc();
    }

    fn on_cap(&mut self, sub: &CapSubCommand, a: Option<&str>, b: Option<&str>) {
        // `CAP * LS * :a b` continues a list; `CAP * LS :a b` ends it.
        let (more, list) = match (a, b) {
            (Some("*"), Some(list)) => (true, list),
            (Some(list), None) => (false, list),
            (_, Some(list)) => (false, list),
            _ => (false, ""),
        };
        match sub {
            CapSubCommand::LS => {
                self.caps_offered.extend(
                    list.split_whitespace()
                        .map(|c| c.split('=').next().unwrap_or(c).to_string()),
                );
                if more {
                    return;
                }
                let mut want: Vec<&'static str> = WANTED_CAPS
                    .iter()
                    .copied()
                    .filter(|c| self.caps_offered.iter().any(|o| o == c))
                    .collect();
                if self.fe.cfg.sasl_password().is_some() {
                    if self.caps_offered.iter().any(|o| o == "sasl") {
                        want.push("sasl");
                    } else {
                        tracing::error!(
                            "irc: the server offers no SASL; continuing without an account"
                        );
                    }
                }
                if want.is_empty() {
                    self.end_cap();
                } else {
                    let caps: Vec<Capability> = want.into_iter().map(Capability::Custom).collect();
                    let _ = self.sender.send_cap_req(&caps);
                }
            }
            CapSubCommand::ACK => {
                for c in list.split_whitespace() {
                    self.caps.insert(c.trim_start_matches('-').to_string());
                }
                if self.caps.contains("sasl") && self.fe.cfg.sasl_password().is_some() {
                    let _ = self.sender.send_sasl_plain();
                    self.sasl_deadline =
                        Some(Instant::now() + Duration::from_secs(self.fe.cfg.sasl_timeout_secs));
                } else {
                    self.end_cap();
                }
            }
            CapSubCommand::NAK => {
                tracing::warn!(caps = %list, "irc: server refused capabilities");
                self.end_cap();
            }
            _ => {}
        }
    }

    async fn on_privmsg(&mut self, msg: &Message, nick: String, target: &str, text: &str) {
        let me = self.shared.nick();
        if nick.eq_ignore_ascii_case(&me) {
            return; // our own echo
        }
        if text.starts_with('\u{1}') {
            // CTCP (ACTION, VERSION, PING, ...): never a command.
            self.on_ctcp(&nick, text);
            return;
        }
        let direct = !is_channel(target);
        let addressing = Addressing {
            bot_name: &self.fe.bot_name,
            prefix: &self.fe.prefix,
            user_id: None,
        };
        let frontend = if direct {
            Frontend::Console
        } else {
            Frontend::Chat
        };
        if addressed(frontend, text, &addressing).is_empty() {
            return; // channel chatter
        }
        let origin = if direct {
            Origin::new(FRONTEND, nick.clone())
        } else {
            Origin::new(FRONTEND, target.to_string()).addressed_to(nick.clone())
        };
        // The account tag is authoritative when the server sends tags; else what we know.
        let account = if self.caps.contains("account-tag") {
            let tag = msg
                .tags
                .as_ref()
                .and_then(|tags| tags.iter().find(|t| t.0 == "account"))
                .and_then(|t| t.1.clone());
            Some(match tag {
                Some(a) => Account::LoggedIn(a),
                None => Account::LoggedOut,
            })
        } else {
            self.accounts.get(&nick).cloned()
        };
        match account {
            Some(account) => {
                self.dispatch(&nick, Some(&account), text.to_string(), origin, direct)
                    .await
            }
            None => {
                let key = nick.to_ascii_lowercase();
                let first = !self.whois_waiting.contains_key(&key);
                let deadline = Instant::now() + Duration::from_millis(self.fe.cfg.whois_timeout_ms);
                let waiting = &mut self
                    .whois_waiting
                    .entry(key)
                    .or_insert_with(|| (Vec::new(), None))
                    .0;
                if waiting.len() >= WHOIS_WAITING_MAX {
                    self.fe
                        .dispatcher
                        .count_limited("unknown", crate::limits::Scope::Identity);
                    return;
                }
                waiting.push(Waiting {
                    inbound_text: text.to_string(),
                    origin,
                    direct,
                    deadline,
                });
                if first {
                    let _ = self.sender.send(Command::WHOIS(None, nick.clone()));
                }
            }
        }
    }

    async fn whois_done(&mut self, nick: &str) {
        let Some((waiting, found)) = self.whois_waiting.remove(&nick.to_ascii_lowercase()) else {
            return;
        };
        self.accounts.set(nick, found.as_deref().unwrap_or("*"));
        let account = self.accounts.get(nick).cloned();
        for w in waiting {
            self.dispatch(nick, account.as_ref(), w.inbound_text, w.origin, w.direct)
                .await;
        }
    }

    async fn dispatch(
        &self,
        nick: &str,
        account: Option<&Account>,
        text: String,
        origin: Origin,
        direct: bool,
    ) {
        let inbound = Inbound {
            frontend: if direct {
                Frontend::Console
            } else {
                Frontend::Chat
            },
            origin,
            identity: accounts::identity(nick, account),
            text,
            mr: None,
            dedup: None,
            // Every query shares one room budget: a flood spread over nicks is still one flood.
            rate_room: direct.then(|| format!("{FRONTEND}:(queries)")),
            bot_user_id: None,
        };
        if let Err(e) = self.fe.dispatcher.handle(&inbound).await {
            tracing::error!(error = %e, from = %nick, "irc: could not store a command; the asker got no answer");
        }
    }

    async fn on_tick(&mut self) {
        let now = Instant::now();
        if let Some(deadline) = self.sasl_deadline
            && now >= deadline
        {
            tracing::error!(
                timeout_secs = self.fe.cfg.sasl_timeout_secs,
                "irc: SASL did not answer in time; continuing without an account"
            );
            let _ = self.sender.send_sasl_abort();
            self.end_cap();
        }
        // WHOIS answers that never came: treat the sender as not logged in.
        let late: Vec<String> = self
            .whois_waiting
            .iter()
            .filter(|(_, (w, _))| w.first().is_some_and(|w| now >= w.deadline))
            .map(|(k, _)| k.clone())
            .collect();
        for nick in late {
            tracing::warn!(%nick, "irc: WHOIS did not answer in time; treating the sender as not logged in");
            self.whois_done(&nick).await;
        }
        let due: Vec<String> = self
            .rejoin
            .iter()
            .filter(|(_, (_, at))| now >= *at)
            .map(|(c, _)| c.clone())
            .collect();
        for chan in due {
            let keys = self.fe.cfg.channel_keys();
            let original = self
                .fe
                .cfg
                .channels
                .iter()
                .find(|c| c.eq_ignore_ascii_case(&chan))
                .cloned()
                .unwrap_or(chan.clone());
            let sent = match keys.get(&original) {
                Some(key) => self
                    .sender
                    .send_join_with_keys(original.as_str(), key.as_str()),
                None => self.sender.send_join(original.as_str()),
            };
            if sent.is_err() {
                return;
            }
            // Until the server answers: a refusal reschedules it with a longer delay, and
            // our JOIN echo clears it. If neither comes, try again after the cap.
            if let Some((_, at)) = self.rejoin.get_mut(&chan) {
                *at = now + Duration::from_secs(self.fe.cfg.rejoin_max_secs);
            }
        }
        if let Some(at) = self.next_regain
            && now >= at
        {
            self.next_regain = Some(now + Duration::from_secs(self.fe.cfg.regain_interval_secs));
            // GHOST (Atheme, Anope) disconnects whoever holds our registered nick; ISON then
            // tells when it is free, and the answer takes it (see RPL_ISON).
            if let Some(pass) = self.fe.cfg.nickserv_password() {
                let _ = self.sender.send_privmsg(
                    "NickServ",
                    format!("GHOST {} {}", self.fe.cfg.nick(), pass.expose()),
                );
            }
            let _ = self
                .sender
                .send(Command::ISON(vec![self.fe.cfg.nick().to_string()]));
        }
    }

    /// A JOIN after a growing delay (1 s, 2 s, 4 s ... up to `rejoin_max_secs`).
    fn schedule_rejoin(&mut self, chan: &str) {
        let key = chan.to_ascii_lowercase();
        let tries = self.rejoin.get(&key).map(|(t, _)| *t).unwrap_or(0);
        let cap = Duration::from_secs(self.fe.cfg.rejoin_max_secs);
        let delay = Duration::from_secs(1u64 << tries.min(16)).min(cap);
        self.rejoin.insert(key, (tries + 1, Instant::now() + delay));
    }

    /// While on an alternate nick, try to get the configured one back now and then.
    fn schedule_regain(&mut self) {
        if self.shared.nick().eq_ignore_ascii_case(self.fe.cfg.nick()) {
            self.next_regain = None;
        } else if self.next_regain.is_none() {
            self.next_regain =
                Some(Instant::now() + Duration::from_secs(self.fe.cfg.regain_interval_secs));
        }
    }

    fn try_regain_now(&mut self) {
        if !self.shared.nick().eq_ignore_ascii_case(self.fe.cfg.nick()) {
            let _ = self
                .sender
                .send(Command::NICK(self.fe.cfg.nick().to_string()));
        }
    }
}
