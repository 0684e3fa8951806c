//! `cancel <pipeline>`: cancel a pipeline shepherd started (and only those).

use async_trait::async_trait;
use shepherd_commands::{Command, Target};
use shepherd_core::audit::AuditOutcome;
use shepherd_core::watcher::started_by_shepherd;

use crate::util::{gitlab_error, project_of};
use crate::{Call, HelpEntry, Outcome, Plugin, PluginError, Registry, Services};

pub struct Cancel;

static CANCEL: HelpEntry = HelpEntry {
    command: "cancel",
    usage: "cancel <pipeline>",
    summary: "Cancels a pipeline that shepherd started; its watch then reports it as canceled.",
    examples: &["cancel group/project/pipelines/456"],
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
            Target::Mr(_) => {
                return Ok(Outcome::reply(format!(
                    "{} (cancelling a merge request's canaries comes with canary pipelines)",
                    Registry::not_enabled("cancel <mr>")
                )));
            }
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
