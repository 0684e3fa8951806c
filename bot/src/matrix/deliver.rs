//! Delivery of the `matrix` outbox.
//!
//! In order per room, once: a room's messages go one after the other, and one that cannot be sent
//! yet holds back the ones behind it in that room only. Each message is sent with the transaction
//! id `shepherd.<outbox id>`, so when an answer is lost (a timeout, a reset connection) the same
//! send is simply made again and the homeserver recognises it instead of showing it twice. A
//! message is marked delivered only when the homeserver answered with its event id.
//!
//! - Replies are `m.notice` in reply to the asker's event (in its thread when it came from one),
//!   mentioning the asker; alert lines and `say` messages mention nobody.
//! - A slot (a canary summary) is one message: the first is sent, later ones edit it (`m.replace`);
//!   when several versions wait, only the newest is sent.
//! - A backlog of plain lines for one room (an alert storm, `say` calls) is sent as few messages of
//!   many lines (see `Delivery::batch`): a homeserver persists each event on its own, so one event
//!   per line would make a storm take minutes. A batch is pinned in the store (its members share
//!   a tag in `send_started_at`) before its first send, so a send tried again — by this process
//!   or a restarted one — is always the same content under the same transaction id.
//! - `429 M_LIMIT_EXCEEDED` is honoured: the SDK waits `retry_after_ms` and sends again; a 429
//!   that outlasts its retries makes the room wait that long (the other rooms go on). Neither
//!   counts against the message; neither does the
//!   homeserver being unreachable: delivery pauses with growing delays and goes on when it is back.
//!   A refusal (a 4xx: not allowed in the room, too large) counts a failed attempt; after
//!   `max_send_attempts` the message is parked (`shepherd outbox parked`) and the ones behind it go on.
//! - Messages for a room the bot is not in wait (without crowding out other rooms) while it is one
//!   of `matrix.rooms` or being joined; for any other room they count failed attempts.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use matrix_sdk::ruma::api::error::{ErrorKind, RetryAfter};
use matrix_sdk::ruma::{OwnedRoomId, OwnedTransactionId, RoomAliasId, RoomId};
use matrix_sdk::{Client, Room, RoomState};
use shepherd_core::outbox::OutboxMessage;
use tokio::sync::watch;

use super::events::{self, ReplyTo};
use super::{FRONTEND, MatrixFrontend, render};

/// Why a message was not sent.
enum Failure {
    /// The homeserver is rate-limiting: wait this long, it does not count.
    RateLimited(Duration),
    /// The homeserver could not be reached or failed (5xx): try again later, it does not count.
    Unavailable(String),
    /// The homeserver refused the message (4xx): a failed attempt.
    Refused(String),
    /// The bot is not (yet) in the room.
    NotInRoom,
}

pub struct Delivery {
    fe: Arc<MatrixFrontend>,
    client: Client,
    /// Rooms that must wait before their next message, and until when.
    waiting: HashMap<String, Instant>,
    /// Growing pause while the homeserver is unavailable.
    unavailable: u32,
    counted_at: Option<Instant>,
    /// The last batch tag given (see [`Delivery::next_tag`]).
    last_tag: i64,
}

impl Delivery {
    pub fn new(fe: Arc<MatrixFrontend>, client: Client) -> Self {
        Self {
            fe,
            client,
            waiting: HashMap::new(),
            unavailable: 0,
            counted_at: None,
            last_tag: 0,
        }
    }

    pub async fn run(mut self, mut shutdown: watch::Receiver<bool>) {
        loop {
            if *shutdown.borrow() {
                return;
            }
            let outbox = self.fe.ctx.outbox().clone();
            let fe = self.fe.clone();
            let waiter = outbox.notified().notified();
            let joined = fe.rooms.changed.notified();
            let pause = match self.round().await {
                Ok(true) => continue,
                Ok(false) => self.next_due(),
                Err(pause) => pause,
            };
            tokio::select! {
                _ = waiter => {}
                _ = joined => {}
                _ = tokio::time::sleep(pause) => {}
                _ = shutdown.changed() => {}
            }
        }
    }

    /// How long until a waiting room may go again (at most half a second, so messages written
    /// by other processes are not left waiting).
    fn next_due(&self) -> Duration {
        let now = Instant::now();
        self.waiting
            .values()
            .map(|at| at.saturating_duration_since(now))
            .min()
            .unwrap_or(Duration::from_millis(500))
            .clamp(Duration::from_millis(10), Duration::from_millis(500))
    }

    /// One pass over what is pending; true when something was delivered or parked. `Err` holds
    /// how long to pause (the homeserver or the store is unavailable).
    async fn round(&mut self) -> Result<bool, Duration> {
        let now = Instant::now();
        self.waiting.retain(|_, at| *at > now);
        let closed: Vec<String> = self.waiting.keys().cloned().collect();
        let outbox = self.fe.ctx.outbox().clone();
        let pending = match outbox.pending_except(FRONTEND, &closed, 50).await {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!(error = %e, "matrix: outbox unavailable");
                return Err(Duration::from_secs(1));
            }
        };
        if self
            .counted_at
            .is_none_or(|at| at.elapsed() >= Duration::from_secs(1))
        {
            self.counted_at = Some(Instant::now());
            if let Ok(n) = outbox.pending_count(FRONTEND).await {
                self.fe.metrics.messages_queued.set(n);
            }
        }
        let mut progress = false;
        let mut held: HashSet<String> = HashSet::new();
        // Messages already sent in this round as part of an earlier one's batch.
        let mut done: HashSet<String> = HashSet::new();
        for (i, m) in pending.iter().enumerate() {
            let room = m.origin.room.to_ascii_lowercase();
            if held.contains(&room) || done.contains(&m.id) {
                continue; // an earlier message of this room is not through: keep its order
            }
            if m.slot.is_some() && pending[i + 1..].iter().any(|later| later.slot == m.slot) {
                self.fe
                    .metrics
                    .sends
                    .with_label_values(&["superseded"])
                    .inc();
                if let Err(e) = outbox.mark_delivered(&m.id).await {
                    tracing::warn!(error = %e, "matrix: cannot mark a superseded message");
                }
                progress = true;
                continue;
            }
            let batch = match self.batch(&pending, i).await {
                Ok(b) => b,
                Err(e) => {
                    tracing::warn!(error = %e, "matrix: outbox unavailable");
                    return Err(Duration::from_secs(1));
                }
            };
            let max = self.fe.cfg.max_send_attempts;
            if m.attempts >= max {
                for b in &batch.messages {
                    self.park(b, &format!("refused {} times", b.attempts)).await;
                    done.insert(b.id.clone());
                }
                progress = true;
                continue;
            }
            match self.send(&batch).await {
                Ok(()) => {
                    self.unavailable = 0;
                    done.extend(batch.messages.iter().map(|b| b.id.clone()));
                    progress = true;
                }
                Err(Failure::RateLimited(wait)) => {
                    self.fe
                        .metrics
                        .sends
                        .with_label_values(&["rate_limited"])
                        .inc();
                    tracing::warn!(room = %m.origin, retry_in = ?wait, "matrix: rate-limited by the homeserver; the room waits");
                    self.waiting.insert(room.clone(), Instant::now() + wait);
                    held.insert(room);
                }
                Err(Failure::Unavailable(why)) => {
                    self.fe
                        .metrics
                        .sends
                        .with_label_values(&["unavailable"])
                        .inc();
                    self.unavailable = self.unavailable.saturating_add(1);
                    let pause = super::backoff(
                        Duration::from_millis(250),
                        Duration::from_secs(30),
                        self.unavailable,
                    );
                    tracing::warn!(room = %m.origin, error = %why, retry_in = ?pause, "matrix: the homeserver is unavailable; messages wait");
                    return Err(pause);
                }
                Err(Failure::NotInRoom) => {
                    if self.fe.cfg.has_room(&m.origin.room) || self.is_joining(&m.origin.room) {
                        // It is being joined: wait without counting.
                        self.waiting
                            .insert(room.clone(), Instant::now() + Duration::from_secs(2));
                    } else {
                        self.failed(&batch.messages, "the bot is not in this room")
                            .await;
                        self.waiting.insert(
                            room.clone(),
                            Instant::now() + Duration::from_secs(1u64 << m.attempts.min(5)),
                        );
                    }
                    held.insert(room);
                }
                Err(Failure::Refused(why)) => {
                    self.fe.metrics.sends.with_label_values(&["refused"]).inc();
                    tracing::warn!(message = %m.id, messages = batch.messages.len(), room = %m.origin, attempt = m.attempts + 1, reason = %why, "matrix: the homeserver refused a message; it will be tried again");
                    self.failed(&batch.messages, &format!("refused: {why}"))
                        .await;
                    self.waiting.insert(
                        room.clone(),
                        Instant::now() + Duration::from_secs(1u64 << m.attempts.min(5)),
                    );
                    held.insert(room);
                }
            }
        }
        Ok(progress)
    }

    /// The messages sent together with `pending[i]`, it first. A message that was sent before
    /// belongs to the batch it was first sent in (its tag): exactly that batch is sent again, so
    /// its transaction id always means the same content. A new message takes along the waiting
    /// messages of its room behind it that are plain lines too (no reply, no summary slot, never
    /// tried), up to [`MAX_BATCH`] and the room's message limit: an alert storm becomes a
    /// few messages of many lines, not hundreds of events.
    async fn batch(
        &self,
        pending: &[OutboxMessage],
        i: usize,
    ) -> Result<Batch, shepherd_core::store::StoreError> {
        let first = &pending[i];
        let max = self.fe.cfg.max_message_bytes as usize;
        let rendered = |m: &OutboxMessage| render::render(&m.body, max);
        if let Some(tag) = first.send_started_at {
            let members = self
                .fe
                .ctx
                .outbox()
                .batch(FRONTEND, &first.origin.room, tag)
                .await?;
            // Only the batch's members from this one on (earlier ones are delivered).
            let messages = if members.iter().any(|m| m.id == first.id) {
                members
            } else {
                vec![first.clone()]
            };
            let text = render::join(messages.iter().map(rendered));
            return Ok(Batch { messages, text });
        }
        let plain = |m: &OutboxMessage| {
            m.slot.is_none()
                && m.origin.addressee.is_none()
                && m.send_started_at.is_none()
                && m.attempts == 0
        };
        let mut messages = vec![first.clone()];
        let mut parts = vec![rendered(first)];
        if plain(first) {
            // Sized as sent (plain and HTML together), so the batch is never cut by the room's
            // limit: a line cut off would be marked delivered without being shown.
            let budget = max.saturating_sub(256);
            // Each part also costs its line breaks in the joined bodies.
            let cost = |r: &render::Rendered| r.bytes() + 8;
            let mut bytes = cost(&parts[0]);
            for m in pending[i + 1..]
                .iter()
                .filter(|m| m.origin.room == first.origin.room)
            {
                if !plain(m) || messages.len() >= MAX_BATCH {
                    break;
                }
                let part = rendered(m);
                if bytes + cost(&part) > budget {
                    break;
                }
                bytes += cost(&part);
                messages.push(m.clone());
                parts.push(part);
            }
        }
        Ok(Batch {
            messages,
            text: render::join(parts),
        })
    }

    /// A tag no earlier batch of this process had (milliseconds, kept increasing).
    fn next_tag(&mut self) -> i64 {
        let tag = shepherd_core::store::now_ms().max(self.last_tag + 1);
        self.last_tag = tag;
        tag
    }

    fn is_joining(&self, room: &str) -> bool {
        <&RoomId>::try_from(room)
            .is_ok_and(|id| self.fe.rooms.joining.lock().is_ok_and(|j| j.contains(id)))
    }

    async fn failed(&self, batch: &[OutboxMessage], why: &str) {
        self.fe
            .ctx
            .metrics()
            .outbox_send_failures
            .with_label_values(&[FRONTEND])
            .inc_by(batch.len() as u64);
        let ids: Vec<&str> = batch.iter().map(|m| m.id.as_str()).collect();
        if let Err(e) = self.fe.ctx.outbox().record_failure(&ids, why).await {
            tracing::warn!(error = %e, "matrix: cannot record a failed send");
        }
    }

    async fn park(&self, m: &OutboxMessage, why: &str) {
        tracing::error!(message = %m.id, room = %m.origin, attempts = m.attempts, reason = %why, "matrix: giving up on a message; it is kept (`shepherd outbox parked`) and the ones behind it go on");
        self.fe.metrics.sends.with_label_values(&["parked"]).inc();
        self.fe
            .ctx
            .metrics()
            .outbox_parked
            .with_label_values(&[FRONTEND])
            .inc();
        if let Err(e) = self.fe.ctx.outbox().park(&m.id, why).await {
            tracing::warn!(error = %e, "matrix: cannot park a message");
        }
    }

    /// The joined room a target names (a room id, or an alias resolved once).
    async fn room(&self, target: &str) -> Result<Room, Failure> {
        let id: OwnedRoomId = if target.starts_with('#') {
            match self.fe.rooms.alias(target) {
                Some(id) => id,
                None => {
                    let alias = <&RoomAliasId>::try_from(target)
                        .map_err(|e| Failure::Refused(format!("{target} is not an alias: {e}")))?;
                    let resolved = self
                        .client
                        .resolve_room_alias(alias)
                        .await
                        .map_err(|e| classify_http(&e))?;
                    self.fe.rooms.set_alias(target, resolved.room_id.clone());
                    resolved.room_id
                }
            }
        } else {
            <&RoomId>::try_from(target)
                .map_err(|e| Failure::Refused(format!("{target} is not a room id: {e}")))?
                .to_owned()
        };
        self.client
            .get_room(&id)
            .filter(|r| r.state() == RoomState::Joined)
            .ok_or(Failure::NotInRoom)
    }

    /// Sends a batch (see [`Delivery::batch`]) as one message, its first message's id in the
    /// transaction id, and marks all of it delivered.
    async fn send(&mut self, batch: &Batch) -> Result<(), Failure> {
        let Some(m) = batch.messages.first() else {
            return Ok(());
        };
        let room = self.room(&m.origin.room).await?;
        let outbox = self.fe.ctx.outbox().clone();
        let ids: Vec<&str> = batch.messages.iter().map(|b| b.id.as_str()).collect();
        if m.send_started_at.is_none() {
            // Pinned before the first send: whatever happens next, these go together.
            let tag = self.next_tag();
            outbox
                .mark_sending_batch(&ids, tag)
                .await
                .map_err(|e| Failure::Unavailable(e.to_string()))?;
        }
        let r = &batch.text;
        let original = match &m.slot {
            Some(slot) => outbox
                .slot_target(slot)
                .await
                .map_err(|e| Failure::Unavailable(e.to_string()))?,
            None => None,
        };
        let content = match &original {
            Some(event) => events::edit(event, &r.plain, &r.html),
            None => events::notice(
                &r.plain,
                &r.html,
                ReplyTo::decode(m.origin.addressee.as_deref()).as_ref(),
            ),
        };
        let txn = OwnedTransactionId::from(format!("shepherd.{}", m.id));
        // The SDK retries a 429 itself after `retry_after_ms` (with the same transaction id);
        // one it still gets after its retries comes back here, and the room waits.
        let sent = room
            .send_raw("m.room.message", content)
            .with_transaction_id(&txn)
            .await
            .map_err(|e| classify(&e))?;
        let event_id = sent.response.event_id.to_string();
        let core = &self.fe.ctx.metrics();
        core.outbox_delivered
            .with_label_values(&[FRONTEND])
            .inc_by(batch.messages.len() as u64);
        let now = shepherd_core::store::now_ms();
        for b in &batch.messages {
            core.outbox_delivery_lag
                .with_label_values(&[FRONTEND])
                .observe((now - b.created_at).max(0) as f64 / 1000.0);
        }
        let outcome = if original.is_some() { "edited" } else { "sent" };
        self.fe.metrics.sends.with_label_values(&[outcome]).inc();
        // Sent: whatever the store says next, it must not be sent again as a new message.
        let marked = match (&m.slot, original) {
            (Some(slot), None) => outbox.mark_slot_delivered(m, slot, &event_id).await,
            _ => outbox.mark_all_delivered(&ids).await,
        };
        if let Err(e) = marked {
            tracing::warn!(error = %e, message = %m.id, "matrix: sent, but cannot mark it delivered; a retry reuses its transaction id");
        }
        Ok(())
    }
}

/// Outbox messages sent as one Matrix message, and that message.
struct Batch {
    messages: Vec<OutboxMessage>,
    text: render::Rendered,
}

/// Most messages sent as one Matrix message.
const MAX_BATCH: usize = 50;

fn retry_after(kind: &ErrorKind) -> Option<Duration> {
    match kind {
        ErrorKind::LimitExceeded(data) => Some(match &data.retry_after {
            Some(RetryAfter::Delay(d)) => *d,
            Some(RetryAfter::DateTime(t)) => t
                .duration_since(std::time::SystemTime::now())
                .unwrap_or_default(),
            None => Duration::from_secs(1),
        }),
        _ => None,
    }
}

fn classify_status(status: Option<u16>, kind: Option<&ErrorKind>, text: String) -> Failure {
    if let Some(wait) = kind.and_then(retry_after) {
        return Failure::RateLimited(wait.max(Duration::from_millis(100)));
    }
    match status {
        Some(s) if (400..500).contains(&s) && s != 408 => Failure::Refused(text),
        _ => Failure::Unavailable(text),
    }
}

fn classify(e: &matrix_sdk::Error) -> Failure {
    if let Some(api) = e.as_client_api_error() {
        return classify_status(
            Some(api.status_code.as_u16()),
            api.error_kind(),
            e.to_string(),
        );
    }
    match e {
        matrix_sdk::Error::Http(_) => Failure::Unavailable(e.to_string()),
        // Encryption and store errors: counted, so one that never passes is parked.
        _ => Failure::Refused(e.to_string()),
    }
}

fn classify_http(e: &matrix_sdk::HttpError) -> Failure {
    match e.as_client_api_error() {
        Some(api) => classify_status(
            Some(api.status_code.as_u16()),
            api.error_kind(),
            e.to_string(),
        ),
        None => Failure::Unavailable(e.to_string()),
    }
}
