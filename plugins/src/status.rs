//! `status <pipeline>`: the state of a pipeline, and whether shepherd started it.

use async_trait::async_trait;
use shepherd_commands::{Command, Target};
use shepherd_core::canary::{self, RunView};
use shepherd_core::watcher::{Reporter, started_by_shepherd};

use crate::util::{gitlab_error, human_duration, mr_target, project_of};
use crate::{Call, HelpEntry, Outcome, Plugin, PluginError, Services};

pub struct Status;

static STATUS: HelpEntry = HelpEntry {
    command: "status",
    summary: "Shows a pipeline's state, ref, duration and link, and who asked shepherd to start it; or the summary of an MR's latest canary run.",
    examples: &[
        "status https://gitlab.com/group/project/-/pipelines/456",
        "status group/project/pipelines/456",
        "status group/project!12",
    ],
    comment_examples: &["status"],
    default_groups: &["*"],
    changes_something: false,
    queued: true,
};

#[async_trait]
impl Plugin for Status {
    fn help(&self) -> &'static HelpEntry {
        &STATUS
    }

    async fn run(&self, services: &Services, call: &Call<'_>) -> Result<Outcome, PluginError> {
        let Command::Status { target } = call.command else {
            return Err(PluginError::Refuse("status: unexpected command".into()));
        };
        let pipeline = match target {
            Target::Pipeline(p) => p,
            Target::Mr(mr) => {
                let (project, iid) = mr_target(services, call, mr, "status")?;
                let run = canary::latest_run(&services.store, &project, iid)
                    .await
                    .map_err(|e| PluginError::Retry(e.to_string()))?;
                return Ok(Outcome::reply(match run {
                    // Worded for the room that asked, not the one the run reports to.
                    Some(run) => services.reporter.canary_summary(&RunView {
                        origin: call.origin.clone(),
                        ..run
                    }),
                    None => format!("{project}!{iid} has no canary run yet."),
                }));
            }
        };
        let project = project_of(services, pipeline)?;
        let p = services
            .gitlab
            .pipeline(&project, pipeline.id)
            .await
            .map_err(gitlab_error)?;
        let by = started_by_shepherd(&services.store, &project, p.id)
            .await
            .map_err(|e| PluginError::Retry(e.to_string()))?;
        let took = p
            .duration
            .map(|d| format!(", took {}", human_duration(d.max(0.0) as u64)))
            .unwrap_or_default();
        let by = by
            .map(|who| format!(", started by shepherd for {who}"))
            .unwrap_or_default();
        Ok(Outcome::reply(format!(
            "pipeline {} of {project}: {} on `{}`{took}{by} {}",
            p.id,
            p.status.as_str(),
            p.git_ref,
            p.web_url
        )))
    }
}
