//! The typed commands the bot understands, their canonical words and usage lines.
//!
//! A `Command` is what the dispatcher stores in the durable queue (as JSON) and what plugins match
//! on; nothing downstream ever looks at the raw text. `Display` writes the canonical command line,
//! which parses back to the same `Command` (handy for audit logs and "would do" replies).

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::refs::{JobRef, Matcher, MrRef, PipelineRef, Var, write_word};

/// A parsed command.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "command", rename_all = "snake_case")]
pub enum Command {
    Help {
        topic: Option<String>,
    },
    Ping,
    Version,
    Whoami,
    Retrigger {
        pipeline: PipelineRef,
        overrides: Vec<Var>,
    },
    /// `test` in a merge request comment: canary of that MR.
    Test {
        overrides: Vec<Var>,
    },
    Canary {
        mr: MrRef,
        overrides: Vec<Var>,
    },
    Retest {
        mr: MrRef,
    },
    Status {
        target: Target,
    },
    Cancel {
        target: Target,
    },
    Deploy {
        service: String,
        source: DeploySource,
        env: Option<String>,
    },
    Rollback {
        service: String,
        env: Option<String>,
        to: Option<String>,
    },
    Deployments {
        service: String,
        env: Option<String>,
    },
    /// `confirm <code>`: carries out the dangerous command the same person asked for.
    Confirm {
        code: String,
    },
    Lock {
        env: String,
        reason: Option<String>,
    },
    Unlock {
        env: String,
    },
    Alerts {
        filter: Vec<Matcher>,
    },
    Silence {
        matchers: Vec<Matcher>,
        duration_secs: u64,
        /// The duration as the user wrote it (`2h30m`), for replies.
        duration_text: String,
        reason: Option<String>,
    },
    Unsilence {
        id: String,
    },
    /// `herder`: what the herder did lately; `herder <job>`: what it would do with that job.
    Herder {
        job: Option<JobRef>,
    },
    /// `failover <switch>`: sets the switch's CI/CD variables.
    Failover {
        switch: String,
    },
    /// `failback <switch>`: restores what `failover` changed.
    Failback {
        switch: String,
    },
    /// `failovers`: the switches and their state.
    Failovers,
}

/// What `status` and `cancel` act on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Target {
    Pipeline(PipelineRef),
    Mr(MrRef),
}

/// What `deploy` deploys: a merge request's image, an image tag, or a digest (`sha256:...`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeploySource {
    Mr(MrRef),
    Tag(String),
    Digest(String),
}

/// Every command word, in the order `help` lists them.
pub const COMMAND_NAMES: &[&str] = &[
    "help",
    "ping",
    "version",
    "whoami",
    "retrigger",
    "test",
    "canary",
    "retest",
    "status",
    "cancel",
    "deploy",
    "rollback",
    "deployments",
    "confirm",
    "lock",
    "unlock",
    "alerts",
    "silence",
    "unsilence",
    "herder",
    "failover",
    "failback",
    "failovers",
];

/// The usage line of `command` (its canonical word, any case), e.g. `retrigger <pipeline> [key=value ...]`.
pub fn usage(command: &str) -> Option<&'static str> {
    const USAGES: &[(&str, &str)] = &[
        ("help", "help [command]"),
        ("ping", "ping"),
        ("version", "version"),
        ("whoami", "whoami"),
        ("retrigger", "retrigger <pipeline> [key=value ...]"),
        ("test", "test [key=value ...]"),
        ("canary", "canary <mr> [key=value ...]"),
        ("retest", "retest [<mr>]"),
        ("status", "status <pipeline or mr>"),
        ("cancel", "cancel <pipeline or mr>"),
        ("deploy", "deploy <service> <mr, tag or digest> [to <env>]"),
        (
            "rollback",
            "rollback <service> [in <env>] [to <tag or digest>]",
        ),
        ("deployments", "deployments <service> [in <env>]"),
        ("confirm", "confirm <code>"),
        ("lock", "lock <env> [reason ...]"),
        ("unlock", "unlock <env>"),
        ("alerts", "alerts [matcher ...]"),
        (
            "silence",
            "silence <matcher ...> for <duration> [reason ...]",
        ),
        ("unsilence", "unsilence <silence id>"),
        ("herder", "herder [job url]"),
        ("failover", "failover <switch>"),
        ("failback", "failback <switch>"),
        ("failovers", "failovers"),
    ];
    USAGES
        .iter()
        .find(|(name, _)| name.eq_ignore_ascii_case(command))
        .map(|(_, u)| *u)
}

impl Command {
    /// The canonical command word (one of [`COMMAND_NAMES`]).
    pub fn name(&self) -> &'static str {
        match self {
            Command::Help { .. } => "help",
            Command::Ping => "ping",
            Command::Version => "version",
            Command::Whoami => "whoami",
            Command::Retrigger { .. } => "retrigger",
            Command::Test { .. } => "test",
            Command::Canary { .. } => "canary",
            Command::Retest { .. } => "retest",
            Command::Status { .. } => "status",
            Command::Cancel { .. } => "cancel",
            Command::Deploy { .. } => "deploy",
            Command::Rollback { .. } => "rollback",
            Command::Deployments { .. } => "deployments",
            Command::Confirm { .. } => "confirm",
            Command::Lock { .. } => "lock",
            Command::Unlock { .. } => "unlock",
            Command::Alerts { .. } => "alerts",
            Command::Silence { .. } => "silence",
            Command::Unsilence { .. } => "unsilence",
            Command::Herder { .. } => "herder",
            Command::Failover { .. } => "failover",
            Command::Failback { .. } => "failback",
            Command::Failovers => "failovers",
        }
    }

    /// Whether the command changes something (and so goes to the audit log).
    pub fn is_mutating(&self) -> bool {
        matches!(
            self,
            Command::Retrigger { .. }
                | Command::Test { .. }
                | Command::Canary { .. }
                | Command::Retest { .. }
                | Command::Cancel { .. }
                | Command::Deploy { .. }
                | Command::Rollback { .. }
                | Command::Confirm { .. }
                | Command::Lock { .. }
                | Command::Unlock { .. }
                | Command::Silence { .. }
                | Command::Unsilence { .. }
                | Command::Failover { .. }
                | Command::Failback { .. }
        )
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Target::Pipeline(p) => p.fmt(f),
            Target::Mr(m) => m.fmt(f),
        }
    }
}

impl fmt::Display for DeploySource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DeploySource::Mr(m) => m.fmt(f),
            DeploySource::Tag(t) | DeploySource::Digest(t) => write_word(f, t),
        }
    }
}

fn write_all<T: fmt::Display>(f: &mut fmt::Formatter<'_>, items: &[T]) -> fmt::Result {
    items.iter().try_for_each(|i| write!(f, " {i}"))
}

/// The canonical command line; `parse` reads it back to the same command (`test` needs an MR context).
impl fmt::Display for Command {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())?;
        match self {
            Command::Help { topic } => topic.iter().try_for_each(|t| {
                f.write_str(" ")?;
                write_word(f, t)
            }),
            Command::Ping | Command::Version | Command::Whoami | Command::Failovers => Ok(()),
            Command::Retrigger {
                pipeline,
                overrides,
            } => {
                write!(f, " {pipeline}")?;
                write_all(f, overrides)
            }
            Command::Test { overrides } => write_all(f, overrides),
            Command::Canary { mr, overrides } => {
                write!(f, " {mr}")?;
                write_all(f, overrides)
            }
            Command::Retest { mr } => write!(f, " {mr}"),
            Command::Status { target } | Command::Cancel { target } => write!(f, " {target}"),
            Command::Deploy {
                service,
                source,
                env,
            } => {
                write!(f, " {service} {source}")?;
                env.iter().try_for_each(|e| write!(f, " to {e}"))
            }
            Command::Rollback { service, env, to } => {
                write!(f, " {service}")?;
                env.iter().try_for_each(|e| write!(f, " in {e}"))?;
                to.iter().try_for_each(|v| {
                    f.write_str(" to ")?;
                    write_word(f, v)
                })
            }
            Command::Deployments { service, env } => {
                write!(f, " {service}")?;
                env.iter().try_for_each(|e| write!(f, " in {e}"))
            }
            Command::Confirm { code } => write!(f, " {code}"),
            Command::Lock { env, reason } => {
                write!(f, " {env}")?;
                reason.iter().try_for_each(|r| {
                    f.write_str(" ")?;
                    write_word(f, r)
                })
            }
            Command::Unlock { env } => write!(f, " {env}"),
            Command::Alerts { filter } => write_all(f, filter),
            Command::Silence {
                matchers,
                duration_text,
                reason,
                ..
            } => {
                write_all(f, matchers)?;
                f.write_str(" for ")?;
                write_word(f, duration_text)?;
                reason.iter().try_for_each(|r| {
                    f.write_str(" ")?;
                    write_word(f, r)
                })
            }
            Command::Unsilence { id } => write!(f, " {id}"),
            Command::Herder { job } => job.iter().try_for_each(|j| write!(f, " {j}")),
            Command::Failover { switch } | Command::Failback { switch } => write!(f, " {switch}"),
        }
    }
}
