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
//! Writing: a delivery task takes the `irc` outbox in order, splits messages into lines that
//! fit IRC's 512 bytes, paces them through a token bucket tuned to the server's flood limits,
//! and marks a batch delivered only after the server answered a PING sent behind it — lines
//! the server never processed are sent again after a reconnect, and nothing is lost while
//! the bot is away. Messages for a channel wait while the bot is not in it (kicked, not yet
//! joined); others go on.

mod accounts;
mod split;

use std::collections::{HashMap, HashSet};
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine as _;
use futures::StreamExt;
use governor::{DefaultDirectRateLimiter, Quota};
use irc::client::prelude::{
    Capability, Client, Command, Config as IrcClientConfig, Message, Response,
};
use irc::proto::CapSubCommand;
use prometheus::{Counter, IntCounter, IntGauge, Registry};
use shepherd_commands::{Addressing, Frontend, addressed};
use shepherd_config::{IrcConfig, IrcReplyKind};
use shepherd_core::Origin;
use shepherd_core::outbox::{Outbox, OutboxMessage};
use tokio::sync::{Notify, oneshot, watch};

use crate::dispatch::{Dispatcher, Inbound};
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
        };
        registry.register(Box::new(m.connected.clone()))?;
        registry.register(Box::new(m.reconnects.clone()))?;
        registry.register(Box::new(m.lines_sent.clone()))?;
        registry.register(Box::new(m.lines_queued.clone()))?;
        registry.register(Box::new(m.send_errors.clone()))?;
        registry.register(Box::new(m.flood_delay.clone()))?;
        Ok(m)
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
        });
        let mut delivery = tokio::spawn(self.clone().deliver(sender.clone(), shared.clone()));
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
        result
    }

    /// Sends the `irc` outbox in order, paced, and marks what the server acknowledged.
    async fn deliver(
        self: Arc<Self>,
        sender: irc::client::Sender,
        shared: Arc<Shared>,
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
        loop {
            let waiter = self.outbox.notified().notified();
            let changed = shared.changed.notified();
            let pending = match self.outbox.pending(FRONTEND, 50).await {
                Ok(p) => p,
                Err(e) => {
                    tracing::warn!(error = %e, "irc: outbox unavailable");
                    Vec::new()
                }
            };
            if let Ok(n) = self.outbox.pending_count(FRONTEND).await {
                self.metrics.lines_queued.set(n);
            }
            let mut blocked: HashSet<String> = HashSet::new();
            let mut sent: Vec<(String, i64)> = Vec::new();
            for m in &pending {
                let room = m.origin.room.to_ascii_lowercase();
                if blocked.contains(&room) || (is_channel(&room) && !shared.is_joined(&room)) {
                    blocked.insert(room);
                    continue;
                }
                for line in self.lines_of(m, &shared.nick()) {
                    let waited = Instant::now();
                    bucket.until_ready().await;
                    self.metrics
                        .flood_delay
                        .inc_by(waited.elapsed().as_secs_f64());
                    let cmd = match self.cfg.reply_with {
                        IrcReplyKind::Privmsg => Command::PRIVMSG(m.origin.room.clone(), line),
                        IrcReplyKind::Notice => Command::NOTICE(m.origin.room.clone(), line),
                    };
                    if let Err(e) = sender.send(cmd) {
                        self.metrics.send_errors.inc();
                        return Err(e.into());
                    }
                    self.metrics.lines_sent.inc();
                }
                sent.push((m.id.clone(), m.created_at));
            }
            if !sent.is_empty() {
                // The server answers in order: its PONG means it has processed every line above.
                let token = format!("shepherd-{}", uuid::Uuid::now_v7().simple());
                let (tx, rx) = oneshot::channel();
                if let Ok(mut p) = shared.pongs.lock() {
                    p.insert(token.clone(), tx);
                }
                sender.send(Command::PING(token, None))?;
                match tokio::time::timeout(ack_timeout, rx).await {
                    Ok(Ok(())) => {
                        let core = &self.dispatcher.metrics;
                        for (id, created_at) in &sent {
                            // The server acknowledged it: delivered, whatever the store says next.
                            core.outbox_delivered.with_label_values(&[FRONTEND]).inc();
                            let lag = (shepherd_core::store::now_ms() - created_at).max(0);
                            core.outbox_delivery_lag
                                .with_label_values(&[FRONTEND])
                                .observe(lag as f64 / 1000.0);
                            if let Err(e) = self.outbox.mark_delivered(id).await {
                                tracing::warn!(error = %e, "irc: cannot mark a message delivered");
                            }
                        }
                        continue;
                    }
                    Ok(Err(_)) => return Err(SessionError::Closed),
                    Err(_) => return Err(SessionError::NoPong(ack_timeout)),
                }
            }
            tokio::select! {
                _ = waiter => {}
                _ = changed => {}
                _ = tokio::time::sleep(Duration::from_millis(500)) => {}
            }
        }
    }

    /// The IRC lines of one message: split to fit, the first addressed to the asker.
    fn lines_of(&self, m: &OutboxMessage, nick: &str) -> Vec<String> {
        let body = match &m.origin.addressee {
            Some(who) => format!("{who}: {}", m.body),
            None => m.body.clone(),
        };
        split::split_lines(&body, split::text_budget(nick, &m.origin.room))
    }
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
            Command::Response(Response::ERR_NOSUCHNICK, args) => {
                // IRC keeps nothing for someone who is gone: say so rather than lose it quietly.
                tracing::warn!(target_nick = ?args.get(1), "irc: a message could not be delivered: no such nick (they left)");
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
        if nick.eq_ignore_ascii_case(&me) || text.starts_with('\u{1}') {
            return; // our own echo, or CTCP (the client library answers VERSION, PING, ...)
        }
        let direct = !is_channel(target);
        let addressing = Addressing {
            bot_name: &self.fe.bot_name,
            prefix: &self.fe.prefix,
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
                self.whois_waiting
                    .entry(key)
                    .or_insert_with(|| (Vec::new(), None))
                    .0
                    .push(Waiting {
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
