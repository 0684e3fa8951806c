//! The dispatcher: from a front end's text to a stored request or an inline reply.
//!
//! For every command addressed to the bot: rate-limit per identity and per room (`limits`: a
//! typo or an unknown command counts like any other line, and over the limit the sender is told
//! once, not per line), parse (commands crate), resolve the identity and check the permission (core policy),
//! then either run it inline (help, ping, ...) or store it in the durable queue — the
//! request is committed before anything acknowledges it. Every reply goes to the outbox of
//! the origin. Refusals and every command that changes something are audited.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use shepherd_commands::{Addressing, Frontend, MrRef, ParseContext, addressed, parse};
use shepherd_core::Origin;
use shepherd_core::audit::{AuditLog, AuditOutcome};
use shepherd_core::metrics::Metrics;
use shepherd_core::outbox::Outbox;
use shepherd_core::queue::{Enqueued, NewRequest, Queue};
use shepherd_core::store::{StoreError, new_id, now_ms};
use shepherd_plugins::{Call, Outcome, PluginError, Registry, Services};

use crate::limits::{Limits, Scope, Verdict};

/// A message received by a front end.
#[derive(Debug, Clone)]
pub struct Inbound {
    pub frontend: Frontend,
    pub origin: Origin,
    pub identity: String,
    pub text: String,
    /// The merge request a comment is on: `test`, `retest`, ... act on it implicitly.
    pub mr: Option<MrRef>,
    /// Names the message across redeliveries and edits (a GitLab note: `note:<project>:<id>`).
    /// Each command in it is then stored and answered at most once: a redelivered event, or an
    /// edit that keeps a command, does not run that command again.
    pub dedup: Option<String>,
    /// The room's rate-limit key when it is not the origin: all of IRC's direct messages share
    /// one (`irc:(queries)`), so a flood spread over queries and nicks is one room's flood.
    pub rate_room: Option<String>,
    /// The bot's own id on this network when people can mention it (Matrix: `@shepherd:server`):
    /// a line starting with it is addressed to the bot.
    pub bot_user_id: Option<String>,
}

/// The keys of a message's commands: the n-th copy of the same words gets occurrence n.
pub fn command_keys(base: &str, texts: &[String]) -> Vec<String> {
    let mut seen: HashMap<String, u32> = HashMap::new();
    texts
        .iter()
        .map(|text| {
            let words = text.split_whitespace().collect::<Vec<_>>().join(" ");
            let n = seen.entry(words).or_insert(0);
            *n += 1;
            command_key(base, text, *n)
        })
        .collect()
}

/// The key of the `occurrence`-th copy of command `text` in a message named `base`: equal
/// across redeliveries and edits of the message as long as the command's words are equal.
pub fn command_key(base: &str, text: &str, occurrence: u32) -> String {
    use sha2::Digest;
    let words = text.split_whitespace().collect::<Vec<_>>().join(" ");
    let digest = sha2::Sha256::digest(words.as_bytes());
    format!("{base}:{}:{occurrence}", hex::encode(&digest[..8]))
}

/// The payload of a queued command.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub struct QueuedCommand {
    pub command: shepherd_commands::Command,
    pub text: String,
}

pub const COMMAND_KIND: &str = "command";

pub struct Dispatcher {
    pub registry: Arc<Registry>,
    pub services: Arc<Services>,
    pub queue: Queue,
    pub outbox: Outbox,
    pub audit: AuditLog,
    pub metrics: Arc<Metrics>,
    limits: Limits,
}

impl Dispatcher {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        registry: Arc<Registry>,
        services: Arc<Services>,
        queue: Queue,
        outbox: Outbox,
        audit: AuditLog,
        metrics: Arc<Metrics>,
        per_identity_per_minute: u32,
        per_room_per_minute: u32,
    ) -> Self {
        Self {
            registry,
            services,
            queue,
            outbox,
            audit,
            metrics,
            limits: Limits::new(per_identity_per_minute, per_room_per_minute),
        }
    }

    /// Handles every command in one incoming message, in order.
    pub async fn handle(&self, inbound: &Inbound) -> Result<(), StoreError> {
        let texts = self.commands_of(inbound);
        let keys: Vec<Option<String>> = match inbound.dedup.as_deref() {
            Some(base) => command_keys(base, &texts).into_iter().map(Some).collect(),
            None => vec![None; texts.len()],
        };
        // Queued commands of one message run in order: each waits for the one before it.
        let mut previous: Option<String> = None;
        for (text, key) in texts.iter().zip(keys) {
            if let Some(queued) = self
                .handle_one(inbound, text, key.as_deref(), previous.as_deref())
                .await?
            {
                previous = Some(queued);
            }
        }
        Ok(())
    }

    /// The command lines of a message, as the front end's addressing rules find them.
    pub fn commands_of(&self, inbound: &Inbound) -> Vec<String> {
        let addressing = Addressing {
            bot_name: &self.services.address.bot_name,
            prefix: &self.services.address.prefix,
            user_id: inbound.bot_user_id.as_deref(),
        };
        addressed(inbound.frontend, &inbound.text, &addressing)
            .into_iter()
            .map(|t| t.to_string())
            .collect()
    }

    async fn reply(
        &self,
        origin: &Origin,
        text: &str,
        key: Option<&str>,
    ) -> Result<(), StoreError> {
        let dedup = key.map(|k| format!("{k}:reply"));
        self.outbox
            .push(origin, text, dedup.as_deref(), None)
            .await
            .map(|_| ())
    }

    /// Handles one command; returns the id of the stored request when it was queued.
    async fn handle_one(
        &self,
        inbound: &Inbound,
        text: &str,
        key: Option<&str>,
        after: Option<&str>,
    ) -> Result<Option<String>, StoreError> {
        let started = Instant::now();
        let origin = &inbound.origin;
        let context = ParseContext {
            implicit_mr: inbound.mr.clone(),
        };
        let parsed = parse(text, &context);
        let name = parsed.as_ref().map(|c| c.name()).unwrap_or("unknown");
        // Every addressed line counts, junk included: what anyone can make the bot say is limited.
        if !self.within_limits(inbound, name, key).await? {
            return Ok(None);
        }
        let command = match parsed {
            Ok(c) => c,
            Err(e) => {
                self.count("unknown", "parse_error");
                self.reply(origin, &e.reply(text), key).await?;
                return Ok(None);
            }
        };

        let Some(plugin) = self.registry.get(name) else {
            self.count(name, "not_enabled");
            self.reply(origin, &Registry::not_enabled(name), key)
                .await?;
            return Ok(None);
        };
        if let Some(why) = plugin.unavailable(&self.services) {
            self.count(name, "not_enabled");
            self.reply(origin, &why, key).await?;
            return Ok(None);
        }
        let entry = plugin.help();
        let principal = self.services.policy.resolve(&inbound.identity);
        if let Err(refusal) = self.services.policy.check(&principal, name) {
            self.count(name, "refused");
            let needed = if refusal.needed.is_empty() {
                "it is not enabled for anyone".to_string()
            } else {
                format!("it needs group {}", refusal.needed.join(" or "))
            };
            let who = match &principal.person {
                Some(p) => format!("you are {} ({p})", principal.identity),
                None => format!("{} is not a known identity", principal.identity),
            };
            self.audit
                .record(
                    &principal.identity,
                    principal.person.as_deref(),
                    origin,
                    name,
                    text,
                    AuditOutcome::Refused,
                    Some(&needed),
                )
                .await?;
            self.reply(
                origin,
                &format!("sorry, you may not use `{name}`: {needed}, and {who}. See `whoami`."),
                key,
            )
            .await?;
            return Ok(None);
        }

        if entry.queued {
            let payload = serde_json::to_value(QueuedCommand {
                command,
                text: text.to_string(),
            })
            .map_err(|e| StoreError::Corrupt {
                what: "command payload",
                detail: e.to_string(),
            })?;
            let enqueued = self
                .queue
                .enqueue(NewRequest {
                    kind: COMMAND_KIND.to_string(),
                    origin: origin.clone(),
                    identity: inbound.identity.clone(),
                    payload: payload.into(),
                    dedup_key: key.map(str::to_string),
                    after: after.map(str::to_string),
                    not_before: None,
                })
                .await?;
            if matches!(enqueued, Enqueued::Duplicate(_)) {
                tracing::info!(request = %enqueued.id(), command = name, "command already stored for this message; not run again");
                return Ok(Some(enqueued.id().to_string()));
            }
            tracing::info!(request = %enqueued.id(), command = name, origin = %origin, identity = %inbound.identity, "command queued");
            if entry.changes_something {
                self.audit
                    .record(
                        &principal.identity,
                        principal.person.as_deref(),
                        origin,
                        name,
                        text,
                        AuditOutcome::Accepted,
                        Some(&format!("request {}", enqueued.id())),
                    )
                    .await?;
            }
            return Ok(Some(enqueued.id().to_string()));
        }

        let request_id = new_id();
        let call = Call {
            request_id: &request_id,
            requested_at: now_ms(),
            attempt: 1,
            origin,
            principal: &principal,
            command: &command,
        };
        let outcome = plugin.run(&self.services, &call).await;
        let replies = match outcome {
            Ok(Outcome { replies, .. }) => {
                self.count(name, "ok");
                replies
            }
            Err(PluginError::Refuse(msg)) | Err(PluginError::Retry(msg)) => {
                self.count(name, "error");
                vec![msg]
            }
        };
        for (i, r) in replies.iter().enumerate() {
            let k = key.map(|k| format!("{k}:{i}"));
            self.reply(origin, r, k.as_deref()).await?;
        }
        self.metrics
            .command_duration
            .with_label_values(&[name])
            .observe(started.elapsed().as_secs_f64());
        Ok(None)
    }

    /// Counts a line against the sender's and the room's rate limits; false when it must not be
    /// answered (over a limit: the one "slow down" of the minute is said here).
    async fn within_limits(
        &self,
        inbound: &Inbound,
        name: &str,
        key: Option<&str>,
    ) -> Result<bool, StoreError> {
        let origin = &inbound.origin;
        let rate_room = inbound
            .rate_room
            .clone()
            .unwrap_or_else(|| origin.to_string());
        match self.limits.check(&inbound.identity, &rate_room) {
            Verdict::Go => Ok(true),
            Verdict::Warn(scope) => {
                self.count_limited(name, scope);
                tracing::warn!(identity = %inbound.identity, origin = %origin, scope = scope.label(), "rate limit reached; told to slow down once, ignoring more for a minute");
                self.reply(origin, &self.slow_down(scope, name), key)
                    .await?;
                Ok(false)
            }
            Verdict::Drop(scope) => {
                self.count_limited(name, scope);
                Ok(false)
            }
        }
    }

    /// Answers a message with `why` instead of running it — a front end's own reason, such as a
    /// command that came while the bot was away, longer ago than it catches up. The answer counts
    /// against the same rate limits as any other, and is said once per message (`inbound.dedup`).
    pub async fn decline(&self, inbound: &Inbound, why: &str) -> Result<(), StoreError> {
        let key = inbound
            .dedup
            .as_deref()
            .map(|base| format!("{base}:declined"));
        if !self
            .within_limits(inbound, "unknown", key.as_deref())
            .await?
        {
            return Ok(());
        }
        self.count("unknown", "declined");
        self.reply(&inbound.origin, why, key.as_deref()).await
    }

    /// The one warning a sender (or room) over its limit gets in a minute.
    fn slow_down(&self, scope: Scope, name: &str) -> String {
        let n = self.limits.per_minute(scope);
        match scope {
            Scope::Identity => format!(
                "slow down: more than {n} commands a minute from you. `{name}` was not run, and I'll ignore what you send until you are under the limit."
            ),
            Scope::Room => format!(
                "slow down: more than {n} commands a minute in this room. `{name}` was not run, and I'll ignore commands here until it is under the limit."
            ),
        }
    }

    /// Counts a line dropped by a rate limit (`name` is its command, or `unknown`). Front ends
    /// that drop lines before they reach the dispatcher count them here too.
    pub fn count_limited(&self, name: &str, scope: Scope) {
        self.count(name, "rate_limited");
        self.metrics
            .rate_limited
            .with_label_values(&[scope.label()])
            .inc();
    }

    /// Forgets rate-limit state that no longer matters (see [`Limits::prune`]).
    pub fn prune_limits(&self) {
        let kept = self.limits.prune();
        self.metrics
            .rate_limiter_keys
            .set(i64::try_from(kept).unwrap_or(i64::MAX));
    }

    fn count(&self, command: &str, outcome: &str) {
        self.metrics
            .commands
            .with_label_values(&[command, outcome])
            .inc();
    }
}
