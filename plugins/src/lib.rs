//! shepherd-plugins: one module per capability.
//!
//! A plugin maps a parsed command to core calls and words the reply; it never opens a
//! socket and never writes to the store itself — it returns an `Outcome` (replies, watches,
//! pipelines started) that the worker commits atomically with the queue item. Each plugin
//! declares its help (usage, summary, examples, who may use it by default) in one place;
//! the `help` command and `GET /help` are both generated from those declarations.

pub mod alerts;
mod canary;
mod cancel;
mod deploy;
mod failover;
mod help;
pub mod herder;
mod ping;
mod report;
mod retrigger;
mod status;
mod util;
mod whoami;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;
use shepherd_commands::Command;
use shepherd_core::audit::AuditOutcome;
use shepherd_core::canary::{Canary, CanaryChange};
use shepherd_core::gitlab::GitLab;
use shepherd_core::policy::{Policy, Principal};
use shepherd_core::retrigger::Retrigger;
use shepherd_core::store::Store;
use shepherd_core::watcher::NewWatch;
use shepherd_core::{CommandStyle, FrontEnds, Origin};

pub use canary::welcome_text;
pub use report::PipelineReporter;

/// What a command's help says, declared once by the plugin that implements it.
#[derive(Debug, Clone, Copy)]
pub struct HelpEntry {
    pub command: &'static str,
    pub summary: &'static str,
    /// Examples as typed after the address (`retrigger 123 x=1`); help shows them addressed the
    /// way the asker's front end addresses the bot. The usage line is the command language's own
    /// ([`shepherd_commands::usage`]), so it is written once.
    pub examples: &'static [&'static str],
    /// Examples that only work in a merge-request comment (the MR is implicit there); always
    /// shown as comment commands (`@shepherd test`).
    pub comment_examples: &'static [&'static str],
    /// Groups allowed when the configuration says nothing about this command.
    pub default_groups: &'static [&'static str],
    /// Changes something outside shepherd (audited; a "would do" in non-production mode).
    pub changes_something: bool,
    /// Runs from the durable queue (it calls GitLab) rather than inline.
    pub queued: bool,
}

/// How the bot is addressed (from `[bot]`), to show a command the way people type it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BotAddress {
    pub bot_name: String,
    pub prefix: String,
}

impl BotAddress {
    pub fn new(bot_name: impl Into<String>, prefix: impl Into<String>) -> Self {
        Self {
            bot_name: bot_name.into(),
            prefix: prefix.into(),
        }
    }

    /// `command` (the words after the address) as typed on a front end of `style`:
    /// `!ping`, `shepherd: ping`, `@shepherd ping`, or `ping` on the console.
    pub fn show(&self, style: CommandStyle, command: &str) -> String {
        match style {
            CommandStyle::Bare => command.to_string(),
            CommandStyle::Prefix => format!("{}{command}", self.prefix),
            CommandStyle::Name => format!("{}: {command}", self.bot_name),
            CommandStyle::Mention => format!("@{} {command}", self.bot_name),
        }
    }
}

/// Everything a plugin may use. Built once at start.
pub struct Services {
    pub production: bool,
    /// How the bot is addressed (`[bot]`: its name and the chat prefix).
    pub address: BotAddress,
    /// What each front end can do: how it formats, whether it edits, how the bot is addressed.
    pub frontends: FrontEnds,
    pub default_project: Option<String>,
    pub gitlab: GitLab,
    pub store: Store,
    pub retrigger: Retrigger,
    pub canary: Canary,
    /// Alertmanager's API, for `alerts`, `silence` and `unsilence` (when configured).
    pub alertmanager: Option<shepherd_core::alerts::Alertmanager>,
    /// Deploys and rollbacks (when `[deploy]` is configured).
    pub deploy: Option<shepherd_core::deploy::Deployer>,
    /// The herder's matchers (when `[herder]` is configured), for `herder`; its targets hear
    /// the failover switches' announcements.
    pub herder: Option<Arc<shepherd_core::herder::Herder>>,
    /// The `[[failover]]` switches (when any is configured).
    pub failovers: Option<shepherd_core::failover::Failovers>,
    pub policy: Arc<Policy>,
    /// The plugins of this build (help and whoami list them).
    pub registry: Arc<Registry>,
    /// Words reports and canary summaries (shared with the watcher).
    pub reporter: Arc<PipelineReporter>,
    pub started_at: Instant,
}

/// One command being carried out.
pub struct Call<'a> {
    pub request_id: &'a str,
    /// When the request was stored (Unix ms).
    pub requested_at: i64,
    /// Attempt number, from 1 (greater after a crash or a retryable failure).
    pub attempt: u32,
    pub origin: &'a Origin,
    pub principal: &'a Principal,
    pub command: &'a Command,
}

/// A pipeline a plugin started, to be remembered (status and cancel apply to these).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StartedPipeline {
    pub project: String,
    pub pipeline_id: u64,
    pub web_url: String,
}

/// What a command produced; committed in one transaction with the queue item.
#[derive(Debug, Default)]
pub struct Outcome {
    pub replies: Vec<String>,
    pub watches: Vec<NewWatch>,
    pub started: Vec<StartedPipeline>,
    /// For the audit log when the command changes something.
    pub audit: Option<(AuditOutcome, String)>,
    /// A canary run started or retested; the worker records it and publishes its summary.
    pub canary: Option<CanaryChange>,
    /// Messages for other rooms than the asker's (a deploy's announcement).
    pub announcements: Vec<(Origin, String)>,
}

impl Outcome {
    pub fn reply(text: impl Into<String>) -> Self {
        Self {
            replies: vec![text.into()],
            ..Self::default()
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum PluginError {
    /// Transient (GitLab unavailable, store busy): the queue tries again later. The text
    /// is what the user is told if every attempt fails.
    #[error("{0}")]
    Retry(String),
    /// Final, and the user is told exactly this.
    #[error("{0}")]
    Refuse(String),
}

#[async_trait]
pub trait Plugin: Send + Sync {
    fn help(&self) -> &'static HelpEntry;
    /// Why the command cannot run on this shepherd (its section is not configured), if so: the
    /// dispatcher answers this at once instead of queueing the command.
    fn unavailable(&self, _services: &Services) -> Option<String> {
        None
    }
    async fn run(&self, services: &Services, call: &Call<'_>) -> Result<Outcome, PluginError>;
}

/// The plugins of this build, by command name.
pub struct Registry {
    plugins: BTreeMap<&'static str, Box<dyn Plugin>>,
}

impl Default for Registry {
    fn default() -> Self {
        Self::new()
    }
}

impl Registry {
    pub fn new() -> Self {
        let all: Vec<Box<dyn Plugin>> = vec![
            Box::new(help::Help),
            Box::new(ping::Ping),
            Box::new(ping::Version),
            Box::new(whoami::Whoami),
            Box::new(retrigger::RetriggerPlugin),
            Box::new(status::Status),
            Box::new(cancel::Cancel),
            Box::new(canary::Test),
            Box::new(canary::CanaryPlugin),
            Box::new(canary::Retest),
            Box::new(alerts::commands::Alerts),
            Box::new(alerts::commands::SilencePlugin),
            Box::new(alerts::commands::Unsilence),
            Box::new(deploy::DeployPlugin),
            Box::new(deploy::Confirm),
            Box::new(deploy::Rollback),
            Box::new(deploy::Deployments),
            Box::new(deploy::LockPlugin),
            Box::new(deploy::Unlock),
            Box::new(herder::HerderPlugin),
            Box::new(failover::FailoverPlugin),
            Box::new(failover::Failback),
            Box::new(failover::Failovers),
        ];
        let plugins = all.into_iter().map(|p| (p.help().command, p)).collect();
        Self { plugins }
    }

    pub fn get(&self, command: &str) -> Option<&dyn Plugin> {
        self.plugins.get(command).map(|p| p.as_ref())
    }

    pub fn entries(&self) -> impl Iterator<Item = &'static HelpEntry> + '_ {
        self.plugins.values().map(|p| p.help())
    }

    /// The permission table in force: the configuration's entries, and each built
    /// command's default groups where the configuration names none.
    pub fn effective_permissions(
        &self,
        configured: &BTreeMap<String, Vec<String>>,
    ) -> BTreeMap<String, Vec<String>> {
        let mut out = configured.clone();
        for entry in self.entries() {
            out.entry(entry.command.to_string())
                .or_insert_with(|| entry.default_groups.iter().map(|g| g.to_string()).collect());
        }
        out
    }

    /// The command reference, as served on `GET /help`.
    pub fn reference(
        &self,
        policy: &Policy,
        address: &BotAddress,
        frontends: &FrontEnds,
    ) -> String {
        help::reference(self, policy, address, frontends)
    }

    /// The reply to a command that parses but whose capability is not built or not enabled.
    pub fn not_enabled(command: &str) -> String {
        format!(
            "`{command}` is not enabled on this shepherd: the capability is not built yet. Try `help` for what is."
        )
    }
}
