//! `cancel <pipeline>`: cancel a pipeline shepherd started (and only those).

use async_trait::async_trait;
use shepherd_commands::{Command, Target};
use shepherd_core::audit::AuditOutcome;
use shepherd_core::watcher::started_by_shepherd;

use shepherd_commands::MrRef;
use shepherd_core::canary;

use crate::util::{gitlab_error, mr_target, project_of};
use crate::{Call, HelpEntry, Outcome, Plugin, PluginError, Services};

pub struct Cancel;

static CANCEL: HelpEntry = HelpEntry {
    command: "cancel",
    summary: "Cancels a pipeline that shepherd started, or the running canary pipelines of an MR (implicit in its comments); the watch then reports them as canceled.",
    examples: &[
        "cancel group/project/pipelines/456",
        "cancel group/project!12",
    ],
    comment_examples: &["cancel"],
    default_groups: &["admins", "developers"],
    changes_something: true,
    queued: true,
};

#[async_trait]
impl Plugin for Cancel {
    fn help(&self) -> &'static HelpEntry {
        &CANCEL
    }

    async fn run(&self, services: &Services, call: &Call<'_>) -> Result<Outcome, PluginError> {
        let Command::Cancel { target } = call.command else {
            return Err(PluginError::Refuse("cancel: unexpected command".into()));
        };
        let pipeline = match target {
            Target::Pipeline(p) => p,
            Target::Mr(mr) => return cancel_canaries(services, call, mr).await,
        };
        let project = project_of(services, pipeline)?;
        let started = started_by_shepherd(&services.store, &project, pipeline.id)
            .await
            .map_err(|e| PluginError::Retry(e.to_string()))?;
        if started.is_none() {
            return Err(PluginError::Refuse(format!(
                "pipeline {} of {project} was not started by shepherd; I only cancel pipelines I started.",
                pipeline.id
            )));
        }
        if !services.production {
            let p = services
                .gitlab
                .pipeline(&project, pipeline.id)
                .await
                .map_err(gitlab_error)?;
            return Ok(Outcome {
                replies: vec![format!(
                    "non-production mode: would cancel pipeline {} of {project} ({}) {} — nothing was changed.",
                    p.id,
                    p.status.as_str(),
                    p.web_url
                )],
                audit: Some((AuditOutcome::Would, format!("would cancel {}", p.web_url))),
                ..Outcome::default()
            });
        }
        let p = services
            .gitlab
            .cancel_pipeline(&project, pipeline.id)
            .await
            .map_err(gitlab_error)?;
        Ok(Outcome {
            replies: vec![format!(
                "cancel requested for pipeline {} of {project}: now {} {}",
                p.id,
                p.status.as_str(),
                p.web_url
            )],
            audit: Some((AuditOutcome::Done, format!("canceled {}", p.web_url))),
            ..Outcome::default()
        })
    }
}

/// Cancels the MR's canary pipelines that are still running.
async fn cancel_canaries(
    services: &Services,
    call: &Call<'_>,
    mr: &MrRef,
) -> Result<Outcome, PluginError> {
    let (project, iid) = mr_target(services, call, mr, "cancel")?;
    let running = canary::running_pipelines(&services.store, &project, iid)
        .await
        .map_err(|e| PluginError::Retry(e.to_string()))?;
    if running.is_empty() {
        return Ok(Outcome::reply(format!(
            "{project}!{iid} has no running canary pipelines."
        )));
    }
    let ids: Vec<String> = running.iter().map(|(_, id)| id.to_string()).collect();
    if !services.production {
        return Ok(Outcome {
            replies: vec![format!(
                "non-production mode: would cancel {} canary pipeline(s) of {project}!{iid}: {} — nothing was changed.",
                ids.len(),
                ids.join(", ")
            )],
            audit: Some((
                AuditOutcome::Would,
                format!("would cancel canaries of {project}!{iid}"),
            )),
            ..Outcome::default()
        });
    }
    for (pipeline_project, id) in &running {
        // Cancel is idempotent in GitLab, so a redelivery simply asks again.
        services
            .gitlab
            .cancel_pipeline(pipeline_project, *id)
            .await
            .map_err(gitlab_error)?;
    }
    Ok(Outcome {
        replies: vec![format!(
            "cancel requested for {} canary pipeline(s) of {project}!{iid}: {}",
            ids.len(),
            ids.join(", ")
        )],
        audit: Some((
            AuditOutcome::Done,
            format!("canceled canaries of {project}!{iid}: {}", ids.join(", ")),
        )),
        ..Outcome::default()
    })
}
