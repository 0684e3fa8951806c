//! `retrigger <pipeline> [key=value ...]`: re-run an old pipeline with overridden variables,
//! then watch the new one and report its end to whoever asked.

use async_trait::async_trait;
use shepherd_commands::Command;
use shepherd_core::audit::AuditOutcome;
use shepherd_core::retrigger::{RetriggerError, RetriggerOutcome, RetriggerRequest};
use shepherd_core::watcher::NewWatch;

use crate::util::{gitlab_error, project_of};
use crate::{Call, HelpEntry, Outcome, Plugin, PluginError, Services, StartedPipeline};

pub struct RetriggerPlugin;

static RETRIGGER: HelpEntry = HelpEntry {
    command: "retrigger",
    summary: "Runs a new pipeline on the same ref as an old one, with its variables, your overrides and the retrigger marker; watches it and reports the end.",
    examples: &[
        "retrigger https://gitlab.com/group/project/-/pipelines/123 foo=bar",
        "retrigger group/project/pipelines/123 [skip_tests=true tree=mainline]",
        "retrigger 123 message=\"hello world\"",
    ],
    comment_examples: &[],
    default_groups: &["admins", "developers"],
    changes_something: true,
    queued: true,
};

#[async_trait]
impl Plugin for RetriggerPlugin {
    fn help(&self) -> &'static HelpEntry {
        &RETRIGGER
    }

    async fn run(&self, services: &Services, call: &Call<'_>) -> Result<Outcome, PluginError> {
        let Command::Retrigger {
            pipeline,
            overrides,
        } = call.command
        else {
            return Err(PluginError::Refuse("retrigger: unexpected command".into()));
        };
        let project = project_of(services, pipeline)?;
        let overrides: Vec<(String, String)> = overrides
            .iter()
            .map(|v| (v.key.clone(), v.value.clone()))
            .collect();
        let req = RetriggerRequest {
            request_id: call.request_id.to_string(),
            requested_at: call.requested_at,
            project: project.clone(),
            pipeline_id: pipeline.id,
            overrides: overrides.clone(),
            production: services.production,
        };
        let outcome = services.retrigger.run(&req).await.map_err(|e| match e {
            RetriggerError::GitLab(g) => gitlab_error(g),
            other => PluginError::Retry(other.to_string()),
        })?;
        let shown = if overrides.is_empty() {
            String::new()
        } else {
            format!(
                " with {}",
                overrides
                    .iter()
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect::<Vec<_>>()
                    .join(" ")
            )
        };
        Ok(match outcome {
            RetriggerOutcome::Created { old, new, .. } => Outcome {
                replies: vec![format!(
                    "retriggered pipeline {} of {project} on `{}`{shown}: new pipeline {} {} — I'll report when it finishes.",
                    old.id, old.git_ref, new.id, new.web_url
                )],
                watches: vec![NewWatch {
                    request_id: call.request_id.to_string(),
                    project: project.clone(),
                    pipeline_id: new.id,
                    web_url: new.web_url.clone(),
                    origin: call.origin.clone(),
                    canary_run: None,
                }],
                started: vec![StartedPipeline {
                    project: project.clone(),
                    pipeline_id: new.id,
                    web_url: new.web_url.clone(),
                }],
                audit: Some((
                    AuditOutcome::Done,
                    format!("created pipeline {}", new.web_url),
                )),
                ..Outcome::default()
            },
            RetriggerOutcome::WouldCreate { old, variables } => {
                let vars = variables
                    .iter()
                    .map(|v| format!("{}={}", v.key, v.value))
                    .collect::<Vec<_>>()
                    .join(" ");
                Outcome {
                    replies: vec![format!(
                        "non-production mode: would retrigger pipeline {} of {project} as a new pipeline on `{}` with variables {vars} — nothing was created.",
                        old.id, old.git_ref
                    )],
                    audit: Some((
                        AuditOutcome::Would,
                        format!("would retrigger pipeline {} of {project}", old.id),
                    )),
                    ..Outcome::default()
                }
            }
        })
    }
}
