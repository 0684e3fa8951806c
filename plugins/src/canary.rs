//! `test [k=v ...]` (in a merge request comment), `canary <mr> [k=v ...]` (from chat) and `retest`:
//! re-run the configured reference pipelines with the merge request's code, and re-run the ones
//! that failed. The summary (one note, edited in place on GitLab) is written by the worker from
//! the stored run; these plugins start the work and say what could not be done.

use async_trait::async_trait;
use shepherd_commands::{Command, MrRef, Var};
use shepherd_core::audit::AuditOutcome;
use shepherd_core::canary::{
    CanaryChange, CanaryError, CanaryOutcome, CanaryRequest, RetestOutcome, StartedRow, short_sha,
};
use shepherd_core::watcher::NewWatch;

use crate::{Call, HelpEntry, Outcome, Plugin, PluginError, Services, StartedPipeline};

pub struct Test;
pub struct CanaryPlugin;
pub struct Retest;

static TEST: HelpEntry = HelpEntry {
    command: "test",
    summary: "In a merge request comment: re-runs the project's reference pipelines with this MR's code swapped in; one summary comment is kept up to date until the verdict.",
    examples: &[],
    comment_examples: &["test", "please test [debug=true]"],
    default_groups: &["admins", "developers"],
    changes_something: true,
    queued: true,
};

static CANARY: HelpEntry = HelpEntry {
    command: "canary",
    summary: "Re-runs the reference pipelines of the MR's project with the MR's code swapped in, and reports the summary here.",
    examples: &[
        "canary group/project!12",
        "canary https://gitlab.com/group/project/-/merge_requests/12 debug=true",
    ],
    comment_examples: &[],
    default_groups: &["admins", "developers"],
    changes_something: true,
    queued: true,
};

static RETEST: HelpEntry = HelpEntry {
    command: "retest",
    summary: "Re-runs only the canary pipelines of the MR's latest run that failed (the MR is implicit in its comments).",
    examples: &["retest group/project!12"],
    comment_examples: &["retest"],
    default_groups: &["admins", "developers"],
    changes_something: true,
    queued: true,
};

/// The comment posted on a newly opened merge request of a project with `welcome = true`.
pub fn welcome_text(bot_name: &str, configured_for_canary: bool) -> String {
    let mut text = format!("Hi! I'm {bot_name}, the CI bot. ");
    if configured_for_canary {
        text.push_str(&format!(
            "To run the reference pipelines with this merge request's code, comment `@{bot_name} test` \
             (add `KEY=value` to override a variable, e.g. `@{bot_name} test debug=true`). \
             I'll keep one summary comment up to date until the verdict; `@{bot_name} retest` re-runs the failed ones. "
        ));
    }
    text.push_str(&format!("`@{bot_name} help` lists everything I can do."));
    text
}

fn vars(overrides: &[Var]) -> Vec<(String, String)> {
    overrides
        .iter()
        .map(|v| (v.key.clone(), v.value.clone()))
        .collect()
}

/// The MR a command is about: its explicit reference, else the MR whose comment it came from.
fn mr_of(
    services: &Services,
    call: &Call<'_>,
    mr: Option<&MrRef>,
    command: &str,
) -> Result<(String, u64), PluginError> {
    match mr {
        Some(mr) => crate::util::mr_target(services, call, mr, command),
        None => call
            .origin
            .as_merge_request()
            .map(|(p, iid)| (p.to_string(), iid))
            .ok_or_else(|| {
                PluginError::Refuse(format!(
                    "`{command}` works in a merge request comment; from chat use `canary <mr>` with group/project!12 or the MR's URL"
                ))
            }),
    }
}

fn canary_error(e: CanaryError) -> PluginError {
    let text = match &e {
        CanaryError::GitLab(g) => g.user_message(),
        other => other.to_string(),
    };
    if e.is_retryable() {
        PluginError::Retry(text)
    } else {
        PluginError::Refuse(text)
    }
}

fn watches_for(
    call: &Call<'_>,
    run_id: &str,
    rows: &[StartedRow],
) -> (Vec<NewWatch>, Vec<StartedPipeline>) {
    let mut watches = Vec::new();
    let mut started = Vec::new();
    for row in rows {
        if let Some(p) = &row.pipeline {
            watches.push(NewWatch {
                request_id: call.request_id.to_string(),
                project: row.ref_project.clone(),
                pipeline_id: p.id,
                web_url: p.web_url.clone(),
                origin: call.origin.clone(),
                canary_run: Some(run_id.to_string()),
            });
            started.push(StartedPipeline {
                project: row.ref_project.clone(),
                pipeline_id: p.id,
                web_url: p.web_url.clone(),
            });
        }
    }
    (watches, started)
}

async fn start(
    services: &Services,
    call: &Call<'_>,
    project: String,
    iid: u64,
    overrides: &[Var],
) -> Result<Outcome, PluginError> {
    let req = CanaryRequest {
        request_id: call.request_id.to_string(),
        requested_at: call.requested_at,
        project: project.clone(),
        iid,
        overrides: vars(overrides),
        production: services.production,
    };
    match services.canary.start(&req).await.map_err(canary_error)? {
        CanaryOutcome::Started(run) => {
            let (watches, started) = watches_for(call, &run.id, &run.rows);
            let audit = format!(
                "started {} canary pipeline(s) for {project}!{iid} at {}",
                started.len(),
                short_sha(&run.mr.sha)
            );
            Ok(Outcome {
                watches,
                started,
                audit: Some((AuditOutcome::Done, audit)),
                canary: Some(CanaryChange::New(run)),
                ..Outcome::default()
            })
        }
        CanaryOutcome::Would { mr, rows } => {
            let mut lines = vec![format!(
                "non-production mode: would run {} canary pipeline(s) for {project}!{iid} at {} — nothing was created:",
                rows.iter().filter(|r| r.error.is_none()).count(),
                short_sha(&mr.sha)
            )];
            for row in &rows {
                match (&row.reference, &row.error) {
                    (_, Some(error)) => lines.push(format!("{}: cannot run: {error}", row.tree)),
                    (Some(reference), None) => lines.push(format!(
                        "{}: pipeline {} of {} on `{}` with {}",
                        row.tree,
                        reference.id,
                        row.ref_project,
                        reference.git_ref,
                        row.variables
                            .iter()
                            .map(|v| format!("{}={}", v.key, v.value))
                            .collect::<Vec<_>>()
                            .join(" ")
                    )),
                    (None, None) => {}
                }
            }
            Ok(Outcome {
                replies: vec![lines.join("\n")],
                audit: Some((
                    AuditOutcome::Would,
                    format!("would run canary pipelines for {project}!{iid}"),
                )),
                ..Outcome::default()
            })
        }
    }
}

#[async_trait]
impl Plugin for Test {
    fn help(&self) -> &'static HelpEntry {
        &TEST
    }

    async fn run(&self, services: &Services, call: &Call<'_>) -> Result<Outcome, PluginError> {
        let Command::Test { overrides } = call.command else {
            return Err(PluginError::Refuse("test: unexpected command".into()));
        };
        let (project, iid) = mr_of(services, call, None, "test")?;
        start(services, call, project, iid, overrides).await
    }
}

#[async_trait]
impl Plugin for CanaryPlugin {
    fn help(&self) -> &'static HelpEntry {
        &CANARY
    }

    async fn run(&self, services: &Services, call: &Call<'_>) -> Result<Outcome, PluginError> {
        let Command::Canary { mr, overrides } = call.command else {
            return Err(PluginError::Refuse("canary: unexpected command".into()));
        };
        let (project, iid) = mr_of(services, call, Some(mr), "canary")?;
        start(services, call, project, iid, overrides).await
    }
}

#[async_trait]
impl Plugin for Retest {
    fn help(&self) -> &'static HelpEntry {
        &RETEST
    }

    async fn run(&self, services: &Services, call: &Call<'_>) -> Result<Outcome, PluginError> {
        let Command::Retest { mr } = call.command else {
            return Err(PluginError::Refuse("retest: unexpected command".into()));
        };
        let (project, iid) = mr_of(services, call, Some(mr), "retest")?;
        let req = CanaryRequest {
            request_id: call.request_id.to_string(),
            requested_at: call.requested_at,
            project: project.clone(),
            iid,
            overrides: Vec::new(),
            production: services.production,
        };
        match services.canary.retest(&req).await.map_err(canary_error)? {
            RetestOutcome::Started(retest) => {
                let (watches, started) = watches_for(call, &retest.run_id, &retest.rows);
                let trees: Vec<&str> = retest.rows.iter().map(|r| r.tree.as_str()).collect();
                let where_ = if services.frontends.edits(call.origin) {
                    "the summary above is updated as they run"
                } else {
                    "I'll post the summary when they finish"
                };
                Ok(Outcome {
                    replies: vec![format!(
                        "re-running {} failed canary pipeline(s) of {project}!{iid}: {}; {where_}.",
                        trees.len(),
                        trees.join(", ")
                    )],
                    audit: Some((
                        AuditOutcome::Done,
                        format!("retest of {project}!{iid}: {}", trees.join(", ")),
                    )),
                    watches,
                    started,
                    canary: Some(CanaryChange::Retest(retest)),
                    ..Outcome::default()
                })
            }
            RetestOutcome::Would { trees, .. } => Ok(Outcome {
                replies: vec![format!(
                    "non-production mode: would re-run the failed canary pipeline(s) of {project}!{iid}: {} — nothing was created.",
                    trees.join(", ")
                )],
                audit: Some((AuditOutcome::Would, format!("would retest {project}!{iid}"))),
                ..Outcome::default()
            }),
            RetestOutcome::NothingFailed { run } => Ok(Outcome::reply(if run.finished {
                format!(
                    "nothing to retest: every canary pipeline of {project}!{iid}'s latest run passed."
                )
            } else {
                format!(
                    "nothing to retest yet: no canary pipeline of {project}!{iid}'s latest run has failed (some are still running)."
                )
            })),
        }
    }
}
