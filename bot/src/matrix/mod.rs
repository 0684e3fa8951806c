//! The Matrix front end: shepherd in Matrix rooms, encrypted ones included.
//!
//! One task keeps the account usable: build the client on the store in `matrix.store_path`,
//! restore the saved session (or log in once with the password and save it: a new login is a
//! new device, see `session`), then sync. Failures — the homeserver unreachable, a wrong
//! password, a sync that errors — are logged clearly and retried with capped exponential backoff
//! and full jitter; nothing queued is lost meanwhile (the outbox keeps it).
//!
//! Reading: every sync's timelines are read in order (`events`): a text message addressed to the
//! bot (the prefix, the bot's name, or its user id at the start; anything in a direct chat)
//! becomes an `Inbound` for the dispatcher, keyed by its event id, with `matrix:<sender>` as
//! identity — the sender the homeserver vouches for, never a display name. The sync position is
//! saved only after a sync's commands were stored, so a crash makes the homeserver send them
//! again and the event-id keys keep them from running twice. History is never executed: at the
//! very first start the first sync is only read, and in a room just joined what came before the
//! join is skipped. A command older than `catch_up_minutes` (it came while the bot was away) is
//! not run: its sender gets one reply saying so. Encrypted messages arrive decrypted by the SDK;
//! those it cannot decrypt are counted and logged.
//!
//! Rooms: the configured ones are joined at start; an invite is accepted when the inviter matches
//! `autojoin` (joins are retried with backoff: a homeserver may send an invite before the join can
//! succeed) and refused otherwise.
//!
//! Writing: see `deliver` — the outbox, in order, once, each message with a transaction id
//! derived from it; replies are `m.notice` in reply to the asker's event, a canary summary one
//! message edited in place (`m.replace`).

mod deliver;
mod events;
mod render;
mod session;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context as _;
use async_trait::async_trait;
use globset::{Glob, GlobSet, GlobSetBuilder};
use matrix_sdk::config::{RequestConfig, SyncSettings};
use matrix_sdk::encryption::EncryptionSettings;
use matrix_sdk::ruma::api::client::filter::FilterDefinition;
use matrix_sdk::ruma::api::error::ErrorKind;
use matrix_sdk::ruma::{OwnedRoomId, OwnedRoomOrAliasId, RoomAliasId, RoomId, UInt};
use matrix_sdk::sync::SyncResponse;
use matrix_sdk::{Client, RoomState};
use matrix_sdk_base::crypto::CollectStrategy;
use prometheus::{IntCounter, IntCounterVec, IntGauge, Opts, Registry};
use shepherd_commands::Frontend;
use shepherd_config::{MatrixConfig, MatrixEncryptFor};
use shepherd_core::{Capabilities, CommandStyle, Formatting, Origin};
use tokio::sync::{Notify, watch};

use crate::dispatch::Inbound;
use crate::frontend::{Context, FrontEnd};
use events::{Event, ReplyTo, TextMessage};
use session::{Files, Saved};

pub const FRONTEND: &str = "matrix";

/// Events of one room that a sync returns at most: commands among more events than this that
/// came while the bot was away are not read (a warning says so).
const TIMELINE_LIMIT: u32 = 200;

/// The pause after the n-th failure in a row: exponential from `base` up to `cap`, with full
/// jitter, never under 100 ms (logins, syncs, joins and delivery all back off this way).
pub(crate) fn backoff(base: Duration, cap: Duration, failures: u32) -> Duration {
    shepherd_core::backoff::full_jitter(base, cap, failures.min(16)).max(Duration::from_millis(100))
}

/// Matrix's own metrics, named like the IRC series.
#[derive(Clone)]
pub struct MatrixMetrics {
    connected: IntGauge,
    syncs: IntCounterVec,
    logins: IntCounterVec,
    sends: IntCounterVec,
    decryption_failures: IntCounter,
    messages_queued: IntGauge,
    invites: IntCounterVec,
    skipped: IntCounter,
}

impl MatrixMetrics {
    pub fn register(registry: &Registry) -> Result<Self, prometheus::Error> {
        let counter_vec = |name: &str, help: &str, label: &str| {
            IntCounterVec::new(Opts::new(name, help), &[label])
        };
        let m = Self {
            connected: IntGauge::new(
                "matrix_connected",
                "1 while the last sync with the homeserver succeeded",
            )?,
            syncs: counter_vec(
                "matrix_syncs_total",
                "Sync requests, by outcome (ok, error)",
                "outcome",
            )?,
            logins: counter_vec(
                "matrix_logins_total",
                "Session starts, by outcome (restored, logged_in, failed)",
                "outcome",
            )?,
            sends: counter_vec(
                "matrix_sends_total",
                "Messages sent to Matrix, by outcome (sent, edited, superseded, refused, rate_limited, unavailable, parked)",
                "outcome",
            )?,
            decryption_failures: IntCounter::new(
                "matrix_decryption_failures_total",
                "Encrypted room events the bot could not decrypt",
            )?,
            messages_queued: IntGauge::new(
                "matrix_messages_queued",
                "Outbox messages waiting for Matrix delivery",
            )?,
            invites: counter_vec(
                "matrix_invites_total",
                "Room invites, by outcome (accepted, refused)",
                "outcome",
            )?,
            skipped: IntCounter::new(
                "matrix_commands_skipped_total",
                "Commands not run because they were older than matrix.catch_up_minutes",
            )?,
        };
        registry.register(Box::new(m.connected.clone()))?;
        registry.register(Box::new(m.syncs.clone()))?;
        registry.register(Box::new(m.logins.clone()))?;
        registry.register(Box::new(m.sends.clone()))?;
        registry.register(Box::new(m.decryption_failures.clone()))?;
        registry.register(Box::new(m.messages_queued.clone()))?;
        registry.register(Box::new(m.invites.clone()))?;
        registry.register(Box::new(m.skipped.clone()))?;
        Ok(m)
    }
}

/// The Matrix front end as the wiring lists it (see `frontend::configured`).
pub struct Matrix {
    cfg: MatrixConfig,
    autojoin: GlobSet,
}

impl Matrix {
    pub fn new(cfg: MatrixConfig) -> anyhow::Result<Self> {
        let mut globs = GlobSetBuilder::new();
        for (i, pattern) in cfg.autojoin.iter().enumerate() {
            globs.add(Glob::new(pattern).with_context(|| format!("matrix.autojoin[{i}]"))?);
        }
        Ok(Self {
            autojoin: globs.build().context("matrix.autojoin")?,
            cfg,
        })
    }
}

#[async_trait]
impl FrontEnd for Matrix {
    fn capabilities(&self) -> Capabilities {
        Capabilities {
            name: FRONTEND,
            edits: true,
            formatting: Formatting::Html,
            style: CommandStyle::Name,
            max_message_bytes: Some(self.cfg.max_message_bytes as usize),
            messages_per_second: None,
        }
    }

    async fn run(
        self: Box<Self>,
        ctx: Arc<Context>,
        shutdown: watch::Receiver<bool>,
    ) -> anyhow::Result<()> {
        let metrics = MatrixMetrics::register(ctx.metrics().registry())
            .context("registering Matrix metrics")?;
        let fe = Arc::new(MatrixFrontend {
            started_at_ms: shepherd_core::store::now_ms(),
            files: Files::new(&self.cfg.store_path),
            cfg: self.cfg,
            autojoin: self.autojoin,
            ctx,
            metrics,
            rooms: Rooms::default(),
        });
        fe.run(shutdown).await;
        Ok(())
    }
}

/// What the reading side learnt about rooms, for delivery: aliases resolved to ids, and a wake-up
/// when a room was joined.
#[derive(Default)]
pub(crate) struct Rooms {
    aliases: Mutex<HashMap<String, OwnedRoomId>>,
    joining: Mutex<HashSet<OwnedRoomId>>,
    changed: Notify,
}

impl Rooms {
    fn alias(&self, alias: &str) -> Option<OwnedRoomId> {
        self.aliases
            .lock()
            .ok()
            .and_then(|a| a.get(&alias.to_ascii_lowercase()).cloned())
    }

    /// The id of a room named by its id or by an alias resolved before.
    fn id_of(&self, room: &str) -> Option<OwnedRoomId> {
        self.alias(room)
            .or_else(|| <&RoomId>::try_from(room).ok().map(ToOwned::to_owned))
    }

    fn set_alias(&self, alias: &str, id: OwnedRoomId) {
        if let Ok(mut a) = self.aliases.lock() {
            a.insert(alias.to_ascii_lowercase(), id);
        }
    }
}

pub(crate) struct MatrixFrontend {
    cfg: MatrixConfig,
    /// When this process started (Unix ms): commands sent before it came while the bot was away.
    started_at_ms: i64,
    autojoin: GlobSet,
    files: Files,
    ctx: Arc<Context>,
    metrics: MatrixMetrics,
    rooms: Rooms,
}

/// Why a session could not start.
#[derive(Debug, thiserror::Error)]
enum StartError {
    #[error("cannot build the Matrix client: {0}")]
    Build(#[from] matrix_sdk::ClientBuildError),
    #[error("{0}")]
    Files(#[from] session::SessionError),
    #[error(
        "no saved session and no password: set matrix.password_env (or password_file) for the first login"
    )]
    NoPassword,
    #[error(
        "the saved session is for {saved}, but matrix.user is {configured}; move {dir} away to log in as {configured}"
    )]
    OtherAccount {
        saved: String,
        configured: String,
        dir: String,
    },
    #[error("login as {user} failed: {error}")]
    Login { user: String, error: String },
    #[error(
        "the homeserver forgot this device's session ({0}); it was moved aside, the next start logs in again"
    )]
    SessionGone(String),
    #[error("{0}")]
    Sdk(#[from] matrix_sdk::Error),
}

impl MatrixFrontend {
    fn me(client: &Client) -> String {
        client.user_id().map(|u| u.to_string()).unwrap_or_default()
    }

    /// Keeps a session up until `shutdown`.
    async fn run(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        let mut failures: u32 = 0;
        loop {
            if *shutdown.borrow() {
                return;
            }
            let started = tokio::select! {
                s = self.start() => s,
                _ = shutdown.changed() => return,
            };
            match started {
                Ok(client) => {
                    failures = 0;
                    if self.clone().session(client, &mut shutdown).await {
                        return;
                    }
                }
                Err(e) => {
                    self.metrics.logins.with_label_values(&["failed"]).inc();
                    tracing::error!(homeserver = %self.cfg.homeserver, user = %self.cfg.user, error = %e, "matrix: cannot start a session; trying again");
                }
            }
            failures = failures.saturating_add(1);
            let delay = self.backoff(failures);
            tracing::info!(?delay, attempt = failures, "matrix: retrying");
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = shutdown.changed() => {}
            }
        }
    }

    fn backoff(&self, failures: u32) -> Duration {
        backoff(
            Duration::from_millis(500),
            Duration::from_secs(self.cfg.reconnect_max_secs),
            failures,
        )
    }

    /// Builds the client on the store, restores the session or logs in once.
    async fn start(&self) -> Result<Client, StartError> {
        self.files.prepare()?;
        let saved = self.files.load_session()?;
        if saved.is_none() {
            self.files.clear_orphaned_store()?;
        }
        let strategy = match self.cfg.encrypt_for {
            MatrixEncryptFor::AllDevices => CollectStrategy::AllDevices,
            MatrixEncryptFor::CrossSigned => CollectStrategy::IdentityBasedStrategy,
        };
        let client = Client::builder()
            .homeserver_url(self.cfg.homeserver.as_str())
            .sqlite_store(
                self.files.sdk_store(),
                self.cfg.store_passphrase().map(|s| s.expose()),
            )
            .request_config(
                RequestConfig::new()
                    .timeout(Duration::from_secs(30))
                    .retry_limit(3)
                    .max_retry_time(Duration::from_secs(30)),
            )
            .with_encryption_settings(EncryptionSettings {
                auto_enable_cross_signing: true,
                ..EncryptionSettings::default()
            })
            .with_room_key_recipient_strategy(strategy)
            .build()
            .await?;
        match saved {
            Some(saved) => {
                let user = saved.session.meta.user_id.to_string();
                if user != self.cfg.user {
                    return Err(StartError::OtherAccount {
                        saved: user,
                        configured: self.cfg.user.clone(),
                        dir: self.cfg.store_path.display().to_string(),
                    });
                }
                let device = saved.session.meta.device_id.to_string();
                client.restore_session(saved.session).await?;
                // The homeserver may have forgotten the device (logged out elsewhere).
                if let Err(e) = client.whoami().await {
                    if matches!(e.client_api_error_kind(), Some(ErrorKind::UnknownToken(_))) {
                        let aside = self.files.retire()?;
                        tracing::error!(device = %device, moved_to = %aside.display(), "matrix: the homeserver no longer knows this device; its session and keys were moved aside and the bot logs in again as a new device (people in encrypted rooms must trust it anew)");
                        return Err(StartError::SessionGone(e.to_string()));
                    }
                    return Err(StartError::Sdk(e.into()));
                }
                self.metrics.logins.with_label_values(&["restored"]).inc();
                tracing::info!(user = %self.cfg.user, device = %device, "matrix: session restored");
            }
            None => {
                let Some(password) = self.cfg.password() else {
                    return Err(StartError::NoPassword);
                };
                let response = client
                    .matrix_auth()
                    .login_username(&self.cfg.user, password.expose())
                    .initial_device_display_name(&self.cfg.device_name)
                    .await
                    .map_err(|e| StartError::Login {
                        user: self.cfg.user.clone(),
                        error: e.to_string(),
                    })?;
                let Some(session) = client.matrix_auth().session() else {
                    return Err(StartError::Login {
                        user: self.cfg.user.clone(),
                        error: "the homeserver gave no session".into(),
                    });
                };
                self.files.save_session(&Saved {
                    homeserver: self.cfg.homeserver.to_string(),
                    session,
                })?;
                self.metrics.logins.with_label_values(&["logged_in"]).inc();
                tracing::info!(user = %self.cfg.user, device = %response.device_id, "matrix: logged in as a new device; the session is kept in matrix.store_path");
            }
        }
        self.set_display_name(&client).await;
        Ok(client)
    }

    /// Shows the bot under `matrix.display_name` (best effort: it is only a label; identity and
    /// addressing never depend on it).
    async fn set_display_name(&self, client: &Client) {
        let wanted = self.cfg.display_name();
        let account = client.account();
        match account.get_display_name().await {
            Ok(Some(name)) if name == wanted => {}
            _ => {
                if let Err(e) = account.set_display_name(Some(wanted)).await {
                    tracing::warn!(error = %e, "matrix: cannot set the display name");
                }
            }
        }
    }

    /// Runs a started session: delivery, room joins and the sync loop. True when it ended for
    /// shutdown; false when the session must be started again.
    async fn session(
        self: Arc<Self>,
        client: Client,
        shutdown: &mut watch::Receiver<bool>,
    ) -> bool {
        let mut delivery = tokio::spawn(
            deliver::Delivery::new(self.clone(), client.clone()).run(shutdown.clone()),
        );
        let ended = self.sync_loop(&client, shutdown).await;
        self.metrics.connected.set(0);
        if ended {
            // Delivery finishes the message it is sending, then stops.
            let _ = tokio::time::timeout(Duration::from_secs(5), &mut delivery).await;
        }
        delivery.abort();
        ended
    }

    fn sync_settings(&self, token: Option<&str>, timeout: Duration) -> SyncSettings {
        let mut filter = FilterDefinition::with_lazy_loading();
        // Enough of each room's news after a restart to find the commands sent meanwhile.
        filter.room.timeline.limit = Some(UInt::from(TIMELINE_LIMIT));
        let settings = SyncSettings::default()
            .filter(filter.into())
            .timeout(timeout);
        match token {
            Some(t) => settings.token(t),
            None => settings,
        }
    }

    /// Syncs until shutdown (true) or until the session is gone (false).
    async fn sync_loop(
        self: &Arc<Self>,
        client: &Client,
        shutdown: &mut watch::Receiver<bool>,
    ) -> bool {
        let mut position = match self.files.load_sync_position() {
            Ok(p) => p,
            Err(e) => {
                tracing::error!(error = %e, "matrix: cannot read the sync position");
                return false;
            }
        };
        // Configured aliases are resolved first, so an invite to one of those rooms is known
        // as such.
        self.resolve_aliases(client).await;
        let mut failures: u32 = 0;
        let mut joined_configured = false;
        let mut last_join_check = std::time::Instant::now();
        loop {
            if *shutdown.borrow() {
                return true;
            }
            let first = position.is_none();
            let timeout = if first || !joined_configured {
                Duration::ZERO
            } else {
                Duration::from_secs(self.cfg.sync_timeout_secs)
            };
            let settings = self.sync_settings(position.as_deref(), timeout);
            let synced = tokio::select! {
                r = client.sync_once(settings) => r,
                _ = shutdown.changed() => return true,
            };
            match synced {
                Ok(response) => {
                    failures = 0;
                    self.metrics.syncs.with_label_values(&["ok"]).inc();
                    self.metrics.connected.set(1);
                    if first {
                        tracing::info!("matrix: first sync; the rooms' history is not executed");
                    }
                    self.handle(client, &response, first).await;
                    if let Err(e) = self.files.save_sync_position(&response.next_batch) {
                        tracing::error!(error = %e, "matrix: cannot save the sync position; commands may be read again after a restart (they run once: they are keyed by event id)");
                    }
                    position = Some(response.next_batch);
                    // The configured rooms are joined after the first sync, and looked at again
                    // every minute: a kick, or a join that gave up, is mended.
                    if !joined_configured || last_join_check.elapsed() >= Duration::from_secs(60) {
                        joined_configured = true;
                        last_join_check = std::time::Instant::now();
                        self.join_configured(client).await;
                    }
                }
                Err(e) => {
                    self.metrics.syncs.with_label_values(&["error"]).inc();
                    self.metrics.connected.set(0);
                    if matches!(e.client_api_error_kind(), Some(ErrorKind::UnknownToken(_))) {
                        match self.files.retire() {
                            Ok(aside) => {
                                tracing::error!(moved_to = %aside.display(), error = %e, "matrix: the homeserver no longer accepts this device's token; its session was moved aside and the bot logs in again as a new device")
                            }
                            Err(f) => {
                                tracing::error!(error = %e, files = %f, "matrix: the homeserver no longer accepts this device's token, and its session cannot be moved aside")
                            }
                        }
                        return false;
                    }
                    failures = failures.saturating_add(1);
                    let delay = self.backoff(failures);
                    tracing::warn!(error = %e, retry_in = ?delay, "matrix: sync failed");
                    tokio::select! {
                        _ = tokio::time::sleep(delay) => {}
                        _ = shutdown.changed() => return true,
                    }
                }
            }
        }
    }

    /// Resolves the configured aliases not resolved yet (best effort: a join by alias works too).
    async fn resolve_aliases(&self, client: &Client) {
        for room in &self.cfg.rooms {
            if self.rooms.alias(room).is_some() {
                continue;
            }
            let Ok(alias) = <&RoomAliasId>::try_from(room.as_str()) else {
                continue;
            };
            match client.resolve_room_alias(alias).await {
                Ok(r) => self.rooms.set_alias(room, r.room_id.clone()),
                Err(e) => {
                    tracing::warn!(room = %room, error = %e, "matrix: cannot resolve the alias yet; joining by alias")
                }
            }
        }
    }

    /// Joins the configured rooms the bot is not in yet, each with its own retries.
    async fn join_configured(self: &Arc<Self>, client: &Client) {
        self.resolve_aliases(client).await;
        for room in &self.cfg.rooms {
            let Ok(target) = OwnedRoomOrAliasId::try_from(room.as_str()) else {
                tracing::error!(room = %room, "matrix: not a room id or alias; not joined");
                continue;
            };
            let id = self.rooms.id_of(room);
            let joined = id
                .as_ref()
                .and_then(|id| client.get_room(id))
                .is_some_and(|r| r.state() == RoomState::Joined);
            // An invite to it in the same sync may be being accepted already.
            let first = match (&id, self.rooms.joining.lock()) {
                (Some(id), Ok(mut joining)) => joining.insert(id.clone()),
                _ => true,
            };
            if !joined && first {
                self.spawn_join(client.clone(), target, room.clone());
            }
        }
    }

    /// Joins `target` in the background, retrying with backoff (about ten minutes in all).
    fn spawn_join(self: &Arc<Self>, client: Client, target: OwnedRoomOrAliasId, label: String) {
        let cap = Duration::from_secs(self.cfg.reconnect_max_secs.min(60));
        let this = self.clone();
        tokio::spawn(async move {
            for attempt in 1u32..=20 {
                match client.join_room_by_id_or_alias(&target, &[]).await {
                    Ok(room) => {
                        if label.starts_with('#') {
                            this.rooms.set_alias(&label, room.room_id().to_owned());
                        }
                        tracing::info!(room = %label, id = %room.room_id(), "matrix: joined");
                        if let Ok(mut joining) = this.rooms.joining.lock() {
                            joining.remove(room.room_id());
                        }
                        this.rooms.changed.notify_waiters();
                        return;
                    }
                    Err(e) => {
                        let delay = backoff(Duration::from_secs(1), cap, attempt);
                        tracing::warn!(room = %label, attempt, error = %e, retry_in = ?delay, "matrix: cannot join yet");
                        tokio::time::sleep(delay).await;
                    }
                }
            }
            tracing::error!(room = %label, "matrix: gave up joining after 20 attempts; messages for it wait until it is joined");
            if let Some(id) = this.rooms.id_of(&label)
                && let Ok(mut joining) = this.rooms.joining.lock()
            {
                joining.remove(&id);
            }
        });
    }

    /// Everything a sync brought that shepherd acts on: invites, and — unless the sync is only
    /// `history` (the very first one) — the commands in the timelines.
    async fn handle(self: &Arc<Self>, client: &Client, response: &SyncResponse, history: bool) {
        let me = Self::me(client);
        for (room_id, invited) in &response.rooms.invited {
            let state: Vec<&str> = invited
                .invite_state
                .events
                .iter()
                .map(|e| e.json().get())
                .collect();
            self.on_invite(client, room_id, events::inviter(state, &me))
                .await;
        }
        if history {
            return;
        }
        for (room_id, joined) in &response.rooms.joined {
            let timeline = &joined.timeline.events;
            let read: Vec<Event> = timeline
                .iter()
                .map(|e| {
                    if e.kind.is_utd() {
                        self.metrics.decryption_failures.inc();
                        tracing::warn!(room = %room_id, event = ?e.event_id(), "matrix: an encrypted event could not be decrypted");
                        Event::Other
                    } else {
                        events::read(e.raw().json().get(), &me)
                    }
                })
                .collect();
            // What came before our own join is the room's history, not commands for us.
            let joined_now = read.iter().rposition(|e| *e == Event::Joined);
            let start = joined_now.map_or(0, |i| i + 1);
            if joined.timeline.limited && joined_now.is_none() {
                tracing::warn!(room = %room_id, limit = TIMELINE_LIMIT, "matrix: more messages came in this room than one sync returns (after a long absence); only the newest were read for commands");
            }
            let direct = match client.get_room(room_id) {
                Some(room) => room.is_direct().await.unwrap_or(false),
                None => false,
            };
            for event in &read[start..] {
                if let Event::Text(m) = event {
                    self.on_text(room_id, m, direct, &me).await;
                }
            }
        }
    }

    async fn on_invite(
        self: &Arc<Self>,
        client: &Client,
        room_id: &RoomId,
        inviter: Option<String>,
    ) {
        {
            let Ok(mut joining) = self.rooms.joining.lock() else {
                return;
            };
            if !joining.insert(room_id.to_owned()) {
                return; // already being handled
            }
        }
        // A configured room is joined whoever invites to it; others only from `autojoin` users.
        let configured = self
            .cfg
            .rooms
            .iter()
            .any(|r| self.rooms.id_of(r).as_deref() == Some(room_id));
        let allowed = configured
            || inviter
                .as_deref()
                .is_some_and(|who| self.autojoin.is_match(who));
        if allowed {
            self.metrics.invites.with_label_values(&["accepted"]).inc();
            tracing::info!(room = %room_id, inviter = ?inviter, configured, "matrix: invited; joining");
            self.spawn_join(
                client.clone(),
                room_id.to_owned().into(),
                room_id.to_string(),
            );
        } else {
            self.metrics.invites.with_label_values(&["refused"]).inc();
            tracing::warn!(room = %room_id, inviter = ?inviter, "matrix: invite from a user outside matrix.autojoin; refused");
            if let Some(room) = client.get_room(room_id)
                && let Err(e) = room.leave().await
            {
                tracing::warn!(room = %room_id, error = %e, "matrix: cannot refuse the invite");
            }
        }
        if !allowed && let Ok(mut joining) = self.rooms.joining.lock() {
            // A later invite to the same room is judged again.
            joining.remove(room_id);
        }
    }

    async fn on_text(&self, room_id: &RoomId, m: &TextMessage, direct: bool, me: &str) {
        let key = format!("matrix:{}", m.event_id);
        let origin =
            Origin::new(FRONTEND, room_id.to_string()).addressed_to(ReplyTo::of(m).encode());
        let inbound = Inbound {
            // In a direct chat every message is for the bot.
            frontend: if direct {
                Frontend::Console
            } else {
                Frontend::Chat
            },
            origin: origin.clone(),
            identity: format!("matrix:{}", m.sender),
            text: m.body.clone(),
            mr: None,
            dedup: Some(key.clone()),
            rate_room: None,
            bot_user_id: Some(me.to_string()),
        };
        if self.ctx.dispatcher().commands_of(&inbound).is_empty() {
            return; // room chatter
        }
        let before_start = m.sent_at < self.started_at_ms;
        if before_start {
            // Seen again after a restart (the sync position was saved after its commands were
            // stored): it was handled then, and is neither run nor skipped now.
            match shepherd_core::store::message_known(self.ctx.store(), &key).await {
                Ok(true) => return,
                Ok(false) => {}
                Err(e) => {
                    tracing::error!(error = %e, "matrix: cannot tell whether a command was handled; not running it now");
                    return;
                }
            }
        }
        // Sent while the bot was away, and longer ago than the catch-up window: not run. (What
        // arrives while it runs is always run, whatever the clocks say.)
        let age_ms = shepherd_core::store::now_ms() - m.sent_at;
        let window_ms = i64::try_from(self.cfg.catch_up().as_millis()).unwrap_or(i64::MAX);
        if before_start && age_ms > window_ms {
            self.metrics.skipped.inc();
            let when = chrono::DateTime::from_timestamp_millis(m.sent_at)
                .map(|t| t.format("%Y-%m-%d %H:%M UTC").to_string())
                .unwrap_or_else(|| "a while ago".into());
            let text = format!(
                "I did not run this: it was sent at {when}, while I was away, and commands older than {} minutes are skipped. Send it again if it is still wanted.",
                self.cfg.catch_up_minutes
            );
            tracing::info!(event = %m.event_id, from = %m.sender, age_secs = age_ms / 1000, "matrix: command older than the catch-up window; skipped");
            if let Err(e) = self.ctx.dispatcher().decline(&inbound, &text).await {
                tracing::error!(error = %e, "matrix: cannot store the skipped-command reply");
            }
            return;
        }
        if let Err(e) = self.ctx.dispatcher().handle(&inbound).await {
            tracing::error!(error = %e, from = %m.sender, "matrix: could not store a command; the asker got no answer");
        }
    }
}
