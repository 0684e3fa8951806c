//! Workers: take requests from the durable queue, run the plugin, commit the outcome.
//!
//! A plugin's replies, the pipelines it started, the watches it opened and the completion of
//! the queue item are written in ONE transaction, so a crash either leaves the item to be
//! redelivered (and the plugin's own idempotency records prevent a second effect) or leaves
//! everything done. The lease is renewed while a plugin runs. A transient failure goes back
//! to the queue with a growing delay; after the last attempt the item is parked as dead and
//! the asker is told — nothing is dropped silently.

use std::sync::Arc;
use std::time::{Duration, Instant};

use shepherd_core::audit::{AuditLog, AuditOutcome};
use shepherd_core::canary::{self, Publish};
use shepherd_core::metrics::Metrics;
use shepherd_core::outbox::{self, Outbox};
use shepherd_core::queue::{LaneFinish, Leased, Queue};
use shepherd_core::store::{StoreError, now_ms};
use shepherd_core::watcher::{self, Watcher};
use shepherd_plugins::{Call, Outcome, PluginError, Registry, Services};
use tokio::sync::watch;
use tracing::Instrument;

use crate::alerts::{AlertRelay, NOTIFICATION_KIND, Prepared};
use crate::dispatch::{COMMAND_KIND, QueuedCommand};
use crate::gitlab::events::{EventError, GitLabEvents};
use crate::gitlab::hooks::EVENT_KIND;
use shepherd_core::herder::retry::RETRY_KIND;

/// Most alert notifications a lane worker takes and commits together.
const LANE_BATCH: usize = 256;

#[derive(Clone)]
pub struct Worker {
    pub name: String,
    pub queue: Queue,
    pub outbox: Outbox,
    pub audit: AuditLog,
    pub registry: Arc<Registry>,
    pub services: Arc<Services>,
    pub watcher: Watcher,
    pub metrics: Arc<Metrics>,
    pub poll_interval: Duration,
    /// Processes stored GitLab webhook events.
    pub events: Arc<GitLabEvents>,
    /// Relays stored Alertmanager notifications (when alerts are configured).
    pub alerts: Option<Arc<AlertRelay>>,
    /// A lane worker takes only this kind, one at a time in arrival order (see
    /// `QueueSettings::lanes`); `None` for the general workers.
    pub lane: Option<&'static str>,
}

impl Worker {
    pub async fn run(self, mut shutdown: watch::Receiver<bool>) {
        loop {
            if *shutdown.borrow() {
                return;
            }
            if let Some(kind) = self.lane {
                match self
                    .queue
                    .lease_lane_batch(&self.name, kind, LANE_BATCH)
                    .await
                {
                    Ok(items) if !items.is_empty() => {
                        let span = tracing::info_span!("lane", kind, items = items.len());
                        if let Err(e) = self.process_alerts(items).instrument(span).await {
                            tracing::error!(worker = %self.name, error = %e, "worker: store error while finishing a lane batch; it will be redelivered");
                            tokio::time::sleep(self.poll_interval).await;
                        }
                        continue;
                    }
                    Ok(_) => {}
                    Err(e) => {
                        tracing::error!(worker = %self.name, error = %e, "worker: cannot lease")
                    }
                }
                self.idle(self.queue.lane_due_in(kind).await, &mut shutdown)
                    .await;
                continue;
            }
            match self.queue.lease(&self.name).await {
                Ok(Some(item)) => {
                    // Every log line of this item's work carries its id and origin.
                    let span = tracing::info_span!("request", id = %item.id, origin = %item.origin, attempt = item.attempt);
                    if let Err(e) = self.process(item).instrument(span).await {
                        tracing::error!(worker = %self.name, error = %e, "worker: store error while finishing an item; it will be redelivered");
                        tokio::time::sleep(self.poll_interval).await;
                    }
                    continue;
                }
                Ok(None) => {}
                Err(e) => tracing::error!(worker = %self.name, error = %e, "worker: cannot lease"),
            }
            self.idle(self.queue.next_due_in().await, &mut shutdown)
                .await;
        }
    }

    /// Waits for new work: an enqueue in this process, the next item falling due (`due`, at
    /// most a poll interval, for other processes' work), or shutdown.
    async fn idle(
        &self,
        due: Result<Option<Duration>, StoreError>,
        shutdown: &mut watch::Receiver<bool>,
    ) {
        let pause = match due {
            Ok(Some(d)) => d.min(self.poll_interval),
            _ => self.poll_interval,
        };
        tokio::select! {
            _ = self.queue.notified(self.lane).notified() => {}
            _ = tokio::time::sleep(pause) => {}
            _ = shutdown.changed() => {}
        }
    }

    async fn process(&self, item: Leased) -> Result<(), StoreError> {
        if item.kind == EVENT_KIND || item.kind == RETRY_KIND {
            return self.process_event(item).await;
        }
        if item.kind == NOTIFICATION_KIND {
            return self.process_alerts(vec![item]).await;
        }
        let started = Instant::now();

        let queued: QueuedCommand = match (
            item.kind.as_str(),
            item.payload.decode::<QueuedCommand>(),
        ) {
            (COMMAND_KIND, Ok(q)) => q,
            (kind, Err(e)) => {
                tracing::error!(request = %item.id, kind, error = %e, "worker: unreadable request; parking it");
                return self
                    .finish_dead(
                        &item,
                        &format!("internal error: request {} could not be read", item.id),
                    )
                    .await;
            }
            (kind, _) => {
                tracing::error!(request = %item.id, kind, "worker: unknown request kind; parking it");
                return self
                    .finish_dead(
                        &item,
                        &format!(
                            "internal error: request {} has unknown kind {kind}",
                            item.id
                        ),
                    )
                    .await;
            }
        };
        let name = queued.command.name();
        let Some(plugin) = self.registry.get(name) else {
            return self
                .finish(
                    &item,
                    Outcome::reply(Registry::not_enabled(name)),
                    name,
                    "not_enabled",
                )
                .await;
        };
        let principal = self.services.policy.resolve(&item.identity);
        let call = Call {
            request_id: &item.id,
            requested_at: item.created_at,
            attempt: item.attempt,
            origin: &item.origin,
            principal: &principal,
            command: &queued.command,
        };

        // Keep the lease while the plugin works.
        let renew_every = self.queue.settings().lease / 3;
        let renewer = {
            let queue = self.queue.clone();
            let item = item.clone();
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(renew_every).await;
                    match queue.renew(&item).await {
                        Ok(true) => {}
                        Ok(false) => {
                            tracing::warn!(request = %item.id, "worker: lease lost");
                            return;
                        }
                        Err(e) => {
                            tracing::warn!(request = %item.id, error = %e, "worker: lease renewal failed")
                        }
                    }
                }
            })
        };
        let result = plugin.run(&self.services, &call).await;
        renewer.abort();

        let changes = plugin.help().changes_something;
        let res = match result {
            Ok(outcome) => {
                let audit = outcome.audit.clone();
                self.finish(&item, outcome, name, "ok").await?;
                if let (true, Some((what, detail))) = (changes, audit) {
                    self.audit_entry(&item, name, &queued.text, what, &detail)
                        .await;
                }
                Ok(())
            }
            Err(PluginError::Refuse(msg)) => {
                self.finish(&item, Outcome::reply(msg.clone()), name, "error")
                    .await?;
                if changes {
                    self.audit_entry(&item, name, &queued.text, AuditOutcome::Failed, &msg)
                        .await;
                }
                Ok(())
            }
            Err(PluginError::Retry(msg)) => {
                if self.queue.is_last_attempt(&item) {
                    let text = format!(
                        "`{name}` failed after {} attempts and was given up (request {}): {msg}",
                        item.attempt, item.id
                    );
                    self.finish_dead(&item, &text).await?;
                    self.count(name, "dead");
                    if changes {
                        self.audit_entry(&item, name, &queued.text, AuditOutcome::Failed, &msg)
                            .await;
                    }
                } else {
                    let out = self.queue.fail(&item, &msg).await?;
                    tracing::warn!(request = %item.id, command = name, error = %msg, outcome = ?out, "worker: attempt failed; retrying later");
                }
                Ok(())
            }
        };
        self.metrics
            .command_duration
            .with_label_values(&[name])
            .observe(started.elapsed().as_secs_f64());
        res
    }

    /// A stored GitLab webhook event: done, tried again later, or parked when unreadable.
    async fn process_event(&self, item: Leased) -> Result<(), StoreError> {
        match self.events.process(&item).await {
            Ok(()) => {
                if !self.queue.complete(&item).await? {
                    tracing::warn!(request = %item.id, "gitlab event: lease lost before it was marked done; it runs again");
                }
                Ok(())
            }
            Err(EventError::Retry(why)) => {
                if self.queue.is_last_attempt(&item) {
                    self.park(&item, &why).await?;
                    tracing::error!(request = %item.id, error = %why, "gitlab event: given up after the last attempt; parked");
                } else {
                    let out = self.queue.fail(&item, &why).await?;
                    tracing::warn!(request = %item.id, error = %why, outcome = ?out, "gitlab event: attempt failed; retrying later");
                }
                Ok(())
            }
            Err(EventError::Unreadable(why)) => {
                tracing::error!(request = %item.id, error = %why, "gitlab event: unreadable; parked");
                self.park(&item, &why).await
            }
        }
    }

    /// Alert notifications taken from their lane together, in order: their lines and their
    /// completion in one transaction. An unreadable one is parked in it; a store error rolls the
    /// whole batch back and each is tried again later (the first still first).
    async fn process_alerts(&self, items: Vec<Leased>) -> Result<(), StoreError> {
        let Some(relay) = &self.alerts else {
            let why = "alerts are not configured any more; the notification cannot be relayed";
            for item in &items {
                self.park(item, why).await?;
                tracing::error!(request = %item.id, "{why}; parked");
            }
            return Ok(());
        };
        let large = items
            .iter()
            .map(|i| i.payload.as_str().len())
            .sum::<usize>()
            >= crate::memory::LARGE_WORK_BYTES;
        let prepared = relay.prepare(&items);
        // On SQLite, when every item reads: the whole batch in one transaction on the store
        // writer's own connection (see `Queue::finish_lane_on_thread`).
        if self.services.store.writer().has_thread() && prepared.iter().all(Result::is_ok) {
            let mut prepared: Vec<Prepared> = prepared.into_iter().flatten().collect();
            // The lines go to the store; what is counted afterwards needs the rest.
            let batch = items
                .iter()
                .zip(prepared.iter_mut())
                .map(|(item, p)| LaneFinish {
                    id: item.id.clone(),
                    owner: item.owner.clone(),
                    attempt: item.attempt,
                    key: p.key.clone(),
                    lines: std::mem::take(&mut p.lines),
                })
                .collect();
            let finished = self
                .queue
                .finish_lane_on_thread(batch, relay.dedup_window_ms)
                .await
                .unwrap_or_else(|| {
                    Err(StoreError::Group("the store's writer has no thread".into()))
                });
            match finished {
                Ok(shown) => {
                    for ((item, p), shown) in items.iter().zip(&prepared).zip(shown) {
                        relay.account(item, p, shown);
                    }
                    self.outbox.wake();
                    if large {
                        drop((items, prepared));
                        crate::memory::release();
                    }
                }
                Err(StoreError::Conflict(why)) => tracing::warn!(
                    items = items.len(),
                    %why,
                    "worker: a lane lease was lost before completion; the batch will be redelivered"
                ),
                Err(e) => {
                    for item in &items {
                        let out = self.queue.fail(item, &e.to_string()).await?;
                        tracing::warn!(request = %item.id, error = %e, outcome = ?out, "alert notification: attempt failed; retrying later");
                    }
                }
            }
            return Ok(());
        }
        self.finish_alerts_in_tx(relay, items, prepared, large)
            .await
    }

    /// The lane batch through a relaxed sqlx transaction (PostgreSQL; SQLite when an item is
    /// unreadable, so it is parked in the same transaction).
    async fn finish_alerts_in_tx(
        &self,
        relay: &AlertRelay,
        items: Vec<Leased>,
        prepared: Vec<Result<Prepared, String>>,
        large: bool,
    ) -> Result<(), StoreError> {
        // Relaxed (`Store::begin_relaxed`): the notifications themselves were committed before
        // their 200; what this writes is derived from them, and if a power failure loses it,
        // they are relayed again.
        let mut tx = self.services.store.begin_relaxed().await?;
        let outcomes = match relay.process_batch_in(&mut tx, &items, prepared).await {
            Ok(outcomes) => outcomes,
            Err(e) => {
                tx.rollback().await?;
                for item in &items {
                    let out = self.queue.fail(item, &e.to_string()).await?;
                    tracing::warn!(request = %item.id, error = %e, outcome = ?out, "alert notification: attempt failed; retrying later");
                }
                return Ok(());
            }
        };
        let mut done: Vec<&Leased> = Vec::with_capacity(items.len());
        for (item, outcome) in items.iter().zip(outcomes) {
            match outcome {
                Ok(()) => done.push(item),
                Err(why) => {
                    self.queue.park_in(&mut tx, item, &why).await?;
                    tracing::error!(request = %item.id, error = %why, "alert notification unreadable; parked");
                }
            }
        }
        if self.queue.complete_all_in(&mut tx, &done).await? {
            tx.commit().await?;
            self.outbox.wake();
            if large {
                drop(items);
                crate::memory::release();
            }
        } else {
            tx.rollback().await?;
            tracing::warn!(
                items = items.len(),
                "worker: a lane lease was lost before completion; the batch will be redelivered"
            );
        }
        Ok(())
    }

    /// Parks an item that has no one to tell (a webhook event, a notification).
    async fn park(&self, item: &Leased, why: &str) -> Result<(), StoreError> {
        let mut tx = self.services.store.begin().await?;
        self.queue.park_in(&mut tx, item, why).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Commits replies, started pipelines, watches and completion together.
    async fn finish(
        &self,
        item: &Leased,
        outcome: Outcome,
        name: &str,
        result: &str,
    ) -> Result<(), StoreError> {
        let mut tx = self.services.store.begin().await?;
        for (i, reply) in outcome.replies.iter().enumerate() {
            outbox::push_in(
                &mut tx,
                &item.origin,
                reply,
                Some(&format!("{}:reply:{i}", item.id)),
                Some(&item.id),
            )
            .await?;
        }
        for (i, (room, text)) in outcome.announcements.iter().enumerate() {
            outbox::push_in(
                &mut tx,
                room,
                text,
                Some(&format!("{}:announce:{i}", item.id)),
                Some(&item.id),
            )
            .await?;
        }
        for p in &outcome.started {
            watcher::record_pipeline_in(
                &mut tx,
                &p.project,
                p.pipeline_id,
                &item.id,
                &item.identity,
                &p.web_url,
            )
            .await?;
        }
        let first_poll = now_ms()
            + i64::try_from(self.watcher.settings().poll_interval.as_millis()).unwrap_or(0);
        for w in &outcome.watches {
            watcher::add_in(&mut tx, w, first_poll).await?;
        }
        if let Some(change) = &outcome.canary {
            let run = canary::apply_in(&mut tx, change, &item.origin, &item.identity).await?;
            canary::publish_in(
                &mut tx,
                &run,
                self.watcher.reporter(),
                &self.services.frontends,
                Publish::Always,
            )
            .await?;
        }
        if !self.queue.complete_in(&mut tx, item).await? {
            tx.rollback().await?;
            tracing::warn!(request = %item.id, "worker: lease lost before completion; another worker will finish it");
            return Ok(());
        }
        tx.commit().await?;
        self.outbox.wake();
        if !outcome.watches.is_empty() {
            self.watcher.wake();
        }
        self.count(name, result);
        Ok(())
    }

    /// Parks the item as dead and tells the asker, in one transaction.
    async fn finish_dead(&self, item: &Leased, text: &str) -> Result<(), StoreError> {
        let mut tx = self.services.store.begin().await?;
        outbox::push_in(
            &mut tx,
            &item.origin,
            text,
            Some(&format!("{}:dead", item.id)),
            Some(&item.id),
        )
        .await?;
        self.queue.park_in(&mut tx, item, text).await?;
        tx.commit().await?;
        self.outbox.wake();
        Ok(())
    }

    async fn audit_entry(
        &self,
        item: &Leased,
        name: &str,
        text: &str,
        outcome: AuditOutcome,
        detail: &str,
    ) {
        let principal = self.services.policy.resolve(&item.identity);
        if let Err(e) = self
            .audit
            .record(
                &item.identity,
                principal.person.as_deref(),
                &item.origin,
                name,
                text,
                outcome,
                Some(detail),
            )
            .await
        {
            tracing::error!(request = %item.id, error = %e, "audit write failed");
        }
    }

    fn count(&self, command: &str, outcome: &str) {
        self.metrics
            .commands
            .with_label_values(&[command, outcome])
            .inc();
    }
}
