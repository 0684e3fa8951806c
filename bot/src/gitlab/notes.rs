//! Delivery of the `gitlab` outbox: replies become merge-request notes, and the messages of one
//! slot (a canary summary) become ONE note, edited in place.
//!
//! Exactly once: every note ends with a hidden marker (`<!-- shepherd:<key> -->`, the key holds
//! the request id). A note create is not idempotent, so before the first attempt the message is
//! marked as being sent; after an ambiguous answer, or when a message marked that way is met again
//! (a crash), shepherd looks for the marker among the MR's newest notes before creating again.
//! Edits are idempotent and simply retried. In order per merge request: a message that cannot be
//! delivered yet (GitLab down, or failing on this MR) holds back the ones behind it on the same MR,
//! tried again after a growing pause, while the other MRs' notes go on; one GitLab refuses for good
//! (the MR is gone, the bot may not comment, the note is too long) is parked — kept with the reason,
//! counted, logged and listed by `shepherd outbox parked` — and the ones behind it go on. When
//! several versions of a slot wait, only the newest is sent. In non-production mode nothing is
//! written: the note is logged.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use async_trait::async_trait;
use prometheus::{IntCounterVec, Opts, Registry};
use shepherd_config::Config;
use shepherd_core::gitlab::{GitLab, GitLabError};
use shepherd_core::metrics::Metrics;
use shepherd_core::once::{self, CreateFailure, OnceError};
use shepherd_core::outbox::{Outbox, OutboxMessage};
use shepherd_core::store::StoreError;
use shepherd_core::{Capabilities, CommandStyle, Formatting};
use tokio::sync::watch;

use super::events::MARKER_PREFIX;
use crate::frontend::{Context, FrontEnd};

pub const FRONTEND: &str = "gitlab";
/// How many of the MR's newest notes are searched for a marker.
const MARKER_SEARCH: u32 = 100;
/// Creates tried for one message before holding it back until later.
const CREATE_ATTEMPTS: u32 = 3;

#[derive(Clone)]
pub struct NotesMetrics {
    /// Notes by action: `created`, `edited`, `recovered` (found by marker), `superseded`,
    /// `parked` (GitLab refuses it for good), `would` (non-production).
    pub notes: IntCounterVec,
}

impl NotesMetrics {
    pub fn register(registry: &Registry) -> Result<Self, prometheus::Error> {
        let notes = IntCounterVec::new(
            Opts::new(
                "gitlab_notes_total",
                "Merge-request notes written by shepherd, by action",
            ),
            &["action"],
        )?;
        registry.register(Box::new(notes.clone()))?;
        Ok(Self { notes })
    }
}

/// MR notes as a front end in the wiring's list (see `frontend::configured`): comments come in
/// through `POST /hooks/gitlab` and the workers; this delivers the `gitlab` outbox.
pub struct Notes {
    production: bool,
}

impl Notes {
    pub fn new(config: &Config) -> Self {
        Self {
            production: config.production,
        }
    }
}

#[async_trait]
impl FrontEnd for Notes {
    fn capabilities(&self) -> Capabilities {
        Capabilities {
            name: FRONTEND,
            edits: true,
            formatting: Formatting::Markdown,
            style: CommandStyle::Mention,
            // GitLab refuses notes longer than a million characters.
            max_message_bytes: Some(1_000_000),
            messages_per_second: None,
        }
    }

    async fn run(
        self: Box<Self>,
        ctx: Arc<Context>,
        shutdown: watch::Receiver<bool>,
    ) -> anyhow::Result<()> {
        let metrics = NotesMetrics::register(ctx.metrics().registry())
            .context("registering GitLab note metrics")?;
        let notes = NotesFrontend {
            gitlab: ctx.services().gitlab.clone(),
            outbox: ctx.outbox().clone(),
            production: self.production,
            metrics,
            core_metrics: ctx.metrics().clone(),
            poll_interval: Duration::from_secs(5),
        };
        notes.run(shutdown).await;
        Ok(())
    }
}

pub struct NotesFrontend {
    pub gitlab: GitLab,
    pub outbox: Outbox,
    pub production: bool,
    pub metrics: NotesMetrics,
    pub core_metrics: Arc<Metrics>,
    /// How often to look for messages written by other processes.
    pub poll_interval: Duration,
}

enum Failure {
    /// Try again later; keep the order.
    Later(String),
    /// GitLab refuses for good.
    Drop(String),
}

/// A merge request whose next note failed: its notes wait until `until`.
struct Held {
    failures: u32,
    until: Instant,
}

/// The pause after the n-th failure in a row on one MR: 0.5 s, doubling, at most a minute.
fn pause_after(failures: u32) -> Duration {
    (Duration::from_millis(500) * 2u32.saturating_pow(failures.saturating_sub(1).min(8)))
        .min(Duration::from_secs(60))
}

impl From<StoreError> for Failure {
    fn from(e: StoreError) -> Self {
        Failure::Later(e.to_string())
    }
}

fn classify(e: GitLabError) -> Failure {
    if e.is_retryable() || matches!(e, GitLabError::Ambiguous { .. }) {
        Failure::Later(e.to_string())
    } else {
        Failure::Drop(e.user_message())
    }
}

/// The marker that ends a message's note.
fn marker(m: &OutboxMessage) -> String {
    let key = match (&m.slot, &m.request_id) {
        (Some(slot), _) => slot.clone(),
        (None, Some(request)) => format!("{request}/{}", m.id),
        (None, None) => m.id.clone(),
    };
    format!("{MARKER_PREFIX}{key} -->")
}

fn note_body(m: &OutboxMessage) -> String {
    let mention = match &m.origin.addressee {
        Some(user) if m.slot.is_none() => format!("@{user} "),
        _ => String::new(),
    };
    format!(
        "{mention}{}\n\n{}",
        crate::safe_text::markdown(&m.body),
        marker(m)
    )
}

impl NotesFrontend {
    pub async fn run(self, mut shutdown: watch::Receiver<bool>) {
        let mut held: HashMap<String, Held> = HashMap::new();
        let mut store_backoff = Duration::from_millis(500);
        loop {
            if *shutdown.borrow() {
                return;
            }
            let pause = match self.deliver_pending(&mut held).await {
                Ok(true) => {
                    store_backoff = Duration::from_millis(500);
                    continue;
                }
                Ok(false) => {
                    let now = Instant::now();
                    held.values()
                        .map(|h| h.until.saturating_duration_since(now))
                        .filter(|d| !d.is_zero())
                        .min()
                        .unwrap_or(self.poll_interval)
                        .min(self.poll_interval)
                }
                Err(why) => {
                    tracing::warn!(error = %why, retry_in = ?store_backoff, "gitlab notes: the outbox is unavailable");
                    let b = store_backoff;
                    store_backoff = (store_backoff * 2).min(Duration::from_secs(60));
                    b
                }
            };
            tokio::select! {
                _ = self.outbox.notified().notified() => {}
                _ = tokio::time::sleep(pause) => {}
                _ = shutdown.changed() => {}
            }
        }
    }

    /// Delivers what is pending on MRs that are not held; true when something was delivered or
    /// parked, false when nothing could be.
    async fn deliver_pending(&self, held: &mut HashMap<String, Held>) -> Result<bool, String> {
        let pending = self
            .outbox
            .pending(FRONTEND, 100)
            .await
            .map_err(|e| e.to_string())?;
        let now = Instant::now();
        let mut waiting: HashSet<String> = held
            .iter()
            .filter(|(_, h)| h.until > now)
            .map(|(room, _)| room.clone())
            .collect();
        let mut progress = false;
        for (i, m) in pending.iter().enumerate() {
            let room = m.origin.to_string();
            if waiting.contains(&room) {
                continue; // an earlier note of this MR failed: keep the MR's order
            }
            let superseded =
                m.slot.is_some() && pending[i + 1..].iter().any(|later| later.slot == m.slot);
            let result = if superseded {
                self.metrics.notes.with_label_values(&["superseded"]).inc();
                self.outbox
                    .mark_delivered(&m.id)
                    .await
                    .map_err(Failure::from)
            } else {
                self.deliver(m).await
            };
            match result {
                Ok(()) => {
                    held.remove(&room);
                    progress = true;
                }
                Err(Failure::Later(why)) => {
                    let h = held.entry(room.clone()).or_insert(Held {
                        failures: 0,
                        until: now,
                    });
                    h.failures += 1;
                    h.until = Instant::now() + pause_after(h.failures);
                    tracing::warn!(message = %m.id, room = %m.origin, error = %why, retry_in = ?pause_after(h.failures), "gitlab notes: this MR's notes are held back; the others go on");
                    self.core_metrics
                        .outbox_send_failures
                        .with_label_values(&[FRONTEND])
                        .inc();
                    let _ = self.outbox.record_failure(&[&m.id], &why).await;
                    waiting.insert(room);
                }
                Err(Failure::Drop(why)) => {
                    tracing::error!(message = %m.id, room = %m.origin, error = %why, "gitlab notes: GitLab refuses this note; it is parked (`shepherd outbox parked`) and the ones behind it go on");
                    self.metrics.notes.with_label_values(&["parked"]).inc();
                    self.core_metrics
                        .outbox_parked
                        .with_label_values(&[FRONTEND])
                        .inc();
                    self.outbox
                        .park(&m.id, &why)
                        .await
                        .map_err(|e| e.to_string())?;
                    held.remove(&room);
                    progress = true;
                }
            }
        }
        Ok(progress)
    }

    async fn deliver(&self, m: &OutboxMessage) -> Result<(), Failure> {
        let Some((project, iid)) = m.origin.as_merge_request() else {
            return Err(Failure::Drop(format!(
                "{} is not a merge request",
                m.origin
            )));
        };
        let body = note_body(m);
        if !self.production {
            tracing::info!(room = %m.origin, body = %m.body, "non-production mode: would post this note");
            self.metrics.notes.with_label_values(&["would"]).inc();
            return self
                .outbox
                .mark_delivered(&m.id)
                .await
                .map_err(Failure::from);
        }
        if let Some(slot) = &m.slot
            && let Some(note) = self.outbox.slot_target(slot).await?
            && let Ok(note_id) = note.parse::<u64>()
        {
            match self.gitlab.edit_mr_note(project, iid, note_id, &body).await {
                Ok(_) => {
                    self.metrics.notes.with_label_values(&["edited"]).inc();
                    return self
                        .outbox
                        .mark_delivered(&m.id)
                        .await
                        .map_err(Failure::from);
                }
                // Someone deleted the note: post it again.
                Err(GitLabError::NotFound { .. }) => {}
                Err(e) => return Err(classify(e)),
            }
        }
        let note_id = self.create_once(m, project, iid, &body).await?;
        match &m.slot {
            Some(slot) => self
                .outbox
                .mark_slot_delivered(m, slot, &note_id.to_string())
                .await
                .map_err(Failure::from),
            None => self
                .outbox
                .mark_delivered(&m.id)
                .await
                .map_err(Failure::from),
        }
    }

    /// Creates the note, or finds it when an earlier attempt already did.
    async fn create_once(
        &self,
        m: &OutboxMessage,
        project: &str,
        iid: u64,
        body: &str,
    ) -> Result<u64, Failure> {
        let marker = &marker(m);
        let started = m.send_started_at.is_some();
        if !started {
            self.outbox.mark_sending(&m.id).await?;
        }
        let created = once::create_once(
            "note",
            started,
            CREATE_ATTEMPTS,
            move || self.find(project, iid, marker),
            move || async move {
                match self.gitlab.create_mr_note(project, iid, body).await {
                    Ok(note) => Ok(note.id),
                    Err(GitLabError::Ambiguous { detail, .. }) => {
                        Err(CreateFailure::Ambiguous(detail))
                    }
                    Err(e) => Err(CreateFailure::Failed(classify(e))),
                }
            },
        )
        .await
        .map_err(|e| match e {
            OnceError::Failed(f) => f,
            OnceError::StillAmbiguous { attempts, .. } => {
                Failure::Later(format!("creating the note was ambiguous {attempts} times"))
            }
        })?;
        let action = if created.recovered() {
            "recovered"
        } else {
            "created"
        };
        self.metrics.notes.with_label_values(&[action]).inc();
        Ok(created.into_inner())
    }

    async fn find(&self, project: &str, iid: u64, marker: &str) -> Result<Option<u64>, Failure> {
        let notes = self
            .gitlab
            .mr_notes(project, iid, MARKER_SEARCH)
            .await
            .map_err(classify)?;
        Ok(notes.iter().find(|n| n.body.contains(marker)).map(|n| n.id))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shepherd_core::Origin;

    fn message(slot: Option<&str>) -> OutboxMessage {
        OutboxMessage {
            id: "m1".into(),
            origin: Origin::merge_request("g/p", 3).addressed_to("alice"),
            body: "hello".into(),
            request_id: Some("r1".into()),
            created_at: 0,
            slot: slot.map(str::to_string),
            send_started_at: None,
            attempts: 0,
        }
    }

    #[test]
    fn replies_mention_the_asker_and_end_with_a_marker() {
        assert_eq!(
            note_body(&message(None)),
            "@alice hello\n\n<!-- shepherd:r1/m1 -->"
        );
        // A summary is edited many times: it does not mention anyone again.
        assert_eq!(
            note_body(&message(Some("canary:r1"))),
            "hello\n\n<!-- shepherd:canary:r1 -->"
        );
    }
}
