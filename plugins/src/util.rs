//! Small helpers shared by plugins: resolving references, mapping errors, durations.

use shepherd_commands::{MrRef, PipelineRef};
use shepherd_core::Origin;
use shepherd_core::gitlab::GitLabError;

use crate::{Call, PluginError, Services};

/// The project and iid of an MR reference; `!12` takes its project from the MR comment it is in.
pub fn mr_target(
    services: &Services,
    call: &Call<'_>,
    mr: &MrRef,
    command: &str,
) -> Result<(String, u64), PluginError> {
    match (&mr.project, call.origin.as_merge_request()) {
        (Some(p), _) => Ok((local_project(services, mr.instance.as_deref(), p)?, mr.iid)),
        (None, Some((p, _))) => Ok((p.to_string(), mr.iid)),
        (None, None) => Err(PluginError::Refuse(format!(
            "`{command}` needs the merge request's project: give it as group/project!{} or its URL",
            mr.iid
        ))),
    }
}

/// The project a pipeline reference points to, using the configured default for bare ids.
pub fn project_of(services: &Services, r: &PipelineRef) -> Result<String, PluginError> {
    match (&r.project, &services.default_project) {
        (Some(p), _) => local_project(services, r.instance.as_deref(), p),
        (None, Some(d)) => Ok(d.clone()),
        (None, None) => Err(PluginError::Refuse(format!(
            "pipeline {} has no project and no gitlab.default_project is configured: give its URL or group/project/pipelines/{}",
            r.id, r.id
        ))),
    }
}

/// The project path of a reference on the configured GitLab. A web URL of another instance is
/// refused: acting on the same path of ours would touch a different project.
pub fn local_project(
    services: &Services,
    instance: Option<&str>,
    path: &str,
) -> Result<String, PluginError> {
    let Some(instance) = instance else {
        return Ok(path.to_string());
    };
    services
        .gitlab
        .local_project_path(instance, path)
        .ok_or_else(|| {
            let ours = services.gitlab.web_url().as_str().trim_end_matches('/');
            PluginError::Refuse(format!(
                "that URL is on {instance}, but I work with the GitLab at {ours}: give a URL of {ours}, or group/project"
            ))
        })
}

/// A GitLab failure as the plugin reports it: retried when it may pass, explained when not.
pub fn gitlab_error(e: GitLabError) -> PluginError {
    if e.is_retryable() {
        PluginError::Retry(e.user_message())
    } else {
        PluginError::Refuse(e.user_message())
    }
}

/// `text` for each of `targets` (once each), except the asker's own room, which gets the reply.
pub fn announcements(
    mut targets: Vec<String>,
    origin: &Origin,
    text: &str,
) -> Vec<(Origin, String)> {
    targets.sort();
    targets.dedup();
    targets
        .iter()
        .filter_map(|t| Origin::parse(t))
        .filter(|o| !(o.frontend == origin.frontend && o.room == origin.room))
        .map(|o| (o, text.to_string()))
        .collect()
}

/// `1h 2m 3s` style, for pipeline durations.
pub fn human_duration(secs: u64) -> String {
    let (h, m, s) = (secs / 3600, (secs % 3600) / 60, secs % 60);
    match (h, m) {
        (0, 0) => format!("{s}s"),
        (0, _) => format!("{m}m {s}s"),
        _ => format!("{h}h {m}m {s}s"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_naturally() {
        assert_eq!(human_duration(7), "7s");
        assert_eq!(human_duration(192), "3m 12s");
        assert_eq!(human_duration(3723), "1h 2m 3s");
    }
}
