//! `deploy`, `confirm`, `rollback`, `deployments`, `lock` and `unlock`: MR images to
//! environments by registry retag (core's `deploy`), worded for chat.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use shepherd_commands::{Command, DeploySource};
use shepherd_core::Origin;
use shepherd_core::audit::AuditOutcome;
use shepherd_core::deploy::{
    DeployError, Deployer, Deployment, Kind, Lock, Plan, Refusal, Request, Source, Step,
    deploy_variables,
};
use shepherd_core::watcher::NewWatch;

use crate::util::gitlab_error;
use crate::{Call, HelpEntry, Outcome, Plugin, PluginError, Services, StartedPipeline};

/// How many deployments `deployments` lists.
const HISTORY_SHOWN: u32 = 10;

pub struct DeployPlugin;
pub struct Confirm;
pub struct Rollback;
pub struct Deployments;
pub struct LockPlugin;
pub struct Unlock;

static DEPLOY: HelpEntry = HelpEntry {
    command: "deploy",
    summary: "Points an environment's image tag at a merge request's image (or a tag or digest); environments that need confirmation first show what would change and a code for `confirm`.",
    examples: &[
        "deploy herder !12 to production",
        "deploy herder cki/cki-tools!12 to staging",
        "deploy herder v1.4.2",
    ],
    comment_examples: &["deploy herder to production"],
    default_groups: &["admins"],
    changes_something: true,
    queued: true,
};

static CONFIRM: HelpEntry = HelpEntry {
    command: "confirm",
    summary: "Carries out the deploy or rollback you asked for, with the code shepherd gave you, before it expires.",
    examples: &["confirm k7m2qz"],
    comment_examples: &[],
    default_groups: &["admins"],
    changes_something: true,
    queued: true,
};

static ROLLBACK: HelpEntry = HelpEntry {
    command: "rollback",
    summary: "Points an environment's tag back at the image it had before its last deployment (or at the tag or digest named); recorded as a deployment.",
    examples: &[
        "rollback herder",
        "rollback herder in staging",
        "rollback herder in production to v1.4.1",
    ],
    comment_examples: &[],
    default_groups: &["admins"],
    changes_something: true,
    queued: true,
};

static DEPLOYMENTS: HelpEntry = HelpEntry {
    command: "deployments",
    summary: "Lists a service's latest deployments and rollbacks: when, who, what, from and to.",
    examples: &["deployments herder", "deployments herder in production"],
    comment_examples: &[],
    default_groups: &["*"],
    changes_something: false,
    queued: true,
};

static LOCK: HelpEntry = HelpEntry {
    command: "lock",
    summary: "Locks an environment: until you `unlock` it, only you may deploy or roll back there; others are told who locked it, when and why.",
    examples: &["lock production release freeze until Monday"],
    comment_examples: &[],
    default_groups: &["admins"],
    changes_something: true,
    queued: true,
};

static UNLOCK: HelpEntry = HelpEntry {
    command: "unlock",
    summary: "Lifts your lock on an environment (members of deploy.lock_breakers may lift anyone's).",
    examples: &["unlock production"],
    comment_examples: &[],
    default_groups: &["admins"],
    changes_something: true,
    queued: true,
};

const NOT_ENABLED: &str =
    "deploying is not enabled on this shepherd: there is no [deploy] section in its configuration.";

fn deployer(services: &Services) -> Result<&Deployer, PluginError> {
    services
        .deploy
        .as_ref()
        .ok_or_else(|| PluginError::Refuse(NOT_ENABLED.to_string()))
}

fn unavailable(services: &Services) -> Option<String> {
    services.deploy.is_none().then(|| NOT_ENABLED.to_string())
}

#[async_trait]
impl Plugin for DeployPlugin {
    fn help(&self) -> &'static HelpEntry {
        &DEPLOY
    }

    fn unavailable(&self, services: &Services) -> Option<String> {
        unavailable(services)
    }

    async fn run(&self, services: &Services, call: &Call<'_>) -> Result<Outcome, PluginError> {
        let Command::Deploy {
            service,
            source,
            env,
        } = call.command
        else {
            return Err(PluginError::Refuse("deploy: unexpected command".into()));
        };
        let deployer = deployer(services)?;
        if let DeploySource::Mr(mr) = source
            && let Some(instance) = &mr.instance
            && let Some(project) = &mr.project
        {
            crate::util::local_project(services, Some(instance), project)?;
        }
        let source = match source {
            DeploySource::Mr(mr) => Source::Mr {
                project: mr.project.as_deref(),
                iid: mr.iid,
            },
            DeploySource::Tag(t) => Source::Tag(t),
            DeploySource::Digest(d) => Source::Digest(d),
        };
        ask(
            services,
            call,
            deployer,
            Kind::Deploy,
            service,
            env.as_deref(),
            source,
        )
        .await
    }
}

#[async_trait]
impl Plugin for Rollback {
    fn help(&self) -> &'static HelpEntry {
        &ROLLBACK
    }

    fn unavailable(&self, services: &Services) -> Option<String> {
        unavailable(services)
    }

    async fn run(&self, services: &Services, call: &Call<'_>) -> Result<Outcome, PluginError> {
        let Command::Rollback { service, env, to } = call.command else {
            return Err(PluginError::Refuse("rollback: unexpected command".into()));
        };
        let deployer = deployer(services)?;
        let source = match to {
            Some(v) if shepherd_commands::is_digest(v) => Source::Digest(v),
            Some(v) => Source::Tag(v),
            None => Source::Previous,
        };
        ask(
            services,
            call,
            deployer,
            Kind::Rollback,
            service,
            env.as_deref(),
            source,
        )
        .await
    }
}

#[async_trait]
impl Plugin for Confirm {
    fn help(&self) -> &'static HelpEntry {
        &CONFIRM
    }

    fn unavailable(&self, services: &Services) -> Option<String> {
        unavailable(services)
    }

    async fn run(&self, services: &Services, call: &Call<'_>) -> Result<Outcome, PluginError> {
        let Command::Confirm { code } = call.command else {
            return Err(PluginError::Refuse("confirm: unexpected command".into()));
        };
        let deployer = deployer(services)?;
        let step = deployer
            .confirm(call.request_id, call.principal, code, services.production)
            .await;
        outcome_of(services, call, deployer, step)
    }
}

#[async_trait]
impl Plugin for Deployments {
    fn help(&self) -> &'static HelpEntry {
        &DEPLOYMENTS
    }

    fn unavailable(&self, services: &Services) -> Option<String> {
        unavailable(services)
    }

    async fn run(&self, services: &Services, call: &Call<'_>) -> Result<Outcome, PluginError> {
        let Command::Deployments { service, env } = call.command else {
            return Err(PluginError::Refuse(
                "deployments: unexpected command".into(),
            ));
        };
        let deployer = deployer(services)?;
        let list = deployer
            .history(service, env.as_deref(), HISTORY_SHOWN)
            .await
            .map_err(error_of)?;
        let scope = match env {
            Some(e) => format!("{service} in {e}"),
            None => service.clone(),
        };
        if list.is_empty() {
            return Ok(Outcome::reply(format!(
                "no deployments of {scope} are recorded yet."
            )));
        }
        let mut replies = vec![format!(
            "latest deployments of {scope}, newest first ({} shown):",
            list.len()
        )];
        replies.extend(list.iter().map(history_line));
        Ok(Outcome {
            replies,
            ..Outcome::default()
        })
    }
}

#[async_trait]
impl Plugin for LockPlugin {
    fn help(&self) -> &'static HelpEntry {
        &LOCK
    }

    fn unavailable(&self, services: &Services) -> Option<String> {
        unavailable(services)
    }

    async fn run(&self, services: &Services, call: &Call<'_>) -> Result<Outcome, PluginError> {
        let Command::Lock { env, reason } = call.command else {
            return Err(PluginError::Refuse("lock: unexpected command".into()));
        };
        let deployer = deployer(services)?;
        match deployer.lock(call.principal, env, reason.as_deref()).await {
            Ok((lock, renewed)) => {
                let why = lock
                    .reason
                    .as_deref()
                    .map(|r| format!(" ({r})"))
                    .unwrap_or_default();
                let text = if renewed {
                    format!(
                        "{} was already locked by you; the reason is now{why}.",
                        lock.environment
                    )
                } else {
                    format!(
                        "locked {}{why}: until you `unlock {}`, only you can deploy or roll back there.",
                        lock.environment, lock.environment
                    )
                };
                let note = format!("{} locked {}{why}.", lock.identity, lock.environment);
                Ok(Outcome {
                    replies: vec![text],
                    announcements: announce_all(deployer, call.origin, &note),
                    audit: Some((
                        AuditOutcome::Done,
                        format!("locked {}{why}", lock.environment),
                    )),
                    ..Outcome::default()
                })
            }
            Err(e) => refused_or_error(e),
        }
    }
}

#[async_trait]
impl Plugin for Unlock {
    fn help(&self) -> &'static HelpEntry {
        &UNLOCK
    }

    fn unavailable(&self, services: &Services) -> Option<String> {
        unavailable(services)
    }

    async fn run(&self, services: &Services, call: &Call<'_>) -> Result<Outcome, PluginError> {
        let Command::Unlock { env } = call.command else {
            return Err(PluginError::Refuse("unlock: unexpected command".into()));
        };
        let deployer = deployer(services)?;
        let me = call.principal;
        match deployer.unlock(me, env).await {
            Ok(lock) => {
                let whose = if me.is(&lock.identity, lock.person.as_deref()) {
                    String::new()
                } else {
                    format!(
                        " (it was locked by {} {})",
                        lock.identity,
                        when(lock.locked_at)
                    )
                };
                let note = format!("{} unlocked {}{whose}.", me.identity, lock.environment);
                Ok(Outcome {
                    replies: vec![format!("unlocked {}{whose}.", lock.environment)],
                    announcements: announce_all(deployer, call.origin, &note),
                    audit: Some((
                        AuditOutcome::Done,
                        format!("unlocked {}{whose}", lock.environment),
                    )),
                    ..Outcome::default()
                })
            }
            Err(e) => refused_or_error(e),
        }
    }
}

/// A deploy or rollback asked of core, and its outcome.
async fn ask(
    services: &Services,
    call: &Call<'_>,
    deployer: &Deployer,
    kind: Kind,
    service: &str,
    environment: Option<&str>,
    source: Source<'_>,
) -> Result<Outcome, PluginError> {
    let req = Request {
        request_id: call.request_id,
        who: call.principal,
        kind,
        service,
        environment,
        source,
        production: services.production,
    };
    let step = deployer.request(&req).await;
    outcome_of(services, call, deployer, step)
}

/// The reply, announcements and audit entry of a deploy, rollback or confirm.
fn outcome_of(
    services: &Services,
    call: &Call<'_>,
    deployer: &Deployer,
    step: Result<Step, DeployError>,
) -> Result<Outcome, PluginError> {
    let step = match step {
        Ok(step) => step,
        Err(e) => return refused_or_error(e),
    };
    let style = services.frontends.of(call.origin).style;
    Ok(match step {
        Step::Done { plan, pipeline, .. } => {
            let did = match plan.kind {
                Kind::Deploy => format!(
                    "deployed {} {} to {}",
                    plan.service,
                    source_text(&plan),
                    plan.environment
                ),
                Kind::Rollback => format!("rolled {} in {} back", plan.service, plan.environment),
            };
            let change = change_text(&plan);
            let Some(p) = pipeline else {
                let note = format!("{} {did}: {change}.", call.principal.identity);
                return Ok(Outcome {
                    replies: vec![format!("{did}: {change}.")],
                    announcements: announce(deployer, &plan.service, call.origin, &note),
                    audit: Some((AuditOutcome::Done, format!("{did}: {change}"))),
                    ..Outcome::default()
                });
            };
            let started = format!(
                "{did} with pipeline {} of {} {}",
                p.id, p.project, p.web_url
            );
            let note = format!("{} {started}: {change}.", call.principal.identity);
            Outcome {
                replies: vec![format!(
                    "{started}: {change} — I'll report when it finishes."
                )],
                announcements: announce(deployer, &plan.service, call.origin, &note),
                audit: Some((AuditOutcome::Done, format!("{started}: {change}"))),
                watches: vec![NewWatch {
                    request_id: call.request_id.to_string(),
                    project: p.project.clone(),
                    pipeline_id: p.id,
                    web_url: p.web_url.clone(),
                    origin: call.origin.clone(),
                    canary_run: None,
                }],
                started: vec![StartedPipeline {
                    project: p.project.clone(),
                    pipeline_id: p.id,
                    web_url: p.web_url.clone(),
                }],
                ..Outcome::default()
            }
        }
        Step::AlreadyThere { plan } => Outcome {
            replies: vec![format!(
                "{} already points at {} ({}:{}); nothing to do.",
                plan.environment, plan.to_digest, plan.repository, plan.tag
            )],
            audit: Some((
                AuditOutcome::Done,
                format!("{} already at {}", plan.environment, plan.to_digest),
            )),
            ..Outcome::default()
        },
        Step::Would { plan } => {
            let now = plan.from_digest.as_deref().unwrap_or("nothing");
            let action = match &plan.pipeline {
                None => format!(
                    "would point {} at {} (now {now})",
                    plan.environment, plan.to_digest
                ),
                Some(p) => format!(
                    "would run the deploy pipeline of {} on `{}` with {}",
                    p.project,
                    p.git_ref,
                    deploy_variables(&plan, call.request_id)
                        .iter()
                        .map(|v| format!("{}={}", v.key, v.value))
                        .collect::<Vec<_>>()
                        .join(" ")
                ),
            };
            let text = format!(
                "non-production mode: {action} for {} {}; nothing was changed.",
                plan.service,
                source_text(&plan)
            );
            Outcome {
                replies: vec![text.clone()],
                audit: Some((AuditOutcome::Would, text)),
                ..Outcome::default()
            }
        }
        Step::Confirm {
            plan,
            code,
            expires_at,
        } => {
            let what = match plan.kind {
                Kind::Deploy => format!(
                    "deploy {} {} to {}",
                    plan.service,
                    source_text(&plan),
                    plan.environment
                ),
                Kind::Rollback => format!("roll {} in {} back", plan.service, plan.environment),
            };
            let mr = plan
                .mr
                .as_ref()
                .map(|m| {
                    let by = m
                        .author
                        .as_deref()
                        .map(|a| format!(" by {a}"))
                        .unwrap_or_default();
                    format!(" — !{} \"{}\"{by} {}", m.iid, m.title, m.web_url)
                })
                .unwrap_or_default();
            let minutes = ((expires_at - shepherd_core::store::now_ms()).max(0) + 59_999) / 60_000;
            let confirm = services.address.show(style, &format!("confirm {code}"));
            Outcome {
                replies: vec![format!(
                    "{what} needs confirmation: {}{mr}. To carry it out, say `{confirm}` within {minutes} min (only you can).",
                    change_text(&plan)
                )],
                audit: Some((
                    AuditOutcome::Accepted,
                    format!("{what}: {}; waiting for confirm {code}", change_text(&plan)),
                )),
                ..Outcome::default()
            }
        }
    })
}

/// `sha256:old → sha256:new` (what the tag pointed at, and will).
fn change_text(plan: &Plan) -> String {
    format!(
        "{} {} → {}",
        plan.repository,
        plan.from_digest.as_deref().unwrap_or("(no image)"),
        plan.to_digest
    )
}

fn source_text(plan: &Plan) -> String {
    match &plan.mr {
        Some(mr) => format!("{}!{}", mr.project, mr.iid),
        None => plan.source.clone(),
    }
}

fn history_line(d: &Deployment) -> String {
    let who = d.person.as_deref().unwrap_or(&d.identity);
    let what = match d.kind {
        Kind::Deploy => format!("deploy of {}", d.source),
        Kind::Rollback => format!("rollback ({})", d.source),
    };
    format!(
        "{} {} by {who} in {}: {} → {}",
        when(d.finished_at),
        what,
        d.environment,
        d.from_digest.as_deref().unwrap_or("(no image)"),
        d.to_digest
    )
}

fn when(ms: i64) -> String {
    DateTime::<Utc>::from_timestamp_millis(ms)
        .map(|t| t.format("%Y-%m-%d %H:%M UTC").to_string())
        .unwrap_or_else(|| "at an unknown time".to_string())
}

fn lock_text(lock: &Lock) -> String {
    let why = lock
        .reason
        .as_deref()
        .map(|r| format!(": {r}"))
        .unwrap_or_else(|| " (no reason given)".to_string());
    format!(
        "{} is locked by {} since {}{why}",
        lock.environment,
        lock.person.as_deref().unwrap_or(&lock.identity),
        when(lock.locked_at)
    )
}

/// A refusal becomes a reply with an audit entry (outcome `refused`); other errors are retried
/// or reported like GitLab's.
fn refused_or_error(e: DeployError) -> Result<Outcome, PluginError> {
    match e {
        DeployError::Refused(r) => {
            let text = refusal_text(&r);
            Ok(Outcome {
                replies: vec![text.clone()],
                audit: Some((AuditOutcome::Refused, text)),
                ..Outcome::default()
            })
        }
        other => Err(error_of(other)),
    }
}

fn error_of(e: DeployError) -> PluginError {
    match e {
        DeployError::Refused(r) => PluginError::Refuse(refusal_text(&r)),
        DeployError::GitLab(g) => gitlab_error(g),
        DeployError::Registry(r) if r.is_retryable() => PluginError::Retry(r.user_message()),
        DeployError::Registry(r) => {
            PluginError::Refuse(format!("nothing was changed: {}", r.user_message()))
        }
        DeployError::Store(s) => PluginError::Retry(format!("the store failed: {s}")),
        DeployError::Pipeline(e) => match e {
            shepherd_core::retrigger::RetriggerError::GitLab(g) => gitlab_error(g),
            other => PluginError::Retry(other.to_string()),
        },
    }
}

fn refusal_text(r: &Refusal) -> String {
    let list = |names: &[String]| names.join(", ");
    match r {
        Refusal::UnknownService { name, known } => {
            format!(
                "there is no service {name:?} to deploy (known: {}).",
                list(known)
            )
        }
        Refusal::UnknownEnvironment { name, known } => {
            format!("there is no environment {name:?} (known: {}).", list(known))
        }
        Refusal::NotInGroups {
            environment,
            groups,
        } => format!(
            "deploying to {environment} is for the groups {}; you are in none of them.",
            list(groups)
        ),
        Refusal::Locked(lock) => format!(
            "{}; only they can deploy or roll back there.",
            lock_text(lock)
        ),
        Refusal::NoMrProject { service } => format!(
            "{service} has no mr_project configured, so a merge request cannot name its image; give a tag or digest."
        ),
        Refusal::OtherProject {
            service,
            given,
            expected,
        } => format!(
            "{service}'s merge requests are in {expected}, not {given}; nothing was changed."
        ),
        Refusal::ImageMissing {
            repository,
            reference,
            mr,
        } => match mr {
            Some(iid) => format!(
                "the image of !{iid} ({repository}:{reference}) is not in the registry: has the MR's pipeline pushed it? Nothing was changed."
            ),
            None => {
                format!("{repository}:{reference} is not in the registry; nothing was changed.")
            }
        },
        Refusal::NothingDeployed {
            service,
            environment,
            tag,
        } => format!(
            "{service} has nothing deployed in {environment} (no tag {tag}), so there is nothing to roll back."
        ),
        Refusal::NoPrevious {
            service,
            environment,
        } => format!(
            "no earlier deployment of {service} in {environment} is recorded; name the version: rollback {service} in {environment} to <tag or digest>."
        ),
        Refusal::UnknownCode { code } => {
            format!("no deploy is waiting for the code {code}; nothing was changed.")
        }
        Refusal::CodeUsed { code } => {
            format!("the code {code} was already used; nothing more was changed.")
        }
        Refusal::CodeExpired { code, expired_at } => format!(
            "the code {code} expired at {}; ask again. Nothing was changed.",
            when(*expired_at)
        ),
        Refusal::CodeNotYours { code, identity } => format!(
            "the code {code} was given to {identity}; only they can confirm it. Nothing was changed."
        ),
        Refusal::Moved { plan, now } => format!(
            "{} changed since you asked (it was {}, it is now {}); ask again. Nothing was changed.",
            plan.environment,
            plan.from_digest.as_deref().unwrap_or("no image"),
            now.as_deref().unwrap_or("no image")
        ),
        Refusal::NotLocked { environment } => format!("{environment} is not locked."),
        Refusal::NotYourLock { lock, breakers } => format!(
            "{}; only they (or the groups {}) can unlock it.",
            lock_text(lock),
            list(breakers)
        ),
    }
}

/// The service's `announce` rooms, except the one the command came from (it has the reply).
fn announce(
    deployer: &Deployer,
    service: &str,
    origin: &Origin,
    text: &str,
) -> Vec<(Origin, String)> {
    let targets = deployer
        .config()
        .service(service)
        .map(|s| s.announce.clone())
        .unwrap_or_default();
    crate::util::announcements(targets, origin, text)
}

/// Every service's `announce` rooms (for locks, which hold for all services).
fn announce_all(deployer: &Deployer, origin: &Origin, text: &str) -> Vec<(Origin, String)> {
    let targets = deployer
        .config()
        .services
        .iter()
        .flat_map(|s| s.announce.clone())
        .collect();
    crate::util::announcements(targets, origin, text)
}
