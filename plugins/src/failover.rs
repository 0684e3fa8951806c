//! `failover <switch>`, `failback <switch>` and `failovers`: the `[[failover]]` switches, set
//! and restored exactly once by `shepherd_core::failover`, announced in the herder's targets.

use async_trait::async_trait;
use shepherd_commands::Command;
use shepherd_config::FailoverSwitch;
use shepherd_core::Origin;
use shepherd_core::audit::AuditOutcome;
use shepherd_core::failover::{Change, FailoverError, SwitchState, VariableChange, owner_of};
use shepherd_core::gitlab::VariableOwner;

use crate::{Call, HelpEntry, Outcome, Plugin, PluginError, Services};

pub struct FailoverPlugin;
pub struct Failback;
pub struct Failovers;

static FAILOVER: HelpEntry = HelpEntry {
    command: "failover",
    summary: "Turns a failover switch on: sets its CI/CD variables on its project or group (what was there is remembered), pointing pipelines at another cluster or lab. Announced in the herder's targets.",
    examples: &["failover beaker"],
    comment_examples: &[],
    default_groups: &["admins"],
    changes_something: true,
    queued: true,
};

static FAILBACK: HelpEntry = HelpEntry {
    command: "failback",
    summary: "Turns a failover switch off: restores the variables it changed exactly as they were (deleting the ones that did not exist).",
    examples: &["failback beaker"],
    comment_examples: &[],
    default_groups: &["admins"],
    changes_something: true,
    queued: true,
};

static FAILOVERS: HelpEntry = HelpEntry {
    command: "failovers",
    summary: "Lists the failover switches, what each sets, and whether it is on.",
    examples: &["failovers"],
    comment_examples: &[],
    default_groups: &["admins", "developers"],
    changes_something: false,
    queued: true,
};

fn unavailable(services: &Services) -> Option<String> {
    services.failovers.is_none().then(|| {
        "no failover switches are configured on this shepherd (there is no [[failover]] section)."
            .to_string()
    })
}

fn error(e: FailoverError) -> PluginError {
    match e {
        FailoverError::GitLab(e) => crate::util::gitlab_error(e),
        e if e.is_retryable() => PluginError::Retry(e.to_string()),
        e => PluginError::Refuse(e.to_string()),
    }
}

fn owner_text(switch: &FailoverSwitch) -> String {
    match owner_of(switch) {
        VariableOwner::Project(p) => format!("project {p}"),
        VariableOwner::Group(g) => format!("group {g}"),
    }
}

fn value(v: &Option<String>) -> String {
    match v {
        Some(v) => format!("{v:?}"),
        None => "unset".to_string(),
    }
}

/// `KEY: "old" → "new"` for each variable.
fn changes_text(changes: &[VariableChange]) -> String {
    changes
        .iter()
        .map(|c| format!("{}: {} → {}", c.key, value(&c.before), value(&c.after)))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The herder's targets, except the asker's own room (which gets the reply).
fn announcements(services: &Services, origin: &Origin, text: &str) -> Vec<(Origin, String)> {
    let targets = services
        .herder
        .as_ref()
        .map(|h| h.config().targets.clone())
        .unwrap_or_default();
    crate::util::announcements(targets, origin, text)
}

/// The reply, announcement and audit entry of a failover or failback.
fn outcome(
    services: &Services,
    call: &Call<'_>,
    switch: &FailoverSwitch,
    on: bool,
    change: Change,
) -> Outcome {
    let verb = if on { "failover" } else { "failback" };
    let who = call
        .principal
        .person
        .as_deref()
        .unwrap_or(&call.principal.identity);
    let what = format!("{} ({})", switch.name, owner_text(switch));
    match change {
        Change::Done { changes, .. } => {
            let text = if on {
                format!(
                    "failover: {what} is on{} — {} (by {who})",
                    switch
                        .description
                        .as_deref()
                        .map(|d| format!(": {d}"))
                        .unwrap_or_default(),
                    changes_text(&changes)
                )
            } else {
                format!(
                    "failback: {what} is off again — {} (by {who})",
                    changes_text(&changes)
                )
            };
            Outcome {
                replies: vec![text.clone()],
                announcements: announcements(services, call.origin, &text),
                audit: Some((
                    AuditOutcome::Done,
                    format!("{verb} {}: {}", switch.name, changes_text(&changes)),
                )),
                ..Outcome::default()
            }
        }
        Change::Would { changes } => {
            let text = format!(
                "non-production mode: {verb} {what} would change {} — nothing was changed.",
                changes_text(&changes)
            );
            Outcome {
                replies: vec![text],
                audit: Some((
                    AuditOutcome::Would,
                    format!("would {verb} {}: {}", switch.name, changes_text(&changes)),
                )),
                ..Outcome::default()
            }
        }
        Change::AlreadyOn { by, since } => {
            let when = chrono::DateTime::from_timestamp_millis(since)
                .map(|t| t.format("%Y-%m-%d %H:%M UTC").to_string())
                .unwrap_or_default();
            Outcome {
                replies: vec![format!(
                    "failover: {what} is on already (since {when}, by {by}); nothing changed. `failback {}` turns it off.",
                    switch.name
                )],
                audit: Some((
                    AuditOutcome::Done,
                    format!("{verb} {}: on already", switch.name),
                )),
                ..Outcome::default()
            }
        }
        Change::AlreadyOff => Outcome {
            replies: vec![format!("failback: {what} is not on; nothing changed.")],
            audit: Some((
                AuditOutcome::Done,
                format!("{verb} {}: off already", switch.name),
            )),
            ..Outcome::default()
        },
    }
}

async fn switch_it(
    services: &Services,
    call: &Call<'_>,
    name: &str,
    on: bool,
) -> Result<Outcome, PluginError> {
    let Some(failovers) = &services.failovers else {
        return Err(PluginError::Refuse(
            unavailable(services).unwrap_or_default(),
        ));
    };
    let switch = failovers.switch(name).map_err(error)?.clone();
    let change = if on {
        failovers
            .failover(call.request_id, call.principal, name, services.production)
            .await
    } else {
        failovers
            .failback(call.request_id, call.principal, name, services.production)
            .await
    }
    .map_err(error)?;
    Ok(outcome(services, call, &switch, on, change))
}

#[async_trait]
impl Plugin for FailoverPlugin {
    fn help(&self) -> &'static HelpEntry {
        &FAILOVER
    }

    fn unavailable(&self, services: &Services) -> Option<String> {
        unavailable(services)
    }

    async fn run(&self, services: &Services, call: &Call<'_>) -> Result<Outcome, PluginError> {
        let Command::Failover { switch } = call.command else {
            return Err(PluginError::Refuse("failover: unexpected command".into()));
        };
        switch_it(services, call, switch, true).await
    }
}

#[async_trait]
impl Plugin for Failback {
    fn help(&self) -> &'static HelpEntry {
        &FAILBACK
    }

    fn unavailable(&self, services: &Services) -> Option<String> {
        unavailable(services)
    }

    async fn run(&self, services: &Services, call: &Call<'_>) -> Result<Outcome, PluginError> {
        let Command::Failback { switch } = call.command else {
            return Err(PluginError::Refuse("failback: unexpected command".into()));
        };
        switch_it(services, call, switch, false).await
    }
}

#[async_trait]
impl Plugin for Failovers {
    fn help(&self) -> &'static HelpEntry {
        &FAILOVERS
    }

    fn unavailable(&self, services: &Services) -> Option<String> {
        unavailable(services)
    }

    async fn run(&self, services: &Services, _call: &Call<'_>) -> Result<Outcome, PluginError> {
        let Some(failovers) = &services.failovers else {
            return Err(PluginError::Refuse(
                unavailable(services).unwrap_or_default(),
            ));
        };
        let list = failovers
            .list()
            .await
            .map_err(|e| PluginError::Retry(e.to_string()))?;
        let mut text = format!("failover switches ({}):", list.len());
        for s in &list {
            let vars = s
                .switch
                .variables
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join(" ");
            let state = match (s.state, &s.by, s.since) {
                (SwitchState::Off, _, _) => "off".to_string(),
                (state, Some(by), Some(since)) => format!(
                    "{} since {} by {by}",
                    state.as_str().to_uppercase(),
                    chrono::DateTime::from_timestamp_millis(since)
                        .map(|t| t.format("%Y-%m-%d %H:%M UTC").to_string())
                        .unwrap_or_default()
                ),
                (state, _, _) => state.as_str().to_uppercase(),
            };
            text.push_str(&format!(
                "\n{} — {state} — sets {vars} on {}{}",
                s.switch.name,
                owner_text(&s.switch),
                s.switch
                    .description
                    .as_deref()
                    .map(|d| format!(" ({d})"))
                    .unwrap_or_default()
            ));
        }
        Ok(Outcome::reply(text))
    }
}
